//! Routes of schedules: images made on a cron schedule, the newest few kept.

use std::sync::Arc;

use api::{CreateSchedule, ErrorBody, Name, Operation, Schedule};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

use super::{audited_as, blocking, operation, ApiJson, ApiPath, ApiQuery, ApiResult, Auth, Subject, Wait};
use crate::ops::Server;

#[utoipa::path(get, path = "/v1/schedules", tag = "images",
    responses((status = 200, description = "The schedules of the caller's teams (every one, for an administrator)", body = Vec<Schedule>)))]
pub async fn list_schedules(State(s): State<Arc<Server>>, Auth(caller): Auth) -> ApiResult<Json<Vec<Schedule>>> {
    Ok(Json(blocking(move || s.schedules(&caller)).await?))
}

#[utoipa::path(get, path = "/v1/schedules/{name}", tag = "images",
    params(("name" = Name, Path, description = "The schedule's name")),
    responses((status = 200, description = "The schedule, with its images newest first", body = Schedule),
              (status = 400, description = "Not a valid name", body = ErrorBody),
              (status = 404, description = "No such schedule among the caller's teams'", body = ErrorBody)))]
pub async fn show_schedule(
    State(s): State<Arc<Server>>,
    Auth(caller): Auth,
    ApiPath(name): ApiPath<Name>,
) -> ApiResult<Json<Schedule>> {
    Ok(Json(blocking(move || s.schedule(&caller, &name)).await?))
}

#[utoipa::path(post, path = "/v1/schedules", tag = "images", request_body = CreateSchedule,
    responses((status = 201, description = "The new schedule; its first run is at `next_run_at`", body = Schedule),
              (status = 400, description = "Not a JSON object of this shape, a name too long, a cron expression \
                                            that is not five valid fields, not exactly one source, or bad rules", body = ErrorBody),
              (status = 403, description = "The caller may not make images", body = ErrorBody),
              (status = 404, description = "No such team among the caller's, or no such location", body = ErrorBody),
              (status = 409, description = "The name is taken", body = ErrorBody),
              (status = 413, description = "The request body is larger than 64 KiB", body = ErrorBody),
              (status = 415, description = "The request body is not sent as JSON", body = ErrorBody)))]
pub async fn create_schedule(
    State(s): State<Arc<Server>>,
    Auth(caller): Auth,
    ApiJson(body): ApiJson<CreateSchedule>,
) -> ApiResult<(StatusCode, Json<Schedule>)> {
    let subject = Subject::Schedule(body.name.clone());
    let made = audited_as(s, caller, "schedule.create", Some(subject), StatusCode::CREATED, move |s, c| {
        Ok(s.create_schedule(c, body)?)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(made)))
}

#[utoipa::path(delete, path = "/v1/schedules/{name}", tag = "images",
    params(("name" = Name, Path, description = "The schedule's name")),
    responses((status = 204, description = "Removed; the images it made stay, as ordinary images"),
              (status = 400, description = "Not a valid name", body = ErrorBody),
              (status = 403, description = "The caller may not make images", body = ErrorBody),
              (status = 404, description = "No such schedule among the caller's teams'", body = ErrorBody)))]
pub async fn delete_schedule(
    State(s): State<Arc<Server>>,
    Auth(caller): Auth,
    ApiPath(name): ApiPath<Name>,
) -> ApiResult<StatusCode> {
    let subject = Subject::Schedule(name.clone());
    audited_as(s, caller, "schedule.delete", Some(subject), StatusCode::NO_CONTENT, move |s, c| {
        Ok(s.delete_schedule(c, &name)?)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/schedules/{name}/run", tag = "images",
    params(("name" = Name, Path, description = "The schedule's name"), Wait),
    responses((status = 200, description = "The operation making the run's image, ended", body = Operation),
              (status = 202, description = "The operation making the run's image, still running", body = Operation),
              (status = 400, description = "Not a valid name, or the schedule's source is refused", body = ErrorBody),
              (status = 403, description = "The caller, or the schedule's creator, may not make images", body = ErrorBody),
              (status = 404, description = "No such schedule among the caller's teams'", body = ErrorBody),
              (status = 409, description = "An image of the schedule is still being made", body = ErrorBody),
              (status = 503, description = "No agent that makes the image answers", body = ErrorBody),
              (status = 507, description = "Not enough free disk for a copy of the source", body = ErrorBody)))]
pub async fn run_schedule(
    State(s): State<Arc<Server>>,
    Auth(caller): Auth,
    ApiPath(name): ApiPath<Name>,
    ApiQuery(wait): ApiQuery<Wait>,
) -> ApiResult<(StatusCode, Json<Operation>)> {
    let subject = Subject::Schedule(name.clone());
    operation(s, caller, "schedule.run", subject, wait, move |s, caller| s.run_schedule(caller, &name)).await
}
