//! The reflink driver on real copy-on-write filesystems: a loop-mounted XFS with reflink=1
//! and a loop-mounted btrfs, each holding a daemon's data directory. Clones made there
//! without `--driver` are reflink copies; on ext4 they are cowfs.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::daemon::{psql, Daemon};

/// A filesystem image file mounted on a loop device, unmounted when dropped.
struct LoopFs {
    mountpoint: PathBuf,
}

impl LoopFs {
    /// Makes and mounts a 4 GiB (sparse) filesystem; `None` when its mkfs is missing here.
    fn new(kind: &str, work: &Path) -> Option<LoopFs> {
        let mkfs = format!("mkfs.{kind}");
        if !support::which(&mkfs)
            && !Path::new("/usr/sbin").join(&mkfs).exists()
            && !Path::new("/sbin").join(&mkfs).exists()
        {
            assert!(std::env::var_os("CI").is_none(), "CI must have {mkfs} (scripts/install installs it)");
            eprintln!("skipped {kind}: {mkfs} is not installed");
            return None;
        }
        let image = work.join(format!("{kind}.img"));
        fs::File::create(&image).unwrap().set_len(4 << 30).unwrap();
        let args: &[&str] = if kind == "xfs" { &["-q", "-m", "reflink=1"] } else { &["-q"] };
        let out = Command::new(&mkfs).args(args).arg(&image).output().unwrap();
        assert!(out.status.success(), "{mkfs}: {}", String::from_utf8_lossy(&out.stderr));
        let mountpoint = work.join(kind);
        fs::create_dir(&mountpoint).unwrap();
        let out = Command::new("mount").args(["-o", "loop"]).arg(&image).arg(&mountpoint).output().unwrap();
        assert!(out.status.success(), "mount {kind}: {}", String::from_utf8_lossy(&out.stderr));
        fs::set_permissions(&mountpoint, fs::Permissions::from_mode(0o755)).unwrap();
        Some(LoopFs { mountpoint })
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mountpoint).status();
    }
}

fn checksums(dir: &Path) -> std::collections::BTreeMap<PathBuf, support::Entry> {
    support::snapshot(dir)
}

/// Two reflink clones of the shared pgbench source on the filesystem at `root`.
fn reflink_clones_work(root: &Path, ports: (u16, u16)) {
    let data = root.join("data");
    let daemon = Daemon::start(&data, ports);
    let source = support::daemon::pgbench_source();
    let image = daemon.ok(&["image", "create", "prod", "--from-dir", source.to_str().unwrap()]);
    assert_eq!(image["status"], "ready", "{image}");
    let before = checksums(&data.join("images/prod"));

    let a = daemon.ok(&["clone", "create", "a", "--image", "prod"]);
    let b = daemon.ok(&["clone", "create", "b", "--image", "prod"]);
    for clone in [&a, &b] {
        assert_eq!(clone["driver"], "reflink", "auto-selection on {}: {clone}", root.display());
    }
    let (url_a, url_b) = (a["url"].as_str().unwrap(), b["url"].as_str().unwrap());
    let rows = (100_000 * support::daemon::source_scale()).to_string();
    let count = "SELECT count(*) FROM pgbench_accounts";
    assert_eq!(psql(url_a, count).unwrap(), rows);
    assert_eq!(psql(url_b, count).unwrap(), rows);

    // A fresh clone's own bytes: what its start wrote, not the image it shares.
    let fresh = daemon.ok(&["clone", "show", "a"])["layer_bytes"].as_u64().unwrap();
    eprintln!("{}: a fresh reflink clone holds {} KiB of its own", root.display(), fresh >> 10);
    assert!(fresh < 1 << 20, "a fresh reflink clone holds {fresh} exclusive bytes");

    // Writes in one clone are invisible in the other; reset brings the image back.
    psql(url_a, "DELETE FROM pgbench_accounts WHERE aid <= 5000").unwrap();
    assert_eq!(psql(url_b, count).unwrap(), rows);
    let changed = daemon.ok(&["clone", "show", "a"])["layer_bytes"].as_u64().unwrap();
    assert!(changed > fresh, "the change did not show in the exclusive bytes ({fresh} -> {changed})");
    let reset = daemon.ok(&["clone", "reset", "a"]);
    assert_eq!((reset["port"].clone(), reset["url"].clone()), (a["port"].clone(), a["url"].clone()));
    assert_eq!(psql(url_a, count).unwrap(), rows);

    daemon.ok(&["clone", "rm", "a"]);
    daemon.ok(&["clone", "rm", "b"]);
    assert!(support::diff(&before, &checksums(&data.join("images/prod"))).is_none(), "the image changed");
    daemon.ok(&["image", "rm", "prod"]);
}

#[test]
fn reflink_clones_on_xfs() {
    if !support::fuse_available("reflink_clones_on_xfs") || !support::pg::available("reflink_clones_on_xfs") {
        return;
    }
    let work = tempfile::Builder::new().prefix("thinclone-xfs-").tempdir_in("/var/tmp").unwrap();
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let Some(xfs) = LoopFs::new("xfs", work.path()) else { return };
    reflink_clones_work(&xfs.mountpoint, (7850, 7869));
}

#[test]
fn reflink_clones_on_btrfs() {
    if !support::fuse_available("reflink_clones_on_btrfs") || !support::pg::available("reflink_clones_on_btrfs") {
        return;
    }
    let work = tempfile::Builder::new().prefix("thinclone-btrfs-").tempdir_in("/var/tmp").unwrap();
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let Some(btrfs) = LoopFs::new("btrfs", work.path()) else { return };
    reflink_clones_work(&btrfs.mountpoint, (7870, 7889));
}

#[test]
fn ext4_gets_cowfs_and_reflink_across_filesystems_is_a_clear_error() {
    if !support::fuse_available("ext4_gets_cowfs") || !support::pg::available("ext4_gets_cowfs") {
        return;
    }
    let work = tempfile::Builder::new().prefix("thinclone-ext4-").tempdir_in("/var/tmp").unwrap();
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let daemon = Daemon::start(&work.path().join("data"), (7890, 7899));
    let source = support::daemon::pgbench_source();
    daemon.ok(&["image", "create", "prod", "--from-dir", source.to_str().unwrap()]);
    let clone = daemon.ok(&["clone", "create", "c", "--image", "prod"]);
    assert_eq!(clone["driver"], "cowfs", "{clone}");
    // Asking for reflink where the filesystem cannot share blocks fails clearly, and leaves
    // nothing behind.
    let err = daemon.cli(&["clone", "create", "r", "--image", "prod", "--driver", "reflink"]).unwrap_err();
    assert!(err.contains("reflink") || err.contains("clone"), "{err}");
    let clones = daemon.ok(&["clone", "list"]);
    assert_eq!(clones.as_array().unwrap().len(), 1, "{clones}");
    assert!(!work.path().join("data/clones/r").exists(), "a half-made reflink clone was left behind");
    daemon.ok(&["clone", "rm", "c"]);
    daemon.ok(&["image", "rm", "prod"]);
}
