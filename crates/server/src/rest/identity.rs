//! Routes of who may do what: the caller, users, teams, tokens, source directories and the
//! audit log.

use std::sync::Arc;

use api::{
    Activity, CreateSource, CreateTeam, CreateToken, CreateUser, ErrorBody, ErrorCode, Name, NewToken, Source, Team,
    Timestamp, Token, User,
};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

use super::{audited, audited_as, blocking, ApiError, ApiJson, ApiPath, ApiQuery, ApiResult, Auth, Subject};
use crate::ops::Server;

#[utoipa::path(get, path = "/v1/whoami", tag = "identity",
    responses((status = 200, description = "The user the token belongs to", body = User)))]
pub async fn whoami(State(s): State<Arc<Server>>, Auth(caller): Auth) -> ApiResult<Json<User>> {
    Ok(Json(blocking(move || s.whoami(&caller)).await?))
}

#[utoipa::path(get, path = "/v1/users", tag = "identity",
    responses((status = 200, description = "Every user (administrators only)", body = Vec<User>)))]
pub async fn list_users(State(s): State<Arc<Server>>, Auth(caller): Auth) -> ApiResult<Json<Vec<User>>> {
    Ok(Json(blocking(move || s.users(&caller)).await?))
}

#[utoipa::path(get, path = "/v1/users/{name}", tag = "identity",
    params(("name" = Name, Path, description = "The user's name")),
    responses((status = 200, description = "The user (the caller, or anyone for an administrator)", body = User),
              (status = 400, description = "Not a valid name", body = ErrorBody),
              (status = 404, description = "No such user", body = ErrorBody)))]
pub async fn show_user(
    State(s): State<Arc<Server>>,
    Auth(caller): Auth,
    ApiPath(name): ApiPath<Name>,
) -> ApiResult<Json<User>> {
    Ok(Json(blocking(move || s.user(&caller, &name)).await?))
}

#[utoipa::path(post, path = "/v1/users", tag = "identity", request_body = CreateUser,
    responses((status = 201, description = "The new user", body = User),
              (status = 400, description = "Not a JSON object of this shape, or a bad name", body = ErrorBody),
              (status = 404, description = "A team that does not exist", body = ErrorBody),
              (status = 409, description = "The name is taken", body = ErrorBody),
              (status = 413, description = "The request body is larger than 64 KiB", body = ErrorBody),
              (status = 415, description = "The request body is not sent as JSON", body = ErrorBody)))]
pub async fn create_user(
    State(s): State<Arc<Server>>,
    Auth(caller): Auth,
    ApiJson(body): ApiJson<CreateUser>,
) -> ApiResult<(StatusCode, Json<User>)> {
    let subject = Subject::User(body.name.clone());
    let user = audited_as(s, caller, "user.create", Some(subject), StatusCode::CREATED, move |s, c| {
        Ok(s.create_user(c, body)?)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(user)))
}

#[utoipa::path(delete, path = "/v1/users/{name}", tag = "identity",
    params(("name" = Name, Path, description = "The user's name")),
    responses((status = 204, description = "Removed, with their tokens"),
              (status = 400, description = "Not a valid name", body = ErrorBody),
              (status = 404, description = "No such user", body = ErrorBody),
              (status = 409, description = "The last administrator", body = ErrorBody)))]
pub async fn delete_user(
    State(s): State<Arc<Server>>,
    Auth(caller): Auth,
    ApiPath(name): ApiPath<Name>,
) -> ApiResult<StatusCode> {
    let subject = Subject::User(name.clone());
    audited_as(s, caller, "user.delete", Some(subject), StatusCode::NO_CONTENT, move |s, c| {
        Ok(s.delete_user(c, &name)?)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/teams", tag = "identity",
    responses((status = 200, description = "The caller's teams (every team, for an administrator)", body = Vec<Team>)))]
pub async fn list_teams(State(s): State<Arc<Server>>, Auth(caller): Auth) -> ApiResult<Json<Vec<Team>>> {
    Ok(Json(blocking(move || s.teams(&caller)).await?))
}

#[utoipa::path(get, path = "/v1/teams/{name}", tag = "identity",
    params(("name" = Name, Path, description = "The team's name")),
    responses((status = 200, description = "The team", body = Team),
              (status = 400, description = "Not a valid name", body = ErrorBody),
              (status = 404, description = "No such team among the caller's", body = ErrorBody)))]
pub async fn show_team(
    State(s): State<Arc<Server>>,
    Auth(caller): Auth,
    ApiPath(name): ApiPath<Name>,
) -> ApiResult<Json<Team>> {
    Ok(Json(blocking(move || s.team(&caller, &name)).await?))
}

#[utoipa::path(post, path = "/v1/teams", tag = "identity", request_body = CreateTeam,
    responses((status = 201, description = "The new team", body = Team),
              (status = 400, description = "Not a JSON object of this shape, or a bad name", body = ErrorBody),
              (status = 409, description = "The name is taken", body = ErrorBody),
              (status = 413, description = "The request body is larger than 64 KiB", body = ErrorBody),
              (status = 415, description = "The request body is not sent as JSON", body = ErrorBody)))]
pub async fn create_team(
    State(s): State<Arc<Server>>,
    Auth(caller): Auth,
    ApiJson(body): ApiJson<CreateTeam>,
) -> ApiResult<(StatusCode, Json<Team>)> {
    let subject = Subject::Team(body.name.clone());
    let team = audited_as(s, caller, "team.create", Some(subject), StatusCode::CREATED, move |s, c| {
        Ok(s.create_team(c, body)?)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(team)))
}

#[utoipa::path(delete, path = "/v1/teams/{name}", tag = "identity",
    params(("name" = Name, Path, description = "The team's name")),
    responses((status = 204, description = "Removed"),
              (status = 400, description = "Not a valid name", body = ErrorBody),
              (status = 404, description = "No such team", body = ErrorBody),
              (status = 409, description = "It still has images or clones", body = ErrorBody)))]
pub async fn delete_team(
    State(s): State<Arc<Server>>,
    Auth(caller): Auth,
    ApiPath(name): ApiPath<Name>,
) -> ApiResult<StatusCode> {
    let subject = Subject::Team(name.clone());
    audited_as(s, caller, "team.delete", Some(subject), StatusCode::NO_CONTENT, move |s, c| {
        Ok(s.delete_team(c, &name)?)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(put, path = "/v1/teams/{name}/members/{user}", tag = "identity",
    params(("name" = Name, Path, description = "The team's name"), ("user" = Name, Path, description = "The user's name")),
    responses((status = 200, description = "The team, with the user in it", body = Team),
              (status = 400, description = "Not a valid name", body = ErrorBody),
              (status = 404, description = "No such team or user", body = ErrorBody)))]
pub async fn add_member(
    State(s): State<Arc<Server>>,
    Auth(caller): Auth,
    ApiPath((team, user)): ApiPath<(Name, Name)>,
) -> ApiResult<Json<Team>> {
    let subject = Subject::Team(team.clone());
    Ok(Json(
        audited(s, caller, "team.add_member", Some(subject), move |s, c| Ok(s.add_member(c, &team, &user)?)).await?,
    ))
}

#[utoipa::path(delete, path = "/v1/teams/{name}/members/{user}", tag = "identity",
    params(("name" = Name, Path, description = "The team's name"), ("user" = Name, Path, description = "The user's name")),
    responses((status = 200, description = "The team, without the user", body = Team),
              (status = 400, description = "Not a valid name", body = ErrorBody),
              (status = 404, description = "No such team, or the user is not in it", body = ErrorBody)))]
pub async fn remove_member(
    State(s): State<Arc<Server>>,
    Auth(caller): Auth,
    ApiPath((team, user)): ApiPath<(Name, Name)>,
) -> ApiResult<Json<Team>> {
    let subject = Subject::Team(team.clone());
    Ok(Json(
        audited(s, caller, "team.remove_member", Some(subject), move |s, c| Ok(s.remove_member(c, &team, &user)?))
            .await?,
    ))
}

#[utoipa::path(get, path = "/v1/tokens", tag = "identity",
    responses((status = 200, description = "The caller's tokens (every token, for an administrator); never their secrets",
               body = Vec<Token>)))]
pub async fn list_tokens(State(s): State<Arc<Server>>, Auth(caller): Auth) -> ApiResult<Json<Vec<Token>>> {
    Ok(Json(blocking(move || s.tokens(&caller)).await?))
}

#[utoipa::path(post, path = "/v1/tokens", tag = "identity", request_body = CreateToken,
    responses((status = 201, description = "The new token, with its secret: shown this once", body = NewToken),
              (status = 400, description = "Not a JSON object of this shape", body = ErrorBody),
              (status = 404, description = "No such user", body = ErrorBody),
              (status = 413, description = "The request body is larger than 64 KiB", body = ErrorBody),
              (status = 415, description = "The request body is not sent as JSON", body = ErrorBody)))]
pub async fn create_token(
    State(s): State<Arc<Server>>,
    Auth(caller): Auth,
    ApiJson(body): ApiJson<CreateToken>,
) -> ApiResult<(StatusCode, Json<NewToken>)> {
    let subject = body.user.clone().unwrap_or_else(|| caller.user.clone());
    let token =
        audited_as(s, caller, "token.create", Some(Subject::User(subject)), StatusCode::CREATED, move |s, c| {
            Ok(s.create_token(c, body)?)
        })
        .await?;
    Ok((StatusCode::CREATED, Json(token)))
}

#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "identity",
    params(("id" = u64, Path, description = "The token's id")),
    responses((status = 200, description = "The token, revoked", body = Token),
              (status = 400, description = "Not a valid token id", body = ErrorBody),
              (status = 404, description = "No such token among the caller's (anyone's, for an administrator)",
               body = ErrorBody)))]
pub async fn revoke_token(
    State(s): State<Arc<Server>>,
    Auth(caller): Auth,
    ApiPath(raw): ApiPath<String>,
) -> ApiResult<Json<Token>> {
    let id: u64 = raw
        .parse()
        .ok()
        .filter(|id| *id > 0 && *id <= i64::MAX as u64 && raw.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| {
            ApiError::new(ErrorCode::BadRequest, format!("invalid token id {raw:?}: use the number `token list` shows"))
        })?;
    Ok(Json(
        audited(s, caller, "token.revoke", Some(Subject::Token(id)), move |s, c| Ok(s.revoke_token(c, id)?)).await?,
    ))
}

#[utoipa::path(get, path = "/v1/sources", tag = "identity",
    responses((status = 200, description = "The registered source directories (image creators and administrators)",
               body = Vec<Source>)))]
pub async fn list_sources(State(s): State<Arc<Server>>, Auth(caller): Auth) -> ApiResult<Json<Vec<Source>>> {
    Ok(Json(blocking(move || s.sources(&caller)).await?))
}

#[utoipa::path(post, path = "/v1/sources", tag = "identity", request_body = CreateSource,
    responses((status = 201, description = "The registered source", body = Source),
              (status = 400, description = "Not a JSON object of this shape, or not an absolute directory", body = ErrorBody),
              (status = 409, description = "The name is taken", body = ErrorBody),
              (status = 413, description = "The request body is larger than 64 KiB", body = ErrorBody),
              (status = 415, description = "The request body is not sent as JSON", body = ErrorBody)))]
pub async fn create_source(
    State(s): State<Arc<Server>>,
    Auth(caller): Auth,
    ApiJson(body): ApiJson<CreateSource>,
) -> ApiResult<(StatusCode, Json<Source>)> {
    let subject = Subject::Source(body.name.clone());
    let source = audited_as(s, caller, "source.create", Some(subject), StatusCode::CREATED, move |s, c| {
        Ok(s.create_source(c, body)?)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(source)))
}

#[utoipa::path(delete, path = "/v1/sources/{name}", tag = "identity",
    params(("name" = Name, Path, description = "The source's name")),
    responses((status = 204, description = "No longer registered; images made from it stay"),
              (status = 400, description = "Not a valid name", body = ErrorBody),
              (status = 404, description = "No such source", body = ErrorBody)))]
pub async fn delete_source(
    State(s): State<Arc<Server>>,
    Auth(caller): Auth,
    ApiPath(name): ApiPath<Name>,
) -> ApiResult<StatusCode> {
    let subject = Subject::Source(name.clone());
    audited_as(s, caller, "source.delete", Some(subject), StatusCode::NO_CONTENT, move |s, c| {
        Ok(s.delete_source(c, &name)?)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Filters of the audit log.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ActivityQuery {
    /// Only what this user did.
    user: Option<Name>,
    /// Only entries whose target names this, e.g. `clone alice` or `alice`.
    target: Option<String>,
    /// Only entries at or after this time (RFC 3339).
    since: Option<Timestamp>,
    /// At most this many entries (100 when not given; at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

#[utoipa::path(get, path = "/v1/activity", tag = "identity", params(ActivityQuery),
    responses((status = 200, description = "The audit log, newest first: everything for an administrator; for others, \
                                            what they did and what was done to their teams' objects", body = Vec<Activity>),
              (status = 400, description = "A filter that does not fit", body = ErrorBody)))]
pub async fn list_activity(
    State(s): State<Arc<Server>>,
    Auth(caller): Auth,
    ApiQuery(q): ApiQuery<ActivityQuery>,
) -> ApiResult<Json<Vec<Activity>>> {
    let limit = match q.limit {
        None => 100,
        Some(n @ 1..=1000) => n,
        Some(n) => return Err(ApiError::new(ErrorCode::BadRequest, format!("limit={n} is not between 1 and 1000"))),
    };
    Ok(Json(blocking(move || s.activity(&caller, q.user.as_ref(), q.target.as_deref(), q.since, limit)).await?))
}
