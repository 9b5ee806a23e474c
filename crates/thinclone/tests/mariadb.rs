//! MariaDB end to end (issue 16): a real `thinclone serve` driven by the real CLI, making
//! images of a real MariaDB 10.11 source (made by `mariadb-install-db` and run by the test)
//! from its live server (`--from-url mariadb://…`, through `mariadb-backup`) and from its
//! stopped data directory (`--from-dir`), and clones of them on the cowfs and copy drivers,
//! each a real `mariadbd` reached over its URL with the `mariadb` client.
//!
//! The sources listen on 23901–23904; the daemons' clones on 9310–9349.

mod support;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use api::{CloneStatus, ImageStatus, Operation, OperationState};
use support::daemon::{mounts_under, processes_under, Daemon, UrlOf};
use support::mariadb::{query, Source};

fn require(test: &str) {
    support::require_fuse(test);
    support::mariadb::require(test);
}

fn sql(url: &str, statement: &str) -> String {
    query(url, statement).unwrap_or_else(|e| panic!("{statement:?} on {url} failed: {e}"))
}

fn count(url: &str) -> u64 {
    sql(url, "SELECT COUNT(*) FROM shop.items").parse().unwrap()
}

fn check_ready_clone(d: &Daemon, clone: &api::Clone, name: &str) {
    assert_eq!(clone.name.as_str(), name);
    assert_eq!(clone.status, CloneStatus::Ready, "{clone:?}");
    assert!((d.ports.0..=d.ports.1).contains(&clone.port), "port {} is outside {:?}", clone.port, d.ports);
    let expected = format!("@127.0.0.1:{}/", clone.port);
    assert!(clone.url().starts_with("mariadb://root:") && clone.url().contains(&expected), "{clone:?}");
    assert_eq!(clone.user, "root");
}

fn create_clone(d: &Daemon, name: &str, image: &str, driver: &str) -> api::Clone {
    let started = Instant::now();
    let clone: api::Clone = d.ok(&["clone", "create", name, "--image", image, "--driver", driver]);
    check_ready_clone(d, &clone, name);
    assert_eq!(sql(clone.url(), "SELECT 1"), "1", "clone {name} said ready but does not answer SQL");
    eprintln!("clone {name} ({driver}): answered SQL {} ms after `clone create`", started.elapsed().as_millis());
    clone
}

#[test]
fn mariadb_images_and_clones() {
    require("mariadb_images_and_clones");
    let work = tempfile::Builder::new().prefix("thinclone-mariadb-test-").tempdir().unwrap();
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let mut source = Source::create(work.path(), "source", 23901, "source-pw");
    source.sql(
        "CREATE DATABASE shop; \
         CREATE TABLE shop.items (id INT PRIMARY KEY, name VARCHAR(100), price DECIMAL(10,2)) ENGINE=InnoDB; \
         INSERT INTO shop.items SELECT seq, CONCAT('item ', seq), seq / 100 FROM shop.seq_1_to_1000;",
    );
    // The issue's size: a source of more than 500 MB (2 million rows of 256 bytes).
    source.sql(
        "CREATE TABLE shop.bulk (id INT PRIMARY KEY, payload VARCHAR(300)) ENGINE=InnoDB; \
         INSERT INTO shop.bulk SELECT seq, REPEAT(MD5(seq), 8) FROM shop.seq_1_to_2000000;",
    );
    let source_bytes = sys::tree::size(&source.data).bytes;
    assert!(source_bytes > 500 << 20, "the source holds {} MiB", source_bytes >> 20);
    eprintln!("the source holds {} MiB", source_bytes >> 20);
    let mut d = Daemon::start(&work.path().join("data"), (9310, 9319));

    // An image of the live server while a client writes to it; the source takes a write
    // after it.
    source.sql("CREATE TABLE shop.log (n BIGINT PRIMARY KEY) ENGINE=InnoDB");
    let writer = source.writer("shop.log");
    std::thread::sleep(Duration::from_millis(300));
    let live: api::Image =
        d.ok(&["image", "create", "live", "--from-url", "mariadb://root:source-pw@127.0.0.1:23901/"]);
    writer.stop();
    let written: u64 = source.sql("SELECT COUNT(*) FROM shop.log").parse().unwrap();
    assert_eq!(live.status, ImageStatus::Ready, "{live:?}");
    assert_eq!((live.engine.as_str(), live.engine_version.as_deref()), ("mariadb", Some("10.11")), "{live:?}");
    source.sql("INSERT INTO shop.items VALUES (1001, 'after the live image', 1)");
    // A running source's directory is refused; once stopped it makes an image.
    let err = d.cli::<serde_json::Value>(&["image", "create", "cold", "--from-dir", source.data.to_str().unwrap()]);
    let err = err.expect_err("an image of a running server's directory was made");
    assert!(err.contains("running") && err.contains("--from-url mariadb://"), "{err}");
    source.stop();
    let cold: api::Image = d.ok(&["image", "create", "cold", "--from-dir", source.data.to_str().unwrap()]);
    assert_eq!(cold.status, ImageStatus::Ready, "{cold:?}");
    assert_eq!((cold.engine.as_str(), cold.engine_version.as_deref()), ("mariadb", Some("10.11")), "{cold:?}");
    let shown: api::Image = d.ok(&["image", "show", "cold"]);
    assert_eq!(shown.engine, "mariadb");
    let images = [d.data_dir.join("images/live"), d.data_dir.join("images/cold")];
    // The live image's redo log is MariaDB's default size, not the 4 MiB a backup leaves.
    for dir in &images {
        let redo = support::residue::files(dir).into_iter().find(|f| f.ends_with("ib_logfile0")).unwrap();
        assert!(fs::metadata(&redo).unwrap().len() >= 96 << 20, "{} is smaller than 96 MiB", redo.display());
    }
    let before: Vec<_> = images.iter().map(|dir| support::snapshot(dir)).collect();

    // Three clones of the stopped directory's image (two cowfs, one copy) and one of the live one.
    let c1 = create_clone(&d, "c1", "cold", "cowfs");
    let c2 = create_clone(&d, "c2", "cold", "cowfs");
    let c3 = create_clone(&d, "c3", "cold", "copy");
    let l1 = create_clone(&d, "l1", "live", "cowfs");
    let clones = [&c1, &c2, &c3, &l1];
    eprintln!(
        "fresh clones' own bytes: {:?} KiB",
        clones.iter().map(|c| (c.name.as_str(), c.stored_bytes >> 10)).collect::<Vec<_>>()
    );
    let urls: Vec<String> = clones.iter().map(|c| c.url().to_owned()).collect();
    // A cowfs clone's redo log is on the host's filesystem beside its layer, not behind FUSE,
    // and its directory is no database.
    let native_redo = d.data_dir.join("clones/c1/native/.thinclone-redo/ib_logfile0");
    assert!(native_redo.is_file(), "{} is missing", native_redo.display());
    let databases = sql(&urls[0], "SHOW DATABASES");
    assert!(!databases.contains("thinclone-redo"), "{databases}");
    let ports: Vec<u16> = clones.iter().map(|c| c.port).collect();
    for (i, p) in ports.iter().enumerate() {
        assert!(!ports[..i].contains(p), "ports {ports:?}");
    }
    assert_eq!((count(&urls[0]), count(&urls[1]), count(&urls[2])), (1001, 1001, 1001));
    assert_eq!(count(&urls[3]), 1000, "the live image holds what the source had when it was taken");
    for url in &urls {
        assert_eq!(sql(url, "SELECT COUNT(*), SUM(LENGTH(payload)) FROM shop.bulk"), "2000000\t512000000");
    }
    // What was written during the copy: a prefix of it, whole and consistent.
    let copied: u64 = sql(&urls[3], "SELECT COUNT(*) FROM shop.log").parse().unwrap();
    assert_eq!(sql(&urls[3], "SELECT COALESCE(MAX(n), 0) FROM shop.log"), copied.to_string(), "a gap in the copy");
    assert!(copied > 0 && copied <= written, "{copied} rows copied of {written} written");
    eprintln!("the live image holds {copied} of the {written} rows written while it was taken");
    let check = sql(&urls[3], "CHECK TABLE shop.log");
    assert!(check.ends_with("status\tOK"), "CHECK TABLE shop.log: {check}");

    // A write in one clone is seen by it alone.
    sql(&urls[0], "DELETE FROM shop.items WHERE id <= 500");
    sql(&urls[1], "CREATE TABLE shop.kept (v INT) ENGINE=InnoDB; INSERT INTO shop.kept VALUES (42)");
    sql(&urls[2], "UPDATE shop.items SET price = 0");
    assert_eq!((count(&urls[0]), count(&urls[1]), count(&urls[2])), (501, 1001, 1001));
    assert_eq!(sql(&urls[2], "SELECT SUM(price) FROM shop.items"), "0.00");
    assert_ne!(sql(&urls[1], "SELECT SUM(price) FROM shop.items"), "0.00");
    assert!(query(&urls[0], "SELECT v FROM shop.kept").is_err(), "a table made in c2 is seen in c1");
    // Another clone's password does not open this one.
    let foreign = urls[0].replacen(&format!(":{}/", ports[0]), &format!(":{}/", ports[1]), 1);
    assert!(query(&foreign, "SELECT 1").is_err(), "c1's password opened c2");

    // Reset brings the image's state back, on the same port with the same credentials.
    for (i, name) in [(0, "c1"), (2, "c3")] {
        let reset: api::Clone = d.ok(&["clone", "reset", name]);
        check_ready_clone(&d, &reset, name);
        assert_eq!((reset.port, reset.url()), (ports[i], urls[i].as_str()));
        assert_eq!(count(&urls[i]), 1001);
        assert_ne!(sql(&urls[i], "SELECT SUM(price) FROM shop.items"), "0.00");
    }

    // A restart of the daemon brings every clone back on its port with its password.
    let pid_before = fs::read_to_string(d.data_dir.join("run/clones/c2/mariadbd.pid")).unwrap();
    d.restart();
    for (clone, url) in clones.iter().zip(&urls) {
        let shown: api::Clone = d.ok(&["clone", "show", clone.name.as_str()]);
        assert_eq!(shown.status, CloneStatus::Ready, "{shown:?}");
        assert_eq!((shown.port, shown.url()), (clone.port, url.as_str()), "same port, same password");
        assert_eq!(sql(url, "SELECT 1"), "1");
    }
    assert_eq!(sql(&urls[1], "SELECT v FROM shop.kept"), "42");
    let pid_after = fs::read_to_string(d.data_dir.join("run/clones/c2/mariadbd.pid")).unwrap();
    assert_eq!(pid_before, pid_after, "the running server was adopted, not restarted");
    // And after a kill -9 of the daemon.
    d.kill9();
    d.restart();
    for (clone, url) in clones.iter().zip(&urls) {
        let shown: api::Clone = d.ok(&["clone", "show", clone.name.as_str()]);
        assert_eq!((shown.status, shown.port, shown.url()), (CloneStatus::Ready, clone.port, url.as_str()));
        assert_eq!(sql(url, "SELECT 1"), "1");
    }

    // Stop and start keep what a clone wrote.
    let stopped: api::Clone = d.ok(&["clone", "stop", "c2"]);
    assert_eq!(stopped.status, CloneStatus::Stopped, "{stopped:?}");
    assert!(query(&urls[1], "SELECT 1").is_err(), "a stopped clone still answers");
    let started: api::Clone = d.ok(&["clone", "start", "c2"]);
    check_ready_clone(&d, &started, "c2");
    assert_eq!(sql(&urls[1], "SELECT v FROM shop.kept"), "42");

    // The clones' servers logged no error (on cowfs, InnoDB's O_DIRECT and fsyncs go
    // through FUSE).
    for clone in clones {
        let log = fs::read_to_string(d.data_dir.join("run/clones").join(clone.name.as_str()).join("mariadbd.log"));
        let log = log.unwrap();
        assert!(!log.contains("[ERROR]"), "clone {}'s server logged errors:\n{log}", clone.name);
    }

    // Through all of that, the images did not change.
    for (dir, before) in images.iter().zip(&before) {
        if let Some(diff) = support::diff(before, &support::snapshot(dir)) {
            panic!("the image {} changed:\n{diff}", dir.display());
        }
    }

    for clone in clones {
        let op: Operation = d.ok(&["clone", "rm", clone.name.as_str()]);
        assert_eq!(op.state, OperationState::Succeeded, "{op:?}");
    }
    for url in &urls {
        assert!(query(url, "SELECT 1").is_err(), "a removed clone still answers");
    }
    assert!(mounts_under(&d.data_dir).is_empty(), "mounts left: {:?}", mounts_under(&d.data_dir));
    let status = d.stop().unwrap();
    assert!(status.success(), "the server exited with {status} on SIGTERM:\n{}", d.log_tail(30));
    // No password in the daemon's log, nor in any server's.
    let mut logs = fs::read_to_string(&d.log).unwrap();
    for entry in fs::read_dir(work.path().join("source-run")).unwrap() {
        logs.push_str(&fs::read_to_string(entry.unwrap().path()).unwrap_or_default());
    }
    let mut secrets = vec!["source-pw".to_owned()];
    secrets.extend(urls.iter().map(|u| url::Url::parse(u).unwrap().password().unwrap().to_owned()));
    for secret in &secrets {
        assert!(!logs.contains(secret.as_str()), "a password is in a log");
    }
    let procs = processes_under(&d.data_dir);
    assert!(procs.is_empty(), "processes left running after the server stopped: {procs:?}");
}

/// Issue 16, acceptance 2 (at a small scale): kill -9 of a cowfs clone's mount and of its
/// `mariadbd` while a client inserts one row per transaction; the agent remounts and
/// restarts the clone, every commit the server acknowledged is there, and `CHECK TABLE`
/// finds nothing wrong.
#[test]
fn innodb_on_a_cowfs_clone_survives_kill_9_of_mount_and_server() {
    require("innodb_on_a_cowfs_clone_survives_kill_9_of_mount_and_server");
    let work = tempfile::Builder::new().prefix("thinclone-mariadb-crash-").tempdir().unwrap();
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let mut source = Source::create(work.path(), "source", 23902, "source-pw");
    source.sql(
        "CREATE DATABASE shop; CREATE TABLE shop.acks (n BIGINT PRIMARY KEY, pad VARCHAR(200)) ENGINE=InnoDB; \
         CREATE TABLE shop.items (id INT PRIMARY KEY) ENGINE=InnoDB; INSERT INTO shop.items SELECT seq FROM shop.seq_1_to_100;",
    );
    source.stop();
    let d = Daemon::start(&work.path().join("data"), (9330, 9339));
    d.ok::<api::Image>(&["image", "create", "img", "--from-dir", source.data.to_str().unwrap()]);
    let image_dir = d.data_dir.join("images/img");
    let before = support::snapshot(&image_dir);
    let clone = create_clone(&d, "k", "img", "cowfs");
    let url = url::Url::parse(clone.url()).unwrap();
    let password = percent_encoding::percent_decode_str(url.password().unwrap()).decode_utf8_lossy().into_owned();

    // One row per transaction (autocommit; InnoDB syncs its redo log at each commit), each
    // followed by a SELECT whose row says it was acknowledged.
    let mut client = Command::new("/usr/bin/mariadb")
        .args(["--no-defaults", "--protocol=TCP", "--host=127.0.0.1", "--user=root", "--batch", "--skip-column-names"])
        .args(["--unbuffered", "--database=shop"])
        .arg(format!("--port={}", clone.port))
        .env("MYSQL_PWD", &password)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let acked = Arc::new(Mutex::new(Vec::<u64>::new()));
    let reader = {
        let acked = acked.clone();
        let stdout = client.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(n) = line.strip_prefix("ack ").and_then(|n| n.trim().parse().ok()) {
                    acked.lock().unwrap().push(n);
                }
            }
        })
    };
    let mut stdin = client.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        for n in 1u64.. {
            let line = format!("INSERT INTO acks VALUES ({n}, REPEAT('x', 200)); SELECT CONCAT('ack ', {n});\n");
            // The client is killed at the end: its pipe closes.
            if stdin.write_all(line.as_bytes()).is_err() {
                break;
            }
            if n % 20 == 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < 300 {
        assert!(Instant::now() < deadline, "the client did not get 300 commits acknowledged");
        std::thread::sleep(Duration::from_millis(20));
    }

    // Both at once, mid-stream.
    let mount_pid: i32 = fs::read_to_string(d.data_dir.join("clones/k/mount.pid")).unwrap().trim().parse().unwrap();
    let server_pid: i32 =
        fs::read_to_string(d.data_dir.join("run/clones/k/mariadbd.pid")).unwrap().trim().parse().unwrap();
    unsafe {
        libc::kill(server_pid, libc::SIGKILL);
        libc::kill(mount_pid, libc::SIGKILL);
    }
    // The client may have exited already, its server gone: what it acknowledged is checked below.
    let _ = client.kill();
    let _ = client.wait();
    feeder.join().unwrap();
    reader.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    eprintln!("{} commits acknowledged before the kill", acked.len());

    let started = Instant::now();
    let back = d.wait_for_clone("k", Duration::from_secs(120), |c| {
        c.status == CloneStatus::Ready
            && fs::read_to_string(d.data_dir.join("clones/k/mount.pid"))
                .is_ok_and(|p| p.trim() != mount_pid.to_string())
    });
    eprintln!("the clone was repaired in {} ms", started.elapsed().as_millis());
    assert_eq!((back.port, back.url()), (clone.port, clone.url()));
    let present: Vec<u64> =
        sql(clone.url(), "SELECT n FROM shop.acks ORDER BY n").lines().map(|l| l.parse().unwrap()).collect();
    let missing: Vec<u64> = acked.iter().copied().filter(|n| present.binary_search(n).is_err()).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged commits are missing, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    for table in ["shop.acks", "shop.items"] {
        let check = sql(clone.url(), &format!("CHECK TABLE {table}"));
        assert!(check.ends_with("status\tOK"), "CHECK TABLE {table}: {check}");
    }
    assert_eq!(count(clone.url()), 100);
    if let Some(diff) = support::diff(&before, &support::snapshot(&image_dir)) {
        panic!("the image changed:\n{diff}");
    }
}

/// Clones whose URL logs in as an owner that is not a superuser (`--clone-role owner`), a
/// template's script run on a new clone, and checkpoints: revert and a branch.
#[test]
fn mariadb_owners_templates_and_checkpoints() {
    require("mariadb_owners_templates_and_checkpoints");
    let work = tempfile::Builder::new().prefix("thinclone-mariadb-owner-").tempdir().unwrap();
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let mut source = Source::create(work.path(), "source", 23903, "source-pw");
    source.sql(
        "CREATE DATABASE shop; CREATE TABLE shop.items (id INT PRIMARY KEY, name VARCHAR(100)) ENGINE=InnoDB; \
         INSERT INTO shop.items SELECT seq, CONCAT('item ', seq) FROM shop.seq_1_to_100;",
    );
    source.stop();
    let d = Daemon::start_with(&work.path().join("data"), (9340, 9349), &["--clone-role", "owner"]);
    d.ok::<api::Image>(&["image", "create", "img", "--from-dir", source.data.to_str().unwrap()]);

    let good = work.path().join("made_for.sql");
    fs::write(
        &good,
        "CREATE TABLE shop.made_for (clone VARCHAR(64), owner VARCHAR(64), image VARCHAR(64));\n\
         INSERT INTO shop.made_for VALUES (@`thinclone.clone`, @`thinclone.owner`, @`thinclone.image`);\n",
    )
    .unwrap();
    let bad = work.path().join("broken.sql");
    fs::write(&bad, "SELECT 1;\nSELECT * FROM shop.no_such_table;\n").unwrap();
    d.ok::<api::Template>(&["template", "create", "app", "--script", good.to_str().unwrap()]);
    d.ok::<api::Template>(&["template", "create", "broken", "--script", bad.to_str().unwrap()]);

    let c: api::Clone = d.ok(&["clone", "create", "t", "--image", "img", "--template", "app"]);
    assert_eq!(c.status, CloneStatus::Ready, "{c:?}");
    assert!(c.url().starts_with("mariadb://app:"), "the owner logs in: {c:?}");
    assert_eq!(sql(c.url(), "SELECT CONCAT_WS(',', clone, owner, image) FROM shop.made_for"), "t,admin,img");
    // The owner changes its databases, and reaches nothing of the server's.
    sql(c.url(), "INSERT INTO shop.items VALUES (101, 'by the owner')");
    for forbidden in ["SELECT COUNT(*) FROM mysql.global_priv", "SELECT LOAD_FILE('/etc/hostname')"] {
        let answer = query(c.url(), forbidden);
        assert!(answer.is_err() || answer.as_deref() == Ok("NULL"), "{forbidden}: {answer:?}");
    }
    let err = d.cli::<serde_json::Value>(&["clone", "create", "nope", "--image", "img", "--template", "broken"]);
    let err = err.expect_err("a failing template made a clone");
    assert!(err.contains("broken.sql") && err.contains("no_such_table"), "{err}");

    // A checkpoint, later changes, and back; a branch of the checkpoint beside it.
    d.ok::<api::Checkpoint>(&["clone", "checkpoint", "t", "-m", "before"]);
    sql(c.url(), "DELETE FROM shop.items WHERE id <= 50");
    sql(c.url(), "CREATE TABLE shop.later (x INT)");
    assert_eq!(count(c.url()), 51);
    let br: api::Clone = d.ok(&["clone", "create", "br", "--from", "t@cp1"]);
    assert_eq!(count(br.url()), 101, "the branch starts at the checkpoint");
    let reverted: api::Clone = d.ok(&["clone", "revert", "t"]);
    assert_eq!((reverted.status, reverted.port, reverted.url()), (CloneStatus::Ready, c.port, c.url()));
    assert_eq!(count(c.url()), 101);
    assert!(query(c.url(), "SELECT x FROM shop.later").is_err(), "a table made after the checkpoint survived");
    for table in ["shop.items", "shop.made_for"] {
        let check = sql(c.url(), &format!("CHECK TABLE {table}"));
        assert!(check.ends_with("status\tOK"), "CHECK TABLE {table}: {check}");
    }
    // A modification script runs on the image before it is sealed.
    let script = work.path().join("change.sql");
    fs::write(&script, "UPDATE shop.items SET name = 'x';\n").unwrap();
    let scripted: api::Image = d.ok(&[
        "image",
        "create",
        "scripted",
        "--from-dir",
        source.data.to_str().unwrap(),
        "--script",
        script.to_str().unwrap(),
    ]);
    assert_eq!(
        (scripted.status, scripted.scripts.as_slice()),
        (ImageStatus::Ready, ["change.sql".to_owned()].as_slice())
    );
    let s: api::Clone = d.ok(&["clone", "create", "s", "--image", "scripted"]);
    assert_eq!(sql(s.url(), "SELECT COUNT(DISTINCT name) FROM shop.items"), "1");
    d.ok::<Operation>(&["clone", "rm", "s"]);
    d.ok::<Operation>(&["image", "rm", "scripted"]);
    // What the engine cannot do yet is refused with its reason.
    let err = d.cli::<serde_json::Value>(&["clone", "snapshot", "sv", "--from", "t@cp1", "--read-only"]);
    let err = err.expect_err("a read-only snapshot view of a MariaDB clone was made");
    assert!(err.contains("does not support read-only"), "{err}");

    for name in ["br", "t"] {
        d.ok::<Operation>(&["clone", "rm", name]);
    }
}

/// Reflink clones of a MariaDB image on a loop-mounted XFS (reflink=1), chosen without
/// `--driver`: they answer, keep their writes to themselves, reset, and leave the image alone.
#[test]
fn mariadb_reflink_clones_on_xfs() {
    require("mariadb_reflink_clones_on_xfs");
    let work = tempfile::Builder::new().prefix("thinclone-mariadb-xfs-").tempdir_in("/var/tmp").unwrap();
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let mut source = Source::create(work.path(), "source", 23904, "source-pw");
    source.sql(
        "CREATE DATABASE shop; CREATE TABLE shop.items (id INT PRIMARY KEY, name VARCHAR(100)) ENGINE=InnoDB; \
         INSERT INTO shop.items SELECT seq, CONCAT('item ', seq) FROM shop.seq_1_to_1000;",
    );
    source.stop();
    let xfs = support::LoopFs::new("xfs", work.path(), 2 << 30);
    let d = Daemon::start(&xfs.mountpoint.join("data"), (9320, 9329));
    d.ok::<api::Image>(&["image", "create", "img", "--from-dir", source.data.to_str().unwrap()]);
    let image_dir = d.data_dir.join("images/img");
    let before = support::snapshot(&image_dir);
    let a: api::Clone = d.ok(&["clone", "create", "a", "--image", "img"]);
    let b: api::Clone = d.ok(&["clone", "create", "b", "--image", "img"]);
    for clone in [&a, &b] {
        assert_eq!(clone.driver, api::Driver::Reflink, "{clone:?}");
        check_ready_clone(&d, clone, clone.name.as_str());
    }
    eprintln!("a fresh reflink clone of a MariaDB image holds {} KiB of its own", a.stored_bytes >> 10);
    sql(a.url(), "DELETE FROM shop.items WHERE id <= 500");
    assert_eq!((count(a.url()), count(b.url())), (500, 1000));
    let reset: api::Clone = d.ok(&["clone", "reset", "a"]);
    assert_eq!((reset.port, reset.url()), (a.port, a.url()));
    assert_eq!(count(a.url()), 1000);
    for name in ["a", "b"] {
        d.ok::<Operation>(&["clone", "rm", name]);
    }
    if let Some(diff) = support::diff(&before, &support::snapshot(&image_dir)) {
        panic!("the image changed:\n{diff}");
    }
    d.ok::<Operation>(&["image", "rm", "img"]);
    drop(d);
}
