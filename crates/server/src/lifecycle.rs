//! Clones that clean up after themselves: expiry (`expires_at`), protection (which blocks
//! expiry, the idle policy's removal and `DELETE`), and the idle policy (a clone no client
//! has used for a while is stopped, later removed). A thread looks at every clone each
//! [`LIFECYCLE_EVERY`] and starts the operations that are due, as the server itself; each is
//! recorded in the audit log with no actor, and announced as an event. The same thread runs
//! the schedules that are due (crate::schedules).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use api::{CloneStatus, IdlePolicy, Name, Protect, Role, SetExpiry, Timestamp};

use crate::auth::Caller;
use crate::catalog::CloneRow;
use crate::ops::{expiry, CloneAction, Result, Server, ServerError, MAX_EXPIRY_SECONDS};
use crate::webhooks::Event;

/// How often clones are looked at.
pub const LIFECYCLE_EVERY: Duration = Duration::from_secs(1);

/// How the server treats clones over time (`thinclone serve --idle-stop-after …`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LifecycleConfig {
    /// Stop a clone no client has been connected to for this many seconds (0: never), unless
    /// the clone says otherwise.
    pub idle_stop_after: u64,
    /// Remove a clone no client has been connected to for this many seconds (0: never).
    pub idle_remove_after: u64,
    /// How long before its expiry a clone's `clone.expiring` event goes out.
    pub expiry_warning: u64,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        LifecycleConfig { idle_stop_after: 0, idle_remove_after: 0, expiry_warning: 3600 }
    }
}

/// Who the server acts as when it stops or removes a clone by itself.
pub(crate) fn system() -> Caller {
    Caller { user: Name::new("thinclone").expect("a valid name"), role: Role::Admin, teams: Vec::new() }
}

/// Whether a clone's protection holds at `now`.
pub(crate) fn is_protected(row: &CloneRow, now: Timestamp) -> bool {
    row.protected && row.protected_until.is_none_or(|until| until.0 > now.0)
}

impl Server {
    /// Sets when a clone expires (neither field: never).
    pub fn set_expiry(&self, caller: &Caller, name: &Name, request: SetExpiry) -> Result<api::Clone> {
        let row = self.visible_clone(caller, name)?;
        Self::require_use(caller, &row, "set the expiry of")?;
        let at = expiry(request.expires_in, request.expires_at)?;
        self.catalog().set_clone_expiry(name, at)?;
        self.clone_named(caller, name)
    }

    /// Protects a clone, for `for_seconds` or until unprotected.
    pub fn protect(&self, caller: &Caller, name: &Name, request: Protect) -> Result<api::Clone> {
        let row = self.visible_clone(caller, name)?;
        Self::require_use(caller, &row, "protect")?;
        let until = match request.for_seconds {
            Some(0) => return Err(ServerError::BadRequest("for_seconds must be at least 1".into())),
            Some(s) if s as i64 > MAX_EXPIRY_SECONDS || s > i64::MAX as u64 => {
                return Err(ServerError::BadRequest(format!("for_seconds is at most {MAX_EXPIRY_SECONDS} (ten years)")))
            }
            Some(s) => Some(Timestamp(Timestamp::now().0 + s as i64)),
            None => None,
        };
        self.catalog().set_clone_protection(name, true, until)?;
        self.clone_named(caller, name)
    }

    pub fn unprotect(&self, caller: &Caller, name: &Name) -> Result<api::Clone> {
        let row = self.visible_clone(caller, name)?;
        Self::require_use(caller, &row, "unprotect")?;
        self.catalog().set_clone_protection(name, false, None)?;
        self.clone_named(caller, name)
    }

    /// Sets a clone's idle policy (a `None` field takes the server's).
    pub fn set_idle(&self, caller: &Caller, name: &Name, policy: IdlePolicy) -> Result<api::Clone> {
        let row = self.visible_clone(caller, name)?;
        Self::require_use(caller, &row, "set the idle policy of")?;
        for seconds in [policy.stop_after, policy.remove_after].into_iter().flatten() {
            if seconds as i64 > MAX_EXPIRY_SECONDS || seconds > i64::MAX as u64 {
                return Err(ServerError::BadRequest(format!("an idle time is at most {MAX_EXPIRY_SECONDS} seconds")));
            }
        }
        self.catalog().set_clone_idle(name, policy.stop_after, policy.remove_after)?;
        self.clone_named(caller, name)
    }

    /// Refuses to remove a protected clone.
    pub(crate) fn refuse_if_protected(&self, row: &CloneRow) -> Result<()> {
        if !is_protected(row, Timestamp::now()) {
            return Ok(());
        }
        let until = row.protected_until.map(|u| format!(" until {u}")).unwrap_or_default();
        Err(ServerError::Conflict(format!(
            "clone {} is protected{until}; `thinclone clone unprotect {}` first",
            row.name, row.name
        )))
    }

    /// Starts the thread that applies expiry and the idle policy, and runs schedules.
    pub(crate) fn follow_lifecycle(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let spawned = std::thread::Builder::new().name("lifecycle".into()).spawn(move || loop {
            std::thread::sleep(LIFECYCLE_EVERY);
            let Some(server) = weak.upgrade() else { return };
            if server.is_stopping() {
                return;
            }
            server.lifecycle_tick();
        });
        if let Err(e) = spawned {
            tracing::error!("starting the thread that applies expiry and the idle policy: {e}");
        }
    }

    fn lifecycle_tick(self: &Arc<Self>) {
        self.follow_schedules();
        let now = Timestamp::now();
        let clones = match self.catalog().clones() {
            Ok(clones) => clones,
            Err(e) => {
                tracing::error!("reading the clones: {e}");
                return;
            }
        };
        let config = self.config().lifecycle;
        // How long each clone has had no client, as its agent last saw: asked once per
        // agent, and only when a clone there has an idle policy.
        let mut idle: HashMap<Name, Option<Timestamp>> = HashMap::new();
        let mut asked: HashMap<Name, bool> = HashMap::new();
        for row in &clones {
            if row.status.is_transitional() {
                continue;
            }
            let protected = is_protected(row, now);
            if row.protected && !protected {
                tracing::info!(clone = %row.name, "the clone's protection lapsed");
                if let Err(e) = self.catalog().set_clone_protection(&row.name, false, None) {
                    tracing::error!("recording a lapsed protection: {e}");
                }
                self.emit("clone.unprotected", row, "its protection lapsed".into());
            }
            if let Some(at) = row.expires_at {
                if !row.expiry_warned && now.0 + config.expiry_warning as i64 >= at.0 {
                    let detail = if protected {
                        format!("it expires at {at}, but is protected")
                    } else {
                        format!("it is removed at {at} unless protected or given a later expiry")
                    };
                    self.emit("clone.expiring", row, detail);
                    if let Err(e) = self.catalog().set_expiry_warned(&row.name) {
                        tracing::error!("recording an expiry warning: {e}");
                    }
                }
                if now.0 >= at.0 && !protected {
                    self.remove_by_policy(row, &format!("it expired at {at}"));
                    continue;
                }
            }
            let stop_after = row.idle_stop_after.unwrap_or(config.idle_stop_after);
            let remove_after = row.idle_remove_after.unwrap_or(config.idle_remove_after);
            if stop_after == 0 && remove_after == 0 {
                continue;
            }
            if !asked.contains_key(&row.agent) {
                let ok = self.fleet.is_online(&row.agent);
                if ok {
                    match self.fleet.agent(&row.agent).clone_reports() {
                        Ok(reports) => {
                            for report in reports {
                                idle.insert(report.name.clone(), report.idle_since);
                            }
                        }
                        Err(e) => tracing::debug!(agent = %row.agent, "asking for idle times: {e}"),
                    }
                }
                asked.insert(row.agent.clone(), ok);
            }
            let Some(Some(since)) = idle.get(&row.name) else { continue };
            let idle_for = now.0.saturating_sub(since.0).max(0) as u64;
            if remove_after > 0 && idle_for >= remove_after && !protected {
                self.remove_by_policy(
                    row,
                    &format!("no client for {idle_for} s (the idle policy removes after {remove_after} s)"),
                );
            } else if stop_after > 0 && idle_for >= stop_after && row.status == CloneStatus::Ready {
                tracing::info!(clone = %row.name, idle_for, "stopping an idle clone");
                match self.clone_action(&system(), &row.name, CloneAction::Stop) {
                    Ok(op) => self.emit(
                        "clone.stopped",
                        row,
                        format!(
                            "no client for {idle_for} s (the idle policy stops after {stop_after} s); operation {}",
                            op.id
                        ),
                    ),
                    Err(e) => tracing::warn!(clone = %row.name, "stopping an idle clone: {e}"),
                }
            }
        }
    }

    fn remove_by_policy(self: &Arc<Self>, row: &CloneRow, why: &str) {
        tracing::info!(clone = %row.name, "removing the clone: {why}");
        match self.delete_clone(&system(), &row.name) {
            Ok(op) => self.emit("clone.expired", row, format!("{why}; removed by operation {}", op.id)),
            Err(e) => tracing::warn!(clone = %row.name, "removing the clone ({why}): {e}"),
        }
    }

    /// Announces something that happened to a clone (crate::webhooks).
    pub(crate) fn emit(&self, kind: &'static str, row: &CloneRow, detail: String) {
        self.emit_event(Event { kind, subject: "clone", name: &row.name, team: Some(&row.team), detail });
    }
}
