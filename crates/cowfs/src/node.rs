//! The entries of the inode table: what cowfs knows about each file, directory and symlink of
//! the merged tree, and the public attribute types.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::blockmap::BlockMap;

pub type Ino = u64;
pub const ROOT_INO: Ino = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

impl Kind {
    /// The kind a `mknod` mode asks for.
    pub fn from_mode(mode: u32) -> Option<Kind> {
        match mode & libc::S_IFMT {
            libc::S_IFREG | 0 => Some(Kind::File),
            libc::S_IFDIR => Some(Kind::Dir),
            libc::S_IFLNK => Some(Kind::Symlink),
            libc::S_IFIFO => Some(Kind::Fifo),
            libc::S_IFSOCK => Some(Kind::Socket),
            libc::S_IFCHR => Some(Kind::CharDevice),
            libc::S_IFBLK => Some(Kind::BlockDevice),
            _ => None,
        }
    }
}

/// A point in time as seconds and nanoseconds since the epoch; `[s, ns]` in the journal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Time(pub i64, pub u32);

impl Time {
    pub fn now() -> Time {
        Time::from(SystemTime::now())
    }
}

impl From<SystemTime> for Time {
    fn from(t: SystemTime) -> Time {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Time(d.as_secs() as i64, d.subsec_nanos()),
            Err(e) => {
                let d = e.duration();
                if d.subsec_nanos() == 0 {
                    Time(-(d.as_secs() as i64), 0)
                } else {
                    Time(-(d.as_secs() as i64) - 1, 1_000_000_000 - d.subsec_nanos())
                }
            }
        }
    }
}

impl From<Time> for SystemTime {
    fn from(t: Time) -> SystemTime {
        if t.0 >= 0 {
            UNIX_EPOCH + Duration::new(t.0 as u64, t.1)
        } else {
            UNIX_EPOCH - Duration::from_secs(t.0.unsigned_abs()) + Duration::from_nanos(t.1 as u64)
        }
    }
}

/// The attributes of a node as the merged tree presents them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr {
    pub ino: Ino,
    pub kind: Kind,
    pub size: u64,
    /// Permission bits, including setuid, setgid and sticky (no file type bits).
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub atime: Time,
    pub mtime: Time,
    pub ctime: Time,
}

/// Ownership, permissions and times: the attributes that live in the journal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Perms {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub atime: Time,
    pub mtime: Time,
    pub ctime: Time,
}

pub(crate) struct Node {
    pub ino: Ino,
    pub kind: Kind,
    /// The path of the image entry this node came from, relative to the image root; `None`
    /// for a node made in a layer.
    pub origin: Option<PathBuf>,
    /// Whether the journal knows `ino` stands for `origin` (always true for made nodes).
    pub adopted: AtomicBool,
    pub meta: Mutex<Meta>,
    pub dir: Option<Mutex<Dir>>,
    pub data: Option<RwLock<Data>>,
}

impl Node {
    /// A node with no name yet (its parent and name are set when it is linked) and, for an
    /// image node, attributes still to be read from the image.
    pub fn new(ino: Ino, kind: Kind, origin: Option<PathBuf>, adopted: bool, perms: Option<Perms>) -> Node {
        Node {
            ino,
            kind,
            origin,
            adopted: AtomicBool::new(adopted),
            meta: Mutex::new(Meta {
                perms,
                image_loaded: false,
                image_size: 0,
                image_nlink: 1,
                parent: ROOT_INO,
                name: OsString::new(),
                symlink_target: None,
                nlookup: 0,
                open: 0,
                unlinked: false,
            }),
            dir: (kind == Kind::Dir).then(|| Mutex::new(Dir::default())),
            data: (kind == Kind::File).then(|| RwLock::new(Data::default())),
        }
    }
}

pub(crate) struct Meta {
    /// `None` until read from the image (image nodes only).
    pub perms: Option<Perms>,
    /// Whether the image's own attributes below have been read (image nodes only).
    pub image_loaded: bool,
    /// The image's own size and link count for this node, once read.
    pub image_size: u64,
    pub image_nlink: u32,
    pub parent: Ino,
    pub name: OsString,
    pub symlink_target: Option<OsString>,
    /// Kernel lookup count.
    pub nlookup: u64,
    /// Open file handles.
    pub open: u32,
    /// No name refers to this node any more.
    pub unlinked: bool,
}

#[derive(Default)]
pub(crate) struct Dir {
    /// Entry changes replayed from the journals, applied over the image's listing when the
    /// directory is first loaded. `None` is a whiteout.
    pub overrides: HashMap<OsString, Option<Ino>>,
    /// The merged listing, once loaded.
    pub entries: Option<BTreeMap<OsString, Ino>>,
    /// The number of subdirectories in `entries`.
    pub subdirs: u32,
}

/// A layer's data file for one node, with its block map. No map means the layer owns every
/// byte of the file and nothing beneath shows through.
pub(crate) struct LayerFile {
    pub file: File,
    pub map: Option<BlockMap>,
}

#[derive(Default)]
pub(crate) struct Data {
    /// The logical size, once known.
    pub size: Option<u64>,
    /// Whether the files below are open.
    pub resolved: bool,
    /// The writable layer's data file, if that layer has touched the data.
    pub top: Option<LayerFile>,
    /// Data files of frozen layers, top-most first, down to the first one without a map.
    pub lower: Vec<LayerFile>,
    /// The image file, when the image still shows through.
    pub image: Option<File>,
}
