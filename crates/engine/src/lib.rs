//! The database engine trait: everything a database engine does behind an image and its
//! clones, so that nothing above it names a particular engine.
//!
//! An engine recognises a data directory and its version, finds its installed server
//! programs, takes a consistent copy of a live server, prepares a copy so that clones start
//! without crash recovery, starts and stops an instance on a directory and port, sets the
//! instance's credentials, and builds its connection URL.
//!
//! What differs between engines, and how the trait says it:
//! - versions are strings (`15`, `10.11`): a clone runs only with its image's version;
//! - the superuser's name comes from the image ([`ImageFacts::superuser`]), never a constant;
//! - an instance's configuration is given on its command line and in its run directory, never
//!   written into the data directory, whatever the engine's own configuration files say;
//! - memory is one setting ([`InstanceSpec::memory`]) that each engine maps to its own knob.

pub mod mask;
mod secret;
mod source;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use api::agent::RecoveryTarget;
pub use secret::Secret;
pub use source::SourceUrl;
pub use sys::User;

/// What went wrong in an engine. [`Error::is_callers_mistake`] tells the caller's mistakes
/// (a bad source, a missing version) from failures inside.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path} is not a {engine} data directory ({why})")]
    NotADataDir { engine: &'static str, path: PathBuf, why: String },
    /// No server programs of the wanted version on this host.
    #[error("{engine} {version} is not installed on this host (looked in {}); {hint}", searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    MissingVersion { engine: &'static str, version: String, searched: Vec<PathBuf>, hint: String },
    /// A source this engine cannot use: a malformed or foreign connection URL, or a data
    /// directory of a version it does not support.
    #[error("{0}")]
    BadSource(String),
    /// A source server that does not answer, or refuses us.
    #[error("cannot reach the source {url}: {why}")]
    Unreachable { url: String, why: String },
    /// A data directory a running server is using.
    #[error("{0}")]
    InUse(String),
    /// A disk filled up.
    #[error("{what}: the disk is full ({detail})")]
    DiskFull { what: String, detail: String },
    /// A program of the engine failed.
    #[error(transparent)]
    Program(#[from] sys::Error),
    /// Anything else; the message says what was being done.
    #[error("{0}")]
    Other(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Error {
    /// Whether the caller can fix this by asking differently (a 4xx, not a 5xx).
    pub fn is_callers_mistake(&self) -> bool {
        matches!(
            self,
            Error::NotADataDir { .. }
                | Error::MissingVersion { .. }
                | Error::BadSource(_)
                | Error::Unreachable { .. }
                | Error::InUse(_)
        )
    }

    /// Whether a full disk caused this.
    pub fn is_disk_full(&self) -> bool {
        match self {
            Error::DiskFull { .. } => true,
            Error::Program(e) => e.is_disk_full(),
            Error::Io(e) => e.raw_os_error() == Some(28),
            _ => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What preparing an image learned about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFacts {
    /// The engine's major version, e.g. `15`.
    pub version: String,
    /// The superuser clones' connection URLs log in as (the image's bootstrap superuser).
    pub superuser: String,
}

/// What [`Engine::prepare_with`] did to an image, and what the caller must check.
#[derive(Debug, Clone, Default)]
pub struct Transformed {
    pub report: api::TransformReport,
    /// Original values of the masked columns (a sample), as stored: none may be found in any
    /// file of the sealed image.
    pub originals: Vec<Vec<u8>>,
}

/// What a backup repository holds, as [`Engine::inspect_repo`] finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoFacts {
    /// The engine's major version of its backups.
    pub version: String,
    /// The stanza (the repository's name for one database cluster) to restore.
    pub stanza: String,
}

/// How to run an instance on a clone's data directory.
#[derive(Debug, Clone)]
pub struct InstanceSpec {
    /// The engine version of the data directory (the image's).
    pub version: String,
    pub data_dir: PathBuf,
    /// Everything the instance needs besides its data: socket, configuration, log, pid
    /// file. Created if missing, private to `user`.
    pub run_dir: PathBuf,
    pub port: u16,
    /// The addresses it listens on for TCP; empty for none (local socket only).
    pub listen: Vec<IpAddr>,
    /// Whether clients from other hosts may connect (with a password), besides loopback.
    pub remote_clients: bool,
    /// The OS user it runs as: for a clone, a synthetic user of its own
    /// ([`User::synthetic`], no entry in the user database), so that its superuser's
    /// programs reach nothing of other clones.
    pub user: User,
    /// The database superuser that [`Instance::sql`] and [`Instance::set_password`] connect
    /// as over the private socket: the image's [`ImageFacts::superuser`]. An engine cannot
    /// learn it from a running instance without already knowing a name to log in with.
    /// They connect as the OS user of this process (root, or the agent's own user), the only
    /// OS user the instance's socket lets in, and only as this database user.
    pub superuser: String,
    /// A name for it in process titles and logs.
    pub label: String,
    /// Its main memory cache, e.g. `64MB`; the engine's default when `None`.
    pub memory: Option<String>,
    /// Serve reads only: every write is refused by the server itself, whoever asks (a
    /// snapshot view). [`Instance::set_password`] and [`Instance::make_owner`] need a
    /// writable start.
    pub read_only: bool,
}

/// The sample database `thinclone demo` makes, and the SQL it uses to show isolation.
#[derive(Debug, Clone)]
pub struct Sample {
    /// What was made, in words, e.g. "a bank of 1,000,000 accounts".
    pub description: String,
    /// Changes some rows.
    pub change_sql: String,
    /// One number that the change moves: its value before the change is `unchanged_value`.
    pub check_sql: String,
    pub unchanged_value: String,
}

/// A database engine.
pub trait Engine: Send + Sync + 'static {
    /// A short, stable id, used in the API and the catalog (lower case, no spaces).
    fn id(&self) -> &'static str;

    /// The engine's name for people, as its makers write it.
    fn name(&self) -> &'static str;

    /// Whether a connection URL is this engine's (by its scheme).
    fn accepts_url(&self, url: &SourceUrl) -> bool;

    /// The version of the server that made `dir`, or [`Error::NotADataDir`].
    fn detect(&self, dir: &Path) -> Result<String>;

    /// Whether a server is running on `dir` now.
    fn is_in_use(&self, dir: &Path) -> bool;

    /// Refuses to copy `dir` while a server is running on it, with an [`Error::InUse`] that
    /// says what to do instead (take the image from the running server, stop it, or say that
    /// `dir` is a crash-consistent snapshot). Engines that can name the server say more.
    fn check_not_in_use(&self, dir: &Path) -> Result<()> {
        if self.is_in_use(dir) {
            return Err(Error::InUse(format!(
                "a {} server is running on {}; copying it now would give a torn copy: take the image from the \
                 running server with --from-url, or stop the server first (if it is a crash-consistent snapshot of \
                 a running server, say so with --snapshot)",
                self.name(),
                dir.display()
            )));
        }
        Ok(())
    }

    /// The versions whose server programs are installed here, oldest first.
    fn installed_versions(&self) -> Vec<String>;

    /// Checks that `version`'s server programs are installed, with a message that says
    /// where it looked and how to install them.
    fn check_installed(&self, version: &str) -> Result<()>;

    /// Checks that the source answers, with the credentials in its URL only.
    fn probe(&self, source: &SourceUrl) -> Result<()>;

    /// Takes a consistent copy of the live server at `source` into `target` (an empty
    /// directory owned by `user`), calling `progress` with bytes done and the estimated
    /// total. The copy needs [`Engine::prepare`] before use.
    fn copy_live(
        &self,
        source: &SourceUrl,
        target: &Path,
        user: &User,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<()>;

    /// Turns a copied data directory into an image: recovery runs to its end here, once,
    /// and the server shuts down cleanly, so that clones start without replaying anything.
    /// Temporary files go to `run_dir`.
    fn prepare(&self, data_dir: &Path, run_dir: &Path, user: &User) -> Result<ImageFacts>;

    /// [`Engine::prepare`], after running an image's modification scripts, then its
    /// masking rules, on a temporary server of the copy. Masking must leave no original value
    /// of a masked column in the files (dead rows, free space, indexes, statistics, the log,
    /// the WAL): it returns a sample of the original values, which the caller looks for in
    /// every file of the prepared image. `secret` keys the deterministic strategies. Any
    /// failure is an error: the image must not be made.
    fn prepare_with(
        &self,
        data_dir: &Path,
        run_dir: &Path,
        user: &User,
        transform: &api::agent::ImageTransform,
        secret: &str,
    ) -> Result<(ImageFacts, Transformed)> {
        let _ = secret;
        if !transform.is_empty() {
            return Err(Error::Other(format!("the {} engine cannot run scripts or mask an image", self.name())));
        }
        Ok((self.prepare(data_dir, run_dir, user)?, Transformed::default()))
    }

    /// The version of the engine that wrote the logical dump at `path` (a file, or a
    /// directory of one); [`Error::BadSource`] when it is not one of this engine's dumps, and
    /// [`Error::MissingVersion`] when no version installed here can restore it.
    fn dump_version(&self, path: &Path) -> Result<String> {
        Err(Error::BadSource(format!("the {} engine cannot read the dump {}", self.name(), path.display())))
    }

    /// Makes a data directory in `data_dir` (empty, owned by `user`) from the logical dump at
    /// `path`: a new database of the dump's version (or the newest installed one above it),
    /// a temporary instance on a socket in `run_dir`, the dump restored into it, and a clean
    /// stop. Any error of the restore fails it, with the restore's message. The result needs
    /// [`Engine::prepare`] before use.
    fn restore_dump(&self, path: &Path, data_dir: &Path, run_dir: &Path, user: &User) -> Result<()> {
        let _ = (data_dir, run_dir, user);
        Err(Error::BadSource(format!("the {} engine cannot restore the dump {}", self.name(), path.display())))
    }

    /// Checks a backup repository at `repo` and names what it holds: the engine version of
    /// its backups and the stanza (`stanza`, or the repository's only one). A missing stanza,
    /// an empty repository, or a `target` before every backup's end is an
    /// [`Error::BadSource`].
    fn inspect_repo(
        &self,
        repo: &Path,
        stanza: Option<&str>,
        target: &RecoveryTarget,
        user: &User,
    ) -> Result<RepoFacts> {
        let _ = (stanza, target, user);
        Err(Error::BadSource(format!(
            "the {} engine cannot read the backup repository {}",
            self.name(),
            repo.display()
        )))
    }

    /// Restores the backup of `stanza` in the repository at `repo` into `data_dir` (empty,
    /// owned by `user`) and recovers it to `target` on a temporary instance (files in
    /// `run_dir`), which then stops cleanly. Afterwards nothing in `data_dir` reaches the
    /// repository. A target the backups and log cannot reach fails it. The result needs
    /// [`Engine::prepare`] before use.
    fn restore_repo(
        &self,
        repo: &Path,
        stanza: &str,
        target: &RecoveryTarget,
        data_dir: &Path,
        run_dir: &Path,
        user: &User,
    ) -> Result<()> {
        let _ = (stanza, target, data_dir, run_dir, user);
        Err(Error::BadSource(format!("the {} engine cannot restore from {}", self.name(), repo.display())))
    }

    /// Checks that `target` is written as this engine reads it.
    fn check_target(&self, target: &RecoveryTarget) -> Result<()> {
        match target {
            RecoveryTarget::Latest => Ok(()),
            _ => Err(Error::BadSource(format!("the {} engine cannot recover to a target", self.name()))),
        }
    }

    /// Recovers the base backup copied into `data_dir` (owned by `user`) to `target`,
    /// replaying the log archived in `archive`, on a temporary instance (files in `run_dir`)
    /// that then stops cleanly. Afterwards nothing in `data_dir` reaches the archive. A
    /// target before the end of the backup, or beyond the end of the archive, fails it. The
    /// result needs [`Engine::prepare`] before use.
    fn recover_to(
        &self,
        data_dir: &Path,
        archive: &Path,
        target: &RecoveryTarget,
        run_dir: &Path,
        user: &User,
    ) -> Result<()> {
        let _ = (data_dir, target, run_dir, user);
        Err(Error::BadSource(format!("the {} engine cannot replay the archive {}", self.name(), archive.display())))
    }

    /// Starts an instance and returns once it accepts connections.
    fn start(&self, spec: &InstanceSpec, timeout: Duration) -> Result<Box<dyn Instance>>;

    /// Finds an instance of `spec` that an earlier process started and left running, so
    /// that it can be adopted rather than restarted.
    fn adopt(&self, spec: &InstanceSpec) -> Option<Box<dyn Instance>>;

    /// Stops whatever server of this engine runs on `spec`'s data directory that is not in
    /// hand: one a crash left while it started, ran or stopped, ready or not. Waits until it
    /// is gone, so that its port and files are free. Returns whether there was one.
    fn stop_stray(&self, spec: &InstanceSpec) -> Result<bool>;

    /// The connection URL of an instance.
    fn url(&self, host: &str, port: u16, user: &str, password: &str) -> String;

    /// Makes a stopped sample database in `data_dir` (empty, owned by `user`), for the demo.
    fn make_sample(&self, data_dir: &Path, run_dir: &Path, user: &User, scale: u32) -> Result<Sample>;

    /// Runs one SQL statement through a connection URL and returns its output as text.
    fn query(&self, url: &str, sql: &str) -> Result<String>;

    /// Directories of a data directory (relative paths) that the server writes and syncs on
    /// every commit, such as a write-ahead log, and that stay small whatever the size of the
    /// data: the server writes them in order and removes or reuses old files itself.
    ///
    /// A driver whose data path costs a round trip per sync (cowfs) keeps them on the
    /// host's filesystem, in the clone's own storage, so that a commit waits for the disk
    /// and nothing else (ARCHITECTURE.md, "Commit directories"). Their contents when a clone
    /// is made are the image's, and a clone's checkpoint must capture them after its layer.
    fn commit_dirs(&self) -> &'static [&'static str] {
        &[]
    }
}

/// A running instance. Dropping it stops it at once (so that a failed operation never
/// leaves a server running on a directory about to be deleted), unless it was
/// [`Instance::detach`]ed.
pub trait Instance: Send {
    fn pid(&self) -> u32;

    /// Whether it still runs.
    fn is_running(&mut self) -> bool;

    /// Sets the password of the database user `user`.
    fn set_password(&self, user: &str, password: &Secret) -> Result<()>;

    /// Makes `user` the instance's owner, for clones whose users must not be superusers: a
    /// role that logs in with `password`, is not a superuser (nor may create roles), and owns
    /// every database and what the superuser owned in them. Creates the role if missing;
    /// refuses a `user` that is the bootstrap superuser.
    fn make_owner(&self, user: &str, password: &Secret) -> Result<()>;

    /// Runs SQL as the superuser over its private socket; returns the output as text.
    fn sql(&self, sql: &str) -> Result<String>;

    /// Writes what the server holds in memory to its files, so that a copy of them taken
    /// next (a checkpoint of the clone) needs little recovery when a server starts from it.
    /// Clients go on meanwhile.
    fn flush(&self) -> Result<()> {
        Ok(())
    }

    /// Runs a script of statements as the superuser in `database` (the engine's default
    /// database when `None`), with the session
    /// settings `settings` (custom names such as `thinclone.clone`) in force; the first
    /// error stops it. Returns what it printed.
    fn run_script(&self, database: Option<&str>, script: &str, settings: &[(String, String)]) -> Result<String> {
        let _ = (database, script, settings);
        Err(Error::Other("this engine cannot run scripts on a clone".into()))
    }

    /// Stops it cleanly, or at once after `timeout`.
    fn stop(self: Box<Self>, timeout: Duration) -> Result<()>;

    /// Lets it run on after this value is dropped, for a later process to adopt.
    fn detach(self: Box<Self>);
}
