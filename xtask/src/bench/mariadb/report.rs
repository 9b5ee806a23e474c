//! The MariaDB benchmark's results: bench/results/mariadb.json and the `mariadb` section of
//! BENCHMARKS.md.

// The report is written into Strings with `writeln!`, whose result is dropped (`let _ =`):
// writing to a String cannot fail.
use std::fmt::Write as _;

use serde::Serialize;

use super::sysbench::{Outcome, Sysbench, Workload};
use super::{Params, Recorded};
use crate::bench::machine::{Facts, Machine};
use crate::bench::markdown::{bytes, num, Align, Table};
use crate::bench::progress::Phase;
use crate::bench::stats::{median, ratio, Stats};
use crate::bench::{show_workdir, Run};

/// The software measured and measuring.
#[derive(Debug, Clone, Serialize)]
pub struct Versions {
    pub thinclone_git: String,
    pub thinclone: String,
    /// `mariadbd --version`.
    pub mariadb: String,
    /// `sysbench --version`.
    pub sysbench: String,
}

/// The source after sysbench's prepare.
#[derive(Debug, Clone, Serialize)]
pub struct SourceFacts {
    pub prepare_s: f64,
    /// `information_schema.tables` of `sbtest`: data and index bytes.
    pub data_length: u64,
    pub index_length: u64,
    /// `du` of the whole data directory.
    pub datadir_bytes: u64,
    pub install_db: String,
    pub server: String,
    pub prepare: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ImageFacts {
    /// From the request to the end of its operation.
    pub seconds: f64,
    /// `du` of the image's directory.
    pub bytes: u64,
}

/// One clone of item 1.
#[derive(Debug, Clone, Serialize)]
pub struct ReadyRun {
    pub driver: &'static str,
    pub run: u32,
    /// From `clone create` to the first successful `SELECT 1`.
    pub seconds: f64,
    /// A `syncfs` of the daemon's filesystem right after: the writeback the clone left.
    pub sync_s: f64,
    /// The daemon's figure in its answer, when it had measured the clone.
    pub stored_bytes: Option<u64>,
    /// `du` of the cowfs clone's layer (and `native/`), or of the copy clone's data
    /// directory.
    pub du_bytes: u64,
}

/// One measured sysbench run of item 3.
#[derive(Debug, Clone, Serialize)]
pub struct LoadRun {
    pub workload: &'static str,
    pub pair: u32,
    pub side: &'static str,
    #[serde(flatten)]
    pub outcome: Outcome,
    /// `/proc/loadavg` right after the run: what else the machine did.
    pub loadavg_after: String,
}

/// A clone of item 3 and its server's settings (`@@NAME`), read at its first start.
#[derive(Debug, Clone, Serialize)]
pub struct CloneSettings {
    pub side: &'static str,
    pub clone: &'static str,
    pub settings: Vec<(String, String)>,
}

/// The two clones of item 3 after all their runs.
#[derive(Debug, Clone, Serialize)]
pub struct AfterRuns {
    pub cowfs_du_bytes: u64,
    pub copy_du_bytes: u64,
}

/// A driver's clones in item 1.
#[derive(Debug, Clone, Serialize)]
pub struct ReadySummary {
    pub driver: &'static str,
    pub seconds: Stats,
    pub sync_s: Stats,
    pub stored_bytes: Option<Stats>,
    pub du_bytes: Stats,
}

/// Item 1's headline.
#[derive(Debug, Clone, Serialize)]
pub struct Ready {
    pub runs: Vec<ReadyRun>,
    pub summary: Vec<ReadySummary>,
    /// The copy clones' median time over the cowfs clones'.
    pub copy_over_cowfs: Option<f64>,
}

/// Item 2: a fresh clone's own storage against the image.
#[derive(Debug, Clone, Serialize)]
pub struct Disk {
    pub image_bytes: Option<u64>,
    pub cowfs_stored_bytes: Option<f64>,
    pub cowfs_du_bytes: Option<f64>,
    pub copy_stored_bytes: Option<f64>,
    pub copy_du_bytes: Option<f64>,
    /// The cowfs clone's `du` over the copy clone's.
    pub cowfs_over_copy: Option<f64>,
    /// The cowfs clone's `du` over the image's.
    pub cowfs_over_image: Option<f64>,
}

/// A pair of item 3.
#[derive(Debug, Clone, Serialize)]
pub struct Pair {
    pub pair: u32,
    pub a: Outcome,
    pub b: Outcome,
    /// A's TPS over B's.
    pub ratio: Option<f64>,
    pub qps_ratio: Option<f64>,
}

/// Item 3 for one workload.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    pub workload: &'static str,
    pub pairs: Vec<Pair>,
    pub median_ratio: Option<f64>,
    pub median_a_tps: Option<f64>,
    pub median_b_tps: Option<f64>,
    pub median_a_qps: Option<f64>,
    pub median_b_qps: Option<f64>,
    pub median_a_p95_ms: Option<f64>,
    pub median_b_p95_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Commands {
    pub install_db: Option<String>,
    pub source_server: Option<String>,
    pub prepare: Option<String>,
    pub daemon: String,
    pub sysbench_read_write: String,
    pub sysbench_read_only: String,
}

/// bench/results/mariadb.json.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub schema: u32,
    pub benchmark: &'static str,
    pub quick: bool,
    pub note: Option<&'static str>,
    pub date: String,
    pub elapsed_s: u64,
    pub estimated_s: u64,
    pub machine: Machine,
    pub versions: Versions,
    pub params: Params,
    pub loadavg_before: String,
    pub loadavg_after: String,
    pub source: Option<SourceFacts>,
    pub image: Option<ImageFacts>,
    pub ready: Ready,
    pub disk: Disk,
    pub throughput: Vec<Throughput>,
    pub clone_settings: Vec<CloneSettings>,
    pub after_runs: Option<AfterRuns>,
    pub commands: Commands,
    pub phases: Vec<Phase>,
    /// Every measured run, as recorded.
    pub runs: Vec<LoadRun>,
    /// The machine table of the section (rendered from `machine` and `versions`).
    #[serde(skip)]
    machine_table: String,
}

const LABEL_A: &str = "cowfs";
const LABEL_B: &str = "copy";

impl Report {
    pub fn new(
        run: &Run,
        p: &Params,
        facts: &Facts,
        versions: Versions,
        estimated_s: u64,
        rec: &Recorded,
        phases: &[Phase],
    ) -> Report {
        let summary: Vec<ReadySummary> = ["cowfs", "copy"]
            .into_iter()
            .filter_map(|driver| {
                let these: Vec<&ReadyRun> = rec.ready.iter().filter(|r| r.driver == driver).collect();
                Some(ReadySummary {
                    driver,
                    seconds: Stats::of(&these.iter().map(|r| r.seconds).collect::<Vec<_>>())?,
                    sync_s: Stats::of(&these.iter().map(|r| r.sync_s).collect::<Vec<_>>())?,
                    stored_bytes: Stats::of(
                        &these.iter().filter_map(|r| r.stored_bytes.map(|b| b as f64)).collect::<Vec<_>>(),
                    ),
                    du_bytes: Stats::of(&these.iter().map(|r| r.du_bytes as f64).collect::<Vec<_>>())?,
                })
            })
            .collect();
        let of = |d: &str| summary.iter().find(|s| s.driver == d);
        let (cowfs, copy) = (of("cowfs"), of("copy"));
        let copy_over_cowfs = ratio(copy.map(|s| s.seconds.median), cowfs.map(|s| s.seconds.median));
        let image_bytes = rec.image.as_ref().map(|i| i.bytes);
        let disk = Disk {
            image_bytes,
            cowfs_stored_bytes: cowfs.and_then(|s| s.stored_bytes).map(|s| s.median),
            cowfs_du_bytes: cowfs.map(|s| s.du_bytes.median),
            copy_stored_bytes: copy.and_then(|s| s.stored_bytes).map(|s| s.median),
            copy_du_bytes: copy.map(|s| s.du_bytes.median),
            cowfs_over_copy: ratio(cowfs.map(|s| s.du_bytes.median), copy.map(|s| s.du_bytes.median)),
            cowfs_over_image: ratio(cowfs.map(|s| s.du_bytes.median), image_bytes.map(|b| b as f64)),
        };
        let throughput = Workload::ALL.into_iter().filter_map(|w| throughput(&rec.runs, w)).collect();
        let sb = Sysbench { bin: "sysbench".into(), tables: p.tables, table_size: p.table_size, threads: p.threads };
        let conn = super::sysbench::Conn::Tcp(super::Target {
            host: "127.0.0.1".into(),
            port: 0,
            user: "root".into(),
            password: String::new(),
        });
        let load = |w: Workload| {
            format!(
                "MYSQL_PWD=… {}",
                sb.run_cmd(w, &conn, p.duration_s).line().replace("--mysql-port=0", "--mysql-port=PORT")
            )
        };
        let (lo, hi) = p.clone_ports();
        let mut extra = Vec::new();
        let src = rec.source.as_ref();
        extra.push((
            "source".to_owned(),
            format!(
                "`mariadb-install-db`, then sysbench `oltp_read_write prepare`: {} tables × {} rows, {} of data and {} of indexes in `sbtest`, a {} data directory; prepared in {} s",
                p.tables,
                p.table_size,
                bytes(src.map(|s| s.data_length as f64)),
                bytes(src.map(|s| s.index_length as f64)),
                bytes(src.map(|s| s.datadir_bytes as f64)),
                num(src.map(|s| s.prepare_s), 1)
            ),
        ));
        extra.push((
            "image".to_owned(),
            format!(
                "`image create {} --from-url mariadb://root:…@127.0.0.1:{}/` of the running source (mariadb-backup, then its prepare): {} s, {} on disk",
                super::IMAGE,
                p.source_port(),
                num(rec.image.as_ref().map(|i| i.seconds), 2),
                bytes(image_bytes.map(|b| b as f64))
            ),
        ));
        extra.push((
            "clones".to_owned(),
            format!(
                "one `thinclone serve --clone-memory {} --stop-clones-at-exit` as root, which starts every clone's server with the engine's settings (doc/ENGINE-MARIADB.md); ports {lo}-{hi}",
                p.clone_memory,
            ),
        ));
        if let Some(first) = rec.clone_settings.first() {
            let shown: Vec<String> = first
                .settings
                .iter()
                .filter(|(k, _)| k != "version")
                .map(|(k, v)| match k.as_str() {
                    "innodb_buffer_pool_size" | "innodb_log_file_size" => {
                        format!("`{k}` {}", v.parse::<f64>().map_or_else(|_| v.clone(), |b| bytes(Some(b))))
                    }
                    _ => format!("`{k}={v}`"),
                })
                .collect();
            let same = rec.clone_settings.iter().all(|c| c.settings == first.settings);
            extra.push((
                "clone servers".to_owned(),
                format!(
                    "as they report them (`SELECT @@…`){}: {}",
                    if same {
                        ", the same on both drivers"
                    } else {
                        ", **not the same on both drivers** (see the JSON)"
                    },
                    shown.join(", ")
                ),
            ));
        }
        extra.push((
            "load average".to_owned(),
            format!("{} before the run, {} after", rec.loadavg_before, rec.loadavg_after),
        ));
        let mut machine_table = String::new();
        for line in facts.markdown(&[]).lines() {
            // This benchmark runs no PostgreSQL: its row gives way to MariaDB's and sysbench's.
            if line.starts_with("| PostgreSQL |") {
                let _ = writeln!(machine_table, "| MariaDB | {} |", versions.mariadb);
                let _ = writeln!(machine_table, "| sysbench | {} |", versions.sysbench);
            } else {
                let _ = writeln!(machine_table, "{line}");
            }
        }
        for (k, v) in &extra {
            let _ = writeln!(machine_table, "| {k} | {v} |");
        }
        Report {
            schema: 2,
            benchmark: "mariadb",
            quick: p.quick,
            note: p.quick.then_some("quick smoke-test run: figures are not to be judged"),
            date: facts.date.clone(),
            elapsed_s: run.elapsed_s(),
            estimated_s,
            machine: facts.machine.clone(),
            versions,
            params: p.clone(),
            loadavg_before: rec.loadavg_before.clone(),
            loadavg_after: rec.loadavg_after.clone(),
            source: rec.source.clone(),
            image: rec.image.clone(),
            ready: Ready { runs: rec.ready.clone(), summary, copy_over_cowfs },
            disk,
            throughput,
            clone_settings: rec.clone_settings.clone(),
            after_runs: rec.after_runs.clone(),
            commands: Commands {
                install_db: src.map(|s| s.install_db.clone()),
                source_server: src.map(|s| s.server.clone()),
                prepare: src.map(|s| s.prepare.clone()),
                daemon: format!(
                    "{} serve --data-dir DIR --listen 127.0.0.1:0 --ports {lo}-{hi} --stop-clones-at-exit --clone-memory {}",
                    run.bin.display(),
                    p.clone_memory
                ),
                sysbench_read_write: load(Workload::ReadWrite),
                sysbench_read_only: load(Workload::ReadOnly),
            },
            phases: phases.to_vec(),
            runs: rec.runs.clone(),
            machine_table,
        }
    }

    /// The section of BENCHMARKS.md, markers included.
    pub fn markdown(&self, run: &Run, sysbench: &Sysbench) -> String {
        let p = &self.params;
        let mut s = String::new();
        let quick_flag = if p.quick { " --quick" } else { "" };
        let _ = writeln!(s, "<!-- mariadb:begin -->");
        let _ = writeln!(
            s,
            "_Generated by `cargo xtask bench mariadb{quick_flag}` on {} (took {} s, estimated {} s); raw figures in `{}`. Do not edit this section by hand._\n",
            self.date,
            self.elapsed_s,
            self.estimated_s,
            run.json_from_md()
        );
        if p.quick {
            let _ = writeln!(s, "> **QUICK MODE (smoke test): tiny tables and 3-second runs; these figures are NOT to be judged.** It only checks that the benchmark runs.\n");
        }
        let _ = writeln!(s, "### Machine and parameters\n\n{}", self.machine_table);

        // ---- item 1
        let _ = writeln!(s, "### Time to a ready clone\n");
        let _ = writeln!(
            s,
            "From the request (`POST /v1/clones` through the typed client, polled every 10 ms: what `clone create NAME --image {} --driver D` does) to the first successful `SELECT 1` with the `mariadb` client over the clone's URL (TCP, its password), tried every 10 ms. {} clones of each driver, one at a time, cowfs then copy, each removed before the next. The image is in the page cache (warm), and the copy clone's writes are in the page cache when it answers: *then syncfs* is a `syncfs` of the daemon's filesystem right after, not counted in the time to ready, which writes back what the clone left (for the copy, the whole image). The copy driver is the floor the issue names, a full copy of the image plus a server start: the daemon starts both with the same settings.\n",
            super::IMAGE,
            p.repeats
        );
        let mut t = Table::new([
            ("driver", Align::Left),
            ("median (s)", Align::Right),
            ("min–max (s)", Align::Right),
            ("runs", Align::Right),
            ("then syncfs, median (s)", Align::Right),
        ]);
        for x in &self.ready.summary {
            t.row([
                driver_label(x.driver),
                num(Some(x.seconds.median), 3),
                format!("{}–{}", num(Some(x.seconds.min), 3), num(Some(x.seconds.max), 3)),
                x.seconds.n.to_string(),
                num(Some(x.sync_s.median), 3),
            ]);
        }
        t.row([
            "**copy / cowfs**".to_owned(),
            format!("**{}**", num(self.ready.copy_over_cowfs, 1)),
            String::new(),
            String::new(),
            String::new(),
        ]);
        let _ = writeln!(s, "{}", t.render());

        // ---- item 2
        let d = &self.disk;
        let _ = writeln!(s, "### Disk per fresh clone\n");
        let _ = writeln!(
            s,
            "The clones of the table above, measured once they answered `SELECT 1` (medians). *stored_bytes*: the daemon's own figure, in its answer to `clone create`; *du*: `du -s -x` of the cowfs clone's layer, or of the copy clone's data directory.\n"
        );
        let mut t = Table::new([("", Align::Left), ("bytes", Align::Right), ("of the image", Align::Right)]);
        let of_image = |b: Option<f64>| percent(ratio(b, d.image_bytes.map(|i| i as f64)));
        t.row(["image (du of its directory)".to_owned(), bytes(d.image_bytes.map(|b| b as f64)), "100%".to_owned()]);
        for (what, b) in [
            ("cowfs clone, stored_bytes", d.cowfs_stored_bytes),
            ("cowfs clone, du of its layer", d.cowfs_du_bytes),
            ("copy clone, stored_bytes", d.copy_stored_bytes),
            ("copy clone, du of its data directory", d.copy_du_bytes),
        ] {
            t.row([what.to_owned(), bytes(b), of_image(b)]);
        }
        let _ = writeln!(s, "{}", t.render());
        let _ =
            writeln!(s, "A fresh cowfs clone takes {} of what a copy clone takes (du).\n", percent(d.cowfs_over_copy));

        // ---- item 3
        let _ = writeln!(s, "### Throughput (sysbench)\n");
        let _ = writeln!(
            s,
            "A = a cowfs clone, B = a copy clone of the same image, made once and then stopped. One clone runs at a time: for each pair, A then B, the clone is started (`clone start`, then its first `SELECT 1`), runs sysbench `oltp_read_write` for {d} s and `oltp_read_only` for {d} s, each after a {w} s warm-up of the same workload that is not counted, and is stopped (`clone stop`). Both clones keep their changes from pair to pair, so both see the same history. {pairs} pair(s); {t} threads; {tables} tables × {size} rows; sysbench's defaults otherwise (prepared statements, its `special` key distribution). The page cache is not dropped (warm runs): with InnoDB's `O_DIRECT`, the copy clone's reads that miss its buffer pool go to the disk, while the cowfs clone's go through the FUSE server's buffered reads of the image and layer, which the page cache serves.\n",
            d = p.duration_s,
            w = p.warmup_s,
            pairs = p.pairs,
            t = sysbench.threads,
            tables = p.tables,
            size = p.table_size
        );
        let mut t = Table::new([
            ("pair".to_owned(), Align::Right),
            ("workload".to_owned(), Align::Left),
            (format!("A {LABEL_A} TPS"), Align::Right),
            ("A QPS".to_owned(), Align::Right),
            ("A p95 (ms)".to_owned(), Align::Right),
            (format!("B {LABEL_B} TPS"), Align::Right),
            ("B QPS".to_owned(), Align::Right),
            ("B p95 (ms)".to_owned(), Align::Right),
            ("A/B TPS".to_owned(), Align::Right),
            ("load after A / B".to_owned(), Align::Right),
        ]);
        for w in &self.throughput {
            for x in &w.pairs {
                let load = |side: &str| self.runs_load(w.workload, x.pair, side).unwrap_or_else(|| "n/a".to_owned());
                t.row([
                    x.pair.to_string(),
                    w.workload.replace('_', "-"),
                    num(Some(x.a.tps), 1),
                    num(Some(x.a.qps), 0),
                    num(Some(x.a.latency_p95_ms), 2),
                    num(Some(x.b.tps), 1),
                    num(Some(x.b.qps), 0),
                    num(Some(x.b.latency_p95_ms), 2),
                    num(x.ratio, 3),
                    format!("{} / {}", load("A"), load("B")),
                ]);
            }
        }
        let _ = writeln!(s, "{}", t.render());
        let mut t = Table::new([
            ("workload", Align::Left),
            ("median A TPS", Align::Right),
            ("median B TPS", Align::Right),
            ("**median A/B**", Align::Right),
        ]);
        for w in &self.throughput {
            t.row([
                w.workload.replace('_', "-"),
                num(w.median_a_tps, 1),
                num(w.median_b_tps, 1),
                format!("**{}**", num(w.median_ratio, 3)),
            ]);
        }
        let _ = writeln!(s, "{}", t.render());
        let ignored: u64 =
            self.throughput.iter().flat_map(|w| &w.pairs).map(|x| x.a.ignored_errors + x.b.ignored_errors).sum();
        let _ = writeln!(
            s,
            "*load after*: the 1-minute load average right after the run. A run's own load (sysbench's 4 threads, mariadbd and, for A, the FUSE server) keeps it above 2 on 2 cores; anything else running on the machine adds to it, and A and B alternate so that both see it: the per-pair ratio is the figure to read. sysbench retried {ignored} transaction(s) on deadlocks in all (its ignored errors, per run in the JSON)."
        );
        if let Some(a) = &self.after_runs {
            let _ = writeln!(
                s,
                "After all runs the cowfs clone's layer holds {} and the copy clone's data directory {}.",
                bytes(Some(a.cowfs_du_bytes as f64)),
                bytes(Some(a.copy_du_bytes as f64))
            );
        }
        let _ = writeln!(s);

        // ---- commands
        let _ = writeln!(s, "### Commands\n\n```sh\n# this run");
        let _ = writeln!(
            s,
            "cargo xtask bench mariadb{quick_flag} --tables {} --table-size {} --duration {} --warmup {} --pairs {} --repeats {} --threads {} --clone-memory {} --port {}",
            p.tables, p.table_size, p.duration_s, p.warmup_s, p.pairs, p.repeats, p.threads, p.clone_memory, p.port
        );
        let c = &self.commands;
        let _ = writeln!(s, "# the source (run as root; mariadbd switches to mysql), then root@'%' gets a password");
        for line in [&c.install_db, &c.source_server, &c.prepare].into_iter().flatten() {
            let _ = writeln!(s, "{}", show_workdir(line, &run.workdir));
        }
        let _ = writeln!(
            s,
            "# the daemon, driven through the typed client (crates/client), each call waiting for its operation"
        );
        let _ = writeln!(s, "{}", show_workdir(&c.daemon, &run.workdir));
        let _ = writeln!(
            s,
            "# POST /v1/images {{\"name\":\"{}\",\"from_url\":\"mariadb://root:…@127.0.0.1:{}/\"}}",
            super::IMAGE,
            p.source_port()
        );
        let _ = writeln!(s, "# POST /v1/clones {{\"name\":…,\"image\":\"{}\",\"driver\":\"cowfs\"|\"copy\"}}; POST /v1/clones/NAME/stop, …/start; DELETE /v1/clones/NAME", super::IMAGE);
        let _ = writeln!(s, "# each load run (warm-up: the same with --time={})", p.warmup_s);
        let _ = writeln!(s, "{}\n{}", c.sysbench_read_write, c.sysbench_read_only);
        let _ = writeln!(s, "```\n<!-- mariadb:end -->");
        s
    }
}

/// A ratio as a percentage with three significant digits: `0.105%`, `12.3%`, `100%`.
fn percent(r: Option<f64>) -> String {
    match r {
        Some(r) if r.is_finite() && r > 0.0 => {
            let pct = r * 100.0;
            let digits = (2 - pct.abs().log10().floor() as i32).max(0);
            format!("{}%", num(Some(pct), digits))
        }
        Some(0.0) => "0%".to_owned(),
        _ => "n/a".to_owned(),
    }
}

impl Report {
    /// The 1-minute load average after a run.
    fn runs_load(&self, workload: &str, pair: u32, side: &str) -> Option<String> {
        let r = self.runs.iter().find(|r| r.workload == workload && r.pair == pair && r.side == side)?;
        r.loadavg_after.split_whitespace().next().map(str::to_owned)
    }
}

fn driver_label(driver: &str) -> String {
    match driver {
        "cowfs" => "thinclone, cowfs driver".to_owned(),
        "copy" => "thinclone, copy driver (full copy + start)".to_owned(),
        d => d.to_owned(),
    }
}

/// The pairs of `workload` that have both sides, and their medians.
fn throughput(runs: &[super::report::LoadRun], workload: Workload) -> Option<Throughput> {
    let find = |pair: u32, side: &str| {
        runs.iter().find(|r| r.workload == workload.key() && r.pair == pair && r.side == side).map(|r| r.outcome)
    };
    let mut numbers: Vec<u32> = runs.iter().filter(|r| r.workload == workload.key()).map(|r| r.pair).collect();
    numbers.sort_unstable();
    numbers.dedup();
    let pairs: Vec<Pair> = numbers
        .into_iter()
        .filter_map(|pair| {
            let (a, b) = (find(pair, "A")?, find(pair, "B")?);
            Some(Pair {
                pair,
                a,
                b,
                ratio: ratio(Some(a.tps), Some(b.tps)),
                qps_ratio: ratio(Some(a.qps), Some(b.qps)),
            })
        })
        .collect();
    if pairs.is_empty() {
        return None;
    }
    let col = |f: fn(&Pair) -> Option<f64>| median(&pairs.iter().filter_map(f).collect::<Vec<_>>());
    Some(Throughput {
        workload: workload.key(),
        median_ratio: col(|x| x.ratio),
        median_a_tps: col(|x| Some(x.a.tps)),
        median_b_tps: col(|x| Some(x.b.tps)),
        median_a_qps: col(|x| Some(x.a.qps)),
        median_b_qps: col(|x| Some(x.b.qps)),
        median_a_p95_ms: col(|x| Some(x.a.latency_p95_ms)),
        median_b_p95_ms: col(|x| Some(x.b.latency_p95_ms)),
        pairs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(tps: f64) -> Outcome {
        Outcome {
            tps,
            qps: tps * 20.0,
            latency_avg_ms: 1.0,
            latency_p95_ms: 2.0,
            transactions: 100,
            ignored_errors: 0,
            seconds: 3.0,
        }
    }

    #[test]
    fn percentages_keep_three_digits() {
        assert_eq!(percent(Some(0.00105)), "0.105%");
        assert_eq!(percent(Some(0.1234)), "12.3%");
        assert_eq!(percent(Some(1.0001)), "100%");
        assert_eq!(percent(None), "n/a");
    }

    #[test]
    fn the_headline_is_the_median_of_pair_ratios() {
        let mut runs = Vec::new();
        for (pair, a) in [(1, 80.0), (2, 50.0), (3, 95.0)] {
            for (side, tps) in [("A", a), ("B", 100.0)] {
                runs.push(LoadRun {
                    workload: "read_write",
                    pair,
                    side,
                    outcome: o(tps),
                    loadavg_after: String::new(),
                });
            }
        }
        // A pair without its B side does not count.
        runs.push(LoadRun { workload: "read_only", pair: 1, side: "A", outcome: o(1.0), loadavg_after: String::new() });
        let t = throughput(&runs, Workload::ReadWrite).unwrap();
        assert_eq!((t.pairs.len(), t.median_ratio, t.median_b_tps), (3, Some(0.8), Some(100.0)));
        assert!(throughput(&runs, Workload::ReadOnly).is_none());
    }
}
