//! Images and clones of every PostgreSQL major version from 13 to 18, through a real daemon
//! and its CLI: for each major, a small source cluster made with that major's own `initdb`,
//! an image of it (`image create --from-dir`, which prepares it with that major's server),
//! and on each driver ext4 offers (cowfs and copy) a clone that takes a write and reads over
//! its URL, is reset to the image and removed; the image's files are the same at the end.
//! An image clones only with its own major: with PostgreSQL 13 taken away from the daemon,
//! making a clone or an image of 13, or starting a clone of 13, fails with a message that
//! names the version and says how to install it, and works again once 13 is back.
//!
//! Debian 12 ships 15; `scripts/install --pg-versions` fetches the others (13 as server
//! programs alone, whose client programs the engine borrows from another version:
//! doc/ENGINE-POSTGRESQL.md, "Versions"). No major is skipped: a missing one fails.
//!
//! Each major has its own daemon, work directory and ports (20 from 8400 on, in the order of
//! `MAJORS`: clones on the first ten, the source cluster on the last).

#[path = "support/pg_versions.rs"]
mod pg_versions;
mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Instant;

use api::{CloneStatus, ImageStatus, Operation, OperationState};
use pg_versions::{Cluster, Hidden, MAJORS};
use support::daemon::{psql, Daemon, UrlOf};

/// Rows of the source's table.
const ROWS: u32 = 1000;

fn sql(url: &str, query: &str) -> String {
    psql(url, query).unwrap_or_else(|e| panic!("psql {url} -c {query:?} failed: {e}"))
}

/// The ports of `major`: clones on (first, first + 9), its source cluster on first + 19.
fn ports(major: u32) -> (u16, u16, u16) {
    let index = MAJORS.iter().position(|&m| m == major).unwrap() as u16;
    let first = 8400 + 20 * index;
    (first, first + 9, first + 19)
}

/// The error of a CLI command that must fail, with its message checked for `expected`.
fn refused(d: &Daemon, args: &[&str], expected: &[&str]) -> String {
    let err = match d.cli::<serde_json::Value>(args) {
        Ok(v) => panic!("`thinclone {}` succeeded, but must fail: {v}", args.join(" ")),
        Err(e) => e,
    };
    for part in expected {
        assert!(err.contains(part), "`thinclone {}`: expected {part:?} in {err:?}", args.join(" "));
    }
    err
}

/// What one major's run took, for the summary line.
struct Timings(Vec<(String, f64)>);

impl Timings {
    fn note(&mut self, what: &str, since: Instant) {
        self.0.push((what.to_owned(), since.elapsed().as_secs_f64()));
    }

    fn line(&self) -> String {
        self.0.iter().map(|(what, s)| format!("{what} {s:.2} s")).collect::<Vec<_>>().join(", ")
    }
}

/// The whole run of one major; returns the daemon, its image `img` still there, for more.
fn images_and_clones_of(major: u32, test: &str, work: &std::path::Path) -> (Daemon, Cluster) {
    let started = Instant::now();
    let mut t = Timings(Vec::new());
    let (first, last, source_port) = ports(major);

    // The source: that major's initdb, a table and a second database, stopped.
    let at = Instant::now();
    let mut source = Cluster::initdb(major, &work.join("source"), source_port, work);
    source.start();
    assert_eq!(source.sql("postgres", "SELECT current_setting('server_version_num')::int / 10000"), major.to_string());
    source.sql(
        "postgres",
        &format!("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, {ROWS}) g"),
    );
    source.sql("postgres", "CREATE DATABASE second");
    source.sql("second", "CREATE TABLE s AS SELECT 7 AS x");
    source.stop();
    t.note("source", at);

    let at = Instant::now();
    let d = Daemon::start(&work.join("data"), (first, last));
    t.note("daemon", at);

    let at = Instant::now();
    let image: api::Image = d.ok(&["image", "create", "img", "--from-dir", source.data.to_str().unwrap()]);
    t.note("image", at);
    assert_eq!(image.status, ImageStatus::Ready, "{image:?}");
    assert_eq!(image.engine, "postgresql");
    assert_eq!(image.engine_version.as_deref(), Some(major.to_string().as_str()), "{image:?}");
    let image_dir = d.data_dir.join("images/img");
    let before = support::snapshot(&image_dir);

    for driver in ["cowfs", "copy"] {
        let name = format!("c-{driver}");
        let at = Instant::now();
        let clone: api::Clone = d.ok(&["clone", "create", &name, "--image", "img", "--driver", driver]);
        assert_eq!(clone.status, CloneStatus::Ready, "{clone:?}");
        assert_eq!(clone.driver.as_str(), driver, "{clone:?}");
        let url = clone.url().to_owned();
        // Its server is of the image's major, and holds the source's data.
        let version = sql(&url, "SELECT current_setting('server_version_num')::int / 10000");
        assert_eq!(version, major.to_string(), "{test}: clone {name} runs PostgreSQL {version}");
        t.note(&format!("{driver} clone"), at);
        let at = Instant::now();
        sql(&url, "INSERT INTO t VALUES (100001, 'written in the clone'); CREATE TABLE made_here AS SELECT 1 AS y");
        assert_eq!(sql(&url, "SELECT count(*) FROM t"), (ROWS + 1).to_string());
        assert_eq!(sql(&url, "SELECT v FROM t WHERE id = 100001"), "written in the clone");
        assert_eq!(sql(&url, "SELECT y FROM made_here"), "1");
        let second = format!("{}/second", url.rsplit_once('/').unwrap().0);
        assert_eq!(sql(&second, "SELECT x FROM s"), "7");
        t.note("sql", at);

        let at = Instant::now();
        let reset: api::Clone = d.ok(&["clone", "reset", &name]);
        assert_eq!(reset.status, CloneStatus::Ready, "{reset:?}");
        assert_eq!((reset.port, reset.url()), (clone.port, url.as_str()), "reset keeps the port and credentials");
        assert_eq!(sql(&url, "SELECT count(*) FROM t"), ROWS.to_string());
        assert_eq!(sql(&url, "SELECT count(*) FROM pg_class WHERE relname = 'made_here'"), "0");
        t.note("reset", at);

        let at = Instant::now();
        let op: Operation = d.ok(&["clone", "rm", &name]);
        assert_eq!(op.state, OperationState::Succeeded, "{op:?}");
        assert!(psql(&url, "SELECT 1").is_err(), "clone {name} still answers after rm");
        assert!(!d.data_dir.join("clones").join(&name).exists(), "clone {name}'s files are left after rm");
        t.note("rm", at);
    }

    if let Some(diff) = support::diff(&before, &support::snapshot(&image_dir)) {
        panic!("{test}: the image of PostgreSQL {major} changed:\n{diff}");
    }
    eprintln!("PostgreSQL {major}: {}; in all {:.1} s", t.line(), started.elapsed().as_secs_f64());
    (d, source)
}

/// A work directory traversable by the postgres user, under /tmp (a registered source
/// directory of the tests' daemons).
fn work_dir(major: u32) -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix(&format!("thinclone-pg{major}-test-")).tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn run_major(major: u32) {
    let test = format!("pg{major}");
    pg_versions::point_thinclone_at_them();
    pg_versions::require(major, &test);
    let work = work_dir(major);
    let (d, _source) = images_and_clones_of(major, &test, work.path());
    let op: Operation = d.ok(&["image", "rm", "img"]);
    assert_eq!(op.state, OperationState::Succeeded, "{op:?}");
}

/// PostgreSQL 13, and then its absence: an image of 13 clones only with 13's server.
#[test]
fn pg13() {
    pg_versions::point_thinclone_at_them();
    pg_versions::require(13, "pg13");
    let work = work_dir(13);
    let (d, source) = images_and_clones_of(13, "pg13", work.path());
    let kept: api::Clone = d.ok(&["clone", "create", "kept", "--image", "img", "--driver", "cowfs"]);
    sql(kept.url(), "CREATE TABLE kept_here AS SELECT 13 AS z");
    d.ok::<api::Clone>(&["clone", "stop", "kept"]);

    let hidden = Hidden::hide(13);
    // The server places no clone where its version is missing (what the agent reports).
    let err = refused(&d, &["clone", "create", "gone", "--image", "img"], &["no postgresql 13 installed"]);
    eprintln!("clone create without 13: {err}");
    // The engine's own word, where the agent asks it.
    let engine_says =
        ["PostgreSQL 13 is not installed", "runs only with the server programs of PostgreSQL 13", "THINCLONE_PG_DIRS="];
    let err = refused(&d, &["clone", "start", "kept"], &engine_says);
    eprintln!("clone start without 13: {err}");
    let err = refused(&d, &["image", "create", "img2", "--from-dir", source.data.to_str().unwrap()], &engine_says);
    eprintln!("image create without 13: {err}");
    assert!(!d.data_dir.join("images/img2").exists(), "a refused image left files");

    // Back again: the same clone starts, with what it had.
    drop(hidden);
    let started: api::Clone = d.ok(&["clone", "start", "kept"]);
    assert_eq!(started.status, CloneStatus::Ready, "{started:?}");
    assert_eq!(sql(started.url(), "SELECT z FROM kept_here"), "13");
    d.ok::<Operation>(&["clone", "rm", "kept"]);
    let op: Operation = d.ok(&["image", "rm", "img"]);
    assert_eq!(op.state, OperationState::Succeeded, "{op:?}");
}

#[test]
fn pg14() {
    run_major(14);
}

#[test]
fn pg15() {
    run_major(15);
}

#[test]
fn pg16() {
    run_major(16);
}

#[test]
fn pg17() {
    run_major(17);
}

#[test]
fn pg18() {
    run_major(18);
}
