//! The engine against a real PostgreSQL: a crashed server's copy is prepared into an image,
//! and a server started on the prepared copy opens without replaying WAL and has the data.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use pg::{Installation, Program, RunAs, Server, ServerConfig};

/// The newest PostgreSQL on the host, and the postgres OS user; `None` (test skipped, or
/// failed under CI) when either is missing or we are not root.
fn setup(test: &str) -> Option<(Installation, RunAs)> {
    let newest = fs::read_dir("/usr/lib/postgresql")
        .ok()
        .and_then(|d| d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()).max());
    let found = newest
        .and_then(|major| Installation::find(major).ok())
        .zip(RunAs::user("postgres").ok())
        .filter(|_| unsafe { libc::geteuid() } == 0);
    if found.is_none() {
        assert!(std::env::var_os("CI").is_none(), "{test}: CI must have root, PostgreSQL and its postgres user");
        eprintln!("skipped {test}: needs root, PostgreSQL server binaries and a postgres user");
    }
    found
}

fn owned_dir(path: &Path, user: &RunAs, mode: u32) {
    fs::create_dir_all(path).unwrap();
    std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid)).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn config(work: &Path, name: &str) -> ServerConfig {
    ServerConfig {
        port: pg::free_port().unwrap(),
        listen_addresses: "127.0.0.1".into(),
        run_dir: work.join(format!("run-{name}")),
        shared_buffers: "32MB".into(),
        extra: vec![],
    }
}

#[test]
fn a_prepared_copy_of_a_crashed_server_starts_without_redo() {
    let Some((installation, user)) = setup("a_prepared_copy_of_a_crashed_server_starts_without_redo") else { return };
    let work = tempfile::tempdir().unwrap();
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let work = work.path();

    let source = work.join("source");
    owned_dir(&source, &user, 0o700);
    Program::new(installation.program("initdb"))
        .args(["-D"])
        .arg(&source)
        .args(["-A", "trust", "-U", "postgres", "--no-sync"])
        .user(&user)
        .run()
        .unwrap();
    let server =
        Server::start(&installation, &source, &config(work, "source"), &user, Duration::from_secs(60)).unwrap();
    server.sql("postgres", "CREATE TABLE t AS SELECT g FROM generate_series(1, 10000) g").unwrap();
    // Crash it: the copy below needs recovery.
    unsafe { libc::kill(server.pid() as i32, libc::SIGKILL) };
    drop(server);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(pg::cluster_state(&installation, &source, &user).unwrap(), "in production");

    let image = work.join("image");
    assert!(std::process::Command::new("cp").arg("-a").arg(&source).arg(&image).status().unwrap().success());
    pg::prepare(&installation, &image, &user, &work.join("run-prepare")).unwrap();
    assert_eq!(pg::cluster_state(&installation, &image, &user).unwrap(), "shut down");
    assert!(!image.join("postmaster.pid").exists());

    let clone_config = config(work, "clone");
    let clone = Server::start(&installation, &image, &clone_config, &user, Duration::from_secs(60)).unwrap();
    assert_eq!(clone.sql("postgres", "SELECT count(*) FROM t").unwrap(), "10000");
    let log = fs::read_to_string(clone_config.run_dir.join("postgres.log")).unwrap();
    assert!(log.contains("database system was shut down at"), "{log}");
    assert!(!log.contains("redo starts"), "the clone replayed WAL:\n{log}");
    clone.stop(Duration::from_secs(60)).unwrap();
    assert_eq!(pg::cluster_state(&installation, &image, &user).unwrap(), "shut down");
}

#[test]
fn a_server_that_cannot_start_says_why() {
    let Some((installation, user)) = setup("a_server_that_cannot_start_says_why") else { return };
    let work = tempfile::tempdir().unwrap();
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let empty = work.path().join("empty");
    owned_dir(&empty, &user, 0o700);
    let err = Server::start(&installation, &empty, &config(work.path(), "x"), &user, Duration::from_secs(30))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("postgres failed"), "{err}");
}
