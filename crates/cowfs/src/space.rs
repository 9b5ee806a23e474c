//! Free space in the writable layer's filesystem, and what cowfs does when it runs out.
//!
//! cowfs keeps a *reserve*: while the layer's filesystem has less than that much space
//! available, operations that would take new space and that a caller is still waiting for (a
//! write without the writeback cache, `fallocate`) are refused with `ENOSPC` before anything
//! is written. Small ones (making a file, directory or symlink, and writes within the first
//! 64 KiB of a file) may use half of the reserve: they are applications' bookkeeping, such as
//! a state file written under a temporary name and renamed, which a database does at every
//! checkpoint and whose failure it does not survive. Writes that the kernel has already
//! accepted into its writeback cache cannot be refused without losing them, so they are
//! always attempted and may use all of the reserve. Operations that take no new space
//! (overwriting blocks the layer owns, removing, renaming, shrinking) are never refused.
//!
//! The first `ENOSPC` of an episode, refused or from the filesystem, is logged once with the
//! stable marker `cowfs: ENOSPC`; `cowfs: space available again` ends the episode. `statfs`
//! through the mount shows the available space less the reserve, so a full clone shows 0.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

const MIB: u64 = 1 << 20;
/// The reserve is a twentieth of the filesystem, within these bounds, and never more than a
/// quarter of it. The upper bound covers what the kernel may hold in its writeback cache for
/// one FUSE mount (its dirty limit is 1% of the system's, tens of MiB on most machines).
const RESERVE_MIN: u64 = 8 * MIB;
const RESERVE_MAX: u64 = 256 * MIB;
/// Writes that end within this many bytes of the start of a file are small (see above).
pub(crate) const SMALL: u64 = 64 << 10;
/// How long a sample of the free space is trusted, less what was admitted since.
const FRESH: Duration = Duration::from_millis(5);

/// The available space of a layer directory's filesystem, and the reserve cowfs keeps on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerSpace {
    /// Bytes available to unprivileged users (`f_bavail`).
    pub available: u64,
    /// The filesystem's size.
    pub total: u64,
    /// The reserve a mount of this layer keeps by default.
    pub reserve: u64,
}

impl LayerSpace {
    /// Whether a mount of this layer refuses writes that need new space (`ENOSPC`).
    pub fn is_full(&self) -> bool {
        self.available < self.reserve
    }
}

/// The space of the filesystem that holds the layer directory `dir`, as a mount of it sees
/// it. For a supervisor that wants to show a clone as out of space without asking the mount.
pub fn layer_space(dir: &Path) -> io::Result<LayerSpace> {
    let st = statvfs(dir)?;
    let total = st.f_blocks * st.f_frsize;
    Ok(LayerSpace { available: st.f_bavail * st.f_frsize, total, reserve: default_reserve(total) })
}

fn default_reserve(total: u64) -> u64 {
    (total / 20).clamp(RESERVE_MIN, RESERVE_MAX).min(total / 4)
}

fn statvfs(path: &Path) -> io::Result<libc::statvfs> {
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: statvfs fills the struct we pass; the path is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

struct Sample {
    at: Option<Instant>,
    /// Available bytes when sampled, less what was admitted or written since.
    available: u64,
}

/// The free space of the writable layer's filesystem, as cowfs watches it.
pub(crate) struct Space {
    dir: PathBuf,
    reserve: AtomicU64,
    sample: Mutex<Sample>,
    /// Within an episode of ENOSPC: the next success that leaves room ends it.
    full: AtomicBool,
    /// A write from the writeback cache failed in this episode (logged once).
    lost_cached: AtomicBool,
}

impl Space {
    /// Watches the filesystem of `dir` with the default reserve.
    pub fn new(dir: &Path) -> io::Result<Space> {
        let space = layer_space(dir)?;
        Ok(Space {
            dir: dir.to_owned(),
            reserve: AtomicU64::new(space.reserve),
            sample: Mutex::new(Sample { at: None, available: space.available }),
            full: AtomicBool::new(false),
            lost_cached: AtomicBool::new(false),
        })
    }

    pub fn reserve(&self) -> u64 {
        self.reserve.load(Ordering::Relaxed)
    }

    pub fn set_reserve(&self, bytes: u64) {
        self.reserve.store(bytes, Ordering::Relaxed);
        self.lock().at = None;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sample> {
        self.sample.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Admits an operation a caller waits for that takes up to `need` new bytes, or refuses
    /// it with `ENOSPC` when that would leave less than the reserve (half of it when `small`).
    pub fn admit(&self, need: u64, small: bool) -> Result<()> {
        let reserve = self.reserve();
        let keep = if small { reserve / 2 } else { reserve };
        let wanted = keep.saturating_add(need);
        let mut sample = self.lock();
        let fresh = sample.at.is_some_and(|at| at.elapsed() < FRESH);
        if !fresh || sample.available < wanted {
            let st = statvfs(&self.dir)?;
            sample.available = st.f_bavail * st.f_frsize;
            sample.at = Some(Instant::now());
        }
        let available = sample.available;
        if available >= wanted {
            sample.available -= need;
            drop(sample);
            self.maybe_recovered(available, reserve);
            return Ok(());
        }
        drop(sample);
        if !self.full.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                layer = %self.dir.display(),
                available,
                need,
                reserve,
                "cowfs: ENOSPC: the layer's filesystem has {:.1} MiB available and cowfs keeps {:.1} MiB in reserve \
                 for writes the kernel has already accepted: writes that need new space are refused until space \
                 is freed",
                available as f64 / MIB as f64,
                reserve as f64 / MIB as f64
            );
        }
        Err(Error::NoSpace { available, reserve })
    }

    /// Counts `bytes` written without being admitted (from the writeback cache). While out
    /// of space, also looks whether space came back.
    pub fn spent(&self, bytes: u64) {
        let mut sample = self.lock();
        sample.available = sample.available.saturating_sub(bytes);
        if self.full.load(Ordering::Acquire) && sample.at.is_none_or(|at| at.elapsed() >= FRESH) {
            if let Ok(st) = statvfs(&self.dir) {
                sample.available = st.f_bavail * st.f_frsize;
                sample.at = Some(Instant::now());
                let available = sample.available;
                drop(sample);
                self.maybe_recovered(available, self.reserve());
            }
        }
    }

    /// Notes the outcome of an operation: an `ENOSPC` from the layer's filesystem starts an
    /// episode. `cached` says the data came from the kernel's writeback cache, so that the
    /// application will only learn of it at `fsync` or `close`.
    pub fn observe<T>(&self, result: Result<T>, cached: bool) -> Result<T> {
        if let Err(e) = &result {
            if e.errno() == libc::ENOSPC {
                if !self.full.swap(true, Ordering::AcqRel) && !cached {
                    tracing::warn!(layer = %self.dir.display(), "cowfs: ENOSPC: the layer's filesystem is full: {e}");
                }
                if cached && !self.lost_cached.swap(true, Ordering::AcqRel) {
                    tracing::error!(
                        layer = %self.dir.display(),
                        "cowfs: ENOSPC: the layer's filesystem is full and a write the kernel had already accepted \
                         (writeback cache) could not be stored; the application sees ENOSPC at fsync or close"
                    );
                }
            }
        }
        result
    }

    /// Ends an episode once there is clearly room again (a margin above the reserve, so that
    /// a filesystem hovering at the reserve does not flood the log).
    fn maybe_recovered(&self, available: u64, reserve: u64) {
        let margin = (reserve / 4).max(MIB);
        if available >= reserve.saturating_add(margin) && self.full.swap(false, Ordering::AcqRel) {
            self.lost_cached.store(false, Ordering::Release);
            tracing::info!(
                layer = %self.dir.display(),
                available,
                "cowfs: space available again: {} MiB above the reserve",
                (available - reserve) / MIB
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_reserve_is_a_twentieth_within_bounds() {
        assert_eq!(default_reserve(64 * MIB), 8 * MIB);
        assert_eq!(default_reserve(16 * MIB), 4 * MIB);
        assert_eq!(default_reserve(1 << 30), (1 << 30) / 20);
        assert_eq!(default_reserve(1 << 40), 256 * MIB);
    }

    #[test]
    fn admission_stops_at_the_reserve_and_overwrites_need_none() {
        let dir = tempfile::tempdir().unwrap();
        let space = Space::new(dir.path()).unwrap();
        let available = layer_space(dir.path()).unwrap().available;
        space.set_reserve(available / 2);
        space.admit(4096, false).unwrap();
        let err = space.admit(available, false).unwrap_err();
        assert_eq!(err.errno(), libc::ENOSPC);
        assert!(err.to_string().contains("reserve"), "{err}");
        // Small operations may use half of the reserve.
        space.set_reserve(available + available / 2);
        assert_eq!(space.admit(0, false).unwrap_err().errno(), libc::ENOSPC);
        space.admit(4096, true).unwrap();
        space.set_reserve(available * 3);
        assert_eq!(space.admit(0, true).unwrap_err().errno(), libc::ENOSPC);
        space.set_reserve(0);
        space.admit(0, false).unwrap();
    }
}
