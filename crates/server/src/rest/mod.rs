//! The REST API: routes to the [`Server`]'s operations, the one error body for every failure,
//! a credential on every route but `/v1/health`, the audit log of every request that changes
//! something, a check of the `Host` header, a tracing span per request, and the OpenAPI
//! document generated from the handlers and the `api` crate's types (served at
//! `/v1/openapi.json`, committed as `doc/openapi.json`).
//!
//! Only this module knows HTTP. Handlers live beside it by subject: `images`, `clones`,
//! `operations`, `identity`; `ui` serves the web dashboard's static files at `/` and `/ui/`.

mod agents;
mod clones;
mod identity;
mod images;
mod metrics;
mod operations;
mod schedules;
mod templates;
mod ui;
mod webhooks;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use api::{paths, ErrorBody, ErrorCode, Name, Operation};
use axum::body::Bytes;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Caller;
use crate::ops::{Server, ServerError};

/// How long a request that changes something waits for its operation to end before it
/// answers `202 Accepted` with the operation still running.
const ANSWER_WAIT: Duration = Duration::from_secs(1);

/// The largest request body taken.
const BODY_LIMIT: usize = 64 << 10;

/// An error answer: a status and the one error body. 4xx answers say what to fix; a 500 says
/// what failed, and its detail is logged here, where it is answered.
#[derive(Debug)]
pub struct ApiError(ErrorBody);

impl ApiError {
    fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError(ErrorBody::new(code, message))
    }
}

impl From<ServerError> for ApiError {
    fn from(e: ServerError) -> ApiError {
        match e {
            ServerError::BadRequest(m) => ApiError::new(ErrorCode::BadRequest, m),
            ServerError::Unauthorized(m) => ApiError::new(ErrorCode::Unauthorized, m),
            ServerError::Forbidden(m) => ApiError::new(ErrorCode::Forbidden, m),
            ServerError::NotFound(m) => ApiError::new(ErrorCode::NotFound, m),
            ServerError::Conflict(m) => ApiError::new(ErrorCode::Conflict, m),
            ServerError::Unavailable(m) => ApiError::new(ErrorCode::Unavailable, m),
            ServerError::InsufficientStorage(m) => ApiError::new(ErrorCode::InsufficientStorage, m),
            ServerError::Internal(m) => ApiError::new(ErrorCode::Internal, format!("the server failed: {m}")),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::error!("{}", self.0.error);
        } else {
            tracing::info!(status = status.as_u16(), "refused: {}", self.0.error);
        }
        if status == StatusCode::UNAUTHORIZED {
            return (status, [(axum::http::header::WWW_AUTHENTICATE, "Bearer")], Json(self.0)).into_response();
        }
        (status, Json(self.0)).into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> ApiError {
        let message = match &rejection {
            JsonRejection::JsonDataError(e) => format!(
                "the request body does not fit: {}",
                e.body_text().trim_start_matches("Failed to deserialize the JSON body into the target type: ")
            ),
            JsonRejection::JsonSyntaxError(e) => format!(
                "the request body is not valid JSON: {}",
                e.body_text().trim_start_matches("Failed to parse the request body as JSON: ")
            ),
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                return ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    format!("the request body is larger than {} KiB ({})", BODY_LIMIT >> 10, other.body_text()),
                );
            }
            other => format!("the request body could not be read: {}", other.body_text()),
        };
        // A body that does not fit the type (axum says 422) is the caller's mistake like any
        // other: 400.
        ApiError::new(ErrorCode::BadRequest, message)
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> ApiError {
        let text = rejection.body_text();
        let text = text.trim_start_matches("Invalid URL: ").trim_start_matches("Cannot parse `");
        ApiError::new(ErrorCode::BadRequest, format!("the path does not fit: {text}"))
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// `Json` whose rejections are answered with the error body, and which takes a JSON object
/// only: serde would also take a struct's fields as an array in their order, which the
/// document does not offer.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let refusal = Refusal::of(req.method(), req.uri(), req.extensions());
        let read = async {
            if !is_json(req.headers()) {
                return Err(ApiError::new(
                    ErrorCode::UnsupportedMediaType,
                    "the request body must be JSON, sent with `content-type: application/json`",
                ));
            }
            let body = Bytes::from_request(req, state).await.map_err(JsonRejection::from)?;
            let value = Json::<T>::from_bytes(&body)?.0;
            if body.trim_ascii_start().first() != Some(&b'{') {
                return Err(ApiError::new(
                    ErrorCode::BadRequest,
                    "the request body must be a JSON object, not an array",
                ));
            }
            Ok(ApiJson(value))
        };
        refusal.record_if_refused(read.await).await
    }
}

/// Whether the content type is JSON, as axum's `Json` decides: `application/json` or
/// `application/*+json`, with any parameters.
fn is_json(headers: &axum::http::HeaderMap) -> bool {
    let Some(value) = headers.get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    match essence.split_once('/') {
        Some(("application", subtype)) => subtype == "json" || subtype.ends_with("+json"),
        _ => false,
    }
}

/// `Path` whose rejections are answered with the error body.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, ApiError> {
        let refusal = Refusal::of(&parts.method, &parts.uri, &parts.extensions);
        let path = axum::extract::Path::<T>::from_request_parts(parts, state).await.map_err(ApiError::from);
        refusal.record_if_refused(path.map(|p| ApiPath(p.0))).await
    }
}

/// Runs a blocking operation off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, ServerError> + Send + 'static) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::from(ServerError::Internal(format!("an operation panicked: {e}"))))?
        .map_err(ApiError::from)
}

/// How long a request that changes something waits for its operation to end, in whole
/// seconds (`?wait=N`); one second when not given.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Wait {
    /// Seconds to wait for the operation to end before answering `202` with it still
    /// running: 0 answers at once; at most 60.
    #[param(minimum = 0, maximum = 60)]
    wait: Option<u32>,
}

impl Wait {
    fn duration(&self) -> Result<Duration, ApiError> {
        match self.wait {
            None => Ok(ANSWER_WAIT),
            Some(s) if s <= 60 => Ok(Duration::from_secs(s.into())),
            Some(s) => Err(ApiError::new(ErrorCode::BadRequest, format!("wait={s} is more than 60 seconds"))),
        }
    }
}

/// `Query` whose rejections are answered with the error body.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, ApiError> {
        let refusal = Refusal::of(&parts.method, &parts.uri, &parts.extensions);
        let query = match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(q) => Ok(ApiQuery(q.0)),
            Err(e) => Err(ApiError::new(ErrorCode::BadRequest, format!("the query does not fit: {}", e.body_text()))),
        };
        refusal.record_if_refused(query).await
    }
}

/// What the audit log needs of a request that an extractor may refuse before its handler
/// runs (a body, path or query that does not fit): requests that would change something are
/// recorded even then.
struct Refusal {
    record: Option<(Arc<Server>, Caller, String)>,
}

impl Refusal {
    fn of(method: &axum::http::Method, uri: &axum::http::Uri, extensions: &axum::http::Extensions) -> Refusal {
        let record =
            match (method == axum::http::Method::GET, extensions.get::<Arc<Server>>(), extensions.get::<Caller>()) {
                (false, Some(server), Some(caller)) => {
                    Some((server.clone(), caller.clone(), format!("{method} {}", uri.path())))
                }
                _ => None,
            };
        Refusal { record }
    }

    async fn record_if_refused<T>(self, result: Result<T, ApiError>) -> Result<T, ApiError> {
        let error = match result {
            Ok(value) => return Ok(value),
            Err(e) => e,
        };
        if let Some((server, caller, action)) = self.record {
            let outcome = Err((error.0.code.http_status(), error.0.error.clone()));
            // A failure to record is logged by audit() itself.
            let _ = tokio::task::spawn_blocking(move || server.audit(Some(&caller.user), &action, None, None, outcome))
                .await;
        }
        Err(error)
    }
}

/// What a request that changes something was about, for the audit log.
#[derive(Debug, Clone)]
pub(crate) enum Subject {
    Image(Name),
    Clone(Name),
    User(Name),
    Team(Name),
    Token(u64),
    Source(Name),
    Agent(Name),
    Location(Name),
    Webhook(u64),
    Template(Name),
    Schedule(Name),
}

impl Subject {
    fn describe(&self) -> String {
        match self {
            Subject::Image(n) => format!("image {n}"),
            Subject::Clone(n) => format!("clone {n}"),
            Subject::User(n) => format!("user {n}"),
            Subject::Team(n) => format!("team {n}"),
            Subject::Token(id) => format!("token {id}"),
            Subject::Source(n) => format!("source {n}"),
            Subject::Agent(n) => format!("agent {n}"),
            Subject::Location(n) => format!("location {n}"),
            Subject::Webhook(id) => format!("webhook {id}"),
            Subject::Template(n) => format!("template {n}"),
            Subject::Schedule(n) => format!("schedule {n}"),
        }
    }

    /// The team whose members may read the entry: an image's or a clone's, or the team's.
    fn team(&self, server: &Server) -> Option<Name> {
        match self {
            Subject::Image(n) => server.catalog().image(n).ok().map(|i| i.team),
            Subject::Clone(n) => server.catalog().clone_named(n).ok().map(|c| c.team),
            Subject::Team(n) => Some(n.clone()),
            Subject::Schedule(n) => server.catalog().schedule(n).ok().map(|s| s.team),
            Subject::User(_)
            | Subject::Token(_)
            | Subject::Source(_)
            | Subject::Agent(_)
            | Subject::Location(_)
            | Subject::Webhook(_)
            | Subject::Template(_) => None,
        }
    }
}

/// Runs a request that changes something off the async workers, and records it in the
/// audit log: who, what, of what, with which outcome, when.
async fn audited<T: Send + 'static>(
    server: Arc<Server>,
    caller: Caller,
    action: &'static str,
    subject: Option<Subject>,
    f: impl FnOnce(&Arc<Server>, &Caller) -> Result<T, ApiError> + Send + 'static,
) -> ApiResult<T> {
    audited_as(server, caller, action, subject, StatusCode::OK, f).await
}

/// [`audited`], for a request whose success answers `status` (201, 204).
async fn audited_as<T: Send + 'static>(
    server: Arc<Server>,
    caller: Caller,
    action: &'static str,
    subject: Option<Subject>,
    status: StatusCode,
    f: impl FnOnce(&Arc<Server>, &Caller) -> Result<T, ApiError> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(move || {
        let before = subject.as_ref().and_then(|s| s.team(&server));
        let result = f(&server, &caller);
        let team = subject.as_ref().and_then(|s| s.team(&server)).or(before);
        let outcome = match &result {
            Ok(_) => Ok(status.as_u16()),
            Err(e) => Err((e.0.code.http_status(), e.0.error.clone())),
        };
        server.audit(Some(&caller.user), action, subject.as_ref().map(Subject::describe), team, outcome);
        result
    })
    .await
    .map_err(|e| ApiError::from(ServerError::Internal(format!("an operation panicked: {e}"))))?
}

/// Starts an operation for the caller (audited), waits briefly for its end, and answers 200
/// if it has ended or 202.
async fn operation(
    server: Arc<Server>,
    caller: Caller,
    action: &'static str,
    subject: Subject,
    wait: Wait,
    start: impl FnOnce(&Arc<Server>, &Caller) -> Result<Operation, ServerError> + Send + 'static,
) -> ApiResult<(StatusCode, Json<Operation>)> {
    let wait = wait.duration()?;
    let op = audited(server, caller, action, Some(subject), move |server, caller| {
        let op = start(server, caller)?;
        Ok(server.wait_briefly(op.id, wait)?)
    })
    .await?;
    let status = if op.state.is_finished() { StatusCode::OK } else { StatusCode::ACCEPTED };
    Ok((status, Json(op)))
}

/// The caller of an authenticated request, put there by [`authenticate`].
pub struct Auth(pub Caller);

impl<S: Send + Sync> FromRequestParts<S> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _state: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .map(Auth)
            .ok_or_else(|| ApiError::new(ErrorCode::Unauthorized, "send a token: `Authorization: Bearer <token>`"))
    }
}

/// Every request but `GET /v1/health`, an agent's `POST /v1/agents/join` (whose
/// enrollment token is its credential) and the dashboard's static files (`GET /` and
/// `GET /ui/...`, which carry no data) needs a valid token (`Authorization: Bearer …`); the
/// caller it stands for goes to the handler. A refused request that would have changed
/// something is recorded in the audit log.
async fn authenticate(State(server): State<Arc<Server>>, mut request: Request, next: Next) -> Response {
    if is_open(request.method(), request.uri().path()) || ui::is_static(request.method(), request.uri().path()) {
        return next.run(request).await;
    }
    let secret = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(|s| s.trim().to_owned());
    let refused = |message: &str| ApiError::new(ErrorCode::Unauthorized, message);
    let caller = match secret {
        None => Err(refused("this route needs a token: send `Authorization: Bearer <token>` (see `thinclone login`)")),
        Some(secret) => {
            let server = server.clone();
            match tokio::task::spawn_blocking(move || server.authenticate(&secret)).await {
                Ok(Ok(caller)) => Ok(caller),
                Ok(Err(e)) => Err(ApiError::from(e)),
                Err(e) => Err(ApiError::from(ServerError::Internal(format!("authenticating panicked: {e}")))),
            }
        }
    };
    match caller {
        Ok(caller) => {
            tracing::Span::current().record("user", caller.user.as_str());
            request.extensions_mut().insert(caller);
            request.extensions_mut().insert(server.clone());
            next.run(request).await
        }
        Err(e) => {
            if request.method() != axum::http::Method::GET {
                let action = format!("{} {}", request.method(), request.uri().path());
                let detail = (e.0.code.http_status(), e.0.error.clone());
                let server = server.clone();
                // The audit entry of a refused request; failing to write it is logged by audit().
                let _ = tokio::task::spawn_blocking(move || server.audit(None, &action, None, None, Err(detail))).await;
            }
            e.into_response()
        }
    }
}

/// The routes that take no user's token: the server's health, and an agent's join (its
/// enrollment token is in the body).
pub(crate) fn is_open(method: &axum::http::Method, path: &str) -> bool {
    (method == axum::http::Method::GET && path == paths::HEALTH)
        || (method == axum::http::Method::POST && path == paths::AGENT_JOIN)
}

/// The names a server answers to, checked against each request's `Host` header, so that a
/// web page elsewhere cannot drive a server on this machine through DNS rebinding.
#[derive(Debug, Clone, Default)]
pub struct AllowedHosts(pub Vec<String>);

impl AllowedHosts {
    fn allows(&self, host: &str) -> bool {
        // The host without its port; IPv6 addresses keep their brackets.
        let name = match host.rsplit_once(':') {
            Some((name, port))
                if !name.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && !name.ends_with(':') =>
            {
                name
            }
            _ => host,
        };
        self.0.iter().any(|allowed| allowed.eq_ignore_ascii_case(name))
    }
}

async fn check_host(State(allowed): State<Arc<AllowedHosts>>, request: Request, next: Next) -> Response {
    // HTTP/1.1 names the host in its Host header; HTTP/2 in the request's authority.
    let host = request
        .headers()
        .get(axum::http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| request.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let host = host.as_str();
    if allowed.allows(host) {
        return next.run(request).await;
    }
    ApiError::new(
        ErrorCode::BadRequest,
        format!(
            "this server answers to {} only, not to the host {host:?}; add the name with `thinclone serve --server-name`",
            allowed.0.join(", ")
        ),
    )
    .into_response()
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "thinclone",
        description = "Writable copies of large databases in about a second. Every route but \
                       /v1/health takes an API token: `Authorization: Bearer <token>`. Every request \
                       that changes something answers with an Operation: 202 while it runs, 200 once \
                       it has ended (`?wait=SECONDS` says how long to wait first). Every failure \
                       answers with an ErrorBody. See doc/API.md.",
        license(name = "Apache-2.0"),
    ),
    tags(
        (name = "images", description = "Immutable, point-in-time copies of a database"),
        (name = "clones", description = "Private, writable databases made from an image"),
        (name = "operations", description = "What the server is doing or did"),
        (name = "identity", description = "Users, teams, tokens, source directories and the audit log"),
        (name = "agents", description = "The hosts that do the work, and the image locations they reach"),
        (name = "webhooks", description = "Endpoints told of events, with signed, retried deliveries"),
        (name = "server", description = "The server itself"),
    ),
    components(schemas(ErrorBody, ErrorCode)),
    modifiers(&CommonResponses),
)]
struct ApiDoc;

/// What every route answers besides its own: 401 without a valid token and 403 when the
/// caller's role does not allow it (every route but `/v1/health`), and 500 when the server
/// fails. Added here once rather than on every handler; each route also says that it takes
/// the bearer token.
struct CommonResponses;

impl utoipa::Modify for CommonResponses {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let error = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build(),
                )
                .build()
        };
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(
                HttpBuilder::new().scheme(HttpAuthScheme::Bearer).description(Some("An API token")).build(),
            ),
        );
        for (path, item) in doc.paths.paths.iter_mut() {
            let methods = [
                (axum::http::Method::GET, &mut item.get),
                (axum::http::Method::POST, &mut item.post),
                (axum::http::Method::PUT, &mut item.put),
                (axum::http::Method::DELETE, &mut item.delete),
                (axum::http::Method::PATCH, &mut item.patch),
            ];
            for (method, op) in methods {
                let Some(op) = op.as_mut() else { continue };
                let open = is_open(&method, path);
                if open {
                    // Open: no token, so neither 401 for want of one nor 403.
                    op.security = None;
                } else {
                    op.security = Some(vec![SecurityRequirement::new("token", Vec::<String>::new())]);
                    op.responses
                        .responses
                        .entry("401".into())
                        .or_insert_with(|| error("No token, or one that is unknown, revoked or expired").into());
                    op.responses
                        .responses
                        .entry("403".into())
                        .or_insert_with(|| error("The caller's role does not allow this").into());
                    op.responses
                        .responses
                        .entry("400".into())
                        .or_insert_with(|| error("The `Host` header names none of the server's names").into());
                }
                op.responses
                    .responses
                    .entry("500".into())
                    .or_insert_with(|| error("A failure inside the server; its log has the detail").into());
            }
        }
    }
}

/// The router and the OpenAPI document, built from the same handler list.
fn router() -> (axum::Router<Arc<Server>>, utoipa::openapi::OpenApi) {
    let (router, mut doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(operations::health))
        .routes(routes!(operations::openapi_document))
        .routes(routes!(metrics::metrics))
        .routes(routes!(images::list_images, images::create_image))
        .routes(routes!(images::show_image, images::delete_image))
        .routes(routes!(clones::list_clones, clones::create_clone))
        .routes(routes!(clones::show_clone, clones::delete_clone))
        .routes(routes!(clones::start_clone))
        .routes(routes!(clones::stop_clone))
        .routes(routes!(clones::reset_clone))
        .routes(routes!(clones::refresh_clone))
        .routes(routes!(clones::revert_clone))
        .routes(routes!(clones::list_checkpoints, clones::create_checkpoint))
        .routes(routes!(clones::delete_checkpoint))
        .routes(routes!(clones::create_branch))
        .routes(routes!(clones::set_expiry))
        .routes(routes!(clones::protect_clone))
        .routes(routes!(clones::unprotect_clone))
        .routes(routes!(clones::set_idle))
        .routes(routes!(templates::list_templates, templates::create_template))
        .routes(routes!(templates::show_template, templates::delete_template))
        .routes(routes!(schedules::list_schedules, schedules::create_schedule))
        .routes(routes!(schedules::show_schedule, schedules::delete_schedule))
        .routes(routes!(schedules::run_schedule))
        .routes(routes!(operations::list_operations))
        .routes(routes!(operations::show_operation))
        .routes(routes!(operations::cancel_operation))
        .routes(routes!(identity::whoami))
        .routes(routes!(identity::list_users, identity::create_user))
        .routes(routes!(identity::show_user, identity::delete_user))
        .routes(routes!(identity::list_teams, identity::create_team))
        .routes(routes!(identity::show_team, identity::delete_team))
        .routes(routes!(identity::add_member, identity::remove_member))
        .routes(routes!(identity::list_tokens, identity::create_token))
        .routes(routes!(identity::revoke_token))
        .routes(routes!(identity::list_sources, identity::create_source))
        .routes(routes!(identity::delete_source))
        .routes(routes!(identity::list_activity))
        .routes(routes!(agents::list_agents))
        .routes(routes!(agents::show_agent))
        .routes(routes!(agents::revoke_agent))
        .routes(routes!(agents::create_enrollment))
        .routes(routes!(agents::join))
        .routes(routes!(agents::list_locations, agents::create_location))
        .routes(routes!(agents::delete_location))
        .routes(routes!(webhooks::list_webhooks, webhooks::create_webhook))
        .routes(routes!(webhooks::delete_webhook))
        .routes(routes!(webhooks::list_deliveries))
        .split_for_parts();
    // The modifiers ran before the routes were added: run ours again over the whole document.
    utoipa::Modify::modify(&CommonResponses, &mut doc);
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    (router, doc)
}

/// The web dashboard's files, as served under `/ui/` (`index.html` also at `/`): name,
/// content type, contents.
pub fn dashboard_files() -> &'static [(&'static str, &'static str, &'static str)] {
    &ui::FILES
}

/// The OpenAPI document of this server's API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    router().1
}

/// The OpenAPI document as committed in `doc/openapi.json`.
pub fn openapi_json() -> String {
    let mut text = openapi().to_pretty_json().expect("the OpenAPI document serializes");
    text.push('\n');
    text
}

/// The whole application: routes, the OpenAPI document, authentication, the `Host` check,
/// errors for unknown routes and methods, a body limit, and a span per request.
pub fn app(server: Arc<Server>, hosts: AllowedHosts) -> axum::Router {
    let (router, _) = router();
    let hosts = Arc::new(hosts);
    router
        .merge(ui::routes())
        .fallback(|| async {
            ApiError::new(ErrorCode::NotFound, "no such route; the routes are listed at /v1/openapi.json")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(ErrorCode::MethodNotAllowed, "this route does not take that method; see /v1/openapi.json")
        })
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(server.clone(), authenticate))
        .layer(axum::middleware::from_fn_with_state(hosts, check_host))
        .layer(axum::middleware::from_fn(trace_request))
        .with_state(server)
}

/// A span per request, carrying its method, path, a request number and (once known) the
/// user, and one log line with its status and duration.
async fn trace_request(request: Request, next: Next) -> Response {
    use std::sync::atomic::{AtomicU64, Ordering};
    use tracing::Instrument;
    static REQUESTS: AtomicU64 = AtomicU64::new(1);
    let id = REQUESTS.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!(
        "request",
        id,
        method = %request.method(),
        path = %request.uri().path(),
        user = tracing::field::Empty,
    );
    async move {
        let started = Instant::now();
        let response = next.run(request).await;
        tracing::debug!(status = response.status().as_u16(), ms = started.elapsed().as_millis() as u64, "answered");
        response
    }
    .instrument(span)
    .await
}

/// Serves the API on `listener` until `shutdown` completes.
pub async fn serve(
    server: Arc<Server>,
    hosts: AllowedHosts,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app(server, hosts)).with_graceful_shutdown(shutdown).await
}

/// Serves the API over TLS on `listener`, with the certificate chain and key in the PEM
/// files `cert` and `key`, until `shutdown` completes; requests under way then get ten
/// seconds to end. Fails at once when the files cannot be read.
pub async fn serve_tls(
    server: Arc<Server>,
    hosts: AllowedHosts,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> std::io::Result<()> {
    // One crypto provider for the whole process (ring); installing it twice is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("reading the TLS certificate {} and key {}: {e}", cert.display(), key.display()),
        )
    })?;
    let handle = axum_server::Handle::new();
    let stopper = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        stopper.graceful_shutdown(Some(std::time::Duration::from_secs(10)));
    });
    axum_server::from_tcp_rustls(listener.into_std()?, config)?
        .handle(handle)
        .serve(app(server, hosts).into_make_service())
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_matched_without_their_port() {
        let hosts = AllowedHosts(vec!["localhost".into(), "127.0.0.1".into(), "[::1]".into(), "db.example".into()]);
        for ok in ["localhost", "localhost:7420", "127.0.0.1:7420", "[::1]:7420", "[::1]", "DB.example:1"] {
            assert!(hosts.allows(ok), "{ok}");
        }
        for bad in ["", "evil.example", "evil.example:7420", "127.0.0.2", "localhost.evil.example"] {
            assert!(!hosts.allows(bad), "{bad}");
        }
    }
}
