//! Routes of webhooks (administrators only): list, register, remove, and each one's
//! deliveries (crate::webhooks).

use std::sync::Arc;

use api::{CreateWebhook, CreatedWebhook, Delivery, ErrorBody, ErrorCode, Webhook};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

use super::{audited_as, blocking, ApiError, ApiJson, ApiPath, ApiResult, Auth, Subject};
use crate::ops::Server;

/// A webhook's id from its path: digits only, positive.
fn webhook_id(raw: &str) -> Result<u64, ApiError> {
    raw.parse::<u64>()
        .ok()
        .filter(|id| *id > 0 && *id <= i64::MAX as u64 && raw.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::BadRequest,
                format!("invalid webhook id {raw:?}: use the number `webhook list` shows"),
            )
        })
}

#[utoipa::path(get, path = "/v1/webhooks", tag = "webhooks",
    responses((status = 200, description = "The registered webhooks (administrators); never their secrets", body = Vec<Webhook>)))]
pub async fn list_webhooks(State(s): State<Arc<Server>>, Auth(caller): Auth) -> ApiResult<Json<Vec<Webhook>>> {
    Ok(Json(blocking(move || s.webhooks(&caller)).await?))
}

#[utoipa::path(post, path = "/v1/webhooks", tag = "webhooks", request_body = CreateWebhook,
    responses((status = 201, description = "The new webhook, with its secret: shown this once", body = CreatedWebhook),
              (status = 400, description = "Not a JSON object of this shape, a URL that is not http(s), an unknown event kind, \
                                            or a secret shorter than 16 bytes", body = ErrorBody),
              (status = 413, description = "The request body is larger than 64 KiB", body = ErrorBody),
              (status = 415, description = "The request body is not sent as JSON", body = ErrorBody)))]
pub async fn create_webhook(
    State(s): State<Arc<Server>>,
    Auth(caller): Auth,
    ApiJson(body): ApiJson<CreateWebhook>,
) -> ApiResult<(StatusCode, Json<CreatedWebhook>)> {
    let made =
        audited_as(s, caller, "webhook.create", None, StatusCode::CREATED, move |s, c| Ok(s.create_webhook(c, body)?))
            .await?;
    Ok((StatusCode::CREATED, Json(made)))
}

#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = u64, Path, description = "The webhook's id")),
    responses((status = 204, description = "Removed, with its deliveries"),
              (status = 400, description = "Not a valid webhook id", body = ErrorBody),
              (status = 404, description = "No such webhook", body = ErrorBody)))]
pub async fn delete_webhook(
    State(s): State<Arc<Server>>,
    Auth(caller): Auth,
    ApiPath(raw): ApiPath<String>,
) -> ApiResult<StatusCode> {
    let id = webhook_id(&raw)?;
    audited_as(s, caller, "webhook.delete", Some(Subject::Webhook(id)), StatusCode::NO_CONTENT, move |s, c| {
        Ok(s.delete_webhook(c, id)?)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/webhooks/{id}/deliveries", tag = "webhooks",
    params(("id" = u64, Path, description = "The webhook's id")),
    responses((status = 200, description = "Its latest deliveries, newest first: each event, its state, attempts and \
                                            the endpoint's last answer", body = Vec<Delivery>),
              (status = 400, description = "Not a valid webhook id", body = ErrorBody),
              (status = 404, description = "No such webhook", body = ErrorBody)))]
pub async fn list_deliveries(
    State(s): State<Arc<Server>>,
    Auth(caller): Auth,
    ApiPath(raw): ApiPath<String>,
) -> ApiResult<Json<Vec<Delivery>>> {
    let id = webhook_id(&raw)?;
    Ok(Json(blocking(move || s.deliveries(&caller, id)).await?))
}
