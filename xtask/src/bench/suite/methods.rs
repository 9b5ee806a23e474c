//! The ways of making a clone that item 1 times and item 2 weighs: thinclone with each of
//! its drivers, and the baselines (a copy of the image plus a server start, a reflink copy
//! plus a start, `CREATE DATABASE … TEMPLATE`). Each is timed from the command to the first
//! successful `SELECT 1` on the new clone, and knows how to count the disk it adds and how
//! to remove it.
//!
//! The peers of issue 12 (overlayfs, a btrfs snapshot, PostgreSQL 18's clone strategy) are
//! in [`super::peers`]; a new method is one more [`CloneMethod`] in [`all`].

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use api::Driver;

use super::{peers, Suite};
use crate::bench::exec::Cmd;
use crate::bench::host;
use crate::bench::pg::{url_with_db, Conn, HandServer};
use crate::bench::progress::seconds_since;
use crate::bench::thinclone::Daemon;

/// A way of making a clone of a scale's image.
pub trait CloneMethod {
    /// A short key, used in options and JSON (`cowfs`, `cp_start`, …).
    fn key(&self) -> &'static str;
    /// Its name in tables.
    fn label(&self) -> &'static str;
    /// What its disk figure counts.
    fn disk_what(&self) -> &'static str;
    /// Whether it copies the data (for the estimate of the run time).
    fn copies_data(&self) -> bool;
    /// Makes a clone named `name` of the image of `scale`, timed from the command to the
    /// first successful `SELECT 1` on it (database `bench`).
    fn make(&self, s: &Suite, scale: u32, name: &str) -> Result<Made>;
}

/// A clone made by a method.
pub struct Made {
    /// Seconds from the command to the first successful `SELECT 1`.
    pub ready_s: f64,
    /// Database `bench` on the clone.
    pub conn: Conn,
    /// The daemon's `stored_bytes` of a thinclone clone, when it had measured it.
    pub stored_bytes: Option<u64>,
    clone: Box<dyn MadeClone>,
}

impl Made {
    pub fn new(ready_s: f64, conn: Conn, stored_bytes: Option<u64>, clone: Box<dyn MadeClone>) -> Made {
        Made { ready_s, conn, stored_bytes, clone }
    }

    /// The bytes the clone adds (see [`CloneMethod::disk_what`]).
    pub fn disk_bytes(&self, s: &Suite) -> Result<u64> {
        self.clone.disk_bytes(s)
    }

    /// The daemon's `stored_bytes`, as measured after `since`; `None` for a clone the daemon
    /// does not know.
    pub fn stored_bytes_after(&self, s: &Suite, since: api::Timestamp) -> Result<Option<u64>> {
        self.clone.stored_bytes_after(s, since)
    }

    /// Removes it, then syncs, so that the next measurement does not pay for this one's
    /// writeback.
    pub fn remove(self, s: &Suite) -> Result<()> {
        self.clone.remove(s)?;
        host::sync_all();
        Ok(())
    }
}

/// What a method needs to measure and remove the clone it made.
pub trait MadeClone {
    fn disk_bytes(&self, s: &Suite) -> Result<u64>;
    fn stored_bytes_after(&self, _s: &Suite, _since: api::Timestamp) -> Result<Option<u64>> {
        Ok(None)
    }
    fn remove(self: Box<Self>, s: &Suite) -> Result<()>;
}

/// Every method, in the order item 1 interleaves them.
pub fn all() -> Vec<Box<dyn CloneMethod>> {
    vec![
        Box::new(Thinclone(Driver::Cowfs)),
        Box::new(Thinclone(Driver::Copy)),
        Box::new(Thinclone(Driver::Reflink)),
        Box::new(CopyAndStart { reflink: false }),
        Box::new(CopyAndStart { reflink: true }),
        Box::new(CreateDatabase),
        Box::new(peers::Overlay),
        Box::new(peers::BtrfsSnapshot),
        Box::new(peers::Pg18Clone),
    ]
}

pub fn keys() -> Vec<&'static str> {
    all().iter().map(|m| m.key()).collect()
}

pub fn by_key(key: &str) -> Option<Box<dyn CloneMethod>> {
    all().into_iter().find(|m| m.key() == key)
}

pub fn copies_data(key: &str) -> bool {
    by_key(key).is_some_and(|m| m.copies_data())
}

// ---------------------------------------------------------------- thinclone

/// A thinclone clone with a driver: reflink clones on the daemon on XFS, the others on the
/// daemon on the work directory's filesystem.
pub struct Thinclone(pub Driver);

impl Thinclone {
    fn daemon<'s>(&self, s: &'s Suite) -> Result<&'s Daemon> {
        match self.0 {
            Driver::Reflink => Ok(&s.xfs()?.daemon),
            _ => s.ext4(),
        }
    }
}

impl CloneMethod for Thinclone {
    fn key(&self) -> &'static str {
        self.0.as_str()
    }

    fn label(&self) -> &'static str {
        match self.0 {
            Driver::Cowfs => "thinclone, cowfs driver",
            Driver::Copy => "thinclone, copy driver",
            Driver::Reflink => "thinclone, reflink driver (XFS)",
        }
    }

    fn disk_what(&self) -> &'static str {
        match self.0 {
            Driver::Cowfs => "du of the clone's layer directory and its WAL beside it (native/)",
            Driver::Copy => "du of the clone's data directory",
            Driver::Reflink => "growth of the XFS filesystem's used space (df)",
        }
    }

    fn copies_data(&self) -> bool {
        self.0 == Driver::Copy
    }

    fn make(&self, s: &Suite, scale: u32, name: &str) -> Result<Made> {
        let daemon = self.daemon(s)?;
        let used_before = match self.0 {
            Driver::Reflink => Some(host::fs_used_bytes(&s.xfs()?.fs.mount_point)?),
            _ => None,
        };
        let t0 = Instant::now();
        let clone = daemon.create_clone(name, &format!("img-{scale}"), self.0)?;
        let conn = Conn::Url(url_with_db(&clone.url, "bench"));
        s.wait_ready(&conn).with_context(|| format!("clone {name}"))?;
        let ready_s = seconds_since(t0);
        Ok(Made {
            ready_s,
            conn,
            stored_bytes: clone.stored_bytes,
            clone: Box::new(ThincloneClone { driver: self.0, name: name.to_owned(), used_before }),
        })
    }
}

struct ThincloneClone {
    driver: Driver,
    name: String,
    used_before: Option<u64>,
}

impl MadeClone for ThincloneClone {
    fn disk_bytes(&self, s: &Suite) -> Result<u64> {
        match (self.driver, self.used_before) {
            (Driver::Cowfs, _) => {
                let [layer, native] = s.ext4()?.cowfs_storage(&self.name);
                Ok(host::du_bytes(&[&layer, &native]))
            }
            (Driver::Copy, _) => Ok(host::du_bytes(&[&s.ext4()?.clone_data_dir(&self.name)])),
            (Driver::Reflink, before) => {
                Ok(host::fs_used_bytes(&s.xfs()?.fs.mount_point)?.saturating_sub(before.unwrap_or(0)))
            }
        }
    }

    fn stored_bytes_after(&self, s: &Suite, since: api::Timestamp) -> Result<Option<u64>> {
        Thinclone(self.driver).daemon(s)?.stored_bytes_after(&self.name, since).map(Some)
    }

    fn remove(self: Box<Self>, s: &Suite) -> Result<()> {
        Thinclone(self.driver).daemon(s)?.remove_clone(&self.name)
    }
}

// ---------------------------------------------------------------- copy + start

/// `cp -a` of the image (a real copy on the work directory's filesystem, or a reflink
/// copy on XFS), the copy given to the postgres user (images are root's, so the copy driver
/// does the same), and a server started on it with the daemon's settings.
pub struct CopyAndStart {
    pub reflink: bool,
}

impl CloneMethod for CopyAndStart {
    fn key(&self) -> &'static str {
        if self.reflink {
            "reflink_start"
        } else {
            "cp_start"
        }
    }

    fn label(&self) -> &'static str {
        if self.reflink {
            "cp -a --reflink + postgres start (XFS)"
        } else {
            "cp -a + postgres start"
        }
    }

    fn disk_what(&self) -> &'static str {
        if self.reflink {
            "growth of the XFS filesystem's used space (df)"
        } else {
            "du of the copy"
        }
    }

    fn copies_data(&self) -> bool {
        !self.reflink
    }

    fn make(&self, s: &Suite, scale: u32, name: &str) -> Result<Made> {
        let image_name = format!("img-{scale}");
        let (image, dir, mode, used_before) = if self.reflink {
            let xfs = s.xfs()?;
            let used = host::fs_used_bytes(&xfs.fs.mount_point)?;
            (
                xfs.daemon.image_dir(&image_name),
                xfs.fs.mount_point.join("manual").join(name),
                "--reflink=always",
                Some(used),
            )
        } else {
            (s.ext4()?.image_dir(&image_name), s.run.data.join("manual").join(name), "--reflink=never", None)
        };
        std::fs::create_dir_all(dir.parent().expect("a parent"))?;
        let t0 = Instant::now();
        s.run.exec.run(&Cmd::new("cp").args(["-a", mode]).arg(&image).arg(&dir))?;
        let user = &s.run.pg.user;
        s.run.exec.note(&format!("chown -R {}: {}   # in-process, as the copy driver does", user.name, dir.display()));
        sys::tree::chown(&dir, user.uid, user.gid)
            .with_context(|| format!("giving {} to {}", dir.display(), user.name))?;
        let (server, conn) = s.start_hand_clone(&dir, "manual")?;
        let ready_s = seconds_since(t0);
        Ok(Made { ready_s, conn, stored_bytes: None, clone: Box::new(HandCopy { server, dir, used_before }) })
    }
}

struct HandCopy {
    server: HandServer,
    dir: PathBuf,
    used_before: Option<u64>,
}

impl MadeClone for HandCopy {
    fn disk_bytes(&self, s: &Suite) -> Result<u64> {
        match self.used_before {
            Some(before) => Ok(host::fs_used_bytes(&s.xfs()?.fs.mount_point)?.saturating_sub(before)),
            None => Ok(host::du_bytes(&[&self.dir])),
        }
    }

    fn remove(self: Box<Self>, _s: &Suite) -> Result<()> {
        self.server.stop()?;
        sys::tree::remove(&self.dir)?;
        Ok(())
    }
}

// ---------------------------------------------------------------- CREATE DATABASE

/// `CREATE DATABASE … TEMPLATE bench STRATEGY FILE_COPY` on the running source cluster.
pub struct CreateDatabase;

impl CloneMethod for CreateDatabase {
    fn key(&self) -> &'static str {
        "createdb"
    }

    fn label(&self) -> &'static str {
        "CREATE DATABASE … STRATEGY FILE_COPY"
    }

    fn disk_what(&self) -> &'static str {
        "du of the new database's directory (base/OID); WAL not counted"
    }

    fn copies_data(&self) -> bool {
        true
    }

    fn make(&self, s: &Suite, scale: u32, name: &str) -> Result<Made> {
        let t0 = Instant::now();
        s.psql(&s.source_conn("postgres"), &format!("CREATE DATABASE {name} TEMPLATE bench STRATEGY FILE_COPY"))?;
        let conn = s.source_conn(name);
        s.wait_ready(&conn).with_context(|| format!("database {name}"))?;
        let ready_s = seconds_since(t0);
        let oid =
            s.psql(&s.source_conn("postgres"), &format!("select oid from pg_database where datname = '{name}'"))?;
        Ok(Made {
            ready_s,
            conn,
            stored_bytes: None,
            clone: Box::new(Database { name: name.to_owned(), dir: s.source_dir(scale).join("base").join(oid) }),
        })
    }
}

struct Database {
    name: String,
    dir: PathBuf,
}

impl MadeClone for Database {
    fn disk_bytes(&self, _s: &Suite) -> Result<u64> {
        host::sync_all();
        Ok(host::du_bytes(&[&self.dir]))
    }

    fn remove(self: Box<Self>, s: &Suite) -> Result<()> {
        s.psql(&s.source_conn("postgres"), &format!("DROP DATABASE {}", self.name)).map(drop)
    }
}
