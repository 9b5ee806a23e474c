//! `cargo xtask bench cowfs`: a cowfs mount (`thinclone mount`) against the filesystem
//! underneath it. fio file I/O on a fresh mount per job against a plain directory; then
//! pgbench on a cowfs clone of a PostgreSQL cluster (A) against a full copy (B), A B A B.
//! Writes the `cowfs` section of BENCHMARKS.md and bench/results/cowfs.json.

// The report is written into Strings with `writeln!`, whose result is dropped (`let _ =`):
// writing to a String cannot fail.
use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::ab::{self, Side};
use super::exec::Cmd;
use super::fio;
use super::host;
use super::machine::{Facts, Machine, Versions};
use super::markdown::{self, num, Align, Table};
use super::pg::{HandServer, StartWait};
use super::pgbench::{Mode, Pgbench};
use super::progress::{self, log, seconds_since};
use super::thinclone::Mount;
use super::{show_workdir, Common, Run};

/// Options of `cargo xtask bench cowfs`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "Must run as root (FUSE allow_other, servers as postgres, drop_caches). \
    A full run takes 10 to 15 minutes; --quick about 2.")]
pub struct Options {
    /// Scratch directory.
    #[arg(long, value_name = "DIR", default_value = "/var/tmp/thinclone-bench")]
    pub workdir: PathBuf,
    /// pgbench scale factor [default: 40, about 600 MB; quick: 2].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub scale: Option<u32>,
    /// Seconds per measured pgbench run [default: 30; quick: 3].
    #[arg(long, value_name = "S", value_parser = clap::value_parser!(u32).range(1..))]
    pub duration: Option<u32>,
    /// Seconds of pgbench warm-up before each measured run [default: 5; quick: 1].
    #[arg(long, value_name = "S")]
    pub warmup: Option<u32>,
    /// A/B pairs of pgbench runs [default: 3; quick: 1].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub pairs: Option<u32>,
    /// Seconds per fio job [default: 10; quick: 3].
    #[arg(long, value_name = "S", value_parser = clap::value_parser!(u32).range(1..))]
    pub fio_runtime: Option<u32>,
    /// fio test file size, in fio's syntax [default: 1g; quick: 64m].
    #[arg(long, value_name = "SIZE")]
    pub fio_size: Option<String>,
    /// First TCP port number of the servers' sockets.
    #[arg(long, value_name = "N", default_value_t = 54320)]
    pub port: u16,
    /// Skip the file I/O part.
    #[arg(long)]
    pub skip_fio: bool,
    /// Skip the PostgreSQL part.
    #[arg(long)]
    pub skip_pgbench: bool,
    #[command(flatten)]
    pub common: Common,
}

/// The options with the quick mode's defaults applied.
#[derive(Debug, Clone)]
struct Params {
    scale: u32,
    duration: u32,
    warmup: u32,
    pairs: u32,
    fio_runtime: u32,
    fio_ramp: u32,
    fio_size: String,
    fio_fsync_every: u32,
    clients: u32,
    threads: u32,
    do_fio: bool,
    do_pg: bool,
}

impl Params {
    fn of(o: &Options) -> Result<Params> {
        let q = o.common.quick;
        let pick = |given: Option<u32>, full, quick| given.unwrap_or(if q { quick } else { full });
        let fio_size = o.fio_size.clone().unwrap_or_else(|| if q { "64m" } else { "1g" }.to_owned());
        if fio::size_bytes(&fio_size).is_none() {
            bail!("--fio-size must look like 64m or 1g (got {fio_size:?})");
        }
        Ok(Params {
            scale: pick(o.scale, 40, 2),
            duration: pick(o.duration, 30, 3),
            warmup: pick(o.warmup, 5, 1),
            pairs: pick(o.pairs, 3, 1),
            fio_runtime: pick(o.fio_runtime, 10, 3),
            fio_ramp: if q { 0 } else { 2 },
            fio_size,
            fio_fsync_every: 32,
            clients: 4,
            threads: 2,
            do_fio: !o.skip_fio,
            do_pg: !o.skip_pgbench,
        })
    }

    /// Seconds the run should take on the development machine (2 cores, about 1 GB/s).
    fn estimate_s(&self, cold: bool) -> u64 {
        let mut t = 20.0; // build check, machine facts
        if self.do_fio {
            let gb = fio::size_bytes(&self.fio_size).unwrap_or(0) as f64 / 1e9;
            t += 2.0 + 3.0 * gb / 0.4;
            t += 4.0 * 2.0 * (f64::from(self.fio_runtime + self.fio_ramp) + 1.5);
            if cold {
                t += 2.0 * 2.0 * (f64::from(self.fio_runtime) + 3.0);
            }
        }
        if self.do_pg {
            let gb = f64::from(self.scale) * 0.0156;
            t += 5.0 + 0.3 * f64::from(self.scale) + 2.0 * (1.0 + gb / 0.4);
            t += f64::from(self.pairs) * 2.0 * (3.0 + 2.0 * f64::from(self.warmup) + 2.0 * f64::from(self.duration));
        }
        t as u64
    }
}

/// Server settings of both sides.
const PG_SETTINGS: &str =
    "-c shared_buffers=128MB -c fsync=on -c synchronous_commit=on -c listen_addresses='' -c max_connections=50";

pub fn main(o: Options) -> Result<()> {
    let p = Params::of(&o)?;
    let estimate = p.estimate_s(!o.common.no_drop_caches);
    if o.common.estimate {
        println!("estimated run time: {}", progress::estimate_text(estimate));
        return Ok(());
    }
    let quick_what = "tiny sizes and 3-second runs";
    if o.common.quick {
        progress::quick_banner(quick_what);
    }
    let run = Run::start("cowfs", &o.workdir, &o.common)?;
    log(&format!("ESTIMATED RUN TIME: {}", progress::estimate_text(estimate)));
    let fio_bin = if p.do_fio { Some(host::need_program(&run.exec, "fio", "fio")?) } else { None };
    let facts =
        Facts::gather(&run.exec, &run.workdir, &run.repo, &run.bin, &run.pg.program("postgres"), fio_bin.as_deref());
    run.need_space(u64::from(p.scale) * 16 * 4 * (1 << 20) + (2 << 30))?;

    let fio = match &fio_bin {
        Some(bin) => {
            log(&format!("== fio: {} file, {} s per job, page cache (direct=0)", p.fio_size, p.fio_runtime));
            Some(run_fio(&run, &p, bin)?)
        }
        None => None,
    };
    let pgbench = if p.do_pg { Some(run_pgbench(&run, &p, o.port)?) } else { None };

    let results = Results::new(&run, &p, &facts, estimate, fio, pgbench);
    run.write_json(&results)?;
    let section = results.markdown(&run, &p, &facts, &o);
    markdown::replace_section(&run.md, "cowfs", &section)?;

    // The figures on stdout: the section without its header and commands.
    let body = section.split("### Commands").next().unwrap_or("");
    let from = body.find("### File I/O").or_else(|| body.find("### PostgreSQL")).unwrap_or(body.len());
    println!("\n{}", &body[from..]);
    println!("results: {} (section cowfs), {}; logs: {}", run.md.display(), run.json.display(), run.logs.display());
    if o.common.quick {
        progress::quick_banner(quick_what);
    }
    Ok(())
}

// ---------------------------------------------------------------- fio

struct FioPart {
    settings: fio::Settings,
    /// (native, cowfs) of each workload, in order.
    outcomes: Vec<(fio::Outcome, fio::Outcome)>,
    /// The native command lines, for the section.
    native_commands: Vec<String>,
    cold: bool,
}

fn run_fio(run: &Run, p: &Params, fio_bin: &Path) -> Result<FioPart> {
    let dir = run.data.join("fio");
    let (image, native, mnt) = (dir.join("image"), dir.join("native"), dir.join("mnt"));
    for d in [&image, &native, &mnt] {
        fs::create_dir_all(d)?;
    }
    log(&format!("fio: writing a {} test file into the image, and a copy into a plain directory", p.fio_size));
    let bytes = fio::size_bytes(&p.fio_size).unwrap_or(0);
    write_random_file(&image.join("testfile"), bytes)?;
    run.exec.run(&Cmd::new("cp").args(["--sparse=never"]).arg(image.join("testfile")).arg(native.join("testfile")))?;
    host::sync_all();

    let settings = fio::Settings {
        fio: fio_bin.to_owned(),
        size: p.fio_size.clone(),
        runtime_s: p.fio_runtime,
        ramp_s: p.fio_ramp,
    };
    let mut part = FioPart { settings, outcomes: Vec::new(), native_commands: Vec::new(), cold: run.can_drop };
    for (n, workload) in fio::workloads(p.fio_fsync_every).iter().enumerate() {
        let cold = workload.kind == fio::Kind::Cold;
        if cold && !run.can_drop {
            continue;
        }
        // (a) the plain directory on the underlying filesystem.
        if cold {
            run.drop_caches()?;
        }
        let out = run.logs.join(format!("fio-{}-native.json", workload.name));
        let file = native.join("testfile");
        part.native_commands.push(part.settings.cmd(workload, &file, &out).line());
        let stderr_log = run.logs.join(format!("fio-{}-native.stderr", workload.name));
        let a = fio::run(&run.exec, &part.settings, workload, "native", &file, &out, &stderr_log)?;
        log(&format!("  fio {} native: {} {}", workload.name, num(Some(a.value), 1), a.metric));
        // (b) a fresh cowfs mount over the image: reads come from the image, writes
        // copy-on-write into an empty layer.
        let layer = dir.join(format!("layer-{}", n + 1));
        let mount = Mount::start(&run.exec, &run.bin, &image, &layer, &mnt, &run.logs.join("thinclone-fio.log"), None)?;
        if cold {
            run.drop_caches()?;
        }
        let out = run.logs.join(format!("fio-{}-cowfs.json", workload.name));
        let stderr_log = run.logs.join(format!("fio-{}-cowfs.stderr", workload.name));
        let b = fio::run(&run.exec, &part.settings, workload, "cowfs", &mnt.join("testfile"), &out, &stderr_log)?;
        log(&format!("  fio {} cowfs: {} {}", workload.name, num(Some(b.value), 1), b.metric));
        mount.stop();
        sys::tree::remove(&layer)?;
        part.outcomes.push((a, b));
    }
    Ok(part)
}

/// Writes `bytes` of random data (whole MiB) to `path`.
fn write_random_file(path: &Path, bytes: u64) -> Result<()> {
    let mut random = fs::File::open("/dev/urandom")?;
    let mut out = fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..bytes >> 20 {
        random.read_exact(&mut buf)?;
        out.write_all(&buf)?;
    }
    out.sync_all()?;
    Ok(())
}

// ---------------------------------------------------------------- pgbench

struct PgPart {
    runs: ab::Runs,
    database_size: String,
    layer_bytes: u64,
    init_s: f64,
}

fn run_pgbench(run: &Run, p: &Params, port: u16) -> Result<PgPart> {
    let d = &run.data;
    let (src, image, full, cow, layer) =
        (d.join("pg-src"), d.join("pg-image"), d.join("pg-full"), d.join("pg-cow"), d.join("pg-layer"));
    let pg = &run.pg;
    let exec = &run.exec;
    log(&format!("== PostgreSQL: initdb + pgbench -i -s {}", p.scale));
    pg.initdb(exec, &src, &run.logs.join("initdb.log"))?;
    let source = HandServer::start(run, &src, port, &run.logs.join("pg/source.log"), PG_SETTINGS, StartWait::Ready)?;
    let sock_args = |cmd: Cmd| cmd.arg("-h").arg(&run.sock).args(["-p", &port.to_string(), "-U", "postgres"]);
    exec.run(&sock_args(Cmd::new(pg.program("createdb"))).arg("bench"))?;
    let t0 = Instant::now();
    exec.run_to(
        &sock_args(Cmd::new(pg.program("pgbench"))).args(["-i", "-s", &p.scale.to_string(), "-q", "bench"]),
        &run.logs.join("pgbench-init.log"),
    )?;
    let init_s = seconds_since(t0);
    log(&format!("  pgbench -i took {init_s} s"));
    let database_size = pg.psql(exec, &source.conn("bench"), "select pg_size_pretty(pg_database_size('bench'))")?;
    source.stop()?;
    let state = pg.cluster_state(exec, &src)?;
    if state != "shut down" {
        bail!("the source cluster's state after the stop is {state:?}, not \"shut down\"");
    }

    log(&format!("  image: cp -a of the data directory ({database_size} database); B: full cp -a of the image"));
    exec.run(&Cmd::new("cp").arg("-a").arg(&src).arg(&image))?;
    sys::tree::remove(&src)?;
    exec.run(&Cmd::new("cp").arg("-a").arg(&image).arg(&full))?;
    host::sync_all();
    log("  A: cowfs clone (fresh layer over the image, --owner postgres)");
    let mount =
        Mount::start(exec, &run.bin, &image, &layer, &cow, &run.logs.join("thinclone-pg.log"), Some("postgres"))?;

    let pgbench = Pgbench { bin: pg.program("pgbench"), clients: p.clients, threads: p.threads };
    let mut runs = ab::Runs::default();
    ab::alternate(p.pairs, |pair, side| {
        let (dir, port) = match side {
            Side::A => (&cow, port + 1),
            Side::B => (&full, port + 2),
        };
        let s = side.letter();
        let server =
            HandServer::start(run, dir, port, &run.logs.join(format!("pg/{s}.log")), PG_SETTINGS, StartWait::Ready)?;
        let conn = server.conn("bench");
        let logf = |what: &str| run.logs.join(format!("pgbench-{pair}-{s}-{what}.log"));
        for (mode, tag) in [(Mode::ReadWrite, "rw"), (Mode::SelectOnly, "ro")] {
            pgbench.run(exec, &conn, mode, p.warmup, &logf(&format!("{tag}-warmup")))?;
            let o = pgbench.run(exec, &conn, mode, p.duration, &logf(tag))?;
            log(&format!("  pair {pair} {s} {}: {} tps, latency {} ms", mode.key(), o.tps, num(o.latency_ms, 3)));
            runs.record(mode, pair, side, o);
        }
        server.stop()
    })?;
    let layer_bytes = host::du_bytes(&[&layer]);
    mount.stop();
    Ok(PgPart { runs, database_size, layer_bytes, init_s })
}

// ---------------------------------------------------------------- results

/// bench/results/cowfs.json.
#[derive(Serialize)]
struct Results {
    schema: u32,
    benchmark: &'static str,
    quick: bool,
    judged: bool,
    note: Option<&'static str>,
    date: String,
    elapsed_s: u64,
    estimated_s: u64,
    machine: Machine,
    versions: Versions,
    params: JsonParams,
    commands: Commands,
    fio: Option<Vec<FioRow>>,
    pgbench: Option<PgbenchResults>,
}

#[derive(Serialize)]
struct JsonParams {
    pgbench: PgbenchParams,
    fio: FioParams,
}

#[derive(Serialize)]
struct PgbenchParams {
    scale: u32,
    duration_s: u32,
    warmup_s: u32,
    pairs: u32,
    clients: u32,
    threads: u32,
    server_settings: &'static str,
    database_size: Option<String>,
    pgbench_init_s: Option<f64>,
    cowfs_layer_after_runs_bytes: Option<u64>,
}

#[derive(Serialize)]
struct FioParams {
    runtime_s: u32,
    ramp_s: u32,
    size: String,
    direct: u32,
    randwrite_fdatasync_every: u32,
    cold_variants: bool,
}

#[derive(Serialize)]
struct Commands {
    fio_common: String,
    fio_warm: String,
    fio_cold: String,
    fio_native_examples: Vec<String>,
    postgres: String,
    pgbench_read_write: String,
    pgbench_select_only: String,
}

#[derive(Serialize)]
struct FioRow {
    workload: String,
    description: String,
    kind: fio::Kind,
    metric: String,
    native: f64,
    cowfs: f64,
    ratio: Option<f64>,
    native_lat_us: f64,
    cowfs_lat_us: f64,
    native_detail: fio::Outcome,
    cowfs_detail: fio::Outcome,
}

#[derive(Serialize)]
struct PgbenchResults {
    read_write: Option<Judged>,
    select_only: Option<Judged>,
}

/// An A/B summary with the target it is judged against.
#[derive(Serialize)]
struct Judged {
    #[serde(flatten)]
    summary: ab::Summary,
    target_ratio: f64,
    /// `None` in quick runs, which are not judged.
    met: Option<bool>,
}

impl Results {
    fn new(run: &Run, p: &Params, facts: &Facts, estimate: u64, fio: Option<FioPart>, pg: Option<PgPart>) -> Results {
        let settings = fio.as_ref().map(|f| f.settings.clone()).unwrap_or(fio::Settings {
            fio: "fio".into(),
            size: p.fio_size.clone(),
            runtime_s: p.fio_runtime,
            ramp_s: p.fio_ramp,
        });
        let sock = run.sock.display();
        let bin = run.pg.bin.display();
        let pgb = |s: &str| {
            format!(
                "{bin}/pgbench -h {sock} -p PORT -U postgres{s} -c {} -j {} -T {} bench",
                p.clients, p.threads, p.duration
            )
        };
        let judged = |mode: Mode, target: f64| {
            pg.as_ref().and_then(|pg| pg.runs.summary(mode)).map(|summary| Judged {
                met: (!run.quick).then(|| summary.median_ratio.is_some_and(|r| r >= target)),
                summary,
                target_ratio: target,
            })
        };
        Results {
            schema: 2,
            benchmark: "cowfs",
            quick: run.quick,
            judged: !run.quick,
            note: run.quick.then_some("quick smoke-test run: figures are not to be judged"),
            date: facts.date.clone(),
            elapsed_s: run.elapsed_s(),
            estimated_s: estimate,
            machine: facts.machine.clone(),
            versions: facts.versions.clone(),
            params: JsonParams {
                pgbench: PgbenchParams {
                    scale: p.scale,
                    duration_s: p.duration,
                    warmup_s: p.warmup,
                    pairs: p.pairs,
                    clients: p.clients,
                    threads: p.threads,
                    server_settings: PG_SETTINGS,
                    database_size: pg.as_ref().map(|pg| pg.database_size.clone()),
                    pgbench_init_s: pg.as_ref().map(|pg| pg.init_s),
                    cowfs_layer_after_runs_bytes: pg.as_ref().map(|pg| pg.layer_bytes),
                },
                fio: FioParams {
                    runtime_s: p.fio_runtime,
                    ramp_s: p.fio_ramp,
                    size: p.fio_size.clone(),
                    direct: 0,
                    randwrite_fdatasync_every: p.fio_fsync_every,
                    cold_variants: fio.as_ref().is_some_and(|f| f.cold),
                },
            },
            commands: Commands {
                fio_common: settings.common().join(" "),
                fio_warm: settings.kind_options(fio::Kind::Warm).join(" "),
                fio_cold: settings.kind_options(fio::Kind::Cold).join(" "),
                fio_native_examples: fio.as_ref().map(|f| f.native_commands.clone()).unwrap_or_default(),
                postgres: format!(
                    "runuser -u postgres -- {bin}/pg_ctl -D DATADIR -l LOG -w start -o \"-p PORT -k {sock} {PG_SETTINGS}\""
                ),
                pgbench_read_write: pgb(""),
                pgbench_select_only: pgb(" -S"),
            },
            fio: fio.map(|f| {
                f.outcomes
                    .into_iter()
                    .map(|(n, c)| FioRow {
                        workload: n.workload.clone(),
                        description: n.description.clone(),
                        kind: n.kind,
                        metric: n.metric.clone(),
                        native: n.value,
                        cowfs: c.value,
                        ratio: super::stats::ratio(Some(c.value), Some(n.value)),
                        native_lat_us: n.lat_us_mean,
                        cowfs_lat_us: c.lat_us_mean,
                        native_detail: n,
                        cowfs_detail: c,
                    })
                    .collect()
            }),
            pgbench: pg.is_some().then(|| PgbenchResults {
                read_write: judged(Mode::ReadWrite, 0.90),
                select_only: judged(Mode::SelectOnly, 0.95),
            }),
        }
    }

    /// The section of BENCHMARKS.md, markers included.
    fn markdown(&self, run: &Run, p: &Params, facts: &Facts, o: &Options) -> String {
        let mut s = String::new();
        let quick_flag = if run.quick { " --quick" } else { "" };
        let fs_type = &facts.machine.workdir_fs;
        let _ = writeln!(s, "<!-- cowfs:begin -->\n## cowfs vs. native filesystem\n");
        let _ = writeln!(
            s,
            "_Generated by `cargo xtask bench cowfs{quick_flag}` on {} (took {} s, estimated {} s); raw figures in `{}`. Do not edit this section by hand._\n",
            facts.date,
            self.elapsed_s,
            self.estimated_s,
            run.json_from_md()
        );
        if run.quick {
            let _ = writeln!(s, "> **QUICK MODE (smoke test): tiny sizes and 3-second runs; these figures are NOT to be judged.** It only checks that the benchmark runs.\n");
        }
        let _ = writeln!(s, "### Machine\n\n{}", facts.markdown(&[]));
        if let Some(rows) = &self.fio {
            let _ = writeln!(s, "### File I/O (fio)\n");
            let _ = writeln!(s, "One job at a time, `ioengine=psync`, 1 thread, queue depth 1, **`direct=0` (through the page cache)**, `invalidate=0`, on a {} file.", p.fio_size);
            let _ = writeln!(s, "native = a plain directory on the workdir's {fs_type}; cowfs = a fresh `thinclone mount` (new, empty layer for every job) whose image holds the same pre-written file, so reads come from the image and writes copy-on-write into the layer.");
            let _ = writeln!(s, "Warm jobs: time-based, {} s after a {} s ramp; the file is in the host page cache (the cowfs mount's own cache starts empty).", p.fio_runtime, p.fio_ramp);
            let _ = writeln!(s, "Writes overwrite the existing file: sequential write ends with one `fsync` (`end_fsync=1`); random write calls `fdatasync` every {} writes ({} KiB) and `fsync` at the end. fio counts the final fsync in the job's run time.", p.fio_fsync_every, p.fio_fsync_every * 8);
            let _ = writeln!(s, "Latency columns are fio's mean per read/write call; fdatasync calls are not included (their mean is in the JSON, `sync_lat_us_mean`).");
            if self.params.fio.cold_variants {
                let _ = writeln!(s, "Cold jobs: `sync; echo 3 > /proc/sys/vm/drop_caches` just before the job, one pass over the file (random: no block read twice), capped at {} s.", p.fio_runtime);
            } else {
                let _ = writeln!(s, "Cold jobs: skipped (drop_caches not permitted or --no-drop-caches).");
            }
            let mut t = Table::new([
                ("workload", Align::Left),
                ("what", Align::Left),
                ("metric", Align::Left),
                ("native", Align::Right),
                ("cowfs", Align::Right),
                ("cowfs/native", Align::Right),
                ("mean latency native / cowfs (µs)", Align::Right),
            ]);
            for r in rows {
                t.row([
                    r.workload.clone(),
                    r.description.clone(),
                    r.metric.clone(),
                    num(Some(r.native), 1),
                    num(Some(r.cowfs), 1),
                    num(r.ratio, 3),
                    format!("{} / {}", num(Some(r.native_lat_us), 1), num(Some(r.cowfs_lat_us), 1)),
                ]);
            }
            let _ = writeln!(s, "\n{}", t.render());
        }
        if let Some(pgr) = &self.pgbench {
            let pp = &self.params.pgbench;
            let _ = writeln!(s, "### PostgreSQL (pgbench)\n");
            let _ = writeln!(s, "Source cluster: `initdb` as postgres, `pgbench -i -s {}` (database {}), clean stop, `cp -a` into an image directory.", p.scale, pp.database_size.as_deref().unwrap_or("n/a"));
            let _ = writeln!(s, "A = cowfs clone: `thinclone mount --image IMAGE --layer LAYER MNT --owner postgres` with a fresh layer (layer after all runs: {}). B = native: full `cp -a` of the image on {fs_type}.", markdown::bytes(pp.cowfs_layer_after_runs_bytes.map(|b| b as f64)));
            let _ = writeln!(s, "One server at a time, runs alternate A B A B for {} pair(s); after each server start: a {w} s read-write warm-up, the measured {d} s read-write run, a {w} s select-only warm-up, the measured {d} s select-only run, then a fast shutdown. Both clusters keep their changes from run to run.", p.pairs, w = p.warmup, d = p.duration);
            let _ = writeln!(
                s,
                "Server settings: `{PG_SETTINGS}`, unix socket in the workdir. pgbench: {} clients, {} threads.\n",
                p.clients, p.threads
            );
            let modes: Vec<(Mode, &Judged)> =
                [(Mode::ReadWrite, &pgr.read_write), (Mode::SelectOnly, &pgr.select_only)]
                    .into_iter()
                    .filter_map(|(m, j)| Some((m, j.as_ref()?)))
                    .collect();
            let pairs: Vec<(Mode, &ab::Summary)> = modes.iter().map(|(m, j)| (*m, &j.summary)).collect();
            let _ = writeln!(s, "{}", ab::pairs_table(&pairs, "cowfs", "native").render());
            let mut t = Table::new([
                ("mode", Align::Left),
                ("median A/B", Align::Right),
                ("target", Align::Right),
                ("met?", Align::Left),
            ]);
            for (m, j) in &modes {
                t.row([
                    m.label(),
                    num(j.summary.median_ratio, 3),
                    format!("≥ {}", j.target_ratio),
                    match j.met {
                        None => "not judged (quick run)".to_owned(),
                        Some(true) => "**yes**".to_owned(),
                        Some(false) => "**no**".to_owned(),
                    },
                ]);
            }
            let _ = writeln!(s, "{}", t.render());
        }
        let _ = writeln!(s, "### Commands\n\n```sh\n# this run");
        let _ = writeln!(
            s,
            "cargo xtask bench cowfs{quick_flag} --scale {} --duration {} --warmup {} --pairs {} --fio-runtime {} --fio-size {}{}{}",
            p.scale,
            p.duration,
            p.warmup,
            p.pairs,
            p.fio_runtime,
            p.fio_size,
            if o.skip_fio { " --skip-fio" } else { "" },
            if o.skip_pgbench { " --skip-pgbench" } else { "" },
        );
        if self.fio.is_some() {
            let _ = writeln!(s, "# fio, native target (cowfs: same with --filename=MNT/testfile)");
            for c in &self.commands.fio_native_examples {
                let _ = writeln!(s, "{}", show_workdir(c, &run.workdir));
            }
        }
        if self.pgbench.is_some() {
            let _ = writeln!(s, "# PostgreSQL server and pgbench (warm-up: same with -T {})", p.warmup);
            for c in [&self.commands.postgres, &self.commands.pgbench_read_write, &self.commands.pgbench_select_only] {
                let _ = writeln!(s, "{}", show_workdir(c, &run.workdir));
            }
        }
        let _ = writeln!(s, "```\n<!-- cowfs:end -->");
        s
    }
}
