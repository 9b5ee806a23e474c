//! The storage of a clone end to end, below the daemon: a prepared PostgreSQL image, a cowfs
//! clone made by the driver and mounted by the real `thinclone mount`, and a server on it.
//! It reports the time from "make a clone" to the first successful `SELECT 1`, and what the
//! fresh clone's layer costs on disk.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use daemon::driver::{self, Driver};
use pg::{Installation, Program, RunAs, Server, ServerConfig};

#[test]
fn a_cowfs_clone_of_a_prepared_image_serves_sql() {
    if !support::fuse_available("a_cowfs_clone_of_a_prepared_image_serves_sql")
        || !support::pg::available("a_cowfs_clone_of_a_prepared_image_serves_sql")
    {
        return;
    }
    let bin = support::pg::bin_dir().unwrap();
    let major: u32 = bin.parent().unwrap().file_name().unwrap().to_str().unwrap().parse().unwrap();
    let installation = Installation::find(major).unwrap();
    let user = RunAs::user("postgres").unwrap();
    let work = tempfile::tempdir().unwrap();
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let work = work.path();

    // An image: a small cluster with data, prepared.
    let image = work.join("image");
    fs::create_dir(&image).unwrap();
    support::pg::chown_postgres(&image);
    fs::set_permissions(&image, fs::Permissions::from_mode(0o700)).unwrap();
    Program::new(installation.program("initdb"))
        .arg("-D")
        .arg(&image)
        .args(["-A", "trust", "-U", "postgres", "--no-sync"])
        .user(&user)
        .run()
        .unwrap();
    let config = |name: &str| ServerConfig {
        port: pg::free_port().unwrap(),
        listen_addresses: "127.0.0.1".into(),
        run_dir: work.join(format!("run-{name}")),
        shared_buffers: "32MB".into(),
        extra: vec![],
    };
    let source = Server::start(&installation, &image, &config("source"), &user, Duration::from_secs(60)).unwrap();
    source.sql("postgres", "CREATE TABLE t AS SELECT g FROM generate_series(1, 50000) g").unwrap();
    source.stop(Duration::from_secs(60)).unwrap();
    pg::prepare(&installation, &image, &user, &work.join("run-prepare")).unwrap();
    let before = support::snapshot(&image);

    // A clone: driver create + attach + server start, timed to the first SELECT.
    let driver = driver::Cowfs { program: support::thinclone_bin() };
    let clone_dir = work.join("clones/c1");
    let started = Instant::now();
    driver.create(&image, &clone_dir).unwrap();
    let attached = driver.attach(&image, &clone_dir, "postgres").unwrap();
    let server =
        Server::start(&installation, &attached.data_dir, &config("c1"), &user, Duration::from_secs(60)).unwrap();
    assert_eq!(server.sql("postgres", "SELECT 1").unwrap(), "1");
    let ready = started.elapsed();
    let fresh = driver.stored_bytes(&clone_dir).unwrap();
    eprintln!("cowfs clone ready for SQL in {} ms; its layer holds {} KiB", ready.as_millis(), fresh >> 10);
    assert!(fresh < 1 << 20, "a fresh clone's layer holds {fresh} bytes");

    // It is writable, and the image does not see the writes.
    server.sql("postgres", "DELETE FROM t WHERE g % 2 = 0").unwrap();
    assert_eq!(server.sql("postgres", "SELECT count(*) FROM t").unwrap(), "25000");
    server.stop(Duration::from_secs(60)).unwrap();
    driver.detach(&clone_dir, attached).unwrap();
    assert!(support::diff(&before, &support::snapshot(&image)).is_none(), "the image changed");

    // Reset brings the image's state back.
    driver.reset(&image, &clone_dir).unwrap();
    let attached = driver.attach(&image, &clone_dir, "postgres").unwrap();
    let server =
        Server::start(&installation, &attached.data_dir, &config("c1"), &user, Duration::from_secs(60)).unwrap();
    assert_eq!(server.sql("postgres", "SELECT count(*) FROM t").unwrap(), "50000");
    server.stop(Duration::from_secs(60)).unwrap();
    driver.detach(&clone_dir, attached).unwrap();
    driver.destroy(&clone_dir).unwrap();
}
