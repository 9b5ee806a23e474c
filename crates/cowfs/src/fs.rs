//! The copy-on-write filesystem as plain methods: an immutable image directory, frozen layers
//! and one writable layer, merged into one tree. The FUSE adapter (`fuse.rs`) only translates
//! requests into these calls, so everything here can be tested without a kernel mount.
//!
//! Locking: each node has its own locks (`meta`, `dir`, `data`); the data path (read, write,
//! fsync, truncate) takes only the node's `data` lock. Operations that change the namespace
//! also hold `namespace`, which serialises them against each other (so a rename sees a stable
//! tree) but never blocks reads or writes of file data. No code path holds two node locks of
//! the same kind at once except under `namespace`.
//!
//! A live checkpoint changes which layer is writable under a running mount. Every FUSE request
//! holds `gate` shared for the length of its call ([`CowFs::shared`]); [`CowFs::checkpoint_live`]
//! holds it exclusive, so no operation sees the layers change under it. `top` and `frozen` are
//! read by cloning their `Arc` out for a moment, never held across another lock; only the
//! checkpoint replaces them. `stack` is taken by the checkpoint before the gate, and by the
//! accessors for offline use, never by a request. The order is: `stack`, `gate`, `namespace`,
//! node locks.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard};

use crate::blockmap::BlockMap;
use crate::error::{Error, Result};
use crate::image::Image;
use crate::journal::{self, Journal, Record};
use crate::layer::LayerStack;
use crate::node::{Attr, Data, Dir, Ino, Kind, LayerFile, Node, Perms, Time, ROOT_INO};
use crate::space::{self, Space};
use crate::BLOCK_SIZE;

const NAME_MAX: usize = 255;

/// Who is asking: the owner of files and directories that a request makes.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

/// What a `setattr` changes; `None` leaves an attribute as it is.
#[derive(Debug, Clone, Copy, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<Time>,
    pub mtime: Option<Time>,
    pub ctime: Option<Time>,
}

#[derive(Debug, Clone)]
pub struct DirEntry {
    pub ino: Ino,
    pub kind: Kind,
    pub name: OsString,
}

#[derive(Debug, Clone, Copy)]
pub struct Statfs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

/// How the merged tree is presented.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Present the image's files as owned by this uid and gid instead of their own.
    pub owner: Option<(u32, u32)>,
}

struct TopLayer {
    data_dir: PathBuf,
    journal: Mutex<Journal>,
    /// Inodes that have a data file in this layer.
    data_inos: Mutex<HashSet<Ino>>,
    /// A data file was created or removed since the data directory was last fsynced.
    data_dir_dirty: AtomicBool,
}

struct FrozenLayer {
    data_dir: PathBuf,
    data_inos: HashSet<Ino>,
}

pub struct CowFs {
    /// The image, read only through [`Image`], which never follows a symlink.
    image: Image,
    options: Options,
    /// The writable layer; replaced only by a live checkpoint.
    top: RwLock<Arc<TopLayer>>,
    /// Frozen layers, top-most first; replaced only by a live checkpoint.
    frozen: RwLock<Arc<Vec<Arc<FrozenLayer>>>>,
    /// Held shared by every request of a mount, exclusive by a live checkpoint.
    gate: RwLock<()>,
    nodes: RwLock<HashMap<Ino, Arc<Node>>>,
    /// Image paths of adopted nodes, consulted when an image directory is loaded.
    adopted: Mutex<HashMap<PathBuf, Ino>>,
    next_ino: AtomicU64,
    namespace: Mutex<()>,
    /// Free space of the writable layer's filesystem, and the reserve kept on it.
    space: Space,
    stack: Mutex<LayerStack>,
}

impl TopLayer {
    fn new(dir: &Path, journal: Journal) -> TopLayer {
        TopLayer {
            data_dir: dir.join("data"),
            journal: Mutex::new(journal),
            data_inos: Mutex::new(HashSet::new()),
            data_dir_dirty: AtomicBool::new(false),
        }
    }

    /// Makes the namespace durable: the data directory's entries and the journal.
    fn sync_metadata(&self) -> Result<()> {
        if self.data_dir_dirty.swap(false, Ordering::AcqRel) {
            if let Err(e) = sys::crashsafe::fsync_dir(&self.data_dir) {
                self.data_dir_dirty.store(true, Ordering::Release);
                return Err(e.into());
            }
        }
        lock(&self.journal).sync()?;
        Ok(())
    }

    /// Makes every data file and block map of the layer durable, open or not.
    fn sync_data_files(&self) -> io::Result<()> {
        let mut inos: Vec<Ino> = lock(&self.data_inos).iter().copied().collect();
        inos.sort_unstable();
        for ino in inos {
            for name in [ino.to_string(), format!("{ino}.map")] {
                match File::open(self.data_dir.join(name)) {
                    Ok(file) => file.sync_all()?,
                    // Removed meanwhile (unlinked), or a file the layer owns whole (no map).
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn check_name(name: &OsStr) -> Result<()> {
    if name.len() > NAME_MAX {
        return Err(Error::NameTooLong);
    }
    if name.is_empty() || name == "." || name == ".." || name.as_bytes().contains(&b'/') {
        return Err(Error::Invalid);
    }
    Ok(())
}

/// The journal record of a node's attributes as they are now.
fn attr_record(ino: Ino, perms: &Perms) -> Record {
    Record::Attr {
        ino,
        mode: perms.mode,
        uid: perms.uid,
        gid: perms.gid,
        atime: perms.atime,
        mtime: perms.mtime,
        ctime: perms.ctime,
    }
}

/// How much of an image file is brought into the host's page cache around a read that had
/// to wait for the disk (see [`read_image`]).
const IMAGE_PREFETCH: u64 = 128 << 10;

/// [`read_full`] of an image file. When the host's page cache does not hold the bytes (the
/// first reads after a boot or a cache drop), the read waits for the disk, and then the
/// kernel is asked to read the [`IMAGE_PREFETCH`]-aligned stretch around it in the
/// background (`POSIX_FADV_WILLNEED`). A database reads an image at random, page by page,
/// for which the kernel reads ahead nothing; neighbouring pages are then already in memory
/// when they are asked for, and every clone of the image shares them. A read the cache can
/// answer costs one `preadv2` that does not wait (`RWF_NOWAIT`), as before.
fn read_image(file: &File, offset: u64, buf: &mut [u8]) -> io::Result<()> {
    let iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: preadv2 writes at most iov_len bytes into the buffer the iovec points at, which
    // `buf` borrows mutably for the call.
    let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, offset as libc::off_t, libc::RWF_NOWAIT) };
    if n >= 0 && n as usize == buf.len() {
        return Ok(());
    }
    // Not cached (EAGAIN), partly cached, at the end of the file, or a filesystem that does
    // not read without waiting: the plain read decides.
    let waited = n < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EAGAIN);
    read_full(file, offset, buf)?;
    if waited {
        let start = offset / IMAGE_PREFETCH * IMAGE_PREFETCH;
        // SAFETY: posix_fadvise only advises the kernel about a descriptor we hold open.
        // Advice that is not taken costs nothing but the prefetch; the read above is done.
        unsafe {
            libc::posix_fadvise(
                file.as_raw_fd(),
                start as libc::off_t,
                IMAGE_PREFETCH as libc::off_t,
                libc::POSIX_FADV_WILLNEED,
            )
        };
    }
    Ok(())
}

/// Reads `buf.len()` bytes at `offset`, filling what lies past the end of the file with zeros.
fn read_full(file: &File, offset: u64, buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf[done..].fill(0);
    Ok(())
}

impl CowFs {
    /// Opens the merged tree of `stack`'s image and layers, replaying the layers' journals.
    pub fn new(stack: LayerStack, options: Options) -> Result<CowFs> {
        let image = Image::open(stack.image())?;
        let mut layer_dirs = stack.layer_dirs();
        let top_dir = layer_dirs.pop().expect("a layer stack always has a writable layer");
        let (journal, top_records) = Journal::open(&top_dir.join("journal")).map_err(|e| at(&top_dir, e))?;

        let root = Node::new(ROOT_INO, Kind::Dir, Some(PathBuf::new()), true, None);
        let top = Arc::new(TopLayer::new(&top_dir, journal));
        let mut fs = CowFs {
            image,
            options,
            top: RwLock::new(top.clone()),
            frozen: RwLock::new(Arc::new(Vec::new())),
            gate: RwLock::new(()),
            nodes: RwLock::new(HashMap::from([(ROOT_INO, Arc::new(root))])),
            adopted: Mutex::new(HashMap::from([(PathBuf::new(), ROOT_INO)])),
            next_ino: AtomicU64::new(ROOT_INO + 1),
            namespace: Mutex::new(()),
            space: Space::new(&top_dir)?,
            stack: Mutex::new(stack),
        };
        let mut frozen = Vec::new();
        for dir in &layer_dirs {
            let (records, _) = journal::read(&dir.join("journal")).map_err(|e| at(dir, e))?;
            fs.replay(&records, false).map_err(|e| at(dir, e))?;
            let data_inos = data_inos(&dir.join("data")).map_err(|e| at(dir, e))?;
            frozen.push(Arc::new(FrozenLayer { data_dir: dir.join("data"), data_inos }));
        }
        frozen.reverse();
        *fs.frozen.get_mut().unwrap() = Arc::new(frozen);
        fs.replay(&top_records, true).map_err(|e| at(&top_dir, e))?;
        let mut inos = data_inos(&top.data_dir).map_err(|e| at(&top.data_dir, e))?;
        // Data files of inodes no journal knows belong to files unlinked while open.
        let known = fs.nodes.get_mut().unwrap();
        for ino in inos.iter().filter(|ino| !known.contains_key(ino)) {
            remove_data_files(&top.data_dir, *ino)?;
        }
        inos.retain(|ino| known.contains_key(ino));
        *lock(&top.data_inos) = inos.clone();
        // A written file's times live on its data file (see `setattr`); a checkpoint writes
        // them into the journal before the layer is frozen.
        for ino in inos {
            let node = fs.node(ino)?;
            let mut perms = fs.load_perms(&node)?;
            let st = fs::metadata(top.data_dir.join(ino.to_string()))?;
            perms.atime = Time(st.atime(), st.atime_nsec() as u32);
            perms.mtime = Time(st.mtime(), st.mtime_nsec() as u32);
            perms.ctime = perms.ctime.max(Time(st.ctime(), st.ctime_nsec() as u32));
            lock(&node.meta).perms = Some(perms);
        }
        Ok(fs)
    }

    /// The space kept free on the layer's filesystem (see doc/SEMANTICS.md, "Full disks").
    pub fn reserve(&self) -> u64 {
        self.space.reserve()
    }

    /// Sets the reserve: below it, operations that need new space and that a caller waits
    /// for are refused with `ENOSPC`.
    pub fn set_reserve(&self, bytes: u64) {
        self.space.set_reserve(bytes)
    }

    /// The layer stack under this tree. Held while the guard lives: a live checkpoint waits
    /// for it.
    pub fn stack(&self) -> MutexGuard<'_, LayerStack> {
        lock(&self.stack)
    }

    /// Gives the layer stack back, for checkpoint, revert or reset once the tree is unmounted.
    pub fn into_stack(self) -> LayerStack {
        self.stack.into_inner().unwrap_or_else(PoisonError::into_inner)
    }

    /// The writable layer, as it is now.
    fn top(&self) -> Arc<TopLayer> {
        self.top.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The frozen layers, top-most first, as they are now.
    fn frozen(&self) -> Arc<Vec<Arc<FrozenLayer>>> {
        self.frozen.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Held by a FUSE request for the length of its call: a live checkpoint waits for the
    /// requests under way and holds back new ones until it is done.
    pub(crate) fn shared(&self) -> RwLockReadGuard<'_, ()> {
        self.gate.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn replay(&mut self, records: &[Record], top: bool) -> Result<()> {
        let mut dropped = HashSet::new();
        for record in records {
            self.replay_one(record, top, &mut dropped)
                .map_err(|e| Error::Corrupt(format!("replaying {record:?}: {e}")))?;
        }
        Ok(())
    }

    fn replay_one(&mut self, record: &Record, top: bool, dropped: &mut HashSet<Ino>) -> Result<()> {
        let corrupt = |what: String| Error::Corrupt(what);
        {
            match record {
                Record::Adopt { ino, path } => {
                    let path = PathBuf::from(path);
                    let meta = self.image.stat(&path).map_err(|e| {
                        corrupt(format!("the journal names image entry {path:?}, which the image lacks: {e}"))
                    })?;
                    let kind = meta.kind();
                    self.insert_node(*ino, kind, Some(path.clone()), true, None);
                    lock(&self.adopted).insert(path, *ino);
                }
                Record::Create { ino, kind, mode, uid, gid, rdev, target, time } => {
                    let perms = Perms {
                        mode: *mode,
                        uid: *uid,
                        gid: *gid,
                        rdev: *rdev,
                        atime: *time,
                        mtime: *time,
                        ctime: *time,
                    };
                    let node = self.insert_node(*ino, *kind, None, true, Some(perms));
                    lock(&node.meta).symlink_target = target.clone();
                }
                Record::Attr { ino, .. } if dropped.contains(ino) => {}
                Record::Attr { ino, mode, uid, gid, atime, mtime, ctime } => {
                    let node = self.replayed(*ino)?;
                    let mut meta = lock(&node.meta);
                    let rdev = meta.perms.map_or(0, |p| p.rdev);
                    meta.perms = Some(Perms {
                        mode: *mode,
                        uid: *uid,
                        gid: *gid,
                        rdev,
                        atime: *atime,
                        mtime: *mtime,
                        ctime: *ctime,
                    });
                }
                Record::Link { dir, name, ino, time } => {
                    let parent = self.replayed(*dir)?;
                    let child = self.replayed(*ino)?;
                    {
                        let mut meta = lock(&child.meta);
                        meta.parent = *dir;
                        meta.name = name.clone();
                        meta.unlinked = false;
                    }
                    self.replay_entry(&parent, name, Some(*ino), *time)?;
                }
                Record::Unlink { dir, name, time } => {
                    let parent = self.replayed(*dir)?;
                    self.replay_entry(&parent, name, None, *time)?;
                }
                Record::Drop { ino } => {
                    dropped.insert(*ino);
                    let node = self.nodes.get_mut().unwrap().remove(ino);
                    if let Some(origin) = node.as_ref().and_then(|n| n.origin.clone()) {
                        lock(&self.adopted).remove(&origin);
                    }
                    if top {
                        remove_data_files(&self.top().data_dir, *ino)?;
                    }
                }
            }
            // An inode number any record names is never handed out again: a later replay of
            // this record must not touch a new node that reused it.
            let ino = match record {
                Record::Adopt { ino, .. }
                | Record::Create { ino, .. }
                | Record::Link { ino, .. }
                | Record::Attr { ino, .. }
                | Record::Drop { ino } => *ino,
                Record::Unlink { dir, .. } => *dir,
            };
            self.next_ino.fetch_max(ino + 1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn replay_entry(&self, parent: &Node, name: &OsStr, target: Option<Ino>, time: Time) -> Result<()> {
        let dir =
            parent.dir.as_ref().ok_or_else(|| Error::Corrupt(format!("inode {} is not a directory", parent.ino)))?;
        lock(dir).overrides.insert(name.to_owned(), target);
        let mut meta = lock(&parent.meta);
        if meta.perms.is_none() {
            drop(meta);
            self.load_perms(parent)?;
            meta = lock(&parent.meta);
        }
        if let Some(perms) = meta.perms.as_mut() {
            perms.mtime = time;
            perms.ctime = time;
        }
        Ok(())
    }

    fn replayed(&self, ino: Ino) -> Result<Arc<Node>> {
        self.nodes
            .read()
            .unwrap()
            .get(&ino)
            .cloned()
            .ok_or_else(|| Error::Corrupt(format!("the journal refers to inode {ino} before making it")))
    }

    fn insert_node(
        &self,
        ino: Ino,
        kind: Kind,
        origin: Option<PathBuf>,
        adopted: bool,
        perms: Option<Perms>,
    ) -> Arc<Node> {
        let node = Arc::new(Node::new(ino, kind, origin, adopted, perms));
        self.nodes.write().unwrap().insert(ino, node.clone());
        node
    }

    fn node(&self, ino: Ino) -> Result<Arc<Node>> {
        self.nodes.read().unwrap().get(&ino).cloned().ok_or(Error::Stale)
    }

    /// Reads the attributes of an image node from the image, once. Journaled attributes win
    /// over the image's; the image's size, link count and symlink target are read regardless.
    fn load_perms(&self, node: &Node) -> Result<Perms> {
        {
            let meta = lock(&node.meta);
            if let Some(perms) = meta.perms {
                if meta.image_loaded || node.origin.is_none() {
                    return Ok(perms);
                }
            }
        }
        let path =
            node.origin.as_ref().ok_or_else(|| Error::Corrupt(format!("inode {} has no attributes", node.ino)))?;
        let st = self.image.stat(path)?;
        if st.kind() != node.kind {
            return Err(Error::Corrupt(format!(
                "image entry {} of {} is now a {:?}, not a {:?}: the image changed under the mount",
                path.display(),
                self.image.path().display(),
                st.kind(),
                node.kind
            )));
        }
        let (uid, gid) = self.options.owner.unwrap_or((st.uid(), st.gid()));
        let perms = Perms {
            mode: st.mode() & 0o7777,
            uid,
            gid,
            rdev: st.rdev() as u32,
            atime: st.atime(),
            mtime: st.mtime(),
            ctime: st.ctime(),
        };
        let target = if node.kind == Kind::Symlink { Some(self.image.read_link(path)?) } else { None };
        let mut meta = lock(&node.meta);
        meta.image_loaded = true;
        meta.image_size = st.size();
        meta.image_nlink = st.nlink() as u32;
        if meta.symlink_target.is_none() {
            meta.symlink_target = target;
        }
        Ok(*meta.perms.get_or_insert(perms))
    }

    /// Loads a directory's merged listing: the image's entries under the journals' overrides.
    /// How many nodes the first listing of a directory makes per hold of the node table's
    /// lock, which every request needs for a moment.
    const NODES_PER_HOLD: usize = 1024;

    fn entries<'a>(&self, node: &Node, dir: &'a mut Dir) -> Result<&'a mut BTreeMap<OsString, Ino>> {
        if dir.entries.is_none() {
            // The first listing of a directory makes a node for each of its image entries: a
            // database's directory can hold 80,000. They are gathered in a vector and the
            // map built from it at once (sorting, then filling its nodes in order, costs
            // less than as many inserts), under one hold of the node table's lock.
            let mut listed: Vec<(OsString, Ino)> = Vec::new();
            if let Some(origin) = &node.origin {
                let image_entries = self.image.read_dir(origin)?;
                listed.reserve(image_entries.len() + dir.overrides.len());
                let adopted = lock(&self.adopted);
                // Nodes a layer adopted exist already: they get their place below, once the
                // node table is let go (a node's own lock is never taken while it is held).
                let mut known = Vec::new();
                let mut nodes = self.nodes.write().unwrap();
                for (i, (name, kind)) in image_entries.into_iter().enumerate() {
                    if i % Self::NODES_PER_HOLD == Self::NODES_PER_HOLD - 1 {
                        // Requests for other nodes go on meanwhile.
                        drop(nodes);
                        nodes = self.nodes.write().unwrap();
                    }
                    if dir.overrides.contains_key(&name) {
                        continue;
                    }
                    let path = origin.join(&name);
                    let adopted_node =
                        if adopted.is_empty() { None } else { adopted.get(&path).and_then(|ino| nodes.get(ino)) };
                    match adopted_node {
                        Some(child) => {
                            listed.push((name.clone(), child.ino));
                            known.push((child.clone(), name));
                        }
                        None => {
                            let ino = self.next_ino.fetch_add(1, Ordering::Relaxed);
                            let child = Node::new(ino, kind, Some(path), false, None);
                            {
                                // Not in the table yet: nobody else can hold this lock.
                                let mut meta = lock(&child.meta);
                                meta.parent = node.ino;
                                meta.name = name.clone();
                            }
                            nodes.insert(ino, Arc::new(child));
                            listed.push((name, ino));
                        }
                    }
                }
                drop(nodes);
                for (child, name) in known {
                    let mut meta = lock(&child.meta);
                    meta.parent = node.ino;
                    meta.name = name;
                }
            }
            listed.extend(dir.overrides.drain().filter_map(|(name, target)| Some((name, target?))));
            // An override's name is never also an image entry's (skipped above).
            let entries: BTreeMap<OsString, Ino> = listed.into_iter().collect();
            let nodes = self.nodes.read().unwrap();
            dir.subdirs =
                entries.values().filter(|ino| nodes.get(ino).is_some_and(|n| n.kind == Kind::Dir)).count() as _;
            dir.entries = Some(entries);
        }
        Ok(dir.entries.as_mut().unwrap())
    }

    fn dir_of<'a>(&self, node: &'a Node) -> Result<&'a Mutex<Dir>> {
        node.dir.as_ref().ok_or(Error::NotDir)
    }

    fn child(&self, parent: &Node, name: &OsStr) -> Result<Option<Arc<Node>>> {
        let mut dir = lock(self.dir_of(parent)?);
        let ino = self.entries(parent, &mut dir)?.get(name).copied();
        drop(dir);
        ino.map(|ino| self.node(ino)).transpose()
    }

    /// The logical size of a file, from its top-most data file or the image.
    fn file_size(&self, node: &Node) -> Result<u64> {
        let data = node.data.as_ref().expect("a file has data");
        if let Some(size) = data.read().unwrap().size {
            return Ok(size);
        }
        let mut data = data.write().unwrap();
        if data.size.is_none() {
            data.size = Some(self.stored_size(node)?);
        }
        Ok(data.size.unwrap())
    }

    fn stored_size(&self, node: &Node) -> Result<u64> {
        let top = self.top();
        if lock(&top.data_inos).contains(&node.ino) {
            return Ok(fs::metadata(top.data_dir.join(node.ino.to_string()))?.len());
        }
        for layer in self.frozen().iter() {
            if layer.data_inos.contains(&node.ino) {
                return Ok(fs::metadata(layer.data_dir.join(node.ino.to_string()))?.len());
            }
        }
        if node.origin.is_some() {
            self.load_perms(node)?;
            return Ok(lock(&node.meta).image_size);
        }
        Ok(0)
    }

    /// Opens the files that hold a file's data: the layers' data files and the image file.
    fn resolve(&self, node: &Node, data: &mut Data) -> Result<()> {
        if data.resolved {
            return Ok(());
        }
        // What an earlier attempt that failed half-way opened.
        data.top = None;
        data.lower.clear();
        data.image = None;
        if data.size.is_none() {
            data.size = Some(self.stored_size(node)?);
        }
        let name = node.ino.to_string();
        let open = |dir: &Path, writable: bool| -> Result<LayerFile> {
            let file = OpenOptions::new().read(true).write(writable).open(dir.join(&name))?;
            let map = match BlockMap::open(&dir.join(format!("{name}.map")), writable) {
                Ok(map) => Some(map),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(e.into()),
            };
            Ok(LayerFile { file, map })
        };
        let mut reaches_image = true;
        let top = self.top();
        if lock(&top.data_inos).contains(&node.ino) {
            let file = open(&top.data_dir, true)?;
            reaches_image = file.map.is_some();
            data.top = Some(file);
        }
        for layer in self.frozen().iter() {
            if !reaches_image {
                break;
            }
            if layer.data_inos.contains(&node.ino) {
                let file = open(&layer.data_dir, false)?;
                reaches_image = file.map.is_some();
                data.lower.push(file);
            }
        }
        if reaches_image {
            if let Some(origin) = &node.origin {
                data.image = Some(self.image.open_file(origin)?);
            }
        }
        data.resolved = true;
        Ok(())
    }

    /// Reads `buf.len()` bytes at `offset` from level `level` of a file's data (0 is the top
    /// layer when it has a data file, then the frozen layers, then the image).
    fn read_level(data: &Data, level: usize, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let file = if data.top.is_some() {
            if level == 0 {
                data.top.as_ref()
            } else {
                data.lower.get(level - 1)
            }
        } else {
            data.lower.get(level)
        };
        let Some(file) = file else {
            return match &data.image {
                Some(image) => read_image(image, offset, buf),
                None => {
                    buf.fill(0);
                    Ok(())
                }
            };
        };
        let Some(map) = &file.map else {
            return read_full(&file.file, offset, buf);
        };
        let end = offset + buf.len() as u64;
        let mut pos = offset;
        while pos < end {
            let (owned, run_end) = owned_run(map, pos, end);
            let chunk = &mut buf[(pos - offset) as usize..(run_end - offset) as usize];
            if owned {
                read_full(&file.file, pos, chunk)?;
            } else {
                Self::read_level(data, level + 1, pos, chunk)?;
            }
            pos = run_end;
        }
        Ok(())
    }

    /// Makes sure the writable layer has a data file for `node`: a sparse file of the
    /// current size, with a block map when layers beneath still show through.
    fn copy_up(&self, node: &Node, data: &mut Data) -> Result<()> {
        self.resolve(node, data)?;
        if data.top.is_some() {
            return Ok(());
        }
        // An unlinked node's data file is garbage after a crash: the mount collects data files
        // of unknown inodes, so it is not adopted.
        if !lock(&node.meta).unlinked {
            self.adopt(&[node])?;
        }
        let size = data.size.unwrap_or(0);
        let below = !data.lower.is_empty() || data.image.is_some();
        let name = node.ino.to_string();
        let top = self.top();
        let map_path = top.data_dir.join(format!("{name}.map"));
        // Built under a temporary name so that the data file appears with its full size.
        let tmp = top.data_dir.join(format!("{name}.new"));
        let made = (|| {
            let map = if below && size > 0 { Some(BlockMap::create(&map_path, size)?) } else { None };
            let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&tmp)?;
            file.set_len(size)?;
            fs::rename(&tmp, top.data_dir.join(&name))?;
            Ok::<_, io::Error>((file, map))
        })();
        let (file, map) = match made {
            Ok(made) => made,
            Err(e) => {
                // Out of space, most likely: take back what was made. (The mount would also
                // collect these files, but the space is wanted now.)
                for path in [&tmp, &map_path] {
                    if let Err(e) = fs::remove_file(path) {
                        if e.kind() != io::ErrorKind::NotFound {
                            tracing::warn!(path = %path.display(), "could not remove after a failed copy-up: {e}");
                        }
                    }
                }
                return self.space.observe(Err(e.into()), false);
            }
        };
        lock(&top.data_inos).insert(node.ino);
        top.data_dir_dirty.store(true, Ordering::Release);
        if map.is_none() {
            data.lower.clear();
            data.image = None;
        }
        data.top = Some(LayerFile { file, map });
        Ok(())
    }

    /// Records in the journal which image entries these nodes stand for, where it does not
    /// know yet.
    fn adopt(&self, nodes: &[&Node]) -> Result<()> {
        let mut batch = Vec::new();
        self.adoption_records(nodes, &mut batch);
        self.append(batch, nodes)
    }

    fn adoption_records(&self, nodes: &[&Node], batch: &mut Vec<Record>) {
        for node in nodes {
            if !node.adopted.load(Ordering::Acquire) {
                let path = node.origin.clone().expect("only image nodes are not adopted");
                batch.push(Record::Adopt { ino: node.ino, path: path.into_os_string() });
            }
        }
    }

    /// Appends one operation's records to the journal, then marks `adopted` nodes as known.
    fn append(&self, batch: Vec<Record>, adopted: &[&Node]) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let top = self.top();
        let mut journal = lock(&top.journal);
        self.space.observe(journal.append(&batch).map_err(Error::from), false)?;
        for node in adopted {
            if !node.adopted.swap(true, Ordering::AcqRel) {
                if let Some(origin) = &node.origin {
                    lock(&self.adopted).insert(origin.clone(), node.ino);
                }
            }
        }
        Ok(())
    }

    fn attr_of(&self, node: &Node) -> Result<Attr> {
        let perms = self.load_perms(node)?;
        let (size, nlink) = match node.kind {
            Kind::File => (self.file_size(node)?, if lock(&node.meta).unlinked { 0 } else { 1 }),
            Kind::Dir => {
                let dir = lock(node.dir.as_ref().unwrap());
                let nlink = match &dir.entries {
                    Some(_) => 2 + dir.subdirs,
                    None => lock(&node.meta).image_nlink.max(2),
                };
                (4096, nlink)
            }
            Kind::Symlink => {
                let meta = lock(&node.meta);
                (meta.symlink_target.as_ref().map_or(0, |t| t.len() as u64), 1)
            }
            _ => (0, 1),
        };
        let nlink = if node.kind != Kind::File && lock(&node.meta).unlinked { 0 } else { nlink };
        Ok(Attr {
            ino: node.ino,
            kind: node.kind,
            size,
            mode: perms.mode,
            nlink,
            uid: perms.uid,
            gid: perms.gid,
            rdev: perms.rdev,
            atime: perms.atime,
            mtime: perms.mtime,
            ctime: perms.ctime,
        })
    }

    pub fn getattr(&self, ino: Ino) -> Result<Attr> {
        self.attr_of(&*self.node(ino)?)
    }

    /// Looks a name up and counts the kernel's reference to the node.
    pub fn lookup(&self, parent: Ino, name: &OsStr) -> Result<Attr> {
        if name.len() > NAME_MAX {
            return Err(Error::NameTooLong);
        }
        let parent = self.node(parent)?;
        let child = self.child(&parent, name)?.ok_or(Error::NotFound)?;
        let attr = self.attr_of(&child)?;
        lock(&child.meta).nlookup += 1;
        Ok(attr)
    }

    /// Drops `n` of the kernel's references to a node.
    pub fn forget(&self, ino: Ino, n: u64) {
        let Ok(node) = self.node(ino) else { return };
        let gone = {
            let mut meta = lock(&node.meta);
            meta.nlookup = meta.nlookup.saturating_sub(n);
            meta.unlinked && meta.nlookup == 0 && meta.open == 0
        };
        if gone && ino != ROOT_INO {
            self.nodes.write().unwrap().remove(&ino);
        }
    }

    pub fn readlink(&self, ino: Ino) -> Result<OsString> {
        let node = self.node(ino)?;
        if node.kind != Kind::Symlink {
            return Err(Error::Invalid);
        }
        self.load_perms(&node)?;
        let target = lock(&node.meta).symlink_target.clone();
        target.ok_or_else(|| Error::Corrupt(format!("symlink {ino} has no target")))
    }

    pub fn readdir(&self, ino: Ino) -> Result<Vec<DirEntry>> {
        let node = self.node(ino)?;
        let mut dir = lock(self.dir_of(&node)?);
        let entries: Vec<(OsString, Ino)> =
            self.entries(&node, &mut dir)?.iter().map(|(n, i)| (n.clone(), *i)).collect();
        drop(dir);
        let nodes = self.nodes.read().unwrap();
        Ok(entries
            .into_iter()
            .filter_map(|(name, ino)| Some(DirEntry { ino, kind: nodes.get(&ino)?.kind, name }))
            .collect())
    }

    /// The parent of a directory, for `..`.
    pub fn parent(&self, ino: Ino) -> Result<Ino> {
        Ok(lock(&self.node(ino)?.meta).parent)
    }

    /// Makes a node: a file, directory, symlink or special file.
    fn make(
        &self,
        parent: Ino,
        name: &OsStr,
        kind: Kind,
        mode: u32,
        rdev: u32,
        target: Option<&OsStr>,
        caller: Caller,
    ) -> Result<Attr> {
        check_name(name)?;
        let _ns = lock(&self.namespace);
        let parent = self.node(parent)?;
        let parent_perms = self.load_perms(&parent)?;
        let mut dir = lock(self.dir_of(&parent)?);
        if lock(&parent.meta).unlinked {
            return Err(Error::NotFound);
        }
        if self.entries(&parent, &mut dir)?.contains_key(name) {
            return Err(Error::Exists);
        }
        // A new node takes little space itself: refused only once the layer's filesystem is
        // well into the reserve (see space.rs).
        self.space.admit(BLOCK_SIZE, true)?;
        let now = Time::now();
        let mut mode = mode & 0o7777;
        let gid = if parent_perms.mode & libc::S_ISGID != 0 {
            if kind == Kind::Dir {
                mode |= libc::S_ISGID;
            }
            parent_perms.gid
        } else {
            caller.gid
        };
        let ino = self.next_ino.fetch_add(1, Ordering::Relaxed);
        let perms = Perms { mode, uid: caller.uid, gid, rdev, atime: now, mtime: now, ctime: now };
        let mut batch = Vec::new();
        self.adoption_records(&[&parent], &mut batch);
        batch.push(Record::Create {
            ino,
            kind,
            mode,
            uid: perms.uid,
            gid,
            rdev,
            target: target.map(OsStr::to_owned),
            time: now,
        });
        batch.push(Record::Link { dir: parent.ino, name: name.to_owned(), ino, time: now });
        self.append(batch, &[&parent])?;

        let node = self.insert_node(ino, kind, None, true, Some(perms));
        {
            let mut meta = lock(&node.meta);
            meta.parent = parent.ino;
            meta.name = name.to_owned();
            meta.symlink_target = target.map(OsStr::to_owned);
            meta.nlookup = 1;
        }
        if let Some(data) = &node.data {
            let mut data = data.write().unwrap();
            data.size = Some(0);
            data.resolved = true;
        }
        self.entries(&parent, &mut dir)?.insert(name.to_owned(), ino);
        if kind == Kind::Dir {
            dir.subdirs += 1;
        }
        drop(dir);
        touch(&parent, now);
        self.attr_of(&node)
    }

    pub fn mknod(&self, parent: Ino, name: &OsStr, mode: u32, rdev: u32, caller: Caller) -> Result<Attr> {
        let kind = Kind::from_mode(mode).ok_or(Error::Invalid)?;
        if kind == Kind::Dir || kind == Kind::Symlink {
            return Err(Error::Invalid);
        }
        self.make(parent, name, kind, mode, rdev, None, caller)
    }

    pub fn mkdir(&self, parent: Ino, name: &OsStr, mode: u32, caller: Caller) -> Result<Attr> {
        self.make(parent, name, Kind::Dir, mode, 0, None, caller)
    }

    pub fn symlink(&self, parent: Ino, name: &OsStr, target: &OsStr, caller: Caller) -> Result<Attr> {
        if target.len() > 4095 {
            return Err(Error::NameTooLong);
        }
        self.make(parent, name, Kind::Symlink, 0o777, 0, Some(target), caller)
    }

    /// Creates and opens a regular file (`O_CREAT`). With `exclusive`, an existing name is
    /// an error; otherwise the existing file is opened.
    pub fn create(&self, parent: Ino, name: &OsStr, mode: u32, flags: i32, caller: Caller) -> Result<Attr> {
        let attr = match self.make(parent, name, Kind::File, mode, 0, None, caller) {
            Err(Error::Exists) if flags & libc::O_EXCL == 0 => {
                let attr = self.lookup(parent, name)?;
                if attr.kind == Kind::Dir {
                    return Err(Error::IsDir);
                }
                attr
            }
            result => result?,
        };
        self.open(attr.ino, flags)?;
        if flags & libc::O_TRUNC != 0 && attr.kind == Kind::File && attr.size != 0 {
            return self.setattr(attr.ino, SetAttr { size: Some(0), ..SetAttr::default() });
        }
        Ok(attr)
    }

    pub fn link(&self, _ino: Ino, _parent: Ino, _name: &OsStr) -> Result<Attr> {
        Err(Error::NotPermitted)
    }

    pub fn unlink(&self, parent: Ino, name: &OsStr) -> Result<()> {
        self.remove(parent, name, false)
    }

    pub fn rmdir(&self, parent: Ino, name: &OsStr) -> Result<()> {
        self.remove(parent, name, true)
    }

    fn remove(&self, parent: Ino, name: &OsStr, want_dir: bool) -> Result<()> {
        if name.len() > NAME_MAX {
            return Err(Error::NameTooLong);
        }
        if want_dir && name == "." {
            return Err(Error::Invalid);
        }
        if want_dir && name == ".." {
            return Err(Error::NotEmpty);
        }
        let _ns = lock(&self.namespace);
        let parent = self.node(parent)?;
        let child = self.child(&parent, name)?.ok_or(Error::NotFound)?;
        match (want_dir, child.kind == Kind::Dir) {
            (true, false) => return Err(Error::NotDir),
            (false, true) => return Err(Error::IsDir),
            (true, true) => {
                let mut dir = lock(child.dir.as_ref().unwrap());
                if !self.entries(&child, &mut dir)?.is_empty() {
                    return Err(Error::NotEmpty);
                }
            }
            (false, false) => {}
        }
        let now = Time::now();
        let mut batch = Vec::new();
        self.adoption_records(&[&parent], &mut batch);
        batch.push(Record::Unlink { dir: parent.ino, name: name.to_owned(), time: now });
        batch.push(Record::Drop { ino: child.ino });
        self.append(batch, &[&parent])?;
        {
            let mut dir = lock(parent.dir.as_ref().unwrap());
            self.entries(&parent, &mut dir)?.remove(name);
            if child.kind == Kind::Dir {
                dir.subdirs -= 1;
            }
        }
        touch(&parent, now);
        self.unlinked(&child, now)
    }

    /// A node lost its only name: forget it now, or when its last handle closes.
    fn unlinked(&self, node: &Node, now: Time) -> Result<()> {
        let idle = {
            let mut meta = lock(&node.meta);
            meta.unlinked = true;
            if let Some(perms) = meta.perms.as_mut() {
                perms.ctime = now;
            }
            meta.open == 0
        };
        if idle {
            self.discard(node)?;
        }
        Ok(())
    }

    /// Deletes an unlinked node's data in the writable layer.
    fn discard(&self, node: &Node) -> Result<()> {
        if let Some(data) = &node.data {
            let mut data = data.write().unwrap();
            *data = Data { size: data.size, ..Data::default() };
        }
        let top = self.top();
        if lock(&top.data_inos).remove(&node.ino) {
            remove_data_files(&top.data_dir, node.ino)?;
            top.data_dir_dirty.store(true, Ordering::Release);
        }
        if lock(&node.meta).nlookup == 0 {
            self.nodes.write().unwrap().remove(&node.ino);
        }
        Ok(())
    }

    pub fn rename(&self, parent: Ino, name: &OsStr, new_parent: Ino, new_name: &OsStr, flags: u32) -> Result<()> {
        check_name(new_name)?;
        if name.len() > NAME_MAX {
            return Err(Error::NameTooLong);
        }
        if flags & !libc::RENAME_NOREPLACE != 0 {
            return Err(Error::Invalid);
        }
        let _ns = lock(&self.namespace);
        let from_dir = self.node(parent)?;
        let to_dir = self.node(new_parent)?;
        let node = self.child(&from_dir, name)?.ok_or(Error::NotFound)?;
        self.dir_of(&to_dir)?;
        if lock(&to_dir.meta).unlinked {
            return Err(Error::NotFound);
        }
        let target = self.child(&to_dir, new_name)?;
        if let Some(target) = &target {
            if flags & libc::RENAME_NOREPLACE != 0 {
                return Err(Error::Exists);
            }
            if target.ino == node.ino {
                return Ok(());
            }
            match (node.kind == Kind::Dir, target.kind == Kind::Dir) {
                (true, false) => return Err(Error::NotDir),
                (false, true) => return Err(Error::IsDir),
                (true, true) => {
                    let mut dir = lock(target.dir.as_ref().unwrap());
                    if !self.entries(target, &mut dir)?.is_empty() {
                        return Err(Error::NotEmpty);
                    }
                }
                (false, false) => {}
            }
        }
        if node.kind == Kind::Dir {
            // A directory cannot move into its own subtree.
            let mut ancestor = to_dir.ino;
            loop {
                if ancestor == node.ino {
                    return Err(Error::Invalid);
                }
                if ancestor == ROOT_INO {
                    break;
                }
                ancestor = lock(&self.node(ancestor)?.meta).parent;
            }
        }

        let now = Time::now();
        let mut batch = Vec::new();
        self.adoption_records(&[&from_dir, &to_dir, &node], &mut batch);
        batch.push(Record::Unlink { dir: from_dir.ino, name: name.to_owned(), time: now });
        batch.push(Record::Link { dir: to_dir.ino, name: new_name.to_owned(), ino: node.ino, time: now });
        if let Some(target) = &target {
            batch.push(Record::Drop { ino: target.ino });
        }
        self.append(batch, &[&from_dir, &to_dir, &node])?;

        let is_dir = node.kind == Kind::Dir;
        {
            let mut dir = lock(from_dir.dir.as_ref().unwrap());
            self.entries(&from_dir, &mut dir)?.remove(name);
            if is_dir {
                dir.subdirs -= 1;
            }
        }
        {
            let mut dir = lock(to_dir.dir.as_ref().unwrap());
            self.entries(&to_dir, &mut dir)?.insert(new_name.to_owned(), node.ino);
            if is_dir && target.is_none() {
                dir.subdirs += 1;
            }
        }
        {
            let mut meta = lock(&node.meta);
            meta.parent = to_dir.ino;
            meta.name = new_name.to_owned();
        }
        if self.load_perms(&node).is_ok() {
            if let Some(perms) = lock(&node.meta).perms.as_mut() {
                perms.ctime = now;
            }
        }
        touch(&from_dir, now);
        touch(&to_dir, now);
        if let Some(target) = target {
            self.unlinked(&target, now)?;
        }
        Ok(())
    }

    /// Counts an open handle of a node.
    pub fn open(&self, ino: Ino, flags: i32) -> Result<()> {
        let node = self.node(ino)?;
        if node.kind == Kind::Dir && flags & libc::O_ACCMODE != libc::O_RDONLY {
            return Err(Error::IsDir);
        }
        lock(&node.meta).open += 1;
        if flags & libc::O_TRUNC != 0 && node.kind == Kind::File {
            let result = self.truncate(&node, 0);
            if result.is_err() {
                self.release(ino)?;
            }
            result?;
        }
        Ok(())
    }

    /// Drops an open handle of a node; the last one closes its files.
    pub fn release(&self, ino: Ino) -> Result<()> {
        let node = self.node(ino)?;
        let (last, unlinked) = {
            let mut meta = lock(&node.meta);
            meta.open = meta.open.saturating_sub(1);
            (meta.open == 0, meta.unlinked)
        };
        if last && unlinked {
            return self.discard(&node);
        }
        if last {
            if let Some(data) = &node.data {
                let mut data = data.write().unwrap();
                // Close the files, keeping what is known; the next access opens them again.
                *data = Data { size: data.size, ..Data::default() };
            }
        }
        Ok(())
    }

    fn file(&self, ino: Ino) -> Result<Arc<Node>> {
        let node = self.node(ino)?;
        match node.kind {
            Kind::File => Ok(node),
            Kind::Dir => Err(Error::IsDir),
            _ => Err(Error::Invalid),
        }
    }

    pub fn read(&self, ino: Ino, offset: u64, size: u32) -> Result<Vec<u8>> {
        let node = self.file(ino)?;
        let lock_ = node.data.as_ref().unwrap();
        {
            let data = lock_.read().unwrap();
            if data.resolved {
                return Self::read_resolved(&data, offset, size);
            }
        }
        let mut data = lock_.write().unwrap();
        self.resolve(&node, &mut data)?;
        Self::read_resolved(&data, offset, size)
    }

    fn read_resolved(data: &Data, offset: u64, size: u32) -> Result<Vec<u8>> {
        let file_size = data.size.unwrap_or(0);
        let end = file_size.min(offset.saturating_add(size as u64));
        if end <= offset {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; (end - offset) as usize];
        Self::read_level(data, 0, offset, &mut buf)?;
        Ok(buf)
    }

    /// Writes `bytes` at `offset` for a caller that waits for the answer (a mount without the
    /// writeback cache, or `O_DIRECT`). When the write needs new space and the layer's
    /// filesystem is below the reserve, it is refused with `ENOSPC` before anything is written.
    pub fn write(&self, ino: Ino, offset: u64, bytes: &[u8]) -> Result<u32> {
        self.write_data(ino, offset, bytes, false)
    }

    /// Writes `bytes` that the kernel has already accepted from the application into its
    /// writeback cache. The writer can no longer be told, so the reserve does not apply: this
    /// write may use it. It fails only when the filesystem itself is full.
    pub fn write_cached(&self, ino: Ino, offset: u64, bytes: &[u8]) -> Result<u32> {
        self.write_data(ino, offset, bytes, true)
    }

    fn write_data(&self, ino: Ino, offset: u64, bytes: &[u8], cached: bool) -> Result<u32> {
        let node = self.file(ino)?;
        if bytes.is_empty() {
            return Ok(0);
        }
        let end = offset + bytes.len() as u64;
        let mut data = node.data.as_ref().unwrap().write().unwrap();
        self.resolve(&node, &mut data)?;
        if cached {
            self.space.spent(bytes.len() as u64);
        } else {
            let need = new_bytes(&data, offset, end);
            if need > 0 {
                self.space.admit(need, end <= space::SMALL)?;
            }
        }
        self.copy_up(&node, &mut data)?;
        let size = data.size.unwrap_or(0);
        if let Err(e) = Self::store(&mut data, offset, bytes) {
            Self::take_back(&data, size, offset, end);
            return self.space.observe(Err(e), cached);
        }
        data.size = Some(size.max(end));
        drop(data);
        touch(&node, Time::now());
        Ok(bytes.len() as u32)
    }

    /// Stores a write in the top layer's data file (which exists).
    fn store(data: &mut Data, offset: u64, bytes: &[u8]) -> Result<()> {
        let size = data.size.unwrap_or(0);
        let end = offset + bytes.len() as u64;
        let top = data.top.as_mut().unwrap();
        match &mut top.map {
            Some(map) if offset < map.lower_limit() => {
                // Blocks that start below the lower limit and are not yet owned are copied
                // up whole: read what the write does not cover from beneath.
                let first = offset / BLOCK_SIZE;
                let last = (end - 1) / BLOCK_SIZE;
                let head_start = if map.is_owned(first) { offset } else { first * BLOCK_SIZE };
                let tail_end =
                    if map.is_owned(last) { end } else { ((last + 1) * BLOCK_SIZE).min(size.max(end)).max(end) };
                let mut buf = vec![0u8; (tail_end - head_start) as usize];
                if head_start < offset {
                    // Reading at level 0 gives the current merged contents.
                    Self::read_level(data, 0, head_start, &mut buf[..(offset - head_start) as usize])?;
                }
                if tail_end > end {
                    let at = (end - head_start) as usize;
                    Self::read_level(data, 0, end, &mut buf[at..])?;
                }
                buf[(offset - head_start) as usize..(end - head_start) as usize].copy_from_slice(bytes);
                let top = data.top.as_mut().unwrap();
                top.file.write_all_at(&buf, head_start)?;
                top.map.as_mut().unwrap().set_owned(first, last)?;
            }
            _ => top.file.write_all_at(bytes, offset)?,
        }
        Ok(())
    }

    /// After a failed write (out of space, most likely), frees what it stored that nothing
    /// shows: the data file is cut back to the file's size, and blocks of `offset..end` the
    /// layer does not own are punched out. Bytes written over owned blocks stay, as after a
    /// short write.
    fn take_back(data: &Data, size: u64, offset: u64, end: u64) {
        let top = data.top.as_ref().unwrap();
        if end > size {
            if let Err(e) = top.file.set_len(size) {
                tracing::warn!("could not cut a data file back to its size after a failed write: {e}");
            }
        }
        let Some(map) = &top.map else { return };
        let mut block = offset / BLOCK_SIZE;
        while block * BLOCK_SIZE < end.min(size).min(map.lower_limit()) {
            if !map.is_owned(block) {
                // SAFETY: fallocate on a file descriptor we own.
                let rc = unsafe {
                    libc::fallocate(
                        top.file.as_raw_fd(),
                        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                        (block * BLOCK_SIZE) as i64,
                        BLOCK_SIZE as i64,
                    )
                };
                if rc != 0 {
                    let e = io::Error::last_os_error();
                    tracing::debug!("could not punch out a block after a failed write: {e}");
                    return;
                }
            }
            block += 1;
        }
    }

    fn truncate(&self, node: &Node, size: u64) -> Result<()> {
        let mut data = node.data.as_ref().unwrap().write().unwrap();
        self.copy_up(node, &mut data)?;
        let top = data.top.as_mut().unwrap();
        if let Some(map) = &mut top.map {
            map.lower_the_limit(size)?;
        }
        top.file.set_len(size)?;
        data.size = Some(size);
        drop(data);
        touch(node, Time::now());
        Ok(())
    }

    pub fn setattr(&self, ino: Ino, set: SetAttr) -> Result<Attr> {
        let node = self.node(ino)?;
        if let Some(size) = set.size {
            match node.kind {
                Kind::File => self.truncate(&node, size)?,
                Kind::Dir => return Err(Error::IsDir),
                _ => return Err(Error::Invalid),
            }
        }
        let owner_or_mode = set.mode.is_some() || set.uid.is_some() || set.gid.is_some();
        let times = set.atime.is_some() || set.mtime.is_some();
        let top = self.top();
        if times && !owner_or_mode && node.kind == Kind::File && lock(&top.data_inos).contains(&ino) {
            // The kernel sends these before every fsync of a written file (writeback cache):
            // they go to the data file's own timestamps, not to the journal, so a commit costs
            // no journal write. Mounting reads them back.
            let mut perms = self.load_perms(&node)?;
            perms.atime = set.atime.unwrap_or(perms.atime);
            perms.mtime = set.mtime.unwrap_or(perms.mtime);
            perms.ctime = set.ctime.unwrap_or_else(Time::now);
            set_file_times(&top.data_dir.join(ino.to_string()), perms.atime, perms.mtime)?;
            lock(&node.meta).perms = Some(perms);
        } else if owner_or_mode || times {
            let _ns = lock(&self.namespace);
            let mut perms = self.load_perms(&node)?;
            let now = Time::now();
            if let Some(mode) = set.mode {
                perms.mode = mode & 0o7777;
            }
            perms.uid = set.uid.unwrap_or(perms.uid);
            perms.gid = set.gid.unwrap_or(perms.gid);
            perms.atime = set.atime.unwrap_or(perms.atime);
            perms.mtime = set.mtime.unwrap_or(perms.mtime);
            perms.ctime = set.ctime.unwrap_or(now);
            // An unlinked node's attributes die with it: nothing to journal.
            let unlinked = lock(&node.meta).unlinked;
            let mut batch = Vec::new();
            if !unlinked {
                self.adoption_records(&[&node], &mut batch);
            }
            batch.push(attr_record(ino, &perms));
            if !unlinked {
                self.append(batch, &[&node])?;
            }
            lock(&node.meta).perms = Some(perms);
        } else if let Some(ctime) = set.ctime {
            if let Some(perms) = lock(&node.meta).perms.as_mut() {
                perms.ctime = ctime;
            }
        }
        self.attr_of(&node)
    }

    /// Preallocates space (`mode` 0 or `FALLOC_FL_KEEP_SIZE`); other modes are refused with
    /// `EOPNOTSUPP`, on which databases and glibc fall back to writing zeros.
    pub fn fallocate(&self, ino: Ino, offset: u64, len: u64, mode: i32) -> Result<()> {
        if mode & !libc::FALLOC_FL_KEEP_SIZE != 0 {
            return Err(Error::NotSupported);
        }
        let node = self.file(ino)?;
        // Allocating is taking new space: refused below the reserve, as a write would be.
        self.space.admit(len, offset.saturating_add(len) <= space::SMALL)?;
        let mut data = node.data.as_ref().unwrap().write().unwrap();
        self.copy_up(&node, &mut data)?;
        let top = data.top.as_ref().unwrap();
        // SAFETY: fallocate on a file descriptor we own.
        let rc = unsafe { libc::fallocate(top.file.as_raw_fd(), mode, offset as i64, len as i64) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            // A filesystem may have grown the file before running out: back to its size.
            let size = data.size.unwrap_or(0);
            if top.file.metadata().is_ok_and(|m| m.len() > size) {
                if let Err(e) = top.file.set_len(size) {
                    tracing::warn!("could not cut a data file back to its size after a failed fallocate: {e}");
                }
            }
            return self.space.observe(Err(e.into()), false);
        }
        if mode == 0 {
            let size = data.size.unwrap_or(0).max(offset + len);
            data.size = Some(size);
        }
        drop(data);
        touch(&node, Time::now());
        Ok(())
    }

    /// Makes a file's data and the journal durable.
    pub fn fsync(&self, ino: Ino, datasync: bool) -> Result<()> {
        let node = self.node(ino)?;
        if let Some(data) = &node.data {
            // Shared: writes to other parts of the file go on during the fsync.
            let data = data.read().unwrap();
            if let Some(top) = &data.top {
                let synced = if datasync { top.file.sync_data() } else { top.file.sync_all() };
                self.space.observe(synced.map_err(Error::from), false)?;
                if let Some(map) = &top.map {
                    map.sync()?;
                }
            }
        }
        self.sync_metadata()
    }

    /// Makes the namespace durable.
    pub fn fsyncdir(&self, ino: Ino) -> Result<()> {
        self.node(ino)?;
        self.sync_metadata()
    }

    fn sync_metadata(&self) -> Result<()> {
        self.top().sync_metadata()
    }

    /// Makes everything durable, as at unmount.
    pub fn sync_all(&self) -> Result<()> {
        let nodes: Vec<Arc<Node>> = self.nodes.read().unwrap().values().cloned().collect();
        for node in nodes {
            if let Some(data) = &node.data {
                if let Some(top) = &data.read().unwrap().top {
                    top.file.sync_all()?;
                    if let Some(map) = &top.map {
                        map.sync()?;
                    }
                }
            }
        }
        self.sync_metadata()
    }

    /// Checkpoints the tree while it is in use (mounted, files open): freezes the writable
    /// layer and starts a new, empty one over it, as [`LayerStack::checkpoint`] does offline.
    /// Returns the id of the layer frozen, which [`LayerStack::revert_to`] takes.
    ///
    /// FUSE requests wait while it runs (see the locking rules above): the frozen layer holds
    /// exactly what cowfs had answered before it, made durable (data files, block maps, the
    /// journal, the data directory), with the times that otherwise live only on data files
    /// written into its journal, so that a later mount replays it as it was. The stack then
    /// commits with one rename of `stack.json`: a crash leaves the old stack or the new one.
    /// Open files stay open; each file's data is looked up again across the new layers at its
    /// next access, as a fresh mount would. Writes the kernel holds in its writeback cache are
    /// not cowfs's yet: they land in the new layer (an application's `fsync` before the
    /// checkpoint puts its data in the frozen one).
    ///
    /// In-process callers must not call other methods of this tree from other threads while
    /// it runs: only FUSE requests wait for it.
    pub fn checkpoint_live(&self) -> Result<u64> {
        let mut stack = lock(&self.stack);
        // Most of the layer reaches the disk while requests still run; what they write
        // meanwhile is synced again below.
        if let Err(e) = self.top().sync_data_files() {
            tracing::debug!("syncing the layer before a checkpoint: {e}");
        }
        let _gate = self.gate.write().unwrap_or_else(PoisonError::into_inner);
        let _ns = lock(&self.namespace);
        let top = self.top();

        // A written file's times are on its data file (see `setattr`), which a frozen layer's
        // replay does not read: the journal gets them.
        let mut inos: Vec<Ino> = lock(&top.data_inos).iter().copied().collect();
        inos.sort_unstable();
        let mut attrs = Vec::new();
        for ino in inos {
            let Ok(node) = self.node(ino) else { continue };
            if lock(&node.meta).unlinked {
                continue;
            }
            let perms = self.load_perms(&node)?;
            attrs.push(attr_record(ino, &perms));
        }
        for batch in attrs.chunks(1024) {
            self.append(batch.to_vec(), &[])?;
        }
        self.space.observe(top.sync_data_files().map_err(Error::from), false)?;
        top.sync_metadata()?;

        let id = stack.new_layer()?;
        let dir = stack.layer_dir(id);
        let new_top = match Journal::open(&dir.join("journal")) {
            Ok((journal, _)) => TopLayer::new(&dir, journal),
            Err(e) => {
                stack.abandon(id);
                return Err(at(&dir, e));
            }
        };
        // On failure, `stack.json` may name the new layer after all (only the sync of its
        // directory failed): the layer then stays, empty, and the next mount sees the same
        // tree. Otherwise that mount collects the layer.
        let frozen_id = stack.push_layer(id)?;

        // The stack has the new layer: from here on nothing fails. (Data files of files
        // unlinked while open stay in the frozen layer, which no journal names: a later
        // mount never reads them.)
        let old_inos = lock(&top.data_inos).clone();
        let mut frozen = vec![Arc::new(FrozenLayer { data_dir: top.data_dir.clone(), data_inos: old_inos })];
        frozen.extend(self.frozen().iter().cloned());
        *self.top.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(new_top);
        *self.frozen.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(frozen);
        // Every file's data is looked up again, across the new layers, at its next access.
        let nodes: Vec<Arc<Node>> = self.nodes.read().unwrap().values().cloned().collect();
        for node in nodes {
            if let Some(data) = &node.data {
                let mut data = data.write().unwrap_or_else(PoisonError::into_inner);
                *data = Data { size: data.size, ..Data::default() };
            }
        }
        tracing::info!(layer = frozen_id, writable = id, "checkpoint of the live tree");
        Ok(frozen_id)
    }

    pub fn statfs(&self) -> Result<Statfs> {
        let path = std::ffi::CString::new(self.top().data_dir.as_os_str().as_bytes()).map_err(|_| Error::Invalid)?;
        // SAFETY: statvfs fills the struct we pass; the path is a valid C string.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
            return Err(io::Error::last_os_error().into());
        }
        // What cowfs keeps in reserve is not available to the tree's users: a clone whose
        // writes are refused shows a full filesystem.
        let reserve = self.space.reserve().div_ceil((st.f_frsize as u64).max(1));
        Ok(Statfs {
            blocks: st.f_blocks,
            bfree: st.f_bfree.saturating_sub(reserve),
            bavail: st.f_bavail.saturating_sub(reserve),
            files: st.f_files,
            ffree: st.f_ffree,
            bsize: st.f_bsize as u32,
            namelen: NAME_MAX as u32,
            frsize: st.f_frsize as u32,
        })
    }

    /// The logical size of the merged tree: the sum of the sizes of its regular files.
    pub fn logical_size(&self) -> Result<u64> {
        let mut total = 0;
        let mut todo = vec![ROOT_INO];
        while let Some(dir) = todo.pop() {
            for entry in self.readdir(dir)? {
                match entry.kind {
                    Kind::Dir => todo.push(entry.ino),
                    Kind::File => total += self.file_size(&*self.node(entry.ino)?)?,
                    _ => {}
                }
            }
        }
        Ok(total)
    }
}

/// How many bytes of new space a write of `offset..end` may take in the top layer: the blocks
/// it copies up, and what it adds past the end of the file. Filling a hole inside a file the
/// layer holds whole counts as nothing: it is space the file was given (by `fallocate`, or
/// the reserve), and refusing it would fail writes into space the application reserved.
fn new_bytes(data: &Data, offset: u64, end: u64) -> u64 {
    let size = data.size.unwrap_or(0);
    let past_eof = end.saturating_sub(size.max(offset));
    let within = offset..end.min(size);
    if within.is_empty() {
        return past_eof;
    }
    let blocks = within.start / BLOCK_SIZE..=(within.end - 1) / BLOCK_SIZE;
    let copied = match &data.top {
        None if data.lower.is_empty() && data.image.is_none() => 0,
        None => blocks.count() as u64,
        Some(LayerFile { map: Some(map), .. }) => blocks.filter(|b| !map.is_owned(*b)).count() as u64,
        Some(LayerFile { map: None, .. }) => 0,
    };
    past_eof + copied * BLOCK_SIZE
}

/// The extent of bytes from `pos` (below `end`) that are all owned by the map's layer, or all
/// not: `(owned, run_end)`.
fn owned_run(map: &BlockMap, pos: u64, end: u64) -> (bool, u64) {
    let limit = map.lower_limit();
    if pos >= limit {
        return (true, end);
    }
    let owned = map.is_owned(pos / BLOCK_SIZE);
    let mut run_end = ((pos / BLOCK_SIZE + 1) * BLOCK_SIZE).min(end);
    while run_end < end && run_end < limit && map.is_owned(run_end / BLOCK_SIZE) == owned {
        run_end = (run_end + BLOCK_SIZE).min(end);
    }
    // Past the limit everything is owned: a run of not-owned bytes stops there.
    if !owned {
        run_end = run_end.min(limit);
    }
    (owned, run_end)
}

/// Sets a node's mtime and ctime, as a change of its contents does.
fn touch(node: &Node, now: Time) {
    if let Some(perms) = lock(&node.meta).perms.as_mut() {
        perms.mtime = now;
        perms.ctime = now;
    }
}

fn set_file_times(path: &Path, atime: Time, mtime: Time) -> io::Result<()> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let times = [
        libc::timespec { tv_sec: atime.0, tv_nsec: atime.1 as i64 },
        libc::timespec { tv_sec: mtime.0, tv_nsec: mtime.1 as i64 },
    ];
    // SAFETY: a valid C string and an array of two timespecs, as utimensat wants.
    if unsafe { libc::utimensat(libc::AT_FDCWD, c_path.as_ptr(), times.as_ptr(), 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Says which layer an error at mount time came from.
fn at(layer: &Path, e: impl std::fmt::Display) -> Error {
    Error::Corrupt(format!("{}: {e}", layer.display()))
}

fn data_inos(data_dir: &Path) -> Result<HashSet<Ino>> {
    let mut inos = HashSet::new();
    for entry in fs::read_dir(data_dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Ok(ino) = name.parse::<Ino>() {
            inos.insert(ino);
        } else if name.ends_with(".new") {
            // A copy-up cut short by a crash.
            fs::remove_file(entry.path())?;
        }
    }
    // A block map without its data file is from a copy-up cut short too.
    for entry in fs::read_dir(data_dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if let Some(ino) = name.to_str().and_then(|n| n.strip_suffix(".map")).and_then(|n| n.parse::<Ino>().ok()) {
            if !inos.contains(&ino) {
                fs::remove_file(entry.path())?;
            }
        }
    }
    Ok(inos)
}

fn remove_data_files(data_dir: &Path, ino: Ino) -> io::Result<()> {
    for name in [format!("{ino}.map"), ino.to_string()] {
        match fs::remove_file(data_dir.join(name)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    const ROOT: Caller = Caller { uid: 0, gid: 0 };
    const B: usize = BLOCK_SIZE as usize;

    struct World {
        image: tempfile::TempDir,
        layers: tempfile::TempDir,
    }

    impl World {
        fn new() -> World {
            let image = tempfile::tempdir().unwrap();
            let big: Vec<u8> = (0..8 * B).map(|i| (i % 251) as u8).collect();
            fs::write(image.path().join("big"), big).unwrap();
            fs::create_dir(image.path().join("sub")).unwrap();
            fs::write(image.path().join("sub/small"), b"image").unwrap();
            // Access times after modification times, so that reading the image (relatime)
            // does not change them under the comparisons below.
            for path in ["sub/small", "sub", "big", ""] {
                set_file_times(&image.path().join(path), Time::now(), Time(1_000_000, 0)).unwrap();
            }
            World { image, layers: tempfile::tempdir().unwrap() }
        }

        fn open(&self) -> CowFs {
            CowFs::new(LayerStack::open(self.layers.path(), self.image.path()).unwrap(), Options::default()).unwrap()
        }

        fn stack(&self) -> LayerStack {
            LayerStack::open(self.layers.path(), self.image.path()).unwrap()
        }
    }

    fn ino(fs: &CowFs, path: &str) -> Ino {
        path.split('/').fold(ROOT_INO, |dir, name| fs.lookup(dir, OsStr::new(name)).unwrap().ino)
    }

    fn read(fs: &CowFs, path: &str) -> Vec<u8> {
        fs.read(ino(fs, path), 0, 1 << 24).unwrap()
    }

    fn write(fs: &CowFs, path: &str, offset: usize, bytes: &[u8]) {
        fs.write(ino(fs, path), offset as u64, bytes).unwrap();
    }

    fn create(fs: &CowFs, dir: &str, name: &str) -> Ino {
        let parent = if dir.is_empty() { ROOT_INO } else { ino(fs, dir) };
        let attr = fs.create(parent, OsStr::new(name), 0o640, libc::O_RDWR, ROOT).unwrap();
        fs.release(attr.ino).unwrap();
        attr.ino
    }

    /// The whole tree: each path with its kind, mode, owner, size, times and contents. With
    /// `times`, the modification and access times of every node.
    fn tree(fs: &CowFs, times: bool) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let mut todo = vec![(String::new(), ROOT_INO)];
        while let Some((path, dir)) = todo.pop() {
            for entry in fs.readdir(dir).unwrap() {
                let child = format!("{path}/{}", entry.name.to_string_lossy());
                let attr = fs.getattr(entry.ino).unwrap();
                let contents = match entry.kind {
                    Kind::File => format!("{:?}", fs.read(entry.ino, 0, 1 << 24).unwrap()),
                    Kind::Symlink => format!("-> {:?}", fs.readlink(entry.ino).unwrap()),
                    Kind::Dir => {
                        todo.push((child.clone(), entry.ino));
                        String::new()
                    }
                    _ => String::new(),
                };
                let times = if times { format!(" m{:?} a{:?}", attr.mtime, attr.atime) } else { String::new() };
                let description = format!(
                    "{:?} {:o} {}:{} size {}{times} {contents}",
                    attr.kind, attr.mode, attr.uid, attr.gid, attr.size
                );
                out.insert(child, description);
            }
        }
        let root = fs.getattr(ROOT_INO).unwrap();
        if times {
            out.insert("/".into(), format!("m{:?} a{:?}", root.mtime, root.atime));
        }
        out
    }

    #[test]
    fn a_live_checkpoint_is_what_revert_to_brings_back() {
        let world = World::new();
        let fs = world.open();
        // Changes of every kind before the checkpoint.
        let a = create(&fs, "", "a");
        fs.write(a, 0, &[b'a'; 3 * B]).unwrap();
        write(&fs, "big", B + 10, b"before");
        fs.mkdir(ROOT_INO, OsStr::new("d"), 0o750, ROOT).unwrap();
        let x = create(&fs, "d", "x");
        fs.write(x, 0, b"x").unwrap();
        fs.symlink(ROOT_INO, OsStr::new("link"), OsStr::new("d/x"), ROOT).unwrap();
        fs.setattr(ino(&fs, "sub/small"), SetAttr { mode: Some(0o600), ..SetAttr::default() }).unwrap();
        // Times only, on a written file: they go to its data file, not to the journal.
        let times = SetAttr { atime: Some(Time(1_000, 1)), mtime: Some(Time(2_000, 2)), ..SetAttr::default() };
        fs.setattr(a, times).unwrap();
        let at_checkpoint = tree(&fs, true);
        let plain_at_checkpoint = tree(&fs, false);

        let frozen = fs.checkpoint_live().unwrap();
        assert_eq!(tree(&fs, true), at_checkpoint, "a checkpoint changed the tree");
        assert_eq!(fs.stack().frozen_ids(), [frozen]);

        // More changes after it.
        fs.write(a, 100, b"after").unwrap();
        fs.write(a, 3 * BLOCK_SIZE, b"tail").unwrap();
        write(&fs, "big", 5 * B, b"after");
        create(&fs, "", "new");
        fs.unlink(ino(&fs, "d"), OsStr::new("x")).unwrap();
        fs.rename(ino(&fs, "sub"), OsStr::new("small"), ROOT_INO, OsStr::new("moved"), 0).unwrap();
        fs.setattr(a, SetAttr { mtime: Some(Time(3_000, 3)), ..SetAttr::default() }).unwrap();
        let latest = tree(&fs, false);
        assert_ne!(latest, plain_at_checkpoint);
        drop(fs);

        // Reopened as it is: the latest state.
        let fs = world.open();
        assert_eq!(tree(&fs, false), latest);
        assert_eq!(fs.getattr(a).unwrap().mtime, Time(3_000, 3));
        drop(fs);

        // Reverted to the checkpoint: exactly its state, times included.
        let mut stack = world.stack();
        stack.revert_to(frozen).unwrap();
        assert_eq!(stack.frozen_ids(), [frozen]);
        drop(stack);
        let fs = world.open();
        assert_eq!(tree(&fs, true), at_checkpoint);
        assert_eq!(fs.getattr(a).unwrap().mtime, Time(2_000, 2));
    }

    /// Reads after a checkpoint take each block from the layer that has it: the new writable
    /// layer, the frozen one, or the image.
    #[test]
    fn reads_after_a_live_checkpoint_take_each_block_from_its_layer() {
        let world = World::new();
        let fs = world.open();
        let mut big: Vec<u8> = (0..8 * B).map(|i| (i % 251) as u8).collect();
        let mut mine = vec![b'm'; 3 * B];
        let file = create(&fs, "", "mine");
        // Both files stay open across the checkpoint, as a database keeps them.
        fs.open(file, libc::O_RDWR).unwrap();
        let big_ino = ino(&fs, "big");
        fs.open(big_ino, libc::O_RDWR).unwrap();
        fs.write(file, 0, &mine).unwrap();
        for (offset, bytes) in [(B + 100, &b"one"[..]), (4 * B, &[b'4'; B][..])] {
            fs.write(big_ino, offset as u64, bytes).unwrap();
            big[offset..offset + bytes.len()].copy_from_slice(bytes);
        }
        assert_eq!(fs.read(big_ino, 0, 1 << 24).unwrap(), big);
        let frozen = fs.checkpoint_live().unwrap();
        let big_at_checkpoint = big.clone();
        let mine_at_checkpoint = mine.clone();

        // Partial overwrites of blocks of the frozen layer, of the image, and across both.
        let writes: [(usize, &[u8]); 5] = [
            (B + 200, b"two"),
            (2 * B + 10, b"three"),
            (4 * B + B / 2, &[b'x'; B]),
            (7 * B + 5, b"seven"),
            (8 * B + 3, b"grown"),
        ];
        for (offset, bytes) in writes {
            fs.write(big_ino, offset as u64, bytes).unwrap();
            let end = offset + bytes.len();
            if end > big.len() {
                big.resize(end, 0);
            }
            big[offset..end].copy_from_slice(bytes);
        }
        fs.write(file, (B + 1) as u64, b"mid").unwrap();
        mine[B + 1..B + 4].copy_from_slice(b"mid");
        // Cut into the frozen layer's blocks, then grown again: the cut-off bytes read as zeros.
        fs.setattr(file, SetAttr { size: Some((2 * B + 7) as u64), ..SetAttr::default() }).unwrap();
        fs.setattr(file, SetAttr { size: Some((3 * B) as u64), ..SetAttr::default() }).unwrap();
        mine[2 * B + 7..].fill(0);
        assert_eq!(fs.read(big_ino, 0, 1 << 24).unwrap(), big);
        assert_eq!(fs.read(file, 0, 1 << 24).unwrap(), mine);
        for offset in (0..big.len()).step_by(B / 2) {
            let got = fs.read(big_ino, offset as u64, B as u32).unwrap();
            assert_eq!(got, big[offset..(offset + B).min(big.len())], "at {offset}");
        }
        // Only the blocks written since are in the new layer.
        let new_layer = fs.stack().writable_id();
        let stored = fs.stack().layer_bytes(new_layer).unwrap();
        assert!(stored < 16 * BLOCK_SIZE + (64 << 10), "{stored} bytes in the new layer");
        fs.release(file).unwrap();
        fs.release(big_ino).unwrap();
        drop(fs);

        let fs = world.open();
        assert_eq!(read(&fs, "big"), big);
        assert_eq!(read(&fs, "mine"), mine);
        drop(fs);
        world.stack().revert_to(frozen).unwrap();
        let fs = world.open();
        assert_eq!(read(&fs, "big"), big_at_checkpoint);
        assert_eq!(read(&fs, "mine"), mine_at_checkpoint);
    }

    /// A file unlinked while open lives on across a checkpoint, and is gone at the next mount.
    #[test]
    fn a_file_unlinked_while_open_survives_a_live_checkpoint() {
        let world = World::new();
        let fs = world.open();
        let tmp = create(&fs, "", "tmp");
        fs.open(tmp, libc::O_RDWR).unwrap();
        fs.write(tmp, 0, &[b't'; 2 * B]).unwrap();
        fs.unlink(ROOT_INO, OsStr::new("tmp")).unwrap();
        let first = fs.checkpoint_live().unwrap();
        fs.write(tmp, B as u64, b"more").unwrap();
        let mut expected = vec![b't'; 2 * B];
        expected[B..B + 4].copy_from_slice(b"more");
        assert_eq!(fs.read(tmp, 0, 1 << 24).unwrap(), expected);
        // Nothing changed in between: the next checkpoint freezes an empty layer but for it.
        let second = fs.checkpoint_live().unwrap();
        assert!(second > first);
        assert_eq!(fs.read(tmp, 0, 1 << 24).unwrap(), expected);
        assert_eq!(fs.getattr(tmp).unwrap().nlink, 0);
        fs.release(tmp).unwrap();
        drop(fs);

        let fs = world.open();
        assert!(matches!(fs.lookup(ROOT_INO, OsStr::new("tmp")), Err(Error::NotFound)));
        assert_eq!(fs.stack().frozen_ids(), [first, second]);
    }
}
