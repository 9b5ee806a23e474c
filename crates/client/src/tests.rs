//! The client against a canned server: what it sends, how it reads answers and errors, and
//! how it waits for operations.

use std::net::TcpListener;
use std::time::Duration;

use api::{CreateClone, CreateImage, Driver, ErrorBody, ErrorCode, OperationKind, OperationState, Progress};

use super::*;
use crate::testing::{self, name, operation, Answer, CannedServer};

const NO_TIME: Duration = Duration::ZERO;

fn error_body(code: ErrorCode, error: &str) -> Answer {
    Answer::json(code.http_status(), &ErrorBody::new(code, error))
}

#[test]
fn a_refused_connection_says_how_to_start_the_server() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let err = Client::new(&format!("http://127.0.0.1:{port}/")).list_images().unwrap_err();
    assert!(matches!(err, Error::Unreachable { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "cannot reach the thinclone server at http://127.0.0.1:{port}: connection refused; \
             start it with `thinclone serve`"
        )
    );
}

#[test]
fn an_error_answer_becomes_exactly_the_servers_message() {
    let server = CannedServer::start(vec![error_body(ErrorCode::NotFound, "no image named prod")]);
    let err = Client::new(server.url()).get_image(&name("prod")).unwrap_err();
    assert_eq!(err.to_string(), "no image named prod");
    assert!(err.is_not_found());
    match &err {
        Error::Api { status, body } => assert_eq!((*status, body.code), (404, ErrorCode::NotFound)),
        other => panic!("{other:?}"),
    }
    assert_eq!(server.request_lines(), ["GET /v1/images/prod"]);
}

#[test]
fn an_error_answer_that_is_not_the_apis_still_says_what_happened() {
    let server = CannedServer::start(vec![
        Answer::text(502, "upstream down\n"),
        Answer::text(503, ""),
        // A later server may add fields to the error body: the message still comes through.
        Answer::text(409, r#"{"code": "conflict", "error": "clone alice is being made", "retry_after": 3}"#),
    ]);
    let client = Client::new(server.url());
    let err = client.list_clones().unwrap_err();
    assert_eq!(err.to_string(), format!("the server at {} answered HTTP 502: upstream down", server.url()));
    assert_eq!(err.code(), Some(ErrorCode::Internal));
    let err = client.list_clones().unwrap_err();
    assert_eq!(err.to_string(), format!("the server at {} answered HTTP 503", server.url()));
    assert_eq!(err.code(), Some(ErrorCode::Unavailable));
    let err = client.list_clones().unwrap_err();
    assert_eq!(err.to_string(), "clone alice is being made");
    assert_eq!(err.code(), Some(ErrorCode::Conflict));
    server.requests();
}

#[test]
fn an_unreadable_answer_is_a_decode_error() {
    let server = CannedServer::start(vec![Answer::text(200, r#"{"name": "alice"}"#)]);
    let err = Client::new(server.url()).get_clone(&name("alice")).unwrap_err();
    assert!(matches!(err, Error::Decode { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("sent an answer to GET /v1/clones/alice that this client cannot read"), "{text}");
    server.requests();
}

#[test]
fn create_clone_sends_the_request_as_json_and_reads_the_operation() {
    let op = operation(7, OperationKind::CloneCreate, "alice", OperationState::Running);
    let server = CannedServer::start(vec![Answer::json(202, &op)]);
    let request = CreateClone {
        name: name("alice"),
        image: name("prod"),
        driver: Some(Driver::Copy),
        host: None,
        expires_in: None,
        expires_at: None,
        template: None,
    };
    assert_eq!(Client::new(server.url()).create_clone(&request).unwrap(), op);
    let requests = server.requests();
    assert_eq!(requests[0].line(), "POST /v1/clones");
    assert_eq!(requests[0].content_type.as_deref(), Some("application/json"));
    let sent: serde_json::Value = serde_json::from_str(&requests[0].body).unwrap();
    assert_eq!(sent, serde_json::json!({"name": "alice", "image": "prod", "driver": "copy"}));
}

#[test]
fn a_missing_driver_is_left_out_of_the_request() {
    let op = operation(7, OperationKind::CloneCreate, "alice", OperationState::Running);
    let server = CannedServer::start(vec![Answer::json(202, &op)]);
    let request = CreateClone {
        name: name("alice"),
        image: name("prod"),
        driver: None,
        host: None,
        expires_in: None,
        expires_at: None,
        template: None,
    };
    Client::new(server.url()).create_clone(&request).unwrap();
    assert_eq!(server.requests()[0].body, r#"{"name":"alice","image":"prod"}"#);
}

#[test]
fn every_route_has_its_method_and_path() {
    let clone_op = |kind| operation(1, kind, "alice", OperationState::Succeeded);
    let image_op = |kind| operation(2, kind, "prod", OperationState::Succeeded);
    let server = CannedServer::start(vec![
        Answer::json(200, &api::Health { status: "ok".into(), version: "0.1.0".into() }),
        Answer::text(200, r#"{"openapi": "3.1.0"}"#),
        Answer::json(200, &vec![testing::image("prod")]),
        Answer::json(200, &testing::image("prod")),
        Answer::json(200, &image_op(OperationKind::ImageCreate)),
        Answer::json(200, &image_op(OperationKind::ImageDelete)),
        Answer::json(200, &vec![testing::clone("alice", "prod", 7501)]),
        Answer::json(200, &testing::clone("alice", "prod", 7501)),
        Answer::json(200, &clone_op(OperationKind::CloneStart)),
        Answer::json(200, &clone_op(OperationKind::CloneStop)),
        Answer::json(200, &clone_op(OperationKind::CloneReset)),
        Answer::json(200, &clone_op(OperationKind::CloneDelete)),
        Answer::json(200, &vec![clone_op(OperationKind::CloneDelete)]),
        Answer::json(200, &clone_op(OperationKind::CloneDelete)),
    ]);
    let client = Client::new(server.url());
    let (alice, prod) = (name("alice"), name("prod"));
    assert_eq!(client.health().unwrap().status, "ok");
    assert_eq!(client.openapi().unwrap(), r#"{"openapi": "3.1.0"}"#);
    assert_eq!(client.list_images().unwrap()[0].name, prod);
    assert_eq!(client.get_image(&prod).unwrap().name, prod);
    let request = CreateImage {
        name: prod.clone(),
        from_dir: Some("/srv/x".into()),
        from_url: None,
        snapshot: false,
        from_dump: None,
        from_repo: None,
        stanza: None,
        archive: None,
        target_time: None,
        target_lsn: None,
        team: None,
        location: None,
        host: None,
        mask: Vec::new(),
        scripts: Vec::new(),
    };
    assert_eq!(client.create_image(&request).unwrap().kind, OperationKind::ImageCreate);
    assert_eq!(client.delete_image(&prod).unwrap().kind, OperationKind::ImageDelete);
    assert_eq!(client.list_clones().unwrap()[0].port, 7501);
    assert_eq!(client.get_clone(&alice).unwrap().name, alice);
    assert_eq!(client.start_clone(&alice).unwrap().kind, OperationKind::CloneStart);
    assert_eq!(client.stop_clone(&alice).unwrap().kind, OperationKind::CloneStop);
    assert_eq!(client.reset_clone(&alice).unwrap().kind, OperationKind::CloneReset);
    assert_eq!(client.delete_clone(&alice).unwrap().kind, OperationKind::CloneDelete);
    assert_eq!(client.list_operations().unwrap().len(), 1);
    assert_eq!(client.get_operation(OperationId(1)).unwrap().id, OperationId(1));
    let requests = server.requests();
    let lines: Vec<String> = requests.iter().map(|r| r.line()).collect();
    assert_eq!(
        lines,
        [
            "GET /v1/health",
            "GET /v1/openapi.json",
            "GET /v1/images",
            "GET /v1/images/prod",
            "POST /v1/images",
            "DELETE /v1/images/prod",
            "GET /v1/clones",
            "GET /v1/clones/alice",
            "POST /v1/clones/alice/start",
            "POST /v1/clones/alice/stop",
            "POST /v1/clones/alice/reset",
            "DELETE /v1/clones/alice",
            "GET /v1/operations",
            "GET /v1/operations/1",
        ]
    );
    assert_eq!(requests[4].body, r#"{"name":"prod","from_dir":"/srv/x"}"#);
    // Actions send an empty JSON object, which the server takes like an empty body.
    for action in &requests[8..11] {
        assert_eq!((action.body.as_str(), action.content_type.as_deref()), ("{}", Some("application/json")));
    }
}

#[test]
fn waiting_polls_until_the_operation_ends_and_shows_every_answer() {
    let mut copying = operation(3, OperationKind::ImageCreate, "prod", OperationState::Running);
    copying.progress = Some(Progress { done_bytes: 10, total_bytes: 100 });
    let server = CannedServer::start(vec![
        Answer::json(200, &operation(3, OperationKind::ImageCreate, "prod", OperationState::Running)),
        Answer::json(200, &copying),
        Answer::json(200, &operation(3, OperationKind::ImageCreate, "prod", OperationState::Failed)),
    ]);
    let mut seen = Vec::new();
    let op = Client::new(server.url())
        .wait(OperationId(3), NO_TIME, |op| seen.push((op.state, op.progress.map(|p| p.done_bytes))))
        .unwrap();
    // Waiting returns the ended operation, failed or not.
    assert_eq!(op.state, OperationState::Failed);
    assert_eq!(
        seen,
        [(OperationState::Running, None), (OperationState::Running, Some(10)), (OperationState::Failed, None)]
    );
    assert_eq!(server.request_lines(), ["GET /v1/operations/3"; 3]);
}

#[test]
fn following_an_operation_that_has_ended_makes_no_call() {
    let server = CannedServer::start(vec![]);
    let done = operation(4, OperationKind::CloneStop, "alice", OperationState::Succeeded);
    let mut calls = 0;
    let op = Client::new(server.url()).follow(done.clone(), NO_TIME, |_| calls += 1).unwrap();
    assert_eq!((op, calls), (done, 1));
}

#[test]
fn waiting_gives_up_after_the_wait_timeout() {
    let running = operation(5, OperationKind::ImageCreate, "prod", OperationState::Running);
    let server = CannedServer::start(vec![Answer::json(200, &running); 3]);
    let client = Client::new(server.url()).with_wait_timeout(Some(Duration::from_millis(50)));
    let err = client.follow(running, Duration::from_millis(30), |_| {}).unwrap_err();
    assert!(matches!(err, Error::WaitTimeout { id: OperationId(5), .. }), "{err:?}");
    assert_eq!(err.to_string(), "operation 5 did not end within 50 ms; follow it with `thinclone op wait 5`");
    drop(server);
}

#[test]
fn create_clone_and_wait_returns_the_clone_once_it_is_ready() {
    let alice = testing::clone("alice", "prod", 7501);
    let server = CannedServer::start(vec![
        Answer::json(202, &operation(9, OperationKind::CloneCreate, "alice", OperationState::Running)),
        Answer::json(200, &operation(9, OperationKind::CloneCreate, "alice", OperationState::Succeeded)),
        Answer::json(200, &alice),
    ]);
    let client = Client::new(server.url()).with_poll_interval(NO_TIME);
    let request = CreateClone {
        name: name("alice"),
        image: name("prod"),
        driver: None,
        host: None,
        expires_in: None,
        expires_at: None,
        template: None,
    };
    assert_eq!(client.create_clone_and_wait(&request).unwrap(), alice);
    assert_eq!(server.request_lines(), ["POST /v1/clones", "GET /v1/operations/9", "GET /v1/clones/alice"]);
}

#[test]
fn a_failed_operation_is_an_error_with_exactly_its_message() {
    let mut failed = operation(9, OperationKind::CloneCreate, "alice", OperationState::Failed);
    failed.error = Some("the clone's server did not start: port 7501 is in use".into());
    let server = CannedServer::start(vec![Answer::json(200, &failed)]);
    let request = CreateClone {
        name: name("alice"),
        image: name("prod"),
        driver: None,
        host: None,
        expires_in: None,
        expires_at: None,
        template: None,
    };
    let err = Client::new(server.url()).create_clone_and_wait(&request).unwrap_err();
    assert_eq!(err.to_string(), "the clone's server did not start: port 7501 is in use");
    assert_eq!(err.failed_operation(), Some(&failed));
    // Nothing is fetched after a failure.
    assert_eq!(server.request_lines(), ["POST /v1/clones"]);

    let mut silent = failed;
    silent.error = None;
    assert_eq!(
        succeeded(silent).unwrap_err().to_string(),
        "operation 9 (clone_create of alice) failed without saying why"
    );
}

#[test]
fn a_refusal_before_the_operation_starts_is_the_servers_error() {
    let server = CannedServer::start(vec![error_body(ErrorCode::Conflict, "an image named prod exists already")]);
    let request = CreateImage {
        name: name("prod"),
        from_dir: Some("/x".into()),
        from_url: None,
        snapshot: false,
        from_dump: None,
        from_repo: None,
        stanza: None,
        archive: None,
        target_time: None,
        target_lsn: None,
        team: None,
        location: None,
        host: None,
        mask: Vec::new(),
        scripts: Vec::new(),
    };
    let err = Client::new(server.url()).create_image_and_wait(&request).unwrap_err();
    assert_eq!(
        (err.to_string().as_str(), err.code()),
        ("an image named prod exists already", Some(ErrorCode::Conflict))
    );
    server.requests();
}

#[test]
fn delete_and_wait_returns_the_ended_operation() {
    let done = operation(11, OperationKind::CloneDelete, "alice", OperationState::Succeeded);
    let server = CannedServer::start(vec![
        Answer::json(202, &operation(11, OperationKind::CloneDelete, "alice", OperationState::Running)),
        Answer::json(200, &done),
    ]);
    let client = Client::new(server.url()).with_poll_interval(NO_TIME);
    assert_eq!(client.delete_clone_and_wait(&name("alice")).unwrap(), done);
    assert_eq!(server.request_lines(), ["DELETE /v1/clones/alice", "GET /v1/operations/11"]);
}

#[test]
fn a_server_that_does_not_answer_in_time_is_a_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    // The listener accepts connections into its backlog and never answers.
    let client = Client::new(&url).with_request_timeout(Duration::from_millis(200));
    let err = client.list_operations().unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("the thinclone server at {url} did not answer GET /v1/operations within 200 ms")
    );
    drop(listener);
}

#[test]
fn a_bad_base_url_says_what_a_good_one_looks_like() {
    let err = Client::new("127.0.0.1:7420").health().unwrap_err();
    assert!(matches!(err, Error::BadUrl { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "invalid server URL \"127.0.0.1:7420\": relative URL without a base; give one like http://127.0.0.1:7420"
    );
    for bad in ["ftp://h:7420", "http://h:7420/?x=1", "http://"] {
        let err = Client::new(bad).health().unwrap_err();
        assert!(matches!(err, Error::BadUrl { .. }), "{bad}: {err:?}");
    }
}

#[test]
fn path_values_are_one_encoded_segment() {
    assert_eq!(fill(api::paths::CLONE, "name", "prod-15_a"), "/v1/clones/prod-15_a");
    assert_eq!(fill(api::paths::CLONE_RESET, "name", "../etc/x y"), "/v1/clones/%2E%2E%2Fetc%2Fx%20y/reset");
    assert_eq!(fill(api::paths::OPERATION, "id", "12"), "/v1/operations/12");
    assert_eq!(fill(api::paths::IMAGE, "name", "é?#"), "/v1/images/%C3%A9%3F%23");
}

#[test]
fn every_identity_route_has_its_method_and_path() {
    let user = api::User {
        name: name("alice"),
        role: api::Role::CloneUser,
        teams: vec![name("web")],
        created_at: api::Timestamp(1_795_300_000),
    };
    let team = api::Team { name: name("web"), members: vec![name("alice")], created_at: api::Timestamp(1_795_300_000) };
    let token = api::Token {
        id: 7,
        user: name("alice"),
        description: Some("ci".into()),
        created_at: api::Timestamp(1_795_300_000),
        expires_at: None,
        revoked_at: None,
        last_used_at: None,
    };
    let source = api::Source { name: name("backups"), path: "/srv/backups".into(), created_at: api::Timestamp(1) };
    let server = CannedServer::start(vec![
        Answer::json(200, &user),
        Answer::json(200, &vec![user.clone()]),
        Answer::json(201, &user),
        Answer::json(200, &user),
        Answer::text(204, ""),
        Answer::json(200, &vec![team.clone()]),
        Answer::json(201, &team),
        Answer::json(200, &team),
        Answer::json(200, &team),
        Answer::json(200, &team),
        Answer::text(204, ""),
        Answer::json(200, &vec![token.clone()]),
        Answer::json(201, &api::NewToken { token: token.clone(), secret: "thinclone_x".into() }),
        Answer::json(200, &token),
        Answer::json(200, &vec![source.clone()]),
        Answer::json(201, &source),
        Answer::text(204, ""),
        Answer::json(200, &Vec::<api::Activity>::new()),
        Answer::json(200, &Vec::<api::Activity>::new()),
    ]);
    let client = Client::new(server.url()).with_token(Some(" thinclone_abc\n".into()));
    let (alice, web) = (name("alice"), name("web"));
    assert_eq!(client.whoami().unwrap(), user);
    assert_eq!(client.list_users().unwrap().len(), 1);
    let request = api::CreateUser { name: alice.clone(), role: api::Role::CloneUser, teams: vec![web.clone()] };
    assert_eq!(client.create_user(&request).unwrap(), user);
    assert_eq!(client.get_user(&alice).unwrap(), user);
    client.delete_user(&alice).unwrap();
    assert_eq!(client.list_teams().unwrap(), std::slice::from_ref(&team));
    assert_eq!(client.create_team(&api::CreateTeam { name: web.clone() }).unwrap(), team);
    assert_eq!(client.get_team(&web).unwrap(), team);
    assert_eq!(client.add_member(&web, &alice).unwrap(), team);
    assert_eq!(client.remove_member(&web, &alice).unwrap(), team);
    client.delete_team(&web).unwrap();
    assert_eq!(client.list_tokens().unwrap(), std::slice::from_ref(&token));
    let request = api::CreateToken { user: None, description: Some("ci".into()), expires_in: Some(3600) };
    assert_eq!(client.create_token(&request).unwrap().secret, "thinclone_x");
    assert_eq!(client.revoke_token(7).unwrap(), token);
    assert_eq!(client.list_sources().unwrap(), std::slice::from_ref(&source));
    let request = api::CreateSource { name: name("backups"), path: "/srv/backups".into() };
    assert_eq!(client.create_source(&request).unwrap(), source);
    client.delete_source(&name("backups")).unwrap();
    assert!(client.activity(&ActivityFilter::default()).unwrap().is_empty());
    let filter = ActivityFilter {
        user: Some(alice.clone()),
        target: Some("clone a b".into()),
        since: Some(api::Timestamp(1_795_300_000)),
        limit: Some(5),
    };
    client.activity(&filter).unwrap();
    let requests = server.requests();
    let lines: Vec<String> = requests.iter().map(|r| r.line()).collect();
    assert_eq!(
        lines,
        [
            "GET /v1/whoami",
            "GET /v1/users",
            "POST /v1/users",
            "GET /v1/users/alice",
            "DELETE /v1/users/alice",
            "GET /v1/teams",
            "POST /v1/teams",
            "GET /v1/teams/web",
            "PUT /v1/teams/web/members/alice",
            "DELETE /v1/teams/web/members/alice",
            "DELETE /v1/teams/web",
            "GET /v1/tokens",
            "POST /v1/tokens",
            "DELETE /v1/tokens/7",
            "GET /v1/sources",
            "POST /v1/sources",
            "DELETE /v1/sources/backups",
            "GET /v1/activity",
            "GET /v1/activity?user=alice&target=clone%20a%20b&since=2026%2D11%2D21T22%3A26%3A40Z&limit=5",
        ]
    );
    assert_eq!(requests[2].body, r#"{"name":"alice","role":"clone_user","teams":["web"]}"#);
    assert_eq!(requests[12].body, r#"{"description":"ci","expires_in":3600}"#);
    // The token goes in every request, trimmed.
    assert!(requests.iter().all(|r| r.authorization.as_deref() == Some("Bearer thinclone_abc")), "{requests:?}");
}

#[test]
fn without_a_token_no_authorization_is_sent() {
    let server = CannedServer::start(vec![Answer::json(200, &Vec::<api::Image>::new()); 2]);
    Client::new(server.url()).list_images().unwrap();
    Client::new(server.url()).with_token(Some("  ".into())).list_images().unwrap();
    assert!(server.requests().iter().all(|r| r.authorization.is_none()));
}

#[test]
fn debug_output_never_shows_the_token() {
    let client = Client::new("http://127.0.0.1:1").with_token(Some("thinclone_0123456789".into()));
    let text = format!("{client:?}");
    assert!(!text.contains("0123456789") && text.contains("<hidden>"), "{text}");
}
