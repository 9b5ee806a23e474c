//! The thinclone daemon: what images and clones exist (its state, in SQLite), how a clone's
//! storage is made (drivers), and the operations on them.
//!
//! It is the only part that decides what happens and when. It uses the PostgreSQL engine
//! (`pg`) and the copy-on-write filesystem (`cowfs`) as libraries and knows about both.

mod api;
pub mod driver;
mod name;
mod ops;
pub mod reflink;
pub mod store;

pub use api::{app, serve};
pub use name::{InvalidName, Name};
pub use ops::{Config, Daemon, OpError};
