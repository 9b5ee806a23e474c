//! Images from a live server: `image create --from-url` copies a running PostgreSQL with
//! pg_basebackup while it takes writes, and clones of the result start without WAL replay.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;

use support::daemon::{psql, Daemon};
use support::pg::Server;

#[test]
fn an_image_of_a_live_server_under_load() {
    if !support::fuse_available("an_image_of_a_live_server_under_load")
        || !support::pg::available("an_image_of_a_live_server_under_load")
    {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let work = work.path();
    let scale = support::daemon::source_scale();

    // A live source of 500 MB or more, kept busy while the image is taken.
    let source = Server::new(&work.join("source"), 54_611, work);
    source.initdb();
    source.start();
    support::pg::run(source.pgbench().args(["-i", "-q", "-s", &scale.to_string(), "postgres"]));
    let mut load = source
        .pgbench()
        .args(["-c", "2", "-T", "120", "-n", "postgres"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let daemon = Daemon::start(&work.join("data"), (7800, 7849));
    let url =
        format!("postgresql://postgres:unused@/postgres?host={}&port={}", source.socket_dir.display(), source.port);
    let started = std::time::Instant::now();
    let image = daemon.ok(&["image", "create", "live", "--from-url", &url]);
    let took = started.elapsed();
    let _ = load.kill();
    let _ = load.wait();
    assert_eq!(image["status"], "ready", "{image}");
    assert_eq!(image["pg_version"], 15, "{image}");
    let logical = image["logical_bytes"].as_u64().unwrap();
    assert!(logical >= 500 << 20, "the image holds only {logical} bytes");
    assert!(!image["source"].as_str().unwrap().contains("unused"), "the password shows in {image}");
    eprintln!(
        "image of a live {} MB server under load taken and prepared in {:.1} s",
        logical >> 20,
        took.as_secs_f64()
    );

    // A clone of it has the data and did not replay WAL.
    let clone = daemon.ok(&["clone", "create", "c1", "--image", "live"]);
    let clone_url = clone["url"].as_str().unwrap();
    assert_eq!(psql(clone_url, "SELECT count(*) FROM pgbench_accounts").unwrap(), (100_000 * scale).to_string());
    let log = fs::read_to_string(work.join("data/run/c1/postgres.log")).unwrap();
    assert!(log.contains("database system was shut down at"), "{log}");
    assert!(!log.contains("redo starts"), "the clone replayed WAL:\n{log}");

    // An unreachable source is refused at once, and nothing is left behind.
    let err = daemon.cli(&["image", "create", "nowhere", "--from-url", "postgresql://postgres@127.0.0.1:1/postgres"]);
    let err = err.unwrap_err();
    assert!(err.contains("cannot reach the source"), "{err}");
    let images = daemon.ok(&["image", "list"]);
    assert_eq!(images.as_array().unwrap().len(), 1, "{images}");

    daemon.ok(&["clone", "rm", "c1"]);
    daemon.ok(&["image", "rm", "live"]);
    source.stop();
}
