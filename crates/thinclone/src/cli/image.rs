//! `thinclone image create|list|show|rm`: images, the immutable copies of a database that
//! clones are made from.

use std::path::PathBuf;

use anyhow::{bail, Context};
use api::{CreateImage, Name};
use clap::ArgGroup;

use super::{format, Ctx};

// `Create` holds every source's options; the enum is parsed once per run, so its size does
// not matter.
#[allow(clippy::large_enum_variant)]
#[derive(clap::Subcommand, Debug)]
pub enum ImageCommand {
    /// Make an image of a database, from a data directory, a running server, a logical dump,
    /// a backup repository, or a base backup and its log archive, and wait until it is
    /// ready, showing its progress.
    #[command(group(ArgGroup::new("source").required(true).args(["from_url", "from_dir", "from_dump", "from_repo"])))]
    Create {
        /// The image's name: 1 to 63 characters of a-z, 0-9, '-' and '_'.
        name: Name,
        /// Take a consistent copy of the running database server at this connection URL.
        /// Its password is used, never stored or shown.
        #[arg(long, value_name = "URL")]
        from_url: Option<String>,
        /// Copy this data directory (of a stopped database server, or a base backup) on the
        /// server's machine.
        #[arg(long, value_name = "PATH")]
        from_dir: Option<PathBuf>,
        /// Restore this logical dump (the engine's dump tool's output in its custom, tar or
        /// plain format, or a directory of one) on the server's machine into a new database
        /// of the dump's version.
        #[arg(long, value_name = "PATH")]
        from_dump: Option<PathBuf>,
        /// Restore from this backup repository (pgBackRest) on the server's machine: its
        /// latest point, or --target-time.
        #[arg(long, value_name = "DIR")]
        from_repo: Option<PathBuf>,
        /// With --from-repo: the stanza to restore [default: the repository's only one].
        // (clap does not enforce `requires` towards an argument of the `source` group,
        // clap-rs/clap#4707; the server refuses an option of another source with a 400.)
        #[arg(long, requires = "from_repo")]
        stanza: Option<String>,
        /// With --from-dir (a base backup): a directory of archived log segments on the
        /// server's machine, replayed over the backup to --target-time, --target-lsn or their
        /// end.
        #[arg(long, value_name = "DIR", requires = "from_dir")]
        archive: Option<PathBuf>,
        /// With --from-repo, or --from-dir and --archive: recover to the last transaction
        /// committed at or before this time (RFC 3339, or the engine's timestamp syntax, e.g.
        /// "2026-11-30 02:00:00+00").
        #[arg(long, value_name = "TIME")]
        target_time: Option<String>,
        /// With --from-dir and --archive: recover to this position of the log (e.g.
        /// 0/3000060).
        #[arg(long, value_name = "LSN", requires = "archive", conflicts_with = "target_time")]
        target_lsn: Option<String>,
        /// With --from-dir: the directory is a crash-consistent snapshot of a running server
        /// (LVM, ZFS, a cloud disk snapshot); recovery runs when the image is made.
        #[arg(long, requires = "from_dir")]
        snapshot: bool,
        /// The team the image belongs to [default: yours, if you are in one team only].
        #[arg(long)]
        team: Option<Name>,
        /// The image location to keep it in (`thinclone location list`) [default: `local` on
        /// `thinclone serve`, or the only location].
        #[arg(long, value_name = "LOCATION")]
        location: Option<Name>,
        /// The agent that makes it: one that reaches the location, and, with --from-dir, on
        /// whose host the directory is [default: the only such agent].
        #[arg(long, value_name = "AGENT")]
        host: Option<Name>,
        /// Masking rules (a TOML file of `[[rule]]` tables: table, column, strategy, and
        /// value, days or database where needed; doc/MASKING.md), applied before anyone can
        /// connect. Any failure, or an original value left in any file, fails the image.
        #[arg(long, value_name = "RULES.toml")]
        mask: Option<PathBuf>,
        /// A modification script (SQL), run on the image before masking and sealing;
        /// repeatable, run in order. A failing script fails the image.
        #[arg(long = "script", value_name = "FILE.sql")]
        scripts: Vec<PathBuf>,
        /// Return at once with the operation, instead of waiting for the image.
        #[arg(long)]
        no_wait: bool,
    },
    /// List the images.
    List,
    /// Show one image.
    Show {
        /// The image's name.
        name: Name,
    },
    /// Remove an image that no clone uses.
    Rm {
        /// The image's name.
        name: Name,
        /// Return at once with the operation, instead of waiting for the removal.
        #[arg(long)]
        no_wait: bool,
    },
}

pub fn run(cmd: ImageCommand, ctx: &mut Ctx) -> anyhow::Result<()> {
    match cmd {
        ImageCommand::Create {
            name,
            from_url,
            from_dir,
            from_dump,
            from_repo,
            stanza,
            archive,
            target_time,
            target_lsn,
            snapshot,
            team,
            location,
            host,
            mask,
            scripts,
            no_wait,
        } => {
            let from_dir = from_dir.map(absolute_dir).transpose()?;
            let from_dump = from_dump.map(absolute_dir).transpose()?;
            let from_repo = from_repo.map(absolute_dir).transpose()?;
            let archive = archive.map(absolute_dir).transpose()?;
            let mask = match mask {
                Some(path) => read_rules(&path)?,
                None => Vec::new(),
            };
            let scripts = scripts.iter().map(|p| read_script(p)).collect::<anyhow::Result<Vec<_>>>()?;
            let request = CreateImage {
                name,
                from_dir,
                from_url,
                from_dump,
                from_repo,
                stanza,
                archive,
                target_time,
                target_lsn,
                snapshot,
                team,
                location,
                host,
                mask,
                scripts,
            };
            ctx.at_once(no_wait);
            let op = ctx.client.create_image(&request)?;
            ctx.conclude(op, no_wait, |ctx, _| {
                let image = ctx.client.get_image(&request.name)?;
                ctx.show(&image, format::image_fields)
            })
        }
        ImageCommand::List => {
            let images = ctx.client.list_images()?;
            ctx.show_list(&images, format::images_table)
        }
        ImageCommand::Show { name } => {
            let image = ctx.client.get_image(&name)?;
            ctx.show(&image, format::image_fields)
        }
        ImageCommand::Rm { name, no_wait } => {
            ctx.at_once(no_wait);
            let op = ctx.client.delete_image(&name)?;
            ctx.conclude(op, no_wait, Ctx::print_removal)
        }
    }
}

/// The server resolves a relative path against its own working directory, not the user's,
/// so send an absolute one.
pub fn absolute_dir(dir: PathBuf) -> anyhow::Result<String> {
    let dir = std::path::absolute(&dir).with_context(|| format!("resolving {}", dir.display()))?;
    match dir.to_str() {
        Some(s) => Ok(s.to_owned()),
        None => bail!("the path {} is not valid UTF-8, which the API cannot carry", dir.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relative_source_directory_is_made_absolute() {
        let dir = absolute_dir(PathBuf::from("data/main")).unwrap();
        assert_eq!(PathBuf::from(&dir), std::env::current_dir().unwrap().join("data/main"));
    }
}

/// A masking rules file: `[[rule]]` tables.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default)]
    rule: Vec<api::MaskRule>,
}

pub(crate) fn read_rules(path: &std::path::Path) -> anyhow::Result<Vec<api::MaskRule>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading the masking rules {}", path.display()))?;
    let file: RulesFile =
        toml::from_str(&text).with_context(|| format!("{}: not a file of [[rule]] tables", path.display()))?;
    if file.rule.is_empty() {
        bail!("{}: no [[rule]] in it", path.display());
    }
    Ok(file.rule)
}

pub(crate) fn read_script(path: &std::path::Path) -> anyhow::Result<api::ImageScript> {
    let sql = std::fs::read_to_string(path).with_context(|| format!("reading the script {}", path.display()))?;
    let name = path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
    Ok(api::ImageScript { name, sql, database: None })
}
