//! Item 1: time to a ready clone. Every method makes a clone of the scale's image, one
//! clone at a time, the methods interleaved run by run; the time runs from the command to
//! the first successful `SELECT 1`. The disk each clone adds right after creation is item
//! 2's first table.

use anyhow::Result;
use serde::Serialize;

use super::methods::{self, CloneMethod};
use super::report::ReadyRun;
use super::Suite;
use crate::bench::exec;
use crate::bench::markdown::{bytes, num, Align, Table};
use crate::bench::progress::log;
use crate::bench::stats::{ratio, Stats};

pub fn run(s: &mut Suite, scale: u32) -> Result<()> {
    let chosen: Vec<Box<dyn CloneMethod>> = s.p.methods.iter().filter_map(|k| methods::by_key(k)).collect();
    for r in 1..=s.p.repeats {
        for m in &chosen {
            exec::check_interrupted()?;
            let name = format!("r{scale}_{}_{r}", m.key().replace('_', ""));
            let made = m.make(s, scale, &name)?;
            let disk = made.disk_bytes(s)?;
            log(&format!(
                "  scale {scale} run {r} {}: ready in {} s, adds {}",
                m.key(),
                made.ready_s,
                bytes(Some(disk as f64))
            ));
            s.results.ready.push(ReadyRun {
                scale,
                method: m.key(),
                run: r,
                seconds: made.ready_s,
                disk_bytes: disk,
                stored_bytes: made.stored_bytes,
            });
            made.remove(s)?;
        }
    }
    Ok(())
}

/// A method at a scale: its runs' times and disk.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub method: &'static str,
    pub scale: u32,
    pub seconds: Stats,
    pub disk_bytes: Stats,
    /// The daemon's `stored_bytes` of the fresh clones, when it had measured them.
    pub stored_bytes: Option<Stats>,
    /// The `cp_start` median at this scale over this method's.
    pub speedup_vs_cp_start: Option<f64>,
}

/// How a method's time grows with the data: the largest scale's median over the smallest's.
#[derive(Debug, Clone, Serialize)]
pub struct Flatness {
    pub method: &'static str,
    pub small_scale: u32,
    pub large_scale: u32,
    pub small_s: f64,
    pub large_s: f64,
    pub flatness: Option<f64>,
}

pub fn summaries(runs: &[ReadyRun], methods: &[&'static str], scales: &[u32]) -> Vec<Summary> {
    let mut out: Vec<Summary> = Vec::new();
    for &m in methods {
        for &scale in scales {
            let these: Vec<&ReadyRun> = runs.iter().filter(|r| r.method == m && r.scale == scale).collect();
            let stats = |f: &dyn Fn(&ReadyRun) -> Option<f64>| {
                Stats::of(&these.iter().filter_map(|r| f(r)).collect::<Vec<_>>())
            };
            let (Some(seconds), Some(disk_bytes)) =
                (stats(&|r| Some(r.seconds)), stats(&|r| Some(r.disk_bytes as f64)))
            else {
                continue;
            };
            out.push(Summary {
                method: m,
                scale,
                seconds,
                disk_bytes,
                stored_bytes: stats(&|r| r.stored_bytes.map(|b| b as f64)),
                speedup_vs_cp_start: None,
            });
        }
    }
    let cp: Vec<(u32, f64)> =
        out.iter().filter(|x| x.method == "cp_start").map(|x| (x.scale, x.seconds.median)).collect();
    for x in &mut out {
        let base = cp.iter().find(|(s, _)| *s == x.scale).map(|(_, t)| *t);
        x.speedup_vs_cp_start = ratio(base, Some(x.seconds.median));
    }
    out
}

pub fn flatness(summaries: &[Summary], methods: &[&'static str]) -> Vec<Flatness> {
    methods
        .iter()
        .filter_map(|&m| {
            let these: Vec<&Summary> = summaries.iter().filter(|x| x.method == m).collect();
            let (small, large) = (these.first()?, these.last()?);
            (these.len() > 1).then(|| Flatness {
                method: m,
                small_scale: small.scale,
                large_scale: large.scale,
                small_s: small.seconds.median,
                large_s: large.seconds.median,
                flatness: ratio(Some(large.seconds.median), Some(small.seconds.median)),
            })
        })
        .collect()
}

/// `| method | scale S (s) … | flatness | × cp -a |`: median (min–max) per scale.
pub fn time_table(summaries: &[Summary], flat: &[Flatness], methods: &[&'static str], scales: &[u32]) -> Table {
    let mut columns = vec![("method".to_owned(), Align::Left)];
    columns.extend(scales.iter().map(|s| (format!("scale {s} (s)"), Align::Right)));
    columns.extend([("flatness".to_owned(), Align::Right), ("× cp -a".to_owned(), Align::Right)]);
    let mut t = Table::new(columns);
    for &m in methods {
        let these: Vec<&Summary> = summaries.iter().filter(|x| x.method == m).collect();
        let Some(largest) = these.last() else { continue };
        let mut row = vec![label(m)];
        for &scale in scales {
            row.push(match these.iter().find(|x| x.scale == scale) {
                Some(x) => format!(
                    "{} ({}–{})",
                    num(Some(x.seconds.median), 2),
                    num(Some(x.seconds.min), 2),
                    num(Some(x.seconds.max), 2)
                ),
                None => "n/a".to_owned(),
            });
        }
        row.push(num(flat.iter().find(|f| f.method == m).and_then(|f| f.flatness), 2));
        row.push(num(largest.speedup_vs_cp_start, 1));
        t.row(row);
    }
    t
}

/// `| method | what is counted | scale S … |`: the median disk right after creation.
pub fn disk_table(summaries: &[Summary], methods: &[&'static str], scales: &[u32]) -> Table {
    let mut columns = vec![("method".to_owned(), Align::Left), ("what is counted".to_owned(), Align::Left)];
    columns.extend(scales.iter().map(|s| (format!("scale {s}"), Align::Right)));
    let mut t = Table::new(columns);
    for &m in methods {
        let these: Vec<&Summary> = summaries.iter().filter(|x| x.method == m).collect();
        if these.is_empty() {
            continue;
        }
        let mut row = vec![label(m), methods::by_key(m).map_or_else(String::new, |x| x.disk_what().to_owned())];
        for &scale in scales {
            row.push(bytes(these.iter().find(|x| x.scale == scale).map(|x| x.disk_bytes.median)));
        }
        t.row(row);
    }
    t
}

/// A method's label, by key.
pub fn label(key: &str) -> String {
    methods::by_key(key).map_or_else(|| key.to_owned(), |m| m.label().to_owned())
}
