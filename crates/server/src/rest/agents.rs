//! Routes of agents and image locations: listing and showing agents, enrollment tokens, the
//! join an agent makes with one (the only route besides `/v1/health` without a user's
//! token: the enrollment token is its credential), revocation, and locations.

use std::sync::Arc;

use api::agent::{Agent, CreateEnrollment, CreateLocation, Enrollment, JoinRequest, Joined, Location};
use api::{ErrorBody, Name};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

use super::{audited, audited_as, blocking, ApiError, ApiJson, ApiPath, ApiResult, Auth, Subject};
use crate::ops::{Server, ServerError};

#[utoipa::path(get, path = "/v1/agents", tag = "agents",
    responses((status = 200, description = "Every agent, with its status and what it last reported", body = Vec<Agent>)))]
pub async fn list_agents(State(s): State<Arc<Server>>, Auth(caller): Auth) -> ApiResult<Json<Vec<Agent>>> {
    Ok(Json(blocking(move || s.agents(&caller)).await?))
}

#[utoipa::path(get, path = "/v1/agents/{name}", tag = "agents",
    params(("name" = Name, Path, description = "The agent's name")),
    responses((status = 200, description = "The agent", body = Agent),
              (status = 400, description = "Not a valid name", body = ErrorBody),
              (status = 404, description = "No such agent", body = ErrorBody)))]
pub async fn show_agent(
    State(s): State<Arc<Server>>,
    Auth(caller): Auth,
    ApiPath(name): ApiPath<Name>,
) -> ApiResult<Json<Agent>> {
    Ok(Json(blocking(move || s.agent_named(&caller, &name)).await?))
}

#[utoipa::path(post, path = "/v1/agents/{name}/revoke", tag = "agents",
    params(("name" = Name, Path, description = "The agent's name")),
    responses((status = 200, description = "The agent, revoked: its certificate is refused from now on", body = Agent),
              (status = 400, description = "Not a valid name, or the agent embedded in the server", body = ErrorBody),
              (status = 404, description = "No such agent", body = ErrorBody)))]
pub async fn revoke_agent(
    State(s): State<Arc<Server>>,
    Auth(caller): Auth,
    ApiPath(name): ApiPath<Name>,
) -> ApiResult<Json<Agent>> {
    let subject = Subject::Agent(name.clone());
    Ok(Json(audited(s, caller, "agent.revoke", Some(subject), move |s, c| Ok(s.revoke_agent(c, &name)?)).await?))
}

#[utoipa::path(post, path = "/v1/agents/tokens", tag = "agents", request_body = CreateEnrollment,
    responses((status = 201, description = "A one-time enrollment token, shown this once", body = Enrollment),
              (status = 400, description = "Not a JSON object of this shape", body = ErrorBody),
              (status = 409, description = "The server has no agent channel", body = ErrorBody),
              (status = 413, description = "The request body is larger than 64 KiB", body = ErrorBody),
              (status = 415, description = "The request body is not sent as JSON", body = ErrorBody)))]
pub async fn create_enrollment(
    State(s): State<Arc<Server>>,
    Auth(caller): Auth,
    ApiJson(body): ApiJson<CreateEnrollment>,
) -> ApiResult<(StatusCode, Json<Enrollment>)> {
    let token =
        audited_as(s, caller, "agent.token", None, StatusCode::CREATED, move |s, c| Ok(s.create_enrollment(c, body)?))
            .await?;
    Ok((StatusCode::CREATED, Json(token)))
}

#[utoipa::path(post, path = "/v1/agents/join", tag = "agents", request_body = JoinRequest,
    security(()),
    responses((status = 200, description = "The agent's certificate, the authority's, and the channel's address", body = Joined),
              (status = 400, description = "Not a JSON object of this shape, or a bad public key", body = ErrorBody),
              (status = 401, description = "An enrollment token that is unknown, used or expired", body = ErrorBody),
              (status = 409, description = "The name is taken, or the server has no agent channel", body = ErrorBody),
              (status = 413, description = "The request body is larger than 64 KiB", body = ErrorBody),
              (status = 415, description = "The request body is not sent as JSON", body = ErrorBody)))]
pub async fn join(State(s): State<Arc<Server>>, ApiJson(body): ApiJson<JoinRequest>) -> ApiResult<Json<Joined>> {
    let name = body.name.clone();
    let joined = tokio::task::spawn_blocking(move || {
        let result = s.join(body);
        let outcome = match &result {
            Ok(_) => Ok(200),
            Err(e) => {
                let e = ApiError::from(e.clone());
                Err((e.0.code.http_status(), e.0.error.clone()))
            }
        };
        s.audit(None, "agent.join", Some(format!("agent {name}")), None, outcome);
        result
    })
    .await
    .map_err(|e| ApiError::from(ServerError::Internal(format!("joining panicked: {e}"))))??;
    Ok(Json(joined))
}

#[utoipa::path(get, path = "/v1/locations", tag = "agents",
    responses((status = 200, description = "Every image location, with the agents that reach it", body = Vec<Location>)))]
pub async fn list_locations(State(s): State<Arc<Server>>, Auth(caller): Auth) -> ApiResult<Json<Vec<Location>>> {
    Ok(Json(blocking(move || s.locations(&caller)).await?))
}

#[utoipa::path(post, path = "/v1/locations", tag = "agents", request_body = CreateLocation,
    responses((status = 201, description = "The location, with the agents that proved they reach it", body = Location),
              (status = 400, description = "Not a JSON object of this shape, a bad path, or no agent sees it", body = ErrorBody),
              (status = 409, description = "The name is taken", body = ErrorBody),
              (status = 413, description = "The request body is larger than 64 KiB", body = ErrorBody),
              (status = 415, description = "The request body is not sent as JSON", body = ErrorBody)))]
pub async fn create_location(
    State(s): State<Arc<Server>>,
    Auth(caller): Auth,
    ApiJson(body): ApiJson<CreateLocation>,
) -> ApiResult<(StatusCode, Json<Location>)> {
    let subject = Subject::Location(body.name.clone());
    let location = audited_as(s, caller, "location.create", Some(subject), StatusCode::CREATED, move |s, c| {
        Ok(s.create_location(c, body)?)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(location)))
}

#[utoipa::path(delete, path = "/v1/locations/{name}", tag = "agents",
    params(("name" = Name, Path, description = "The location's name")),
    responses((status = 204, description = "Removed (its directory is left as it is)"),
              (status = 400, description = "Not a valid name", body = ErrorBody),
              (status = 404, description = "No such location", body = ErrorBody),
              (status = 409, description = "It holds images", body = ErrorBody)))]
pub async fn delete_location(
    State(s): State<Arc<Server>>,
    Auth(caller): Auth,
    ApiPath(name): ApiPath<Name>,
) -> ApiResult<StatusCode> {
    let subject = Subject::Location(name.clone());
    audited_as(s, caller, "location.delete", Some(subject), StatusCode::NO_CONTENT, move |s, c| {
        Ok(s.delete_location(c, &name)?)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
