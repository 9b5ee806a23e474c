//! The catalog: what images, clones and operations exist, in an embedded SQLite database
//! (`state.db` in the data directory).
//!
//! SQLite runs in WAL mode with `synchronous=FULL`, so a change is durable once its statement
//! returns, and a kill of the server loses nothing it has answered. The schema's version is
//! SQLite's `user_version`; `migrate` brings an older file up to date.
//!
//! The rows here are the catalog's own types. They are never sent as they are: the server
//! turns them into the `api` crate's wire types (in ops.rs).

use std::path::Path;
use std::time::Duration;

use api::{CloneStatus, Driver, ImageStatus, Name, OperationId, OperationKind, OperationState, Role, Timestamp};
use rusqlite::{params, Connection, OptionalExtension};

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("{kind} {name} already exists")]
    Exists { kind: &'static str, name: String },
    #[error("port {0} is already taken by another clone")]
    PortTaken(u16),
    #[error("no image named {0}")]
    NoImage(String),
    #[error("no {kind} named {name}")]
    NotFound { kind: &'static str, name: String },
    /// A change the object's state does not allow now; the message says why.
    #[error("{0}")]
    Refused(String),
    #[error("the state database {0} was made by an older thinclone; start with a new --data-dir")]
    TooOld(String),
    #[error("the state database: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

pub type Result<T, E = CatalogError> = std::result::Result<T, E>;

#[derive(Debug, Clone, PartialEq)]
pub struct ImageRow {
    pub name: Name,
    pub status: ImageStatus,
    pub message: Option<String>,
    pub engine: String,
    pub engine_version: Option<String>,
    pub superuser: Option<String>,
    pub source: String,
    pub logical_bytes: u64,
    pub stored_bytes: u64,
    pub file_count: u64,
    pub team: Name,
    pub created_by: Option<Name>,
    pub created_at: Timestamp,
    pub operation: Option<OperationId>,
    /// The image location it is kept in.
    pub location: Name,
    /// The agent that made it.
    pub agent: Option<Name>,
    /// Its masking rules, modification script names and their report, as JSON text (the
    /// operations layer reads and writes them).
    pub mask: Option<String>,
    pub scripts: Option<String>,
    pub report: Option<String>,
    /// The schedule that made it.
    pub schedule: Option<Name>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CloneRow {
    pub name: Name,
    pub image: Name,
    pub status: CloneStatus,
    pub message: Option<String>,
    pub driver: Driver,
    pub port: u16,
    pub password: String,
    pub owner: Name,
    pub team: Name,
    pub created_at: Timestamp,
    pub operation: Option<OperationId>,
    /// The agent it runs on; its port is unique on that agent.
    pub agent: Name,
    /// `CLONE@CHECKPOINT` for a branch or a snapshot view.
    pub origin: Option<String>,
    /// A snapshot view: its server refuses writes.
    pub read_only: bool,
    /// When it is removed, unless protected then.
    pub expires_at: Option<Timestamp>,
    /// Whether the warning of its expiry went out (for this `expires_at`).
    pub expiry_warned: bool,
    pub protected: bool,
    /// When its protection lapses; `None` while protected: never.
    pub protected_until: Option<Timestamp>,
    /// Its idle policy, seconds; `None` takes the server's, 0 turns the step off.
    pub idle_stop_after: Option<u64>,
    pub idle_remove_after: Option<u64>,
    /// The template it was made with, whose scripts a refresh runs again.
    pub template: Option<Name>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OperationRow {
    pub id: OperationId,
    pub kind: OperationKind,
    pub target: Name,
    /// The team of its target, for who may see it.
    pub team: Name,
    pub state: OperationState,
    pub message: Option<String>,
    pub error: Option<String>,
    pub created_at: Timestamp,
    pub finished_at: Option<Timestamp>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UserRow {
    pub name: Name,
    pub role: Role,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TokenRow {
    pub id: u64,
    pub user: Name,
    pub description: Option<String>,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
    pub last_used_at: Option<Timestamp>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SourceRow {
    pub name: Name,
    pub path: String,
    pub created_at: Timestamp,
}

/// An agent: one embedded in the server's process (no certificate), or one that joined.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentRow {
    pub name: Name,
    /// The fingerprint of its certificate; `None` for the embedded agent.
    pub fingerprint: Option<String>,
    /// The address clients reach its clones at, when set by an administrator; otherwise
    /// what the agent reports.
    pub host: Option<String>,
    pub created_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
    pub last_seen: Option<Timestamp>,
    /// What it last reported of itself (api::agent::AgentInfo, as JSON).
    pub info: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LocationRow {
    pub name: Name,
    pub path: String,
    /// What its marker file says, written when it was added.
    pub marker: String,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ActivityRow {
    pub id: u64,
    pub at: Timestamp,
    pub actor: Option<Name>,
    pub action: String,
    pub target: Option<String>,
    /// The team of the target, when it has one, for who may see the entry.
    pub team: Option<Name>,
    pub status: u16,
    pub detail: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WebhookRow {
    pub id: u64,
    pub url: String,
    /// The key deliveries are signed with; never answered after the webhook is made.
    pub secret: String,
    /// The event kinds it gets; empty: every kind.
    pub events: Vec<String>,
    pub description: Option<String>,
    pub created_at: Timestamp,
    pub created_by: Name,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleRow {
    pub name: Name,
    pub cron: String,
    pub keep: u32,
    /// What each run asks for: an `api::CreateImage` as JSON, whose name each run sets.
    /// It holds the source's password; it never leaves the server.
    pub request: String,
    /// The source as shown: without its password.
    pub source: String,
    pub team: Name,
    pub created_by: Name,
    pub created_at: Timestamp,
    pub next_run_at: Timestamp,
    pub last_run_at: Option<Timestamp>,
    pub last_image: Option<Name>,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TemplateRow {
    pub name: Name,
    /// Its scripts, as JSON text.
    pub scripts: String,
    pub description: Option<String>,
    pub created_by: Name,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryRow {
    pub id: u64,
    pub webhook: u64,
    pub event: String,
    pub body: String,
    /// `pending`, `delivered` or `failed`.
    pub state: String,
    pub attempts: u32,
    pub response_status: Option<u16>,
    pub error: Option<String>,
    pub created_at: Timestamp,
    pub last_attempt_at: Option<Timestamp>,
    pub next_attempt_at: Option<Timestamp>,
}

/// How many deliveries the catalog keeps per webhook (the newest).
const DELIVERIES_KEPT: i64 = 1000;

pub struct Catalog {
    conn: Connection,
}

const SCHEMA_VERSION: i64 = 11;

/// The team that images and clones made before teams existed belong to, and that the first
/// administrator is in.
pub const DEFAULT_TEAM: &str = "default";
/// The first administrator, made at the first start.
pub const BOOTSTRAP_USER: &str = "admin";

/// How many ended operations the catalog keeps.
const OPERATIONS_KEPT: i64 = 1000;

impl Catalog {
    pub fn open(path: &Path) -> Result<Catalog> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(Duration::from_secs(10))?;
        let catalog = Catalog { conn };
        catalog.migrate(path)?;
        Ok(catalog)
    }

    fn migrate(&self, path: &Path) -> Result<()> {
        let version: i64 = self.conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version == 1 {
            return Err(CatalogError::TooOld(path.display().to_string()));
        }
        if version < 2 {
            self.conn.execute_batch(
                "BEGIN;
                 CREATE TABLE images (
                     name TEXT PRIMARY KEY,
                     status TEXT NOT NULL,
                     message TEXT,
                     engine TEXT NOT NULL,
                     engine_version TEXT,
                     superuser TEXT,
                     source TEXT NOT NULL,
                     logical_bytes INTEGER NOT NULL DEFAULT 0,
                     stored_bytes INTEGER NOT NULL DEFAULT 0,
                     file_count INTEGER NOT NULL DEFAULT 0,
                     created_at INTEGER NOT NULL,
                     operation INTEGER
                 );
                 CREATE TABLE clones (
                     name TEXT PRIMARY KEY,
                     image TEXT NOT NULL REFERENCES images(name),
                     status TEXT NOT NULL,
                     message TEXT,
                     driver TEXT NOT NULL,
                     port INTEGER NOT NULL UNIQUE,
                     password TEXT NOT NULL,
                     created_at INTEGER NOT NULL,
                     operation INTEGER
                 );
                 CREATE TABLE operations (
                     id INTEGER PRIMARY KEY AUTOINCREMENT,
                     kind TEXT NOT NULL,
                     target TEXT NOT NULL,
                     state TEXT NOT NULL,
                     message TEXT,
                     error TEXT,
                     created_at INTEGER NOT NULL,
                     finished_at INTEGER
                 );
                 CREATE INDEX operations_running ON operations(state) WHERE state = 'running';
                 PRAGMA user_version = 2;
                 COMMIT;",
            )?;
        }
        if version < 3 {
            self.conn.execute_batch(
                "BEGIN;
                 CREATE TABLE users (
                     name TEXT PRIMARY KEY,
                     role TEXT NOT NULL,
                     created_at INTEGER NOT NULL
                 );
                 CREATE TABLE teams (
                     name TEXT PRIMARY KEY,
                     created_at INTEGER NOT NULL
                 );
                 CREATE TABLE memberships (
                     team TEXT NOT NULL REFERENCES teams(name) ON DELETE CASCADE,
                     user TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
                     PRIMARY KEY (team, user)
                 );
                 CREATE TABLE tokens (
                     id INTEGER PRIMARY KEY AUTOINCREMENT,
                     user TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
                     hash BLOB NOT NULL UNIQUE,
                     description TEXT,
                     created_at INTEGER NOT NULL,
                     expires_at INTEGER,
                     revoked_at INTEGER,
                     last_used_at INTEGER
                 );
                 CREATE TABLE sources (
                     name TEXT PRIMARY KEY,
                     path TEXT NOT NULL,
                     created_at INTEGER NOT NULL
                 );
                 CREATE TABLE activity (
                     id INTEGER PRIMARY KEY AUTOINCREMENT,
                     at INTEGER NOT NULL,
                     actor TEXT,
                     action TEXT NOT NULL,
                     target TEXT,
                     team TEXT,
                     status INTEGER NOT NULL,
                     detail TEXT
                 );
                 CREATE INDEX activity_at ON activity(at);
                 ALTER TABLE images ADD COLUMN team TEXT NOT NULL DEFAULT 'default';
                 ALTER TABLE images ADD COLUMN created_by TEXT;
                 ALTER TABLE clones ADD COLUMN owner TEXT NOT NULL DEFAULT 'admin';
                 ALTER TABLE clones ADD COLUMN team TEXT NOT NULL DEFAULT 'default';
                 ALTER TABLE operations ADD COLUMN team TEXT NOT NULL DEFAULT 'default';
                 PRAGMA user_version = 3;
                 COMMIT;",
            )?;
        }
        if version < 4 {
            // Agents and image locations. A clone's port is unique on its agent only, which
            // needs the clones table made again (SQLite cannot drop a constraint).
            self.conn.execute_batch(
                "BEGIN;
                 CREATE TABLE agents (
                     name TEXT PRIMARY KEY,
                     fingerprint TEXT UNIQUE,
                     host TEXT,
                     created_at INTEGER NOT NULL,
                     revoked_at INTEGER,
                     last_seen INTEGER,
                     info TEXT
                 );
                 CREATE TABLE enrollments (
                     hash BLOB PRIMARY KEY,
                     created_by TEXT,
                     created_at INTEGER NOT NULL,
                     expires_at INTEGER NOT NULL,
                     used_at INTEGER,
                     used_by TEXT
                 );
                 CREATE TABLE locations (
                     name TEXT PRIMARY KEY,
                     path TEXT NOT NULL,
                     marker TEXT NOT NULL,
                     created_at INTEGER NOT NULL
                 );
                 CREATE TABLE reach (
                     location TEXT NOT NULL REFERENCES locations(name) ON DELETE CASCADE,
                     agent TEXT NOT NULL REFERENCES agents(name) ON DELETE CASCADE,
                     PRIMARY KEY (location, agent)
                 );
                 ALTER TABLE images ADD COLUMN location TEXT NOT NULL DEFAULT 'local';
                 ALTER TABLE images ADD COLUMN agent TEXT;
                 CREATE TABLE clones_v4 (
                     name TEXT PRIMARY KEY,
                     image TEXT NOT NULL REFERENCES images(name),
                     status TEXT NOT NULL,
                     message TEXT,
                     driver TEXT NOT NULL,
                     port INTEGER NOT NULL,
                     password TEXT NOT NULL,
                     created_at INTEGER NOT NULL,
                     operation INTEGER,
                     owner TEXT NOT NULL DEFAULT 'admin',
                     team TEXT NOT NULL DEFAULT 'default',
                     agent TEXT NOT NULL DEFAULT 'local',
                     UNIQUE (agent, port)
                 );
                 INSERT INTO clones_v4 (name, image, status, message, driver, port, password, created_at, operation,
                                        owner, team, agent)
                     SELECT name, image, status, message, driver, port, password, created_at, operation, owner, team,
                            'local'
                     FROM clones;
                 DROP TABLE clones;
                 ALTER TABLE clones_v4 RENAME TO clones;
                 PRAGMA user_version = 4;
                 COMMIT;",
            )?;
        }
        if version < 5 {
            self.conn.execute_batch(
                "BEGIN;
                 ALTER TABLE clones ADD COLUMN origin TEXT;
                 ALTER TABLE clones ADD COLUMN read_only INTEGER NOT NULL DEFAULT 0;
                 PRAGMA user_version = 5;
                 COMMIT;",
            )?;
        }
        if version < 6 {
            self.conn.execute_batch(
                "BEGIN;
                 ALTER TABLE clones ADD COLUMN expires_at INTEGER;
                 ALTER TABLE clones ADD COLUMN expiry_warned INTEGER NOT NULL DEFAULT 0;
                 ALTER TABLE clones ADD COLUMN protected INTEGER NOT NULL DEFAULT 0;
                 ALTER TABLE clones ADD COLUMN protected_until INTEGER;
                 ALTER TABLE clones ADD COLUMN idle_stop_after INTEGER;
                 ALTER TABLE clones ADD COLUMN idle_remove_after INTEGER;
                 PRAGMA user_version = 6;
                 COMMIT;",
            )?;
        }
        if version < 7 {
            self.conn.execute_batch(
                "BEGIN;
                 CREATE TABLE webhooks (
                     id INTEGER PRIMARY KEY AUTOINCREMENT,
                     url TEXT NOT NULL,
                     secret TEXT NOT NULL,
                     events TEXT NOT NULL,
                     description TEXT,
                     created_at INTEGER NOT NULL,
                     created_by TEXT NOT NULL
                 );
                 CREATE TABLE deliveries (
                     id INTEGER PRIMARY KEY AUTOINCREMENT,
                     webhook INTEGER NOT NULL REFERENCES webhooks(id) ON DELETE CASCADE,
                     event TEXT NOT NULL,
                     body TEXT NOT NULL,
                     state TEXT NOT NULL,
                     attempts INTEGER NOT NULL DEFAULT 0,
                     response_status INTEGER,
                     error TEXT,
                     created_at INTEGER NOT NULL,
                     last_attempt_at INTEGER,
                     next_attempt_at INTEGER
                 );
                 CREATE INDEX deliveries_due ON deliveries (state, next_attempt_at);
                 PRAGMA user_version = 7;
                 COMMIT;",
            )?;
        }
        if version < 8 {
            self.conn.execute_batch(
                "BEGIN;
                 ALTER TABLE images ADD COLUMN mask TEXT;
                 ALTER TABLE images ADD COLUMN scripts TEXT;
                 ALTER TABLE images ADD COLUMN report TEXT;
                 PRAGMA user_version = 8;
                 COMMIT;",
            )?;
        }
        if version < 9 {
            self.conn.execute_batch(
                "BEGIN;
                 CREATE TABLE templates (
                     name TEXT PRIMARY KEY,
                     scripts TEXT NOT NULL,
                     description TEXT,
                     created_by TEXT NOT NULL,
                     created_at INTEGER NOT NULL
                 );
                 PRAGMA user_version = 9;
                 COMMIT;",
            )?;
        }
        if version < 10 {
            self.conn.execute_batch(
                "BEGIN;
                 CREATE TABLE schedules (
                     name TEXT PRIMARY KEY,
                     cron TEXT NOT NULL,
                     keep INTEGER NOT NULL,
                     request TEXT NOT NULL,
                     source TEXT NOT NULL,
                     team TEXT NOT NULL,
                     created_by TEXT NOT NULL,
                     created_at INTEGER NOT NULL,
                     next_run_at INTEGER NOT NULL,
                     last_run_at INTEGER,
                     last_image TEXT,
                     last_error TEXT
                 );
                 ALTER TABLE images ADD COLUMN schedule TEXT;
                 PRAGMA user_version = 10;
                 COMMIT;",
            )?;
        }
        if version < 11 {
            self.conn.execute_batch(
                "BEGIN;
                 ALTER TABLE clones ADD COLUMN template TEXT;
                 PRAGMA user_version = 11;
                 COMMIT;",
            )?;
        }
        debug_assert_eq!(SCHEMA_VERSION, 11);
        Ok(())
    }

    /// Runs `f` in one transaction: all of its changes land, or none.
    pub fn transaction<T>(&mut self, f: impl FnOnce(&Catalog) -> Result<T>) -> Result<T> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        match f(self) {
            Ok(v) => {
                self.conn.execute_batch("COMMIT")?;
                Ok(v)
            }
            Err(e) => {
                if let Err(rollback) = self.conn.execute_batch("ROLLBACK") {
                    tracing::error!("rolling back a catalog transaction: {rollback}");
                }
                Err(e)
            }
        }
    }

    // ------------------------------------------------------------------ images

    pub fn insert_image(&self, image: &ImageRow) -> Result<()> {
        let result = self.conn.execute(
            "INSERT INTO images (name, status, message, engine, engine_version, superuser, source, logical_bytes,
                                 stored_bytes, file_count, created_at, operation, team, created_by, location, agent,
                                 mask, scripts, report, schedule)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)",
            params![
                image.name.as_str(),
                image.status.as_str(),
                image.message,
                image.engine,
                image.engine_version,
                image.superuser,
                image.source,
                image.logical_bytes as i64,
                image.stored_bytes as i64,
                image.file_count as i64,
                image.created_at.0,
                image.operation.map(|o| o.0 as i64),
                image.team.as_str(),
                image.created_by.as_ref().map(Name::as_str),
                image.location.as_str(),
                image.agent.as_ref().map(Name::as_str),
                image.mask,
                image.scripts,
                image.report,
                image.schedule.as_ref().map(Name::as_str),
            ],
        );
        match constraint(result, "image", &image.name) {
            Err(CatalogError::Sqlite(e)) if is_constraint(&e, "FOREIGN KEY") => {
                Err(CatalogError::NotFound { kind: "team", name: image.team.to_string() })
            }
            other => other,
        }
    }

    pub fn update_image(&self, image: &ImageRow) -> Result<()> {
        let n = self.conn.execute(
            "UPDATE images SET status = ?2, message = ?3, engine = ?4, engine_version = ?5, superuser = ?6,
                 logical_bytes = ?7, stored_bytes = ?8, file_count = ?9, operation = ?10, report = ?11
             WHERE name = ?1",
            params![
                image.name.as_str(),
                image.status.as_str(),
                image.message,
                image.engine,
                image.engine_version,
                image.superuser,
                image.logical_bytes as i64,
                image.stored_bytes as i64,
                image.file_count as i64,
                image.operation.map(|o| o.0 as i64),
                image.report,
            ],
        )?;
        found(n, "image", &image.name)
    }

    pub fn image(&self, name: &Name) -> Result<ImageRow> {
        self.conn
            .query_row("SELECT * FROM images WHERE name = ?1", [name.as_str()], image_row)
            .optional()?
            .ok_or_else(|| CatalogError::NotFound { kind: "image", name: name.to_string() })
    }

    pub fn images(&self) -> Result<Vec<ImageRow>> {
        let mut stmt = self.conn.prepare_cached("SELECT * FROM images ORDER BY name")?;
        let rows = stmt.query_map([], image_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn delete_image(&self, name: &Name) -> Result<()> {
        let n = self.conn.execute("DELETE FROM images WHERE name = ?1", [name.as_str()])?;
        found(n, "image", name)
    }

    // ------------------------------------------------------------------ clones

    pub fn insert_clone(&self, clone: &CloneRow) -> Result<()> {
        let result = self.conn.execute(
            "INSERT INTO clones (name, image, status, message, driver, port, password, created_at, operation, owner, team,
                                 agent, origin, read_only, expires_at, expiry_warned, protected, protected_until,
                                 idle_stop_after, idle_remove_after, template)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21)",
            params![
                clone.name.as_str(),
                clone.image.as_str(),
                clone.status.as_str(),
                clone.message,
                clone.driver.as_str(),
                clone.port,
                clone.password,
                clone.created_at.0,
                clone.operation.map(|o| o.0 as i64),
                clone.owner.as_str(),
                clone.team.as_str(),
                clone.agent.as_str(),
                clone.origin,
                clone.read_only,
                clone.expires_at.map(|t| t.0),
                clone.expiry_warned,
                clone.protected,
                clone.protected_until.map(|t| t.0),
                clone.idle_stop_after.map(|s| s as i64),
                clone.idle_remove_after.map(|s| s as i64),
                clone.template.as_ref().map(Name::as_str),
            ],
        );
        match constraint(result, "clone", &clone.name) {
            Err(CatalogError::Sqlite(e)) if is_constraint(&e, "clones.agent, clones.port") => {
                Err(CatalogError::PortTaken(clone.port))
            }
            Err(CatalogError::Sqlite(e)) if is_constraint(&e, "FOREIGN KEY") => {
                Err(CatalogError::NoImage(clone.image.to_string()))
            }
            other => other,
        }
    }

    /// Changes a clone's status, message and operation.
    pub fn set_clone_status(
        &self,
        name: &Name,
        status: CloneStatus,
        message: Option<&str>,
        operation: Option<OperationId>,
    ) -> Result<()> {
        let n = self.conn.execute(
            "UPDATE clones SET status = ?2, message = ?3, operation = ?4 WHERE name = ?1",
            params![name.as_str(), status.as_str(), message, operation.map(|o| o.0 as i64)],
        )?;
        found(n, "clone", name)
    }

    /// Sets when a clone expires (`None`: never); its warning goes out again.
    pub fn set_clone_expiry(&self, name: &Name, at: Option<Timestamp>) -> Result<()> {
        let n = self.conn.execute(
            "UPDATE clones SET expires_at = ?2, expiry_warned = 0 WHERE name = ?1",
            params![name.as_str(), at.map(|t| t.0)],
        )?;
        found(n, "clone", name)
    }

    /// Records that the warning of a clone's expiry went out.
    pub fn set_expiry_warned(&self, name: &Name) -> Result<()> {
        let n = self.conn.execute("UPDATE clones SET expiry_warned = 1 WHERE name = ?1", [name.as_str()])?;
        found(n, "clone", name)
    }

    /// Protects a clone (until `until`, or for good), or ends its protection.
    pub fn set_clone_protection(&self, name: &Name, protected: bool, until: Option<Timestamp>) -> Result<()> {
        let n = self.conn.execute(
            "UPDATE clones SET protected = ?2, protected_until = ?3 WHERE name = ?1",
            params![name.as_str(), protected, until.map(|t| t.0)],
        )?;
        found(n, "clone", name)
    }

    /// Sets a clone's idle policy (seconds; `None` takes the server's).
    pub fn set_clone_idle(&self, name: &Name, stop_after: Option<u64>, remove_after: Option<u64>) -> Result<()> {
        let n = self.conn.execute(
            "UPDATE clones SET idle_stop_after = ?2, idle_remove_after = ?3 WHERE name = ?1",
            params![name.as_str(), stop_after.map(|s| s as i64), remove_after.map(|s| s as i64)],
        )?;
        found(n, "clone", name)
    }

    /// Forgets where a clone came from: after a reset it is a clone of its image.
    pub fn clear_clone_origin(&self, name: &Name) -> Result<()> {
        let n = self.conn.execute("UPDATE clones SET origin = NULL WHERE name = ?1", [name.as_str()])?;
        found(n, "clone", name)
    }

    pub fn clone_named(&self, name: &Name) -> Result<CloneRow> {
        self.conn
            .query_row("SELECT * FROM clones WHERE name = ?1", [name.as_str()], clone_row)
            .optional()?
            .ok_or_else(|| CatalogError::NotFound { kind: "clone", name: name.to_string() })
    }

    pub fn clones(&self) -> Result<Vec<CloneRow>> {
        let mut stmt = self.conn.prepare_cached("SELECT * FROM clones ORDER BY name")?;
        let rows = stmt.query_map([], clone_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn clones_of(&self, image: &Name) -> Result<Vec<Name>> {
        let mut stmt = self.conn.prepare_cached("SELECT name FROM clones WHERE image = ?1 ORDER BY name")?;
        let rows = stmt.query_map([image.as_str()], |r| name_column(r, "name"))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn delete_clone(&self, name: &Name) -> Result<()> {
        let n = self.conn.execute("DELETE FROM clones WHERE name = ?1", [name.as_str()])?;
        found(n, "clone", name)
    }

    /// The ports clones on `agent` have, so that a new clone there gets another.
    pub fn used_ports(&self, agent: &Name) -> Result<Vec<u16>> {
        let mut stmt = self.conn.prepare_cached("SELECT port FROM clones WHERE agent = ?1")?;
        let rows = stmt.query_map([agent.as_str()], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    // -------------------------------------------------------------- operations

    /// Records a new running operation and returns its id.
    pub fn insert_operation(
        &self,
        kind: OperationKind,
        target: &Name,
        team: &Name,
        message: Option<&str>,
    ) -> Result<OperationId> {
        self.conn.execute(
            "INSERT INTO operations (kind, target, team, state, message, created_at)
             VALUES (?1, ?2, ?3, 'running', ?4, ?5)",
            params![kind.as_str(), target.as_str(), team.as_str(), message, Timestamp::now().0],
        )?;
        // Keep the table bounded: the oldest ended operations go.
        self.conn.execute(
            "DELETE FROM operations WHERE state != 'running' AND id <= (SELECT max(id) FROM operations) - ?1",
            [OPERATIONS_KEPT],
        )?;
        Ok(OperationId(self.conn.last_insert_rowid() as u64))
    }

    pub fn set_operation_message(&self, id: OperationId, message: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE operations SET message = ?2 WHERE id = ?1 AND state = 'running'",
            params![id.0 as i64, message],
        )?;
        Ok(())
    }

    /// Ends an operation: succeeded, or failed with `error`.
    pub fn finish_operation(&self, id: OperationId, error: Option<&str>) -> Result<()> {
        let state = if error.is_some() { OperationState::Failed } else { OperationState::Succeeded };
        self.conn.execute(
            "UPDATE operations SET state = ?2, error = ?3, message = NULL, finished_at = ?4 WHERE id = ?1",
            params![id.0 as i64, state.as_str(), error, Timestamp::now().0],
        )?;
        Ok(())
    }

    pub fn operation(&self, id: OperationId) -> Result<OperationRow> {
        self.conn
            .query_row("SELECT * FROM operations WHERE id = ?1", [id.0 as i64], operation_row)
            .optional()?
            .ok_or_else(|| CatalogError::NotFound { kind: "operation", name: id.to_string() })
    }

    /// The most recent operations, newest first.
    pub fn operations(&self, limit: u32) -> Result<Vec<OperationRow>> {
        let mut stmt = self.conn.prepare_cached("SELECT * FROM operations ORDER BY id DESC LIMIT ?1")?;
        let rows = stmt.query_map([limit], operation_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn running_operations(&self) -> Result<Vec<OperationRow>> {
        let mut stmt = self.conn.prepare_cached("SELECT * FROM operations WHERE state = 'running' ORDER BY id")?;
        let rows = stmt.query_map([], operation_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

impl Catalog {
    // ------------------------------------------------------------- users, teams

    pub fn insert_user(&self, user: &UserRow) -> Result<()> {
        let result = self.conn.execute(
            "INSERT INTO users (name, role, created_at) VALUES (?1, ?2, ?3)",
            params![user.name.as_str(), user.role.as_str(), user.created_at.0],
        );
        constraint(result, "user", &user.name)
    }

    pub fn user(&self, name: &Name) -> Result<UserRow> {
        self.conn
            .query_row("SELECT * FROM users WHERE name = ?1", [name.as_str()], user_row)
            .optional()?
            .ok_or_else(|| CatalogError::NotFound { kind: "user", name: name.to_string() })
    }

    pub fn users(&self) -> Result<Vec<UserRow>> {
        let mut stmt = self.conn.prepare_cached("SELECT * FROM users ORDER BY name")?;
        let rows = stmt.query_map([], user_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn user_count(&self) -> Result<u64> {
        Ok(self.conn.query_row("SELECT count(*) FROM users", [], |r| r.get::<_, i64>(0))? as u64)
    }

    pub fn delete_user(&self, name: &Name) -> Result<()> {
        let n = self.conn.execute("DELETE FROM users WHERE name = ?1", [name.as_str()])?;
        found(n, "user", name)
    }

    pub fn admin_count(&self) -> Result<u64> {
        Ok(self.conn.query_row("SELECT count(*) FROM users WHERE role = 'admin'", [], |r| r.get::<_, i64>(0))? as u64)
    }

    pub fn insert_team(&self, name: &Name) -> Result<()> {
        let result = self.conn.execute(
            "INSERT INTO teams (name, created_at) VALUES (?1, ?2)",
            params![name.as_str(), Timestamp::now().0],
        );
        constraint(result, "team", name)
    }

    /// A team's creation time, or `NotFound`.
    pub fn team(&self, name: &Name) -> Result<Timestamp> {
        self.conn
            .query_row("SELECT created_at FROM teams WHERE name = ?1", [name.as_str()], |r| r.get(0))
            .optional()?
            .map(Timestamp)
            .ok_or_else(|| CatalogError::NotFound { kind: "team", name: name.to_string() })
    }

    pub fn teams(&self) -> Result<Vec<(Name, Timestamp)>> {
        let mut stmt = self.conn.prepare_cached("SELECT name, created_at FROM teams ORDER BY name")?;
        let rows = stmt.query_map([], |r| Ok((name_column(r, "name")?, Timestamp(r.get("created_at")?))))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn delete_team(&self, name: &Name) -> Result<()> {
        let n = self.conn.execute("DELETE FROM teams WHERE name = ?1", [name.as_str()])?;
        found(n, "team", name)
    }

    /// Whether any image or clone belongs to the team.
    pub fn team_in_use(&self, name: &Name) -> Result<bool> {
        Ok(self.conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM images WHERE team = ?1) OR EXISTS (SELECT 1 FROM clones WHERE team = ?1)",
            [name.as_str()],
            |r| r.get(0),
        )?)
    }

    pub fn add_member(&self, team: &Name, user: &Name) -> Result<()> {
        self.team(team)?;
        self.user(user)?;
        self.conn.execute(
            "INSERT OR IGNORE INTO memberships (team, user) VALUES (?1, ?2)",
            params![team.as_str(), user.as_str()],
        )?;
        Ok(())
    }

    pub fn remove_member(&self, team: &Name, user: &Name) -> Result<()> {
        let n = self
            .conn
            .execute("DELETE FROM memberships WHERE team = ?1 AND user = ?2", params![team.as_str(), user.as_str()])?;
        if n == 0 {
            return Err(CatalogError::NotFound { kind: "member of that team", name: user.to_string() });
        }
        Ok(())
    }

    pub fn teams_of(&self, user: &Name) -> Result<Vec<Name>> {
        let mut stmt = self.conn.prepare_cached("SELECT team FROM memberships WHERE user = ?1 ORDER BY team")?;
        let rows = stmt.query_map([user.as_str()], |r| name_column(r, "team"))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn members_of(&self, team: &Name) -> Result<Vec<Name>> {
        let mut stmt = self.conn.prepare_cached("SELECT user FROM memberships WHERE team = ?1 ORDER BY user")?;
        let rows = stmt.query_map([team.as_str()], |r| name_column(r, "user"))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    // ------------------------------------------------------------------ tokens

    /// Records a token by the hash of its secret; returns its id.
    pub fn insert_token(
        &self,
        user: &Name,
        hash: &[u8],
        description: Option<&str>,
        expires_at: Option<Timestamp>,
    ) -> Result<u64> {
        self.conn.execute(
            "INSERT INTO tokens (user, hash, description, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![user.as_str(), hash, description, Timestamp::now().0, expires_at.map(|t| t.0)],
        )?;
        Ok(self.conn.last_insert_rowid() as u64)
    }

    /// The token whose secret hashes to `hash`, whatever its state.
    pub fn token_by_hash(&self, hash: &[u8]) -> Result<Option<TokenRow>> {
        Ok(self.conn.query_row("SELECT * FROM tokens WHERE hash = ?1", [hash], token_row).optional()?)
    }

    pub fn token(&self, id: u64) -> Result<TokenRow> {
        self.conn
            .query_row("SELECT * FROM tokens WHERE id = ?1", [id as i64], token_row)
            .optional()?
            .ok_or_else(|| CatalogError::NotFound { kind: "token", name: id.to_string() })
    }

    /// Every token, or a user's.
    pub fn tokens(&self, user: Option<&Name>) -> Result<Vec<TokenRow>> {
        let mut stmt = self.conn.prepare_cached("SELECT * FROM tokens WHERE ?1 IS NULL OR user = ?1 ORDER BY id")?;
        let rows = stmt.query_map([user.map(Name::as_str)], token_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn revoke_token(&self, id: u64) -> Result<()> {
        let n = self.conn.execute(
            "UPDATE tokens SET revoked_at = coalesce(revoked_at, ?2) WHERE id = ?1",
            params![id as i64, Timestamp::now().0],
        )?;
        if n == 0 {
            return Err(CatalogError::NotFound { kind: "token", name: id.to_string() });
        }
        Ok(())
    }

    /// Notes that a token was used, at most once a minute per token.
    pub fn touch_token(&self, id: u64) -> Result<()> {
        let now = Timestamp::now().0;
        self.conn.execute(
            "UPDATE tokens SET last_used_at = ?2 WHERE id = ?1 AND (last_used_at IS NULL OR last_used_at < ?2 - 60)",
            params![id as i64, now],
        )?;
        Ok(())
    }

    // ----------------------------------------------------------------- sources

    pub fn insert_source(&self, source: &SourceRow) -> Result<()> {
        let result = self.conn.execute(
            "INSERT INTO sources (name, path, created_at) VALUES (?1, ?2, ?3)",
            params![source.name.as_str(), source.path, source.created_at.0],
        );
        constraint(result, "source", &source.name)
    }

    pub fn sources(&self) -> Result<Vec<SourceRow>> {
        let mut stmt = self.conn.prepare_cached("SELECT * FROM sources ORDER BY name")?;
        let rows = stmt.query_map([], |r| {
            Ok(SourceRow {
                name: name_column(r, "name")?,
                path: r.get("path")?,
                created_at: Timestamp(r.get("created_at")?),
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn delete_source(&self, name: &Name) -> Result<()> {
        let n = self.conn.execute("DELETE FROM sources WHERE name = ?1", [name.as_str()])?;
        found(n, "source", name)
    }

    // ------------------------------------------------------------------ agents

    pub fn insert_agent(&self, agent: &AgentRow) -> Result<()> {
        let result = self.conn.execute(
            "INSERT INTO agents (name, fingerprint, host, created_at, revoked_at, last_seen, info)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                agent.name.as_str(),
                agent.fingerprint,
                agent.host,
                agent.created_at.0,
                agent.revoked_at.map(|t| t.0),
                agent.last_seen.map(|t| t.0),
                agent.info,
            ],
        );
        constraint(result, "agent", &agent.name)
    }

    pub fn agent(&self, name: &Name) -> Result<AgentRow> {
        self.conn
            .query_row("SELECT * FROM agents WHERE name = ?1", [name.as_str()], agent_row)
            .optional()?
            .ok_or_else(|| CatalogError::NotFound { kind: "agent", name: name.to_string() })
    }

    pub fn agents(&self) -> Result<Vec<AgentRow>> {
        let mut stmt = self.conn.prepare_cached("SELECT * FROM agents ORDER BY name")?;
        let rows = stmt.query_map([], agent_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The agent whose certificate has `fingerprint`, unless it was revoked.
    pub fn agent_by_fingerprint(&self, fingerprint: &str) -> Result<Option<Name>> {
        let name: Option<String> = self
            .conn
            .query_row("SELECT name FROM agents WHERE fingerprint = ?1 AND revoked_at IS NULL", [fingerprint], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(name.and_then(|n| Name::new(&n).ok()))
    }

    pub fn revoke_agent(&self, name: &Name) -> Result<()> {
        let n = self.conn.execute(
            "UPDATE agents SET revoked_at = coalesce(revoked_at, ?2) WHERE name = ?1",
            params![name.as_str(), Timestamp::now().0],
        )?;
        found(n, "agent", name)
    }

    /// Records what an agent reported of itself, and when.
    pub fn agent_seen(&self, name: &Name, info: Option<&str>) -> Result<()> {
        self.conn.execute(
            "UPDATE agents SET last_seen = ?2, info = coalesce(?3, info) WHERE name = ?1",
            params![name.as_str(), Timestamp::now().0, info],
        )?;
        Ok(())
    }

    /// How many clones each agent has.
    pub fn clone_counts(&self) -> Result<std::collections::HashMap<Name, u64>> {
        let mut stmt = self.conn.prepare_cached("SELECT agent, count(*) FROM clones GROUP BY agent")?;
        let rows = stmt.query_map([], |r| Ok((name_column(r, "agent")?, r.get::<_, i64>(1)? as u64)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Records a new enrollment token (its hash), good until `expires_at`.
    pub fn insert_enrollment(&self, hash: &[u8], created_by: &Name, expires_at: Timestamp) -> Result<()> {
        self.conn.execute(
            "INSERT INTO enrollments (hash, created_by, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
            params![hash, created_by.as_str(), Timestamp::now().0, expires_at.0],
        )?;
        Ok(())
    }

    /// Uses an enrollment token up for `agent`: refused when it is unknown, used or expired.
    pub fn use_enrollment(&self, hash: &[u8], agent: &Name) -> Result<()> {
        let now = Timestamp::now().0;
        let n = self.conn.execute(
            "UPDATE enrollments SET used_at = ?2, used_by = ?3 WHERE hash = ?1 AND used_at IS NULL AND expires_at > ?2",
            params![hash, now, agent.as_str()],
        )?;
        if n == 0 {
            return Err(CatalogError::Refused(
                "the enrollment token is unknown, used already or expired: an administrator makes a new one with \
                 `thinclone agent token create`"
                    .into(),
            ));
        }
        Ok(())
    }

    // --------------------------------------------------------------- locations

    pub fn insert_location(&self, location: &LocationRow) -> Result<()> {
        let result = self.conn.execute(
            "INSERT INTO locations (name, path, marker, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![location.name.as_str(), location.path, location.marker, location.created_at.0],
        );
        constraint(result, "location", &location.name)
    }

    pub fn location(&self, name: &Name) -> Result<LocationRow> {
        self.conn
            .query_row("SELECT * FROM locations WHERE name = ?1", [name.as_str()], location_row)
            .optional()?
            .ok_or_else(|| CatalogError::NotFound { kind: "location", name: name.to_string() })
    }

    pub fn locations(&self) -> Result<Vec<LocationRow>> {
        let mut stmt = self.conn.prepare_cached("SELECT * FROM locations ORDER BY name")?;
        let rows = stmt.query_map([], location_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn delete_location(&self, name: &Name) -> Result<()> {
        let images: i64 =
            self.conn.query_row("SELECT count(*) FROM images WHERE location = ?1", [name.as_str()], |r| r.get(0))?;
        if images > 0 {
            return Err(CatalogError::Refused(format!(
                "location {name} holds {images} image(s); remove them first with `thinclone image rm`"
            )));
        }
        let n = self.conn.execute("DELETE FROM locations WHERE name = ?1", [name.as_str()])?;
        found(n, "location", name)
    }

    /// Records whether `agent` reaches `location` (it read the location's marker).
    pub fn set_reach(&self, location: &Name, agent: &Name, reaches: bool) -> Result<()> {
        if reaches {
            self.conn.execute(
                "INSERT OR IGNORE INTO reach (location, agent) VALUES (?1, ?2)",
                params![location.as_str(), agent.as_str()],
            )?;
        } else {
            self.conn.execute(
                "DELETE FROM reach WHERE location = ?1 AND agent = ?2",
                params![location.as_str(), agent.as_str()],
            )?;
        }
        Ok(())
    }

    /// Every (location, agent) pair where the agent reaches the location.
    pub fn reach(&self) -> Result<Vec<(Name, Name)>> {
        let mut stmt = self.conn.prepare_cached("SELECT location, agent FROM reach ORDER BY location, agent")?;
        let rows = stmt.query_map([], |r| Ok((name_column(r, "location")?, name_column(r, "agent")?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    // ---------------------------------------------------------------- activity

    // ------------------------------------------------------------------ schedules

    pub fn insert_schedule(&self, row: &ScheduleRow) -> Result<()> {
        let result = self.conn.execute(
            "INSERT INTO schedules (name, cron, keep, request, source, team, created_by, created_at, next_run_at,
                                    last_run_at, last_image, last_error)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![
                row.name.as_str(),
                row.cron,
                row.keep,
                row.request,
                row.source,
                row.team.as_str(),
                row.created_by.as_str(),
                row.created_at.0,
                row.next_run_at.0,
                row.last_run_at.map(|t| t.0),
                row.last_image.as_ref().map(Name::as_str),
                row.last_error,
            ],
        );
        constraint(result, "schedule", &row.name)
    }

    pub fn schedules(&self) -> Result<Vec<ScheduleRow>> {
        let mut stmt = self.conn.prepare_cached("SELECT * FROM schedules ORDER BY name")?;
        let rows = stmt.query_map([], schedule_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn schedule(&self, name: &Name) -> Result<ScheduleRow> {
        self.conn
            .query_row("SELECT * FROM schedules WHERE name = ?1", [name.as_str()], schedule_row)
            .optional()?
            .ok_or_else(|| CatalogError::NotFound { kind: "schedule", name: name.to_string() })
    }

    pub fn delete_schedule(&self, name: &Name) -> Result<()> {
        let n = self.conn.execute("DELETE FROM schedules WHERE name = ?1", [name.as_str()])?;
        found(n, "schedule", name)
    }

    /// Records a run (or an attempt) of a schedule, and when it runs next.
    pub fn record_schedule_run(
        &self,
        name: &Name,
        at: Timestamp,
        image: Option<&Name>,
        error: Option<&str>,
        next_run_at: Timestamp,
    ) -> Result<()> {
        let n = self.conn.execute(
            "UPDATE schedules SET last_run_at = ?2, last_image = ?3, last_error = ?4, next_run_at = ?5 WHERE name = ?1",
            params![name.as_str(), at.0, image.map(Name::as_str), error, next_run_at.0],
        )?;
        found(n, "schedule", name)
    }

    /// The images a schedule made, newest first.
    pub fn images_of_schedule(&self, schedule: &Name) -> Result<Vec<ImageRow>> {
        let mut stmt =
            self.conn.prepare_cached("SELECT * FROM images WHERE schedule = ?1 ORDER BY created_at DESC, name DESC")?;
        let rows = stmt.query_map([schedule.as_str()], image_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Moves a clone to another image (a refresh).
    pub fn set_clone_image(&self, name: &Name, image: &Name) -> Result<()> {
        let n = self.conn.execute(
            "UPDATE clones SET image = ?2, origin = NULL WHERE name = ?1",
            params![name.as_str(), image.as_str()],
        )?;
        found(n, "clone", name)
    }

    // ------------------------------------------------------------------ templates

    pub fn insert_template(&self, t: &TemplateRow) -> Result<()> {
        let result = self.conn.execute(
            "INSERT INTO templates (name, scripts, description, created_by, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![t.name.as_str(), t.scripts, t.description, t.created_by.as_str(), t.created_at.0],
        );
        constraint(result, "template", &t.name)
    }

    pub fn templates(&self) -> Result<Vec<TemplateRow>> {
        let mut stmt = self.conn.prepare_cached("SELECT * FROM templates ORDER BY name")?;
        let rows = stmt.query_map([], template_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn template(&self, name: &Name) -> Result<TemplateRow> {
        self.conn
            .query_row("SELECT * FROM templates WHERE name = ?1", [name.as_str()], template_row)
            .optional()?
            .ok_or_else(|| CatalogError::NotFound { kind: "template", name: name.to_string() })
    }

    pub fn delete_template(&self, name: &Name) -> Result<()> {
        let n = self.conn.execute("DELETE FROM templates WHERE name = ?1", [name.as_str()])?;
        found(n, "template", name)
    }

    // ------------------------------------------------------------------ webhooks

    pub fn insert_webhook(&self, hook: &WebhookRow) -> Result<u64> {
        let events = serde_json::to_string(&hook.events).map_err(|e| CatalogError::Refused(e.to_string()))?;
        self.conn.execute(
            "INSERT INTO webhooks (url, secret, events, description, created_at, created_by)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![hook.url, hook.secret, events, hook.description, hook.created_at.0, hook.created_by.as_str()],
        )?;
        Ok(self.conn.last_insert_rowid() as u64)
    }

    pub fn webhooks(&self) -> Result<Vec<WebhookRow>> {
        let mut stmt = self.conn.prepare_cached("SELECT * FROM webhooks ORDER BY id")?;
        let rows = stmt.query_map([], webhook_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn webhook(&self, id: u64) -> Result<WebhookRow> {
        self.conn
            .query_row("SELECT * FROM webhooks WHERE id = ?1", [id as i64], webhook_row)
            .optional()?
            .ok_or_else(|| CatalogError::NotFound { kind: "webhook", name: id.to_string() })
    }

    pub fn delete_webhook(&self, id: u64) -> Result<()> {
        let n = self.conn.execute("DELETE FROM webhooks WHERE id = ?1", [id as i64])?;
        if n == 0 {
            return Err(CatalogError::NotFound { kind: "webhook", name: id.to_string() });
        }
        Ok(())
    }

    /// Queues one delivery of `body` (event `event`) to each webhook in `hooks`, due now.
    pub fn queue_deliveries(&self, hooks: &[u64], event: &str, body: &str, now: Timestamp) -> Result<()> {
        for hook in hooks {
            self.conn.execute(
                "INSERT INTO deliveries (webhook, event, body, state, created_at, next_attempt_at)
                 VALUES (?1, ?2, ?3, 'pending', ?4, ?4)",
                params![*hook as i64, event, body, now.0],
            )?;
            self.conn.execute(
                "DELETE FROM deliveries WHERE webhook = ?1 AND id <= (SELECT id FROM deliveries WHERE webhook = ?1
                 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
                params![*hook as i64, DELIVERIES_KEPT],
            )?;
        }
        Ok(())
    }

    /// The pending deliveries due at `now`, oldest first.
    pub fn due_deliveries(&self, now: Timestamp, limit: u32) -> Result<Vec<DeliveryRow>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT * FROM deliveries WHERE state = 'pending' AND next_attempt_at <= ?1 ORDER BY id LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![now.0, limit], delivery_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Records an attempt of a delivery: its new state, and when the next one is due.
    pub fn record_attempt(
        &self,
        id: u64,
        state: &str,
        response_status: Option<u16>,
        error: Option<&str>,
        at: Timestamp,
        next: Option<Timestamp>,
    ) -> Result<()> {
        self.conn.execute(
            "UPDATE deliveries SET state = ?2, attempts = attempts + 1, response_status = ?3, error = ?4,
                 last_attempt_at = ?5, next_attempt_at = ?6 WHERE id = ?1",
            params![id as i64, state, response_status, error, at.0, next.map(|t| t.0)],
        )?;
        Ok(())
    }

    /// A webhook's deliveries, newest first.
    pub fn deliveries(&self, webhook: u64, limit: u32) -> Result<Vec<DeliveryRow>> {
        let mut stmt =
            self.conn.prepare_cached("SELECT * FROM deliveries WHERE webhook = ?1 ORDER BY id DESC LIMIT ?2")?;
        let rows = stmt.query_map(params![webhook as i64, limit], delivery_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Records an entry of the audit log, and drops entries older than `keep_days`.
    pub fn insert_activity(&self, entry: &ActivityRow, keep_days: u32) -> Result<()> {
        self.conn.execute(
            "INSERT INTO activity (at, actor, action, target, team, status, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                entry.at.0,
                entry.actor.as_ref().map(Name::as_str),
                entry.action,
                entry.target,
                entry.team.as_ref().map(Name::as_str),
                entry.status,
                entry.detail
            ],
        )?;
        self.conn.execute("DELETE FROM activity WHERE at < ?1", [entry.at.0 - i64::from(keep_days) * 86_400])?;
        Ok(())
    }

    /// The newest entries first, at most `limit`, from `since` on when given.
    pub fn activity(&self, since: Option<Timestamp>, limit: u32) -> Result<Vec<ActivityRow>> {
        let mut stmt =
            self.conn.prepare_cached("SELECT * FROM activity WHERE at >= coalesce(?1, 0) ORDER BY id DESC LIMIT ?2")?;
        let rows = stmt.query_map(params![since.map(|t| t.0), limit], |r| {
            Ok(ActivityRow {
                id: r.get::<_, i64>("id")? as u64,
                at: Timestamp(r.get("at")?),
                actor: r.get::<_, Option<String>>("actor")?.map(|n| Name::new(&n)).transpose().map_err(bad_column)?,
                action: r.get("action")?,
                target: r.get("target")?,
                team: r.get::<_, Option<String>>("team")?.map(|n| Name::new(&n)).transpose().map_err(bad_column)?,
                status: r.get("status")?,
                detail: r.get("detail")?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

fn user_row(row: &rusqlite::Row) -> rusqlite::Result<UserRow> {
    Ok(UserRow {
        name: name_column(row, "name")?,
        role: parsed(row, "role")?,
        created_at: Timestamp(row.get("created_at")?),
    })
}

fn token_row(row: &rusqlite::Row) -> rusqlite::Result<TokenRow> {
    let time = |c: &str| -> rusqlite::Result<Option<Timestamp>> { Ok(row.get::<_, Option<i64>>(c)?.map(Timestamp)) };
    Ok(TokenRow {
        id: row.get::<_, i64>("id")? as u64,
        user: name_column(row, "user")?,
        description: row.get("description")?,
        created_at: Timestamp(row.get("created_at")?),
        expires_at: time("expires_at")?,
        revoked_at: time("revoked_at")?,
        last_used_at: time("last_used_at")?,
    })
}

fn agent_row(row: &rusqlite::Row) -> rusqlite::Result<AgentRow> {
    let time = |c: &str| -> rusqlite::Result<Option<Timestamp>> { Ok(row.get::<_, Option<i64>>(c)?.map(Timestamp)) };
    Ok(AgentRow {
        name: name_column(row, "name")?,
        fingerprint: row.get("fingerprint")?,
        host: row.get("host")?,
        created_at: Timestamp(row.get("created_at")?),
        revoked_at: time("revoked_at")?,
        last_seen: time("last_seen")?,
        info: row.get("info")?,
    })
}

fn location_row(row: &rusqlite::Row) -> rusqlite::Result<LocationRow> {
    Ok(LocationRow {
        name: name_column(row, "name")?,
        path: row.get("path")?,
        marker: row.get("marker")?,
        created_at: Timestamp(row.get("created_at")?),
    })
}

fn is_constraint(e: &rusqlite::Error, needle: &str) -> bool {
    match e {
        rusqlite::Error::SqliteFailure(f, Some(msg)) => {
            f.code == rusqlite::ErrorCode::ConstraintViolation && msg.contains(needle)
        }
        _ => false,
    }
}

/// An insert's result, with a taken name told apart from any other constraint.
fn constraint(result: rusqlite::Result<usize>, kind: &'static str, name: &Name) -> Result<()> {
    match result {
        Ok(_) => Ok(()),
        Err(e) if is_constraint(&e, &format!("{kind}s.name")) => {
            Err(CatalogError::Exists { kind, name: name.to_string() })
        }
        Err(e) => Err(e.into()),
    }
}

fn schedule_row(row: &rusqlite::Row) -> rusqlite::Result<ScheduleRow> {
    let optional_name = |column: &str| -> rusqlite::Result<Option<Name>> {
        row.get::<_, Option<String>>(column)?.map(|n| Name::new(&n)).transpose().map_err(bad_column)
    };
    Ok(ScheduleRow {
        name: name_column(row, "name")?,
        cron: row.get("cron")?,
        keep: row.get("keep")?,
        request: row.get("request")?,
        source: row.get("source")?,
        team: name_column(row, "team")?,
        created_by: name_column(row, "created_by")?,
        created_at: Timestamp(row.get("created_at")?),
        next_run_at: Timestamp(row.get("next_run_at")?),
        last_run_at: row.get::<_, Option<i64>>("last_run_at")?.map(Timestamp),
        last_image: optional_name("last_image")?,
        last_error: row.get("last_error")?,
    })
}

fn template_row(row: &rusqlite::Row) -> rusqlite::Result<TemplateRow> {
    Ok(TemplateRow {
        name: name_column(row, "name")?,
        scripts: row.get("scripts")?,
        description: row.get("description")?,
        created_by: name_column(row, "created_by")?,
        created_at: Timestamp(row.get("created_at")?),
    })
}

fn webhook_row(row: &rusqlite::Row) -> rusqlite::Result<WebhookRow> {
    Ok(WebhookRow {
        id: row.get::<_, i64>("id")? as u64,
        url: row.get("url")?,
        secret: row.get("secret")?,
        events: serde_json::from_str(&row.get::<_, String>("events")?).map_err(bad_column)?,
        description: row.get("description")?,
        created_at: Timestamp(row.get("created_at")?),
        created_by: name_column(row, "created_by")?,
    })
}

fn delivery_row(row: &rusqlite::Row) -> rusqlite::Result<DeliveryRow> {
    Ok(DeliveryRow {
        id: row.get::<_, i64>("id")? as u64,
        webhook: row.get::<_, i64>("webhook")? as u64,
        event: row.get("event")?,
        body: row.get("body")?,
        state: row.get("state")?,
        attempts: row.get("attempts")?,
        response_status: row.get("response_status")?,
        error: row.get("error")?,
        created_at: Timestamp(row.get("created_at")?),
        last_attempt_at: row.get::<_, Option<i64>>("last_attempt_at")?.map(Timestamp),
        next_attempt_at: row.get::<_, Option<i64>>("next_attempt_at")?.map(Timestamp),
    })
}

fn found(rows: usize, kind: &'static str, name: &Name) -> Result<()> {
    if rows == 0 {
        return Err(CatalogError::NotFound { kind, name: name.to_string() });
    }
    Ok(())
}

fn bad_column(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into())
}

fn name_column(row: &rusqlite::Row, column: &str) -> rusqlite::Result<Name> {
    let text: String = row.get(column)?;
    Name::new(&text).map_err(bad_column)
}

fn parsed<T: std::str::FromStr>(row: &rusqlite::Row, column: &str) -> rusqlite::Result<T>
where
    T::Err: std::fmt::Display,
{
    let text: String = row.get(column)?;
    text.parse::<T>().map_err(|e| bad_column(format!("{column}: {e}")))
}

fn operation_id(row: &rusqlite::Row, column: &str) -> rusqlite::Result<Option<OperationId>> {
    Ok(row.get::<_, Option<i64>>(column)?.map(|id| OperationId(id as u64)))
}

fn image_status(s: &str) -> Result<ImageStatus, String> {
    ImageStatus::ALL.into_iter().find(|v| v.as_str() == s).ok_or_else(|| format!("unknown image status {s:?}"))
}

fn clone_status(s: &str) -> Result<CloneStatus, String> {
    CloneStatus::ALL.into_iter().find(|v| v.as_str() == s).ok_or_else(|| format!("unknown clone status {s:?}"))
}

fn image_row(row: &rusqlite::Row) -> rusqlite::Result<ImageRow> {
    Ok(ImageRow {
        name: name_column(row, "name")?,
        status: image_status(&row.get::<_, String>("status")?).map_err(bad_column)?,
        message: row.get("message")?,
        engine: row.get("engine")?,
        engine_version: row.get("engine_version")?,
        superuser: row.get("superuser")?,
        source: row.get("source")?,
        logical_bytes: row.get::<_, i64>("logical_bytes")? as u64,
        stored_bytes: row.get::<_, i64>("stored_bytes")? as u64,
        file_count: row.get::<_, i64>("file_count")? as u64,
        team: name_column(row, "team")?,
        created_by: row
            .get::<_, Option<String>>("created_by")?
            .map(|n| Name::new(&n))
            .transpose()
            .map_err(bad_column)?,
        created_at: Timestamp(row.get("created_at")?),
        operation: operation_id(row, "operation")?,
        location: name_column(row, "location")?,
        agent: row.get::<_, Option<String>>("agent")?.map(|n| Name::new(&n)).transpose().map_err(bad_column)?,
        mask: row.get("mask")?,
        scripts: row.get("scripts")?,
        report: row.get("report")?,
        schedule: row.get::<_, Option<String>>("schedule")?.map(|n| Name::new(&n)).transpose().map_err(bad_column)?,
    })
}

fn clone_row(row: &rusqlite::Row) -> rusqlite::Result<CloneRow> {
    Ok(CloneRow {
        name: name_column(row, "name")?,
        image: name_column(row, "image")?,
        status: clone_status(&row.get::<_, String>("status")?).map_err(bad_column)?,
        message: row.get("message")?,
        driver: parsed(row, "driver")?,
        port: row.get("port")?,
        password: row.get("password")?,
        owner: name_column(row, "owner")?,
        team: name_column(row, "team")?,
        created_at: Timestamp(row.get("created_at")?),
        operation: operation_id(row, "operation")?,
        agent: name_column(row, "agent")?,
        origin: row.get("origin")?,
        read_only: row.get("read_only")?,
        expires_at: row.get::<_, Option<i64>>("expires_at")?.map(Timestamp),
        expiry_warned: row.get("expiry_warned")?,
        protected: row.get("protected")?,
        protected_until: row.get::<_, Option<i64>>("protected_until")?.map(Timestamp),
        idle_stop_after: row.get::<_, Option<i64>>("idle_stop_after")?.map(|s| s.max(0) as u64),
        idle_remove_after: row.get::<_, Option<i64>>("idle_remove_after")?.map(|s| s.max(0) as u64),
        template: row.get::<_, Option<String>>("template")?.map(|n| Name::new(&n)).transpose().map_err(bad_column)?,
    })
}

fn operation_row(row: &rusqlite::Row) -> rusqlite::Result<OperationRow> {
    Ok(OperationRow {
        id: OperationId(row.get::<_, i64>("id")? as u64),
        kind: parsed(row, "kind")?,
        target: name_column(row, "target")?,
        team: name_column(row, "team")?,
        state: parsed(row, "state")?,
        message: row.get("message")?,
        error: row.get("error")?,
        created_at: Timestamp(row.get("created_at")?),
        finished_at: row.get::<_, Option<i64>>("finished_at")?.map(Timestamp),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Name {
        Name::new(s).unwrap()
    }

    fn image(n: &str) -> ImageRow {
        ImageRow {
            name: name(n),
            status: ImageStatus::Creating,
            message: None,
            engine: "e".into(),
            engine_version: None,
            superuser: None,
            source: "/srv/data".into(),
            logical_bytes: 0,
            stored_bytes: 0,
            file_count: 0,
            team: name("default"),
            created_by: None,
            created_at: Timestamp(1_795_300_000),
            operation: None,
            location: name("local"),
            agent: None,
            mask: None,
            scripts: None,
            report: None,
            schedule: None,
        }
    }

    fn clone(n: &str, image: &str, port: u16) -> CloneRow {
        CloneRow {
            name: name(n),
            image: name(image),
            status: CloneStatus::Creating,
            message: None,
            driver: Driver::Cowfs,
            port,
            password: "secret".into(),
            owner: name("admin"),
            team: name("default"),
            created_at: Timestamp::now(),
            operation: None,
            agent: name("local"),
            origin: None,
            read_only: false,
            expires_at: None,
            expiry_warned: false,
            protected: false,
            protected_until: None,
            idle_stop_after: None,
            idle_remove_after: None,
            template: None,
        }
    }

    #[test]
    fn rows_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let catalog = Catalog::open(&path).unwrap();
            let mut img = image("prod");
            catalog.insert_image(&img).unwrap();
            img.status = ImageStatus::Ready;
            img.engine_version = Some("15".into());
            img.logical_bytes = 600 << 20;
            catalog.update_image(&img).unwrap();
            catalog.insert_clone(&clone("alice", "prod", 7501)).unwrap();
            let op = catalog
                .insert_operation(OperationKind::CloneCreate, &name("alice"), &name("default"), Some("copying"))
                .unwrap();
            catalog.finish_operation(op, Some("it broke")).unwrap();
        }
        let catalog = Catalog::open(&path).unwrap();
        let img = catalog.image(&name("prod")).unwrap();
        assert_eq!(
            (img.status, img.engine_version.as_deref(), img.logical_bytes),
            (ImageStatus::Ready, Some("15"), 600 << 20)
        );
        assert_eq!(catalog.clones_of(&img.name).unwrap(), vec![name("alice")]);
        assert_eq!(catalog.used_ports(&name("local")).unwrap(), vec![7501]);
        assert_eq!(catalog.used_ports(&name("other")).unwrap(), Vec::<u16>::new());
        let ops = catalog.operations(10).unwrap();
        assert_eq!(ops.len(), 1);
        assert_eq!((ops[0].state, ops[0].error.as_deref()), (OperationState::Failed, Some("it broke")));
        assert!(catalog.running_operations().unwrap().is_empty());
    }

    /// Regression: every constraint violation was reported as "already exists".
    #[test]
    fn each_constraint_has_its_own_error() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(&dir.path().join("state.db")).unwrap();
        catalog.insert_image(&image("prod")).unwrap();
        assert!(matches!(catalog.insert_image(&image("prod")), Err(CatalogError::Exists { kind: "image", .. })));
        assert!(matches!(catalog.image(&name("nope")), Err(CatalogError::NotFound { .. })));
        assert!(matches!(catalog.insert_clone(&clone("c", "nope", 7000)), Err(CatalogError::NoImage(_))));
        catalog.insert_clone(&clone("c", "prod", 7000)).unwrap();
        assert!(matches!(
            catalog.insert_clone(&clone("c", "prod", 7001)),
            Err(CatalogError::Exists { kind: "clone", .. })
        ));
        let err = catalog.insert_clone(&clone("d", "prod", 7000)).unwrap_err();
        assert!(matches!(err, CatalogError::PortTaken(7000)), "{err}");
        assert_eq!(err.to_string(), "port 7000 is already taken by another clone");
        // Ports are unique per agent: another agent's clone may have the same one.
        let mut elsewhere = clone("e", "prod", 7000);
        elsewhere.agent = name("host-2");
        catalog.insert_clone(&elsewhere).unwrap();
    }

    #[test]
    fn agents_enrollments_and_locations() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(&dir.path().join("state.db")).unwrap();
        let host = name("host-1");
        let row = AgentRow {
            name: host.clone(),
            fingerprint: Some("ab".repeat(32)),
            host: None,
            created_at: Timestamp::now(),
            revoked_at: None,
            last_seen: None,
            info: None,
        };
        catalog.insert_agent(&row).unwrap();
        let again = AgentRow { fingerprint: Some("cd".repeat(32)), ..row.clone() };
        assert!(matches!(catalog.insert_agent(&again), Err(CatalogError::Exists { kind: "agent", .. })));
        assert_eq!(catalog.agent_by_fingerprint(&"ab".repeat(32)).unwrap(), Some(host.clone()));
        catalog.revoke_agent(&host).unwrap();
        assert_eq!(catalog.agent_by_fingerprint(&"ab".repeat(32)).unwrap(), None);

        catalog.insert_enrollment(b"t1", &name("admin"), Timestamp(Timestamp::now().0 + 60)).unwrap();
        catalog.insert_enrollment(b"t2", &name("admin"), Timestamp(Timestamp::now().0 - 1)).unwrap();
        catalog.use_enrollment(b"t1", &host).unwrap();
        assert!(matches!(catalog.use_enrollment(b"t1", &host), Err(CatalogError::Refused(_))), "used twice");
        assert!(matches!(catalog.use_enrollment(b"t2", &host), Err(CatalogError::Refused(_))), "expired");
        assert!(matches!(catalog.use_enrollment(b"t3", &host), Err(CatalogError::Refused(_))), "unknown");

        let shared = LocationRow {
            name: name("shared"),
            path: "/srv/images".into(),
            marker: "m".into(),
            created_at: Timestamp::now(),
        };
        catalog.insert_location(&shared).unwrap();
        catalog.set_reach(&shared.name, &host, true).unwrap();
        catalog.set_reach(&shared.name, &host, true).unwrap();
        assert_eq!(catalog.reach().unwrap(), vec![(shared.name.clone(), host.clone())]);
        let mut img = image("prod");
        img.location = shared.name.clone();
        catalog.insert_image(&img).unwrap();
        assert!(matches!(catalog.delete_location(&shared.name), Err(CatalogError::Refused(_))));
        catalog.delete_image(&img.name).unwrap();
        catalog.delete_location(&shared.name).unwrap();
        assert!(catalog.reach().unwrap().is_empty());
    }

    /// A version 3 catalog (ports unique server-wide) is brought to version 4: its clones are
    /// the embedded agent's, their ports unique per agent.
    #[test]
    fn a_version_3_catalog_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE images (name TEXT PRIMARY KEY, status TEXT NOT NULL, message TEXT, engine TEXT NOT NULL,
                     engine_version TEXT, superuser TEXT, source TEXT NOT NULL, logical_bytes INTEGER NOT NULL DEFAULT 0,
                     stored_bytes INTEGER NOT NULL DEFAULT 0, file_count INTEGER NOT NULL DEFAULT 0,
                     created_at INTEGER NOT NULL, operation INTEGER);
                 CREATE TABLE clones (name TEXT PRIMARY KEY, image TEXT NOT NULL REFERENCES images(name),
                     status TEXT NOT NULL, message TEXT, driver TEXT NOT NULL, port INTEGER NOT NULL UNIQUE,
                     password TEXT NOT NULL, created_at INTEGER NOT NULL, operation INTEGER);
                 CREATE TABLE operations (id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, target TEXT NOT NULL,
                     state TEXT NOT NULL, message TEXT, error TEXT, created_at INTEGER NOT NULL, finished_at INTEGER);
                 INSERT INTO images (name, status, engine, engine_version, superuser, source, created_at)
                     VALUES ('prod', 'ready', 'e', '15', 'root', '/srv', 1);
                 INSERT INTO clones (name, image, status, driver, port, password, created_at)
                     VALUES ('c', 'prod', 'ready', 'cowfs', 7000, 'pw', 1);
                 PRAGMA user_version = 2;",
            )
            .unwrap();
        }
        let catalog = Catalog::open(&path).unwrap();
        let c = catalog.clone_named(&name("c")).unwrap();
        assert_eq!((c.agent.as_str(), c.port, c.password.as_str()), ("local", 7000, "pw"));
        assert_eq!(catalog.image(&name("prod")).unwrap().location, name("local"));
    }

    #[test]
    fn a_transaction_lands_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let mut catalog = Catalog::open(&dir.path().join("state.db")).unwrap();
        let result = catalog.transaction(|c| {
            c.insert_image(&image("a"))?;
            c.insert_image(&image("a"))
        });
        assert!(result.is_err());
        assert!(catalog.images().unwrap().is_empty());
    }

    #[test]
    fn users_teams_tokens_and_activity() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(&dir.path().join("state.db")).unwrap();
        let alice = name("alice");
        catalog
            .insert_user(&UserRow { name: alice.clone(), role: Role::CloneUser, created_at: Timestamp::now() })
            .unwrap();
        assert!(matches!(
            catalog.insert_user(&UserRow { name: alice.clone(), role: Role::Viewer, created_at: Timestamp::now() }),
            Err(CatalogError::Exists { kind: "user", .. })
        ));
        catalog.insert_team(&name("red")).unwrap();
        catalog.add_member(&name("red"), &alice).unwrap();
        catalog.add_member(&name("red"), &alice).unwrap();
        assert!(matches!(catalog.add_member(&name("blue"), &alice), Err(CatalogError::NotFound { kind: "team", .. })));
        assert_eq!(catalog.teams_of(&alice).unwrap(), vec![name("red")]);
        let id = catalog.insert_token(&alice, b"hash-1", Some("laptop"), None).unwrap();
        assert_eq!(catalog.token_by_hash(b"hash-1").unwrap().unwrap().user, alice);
        assert!(catalog.token_by_hash(b"other").unwrap().is_none());
        catalog.revoke_token(id).unwrap();
        assert!(catalog.token(id).unwrap().revoked_at.is_some());
        assert!(matches!(catalog.revoke_token(999), Err(CatalogError::NotFound { kind: "token", .. })));
        // Removing a user removes their memberships and tokens.
        catalog.delete_user(&alice).unwrap();
        assert!(catalog.members_of(&name("red")).unwrap().is_empty());
        assert!(catalog.token_by_hash(b"hash-1").unwrap().is_none());
        // The audit log keeps what is recent.
        let entry = |at: i64| ActivityRow {
            id: 0,
            at: Timestamp(at),
            actor: Some(name("bob")),
            action: "clone.reset".into(),
            target: Some("clone c".into()),
            team: Some(name("red")),
            status: 200,
            detail: None,
        };
        let now = Timestamp::now().0;
        catalog.insert_activity(&entry(now - 100 * 86_400), 90).unwrap();
        catalog.insert_activity(&entry(now), 90).unwrap();
        let kept = catalog.activity(None, 10).unwrap();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].action, "clone.reset");
    }

    #[test]
    fn an_old_state_database_is_refused_with_a_message() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        Connection::open(&path).unwrap().pragma_update(None, "user_version", 1).unwrap();
        let err = Catalog::open(&path).err().unwrap();
        assert!(err.to_string().contains("made by an older thinclone"), "{err}");
    }
}
