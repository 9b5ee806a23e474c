//! thinclone's contact with the operating system, in one place:
//!
//! - [`process`]: the one way external programs are started, with user, environment,
//!   working directory, timeout, and their output drained while they run;
//! - [`user`]: OS users by name or uid, and synthetic ones (a bare uid);
//! - [`crashsafe`]: durable writes (write, fsync, rename, fsync the directory);
//! - [`lock`]: one process per directory;
//! - [`tree`]: walks of directory trees (sizes, ownership, removal, copies);
//! - [`procfs`]: what `/proc` says of a process;
//! - [`reflink`]: copies of trees whose files share their blocks with the original;
//! - [`wait`]: waiting for a condition with a timeout;
//! - [`space`]: free space of a filesystem;
//! - [`untrusted`]: files in directories a less trusted user can write, opened so that a
//!   planted symlink, hard link or FIFO is refused.
//!
//! Nothing here knows about databases, filesystems of our own, or HTTP.

pub mod crashsafe;
pub mod lock;
pub mod process;
pub mod procfs;
pub mod reflink;
pub mod space;
pub mod tree;
pub mod untrusted;
pub mod user;
pub mod wait;

pub use process::{Error, Process, Program};
pub use user::User;
