//! pgbench: timed runs against a database, and what they report (TPS, mean latency,
//! transactions, failures).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use super::exec::{Cmd, Exec};
use super::pg::Conn;

/// How pgbench is run: its path, clients and threads.
#[derive(Debug, Clone)]
pub struct Pgbench {
    pub bin: PathBuf,
    pub clients: u32,
    pub threads: u32,
}

/// What one pgbench run reported.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Outcome {
    pub tps: f64,
    pub latency_ms: Option<f64>,
    pub transactions: Option<u64>,
    pub failed: u64,
}

/// A pgbench workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mode {
    /// The default TPC-B-like script.
    ReadWrite,
    /// `-S`.
    SelectOnly,
    /// `-S` after the page cache was dropped.
    SelectOnlyCold,
}

impl Mode {
    /// The key in JSON: `read_write`, `select_only`, `select_only_cold`.
    pub fn key(self) -> &'static str {
        match self {
            Mode::ReadWrite => "read_write",
            Mode::SelectOnly => "select_only",
            Mode::SelectOnlyCold => "select_only_cold",
        }
    }

    /// The name in tables: `read-write`, `select-only`, `select-only-cold`.
    pub fn label(self) -> String {
        self.key().replace('_', "-")
    }

    fn args(self) -> &'static [&'static str] {
        match self {
            Mode::ReadWrite => &[],
            Mode::SelectOnly | Mode::SelectOnlyCold => &["-S"],
        }
    }
}

impl Pgbench {
    /// The command line of a `seconds`-long run of `mode` on `conn`.
    pub fn cmd(&self, conn: &Conn, mode: Mode, seconds: u32) -> Cmd {
        let cmd = Cmd::new(&self.bin)
            .args(["-c", &self.clients.to_string(), "-j", &self.threads.to_string()])
            .args(mode.args())
            .args(["-T", &seconds.to_string()])
            .timeout(std::time::Duration::from_secs(u64::from(seconds) * 3 + 600));
        conn.apply_last(cmd)
    }

    /// Runs `mode` for `seconds` on `conn`, its output in `log`, and returns what it reported.
    pub fn run(&self, exec: &Exec, conn: &Conn, mode: Mode, seconds: u32, log: &Path) -> Result<Outcome> {
        exec.run_to(&self.cmd(conn, mode, seconds), log).context("pgbench")?;
        let text = std::fs::read_to_string(log)?;
        parse(&text).with_context(|| format!("reading pgbench's report in {}", log.display()))
    }
}

/// Reads pgbench's report.
pub fn parse(text: &str) -> Result<Outcome> {
    let after = |prefix: &str| text.lines().find_map(|l| l.strip_prefix(prefix)).map(str::trim);
    let first_number = |s: &str| s.split(|c: char| c.is_whitespace() || c == '/').next().and_then(|n| n.parse().ok());
    let tps = after("tps = ").and_then(first_number).context("no `tps = ` line")?;
    Ok(Outcome {
        tps,
        latency_ms: after("latency average = ").and_then(first_number),
        transactions: after("number of transactions actually processed:").and_then(first_number).map(|n: f64| n as u64),
        failed: after("number of failed transactions:").and_then(first_number).map_or(0, |n: f64| n as u64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_report_of_pgbench_15() {
        let report = "pgbench (15.18 (Debian 15.18-0+deb12u1))\nstarting vacuum...end.\n\
            transaction type: <builtin: TPC-B (sort of)>\nscaling factor: 2\nquery mode: simple\n\
            number of clients: 4\nnumber of threads: 2\nmaximum number of tries: 1\nduration: 3 s\n\
            number of transactions actually processed: 10035\n\
            number of failed transactions: 0 (0.000%)\nlatency average = 1.193 ms\n\
            initial connection time = 6.120 ms\ntps = 3353.012345 (without initial connection time)\n";
        let o = parse(report).unwrap();
        assert_eq!(o, Outcome { tps: 3353.012345, latency_ms: Some(1.193), transactions: Some(10035), failed: 0 });
        assert!(parse("pgbench: error: connection refused").is_err());
    }
}
