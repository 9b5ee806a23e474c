//! The one way external programs (database servers and their tools, `cp`, `fusermount3`, the
//! mount process, …) are started: with a chosen OS user, a clean environment, a working
//! directory and a timeout. Whatever a program writes is drained while it runs (into
//! memory, a callback or a log file), so that it can never block on a full pipe; a failure
//! becomes an [`Error`] carrying what the program said on stderr.

use std::ffi::OsString;
use std::io::{self, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use crate::User;

/// How much of a program's stderr an error keeps (its end).
const STDERR_KEPT: usize = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The program could not be started at all.
    #[error("starting {program}: {source}")]
    Start { program: String, source: io::Error },
    /// It ran and failed; `stderr` is what it said (or its stdout, if stderr was empty).
    #[error("{program} failed ({status}): {stderr}")]
    Failed { program: String, status: String, stderr: String },
    /// It ran longer than it was allowed to and was killed.
    #[error("{program} did not finish within {seconds} s")]
    TimedOut { program: String, seconds: u64 },
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl Error {
    /// Whether the program reported that a disk was full.
    pub fn is_disk_full(&self) -> bool {
        match self {
            Error::Failed { stderr, .. } => stderr.contains("No space left on device"),
            Error::Io(e) | Error::Start { source: e, .. } => {
                // An error that says which file it met keeps the kind of the OS error, not
                // its number.
                e.raw_os_error() == Some(libc::ENOSPC) || e.kind() == io::ErrorKind::StorageFull
            }
            Error::TimedOut { .. } => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A program to run.
#[derive(Clone)]
pub struct Program {
    path: PathBuf,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    cwd: Option<PathBuf>,
    user: Option<User>,
    timeout: Duration,
    own_group: bool,
    stdin: Option<Input>,
}

/// What a program reads on its standard input.
#[derive(Clone)]
enum Input {
    Bytes(Vec<u8>),
    /// A file, opened by us (as this process's user) when the program starts: for input too
    /// large to hold in memory, such as a dump.
    File(PathBuf),
}

/// Shows the program and its arguments, but only the names of its environment variables:
/// their values may be secrets (`PGPASSWORD`).
impl std::fmt::Debug for Program {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Program")
            .field("path", &self.path)
            .field("args", &self.args)
            .field("env", &self.env.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .field("cwd", &self.cwd)
            .field("user", &self.user.as_ref().map(|u| &u.name))
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Program {
    /// A program by path, or by name looked up in the clean `PATH`.
    pub fn new(path: impl Into<PathBuf>) -> Program {
        Program {
            path: path.into(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
            user: None,
            timeout: Duration::from_secs(300),
            own_group: false,
            stdin: None,
        }
    }

    /// Feeds `bytes` to the program's standard input (which is otherwise empty). Secrets and
    /// scripts go here rather than in arguments.
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Program {
        self.stdin = Some(Input::Bytes(bytes.into()));
        self
    }

    /// Feeds the file at `path` to the program's standard input. The file is opened by this
    /// process when the program starts, so the program's user need not be able to read it.
    pub fn stdin_file(mut self, path: &Path) -> Program {
        self.stdin = Some(Input::File(path.to_owned()));
        self
    }

    pub fn arg(mut self, arg: impl Into<OsString>) -> Program {
        self.args.push(arg.into());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, args: I) -> Program {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets a variable in the program's otherwise clean environment. Secrets go here rather
    /// than in arguments, which every local user can read in `/proc`.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Program {
        self.env.push((key.into(), value.into()));
        self
    }

    /// The working directory (`/` when not given).
    pub fn cwd(mut self, dir: &Path) -> Program {
        self.cwd = Some(dir.to_owned());
        self
    }

    /// Runs as this user (when this process is root; otherwise as itself).
    pub fn user(mut self, user: &User) -> Program {
        self.user = Some(user.clone());
        self
    }

    /// How long [`Program::run`] lets it run before killing it (300 s by default).
    pub fn timeout(mut self, timeout: Duration) -> Program {
        self.timeout = timeout;
        self
    }

    /// Puts it in a process group of its own, so that a signal to ours (Ctrl-C in a terminal)
    /// does not reach it and it outlives us if we are killed.
    pub fn own_process_group(mut self) -> Program {
        self.own_group = true;
        self
    }

    /// The program's file name, for messages.
    pub fn name(&self) -> String {
        self.path.file_name().map_or_else(|| self.path.display().to_string(), |n| n.to_string_lossy().into_owned())
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.path);
        cmd.args(&self.args);
        // A clean environment: the caller's variables (PGPASSWORD, PGHOST…) must not leak in.
        cmd.env_clear();
        cmd.env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        cmd.env("LC_ALL", "C.UTF-8");
        if let Some(user) = &self.user {
            cmd.env("HOME", &user.home);
            cmd.env("USER", &user.name);
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } == 0 && user.uid != 0 {
                let name = std::ffi::CString::new(user.name.as_str()).unwrap_or_default();
                let (uid, gid, synthetic) = (user.uid, user.gid, user.synthetic);
                // SAFETY: runs between fork and exec, in the child's only thread. The groups
                // must be set while still root, so the whole switch happens here, in order:
                // supplementary groups, gid, uid (Command::uid would switch before this
                // closure runs). A synthetic user has no entry to take groups from: its gid
                // is its only group.
                unsafe {
                    cmd.pre_exec(move || {
                        let groups =
                            if synthetic { libc::setgroups(1, &gid) } else { libc::initgroups(name.as_ptr(), gid) };
                        if groups != 0 || libc::setgid(gid) != 0 || libc::setuid(uid) != 0 {
                            return Err(io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
            }
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd.current_dir(self.cwd.as_deref().unwrap_or(Path::new("/")));
        if self.own_group {
            cmd.process_group(0);
        }
        cmd.stdin(Stdio::null());
        cmd
    }

    fn spawn_with(&self, stdout: Stdio, stderr: Stdio) -> Result<Child> {
        let mut cmd = self.command();
        match &self.stdin {
            Some(Input::Bytes(_)) => {
                cmd.stdin(Stdio::piped());
            }
            Some(Input::File(path)) => {
                let file = std::fs::File::open(path).map_err(|source| Error::Start {
                    program: format!("{} < {}", self.path.display(), path.display()),
                    source,
                })?;
                cmd.stdin(file);
            }
            None => {}
        }
        let mut child = cmd
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|source| Error::Start { program: self.path.display().to_string(), source })?;
        if let Some(Input::Bytes(bytes)) = self.stdin.clone() {
            let mut pipe = child.stdin.take().expect("piped stdin");
            // Written on a thread of its own, so that a program that writes before it reads
            // cannot deadlock with us; a program that exits early closes the pipe, which
            // ends the write with an error that is of no interest.
            std::thread::spawn(move || {
                let _ = std::io::Write::write_all(&mut pipe, &bytes);
            });
        }
        Ok(child)
    }

    /// Runs to completion and returns its output; a non-zero exit is an error carrying the
    /// program's stderr.
    pub fn run(self) -> Result<Output> {
        self.run_with_stderr_lines(|_| {})
    }

    /// Runs to completion like [`Program::run`], calling `on_line` with every line of
    /// stderr as it arrives (lines end at `\n` or `\r`, so progress meters count).
    pub fn run_with_stderr_lines(self, mut on_line: impl FnMut(&str)) -> Result<Output> {
        let name = self.name();
        let mut child = self.spawn_with(Stdio::piped(), Stdio::piped())?;
        let mut stdout = child.stdout.take().expect("piped stdout");
        let out_reader = std::thread::spawn(move || {
            let mut buf = Vec::new();
            // A read error ends the capture; what was read so far is kept.
            let _ = stdout.read_to_end(&mut buf);
            buf
        });
        // stderr is read on this thread, so that `on_line` needs no Send; the timeout is
        // enforced by a watchdog that kills the program, which ends the read.
        let pid = child.id() as i32;
        let deadline = Instant::now() + self.timeout;
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let watchdog = std::thread::spawn(move || {
            let left = deadline.saturating_duration_since(Instant::now());
            if done_rx.recv_timeout(left) == Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
                // SAFETY: our own child, not yet reaped (we reap only after this thread ends).
                unsafe { libc::kill(pid, libc::SIGKILL) };
                return true;
            }
            false
        });
        let mut stderr_text = Vec::new();
        let mut line = Vec::new();
        let mut buf = [0u8; 8192];
        let mut stderr = child.stderr.take().expect("piped stderr");
        loop {
            let n = match stderr.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            for &b in &buf[..n] {
                if b == b'\n' || b == b'\r' {
                    on_line(String::from_utf8_lossy(&line).trim_end());
                    line.clear();
                } else {
                    line.push(b);
                }
            }
            stderr_text.extend_from_slice(&buf[..n]);
            if stderr_text.len() > 2 * STDERR_KEPT {
                stderr_text.drain(..stderr_text.len() - STDERR_KEPT);
            }
        }
        if !line.is_empty() {
            on_line(String::from_utf8_lossy(&line).trim_end());
        }
        // Stop the watchdog before reaping, so that it can never signal a recycled pid; the
        // deadline still holds for a program that closed stderr but runs on.
        // The watchdog may already be gone (it fired); a failed send then is expected.
        let _ = done_tx.send(());
        let mut timed_out = watchdog.join().unwrap_or(false);
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() >= deadline {
                timed_out = true;
                // A kill of our own unreaped child; failing means it has just exited.
                let _ = child.kill();
                break child.wait()?;
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let output = Output { status, stdout: out_reader.join().unwrap_or_default(), stderr: stderr_text };
        if timed_out {
            return Err(Error::TimedOut { program: name, seconds: self.timeout.as_secs() });
        }
        if !output.status.success() {
            return Err(Error::Failed {
                program: name,
                status: describe(output.status),
                stderr: failure_text(&output),
            });
        }
        Ok(output)
    }

    /// Starts a long-running program (a server, a mount) whose stdout and stderr are
    /// appended to `log`, and returns at once. The timeout does not apply. The log is made
    /// private (0600) when it is new; it may be in a directory of a less trusted user, so a
    /// symlink, FIFO or second hard link in its place is refused (see [`crate::untrusted`]).
    pub fn spawn_logged(self, log: &Path) -> Result<Process> {
        let file = crate::untrusted::open_append(log, 0o600)?;
        let name = self.name();
        let child = self.spawn_with(Stdio::from(file.try_clone()?), Stdio::from(file))?;
        Ok(Process { child, name })
    }
}

/// Ends every process of a synthetic user ([`User::synthetic`]) with SIGKILL: whatever its
/// server's superuser started in the background must not outlive the server, nor meet the
/// next clone given the same uid. `kill(-1, SIGKILL)` sent as that user (from a child that
/// has become it) reaches exactly the processes it may signal, its own, and not the
/// sender. Only root does this, and only for a uid that no entry in the user database
/// names: a real user's processes are not ours to end.
pub fn kill_all_of(user: &User) -> Result<()> {
    let refuse =
        |why: &str| Err(Error::Io(io::Error::other(format!("not ending the processes of uid {}: {why}", user.uid))));
    if !crate::user::running_as_root() {
        return refuse("only root ends another user's processes");
    }
    if !user.synthetic || user.uid == 0 || crate::User::uid_is_known(user.uid) {
        return refuse("it is a user of this host, not a synthetic one");
    }
    for _ in 0..100 {
        if crate::procfs::processes_of_uid(user.uid).is_empty() {
            return Ok(());
        }
        let (uid, gid) = (user.uid, user.gid);
        let mut cmd = Command::new("/bin/true");
        cmd.env_clear().stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        // SAFETY: runs between fork and exec, in the child's only thread, and makes only
        // system calls. Failing to switch users fails the child before it signals anything.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setgroups(1, &gid) != 0 || libc::setgid(gid) != 0 || libc::setuid(uid) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // With none left to signal it fails (ESRCH): the next look says whether any are.
                libc::kill(-1, libc::SIGKILL);
                Ok(())
            });
        }
        cmd.status().map_err(|source| Error::Start { program: "kill -1 as a synthetic user".into(), source })?;
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(Error::Io(io::Error::other(format!(
        "processes of uid {} are still there after SIGKILL: {:?}",
        user.uid,
        crate::procfs::processes_of_uid(user.uid)
    ))))
}

/// The end of what a failed program said: its stderr, or its stdout if stderr is empty.
fn failure_text(output: &Output) -> String {
    let text = String::from_utf8_lossy(&output.stderr).trim().to_string();
    let text = if text.is_empty() { String::from_utf8_lossy(&output.stdout).trim().to_string() } else { text };
    if text.len() > STDERR_KEPT {
        let cut = text.len() - STDERR_KEPT;
        let cut = (cut..text.len()).find(|&i| text.is_char_boundary(i)).unwrap_or(text.len());
        return text[cut..].to_string();
    }
    text
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => status.to_string(),
    }
}

/// A long-running program started by [`Program::spawn_logged`], a child of this process.
/// Dropping it neither stops nor reaps it: a server or mount is meant to outlive a crash of
/// ours; whoever owns it decides when it stops.
#[derive(Debug)]
pub struct Process {
    child: Child,
    name: String,
}

impl Process {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its exit status, if it has exited (and reaps it).
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    /// Sends a signal; a process that has already exited is not an error.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill has no memory-safety preconditions; our child is not reaped until
        // `try_wait` or `wait_timeout` sees it exit, so the pid is still ours.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Waits up to `timeout` for it to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> io::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Sends `signal` and waits up to `timeout`; then SIGKILL and waits for the end. Returns
    /// the exit status and whether SIGKILL was needed.
    pub fn stop(&mut self, signal: i32, timeout: Duration) -> io::Result<(ExitStatus, bool)> {
        self.signal(signal);
        if let Some(status) = self.wait_timeout(timeout)? {
            return Ok((status, false));
        }
        self.signal(libc::SIGKILL);
        Ok((self.child.wait()?, true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_carries_stderr() {
        let err = Program::new("/bin/sh").args(["-c", "echo oops >&2; exit 3"]).run().unwrap_err();
        let text = err.to_string();
        assert!(text.contains("sh failed (exit status 3)") && text.contains("oops"), "{text}");
    }

    #[test]
    fn stdin_is_fed_and_secrets_do_not_show() {
        let p = Program::new("/bin/cat").stdin("hello\n").env("PGPASSWORD", "hunter2");
        assert!(!format!("{p:?}").contains("hunter2"), "{p:?}");
        let out = p.run().unwrap();
        assert_eq!(out.stdout, b"hello\n");
    }

    #[test]
    fn timeout_kills_the_program() {
        let started = Instant::now();
        let err = Program::new("/bin/sleep").arg("5").timeout(Duration::from_millis(100)).run().unwrap_err();
        assert!(matches!(err, Error::TimedOut { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(4));
    }

    #[test]
    fn environment_is_clean() {
        std::env::set_var("PGPASSWORD", "leak");
        let out = Program::new("/usr/bin/env").env("PGPORT", "5999").run().unwrap();
        let env = String::from_utf8(out.stdout).unwrap();
        assert!(!env.contains("PGPASSWORD") && env.contains("PGPORT=5999"), "{env}");
    }

    /// A program that writes far more to stderr than a pipe holds, and then waits for
    /// nothing, must still finish: its output is drained while it runs.
    #[test]
    fn a_chatty_program_never_blocks() {
        let out = Program::new("/bin/sh")
            .args(["-c", "i=0; while [ $i -lt 20000 ]; do echo line $i >&2; i=$((i+1)); done; echo done"])
            .timeout(Duration::from_secs(60))
            .run()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "done");
    }

    #[test]
    fn stderr_lines_arrive_split_on_cr_and_lf() {
        let mut lines = Vec::new();
        Program::new("/bin/sh")
            .args(["-c", "printf '1/10 kB\\r5/10 kB\\rdone\\nlast' >&2"])
            .run_with_stderr_lines(|l| lines.push(l.to_owned()))
            .unwrap();
        assert_eq!(lines, ["1/10 kB", "5/10 kB", "done", "last"]);
    }

    #[test]
    fn a_full_disk_is_recognised() {
        let err = Program::new("/bin/sh")
            .args(["-c", "echo \"cp: error writing 'x': No space left on device\" >&2; exit 1"])
            .run()
            .unwrap_err();
        assert!(err.is_disk_full());
        let err = Program::new("/bin/false").run().unwrap_err();
        assert!(!err.is_disk_full());
    }

    /// A synthetic user's programs run with its uid and gid as their only group, and
    /// [`kill_all_of`] ends whatever it left running, even in the background.
    #[test]
    fn a_synthetic_user_runs_alone_and_its_processes_end() {
        assert!(crate::user::running_as_root(), "this test runs as root (scripts/test runs the tests as root)");
        let user = User::synthetic(2_000_099_990, 2_000_099_990);
        let out = Program::new("/bin/sh").args(["-c", "id -u; id -g; id -G; echo $HOME"]).user(&user).run().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(text, "2000099990\n2000099990\n2000099990\n/nonexistent\n");
        Program::new("/bin/sh")
            .args(["-c", "sleep 300 >/dev/null 2>&1 & sleep 300 >/dev/null 2>&1 &"])
            .user(&user)
            .run()
            .unwrap();
        assert_eq!(crate::procfs::processes_of_uid(user.uid).len(), 2);
        kill_all_of(&user).unwrap();
        assert!(crate::procfs::processes_of_uid(user.uid).is_empty());
        // Never a real user's processes.
        let err = kill_all_of(&User::lookup("root").unwrap()).unwrap_err();
        assert!(err.to_string().contains("not a synthetic one"), "{err}");
        let err = kill_all_of(&User::synthetic(0, 0)).unwrap_err();
        assert!(err.to_string().contains("not a synthetic one"), "{err}");
    }

    #[test]
    fn a_logged_process_is_stopped_by_signal() {
        use std::fs;
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let mut p = Program::new("/bin/sh").args(["-c", "echo started; exec sleep 30"]).spawn_logged(&log).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let (status, killed) = p.stop(libc::SIGTERM, Duration::from_secs(5)).unwrap();
        assert!(!status.success() && !killed);
        assert_eq!(fs::read_to_string(&log).unwrap(), "started\n");
    }
}
