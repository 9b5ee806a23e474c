//! `thinclone clone create|list|show|start|stop|reset|rm`: clones, the private, writable
//! databases made from an image.

use api::{CreateClone, Driver, Name};
use clap::builder::{PossibleValuesParser, TypedValueParser};

use super::{format, Ctx};

#[derive(clap::Subcommand, Debug)]
pub enum CloneCommand {
    /// Make a clone of an image and start its database server; prints how to connect.
    Create {
        /// The clone's name: 1 to 63 characters of a-z, 0-9, '-' and '_'.
        name: Name,
        /// The image to clone.
        #[arg(long)]
        image: Name,
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

/// The drivers' names, from the one list in the api crate.
fn driver_parser() -> impl TypedValueParser<Value = Driver> {
    PossibleValuesParser::new(Driver::ALL.map(Driver::as_str))
        .map(|s| s.parse::<Driver>().expect("the possible values are the drivers' names"))
}

pub fn run(cmd: CloneCommand, ctx: &mut Ctx) -> anyhow::Result<()> {
    match cmd {
        CloneCommand::Create { name, image, driver, host, no_wait } => {
            ctx.at_once(no_wait);
            let op = ctx.client.create_clone(&CreateClone { name: name.clone(), image, driver, host })?;
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
    }
}

fn show(ctx: &mut Ctx, name: &Name) -> anyhow::Result<()> {
    let clone = ctx.client.get_clone(name)?;
    ctx.show_clone(&clone)
}
