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
//!   layers/<id>/
//!     journal           namespace and attribute changes (journal.rs)
//!     data/<ino>        sparse data file of inode <ino>: its length is the file's size and
//!                       every byte this layer owns sits at its own offset
//!     data/<ino>.map    block map (blockmap.rs), present while layers beneath show through
//!   trash/              layers being deleted in the background
//! ```
//!
//! `stack.json` is only ever replaced whole (crashsafe.rs), so checkpoint, revert and reset
//! each commit with one rename and cost the same whatever the size of the layers. Layer
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
    layers: Vec<u64>,
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
                let manifest = Manifest { format: FORMAT, block_size: BLOCK_SIZE, image, layers: vec![] };
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

    /// The directories of the layers, bottom to top; the last one is writable.
    pub fn layer_dirs(&self) -> Vec<PathBuf> {
        self.manifest.layers.iter().map(|id| self.layer_dir(*id)).collect()
    }

    /// Freezes the writable layer and starts a new, empty one over it.
    pub fn checkpoint(&mut self) -> Result<()> {
        let id = self.new_layer()?;
        self.manifest.layers.push(id);
        self.commit()
    }

    /// Drops the writable layer: the tree returns to the state of the last checkpoint (or of
    /// the image, when there is none).
    pub fn revert(&mut self) -> Result<()> {
        let id = self.new_layer()?;
        let old = self.manifest.layers.pop();
        self.manifest.layers.push(id);
        self.commit()?;
        self.discard(old.into_iter())
    }

    /// Drops every layer: the tree returns to the state of the image.
    pub fn reset(&mut self) -> Result<()> {
        let id = self.new_layer()?;
        let old = std::mem::replace(&mut self.manifest.layers, vec![id]);
        self.commit()?;
        self.discard(old.into_iter())
    }

    /// The number of checkpoints (frozen layers).
    pub fn checkpoints(&self) -> usize {
        self.manifest.layers.len() - 1
    }

    pub fn usage(&self) -> io::Result<Usage> {
        Ok(Usage { stored_bytes: sys::tree::disk_usage(&self.dir)?, layers: self.manifest.layers.len() })
    }

    fn layer_dir(&self, id: u64) -> PathBuf {
        self.dir.join("layers").join(format!("{id:06}"))
    }

    fn new_layer(&self) -> Result<u64> {
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
