//! The reflink driver on real copy-on-write filesystems: a loop-mounted XFS with reflink=1
//! and a loop-mounted btrfs, each holding a daemon's data directory. Clones made there
//! without `--driver` are reflink copies; on ext4 they are cowfs.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use api::{Driver, Operation};
use support::daemon::{psql, Daemon, UrlOf};
use support::LoopFs;

fn checksums(dir: &Path) -> std::collections::BTreeMap<PathBuf, support::Entry> {
    support::snapshot(dir)
}

/// Two reflink clones of the shared pgbench source on the filesystem at `root`.
fn reflink_clones_work(root: &Path, ports: (u16, u16)) {
    let data = root.join("data");
    let daemon = Daemon::start(&data, ports);
    let source = support::daemon::pgbench_source();
    let image: api::Image = daemon.ok(&["image", "create", "prod", "--from-dir", source.to_str().unwrap()]);
    assert_eq!(image.status, api::ImageStatus::Ready, "{image:?}");
    let before = checksums(&data.join("images/prod"));

    let a: api::Clone = daemon.ok(&["clone", "create", "a", "--image", "prod"]);
    let b: api::Clone = daemon.ok(&["clone", "create", "b", "--image", "prod"]);
    for clone in [&a, &b] {
        assert_eq!(clone.driver, Driver::Reflink, "auto-selection on {}: {clone:?}", root.display());
    }
    let rows = (100_000 * support::daemon::source_scale()).to_string();
    let count = "SELECT count(*) FROM pgbench_accounts";
    assert_eq!(psql(a.url(), count).unwrap(), rows);
    assert_eq!(psql(b.url(), count).unwrap(), rows);

    // A fresh clone's own bytes: what its start wrote, not the image it shares.
    let fresh = a.stored_bytes;
    eprintln!("{}: a fresh reflink clone holds {} KiB of its own", root.display(), fresh >> 10);
    assert!(fresh < 1 << 20, "a fresh reflink clone holds {fresh} exclusive bytes");

    // Writes in one clone are invisible in the other; reset brings the image back.
    psql(a.url(), "DELETE FROM pgbench_accounts WHERE aid <= 5000").unwrap();
    psql(a.url(), "CHECKPOINT").unwrap();
    assert_eq!(psql(b.url(), count).unwrap(), rows);
    let reset: api::Clone = daemon.ok(&["clone", "reset", "a"]);
    assert_eq!((reset.port, reset.url()), (a.port, a.url()));
    assert_eq!(psql(a.url(), count).unwrap(), rows);

    daemon.ok::<Operation>(&["clone", "rm", "a"]);
    daemon.ok::<Operation>(&["clone", "rm", "b"]);
    assert!(support::diff(&before, &checksums(&data.join("images/prod"))).is_none(), "the image changed");
    daemon.ok::<Operation>(&["image", "rm", "prod"]);
}

#[test]
fn reflink_clones_on_xfs() {
    support::require_fuse("reflink_clones_on_xfs");
    support::pg::require("reflink_clones_on_xfs");
    let work = tempfile::Builder::new().prefix("thinclone-xfs-").tempdir_in("/var/tmp").unwrap();
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let xfs = LoopFs::new("xfs", work.path(), 4 << 30);
    reflink_clones_work(&xfs.mountpoint, (7850, 7869));
}

#[test]
fn reflink_clones_on_btrfs() {
    support::require_fuse("reflink_clones_on_btrfs");
    support::pg::require("reflink_clones_on_btrfs");
    let work = tempfile::Builder::new().prefix("thinclone-btrfs-").tempdir_in("/var/tmp").unwrap();
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let btrfs = LoopFs::new("btrfs", work.path(), 4 << 30);
    reflink_clones_work(&btrfs.mountpoint, (7870, 7889));
}

#[test]
fn ext4_gets_cowfs_and_reflink_there_is_a_clear_error() {
    support::require_fuse("ext4_gets_cowfs");
    support::pg::require("ext4_gets_cowfs");
    let work = tempfile::Builder::new().prefix("thinclone-ext4-").tempdir_in("/var/tmp").unwrap();
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let daemon = Daemon::start(&work.path().join("data"), (7890, 7899));
    let source = support::daemon::pgbench_source();
    daemon.ok::<api::Image>(&["image", "create", "prod", "--from-dir", source.to_str().unwrap()]);
    let clone: api::Clone = daemon.ok(&["clone", "create", "c", "--image", "prod"]);
    assert_eq!(clone.driver, Driver::Cowfs, "{clone:?}");
    // Asking for reflink where the filesystem cannot share blocks fails clearly, and leaves
    // nothing behind.
    let err =
        daemon.cli::<api::Clone>(&["clone", "create", "r", "--image", "prod", "--driver", "reflink"]).unwrap_err();
    assert!(
        err.contains("the reflink driver is not available on agent local") && err.contains("--driver cowfs"),
        "{err}"
    );
    assert_eq!(daemon.ok::<Vec<api::Clone>>(&["clone", "list"]).len(), 1);
    assert!(!work.path().join("data/clones/r").exists(), "a half-made reflink clone was left behind");
    daemon.ok::<Operation>(&["clone", "rm", "c"]);
    daemon.ok::<Operation>(&["image", "rm", "prod"]);
}
