//! PostgreSQL as the benchmarks drive it by hand, for baselines and sources: the server
//! programs of one version, `initdb`, servers started and stopped with `pg_ctl` as the
//! `postgres` user (a guard stops them), SQL through `psql`, and the wait for the first
//! successful `SELECT 1`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use sys::User;

use super::exec::{tail, Cmd, Exec};
use super::progress::warn;

/// The programs the benchmarks need.
const PROGRAMS: [&str; 8] =
    ["initdb", "pg_ctl", "postgres", "pgbench", "psql", "createdb", "pg_basebackup", "pg_controldata"];

/// The server programs of one PostgreSQL version, and the OS user servers run as.
#[derive(Debug, Clone)]
pub struct Pg {
    pub bin: PathBuf,
    pub user: User,
}

impl Pg {
    /// `bin` if given (`--pgbin`, `PGBIN`), else `/usr/lib/postgresql/15/bin` (the version
    /// the published figures use), else the newest `/usr/lib/postgresql/N/bin`.
    pub fn find(bin: Option<&Path>) -> Result<Pg> {
        let bin = match bin {
            Some(b) => b.to_owned(),
            None => {
                let default = PathBuf::from("/usr/lib/postgresql/15/bin");
                if default.join("postgres").is_file() {
                    default
                } else {
                    let mut majors: Vec<u32> = std::fs::read_dir("/usr/lib/postgresql")
                        .context("no PostgreSQL in /usr/lib/postgresql: give --pgbin")?
                        .flatten()
                        .filter_map(|e| e.file_name().to_str()?.parse().ok())
                        .collect();
                    majors.sort_unstable();
                    let major = majors.last().context("no PostgreSQL in /usr/lib/postgresql: give --pgbin")?;
                    PathBuf::from(format!("/usr/lib/postgresql/{major}/bin"))
                }
            }
        };
        for p in PROGRAMS {
            if !bin.join(p).is_file() {
                bail!("{} not found (give --pgbin or PGBIN)", bin.join(p).display());
            }
        }
        let user = User::lookup("postgres").context("the OS user postgres must exist")?;
        Ok(Pg { bin, user })
    }

    pub fn program(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }

    /// `initdb` of an empty cluster in `dir` (made, owned by postgres, mode 0700): trust
    /// authentication, superuser `postgres`, UTF-8, no locale.
    pub fn initdb(&self, exec: &Exec, dir: &Path, log: &Path) -> Result<()> {
        make_owned_dir(dir, &self.user, 0o700)?;
        let cmd = Cmd::new(self.program("initdb"))
            .arg("-D")
            .arg(dir)
            .args(["-U", "postgres", "--auth=trust", "--encoding=UTF8", "--no-locale"])
            .user(&self.user);
        exec.run_to(&cmd, log).context("initdb")
    }

    /// `pg_controldata`'s "Database cluster state", e.g. "shut down".
    pub fn cluster_state(&self, exec: &Exec, dir: &Path) -> Result<String> {
        let out = exec.stdout(&Cmd::new(self.program("pg_controldata")).arg(dir))?;
        Ok(out.lines().find_map(|l| l.strip_prefix("Database cluster state:")).unwrap_or("").trim().to_owned())
    }

    /// Runs SQL with psql (`-X -A -t -q`, stop on error) and returns its output, trimmed.
    pub fn psql(&self, exec: &Exec, conn: &Conn, sql: &str) -> Result<String> {
        let cmd = conn.apply(Cmd::new(self.program("psql")).args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"]));
        exec.stdout(&cmd.arg("-c").arg(sql).timeout(Duration::from_secs(3600)))
    }

    /// Runs `SELECT 1` every 10 ms until it succeeds; fails after `timeout`. The tries are
    /// not written to the command log (one line says what was done).
    pub fn wait_select1(&self, exec: &Exec, conn: &Conn, timeout: Duration) -> Result<()> {
        let cmd = conn
            .apply(Cmd::new(self.program("psql")).args(["-X", "-A", "-t", "-q", "-c", "select 1"]))
            .timeout(Duration::from_secs(30));
        exec.run_until_ok(&cmd, "SELECT 1", timeout)
    }
}

/// How to reach a database: a libpq URL, or a socket directory and port as user postgres.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conn {
    /// A libpq URL; a password in it is passed in the environment, never in arguments.
    Url(String),
    Socket {
        dir: PathBuf,
        port: u16,
        db: String,
    },
}

impl Conn {
    /// Adds the connection to a psql command line (`-d CONN`, or `-h DIR -p PORT -U
    /// postgres -d DB`).
    pub fn apply(&self, cmd: Cmd) -> Cmd {
        self.add(cmd, true)
    }

    /// Adds the connection to the end of a pgbench command line, whose database is its
    /// last argument (its `-d` means debug).
    pub fn apply_last(&self, cmd: Cmd) -> Cmd {
        self.add(cmd, false)
    }

    fn add(&self, cmd: Cmd, dash_d: bool) -> Cmd {
        match self {
            Conn::Url(url) => {
                let (shown, password) = split_password(url);
                let cmd = if dash_d { cmd.arg("-d") } else { cmd };
                let cmd = cmd.arg(shown);
                match password {
                    Some(p) => cmd.env("PGPASSWORD", p),
                    None => cmd,
                }
            }
            Conn::Socket { dir, port, db } => {
                let cmd = cmd.arg("-h").arg(dir).args(["-p", &port.to_string(), "-U", "postgres"]);
                if dash_d {
                    cmd.args(["-d", db])
                } else {
                    cmd.arg(db)
                }
            }
        }
    }
}

/// A libpq URL without its password (`scheme://user:pw@host/…` → `scheme://user@host/…`),
/// and the password, percent-decoded.
pub fn split_password(url: &str) -> (String, Option<String>) {
    let Some((scheme, rest)) = url.split_once("://") else { return (url.to_owned(), None) };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else { return (url.to_owned(), None) };
    let Some((user, password)) = userinfo.split_once(':') else { return (url.to_owned(), None) };
    (format!("{scheme}://{user}@{host}{path}"), Some(percent_decode(password)))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The URL with its database (path) replaced by `db`.
pub fn url_with_db(url: &str, db: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, after) = rest.split_at(authority_end);
    let query = after.find('?').map_or("", |q| &after[q..]);
    format!("{scheme}://{authority}/{db}{query}")
}

/// Creates `dir` (and its parents) owned by `user` with `mode`.
pub fn make_owned_dir(dir: &Path, user: &User, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::os::unix::fs::chown(dir, Some(user.uid), Some(user.gid))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// A server started by hand with `pg_ctl` on a data directory; stopped (fast shutdown)
/// when dropped.
pub struct HandServer {
    pg: Pg,
    exec: Arc<Exec>,
    pub data_dir: PathBuf,
    pub port: u16,
    pub socket_dir: PathBuf,
    pub log: PathBuf,
    stopped: bool,
}

/// Whether `pg_ctl start` waits for the server to accept connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartWait {
    /// `-w`: pg_ctl returns once the server is ready.
    Ready,
    /// `-W`: pg_ctl returns once the postmaster is launched; the caller waits for readiness.
    Launched,
}

impl HandServer {
    /// `pg_ctl -D DIR -l LOG start -o "-p PORT -k SOCKET_DIR SETTINGS"` as postgres, with
    /// the run's socket directory.
    pub fn start(
        run: &super::Run,
        data_dir: &Path,
        port: u16,
        log: &Path,
        settings: &str,
        wait: StartWait,
    ) -> Result<HandServer> {
        let (pg, exec, socket_dir) = (&run.pg, &run.exec, &run.sock);
        let options = format!("-p {port} -k {} {settings}", socket_dir.display());
        let cmd = Cmd::new(pg.program("pg_ctl"))
            .arg("-D")
            .arg(data_dir)
            .arg("-l")
            .arg(log)
            .args(match wait {
                StartWait::Ready => ["-w", "-t", "300"].as_slice(),
                StartWait::Launched => ["-W"].as_slice(),
            })
            .args(["-o", &options, "start"])
            .user(&pg.user)
            .own_process_group()
            .timeout(Duration::from_secs(330));
        let server = HandServer {
            pg: pg.clone(),
            exec: exec.clone(),
            data_dir: data_dir.to_owned(),
            port,
            socket_dir: socket_dir.to_owned(),
            log: log.to_owned(),
            stopped: false,
        };
        if let Err(e) = exec.run(&cmd) {
            bail!(
                "postgres did not start on {} ({e:#}); log {}:\n{}",
                data_dir.display(),
                log.display(),
                tail(log, 30)
            );
        }
        Ok(server)
    }

    /// The connection to database `db` through the server's socket.
    pub fn conn(&self, db: &str) -> Conn {
        Conn::Socket { dir: self.socket_dir.clone(), port: self.port, db: db.to_owned() }
    }

    /// Fast shutdown; then immediate; then SIGKILL of the postmaster if its command line
    /// names this data directory. A directory without `postmaster.pid` is left alone.
    pub fn stop(mut self) -> Result<()> {
        self.stopped = true;
        stop_server(&self.pg, &self.exec, &self.data_dir)
    }
}

impl Drop for HandServer {
    fn drop(&mut self) {
        if !self.stopped {
            if let Err(e) = stop_server(&self.pg, &self.exec, &self.data_dir) {
                warn(&format!("stopping the server on {}: {e:#}", self.data_dir.display()));
            }
        }
    }
}

fn stop_server(pg: &Pg, exec: &Exec, dir: &Path) -> Result<()> {
    let pid_file = dir.join("postmaster.pid");
    if !pid_file.exists() {
        return Ok(());
    }
    let pg_ctl = |mode: &str, seconds: u64| {
        Cmd::new(pg.program("pg_ctl"))
            .arg("-D")
            .arg(dir)
            .args(["-m", mode, "-w", "-t", &seconds.to_string(), "stop"])
            .user(&pg.user)
            .timeout(Duration::from_secs(seconds + 30))
    };
    // Stop even after an interrupt: these run outside exec's interrupt checks.
    exec.note(&pg_ctl("fast", 120).line());
    if pg_ctl("fast", 120).program().run().is_ok() {
        return Ok(());
    }
    warn(&format!("fast shutdown of {} failed; trying immediate", dir.display()));
    if pg_ctl("immediate", 30).program().run().is_ok() {
        return Ok(());
    }
    if let Some(pid) = sys::procfs::read_pid(&pid_file) {
        if sys::procfs::is_live_process_of(pid, dir) {
            warn(&format!("killing postmaster {pid} of {}", dir.display()));
            // SAFETY: kill of a pid whose command line names our data directory.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    bail!("the server on {} did not shut down cleanly", dir.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_password_and_change_database() {
        let (shown, pw) = split_password("postgresql://postgres:p%40ss@127.0.0.1:56001/postgres?sslmode=disable");
        assert_eq!(shown, "postgresql://postgres@127.0.0.1:56001/postgres?sslmode=disable");
        assert_eq!(pw.as_deref(), Some("p@ss"));
        assert_eq!(split_password("postgresql://u@h/db"), ("postgresql://u@h/db".to_owned(), None));
        assert_eq!(url_with_db("postgresql://u:x@h:5/postgres?a=b", "bench"), "postgresql://u:x@h:5/bench?a=b");
        assert_eq!(url_with_db("postgresql://u@h:5", "bench"), "postgresql://u@h:5/bench");
    }
}
