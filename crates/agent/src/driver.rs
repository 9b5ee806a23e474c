//! Storage drivers: how a clone's data directory is made from an image, behind one trait.
//!
//! - `cowfs`: a layer directory over the shared image, served at the clone's data directory
//!   by a `thinclone mount` process. Making one costs a few KiB whatever the image's size.
//! - `reflink`: a copy whose files share the image's blocks (FICLONE), on filesystems with
//!   native copy-on-write (XFS with reflink=1, btrfs). Kernel speed, no FUSE in the data
//!   path; it needs the image and the clone on the same filesystem.
//! - `copy`: a plain full copy of the image, the baseline and fallback.
//!
//! A clone's directory (`CLONES/<name>/`) belongs to its driver. Every driver presents the
//! data directory at `CLONES/<name>/data`.

use std::fs;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriverKind {
    Cowfs,
    Reflink,
    Copy,
}

impl DriverKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DriverKind::Cowfs => "cowfs",
            DriverKind::Reflink => "reflink",
            DriverKind::Copy => "copy",
        }
    }
}

impl std::str::FromStr for DriverKind {
    type Err = String;
    fn from_str(s: &str) -> Result<DriverKind, String> {
        match s {
            "cowfs" => Ok(DriverKind::Cowfs),
            "reflink" => Ok(DriverKind::Reflink),
            "copy" => Ok(DriverKind::Copy),
            other => Err(format!("unknown driver {other:?}: use cowfs, reflink or copy")),
        }
    }
}

/// A data directory made available by [`Driver::attach`].
#[derive(Debug)]
pub struct Attached {
    pub data_dir: PathBuf,
    /// The process serving it, if any (the cowfs mount).
    pub server: Option<Child>,
}

pub trait Driver: Send + Sync {
    fn kind(&self) -> DriverKind;

    /// Makes a clone's storage in `clone_dir` (which must not exist) from `image`.
    fn create(&self, image: &Path, clone_dir: &Path) -> io::Result<()>;

    /// Makes the clone's data directory usable, presented as owned by `owner`.
    fn attach(&self, image: &Path, clone_dir: &Path, owner: &str) -> io::Result<Attached>;

    /// Undoes `attach`.
    fn detach(&self, clone_dir: &Path, attached: Attached) -> io::Result<()>;

    /// Returns a detached clone to the image's state.
    fn reset(&self, image: &Path, clone_dir: &Path) -> io::Result<()>;

    /// Bytes the clone's storage occupies on disk beyond the image.
    fn stored_bytes(&self, clone_dir: &Path) -> io::Result<u64>;

    /// Deletes a detached clone's storage.
    fn destroy(&self, clone_dir: &Path) -> io::Result<()> {
        match fs::remove_dir_all(clone_dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// The data directory of a clone, whatever its driver.
pub fn data_dir(clone_dir: &Path) -> PathBuf {
    clone_dir.join("data")
}

/// cowfs: a layer directory over the image, mounted by a `thinclone mount` process.
pub struct Cowfs {
    /// The `thinclone` binary that serves mounts.
    pub program: PathBuf,
}

impl Cowfs {
    fn layer(clone_dir: &Path) -> PathBuf {
        clone_dir.join("layer")
    }
}

impl Driver for Cowfs {
    fn kind(&self) -> DriverKind {
        DriverKind::Cowfs
    }

    fn create(&self, image: &Path, clone_dir: &Path) -> io::Result<()> {
        fs::create_dir_all(clone_dir)?;
        fs::create_dir(data_dir(clone_dir))?;
        // Opening the layer directory creates it: a manifest and an empty journal.
        cowfs::LayerStack::open(&Self::layer(clone_dir), image).map_err(io::Error::other)?;
        Ok(())
    }

    fn attach(&self, image: &Path, clone_dir: &Path, owner: &str) -> io::Result<Attached> {
        let data = data_dir(clone_dir);
        let log = fs::OpenOptions::new().create(true).append(true).open(clone_dir.join("mount.log"))?;
        let mut child = Command::new(&self.program)
            .arg("mount")
            .arg("--image")
            .arg(image)
            .arg("--layer")
            .arg(Self::layer(clone_dir))
            .arg(&data)
            .args(["--owner", owner])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            // Its own process group: a signal to the daemon's group does not reach it, so
            // clones keep running across a daemon restart.
            .process_group(0)
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !cowfs::is_live_mount(&data) {
            if let Some(status) = child.try_wait()? {
                let log = fs::read_to_string(clone_dir.join("mount.log")).unwrap_or_default();
                let last = log.lines().rev().find(|l| l.contains("error")).unwrap_or("").to_string();
                return Err(io::Error::other(format!("the cowfs mount exited ({status}): {last}")));
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(io::Error::new(io::ErrorKind::TimedOut, "the cowfs mount did not come up within 30 s"));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        // A daemon that is killed leaves the mount running; the next one stops it by this.
        fs::write(clone_dir.join("mount.pid"), child.id().to_string())?;
        Ok(Attached { data_dir: data, server: Some(child) })
    }

    fn detach(&self, clone_dir: &Path, attached: Attached) -> io::Result<()> {
        let _ = fs::remove_file(clone_dir.join("mount.pid"));
        let Some(mut child) = attached.server else { return Ok(()) };
        // SAFETY: signalling our own child; SIGTERM unmounts cleanly.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait()? {
                if !status.success() {
                    return Err(io::Error::other(format!(
                        "the cowfs mount of {} exited with {status}",
                        clone_dir.display()
                    )));
                }
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                cowfs::unmount_stale(&data_dir(clone_dir))?;
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn reset(&self, image: &Path, clone_dir: &Path) -> io::Result<()> {
        let mut stack = cowfs::LayerStack::open(&Self::layer(clone_dir), image).map_err(io::Error::other)?;
        stack.reset().map_err(io::Error::other)
    }

    fn stored_bytes(&self, clone_dir: &Path) -> io::Result<u64> {
        cowfs::disk_usage(&Self::layer(clone_dir))
    }
}

/// copy: a full copy of the image (`cp -a`), the baseline.
pub struct FullCopy;

impl Driver for FullCopy {
    fn kind(&self) -> DriverKind {
        DriverKind::Copy
    }

    fn create(&self, image: &Path, clone_dir: &Path) -> io::Result<()> {
        fs::create_dir_all(clone_dir)?;
        copy_tree(image, &data_dir(clone_dir), false)
    }

    fn attach(&self, _image: &Path, clone_dir: &Path, owner: &str) -> io::Result<Attached> {
        let data = data_dir(clone_dir);
        let status = Command::new("chown").arg("-R").arg(format!("{owner}:")).arg(&data).status()?;
        if !status.success() {
            return Err(io::Error::other(format!("chown -R {owner} {} failed", data.display())));
        }
        Ok(Attached { data_dir: data, server: None })
    }

    fn detach(&self, _clone_dir: &Path, _attached: Attached) -> io::Result<()> {
        Ok(())
    }

    fn reset(&self, image: &Path, clone_dir: &Path) -> io::Result<()> {
        replace_with_copy(image, clone_dir, false)
    }

    fn stored_bytes(&self, clone_dir: &Path) -> io::Result<u64> {
        cowfs::disk_usage(&data_dir(clone_dir))
    }
}

/// reflink: a copy of the image whose files share its blocks until they are written.
pub struct Reflink;

impl Driver for Reflink {
    fn kind(&self) -> DriverKind {
        DriverKind::Reflink
    }

    fn create(&self, image: &Path, clone_dir: &Path) -> io::Result<()> {
        fs::create_dir_all(clone_dir)?;
        copy_tree(image, &data_dir(clone_dir), true).inspect_err(|_| {
            // Nothing half-made stays behind.
            let _ = fs::remove_dir_all(data_dir(clone_dir));
        })
    }

    fn attach(&self, image: &Path, clone_dir: &Path, owner: &str) -> io::Result<Attached> {
        // Ownership is metadata: changing it does not unshare any block.
        FullCopy.attach(image, clone_dir, owner)
    }

    fn detach(&self, _clone_dir: &Path, _attached: Attached) -> io::Result<()> {
        Ok(())
    }

    fn reset(&self, image: &Path, clone_dir: &Path) -> io::Result<()> {
        replace_with_copy(image, clone_dir, true)
    }

    /// Only the bytes no longer shared with the image (see `reflink.rs`).
    fn stored_bytes(&self, clone_dir: &Path) -> io::Result<u64> {
        crate::reflink::exclusive_bytes(&data_dir(clone_dir))
    }
}

/// Replaces a clone's data directory with a fresh copy of the image. The copy is made aside
/// first, so that a failed copy (a full disk) leaves the clone as it was.
fn replace_with_copy(image: &Path, clone_dir: &Path, reflink: bool) -> io::Result<()> {
    let data = data_dir(clone_dir);
    let fresh = clone_dir.join("data.new");
    let _ = fs::remove_dir_all(&fresh);
    copy_tree(image, &fresh, reflink).inspect_err(|_| {
        let _ = fs::remove_dir_all(&fresh);
    })?;
    let old = clone_dir.join("data.old");
    fs::rename(&data, &old)?;
    fs::rename(&fresh, &data)?;
    fs::remove_dir_all(old)
}

/// Copies a tree with `cp -a`, which keeps modes, owners, times and sparseness; with
/// `reflink`, every file shares the source's blocks, or the copy fails (it never falls back
/// to copying data: across filesystems it fails with "Invalid cross-device link").
fn copy_tree(from: &Path, to: &Path, reflink: bool) -> io::Result<()> {
    // The copy driver is the honest baseline: a real copy even where cp could reflink.
    let mode = if reflink { "--reflink=always" } else { "--reflink=never" };
    let out = Command::new("cp").args(["-a", mode, "--"]).arg(from).arg(to).output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "cp -a {mode} {} {} failed: {}",
            from.display(),
            to.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_driver_copies_resets_and_destroys() {
        let image = tempfile::tempdir().unwrap();
        fs::write(image.path().join("f"), "image").unwrap();
        let clones = tempfile::tempdir().unwrap();
        let clone = clones.path().join("c");
        let driver = FullCopy;
        driver.create(image.path(), &clone).unwrap();
        fs::write(data_dir(&clone).join("f"), "changed").unwrap();
        assert!(driver.stored_bytes(&clone).unwrap() > 0);
        driver.reset(image.path(), &clone).unwrap();
        assert_eq!(fs::read_to_string(data_dir(&clone).join("f")).unwrap(), "image");
        driver.destroy(&clone).unwrap();
        assert!(!clone.exists());
        assert_eq!(fs::read_to_string(image.path().join("f")).unwrap(), "image");
    }

    #[test]
    fn cowfs_driver_makes_an_empty_layer() {
        let image = tempfile::tempdir().unwrap();
        fs::write(image.path().join("f"), vec![1u8; 1 << 20]).unwrap();
        let clones = tempfile::tempdir().unwrap();
        let clone = clones.path().join("c");
        let driver = Cowfs { program: "/nonexistent".into() };
        driver.create(image.path(), &clone).unwrap();
        assert!(data_dir(&clone).is_dir());
        let stored = driver.stored_bytes(&clone).unwrap();
        assert!(stored < 64 << 10, "a fresh layer takes {stored} bytes");
        driver.reset(image.path(), &clone).unwrap();
        driver.destroy(&clone).unwrap();
        assert!(!clone.exists());
    }

    #[test]
    fn driver_names_parse() {
        assert_eq!("cowfs".parse::<DriverKind>().unwrap(), DriverKind::Cowfs);
        assert!("zfs".parse::<DriverKind>().unwrap_err().contains("use cowfs, reflink or copy"));
    }
}
