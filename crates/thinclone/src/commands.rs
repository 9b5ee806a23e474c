//! `thinclone image …` and `thinclone clone …`: the CLI's commands over the daemon's REST API.
//!
//! Each command is one or a few calls of [`Client`]. With `--json` a command prints the
//! daemon's object (or array) on stdout and nothing else; without it, a table for `list`
//! and a `key: value` listing for one object. Progress goes to stderr, and only to a terminal.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::ArgGroup;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::client::{Client, CloneAction, Image, ImageSource};

/// How often `image create` asks the daemon how far the image has got.
const POLL_INTERVAL: Duration = Duration::from_millis(300);

/// Where the daemon is and how to print its answers; accepted before or after the subcommand.
#[derive(clap::Args, Debug, Clone)]
pub struct ClientOpts {
    /// The daemon's base URL.
    #[arg(long, env = "THINCLONE_URL", default_value = "http://127.0.0.1:7420", global = true)]
    pub url: String,
    /// Print the daemon's JSON answer on stdout instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(clap::Subcommand, Debug)]
pub enum ImageCommand {
    /// Make an image from a data directory or a running server, and wait until it is ready.
    #[command(group(ArgGroup::new("source").required(true).args(["from_url", "from_dir"])))]
    Create {
        /// The image's name: a-z, 0-9, '-' and '_'.
        name: String,
        /// Take a base backup of the server at this connection URL.
        #[arg(long, value_name = "URL")]
        from_url: Option<String>,
        /// Copy this PostgreSQL data directory (of a stopped server) on the daemon's machine.
        #[arg(long, value_name = "PATH")]
        from_dir: Option<PathBuf>,
        /// Answer at once with the image still `creating`, instead of waiting for it.
        #[arg(long)]
        no_wait: bool,
    },
    /// List the images.
    List,
    /// Remove an image that no clone uses.
    Rm {
        /// The image's name.
        name: String,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum CloneCommand {
    /// Make a clone of an image and start its server; prints how to connect.
    Create {
        /// The clone's name: a-z, 0-9, '-' and '_'.
        name: String,
        /// The image to clone.
        #[arg(long)]
        image: String,
        /// How the clone's files are made (the daemon's default when not given).
        #[arg(long, value_enum)]
        driver: Option<Driver>,
    },
    /// List the clones.
    List,
    /// Show one clone, with its connection URL.
    Show {
        /// The clone's name.
        name: String,
    },
    /// Stop a clone's server, keeping its changes.
    Stop {
        /// The clone's name.
        name: String,
    },
    /// Start a stopped clone on the same port with the same credentials.
    Start {
        /// The clone's name.
        name: String,
    },
    /// Remove a clone and its changes.
    Rm {
        /// The clone's name.
        name: String,
    },
    /// Throw away a clone's changes: back to its image's state, same port and credentials.
    Reset {
        /// The clone's name.
        name: String,
    },
}

/// How a clone's files are made.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// A copy-on-write FUSE layer over the image: about a second, whatever the size.
    Cowfs,
    /// Files that share the image's blocks (XFS with reflink=1, btrfs): native speed.
    Reflink,
    /// A full copy of the image's files.
    Copy,
}

impl Driver {
    fn as_str(self) -> &'static str {
        match self {
            Driver::Cowfs => "cowfs",
            Driver::Reflink => "reflink",
            Driver::Copy => "copy",
        }
    }
}

pub fn image(cmd: ImageCommand, opts: &ClientOpts) -> anyhow::Result<()> {
    let client = Client::new(&opts.url);
    match cmd {
        ImageCommand::Create { name, from_url, from_dir, no_wait } => {
            let source = match (from_url, from_dir) {
                (Some(url), None) => ImageSource::Url(url),
                (None, Some(dir)) => ImageSource::Dir(absolute_dir(dir)?),
                // clap's "source" group makes exactly one of them required.
                _ => bail!("give exactly one of --from-url and --from-dir"),
            };
            let image = client.create_image(&name, &source)?;
            let image = if no_wait {
                image
            } else {
                let bar = progress_bar(&name);
                let result = wait_for_image(image, POLL_INTERVAL, || client.image(&name), &bar);
                bar.finish_and_clear();
                match result {
                    Ok(image) => image,
                    Err(WaitError::Failed(image)) => {
                        if opts.json {
                            print_json(&image)?;
                        }
                        bail!("image {} failed: {}", image.name, image.message.as_deref().unwrap_or("no reason given"))
                    }
                    Err(WaitError::Other(e)) => return Err(e),
                }
            };
            print_one(&image, opts.json, image_fields)
        }
        ImageCommand::List => {
            let images = client.images()?;
            if opts.json {
                print_json(&images)
            } else {
                print_stdout(&images_table(&images))
            }
        }
        ImageCommand::Rm { name } => client.remove_image(&name),
    }
}

pub fn clone(cmd: CloneCommand, opts: &ClientOpts) -> anyhow::Result<()> {
    let client = Client::new(&opts.url);
    let clone = match cmd {
        CloneCommand::Create { name, image, driver } => {
            client.create_clone(&name, &image, driver.map(Driver::as_str))?
        }
        CloneCommand::List => {
            let clones = client.clones()?;
            return if opts.json { print_json(&clones) } else { print_stdout(&clones_table(&clones)) };
        }
        CloneCommand::Show { name } => client.clone_named(&name)?,
        CloneCommand::Stop { name } => client.clone_action(&name, CloneAction::Stop)?,
        CloneCommand::Start { name } => client.clone_action(&name, CloneAction::Start)?,
        CloneCommand::Reset { name } => client.clone_action(&name, CloneAction::Reset)?,
        CloneCommand::Rm { name } => return client.remove_clone(&name),
    };
    print_one(&clone, opts.json, clone_fields)
}

/// The daemon resolves a relative path against its own working directory, not the user's,
/// so send an absolute one.
fn absolute_dir(dir: PathBuf) -> anyhow::Result<String> {
    let dir = std::path::absolute(&dir).with_context(|| format!("resolving {}", dir.display()))?;
    match dir.to_str() {
        Some(s) => Ok(s.to_owned()),
        None => bail!("the path {} is not valid UTF-8, which the API cannot carry", dir.display()),
    }
}

enum WaitError {
    /// The image ended `failed`; its `message` says why.
    Failed(Box<Image>),
    Other(anyhow::Error),
}

/// Polls until the image is `ready` (returned) or `failed`, showing its progress on `bar`.
fn wait_for_image(
    mut image: Image,
    interval: Duration,
    mut poll: impl FnMut() -> anyhow::Result<Image>,
    bar: &ProgressBar,
) -> Result<Image, WaitError> {
    loop {
        match image.status.as_str() {
            "ready" => return Ok(image),
            "failed" => return Err(WaitError::Failed(Box::new(image))),
            "creating" => show_progress(bar, &image),
            other => {
                return Err(WaitError::Other(anyhow::anyhow!(
                    "image {} is {other:?}, which this thinclone does not know",
                    image.name
                )))
            }
        }
        std::thread::sleep(interval);
        image = poll().map_err(WaitError::Other)?;
    }
}

fn progress_bar(name: &str) -> ProgressBar {
    let bar = if std::io::stderr().is_terminal() { ProgressBar::new_spinner() } else { ProgressBar::hidden() };
    bar.set_style(spinner_style());
    bar.set_prefix(format!("creating image {name}"));
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {prefix} {elapsed}").expect("a valid template")
}

fn bytes_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{spinner} {prefix} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}",
    )
    .expect("a valid template")
    .progress_chars("=> ")
}

/// Bytes done of total when the daemon says, a spinner otherwise.
fn show_progress(bar: &ProgressBar, image: &Image) {
    match image.progress {
        Some(p) if p.total_bytes > 0 => {
            let first = bar.length().is_none();
            // The total is an estimate that may grow, or be passed.
            bar.set_length(p.total_bytes.max(p.done_bytes));
            bar.set_position(p.done_bytes);
            if first {
                bar.set_style(bytes_style());
                // Measure throughput from here: the time spent before the first figure
                // is not time spent copying these bytes.
                bar.reset_eta();
            }
        }
        _ => {}
    }
}

fn print_one<T: Serialize>(
    object: &T,
    json: bool,
    fields: fn(&T) -> Vec<(&'static str, String)>,
) -> anyhow::Result<()> {
    if json {
        print_json(object)
    } else {
        print_stdout(&key_values(&fields(object)))
    }
}

fn print_json<T: Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(value).context("encoding JSON")?;
    text.push('\n');
    print_stdout(&text)
}

fn print_stdout(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes()).and_then(|()| out.flush()).context("writing to stdout")
}

fn image_fields(image: &Image) -> Vec<(&'static str, String)> {
    let mut fields = vec![("name", image.name.clone()), ("status", image.status.clone())];
    if let Some(message) = &image.message {
        fields.push(("message", message.clone()));
    }
    if let Some(p) = image.progress {
        fields.push(("progress", format!("{} of about {}", human_bytes(p.done_bytes), human_bytes(p.total_bytes))));
    }
    fields.extend([
        ("pg_version", opt(image.pg_version)),
        ("logical size", opt_bytes(image.logical_bytes)),
        ("stored size", opt_bytes(image.stored_bytes)),
        ("files", opt(image.file_count)),
        ("source", opt(image.source.as_deref())),
        ("created_at", opt(image.created_at.as_deref())),
    ]);
    fields
}

fn clone_fields(clone: &crate::client::Clone) -> Vec<(&'static str, String)> {
    let mut fields =
        vec![("name", clone.name.clone()), ("image", clone.image.clone()), ("status", clone.status.clone())];
    if let Some(message) = &clone.message {
        fields.push(("message", message.clone()));
    }
    fields.extend([
        ("driver", opt(clone.driver.as_deref())),
        ("port", opt(clone.port)),
        ("url", opt(clone.url.as_deref())),
        ("layer size", opt_bytes(clone.layer_bytes)),
        ("created_at", opt(clone.created_at.as_deref())),
    ]);
    fields
}

fn images_table(images: &[Image]) -> String {
    let rows = images
        .iter()
        .map(|i| {
            vec![
                i.name.clone(),
                image_status(i),
                opt(i.pg_version),
                opt_bytes(i.logical_bytes),
                opt_bytes(i.stored_bytes),
                opt(i.created_at.as_deref()),
            ]
        })
        .collect::<Vec<_>>();
    table(
        &[("NAME", Left), ("STATUS", Left), ("PG", Right), ("LOGICAL", Right), ("STORED", Right), ("CREATED", Left)],
        &rows,
    )
}

/// `creating 42%` while the daemon reports progress, else the bare status.
fn image_status(image: &Image) -> String {
    match image.progress {
        Some(p) if image.status == "creating" && p.total_bytes > 0 => {
            let percent = (p.done_bytes.min(p.total_bytes) as f64 * 100.0 / p.total_bytes as f64).floor();
            format!("creating {percent:.0}%")
        }
        _ => image.status.clone(),
    }
}

fn clones_table(clones: &[crate::client::Clone]) -> String {
    let rows = clones
        .iter()
        .map(|c| {
            vec![
                c.name.clone(),
                c.image.clone(),
                c.status.clone(),
                opt(c.driver.as_deref()),
                opt(c.port),
                opt_bytes(c.layer_bytes),
                opt(c.url.as_deref()),
            ]
        })
        .collect::<Vec<_>>();
    table(
        &[
            ("NAME", Left),
            ("IMAGE", Left),
            ("STATUS", Left),
            ("DRIVER", Left),
            ("PORT", Right),
            ("LAYER", Right),
            ("URL", Left),
        ],
        &rows,
    )
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Align {
    Left,
    Right,
}
use Align::{Left, Right};

/// Columns two spaces apart, each as wide as its widest cell, with no trailing spaces.
fn table(columns: &[(&str, Align)], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = columns.iter().map(|(h, _)| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let headers: Vec<String> = columns.iter().map(|(h, _)| h.to_string()).collect();
    for row in std::iter::once(&headers).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            let (width, align) = (widths[i], columns[i].1);
            if i > 0 {
                line.push_str("  ");
            }
            match align {
                Left => write!(line, "{cell:<width$}"),
                Right => write!(line, "{cell:>width$}"),
            }
            .expect("writing to a String");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `key: value` lines with the values aligned.
fn key_values(fields: &[(&str, String)]) -> String {
    let width = fields.iter().map(|(k, _)| k.len() + 1).max().unwrap_or(0);
    let mut out = String::new();
    for (key, value) in fields {
        writeln!(out, "{:<width$} {value}", format!("{key}:")).expect("writing to a String");
    }
    out
}

fn opt<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn opt_bytes(value: Option<u64>) -> String {
    value.map_or_else(|| "-".to_owned(), human_bytes)
}

/// Sizes in binary units with one decimal: `512 B`, `240.0 KiB`, `600.0 MiB`, `1.5 GiB`.
pub(crate) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    // Round first, so 1023.96 KiB shows as 1.0 MiB rather than 1024.0 KiB.
    while (value * 10.0).round() / 10.0 >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::VecDeque;

    use clap::{CommandFactory, Parser};

    use super::*;
    use crate::client::Progress;

    /// The way main.rs is meant to wire these in.
    #[derive(Parser, Debug)]
    struct Cli {
        #[command(subcommand)]
        command: Command,
    }

    #[derive(clap::Subcommand, Debug)]
    enum Command {
        Image {
            #[command(subcommand)]
            command: ImageCommand,
            #[command(flatten)]
            opts: ClientOpts,
        },
        Clone {
            #[command(subcommand)]
            command: CloneCommand,
            #[command(flatten)]
            opts: ClientOpts,
        },
    }

    fn parse(args: &str) -> Result<Command, clap::Error> {
        Cli::try_parse_from(std::iter::once("thinclone").chain(args.split_whitespace())).map(|cli| cli.command)
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn image_create_takes_exactly_one_source() {
        let both = parse("image create prod --from-url postgresql://h/db --from-dir /data").unwrap_err();
        assert_eq!(both.kind(), clap::error::ErrorKind::ArgumentConflict);
        let neither = parse("image create prod").unwrap_err();
        assert_eq!(neither.kind(), clap::error::ErrorKind::MissingRequiredArgument);

        match parse("image create prod --from-dir /data --no-wait").unwrap() {
            Command::Image { command: ImageCommand::Create { name, from_url, from_dir, no_wait }, .. } => {
                assert_eq!(name, "prod");
                assert_eq!(from_url, None);
                assert_eq!(from_dir, Some(PathBuf::from("/data")));
                assert!(no_wait);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn client_options_are_accepted_after_the_subcommand() {
        match parse("image list --json --url http://127.0.0.1:9999").unwrap() {
            Command::Image { command: ImageCommand::List, opts } => {
                assert!(opts.json);
                assert_eq!(opts.url, "http://127.0.0.1:9999");
            }
            other => panic!("{other:?}"),
        }
        match parse("clone --json show alice").unwrap() {
            Command::Clone { command: CloneCommand::Show { name }, opts } => {
                assert!(opts.json);
                assert_eq!(name, "alice");
            }
            other => panic!("{other:?}"),
        }
        if std::env::var_os("THINCLONE_URL").is_none() {
            match parse("clone list").unwrap() {
                Command::Clone { opts, .. } => {
                    assert!(!opts.json);
                    assert_eq!(opts.url, "http://127.0.0.1:7420");
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn clone_create_needs_an_image_and_knows_its_drivers() {
        assert_eq!(parse("clone create alice").unwrap_err().kind(), clap::error::ErrorKind::MissingRequiredArgument);
        assert_eq!(
            parse("clone create alice --image prod --driver zfs").unwrap_err().kind(),
            clap::error::ErrorKind::InvalidValue
        );
        match parse("clone create alice --image prod --driver copy").unwrap() {
            Command::Clone { command: CloneCommand::Create { name, image, driver }, .. } => {
                assert_eq!((name.as_str(), image.as_str(), driver), ("alice", "prod", Some(Driver::Copy)));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn sizes_are_human_readable() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1.0 KiB");
        assert_eq!(human_bytes(245_760), "240.0 KiB");
        assert_eq!(human_bytes(512 * 1024 * 1024), "512.0 MiB");
        assert_eq!(human_bytes(629_145_600), "600.0 MiB");
        assert_eq!(human_bytes(1024 * 1024 - 1), "1.0 MiB");
        assert_eq!(human_bytes(3 * 1024 * 1024 * 1024 / 2), "1.5 GiB");
        assert_eq!(human_bytes(u64::MAX), "16.0 EiB");
    }

    fn image(name: &str, status: &str, progress: Option<(u64, u64)>) -> Image {
        Image {
            name: name.to_owned(),
            status: status.to_owned(),
            message: None,
            pg_version: Some(15),
            logical_bytes: Some(629_145_600),
            stored_bytes: Some(633_000_000),
            file_count: Some(1123),
            source: Some("/var/lib/postgresql/15/main".to_owned()),
            created_at: Some("2026-11-21T23:00:00Z".to_owned()),
            progress: progress.map(|(done_bytes, total_bytes)| Progress { done_bytes, total_bytes }),
            extra: Default::default(),
        }
    }

    #[test]
    fn the_images_table_is_aligned() {
        let mut staging = image("staging-eu", "creating", Some((1 << 30, 4 << 30)));
        staging.pg_version = None;
        staging.logical_bytes = None;
        let table = images_table(&[image("prod", "ready", None), staging]);
        assert_eq!(
            table,
            "\
NAME        STATUS        PG    LOGICAL     STORED  CREATED
prod        ready         15  600.0 MiB  603.7 MiB  2026-11-21T23:00:00Z
staging-eu  creating 25%   -          -  603.7 MiB  2026-11-21T23:00:00Z
"
        );
        assert_eq!(images_table(&[]), "NAME  STATUS  PG  LOGICAL  STORED  CREATED\n");
    }

    #[test]
    fn the_clones_table_is_aligned() {
        let clone: crate::client::Clone = serde_json::from_value(serde_json::json!({
            "name": "alice", "image": "prod", "status": "ready", "message": null, "driver": "cowfs",
            "port": 7501, "url": "postgresql://postgres:pw@127.0.0.1:7501/postgres", "layer_bytes": 245760,
            "logical_bytes": 629145600, "created_at": "2026-11-21T23:01:00Z"
        }))
        .unwrap();
        let stopped: crate::client::Clone = serde_json::from_value(serde_json::json!({
            "name": "bob-long-name", "image": "prod", "status": "stopped", "driver": "copy", "port": 7502,
            "url": "postgresql://postgres:pw@127.0.0.1:7502/postgres", "layer_bytes": 629145600
        }))
        .unwrap();
        assert_eq!(
            clones_table(&[clone.clone(), stopped]),
            "\
NAME           IMAGE  STATUS   DRIVER  PORT      LAYER  URL
alice          prod   ready    cowfs   7501  240.0 KiB  postgresql://postgres:pw@127.0.0.1:7501/postgres
bob-long-name  prod   stopped  copy    7502  600.0 MiB  postgresql://postgres:pw@127.0.0.1:7502/postgres
"
        );
        assert_eq!(
            key_values(&clone_fields(&clone)),
            "\
name:       alice
image:      prod
status:     ready
driver:     cowfs
port:       7501
url:        postgresql://postgres:pw@127.0.0.1:7501/postgres
layer size: 240.0 KiB
created_at: 2026-11-21T23:01:00Z
"
        );
    }

    #[test]
    fn one_image_is_listed_key_by_key() {
        let mut failed = image("prod", "failed", None);
        failed.message = Some("pg_basebackup failed: connection refused".to_owned());
        assert_eq!(
            key_values(&image_fields(&failed)),
            "\
name:         prod
status:       failed
message:      pg_basebackup failed: connection refused
pg_version:   15
logical size: 600.0 MiB
stored size:  603.7 MiB
files:        1123
source:       /var/lib/postgresql/15/main
created_at:   2026-11-21T23:00:00Z
"
        );
    }

    #[test]
    fn waiting_polls_until_the_image_is_ready() {
        let answers = RefCell::new(VecDeque::from([
            image("prod", "creating", None),
            image("prod", "creating", Some((10, 100))),
            image("prod", "creating", Some((150, 140))),
            image("prod", "ready", None),
        ]));
        let bar = ProgressBar::hidden();
        let poll = || Ok(answers.borrow_mut().pop_front().expect("no more polls after ready"));
        let ready = wait_for_image(image("prod", "creating", None), Duration::ZERO, poll, &bar).ok().unwrap();
        assert_eq!(ready.status, "ready");
        assert!(answers.borrow().is_empty());
        assert_eq!((bar.position(), bar.length()), (150, Some(150)));
    }

    #[test]
    fn waiting_ends_with_the_failed_image_or_the_polls_error() {
        let mut failed = image("prod", "failed", None);
        failed.message = Some("not a PostgreSQL data directory".to_owned());
        let mut answers = vec![failed];
        let bar = ProgressBar::hidden();
        match wait_for_image(image("prod", "creating", None), Duration::ZERO, || Ok(answers.pop().unwrap()), &bar) {
            Err(WaitError::Failed(image)) => {
                assert_eq!(image.message.as_deref(), Some("not a PostgreSQL data directory"))
            }
            _ => panic!("expected the failed image"),
        }
        let poll = || Err(anyhow::anyhow!("no image named prod"));
        match wait_for_image(image("prod", "creating", None), Duration::ZERO, poll, &bar) {
            Err(WaitError::Other(e)) => assert_eq!(e.to_string(), "no image named prod"),
            _ => panic!("expected the poll's error"),
        }
    }

    #[test]
    fn a_relative_source_directory_is_made_absolute() {
        let dir = absolute_dir(PathBuf::from("data/main")).unwrap();
        assert_eq!(PathBuf::from(&dir), std::env::current_dir().unwrap().join("data/main"));
    }
}
