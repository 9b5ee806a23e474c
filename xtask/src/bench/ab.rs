//! A/B comparisons of pgbench: the two sides run one at a time, alternating A B A B, so that
//! a slow minute of a shared machine hits both sides of a pair; each pair gives a ratio
//! A/B, and the headline is the median of those ratios.

use anyhow::Result;
use serde::Serialize;

use super::markdown::{num, Align, Table};
use super::pgbench::{Mode, Outcome};
use super::stats::{median, ratio};

/// One side of a comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    A,
    B,
}

impl Side {
    pub fn letter(self) -> &'static str {
        match self {
            Side::A => "A",
            Side::B => "B",
        }
    }
}

/// Calls `run(pair, side)` for pairs 1..=`pairs`, A before B in each.
pub fn alternate(pairs: u32, mut run: impl FnMut(u32, Side) -> Result<()>) -> Result<()> {
    for pair in 1..=pairs {
        for side in [Side::A, Side::B] {
            run(pair, side)?;
        }
    }
    Ok(())
}

/// One pair of runs and its ratio.
#[derive(Debug, Clone, Serialize)]
pub struct PairRow {
    pub pair: u32,
    pub a_tps: f64,
    pub b_tps: f64,
    /// A's TPS / B's.
    pub ratio: Option<f64>,
    pub a_latency_ms: Option<f64>,
    pub b_latency_ms: Option<f64>,
    pub a_failed: u64,
    pub b_failed: u64,
}

/// The pairs of one mode and their medians.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub pairs: Vec<PairRow>,
    pub median_ratio: Option<f64>,
    pub median_a_tps: Option<f64>,
    pub median_b_tps: Option<f64>,
    pub median_a_latency_ms: Option<f64>,
    pub median_b_latency_ms: Option<f64>,
}

/// The runs of a comparison, as they are made.
#[derive(Debug, Default, Clone)]
pub struct Runs {
    runs: Vec<(Mode, u32, Side, Outcome)>,
}

impl Runs {
    pub fn record(&mut self, mode: Mode, pair: u32, side: Side, outcome: Outcome) {
        self.runs.push((mode, pair, side, outcome));
    }

    /// The modes measured, in the order of [`Mode`].
    pub fn modes(&self) -> Vec<Mode> {
        let mut modes: Vec<Mode> = self.runs.iter().map(|r| r.0).collect();
        modes.sort();
        modes.dedup();
        modes
    }

    /// The pairs of `mode` that have both sides, and their medians.
    pub fn summary(&self, mode: Mode) -> Option<Summary> {
        let find = |pair, side| self.runs.iter().find(|r| r.0 == mode && r.1 == pair && r.2 == side).map(|r| r.3);
        let mut pair_numbers: Vec<u32> = self.runs.iter().filter(|r| r.0 == mode).map(|r| r.1).collect();
        pair_numbers.sort_unstable();
        pair_numbers.dedup();
        let pairs: Vec<PairRow> = pair_numbers
            .into_iter()
            .filter_map(|pair| {
                let (a, b) = (find(pair, Side::A)?, find(pair, Side::B)?);
                Some(PairRow {
                    pair,
                    a_tps: a.tps,
                    b_tps: b.tps,
                    ratio: ratio(Some(a.tps), Some(b.tps)),
                    a_latency_ms: a.latency_ms,
                    b_latency_ms: b.latency_ms,
                    a_failed: a.failed,
                    b_failed: b.failed,
                })
            })
            .collect();
        if pairs.is_empty() {
            return None;
        }
        let col = |f: fn(&PairRow) -> Option<f64>| median(&pairs.iter().filter_map(f).collect::<Vec<_>>());
        Some(Summary {
            median_ratio: col(|p| p.ratio),
            median_a_tps: col(|p| Some(p.a_tps)),
            median_b_tps: col(|p| Some(p.b_tps)),
            median_a_latency_ms: col(|p| p.a_latency_ms),
            median_b_latency_ms: col(|p| p.b_latency_ms),
            pairs,
        })
    }
}

/// The table of every pair: `| pair | mode | A … TPS | A latency (ms) | B … TPS | B latency
/// (ms) | A/B |`, one mode after the other.
pub fn pairs_table(summaries: &[(Mode, &Summary)], a_name: &str, b_name: &str) -> Table {
    let mut t = Table::new([
        ("pair".to_owned(), Align::Right),
        ("mode".to_owned(), Align::Left),
        (format!("A {a_name} TPS"), Align::Right),
        ("A latency (ms)".to_owned(), Align::Right),
        (format!("B {b_name} TPS"), Align::Right),
        ("B latency (ms)".to_owned(), Align::Right),
        ("A/B".to_owned(), Align::Right),
    ]);
    for (mode, s) in summaries {
        for p in &s.pairs {
            t.row([
                p.pair.to_string(),
                mode.label(),
                num(Some(p.a_tps), 1),
                num(p.a_latency_ms, 3),
                num(Some(p.b_tps), 1),
                num(p.b_latency_ms, 3),
                num(p.ratio, 3),
            ]);
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(tps: f64) -> Outcome {
        Outcome { tps, latency_ms: Some(4.0 / tps), transactions: None, failed: 0 }
    }

    #[test]
    fn the_headline_is_the_median_of_pair_ratios() {
        let mut runs = Runs::default();
        let mut order = Vec::new();
        alternate(3, |pair, side| {
            order.push(format!("{pair}{}", side.letter()));
            let tps = match (pair, side) {
                (1, Side::A) => 80.0,
                (2, Side::A) => 50.0,
                (3, Side::A) => 95.0,
                _ => 100.0,
            };
            runs.record(Mode::ReadWrite, pair, side, o(tps));
            Ok(())
        })
        .unwrap();
        assert_eq!(order, ["1A", "1B", "2A", "2B", "3A", "3B"]);
        let s = runs.summary(Mode::ReadWrite).unwrap();
        assert_eq!(s.pairs.len(), 3);
        assert_eq!(s.median_ratio, Some(0.8));
        assert!(runs.summary(Mode::SelectOnly).is_none());
        let table = pairs_table(&[(Mode::ReadWrite, &s)], "cowfs", "copy").render();
        assert!(table.contains("| 1 | read-write | 80 | 0.05 | 100 | 0.04 | 0.8 |"), "{table}");
    }
}
