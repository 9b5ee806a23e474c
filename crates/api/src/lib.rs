//! thinclone's wire types: what crosses the REST API (and, later, the channel between the
//! server and its agents). Requests, answers, the one error body, validated names, ids, and
//! status enums, each with its serde form and its OpenAPI schema.
//!
//! This crate holds types only: no HTTP framework, no runtime, no I/O. The server and the
//! client both depend on it, so that no field list is written twice. The server's stored
//! rows are separate types that convert into these.
//!
//! Requests reject unknown fields, so that a typo (`form_dir`) is an error rather than a
//! silently ignored field.

pub mod agent;
mod auth;
mod clone;
mod error;
mod image;
mod name;
mod operation;
mod schedule;
mod template;
mod time;
mod webhook;

pub use auth::{
    Activity, CreateSource, CreateTeam, CreateToken, CreateUser, NewToken, Role, Source, Team, Token, User,
};
pub use clone::{
    Checkpoint, Clone, CloneStatus, CreateBranch, CreateCheckpoint, CreateClone, Driver, IdlePolicy, Protect,
    RevertClone, SetExpiry,
};
pub use error::{ErrorBody, ErrorCode};
pub use image::{
    CreateImage, Image, ImageScript, ImageStatus, MaskRule, MaskStrategy, MaskedColumn, ScriptOutput, TransformReport,
};
pub use name::{InvalidName, Name, MAX_LEN as NAME_MAX_LEN};
pub use operation::{
    InvalidOperationId, Operation, OperationId, OperationKind, OperationState, Progress, Target, TargetKind,
};
pub use schedule::{CreateSchedule, RefreshClone, Schedule};
pub use template::{CreateTemplate, Template};
pub use time::Timestamp;
pub use webhook::{CreateWebhook, CreatedWebhook, Delivery, DeliveryState, Webhook, EVENT_KINDS};

/// `GET /v1/health`: the server answers, and which version it is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Health {
    /// Always `ok` when the server answers at all.
    pub status: String,
    /// The server's version, e.g. `0.1.0`.
    pub version: String,
}

/// The path of every route, relative to the server's base URL. The server mounts its
/// handlers at these paths and the client calls them, so that the two cannot disagree.
pub mod paths {
    pub const HEALTH: &str = "/v1/health";
    pub const OPENAPI: &str = "/v1/openapi.json";
    pub const METRICS: &str = "/metrics";
    pub const IMAGES: &str = "/v1/images";
    pub const IMAGE: &str = "/v1/images/{name}";
    pub const CLONES: &str = "/v1/clones";
    pub const CLONE: &str = "/v1/clones/{name}";
    pub const CLONE_START: &str = "/v1/clones/{name}/start";
    pub const CLONE_STOP: &str = "/v1/clones/{name}/stop";
    pub const CLONE_RESET: &str = "/v1/clones/{name}/reset";
    pub const CLONE_REVERT: &str = "/v1/clones/{name}/revert";
    pub const CLONE_CHECKPOINTS: &str = "/v1/clones/{name}/checkpoints";
    pub const CLONE_CHECKPOINT: &str = "/v1/clones/{name}/checkpoints/{checkpoint}";
    pub const CLONE_BRANCHES: &str = "/v1/clones/{name}/branches";
    pub const CLONE_EXPIRY: &str = "/v1/clones/{name}/expiry";
    pub const CLONE_PROTECT: &str = "/v1/clones/{name}/protect";
    pub const CLONE_UNPROTECT: &str = "/v1/clones/{name}/unprotect";
    pub const CLONE_IDLE: &str = "/v1/clones/{name}/idle";
    pub const CLONE_REFRESH: &str = "/v1/clones/{name}/refresh";
    pub const OPERATIONS: &str = "/v1/operations";
    pub const OPERATION: &str = "/v1/operations/{id}";
    pub const OPERATION_CANCEL: &str = "/v1/operations/{id}/cancel";
    pub const WHOAMI: &str = "/v1/whoami";
    pub const USERS: &str = "/v1/users";
    pub const USER: &str = "/v1/users/{name}";
    pub const TEAMS: &str = "/v1/teams";
    pub const TEAM: &str = "/v1/teams/{name}";
    pub const TEAM_MEMBER: &str = "/v1/teams/{name}/members/{user}";
    pub const TOKENS: &str = "/v1/tokens";
    pub const TOKEN: &str = "/v1/tokens/{id}";
    pub const SOURCES: &str = "/v1/sources";
    pub const SOURCE: &str = "/v1/sources/{name}";
    pub const ACTIVITY: &str = "/v1/activity";
    pub const AGENTS: &str = "/v1/agents";
    pub const AGENT: &str = "/v1/agents/{name}";
    pub const AGENT_REVOKE: &str = "/v1/agents/{name}/revoke";
    pub const AGENT_TOKENS: &str = "/v1/agents/tokens";
    pub const AGENT_JOIN: &str = "/v1/agents/join";
    pub const LOCATIONS: &str = "/v1/locations";
    pub const LOCATION: &str = "/v1/locations/{name}";
    pub const TEMPLATES: &str = "/v1/templates";
    pub const TEMPLATE: &str = "/v1/templates/{name}";
    pub const SCHEDULES: &str = "/v1/schedules";
    pub const SCHEDULE: &str = "/v1/schedules/{name}";
    pub const SCHEDULE_RUN: &str = "/v1/schedules/{name}/run";
    pub const WEBHOOKS: &str = "/v1/webhooks";
    pub const WEBHOOK: &str = "/v1/webhooks/{id}";
    pub const WEBHOOK_DELIVERIES: &str = "/v1/webhooks/{id}/deliveries";
}
