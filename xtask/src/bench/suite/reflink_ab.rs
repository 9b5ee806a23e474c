//! Item 6: clones that share blocks against full copies, under writes, A B A B (issue 12,
//! acceptance 2). At item 2's scale, on the same filesystem for both sides:
//!
//! - XFS: A = a thinclone reflink clone, B = a thinclone copy clone, both from the daemon on
//!   the XFS loop mount;
//! - btrfs (when the run has it): A = a `btrfs subvolume snapshot` of the image's subvolume,
//!   B = a full copy (`cp -a --reflink=never` into a fresh subvolume), both with a
//!   hand-started server (the peer);
//! - btrfs, thinclone's drivers: A = a thinclone reflink clone, B = a thinclone copy clone,
//!   both from the daemon on the btrfs loop mount.
//!
//! Each side of each pair is a fresh clone: made, the page cache dropped (when allowed), a
//! `--warmup` s read-write warm-up, `--duration` s of read-write measured, a `CHECKPOINT`,
//! its disk counted, removed. The headline is the median of the pairs' TPS ratios A/B; the
//! disk each side grew by is reported beside it.

use std::time::Instant;

use anyhow::{Context, Result};
use api::Driver;
use serde::Serialize;

use super::methods::{CloneMethod, Made, MadeClone};
use super::peers::{self, Snapshot};
use super::Suite;
use crate::bench::ab::{self, Side};
use crate::bench::exec::{self, Cmd};
use crate::bench::host;
use crate::bench::markdown::{bytes, num, Align, Table};
use crate::bench::pg::{url_with_db, Conn};
use crate::bench::pgbench::Mode;
use crate::bench::progress::{log, seconds_since};
use crate::bench::stats::{median, ratio};
use crate::bench::thinclone::Daemon;

/// The filesystems compared on, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fs {
    Xfs,
    /// The peer: a snapshot of a subvolume.
    Btrfs,
    /// thinclone's reflink driver on btrfs.
    BtrfsDriver,
}

impl Fs {
    pub fn sides(self) -> (&'static str, &'static str) {
        match self {
            Fs::Xfs => ("thinclone reflink clone (XFS)", "thinclone copy clone (XFS)"),
            Fs::Btrfs => ("btrfs subvolume snapshot + start", "cp -a --reflink=never + start (btrfs)"),
            Fs::BtrfsDriver => ("thinclone reflink clone (btrfs)", "thinclone copy clone (btrfs)"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Fs::Xfs => "XFS",
            Fs::Btrfs => "btrfs",
            Fs::BtrfsDriver => "btrfs, thinclone",
        }
    }

    /// For clone names and log files.
    fn slug(self) -> &'static str {
        match self {
            Fs::Xfs => "xfs",
            Fs::Btrfs => "btrfs",
            Fs::BtrfsDriver => "btrfsd",
        }
    }

    /// What the disk figure counts.
    pub fn disk_what(self) -> &'static str {
        match self {
            Fs::Xfs => "growth of the XFS filesystem's used space (df)",
            Fs::Btrfs => "exclusive bytes of the clone's subvolume (btrfs filesystem du -s)",
            Fs::BtrfsDriver => "exclusive bytes of the clone's data directory (btrfs filesystem du -s)",
        }
    }
}

/// One side of one pair: its creation and disk.
#[derive(Debug, Clone, Serialize)]
pub struct SideRun {
    pub pair: u32,
    pub side: &'static str,
    pub ready_s: f64,
    pub created_bytes: u64,
    pub after_bytes: u64,
    /// The daemon's `stored_bytes` of a thinclone clone, measured after the run's checkpoint.
    pub stored_after_bytes: Option<u64>,
}

/// The comparison on one filesystem, as measured.
#[derive(Debug, Clone)]
pub struct Comparison {
    pub fs: Fs,
    pub scale: u32,
    pub runs: ab::Runs,
    pub sides: Vec<SideRun>,
}

pub fn run(s: &mut Suite, scale: u32) -> Result<()> {
    let mut on = vec![Fs::Xfs];
    if let Some(btrfs) = &s.btrfs {
        on.push(Fs::Btrfs);
        if btrfs.daemon.is_some() {
            on.push(Fs::BtrfsDriver);
        }
    }
    for fs in on {
        let c = compare(s, fs, scale)?;
        s.results.reflink_ab.push(c);
    }
    Ok(())
}

fn compare(s: &Suite, fs: Fs, scale: u32) -> Result<Comparison> {
    let (run, pgbench) = (s.run, &s.pgbench);
    let mut c = Comparison { fs, scale, runs: ab::Runs::default(), sides: Vec::new() };
    ab::alternate(s.p.pairs, |pair, side| {
        exec::check_interrupted()?;
        let name = format!("ab{scale}_{}_{pair}{}", fs.slug(), side.letter().to_lowercase());
        let made = make(s, fs, side, scale, &name)?;
        let created = made.disk_bytes(s)?;
        host::sync_all();
        if run.can_drop {
            run.drop_caches()?;
        }
        let tag = format!("pgbench-ab-{}-{pair}{}", fs.slug(), side.letter());
        pgbench.run(&run.exec, &made.conn, Mode::ReadWrite, s.p.warmup, &run.logs.join(format!("{tag}-warmup.log")))?;
        let o =
            pgbench.run(&run.exec, &made.conn, Mode::ReadWrite, s.p.duration, &run.logs.join(format!("{tag}.log")))?;
        s.psql(&made.conn, "checkpoint")?;
        let checkpointed = api::Timestamp::now();
        let after = made.disk_bytes(s)?;
        let stored_after = made.stored_bytes_after(s, checkpointed)?;
        log(&format!(
            "  {} pair {pair} {}: ready in {} s, {} tps, {} after creation, {} after the run{}",
            fs.name(),
            side.letter(),
            num(Some(made.ready_s), 2),
            num(Some(o.tps), 0),
            bytes(Some(created as f64)),
            bytes(Some(after as f64)),
            stored_after.map_or(String::new(), |b| format!(" (the daemon: {})", bytes(Some(b as f64))))
        ));
        c.runs.record(Mode::ReadWrite, pair, side, o);
        c.sides.push(SideRun {
            pair,
            side: side.letter(),
            ready_s: made.ready_s,
            created_bytes: created,
            after_bytes: after,
            stored_after_bytes: stored_after,
        });
        made.remove(s)?;
        match fs {
            Fs::Xfs => s.xfs()?.fs.trim(),
            Fs::Btrfs | Fs::BtrfsDriver => s.btrfs()?.fs.trim(),
        }
        Ok(())
    })?;
    Ok(c)
}

/// A fresh clone of side `side`.
fn make(s: &Suite, fs: Fs, side: Side, scale: u32, name: &str) -> Result<Made> {
    match (fs, side) {
        (Fs::Xfs | Fs::BtrfsDriver, Side::A) => daemon_clone(s, fs, Driver::Reflink, scale, name),
        (Fs::Xfs | Fs::BtrfsDriver, Side::B) => daemon_clone(s, fs, Driver::Copy, scale, name),
        (Fs::Btrfs, Side::A) => peers::BtrfsSnapshot.make(s, scale, name),
        (Fs::Btrfs, Side::B) => btrfs_copy(s, scale, name),
    }
}

/// The thinclone daemon on `fs`'s loop mount.
fn daemon_on<'s>(s: &'s Suite, fs: Fs) -> Result<&'s Daemon> {
    match fs {
        Fs::Xfs => Ok(&s.xfs()?.daemon),
        Fs::BtrfsDriver | Fs::Btrfs => s.btrfs()?.daemon.as_ref().context("no thinclone daemon runs on btrfs"),
    }
}

/// A clone with `driver` from the daemon on `fs`. Its disk on XFS is the filesystem's
/// growth; on btrfs, whose free space moves by whole chunks of metadata, the exclusive bytes
/// of its data directory.
fn daemon_clone(s: &Suite, fs: Fs, driver: Driver, scale: u32, name: &str) -> Result<Made> {
    let daemon = daemon_on(s, fs)?;
    let used_before = match fs {
        Fs::Xfs => host::fs_used_bytes(&s.xfs()?.fs.mount_point)?,
        _ => 0,
    };
    let t0 = Instant::now();
    let clone = daemon.create_clone(name, &format!("img-{scale}"), driver)?;
    let conn = Conn::Url(url_with_db(&clone.url, "bench"));
    s.wait_ready(&conn).with_context(|| format!("clone {name}"))?;
    let ready_s = seconds_since(t0);
    Ok(Made::new(ready_s, conn, clone.stored_bytes, Box::new(DaemonClone { fs, name: name.to_owned(), used_before })))
}

struct DaemonClone {
    fs: Fs,
    name: String,
    used_before: u64,
}

impl MadeClone for DaemonClone {
    fn disk_bytes(&self, s: &Suite) -> Result<u64> {
        match self.fs {
            Fs::Xfs => Ok(host::fs_used_bytes(&s.xfs()?.fs.mount_point)?.saturating_sub(self.used_before)),
            _ => host::btrfs_exclusive_bytes(&s.run.exec, &daemon_on(s, self.fs)?.clone_data_dir(&self.name)),
        }
    }

    fn stored_bytes_after(&self, s: &Suite, since: api::Timestamp) -> Result<Option<u64>> {
        daemon_on(s, self.fs)?.stored_bytes_after(&self.name, since).map(Some)
    }

    fn remove(self: Box<Self>, s: &Suite) -> Result<()> {
        daemon_on(s, self.fs)?.remove_clone(&self.name)
    }
}

/// A full copy of the image's subvolume into a fresh subvolume on btrfs, and a start.
fn btrfs_copy(s: &Suite, scale: u32, name: &str) -> Result<Made> {
    let btrfs = s.btrfs()?;
    let (image, dir) = (btrfs.image_dir(scale), btrfs.clone_dir(name));
    std::fs::create_dir_all(dir.parent().expect("a parent"))?;
    let t0 = Instant::now();
    s.run.exec.run(&Cmd::new("btrfs").args(["subvolume", "create"]).arg(&dir))?;
    let mut from = image.into_os_string();
    from.push("/.");
    s.run.exec.run(&Cmd::new("cp").args(["-a", "--reflink=never"]).arg(&from).arg(&dir))?;
    let (server, conn) = s.start_hand_clone(&dir, "btrfs-copy")?;
    let ready_s = seconds_since(t0);
    Ok(Made::new(ready_s, conn, None, Box::new(Snapshot { server: Some(server), dir })))
}

// ---------------------------------------------------------------- results

/// A comparison's summary, as suite.json holds it.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub fs: Fs,
    pub scale: u32,
    pub a: &'static str,
    pub b: &'static str,
    pub disk: &'static str,
    pub read_write: Option<ab::Summary>,
    pub sides: Vec<SideRun>,
    /// The median over the pairs of A's growth after the run / B's.
    pub median_growth_ratio: Option<f64>,
    pub median_a_after_bytes: Option<f64>,
    pub median_b_after_bytes: Option<f64>,
    pub median_a_ready_s: Option<f64>,
    pub median_b_ready_s: Option<f64>,
    /// The median over the pairs of A's `stored_bytes` / A's disk after the run (thinclone
    /// clones only): whether what the daemon reports agrees with the filesystem.
    pub median_a_stored_ratio: Option<f64>,
}

pub fn summaries(comparisons: &[Comparison]) -> Vec<Summary> {
    comparisons
        .iter()
        .map(|c| {
            let (a, b) = c.fs.sides();
            let of = |side: &'static str| c.sides.iter().filter(move |r| r.side == side);
            let growth: Vec<f64> = of("A")
                .filter_map(|x| {
                    let y = of("B").find(|y| y.pair == x.pair)?;
                    ratio(Some(x.after_bytes as f64), Some(y.after_bytes as f64))
                })
                .collect();
            let med = |side: &'static str, f: fn(&SideRun) -> f64| median(&of(side).map(f).collect::<Vec<_>>());
            Summary {
                fs: c.fs,
                scale: c.scale,
                a,
                b,
                disk: c.fs.disk_what(),
                read_write: c.runs.summary(Mode::ReadWrite),
                sides: c.sides.clone(),
                median_growth_ratio: median(&growth),
                median_a_after_bytes: med("A", |r| r.after_bytes as f64),
                median_b_after_bytes: med("B", |r| r.after_bytes as f64),
                median_a_ready_s: med("A", |r| r.ready_s),
                median_b_ready_s: med("B", |r| r.ready_s),
                median_a_stored_ratio: median(
                    &of("A")
                        .filter_map(|r| ratio(r.stored_after_bytes.map(|b| b as f64), Some(r.after_bytes as f64)))
                        .collect::<Vec<_>>(),
                ),
            }
        })
        .collect()
}

/// Every pair: `| filesystem | pair | A TPS | B TPS | A/B | A disk after | B disk after |`.
pub fn pairs_table(summaries: &[Summary]) -> Table {
    let mut t = Table::new([
        ("filesystem", Align::Left),
        ("pair", Align::Right),
        ("A TPS", Align::Right),
        ("A latency (ms)", Align::Right),
        ("B TPS", Align::Right),
        ("B latency (ms)", Align::Right),
        ("A/B TPS", Align::Right),
        ("A disk after the run", Align::Right),
        ("B disk after the run", Align::Right),
    ]);
    for x in summaries {
        let Some(rw) = &x.read_write else { continue };
        for p in &rw.pairs {
            let after =
                |side: &str| x.sides.iter().find(|r| r.pair == p.pair && r.side == side).map(|r| r.after_bytes as f64);
            t.row([
                x.fs.name().to_owned(),
                p.pair.to_string(),
                num(Some(p.a_tps), 1),
                num(p.a_latency_ms, 3),
                num(Some(p.b_tps), 1),
                num(p.b_latency_ms, 3),
                num(p.ratio, 3),
                bytes(after("A")),
                bytes(after("B")),
            ]);
        }
    }
    t
}

/// The headline per filesystem: `| filesystem | A | B | pairs | median TPS A/B | … |`.
pub fn table(summaries: &[Summary]) -> Table {
    let mut t = Table::new([
        ("filesystem", Align::Left),
        ("A", Align::Left),
        ("B", Align::Left),
        ("pairs", Align::Right),
        ("median read-write TPS A/B", Align::Right),
        ("median TPS A / B", Align::Right),
        ("median disk after the run A / B", Align::Right),
        ("median growth A/B", Align::Right),
        ("median ready A / B (s)", Align::Right),
        ("median A's stored_bytes / its disk", Align::Right),
    ]);
    for x in summaries {
        let rw = x.read_write.as_ref();
        t.row([
            x.fs.name().to_owned(),
            x.a.to_owned(),
            x.b.to_owned(),
            rw.map_or(0, |r| r.pairs.len()).to_string(),
            num(rw.and_then(|r| r.median_ratio), 3),
            format!("{} / {}", num(rw.and_then(|r| r.median_a_tps), 0), num(rw.and_then(|r| r.median_b_tps), 0)),
            format!("{} / {}", bytes(x.median_a_after_bytes), bytes(x.median_b_after_bytes)),
            num(x.median_growth_ratio, 3),
            format!("{} / {}", num(x.median_a_ready_s, 2), num(x.median_b_ready_s, 2)),
            num(x.median_a_stored_ratio, 3),
        ]);
    }
    t
}
