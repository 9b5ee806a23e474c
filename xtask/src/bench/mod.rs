//! The benchmarks (doc/BENCHMARKING.md): `cargo xtask bench cowfs`, `cargo xtask bench
//! suite`, `cargo xtask bench agents` and `cargo xtask bench mariadb`. cowfs, suite and
//! mariadb measure thinclone and a baseline in the same run and report ratios; agents
//! measures thinclone against the issue's targets.
//! Each writes its section of BENCHMARKS.md and its JSON file under bench/results/.
//!
//! This module holds what every benchmark shares: the common options and the [`Run`] (work
//! directory, logs, command log, PostgreSQL, the thinclone binary, result files). The
//! modules beside it are the parts benchmarks are made of; `cowfs`, `suite`, `agents` and
//! `mariadb` are the benchmarks.

pub mod ab;
pub mod agents;
pub mod cowfs;
pub mod exec;
pub mod fio;
pub mod host;
pub mod machine;
pub mod mariadb;
pub mod markdown;
pub mod pg;
pub mod pgbench;
pub mod progress;
pub mod stats;
pub mod suite;
pub mod thinclone;

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use exec::Exec;
use pg::Pg;
use progress::{log, warn};

/// The benchmarks.
#[derive(Debug, clap::Subcommand)]
pub enum Bench {
    /// cowfs against the filesystem underneath it: fio, and pgbench on a cowfs clone against
    /// a full copy.
    Cowfs(cowfs::Options),
    /// Clones, disk, query speed, images and many clones, against cp -a, reflink copies,
    /// CREATE DATABASE and pg_basebackup.
    Suite(suite::Options),
    /// One server and many agents, each in a network namespace of its own: the time to each
    /// of many clones placed by the server, and `clone list` with all of them (issue 11).
    Agents(agents::Options),
    /// MariaDB clones (issue 16): time to a ready clone and disk per fresh clone, cowfs
    /// against copy; sysbench read-write and read-only on a cowfs clone against a full copy.
    Mariadb(mariadb::Options),
}

pub fn main(bench: Bench) -> Result<()> {
    match bench {
        Bench::Cowfs(o) => cowfs::main(o),
        Bench::Suite(o) => suite::main(o),
        Bench::Agents(o) => agents::main(o),
        Bench::Mariadb(o) => mariadb::main(o),
    }
}

/// Options every benchmark takes.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// Smoke test: tiny sizes, few repeats and 3-second runs, every item end to end. Its
    /// figures are not to be judged; results go to bench/results/quick/ unless --md or
    /// --json are given.
    #[arg(long)]
    pub quick: bool,
    /// Markdown file whose section is replaced [default: BENCHMARKS.md in the repository].
    #[arg(long, value_name = "FILE")]
    pub md: Option<PathBuf>,
    /// JSON results file [default: bench/results/NAME.json].
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Keep the scratch data (not the mounts or servers) after the run.
    #[arg(long)]
    pub keep: bool,
    /// The thinclone binary to measure, instead of building it with `cargo build --release
    /// -p thinclone`.
    #[arg(long, env = "THINCLONE_BIN", value_name = "PATH")]
    pub bin: Option<PathBuf>,
    /// PostgreSQL's server programs [default: /usr/lib/postgresql/15/bin, else the newest].
    #[arg(long, env = "PGBIN", value_name = "DIR")]
    pub pgbin: Option<PathBuf>,
    /// No page-cache drops: no cold runs (for a shared machine).
    #[arg(long)]
    pub no_drop_caches: bool,
    /// Print the estimated run time for these options and exit.
    #[arg(long)]
    pub estimate: bool,
}

/// The repository (xtask's parent directory).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the repository").to_owned()
}

/// One run of a benchmark: its directories, command log, PostgreSQL, thinclone binary and
/// result files. Dropping it removes the scratch data (unless `--keep`, or a mount is left
/// under the work directory); the guards of servers, mounts and daemons, made after it, are
/// dropped before it.
pub struct Run {
    pub repo: PathBuf,
    pub workdir: PathBuf,
    /// Scratch data, removed at the end.
    pub data: PathBuf,
    /// Logs, kept.
    pub logs: PathBuf,
    /// Unix sockets of hand-started servers.
    pub sock: PathBuf,
    pub exec: Arc<Exec>,
    pub pg: Pg,
    pub bin: PathBuf,
    pub quick: bool,
    pub keep: bool,
    /// Whether the page cache is dropped before cold runs.
    pub can_drop: bool,
    pub md: PathBuf,
    pub json: PathBuf,
    pub started: Instant,
    _lock: host::WorkdirLock,
}

impl Run {
    /// Checks the machine, prepares the work directory (locked against a second run) and
    /// finds or builds the thinclone binary.
    /// `name` names its JSON file (`bench/results/NAME.json`).
    pub fn start(name: &'static str, workdir: &Path, common: &Common) -> Result<Run> {
        if !sys::user::running_as_root() {
            bail!("run as root (FUSE mounts, loop devices, servers as postgres, drop_caches)");
        }
        if !Path::new("/dev/fuse").exists() {
            bail!("/dev/fuse is missing");
        }
        let pg = Pg::find(common.pgbin.as_deref())?;
        let repo = repo();
        let workdir = absolute(workdir)?;
        if ["/", "/var", "/var/tmp", "/tmp", "/root", "/home"].iter().any(|d| workdir == Path::new(d)) {
            bail!("refusing --workdir {}: use a dedicated directory", workdir.display());
        }
        let (md, json) = result_files(&repo, name, common)?;
        std::fs::create_dir_all(&workdir)?;
        // The postgres user must be able to traverse it.
        std::fs::set_permissions(&workdir, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        let lock = host::lock_workdir(&workdir)?;
        let left = host::mounts_under(&workdir);
        if !left.is_empty() {
            bail!("mounts remain under {} from an earlier run: {left:?}; unmount them first", workdir.display());
        }
        let (data, logs, sock) = (workdir.join("data"), workdir.join("logs"), workdir.join("sock"));
        for dir in [&data, &logs, &sock] {
            sys::tree::remove(dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        std::fs::create_dir_all(&data)?;
        pg::make_owned_dir(&logs.join("pg"), &pg.user, 0o755)?;
        pg::make_owned_dir(&sock, &pg.user, 0o700)?;
        let exec = Arc::new(Exec::new(&logs.join("commands.log"))?);
        exec::catch_interrupts();
        log(&format!("workdir {}, logs in {}", workdir.display(), logs.display()));
        let bin = thinclone::binary(&exec, &repo, common.bin.as_deref(), &logs.join("build.log"))?;
        let can_drop = !common.no_drop_caches && {
            let ok = host::can_drop_caches();
            if !ok {
                warn("cannot write /proc/sys/vm/drop_caches here: no cold runs");
            }
            ok
        };
        Ok(Run {
            repo,
            workdir,
            data,
            logs,
            sock,
            exec,
            pg,
            bin,
            quick: common.quick,
            keep: common.keep,
            can_drop,
            md,
            json,
            started: Instant::now(),
            _lock: lock,
        })
    }

    /// Drops the page cache, when this run may.
    pub fn drop_caches(&self) -> Result<()> {
        if self.can_drop {
            host::drop_caches()?;
        }
        Ok(())
    }

    /// Checks there is `need` bytes of room in the work directory.
    pub fn need_space(&self, need: u64) -> Result<()> {
        let free = host::free_bytes(&self.workdir)?;
        if free < need {
            bail!(
                "not enough space in {}: {} MiB free, about {} MiB needed",
                self.workdir.display(),
                free >> 20,
                need >> 20
            );
        }
        Ok(())
    }

    /// Writes the JSON results file.
    pub fn write_json<T: serde::Serialize>(&self, value: &T) -> Result<()> {
        if let Some(dir) = self.json.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut text = serde_json::to_vec_pretty(value)?;
        text.push(b'\n');
        sys::crashsafe::replace_file(&self.json, &text).with_context(|| format!("writing {}", self.json.display()))
    }

    /// The JSON file's path as the markdown file refers to it.
    pub fn json_from_md(&self) -> String {
        relative_path(&self.json, self.md.parent().unwrap_or(Path::new("/"))).display().to_string()
    }

    pub fn elapsed_s(&self) -> u64 {
        self.started.elapsed().as_secs()
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let left = host::mounts_under(&self.workdir);
        if !left.is_empty() {
            warn(&format!("mounts still present under {}: {left:?}; the data is kept", self.workdir.display()));
        } else if !self.keep {
            if let Err(e) = sys::tree::remove(&self.data) {
                warn(&format!("removing {}: {e}", self.data.display()));
            }
        }
    }
}

/// The markdown and JSON files of a run: as given, or the repository's (quick runs:
/// bench/results/quick/).
fn result_files(repo: &Path, name: &str, common: &Common) -> Result<(PathBuf, PathBuf)> {
    let results = repo.join("bench/results");
    let (md, json) = if common.quick {
        (results.join("quick/BENCHMARKS.md"), results.join(format!("quick/{name}.json")))
    } else {
        (repo.join("BENCHMARKS.md"), results.join(format!("{name}.json")))
    };
    Ok((
        common.md.as_deref().map(absolute).transpose()?.unwrap_or(md),
        common.json.as_deref().map(absolute).transpose()?.unwrap_or(json),
    ))
}

/// `path` made absolute against the current directory, `.` and `..` resolved by name.
pub fn absolute(path: &Path) -> Result<PathBuf> {
    let joined = std::env::current_dir()?.join(path);
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    Ok(out)
}

/// `path` relative to the directory `base` (both absolute).
pub fn relative_path(path: &Path, base: &Path) -> PathBuf {
    let p: Vec<Component> = path.components().collect();
    let b: Vec<Component> = base.components().collect();
    let common = p.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut out = PathBuf::new();
    for _ in common..b.len() {
        out.push("..");
    }
    for c in &p[common..] {
        out.push(c);
    }
    out
}

/// Replaces `root` by `$WORKDIR` in a command shown in a section.
pub fn show_workdir(text: &str, workdir: &Path) -> String {
    text.replace(&*workdir.to_string_lossy(), "$WORKDIR")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths() {
        assert_eq!(
            relative_path(Path::new("/r/bench/results/x.json"), Path::new("/r")),
            Path::new("bench/results/x.json")
        );
        assert_eq!(
            relative_path(Path::new("/r/bench/results/quick/x.json"), Path::new("/r/bench/results/quick")),
            Path::new("x.json")
        );
        assert_eq!(relative_path(Path::new("/a/x.json"), Path::new("/r/b")), Path::new("../../a/x.json"));
        assert_eq!(absolute(Path::new("/a/./b/../c")).unwrap(), Path::new("/a/c"));
    }
}
