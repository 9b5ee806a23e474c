//! Walks of directory trees: sizes, disk use, ownership, removal and copies.

use std::ffi::{CStr, CString};
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
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
///
/// The tree may belong to a less trusted user who changes it meanwhile (a clone's files,
/// given to its uid): each directory is opened relative to its parent's open descriptor,
/// never following a symlink, and each entry is changed relative to it, so that a
/// directory swapped for a symlink never leads outside the tree.
pub fn chown(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    if !fs::symlink_metadata(path)?.is_dir() {
        return std::os::unix::fs::lchown(path, Some(uid), Some(gid));
    }
    let top = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let dir = open_dir_at(libc::AT_FDCWD, &top)?;
    std::os::unix::fs::fchown(&dir, Some(uid), Some(gid))?;
    chown_beneath(&dir, uid, gid)
}

/// Calls `f` with each regular file of the tree at `path` (or with `path` itself, when it is
/// one), opened for reading; a tree that is not there has none.
///
/// The tree may belong to a less trusted user who changes it meanwhile (a clone's files):
/// directories are opened relative to their parent's descriptor, nothing is reached through
/// a symlink, each file is checked to be a regular one once open (a FIFO put in its place
/// is opened without waiting, then skipped), and entries that vanish are skipped.
pub fn each_file(path: &Path, f: &mut dyn FnMut(&fs::File) -> io::Result<()>) -> io::Result<()> {
    let top = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    each_file_at(libc::AT_FDCWD, &top, f)
}

/// [`each_file`] of the entry `name` of the directory `dir`.
fn each_file_at(dir: RawFd, name: &CStr, f: &mut dyn FnMut(&fs::File) -> io::Result<()>) -> io::Result<()> {
    let file = match open_at(dir, name, UNTRUSTED_READ, 0) {
        Ok(file) => file,
        // Gone since it was listed, or a symlink (ELOOP), which is not followed.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ELOOP | libc::ENXIO)) => return Ok(()),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if meta.is_dir() {
        let dir = OwnedFd::from(file);
        for (name, kind) in entries_in(&dir)? {
            // Symlinks, FIFOs, sockets and devices are never opened.
            if matches!(kind, libc::DT_DIR | libc::DT_REG | libc::DT_UNKNOWN) {
                each_file_at(dir.as_raw_fd(), &name, f)?;
            }
        }
        return Ok(());
    }
    if meta.is_file() {
        return f(&file);
    }
    Ok(())
}

/// How a file of a tree that a less trusted user may change is opened for reading: never
/// through a symlink, and without waiting, so that a FIFO put in its place does not hang
/// the open (the caller then finds it is not a regular file).
pub(crate) const UNTRUSTED_READ: libc::c_int = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY;

/// Opens the entry `name` of the directory `dir` (or of the working directory, with
/// `AT_FDCWD`) with `flags`, close-on-exec; `mode` is for a file it creates.
pub(crate) fn open_at(dir: RawFd, name: &CStr, flags: libc::c_int, mode: libc::mode_t) -> io::Result<fs::File> {
    // SAFETY: openat with a valid C string; the descriptor returned is ours alone.
    let fd = unsafe { libc::openat(dir, name.as_ptr(), flags | libc::O_CLOEXEC, mode as libc::c_uint) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { fs::File::from_raw_fd(fd) })
}

/// Opens the directory `name` relative to `parent` without following a symlink.
pub(crate) fn open_dir_at(parent: RawFd, name: &CStr) -> io::Result<OwnedFd> {
    Ok(open_at(parent, name, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW, 0)?.into())
}

/// The names in an open directory, without `.` and `..`.
pub(crate) fn names_in(dir: &OwnedFd) -> io::Result<Vec<CString>> {
    Ok(entries_in(dir)?.into_iter().map(|(name, _)| name).collect())
}

/// The entries of an open directory, without `.` and `..`: each name with the kind readdir
/// gives (`DT_REG`, `DT_DIR`…; `DT_UNKNOWN` where the filesystem does not say).
pub(crate) fn entries_in(dir: &OwnedFd) -> io::Result<Vec<(CString, u8)>> {
    // fdopendir takes the descriptor it is given: it gets a duplicate.
    let dup = dir.try_clone()?;
    // SAFETY: fdopendir on a descriptor we own; on success the stream owns it.
    let stream = unsafe { libc::fdopendir(dup.as_raw_fd()) };
    if stream.is_null() {
        return Err(io::Error::last_os_error());
    }
    std::mem::forget(dup);
    let mut entries = Vec::new();
    let result = loop {
        nix::errno::Errno::clear();
        // SAFETY: readdir on the open stream; the entry is read before the next call.
        let entry = unsafe { libc::readdir(stream) };
        if entry.is_null() {
            let errno = nix::errno::Errno::last_raw();
            break if errno == 0 { Ok(()) } else { Err(io::Error::from_raw_os_error(errno)) };
        }
        // SAFETY: d_name is a NUL-terminated string inside the entry.
        let name = unsafe { CStr::from_ptr((*entry).d_name.as_ptr()) };
        if name.to_bytes() != b"." && name.to_bytes() != b".." {
            // SAFETY: as above.
            entries.push((name.to_owned(), unsafe { (*entry).d_type }));
        }
    };
    // SAFETY: closes the stream (and the duplicate it owns) once.
    unsafe { libc::closedir(stream) };
    result.map(|()| entries)
}

fn chown_beneath(dir: &OwnedFd, uid: u32, gid: u32) -> io::Result<()> {
    for name in names_in(dir)? {
        // SAFETY: fchownat relative to an open directory, with a valid C string.
        if unsafe { libc::fchownat(dir.as_raw_fd(), name.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) } != 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::NotFound {
                continue;
            }
            return Err(err);
        }
        match open_dir_at(dir.as_raw_fd(), &name) {
            Ok(sub) => chown_beneath(&sub, uid, gid)?,
            // Not a directory (or a symlink, which is never followed), or gone since.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTDIR | libc::ELOOP | libc::ENOENT)) => {}
            Err(e) => return Err(e),
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
///
/// A reflink copy made as this process's own user is made in this process instead
/// ([`crate::reflink::copy_tree`]: several times faster, without extended attributes).
pub fn copy(from: &Path, to: &Path, data: CopyData, as_user: Option<&User>) -> Result<(), crate::Error> {
    if data == CopyData::Reflink && as_user.is_none() {
        // What is there already is not the copy's to remove when it fails.
        if fs::symlink_metadata(to).is_ok() {
            return Err(crate::Error::Io(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("copying {} to {}: the target exists", from.display(), to.display()),
            )));
        }
        return crate::reflink::copy_tree(from, to).map_err(|e| {
            if let Err(r) = remove(to) {
                tracing::warn!("removing the partial copy {}: {r}", to.display());
            }
            crate::Error::Io(io::Error::new(
                e.kind(),
                format!("copying {} to {} with shared blocks: {e}", from.display(), to.display()),
            ))
        });
    }
    let mode = match data {
        CopyData::Copy => "--reflink=never",
        CopyData::Reflink => "--reflink=always",
    };
    copy_with(from, to, &[mode], as_user)
}

/// [`copy`] that writes no block of zeros: runs of zero bytes become holes, so a file that
/// is mostly zeros (a database's freshly zeroed log segment) takes only the blocks that hold
/// data. Never shares blocks with the source.
pub fn copy_sparse(from: &Path, to: &Path) -> Result<(), crate::Error> {
    copy_with(from, to, &["--reflink=never", "--sparse=always"], None)
}

fn copy_with(from: &Path, to: &Path, mode: &[&str], as_user: Option<&User>) -> Result<(), crate::Error> {
    let mut cp =
        Program::new("cp").arg("-a").args(mode).arg("--").arg(from).arg(to).timeout(Duration::from_secs(7 * 86400));
    if let Some(user) = as_user {
        cp = cp.user(user);
    }
    cp.run().map(drop).inspect_err(|_| {
        if let Err(e) = remove(to) {
            tracing::warn!("removing the partial copy {}: {e}", to.display());
        }
    })
}

/// The first file under `dir` (symlinks not followed) that holds one of `needles` anywhere
/// in its bytes, with the needle's index; `None` when none does. Each file is read once, as a
/// stream searched for every needle at once (a needle across two reads is found).
pub fn find_any(dir: &Path, needles: &[Vec<u8>]) -> io::Result<Option<(PathBuf, usize)>> {
    let kept: Vec<usize> = (0..needles.len()).filter(|&i| !needles[i].is_empty()).collect();
    if kept.is_empty() {
        return Ok(None);
    }
    // One pass over each file for every needle at once.
    let finder = aho_corasick::AhoCorasick::new(kept.iter().map(|&i| &needles[i])).map_err(io::Error::other)?;
    let mut stack = vec![dir.to_owned()];
    while let Some(path) = stack.pop() {
        let meta = fs::symlink_metadata(&path)?;
        if meta.is_dir() {
            for entry in fs::read_dir(&path)? {
                stack.push(entry?.path());
            }
            continue;
        }
        if !meta.is_file() {
            continue;
        }
        let file = io::BufReader::with_capacity(1 << 20, fs::File::open(&path)?);
        if let Some(found) = finder.stream_find_iter(file).next() {
            return Ok(Some((path, kept[found?.pattern().as_usize()])));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_any_finds_a_needle_across_blocks_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("sub")).unwrap();
        let mut big = vec![b'.'; (1 << 20) - 3];
        big.extend_from_slice(b"secret-value");
        big.extend_from_slice(&[b'.'; 100]);
        fs::write(dir.path().join("sub/big"), &big).unwrap();
        fs::write(dir.path().join("other"), b"nothing here").unwrap();
        let found = find_any(dir.path(), &[b"absent-value".to_vec(), b"secret-value".to_vec()]).unwrap();
        assert_eq!(found, Some((dir.path().join("sub/big"), 1)));
        assert_eq!(find_any(dir.path(), &[b"absent-value".to_vec()]).unwrap(), None);
        assert_eq!(find_any(dir.path(), &[]).unwrap(), None);
    }

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

    /// A sparse copy keeps every byte and takes blocks only where there is data.
    #[test]
    fn a_sparse_copy_leaves_zeros_out() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::create_dir_all(src.join("sub")).unwrap();
        let mut segment = vec![0u8; 16 << 20];
        segment[..8192].fill(7);
        fs::write(src.join("sub/segment"), &segment).unwrap();
        let dst = dir.path().join("dst");
        copy_sparse(&src, &dst).unwrap();
        assert!(fs::read(dst.join("sub/segment")).unwrap() == segment);
        let used = disk_usage(&dst.join("sub/segment")).unwrap();
        assert!(used <= 1 << 20, "a 16 MiB file with 8 KiB of data took {used} bytes");
    }

    /// A symlink inside the tree, to a file or a directory outside it, is given away
    /// itself; what it points at is not.
    #[test]
    fn chown_never_follows_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs::create_dir_all(outside.join("deep")).unwrap();
        fs::write(outside.join("secret"), "x").unwrap();
        let tree = dir.path().join("tree");
        fs::create_dir_all(tree.join("sub/subsub")).unwrap();
        fs::write(tree.join("sub/f"), "y").unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("sub/to-dir")).unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), tree.join("to-file")).unwrap();
        let (uid, gid) = (nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw());
        // As root, hand it to a uid nobody has; otherwise to ourselves (still a full walk).
        let to = if uid == 0 { 2_000_099_991 } else { uid };
        chown(&tree, to, if uid == 0 { to } else { gid }).unwrap();
        for path in ["", "sub", "sub/subsub", "sub/f", "sub/to-dir", "to-file"] {
            assert_eq!(fs::symlink_metadata(tree.join(path)).unwrap().uid(), to, "{path}");
        }
        for path in ["", "deep", "secret"] {
            assert_eq!(fs::symlink_metadata(outside.join(path)).unwrap().uid(), uid, "outside/{path}");
        }
        // A file by itself, and a symlink by itself.
        chown(&tree.join("sub/f"), uid, gid).unwrap();
        chown(&tree.join("to-file"), uid, gid).unwrap();
        assert_eq!(fs::metadata(outside.join("secret")).unwrap().uid(), uid);
    }
}
