//! Images from a live server: `image create --from-url` copies a running PostgreSQL with
//! pg_basebackup while it takes writes, and clones of the result start without WAL replay.
//! The source's password is used and never stored or shown.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;

use api::{ImageStatus, Operation};
use support::daemon::{psql, Daemon, UrlOf};
use support::pg::Server;

#[test]
fn an_image_of_a_live_server_under_load() {
    support::require_fuse("an_image_of_a_live_server_under_load");
    support::pg::require("an_image_of_a_live_server_under_load");
    let work = tempfile::tempdir().unwrap();
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let work = work.path();
    let scale = support::daemon::source_scale();

    // A live source of 500 MB or more, taking password logins over TCP, kept busy while the
    // image is taken.
    let source = Server::new(&work.join("source"), 24_611, work);
    source.initdb();
    source.start();
    source.require_passwords("s3cr%t é");
    support::pg::run(source.pgbench().args(["-i", "-q", "-s", &scale.to_string(), "postgres"]));
    let mut load = source
        .pgbench()
        .args(["-c", "2", "-T", "120", "-n", "postgres"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let daemon = Daemon::start(&work.join("data"), (7800, 7849));
    // The password percent-encoded, with a multibyte character next to an escape.
    let url = "postgresql://postgres:s3cr%25t%20%C3%A9@127.0.0.1:24611/postgres?application_name=thinclone-test";
    let started = std::time::Instant::now();
    let image: api::Image = daemon.ok(&["image", "create", "live", "--from-url", url]);
    let took = started.elapsed();
    let _ = load.kill();
    let _ = load.wait();
    assert_eq!(image.status, ImageStatus::Ready, "{image:?}");
    assert_eq!(image.engine_version.as_deref(), Some("15"), "{image:?}");
    assert!(image.logical_bytes >= 500 << 20, "the image holds only {} bytes", image.logical_bytes);
    assert_eq!(image.source, "postgresql://postgres@127.0.0.1:24611/postgres?application_name=thinclone-test");
    eprintln!(
        "image of a live {} MB server under load taken and prepared in {:.1} s",
        image.logical_bytes >> 20,
        took.as_secs_f64()
    );

    // A clone of it has the data and did not replay WAL.
    let clone: api::Clone = daemon.ok(&["clone", "create", "c1", "--image", "live"]);
    assert_eq!(psql(clone.url(), "SELECT count(*) FROM pgbench_accounts").unwrap(), (100_000 * scale).to_string());
    let log = fs::read_to_string(work.join("data/run/clones/c1/postgres.log")).unwrap();
    assert!(log.contains("database system was shut down at"), "{log}");
    assert!(!log.contains("redo starts"), "the clone replayed WAL:\n{log}");

    // Regression: a `password=` parameter was stored and echoed back. It is used, then
    // neither shown nor stored.
    let url = "postgresql://postgres@127.0.0.1:24611/postgres?password=s3cr%25t%20%C3%A9&sslmode=disable";
    let image: api::Image = daemon.ok(&["image", "create", "param", "--from-url", url]);
    assert_eq!(image.status, ImageStatus::Ready, "{image:?}");
    assert_eq!(image.source, "postgresql://postgres@127.0.0.1:24611/postgres?sslmode=disable");

    // A wrong password and an unreachable source are refused at once; the messages do not
    // carry the password, and nothing is left behind.
    let err = daemon
        .cli::<api::Image>(&[
            "image",
            "create",
            "wrong",
            "--from-url",
            "postgresql://postgres:hunter2@127.0.0.1:24611/postgres",
        ])
        .unwrap_err();
    assert!(err.contains("cannot reach the source") || err.contains("password authentication failed"), "{err}");
    assert!(!err.contains("hunter2"), "the password shows in {err}");
    let err = daemon
        .cli::<api::Image>(&[
            "image",
            "create",
            "nowhere",
            "--from-url",
            "postgresql://postgres:hunter2@127.0.0.1:1/postgres",
        ])
        .unwrap_err();
    assert!(err.contains("cannot reach the source"), "{err}");
    assert!(!err.contains("hunter2"), "the password shows in {err}");
    let images: Vec<api::Image> = daemon.ok(&["image", "list"]);
    assert_eq!(images.len(), 2, "{images:?}");

    // The password is nowhere in the server's files or log.
    for secret in ["s3cr%t", "hunter2"] {
        let grep = std::process::Command::new("grep")
            .args(["-r", "-l", "-F", secret])
            .arg(work.join("data"))
            .output()
            .unwrap();
        assert!(grep.stdout.is_empty(), "{secret} found in {}", String::from_utf8_lossy(&grep.stdout));
        let log = fs::read_to_string(&daemon.log).unwrap();
        assert!(!log.contains(secret), "{secret} is in the server's log");
    }

    daemon.ok::<Operation>(&["clone", "rm", "c1"]);
    daemon.ok::<Operation>(&["image", "rm", "live"]);
    daemon.ok::<Operation>(&["image", "rm", "param"]);
    source.stop();
}
