//! The daemon's state: images and clones, in an embedded SQLite database in the data
//! directory (`state.db`).
//!
//! SQLite runs in WAL mode with `synchronous=FULL`, so a change is durable once its statement
//! returns, and a kill of the daemon loses nothing it has answered. The schema's version is
//! SQLite's `user_version`; `migrate` brings an older file up to date.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use crate::Name;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{kind} {name} already exists")]
    Exists { kind: &'static str, name: String },
    #[error("no {kind} named {name}")]
    NotFound { kind: &'static str, name: String },
    #[error("state database: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Where an image or a clone is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Being made; a long operation is under way.
    Creating,
    /// Usable: an image can be cloned; a clone accepts SQL.
    Ready,
    /// A clone whose server is stopped.
    Stopped,
    /// Making it failed; `message` says why.
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Creating => "creating",
            Status::Ready => "ready",
            Status::Stopped => "stopped",
            Status::Failed => "failed",
        }
    }

    fn parse(s: &str) -> rusqlite::Result<Status> {
        Ok(match s {
            "creating" => Status::Creating,
            "ready" => Status::Ready,
            "stopped" => Status::Stopped,
            "failed" => Status::Failed,
            other => {
                return Err(rusqlite::Error::FromSqlConversionFailure(
                    0,
                    rusqlite::types::Type::Text,
                    format!("unknown status {other:?}").into(),
                ))
            }
        })
    }
}

/// A point in time, shown as RFC 3339 (UTC) and stored as Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn now() -> Timestamp {
        Timestamp(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let t = UNIX_EPOCH + Duration::from_secs(self.0.max(0) as u64);
        s.collect_str(&humantime::format_rfc3339_seconds(t))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Image {
    pub name: Name,
    pub status: Status,
    /// Why the image failed, or what is under way.
    pub message: Option<String>,
    pub pg_version: Option<u32>,
    pub logical_bytes: u64,
    pub stored_bytes: u64,
    pub file_count: u64,
    /// Where it was made from: a directory or a connection URL without its password.
    pub source: String,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Clone {
    pub name: Name,
    pub image: Name,
    pub status: Status,
    pub message: Option<String>,
    pub driver: String,
    pub port: u16,
    /// The generated password of the clone's superuser.
    pub password: String,
    pub created_at: Timestamp,
}

pub struct Store {
    conn: Connection,
}

const SCHEMA_VERSION: i64 = 1;

impl Store {
    pub fn open(path: &Path) -> Result<Store> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(Duration::from_secs(10))?;
        let store = Store { conn };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&self) -> Result<()> {
        let version: i64 = self.conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version < 1 {
            self.conn.execute_batch(
                "BEGIN;
                 CREATE TABLE images (
                     name TEXT PRIMARY KEY,
                     status TEXT NOT NULL,
                     message TEXT,
                     pg_version INTEGER,
                     logical_bytes INTEGER NOT NULL DEFAULT 0,
                     stored_bytes INTEGER NOT NULL DEFAULT 0,
                     file_count INTEGER NOT NULL DEFAULT 0,
                     source TEXT NOT NULL,
                     created_at INTEGER NOT NULL
                 );
                 CREATE TABLE clones (
                     name TEXT PRIMARY KEY,
                     image TEXT NOT NULL REFERENCES images(name),
                     status TEXT NOT NULL,
                     message TEXT,
                     driver TEXT NOT NULL,
                     port INTEGER NOT NULL UNIQUE,
                     password TEXT NOT NULL,
                     created_at INTEGER NOT NULL
                 );
                 PRAGMA user_version = 1;
                 COMMIT;",
            )?;
        }
        debug_assert_eq!(SCHEMA_VERSION, 1);
        Ok(())
    }

    pub fn insert_image(&self, image: &Image) -> Result<()> {
        let result = self.conn.execute(
            "INSERT INTO images (name, status, message, pg_version, logical_bytes, stored_bytes, file_count, source, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                image.name.as_str(),
                image.status.as_str(),
                image.message,
                image.pg_version,
                image.logical_bytes as i64,
                image.stored_bytes as i64,
                image.file_count as i64,
                image.source,
                image.created_at.0
            ],
        );
        exists_or(result, "image", &image.name)
    }

    pub fn update_image(&self, image: &Image) -> Result<()> {
        let n = self.conn.execute(
            "UPDATE images SET status = ?2, message = ?3, pg_version = ?4, logical_bytes = ?5, stored_bytes = ?6,
             file_count = ?7 WHERE name = ?1",
            params![
                image.name.as_str(),
                image.status.as_str(),
                image.message,
                image.pg_version,
                image.logical_bytes as i64,
                image.stored_bytes as i64,
                image.file_count as i64
            ],
        )?;
        found(n, "image", &image.name)
    }

    pub fn image(&self, name: &Name) -> Result<Image> {
        self.conn
            .query_row("SELECT * FROM images WHERE name = ?1", [name.as_str()], image_row)
            .optional()?
            .ok_or_else(|| StoreError::NotFound { kind: "image", name: name.to_string() })
    }

    pub fn images(&self) -> Result<Vec<Image>> {
        let mut stmt = self.conn.prepare("SELECT * FROM images ORDER BY name")?;
        let rows = stmt.query_map([], image_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn delete_image(&self, name: &Name) -> Result<()> {
        let n = self.conn.execute("DELETE FROM images WHERE name = ?1", [name.as_str()])?;
        found(n, "image", name)
    }

    pub fn insert_clone(&self, clone: &Clone) -> Result<()> {
        let result = self.conn.execute(
            "INSERT INTO clones (name, image, status, message, driver, port, password, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                clone.name.as_str(),
                clone.image.as_str(),
                clone.status.as_str(),
                clone.message,
                clone.driver,
                clone.port,
                clone.password,
                clone.created_at.0
            ],
        );
        exists_or(result, "clone", &clone.name)
    }

    pub fn update_clone(&self, clone: &Clone) -> Result<()> {
        let n = self.conn.execute(
            "UPDATE clones SET status = ?2, message = ?3 WHERE name = ?1",
            params![clone.name.as_str(), clone.status.as_str(), clone.message],
        )?;
        found(n, "clone", &clone.name)
    }

    pub fn clone_named(&self, name: &Name) -> Result<Clone> {
        self.conn
            .query_row("SELECT * FROM clones WHERE name = ?1", [name.as_str()], clone_row)
            .optional()?
            .ok_or_else(|| StoreError::NotFound { kind: "clone", name: name.to_string() })
    }

    pub fn clones(&self) -> Result<Vec<Clone>> {
        let mut stmt = self.conn.prepare("SELECT * FROM clones ORDER BY name")?;
        let rows = stmt.query_map([], clone_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn clones_of(&self, image: &Name) -> Result<Vec<Clone>> {
        let mut stmt = self.conn.prepare("SELECT * FROM clones WHERE image = ?1 ORDER BY name")?;
        let rows = stmt.query_map([image.as_str()], clone_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn delete_clone(&self, name: &Name) -> Result<()> {
        let n = self.conn.execute("DELETE FROM clones WHERE name = ?1", [name.as_str()])?;
        found(n, "clone", name)
    }

    /// The ports clones have, so that a new clone gets another.
    pub fn used_ports(&self) -> Result<Vec<u16>> {
        let mut stmt = self.conn.prepare("SELECT port FROM clones")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

fn exists_or(result: rusqlite::Result<usize>, kind: &'static str, name: &Name) -> Result<()> {
    match result {
        Ok(_) => Ok(()),
        Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::ConstraintViolation => {
            Err(StoreError::Exists { kind, name: name.to_string() })
        }
        Err(e) => Err(e.into()),
    }
}

fn found(rows: usize, kind: &'static str, name: &Name) -> Result<()> {
    if rows == 0 {
        return Err(StoreError::NotFound { kind, name: name.to_string() });
    }
    Ok(())
}

fn name_column(row: &rusqlite::Row, column: &str) -> rusqlite::Result<Name> {
    let text: String = row.get(column)?;
    Name::new(&text).map_err(|e| rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into()))
}

fn image_row(row: &rusqlite::Row) -> rusqlite::Result<Image> {
    Ok(Image {
        name: name_column(row, "name")?,
        status: Status::parse(&row.get::<_, String>("status")?)?,
        message: row.get("message")?,
        pg_version: row.get("pg_version")?,
        logical_bytes: row.get::<_, i64>("logical_bytes")? as u64,
        stored_bytes: row.get::<_, i64>("stored_bytes")? as u64,
        file_count: row.get::<_, i64>("file_count")? as u64,
        source: row.get("source")?,
        created_at: Timestamp(row.get("created_at")?),
    })
}

fn clone_row(row: &rusqlite::Row) -> rusqlite::Result<Clone> {
    Ok(Clone {
        name: name_column(row, "name")?,
        image: name_column(row, "image")?,
        status: Status::parse(&row.get::<_, String>("status")?)?,
        message: row.get("message")?,
        driver: row.get("driver")?,
        port: row.get("port")?,
        password: row.get("password")?,
        created_at: Timestamp(row.get("created_at")?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(name: &str) -> Image {
        Image {
            name: Name::new(name).unwrap(),
            status: Status::Creating,
            message: None,
            pg_version: None,
            logical_bytes: 0,
            stored_bytes: 0,
            file_count: 0,
            source: "/srv/data".into(),
            created_at: Timestamp(1_795_300_000),
        }
    }

    fn clone(name: &str, image: &str, port: u16) -> Clone {
        Clone {
            name: Name::new(name).unwrap(),
            image: Name::new(image).unwrap(),
            status: Status::Creating,
            message: None,
            driver: "cowfs".into(),
            port,
            password: "secret".into(),
            created_at: Timestamp::now(),
        }
    }

    #[test]
    fn images_and_clones_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let store = Store::open(&path).unwrap();
            let mut img = image("prod");
            store.insert_image(&img).unwrap();
            img.status = Status::Ready;
            img.pg_version = Some(15);
            img.logical_bytes = 600 << 20;
            store.update_image(&img).unwrap();
            store.insert_clone(&clone("alice", "prod", 7501)).unwrap();
        }
        let store = Store::open(&path).unwrap();
        let img = store.image(&Name::new("prod").unwrap()).unwrap();
        assert_eq!((img.status, img.pg_version, img.logical_bytes), (Status::Ready, Some(15), 600 << 20));
        assert_eq!(store.clones_of(&img.name).unwrap().len(), 1);
        assert_eq!(store.used_ports().unwrap(), vec![7501]);
        let json = serde_json::to_value(&img).unwrap();
        assert_eq!(json["created_at"], "2026-11-21T22:26:40Z");
        assert_eq!(json["status"], "ready");
    }

    #[test]
    fn duplicates_and_unknown_names_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db")).unwrap();
        store.insert_image(&image("prod")).unwrap();
        assert!(matches!(store.insert_image(&image("prod")), Err(StoreError::Exists { .. })));
        assert!(matches!(store.image(&Name::new("nope").unwrap()), Err(StoreError::NotFound { .. })));
        // A clone needs its image.
        assert!(store.insert_clone(&clone("c", "nope", 7000)).is_err());
        store.insert_clone(&clone("c", "prod", 7000)).unwrap();
        assert!(matches!(store.insert_clone(&clone("c", "prod", 7001)), Err(StoreError::Exists { .. })));
    }
}
