//! The peers: ways other tools make a writable copy of a database, measured beside
//! thinclone's clones in items 1 and 2 (issue 12).
//!
//! - [`Overlay`]: overlayfs, the "no special filesystem" approach. The scale's image (on the
//!   work directory's filesystem) is the lowerdir, each clone gets a fresh upperdir and
//!   workdir there, and a server starts on the merged directory. overlayfs copies a whole
//!   file up into the upperdir the first time it is opened for writing, and PostgreSQL opens
//!   relation files read-write: a relation touched is a relation copied.
//! - [`BtrfsSnapshot`]: the image as a btrfs subvolume on a loop device, a clone a `btrfs
//!   subvolume snapshot` of it and a server start.
//! - [`Pg18Clone`]: PostgreSQL 18's `CREATE DATABASE … STRATEGY FILE_COPY` with
//!   `file_copy_method = clone` on XFS (files cloned with `copy_file_range`, which XFS
//!   serves with reflinks), in a PostgreSQL 18 cluster loaded with the same `pgbench -i`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};

use super::methods::{CloneMethod, Made, MadeClone};
use super::Suite;
use crate::bench::exec::Cmd;
use crate::bench::host::{self, OverlayMount};
use crate::bench::pg::HandServer;
use crate::bench::progress::seconds_since;

/// The keys of the peers, which items 1 and 2 run when `--methods` names them.
pub const KEYS: [&str; 3] = ["overlayfs", "btrfs_snapshot", "pg18_clone"];

/// overlayfs mount options: `metacopy=on`, so that giving the merged directory to the
/// postgres user copies up the files' metadata and not their data (without it, that
/// `chown -R` would copy every file).
pub const OVERLAY_OPTIONS: &str = "metacopy=on";

// ---------------------------------------------------------------- overlayfs

/// An overlayfs clone of the image on the work directory's filesystem.
pub struct Overlay;

impl CloneMethod for Overlay {
    fn key(&self) -> &'static str {
        "overlayfs"
    }

    fn label(&self) -> &'static str {
        "overlayfs (image as lowerdir, metacopy=on) + postgres start"
    }

    fn disk_what(&self) -> &'static str {
        "du of the clone's upperdir"
    }

    fn copies_data(&self) -> bool {
        false
    }

    fn make(&self, s: &Suite, scale: u32, name: &str) -> Result<Made> {
        let lower = s.ext4()?.image_dir(&format!("img-{scale}"));
        let base = s.run.data.join("overlay").join(name);
        let (upper, work, merged) = (base.join("upper"), base.join("work"), base.join("merged"));
        for d in [&upper, &work, &merged] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        // The merged directory's root takes the upperdir's mode: a data directory's.
        std::fs::set_permissions(&upper, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        let t0 = Instant::now();
        let mount = OverlayMount::mount(&s.run.exec, &lower, &upper, &work, &merged, OVERLAY_OPTIONS)?;
        let user = &s.run.pg.user;
        s.run.exec.note(&format!("chown -R {}: {}   # in-process", user.name, merged.display()));
        sys::tree::chown(&merged, user.uid, user.gid)
            .with_context(|| format!("giving {} to {}", merged.display(), user.name))?;
        let (server, conn) = s.start_hand_clone(&merged, "overlay")?;
        let ready_s = seconds_since(t0);
        Ok(Made::new(
            ready_s,
            conn,
            None,
            Box::new(OverlayClone { server: Some(server), mount: Some(mount), base, upper }),
        ))
    }
}

struct OverlayClone {
    server: Option<HandServer>,
    mount: Option<OverlayMount>,
    base: PathBuf,
    upper: PathBuf,
}

impl MadeClone for OverlayClone {
    fn disk_bytes(&self, _s: &Suite) -> Result<u64> {
        host::syncfs(&self.upper)?;
        Ok(host::du_bytes(&[&self.upper]))
    }

    fn remove(mut self: Box<Self>, _s: &Suite) -> Result<()> {
        if let Some(server) = self.server.take() {
            server.stop()?;
        }
        if let Some(mount) = self.mount.take() {
            mount.unmount()?;
        }
        sys::tree::remove(&self.base)?;
        Ok(())
    }
}

// ---------------------------------------------------------------- btrfs

/// A btrfs subvolume snapshot of the image's subvolume, and a server started on it.
pub struct BtrfsSnapshot;

impl CloneMethod for BtrfsSnapshot {
    fn key(&self) -> &'static str {
        "btrfs_snapshot"
    }

    fn label(&self) -> &'static str {
        "btrfs subvolume snapshot + postgres start (btrfs)"
    }

    fn disk_what(&self) -> &'static str {
        "exclusive bytes of the snapshot (btrfs filesystem du -s, after a sync)"
    }

    fn copies_data(&self) -> bool {
        false
    }

    fn make(&self, s: &Suite, scale: u32, name: &str) -> Result<Made> {
        let btrfs = s.btrfs()?;
        let (image, dir) = (btrfs.image_dir(scale), btrfs.clone_dir(name));
        std::fs::create_dir_all(dir.parent().expect("a parent"))?;
        let t0 = Instant::now();
        s.run.exec.run(&Cmd::new("btrfs").args(["subvolume", "snapshot"]).arg(&image).arg(&dir))?;
        let (server, conn) = s.start_hand_clone(&dir, "btrfs")?;
        let ready_s = seconds_since(t0);
        Ok(Made::new(ready_s, conn, None, Box::new(Snapshot { server: Some(server), dir })))
    }
}

/// A subvolume on the btrfs mount with a hand-started server on it (a snapshot, or item
/// 6's full copy).
pub struct Snapshot {
    pub server: Option<HandServer>,
    pub dir: PathBuf,
}

impl MadeClone for Snapshot {
    fn disk_bytes(&self, s: &Suite) -> Result<u64> {
        host::btrfs_exclusive_bytes(&s.run.exec, &self.dir)
    }

    fn remove(mut self: Box<Self>, s: &Suite) -> Result<()> {
        if let Some(server) = self.server.take() {
            server.stop()?;
        }
        s.run.exec.run(&Cmd::new("btrfs").args(["subvolume", "delete", "-c"]).arg(&self.dir))?;
        Ok(())
    }
}

// ---------------------------------------------------------------- PostgreSQL 18

/// `SET file_copy_method = clone; CREATE DATABASE … TEMPLATE bench STRATEGY FILE_COPY` in
/// the PostgreSQL 18 cluster on XFS.
pub struct Pg18Clone;

impl CloneMethod for Pg18Clone {
    fn key(&self) -> &'static str {
        "pg18_clone"
    }

    fn label(&self) -> &'static str {
        "PostgreSQL 18 (not 15): CREATE DATABASE … STRATEGY FILE_COPY, file_copy_method = clone (XFS)"
    }

    fn disk_what(&self) -> &'static str {
        "growth of the XFS filesystem's used space (df), less the growth of the cluster's pg_wal"
    }

    fn copies_data(&self) -> bool {
        false
    }

    fn make(&self, s: &Suite, _scale: u32, name: &str) -> Result<Made> {
        let xfs = s.xfs()?;
        let cluster = xfs.pg18.as_ref().context("the PostgreSQL 18 cluster is not running")?;
        let used_before = host::fs_used_bytes(&xfs.fs.mount_point)?;
        let wal_before = host::du_bytes(&[&cluster.wal_dir()]);
        let create = cluster
            .conn("postgres")
            .apply(Cmd::new(s.run.pg.program("psql")).args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"]))
            .args(["-c", "SET file_copy_method = clone"])
            .arg("-c")
            .arg(format!("CREATE DATABASE {name} TEMPLATE bench STRATEGY FILE_COPY"));
        let t0 = Instant::now();
        s.run.exec.run(&create)?;
        let conn = cluster.conn(name);
        s.wait_ready(&conn).with_context(|| format!("PostgreSQL 18 database {name}"))?;
        let ready_s = seconds_since(t0);
        Ok(Made::new(ready_s, conn, None, Box::new(Pg18Database { name: name.to_owned(), used_before, wal_before })))
    }
}

struct Pg18Database {
    name: String,
    used_before: u64,
    wal_before: u64,
}

impl MadeClone for Pg18Database {
    fn disk_bytes(&self, s: &Suite) -> Result<u64> {
        let xfs = s.xfs()?;
        let cluster = xfs.pg18.as_ref().context("the PostgreSQL 18 cluster is not running")?;
        let used = host::fs_used_bytes(&xfs.fs.mount_point)?;
        let wal = host::du_bytes(&[&cluster.wal_dir()]);
        let wal_growth = wal.saturating_sub(self.wal_before);
        Ok(used.saturating_sub(self.used_before).saturating_sub(wal_growth))
    }

    fn remove(self: Box<Self>, s: &Suite) -> Result<()> {
        let cluster = s.xfs()?.pg18.as_ref().context("the PostgreSQL 18 cluster is not running")?;
        s.psql(&cluster.conn("postgres"), &format!("DROP DATABASE {}", self.name)).map(drop)
    }
}
