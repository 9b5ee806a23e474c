//! Checkpoints and revert (issue 13, acceptance 1), through the CLI of a real daemon, on a
//! cowfs clone (ext4) and on a reflink clone (a loop-mounted XFS): a table made, a
//! checkpoint, the table changed and dropped, a revert, and the table and its rows are back.
//! A psql session opened before the checkpoint keeps working across it (the server is
//! paused, not restarted); the revert keeps the clone's port and credentials.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use api::{Checkpoint, Clone, Driver, Operation};
use support::daemon::{psql, Daemon, PsqlSession, UrlOf};
use support::LoopFs;

fn checkpoint_and_revert(data: &Path, ports: (u16, u16), driver: Driver) {
    let daemon = Daemon::start(data, ports);
    let source = support::daemon::pgbench_source();
    let image: api::Image = daemon.ok(&["image", "create", "prod", "--from-dir", source.to_str().unwrap()]);
    let before = support::snapshot(&data.join("images/prod"));
    let c: Clone = daemon.ok(&["clone", "create", "c", "--image", "prod", "--driver", driver.as_str()]);
    assert_eq!(c.driver, driver);

    // A checkpoint of a busy clone: a session keeps its connection, and a transaction
    // begun before it commits after it.
    let mut session = PsqlSession::open(c.url());
    session.query("CREATE TABLE notes (id int PRIMARY KEY, body text)");
    session.query("INSERT INTO notes SELECT g, 'row ' || g FROM generate_series(1, 1000) g");
    session.query("BEGIN");
    session.query("INSERT INTO notes VALUES (1001, 'in a transaction open across the checkpoint')");
    let cp1: Checkpoint = daemon.ok(&["clone", "checkpoint", "c", "-m", "before the migration"]);
    assert_eq!((cp1.name.as_str(), cp1.message.as_deref()), ("cp1", Some("before the migration")));
    session.query("COMMIT");
    assert_eq!(session.query("SELECT count(*) FROM notes"), "1001", "the session lived through the checkpoint");

    // The migration: change the table, drop it, make another, change pgbench's rows.
    session.query("UPDATE notes SET body = 'changed'");
    session.query("DROP TABLE notes");
    session.query("CREATE TABLE made_after (x int)");
    session.query("UPDATE pgbench_accounts SET abalance = 7 WHERE aid <= 20000");
    session.query("CHECKPOINT");
    drop(session);
    let listed: Vec<Checkpoint> = daemon.ok(&["clone", "checkpoints", "c"]);
    assert_eq!(listed.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["cp1"]);
    eprintln!("{driver}: checkpoint cp1 keeps {} KiB", listed[0].stored_bytes >> 10);
    assert!(listed[0].stored_bytes > 0, "a checkpoint of a changed clone keeps something: {listed:?}");

    // Back to the checkpoint: the table and its rows, not the later changes (the open
    // transaction had not committed when the checkpoint was made), same port and URL.
    let reverted: Clone = daemon.ok(&["clone", "revert", "c"]);
    assert_eq!((reverted.port, reverted.url()), (c.port, c.url()), "same port and credentials");
    assert_eq!(reverted.status, api::CloneStatus::Ready);
    assert_eq!(psql(c.url(), "SELECT count(*) FROM notes WHERE body LIKE 'row %'").unwrap(), "1000");
    assert_eq!(psql(c.url(), "SELECT count(*) FROM notes").unwrap(), "1000");
    assert_eq!(psql(c.url(), "SELECT to_regclass('made_after') IS NULL").unwrap(), "t");
    assert_eq!(psql(c.url(), "SELECT count(*) FROM pgbench_accounts WHERE abalance = 7").unwrap(), "0");

    // A second checkpoint, named; going back to the first removes it.
    psql(c.url(), "INSERT INTO notes VALUES (2000, 'after cp1')").unwrap();
    let named: Checkpoint = daemon.ok(&["clone", "checkpoint", "c", "--name", "second"]);
    assert_eq!(named.name.as_str(), "second");
    psql(c.url(), "DELETE FROM notes").unwrap();
    daemon.ok::<Clone>(&["clone", "revert", "c", "--to", "second"]);
    assert_eq!(psql(c.url(), "SELECT count(*) FROM notes").unwrap(), "1001");
    daemon.ok::<Clone>(&["clone", "revert", "c", "--to", "cp1"]);
    assert_eq!(psql(c.url(), "SELECT count(*) FROM notes").unwrap(), "1000");
    let listed: Vec<Checkpoint> = daemon.ok(&["clone", "checkpoints", "c"]);
    assert_eq!(listed.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["cp1"], "later ones went");

    // A stopped clone's checkpoint is made without a server; its revert leaves it stopped.
    daemon.ok::<Clone>(&["clone", "stop", "c"]);
    let offline: Checkpoint = daemon.ok(&["clone", "checkpoint", "c"]);
    assert_eq!(offline.name.as_str(), "cp2");
    daemon.ok::<Clone>(&["clone", "start", "c"]);
    psql(c.url(), "DELETE FROM notes WHERE id <= 500").unwrap();
    let back: Clone = daemon.ok(&["clone", "revert", "c", "--to", "cp2"]);
    assert_eq!(back.status, api::CloneStatus::Ready);
    assert_eq!(psql(c.url(), "SELECT count(*) FROM notes").unwrap(), "1000");

    // Bad input: a clear error, nothing changed.
    for (args, expected) in [
        (&["clone", "revert", "c", "--to", "nope"][..], "no checkpoint named nope"),
        (&["clone", "checkpoint", "c", "--name", "cp1"][..], "already has a checkpoint named cp1"),
        (&["clone", "checkpoint", "rm", "c", "nope"][..], "no checkpoint named nope"),
        (&["clone", "checkpoints", "nope"][..], "nope"),
    ] {
        let err = daemon.cli::<serde_json::Value>(args).unwrap_err();
        assert!(err.contains(expected), "{args:?}: {err}");
    }

    branches_and_snapshot_views(&daemon, &c, driver);

    // Removing checkpoints; with none left, a revert has nowhere to go.
    for cp in ["cp1", "cp2", "cp3"] {
        daemon.ok::<Operation>(&["clone", "checkpoint", "rm", "c", cp]);
    }
    let listed: Vec<Checkpoint> = daemon.ok(&["clone", "checkpoints", "c"]);
    assert!(listed.is_empty(), "{listed:?}");
    let err = daemon.cli::<serde_json::Value>(&["clone", "revert", "c"]).unwrap_err();
    assert!(err.contains("has no checkpoint to go back to"), "{err}");
    assert_eq!(psql(c.url(), "SELECT count(*) FROM notes").unwrap(), "980", "a refused revert changes nothing");

    daemon.ok::<Operation>(&["clone", "rm", "c"]);
    assert!(support::diff(&before, &support::snapshot(&data.join("images/prod"))).is_none(), "the image changed");
    daemon.ok::<Operation>(&["image", "rm", image.name.as_str()]);
}

/// Acceptance 2 and 3: a branch of a checkpoint, and a snapshot view, beside clone `c` (which
/// has checkpoints cp1 and cp2, and 1000 rows in `notes`).
fn branches_and_snapshot_views(daemon: &Daemon, c: &Clone, driver: Driver) {
    let count = "SELECT count(*) FROM notes";
    let br: Clone = daemon.ok(&["clone", "create", "br", "--from", "c@cp1"]);
    assert_eq!((br.driver, br.origin.as_deref(), br.read_only), (driver, Some("c@cp1"), false));
    assert_ne!(br.port, c.port);
    assert_eq!(psql(br.url(), count).unwrap(), "1000", "the branch starts at the checkpoint");
    psql(br.url(), "INSERT INTO notes SELECT g, 'branch' FROM generate_series(5001, 5100) g").unwrap();
    psql(c.url(), "DELETE FROM notes WHERE id <= 10").unwrap();
    assert_eq!(psql(br.url(), count).unwrap(), "1100", "the origin's writes stay out of the branch");
    assert_eq!(psql(c.url(), count).unwrap(), "990", "the branch's writes stay out of the origin");
    if driver == Driver::Cowfs {
        // The branch reads the origin's frozen layers: they stay while it exists.
        for args in [&["clone", "rm", "c"][..], &["clone", "reset", "c"][..]] {
            let err = daemon.cli::<serde_json::Value>(args).unwrap_err();
            assert!(err.contains("are built on its checkpoints") && err.contains("br (from c@cp1)"), "{args:?}: {err}");
        }
    }

    // A snapshot view of cp1 beside the live clone: it reads the checkpoint's rows while the
    // clone changes, and its server refuses writes, whoever asks.
    let sv: Clone = daemon.ok(&["clone", "snapshot", "sv", "--from", "c@cp1", "--read-only"]);
    assert!(sv.read_only, "{sv:?}");
    assert_eq!(psql(sv.url(), count).unwrap(), "1000");
    psql(c.url(), "DELETE FROM notes WHERE id <= 20").unwrap();
    assert_eq!(psql(sv.url(), count).unwrap(), "1000");
    for write in [
        "INSERT INTO notes VALUES (9999, 'no')",
        "SET default_transaction_read_only = off; INSERT INTO notes VALUES (9999, 'no')",
        "CREATE TABLE nope (x int)",
    ] {
        let err = psql(sv.url(), write).unwrap_err();
        assert!(err.contains("read-only transaction") || err.contains("during recovery"), "{write}: {err}");
    }
    // It survives a restart as a read-only server.
    daemon.ok::<Clone>(&["clone", "stop", "sv"]);
    daemon.ok::<Clone>(&["clone", "start", "sv"]);
    assert!(psql(sv.url(), "INSERT INTO notes VALUES (9999, 'no')").unwrap_err().contains("read-only transaction"));
    assert_eq!(psql(sv.url(), count).unwrap(), "1000");

    // Without @CHECKPOINT, a branch starts from the clone's state now (checkpoint cp3).
    let now: Clone = daemon.ok(&["clone", "create", "br2", "--from", "c"]);
    assert_eq!(now.origin.as_deref(), Some("c@cp3"));
    assert_eq!(psql(now.url(), count).unwrap(), "980");
    let listed: Vec<Checkpoint> = daemon.ok(&["clone", "checkpoints", "c"]);
    assert_eq!(listed.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["cp1", "cp2", "cp3"]);

    for name in ["br", "br2", "sv"] {
        daemon.ok::<Operation>(&["clone", "rm", name]);
    }
}

#[test]
fn checkpoint_and_revert_on_cowfs() {
    support::require_fuse("checkpoint_and_revert_on_cowfs");
    support::pg::require("checkpoint_and_revert_on_cowfs");
    let work = tempfile::Builder::new().prefix("thinclone-checkpoints-").tempdir_in("/var/tmp").unwrap();
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).unwrap();
    checkpoint_and_revert(&work.path().join("data"), (8300, 8319), Driver::Cowfs);
}

#[test]
fn checkpoint_and_revert_on_reflink_xfs() {
    support::require_fuse("checkpoint_and_revert_on_reflink_xfs");
    support::pg::require("checkpoint_and_revert_on_reflink_xfs");
    let work = tempfile::Builder::new().prefix("thinclone-checkpoints-xfs-").tempdir_in("/var/tmp").unwrap();
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let xfs = LoopFs::new("xfs", work.path(), 4 << 30);
    checkpoint_and_revert(&xfs.mountpoint.join("data"), (8320, 8339), Driver::Reflink);
}
