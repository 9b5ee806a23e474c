//! The daemon end to end: a real `thinclone serve`, driven by the real CLI with `--json`,
//! making images of a real 500 MB+ pgbench cluster and cowfs clones of them, each with a
//! real PostgreSQL server reached over its URL with `psql`. Kill -9 of the daemon, at rest
//! and while a clone is being made, must leave every clone either usable or gone; bad input
//! must get a clear 4xx message and harm nothing.
//!
//! Each test runs its own daemon on its own data directory and clone port range; they share
//! one source cluster (`support::daemon::pgbench_source`), which they only read.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::daemon::{mounts_under, pgbench_source, processes_under, psql, source_scale, Daemon};

fn runnable(test: &str) -> bool {
    support::fuse_available(test) && support::pg::available(test)
}

/// A work directory whose path says whose it is (`mount | grep thinclone` finds its mounts),
/// traversable by the postgres user.
fn work_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix("thinclone-daemon-test-").tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// The major version of the PostgreSQL the tests run (`/usr/lib/postgresql/<major>/bin`).
fn host_major() -> u64 {
    let bin = support::pg::bin_dir().unwrap();
    bin.parent().unwrap().file_name().unwrap().to_str().unwrap().parse().unwrap()
}

fn accounts() -> u64 {
    100_000 * source_scale() as u64
}

fn field<'a>(v: &'a Value, key: &str) -> &'a Value {
    v.get(key).unwrap_or_else(|| panic!("no {key:?} in {v}"))
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    field(v, key).as_str().unwrap_or_else(|| panic!("{key:?} is not a string in {v}"))
}

fn number(v: &Value, key: &str) -> u64 {
    field(v, key).as_u64().unwrap_or_else(|| panic!("{key:?} is not a number in {v}"))
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
/// image object it prints.
fn create_image(d: &Daemon, name: &str, source: &Path) -> Value {
    let started = Instant::now();
    let image = d.ok(&["image", "create", name, "--from-dir", source.to_str().unwrap()]);
    eprintln!("image {name}: ready in {:.1} s", started.elapsed().as_secs_f64());
    assert_eq!(text(&image, "name"), name);
    assert_eq!(text(&image, "status"), "ready", "{image}");
    assert_eq!(number(&image, "pg_version"), host_major(), "{image}");
    assert!(number(&image, "logical_bytes") >= 500 << 20, "the image is too small: {image}");
    assert!(number(&image, "file_count") > 0, "{image}");
    image
}

/// `clone create NAME --image IMAGE`; checks the clone object it prints: ready, with a port
/// in the daemon's range and a URL on it.
fn create_clone(d: &Daemon, name: &str, image: &str) -> Value {
    let clone = d.ok(&["clone", "create", name, "--image", image]);
    check_ready_clone(d, &clone, name);
    clone
}

fn check_ready_clone(d: &Daemon, clone: &Value, name: &str) {
    assert_eq!(text(clone, "name"), name);
    assert_eq!(text(clone, "status"), "ready", "{clone}");
    let port = number(clone, "port");
    assert!((d.ports.0 as u64..=d.ports.1 as u64).contains(&port), "port {port} is outside {:?}", d.ports);
    let url = text(clone, "url");
    assert!(url.starts_with("postgresql://") && url.contains(&format!(":{port}/")), "{clone}");
}

/// Names of the objects a `list --json` printed.
fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("not an array: {list}"))
        .iter()
        .map(|o| text(o, "name").to_owned())
        .collect()
}

/// Stops the daemon with SIGTERM and checks that it exits cleanly and leaves no server,
/// mount or process behind.
fn shut_down(mut d: Daemon) {
    let status = d.stop().unwrap();
    assert!(status.success(), "the daemon exited with {status} on SIGTERM:\n{}", d.log_tail(30));
    let procs = processes_under(&d.data_dir);
    assert!(procs.is_empty(), "processes left running after the daemon stopped: {procs:?}");
    let mounts = mounts_under(&d.data_dir);
    assert!(mounts.is_empty(), "mounts left after the daemon stopped: {mounts:?}");
}

/// The error of a command that must fail with a 4xx message containing `expected`.
fn refused(d: &Daemon, args: &[&str], expected: &str) -> String {
    let err = match d.cli(args) {
        Ok(v) => panic!("`thinclone {}` succeeded, but must fail with {expected:?}: {v}", args.join(" ")),
        Err(e) => e,
    };
    assert!(err.contains(expected), "`thinclone {}`: expected {expected:?} in {err:?}", args.join(" "));
    // 5xx answers say "the daemon failed"; these are the caller's mistakes.
    assert!(!err.contains("the daemon failed"), "`thinclone {}` got a 5xx: {err}", args.join(" "));
    err
}

#[test]
fn images_and_clones() {
    if !runnable("images_and_clones") {
        return;
    }
    let source = pgbench_source();
    let work = work_dir();
    let d = Daemon::start(&work.path().join("data"), (7600, 7649));

    create_image(&d, "prod", &source);
    let image_dir = d.data_dir.join("images/prod");
    let before = support::snapshot(&image_dir);
    assert_eq!(names(&d.ok(&["image", "list"])), ["prod"]);

    // Three clones, each accepting SQL as soon as `clone create` returns.
    let mut clones = Vec::new();
    let mut create_times = Vec::new();
    for name in ["c1", "c2", "c3"] {
        let started = Instant::now();
        let clone = create_clone(&d, name, "prod");
        create_times.push(started.elapsed());
        assert_eq!(sql(text(&clone, "url"), "SELECT 1"), "1");
        clones.push(clone);
    }
    let urls: Vec<String> = clones.iter().map(|c| text(c, "url").to_owned()).collect();
    let ports: Vec<u64> = clones.iter().map(|c| number(c, "port")).collect();
    assert!(ports[0] != ports[1] && ports[1] != ports[2] && ports[0] != ports[2], "ports {ports:?}");
    assert_eq!(names(&d.ok(&["clone", "list"])), ["c1", "c2", "c3"]);

    // A write in one clone is seen by it alone.
    sql(&urls[0], "DELETE FROM pgbench_accounts WHERE aid <= 1000");
    assert_eq!(count_accounts(&urls[0]), accounts() - 1000);
    assert_eq!(count_accounts(&urls[1]), accounts());
    assert_eq!(count_accounts(&urls[2]), accounts());
    let layer = number(&d.ok(&["clone", "show", "c1"]), "layer_bytes");
    eprintln!("c1 after deleting 1000 rows: layer {} KiB", layer >> 10);

    // Reset brings the image's state back, on the same port with the same credentials.
    let reset = d.ok(&["clone", "reset", "c1"]);
    check_ready_clone(&d, &reset, "c1");
    assert_eq!(number(&reset, "port"), ports[0]);
    assert_eq!(text(&reset, "url"), urls[0]);
    assert_eq!(count_accounts(&urls[0]), accounts());

    // Stop keeps the changes and closes the port; start opens it again, same credentials.
    sql(&urls[1], "CREATE TABLE kept AS SELECT 42 AS v");
    let stopped = d.ok(&["clone", "stop", "c2"]);
    assert_eq!(text(&stopped, "status"), "stopped", "{stopped}");
    assert!(psql(&urls[1], "SELECT 1").is_err(), "a stopped clone still answers");
    let started = d.ok(&["clone", "start", "c2"]);
    check_ready_clone(&d, &started, "c2");
    assert_eq!((number(&started, "port"), text(&started, "url")), (ports[1], urls[1].as_str()));
    assert_eq!(sql(&urls[1], "SELECT v FROM kept"), "42");

    // An image with clones cannot be removed; the message names them.
    let err = refused(&d, &["image", "rm", "prod"], "clones");
    for name in ["c1", "c2", "c3"] {
        assert!(err.contains(name), "the message does not name {name}: {err}");
    }
    assert!(image_dir.is_dir());
    assert_eq!(names(&d.ok(&["image", "list"])), ["prod"]);

    for name in ["c1", "c2", "c3"] {
        assert_eq!(d.ok(&["clone", "rm", name]), Value::Null);
    }
    assert_eq!(names(&d.ok(&["clone", "list"])), Vec::<String>::new());
    for (name, url) in ["c1", "c2", "c3"].iter().zip(&urls) {
        assert!(psql(url, "SELECT 1").is_err(), "clone {name} still answers after rm");
        assert!(!d.data_dir.join("clones").join(name).exists(), "clone {name}'s storage is left after rm");
    }
    assert!(mounts_under(&d.data_dir).is_empty(), "mounts left: {:?}", mounts_under(&d.data_dir));

    // Time from `clone create` to the first SELECT 1 over the URL, and a fresh clone's layer.
    let mut ready_times = Vec::new();
    let mut fresh_layers = Vec::new();
    for i in 1..=5 {
        let name = format!("t{i}");
        let started = Instant::now();
        let clone = create_clone(&d, &name, "prod");
        let first = psql(text(&clone, "url"), "SELECT 1");
        let ready = started.elapsed();
        assert_eq!(first.as_deref(), Ok("1"), "clone {name} said ready but does not answer SQL");
        ready_times.push(ready);
        let shown = number(&d.ok(&["clone", "show", &name]), "layer_bytes");
        fresh_layers.push((number(&clone, "layer_bytes"), shown));
        d.ok(&["clone", "rm", &name]);
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
    eprintln!(
        "fresh clone layer_bytes (at create, after SELECT 1): {:?} KiB",
        fresh_layers.iter().map(|(a, b)| (a >> 10, b >> 10)).collect::<Vec<_>>()
    );
    assert!(ready < Duration::from_secs(5), "a clone took {ready:?} to answer SQL");
    for (at_create, after) in &fresh_layers {
        assert!(*at_create < 1 << 20 && *after < 1 << 20, "a fresh clone's layer holds {at_create} / {after} bytes");
    }

    // Through all of that, the image did not change.
    if let Some(diff) = support::diff(&before, &support::snapshot(&image_dir)) {
        panic!("the image changed:\n{diff}");
    }

    assert_eq!(d.ok(&["image", "rm", "prod"]), Value::Null);
    assert_eq!(names(&d.ok(&["image", "list"])), Vec::<String>::new());
    assert!(!image_dir.exists(), "the image's files are left after image rm");
    shut_down(d);
}

#[test]
fn restart_brings_clones_back() {
    if !runnable("restart_brings_clones_back") {
        return;
    }
    let source = pgbench_source();
    let work = work_dir();
    let mut d = Daemon::start(&work.path().join("data"), (7650, 7699));
    create_image(&d, "img", &source);
    let clone = create_clone(&d, "r1", "img");
    let (port, url) = (number(&clone, "port"), text(&clone, "url").to_owned());
    sql(&url, "CREATE TABLE marker (v text); INSERT INTO marker VALUES ('before the kill')");
    sql(&url, "DELETE FROM pgbench_accounts WHERE aid % 1000 = 0");
    let old_pids = (
        fs::read_to_string(d.data_dir.join("run/r1/postgres.pid")).unwrap(),
        fs::read_to_string(d.data_dir.join("clones/r1/mount.pid")).unwrap(),
    );

    d.kill9();
    let orphans = processes_under(&d.data_dir);
    eprintln!(
        "after kill -9 of the daemon: {} of its processes still run; the clone {} SQL",
        orphans.len(),
        if psql(&url, "SELECT 1").is_ok() { "still answers" } else { "does not answer" }
    );

    let started = Instant::now();
    d.restart();
    let deadline = Instant::now() + Duration::from_secs(60);
    let shown = loop {
        let shown = d.ok(&["clone", "show", "r1"]);
        match text(&shown, "status") {
            "ready" => break shown,
            "creating" | "stopped" if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            _ => panic!("clone r1 did not come back after a restart: {shown}"),
        }
    };
    eprintln!("restart after kill -9: clone ready again in {} ms", started.elapsed().as_millis());
    assert_eq!((number(&shown, "port"), text(&shown, "url")), (port, url.as_str()), "same port, same password");
    assert_eq!(sql(&url, "SELECT v FROM marker"), "before the kill");
    assert_eq!(count_accounts(&url), accounts() - accounts() / 1000);
    // What the killed daemon ran was replaced, not doubled.
    let new_pids = (
        fs::read_to_string(d.data_dir.join("run/r1/postgres.pid")).unwrap(),
        fs::read_to_string(d.data_dir.join("clones/r1/mount.pid")).unwrap(),
    );
    assert_ne!(old_pids, new_pids);
    assert_eq!(mounts_under(&d.data_dir.join("clones/r1")).len(), 1, "{:?}", mounts_under(&d.data_dir));

    // A clean restart brings it back too.
    sql(&url, "INSERT INTO marker VALUES ('before the clean restart')");
    d.restart();
    let shown = d.ok(&["clone", "show", "r1"]);
    assert_eq!(text(&shown, "status"), "ready", "{shown}");
    assert_eq!(sql(&url, "SELECT count(*) FROM marker"), "2");

    d.ok(&["clone", "rm", "r1"]);
    d.ok(&["image", "rm", "img"]);
    shut_down(d);
}

#[test]
fn kill_9_during_clone_creation_is_cleaned_up() {
    if !runnable("kill_9_during_clone_creation_is_cleaned_up") {
        return;
    }
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
    d.ok(&["clone", "rm", "probe"]);
    let mut delays: Vec<u64> =
        [0.1, 0.3, 0.5, 0.65, 0.8, 0.95, 1.5].iter().map(|f| (creation.as_millis() as f64 * f) as u64).collect();
    delays.extend([50, 100, 150]);
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
            assert!(Instant::now() < deadline, "clone create hangs after the daemon was killed");
            std::thread::sleep(Duration::from_millis(20));
        }
        let create = create.wait_with_output().unwrap();
        d.restart();

        let listed = d.ok(&["clone", "list"]);
        let found = listed.as_array().unwrap().iter().find(|c| text(c, "name") == "k").cloned();
        let recovered = d.log_since_start().contains("left half-made");
        half_made += recovered as u32;
        let outcome = match &found {
            None if recovered => "absent (recovery removed a half-made clone)",
            None => "absent (never recorded)",
            Some(clone) => {
                check_ready_clone(&d, clone, "k");
                assert_eq!(
                    sql(text(clone, "url"), "SELECT count(*) FROM pgbench_branches"),
                    source_scale().to_string()
                );
                d.ok(&["clone", "rm", "k"]);
                "ready"
            }
        };
        if create.status.success() {
            assert!(found.is_some(), "clone create answered before the kill, but the clone is gone after the restart");
        }
        if found.is_none() {
            assert!(!clone_dir.exists(), "clone k is gone, but its storage is left");
            assert!(!d.data_dir.join("run/k").exists(), "clone k is gone, but its run directory is left");
        }
        eprintln!(
            "kill -9 {delay_ms} ms into clone create (CLI {}): the clone is {outcome} after the restart",
            if create.status.success() { "had answered" } else { "failed" }
        );
        let procs = processes_under(&clone_dir);
        assert!(procs.is_empty(), "processes of clone k left after recovery and rm: {procs:?}");
        assert!(mounts_under(&clone_dir).is_empty(), "mounts of clone k left: {:?}", mounts_under(&clone_dir));

        // The name can be used again.
        let clone = create_clone(&d, "k", "img");
        assert_eq!(sql(text(&clone, "url"), "SELECT 1"), "1");
        d.ok(&["clone", "rm", "k"]);
    }

    eprintln!("clone creation takes {} ms here; {half_made} kills left a half-made clone", creation.as_millis());
    d.ok(&["image", "rm", "img"]);
    shut_down(d);
}

#[test]
fn bad_inputs_get_clear_errors_and_harm_nothing() {
    if !runnable("bad_inputs_get_clear_errors_and_harm_nothing") {
        return;
    }
    let source = pgbench_source();
    let src = source.to_str().unwrap();
    let work = work_dir();
    let d = Daemon::start(&work.path().join("data"), (7750, 7799));
    create_image(&d, "good", &source);
    let image_dir = d.data_dir.join("images/good");
    let before = support::snapshot(&image_dir);
    let ok = create_clone(&d, "ok", "good");
    let url = text(&ok, "url").to_owned();
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

    // Sources that cannot be an image.
    let err = refused(&d, &["image", "create", "x", "--from-dir", "/nonexistent"], "/nonexistent");
    assert!(err.contains("No such file"), "{err}");
    let not_data = work.path().join("not-a-data-dir");
    fs::create_dir(&not_data).unwrap();
    fs::write(not_data.join("README"), "just a file").unwrap();
    let err = refused(&d, &["image", "create", "x", "--from-dir", not_data.to_str().unwrap()], "PG_VERSION");
    assert!(err.contains("not a PostgreSQL data directory"), "{err}");
    let pg9 = work.path().join("pg9");
    let status = std::process::Command::new("cp").arg("-a").arg(&source).arg(&pg9).status().unwrap();
    assert!(status.success());
    fs::write(pg9.join("PG_VERSION"), "9\n").unwrap();
    refused(&d, &["image", "create", "x", "--from-dir", pg9.to_str().unwrap()], "PostgreSQL 9 is not installed");
    fs::remove_dir_all(&pg9).unwrap();
    refused(&d, &["image", "create", "x", "--from-dir", image_dir.to_str().unwrap()], "must not be inside");

    // None of that left anything behind or touched what exists.
    assert_eq!(names(&d.ok(&["image", "list"])), ["good"]);
    assert_eq!(text(&d.ok(&["image", "list"])[0], "status"), "ready");
    assert_eq!(names(&d.ok(&["clone", "list"])), ["ok"]);
    let shown = d.ok(&["clone", "show", "ok"]);
    assert_eq!((text(&shown, "status"), text(&shown, "url")), ("ready", url.as_str()));
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
    assert_eq!(count_accounts(text(&another, "url")), accounts());
    if let Some(diff) = support::diff(&before, &support::snapshot(&image_dir)) {
        panic!("the image changed:\n{diff}");
    }

    for name in ["ok", "ok2"] {
        d.ok(&["clone", "rm", name]);
    }
    d.ok(&["image", "rm", "good"]);
    shut_down(d);
}
