//! The host as the benchmarks see it: disk use (`du -x`, `df`), the page cache, mount points,
//! listening ports, memory of processes, missing tools, XFS with reflink and btrfs on a
//! loop device, and overlayfs mounts.

use std::collections::HashSet;
use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::exec::{Cmd, Exec};
use super::progress::{log, warn};

/// The directories `sys::Program` looks for programs in.
const CLEAN_PATH: [&str; 6] = ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"];

/// Bytes allocated on disk for everything under `paths`, counted as `du -s -x` does: each
/// inode once, and without crossing into other filesystems (a clone's FUSE mount inside its
/// directory is not walked). Entries that vanish during the walk are skipped.
pub fn du_bytes(paths: &[&Path]) -> u64 {
    let mut seen = HashSet::new();
    let mut total = 0;
    for root in paths {
        let Ok(meta) = fs::symlink_metadata(root) else { continue };
        let dev = meta.dev();
        let mut todo = vec![(root.to_path_buf(), meta)];
        while let Some((path, meta)) = todo.pop() {
            if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
                continue;
            }
            total += meta.blocks() * 512;
            if meta.is_dir() && meta.dev() == dev {
                let Ok(entries) = fs::read_dir(&path) else { continue };
                for entry in entries.flatten() {
                    if let Ok(m) = entry.metadata() {
                        if m.dev() == dev {
                            todo.push((entry.path(), m));
                        }
                    }
                }
            }
        }
    }
    total
}

/// Bytes in use on the filesystem holding `path` (as `df` counts them: all blocks less the
/// free ones), after a sync of that filesystem.
pub fn fs_used_bytes(path: &Path) -> Result<u64> {
    syncfs(path)?;
    let dir = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: fstatvfs fills the struct we pass for a descriptor we own.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatvfs(dir.as_raw_fd(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error()).context("statvfs");
    }
    Ok((st.f_blocks - st.f_bfree) as u64 * st.f_frsize as u64)
}

/// `sync` of every filesystem.
pub fn sync_all() {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
}

/// Drops the page cache (`sync; echo 3 > /proc/sys/vm/drop_caches`).
pub fn drop_caches() -> Result<()> {
    sync_all();
    fs::write("/proc/sys/vm/drop_caches", "3").context("writing /proc/sys/vm/drop_caches")
}

/// Whether the page cache can be dropped here (not in some containers); tries once.
pub fn can_drop_caches() -> bool {
    drop_caches().is_ok()
}

/// Every mount point of this mount namespace, from `/proc/self/mountinfo`.
pub fn mount_points() -> Vec<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines().filter_map(|l| l.split(' ').nth(4)).map(|p| PathBuf::from(unescape_mount_path(p))).collect()
}

/// mountinfo writes space, tab, newline and backslash as octal escapes (`\040`).
fn unescape_mount_path(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn is_mount_point(path: &Path) -> bool {
    mount_points().iter().any(|m| m == path)
}

/// Mount points at or below `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = mount_points().into_iter().filter(|m| m.starts_with(dir)).collect();
    found.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    found.dedup();
    found
}

/// TCP ports in `first..=last` that something listens on.
pub fn listening_ports(first: u16, last: u16) -> Vec<u16> {
    let mut ports: Vec<u16> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| fs::read_to_string(f).ok())
        .flat_map(|text| {
            text.lines()
                .skip(1)
                .filter_map(|l| {
                    let fields: Vec<&str> = l.split_whitespace().collect();
                    // local_address is HEXIP:HEXPORT; state 0A is LISTEN.
                    (fields.get(3) == Some(&"0A")).then_some(())?;
                    u16::from_str_radix(fields.get(1)?.rsplit(':').next()?, 16).ok()
                })
                .collect::<Vec<_>>()
        })
        .filter(|p| (first..=last).contains(p))
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// Bytes free for an unprivileged writer on the filesystem of `path`.
pub fn free_bytes(path: &Path) -> Result<u64> {
    sys::space::free_bytes(path).with_context(|| format!("free space of {}", path.display()))
}

/// The path of a program in the clean `PATH` that `sys::Program` uses.
pub fn find_program(name: &str) -> Option<PathBuf> {
    CLEAN_PATH.iter().map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

/// Installs the Debian package `package` with apt-get when `program` is missing.
pub fn need_program(exec: &Exec, program: &str, package: &str) -> Result<PathBuf> {
    if let Some(path) = find_program(program) {
        return Ok(path);
    }
    log(&format!("{program} not found; installing Debian package {package}"));
    let Some(apt) = find_program("apt-get") else { bail!("{program} is missing and apt-get is not available") };
    let install = Cmd::new(&apt)
        .args(["install", "-y", "-qq", package])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .timeout(Duration::from_secs(900));
    if exec.run(&install).is_err() {
        exec.run(&Cmd::new(&apt).args(["update", "-qq"]).timeout(Duration::from_secs(900)))?;
        exec.run(&install).with_context(|| format!("installing {package}"))?;
    }
    find_program(program).with_context(|| format!("{program} still missing after installing {package}"))
}

/// An exclusive lock on a run's work directory, held while the value lives.
pub struct WorkdirLock(#[allow(dead_code)] fs::File);

pub fn lock_workdir(dir: &Path) -> Result<WorkdirLock> {
    let path = dir.join(".lock");
    let file = fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path)?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        bail!("another benchmark run holds {}", path.display());
    }
    Ok(WorkdirLock(file))
}

// ---------------------------------------------------------------- memory

/// RSS and PSS in KiB of a process, from `/proc/PID/smaps_rollup`; a process that is gone
/// counts 0.
pub fn rss_pss_kib(pid: i32) -> (u64, u64) {
    let text = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("Rss:"), field("Pss:"))
}

/// `MemAvailable` of `/proc/meminfo`, in KiB.
pub fn mem_available_kib() -> u64 {
    meminfo_kib("MemAvailable:")
}

pub fn meminfo_kib(field: &str) -> u64 {
    let text = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    text.lines().find_map(|l| l.strip_prefix(field)?.split_whitespace().next()?.parse().ok()).unwrap_or(0)
}

/// The pids of `pid`'s direct children.
pub fn children_of(pid: i32) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|child| {
            let stat = fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            // The parent pid is the second field after the parenthesised command name.
            stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<i32>().ok()) == Some(pid)
        })
        .collect()
}

// ---------------------------------------------------------------- XFS or btrfs on a loop device

/// The filesystems made on a loop device: both share blocks between files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoopKind {
    /// XFS with `reflink=1`.
    Xfs,
    /// btrfs with its defaults (no compression).
    Btrfs,
}

impl LoopKind {
    /// The mkfs command line, without the device.
    pub fn mkfs(self) -> &'static str {
        match self {
            LoopKind::Xfs => "mkfs.xfs -K -m reflink=1",
            LoopKind::Btrfs => "mkfs.btrfs -K",
        }
    }

    fn mkfs_cmd(self, device: &str) -> Cmd {
        match self {
            LoopKind::Xfs => Cmd::new("mkfs.xfs").args(["-q", "-f", "-K", "-m", "reflink=1", device]),
            LoopKind::Btrfs => Cmd::new("mkfs.btrfs").args(["-q", "-f", "-K", device]),
        }
    }

    /// The program that makes it and the Debian package that has it.
    pub fn program(self) -> (&'static str, &'static str) {
        match self {
            LoopKind::Xfs => ("mkfs.xfs", "xfsprogs"),
            LoopKind::Btrfs => ("mkfs.btrfs", "btrfs-progs"),
        }
    }

    fn fs_type(self) -> &'static str {
        match self {
            LoopKind::Xfs => "xfs",
            LoopKind::Btrfs => "btrfs",
        }
    }
}

/// A filesystem in a sparse file on a loop device, mounted; unmounted and detached when
/// dropped.
pub struct LoopFs {
    pub kind: LoopKind,
    pub mount_point: PathBuf,
    pub device: String,
    /// Whether the loop device does direct I/O (so blocks are not cached twice).
    pub direct_io: bool,
    pub mount_options: String,
    file: PathBuf,
    exec: std::sync::Arc<Exec>,
}

impl LoopFs {
    pub fn make(
        exec: &std::sync::Arc<Exec>,
        kind: LoopKind,
        file: &Path,
        size: u64,
        mount_point: &Path,
    ) -> Result<LoopFs> {
        let (program, package) = kind.program();
        need_program(exec, program, package)?;
        need_program(exec, "losetup", "mount")?;
        fs::create_dir_all(mount_point)?;
        if is_mount_point(mount_point) {
            bail!("{} is already a mount point", mount_point.display());
        }
        let _ = fs::remove_file(file); // a leftover of an earlier run, if any
        let f = fs::File::create(file).with_context(|| format!("creating {}", file.display()))?;
        f.set_len(size)?;
        drop(f);
        exec.note(&format!("truncate -s {size} {}", file.display()));
        let (device, direct_io) =
            match exec.stdout(&Cmd::new("losetup").args(["--find", "--show", "--direct-io=on", "--"]).arg(file)) {
                Ok(dev) => (dev, true),
                Err(_) => (exec.stdout(&Cmd::new("losetup").args(["--find", "--show", "--"]).arg(file))?, false),
            };
        let mut lfs = LoopFs {
            kind,
            mount_point: mount_point.to_owned(),
            device,
            direct_io,
            mount_options: String::new(),
            file: file.to_owned(),
            exec: exec.clone(),
        };
        exec.run(&kind.mkfs_cmd(&lfs.device))?;
        exec.run(&Cmd::new("mount").args(["-t", kind.fs_type(), &lfs.device]).arg(mount_point))?;
        fs::set_permissions(mount_point, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        lfs.mount_options = fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .find(|l| l.split(' ').nth(4).map(unescape_mount_path).as_deref() == Some(&*mount_point.to_string_lossy()))
            .and_then(|l| l.split(' ').nth(5).map(str::to_owned))
            .unwrap_or_default();
        Ok(lfs)
    }

    /// Gives blocks freed inside the filesystem back to the file underneath.
    pub fn trim(&self) {
        if let Err(e) = self.exec.run(&Cmd::new("fstrim").arg(&self.mount_point)) {
            warn(&format!("fstrim {}: {e:#}", self.mount_point.display()));
        }
    }

    fn unmount(&mut self) {
        for _ in 0..20 {
            if !is_mount_point(&self.mount_point) {
                break;
            }
            if self.exec.run_always(&Cmd::new("umount").arg(&self.mount_point)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        if is_mount_point(&self.mount_point) {
            warn(&format!("{} still busy; lazy unmount", self.mount_point.display()));
            if let Err(e) = self.exec.run_always(&Cmd::new("umount").arg("-l").arg(&self.mount_point)) {
                warn(&format!("{e:#}"));
            }
        }
        if let Err(e) = self.exec.run_always(&Cmd::new("losetup").args(["-d", &self.device])) {
            warn(&format!("detaching {}: {e:#}", self.device));
        }
        let _ = fs::remove_file(&self.file); // sparse and of no further use; best effort
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        self.unmount();
    }
}

/// The bytes of the files under `path` on btrfs that no other file shares (the
/// "Exclusive" column of `btrfs filesystem du -s --raw`), after a sync of the filesystem.
pub fn btrfs_exclusive_bytes(exec: &Exec, path: &Path) -> Result<u64> {
    syncfs(path)?;
    let out = exec.stdout(&Cmd::new("btrfs").args(["filesystem", "du", "-s", "--raw"]).arg(path))?;
    parse_btrfs_du(&out).with_context(|| format!("reading `btrfs filesystem du` of {}: {out:?}", path.display()))
}

/// The Exclusive column of `btrfs filesystem du -s --raw`'s one line of figures.
fn parse_btrfs_du(out: &str) -> Option<u64> {
    let mut lines = out.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines.next()?.split_whitespace().collect();
    let column = header.iter().position(|h| *h == "Exclusive")?;
    lines.next()?.split_whitespace().nth(column)?.parse().ok()
}

/// `syncfs` of the filesystem holding `path`.
pub fn syncfs(path: &Path) -> Result<()> {
    let dir = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: syncfs on a file descriptor we own.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
        return Err(std::io::Error::last_os_error()).context("syncfs");
    }
    Ok(())
}

// ---------------------------------------------------------------- overlayfs

/// An overlayfs mount (`mount -t overlay`), unmounted when dropped.
pub struct OverlayMount {
    pub merged: PathBuf,
    exec: std::sync::Arc<Exec>,
    mounted: bool,
}

impl OverlayMount {
    /// Mounts `lower` under `upper` (with `work`, on the upper's filesystem) at `merged`,
    /// with `options` added (as `metacopy=on`).
    pub fn mount(
        exec: &std::sync::Arc<Exec>,
        lower: &Path,
        upper: &Path,
        work: &Path,
        merged: &Path,
        options: &str,
    ) -> Result<OverlayMount> {
        for p in [lower, upper, work, merged] {
            if p.to_string_lossy().contains([',', ':']) {
                bail!("overlayfs cannot take {} (a comma or colon in the path)", p.display());
            }
        }
        let mut o = format!("lowerdir={},upperdir={},workdir={}", lower.display(), upper.display(), work.display());
        if !options.is_empty() {
            o = format!("{o},{options}");
        }
        exec.run(&Cmd::new("mount").args(["-t", "overlay", "overlay", "-o", &o]).arg(merged))
            .with_context(|| format!("mounting overlayfs at {}", merged.display()))?;
        Ok(OverlayMount { merged: merged.to_owned(), exec: exec.clone(), mounted: true })
    }

    /// Unmounts it.
    pub fn unmount(mut self) -> Result<()> {
        self.mounted = false;
        self.exec.run_always(&Cmd::new("umount").arg(&self.merged)).map(drop)
    }
}

impl Drop for OverlayMount {
    fn drop(&mut self) {
        if self.mounted && is_mount_point(&self.merged) {
            if let Err(e) = self.exec.run_always(&Cmd::new("umount").arg(&self.merged)) {
                warn(&format!("unmounting {}: {e:#}; lazy unmount", self.merged.display()));
                if let Err(e) = self.exec.run_always(&Cmd::new("umount").arg("-l").arg(&self.merged)) {
                    warn(&format!("lazy unmount of {}: {e:#}", self.merged.display()));
                }
            }
        }
    }
}

/// Loop devices backed by `file`, from an earlier run.
pub fn loop_devices_of(file: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir("/sys/block") else { return Vec::new() };
    let wanted = file.to_string_lossy();
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let backing = fs::read_to_string(e.path().join("loop/backing_file")).ok()?;
            (backing.trim().trim_end_matches(" (deleted)") == wanted).then(|| format!("/dev/{name}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(unescape_mount_path(r"/mnt/a\040b"), "/mnt/a b");
        assert_eq!(unescape_mount_path("/plain"), "/plain");
        assert!(mount_points().iter().any(|m| m == Path::new("/")));
    }

    #[test]
    fn btrfs_du_exclusive_column() {
        let out = "     Total   Exclusive  Set shared  Filename\n 1048576      8192     1040384  /mnt/c\n";
        assert_eq!(parse_btrfs_du(out), Some(8192));
        assert_eq!(parse_btrfs_du("garbage"), None);
    }

    #[test]
    fn du_counts_allocated_blocks() {
        let dir = std::env::temp_dir().join(format!("xtask-du-{}", std::process::id()));
        fs::create_dir_all(dir.join("sub")).unwrap();
        fs::write(dir.join("sub/f"), vec![1u8; 100_000]).unwrap();
        let n = du_bytes(&[&dir]);
        assert!(n >= 100_000, "{n}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
