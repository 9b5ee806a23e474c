//! Images: immutable, point-in-time copies of a database's files.

use crate::{Name, OperationId, Progress, Timestamp};

/// Where an image is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ImageStatus {
    /// Being copied and prepared; `progress` says how far.
    Creating,
    /// Sealed: it can be cloned, and its files never change again.
    Ready,
    /// Making it failed; `message` says why. Nothing of it is left but this record.
    Failed,
    /// Being removed.
    Deleting,
}

impl ImageStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ImageStatus::Creating => "creating",
            ImageStatus::Ready => "ready",
            ImageStatus::Failed => "failed",
            ImageStatus::Deleting => "deleting",
        }
    }
}

impl std::fmt::Display for ImageStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An image, as `GET /v1/images/{name}` answers it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Image {
    pub name: Name,
    pub status: ImageStatus,
    /// Why the image failed, or which step is under way while it is being made.
    pub message: Option<String>,
    /// The id of the database engine whose files these are, as its engine names itself.
    pub engine: String,
    /// The engine's major version, once known.
    pub engine_version: Option<String>,
    /// Where it was made from: a directory, or a connection URL without its password.
    pub source: String,
    /// The size of its files as the database sees them.
    pub logical_bytes: u64,
    /// The disk its files occupy.
    pub stored_bytes: u64,
    pub file_count: u64,
    /// How many clones are made from it.
    pub clone_count: u64,
    pub created_at: Timestamp,
    /// The operation that is making it, while it is `creating`.
    pub operation: Option<OperationId>,
    /// How far the copy has got, while it is `creating`.
    pub progress: Option<Progress>,
}

/// `POST /v1/images`: make an image from exactly one source.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateImage {
    pub name: Name,
    /// A data directory of a stopped server, or a base backup, on the server's host (an
    /// absolute path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(examples("/srv/backups/prod"))]
    pub from_dir: Option<String>,
    /// A connection URL of a running server to take a consistent copy of. Its password is
    /// used, never stored or shown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(examples("scheme://repl:secret@db.example:5432/main"))]
    pub from_url: Option<String>,
    /// With `from_dir`: the directory is a crash-consistent snapshot of a running server
    /// (an LVM, ZFS or cloud-disk snapshot), so a server's lock file in it is expected and
    /// recovery runs when the image is made. Without it, a directory whose server is running
    /// is refused, since copying it would give a torn copy.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub snapshot: bool,
}
