//! Clones: private, writable databases made from an image.

use crate::{Name, OperationId, Timestamp};

/// How a clone's files are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Driver {
    /// A copy-on-write FUSE layer over the image: about a second, whatever the size.
    Cowfs,
    /// Files that share the image's blocks (XFS with reflink=1, btrfs): kernel speed.
    Reflink,
    /// A full copy of the image's files: the baseline.
    Copy,
}

impl Driver {
    pub const ALL: [Driver; 3] = [Driver::Cowfs, Driver::Reflink, Driver::Copy];

    pub fn as_str(self) -> &'static str {
        match self {
            Driver::Cowfs => "cowfs",
            Driver::Reflink => "reflink",
            Driver::Copy => "copy",
        }
    }
}

impl std::fmt::Display for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Driver {
    type Err = String;
    fn from_str(s: &str) -> Result<Driver, String> {
        Driver::ALL
            .into_iter()
            .find(|d| d.as_str() == s)
            .ok_or_else(|| format!("unknown driver {s:?}: use cowfs, reflink or copy"))
    }
}

/// Where a clone is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CloneStatus {
    /// Its storage is being made and its server started for the first time.
    Creating,
    /// Its server is starting.
    Starting,
    /// It accepts connections.
    Ready,
    /// Its server is stopping.
    Stopping,
    /// Its server is stopped; its data is kept.
    Stopped,
    /// Going back to its image's state.
    Resetting,
    /// A checkpoint of it is being made; its server runs on (paused for a moment).
    Checkpointing,
    /// Going back to one of its checkpoints.
    Reverting,
    /// Being removed.
    Deleting,
    /// It runs, but something is wrong (its disk is full, its storage or server died and is
    /// being repaired); `message` says what.
    Degraded,
    /// Its server could not start, or an operation on it failed; `message` says why. Its
    /// data is kept: start it again, or remove it.
    Failed,
    /// Its agent is unreachable: how it is now is not known until the agent is back.
    Unknown,
}

impl CloneStatus {
    pub const ALL: [CloneStatus; 12] = [
        CloneStatus::Creating,
        CloneStatus::Starting,
        CloneStatus::Ready,
        CloneStatus::Stopping,
        CloneStatus::Stopped,
        CloneStatus::Resetting,
        CloneStatus::Checkpointing,
        CloneStatus::Reverting,
        CloneStatus::Deleting,
        CloneStatus::Degraded,
        CloneStatus::Failed,
        CloneStatus::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CloneStatus::Creating => "creating",
            CloneStatus::Starting => "starting",
            CloneStatus::Ready => "ready",
            CloneStatus::Stopping => "stopping",
            CloneStatus::Stopped => "stopped",
            CloneStatus::Resetting => "resetting",
            CloneStatus::Checkpointing => "checkpointing",
            CloneStatus::Reverting => "reverting",
            CloneStatus::Deleting => "deleting",
            CloneStatus::Degraded => "degraded",
            CloneStatus::Failed => "failed",
            CloneStatus::Unknown => "unknown",
        }
    }

    /// Whether an operation is under way on the clone.
    pub fn is_transitional(self) -> bool {
        matches!(
            self,
            CloneStatus::Creating
                | CloneStatus::Starting
                | CloneStatus::Stopping
                | CloneStatus::Resetting
                | CloneStatus::Checkpointing
                | CloneStatus::Reverting
                | CloneStatus::Deleting
        )
    }
}

impl std::fmt::Display for CloneStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A clone, as `GET /v1/clones/{name}` answers it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Clone {
    pub name: Name,
    pub image: Name,
    pub status: CloneStatus,
    /// Why it failed, or which step is under way.
    pub message: Option<String>,
    pub driver: Driver,
    /// The id of the database engine, as its engine names itself.
    pub engine: String,
    pub engine_version: String,
    /// The agent it runs on.
    pub agent: Name,
    /// The address clients connect to: its agent's, as clients reach it.
    pub host: String,
    pub port: u16,
    /// The database user the connection URL logs in as.
    pub user: String,
    /// A connection URL with the clone's credentials; given only to those who may use the
    /// clone (its owner and administrators).
    pub url: Option<String>,
    /// Who made it, and may use it.
    pub owner: Name,
    /// The team it belongs to (its image's).
    pub team: Name,
    /// The disk the clone uses beyond its image, as last measured.
    pub stored_bytes: u64,
    /// The size of its image's files.
    pub logical_bytes: u64,
    /// When `stored_bytes` was measured; sizes are measured in the background.
    pub sizes_at: Option<Timestamp>,
    pub created_at: Timestamp,
    /// The operation under way on it, if any.
    pub operation: Option<OperationId>,
    /// The clone and checkpoint it was made from (`CLONE@CHECKPOINT`), for a branch or a
    /// snapshot view; `None` for a clone of an image.
    pub origin: Option<String>,
    /// A snapshot view: its server serves reads and refuses every write.
    pub read_only: bool,
    /// When it is removed, unless protected then; `None`: never.
    pub expires_at: Option<Timestamp>,
    /// Protected: neither expiry, the idle policy nor `DELETE` removes it.
    pub protected: bool,
    /// When its protection lapses; `None` while protected: never.
    pub protected_until: Option<Timestamp>,
    /// Since when no client has been connected to it (as its agent last saw), while none is.
    pub idle_since: Option<Timestamp>,
    /// Its idle policy; a `None` field takes the server's.
    pub idle: IdlePolicy,
    /// The template it was made with; `clone refresh` runs its scripts again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<Name>,
}

/// What happens to a clone no client uses: after `stop_after` seconds without a connection
/// its server is stopped, after `remove_after` seconds it is removed (unless protected). `0`
/// turns a step off; `None` takes the server's setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IdlePolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_after: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remove_after: Option<u64>,
}

/// `POST /v1/clones/{name}/expiry`: when the clone is removed. Neither field: never.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetExpiry {
    /// Seconds from now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
}

/// `POST /v1/clones/{name}/protect`: keep the clone from expiry, the idle policy's removal
/// and `DELETE`, for `for_seconds` (a lease) or until unprotected.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Protect {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_seconds: Option<u64>,
}

/// `POST /v1/clones`: make a clone of an image and start it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateClone {
    pub name: Name,
    pub image: Name,
    /// How its files are stored; the server's default when not given (reflink where the
    /// filesystem shares blocks, cowfs elsewhere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<Driver>,
    /// The agent to run it on: one that reaches its image's location. When not given, the
    /// server picks one that does, has the image's engine version, room and free ports, and
    /// runs the fewest clones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<Name>,
    /// Remove it this many seconds after it is made (unless protected then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<u64>,
    /// Remove it at this time (unless protected then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    /// A clone template whose scripts run on it before it is handed out; one that fails
    /// fails the creation, and nothing of the clone is left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<Name>,
}

/// `POST /v1/clones/{name}/branches`: make a new clone from one of this clone's checkpoints.
/// It shares the checkpoint's storage as a clone shares its image's, runs on the same agent,
/// and is the caller's; the clone it came from cannot be removed, reset or reverted past
/// that checkpoint while a cowfs branch depends on it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBranch {
    /// The new clone's name.
    pub name: Name,
    /// The checkpoint to start from; when not given, a new checkpoint of the clone's state
    /// now (the next free `cpN`) is made first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<Name>,
    /// A snapshot view: a clone whose server refuses every write, to read the checkpoint's
    /// data alongside the live clone.
    #[serde(default)]
    pub read_only: bool,
    /// Remove it this many seconds after it is made (unless protected then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<u64>,
    /// Remove it at this time (unless protected then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
}

/// A checkpoint: a clone's state at a moment, kept so that the clone can go back to it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Checkpoint {
    /// Its name, unique among the clone's checkpoints (`cp1`, `cp2`, … unless given).
    pub name: Name,
    pub message: Option<String>,
    pub created_at: Timestamp,
    /// The disk it keeps for itself: what the clone changed before it (cowfs), or its own
    /// copy's unshared bytes (reflink, copy).
    pub stored_bytes: u64,
}

/// `POST /v1/clones/{name}/checkpoints`: record a clone's state now. The clone's server keeps
/// running and its connections stay open; it is paused while its files are captured.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCheckpoint {
    /// Its name; the next free `cpN` when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Name>,
    /// What it is for, up to 1000 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// `POST /v1/clones/{name}/revert`: return a clone to a checkpoint. Checkpoints made after
/// that one are removed; the clone's server restarts on the same port with the same
/// credentials.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevertClone {
    /// The checkpoint; the latest when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Name>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_refused() {
        let err = serde_json::from_str::<CreateClone>(r#"{"name":"a","image":"b","drvier":"copy"}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `drvier`"), "{err}");
        let err = serde_json::from_str::<crate::CreateImage>(r#"{"name":"a","form_dir":"/x"}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `form_dir`"), "{err}");
    }

    #[test]
    fn names_are_checked_when_read() {
        let err = serde_json::from_str::<CreateClone>(r#"{"name":"../x","image":"b"}"#).unwrap_err();
        assert!(err.to_string().contains("invalid name"), "{err}");
    }

    #[test]
    fn every_status_is_listed_once() {
        for s in CloneStatus::ALL {
            // An exhaustive match: a new status fails to compile here until it is listed.
            let listed = match s {
                CloneStatus::Creating
                | CloneStatus::Starting
                | CloneStatus::Ready
                | CloneStatus::Stopping
                | CloneStatus::Stopped
                | CloneStatus::Resetting
                | CloneStatus::Checkpointing
                | CloneStatus::Reverting
                | CloneStatus::Deleting
                | CloneStatus::Degraded
                | CloneStatus::Failed
                | CloneStatus::Unknown => CloneStatus::ALL.iter().filter(|t| **t == s).count(),
            };
            assert_eq!(listed, 1, "{s}");
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }

    #[test]
    fn drivers_parse_and_print() {
        for d in Driver::ALL {
            assert_eq!(d.as_str().parse::<Driver>().unwrap(), d);
            assert_eq!(serde_json::to_value(d).unwrap(), d.as_str());
        }
        assert!("zfs".parse::<Driver>().unwrap_err().contains("use cowfs, reflink or copy"));
    }
}
