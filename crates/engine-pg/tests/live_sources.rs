//! A live source is detected: a directory counts as in use only while a PostgreSQL server
//! runs on that very directory. A stale `postmaster.pid`, one naming a process that is not
//! a postgres, and one naming a postgres that serves another directory (the pid file of a
//! copy or a filesystem snapshot of a running server) do not count; a snapshot is prepared
//! by running recovery.

mod support;

use std::fs;
use std::time::Duration;

use engine::Error;
use support::{setup, Source};

#[test]
fn a_running_servers_directory_is_in_use_and_says_what_to_do() {
    let t = setup();
    let mut source = Source::init(&t, "source");
    source.start();
    let pid = source.pid();
    assert!(t.engine.is_in_use(&source.data));
    let err = t.engine.check_not_in_use(&source.data).unwrap_err();
    assert!(matches!(err, Error::InUse(_)) && err.is_callers_mistake(), "{err}");
    let text = err.to_string();
    let dir = source.data.display();
    assert!(
        text.starts_with(&format!(
            "a PostgreSQL server (pid {pid}) is running on {dir}; copying it now would give a torn copy"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("--from-url postgresql://USER:PASSWORD@127.0.0.1:{}/postgres", source.port)),
        "{text}"
    );
    assert!(text
        .contains(&format!("(if {dir} is a crash-consistent snapshot of a running server, say so with --snapshot)")));

    // The same directory by another path.
    let link = t.path("link-to-source");
    std::os::unix::fs::symlink(&source.data, &link).unwrap();
    assert!(t.engine.is_in_use(&link), "a path through a symlink hid the running server");

    // A stale pid file: the server is gone.
    source.kill();
    assert!(source.data.join("postmaster.pid").exists());
    assert!(!t.engine.is_in_use(&source.data), "a dead server's pid file counted");
    t.engine.check_not_in_use(&source.data).unwrap();

    // A pid file naming a live process that is not a postgres (after a reboot, say).
    let pid_file = source.data.join("postmaster.pid");
    let text = fs::read_to_string(&pid_file).unwrap();
    let rest = text.split_once('\n').unwrap().1;
    fs::write(&pid_file, format!("{}\n{rest}", std::process::id())).unwrap();
    assert!(!t.engine.is_in_use(&source.data), "a live process that is no postgres counted");
}

/// A copy of a running server's directory carries that server's pid file: a live postgres,
/// but on another directory. It is not in use, and preparing it runs recovery.
#[test]
fn a_snapshot_of_a_running_server_is_not_in_use_and_is_prepared() {
    let t = setup();
    let mut source = Source::init(&t, "source");
    source.start();
    source.sql("CREATE TABLE t AS SELECT g FROM generate_series(1, 5000) g");
    let snapshot = t.path("snapshot");
    t.copy(&source.data, &snapshot);
    let named = fs::read_to_string(snapshot.join("postmaster.pid")).unwrap();
    assert_eq!(named.lines().next().unwrap(), source.pid().to_string());
    assert!(t.engine.is_in_use(&source.data));
    assert!(!t.engine.is_in_use(&snapshot), "the snapshot counted as in use: its pid file names the source's server");
    t.engine.check_not_in_use(&snapshot).unwrap();

    let facts = t.engine.prepare(&snapshot, &t.path("run-prepare"), &t.user).unwrap();
    let log = fs::read_to_string(t.path("run-prepare/postgres.log")).unwrap();
    assert!(log.contains("database system was interrupted") || log.contains("redo starts"), "{log}");
    let instance = t.start(&t.spec("clone", &snapshot, &facts.superuser));
    assert_eq!(instance.sql("SELECT count(*) FROM t").unwrap(), "5000");

    // A live postgres on another directory named by a pid file (the one the copy took of the
    // server running now): not in use either.
    let other = t.path("other");
    t.copy(&snapshot, &other);
    fs::write(other.join("postmaster.pid"), format!("{}\n{}\n", instance.pid(), snapshot.display())).unwrap();
    assert!(!t.engine.is_in_use(&other), "another directory's server counted");
    instance.stop(Duration::from_secs(60)).unwrap();
    assert!(t.engine.is_in_use(&source.data), "the source stopped");
}
