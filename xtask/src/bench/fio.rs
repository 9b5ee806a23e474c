//! fio: the file I/O workloads of the cowfs benchmark, one job at a time, and what fio's
//! JSON output says of each.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::Value;

use super::exec::{Cmd, Exec};

/// Whether a job runs through a warm page cache or after a drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Warm,
    Cold,
}

/// A workload.
#[derive(Debug, Clone)]
pub struct Workload {
    pub name: &'static str,
    pub options: Vec<String>,
    /// `MiB/s` or `IOPS`: the figure the table shows.
    pub metric: &'static str,
    pub description: String,
    pub kind: Kind,
}

impl Workload {
    /// Whether the job reads (else it writes).
    pub fn reads(&self) -> bool {
        self.options.iter().any(|o| o == "--rw=read" || o == "--rw=randread")
    }
}

/// The workloads: four warm ones, and two cold reads. Random writes call fdatasync every
/// `fsync_every` writes.
pub fn workloads(fsync_every: u32) -> Vec<Workload> {
    let w = |name, options: &[&str], metric, description: &str, kind| Workload {
        name,
        options: options.iter().map(|s| s.to_string()).collect(),
        metric,
        description: description.to_owned(),
        kind,
    };
    let fdatasync = format!("--fdatasync={fsync_every}");
    vec![
        w("seqread", &["--rw=read", "--bs=1M"], "MiB/s", "sequential read, 1 MiB blocks", Kind::Warm),
        w("randread", &["--rw=randread", "--bs=8k"], "IOPS", "random read, 8 KiB blocks", Kind::Warm),
        w(
            "seqwrite",
            &["--rw=write", "--bs=1M", "--end_fsync=1"],
            "MiB/s",
            "sequential overwrite, 1 MiB blocks, fsync at end",
            Kind::Warm,
        ),
        w(
            "randwrite",
            &["--rw=randwrite", "--bs=8k", &fdatasync, "--end_fsync=1"],
            "IOPS",
            &format!("random overwrite, 8 KiB blocks, fdatasync every {fsync_every} writes + fsync at end"),
            Kind::Warm,
        ),
        w(
            "seqread-cold",
            &["--rw=read", "--bs=1M"],
            "MiB/s",
            "sequential read, 1 MiB blocks, after drop_caches, one pass",
            Kind::Cold,
        ),
        w(
            "randread-cold",
            &["--rw=randread", "--bs=8k"],
            "IOPS",
            "random read, 8 KiB blocks, after drop_caches, no block read twice",
            Kind::Cold,
        ),
    ]
}

/// How every job runs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub fio: std::path::PathBuf,
    /// In fio's syntax, e.g. `1g`.
    pub size: String,
    pub runtime_s: u32,
    pub ramp_s: u32,
}

impl Settings {
    /// Options of every job.
    pub fn common(&self) -> Vec<String> {
        ["--ioengine=psync", "--direct=0", "--invalidate=0", "--fallocate=none", "--numjobs=1", "--iodepth=1"]
            .iter()
            .map(|s| s.to_string())
            .chain([format!("--size={}", self.size)])
            .collect()
    }

    /// Options of warm (time-based) or cold (one pass, capped) jobs.
    pub fn kind_options(&self, kind: Kind) -> Vec<String> {
        match kind {
            Kind::Warm => {
                vec![
                    "--time_based".into(),
                    format!("--runtime={}", self.runtime_s),
                    format!("--ramp_time={}", self.ramp_s),
                ]
            }
            Kind::Cold => vec![format!("--runtime={}", self.runtime_s)],
        }
    }

    /// The command line of `workload` on `file`, its JSON written to `output`.
    pub fn cmd(&self, workload: &Workload, file: &Path, output: &Path) -> Cmd {
        Cmd::new(&self.fio)
            .arg(format!("--name={}", workload.name))
            .arg(format!("--filename={}", file.display()))
            .args(self.common())
            .args(self.kind_options(workload.kind))
            .args(&workload.options)
            .args(["--output-format=json".to_owned(), format!("--output={}", output.display())])
            .timeout(std::time::Duration::from_secs(u64::from(self.runtime_s + self.ramp_s) * 4 + 600))
    }
}

/// What fio said of one job.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub workload: String,
    pub description: String,
    pub target: String,
    pub kind: Kind,
    pub metric: String,
    /// The figure of `metric`.
    pub value: f64,
    pub mib_s: f64,
    pub iops: f64,
    pub lat_us_mean: f64,
    pub io_mib: f64,
    pub runtime_ms: f64,
    /// Mean latency of fsync/fdatasync calls (0 when none).
    pub sync_lat_us_mean: f64,
    pub error: i64,
}

/// Runs one job and reads its JSON; fio's stderr goes to `stderr_log` (replaced).
pub fn run(
    exec: &Exec,
    settings: &Settings,
    workload: &Workload,
    target: &str,
    file: &Path,
    output: &Path,
    stderr_log: &Path,
) -> Result<Outcome> {
    exec.run_to(&settings.cmd(workload, file, output), stderr_log)
        .with_context(|| format!("fio {} on {target}", workload.name))?;
    let text = std::fs::read_to_string(output).with_context(|| format!("reading {}", output.display()))?;
    parse(&text, workload, target).with_context(|| format!("reading fio's JSON in {}", output.display()))
}

/// Reads fio's JSON output (fio may print warnings before the JSON).
pub fn parse(text: &str, workload: &Workload, target: &str) -> Result<Outcome> {
    let json: Value = serde_json::from_str(&text[text.find('{').context("no JSON")?..])?;
    let job = json.get("jobs").and_then(|j| j.get(0)).context("no jobs[0]")?;
    let side = job.get(if workload.reads() { "read" } else { "write" }).context("no read/write figures")?;
    let f = |v: &Value, path: &[&str]| path.iter().try_fold(v, |v, k| v.get(k)).and_then(Value::as_f64).unwrap_or(0.0);
    let mib_s = f(side, &["bw_bytes"]) / 1048576.0;
    let iops = f(side, &["iops"]);
    Ok(Outcome {
        workload: workload.name.to_owned(),
        description: workload.description.clone(),
        target: target.to_owned(),
        kind: workload.kind,
        metric: workload.metric.to_owned(),
        value: if workload.metric == "IOPS" { iops } else { mib_s },
        mib_s,
        iops,
        lat_us_mean: f(side, &["lat_ns", "mean"]) / 1000.0,
        io_mib: f(side, &["io_bytes"]) / 1048576.0,
        runtime_ms: f(side, &["runtime"]),
        sync_lat_us_mean: f(job, &["sync", "lat_ns", "mean"]) / 1000.0,
        error: job.get("error").and_then(Value::as_i64).unwrap_or(0),
    })
}

/// A size in fio's syntax (`64m`, `1g`, `4096`) in bytes.
pub fn size_bytes(size: &str) -> Option<u64> {
    let s = size.trim().to_ascii_lowercase();
    let (digits, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => s.split_at(i),
        None => (s.as_str(), ""),
    };
    let n: u64 = digits.parse().ok()?;
    let m = match unit {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        _ => return None,
    };
    Some(n * m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(size_bytes("64m"), Some(64 << 20));
        assert_eq!(size_bytes("1G"), Some(1 << 30));
        assert_eq!(size_bytes("1x"), None);
    }

    #[test]
    fn reads_fios_json() {
        let w = &workloads(32)[1];
        let text = r#"note: both iodepth >= 1 and synchronous I/O engine are selected
{"jobs":[{"error":0,"read":{"io_bytes":1048576,"bw_bytes":2097152,"iops":256.5,"runtime":500,
"lat_ns":{"mean":1500.0}},"write":{},"sync":{"lat_ns":{"mean":0}}}]}"#;
        let o = parse(text, w, "native").unwrap();
        assert_eq!((o.value, o.mib_s, o.lat_us_mean, o.io_mib), (256.5, 2.0, 1.5, 1.0));
    }
}
