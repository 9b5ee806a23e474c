//! Item 2: disk per clone after use. At one scale, a clone of each kind runs pgbench
//! read-write for a while and a `CHECKPOINT`; the disk it adds is counted before and after,
//! and for thinclone clones the daemon's own `stored_bytes` is read as well. The peers
//! (overlayfs, btrfs snapshot, PostgreSQL 18's clone strategy) follow, when `--methods`
//! names them.

use anyhow::Result;
use serde::Serialize;

use super::methods::{self, CloneMethod};
use super::ready::label;
use super::report::DiskRun;
use super::Suite;
use crate::bench::markdown::{bytes, num, Align, Table};
use crate::bench::pgbench::Mode;
use crate::bench::progress::log;
use crate::bench::stats::ratio;

/// The methods item 2 always weighs, in order; the chosen peers follow.
pub const BASE: [&str; 4] = ["cowfs", "reflink", "copy", "createdb"];

/// The methods item 2 weighs in this run.
pub fn methods_of(p: &super::Params) -> Vec<&'static str> {
    BASE.into_iter().chain(super::peers::KEYS.into_iter().filter(|k| p.methods.contains(k))).collect()
}

pub fn run(s: &mut Suite, scale: u32) -> Result<()> {
    for key in methods_of(&s.p) {
        let m: Box<dyn CloneMethod> = methods::by_key(key).expect("a known method");
        let made = m.make(s, scale, &format!("d{scale}_{key}"))?;
        let created = made.disk_bytes(s)?;
        let o = s.pgbench.run(
            &s.run.exec,
            &made.conn,
            Mode::ReadWrite,
            s.p.disk_duration,
            &s.run.logs.join(format!("pgbench-disk-{key}.log")),
        )?;
        s.psql(&made.conn, "checkpoint")?;
        let checkpointed = api::Timestamp::now();
        let after = made.disk_bytes(s)?;
        // The daemon's own figure (for reflink: FIEMAP exclusive bytes), measured after the
        // checkpoint.
        let stored_after = made.stored_bytes_after(s, checkpointed)?;
        log(&format!(
            "  {key}: {} after creation, {} after {} s of pgbench ({} tps) and a checkpoint",
            bytes(Some(created as f64)),
            bytes(Some(after as f64)),
            s.p.disk_duration,
            num(Some(o.tps), 0)
        ));
        s.results.disk.push(DiskRun {
            scale,
            method: key,
            created_bytes: created,
            after_bytes: after,
            stored_bytes_created: made.stored_bytes,
            stored_bytes_after: stored_after,
            tps: o.tps,
            latency_ms: o.latency_ms,
        });
        made.remove(s)?;
        // Give the loop file's freed blocks back to the filesystem underneath.
        match key {
            "reflink" | "pg18_clone" => s.xfs()?.fs.trim(),
            "btrfs_snapshot" => s.btrfs()?.fs.trim(),
            _ => {}
        }
    }
    Ok(())
}

/// A run with its ratios to the copy's.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    #[serde(flatten)]
    pub run: DiskRun,
    pub ratio_to_copy_created: Option<f64>,
    pub ratio_to_copy_after: Option<f64>,
}

pub fn rows(runs: &[DiskRun]) -> Vec<Row> {
    let copy = runs.iter().find(|r| r.method == "copy");
    runs.iter()
        .map(|r| Row {
            run: r.clone(),
            ratio_to_copy_created: ratio(Some(r.created_bytes as f64), copy.map(|c| c.created_bytes as f64)),
            ratio_to_copy_after: ratio(Some(r.after_bytes as f64), copy.map(|c| c.after_bytes as f64)),
        })
        .collect()
}

pub fn table(rows: &[Row]) -> Table {
    let mut t = Table::new([
        ("method", Align::Left),
        ("what is counted", Align::Left),
        ("after creation", Align::Right),
        ("after the run", Align::Right),
        ("after the run / copy", Align::Right),
        ("daemon's stored_bytes after the run", Align::Right),
        ("TPS of the run", Align::Right),
    ]);
    for r in rows {
        t.row([
            label(r.run.method),
            methods::by_key(r.run.method).map_or_else(String::new, |m| m.disk_what().to_owned()),
            bytes(Some(r.run.created_bytes as f64)),
            bytes(Some(r.run.after_bytes as f64)),
            num(r.ratio_to_copy_after, 3),
            bytes(r.run.stored_bytes_after.map(|b| b as f64)),
            num(Some(r.run.tps), 0),
        ]);
    }
    t
}
