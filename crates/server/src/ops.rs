//! The server's operations on images and clones: what the REST API calls.
//!
//! Each request that changes something is checked first (names, states, ports, the
//! source, whether the agent it needs answers), refused at once with a [`ServerError`] when
//! it cannot be done, and otherwise recorded as an operation together with the target's new
//! status, in one catalog transaction, before anything is done. The work then runs on a
//! thread of its own through the target's [`Agent`], and its end (succeeded, or failed with
//! the reason) lands in the catalog. After a crash, [`Server::open`] finishes each operation
//! that was running, once its agent answers (at once for the embedded agent, when it
//! reconnects for another): the agent has finished or rolled back its part
//! (agent/src/record.rs), and every agent call is idempotent, so the server asks again and
//! records the outcome.
//!
//! Where things go is decided here: an image goes to a location (a directory that one or
//! more agents reach), a clone to an agent that reaches its image's location, has the image's
//! engine version, and runs the fewest clones (placement), on a port free on that agent.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use agent::{AgentError, AgentInfo, CloneReport, CloneSpec, CloneState, ErrorKind, ImageSource, SourceUrl};
use api::{
    Checkpoint, CloneStatus, CreateBranch, CreateCheckpoint, CreateClone, CreateImage, ImageStatus, Name, Operation,
    OperationId, OperationKind, Progress, RefreshClone, Role, Timestamp,
};
use engine::Engine;

use crate::auth::Caller;
use crate::catalog::{ActivityRow, Catalog, CatalogError, CloneRow, ImageRow, OperationRow};
use crate::fleet::Fleet;
use crate::webhooks::Event;

/// What went wrong, told apart the way the API must tell its callers.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ServerError {
    /// The caller asked for something invalid; the message says what to do.
    #[error("{0}")]
    BadRequest(String),
    /// No credential, or one that is not valid (unknown, revoked, expired).
    #[error("{0}")]
    Unauthorized(String),
    /// The caller sees the object but may not do this to it.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// The name is taken, or the object's state does not allow the request now.
    #[error("{0}")]
    Conflict(String),
    /// A part the request needs is not available now.
    #[error("{0}")]
    Unavailable(String),
    /// Not enough free disk for what was asked; nothing was written.
    #[error("{0}")]
    InsufficientStorage(String),
    /// A failure inside the server; logged where it is answered.
    #[error("{0}")]
    Internal(String),
}

impl From<CatalogError> for ServerError {
    fn from(e: CatalogError) -> ServerError {
        match e {
            CatalogError::Exists { .. } | CatalogError::PortTaken(_) | CatalogError::Refused(_) => {
                ServerError::Conflict(e.to_string())
            }
            CatalogError::NotFound { .. } | CatalogError::NoImage(_) => ServerError::NotFound(e.to_string()),
            CatalogError::TooOld(_) | CatalogError::Sqlite(_) => ServerError::Internal(e.to_string()),
        }
    }
}

impl From<AgentError> for ServerError {
    fn from(e: AgentError) -> ServerError {
        match e.kind {
            ErrorKind::BadRequest => ServerError::BadRequest(e.message),
            ErrorKind::NotFound => ServerError::NotFound(e.message),
            ErrorKind::Conflict => ServerError::Conflict(e.message),
            ErrorKind::DiskFull => ServerError::InsufficientStorage(e.message),
            ErrorKind::Unavailable => ServerError::Unavailable(e.message),
            ErrorKind::Internal => ServerError::Internal(e.message),
        }
    }
}

pub type Result<T, E = ServerError> = std::result::Result<T, E>;

/// A value as the JSON text the catalog keeps.
fn to_json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| ServerError::Internal(format!("encoding for the catalog: {e}")))
}

/// The most scripts, rules, and bytes of SQL an image takes.
const MAX_SCRIPTS: usize = 32;
const MAX_RULES: usize = 256;
const MAX_SCRIPT_BYTES: usize = 48 << 10;

/// Refuses masking rules and scripts that cannot run, before anything is copied.
pub(crate) fn check_transform(mask: &[api::MaskRule], scripts: &[api::ImageScript]) -> Result<()> {
    let bad = |m: String| Err(ServerError::BadRequest(m));
    if mask.len() > MAX_RULES || scripts.len() > MAX_SCRIPTS {
        return bad(format!("at most {MAX_RULES} masking rules and {MAX_SCRIPTS} scripts"));
    }
    for rule in mask {
        let what = format!("masking rule {}.{}", rule.table, rule.column);
        match rule.table.split_once('.') {
            Some((schema, table)) if !schema.is_empty() && !table.is_empty() => {}
            _ => return bad(format!("{what}: the table must be schema-qualified, like public.customers (where databases have no schemas, by its database: shop.customers)")),
        }
        if rule.column.is_empty() || rule.table.len() > 200 || rule.column.len() > 63 {
            return bad(format!("{what}: a column name is 1 to 63 bytes, a table name at most 200"));
        }
        if rule.strategy == api::MaskStrategy::Constant && rule.value.is_none() {
            return bad(format!("{what}: the constant strategy needs `value`"));
        }
        if rule.strategy == api::MaskStrategy::DateShift && rule.days.is_none_or(|d| d == 0) {
            return bad(format!("{what}: the date_shift strategy needs `days` (1 or more)"));
        }
    }
    for script in scripts {
        if script.name.is_empty() || script.name.len() > 255 || script.sql.len() > MAX_SCRIPT_BYTES {
            return bad(format!(
                "script {:?}: a name of 1 to 255 bytes and at most {} KiB of SQL",
                script.name,
                MAX_SCRIPT_BYTES >> 10
            ));
        }
    }
    Ok(())
}

/// What a new clone is, besides its image.
struct NewClone {
    name: Name,
    host: Name,
    driver: api::Driver,
    origin: Option<agent::CloneOrigin>,
    read_only: bool,
    expires_at: Option<Timestamp>,
    /// A template's scripts, run on it before it is handed out.
    scripts: Vec<api::ImageScript>,
    /// The template they come from.
    template: Option<Name>,
}

/// The settings a template's scripts run with: the clone's name, its owner's and its image's.
fn template_settings(clone: &Name, owner: &Name, image: &Name) -> Vec<(String, String)> {
    vec![
        ("thinclone.clone".to_owned(), clone.to_string()),
        ("thinclone.owner".to_owned(), owner.to_string()),
        ("thinclone.image".to_owned(), image.to_string()),
    ]
}

/// When a clone asked to expire `expires_in` seconds from now, or at `expires_at`, expires.
pub(crate) fn expiry(expires_in: Option<u64>, expires_at: Option<Timestamp>) -> Result<Option<Timestamp>> {
    let now = Timestamp::now();
    match (expires_in, expires_at) {
        (Some(_), Some(_)) => Err(ServerError::BadRequest("give expires_in or expires_at, not both".into())),
        (Some(seconds), None) => {
            let seconds = i64::try_from(seconds).ok().filter(|&s| s <= MAX_EXPIRY_SECONDS).ok_or_else(|| {
                ServerError::BadRequest(format!("expires_in is at most {MAX_EXPIRY_SECONDS} seconds (ten years)"))
            })?;
            Ok(Some(Timestamp(now.0 + seconds)))
        }
        (None, Some(at)) if at.0 <= now.0 => {
            Err(ServerError::BadRequest(format!("expires_at ({at}) is not in the future")))
        }
        (None, Some(at)) if at.0 - now.0 > MAX_EXPIRY_SECONDS => {
            Err(ServerError::BadRequest("expires_at is at most ten years from now".into()))
        }
        (None, at) => Ok(at),
    }
}

/// Ten years, the furthest an expiry or a protection lease may be.
pub(crate) const MAX_EXPIRY_SECONDS: i64 = 10 * 366 * 86_400;

/// The longest message a checkpoint may carry, in characters.
const MAX_CHECKPOINT_MESSAGE: usize = 1000;

/// `cpN` for the smallest N above every `cpN` already taken.
fn next_checkpoint_name(existing: &[Name]) -> Name {
    let highest = existing.iter().filter_map(|c| c.as_str().strip_prefix("cp")?.parse::<u64>().ok()).max().unwrap_or(0);
    Name::new(&format!("cp{}", highest + 1)).expect("cpN is a valid name")
}

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where `state.db` lives.
    pub data_dir: PathBuf,
    /// Clones get ports from this range (inclusive).
    pub ports: (u16, u16),
    /// How many days the audit log keeps its entries.
    pub activity_days: u32,
    /// The embedded agent's image directory: the `local` location (`thinclone serve`).
    pub local_location: Option<PathBuf>,
    /// `host:port` that agents dial for the agent channel, when it listens.
    pub channel_address: Option<String>,
    /// Expiry warnings and the server's idle policy.
    pub lifecycle: crate::lifecycle::LifecycleConfig,
}

/// What can be done to a clone besides making and removing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloneAction {
    Start,
    Stop,
    Reset,
}

impl CloneAction {
    fn kind(self) -> OperationKind {
        match self {
            CloneAction::Start => OperationKind::CloneStart,
            CloneAction::Stop => OperationKind::CloneStop,
            CloneAction::Reset => OperationKind::CloneReset,
        }
    }

    fn status(self) -> CloneStatus {
        match self {
            CloneAction::Start => CloneStatus::Starting,
            CloneAction::Stop => CloneStatus::Stopping,
            CloneAction::Reset => CloneStatus::Resetting,
        }
    }
}

pub struct Server {
    config: ServerConfig,
    catalog: Mutex<Catalog>,
    pub(crate) fleet: Fleet,
    /// The authority that signs agents' certificates.
    pub(crate) pki: crate::pki::Pki,
    engines: Vec<Arc<dyn Engine>>,
    /// Bytes copied so far by running image operations.
    progress: Mutex<HashMap<OperationId, Progress>>,
    jobs: Mutex<Vec<JoinHandle<()>>>,
    /// Operations a restart interrupted whose agent has not answered since: finished when it
    /// connects.
    pub(crate) deferred: Mutex<Vec<OperationRow>>,
    /// Running operations someone asked to cancel, and who.
    cancelled: Mutex<HashMap<OperationId, Name>>,
    pub(crate) stopping: std::sync::atomic::AtomicBool,
}

/// What an operation's work returns when the server stops while an agent on another host
/// does the work: the operation stays running, for recovery at the next start.
const LEFT_RUNNING: &str = "left running: the server is stopping";

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// 24 random bytes as hex: a password that needs no escaping in a URL.
fn generate_password() -> Result<String> {
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .map_err(|e| ServerError::Internal(format!("reading /dev/urandom for a password: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

impl Server {
    /// Opens the catalog in `config.data_dir`, registers the embedded agent and its `local`
    /// location (if any), finishes the operations a crash interrupted whose agent answers
    /// (the embedded agent must have recovered already: opening it does), and starts
    /// following the agents of the channel. `channel_names` are the names agents dial the
    /// channel by, for its certificate.
    pub fn open(
        config: ServerConfig,
        fleet: Fleet,
        engines: Vec<Arc<dyn Engine>>,
        channel_names: &[String],
    ) -> Result<Arc<Server>> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| ServerError::Internal(format!("creating {}: {e}", config.data_dir.display())))?;
        let catalog = Catalog::open(&config.data_dir.join("state.db"))?;
        let pki = crate::pki::Pki::open(&config.data_dir, channel_names)?;
        let server = Arc::new(Server {
            config,
            catalog: Mutex::new(catalog),
            fleet,
            pki,
            engines,
            progress: Mutex::new(HashMap::new()),
            jobs: Mutex::new(Vec::new()),
            deferred: Mutex::new(Vec::new()),
            cancelled: Mutex::new(HashMap::new()),
            stopping: std::sync::atomic::AtomicBool::new(false),
        });
        server.register_embedded()?;
        server.recover()?;
        server.follow_agents();
        server.follow_lifecycle();
        server.follow_webhooks();
        Ok(server)
    }

    /// The image `name` if the caller sees it (its team is theirs); "no image" otherwise.
    fn visible_image(&self, caller: &Caller, name: &Name) -> Result<ImageRow> {
        match self.catalog().image(name) {
            Ok(row) if caller.sees(&row.team) => Ok(row),
            Ok(_) | Err(CatalogError::NotFound { .. }) => Err(ServerError::NotFound(format!("no image named {name}"))),
            Err(e) => Err(e.into()),
        }
    }

    /// The clone `name` if the caller sees it; "no clone" otherwise.
    pub(crate) fn visible_clone(&self, caller: &Caller, name: &Name) -> Result<CloneRow> {
        match self.catalog().clone_named(name) {
            Ok(row) if caller.sees(&row.team) => Ok(row),
            Ok(_) | Err(CatalogError::NotFound { .. }) => Err(ServerError::NotFound(format!("no clone named {name}"))),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether the caller may use a clone (see its password, start, stop, reset, remove it):
    /// its owner, and administrators.
    fn may_use(caller: &Caller, clone: &CloneRow) -> bool {
        caller.role == Role::Admin || (clone.owner == caller.user && caller.role >= Role::CloneUser)
    }

    pub(crate) fn require_use(caller: &Caller, clone: &CloneRow, what: &str) -> Result<()> {
        if Self::may_use(caller, clone) {
            return Ok(());
        }
        Err(ServerError::Forbidden(format!(
            "only clone {}'s owner ({}) or an administrator may {what} it",
            clone.name, clone.owner
        )))
    }

    pub(crate) fn catalog(&self) -> MutexGuard<'_, Catalog> {
        lock(&self.catalog)
    }

    pub(crate) fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Whether the server is shutting down.
    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Records an entry of the audit log; a failure to record is logged, not answered.
    /// `outcome` is the answer's status, or its status and error message.
    pub fn audit(
        &self,
        actor: Option<&Name>,
        action: &str,
        target: Option<String>,
        team: Option<Name>,
        outcome: Result<u16, (u16, String)>,
    ) {
        let (status, detail) = match outcome {
            Ok(status) => (status, None),
            Err((status, message)) => (status, Some(message)),
        };
        let entry = ActivityRow {
            id: 0,
            at: Timestamp::now(),
            actor: actor.cloned(),
            action: action.to_owned(),
            target,
            team,
            status,
            detail,
        };
        if let Err(e) = self.catalog().insert_activity(&entry, self.config.activity_days) {
            tracing::error!("recording activity: {e}");
        }
    }

    /// Runs an operation's work on a thread of its own, inside a span that names it, and
    /// records its end.
    fn spawn(
        self: &Arc<Self>,
        id: OperationId,
        kind: OperationKind,
        target: &Name,
        work: impl FnOnce(&Server) -> Result<(), String> + Send + 'static,
    ) {
        let server = self.clone();
        let span = tracing::info_span!("operation", id = id.0, kind = kind.as_str(), target = %target);
        let handle = std::thread::spawn(move || {
            let _entered = span.enter();
            tracing::info!("started");
            let result = work(&server);
            match &result {
                Ok(()) => tracing::info!("succeeded"),
                Err(e) => tracing::warn!("failed: {e}"),
            }
            lock(&server.progress).remove(&id);
            if matches!(&result, Err(e) if e == LEFT_RUNNING) {
                // The server stops, and the agent doing the work is elsewhere: the operation
                // is finished when the server is back and the agent answers.
                tracing::info!("left running for the next start of the server");
                return;
            }
            if let Err(e) = server.catalog().finish_operation(id, result.err().as_deref()) {
                tracing::error!("recording the operation's end: {e}");
            }
        });
        let mut jobs = lock(&self.jobs);
        jobs.retain(|j| !j.is_finished());
        jobs.push(handle);
    }

    /// Stops the image copies under way (each ends failed, leaving nothing) and waits for
    /// every operation under way to end.
    pub fn shutdown(&self) {
        self.stopping.store(true, std::sync::atomic::Ordering::Relaxed);
        // Calls waiting for agents on other hosts end now; their operations stay running.
        self.fleet.hub().close_all();
        if let Some(local) = self.fleet.embedded() {
            self.fleet.agent(local).cancel_image_jobs();
        }
        let jobs: Vec<JoinHandle<()>> = std::mem::take(&mut *lock(&self.jobs));
        for job in jobs {
            if job.join().is_err() {
                tracing::error!("an operation's thread panicked");
            }
        }
    }

    // ------------------------------------------------------------------ views

    fn operation_view(&self, row: OperationRow) -> Operation {
        let progress = lock(&self.progress).get(&row.id).copied();
        Operation {
            id: row.id,
            kind: row.kind,
            target: api::Target { kind: row.kind.target_kind(), name: row.target },
            state: row.state,
            message: row.message,
            progress,
            error: row.error,
            created_at: row.created_at,
            finished_at: row.finished_at,
        }
    }

    fn image_view(&self, row: ImageRow, clone_count: u64) -> api::Image {
        let progress = row.operation.and_then(|op| lock(&self.progress).get(&op).copied());
        api::Image {
            name: row.name,
            status: row.status,
            message: row.message,
            engine: row.engine,
            engine_version: row.engine_version,
            source: row.source,
            logical_bytes: row.logical_bytes,
            stored_bytes: row.stored_bytes,
            file_count: row.file_count,
            clone_count,
            team: row.team,
            created_by: row.created_by,
            created_at: row.created_at,
            location: row.location,
            agent: row.agent,
            operation: if row.status == ImageStatus::Creating || row.status == ImageStatus::Deleting {
                row.operation
            } else {
                None
            },
            progress: if row.status == ImageStatus::Creating { progress } else { None },
            mask: row.mask.as_deref().and_then(|j| serde_json::from_str(j).ok()).unwrap_or_default(),
            scripts: row.scripts.as_deref().and_then(|j| serde_json::from_str(j).ok()).unwrap_or_default(),
            report: row.report.as_deref().and_then(|j| serde_json::from_str(j).ok()),
            schedule: row.schedule,
        }
    }

    /// A clone as its caller sees it. `report` is what its agent says of it: `None` when
    /// the agent does not answer (`Err`) or has no such clone (`Ok(None)`).
    fn clone_view(
        &self,
        caller: &Caller,
        row: CloneRow,
        image: Option<&ImageRow>,
        report: Result<Option<&CloneReport>, ()>,
        host: &str,
    ) -> api::Clone {
        let may_use = Self::may_use(caller, &row);
        let report = match report {
            Ok(report) => report,
            Err(()) if !row.status.is_transitional() => {
                let message = format!("agent {} is unreachable; its state is known again once it is back", row.agent);
                return self.clone_view_with(
                    caller,
                    row,
                    image,
                    None,
                    host,
                    (CloneStatus::Unknown, Some(message)),
                    may_use,
                );
            }
            Err(()) => None,
        };
        let (status, message) = if row.status.is_transitional() {
            (row.status, row.message.clone())
        } else {
            match report.map(|r| (r.state, r.message.clone())) {
                Some((CloneState::Running, _)) => (CloneStatus::Ready, None),
                Some((CloneState::Degraded, message)) => (CloneStatus::Degraded, message),
                Some((CloneState::Stopped, _)) => (CloneStatus::Stopped, None),
                Some((CloneState::Failed, message)) => (CloneStatus::Failed, message),
                None => (row.status, row.message.clone()),
            }
        };
        self.clone_view_with(caller, row, image, report, host, (status, message), may_use)
    }

    fn clone_view_with(
        &self,
        _caller: &Caller,
        row: CloneRow,
        image: Option<&ImageRow>,
        report: Option<&CloneReport>,
        host: &str,
        (status, message): (CloneStatus, Option<String>),
        may_use: bool,
    ) -> api::Clone {
        let engine = image.map(|i| i.engine.clone()).unwrap_or_default();
        // The role the clone's URL logs in as: its owner role when the agent made one
        // (--clone-role owner), else the image's superuser.
        let user =
            report.and_then(|r| r.user.clone()).or_else(|| image.and_then(|i| i.superuser.clone())).unwrap_or_default();
        // The password goes only to those who may use the clone.
        let url = may_use
            .then(|| {
                self.engines.iter().find(|e| e.id() == engine).map(|e| e.url(host, row.port, &user, &row.password))
            })
            .flatten();
        api::Clone {
            name: row.name,
            image: row.image,
            status,
            message,
            driver: row.driver,
            engine,
            engine_version: image.and_then(|i| i.engine_version.clone()).unwrap_or_default(),
            agent: row.agent,
            host: host.to_owned(),
            port: row.port,
            user,
            url,
            owner: row.owner,
            team: row.team,
            stored_bytes: report.and_then(|r| r.stored_bytes).unwrap_or(0),
            logical_bytes: image.map_or(0, |i| i.logical_bytes),
            sizes_at: report.and_then(|r| r.sizes_at),
            created_at: row.created_at,
            operation: if row.status.is_transitional() { row.operation } else { None },
            origin: row.origin,
            read_only: row.read_only,
            expires_at: row.expires_at,
            protected: row.protected,
            protected_until: row.protected_until,
            idle_since: report.and_then(|r| r.idle_since),
            idle: api::IdlePolicy { stop_after: row.idle_stop_after, remove_after: row.idle_remove_after },
            template: row.template,
        }
    }

    // ------------------------------------------------------------------ reads

    pub fn images(&self, caller: &Caller) -> Result<Vec<api::Image>> {
        let (rows, clones) = {
            let catalog = self.catalog();
            (catalog.images()?, catalog.clones()?)
        };
        Ok(rows
            .into_iter()
            .filter(|row| caller.sees(&row.team))
            .map(|row| {
                let count = clones.iter().filter(|c| c.image == row.name).count() as u64;
                self.image_view(row, count)
            })
            .collect())
    }

    pub fn image(&self, caller: &Caller, name: &Name) -> Result<api::Image> {
        let row = self.visible_image(caller, name)?;
        let count = self.catalog().clones_of(name)?.len() as u64;
        Ok(self.image_view(row, count))
    }

    pub fn clones(&self, caller: &Caller) -> Result<Vec<api::Clone>> {
        let (rows, images) = {
            let catalog = self.catalog();
            (catalog.clones()?, catalog.images()?)
        };
        let rows: Vec<CloneRow> = rows.into_iter().filter(|row| caller.sees(&row.team)).collect();
        // Each agent is asked (or its last report read) once.
        let mut reports: HashMap<Name, Option<HashMap<Name, CloneReport>>> = HashMap::new();
        let mut hosts: HashMap<Name, String> = HashMap::new();
        for row in &rows {
            if !reports.contains_key(&row.agent) {
                reports.insert(row.agent.clone(), self.fleet.reports(&row.agent));
                hosts.insert(row.agent.clone(), self.host_of(&row.agent));
            }
        }
        Ok(rows
            .into_iter()
            .map(|row| {
                let image = images.iter().find(|i| i.name == row.image);
                let report = match reports.get(&row.agent) {
                    Some(Some(of_agent)) => Ok(of_agent.get(&row.name)),
                    _ => Err(()),
                };
                let host = hosts.get(&row.agent).cloned().unwrap_or_default();
                self.clone_view(caller, row, image, report, &host)
            })
            .collect())
    }

    pub fn clone_named(&self, caller: &Caller, name: &Name) -> Result<api::Clone> {
        let row = self.visible_clone(caller, name)?;
        let image = self.catalog().image(&row.image).ok();
        let report = if self.fleet.is_online(&row.agent) {
            match self.fleet.agent(&row.agent).clone_report(name) {
                Ok(report) => {
                    self.fleet.note(&row.agent, name, report.clone());
                    Ok(report)
                }
                Err(_) => Err(()),
            }
        } else {
            Err(())
        };
        let host = self.host_of(&row.agent);
        Ok(self.clone_view(caller, row, image.as_ref(), report.as_ref().map(Option::as_ref).map_err(|_| ()), &host))
    }

    /// The address clients reach an agent's clones at: set by an administrator, or as the
    /// agent reports it (last reported, while it is unreachable).
    pub(crate) fn host_of(&self, agent: &Name) -> String {
        let row = self.catalog().agent(agent).ok();
        if let Some(host) = row.as_ref().and_then(|r| r.host.clone()) {
            return host;
        }
        if let Some(info) = self.fleet.info(agent) {
            return info.host;
        }
        row.and_then(|r| r.info)
            .and_then(|info| serde_json::from_str::<AgentInfo>(&info).ok())
            .map(|info| info.host)
            .unwrap_or_else(|| agent.to_string())
    }

    pub fn operations(&self, caller: &Caller) -> Result<Vec<Operation>> {
        let rows = self.catalog().operations(200)?;
        Ok(rows.into_iter().filter(|r| caller.sees(&r.team)).map(|r| self.operation_view(r)).collect())
    }

    pub fn operation(&self, caller: &Caller, id: OperationId) -> Result<Operation> {
        match self.catalog().operation(id) {
            Ok(row) if caller.sees(&row.team) => Ok(self.operation_view(row)),
            Ok(_) | Err(CatalogError::NotFound { .. }) => {
                Err(ServerError::NotFound(format!("no operation named {id}")))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Asks a running operation to stop. An image's creation stops (its copy is ended and it
    /// fails, "cancelled by …"); other operations end by themselves within seconds and are
    /// refused. An operation that has ended is answered as it is.
    pub fn cancel_operation(&self, caller: &Caller, id: OperationId) -> Result<Operation> {
        caller.require(Role::CloneUser, "cancel operations")?;
        let op = self.operation(caller, id)?;
        if op.state.is_finished() {
            return Ok(op);
        }
        if op.kind != OperationKind::ImageCreate {
            return Err(ServerError::Conflict(format!(
                "operation {id} ({}) cannot be cancelled: only an image's creation can; this one ends by itself",
                op.kind
            )));
        }
        caller.require(Role::ImageCreator, "cancel an image's creation")?;
        let image = self.catalog().image(&op.target.name)?;
        let Some(maker) = image.agent.clone() else {
            return Err(ServerError::Internal(format!("image {} has no agent making it", image.name)));
        };
        let place = crate::agents::place_of(&self.catalog().location(&image.location)?);
        lock(&self.cancelled).insert(id, caller.user.clone());
        match self.fleet.require(&maker)?.cancel_image_job(&image.name, &place) {
            Ok(_) => {}
            Err(e) => {
                lock(&self.cancelled).remove(&id);
                return Err(e.into());
            }
        }
        // It fails in a moment; answered as it is then.
        self.wait_briefly(id, Duration::from_secs(5))
    }

    /// An operation as it is now, for the server's own use (no caller to check).
    fn operation_now(&self, id: OperationId) -> Result<Operation> {
        let row = self.catalog().operation(id)?;
        Ok(self.operation_view(row))
    }

    // ------------------------------------------------------------------ images

    /// Starts making an image. The source is checked now, so that a wrong one is refused
    /// with a 4xx rather than becoming a failed image.
    pub fn create_image(self: &Arc<Self>, caller: &Caller, request: CreateImage) -> Result<Operation> {
        self.create_image_of(caller, request, None)
    }

    /// [`Server::create_image`], for a run of `schedule` when one is given.
    pub(crate) fn create_image_of(
        self: &Arc<Self>,
        caller: &Caller,
        request: CreateImage,
        schedule: Option<Name>,
    ) -> Result<Operation> {
        caller.require(Role::ImageCreator, "make images")?;
        let team = self.team_for(caller, request.team.as_ref())?;
        let name = request.name.clone();
        if self.catalog().image(&name).is_ok() {
            return Err(ServerError::Conflict(format!("image {name} already exists")));
        }
        check_source_options(&request)?;
        if let Some(url) = &request.from_url {
            // Checked here too, so that a URL that is not one is refused before any agent.
            SourceUrl::parse(url).map_err(ServerError::BadRequest)?;
        }
        check_transform(&request.mask, &request.scripts)?;
        let transform = agent::ImageTransform { scripts: request.scripts, mask: request.mask };
        let mask_json = (!transform.mask.is_empty()).then(|| to_json(&transform.mask)).transpose()?;
        let names: Vec<&String> = transform.scripts.iter().map(|s| &s.name).collect();
        let scripts_json = (!names.is_empty()).then(|| to_json(&names)).transpose()?;
        let location = self.image_location(request.location.as_ref())?;
        let place = crate::agents::place_of(&location);
        let maker = self.image_maker(&location.name, request.host.as_ref(), request.from_url.is_none())?;
        let agent = self.fleet.require(&maker)?;
        let target = match (&request.target_time, &request.target_lsn) {
            (Some(time), _) => agent::RecoveryTarget::Time(time.clone()),
            (None, Some(lsn)) => agent::RecoveryTarget::Position(lsn.clone()),
            (None, None) => agent::RecoveryTarget::Latest,
        };
        let roots = || -> Result<Vec<String>> { Ok(self.catalog().sources()?.into_iter().map(|s| s.path).collect()) };
        let (source, facts) = match (request.from_dir, request.from_url, request.from_dump, request.from_repo) {
            (Some(dir), None, None, None) => match request.archive {
                None => {
                    let roots = roots()?;
                    let facts = agent.check_source_dir(&dir, request.snapshot, &roots, &place)?;
                    (ImageSource::Dir { path: facts.shown.clone(), snapshot: request.snapshot, roots }, facts)
                }
                Some(archive) => {
                    let source = ImageSource::Archive { path: dir, archive, target, roots: roots()? };
                    (source.clone(), agent.check_source(&source, &place)?)
                }
            },
            (None, Some(url), None, None) => {
                let facts = agent.check_source_url(&url)?;
                (ImageSource::Url { url }, facts)
            }
            (None, None, Some(dump), None) => {
                let source = ImageSource::Dump { path: dump, roots: roots()? };
                (source.clone(), agent.check_source(&source, &place)?)
            }
            (None, None, None, Some(repo)) => {
                let source = ImageSource::Repo { path: repo, stanza: request.stanza, target, roots: roots()? };
                (source.clone(), agent.check_source(&source, &place)?)
            }
            _ => unreachable!("exactly one source was checked above"),
        };
        let id = self.catalog().transaction(|c| {
            let id = c.insert_operation(OperationKind::ImageCreate, &name, &team, Some("copying"))?;
            c.insert_image(&ImageRow {
                name: name.clone(),
                status: ImageStatus::Creating,
                message: Some("copying".into()),
                engine: facts.engine.clone(),
                engine_version: facts.version.clone(),
                superuser: None,
                source: facts.shown.clone(),
                logical_bytes: 0,
                stored_bytes: 0,
                file_count: 0,
                team: team.clone(),
                created_by: Some(caller.user.clone()),
                created_at: Timestamp::now(),
                operation: Some(id),
                location: location.name.clone(),
                agent: Some(maker.clone()),
                mask: mask_json.clone(),
                scripts: scripts_json.clone(),
                report: None,
                schedule: schedule.clone(),
            })?;
            Ok(id)
        })?;
        lock(&self.progress).insert(id, Progress::default());
        let target = name.clone();
        self.spawn(id, OperationKind::ImageCreate, &target, move |server| {
            let progress = |done, total| {
                lock(&server.progress).insert(id, Progress { done_bytes: done, total_bytes: total });
            };
            let step = |message: &str| {
                let catalog = server.catalog();
                if let Err(e) = catalog.set_operation_message(id, message).and_then(|()| {
                    let mut row = catalog.image(&name)?;
                    row.message = Some(message.to_owned());
                    catalog.update_image(&row)
                }) {
                    tracing::warn!("recording the step: {e}");
                }
            };
            let made = agent.make_image(&name, &place, &source, &transform, &progress, &step);
            if matches!(&made, Err(e) if server.left_for_recovery(e)) {
                return Err(LEFT_RUNNING.into());
            }
            let mut row = server.catalog().image(&name).map_err(|e| e.to_string())?;
            row.operation = None;
            let result = match made {
                Ok(made) => {
                    row.status = ImageStatus::Ready;
                    row.message = None;
                    row.engine = made.engine;
                    row.engine_version = Some(made.version);
                    row.superuser = Some(made.superuser);
                    row.logical_bytes = made.logical_bytes;
                    row.stored_bytes = made.stored_bytes;
                    row.file_count = made.file_count;
                    row.report = made.report.as_ref().and_then(|r| serde_json::to_string(r).ok());
                    server.catalog().update_image(&row).map_err(|e| e.to_string())
                }
                Err(e) => {
                    let message = match lock(&server.cancelled).remove(&id) {
                        Some(who) => format!("cancelled by {who}"),
                        None => e.message,
                    };
                    row.status = ImageStatus::Failed;
                    row.message = Some(message.clone());
                    server.catalog().update_image(&row).map_err(|e| e.to_string())?;
                    Err(message)
                }
            };
            lock(&server.cancelled).remove(&id);
            let (kind, detail) = match &result {
                Ok(()) => ("image.ready", format!("{} bytes, {} files", row.logical_bytes, row.file_count)),
                Err(e) => ("image.failed", e.clone()),
            };
            server.emit_event(Event { kind, subject: "image", name: &name, team: Some(&row.team), detail });
            result
        });
        self.operation_now(id)
    }

    /// Removes an image; refused while it has clones or is being made.
    pub fn delete_image(self: &Arc<Self>, caller: &Caller, name: &Name) -> Result<Operation> {
        let image = self.visible_image(caller, name)?;
        caller.require(Role::ImageCreator, "remove images")?;
        // Its files are removed by an agent that reaches its location: one must answer.
        self.image_remover(&image)?;
        let id = self.catalog().transaction(|c| {
            let mut row = c.image(name)?;
            let clones = c.clones_of(name)?;
            if !clones.is_empty() {
                let names: Vec<&str> = clones.iter().map(Name::as_str).collect();
                return Err(CatalogError::Refused(format!(
                    "image {name} has clones ({}); remove them first with `thinclone clone rm`",
                    names.join(", ")
                )));
            }
            if matches!(row.status, ImageStatus::Creating | ImageStatus::Deleting) {
                return Err(CatalogError::Refused(format!("image {name} is {}; wait for it to end", row.status)));
            }
            let id = c.insert_operation(OperationKind::ImageDelete, name, &image.team, None)?;
            row.status = ImageStatus::Deleting;
            row.operation = Some(id);
            c.update_image(&row)?;
            Ok(id)
        })?;
        let name = name.clone();
        self.spawn(id, OperationKind::ImageDelete, &name.clone(), move |server| {
            // The catalog's lock is let go before the agent is asked.
            let row = server.catalog().image(&name);
            let removed = match row {
                Ok(row) => server.remove_image_files(&row),
                Err(e) => Err(AgentError { kind: ErrorKind::Internal, message: e.to_string() }),
            };
            match removed {
                Ok(()) => server.catalog().delete_image(&name).map_err(|e| e.to_string()),
                Err(e) => {
                    let catalog = server.catalog();
                    if let Ok(mut row) = catalog.image(&name) {
                        row.status = ImageStatus::Failed;
                        row.message = Some(format!("removing it failed: {e}; try `image rm` again"));
                        row.operation = None;
                        if let Err(e) = catalog.update_image(&row) {
                            tracing::error!("recording the failure: {e}");
                        }
                    }
                    Err(e.message)
                }
            }
        });
        self.operation_now(id)
    }

    // ------------------------------------------------------------------ clones

    /// Starts making a clone: its name, image, agent, driver and port are settled now.
    pub fn create_clone(self: &Arc<Self>, caller: &Caller, request: CreateClone) -> Result<Operation> {
        caller.require(Role::CloneUser, "make clones")?;
        let visible = self.visible_image(caller, &request.image)?;
        if self.catalog().clone_named(&request.name).is_ok() {
            return Err(ServerError::Conflict(format!("clone {} already exists", request.name)));
        }
        let (version, _) = Self::image_facts(&visible)?;
        let (host, info) = self.place_clone(&visible, &version, request.host.as_ref(), request.driver)?;
        let driver = request.driver.unwrap_or(info.default_driver);
        let expires_at = expiry(request.expires_in, request.expires_at)?;
        let scripts = match &request.template {
            Some(template) => self.template_scripts(template)?,
            None => Vec::new(),
        };
        let new = NewClone {
            name: request.name,
            host,
            driver,
            origin: None,
            read_only: false,
            expires_at,
            scripts,
            template: request.template,
        };
        self.make_clone(caller, &visible, new)
    }

    /// Makes a new clone from a checkpoint of `name` (a branch, or with `read_only` a
    /// snapshot view), on the same agent with the same driver; without a checkpoint, one of
    /// the clone's state now is made first.
    pub fn create_branch(self: &Arc<Self>, caller: &Caller, name: &Name, request: CreateBranch) -> Result<Operation> {
        caller.require(Role::CloneUser, "make clones")?;
        let source = self.visible_clone(caller, name)?;
        // Its data may hold what only its owner was meant to see.
        Self::require_use(caller, &source, "branch")?;
        if self.catalog().clone_named(&request.name).is_ok() {
            return Err(ServerError::Conflict(format!("clone {} already exists", request.name)));
        }
        let image = self.catalog().image(&source.image)?;
        let agent = self.fleet.require(&source.agent)?;
        let existing = agent.checkpoint_names(name)?;
        let origin = match request.checkpoint {
            Some(checkpoint) if existing.contains(&checkpoint) => {
                agent::CloneOrigin { clone: name.clone(), checkpoint, make_checkpoint: false }
            }
            Some(checkpoint) => {
                return Err(ServerError::NotFound(format!(
                    "clone {name} has no checkpoint named {checkpoint}; `clone checkpoints {name}` lists them"
                )))
            }
            None => agent::CloneOrigin {
                clone: name.clone(),
                checkpoint: next_checkpoint_name(&existing),
                make_checkpoint: true,
            },
        };
        let new = NewClone {
            name: request.name,
            host: source.agent.clone(),
            driver: source.driver,
            origin: Some(origin),
            read_only: request.read_only,
            expires_at: expiry(request.expires_in, request.expires_at)?,
            scripts: Vec::new(),
            template: None,
        };
        self.make_clone(caller, &image, new)
    }

    /// The engine version and superuser of a ready image.
    fn image_facts(image: &ImageRow) -> Result<(String, String)> {
        if image.status != ImageStatus::Ready {
            return Err(ServerError::Conflict(format!("image {} is {}, not ready", image.name, image.status)));
        }
        match (&image.engine_version, &image.superuser) {
            (Some(v), Some(s)) => Ok((v.clone(), s.clone())),
            _ => Err(ServerError::Internal(format!("image {} has no engine version or superuser", image.name))),
        }
    }

    /// Records a new clone and starts the operation that makes it.
    fn make_clone(self: &Arc<Self>, caller: &Caller, image: &ImageRow, new: NewClone) -> Result<Operation> {
        let NewClone { name, host, driver, origin, read_only, expires_at, scripts, template } = new;
        let (version, superuser) = Self::image_facts(image)?;
        let visible = image;
        let agent = self.fleet.require(&host)?;
        let place = crate::agents::place_of(&self.catalog().location(&image.location)?);
        let password = generate_password()?;
        // A port free in the catalog and on the agent's host; another clone made at the same
        // moment may take it first, and then the next is tried.
        let mut tried: Vec<u16> = Vec::new();
        let id = loop {
            let used = self.catalog().used_ports(&host)?;
            let mut port = None;
            for p in self.config.ports.0..=self.config.ports.1 {
                if used.contains(&p) || tried.contains(&p) {
                    continue;
                }
                tried.push(p);
                if agent.port_is_free(p)? {
                    port = Some(p);
                    break;
                }
            }
            let port = port.ok_or_else(|| {
                ServerError::Conflict(format!(
                    "no free port left on agent {host} in the clone port range {}-{}; remove a clone or widen --ports",
                    self.config.ports.0, self.config.ports.1
                ))
            })?;
            let inserted = self.catalog().transaction(|c| {
                let id = c.insert_operation(OperationKind::CloneCreate, &name, &visible.team, None)?;
                c.insert_clone(&CloneRow {
                    name: name.clone(),
                    image: image.name.clone(),
                    status: CloneStatus::Creating,
                    message: None,
                    driver,
                    port,
                    password: password.clone(),
                    owner: caller.user.clone(),
                    team: visible.team.clone(),
                    created_at: Timestamp::now(),
                    operation: Some(id),
                    agent: host.clone(),
                    origin: origin.as_ref().map(ToString::to_string),
                    read_only,
                    expires_at,
                    expiry_warned: false,
                    protected: false,
                    protected_until: None,
                    idle_stop_after: None,
                    idle_remove_after: None,
                    template: template.clone(),
                })?;
                Ok((id, port))
            });
            match inserted {
                Ok(done) => break done,
                Err(CatalogError::PortTaken(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        };
        let (id, port) = id;
        let team = visible.team.clone();
        let spec = CloneSpec {
            name: name.clone(),
            image: image.name.clone(),
            place,
            engine: image.engine.clone(),
            version,
            superuser,
            driver,
            port,
            password,
            origin,
            read_only,
            settings: if scripts.is_empty() { Vec::new() } else { template_settings(&name, &caller.user, &image.name) },
            scripts,
        };
        self.spawn(id, OperationKind::CloneCreate, &name, move |server| {
            let made = agent.create_clone(&spec);
            if matches!(&made, Err(e) if server.left_for_recovery(e)) {
                return Err(LEFT_RUNNING.into());
            }
            match made {
                Ok(report) => {
                    server.fleet.note(&host, &spec.name, Some(report));
                    server
                        .catalog()
                        .set_clone_status(&spec.name, CloneStatus::Ready, None, None)
                        .map_err(|e| e.to_string())?;
                    let detail = match &spec.origin {
                        Some(origin) => format!("from {origin} on agent {host}, port {}", spec.port),
                        None => format!("of image {} on agent {host}, port {}", spec.image, spec.port),
                    };
                    server.emit_event(Event {
                        kind: "clone.created",
                        subject: "clone",
                        name: &spec.name,
                        team: Some(&team),
                        detail,
                    });
                    Ok(())
                }
                Err(e) => {
                    // The agent left nothing of it; neither does the catalog. (An agent that
                    // dropped meanwhile removes what it made when it is back: reconcile.)
                    if let Err(d) = server.catalog().delete_clone(&spec.name) {
                        tracing::error!("removing the clone's record: {d}");
                    }
                    Err(e.message)
                }
            }
        });
        self.operation_now(id)
    }

    /// Marks a clone as under an operation, refusing when another one is under way.
    fn begin_clone_op(&self, name: &Name, kind: OperationKind, status: CloneStatus) -> Result<OperationId> {
        Ok(self.catalog().transaction(|c| {
            let row = c.clone_named(name)?;
            if row.status.is_transitional() {
                return Err(CatalogError::Refused(format!(
                    "clone {name} is {}{}; wait for it to end",
                    row.status,
                    row.operation.map(|o| format!(" (operation {o})")).unwrap_or_default()
                )));
            }
            let id = c.insert_operation(kind, name, &row.team, None)?;
            c.set_clone_status(name, status, None, Some(id))?;
            Ok(id)
        })?)
    }

    /// Refuses a change to clone `name` that would drop layers a cowfs branch reads: those of
    /// its checkpoints for which `drops` is true. (Its agent checks too.)
    fn refuse_if_branched(&self, name: &Name, what: &str, drops: impl Fn(&str) -> bool) -> Result<()> {
        let branches: Vec<String> = self
            .catalog()
            .clones()?
            .into_iter()
            .filter(|c| c.driver == api::Driver::Cowfs)
            .filter_map(|c| {
                let origin = c.origin?;
                let (clone, checkpoint) = origin.split_once('@')?;
                (clone == name.as_str() && drops(checkpoint)).then(|| format!("{} (from {origin})", c.name))
            })
            .collect();
        if branches.is_empty() {
            return Ok(());
        }
        Err(ServerError::Conflict(format!(
            "cannot {what} clone {name}: the cowfs clones {} are built on its checkpoints; remove or reset them first",
            branches.join(", ")
        )))
    }

    /// How a clone is now, as its agent says; a clone the agent lacks is `NotFound`.
    fn report_now(&self, host: &Name, name: &Name) -> agent::Result<CloneReport> {
        self.fleet.agent(host).clone_report(name)?.ok_or_else(|| AgentError {
            kind: ErrorKind::NotFound,
            message: format!("its agent no longer has clone {name}"),
        })
    }

    /// Records a clone's state after an operation, from what its agent reports.
    fn settle_clone(&self, host: &Name, name: &Name, result: &agent::Result<CloneReport>) -> Result<(), String> {
        let report = match result {
            Ok(report) => Ok(Some(report.clone())),
            Err(e) if e.kind == ErrorKind::Unavailable => Err(e.message.clone()),
            Err(_) => self.fleet.agent(host).clone_report(name).map_err(|e| e.message),
        };
        let before = self.catalog().clone_named(name).ok();
        if let Ok(report) = &report {
            self.fleet.note(host, name, report.clone());
            // A refresh that its agent finished after a crash: the catalog follows.
            if let Some(image) = report.as_ref().and_then(|r| r.image.as_ref()) {
                let moved = before.as_ref().is_some_and(|row| &row.image != image);
                if moved && self.catalog().image(image).is_ok() {
                    if let Err(e) = self.catalog().set_clone_image(name, image) {
                        tracing::error!(clone = %name, "recording the clone's image: {e}");
                    }
                }
            }
        }
        let (status, message) = match report {
            Ok(Some(CloneReport { state: CloneState::Running, .. })) => (CloneStatus::Ready, None),
            Ok(Some(CloneReport { state: CloneState::Degraded, message, .. })) => (CloneStatus::Degraded, message),
            Ok(Some(CloneReport { state: CloneState::Stopped, .. })) => (CloneStatus::Stopped, None),
            Ok(Some(CloneReport { state: CloneState::Failed, message, .. })) => (CloneStatus::Failed, message),
            Ok(None) => (CloneStatus::Failed, Some("its agent no longer has it; remove it".to_owned())),
            Err(why) => (
                CloneStatus::Unknown,
                Some(format!("its agent stopped answering during the operation ({why}); its state is known again once it is back")),
            ),
        };
        let message = match result {
            Err(e) if message.is_none() && status == CloneStatus::Failed => Some(e.message.clone()),
            _ => message,
        };
        self.catalog().set_clone_status(name, status, message.as_deref(), None).map_err(|e| e.to_string())?;
        if status == CloneStatus::Degraded {
            if let Some(row) = &before {
                self.emit_event(Event {
                    kind: "clone.degraded",
                    subject: "clone",
                    name,
                    team: Some(&row.team),
                    detail: message.clone().unwrap_or_default(),
                });
            }
        }
        result.as_ref().map(drop).map_err(|e| e.message.clone())
    }

    pub fn clone_action(self: &Arc<Self>, caller: &Caller, name: &Name, action: CloneAction) -> Result<Operation> {
        let clone = self.visible_clone(caller, name)?;
        let verb = match action {
            CloneAction::Start => "start",
            CloneAction::Stop => "stop",
            CloneAction::Reset => "reset",
        };
        Self::require_use(caller, &clone, verb)?;
        if action == CloneAction::Reset {
            self.refuse_if_branched(name, "reset", |_| true)?;
        }
        // An agent that does not answer: 503, and nothing recorded.
        let agent = self.fleet.require(&clone.agent)?;
        let id = self.begin_clone_op(name, action.kind(), action.status())?;
        let target = name.clone();
        let host = clone.agent.clone();
        let team = clone.team.clone();
        self.spawn(id, action.kind(), name, move |server| {
            let result = match action {
                CloneAction::Start => agent.start_clone(&target),
                CloneAction::Stop => agent.stop_clone(&target),
                CloneAction::Reset => agent.reset_clone(&target),
            };
            if matches!(&result, Err(e) if server.left_for_recovery(e)) {
                return Err(LEFT_RUNNING.into());
            }
            if action == CloneAction::Reset && result.is_ok() {
                // Back to its image: no longer a branch of another clone.
                server.catalog().clear_clone_origin(&target).map_err(|e| e.to_string())?;
                server.emit_event(Event {
                    kind: "clone.reset",
                    subject: "clone",
                    name: &target,
                    team: Some(&team),
                    detail: "back to its image".into(),
                });
            }
            server.settle_clone(&host, &target, &result)
        });
        self.operation_now(id)
    }

    /// Remakes a clone on another image, keeping its name, port and password: the one asked
    /// for, or the newest ready image of the schedule that made its image.
    pub fn refresh_clone(self: &Arc<Self>, caller: &Caller, name: &Name, request: RefreshClone) -> Result<Operation> {
        let clone = self.visible_clone(caller, name)?;
        Self::require_use(caller, &clone, "refresh")?;
        let current = self.catalog().image(&clone.image)?;
        let target = match &request.image {
            Some(image) => self.visible_image(caller, image)?,
            None => {
                let schedule = current.schedule.clone().ok_or_else(|| {
                    ServerError::BadRequest(format!(
                        "clone {name}'s image {} was not made by a schedule; name the image to move to (--image)",
                        clone.image
                    ))
                })?;
                let newest =
                    self.catalog().images_of_schedule(&schedule)?.into_iter().find(|i| i.status == ImageStatus::Ready);
                newest.ok_or_else(|| {
                    ServerError::Conflict(format!(
                        "schedule {schedule} has no ready image; `thinclone schedule run {schedule}` makes one"
                    ))
                })?
            }
        };
        if target.name == clone.image {
            return Err(ServerError::Conflict(format!(
                "clone {name} is made from image {} already{}",
                target.name,
                if request.image.is_none() { ", the newest of its schedule" } else { "" }
            )));
        }
        if clone.read_only {
            return Err(ServerError::Conflict(format!(
                "clone {name} is a snapshot view of a clone; make a new one instead"
            )));
        }
        if target.engine != current.engine {
            return Err(ServerError::BadRequest(format!(
                "image {} is of engine {}, clone {name}'s of {}",
                target.name, target.engine, current.engine
            )));
        }
        let (version, superuser) = Self::image_facts(&target)?;
        // The clone's agent must reach the image and run its version, with the clone's driver.
        self.place_clone(&target, &version, Some(&clone.agent), Some(clone.driver))?;
        self.refuse_if_branched(name, "refresh", |_| true)?;
        let agent = self.fleet.require(&clone.agent)?;
        let place = crate::agents::place_of(&self.catalog().location(&target.location)?);
        // The template it was made with runs again on the new image; one removed since is
        // left out, and the operation's event says so.
        let (scripts, dropped) = match &clone.template {
            Some(t) => match self.template_scripts(t) {
                Ok(scripts) => (scripts, None),
                Err(ServerError::NotFound(_)) => (Vec::new(), Some(t.clone())),
                Err(e) => return Err(e),
            },
            None => (Vec::new(), None),
        };
        let settings =
            if scripts.is_empty() { Vec::new() } else { template_settings(name, &clone.owner, &target.name) };
        let to = api::agent::RefreshTarget {
            image: target.name.clone(),
            place,
            engine: target.engine.clone(),
            version,
            superuser,
            scripts,
            settings,
        };
        let id = self.begin_clone_op(name, OperationKind::CloneRefresh, CloneStatus::Resetting)?;
        let (host, team, from) = (clone.agent.clone(), clone.team.clone(), clone.image.clone());
        let target_name = name.clone();
        self.spawn(id, OperationKind::CloneRefresh, name, move |server| {
            let result = agent.refresh_clone(&target_name, &to);
            if matches!(&result, Err(e) if server.left_for_recovery(e)) {
                return Err(LEFT_RUNNING.into());
            }
            if result.is_ok() {
                server.catalog().set_clone_image(&target_name, &to.image).map_err(|e| e.to_string())?;
                server.emit_event(Event {
                    kind: "clone.refreshed",
                    subject: "clone",
                    name: &target_name,
                    team: Some(&team),
                    detail: match &dropped {
                        None => format!("from image {from} to image {}", to.image),
                        Some(t) => format!(
                            "from image {from} to image {}; template {t}, removed since, was not run again",
                            to.image
                        ),
                    },
                });
            }
            server.settle_clone(&host, &target_name, &result)
        });
        self.operation_now(id)
    }

    /// A clone's checkpoints, oldest first, as its agent keeps them.
    pub fn checkpoints(&self, caller: &Caller, name: &Name) -> Result<Vec<Checkpoint>> {
        let clone = self.visible_clone(caller, name)?;
        Ok(self.fleet.require(&clone.agent)?.checkpoints(name)?)
    }

    /// Records a clone's state now; the checkpoint is named `body.name`, or the next free
    /// `cpN`.
    pub fn checkpoint_clone(
        self: &Arc<Self>,
        caller: &Caller,
        name: &Name,
        body: CreateCheckpoint,
    ) -> Result<Operation> {
        let clone = self.visible_clone(caller, name)?;
        Self::require_use(caller, &clone, "checkpoint")?;
        if body.message.as_ref().is_some_and(|m| m.chars().count() > MAX_CHECKPOINT_MESSAGE) {
            return Err(ServerError::BadRequest(format!(
                "a checkpoint's message is at most {MAX_CHECKPOINT_MESSAGE} characters"
            )));
        }
        let agent = self.fleet.require(&clone.agent)?;
        let existing = agent.checkpoint_names(name)?;
        let checkpoint = match body.name {
            Some(wanted) if existing.contains(&wanted) => {
                return Err(ServerError::Conflict(format!(
                    "clone {name} already has a checkpoint named {wanted}; choose another name"
                )))
            }
            Some(wanted) => wanted,
            None => next_checkpoint_name(&existing),
        };
        let id = self.begin_clone_op(name, OperationKind::CloneCheckpoint, CloneStatus::Checkpointing)?;
        let target = name.clone();
        let message = body.message;
        let event = ("checkpoint.made", format!("checkpoint {checkpoint}"));
        self.spawn_on_clone(id, OperationKind::CloneCheckpoint, &clone, event, move || {
            agent.checkpoint_clone(&target, &checkpoint, message.as_deref())
        });
        self.operation_now(id)
    }

    /// Runs an agent's `work` on clone `clone` as operation `id`; when it succeeds, announces
    /// the event `(kind, detail)`; then records the clone's state as its agent reports it.
    fn spawn_on_clone(
        self: &Arc<Self>,
        id: OperationId,
        kind: OperationKind,
        clone: &CloneRow,
        (event, detail): (&'static str, String),
        work: impl FnOnce() -> agent::Result<CloneReport> + Send + 'static,
    ) {
        let target = clone.name.clone();
        let host = clone.agent.clone();
        let team = clone.team.clone();
        self.spawn(id, kind, &clone.name, move |server| {
            let result = work();
            if matches!(&result, Err(e) if server.left_for_recovery(e)) {
                return Err(LEFT_RUNNING.into());
            }
            if result.is_ok() {
                server.emit_event(Event { kind: event, subject: "clone", name: &target, team: Some(&team), detail });
            }
            server.settle_clone(&host, &target, &result)
        });
    }

    /// Returns a clone to a checkpoint (the latest when `to` is `None`).
    pub fn revert_clone(self: &Arc<Self>, caller: &Caller, name: &Name, to: Option<Name>) -> Result<Operation> {
        let clone = self.visible_clone(caller, name)?;
        Self::require_use(caller, &clone, "revert")?;
        let agent = self.fleet.require(&clone.agent)?;
        // Asked first, so that a bad name is a 404 and not a failed operation.
        let existing = agent.checkpoint_names(name)?;
        match &to {
            Some(to) if !existing.contains(to) => {
                return Err(ServerError::NotFound(format!(
                    "clone {name} has no checkpoint named {to}; `clone checkpoints {name}` lists them"
                )))
            }
            None if existing.is_empty() => {
                return Err(ServerError::Conflict(format!(
                    "clone {name} has no checkpoint to go back to; make one with `clone checkpoint {name}`"
                )))
            }
            _ => {}
        }
        let target_at = match &to {
            Some(to) => existing.iter().position(|c| c == to).unwrap_or(0),
            None => existing.len().saturating_sub(1),
        };
        let later: Vec<&str> = existing[target_at + 1..].iter().map(Name::as_str).collect();
        let goal = existing.get(target_at).map(Name::to_string).unwrap_or_default();
        self.refuse_if_branched(name, &format!("revert to {goal}"), |cp| later.contains(&cp))?;
        let id = self.begin_clone_op(name, OperationKind::CloneRevert, CloneStatus::Reverting)?;
        let target = name.clone();
        let event = ("clone.reverted", format!("back to checkpoint {goal}"));
        self.spawn_on_clone(id, OperationKind::CloneRevert, &clone, event, move || {
            agent.revert_clone(&target, to.as_ref())
        });
        self.operation_now(id)
    }

    /// Removes one of a clone's checkpoints.
    pub fn delete_checkpoint(self: &Arc<Self>, caller: &Caller, name: &Name, checkpoint: &Name) -> Result<Operation> {
        let clone = self.visible_clone(caller, name)?;
        Self::require_use(caller, &clone, "remove checkpoints of")?;
        let agent = self.fleet.require(&clone.agent)?;
        if !agent.checkpoint_names(name)?.contains(checkpoint) {
            return Err(ServerError::NotFound(format!(
                "clone {name} has no checkpoint named {checkpoint}; `clone checkpoints {name}` lists them"
            )));
        }
        let status = self.catalog().clone_named(name).map_err(ServerError::from)?.status;
        // The clone runs on meanwhile: its status stays, only the operation is recorded.
        let id = self.begin_clone_op(name, OperationKind::CheckpointDelete, status)?;
        let target = name.clone();
        let checkpoint = checkpoint.clone();
        let host = clone.agent.clone();
        self.spawn(id, OperationKind::CheckpointDelete, name, move |server| {
            let result = agent.delete_checkpoint(&target, &checkpoint);
            if matches!(&result, Err(e) if server.left_for_recovery(e)) {
                return Err(LEFT_RUNNING.into());
            }
            let report = result.clone().and_then(|()| server.report_now(&host, &target));
            server.settle_clone(&host, &target, &report)?;
            result.map_err(|e| e.message)
        });
        self.operation_now(id)
    }

    pub fn delete_clone(self: &Arc<Self>, caller: &Caller, name: &Name) -> Result<Operation> {
        let clone = self.visible_clone(caller, name)?;
        Self::require_use(caller, &clone, "remove")?;
        self.refuse_if_protected(&clone)?;
        self.refuse_if_branched(name, "remove", |_| true)?;
        let revoked = self.catalog().agent(&clone.agent).is_ok_and(|a| a.revoked_at.is_some());
        if revoked {
            // Nothing is asked of a revoked agent: the record goes, and whatever is left on
            // that host is its operator's to clear.
            let id = self.begin_clone_op(name, OperationKind::CloneDelete, CloneStatus::Deleting)?;
            let target = name.clone();
            let host = clone.agent.clone();
            self.spawn(id, OperationKind::CloneDelete, name, move |server| {
                tracing::warn!(agent = %host, "removing the record of a clone of a revoked agent; its files stay there");
                server.catalog().delete_clone(&target).map_err(|e| e.to_string())
            });
            return self.operation_now(id);
        }
        self.fleet.require(&clone.agent)?;
        let id = self.begin_clone_op(name, OperationKind::CloneDelete, CloneStatus::Deleting)?;
        let target = name.clone();
        let host = clone.agent.clone();
        self.spawn(id, OperationKind::CloneDelete, name, move |server| server.finish_delete(&host, &target));
        self.operation_now(id)
    }

    /// Whether an agent's failure is the server stopping under a call to an agent elsewhere.
    fn left_for_recovery(&self, e: &AgentError) -> bool {
        e.kind == ErrorKind::Unavailable && self.stopping.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn finish_delete(&self, host: &Name, name: &Name) -> Result<(), String> {
        let deleted = self.fleet.agent(host).delete_clone(name);
        if matches!(&deleted, Err(e) if self.left_for_recovery(e)) {
            return Err(LEFT_RUNNING.into());
        }
        match deleted {
            Ok(()) => {
                self.fleet.note(host, name, None);
                let team = self.catalog().clone_named(name).ok().map(|c| c.team);
                self.catalog().delete_clone(name).map_err(|e| e.to_string())?;
                let detail = format!("its storage on agent {host} is gone");
                self.emit_event(Event { kind: "clone.removed", subject: "clone", name, team: team.as_ref(), detail });
                Ok(())
            }
            Err(e) => {
                let message = format!("removing it failed: {e}; try `clone rm` again");
                if let Err(c) = self.catalog().set_clone_status(name, CloneStatus::Failed, Some(&message), None) {
                    tracing::error!("recording the failure: {c}");
                }
                Err(e.message)
            }
        }
    }

    // ---------------------------------------------------------------- recovery

    /// Finishes, after a restart, each operation that was running when the server stopped:
    /// at once where its agent answers (the embedded agent), once it connects otherwise. The
    /// embedded agent's clones that no record asks for are removed.
    fn recover(&self) -> Result<()> {
        let running = self.catalog().running_operations()?;
        for op in running {
            match self.operation_agent(&op) {
                Some(agent) if !self.fleet.is_online(&agent) => {
                    tracing::info!(id = op.id.0, %agent, "an interrupted operation waits for its agent");
                    lock(&self.deferred).push(op);
                }
                _ => self.finish_interrupted(&op)?,
            }
        }
        if let Some(local) = self.fleet.embedded().cloned() {
            self.remove_orphans(&local);
        }
        Ok(())
    }

    /// The agent an operation's target is on.
    pub(crate) fn operation_agent(&self, op: &OperationRow) -> Option<Name> {
        let catalog = self.catalog();
        match op.kind.target_kind() {
            api::TargetKind::Image => catalog.image(&op.target).ok().and_then(|i| i.agent),
            api::TargetKind::Clone => catalog.clone_named(&op.target).ok().map(|c| c.agent),
        }
    }

    /// Finishes an operation a restart interrupted, and records its end.
    pub(crate) fn finish_interrupted(&self, op: &OperationRow) -> Result<()> {
        let span = tracing::info_span!("recovery", id = op.id.0, kind = op.kind.as_str(), target = %op.target);
        let _entered = span.enter();
        let outcome = self.recover_operation(op);
        match &outcome {
            Err(e) => tracing::warn!("interrupted operation ended failed: {e}"),
            Ok(()) => tracing::info!("interrupted operation finished"),
        }
        lock(&self.progress).remove(&op.id);
        self.catalog().finish_operation(op.id, outcome.err().as_deref())?;
        Ok(())
    }

    /// Removes the clones `agent` has that no record asks for: never asked for, or whose
    /// removal was recorded before the agent finished. The catalog is the truth about what
    /// was asked; the agent's disk about what exists.
    pub(crate) fn remove_orphans(&self, agent: &Name) {
        let known: Vec<Name> = match self.catalog().clones() {
            Ok(rows) => rows.into_iter().filter(|c| &c.agent == agent).map(|c| c.name).collect(),
            Err(e) => {
                tracing::error!(%agent, "reading the catalog: {e}");
                return;
            }
        };
        let handle = self.fleet.agent(agent);
        let reports = match handle.clone_reports() {
            Ok(reports) => reports,
            Err(e) => {
                tracing::warn!(%agent, "asking for its clones: {e}");
                return;
            }
        };
        for report in reports {
            if !known.contains(&report.name) {
                tracing::warn!(%agent, clone = %report.name, "removing a clone no record asks for");
                match handle.delete_clone(&report.name) {
                    Ok(()) => self.fleet.note(agent, &report.name, None),
                    Err(e) => tracing::error!(%agent, clone = %report.name, "removing it: {e}"),
                }
            }
        }
    }

    fn recover_operation(&self, op: &OperationRow) -> Result<(), String> {
        let name = &op.target;
        let interrupted = "interrupted by a restart of the server";
        match op.kind {
            OperationKind::ImageCreate => {
                let row = self.catalog().image(name).ok();
                if let Some(mut row) = row.filter(|r| r.status == ImageStatus::Creating) {
                    // The copy may still run on its agent: it is stopped, and what it made goes.
                    if let Err(e) = self.remove_image_files(&row) {
                        tracing::error!("removing the image's files: {e}");
                    }
                    row.status = ImageStatus::Failed;
                    row.message = Some(format!("{interrupted}; remove it and create it again"));
                    row.operation = None;
                    self.catalog().update_image(&row).map_err(|e| e.to_string())?;
                }
                Err(interrupted.into())
            }
            OperationKind::ImageDelete => {
                let Ok(row) = self.catalog().image(name) else { return Ok(()) };
                self.remove_image_files(&row).map_err(|e| e.message)?;
                match self.catalog().delete_image(name) {
                    Ok(()) | Err(CatalogError::NotFound { .. }) => Ok(()),
                    Err(e) => Err(e.to_string()),
                }
            }
            kind => {
                let Ok(row) = self.catalog().clone_named(name) else {
                    return if kind == OperationKind::CloneDelete { Ok(()) } else { Err(interrupted.into()) };
                };
                let host = row.agent.clone();
                let agent = self.fleet.agent(&host);
                match kind {
                    // The agent finished or undid its part: asking it to start the clone waits
                    // for a creation still under way, and finds one it undid gone.
                    OperationKind::CloneCreate => match agent.start_clone(name) {
                        Err(e) if e.kind == ErrorKind::NotFound => {
                            if let Err(e) = self.catalog().delete_clone(name) {
                                tracing::warn!("removing the clone's record: {e}");
                            }
                            Err(interrupted.into())
                        }
                        result => self.settle_clone(&host, name, &result),
                    },
                    OperationKind::CloneStart => self.settle_clone(&host, name, &agent.start_clone(name)),
                    OperationKind::CloneStop => self.settle_clone(&host, name, &agent.stop_clone(name)),
                    OperationKind::CloneReset => self.settle_clone(&host, name, &agent.reset_clone(name)),
                    // The agent finished or undid a checkpoint or a revert itself (its own
                    // recovery): the clone's state is its report, and the operation failed,
                    // for whoever waited on it to look again.
                    OperationKind::CloneCheckpoint | OperationKind::CloneRevert | OperationKind::CheckpointDelete => {
                        self.settle_clone(&host, name, &self.report_now(&host, name))?;
                        Err(format!(
                            "{interrupted}; `thinclone clone checkpoints {name}` shows the checkpoints the clone has"
                        ))
                    }
                    // The agent finished the refresh itself, or undid it; its report says which
                    // image the clone is made from, and the catalog follows.
                    OperationKind::CloneRefresh => {
                        self.settle_clone(&host, name, &self.report_now(&host, name))?;
                        Err(format!("{interrupted}; `thinclone clone show {name}` shows which image it is on"))
                    }
                    OperationKind::CloneDelete => self.finish_delete(&host, name),
                    OperationKind::ImageCreate | OperationKind::ImageDelete => unreachable!("handled above"),
                }
            }
        }
    }

    /// Removes an image's files (and what is left of a copy of it), through an agent that
    /// reaches its location.
    pub(crate) fn remove_image_files(&self, row: &ImageRow) -> agent::Result<()> {
        let unavailable = |m: String| AgentError { kind: ErrorKind::Unavailable, message: m };
        let host = self.image_remover(row).map_err(|e| unavailable(e.to_string()))?;
        let location = self.catalog().location(&row.location).map_err(|e| unavailable(e.to_string()))?;
        let place = crate::agents::place_of(&location);
        self.fleet.agent(&host).remove_image(&row.name, &place)
    }

    /// Waits up to `wait` for an operation to end, and returns it as it is then.
    pub fn wait_briefly(&self, id: OperationId, wait: Duration) -> Result<Operation> {
        sys::wait::until(wait, Duration::from_millis(10), || {
            self.operation_now(id).ok().filter(|op| op.state.is_finished())
        })
        .map_or_else(|| self.operation_now(id), Ok)
    }
}

/// Checks that a request names exactly one source, and only the options that go with it, so
/// that a bad combination is refused with a 400 before any agent is asked.
fn check_source_options(request: &CreateImage) -> Result<()> {
    let bad = |message: &str| Err(ServerError::BadRequest(message.to_owned()));
    let sources = [&request.from_dir, &request.from_url, &request.from_dump, &request.from_repo];
    if sources.iter().filter(|s| s.is_some()).count() != 1 {
        return bad("give exactly one of from_dir, from_url, from_dump and from_repo");
    }
    if request.snapshot && (request.from_dir.is_none() || request.archive.is_some()) {
        return bad(
            "snapshot goes with from_dir only, without archive (a base backup and its archive are recovered anyway)",
        );
    }
    if request.archive.is_some() && request.from_dir.is_none() {
        return bad("archive goes with from_dir (a base backup) only");
    }
    if request.stanza.is_some() && request.from_repo.is_none() {
        return bad("stanza goes with from_repo only");
    }
    if request.target_time.is_some() && request.from_repo.is_none() && request.archive.is_none() {
        return bad("target_time goes with from_repo, or with from_dir and archive");
    }
    if request.target_lsn.is_some() && request.archive.is_none() {
        return bad("target_lsn goes with from_dir and archive only");
    }
    if request.target_time.is_some() && request.target_lsn.is_some() {
        return bad("give target_time or target_lsn, not both");
    }
    for (what, path) in
        [("from_dump", &request.from_dump), ("from_repo", &request.from_repo), ("archive", &request.archive)]
    {
        if let Some(path) = path {
            if !path.starts_with('/') {
                return Err(ServerError::BadRequest(format!("{what} must be an absolute path, not {path}")));
            }
        }
    }
    for (what, value) in
        [("stanza", &request.stanza), ("target_time", &request.target_time), ("target_lsn", &request.target_lsn)]
    {
        if value.as_deref().is_some_and(|v| v.trim().is_empty() || v.len() > 200 || v.chars().any(char::is_control)) {
            return Err(ServerError::BadRequest(format!("{what} must be a short, non-empty line of text")));
        }
    }
    Ok(())
}
