//! Live sources, reached through their connection URLs: whether one answers (`pg_isready`),
//! and a consistent copy of one (`pg_basebackup`: plain format, WAL streamed alongside,
//! fast checkpoint), so that the source keeps running and the copy is a single point in
//! time. A copy needs `prepare` before use.
//!
//! The password never appears in an argument list (every local user can read those in
//! `/proc`), a message or a log line: programs get it in `PGPASSWORD`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use engine::{Error, Result, SourceUrl, User};
use sys::Program;

use crate::install::Search;

/// How long connecting to a source may take before it counts as unreachable.
const CONNECT_TIMEOUT_SECONDS: u32 = 10;

/// The source's URL, without its password, with a connect timeout unless it names one.
pub(crate) fn connection_url(source: &SourceUrl) -> url::Url {
    let mut url = source.url().clone();
    if !url.query_pairs().any(|(k, _)| k == "connect_timeout") {
        url.query_pairs_mut().append_pair("connect_timeout", &CONNECT_TIMEOUT_SECONDS.to_string());
    }
    url
}

/// Gives a program the source's password, if it has one.
pub(crate) fn with_password(program: Program, source: &SourceUrl) -> Program {
    match source.password() {
        Some(password) => program.env("PGPASSWORD", password.expose()),
        None => program,
    }
}

/// Checks that the source accepts connections.
pub(crate) fn probe(search: &Search, source: &SourceUrl) -> Result<()> {
    let installation = search.newest()?;
    let program = Program::new(installation.program("pg_isready"))
        .arg("-d")
        .arg(connection_url(source).as_str())
        .args(["-t", &CONNECT_TIMEOUT_SECONDS.to_string()])
        .timeout(Duration::from_secs(u64::from(CONNECT_TIMEOUT_SECONDS) + 20));
    match with_password(program, source).run() {
        // The server answers; now the credentials, on the kind of connection a copy uses
        // (a replication connection), so that a wrong password or a user without the
        // REPLICATION right is refused now rather than failing the image later.
        Ok(_) => check_replication_login(&installation, source),
        // pg_isready says what it found on stdout ("host:port - no response"), which the
        // error carries when stderr is empty.
        Err(sys::Error::Failed { stderr, .. }) => Err(Error::Unreachable { url: source.shown(), why: stderr }),
        Err(sys::Error::TimedOut { seconds, .. }) => {
            Err(Error::Unreachable { url: source.shown(), why: format!("no answer within {seconds} s") })
        }
        Err(e) => Err(e.into()),
    }
}

/// Logs in as `pg_basebackup` will (a physical replication connection) and asks the server
/// who it is.
fn check_replication_login(installation: &crate::install::Installation, source: &SourceUrl) -> Result<()> {
    let mut url = connection_url(source);
    url.query_pairs_mut().append_pair("replication", "true");
    let program = Program::new(installation.program("psql"))
        .args(["-X", "-A", "-t", "-q", "-d"])
        .arg(url.as_str())
        .args(["-c", "IDENTIFY_SYSTEM"])
        .timeout(Duration::from_secs(u64::from(CONNECT_TIMEOUT_SECONDS) + 20));
    match with_password(program, source).run() {
        Ok(_) => Ok(()),
        Err(sys::Error::Failed { stderr, .. }) => {
            let why = stderr.lines().map(|l| l.trim_start_matches("psql: ").trim()).collect::<Vec<_>>().join("; ");
            Err(Error::Unreachable {
                url: source.shown(),
                why: format!("{why} (the source must accept a replication connection from this user)"),
            })
        }
        Err(sys::Error::TimedOut { seconds, .. }) => {
            Err(Error::Unreachable { url: source.shown(), why: format!("no answer within {seconds} s") })
        }
        Err(e) => Err(e.into()),
    }
}

/// Copies the server at `source` into `target` (an empty directory owned by `user`),
/// calling `progress` with bytes done and the estimated, growing, total.
pub(crate) fn copy_live(
    search: &Search,
    source: &SourceUrl,
    target: &Path,
    user: &User,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    // The newest client works with every older server.
    let installation = search.newest()?;
    // A server refuses a data directory that others may read.
    fs::set_permissions(target, fs::Permissions::from_mode(0o700))?;
    let program = Program::new(installation.program("pg_basebackup"))
        .arg("-d")
        .arg(connection_url(source).as_str())
        .arg("-D")
        .arg(target)
        .args(["-F", "p", "-X", "stream", "-c", "fast", "-P", "-w", "-N"])
        .user(user)
        .timeout(Duration::from_secs(7 * 24 * 3600));
    let mut said = Vec::new();
    let result = with_password(program, source).run_with_stderr_lines(|line| match parse_progress(line) {
        Some((done, total)) => progress(done, total),
        None if !line.trim().is_empty() => said.push(line.trim().to_owned()),
        None => {}
    });
    match result {
        Ok(_) => Ok(()),
        Err(sys::Error::Failed { program, status, .. }) => {
            // What it said, without its progress lines.
            let said = said.join("\n");
            if refused_or_unreachable(&said) {
                Err(Error::Unreachable { url: source.shown(), why: said })
            } else {
                Err(sys::Error::Failed { program, status, stderr: said }.into())
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Whether a client's message says that the server could not be reached or refused us, as
/// opposed to a failure on our side (a full disk).
fn refused_or_unreachable(message: &str) -> bool {
    [
        "connection to server",
        "could not connect to server",
        "could not translate host name",
        "timeout expired",
        "no password supplied",
        "password authentication failed",
        "no pg_hba.conf entry",
        "must be superuser or replication role",
        "permission denied to start WAL sender",
    ]
    .iter()
    .any(|s| message.contains(s))
}

/// Parses `179234/558523 kB (32%), 0/1 tablespace` into bytes done and total.
fn parse_progress(line: &str) -> Option<(u64, u64)> {
    let (counts, _) = line.split_once(" kB")?;
    let (done, total) = counts.trim().split_once('/')?;
    Some((done.parse::<u64>().ok()? * 1024, total.parse::<u64>().ok()? * 1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_parse() {
        assert_eq!(parse_progress("179234/558523 kB (32%), 0/1 tablespace"), Some((179234 * 1024, 558523 * 1024)));
        assert_eq!(parse_progress("  0/23 kB (0%), 0/1 tablespace (...ata/base/1/2)"), Some((0, 23 * 1024)));
        assert_eq!(parse_progress("pg_basebackup: waiting for checkpoint"), None);
    }

    #[test]
    fn the_connect_timeout_is_added_as_a_parameter() {
        let url = connection_url(&SourceUrl::parse("postgresql://u:pw@h:5/db").unwrap());
        assert_eq!(url.as_str(), "postgresql://u@h:5/db?connect_timeout=10");
        let url = connection_url(&SourceUrl::parse("postgres://u@h/db?sslmode=require&password=x").unwrap());
        assert_eq!(url.as_str(), "postgres://u@h/db?sslmode=require&connect_timeout=10");
        let url = connection_url(&SourceUrl::parse("postgresql://h/db?connect_timeout=3").unwrap());
        assert_eq!(url.as_str(), "postgresql://h/db?connect_timeout=3");
    }
}
