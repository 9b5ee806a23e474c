//! sysbench's OLTP workloads against MariaDB: `prepare` of the `sbtest` tables, timed
//! `oltp_read_write` and `oltp_read_only` runs, and what they report (TPS, QPS, latency,
//! ignored errors).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;

use super::server::Target;
use crate::bench::exec::{Cmd, Exec};

/// The database sysbench's tables are in.
pub const DATABASE: &str = "sbtest";

/// How sysbench is run: its path, the tables and the threads.
#[derive(Debug, Clone)]
pub struct Sysbench {
    pub bin: PathBuf,
    pub tables: u32,
    pub table_size: u64,
    pub threads: u32,
}

/// A sysbench workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    ReadWrite,
    ReadOnly,
}

impl Workload {
    pub const ALL: [Workload; 2] = [Workload::ReadWrite, Workload::ReadOnly];

    /// sysbench's test: `oltp_read_write`, `oltp_read_only`.
    pub fn test(self) -> &'static str {
        match self {
            Workload::ReadWrite => "oltp_read_write",
            Workload::ReadOnly => "oltp_read_only",
        }
    }

    /// The key in JSON: `read_write`, `read_only`.
    pub fn key(self) -> &'static str {
        &self.test()["oltp_".len()..]
    }

    /// The name in tables: `read-write`, `read-only`.
    pub fn label(self) -> String {
        self.key().replace('_', "-")
    }
}

/// Where sysbench connects.
#[derive(Debug, Clone)]
pub enum Conn {
    /// A server's socket, as root (the `unix_socket` login).
    Socket(PathBuf),
    /// A clone's URL, its password in the environment (never logged).
    Tcp(Target),
}

impl Sysbench {
    fn cmd(&self, test: &str, conn: &Conn) -> Cmd {
        let cmd = Cmd::new(&self.bin).arg(test).arg("--db-driver=mysql");
        let cmd = match conn {
            Conn::Socket(socket) => cmd.arg(format!("--mysql-socket={}", socket.display())).arg("--mysql-user=root"),
            Conn::Tcp(t) => cmd
                .arg(format!("--mysql-host={}", t.host))
                .arg(format!("--mysql-port={}", t.port))
                .arg(format!("--mysql-user={}", t.user))
                .env("MYSQL_PWD", &t.password),
        };
        cmd.arg(format!("--mysql-db={DATABASE}"))
            .arg(format!("--tables={}", self.tables))
            .arg(format!("--table-size={}", self.table_size))
    }

    /// `prepare`: the tables, their rows and secondary indexes, a table per thread at a time.
    pub fn prepare_cmd(&self, conn: &Conn) -> Cmd {
        self.cmd(Workload::ReadWrite.test(), conn)
            .arg(format!("--threads={}", self.threads.min(self.tables)))
            .arg("prepare")
            .timeout(Duration::from_secs(6 * 3600))
    }

    /// The command line of a `seconds`-long run of `workload`.
    pub fn run_cmd(&self, workload: Workload, conn: &Conn, seconds: u32) -> Cmd {
        self.cmd(workload.test(), conn)
            .arg(format!("--threads={}", self.threads))
            .arg(format!("--time={seconds}"))
            .args(["--events=0", "--report-interval=0", "--percentile=95", "run"])
            .timeout(Duration::from_secs(u64::from(seconds) * 3 + 600))
    }

    /// Runs `workload` for `seconds`, its output in `log`, and returns what it reported.
    pub fn run(&self, exec: &Exec, workload: Workload, conn: &Conn, seconds: u32, log: &Path) -> Result<Outcome> {
        exec.run_to(&self.run_cmd(workload, conn, seconds), log).context("sysbench")?;
        let text = std::fs::read_to_string(log)?;
        parse(&text).with_context(|| format!("reading sysbench's report in {}", log.display()))
    }
}

/// What one sysbench run reported.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Outcome {
    /// Transactions per second.
    pub tps: f64,
    /// Queries per second.
    pub qps: f64,
    pub latency_avg_ms: f64,
    pub latency_p95_ms: f64,
    pub transactions: u64,
    /// Errors sysbench ignores and retries (deadlocks, lock wait timeouts).
    pub ignored_errors: u64,
    pub seconds: f64,
}

/// Reads sysbench 1.0's report.
pub fn parse(text: &str) -> Result<Outcome> {
    let line = |label: &str| text.lines().find_map(|l| l.trim_start().strip_prefix(label)).map(str::trim);
    let number = |s: &str| s.trim_end_matches('s').parse::<f64>().ok();
    // `transactions:    3701   (1229.12 per sec.)`: the count, and the rate in brackets.
    let counted = |label: &str| -> Option<(f64, f64)> {
        let rest = line(label)?;
        let (count, rate) = rest.split_once('(')?;
        Some((number(count.trim())?, number(rate.split_whitespace().next()?)?))
    };
    let (transactions, tps) = counted("transactions:").context("no `transactions:` line")?;
    let (_, qps) = counted("queries:").context("no `queries:` line")?;
    let ignored = counted("ignored errors:").map_or(0.0, |(n, _)| n);
    Ok(Outcome {
        tps,
        qps,
        latency_avg_ms: line("avg:").and_then(number).context("no latency `avg:` line")?,
        latency_p95_ms: line("95th percentile:").and_then(number).context("no `95th percentile:` line")?,
        transactions: transactions as u64,
        ignored_errors: ignored as u64,
        seconds: line("total time:").and_then(number).context("no `total time:` line")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_report_of_sysbench_1_0_20() {
        let report = "sysbench 1.0.20 (using system LuaJIT 2.1.0-beta3)\n\nRunning the test with following options:\n\
            Number of threads: 4\n\nThreads started!\n\nSQL statistics:\n    queries performed:\n\
            \x20       read:                            51940\n        write:                           14818\n\
            \x20       other:                           7411\n        total:                           74169\n\
            \x20   transactions:                        3701   (1229.12 per sec.)\n\
            \x20   queries:                             74169  (24631.94 per sec.)\n\
            \x20   ignored errors:                      9      (2.99 per sec.)\n\
            \x20   reconnects:                          0      (0.00 per sec.)\n\nGeneral statistics:\n\
            \x20   total time:                          3.0069s\n    total number of events:              3701\n\n\
            Latency (ms):\n         min:                                    0.62\n\
            \x20        avg:                                    3.24\n         max:                                  113.47\n\
            \x20        95th percentile:                        8.43\n         sum:                                11998.95\n";
        let o = parse(report).unwrap();
        assert_eq!(
            o,
            Outcome {
                tps: 1229.12,
                qps: 24631.94,
                latency_avg_ms: 3.24,
                latency_p95_ms: 8.43,
                transactions: 3701,
                ignored_errors: 9,
                seconds: 3.0069
            }
        );
        assert!(parse("FATAL: unable to connect to MySQL server").is_err());
        assert_eq!(Workload::ReadOnly.key(), "read_only");
        assert_eq!(Workload::ReadWrite.label(), "read-write");
    }

    #[test]
    fn a_clone_password_is_not_on_the_command_line() {
        let s = Sysbench { bin: "/usr/bin/sysbench".into(), tables: 4, table_size: 1000, threads: 4 };
        let t = Target { host: "127.0.0.1".into(), port: 57100, user: "root".into(), password: "secret".into() };
        let line = s.run_cmd(Workload::ReadOnly, &Conn::Tcp(t), 30).line();
        assert!(!line.contains("secret"), "{line}");
        assert!(
            line.starts_with("/usr/bin/sysbench oltp_read_only --db-driver=mysql --mysql-host=127.0.0.1"),
            "{line}"
        );
        assert!(line.ends_with("--threads=4 --time=30 --events=0 --report-interval=0 --percentile=95 run"), "{line}");
    }
}
