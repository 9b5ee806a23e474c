//! Schedules: images made again and again from the same source on a cron schedule, the
//! newest few kept.

use crate::{ImageScript, MaskRule, Name, Timestamp};

/// A schedule, as `GET /v1/schedules/{name}` answers it. Its source's password is used at
/// each run, never shown.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Schedule {
    pub name: Name,
    /// Five fields (minute, hour, day of month, month, day of week), in UTC:
    /// `0 2 * * *` is every night at 02:00 UTC.
    pub cron: String,
    /// How many of its ready images are kept; older ones go once no clone uses them.
    pub keep: u32,
    /// Where each image is made from: a connection URL without its password, or a
    /// directory.
    pub source: String,
    /// The team its images belong to.
    pub team: Name,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<Name>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<Name>,
    /// The masking rules each image is made with.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mask: Vec<MaskRule>,
    /// The names of the modification scripts each image is made with.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scripts: Vec<String>,
    /// Whose rights each run uses: a run of a schedule whose creator may no longer make
    /// images fails.
    pub created_by: Name,
    pub created_at: Timestamp,
    /// When it runs next.
    pub next_run_at: Timestamp,
    pub last_run_at: Option<Timestamp>,
    /// The image its last run made (or began).
    pub last_image: Option<Name>,
    /// Why its last run failed, if it did.
    pub last_error: Option<String>,
    /// Its images that still exist, newest first.
    pub images: Vec<Name>,
}

/// `POST /v1/schedules`: make images of one source on a schedule. Give one of `from_url`,
/// `from_dir` and `from_repo`, as to `POST /v1/images`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSchedule {
    /// Its images are named `<name>-<YYYYMMDD>-<HHMMSS>` (UTC), so at most 48 characters.
    pub name: Name,
    /// Five fields (minute, hour, day of month, month, day of week), in UTC.
    #[schema(examples("0 2 * * *"))]
    pub cron: String,
    /// How many ready images to keep (7 when not given; 1 to 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep: Option<u32>,
    /// A connection URL of a running server. Its password is kept in the server's catalog
    /// for the runs, and never shown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_url: Option<String>,
    /// A data directory or base backup on the agent's host (an absolute path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_dir: Option<String>,
    /// With `from_dir`: the directory is a crash-consistent snapshot of a running server.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub snapshot: bool,
    /// A backup repository on the agent's host (an absolute path): each run restores its
    /// newest backup and the archived log after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_repo: Option<String>,
    /// With `from_repo`: the backup set in it (pgBackRest's stanza); needed when it holds
    /// more than one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stanza: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<Name>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<Name>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<Name>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mask: Vec<MaskRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scripts: Vec<ImageScript>,
}

/// `POST /v1/clones/{name}/refresh`: remake a clone on a newer image, keeping its name,
/// port and password. What was written to it is lost, as with a reset.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshClone {
    /// The image to move to; when not given, the newest ready image of the schedule that
    /// made the clone's image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<Name>,
}
