//! Agents and image locations, as the server keeps them: enrollment (one-time tokens, the
//! join that signs an agent's certificate), revocation, what each agent reports (followed
//! through the channel's connections and drops, and polled), the reconciliation when an
//! agent comes back, which agents reach which location (each proves it by reading the
//! marker written when the location was added), and placement: which agent makes an image,
//! which runs a clone, which removes an image's files.

use std::collections::HashMap;
use std::path::{Component, Path};
use std::sync::Arc;
use std::time::Duration;

use agent::{AgentInfo, ErrorKind};
use api::agent::{CreateEnrollment, CreateLocation, Enrollment, JoinRequest, Joined, Location};
use api::{Driver, ImageStatus, Name, Role, Timestamp};

use crate::auth::Caller;
use crate::catalog::{AgentRow, CatalogError, ImageRow, LocationRow};
use crate::fleet::{unreachable, POLL_EVERY};
use crate::hub::Change;
use crate::ops::{Result, Server, ServerError};

/// The name of the agent embedded in `thinclone serve`, and of its image location.
pub const LOCAL: &str = "local";

/// The free disk below which an agent is given a new clone only when no agent has more: a
/// clone needs little at first, but grows as it is written.
const MIN_FREE_BYTES: u64 = 512 << 20;

/// How often, in polls, the server checks again which locations each agent reaches.
const REACH_EVERY_POLLS: u64 = 15;

/// How long an enrollment token lasts when its maker does not say.
const ENROLLMENT_SECONDS: u64 = 3600;

fn local() -> Name {
    Name::new(LOCAL).expect("a valid name")
}

impl Server {
    /// Records the embedded agent and its `local` location (the data directory's `images/`),
    /// which it reaches.
    pub(crate) fn register_embedded(&self) -> Result<()> {
        let Some(embedded) = self.fleet.embedded().cloned() else { return Ok(()) };
        let catalog = self.catalog();
        if catalog.agent(&embedded).is_err() {
            catalog.insert_agent(&AgentRow {
                name: embedded.clone(),
                fingerprint: None,
                host: None,
                created_at: Timestamp::now(),
                revoked_at: None,
                last_seen: None,
                info: None,
            })?;
        }
        if let Some(path) = &self.config().local_location {
            if catalog.location(&local()).is_err() {
                catalog.insert_location(&LocationRow {
                    name: local(),
                    path: path.display().to_string(),
                    // The embedded agent reaches it by definition; no other agent can.
                    marker: String::new(),
                    created_at: Timestamp::now(),
                })?;
            }
            catalog.set_reach(&local(), &embedded, true)?;
        }
        Ok(())
    }

    /// Follows the agents of the channel: each connection is reconciled, each drop
    /// forgotten, and every connected agent polled every [`POLL_EVERY`].
    pub(crate) fn follow_agents(self: &Arc<Self>) {
        let (tx, rx) = std::sync::mpsc::channel();
        self.fleet.hub().on_change(tx);
        let weak = Arc::downgrade(self);
        let spawned = std::thread::Builder::new().name("agents".into()).spawn(move || loop {
            let change = rx.recv_timeout(POLL_EVERY);
            let Some(server) = weak.upgrade() else { return };
            if server.stopping.load(std::sync::atomic::Ordering::Relaxed) {
                return;
            }
            match change {
                Ok(Change::Connected(agent)) => {
                    // Reconciling may take a while (a deferred operation); polling goes on.
                    let server = server.clone();
                    std::thread::spawn(move || server.on_connected(&agent));
                }
                Ok(Change::Dropped(agent)) => {
                    tracing::warn!(%agent, "agent unreachable");
                    server.fleet.forget(&agent);
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => server.poll(),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
            }
        });
        if let Err(e) = spawned {
            tracing::error!("starting the thread that follows agents: {e}");
        }
    }

    /// Asks every connected agent how it and its clones are, and every
    /// [`REACH_EVERY_POLLS`] polls which locations it reaches (a share may have been mounted
    /// or unmounted since).
    fn poll(&self) {
        use std::sync::atomic::{AtomicU64, Ordering};
        static POLLS: AtomicU64 = AtomicU64::new(0);
        let check_reach = POLLS.fetch_add(1, Ordering::Relaxed) % REACH_EVERY_POLLS == REACH_EVERY_POLLS - 1;
        let agents = match self.catalog().agents() {
            Ok(a) => a,
            Err(e) => {
                tracing::error!("reading the agents: {e}");
                return;
            }
        };
        for row in agents.iter().filter(|a| a.revoked_at.is_none() && !self.fleet.is_embedded(&a.name)) {
            if !self.fleet.hub().is_connected(&row.name) {
                continue;
            }
            match self.fleet.refresh(&row.name) {
                Ok(info) => {
                    let json = serde_json::to_string(&info).ok();
                    if let Err(e) = self.catalog().agent_seen(&row.name, json.as_deref()) {
                        tracing::error!("recording an agent's report: {e}");
                    }
                    if check_reach {
                        self.check_reach(&row.name);
                    }
                }
                Err(e) => tracing::debug!(agent = %row.name, "polling: {e}"),
            }
        }
    }

    /// An agent connected: what it reports is recorded, which locations it reaches is
    /// checked again, the clones no record asks for are removed from it, the files of images
    /// that failed while it was away go, and the operations a restart left waiting for it
    /// are finished.
    fn on_connected(&self, agent: &Name) {
        tracing::info!(%agent, "agent online");
        match self.fleet.refresh(agent) {
            Ok(info) => {
                let json = serde_json::to_string(&info).ok();
                if let Err(e) = self.catalog().agent_seen(agent, json.as_deref()) {
                    tracing::error!("recording an agent's report: {e}");
                }
            }
            Err(e) => {
                tracing::warn!(%agent, "the agent connected but does not answer: {e}");
                return;
            }
        }
        self.check_reach(agent);
        let waiting: Vec<_> = {
            let mut deferred = self.deferred.lock().unwrap_or_else(|p| p.into_inner());
            let (mine, others): (Vec<_>, Vec<_>) =
                deferred.drain(..).partition(|op| self.operation_agent(op).as_ref() == Some(agent));
            *deferred = others;
            mine
        };
        for op in waiting {
            if let Err(e) = self.finish_interrupted(&op) {
                tracing::error!(id = op.id.0, "finishing an interrupted operation: {e}");
            }
        }
        self.remove_orphans(agent);
        // A failed image has no files; what a copy cut off by the agent's drop left goes.
        let failed: Vec<ImageRow> = self
            .catalog()
            .images()
            .map(|rows| {
                rows.into_iter()
                    .filter(|i| i.status == ImageStatus::Failed && i.agent.as_ref() == Some(agent))
                    .collect()
            })
            .unwrap_or_default();
        for image in failed {
            if let Err(e) = self.remove_image_files(&image) {
                tracing::warn!(image = %image.name, "removing what is left of a failed image: {e}");
            }
        }
    }

    /// Checks which locations `agent` reaches, by the marker of each.
    fn check_reach(&self, agent: &Name) {
        let locations = match self.catalog().locations() {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("reading the locations: {e}");
                return;
            }
        };
        let handle = self.fleet.agent(agent);
        for location in locations.iter().filter(|l| !l.marker.is_empty()) {
            let reaches = match handle.read_marker(&location.path) {
                Ok(value) => value.as_deref() == Some(location.marker.as_str()),
                Err(e) => {
                    tracing::warn!(%agent, location = %location.name, "reading the location's marker: {e}");
                    false
                }
            };
            if let Err(e) = self.catalog().set_reach(&location.name, agent, reaches) {
                tracing::error!("recording reach: {e}");
            }
        }
    }

    /// Which agents reach `location`, as recorded.
    fn reachers(&self, location: &Name) -> Result<Vec<Name>> {
        let revoked: Vec<Name> =
            self.catalog().agents()?.into_iter().filter(|a| a.revoked_at.is_some()).map(|a| a.name).collect();
        Ok(self
            .catalog()
            .reach()?
            .into_iter()
            .filter(|(l, a)| l == location && !revoked.contains(a))
            .map(|(_, a)| a)
            .collect())
    }

    // ------------------------------------------------------------ placement

    /// The location a new image goes to: the one named, or `local` (on `thinclone serve`),
    /// or the only one there is.
    pub(crate) fn image_location(&self, wanted: Option<&Name>) -> Result<LocationRow> {
        let catalog = self.catalog();
        if let Some(name) = wanted {
            return catalog.location(name).map_err(|_| {
                ServerError::NotFound(format!("no location named {name}; `thinclone location list` shows them"))
            });
        }
        if let Ok(local) = catalog.location(&local()) {
            return Ok(local);
        }
        let mut all = catalog.locations()?;
        match all.len() {
            1 => Ok(all.remove(0)),
            0 => Err(ServerError::BadRequest(
                "there is no image location yet: an administrator adds one with `thinclone location add NAME PATH`"
                    .into(),
            )),
            _ => Err(ServerError::BadRequest(format!(
                "say which location the image goes to (--location): {}",
                all.iter().map(|l| l.name.as_str()).collect::<Vec<_>>().join(", ")
            ))),
        }
    }

    /// The agent that makes an image into `location`: the one named (it must reach the
    /// location), or the embedded agent, or the only agent that reaches it; for a copy of a
    /// live server, any agent that reaches it and answers.
    pub(crate) fn image_maker(&self, location: &Name, wanted: Option<&Name>, from_dir: bool) -> Result<Name> {
        let reachers = self.reachers(location)?;
        if let Some(host) = wanted {
            self.known_agent(host)?;
            if !reachers.contains(host) {
                return Err(ServerError::BadRequest(format!(
                    "agent {host} does not reach location {location}; the agents that do: {}",
                    list_or_none(&reachers)
                )));
            }
            return Ok(host.clone());
        }
        if let Some(embedded) = self.fleet.embedded().filter(|e| reachers.contains(e)) {
            return Ok(embedded.clone());
        }
        let online: Vec<&Name> = reachers.iter().filter(|a| self.fleet.is_online(a)).collect();
        match (reachers.len(), online.first()) {
            (0, _) => Err(ServerError::BadRequest(format!(
                "no agent reaches location {location}: mount it on an agent's host (agents check their locations when they connect, and every 30 seconds)"
            ))),
            (1, _) => Ok(reachers[0].clone()),
            (_, Some(first)) if !from_dir => Ok((*first).clone()),
            (_, None) if !from_dir => Err(ServerError::Unavailable(format!(
                "every agent that reaches location {location} is unreachable ({}); try again when one is back",
                reachers.iter().map(Name::as_str).collect::<Vec<_>>().join(", ")
            ))),
            _ => Err(ServerError::BadRequest(format!(
                "say which agent's host has the source directory (--host): the agents that reach location \
                 {location} are {}",
                reachers.iter().map(Name::as_str).collect::<Vec<_>>().join(", ")
            ))),
        }
    }

    /// The agent a new clone of `image` runs on, and what it reported of itself: the one
    /// named, or, of the agents that reach the image's location and answer, have its engine
    /// version and the driver asked for, the one with the fewest clones (then the most free
    /// disk).
    pub(crate) fn place_clone(
        &self,
        image: &ImageRow,
        version: &str,
        wanted: Option<&Name>,
        driver: Option<Driver>,
    ) -> Result<(Name, AgentInfo)> {
        let reachers = self.reachers(&image.location)?;
        let fits = |name: &Name, info: &AgentInfo| -> std::result::Result<(), String> {
            let has_version =
                info.engines.iter().any(|e| e.engine == image.engine && e.versions.iter().any(|v| v == version));
            if !has_version {
                let versions: Vec<String> = info
                    .engines
                    .iter()
                    .flat_map(|e| e.versions.iter().map(move |v| format!("{} {v}", e.engine)))
                    .collect();
                return Err(format!(
                    "agent {name} has no {} {version} installed (it has: {}); install it there, or choose another agent",
                    image.engine,
                    list_or_none(&versions)
                ));
            }
            if let Some(driver) = driver {
                if !info.drivers.contains(&driver) {
                    return Err(format!(
                        "the {driver} driver is not available on agent {name}: {}",
                        match driver {
                            Driver::Reflink => "it needs a filesystem that shares blocks between files (XFS with \
                                                reflink=1, or btrfs) under the agent's data directory; use --driver cowfs"
                                .to_owned(),
                            _ => format!("it offers {}", info.drivers.iter().map(|d| d.as_str()).collect::<Vec<_>>().join(", ")),
                        }
                    ));
                }
            }
            Ok(())
        };
        if let Some(host) = wanted {
            self.known_agent(host)?;
            if !reachers.contains(host) {
                return Err(ServerError::BadRequest(format!(
                    "agent {host} does not reach location {} of image {}; the agents that do: {}",
                    image.location,
                    image.name,
                    list_or_none(&reachers)
                )));
            }
            if !self.fleet.is_online(host) {
                return Err(unreachable(host));
            }
            let info = self.fleet.info(host).ok_or_else(|| unreachable(host))?;
            fits(host, &info).map_err(ServerError::BadRequest)?;
            return Ok((host.clone(), info));
        }
        if reachers.is_empty() {
            return Err(ServerError::BadRequest(format!(
                "no agent reaches location {} of image {}: mount it on an agent's host (agents check their locations when they connect, and every 30 s)",
                image.location, image.name
            )));
        }
        let counts = self.catalog().clone_counts()?;
        let range = usize::from(self.config().ports.1 - self.config().ports.0) + 1;
        let mut candidates = Vec::new();
        let mut reasons = Vec::new();
        for name in &reachers {
            let Some(info) = self.fleet.is_online(name).then(|| self.fleet.info(name)).flatten() else {
                reasons.push(format!("agent {name} is unreachable"));
                continue;
            };
            // Room: a port left in the range; an agent short of disk comes after all others.
            if self.catalog().used_ports(name)?.len() >= range {
                reasons.push(format!("agent {name} has no clone port left"));
                continue;
            }
            match fits(name, &info) {
                Ok(()) => candidates.push((
                    info.free_bytes < MIN_FREE_BYTES,
                    counts.get(name).copied().unwrap_or(0),
                    std::cmp::Reverse(info.free_bytes),
                    name.clone(),
                    info,
                )),
                Err(why) => reasons.push(why),
            }
        }
        candidates.sort_by(|a, b| (a.0, a.1, a.2, &a.3).cmp(&(b.0, b.1, b.2, &b.3)));
        match candidates.into_iter().next() {
            Some((_, _, _, name, info)) => Ok((name, info)),
            None if reasons.iter().all(|r| r.ends_with("is unreachable")) => Err(ServerError::Unavailable(format!(
                "every agent that reaches location {} is unreachable ({}); nothing was changed; try again when one \
                 is back",
                image.location,
                reachers.iter().map(Name::as_str).collect::<Vec<_>>().join(", ")
            ))),
            None => Err(ServerError::BadRequest(format!(
                "no agent can run a clone of image {}: {}",
                image.name,
                reasons.join("; ")
            ))),
        }
    }

    /// The agent that removes an image's files: its maker if it answers and still reaches
    /// the location, otherwise any that does.
    pub(crate) fn image_remover(&self, row: &ImageRow) -> Result<Name> {
        let reachers = self.reachers(&row.location)?;
        if let Some(maker) = row.agent.as_ref().filter(|a| reachers.contains(a) && self.fleet.is_online(a)) {
            return Ok(maker.clone());
        }
        reachers.iter().find(|a| self.fleet.is_online(a)).cloned().ok_or_else(|| {
            ServerError::Unavailable(format!(
                "no agent that reaches location {} answers ({}); nothing was changed; try again when one is back",
                row.location,
                list_or_none(&reachers)
            ))
        })
    }

    fn known_agent(&self, name: &Name) -> Result<AgentRow> {
        match self.catalog().agent(name) {
            Ok(row) if row.revoked_at.is_some() => {
                Err(ServerError::BadRequest(format!("agent {name} was revoked; choose another")))
            }
            Ok(row) => Ok(row),
            Err(CatalogError::NotFound { .. }) => {
                Err(ServerError::NotFound(format!("no agent named {name}; `thinclone agent list` shows them")))
            }
            Err(e) => Err(e.into()),
        }
    }

    // ------------------------------------------------------------------ agents

    fn agent_view(&self, row: AgentRow, counts: &HashMap<Name, u64>, reach: &[(Name, Name)]) -> api::agent::Agent {
        use api::agent::AgentStatus;
        let status = if row.revoked_at.is_some() {
            AgentStatus::Revoked
        } else if self.fleet.is_online(&row.name) {
            AgentStatus::Online
        } else {
            AgentStatus::Unreachable
        };
        let info = self
            .fleet
            .info(&row.name)
            .or_else(|| row.info.as_deref().and_then(|i| serde_json::from_str::<AgentInfo>(i).ok()));
        let used = self.catalog().used_ports(&row.name).map(|p| p.len() as u64).unwrap_or(0);
        let range = u64::from(self.config().ports.1 - self.config().ports.0) + 1;
        let last_seen = if self.fleet.is_embedded(&row.name) && status == AgentStatus::Online {
            Some(Timestamp::now())
        } else {
            row.last_seen
        };
        api::agent::Agent {
            host: row.host.clone().or_else(|| info.as_ref().map(|i| i.host.clone())),
            status,
            last_seen,
            free_bytes: info.as_ref().map(|i| i.free_bytes),
            free_ports: Some(range.saturating_sub(used)),
            clones: counts.get(&row.name).copied().unwrap_or(0),
            drivers: info.as_ref().map(|i| i.drivers.clone()).unwrap_or_default(),
            engines: info.as_ref().map(|i| i.engines.clone()).unwrap_or_default(),
            locations: reach.iter().filter(|(_, a)| a == &row.name).map(|(l, _)| l.clone()).collect(),
            created_at: row.created_at,
            name: row.name,
        }
    }

    pub fn agents(&self, caller: &Caller) -> Result<Vec<api::agent::Agent>> {
        caller.require(Role::Viewer, "see agents")?;
        let (rows, counts, reach) = {
            let catalog = self.catalog();
            (catalog.agents()?, catalog.clone_counts()?, catalog.reach()?)
        };
        Ok(rows.into_iter().map(|row| self.agent_view(row, &counts, &reach)).collect())
    }

    pub fn agent_named(&self, caller: &Caller, name: &Name) -> Result<api::agent::Agent> {
        caller.require(Role::Viewer, "see agents")?;
        let row = self.catalog().agent(name).map_err(|_| ServerError::NotFound(format!("no agent named {name}")))?;
        let (counts, reach) = {
            let catalog = self.catalog();
            (catalog.clone_counts()?, catalog.reach()?)
        };
        Ok(self.agent_view(row, &counts, &reach))
    }

    /// Revokes an agent: its certificate is refused from now on, and its connection ends.
    /// Its clones stay in the catalog, `unknown`, until they are removed.
    pub fn revoke_agent(&self, caller: &Caller, name: &Name) -> Result<api::agent::Agent> {
        caller.require(Role::Admin, "revoke agents")?;
        if self.fleet.is_embedded(name) {
            return Err(ServerError::BadRequest(format!("agent {name} runs inside the server; it cannot be revoked")));
        }
        self.catalog().revoke_agent(name).map_err(|_| ServerError::NotFound(format!("no agent named {name}")))?;
        self.fleet.hub().drop_agent(name);
        self.fleet.forget(name);
        tracing::warn!(agent = %name, "agent revoked");
        self.agent_named(caller, name)
    }

    /// Makes a one-time enrollment token.
    pub fn create_enrollment(&self, caller: &Caller, request: CreateEnrollment) -> Result<Enrollment> {
        caller.require(Role::Admin, "enroll agents")?;
        if self.config().channel_address.is_none() {
            return Err(ServerError::Conflict(
                "this server has no agent channel: start it with `thinclone server` (or `serve --channel-listen`) so \
                 that agents can connect"
                    .into(),
            ));
        }
        let seconds = request.expires_in.unwrap_or(ENROLLMENT_SECONDS);
        if seconds == 0 || seconds > 30 * 86_400 {
            return Err(ServerError::BadRequest("expires_in is between 1 second and 30 days".into()));
        }
        let secret = crate::auth::new_secret()?;
        let secret = secret.trim_start_matches(crate::auth::TOKEN_PREFIX);
        let expires_at = Timestamp(Timestamp::now().0 + seconds as i64);
        self.catalog().insert_enrollment(&crate::auth::hash(secret), &caller.user, expires_at)?;
        Ok(Enrollment { token: format!("tce_{secret}_{}", self.pki.ca_fingerprint()), expires_at })
    }

    /// An agent joins with an enrollment token: its certificate is signed for its public key,
    /// and the token is used up. Refused (401) with a token that is unknown, used or expired.
    pub fn join(&self, request: JoinRequest) -> Result<Joined> {
        let (secret, print) =
            agent::enroll::split_token(&request.token).map_err(|e| ServerError::Unauthorized(e.to_string()))?;
        if !print.eq_ignore_ascii_case(&self.pki.ca_fingerprint()) {
            return Err(ServerError::Unauthorized("the enrollment token was not made by this server".into()));
        }
        let channel = self.config().channel_address.clone().ok_or_else(|| {
            ServerError::Conflict("this server has no agent channel; start it with `thinclone server`".into())
        })?;
        if self.fleet.is_embedded(&request.name) || request.name.as_str() == LOCAL {
            return Err(ServerError::Conflict(format!(
                "the name {} is the embedded agent's; choose another",
                request.name
            )));
        }
        let (certificate, fingerprint) = self.pki.sign_agent(&request.name, &request.public_key)?;
        let hash = crate::auth::hash(secret);
        self.catalog()
            .transaction(|c| {
                c.use_enrollment(&hash, &request.name)?;
                c.insert_agent(&AgentRow {
                    name: request.name.clone(),
                    fingerprint: Some(fingerprint.clone()),
                    host: None,
                    created_at: Timestamp::now(),
                    revoked_at: None,
                    last_seen: None,
                    info: None,
                })
            })
            .map_err(|e| match e {
                CatalogError::Refused(m) => ServerError::Unauthorized(m),
                CatalogError::Exists { .. } => ServerError::Conflict(format!(
                    "an agent named {} exists already (revoked agents keep their names); join with another name (--name)",
                    request.name
                )),
                other => other.into(),
            })?;
        tracing::info!(agent = %request.name, "agent joined");
        Ok(Joined { certificate, ca: self.pki.ca_pem().to_owned(), channel })
    }

    /// The TLS configuration of the agent channel.
    pub fn channel_tls(&self) -> Result<Arc<rustls::ServerConfig>> {
        self.pki.channel_tls()
    }

    /// The agent whose certificate has `fingerprint`, unless it was revoked.
    pub fn authenticate_agent(&self, fingerprint: &str) -> Option<Name> {
        self.catalog().agent_by_fingerprint(fingerprint).ok().flatten()
    }

    // --------------------------------------------------------------- locations

    fn location_view(row: LocationRow, reach: &[(Name, Name)]) -> Location {
        Location {
            agents: reach.iter().filter(|(l, _)| l == &row.name).map(|(_, a)| a.clone()).collect(),
            name: row.name,
            path: row.path,
            created_at: row.created_at,
        }
    }

    pub fn locations(&self, caller: &Caller) -> Result<Vec<Location>> {
        caller.require(Role::Viewer, "see image locations")?;
        let catalog = self.catalog();
        let reach = catalog.reach()?;
        Ok(catalog.locations()?.into_iter().map(|row| Self::location_view(row, &reach)).collect())
    }

    /// Adds an image location: a marker is written into it through an agent that sees the
    /// directory, and every agent that answers reads it back; those that read the same
    /// marker reach it. Refused when no agent sees the directory.
    pub fn create_location(&self, caller: &Caller, request: CreateLocation) -> Result<Location> {
        caller.require(Role::Admin, "add image locations")?;
        let path = Path::new(&request.path);
        if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) || path == Path::new("/") {
            return Err(ServerError::BadRequest(format!(
                "a location is an absolute path without `..`, other than /: {}",
                request.path
            )));
        }
        if self.catalog().location(&request.name).is_ok() {
            return Err(ServerError::Conflict(format!("location {} already exists", request.name)));
        }
        let path = request.path.trim_end_matches('/').to_owned();
        let marker =
            format!("{}:{}", request.name, crate::auth::new_secret()?.trim_start_matches(crate::auth::TOKEN_PREFIX));
        let agents: Vec<Name> = self
            .catalog()
            .agents()?
            .into_iter()
            .filter(|a| a.revoked_at.is_none() && self.fleet.is_online(&a.name))
            .map(|a| a.name)
            .collect();
        let mut refusals = Vec::new();
        let mut written = false;
        for agent in &agents {
            match self.fleet.agent(agent).write_marker(&path, &marker) {
                Ok(()) => {
                    written = true;
                    break;
                }
                Err(e) if e.kind == ErrorKind::Unavailable => refusals.push(format!("{agent}: unreachable")),
                Err(e) => refusals.push(format!("{agent}: {}", e.message)),
            }
        }
        if !written {
            return Err(ServerError::BadRequest(format!(
                "no agent could use {path} as an image location ({}); create the directory (or mount the share) on \
                 an agent's host first",
                if refusals.is_empty() { "no agent is online".to_owned() } else { refusals.join("; ") }
            )));
        }
        let row = LocationRow {
            name: request.name.clone(),
            path: path.clone(),
            marker: marker.clone(),
            created_at: Timestamp::now(),
        };
        self.catalog().insert_location(&row)?;
        for agent in &agents {
            let reaches = matches!(self.fleet.agent(agent).read_marker(&path), Ok(Some(v)) if v == marker);
            self.catalog().set_reach(&row.name, agent, reaches)?;
        }
        let reach = self.catalog().reach()?;
        Ok(Self::location_view(row, &reach))
    }

    pub fn delete_location(&self, caller: &Caller, name: &Name) -> Result<()> {
        caller.require(Role::Admin, "remove image locations")?;
        match self.catalog().delete_location(name) {
            Ok(()) => Ok(()),
            Err(CatalogError::NotFound { .. }) => Err(ServerError::NotFound(format!("no location named {name}"))),
            Err(e) => Err(e.into()),
        }
    }

    /// Waits until `agent` is online, for up to `wait` (tests and the CLI's `--wait`).
    pub fn wait_for_agent(&self, agent: &Name, wait: Duration) -> bool {
        sys::wait::until(wait, Duration::from_millis(50), || self.fleet.is_online(agent).then_some(())).is_some()
    }
}

/// Where an agent finds a location's images, and the marker that proves it is the location.
pub(crate) fn place_of(location: &LocationRow) -> agent::ImagePlace {
    agent::ImagePlace {
        location: location.name.clone(),
        path: location.path.clone(),
        marker: (!location.marker.is_empty()).then(|| location.marker.clone()),
    }
}

fn list_or_none<T: std::fmt::Display>(items: &[T]) -> String {
    if items.is_empty() {
        return "none".into();
    }
    items.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}
