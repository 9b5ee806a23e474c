//! The MariaDB engine against real MariaDB 10.11 servers on plain directories: a source made
//! by `mariadb-install-db` and run by the test, images prepared from a crashed copy and from
//! a live copy (`mariadb-backup`), instances started, logged into over TCP with the password
//! set, adopted, stopped and killed.
//!
//! They run as root: sources as the OS user `mysql`, instances as a uid of their own (as the
//! agent runs clones). Sources listen on ports 23900–23919, instances on 9300–9349. A missing
//! prerequisite fails the test with a message; nothing is skipped.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use engine::{Engine, InstanceSpec, Secret, SourceUrl, User};

const START: Duration = Duration::from_secs(120);

fn require(test: &str) {
    // SAFETY: geteuid has no preconditions.
    assert!(unsafe { libc::geteuid() } == 0, "{test} needs root: run the tests as root");
    for program in ["/usr/sbin/mariadbd", "/usr/bin/mariadb", "/usr/bin/mariadb-install-db", "/usr/bin/mariadb-backup"]
    {
        assert!(
            Path::new(program).is_file(),
            "{test} needs {program}: scripts/install installs mariadb-server, mariadb-client and mariadb-backup"
        );
    }
    assert!(User::lookup("mysql").is_ok(), "{test} needs the OS user mysql (the mariadb-server package makes it)");
}

/// A test's directory, passable by every uid (the servers reach their directories through it).
struct Work {
    dir: tempfile::TempDir,
    engine: engine_mariadb::Mariadb,
    mysql: User,
}

impl Work {
    fn new(test: &str) -> Work {
        require(test);
        let dir = tempfile::Builder::new().prefix("tc-mariadb-").tempdir_in("/var/tmp").unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o711)).unwrap();
        Work { dir, engine: engine_mariadb::Mariadb::new(), mysql: User::lookup("mysql").unwrap() }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// An empty directory of `user`'s.
    fn dir_of(&self, name: &str, user: &User) -> PathBuf {
        let path = self.path(name);
        fs::create_dir_all(&path).unwrap();
        std::os::unix::fs::chown(&path, Some(user.uid), Some(user.gid)).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o700)).unwrap();
        path
    }

    fn spec(&self, name: &str, data_dir: &Path, user: &User, port: u16) -> InstanceSpec {
        InstanceSpec {
            version: "10.11".into(),
            data_dir: data_dir.to_owned(),
            run_dir: self.path(&format!("run-{name}")),
            port,
            listen: vec!["127.0.0.1".parse().unwrap()],
            remote_clients: false,
            user: user.clone(),
            superuser: "root".into(),
            label: format!("thinclone-{name}"),
            memory: Some("32MB".into()),
            read_only: false,
        }
    }

    /// A copy of `from` at `name`, given to `user`.
    fn copy(&self, from: &Path, name: &str, user: &User) -> PathBuf {
        let to = self.path(name);
        sys::tree::copy(from, &to, sys::tree::CopyData::Copy, None).unwrap();
        sys::tree::chown(&to, user.uid, user.gid).unwrap();
        to
    }
}

/// A MariaDB source server run by the test as `mysql`, on 127.0.0.1 and a socket.
struct Source {
    data: PathBuf,
    socket: PathBuf,
    port: u16,
    log: PathBuf,
    child: Option<Child>,
}

impl Source {
    /// A new data directory made by `mariadb-install-db`, started.
    fn create(work: &Work, name: &str, port: u16) -> Source {
        let data = work.path(name);
        let run = work.dir_of(&format!("{name}-run"), &work.mysql);
        // Its own temporary directory: bootstraps running side by side in /tmp trip over
        // each other's temporary tables.
        let out = Command::new("/usr/bin/mariadb-install-db")
            .args(["--no-defaults", "--user=mysql", "--skip-test-db"])
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--tmpdir={}", run.display()))
            .current_dir("/")
            .output()
            .unwrap();
        assert!(out.status.success(), "mariadb-install-db: {}", String::from_utf8_lossy(&out.stderr));
        let mut source = Source { data, socket: run.join("s.sock"), port, log: run.join("log"), child: None };
        source.start();
        source
    }

    fn start(&mut self) {
        let log = fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new("/usr/sbin/mariadbd")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", self.data.display()))
            .arg(format!("--socket={}", self.socket.display()))
            .arg(format!("--pid-file={}", self.socket.with_extension("pid").display()))
            .arg(format!("--port={}", self.port))
            .args(["--bind-address=127.0.0.1", "--user=mysql", "--skip-name-resolve", "--innodb-buffer-pool-size=32M"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + START;
        while self.sql("SELECT 1").is_err() {
            assert!(Instant::now() < deadline, "the source did not start:\n{}", fs::read_to_string(&self.log).unwrap());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SQL as root over the socket (unix_socket: the test runs as root).
    fn sql(&self, sql: &str) -> Result<String, String> {
        let out = Command::new("/usr/bin/mariadb")
            .args(["--no-defaults", "--protocol=SOCKET", "-uroot", "-N", "-B"])
            .arg(format!("--socket={}", self.socket.display()))
            .args(["-e", sql])
            .output()
            .unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    #[allow(dead_code)]
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill has no memory-safety preconditions; the pid is our child's.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            child.wait().unwrap();
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Each file's size and content digest, to show that preparing or running left them alone.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, (u64, u64)> {
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_owned()];
    while let Some(dir) = todo.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                todo.push(path);
            } else {
                let mut bytes = Vec::new();
                fs::File::open(&path).unwrap().read_to_end(&mut bytes).unwrap();
                let digest =
                    bytes.iter().fold(0xcbf29ce484222325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x100000001b3));
                out.insert(path.strip_prefix(root).unwrap().to_owned(), (meta.len(), digest));
            }
        }
    }
    out
}

fn url(port: u16, user: &str, password: &str) -> String {
    format!("mariadb://{user}:{password}@127.0.0.1:{port}/")
}

#[test]
fn images_of_a_crashed_copy_and_of_a_live_server_start_clones_without_recovery() {
    let w = Work::new("images_of_a_crashed_copy_and_of_a_live_server_start_clones_without_recovery");
    let mut source = Source::create(&w, "source", 23900);
    source
        .sql(
            "CREATE USER 'root'@'%' IDENTIFIED BY 'src-pw'; GRANT ALL ON *.* TO 'root'@'%' WITH GRANT OPTION; \
             CREATE DATABASE d; CREATE TABLE d.t (id INT PRIMARY KEY, v TEXT) ENGINE=InnoDB; \
             INSERT INTO d.t VALUES (1, 'one'), (2, 'two'), (3, 'three');",
        )
        .unwrap();
    assert_eq!(w.engine.detect(&source.data).unwrap(), "10.11");
    assert!(w.engine.is_in_use(&source.data), "a running source was not seen");
    let err = w.engine.check_not_in_use(&source.data).unwrap_err();
    assert!(err.to_string().contains("--from-url mariadb://"), "{err}");

    // A live copy through mariadb-backup: the source runs on.
    let live_url = SourceUrl::parse(&url(23900, "root", "src-pw")).unwrap();
    w.engine.probe(&live_url).unwrap();
    let bad = SourceUrl::parse(&url(23900, "root", "wrong-pw")).unwrap();
    let err = w.engine.probe(&bad).unwrap_err();
    assert!(err.is_callers_mistake() && !err.to_string().contains("wrong-pw"), "{err}");
    let live = w.dir_of("live", &w.mysql);
    let mut calls = 0;
    w.engine.copy_live(&live_url, &live, &w.mysql, &mut |_, _| calls += 1).unwrap();
    assert!(calls >= 2);
    source.sql("INSERT INTO d.t VALUES (4, 'after the copy')").unwrap();
    let facts = w.engine.prepare(&live, &w.path("run-prepare-live"), &w.mysql).unwrap();
    assert_eq!((facts.version.as_str(), facts.superuser.as_str()), ("10.11", "root"));
    assert!(!live.join("xtrabackup_info").exists() && !live.join("backup-my.cnf").exists());

    // A copy of a crashed server: prepare runs its recovery once.
    source.kill();
    assert!(!w.engine.is_in_use(&source.data), "a dead server counted as running");
    let crashed = w.copy(&source.data, "crashed", &w.mysql);
    let facts = w.engine.prepare(&crashed, &w.path("run-prepare-crashed"), &w.mysql).unwrap();
    assert_eq!(facts.superuser, "root");

    for (image, rows, port) in [(&live, "3", 9300), (&crashed, "4", 9301)] {
        let before = snapshot(image);
        let clone_user = User::synthetic(61_900 + port as u32 - 9300, 61_900 + port as u32 - 9300);
        let clone = w.copy(image, &format!("clone-{port}"), &clone_user);
        let spec = w.spec(&format!("clone-{port}"), &clone, &clone_user, port);
        let instance = w.engine.start(&spec, START).unwrap();
        let log = fs::read_to_string(spec.run_dir.join("mariadbd.log")).unwrap();
        assert!(!log.contains("crash recovery"), "the clone recovered:\n{log}");
        assert!(!log.contains("Starting crash recovery"), "{log}");
        let meta = fs::metadata(&spec.run_dir).unwrap();
        assert_eq!((meta.uid(), meta.mode() & 0o777), (clone_user.uid, 0o700));
        // Nothing of ours in the data directory.
        assert!(!clone.join("mariadbd.pid").exists() && !clone.join("mariadbd.log").exists());

        let password = Secret::new("clone pw: é'\\\"");
        instance.set_password("root", &password).unwrap();
        let clone_url = w.engine.url("127.0.0.1", port, "root", password.expose());
        assert_eq!(w.engine.query(&clone_url, "SELECT COUNT(*) FROM d.t").unwrap(), rows);
        w.engine.query(&clone_url, "INSERT INTO d.t VALUES (100, 'clone')").unwrap();
        let wrong = w.engine.url("127.0.0.1", port, "root", "nope");
        assert!(w.engine.query(&wrong, "SELECT 1").is_err());
        assert_eq!(instance.sql("SELECT COUNT(*) FROM d.t").unwrap(), (rows.parse::<u32>().unwrap() + 1).to_string());

        // A template's script, with its settings as user variables.
        let out = instance
            .run_script(
                Some("d"),
                "SELECT @`thinclone.clone`, COUNT(*) FROM t;",
                &[("thinclone.clone".into(), "c1".into())],
            )
            .unwrap();
        assert_eq!(out, format!("c1\t{}", rows.parse::<u32>().unwrap() + 1));

        // An owner that is not a superuser.
        let owner_pw = Secret::new("owner-pw");
        instance.make_owner("owner", &owner_pw).unwrap();
        let owner_url = w.engine.url("127.0.0.1", port, "owner", owner_pw.expose());
        w.engine.query(&owner_url, "INSERT INTO d.t VALUES (101, 'owner')").unwrap();
        assert!(w.engine.query(&owner_url, "SELECT COUNT(*) FROM mysql.global_priv").is_err());
        assert!(instance.make_owner("root", &owner_pw).is_err());

        // Detached, adopted, and stopped cleanly.
        let pid = instance.pid();
        instance.detach();
        let adopted = w.engine.adopt(&spec).expect("the running server was not adopted");
        assert_eq!(adopted.pid(), pid);
        assert_eq!(
            w.engine.query(&clone_url, "SELECT COUNT(*) FROM d.t").unwrap(),
            (rows.parse::<u32>().unwrap() + 2).to_string()
        );
        adopted.stop(Duration::from_secs(60)).unwrap();
        w.engine.check_not_in_use(&clone).unwrap();

        // Killed, and found as a stray: the next start recovers what was committed.
        let instance = w.engine.start(&spec, START).unwrap();
        instance.detach();
        assert!(w.engine.stop_stray(&spec).unwrap());
        assert!(!w.engine.is_in_use(&clone));
        let instance = w.engine.start(&spec, START).unwrap();
        assert_eq!(instance.sql("SELECT COUNT(*) FROM d.t").unwrap(), (rows.parse::<u32>().unwrap() + 2).to_string());
        instance.stop(Duration::from_secs(60)).unwrap();

        assert_eq!(snapshot(image), before, "the image changed");
    }
}

#[test]
fn what_the_engine_refuses() {
    let w = Work::new("what_the_engine_refuses");
    let empty = w.dir_of("empty", &w.mysql);
    let err = w.engine.detect(&empty).unwrap_err();
    assert!(err.is_callers_mistake() && err.to_string().contains("not a MariaDB data directory"), "{err}");
    // A read-only start is refused, as are sources that are not servers of this host.
    let spec = InstanceSpec { read_only: true, ..w.spec("ro", &empty, &w.mysql, 9302) };
    let err = w.engine.start(&spec, START).err().unwrap();
    assert!(err.to_string().contains("does not support read-only"), "{err}");
    let err = w.engine.probe(&SourceUrl::parse("mariadb://u:secret@127.0.0.1:23919/").unwrap()).unwrap_err();
    assert!(err.is_callers_mistake() && !err.to_string().contains("secret"), "{err}");
}

/// The agent's statements go over a socket in a directory the clone's OS user can change: a
/// socket swapped for a link to another clone's must get neither the statement nor a
/// password.
#[test]
fn a_swapped_socket_gets_nothing() {
    let w = Work::new("a_swapped_socket_gets_nothing");
    let out = Command::new("/usr/bin/mariadb-install-db")
        .args(["--no-defaults", "--user=mysql", "--skip-test-db"])
        .arg(format!("--datadir={}", w.path("fresh").display()))
        .arg(format!("--tmpdir={}", w.dir_of("fresh-tmp", &w.mysql).display()))
        .current_dir("/")
        .output()
        .unwrap();
    assert!(out.status.success(), "mariadb-install-db: {}", String::from_utf8_lossy(&out.stderr));
    let image = w.copy(&w.path("fresh"), "image", &w.mysql);
    w.engine.prepare(&image, &w.path("run-prepare"), &w.mysql).unwrap();
    let user = User::synthetic(61_950, 61_950);
    let a = w.spec("a", &w.copy(&image, "a", &user), &user, 9303);
    let b = w.spec("b", &w.copy(&image, "b", &user), &user, 9304);
    let instance_a = w.engine.start(&a, START).unwrap();
    let instance_b = w.engine.start(&b, START).unwrap();
    instance_b.set_password("root", &Secret::new("b-pw")).unwrap();
    fs::remove_file(a.run_dir.join("mariadbd.sock")).unwrap();
    std::os::unix::fs::symlink(b.run_dir.join("mariadbd.sock"), a.run_dir.join("mariadbd.sock")).unwrap();
    let err = instance_a.set_password("root", &Secret::new("a-pw")).unwrap_err();
    assert!(err.to_string().contains("its socket was replaced"), "{err}");
    let err = instance_a.sql("CREATE DATABASE planted").unwrap_err();
    assert!(err.to_string().contains("its socket was replaced"), "{err}");
    // B kept its own password, and got nothing.
    let b_url = w.engine.url("127.0.0.1", 9304, "root", "b-pw");
    assert_eq!(
        w.engine
            .query(&b_url, "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = 'planted'")
            .unwrap(),
        "0"
    );
    instance_a.stop(Duration::from_secs(60)).unwrap();
    instance_b.stop(Duration::from_secs(60)).unwrap();

    // The server's OS user owns its run directory: a link planted as `files` (the only place
    // its superuser's file statements reach) is replaced, never followed.
    let roots = w.path("roots-own");
    fs::create_dir(&roots).unwrap();
    fs::set_permissions(&roots, fs::Permissions::from_mode(0o755)).unwrap();
    fs::remove_dir(a.run_dir.join("files")).unwrap();
    std::os::unix::fs::symlink(&roots, a.run_dir.join("files")).unwrap();
    let instance_a = w.engine.start(&a, START).unwrap();
    let files = fs::symlink_metadata(a.run_dir.join("files")).unwrap();
    assert!(files.is_dir() && files.uid() == user.uid, "{files:?}");
    let meta = fs::metadata(&roots).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (0, 0o755), "the link's target was changed");
    instance_a.stop(Duration::from_secs(60)).unwrap();
}
