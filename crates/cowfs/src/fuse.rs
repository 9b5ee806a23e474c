//! The FUSE adapter: implements `fuser::Filesystem` by calling [`CowFs`] methods. Each handler
//! opens a tracing span, holds the tree's gate shared (a live checkpoint holds it exclusive),
//! makes one call and maps the error to an errno; no filesystem logic lives here.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig,
    LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, Session, SessionACL, SessionUnmounter,
    TimeOrNow, WriteFlags,
};

use crate::control;
use crate::fs::{Caller, CowFs, DirEntry, SetAttr};
use crate::node::{Attr, Kind, Time};
use crate::{Error, BLOCK_SIZE};

/// How long the kernel may cache names and attributes. Every change to the tree passes
/// through this process, and the kernel invalidates what its own requests change.
const TTL: Duration = Duration::from_secs(1);

/// How to mount.
#[derive(Debug, Clone)]
pub struct MountConfig {
    /// Let users other than the mounting one use the mount (`allow_other`; as root, always
    /// wanted, so that the database's user can use it).
    pub allow_other: bool,
    /// Worker threads serving requests.
    pub threads: usize,
    /// Let the kernel cache writes (FUSE writeback cache).
    pub writeback_cache: bool,
    /// The name the mount shows in `/proc/mounts`.
    pub fsname: String,
    /// Mount with `nosuid`: set-user-id and set-group-id bits of its files take no effect
    /// (a mount by root honours them otherwise).
    pub nosuid: bool,
    /// Mount with `nodev`: device files on it cannot be opened as devices.
    pub nodev: bool,
}

impl Default for MountConfig {
    fn default() -> Self {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        MountConfig {
            allow_other: root,
            // Most requests wait on the disk, not a core: a clone's backends, checkpointer and
            // writer miss the page cache at once, and each waits for its own answer.
            threads: (cores * 4).clamp(4, 16),
            writeback_cache: true,
            fsname: "cowfs".into(),
            nosuid: false,
            nodev: false,
        }
    }
}

struct FuseFs {
    /// Shared with the control socket's thread.
    fs: Arc<CowFs>,
    dir_handles: Mutex<HashMap<u64, Arc<Vec<DirEntry>>>>,
    next_handle: AtomicU64,
    writeback_cache: bool,
}

/// A mounted filesystem, served by [`Mounted::run`] until it is unmounted.
pub struct Mounted {
    session: Session<FuseFs>,
    mountpoint: PathBuf,
    /// The control socket in the layer directory (control.rs), while the mount runs.
    control: Option<control::Server>,
}

/// Unmounts a [`Mounted`] filesystem from another thread, e.g. on a signal.
pub struct Unmounter(SessionUnmounter, PathBuf);

impl Unmounter {
    /// Unmounts; when the mount is busy, detaches it so that it goes away once idle.
    pub fn unmount(&mut self) -> io::Result<()> {
        match self.0.unmount() {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => detach(&self.1),
            Err(e) => Err(e),
        }
    }
}

/// Mounts `fs` at `mountpoint`. Serve it with [`Mounted::run`]. While it runs, the control
/// socket in its layer directory takes requests for live checkpoints
/// ([`crate::checkpoint_mounted`]).
pub fn mount(fs: CowFs, mountpoint: &Path, config: &MountConfig) -> io::Result<Mounted> {
    let fs = Arc::new(fs);
    let mut options = vec![MountOption::FSName(config.fsname.clone()), MountOption::Subtype("cowfs".into())];
    options.push(MountOption::DefaultPermissions);
    options.push(MountOption::NoAtime);
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if config.nodev {
        options.push(MountOption::NoDev);
    } else if root {
        options.push(MountOption::Dev);
    }
    if config.nosuid {
        options.push(MountOption::NoSuid);
    } else if root {
        options.push(MountOption::Suid);
    }
    let mut fuse_config = fuser::Config::default();
    fuse_config.mount_options = options;
    fuse_config.acl = if config.allow_other { SessionACL::All } else { SessionACL::Owner };
    fuse_config.n_threads = Some(config.threads.max(1));
    fuse_config.clone_fd = true;
    let fuse_fs = FuseFs {
        fs: fs.clone(),
        dir_handles: Mutex::new(HashMap::new()),
        next_handle: AtomicU64::new(1),
        writeback_cache: config.writeback_cache,
    };
    let session = Session::new(fuse_fs, mountpoint, &fuse_config)?;
    // Without its control socket (a full disk may refuse it) the mount still serves its
    // files: only live checkpoints are refused, and they say why.
    let control = match control::serve(fs) {
        Ok(server) => Some(server),
        Err(e) => {
            tracing::error!("the mount has no control socket, so no live checkpoints: {e}");
            None
        }
    };
    Ok(Mounted { session, mountpoint: mountpoint.to_owned(), control })
}

impl Mounted {
    pub fn unmounter(&mut self) -> Unmounter {
        Unmounter(self.session.unmount_callable(), self.mountpoint.clone())
    }

    /// Serves requests until the filesystem is unmounted, then makes everything durable and
    /// removes the control socket. When it returns, the layer directory is free.
    pub fn run(self) -> io::Result<()> {
        let Mounted { session, control, .. } = self;
        let result = session.run();
        drop(control);
        match result {
            // When the connection is torn down at unmount, the kernel may answer a worker's
            // read with ECONNABORTED instead of ENODEV: either way, the session is over.
            Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => {
                tracing::debug!("FUSE connection closed: {e}");
                Ok(())
            }
            result => result,
        }
    }
}

/// Whether a live FUSE filesystem answers at `path`, in one call: statfs always reaches the
/// server (`stat` may be answered from the kernel's cache; a dead server gives ENOTCONN), and
/// the filesystem type tells a FUSE mount from the directory beneath it.
pub fn is_live_mount(path: &Path) -> bool {
    const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;
    statfs(path).is_ok_and(|st| st.f_type == FUSE_SUPER_MAGIC)
}

fn statfs(path: &Path) -> io::Result<libc::statfs> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: statfs fills the struct we pass; the path is a valid C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c_path.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// Cleans up after a server that died: when `mountpoint` is a FUSE mount whose server is gone
/// (`ENOTCONN`), detaches it. Returns whether it did.
pub fn unmount_stale(mountpoint: &Path) -> io::Result<bool> {
    match statfs(mountpoint) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            detach(mountpoint)?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

fn detach(mountpoint: &Path) -> io::Result<()> {
    let path = std::ffi::CString::new(mountpoint.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: umount2 with a valid C string.
    if unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EPERM) {
        return Err(err);
    }
    // Not root: fusermount3 may unmount what this user mounted.
    sys::Program::new("fusermount3")
        .args(["-u", "-z", "--"])
        .arg(mountpoint)
        .timeout(std::time::Duration::from_secs(30))
        .run()
        .map(drop)
        .map_err(io::Error::other)
}

fn errno(e: Error) -> Errno {
    let code = e.errno();
    if code == libc::EIO {
        tracing::error!("I/O error: {e}");
    } else {
        tracing::debug!("{e}");
    }
    Errno::from_i32(code)
}

fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
        Kind::CharDevice => FileType::CharDevice,
        Kind::BlockDevice => FileType::BlockDevice,
    }
}

fn file_attr(attr: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(attr.ino),
        size: attr.size,
        blocks: attr.size.div_ceil(512),
        atime: attr.atime.into(),
        mtime: attr.mtime.into(),
        ctime: attr.ctime.into(),
        crtime: attr.ctime.into(),
        kind: file_type(attr.kind),
        perm: attr.mode as u16,
        nlink: attr.nlink,
        uid: attr.uid,
        gid: attr.gid,
        rdev: attr.rdev,
        blksize: BLOCK_SIZE as u32,
        flags: 0,
    }
}

fn time(t: TimeOrNow) -> Time {
    match t {
        TimeOrNow::SpecificTime(t) => Time::from(t),
        TimeOrNow::Now => Time::now(),
    }
}

fn caller(req: &Request) -> Caller {
    Caller { uid: req.uid(), gid: req.gid() }
}

fn reply_entry(reply: ReplyEntry, result: crate::Result<Attr>) {
    match result {
        Ok(attr) => reply.entry(&TTL, &file_attr(&attr), Generation(0)),
        Err(e) => reply.error(errno(e)),
    }
}

fn reply_empty(reply: ReplyEmpty, result: crate::Result<()>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(e)),
    }
}

impl Filesystem for FuseFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let mut want = InitFlags::FUSE_PARALLEL_DIROPS;
        if self.writeback_cache {
            want |= InitFlags::FUSE_WRITEBACK_CACHE;
        }
        let _ = config.add_capabilities(want & config.capabilities());
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        let _ = config.set_max_background(64);
        Ok(())
    }

    fn destroy(&mut self) {
        let _gate = self.fs.shared();
        if let Err(e) = self.fs.sync_all() {
            tracing::error!("could not make the layer durable at unmount: {e}");
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _span = tracing::debug_span!("lookup", parent = parent.0, ?name).entered();
        let _gate = self.fs.shared();
        reply_entry(reply, self.fs.lookup(parent.0, name));
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let _gate = self.fs.shared();
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _span = tracing::trace_span!("getattr", ino = ino.0).entered();
        let _gate = self.fs.shared();
        match self.fs.getattr(ino.0) {
            Ok(attr) => reply.attr(&TTL, &file_attr(&attr)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let _span = tracing::debug_span!("setattr", ino = ino.0, ?mode, ?uid, ?gid, ?size).entered();
        let _gate = self.fs.shared();
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(time),
            mtime: mtime.map(time),
            ctime: ctime.map(Time::from),
        };
        match self.fs.setattr(ino.0, set) {
            Ok(attr) => reply.attr(&TTL, &file_attr(&attr)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let _span = tracing::debug_span!("readlink", ino = ino.0).entered();
        let _gate = self.fs.shared();
        match self.fs.readlink(ino.0) {
            Ok(target) => reply.data(target.as_bytes()),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn mknod(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, rdev: u32, reply: ReplyEntry) {
        let _span = tracing::debug_span!("mknod", parent = parent.0, ?name, mode).entered();
        let _gate = self.fs.shared();
        let mode = (mode & libc::S_IFMT) | (mode & 0o7777 & !umask);
        reply_entry(reply, self.fs.mknod(parent.0, name, mode, rdev, caller(req)));
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let _span = tracing::debug_span!("mkdir", parent = parent.0, ?name, mode).entered();
        let _gate = self.fs.shared();
        reply_entry(reply, self.fs.mkdir(parent.0, name, mode & !umask, caller(req)));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _span = tracing::debug_span!("unlink", parent = parent.0, ?name).entered();
        let _gate = self.fs.shared();
        reply_empty(reply, self.fs.unlink(parent.0, name));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _span = tracing::debug_span!("rmdir", parent = parent.0, ?name).entered();
        let _gate = self.fs.shared();
        reply_empty(reply, self.fs.rmdir(parent.0, name));
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let _span = tracing::debug_span!("symlink", parent = parent.0, ?link_name).entered();
        let _gate = self.fs.shared();
        reply_entry(reply, self.fs.symlink(parent.0, link_name, target.as_os_str(), caller(req)));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let _gate = self.fs.shared();
        let _span =
            tracing::debug_span!("rename", parent = parent.0, ?name, newparent = newparent.0, ?newname).entered();
        reply_empty(reply, self.fs.rename(parent.0, name, newparent.0, newname, flags.bits()));
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let _span = tracing::debug_span!("link", ino = ino.0, newparent = newparent.0, ?newname).entered();
        let _gate = self.fs.shared();
        reply_entry(reply, self.fs.link(ino.0, newparent.0, newname));
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _span = tracing::debug_span!("open", ino = ino.0, flags = flags.0).entered();
        let _gate = self.fs.shared();
        match self.fs.open(ino.0, flags.0) {
            // The page cache stays valid across opens: only this process changes the tree.
            Ok(()) => reply.opened(FileHandle(ino.0), FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let _span = tracing::trace_span!("read", ino = ino.0, offset, size).entered();
        let _gate = self.fs.shared();
        match self.fs.read(ino.0, offset, size) {
            Ok(bytes) => reply.data(&bytes),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let _span = tracing::trace_span!("write", ino = ino.0, offset, len = data.len()).entered();
        let _gate = self.fs.shared();
        // Without the writeback cache, appending is ours to do.
        let offset = if !self.writeback_cache && flags.0 & libc::O_APPEND != 0 {
            match self.fs.getattr(ino.0) {
                Ok(attr) => attr.size,
                Err(e) => return reply.error(errno(e)),
            }
        } else {
            offset
        };
        // A write from the page cache was accepted from the application long ago: it is
        // stored even into the space reserve. Any other write has a caller waiting, who can
        // be told ENOSPC before the disk is really full.
        let written = if write_flags.contains(WriteFlags::FUSE_WRITE_CACHE) {
            self.fs.write_cached(ino.0, offset, data)
        } else {
            self.fs.write(ino.0, offset, data)
        };
        match written {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _span = tracing::debug_span!("release", ino = ino.0).entered();
        let _gate = self.fs.shared();
        reply_empty(reply, self.fs.release(ino.0));
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        let _span = tracing::debug_span!("fsync", ino = ino.0, datasync).entered();
        let _gate = self.fs.shared();
        reply_empty(reply, self.fs.fsync(ino.0, datasync));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _span = tracing::debug_span!("opendir", ino = ino.0).entered();
        let _gate = self.fs.shared();
        // The listing is taken once, at opendir: readdir pages through a stable snapshot.
        let listing = self.fs.readdir(ino.0).and_then(|entries| {
            let parent = self.fs.parent(ino.0)?;
            let mut all = Vec::with_capacity(entries.len() + 2);
            all.push(DirEntry { ino: ino.0, kind: Kind::Dir, name: ".".into() });
            all.push(DirEntry { ino: parent, kind: Kind::Dir, name: "..".into() });
            all.extend(entries);
            Ok(all)
        });
        match listing {
            Ok(entries) => {
                let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
                self.dir_handles.lock().unwrap().insert(fh, Arc::new(entries));
                reply.opened(FileHandle(fh), FopenFlags::empty());
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let _span = tracing::debug_span!("readdir", ino = ino.0, offset).entered();
        let Some(entries) = self.dir_handles.lock().unwrap().get(&fh.0).cloned() else {
            return reply.error(Errno::EBADF);
        };
        for (i, entry) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(entry.ino), (i + 1) as u64, file_type(entry.kind), &entry.name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.dir_handles.lock().unwrap().remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let _span = tracing::debug_span!("fsyncdir", ino = ino.0).entered();
        let _gate = self.fs.shared();
        reply_empty(reply, self.fs.fsyncdir(ino.0));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let _gate = self.fs.shared();
        match self.fs.statfs() {
            Ok(s) => reply.statfs(s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize),
            Err(e) => reply.error(errno(e)),
        }
    }

    // Extended attributes are not stored: ENOSYS makes the kernel answer EOPNOTSUPP to every
    // later xattr call without asking again (doc/SEMANTICS.md).
    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn getxattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, _size: u32, reply: ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::ENOSYS);
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let _span = tracing::debug_span!("create", parent = parent.0, ?name, mode, flags).entered();
        let _gate = self.fs.shared();
        match self.fs.create(parent.0, name, mode & !umask, flags, caller(req)) {
            Ok(attr) => reply.created(
                &TTL,
                &file_attr(&attr),
                Generation(0),
                FileHandle(attr.ino),
                FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let _span = tracing::debug_span!("fallocate", ino = ino.0, offset, length, mode).entered();
        let _gate = self.fs.shared();
        reply_empty(reply, self.fs.fallocate(ino.0, offset, length, mode));
    }
}
