//! Agents: the hosts that do the work. The REST types an administrator sees (agents,
//! enrollment, image locations), and the messages of the channel between the server and
//! its agents: what the server asks ([`Request`]), what an agent answers ([`Reply`]), framed
//! as one JSON [`Frame`] per line on a mutually authenticated TLS connection.

use crate::{Driver, Name, Timestamp};

/// Where an agent is, as the server last knew it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AgentStatus {
    /// Connected, and answering.
    Online,
    /// Not connected, or not answering: its clones' state is unknown until it comes back.
    Unreachable,
    /// Its certificate was revoked: it is refused.
    Revoked,
}

impl AgentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentStatus::Online => "online",
            AgentStatus::Unreachable => "unreachable",
            AgentStatus::Revoked => "revoked",
        }
    }
}

impl std::fmt::Display for AgentStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A database engine an agent can run, and its versions there.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct EngineVersions {
    pub engine: String,
    pub versions: Vec<String>,
}

/// An agent, as `GET /v1/agents/{name}` answers it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Agent {
    pub name: Name,
    pub status: AgentStatus,
    /// The address clients reach its clones at.
    pub host: Option<String>,
    /// When it last answered.
    pub last_seen: Option<Timestamp>,
    /// Free disk where it keeps clones.
    pub free_bytes: Option<u64>,
    /// The clone ports it has left.
    pub free_ports: Option<u64>,
    pub clones: u64,
    pub drivers: Vec<Driver>,
    pub engines: Vec<EngineVersions>,
    /// The image locations it reaches.
    pub locations: Vec<Name>,
    pub created_at: Timestamp,
}

/// `POST /v1/agents/tokens`: a one-time enrollment token.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEnrollment {
    /// Seconds until it expires (one hour when not given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub expires_in: Option<u64>,
}

/// An enrollment token: give it to `thinclone agent join` on the new host, once.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Enrollment {
    /// The secret, shown this once. It also names the server's certificate authority, so
    /// that the joining agent can check whom it talks to.
    pub token: String,
    pub expires_at: Timestamp,
}

/// `POST /v1/agents/join`: an agent's request to join, with an enrollment token.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// The enrollment token.
    pub token: String,
    /// The agent's name: unique among the server's agents.
    pub name: Name,
    /// The agent's own public key: an ECDSA P-256 point, uncompressed, in hex. Its private
    /// key never leaves the agent; the certificate the server signs for it is worthless
    /// without it.
    pub public_key: String,
}

/// The answer to a join: the agent's certificate, the authority that signed it, and where to
/// reach the server's agent channel.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Joined {
    pub certificate: String,
    pub ca: String,
    /// `host:port` of the agent channel.
    pub channel: String,
}

/// An image location: a directory where images are kept, as seen from every agent that
/// reaches it (an NFS or SMB share mounted on each host, or a directory of one host).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Location {
    pub name: Name,
    /// An absolute path, the same on every agent that reaches it.
    pub path: String,
    /// The agents that proved they reach it.
    pub agents: Vec<Name>,
    pub created_at: Timestamp,
}

/// `POST /v1/locations`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateLocation {
    pub name: Name,
    pub path: String,
}

// ------------------------------------------------------------------------ the channel

/// Where an image is kept, for an agent: a location's directory.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImagePlace {
    pub location: Name,
    /// The location's directory on the agent; the image is `<path>/<image name>`.
    pub path: String,
    /// What the location's marker file says, when it has one: a directory without it is
    /// not the location (a share that is not mounted shows its empty mount point).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub marker: Option<String>,
}

/// Where a new image comes from, for an agent.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageSource {
    /// A data directory on the agent's host, inside one of `roots` (the registered source
    /// directories); with `snapshot`, a crash-consistent snapshot of a running server's.
    Dir { path: String, snapshot: bool, roots: Vec<String> },
    /// A live server; the URL carries its password, which only the agent sees.
    Url { url: String },
    /// A logical dump (a file, or a directory of one) on the agent's host, inside one of
    /// `roots`: restored into a new database of the dump's version.
    Dump { path: String, roots: Vec<String> },
    /// A backup repository on the agent's host, inside one of `roots`: its backup of
    /// `stanza` (the only one when not given) restored and recovered to `target`.
    Repo {
        path: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stanza: Option<String>,
        target: RecoveryTarget,
        roots: Vec<String>,
    },
    /// A base backup (a directory inside one of `roots`) and a directory of the engine's
    /// archived log (inside one of `roots` too), recovered to `target`.
    Archive { path: String, archive: String, target: RecoveryTarget, roots: Vec<String> },
}

/// The point a backup is recovered to.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecoveryTarget {
    /// As far as the log goes.
    #[default]
    Latest,
    /// The last transaction committed at or before this time (RFC 3339, or the engine's own
    /// timestamp syntax).
    Time(String),
    /// This position in the engine's log (its own syntax).
    Position(String),
}

impl std::fmt::Display for RecoveryTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecoveryTarget::Latest => f.write_str("the end of the log"),
            RecoveryTarget::Time(t) => write!(f, "time {t}"),
            RecoveryTarget::Position(p) => write!(f, "position {p}"),
        }
    }
}

/// What an agent learned of a source before copying it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SourceFacts {
    pub engine: String,
    pub version: Option<String>,
    /// The source as it may be stored and shown: a resolved path, or the URL without its
    /// password.
    pub shown: String,
}

/// What is done to an image's files before it is sealed: the scripts, in order, then the
/// masking rules.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct ImageTransform {
    #[serde(default)]
    pub scripts: Vec<crate::ImageScript>,
    #[serde(default)]
    pub mask: Vec<crate::MaskRule>,
}

impl ImageTransform {
    pub fn is_empty(&self) -> bool {
        self.scripts.is_empty() && self.mask.is_empty()
    }
}

/// An image an agent made.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MadeImage {
    pub engine: String,
    pub version: String,
    pub superuser: String,
    pub logical_bytes: u64,
    pub stored_bytes: u64,
    pub file_count: u64,
    /// What its scripts and masking did, when it had any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<crate::TransformReport>,
}

/// Everything an agent needs to make and run a clone; the server decides all of it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CloneSpec {
    pub name: Name,
    pub image: Name,
    pub place: ImagePlace,
    pub engine: String,
    pub version: String,
    pub superuser: String,
    pub driver: Driver,
    pub port: u16,
    pub password: String,
    /// Made from a checkpoint of another clone of this agent, not from the image alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<CloneOrigin>,
    /// Its server refuses writes (a snapshot view).
    #[serde(default)]
    pub read_only: bool,
    /// A template's scripts, run on it once its server accepts connections, before it is
    /// handed out, with `settings` set (`thinclone.clone`…).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scripts: Vec<crate::ImageScript>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub settings: Vec<(String, String)>,
}

/// The image a clone is remade on by a refresh.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RefreshTarget {
    pub image: Name,
    pub place: ImagePlace,
    pub engine: String,
    pub version: String,
    pub superuser: String,
    /// The scripts of the template the clone was made with, run again once it is up on the
    /// new image, with `settings` set (as [`CloneSpec`]'s).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scripts: Vec<crate::ImageScript>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub settings: Vec<(String, String)>,
}

/// Where a branch comes from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CloneOrigin {
    pub clone: Name,
    pub checkpoint: Name,
    /// Make the checkpoint first, of the clone's state now.
    #[serde(default)]
    pub make_checkpoint: bool,
}

impl std::fmt::Display for CloneOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.clone, self.checkpoint)
    }
}

/// A clone's state on its agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CloneState {
    Running,
    Degraded,
    Stopped,
    Failed,
}

/// How a clone is on its agent.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CloneReport {
    pub name: Name,
    pub state: CloneState,
    pub message: Option<String>,
    pub stored_bytes: Option<u64>,
    pub sizes_at: Option<Timestamp>,
    /// The database user its URL logs in as when that is not the image's superuser (an
    /// owner role).
    pub user: Option<String>,
    /// Since when no client has been connected to it, while none is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_since: Option<Timestamp>,
    /// The image it is made from now (a refresh changes it; the server follows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<Name>,
}

/// What an agent offers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AgentInfo {
    pub default_driver: Driver,
    pub drivers: Vec<Driver>,
    /// The address clients reach its clones at.
    pub host: String,
    pub free_bytes: u64,
    pub engines: Vec<EngineVersions>,
    pub version: String,
}

/// The kind of an agent's failure, as the server must tell its callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentErrorKind {
    BadRequest,
    NotFound,
    Conflict,
    DiskFull,
    /// The agent cannot be reached, or did not answer in time.
    Unavailable,
    Internal,
}

/// An agent's failure.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct AgentError {
    pub kind: AgentErrorKind,
    pub message: String,
}

/// What the server asks of an agent.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "ask")]
pub enum Request {
    Info,
    /// Checks a source directory for an image to be kept at `place` (room included).
    CheckSourceDir {
        path: String,
        snapshot: bool,
        roots: Vec<String>,
        place: ImagePlace,
    },
    CheckSourceUrl {
        url: String,
    },
    /// Checks any source as `MakeImage` would take it (a dump, a backup repository, a base
    /// backup and its log archive).
    CheckSource {
        source: ImageSource,
        place: ImagePlace,
    },
    MakeImage {
        name: Name,
        place: ImagePlace,
        source: ImageSource,
        /// Scripts and masking to apply before the image is sealed.
        #[serde(default, skip_serializing_if = "ImageTransform::is_empty")]
        transform: ImageTransform,
    },
    RemoveImage {
        name: Name,
        place: ImagePlace,
    },
    CancelImageJobs,
    /// Stops the job making image `name` in `place`, if one runs; removes nothing.
    CancelImageJob {
        name: Name,
        place: ImagePlace,
    },
    PortIsFree {
        port: u16,
    },
    CreateClone {
        spec: CloneSpec,
    },
    StartClone {
        name: Name,
    },
    StopClone {
        name: Name,
    },
    ResetClone {
        name: Name,
    },
    /// Remakes the clone on another image, keeping its port and password.
    RefreshClone {
        name: Name,
        to: RefreshTarget,
    },
    DeleteClone {
        name: Name,
    },
    /// Records the clone's state now as checkpoint `checkpoint`.
    CheckpointClone {
        name: Name,
        checkpoint: Name,
        message: Option<String>,
    },
    /// Returns the clone to checkpoint `to` (the latest when `None`).
    RevertClone {
        name: Name,
        to: Option<Name>,
    },
    Checkpoints {
        name: Name,
    },
    /// The names of a clone's checkpoints, oldest first: without the disk each keeps, which
    /// takes a walk of the files' extents to measure.
    CheckpointNames {
        name: Name,
    },
    DeleteCheckpoint {
        name: Name,
        checkpoint: Name,
    },
    CloneReport {
        name: Name,
    },
    CloneReports,
    /// Writes `value` to the location's marker file (proof of reach, for other agents).
    WriteMarker {
        path: String,
        value: String,
    },
    /// Reads a location's marker file.
    ReadMarker {
        path: String,
    },
}

impl Request {
    /// The request's name, for logs: never its contents, which may carry secrets.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Info => "info",
            Request::CheckSourceDir { .. } => "check_source_dir",
            Request::CheckSourceUrl { .. } => "check_source_url",
            Request::CheckSource { .. } => "check_source",
            Request::MakeImage { .. } => "make_image",
            Request::RemoveImage { .. } => "remove_image",
            Request::CancelImageJobs => "cancel_image_jobs",
            Request::CancelImageJob { .. } => "cancel_image_job",
            Request::PortIsFree { .. } => "port_is_free",
            Request::CreateClone { .. } => "create_clone",
            Request::StartClone { .. } => "start_clone",
            Request::StopClone { .. } => "stop_clone",
            Request::ResetClone { .. } => "reset_clone",
            Request::RefreshClone { .. } => "refresh_clone",
            Request::DeleteClone { .. } => "delete_clone",
            Request::CheckpointClone { .. } => "checkpoint_clone",
            Request::RevertClone { .. } => "revert_clone",
            Request::Checkpoints { .. } => "checkpoints",
            Request::CheckpointNames { .. } => "checkpoint_names",
            Request::DeleteCheckpoint { .. } => "delete_checkpoint",
            Request::CloneReport { .. } => "clone_report",
            Request::CloneReports => "clone_reports",
            Request::WriteMarker { .. } => "write_marker",
            Request::ReadMarker { .. } => "read_marker",
        }
    }
}

/// What an agent answers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "answer")]
pub enum Reply {
    Info { info: AgentInfo },
    SourceFacts { facts: SourceFacts },
    MadeImage { image: MadeImage },
    Done,
    Bool { value: bool },
    CloneReport { report: Option<CloneReport> },
    CloneReports { reports: Vec<CloneReport> },
    Checkpoints { checkpoints: Vec<crate::Checkpoint> },
    Names { names: Vec<Name> },
    Marker { value: Option<String> },
}

/// One line of the channel.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "frame")]
pub enum Frame {
    /// The agent's first line: its name and version.
    Hello {
        agent: Name,
        version: String,
    },
    /// The server asks.
    Request {
        id: u64,
        request: Request,
    },
    /// How far a long request has got.
    Progress {
        id: u64,
        done: u64,
        total: u64,
    },
    /// What a long request is doing.
    Step {
        id: u64,
        message: String,
    },
    /// The end of a request.
    Reply {
        id: u64,
        result: Result<Reply, AgentError>,
    },
    /// Either side, when it has had nothing to say for a while; answered with `Pong`.
    Ping,
    Pong,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_one_json_line_each() {
        let frame = Frame::Request { id: 7, request: Request::StartClone { name: Name::new("c").unwrap() } };
        let line = serde_json::to_string(&frame).unwrap();
        assert!(!line.contains('\n'));
        assert_eq!(line, r#"{"frame":"request","id":7,"request":{"ask":"start_clone","name":"c"}}"#);
        assert_eq!(serde_json::from_str::<Frame>(&line).unwrap(), frame);
        let reply = Frame::Reply {
            id: 7,
            result: Err(AgentError { kind: AgentErrorKind::NotFound, message: "no clone named c".into() }),
        };
        assert_eq!(serde_json::from_str::<Frame>(&serde_json::to_string(&reply).unwrap()).unwrap(), reply);
    }

    /// Every source kind crosses the channel as it is, targets included.
    #[test]
    fn image_sources_round_trip() {
        let place = ImagePlace { location: Name::new("local").unwrap(), path: "/images".into(), marker: None };
        let roots = vec!["/srv".to_owned()];
        for source in [
            ImageSource::Dump { path: "/srv/app.dump".into(), roots: roots.clone() },
            ImageSource::Repo {
                path: "/srv/repo".into(),
                stanza: Some("main".into()),
                target: RecoveryTarget::Time("2026-11-30T02:00:00Z".into()),
                roots: roots.clone(),
            },
            ImageSource::Repo {
                path: "/srv/repo".into(),
                stanza: None,
                target: RecoveryTarget::Latest,
                roots: roots.clone(),
            },
            ImageSource::Archive {
                path: "/srv/base".into(),
                archive: "/srv/wal".into(),
                target: RecoveryTarget::Position("0/3000060".into()),
                roots: roots.clone(),
            },
        ] {
            let frame = Frame::Request { id: 1, request: Request::CheckSource { source, place: place.clone() } };
            let line = serde_json::to_string(&frame).unwrap();
            assert_eq!(serde_json::from_str::<Frame>(&line).unwrap(), frame, "{line}");
        }
    }
}
