//! Item 7: checkpoint and revert time at each scale (issue 13, acceptance 1: "revert time
//! does not grow with the clone's size"). At every scale, `--repeats` rounds; in each, one
//! fresh clone per driver, the drivers interleaved: cowfs and copy (the baseline, which
//! copies everything) from the daemon on the workdir's filesystem, reflink from the daemon
//! on XFS (left out, with a note, when XFS could not be made). On each clone:
//!
//! 1. `--checkpoint-duration` s of pgbench read-write, so that the clone has changes;
//! 2. a checkpoint of the running clone, timed from the request (`?wait=60`) to the end of
//!    its operation. Meanwhile a `SELECT 1` loop on one open connection (psql's `\watch`,
//!    a query a millisecond after each answer, `\timing` on) records how long each answer
//!    took: the longest is the pause clients saw;
//! 3. `--checkpoint-duration` s more of pgbench read-write;
//! 4. a revert to the checkpoint, timed from the request to the first successful
//!    `SELECT 1` on the restarted server. `pgbench_history` must then hold the rows it had
//!    at the checkpoint (checked, and reported).
//!
//! The checkpoint's `stored_bytes` comes from the list of the clone's checkpoints. The
//! headline is, per driver, the largest scale's median over the smallest's, for the
//! checkpoint and for the revert.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use api::Driver;
use serde::Serialize;

use super::Suite;
use crate::bench::exec::{self, Cmd};
use crate::bench::markdown::{bytes, num, Align, Table};
use crate::bench::pg::{url_with_db, Conn};
use crate::bench::pgbench::Mode;
use crate::bench::progress::{log, seconds_since, warn};
use crate::bench::stats::{median, ratio, Stats};
use crate::bench::thinclone::Daemon;

/// The drivers, in the order they interleave.
pub const DRIVERS: [Driver; 3] = [Driver::Cowfs, Driver::Reflink, Driver::Copy];

/// How often an operation is polled: as the other items do.
const POLL: Duration = Duration::from_millis(10);

/// How long the `SELECT 1` loop runs before and after the checkpoint.
const MARGIN: Duration = Duration::from_millis(200);

/// The drivers' labels, by key.
pub fn label(driver: &str) -> &'static str {
    match driver {
        "cowfs" => "cowfs (daemon on the workdir)",
        "reflink" => "reflink (daemon on XFS)",
        "copy" => "copy, full copies (daemon on the workdir)",
        _ => "?",
    }
}

/// One checkpoint and revert of one fresh clone.
#[derive(Debug, Clone, Serialize)]
pub struct CheckpointRun {
    pub scale: u32,
    pub driver: &'static str,
    pub run: u32,
    /// From the request (`?wait=60`) to the end of its operation.
    pub checkpoint_s: f64,
    /// From the request to the first successful `SELECT 1` after it.
    pub revert_s: f64,
    /// The checkpoint's `stored_bytes`, as the daemon lists it right after it was made.
    pub stored_bytes: u64,
    /// The same, listed again before the revert: a reflink checkpoint shares every block
    /// with the clone when it is made and keeps the blocks the clone rewrites afterwards.
    pub stored_bytes_before_revert: u64,
    /// The longest and the median wait for a `SELECT 1` answer on an open connection while
    /// the checkpoint ran (from `MARGIN` before it to `MARGIN` after); `None` when the loop
    /// failed (`select1_error`).
    pub longest_select1_ms: Option<f64>,
    pub median_select1_ms: Option<f64>,
    pub select1_count: usize,
    pub select1_error: Option<String>,
    /// `count(*)` of `pgbench_history` at the checkpoint, before the revert, after it.
    pub history_rows_at_checkpoint: u64,
    pub history_rows_before_revert: u64,
    pub history_rows_after_revert: u64,
    /// TPS of the read-write runs before the checkpoint and between it and the revert.
    pub tps_before: f64,
    pub tps_between: f64,
}

impl CheckpointRun {
    /// Whether the revert brought back the checkpoint's rows.
    pub fn reverted(&self) -> bool {
        self.history_rows_after_revert == self.history_rows_at_checkpoint
    }
}

pub fn run(s: &mut Suite, scale: u32) -> Result<()> {
    if s.xfs.is_none() && s.results.checkpoint_notes.is_empty() {
        let why = s.results.xfs_unavailable.clone().unwrap_or_else(|| "XFS is not mounted".to_owned());
        let note = format!("reflink: not measured, XFS is not available ({why})");
        warn(&format!("item 7: {note}"));
        s.results.checkpoint_notes.push(note);
    }
    for r in 1..=s.p.repeats {
        for driver in DRIVERS {
            exec::check_interrupted()?;
            let x = {
                let daemon = match driver {
                    Driver::Reflink => match &s.xfs {
                        Some(x) => &x.daemon,
                        None => continue,
                    },
                    _ => s.ext4()?,
                };
                cycle(s, daemon, driver, scale, r)?
            };
            log(&format!(
                "  scale {scale} run {r} {}: checkpoint {} s (stores {}, {} before the revert; longest SELECT 1 wait {} ms), revert {} s{}",
                driver.as_str(),
                num(Some(x.checkpoint_s), 3),
                bytes(Some(x.stored_bytes as f64)),
                bytes(Some(x.stored_bytes_before_revert as f64)),
                num(x.longest_select1_ms, 1),
                num(Some(x.revert_s), 3),
                if x.reverted() { "" } else { ", NOT back to the checkpoint's rows" }
            ));
            if driver == Driver::Reflink {
                s.xfs()?.fs.trim();
            }
            s.results.checkpoints.push(x);
        }
    }
    Ok(())
}

/// A fresh clone of `driver`: made, measured, removed (also when the measurement fails).
fn cycle(s: &Suite, daemon: &Daemon, driver: Driver, scale: u32, r: u32) -> Result<CheckpointRun> {
    let name = format!("cp{scale}_{}_{r}", driver.as_str());
    let clone = daemon.create_clone(&name, &format!("img-{scale}"), driver)?;
    let url = url_with_db(&clone.url, "bench");
    let measured = measure(s, daemon, driver, scale, r, &name, &url);
    let removed = daemon.remove_clone(&name);
    let x = measured.with_context(|| format!("item 7, clone {name}"))?;
    removed?;
    Ok(x)
}

fn measure(
    s: &Suite,
    daemon: &Daemon,
    driver: Driver,
    scale: u32,
    r: u32,
    name: &str,
    url: &str,
) -> Result<CheckpointRun> {
    let run = s.run;
    let conn = Conn::Url(url.to_owned());
    s.wait_ready(&conn)?;
    let tag = |what: &str| run.logs.join(format!("pgbench-cp{scale}-{}-{r}-{what}.log", driver.as_str()));
    let rows = || -> Result<u64> {
        let out = s.psql(&conn, "select count(*) from pgbench_history")?;
        out.trim().parse().with_context(|| format!("count(*) of pgbench_history: {out:?}"))
    };
    let d = s.p.checkpoint_duration;
    let before = s.pgbench.run(&run.exec, &conn, Mode::ReadWrite, d, &tag("before"))?;
    let at_checkpoint = rows()?;

    let client = daemon.client().with_answer_wait(Some(60));
    let clone_name = api::Name::new(name)?;
    let cp = api::Name::new(&format!("cp{r}"))?;
    let pinger = Pinger::start(s, &conn, &format!("select1-cp{scale}-{}-{r}", driver.as_str()))?;
    exec::sleep(MARGIN)?;
    let request = api::CreateCheckpoint { name: Some(cp.clone()), message: Some("suite item 7".to_owned()) };
    run.exec.note(&format!(
        "POST {}{}/{name}/checkpoints?wait=60 {}   # and wait for its operation",
        daemon.url,
        api::paths::CLONES,
        serde_json::to_string(&request)?
    ));
    let t0 = Instant::now();
    let ended = client.create_checkpoint(&clone_name, &request).and_then(|op| client.follow(op, POLL, |_| {}));
    let checkpoint_s = seconds_since(t0);
    exec::sleep(MARGIN)?;
    let waits = pinger.stop();
    client::succeeded(ended?).with_context(|| format!("checkpoint {cp} of clone {name}"))?;
    let stored_bytes = client.made_checkpoint(&clone_name, Some(&cp))?.stored_bytes;

    let between = s.pgbench.run(&run.exec, &conn, Mode::ReadWrite, d, &tag("between"))?;
    let before_revert = rows()?;
    let stored_bytes_before_revert = client
        .list_checkpoints(&clone_name)?
        .into_iter()
        .find(|c| c.name == cp)
        .with_context(|| format!("checkpoint {cp} of clone {name} is not listed"))?
        .stored_bytes;
    let request = api::RevertClone { to: Some(cp.clone()) };
    run.exec.note(&format!(
        "POST {}{}/{name}/revert?wait=60 {}   # and wait for its operation, then for SELECT 1",
        daemon.url,
        api::paths::CLONES,
        serde_json::to_string(&request)?
    ));
    let t0 = Instant::now();
    let op = client.revert_clone(&clone_name, &request)?;
    client::succeeded(client.follow(op, POLL, |_| {})?).with_context(|| format!("revert of clone {name} to {cp}"))?;
    s.wait_ready(&conn)?;
    let revert_s = seconds_since(t0);
    let after_revert = rows()?;
    if after_revert != at_checkpoint {
        warn(&format!(
            "clone {name}: pgbench_history has {after_revert} rows after the revert, {at_checkpoint} at the checkpoint"
        ));
    }
    let (longest, med, count, error) = match waits {
        Ok(w) => (w.iter().copied().reduce(f64::max), median(&w), w.len(), None),
        Err(e) => {
            warn(&format!("clone {name}: the SELECT 1 loop during the checkpoint: {e:#}"));
            (None, None, 0, Some(format!("{e:#}")))
        }
    };
    Ok(CheckpointRun {
        scale,
        driver: driver.as_str(),
        run: r,
        checkpoint_s,
        revert_s,
        stored_bytes,
        stored_bytes_before_revert,
        longest_select1_ms: longest,
        median_select1_ms: med,
        select1_count: count,
        select1_error: error,
        history_rows_at_checkpoint: at_checkpoint,
        history_rows_before_revert: before_revert,
        history_rows_after_revert: after_revert,
        tps_before: before.tps,
        tps_between: between.tps,
    })
}

/// `SELECT 1` every millisecond on one open connection: psql running `select 1 \watch
/// 0.001` with `\timing on`, its output in a log. Every answer's wait is a `Time: … ms`
/// line there. Dropped without [`Pinger::stop`] (a failure in between), it is stopped too.
struct Pinger {
    process: Option<sys::Process>,
    log: PathBuf,
}

impl Pinger {
    /// Starts the loop on `conn` (its script and log named after `stem` in the logs) and
    /// returns once it has had its first answer.
    fn start(s: &Suite, conn: &Conn, stem: &str) -> Result<Pinger> {
        let script = s.run.logs.join(format!("{stem}.sql"));
        // The next query 1 ms after each answer: back to back, psql and the backend would
        // take one of the two cores (30,000 queries a second) from the checkpoint being
        // timed. A pause is then seen at most 1 ms short.
        std::fs::write(&script, "\\timing on\nselect 1 \\watch 0.001\n")
            .with_context(|| format!("writing {}", script.display()))?;
        let log = s.run.logs.join(format!("{stem}.log"));
        let _ = std::fs::remove_file(&log); // spawn appends
        let cmd = conn.apply(Cmd::new(s.run.pg.program("psql")).args(["-X", "-A", "-t", "-q", "-f"]).arg(&script));
        let process = s.run.exec.spawn(&cmd, &log)?;
        let mut pinger = Pinger { process: Some(process), log };
        let deadline = Instant::now() + Duration::from_secs(30);
        while waits_in(&pinger.read()).is_empty() {
            let exited = pinger.process.as_mut().map_or(Ok(None), sys::Process::try_wait)?.is_some();
            if exited || Instant::now() >= deadline || exec::interrupted().is_some() {
                let log = pinger.log.clone();
                drop(pinger);
                bail!("the SELECT 1 loop did not start (log {}):\n{}", log.display(), exec::tail(&log, 10));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(pinger)
    }

    fn read(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Ends the loop (SIGINT ends `\watch`, and psql then the end of its script) and
    /// returns every answer's wait, in milliseconds; a loop that ended before, or lost its
    /// connection, is an error.
    fn stop(mut self) -> Result<Vec<f64>> {
        let mut process = self.process.take().context("the SELECT 1 loop has already been stopped")?;
        let ran_on = process.try_wait()?.is_none();
        process.stop(libc::SIGINT, Duration::from_secs(10))?;
        let text = self.read();
        let lost = ["connection to server was lost", "server closed the connection"].iter().any(|m| text.contains(m));
        if !ran_on || lost {
            bail!("psql's SELECT 1 loop ended early (log {}):\n{}", self.log.display(), exec::tail(&self.log, 10));
        }
        Ok(waits_in(&text))
    }
}

impl Drop for Pinger {
    fn drop(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.stop(libc::SIGINT, Duration::from_secs(10)); // a failure in between is what gets reported
        }
    }
}

/// The waits psql's `\timing` reported (`Time: 0.262 ms`, `Time: 1234.567 ms (00:01.235)`),
/// in milliseconds.
fn waits_in(text: &str) -> Vec<f64> {
    text.lines()
        .filter_map(|l| {
            // A line cut short by the stop has no unit yet.
            let mut words = l.strip_prefix("Time: ")?.split_whitespace();
            let (n, unit) = (words.next()?, words.next()?);
            if unit == "ms" {
                n.parse().ok()
            } else {
                None
            }
        })
        .collect()
}

// ---------------------------------------------------------------- results

/// A driver at a scale.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub driver: &'static str,
    pub scale: u32,
    pub checkpoint_s: Stats,
    pub revert_s: Stats,
    pub stored_bytes: Stats,
    pub stored_bytes_before_revert: Stats,
    pub longest_select1_ms: Option<Stats>,
    /// Runs whose revert brought back the checkpoint's `pgbench_history` rows, of all.
    pub reverted: usize,
    pub runs: usize,
}

/// How a driver's times grow with the data: the largest scale's medians over the smallest's.
#[derive(Debug, Clone, Serialize)]
pub struct Growth {
    pub driver: &'static str,
    pub small_scale: u32,
    pub large_scale: u32,
    pub checkpoint_ratio: Option<f64>,
    pub revert_ratio: Option<f64>,
    /// Of `stored_bytes` before the revert.
    pub stored_bytes_ratio: Option<f64>,
    pub longest_select1_ratio: Option<f64>,
}

pub fn summaries(runs: &[CheckpointRun], scales: &[u32]) -> Vec<Summary> {
    let mut out = Vec::new();
    for driver in DRIVERS.map(Driver::as_str) {
        for &scale in scales {
            let these: Vec<&CheckpointRun> = runs.iter().filter(|x| x.driver == driver && x.scale == scale).collect();
            let stats = |f: fn(&CheckpointRun) -> Option<f64>| {
                Stats::of(&these.iter().filter_map(|x| f(x)).collect::<Vec<_>>())
            };
            let (Some(checkpoint_s), Some(revert_s), Some(stored_bytes), Some(stored_bytes_before_revert)) = (
                stats(|x| Some(x.checkpoint_s)),
                stats(|x| Some(x.revert_s)),
                stats(|x| Some(x.stored_bytes as f64)),
                stats(|x| Some(x.stored_bytes_before_revert as f64)),
            ) else {
                continue;
            };
            out.push(Summary {
                driver,
                scale,
                checkpoint_s,
                revert_s,
                stored_bytes,
                stored_bytes_before_revert,
                longest_select1_ms: stats(|x| x.longest_select1_ms),
                reverted: these.iter().filter(|x| x.reverted()).count(),
                runs: these.len(),
            });
        }
    }
    out
}

pub fn growth(summaries: &[Summary]) -> Vec<Growth> {
    DRIVERS
        .map(Driver::as_str)
        .into_iter()
        .filter_map(|driver| {
            let these: Vec<&Summary> = summaries.iter().filter(|x| x.driver == driver).collect();
            let (small, large) = (*these.first()?, *these.last()?);
            (these.len() > 1).then(|| Growth {
                driver,
                small_scale: small.scale,
                large_scale: large.scale,
                checkpoint_ratio: ratio(Some(large.checkpoint_s.median), Some(small.checkpoint_s.median)),
                revert_ratio: ratio(Some(large.revert_s.median), Some(small.revert_s.median)),
                stored_bytes_ratio: ratio(
                    Some(large.stored_bytes_before_revert.median),
                    Some(small.stored_bytes_before_revert.median),
                ),
                longest_select1_ratio: ratio(
                    large.longest_select1_ms.map(|x| x.median),
                    small.longest_select1_ms.map(|x| x.median),
                ),
            })
        })
        .collect()
}

/// Median (min–max).
fn spread(x: &Stats, digits: i32) -> String {
    format!("{} ({}–{})", num(Some(x.median), digits), num(Some(x.min), digits), num(Some(x.max), digits))
}

/// `| driver | scale | checkpoint (s) | revert (s) | stored_bytes | longest SELECT 1 wait | back |`.
pub fn table(summaries: &[Summary]) -> Table {
    let mut t = Table::new([
        ("driver", Align::Left),
        ("scale", Align::Right),
        ("checkpoint (s)", Align::Right),
        ("revert to SELECT 1 (s)", Align::Right),
        ("checkpoint's stored_bytes: made / before the revert", Align::Right),
        ("longest SELECT 1 wait during the checkpoint (ms)", Align::Right),
        ("back to the checkpoint's rows", Align::Right),
    ]);
    for x in summaries {
        t.row([
            label(x.driver).to_owned(),
            x.scale.to_string(),
            spread(&x.checkpoint_s, 3),
            spread(&x.revert_s, 3),
            format!("{} / {}", bytes(Some(x.stored_bytes.median)), bytes(Some(x.stored_bytes_before_revert.median))),
            x.longest_select1_ms.as_ref().map_or_else(|| "n/a".to_owned(), |w| spread(w, 1)),
            format!("{}/{}", x.reverted, x.runs),
        ]);
    }
    t
}

/// `| driver | checkpoint L/S | revert L/S | stored_bytes L/S | longest wait L/S |`.
pub fn growth_table(growth: &[Growth]) -> Table {
    let mut t = Table::new([
        ("driver", Align::Left),
        ("scales", Align::Right),
        ("checkpoint: largest / smallest", Align::Right),
        ("revert: largest / smallest", Align::Right),
        ("stored_bytes before the revert: largest / smallest", Align::Right),
        ("longest SELECT 1 wait: largest / smallest", Align::Right),
    ]);
    for g in growth {
        t.row([
            label(g.driver).to_owned(),
            format!("{} / {}", g.large_scale, g.small_scale),
            num(g.checkpoint_ratio, 2),
            num(g.revert_ratio, 2),
            num(g.stored_bytes_ratio, 2),
            num(g.longest_select1_ratio, 2),
        ]);
    }
    t
}

/// The largest scale's database over the smallest's.
pub fn data_ratio(sizes: &[super::report::Size]) -> Option<f64> {
    let small = sizes.iter().min_by_key(|z| z.scale)?;
    let large = sizes.iter().max_by_key(|z| z.scale)?;
    ratio(Some(large.db_bytes as f64), Some(small.db_bytes as f64))
}

#[cfg(test)]
mod tests {
    #[test]
    fn psql_timing_lines_give_the_waits() {
        let log = "1\nTime: 0.262 ms\n1\nTime: 1234.567 ms (00:01.235)\n1\nTime: 0.\nCancel request sent\n";
        assert_eq!(super::waits_in(log), vec![0.262, 1234.567]);
        assert!(super::waits_in("psql: error: connection refused").is_empty());
    }
}
