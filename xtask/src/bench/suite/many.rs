//! Item 5: many clones. From a daemon whose clones' servers get little memory
//! (`--clone-memory`, for PostgreSQL shared_buffers),
//! cowfs clones of one image are made one after another and left running idle; at each
//! count of `--clones` their memory and disk are measured: RSS and PSS of each clone's
//! postmaster, its children and its mount process (`/proc/PID/smaps_rollup`), the drop of
//! MemAvailable as a cross-check, the daemon's own memory apart, and du of the layers.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde::Serialize;

use super::report::{ManyAt, ManyCreation};
use super::{Suite, MANY_CLONE_MEMORY};
use crate::bench::exec;
use crate::bench::host;
use crate::bench::markdown::{bytes, num, Align, Table};
use crate::bench::pg::{url_with_db, Conn};
use crate::bench::progress::{log, seconds_since};
use crate::bench::stats::{median, ratio};
use crate::bench::thinclone::Daemon;

pub fn run(s: &mut Suite) -> Result<()> {
    let run = s.run;
    // A daemon whose clones' servers get small shared_buffers.
    let data_dir = s.ext4()?.data_dir.clone();
    s.ext4 = None;
    s.ext4 = Some(Daemon::start(
        &run.exec,
        &run.bin,
        &data_dir,
        s.p.ports_ext4(),
        &run.logs.join("thinclone-ext4.log"),
        &["--clone-memory", MANY_CLONE_MEMORY],
    )?);
    host::sync_all();
    exec::sleep(Duration::from_secs(2))?;
    let before = host::mem_available_kib();
    let image = format!("img-{}", s.p.many_scale);
    for i in 1..=s.p.clones_max() {
        let t0 = Instant::now();
        let clone = s.ext4()?.create_clone(&format!("m_{i}"), &image, api::Driver::Cowfs)?;
        s.wait_ready(&Conn::Url(url_with_db(&clone.url, "bench")))?;
        s.results.many.push(ManyCreation { i, seconds: seconds_since(t0) });
        if s.p.clone_counts.contains(&i) {
            measure(s, i, before)?;
        }
    }
    log(&format!("  removing the {} clones", s.p.clones_max()));
    for i in 1..=s.p.clones_max() {
        s.ext4()?.remove_clone(&format!("m_{i}"))?;
    }
    Ok(())
}

/// Memory and disk of the idle clones m_1..m_n.
fn measure(s: &mut Suite, n: u32, mem_available_before_kib: u64) -> Result<()> {
    // Idle: start-up work done, autovacuum asleep.
    exec::sleep(Duration::from_secs(if s.p.quick { 2 } else { 10 }))?;
    let daemon = s.ext4()?;
    let mut pids = Vec::new();
    let mut layers = Vec::new();
    for i in 1..=n {
        let name = format!("m_{i}");
        let found = clone_processes(daemon, &name);
        if found.is_empty() {
            bail!("no processes found for clone {name}");
        }
        pids.extend(found);
        layers.extend(daemon.cowfs_storage(&name));
    }
    let (mut rss, mut pss) = (0, 0);
    for &pid in &pids {
        let (r, p) = host::rss_pss_kib(pid);
        rss += r;
        pss += p;
    }
    let (daemon_rss, daemon_pss) = host::rss_pss_kib(daemon.pid());
    let layers_bytes = host::du_bytes(&layers.iter().map(|p| p.as_path()).collect::<Vec<_>>());
    log(&format!(
        "  {n} clones: {} processes, RSS {} KiB and PSS {} KiB per clone; layers {} in all",
        pids.len(),
        rss / u64::from(n),
        pss / u64::from(n),
        bytes(Some(layers_bytes as f64))
    ));
    s.results.many_at.push(ManyAt {
        clones: n,
        processes: pids.len(),
        rss_kib: rss,
        pss_kib: pss,
        daemon_rss_kib: daemon_rss,
        daemon_pss_kib: daemon_pss,
        layers_bytes,
        mem_available_kib: host::mem_available_kib(),
        mem_available_before_kib,
    });
    Ok(())
}

/// The processes of a clone: those whose command line names a path in the clone's
/// directory (its postmaster, its mount), and the postmaster's children.
fn clone_processes(daemon: &Daemon, name: &str) -> Vec<i32> {
    let mut dir = daemon.clone_dir(name).into_os_string();
    dir.push("/");
    let mut pids = sys::procfs::processes_under(std::path::Path::new(&dir));
    let postmasters: Vec<i32> = pids
        .iter()
        .copied()
        .filter(|&pid| {
            sys::procfs::cmdline(pid).and_then(|c| c.first().cloned()).is_some_and(|p| p.ends_with("postgres"))
        })
        .collect();
    for pm in postmasters {
        pids.extend(host::children_of(pm));
    }
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// The figures at one count of clones.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub clones: u32,
    pub first_s: Option<f64>,
    pub median_s: Option<f64>,
    pub last_s: Option<f64>,
    pub last_over_first: Option<f64>,
    pub max_s: Option<f64>,
    pub layers_bytes: u64,
    pub layers_bytes_per_clone: f64,
    pub processes: usize,
    pub rss_kib_per_clone: f64,
    pub pss_kib_per_clone: f64,
    pub daemon_rss_kib: u64,
    pub daemon_pss_kib: u64,
    pub mem_available_drop_kib_per_clone: f64,
}

pub fn rows(creations: &[ManyCreation], at: &[ManyAt]) -> Vec<Row> {
    at.iter()
        .map(|a| {
            let times: Vec<f64> = creations.iter().filter(|c| c.i <= a.clones).map(|c| c.seconds).collect();
            let n = f64::from(a.clones);
            Row {
                clones: a.clones,
                first_s: times.first().copied(),
                median_s: median(&times),
                last_s: times.last().copied(),
                last_over_first: ratio(times.last().copied(), times.first().copied()),
                max_s: times.iter().copied().reduce(f64::max),
                layers_bytes: a.layers_bytes,
                layers_bytes_per_clone: a.layers_bytes as f64 / n,
                processes: a.processes,
                rss_kib_per_clone: a.rss_kib as f64 / n,
                pss_kib_per_clone: a.pss_kib as f64 / n,
                daemon_rss_kib: a.daemon_rss_kib,
                daemon_pss_kib: a.daemon_pss_kib,
                mem_available_drop_kib_per_clone: (a.mem_available_before_kib as f64 - a.mem_available_kib as f64) / n,
            }
        })
        .collect()
}

pub fn table(rows: &[Row]) -> Table {
    let mut t = Table::new(
        [
            "clones",
            "first (s)",
            "median (s)",
            "last (s)",
            "last/first",
            "disk, all clones",
            "disk per clone",
            "RSS per clone",
            "PSS per clone",
            "MemAvailable drop per clone",
            "daemon RSS / PSS",
        ]
        .map(|h| (h, Align::Right)),
    );
    let kib = |k: f64| bytes(Some(k * 1024.0));
    for r in rows {
        t.row([
            r.clones.to_string(),
            num(r.first_s, 3),
            num(r.median_s, 3),
            num(r.last_s, 3),
            num(r.last_over_first, 2),
            bytes(Some(r.layers_bytes as f64)),
            bytes(Some(r.layers_bytes_per_clone)),
            kib(r.rss_kib_per_clone),
            kib(r.pss_kib_per_clone),
            kib(r.mem_available_drop_kib_per_clone),
            format!("{} / {}", kib(r.daemon_rss_kib as f64), kib(r.daemon_pss_kib as f64)),
        ]);
    }
    t
}
