//! Finding MariaDB's programs on this host: the server `mariadbd` in the directories named in
//! [`DIRS_VAR`], then Debian's `/usr/sbin`, then `/usr/local/mysql/bin`; the client programs
//! (`mariadb`, `mariadb-backup`) beside it, or in the `bin` directory next to its `sbin`.
//! An installation's version is what `mariadbd --version` says, as `MAJOR.MINOR` (`10.11`):
//! a data directory runs with the server of its own `MAJOR.MINOR` only.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use engine::{Error, Result};
use sys::Program;

use crate::ENGINE_NAME;

/// The environment variable that names more installation directories, searched first: a
/// list separated by `:`, each a directory that holds `mariadbd` or a prefix whose `sbin` or
/// `bin` holds it.
pub(crate) const DIRS_VAR: &str = "THINCLONE_MARIADB_DIRS";

/// The programs of one MariaDB installation.
#[derive(Debug, Clone)]
pub(crate) struct Installation {
    /// `MAJOR.MINOR`, e.g. `10.11`.
    pub version: String,
    /// The server program.
    pub server: PathBuf,
    /// Where the client programs are.
    pub bin_dir: PathBuf,
}

impl Installation {
    /// The path of a client program (`mariadb`, `mariadb-backup`, `mariadb-install-db`).
    pub fn program(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    /// Checks that the client program `name` is there, with a message that names the
    /// package that brings it.
    pub fn require(&self, name: &str, package: &str) -> Result<()> {
        if self.program(name).is_file() {
            return Ok(());
        }
        Err(Error::MissingVersion {
            engine: ENGINE_NAME,
            version: format!("{}'s {name}", self.version),
            searched: vec![self.bin_dir.clone()],
            hint: format!("install it beside {} (Debian: `apt-get install {package}`)", self.server.display()),
        })
    }
}

/// Where to look for installations.
#[derive(Debug, Clone)]
pub(crate) struct Search {
    dirs: Vec<PathBuf>,
}

impl Search {
    /// The directories of [`DIRS_VAR`], then the usual places.
    pub fn standard() -> Search {
        let mut dirs: Vec<PathBuf> = std::env::var_os(DIRS_VAR)
            .map(|v| std::env::split_paths(&v).filter(|d| !d.as_os_str().is_empty()).collect())
            .unwrap_or_default();
        dirs.extend([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/mysql/bin")]);
        Search { dirs }
    }

    /// Every installation found, in search order, one per version.
    pub fn all(&self) -> Vec<Installation> {
        let mut found: Vec<Installation> = Vec::new();
        for dir in &self.dirs {
            let Some(server) = server_in(dir) else { continue };
            let Some(version) = server_version(&server) else { continue };
            if found.iter().any(|i| i.version == version) {
                continue;
            }
            found.push(Installation { version, bin_dir: client_dir(&server), server });
        }
        found
    }

    /// The installation of `version` (`MAJOR.MINOR`), or an error that says where it looked
    /// and how to install it.
    pub fn find(&self, version: &str) -> Result<Installation> {
        let all = self.all();
        if let Some(found) = all.iter().find(|i| i.version == version) {
            found.require("mariadb", "mariadb-client")?;
            return Ok(found.clone());
        }
        let installed: Vec<&str> = all.iter().map(|i| i.version.as_str()).collect();
        Err(Error::MissingVersion {
            engine: ENGINE_NAME,
            version: version.to_owned(),
            searched: self.dirs.clone(),
            hint: format!(
                "the versions installed here are {}; a data directory of {ENGINE_NAME} {version} runs only with the \
                 server of {ENGINE_NAME} {version}: install it (Debian 12: `apt-get install mariadb-server \
                 mariadb-client mariadb-backup` gives 10.11), or point thinclone at an installation of it with \
                 {DIRS_VAR}=DIR",
                if installed.is_empty() { "none".to_owned() } else { installed.join(", ") }
            ),
        })
    }

    /// Any installation, for client programs that work with every server (the newest
    /// found first would be better; one per host is the usual case).
    pub fn any(&self) -> Result<Installation> {
        let found = self.all().into_iter().next().ok_or_else(|| Error::MissingVersion {
            engine: ENGINE_NAME,
            version: "(any version)".into(),
            searched: self.dirs.clone(),
            hint: "install it (Debian 12: `apt-get install mariadb-server mariadb-client mariadb-backup`)".into(),
        })?;
        found.require("mariadb", "mariadb-client")?;
        Ok(found)
    }
}

/// `mariadbd` in `dir`, or in its `sbin` or `bin`.
fn server_in(dir: &Path) -> Option<PathBuf> {
    [dir.join("mariadbd"), dir.join("sbin/mariadbd"), dir.join("bin/mariadbd")].into_iter().find(|p| p.is_file())
}

/// The directory of the client programs of the server at `server`: its own directory if the
/// `mariadb` client is there, else the `bin` beside its `sbin`.
fn client_dir(server: &Path) -> PathBuf {
    let dir = server.parent().unwrap_or(Path::new("/"));
    if dir.join("mariadb").is_file() {
        return dir.to_owned();
    }
    match (dir.file_name(), dir.parent()) {
        (Some(name), Some(prefix)) if name == "sbin" => prefix.join("bin"),
        _ => dir.to_owned(),
    }
}

/// `MAJOR.MINOR` of the server program at `server`, from `mariadbd --version` (asked once per
/// program and modification time).
fn server_version(server: &Path) -> Option<String> {
    /// A program and its modification time, and the version it said.
    type Known = HashMap<(PathBuf, Option<std::time::SystemTime>), Option<String>>;
    static CACHE: LazyLock<Mutex<Known>> = LazyLock::new(Default::default);
    let key = (server.to_owned(), std::fs::metadata(server).and_then(|m| m.modified()).ok());
    if let Some(known) = CACHE.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return known.clone();
    }
    let found = match Program::new(server).arg("--version").timeout(Duration::from_secs(30)).run() {
        Ok(out) => parse_server_version(&String::from_utf8_lossy(&out.stdout)),
        Err(e) => {
            tracing::warn!(server = %server.display(), "asking the server its version: {e}");
            None
        }
    };
    CACHE.lock().unwrap_or_else(|p| p.into_inner()).insert(key, found.clone());
    found
}

/// `10.11` from `mariadbd  Ver 10.11.19-MariaDB-0+deb12u1 for debian-linux-gnu …`.
pub(crate) fn parse_server_version(text: &str) -> Option<String> {
    let after = text.split_once(" Ver ")?.1.trim_start();
    let word = after.split_whitespace().next()?;
    word.contains("MariaDB").then(|| major_minor(word)).flatten()
}

/// `MAJOR.MINOR` of a version such as `10.11.19-MariaDB` or `10.11.19`.
pub(crate) fn major_minor(text: &str) -> Option<String> {
    let numbers: Vec<&str> = text.split(|c: char| !(c.is_ascii_digit() || c == '.')).next()?.split('.').collect();
    match numbers.as_slice() {
        [major, minor, ..] if !major.is_empty() && !minor.is_empty() => Some(format!("{major}.{minor}")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_client_program_names_its_package() {
        let dir = tempfile::tempdir().unwrap();
        let installation =
            Installation { version: "10.11".into(), server: "/usr/sbin/mariadbd".into(), bin_dir: dir.path().into() };
        let err = installation.require("mariadb-backup", "mariadb-backup").unwrap_err();
        assert!(err.is_callers_mistake(), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("10.11's mariadb-backup is not installed") && text.contains("apt-get install mariadb-backup"),
            "{text}"
        );
        std::fs::write(dir.path().join("mariadb-backup"), "").unwrap();
        installation.require("mariadb-backup", "mariadb-backup").unwrap();
    }

    #[test]
    fn versions_parse() {
        let text = "/usr/sbin/mariadbd  Ver 10.11.19-MariaDB-0+deb12u1 for debian-linux-gnu on x86_64 (Debian 12)\n";
        assert_eq!(parse_server_version(text).as_deref(), Some("10.11"));
        assert_eq!(parse_server_version("mysqld  Ver 8.0.36 for Linux on x86_64 (MySQL Community Server - GPL)"), None);
        assert_eq!(major_minor("10.11.19-MariaDB").as_deref(), Some("10.11"));
        assert_eq!(major_minor("11.4.2").as_deref(), Some("11.4"));
        assert_eq!(major_minor("10"), None);
        assert_eq!(major_minor("MariaDB"), None);
    }
}
