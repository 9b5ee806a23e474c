//! A clone's disk filling up, through a real mount (doc/SEMANTICS.md, "Full disks"): the layer
//! directory on a 64 MiB tmpfs or loop-mounted ext4, the image elsewhere, the writeback cache
//! on and off. A writer fills a file in 1 MiB writes with an `fdatasync` every 4 MiB, and each
//! test prints where `ENOSPC` appeared. Without the writeback cache it must be at `write(2)`,
//! with cowfs's reserve still free on the disk; with it, the kernel has accepted the writes
//! before cowfs sees them, and `ENOSPC` comes at `fdatasync` (or `close`). Either way: the
//! mount logs `cowfs: ENOSPC`, shows a full filesystem, refuses new files, still overwrites
//! what it holds, keeps everything that was fsynced, works again once space is freed (and
//! logs so), survives a restart, and never touches the image.

mod support;

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::IntoRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{digest_file, LoopFs};

const MIB: u64 = 1 << 20;
/// The reserve cowfs keeps on a 64 MiB filesystem by default (a twentieth, at least 8 MiB).
const RESERVE: u64 = 8 * MIB;

fn chunk(i: u64) -> Vec<u8> {
    (0..MIB).map(|j| ((i * 7 + j / 4096) % 251) as u8).collect()
}

fn available(path: &Path) -> u64 {
    let c_path = CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c_path.as_ptr(), &mut st) }, 0, "statvfs {}", path.display());
    st.f_bavail * st.f_frsize
}

/// A tmpfs, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

enum Small {
    Tmpfs(Tmpfs),
    Ext4(LoopFs),
}

impl Small {
    fn new(kind: &str, work: &Path) -> Small {
        match kind {
            "tmpfs" => {
                let path = work.join("tmpfs");
                fs::create_dir(&path).unwrap();
                let status = Command::new("mount").args(["-t", "tmpfs", "-o", "size=64m", "tmpfs"]).arg(&path).status();
                assert!(status.unwrap().success(), "mounting a tmpfs (root is needed)");
                Small::Tmpfs(Tmpfs(path))
            }
            _ => Small::Ext4(LoopFs::new("ext4", work, 64 * MIB)),
        }
    }

    fn path(&self) -> &Path {
        match self {
            Small::Tmpfs(t) => &t.0,
            Small::Ext4(l) => &l.mountpoint,
        }
    }
}

/// A `thinclone mount` whose log is kept in a file.
struct LoggedMount {
    args: Vec<PathBuf>,
    extra: Vec<&'static str>,
    mountpoint: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl LoggedMount {
    fn start(image: &Path, layer: &Path, mountpoint: &Path, log: &Path, writeback: bool) -> LoggedMount {
        fs::create_dir_all(mountpoint).unwrap();
        let mut mount = LoggedMount {
            args: vec![image.to_owned(), layer.to_owned()],
            extra: if writeback { vec![] } else { vec!["--no-writeback-cache"] },
            mountpoint: mountpoint.to_owned(),
            log: log.to_owned(),
            child: None,
        };
        mount.spawn();
        mount
    }

    fn spawn(&mut self) {
        let log = OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(support::thinclone_bin())
            .arg("mount")
            .arg("--image")
            .arg(&self.args[0])
            .arg("--layer")
            .arg(&self.args[1])
            .arg(&self.mountpoint)
            .args(&self.extra)
            .env("THINCLONE_LOG", "info")
            .stdin(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !support::fuse_answers(&self.mountpoint) {
            assert!(self.child.as_mut().unwrap().try_wait().unwrap().is_none(), "the mount exited: {}", self.log());
            assert!(Instant::now() < deadline, "the mount did not come up");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn stop(&mut self) {
        let mut child = self.child.take().unwrap();
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        assert!(child.wait().unwrap().success(), "the mount did not stop cleanly: {}", self.log());
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.mountpoint.join(rel)
    }
}

impl Drop for LoggedMount {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if support::is_mounted(&self.mountpoint) {
            let _ = Command::new("umount").arg("-l").arg(&self.mountpoint).status();
        }
    }
}

#[derive(Debug, PartialEq)]
enum Where {
    Write(u64),
    Fdatasync(u64),
    Close,
}

/// Closes a file, returning close(2)'s own error (which `drop` would hide).
fn close(file: File) -> io::Result<()> {
    if unsafe { libc::close(file.into_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

fn fill_the_disk(kind: &str, writeback: bool) {
    support::require_fuse("full disk");
    let work = tempfile::tempdir().unwrap();
    let small = Small::new(kind, work.path());
    let image = work.path().join("image");
    fs::create_dir(&image).unwrap();
    fs::write(image.join("base"), (0..4 * MIB).map(|i| (i % 253) as u8).collect::<Vec<u8>>()).unwrap();
    let image_digest = digest_file(&image.join("base"));
    let layer = small.path().join("layer");
    let log = work.path().join("mount.log");
    let mut mount = LoggedMount::start(&image, &layer, &work.path().join("mnt"), &log, writeback);
    let mode = format!("{kind}, writeback cache {}", if writeback { "on" } else { "off" });

    // Something fsynced before the disk fills, to find intact at the end.
    let kept = File::create(mount.path("kept")).unwrap();
    kept.write_all_at(&chunk(1000), 0).unwrap();
    kept.sync_all().unwrap();
    drop(kept);

    let mut fill = File::create(mount.path("fill")).unwrap();
    let (mut accepted, mut synced) = (0, 0);
    let mut at = None;
    for i in 0..256 {
        if let Err(e) = fill.write_all(&chunk(i)) {
            assert_eq!(errno(&e), libc::ENOSPC, "{mode}: write {i}: {e}");
            at = Some(Where::Write(i + 1));
            break;
        }
        accepted += 1;
        if accepted % 4 == 0 {
            match fill.sync_data() {
                Ok(()) => synced = accepted,
                Err(e) => {
                    assert_eq!(errno(&e), libc::ENOSPC, "{mode}: fdatasync: {e}");
                    at = Some(Where::Fdatasync(accepted));
                    break;
                }
            }
        }
    }
    let left = available(small.path());
    match close(fill) {
        Err(e) if at.is_none() => {
            assert_eq!(errno(&e), libc::ENOSPC, "{mode}: close: {e}");
            at = Some(Where::Close);
        }
        _ => {}
    }
    let at = at.unwrap_or_else(|| panic!("{mode}: 256 MiB written into 64 MiB without an error"));
    eprintln!(
        "full disk, {mode}: ENOSPC at {at:?}, after {accepted} MiB accepted by write(2) and {synced} MiB fsynced; \
         {:.1} MiB left on the layer's filesystem",
        left as f64 / MIB as f64
    );
    if writeback {
        assert!(matches!(at, Where::Fdatasync(_) | Where::Close), "{mode}: ENOSPC at {at:?}");
    } else {
        assert!(matches!(at, Where::Write(_)), "{mode}: ENOSPC at {at:?}, not at write(2)");
        assert!(left >= RESERVE - MIB, "{mode}: refused only with {left} bytes left");
    }
    let logged = mount.log();
    assert!(logged.contains("cowfs: ENOSPC"), "{mode}: the mount did not log ENOSPC:\n{logged}");
    if !writeback {
        // A MiB was refused; pages still fit until less than one is left above the reserve.
        let fill = OpenOptions::new().append(true).open(mount.path("fill")).unwrap();
        let mut pages = 0;
        while fill.write_all_at(&[5u8; 8192], 0).is_ok() {
            pages += 1;
            assert!(pages <= 128, "{mode}: a MiB was refused, but not its pages");
        }
        // Small bookkeeping still fits, in half of the reserve: a state file written under a
        // temporary name, fsynced, renamed.
        let mut state = File::create(mount.path("state.tmp")).unwrap();
        state.write_all(b"checkpoint state").unwrap();
        state.sync_all().unwrap();
        fs::rename(mount.path("state.tmp"), mount.path("state")).unwrap();
        // Small files, until that half is used up too.
        let mut files = 0;
        let err = loop {
            let made = File::create(mount.path(&format!("s{files}"))).and_then(|mut f| f.write_all(&[4u8; 8192]));
            match made {
                Ok(()) => files += 1,
                Err(e) => break e,
            }
            assert!(files <= 1024, "{mode}: 8 MiB of small files past the reserve");
        };
        assert_eq!(errno(&err), libc::ENOSPC, "{mode}: small files: {err}");
        assert!(available(small.path()) >= RESERVE / 2 - MIB, "{mode}: the filesystem itself is full");
    }

    // While full: the mount shows no space, new files are refused, what it holds can still be
    // overwritten, and what was fsynced reads back.
    assert!(available(&mount.mountpoint) < MIB, "{mode}: statfs shows {} bytes", available(&mount.mountpoint));
    let err = File::create(mount.path("new")).unwrap_err();
    assert_eq!(errno(&err), libc::ENOSPC, "{mode}: creating a file: {err}");
    let err = fs::create_dir(mount.path("dir")).unwrap_err();
    assert_eq!(errno(&err), libc::ENOSPC, "{mode}: making a directory: {err}");
    let fill = OpenOptions::new().read(true).write(true).open(mount.path("fill")).unwrap();
    fill.write_all_at(&chunk(2000), 0).unwrap();
    fill.sync_data().unwrap_or_else(|e| panic!("{mode}: fsync of an overwrite on a full disk: {e}"));
    let mut buf = vec![0u8; MIB as usize];
    for i in 1..synced {
        fill.read_exact_at(&mut buf, i * MIB).unwrap();
        assert!(buf == chunk(i), "{mode}: MiB {i} of fill, fsynced, reads back wrong");
    }
    drop(fill);
    if !writeback {
        // A copy-up needs new space: refused at write(2).
        let base = OpenOptions::new().write(true).open(mount.path("base")).unwrap();
        let err = base.write_all_at(&[1u8; 8192], MIB).unwrap_err();
        assert_eq!(errno(&err), libc::ENOSPC, "{mode}: writing into an image file: {err}");
    }

    // Space freed: everything works again.
    fs::remove_file(mount.path("fill")).unwrap();
    for entry in fs::read_dir(&mount.mountpoint).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.starts_with('s') {
            fs::remove_file(mount.path(&name)).unwrap();
        }
    }
    // The kernel closes a FUSE file (RELEASE) after close(2) has returned, and the removed
    // file's blocks are free only once cowfs has closed it too and the filesystem has let them
    // go: room comes back within moments, not at once (a CI run once saw ENOSPC here).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let after = loop {
        match File::create(mount.path("after")) {
            Err(e) if errno(&e) == libc::ENOSPC && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(50))
            }
            made => break made.unwrap_or_else(|e| panic!("{mode}: after freeing space: {e}")),
        }
    };
    for i in 0..4 {
        after.write_all_at(&chunk(3000 + i), i * MIB).unwrap();
    }
    after.sync_all().unwrap();
    drop(after);
    let logged = mount.log();
    assert!(logged.contains("cowfs: space available again"), "{mode}: no recovery logged:\n{logged}");

    mount.stop();
    mount.spawn();
    assert_eq!(fs::read(mount.path("kept")).unwrap(), chunk(1000), "{mode}: kept");
    let after = fs::read(mount.path("after")).unwrap();
    for i in 0..4 {
        assert!(after[(i * MIB) as usize..((i + 1) * MIB) as usize] == chunk(3000 + i), "{mode}: after, MiB {i}");
    }
    let mut names: Vec<_> = fs::read_dir(&mount.mountpoint).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    assert_eq!(names, ["after", "base", "kept"], "{mode}");
    eprintln!("full disk, {mode}: the mount works again once space is freed; fsynced data intact");
    mount.stop();
    assert_eq!(digest_file(&image.join("base")), image_digest, "{mode}: the image changed");
}

#[test]
fn a_full_tmpfs_without_the_writeback_cache_says_enospc_at_write() {
    fill_the_disk("tmpfs", false);
}

#[test]
fn a_full_tmpfs_with_the_writeback_cache_says_enospc_at_fdatasync() {
    fill_the_disk("tmpfs", true);
}

#[test]
fn a_full_ext4_without_the_writeback_cache_says_enospc_at_write() {
    fill_the_disk("ext4", false);
}

#[test]
fn a_full_ext4_with_the_writeback_cache_says_enospc_at_fdatasync() {
    fill_the_disk("ext4", true);
}
