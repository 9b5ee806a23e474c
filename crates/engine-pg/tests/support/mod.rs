//! What the engine's integration tests share: the engine, the `postgres` OS user and a
//! scratch directory; source servers started by hand; checksums of whole trees; small
//! filesystems that fill up.
//!
//! The tests run as root, with the servers as the OS user `postgres`. A missing
//! prerequisite fails the test with a message; nothing is skipped.

#![allow(dead_code)] // Each test binary uses its own part of this.

use std::collections::BTreeMap;
use std::fs;
use std::hash::Hasher;
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use engine::{Engine, Instance, InstanceSpec, User};
use sys::Program;

pub const BIN: &str = "/usr/lib/postgresql/15/bin";
pub const START: Duration = Duration::from_secs(60);

/// The engine, the `postgres` OS user and a scratch directory it can reach.
pub struct Setup {
    pub engine: Arc<dyn Engine>,
    pub user: User,
    pub work: tempfile::TempDir,
}

pub fn setup() -> Setup {
    assert!(sys::user::running_as_root(), "the engine tests run as root (their servers run as postgres)");
    assert!(Path::new(BIN).join("postgres").is_file(), "the engine tests need PostgreSQL 15 in {BIN}");
    let user = User::lookup("postgres").expect("the engine tests need the OS user postgres");
    let work = tempfile::tempdir().unwrap();
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).unwrap();
    Setup { engine: engine_pg::engine(), user, work }
}

impl Setup {
    pub fn path(&self, name: &str) -> PathBuf {
        self.work.path().join(name)
    }

    /// An empty directory owned by postgres.
    pub fn dir(&self, name: &str) -> PathBuf {
        let path = self.path(name);
        fs::create_dir_all(&path).unwrap();
        std::os::unix::fs::chown(&path, Some(self.user.uid), Some(self.user.gid)).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o700)).unwrap();
        path
    }

    /// A new data directory made by initdb, with `superuser` as its bootstrap superuser.
    pub fn initdb(&self, name: &str, superuser: &str, extra: &[&str]) -> PathBuf {
        let data = self.dir(name);
        Program::new(Path::new(BIN).join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", superuser, "--no-sync"])
            .args(extra)
            .user(&self.user)
            .run()
            .unwrap();
        data
    }

    pub fn spec(&self, name: &str, data_dir: &Path, superuser: &str) -> InstanceSpec {
        InstanceSpec {
            version: "15".into(),
            data_dir: data_dir.to_owned(),
            run_dir: self.path(&format!("run-{name}")),
            port: free_port(),
            listen: vec!["127.0.0.1".parse().unwrap()],
            remote_clients: false,
            user: self.user.clone(),
            superuser: superuser.into(),
            label: format!("test-{name}"),
            memory: Some("32MB".into()),
            read_only: false,
        }
    }

    pub fn start(&self, spec: &InstanceSpec) -> Box<dyn Instance> {
        self.engine.start(spec, START).unwrap_or_else(|e| panic!("starting {}: {e}", spec.label))
    }

    /// A copy of `from` at `to` as the agent makes one from a directory (`cp -a`, then
    /// given to the database's user), standing in for an image's copy or a clone.
    pub fn copy(&self, from: &Path, to: &Path) {
        sys::tree::copy(from, to, sys::tree::CopyData::Copy, None).unwrap();
        sys::tree::chown(to, self.user.uid, self.user.gid).unwrap();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Whether any live process has an argument under `dir` (a server's `-D`).
pub fn anything_runs_on(dir: &Path) -> bool {
    !sys::procfs::processes_under(dir).is_empty()
}

/// A source server started by hand, as an operator's would run: its own configuration in
/// its data directory (initdb's pg_hba.conf: trust on the socket, SCRAM over TCP, also for
/// replication), a socket in its own run directory, TCP on 127.0.0.1. Stopped at once when
/// dropped.
pub struct Source {
    pub data: PathBuf,
    pub run: PathBuf,
    pub port: u16,
    user: User,
    process: Option<sys::Process>,
}

impl Source {
    /// A new source (initdb) named `name`, not started.
    pub fn init(t: &Setup, name: &str) -> Source {
        let data = t.initdb(name, "postgres", &["--auth-local=trust", "--auth-host=scram-sha-256"]);
        let run = t.dir(&format!("run-{name}"));
        Source { data, run, port: free_port(), user: t.user.clone(), process: None }
    }

    pub fn start(&mut self) {
        assert!(self.process.is_none(), "the source already runs");
        let process = Program::new(Path::new(BIN).join("postgres"))
            .arg("-D")
            .arg(&self.data)
            .args(["-c", &format!("port={}", self.port), "-c", "listen_addresses=127.0.0.1", "-c"])
            .arg(format!("unix_socket_directories={}", self.run.display()))
            .user(&self.user)
            .spawn_logged(&self.run.join("log"))
            .unwrap();
        let pid = process.pid();
        self.process = Some(process);
        let data = self.data.clone();
        let ready = sys::wait::until(START, Duration::from_millis(20), || {
            let text = fs::read_to_string(data.join("postmaster.pid")).unwrap_or_default();
            let mut lines = text.lines();
            let ours = lines.next().map(str::trim) == Some(pid.to_string().as_str());
            (ours && lines.nth(6).map(str::trim) == Some("ready")).then_some(())
        });
        assert!(ready.is_some(), "the source server did not start:\n{}", self.log());
    }

    pub fn pid(&self) -> u32 {
        self.process.as_ref().expect("the source runs").pid()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.run.join("log")).unwrap_or_default()
    }

    /// Runs SQL as postgres over the socket; returns the unaligned output.
    pub fn sql(&self, sql: &str) -> String {
        let out = Program::new(Path::new(BIN).join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.run)
            .args(["-p", &self.port.to_string(), "-U", "postgres", "-d", "postgres", "-c", sql])
            .user(&self.user)
            .run()
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// A fast, clean shutdown.
    pub fn stop(&mut self) {
        let mut process = self.process.take().expect("the source runs");
        let (status, killed) = process.stop(libc::SIGINT, Duration::from_secs(60)).unwrap();
        assert!(!killed, "the source did not stop cleanly: {status}\n{}", self.log());
    }

    /// Kills the postmaster and its children at once, as a crash of the host would.
    pub fn kill(&mut self) {
        let mut process = self.process.take().expect("the source runs");
        let pid = process.pid() as i32;
        let children = children_of(pid);
        for p in std::iter::once(pid).chain(children.iter().copied()) {
            // SAFETY: kill has no memory-safety preconditions; these are the source's
            // postmaster (our child, not yet reaped) and its children.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        process.wait_timeout(Duration::from_secs(30)).unwrap().expect("the killed source did not exit");
        let gone = sys::wait::until(Duration::from_secs(30), Duration::from_millis(20), || {
            (!children.iter().any(|&c| sys::procfs::is_alive(c))).then_some(())
        });
        assert!(gone.is_some(), "the killed source's processes linger");
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        if let Some(mut process) = self.process.take() {
            if let Err(e) = process.stop(libc::SIGQUIT, Duration::from_secs(10)) {
                eprintln!("stopping the source server: {e}");
            }
        }
    }
}

/// The processes whose parent is `pid`.
pub fn children_of(pid: i32) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|child| {
            let stat = fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<i32>().ok());
            ppid == Some(pid)
        })
        .collect()
}

/// Everything about every entry of a tree (not following symlinks) that a write could
/// change: kind, mode, owner, size, modification time, and a hash of the bytes of a file or
/// the target of a link.
pub type Checksums = BTreeMap<PathBuf, String>;

pub fn checksums(root: &Path) -> Checksums {
    let mut sums = BTreeMap::new();
    let mut todo = vec![root.to_owned()];
    while let Some(path) = todo.pop() {
        let meta = fs::symlink_metadata(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let what = if meta.is_dir() {
            for entry in fs::read_dir(&path).unwrap() {
                todo.push(entry.unwrap().path());
            }
            "dir".to_owned()
        } else if meta.file_type().is_symlink() {
            format!("link {}", fs::read_link(&path).unwrap().display())
        } else {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            hasher.write(&fs::read(&path).unwrap());
            format!("file {:016x}", hasher.finish())
        };
        let rel = path.strip_prefix(root).unwrap().to_owned();
        let stamp = format!(
            "{what} mode {:o} owner {}:{} size {} mtime {}.{}",
            meta.mode(),
            meta.uid(),
            meta.gid(),
            meta.len(),
            meta.mtime(),
            meta.mtime_nsec()
        );
        sums.insert(rel, stamp);
    }
    sums
}

/// Asserts that two checksums of one tree are equal, naming what differs.
pub fn assert_unchanged(what: &str, before: &Checksums, after: &Checksums) {
    let mut changes = Vec::new();
    for (path, sum) in before {
        match after.get(path) {
            None => changes.push(format!("{} removed", path.display())),
            Some(now) if now != sum => changes.push(format!("{} changed: {sum} -> {now}", path.display())),
            Some(_) => {}
        }
    }
    for path in after.keys().filter(|p| !before.contains_key(*p)) {
        changes.push(format!("{} added", path.display()));
    }
    assert!(changes.is_empty(), "{what} changed:\n{}", changes.join("\n"));
}

/// A tmpfs of a given size, mounted for a test and unmounted when dropped.
pub struct SmallDisk {
    pub path: PathBuf,
}

impl SmallDisk {
    pub fn mount(path: PathBuf, megabytes: u64) -> SmallDisk {
        fs::create_dir_all(&path).unwrap();
        Program::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m,mode=0755"), "thinclone-test"])
            .arg(&path)
            .run()
            .unwrap_or_else(|e| panic!("the full-disk tests mount a tmpfs (as root): {e}"));
        SmallDisk { path }
    }

    /// Fills it up to `keep` free bytes with a file of zeros (written, not sparse).
    pub fn fill_leaving(&self, keep: u64) {
        let free = sys::space::free_bytes(&self.path).unwrap();
        let size = free.saturating_sub(keep);
        let file = self.path.join("filler");
        let chunk = vec![0u8; 1 << 20];
        let mut f = fs::File::create(&file).unwrap();
        let mut written = 0;
        while written < size {
            let n = chunk.len().min((size - written) as usize);
            std::io::Write::write_all(&mut f, &chunk[..n]).unwrap();
            written += n as u64;
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // A server a failed test left running keeps it busy: then it is detached now and
        // freed when that server exits, rather than left mounted for good.
        if let Err(e) = Program::new("umount").arg(&self.path).run() {
            eprintln!("unmounting the test's tmpfs at {}: {e}; detaching it (umount --lazy)", self.path.display());
            if let Err(e) = Program::new("umount").arg("--lazy").arg(&self.path).run() {
                eprintln!("detaching the test's tmpfs at {}: {e}", self.path.display());
            }
        }
    }
}
