//! The server's agents: the one embedded in its own process (`thinclone serve`), and those
//! on other hosts, reached through the agent channel ([`Hub`]). Both are an [`Agent`] to the
//! rest of the server; a remote one is a [`RemoteAgent`], which turns each call into a
//! request on the channel and its reply back into the call's result.
//!
//! The fleet also keeps what each remote agent last reported of itself and its clones,
//! refreshed every [`POLL_EVERY`] and after each operation, so that listing 200 clones over
//! ten agents asks none of them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use agent::{
    Agent, AgentError, AgentInfo, CloneReport, CloneSpec, ErrorKind, ImagePlace, ImageSource, MadeImage, SourceFacts,
};
use api::agent::{Reply, Request};
use api::Name;

use crate::hub::{Event, Hub};
use crate::ops::ServerError;

/// How often the server asks each remote agent how it and its clones are.
pub const POLL_EVERY: Duration = Duration::from_secs(2);
/// How long a short request (a report, a check) may take.
const SHORT: Duration = Duration::from_secs(30);
/// How long a clone's start, stop or removal may take (a start may replay WAL).
const CLONE_OP: Duration = Duration::from_secs(15 * 60);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a remote agent last reported.
#[derive(Clone, Default)]
struct Seen {
    info: Option<AgentInfo>,
    reports: HashMap<Name, CloneReport>,
    at: Option<Instant>,
}

pub struct Fleet {
    embedded: Option<(Name, Arc<dyn Agent>)>,
    hub: Arc<Hub>,
    seen: Mutex<HashMap<Name, Seen>>,
}

impl Fleet {
    /// A fleet of the agents that join through `hub`, and `embedded`, the agent in the
    /// server's own process, if any.
    pub fn new(embedded: Option<(Name, Arc<dyn Agent>)>, hub: Arc<Hub>) -> Fleet {
        Fleet { embedded, hub, seen: Mutex::new(HashMap::new()) }
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// The name of the agent in the server's own process.
    pub fn embedded(&self) -> Option<&Name> {
        self.embedded.as_ref().map(|(n, _)| n)
    }

    pub fn is_embedded(&self, name: &Name) -> bool {
        self.embedded() == Some(name)
    }

    /// Whether the agent answers now: the embedded one always does; another while it is
    /// connected.
    pub fn is_online(&self, name: &Name) -> bool {
        self.is_embedded(name) || self.hub.is_connected(name)
    }

    /// The agent `name`, reachable or not (a call to an unreachable one fails as
    /// unavailable).
    pub fn agent(&self, name: &Name) -> Arc<dyn Agent> {
        match &self.embedded {
            Some((n, agent)) if n == name => agent.clone(),
            _ => Arc::new(RemoteAgent { name: name.clone(), hub: self.hub.clone() }),
        }
    }

    /// The agent `name` if it answers now; 503 otherwise, before anything is recorded.
    pub fn require(&self, name: &Name) -> Result<Arc<dyn Agent>, ServerError> {
        if !self.is_online(name) {
            return Err(unreachable(name));
        }
        Ok(self.agent(name))
    }

    /// What the agent reported of itself: asked now of the embedded agent, as last polled
    /// of another (`None` while it is unreachable or has not answered yet).
    pub fn info(&self, name: &Name) -> Option<AgentInfo> {
        if self.is_embedded(name) {
            return self.agent(name).info().ok();
        }
        if !self.hub.is_connected(name) {
            return None;
        }
        lock(&self.seen).get(name).and_then(|s| s.info.clone())
    }

    /// How the agent's clones are: asked now of the embedded agent, as last polled of
    /// another; `None` while it is unreachable.
    pub fn reports(&self, name: &Name) -> Option<HashMap<Name, CloneReport>> {
        if self.is_embedded(name) {
            let reports = self.agent(name).clone_reports().ok()?;
            return Some(reports.into_iter().map(|r| (r.name.clone(), r)).collect());
        }
        if !self.hub.is_connected(name) {
            return None;
        }
        lock(&self.seen).get(name).filter(|s| s.at.is_some()).map(|s| s.reports.clone())
    }

    /// One clone's report: asked now (a remote agent that does not answer gives `None`).
    pub fn report(&self, agent: &Name, clone: &Name) -> Option<CloneReport> {
        if !self.is_online(agent) {
            return None;
        }
        let report = self.agent(agent).clone_report(clone).ok()?;
        self.note(agent, clone, report.clone());
        report
    }

    /// Asks a remote agent how it and its clones are, and keeps the answer.
    pub fn refresh(&self, name: &Name) -> Result<AgentInfo, AgentError> {
        let agent = self.agent(name);
        let info = agent.info()?;
        let reports = agent.clone_reports()?;
        let mut seen = lock(&self.seen);
        let entry = seen.entry(name.clone()).or_default();
        entry.info = Some(info.clone());
        entry.reports = reports.into_iter().map(|r| (r.name.clone(), r)).collect();
        entry.at = Some(Instant::now());
        Ok(info)
    }

    /// Keeps what an operation learned of a clone (`None`: the agent no longer has it).
    pub fn note(&self, agent: &Name, clone: &Name, report: Option<CloneReport>) {
        if self.is_embedded(agent) {
            return;
        }
        let mut seen = lock(&self.seen);
        let entry = seen.entry(agent.clone()).or_default();
        match report {
            Some(r) => {
                entry.reports.insert(clone.clone(), r);
            }
            None => {
                entry.reports.remove(clone);
            }
        }
    }

    /// Forgets what a dropped agent reported.
    pub fn forget(&self, name: &Name) {
        lock(&self.seen).remove(name);
    }
}

/// The answer to a request that needs an agent that does not answer.
pub fn unreachable(name: &Name) -> ServerError {
    ServerError::Unavailable(format!(
        "agent {name} is unreachable: it is not connected to the server (is `thinclone agent` running on its host, \
         and can it reach the server's agent channel?); nothing was changed; try again when `thinclone agent show \
         {name}` says online"
    ))
}

/// An agent on another host, through the channel.
pub struct RemoteAgent {
    name: Name,
    hub: Arc<Hub>,
}

impl RemoteAgent {
    fn ask(&self, request: Request, timeout: Option<Duration>) -> Result<Reply, AgentError> {
        self.hub.call(&self.name, request, timeout, |_| {})
    }

    fn unexpected(&self, reply: Reply) -> AgentError {
        AgentError {
            kind: ErrorKind::Internal,
            message: format!("agent {} answered out of turn: {:?}", self.name, std::mem::discriminant(&reply)),
        }
    }

    fn done(&self, request: Request, timeout: Option<Duration>) -> Result<(), AgentError> {
        match self.ask(request, timeout)? {
            Reply::Done => Ok(()),
            other => Err(self.unexpected(other)),
        }
    }

    fn report(&self, request: Request, timeout: Option<Duration>) -> Result<CloneReport, AgentError> {
        match self.ask(request, timeout)? {
            Reply::CloneReport { report: Some(report) } => Ok(report),
            other => Err(self.unexpected(other)),
        }
    }

    fn facts(&self, request: Request) -> Result<SourceFacts, AgentError> {
        match self.ask(request, Some(SHORT))? {
            Reply::SourceFacts { facts } => Ok(facts),
            other => Err(self.unexpected(other)),
        }
    }
}

impl Agent for RemoteAgent {
    fn info(&self) -> agent::Result<AgentInfo> {
        match self.ask(Request::Info, Some(SHORT))? {
            Reply::Info { info } => Ok(info),
            other => Err(self.unexpected(other)),
        }
    }

    fn check_source_dir(
        &self,
        path: &str,
        snapshot: bool,
        roots: &[String],
        place: &ImagePlace,
    ) -> agent::Result<SourceFacts> {
        self.facts(Request::CheckSourceDir {
            path: path.to_owned(),
            snapshot,
            roots: roots.to_vec(),
            place: place.clone(),
        })
    }

    fn check_source_url(&self, url: &str) -> agent::Result<SourceFacts> {
        self.facts(Request::CheckSourceUrl { url: url.to_owned() })
    }

    fn check_source(&self, source: &ImageSource, place: &ImagePlace) -> agent::Result<SourceFacts> {
        self.facts(Request::CheckSource { source: source.clone(), place: place.clone() })
    }

    fn make_image(
        &self,
        name: &Name,
        place: &ImagePlace,
        source: &ImageSource,
        transform: &agent::ImageTransform,
        progress: &(dyn Fn(u64, u64) + Sync),
        step: &(dyn Fn(&str) + Sync),
    ) -> agent::Result<MadeImage> {
        let request = Request::MakeImage {
            name: name.clone(),
            place: place.clone(),
            source: source.clone(),
            transform: transform.clone(),
        };
        let reply = self.hub.call(&self.name, request, None, |event| match event {
            Event::Progress { done, total } => progress(done, total),
            Event::Step(message) => step(&message),
        })?;
        match reply {
            Reply::MadeImage { image } => Ok(image),
            other => Err(self.unexpected(other)),
        }
    }

    fn remove_image(&self, name: &Name, place: &ImagePlace) -> agent::Result<()> {
        self.done(Request::RemoveImage { name: name.clone(), place: place.clone() }, Some(CLONE_OP))
    }

    fn cancel_image_jobs(&self) {
        if let Err(e) = self.done(Request::CancelImageJobs, Some(SHORT)) {
            tracing::info!(agent = %self.name, "stopping its image jobs: {e}");
        }
    }

    fn cancel_image_job(&self, name: &Name, place: &ImagePlace) -> agent::Result<bool> {
        match self.ask(Request::CancelImageJob { name: name.clone(), place: place.clone() }, Some(SHORT))? {
            Reply::Bool { value } => Ok(value),
            other => Err(self.unexpected(other)),
        }
    }

    fn port_is_free(&self, port: u16) -> agent::Result<bool> {
        match self.ask(Request::PortIsFree { port }, Some(SHORT))? {
            Reply::Bool { value } => Ok(value),
            other => Err(self.unexpected(other)),
        }
    }

    fn create_clone(&self, spec: &CloneSpec) -> agent::Result<CloneReport> {
        self.report(Request::CreateClone { spec: spec.clone() }, None)
    }

    fn start_clone(&self, name: &Name) -> agent::Result<CloneReport> {
        self.report(Request::StartClone { name: name.clone() }, Some(CLONE_OP))
    }

    fn stop_clone(&self, name: &Name) -> agent::Result<CloneReport> {
        self.report(Request::StopClone { name: name.clone() }, Some(CLONE_OP))
    }

    fn reset_clone(&self, name: &Name) -> agent::Result<CloneReport> {
        self.report(Request::ResetClone { name: name.clone() }, None)
    }

    fn refresh_clone(&self, name: &Name, to: &api::agent::RefreshTarget) -> agent::Result<CloneReport> {
        // As long as a reset: a copy clone copies the new image whole.
        self.report(Request::RefreshClone { name: name.clone(), to: to.clone() }, None)
    }

    fn delete_clone(&self, name: &Name) -> agent::Result<()> {
        self.done(Request::DeleteClone { name: name.clone() }, Some(CLONE_OP))
    }

    fn checkpoint_clone(&self, name: &Name, checkpoint: &Name, message: Option<&str>) -> agent::Result<CloneReport> {
        let request = Request::CheckpointClone {
            name: name.clone(),
            checkpoint: checkpoint.clone(),
            message: message.map(str::to_owned),
        };
        // A copy clone's checkpoint is a full copy: as long as a reset.
        self.report(request, None)
    }

    fn revert_clone(&self, name: &Name, to: Option<&Name>) -> agent::Result<CloneReport> {
        self.report(Request::RevertClone { name: name.clone(), to: to.cloned() }, None)
    }

    fn checkpoint_names(&self, name: &Name) -> agent::Result<Vec<Name>> {
        match self.ask(Request::CheckpointNames { name: name.clone() }, Some(SHORT))? {
            Reply::Names { names } => Ok(names),
            other => Err(self.unexpected(other)),
        }
    }

    fn checkpoints(&self, name: &Name) -> agent::Result<Vec<api::Checkpoint>> {
        match self.ask(Request::Checkpoints { name: name.clone() }, Some(SHORT))? {
            Reply::Checkpoints { checkpoints } => Ok(checkpoints),
            other => Err(self.unexpected(other)),
        }
    }

    fn delete_checkpoint(&self, name: &Name, checkpoint: &Name) -> agent::Result<()> {
        self.done(Request::DeleteCheckpoint { name: name.clone(), checkpoint: checkpoint.clone() }, Some(CLONE_OP))
    }

    fn clone_report(&self, name: &Name) -> agent::Result<Option<CloneReport>> {
        match self.ask(Request::CloneReport { name: name.clone() }, Some(SHORT))? {
            Reply::CloneReport { report } => Ok(report),
            other => Err(self.unexpected(other)),
        }
    }

    fn clone_reports(&self) -> agent::Result<Vec<CloneReport>> {
        match self.ask(Request::CloneReports, Some(SHORT))? {
            Reply::CloneReports { reports } => Ok(reports),
            other => Err(self.unexpected(other)),
        }
    }

    fn write_marker(&self, path: &str, value: &str) -> agent::Result<()> {
        self.done(Request::WriteMarker { path: path.to_owned(), value: value.to_owned() }, Some(SHORT))
    }

    fn read_marker(&self, path: &str) -> agent::Result<Option<String>> {
        match self.ask(Request::ReadMarker { path: path.to_owned() }, Some(SHORT))? {
            Reply::Marker { value } => Ok(value),
            other => Err(self.unexpected(other)),
        }
    }
}
