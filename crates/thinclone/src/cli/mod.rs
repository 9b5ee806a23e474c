//! `thinclone image …`, `thinclone clone …` and `thinclone op …`: the CLI's commands, each
//! one or a few calls of the [`client`] crate.
//!
//! What a command prints:
//! - with `--json`, exactly one JSON document on stdout: the object a command shows or
//!   made (after waiting), the array a `list` shows, the operation for `rm` and for
//!   `--no-wait`;
//! - without it, a table for `list` and a `key: value` listing for one object; `rm` prints
//!   nothing;
//! - a progress display on stderr while it waits, only when stderr is a terminal;
//! - on failure, nothing on stdout and `error: …` on stderr (the server's message, or the
//!   failed operation's error), with a non-zero exit.

pub mod clone;
pub mod format;
pub mod image;
pub mod op;
mod progress;

use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::Context;
use api::{Operation, OperationState, Timestamp};
use client::Client;
use serde::Serialize;

use format::Fields;
use progress::OperationBar;

/// How often the CLI asks how a waited-for operation is going.
const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Where the server is and how to print its answers; accepted before or after the subcommand.
#[derive(clap::Args, Debug, Clone)]
pub struct ClientOpts {
    /// The thinclone server's base URL.
    #[arg(long, env = "THINCLONE_URL", default_value = "http://127.0.0.1:7420", global = true)]
    pub url: String,
    /// Print the result as one JSON document on stdout instead of a table or a listing.
    #[arg(long, global = true)]
    pub json: bool,
    /// The API token to send.
    #[arg(long, env = "THINCLONE_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
}

/// Runs a command from a shell: printing on stdout, progress when stderr is a terminal.
pub fn run(opts: &ClientOpts, command: impl FnOnce(&mut Ctx) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    command(&mut Ctx::new(opts, &mut stdout))
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
    pub fn new(opts: &ClientOpts, out: &'a mut dyn Write) -> Ctx<'a> {
        Ctx {
            client: Client::new(&opts.url).with_token(opts.token.clone()),
            json: opts.json,
            progress: std::io::stderr().is_terminal(),
            poll_interval: POLL_INTERVAL,
            out,
        }
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
