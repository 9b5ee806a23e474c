//! Copies whose files share their blocks with the original (`FICLONE`), made in this process.
//!
//! `cp -a --reflink=always` does the same job file by file with about 23 system calls each
//! (it looks for ACLs and extended attributes on every file); a database's data directory
//! holds thousands of files, so for a reflink clone the copy was the largest part of its
//! time to ready. [`copy_tree`] makes five to nine calls per file, on a few threads at once.
//!
//! What it keeps: the tree's shape, every regular file's data (shared, never copied), modes,
//! owners (as root; otherwise the copier's own), access and modification times, symlinks,
//! FIFOs and sockets. What it does not: extended attributes and ACLs, and hard links (each
//! name gets a file of its own, whose blocks are shared anyway). A device file is refused.
//!
//! The source may belong to a less trusted user who changes it meanwhile (a clone's files
//! copied into a checkpoint): every directory is opened relative to its parent's
//! descriptor and never through a symlink, and every file is opened without following one
//! and checked to be a regular file once open, so nothing outside the tree is ever read.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::tree::{open_at, open_dir_at, UNTRUSTED_READ};

/// `_IOW(0x94, 9, int)`: make the destination share the source's blocks.
const FICLONE: libc::c_ulong = 0x4004_9409;

/// The most threads a copy uses: each call waits on the filesystem's metadata work, which
/// more threads than cores do not speed up.
const MAX_THREADS: usize = 4;

/// Makes `target` (opened for writing, empty) share all of `source`'s blocks: the two then
/// hold the same bytes, and a later write to either copies only what it changes. Fails
/// where the filesystem cannot share blocks (`EOPNOTSUPP`, `EXDEV` across filesystems,
/// `EINVAL`).
pub fn ficlone(target: &File, source: &File) -> io::Result<()> {
    // SAFETY: FICLONE takes two open descriptors, both borrowed for the call.
    if unsafe { libc::ioctl(target.as_raw_fd(), FICLONE, source.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// How files are copied.
#[derive(Clone, Copy)]
struct Copier {
    threads: usize,
    /// See [`copy_tree`].
    made_as_ours: bool,
}

/// A directory with at least this many files has them copied by several threads; fewer are
/// copied by the walk itself, as starting threads would cost more than it saves.
const PARALLEL_FROM: usize = 32;

/// Copies the tree at `from` to `to` (which must not exist), every regular file sharing its
/// blocks with the original (see the module's documentation for what is kept). The copy
/// fails, and leaves behind what it made so far, where the filesystem cannot share blocks
/// or on any other error; the caller removes it.
pub fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    let from_c = CString::new(from.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let to_c = CString::new(to.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let top = open_dir_at(libc::AT_FDCWD, &from_c)?;
    let top_stat = fstat(top.as_raw_fd())?;
    mkdir_at(libc::AT_FDCWD, &to_c)?;
    let to_top = open_dir_at(libc::AT_FDCWD, &to_c)?;
    // Whether what the copy makes is ours as made (no set-group-id directory above gives
    // it another group): then a file whose original is ours needs no chown.
    let made = fstat(to_top.as_raw_fd())?;
    // SAFETY: getegid has no preconditions.
    let made_as_ours = made.st_gid == unsafe { libc::getegid() } && made.st_mode & libc::S_ISGID == 0;
    // Each directory made, by its path under `to`, and what its mode, owner and times are
    // to be: set once its files are in (making them changes its times).
    let mut dirs = vec![(PathBuf::new(), top_stat)];
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, MAX_THREADS);
    walk(&top, &to_top, Path::new(""), &mut dirs, Copier { threads, made_as_ours })?;
    // Deepest first: setting a directory's times last keeps them.
    for (path, st) in dirs.iter().rev() {
        let dir = open_dir_at(libc::AT_FDCWD, &CString::new(to.join(path).as_os_str().as_bytes())?)?;
        set_metadata(dir.as_raw_fd(), st)?;
    }
    Ok(())
}

/// Makes the directories under `from` in `to` (`path` under the copy's top) and copies what
/// they hold: the regular files of each directory together (on `threads` threads when there
/// are many), then its subdirectories one by one, so that only the directories on the path
/// from the top are open at any time.
fn walk(
    from: &OwnedFd,
    to: &OwnedFd,
    path: &Path,
    dirs: &mut Vec<(PathBuf, libc::stat)>,
    copier: Copier,
) -> io::Result<()> {
    let mut files = Vec::new();
    let mut subdirs = Vec::new();
    for (name, kind) in crate::tree::entries_in(from)? {
        // The kind readdir gives saves a stat of every file; a file is checked once open.
        if kind == libc::DT_REG {
            files.push(name);
            continue;
        }
        let st = fstatat(from.as_raw_fd(), &name)?;
        match st.st_mode & libc::S_IFMT {
            libc::S_IFREG => files.push(name),
            libc::S_IFDIR => subdirs.push(name),
            libc::S_IFLNK => copy_symlink(from.as_raw_fd(), to.as_raw_fd(), &name, &st)?,
            libc::S_IFIFO | libc::S_IFSOCK => {
                // SAFETY: mknodat relative to an open directory, with a valid C string.
                check(unsafe { libc::mknodat(to.as_raw_fd(), name.as_ptr(), st.st_mode & libc::S_IFMT | 0o600, 0) })?;
                set_metadata_at(to.as_raw_fd(), &name, &st)?;
            }
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("refusing to copy the device file {}", name.to_string_lossy()),
                ))
            }
        }
    }
    copy_files(from, to, &files, copier)?;
    for name in subdirs {
        let sub_from = open_dir_at(from.as_raw_fd(), &name)?;
        // What was opened is what was looked at: a directory swapped in meanwhile is copied
        // as what it is now, never followed out of the tree (O_NOFOLLOW).
        let st = fstat(sub_from.as_raw_fd())?;
        mkdir_at(to.as_raw_fd(), &name)?;
        let sub_to = open_dir_at(to.as_raw_fd(), &name)?;
        let sub_path = path.join(std::ffi::OsStr::from_bytes(name.to_bytes()));
        dirs.push((sub_path.clone(), st));
        walk(&sub_from, &sub_to, &sub_path, dirs, copier)?;
    }
    Ok(())
}

/// Copies the regular files `names` of one directory; the first error stops the others.
fn copy_files(from: &OwnedFd, to: &OwnedFd, names: &[CString], copier: Copier) -> io::Result<()> {
    if names.len() < PARALLEL_FROM || copier.threads == 1 {
        return names.iter().try_for_each(|name| copy_file(from, to, name, copier));
    }
    let next = AtomicUsize::new(0);
    let failed = Mutex::new(None::<io::Error>);
    std::thread::scope(|scope| {
        for _ in 0..copier.threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(name) = names.get(i) else { return };
                if let Err(e) = copy_file(from, to, name, copier) {
                    // The others stop at their next file.
                    next.store(names.len(), Ordering::Relaxed);
                    failed.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
                    return;
                }
            });
        }
    });
    match failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn copy_file(from: &OwnedFd, to: &OwnedFd, name: &CStr, copier: Copier) -> io::Result<()> {
    let what = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", name.to_string_lossy()));
    // A FIFO put in the file's place meanwhile opens without waiting, and is then refused
    // as not a regular file.
    let source = open_at(from.as_raw_fd(), name, UNTRUSTED_READ, 0).map_err(what)?;
    let st = fstat(source.as_raw_fd()).map_err(what)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(what(io::Error::new(io::ErrorKind::InvalidInput, "no longer a regular file")));
    }
    // Made with its final mode where the umask cannot have narrowed it (only the owner's
    // bits), which saves a chmod for a database's files; created, it is writable to us.
    let mode = st.st_mode & 0o7777;
    let target = open_at(to.as_raw_fd(), name, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, mode).map_err(what)?;
    ficlone(&target, &source).map_err(what)?;
    set_owner_and_times(target.as_raw_fd(), &st, copier.made_as_ours, mode & 0o7077 != 0).map_err(what)
}

fn copy_symlink(from: RawFd, to: RawFd, name: &CStr, st: &libc::stat) -> io::Result<()> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: readlinkat writes at most buf.len() bytes into buf, which we own.
    let n = unsafe { libc::readlinkat(from, name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    let target = CString::new(buf).map_err(io::Error::other)?;
    // SAFETY: symlinkat with valid C strings, relative to an open directory.
    check(unsafe { libc::symlinkat(target.as_ptr(), to, name.as_ptr()) })?;
    set_metadata_at(to, name, st)
}

/// Owner (when allowed), mode and times of an open file or directory, as in `st`.
fn set_metadata(fd: RawFd, st: &libc::stat) -> io::Result<()> {
    set_owner_and_times(fd, st, false, true)
}

/// [`set_metadata`], with the mode set only when `chmod`, and the owner left alone when
/// `made_as_ours` and the original is ours too.
fn set_owner_and_times(fd: RawFd, st: &libc::stat, made_as_ours: bool, chmod: bool) -> io::Result<()> {
    // SAFETY: geteuid and getegid have no preconditions.
    let ours = made_as_ours && st.st_uid == unsafe { libc::geteuid() } && st.st_gid == unsafe { libc::getegid() };
    if !ours {
        // SAFETY: fchown on a descriptor we hold open.
        allow_eperm(unsafe { libc::fchown(fd, st.st_uid, st.st_gid) })?;
    }
    if chmod {
        // After the chown, which clears set-user-id and set-group-id bits.
        // SAFETY: fchmod on a descriptor we hold open.
        check(unsafe { libc::fchmod(fd, st.st_mode & 0o7777) })?;
    }
    let times = times(st);
    // SAFETY: futimens reads two timespecs we own.
    check(unsafe { libc::futimens(fd, times.as_ptr()) })
}

/// [`set_metadata`] of an entry that cannot be opened (a symlink, FIFO or socket), without
/// following a symlink; a symlink has no mode of its own.
fn set_metadata_at(dir: RawFd, name: &CStr, st: &libc::stat) -> io::Result<()> {
    // SAFETY: fchownat relative to an open directory, with a valid C string.
    let owned = unsafe { libc::fchownat(dir, name.as_ptr(), st.st_uid, st.st_gid, libc::AT_SYMLINK_NOFOLLOW) };
    allow_eperm(owned)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFLNK {
        // SAFETY: as above; what was just made here is not a symlink.
        check(unsafe { libc::fchmodat(dir, name.as_ptr(), st.st_mode & 0o7777, 0) })?;
    }
    let times = times(st);
    // SAFETY: utimensat reads two timespecs we own, relative to an open directory.
    check(unsafe { libc::utimensat(dir, name.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) })
}

/// Only root gives files away; as another user, the copy's files stay the copier's, as
/// with `cp -a`.
fn allow_eperm(result: libc::c_int) -> io::Result<()> {
    match check(result) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => Ok(()),
        other => other,
    }
}

fn times(st: &libc::stat) -> [libc::timespec; 2] {
    [
        libc::timespec { tv_sec: st.st_atime, tv_nsec: st.st_atime_nsec },
        libc::timespec { tv_sec: st.st_mtime, tv_nsec: st.st_mtime_nsec },
    ]
}

fn check(result: libc::c_int) -> io::Result<()> {
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn mkdir_at(dir: RawFd, name: &CStr) -> io::Result<()> {
    // Private until its own mode is set, after its files are in.
    // SAFETY: mkdirat with a valid C string.
    check(unsafe { libc::mkdirat(dir, name.as_ptr(), 0o700) })
}

fn fstat(fd: RawFd) -> io::Result<libc::stat> {
    // SAFETY: fstat fills the struct we pass.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    check(unsafe { libc::fstat(fd, &mut st) })?;
    Ok(st)
}

fn fstatat(dir: RawFd, name: &CStr) -> io::Result<libc::stat> {
    // SAFETY: fstatat fills the struct we pass; a valid C string, relative to an open directory.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    check(unsafe { libc::fstatat(dir, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) })?;
    Ok(st)
}
