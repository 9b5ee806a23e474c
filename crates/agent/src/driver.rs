//! Storage drivers: how a clone's data directory is made from an image, behind one trait.
//!
//! - `cowfs`: a layer directory over the shared image, served at the clone's data directory
//!   by a `thinclone mount` process. Making one costs a few KiB whatever the image's size.
//! - `reflink`: a copy whose files share the image's blocks (FICLONE), on filesystems with
//!   native copy-on-write (XFS with reflink=1, btrfs). Kernel speed, no FUSE in the data
//!   path; it needs the image and the clone on the same filesystem.
//! - `copy`: a plain full copy of the image, the baseline and fallback.
//!
//! A clone's directory (`clones/<name>/`) belongs to its driver, except for the agent's own
//! record (`clone.json`). Every driver presents the data directory at `clones/<name>/data`,
//! owned by the OS user `attach` is given (the clone's own uid) with mode 0700; nothing
//! else of the clone's directory is open to that user (cowfs's layer is root's, 0700).
//!
//! Every step is safe to interrupt with kill -9 and to run again: `create` and `reset` of the
//! copying drivers build the new tree aside (`data.new`) and swap it in with renames, and
//! [`Driver::recover`] finishes or undoes a swap a crash interrupted; cowfs's own stack
//! operations commit with one rename.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use api::Driver as Kind;
use sys::tree::CopyData;
use sys::User;

/// The data directory of a clone, whatever its driver.
pub fn data_dir(clone_dir: &Path) -> PathBuf {
    clone_dir.join("data")
}

/// A data directory made available by [`Driver::attach`] or [`Driver::adopt`].
#[derive(Debug)]
pub struct Attached {
    pub data_dir: PathBuf,
    /// The process serving it, if any (the cowfs mount).
    pub mount: Option<Mount>,
}

/// A cowfs mount process: our child, or one an earlier agent left running.
#[derive(Debug)]
pub enum Mount {
    Child(sys::Process),
    Adopted(i32),
}

impl Mount {
    pub fn pid(&self) -> i32 {
        match self {
            Mount::Child(p) => p.pid() as i32,
            Mount::Adopted(pid) => *pid,
        }
    }

    /// Whether the mount process still runs.
    pub fn is_running(&mut self) -> bool {
        match self {
            Mount::Child(p) => matches!(p.try_wait(), Ok(None)),
            Mount::Adopted(pid) => sys::procfs::is_alive(*pid),
        }
    }

    /// SIGTERM (a clean unmount), then SIGKILL after `timeout`.
    fn stop(self, timeout: Duration) -> io::Result<bool> {
        match self {
            Mount::Child(mut p) => {
                let (status, killed) = p.stop(libc::SIGTERM, timeout)?;
                Ok(status.success() && !killed)
            }
            Mount::Adopted(pid) => {
                // SAFETY: kill has no memory-safety preconditions; the pid was checked to be
                // a live mount of this clone when it was adopted.
                unsafe { libc::kill(pid, libc::SIGTERM) };
                if sys::wait::until(timeout, Duration::from_millis(5), || (!sys::procfs::is_alive(pid)).then_some(()))
                    .is_some()
                {
                    return Ok(true);
                }
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                sys::wait::until(Duration::from_secs(10), Duration::from_millis(5), || {
                    (!sys::procfs::is_alive(pid)).then_some(())
                });
                Ok(false)
            }
        }
    }
}

/// What a driver's failure was.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("{what}: the disk is full ({detail})")]
    DiskFull { what: String, detail: String },
    #[error("{what}: {detail}")]
    Failed { what: String, detail: String },
}

impl DriverError {
    fn from_io(what: &str, e: io::Error) -> DriverError {
        if e.raw_os_error() == Some(libc::ENOSPC) || e.kind() == io::ErrorKind::StorageFull {
            DriverError::DiskFull { what: what.into(), detail: e.to_string() }
        } else {
            DriverError::Failed { what: what.into(), detail: e.to_string() }
        }
    }

    fn from_program(what: &str, e: sys::Error) -> DriverError {
        if e.is_disk_full() {
            DriverError::DiskFull { what: what.into(), detail: e.to_string() }
        } else {
            DriverError::Failed { what: what.into(), detail: e.to_string() }
        }
    }
}

pub type Result<T, E = DriverError> = std::result::Result<T, E>;

fn io_ctx<T>(what: &str, r: io::Result<T>) -> Result<T> {
    r.map_err(|e| DriverError::from_io(what, e))
}

pub trait Driver: Send + Sync {
    fn kind(&self) -> Kind;

    /// Makes a clone's storage in `clone_dir` (which exists, and holds no storage and
    /// nothing still writing into it) from `image`.
    fn create(&self, image: &Path, clone_dir: &Path) -> Result<()>;

    /// Makes the clone's data directory usable, presented as owned by `owner`.
    fn attach(&self, image: &Path, clone_dir: &Path, owner: &User) -> Result<Attached>;

    /// [`Driver::attach`] for storage just made by [`Driver::create`], which has never been
    /// attached: nothing of an earlier attach can be left to clear first.
    fn attach_new(&self, image: &Path, clone_dir: &Path, owner: &User) -> Result<Attached> {
        self.attach(image, clone_dir, owner)
    }

    /// Takes over an attachment an earlier agent left in place (a live mount), if any.
    fn adopt(&self, _clone_dir: &Path) -> Option<Attached> {
        None
    }

    /// Undoes `attach`.
    fn detach(&self, clone_dir: &Path, attached: Attached) -> Result<()>;

    /// Lets go of a clone whose server stopped cleanly. Storage worth keeping attached (a
    /// mount, whose page cache makes the next start warm) is made durable and given back to
    /// be kept; anything else is detached, and `None` returned.
    fn park(&self, clone_dir: &Path, attached: Attached) -> Result<Option<Attached>> {
        self.detach(clone_dir, attached).map(|()| None)
    }

    /// Stops and removes whatever of this clone's storage an earlier agent left attached
    /// (a mount whose process lives or died), so that it can be attached afresh or removed.
    fn clean_leftovers(&self, _clone_dir: &Path) -> Result<()> {
        Ok(())
    }

    /// Whether an attachment still serves: the mount's process runs and answers.
    fn is_healthy(&self, _clone_dir: &Path, _attached: &mut Attached) -> bool {
        true
    }

    /// Returns a detached clone to the image's state.
    fn reset(&self, image: &Path, clone_dir: &Path) -> Result<()>;

    /// Finishes or undoes a `create` or `reset` that a crash interrupted, so that the clone
    /// has exactly one whole data directory again (or none, for a create). Idempotent.
    fn recover(&self, _clone_dir: &Path) -> Result<()> {
        Ok(())
    }

    /// Bytes the clone's storage occupies on disk beyond the image.
    fn stored_bytes(&self, clone_dir: &Path) -> io::Result<u64>;

    /// Captures the clone's files into the new directory `into` while nothing writes to
    /// them: its server is paused (`live`, storage attached) or stopped (storage detached).
    /// Returns the cowfs layer it froze.
    fn checkpoint(&self, image: &Path, clone_dir: &Path, into: &Path, live: bool) -> Result<Option<u64>>;

    /// Completes a checkpoint captured in `dir`, once the clone runs on again (work that need
    /// not pause it).
    fn finish_checkpoint(&self, dir: &Path) -> Result<()> {
        let _ = dir;
        Ok(())
    }

    /// Returns the clone's files to the checkpoint captured in `from` (and `layer`), while
    /// its storage is detached. Running it again after a crash finishes it.
    fn revert(&self, image: &Path, clone_dir: &Path, from: &Path, layer: Option<u64>) -> Result<()>;

    /// The disk a checkpoint keeps for itself: what neither the clone nor the image holds.
    fn checkpoint_bytes(&self, image: &Path, clone_dir: &Path, dir: &Path, layer: Option<u64>) -> io::Result<u64>;

    /// Makes a new clone's storage at `clone_dir` from checkpoint `checkpoint` (its
    /// directory, and its layer) of the clone at `origin_dir`, instead of from the image:
    /// cowfs shares the origin's frozen layers, reflink shares blocks, copy copies.
    fn branch(
        &self,
        image: &Path,
        origin_dir: &Path,
        checkpoint: &Path,
        layer: Option<u64>,
        clone_dir: &Path,
    ) -> Result<()>;

    /// Remakes a detached clone's storage from `image`, which may be another image than the
    /// one it was made from (a refresh): everything in `clone_dir` but the entries named in
    /// `keep` (its record) goes, checkpoints too, then [`Driver::create`] runs. Running it
    /// again after a crash finishes it.
    fn rebuild(&self, image: &Path, clone_dir: &Path, keep: &[&str]) -> Result<()> {
        self.clean_leftovers(clone_dir)?;
        // `create` takes the directory for a new clone's: copies a killed agent left
        // running into it (a copy driver's data.new, a checkpoint's spare) end first.
        stop_copies_into(&clone_dir.join("data.new"));
        stop_copies_into(&clone_dir.join("checkpoints"));
        let entries = io_ctx("listing the clone's storage", fs::read_dir(clone_dir))?;
        for entry in entries {
            let entry = io_ctx("listing the clone's storage", entry)?;
            if keep.iter().any(|k| entry.file_name() == *k) {
                continue;
            }
            let path = entry.path();
            let removed = if entry.file_type().is_ok_and(|t| t.is_dir()) {
                sys::tree::remove(&path)
            } else {
                fs::remove_file(&path)
            };
            io_ctx("removing the clone's old storage", removed)?;
        }
        self.create(image, clone_dir)
    }

    /// Deletes a detached clone's storage (its whole directory).
    fn destroy(&self, clone_dir: &Path) -> Result<()> {
        self.clean_leftovers(clone_dir)?;
        // A copy still writing into a checkpoint (its spare, made in the background) first.
        stop_copies_into(&clone_dir.join("checkpoints"));
        io_ctx("removing the clone's storage", sys::tree::remove(clone_dir))
    }
}

/// The driver of a kind, for clones of an engine whose commit directories are
/// `commit_dirs` ([`engine::Engine::commit_dirs`]; only cowfs treats them apart).
/// `writeback_cache` is [`Cowfs::writeback_cache`].
pub fn driver(
    kind: Kind,
    mount_program: &Path,
    commit_dirs: &'static [&'static str],
    writeback_cache: bool,
) -> Box<dyn Driver> {
    match kind {
        Kind::Cowfs => Box::new(Cowfs { program: mount_program.to_owned(), commit_dirs, writeback_cache }),
        Kind::Reflink => Box::new(CopyDriver { data: CopyData::Reflink }),
        Kind::Copy => Box::new(CopyDriver { data: CopyData::Copy }),
    }
}

/// cowfs: a layer directory over the image, mounted by a `thinclone mount` process: the
/// documented command line of the cowfs server (README, "Mounting a clone by hand").
pub struct Cowfs {
    /// The `thinclone` binary.
    pub program: PathBuf,
    /// Directories kept on the host's filesystem rather than in the layer (commit_dirs.rs).
    pub commit_dirs: &'static [&'static str],
    /// Mount with the kernel's writeback cache: the server's writes return from the page
    /// cache, as on a local filesystem, but a write the layer has no room for fails at the
    /// next `fsync` (for a database, a crash) instead of at `write(2)` (doc/SEMANTICS.md,
    /// "Full disks"). Off unless the agent is told (`--cowfs-writeback-cache`).
    pub writeback_cache: bool,
}

impl Cowfs {
    fn layer(clone_dir: &Path) -> PathBuf {
        clone_dir.join("layer")
    }

    fn pid_file(clone_dir: &Path) -> PathBuf {
        clone_dir.join("mount.pid")
    }

    fn log_file(clone_dir: &Path) -> PathBuf {
        clone_dir.join("mount.log")
    }

    /// The layer (root's own: only the mount process reads it) and the mount's log are
    /// private to root; a clone made before they were is made so at its next attach.
    fn make_private(clone_dir: &Path) -> io::Result<()> {
        fs::set_permissions(Self::layer(clone_dir), fs::Permissions::from_mode(0o700))?;
        match fs::set_permissions(Self::log_file(clone_dir), fs::Permissions::from_mode(0o600)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Starts the clone's mount process and waits until it serves.
    fn mount(&self, image: &Path, clone_dir: &Path, owner: &User) -> Result<Attached> {
        let data = data_dir(clone_dir);
        io_ctx("making the clone's layer private", Self::make_private(clone_dir))?;
        io_ctx(
            "finishing the placement of the clone's commit directories",
            crate::commit_dirs::finish(image, &Self::layer(clone_dir), clone_dir, self.commit_dirs),
        )?;
        io_ctx(
            "giving the clone's commit directories to its OS user",
            crate::commit_dirs::give_to(clone_dir, self.commit_dirs, owner.uid, owner.gid),
        )?;
        let log = Self::log_file(clone_dir);
        let process = sys::Program::new(&self.program)
            .arg("mount")
            .arg("--image")
            .arg(image)
            .arg("--layer")
            .arg(Self::layer(clone_dir))
            .arg(&data)
            // Without the kernel's writeback cache a write that needs space the disk does not
            // have fails at write(2), where the database reports it and goes on, rather than at
            // fsync, where it must stop (doc/SEMANTICS.md, "Full disks").
            .args((!self.writeback_cache).then_some("--no-writeback-cache"))
            // As numbers: a clone's own uid has no name.
            .arg("--owner")
            .arg(format!("{}:{}", owner.uid, owner.gid))
            // No set-user-id program or device file among a clone's files takes effect.
            .args(["--nosuid", "--nodev"])
            // Its own process group: a signal to the agent's group does not reach it, so
            // clones keep running across a restart of the agent.
            .own_process_group()
            .spawn_logged(&log)
            .map_err(|e| DriverError::from_program("starting the cowfs mount", e))?;
        let mut mount = Mount::Child(process);
        // Recorded at once: an agent killed from here on leaves a mount the next one finds.
        io_ctx(
            "recording the mount's pid",
            sys::crashsafe::replace_file(&Self::pid_file(clone_dir), mount.pid().to_string().as_bytes()),
        )?;
        let up = sys::wait::until(Duration::from_secs(30), Duration::from_millis(2), || {
            if cowfs::is_live_mount(&data) {
                return Some(true);
            }
            (!mount.is_running()).then_some(false)
        });
        match up {
            Some(true) => {}
            other => {
                if other.is_none() {
                    // Timed out: the mount is stopped before we say so.
                    let _ = mount.stop(Duration::from_secs(5));
                }
                let log = fs::read_to_string(&log).unwrap_or_default();
                let last = log.lines().rev().find(|l| l.contains("ERROR") || l.contains("error")).unwrap_or("");
                let what = if other.is_none() { "did not come up within 30 s" } else { "exited" };
                return Err(DriverError::Failed {
                    what: "mounting the clone's storage".into(),
                    detail: format!("the cowfs mount {what}: {}", last.trim()),
                });
            }
        }
        Ok(Attached { data_dir: data, mount: Some(mount) })
    }

    /// The pid of a live mount process serving this clone's layer, from its pid file.
    fn live_mount_pid(clone_dir: &Path) -> Option<i32> {
        let pid = sys::procfs::read_pid(&Self::pid_file(clone_dir))?;
        sys::procfs::is_live_process_of(pid, &Self::layer(clone_dir)).then_some(pid)
    }

    /// Every live mount process of this clone's layer: by its pid file, and by command line
    /// for one a crash caught before its pid file was written.
    fn mount_processes(clone_dir: &Path) -> Vec<i32> {
        let layer = Self::layer(clone_dir);
        let layer_arg = layer.to_string_lossy();
        let mut pids: Vec<i32> = sys::procfs::processes_under(&layer)
            .into_iter()
            .filter(|&pid| {
                sys::procfs::cmdline(pid)
                    .is_some_and(|args| args.windows(2).any(|w| w[0] == "--layer" && w[1] == layer_arg))
            })
            .chain(Self::live_mount_pid(clone_dir))
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }
}

impl Driver for Cowfs {
    fn kind(&self) -> Kind {
        Kind::Cowfs
    }

    fn create(&self, image: &Path, clone_dir: &Path) -> Result<()> {
        Self::make_mountpoint(clone_dir)?;
        // Opening the layer directory creates it: a manifest and an empty journal.
        cowfs::LayerStack::open(&Self::layer(clone_dir), image)
            .map_err(|e| DriverError::from_io("making the clone's layer", io::Error::other(e)))?;
        io_ctx("making the clone's layer private", Self::make_private(clone_dir))?;
        io_ctx(
            "placing the clone's commit directories",
            crate::commit_dirs::place(image, &Self::layer(clone_dir), clone_dir, self.commit_dirs),
        )
    }

    fn attach(&self, image: &Path, clone_dir: &Path, owner: &User) -> Result<Attached> {
        self.clean_leftovers(clone_dir)?;
        self.mount(image, clone_dir, owner)
    }

    fn attach_new(&self, image: &Path, clone_dir: &Path, owner: &User) -> Result<Attached> {
        self.mount(image, clone_dir, owner)
    }

    fn adopt(&self, clone_dir: &Path) -> Option<Attached> {
        let pid = Self::live_mount_pid(clone_dir)?;
        let data = data_dir(clone_dir);
        cowfs::is_live_mount(&data).then(|| Attached { data_dir: data, mount: Some(Mount::Adopted(pid)) })
    }

    fn detach(&self, clone_dir: &Path, attached: Attached) -> Result<()> {
        if let Some(mount) = attached.mount {
            let clean = io_ctx("stopping the cowfs mount", mount.stop(Duration::from_secs(30)))?;
            if !clean {
                tracing::warn!(clone_dir = %clone_dir.display(), "the cowfs mount did not stop cleanly; detaching it");
            }
        }
        self.clean_leftovers(clone_dir)
    }

    fn park(&self, clone_dir: &Path, mut attached: Attached) -> Result<Option<Attached>> {
        if self.is_healthy(clone_dir, &mut attached) {
            // Made durable as an unmount would: a kept mount killed later loses nothing.
            match cowfs::sync_mounted(&Self::layer(clone_dir), Duration::from_secs(60)) {
                Ok(()) => return Ok(Some(attached)),
                Err(e) => {
                    tracing::warn!(clone_dir = %clone_dir.display(), "stopping the mount instead of keeping it: {e}")
                }
            }
        }
        self.detach(clone_dir, attached).map(|()| None)
    }

    fn clean_leftovers(&self, clone_dir: &Path) -> Result<()> {
        for pid in Self::mount_processes(clone_dir) {
            tracing::info!(clone_dir = %clone_dir.display(), pid, "stopping a cowfs mount left running");
            io_ctx("stopping a leftover cowfs mount", Mount::Adopted(pid).stop(Duration::from_secs(30)))?;
        }
        let data = data_dir(clone_dir);
        io_ctx("detaching a dead cowfs mount", cowfs::unmount_stale(&data))?;
        io_ctx("removing the mount's pid file", sys::crashsafe::remove_file(&Self::pid_file(clone_dir)))?;
        Ok(())
    }

    fn is_healthy(&self, _clone_dir: &Path, attached: &mut Attached) -> bool {
        attached.mount.as_mut().is_some_and(Mount::is_running) && cowfs::is_live_mount(&attached.data_dir)
    }

    fn reset(&self, image: &Path, clone_dir: &Path) -> Result<()> {
        let mut stack = cowfs::LayerStack::open(&Self::layer(clone_dir), image)
            .map_err(|e| DriverError::from_io("opening the clone's layer", io::Error::other(e)))?;
        stack.reset().map_err(|e| DriverError::from_io("resetting the clone's layer", io::Error::other(e)))?;
        drop(stack);
        io_ctx(
            "placing the clone's commit directories afresh",
            crate::commit_dirs::place(image, &Self::layer(clone_dir), clone_dir, self.commit_dirs),
        )
    }

    fn stored_bytes(&self, clone_dir: &Path) -> io::Result<u64> {
        Ok(sys::tree::disk_usage(&Self::layer(clone_dir))? + crate::commit_dirs::disk_usage(clone_dir)?)
    }

    fn checkpoint(&self, image: &Path, clone_dir: &Path, into: &Path, live: bool) -> Result<Option<u64>> {
        let layer = Self::layer(clone_dir);
        let frozen = if live {
            // The mount freezes its writable layer and goes on over a new one: the server
            // keeps its open files.
            cowfs::checkpoint_mounted(&layer, CHECKPOINT_TIMEOUT)
                .map_err(|e| DriverError::from_io("freezing the clone's layer", e))?
        } else {
            let mut stack = cowfs::LayerStack::open(&layer, image)
                .map_err(|e| DriverError::from_io("opening the clone's layer", io::Error::other(e)))?;
            stack.checkpoint().map_err(|e| DriverError::from_io("freezing the clone's layer", io::Error::other(e)))?
        };
        io_ctx(
            "copying the clone's commit directories",
            crate::commit_dirs::capture(clone_dir, into, self.commit_dirs),
        )?;
        Ok(Some(frozen))
    }

    fn revert(&self, image: &Path, clone_dir: &Path, from: &Path, layer: Option<u64>) -> Result<()> {
        let Some(frozen) = layer else {
            return Err(DriverError::from_io(
                "reverting the clone's layer",
                io::Error::new(io::ErrorKind::NotFound, "the checkpoint names no layer"),
            ));
        };
        let mut stack = cowfs::LayerStack::open(&Self::layer(clone_dir), image)
            .map_err(|e| DriverError::from_io("opening the clone's layer", io::Error::other(e)))?;
        stack
            .revert_to(frozen)
            .map_err(|e| DriverError::from_io("reverting the clone's layer", io::Error::other(e)))?;
        drop(stack);
        io_ctx(
            "restoring the clone's commit directories",
            crate::commit_dirs::restore(clone_dir, from, self.commit_dirs),
        )
    }

    fn branch(
        &self,
        image: &Path,
        origin_dir: &Path,
        checkpoint: &Path,
        layer: Option<u64>,
        clone_dir: &Path,
    ) -> Result<()> {
        Self::make_mountpoint(clone_dir)?;
        io_ctx("making the clone's layer", self.branch_layers(image, origin_dir, layer, clone_dir))?;
        io_ctx("making the clone's layer private", Self::make_private(clone_dir))?;
        io_ctx(
            "copying the checkpoint's commit directories",
            crate::commit_dirs::restore(clone_dir, checkpoint, self.commit_dirs),
        )
    }

    fn checkpoint_bytes(&self, _image: &Path, clone_dir: &Path, dir: &Path, layer: Option<u64>) -> io::Result<u64> {
        let frozen = match layer {
            Some(id) => sys::tree::disk_usage(&cowfs::layer_path(&Self::layer(clone_dir), id))?,
            None => 0,
        };
        Ok(frozen + sys::tree::disk_usage(dir)?)
    }
}

impl Cowfs {
    fn make_mountpoint(clone_dir: &Path) -> Result<()> {
        let data = data_dir(clone_dir);
        match fs::create_dir(&data) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                return Err(DriverError::from_io("making the clone's mountpoint", e));
            }
            _ => {}
        }
        io_ctx("making the clone's mountpoint private", fs::set_permissions(&data, fs::Permissions::from_mode(0o700)))
    }

    fn branch_layers(&self, image: &Path, origin_dir: &Path, layer: Option<u64>, clone_dir: &Path) -> io::Result<()> {
        let Some(frozen) = layer else {
            return Err(io::Error::new(io::ErrorKind::NotFound, "the checkpoint names no layer"));
        };
        let lower = cowfs::layers_up_to(&Self::layer(origin_dir), frozen).map_err(io::Error::other)?;
        let mut stack = cowfs::LayerStack::open(&Self::layer(clone_dir), image).map_err(io::Error::other)?;
        stack.build_on(lower).map_err(io::Error::other)
    }
}

/// How long a mount may take to freeze its writable layer (it syncs it first).
const CHECKPOINT_TIMEOUT: Duration = Duration::from_secs(120);

/// Ends whatever still copies into `dir`: a `cp` of an agent that was killed outlives it, and
/// would go on writing into the directory being removed.
pub(crate) fn stop_copies_into(dir: &Path) {
    for pid in sys::procfs::processes_under(dir) {
        tracing::info!(pid, dir = %dir.display(), "stopping a copy left running by an earlier agent");
        // SAFETY: kill has no memory-safety preconditions; the process's command line names
        // this clone's half-made copy.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        sys::wait::until(Duration::from_secs(10), Duration::from_millis(5), || {
            (!sys::procfs::is_alive(pid)).then_some(())
        });
    }
}

/// How long after a revert its background work (the old files' removal, a new spare)
/// waits: the clone's server starts meanwhile.
const BACKGROUND_DELAY: Duration = Duration::from_secs(5);

/// The name, with a suffix, of a reflink clone's files set aside by a revert.
const DISCARDED: &str = "data.discarded-";

/// Makes `spare` in a reflink checkpoint's directory: a second copy of its files, which a
/// revert renames into place (two renames, whatever the size) and which is then made again.
fn make_spare(checkpoint: &Path) -> Result<(), sys::Error> {
    let next = checkpoint.join("spare.new");
    stop_copies_into(&next);
    sys::tree::remove(&next).map_err(sys::Error::Io)?;
    sys::tree::copy(&checkpoint.join("data"), &next, CopyData::Reflink, None)?;
    sys::crashsafe::rename(&next, &checkpoint.join("spare")).map_err(sys::Error::Io)
}

/// reflink and copy: a tree copied from the image, sharing its blocks (reflink) or not.
pub struct CopyDriver {
    pub data: CopyData,
}

impl CopyDriver {
    /// Builds a fresh copy of `image` (or of a checkpoint's files) at `data.new` and swaps it
    /// in for `data`:
    /// `data` → `data.old`, `data.new` → `data`, then `data.old` is removed. A crash at any
    /// point leaves a state that [`Driver::recover`] completes.
    ///
    /// `new_clone`: the clone's directory was made just now, by a create that found no
    /// record of it, so no copy of an earlier agent can be writing there (one that was
    /// killed during a create left a record, and its recovery stopped the copy). Looking
    /// for one reads every process's command line, a few milliseconds saved from each
    /// clone's time to ready.
    fn copy_in(&self, image: &Path, clone_dir: &Path, what: &str, new_clone: bool) -> Result<()> {
        let fresh = clone_dir.join("data.new");
        if !new_clone {
            stop_copies_into(&fresh);
        }
        io_ctx(what, sys::tree::remove(&fresh))?;
        if self.data == CopyData::Reflink {
            // Before the copy: its files inherit how they are to be unshared.
            let set = io_ctx(what, crate::reflink::prepare_clone_dir(clone_dir))?;
            tracing::debug!(clone_dir = %clone_dir.display(), ?set, "prepared for page-sized copy-on-write");
        }
        sys::tree::copy(image, &fresh, self.data, None).map_err(|e| DriverError::from_program(what, e))?;
        io_ctx(what, sys::crashsafe::swap_in_dir(&fresh, &data_dir(clone_dir), &clone_dir.join("data.old")))
    }
}

impl Driver for CopyDriver {
    fn kind(&self) -> Kind {
        match self.data {
            CopyData::Copy => Kind::Copy,
            CopyData::Reflink => Kind::Reflink,
        }
    }

    fn create(&self, image: &Path, clone_dir: &Path) -> Result<()> {
        self.copy_in(image, clone_dir, "copying the image", true)
    }

    fn attach(&self, _image: &Path, clone_dir: &Path, owner: &User) -> Result<Attached> {
        let data = data_dir(clone_dir);
        // Ownership is metadata: changing it does not unshare any block. The walk never
        // follows a symlink, so links the clone's user planted lead nowhere.
        io_ctx("giving the clone's files to its OS user", sys::tree::chown(&data, owner.uid, owner.gid))?;
        io_ctx("making the clone's files private", fs::set_permissions(&data, fs::Permissions::from_mode(0o700)))?;
        Ok(Attached { data_dir: data, mount: None })
    }

    fn adopt(&self, clone_dir: &Path) -> Option<Attached> {
        let data = data_dir(clone_dir);
        data.is_dir().then_some(Attached { data_dir: data, mount: None })
    }

    fn detach(&self, _clone_dir: &Path, _attached: Attached) -> Result<()> {
        Ok(())
    }

    fn reset(&self, image: &Path, clone_dir: &Path) -> Result<()> {
        self.copy_in(image, clone_dir, "copying the image afresh", false)
    }

    fn recover(&self, clone_dir: &Path) -> Result<()> {
        let data = data_dir(clone_dir);
        let fresh = clone_dir.join("data.new");
        let old = clone_dir.join("data.old");
        // A revert that moved the clone's files aside and was stopped before the spare copy
        // took their place: they come back (the revert runs again).
        let discarded: Vec<PathBuf> = fs::read_dir(clone_dir)
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with(DISCARDED))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default();
        for dir in discarded {
            if !data.exists() {
                io_ctx("undoing an interrupted revert", sys::crashsafe::rename(&dir, &data))?;
            } else {
                io_ctx("removing a reverted clone's old files", sys::tree::remove(&dir))?;
            }
        }
        if !data.exists() && old.exists() {
            if fresh.exists() {
                // Crashed between the two renames: the new copy was complete.
                io_ctx("finishing an interrupted reset", sys::crashsafe::rename(&fresh, &data))?;
            } else {
                io_ctx("undoing an interrupted reset", sys::crashsafe::rename(&old, &data))?;
            }
        }
        // A copy in progress is never complete: it is thrown away, once the `cp` that an
        // agent killed meanwhile left writing into it has stopped.
        stop_copies_into(&fresh);
        io_ctx("removing an interrupted copy", sys::tree::remove(&fresh))?;
        io_ctx("removing the replaced copy", sys::tree::remove(&old))
    }

    fn stored_bytes(&self, clone_dir: &Path) -> io::Result<u64> {
        match self.data {
            CopyData::Copy => sys::tree::disk_usage(&data_dir(clone_dir)),
            // Only the bytes no longer shared with the image (see reflink.rs).
            CopyData::Reflink => crate::reflink::exclusive_bytes(&data_dir(clone_dir)),
        }
    }

    fn checkpoint(&self, _image: &Path, clone_dir: &Path, into: &Path, _live: bool) -> Result<Option<u64>> {
        // reflink: each file shares the clone's blocks, so the copy costs metadata only.
        sys::tree::copy(&data_dir(clone_dir), &into.join("data"), self.data, None)
            .map_err(|e| DriverError::from_program("copying the clone's files", e))?;
        Ok(None)
    }

    fn finish_checkpoint(&self, dir: &Path) -> Result<()> {
        if self.data == CopyData::Reflink {
            make_spare(dir).map_err(|e| DriverError::from_program("copying the checkpoint's files", e))?;
        }
        Ok(())
    }

    fn revert(&self, _image: &Path, clone_dir: &Path, from: &Path, _layer: Option<u64>) -> Result<()> {
        let what = "copying the checkpoint's files back";
        let spare = from.join("spare");
        if self.data == CopyData::Reflink && spare.is_dir() {
            // Two renames whatever the size: the checkpoint's spare copy becomes the clone's
            // files. The old files go, and a new spare is made, in the background.
            let data = data_dir(clone_dir);
            let discarded = clone_dir.join(format!("{DISCARDED}{}", std::process::id()));
            io_ctx(what, sys::tree::remove(&discarded))?;
            if data.exists() {
                io_ctx(what, sys::crashsafe::rename(&data, &discarded))?;
            }
            io_ctx(what, sys::crashsafe::rename(&spare, &data))?;
            let checkpoint = from.to_owned();
            std::thread::spawn(move || {
                // After the clone's server has started: on the same filesystem, this work
                // would slow its start.
                std::thread::sleep(BACKGROUND_DELAY);
                if let Err(e) = sys::tree::remove(&discarded) {
                    tracing::warn!("removing a reverted clone's old files {}: {e}", discarded.display());
                }
                if let Err(e) = make_spare(&checkpoint) {
                    // The next revert to it copies instead.
                    tracing::info!("making a spare copy of checkpoint {}: {e}", checkpoint.display());
                }
            });
            return Ok(());
        }
        let fresh = clone_dir.join("data.new");
        stop_copies_into(&fresh);
        io_ctx(what, sys::tree::remove(&fresh))?;
        sys::tree::copy(&from.join("data"), &fresh, self.data, None).map_err(|e| DriverError::from_program(what, e))?;
        io_ctx(what, sys::crashsafe::swap_in_dir(&fresh, &data_dir(clone_dir), &clone_dir.join("data.old")))
    }

    fn branch(
        &self,
        _image: &Path,
        _origin_dir: &Path,
        checkpoint: &Path,
        _layer: Option<u64>,
        clone_dir: &Path,
    ) -> Result<()> {
        self.copy_in(&checkpoint.join("data"), clone_dir, "copying the checkpoint's files", true)
    }

    fn checkpoint_bytes(&self, image: &Path, clone_dir: &Path, dir: &Path, _layer: Option<u64>) -> io::Result<u64> {
        match self.data {
            CopyData::Copy => sys::tree::disk_usage(dir),
            // Its two copies share their blocks with each other: counted once, less what the
            // clone and the image still hold too.
            CopyData::Reflink => crate::reflink::own_bytes(&dir.join("data"), &[&data_dir(clone_dir), image]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_driver_copies_resets_recovers_and_destroys() {
        let image = tempfile::tempdir().unwrap();
        fs::write(image.path().join("f"), "image").unwrap();
        let clones = tempfile::tempdir().unwrap();
        let clone = clones.path().join("c");
        fs::create_dir(&clone).unwrap();
        let driver = CopyDriver { data: CopyData::Copy };
        driver.create(image.path(), &clone).unwrap();
        fs::write(data_dir(&clone).join("f"), "changed").unwrap();
        assert!(driver.stored_bytes(&clone).unwrap() > 0);
        driver.reset(image.path(), &clone).unwrap();
        assert_eq!(fs::read_to_string(data_dir(&clone).join("f")).unwrap(), "image");

        // A crash between the renames of a reset: data.old and a complete data.new.
        fs::write(data_dir(&clone).join("f"), "changed").unwrap();
        fs::rename(data_dir(&clone), clone.join("data.old")).unwrap();
        sys::tree::copy(image.path(), &clone.join("data.new"), CopyData::Copy, None).unwrap();
        driver.recover(&clone).unwrap();
        assert_eq!(fs::read_to_string(data_dir(&clone).join("f")).unwrap(), "image");
        assert!(!clone.join("data.old").exists() && !clone.join("data.new").exists());

        // A crash during the copy: a partial data.new is thrown away, data stays.
        fs::create_dir(clone.join("data.new")).unwrap();
        driver.recover(&clone).unwrap();
        assert!(!clone.join("data.new").exists());
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
        fs::create_dir(&clone).unwrap();
        let driver = Cowfs { program: "/nonexistent".into(), commit_dirs: &[], writeback_cache: false };
        driver.create(image.path(), &clone).unwrap();
        // Creating again (a retried create) is harmless.
        driver.create(image.path(), &clone).unwrap();
        assert!(data_dir(&clone).is_dir());
        let stored = driver.stored_bytes(&clone).unwrap();
        assert!(stored < 64 << 10, "a fresh layer takes {stored} bytes");
        driver.reset(image.path(), &clone).unwrap();
        driver.destroy(&clone).unwrap();
        assert!(!clone.exists());
    }
}
