//! `thinclone schedule create|list|show|run|rm`: images made from one source on a cron
//! schedule, the newest `--keep` kept; `clone refresh` moves a clone to the newest.

use std::path::PathBuf;

use api::{CreateSchedule, Name};
use clap::ArgGroup;

use super::image::{absolute_dir, read_rules, read_script};
use super::{format, Ctx};

#[derive(clap::Subcommand, Debug)]
pub enum ScheduleCommand {
    /// Make images of a source on a schedule (image creators and administrators). Each run
    /// makes an image named NAME-YYYYMMDD-HHMMSS (UTC) with the creator's rights at the
    /// time; the schedule's ready images beyond the newest --keep are removed once no clone
    /// uses them.
    #[command(group(ArgGroup::new("source").required(true).args(["from_url", "from_dir", "from_repo"])))]
    Create {
        /// The schedule's name: at most 47 characters of a-z, 0-9, '-' and '_'.
        name: Name,
        /// When it runs: five cron fields (minute hour day-of-month month day-of-week), in
        /// UTC. "0 2 * * *" is 02:00 every day.
        #[arg(long)]
        cron: String,
        /// How many ready images to keep.
        #[arg(long, default_value_t = 7)]
        keep: u32,
        /// A running server's connection URL. Its password is kept in the server's catalog
        /// for the runs, and never shown.
        #[arg(long, value_name = "URL")]
        from_url: Option<String>,
        /// A data directory or base backup on the agent's host.
        #[arg(long, value_name = "PATH")]
        from_dir: Option<PathBuf>,
        /// With --from-dir: the directory is a crash-consistent snapshot of a running server.
        #[arg(long, requires = "from_dir")]
        snapshot: bool,
        /// A backup repository (pgBackRest) on the agent's host: each run restores its newest
        /// backup.
        #[arg(long, value_name = "PATH")]
        from_repo: Option<PathBuf>,
        /// With --from-repo: the stanza, when the repository holds more than one.
        #[arg(long)]
        stanza: Option<String>,
        /// The team its images belong to [default: yours, if you are in one team only].
        #[arg(long)]
        team: Option<Name>,
        /// The image location to keep its images in.
        #[arg(long, value_name = "LOCATION")]
        location: Option<Name>,
        /// The agent that makes its images.
        #[arg(long, value_name = "AGENT")]
        host: Option<Name>,
        /// Masking rules for each image (doc/MASKING.md).
        #[arg(long, value_name = "RULES.toml")]
        mask: Option<PathBuf>,
        /// A modification script (SQL) for each image; repeatable, run in order.
        #[arg(long = "script", value_name = "FILE.sql")]
        scripts: Vec<PathBuf>,
    },
    /// List the schedules.
    List,
    /// Show a schedule, its last run and its images.
    Show {
        /// The schedule's name.
        name: Name,
    },
    /// Run a schedule now (its next run stays as it was), and wait for the image.
    Run {
        /// The schedule's name.
        name: Name,
        /// Return at once with the operation, instead of waiting for the image.
        #[arg(long)]
        no_wait: bool,
    },
    /// Remove a schedule; the images it made stay, as ordinary images.
    Rm {
        /// The schedule's name.
        name: Name,
    },
}

pub fn run(cmd: ScheduleCommand, ctx: &mut Ctx) -> anyhow::Result<()> {
    match cmd {
        ScheduleCommand::Create {
            name,
            cron,
            keep,
            from_url,
            from_dir,
            snapshot,
            from_repo,
            stanza,
            team,
            location,
            host,
            mask,
            scripts,
        } => {
            let mask = match mask {
                Some(path) => read_rules(&path)?,
                None => Vec::new(),
            };
            let scripts = scripts.iter().map(|p| read_script(p)).collect::<anyhow::Result<Vec<_>>>()?;
            let request = CreateSchedule {
                name,
                cron,
                keep: Some(keep),
                from_url,
                from_dir: from_dir.map(absolute_dir).transpose()?,
                snapshot,
                from_repo: from_repo.map(absolute_dir).transpose()?,
                stanza,
                team,
                location,
                host,
                mask,
                scripts,
            };
            let schedule = ctx.client.create_schedule(&request)?;
            ctx.show(&schedule, format::schedule_fields)
        }
        ScheduleCommand::List => {
            let schedules = ctx.client.list_schedules()?;
            ctx.show_list(&schedules, format::schedules_table)
        }
        ScheduleCommand::Show { name } => {
            let schedule = ctx.client.get_schedule(&name)?;
            ctx.show(&schedule, format::schedule_fields)
        }
        ScheduleCommand::Run { name, no_wait } => {
            ctx.at_once(no_wait);
            let op = ctx.client.run_schedule(&name)?;
            ctx.conclude(op, no_wait, |ctx, op| {
                let image = ctx.client.get_image(&op.target.name)?;
                ctx.show(&image, format::image_fields)
            })
        }
        ScheduleCommand::Rm { name } => Ok(ctx.client.delete_schedule(&name)?),
    }
}
