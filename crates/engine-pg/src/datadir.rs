//! Facts about a PostgreSQL data directory read from its files: the major version that made
//! it (`PG_VERSION`), whether a server runs on it (`postmaster.pid`), and its cluster state
//! (`pg_controldata`).

use std::fmt;
use std::fs;
use std::io;
use std::path::Path;

use engine::{Error, Result, User};
use sys::Program;

use crate::install::Installation;
use crate::ENGINE_NAME;

/// The oldest major version thinclone runs: SCRAM passwords, the `ready` status in
/// `postmaster.pid` and the settings given on the command line all exist from 10 on.
pub(crate) const OLDEST_SUPPORTED: u32 = 10;

/// A PostgreSQL major version (10 and later have one number: `15`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Major(pub u32);

impl fmt::Display for Major {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Why a version string is not a major version thinclone runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BadVersion {
    /// A real version, older than [`OLDEST_SUPPORTED`] (`9.6`).
    TooOld(String),
    /// Not a version at all.
    NotAVersion(String),
}

impl BadVersion {
    /// The error for a caller who named this version.
    pub(crate) fn into_error(self) -> Error {
        match self {
            BadVersion::TooOld(v) => Error::BadSource(format!(
                "{ENGINE_NAME} {v} is not supported: thinclone runs {ENGINE_NAME} {OLDEST_SUPPORTED} and later \
                 (upgrade the database with pg_upgrade first)"
            )),
            BadVersion::NotAVersion(v) => {
                Error::BadSource(format!("{v:?} is not a {ENGINE_NAME} major version (one like \"15\")"))
            }
        }
    }
}

impl Major {
    /// Parses a major version as `PG_VERSION` and the engine's callers write it: `15`.
    /// Versions before 10 (`9.6`) are recognised, and refused as too old.
    pub(crate) fn parse(text: &str) -> Result<Major, BadVersion> {
        let text = text.trim();
        let number =
            |s: &str| (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse::<u32>().ok()).flatten();
        // From 10 on a major version is one number; before, two (`9.6`, back to `6.0`).
        match number(text) {
            Some(major) if major >= OLDEST_SUPPORTED => return Ok(Major(major)),
            Some(_) => return Err(BadVersion::NotAVersion(text.to_owned())),
            None => {}
        }
        match text.split_once('.') {
            Some((a, b)) if number(a).is_some_and(|a| (6..OLDEST_SUPPORTED).contains(&a)) && number(b).is_some() => {
                Err(BadVersion::TooOld(text.to_owned()))
            }
            _ => Err(BadVersion::NotAVersion(text.to_owned())),
        }
    }
}

/// The major version that made `dir`, from its `PG_VERSION` file.
pub(crate) fn detect(dir: &Path) -> Result<Major> {
    let not_a_data_dir = |why: String| Error::NotADataDir { engine: ENGINE_NAME, path: dir.to_owned(), why };
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(not_a_data_dir("it is not a directory".into())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(not_a_data_dir("it does not exist".into())),
        Err(e) => return Err(not_a_data_dir(format!("it cannot be read: {e}"))),
    }
    let text = match fs::read_to_string(dir.join("PG_VERSION")) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(not_a_data_dir("it has no PG_VERSION file".into()))
        }
        Err(e) => return Err(not_a_data_dir(format!("its PG_VERSION file cannot be read: {e}"))),
    };
    Major::parse(&text).map_err(|bad| match bad {
        BadVersion::TooOld(v) => Error::BadSource(format!(
            "{} was made by {ENGINE_NAME} {v}; thinclone runs {ENGINE_NAME} {OLDEST_SUPPORTED} and later \
             (upgrade it with pg_upgrade first)",
            dir.display()
        )),
        BadVersion::NotAVersion(v) => not_a_data_dir(format!("its PG_VERSION file says {v:?}, not a version number")),
    })
}

/// The pid of the server running on `dir`: the one `postmaster.pid` names, if that process
/// lives and is a PostgreSQL server (a stale file's pid may belong to anything after a
/// reboot).
pub(crate) fn live_postmaster(dir: &Path) -> Option<i32> {
    let pid = sys::procfs::read_pid(&dir.join("postmaster.pid"))?;
    if !sys::procfs::is_alive(pid) {
        return None;
    }
    // The postmaster keeps its command line; its children rename themselves `postgres: …`.
    let program = sys::procfs::cmdline(pid)?.into_iter().next()?;
    let name = Path::new(&program).file_name()?.to_string_lossy().into_owned();
    (name.starts_with("postgres") || name.starts_with("postmaster")).then_some(pid)
}

/// Whether `postmaster.pid` in `dir` says the server accepts connections (its 8th line).
pub(crate) fn pid_file_says_ready(dir: &Path, pid: i32) -> bool {
    let Ok(text) = fs::read_to_string(dir.join("postmaster.pid")) else { return false };
    let mut lines = text.lines();
    lines.next().and_then(|l| l.trim().parse::<i32>().ok()) == Some(pid) && lines.nth(6).map(str::trim) == Some("ready")
}

/// The cluster state `pg_controldata` reports, e.g. "shut down" or "in production".
pub(crate) fn cluster_state(installation: &Installation, data_dir: &Path, user: &User) -> Result<String> {
    let out = Program::new(installation.program("pg_controldata")).arg(data_dir).user(user).run()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Database cluster state:"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_old_ones_are_refused_by_name() {
        assert_eq!(Major::parse("15\n"), Ok(Major(15)));
        assert_eq!(Major::parse("10"), Ok(Major(10)));
        assert_eq!(Major::parse("9.6"), Err(BadVersion::TooOld("9.6".into())));
        assert_eq!(Major::parse("7.4"), Err(BadVersion::TooOld("7.4".into())));
        for bad in ["", "0", "9", "0.5", "abc", "15.2", "-1", "1 5", "+15"] {
            assert_eq!(Major::parse(bad), Err(BadVersion::NotAVersion(bad.into())), "{bad:?}");
        }
        let text = BadVersion::TooOld("9.6".into()).into_error().to_string();
        assert!(text.contains("PostgreSQL 9.6 is not supported") && text.contains("10 and later"), "{text}");
    }

    #[test]
    fn detect_says_why_a_directory_is_not_a_data_directory() {
        let dir = tempfile::tempdir().unwrap();
        let why = |dir: &Path| match detect(dir) {
            Err(e @ Error::NotADataDir { .. }) => {
                assert!(e.is_callers_mistake());
                e.to_string()
            }
            other => panic!("{other:?}"),
        };
        assert!(why(&dir.path().join("missing")).contains("does not exist"));
        assert!(why(dir.path()).contains("has no PG_VERSION file"));
        fs::write(dir.path().join("PG_VERSION"), "fifteen\n").unwrap();
        let text = why(dir.path());
        assert!(text.contains("not a version number") && text.contains("is not a PostgreSQL data directory"), "{text}");
        fs::write(dir.path().join("PG_VERSION"), "").unwrap();
        assert!(!why(dir.path()).contains("PostgreSQL 0"));
        fs::write(dir.path().join("PG_VERSION"), "9.6\n").unwrap();
        let err = detect(dir.path()).unwrap_err();
        assert!(err.is_callers_mistake() && err.to_string().contains("made by PostgreSQL 9.6"), "{err}");
        fs::write(dir.path().join("PG_VERSION"), "15\n").unwrap();
        assert_eq!(detect(dir.path()).unwrap(), Major(15));
        assert!(why(&dir.path().join("PG_VERSION")).contains("not a directory"));
    }

    #[test]
    fn a_stale_pid_file_names_no_server() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(live_postmaster(dir.path()), None);
        // Our own pid lives, but is not a PostgreSQL server.
        let me = std::process::id() as i32;
        fs::write(dir.path().join("postmaster.pid"), format!("{me}\n{}\n", dir.path().display())).unwrap();
        assert_eq!(live_postmaster(dir.path()), None);
        fs::write(dir.path().join("postmaster.pid"), format!("{me}\n/d\n1\n5432\n/tmp\n*\n1\nready   \n")).unwrap();
        assert!(pid_file_says_ready(dir.path(), me));
        assert!(!pid_file_says_ready(dir.path(), me + 1));
        fs::write(dir.path().join("postmaster.pid"), format!("{me}\n/d\n1\n5432\n/tmp\n*\n1\nstarting\n")).unwrap();
        assert!(!pid_file_says_ready(dir.path(), me));
    }
}
