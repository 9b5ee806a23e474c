//! Routes of the server itself and its operations: health, the OpenAPI document, operations.

use std::sync::{Arc, OnceLock};

use api::{ErrorBody, ErrorCode, Health, Operation, OperationId};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::{audited, blocking, ApiError, ApiPath, ApiResult, Auth};
use crate::ops::Server;

#[utoipa::path(get, path = "/v1/health", tag = "server",
    responses((status = 200, description = "The server answers; no token needed", body = Health)))]
pub async fn health() -> Json<Health> {
    Json(Health { status: "ok".into(), version: env!("CARGO_PKG_VERSION").into() })
}

#[utoipa::path(get, path = "/v1/openapi.json", tag = "server",
    responses((status = 200, description = "This document", content_type = "application/json", body = Object)))]
pub async fn openapi_document(Auth(_caller): Auth) -> Response {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    let text = DOCUMENT.get_or_init(super::openapi_json);
    ([(axum::http::header::CONTENT_TYPE, "application/json")], text.as_str()).into_response()
}

#[utoipa::path(get, path = "/v1/operations", tag = "operations",
    responses((status = 200, description = "The most recent operations on the caller's teams' objects, newest first",
               body = Vec<Operation>)))]
pub async fn list_operations(State(s): State<Arc<Server>>, Auth(caller): Auth) -> ApiResult<Json<Vec<Operation>>> {
    Ok(Json(blocking(move || s.operations(&caller)).await?))
}

#[utoipa::path(get, path = "/v1/operations/{id}", tag = "operations",
    params(("id" = OperationId, Path, description = "The operation's id")),
    responses((status = 200, description = "The operation", body = Operation),
              (status = 400, description = "Not a valid operation id", body = ErrorBody),
              (status = 404, description = "No such operation on the caller's teams' objects", body = ErrorBody)))]
pub async fn show_operation(
    State(s): State<Arc<Server>>,
    Auth(caller): Auth,
    ApiPath(raw): ApiPath<String>,
) -> ApiResult<Json<Operation>> {
    let id: OperationId =
        raw.parse().map_err(|e: api::InvalidOperationId| ApiError::new(ErrorCode::BadRequest, e.to_string()))?;
    Ok(Json(blocking(move || s.operation(&caller, id)).await?))
}

#[utoipa::path(post, path = "/v1/operations/{id}/cancel", tag = "operations",
    params(("id" = OperationId, Path, description = "The operation's id")),
    responses((status = 200, description = "The operation: failed (\"cancelled by …\") once its work stopped, or as it \
                                            was when it had already ended", body = Operation),
              (status = 400, description = "Not a valid operation id", body = ErrorBody),
              (status = 404, description = "No such operation on the caller's teams' objects", body = ErrorBody),
              (status = 409, description = "A running operation of a kind that cannot be cancelled (only an image's \
                                            creation can)", body = ErrorBody),
              (status = 503, description = "The agent doing the work is unreachable", body = ErrorBody)))]
pub async fn cancel_operation(
    State(s): State<Arc<Server>>,
    Auth(caller): Auth,
    ApiPath(raw): ApiPath<String>,
) -> ApiResult<Json<Operation>> {
    let id: OperationId =
        raw.parse().map_err(|e: api::InvalidOperationId| ApiError::new(ErrorCode::BadRequest, e.to_string()))?;
    Ok(Json(audited(s, caller, "operation.cancel", None, move |s, c| Ok(s.cancel_operation(c, id)?)).await?))
}
