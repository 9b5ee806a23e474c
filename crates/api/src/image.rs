//! Images: immutable, point-in-time copies of a database's files.

use utoipa::openapi::schema::{
    AdditionalProperties, AllOfBuilder, ObjectBuilder, OneOfBuilder, Ref, Schema, SchemaType, Type,
};
use utoipa::openapi::RefOr;
use utoipa::PartialSchema;

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
    pub const ALL: [ImageStatus; 4] =
        [ImageStatus::Creating, ImageStatus::Ready, ImageStatus::Failed, ImageStatus::Deleting];

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
    /// The image location it is kept in.
    pub location: Name,
    /// The agent that made it.
    pub agent: Option<Name>,
    /// The size of its files as the database sees them.
    pub logical_bytes: u64,
    /// The disk its files occupy.
    pub stored_bytes: u64,
    pub file_count: u64,
    /// How many clones are made from it.
    pub clone_count: u64,
    /// The team it belongs to: its members see it and may clone it.
    pub team: Name,
    /// Who made it.
    pub created_by: Option<Name>,
    pub created_at: Timestamp,
    /// The operation that is making it, while it is `creating`.
    pub operation: Option<OperationId>,
    /// How far the copy has got, while it is `creating`.
    pub progress: Option<Progress>,
    /// The masking rules it was made with (doc/MASKING.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mask: Vec<MaskRule>,
    /// The names of the modification scripts it was made with, in the order they ran.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scripts: Vec<String>,
    /// What masking and the scripts did, once it is made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<TransformReport>,
    /// The schedule that made it, which keeps its newest few.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Name>,
}

/// How a masking rule replaces a column's values. Deterministic strategies give the same
/// output for the same input within an image (keyed by a secret of the image), so that joins
/// and unique constraints still hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MaskStrategy {
    /// A realistic, unique-per-input address at example.com (deterministic).
    Email,
    /// A realistic first and last name (deterministic).
    Name,
    /// A +1-555 number (deterministic).
    Phone,
    /// The hexadecimal keyed hash of the value (deterministic).
    Hash,
    /// As many `x` as the value had characters.
    Redact,
    /// NULL.
    Null,
    /// `value`, the same for every row.
    Constant,
    /// The column's values, moved between rows (a deterministic permutation).
    Shuffle,
    /// The value (a date or timestamp) moved by up to `days` days either way (deterministic).
    DateShift,
}

/// One masking rule: how to replace one column's values.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MaskRule {
    /// Schema-qualified: `public.customers`.
    pub table: String,
    pub column: String,
    pub strategy: MaskStrategy,
    /// The database the table is in; the engine's default database when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// For `constant`: the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// For `date_shift`: the most days a value moves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub days: Option<u32>,
}

/// A modification script, run on a temporary server of the image before it is sealed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageScript {
    /// What it is called (its file name).
    pub name: String,
    /// SQL, run as the image's superuser, statement by statement; the first error fails the
    /// image.
    pub sql: String,
    /// The database it runs in; the engine's default database when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
}

/// What an image's masking and scripts did.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct TransformReport {
    /// Rows each rule changed, in the order of the rules.
    pub masked: Vec<MaskedColumn>,
    /// Each script's output, in the order they ran (at most 64 KiB each).
    pub scripts: Vec<ScriptOutput>,
    /// How many original values were looked for, byte by byte, in every file of the sealed
    /// image, and not found.
    pub values_checked: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct MaskedColumn {
    pub table: String,
    pub column: String,
    pub rows: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ScriptOutput {
    pub name: String,
    pub output: String,
}

/// `POST /v1/images`: make an image from exactly one source. Its schema is written out below
/// rather than derived, so that it can say what the server checks: exactly one of `from_dir`,
/// `from_url`, `from_dump` and `from_repo`, absolute paths, `snapshot` and `archive` only with
/// `from_dir`, `stanza` only with `from_repo`, `target_time` only with `from_repo` or
/// `archive`, and `target_lsn` only with `archive`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateImage {
    pub name: Name,
    /// A data directory of a stopped server, or a base backup, on the server's host (an
    /// absolute path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_dir: Option<String>,
    /// A connection URL of a running server to take a consistent copy of. Its password is
    /// used, never stored or shown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_url: Option<String>,
    /// A logical dump on the server's host (an absolute path): a file of the engine's dump
    /// tool (custom, tar or plain format) or a directory of one, restored into a new database
    /// of the dump's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_dump: Option<String>,
    /// A backup repository on the server's host (an absolute path; pgBackRest), restored as
    /// of its latest backup and archived log, or of `target_time`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_repo: Option<String>,
    /// With `from_repo`: the repository's stanza; needed only when it has more than one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stanza: Option<String>,
    /// With `from_dir` (a base backup): a directory of archived log segments (an absolute
    /// path), replayed over the backup to `target_time`, `target_lsn`, or their end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<String>,
    /// With `from_repo`, or `from_dir` and `archive`: recover to the last transaction
    /// committed at or before this time (RFC 3339, or the engine's own timestamp syntax).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_time: Option<String>,
    /// With `from_dir` and `archive`: recover to this position of the log (the engine's
    /// syntax, e.g. `0/3000060`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_lsn: Option<String>,
    /// With `from_dir`: the directory is a crash-consistent snapshot of a running server
    /// (an LVM, ZFS or cloud-disk snapshot), so a server's lock file in it is expected and
    /// recovery runs when the image is made. Without it, a directory whose server is running
    /// is refused, since copying it would give a torn copy.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub snapshot: bool,
    /// The team it will belong to: one of the caller's teams. When not given: the caller's
    /// team if they are in one only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<Name>,
    /// The image location to keep it in (`local` when not given, on `thinclone serve`; the
    /// only location when there is one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<Name>,
    /// The agent that makes it: one that reaches the location and sees the source. When not
    /// given, any agent that reaches the location (for `from_dir`, the one agent that does,
    /// or the caller must say which).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<Name>,
    /// Masking rules, applied before anyone can connect; any failure fails the image
    /// (doc/MASKING.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mask: Vec<MaskRule>,
    /// Modification scripts, run in order before masking; any failure fails the image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scripts: Vec<ImageScript>,
}

impl utoipa::PartialSchema for CreateImage {
    fn schema() -> RefOr<Schema> {
        let text = |description: &str| ObjectBuilder::new().schema_type(Type::String).description(Some(description));
        let null = || ObjectBuilder::new().schema_type(Type::Null);
        let fields = ObjectBuilder::new()
            .property("name", Ref::from_schema_name("Name"))
            .required("name")
            .property(
                "from_dir",
                text("A data directory of a stopped server, or a base backup, on the server's host (an absolute path).")
                    .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
                    .pattern(Some("^/"))
                    .examples(["/srv/backups/prod"]),
            )
            .property(
                "from_url",
                text("A connection URL of a running server to take a consistent copy of. Its password is used, never stored or shown.")
                    .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
                    .examples(["scheme://repl:secret@db.example:5432/main"]),
            )
            .property(
                "from_dump",
                text("A logical dump on the server's host (an absolute path): a file of the engine's dump tool (custom, tar or plain format) or a directory of one, restored into a new database of the dump's version.")
                    .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
                    .pattern(Some("^/"))
                    .examples(["/srv/dumps/prod.dump"]),
            )
            .property(
                "from_repo",
                text("A backup repository on the server's host (an absolute path; pgBackRest), restored as of its latest backup and archived log, or of `target_time`.")
                    .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
                    .pattern(Some("^/"))
                    .examples(["/srv/backups/repo"]),
            )
            .property(
                "stanza",
                text("With `from_repo`: the repository's stanza; needed only when it has more than one.")
                    .schema_type(SchemaType::from_iter([Type::String, Type::Null])),
            )
            .property(
                "archive",
                text("With `from_dir` (a base backup): a directory of archived log segments (an absolute path), replayed over the backup to `target_time`, `target_lsn`, or their end.")
                    .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
                    .pattern(Some("^/")),
            )
            .property(
                "target_time",
                text("With `from_repo`, or `from_dir` and `archive`: recover to the last transaction committed at or before this time (RFC 3339, or the engine's own timestamp syntax).")
                    .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
                    .examples(["2026-11-30T02:00:00Z"]),
            )
            .property(
                "target_lsn",
                text("With `from_dir` and `archive`: recover to this position of the log (the engine's syntax, e.g. `0/3000060`).")
                    .schema_type(SchemaType::from_iter([Type::String, Type::Null])),
            )
            .property(
                "snapshot",
                ObjectBuilder::new().schema_type(Type::Boolean).default(Some(false.into())).description(Some(
                    "With `from_dir`: the directory is a crash-consistent snapshot of a running server (an LVM, ZFS \
                     or cloud-disk snapshot), so a server's lock file in it is expected and recovery runs when the \
                     image is made. Without it, a directory whose server is running is refused, since copying it \
                     would give a torn copy.",
                )),
            )
            .property(
                "team",
                ObjectBuilder::new()
                    .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
                    .pattern(Some(crate::name::PATTERN))
                    .description(Some(
                        "The team it will belong to: one of the caller's teams. When not given: the caller's team if \
                         they are in one only.",
                    )),
            )
            .property(
                "location",
                ObjectBuilder::new()
                    .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
                    .pattern(Some(crate::name::PATTERN))
                    .description(Some(
                        "The image location to keep it in (`local` when not given, on `thinclone serve`; the only \
                         location when there is one).",
                    )),
            )
            .property(
                "host",
                ObjectBuilder::new()
                    .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
                    .pattern(Some(crate::name::PATTERN))
                    .description(Some(
                        "The agent that makes it: one that reaches the location and sees the source. When not \
                         given, any agent that reaches the location (for `from_dir`, the one agent that does, or \
                         the caller must say which).",
                    )),
            )
            .property(
                "mask",
                utoipa::openapi::schema::ArrayBuilder::new()
                    .items(Ref::from_schema_name("MaskRule"))
                    .description(Some(
                        "Masking rules, applied before anyone can connect; any failure fails the image \
                         (doc/MASKING.md).",
                    )),
            )
            .property(
                "scripts",
                utoipa::openapi::schema::ArrayBuilder::new()
                    .items(Ref::from_schema_name("ImageScript"))
                    .description(Some("Modification scripts, run in order before masking; any failure fails the image.")),
            )
            .additional_properties(Some(AdditionalProperties::FreeForm(false)));
        // Exactly one source: a present `null` counts as absent, as serde reads it. The
        // options of the other sources are absent too.
        const SOURCES: [&str; 4] = ["from_dir", "from_url", "from_dump", "from_repo"];
        let branch = |source: &str, absent: &[&str]| {
            let mut b = ObjectBuilder::new()
                .title(Some(source))
                .required(source)
                .property(source, ObjectBuilder::new().schema_type(Type::String));
            for other in SOURCES.iter().filter(|s| **s != source).chain(absent) {
                b = b.property(*other, null());
            }
            if source != "from_dir" {
                b = b.property("snapshot", ObjectBuilder::new().schema_type(Type::Boolean).enum_values(Some([false])));
            }
            b
        };
        AllOfBuilder::new()
            .description(Some(
                "`POST /v1/images`: make an image from exactly one source: `from_dir` (with `archive`, a base \
                 backup recovered to a target), `from_url`, `from_dump` or `from_repo`.",
            ))
            .item(fields)
            .item(
                OneOfBuilder::new()
                    .item(branch("from_dir", &["stanza"]))
                    .item(branch("from_url", &["stanza", "archive", "target_time", "target_lsn"]))
                    .item(branch("from_dump", &["stanza", "archive", "target_time", "target_lsn"]))
                    .item(branch("from_repo", &["archive", "target_lsn"])),
            )
            .into()
    }
}

impl utoipa::ToSchema for CreateImage {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((<Name as utoipa::ToSchema>::name().into(), Name::schema()));
        schemas.push(("MaskRule".into(), MaskRule::schema()));
        schemas.push(("MaskStrategy".into(), MaskStrategy::schema()));
        schemas.push(("ImageScript".into(), ImageScript::schema()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hand-written schema names exactly the fields serde reads and writes.
    #[test]
    fn the_schema_names_every_field() {
        let full = CreateImage {
            name: Name::new("a").unwrap(),
            from_dir: Some("/x".into()),
            from_url: Some("u".into()),
            from_dump: Some("/d".into()),
            from_repo: Some("/r".into()),
            stanza: Some("main".into()),
            archive: Some("/a".into()),
            target_time: Some("2026-01-01T00:00:00Z".into()),
            target_lsn: Some("0/1".into()),
            snapshot: true,
            team: Some(Name::new("t").unwrap()),
            location: Some(Name::new("l").unwrap()),
            host: Some(Name::new("h").unwrap()),
            mask: vec![MaskRule {
                table: "public.t".into(),
                column: "c".into(),
                strategy: MaskStrategy::Email,
                database: None,
                value: None,
                days: None,
            }],
            scripts: vec![ImageScript { name: "s.sql".into(), sql: "SELECT 1".into(), database: None }],
        };
        let serde_fields: Vec<String> =
            serde_json::to_value(&full).unwrap().as_object().unwrap().keys().cloned().collect();
        let schema = serde_json::to_value(<CreateImage as utoipa::PartialSchema>::schema()).unwrap();
        let mut schema_fields: Vec<String> =
            schema["allOf"][0]["properties"].as_object().unwrap().keys().cloned().collect();
        schema_fields.sort();
        let mut serde_fields = serde_fields;
        serde_fields.sort();
        assert_eq!(schema_fields, serde_fields);
    }
}
