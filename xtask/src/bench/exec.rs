//! Running the benchmarks' external programs (pgbench, psql, pg_ctl, cp, fio, mkfs.xfs, …):
//! every one goes through `sys::Program`, is written shell-quoted to the run's command log
//! first, and can be interrupted.
//!
//! Interrupts: SIGINT and SIGTERM set a flag and stop the program the harness is waiting
//! for, so that the step fails at once; the error then unwinds through the guards of the
//! servers, mounts, daemons and loop devices the run started, which stop them in order.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sys::{Program, User};

/// The signal that interrupted the run, or 0.
static INTERRUPTED: AtomicI32 = AtomicI32::new(0);
/// The pid of the program the harness is waiting for, or 0.
static WAITING_FOR: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(signal: libc::c_int) {
    INTERRUPTED.store(signal, Ordering::SeqCst);
    let pid = WAITING_FOR.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe; the pid is our unreaped child (it is cleared
        // before the child is reaped).
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
}

/// Installs the SIGINT and SIGTERM handlers.
pub fn catch_interrupts() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only does atomic loads and stores and calls kill.
        unsafe { libc::signal(signal, on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t) };
    }
}

/// The signal that interrupted the run, if one did.
pub fn interrupted() -> Option<i32> {
    match INTERRUPTED.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// An error if the run was interrupted: long loops call it between steps.
pub fn check_interrupted() -> Result<()> {
    match interrupted() {
        Some(signal) => bail!("interrupted by signal {signal}"),
        None => Ok(()),
    }
}

/// Sleeps, waking early (with an error) on an interrupt.
pub fn sleep(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        check_interrupted()?;
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
}

/// A command line: a `sys::Program` together with what the command log shows of it. The
/// environment is never logged (it may carry a password).
#[derive(Debug, Clone)]
pub struct Cmd {
    path: PathBuf,
    args: Vec<OsString>,
    user: Option<User>,
    env: Vec<(OsString, OsString)>,
    timeout: Duration,
    own_group: bool,
}

impl Cmd {
    pub fn new(path: impl Into<PathBuf>) -> Cmd {
        Cmd {
            path: path.into(),
            args: Vec::new(),
            user: None,
            env: Vec::new(),
            timeout: Duration::from_secs(3600),
            own_group: false,
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Cmd {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Cmd {
        self.args.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Runs as this OS user (the run is root).
    pub fn user(mut self, user: &User) -> Cmd {
        self.user = Some(user.clone());
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Cmd {
        self.env.push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Cmd {
        self.timeout = timeout;
        self
    }

    /// A process group of its own: servers, mounts and daemons, which the run stops itself
    /// in order, so that a Ctrl-C in the terminal does not reach them first.
    pub fn own_process_group(mut self) -> Cmd {
        self.own_group = true;
        self
    }

    pub fn name(&self) -> String {
        self.path.file_name().unwrap_or(self.path.as_os_str()).to_string_lossy().into_owned()
    }

    /// The program to run; [`Exec`] runs it with logging and interrupt checks, which the
    /// few callers of this skip on purpose (readiness polls, stops during cleanup).
    pub fn program(&self) -> Program {
        let mut p = Program::new(&self.path).args(&self.args).timeout(self.timeout);
        for (k, v) in &self.env {
            p = p.env(k, v);
        }
        if let Some(user) = &self.user {
            p = p.user(user);
        }
        if self.own_group {
            p = p.own_process_group();
        }
        p
    }

    /// The command as a shell would take it; a command run as another user is shown as
    /// `runuser -u USER -- …`.
    pub fn line(&self) -> String {
        let mut words = Vec::new();
        if let Some(user) = &self.user {
            words.extend(["runuser".to_owned(), "-u".to_owned(), shell_quote(&user.name), "--".to_owned()]);
        }
        words.push(shell_quote(&self.path.to_string_lossy()));
        words.extend(self.args.iter().map(|a| shell_quote(&a.to_string_lossy())));
        words.join(" ")
    }
}

/// Quotes a word for a POSIX shell when it needs it.
pub fn shell_quote(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@%^".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Runs commands and keeps the command log of a run.
pub struct Exec {
    log: Mutex<File>,
}

impl Exec {
    /// Starts an empty command log at `path`.
    pub fn new(path: &Path) -> Result<Exec> {
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Exec { log: Mutex::new(file) })
    }

    /// Appends a line to the command log (a failed write of the log is not worth failing
    /// the run for; it is reported).
    pub fn note(&self, line: &str) {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = writeln!(log, "{line}") {
            crate::bench::progress::warn(&format!("writing the command log: {e}"));
        }
    }

    /// Runs `cmd` every 10 ms until it succeeds (a server's readiness check, `what` it runs);
    /// fails after `timeout` with the last failure. The tries are not written to the command
    /// log: one line says what was done.
    pub fn run_until_ok(&self, cmd: &Cmd, what: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        self.note(&format!("{}   # repeated every 10 ms until it succeeds", cmd.line()));
        let mut last_error = None;
        while Instant::now() < deadline {
            check_interrupted()?;
            match cmd.program().run() {
                Ok(_) => return Ok(()),
                Err(e) => last_error = Some(e),
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        bail!(
            "no successful {what} within {} s: {}",
            timeout.as_secs(),
            last_error.map_or_else(String::new, |e| e.to_string())
        )
    }

    /// Runs a short command to its end and returns its output; a failure carries its stderr.
    pub fn run(&self, cmd: &Cmd) -> Result<Output> {
        check_interrupted()?;
        self.note(&cmd.line());
        let out = cmd.program().run().with_context(|| format!("running {}", cmd.name()))?;
        check_interrupted()?;
        Ok(out)
    }

    /// Runs a short command to its end even after an interrupt: for the cleanup that an
    /// interrupt leads to (unmounts, detaching loop devices).
    pub fn run_always(&self, cmd: &Cmd) -> Result<Output> {
        self.note(&cmd.line());
        cmd.program().run().with_context(|| format!("running {}", cmd.name()))
    }

    /// Runs a command and returns its stdout, trimmed.
    pub fn stdout(&self, cmd: &Cmd) -> Result<String> {
        let out = self.run(cmd)?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Runs a command to its end with its stdout and stderr going to `log` (replaced), and
    /// waits for it interruptibly. A failure says where the log is and ends with its last
    /// lines.
    pub fn run_to(&self, cmd: &Cmd, log: &Path) -> Result<()> {
        check_interrupted()?;
        self.note(&format!("{} > {} 2>&1", cmd.line(), shell_quote(&log.to_string_lossy())));
        // spawn_logged appends: start from an empty file.
        File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut process = cmd.program().spawn_logged(log).with_context(|| format!("starting {}", cmd.name()))?;
        WAITING_FOR.store(process.pid() as i32, Ordering::SeqCst);
        let deadline = Instant::now() + cmd.timeout;
        let status = loop {
            if interrupted().is_some() {
                process.signal(libc::SIGTERM);
            }
            match process.wait_timeout(Duration::from_millis(50)) {
                Ok(Some(status)) => break Ok(status),
                Ok(None) if Instant::now() >= deadline => {
                    WAITING_FOR.store(0, Ordering::SeqCst);
                    let killed = process.stop(libc::SIGKILL, Duration::from_secs(10));
                    break Err(anyhow::anyhow!(
                        "{} did not finish within {} s ({killed:?}); log: {}",
                        cmd.name(),
                        cmd.timeout.as_secs(),
                        log.display()
                    ));
                }
                Ok(None) => {}
                Err(e) => break Err(e.into()),
            }
        };
        WAITING_FOR.store(0, Ordering::SeqCst);
        let status = status?;
        check_interrupted()?;
        if !status.success() {
            bail!("{} failed ({status}); log: {}\n{}", cmd.name(), log.display(), tail(log, 20));
        }
        Ok(())
    }

    /// Starts a long-running program (a server, a mount, a daemon) in its own process group,
    /// its output appended to `log`.
    pub fn spawn(&self, cmd: &Cmd, log: &Path) -> Result<sys::Process> {
        check_interrupted()?;
        self.note(&format!("{} >> {} 2>&1 &", cmd.line(), shell_quote(&log.to_string_lossy())));
        cmd.clone().own_process_group().program().spawn_logged(log).with_context(|| format!("starting {}", cmd.name()))
    }
}

/// The last `lines` lines of a text file, for error messages.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_quoted_only_when_needed() {
        assert_eq!(shell_quote("-c"), "-c");
        assert_eq!(shell_quote("/usr/lib/postgresql/15/bin/pgbench"), "/usr/lib/postgresql/15/bin/pgbench");
        assert_eq!(shell_quote("select 1"), "'select 1'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        let cmd = Cmd::new("/bin/echo").args(["a b", "c"]);
        assert_eq!(cmd.line(), "/bin/echo 'a b' c");
    }

    #[test]
    fn a_logged_run_writes_its_output_and_says_where_on_failure() {
        let dir = std::env::temp_dir().join(format!("xtask-exec-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let exec = Exec::new(&dir.join("commands.log")).unwrap();
        let log = dir.join("out.log");
        exec.run_to(&Cmd::new("/bin/sh").args(["-c", "echo hello"]), &log).unwrap();
        assert_eq!(fs::read_to_string(&log).unwrap(), "hello\n");
        let err = exec.run_to(&Cmd::new("/bin/sh").args(["-c", "echo oops; exit 3"]), &log).unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("sh failed") && text.contains("oops") && text.contains("out.log"), "{text}");
        let logged = fs::read_to_string(dir.join("commands.log")).unwrap();
        assert!(logged.contains("/bin/sh -c 'echo hello' >"), "{logged}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
