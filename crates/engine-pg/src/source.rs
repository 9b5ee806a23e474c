//! Live sources, reached through their connection URLs: whether one answers (`pg_isready`),
//! and a consistent copy of one (`pg_basebackup`: plain format, WAL streamed alongside,
//! fast checkpoint), so that the source keeps running and the copy is a single point in
//! time. A copy needs `prepare` before use.
//!
//! Tablespaces land inside the copy: their places are listed first (an ordinary connection
//! to the URL's database, `postgres` if it names none), and `pg_basebackup` maps each to
//! `thinclone_tablespaces/<oid>` in the copy (see `self_contained`). Without a mapping it
//! would write them at their paths on this host.
//!
//! The password never appears in an argument list (every local user can read those in
//! `/proc`), a message or a log line: programs get it in `PGPASSWORD`.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use engine::{Error, Result, SourceUrl, User};
use sys::Program;

use crate::install::Search;
use crate::self_contained;

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

/// The connection parameters a source URL may set. The others could make the copying
/// programs read files of this host (`sslkey`, `passfile`, `service`…), reach a local socket
/// (`host`, `hostaddr`) or log in some other way than with the URL's own credentials.
const ALLOWED_PARAMETERS: [&str; 8] = [
    "sslmode",
    "application_name",
    "connect_timeout",
    "options",
    "target_session_attrs",
    "keepalives",
    "keepalives_idle",
    "gssencmode",
];

/// Refuses a source URL that could reach anything but a server over TCP with the URL's own
/// user and password: a local socket (where peer authentication would let the copying
/// programs in as this host's database user), a parameter that reads a file of this host,
/// or a URL without credentials.
pub(crate) fn check_safe(source: &SourceUrl) -> Result<()> {
    let example = "postgresql://USER:PASSWORD@HOST:PORT/DATABASE";
    let host = source.host();
    if host.is_empty() || host.starts_with('/') || host.starts_with('%') {
        return Err(Error::BadSource(format!(
            "thinclone connects to a source over TCP only, never through a local socket: give its host, as in {example}"
        )));
    }
    for (key, _) in source.url().query_pairs() {
        if !ALLOWED_PARAMETERS.contains(&key.as_ref()) {
            return Err(Error::BadSource(format!(
                "the source URL may not set `{key}`; it may set {}",
                ALLOWED_PARAMETERS.join(", ")
            )));
        }
    }
    if source.user().is_none() || source.password().is_none() {
        return Err(Error::BadSource(format!(
            "give the source's user and password in the URL, as in {example}: thinclone logs in with them only"
        )));
    }
    Ok(())
}

/// Checks that the source accepts connections.
pub(crate) fn probe(search: &Search, source: &SourceUrl) -> Result<()> {
    check_safe(source)?;
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
        Ok(_) => {
            check_replication_login(&installation, source)?;
            // What a copy will ask next; a tablespace that cannot be mapped is refused now.
            tablespace_mappings(&list_tablespaces(&installation, source)?, Path::new("/")).map(drop)
        }
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
    check_safe(source)?;
    // The newest client works with every older server.
    let installation = search.newest()?;
    // A server refuses a data directory that others may read.
    fs::set_permissions(target, fs::Permissions::from_mode(0o700))?;
    let mappings = tablespace_mappings(&list_tablespaces(&installation, source)?, &fs::canonicalize(target)?)?;
    let program = Program::new(installation.program("pg_basebackup"))
        .arg("-d")
        .arg(connection_url(source).as_str())
        .arg("-D")
        .arg(target)
        .args(["-F", "p", "-X", "stream", "-c", "fast", "-P", "-w", "-N"])
        .args(mappings)
        .user(user)
        .timeout(Duration::from_secs(7 * 24 * 3600));
    let mut said = Vec::new();
    let result = with_password(program, source).run_with_stderr_lines(|line| match parse_progress(line) {
        Some((done, total)) => progress(done, total),
        None if !line.trim().is_empty() => said.push(line.trim().to_owned()),
        None => {}
    });
    match result {
        // pg_basebackup made the tablespaces' links absolute, into the copy.
        Ok(_) => self_contained::relink_inside(target),
        Err(sys::Error::Failed { program, status, .. }) => {
            // What it said, without its progress lines. On failure it has removed what it
            // wrote into the target.
            let said = said.join("\n");
            if said.contains("No space left on device") {
                Err(Error::DiskFull {
                    what: format!("copying the live server {} into {}", source.shown(), target.display()),
                    detail: said,
                })
            } else if refused_or_unreachable(&said) {
                Err(Error::Unreachable { url: source.shown(), why: said })
            } else {
                Err(sys::Error::Failed { program, status, stderr: said }.into())
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// The source's tablespaces, as `(oid, location)`, from an ordinary connection: a
/// replication connection cannot list them.
pub(crate) fn list_tablespaces(
    installation: &crate::install::Installation,
    source: &SourceUrl,
) -> Result<Vec<(String, PathBuf)>> {
    let mut url = connection_url(source);
    if url.path().trim_start_matches('/').is_empty() {
        url.set_path("/postgres");
    }
    let database =
        percent_encoding::percent_decode_str(url.path().trim_start_matches('/')).decode_utf8_lossy().into_owned();
    // Locations are paths, bytes in the server's encoding: hex, so that any reads back.
    let sql = "SELECT oid, encode(textsend(pg_tablespace_location(oid)), 'hex') FROM pg_tablespace \
               WHERE spcname NOT IN ('pg_default', 'pg_global') ORDER BY oid";
    let program = Program::new(installation.program("psql"))
        .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d", url.as_str(), "-c", sql])
        .timeout(Duration::from_secs(u64::from(CONNECT_TIMEOUT_SECONDS) + 60));
    let out = match with_password(program, source).run() {
        Ok(out) => out,
        Err(sys::Error::Failed { stderr, .. }) => {
            let why = stderr.lines().map(|l| l.trim_start_matches("psql: ").trim()).collect::<Vec<_>>().join("; ");
            let user = source.user().unwrap_or_else(|| "the URL's user".into());
            return Err(Error::Unreachable {
                url: source.shown(),
                why: format!(
                    "{why} (thinclone lists the source's tablespaces over an ordinary connection to the database \
                     {database} before copying it, so that their files land inside the image: let {user} connect to \
                     {database} in pg_hba.conf, or name in the URL a database it may connect to)"
                ),
            });
        }
        Err(e) => return Err(e.into()),
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let parsed =
                line.split_once('|').and_then(|(oid, hex)| Some((oid.trim().to_owned(), from_hex(hex.trim())?)));
            parsed
                .map(|(oid, bytes)| (oid, PathBuf::from(OsString::from_vec(bytes))))
                .ok_or_else(|| Error::Other(format!("psql printed {line:?} as a tablespace of {}", source.shown())))
        })
        .collect()
}

/// The `--tablespace-mapping` arguments that send each tablespace to its place in the copy
/// at `target` (canonical). An in-place tablespace (a directory in `pg_tblspc`) comes with
/// the rest; another relative location cannot be mapped and is refused.
pub(crate) fn tablespace_mappings(tablespaces: &[(String, PathBuf)], target: &Path) -> Result<Vec<OsString>> {
    let mut args = Vec::new();
    for (oid, location) in tablespaces {
        if location.as_os_str().is_empty() || location.starts_with("pg_tblspc") {
            continue;
        }
        if !location.is_absolute() {
            return Err(Error::BadSource(format!(
                "the source's tablespace {oid} is at the relative location {} (as a thinclone clone's are), which \
                 pg_basebackup cannot map into the image: take the image from a stopped copy of the source's \
                 directory with --from-dir",
                location.display()
            )));
        }
        if location.as_os_str().as_bytes().ends_with(b"\\") {
            return Err(Error::BadSource(format!(
                "the source's tablespace {oid} is at {}, whose final backslash pg_basebackup cannot be given",
                location.display()
            )));
        }
        let new = self_contained::tablespace_home(target, oid);
        let mut arg = OsString::from("--tablespace-mapping=");
        arg.push(escape_equals(location.as_os_str()));
        arg.push("=");
        arg.push(escape_equals(new.as_os_str()));
        args.push(arg);
    }
    Ok(args)
}

/// A path for one side of `--tablespace-mapping`, with `=` escaped as pg_basebackup reads it.
fn escape_equals(path: &OsStr) -> OsString {
    let mut out = Vec::new();
    for &b in path.as_bytes() {
        if b == b'=' {
            out.push(b'\\');
        }
        out.push(b);
    }
    OsString::from_vec(out)
}

fn from_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect()
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
    fn only_tcp_sources_with_their_own_credentials_are_taken() {
        let ok = SourceUrl::parse("postgresql://u:p@db.example:5432/x?sslmode=require&application_name=a").unwrap();
        check_safe(&ok).unwrap();
        for (bad, says) in [
            ("postgresql://u:p@db.example/x?host=/run/postgresql", "may not set `host`"),
            ("postgresql://u:p@db.example/x?sslkey=/etc/ssl/private/k.pem", "may not set `sslkey`"),
            ("postgresql://u:p@db.example/x?passfile=/root/.pgpass", "may not set `passfile`"),
            ("postgresql://u:p@db.example/x?service=prod", "may not set `service`"),
            ("postgresql://u@db.example/x", "user and password"),
            ("postgresql://db.example/x", "user and password"),
            ("postgresql://u:p@%2Frun%2Fpostgresql/x", "never through a local socket"),
        ] {
            let err = SourceUrl::parse(bad).map_err(Error::BadSource).and_then(|u| check_safe(&u)).unwrap_err();
            assert!(err.to_string().contains(says), "{bad}: {err}");
            assert!(err.is_callers_mistake());
        }
    }

    #[test]
    fn progress_lines_parse() {
        assert_eq!(parse_progress("179234/558523 kB (32%), 0/1 tablespace"), Some((179234 * 1024, 558523 * 1024)));
        assert_eq!(parse_progress("  0/23 kB (0%), 0/1 tablespace (...ata/base/1/2)"), Some((0, 23 * 1024)));
        assert_eq!(parse_progress("pg_basebackup: waiting for checkpoint"), None);
    }

    #[test]
    fn tablespaces_are_mapped_into_the_copy() {
        let target = Path::new("/images/a.partial");
        let list = vec![
            ("16384".to_string(), PathBuf::from("/srv/ts")),
            ("16385".to_string(), PathBuf::from("/srv/a=b")),
            ("16386".to_string(), PathBuf::from("pg_tblspc/16386")),
        ];
        let args = tablespace_mappings(&list, target).unwrap();
        assert_eq!(
            args,
            vec![
                OsString::from("--tablespace-mapping=/srv/ts=/images/a.partial/thinclone_tablespaces/16384"),
                OsString::from("--tablespace-mapping=/srv/a\\=b=/images/a.partial/thinclone_tablespaces/16385"),
            ]
        );
        let err =
            tablespace_mappings(&[("7".into(), PathBuf::from("../thinclone_tablespaces/7"))], target).unwrap_err();
        assert!(matches!(err, Error::BadSource(_)) && err.to_string().contains("--from-dir"), "{err}");
        assert!(tablespace_mappings(&[("7".into(), PathBuf::from("/srv/x\\"))], target).is_err());
        assert_eq!(from_hex("2f7372762f7473").unwrap(), b"/srv/ts");
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
