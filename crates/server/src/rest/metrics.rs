//! `GET /metrics`: the server's figures in Prometheus's text format (crate::metrics).

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};

use super::{blocking, ApiResult, Auth};
use crate::ops::Server;

#[utoipa::path(get, path = "/metrics", tag = "server",
    responses((status = 200, description = "Images, clones, operations, agents, disk and ports, in Prometheus's text \
                                            exposition format (version 0.0.4); an administrator sees every object, \
                                            others their teams'", content_type = "text/plain; version=0.0.4", body = String)))]
pub async fn metrics(State(s): State<Arc<Server>>, Auth(caller): Auth) -> ApiResult<Response> {
    let text = blocking(move || crate::metrics::render(&s, &caller)).await?;
    Ok(([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response())
}
