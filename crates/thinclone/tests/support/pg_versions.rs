//! PostgreSQL of each major version from 13 to 18 for the tests, beside the host's own:
//! Debian 12 ships 15 (`/usr/lib/postgresql/15/bin`); `scripts/install --pg-versions` fetches
//! the others into `/var/cache/thinclone-pg/<major>` (14, 16, 17 and 18 complete, 13 the
//! server programs alone: postgres, initdb, pg_ctl).
//!
//! The daemons of a test binary find those installations through the engine's
//! `THINCLONE_PG_DIRS`, set once for the whole process by [`point_thinclone_at_them`] (the
//! daemon inherits the environment). It names a directory of links, one per major, so that a
//! test can take one version away from the daemons and give it back ([`Hidden`]).
//!
//! A source cluster of a major ([`Cluster`]) is made with that major's own `initdb` and
//! `pg_ctl`, as the postgres OS user; SQL goes through the host's `psql` (a newer client
//! works with older servers, and PostgreSQL 15's with 16 to 18 for plain SQL).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use crate::support::pg;

/// Every major version the tests run.
pub const MAJORS: [u32; 6] = [13, 14, 15, 16, 17, 18];
/// Where `scripts/install --pg-versions` puts the majors Debian does not ship.
pub const CACHE: &str = "/var/cache/thinclone-pg";
/// The engine's environment variable naming more installation directories.
pub const DIRS_VAR: &str = "THINCLONE_PG_DIRS";

/// The bin directory of `major`: Debian's where it has one, else the fetched installation.
pub fn bin_dir(major: u32) -> PathBuf {
    let debian = PathBuf::from(format!("/usr/lib/postgresql/{major}/bin"));
    if debian.join("postgres").is_file() {
        return debian;
    }
    Path::new(CACHE).join(major.to_string()).join("bin")
}

/// Checks that `major` can run here (root, FUSE, its server programs, and that they are of
/// that version), and fails the test with what is missing if not.
pub fn require(major: u32, test: &str) {
    crate::support::require_fuse(test);
    pg::require(test);
    let bin = bin_dir(major);
    for program in ["postgres", "initdb", "pg_ctl"] {
        assert!(
            bin.join(program).is_file(),
            "{test} needs PostgreSQL {major}'s {program} in {}: run `scripts/install --deps --pg-versions` \
             (scripts/test does)",
            bin.display()
        );
    }
    let out = run(Command::new(bin.join("postgres")).arg("--version"));
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(
        version.starts_with(&format!("postgres (PostgreSQL) {major}.")),
        "{} is not PostgreSQL {major}: {version}",
        bin.display()
    );
}

/// The directory of links `THINCLONE_PG_DIRS` names, one per fetched major.
static LINKS: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn remove_links() {
    if let Some(dir) = LINKS.get() {
        // At exit, a cleanup that fails has no one left to tell.
        let _ = fs::remove_dir_all(dir);
    }
}

/// Sets `THINCLONE_PG_DIRS` in this process, for every daemon it starts from now on, to a
/// link per major fetched into [`CACHE`] (`<links>/<major> -> /var/cache/thinclone-pg/<major>`);
/// returns the links' directory. Every test of the binary calls it first: the first call
/// sets the variable while the others wait on it, and nothing changes it afterwards.
pub fn point_thinclone_at_them() -> &'static Path {
    LINKS.get_or_init(|| {
        let dir = tempfile::Builder::new().prefix("thinclone-pg-dirs-").tempdir().unwrap().keep();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let mut entries = Vec::new();
        for major in MAJORS {
            let installed = Path::new(CACHE).join(major.to_string());
            if installed.join("bin/postgres").is_file() {
                std::os::unix::fs::symlink(&installed, dir.join(major.to_string())).unwrap();
            }
            // Listed even when missing: a test that needs it fails in `require`.
            entries.push(dir.join(major.to_string()));
        }
        std::env::set_var(DIRS_VAR, std::env::join_paths(entries).unwrap());
        // SAFETY: registers a plain function; it only reads a OnceLock and removes files.
        unsafe { libc::atexit(remove_links) };
        dir
    })
}

/// A major taken away from the daemons (its link removed) until dropped.
pub struct Hidden {
    link: PathBuf,
    target: PathBuf,
}

impl Hidden {
    /// Hides `major`, which must be a fetched one (Debian's own cannot be hidden).
    pub fn hide(major: u32) -> Hidden {
        assert!(!bin_dir(major).starts_with("/usr/lib/postgresql"), "PostgreSQL {major} is Debian's");
        let link = point_thinclone_at_them().join(major.to_string());
        let target = fs::read_link(&link).unwrap_or_else(|e| panic!("{}: {e}", link.display()));
        fs::remove_file(&link).unwrap();
        Hidden { link, target }
    }
}

impl Drop for Hidden {
    fn drop(&mut self) {
        // In a drop, possibly while a test panics: a failure shows as the next test's.
        let _ = std::os::unix::fs::symlink(&self.target, &self.link);
    }
}

/// Runs a command and fails the test with its output if it fails.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    out
}

/// A program of `major`, run as the postgres OS user.
pub fn command(major: u32, program: &str) -> Command {
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", "postgres", "--"]).arg(bin_dir(major).join(program));
    cmd
}

/// A small cluster of one major version on a data directory, listening on a socket only.
pub struct Cluster {
    pub major: u32,
    pub data: PathBuf,
    pub port: u16,
    socket_dir: PathBuf,
    log: PathBuf,
    running: bool,
}

impl Cluster {
    /// `initdb` of `major` in `data` (its parent must be traversable by postgres), with
    /// `work` for the socket and the log.
    pub fn initdb(major: u32, data: &Path, port: u16, work: &Path) -> Cluster {
        let socket_dir = work.join(format!("sock-{port}"));
        fs::create_dir_all(&socket_dir).unwrap();
        pg::chown_postgres(&socket_dir);
        fs::create_dir_all(data).unwrap();
        fs::set_permissions(data, fs::Permissions::from_mode(0o700)).unwrap();
        pg::chown_postgres(data);
        run(command(major, "initdb").arg("-D").arg(data).args(["-A", "trust", "-U", "postgres", "--no-sync"]));
        let log = work.join(format!("postgres-{port}.log"));
        Cluster { major, data: data.to_owned(), port, socket_dir, log, running: false }
    }

    pub fn start(&mut self) {
        fs::write(&self.log, "").unwrap();
        pg::chown_postgres(&self.log);
        let options =
            format!("-p {} -k {} -c listen_addresses='' -c shared_buffers=16MB", self.port, self.socket_dir.display());
        let out = command(self.major, "pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-o", &options, "-l"])
            .arg(&self.log)
            .args(["-w", "-t", "120", "start"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start of PostgreSQL {} failed:\n{}",
            self.major,
            fs::read_to_string(&self.log).unwrap_or_default()
        );
        self.running = true;
    }

    pub fn stop(&mut self) {
        run(command(self.major, "pg_ctl").arg("-D").arg(&self.data).args(["-m", "fast", "-w", "-t", "120", "stop"]));
        self.running = false;
    }

    /// Runs SQL with the host's psql over the socket; its unaligned, tuples-only output.
    pub fn sql(&self, db: &str, sql: &str) -> String {
        let out = run(Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(pg::bin_dir().unwrap().join("psql"))
            .arg("-h")
            .arg(&self.socket_dir)
            .args(["-p", &self.port.to_string(), "-U", "postgres", "-d", db])
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql]));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.running {
            // Best effort in a drop, possibly during a panic, which is the failure to report.
            let _ = command(self.major, "pg_ctl").arg("-D").arg(&self.data).args(["-m", "immediate", "stop"]).output();
        }
    }
}
