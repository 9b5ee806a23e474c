//! Connecting as a client: the connection URL of an instance, and one-off queries through a
//! URL with the password kept out of the `mariadb` client's arguments.

use std::time::Duration;

use engine::{Error, Result, SourceUrl};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sys::Program;

use crate::install::Search;
use crate::source::connect;

/// What a user name or password keeps unescaped in a URL: RFC 3986's unreserved characters.
const USERINFO: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// `mariadb://USER:PASSWORD@HOST:PORT/`, user and password percent-encoded, an IPv6 host in
/// brackets.
pub(crate) fn url(host: &str, port: u16, user: &str, password: &str) -> String {
    let host = if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host.to_owned() };
    format!(
        "mariadb://{}:{}@{host}:{port}/",
        utf8_percent_encode(user, USERINFO),
        utf8_percent_encode(password, USERINFO)
    )
}

/// Runs SQL through a connection URL (in the URL's database, if it names one); returns the
/// rows it printed, tab-separated.
pub(crate) fn query(search: &Search, url: &str, sql: &str) -> Result<String> {
    let source = SourceUrl::parse(url).map_err(Error::BadSource)?;
    if !crate::accepts_scheme(source.scheme()) {
        return Err(Error::BadSource(format!("{} is not a MariaDB connection URL", source.shown())));
    }
    let installation = search.any()?;
    let mut program = Program::new(installation.program("mariadb"))
        .arg("--no-defaults")
        .args(["--batch", "--skip-column-names", "--connect-timeout=10"])
        .stdin(sql.as_bytes().to_vec())
        .timeout(Duration::from_secs(600));
    let database = percent_encoding::percent_decode_str(source.url().path().trim_start_matches('/'))
        .decode_utf8_lossy()
        .into_owned();
    if !database.is_empty() {
        program = program.arg(format!("--database={database}"));
    }
    let out = connect(program, &source).run()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_escape_user_and_password_and_bracket_ipv6() {
        assert_eq!(url("127.0.0.1", 9301, "root", "pw"), "mariadb://root:pw@127.0.0.1:9301/");
        let text = url("::1", 9301, "o'neil@x", "p@ss:w/rd é%");
        let parsed = SourceUrl::parse(&text).unwrap();
        assert_eq!(parsed.user().as_deref(), Some("o'neil@x"));
        assert_eq!(parsed.password().unwrap().expose(), "p@ss:w/rd é%");
        assert_eq!((parsed.host(), parsed.port()), ("[::1]", Some(9301)));
    }
}
