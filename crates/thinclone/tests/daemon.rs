//! The server end to end: a real `thinclone serve`, driven by the real CLI with `--json`
//! (decoded into the `api` types), making images of a real 500 MB+ pgbench cluster and cowfs
//! clones of them, each with a real PostgreSQL server reached over its URL with `psql`.
//! Kill -9 of the server, at rest and while a clone is being made, must leave every clone
//! either usable or gone; bad input must get a clear 4xx message and harm nothing.
//!
//! Each test runs its own server on its own data directory and clone port range; they share
//! one source cluster (`support::daemon::pgbench_source`), which they only read.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use api::{CloneStatus, ImageStatus, Operation, OperationState};
use support::daemon::{mounts_under, pgbench_source, processes_under, psql, source_scale, Daemon, UrlOf};

fn require(test: &str) {
    support::require_fuse(test);
    support::pg::require(test);
}

/// A work directory whose path says whose it is (`mount | grep thinclone` finds its mounts),
/// traversable by the postgres user.
fn work_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix("thinclone-daemon-test-").tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// The major version of the PostgreSQL the tests run (`/usr/lib/postgresql/<major>/bin`).
fn host_major() -> String {
    let bin = support::pg::bin_dir().unwrap();
    bin.parent().unwrap().file_name().unwrap().to_str().unwrap().to_owned()
}

fn accounts() -> u64 {
    100_000 * source_scale() as u64
}

fn sql(url: &str, query: &str) -> String {
    psql(url, query).unwrap_or_else(|e| panic!("psql {url} -c {query:?} failed: {e}"))
}

fn count_accounts(url: &str) -> u64 {
    sql(url, "SELECT count(*) FROM pgbench_accounts").parse().unwrap()
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

/// `image create NAME --from-dir SOURCE`, which waits until the image is ready; checks the
/// image it prints.
fn create_image(d: &Daemon, name: &str, source: &Path) -> api::Image {
    let started = Instant::now();
    let image: api::Image = d.ok(&["image", "create", name, "--from-dir", source.to_str().unwrap()]);
    eprintln!("image {name}: ready in {:.1} s", started.elapsed().as_secs_f64());
    assert_eq!(image.name.as_str(), name);
    assert_eq!(image.status, ImageStatus::Ready, "{image:?}");
    assert_eq!(image.engine, "postgresql");
    assert_eq!(image.engine_version.as_deref(), Some(host_major().as_str()), "{image:?}");
    assert!(image.logical_bytes >= 500 << 20, "the image is too small: {image:?}");
    assert!(image.file_count > 0, "{image:?}");
    image
}

/// `clone create NAME --image IMAGE`; checks the clone it prints: ready, with a port in the
/// server's range and a URL on it.
fn create_clone(d: &Daemon, name: &str, image: &str) -> api::Clone {
    let clone: api::Clone = d.ok(&["clone", "create", name, "--image", image]);
    check_ready_clone(d, &clone, name);
    clone
}

fn check_ready_clone(d: &Daemon, clone: &api::Clone, name: &str) {
    assert_eq!(clone.name.as_str(), name);
    assert_eq!(clone.status, CloneStatus::Ready, "{clone:?}");
    assert!((d.ports.0..=d.ports.1).contains(&clone.port), "port {} is outside {:?}", clone.port, d.ports);
    let expected = format!("@127.0.0.1:{}/", clone.port);
    assert!(clone.url().starts_with("postgresql://postgres:") && clone.url().contains(&expected), "{clone:?}");
    assert_eq!(clone.user, "postgres");
}

fn names<T: serde::Serialize>(list: &[T]) -> Vec<String> {
    list.iter().map(|o| serde_json::to_value(o).unwrap()["name"].as_str().unwrap().to_owned()).collect()
}

/// Stops the server with SIGTERM and checks that it exits cleanly and leaves nothing behind
/// but what it means to: the servers and mounts of the clones that still exist, which the
/// next start takes over.
fn shut_down(mut d: Daemon, clones_left: &[&str]) {
    let status = d.stop().unwrap();
    assert!(status.success(), "the server exited with {status} on SIGTERM:\n{}", d.log_tail(30));
    let mut procs = processes_under(&d.data_dir);
    procs.retain(|(_, cmdline)| !clones_left.iter().any(|c| cmdline.contains(&format!("/clones/{c}/"))));
    assert!(procs.is_empty(), "processes left running after the server stopped: {procs:?}");
    let mut mounts = mounts_under(&d.data_dir);
    mounts.retain(|m| !clones_left.iter().any(|c| m.ends_with(format!("clones/{c}/data"))));
    assert!(mounts.is_empty(), "mounts left after the server stopped: {mounts:?}");
}

/// The error of a command that must fail with a 4xx message containing `expected`.
fn refused(d: &Daemon, args: &[&str], expected: &str) -> String {
    let err = match d.cli::<serde_json::Value>(args) {
        Ok(v) => panic!("`thinclone {}` succeeded, but must fail with {expected:?}: {v}", args.join(" ")),
        Err(e) => e,
    };
    assert!(err.contains(expected), "`thinclone {}`: expected {expected:?} in {err:?}", args.join(" "));
    // 5xx answers say "the server failed"; these are the caller's mistakes.
    assert!(!err.contains("the server failed"), "`thinclone {}` got a 5xx: {err}", args.join(" "));
    err
}

#[test]
fn images_and_clones() {
    require("images_and_clones");
    let source = pgbench_source();
    let work = work_dir();
    let d = Daemon::start(&work.path().join("data"), (7600, 7649));

    create_image(&d, "prod", &source);
    let image_dir = d.data_dir.join("images/prod");
    let before = support::snapshot(&image_dir);
    assert_eq!(names(&d.ok::<Vec<api::Image>>(&["image", "list"])), ["prod"]);

    // Three clones, each accepting SQL as soon as `clone create` returns.
    let mut clones = Vec::new();
    let mut create_times = Vec::new();
    for name in ["c1", "c2", "c3"] {
        let started = Instant::now();
        let clone = create_clone(&d, name, "prod");
        create_times.push(started.elapsed());
        assert_eq!(sql(clone.url(), "SELECT 1"), "1");
        clones.push(clone);
    }
    let urls: Vec<String> = clones.iter().map(|c| c.url().to_owned()).collect();
    let ports: Vec<u16> = clones.iter().map(|c| c.port).collect();
    assert!(ports[0] != ports[1] && ports[1] != ports[2] && ports[0] != ports[2], "ports {ports:?}");
    assert_eq!(names(&d.ok::<Vec<api::Clone>>(&["clone", "list"])), ["c1", "c2", "c3"]);
    assert_eq!(d.ok::<api::Image>(&["image", "show", "prod"]).clone_count, 3);

    // A write in one clone is seen by it alone.
    sql(&urls[0], "DELETE FROM pgbench_accounts WHERE aid <= 1000");
    assert_eq!(count_accounts(&urls[0]), accounts() - 1000);
    assert_eq!(count_accounts(&urls[1]), accounts());
    assert_eq!(count_accounts(&urls[2]), accounts());

    // Reset brings the image's state back, on the same port with the same credentials.
    let reset: api::Clone = d.ok(&["clone", "reset", "c1"]);
    check_ready_clone(&d, &reset, "c1");
    assert_eq!((reset.port, reset.url()), (ports[0], urls[0].as_str()));
    assert_eq!(count_accounts(&urls[0]), accounts());

    // Stop keeps the changes and closes the port; start opens it again, same credentials.
    sql(&urls[1], "CREATE TABLE kept AS SELECT 42 AS v");
    let stopped: api::Clone = d.ok(&["clone", "stop", "c2"]);
    assert_eq!(stopped.status, CloneStatus::Stopped, "{stopped:?}");
    assert!(psql(&urls[1], "SELECT 1").is_err(), "a stopped clone still answers");
    let started: api::Clone = d.ok(&["clone", "start", "c2"]);
    check_ready_clone(&d, &started, "c2");
    assert_eq!((started.port, started.url()), (ports[1], urls[1].as_str()));
    assert_eq!(sql(&urls[1], "SELECT v FROM kept"), "42");

    // An image with clones cannot be removed; the message names them.
    let err = refused(&d, &["image", "rm", "prod"], "clones");
    for name in ["c1", "c2", "c3"] {
        assert!(err.contains(name), "the message does not name {name}: {err}");
    }
    assert!(image_dir.is_dir());

    for name in ["c1", "c2", "c3"] {
        let op: Operation = d.ok(&["clone", "rm", name]);
        assert_eq!(op.state, OperationState::Succeeded, "{op:?}");
    }
    assert!(d.ok::<Vec<api::Clone>>(&["clone", "list"]).is_empty());
    for (name, url) in ["c1", "c2", "c3"].iter().zip(&urls) {
        assert!(psql(url, "SELECT 1").is_err(), "clone {name} still answers after rm");
        assert!(!d.data_dir.join("clones").join(name).exists(), "clone {name}'s storage is left after rm");
        assert!(!d.data_dir.join("run/clones").join(name).exists(), "clone {name}'s run directory is left");
    }
    assert!(mounts_under(&d.data_dir).is_empty(), "mounts left: {:?}", mounts_under(&d.data_dir));

    // Time from `clone create` to the first SELECT 1 over the URL, and a fresh clone's disk.
    let mut ready_times = Vec::new();
    let mut fresh = Vec::new();
    for i in 1..=5 {
        let name = format!("t{i}");
        let started = Instant::now();
        let clone = create_clone(&d, &name, "prod");
        let first = psql(clone.url(), "SELECT 1");
        let ready = started.elapsed();
        assert_eq!(first.as_deref(), Ok("1"), "clone {name} said ready but does not answer SQL");
        ready_times.push(ready);
        assert!(clone.sizes_at.is_some(), "a fresh clone's disk use is measured: {clone:?}");
        fresh.push(clone.stored_bytes);
        d.ok::<Operation>(&["clone", "rm", &name]);
    }
    let ready = median(ready_times.clone());
    eprintln!(
        "clone create (3 clones): median {} ms, all {:?} ms",
        median(create_times.clone()).as_millis(),
        create_times.iter().map(Duration::as_millis).collect::<Vec<_>>()
    );
    eprintln!(
        "clone create to first SELECT 1 (5 clones): median {} ms, all {:?} ms",
        ready.as_millis(),
        ready_times.iter().map(Duration::as_millis).collect::<Vec<_>>()
    );
    eprintln!("fresh clone stored_bytes: {:?} KiB", fresh.iter().map(|b| b >> 10).collect::<Vec<_>>());
    for bytes in &fresh {
        assert!(*bytes < 1 << 20, "a fresh clone's layer holds {bytes} bytes");
    }

    // Through all of that, the image did not change.
    if let Some(diff) = support::diff(&before, &support::snapshot(&image_dir)) {
        panic!("the image changed:\n{diff}");
    }

    let op: Operation = d.ok(&["image", "rm", "prod"]);
    assert_eq!(op.state, OperationState::Succeeded, "{op:?}");
    assert!(d.ok::<Vec<api::Image>>(&["image", "list"]).is_empty());
    assert!(!image_dir.exists(), "the image's files are left after image rm");
    shut_down(d, &[]);
}

#[test]
fn restart_brings_clones_back() {
    require("restart_brings_clones_back");
    let source = pgbench_source();
    let work = work_dir();
    let mut d = Daemon::start(&work.path().join("data"), (7650, 7699));
    create_image(&d, "img", &source);
    let clone = create_clone(&d, "r1", "img");
    let (port, url) = (clone.port, clone.url().to_owned());
    sql(&url, "CREATE TABLE marker (v text); INSERT INTO marker VALUES ('before the kill')");
    sql(&url, "DELETE FROM pgbench_accounts WHERE aid % 1000 = 0");
    let pids = |d: &Daemon| {
        (
            fs::read_to_string(d.data_dir.join("run/clones/r1/postgres.pid")).unwrap(),
            fs::read_to_string(d.data_dir.join("clones/r1/mount.pid")).unwrap(),
        )
    };
    let old_pids = pids(&d);

    d.kill9();
    assert_eq!(sql(&url, "SELECT v FROM marker"), "before the kill", "the clone stopped with the server");
    let started = Instant::now();
    d.restart();
    let shown: api::Clone = d.ok(&["clone", "show", "r1"]);
    eprintln!("restart after kill -9: clone ready again {} ms after the start", started.elapsed().as_millis());
    assert_eq!(shown.status, CloneStatus::Ready, "{shown:?}");
    assert_eq!((shown.port, shown.url()), (port, url.as_str()), "same port, same password");
    assert_eq!(sql(&url, "SELECT v FROM marker"), "before the kill");
    assert_eq!(count_accounts(&url), accounts() - accounts() / 1000);
    // What the killed server ran was taken over, not restarted or doubled.
    assert_eq!(old_pids, pids(&d), "the clone's server and mount were restarted instead of adopted");
    assert!(d.log_since_start().contains("adopted the clone's running server"), "{}", d.log_since_start());
    assert_eq!(mounts_under(&d.data_dir.join("clones/r1")).len(), 1, "{:?}", mounts_under(&d.data_dir));

    // A clean restart keeps the clone serving: a session open across it goes on.
    let mut session = support::daemon::PsqlSession::open(&url);
    assert_eq!(session.query("SELECT count(*) FROM marker"), "1");
    d.restart();
    assert_eq!(
        session.query("INSERT INTO marker VALUES ('across a clean restart') RETURNING v"),
        "across a clean restart"
    );
    drop(session);
    assert_eq!(d.ok::<api::Clone>(&["clone", "show", "r1"]).status, CloneStatus::Ready);
    assert_eq!(old_pids, pids(&d));

    // A server started with --stop-clones-at-exit stops the clone when it exits, and the
    // next start starts it again.
    d.extra_args.push("--stop-clones-at-exit".into());
    d.restart();
    assert_eq!(old_pids, pids(&d));
    d.restart();
    assert_ne!(old_pids, pids(&d), "--stop-clones-at-exit left the clone running");
    assert_eq!(sql(&url, "SELECT count(*) FROM marker"), "2");

    d.ok::<Operation>(&["clone", "rm", "r1"]);
    d.ok::<Operation>(&["image", "rm", "img"]);
    shut_down(d, &[]);
}

#[test]
fn kill_9_during_clone_creation_is_cleaned_up() {
    require("kill_9_during_clone_creation_is_cleaned_up");
    let source = pgbench_source();
    let work = work_dir();
    let mut d = Daemon::start(&work.path().join("data"), (7700, 7749));
    create_image(&d, "img", &source);
    let clone_dir = d.data_dir.join("clones/k");

    // Kill at points spread over the time a creation takes here: before the record, while
    // the storage is made and mounted, while the server starts, and after the answer.
    let started = Instant::now();
    create_clone(&d, "probe", "img");
    let creation = started.elapsed();
    d.ok::<Operation>(&["clone", "rm", "probe"]);
    let mut delays: Vec<u64> =
        [0.1, 0.3, 0.5, 0.65, 0.8, 0.95, 1.5].iter().map(|f| (creation.as_millis() as f64 * f) as u64).collect();
    delays.extend([20, 50, 100]);
    let mut half_made = 0;
    for delay_ms in delays {
        let mut create = d
            .cli_command(&["clone", "create", "k", "--image", "img"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        d.kill9();
        let deadline = Instant::now() + Duration::from_secs(30);
        while create.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "clone create hangs after the server was killed");
            std::thread::sleep(Duration::from_millis(20));
        }
        let create = create.wait_with_output().unwrap();
        d.restart();

        let listed: Vec<api::Clone> = d.ok(&["clone", "list"]);
        let found = listed.into_iter().find(|c| c.name.as_str() == "k");
        let recovered = d.log_since_start().contains("creation was interrupted");
        half_made += recovered as u32;
        let outcome = match &found {
            None if recovered => "absent (recovery removed a half-made clone)",
            None => "absent (never made)",
            Some(clone) => {
                check_ready_clone(&d, clone, "k");
                assert_eq!(sql(clone.url(), "SELECT count(*) FROM pgbench_branches"), source_scale().to_string());
                d.ok::<Operation>(&["clone", "rm", "k"]);
                "ready"
            }
        };
        if create.status.success() {
            assert!(found.is_some(), "clone create answered before the kill, but the clone is gone after the restart");
        }
        assert!(!clone_dir.exists(), "clone k is gone, but its storage is left");
        assert!(!d.data_dir.join("run/clones/k").exists(), "clone k is gone, but its run directory is left");
        eprintln!(
            "kill -9 {delay_ms} ms into clone create (CLI {}): the clone is {outcome} after the restart",
            if create.status.success() { "had answered" } else { "failed" }
        );
        let procs = processes_under(&clone_dir);
        assert!(procs.is_empty(), "processes of clone k left after recovery and rm: {procs:?}");
        assert!(mounts_under(&clone_dir).is_empty(), "mounts of clone k left: {:?}", mounts_under(&clone_dir));

        // The name can be used again.
        let clone = create_clone(&d, "k", "img");
        assert_eq!(sql(clone.url(), "SELECT 1"), "1");
        d.ok::<Operation>(&["clone", "rm", "k"]);
    }

    eprintln!("clone creation takes {} ms here; {half_made} kills left a half-made clone", creation.as_millis());
    d.ok::<Operation>(&["image", "rm", "img"]);
    shut_down(d, &[]);
}

#[test]
fn bad_inputs_get_clear_errors_and_harm_nothing() {
    require("bad_inputs_get_clear_errors_and_harm_nothing");
    let source = pgbench_source();
    let src = source.to_str().unwrap();
    let work = work_dir();
    let d = Daemon::start(&work.path().join("data"), (7750, 7799));
    create_image(&d, "good", &source);
    let image_dir = d.data_dir.join("images/good");
    let before = support::snapshot(&image_dir);
    let ok = create_clone(&d, "ok", "good");
    let url = ok.url().to_owned();
    sql(&url, "CREATE TABLE mine AS SELECT 7 AS v");

    // Bad names, in request bodies and in URL paths.
    let long = "x".repeat(64);
    for bad in ["a/b", "..", "../etc", "Prod", long.as_str()] {
        refused(&d, &["image", "create", bad, "--from-dir", src], "invalid name");
        refused(&d, &["clone", "create", bad, "--image", "good"], "invalid name");
        refused(&d, &["clone", "create", "fine", "--image", bad], "invalid name");
        refused(&d, &["clone", "show", bad], "invalid name");
        refused(&d, &["clone", "reset", bad], "invalid name");
        refused(&d, &["clone", "rm", bad], "invalid name");
        refused(&d, &["image", "rm", bad], "invalid name");
    }

    // Names that are valid but name nothing, or something that exists.
    refused(&d, &["clone", "create", "c9", "--image", "nosuch"], "no image named nosuch");
    refused(&d, &["image", "rm", "nosuch"], "no image named nosuch");
    refused(&d, &["clone", "show", "nosuch"], "no clone named nosuch");
    refused(&d, &["clone", "rm", "nosuch"], "no clone named nosuch");
    refused(&d, &["clone", "create", "ok", "--image", "good"], "already exists");
    refused(&d, &["image", "create", "good", "--from-dir", src], "already exists");
    refused(&d, &["op", "show", "999999"], "no operation named 999999");

    // Sources that cannot be an image.
    let err = refused(&d, &["image", "create", "x", "--from-dir", "/nonexistent"], "/nonexistent");
    assert!(err.contains("No such file"), "{err}");
    let not_data = work.path().join("not-a-data-dir");
    fs::create_dir(&not_data).unwrap();
    fs::write(not_data.join("README"), "just a file").unwrap();
    let err = refused(&d, &["image", "create", "x", "--from-dir", not_data.to_str().unwrap()], "PG_VERSION");
    assert!(err.contains("not a PostgreSQL data directory"), "{err}");
    // A version that is not installed is named, with where thinclone looked.
    let pg12 = work.path().join("pg12");
    support::copy_tree(&source, &pg12);
    fs::write(pg12.join("PG_VERSION"), "12\n").unwrap();
    let err =
        refused(&d, &["image", "create", "x", "--from-dir", pg12.to_str().unwrap()], "PostgreSQL 12 is not installed");
    assert!(err.contains("/usr/lib/postgresql/12/bin"), "{err}");
    // Regression: an unreadable version became "PostgreSQL 0 is not installed".
    fs::write(pg12.join("PG_VERSION"), "\n").unwrap();
    let err =
        refused(&d, &["image", "create", "x", "--from-dir", pg12.to_str().unwrap()], "not a PostgreSQL data directory");
    assert!(!err.contains("PostgreSQL 0"), "{err}");
    fs::remove_dir_all(&pg12).unwrap();
    refused(&d, &["image", "create", "x", "--from-dir", image_dir.to_str().unwrap()], "thinclone's own data directory");

    // None of that left anything behind or touched what exists.
    let images: Vec<api::Image> = d.ok(&["image", "list"]);
    assert_eq!(names(&images), ["good"]);
    assert_eq!(images[0].status, ImageStatus::Ready);
    assert_eq!(names(&d.ok::<Vec<api::Clone>>(&["clone", "list"])), ["ok"]);
    let shown: api::Clone = d.ok(&["clone", "show", "ok"]);
    assert_eq!((shown.status, shown.url()), (CloneStatus::Ready, url.as_str()));
    assert_eq!(sql(&url, "SELECT v FROM mine"), "7");
    assert_eq!(count_accounts(&url), accounts());
    let listing = |dir: &str| {
        let mut names: Vec<String> = fs::read_dir(d.data_dir.join(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    assert_eq!(listing("images"), ["good"]);
    assert_eq!(listing("clones"), ["ok"]);
    let another = create_clone(&d, "ok2", "good");
    assert_eq!(count_accounts(another.url()), accounts());
    if let Some(diff) = support::diff(&before, &support::snapshot(&image_dir)) {
        panic!("the image changed:\n{diff}");
    }

    for name in ["ok", "ok2"] {
        d.ok::<Operation>(&["clone", "rm", name]);
    }
    d.ok::<Operation>(&["image", "rm", "good"]);
    shut_down(d, &[]);
}

/// Regression: an image and a clone of the same name shared `run/<name>`, so that making
/// image `x` deleted the socket and pid file of a running clone `x`.
#[test]
fn an_image_and_a_clone_may_share_a_name() {
    require("an_image_and_a_clone_may_share_a_name");
    let source = pgbench_source();
    let work = work_dir();
    let mut d = Daemon::start(&work.path().join("data"), (7900, 7919));
    create_image(&d, "base", &source);
    let clone = create_clone(&d, "x", "base");
    create_image(&d, "x", &source);
    assert_eq!(sql(clone.url(), "SELECT 1"), "1");
    assert!(d.data_dir.join("run/clones/x/postgres.pid").exists(), "the clone's pid file went with the image's run");
    // The server still knows and stops the clone's own server after a restart.
    d.kill9();
    d.restart();
    assert_eq!(d.ok::<api::Clone>(&["clone", "show", "x"]).status, CloneStatus::Ready);
    d.ok::<Operation>(&["clone", "rm", "x"]);
    assert!(psql(clone.url(), "SELECT 1").is_err(), "the clone runs on after rm");
    d.ok::<Operation>(&["image", "rm", "x"]);
    d.ok::<Operation>(&["image", "rm", "base"]);
    shut_down(d, &[]);
}
