//! Routes of clone templates.

use std::sync::Arc;

use api::{CreateTemplate, ErrorBody, Name, Template};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

use super::{audited_as, blocking, ApiJson, ApiPath, ApiResult, Auth, Subject};
use crate::ops::Server;

#[utoipa::path(get, path = "/v1/templates", tag = "clones",
    responses((status = 200, description = "The clone templates", body = Vec<Template>)))]
pub async fn list_templates(State(s): State<Arc<Server>>, Auth(caller): Auth) -> ApiResult<Json<Vec<Template>>> {
    Ok(Json(blocking(move || s.templates(&caller)).await?))
}

#[utoipa::path(get, path = "/v1/templates/{name}", tag = "clones",
    params(("name" = Name, Path, description = "The template's name")),
    responses((status = 200, description = "The template, with its scripts", body = Template),
              (status = 400, description = "Not a valid name", body = ErrorBody),
              (status = 404, description = "No such template", body = ErrorBody)))]
pub async fn show_template(
    State(s): State<Arc<Server>>,
    Auth(caller): Auth,
    ApiPath(name): ApiPath<Name>,
) -> ApiResult<Json<Template>> {
    Ok(Json(blocking(move || s.template(&caller, &name)).await?))
}

#[utoipa::path(post, path = "/v1/templates", tag = "clones", request_body = CreateTemplate,
    responses((status = 201, description = "The new template", body = Template),
              (status = 400, description = "Not a JSON object of this shape, no script, or a script too long", body = ErrorBody),
              (status = 409, description = "The name is taken", body = ErrorBody),
              (status = 413, description = "The request body is larger than 64 KiB", body = ErrorBody),
              (status = 415, description = "The request body is not sent as JSON", body = ErrorBody)))]
pub async fn create_template(
    State(s): State<Arc<Server>>,
    Auth(caller): Auth,
    ApiJson(body): ApiJson<CreateTemplate>,
) -> ApiResult<(StatusCode, Json<Template>)> {
    let subject = Subject::Template(body.name.clone());
    let made = audited_as(s, caller, "template.create", Some(subject), StatusCode::CREATED, move |s, c| {
        Ok(s.create_template(c, body)?)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(made)))
}

#[utoipa::path(delete, path = "/v1/templates/{name}", tag = "clones",
    params(("name" = Name, Path, description = "The template's name")),
    responses((status = 204, description = "Removed; clones made with it are not changed"),
              (status = 400, description = "Not a valid name", body = ErrorBody),
              (status = 404, description = "No such template", body = ErrorBody)))]
pub async fn delete_template(
    State(s): State<Arc<Server>>,
    Auth(caller): Auth,
    ApiPath(name): ApiPath<Name>,
) -> ApiResult<StatusCode> {
    let subject = Subject::Template(name.clone());
    audited_as(s, caller, "template.delete", Some(subject), StatusCode::NO_CONTENT, move |s, c| {
        Ok(s.delete_template(c, &name)?)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
