//! Operations: what the server is doing, or did, on an image or a clone. Every request that
//! changes something answers with one; `GET /v1/operations/{id}` follows it to its end.

use std::fmt;
use std::str::FromStr;

use crate::{Name, Timestamp};

/// An operation's id: a positive number, shown as `op-<n>` nowhere but in messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct OperationId(pub u64);

impl utoipa::PartialSchema for OperationId {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::Integer)
            .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(utoipa::openapi::KnownFormat::Int64)))
            .minimum(Some(1))
            .description(Some("An operation's id"))
            .into()
    }
}

impl utoipa::ToSchema for OperationId {}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid operation id {0:?}: use the positive number an answer gave")]
pub struct InvalidOperationId(pub String);

impl FromStr for OperationId {
    type Err = InvalidOperationId;
    fn from_str(s: &str) -> Result<OperationId, InvalidOperationId> {
        // Digits only: `u64::from_str` also takes a leading `+`, which no answer gives.
        let digits = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        match s.parse::<u64>() {
            Ok(n) if digits && n > 0 && n <= i64::MAX as u64 => Ok(OperationId(n)),
            _ => Err(InvalidOperationId(s.chars().take(40).collect())),
        }
    }
}

impl fmt::Display for OperationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OperationKind {
    ImageCreate,
    ImageDelete,
    CloneCreate,
    CloneStart,
    CloneStop,
    CloneReset,
    CloneDelete,
    CloneCheckpoint,
    CloneRevert,
    CheckpointDelete,
    CloneRefresh,
}

impl OperationKind {
    pub const ALL: [OperationKind; 11] = [
        OperationKind::ImageCreate,
        OperationKind::ImageDelete,
        OperationKind::CloneCreate,
        OperationKind::CloneStart,
        OperationKind::CloneStop,
        OperationKind::CloneReset,
        OperationKind::CloneDelete,
        OperationKind::CloneCheckpoint,
        OperationKind::CloneRevert,
        OperationKind::CheckpointDelete,
        OperationKind::CloneRefresh,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OperationKind::ImageCreate => "image_create",
            OperationKind::ImageDelete => "image_delete",
            OperationKind::CloneCreate => "clone_create",
            OperationKind::CloneStart => "clone_start",
            OperationKind::CloneStop => "clone_stop",
            OperationKind::CloneReset => "clone_reset",
            OperationKind::CloneDelete => "clone_delete",
            OperationKind::CloneCheckpoint => "clone_checkpoint",
            OperationKind::CloneRevert => "clone_revert",
            OperationKind::CheckpointDelete => "checkpoint_delete",
            OperationKind::CloneRefresh => "clone_refresh",
        }
    }

    pub fn target_kind(self) -> TargetKind {
        match self {
            OperationKind::ImageCreate | OperationKind::ImageDelete => TargetKind::Image,
            _ => TargetKind::Clone,
        }
    }
}

impl fmt::Display for OperationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OperationKind {
    type Err = String;
    fn from_str(s: &str) -> Result<OperationKind, String> {
        OperationKind::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| format!("unknown operation kind {s:?}"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OperationState {
    Running,
    Succeeded,
    /// It ended without doing what was asked; `error` says why, and whatever it had
    /// half-done was undone.
    Failed,
}

impl OperationState {
    pub const ALL: [OperationState; 3] = [OperationState::Running, OperationState::Succeeded, OperationState::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            OperationState::Running => "running",
            OperationState::Succeeded => "succeeded",
            OperationState::Failed => "failed",
        }
    }

    pub fn is_finished(self) -> bool {
        self != OperationState::Running
    }
}

impl FromStr for OperationState {
    type Err = String;
    fn from_str(s: &str) -> Result<OperationState, String> {
        OperationState::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown operation state {s:?}"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TargetKind {
    Image,
    Clone,
}

/// What an operation works on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Target {
    pub kind: TargetKind,
    pub name: Name,
}

/// How far a long copy has got. `total_bytes` is an estimate and may grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Progress {
    pub done_bytes: u64,
    pub total_bytes: u64,
}

/// An operation, as `GET /v1/operations/{id}` answers it, and as every request that changes
/// something answers: `202 Accepted` while it is still running, `200 OK` once it has ended.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Operation {
    pub id: OperationId,
    pub kind: OperationKind,
    pub target: Target,
    pub state: OperationState,
    /// The step under way while it runs.
    pub message: Option<String>,
    pub progress: Option<Progress>,
    /// Why it failed.
    pub error: Option<String>,
    pub created_at: Timestamp,
    pub finished_at: Option<Timestamp>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_strictly() {
        assert_eq!("12".parse::<OperationId>().unwrap(), OperationId(12));
        for bad in ["0", "-1", "+1", " 1", "x", "", "99999999999999999999", "9223372036854775808"] {
            assert!(bad.parse::<OperationId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn kinds_round_trip() {
        for k in OperationKind::ALL {
            assert_eq!(k.as_str().parse::<OperationKind>().unwrap(), k);
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
        }
    }
}
