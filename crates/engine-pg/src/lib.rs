//! The PostgreSQL engine of thinclone: it finds the server binaries of a major version, reads
//! and prepares data directories, and runs PostgreSQL programs as the database's OS user.
//!
//! It knows nothing about FUSE or about how a data directory is stored: it is given
//! directories and works on them.

mod basebackup;
mod cmd;
mod datadir;
mod install;
mod server;

pub use basebackup::{basebackup, SourceUrl};
pub use cmd::{Program, RunAs};
pub use datadir::data_dir_version;
pub use install::Installation;
pub use server::{cluster_state, free_port, prepare, Server, ServerConfig};

/// What went wrong in the engine; the message says what to do where the caller can act.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No server binaries of the wanted major version on this host.
    #[error(
        "PostgreSQL {major} is not installed on this host (looked in {}); install its server \
         package, e.g. `apt-get install postgresql-{major}`",
        searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    MissingVersion { major: u32, searched: Vec<std::path::PathBuf> },
    /// The directory is not a PostgreSQL data directory.
    #[error("{0} is not a PostgreSQL data directory (no readable PG_VERSION)")]
    NotADataDir(std::path::PathBuf),
    /// A program failed; `stderr` is what it said.
    #[error("{program} failed ({status}): {stderr}")]
    Failed { program: String, status: String, stderr: String },
    /// A program ran longer than it was allowed to.
    #[error("{program} did not finish within {seconds} s")]
    TimedOut { program: String, seconds: u64 },
    /// No OS user of that name.
    #[error("no OS user named {0}")]
    NoSuchUser(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
