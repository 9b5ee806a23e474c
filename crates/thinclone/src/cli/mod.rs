//! The CLI's client commands (`image`, `clone`, `op`, `login`, `whoami`, `user`, `team`,
//! `token`, `source`, `activity`), each one or a few calls of the [`client`] crate. Where
//! the server is and which token to send come from [`config`]: flags, the environment, the
//! file `thinclone login` writes, defaults.
//!
//! What a command prints:
//! - with `--json`, exactly one JSON document on stdout: the object a command shows or
//!   made (after waiting), the array a `list` shows, the operation for `rm` and for
//!   `--no-wait`;
//! - without it, a table for `list` and a `key: value` listing for one object; `rm` prints
//!   nothing (the removal of a user, team or source has no operation: nothing with
//!   `--json` either);
//! - a progress display on stderr while it waits, only when stderr is a terminal;
//! - on failure, nothing on stdout and `error: …` on stderr (the server's message, or the
//!   failed operation's error), with a non-zero exit; a refusal for want of a valid token
//!   (401) also says how to log in.
//!
//! No command prints a token, but `token create` the one it made.

pub mod activity;
pub mod agent;
pub mod clone;
pub mod config;
pub mod format;
pub mod image;
pub mod location;
pub mod login;
pub mod op;
mod progress;
pub mod schedule;
pub mod source;
pub mod team;
pub mod template;
pub mod token;
pub mod user;
pub mod webhook;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use api::{Operation, OperationState, Timestamp};
use client::Client;
use serde::Serialize;

use format::Fields;
use progress::OperationBar;

/// How often the CLI asks how a waited-for operation is going.
const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Where the server is, how to reach it and how to print its answers; accepted anywhere on
/// the command line. Each is taken from its flag, else its environment variable, else the
/// config file `thinclone login` writes (see [`config`]).
#[derive(clap::Args, Clone, Default)]
pub struct ClientOpts {
    /// The thinclone server's base URL, http:// or https:// [env: THINCLONE_URL; default:
    /// the URL `thinclone login` saved, else http://127.0.0.1:7420].
    #[arg(long, global = true, value_name = "URL")]
    pub url: Option<String>,
    /// Print the result as one JSON document on stdout instead of a table or a listing.
    #[arg(long, global = true)]
    pub json: bool,
    /// The API token to send [env: THINCLONE_TOKEN; default: the token `thinclone login`
    /// saved for the URL].
    #[arg(long, global = true, value_name = "TOKEN")]
    pub token: Option<String>,
    /// Trust only the certificate authority in this PEM file for an https:// server, rather
    /// than the public ones [env: THINCLONE_CA_FILE; default: the one `thinclone login`
    /// saved for the URL].
    #[arg(long, global = true, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
}

/// Leaves the token out.
impl std::fmt::Debug for ClientOpts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOpts")
            .field("url", &self.url)
            .field("json", &self.json)
            .field("token", &self.token.as_ref().map(|_| "<hidden>"))
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

impl ClientOpts {
    /// The client options given on the command line, for commands that take none.
    pub fn given(&self) -> Vec<&'static str> {
        let mut given = Vec::new();
        given.extend(self.url.as_ref().map(|_| "--url"));
        given.extend(self.json.then_some("--json"));
        given.extend(self.token.as_ref().map(|_| "--token"));
        given.extend(self.ca_file.as_ref().map(|_| "--ca-file"));
        given
    }
}

/// Runs a command from a shell: printing on stdout, progress when stderr is a terminal.
pub fn run(opts: &ClientOpts, command: impl FnOnce(&mut Ctx) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let endpoint = config::resolve(opts)?;
    let client = endpoint.client()?;
    let mut stdout = std::io::stdout().lock();
    command(&mut Ctx::new(client, opts.json, &mut stdout)).map_err(|e| explain(e, &endpoint))
}

/// Adds to a refusal for want of a valid token (401) what to do about it.
pub fn explain(e: anyhow::Error, endpoint: &config::Endpoint) -> anyhow::Error {
    match e.downcast_ref::<client::Error>() {
        Some(client::Error::Api { status: 401, .. }) => anyhow::anyhow!("{e:#}\n{}", endpoint.login_hint()),
        _ => e,
    }
}

/// What every command works with: the client, how to print, and where.
pub struct Ctx<'a> {
    pub client: Client,
    pub json: bool,
    /// Whether progress is drawn (stderr is a terminal).
    pub progress: bool,
    /// How often to ask how a waited-for operation is going.
    pub poll_interval: Duration,
    pub out: &'a mut dyn Write,
}

impl<'a> Ctx<'a> {
    /// The context for a command run from a shell: stdout, and progress when stderr is a
    /// terminal.
    pub fn new(client: Client, json: bool, out: &'a mut dyn Write) -> Ctx<'a> {
        Ctx { client, json, progress: std::io::stderr().is_terminal(), poll_interval: POLL_INTERVAL, out }
    }

    /// With `no_wait`, has the server answer requests that change something at once,
    /// rather than after its usual short wait for the operation to end.
    pub fn at_once(&mut self, no_wait: bool) {
        if no_wait {
            self.client = self.client.clone().with_answer_wait(Some(0));
        }
    }

    /// Ends a command that started `op`. With `no_wait` it prints the operation as it is;
    /// otherwise it waits for the operation to end, showing progress, and calls `then` to
    /// print the result. A failed operation is an error, whether waited for or not.
    fn conclude(
        &mut self,
        op: Operation,
        no_wait: bool,
        then: impl FnOnce(&mut Self, Operation) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        if no_wait {
            let op = client::succeeded(op)?;
            self.show(&op, format::operation_fields)?;
            if !self.json && op.state == OperationState::Running {
                eprintln!("follow it with `thinclone op wait {}`", op.id);
            }
            return Ok(());
        }
        let op = self.wait(op)?;
        then(self, op)
    }

    /// Follows `op` to its end with a progress display; a failed operation is an error.
    fn wait(&mut self, op: Operation) -> anyhow::Result<Operation> {
        if op.state.is_finished() {
            return Ok(client::succeeded(op)?);
        }
        let mut bar = OperationBar::new(&op, self.progress);
        let result = self.client.follow(op, self.poll_interval, |op| bar.update(op));
        bar.finish();
        Ok(client::succeeded(result?)?)
    }

    /// After a removal there is no object left to show: `--json` prints the ended
    /// operation, and people get nothing.
    fn print_removal(&mut self, op: Operation) -> anyhow::Result<()> {
        if self.json {
            self.print_json(&op)
        } else {
            Ok(())
        }
    }

    /// Prints one object: as JSON, or as its `key: value` listing.
    fn show<T: Serialize>(&mut self, object: &T, fields: impl FnOnce(&T) -> Fields) -> anyhow::Result<()> {
        if self.json {
            self.print_json(object)
        } else {
            self.print(&format::key_values(&fields(object)))
        }
    }

    fn show_clone(&mut self, clone: &api::Clone) -> anyhow::Result<()> {
        self.show(clone, |c| format::clone_fields(c, Timestamp::now()))
    }

    /// Prints a list: as a JSON array, or as a table.
    fn show_list<T: Serialize>(&mut self, list: &[T], table: impl FnOnce(&[T]) -> String) -> anyhow::Result<()> {
        if self.json {
            self.print_json(list)
        } else {
            self.print(&table(list))
        }
    }

    fn print_json<T: Serialize + ?Sized>(&mut self, value: &T) -> anyhow::Result<()> {
        let mut text = serde_json::to_string_pretty(value).context("encoding JSON")?;
        text.push('\n');
        self.print(&text)
    }

    fn print(&mut self, text: &str) -> anyhow::Result<()> {
        self.out.write_all(text.as_bytes()).and_then(|()| self.out.flush()).context("writing to stdout")
    }
}

#[cfg(test)]
mod tests;
