//! The REST API's router, driven in-process (`oneshot`) over a real catalog and a real agent
//! on a temporary directory: every failure answers with the one error body and a 4xx that
//! says what to fix, the OpenAPI document is what is served and what is committed, and it
//! names exactly the routes of `api::paths`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

struct Fixture {
    app: axum::Router,
    /// The first administrator's token.
    token: String,
    _dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let agent = agent::LocalAgent::open(agent::AgentConfig {
        data_dir: dir.path().to_owned(),
        os_user: sys::User::current(),
        listen: vec!["127.0.0.1".parse().unwrap()],
        remote_clients: false,
        host: "127.0.0.1".into(),
        memory: None,
        mount_program: "/nonexistent".into(),
        engines: Vec::new(),
        size_interval: Duration::from_secs(3600),
        supervise_interval: Duration::from_secs(3600),
        keep_mounts: Duration::ZERO,
        cowfs_writeback_cache: false,
        repair: true,
    })
    .unwrap();
    let local = api::Name::new(server::LOCAL).unwrap();
    let fleet = server::Fleet::new(Some((local, agent as Arc<dyn agent::Agent>)), server::hub::Hub::new());
    let server = server::Server::open(
        server::ServerConfig {
            data_dir: dir.path().to_owned(),
            ports: (7000, 7001),
            activity_days: 90,
            local_location: Some(dir.path().join("images")),
            channel_address: None,
            lifecycle: server::LifecycleConfig::default(),
        },
        fleet,
        Vec::new(),
        &[],
    )
    .unwrap();
    let token_file = server.bootstrap().unwrap().expect("the first start makes a token");
    let token = std::fs::read_to_string(token_file).unwrap().trim().to_owned();
    let hosts = server::AllowedHosts(vec!["localhost".into()]);
    Fixture { app: server::app(server, hosts), token, _dir: dir }
}

/// Sends a request as `token` (none: no Authorization header), to Host `localhost`.
async fn call_as(
    f: &Fixture,
    token: Option<&str>,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &str,
) -> (StatusCode, String) {
    let mut request = Request::builder().method(method).uri(path).header("host", "localhost");
    if let Some(ct) = content_type {
        request = request.header("content-type", ct);
    }
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = f.app.clone().oneshot(request.body(Body::from(body.to_owned())).unwrap()).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(bytes.to_vec()).unwrap())
}

/// Sends a request as the administrator.
async fn call(f: &Fixture, method: &str, path: &str, content_type: Option<&str>, body: &str) -> (StatusCode, String) {
    call_as(f, Some(&f.token), method, path, content_type, body).await
}

/// Checks that an answer is a 4xx error body with `code` and a message containing `says`.
fn refused(answer: (StatusCode, String), status: u16, code: &str, says: &str) {
    let (got, body) = answer;
    assert_eq!(got.as_u16(), status, "{body}");
    let error: api::ErrorBody =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("not an error body ({e}): {body}"));
    assert_eq!(serde_json::to_value(error.code).unwrap(), code, "{body}");
    assert!(error.error.contains(says), "expected {says:?} in {body}");
}

const JSON: Option<&str> = Some("application/json");

#[tokio::test]
async fn every_failure_has_one_shape() {
    let f = fixture();
    refused(call(&f, "POST", "/v1/clones", JSON, "{\"name\": \"a\"").await, 400, "bad_request", "not valid JSON");
    refused(
        call(&f, "POST", "/v1/clones", JSON, "{\"name\": \"a\"}").await,
        400,
        "bad_request",
        "missing field `image`",
    );
    refused(
        call(&f, "POST", "/v1/images", JSON, "{\"name\": \"a\", \"form_dir\": \"/x\"}").await,
        400,
        "bad_request",
        "unknown field `form_dir`",
    );
    refused(
        call(&f, "POST", "/v1/clones", Some("text/plain"), "{}").await,
        415,
        "unsupported_media_type",
        "content-type: application/json",
    );
    refused(call(&f, "POST", "/v1/clones", None, "{}").await, 415, "unsupported_media_type", "must be JSON");
    refused(
        call(&f, "POST", "/v1/clones", JSON, "{\"name\": \"../x\", \"image\": \"i\"}").await,
        400,
        "bad_request",
        "invalid name",
    );
    refused(call(&f, "POST", "/v1/clones", JSON, "{\"name\": 7, \"image\": \"i\"}").await, 400, "bad_request", "name");
    let huge = format!("{{\"name\": \"a\", \"image\": \"{}\"}}", "x".repeat(100 << 10));
    refused(call(&f, "POST", "/v1/clones", JSON, &huge).await, 413, "payload_too_large", "larger than");
    refused(call(&f, "GET", "/v1/clones/Bad%2Fname", None, "").await, 400, "bad_request", "invalid name");
    refused(call(&f, "GET", "/v1/clones/nosuch", None, "").await, 404, "not_found", "no clone named nosuch");
    refused(call(&f, "GET", "/v1/images/nosuch", None, "").await, 404, "not_found", "no image named nosuch");
    refused(call(&f, "DELETE", "/v1/images/nosuch", None, "").await, 404, "not_found", "no image named nosuch");
    refused(call(&f, "POST", "/v1/clones/nosuch/reset", None, "").await, 404, "not_found", "no clone named nosuch");
    refused(call(&f, "GET", "/v1/operations/0", None, "").await, 400, "bad_request", "invalid operation id");
    refused(call(&f, "GET", "/v1/operations/x", None, "").await, 400, "bad_request", "invalid operation id");
    refused(call(&f, "GET", "/v1/operations/5", None, "").await, 404, "not_found", "no operation named 5");
    refused(call(&f, "GET", "/v1/nowhere", None, "").await, 404, "not_found", "no such route");
    refused(call(&f, "PUT", "/v1/clones", JSON, "{}").await, 405, "method_not_allowed", "does not take that method");
    refused(
        call(&f, "POST", "/v1/clones", JSON, "{\"name\": \"a\", \"image\": \"nosuch\"}").await,
        404,
        "not_found",
        "no image named nosuch",
    );
    refused(
        call(
            &f,
            "POST",
            "/v1/images",
            JSON,
            "{\"name\": \"a\", \"from_dir\": \"/x\", \"from_url\": \"postgresql://h/d\"}",
        )
        .await,
        400,
        "bad_request",
        "exactly one of from_dir, from_url, from_dump and from_repo",
    );
    refused(
        call(&f, "POST", "/v1/images", JSON, "{\"name\": \"a\", \"from_dir\": \"relative\"}").await,
        400,
        "bad_request",
        "not an absolute path",
    );
    refused(
        call(&f, "POST", "/v1/images", JSON, "{\"name\": \"a\", \"from_url\": \"%zz\"}").await,
        400,
        "bad_request",
        "not valid",
    );
    // Refused requests that would have changed something are in the audit log too.
    let (status, log) = call(&f, "GET", "/v1/activity?limit=1000", None, "").await;
    assert_eq!(status, StatusCode::OK, "{log}");
    let log: Vec<api::Activity> = serde_json::from_str(&log).unwrap();
    assert!(
        log.iter().any(|a| a.action == "POST /v1/clones"
            && a.status == 400
            && a.actor.as_ref().is_some_and(|u| u.as_str() == "admin")),
        "a refused body is not in the audit log: {log:?}"
    );
    assert!(log.iter().any(|a| a.action == "POST /v1/clones" && a.status == 415), "{log:?}");
    let (status, body) = call(&f, "GET", "/v1/health", None, "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(serde_json::from_str::<api::Health>(&body).unwrap().status, "ok");
}

#[tokio::test]
async fn every_route_but_health_needs_a_valid_token() {
    let f = fixture();
    let (status, _) = call_as(&f, None, "GET", "/v1/health", None, "").await;
    assert_eq!(status, StatusCode::OK);
    refused(call_as(&f, None, "GET", "/v1/images", None, "").await, 401, "unauthorized", "needs a token");
    refused(call_as(&f, Some("thinclone_nope"), "GET", "/v1/images", None, "").await, 401, "unauthorized", "not valid");
    refused(call_as(&f, None, "GET", "/v1/openapi.json", None, "").await, 401, "unauthorized", "needs a token");
    let (status, _) = call(&f, "GET", "/v1/images", None, "").await;
    assert_eq!(status, StatusCode::OK);
    // The Host header is checked before anything else.
    let response = f
        .app
        .clone()
        .oneshot(Request::builder().uri("/v1/health").header("host", "evil.example").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn the_served_document_is_the_committed_one_and_names_every_route() {
    let f = fixture();
    let (status, served) = call(&f, "GET", "/v1/openapi.json", None, "").await;
    assert_eq!(status, StatusCode::OK);
    let generated = server::openapi_json();
    assert_eq!(served.trim_end(), generated.trim_end(), "the served document is not the generated one");
    let doc: serde_json::Value = serde_json::from_str(&generated).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{}", doc["openapi"]);

    let mut documented: Vec<String> = doc["paths"].as_object().unwrap().keys().cloned().collect();
    documented.sort();
    let mut declared = vec![
        api::paths::HEALTH,
        api::paths::OPENAPI,
        api::paths::METRICS,
        api::paths::IMAGES,
        api::paths::IMAGE,
        api::paths::CLONES,
        api::paths::CLONE,
        api::paths::CLONE_START,
        api::paths::CLONE_STOP,
        api::paths::CLONE_RESET,
        api::paths::CLONE_REVERT,
        api::paths::CLONE_CHECKPOINTS,
        api::paths::CLONE_CHECKPOINT,
        api::paths::CLONE_BRANCHES,
        api::paths::CLONE_EXPIRY,
        api::paths::CLONE_PROTECT,
        api::paths::CLONE_UNPROTECT,
        api::paths::CLONE_IDLE,
        api::paths::OPERATIONS,
        api::paths::OPERATION,
        api::paths::OPERATION_CANCEL,
        api::paths::WHOAMI,
        api::paths::USERS,
        api::paths::USER,
        api::paths::TEAMS,
        api::paths::TEAM,
        api::paths::TEAM_MEMBER,
        api::paths::TOKENS,
        api::paths::TOKEN,
        api::paths::SOURCES,
        api::paths::SOURCE,
        api::paths::ACTIVITY,
        api::paths::AGENTS,
        api::paths::AGENT,
        api::paths::AGENT_REVOKE,
        api::paths::AGENT_TOKENS,
        api::paths::AGENT_JOIN,
        api::paths::LOCATIONS,
        api::paths::LOCATION,
        api::paths::TEMPLATES,
        api::paths::TEMPLATE,
        api::paths::SCHEDULES,
        api::paths::SCHEDULE,
        api::paths::SCHEDULE_RUN,
        api::paths::CLONE_REFRESH,
        api::paths::WEBHOOKS,
        api::paths::WEBHOOK,
        api::paths::WEBHOOK_DELIVERIES,
    ];
    declared.sort();
    assert_eq!(documented, declared, "the routes and api::paths disagree");

    let committed_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../doc/openapi.json");
    let committed = std::fs::read_to_string(committed_path).unwrap_or_default();
    if committed != generated {
        if std::env::var_os("THINCLONE_UPDATE_OPENAPI").is_some() {
            std::fs::write(committed_path, &generated).unwrap();
        } else {
            panic!(
                "doc/openapi.json is stale: regenerate it with \
                 `THINCLONE_UPDATE_OPENAPI=1 cargo test -p server --test rest` and commit it"
            );
        }
    }
}

/// Regression (schemathesis): serde takes a struct's fields as a JSON array in their order, so
/// `["a", "nosuch"]` was read as a clone request although the document offers objects only.
#[tokio::test]
async fn request_bodies_are_json_objects() {
    let f = fixture();
    refused(
        call(&f, "POST", "/v1/clones", JSON, "[\"a\", \"nosuch\"]").await,
        400,
        "bad_request",
        "must be a JSON object",
    );
    refused(
        call(&f, "POST", "/v1/images", JSON, " [\"a\", \"/x\"]").await,
        400,
        "bad_request",
        "must be a JSON object",
    );
    // JSON content types with parameters or a +json suffix are still JSON.
    let object = "{\"name\": \"a\", \"image\": \"nosuch\"}";
    for content_type in ["application/json; charset=utf-8", "Application/JSON", "application/vnd.thinclone+json"] {
        refused(
            call(&f, "POST", "/v1/clones", Some(content_type), object).await,
            404,
            "not_found",
            "no image named nosuch",
        );
    }
    refused(
        call(&f, "POST", "/v1/clones", Some("application/jsonx"), object).await,
        415,
        "unsupported_media_type",
        "must be JSON",
    );
}

/// Regression (schemathesis): the id is documented as an integer, and `+1` was taken as 1.
#[tokio::test]
async fn operation_ids_are_digits_only() {
    let f = fixture();
    refused(call(&f, "GET", "/v1/operations/+1", None, "").await, 400, "bad_request", "invalid operation id \"+1\"");
    refused(call(&f, "GET", "/v1/operations/1", None, "").await, 404, "not_found", "no operation");
}

/// Regression (schemathesis, openapi-spec-validator): responses had no description, which
/// OpenAPI requires, and most routes did not list the 500 they answer when the catalog fails,
/// nor `POST /v1/images` its 507. Every failure is an ErrorBody.
#[test]
fn every_response_is_described_and_failures_are_listed() {
    let doc: serde_json::Value = serde_json::from_str(&server::openapi_json()).unwrap();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let responses = op["responses"].as_object().unwrap();
            for (status, response) in responses {
                let described = response["description"].as_str().is_some_and(|d| !d.is_empty());
                assert!(described, "{method} {path} {status} has no description");
                if status.starts_with('4') || status.starts_with('5') {
                    let schema = &response["content"]["application/json"]["schema"]["$ref"];
                    assert_eq!(schema, "#/components/schemas/ErrorBody", "{method} {path} {status}");
                }
            }
            if path != api::paths::HEALTH {
                assert!(responses.contains_key("500"), "{method} {path} does not list 500");
            }
        }
    }
    assert!(doc["paths"][api::paths::IMAGES]["post"]["responses"].get("507").is_some(), "POST /v1/images lists no 507");
}

/// Regression (schemathesis, "schema-valid request rejected"): the document let a request name
/// both sources or neither, a relative directory, and `snapshot` with a URL; the server refuses
/// each with 400. The schema now says so, and the server still refuses them.
#[tokio::test]
async fn the_image_request_schema_says_what_the_server_checks() {
    let doc: serde_json::Value = serde_json::from_str(&server::openapi_json()).unwrap();
    let schema = &doc["components"]["schemas"]["CreateImage"]["allOf"];
    assert_eq!(schema[0]["properties"]["from_dir"]["pattern"], "^/", "{schema}");
    assert_eq!(schema[0]["additionalProperties"], false, "{schema}");
    let branches = schema[1]["oneOf"].as_array().unwrap_or_else(|| panic!("no oneOf: {schema}"));
    let required: Vec<&serde_json::Value> = branches.iter().map(|b| &b["required"]).collect();
    assert_eq!(
        required,
        [
            &serde_json::json!(["from_dir"]),
            &serde_json::json!(["from_url"]),
            &serde_json::json!(["from_dump"]),
            &serde_json::json!(["from_repo"])
        ]
    );
    assert_eq!(branches[0]["properties"]["from_url"]["type"], "null");
    assert_eq!(branches[1]["properties"]["from_dir"]["type"], "null");
    assert_eq!(branches[1]["properties"]["snapshot"]["enum"], serde_json::json!([false]));
    // The options of one source are absent from the others.
    assert_eq!(branches[0]["properties"]["stanza"]["type"], "null");
    assert_eq!(branches[2]["properties"]["target_time"]["type"], "null");
    assert_eq!(branches[3]["properties"]["archive"]["type"], "null");
    assert_eq!(branches[3]["properties"]["target_lsn"]["type"], "null");
    assert!(branches[3]["properties"].get("target_time").is_none(), "{schema}");

    let f = fixture();
    refused(
        call(&f, "POST", "/v1/images", JSON, "{\"name\": \"a\"}").await,
        400,
        "bad_request",
        "exactly one of from_dir, from_url, from_dump and from_repo",
    );
    refused(
        call(
            &f,
            "POST",
            "/v1/images",
            JSON,
            "{\"name\": \"a\", \"from_url\": \"postgresql://h/d\", \"snapshot\": true}",
        )
        .await,
        400,
        "bad_request",
        "snapshot goes with from_dir only",
    );
    // Options that go with another source, each refused before anything is recorded.
    for (body, says) in [
        (r#"{"name": "a", "from_dump": "/d", "target_time": "2026-01-01T00:00:00Z"}"#, "target_time goes with"),
        (r#"{"name": "a", "from_dir": "/d", "target_lsn": "0/1"}"#, "target_lsn goes with"),
        (r#"{"name": "a", "from_url": "postgresql://h/d", "archive": "/a"}"#, "archive goes with from_dir"),
        (r#"{"name": "a", "from_dir": "/d", "stanza": "main"}"#, "stanza goes with from_repo"),
        (r#"{"name": "a", "from_repo": "repo"}"#, "from_repo must be an absolute path"),
        (
            r#"{"name": "a", "from_dir": "/d", "archive": "/a", "target_time": "2026-01-01T00:00:00Z", "target_lsn": "0/1"}"#,
            "not both",
        ),
        (r#"{"name": "a", "from_dump": "/d", "from_repo": "/r"}"#, "exactly one of"),
    ] {
        refused(call(&f, "POST", "/v1/images", JSON, body).await, 400, "bad_request", says);
    }
}

/// The web dashboard: `/` and `/ui/<file>` answer without a token with the embedded files,
/// their content types, a strict Content-Security-Policy and an ETag that a revalidation
/// matches (304); any other path under `/ui/` needs a token like the API.
#[tokio::test]
async fn the_dashboard_is_static_and_needs_no_token() {
    let f = fixture();
    let get = |path: &'static str, etag: Option<String>| {
        let mut request = Request::builder().uri(path).header("host", "localhost");
        if let Some(tag) = etag {
            request = request.header("if-none-match", tag);
        }
        f.app.clone().oneshot(request.body(Body::empty()).unwrap())
    };
    let response = get("/", None).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.starts_with("default-src 'none'; script-src 'self'"), "{csp}");
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(headers["cache-control"], "no-cache");
    let etag = headers["etag"].to_str().unwrap().to_owned();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let page = server::dashboard_files().iter().find(|(n, _, _)| *n == "index.html").unwrap().2;
    assert_eq!(body, page.as_bytes());
    let again = get("/", Some(etag)).await.unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    for (name, content_type, _) in server::dashboard_files() {
        let path: &'static str = Box::leak(format!("/ui/{name}").into_boxed_str());
        let response = get(path, None).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_eq!(response.headers()["content-type"], *content_type, "{path}");
        assert_eq!(response.headers()["x-content-type-options"], "nosniff", "{path}");
    }
    for path in ["/ui/", "/ui/nothing.js", "/ui/app.js/x", "/index.html"] {
        refused(call_as(&f, None, "GET", path, None, "").await, 401, "unauthorized", "needs a token");
    }
    refused(call(&f, "GET", "/ui/nothing.js", None, "").await, 404, "not_found", "no file");
}
