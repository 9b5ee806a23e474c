//! `thinclone clone create|snapshot|list|show|start|stop|reset|rm|checkpoint|checkpoints|revert`:
//! clones, the private, writable databases made from an image, their checkpoints, branches
//! and snapshot views.

use api::{CreateBranch, CreateCheckpoint, CreateClone, Driver, Name, RevertClone};
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
        CloneCommand::Create { name, image, from, driver, host, no_wait } => {
            ctx.at_once(no_wait);
            let op = match (image, from) {
                (_, Some((origin, checkpoint))) => ctx
                    .client
                    .create_branch(&origin, &CreateBranch { name: name.clone(), checkpoint, read_only: false })?,
                (Some(image), None) => {
                    ctx.client.create_clone(&CreateClone { name: name.clone(), image, driver, host })?
                }
                (None, None) => unreachable!("clap requires --image or --from"),
            };
            ctx.conclude(op, no_wait, |ctx, _| show(ctx, &name))
        }
        CloneCommand::Snapshot { name, from: (origin, checkpoint), read_only: _, no_wait } => {
            ctx.at_once(no_wait);
            let request = CreateBranch { name: name.clone(), checkpoint, read_only: true };
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
        CloneCommand::Checkpoints { name } => {
            let checkpoints = ctx.client.list_checkpoints(&name)?;
            ctx.show_list(&checkpoints, format::checkpoints_table)
        }
        CloneCommand::Revert { name, to, no_wait } => {
            ctx.at_once(no_wait);
            let op = ctx.client.revert_clone(&name, &RevertClone { to })?;
            ctx.conclude(op, no_wait, |ctx, _| show(ctx, &name))
        }
    }
}

fn show(ctx: &mut Ctx, name: &Name) -> anyhow::Result<()> {
    let clone = ctx.client.get_clone(name)?;
    ctx.show_clone(&clone)
}
