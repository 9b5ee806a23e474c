//! thinclone's server: the source of truth. It keeps the catalog of images, clones and
//! operations (catalog.rs), decides names and ports, checks every request, records what it
//! is about to do, and has an agent do the work (ops.rs). It serves the REST API and its
//! OpenAPI document (rest.rs).
//!
//! It never touches a data directory itself: everything on a host goes through
//! [`agent::Agent`].

mod auth;
mod catalog;
pub mod hub;
mod identity;
mod ops;
pub mod pki;
mod rest;

pub use auth::Caller;
pub use identity::BOOTSTRAP_TOKEN_FILE;
pub use ops::{CloneAction, Server, ServerConfig, ServerError};
pub use rest::{app, openapi, openapi_json, serve, AllowedHosts};
