//! The storage of a clone end to end, below the server: an image prepared by the engine, a
//! cowfs clone made by the agent's driver and mounted by the real `thinclone mount`, and the
//! engine's server on it. It reports the time from "make a clone" to the first successful
//! `SELECT 1`, and what the fresh clone's layer costs on disk.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use agent::driver::{self, Driver};
use engine::InstanceSpec;

#[test]
fn a_cowfs_clone_of_a_prepared_image_serves_sql() {
    support::require_fuse("a_cowfs_clone_of_a_prepared_image_serves_sql");
    support::pg::require("a_cowfs_clone_of_a_prepared_image_serves_sql");
    let engine = engine_pg::engine();
    let user = sys::User::lookup("postgres").unwrap();
    let work = tempfile::tempdir().unwrap();
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let work = work.path();

    // An image: the engine's sample database, prepared.
    let image = work.join("image");
    fs::create_dir(&image).unwrap();
    std::os::unix::fs::chown(&image, Some(user.uid), Some(user.gid)).unwrap();
    fs::set_permissions(&image, fs::Permissions::from_mode(0o700)).unwrap();
    let sample = engine.make_sample(&image, &work.join("run-sample"), &user, 1).unwrap();
    let facts = engine.prepare(&image, &work.join("run-prepare"), &user).unwrap();
    let before = support::snapshot(&image);
    let spec = |data_dir: &std::path::Path| InstanceSpec {
        version: facts.version.clone(),
        data_dir: data_dir.to_owned(),
        run_dir: work.join("run-c1"),
        port: free_port(),
        listen: vec!["127.0.0.1".parse().unwrap()],
        remote_clients: false,
        user: user.clone(),
        superuser: facts.superuser.clone(),
        label: "thinclone-test-c1".into(),
        memory: Some("32MB".into()),
        read_only: false,
    };

    // A clone: driver create + attach + server start, timed to the first SELECT.
    let driver =
        driver::Cowfs { program: support::thinclone_bin(), commit_dirs: engine.commit_dirs(), writeback_cache: false };
    let clone_dir = work.join("clones/c1");
    fs::create_dir_all(&clone_dir).unwrap();
    let started = Instant::now();
    driver.create(&image, &clone_dir).unwrap();
    let attached = driver.attach(&image, &clone_dir, &user).unwrap();
    let server = engine.start(&spec(&attached.data_dir), Duration::from_secs(60)).unwrap();
    assert_eq!(server.sql("SELECT 1").unwrap(), "1");
    let ready = started.elapsed();
    let fresh = driver.stored_bytes(&clone_dir).unwrap();
    eprintln!(
        "DEBUG {}",
        String::from_utf8_lossy(
            &std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("ls -la {0}/pg_wal; du -a {1}/native", image.display(), clone_dir.display()))
                .output()
                .unwrap()
                .stdout
        )
    );
    eprintln!("cowfs clone ready for SQL in {} ms; its layer holds {} KiB", ready.as_millis(), fresh >> 10);
    assert!(fresh < 1 << 20, "a fresh clone's layer holds {fresh} bytes");

    // The log is on the host's filesystem, in the clone's own directory, owned by the
    // clone's user; the layer holds a link to it (ARCHITECTURE.md, "Commit directories").
    let wal = clone_dir.join("native/pg_wal");
    assert_eq!(fs::read_link(attached.data_dir.join("pg_wal")).unwrap(), std::path::Path::new("../native/pg_wal"));
    let meta = fs::symlink_metadata(&wal).unwrap();
    assert!(meta.is_dir());
    assert_eq!((std::os::unix::fs::MetadataExt::uid(&meta), meta.permissions().mode() & 0o777), (user.uid, 0o700));
    let wal_before = sys::tree::disk_usage(&wal).unwrap();

    // It is writable, and the image does not see the writes.
    let unchanged = server.sql(&sample.check_sql).unwrap();
    assert_eq!(unchanged, sample.unchanged_value);
    server.sql(&sample.change_sql).unwrap();
    assert_ne!(server.sql(&sample.check_sql).unwrap(), sample.unchanged_value);
    let wal_after = sys::tree::disk_usage(&wal).unwrap();
    assert!(wal_after > wal_before, "the change's log went elsewhere: {wal_before} then {wal_after} bytes");
    assert!(driver.stored_bytes(&clone_dir).unwrap() >= wal_after, "stored_bytes leaves out the log");
    server.stop(Duration::from_secs(60)).unwrap();
    driver.detach(&clone_dir, attached).unwrap();
    assert!(support::diff(&before, &support::snapshot(&image)).is_none(), "the image changed");

    // Reset brings the image's state back.
    driver.reset(&image, &clone_dir).unwrap();
    assert!(sys::tree::disk_usage(&wal).unwrap() < wal_after, "the reset kept the clone's log");
    let attached = driver.attach(&image, &clone_dir, &user).unwrap();
    let server = engine.start(&spec(&attached.data_dir), Duration::from_secs(60)).unwrap();
    assert_eq!(server.sql(&sample.check_sql).unwrap(), sample.unchanged_value);
    assert_eq!(fs::read_link(attached.data_dir.join("pg_wal")).unwrap(), std::path::Path::new("../native/pg_wal"));
    server.stop(Duration::from_secs(60)).unwrap();
    driver.detach(&clone_dir, attached).unwrap();
    driver.destroy(&clone_dir).unwrap();
    assert!(!clone_dir.exists());
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
