//! A clone's record on its agent: `clones/<name>/clone.json`, replaced whole and durably
//! (sys::crashsafe) at every change.
//!
//! It holds what the agent needs to run the clone without the server (after a restart):
//! its image, engine, driver, port and credentials, whether it is meant to run, and the
//! **intent** of an operation under way. An operation writes its intent before it acts and
//! clears it when done, so that recovery after a crash at any point knows what was going on
//! and finishes or rolls it back:
//!
//! | intent | recovery |
//! |---|---|
//! | create | the clone was never handed out: everything of it is removed |
//! | start  | the start is tried again |
//! | stop   | the clone is stopped |
//! | reset  | an interrupted copy is finished or undone, then the reset runs again |
//! | delete | the removal is finished |
//! | refresh | the clone is remade on the new image again |
//!
//! A clone that has ever been ready is never removed by recovery, only by a delete.

use std::io;
use std::path::{Path, PathBuf};

use api::{Driver, Name};
use serde::{Deserialize, Serialize};

/// Whether a clone is meant to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Desired {
    Running,
    Stopped,
}

/// An operation under way on a clone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Intent {
    Create,
    Start,
    Stop,
    Reset,
    Delete,
    /// A checkpoint is being taken: its server may be paused.
    Checkpoint,
    /// Going back to the checkpoint `reverting_to`.
    Revert,
    /// Being remade on the image `refreshing_to`.
    Refresh,
}

/// A checkpoint of a clone: its files are in `checkpoints/<name>/` of the clone's directory,
/// and for cowfs in the frozen layer `layer` of its layer stack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointRecord {
    pub name: Name,
    pub message: Option<String>,
    pub created_at: api::Timestamp,
    /// The cowfs layer frozen by it.
    pub layer: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloneRecord {
    pub name: Name,
    pub image: Name,
    pub engine: String,
    pub version: String,
    pub superuser: String,
    pub driver: Driver,
    pub port: u16,
    /// The password of the superuser; the file is readable by root (or the agent's user) only.
    pub password: String,
    pub desired: Desired,
    /// Whether it has ever accepted connections. Recovery never removes such a clone.
    pub ever_ready: bool,
    pub intent: Option<Intent>,
    /// Why its last start failed, while it is meant to run but does not.
    pub failure: Option<String>,
    /// The uid (and gid) its server runs as, its own; `None` for a clone that runs as the
    /// agent's OS user (an agent that is not root, or a record older than clone isolation).
    #[serde(default)]
    pub uid: Option<u32>,
    /// The role its URL logs in as when that is not the superuser (`CloneRole::Owner`).
    #[serde(default)]
    pub owner: Option<String>,
    /// Its uid changed (it had none, or another clone claimed it): its files are given to
    /// the new uid at its next start.
    #[serde(default)]
    pub chown_pending: bool,
    /// Its image's directory, in the image's location. `None` in a record made before images
    /// had locations: `images/<image>` of the agent's data directory.
    #[serde(default)]
    pub image_dir: Option<PathBuf>,
    /// Its checkpoints, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checkpoints: Vec<CheckpointRecord>,
    /// The checkpoint an interrupted revert goes back to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reverting_to: Option<Name>,
    /// The image an interrupted refresh remakes the clone on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refreshing_to: Option<api::agent::RefreshTarget>,
    /// The clone and checkpoint a branch or snapshot view was made from. A cowfs branch
    /// reads that clone's frozen layers, which must stay while it exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<api::agent::CloneOrigin>,
    /// A snapshot view: its server refuses writes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
}

impl CloneRecord {
    /// Its file's name in the clone's directory.
    pub const FILE: &'static str = "clone.json";

    pub fn path(clone_dir: &Path) -> PathBuf {
        clone_dir.join(Self::FILE)
    }

    pub fn load(clone_dir: &Path) -> io::Result<Option<CloneRecord>> {
        sys::crashsafe::read_json(&Self::path(clone_dir))
    }

    /// Replaces the record durably; the directory must exist.
    pub fn save(&self, clone_dir: &Path) -> io::Result<()> {
        let path = Self::path(clone_dir);
        let mut bytes = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        bytes.push(b'\n');
        // Only root (or the agent's own user) may read the password, from the first byte on.
        sys::crashsafe::replace_file_mode(&path, &bytes, 0o600)?;
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_privately() {
        let dir = tempfile::tempdir().unwrap();
        let record = CloneRecord {
            name: Name::new("a").unwrap(),
            image: Name::new("img").unwrap(),
            engine: "e".into(),
            version: "1".into(),
            superuser: "root".into(),
            driver: Driver::Cowfs,
            port: 7000,
            password: "pw".into(),
            desired: Desired::Running,
            ever_ready: false,
            intent: Some(Intent::Create),
            failure: None,
            uid: Some(2_000_000_000),
            owner: None,
            chown_pending: false,
            image_dir: Some(PathBuf::from("/srv/images/img")),
            checkpoints: Vec::new(),
            reverting_to: None,
            refreshing_to: None,
            origin: None,
            read_only: false,
        };
        record.save(dir.path()).unwrap();
        assert_eq!(CloneRecord::load(dir.path()).unwrap(), Some(record));
        let mode = std::fs::metadata(CloneRecord::path(dir.path())).unwrap().permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600);
    }

    /// A record written before clones had uids of their own reads as one without.
    #[test]
    fn an_older_record_has_no_uid() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            CloneRecord::path(dir.path()),
            r#"{"name":"a","image":"img","engine":"e","version":"1","superuser":"root",
                "driver":"cowfs","port":7000,"password":"pw","desired":"running","ever_ready":true,
                "intent":null,"failure":null}"#,
        )
        .unwrap();
        let record = CloneRecord::load(dir.path()).unwrap().unwrap();
        assert_eq!((record.uid, record.owner, record.chown_pending), (None, None, false));
    }
}
