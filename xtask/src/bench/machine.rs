//! The facts of the machine and the software a run measured, gathered once per run and
//! written the same way by every benchmark: as the "Machine" table at the head of its
//! BENCHMARKS.md section and as the `machine` and `versions` objects of its JSON file.

use std::path::Path;

use serde::Serialize;

use super::exec::{Cmd, Exec};
use super::host;
use super::markdown::{Align, Table};

/// The machine.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub mem_total_kib: u64,
    pub kernel: String,
    pub cpu: String,
    pub os: String,
    pub workdir: String,
    pub workdir_fs: String,
    pub workdir_device: String,
    pub workdir_mount_options: String,
}

/// The software measured and measuring.
#[derive(Debug, Clone, Serialize)]
pub struct Versions {
    /// The short commit, with " (with uncommitted changes)" when the tree differs from it.
    pub thinclone_git: String,
    /// `thinclone --version`.
    pub thinclone: String,
    /// `postgres --version`.
    pub postgres: String,
    /// `fio --version`, when the run used fio.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fio: Option<String>,
}

/// Everything above, and when.
#[derive(Debug, Clone)]
pub struct Facts {
    pub machine: Machine,
    pub versions: Versions,
    /// RFC 3339, UTC.
    pub date: String,
}

impl Facts {
    /// Gathers the facts: `thinclone` and `postgres` are the binaries measured; `fio` is given
    /// when the run uses it.
    pub fn gather(
        exec: &Exec,
        workdir: &Path,
        repo: &Path,
        thinclone: &Path,
        postgres: &Path,
        fio: Option<&Path>,
    ) -> Facts {
        let version = |cmd: Cmd| exec.stdout(&cmd).ok().and_then(|s| s.lines().next().map(str::to_owned));
        let unknown = || "unknown".to_owned();
        let mount = mount_of(workdir);
        let machine = Machine {
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            mem_total_kib: host::meminfo_kib("MemTotal:"),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map_or_else(|_| unknown(), |s| s.trim().to_owned()),
            cpu: std::fs::read_to_string("/proc/cpuinfo")
                .ok()
                .and_then(|t| {
                    t.lines().find_map(|l| Some(l.strip_prefix("model name")?.split_once(':')?.1.trim().to_owned()))
                })
                .unwrap_or_default(),
            os: std::fs::read_to_string("/etc/os-release")
                .ok()
                .and_then(|t| {
                    t.lines().find_map(|l| Some(l.strip_prefix("PRETTY_NAME=")?.trim_matches('"').to_owned()))
                })
                .unwrap_or_else(unknown),
            workdir: workdir.display().to_string(),
            workdir_fs: mount.as_ref().map_or_else(unknown, |m| m.fs_type.clone()),
            workdir_device: mount.as_ref().map_or_else(unknown, |m| m.source.clone()),
            workdir_mount_options: mount.as_ref().map_or_else(unknown, |m| m.options.clone()),
        };
        let git = |args: &[&str]| exec.stdout(&Cmd::new("git").arg("-C").arg(repo).args(args)).ok();
        let mut thinclone_git = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(unknown);
        if git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty()) {
            thinclone_git.push_str(" (with uncommitted changes)");
        }
        let versions = Versions {
            thinclone_git,
            thinclone: version(Cmd::new(thinclone).arg("--version")).unwrap_or_else(unknown),
            postgres: version(Cmd::new(postgres).arg("--version")).unwrap_or_else(unknown),
            fio: fio.map(|f| version(Cmd::new(f).arg("--version")).unwrap_or_else(unknown)),
        };
        Facts { machine, versions, date: api::Timestamp::now().to_string() }
    }

    /// The "Machine" table, with `extra` rows (sizes, parameters) after the common ones.
    pub fn markdown(&self, extra: &[(String, String)]) -> String {
        let m = &self.machine;
        let v = &self.versions;
        let mut t = Table::new([("", Align::Left), ("", Align::Left)]);
        t.row(["CPUs (nproc)".to_owned(), format!("{} ({})", m.nproc, m.cpu)]);
        t.row(["memory".to_owned(), format!("{:.1} GiB", m.mem_total_kib as f64 / 1048576.0)]);
        t.row(["kernel", &m.kernel]);
        t.row(["OS", &m.os]);
        t.row([
            "workdir filesystem".to_owned(),
            format!(
                "{} on {} (`{}`, options `{}`)",
                m.workdir_fs, m.workdir_device, m.workdir, m.workdir_mount_options
            ),
        ]);
        t.row(["thinclone".to_owned(), format!("{}, git {}, release build", v.thinclone, v.thinclone_git)]);
        if let Some(fio) = &v.fio {
            t.row(["fio", fio]);
        }
        t.row(["PostgreSQL", &v.postgres]);
        t.row(["date", &self.date]);
        for (k, val) in extra {
            t.row([k, val]);
        }
        t.render()
    }
}

impl Facts {
    /// The type of the filesystem that holds `path` (`ext4`, `xfs`, …).
    pub fn fs_type(path: &Path) -> String {
        mount_of(path).map_or_else(|| "unknown".to_owned(), |m| m.fs_type)
    }
}

/// The mount that holds a path.
struct Mount {
    fs_type: String,
    source: String,
    options: String,
}

/// The filesystem of the longest mount point that is a prefix of `path` (as `findmnt -T`),
/// from `/proc/self/mountinfo`: its fields are `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS
/// [OPTIONAL…] - FSTYPE SOURCE SUPEROPTIONS`.
fn mount_of(path: &Path) -> Option<Mount> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut best: Option<(usize, Mount)> = None;
    for line in text.lines() {
        let Some((point, mount)) = parse_mountinfo_line(line) else { continue };
        let depth = point.components().count();
        if path.starts_with(&point) && best.as_ref().is_none_or(|(d, _)| depth >= *d) {
            best = Some((depth, mount));
        }
    }
    best.map(|(_, m)| m)
}

fn parse_mountinfo_line(line: &str) -> Option<(std::path::PathBuf, Mount)> {
    let (left, right) = line.split_once(" - ")?;
    let left: Vec<&str> = left.split(' ').collect();
    let right: Vec<&str> = right.split(' ').collect();
    let point = std::path::PathBuf::from(left.get(4)?.replace("\\040", " "));
    let mount = Mount {
        fs_type: right.first()?.to_string(),
        source: right.get(1)?.to_string(),
        // findmnt shows the mount's options joined with the superblock's.
        options: join_options(left.get(5)?, right.get(2).copied().unwrap_or("")),
    };
    Some((point, mount))
}

fn join_options(mount: &str, sb: &str) -> String {
    let mut all: Vec<&str> = mount.split(',').collect();
    for o in sb.split(',') {
        if !o.is_empty() && !all.contains(&o) {
            all.push(o);
        }
    }
    all.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_filesystem_is_found() {
        let m = mount_of(Path::new("/")).unwrap();
        assert!(!m.fs_type.is_empty() && !m.options.is_empty());
        assert_eq!(join_options("rw,relatime", "rw,discard"), "rw,relatime,discard");
    }
}
