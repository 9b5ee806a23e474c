//! The layer directory: the stack of layers of one clone, and the constant-time operations on
//! it (checkpoint, revert, reset).
//!
//! # On-disk layout
//!
//! ```text
//! LAYER_DIR/
//!   stack.json          {"format":1,"block_size":8192,"image":"/abs/image","layers":[1,4,7]}
//!                       the layers bottom to top; the last one is writable, the others frozen
//!   lock                flock(2)ed by whoever uses the stack: a mount, or a stack operation
//!   control             a mount's control socket (control.rs), while it runs
//!   layers/<id>/
//!     journal           namespace and attribute changes (journal.rs)
//!     data/<ino>        sparse data file of inode <ino>: its length is the file's size and
//!                       every byte this layer owns sits at its own offset
//!     data/<ino>.map    block map (blockmap.rs), present while layers beneath show through
//!   trash/              layers being deleted in the background
//! ```
//!
//! `stack.json` is only ever replaced whole (crashsafe.rs), so checkpoint, revert (to the last
//! checkpoint or to any earlier one) and reset each commit with one rename and cost the same
//! whatever the size of the layers. A mounted stack is checkpointed by the mount itself
//! (`CowFs::checkpoint_live`), the only holder of its lock. Layer
//! directories that `stack.json` does not name are leftovers of an interrupted operation and
//! are moved to `trash/` when the stack is opened.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::journal::Journal;
use crate::BLOCK_SIZE;
use sys::crashsafe;

const FORMAT: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Manifest {
    format: u32,
    block_size: u64,
    image: PathBuf,
    /// Frozen layers of other layer directories, bottom to top, under this stack's own: a
    /// branch made from another stack's checkpoint reads them and never changes them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    lower: Vec<PathBuf>,
    layers: Vec<u64>,
}

/// The directory of layer `id` of the layer directory `dir`, for reading a frozen layer
/// without opening the stack (its mount holds the lock): frozen layers never change.
pub fn layer_path(dir: &Path, id: u64) -> PathBuf {
    dir.join("layers").join(format!("{id:06}"))
}

/// The directories of the layers of the layer directory `dir` up to and including its frozen
/// layer `id`, bottom to top (the layers it borrows first): what a stack built on that
/// checkpoint reads (see [`LayerStack::build_on`]). Read without the stack's lock, which its
/// mount holds: `stack.json` is only ever replaced whole, and frozen layers never change.
pub fn layers_up_to(dir: &Path, id: u64) -> Result<Vec<PathBuf>> {
    let path = dir.join("stack.json");
    let manifest: Manifest =
        serde_json::from_slice(&fs::read(&path)?).map_err(|e| Error::Corrupt(format!("{}: {e}", path.display())))?;
    let frozen = &manifest.layers[..manifest.layers.len().saturating_sub(1)];
    let Some(at) = frozen.iter().position(|&f| f == id) else {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "layer {id} is not a checkpoint of layer directory {} (its frozen layers are {frozen:?})",
                dir.display()
            ),
        )
        .into());
    };
    Ok(manifest.lower.iter().cloned().chain(frozen[..=at].iter().map(|&f| layer_path(dir, f))).collect())
}

/// An open, locked layer directory.
pub struct LayerStack {
    dir: PathBuf,
    manifest: Manifest,
    _lock: File,
}

/// Disk use of a layer directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Bytes the layer directory really occupies on disk (allocated blocks, as `du` counts).
    pub stored_bytes: u64,
    /// The number of layers, the writable one included.
    pub layers: usize,
}

impl LayerStack {
    /// Opens the layer directory `dir` over `image`, creating it when it does not exist or is
    /// empty. Fails when another process (a mount) holds the directory, or when it was made
    /// over a different image.
    pub fn open(dir: &Path, image: &Path) -> Result<LayerStack> {
        let image = fs::canonicalize(image)
            .map_err(|e| io::Error::new(e.kind(), format!("image directory {}: {e}", image.display())))?;
        if !fs::metadata(&image)?.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("image {} is not a directory", image.display()),
            )
            .into());
        }
        fs::create_dir_all(dir)?;
        let dir = fs::canonicalize(dir)?;
        if dir.starts_with(&image) {
            return Err(Error::Invalid);
        }
        let lock = lock(&dir)?;
        let manifest_path = dir.join("stack.json");
        let manifest = match fs::read(&manifest_path) {
            Ok(bytes) => {
                let manifest: Manifest = serde_json::from_slice(&bytes)
                    .map_err(|e| Error::Corrupt(format!("{}: {e}", manifest_path.display())))?;
                if manifest.format != FORMAT || manifest.block_size != BLOCK_SIZE {
                    return Err(Error::Corrupt(format!(
                        "{}: format {} with block size {} is not supported",
                        manifest_path.display(),
                        manifest.format,
                        manifest.block_size
                    )));
                }
                if manifest.image != image {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "layer directory {} was made over image {}, not {}",
                            dir.display(),
                            manifest.image.display(),
                            image.display()
                        ),
                    )
                    .into());
                }
                manifest
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(dir.join("layers"))?;
                fs::create_dir_all(dir.join("trash"))?;
                let manifest =
                    Manifest { format: FORMAT, block_size: BLOCK_SIZE, image, lower: vec![], layers: vec![] };
                let mut stack = LayerStack { dir, manifest, _lock: lock };
                let id = stack.new_layer()?;
                stack.manifest.layers.push(id);
                stack.commit()?;
                return Ok(stack);
            }
            Err(e) => return Err(e.into()),
        };
        let stack = LayerStack { dir, manifest, _lock: lock };
        stack.collect_garbage()?;
        Ok(stack)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn image(&self) -> &Path {
        &self.manifest.image
    }

    /// The directories of the layers, bottom to top (borrowed ones first); the last one is
    /// writable.
    pub fn layer_dirs(&self) -> Vec<PathBuf> {
        self.manifest.lower.iter().cloned().chain(self.manifest.layers.iter().map(|id| self.layer_dir(*id))).collect()
    }

    /// The frozen layers of other stacks this one is built on, bottom to top.
    pub fn lower(&self) -> &[PathBuf] {
        &self.manifest.lower
    }

    /// Builds this stack, which must be new (one empty writable layer, no checkpoint), on
    /// the frozen layers of another stack over the same image: `lower` are their
    /// directories, bottom to top (see [`layer_path`]). The result shows that stack's state
    /// at its top-most frozen layer given. Those layers must not change or go while this
    /// stack exists; their owner's keeper sees to that.
    pub fn build_on(&mut self, lower: Vec<PathBuf>) -> Result<()> {
        if !self.manifest.lower.is_empty() || self.manifest.layers.len() != 1 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("layer directory {} is not new: it cannot be built on other layers", self.dir.display()),
            )
            .into());
        }
        for dir in &lower {
            if !dir.join("journal").is_file() || !dir.join("data").is_dir() {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{} is not a layer (no journal or data directory)", dir.display()),
                )
                .into());
            }
        }
        self.manifest.lower = lower;
        if let Err(e) = self.commit() {
            self.manifest.lower.clear();
            return Err(e);
        }
        Ok(())
    }

    /// Freezes the writable layer and starts a new, empty one over it. Returns the id of the
    /// layer frozen. For a mounted stack, see [`crate::CowFs::checkpoint_live`].
    pub fn checkpoint(&mut self) -> Result<u64> {
        let id = self.new_layer()?;
        self.push_layer(id)
    }

    /// Drops the writable layer: the tree returns to the state of the last checkpoint (or of
    /// the image, when there is none).
    pub fn revert(&mut self) -> Result<()> {
        let id = self.new_layer()?;
        let mut layers = self.manifest.layers.clone();
        let old = layers.pop();
        layers.push(id);
        self.replace_layers(layers)?;
        self.discard(old.into_iter())
    }

    /// Returns the tree to the state of checkpoint `id` (a frozen layer of the stack, as
    /// [`LayerStack::checkpoint`] or [`crate::CowFs::checkpoint_live`] returned it): the layers
    /// up to and including `id` stay, a new empty writable layer goes over them, and the layers
    /// above `id` are dropped. One rename of `stack.json`, as for [`LayerStack::revert`].
    pub fn revert_to(&mut self, id: u64) -> Result<()> {
        let frozen = self.frozen_ids();
        let Some(at) = frozen.iter().position(|&f| f == id) else {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "layer {id} is not a checkpoint of layer directory {} (its frozen layers are {frozen:?})",
                    self.dir.display()
                ),
            )
            .into());
        };
        let new = self.new_layer()?;
        let mut layers = self.manifest.layers.clone();
        let old = layers.split_off(at + 1);
        layers.push(new);
        self.replace_layers(layers)?;
        self.discard(old.into_iter())
    }

    /// Drops every layer, and the borrowed ones: the tree returns to the state of the image.
    pub fn reset(&mut self) -> Result<()> {
        let id = self.new_layer()?;
        let lower = std::mem::take(&mut self.manifest.lower);
        let old = match self.replace_layers(vec![id]) {
            Ok(old) => old,
            Err(e) => {
                self.manifest.lower = lower;
                return Err(e);
            }
        };
        self.discard(old.into_iter())
    }

    /// The number of checkpoints (frozen layers).
    pub fn checkpoints(&self) -> usize {
        self.manifest.layers.len() - 1
    }

    /// The ids of the frozen layers, bottom to top (the writable layer is not among them).
    pub fn frozen_ids(&self) -> Vec<u64> {
        let layers = &self.manifest.layers;
        layers[..layers.len() - 1].to_vec()
    }

    /// The id of the writable layer.
    pub fn writable_id(&self) -> u64 {
        *self.manifest.layers.last().expect("a layer stack always has a writable layer")
    }

    pub fn usage(&self) -> io::Result<Usage> {
        Ok(Usage { stored_bytes: sys::tree::disk_usage(&self.dir)?, layers: self.manifest.layers.len() })
    }

    /// The bytes one layer of the stack (frozen or writable) occupies on disk: allocated
    /// blocks, as [`LayerStack::usage`] counts them.
    pub fn layer_bytes(&self, id: u64) -> io::Result<u64> {
        if !self.manifest.layers.contains(&id) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("layer {id} is not a layer of layer directory {}", self.dir.display()),
            ));
        }
        sys::tree::disk_usage(&self.layer_dir(id))
    }

    pub(crate) fn layer_dir(&self, id: u64) -> PathBuf {
        layer_path(&self.dir, id)
    }

    /// Puts layer `id` (made by [`LayerStack::new_layer`]) on top of the stack as the new
    /// writable layer, with one durable rename of `stack.json`. Returns the id of the layer it
    /// froze. On failure the stack is as it was in memory; on disk, `stack.json` is the old one
    /// or (when only the final directory sync failed) the new one, both valid.
    pub(crate) fn push_layer(&mut self, id: u64) -> Result<u64> {
        let frozen = self.writable_id();
        let mut layers = self.manifest.layers.clone();
        layers.push(id);
        self.replace_layers(layers)?;
        Ok(frozen)
    }

    /// Gives up a layer made by [`LayerStack::new_layer`] that was never pushed: it goes to
    /// the trash (or, should that fail, to the next opening of the stack, which collects it).
    pub(crate) fn abandon(&self, id: u64) {
        if self.manifest.layers.contains(&id) {
            return;
        }
        if let Err(e) = self.discard(std::iter::once(id)) {
            tracing::warn!(layer = id, "could not drop an unused layer: {e}");
        }
    }

    /// Makes `layers` the stack, in memory and in `stack.json`; on failure, the stack stays
    /// as it was in memory. Returns the old list.
    fn replace_layers(&mut self, layers: Vec<u64>) -> Result<Vec<u64>> {
        let old = std::mem::replace(&mut self.manifest.layers, layers);
        if let Err(e) = self.commit() {
            self.manifest.layers = old;
            return Err(e);
        }
        Ok(old)
    }

    /// Makes a new, empty layer directory that `stack.json` does not name yet.
    pub(crate) fn new_layer(&self) -> Result<u64> {
        let id = fs::read_dir(self.dir.join("layers"))?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
            .chain(self.manifest.layers.iter().copied())
            .max()
            .unwrap_or(0)
            + 1;
        let dir = self.layer_dir(id);
        fs::create_dir(&dir)?;
        fs::create_dir(dir.join("data"))?;
        Journal::create(&dir.join("journal"))?;
        crashsafe::fsync_dir(&dir)?;
        crashsafe::fsync_parent(&dir)?;
        Ok(id)
    }

    fn commit(&self) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(&self.manifest).map_err(io::Error::other)?;
        crashsafe::replace_file(&self.dir.join("stack.json"), &bytes)?;
        Ok(())
    }

    fn discard(&self, ids: impl Iterator<Item = u64>) -> Result<()> {
        for id in ids {
            let trash = self.dir.join("trash").join(format!("{id:06}"));
            fs::rename(self.layer_dir(id), &trash)?;
        }
        self.empty_trash();
        Ok(())
    }

    /// Moves layers that the manifest does not name to the trash, and empties it.
    fn collect_garbage(&self) -> Result<()> {
        let live: HashSet<String> = self.manifest.layers.iter().map(|id| format!("{id:06}")).collect();
        for entry in fs::read_dir(self.dir.join("layers"))? {
            let entry = entry?;
            let name = entry.file_name();
            if !live.contains(name.to_string_lossy().as_ref()) {
                tracing::info!(layer = ?name, "removing a layer left over by an interrupted operation");
                fs::rename(entry.path(), self.dir.join("trash").join(&name))?;
            }
        }
        self.empty_trash();
        Ok(())
    }

    /// Deletes the trash in the background: deleting a large layer takes time, dropping it
    /// from the stack does not.
    fn empty_trash(&self) {
        let trash = self.dir.join("trash");
        let doomed: Vec<PathBuf> = match fs::read_dir(&trash) {
            Ok(entries) => entries.filter_map(|e| Some(e.ok()?.path())).collect(),
            Err(_) => return,
        };
        if doomed.is_empty() {
            return;
        }
        std::thread::spawn(move || {
            for path in doomed {
                if let Err(e) = fs::remove_dir_all(&path) {
                    tracing::warn!(path = %path.display(), "could not delete a dropped layer: {e}");
                }
            }
        });
    }
}

fn lock(dir: &Path) -> Result<File> {
    let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(dir.join("lock"))?;
    // A lock just released can still be held for a moment by a child that another thread
    // forked and has not yet exec'd (it shares the descriptor until then), so a busy lock is
    // retried for a short while before it counts as another user's.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    // SAFETY: flock on a file descriptor we own.
    while unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
            continue;
        }
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(io::Error::new(
                io::ErrorKind::ResourceBusy,
                format!("layer directory {} is in use by another process (a mount?)", dir.display()),
            )
            .into());
        }
        return Err(e.into());
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_revert_reset_change_the_stack() {
        let image = tempfile::tempdir().unwrap();
        let layers = tempfile::tempdir().unwrap();
        let mut stack = LayerStack::open(layers.path(), image.path()).unwrap();
        assert_eq!(stack.layer_dirs().len(), 1);
        stack.checkpoint().unwrap();
        stack.checkpoint().unwrap();
        let before = stack.layer_dirs();
        assert_eq!(before.len(), 3);
        stack.revert().unwrap();
        let after = stack.layer_dirs();
        assert_eq!(after[..2], before[..2]);
        assert_ne!(after[2], before[2]);
        stack.reset().unwrap();
        assert_eq!(stack.layer_dirs().len(), 1);
        assert_eq!(stack.checkpoints(), 0);
        drop(stack);

        let stack = LayerStack::open(layers.path(), image.path()).unwrap();
        assert_eq!(stack.layer_dirs().len(), 1);
    }

    #[test]
    fn revert_to_keeps_the_layers_up_to_a_checkpoint() {
        let image = tempfile::tempdir().unwrap();
        let layers = tempfile::tempdir().unwrap();
        let mut stack = LayerStack::open(layers.path(), image.path()).unwrap();
        assert_eq!(stack.frozen_ids(), Vec::<u64>::new());
        let first = stack.writable_id();
        assert_eq!(stack.checkpoint().unwrap(), first);
        let second = stack.checkpoint().unwrap();
        let third = stack.checkpoint().unwrap();
        assert_eq!(stack.frozen_ids(), [first, second, third]);
        let dirs = stack.layer_dirs();
        std::fs::write(dirs[1].join("data/9"), vec![1u8; 64 << 10]).unwrap();
        assert!(stack.layer_bytes(second).unwrap() >= 64 << 10);
        assert!(stack.layer_bytes(first).unwrap() < 64 << 10);

        for wrong in [stack.writable_id(), 999] {
            let err = stack.revert_to(wrong).unwrap_err();
            assert!(err.to_string().contains(&format!("layer {wrong} is not a checkpoint")), "{err}");
        }
        assert!(stack.layer_bytes(999).is_err());
        assert_eq!(stack.layer_dirs(), dirs, "a refused revert changed the stack");

        stack.revert_to(second).unwrap();
        assert_eq!(stack.frozen_ids(), [first, second]);
        let after = stack.layer_dirs();
        assert_eq!(after[..2], dirs[..2]);
        assert!(!dirs[2..].contains(&after[2]), "the new writable layer is not new");
        drop(stack);

        let stack = LayerStack::open(layers.path(), image.path()).unwrap();
        assert_eq!(stack.frozen_ids(), [first, second]);
        assert_eq!(stack.layer_dirs(), after);
    }

    #[test]
    fn a_second_user_is_refused() {
        let image = tempfile::tempdir().unwrap();
        let layers = tempfile::tempdir().unwrap();
        let _stack = LayerStack::open(layers.path(), image.path()).unwrap();
        let err = LayerStack::open(layers.path(), image.path()).err().unwrap();
        assert!(err.to_string().contains("in use"), "{err}");
    }

    #[test]
    fn another_image_is_refused() {
        let image = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let layers = tempfile::tempdir().unwrap();
        drop(LayerStack::open(layers.path(), image.path()).unwrap());
        let err = LayerStack::open(layers.path(), other.path()).err().unwrap();
        assert!(err.to_string().contains("was made over image"), "{err}");
    }
}
