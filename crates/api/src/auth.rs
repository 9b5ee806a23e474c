//! Who may do what: users and their roles, teams, API tokens, the source directories images
//! may be made from, and the audit log of what was done.

use std::fmt;
use std::str::FromStr;

use crate::{Name, Timestamp};

/// What a user may do. Each role may do everything the roles below it may.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads what their teams have: images, clones (without passwords), operations, activity.
    Viewer,
    /// A viewer who makes clones of their teams' images, and uses, resets and removes their own.
    CloneUser,
    /// A clone user who also makes and removes their teams' images.
    ImageCreator,
    /// Everything, everywhere: users, teams, sources, every image and clone.
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Viewer, Role::CloneUser, Role::ImageCreator, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::CloneUser => "clone_user",
            Role::ImageCreator => "image_creator",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role {s:?}: use viewer, clone_user, image_creator or admin"))
    }
}

/// A user, as `GET /v1/users/{name}` answers it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct User {
    pub name: Name,
    pub role: Role,
    /// The teams whose images and clones the user sees.
    pub teams: Vec<Name>,
    pub created_at: Timestamp,
}

/// `POST /v1/users`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    pub name: Name,
    pub role: Role,
    /// Teams to join (they must exist).
    #[serde(default)]
    pub teams: Vec<Name>,
}

/// A team, as `GET /v1/teams/{name}` answers it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Team {
    pub name: Name,
    pub members: Vec<Name>,
    pub created_at: Timestamp,
}

/// `POST /v1/teams`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTeam {
    pub name: Name,
}

/// An API token, as listed: never its secret, which is shown once, when it is made.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Token {
    pub id: u64,
    /// Whose it is.
    pub user: Name,
    pub description: Option<String>,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
    pub last_used_at: Option<Timestamp>,
}

/// `POST /v1/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// Whose token it is; the caller when not given. Only an administrator makes tokens for
    /// others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<Name>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 200)]
    pub description: Option<String>,
    /// Seconds until it expires; it never does when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub expires_in: Option<u64>,
}

/// The answer to `POST /v1/tokens`: the token and, this once, its secret.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct NewToken {
    pub token: Token,
    /// Send it as `Authorization: Bearer <secret>`. It is not stored and cannot be shown
    /// again.
    pub secret: String,
}

/// A registered source directory: images may be made only from data directories inside one.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Source {
    pub name: Name,
    /// An absolute path on the server's host, symlinks resolved.
    pub path: String,
    pub created_at: Timestamp,
}

/// `POST /v1/sources`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSource {
    pub name: Name,
    /// An absolute path of a directory on the server's host.
    pub path: String,
}

/// One entry of the audit log: a request that changed, or tried to change, something.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Activity {
    pub id: u64,
    pub at: Timestamp,
    /// Who asked; `None` for a request without a valid credential.
    pub actor: Option<Name>,
    /// What was asked, e.g. `clone.reset`.
    pub action: String,
    /// What it was asked of, e.g. `clone alice`.
    pub target: Option<String>,
    /// The HTTP status of the answer.
    pub status: u16,
    /// The error's message, when it failed.
    pub detail: Option<String>,
}
