//! MariaDB as the benchmark drives it by hand: the programs of Debian's MariaDB (those the
//! daemon finds by default), the source server made by `mariadb-install-db` and run as the
//! OS user `mysql` (a guard stops it), the `mariadb` client, clone URLs, and the wait for the
//! first successful `SELECT 1`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sys::User;

use crate::bench::exec::{self, tail, Cmd, Exec};
use crate::bench::pg::make_owned_dir;
use crate::bench::progress::warn;
use crate::bench::Run;

/// The source's password for `root@'%'`: a throwaway server of the benchmark's.
pub const SOURCE_PASSWORD: &str = "bench-source";

/// The source server's settings (after `--no-defaults`, the paths and the port): a buffer
/// pool that holds what sysbench's prepare writes. They do not reach the clones, whose
/// daemon sets every setting itself (doc/ENGINE-MARIADB.md); only the redo log's size
/// (MariaDB's default, 96 MiB) is kept by the image and its clones.
pub const SOURCE_SETTINGS: [&str; 3] =
    ["--bind-address=127.0.0.1", "--skip-name-resolve", "--innodb-buffer-pool-size=512M"];

/// Debian's MariaDB programs, where the daemon looks for them by default (/usr/sbin), and
/// the OS user the source runs as.
#[derive(Debug, Clone)]
pub struct Programs {
    pub mariadbd: PathBuf,
    pub mariadb: PathBuf,
    pub install_db: PathBuf,
    pub backup: PathBuf,
    pub user: User,
}

impl Programs {
    /// The programs, or an error that names what is missing and how to install it.
    pub fn find() -> Result<Programs> {
        let programs = Programs {
            mariadbd: "/usr/sbin/mariadbd".into(),
            mariadb: "/usr/bin/mariadb".into(),
            install_db: "/usr/bin/mariadb-install-db".into(),
            backup: "/usr/bin/mariadb-backup".into(),
            user: User::lookup("mysql").context(
                "the OS user mysql must exist (the mariadb-server package makes it; scripts/install installs it)",
            )?,
        };
        for p in [&programs.mariadbd, &programs.mariadb, &programs.install_db, &programs.backup] {
            if !p.is_file() {
                bail!(
                    "{} is missing: scripts/install installs mariadb-server, mariadb-client and mariadb-backup",
                    p.display()
                );
            }
        }
        Ok(programs)
    }

    /// `mariadb` as root through a server's socket (the `unix_socket` login: we are root).
    pub fn client_socket(&self, socket: &Path) -> Cmd {
        Cmd::new(&self.mariadb)
            .args(["--no-defaults", "--protocol=SOCKET", "--user=root", "--batch", "--skip-column-names"])
            .arg(format!("--socket={}", socket.display()))
            .timeout(Duration::from_secs(3600))
    }

    /// `mariadb` over TCP to `target`, its password in the environment (never logged).
    pub fn client_tcp(&self, target: &Target) -> Cmd {
        Cmd::new(&self.mariadb)
            .args(["--no-defaults", "--protocol=TCP", "--batch", "--skip-column-names", "--connect-timeout=10"])
            .arg(format!("--host={}", target.host))
            .arg(format!("--port={}", target.port))
            .arg(format!("--user={}", target.user))
            .env("MYSQL_PWD", &target.password)
            .timeout(Duration::from_secs(3600))
    }
}

/// What a `mariadb://USER:PASSWORD@HOST:PORT/` URL names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target> {
        let bad = || {
            anyhow::anyhow!("not a mariadb://USER:PASSWORD@HOST:PORT/ URL: {}", crate::bench::pg::split_password(url).0)
        };
        let rest = url.strip_prefix("mariadb://").or_else(|| url.strip_prefix("mysql://")).ok_or_else(bad)?;
        let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
        let (userinfo, hostport) = authority.rsplit_once('@').ok_or_else(bad)?;
        let (user, password) = userinfo.split_once(':').ok_or_else(bad)?;
        let (host, port) = hostport.rsplit_once(':').ok_or_else(bad)?;
        let (_, password) = crate::bench::pg::split_password(&format!("x://u:{password}@h"));
        Ok(Target {
            host: host.trim_start_matches('[').trim_end_matches(']').to_owned(),
            port: port.parse().map_err(|_| bad())?,
            user: user.to_owned(),
            password: password.unwrap_or_default(),
        })
    }
}

/// Runs `cmd` (a `mariadb` client without its statement) with `-e SELECT 1` every 10 ms
/// until it succeeds; fails after `timeout`. The tries are not written to the command log
/// (one line says what was done).
pub fn wait_select1(exec: &Exec, cmd: Cmd, timeout: Duration) -> Result<()> {
    let cmd = cmd.args(["-e", "SELECT 1"]).timeout(Duration::from_secs(30));
    exec.run_until_ok(&cmd, "SELECT 1", timeout)
}

/// The source: a data directory made by `mariadb-install-db`, its `mariadbd` run as
/// `mysql` on 127.0.0.1:`port` and a socket of its own. Stopped (SIGTERM, a clean shutdown)
/// when dropped.
pub struct Source {
    process: Option<sys::Process>,
    exec: Arc<Exec>,
    programs: Programs,
    pub data: PathBuf,
    pub run_dir: PathBuf,
    pub port: u16,
    pub log: PathBuf,
}

impl Source {
    /// Makes the data directory `data` (and the run directory `data-run`), starts the server
    /// and waits for it; then gives `root@'%'` the password [`SOURCE_PASSWORD`].
    pub fn create(run: &Run, programs: &Programs, data: &Path, port: u16) -> Result<Source> {
        let run_dir = data.with_file_name(format!(
            "{}-run",
            data.file_name().and_then(|n| n.to_str()).context("a source directory with a name")?
        ));
        make_owned_dir(&run_dir, &programs.user, 0o700)?;
        // Its own temporary directory: the bootstrap's temporary tables stay out of /tmp.
        let install = Cmd::new(&programs.install_db)
            .args(["--no-defaults", "--user=mysql", "--skip-test-db"])
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--tmpdir={}", run_dir.display()))
            .timeout(Duration::from_secs(600));
        run.exec.run_to(&install, &run.logs.join("mariadb-install-db.log")).context("mariadb-install-db")?;
        let mut source = Source {
            process: None,
            exec: run.exec.clone(),
            programs: programs.clone(),
            data: data.to_owned(),
            run_dir,
            port,
            log: run.logs.join("mariadb-source.log"),
        };
        source.start()?;
        source.sql(&format!(
            "CREATE USER 'root'@'%' IDENTIFIED BY '{SOURCE_PASSWORD}'; GRANT ALL ON *.* TO 'root'@'%' WITH GRANT OPTION"
        ))?;
        Ok(source)
    }

    pub fn socket(&self) -> PathBuf {
        self.run_dir.join("mariadbd.sock")
    }

    /// The URL `image create --from-url` takes.
    pub fn url(&self) -> String {
        format!("mariadb://root:{SOURCE_PASSWORD}@127.0.0.1:{}/", self.port)
    }

    /// The server's command line.
    pub fn server_cmd(&self) -> Cmd {
        Cmd::new(&self.programs.mariadbd)
            .arg("--no-defaults")
            .arg(format!("--datadir={}", self.data.display()))
            .arg(format!("--socket={}", self.socket().display()))
            .arg(format!("--pid-file={}", self.run_dir.join("mariadbd.pid").display()))
            .arg(format!("--tmpdir={}", self.run_dir.display()))
            .arg(format!("--port={}", self.port))
            .arg("--user=mysql")
            .args(SOURCE_SETTINGS)
    }

    fn start(&mut self) -> Result<()> {
        let mut process = self.exec.spawn(&self.server_cmd(), &self.log)?;
        let probe = self.programs.client_socket(&self.socket()).args(["-e", "SELECT 1"]);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Err(e) = exec::check_interrupted() {
                self.process = Some(process);
                return Err(e);
            }
            if probe.program().run().is_ok() {
                self.process = Some(process);
                return Ok(());
            }
            if process.try_wait()?.is_some() {
                bail!("mariadbd exited before it answered (log {}):\n{}", self.log.display(), tail(&self.log, 30));
            }
            if Instant::now() >= deadline {
                self.process = Some(process);
                bail!("the source did not answer within 120 s (log {})", self.log.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs SQL as root through the socket; its rows, tab-separated.
    pub fn sql(&self, sql: &str) -> Result<String> {
        self.exec.stdout(&self.programs.client_socket(&self.socket()).args(["-e", sql]))
    }

    /// A clean shutdown (SIGTERM), waited for; an error if it did not end cleanly.
    pub fn stop(mut self) -> Result<()> {
        self.shut_down()
    }

    fn shut_down(&mut self) -> Result<()> {
        let Some(mut process) = self.process.take() else { return Ok(()) };
        self.exec.note(&format!("kill -TERM {}   # the source's mariadbd", process.pid()));
        match process.stop(libc::SIGTERM, Duration::from_secs(300)) {
            Ok((status, false)) if status.success() => Ok(()),
            Ok((status, killed)) => bail!(
                "the source's mariadbd ended with {status}{} (log {})",
                if killed { " after SIGKILL" } else { "" },
                self.log.display()
            ),
            Err(e) => Err(e).context("stopping the source's mariadbd"),
        }
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        if let Err(e) = self.shut_down() {
            warn(&format!("{e:#}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clone_urls_are_read() {
        let t = Target::parse("mariadb://root:p%40ss@127.0.0.1:57100/").unwrap();
        assert_eq!(t, Target { host: "127.0.0.1".into(), port: 57100, user: "root".into(), password: "p@ss".into() });
        assert_eq!(Target::parse("mysql://u:x@[::1]:3306").unwrap().host, "::1");
        let err = Target::parse("postgresql://u:secret@h:5/db").unwrap_err().to_string();
        assert!(!err.contains("secret"), "{err}");
        assert!(Target::parse("mariadb://u@h:5/").is_err());
    }
}
