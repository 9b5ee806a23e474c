//! Running a PostgreSQL server on a data directory: the settings an instance runs with, its
//! run directory, start with a readiness wait, adoption of a server an earlier process left
//! running, SQL over its private socket, passwords, and stop.
//!
//! Everything a server needs besides its data directory lives in its *run directory*,
//! owned by the server's OS user with mode 0700:
//!
//! ```text
//! pg_hba.conf        who may connect: on the socket only this process's OS user (root, or
//!                    the agent's user), as the superuser (peer, map=thinclone); SCRAM over TCP
//! pg_ident.conf      the map: this process's OS user to the superuser, nobody else
//! postgresql.conf    empty, only for images that have none (Debian keeps it in /etc)
//! postgres.log       the server's stderr
//! postgres.pid       its pid (external_pid_file)
//! .s.PGSQL.<port>    its socket, reachable only by its OS user and root
//! ```
//!
//! Every setting is given on the `postgres` command line, where it wins over the image's
//! `postgresql.conf` and `postgresql.auto.conf`. Nothing is written into the data directory,
//! except that a stale `postmaster.pid` is removed before a start.
//!
//! The server's OS user (a clone's own uid) can change both directories, since its
//! superuser runs programs as it (`COPY … TO PROGRAM`). So this process touches their files
//! only through [`sys::untrusted`] (no symlink, FIFO or hard link is followed), and before it
//! runs SQL over the socket it checks that the server answering is this one (its data
//! directory and port): a socket swapped for a link to another clone's must not get the
//! statement, nor the password set with it.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use engine::{Error, InstanceSpec, Result, Secret};
use sys::Program;

use crate::datadir::{live_postmaster, pid_file_says_ready, Major};
use crate::install::Installation;
use crate::ENGINE_NAME;

/// The main memory cache of an instance whose spec names none.
const DEFAULT_SHARED_BUFFERS: &str = "64MB";
/// How long an immediate shutdown (SIGQUIT) may take before SIGKILL.
const IMMEDIATE_SHUTDOWN: Duration = Duration::from_secs(10);
/// How long a statement run by [`Server::sql`] may take.
const SQL_TIMEOUT: Duration = Duration::from_secs(600);
/// How often a wait looks again.
const POLL: Duration = Duration::from_millis(10);
/// How often a starting server's pid file is read to see it ready: a start takes some
/// 50–100 ms, and every millisecond of it is a clone's time to ready.
const READY_POLL: Duration = Duration::from_millis(2);

/// What a server is started for; a few settings differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// A clone, or any instance the engine's callers start.
    Clone,
    /// The server that prepares an image: the image it leaves keeps no recycled WAL.
    Prepare,
}

/// The `-c name=value` settings an instance runs with. They make a clone cheap and
/// harmless: no archiving or replication towards the source, no TLS files it may lack, its
/// own authentication, logs and pid file outside the data directory, statistics files
/// inside it, WAL settings that keep a fresh clone to a few hundred KiB of writes, and
/// behaviour on a full disk that a supervisor can see (doc/ENGINE-POSTGRESQL.md):
///
/// - `wal_init_zero=on`: a new WAL segment is written with zeros as it is made, so its
///   space is taken then, where running out is an ERROR (a failed checkpoint, retried)
///   unless a transaction is waiting for the segment. With it off, a segment is a sparse
///   file whose space is taken by each WAL write, or only at `fdatasync` through a
///   writeback cache, and a WAL write or sync that fails is always a PANIC.
/// - `wal_recycle=on`: old segments are renamed for reuse, so a clone that has written its
///   first few segments needs no new space for WAL at all.
/// - `restart_after_crash=off`: after a PANIC the server exits instead of running crash
///   recovery and failing again in a loop; whoever supervises it sees it gone and starts it
///   again once there is room (recovery then runs, nothing committed is lost).
/// - `data_sync_retry=off`, the default, given so that no image's configuration turns it on:
///   retrying a failed fsync of a data file can lose writes on Linux; a PANIC and crash
///   recovery from WAL cannot.
pub(crate) fn settings(
    spec: &InstanceSpec,
    major: Major,
    needs_config_file: bool,
    role: Role,
) -> Vec<(&'static str, String)> {
    let run = |name: &str| spec.run_dir.join(name).display().to_string();
    // Each address as given: 0.0.0.0 and :: are PostgreSQL's own wildcards, and nothing
    // else listens on every address. An empty list means no TCP at all.
    let listen: Vec<String> = spec.listen.iter().map(ToString::to_string).collect();
    let mut s: Vec<(&'static str, String)> = vec![
        // With -D, a `data_directory` in the image's postgresql.conf would send the server
        // to another directory; the command line wins.
        ("data_directory", spec.data_dir.display().to_string()),
        ("port", spec.port.to_string()),
        ("listen_addresses", listen.join(",")),
        ("unix_socket_directories", spec.run_dir.display().to_string()),
        ("unix_socket_permissions", "0700".into()),
        ("hba_file", run("pg_hba.conf")),
        ("ident_file", run("pg_ident.conf")),
        ("external_pid_file", run("postgres.pid")),
        ("cluster_name", spec.label.clone()),
        ("ssl", "off".into()),
        ("logging_collector", "off".into()),
        ("log_destination", "stderr".into()),
        ("archive_mode", "off".into()),
        ("archive_command", String::new()),
        ("max_wal_senders", "0".into()),
        ("max_replication_slots", "0".into()),
        ("shared_buffers", spec.memory.clone().unwrap_or_else(|| DEFAULT_SHARED_BUFFERS.into())),
        ("min_wal_size", "32MB".into()),
        ("max_wal_size", "256MB".into()),
        ("restart_after_crash", "off".into()),
    ];
    if major < Major(15) {
        // The statistics collector's files, which an image's configuration may send to a
        // directory outside it that every clone would share: the default, inside.
        s.push(("stats_temp_directory", "pg_stat_tmp".into()));
    }
    if major >= Major(12) {
        // Settings of recovery.conf before 12; prepare removes that file.
        s.extend([
            ("restore_command", String::new()),
            ("primary_conninfo", String::new()),
            ("primary_slot_name", String::new()),
            ("wal_init_zero", "on".into()),
            ("wal_recycle", if role == Role::Prepare { "off" } else { "on" }.into()),
            ("data_sync_retry", "off".into()),
        ]);
    }
    if needs_config_file {
        s.push(("config_file", run("postgresql.conf")));
    }
    s
}

/// The name of the ident map in `pg_ident.conf`.
const IDENT_MAP: &str = "thinclone";

/// The run directory's `pg_hba.conf`. On the local socket, peer authentication through the
/// `thinclone` map ([`ident`]): only the OS user of the process that runs the engine (root,
/// or the agent's user) gets in, and only as the superuser; every other local user or
/// process, the server's own OS user included, is refused. TCP needs a password checked
/// with SCRAM, from loopback only unless the spec lets other hosts in.
pub(crate) fn hba(remote_clients: bool) -> String {
    let mut text = format!(
        "# Written by thinclone for this instance: who may connect, and how.\n\
         local all all peer map={IDENT_MAP}\n\
         host all all 127.0.0.1/32 scram-sha-256\n\
         host all all ::1/128 scram-sha-256\n",
    );
    if remote_clients {
        text.push_str("host all all 0.0.0.0/0 scram-sha-256\nhost all all ::/0 scram-sha-256\n");
    }
    text
}

/// The run directory's `pg_ident.conf`: the `thinclone` map lets root, and this process's
/// own OS user when it is not root, log in as `superuser` over the socket. Nobody else is
/// mapped; with no superuser known yet (an image being prepared), nobody at all.
pub(crate) fn ident(superuser: &str) -> String {
    let mut text = String::from("# Written by thinclone for this instance: who may use the socket, as whom.\n");
    if superuser.is_empty() {
        return text;
    }
    let me = sys::User::current();
    let mut os_users = vec!["root".to_owned()];
    if !me.is_root() {
        os_users.push(me.name);
    }
    for os_user in os_users {
        text.push_str(&format!("{IDENT_MAP} {} {}\n", hba_quote(&os_user), hba_quote(superuser)));
    }
    text
}

/// A name as a double-quoted token of `pg_hba.conf` or `pg_ident.conf` (a `"` is doubled).
fn hba_quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Creates or refreshes the run directory and its files, private to the spec's user. Every
/// file is written afresh through [`sys::untrusted`]: whatever the server's OS user left in
/// its place (a symlink to a file of root's) is replaced, never written through.
pub(crate) fn write_run_dir(spec: &InstanceSpec, needs_config_file: bool) -> Result<()> {
    let dir = &spec.run_dir;
    fs::create_dir_all(dir)?;
    let root = sys::user::running_as_root();
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    if root {
        std::os::unix::fs::lchown(dir, Some(spec.user.uid), Some(spec.user.gid))?;
    }
    let owner = root.then_some((spec.user.uid, spec.user.gid));
    sys::untrusted::replace(&dir.join("pg_hba.conf"), hba(spec.remote_clients).as_bytes(), 0o600, owner)?;
    sys::untrusted::replace(&dir.join("pg_ident.conf"), ident(&spec.superuser).as_bytes(), 0o600, owner)?;
    if needs_config_file {
        sys::untrusted::replace(
            &dir.join("postgresql.conf"),
            b"# Empty: the image has no postgresql.conf.\n",
            0o600,
            owner,
        )?;
    }
    let log = dir.join("postgres.log");
    let file = match sys::untrusted::open_append(&log, 0o600) {
        // Not a plain file (a symlink, a FIFO): replaced by an empty log.
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            tracing::warn!(log = %log.display(), "replacing the server's log: {e}");
            sys::untrusted::replace(&log, b"", 0o600, None)?;
            sys::untrusted::open_append(&log, 0o600)?
        }
        other => other?,
    };
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
    }
    Ok(())
}

/// Whether the server of this data directory needs its configuration file from the run
/// directory.
pub(crate) fn needs_config_file(data_dir: &Path) -> bool {
    !data_dir.join("postgresql.conf").exists()
}

/// A server's process while it is ours to stop.
#[derive(Debug)]
enum Running {
    /// Started by this process: our child, reaped by us.
    Child(sys::Process),
    /// Started by an earlier process and adopted: watched through `/proc` and stopped by
    /// signals, each sent only after checking that the pid still serves our data directory.
    Adopted(i32),
}

/// A running PostgreSQL server. Dropping it shuts the server down at once (immediate
/// shutdown, then SIGKILL) and waits for it, unless it was detached: a failed operation
/// never leaves a server running on a directory about to be deleted.
#[derive(Debug)]
pub(crate) struct Server {
    pid: u32,
    /// `None` once it has exited (and, if our child, been reaped: its pid may then belong
    /// to another process), or was detached.
    running: Option<Running>,
    data_dir: PathBuf,
    run_dir: PathBuf,
    port: u16,
    superuser: String,
    installation: Installation,
}

/// Starts a server as `spec` says and waits until it accepts connections.
/// A read-only server is a hot standby with nothing to follow: `standby.signal` in its data
/// directory makes it replay the log it has (crash recovery), then serve reads and refuse
/// every write ("cannot execute … in a read-only transaction"), whatever the role asking;
/// `default_transaction_read_only` could be turned off by a superuser. A writable start
/// removes the file.
fn set_read_only(spec: &InstanceSpec) -> Result<()> {
    let signal = spec.data_dir.join("standby.signal");
    if spec.read_only {
        fs::write(&signal, b"")?;
        std::os::unix::fs::chown(&signal, Some(spec.user.uid), Some(spec.user.gid))?;
        fs::set_permissions(&signal, fs::Permissions::from_mode(0o600))?;
    } else {
        match fs::remove_file(&signal) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
    }
    Ok(())
}

pub(crate) fn start(installation: &Installation, spec: &InstanceSpec, timeout: Duration) -> Result<Server> {
    start_as(installation, spec, timeout, Role::Clone)
}

/// Starts a server for `role`, as [`start`] does.
pub(crate) fn start_as(
    installation: &Installation,
    spec: &InstanceSpec,
    timeout: Duration,
    role: Role,
) -> Result<Server> {
    start_with(installation, spec, timeout, role, &[])
}

/// Starts a server for `role` with `extra` settings after (and so winning over) its own, as
/// [`start`] does: the recovery of a backup to a target (`restore.rs`).
pub(crate) fn start_with(
    installation: &Installation,
    spec: &InstanceSpec,
    timeout: Duration,
    role: Role,
    extra: &[(&'static str, String)],
) -> Result<Server> {
    if let Some(pid) = live_postmaster(&spec.data_dir) {
        return Err(Error::InUse(format!(
            "a {ENGINE_NAME} server (pid {pid}) is already running on {}",
            spec.data_dir.display()
        )));
    }
    // The lock of a server that is gone. PostgreSQL would refuse to start if its pid now
    // belongs to another process, as it may after a reboot.
    match fs::remove_file(spec.data_dir.join("postmaster.pid")) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e.into()),
        _ => {}
    }
    set_read_only(spec)?;
    let config_file = needs_config_file(&spec.data_dir);
    write_run_dir(spec, config_file)?;
    let log = spec.run_dir.join("postgres.log");
    let log_start = fs::symlink_metadata(&log).map_or(0, |m| m.len());
    let mut program = Program::new(installation.program("postgres"))
        .arg("-D")
        .arg(&spec.data_dir)
        .user(&spec.user)
        .cwd(&spec.run_dir)
        // A Ctrl-C meant for us must not reach it, and a server left running on purpose
        // (detached) outlives us.
        .own_process_group();
    for (name, value) in settings(spec, installation.major, config_file, role).into_iter().chain(extra.iter().cloned())
    {
        program = program.arg("-c").arg(format!("{name}={value}"));
    }
    let process = program.spawn_logged(&log)?;
    let mut server = Server {
        pid: process.pid(),
        running: Some(Running::Child(process)),
        data_dir: spec.data_dir.clone(),
        run_dir: spec.run_dir.clone(),
        port: spec.port,
        superuser: spec.superuser.clone(),
        installation: installation.clone(),
    };
    // On failure, dropping `server` stops whatever is left of it.
    server.wait_ready(timeout, log_start)?;
    Ok(server)
}

/// The server of `spec` that an earlier process started and left running, if it is there,
/// serves this data directory, and accepts connections.
pub(crate) fn adopt(installation: &Installation, spec: &InstanceSpec) -> Option<Server> {
    let candidates = [spec.run_dir.join("postgres.pid"), spec.data_dir.join("postmaster.pid")];
    let pid = candidates.iter().filter_map(|f| sys::procfs::read_pid(f)).find(|&pid| {
        sys::procfs::is_live_process_of(pid, &spec.data_dir) && pid_file_says_ready(&spec.data_dir, pid)
    })?;
    Some(Server {
        pid: pid as u32,
        running: Some(Running::Adopted(pid)),
        data_dir: spec.data_dir.clone(),
        run_dir: spec.run_dir.clone(),
        port: spec.port,
        superuser: spec.superuser.clone(),
        installation: installation.clone(),
    })
}

/// Stops a postmaster on `spec`'s data directory that nobody holds: found by its pid files
/// or, when a crash came before it wrote them, by its command line. An immediate shutdown
/// (SIGQUIT) makes it end its children before it exits; SIGKILL follows if it must.
pub(crate) fn stop_stray(spec: &InstanceSpec) -> Result<bool> {
    let pid_files = [spec.run_dir.join("postgres.pid"), spec.data_dir.join("postmaster.pid")];
    let from_files = pid_files
        .iter()
        .filter_map(|f| sys::procfs::read_pid(f))
        .filter(|&pid| sys::procfs::is_live_process_of(pid, &spec.data_dir));
    let by_command_line = sys::procfs::processes_under(&spec.data_dir).into_iter().filter(|&pid| {
        sys::procfs::cmdline(pid).is_some_and(|args| {
            let is_postmaster = args.first().and_then(|p| Path::new(p).file_name()).is_some_and(|n| n == "postgres");
            let data_dir = spec.data_dir.to_string_lossy();
            is_postmaster && args.windows(2).any(|w| w[0] == "-D" && w[1] == data_dir)
        })
    });
    let mut pids: Vec<i32> = from_files.chain(by_command_line).collect();
    pids.sort_unstable();
    pids.dedup();
    for &pid in &pids {
        tracing::info!(pid, data_dir = %spec.data_dir.display(), "stopping a server left running");
        // Each signal only after checking that the pid still serves this data directory.
        let signal = |signal: i32| {
            if sys::procfs::is_live_process_of(pid, &spec.data_dir) {
                // SAFETY: kill has no memory-safety preconditions; the pid was just checked.
                unsafe { libc::kill(pid, signal) };
            }
        };
        let gone = |timeout: Duration| {
            sys::wait::until(timeout, POLL, || (!sys::procfs::is_live_process_of(pid, &spec.data_dir)).then_some(()))
                .is_some()
        };
        // Its children (backends, checkpointer…) may outlive it by a moment, or for good if
        // it dies by SIGKILL: they are waited for too, and killed if they linger.
        let children = sys::procfs::children_of(pid);
        signal(libc::SIGQUIT);
        if !gone(IMMEDIATE_SHUTDOWN) {
            signal(libc::SIGKILL);
            if !gone(Duration::from_secs(60)) {
                return Err(Error::Other(format!(
                    "postgres (pid {pid}) on {} did not exit after SIGKILL",
                    spec.data_dir.display()
                )));
            }
        }
        let lingering = || children.iter().copied().filter(|&c| sys::procfs::is_alive(c)).collect::<Vec<_>>();
        if sys::wait::until(Duration::from_secs(10), POLL, || lingering().is_empty().then_some(())).is_none() {
            for child in lingering() {
                // Only what still calls itself a server process ("postgres: …"): a pid that was
                // reaped and reused meanwhile belongs to something else.
                let still_ours = sys::procfs::cmdline(child)
                    .and_then(|args| args.into_iter().next())
                    .is_some_and(|first| first.starts_with("postgres"));
                if still_ours {
                    // SAFETY: kill has no memory-safety preconditions; checked just above.
                    unsafe { libc::kill(child, libc::SIGKILL) };
                }
            }
        }
    }
    Ok(!pids.is_empty())
}

impl Server {
    fn wait_ready(&mut self, timeout: Duration, log_start: u64) -> Result<()> {
        // Line 8 of postmaster.pid says "ready" once the server accepts connections
        // ("standby" for a standby that will not).
        self.wait_for(timeout, log_start, READY_POLL, pid_file_says_ready)
    }

    /// Waits until a server in archive recovery has promoted (its `recovery.signal` is gone
    /// and it accepts connections), or fails with its log if it exits first.
    pub(crate) fn wait_promoted(&mut self, timeout: Duration, log_start: u64) -> Result<()> {
        self.wait_for(timeout, log_start, POLL, |data_dir, pid| {
            !data_dir.join("recovery.signal").exists()
                && crate::datadir::read_pid_file(data_dir).is_some_and(|text| {
                    text.lines().nth(7).map(str::trim) == Some("ready")
                        && text.lines().next().map(str::trim) == Some(&pid.to_string())
                })
        })
    }

    fn wait_for(
        &mut self,
        timeout: Duration,
        log_start: u64,
        poll: Duration,
        ready: impl Fn(&Path, i32) -> bool,
    ) -> Result<()> {
        let pid = self.pid as i32;
        let data_dir = self.data_dir.clone();
        let outcome = sys::wait::until(timeout, poll, || {
            if ready(&data_dir, pid) {
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
                program: format!("postgres on {}", self.data_dir.display()),
                status: status.to_string(),
                stderr: self.log_since(log_start),
            }
            .into()),
            Some(Err(e)) => Err(e.into()),
            None => Err(Error::Other(format!(
                "postgres on {} did not accept connections within {} s; its log ends with:\n{}",
                self.data_dir.display(),
                timeout.as_secs(),
                self.log_since(log_start)
            ))),
        }
    }

    /// The last lines the server logged since `offset`, for error messages.
    fn log_since(&self, offset: u64) -> String {
        let text = log_since(&self.run_dir.join("postgres.log"), offset);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Its exit status, if it has exited. An adopted server that is gone reports success:
    /// its parent, not we, learns how it ended. Once it has exited, it is no longer ours.
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

    /// Waits up to `timeout` for it to exit; whether it did.
    fn wait_gone(&mut self, timeout: Duration) -> io::Result<bool> {
        Ok(sys::wait::until(timeout, POLL, || self.try_wait().transpose()).transpose()?.is_some())
    }

    /// Shuts it down: fast (SIGINT: sessions end, a checkpoint is written) if `fast` gives
    /// that a time limit, then immediate (SIGQUIT: the next start runs crash recovery,
    /// nothing committed is lost), then SIGKILL. Returns whether the first way it tried
    /// was enough.
    fn shut_down(&mut self, fast: Option<Duration>) -> io::Result<bool> {
        if let Some(timeout) = fast {
            self.signal(libc::SIGINT);
            if self.wait_gone(timeout)? {
                return Ok(true);
            }
        }
        self.signal(libc::SIGQUIT);
        if self.wait_gone(IMMEDIATE_SHUTDOWN)? {
            return Ok(fast.is_none());
        }
        self.signal(libc::SIGKILL);
        if !self.wait_gone(Duration::from_secs(60))? {
            return Err(io::Error::other(format!(
                "postgres on {} did not exit after SIGKILL",
                self.data_dir.display()
            )));
        }
        Ok(false)
    }

    /// Stops it cleanly, or at once after `timeout`. Returns whether it stopped cleanly.
    pub(crate) fn stop_within(mut self, timeout: Duration) -> Result<bool> {
        let clean = self.shut_down(Some(timeout))?;
        if !clean {
            tracing::warn!(data_dir = %self.data_dir.display(), "postgres did not stop within {} s; stopped at once", timeout.as_secs());
        }
        self.running = None;
        Ok(clean)
    }

    /// A psql that connects as the superuser to `database` over the private socket, as this
    /// process's own OS user (the one the socket's ident map lets in), and runs `sql` only
    /// after checking that the server is this one: the socket is in a directory the server's
    /// OS user can change, and a link there to another server's socket must not get it.
    fn psql(&self, database: &str, sql: &str) -> Program {
        let conninfo = self.conninfo(database);
        // Its own command: a statement that may not run in a transaction block (CREATE
        // DATABASE) cannot share a query string. ON_ERROR_STOP ends psql if it fails.
        Program::new(self.installation.program("psql"))
            .args([
                "-X",
                "-A",
                "-t",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                &conninfo,
                "-c",
                &self.identity_check(),
                "-c",
                sql,
            ])
            .timeout(SQL_TIMEOUT)
    }

    /// A statement that fails unless the server it runs on is this one (see [`Self::psql`]).
    fn identity_check(&self) -> String {
        let data_dir: PathBuf = self.data_dir.components().collect();
        format!(
            "DO $thinclone$ BEGIN \
               IF rtrim(current_setting('data_directory'), '/') <> rtrim({dir}, '/') \
                  OR current_setting('port') <> '{port}' THEN \
                 RAISE EXCEPTION 'the server on this socket is not the one of %: its socket was replaced', {dir}; \
               END IF; \
             END $thinclone$",
            dir = sql_literal(&data_dir.display().to_string()),
            port = self.port
        )
    }

    /// The connection string of the superuser in `database` over the private socket. A
    /// conninfo string rather than a name: a program would read a database name that
    /// contains `=` as connection parameters.
    pub(crate) fn conninfo(&self, database: &str) -> String {
        format!(
            "host={} port={} user={} dbname={}",
            conninfo_quote(&self.run_dir.display().to_string()),
            self.port,
            conninfo_quote(&self.superuser),
            conninfo_quote(database)
        )
    }

    /// Runs SQL as the superuser in `database`; returns psql's unaligned output.
    pub(crate) fn sql_in(&self, database: &str, sql: &str) -> Result<String> {
        let out = self.psql(database, sql).run()?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Runs a script of statements as the superuser in `database`, one at a time as psql
    /// reads them from its input (not its command line: a script may hold secrets), each
    /// in its own transaction unless the script says otherwise; the first error stops it.
    /// Returns the rows every statement printed.
    pub(crate) fn script_in(&self, database: &str, script: &str) -> Result<String> {
        let out =
            self.psql(database, "SELECT 1 WHERE false").args(["-f", "-"]).stdin(script.as_bytes().to_vec()).run()?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.running.is_none() {
            return;
        }
        tracing::debug!(data_dir = %self.data_dir.display(), "stopping postgres at once: its owner let go of it");
        if let Err(e) = self.shut_down(None) {
            tracing::error!(data_dir = %self.data_dir.display(), "stopping postgres: {e}");
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

    /// The server gets a SCRAM verifier computed here, never the password. The verifier
    /// travels in the session's options, sent from this process over the private socket
    /// (wire.rs: no psql to start, at every start of a clone); the statement that uses it
    /// names only the setting, and runs after the check that the server is this one, in
    /// the same transaction.
    fn set_password(&self, user: &str, password: &Secret) -> Result<()> {
        if user.is_empty() || user.contains('\0') {
            return Err(Error::Other(format!("{user:?} is not a database user name")));
        }
        let verifier = postgres_protocol::password::scram_sha_256(password.expose().as_bytes());
        let sql = format!(
            "DO $thinclone$ DECLARE target text := {}; BEGIN \
               IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = target) THEN \
                 RAISE EXCEPTION 'there is no database user named %', quote_ident(target); \
               END IF; \
               EXECUTE format('ALTER ROLE %I PASSWORD %L', target, current_setting('thinclone.password_verifier')); \
             END $thinclone$",
            sql_literal(user)
        );
        let options = format!("-c thinclone.password_verifier={verifier}");
        let socket = self.run_dir.join(format!(".s.PGSQL.{}", self.port));
        crate::wire::simple_query(
            &socket,
            &self.superuser,
            "postgres",
            &[("options", &options)],
            &format!("{}; {sql}", self.identity_check()),
            SQL_TIMEOUT,
        )
    }

    fn sql(&self, sql: &str) -> Result<String> {
        self.sql_in("postgres", sql)
    }

    /// The role first (created, or made a plain login role), with its password as in
    /// `set_password`; then, in each database it does not own yet, what the
    /// bootstrap superuser owns outside the system schemas, and last the database itself,
    /// so that a database it owns is one that is done. Run again, it only sets the password.
    fn make_owner(&self, user: &str, password: &Secret) -> Result<()> {
        if user.is_empty() || user.contains('\0') {
            return Err(Error::Other(format!("{user:?} is not a database user name")));
        }
        let verifier = postgres_protocol::password::scram_sha_256(password.expose().as_bytes());
        let target = sql_literal(user);
        self.psql("postgres", &owner_role_sql(&target))
            .env("PGOPTIONS", format!("-c thinclone.password_verifier={verifier}"))
            .run()?;
        let databases = self.sql_in(
            "postgres",
            &format!(
                "SELECT encode(convert_to(datname, 'UTF8'), 'hex') FROM pg_database \
                 WHERE datallowconn AND NOT datistemplate AND datdba <> (SELECT oid FROM pg_roles WHERE rolname = {target})"
            ),
        )?;
        for hex in databases.lines().filter(|l| !l.is_empty()) {
            let name = crate::prepare::from_hex(hex)
                .ok_or_else(|| Error::Other(format!("psql printed {hex:?} as a database name")))?;
            self.sql_in(&name, &owned_objects_sql(&target))?;
        }
        Ok(())
    }

    fn stop(self: Box<Self>, timeout: Duration) -> Result<()> {
        self.stop_within(timeout).map(drop)
    }

    /// A checkpoint: dirty buffers written and synced, so crash recovery from a copy taken
    /// now replays only the log written after it. Twice: recovery starts at the redo point
    /// of the last one, and clients write on meanwhile, so the first (which writes all that
    /// was dirty, longer for a larger database) leaves the log written during it to replay;
    /// the second writes only what was dirtied during the first, and is short.
    fn flush(&self) -> Result<()> {
        self.sql_in("postgres", "CHECKPOINT")?;
        self.sql_in("postgres", "CHECKPOINT").map(drop)
    }

    fn run_script(&self, database: Option<&str>, script: &str, settings: &[(String, String)]) -> Result<String> {
        let database = database.unwrap_or("postgres");
        let mut text = String::new();
        for (name, value) in settings {
            // A custom setting's name is two identifiers; anything else is refused.
            let valid = name.split('.').count() == 2
                && name.split('.').all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
            if !valid {
                return Err(Error::Other(format!("{name:?} is not a custom setting's name")));
            }
            text.push_str(&format!("SET {name} = {};\n", sql_literal(value)));
        }
        text.push_str(script);
        self.script_in(database, &text)
    }

    fn detach(mut self: Box<Self>) {
        // Dropping a child's handle neither signals nor reaps it.
        self.running = None;
    }
}

/// The statement that makes the role `target` (an SQL literal) a plain login role with the
/// password verifier in the session's `thinclone.password_verifier`. It must not be the
/// bootstrap superuser, and loses what would let it act as a superuser or reach the
/// server's OS user: the superuser and role-making attributes, and membership in superuser
/// roles and in the roles that read or write the server's files or run its programs.
fn owner_role_sql(target: &str) -> String {
    format!(
        "DO $thinclone$ DECLARE target text := {target}; r record; BEGIN \
           IF EXISTS (SELECT FROM pg_roles WHERE rolname = target AND oid = 10) THEN \
             RAISE EXCEPTION '% is the image''s bootstrap superuser; the owner must be another role', quote_ident(target); \
           END IF; \
           IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = target) THEN \
             EXECUTE format('CREATE ROLE %I', target); \
           END IF; \
           EXECUTE format('ALTER ROLE %I LOGIN NOSUPERUSER NOCREATEROLE CREATEDB NOREPLICATION NOBYPASSRLS PASSWORD %L', \
                          target, current_setting('thinclone.password_verifier')); \
           FOR r IN SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid \
                    WHERE m.member = (SELECT oid FROM pg_roles WHERE rolname = target) \
                      AND (g.rolsuper OR g.rolname IN ('pg_read_server_files', 'pg_write_server_files', \
                                                       'pg_execute_server_program')) LOOP \
             EXECUTE format('REVOKE %I FROM %I', r.rolname, target); \
           END LOOP; \
           FOR r IN SELECT g.rolname FROM pg_roles g \
                    WHERE (g.rolsuper OR g.rolname IN ('pg_read_server_files', 'pg_write_server_files', \
                                                      'pg_execute_server_program')) \
                      AND g.rolname <> target AND pg_has_role(target, g.oid, 'MEMBER') LOOP \
             RAISE EXCEPTION '% is a member of % through another role; it cannot be a plain owner', \
               quote_ident(target), quote_ident(r.rolname); \
           END LOOP; \
         END $thinclone$"
    )
}

/// The statement that gives the role `target` (an SQL literal) what the bootstrap superuser
/// owns in the current database outside the system schemas (schemas, tables, views,
/// materialized views, foreign tables, sequences, routines, domains and types; objects of
/// extensions stay with their extension, and a sequence of a column goes with its table),
/// and then the database. An object that cannot
/// change owner is left with a warning rather than fail the clone.
fn owned_objects_sql(target: &str) -> String {
    let user_schema = "n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') \
         AND n.nspname NOT LIKE 'pg\\_temp\\_%' AND n.nspname NOT LIKE 'pg\\_toast\\_temp\\_%'";
    let not_extension = |catalog: &str, oid: &str| {
        format!(
            "NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = '{catalog}'::regclass AND d.objid = {oid} \
             AND d.deptype = 'e')"
        )
    };
    format!(
        "DO $thinclone$ DECLARE target text := {target}; r record; statement text; BEGIN \
           FOR r IN \
             SELECT format('ALTER SCHEMA %I OWNER TO %I', n.nspname, target) AS s, 0 AS o FROM pg_namespace n \
               WHERE n.nspowner = 10 AND {user_schema} AND {ns_ext} \
             UNION ALL \
             SELECT format('ALTER %s %s OWNER TO %I', CASE c.relkind WHEN 'v' THEN 'VIEW' \
                      WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'f' THEN 'FOREIGN TABLE' WHEN 'S' THEN 'SEQUENCE' \
                      ELSE 'TABLE' END, c.oid::regclass, target), CASE c.relkind WHEN 'S' THEN 2 ELSE 1 END \
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
               WHERE c.relowner = 10 AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') AND {user_schema} AND {rel_ext} \
                 AND NOT (c.relkind = 'S' AND EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_class'::regclass \
                          AND d.objid = c.oid AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i'))) \
             UNION ALL \
             SELECT format('ALTER %s %s OWNER TO %I', CASE WHEN EXISTS (SELECT FROM pg_aggregate a WHERE a.aggfnoid = p.oid) \
                      THEN 'AGGREGATE' WHEN current_setting('server_version_num')::int >= 110000 THEN 'ROUTINE' \
                      ELSE 'FUNCTION' END, p.oid::regprocedure, target), 3 \
               FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
               WHERE p.proowner = 10 AND {user_schema} AND {proc_ext} \
             UNION ALL \
             SELECT format('ALTER %s %s OWNER TO %I', CASE t.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END, \
                      t.oid::regtype, target), 4 \
               FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace \
               WHERE t.typowner = 10 AND {user_schema} AND {type_ext} \
                 AND (t.typtype IN ('d', 'e', 'r') \
                      OR (t.typtype = 'c' AND (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c')) \
             ORDER BY 2 \
           LOOP \
             BEGIN \
               EXECUTE r.s; \
             EXCEPTION WHEN OTHERS THEN \
               RAISE WARNING 'thinclone: % failed: %', r.s, SQLERRM; \
             END; \
           END LOOP; \
           EXECUTE format('ALTER DATABASE %I OWNER TO %I', current_database(), target); \
         END $thinclone$",
        ns_ext = not_extension("pg_namespace", "n.oid"),
        rel_ext = not_extension("pg_class", "c.oid"),
        proc_ext = not_extension("pg_proc", "p.oid"),
        type_ext = not_extension("pg_type", "t.oid"),
    )
}

/// What a log file in a run directory holds from `offset` on (empty when it cannot be read,
/// or is not a plain file).
pub(crate) fn log_since(path: &Path, offset: u64) -> String {
    use std::io::{Read, Seek};
    let mut bytes = Vec::new();
    let read = sys::untrusted::open_read(path).and_then(|mut file| {
        file.seek(io::SeekFrom::Start(offset))?;
        // The end of a long log is what matters.
        let len = file.metadata()?.len();
        if len > offset + (1 << 20) {
            file.seek(io::SeekFrom::Start(len - (1 << 20)))?;
        }
        file.read_to_end(&mut bytes)
    });
    if let Err(e) = read {
        tracing::debug!(log = %path.display(), "reading the server's log: {e}");
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// A value for a libpq conninfo string: single-quoted, with `\` and `'` escaped.
fn conninfo_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// An SQL string literal, right whatever `standard_conforming_strings` says (as libpq's
/// `PQescapeLiteral` writes it).
pub(crate) fn sql_literal(value: &str) -> String {
    let quoted = value.replace('\'', "''");
    if value.contains('\\') {
        format!("E'{}'", quoted.replace('\\', "\\\\"))
    } else {
        format!("'{quoted}'")
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use engine::User;

    use super::*;

    fn spec(listen: &[&str], remote_clients: bool) -> InstanceSpec {
        InstanceSpec {
            version: "15".into(),
            data_dir: "/srv/clones/a/data".into(),
            run_dir: "/srv/run/a".into(),
            port: 7001,
            listen: listen.iter().map(|a| a.parse::<IpAddr>().unwrap()).collect(),
            remote_clients,
            user: User::lookup("root").unwrap(),
            superuser: "alice".into(),
            label: "clone-a".into(),
            memory: None,
            read_only: false,
        }
    }

    fn setting<'a>(s: &'a [(&str, String)], name: &str) -> Option<&'a str> {
        s.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn listen_addresses_are_exactly_the_ones_given() {
        let s = settings(&spec(&[], false), Major(15), false, Role::Clone);
        assert_eq!(setting(&s, "listen_addresses"), Some(""));
        let s = settings(&spec(&["127.0.0.1", "::1"], false), Major(15), false, Role::Clone);
        assert_eq!(setting(&s, "listen_addresses"), Some("127.0.0.1,::1"));
        let s = settings(&spec(&["0.0.0.0"], true), Major(15), false, Role::Clone);
        assert_eq!(setting(&s, "listen_addresses"), Some("0.0.0.0"));
        assert_eq!(setting(&s, "cluster_name"), Some("clone-a"));
        assert_eq!(setting(&s, "shared_buffers"), Some("64MB"));
        assert_eq!(setting(&s, "config_file"), None);
        assert_eq!(setting(&s, "data_directory"), Some("/srv/clones/a/data"));
        assert_eq!(setting(&s, "hba_file"), Some("/srv/run/a/pg_hba.conf"));
        let s = settings(&spec(&[], false), Major(11), true, Role::Clone);
        assert_eq!(setting(&s, "config_file"), Some("/srv/run/a/postgresql.conf"));
        assert_eq!(setting(&s, "wal_init_zero"), None, "PostgreSQL 11 has no wal_init_zero");
        assert_eq!(setting(&s, "stats_temp_directory"), Some("pg_stat_tmp"));
    }

    /// The settings that decide what a full disk does (doc/ENGINE-POSTGRESQL.md).
    #[test]
    fn full_disk_settings() {
        let s = settings(&spec(&[], false), Major(15), false, Role::Clone);
        for (name, value) in
            [("wal_init_zero", "on"), ("wal_recycle", "on"), ("restart_after_crash", "off"), ("data_sync_retry", "off")]
        {
            assert_eq!(setting(&s, name), Some(value), "{name}");
        }
        assert_eq!(setting(&s, "stats_temp_directory"), None, "PostgreSQL 15 has no stats_temp_directory");
        let s = settings(&spec(&[], false), Major(15), false, Role::Prepare);
        assert_eq!(setting(&s, "wal_recycle"), Some("off"));
    }

    #[test]
    fn remote_clients_need_a_password() {
        let local = hba(false);
        assert!(!local.contains("0.0.0.0/0") && !local.contains("::/0"), "{local}");
        let remote = hba(true);
        assert!(remote.contains("host all all 0.0.0.0/0 scram-sha-256"), "{remote}");
        assert!(remote.contains("host all all ::/0 scram-sha-256"), "{remote}");
        for line in remote.lines().filter(|l| l.starts_with("host")) {
            assert!(line.ends_with("scram-sha-256"), "{line}");
        }
    }

    #[test]
    fn literals_are_quoted() {
        assert_eq!(sql_literal("alice"), "'alice'");
        assert_eq!(sql_literal("o'neil"), "'o''neil'");
        assert_eq!(sql_literal("a\\b'c"), "E'a\\\\b''c'");
        assert_eq!(conninfo_quote("it's a\\b"), "'it\\'s a\\\\b'");
    }
}
