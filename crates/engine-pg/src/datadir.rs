//! Facts about a PostgreSQL data directory read from its files: the major version that made
//! it (`PG_VERSION`), whether a server runs on it (`postmaster.pid`), and its cluster state
//! (`pg_controldata`).

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
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
    // A clone's directory belongs to its OS user: a symlink or FIFO planted as PG_VERSION is
    // not read (its target would show in the message below).
    let text = match sys::untrusted::read_to_string(&dir.join("PG_VERSION"), 64) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(not_a_data_dir("it has no PG_VERSION file".into()));
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
/// lives, is a PostgreSQL server, and serves this very directory. A pid file can name
/// another process: a stale file's pid may belong to anything after a reboot, and a copy or
/// a filesystem snapshot of a running server's directory carries that server's pid file,
/// naming a live postgres that serves the original, not the copy.
pub(crate) fn live_postmaster(dir: &Path) -> Option<i32> {
    let text = read_pid_file(dir)?;
    let pid = text.lines().next()?.trim().parse::<i32>().ok().filter(|&pid| pid > 0)?;
    if !sys::procfs::is_alive(pid) {
        return None;
    }
    // The postmaster keeps its command line; its children rename themselves `postgres: …`.
    let program = sys::procfs::cmdline(pid)?.into_iter().next()?;
    let name = Path::new(&program).file_name()?.to_string_lossy().into_owned();
    if !(name.starts_with("postgres") || name.starts_with("postmaster")) {
        return None;
    }
    serves(pid, dir, text.lines().nth(1).map(str::trim)).then_some(pid)
}

/// `postmaster.pid` of a data directory, read as a file in a directory that a less trusted
/// user may write (a clone's): no symlink or FIFO in its place is followed.
pub(crate) fn read_pid_file(dir: &Path) -> Option<String> {
    sys::untrusted::read_to_string(&dir.join("postmaster.pid"), 64 << 10).ok()
}

/// Whether the postmaster `pid` serves `dir`. A postmaster's working directory is its data
/// directory, so the two must be the same directory (device and inode: a path through a
/// symlink or a bind mount still counts, a copy or a snapshot does not). Where this process
/// may not look at `pid`'s working directory (another user's server, and we are not root),
/// the data directory written in the pid file stands in for it; where nothing can be
/// compared, the server counts as serving `dir`, so that a live directory is never taken for
/// an idle one.
fn serves(pid: i32, dir: &Path, pid_file_dir: Option<&str>) -> bool {
    let Ok(ours) = fs::metadata(dir) else { return true };
    let same = |m: fs::Metadata| m.dev() == ours.dev() && m.ino() == ours.ino();
    match fs::metadata(format!("/proc/{pid}/cwd")) {
        Ok(theirs) => same(theirs),
        Err(_) => match pid_file_dir.filter(|d| !d.is_empty()) {
            Some(written) => fs::metadata(written).is_ok_and(same),
            None => true,
        },
    }
}

/// What `postmaster.pid` says of where its server listens: the port (line 4) and the first
/// TCP address (line 6; empty when it listens on none).
pub(crate) fn pid_file_listen(dir: &Path) -> Option<(u16, String)> {
    let text = read_pid_file(dir)?;
    let mut lines = text.lines();
    let port = lines.nth(3)?.trim().parse().ok()?;
    let address = lines.nth(1).unwrap_or_default().split(',').next().unwrap_or_default().trim().to_owned();
    Some((port, address))
}

/// The refusal of a copy of `dir` while the server `pid` runs on it, saying what to do
/// instead.
pub(crate) fn in_use_error(dir: &Path, pid: i32) -> Error {
    let (port, address) = pid_file_listen(dir).unwrap_or((5432, String::new()));
    let host = match address.as_str() {
        "" => "HOST",
        "*" | "0.0.0.0" | "::" => "localhost",
        a => a,
    };
    let host = if host.contains(':') { format!("[{host}]") } else { host.to_owned() };
    let dir = dir.display();
    Error::InUse(format!(
        "a {ENGINE_NAME} server (pid {pid}) is running on {dir}; copying it now would give a torn copy: take the \
         image from the running server with --from-url postgresql://USER:PASSWORD@{host}:{port}/postgres, or stop \
         the server first (if {dir} is a crash-consistent snapshot of a running server, say so with --snapshot)"
    ))
}

/// Whether `postmaster.pid` in `dir` says the server accepts connections (its 8th line:
/// `ready`, or `standby` for a read-only server that has reached a consistent state).
pub(crate) fn pid_file_says_ready(dir: &Path, pid: i32) -> bool {
    let Some(text) = read_pid_file(dir) else { return false };
    let mut lines = text.lines();
    lines.next().and_then(|l| l.trim().parse::<i32>().ok()) == Some(pid)
        && matches!(lines.nth(6).map(str::trim), Some("ready") | Some("standby"))
}

/// What `pg_controldata` reports of a data directory's control file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ControlData {
    /// The cluster state, e.g. "shut down" or "in production".
    pub state: String,
    /// The catalog version number, e.g. `202209061`: with the major version, it names the
    /// directory a tablespace keeps this server's files in (`PG_15_202209061`).
    pub catalog_version: String,
    /// "Latest checkpoint location", e.g. `0/3000028`.
    pub checkpoint_location: String,
    /// "Latest checkpoint's TimeLineID".
    pub timeline: String,
    /// "Bytes per WAL segment".
    pub wal_segment_size: String,
    /// "WAL block size".
    pub wal_block_size: String,
}

impl ControlData {
    fn parse(text: &str) -> ControlData {
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(|s| s.trim().to_owned())
                .unwrap_or_default()
        };
        ControlData {
            state: field("Database cluster state"),
            catalog_version: field("Catalog version number"),
            checkpoint_location: field("Latest checkpoint location"),
            timeline: field("Latest checkpoint's TimeLineID"),
            wal_segment_size: field("Bytes per WAL segment"),
            wal_block_size: field("WAL block size"),
        }
    }

    /// Where the latest checkpoint record lies: the name of its WAL segment file, the
    /// record's offset in it, the segment size and the WAL block size. `None` when
    /// pg_controldata said something this does not read.
    pub fn checkpoint_segment(&self) -> Option<(String, u64, u64, u64)> {
        let (hi, lo) = self.checkpoint_location.split_once('/')?;
        let lsn = (u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?;
        let timeline: u32 = self.timeline.parse().ok()?;
        let segment_size: u64 = self.wal_segment_size.parse().ok()?;
        let block_size: u64 = self.wal_block_size.parse().ok()?;
        if segment_size == 0 || !segment_size.is_power_of_two() || segment_size > 1 << 30 || block_size == 0 {
            return None;
        }
        let segment = lsn / segment_size;
        let per_id = 0x1_0000_0000 / segment_size;
        let name = format!("{timeline:08X}{:08X}{:08X}", segment / per_id, segment % per_id);
        Some((name, lsn % segment_size, segment_size, block_size))
    }

    /// Whether the server shut down cleanly (a primary, or a standby).
    pub fn shut_down(&self) -> bool {
        matches!(self.state.as_str(), "shut down" | "shut down in recovery")
    }
}

/// Reads the control file with `pg_controldata`: the installation's own, or, where it has
/// none (an installation of the server programs alone), that of another installed version
/// whose control file layout is this one's.
///
/// PostgreSQL changes `PG_CONTROL_VERSION` with every change of the control file's layout
/// ([`control_version`]), so another version's `pg_controldata` reads the file as its own
/// exactly when the two versions share that number. As a second check, `pg_controldata`
/// computes the file's CRC over the layout it knows and warns when it does not match; its
/// answer is taken only without any warning and only when it reads the expected version
/// number. No program that can read the file is an error that says what to install.
pub(crate) fn control_data(installation: &Installation, data_dir: &Path, user: &User) -> Result<ControlData> {
    let own = installation.program("pg_controldata");
    if own.is_file() {
        let out = Program::new(own).arg(data_dir).user(user).run()?;
        return Ok(ControlData::parse(&String::from_utf8_lossy(&out.stdout)));
    }
    let major = installation.major;
    let mut refused = Vec::new();
    let same_layout = |other: Major| control_version(major).is_some_and(|v| control_version(other) == Some(v));
    for (other, program) in installation.borrowed("pg_controldata").into_iter().filter(|(m, _)| same_layout(*m)) {
        let out = Program::new(&program).arg(data_dir).user(user).run()?;
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if control_version(major).is_some_and(|version| reads_as_its_own(&stdout, &stderr, version)) {
            tracing::debug!(data_dir = %data_dir.display(), "reading the control file with {}", program.display());
            return Ok(ControlData::parse(&stdout));
        }
        refused.push(other.to_string());
    }
    let others = if refused.is_empty() {
        format!(
            "no other version installed here has a pg_controldata that reads the control file of {ENGINE_NAME} {major}"
        )
    } else {
        format!("the pg_controldata of {ENGINE_NAME} {} did not read it cleanly", refused.join(", "))
    };
    Err(Error::Other(format!(
        "{ENGINE_NAME} {major} in {} has no pg_controldata (which reads a data directory's control file), and {others}: \
         install the client programs of {ENGINE_NAME} {major} beside its server programs",
        installation.bin_dir.display()
    )))
}

/// `PG_CONTROL_VERSION` of a major version (what `pg_controldata` says as "pg_control version
/// number"), where known: the versions with the same number lay out the control file alike.
fn control_version(major: Major) -> Option<u32> {
    match major.0 {
        13..=16 => Some(1300),
        17 => Some(1700),
        18 => Some(1800),
        _ => None,
    }
}

/// Whether the output of another version's `pg_controldata` is a true reading of a control
/// file of layout `version`: it read that version number, and warned of nothing (a CRC that
/// does not match, a byte order, a WAL segment size) on either stream (up to 16 it warns on
/// stdout, from 17 on stderr).
fn reads_as_its_own(stdout: &str, stderr: &str, version: u32) -> bool {
    let warned = |text: &str| text.to_lowercase().contains("warning");
    let read = stdout
        .lines()
        .find_map(|l| l.strip_prefix("pg_control version number:"))
        .is_some_and(|v| v.trim() == version.to_string());
    read && !warned(stdout) && !warned(stderr)
}

/// The cluster state `pg_controldata` reports, e.g. "shut down" or "in production".
pub(crate) fn cluster_state(installation: &Installation, data_dir: &Path, user: &User) -> Result<String> {
    control_data(installation, data_dir, user).map(|c| c.state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checkpoint_segment_is_named_as_postgres_names_it() {
        let text = "Database cluster state:               shut down\n\
                    Latest checkpoint location:           1/A3000028\n\
                    Latest checkpoint's TimeLineID:       2\n\
                    WAL block size:                       8192\n\
                    Bytes per WAL segment:                16777216\n";
        let control = ControlData::parse(text);
        assert!(control.shut_down());
        assert_eq!(control.checkpoint_segment(), Some(("0000000200000001000000A3".to_owned(), 0x28, 16 << 20, 8192)));
        assert_eq!(ControlData::parse("Database cluster state: shut down\n").checkpoint_segment(), None);
    }

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
        assert_eq!(pid_file_listen(dir.path()), Some((5432, "*".into())));
    }

    #[test]
    fn the_in_use_message_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("postmaster.pid"), "77\n/d\n1\n6543\n/tmp\n10.0.0.5,127.0.0.1\n1\nready\n").unwrap();
        let err = in_use_error(dir.path(), 77);
        assert!(matches!(err, Error::InUse(_)) && err.is_callers_mistake());
        let text = err.to_string();
        let expected = format!(
            "a PostgreSQL server (pid 77) is running on {0}; copying it now would give a torn copy: take the image \
             from the running server with --from-url postgresql://USER:PASSWORD@10.0.0.5:6543/postgres, or stop the \
             server first (if {0} is a crash-consistent snapshot of a running server, say so with --snapshot)",
            dir.path().display()
        );
        assert_eq!(text, expected);
        fs::write(dir.path().join("postmaster.pid"), "77\n/d\n1\n5432\n/tmp\n\n1\nready\n").unwrap();
        assert!(in_use_error(dir.path(), 77).to_string().contains("@HOST:5432/"));
        fs::write(dir.path().join("postmaster.pid"), "77\n/d\n1\n5432\n/tmp\n::1\n1\nready\n").unwrap();
        assert!(in_use_error(dir.path(), 77).to_string().contains("@[::1]:5432/"));
    }

    /// Another version's pg_controldata is believed only when it reads the file as its own.
    #[test]
    fn another_versions_reading_is_checked() {
        let good = "pg_control version number:            1300\nCatalog version number:               202007201\n";
        assert!(reads_as_its_own(good, "", 1300));
        assert!(!reads_as_its_own(good, "", 1700), "another layout's version number");
        // Up to 16, on stdout; from 17 on, on stderr.
        let crc_16 = format!(
            "WARNING: Calculated CRC checksum does not match value stored in file.\nEither the file is corrupt, or \
             it has a different layout than this program\nis expecting.  The results below are untrustworthy.\n\n{good}"
        );
        assert!(!reads_as_its_own(&crc_16, "", 1300));
        let crc_17 = "pg_controldata: warning: calculated CRC checksum does not match value stored in control file\n";
        assert!(!reads_as_its_own(good, crc_17, 1300));
        assert!(!reads_as_its_own("", "", 1300));
        assert_eq!(control_version(Major(13)), control_version(Major(15)));
        assert_ne!(control_version(Major(16)), control_version(Major(17)));
        assert_eq!(control_version(Major(19)), None, "an unknown version borrows nothing");
    }

    #[test]
    fn control_data_is_read() {
        let text = "pg_control version number:            1300\n\
                    Catalog version number:               202209061\n\
                    Database system identifier:           7\n\
                    Database cluster state:               in production\n";
        let c = ControlData::parse(text);
        assert_eq!((c.state.as_str(), c.catalog_version.as_str()), ("in production", "202209061"));
        assert!(!c.shut_down());
        assert!(ControlData::parse("Database cluster state:               shut down in recovery\n").shut_down());
    }
}
