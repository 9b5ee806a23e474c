//! Routes of clones: list, show, make, start, stop, reset, remove; their checkpoints and
//! revert.

use std::sync::Arc;

use api::{
    Checkpoint, Clone, CreateBranch, CreateCheckpoint, CreateClone, ErrorBody, IdlePolicy, Name, Operation, Protect,
    RefreshClone, RevertClone, SetExpiry,
};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

use super::{audited, blocking, operation, ApiJson, ApiPath, ApiQuery, ApiResult, Auth, Subject, Wait};
use crate::auth::Caller;
use crate::ops::{CloneAction, Server};

#[utoipa::path(get, path = "/v1/clones", tag = "clones",
    responses((status = 200, description = "The clones of the caller's teams (every clone, for an administrator); \
                                            `url` only on those the caller may use", body = Vec<Clone>)))]
pub async fn list_clones(State(s): State<Arc<Server>>, Auth(caller): Auth) -> ApiResult<Json<Vec<Clone>>> {
    Ok(Json(blocking(move || s.clones(&caller)).await?))
}

#[utoipa::path(get, path = "/v1/clones/{name}", tag = "clones",
    params(("name" = Name, Path, description = "The clone's name")),
    responses((status = 200, description = "The clone; `url` only if the caller may use it", body = Clone),
              (status = 400, description = "Not a valid name", body = ErrorBody),
              (status = 404, description = "No such clone among the caller's teams'", body = ErrorBody)))]
pub async fn show_clone(
    State(s): State<Arc<Server>>,
    Auth(caller): Auth,
    ApiPath(name): ApiPath<Name>,
) -> ApiResult<Json<Clone>> {
    Ok(Json(blocking(move || s.clone_named(&caller, &name)).await?))
}

#[utoipa::path(post, path = "/v1/clones", tag = "clones", request_body = CreateClone, params(Wait),
    responses((status = 200, description = "The operation, ended", body = Operation),
              (status = 202, description = "The operation, still running", body = Operation),
              (status = 400, description = "Not a JSON object of this shape, a bad name, or a driver or engine version \
                                            this host does not have", body = ErrorBody),
              (status = 404, description = "No such image among the caller's teams'", body = ErrorBody),
              (status = 409, description = "The name is taken, the image is not ready, or no port is free", body = ErrorBody),
              (status = 413, description = "The request body is larger than 64 KiB", body = ErrorBody),
              (status = 415, description = "The request body is not sent as JSON", body = ErrorBody),
              (status = 507, description = "Not enough free disk for a full copy", body = ErrorBody)))]
pub async fn create_clone(
    State(s): State<Arc<Server>>,
    Auth(caller): Auth,
    ApiQuery(wait): ApiQuery<Wait>,
    ApiJson(body): ApiJson<CreateClone>,
) -> ApiResult<(StatusCode, Json<Operation>)> {
    let subject = Subject::Clone(body.name.clone());
    operation(s, caller, "clone.create", subject, wait, move |s, caller| s.create_clone(caller, body)).await
}

#[utoipa::path(delete, path = "/v1/clones/{name}", tag = "clones",
    params(("name" = Name, Path, description = "The clone's name"), Wait),
    responses((status = 200, description = "The operation, ended", body = Operation),
              (status = 202, description = "The operation, still running", body = Operation),
              (status = 400, description = "Not a valid name", body = ErrorBody),
              (status = 404, description = "No such clone among the caller's teams'", body = ErrorBody),
              (status = 409, description = "Another operation is under way on it", body = ErrorBody)))]
pub async fn delete_clone(
    State(s): State<Arc<Server>>,
    Auth(caller): Auth,
    ApiPath(name): ApiPath<Name>,
    ApiQuery(wait): ApiQuery<Wait>,
) -> ApiResult<(StatusCode, Json<Operation>)> {
    let subject = Subject::Clone(name.clone());
    operation(s, caller, "clone.delete", subject, wait, move |s, caller| s.delete_clone(caller, &name)).await
}

async fn clone_action(
    s: Arc<Server>,
    caller: Caller,
    name: Name,
    wait: Wait,
    action: CloneAction,
) -> ApiResult<(StatusCode, Json<Operation>)> {
    let label = match action {
        CloneAction::Start => "clone.start",
        CloneAction::Stop => "clone.stop",
        CloneAction::Reset => "clone.reset",
    };
    let subject = Subject::Clone(name.clone());
    operation(s, caller, label, subject, wait, move |s, caller| s.clone_action(caller, &name, action)).await
}

#[utoipa::path(post, path = "/v1/clones/{name}/start", tag = "clones",
    params(("name" = Name, Path, description = "The clone's name"), Wait),
    responses((status = 200, description = "The operation, ended", body = Operation),
              (status = 202, description = "The operation, still running", body = Operation),
              (status = 400, description = "Not a valid name", body = ErrorBody),
              (status = 404, description = "No such clone among the caller's teams'", body = ErrorBody),
              (status = 409, description = "Another operation is under way on it", body = ErrorBody)))]
pub async fn start_clone(
    State(s): State<Arc<Server>>,
    Auth(caller): Auth,
    ApiPath(name): ApiPath<Name>,
    ApiQuery(wait): ApiQuery<Wait>,
) -> ApiResult<(StatusCode, Json<Operation>)> {
    clone_action(s, caller, name, wait, CloneAction::Start).await
}

#[utoipa::path(post, path = "/v1/clones/{name}/stop", tag = "clones",
    params(("name" = Name, Path, description = "The clone's name"), Wait),
    responses((status = 200, description = "The operation, ended", body = Operation),
              (status = 202, description = "The operation, still running", body = Operation),
              (status = 400, description = "Not a valid name", body = ErrorBody),
              (status = 404, description = "No such clone among the caller's teams'", body = ErrorBody),
              (status = 409, description = "Another operation is under way on it", body = ErrorBody)))]
pub async fn stop_clone(
    State(s): State<Arc<Server>>,
    Auth(caller): Auth,
    ApiPath(name): ApiPath<Name>,
    ApiQuery(wait): ApiQuery<Wait>,
) -> ApiResult<(StatusCode, Json<Operation>)> {
    clone_action(s, caller, name, wait, CloneAction::Stop).await
}

#[utoipa::path(post, path = "/v1/clones/{name}/reset", tag = "clones",
    params(("name" = Name, Path, description = "The clone's name"), Wait),
    responses((status = 200, description = "The operation, ended", body = Operation),
              (status = 202, description = "The operation, still running", body = Operation),
              (status = 400, description = "Not a valid name", body = ErrorBody),
              (status = 404, description = "No such clone among the caller's teams'", body = ErrorBody),
              (status = 409, description = "Another operation is under way on it", body = ErrorBody),
              (status = 507, description = "Not enough free disk for a fresh full copy", body = ErrorBody)))]
pub async fn reset_clone(
    State(s): State<Arc<Server>>,
    Auth(caller): Auth,
    ApiPath(name): ApiPath<Name>,
    ApiQuery(wait): ApiQuery<Wait>,
) -> ApiResult<(StatusCode, Json<Operation>)> {
    clone_action(s, caller, name, wait, CloneAction::Reset).await
}

#[utoipa::path(post, path = "/v1/clones/{name}/refresh", tag = "clones", request_body = RefreshClone,
    params(("name" = Name, Path, description = "The clone's name"), Wait),
    responses((status = 200, description = "The operation, ended", body = Operation),
              (status = 202, description = "The operation, still running", body = Operation),
              (status = 400, description = "Not a JSON object of this shape, a bad name, an image of another \
                                            engine, or a clone whose image no schedule made and no image named", body = ErrorBody),
              (status = 403, description = "The caller may not use the clone", body = ErrorBody),
              (status = 404, description = "No such clone or image among the caller's teams'", body = ErrorBody),
              (status = 409, description = "It is on that image already, its schedule has no ready image, a cowfs \
                                            clone is built on its checkpoints, or another operation is under way", body = ErrorBody),
              (status = 413, description = "The request body is larger than 64 KiB", body = ErrorBody),
              (status = 415, description = "The request body is not sent as JSON", body = ErrorBody),
              (status = 503, description = "The clone's agent is unreachable", body = ErrorBody),
              (status = 507, description = "Not enough free disk for a full copy of the new image", body = ErrorBody)))]
pub async fn refresh_clone(
    State(s): State<Arc<Server>>,
    Auth(caller): Auth,
    ApiPath(name): ApiPath<Name>,
    ApiQuery(wait): ApiQuery<Wait>,
    ApiJson(body): ApiJson<RefreshClone>,
) -> ApiResult<(StatusCode, Json<Operation>)> {
    let subject = Subject::Clone(name.clone());
    operation(s, caller, "clone.refresh", subject, wait, move |s, caller| s.refresh_clone(caller, &name, body)).await
}

#[utoipa::path(get, path = "/v1/clones/{name}/checkpoints", tag = "clones",
    params(("name" = Name, Path, description = "The clone's name")),
    responses((status = 200, description = "The clone's checkpoints, oldest first", body = Vec<Checkpoint>),
              (status = 400, description = "Not a valid name", body = ErrorBody),
              (status = 404, description = "No such clone among the caller's teams'", body = ErrorBody),
              (status = 503, description = "The clone's agent is unreachable", body = ErrorBody)))]
pub async fn list_checkpoints(
    State(s): State<Arc<Server>>,
    Auth(caller): Auth,
    ApiPath(name): ApiPath<Name>,
) -> ApiResult<Json<Vec<Checkpoint>>> {
    Ok(Json(blocking(move || s.checkpoints(&caller, &name)).await?))
}

#[utoipa::path(post, path = "/v1/clones/{name}/checkpoints", tag = "clones", request_body = CreateCheckpoint,
    params(("name" = Name, Path, description = "The clone's name"), Wait),
    responses((status = 200, description = "The operation, ended", body = Operation),
              (status = 202, description = "The operation, still running", body = Operation),
              (status = 400, description = "Not a JSON object of this shape, a bad name, or a message too long", body = ErrorBody),
              (status = 404, description = "No such clone among the caller's teams'", body = ErrorBody),
              (status = 409, description = "The checkpoint's name is taken, or another operation is under way on the clone", body = ErrorBody),
              (status = 413, description = "The request body is larger than 64 KiB", body = ErrorBody),
              (status = 415, description = "The request body is not sent as JSON", body = ErrorBody),
              (status = 503, description = "The clone's agent is unreachable", body = ErrorBody),
              (status = 507, description = "Not enough free disk for a copy clone's checkpoint", body = ErrorBody)))]
pub async fn create_checkpoint(
    State(s): State<Arc<Server>>,
    Auth(caller): Auth,
    ApiPath(name): ApiPath<Name>,
    ApiQuery(wait): ApiQuery<Wait>,
    ApiJson(body): ApiJson<CreateCheckpoint>,
) -> ApiResult<(StatusCode, Json<Operation>)> {
    let subject = Subject::Clone(name.clone());
    operation(s, caller, "clone.checkpoint", subject, wait, move |s, caller| s.checkpoint_clone(caller, &name, body))
        .await
}

#[utoipa::path(delete, path = "/v1/clones/{name}/checkpoints/{checkpoint}", tag = "clones",
    params(("name" = Name, Path, description = "The clone's name"),
           ("checkpoint" = Name, Path, description = "The checkpoint's name"), Wait),
    responses((status = 200, description = "The operation, ended", body = Operation),
              (status = 202, description = "The operation, still running", body = Operation),
              (status = 400, description = "Not a valid name", body = ErrorBody),
              (status = 404, description = "No such clone among the caller's teams', or no such checkpoint", body = ErrorBody),
              (status = 409, description = "Another operation is under way on the clone", body = ErrorBody),
              (status = 503, description = "The clone's agent is unreachable", body = ErrorBody)))]
pub async fn delete_checkpoint(
    State(s): State<Arc<Server>>,
    Auth(caller): Auth,
    ApiPath((name, checkpoint)): ApiPath<(Name, Name)>,
    ApiQuery(wait): ApiQuery<Wait>,
) -> ApiResult<(StatusCode, Json<Operation>)> {
    let subject = Subject::Clone(name.clone());
    operation(s, caller, "clone.checkpoint_delete", subject, wait, move |s, caller| {
        s.delete_checkpoint(caller, &name, &checkpoint)
    })
    .await
}

#[utoipa::path(post, path = "/v1/clones/{name}/revert", tag = "clones", request_body = RevertClone,
    params(("name" = Name, Path, description = "The clone's name"), Wait),
    responses((status = 200, description = "The operation, ended", body = Operation),
              (status = 202, description = "The operation, still running", body = Operation),
              (status = 400, description = "Not a JSON object of this shape, or a bad name", body = ErrorBody),
              (status = 404, description = "No such clone among the caller's teams', or no such checkpoint", body = ErrorBody),
              (status = 409, description = "The clone has no checkpoint, or another operation is under way on it", body = ErrorBody),
              (status = 413, description = "The request body is larger than 64 KiB", body = ErrorBody),
              (status = 415, description = "The request body is not sent as JSON", body = ErrorBody),
              (status = 503, description = "The clone's agent is unreachable", body = ErrorBody),
              (status = 507, description = "Not enough free disk for a copy of a copy clone's checkpoint", body = ErrorBody)))]
pub async fn revert_clone(
    State(s): State<Arc<Server>>,
    Auth(caller): Auth,
    ApiPath(name): ApiPath<Name>,
    ApiQuery(wait): ApiQuery<Wait>,
    ApiJson(body): ApiJson<RevertClone>,
) -> ApiResult<(StatusCode, Json<Operation>)> {
    let subject = Subject::Clone(name.clone());
    operation(s, caller, "clone.revert", subject, wait, move |s, caller| s.revert_clone(caller, &name, body.to)).await
}

#[utoipa::path(post, path = "/v1/clones/{name}/branches", tag = "clones", request_body = CreateBranch,
    params(("name" = Name, Path, description = "The name of the clone to branch from"), Wait),
    responses((status = 200, description = "The operation making the new clone, ended", body = Operation),
              (status = 202, description = "The operation making the new clone, still running", body = Operation),
              (status = 400, description = "Not a JSON object of this shape, or a bad name", body = ErrorBody),
              (status = 404, description = "No such clone among the caller's teams', or no such checkpoint", body = ErrorBody),
              (status = 409, description = "The new name is taken, or no port is free", body = ErrorBody),
              (status = 413, description = "The request body is larger than 64 KiB", body = ErrorBody),
              (status = 415, description = "The request body is not sent as JSON", body = ErrorBody),
              (status = 503, description = "The clone's agent is unreachable", body = ErrorBody),
              (status = 507, description = "Not enough free disk for a copy clone's branch", body = ErrorBody)))]
pub async fn create_branch(
    State(s): State<Arc<Server>>,
    Auth(caller): Auth,
    ApiPath(name): ApiPath<Name>,
    ApiQuery(wait): ApiQuery<Wait>,
    ApiJson(body): ApiJson<CreateBranch>,
) -> ApiResult<(StatusCode, Json<Operation>)> {
    let subject = Subject::Clone(body.name.clone());
    operation(s, caller, "clone.branch", subject, wait, move |s, caller| s.create_branch(caller, &name, body)).await
}

#[utoipa::path(post, path = "/v1/clones/{name}/expiry", tag = "clones", request_body = SetExpiry,
    params(("name" = Name, Path, description = "The clone's name")),
    responses((status = 200, description = "The clone, with its new expiry", body = Clone),
              (status = 400, description = "Not a JSON object of this shape, both fields, or a time not in the future", body = ErrorBody),
              (status = 404, description = "No such clone among the caller's teams'", body = ErrorBody),
              (status = 413, description = "The request body is larger than 64 KiB", body = ErrorBody),
              (status = 415, description = "The request body is not sent as JSON", body = ErrorBody)))]
pub async fn set_expiry(
    State(s): State<Arc<Server>>,
    Auth(caller): Auth,
    ApiPath(name): ApiPath<Name>,
    ApiJson(body): ApiJson<SetExpiry>,
) -> ApiResult<Json<Clone>> {
    let subject = Subject::Clone(name.clone());
    Ok(Json(audited(s, caller, "clone.expiry", Some(subject), move |s, c| Ok(s.set_expiry(c, &name, body)?)).await?))
}

#[utoipa::path(post, path = "/v1/clones/{name}/protect", tag = "clones", request_body = Protect,
    params(("name" = Name, Path, description = "The clone's name")),
    responses((status = 200, description = "The clone, protected", body = Clone),
              (status = 400, description = "Not a JSON object of this shape, or a lease out of range", body = ErrorBody),
              (status = 404, description = "No such clone among the caller's teams'", body = ErrorBody),
              (status = 413, description = "The request body is larger than 64 KiB", body = ErrorBody),
              (status = 415, description = "The request body is not sent as JSON", body = ErrorBody)))]
pub async fn protect_clone(
    State(s): State<Arc<Server>>,
    Auth(caller): Auth,
    ApiPath(name): ApiPath<Name>,
    ApiJson(body): ApiJson<Protect>,
) -> ApiResult<Json<Clone>> {
    let subject = Subject::Clone(name.clone());
    Ok(Json(audited(s, caller, "clone.protect", Some(subject), move |s, c| Ok(s.protect(c, &name, body)?)).await?))
}

#[utoipa::path(post, path = "/v1/clones/{name}/unprotect", tag = "clones",
    params(("name" = Name, Path, description = "The clone's name")),
    responses((status = 200, description = "The clone, no longer protected", body = Clone),
              (status = 400, description = "Not a valid name", body = ErrorBody),
              (status = 404, description = "No such clone among the caller's teams'", body = ErrorBody)))]
pub async fn unprotect_clone(
    State(s): State<Arc<Server>>,
    Auth(caller): Auth,
    ApiPath(name): ApiPath<Name>,
) -> ApiResult<Json<Clone>> {
    let subject = Subject::Clone(name.clone());
    Ok(Json(audited(s, caller, "clone.unprotect", Some(subject), move |s, c| Ok(s.unprotect(c, &name)?)).await?))
}

#[utoipa::path(post, path = "/v1/clones/{name}/idle", tag = "clones", request_body = IdlePolicy,
    params(("name" = Name, Path, description = "The clone's name")),
    responses((status = 200, description = "The clone, with its idle policy", body = Clone),
              (status = 400, description = "Not a JSON object of this shape, or a time out of range", body = ErrorBody),
              (status = 404, description = "No such clone among the caller's teams'", body = ErrorBody),
              (status = 413, description = "The request body is larger than 64 KiB", body = ErrorBody),
              (status = 415, description = "The request body is not sent as JSON", body = ErrorBody)))]
pub async fn set_idle(
    State(s): State<Arc<Server>>,
    Auth(caller): Auth,
    ApiPath(name): ApiPath<Name>,
    ApiJson(body): ApiJson<IdlePolicy>,
) -> ApiResult<Json<Clone>> {
    let subject = Subject::Clone(name.clone());
    Ok(Json(audited(s, caller, "clone.idle", Some(subject), move |s, c| Ok(s.set_idle(c, &name, body)?)).await?))
}
