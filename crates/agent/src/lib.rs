//! thinclone's agent: everything that happens on one database host. It makes images into its
//! image directory, makes clones' storage with the drivers, runs their database servers,
//! keeps them running across its own restarts, and recovers whatever a crash interrupted.
//!
//! The server asks; the agent does. The two meet at the [`Agent`] trait, whose in-process
//! implementation ([`LocalAgent`]) is a plain call, so that agents on other hosts change the
//! transport only. The agent decides nothing about names, ports or who may do what: those
//! come from the server in each request.
//!
//! # Data directory layout
//!
//! ```text
//! DATA_DIR/                  0711 root: clones' OS users pass through, list nothing
//!   images/                  0711 root
//!   images/<name>/           a sealed image: a prepared data directory, never written again
//!                            (0700 root, every file root's)
//!   images/<name>.partial/   an image being made (the preparing OS user's)
//!   clones/                  0711 root
//!   clones/<name>/           a clone (0711 root): clone.json (record.rs, 0600) and its
//!                            driver's storage: data/ (its data directory, the clone's uid's,
//!                            0700), and for cowfs layer/ (0700 root), mount.pid, mount.log
//!   run/, run/clones/        0711 root
//!   run/clones/<name>/       its server's socket, configuration, log and pid file (0700, the
//!                            clone's uid's)
//!   run/images/<name>/       the same for the temporary server that prepares an image
//! ```
//!
//! # Clone isolation
//!
//! As root, the agent runs each clone's server as a uid of its own ([`Isolation`]), taken
//! from a range and recorded in the clone's record, with no entry in the user database
//! (`sys::User::synthetic`; its gid is its uid). cowfs presents the clone's files as that
//! uid's; reflink and copy clones' files are given to it. Nothing else of the data
//! directory is open to it, so a clone's database superuser, whose programs run as that uid,
//! reaches no other clone, no image, and none of the server's state. When the clone's
//! server stops, whatever else still runs as its uid is ended; a removed clone's uid is
//! given again only once every other uid of the range has been given since. Uids are
//! claimed host-wide (`/run/thinclone/clone-uids`, uids.rs), so that clones of two data
//! directories never share one.
//!
//! As another user, every clone runs as that user, and nothing keeps clones apart.

pub mod channel;
pub mod commit_dirs;
mod dispatch;
pub mod driver;
pub mod enroll;
mod images;
mod local;
mod pause;
mod record;
pub mod reflink;
mod uids;

use std::path::PathBuf;

pub use dispatch::dispatch;
pub use engine::{Secret, SourceUrl};
pub use local::{AgentConfig, LocalAgent};
pub use record::{CloneRecord, Desired, Intent};

use api::Name;

pub use api::agent::{
    AgentError, AgentErrorKind as ErrorKind, AgentInfo, CloneOrigin, CloneReport, CloneSpec, CloneState,
    EngineVersions, ImagePlace, ImageSource, ImageTransform, MadeImage, RecoveryTarget, SourceFacts,
};

/// Ways to make an [`AgentError`].
#[allow(clippy::new_ret_no_self)]
pub trait AgentErrorExt {
    fn new(kind: ErrorKind, message: impl Into<String>) -> AgentError;
    fn internal(message: impl Into<String>) -> AgentError;
    fn from_engine(what: &str, e: engine::Error) -> AgentError;
    fn from_driver(e: driver::DriverError) -> AgentError;
}

impl AgentErrorExt for AgentError {
    fn new(kind: ErrorKind, message: impl Into<String>) -> AgentError {
        AgentError { kind, message: message.into() }
    }

    fn internal(message: impl Into<String>) -> AgentError {
        AgentError::new(ErrorKind::Internal, message)
    }

    fn from_engine(what: &str, e: engine::Error) -> AgentError {
        let kind = if e.is_disk_full() {
            ErrorKind::DiskFull
        } else if e.is_callers_mistake() {
            ErrorKind::BadRequest
        } else {
            ErrorKind::Internal
        };
        AgentError::new(kind, format!("{what}: {e}"))
    }

    fn from_driver(e: driver::DriverError) -> AgentError {
        let kind = match e {
            driver::DriverError::DiskFull { .. } => ErrorKind::DiskFull,
            driver::DriverError::Failed { .. } => ErrorKind::Internal,
        };
        AgentError::new(kind, e.to_string())
    }
}

pub type Result<T, E = AgentError> = std::result::Result<T, E>;

/// Who a clone's URL logs in as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloneRole {
    /// The image's superuser: everything inside the clone, CREATE EXTENSION included.
    Superuser,
    /// A role named `user` that owns every database and what the superuser owned in them,
    /// but is not a superuser (for teams whose users must not be); the superuser gets a
    /// random password that nobody is given.
    Owner { user: String },
}

/// How clones are kept apart, from each other and from the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Isolation {
    /// The uids clones' servers run as, one each (gid = uid), as FIRST and LAST of a range
    /// of uids that no user of the host has. `None`: every clone runs as the agent's
    /// `os_user`, and nothing keeps clones apart (the only way when the agent is not root).
    pub clone_uids: Option<(u32, u32)>,
    pub clone_role: CloneRole,
    /// The directory where every agent of the host claims the uids it gives clones, so that
    /// no two clones share one even across data directories (uids.rs).
    pub registry: PathBuf,
}

impl Isolation {
    /// The range clones' uids come from unless configured: far above the users and groups
    /// of a host, below 2^31 (some programs take uids as signed), and above the ranges
    /// systemd gives to containers.
    pub const DEFAULT_UIDS: (u32, u32) = (2_000_000_000, 2_000_099_999);
}

impl Default for Isolation {
    /// A uid per clone from [`Isolation::DEFAULT_UIDS`] when this process is root, none
    /// otherwise; clones' URLs log in as the superuser.
    fn default() -> Isolation {
        Isolation {
            clone_uids: sys::user::running_as_root().then_some(Isolation::DEFAULT_UIDS),
            clone_role: CloneRole::Superuser,
            registry: PathBuf::from(uids::DEFAULT_REGISTRY),
        }
    }
}

/// What the server asks of an agent. Every method is idempotent where a retry after a lost
/// answer could happen: removing what is gone succeeds, stopping what is stopped succeeds.
/// An agent on another host answers through the channel (channel.rs); one that cannot be
/// reached fails every call with [`ErrorKind::Unavailable`].
pub trait Agent: Send + Sync {
    fn info(&self) -> Result<AgentInfo>;

    /// Checks a data directory on this host as an image source: it lies inside one of
    /// `roots` (the registered source directories) once symlinks are resolved, it is a data
    /// directory of an engine installed here, not thinclone's own, no server is running on
    /// it (unless it is a crash-consistent `snapshot`), and there is room for a copy of it at
    /// `place`.
    fn check_source_dir(&self, path: &str, snapshot: bool, roots: &[String], place: &ImagePlace)
        -> Result<SourceFacts>;

    /// Checks that a live source answers, with its URL's credentials only.
    fn check_source_url(&self, url: &str) -> Result<SourceFacts>;

    /// Checks any source as [`Agent::make_image`] would take it: a directory or a URL as
    /// above; a logical dump, a backup repository (and its stanza), or a base backup and its
    /// log archive, each inside one of the source's `roots`, of an engine installed here, with
    /// a recovery target the engine reads.
    fn check_source(&self, source: &ImageSource, place: &ImagePlace) -> Result<SourceFacts> {
        match source {
            ImageSource::Dir { path, snapshot, roots } => self.check_source_dir(path, *snapshot, roots, place),
            ImageSource::Url { url } => self.check_source_url(url),
            _ => Err(AgentError::new(ErrorKind::BadRequest, "this agent cannot make images from backups")),
        }
    }

    /// Makes and seals an image at `place`, calling `progress` with bytes copied and the
    /// estimated total, and `step` with what it is doing. On failure nothing of it is left.
    fn make_image(
        &self,
        name: &Name,
        place: &ImagePlace,
        source: &ImageSource,
        transform: &ImageTransform,
        progress: &(dyn Fn(u64, u64) + Sync),
        step: &(dyn Fn(&str) + Sync),
    ) -> Result<MadeImage>;

    /// Removes an image's files, and what is left of a copy of it (gone already is fine).
    fn remove_image(&self, name: &Name, place: &ImagePlace) -> Result<()>;

    /// Stops the image copies under way, as at shutdown: each fails, and leaves nothing.
    fn cancel_image_jobs(&self);

    /// Stops the job making image `name` in `place`, if one runs (it then fails, and leaves
    /// nothing); a finished image is not touched. Whether a job was running.
    fn cancel_image_job(&self, name: &Name, place: &ImagePlace) -> Result<bool>;

    /// Whether nothing listens on `port` on this host.
    fn port_is_free(&self, port: u16) -> Result<bool>;

    /// Makes a clone and starts it; on failure nothing of it is left.
    fn create_clone(&self, spec: &CloneSpec) -> Result<CloneReport>;

    /// Starts a clone's server (and storage). A clone whose processes died is started
    /// afresh. A start that fails keeps the clone, `Failed` with the reason.
    fn start_clone(&self, name: &Name) -> Result<CloneReport>;

    /// Stops a clone's server and storage, keeping its data.
    fn stop_clone(&self, name: &Name) -> Result<CloneReport>;

    /// Returns a clone to its image's state, on the same port with the same credentials,
    /// running again if it was running.
    fn reset_clone(&self, name: &Name) -> Result<CloneReport>;

    /// Remakes a clone on another image (`to`), on the same port with the same
    /// credentials, running again if it was running. Its checkpoints go. A failed refresh
    /// leaves it reset on its old image.
    fn refresh_clone(&self, name: &Name, to: &api::agent::RefreshTarget) -> Result<CloneReport>;

    /// Stops and removes a clone (gone already is fine).
    fn delete_clone(&self, name: &Name) -> Result<()>;

    /// Records a clone's state now as checkpoint `checkpoint`. A running clone's server is
    /// paused while its files are captured, and keeps its connections.
    fn checkpoint_clone(&self, name: &Name, checkpoint: &Name, message: Option<&str>) -> Result<CloneReport>;

    /// Returns a clone to a checkpoint (the latest when `to` is `None`), removing the
    /// checkpoints made after it; its server restarts on the same port with the same
    /// credentials if it was running.
    fn revert_clone(&self, name: &Name, to: Option<&Name>) -> Result<CloneReport>;

    /// A clone's checkpoints, oldest first.
    fn checkpoints(&self, name: &Name) -> Result<Vec<api::Checkpoint>>;

    /// The names of a clone's checkpoints, oldest first: what [`Agent::checkpoints`] gives
    /// without measuring each one's disk (a walk of extents, for reflink).
    fn checkpoint_names(&self, name: &Name) -> Result<Vec<Name>>;

    /// Removes one of a clone's checkpoints.
    fn delete_checkpoint(&self, name: &Name, checkpoint: &Name) -> Result<()>;

    /// How a clone is, or `None` when this agent has no such clone.
    fn clone_report(&self, name: &Name) -> Result<Option<CloneReport>>;

    /// Every clone this agent has.
    fn clone_reports(&self) -> Result<Vec<CloneReport>>;

    /// Writes `value` to the marker file of the location at `path` (proof of reach).
    fn write_marker(&self, path: &str, value: &str) -> Result<()>;

    /// The marker of the location at `path`, if this host sees one.
    fn read_marker(&self, path: &str) -> Result<Option<String>>;
}

/// The file in a location's directory that proves which agents reach it.
pub const MARKER_FILE: &str = ".thinclone-location";
