//! Real MariaDB servers for the integration tests: a source data directory made by
//! `mariadb-install-db`, run by the test as the OS user `mysql` on a loopback port of the
//! sources' range (23900–23919), and the `mariadb` client over a clone's URL.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PROGRAMS: [&str; 4] =
    ["/usr/sbin/mariadbd", "/usr/bin/mariadb", "/usr/bin/mariadb-install-db", "/usr/bin/mariadb-backup"];

/// Checks that MariaDB tests can run here (root, the server, client and backup programs, the
/// `mysql` user), and fails the test with what is missing if not.
pub fn require(test: &str) {
    assert!(unsafe { libc::geteuid() } == 0, "{test} needs root: run the tests with scripts/test");
    for program in PROGRAMS {
        assert!(
            Path::new(program).is_file(),
            "{test} needs {program}: scripts/install installs mariadb-server, mariadb-client and mariadb-backup"
        );
    }
    assert!(
        sys::User::lookup("mysql").is_ok(),
        "{test} needs the OS user mysql, which the mariadb-server package makes; scripts/install installs it"
    );
}

/// A MariaDB server on a data directory of its own, run as `mysql`, on 127.0.0.1:`port` and a
/// socket in `<name>-run/`. Dropping it kills it.
pub struct Source {
    pub data: PathBuf,
    pub port: u16,
    socket: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Source {
    /// A new data directory at `work/name` made by `mariadb-install-db`, started; root logs
    /// in over TCP with `password`.
    pub fn create(work: &Path, name: &str, port: u16, password: &str) -> Source {
        let mysql = sys::User::lookup("mysql").unwrap();
        let data = work.join(name);
        let run = work.join(format!("{name}-run"));
        fs::create_dir_all(&run).unwrap();
        std::os::unix::fs::chown(&run, Some(mysql.uid), Some(mysql.gid)).unwrap();
        fs::set_permissions(&run, fs::Permissions::from_mode(0o700)).unwrap();
        let out = Command::new(PROGRAMS[2])
            .args(["--no-defaults", "--user=mysql", "--skip-test-db"])
            .arg(format!("--datadir={}", data.display()))
            // Its own temporary directory: bootstraps side by side in /tmp trip over each
            // other's temporary tables.
            .arg(format!("--tmpdir={}", run.display()))
            .current_dir("/")
            .output()
            .unwrap();
        assert!(out.status.success(), "mariadb-install-db failed: {}", String::from_utf8_lossy(&out.stderr));
        let mut source = Source { data, port, socket: run.join("s.sock"), log: run.join("mariadbd.log"), child: None };
        source.start();
        source.sql(&format!(
            "CREATE USER 'root'@'%' IDENTIFIED BY '{password}'; GRANT ALL ON *.* TO 'root'@'%' WITH GRANT OPTION"
        ));
        source
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "the source runs already");
        let log = fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(PROGRAMS[0])
            .arg("--no-defaults")
            .arg(format!("--datadir={}", self.data.display()))
            .arg(format!("--socket={}", self.socket.display()))
            .arg(format!("--pid-file={}", self.socket.with_extension("pid").display()))
            .arg(format!("--port={}", self.port))
            .args(["--bind-address=127.0.0.1", "--user=mysql", "--skip-name-resolve", "--innodb-buffer-pool-size=64M"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.try_sql("SELECT 1").is_err() {
            assert!(Instant::now() < deadline, "the source did not start:\n{}", fs::read_to_string(&self.log).unwrap());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SQL as root over the socket (through unix_socket: the tests run as root).
    pub fn try_sql(&self, sql: &str) -> Result<String, String> {
        let out = Command::new(PROGRAMS[1])
            .args(["--no-defaults", "--protocol=SOCKET", "--user=root", "--batch", "--skip-column-names"])
            .arg(format!("--socket={}", self.socket.display()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                // A client that cannot connect (a server still starting) exits before it reads,
                // and the write fails with EPIPE: its exit status, below, says what happened.
                let _ = std::io::Write::write_all(&mut child.stdin.take().unwrap(), sql.as_bytes());
                child.wait_with_output()
            })
            .unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// A client that inserts into `table` (one column, a number) one row per transaction,
    /// as fast as the server takes them, until the returned writer is stopped.
    pub fn writer(&self, table: &str) -> Writer {
        let mut child = Command::new(PROGRAMS[1])
            .args(["--no-defaults", "--protocol=SOCKET", "--user=root", "--batch", "--skip-column-names"])
            .arg(format!("--socket={}", self.socket.display()))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let table = table.to_owned();
        let feeder = std::thread::spawn(move || {
            for n in 1u64.. {
                let line = format!("INSERT INTO {table} VALUES ({n});\n");
                if std::io::Write::write_all(&mut stdin, line.as_bytes()).is_err() {
                    return;
                }
            }
        });
        Writer { child, feeder: Some(feeder) }
    }

    pub fn sql(&self, sql: &str) -> String {
        self.try_sql(sql).unwrap_or_else(|e| panic!("the source refused {sql:?}: {e}"))
    }

    /// Stops it cleanly (SIGTERM) and waits.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let status = child.wait().unwrap();
            assert!(status.success(), "the source exited with {status}");
        }
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // In a drop, possibly while a test panics: the source may be gone already, and a
            // failure here has no one to tell.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs SQL through a clone's `mariadb://USER:PASSWORD@HOST:PORT/` URL with the `mariadb`
/// client (the password in its environment); its rows, tab-separated.
pub fn query(url: &str, sql: &str) -> Result<String, String> {
    let parsed = url::Url::parse(url).map_err(|e| e.to_string())?;
    let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
    let out = Command::new(PROGRAMS[1])
        .args(["--no-defaults", "--protocol=TCP", "--batch", "--skip-column-names", "--connect-timeout=10"])
        .arg(format!("--host={}", parsed.host_str().unwrap_or_default()))
        .arg(format!("--port={}", parsed.port().unwrap_or(3306)))
        .arg(format!("--user={}", decode(parsed.username())))
        .env("MYSQL_PWD", decode(parsed.password().unwrap_or_default()))
        .args(["-e", sql])
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// A client writing into a source (`Source::writer`).
pub struct Writer {
    child: Child,
    feeder: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    pub fn stop(mut self) {
        // The client may have ended already (its server stopped); its feeder then ends on a
        // closed pipe. What it wrote is what the caller checks.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(feeder) = self.feeder.take() {
            let _ = feeder.join();
        }
    }
}
