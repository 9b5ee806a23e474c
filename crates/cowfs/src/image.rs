//! The image directory, read without ever following a symlink.
//!
//! The cowfs server runs as root, and an image may hold symlinks that point anywhere: the
//! source's own, or one planted in the image by whoever could write to it. If cowfs opened
//! image files by path, a symlink in place of a file or directory that the tree already knows
//! would make cowfs read the target with root's rights and serve its bytes to the clone. So every access goes through [`Image`]: it holds a descriptor of the image
//! root and resolves each path beneath it with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)` where the kernel has it (Linux 5.6+), and otherwise component by
//! component with `openat(O_NOFOLLOW)`. The last component is then stat'ed with
//! `AT_SYMLINK_NOFOLLOW`, read with `readlinkat`, opened with `O_NOFOLLOW`, or listed. A path
//! that meets a symlink fails (`ELOOP` or `ENOTDIR`); a `..` component is refused.
//!
//! A symlink in the image is still a symlink in the merged tree, with its own target: the
//! kernel follows it on the mount, in the view and with the rights of the process that asked.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::node::{Kind, Time};

/// The image directory, opened once.
pub(crate) struct Image {
    /// `O_PATH | O_DIRECTORY` descriptor of the image root.
    root: OwnedFd,
    path: PathBuf,
    /// Whether to try `openat2` (cleared when the kernel lacks it).
    openat2: AtomicBool,
}

/// What `fstatat` says about an image entry (the entry itself, never a symlink's target).
#[derive(Clone, Copy)]
pub(crate) struct Meta(libc::stat);

impl Meta {
    pub fn kind(&self) -> Kind {
        Kind::from_mode(self.0.st_mode).unwrap_or(Kind::File)
    }
    pub fn mode(&self) -> u32 {
        self.0.st_mode
    }
    pub fn uid(&self) -> u32 {
        self.0.st_uid
    }
    pub fn gid(&self) -> u32 {
        self.0.st_gid
    }
    pub fn rdev(&self) -> u64 {
        self.0.st_rdev
    }
    pub fn size(&self) -> u64 {
        self.0.st_size as u64
    }
    // st_nlink is a u64 on x86_64 and a u32 elsewhere.
    #[allow(clippy::unnecessary_cast)]
    pub fn nlink(&self) -> u64 {
        self.0.st_nlink as u64
    }
    pub fn atime(&self) -> Time {
        Time(self.0.st_atime, self.0.st_atime_nsec as u32)
    }
    pub fn mtime(&self) -> Time {
        Time(self.0.st_mtime, self.0.st_mtime_nsec as u32)
    }
    pub fn ctime(&self) -> Time {
        Time(self.0.st_ctime, self.0.st_ctime_nsec as u32)
    }
}

/// `struct open_how` of openat2(2).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// A directory descriptor: the root's, borrowed, or one opened for the call.
enum DirFd<'a> {
    Root(&'a OwnedFd),
    Owned(OwnedFd),
}

impl DirFd<'_> {
    fn raw(&self) -> RawFd {
        match self {
            DirFd::Root(fd) => fd.as_raw_fd(),
            DirFd::Owned(fd) => fd.as_raw_fd(),
        }
    }
}

fn cstr(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Turns a -1 return into the errno, and a descriptor into an [`OwnedFd`].
fn owned(fd: libc::c_int) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn openat(dir: RawFd, name: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: a valid descriptor and C string; the flags never include O_CREAT, so no mode.
    owned(unsafe { libc::openat(dir, name.as_ptr(), flags | libc::O_CLOEXEC) })
}

fn fstatat(dir: RawFd, name: &CStr, flags: libc::c_int) -> io::Result<Meta> {
    // SAFETY: fstatat fills the struct we pass; a valid descriptor and C string.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatat(dir, name.as_ptr(), &mut st, flags) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Meta(st))
}

impl Image {
    /// Opens the image root `path`, which must be a directory and not itself a symlink
    /// (the layer stack records the image by its canonical path).
    pub fn open(path: &Path) -> io::Result<Image> {
        Self::open_with(path, true)
    }

    fn open_with(path: &Path, openat2: bool) -> io::Result<Image> {
        let c_path = cstr(path.as_os_str())?;
        let root = openat(libc::AT_FDCWD, &c_path, libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .map_err(|e| io::Error::new(e.kind(), format!("opening image directory {}: {e}", path.display())))?;
        Ok(Image { root, path: path.to_owned(), openat2: AtomicBool::new(openat2) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The attributes of the entry at `rel` (the root when empty), never following a symlink.
    pub fn stat(&self, rel: &Path) -> io::Result<Meta> {
        match split(rel)? {
            None => fstatat(self.root.as_raw_fd(), c"", libc::AT_EMPTY_PATH),
            Some((parent, name)) => {
                let dir = self.dir(parent)?;
                fstatat(dir.raw(), &cstr(name)?, libc::AT_SYMLINK_NOFOLLOW)
            }
        }
    }

    /// The target of the symlink at `rel`, as text.
    pub fn read_link(&self, rel: &Path) -> io::Result<OsString> {
        let (parent, name) = split(rel)?.ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        let dir = self.dir(parent)?;
        let name = cstr(name)?;
        let mut buf = vec![0u8; libc::PATH_MAX as usize];
        loop {
            // SAFETY: readlinkat writes at most buf.len() bytes into buf.
            let n = unsafe { libc::readlinkat(dir.raw(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            if (n as usize) < buf.len() {
                buf.truncate(n as usize);
                return Ok(OsString::from_vec(buf));
            }
            // Possibly cut short: try again with more room.
            buf.resize(buf.len() * 2, 0);
        }
    }

    /// Opens the regular file at `rel` for reading. A symlink, or anything but a regular
    /// file (a FIFO would block, a device would be opened as root), is refused.
    pub fn open_file(&self, rel: &Path) -> io::Result<File> {
        let (parent, name) = split(rel)?.ok_or_else(|| io::Error::from_raw_os_error(libc::EISDIR))?;
        let dir = self.dir(parent)?;
        let fd =
            openat(dir.raw(), &cstr(name)?, libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)?;
        let meta = fstatat(fd.as_raw_fd(), c"", libc::AT_EMPTY_PATH)?;
        if meta.mode() & libc::S_IFMT != libc::S_IFREG {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("image entry {} is no longer a regular file", rel.display()),
            ));
        }
        // SAFETY: F_SETFL on a descriptor we own; O_NONBLOCK was only there for the open.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(File::from(fd))
    }

    /// The entries of the directory at `rel` (the root when empty), with their kinds, without
    /// `.` and `..`.
    pub fn read_dir(&self, rel: &Path) -> io::Result<Vec<(OsString, Kind)>> {
        let fd = match split(rel)? {
            None => openat(self.root.as_raw_fd(), c".", libc::O_RDONLY | libc::O_DIRECTORY)?,
            Some((parent, name)) => {
                let dir = self.dir(parent)?;
                openat(dir.raw(), &cstr(name)?, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW)?
            }
        };
        let stream = DirStream::new(fd)?;
        let mut entries = Vec::new();
        loop {
            // SAFETY: readdir64 on a stream we own; errno is cleared to tell the end from an
            // error.
            let entry = unsafe {
                *libc::__errno_location() = 0;
                libc::readdir64(stream.0)
            };
            if entry.is_null() {
                let errno = io::Error::last_os_error();
                if errno.raw_os_error() == Some(0) {
                    break;
                }
                return Err(errno);
            }
            // SAFETY: readdir64 returned a valid entry, live until the next call.
            let (name, d_type) = unsafe { (CStr::from_ptr((*entry).d_name.as_ptr()), (*entry).d_type) };
            if name == c"." || name == c".." {
                continue;
            }
            let kind = match d_type {
                libc::DT_REG => Kind::File,
                libc::DT_DIR => Kind::Dir,
                libc::DT_LNK => Kind::Symlink,
                libc::DT_FIFO => Kind::Fifo,
                libc::DT_SOCK => Kind::Socket,
                libc::DT_CHR => Kind::CharDevice,
                libc::DT_BLK => Kind::BlockDevice,
                // SAFETY: dirfd of a stream we own.
                _ => fstatat(unsafe { libc::dirfd(stream.0) }, name, libc::AT_SYMLINK_NOFOLLOW)?.kind(),
            };
            entries.push((OsString::from_vec(name.to_bytes().to_vec()), kind));
        }
        Ok(entries)
    }

    /// A descriptor of the directory at `rel`, reached without following any symlink.
    fn dir(&self, rel: &Path) -> io::Result<DirFd<'_>> {
        if rel.as_os_str().is_empty() {
            return Ok(DirFd::Root(&self.root));
        }
        let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW;
        if self.openat2.load(Ordering::Relaxed) {
            let how = OpenHow {
                flags: (flags | libc::O_CLOEXEC) as u64,
                mode: 0,
                resolve: libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS,
            };
            let c_rel = cstr(rel.as_os_str())?;
            // A rename anywhere on the system during the walk makes RESOLVE_BENEATH answer
            // EAGAIN; a few tries are enough.
            for _ in 0..4 {
                // SAFETY: openat2 with a valid descriptor, C string and open_how of the size
                // we pass.
                let fd = unsafe {
                    libc::syscall(
                        libc::SYS_openat2,
                        self.root.as_raw_fd(),
                        c_rel.as_ptr(),
                        &how as *const OpenHow,
                        std::mem::size_of::<OpenHow>(),
                    )
                };
                match owned(fd as libc::c_int) {
                    Ok(fd) => return Ok(DirFd::Owned(fd)),
                    Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => continue,
                    // No openat2 here (or a seccomp filter that forbids it): walk instead.
                    Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS) | Some(libc::EPERM)) => {
                        tracing::debug!("openat2 unavailable ({e}); resolving image paths one component at a time");
                        self.openat2.store(false, Ordering::Relaxed);
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        let mut dir = DirFd::Root(&self.root);
        for component in rel.components() {
            let Component::Normal(name) = component else {
                return Err(io::Error::from_raw_os_error(libc::EINVAL));
            };
            dir = DirFd::Owned(openat(dir.raw(), &cstr(name)?, flags)?);
        }
        Ok(dir)
    }
}

/// Splits a path relative to the image root into its parent and last component; `None` for
/// the root itself. Anything but plain names (`..`, `/`) is refused.
fn split(rel: &Path) -> io::Result<Option<(&Path, &OsStr)>> {
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("image path {} is not a plain relative path", rel.display()),
        ));
    }
    Ok(rel.file_name().map(|name| (rel.parent().unwrap_or(Path::new("")), name)))
}

/// A directory stream, closed when dropped.
struct DirStream(*mut libc::DIR);

impl DirStream {
    fn new(fd: OwnedFd) -> io::Result<DirStream> {
        // SAFETY: fdopendir takes over the descriptor when it succeeds.
        let stream = unsafe { libc::fdopendir(fd.as_raw_fd()) };
        if stream.is_null() {
            return Err(io::Error::last_os_error());
        }
        std::mem::forget(fd);
        Ok(DirStream(stream))
    }
}

impl Drop for DirStream {
    fn drop(&mut self) {
        // SAFETY: a stream from fdopendir, closed once.
        unsafe { libc::closedir(self.0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::symlink;

    /// An image with symlinks out of it, and a secret beside it.
    fn setup() -> (tempfile::TempDir, PathBuf) {
        let work = tempfile::tempdir().unwrap();
        let outside = work.path().join("outside");
        std::fs::create_dir_all(outside.join("dir")).unwrap();
        std::fs::write(outside.join("secret"), "secret").unwrap();
        std::fs::write(outside.join("dir/secret"), "secret").unwrap();
        let image = work.path().join("image");
        std::fs::create_dir_all(image.join("sub")).unwrap();
        std::fs::write(image.join("sub/f"), "image").unwrap();
        symlink(outside.join("secret"), image.join("evil")).unwrap();
        symlink("../outside/dir", image.join("linkdir")).unwrap();
        symlink("../../outside/dir", image.join("sub/up")).unwrap();
        (work, image)
    }

    fn check(image: &Image) {
        let mut text = String::new();
        image.open_file(Path::new("sub/f")).unwrap().read_to_string(&mut text).unwrap();
        assert_eq!(text, "image");
        assert_eq!(image.stat(Path::new("evil")).unwrap().kind(), Kind::Symlink);
        assert_eq!(image.stat(Path::new("")).unwrap().kind(), Kind::Dir);
        assert!(image.read_link(Path::new("evil")).unwrap().as_bytes().ends_with(b"outside/secret"));
        assert_eq!(image.read_link(Path::new("sub/up")).unwrap(), "../../outside/dir");
        assert_eq!(image.open_file(Path::new("evil")).unwrap_err().raw_os_error(), Some(libc::ELOOP));
        for path in ["linkdir/secret", "sub/up/secret", "sub/../evil", "../outside/secret", "/etc/passwd"] {
            assert!(image.open_file(Path::new(path)).is_err(), "{path} was opened");
            assert!(image.stat(Path::new(path)).is_err(), "{path} was stat'ed");
        }
        assert!(image.read_dir(Path::new("linkdir")).is_err());
        assert!(image.read_dir(Path::new("sub/up")).is_err());
        let mut names = image.read_dir(Path::new("")).unwrap();
        names.sort_by(|a, b| a.0.cmp(&b.0));
        let expected = [("evil", Kind::Symlink), ("linkdir", Kind::Symlink), ("sub", Kind::Dir)];
        assert_eq!(names, expected.map(|(n, k)| (OsString::from(n), k)));
    }

    #[test]
    fn symlinks_are_never_followed_with_openat2() {
        let (_work, image) = setup();
        let image = Image::open_with(&image, true).unwrap();
        check(&image);
        // openat2 is in Linux 5.6 and later: there, the fallback must not have been taken.
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let mut version = release.split(|c: char| !c.is_ascii_digit()).map(|n| n.parse::<u32>().unwrap_or(0));
        if (version.next().unwrap(), version.next().unwrap()) >= (5, 6) {
            assert!(image.openat2.load(Ordering::Relaxed), "openat2 was not used on Linux {release}");
        }
    }

    #[test]
    fn symlinks_are_never_followed_walking_component_by_component() {
        let (_work, image) = setup();
        let image = Image::open_with(&image, false).unwrap();
        check(&image);
        assert!(!image.openat2.load(Ordering::Relaxed));
    }

    #[test]
    fn an_image_root_that_is_a_symlink_is_refused() {
        let (work, image) = setup();
        let link = work.path().join("link");
        symlink(&image, &link).unwrap();
        assert!(Image::open(&link).is_err());
    }
}
