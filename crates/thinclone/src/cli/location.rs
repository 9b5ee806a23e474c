//! `thinclone location list|add|rm`: where images are kept, and which agents reach each.

use api::agent::CreateLocation;
use api::Name;

use super::{format, Ctx};

#[derive(clap::Subcommand, Debug)]
pub enum LocationCommand {
    /// List the image locations and the agents that reach each.
    List,
    /// Add an image location (administrators): a directory as every agent that reaches it
    /// sees it, e.g. an NFS or SMB share mounted at the same path on each host, or a
    /// directory of one host. Each agent that answers proves whether it reaches it.
    Add {
        /// The location's name: 1 to 63 characters of a-z, 0-9, '-' and '_'.
        name: Name,
        /// The directory's absolute path on the agents' hosts.
        path: String,
    },
    /// Remove an image location that holds no images; its directory is left as it is
    /// (administrators).
    Rm {
        /// The location's name.
        name: Name,
    },
}

pub fn run(cmd: LocationCommand, ctx: &mut Ctx) -> anyhow::Result<()> {
    match cmd {
        LocationCommand::List => {
            let locations = ctx.client.list_locations()?;
            ctx.show_list(&locations, format::locations_table)
        }
        LocationCommand::Add { name, path } => {
            let location = ctx.client.create_location(&CreateLocation { name, path })?;
            ctx.show(&location, format::location_fields)
        }
        LocationCommand::Rm { name } => Ok(ctx.client.delete_location(&name)?),
    }
}
