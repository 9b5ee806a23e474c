//! How the CLI shows the server's objects to people: aligned tables for lists, `key: value`
//! listings for one object, sizes in binary units. (`--json` prints the objects as they are.)

use std::fmt::Write as _;

use api::{
    Activity, Clone, Image, ImageStatus, Name, NewToken, Operation, OperationKind, OperationState, Progress, Source,
    Team, Timestamp, Token, User,
};

/// `key: value` pairs of one object, in the order they are shown.
pub type Fields = Vec<(&'static str, String)>;

pub fn image_fields(image: &Image) -> Fields {
    let mut fields = vec![("name", image.name.to_string()), ("status", image.status.to_string())];
    if let Some(message) = &image.message {
        fields.push(("message", message.clone()));
    }
    if let Some(p) = image.progress {
        fields.push(("progress", progress_text(p)));
    }
    fields.extend([
        ("engine", engine_text(&image.engine, image.engine_version.as_deref())),
        ("source", image.source.clone()),
        ("team", image.team.to_string()),
        ("created_by", image.created_by.as_ref().map_or_else(|| "-".to_owned(), Name::to_string)),
        ("logical size", human_bytes(image.logical_bytes)),
        ("stored size", human_bytes(image.stored_bytes)),
        ("files", image.file_count.to_string()),
        ("clones", image.clone_count.to_string()),
        ("created_at", image.created_at.to_string()),
    ]);
    if let Some(schedule) = &image.schedule {
        fields.push(("schedule", schedule.to_string()));
    }
    for rule in &image.mask {
        let strategy = serde_json::to_value(rule.strategy).ok().and_then(|v| v.as_str().map(str::to_owned));
        fields.push(("mask", format!("{}.{}: {}", rule.table, rule.column, strategy.unwrap_or_default())));
    }
    for script in &image.scripts {
        fields.push(("script", script.clone()));
    }
    if let Some(report) = &image.report {
        for m in &report.masked {
            fields.push(("masked", format!("{}.{}: {} rows", m.table, m.column, m.rows)));
        }
        if !image.mask.is_empty() {
            fields
                .push(("verified", format!("{} original values found in no file of the image", report.values_checked)));
        }
    }
    if let Some(op) = image.operation {
        fields.push(("operation", op.to_string()));
    }
    fields
}

/// One clone, with its connection URL: the user asked for this clone.
pub fn clone_fields(clone: &Clone, now: Timestamp) -> Fields {
    let mut fields = vec![
        ("name", clone.name.to_string()),
        ("image", clone.image.to_string()),
        ("status", clone.status.to_string()),
    ];
    if let Some(message) = &clone.message {
        fields.push(("message", message.clone()));
    }
    let stored = match clone.sizes_at {
        Some(at) => format!("{}, measured {}", human_bytes(clone.stored_bytes), ago(at.age(now))),
        None => "not measured yet".to_owned(),
    };
    fields.extend([
        ("driver", clone.driver.to_string()),
        ("engine", engine_text(&clone.engine, Some(&clone.engine_version))),
        ("port", clone.port.to_string()),
        ("url", clone.url.clone().unwrap_or_else(|| "(only its owner and administrators see it)".to_owned())),
        ("owner", clone.owner.to_string()),
        ("team", clone.team.to_string()),
        ("stored size", stored),
        ("logical size", human_bytes(clone.logical_bytes)),
        ("created_at", clone.created_at.to_string()),
    ]);
    if let Some(origin) = &clone.origin {
        let kind = if clone.read_only { "snapshot view of" } else { "branch of" };
        fields.push(("origin", format!("{kind} {origin}")));
    } else if clone.read_only {
        fields.push(("origin", "snapshot view".to_owned()));
    }
    if let Some(template) = &clone.template {
        fields.push(("template", template.to_string()));
    }
    if let Some(at) = clone.expires_at {
        fields.push(("expires_at", at.to_string()));
    }
    if clone.protected {
        let until = clone.protected_until.map_or_else(|| "until unprotected".to_owned(), |u| format!("until {u}"));
        fields.push(("protected", until));
    }
    if let Some(since) = clone.idle_since {
        fields.push(("idle", format!("no client since {since} ({})", ago(since.age(now)))));
    }
    if let Some(op) = clone.operation {
        fields.push(("operation", op.to_string()));
    }
    fields
}

pub fn operation_fields(op: &Operation) -> Fields {
    let mut fields = vec![
        ("id", op.id.to_string()),
        ("kind", op.kind.to_string()),
        ("target", format!("{} {}", target_kind_text(op.kind), op.target.name)),
        ("state", op.state.as_str().to_owned()),
    ];
    if let Some(message) = &op.message {
        fields.push(("message", message.clone()));
    }
    if let Some(p) = op.progress {
        fields.push(("progress", progress_text(p)));
    }
    if let Some(error) = &op.error {
        fields.push(("error", error.clone()));
    }
    fields.push(("created_at", op.created_at.to_string()));
    if let Some(at) = op.finished_at {
        fields.push(("finished_at", at.to_string()));
    }
    fields
}

pub fn images_table(images: &[Image]) -> String {
    let rows = images
        .iter()
        .map(|i| {
            vec![
                i.name.to_string(),
                status_text(i.status.as_str(), i.status == ImageStatus::Creating, i.progress),
                engine_text(&i.engine, i.engine_version.as_deref()),
                human_bytes(i.logical_bytes),
                human_bytes(i.stored_bytes),
                i.clone_count.to_string(),
                i.team.to_string(),
                i.created_at.to_string(),
            ]
        })
        .collect::<Vec<_>>();
    table(
        &[
            ("NAME", Left),
            ("STATUS", Left),
            ("ENGINE", Left),
            ("LOGICAL", Right),
            ("STORED", Right),
            ("CLONES", Right),
            ("TEAM", Left),
            ("CREATED", Left),
        ],
        &rows,
    )
}

/// The clones, without their connection URLs: those carry passwords, and a listing is not
/// a request for every clone's password (`clone show NAME` prints one, `--json` all).
pub fn clones_table(clones: &[Clone]) -> String {
    let rows = clones
        .iter()
        .map(|c| {
            vec![
                c.name.to_string(),
                c.image.to_string(),
                c.status.to_string(),
                c.driver.to_string(),
                format!("{}:{}", c.host, c.port),
                if c.sizes_at.is_some() { human_bytes(c.stored_bytes) } else { "-".to_owned() },
                c.owner.to_string(),
                c.created_at.to_string(),
            ]
        })
        .collect::<Vec<_>>();
    table(
        &[
            ("NAME", Left),
            ("IMAGE", Left),
            ("STATUS", Left),
            ("DRIVER", Left),
            ("ADDRESS", Left),
            ("STORED", Right),
            ("OWNER", Left),
            ("CREATED", Left),
        ],
        &rows,
    )
}

pub fn checkpoints_table(checkpoints: &[api::Checkpoint]) -> String {
    let rows = checkpoints
        .iter()
        .map(|c| {
            vec![
                c.name.to_string(),
                c.created_at.to_string(),
                human_bytes(c.stored_bytes),
                c.message.clone().unwrap_or_else(|| "-".to_owned()),
            ]
        })
        .collect::<Vec<_>>();
    table(&[("NAME", Left), ("CREATED", Left), ("STORED", Right), ("MESSAGE", Left)], &rows)
}

pub fn checkpoint_fields(checkpoint: &api::Checkpoint) -> Fields {
    let mut fields = vec![
        ("name", checkpoint.name.to_string()),
        ("created_at", checkpoint.created_at.to_string()),
        ("stored", human_bytes(checkpoint.stored_bytes)),
    ];
    if let Some(message) = &checkpoint.message {
        fields.push(("message", message.clone()));
    }
    fields
}

pub fn operations_table(ops: &[Operation]) -> String {
    let rows = ops
        .iter()
        .map(|op| {
            let detail = op.error.as_deref().or(op.message.as_deref()).unwrap_or("-");
            vec![
                op.id.to_string(),
                op.kind.to_string(),
                op.target.name.to_string(),
                status_text(op.state.as_str(), op.state == OperationState::Running, op.progress),
                op.created_at.to_string(),
                op.finished_at.map_or_else(|| "-".to_owned(), |t| t.to_string()),
                detail.to_owned(),
            ]
        })
        .collect::<Vec<_>>();
    table(
        &[
            ("ID", Right),
            ("KIND", Left),
            ("TARGET", Left),
            ("STATE", Left),
            ("CREATED", Left),
            ("FINISHED", Left),
            ("DETAIL", Left),
        ],
        &rows,
    )
}

/// Names as a list for people: `a, b`, or `-` for none.
fn names_text(names: &[Name]) -> String {
    if names.is_empty() {
        "-".to_owned()
    } else {
        names.iter().map(Name::as_str).collect::<Vec<_>>().join(", ")
    }
}

fn optional_time(t: Option<Timestamp>) -> String {
    t.map_or_else(|| "-".to_owned(), |t| t.to_string())
}

pub fn user_fields(user: &User) -> Fields {
    vec![
        ("name", user.name.to_string()),
        ("role", user.role.to_string()),
        ("teams", names_text(&user.teams)),
        ("created_at", user.created_at.to_string()),
    ]
}

pub fn users_table(users: &[User]) -> String {
    let rows = users
        .iter()
        .map(|u| vec![u.name.to_string(), u.role.to_string(), names_text(&u.teams), u.created_at.to_string()])
        .collect::<Vec<_>>();
    table(&[("NAME", Left), ("ROLE", Left), ("TEAMS", Left), ("CREATED", Left)], &rows)
}

pub fn team_fields(team: &Team) -> Fields {
    vec![
        ("name", team.name.to_string()),
        ("members", names_text(&team.members)),
        ("created_at", team.created_at.to_string()),
    ]
}

pub fn teams_table(teams: &[Team]) -> String {
    let rows = teams
        .iter()
        .map(|t| vec![t.name.to_string(), names_text(&t.members), t.created_at.to_string()])
        .collect::<Vec<_>>();
    table(&[("NAME", Left), ("MEMBERS", Left), ("CREATED", Left)], &rows)
}

/// Whether a token is taken: `active`, `revoked` or `expired`.
fn token_state(token: &Token, now: Timestamp) -> &'static str {
    if token.revoked_at.is_some() {
        "revoked"
    } else if token.expires_at.is_some_and(|at| at <= now) {
        "expired"
    } else {
        "active"
    }
}

/// One token, without its secret (the server does not have it).
pub fn token_fields(token: &Token, now: Timestamp) -> Fields {
    let mut fields = vec![("id", token.id.to_string()), ("user", token.user.to_string())];
    if let Some(description) = &token.description {
        fields.push(("description", description.clone()));
    }
    fields.extend([
        ("state", token_state(token, now).to_owned()),
        ("created_at", token.created_at.to_string()),
        ("expires_at", token.expires_at.map_or_else(|| "never".to_owned(), |t| t.to_string())),
    ]);
    if let Some(at) = token.revoked_at {
        fields.push(("revoked_at", at.to_string()));
    }
    fields.push(("last_used_at", optional_time(token.last_used_at)));
    fields
}

/// A token just made, with its secret: the one time it is shown.
pub fn new_token_fields(new: &NewToken) -> Fields {
    let mut fields = vec![("id", new.token.id.to_string()), ("user", new.token.user.to_string())];
    if let Some(description) = &new.token.description {
        fields.push(("description", description.clone()));
    }
    fields.extend([
        ("expires_at", new.token.expires_at.map_or_else(|| "never".to_owned(), |t| t.to_string())),
        ("secret", new.secret.clone()),
    ]);
    fields
}

pub fn tokens_table(tokens: &[Token], now: Timestamp) -> String {
    let rows = tokens
        .iter()
        .map(|t| {
            vec![
                t.id.to_string(),
                t.user.to_string(),
                token_state(t, now).to_owned(),
                t.created_at.to_string(),
                t.expires_at.map_or_else(|| "never".to_owned(), |t| t.to_string()),
                optional_time(t.last_used_at),
                t.description.clone().unwrap_or_else(|| "-".to_owned()),
            ]
        })
        .collect::<Vec<_>>();
    table(
        &[
            ("ID", Right),
            ("USER", Left),
            ("STATE", Left),
            ("CREATED", Left),
            ("EXPIRES", Left),
            ("LAST USED", Left),
            ("DESCRIPTION", Left),
        ],
        &rows,
    )
}

pub fn source_fields(source: &Source) -> Fields {
    vec![
        ("name", source.name.to_string()),
        ("path", source.path.clone()),
        ("created_at", source.created_at.to_string()),
    ]
}

pub fn sources_table(sources: &[Source]) -> String {
    let rows =
        sources.iter().map(|s| vec![s.name.to_string(), s.path.clone(), s.created_at.to_string()]).collect::<Vec<_>>();
    table(&[("NAME", Left), ("PATH", Left), ("CREATED", Left)], &rows)
}

pub fn agent_fields(agent: &api::agent::Agent, now: Timestamp) -> Fields {
    vec![
        ("name", agent.name.to_string()),
        ("status", agent.status.to_string()),
        ("host", agent.host.clone().unwrap_or_else(|| "-".into())),
        ("last_seen", agent.last_seen.map_or_else(|| "never".into(), |t| ago(t.age(now)))),
        ("clones", agent.clones.to_string()),
        ("free_disk", agent.free_bytes.map_or_else(|| "-".into(), human_bytes)),
        ("free_ports", agent.free_ports.map_or_else(|| "-".into(), |p| p.to_string())),
        ("drivers", agent.drivers.iter().map(|d| d.as_str()).collect::<Vec<_>>().join(", ")),
        (
            "engines",
            agent
                .engines
                .iter()
                .map(|e| format!("{} {}", e.engine, e.versions.join(" ")))
                .collect::<Vec<_>>()
                .join("; "),
        ),
        ("locations", agent.locations.iter().map(Name::as_str).collect::<Vec<_>>().join(", ")),
        ("created_at", agent.created_at.to_string()),
    ]
}

pub fn agents_table(agents: &[api::agent::Agent], now: Timestamp) -> String {
    let rows = agents
        .iter()
        .map(|a| {
            vec![
                a.name.to_string(),
                a.status.to_string(),
                a.host.clone().unwrap_or_else(|| "-".into()),
                a.clones.to_string(),
                a.free_bytes.map_or_else(|| "-".into(), human_bytes),
                a.free_ports.map_or_else(|| "-".into(), |p| p.to_string()),
                a.last_seen.map_or_else(|| "never".into(), |t| ago(t.age(now))),
            ]
        })
        .collect::<Vec<_>>();
    table(
        &[
            ("NAME", Left),
            ("STATUS", Left),
            ("HOST", Left),
            ("CLONES", Right),
            ("FREE DISK", Right),
            ("FREE PORTS", Right),
            ("LAST SEEN", Left),
        ],
        &rows,
    )
}

pub fn location_fields(location: &api::agent::Location) -> Fields {
    vec![
        ("name", location.name.to_string()),
        ("path", location.path.clone()),
        ("agents", location.agents.iter().map(Name::as_str).collect::<Vec<_>>().join(", ")),
        ("created_at", location.created_at.to_string()),
    ]
}

pub fn locations_table(locations: &[api::agent::Location]) -> String {
    let rows = locations
        .iter()
        .map(|l| {
            vec![
                l.name.to_string(),
                l.path.clone(),
                l.agents.iter().map(Name::as_str).collect::<Vec<_>>().join(","),
                l.created_at.to_string(),
            ]
        })
        .collect::<Vec<_>>();
    table(&[("NAME", Left), ("PATH", Left), ("AGENTS", Left), ("CREATED", Left)], &rows)
}

pub fn templates_table(templates: &[api::Template]) -> String {
    let rows = templates
        .iter()
        .map(|t| {
            vec![
                t.name.to_string(),
                t.scripts.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(","),
                t.created_by.to_string(),
                t.created_at.to_string(),
                t.description.clone().unwrap_or_else(|| "-".to_owned()),
            ]
        })
        .collect::<Vec<_>>();
    table(&[("NAME", Left), ("SCRIPTS", Left), ("BY", Left), ("CREATED", Left), ("DESCRIPTION", Left)], &rows)
}

pub fn template_fields(t: &api::Template) -> Fields {
    let mut fields = vec![("name", t.name.to_string())];
    if let Some(d) = &t.description {
        fields.push(("description", d.clone()));
    }
    for s in &t.scripts {
        fields.push(("script", format!("{} ({} bytes)", s.name, s.sql.len())));
    }
    fields.push(("created_by", t.created_by.to_string()));
    fields.push(("created_at", t.created_at.to_string()));
    fields
}

pub fn schedules_table(schedules: &[api::Schedule]) -> String {
    let rows = schedules
        .iter()
        .map(|s| {
            vec![
                s.name.to_string(),
                s.cron.clone(),
                s.keep.to_string(),
                s.images.len().to_string(),
                s.next_run_at.to_string(),
                match (&s.last_error, &s.last_image) {
                    (Some(e), _) => format!("failed: {e}"),
                    (None, Some(image)) => image.to_string(),
                    (None, None) => "-".to_owned(),
                },
                s.source.clone(),
            ]
        })
        .collect::<Vec<_>>();
    table(
        &[
            ("NAME", Left),
            ("CRON (UTC)", Left),
            ("KEEP", Right),
            ("IMAGES", Right),
            ("NEXT RUN", Left),
            ("LAST RUN", Left),
            ("SOURCE", Left),
        ],
        &rows,
    )
}

pub fn schedule_fields(s: &api::Schedule) -> Fields {
    let mut fields = vec![
        ("name", s.name.to_string()),
        ("cron", format!("{} (UTC)", s.cron)),
        ("keep", format!("{} ready images", s.keep)),
        ("source", s.source.clone()),
        ("team", s.team.to_string()),
    ];
    if let Some(location) = &s.location {
        fields.push(("location", location.to_string()));
    }
    if let Some(host) = &s.host {
        fields.push(("host", host.to_string()));
    }
    for rule in &s.mask {
        let strategy = serde_json::to_value(rule.strategy).ok().and_then(|v| v.as_str().map(str::to_owned));
        fields.push(("mask", format!("{}.{}: {}", rule.table, rule.column, strategy.unwrap_or_default())));
    }
    for script in &s.scripts {
        fields.push(("script", script.clone()));
    }
    fields.push(("next_run_at", s.next_run_at.to_string()));
    if let Some(at) = s.last_run_at {
        fields.push(("last_run_at", at.to_string()));
    }
    if let Some(image) = &s.last_image {
        fields.push(("last_image", image.to_string()));
    }
    if let Some(e) = &s.last_error {
        fields.push(("last_error", e.clone()));
    }
    for image in &s.images {
        fields.push(("image", image.to_string()));
    }
    fields.push(("created_by", s.created_by.to_string()));
    fields.push(("created_at", s.created_at.to_string()));
    fields
}

pub fn webhooks_table(hooks: &[api::Webhook]) -> String {
    let rows = hooks
        .iter()
        .map(|h| {
            vec![
                h.id.to_string(),
                h.url.clone(),
                if h.events.is_empty() { "all".to_owned() } else { h.events.join(",") },
                h.created_at.to_string(),
                h.description.clone().unwrap_or_else(|| "-".to_owned()),
            ]
        })
        .collect::<Vec<_>>();
    table(&[("ID", Right), ("URL", Left), ("EVENTS", Left), ("CREATED", Left), ("DESCRIPTION", Left)], &rows)
}

pub fn created_webhook_fields(made: &api::CreatedWebhook) -> Fields {
    vec![
        ("id", made.webhook.id.to_string()),
        ("url", made.webhook.url.clone()),
        ("events", if made.webhook.events.is_empty() { "all".to_owned() } else { made.webhook.events.join(",") }),
        ("secret", format!("{} (shown this once)", made.secret)),
    ]
}

pub fn deliveries_table(deliveries: &[api::Delivery]) -> String {
    let rows = deliveries
        .iter()
        .map(|d| {
            let state = match d.state {
                api::DeliveryState::Pending => "pending",
                api::DeliveryState::Delivered => "delivered",
                api::DeliveryState::Failed => "failed",
            };
            vec![
                d.id.to_string(),
                d.event.clone(),
                state.to_owned(),
                d.attempts.to_string(),
                d.response_status.map_or_else(|| "-".to_owned(), |s| s.to_string()),
                d.created_at.to_string(),
                d.error.clone().unwrap_or_else(|| "-".to_owned()),
            ]
        })
        .collect::<Vec<_>>();
    table(
        &[
            ("ID", Right),
            ("EVENT", Left),
            ("STATE", Left),
            ("ATTEMPTS", Right),
            ("LAST ANSWER", Right),
            ("CREATED", Left),
            ("ERROR", Left),
        ],
        &rows,
    )
}

/// The audit log: one line an entry; a request without a valid token has no actor (`-`).
pub fn activity_table(entries: &[Activity]) -> String {
    let rows = entries
        .iter()
        .map(|a| {
            vec![
                a.at.to_string(),
                a.actor.as_ref().map_or_else(|| "-".to_owned(), Name::to_string),
                a.action.clone(),
                a.target.clone().unwrap_or_else(|| "-".to_owned()),
                a.status.to_string(),
                a.detail.clone().unwrap_or_else(|| "-".to_owned()),
            ]
        })
        .collect::<Vec<_>>();
    table(
        &[("AT", Left), ("ACTOR", Left), ("ACTION", Left), ("TARGET", Left), ("STATUS", Right), ("DETAIL", Left)],
        &rows,
    )
}

/// What an operation is doing, for people: `creating image prod`.
pub fn describe(op: &Operation) -> String {
    let verb = match op.kind {
        OperationKind::ImageCreate | OperationKind::CloneCreate => "creating",
        OperationKind::ImageDelete | OperationKind::CloneDelete => "removing",
        OperationKind::CloneStart => "starting",
        OperationKind::CloneStop => "stopping",
        OperationKind::CloneReset => "resetting",
        OperationKind::CloneRefresh => "refreshing",
        OperationKind::CloneCheckpoint => "making a checkpoint of",
        OperationKind::CloneRevert => "reverting",
        OperationKind::CheckpointDelete => "removing a checkpoint of",
    };
    format!("{verb} {} {}", target_kind_text(op.kind), op.target.name)
}

fn target_kind_text(kind: OperationKind) -> &'static str {
    match kind.target_kind() {
        api::TargetKind::Image => "image",
        api::TargetKind::Clone => "clone",
    }
}

/// `creating 42%` while something under way reports progress, else the bare status.
fn status_text(status: &str, under_way: bool, progress: Option<Progress>) -> String {
    match progress {
        Some(p) if under_way && p.total_bytes > 0 => {
            let percent = (p.done_bytes.min(p.total_bytes) as f64 * 100.0 / p.total_bytes as f64).floor();
            format!("{status} {percent:.0}%")
        }
        _ => status.to_owned(),
    }
}

fn progress_text(p: Progress) -> String {
    format!("{} of about {}", human_bytes(p.done_bytes), human_bytes(p.total_bytes))
}

fn engine_text(engine: &str, version: Option<&str>) -> String {
    match version {
        Some(v) if !v.is_empty() => format!("{engine} {v}"),
        _ => engine.to_owned(),
    }
}

/// How long ago, roughly: `just now`, `40 s ago`, `12 min ago`, `3 h ago`, `2 days ago`.
pub fn ago(seconds: u64) -> String {
    match seconds {
        0 => "just now".to_owned(),
        1..120 => format!("{seconds} s ago"),
        120..7200 => format!("{} min ago", seconds / 60),
        7200..172_800 => format!("{} h ago", seconds / 3600),
        _ => format!("{} days ago", seconds / 86_400),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Align {
    Left,
    Right,
}
use Align::{Left, Right};

/// Columns two spaces apart, each as wide as its widest cell, with no trailing spaces.
fn table(columns: &[(&str, Align)], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = columns.iter().map(|(h, _)| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let headers: Vec<String> = columns.iter().map(|(h, _)| h.to_string()).collect();
    for row in std::iter::once(&headers).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            let (width, align) = (widths[i], columns[i].1);
            if i > 0 {
                line.push_str("  ");
            }
            match align {
                Left => write!(line, "{cell:<width$}"),
                Right => write!(line, "{cell:>width$}"),
            }
            .expect("writing to a String");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `key: value` lines with the values aligned.
pub fn key_values(fields: &[(&str, String)]) -> String {
    let width = fields.iter().map(|(k, _)| k.len() + 1).max().unwrap_or(0);
    let mut out = String::new();
    for (key, value) in fields {
        writeln!(out, "{:<width$} {value}", format!("{key}:")).expect("writing to a String");
    }
    out
}

/// Sizes in binary units with one decimal: `512 B`, `240.0 KiB`, `600.0 MiB`, `1.5 GiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    // Round first, so 1023.96 KiB shows as 1.0 MiB rather than 1024.0 KiB.
    while (value * 10.0).round() / 10.0 >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use api::{CloneStatus, Driver, OperationId, Role};
    use client::testing::{self, operation};

    use super::*;

    #[test]
    fn sizes_are_human_readable() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1.0 KiB");
        assert_eq!(human_bytes(245_760), "240.0 KiB");
        assert_eq!(human_bytes(512 * 1024 * 1024), "512.0 MiB");
        assert_eq!(human_bytes(629_145_600), "600.0 MiB");
        assert_eq!(human_bytes(1024 * 1024 - 1), "1.0 MiB");
        assert_eq!(human_bytes(3 * 1024 * 1024 * 1024 / 2), "1.5 GiB");
        assert_eq!(human_bytes(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn ages_are_rough() {
        assert_eq!(ago(0), "just now");
        assert_eq!(ago(40), "40 s ago");
        assert_eq!(ago(125), "2 min ago");
        assert_eq!(ago(3 * 3600 + 5), "3 h ago");
        assert_eq!(ago(3 * 86_400), "3 days ago");
    }

    #[test]
    fn the_images_table_is_aligned() {
        let mut staging = testing::creating_image("staging-eu", 1 << 30, 4 << 30);
        staging.engine_version = None;
        staging.logical_bytes = 0;
        staging.clone_count = 0;
        let table = images_table(&[testing::image("prod"), staging]);
        assert_eq!(
            table,
            "\
NAME        STATUS        ENGINE    LOGICAL     STORED  CLONES  TEAM     CREATED
prod        ready         db 15   600.0 MiB  603.7 MiB       2  default  2026-11-21T22:26:40Z
staging-eu  creating 25%  db            0 B  603.7 MiB       0  default  2026-11-21T22:26:40Z
"
        );
        assert_eq!(images_table(&[]), "NAME  STATUS  ENGINE  LOGICAL  STORED  CLONES  TEAM  CREATED\n");
    }

    #[test]
    fn the_clones_table_is_aligned_and_shows_no_password() {
        let alice = testing::clone("alice", "prod", 7501);
        let mut bob = testing::clone("bob-long-name", "prod", 7502);
        bob.status = CloneStatus::Stopped;
        bob.driver = Driver::Copy;
        bob.stored_bytes = 629_145_600;
        bob.owner = testing::name("bob");
        let mut carol = testing::clone("carol", "prod", 7503);
        carol.status = CloneStatus::Creating;
        carol.sizes_at = None;
        let table = clones_table(&[alice, bob, carol]);
        assert_eq!(
            table,
            "\
NAME           IMAGE  STATUS    DRIVER  ADDRESS            STORED  OWNER  CREATED
alice          prod   ready     cowfs   127.0.0.1:7501  240.0 KiB  admin  2026-11-21T22:27:40Z
bob-long-name  prod   stopped   copy    127.0.0.1:7502  600.0 MiB  bob    2026-11-21T22:27:40Z
carol          prod   creating  cowfs   127.0.0.1:7503          -  admin  2026-11-21T22:27:40Z
"
        );
        assert!(!table.contains("pw"));
    }

    #[test]
    fn one_clone_is_listed_key_by_key_with_its_url_and_the_age_of_its_size() {
        let clone = testing::clone("alice", "prod", 7501);
        let now = Timestamp(clone.sizes_at.unwrap().0 + 40);
        assert_eq!(
            key_values(&clone_fields(&clone, now)),
            "\
name:         alice
image:        prod
status:       ready
driver:       cowfs
engine:       db 15
port:         7501
url:          db://admin:pw@127.0.0.1:7501/main
owner:        admin
team:         default
stored size:  240.0 KiB, measured 40 s ago
logical size: 600.0 MiB
created_at:   2026-11-21T22:27:40Z
"
        );
        let mut resetting = clone;
        resetting.status = CloneStatus::Resetting;
        resetting.sizes_at = None;
        resetting.operation = Some(OperationId(12));
        resetting.message = Some("restarting its server".into());
        resetting.url = None;
        let text = key_values(&clone_fields(&resetting, now));
        assert!(text.contains("\nmessage:      restarting its server\n"), "{text}");
        assert!(text.contains("\nurl:          (only its owner and administrators see it)\n"), "{text}");
        assert!(text.contains("\nstored size:  not measured yet\n"), "{text}");
        assert!(text.ends_with("\noperation:    12\n"), "{text}");
    }

    #[test]
    fn one_image_is_listed_key_by_key() {
        let mut failed = testing::image("prod");
        failed.status = ImageStatus::Failed;
        failed.message = Some("the source is not a data directory".to_owned());
        assert_eq!(
            key_values(&image_fields(&failed)),
            "\
name:         prod
status:       failed
message:      the source is not a data directory
engine:       db 15
source:       /srv/backups/prod
team:         default
created_by:   admin
logical size: 600.0 MiB
stored size:  603.7 MiB
files:        1123
clones:       2
created_at:   2026-11-21T22:26:40Z
"
        );
        let text = key_values(&image_fields(&testing::creating_image("prod", 1 << 30, 4 << 30)));
        assert!(text.contains("\nprogress:     1.0 GiB of about 4.0 GiB\n"), "{text}");
        assert!(text.ends_with("\noperation:    1\n"), "{text}");
    }

    #[test]
    fn operations_are_listed_and_shown() {
        let mut copying = operation(13, OperationKind::ImageCreate, "prod", OperationState::Running);
        copying.progress = Some(Progress { done_bytes: 1 << 30, total_bytes: 4 << 30 });
        copying.message = Some("copying files".into());
        let done = operation(12, OperationKind::CloneReset, "alice", OperationState::Succeeded);
        let mut failed = operation(9, OperationKind::CloneCreate, "bob", OperationState::Failed);
        failed.error = Some("no free port in 7500-7999".into());
        assert_eq!(
            operations_table(&[copying.clone(), done, failed.clone()]),
            "\
ID  KIND          TARGET  STATE        CREATED               FINISHED              DETAIL
13  image_create  prod    running 25%  2026-11-21T22:26:40Z  -                     copying files
12  clone_reset   alice   succeeded    2026-11-21T22:26:40Z  2026-11-21T22:26:42Z  -
 9  clone_create  bob     failed       2026-11-21T22:26:40Z  2026-11-21T22:26:42Z  no free port in 7500-7999
"
        );
        assert_eq!(
            key_values(&operation_fields(&copying)),
            "\
id:         13
kind:       image_create
target:     image prod
state:      running
message:    copying files
progress:   1.0 GiB of about 4.0 GiB
created_at: 2026-11-21T22:26:40Z
"
        );
        assert_eq!(
            key_values(&operation_fields(&failed)),
            "\
id:          9
kind:        clone_create
target:      clone bob
state:       failed
error:       no free port in 7500-7999
created_at:  2026-11-21T22:26:40Z
finished_at: 2026-11-21T22:26:42Z
"
        );
    }

    fn user(name: &str, role: Role, teams: &[&str]) -> User {
        User {
            name: testing::name(name),
            role,
            teams: teams.iter().map(|t| testing::name(t)).collect(),
            created_at: Timestamp(1_795_300_000),
        }
    }

    fn token(id: u64, user: &str) -> Token {
        Token {
            id,
            user: testing::name(user),
            description: None,
            created_at: Timestamp(1_795_300_000),
            expires_at: None,
            revoked_at: None,
            last_used_at: None,
        }
    }

    #[test]
    fn users_and_teams_are_listed_and_shown() {
        let users = [user("admin", Role::Admin, &["default"]), user("alice", Role::CloneUser, &["web", "ops"])];
        assert_eq!(
            users_table(&users),
            "\
NAME   ROLE        TEAMS     CREATED
admin  admin       default   2026-11-21T22:26:40Z
alice  clone_user  web, ops  2026-11-21T22:26:40Z
"
        );
        assert_eq!(
            key_values(&user_fields(&user("bob", Role::Viewer, &[]))),
            "name:       bob\nrole:       viewer\nteams:      -\ncreated_at: 2026-11-21T22:26:40Z\n"
        );
        let web = Team {
            name: testing::name("web"),
            members: vec![testing::name("alice"), testing::name("bob")],
            created_at: Timestamp(1_795_300_000),
        };
        assert_eq!(
            teams_table(std::slice::from_ref(&web)),
            "NAME  MEMBERS     CREATED\nweb   alice, bob  2026-11-21T22:26:40Z\n"
        );
        assert_eq!(
            key_values(&team_fields(&web)),
            "name:       web\nmembers:    alice, bob\ncreated_at: 2026-11-21T22:26:40Z\n"
        );
    }

    #[test]
    fn tokens_are_listed_with_their_state_and_never_a_secret() {
        let now = Timestamp(1_795_400_000);
        let mut ci = token(2, "alice");
        ci.description = Some("ci".into());
        ci.expires_at = Some(Timestamp(1_795_500_000));
        ci.last_used_at = Some(Timestamp(1_795_350_000));
        let mut old = token(3, "alice");
        old.expires_at = Some(Timestamp(1_795_300_100));
        let mut gone = token(4, "bob");
        gone.revoked_at = Some(Timestamp(1_795_300_200));
        assert_eq!(
            tokens_table(&[token(1, "admin"), ci.clone(), old, gone.clone()], now),
            "\
ID  USER   STATE    CREATED               EXPIRES               LAST USED             DESCRIPTION
 1  admin  active   2026-11-21T22:26:40Z  never                 -                     -
 2  alice  active   2026-11-21T22:26:40Z  2026-11-24T06:00:00Z  2026-11-22T12:20:00Z  ci
 3  alice  expired  2026-11-21T22:26:40Z  2026-11-21T22:28:20Z  -                     -
 4  bob    revoked  2026-11-21T22:26:40Z  never                 -                     -
"
        );
        assert_eq!(
            key_values(&token_fields(&gone, now)),
            "\
id:           4
user:         bob
state:        revoked
created_at:   2026-11-21T22:26:40Z
expires_at:   never
revoked_at:   2026-11-21T22:30:00Z
last_used_at: -
"
        );
        let new = NewToken { token: ci, secret: "thinclone_0123".into() };
        assert_eq!(
            key_values(&new_token_fields(&new)),
            "id:          2\nuser:        alice\ndescription: ci\nexpires_at:  2026-11-24T06:00:00Z\nsecret:      thinclone_0123\n"
        );
    }

    #[test]
    fn sources_and_activity_are_listed() {
        let source = Source {
            name: testing::name("backups"),
            path: "/srv/backups".into(),
            created_at: Timestamp(1_795_300_000),
        };
        assert_eq!(
            sources_table(std::slice::from_ref(&source)),
            "NAME     PATH          CREATED\nbackups  /srv/backups  2026-11-21T22:26:40Z\n"
        );
        assert_eq!(
            key_values(&source_fields(&source)),
            "name:       backups\npath:       /srv/backups\ncreated_at: 2026-11-21T22:26:40Z\n"
        );
        let entries = [
            Activity {
                id: 2,
                at: Timestamp(1_795_300_060),
                actor: Some(testing::name("alice")),
                action: "clone.reset".into(),
                target: Some("clone a1".into()),
                status: 200,
                detail: None,
            },
            Activity {
                id: 1,
                at: Timestamp(1_795_300_000),
                actor: None,
                action: "POST /v1/images".into(),
                target: None,
                status: 401,
                detail: Some("the token is not valid".into()),
            },
        ];
        assert_eq!(
            activity_table(&entries),
            "\
AT                    ACTOR  ACTION           TARGET    STATUS  DETAIL
2026-11-21T22:27:40Z  alice  clone.reset      clone a1     200  -
2026-11-21T22:26:40Z  -      POST /v1/images  -            401  the token is not valid
"
        );
    }

    #[test]
    fn operations_are_described_in_words() {
        let op = |kind, name| operation(1, kind, name, OperationState::Running);
        assert_eq!(describe(&op(OperationKind::ImageCreate, "prod")), "creating image prod");
        assert_eq!(describe(&op(OperationKind::ImageDelete, "prod")), "removing image prod");
        assert_eq!(describe(&op(OperationKind::CloneReset, "alice")), "resetting clone alice");
        assert_eq!(describe(&op(OperationKind::CloneDelete, "alice")), "removing clone alice");
    }
}
