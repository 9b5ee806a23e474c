//! Clone templates: scripts run on a new clone before it is handed out (a login role for the
//! application, jobs turned off…).

use crate::{ImageScript, Name, Timestamp};

/// A clone template.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Template {
    pub name: Name,
    /// Run in order on each clone made with the template, as its superuser, with the
    /// settings `thinclone.clone`, `thinclone.owner` and `thinclone.image` set to the
    /// clone's name, its owner's and its image's.
    pub scripts: Vec<ImageScript>,
    pub description: Option<String>,
    pub created_by: Name,
    pub created_at: Timestamp,
}

/// `POST /v1/templates`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTemplate {
    pub name: Name,
    /// At least one.
    pub scripts: Vec<ImageScript>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}
