//! The web dashboard's static files, embedded in the binary from `crates/server/ui/` and
//! served at `/` (the page) and `/ui/<file>` (its script modules, style sheet and icon).
//!
//! These are the only routes besides `/v1/health` that take no credential, and they carry no
//! data: each answer is one of the files below, the same for everyone. The page signs in
//! with an API token and reads everything else from `/v1/...` with it (doc/DASHBOARD.md).
//!
//! Every answer has its content type, `X-Content-Type-Options: nosniff`, a strict
//! Content-Security-Policy (scripts, styles and requests from this origin only, no inline
//! script or style, no frames), no referrer, and `Cache-Control: no-cache` with an `ETag`, so
//! that a browser asks again each time and an unchanged file costs a `304`.

use std::sync::OnceLock;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::ApiPath;

/// The path of the page.
pub(crate) const PAGE: &str = "/";

/// The prefix of the page's files.
pub(crate) const PREFIX: &str = "/ui/";

/// Every file the dashboard serves: its name under `/ui/`, content type and contents. The
/// page itself is `index.html`, also served at `/`.
pub const FILES: [(&str, &str, &str); 7] = [
    ("index.html", "text/html; charset=utf-8", include_str!("../../ui/index.html")),
    ("style.css", "text/css; charset=utf-8", include_str!("../../ui/style.css")),
    ("app.js", "text/javascript; charset=utf-8", include_str!("../../ui/app.js")),
    ("api.js", "text/javascript; charset=utf-8", include_str!("../../ui/api.js")),
    ("pages.js", "text/javascript; charset=utf-8", include_str!("../../ui/pages.js")),
    ("format.js", "text/javascript; charset=utf-8", include_str!("../../ui/format.js")),
    ("icon.svg", "image/svg+xml", include_str!("../../ui/icon.svg")),
];

/// The policy every dashboard answer carries: nothing but this origin's own files and API.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Whether a request is for one of the dashboard's files: `GET /` or `GET /ui/<file>` of a
/// file in [`FILES`] (a `HEAD` is answered as a `GET`). Any other path, under `/ui/` or not,
/// needs a credential like every route of the API.
pub(crate) fn is_static(method: &axum::http::Method, path: &str) -> bool {
    (method == axum::http::Method::GET || method == axum::http::Method::HEAD)
        && (path == PAGE || path.strip_prefix(PREFIX).is_some_and(|name| FILES.iter().any(|(n, _, _)| *n == name)))
}

/// Each file's entity tag: a hash of its contents, computed once.
fn etags() -> &'static [String; FILES.len()] {
    static ETAGS: OnceLock<[String; FILES.len()]> = OnceLock::new();
    ETAGS.get_or_init(|| {
        FILES.map(|(_, _, body)| {
            let digest = Sha256::digest(body.as_bytes());
            let hex: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
            format!("\"{hex}\"")
        })
    })
}

/// `GET /`: the page.
pub(crate) async fn page(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

/// `GET /ui/{file}`: one of the page's files.
pub(crate) async fn file(ApiPath(name): ApiPath<String>, headers: HeaderMap) -> Response {
    serve(&name, &headers)
}

fn serve(name: &str, headers: &HeaderMap) -> Response {
    let Some(index) = FILES.iter().position(|(n, _, _)| *n == name) else {
        return super::ApiError::new(api::ErrorCode::NotFound, format!("the dashboard has no file {name:?}"))
            .into_response();
    };
    let (_, content_type, body) = FILES[index];
    let etag = &etags()[index];
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|t| t.trim() == etag));
    let mut response = if fresh { StatusCode::NOT_MODIFIED.into_response() } else { body.into_response() };
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(value) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, value);
    }
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

/// The dashboard's routes; they need no state.
pub(crate) fn routes<S: Clone + Send + Sync + 'static>() -> axum::Router<S> {
    axum::Router::new().route(PAGE, axum::routing::get(page)).route("/ui/{file}", axum::routing::get(file))
}
