//! Routes of images: list, show, make, remove.

use std::sync::Arc;

use api::{CreateImage, ErrorBody, Image, Name, Operation};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

use super::{blocking, operation, ApiJson, ApiPath, ApiQuery, ApiResult, Auth, Subject, Wait};
use crate::ops::Server;

#[utoipa::path(get, path = "/v1/images", tag = "images",
    responses((status = 200, description = "The images of the caller's teams (every image, for an administrator)", body = Vec<Image>)))]
pub async fn list_images(State(s): State<Arc<Server>>, Auth(caller): Auth) -> ApiResult<Json<Vec<Image>>> {
    Ok(Json(blocking(move || s.images(&caller)).await?))
}

#[utoipa::path(get, path = "/v1/images/{name}", tag = "images",
    params(("name" = Name, Path, description = "The image's name")),
    responses((status = 200, description = "The image", body = Image),
              (status = 400, description = "Not a valid name", body = ErrorBody),
              (status = 404, description = "No such image among the caller's teams'", body = ErrorBody)))]
pub async fn show_image(
    State(s): State<Arc<Server>>,
    Auth(caller): Auth,
    ApiPath(name): ApiPath<Name>,
) -> ApiResult<Json<Image>> {
    Ok(Json(blocking(move || s.image(&caller, &name)).await?))
}

#[utoipa::path(post, path = "/v1/images", tag = "images", request_body = CreateImage, params(Wait),
    responses((status = 200, description = "The operation, ended", body = Operation),
              (status = 202, description = "The operation, still running", body = Operation),
              (status = 400, description = "Not a JSON object of this shape, a bad name, or a source that is not \
                                            inside a registered source directory or cannot be copied", body = ErrorBody),
              (status = 404, description = "No such team among the caller's", body = ErrorBody),
              (status = 409, description = "The name is taken, or a server is running on the source directory \
                                            (see `snapshot`)", body = ErrorBody),
              (status = 413, description = "The request body is larger than 64 KiB", body = ErrorBody),
              (status = 415, description = "The request body is not sent as JSON", body = ErrorBody),
              (status = 507, description = "Not enough free disk for a copy of the source", body = ErrorBody)))]
pub async fn create_image(
    State(s): State<Arc<Server>>,
    Auth(caller): Auth,
    ApiQuery(wait): ApiQuery<Wait>,
    ApiJson(body): ApiJson<CreateImage>,
) -> ApiResult<(StatusCode, Json<Operation>)> {
    let subject = Subject::Image(body.name.clone());
    operation(s, caller, "image.create", subject, wait, move |s, caller| s.create_image(caller, body)).await
}

#[utoipa::path(delete, path = "/v1/images/{name}", tag = "images",
    params(("name" = Name, Path, description = "The image's name"), Wait),
    responses((status = 200, description = "The operation, ended", body = Operation),
              (status = 202, description = "The operation, still running", body = Operation),
              (status = 400, description = "Not a valid name", body = ErrorBody),
              (status = 404, description = "No such image among the caller's teams'", body = ErrorBody),
              (status = 409, description = "It has clones, or is being made or removed", body = ErrorBody)))]
pub async fn delete_image(
    State(s): State<Arc<Server>>,
    Auth(caller): Auth,
    ApiPath(name): ApiPath<Name>,
    ApiQuery(wait): ApiQuery<Wait>,
) -> ApiResult<(StatusCode, Json<Operation>)> {
    let subject = Subject::Image(name.clone());
    operation(s, caller, "image.delete", subject, wait, move |s, caller| s.delete_image(caller, &name)).await
}
