//! cowfs: a writable, copy-on-write view of an immutable directory tree.
//!
//! An *image* is a read-only directory tree that nothing ever modifies. A *layer stack* sits
//! on top of it: frozen layers, then one writable layer. The merged tree looks like an
//! ordinary POSIX directory; changing a file stores only the changed blocks, in the writable
//! layer. Checkpoint, revert and reset change the stack in constant time.
//!
//! - [`LayerStack`] owns a layer directory and its on-disk format (`layer.rs`).
//! - [`CowFs`] is the merged tree as plain methods (`fs.rs`), usable without a kernel mount.
//! - [`mount`] serves a [`CowFs`] through FUSE (`fuse.rs`), with a control socket in the
//!   layer directory through which [`checkpoint_mounted`] checkpoints the live tree and
//!   [`sync_mounted`] makes it durable (`control.rs`).
//!
//! cowfs knows nothing about databases.

mod blockmap;
mod control;
mod error;
mod fs;
mod fuse;
mod image;
mod journal;
mod layer;
mod node;
mod space;

pub use control::{checkpoint_mounted, sync_mounted};
pub use error::{Error, Result};
pub use fs::{Caller, CowFs, DirEntry, Options, SetAttr, Statfs};
pub use fuse::{is_live_mount, mount, unmount_stale, MountConfig, Mounted};
pub use layer::{layer_path, layers_up_to, LayerStack, Usage};
pub use node::{Attr, Ino, Kind, Time, ROOT_INO};
pub use space::{layer_space, LayerSpace};

/// The granularity of copy-on-write: a block that a layer changes is stored whole.
/// Databases write pages of 8 KiB or a multiple of it, so a page write never copies more
/// than itself.
pub const BLOCK_SIZE: u64 = 8192;
