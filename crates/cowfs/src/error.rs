//! The error type of every cowfs operation, and its one mapping to an errno.

use std::io;

/// What went wrong in a filesystem operation.
///
/// Each variant maps to exactly one errno in [`Error::errno`]; that mapping is an exhaustive
/// `match`, so a new variant cannot silently become `EIO`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("directory not empty")]
    NotEmpty,
    #[error("invalid argument")]
    Invalid,
    #[error("file name longer than 255 bytes")]
    NameTooLong,
    /// An operation cowfs refuses by design, such as a hard link (see doc/SEMANTICS.md).
    #[error("operation not permitted")]
    NotPermitted,
    /// A variant of an operation cowfs does not implement, such as punching a hole.
    #[error("operation not supported")]
    NotSupported,
    #[error("stale file handle")]
    Stale,
    /// The layer's filesystem has less space available than the reserve cowfs keeps for
    /// writes the kernel has already accepted (see `space.rs`).
    #[error(
        "no space left on device: the layer's filesystem has {available} bytes available, \
         less than the reserve of {reserve} bytes"
    )]
    NoSpace { available: u64, reserve: u64 },
    /// The on-disk layer state is inconsistent; the message says what and where.
    #[error("corrupt layer: {0}")]
    Corrupt(String),
    /// An error from the underlying filesystem, passed through with its errno (ENOSPC, EIO, …).
    #[error(transparent)]
    Io(#[from] io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The errno a FUSE reply (or the in-process test harness) reports for this error.
    pub fn errno(&self) -> i32 {
        match self {
            Error::NotFound => libc::ENOENT,
            Error::Exists => libc::EEXIST,
            Error::NotDir => libc::ENOTDIR,
            Error::IsDir => libc::EISDIR,
            Error::NotEmpty => libc::ENOTEMPTY,
            Error::Invalid => libc::EINVAL,
            Error::NameTooLong => libc::ENAMETOOLONG,
            Error::NotPermitted => libc::EPERM,
            Error::NotSupported => libc::EOPNOTSUPP,
            Error::Stale => libc::ESTALE,
            Error::NoSpace { .. } => libc::ENOSPC,
            Error::Corrupt(_) => libc::EIO,
            Error::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
        }
    }
}
