//! `cargo xtask bench agents`: many agents (issue 11, acceptance point 4). One `thinclone
//! server` in the root network namespace and `--agents` agents (10), each in a network
//! namespace of its own joined to the root namespace by a veth pair (10.SUBNET.K.0/24: the
//! root side .1, the agent .2), with a data directory of its own; one shared image location
//! (a plain directory, which every agent sees: the namespaces share the mounts). An image of
//! a small source (initdb and a table) is made through agent 1; then `--clones` clones (200)
//! are made one after another with automatic placement, each timed from the request to its
//! operation's end (`POST /v1/clones?wait=60`), and to its first `SELECT 1` from the root
//! namespace. With every clone running, `clone list` is timed end to end through the CLI
//! (`--json` and the table) and as a bare `GET /v1/clones` through the typed client.
//!
//! The targets: `clone list` answers in under 200 ms, and the last clone is ready within
//! 1.5 × the time of the first. Everything the run starts (clones, agents, the server,
//! namespaces, mounts) is removed at the end, also when it fails or is interrupted.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::exec::{self, tail, Cmd, Exec};
use super::host;
use super::machine::Facts;
use super::markdown::{self, bytes, num, Align, Table};
use super::pg::{Conn, HandServer, StartWait};
use super::progress::{self, log, warn, Phase, Phases};
use super::stats::{median, ratio, Stats};
use super::thinclone::stop_leftovers;
use super::{show_workdir, Common, Run};

/// The issue's targets.
const LIST_TARGET_MS: f64 = 200.0;
const RATIO_TARGET: f64 = 1.5;
/// What one idle clone is counted to need, for the memory check before the run: the suite
/// measured about 17 MiB of MemAvailable per idle clone with 32MB of shared_buffers (its
/// item 5); these leave room for the pages a clone touches at start and for its mount.
const PER_CLONE_MIB: u64 = 40;
const PER_SMALL_CLONE_MIB: u64 = 24;
/// Kept free for the server, the agents, psql and the page cache.
const RESERVE_MIB: u64 = 2048;
/// Clone creation stops, and says so, when MemAvailable falls below this.
const FLOOR_MIB: u64 = 1024;
/// Rows in the source's table.
const SOURCE_ROWS: u32 = 100_000;

/// Options of `cargo xtask bench agents`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "Must run as root (network namespaces, FUSE mounts, servers as postgres). The full run \
    takes about 5 minutes on a 2-core machine (--estimate prints the estimate and exits).")]
pub struct Options {
    /// Agents, each in a network namespace of its own [default: 10; quick: 2].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=200))]
    pub agents: Option<u32>,
    /// Clones made in all, one after another, placed by the server [default: 200; quick: 6].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=2000))]
    pub clones: Option<u32>,
    /// Timed runs of each form of `clone list` with every clone made, after one untimed run
    /// [default: 15; quick: 3].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub list_runs: Option<u32>,
    /// The agents' --clone-memory (each clone server's shared_buffers) [default: 64MB, or
    /// 8MB when MemAvailable cannot hold the clones with 64MB].
    #[arg(long, value_name = "SIZE")]
    pub clone_memory: Option<String>,
    /// The namespaces' addresses are 10.SUBNET.K.0/24, K = 1..agents.
    #[arg(long, value_name = "N", default_value_t = 250)]
    pub subnet: u8,
    /// First TCP port of the clones' range (each agent has the whole range: its clones
    /// listen on its namespace's address); the source server takes the port after it.
    #[arg(long, value_name = "N", default_value_t = 22000)]
    pub port: u16,
    /// With every clone made and timed, keep the fleet running this many seconds before
    /// removing it (to look at it, or profile it: the server's URL is in the log and its
    /// token in data/server/admin.token).
    #[arg(long, value_name = "S", default_value_t = 0)]
    pub hold: u64,
    /// Give each agent a range of clone uids of its own (`--clone-uids`), as agents on
    /// separate hosts have, instead of the one default range that every agent on this host
    /// shares. A diagnostic: its results go to a section and a JSON file of their own.
    #[arg(long)]
    pub disjoint_uids: bool,
    /// Scratch directory.
    #[arg(long, value_name = "DIR", default_value = "/var/tmp/thinclone-agents")]
    pub workdir: PathBuf,
    #[command(flatten)]
    pub common: Common,
}

/// The options with the quick mode's defaults applied.
#[derive(Debug, Clone, Serialize)]
pub struct Params {
    pub quick: bool,
    pub agents: u32,
    /// Clones asked for.
    pub clones: u32,
    pub list_runs: u32,
    pub subnet: u8,
    pub port: u16,
    pub hold: u64,
    pub disjoint_uids: bool,
}

impl Params {
    fn new(o: &Options) -> Result<Params> {
        let quick = o.common.quick;
        let p = Params {
            quick,
            agents: o.agents.unwrap_or(if quick { 2 } else { 10 }),
            clones: o.clones.unwrap_or(if quick { 6 } else { 200 }),
            list_runs: o.list_runs.unwrap_or(if quick { 3 } else { 15 }),
            subnet: o.subnet,
            port: o.port,
            hold: o.hold,
            disjoint_uids: o.disjoint_uids,
        };
        if u32::from(p.port) + p.clones + 40 > 65535 {
            bail!("--port {} leaves no room for {} clones", p.port, p.clones);
        }
        Ok(p)
    }

    /// The clones' port range, on every agent: room for every clone on one agent.
    fn ports(&self) -> (u16, u16) {
        (self.port, self.port + self.clones as u16 + 19)
    }

    fn source_port(&self) -> u16 {
        self.ports().1 + 1
    }

    /// The name of the section and of the JSON file.
    fn name(&self) -> &'static str {
        if self.disjoint_uids {
            "agents-disjoint-uids"
        } else {
            "agents"
        }
    }

    /// Agent `k`'s `--clone-uids` with --disjoint-uids: 1000 of its own, after the default
    /// range (2000000000-2000099999).
    fn clone_uids(&self, k: u32) -> Option<String> {
        let first = 2_000_100_000 + (k - 1) * 1000;
        self.disjoint_uids.then(|| format!("{first}-{}", first + 999))
    }

    /// The counts at which `GET /v1/clones` is timed while the clones are made.
    fn checkpoints(&self) -> Vec<u32> {
        let mut at: Vec<u32> = vec![1];
        let step = if self.clones >= 100 { 50 } else { (self.clones / 2).max(1) };
        at.extend((1..=self.clones / step).map(|k| k * step));
        at.push(self.clones);
        at.sort_unstable();
        at.dedup();
        at
    }

    fn estimate_s(&self) -> u64 {
        // Setup (namespaces, server, agents, image) ~30 s; a clone ~0.6 s to make, check and
        // remove with 200 on the machine; the list runs; the quiet interval; stopping.
        30 + u64::from(self.agents) + u64::from(self.clones) * 6 / 10 + u64::from(self.list_runs) + 20 + self.hold
    }
}

/// How much memory the clones get, and how many fit.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryPlan {
    pub mem_available_mib: u64,
    pub clone_memory: String,
    /// Clones the run makes: as asked, unless the machine cannot hold them.
    pub clones: u32,
    /// Said plainly in the report when the plan departs from what was asked.
    pub note: Option<String>,
}

fn plan_memory(asked: u32, given: Option<&str>, available_mib: u64) -> MemoryPlan {
    let fits = |n: u32, per: u64| u64::from(n) * per + RESERVE_MIB <= available_mib;
    let most = |per: u64| (available_mib.saturating_sub(RESERVE_MIB) / per) as u32;
    let plan = |clone_memory: &str, clones: u32, note: Option<String>| MemoryPlan {
        mem_available_mib: available_mib,
        clone_memory: clone_memory.to_owned(),
        clones,
        note,
    };
    if let Some(m) = given {
        let per = if small_memory(m) { PER_SMALL_CLONE_MIB } else { PER_CLONE_MIB };
        if fits(asked, per) {
            return plan(m, asked, None);
        }
        let n = most(per);
        return plan(
            m,
            n,
            Some(format!(
                "MemAvailable was {available_mib} MiB: {asked} clones with --clone-memory {m} (counted {per} MiB each \
                 and {RESERVE_MIB} MiB kept free) do not fit; this run made {n}, not {asked}"
            )),
        );
    }
    if fits(asked, PER_CLONE_MIB) {
        return plan("64MB", asked, None);
    }
    if fits(asked, PER_SMALL_CLONE_MIB) {
        return plan(
            "8MB",
            asked,
            Some(format!(
                "MemAvailable was {available_mib} MiB, too little for {asked} clones with the default 64MB of \
                 shared_buffers: the agents ran with --clone-memory 8MB"
            )),
        );
    }
    let n = most(PER_SMALL_CLONE_MIB);
    plan(
        "8MB",
        n,
        Some(format!(
            "MemAvailable was {available_mib} MiB, too little for {asked} clones even with --clone-memory 8MB \
             (counted {PER_SMALL_CLONE_MIB} MiB each and {RESERVE_MIB} MiB kept free): this run made {n}, not {asked}"
        )),
    )
}

/// Whether a --clone-memory value is 16MB or less.
fn small_memory(m: &str) -> bool {
    let digits: String = m.chars().take_while(char::is_ascii_digit).collect();
    let unit = m[digits.len()..].trim().to_ascii_uppercase();
    let n: u64 = digits.parse().unwrap_or(u64::MAX);
    match unit.as_str() {
        "KB" => n <= 16 * 1024,
        "MB" => n <= 16,
        _ => false,
    }
}

// ------------------------------------------------------------------ results

/// One clone's creation.
#[derive(Debug, Clone, Serialize)]
pub struct Creation {
    pub i: u32,
    pub name: String,
    pub agent: String,
    pub host: String,
    pub port: u16,
    pub driver: String,
    /// From the request to the end of its operation (`POST …?wait=60`, then polls every
    /// 10 ms if it answered before the end).
    pub ready_s: f64,
    /// From the request to the first successful `SELECT 1` through psql from the root
    /// namespace (after the operation ended).
    pub sql_s: f64,
}

/// `GET /v1/clones` timed while the clones were made.
#[derive(Debug, Clone, Serialize)]
pub struct ListAt {
    pub clones: u32,
    pub ms: Vec<f64>,
    /// Processes on the machine then.
    pub processes: usize,
    /// One pass reading every process's /proc/PID/status (what the agent's search for a
    /// processes of a uid does), and one reading every /proc/PID/stat and cmdline (its
    /// search for processes by command line), in ms: medians of 3.
    pub proc_status_pass_ms: f64,
    pub proc_cmdline_pass_ms: f64,
}

/// CPU use over a quiet interval with every clone made.
#[derive(Debug, Clone, Serialize)]
pub struct IdleCpu {
    pub seconds: u64,
    pub cpus: usize,
    /// Of all CPUs, from /proc/stat (everything on the machine).
    pub machine_busy_pct: f64,
    /// Of one CPU: the agents' processes (not their clones), and the server's.
    pub agents_pct: f64,
    pub server_pct: f64,
    pub processes: usize,
}

/// A form of `clone list`, timed with every clone made.
#[derive(Debug, Clone, Serialize)]
pub struct ListTiming {
    pub what: String,
    pub command: String,
    pub ms: Vec<f64>,
    pub stats: Option<Stats>,
}

#[derive(Debug, Default, Serialize)]
pub struct Results {
    pub image_bytes: u64,
    pub image_s: f64,
    pub setup_s: f64,
    pub creations: Vec<Creation>,
    /// Why fewer clones were made than planned, if so.
    pub stopped_early: Option<String>,
    pub list_at: Vec<ListAt>,
    pub lists: Vec<ListTiming>,
    /// Clones per agent, as `clone list` shows them at the end.
    pub per_agent: BTreeMap<String, u32>,
    pub statuses: BTreeMap<String, u32>,
    pub removal_s: Option<f64>,
    /// CPU use with every clone made and nothing asked.
    pub idle: Option<IdleCpu>,
    pub server_rss_kib: u64,
    pub agents_rss_kib: u64,
    pub mem_available_before_mib: u64,
    pub mem_available_full_mib: u64,
    pub loadavg_before: String,
    pub loadavg_after: String,
}

/// The headline figures.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub clones: usize,
    pub first_s: Option<f64>,
    pub last_s: Option<f64>,
    pub last_over_first: Option<f64>,
    pub ready: Option<Stats>,
    pub first10_median_s: Option<f64>,
    pub last10_median_s: Option<f64>,
    pub last10_over_first10: Option<f64>,
    pub sql: Option<Stats>,
    pub sql_last_over_first: Option<f64>,
}

fn summary(r: &Results) -> Summary {
    let ready: Vec<f64> = r.creations.iter().map(|c| c.ready_s).collect();
    let sql: Vec<f64> = r.creations.iter().map(|c| c.sql_s).collect();
    let k = ready.len().min(10);
    let first10 = median(&ready[..k]);
    let last10 = median(&ready[ready.len() - k..]);
    Summary {
        clones: ready.len(),
        first_s: ready.first().copied(),
        last_s: ready.last().copied(),
        last_over_first: ratio(ready.last().copied(), ready.first().copied()),
        ready: Stats::of(&ready),
        first10_median_s: first10,
        last10_median_s: last10,
        last10_over_first10: ratio(last10, first10),
        sql: Stats::of(&sql),
        sql_last_over_first: ratio(sql.last().copied(), sql.first().copied()),
    }
}

#[derive(Debug, Serialize)]
struct Json<'a> {
    schema: u32,
    benchmark: &'static str,
    quick: bool,
    date: &'a str,
    took_s: u64,
    estimated_s: u64,
    machine: &'a super::machine::Machine,
    versions: &'a super::machine::Versions,
    params: &'a Params,
    memory: &'a MemoryPlan,
    summary: Summary,
    results: &'a Results,
    phases: &'a [Phase],
}

// ------------------------------------------------------------------ the run

pub fn main(o: Options) -> Result<()> {
    let p = Params::new(&o)?;
    if o.common.estimate {
        println!("{}", progress::estimate_text(p.estimate_s()));
        return Ok(());
    }
    if p.quick {
        progress::quick_banner("cargo xtask bench agents --quick");
    }
    let run = Run::start(p.name(), &o.workdir, &o.common)?;
    log(&format!("estimated run time: {}", progress::estimate_text(p.estimate_s())));
    for program in ["ip", "nsenter", "mount"] {
        if host::find_program(program).is_none() {
            bail!("{program} is missing: the agents run in network namespaces (iproute2, util-linux)");
        }
    }
    let facts = Facts::gather(&run.exec, &run.workdir, &run.repo, &run.bin, &run.pg.program("postgres"), None);
    let available_mib = host::mem_available_kib() / 1024;
    let memory = plan_memory(p.clones, o.clone_memory.as_deref(), available_mib);
    log(&format!(
        "MemAvailable {available_mib} MiB: {} clones with --clone-memory {}{}",
        memory.clones,
        memory.clone_memory,
        memory.note.as_ref().map(|n| format!(" ({n})")).unwrap_or_default()
    ));
    if memory.clones == 0 {
        bail!("{}", memory.note.clone().unwrap_or_default());
    }
    let mut results =
        Results { mem_available_before_mib: available_mib, loadavg_before: loadavg(), ..Results::default() };
    let mut phases = Phases::default();
    let outcome = measure(&run, &p, &memory, &mut phases, &mut results);
    phases.end();
    outcome?;
    results.loadavg_after = loadavg();
    let took = run.elapsed_s();
    let s = summary(&results);
    run.write_json(&Json {
        schema: 2,
        benchmark: p.name(),
        quick: p.quick,
        date: &facts.date,
        took_s: took,
        estimated_s: p.estimate_s(),
        machine: &facts.machine,
        versions: &facts.versions,
        params: &p,
        memory: &memory,
        summary: s.clone(),
        results: &results,
        phases: &phases.done,
    })?;
    let section = section(&run, &facts, &p, &memory, &results, &s, took);
    markdown::replace_section(&run.md, p.name(), &section)?;
    println!("{section}");
    log(&format!("wrote {} and {}", run.md.display(), run.json.display()));
    if p.quick {
        progress::quick_banner("cargo xtask bench agents --quick");
    }
    Ok(())
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|t| t.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn name(text: &str) -> Result<api::Name> {
    api::Name::new(text).map_err(anyhow::Error::from)
}

fn ms(d: Duration) -> f64 {
    progress::round(d.as_secs_f64() * 1000.0, 2)
}

/// The fleet, the image and the clones; the [`Fleet`] guard removes everything, in order,
/// however this ends.
fn measure(run: &Run, p: &Params, memory: &MemoryPlan, phases: &mut Phases, r: &mut Results) -> Result<()> {
    let exec = &run.exec;
    let t_setup = Instant::now();
    phases.start(format!("{} network namespaces, the server and {} agents", p.agents, p.agents));
    let agent_dirs: Vec<PathBuf> = (1..=p.agents).map(|k| run.data.join(format!("agent{k}"))).collect();
    // What a killed run left in the host's registry of clone uids.
    drop_uid_claims(&agent_dirs);
    let mut fleet = Fleet {
        exec: exec.clone(),
        netns: Vec::new(),
        server: None,
        agents: Vec::new(),
        agent_dirs: agent_dirs.clone(),
    };
    for k in 1..=p.agents {
        fleet.netns.push(Netns::make(exec, p.subnet, k as u8)?);
    }
    let server_dir = run.data.join("server");
    fs::create_dir_all(&server_dir)?;
    let mut cmd = with_log_level(Cmd::new(&run.bin))
        .args(["server", "--data-dir"])
        .arg(&server_dir)
        .args(["--listen", "0.0.0.0:0", "--insecure-http", "--channel-listen", "0.0.0.0:0"])
        .args(["--ports", &format!("{}-{}", p.ports().0, p.ports().1)]);
    for ns in &fleet.netns {
        cmd = cmd.args(["--channel-name", &ns.host_ip, "--server-name", &ns.host_ip]);
    }
    let (server, listening) =
        Daemon::start(exec, &cmd, &run.logs.join("server.log"), &server_dir, "thinclone listening on ")?;
    fleet.server = Some(server);
    let port: u16 = listening
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("no port in the server's line {listening:?}"))?;
    let url = format!("http://127.0.0.1:{port}");
    let token = fs::read_to_string(server_dir.join("admin.token"))
        .context("reading the server's admin.token")?
        .trim()
        .to_owned();
    let api = client::Client::new(&url)
        .with_token(Some(token.clone()))
        .with_poll_interval(Duration::from_millis(10))
        .with_answer_wait(Some(60));

    for k in 1..=p.agents {
        let ns = &fleet.netns[k as usize - 1];
        let agent = format!("a{k}");
        let dir = run.data.join(format!("agent{k}"));
        fs::create_dir_all(&dir)?;
        let enrollment = api.create_enrollment(&api::agent::CreateEnrollment::default())?;
        exec.note("# the enrollment token is passed as THINCLONE_ENROLLMENT_TOKEN");
        exec.run(
            &ns.enter(&run.bin)
                .args(["agent", "join", "--server", &format!("http://{}:{port}", ns.host_ip), "--name", &agent])
                .arg("--data-dir")
                .arg(&dir)
                .env("THINCLONE_LOG", "warn")
                .env("THINCLONE_ENROLLMENT_TOKEN", &enrollment.token),
        )
        .with_context(|| format!("joining agent {agent}"))?;
        let mut cmd = with_log_level(ns.enter(&run.bin)).args(["agent", "run", "--data-dir"]).arg(&dir).args([
            "--clone-listen",
            &ns.ip,
            "--clone-memory",
            &memory.clone_memory,
            "--stop-clones-at-exit",
        ]);
        if let Some(range) = p.clone_uids(k) {
            cmd = cmd.args(["--clone-uids", &range]);
        }
        let (daemon, _) = Daemon::start(exec, &cmd, &run.logs.join(format!("agent{k}.log")), &dir, "thinclone agent ")?;
        fleet.agents.push(daemon);
    }
    // Placement needs each agent's report of itself, which the server polls.
    for k in 1..=p.agents {
        let agent = name(&format!("a{k}"))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let a = api.get_agent(&agent)?;
            if a.status == api::agent::AgentStatus::Online && !a.engines.is_empty() && a.host.is_some() {
                break;
            }
            if Instant::now() >= deadline {
                bail!("agent {agent} is not online with its report after 60 s: {a:?}");
            }
            exec::sleep(Duration::from_millis(100))?;
        }
    }
    log(&format!("  server at {url}; {} agents online", p.agents));

    phases.start("the shared location, the source and the image (through agent a1)");
    let share = run.data.join("share");
    fs::create_dir_all(&share)?;
    let location =
        api.create_location(&api::agent::CreateLocation { name: name("shared")?, path: share.display().to_string() })?;
    if location.agents.len() != p.agents as usize {
        bail!("location shared is reached by {} agents, not {}: {location:?}", location.agents.len(), p.agents);
    }
    let src = run.data.join("src");
    let pgdata = src.join("pgdata");
    fs::create_dir_all(&src)?;
    run.pg.initdb(exec, &pgdata, &run.logs.join("initdb.log"))?;
    let source = HandServer::start(
        run,
        &pgdata,
        p.source_port(),
        &run.logs.join("pg/source.log"),
        "-c listen_addresses=''",
        StartWait::Ready,
    )?;
    run.pg.psql(
        exec,
        &source.conn("postgres"),
        &format!(
            "CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, {SOURCE_ROWS}) g; CHECKPOINT"
        ),
    )?;
    source.stop()?;
    api.create_source(&api::CreateSource { name: name("src")?, path: src.display().to_string() })?;
    let t0 = Instant::now();
    let image = api
        .create_image_and_wait(&api::CreateImage {
            name: name("img")?,
            from_dir: Some(pgdata.display().to_string()),
            from_url: None,
            snapshot: false,
            from_dump: None,
            from_repo: None,
            stanza: None,
            archive: None,
            target_time: None,
            target_lsn: None,
            team: None,
            location: Some(name("shared")?),
            host: Some(name("a1")?),
            mask: Vec::new(),
            scripts: Vec::new(),
        })
        .context("making the image")?;
    r.image_s = progress::seconds_since(t0);
    if image.status != api::ImageStatus::Ready {
        bail!("the image is {} after its operation: {}", image.status, image.message.unwrap_or_default());
    }
    r.image_bytes = host::du_bytes(&[&share.join("img")]);
    r.setup_s = progress::seconds_since(t_setup);
    log(&format!("  image of {} made in {} s", bytes(Some(r.image_bytes as f64)), r.image_s));

    phases.start(format!("{} clones, one after another, placed by the server", memory.clones));
    let checkpoints = p.checkpoints();
    for i in 1..=memory.clones {
        exec::check_interrupted()?;
        let available = host::mem_available_kib() / 1024;
        if available < FLOOR_MIB {
            let why = format!(
                "MemAvailable fell to {available} MiB (below {FLOOR_MIB} MiB) after {} clones: the run stopped there",
                i - 1
            );
            warn(&why);
            r.stopped_early = Some(why);
            break;
        }
        let clone_name = format!("c{i:03}");
        let request = api::CreateClone {
            name: name(&clone_name)?,
            image: name("img")?,
            driver: None,
            host: None,
            expires_in: None,
            expires_at: None,
            template: None,
        };
        if i == 1 {
            exec.note(&format!(
                "POST {url}{}?wait=60 {}   # c001 … c{:03}, each followed to its end",
                api::paths::CLONES,
                serde_json::to_string(&request)?,
                memory.clones
            ));
        }
        let t0 = Instant::now();
        let op = api.create_clone(&request).with_context(|| format!("making clone {clone_name}"))?;
        client::succeeded(api.follow(op, Duration::from_millis(10), |_| {})?)
            .with_context(|| format!("making clone {clone_name}"))?;
        let ready_s = progress::seconds_since(t0);
        let clone = api.get_clone(&request.name)?;
        let url = clone.url.clone().context("no URL for the administrator's clone")?;
        run.pg.wait_select1(exec, &Conn::Url(url), Duration::from_secs(60))?;
        let sql_s = progress::seconds_since(t0);
        if clone.status != api::CloneStatus::Ready {
            bail!("clone {clone_name} is {} after its operation ended", clone.status);
        }
        r.creations.push(Creation {
            i,
            name: clone_name,
            agent: clone.agent.to_string(),
            host: clone.host.clone(),
            port: clone.port,
            driver: clone.driver.to_string(),
            ready_s,
            sql_s,
        });
        if checkpoints.contains(&i) {
            let mut times = Vec::new();
            for _ in 0..3 {
                let t0 = Instant::now();
                let list = api.list_clones()?;
                times.push(ms(t0.elapsed()));
                if list.len() != i as usize {
                    bail!("GET /v1/clones shows {} clones, not {i}", list.len());
                }
            }
            log(&format!("  {i} clones: last made in {ready_s} s (SQL {sql_s} s); GET /v1/clones {times:?} ms"));
            let (status_ms, cmdline_ms) = proc_passes();
            r.list_at.push(ListAt {
                clones: i,
                ms: times,
                processes: process_count(),
                proc_status_pass_ms: status_ms,
                proc_cmdline_pass_ms: cmdline_ms,
            });
        }
    }
    let made = r.creations.len() as u32;
    r.mem_available_full_mib = host::mem_available_kib() / 1024;
    r.server_rss_kib = fleet.server.as_ref().map_or(0, |s| host::rss_pss_kib(s.pid()).0);
    r.agents_rss_kib = fleet.agents.iter().map(|a| host::rss_pss_kib(a.pid()).0).sum();
    r.idle = Some(idle_cpu(&fleet, if p.quick { 3 } else { 10 })?);
    if let Some(idle) = &r.idle {
        log(&format!(
            "  idle with {made} clones for {} s: machine {}% busy (of {} CPUs), agents {}%, server {}% of one CPU",
            idle.seconds, idle.machine_busy_pct, idle.cpus, idle.agents_pct, idle.server_pct
        ));
    }

    phases.start(format!("clone list with {made} clones, {} timed runs of each form", p.list_runs));
    let cli = |json: bool| {
        let mut cmd = Cmd::new(&run.bin).args(["clone", "list", "--url", &url]);
        if json {
            cmd = cmd.arg("--json");
        }
        cmd.env("THINCLONE_TOKEN", &token).env("THINCLONE_LOG", "warn")
    };
    // The three forms interleaved run by run, after one untimed run of each.
    let mut forms: Vec<ListTiming> = [
        ("`thinclone clone list --json` (CLI, end to end)", cli(true).line()),
        ("`thinclone clone list` (CLI, table, end to end)", cli(false).line()),
        ("`GET /v1/clones` (typed client, `list_clones`)", format!("GET {url}{}", api::paths::CLONES)),
    ]
    .into_iter()
    .map(|(what, command)| ListTiming { what: what.to_owned(), command, ms: Vec::new(), stats: None })
    .collect();
    exec.note(&format!("{}   # THINCLONE_TOKEN in the environment; and the same without --json", cli(true).line()));
    for round in 0..=p.list_runs {
        for (f, form) in forms.iter_mut().enumerate() {
            let t0 = Instant::now();
            let count = match f {
                0 => {
                    let out = cli(true).program().run().context("thinclone clone list --json")?;
                    let elapsed = t0.elapsed();
                    let list: Vec<api::Clone> =
                        serde_json::from_slice(&out.stdout).context("the output of clone list --json")?;
                    if round > 0 {
                        form.ms.push(ms(elapsed));
                    }
                    if round == p.list_runs {
                        r.per_agent.clear();
                        r.statuses.clear();
                        for c in &list {
                            *r.per_agent.entry(c.agent.to_string()).or_default() += 1;
                            *r.statuses.entry(c.status.to_string()).or_default() += 1;
                        }
                    }
                    list.len()
                }
                1 => {
                    let out = cli(false).program().run().context("thinclone clone list")?;
                    let elapsed = t0.elapsed();
                    if round > 0 {
                        form.ms.push(ms(elapsed));
                    }
                    // The header and a line per clone.
                    String::from_utf8_lossy(&out.stdout).lines().count().saturating_sub(1)
                }
                _ => {
                    let list = api.list_clones()?;
                    if round > 0 {
                        form.ms.push(ms(t0.elapsed()));
                    }
                    list.len()
                }
            };
            if count != made as usize {
                bail!("{} shows {count} clones, not {made}", form.what);
            }
        }
    }
    for form in &mut forms {
        form.stats = Stats::of(&form.ms);
        log(&format!(
            "  {}: median {} ms, max {} ms",
            form.what,
            num(form.stats.map(|s| s.median), 1),
            num(form.stats.map(|s| s.max), 1)
        ));
    }
    r.lists = forms;

    if p.hold > 0 {
        phases.start(format!("holding the fleet for {} s (--hold)", p.hold));
        log(&format!("  the server is at {url}; its token is in {}", server_dir.join("admin.token").display()));
        exec::sleep(Duration::from_secs(p.hold))?;
    }

    phases.start(format!("removing the {made} clones and the image"));
    let t0 = Instant::now();
    exec.note(&format!("DELETE {url}{}/NAME?wait=60   # each clone, followed to its end", api::paths::CLONES));
    for c in &r.creations {
        api.delete_clone_and_wait(&name(&c.name)?).with_context(|| format!("removing clone {}", c.name))?;
    }
    r.removal_s = Some(progress::seconds_since(t0));
    api.delete_image_and_wait(&name("img")?).context("removing the image")?;
    phases.start("stopping the agents and the server, removing the namespaces");
    drop(fleet);
    Ok(())
}

/// The number of processes on the machine.
fn process_count() -> usize {
    fs::read_dir("/proc").map_or(0, |d| {
        d.flatten().filter(|e| e.file_name().to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))).count()
    })
}

/// The time of one pass over every process's /proc/PID/status, and of one over every
/// /proc/PID/stat and /proc/PID/cmdline, in ms (medians of 3): what one search of the
/// process table by uid, or by command line, costs the agents (crates/sys/src/procfs.rs).
fn proc_passes() -> (f64, f64) {
    let pass = |files: &[&str]| {
        let t0 = Instant::now();
        if let Ok(entries) = fs::read_dir("/proc") {
            for e in entries.flatten() {
                let Some(pid) =
                    e.file_name().to_str().filter(|n| n.bytes().all(|b| b.is_ascii_digit())).map(str::to_owned)
                else {
                    continue;
                };
                for f in files {
                    let _ = fs::read(format!("/proc/{pid}/{f}"));
                }
            }
        }
        ms(t0.elapsed())
    };
    let status: Vec<f64> = (0..3).map(|_| pass(&["status"])).collect();
    let cmdline: Vec<f64> = (0..3).map(|_| pass(&["stat", "cmdline"])).collect();
    (median(&status).unwrap_or(0.0), median(&cmdline).unwrap_or(0.0))
}

/// A process's CPU time (user + system) in clock ticks, from /proc/PID/stat.
fn cpu_ticks(pid: i32) -> u64 {
    let Ok(text) = fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0 };
    // The fields after the command name, which is in parentheses: utime and stime are the
    // 14th and 15th fields of the line, the 12th and 13th after it.
    let Some((_, rest)) = text.rsplit_once(')') else { return 0 };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    n(11) + n(12)
}

/// The machine's busy and total CPU ticks, from /proc/stat's first line.
fn machine_ticks() -> (u64, u64) {
    let text = fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> =
        text.lines().next().unwrap_or("").split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let total: u64 = v.iter().sum();
    // idle and iowait.
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// CPU use over `seconds` of quiet, with every clone made.
fn idle_cpu(fleet: &Fleet, seconds: u64) -> Result<IdleCpu> {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let agents = || fleet.agents.iter().map(|a| cpu_ticks(a.pid())).sum::<u64>();
    let server = || fleet.server.as_ref().map_or(0, |s| cpu_ticks(s.pid()));
    let (a0, s0, m0) = (agents(), server(), machine_ticks());
    let t0 = Instant::now();
    exec::sleep(Duration::from_secs(seconds))?;
    let wall = t0.elapsed().as_secs_f64();
    let (a1, s1, m1) = (agents(), server(), machine_ticks());
    let pct = |ticks: u64| progress::round(ticks as f64 / hz / wall * 100.0, 1);
    Ok(IdleCpu {
        seconds,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        machine_busy_pct: progress::round((m1.0 - m0.0) as f64 / (m1.1 - m0.1).max(1) as f64 * 100.0, 1),
        agents_pct: pct(a1 - a0),
        server_pct: pct(s1 - s0),
        processes: process_count(),
    })
}

/// The environment every thinclone child gets: its log level (ours, or `warn`).
fn with_log_level(cmd: Cmd) -> Cmd {
    let level = std::env::var("THINCLONE_LOG").unwrap_or_else(|_| "warn".to_owned());
    cmd.env("THINCLONE_LOG", level)
}

// ------------------------------------------------------------------ the fleet

/// A network namespace joined to the root namespace by a veth pair: the root side has
/// `10.SUBNET.K.1/24`, the namespace `10.SUBNET.K.2/24`, with its default route through the
/// root side.
struct Netns {
    name: String,
    host_if: String,
    host_ip: String,
    ip: String,
}

impl Netns {
    fn make(exec: &Exec, subnet: u8, k: u8) -> Result<Netns> {
        let ns = Netns {
            name: format!("tcbench-{k}"),
            host_if: format!("tcbh{k}"),
            host_ip: format!("10.{subnet}.{k}.1"),
            ip: format!("10.{subnet}.{k}.2"),
        };
        let ns_if = format!("tcbn{k}");
        let ip = |args: &[&str]| Cmd::new("ip").args(args);
        // What an earlier, killed run may have left.
        if Path::new("/run/netns").join(&ns.name).exists() {
            warn(&format!("removing namespace {} left by an earlier run", ns.name));
            let _ = exec.run_always(&ip(&["netns", "del", &ns.name]));
        }
        if Path::new("/sys/class/net").join(&ns.host_if).exists() {
            let _ = exec.run_always(&ip(&["link", "del", &ns.host_if]));
        }
        exec.run(&ip(&["netns", "add", &ns.name]))?;
        let (host_cidr, ns_cidr) = (format!("{}/24", ns.host_ip), format!("{}/24", ns.ip));
        let steps: [Vec<&str>; 9] = [
            vec!["link", "add", &ns.host_if, "type", "veth", "peer", "name", &ns_if],
            vec!["link", "set", &ns_if, "netns", &ns.name],
            vec!["addr", "add", &host_cidr, "dev", &ns.host_if],
            vec!["link", "set", &ns.host_if, "up"],
            vec!["-n", &ns.name, "addr", "add", &ns_cidr, "dev", &ns_if],
            vec!["-n", &ns.name, "link", "set", &ns_if, "up"],
            vec!["-n", &ns.name, "link", "set", "lo", "up"],
            vec!["-n", &ns.name, "route", "add", "default", "via", &ns.host_ip],
            vec!["-n", &ns.name, "addr", "show", "dev", &ns_if],
        ];
        for args in steps {
            if let Err(e) = exec.run(&ip(&args)) {
                ns.remove(exec);
                return Err(e);
            }
        }
        Ok(ns)
    }

    /// A command run inside the namespace (its network only: mounts stay shared).
    fn enter(&self, program: &Path) -> Cmd {
        let nsenter = host::find_program("nsenter").unwrap_or_else(|| PathBuf::from("/usr/bin/nsenter"));
        Cmd::new(nsenter).arg(format!("--net=/run/netns/{}", self.name)).arg("--").arg(program)
    }

    fn remove(&self, exec: &Exec) {
        // Removing the namespace removes its end of the pair, and so the pair.
        if let Err(e) = exec.run_always(&Cmd::new("ip").args(["netns", "del", &self.name])) {
            warn(&format!("removing namespace {}: {e:#}", self.name));
        }
        if Path::new("/sys/class/net").join(&self.host_if).exists() {
            let _ = exec.run_always(&Cmd::new("ip").args(["link", "del", &self.host_if]));
        }
    }
}

/// A thinclone server or agent, started in its own process group, its output in a log.
struct Daemon {
    process: sys::Process,
    data_dir: PathBuf,
    what: String,
    stopped: bool,
}

impl Daemon {
    /// Starts it and waits for a line that starts with `ready`; returns the rest of it.
    fn start(exec: &Exec, cmd: &Cmd, log: &Path, data_dir: &Path, ready: &str) -> Result<(Daemon, String)> {
        let offset = fs::metadata(log).map_or(0, |m| m.len()) as usize;
        let process = exec.spawn(cmd, log)?;
        let mut daemon = Daemon {
            process,
            data_dir: data_dir.to_owned(),
            what: format!("{} ({})", cmd.name(), data_dir.display()),
            stopped: false,
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            exec::check_interrupted()?;
            let text = fs::read(log)
                .map(|b| String::from_utf8_lossy(&b[offset.min(b.len())..]).into_owned())
                .unwrap_or_default();
            if let Some(rest) = text.lines().find_map(|l| Some(l[l.find(ready)? + ready.len()..].trim().to_owned())) {
                return Ok((daemon, rest));
            }
            if daemon.process.try_wait()?.is_some() {
                daemon.stopped = true;
                bail!("{} exited before `{ready}` (log {}):\n{}", daemon.what, log.display(), tail(log, 20));
            }
            if Instant::now() >= deadline {
                bail!("no `{ready}` from {} within 120 s (log {})", daemon.what, log.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn pid(&self) -> i32 {
        self.process.pid() as i32
    }

    fn signal_term(&self) {
        if !self.stopped {
            self.process.signal(libc::SIGTERM);
        }
    }

    /// SIGTERM (an agent stops its clones: --stop-clones-at-exit), SIGKILL after 5 minutes,
    /// then whatever is left under its data directory.
    fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        match self.process.stop(libc::SIGTERM, Duration::from_secs(300)) {
            Ok((_, true)) => warn(&format!("{} did not stop on SIGTERM; killed", self.what)),
            Ok(_) => {}
            Err(e) => warn(&format!("stopping {}: {e}", self.what)),
        }
        stop_leftovers(&self.data_dir);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The host-wide registry of clones' uids that agents share (crates/agent/src/uids.rs).
const UID_REGISTRY: &str = "/run/thinclone/clone-uids";

/// Removes the registry's claims of clones of these agents' data directories, which are
/// stopped or not started: a claim is a file named by the uid whose first line is the
/// claiming agent's data directory. Agents release a claim when a clone is removed; these
/// are the claims of clones that a failed or interrupted run stopped without removing (the
/// agents would take them over as stale, but they would stay).
fn drop_uid_claims(agent_dirs: &[PathBuf]) {
    let Ok(entries) = fs::read_dir(UID_REGISTRY) else { return };
    let dirs: Vec<PathBuf> = agent_dirs.iter().map(|d| fs::canonicalize(d).unwrap_or_else(|_| d.clone())).collect();
    let lock = fs::OpenOptions::new().append(true).open(Path::new(UID_REGISTRY).join("lock"));
    // SAFETY: flock on a descriptor we own; released when the file is closed.
    let locked =
        lock.as_ref().is_ok_and(|f| unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(f), libc::LOCK_EX) } == 0);
    let mut removed = 0;
    for e in entries.flatten() {
        if !e.file_name().to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())) {
            continue;
        }
        let owner = fs::read_to_string(e.path()).ok().and_then(|t| t.lines().next().map(PathBuf::from));
        if owner.is_some_and(|o| dirs.contains(&o)) && fs::remove_file(e.path()).is_ok() {
            removed += 1;
        }
    }
    drop(lock);
    if removed > 0 {
        log(&format!(
            "  removed {removed} uid claims of this run's agents from {UID_REGISTRY}{}",
            if locked { "" } else { " (without its lock)" }
        ));
    }
}

/// Everything the run started, removed in order when dropped: the agents (which stop their
/// clones and mounts), the server, then the namespaces.
struct Fleet {
    exec: Arc<Exec>,
    netns: Vec<Netns>,
    server: Option<Daemon>,
    agents: Vec<Daemon>,
    agent_dirs: Vec<PathBuf>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // All at once, then each waited for.
        for a in &self.agents {
            a.signal_term();
        }
        for a in &mut self.agents {
            a.stop();
        }
        self.agents.clear();
        drop_uid_claims(&self.agent_dirs);
        if let Some(mut s) = self.server.take() {
            s.stop();
        }
        for ns in &self.netns {
            ns.remove(&self.exec);
        }
        self.netns.clear();
    }
}

// ------------------------------------------------------------------ the report

fn section(run: &Run, facts: &Facts, p: &Params, memory: &MemoryPlan, r: &Results, s: &Summary, took: u64) -> String {
    let (begin, end) = markdown::markers(p.name());
    let made = r.creations.len();
    let mut out = String::new();
    let mut line = |t: &str| {
        out.push_str(t);
        out.push('\n');
    };
    line(&begin);
    line(&format!(
        "_Generated by `cargo xtask bench agents` on {} (took {took} s); raw figures in `{}`. Do not edit this \
         section by hand._",
        facts.date,
        run.json_from_md()
    ));
    if p.quick {
        line("");
        line("**Quick mode (smoke test): these figures are not to be judged.**");
    }
    line("");
    line("### Machine and parameters");
    line("");
    let mut extra = vec![
        (
            "fleet".to_owned(),
            format!(
                "one `thinclone server` in the root network namespace; {} agents, each in a network namespace of its \
                 own (10.{}.K.2/24 over a veth pair, the root side 10.{}.K.1) with its own data directory",
                p.agents, p.subnet, p.subnet
            ),
        ),
        (
            "clones".to_owned(),
            if made as u32 == p.clones {
                format!("{made}, one after another, automatic placement (no `--host`)")
            } else {
                format!("**{made}, not {}**, one after another, automatic placement (no `--host`)", p.clones)
            },
        ),
        (
            "clone memory".to_owned(),
            format!(
                "agents' `--clone-memory {}` (MemAvailable {} MiB before the run, {} MiB with every clone running)",
                memory.clone_memory, r.mem_available_before_mib, r.mem_available_full_mib
            ),
        ),
        (
            "image".to_owned(),
            format!(
                "initdb and one table of {SOURCE_ROWS} rows: {} on the shared location (a plain directory), made \
                 through agent a1 in {} s",
                bytes(Some(r.image_bytes as f64)),
                num(Some(r.image_s), 2)
            ),
        ),
        (
            "clone uids".to_owned(),
            if p.disjoint_uids {
                "**each agent a range of its own** (`--clone-uids`, 1000 uids from 2000100000 + 1000 × (K − 1)), as \
                 on separate hosts: a diagnostic run"
                    .to_owned()
            } else {
                "the agents' default range, which every agent on this host shares (one host-wide registry)".to_owned()
            },
        ),
        ("load average".to_owned(), format!("{} before the run, {} after", r.loadavg_before, r.loadavg_after)),
    ];
    if let Some(note) = &memory.note {
        extra.push(("memory note".to_owned(), note.clone()));
    }
    if let Some(why) = &r.stopped_early {
        extra.push(("stopped early".to_owned(), why.clone()));
    }
    line(facts.markdown(&extra).trim_end());
    line("");
    line("### Clone creation");
    line("");
    line(&format!(
        "Clones c001 … c{made:03} of the image, made one after another through the typed client with automatic \
         placement and the agents' default driver, each left running. *Ready*: from the request to the end of its \
         operation (`POST /v1/clones?wait=60`, polled every 10 ms if it answered first). *SQL*: from the request to \
         the first successful `SELECT 1` through psql from the root namespace, tried after the operation ended."
    ));
    line("");
    let mut t = Table::new([("", Align::Left), ("ready (s)", Align::Right), ("SQL (s)", Align::Right)]);
    let sql: Vec<f64> = r.creations.iter().map(|c| c.sql_s).collect();
    let k = made.min(10);
    t.row(["first clone".to_owned(), num(s.first_s, 3), num(sql.first().copied(), 3)]);
    t.row([format!("clone {made} (the last)"), num(s.last_s, 3), num(sql.last().copied(), 3)]);
    t.row(["**last / first**".to_owned(), format!("**{}**", num(s.last_over_first, 2)), num(s.sql_last_over_first, 2)]);
    t.row(["median of all".to_owned(), num(s.ready.map(|x| x.median), 3), num(s.sql.map(|x| x.median), 3)]);
    t.row(["min – max".to_owned(), min_max(s.ready), min_max(s.sql)]);
    t.row([format!("median of the first {k}"), num(s.first10_median_s, 3), num(median(&sql[..k]), 3)]);
    t.row([format!("median of the last {k}"), num(s.last10_median_s, 3), num(median(&sql[made - k..]), 3)]);
    t.row([
        format!("last {k} / first {k} (medians)"),
        num(s.last10_over_first10, 2),
        num(ratio(median(&sql[made - k..]), median(&sql[..k])), 2),
    ]);
    line(t.render().trim_end());
    line("");
    let block = if made >= 100 { 20 } else { made.div_ceil(4).max(1) };
    line(&format!("Ready times by blocks of {block} clones, in the order they were made:"));
    line("");
    let mut t = Table::new([
        ("clones", Align::Left),
        ("median (s)", Align::Right),
        ("max (s)", Align::Right),
        ("agents used", Align::Right),
    ]);
    for chunk in r.creations.chunks(block) {
        let times: Vec<f64> = chunk.iter().map(|c| c.ready_s).collect();
        let mut agents: Vec<&str> = chunk.iter().map(|c| c.agent.as_str()).collect();
        agents.sort_unstable();
        agents.dedup();
        t.row([
            format!("{}–{}", chunk[0].i, chunk[chunk.len() - 1].i),
            num(median(&times), 3),
            num(times.iter().copied().reduce(f64::max), 3),
            agents.len().to_string(),
        ]);
    }
    line(t.render().trim_end());
    line("");
    line("### Placement");
    line("");
    line(&format!("Clones per agent, as `clone list` shows them with every clone made (statuses: {}):", {
        r.statuses.iter().map(|(k, v)| format!("{v} {k}")).collect::<Vec<_>>().join(", ")
    }));
    line("");
    let mut agents: Vec<(&String, &u32)> = r.per_agent.iter().collect();
    agents.sort_by_key(|(a, _)| a[1..].parse::<u32>().unwrap_or(0));
    let mut t = Table::new(
        std::iter::once(("agent".to_owned(), Align::Left))
            .chain(agents.iter().map(|(a, _)| (a.to_string(), Align::Right))),
    );
    t.row(std::iter::once("clones".to_owned()).chain(agents.iter().map(|(_, n)| n.to_string())));
    line(t.render().trim_end());
    line("");
    line(&format!("### `clone list` with {made} clones"));
    line("");
    line(&format!(
        "From the root namespace, with every clone running; the three forms interleaved, {} timed runs each after \
         one untimed run. The CLI is timed end to end (process start to exit, its JSON or table printed).",
        p.list_runs
    ));
    line("");
    let mut t = Table::new([
        ("what", Align::Left),
        ("median (ms)", Align::Right),
        ("min (ms)", Align::Right),
        ("max (ms)", Align::Right),
    ]);
    for l in &r.lists {
        t.row([
            l.what.clone(),
            num(l.stats.map(|s| s.median), 1),
            num(l.stats.map(|s| s.min), 1),
            num(l.stats.map(|s| s.max), 1),
        ]);
    }
    line(t.render().trim_end());
    line("");
    line(
        "`GET /v1/clones` while the clones were made (3 runs at each count), with the size of the machine's process \
         table and what one pass over it costs (the agents search it by uid and by command line as they make a \
         clone):",
    );
    line("");
    let mut t = Table::new([
        ("clones", Align::Right),
        ("median (ms)", Align::Right),
        ("max (ms)", Align::Right),
        ("processes on the machine", Align::Right),
        ("a pass over /proc/*/status (ms)", Align::Right),
        ("a pass over /proc/*/stat + cmdline (ms)", Align::Right),
    ]);
    for at in &r.list_at {
        t.row([
            at.clones.to_string(),
            num(median(&at.ms), 1),
            num(at.ms.iter().copied().reduce(f64::max), 1),
            at.processes.to_string(),
            num(Some(at.proc_status_pass_ms), 1),
            num(Some(at.proc_cmdline_pass_ms), 1),
        ]);
    }
    line(t.render().trim_end());
    line("");
    line(&format!(
        "Memory with every clone running: the server's RSS {}, the {} agents' {} in all. Removing the {made} clones \
         one after another took {} s.",
        bytes(Some(r.server_rss_kib as f64 * 1024.0)),
        p.agents,
        bytes(Some(r.agents_rss_kib as f64 * 1024.0)),
        num(r.removal_s, 1)
    ));
    if let Some(idle) = &r.idle {
        line("");
        line(&format!(
            "CPU with every clone made and nothing asked, over {} s: the machine {} % busy (of {} CPUs, everything \
             on it); the {} agents {} % and the server {} % of one CPU; {} processes on the machine.",
            idle.seconds,
            num(Some(idle.machine_busy_pct), 1),
            idle.cpus,
            p.agents,
            num(Some(idle.agents_pct), 1),
            num(Some(idle.server_pct), 1),
            idle.processes
        ));
    }
    line("");
    line("### Targets");
    line("");
    let judged = |ok: bool| {
        if p.quick {
            "not judged (quick)".to_owned()
        } else if ok {
            "**yes**".to_owned()
        } else {
            "**no**".to_owned()
        }
    };
    let mut t =
        Table::new([("target", Align::Left), ("value", Align::Right), ("target", Align::Right), ("met?", Align::Left)]);
    for l in &r.lists {
        if let Some(st) = l.stats {
            t.row([
                format!("{}, median", l.what),
                format!("{} ms", num(Some(st.median), 1)),
                format!("< {LIST_TARGET_MS} ms"),
                judged(st.median < LIST_TARGET_MS),
            ]);
            t.row([
                format!("{}, slowest run", l.what),
                format!("{} ms", num(Some(st.max), 1)),
                format!("< {LIST_TARGET_MS} ms"),
                judged(st.max < LIST_TARGET_MS),
            ]);
        }
    }
    t.row([
        format!("clone {made} ready within 1.5 × the first (ready times)"),
        format!("{} ×", num(s.last_over_first, 2)),
        format!("<= {RATIO_TARGET} ×"),
        judged(s.last_over_first.is_some_and(|x| x <= RATIO_TARGET)),
    ]);
    t.row([
        format!("the same, medians of the last {k} and the first {k}"),
        format!("{} ×", num(s.last10_over_first10, 2)),
        format!("<= {RATIO_TARGET} ×"),
        judged(s.last10_over_first10.is_some_and(|x| x <= RATIO_TARGET)),
    ]);
    t.row([
        format!("{} clones made, as the issue asks", p.clones),
        made.to_string(),
        p.clones.to_string(),
        judged(made as u32 == p.clones),
    ]);
    line(t.render().trim_end());
    line("");
    line("### Commands");
    line("");
    line("```sh");
    line("# this run");
    let mut this = String::from("cargo xtask bench agents");
    if p.quick {
        this.push_str(" --quick");
    }
    if p.disjoint_uids {
        this.push_str(" --disjoint-uids");
    }
    line(&format!(
        "{this}   # --agents {} --clones {} --list-runs {} --subnet {} --port {}",
        p.agents, p.clones, p.list_runs, p.subnet, p.port
    ));
    let w = |t: &str| show_workdir(t, &run.workdir);
    line("# each namespace K: ip netns add tcbench-K; a veth pair tcbhK (root, 10.S.K.1/24) – tcbnK (10.S.K.2/24,");
    line("# default route via 10.S.K.1)");
    line(&w(&format!(
        "thinclone server --data-dir {} --listen 0.0.0.0:0 --insecure-http --channel-listen 0.0.0.0:0 \
         --channel-name 10.{s}.1.1 --server-name 10.{s}.1.1 … --ports {}-{}",
        run.data.join("server").display(),
        p.ports().0,
        p.ports().1,
        s = p.subnet
    )));
    line(&w(&format!(
        "nsenter --net=/run/netns/tcbench-K -- thinclone agent join --server http://10.{s}.K.1:PORT --name aK \
         --data-dir {}/agentK   # THINCLONE_ENROLLMENT_TOKEN from POST /v1/agents/tokens",
        run.data.display(),
        s = p.subnet
    )));
    line(&w(&format!(
        "nsenter --net=/run/netns/tcbench-K -- thinclone agent run --data-dir {}/agentK --clone-listen 10.{s}.K.2 \
         --clone-memory {} --stop-clones-at-exit{}",
        run.data.display(),
        memory.clone_memory,
        if p.disjoint_uids {
            " --clone-uids FIRST-LAST   # FIRST = 2000100000 + 1000 × (K − 1), LAST = FIRST + 999"
        } else {
            ""
        },
        s = p.subnet
    )));
    line(&w(&format!(
        "thinclone location add shared {}; thinclone source add src {}",
        run.data.join("share").display(),
        run.data.join("src").display()
    )));
    line(&w(&format!(
        "thinclone image create img --from-dir {} --location shared --host a1",
        run.data.join("src/pgdata").display()
    )));
    line("POST /v1/clones?wait=60 {\"name\":\"cNNN\",\"image\":\"img\"}   # c001 … in turn; then psql -c 'select 1'");
    line("thinclone clone list --url http://127.0.0.1:PORT --json   # THINCLONE_TOKEN set; also without --json");
    line("GET /v1/clones   # the typed client's list_clones");
    line("```");
    line("");
    line("Every command run is in `logs/commands.log` of the workdir.");
    line(&end);
    out
}

fn min_max(s: Option<Stats>) -> String {
    match s {
        Some(s) => format!("{} – {}", num(Some(s.min), 3), num(Some(s.max), 3)),
        None => "n/a".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_plan_says_what_it_changed() {
        let p = plan_memory(200, None, 23_000);
        assert_eq!((p.clone_memory.as_str(), p.clones, p.note.is_none()), ("64MB", 200, true));
        let p = plan_memory(200, None, 7_000);
        assert_eq!((p.clone_memory.as_str(), p.clones), ("8MB", 200));
        assert!(p.note.unwrap().contains("8MB"));
        let p = plan_memory(200, None, 4_000);
        assert_eq!((p.clone_memory.as_str(), p.clones), ("8MB", 81));
        assert!(p.note.unwrap().contains("made 81, not 200"));
        let p = plan_memory(200, Some("8MB"), 7_000);
        assert_eq!((p.clones, p.note.is_none()), (200, true));
        assert!(small_memory("8MB") && small_memory("16MB") && !small_memory("32MB") && !small_memory("1GB"));
    }

    #[test]
    fn checkpoints() {
        let p = |clones| Params {
            quick: false,
            agents: 10,
            clones,
            list_runs: 1,
            subnet: 250,
            port: 57000,
            hold: 0,
            disjoint_uids: false,
        };
        assert_eq!(p(200).checkpoints(), [1, 50, 100, 150, 200]);
        assert_eq!(p(6).checkpoints(), [1, 3, 6]);
        assert_eq!(p(1).checkpoints(), [1]);
    }
}
