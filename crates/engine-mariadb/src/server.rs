//! Running `mariadbd` on a data directory: the command line an instance runs with, its run
//! directory, start with a readiness wait, adoption of a server an earlier process left
//! running, SQL over its private socket through the `mariadb` client, passwords, and stop.
//!
//! Everything a server needs besides its data directory lives in its *run directory*, owned
//! by the server's OS user with mode 0700:
//!
//! ```text
//! mariadbd.sock   its socket: reachable only by its OS user and root
//! mariadbd.pid    its pid
//! mariadbd.log    its stderr (the error log)
//! ibtmp1          InnoDB's temporary tablespace, while it runs
//! files/          the only directory LOAD DATA, SELECT … INTO OUTFILE and LOAD_FILE reach
//!                 (secure_file_priv)
//! ```
//!
//! Every setting is on the command line after `--no-defaults`, so no `my.cnf` (the host's or
//! the image's) is read. Nothing is written into the data directory.
//!
//! The agent reaches an instance as the database user `root` over the socket, through the
//! `unix_socket` plugin: only the OS user root is `root` there (prepare makes sure the image's
//! `root@localhost` may log in so). Before each statement the client checks, in its
//! `--init-command`, that the server answering is this one (its data directory and socket): a
//! socket swapped for a link to another clone's must not get the statement.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use engine::{Error, InstanceSpec, Result, Secret};
use sys::Program;

use crate::datadir::live_server;
use crate::install::Installation;
use crate::ENGINE_NAME;

pub(crate) const SOCKET: &str = "mariadbd.sock";
pub(crate) const PID_FILE: &str = "mariadbd.pid";
pub(crate) const LOG: &str = "mariadbd.log";
const FILES_DIR: &str = "files";
/// The buffer pool of an instance whose spec names no memory.
const DEFAULT_BUFFER_POOL: &str = "64M";
/// The size of an image's redo log: MariaDB's default `innodb_log_file_size` (or 4 MiB more,
/// see [`args`]).
const IMAGE_REDO_LOG: u64 = 96 << 20;
/// The directory of an image's data directory that holds its redo log (`ib_logfile0`),
/// apart from the rest so that the cowfs driver can keep it off FUSE. Its name starts with
/// a dot and is given to `--ignore-db-dirs`, so that the server lists no such database.
pub(crate) const REDO_DIR: &str = ".thinclone-redo";
/// The redo log's file name.
pub(crate) const REDO_LOG: &str = "ib_logfile0";

/// Where the redo log of the data directory `data_dir` is: in [`REDO_DIR`] when there is
/// one, else at the top.
pub(crate) fn redo_log(data_dir: &Path) -> PathBuf {
    let dir = data_dir.join(REDO_DIR);
    if dir.is_dir() {
        dir.join(REDO_LOG)
    } else {
        data_dir.join(REDO_LOG)
    }
}
/// How long a statement run by [`Server::sql`] may take.
const SQL_TIMEOUT: Duration = Duration::from_secs(600);
/// How long SIGKILL may take to end a server.
const KILL_TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(10);
/// How often a starting server's socket is tried.
const READY_POLL: Duration = Duration::from_millis(5);
/// System schemas: never given to a clone's owner.
pub(crate) const SYSTEM_SCHEMAS: [&str; 4] = ["mysql", "information_schema", "performance_schema", "sys"];

/// What a server is started for; a few settings differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// A clone, or any instance the engine's callers start.
    Clone,
    /// The server that prepares an image: no TCP, no grant tables (nobody but this process
    /// reaches its socket), and a slow shutdown that leaves nothing to purge or merge.
    Prepare,
}

/// The `mariadbd` command line (after the program), every setting on it:
///
/// - `--no-defaults` first: no option file is read, neither the host's `/etc/mysql` nor one
///   the image carries;
/// - socket, pid file, temporary files and `secure_file_priv` in the run directory;
/// - `--skip-name-resolve` (accounts match by address; no DNS), `--skip-slave-start` (a
///   copy of a replica never connects to its primary), `--skip-log-bin` (no binary log);
/// - small caches (`innodb_buffer_pool_size` from the spec's memory, Aria's page cache and
///   MyISAM's key buffer 8M), no buffer pool dump or load (a dump would be written into the
///   data directory at each stop);
/// - the redo log in [`REDO_DIR`] when the data directory has one; `innodb_log_file_size`
///   as the image's redo log is, so that no clone resizes it (the server preparing an image
///   makes a new one).
pub(crate) fn args(spec: &InstanceSpec, role: Role) -> Vec<String> {
    let run = |name: &str| spec.run_dir.join(name).display().to_string();
    let mut a: Vec<String> = vec![
        "--no-defaults".into(),
        // Separate words: an adoption finds the server by its data directory among its
        // arguments.
        "--datadir".into(),
        spec.data_dir.display().to_string(),
        format!("--socket={}", run(SOCKET)),
        format!("--pid-file={}", run(PID_FILE)),
        format!("--tmpdir={}", spec.run_dir.display()),
        format!("--secure-file-priv={}", run(FILES_DIR)),
        format!("--port={}", spec.port),
        "--skip-name-resolve".into(),
        "--skip-slave-start".into(),
        "--skip-log-bin".into(),
        "--event-scheduler=OFF".into(),
        format!("--innodb-buffer-pool-size={}", buffer_pool(spec.memory.as_deref())),
        "--innodb-buffer-pool-dump-at-shutdown=OFF".into(),
        "--innodb-buffer-pool-load-at-startup=OFF".into(),
        "--aria-pagecache-buffer-size=8M".into(),
        "--key-buffer-size=8M".into(),
        "--max-connections=100".into(),
    ];
    // InnoDB's temporary tablespace, made afresh (written in full) at each start and removed
    // at each stop: in the run directory, so that it costs a clone's storage nothing. Its
    // syntax takes no `:` in the path; such a run directory leaves it in the data directory.
    let temp = run("ibtmp1");
    if !temp.contains(':') {
        a.push(format!("--innodb-temp-data-file-path={temp}:1M:autoextend"));
    }
    // An image keeps its redo log in a directory of its own, which the cowfs driver keeps
    // off FUSE (`Engine::commit_dirs`); the server is told, and told not to take the
    // directory for a database.
    let redo_dir = spec.data_dir.join(REDO_DIR);
    if redo_dir.is_dir() {
        a.push(format!("--innodb-log-group-home-dir={}", redo_dir.display()));
        a.push(format!("--ignore-db-dirs={REDO_DIR}"));
    }
    if let Ok(redo) = fs::metadata(redo_log(&spec.data_dir)) {
        if redo.is_file() && redo.len() > 0 {
            // The server that prepares an image always starts with another size than the
            // copy's log has, so that InnoDB writes a new log: after its clean shutdown the
            // log is zeros but for a few KiB, which a clone's copy of it skips. 96 MiB
            // (MariaDB's default), or 100 MiB when the copy's was 96 MiB. A clone runs with
            // the size its image has, so that it never rewrites the log.
            let size = match role {
                Role::Prepare if redo.len() == IMAGE_REDO_LOG => IMAGE_REDO_LOG + (4 << 20),
                Role::Prepare => IMAGE_REDO_LOG,
                Role::Clone => redo.len(),
            };
            a.push(format!("--innodb-log-file-size={size}"));
        }
    }
    match role {
        Role::Prepare => {
            a.extend([
                "--skip-networking".into(),
                "--skip-grant-tables".into(),
                "--innodb-fast-shutdown=0".into(),
                // Masking reloads whole rows through a dump.
                "--max-allowed-packet=1G".into(),
            ]);
        }
        Role::Clone if spec.listen.is_empty() => a.push("--skip-networking".into()),
        Role::Clone => {
            let listen: Vec<String> = spec.listen.iter().map(ToString::to_string).collect();
            a.push(format!("--bind-address={}", listen.join(",")));
        }
    }
    a
}

/// A memory size as MariaDB reads it: `64MB` → `64M`, `1GB` → `1G`, `512kB` → `512K`.
fn buffer_pool(memory: Option<&str>) -> String {
    let Some(text) = memory.map(str::trim).filter(|t| !t.is_empty()) else { return DEFAULT_BUFFER_POOL.into() };
    let upper = text.to_ascii_uppercase();
    upper.strip_suffix('B').filter(|t| t.ends_with(['K', 'M', 'G', 'T'])).unwrap_or(&upper).to_owned()
}

/// Creates or refreshes the run directory, private to the spec's user, with its `files`
/// directory; an empty log if there is none. Whatever the server's OS user left in the place
/// of the log (a symlink) is replaced, never written through.
pub(crate) fn write_run_dir(spec: &InstanceSpec) -> Result<()> {
    let root = sys::user::running_as_root();
    let dir = &spec.run_dir;
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    if root {
        std::os::unix::fs::lchown(dir, Some(spec.user.uid), Some(spec.user.gid))?;
    }
    // `files/` is in a directory the server's OS user owns, and may be anything it left
    // there: what is not a directory is replaced, and nothing is done through a path that
    // could have become a link (made with its mode, given away with lchown).
    let files = dir.join(FILES_DIR);
    match fs::symlink_metadata(&files) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            tracing::warn!(path = %files.display(), "replacing what is not a directory");
            fs::remove_file(&files)?;
            std::os::unix::fs::DirBuilderExt::mode(&mut fs::DirBuilder::new(), 0o700).create(&files)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::os::unix::fs::DirBuilderExt::mode(&mut fs::DirBuilder::new(), 0o700).create(&files)?;
        }
        Err(e) => return Err(e.into()),
    }
    if root {
        std::os::unix::fs::lchown(&files, Some(spec.user.uid), Some(spec.user.gid))?;
    }
    let log = spec.run_dir.join(LOG);
    let file = match sys::untrusted::open_append(&log, 0o600) {
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            tracing::warn!(log = %log.display(), "replacing the server's log: {e}");
            sys::untrusted::replace(&log, b"", 0o600, None)?;
            sys::untrusted::open_append(&log, 0o600)?
        }
        other => other?,
    };
    if root {
        std::os::unix::fs::fchown(&file, Some(spec.user.uid), Some(spec.user.gid))?;
    }
    Ok(())
}

/// A server's process while it is ours to stop.
#[derive(Debug)]
enum Running {
    /// Started by this process: our child.
    Child(sys::Process),
    /// Started by an earlier process and adopted; each signal only after checking that the
    /// pid still serves our data directory.
    Adopted(i32),
}

/// A running `mariadbd`. Dropping it kills the server (SIGKILL: InnoDB recovers at the next
/// start) and waits for it, unless it was detached.
#[derive(Debug)]
pub(crate) struct Server {
    pid: u32,
    running: Option<Running>,
    data_dir: PathBuf,
    run_dir: PathBuf,
    superuser: String,
    installation: Installation,
}

/// Starts a server for `role` and waits until it accepts connections on its socket.
pub(crate) fn start_as(
    installation: &Installation,
    spec: &InstanceSpec,
    timeout: Duration,
    role: Role,
) -> Result<Server> {
    if spec.read_only {
        return Err(Error::Other(format!(
            "{ENGINE_NAME} does not support read-only clones (snapshot views) yet: its read_only setting does not \
             bind the superuser"
        )));
    }
    if let Some(pid) = live_server(&spec.data_dir) {
        return Err(Error::InUse(format!(
            "a {ENGINE_NAME} server (pid {pid}) is already running on {}",
            spec.data_dir.display()
        )));
    }
    write_run_dir(spec)?;
    let log = spec.run_dir.join(LOG);
    let log_start = fs::symlink_metadata(&log).map_or(0, |m| m.len());
    let process = Program::new(&installation.server)
        .args(args(spec, role))
        .user(&spec.user)
        .cwd(&spec.run_dir)
        .own_process_group()
        .spawn_logged(&log)?;
    let mut server = Server {
        pid: process.pid(),
        running: Some(Running::Child(process)),
        data_dir: spec.data_dir.clone(),
        run_dir: spec.run_dir.clone(),
        superuser: spec.superuser.clone(),
        installation: installation.clone(),
    };
    // On failure, dropping `server` kills whatever is left of it.
    server.wait_ready(timeout, log_start)?;
    Ok(server)
}

/// Whether a server answers on the socket at `path`: it sends its greeting (protocol 10)
/// as soon as it accepts a connection, and listens only once recovery is done.
fn answers(path: &Path) -> bool {
    let Ok(mut stream) = UnixStream::connect(path) else { return false };
    // A failed timeout setting leaves a blocking read; the greeting comes at once anyway.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut head = [0u8; 5];
    // A greeting starts with a 4-byte header and the protocol version 10; an error packet
    // (0xff: too many connections) also says it is up.
    stream.read_exact(&mut head).is_ok() && (head[4] == 10 || head[4] == 0xff)
}

/// The server of `spec` that an earlier process started and left running, if it is there,
/// serves this data directory, and answers.
pub(crate) fn adopt(installation: &Installation, spec: &InstanceSpec) -> Option<Server> {
    let pid = sys::procfs::read_pid(&spec.run_dir.join(PID_FILE))?;
    if !sys::procfs::is_live_process_of(pid, &spec.data_dir) || !answers(&spec.run_dir.join(SOCKET)) {
        return None;
    }
    Some(Server {
        pid: pid as u32,
        running: Some(Running::Adopted(pid)),
        data_dir: spec.data_dir.clone(),
        run_dir: spec.run_dir.clone(),
        superuser: spec.superuser.clone(),
        installation: installation.clone(),
    })
}

/// Kills a `mariadbd` on `spec`'s data directory that nobody holds, found by its pid file or
/// its command line, and waits until it is gone. SIGKILL: nothing committed is lost (InnoDB
/// recovers at the next start), and it is the one way that cannot hang.
pub(crate) fn stop_stray(spec: &InstanceSpec) -> Result<bool> {
    let from_file = sys::procfs::read_pid(&spec.run_dir.join(PID_FILE))
        .filter(|&pid| sys::procfs::is_live_process_of(pid, &spec.data_dir));
    let by_command_line = sys::procfs::processes_under(&spec.data_dir).into_iter().filter(|&pid| {
        sys::procfs::cmdline(pid).is_some_and(|args| {
            let is_server = args.first().and_then(|p| Path::new(p).file_name()).is_some_and(|n| n == "mariadbd");
            let data_dir = spec.data_dir.to_string_lossy();
            is_server && args.windows(2).any(|w| w[0] == "--datadir" && w[1] == data_dir)
        })
    });
    let mut pids: Vec<i32> = from_file.into_iter().chain(by_command_line).collect();
    pids.sort_unstable();
    pids.dedup();
    for &pid in &pids {
        tracing::info!(pid, data_dir = %spec.data_dir.display(), "stopping a server left running");
        if sys::procfs::is_live_process_of(pid, &spec.data_dir) {
            // SAFETY: kill has no memory-safety preconditions; the pid was just checked.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let gone = sys::wait::until(KILL_TIMEOUT, POLL, || {
            (!sys::procfs::is_live_process_of(pid, &spec.data_dir)).then_some(())
        });
        if gone.is_none() || !files_released(&spec.data_dir) {
            return Err(Error::Other(format!(
                "mariadbd (pid {pid}) on {} did not exit after SIGKILL",
                spec.data_dir.display()
            )));
        }
    }
    Ok(!pids.is_empty())
}

/// Waits until no process holds the locks of `data_dir`'s files. A killed server's main
/// thread is a zombie, which counts as gone, while its other threads still end and hold its
/// files for a moment.
fn files_released(data_dir: &Path) -> bool {
    sys::wait::until(KILL_TIMEOUT, POLL, || live_server(data_dir).is_none().then_some(())).is_some()
}

impl Server {
    fn wait_ready(&mut self, timeout: Duration, log_start: u64) -> Result<()> {
        let socket = self.run_dir.join(SOCKET);
        let outcome = sys::wait::until(timeout, READY_POLL, || {
            if answers(&socket) {
                return Some(Ok(None));
            }
            match self.try_wait() {
                Ok(None) => None,
                Ok(Some(status)) => Some(Ok(Some(status))),
                Err(e) => Some(Err(e)),
            }
        });
        match outcome {
            Some(Ok(None)) => Ok(()),
            Some(Ok(Some(status))) => Err(sys::Error::Failed {
                program: format!("mariadbd on {}", self.data_dir.display()),
                status: status.to_string(),
                stderr: self.log_since(log_start),
            }
            .into()),
            Some(Err(e)) => Err(e.into()),
            None => Err(Error::Other(format!(
                "mariadbd on {} did not accept connections within {} s; its log ends with:\n{}",
                self.data_dir.display(),
                timeout.as_secs(),
                self.log_since(log_start)
            ))),
        }
    }

    /// The last lines the server logged since `offset`, for error messages.
    pub(crate) fn log_since(&self, offset: u64) -> String {
        let text = log_since(&self.run_dir.join(LOG), offset);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        use std::os::unix::process::ExitStatusExt;
        let status = match &mut self.running {
            Some(Running::Child(p)) => p.try_wait()?,
            Some(Running::Adopted(pid)) => {
                (!sys::procfs::is_live_process_of(*pid, &self.data_dir)).then(|| ExitStatus::from_raw(0))
            }
            None => Some(ExitStatus::from_raw(0)),
        };
        if status.is_some() {
            self.running = None;
        }
        Ok(status)
    }

    fn signal(&self, signal: i32) {
        match &self.running {
            Some(Running::Child(p)) => p.signal(signal),
            Some(Running::Adopted(pid)) if sys::procfs::is_live_process_of(*pid, &self.data_dir) => {
                // SAFETY: kill has no memory-safety preconditions; the pid was checked just
                // above to be a live server of our data directory.
                unsafe { libc::kill(*pid, signal) };
            }
            Some(Running::Adopted(_)) | None => {}
        }
    }

    /// Waits up to `timeout` for it to exit and let go of its files; whether it did.
    fn wait_gone(&mut self, timeout: Duration) -> io::Result<bool> {
        let exited = sys::wait::until(timeout, POLL, || self.try_wait().transpose()).transpose()?.is_some();
        Ok(exited && files_released(&self.data_dir))
    }

    /// Shuts it down: cleanly (SIGTERM) if `clean` gives that a time limit, then SIGKILL.
    /// Returns whether the first way it tried was enough.
    fn shut_down(&mut self, clean: Option<Duration>) -> io::Result<bool> {
        if let Some(timeout) = clean {
            self.signal(libc::SIGTERM);
            if self.wait_gone(timeout)? {
                return Ok(true);
            }
        }
        self.signal(libc::SIGKILL);
        if !self.wait_gone(KILL_TIMEOUT)? {
            return Err(io::Error::other(format!(
                "mariadbd on {} did not exit after SIGKILL",
                self.data_dir.display()
            )));
        }
        Ok(clean.is_none())
    }

    /// Stops it cleanly, or kills it after `timeout`. Returns whether it stopped cleanly.
    pub(crate) fn stop_within(mut self, timeout: Duration) -> Result<bool> {
        let clean = self.shut_down(Some(timeout))?;
        if !clean {
            tracing::warn!(data_dir = %self.data_dir.display(), "mariadbd did not stop within {} s; killed", timeout.as_secs());
        }
        self.running = None;
        Ok(clean)
    }

    /// A `mariadb` client on the private socket as the superuser, in `database` if given,
    /// that reads its statements from stdin (never its arguments: statements may hold
    /// secrets) and stops at the first error. Its `--init-command` first checks that the
    /// server is this one.
    fn client(&self, database: Option<&str>) -> Program {
        let data_dir: PathBuf = self.data_dir.components().collect();
        let dir = sql_literal(&data_dir.display().to_string());
        // Its socket, not its port: a server without TCP says its port is 0.
        let check = format!(
            "BEGIN NOT ATOMIC IF TRIM(TRAILING '/' FROM @@datadir) <> {dir} OR @@socket <> {socket} THEN \
               SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'the server on this socket is not the one of its clone: \
               its socket was replaced'; \
             END IF; END",
            socket = sql_literal(&self.run_dir.join(SOCKET).display().to_string())
        );
        let mut program = Program::new(self.installation.program("mariadb"))
            .arg("--no-defaults")
            .arg("--protocol=SOCKET")
            .arg(format!("--socket={}", self.run_dir.join(SOCKET).display()))
            .arg(format!("--user={}", self.superuser))
            .args(["--batch", "--skip-column-names"])
            .arg(format!("--init-command={check}"))
            .timeout(SQL_TIMEOUT);
        if let Some(database) = database {
            program = program.arg(format!("--database={database}"));
        }
        program
    }

    /// Runs statements as the superuser; returns what they printed (tab-separated rows).
    pub(crate) fn sql_in(&self, database: Option<&str>, sql: &str) -> Result<String> {
        self.sql_for(database, sql, SQL_TIMEOUT)
    }

    /// Runs statements like [`Server::sql_in`], allowed `timeout` (scripts and masking on an
    /// image may take long).
    pub(crate) fn sql_for(&self, database: Option<&str>, sql: &str, timeout: Duration) -> Result<String> {
        let out = self.client(database).timeout(timeout).stdin(sql.as_bytes().to_vec()).run()?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Runs the statements of the file at `path` (a dump, read by this process), stopping at
    /// the first error.
    pub(crate) fn sql_file(&self, path: &Path, timeout: Duration, database: Option<&str>) -> Result<()> {
        self.client(database).arg("--max-allowed-packet=1G").timeout(timeout).stdin_file(path).run()?;
        Ok(())
    }

    /// `mariadb-dump` on the private socket as the superuser, its output to `result`.
    pub(crate) fn dump(&self, args: &[String], result: &Path, timeout: Duration) -> Result<()> {
        Program::new(self.installation.program("mariadb-dump"))
            .arg("--no-defaults")
            .arg("--protocol=SOCKET")
            .arg(format!("--socket={}", self.run_dir.join(SOCKET).display()))
            .arg(format!("--user={}", self.superuser))
            .args(["--max-allowed-packet=1G", "--hex-blob", "--skip-dump-date", "--single-transaction"])
            .arg(format!("--result-file={}", result.display()))
            .args(args)
            .timeout(timeout)
            .run()?;
        Ok(())
    }

    /// The hosts of the accounts named `user`.
    fn hosts_of(&self, user: &str) -> Result<Vec<String>> {
        let out =
            self.sql_in(None, &format!("SELECT HEX(Host) FROM mysql.global_priv WHERE User = {}", sql_literal(user)))?;
        hex_names(&out, "a host")
    }

    /// The databases but the system ones, by name.
    pub(crate) fn user_databases(&self) -> Result<Vec<String>> {
        let out = self.sql_in(
            None,
            &format!(
                "SELECT HEX(SCHEMA_NAME) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME NOT IN ({}) ORDER BY 1",
                SYSTEM_SCHEMAS.map(sql_literal).join(", ")
            ),
        )?;
        hex_names(&out, "a database name")
    }
}

/// Names the client printed in hex (so that any name reads back exactly), one a line; `what`
/// says what they are, for the error.
pub(crate) fn hex_names(out: &str, what: &str) -> Result<Vec<String>> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|hex| {
            from_hex(hex.trim())
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| Error::Other(format!("the client printed {hex:?} as {what}")))
        })
        .collect()
}

/// The `mysql_native_password` hash of a password: `*` and the upper-case hex of
/// SHA1(SHA1(password)). The server is given this, never the password.
pub(crate) fn native_hash(password: &Secret) -> String {
    use ring::digest::{digest, SHA1_FOR_LEGACY_USE_ONLY};
    let once = digest(&SHA1_FOR_LEGACY_USE_ONLY, password.expose().as_bytes());
    let twice = digest(&SHA1_FOR_LEGACY_USE_ONLY, once.as_ref());
    format!("*{}", twice.as_ref().iter().map(|b| format!("{b:02X}")).collect::<String>())
}

fn check_user_name(user: &str) -> Result<()> {
    if user.is_empty() || user.contains('\0') || user.chars().count() > 128 {
        return Err(Error::Other(format!("{user:?} is not a database user name")));
    }
    Ok(())
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.running.is_none() {
            return;
        }
        tracing::debug!(data_dir = %self.data_dir.display(), "killing mariadbd: its owner let go of it");
        if let Err(e) = self.shut_down(None) {
            tracing::error!(data_dir = %self.data_dir.display(), "killing mariadbd: {e}");
        }
    }
}

impl engine::Instance for Server {
    fn pid(&self) -> u32 {
        self.pid
    }

    fn is_running(&mut self) -> bool {
        matches!(self.try_wait(), Ok(None))
    }

    /// Gives every account named `user` but its `localhost` one (the socket's, which the
    /// agent logs in through) the password, as a hash computed here; makes `user@'%'` with
    /// every privilege if there is none, so that it can log in over TCP from anywhere the
    /// instance listens.
    fn set_password(&self, user: &str, password: &Secret) -> Result<()> {
        check_user_name(user)?;
        let hosts = self.hosts_of(user)?;
        if hosts.is_empty() {
            return Err(Error::Other(format!("there is no database user named {user}")));
        }
        let hash = sql_literal(&native_hash(password));
        let name = sql_literal(user);
        let mut sql = String::new();
        for host in hosts.iter().filter(|h| h.as_str() != "localhost") {
            sql.push_str(&format!("ALTER USER {name}@{} IDENTIFIED BY PASSWORD {hash};\n", sql_literal(host)));
        }
        if !hosts.iter().any(|h| h == "%") {
            sql.push_str(&format!(
                "CREATE USER {name}@'%' IDENTIFIED BY PASSWORD {hash};\n\
                 GRANT ALL PRIVILEGES ON *.* TO {name}@'%' WITH GRANT OPTION;\n\
                 GRANT PROXY ON ''@'%' TO {name}@'%' WITH GRANT OPTION;\n"
            ));
        }
        self.sql_in(None, &sql).map(drop)
    }

    fn sql(&self, sql: &str) -> Result<String> {
        self.sql_in(None, sql)
    }

    /// `user@'%'` (made if missing) logs in with `password` and has every privilege on each
    /// database but the system ones, and no global privilege: it cannot read the grant tables,
    /// touch files or act as a superuser. Run again, it sets the password and the grants anew.
    fn make_owner(&self, user: &str, password: &Secret) -> Result<()> {
        check_user_name(user)?;
        if user == self.superuser || user == "root" {
            return Err(Error::Other(format!("{user} is the image's superuser; the owner must be another user")));
        }
        let name = sql_literal(user);
        let hash = sql_literal(&native_hash(password));
        let schemas = self.user_databases()?;
        let mut sql = format!(
            "CREATE USER IF NOT EXISTS {name}@'%' IDENTIFIED BY PASSWORD {hash};\n\
             ALTER USER {name}@'%' IDENTIFIED BY PASSWORD {hash};\n\
             REVOKE ALL PRIVILEGES, GRANT OPTION FROM {name}@'%';\n"
        );
        for schema in schemas {
            // In GRANT, `_` and `%` in a database name are wildcards.
            let pattern = schema.replace('\\', "\\\\").replace('_', "\\_").replace('%', "\\%");
            sql.push_str(&format!("GRANT ALL PRIVILEGES ON {}.* TO {name}@'%';\n", quote_ident(&pattern)));
        }
        self.sql_in(None, &sql).map(drop)
    }

    fn stop(self: Box<Self>, timeout: Duration) -> Result<()> {
        self.stop_within(timeout).map(drop)
    }

    /// Session settings become user variables of the same name (`@\`thinclone.clone\``),
    /// set before the script.
    fn run_script(&self, database: Option<&str>, script: &str, settings: &[(String, String)]) -> Result<String> {
        let mut text = String::new();
        for (name, value) in settings {
            let valid = name.split('.').count() == 2
                && name.split('.').all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
            if !valid {
                return Err(Error::Other(format!("{name:?} is not a custom setting's name")));
            }
            text.push_str(&format!("SET @`{name}` = {};\n", sql_literal(value)));
        }
        text.push_str(script);
        self.sql_in(database, &text)
    }

    fn detach(mut self: Box<Self>) {
        self.running = None;
    }
}

/// What a log file in a run directory holds from `offset` on (its last MiB at most).
pub(crate) fn log_since(path: &Path, offset: u64) -> String {
    use std::io::Seek;
    let mut bytes = Vec::new();
    let read = sys::untrusted::open_read(path).and_then(|mut file| {
        let len = file.metadata()?.len();
        file.seek(io::SeekFrom::Start(offset.max(len.saturating_sub(1 << 20))))?;
        file.read_to_end(&mut bytes)
    });
    if let Err(e) = read {
        tracing::debug!(log = %path.display(), "reading the server's log: {e}");
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// An SQL string literal: backslashes, quotes and NUL escaped, as the default `sql_mode`
/// reads them.
pub(crate) fn sql_literal(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\0' => out.push_str("\\0"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// An identifier in backquotes (a backquote doubled).
pub(crate) fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

pub(crate) fn from_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use engine::User;

    use super::*;

    fn spec(listen: &[&str]) -> InstanceSpec {
        InstanceSpec {
            version: "10.11".into(),
            data_dir: "/srv/clones/a/data".into(),
            run_dir: "/srv/run/a".into(),
            port: 9301,
            listen: listen.iter().map(|a| a.parse::<IpAddr>().unwrap()).collect(),
            remote_clients: false,
            user: User::lookup("root").unwrap(),
            superuser: "root".into(),
            label: "thinclone-a".into(),
            memory: Some("64MB".into()),
            read_only: false,
        }
    }

    #[test]
    fn every_setting_is_on_the_command_line() {
        let a = args(&spec(&["127.0.0.1", "::1"]), Role::Clone);
        assert_eq!(a[0], "--no-defaults", "it must come first");
        assert!(a.windows(2).any(|w| w[0] == "--datadir" && w[1] == "/srv/clones/a/data"), "{a:?}");
        for want in [
            "--socket=/srv/run/a/mariadbd.sock",
            "--pid-file=/srv/run/a/mariadbd.pid",
            "--port=9301",
            "--bind-address=127.0.0.1,::1",
            "--innodb-buffer-pool-size=64M",
            "--secure-file-priv=/srv/run/a/files",
            "--skip-slave-start",
            "--innodb-temp-data-file-path=/srv/run/a/ibtmp1:1M:autoextend",
        ] {
            assert!(a.iter().any(|x| x == want), "{want} missing from {a:?}");
        }
        assert!(!a.iter().any(|x| x == "--skip-grant-tables"));
        let a = args(&spec(&[]), Role::Clone);
        assert!(a.iter().any(|x| x == "--skip-networking") && !a.iter().any(|x| x.starts_with("--bind-address")));
        let a = args(&spec(&[]), Role::Prepare);
        for want in ["--skip-networking", "--skip-grant-tables", "--innodb-fast-shutdown=0"] {
            assert!(a.iter().any(|x| x == want), "{want} missing from {a:?}");
        }
    }

    #[test]
    fn memory_sizes_are_written_as_mariadb_reads_them() {
        assert_eq!(buffer_pool(None), "64M");
        assert_eq!(buffer_pool(Some("128MB")), "128M");
        assert_eq!(buffer_pool(Some("1GB")), "1G");
        assert_eq!(buffer_pool(Some("512kB")), "512K");
        assert_eq!(buffer_pool(Some("268435456")), "268435456");
    }

    #[test]
    fn literals_and_hashes() {
        assert_eq!(sql_literal("it's a\\b"), "'it\\'s a\\\\b'");
        assert_eq!(quote_ident("a`b"), "`a``b`");
        // The hash MariaDB's PASSWORD('password') gives.
        assert_eq!(native_hash(&Secret::new("password")), "*2470C0C06DEE42FD1618BB99005ADCA2EC9D1E19");
        assert_eq!(from_hex("6d7973716c").unwrap(), b"mysql");
    }
}
