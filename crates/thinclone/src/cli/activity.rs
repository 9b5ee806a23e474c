//! `thinclone activity`: the audit log, newest first: who changed (or tried to change) what,
//! with which outcome, when.

use std::time::Duration;

use api::{Name, Timestamp};
use client::ActivityFilter;

use super::{format, Ctx};

#[derive(clap::Args, Debug)]
pub struct ActivityArgs {
    /// Only what this user did.
    #[arg(long)]
    pub user: Option<Name>,
    /// Only entries about this target, e.g. `alice` or `clone alice`.
    #[arg(long)]
    pub target: Option<String>,
    /// Only entries since then: a time ago (`90min`, `2h`, `7days`) or a time in RFC 3339
    /// (`2026-11-21T22:00:00Z`).
    #[arg(long, value_name = "WHEN", value_parser = parse_since)]
    pub since: Option<Since>,
    /// At most this many entries [default: 100; at most 1000].
    #[arg(long)]
    pub limit: Option<u32>,
}

/// `--since`: a time ago, or a point in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    Ago(Duration),
    At(Timestamp),
}

impl Since {
    pub fn at(self, now: Timestamp) -> Timestamp {
        match self {
            Since::Ago(d) => Timestamp(now.0.saturating_sub(d.as_secs().min(i64::MAX as u64) as i64)),
            Since::At(t) => t,
        }
    }
}

fn parse_since(s: &str) -> Result<Since, String> {
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(Since::Ago(d));
    }
    match humantime::parse_rfc3339_weak(s) {
        Ok(t) => {
            let secs = t.duration_since(std::time::UNIX_EPOCH).map_err(|e| e.to_string())?.as_secs();
            Ok(Since::At(Timestamp(secs as i64)))
        }
        Err(_) => Err("give a time ago like 2h or 7days, or a time like 2026-11-21T22:00:00Z".to_owned()),
    }
}

pub fn run(args: ActivityArgs, ctx: &mut Ctx) -> anyhow::Result<()> {
    let filter = ActivityFilter {
        user: args.user,
        target: args.target,
        since: args.since.map(|s| s.at(Timestamp::now())),
        limit: args.limit,
    };
    let entries = ctx.client.activity(&filter)?;
    ctx.show_list(&entries, format::activity_table)
}
