//! The REST API: routes to the [`Server`]'s operations, the one error body for every failure,
//! a tracing span per request, and the OpenAPI document generated from the handlers and the
//! `api` crate's types (served at `/v1/openapi.json`, committed as `doc/openapi.json`).
//!
//! Only this module knows HTTP.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use api::{paths, Clone, CreateClone, CreateImage, ErrorBody, ErrorCode, Health, Image, Name, Operation, OperationId};
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

use crate::ops::{CloneAction, Server, ServerError};

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
        let status =
            StatusCode::from_u16(self.0.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::error!("{}", self.0.error);
        } else {
            tracing::info!(status = status.as_u16(), "refused: {}", self.0.error);
        }
        (status, Json(self.0)).into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> ApiError {
        let message = match &rejection {
            JsonRejection::JsonDataError(e) => format!("the request body does not fit: {}", e.body_text().trim_start_matches("Failed to deserialize the JSON body into the target type: ")),
            JsonRejection::JsonSyntaxError(e) => format!("the request body is not valid JSON: {}", e.body_text().trim_start_matches("Failed to parse the request body as JSON: ")),
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

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !is_json(req.headers()) {
            return Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                "the request body must be JSON, sent with `content-type: application/json`",
            ));
        }
        let body = Bytes::from_request(req, state).await.map_err(JsonRejection::from)?;
        let value = Json::<T>::from_bytes(&body)?.0;
        if body.trim_ascii_start().first() != Some(&b'{') {
            return Err(ApiError::new(ErrorCode::BadRequest, "the request body must be a JSON object, not an array"));
        }
        Ok(ApiJson(value))
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
        Ok(ApiPath(axum::extract::Path::<T>::from_request_parts(parts, state).await?.0))
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
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(q) => Ok(ApiQuery(q.0)),
            Err(e) => Err(ApiError::new(ErrorCode::BadRequest, format!("the query does not fit: {}", e.body_text()))),
        }
    }
}

/// Starts an operation, waits briefly for its end, and answers 200 if it has ended or 202.
async fn operation(
    server: Arc<Server>,
    wait: Wait,
    start: impl FnOnce(&Arc<Server>) -> Result<Operation, ServerError> + Send + 'static,
) -> ApiResult<(StatusCode, Json<Operation>)> {
    let wait = wait.duration()?;
    let op = blocking(move || {
        let op = start(&server)?;
        server.wait_briefly(op.id, wait)
    })
    .await?;
    let status = if op.state.is_finished() { StatusCode::OK } else { StatusCode::ACCEPTED };
    Ok((status, Json(op)))
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "thinclone",
        description = "Writable copies of large databases in about a second. Every request that changes \
                       something answers with an Operation: 202 while it runs, 200 once it has ended. \
                       Every failure answers with an ErrorBody. See doc/API.md.",
        license(name = "Apache-2.0"),
    ),
    tags(
        (name = "images", description = "Immutable, point-in-time copies of a database"),
        (name = "clones", description = "Private, writable databases made from an image"),
        (name = "operations", description = "What the server is doing or did"),
        (name = "server", description = "The server itself"),
    ),
    components(schemas(ErrorBody, ErrorCode)),
)]
struct ApiDoc;

/// The router and the OpenAPI document, built from the same handler list.
fn router() -> (axum::Router<Arc<Server>>, utoipa::openapi::OpenApi) {
    let (router, mut doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health))
        .routes(routes!(list_images, create_image))
        .routes(routes!(show_image, delete_image))
        .routes(routes!(list_clones, create_clone))
        .routes(routes!(show_clone, delete_clone))
        .routes(routes!(start_clone))
        .routes(routes!(stop_clone))
        .routes(routes!(reset_clone))
        .routes(routes!(list_operations))
        .routes(routes!(show_operation))
        .split_for_parts();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    (router, doc)
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

/// The whole application: routes, the OpenAPI document, errors for unknown routes and
/// methods, a body limit, and a span per request.
pub fn app(server: Arc<Server>) -> axum::Router {
    let (router, doc) = router();
    let doc = Arc::new(openapi_json_of(&doc));
    router
        .route(paths::OPENAPI, axum::routing::get(move || openapi_handler(doc.clone())))
        .fallback(|| async {
            ApiError::new(ErrorCode::NotFound, "no such route; the routes are listed at /v1/openapi.json")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                ErrorCode::MethodNotAllowed,
                "this route does not take that method; see /v1/openapi.json",
            )
        })
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn(trace_request))
        .with_state(server)
}

fn openapi_json_of(doc: &utoipa::openapi::OpenApi) -> String {
    doc.to_pretty_json().expect("the OpenAPI document serializes")
}

async fn openapi_handler(doc: Arc<String>) -> Response {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], doc.as_str().to_owned()).into_response()
}

/// A span per request, carrying its method, path and a request number, and one log line
/// with its status and duration.
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
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app(server)).with_graceful_shutdown(shutdown).await
}

// Every response has a description (OpenAPI requires one), and every status a route can
// answer is listed: 500 wherever the catalog is read, since its failure is answered as one.

#[utoipa::path(get, path = "/v1/health", tag = "server",
    responses((status = 200, description = "The server answers", body = Health)))]
async fn health() -> Json<Health> {
    Json(Health { status: "ok".into(), version: env!("CARGO_PKG_VERSION").into() })
}

#[utoipa::path(get, path = "/v1/images", tag = "images",
    responses((status = 200, description = "Every image", body = Vec<Image>),
              (status = 500, description = "A failure inside the server; its log has the detail", body = ErrorBody)))]
async fn list_images(State(s): State<Arc<Server>>) -> ApiResult<Json<Vec<Image>>> {
    Ok(Json(blocking(move || s.images()).await?))
}

#[utoipa::path(get, path = "/v1/images/{name}", tag = "images",
    params(("name" = Name, Path, description = "The image's name")),
    responses((status = 200, description = "The image", body = Image),
              (status = 400, description = "Not a valid name", body = ErrorBody),
              (status = 404, description = "No such image", body = ErrorBody),
              (status = 500, description = "A failure inside the server; its log has the detail", body = ErrorBody)))]
async fn show_image(State(s): State<Arc<Server>>, ApiPath(name): ApiPath<Name>) -> ApiResult<Json<Image>> {
    Ok(Json(blocking(move || s.image(&name)).await?))
}

#[utoipa::path(post, path = "/v1/images", tag = "images", request_body = CreateImage, params(Wait),
    responses((status = 200, description = "The operation, ended", body = Operation),
              (status = 202, description = "The operation, still running", body = Operation),
              (status = 400, description = "Not a JSON object of this shape, or a bad name or source", body = ErrorBody),
              (status = 409, description = "The name is taken, or a server is running on the source directory \
                                            (see `snapshot`)", body = ErrorBody),
              (status = 413, description = "The request body is larger than 64 KiB", body = ErrorBody),
              (status = 415, description = "The request body is not sent as JSON", body = ErrorBody),
              (status = 500, description = "A failure inside the server; its log has the detail", body = ErrorBody),
              (status = 507, description = "Not enough free disk for a copy of the source", body = ErrorBody)))]
async fn create_image(
    State(s): State<Arc<Server>>,
    ApiQuery(wait): ApiQuery<Wait>,
    ApiJson(body): ApiJson<CreateImage>,
) -> ApiResult<(StatusCode, Json<Operation>)> {
    operation(s, wait, move |s| s.create_image(body)).await
}

#[utoipa::path(delete, path = "/v1/images/{name}", tag = "images",
    params(("name" = Name, Path, description = "The image's name"), Wait),
    responses((status = 200, description = "The operation, ended", body = Operation),
              (status = 202, description = "The operation, still running", body = Operation),
              (status = 400, description = "Not a valid name", body = ErrorBody),
              (status = 404, description = "No such image", body = ErrorBody),
              (status = 409, description = "It has clones, or is being made or removed", body = ErrorBody),
              (status = 500, description = "A failure inside the server; its log has the detail", body = ErrorBody)))]
async fn delete_image(
    State(s): State<Arc<Server>>,
    ApiPath(name): ApiPath<Name>,
    ApiQuery(wait): ApiQuery<Wait>,
) -> ApiResult<(StatusCode, Json<Operation>)> {
    operation(s, wait, move |s| s.delete_image(&name)).await
}

#[utoipa::path(get, path = "/v1/clones", tag = "clones",
    responses((status = 200, description = "Every clone", body = Vec<Clone>),
              (status = 500, description = "A failure inside the server; its log has the detail", body = ErrorBody)))]
async fn list_clones(State(s): State<Arc<Server>>) -> ApiResult<Json<Vec<Clone>>> {
    Ok(Json(blocking(move || s.clones()).await?))
}

#[utoipa::path(get, path = "/v1/clones/{name}", tag = "clones",
    params(("name" = Name, Path, description = "The clone's name")),
    responses((status = 200, description = "The clone", body = Clone),
              (status = 400, description = "Not a valid name", body = ErrorBody),
              (status = 404, description = "No such clone", body = ErrorBody),
              (status = 500, description = "A failure inside the server; its log has the detail", body = ErrorBody)))]
async fn show_clone(State(s): State<Arc<Server>>, ApiPath(name): ApiPath<Name>) -> ApiResult<Json<Clone>> {
    Ok(Json(blocking(move || s.clone_named(&name)).await?))
}

#[utoipa::path(post, path = "/v1/clones", tag = "clones", request_body = CreateClone, params(Wait),
    responses((status = 200, description = "The operation, ended", body = Operation),
              (status = 202, description = "The operation, still running", body = Operation),
              (status = 400, description = "Not a JSON object of this shape, a bad name, or a driver or engine version \
                                            this host does not have", body = ErrorBody),
              (status = 404, description = "No such image", body = ErrorBody),
              (status = 409, description = "The name is taken, the image is not ready, or no port is free", body = ErrorBody),
              (status = 413, description = "The request body is larger than 64 KiB", body = ErrorBody),
              (status = 415, description = "The request body is not sent as JSON", body = ErrorBody),
              (status = 500, description = "A failure inside the server; its log has the detail", body = ErrorBody)))]
async fn create_clone(
    State(s): State<Arc<Server>>,
    ApiQuery(wait): ApiQuery<Wait>,
    ApiJson(body): ApiJson<CreateClone>,
) -> ApiResult<(StatusCode, Json<Operation>)> {
    operation(s, wait, move |s| s.create_clone(body)).await
}

#[utoipa::path(delete, path = "/v1/clones/{name}", tag = "clones",
    params(("name" = Name, Path, description = "The clone's name"), Wait),
    responses((status = 200, description = "The operation, ended", body = Operation),
              (status = 202, description = "The operation, still running", body = Operation),
              (status = 400, description = "Not a valid name", body = ErrorBody),
              (status = 404, description = "No such clone", body = ErrorBody),
              (status = 409, description = "Another operation is under way on it", body = ErrorBody),
              (status = 500, description = "A failure inside the server; its log has the detail", body = ErrorBody)))]
async fn delete_clone(
    State(s): State<Arc<Server>>,
    ApiPath(name): ApiPath<Name>,
    ApiQuery(wait): ApiQuery<Wait>,
) -> ApiResult<(StatusCode, Json<Operation>)> {
    operation(s, wait, move |s| s.delete_clone(&name)).await
}

async fn clone_action(
    s: Arc<Server>,
    name: Name,
    wait: Wait,
    action: CloneAction,
) -> ApiResult<(StatusCode, Json<Operation>)> {
    operation(s, wait, move |s| s.clone_action(&name, action)).await
}

#[utoipa::path(post, path = "/v1/clones/{name}/start", tag = "clones",
    params(("name" = Name, Path, description = "The clone's name"), Wait),
    responses((status = 200, description = "The operation, ended", body = Operation),
              (status = 202, description = "The operation, still running", body = Operation),
              (status = 400, description = "Not a valid name", body = ErrorBody),
              (status = 404, description = "No such clone", body = ErrorBody),
              (status = 409, description = "Another operation is under way on it", body = ErrorBody),
              (status = 500, description = "A failure inside the server; its log has the detail", body = ErrorBody)))]
async fn start_clone(
    State(s): State<Arc<Server>>,
    ApiPath(name): ApiPath<Name>,
    ApiQuery(wait): ApiQuery<Wait>,
) -> ApiResult<(StatusCode, Json<Operation>)> {
    clone_action(s, name, wait, CloneAction::Start).await
}

#[utoipa::path(post, path = "/v1/clones/{name}/stop", tag = "clones",
    params(("name" = Name, Path, description = "The clone's name"), Wait),
    responses((status = 200, description = "The operation, ended", body = Operation),
              (status = 202, description = "The operation, still running", body = Operation),
              (status = 400, description = "Not a valid name", body = ErrorBody),
              (status = 404, description = "No such clone", body = ErrorBody),
              (status = 409, description = "Another operation is under way on it", body = ErrorBody),
              (status = 500, description = "A failure inside the server; its log has the detail", body = ErrorBody)))]
async fn stop_clone(
    State(s): State<Arc<Server>>,
    ApiPath(name): ApiPath<Name>,
    ApiQuery(wait): ApiQuery<Wait>,
) -> ApiResult<(StatusCode, Json<Operation>)> {
    clone_action(s, name, wait, CloneAction::Stop).await
}

#[utoipa::path(post, path = "/v1/clones/{name}/reset", tag = "clones",
    params(("name" = Name, Path, description = "The clone's name"), Wait),
    responses((status = 200, description = "The operation, ended", body = Operation),
              (status = 202, description = "The operation, still running", body = Operation),
              (status = 400, description = "Not a valid name", body = ErrorBody),
              (status = 404, description = "No such clone", body = ErrorBody),
              (status = 409, description = "Another operation is under way on it", body = ErrorBody),
              (status = 500, description = "A failure inside the server; its log has the detail", body = ErrorBody)))]
async fn reset_clone(
    State(s): State<Arc<Server>>,
    ApiPath(name): ApiPath<Name>,
    ApiQuery(wait): ApiQuery<Wait>,
) -> ApiResult<(StatusCode, Json<Operation>)> {
    clone_action(s, name, wait, CloneAction::Reset).await
}

#[utoipa::path(get, path = "/v1/operations", tag = "operations",
    responses((status = 200, description = "The most recent operations, newest first", body = Vec<Operation>),
              (status = 500, description = "A failure inside the server; its log has the detail", body = ErrorBody)))]
async fn list_operations(State(s): State<Arc<Server>>) -> ApiResult<Json<Vec<Operation>>> {
    Ok(Json(blocking(move || s.operations()).await?))
}

#[utoipa::path(get, path = "/v1/operations/{id}", tag = "operations",
    params(("id" = OperationId, Path, description = "The operation's id")),
    responses((status = 200, description = "The operation", body = Operation),
              (status = 400, description = "Not a valid id: a positive number, in digits", body = ErrorBody),
              (status = 404, description = "No such operation", body = ErrorBody),
              (status = 500, description = "A failure inside the server; its log has the detail", body = ErrorBody)))]
async fn show_operation(
    State(s): State<Arc<Server>>,
    ApiPath(raw): ApiPath<String>,
) -> ApiResult<Json<Operation>> {
    let id: OperationId = raw.parse().map_err(|e: api::InvalidOperationId| ApiError::new(ErrorCode::BadRequest, e.to_string()))?;
    Ok(Json(blocking(move || s.operation(id)).await?))
}
