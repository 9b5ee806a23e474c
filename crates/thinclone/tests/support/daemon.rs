//! A real `thinclone serve` for the integration tests, driven through the real CLI and the
//! typed client: start it on a data directory, learn its URL from its stderr, run
//! `thinclone image|clone … --json` against it (decoded into the `api` types), kill it with
//! SIGKILL and start it again on the same data directory. Also the shared pgbench source
//! database, `psql` over a clone's URL, and a census of what a server left behind
//! (processes and mounts under its data directory).

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::pg;

/// How long a daemon may take from its start to the `listening` line: recovery brings every
/// ready clone back before the API opens.
const START_TIMEOUT: Duration = Duration::from_secs(180);

/// A `thinclone serve` process on one data directory, with an agent channel on a loopback
/// port (so that agents can enroll). Dropping it stops it (SIGTERM, then SIGKILL) and clears
/// anything it left running under its data directory.
pub struct Daemon {
    pub data_dir: PathBuf,
    /// The daemon's stderr, across all its starts.
    pub log: PathBuf,
    pub ports: (u16, u16),
    /// More `thinclone serve` arguments, given at every start.
    pub extra_args: Vec<String>,
    /// The administrator's token, from the file the first start writes.
    pub token: String,
    url: String,
    child: Option<Child>,
    starts: u32,
}

impl Daemon {
    /// Starts a daemon on `data_dir` (created if missing), its clones on ports `ports`
    /// (inclusive). Its stderr goes to `<data_dir>.log`.
    pub fn start(data_dir: &Path, ports: (u16, u16)) -> Daemon {
        Daemon::start_with(data_dir, ports, &[])
    }

    /// Like [`Daemon::start`], with more `thinclone serve` arguments.
    pub fn start_with(data_dir: &Path, ports: (u16, u16), extra_args: &[&str]) -> Daemon {
        let mut log = data_dir.as_os_str().to_owned();
        log.push(".log");
        let mut daemon = Daemon {
            data_dir: data_dir.to_owned(),
            log: PathBuf::from(log),
            ports,
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
            token: String::new(),
            url: String::new(),
            child: None,
            starts: 0,
        };
        daemon.spawn();
        // Images in the tests come from temporary directories.
        for (name, path) in [("tmp", "/tmp"), ("var-tmp", "/var/tmp")] {
            let request = api::CreateSource { name: api::Name::new(name).unwrap(), path: path.into() };
            daemon.client().create_source(&request).unwrap_or_else(|e| panic!("registering {path}: {e}"));
        }
        daemon
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "the daemon is already running");
        self.starts += 1;
        let mut log = fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        writeln!(log, "===== start {} =====", self.starts).unwrap();
        let mut child = Command::new(super::thinclone_bin())
            .arg("serve")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen", "127.0.0.1:0"])
            // An agent channel, so that agents can enroll (`POST /v1/agents/tokens` answers
            // 409 without one); on a port of its own at each start.
            .args(["--channel-listen", "127.0.0.1:0"])
            .arg("--ports")
            .arg(format!("{}-{}", self.ports.0, self.ports.1))
            .args(&self.extra_args)
            .env("THINCLONE_LOG", std::env::var("THINCLONE_TEST_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting thinclone serve");
        // Read stderr until the listening line, and keep draining it into the log afterwards
        // so that the daemon never blocks on a full pipe.
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = writeln!(log, "{line}");
                if let Some(url) = line.strip_prefix("thinclone listening on ") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(url.trim().to_owned());
                    }
                }
            }
        });
        let deadline = Instant::now() + START_TIMEOUT;
        let url = loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(url) => break url,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait().unwrap();
                    panic!("thinclone serve exited ({status}) before listening:\n{}", self.log_tail(40));
                }
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("thinclone serve exited ({status}) before listening:\n{}", self.log_tail(40));
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("thinclone serve did not listen within {START_TIMEOUT:?}:\n{}", self.log_tail(40));
            }
        };
        self.child = Some(child);
        self.url = url;
        self.token = fs::read_to_string(self.data_dir.join("admin.token"))
            .unwrap_or_else(|e| panic!("reading the administrator's token: {e}"))
            .trim()
            .to_owned();
        self.wait_healthy();
    }

    /// Waits until `GET /v1/health` answers 200 with status ok, over plain TCP.
    fn wait_healthy(&mut self) {
        let addr = self.url.trim_start_matches("http://").trim_end_matches('/').to_owned();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let answer = TcpStream::connect(&addr).and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                write!(s, "GET /v1/health HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
                let mut text = String::new();
                s.read_to_string(&mut text)?;
                Ok(text)
            });
            match answer {
                Ok(text) if text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200") => {
                    assert!(text.contains("\"ok\""), "unexpected health answer: {text}");
                    return;
                }
                _ if Instant::now() >= deadline => {
                    panic!("the daemon at {} is not healthy: {answer:?}\n{}", self.url, self.log_tail(40))
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The typed client of this server.
    pub fn client(&self) -> client::Client {
        client::Client::new(&self.url).with_token(Some(self.token.clone()))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A `thinclone ARGS --url URL --json` command, for running in the background.
    pub fn cli_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(super::thinclone_bin());
        cmd.args(args).args(["--url", &self.url, "--json"]);
        cmd.env_remove("THINCLONE_URL")
            .env("THINCLONE_LOG", "warn")
            .env("THINCLONE_TOKEN", &self.token)
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `thinclone ARGS --url URL --json` and returns its whole output.
    pub fn cli_output(&self, args: &[&str]) -> Output {
        self.cli_command(args).output().expect("running the thinclone CLI")
    }

    /// Runs `thinclone ARGS --url URL --json`: its stdout decoded as `T` on success, its
    /// stderr on a non-zero exit.
    pub fn cli<T: DeserializeOwned>(&self, args: &[&str]) -> Result<T, String> {
        let out = self.cli_output(args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        if !out.status.success() {
            return Err(if stderr.is_empty() { format!("exited with {} and no message", out.status) } else { stderr });
        }
        serde_json::from_str(&stdout).map_err(|e| {
            format!("`thinclone {}` printed no JSON of the expected shape ({e}): {stdout}", args.join(" "))
        })
    }

    /// Like [`Daemon::cli`], but a failure panics with the command and the server's log.
    pub fn ok<T: DeserializeOwned>(&self, args: &[&str]) -> T {
        self.cli(args).unwrap_or_else(|e| {
            panic!("`thinclone {}` failed: {e}\n--- server log ---\n{}", args.join(" "), self.log_tail(30))
        })
    }

    /// Like [`Daemon::ok`], as untyped JSON.
    pub fn ok_value(&self, args: &[&str]) -> Value {
        self.ok(args)
    }

    /// Kills the daemon with SIGKILL, as a crash would. Its clones' mounts and servers stay.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("the daemon is not running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Stops the daemon with SIGTERM and waits for it (SIGKILL after 120 s).
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("the daemon did not stop within 120 s of SIGTERM; killing it");
        let _ = child.kill();
        Some(child.wait().unwrap())
    }

    /// Starts the daemon again on the same data directory (stopping it first if it runs).
    pub fn restart(&mut self) {
        if self.child.is_some() {
            let status = self.stop().unwrap();
            assert!(status.success(), "the daemon exited with {status} on SIGTERM");
        }
        self.spawn();
    }

    /// What the daemon has logged since it was last started.
    pub fn log_since_start(&self) -> String {
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        let marker = format!("===== start {} =====", self.starts);
        log.rsplit_once(&marker).map_or(log.clone(), |(_, after)| after.to_owned())
    }

    /// Polls `clone show` until `done` holds, for up to `timeout`; returns the clone then.
    pub fn wait_for_clone(&self, name: &str, timeout: Duration, done: impl Fn(&api::Clone) -> bool) -> api::Clone {
        let deadline = Instant::now() + timeout;
        loop {
            let clone: api::Clone = self.ok(&["clone", "show", name]);
            if done(&clone) {
                return clone;
            }
            assert!(
                Instant::now() < deadline,
                "clone {name} did not get there within {timeout:?}: {clone:?}\n{}",
                self.log_tail(30)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- daemon log ({}) ---\n{}", self.log.display(), self.log_tail(60));
        }
        let _ = self.stop();
        clear_leftovers(&self.data_dir);
    }
}

/// Processes (pid, command line) whose command line names a path under `dir`: the clone
/// servers and cowfs mounts of a daemon on that data directory, or the daemon itself.
pub fn processes_under(dir: &Path) -> Vec<(i32, String)> {
    let needle = dir.display().to_string();
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    let me = std::process::id() as i32;
    entries
        .filter_map(|e| {
            let pid: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
            (pid != me && cmdline.contains(&needle)).then(|| (pid, cmdline.trim().to_owned()))
        })
        .collect()
}

/// Mount points at or under `dir`.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|mp| PathBuf::from(mp.replace("\\040", " ")))
        .filter(|mp| mp.starts_with(dir))
        .collect()
}

/// Stops whatever still runs or is mounted under a data directory: a fast shutdown of the
/// servers, SIGTERM to the mounts, SIGKILL to what is left, and a lazy unmount.
pub fn clear_leftovers(dir: &Path) {
    let procs = processes_under(dir);
    for (pid, cmdline) in &procs {
        let signal = if cmdline.contains("postgres") { libc::SIGINT } else { libc::SIGTERM };
        // SAFETY: sending a signal has no memory-safety preconditions; these are processes
        // our daemon started on our data directory.
        unsafe { libc::kill(*pid, signal) };
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while procs.iter().any(|(pid, _)| sys::procfs::is_alive(*pid)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for (pid, _) in &procs {
        if sys::procfs::is_alive(*pid) {
            // SAFETY: as above.
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
    }
    for mp in mounts_under(dir).iter().rev() {
        let _ = Command::new("umount").arg("-l").arg(mp).status();
    }
}

/// Runs SQL over a libpq URL with the host's `psql` (as whatever user runs the tests), and
/// returns its unaligned, tuples-only output, or its stderr.
pub fn psql(url: &str, sql: &str) -> Result<String, String> {
    let mut cmd = Command::new(pg::bin_dir().unwrap().join("psql"));
    cmd.arg(url).args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql]);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
    let out = cmd.env("PGCONNECT_TIMEOUT", "10").stdin(Stdio::null()).output().expect("running psql");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// The pgbench scale of the shared source: `THINCLONE_TEST_SCALE`, 35 by default (about
/// 525 MB).
pub fn source_scale() -> u32 {
    std::env::var("THINCLONE_TEST_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(35)
}

static SOURCE_WORK: OnceLock<PathBuf> = OnceLock::new();

/// The data directory of a stopped PostgreSQL cluster holding `pgbench -i -s
/// source_scale()`, made once per test binary and shared by its tests, which only read it.
/// It is removed when the test binary exits.
pub fn pgbench_source() -> PathBuf {
    SOURCE_WORK.get_or_init(build_source).join("source")
}

extern "C" fn remove_source() {
    if let Some(work) = SOURCE_WORK.get() {
        let _ = fs::remove_dir_all(work);
    }
}

/// Stops the source server if building the source fails half-way.
struct StopOnDrop<'a>(&'a pg::Server, bool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        if self.1 {
            let _ = pg::command("pg_ctl").arg("-D").arg(&self.0.data).args(["-m", "immediate", "stop"]).output();
        }
    }
}

fn build_source() -> PathBuf {
    // Removed on a failure here; kept, and removed at exit, once it is complete.
    let dir = tempfile::Builder::new().prefix("thinclone-test-source-").tempdir().unwrap();
    let work = dir.path().to_owned();
    fs::set_permissions(&work, fs::Permissions::from_mode(0o755)).unwrap();
    let started = Instant::now();
    let server = pg::Server::new(&work.join("source"), 24_501, &work);
    server.initdb();
    server.start();
    let mut guard = StopOnDrop(&server, true);
    pg::run(server.pgbench().args(["-i", "-q", "-s", &source_scale().to_string(), "postgres"]));
    server.stop();
    guard.1 = false;
    let work = dir.keep();
    // SAFETY: registers a plain function; it only reads a OnceLock and removes files.
    unsafe { libc::atexit(remove_source) };
    eprintln!(
        "source: pgbench scale {} made in {:.1} s, {} MB on disk",
        source_scale(),
        started.elapsed().as_secs_f64(),
        super::layer_du(&server.data) >> 20
    );
    work
}

/// One psql session kept open over a connection URL, for checking that a connection lives
/// through something (a restart of the server).
pub struct PsqlSession {
    child: Child,
    stdin: std::process::ChildStdin,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl PsqlSession {
    pub fn open(url: &str) -> PsqlSession {
        let mut child = Command::new(pg::bin_dir().unwrap().join("psql"))
            .arg(url)
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"])
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting psql");
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        PsqlSession { child, stdin, lines }
    }

    /// Runs one statement in the session and returns its output.
    pub fn query(&mut self, sql: &str) -> String {
        writeln!(self.stdin, "{sql};\n\\echo __end__").expect("writing to psql");
        let mut out = Vec::new();
        loop {
            match self.lines.next() {
                Some(Ok(line)) if line == "__end__" => return out.join("\n"),
                Some(Ok(line)) => out.push(line),
                _ => panic!("the psql session ended (its connection was lost?) after {out:?}"),
            }
        }
    }
}

impl Drop for PsqlSession {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A clone's connection URL, which the tests' callers (the administrator) are always given.
pub trait UrlOf {
    fn url(&self) -> &str;
}

impl UrlOf for api::Clone {
    fn url(&self) -> &str {
        self.url.as_deref().unwrap_or_else(|| panic!("clone {} has no URL for this caller", self.name))
    }
}

/// A `thinclone serve` started with exactly the arguments a test gives (a listen address
/// other than loopback, TLS), where [`Daemon`] would add its own: its URL from the
/// `listening` line, its administrator's token from `admin.token`. Dropping it stops it
/// (SIGTERM, then SIGKILL) and clears what it left under its data directory.
pub struct ServeProcess {
    pub data_dir: PathBuf,
    /// The URL of its `thinclone listening on …` line, as printed (the address may be a
    /// wildcard such as 0.0.0.0).
    pub url: String,
    pub token: String,
    /// Its stderr, so far and as it goes on.
    pub log: PathBuf,
    child: Option<Child>,
}

impl ServeProcess {
    /// Starts `thinclone serve --data-dir DATA_DIR ARGS` and waits for its listening line.
    pub fn start(data_dir: &Path, args: &[&str]) -> ServeProcess {
        let mut log = data_dir.as_os_str().to_owned();
        log.push(".log");
        let log = PathBuf::from(log);
        let file = fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let mut child = Command::new(super::thinclone_bin())
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .args(args)
            .env("THINCLONE_LOG", std::env::var("THINCLONE_TEST_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .spawn()
            .expect("starting thinclone serve");
        let deadline = Instant::now() + START_TIMEOUT;
        let url = loop {
            let text = fs::read_to_string(&log).unwrap_or_default();
            if let Some(line) = text.lines().find_map(|l| l.strip_prefix("thinclone listening on ")) {
                break line.trim().to_owned();
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("thinclone serve {args:?} exited ({status}) before listening:\n{text}");
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("thinclone serve {args:?} did not listen within {START_TIMEOUT:?}:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let token = fs::read_to_string(data_dir.join("admin.token"))
            .unwrap_or_else(|e| panic!("reading the administrator's token: {e}"))
            .trim()
            .to_owned();
        ServeProcess { data_dir: data_dir.to_owned(), url, token, log, child: Some(child) }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.url.rsplit(':').next().and_then(|p| p.trim_end_matches('/').parse().ok()).expect("a port in the URL")
    }

    /// Stops it with SIGTERM and returns how it exited (SIGKILL after 60 s).
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        Some(child.wait().unwrap())
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("--- serve log ({}) ---\n{log}", self.log.display());
        }
        let _ = self.stop();
        clear_leftovers(&self.data_dir);
    }
}
