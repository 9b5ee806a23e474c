//! The CLI's commands as parsed from arguments and run against a canned server: what they
//! ask, what they print, and how they fail.

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

fn parse(args: &str) -> Result<Command, clap::Error> {
    Cli::try_parse_from(std::iter::once("thinclone").chain(args.split_whitespace())).map(|cli| cli.command)
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

/// Runs `thinclone ARGS` against a server that gives `answers`, as `main` would.
fn run(args: &str, answers: Vec<Answer>) -> Run {
    let server = CannedServer::start(answers);
    let mut out = Vec::new();
    let result = {
        let command = parse(&format!("{args} --url {}", server.url())).unwrap();
        match command {
            Command::Image { command, opts } => image::run(command, &mut test_ctx(&opts, &mut out)),
            Command::Clone { command, opts } => clone::run(command, &mut test_ctx(&opts, &mut out)),
            Command::Op { command, opts } => op::run(command, &mut test_ctx(&opts, &mut out)),
            _ => panic!("not a client command: {args}"),
        }
    };
    Run {
        result: result.map_err(|e| format!("{e:#}")),
        stdout: String::from_utf8(out).unwrap(),
        requests: server.requests(),
    }
}

/// A context that prints into `out`, draws no progress and polls without pausing.
fn test_ctx<'a>(opts: &ClientOpts, out: &'a mut Vec<u8>) -> Ctx<'a> {
    Ctx { client: client::Client::new(&opts.url), json: opts.json, progress: false, poll_interval: Duration::ZERO, out }
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
fn client_options_are_accepted_before_and_after_the_subcommand() {
    match parse("image list --json --url http://127.0.0.1:9999").unwrap() {
        Command::Image { command: ImageCommand::List, opts } => {
            assert!(opts.json);
            assert_eq!(opts.url, "http://127.0.0.1:9999");
        }
        _ => panic!("not image list"),
    }
    match parse("clone --json show alice").unwrap() {
        Command::Clone { command: CloneCommand::Show { name }, opts } => {
            assert!(opts.json);
            assert_eq!(name.as_str(), "alice");
        }
        _ => panic!("not clone show"),
    }
    match parse("op wait 12 --json").unwrap() {
        Command::Op { command: OpCommand::Wait { id }, opts } => assert_eq!((id, opts.json), (OperationId(12), true)),
        _ => panic!("not op wait"),
    }
    if std::env::var_os("THINCLONE_URL").is_none() {
        match parse("clone list").unwrap() {
            Command::Clone { opts, .. } => {
                assert!(!opts.json);
                assert_eq!(opts.url, "http://127.0.0.1:7420");
            }
            _ => panic!("not clone list"),
        }
    }
}

#[test]
fn clone_create_needs_an_image_and_knows_its_drivers() {
    assert_eq!(parse_err("clone create alice").kind(), clap::error::ErrorKind::MissingRequiredArgument);
    let zfs = parse_err("clone create alice --image prod --driver zfs");
    assert_eq!(zfs.kind(), clap::error::ErrorKind::InvalidValue);
    assert!(zfs.to_string().contains("[possible values: cowfs, reflink, copy]"), "{zfs}");
    match parse("clone create alice --image prod --driver copy --no-wait").unwrap() {
        Command::Clone { command: CloneCommand::Create { name, image, driver, no_wait }, .. } => {
            assert_eq!((name.as_str(), image.as_str(), driver, no_wait), ("alice", "prod", Some(Driver::Copy), true));
        }
        _ => panic!("not clone create"),
    }
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
