//! The CLI's commands as parsed from arguments and run against a canned server: what they
//! ask, what they print, and how they fail.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use api::{Driver, ErrorBody, ErrorCode, Name, OperationId, OperationKind, OperationState};
use clap::{CommandFactory, Parser};
use client::testing::{self, operation, Answer, CannedServer, Request};

use super::clone::{CloneCommand, Target};
use super::image::ImageCommand;
use super::op::OpCommand;
use super::*;
use crate::{Cli, Command};

fn parse_cli(args: &str) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("thinclone").chain(args.split_whitespace()))
}

fn parse(args: &str) -> Result<Command, clap::Error> {
    parse_cli(args).map(|cli| cli.command)
}

/// The client options of a command line.
fn opts(args: &str) -> ClientOpts {
    parse_cli(args).unwrap().client
}

/// The error of arguments that must not parse.
fn parse_err(args: &str) -> clap::Error {
    match parse(args) {
        Ok(_) => panic!("`thinclone {args}` parsed"),
        Err(e) => e,
    }
}

/// What running a command printed and asked.
struct Run {
    result: Result<(), String>,
    stdout: String,
    requests: Vec<Request>,
}

impl Run {
    fn lines(&self) -> Vec<String> {
        self.requests.iter().map(Request::line).collect()
    }

    fn ok(&self) -> &str {
        if let Err(e) = &self.result {
            panic!("the command failed: {e}");
        }
        &self.stdout
    }
}

/// Runs `thinclone ARGS` against a server that gives `answers`, as `main` would, with an
/// empty environment and no config file.
fn run(args: &str, answers: Vec<Answer>) -> Run {
    let server = CannedServer::start(answers);
    let mut out = Vec::new();
    let result = {
        let Cli { client: opts, command } = parse_cli(&format!("{args} --url {}", server.url())).unwrap();
        let endpoint = config::resolve_with(&opts, &BTreeMap::new(), &[]).unwrap();
        let mut ctx = test_ctx(&endpoint, opts.json, &mut out);
        let ctx = &mut ctx;
        match command {
            Command::Image { command } => image::run(command, ctx),
            Command::Clone { command } => clone::run(command, ctx),
            Command::Op { command } => op::run(command, ctx),
            Command::Whoami => login::whoami(ctx),
            Command::User { command } => user::run(command, ctx),
            Command::Team { command } => team::run(command, ctx),
            Command::Token { command } => token::run(command, ctx),
            Command::Source { command } => source::run(command, ctx),
            Command::Activity(args) => activity::run(args, ctx),
            _ => panic!("not a client command: {args}"),
        }
        .map_err(|e| explain(e, &endpoint))
    };
    Run {
        result: result.map_err(|e| format!("{e:#}")),
        stdout: String::from_utf8(out).unwrap(),
        requests: server.requests(),
    }
}

/// A context that prints into `out`, draws no progress and polls without pausing.
fn test_ctx<'a>(endpoint: &config::Endpoint, json: bool, out: &'a mut Vec<u8>) -> Ctx<'a> {
    Ctx { client: endpoint.client().unwrap(), json, progress: false, poll_interval: Duration::ZERO, out }
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).unwrap() + "\n"
}

fn error_answer(code: ErrorCode, message: &str) -> Answer {
    Answer::json(code.http_status(), &ErrorBody::new(code, message))
}

#[test]
fn the_cli_definition_is_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn image_create_takes_exactly_one_source() {
    let both = parse_err("image create prod --from-url db://h/db --from-dir /data");
    assert_eq!(both.kind(), clap::error::ErrorKind::ArgumentConflict);
    let neither = parse_err("image create prod");
    assert_eq!(neither.kind(), clap::error::ErrorKind::MissingRequiredArgument);

    match parse("image create prod --from-dir /data --no-wait").unwrap() {
        Command::Image { command: ImageCommand::Create { name, from_url, from_dir, no_wait, .. }, .. } => {
            assert_eq!(name.as_str(), "prod");
            assert_eq!(from_url, None);
            assert_eq!(from_dir, Some(PathBuf::from("/data")));
            assert!(no_wait);
        }
        _ => panic!("not image create"),
    }
}

#[test]
fn client_options_are_accepted_anywhere() {
    for args in [
        "image list --json --url http://127.0.0.1:9999",
        "--url http://127.0.0.1:9999 --json image list",
        "image --url http://127.0.0.1:9999 list --json",
    ] {
        let cli = parse_cli(args).unwrap();
        assert!(matches!(cli.command, Command::Image { command: ImageCommand::List }), "{args}");
        assert!(cli.client.json, "{args}");
        assert_eq!(cli.client.url.as_deref(), Some("http://127.0.0.1:9999"), "{args}");
    }
    let cli = parse_cli("clone --json show alice").unwrap();
    match cli.command {
        Command::Clone { command: CloneCommand::Show { name } } => assert_eq!(name.as_str(), "alice"),
        _ => panic!("not clone show"),
    }
    assert!(cli.client.json);
    let cli = parse_cli("op wait 12 --json").unwrap();
    assert!(matches!(cli.command, Command::Op { command: OpCommand::Wait { id: OperationId(12) } }));
    assert!(cli.client.json);
    let tls = opts("--token t0 whoami --ca-file ca.pem --url https://h:7420");
    assert_eq!(
        (tls.token.as_deref(), tls.ca_file, tls.url.as_deref()),
        (Some("t0"), Some(PathBuf::from("ca.pem")), Some("https://h:7420"))
    );
    // Nothing given: the environment, the config file or the defaults decide (config.rs).
    let none = opts("clone list");
    assert_eq!((none.url, none.token, none.ca_file, none.json), (None, None, None, false));
}

#[test]
fn commands_that_are_not_clients_take_no_client_options() {
    let serve = opts("serve --data-dir /d --json --token x");
    assert_eq!(serve.given(), ["--json", "--token"]);
    let err = crate::no_client_opts(&serve, "serve").unwrap_err();
    assert_eq!(
        err.to_string(),
        "`thinclone serve` takes no --json, --token: those are for the commands that talk to a server"
    );
    crate::no_client_opts(&opts("mount --image /i --layer /l /m"), "mount").unwrap();
}

#[test]
fn clone_create_needs_an_image_and_knows_its_drivers() {
    assert_eq!(parse_err("clone create alice").kind(), clap::error::ErrorKind::MissingRequiredArgument);
    let zfs = parse_err("clone create alice --image prod --driver zfs");
    assert_eq!(zfs.kind(), clap::error::ErrorKind::InvalidValue);
    assert!(zfs.to_string().contains("[possible values: cowfs, reflink, copy]"), "{zfs}");
    match parse("clone create alice --image prod --driver copy --no-wait").unwrap() {
        Command::Clone { command: CloneCommand::Create { name, image, driver, no_wait, .. }, .. } => {
            assert_eq!(
                (name.as_str(), image.as_ref().map(Name::as_str), driver, no_wait),
                ("alice", Some("prod"), Some(Driver::Copy), true)
            );
        }
        _ => panic!("not clone create"),
    }
    // A branch names its origin, and takes neither an image nor a driver.
    match parse("clone create b --from alice@cp2").unwrap() {
        Command::Clone { command: CloneCommand::Create { from, image: None, .. }, .. } => {
            let (clone, checkpoint) = from.unwrap();
            assert_eq!((clone.as_str(), checkpoint.as_ref().map(Name::as_str)), ("alice", Some("cp2")));
        }
        _ => panic!("not clone create --from"),
    }
    assert_eq!(parse_err("clone create b --from alice --image prod").kind(), clap::error::ErrorKind::ArgumentConflict);
    assert_eq!(parse_err("clone create b --from alice --driver copy").kind(), clap::error::ErrorKind::ArgumentConflict);
    assert_eq!(parse_err("clone create b --from alice@Bad!").kind(), clap::error::ErrorKind::ValueValidation);
    // `checkpoint rm` is a command of its own; a checkpoint names its clone.
    match parse("clone checkpoint rm alice cp1").unwrap() {
        Command::Clone { command: CloneCommand::Checkpoint(_), .. } => {}
        _ => panic!("not clone checkpoint rm"),
    }
    assert_eq!(parse_err("clone checkpoint").kind(), clap::error::ErrorKind::MissingRequiredArgument);
    for action in ["start", "stop", "reset", "rm"] {
        match parse(&format!("clone {action} alice --no-wait")).unwrap() {
            Command::Clone {
                command:
                    CloneCommand::Start(Target { name, no_wait })
                    | CloneCommand::Stop(Target { name, no_wait })
                    | CloneCommand::Reset(Target { name, no_wait })
                    | CloneCommand::Rm(Target { name, no_wait }),
                ..
            } => assert_eq!((name.as_str(), no_wait), ("alice", true)),
            _ => panic!("not clone {action}"),
        }
    }
}

#[test]
fn bad_names_and_ids_are_refused_before_anything_is_sent() {
    let err = parse_err("clone show Alice");
    assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
    assert!(err.to_string().contains("invalid name \"Alice\""), "{err}");
    parse_err("image create ../x --from-dir /d");
    let err = parse_err("op show 0");
    assert!(err.to_string().contains("invalid operation id"), "{err}");
}

#[test]
fn clone_create_waits_and_prints_the_clone() {
    let alice = testing::clone("alice", "prod", 7501);
    let answers = || {
        vec![
            Answer::json(202, &operation(7, OperationKind::CloneCreate, "alice", OperationState::Running)),
            Answer::json(200, &operation(7, OperationKind::CloneCreate, "alice", OperationState::Running)),
            Answer::json(200, &operation(7, OperationKind::CloneCreate, "alice", OperationState::Succeeded)),
            Answer::json(200, &alice),
        ]
    };
    let run_json = run("clone create alice --image prod --driver reflink --json", answers());
    assert_eq!(run_json.ok(), json(&alice));
    assert_eq!(
        run_json.lines(),
        ["POST /v1/clones", "GET /v1/operations/7", "GET /v1/operations/7", "GET /v1/clones/alice"]
    );
    assert_eq!(run_json.requests[0].body, r#"{"name":"alice","image":"prod","driver":"reflink"}"#);

    let text = run("clone create alice --image prod", answers());
    let out = text.ok();
    assert!(out.starts_with("name:         alice\n"), "{out}");
    assert!(out.contains("\nurl:          db://admin:pw@127.0.0.1:7501/main\n"), "{out}");
}

#[test]
fn no_wait_prints_the_operation() {
    let running = operation(7, OperationKind::CloneCreate, "alice", OperationState::Running);
    let run_json = run("clone create alice --image prod --no-wait --json", vec![Answer::json(202, &running)]);
    assert_eq!(run_json.ok(), json(&running));
    assert_eq!(run_json.lines(), ["POST /v1/clones?wait=0"], "--no-wait asks the server to answer at once");

    let removing = operation(8, OperationKind::ImageDelete, "prod", OperationState::Running);
    let text = run("image rm prod --no-wait", vec![Answer::json(202, &removing)]);
    assert!(text.ok().starts_with("id:         8\nkind:       image_delete\n"), "{}", text.stdout);
}

/// Regression: `rm --json` printed nothing.
#[test]
fn rm_json_prints_the_ended_operation() {
    let done = operation(8, OperationKind::CloneDelete, "alice", OperationState::Succeeded);
    let run_json = run(
        "clone rm alice --json",
        vec![
            Answer::json(202, &operation(8, OperationKind::CloneDelete, "alice", OperationState::Running)),
            Answer::json(200, &done),
        ],
    );
    assert_eq!(run_json.ok(), json(&done));
    assert_eq!(run_json.lines(), ["DELETE /v1/clones/alice", "GET /v1/operations/8"]);

    let done = operation(9, OperationKind::ImageDelete, "prod", OperationState::Succeeded);
    let run_json = run("image rm prod --json", vec![Answer::json(200, &done)]);
    assert_eq!(run_json.ok(), json(&done));
    // Without --json, a removal prints nothing.
    assert_eq!(run("image rm prod", vec![Answer::json(200, &done)]).ok(), "");
}

#[test]
fn a_failed_operation_fails_the_command_with_its_error() {
    let mut failed = operation(7, OperationKind::CloneReset, "alice", OperationState::Failed);
    failed.error = Some("the clone's server did not start again: port 7501 is in use".into());
    let waited = run(
        "clone reset alice --json",
        vec![
            Answer::json(202, &operation(7, OperationKind::CloneReset, "alice", OperationState::Running)),
            Answer::json(200, &failed),
        ],
    );
    assert_eq!(waited.result, Err("the clone's server did not start again: port 7501 is in use".into()));
    assert_eq!(waited.stdout, "");
    // An operation that had already failed when the server answered fails --no-wait too.
    let at_once = run("clone reset alice --no-wait --json", vec![Answer::json(200, &failed)]);
    assert_eq!(at_once.result, Err("the clone's server did not start again: port 7501 is in use".into()));
    assert_eq!(at_once.stdout, "");
}

#[test]
fn a_refusal_is_exactly_the_servers_message() {
    let refused = run(
        "image rm prod --json",
        vec![error_answer(ErrorCode::Conflict, "image prod has clones: alice, bob; remove them first")],
    );
    assert_eq!(refused.result, Err("image prod has clones: alice, bob; remove them first".into()));
    assert_eq!(refused.stdout, "");
}

#[test]
fn image_create_sends_an_absolute_directory_and_prints_the_image() {
    let prod = testing::image("prod");
    let created = run(
        "image create prod --from-dir data/main --json",
        vec![
            Answer::json(202, &operation(3, OperationKind::ImageCreate, "prod", OperationState::Running)),
            Answer::json(200, &operation(3, OperationKind::ImageCreate, "prod", OperationState::Succeeded)),
            Answer::json(200, &prod),
        ],
    );
    assert_eq!(created.ok(), json(&prod));
    let sent: api::CreateImage = serde_json::from_str(&created.requests[0].body).unwrap();
    let expected = std::env::current_dir().unwrap().join("data/main");
    assert_eq!(sent.from_dir.map(PathBuf::from), Some(expected));
    assert_eq!(sent.name, Name::new("prod").unwrap());
}

#[test]
fn op_wait_follows_an_operation_to_its_end() {
    let done = operation(5, OperationKind::ImageCreate, "prod", OperationState::Succeeded);
    let waited = run(
        "op wait 5 --json",
        vec![
            Answer::json(200, &operation(5, OperationKind::ImageCreate, "prod", OperationState::Running)),
            Answer::json(200, &done),
        ],
    );
    assert_eq!(waited.ok(), json(&done));
    assert_eq!(waited.lines(), ["GET /v1/operations/5", "GET /v1/operations/5"]);

    let failed = operation(6, OperationKind::ImageCreate, "prod", OperationState::Failed);
    assert_eq!(run("op wait 6", vec![Answer::json(200, &failed)]).result, Err("it went wrong".into()));
    // `op show` shows a failed operation without failing.
    let shown = run("op show 6", vec![Answer::json(200, &failed)]);
    assert!(shown.ok().contains("\nstate:       failed\nerror:       it went wrong\n"), "{}", shown.stdout);
}

#[test]
fn lists_print_tables_or_arrays() {
    let ops = vec![operation(2, OperationKind::CloneStop, "alice", OperationState::Succeeded)];
    assert_eq!(run("op list --json", vec![Answer::json(200, &ops)]).ok(), json(&ops));
    let table = run("op list", vec![Answer::json(200, &ops)]);
    assert!(table.ok().starts_with("ID  KIND        TARGET  STATE"), "{}", table.stdout);
    let clones = vec![testing::clone("alice", "prod", 7501)];
    assert_eq!(run("clone list --json", vec![Answer::json(200, &clones)]).ok(), json(&clones));
    let images = vec![testing::image("prod")];
    assert_eq!(run("image list --json", vec![Answer::json(200, &images)]).ok(), json(&images));
    assert_eq!(run("image show prod --json", vec![Answer::json(200, &images[0])]).lines(), ["GET /v1/images/prod"]);
}

fn user(name: &str, role: api::Role, teams: &[&str]) -> api::User {
    api::User {
        name: testing::name(name),
        role,
        teams: teams.iter().map(|t| testing::name(t)).collect(),
        created_at: api::Timestamp(1_795_300_000),
    }
}

fn team(name: &str, members: &[&str]) -> api::Team {
    api::Team {
        name: testing::name(name),
        members: members.iter().map(|m| testing::name(m)).collect(),
        created_at: api::Timestamp(1_795_300_000),
    }
}

fn token(id: u64, user: &str) -> api::Token {
    api::Token {
        id,
        user: testing::name(user),
        description: None,
        created_at: api::Timestamp(1_795_300_000),
        expires_at: None,
        revoked_at: None,
        last_used_at: None,
    }
}

#[test]
fn user_create_takes_a_role_and_teams() {
    match parse("user create alice --role clone_user --team web --team ops").unwrap() {
        Command::User { command: user::UserCommand::Create { name, role, teams } } => {
            assert_eq!((name.as_str(), role), ("alice", api::Role::CloneUser));
            assert_eq!(teams.iter().map(Name::as_str).collect::<Vec<_>>(), ["web", "ops"]);
        }
        _ => panic!("not user create"),
    }
    assert_eq!(parse_err("user create alice").kind(), clap::error::ErrorKind::MissingRequiredArgument);
    let bad = parse_err("user create alice --role root");
    assert_eq!(bad.kind(), clap::error::ErrorKind::InvalidValue);
    assert!(bad.to_string().contains("[possible values: viewer, clone_user, image_creator, admin]"), "{bad}");

    let alice = user("alice", api::Role::CloneUser, &["web", "ops"]);
    let made = run("user create alice --role clone_user --team web --team ops --json", vec![Answer::json(201, &alice)]);
    assert_eq!(made.ok(), json(&alice));
    assert_eq!(made.lines(), ["POST /v1/users"]);
    assert_eq!(made.requests[0].body, r#"{"name":"alice","role":"clone_user","teams":["web","ops"]}"#);
}

#[test]
fn users_and_teams_are_listed_shown_and_changed() {
    let admin = user("admin", api::Role::Admin, &["default"]);
    let list = run("user list", vec![Answer::json(200, &vec![admin.clone()])]);
    assert!(list.ok().starts_with("NAME   ROLE   TEAMS    CREATED\nadmin  admin  default  "), "{}", list.stdout);
    let shown = run("user show admin", vec![Answer::json(200, &admin)]);
    assert!(shown.ok().starts_with("name:       admin\nrole:       admin\nteams:      default\n"), "{}", shown.stdout);
    assert_eq!(shown.lines(), ["GET /v1/users/admin"]);
    let removed = run("user rm alice --json", vec![Answer::text(204, "")]);
    assert_eq!((removed.ok(), removed.lines()), ("", vec!["DELETE /v1/users/alice".to_owned()]));

    let web = team("web", &["alice"]);
    assert_eq!(run("team create web --json", vec![Answer::json(201, &web)]).ok(), json(&web));
    let added = run("team add web alice", vec![Answer::json(200, &web)]);
    assert_eq!(added.ok(), "name:       web\nmembers:    alice\ncreated_at: 2026-11-21T22:26:40Z\n");
    assert_eq!(added.lines(), ["PUT /v1/teams/web/members/alice"]);
    let taken = run("team remove web alice --json", vec![Answer::json(200, &team("web", &[]))]);
    assert_eq!(taken.lines(), ["DELETE /v1/teams/web/members/alice"]);
    assert_eq!(run("team rm web", vec![Answer::text(204, "")]).lines(), ["DELETE /v1/teams/web"]);
    let teams = run("team list", vec![Answer::json(200, &vec![web])]);
    assert!(teams.ok().starts_with("NAME  MEMBERS  CREATED\nweb   alice    "), "{}", teams.stdout);
}

#[test]
fn whoami_shows_the_user() {
    let admin = user("admin", api::Role::Admin, &["default"]);
    let text = run("whoami", vec![Answer::json(200, &admin)]);
    assert_eq!(
        text.ok(),
        "name:       admin\nrole:       admin\nteams:      default\ncreated_at: 2026-11-21T22:26:40Z\n"
    );
    assert_eq!(text.lines(), ["GET /v1/whoami"]);
    assert_eq!(run("whoami --json", vec![Answer::json(200, &admin)]).ok(), json(&admin));
}

#[test]
fn token_create_sends_the_expiry_in_seconds_and_prints_the_secret_once() {
    match parse("token create --user alice --description ci --expires-in 8h").unwrap() {
        Command::Token { command: token::TokenCommand::Create { user, description, expires_in } } => {
            assert_eq!(user.map(|u| u.to_string()).as_deref(), Some("alice"));
            assert_eq!(description.as_deref(), Some("ci"));
            assert_eq!(expires_in, Some(Duration::from_secs(8 * 3600)));
        }
        _ => panic!("not token create"),
    }
    let bad = parse_err("token create --expires-in soon");
    assert!(bad.to_string().contains("give a duration like 8h, 30days or 1y"), "{bad}");
    let short = parse_err("token create --expires-in 10ms");
    assert!(short.to_string().contains("a token lives at least a second"), "{short}");

    let new = api::NewToken { token: token(5, "admin"), secret: "thinclone_fresh".into() };
    let made = run("token create --expires-in 1s", vec![Answer::json(201, &new)]);
    assert_eq!(made.ok(), "id:         5\nuser:       admin\nexpires_at: never\nsecret:     thinclone_fresh\n");
    assert_eq!(made.requests[0].body, r#"{"expires_in":1}"#);
    let made = run("token create --json", vec![Answer::json(201, &new)]);
    assert_eq!(made.ok(), json(&new));
    assert_eq!(made.requests[0].body, "{}");
}

#[test]
fn tokens_are_listed_and_revoked() {
    let mut revoked = token(3, "alice");
    revoked.revoked_at = Some(api::Timestamp(1_795_300_100));
    let list = run("token list", vec![Answer::json(200, &vec![token(1, "admin"), revoked.clone()])]);
    let out = list.ok();
    assert!(out.starts_with("ID  USER   STATE    CREATED"), "{out}");
    assert!(out.contains("\n 3  alice  revoked  "), "{out}");
    let gone = run("token revoke 3", vec![Answer::json(200, &revoked)]);
    assert!(gone.ok().contains("\nstate:        revoked\n"), "{}", gone.stdout);
    assert_eq!(gone.lines(), ["DELETE /v1/tokens/3"]);
    assert_eq!(parse_err("token revoke x").kind(), clap::error::ErrorKind::ValueValidation);
}

#[test]
fn source_add_sends_an_absolute_path() {
    let source = api::Source { name: testing::name("tmp"), path: "/tmp".into(), created_at: api::Timestamp(1) };
    let added = run("source add tmp backups/nightly --json", vec![Answer::json(201, &source)]);
    assert_eq!(added.ok(), json(&source));
    let sent: api::CreateSource = serde_json::from_str(&added.requests[0].body).unwrap();
    assert_eq!(PathBuf::from(sent.path), std::env::current_dir().unwrap().join("backups/nightly"));
    let list = run("source list", vec![Answer::json(200, &vec![source])]);
    assert!(list.ok().starts_with("NAME  PATH  CREATED\ntmp   /tmp  "), "{}", list.stdout);
    assert_eq!(run("source rm tmp", vec![Answer::text(204, "")]).lines(), ["DELETE /v1/sources/tmp"]);
}

#[test]
fn activity_takes_its_filters() {
    let entries: Vec<api::Activity> = Vec::new();
    let all = run("activity", vec![Answer::json(200, &entries)]);
    assert_eq!(all.ok(), "AT  ACTOR  ACTION  TARGET  STATUS  DETAIL\n");
    assert_eq!(all.lines(), ["GET /v1/activity"]);
    let some = run(
        "activity --user alice --target alice --since 2026-11-21T22:00:00Z --limit 5 --json",
        vec![Answer::json(200, &entries)],
    );
    assert_eq!(some.ok(), "[]\n");
    assert_eq!(some.lines(), ["GET /v1/activity?user=alice&target=alice&since=2026%2D11%2D21T22%3A00%3A00Z&limit=5"]);
    match parse("activity --since 90min").unwrap() {
        Command::Activity(args) => {
            let since = args.since.unwrap();
            assert_eq!(since, activity::Since::Ago(Duration::from_secs(5400)));
            assert_eq!(since.at(api::Timestamp(1_795_300_000)), api::Timestamp(1_795_300_000 - 5400));
        }
        _ => panic!("not activity"),
    }
    let bad = parse_err("activity --since yesterday");
    assert!(bad.to_string().contains("give a time ago like 2h or 7days"), "{bad}");
}

#[test]
fn image_create_names_the_team() {
    let answers = vec![Answer::json(200, &operation(3, OperationKind::ImageCreate, "prod", OperationState::Running))];
    let made = run("image create prod --from-dir /srv/p --team web --no-wait --json", answers);
    made.ok();
    assert_eq!(made.requests[0].body, r#"{"name":"prod","from_dir":"/srv/p","team":"web"}"#);
}

#[test]
fn image_create_from_backups_sends_each_source_and_its_options() {
    for (args, body) in [
        ("--from-dump /srv/app.dump", r#"{"name":"prod","from_dump":"/srv/app.dump"}"#),
        (
            "--from-repo /srv/repo --stanza main --target-time 2026-11-30T02:00:00Z",
            r#"{"name":"prod","from_repo":"/srv/repo","stanza":"main","target_time":"2026-11-30T02:00:00Z"}"#,
        ),
        (
            "--from-dir /srv/base --archive /srv/wal --target-lsn 0/3000060",
            r#"{"name":"prod","from_dir":"/srv/base","archive":"/srv/wal","target_lsn":"0/3000060"}"#,
        ),
    ] {
        let answers =
            vec![Answer::json(200, &operation(3, OperationKind::ImageCreate, "prod", OperationState::Running))];
        let made = run(&format!("image create prod {args} --no-wait --json"), answers);
        made.ok();
        assert_eq!(made.requests[0].body, body, "{args}");
    }
    // Two sources, or two targets, are refused before anything is sent. (An option of
    // another source, such as --stanza with --from-dump, is the server's to refuse: clap
    // does not enforce `requires` on arguments of a group, clap-rs/clap#4707.)
    for args in [
        "--from-dump /d --from-repo /r",
        "--from-dir /d --archive /a --target-lsn 0/1 --target-time 2026-11-30T02:00:00Z",
    ] {
        parse_err(&format!("image create prod {args}"));
    }
}

#[test]
fn a_refusal_for_want_of_a_token_says_how_to_log_in() {
    let refused = || {
        vec![error_answer(
            ErrorCode::Unauthorized,
            "this route needs a token: send `Authorization: Bearer <token>` (see `thinclone login`)",
        )]
    };
    let none = run("image list", refused());
    let message = none.result.unwrap_err();
    let url = message.split("no token was given for ").nth(1).unwrap().split(':').take(3).collect::<Vec<_>>().join(":");
    assert_eq!(
        message,
        format!(
            "this route needs a token: send `Authorization: Bearer <token>` (see `thinclone login`)\n\
             no token was given for {url}: log in with `thinclone login --url {url} --token-file FILE` (an \
             administrator makes tokens with `thinclone token create --user NAME`), or set THINCLONE_TOKEN"
        )
    );
    let bad = run(
        "whoami --token thinclone_old",
        vec![error_answer(ErrorCode::Unauthorized, "the token is not valid: it is unknown, revoked or expired")],
    );
    let message = bad.result.unwrap_err();
    assert!(
        message.starts_with(
            "the token is not valid: it is unknown, revoked or expired\nthe token from --token was refused; log in \
             again with `thinclone login --url http://127.0.0.1:"
        ),
        "{message}"
    );
    assert!(!message.contains("thinclone_old"), "a token is never printed: {message}");
    assert_eq!(bad.requests[0].authorization.as_deref(), Some("Bearer thinclone_old"));
    // A 403 is the server's message, as it is.
    let forbidden = run(
        "user list",
        vec![error_answer(
            ErrorCode::Forbidden,
            "alice has the role clone_user; to list users takes the role admin or above",
        )],
    );
    assert_eq!(
        forbidden.result,
        Err("alice has the role clone_user; to list users takes the role admin or above".into())
    );
}

// ---------------------------------------------------------------- config and login

/// An environment with its config and data homes in `dir`.
fn env_in(dir: &std::path::Path) -> BTreeMap<&'static str, String> {
    BTreeMap::from([
        ("HOME", dir.join("home").display().to_string()),
        ("XDG_CONFIG_HOME", dir.join("config").display().to_string()),
    ])
}

#[test]
fn flags_win_over_the_environment_which_wins_over_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = env_in(dir.path());
    let path = config::config_path(&env).unwrap();
    assert_eq!(path, dir.path().join("config/thinclone/config.toml"));
    let saved = config::ConfigFile {
        url: Some("https://tc.example:7420".into()),
        token: Some("thinclone_saved".into()),
        ca_file: Some("/etc/tc/ca.pem".into()),
    };
    config::write_config(&path, &saved).unwrap();
    let bootstrap = dir.path().join("admin.token");
    std::fs::write(&bootstrap, "thinclone_bootstrap\n").unwrap();
    let resolve = |args: &str, env: &BTreeMap<&str, String>| {
        config::resolve_with(&opts(&format!("whoami {args}")), env, std::slice::from_ref(&bootstrap)).unwrap()
    };

    // The config file alone: its URL, token and CA.
    let from_file = resolve("", &env);
    assert_eq!(from_file.url, "https://tc.example:7420");
    let token = from_file.token.clone().unwrap();
    assert_eq!((token.secret.as_str(), token.source), ("thinclone_saved", config::TokenSource::Config(path.clone())));
    assert_eq!(from_file.ca_file, Some(PathBuf::from("/etc/tc/ca.pem")));
    assert!(!format!("{from_file:?}").contains("thinclone_saved"), "Debug hides the token");

    // The environment over the file.
    env.insert("THINCLONE_TOKEN", "thinclone_env".into());
    env.insert("THINCLONE_CA_FILE", "/env/ca.pem".into());
    let from_env = resolve("", &env);
    assert_eq!(from_env.token.unwrap().source, config::TokenSource::Env);
    assert_eq!(from_env.ca_file, Some(PathBuf::from("/env/ca.pem")));

    // Flags over both.
    let from_flags = resolve("--token thinclone_flag --ca-file /flag/ca.pem --url https://tc.example:7420/", &env);
    assert_eq!(from_flags.url, "https://tc.example:7420");
    let token = from_flags.token.unwrap();
    assert_eq!((token.secret.as_str(), token.source), ("thinclone_flag", config::TokenSource::Flag));
    assert_eq!(from_flags.ca_file, Some(PathBuf::from("/flag/ca.pem")));

    // The file's token and CA are its URL's only: another server never gets them.
    env.remove("THINCLONE_TOKEN");
    env.remove("THINCLONE_CA_FILE");
    env.insert("THINCLONE_URL", "https://other.example".into());
    let other = resolve("", &env);
    assert_eq!((other.url.as_str(), &other.token, &other.ca_file), ("https://other.example", &None, &None));
    assert_eq!(other.login_elsewhere.as_deref(), Some("https://tc.example:7420"));
    assert!(other
        .login_hint()
        .ends_with(&format!("; the login saved in {} is for https://tc.example:7420", path.display())));

    // This host's default server, with no token from anywhere: its bootstrap token file.
    env.insert("THINCLONE_URL", "http://127.0.0.1:7420".into());
    let local = resolve("", &env);
    let token = local.token.unwrap();
    assert_eq!(
        (token.secret.as_str(), token.source),
        ("thinclone_bootstrap", config::TokenSource::BootstrapFile(bootstrap.clone()))
    );
    // Not for another server, nor when a token was given.
    assert_eq!(resolve("--url http://127.0.0.1:7421", &env).token, None);
    assert_eq!(resolve("--token thinclone_flag", &env).token.unwrap().source, config::TokenSource::Flag);
    // Nothing at all: the default URL, and no bootstrap file readable.
    let bare = config::resolve_with(&opts("whoami"), &BTreeMap::new(), &[dir.path().join("missing")]).unwrap();
    assert_eq!((bare.url.as_str(), bare.token, bare.ca_file), (config::DEFAULT_URL, None, None));
}

#[test]
fn the_config_file_is_private_and_checked() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let env = env_in(dir.path());
    let path = config::config_path(&env).unwrap();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::set_permissions(path.parent().unwrap(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let saved = config::ConfigFile { url: Some("http://h:1".into()), token: Some("thinclone_t".into()), ca_file: None };
    config::write_config(&path, &saved).unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!((mode(&path), mode(path.parent().unwrap())), (0o600, 0o700));
    assert_eq!(config::read_config(&path).unwrap(), Some(saved));
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        text,
        "# thinclone's client settings, written by `thinclone login`.\nurl = \"http://h:1\"\ntoken = \"thinclone_t\"\n"
    );
    std::fs::write(&path, "url = \"http://h:1\"\ntokn = \"x\"\n").unwrap();
    let err = format!("{:#}", config::read_config(&path).unwrap_err());
    assert!(err.contains("unknown field `tokn`"), "{err}");
    assert!(
        err.starts_with(&format!("reading {} (written by `thinclone login`; fix or remove it)", path.display())),
        "{err}"
    );
    // No HOME nor XDG_CONFIG_HOME: no config file, and a command given everything still runs.
    assert!(config::config_path(&BTreeMap::new()).is_err());
    config::resolve_with(&opts("whoami --url http://h:1 --token t"), &BTreeMap::new(), &[]).unwrap();
}

#[test]
fn login_checks_the_token_and_saves_it_and_logout_removes_it() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let env = env_in(dir.path());
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, "thinclone_secret\n").unwrap();
    let admin = user("admin", api::Role::Admin, &["default"]);
    let server = CannedServer::start(vec![Answer::json(200, &admin)]);
    let cli =
        parse_cli(&format!("login --url {}/ --token-file {} --ca-file ca.pem", server.url(), token_file.display()));
    let Cli { client: opts, command: Command::Login(args) } = cli.unwrap() else { panic!("not login") };
    let mut out = Vec::new();
    // The CA file does not exist: nothing is sent, nothing saved.
    let err = login::login(&opts, &args, &env, &mut out).unwrap_err();
    assert!(format!("{err:#}").starts_with("cannot use "), "{err:#}");
    let path = config::config_path(&env).unwrap();
    assert!(!path.exists());

    let opts = ClientOpts { ca_file: None, ..opts };
    login::login(&opts, &args, &env, &mut out).unwrap();
    let requests = server.requests();
    assert_eq!(requests.iter().map(Request::line).collect::<Vec<_>>(), ["GET /v1/whoami"]);
    assert_eq!(requests[0].authorization.as_deref(), Some("Bearer thinclone_secret"));
    let url = opts.url.clone().unwrap().trim_end_matches('/').to_owned();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        format!("logged in to {url} as admin (admin); the token is saved in {}\n", path.display())
    );
    assert!(!String::from_utf8_lossy(&std::fs::read(&path).unwrap()).is_empty());
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    let saved = config::read_config(&path).unwrap().unwrap();
    assert_eq!(
        saved,
        config::ConfigFile { url: Some(url.clone()), token: Some("thinclone_secret".into()), ca_file: None }
    );
    // The next command finds it.
    let endpoint = config::resolve_with(&ClientOpts::default(), &env, &[]).unwrap();
    assert_eq!((endpoint.url.as_str(), endpoint.token.unwrap().secret.as_str()), (url.as_str(), "thinclone_secret"));

    // A token the server refuses is not saved.
    let server = CannedServer::start(vec![error_answer(ErrorCode::Unauthorized, "the token is not valid")]);
    let refused =
        ClientOpts { url: Some(server.url().to_owned()), token: Some("thinclone_bad".into()), ..ClientOpts::default() };
    let err = login::login(&refused, &login::LoginArgs { token_file: None }, &env, &mut Vec::new()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("the server at {} refused the token: the token is not valid; check it, or ask an administrator for a new one", server.url())
    );
    server.requests();
    assert_eq!(config::read_config(&path).unwrap().unwrap().token.as_deref(), Some("thinclone_secret"));
    // Both --token and --token-file: refused before anything is sent.
    let both = ClientOpts { token: Some("x".into()), ..opts.clone() };
    let err = login::login(&both, &args, &env, &mut Vec::new()).unwrap_err();
    assert_eq!(err.to_string(), "give the token with --token or with --token-file, not both");

    let mut out = Vec::new();
    login::logout(&env, &mut out).unwrap();
    assert!(String::from_utf8(out)
        .unwrap()
        .starts_with(&format!("logged out of {url}: removed the token from {}", path.display())));
    assert_eq!(
        config::read_config(&path).unwrap().unwrap(),
        config::ConfigFile { url: Some(url), token: None, ca_file: None }
    );
    let mut out = Vec::new();
    login::logout(&env, &mut out).unwrap();
    assert_eq!(String::from_utf8(out).unwrap(), format!("not logged in: {} holds no token\n", path.display()));
}
