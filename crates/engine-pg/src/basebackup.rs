//! Taking a consistent copy of a live server with `pg_basebackup`: plain format, WAL streamed
//! alongside, fast checkpoint, so the source keeps running and the copy is a single point in
//! time. The result needs recovery before use; `prepare` does that.

use std::io::Read;
use std::path::Path;
use std::process::Stdio;

use crate::{Error, Installation, Program, Result, RunAs};

/// A connection URL split into the part that may be shown and logged, and its password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceUrl {
    /// The URL without its password.
    pub shown: String,
    pub password: Option<String>,
}

impl SourceUrl {
    /// Parses a `postgresql://` or `postgres://` URL.
    pub fn parse(url: &str) -> std::result::Result<SourceUrl, String> {
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(format!("{url:?} is not a connection URL; use postgresql://USER:PASSWORD@HOST:PORT/DB"));
        };
        if scheme != "postgresql" && scheme != "postgres" {
            return Err(format!("{scheme}:// is not a PostgreSQL URL; use postgresql://USER:PASSWORD@HOST:PORT/DB"));
        }
        // The user info ends at the last '@' before the path.
        let authority_end = rest.find('/').unwrap_or(rest.len());
        let (authority, path) = rest.split_at(authority_end);
        let Some((userinfo, host)) = authority.rsplit_once('@') else {
            return Ok(SourceUrl { shown: url.to_owned(), password: None });
        };
        let (user, password) = match userinfo.split_once(':') {
            Some((user, password)) => (user, Some(percent_decode(password))),
            None => (userinfo, None),
        };
        Ok(SourceUrl { shown: format!("{scheme}://{user}@{host}{path}"), password })
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Copies the server at `url` into `target` (which must not exist), calling `progress` with
/// bytes done and the (estimated, growing) total as pg_basebackup reports them.
pub fn basebackup(
    installation: &Installation,
    url: &SourceUrl,
    target: &Path,
    user: &RunAs,
    mut progress: impl FnMut(u64, u64),
) -> Result<()> {
    // A server that cannot be reached should fail in seconds, not hang.
    let sep = if url.shown.contains('?') { '&' } else { '?' };
    let conninfo = format!("{}{sep}connect_timeout=10", url.shown);
    let mut program = Program::new(installation.program("pg_basebackup"))
        .args(["-d", &conninfo, "-D"])
        .arg(target)
        .args(["-F", "p", "-X", "stream", "-c", "fast", "-P", "-w", "-N"])
        .user(user)
        .timeout(std::time::Duration::from_secs(7 * 24 * 3600));
    if let Some(password) = &url.password {
        // In the environment, not in argv, which other users can read in /proc.
        program = program.env("PGPASSWORD", password);
    }
    let mut child = program.spawn(Stdio::null(), Stdio::piped())?;
    let mut stderr = child.stderr.take().expect("piped stderr");
    let mut messages = Vec::new();
    let mut line = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stderr.read(&mut buf)?;
        if n == 0 {
            break;
        }
        for &b in &buf[..n] {
            if b == b'\n' || b == b'\r' {
                let text = String::from_utf8_lossy(&line).trim().to_string();
                match parse_progress(&text) {
                    Some((done, total)) => progress(done, total),
                    None if !text.is_empty() => messages.push(text),
                    None => {}
                }
                line.clear();
            } else {
                line.push(b);
            }
        }
    }
    let status = child.wait()?;
    if !status.success() {
        let stderr =
            messages.into_iter().filter(|m| m.starts_with("pg_basebackup:") || m.contains("FATAL")).collect::<Vec<_>>();
        return Err(Error::Failed {
            program: "pg_basebackup".into(),
            status: status.to_string(),
            stderr: stderr.join("\n"),
        });
    }
    Ok(())
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
    fn urls_lose_their_password() {
        let url = SourceUrl::parse("postgresql://repl:s%40cret@db.example:5432/postgres?sslmode=disable").unwrap();
        assert_eq!(url.shown, "postgresql://repl@db.example:5432/postgres?sslmode=disable");
        assert_eq!(url.password.as_deref(), Some("s@cret"));
        let url = SourceUrl::parse("postgres://db/x").unwrap();
        assert_eq!((url.shown.as_str(), url.password), ("postgres://db/x", None));
        assert!(SourceUrl::parse("mysql://x").unwrap_err().contains("not a PostgreSQL URL"));
        assert!(SourceUrl::parse("/var/lib/x").unwrap_err().contains("not a connection URL"));
    }

    #[test]
    fn progress_lines_parse() {
        assert_eq!(parse_progress("179234/558523 kB (32%), 0/1 tablespace"), Some((179234 * 1024, 558523 * 1024)));
        assert_eq!(parse_progress("waiting for checkpoint"), None);
    }
}
