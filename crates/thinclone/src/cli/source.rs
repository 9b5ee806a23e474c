//! `thinclone source list|add|rm`: the directories on the server's host that images may be
//! made from (`image create --from-dir` takes only data directories inside one).

use std::path::PathBuf;

use api::{CreateSource, Name};

use super::{format, Ctx};

#[derive(clap::Subcommand, Debug)]
pub enum SourceCommand {
    /// List the registered source directories (image creators and administrators).
    List,
    /// Register a directory on the server's host whose data directories images may be made
    /// from (administrators).
    Add {
        /// The source's name: 1 to 63 characters of a-z, 0-9, '-' and '_'.
        name: Name,
        /// The directory, on the server's host.
        path: PathBuf,
    },
    /// Unregister a source directory; images made from it stay (administrators).
    Rm {
        /// The source's name.
        name: Name,
    },
}

pub fn run(cmd: SourceCommand, ctx: &mut Ctx) -> anyhow::Result<()> {
    match cmd {
        SourceCommand::List => {
            let sources = ctx.client.list_sources()?;
            ctx.show_list(&sources, format::sources_table)
        }
        SourceCommand::Add { name, path } => {
            let path = super::image::absolute_dir(path)?;
            let source = ctx.client.create_source(&CreateSource { name, path })?;
            ctx.show(&source, format::source_fields)
        }
        SourceCommand::Rm { name } => Ok(ctx.client.delete_source(&name)?),
    }
}
