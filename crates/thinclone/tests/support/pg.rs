//! Real PostgreSQL servers for the integration tests: found on the host, run as the
//! `postgres` OS user when the tests run as root.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::{Arc, Mutex};

/// The bin directory of the newest PostgreSQL on the host (Debian layout), if any.
pub fn bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// Checks that PostgreSQL tests can run here (root, and server programs), and fails the test
/// with what is missing if not.
pub fn require(test: &str) {
    assert!(unsafe { libc::geteuid() } == 0, "{test} needs root: run the tests with scripts/test");
    assert!(
        bin_dir().is_some(),
        "{test} needs PostgreSQL server programs under /usr/lib/postgresql; scripts/install installs them"
    );
}

pub fn postgres_ids() -> (u32, u32) {
    let name = std::ffi::CString::new("postgres").unwrap();
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(!pw.is_null(), "no postgres user");
    unsafe { ((*pw).pw_uid, (*pw).pw_gid) }
}

/// Makes `path` owned by the postgres user.
pub fn chown_postgres(path: &Path) {
    let (uid, gid) = postgres_ids();
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
}

/// Runs a PostgreSQL program as the postgres user.
pub fn command(program: &str) -> Command {
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", "postgres", "--"]).arg(bin_dir().unwrap().join(program));
    cmd.env("PGCONNECT_TIMEOUT", "10");
    cmd
}

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("running a PostgreSQL program");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr) + String::from_utf8_lossy(&out.stdout)
    );
    out
}

/// A PostgreSQL server on a data directory, listening only on a Unix socket.
pub struct Server {
    pub data: PathBuf,
    pub port: u16,
    pub socket_dir: PathBuf,
    log: PathBuf,
    /// The postmaster's pid, read at start: the data directory may be unreadable when the
    /// server has to be killed (a dead FUSE mount).
    pid: std::cell::Cell<Option<i32>>,
}

impl Server {
    /// `work` is a directory for the socket and log; it is made usable by postgres.
    pub fn new(data: &Path, port: u16, work: &Path) -> Server {
        let socket_dir = work.join(format!("sock-{port}"));
        fs::create_dir_all(&socket_dir).unwrap();
        chown_postgres(&socket_dir);
        Server {
            data: data.to_owned(),
            port,
            socket_dir,
            log: work.join(format!("postgres-{port}.log")),
            pid: std::cell::Cell::new(None),
        }
    }

    pub fn initdb(&self) {
        fs::create_dir_all(&self.data).unwrap();
        fs::set_permissions(&self.data, fs::Permissions::from_mode(0o700)).unwrap();
        chown_postgres(&self.data);
        run(command("initdb").args(["-D"]).arg(&self.data).args(["-A", "trust", "-U", "postgres", "--no-sync"]));
    }

    pub fn start(&self) {
        let _ = fs::remove_file(&self.log);
        fs::write(&self.log, "").unwrap();
        chown_postgres(&self.log);
        let listen = if self.data.join("thinclone-test-tcp").exists() { "127.0.0.1" } else { "" };
        let opts = format!(
            "-p {} -k {} -c listen_addresses='{listen}' -c shared_buffers=64MB -c max_wal_size=256MB -c fsync=on",
            self.port,
            self.socket_dir.display()
        );
        let out = command("pg_ctl")
            .args(["-D"])
            .arg(&self.data)
            .args(["-o", &opts, "-l"])
            .arg(&self.log)
            .args(["-w", "-t", "120", "start"])
            .output()
            .unwrap();
        assert!(out.status.success(), "pg_ctl start failed:\n{}", self.log_tail());
        let pid = fs::read_to_string(self.data.join("postmaster.pid")).unwrap();
        self.pid.set(pid.lines().next().and_then(|l| l.trim().parse().ok()));
    }

    /// Makes the server (from its next start) listen on 127.0.0.1 and take TCP logins with a
    /// password only: `postgres` gets `password`. The socket stays `trust` for the tests' own
    /// psql. Call it while the server runs.
    pub fn require_passwords(&self, password: &str) {
        self.psql("postgres", &format!("ALTER ROLE postgres PASSWORD '{password}'"));
        let hba = "local all all trust\n\
                   host all all 127.0.0.1/32 scram-sha-256\n\
                   host replication all 127.0.0.1/32 scram-sha-256\n";
        fs::write(self.data.join("pg_hba.conf"), hba).unwrap();
        fs::write(self.data.join("thinclone-test-tcp"), "").unwrap();
        self.stop();
        self.start();
    }

    pub fn stop(&self) {
        run(command("pg_ctl").args(["-D"]).arg(&self.data).args(["-m", "fast", "-w", "-t", "120", "stop"]));
    }

    /// Kills every process of this server at once, as a crash of the host would.
    pub fn kill(&self) {
        let Some(pid) = self.pid.take() else { return };
        let children = children_of(pid);
        for p in std::iter::once(pid).chain(children) {
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        // Wait until they are gone, so that nothing holds files on a mount.
        for _ in 0..100 {
            if !Path::new(&format!("/proc/{pid}")).exists() && children_of(pid).is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    pub fn log_tail(&self) -> String {
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Runs SQL with psql and returns its unaligned, tuples-only output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = run(self.psql_command(db).args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql]));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    pub fn psql_command(&self, db: &str) -> Command {
        let mut cmd = command("psql");
        cmd.args(["-h"]).arg(&self.socket_dir).args(["-p", &self.port.to_string(), "-U", "postgres", "-d", db]);
        cmd
    }

    pub fn pgbench(&self) -> Command {
        let mut cmd = command("pgbench");
        cmd.args(["-h"]).arg(&self.socket_dir).args(["-p", &self.port.to_string(), "-U", "postgres"]);
        cmd
    }
}

/// A client that inserts one row per transaction and records which ones the server
/// acknowledged as committed.
pub struct Committer {
    child: Child,
    stdin: Option<ChildStdin>,
    acked: Arc<Mutex<Vec<u64>>>,
    feeder: Option<std::thread::JoinHandle<()>>,
}

impl Committer {
    pub fn start(server: &Server, db: &str, table: &str) -> Committer {
        let mut child = server
            .psql_command(db)
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let acked = Arc::new(Mutex::new(Vec::new()));
        let acked_writer = acked.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(n) = line.strip_prefix("ack ").and_then(|n| n.trim().parse().ok()) {
                    acked_writer.lock().unwrap().push(n);
                }
            }
        });
        let mut stdin = child.stdin.take().unwrap();
        let table = table.to_string();
        // psql reads ahead; feed it in small steps so that it is always mid-stream.
        let feeder = std::thread::spawn(move || {
            for n in 1u64.. {
                let line = format!("INSERT INTO {table} VALUES ({n});\n\\echo ack {n}\n");
                if stdin.write_all(line.as_bytes()).is_err() {
                    return;
                }
                if n % 20 == 0 {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            }
        });
        Committer { child, stdin: None, acked, feeder: Some(feeder) }
    }

    /// The rows acknowledged as committed so far.
    pub fn acked(&self) -> Vec<u64> {
        self.acked.lock().unwrap().clone()
    }

    pub fn stop(mut self) -> Vec<u64> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        drop(self.stdin.take());
        if let Some(f) = self.feeder.take() {
            let _ = f.join();
        }
        self.acked()
    }
}

/// The processes whose parent is `pid`.
fn children_of(pid: i32) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| {
            let child: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(format!("/proc/{child}/stat")).ok()?;
            // The command name may hold spaces; the fields after it are space-separated.
            let ppid: i32 = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
            (ppid == pid).then_some(child)
        })
        .collect()
}
