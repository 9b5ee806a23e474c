//! Helpers shared by the integration tests: the real `thinclone` binary, real mounts, and
//! checks of whether this machine can run them.

#![allow(dead_code)]

pub mod daemon;
pub mod fleet;
pub mod mariadb;
pub mod pg;
pub mod residue;

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn thinclone_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_thinclone"))
}

/// Checks that FUSE mounts can be made here, and fails the test with what is missing if
/// not: a test that cannot run must not count as passed. `scripts/test` installs everything
/// the tests need and runs them as root.
pub fn require_fuse(test: &str) {
    let root = unsafe { libc::geteuid() } == 0;
    assert!(
        Path::new("/dev/fuse").exists() && (root || which("fusermount3")),
        "{test} needs FUSE (/dev/fuse, and root or fusermount3); run the tests with scripts/test, which installs it"
    );
}

pub fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}

/// A `thinclone mount` process serving a layer directory over an image.
pub struct Mount {
    pub image: PathBuf,
    pub layer: PathBuf,
    pub mountpoint: PathBuf,
    extra_args: Vec<String>,
    child: Option<Child>,
}

impl Mount {
    pub fn start(image: &Path, layer: &Path, mountpoint: &Path, extra_args: &[&str]) -> Mount {
        fs::create_dir_all(mountpoint).unwrap();
        let mut mount = Mount {
            image: image.to_owned(),
            layer: layer.to_owned(),
            mountpoint: mountpoint.to_owned(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        mount.spawn();
        mount
    }

    fn spawn(&mut self) {
        let child = Command::new(thinclone_bin())
            .arg("mount")
            .arg("--image")
            .arg(&self.image)
            .arg("--layer")
            .arg(&self.layer)
            .arg(&self.mountpoint)
            .args(&self.extra_args)
            // Lets a test run be repeated in another mount mode, e.g. `--no-passthrough`.
            .args(std::env::var("THINCLONE_TEST_MOUNT_ARGS").unwrap_or_default().split_whitespace())
            .env("THINCLONE_LOG", std::env::var("THINCLONE_TEST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdin(Stdio::null())
            .spawn()
            .expect("starting thinclone mount");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        // A dead server's mount stays listed, answering ENOTCONN, until the new server
        // detaches it: ready means listed and answering.
        while !fuse_answers(&self.mountpoint) {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("thinclone mount exited early: {status}");
            }
            assert!(Instant::now() < deadline, "mount did not come up at {}", self.mountpoint.display());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the server with SIGKILL, as a crash would, and starts a new one on the same
    /// layer directory.
    pub fn kill_and_remount(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        self.spawn();
    }

    /// Unmounts with SIGTERM and waits for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let status = child.wait().unwrap();
            assert!(status.success(), "thinclone mount exited with {status}");
            assert!(!is_mounted(&self.mountpoint), "still mounted after SIGTERM");
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if is_mounted(&self.mountpoint) {
            let _ = Command::new("umount").arg("-l").arg(&self.mountpoint).status();
        }
    }
}

/// Whether a live FUSE filesystem answers at `path` (not a dead mount, nor the directory
/// beneath a mount that a remount briefly exposes).
pub fn fuse_answers(path: &Path) -> bool {
    cowfs::is_live_mount(path)
}

pub fn is_mounted(path: &Path) -> bool {
    let Ok(path) = fs::canonicalize(path).or_else(|_| Ok::<_, ()>(path.to_owned())) else { return false };
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mountinfo.lines().any(|line| line.split(' ').nth(4).is_some_and(|mp| Path::new(mp) == path))
}

/// Copies a tree as `cp -a` would (contents, modes, symlinks).
pub fn copy_tree(from: &Path, to: &Path) {
    let meta = fs::symlink_metadata(from).unwrap();
    if meta.is_dir() {
        fs::create_dir_all(to).unwrap();
        for entry in fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            copy_tree(&entry.path(), &to.join(entry.file_name()));
        }
        fs::set_permissions(to, fs::Permissions::from_mode(meta.mode() & 0o7777)).unwrap();
    } else if meta.file_type().is_symlink() {
        std::os::unix::fs::symlink(fs::read_link(from).unwrap(), to).unwrap();
    } else {
        fs::copy(from, to).unwrap();
    }
}

/// What a tree holds, for comparing two trees: kind, permission bits, size and contents (or
/// symlink target) of every entry by relative path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Dir { mode: u32 },
    File { mode: u32, size: u64, digest: u64 },
    Symlink { target: PathBuf },
    Other { mode: u32 },
}

pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, Entry> {
    let mut out = BTreeMap::new();
    walk(root, Path::new(""), &mut out);
    out
}

fn walk(root: &Path, rel: &Path, out: &mut BTreeMap<PathBuf, Entry>) {
    let path = root.join(rel);
    let meta = fs::symlink_metadata(&path).unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()));
    let mode = meta.mode() & 0o7777;
    let entry = if meta.is_dir() {
        let mut names: Vec<_> = fs::read_dir(&path).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        for name in names {
            walk(root, &rel.join(name), out);
        }
        Entry::Dir { mode }
    } else if meta.file_type().is_symlink() {
        Entry::Symlink { target: fs::read_link(&path).unwrap() }
    } else if meta.is_file() {
        Entry::File { mode, size: meta.len(), digest: digest_file(&path) }
    } else {
        Entry::Other { mode }
    };
    out.insert(rel.to_owned(), entry);
}

pub fn digest_file(path: &Path) -> u64 {
    // FNV-1a: enough to tell contents apart in tests.
    let mut hash: u64 = 0xcbf29ce484222325;
    let mut file = fs::File::open(path).unwrap();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        for &b in &buf[..n] {
            hash ^= b as u64;
            hash = hash.wrapping_mul(0x100000001b3);
        }
    }
    hash
}

/// Describes how two snapshots differ, or `None` when they are equal.
pub fn diff(expected: &BTreeMap<PathBuf, Entry>, actual: &BTreeMap<PathBuf, Entry>) -> Option<String> {
    let mut out = String::new();
    for (path, e) in expected {
        match actual.get(path) {
            None => out += &format!("missing {}: expected {e:?}\n", path.display()),
            Some(a) if a != e => out += &format!("differs {}: expected {e:?}, got {a:?}\n", path.display()),
            _ => {}
        }
    }
    for (path, a) in actual {
        if !expected.contains_key(path) {
            out += &format!("unexpected {}: {a:?}\n", path.display());
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Bytes allocated on disk under `path`, as `du` counts them.
pub fn layer_du(path: &Path) -> u64 {
    sys::tree::disk_usage(path).unwrap()
}

/// A filesystem image file mounted on a loop device, unmounted when dropped.
pub struct LoopFs {
    pub mountpoint: PathBuf,
}

impl LoopFs {
    /// Makes and mounts a sparse filesystem of `size` bytes. Its mkfs must be installed
    /// (scripts/install installs the XFS and btrfs tools).
    pub fn new(kind: &str, work: &Path, size: u64) -> LoopFs {
        let name = format!("mkfs.{kind}");
        let mkfs = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
            .iter()
            .map(|dir| Path::new(dir).join(&name))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("{name} is not installed; scripts/install installs it"));
        let image = work.join(format!("{kind}.img"));
        fs::File::create(&image).unwrap().set_len(size).unwrap();
        let args: &[&str] = match kind {
            "xfs" => &["-q", "-m", "reflink=1"],
            "ext4" => &["-q", "-F"],
            _ => &["-q"],
        };
        let out = Command::new(&mkfs).args(args).arg(&image).output().unwrap();
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        let mountpoint = work.join(kind);
        fs::create_dir(&mountpoint).unwrap();
        let out = Command::new("mount").args(["-o", "loop"]).arg(&image).arg(&mountpoint).output().unwrap();
        assert!(out.status.success(), "mount {kind}: {}", String::from_utf8_lossy(&out.stderr));
        fs::set_permissions(&mountpoint, fs::Permissions::from_mode(0o755)).unwrap();
        LoopFs { mountpoint }
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mountpoint).status();
    }
}

/// Waits up to `timeout` for `done` to give a value, asking every 200 ms.
pub fn eventually<T>(timeout: Duration, mut done: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(t) = done() {
            return Some(t);
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
