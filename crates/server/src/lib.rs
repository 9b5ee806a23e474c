//! thinclone's server: the source of truth. It keeps the catalog of images, clones,
//! operations, agents and locations (catalog.rs), decides names, places and ports, checks
//! every request, records what it is about to do, and has an agent do the work (ops.rs,
//! agents.rs). It serves the REST API and its OpenAPI document (rest/), and the agent
//! channel that agents on other hosts dial (hub.rs, with the authority of pki.rs).
//!
//! It never touches a data directory itself: everything on a host goes through
//! [`agent::Agent`]: the one embedded in `thinclone serve`, or one on another host through
//! the channel (fleet.rs).

mod agents;
mod auth;
mod catalog;
pub mod fleet;
pub mod hub;
mod identity;
mod lifecycle;
mod metrics;
mod ops;
pub mod pki;
mod rest;
mod schedules;
mod templates;
mod webhooks;

pub use agents::LOCAL;
pub use fleet::Fleet;

pub use auth::Caller;
pub use identity::BOOTSTRAP_TOKEN_FILE;
pub use lifecycle::LifecycleConfig;
pub use ops::{CloneAction, Server, ServerConfig, ServerError};
pub use rest::{app, dashboard_files, openapi, openapi_json, serve, serve_tls, AllowedHosts};
