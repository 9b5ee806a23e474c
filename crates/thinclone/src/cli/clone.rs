//! `thinclone clone create|snapshot|list|show|start|stop|reset|rm|checkpoint|checkpoints|revert`:
//! clones, the private, writable databases made from an image, their checkpoints, branches
//! and snapshot views.

use api::{CreateBranch, CreateCheckpoint, CreateClone, Driver, IdlePolicy, Name, Protect, RevertClone, SetExpiry};
use clap::builder::{PossibleValuesParser, TypedValueParser};

use super::{format, Ctx};

#[derive(clap::Subcommand, Debug)]
pub enum CloneCommand {
    /// Make a clone of an image, or a branch of another clone's checkpoint, and start its
    /// database server; prints how to connect.
    #[command(group = clap::ArgGroup::new("source").required(true).args(["image", "from"]))]
    Create {
        /// The clone's name: 1 to 63 characters of a-z, 0-9, '-' and '_'.
        name: Name,
        /// The image to clone.
        #[arg(long)]
        image: Option<Name>,
        /// A branch: start from checkpoint CHECKPOINT of clone CLONE (from its state now,
        /// checkpointed first, without `@CHECKPOINT`). It runs on the same agent with the
        /// same driver, and shares the checkpoint's storage.
        #[arg(long, value_name = "CLONE[@CHECKPOINT]", value_parser = parse_origin, conflicts_with_all = ["driver", "host"])]
        from: Option<(Name, Option<Name>)>,
        /// How the clone's files are stored: cowfs (a copy-on-write layer over the image,
        /// about a second whatever the size), reflink (files sharing the image's blocks, on
        /// XFS or btrfs) or copy (a full copy). The server chooses when not given.
        #[arg(long, value_parser = driver_parser())]
        driver: Option<Driver>,
        /// The agent to run it on (`thinclone agent list`); one that reaches the image's
        /// location. The server chooses when not given.
        #[arg(long, value_name = "AGENT")]
        host: Option<Name>,
        #[command(flatten)]
        lifetime: Lifetime,
        /// A clone template (`thinclone template list`) whose scripts run on the clone
        /// before it is handed out; if one fails, no clone is made.
        #[arg(long, value_name = "TEMPLATE", conflicts_with = "from")]
        template: Option<Name>,
        /// Return at once with the operation, instead of waiting for the clone.
        #[arg(long)]
        no_wait: bool,
    },
    /// Make a snapshot view: a read-only clone of a checkpoint of another clone, which runs
    /// alongside it; its server refuses every write.
    Snapshot {
        /// The snapshot view's name.
        name: Name,
        /// The clone and checkpoint to show (its state now, checkpointed first, without
        /// `@CHECKPOINT`).
        #[arg(long, value_name = "CLONE[@CHECKPOINT]", value_parser = parse_origin)]
        from: (Name, Option<Name>),
        /// Read-only: what a snapshot view is (accepted for clarity).
        #[arg(long)]
        read_only: bool,
        #[command(flatten)]
        lifetime: Lifetime,
        /// Return at once with the operation, instead of waiting for the clone.
        #[arg(long)]
        no_wait: bool,
    },
    /// List the clones (`show` gives one's connection URL).
    List,
    /// Show one clone, with its connection URL.
    Show {
        /// The clone's name.
        name: Name,
    },
    /// Start a stopped clone on the same port with the same credentials.
    Start(Target),
    /// Stop a clone's database server, keeping its changes.
    Stop(Target),
    /// Throw away a clone's changes: back to its image's state, same port and credentials.
    Reset(Target),
    /// Remove a clone and its changes.
    Rm(Target),
    /// Record a clone's state now, to go back to later with `revert`. The clone's server
    /// keeps running and its connections stay open (it pauses for a moment).
    /// `clone checkpoint rm CLONE CHECKPOINT` removes one.
    Checkpoint(CheckpointArgs),
    /// Set when a clone is removed by itself: `--ttl 8h` from now, `--at TIME`, or `--never`.
    /// A warning event goes out ahead of time (`serve --expiry-warning`).
    Expire {
        /// The clone's name.
        name: Name,
        /// Remove it this long from now (e.g. 8h).
        #[arg(long, value_parser = humantime::parse_duration, group = "when")]
        ttl: Option<std::time::Duration>,
        /// Remove it at this time (RFC 3339).
        #[arg(long, value_parser = parse_time, group = "when")]
        at: Option<api::Timestamp>,
        /// It no longer expires.
        #[arg(long, group = "when")]
        never: bool,
    },
    /// Protect a clone from expiry, from the idle policy's removal and from `rm`, for a
    /// while (`--for 7d`) or until `unprotect`.
    Protect {
        /// The clone's name.
        name: Name,
        /// How long the protection lasts (a lease); for good when not given.
        #[arg(long = "for", value_name = "DURATION", value_parser = humantime::parse_duration)]
        lease: Option<std::time::Duration>,
    },
    /// End a clone's protection.
    Unprotect {
        /// The clone's name.
        name: Name,
    },
    /// Set a clone's idle policy: stop it after `--stop-after` without a client, remove it
    /// after `--remove-after` (0 turns a step off; `--server-default` takes the server's).
    Idle {
        /// The clone's name.
        name: Name,
        #[arg(long, value_parser = humantime::parse_duration)]
        stop_after: Option<std::time::Duration>,
        #[arg(long, value_parser = humantime::parse_duration)]
        remove_after: Option<std::time::Duration>,
    },
    /// List a clone's checkpoints, oldest first, with the disk each keeps.
    Checkpoints {
        /// The clone's name.
        name: Name,
    },
    /// Return a clone to a checkpoint: its server restarts on the same port with the same
    /// credentials, and the checkpoints made after that one are removed.
    Revert {
        /// The clone's name.
        name: Name,
        /// The checkpoint to return to; the latest when not given.
        #[arg(long, value_name = "CHECKPOINT")]
        to: Option<Name>,
        /// Return at once with the operation, instead of waiting for it to end.
        #[arg(long)]
        no_wait: bool,
    },
    /// Remake a clone on the newest ready image of its image's schedule (or on --image),
    /// keeping its name, port and password. Its changes and checkpoints are lost, as with
    /// a reset.
    Refresh {
        /// The clone's name.
        name: Name,
        /// The image to move to [default: the newest of its schedule].
        #[arg(long, value_name = "IMAGE")]
        image: Option<Name>,
        /// Return at once with the operation, instead of waiting for it to end.
        #[arg(long)]
        no_wait: bool,
    },
}

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct CheckpointArgs {
    #[command(subcommand)]
    command: Option<CheckpointCommand>,
    /// The clone's name.
    #[arg(required = true)]
    name: Option<Name>,
    /// What the checkpoint is for.
    #[arg(short, long)]
    message: Option<String>,
    /// The checkpoint's name; the next free `cpN` when not given.
    #[arg(long = "name", value_name = "CHECKPOINT")]
    checkpoint: Option<Name>,
    /// Return at once with the operation, instead of waiting for it to end.
    #[arg(long)]
    no_wait: bool,
}

#[derive(clap::Subcommand, Debug)]
pub enum CheckpointCommand {
    /// Remove one of a clone's checkpoints.
    Rm {
        /// The clone's name.
        name: Name,
        /// The checkpoint's name.
        checkpoint: Name,
        /// Return at once with the operation, instead of waiting for it to end.
        #[arg(long)]
        no_wait: bool,
    },
}

/// When a new clone is removed by itself.
#[derive(clap::Args, Debug, Default)]
pub struct Lifetime {
    /// Remove the clone this long after it is made (e.g. 8h, 3d), unless protected then.
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "expires_at")]
    pub ttl: Option<std::time::Duration>,
    /// Remove the clone at this time (RFC 3339, e.g. 2026-12-01T18:00:00Z), unless protected.
    #[arg(long, value_parser = parse_time)]
    pub expires_at: Option<api::Timestamp>,
}

impl Lifetime {
    fn expires_in(&self) -> Option<u64> {
        self.ttl.map(|d| d.as_secs().max(1))
    }
}

/// An RFC 3339 time.
fn parse_time(text: &str) -> Result<api::Timestamp, String> {
    let at = humantime::parse_rfc3339_weak(text).map_err(|e| format!("{e}: give a time like 2026-12-01T18:00:00Z"))?;
    let seconds = at.duration_since(std::time::UNIX_EPOCH).map_err(|e| e.to_string())?.as_secs();
    Ok(api::Timestamp(seconds as i64))
}

/// The clone an action works on.
#[derive(clap::Args, Debug)]
pub struct Target {
    /// The clone's name.
    pub name: Name,
    /// Return at once with the operation, instead of waiting for it to end.
    #[arg(long)]
    pub no_wait: bool,
}

/// `CLONE[@CHECKPOINT]`.
fn parse_origin(text: &str) -> Result<(Name, Option<Name>), String> {
    let (clone, checkpoint) = match text.split_once('@') {
        Some((clone, checkpoint)) => (clone, Some(checkpoint)),
        None => (text, None),
    };
    let clone = Name::new(clone).map_err(|e| e.to_string())?;
    let checkpoint = checkpoint.map(Name::new).transpose().map_err(|e| e.to_string())?;
    Ok((clone, checkpoint))
}

/// The drivers' names, from the one list in the api crate.
fn driver_parser() -> impl TypedValueParser<Value = Driver> {
    PossibleValuesParser::new(Driver::ALL.map(Driver::as_str))
        .map(|s| s.parse::<Driver>().expect("the possible values are the drivers' names"))
}

pub fn run(cmd: CloneCommand, ctx: &mut Ctx) -> anyhow::Result<()> {
    match cmd {
        CloneCommand::Create { name, image, from, driver, host, lifetime, template, no_wait } => {
            ctx.at_once(no_wait);
            let (expires_in, expires_at) = (lifetime.expires_in(), lifetime.expires_at);
            let op = match (image, from) {
                (_, Some((origin, checkpoint))) => {
                    let request =
                        CreateBranch { name: name.clone(), checkpoint, read_only: false, expires_in, expires_at };
                    ctx.client.create_branch(&origin, &request)?
                }
                (Some(image), None) => {
                    let request =
                        CreateClone { name: name.clone(), image, driver, host, expires_in, expires_at, template };
                    ctx.client.create_clone(&request)?
                }
                (None, None) => unreachable!("clap requires --image or --from"),
            };
            ctx.conclude(op, no_wait, |ctx, _| show(ctx, &name))
        }
        CloneCommand::Snapshot { name, from: (origin, checkpoint), read_only: _, lifetime, no_wait } => {
            ctx.at_once(no_wait);
            let request = CreateBranch {
                name: name.clone(),
                checkpoint,
                read_only: true,
                expires_in: lifetime.expires_in(),
                expires_at: lifetime.expires_at,
            };
            let op = ctx.client.create_branch(&origin, &request)?;
            ctx.conclude(op, no_wait, |ctx, _| show(ctx, &name))
        }
        CloneCommand::List => {
            let clones = ctx.client.list_clones()?;
            ctx.show_list(&clones, format::clones_table)
        }
        CloneCommand::Show { name } => show(ctx, &name),
        CloneCommand::Start(t) => {
            ctx.at_once(t.no_wait);
            let op = ctx.client.start_clone(&t.name)?;
            ctx.conclude(op, t.no_wait, |ctx, _| show(ctx, &t.name))
        }
        CloneCommand::Stop(t) => {
            ctx.at_once(t.no_wait);
            let op = ctx.client.stop_clone(&t.name)?;
            ctx.conclude(op, t.no_wait, |ctx, _| show(ctx, &t.name))
        }
        CloneCommand::Reset(t) => {
            ctx.at_once(t.no_wait);
            let op = ctx.client.reset_clone(&t.name)?;
            ctx.conclude(op, t.no_wait, |ctx, _| show(ctx, &t.name))
        }
        CloneCommand::Rm(t) => {
            ctx.at_once(t.no_wait);
            let op = ctx.client.delete_clone(&t.name)?;
            ctx.conclude(op, t.no_wait, Ctx::print_removal)
        }
        CloneCommand::Checkpoint(CheckpointArgs {
            command: Some(CheckpointCommand::Rm { name, checkpoint, no_wait }),
            ..
        }) => {
            ctx.at_once(no_wait);
            let op = ctx.client.delete_checkpoint(&name, &checkpoint)?;
            ctx.conclude(op, no_wait, Ctx::print_removal)
        }
        CloneCommand::Checkpoint(CheckpointArgs { command: None, name, message, checkpoint, no_wait }) => {
            let name = name.expect("clap requires the clone's name");
            ctx.at_once(no_wait);
            let request = CreateCheckpoint { name: checkpoint, message };
            let op = ctx.client.create_checkpoint(&name, &request)?;
            ctx.conclude(op, no_wait, |ctx, _| {
                let made = ctx.client.made_checkpoint(&name, request.name.as_ref())?;
                ctx.show(&made, format::checkpoint_fields)
            })
        }
        CloneCommand::Expire { name, ttl, at, never } => {
            let request = match (ttl, at, never) {
                (Some(ttl), _, _) => SetExpiry { expires_in: Some(ttl.as_secs().max(1)), expires_at: None },
                (_, Some(at), _) => SetExpiry { expires_in: None, expires_at: Some(at) },
                (_, _, true) => SetExpiry::default(),
                _ => anyhow::bail!("say when: --ttl DURATION, --at TIME or --never"),
            };
            let clone = ctx.client.set_expiry(&name, &request)?;
            ctx.show_clone(&clone)
        }
        CloneCommand::Protect { name, lease } => {
            let clone = ctx.client.protect_clone(&name, &Protect { for_seconds: lease.map(|d| d.as_secs().max(1)) })?;
            ctx.show_clone(&clone)
        }
        CloneCommand::Unprotect { name } => {
            let clone = ctx.client.unprotect_clone(&name)?;
            ctx.show_clone(&clone)
        }
        CloneCommand::Idle { name, stop_after, remove_after } => {
            let policy = IdlePolicy {
                stop_after: stop_after.map(|d| d.as_secs()),
                remove_after: remove_after.map(|d| d.as_secs()),
            };
            let clone = ctx.client.set_idle(&name, &policy)?;
            ctx.show_clone(&clone)
        }
        CloneCommand::Checkpoints { name } => {
            let checkpoints = ctx.client.list_checkpoints(&name)?;
            ctx.show_list(&checkpoints, format::checkpoints_table)
        }
        CloneCommand::Revert { name, to, no_wait } => {
            ctx.at_once(no_wait);
            let op = ctx.client.revert_clone(&name, &RevertClone { to })?;
            ctx.conclude(op, no_wait, |ctx, _| show(ctx, &name))
        }
        CloneCommand::Refresh { name, image, no_wait } => {
            ctx.at_once(no_wait);
            let op = ctx.client.refresh_clone(&name, &api::RefreshClone { image })?;
            ctx.conclude(op, no_wait, |ctx, _| show(ctx, &name))
        }
    }
}

fn show(ctx: &mut Ctx, name: &Name) -> anyhow::Result<()> {
    let clone = ctx.client.get_clone(name)?;
    ctx.show_clone(&clone)
}
