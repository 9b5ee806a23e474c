//! `cargo xtask bench mariadb`: MariaDB clones (issue 16). A MariaDB source filled by
//! sysbench's `prepare`, an image of it taken live (`--from-url mariadb://…`), then, on one
//! `thinclone serve` daemon:
//!
//! 1. time to a ready clone: `clone create --driver cowfs` (A) against `--driver copy` (B,
//!    a full copy of the image plus a server start with the same settings), alternating,
//!    each timed to its first `SELECT 1`;
//! 2. disk per fresh clone: the daemon's `stored_bytes` and `du` of the clones of item 1,
//!    against the image's size;
//! 3. throughput: sysbench `oltp_read_write` and `oltp_read_only` on a cowfs clone (A)
//!    against a copy clone (B), one clone running at a time, A B A B.
//!
//! Writes the `mariadb` section of BENCHMARKS.md and bench/results/mariadb.json ([`report`]).

mod report;
mod server;
mod sysbench;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use api::Driver;

use super::ab::{self, Side};
use super::exec;
use super::host;
use super::machine::Facts;
use super::progress::{self, log, seconds_since, Phases};
use super::thinclone::{Daemon, ImageSource};
use super::{Common, Run};
use server::{Programs, Source, Target};
use sysbench::{Sysbench, Workload};

/// Options of `cargo xtask bench mariadb`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "Must run as root (FUSE mounts, MariaDB clones, which the daemon reaches through \
    unix_socket as root). Needs Debian's MariaDB (scripts/install) and sysbench (scripts/install --bench; \
    installed here with apt-get if missing). A full run takes about 20 minutes on a 2-core machine; \
    --quick about 2; --estimate prints the estimate for the given options.")]
pub struct Options {
    /// Scratch directory.
    #[arg(long, value_name = "DIR", default_value = "/var/tmp/thinclone-mariadb-bench")]
    pub workdir: PathBuf,
    /// sysbench tables [default: 4; quick: 2].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub tables: Option<u32>,
    /// Rows per sysbench table, about 250 bytes each [default: 1000000, about 1 GB in all
    /// with 4 tables; quick: 10000].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub table_size: Option<u64>,
    /// Seconds per measured sysbench run [default: 60; quick: 3].
    #[arg(long, value_name = "S", value_parser = clap::value_parser!(u32).range(1..))]
    pub duration: Option<u32>,
    /// Seconds of warm-up (the same workload, not counted) before each measured run
    /// [default: 5; quick: 1].
    #[arg(long, value_name = "S")]
    pub warmup: Option<u32>,
    /// A/B pairs of sysbench runs [default: 3; quick: 1].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub pairs: Option<u32>,
    /// Clones of each driver timed to ready [default: 5; quick: 2].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub repeats: Option<u32>,
    /// sysbench threads.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub threads: u32,
    /// The daemon's `--clone-memory`, each clone's InnoDB buffer pool (the daemon's default).
    #[arg(long, value_name = "SIZE", default_value = "64MB")]
    pub clone_memory: String,
    /// First TCP port: 20 for the daemon's clones, then the source's.
    #[arg(long, value_name = "N", default_value_t = 23100)]
    pub port: u16,
    #[command(flatten)]
    pub common: Common,
}

/// The options with the quick mode's defaults applied.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Params {
    pub quick: bool,
    pub tables: u32,
    pub table_size: u64,
    pub duration_s: u32,
    pub warmup_s: u32,
    pub pairs: u32,
    pub repeats: u32,
    pub threads: u32,
    pub clone_memory: String,
    pub port: u16,
}

/// The server variables recorded for each clone of item 3.
const SETTINGS: [&str; 7] = [
    "version",
    "innodb_buffer_pool_size",
    "innodb_log_file_size",
    "innodb_flush_method",
    "innodb_flush_log_at_trx_commit",
    "innodb_doublewrite",
    "sync_binlog",
];
/// How long a clone may take to answer its first `SELECT 1`.
const READY_TIMEOUT: Duration = Duration::from_secs(300);
/// The image's name.
const IMAGE: &str = "sbtest";
/// Ports of the daemon's clones, from `--port` on.
const CLONE_PORTS: u16 = 20;
/// About what a sysbench row takes in InnoDB, with its index (measured: 247 MB per
/// million rows).
const BYTES_PER_ROW: u64 = 250;
/// What a new data directory holds before sysbench (system tablespace, redo log, undo).
const BASE_BYTES: u64 = 200 << 20;

impl Params {
    fn of(o: &Options) -> Result<Params> {
        let q = o.common.quick;
        let pick = |given: Option<u32>, full, quick| given.unwrap_or(if q { quick } else { full });
        if u32::from(o.port) + u32::from(CLONE_PORTS) > u32::from(u16::MAX) {
            bail!("--port: the ports from it (see --port) do not fit below 65536");
        }
        Ok(Params {
            quick: q,
            tables: pick(o.tables, 4, 2),
            table_size: o.table_size.unwrap_or(if q { 10_000 } else { 1_000_000 }),
            duration_s: pick(o.duration, 60, 3),
            warmup_s: pick(o.warmup, 5, 1),
            pairs: pick(o.pairs, 3, 1),
            repeats: pick(o.repeats, 5, 2),
            threads: o.threads,
            clone_memory: o.clone_memory.clone(),
            port: o.port,
        })
    }

    fn clone_ports(&self) -> (u16, u16) {
        (self.port, self.port + CLONE_PORTS - 1)
    }

    fn source_port(&self) -> u16 {
        self.port + CLONE_PORTS
    }

    /// The data directory's expected size.
    fn data_bytes(&self) -> u64 {
        BASE_BYTES + u64::from(self.tables) * self.table_size * BYTES_PER_ROW
    }

    /// Seconds the run should take on the development machine (2 cores, about 1 GB/s of
    /// disk), from the costs of a quick and a full run there; it errs long.
    fn estimate_s(&self) -> u64 {
        let gb = self.data_bytes() as f64 / 1e9;
        // A full copy, its server start and its removal, with the page cache warm.
        let copy = 0.5 + gb / 0.4;
        let rows = f64::from(self.tables) * self.table_size as f64;
        let mut t = 10.0; // build check, machine facts, daemon
        t += 5.0 + rows * 6e-6; // mariadb-install-db, start, sysbench prepare
        t += 3.0 + gb / 0.3; // the image: mariadb-backup, --prepare, a server start and shutdown
        t += f64::from(self.repeats) * (1.0 + copy + gb); // and the copy's writeback (syncfs)
        t += 2.0 * 2.0 + copy; // the two clones of item 3, made and stopped
        let (w, d) = (f64::from(self.warmup_s), f64::from(self.duration_s));
        t += f64::from(self.pairs) * 2.0 * (3.0 + 2.0 * (w + d + 0.5));
        t += 2.0 + gb / 0.4; // removals, the daemon's stop
        t as u64
    }
}

/// What the run records, item by item ([`report`] turns it into the JSON and the section).
#[derive(Debug, Default)]
pub struct Recorded {
    pub loadavg_before: String,
    pub loadavg_after: String,
    pub source: Option<report::SourceFacts>,
    pub image: Option<report::ImageFacts>,
    pub ready: Vec<report::ReadyRun>,
    pub runs: Vec<report::LoadRun>,
    /// The settings each clone of item 3 runs with, as its server reports them.
    pub clone_settings: Vec<report::CloneSettings>,
    pub after_runs: Option<report::AfterRuns>,
}

/// What a run shares between its steps; the daemon and the source are stopped by the
/// caller, in that order, however the steps end.
struct Bench<'r> {
    run: &'r Run,
    p: Params,
    programs: Programs,
    sysbench: Sysbench,
    source: Option<Source>,
    daemon: Option<Daemon>,
    phases: Phases,
    rec: Recorded,
}

impl Bench<'_> {
    fn daemon(&self) -> Result<&Daemon> {
        self.daemon.as_ref().context("the daemon is not running")
    }

    /// The clone's connection, read from the daemon.
    fn target(&self, name: &str) -> Result<Target> {
        let name_ = api::Name::new(name).map_err(anyhow::Error::from)?;
        let clone = self.daemon()?.client().get_clone(&name_).with_context(|| format!("reading clone {name}"))?;
        Target::parse(&clone.url.context("the daemon gave no URL for a clone of its administrator")?)
    }

    /// Waits for the clone's first `SELECT 1` over its URL.
    fn wait_ready(&self, target: &Target) -> Result<()> {
        server::wait_select1(&self.run.exec, self.programs.client_tcp(target), READY_TIMEOUT)
    }

    /// The settings that shape the clone's throughput, as its server reports them.
    fn settings(&self, target: &Target) -> Result<Vec<(String, String)>> {
        let sql = format!("SELECT {}", SETTINGS.map(|v| format!("@@{v}")).join(", "));
        let row = self.run.exec.stdout(&self.programs.client_tcp(target).args(["-e", &sql]))?;
        let values: Vec<&str> = row.split('\t').collect();
        if values.len() != SETTINGS.len() {
            bail!("unexpected answer to {sql:?}: {row:?}");
        }
        Ok(SETTINGS.iter().zip(values).map(|(k, v)| ((*k).to_owned(), v.to_owned())).collect())
    }
}

pub fn main(o: Options) -> Result<()> {
    let p = Params::of(&o)?;
    let estimate = p.estimate_s();
    if o.common.estimate {
        println!("estimated run time: {}", progress::estimate_text(estimate));
        return Ok(());
    }
    let quick_what = "tiny tables, few repeats and 3-second runs";
    if p.quick {
        progress::quick_banner(quick_what);
    }
    let busy = host::listening_ports(p.port, p.source_port());
    if !busy.is_empty() {
        bail!("ports in use in {}-{}: {busy:?}; choose another range with --port", p.port, p.source_port());
    }
    // Before the build: a missing MariaDB fails at once.
    let programs = Programs::find()?;
    let run = Run::start("mariadb", &o.workdir, &o.common)?;
    log(&format!("ESTIMATED RUN TIME: {}", progress::estimate_text(estimate)));
    let sysbench_bin = host::need_program(&run.exec, "sysbench", "sysbench")?;
    let facts = Facts::gather(&run.exec, &run.workdir, &run.repo, &run.bin, &run.pg.program("postgres"), None);
    let version = |cmd: exec::Cmd| run.exec.stdout(&cmd).ok().and_then(|s| s.lines().next().map(str::to_owned));
    let versions = report::Versions {
        thinclone_git: facts.versions.thinclone_git.clone(),
        thinclone: facts.versions.thinclone.clone(),
        mariadb: version(exec::Cmd::new(&programs.mariadbd).arg("--version")).unwrap_or_else(|| "unknown".into()),
        sysbench: version(exec::Cmd::new(&sysbench_bin).arg("--version")).unwrap_or_else(|| "unknown".into()),
    };
    // The source, the image, a copy clone and the cowfs clone's writes, with room to spare.
    run.need_space(4 * p.data_bytes() + (2 << 30))?;
    log(&format!(
        "{} tables of {} rows (about {}), {} s runs, {} pair(s), {} clones per driver timed",
        p.tables,
        p.table_size,
        super::markdown::bytes(Some(p.data_bytes() as f64)),
        p.duration_s,
        p.pairs,
        p.repeats
    ));

    let mut bench = Bench {
        run: &run,
        sysbench: Sysbench { bin: sysbench_bin, tables: p.tables, table_size: p.table_size, threads: p.threads },
        p,
        programs,
        source: None,
        daemon: None,
        phases: Phases::default(),
        rec: Recorded { loadavg_before: loadavg(), ..Recorded::default() },
    };
    let outcome = measure(&mut bench);
    // The daemon first: it may be copying the source.
    bench.daemon = None;
    bench.source = None;
    outcome?;
    bench.phases.end();
    bench.rec.loadavg_after = loadavg();

    let report = report::Report::new(&run, &bench.p, &facts, versions, estimate, &bench.rec, &bench.phases.done);
    run.write_json(&report)?;
    let section = report.markdown(&run, &bench.sysbench);
    super::markdown::replace_section(&run.md, "mariadb", &section)?;
    let body = section.split("### Commands").next().unwrap_or("");
    let from = body.find("### Time to a ready clone").unwrap_or(0);
    println!("\n{}", body[from..].trim_end());
    println!("took {} s (estimated {estimate} s)", run.elapsed_s());
    println!("results: {} (section mariadb), {}; logs: {}", run.md.display(), run.json.display(), run.logs.display());
    if bench.p.quick {
        progress::quick_banner(quick_what);
    }
    Ok(())
}

/// The run, step by step; what it starts is left in `b` for the caller to stop.
fn measure(b: &mut Bench) -> Result<()> {
    let run = b.run;
    b.phases.start(format!(
        "source: mariadb-install-db, sysbench prepare ({} tables of {} rows)",
        b.p.tables, b.p.table_size
    ));
    let source_dir = run.data.join("source");
    b.source = Some(Source::create(run, &b.programs, &source_dir, b.p.source_port())?);
    let source = b.source.as_ref().context("the source")?;
    source.sql(&format!("CREATE DATABASE {}", sysbench::DATABASE))?;
    let t0 = Instant::now();
    let conn = sysbench::Conn::Socket(source.socket());
    run.exec.run_to(&b.sysbench.prepare_cmd(&conn), &run.logs.join("sysbench-prepare.log"))?;
    let prepare_s = seconds_since(t0);
    let sizes = source.sql(&format!(
        "SELECT SUM(data_length), SUM(index_length) FROM information_schema.tables WHERE table_schema = '{}'",
        sysbench::DATABASE
    ))?;
    let mut sizes = sizes.split('\t').map(|s| s.trim().parse::<u64>().unwrap_or(0));
    let (data_length, index_length) = (sizes.next().unwrap_or(0), sizes.next().unwrap_or(0));
    let datadir_bytes = host::du_bytes(&[&source_dir]);
    log(&format!(
        "  prepare took {prepare_s} s: sbtest {} of data and {} of indexes; data directory {}",
        super::markdown::bytes(Some(data_length as f64)),
        super::markdown::bytes(Some(index_length as f64)),
        super::markdown::bytes(Some(datadir_bytes as f64))
    ));
    b.rec.source = Some(report::SourceFacts {
        prepare_s,
        data_length,
        index_length,
        datadir_bytes,
        install_db: exec::Cmd::new(&b.programs.install_db)
            .args(["--no-defaults", "--user=mysql", "--skip-test-db"])
            .arg(format!("--datadir={}", source_dir.display()))
            .line(),
        server: source.server_cmd().line(),
        prepare: b.sysbench.prepare_cmd(&conn).line(),
    });

    b.phases.start(format!(
        "daemon, and the image from the live source (--from-url mariadb://root:…@127.0.0.1:{}/)",
        source.port
    ));
    let daemon = Daemon::start(
        &run.exec,
        &run.bin,
        &run.data.join("thinclone"),
        b.p.clone_ports(),
        &run.logs.join("thinclone.log"),
        &["--clone-memory", &b.p.clone_memory],
    )?;
    log(&format!("thinclone daemon: {} ({})", daemon.url, daemon.data_dir.display()));
    b.daemon = Some(daemon);
    let t0 = Instant::now();
    b.daemon()?.create_image(IMAGE, ImageSource::Url(&source.url()))?;
    let image_s = seconds_since(t0);
    let image_bytes = host::du_bytes(&[&b.daemon()?.image_dir(IMAGE)]);
    log(&format!("  image {IMAGE}: {image_s} s, {}", super::markdown::bytes(Some(image_bytes as f64))));
    b.rec.image = Some(report::ImageFacts { seconds: image_s, bytes: image_bytes });
    // Not needed any more: its memory and CPU go back to the clones.
    if let Some(source) = b.source.take() {
        source.stop()?;
    }
    sys::tree::remove(&source_dir)?;
    host::sync_all();

    b.phases.start(format!("time to a ready clone: {} runs each of cowfs and copy, alternating", b.p.repeats));
    ready(b)?;
    b.phases.start(format!(
        "throughput: sysbench on a cowfs clone (A) and a copy clone (B), {} pair(s) of {} s runs",
        b.p.pairs, b.p.duration_s
    ));
    throughput(b)?;
    b.phases.start("stopping the daemon");
    b.daemon = None;
    exec::check_interrupted()
}

/// The two drivers, A then B.
const DRIVERS: [(Side, Driver); 2] = [(Side::A, Driver::Cowfs), (Side::B, Driver::Copy)];

/// Item 1 (and the figures of item 2): clones made, timed to their first `SELECT 1`,
/// measured and removed, one at a time, cowfs and copy alternating.
fn ready(b: &mut Bench) -> Result<()> {
    for r in 1..=b.p.repeats {
        for (_, driver) in DRIVERS {
            exec::check_interrupted()?;
            let name = format!("ready-{}-{r}", driver.as_str());
            let daemon = b.daemon.as_ref().context("the daemon is not running")?;
            let t0 = Instant::now();
            let clone = daemon.create_clone(&name, IMAGE, driver)?;
            let target = Target::parse(&clone.url)?;
            server::wait_select1(&b.run.exec, b.programs.client_tcp(&target), READY_TIMEOUT)
                .with_context(|| format!("clone {name}"))?;
            let seconds = seconds_since(t0);
            // What the clone left for the kernel to write back (the copy: the whole image),
            // written now: not part of the time to ready, but a cost the disk pays.
            let t1 = Instant::now();
            host::syncfs(&daemon.data_dir)?;
            let sync_s = seconds_since(t1);
            let du_bytes = match driver {
                Driver::Cowfs => {
                    let [layer, native] = daemon.cowfs_storage(&name);
                    host::du_bytes(&[&layer, &native])
                }
                _ => host::du_bytes(&[&daemon.clone_data_dir(&name)]),
            };
            log(&format!(
                "  run {r} {}: ready in {seconds} s, then syncfs {sync_s} s; stored_bytes {}, du {}",
                driver.as_str(),
                super::markdown::bytes(clone.stored_bytes.map(|b| b as f64)),
                super::markdown::bytes(Some(du_bytes as f64))
            ));
            b.rec.ready.push(report::ReadyRun {
                driver: driver.as_str(),
                run: r,
                seconds,
                sync_s,
                stored_bytes: clone.stored_bytes,
                du_bytes,
            });
            daemon.remove_clone(&name)?;
            // The next clone does not pay for this one's writeback.
            host::sync_all();
        }
    }
    Ok(())
}

/// Item 3: a cowfs clone and a copy clone, both stopped; then for each pair, A then B: the
/// clone started, sysbench read-write and read-only (each after a warm-up), the clone
/// stopped.
fn throughput(b: &mut Bench) -> Result<()> {
    let names = |side: Side| match side {
        Side::A => "load-cowfs",
        Side::B => "load-copy",
    };
    for (side, driver) in DRIVERS {
        let daemon = b.daemon()?;
        daemon.create_clone(names(side), IMAGE, driver)?;
        daemon.stop_clone(names(side))?;
    }
    let mut runs = Vec::new();
    let mut settings = Vec::new();
    let run = b.run;
    ab::alternate(b.p.pairs, |pair, side| {
        let name = names(side);
        let s = side.letter();
        b.daemon()?.start_clone(name)?;
        let target = b.target(name)?;
        b.wait_ready(&target).with_context(|| format!("clone {name}"))?;
        if pair == 1 {
            settings.push(report::CloneSettings { side: s, clone: name, settings: b.settings(&target)? });
        }
        let conn = sysbench::Conn::Tcp(target);
        for workload in Workload::ALL {
            let log_of = |what: &str| run.logs.join(format!("sysbench-{pair}-{s}-{}{what}.log", workload.key()));
            if b.p.warmup_s > 0 {
                b.sysbench.run(&run.exec, workload, &conn, b.p.warmup_s, &log_of("-warmup"))?;
            }
            let o = b.sysbench.run(&run.exec, workload, &conn, b.p.duration_s, &log_of(""))?;
            let load = loadavg();
            log(&format!(
                "  pair {pair} {s} ({name}) {}: {} tps, {} qps, p95 {} ms, {} ignored errors; load {load}",
                workload.label(),
                super::markdown::num(Some(o.tps), 1),
                super::markdown::num(Some(o.qps), 0),
                super::markdown::num(Some(o.latency_p95_ms), 2),
                o.ignored_errors
            ));
            runs.push(report::LoadRun { workload: workload.key(), pair, side: s, outcome: o, loadavg_after: load });
        }
        b.daemon()?.stop_clone(name)
    })?;
    b.rec.runs = runs;
    b.rec.clone_settings = settings;
    let daemon = b.daemon.as_ref().context("the daemon is not running")?;
    let [layer, native] = daemon.cowfs_storage(names(Side::A));
    b.rec.after_runs = Some(report::AfterRuns {
        cowfs_du_bytes: host::du_bytes(&[&layer, &native]),
        copy_du_bytes: host::du_bytes(&[&daemon.clone_data_dir(names(Side::B))]),
    });
    for (side, _) in DRIVERS {
        daemon.remove_clone(names(side))?;
    }
    Ok(())
}

/// The 1, 5 and 15 minute load averages.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|t| t.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
