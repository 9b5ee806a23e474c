//! Running a PostgreSQL server on a data directory: the settings a clone runs with, start
//! with a readiness wait, stop, and running SQL over its private socket.
//!
//! Everything a server needs besides its data directory lives in a *run directory* outside
//! it, owned by the server's OS user with mode 0700: the Unix socket, `pg_hba.conf`,
//! `pg_ident.conf`, an empty `postgresql.conf` for images that have none (Debian keeps it in
//! /etc), and the server log. So the data directory, and with it the image, is never
//! touched by anything thinclone writes.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::{Error, Installation, Program, Result, RunAs};

/// How a server runs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub port: u16,
    /// `listen_addresses`; empty for no TCP at all.
    pub listen_addresses: String,
    /// Socket, configuration files and log; created if missing.
    pub run_dir: PathBuf,
    pub shared_buffers: String,
    /// More `-c name=value` settings, applied last.
    pub extra: Vec<(String, String)>,
}

impl ServerConfig {
    /// The settings every server thinclone runs gets on its command line. They win over the
    /// image's `postgresql.conf` and `postgresql.auto.conf`, and make a clone cheap and
    /// harmless: no archiving or replication towards the source, no TLS files it may lack,
    /// logs and pid files outside the data directory, and WAL settings that keep a fresh clone
    /// to a few hundred KiB of writes.
    fn settings(&self, data_dir: &Path) -> Vec<(String, String)> {
        let run = self.run_dir.display().to_string();
        let mut s: Vec<(String, String)> = vec![
            ("port".into(), self.port.to_string()),
            ("listen_addresses".into(), self.listen_addresses.clone()),
            ("unix_socket_directories".into(), run.clone()),
            ("unix_socket_permissions".into(), "0700".into()),
            ("hba_file".into(), format!("{run}/pg_hba.conf")),
            ("ident_file".into(), format!("{run}/pg_ident.conf")),
            ("external_pid_file".into(), format!("{run}/postgres.pid")),
            ("ssl".into(), "off".into()),
            ("logging_collector".into(), "off".into()),
            ("log_destination".into(), "stderr".into()),
            ("archive_mode".into(), "off".into()),
            ("archive_command".into(), "".into()),
            ("restore_command".into(), "".into()),
            ("primary_conninfo".into(), "".into()),
            ("primary_slot_name".into(), "".into()),
            ("max_wal_senders".into(), "0".into()),
            ("max_replication_slots".into(), "0".into()),
            ("shared_buffers".into(), self.shared_buffers.clone()),
            ("wal_init_zero".into(), "off".into()),
            ("wal_recycle".into(), "off".into()),
            ("min_wal_size".into(), "32MB".into()),
            ("max_wal_size".into(), "256MB".into()),
        ];
        if !data_dir.join("postgresql.conf").exists() {
            s.push(("config_file".into(), format!("{run}/postgresql.conf")));
        }
        s.extend(self.extra.iter().cloned());
        s
    }
}

/// A server started by [`Server::start`], a child of this process.
pub struct Server {
    child: Child,
    pub data_dir: PathBuf,
    pub port: u16,
    pub run_dir: PathBuf,
    installation: Installation,
    user: RunAs,
}

impl Server {
    /// Starts a server on `data_dir` as `user` and waits until it accepts connections.
    pub fn start(
        installation: &Installation,
        data_dir: &Path,
        config: &ServerConfig,
        user: &RunAs,
        timeout: Duration,
    ) -> Result<Server> {
        prepare_run_dir(&config.run_dir, data_dir, user)?;
        let log_path = config.run_dir.join("postgres.log");
        let log = fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
        // A stale lock of a server that is gone would stop the start.
        remove_stale_pid_file(data_dir)?;
        let mut program = Program::new(installation.program("postgres")).arg("-D").arg(data_dir).user(user);
        for (name, value) in config.settings(data_dir) {
            program = program.arg("-c").arg(format!("{name}={value}"));
        }
        let child = program.spawn(Stdio::from(log.try_clone()?), Stdio::from(log))?;
        let server = Server {
            child,
            data_dir: data_dir.to_owned(),
            port: config.port,
            run_dir: config.run_dir.clone(),
            installation: installation.clone(),
            user: user.clone(),
        };
        server.wait_ready(timeout)
    }

    fn wait_ready(mut self, timeout: Duration) -> Result<Server> {
        let deadline = Instant::now() + timeout;
        loop {
            // Line 8 of postmaster.pid says "ready" once the server accepts connections.
            if let Ok(pid_file) = fs::read_to_string(self.data_dir.join("postmaster.pid")) {
                if pid_file.lines().nth(7).is_some_and(|l| l.trim() == "ready") {
                    return Ok(self);
                }
            }
            if let Some(status) = self.child.try_wait()? {
                return Err(Error::Failed {
                    program: "postgres".into(),
                    status: status.to_string(),
                    stderr: self.log_tail(),
                });
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err(Error::TimedOut { program: "postgres".into(), seconds: timeout.as_secs() });
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines of the server log, for error messages.
    pub fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.run_dir.join("postgres.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(8)..].join("\n")
    }

    /// Runs SQL as the superuser over the private socket; returns psql's unaligned output.
    pub fn sql(&self, db: &str, sql: &str) -> Result<String> {
        let out = Program::new(self.installation.program("psql"))
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.run_dir)
            .args(["-p", &self.port.to_string(), "-d", db, "-U", &self.superuser()?, "-c", sql])
            .user(&self.user)
            .timeout(Duration::from_secs(120))
            .run()?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// The bootstrap superuser (the role with oid 10), which is not always `postgres`.
    pub fn superuser(&self) -> Result<String> {
        // Connecting needs a role name; the OS user's name is the conventional superuser, and
        // the local trust line of our pg_hba.conf accepts any existing role.
        let out = Program::new(self.installation.program("psql"))
            .args(["-X", "-A", "-t", "-q", "-h"])
            .arg(&self.run_dir)
            .args(["-p", &self.port.to_string(), "-d", "postgres", "-U", &self.user.name])
            .args(["-c", "SELECT rolname FROM pg_roles WHERE oid = 10"])
            .user(&self.user)
            .run()?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Gives the superuser a new password. The server gets a SCRAM verifier computed here,
    /// so the password itself never reaches it or its logs.
    pub fn set_superuser_password(&self, password: &str) -> Result<String> {
        let role = self.superuser()?;
        let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
        let sql = format!("ALTER ROLE \"{}\" PASSWORD '{}'", role.replace('"', "\"\""), verifier);
        self.sql("postgres", &sql)?;
        Ok(role)
    }

    /// Stops the server (fast shutdown: SIGINT) and waits for it.
    pub fn stop(mut self, timeout: Duration) -> Result<()> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    tracing::warn!(data_dir = %self.data_dir.display(), %status, "postgres exited uncleanly");
                }
                return Ok(());
            }
            if Instant::now() >= deadline {
                // Immediate shutdown: the next start runs crash recovery, nothing is lost.
                unsafe { libc::kill(self.child.id() as i32, libc::SIGQUIT) };
                let _ = self.child.wait();
                return Err(Error::TimedOut { program: "postgres (fast shutdown)".into(), seconds: timeout.as_secs() });
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// Creates the run directory with its configuration files, owned by `user`, mode 0700.
fn prepare_run_dir(run_dir: &Path, data_dir: &Path, user: &RunAs) -> Result<()> {
    fs::create_dir_all(run_dir)?;
    // Our own authentication: trust on the private socket (only this user and root can reach
    // it), passwords over TCP.
    let hba = "# Written by thinclone.\n\
               local all all trust\n\
               host all all 127.0.0.1/32 scram-sha-256\n\
               host all all ::1/128 scram-sha-256\n";
    fs::write(run_dir.join("pg_hba.conf"), hba)?;
    fs::write(run_dir.join("pg_ident.conf"), "")?;
    if !data_dir.join("postgresql.conf").exists() {
        fs::write(run_dir.join("postgresql.conf"), "# Empty: the image has no postgresql.conf.\n")?;
    }
    for entry in ["", "pg_hba.conf", "pg_ident.conf", "postgresql.conf"] {
        let path = run_dir.join(entry);
        if path.exists() {
            std::os::unix::fs::chown(&path, Some(user.uid), Some(user.gid))?;
        }
    }
    fs::set_permissions(run_dir, fs::Permissions::from_mode(0o700))?;
    Ok(())
}

/// Removes `postmaster.pid` when the process it names is gone.
fn remove_stale_pid_file(data_dir: &Path) -> Result<()> {
    let path = data_dir.join("postmaster.pid");
    let Ok(text) = fs::read_to_string(&path) else { return Ok(()) };
    let alive = text
        .lines()
        .next()
        .and_then(|l| l.trim().parse::<i32>().ok())
        // SAFETY: signal 0 only checks that the process exists.
        .is_some_and(|pid| unsafe { libc::kill(pid, 0) } == 0);
    if !alive {
        fs::remove_file(&path)?;
    }
    Ok(())
}

/// The cluster state `pg_controldata` reports, e.g. "shut down" or "in production".
pub fn cluster_state(installation: &Installation, data_dir: &Path, user: &RunAs) -> Result<String> {
    let out = Program::new(installation.program("pg_controldata")).arg(data_dir).user(user).run()?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("Database cluster state:"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default())
}

/// Prepares a data directory to be an image: recovery (of a base backup, or of a copy of a
/// server that was not shut down cleanly) runs to completion here, once, and ends in a clean
/// shutdown, so that clones start without replaying WAL. Run it on a throwaway writable view
/// of the raw copy; the server's log stays in `run_dir`.
pub fn prepare(installation: &Installation, data_dir: &Path, user: &RunAs, run_dir: &Path) -> Result<()> {
    // A standby or archive-recovery signal would keep the server from opening normally;
    // replication slots would pin WAL in every clone; a stale lock would stop the start.
    for name in ["standby.signal", "recovery.signal", "postmaster.pid", "postmaster.opts"] {
        match fs::remove_file(data_dir.join(name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
    }
    if let Ok(slots) = fs::read_dir(data_dir.join("pg_replslot")) {
        for slot in slots {
            fs::remove_dir_all(slot?.path())?;
        }
    }
    let config = ServerConfig {
        port: free_port()?,
        listen_addresses: String::new(),
        run_dir: run_dir.to_owned(),
        shared_buffers: "128MB".into(),
        extra: Vec::new(),
    };
    // Recovery of a large backup may take long.
    let server = Server::start(installation, data_dir, &config, user, Duration::from_secs(24 * 3600))?;
    // Connect to every database once: the first connection sets hint bits on the catalogs,
    // which would otherwise be written by every clone.
    let databases = server.sql("postgres", "SELECT datname FROM pg_database WHERE datallowconn")?;
    for db in databases.lines().filter(|l| !l.is_empty()) {
        server.sql(db, "SELECT 1")?;
    }
    server.stop(Duration::from_secs(3600))?;
    let state = cluster_state(installation, data_dir, user)?;
    if state != "shut down" {
        return Err(Error::Failed {
            program: "prepare".into(),
            status: format!("cluster state {state:?}"),
            stderr: "the server did not shut down cleanly after recovery".into(),
        });
    }
    for name in ["backup_label.old", "backup_manifest"] {
        match fs::remove_file(data_dir.join(name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
    }
    Ok(())
}

/// A TCP port on 127.0.0.1 that nothing listens on now.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
