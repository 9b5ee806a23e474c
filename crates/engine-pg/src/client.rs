//! Connecting as a client: the connection URL of an instance, and one-off queries through
//! a URL with its password kept out of psql's arguments.

use std::time::Duration;

use engine::{Error, Result, SourceUrl};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sys::Program;

use crate::install::Search;
use crate::source::{connection_url, with_password};

/// What a user name or password keeps unescaped in a URL: RFC 3986's unreserved
/// characters.
const USERINFO: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// `postgresql://USER:PASSWORD@HOST:PORT/postgres`, user and password percent-encoded, an
/// IPv6 host in brackets.
pub(crate) fn url(host: &str, port: u16, user: &str, password: &str) -> String {
    let host = if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host.to_owned() };
    format!(
        "postgresql://{}:{}@{host}:{port}/postgres",
        utf8_percent_encode(user, USERINFO),
        utf8_percent_encode(password, USERINFO)
    )
}

/// Runs one SQL statement through a connection URL; returns psql's unaligned output.
pub(crate) fn query(search: &Search, url: &str, sql: &str) -> Result<String> {
    let source = SourceUrl::parse(url).map_err(Error::BadSource)?;
    if !crate::accepts_scheme(source.scheme()) {
        return Err(Error::BadSource(format!("{} is not a PostgreSQL connection URL", source.shown())));
    }
    let installation = search.newest()?;
    let program = Program::new(installation.program("psql"))
        .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d", connection_url(&source).as_str(), "-c", sql])
        .timeout(Duration::from_secs(600));
    let out = with_password(program, &source).run()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_escape_user_and_password_and_bracket_ipv6() {
        assert_eq!(url("127.0.0.1", 7001, "alice", "pw"), "postgresql://alice:pw@127.0.0.1:7001/postgres");
        let text = url("::1", 7001, "o'neil@x", "p@ss:w/rd é%");
        assert_eq!(text, "postgresql://o%27neil%40x:p%40ss%3Aw%2Frd%20%C3%A9%25@[::1]:7001/postgres");
        let parsed = SourceUrl::parse(&text).unwrap();
        assert_eq!(parsed.user().as_deref(), Some("o'neil@x"));
        assert_eq!(parsed.password().unwrap().expose(), "p@ss:w/rd é%");
        assert_eq!((parsed.host(), parsed.port()), ("[::1]", Some(7001)));
        assert_eq!(url("[fd00::2]", 5, "u", "p"), "postgresql://u:p@[fd00::2]:5/postgres");
        assert_eq!(url("db.example", 5, "u", "p"), "postgresql://u:p@db.example:5/postgres");
    }
}
