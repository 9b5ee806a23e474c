//! The operations on images and clones: what the REST API calls. Each one checks its input,
//! records what it is about to do in the state store before doing it, and leaves nothing
//! half-made behind when it fails; `Daemon::recover` finishes or cleans up whatever a crash
//! interrupted.
//!
//! # Data directory layout
//!
//! ```text
//! DATA_DIR/
//!   state.db               the state store (store.rs)
//!   images/<name>/         an image: a prepared PostgreSQL data directory, never written again
//!   images/<name>.partial/ an image being made
//!   clones/<name>/         a clone's storage, owned by its driver (driver.rs)
//!   run/<name>/            a clone server's socket, configuration and log (pg::ServerConfig)
//! ```

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;

use crate::driver::{self, Attached, Driver, DriverKind};
use crate::store::{self, Image, Status, Store, StoreError, Timestamp};
use crate::Name;

/// What went wrong, told apart the way the API must tell its callers.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// The caller asked for something invalid; the message says what to do.
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    /// The name is taken, or the state does not allow the operation.
    #[error("{0}")]
    Conflict(String),
    /// A failure inside the daemon.
    #[error("{0}")]
    Internal(String),
}

pub type Result<T, E = OpError> = std::result::Result<T, E>;

impl From<StoreError> for OpError {
    fn from(e: StoreError) -> OpError {
        match e {
            StoreError::Exists { .. } => OpError::Conflict(e.to_string()),
            StoreError::NotFound { .. } => OpError::NotFound(e.to_string()),
            StoreError::Sqlite(_) => OpError::Internal(e.to_string()),
        }
    }
}

fn internal(context: &str) -> impl FnOnce(io::Error) -> OpError + '_ {
    move |e| OpError::Internal(format!("{context}: {e}"))
}

fn engine(e: pg::Error) -> OpError {
    match e {
        pg::Error::MissingVersion { .. } | pg::Error::NotADataDir(_) => OpError::BadRequest(e.to_string()),
        other => OpError::Internal(other.to_string()),
    }
}

/// How the daemon runs.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    /// Clones listen on ports from this range (inclusive), on `listen_address`.
    pub ports: (u16, u16),
    pub listen_address: String,
    /// The OS user clones' servers run as (when the daemon is root).
    pub os_user: String,
    pub shared_buffers: String,
    /// The `thinclone` binary, which serves cowfs mounts.
    pub program: PathBuf,
}

/// Where a long operation is; shown in the image object while it is being made.
#[derive(Debug, Default, Serialize)]
pub struct Progress {
    pub done_bytes: AtomicU64,
    pub total_bytes: AtomicU64,
}

/// An image as the API shows it.
#[derive(Debug, Serialize)]
pub struct ImageView {
    #[serde(flatten)]
    pub image: Image,
    pub progress: Option<ProgressView>,
}

#[derive(Debug, Serialize)]
pub struct ProgressView {
    pub done_bytes: u64,
    pub total_bytes: u64,
}

/// A clone as the API shows it.
#[derive(Debug, Serialize)]
pub struct CloneView {
    pub name: Name,
    pub image: Name,
    pub status: Status,
    pub message: Option<String>,
    pub driver: String,
    pub port: u16,
    pub url: String,
    pub layer_bytes: u64,
    pub logical_bytes: u64,
    pub created_at: Timestamp,
}

/// A clone whose storage is attached, and whose server may be running.
struct Running {
    attached: Attached,
    server: Option<pg::Server>,
}

pub struct Daemon {
    config: Config,
    /// The driver for clones made without one: reflink where the data directory's filesystem
    /// shares blocks, cowfs elsewhere.
    default_driver: DriverKind,
    user: pg::RunAs,
    store: Mutex<Store>,
    running: Mutex<HashMap<Name, Running>>,
    progress: Mutex<HashMap<Name, Arc<Progress>>>,
    /// Serialises operations on clones, so that two requests never work on one clone at once.
    clone_ops: Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Daemon {
    /// Opens the data directory (creating it), its state store, and recovers: clones that
    /// were ready are brought back, half-made ones are cleaned up.
    pub fn open(config: Config) -> Result<Arc<Daemon>> {
        for dir in ["images", "clones", "run"] {
            fs::create_dir_all(config.data_dir.join(dir)).map_err(internal("creating the data directory"))?;
        }
        let store = Store::open(&config.data_dir.join("state.db"))?;
        let user = pg::RunAs::user(&config.os_user)
            .map_err(|e| OpError::BadRequest(format!("{e}: set the OS user clones run as with --os-user")))?;
        let default_driver = match crate::reflink::supported(&config.data_dir) {
            Ok(true) => DriverKind::Reflink,
            Ok(false) => DriverKind::Cowfs,
            Err(e) => {
                tracing::warn!("could not probe for reflink support, using cowfs: {e}");
                DriverKind::Cowfs
            }
        };
        tracing::info!(
            data_dir = %config.data_dir.display(),
            driver = default_driver.as_str(),
            "default clone driver: {}",
            if default_driver == DriverKind::Reflink {
                "reflink (the filesystem shares blocks between files)"
            } else {
                "cowfs (the filesystem cannot share blocks between files)"
            }
        );
        let daemon = Arc::new(Daemon {
            default_driver,
            config,
            user,
            store: Mutex::new(store),
            running: Mutex::new(HashMap::new()),
            progress: Mutex::new(HashMap::new()),
            clone_ops: Mutex::new(()),
        });
        daemon.recover()?;
        Ok(daemon)
    }

    fn image_dir(&self, name: &Name) -> PathBuf {
        self.config.data_dir.join("images").join(name.as_str())
    }

    fn partial_image_dir(&self, name: &Name) -> PathBuf {
        self.config.data_dir.join("images").join(format!("{name}.partial"))
    }

    fn clone_dir(&self, name: &Name) -> PathBuf {
        self.config.data_dir.join("clones").join(name.as_str())
    }

    fn run_dir(&self, name: &Name) -> PathBuf {
        self.config.data_dir.join("run").join(name.as_str())
    }

    fn driver(&self, kind: DriverKind) -> Box<dyn Driver> {
        match kind {
            DriverKind::Cowfs => Box::new(driver::Cowfs { program: self.config.program.clone() }),
            DriverKind::Reflink => Box::new(driver::Reflink),
            DriverKind::Copy => Box::new(driver::FullCopy),
        }
    }

    // ---------------------------------------------------------------- images

    pub fn images(&self) -> Result<Vec<ImageView>> {
        let images = lock(&self.store).images()?;
        Ok(images.into_iter().map(|i| self.image_view(i)).collect())
    }

    pub fn image(&self, name: &Name) -> Result<ImageView> {
        let image = lock(&self.store).image(name)?;
        Ok(self.image_view(image))
    }

    fn image_view(&self, image: Image) -> ImageView {
        let progress = lock(&self.progress).get(&image.name).map(|p| ProgressView {
            done_bytes: p.done_bytes.load(Ordering::Relaxed),
            total_bytes: p.total_bytes.load(Ordering::Relaxed),
        });
        ImageView { image, progress }
    }

    /// Starts making an image from a stopped data directory (or a plain base backup). The
    /// copy and the preparation run in the background; the image is `creating` until then.
    pub fn create_image_from_dir(self: &Arc<Self>, name: Name, source: &Path) -> Result<ImageView> {
        let source = fs::canonicalize(source)
            .map_err(|e| OpError::BadRequest(format!("source directory {}: {e}", source.display())))?;
        let version = pg::data_dir_version(&source).map_err(engine)?;
        let installation = pg::Installation::find(version).map_err(engine)?;
        if source.starts_with(&self.config.data_dir) {
            return Err(OpError::BadRequest("the source must not be inside thinclone's data directory".into()));
        }
        let image = Image {
            name: name.clone(),
            status: Status::Creating,
            message: Some("copying".into()),
            pg_version: Some(version),
            logical_bytes: 0,
            stored_bytes: 0,
            file_count: 0,
            source: source.display().to_string(),
            created_at: Timestamp::now(),
        };
        let total = tree_size(&source).0;
        self.start_image_job(image, total, move |daemon, progress| {
            daemon.make_image_from_dir(&name, &source, &installation, progress)
        })
    }

    /// Records a new image as `creating` and makes it in the background with `job`; its
    /// outcome (ready, or failed with the reason) lands in the store.
    fn start_image_job(
        self: &Arc<Self>,
        image: Image,
        total_bytes: u64,
        job: impl FnOnce(&Daemon, &Progress) -> Result<()> + Send + 'static,
    ) -> Result<ImageView> {
        lock(&self.store).insert_image(&image)?;
        let progress = Arc::new(Progress::default());
        progress.total_bytes.store(total_bytes, Ordering::Relaxed);
        lock(&self.progress).insert(image.name.clone(), progress.clone());
        let daemon = self.clone();
        let name = image.name.clone();
        std::thread::spawn(move || {
            let result = job(&daemon, &progress);
            daemon.finish_image(&name, result);
        });
        self.image(&image.name)
    }

    /// Starts making an image from a live server, which keeps running: pg_basebackup takes a
    /// consistent copy, then the copy is prepared. The image is `creating` until then.
    pub fn create_image_from_url(self: &Arc<Self>, name: Name, url: &str) -> Result<ImageView> {
        let source = pg::SourceUrl::parse(url).map_err(OpError::BadRequest)?;
        let client = pg::Installation::newest().map_err(engine)?;
        // An unreachable source is the caller's mistake: say so now, not in a failed image.
        let sep = if source.shown.contains('?') { '&' } else { '?' };
        let probe = pg::Program::new(client.program("pg_isready"))
            .args(["-d", &format!("{}{sep}connect_timeout=5", source.shown), "-t", "5"])
            .run();
        if let Err(e) = probe {
            let why = match &e {
                pg::Error::Failed { stderr, .. } if !stderr.is_empty() => stderr.clone(),
                _ => "no response".into(),
            };
            return Err(OpError::BadRequest(format!("cannot reach the source {}: {why}", source.shown)));
        }
        let image = Image {
            name: name.clone(),
            status: Status::Creating,
            message: Some("copying (pg_basebackup)".into()),
            pg_version: None,
            logical_bytes: 0,
            stored_bytes: 0,
            file_count: 0,
            source: source.shown.clone(),
            created_at: Timestamp::now(),
        };
        self.start_image_job(image, 0, move |daemon, progress| {
            daemon.make_image_from_url(&name, &source, &client, progress)
        })
    }

    fn make_image_from_url(
        &self,
        name: &Name,
        source: &pg::SourceUrl,
        client: &pg::Installation,
        progress: &Progress,
    ) -> Result<()> {
        let partial = self.partial_image_dir(name);
        let _ = fs::remove_dir_all(&partial);
        fs::create_dir(&partial).map_err(internal("making the image directory"))?;
        // PostgreSQL refuses a data directory that others can read.
        fs::set_permissions(&partial, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(internal("making the image directory private"))?;
        chown_tree(&partial, &self.user).map_err(internal("giving the image to the database's user"))?;
        pg::basebackup(client, source, &partial, &self.user, |done, total| {
            progress.done_bytes.store(done, Ordering::Relaxed);
            progress.total_bytes.store(total, Ordering::Relaxed);
        })
        .map_err(|e| match e {
            pg::Error::Failed { stderr, .. } => OpError::BadRequest(format!("pg_basebackup failed: {stderr}")),
            other => engine(other),
        })?;
        let version = pg::data_dir_version(&partial).map_err(engine)?;
        {
            let store = lock(&self.store);
            let mut image = store.image(name)?;
            image.pg_version = Some(version);
            store.update_image(&image)?;
        }
        let installation = pg::Installation::find(version).map_err(engine)?;
        self.seal_image(name, &partial, &installation)
    }

    fn make_image_from_dir(
        &self,
        name: &Name,
        source: &Path,
        installation: &pg::Installation,
        progress: &Progress,
    ) -> Result<()> {
        let partial = self.partial_image_dir(name);
        let _ = fs::remove_dir_all(&partial);
        // cp -a in the background; the bytes copied so far are what the progress shows.
        let mut copy = std::process::Command::new("cp")
            .arg("-a")
            .arg("--")
            .arg(source)
            .arg(&partial)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(internal("starting cp"))?;
        loop {
            if let Some(status) = copy.try_wait().map_err(internal("copying"))? {
                if !status.success() {
                    let mut err = String::new();
                    if let Some(mut e) = copy.stderr.take() {
                        let _ = io::Read::read_to_string(&mut e, &mut err);
                    }
                    return Err(OpError::BadRequest(format!("copying {}: {}", source.display(), err.trim())));
                }
                break;
            }
            progress.done_bytes.store(tree_size(&partial).0, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(300));
        }
        progress.done_bytes.store(progress.total_bytes.load(Ordering::Relaxed), Ordering::Relaxed);
        self.seal_image(name, &partial, installation)
    }

    /// Prepares a copied data directory so that clones start without WAL replay, and makes it
    /// the image.
    fn seal_image(&self, name: &Name, partial: &Path, installation: &pg::Installation) -> Result<()> {
        self.set_image_message(name, "preparing");
        chown_tree(partial, &self.user).map_err(internal("giving the image to the database's user"))?;
        pg::prepare(installation, partial, &self.user, &self.run_dir(name)).map_err(|e| match e {
            pg::Error::Failed { stderr, .. } => OpError::BadRequest(format!("the copy would not start: {stderr}")),
            other => engine(other),
        })?;
        let _ = fs::remove_dir_all(self.run_dir(name));
        let final_dir = self.image_dir(name);
        fs::rename(partial, &final_dir).map_err(internal("sealing the image"))?;
        let (logical_bytes, file_count) = tree_size(&final_dir);
        let store = lock(&self.store);
        let mut image = store.image(name)?;
        image.status = Status::Ready;
        image.message = None;
        image.logical_bytes = logical_bytes;
        image.file_count = file_count;
        image.stored_bytes = cowfs::disk_usage(&final_dir).unwrap_or(0);
        store.update_image(&image)?;
        Ok(())
    }

    fn set_image_message(&self, name: &Name, message: &str) {
        let store = lock(&self.store);
        if let Ok(mut image) = store.image(name) {
            image.message = Some(message.into());
            let _ = store.update_image(&image);
        }
    }

    fn finish_image(&self, name: &Name, result: Result<()>) {
        lock(&self.progress).remove(name);
        if let Err(e) = result {
            tracing::error!(image = %name, "making the image failed: {e}");
            let _ = fs::remove_dir_all(self.partial_image_dir(name));
            let store = lock(&self.store);
            if let Ok(mut image) = store.image(name) {
                image.status = Status::Failed;
                image.message = Some(e.to_string());
                let _ = store.update_image(&image);
            }
        }
    }

    /// Removes an image; refused while it has clones.
    pub fn delete_image(&self, name: &Name) -> Result<()> {
        let store = lock(&self.store);
        let image = store.image(name)?;
        let clones = store.clones_of(name)?;
        if !clones.is_empty() {
            let names: Vec<String> = clones.iter().map(|c| c.name.to_string()).collect();
            return Err(OpError::Conflict(format!(
                "image {name} has clones ({}); remove them first with `thinclone clone rm`",
                names.join(", ")
            )));
        }
        if image.status == Status::Creating {
            return Err(OpError::Conflict(format!("image {name} is still being made")));
        }
        remove_tree(&self.image_dir(name)).map_err(internal("removing the image"))?;
        store.delete_image(name)?;
        Ok(())
    }

    // ---------------------------------------------------------------- clones

    pub fn clones(&self) -> Result<Vec<CloneView>> {
        let clones = lock(&self.store).clones()?;
        Ok(clones.iter().map(|c| self.clone_view(c)).collect())
    }

    pub fn clone_view_of(&self, name: &Name) -> Result<CloneView> {
        let clone = lock(&self.store).clone_named(name)?;
        Ok(self.clone_view(&clone))
    }

    fn clone_view(&self, clone: &store::Clone) -> CloneView {
        let kind: DriverKind = clone.driver.parse().unwrap_or(DriverKind::Cowfs);
        let layer_bytes = self.driver(kind).stored_bytes(&self.clone_dir(&clone.name)).unwrap_or(0);
        let logical_bytes = lock(&self.store).image(&clone.image).map_or(0, |i| i.logical_bytes);
        CloneView {
            name: clone.name.clone(),
            image: clone.image.clone(),
            status: clone.status,
            message: clone.message.clone(),
            driver: clone.driver.clone(),
            port: clone.port,
            url: format!(
                "postgresql://postgres:{}@{}:{}/postgres",
                clone.password, self.config.listen_address, clone.port
            ),
            layer_bytes,
            logical_bytes,
            created_at: clone.created_at,
        }
    }

    /// Makes a clone and starts its server; returns once it accepts SQL.
    pub fn create_clone(&self, name: Name, image_name: Name, kind: Option<DriverKind>) -> Result<CloneView> {
        let _op = lock(&self.clone_ops);
        let kind = kind.unwrap_or(self.default_driver);
        if kind == DriverKind::Reflink && !crate::reflink::supported(&self.config.data_dir).unwrap_or(false) {
            return Err(OpError::BadRequest(format!(
                "the reflink driver needs a filesystem that shares blocks between files (XFS with \
                 reflink=1, or btrfs), and {} is not on one; use --driver cowfs",
                self.config.data_dir.display()
            )));
        }
        let (image, port) = {
            let store = lock(&self.store);
            let image = store.image(&image_name)?;
            if image.status != Status::Ready {
                return Err(OpError::Conflict(format!("image {image_name} is {}, not ready", image.status.as_str())));
            }
            if store.clone_named(&name).is_ok() {
                return Err(OpError::Conflict(format!("clone {name} already exists")));
            }
            let used = store.used_ports()?;
            let port = (self.config.ports.0..=self.config.ports.1)
                .find(|p| !used.contains(p) && port_is_free(*p))
                .ok_or_else(|| OpError::Conflict("no free port left in the clone port range".into()))?;
            (image, port)
        };
        let installation = pg::Installation::find(image.pg_version.unwrap_or(0)).map_err(engine)?;
        let clone = store::Clone {
            name: name.clone(),
            image: image_name.clone(),
            status: Status::Creating,
            message: None,
            driver: kind.as_str().into(),
            port,
            password: generate_password(),
            created_at: Timestamp::now(),
        };
        // Recorded first: a crash from here on is cleaned up by `recover`.
        lock(&self.store).insert_clone(&clone)?;
        let driver = self.driver(kind);
        let made = driver
            .create(&self.image_dir(&image_name), &self.clone_dir(&name))
            .map_err(internal("making the clone's storage"))
            .and_then(|()| self.bring_up(&clone, &installation));
        match made {
            Ok(()) => {
                let mut ready = clone;
                ready.status = Status::Ready;
                lock(&self.store).update_clone(&ready)?;
                Ok(self.clone_view(&ready))
            }
            Err(e) => {
                self.tear_down(&clone);
                let _ = driver.destroy(&self.clone_dir(&name));
                let _ = fs::remove_dir_all(self.run_dir(&name));
                let _ = lock(&self.store).delete_clone(&name);
                Err(e)
            }
        }
    }

    /// Attaches a clone's storage, starts its server and sets its password.
    fn bring_up(&self, clone: &store::Clone, installation: &pg::Installation) -> Result<()> {
        let kind: DriverKind = clone.driver.parse().map_err(OpError::Internal)?;
        let driver = self.driver(kind);
        let attached = driver
            .attach(&self.image_dir(&clone.image), &self.clone_dir(&clone.name), &self.config.os_user)
            .map_err(internal("attaching the clone's storage"))?;
        let config = pg::ServerConfig {
            port: clone.port,
            listen_addresses: self.config.listen_address.clone(),
            run_dir: self.run_dir(&clone.name),
            shared_buffers: self.config.shared_buffers.clone(),
            extra: vec![("cluster_name".into(), format!("thinclone-{}", clone.name))],
        };
        let started =
            pg::Server::start(installation, &attached.data_dir, &config, &self.user, Duration::from_secs(120));
        let server = match started {
            Ok(server) => server,
            Err(e) => {
                let _ = driver.detach(&self.clone_dir(&clone.name), attached);
                return Err(OpError::Internal(format!("starting the clone's server: {e}")));
            }
        };
        let running = Running { attached, server: Some(server) };
        if let Err(e) = running.server.as_ref().unwrap().set_superuser_password(&clone.password) {
            lock(&self.running).insert(clone.name.clone(), running);
            return Err(OpError::Internal(format!("setting the clone's password: {e}")));
        }
        lock(&self.running).insert(clone.name.clone(), running);
        Ok(())
    }

    /// Stops a clone's server and detaches its storage, if they are up.
    fn tear_down(&self, clone: &store::Clone) {
        let Some(running) = lock(&self.running).remove(&clone.name) else { return };
        if let Some(server) = running.server {
            if let Err(e) = server.stop(Duration::from_secs(60)) {
                tracing::warn!(clone = %clone.name, "stopping the server: {e}");
            }
        }
        let kind: DriverKind = clone.driver.parse().unwrap_or(DriverKind::Cowfs);
        if let Err(e) = self.driver(kind).detach(&self.clone_dir(&clone.name), running.attached) {
            tracing::warn!(clone = %clone.name, "detaching the storage: {e}");
        }
    }

    pub fn stop_clone(&self, name: &Name) -> Result<CloneView> {
        let _op = lock(&self.clone_ops);
        let mut clone = lock(&self.store).clone_named(name)?;
        self.tear_down(&clone);
        clone.status = Status::Stopped;
        lock(&self.store).update_clone(&clone)?;
        Ok(self.clone_view(&clone))
    }

    pub fn start_clone(&self, name: &Name) -> Result<CloneView> {
        let _op = lock(&self.clone_ops);
        let mut clone = lock(&self.store).clone_named(name)?;
        if clone.status == Status::Ready && lock(&self.running).contains_key(name) {
            return Ok(self.clone_view(&clone));
        }
        self.start(&mut clone)?;
        Ok(self.clone_view(&clone))
    }

    fn start(&self, clone: &mut store::Clone) -> Result<()> {
        let image = lock(&self.store).image(&clone.image)?;
        let installation = pg::Installation::find(image.pg_version.unwrap_or(0)).map_err(engine)?;
        if let Err(e) = self.bring_up(clone, &installation) {
            self.tear_down(clone);
            return Err(e);
        }
        clone.status = Status::Ready;
        clone.message = None;
        lock(&self.store).update_clone(clone)?;
        Ok(())
    }

    /// Returns a clone to its image's state, on the same port with the same credentials.
    pub fn reset_clone(&self, name: &Name) -> Result<CloneView> {
        let _op = lock(&self.clone_ops);
        let mut clone = lock(&self.store).clone_named(name)?;
        self.tear_down(&clone);
        let kind: DriverKind = clone.driver.parse().map_err(OpError::Internal)?;
        self.driver(kind)
            .reset(&self.image_dir(&clone.image), &self.clone_dir(name))
            .map_err(internal("resetting the clone's storage"))?;
        self.start(&mut clone)?;
        Ok(self.clone_view(&clone))
    }

    pub fn delete_clone(&self, name: &Name) -> Result<()> {
        let _op = lock(&self.clone_ops);
        let clone = lock(&self.store).clone_named(name)?;
        self.tear_down(&clone);
        let kind: DriverKind = clone.driver.parse().unwrap_or(DriverKind::Cowfs);
        self.driver(kind).destroy(&self.clone_dir(name)).map_err(internal("removing the clone's storage"))?;
        let _ = fs::remove_dir_all(self.run_dir(name));
        lock(&self.store).delete_clone(name)?;
        Ok(())
    }

    /// Stops every clone's server and storage, as at shutdown. Their records stay `ready`,
    /// so the next start brings them back.
    pub fn shutdown(&self) {
        let _op = lock(&self.clone_ops);
        let clones = lock(&self.store).clones().unwrap_or_default();
        for clone in clones {
            self.tear_down(&clone);
        }
    }

    /// After a restart: clones that were ready come back on the same port with the same
    /// credentials; clones and images that a crash left half-made are cleaned up.
    fn recover(&self) -> Result<()> {
        let images = lock(&self.store).images()?;
        for mut image in images.into_iter().filter(|i| i.status == Status::Creating) {
            tracing::warn!(image = %image.name, "an image was being made when the daemon stopped; marking it failed");
            let _ = fs::remove_dir_all(self.partial_image_dir(&image.name));
            image.status = Status::Failed;
            image.message = Some("interrupted by a daemon restart; remove it and create it again".into());
            lock(&self.store).update_image(&image)?;
        }
        let clones = lock(&self.store).clones()?;
        for mut clone in clones {
            let kind: DriverKind = clone.driver.parse().unwrap_or(DriverKind::Cowfs);
            // Whatever a killed daemon left running of this clone goes first.
            self.clean_leftovers(&clone);
            match clone.status {
                Status::Creating | Status::Failed => {
                    tracing::warn!(clone = %clone.name, "removing a clone left half-made by a crash");
                    let _ = self.driver(kind).destroy(&self.clone_dir(&clone.name));
                    let _ = fs::remove_dir_all(self.run_dir(&clone.name));
                    lock(&self.store).delete_clone(&clone.name)?;
                }
                Status::Ready => {
                    tracing::info!(clone = %clone.name, port = clone.port, "bringing the clone back");
                    if let Err(e) = self.start(&mut clone) {
                        tracing::error!(clone = %clone.name, "could not bring the clone back: {e}");
                        clone.status = Status::Failed;
                        clone.message = Some(e.to_string());
                        lock(&self.store).update_clone(&clone)?;
                    }
                }
                Status::Stopped => {}
            }
        }
        Ok(())
    }

    /// Stops a server and a mount of this clone that outlived a killed daemon.
    fn clean_leftovers(&self, clone: &store::Clone) {
        let clone_dir = self.clone_dir(&clone.name);
        let data = driver::data_dir(&clone_dir);
        let layer = clone_dir.join("layer");
        // The pid files may be stale (after a reboot the numbers belong to other processes):
        // a process is stopped only if its command line names this clone's own directory.
        let leftovers = [
            (self.run_dir(&clone.name).join("postgres.pid"), data, libc::SIGINT, "server"),
            (clone_dir.join("mount.pid"), layer, libc::SIGTERM, "mount"),
        ];
        for (pid_file, own_path, signal, what) in leftovers {
            let Some(pid) = read_pid(&pid_file) else { continue };
            if !is_live_process_of(pid, &own_path) {
                continue;
            }
            tracing::info!(clone = %clone.name, pid, "stopping a {what} left by the previous daemon");
            // SAFETY: a signal to a live process whose command line names this clone.
            unsafe { libc::kill(pid, signal) };
            for _ in 0..3000 {
                if !is_live_process_of(pid, &own_path) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = cowfs::unmount_stale(&driver::data_dir(&clone_dir));
    }
}

/// The first line of a pid file, as a pid.
fn read_pid(path: &Path) -> Option<i32> {
    fs::read_to_string(path).ok()?.lines().next()?.trim().parse().ok()
}

/// Whether `pid` is a running (not zombie) process with `path` among its arguments.
fn is_live_process_of(pid: i32, path: &Path) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    // The state is the first field after the command name, which is in parentheses.
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
    if matches!(state, Some("Z") | Some("X") | None) {
        return false;
    }
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let wanted = path.as_os_str().as_encoded_bytes();
    cmdline.split(|&b| b == 0).any(|arg| arg == wanted)
}

/// Logical bytes and file count of a tree.
fn tree_size(path: &Path) -> (u64, u64) {
    let mut bytes = 0;
    let mut files = 0;
    let mut todo = vec![path.to_owned()];
    while let Some(dir) = todo.pop() {
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => todo.push(entry.path()),
                Ok(m) => {
                    bytes += m.len();
                    files += 1;
                }
                Err(_) => {}
            }
        }
    }
    (bytes, files)
}

fn chown_tree(path: &Path, user: &pg::RunAs) -> io::Result<()> {
    let status =
        std::process::Command::new("chown").arg("-R").arg(format!("{}:{}", user.uid, user.gid)).arg(path).status()?;
    if !status.success() {
        return Err(io::Error::other(format!("chown -R {} failed", path.display())));
    }
    Ok(())
}

fn remove_tree(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn port_is_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// 24 random bytes as hex: a password that needs no escaping in a URL.
fn generate_password() -> String {
    let mut bytes = [0u8; 24];
    let filled = fs::File::open("/dev/urandom").and_then(|mut f| io::Read::read_exact(&mut f, &mut bytes));
    assert!(filled.is_ok(), "/dev/urandom is unreadable");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_live_process_naming_the_path_counts() {
        let dir = tempfile::tempdir().unwrap();
        let ours = dir.path().join("clones/a/data");
        // A shell that keeps the path among its arguments (`; true` stops it exec'ing sleep).
        let mut child =
            std::process::Command::new("sh").args(["-c", "sleep 30; true", "sh"]).arg(&ours).spawn().unwrap();
        let pid = child.id() as i32;
        std::thread::sleep(Duration::from_millis(50));
        assert!(is_live_process_of(pid, &ours));
        assert!(!is_live_process_of(pid, &dir.path().join("clones/b/data")), "another clone's path matched");
        // Killed but not reaped: a zombie is gone.
        child.kill().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert!(!is_live_process_of(pid, &ours), "a zombie counted as live");
        child.wait().unwrap();
    }
}
