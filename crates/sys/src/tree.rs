//! Walks of directory trees: sizes, disk use, ownership, removal and copies.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use crate::{Program, User};

/// The logical size of a tree: the bytes of its regular files and how many there are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Size {
    pub bytes: u64,
    pub files: u64,
}

/// Adds up a tree's regular files. Entries that vanish during the walk are skipped.
pub fn size(path: &Path) -> Size {
    let mut total = Size::default();
    let mut todo = vec![path.to_owned()];
    while let Some(dir) = todo.pop() {
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => todo.push(entry.path()),
                Ok(m) if m.is_file() => {
                    total.bytes += m.len();
                    total.files += 1;
                }
                _ => {}
            }
        }
    }
    total
}

/// Bytes allocated on disk for everything under `path`, counted as `du` does. Entries that
/// vanish during the walk are skipped.
pub fn disk_usage(path: &Path) -> io::Result<u64> {
    let meta = fs::symlink_metadata(path)?;
    let mut total = meta.blocks() * 512;
    if meta.is_dir() {
        for entry in fs::read_dir(path)? {
            match disk_usage(&entry?.path()) {
                Ok(bytes) => total += bytes,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(total)
}

/// Gives every entry of a tree (symlinks themselves, not their targets) to `uid:gid`.
pub fn chown(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    if fs::symlink_metadata(path)?.is_dir() {
        for entry in fs::read_dir(path)? {
            chown(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// Removes a tree; one that is not there is not an error.
pub fn remove(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// How [`copy`] treats the data of files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyData {
    /// A real copy of every byte, even where the filesystem could share blocks.
    Copy,
    /// Every file shares the source's blocks, or the copy fails (it never falls back to
    /// copying data: across filesystems it fails with "Invalid cross-device link").
    Reflink,
}

/// Copies a tree to `to` (which must not exist) with `cp -a`, which keeps modes, owners,
/// times, symlinks and sparseness. `to` is removed again when the copy fails.
pub fn copy(from: &Path, to: &Path, data: CopyData, as_user: Option<&User>) -> Result<(), crate::Error> {
    let mode = match data {
        CopyData::Copy => "--reflink=never",
        CopyData::Reflink => "--reflink=always",
    };
    let mut cp = Program::new("cp").args(["-a", mode, "--"]).arg(from).arg(to).timeout(Duration::from_secs(7 * 86400));
    if let Some(user) = as_user {
        cp = cp.user(user);
    }
    cp.run().map(drop).inspect_err(|_| {
        if let Err(e) = remove(to) {
            tracing::warn!("removing the partial copy {}: {e}", to.display());
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_copies() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::create_dir_all(src.join("sub")).unwrap();
        fs::write(src.join("a"), vec![1u8; 1000]).unwrap();
        fs::write(src.join("sub/b"), vec![2u8; 24]).unwrap();
        std::os::unix::fs::symlink("a", src.join("link")).unwrap();
        assert_eq!(size(&src), Size { bytes: 1024, files: 2 });
        assert!(disk_usage(&src).unwrap() >= 4096);
        let dst = dir.path().join("dst");
        copy(&src, &dst, CopyData::Copy, None).unwrap();
        assert_eq!(fs::read(dst.join("sub/b")).unwrap(), vec![2u8; 24]);
        assert_eq!(fs::read_link(dst.join("link")).unwrap(), Path::new("a"));
        // A failed copy leaves nothing.
        let err = copy(&dir.path().join("missing"), &dir.path().join("x"), CopyData::Copy, None).unwrap_err();
        assert!(err.to_string().contains("cp failed"), "{err}");
        assert!(!dir.path().join("x").exists());
        remove(&dst).unwrap();
        remove(&dst).unwrap();
        assert!(!dst.exists());
    }
}
