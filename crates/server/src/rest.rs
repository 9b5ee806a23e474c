//! The REST API (doc/API.md): routes to the operations of [`Daemon`], and the one mapping of
//! their errors to HTTP statuses. Only this module knows about HTTP.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use crate::driver::DriverKind;
use crate::ops::{Daemon, OpError};
use crate::Name;

/// An error answer: 4xx with a message that says what to do, or 500 saying what failed
/// inside the daemon (logged there too). The daemon serves its own host's operator, so the
/// 500 keeps its detail rather than hiding it.
pub struct ApiError(OpError);

impl From<OpError> for ApiError {
    fn from(e: OpError) -> ApiError {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = match self.0 {
            OpError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            OpError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            OpError::Conflict(m) => (StatusCode::CONFLICT, m),
            OpError::Internal(m) => {
                tracing::error!("{m}");
                (StatusCode::INTERNAL_SERVER_ERROR, format!("the daemon failed: {m}"))
            }
        };
        (status, Json(serde_json::json!({ "error": message }))).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

fn name(raw: &str) -> Result<Name, ApiError> {
    Name::new(raw).map_err(|e| ApiError(OpError::BadRequest(e.to_string())))
}

/// Runs a blocking operation off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, OpError> + Send + 'static) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError(OpError::Internal(format!("an operation panicked: {e}"))))?
        .map_err(ApiError)
}

#[derive(Deserialize)]
struct CreateImage {
    name: String,
    from_dir: Option<PathBuf>,
    from_url: Option<String>,
}

#[derive(Deserialize)]
struct CreateClone {
    name: String,
    image: String,
    driver: Option<String>,
}

pub fn app(daemon: Arc<Daemon>) -> Router {
    Router::new()
        .route(
            "/v1/health",
            get(|| async { Json(serde_json::json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")})) }),
        )
        .route("/v1/images", get(list_images).post(create_image))
        .route("/v1/images/{name}", get(show_image).delete(delete_image))
        .route("/v1/clones", get(list_clones).post(create_clone))
        .route("/v1/clones/{name}", get(show_clone).delete(delete_clone))
        .route("/v1/clones/{name}/stop", post(stop_clone))
        .route("/v1/clones/{name}/start", post(start_clone))
        .route("/v1/clones/{name}/reset", post(reset_clone))
        .with_state(daemon)
}

/// Serves the API on `listener` until `shutdown` completes.
pub async fn serve(
    daemon: Arc<Daemon>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app(daemon)).with_graceful_shutdown(shutdown).await
}

async fn list_images(State(d): State<Arc<Daemon>>) -> ApiResult<impl IntoResponse> {
    Ok(Json(blocking(move || d.images()).await?))
}

async fn show_image(State(d): State<Arc<Daemon>>, Path(raw): Path<String>) -> ApiResult<impl IntoResponse> {
    let name = name(&raw)?;
    Ok(Json(blocking(move || d.image(&name)).await?))
}

async fn create_image(State(d): State<Arc<Daemon>>, Json(body): Json<CreateImage>) -> ApiResult<impl IntoResponse> {
    let name = name(&body.name)?;
    let image = match (body.from_dir, body.from_url) {
        (Some(dir), None) => blocking(move || d.create_image_from_dir(name, &dir)).await?,
        (None, Some(url)) => blocking(move || d.create_image_from_url(name, &url)).await?,
        _ => return Err(ApiError(OpError::BadRequest("give exactly one of from_dir and from_url".into()))),
    };
    Ok((StatusCode::ACCEPTED, Json(image)))
}

async fn delete_image(State(d): State<Arc<Daemon>>, Path(raw): Path<String>) -> ApiResult<StatusCode> {
    let name = name(&raw)?;
    blocking(move || d.delete_image(&name)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_clones(State(d): State<Arc<Daemon>>) -> ApiResult<impl IntoResponse> {
    Ok(Json(blocking(move || d.clones()).await?))
}

async fn show_clone(State(d): State<Arc<Daemon>>, Path(raw): Path<String>) -> ApiResult<impl IntoResponse> {
    let name = name(&raw)?;
    Ok(Json(blocking(move || d.clone_view_of(&name)).await?))
}

async fn create_clone(State(d): State<Arc<Daemon>>, Json(body): Json<CreateClone>) -> ApiResult<impl IntoResponse> {
    let name = name(&body.name)?;
    let image = Name::new(&body.image).map_err(|e| ApiError(OpError::BadRequest(e.to_string())))?;
    let driver = match body.driver.as_deref() {
        None => None,
        Some(d) => Some(d.parse::<DriverKind>().map_err(|e| ApiError(OpError::BadRequest(e)))?),
    };
    let clone = blocking(move || d.create_clone(name, image, driver)).await?;
    Ok((StatusCode::CREATED, Json(clone)))
}

async fn delete_clone(State(d): State<Arc<Daemon>>, Path(raw): Path<String>) -> ApiResult<StatusCode> {
    let name = name(&raw)?;
    blocking(move || d.delete_clone(&name)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn stop_clone(State(d): State<Arc<Daemon>>, Path(raw): Path<String>) -> ApiResult<impl IntoResponse> {
    let name = name(&raw)?;
    Ok(Json(blocking(move || d.stop_clone(&name)).await?))
}

async fn start_clone(State(d): State<Arc<Daemon>>, Path(raw): Path<String>) -> ApiResult<impl IntoResponse> {
    let name = name(&raw)?;
    Ok(Json(blocking(move || d.start_clone(&name)).await?))
}

async fn reset_clone(State(d): State<Arc<Daemon>>, Path(raw): Path<String>) -> ApiResult<impl IntoResponse> {
    let name = name(&raw)?;
    Ok(Json(blocking(move || d.reset_clone(&name)).await?))
}
