//! The one way external programs (`pg_ctl`, `postgres`, `pg_basebackup`, `psql`, …) are
//! started: with a chosen OS user, a clean environment, a working directory and a timeout,
//! turning a failure into an error that carries the program's stderr.

use std::ffi::OsString;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// The OS user a program runs as. Only root can switch; others run as themselves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

impl RunAs {
    /// Looks up an OS user by name.
    pub fn user(name: &str) -> Result<RunAs> {
        let c_name = std::ffi::CString::new(name).map_err(|_| Error::NoSuchUser(name.into()))?;
        // SAFETY: getpwnam returns null or a pointer to a static passwd entry; the fields are
        // copied out before any other passwd call.
        unsafe {
            let pw = libc::getpwnam(c_name.as_ptr());
            if pw.is_null() {
                return Err(Error::NoSuchUser(name.into()));
            }
            let home = std::ffi::CStr::from_ptr((*pw).pw_dir).to_string_lossy().into_owned();
            Ok(RunAs { name: name.into(), uid: (*pw).pw_uid, gid: (*pw).pw_gid, home: home.into() })
        }
    }

    /// The user this process runs as.
    pub fn current() -> RunAs {
        // SAFETY: getuid/getgid/getpwuid have no preconditions; see `user` for getpwuid.
        unsafe {
            let (uid, gid) = (libc::getuid(), libc::getgid());
            let pw = libc::getpwuid(uid);
            let (name, home) = if pw.is_null() {
                (uid.to_string(), PathBuf::from("/"))
            } else {
                let name = std::ffi::CStr::from_ptr((*pw).pw_name).to_string_lossy().into_owned();
                let home = std::ffi::CStr::from_ptr((*pw).pw_dir).to_string_lossy().into_owned();
                (name, home.into())
            };
            RunAs { name, uid, gid, home }
        }
    }
}

/// A program to run.
pub struct Program {
    path: PathBuf,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    cwd: Option<PathBuf>,
    user: Option<RunAs>,
    timeout: Duration,
}

impl Program {
    pub fn new(path: impl Into<PathBuf>) -> Program {
        Program {
            path: path.into(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
            user: None,
            timeout: Duration::from_secs(300),
        }
    }

    pub fn arg(mut self, arg: impl Into<OsString>) -> Program {
        self.args.push(arg.into());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, args: I) -> Program {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Program {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn cwd(mut self, dir: &Path) -> Program {
        self.cwd = Some(dir.to_owned());
        self
    }

    /// Runs as this user (when this process is root; otherwise as itself).
    pub fn user(mut self, user: &RunAs) -> Program {
        self.user = Some(user.clone());
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Program {
        self.timeout = timeout;
        self
    }

    fn name(&self) -> String {
        self.path.file_name().map_or_else(|| self.path.display().to_string(), |n| n.to_string_lossy().into_owned())
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.path);
        cmd.args(&self.args);
        // A clean environment: PG* variables of the caller must not leak into the program.
        cmd.env_clear();
        cmd.env("PATH", "/usr/local/bin:/usr/bin:/bin");
        cmd.env("LC_ALL", "C.UTF-8");
        if let Some(user) = &self.user {
            cmd.env("HOME", &user.home);
            cmd.env("USER", &user.name);
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } == 0 && user.uid != 0 {
                let name = std::ffi::CString::new(user.name.as_str()).unwrap_or_default();
                let (uid, gid) = (user.uid, user.gid);
                // SAFETY: runs between fork and exec. The groups must be set while still root,
                // so the whole switch happens here, in order: supplementary groups, gid, uid.
                // (Command::uid would switch before this closure runs.)
                unsafe {
                    cmd.pre_exec(move || {
                        if libc::initgroups(name.as_ptr(), gid) != 0 || libc::setgid(gid) != 0 || libc::setuid(uid) != 0
                        {
                            return Err(std::io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
            }
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        if let Some(dir) = &self.cwd {
            cmd.current_dir(dir);
        } else {
            cmd.current_dir("/");
        }
        cmd
    }

    /// Starts the program as a child of this process, with its output going where given.
    pub fn spawn(self, stdout: Stdio, stderr: Stdio) -> Result<std::process::Child> {
        self.command()
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|e| std::io::Error::new(e.kind(), format!("starting {}: {e}", self.path.display())).into())
    }

    /// Runs to completion and returns its output; a non-zero exit is an error carrying the
    /// program's stderr.
    pub fn run(self) -> Result<Output> {
        let name = self.name();
        let mut child = self
            .command()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| std::io::Error::new(e.kind(), format!("starting {}: {e}", self.path.display())))?;
        // Drain both pipes in threads so that a chatty program cannot block on a full pipe.
        let mut stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let out_reader = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = stdout.read_to_end(&mut buf);
            buf
        });
        let err_reader = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = stderr.read_to_end(&mut buf);
            buf
        });
        let deadline = Instant::now() + self.timeout;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::TimedOut { program: name, seconds: self.timeout.as_secs() });
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let output = Output {
            status,
            stdout: out_reader.join().unwrap_or_default(),
            stderr: err_reader.join().unwrap_or_default(),
        };
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
            let stderr =
                if stderr.is_empty() { String::from_utf8_lossy(&output.stdout).trim().to_string() } else { stderr };
            return Err(Error::Failed { program: name, status: output.status.to_string(), stderr });
        }
        Ok(output)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_carries_stderr() {
        let err = Program::new("/bin/sh").args(["-c", "echo oops >&2; exit 3"]).run().unwrap_err();
        let text = err.to_string();
        assert!(text.contains("sh failed") && text.contains("oops"), "{text}");
    }

    #[test]
    fn timeout_kills_the_program() {
        let err = Program::new("/bin/sleep").arg("5").timeout(Duration::from_millis(100)).run().unwrap_err();
        assert!(matches!(err, Error::TimedOut { .. }), "{err}");
    }

    #[test]
    fn environment_is_clean() {
        std::env::set_var("PGPASSWORD", "leak");
        let out = Program::new("/usr/bin/env").env("PGPORT", "5999").run().unwrap();
        let env = String::from_utf8(out.stdout).unwrap();
        assert!(!env.contains("PGPASSWORD") && env.contains("PGPORT=5999"), "{env}");
    }
}
