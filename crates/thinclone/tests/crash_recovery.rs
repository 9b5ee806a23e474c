//! kill -9 of the server in the middle of a reset, a stop, a removal, a checkpoint (while the
//! clone's server is paused), a revert and a refresh (onto another image), at ten moments each,
//! for the cowfs driver (on the test machine's filesystem) and the reflink driver (on a
//! loop-mounted XFS). After each restart the clone must be ready, stopped or gone exactly as
//! its record says, and nothing may be orphaned: no half-made copy (`data.new`, `data.old`),
//! no second server or mount, and nothing at all of a removed clone.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use api::{CloneStatus, Driver, Operation};
use support::daemon::{mounts_under, pgbench_source, processes_under, psql, Daemon, UrlOf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Reset,
    Stop,
    Delete,
    Checkpoint,
    Revert,
    Refresh,
}

impl Op {
    fn args(self) -> Vec<&'static str> {
        match self {
            Op::Reset => ["clone", "reset", "k"],
            Op::Stop => ["clone", "stop", "k"],
            Op::Delete => ["clone", "rm", "k"],
            Op::Checkpoint => ["clone", "checkpoint", "k"],
            Op::Revert => ["clone", "revert", "k"],
            Op::Refresh => return vec!["clone", "refresh", "k", "--image", "OTHER"],
        }
        .to_vec()
    }

    /// The arguments, for clone `k` made from image `on` now: a refresh goes to the other
    /// of the two images.
    fn args_on(self, on: &str) -> Vec<&'static str> {
        let other = if on == "img" { "img2" } else { "img" };
        self.args().into_iter().map(|a| if a == "OTHER" { other } else { a }).collect()
    }
}

/// What the clone is after a restart, checked against what runs and what is on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ready { reset: bool },
    Stopped,
    Gone,
}

/// Makes clone `k` ready, with a marker row that a reset removes.
fn fresh_clone(d: &Daemon) -> api::Clone {
    let clone: api::Clone = match d.cli::<api::Clone>(&["clone", "show", "k"]) {
        Ok(c) if c.status == CloneStatus::Ready => c,
        Ok(c) if c.status == CloneStatus::Stopped => d.ok(&["clone", "start", "k"]),
        Ok(c) => panic!("clone k is {c:?}"),
        Err(_) => d.ok(&["clone", "create", "k", "--image", "img"]),
    };
    assert_eq!(clone.status, CloneStatus::Ready, "{clone:?}");
    psql(clone.url(), "CREATE TABLE IF NOT EXISTS marker (v int); INSERT INTO marker VALUES (1)").unwrap();
    clone
}

/// Checks the clone against reality: its processes, mounts and files, and SQL over its URL.
fn check(d: &Daemon, driver: Driver, url: &str) -> Outcome {
    let clone_dir = d.data_dir.join("clones/k");
    let run_dir = d.data_dir.join("run/clones/k");
    let listed: Vec<api::Clone> = d.ok(&["clone", "list"]);
    let Some(clone) = listed.into_iter().find(|c| c.name.as_str() == "k") else {
        assert!(!clone_dir.exists(), "clone k is gone, but its directory is left: {:?}", listing(&clone_dir));
        assert!(!run_dir.exists(), "clone k is gone, but its run directory is left");
        assert!(
            processes_under(&clone_dir).is_empty(),
            "processes of a removed clone: {:?}",
            processes_under(&clone_dir)
        );
        assert!(mounts_under(&clone_dir).is_empty(), "mounts of a removed clone: {:?}", mounts_under(&clone_dir));
        assert!(psql(url, "SELECT 1").is_err(), "a removed clone answers SQL");
        return Outcome::Gone;
    };
    let entries = listing(&clone_dir);
    for leftover in ["data.new", "data.old"] {
        assert!(!entries.contains(&leftover.to_owned()), "{leftover} left in {entries:?}");
    }
    let checkpoints = listing(&clone_dir.join("checkpoints"));
    assert!(!checkpoints.iter().any(|c| c.ends_with(".partial")), "a half-made checkpoint is left: {checkpoints:?}");
    let recorded: Vec<api::Checkpoint> = d.ok(&["clone", "checkpoints", "k"]);
    let mut names: Vec<String> = recorded.iter().map(|c| c.name.to_string()).collect();
    let mut dirs = checkpoints.clone();
    names.sort();
    dirs.sort();
    assert_eq!(names, dirs, "the checkpoints recorded and those on disk differ");
    let postmasters: Vec<_> = processes_under(&clone_dir.join("data"))
        .into_iter()
        .filter(|(_, cmdline)| cmdline.contains("postgres") && !cmdline.contains(" mount "))
        .collect();
    let mount_procs: Vec<_> =
        processes_under(&clone_dir.join("layer")).into_iter().filter(|(_, c)| c.contains(" mount ")).collect();
    let mounts = mounts_under(&clone_dir);
    match clone.status {
        CloneStatus::Ready => {
            assert_eq!(postmasters.len(), 1, "a ready clone has one server: {postmasters:?}");
            if driver == Driver::Cowfs {
                assert_eq!(mount_procs.len(), 1, "a ready cowfs clone has one mount process: {mount_procs:?}");
                assert_eq!(mounts.len(), 1, "a ready cowfs clone has one mount: {mounts:?}");
            }
            let marker = psql(clone.url(), "SELECT count(*) FROM marker");
            Outcome::Ready { reset: marker.is_err() }
        }
        CloneStatus::Stopped => {
            assert!(postmasters.is_empty(), "a stopped clone's server runs: {postmasters:?}");
            assert!(
                mount_procs.is_empty() && mounts.is_empty(),
                "a stopped clone is mounted: {mount_procs:?} {mounts:?}"
            );
            assert!(psql(url, "SELECT 1").is_err(), "a stopped clone answers SQL");
            Outcome::Stopped
        }
        other => panic!("after a restart, clone k is {other}: {clone:?}\n{}", d.log_tail(40)),
    }
}

fn listing(dir: &Path) -> Vec<String> {
    fs::read_dir(dir).map_or_else(
        |_| Vec::new(),
        |entries| entries.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect(),
    )
}

/// Runs `op` once to learn how long it takes here, then ten times with a kill -9 of the
/// server at moments spread over that time, checking the outcome after each restart.
fn kill_during(d: &mut Daemon, driver: Driver, op: Op) {
    fresh_clone(d);
    if op == Op::Revert {
        d.ok::<api::Checkpoint>(&["clone", "checkpoint", "k"]);
    }
    let started = Instant::now();
    d.ok::<serde_json::Value>(&op.args_on(fresh_clone(d).image.as_str()));
    let took = started.elapsed();
    let mut outcomes = Vec::new();
    let delays: Vec<u64> = [0.0, 0.05, 0.15, 0.3, 0.45, 0.6, 0.75, 0.9, 1.1, 1.5]
        .iter()
        .map(|f| (took.as_millis() as f64 * f) as u64)
        .collect();
    for delay_ms in delays {
        let clone = fresh_clone(d);
        // For a revert: something to go back to, and a row made after it (this run's own
        // value) that the revert takes away.
        let after = 1000 + delay_ms;
        if op == Op::Revert {
            d.ok::<api::Checkpoint>(&["clone", "checkpoint", "k"]);
            psql(clone.url(), &format!("INSERT INTO marker VALUES ({after})")).unwrap();
        }
        let args = op.args_on(clone.image.as_str());
        let mut cli = d.cli_command(&args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        d.kill9();
        let _ = cli.wait();
        d.restart();
        let outcome = check(d, driver, clone.url());
        match (op, outcome) {
            (Op::Reset, Outcome::Ready { .. }) => {}
            (Op::Stop, Outcome::Ready { reset: false } | Outcome::Stopped) => {}
            (Op::Delete, Outcome::Ready { reset: false } | Outcome::Gone) => {}
            // A checkpoint made or not, and the clone running on (its server paused no more).
            (Op::Checkpoint, Outcome::Ready { reset: false }) => {}
            (Op::Revert, Outcome::Ready { reset: false }) => {
                let rows = psql(clone.url(), &format!("SELECT count(*) FROM marker WHERE v = {after}")).unwrap();
                assert!(rows == "0" || rows == "1", "kill -9 {delay_ms} ms into a revert: {rows} rows made after it");
            }
            // On the old image as it was, or on the new one afresh; the server and the
            // clone's agent agree on which.
            (Op::Refresh, Outcome::Ready { reset }) => {
                let shown: api::Clone = d.ok(&["clone", "show", "k"]);
                let record: serde_json::Value =
                    serde_json::from_slice(&fs::read(d.data_dir.join("clones/k/clone.json")).unwrap()).unwrap();
                assert_eq!(record["image"], shown.image.as_str(), "kill -9 {delay_ms} ms into a refresh");
                assert!(record["refreshing_to"].is_null(), "kill -9 {delay_ms} ms into a refresh: {record}");
                let moved = shown.image != clone.image;
                assert!(!moved || reset, "kill -9 {delay_ms} ms into a refresh: moved, but its old rows are there");
            }
            (op, outcome) => panic!("kill -9 {delay_ms} ms into {op:?}: the clone ended {outcome:?}"),
        }
        outcomes.push((delay_ms, outcome));
    }
    eprintln!("{driver} {op:?} takes {} ms; after kill -9 at (ms, outcome): {outcomes:?}", took.as_millis());
    // The clone works on after all of that, with the image's data.
    let clone = fresh_clone(d);
    let branches = psql(clone.url(), "SELECT count(*) FROM pgbench_branches").unwrap();
    assert_eq!(branches, support::daemon::source_scale().to_string());
}

fn kill_during_every_operation(root: &Path, driver: Driver, ports: (u16, u16)) {
    let mut d = Daemon::start(&root.join("data"), ports);
    let image: api::Image = d.ok(&["image", "create", "img", "--from-dir", pgbench_source().to_str().unwrap()]);
    // A second image of the same data, for refreshes to move between.
    d.ok::<api::Image>(&["image", "create", "img2", "--from-dir", pgbench_source().to_str().unwrap()]);
    let image_dir = d.data_dir.join("images/img");
    let before = support::snapshot(&image_dir);
    let clone = fresh_clone(&d);
    assert_eq!(clone.driver, driver, "{clone:?}");
    for op in [Op::Reset, Op::Stop, Op::Delete, Op::Checkpoint, Op::Revert, Op::Refresh] {
        kill_during(&mut d, driver, op);
    }
    assert!(support::diff(&before, &support::snapshot(&image_dir)).is_none(), "the image changed");
    d.ok::<Operation>(&["clone", "rm", "k"]);
    d.ok::<Operation>(&["image", "rm", image.name.as_str()]);
    d.ok::<Operation>(&["image", "rm", "img2"]);
}

#[test]
fn kill_9_during_reset_stop_and_delete_with_cowfs() {
    support::require_fuse("kill_9_during_reset_stop_and_delete_with_cowfs");
    support::pg::require("kill_9_during_reset_stop_and_delete_with_cowfs");
    let work = tempfile::Builder::new().prefix("thinclone-crash-").tempdir().unwrap();
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).unwrap();
    kill_during_every_operation(work.path(), Driver::Cowfs, (7920, 7939));
}

#[test]
fn kill_9_during_reset_stop_and_delete_with_reflink() {
    support::require_fuse("kill_9_during_reset_stop_and_delete_with_reflink");
    support::pg::require("kill_9_during_reset_stop_and_delete_with_reflink");
    let work = tempfile::Builder::new().prefix("thinclone-crash-xfs-").tempdir_in("/var/tmp").unwrap();
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let xfs = support::LoopFs::new("xfs", work.path(), 4 << 30);
    kill_during_every_operation(&xfs.mountpoint, Driver::Reflink, (7940, 7959));
}
