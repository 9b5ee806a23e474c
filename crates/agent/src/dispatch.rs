//! One request of the channel, carried out by an [`Agent`]: the agent side of the protocol in
//! `api::agent`. The server side (`server::fleet::RemoteAgent`) turns each trait call into the same
//! request, so that an agent on another host and one in the server's own process do exactly
//! the same thing.

use api::agent::{Reply, Request};

use crate::{Agent, AgentError};

/// What a long request reports while it runs.
pub enum Report<'a> {
    Progress { done: u64, total: u64 },
    Step(&'a str),
}

/// Carries out `request` on `agent`, telling `report` how a long one is going.
pub fn dispatch(agent: &dyn Agent, request: Request, report: &(dyn Fn(Report) + Sync)) -> Result<Reply, AgentError> {
    Ok(match request {
        Request::Info => Reply::Info { info: agent.info()? },
        Request::CheckSourceDir { path, snapshot, roots, place } => {
            Reply::SourceFacts { facts: agent.check_source_dir(&path, snapshot, &roots, &place)? }
        }
        Request::CheckSourceUrl { url } => Reply::SourceFacts { facts: agent.check_source_url(&url)? },
        Request::CheckSource { source, place } => Reply::SourceFacts { facts: agent.check_source(&source, &place)? },
        Request::MakeImage { name, place, source, transform } => {
            let progress = |done, total| report(Report::Progress { done, total });
            let step = |message: &str| report(Report::Step(message));
            Reply::MadeImage { image: agent.make_image(&name, &place, &source, &transform, &progress, &step)? }
        }
        Request::RemoveImage { name, place } => {
            agent.remove_image(&name, &place)?;
            Reply::Done
        }
        Request::CancelImageJobs => {
            agent.cancel_image_jobs();
            Reply::Done
        }
        Request::CancelImageJob { name, place } => Reply::Bool { value: agent.cancel_image_job(&name, &place)? },
        Request::PortIsFree { port } => Reply::Bool { value: agent.port_is_free(port)? },
        Request::CreateClone { spec } => Reply::CloneReport { report: Some(agent.create_clone(&spec)?) },
        Request::StartClone { name } => Reply::CloneReport { report: Some(agent.start_clone(&name)?) },
        Request::StopClone { name } => Reply::CloneReport { report: Some(agent.stop_clone(&name)?) },
        Request::ResetClone { name } => Reply::CloneReport { report: Some(agent.reset_clone(&name)?) },
        Request::RefreshClone { name, to } => Reply::CloneReport { report: Some(agent.refresh_clone(&name, &to)?) },
        Request::DeleteClone { name } => {
            agent.delete_clone(&name)?;
            Reply::Done
        }
        Request::CheckpointClone { name, checkpoint, message } => {
            Reply::CloneReport { report: Some(agent.checkpoint_clone(&name, &checkpoint, message.as_deref())?) }
        }
        Request::RevertClone { name, to } => {
            Reply::CloneReport { report: Some(agent.revert_clone(&name, to.as_ref())?) }
        }
        Request::Checkpoints { name } => Reply::Checkpoints { checkpoints: agent.checkpoints(&name)? },
        Request::CheckpointNames { name } => Reply::Names { names: agent.checkpoint_names(&name)? },
        Request::DeleteCheckpoint { name, checkpoint } => {
            agent.delete_checkpoint(&name, &checkpoint)?;
            Reply::Done
        }
        Request::CloneReport { name } => Reply::CloneReport { report: agent.clone_report(&name)? },
        Request::CloneReports => Reply::CloneReports { reports: agent.clone_reports()? },
        Request::WriteMarker { path, value } => {
            agent.write_marker(&path, &value)?;
            Reply::Done
        }
        Request::ReadMarker { path } => Reply::Marker { value: agent.read_marker(&path)? },
    })
}
