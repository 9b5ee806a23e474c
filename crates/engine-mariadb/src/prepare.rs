//! Turning a copied data directory into an image: a server starts on the copy with no
//! network and no grant tables, so that crash recovery (of a copy of a server that was not
//! shut down cleanly) runs to its end here, once; it makes sure the agent can reach clones'
//! servers (`root@localhost` logs in through `unix_socket`), and shuts down slowly
//! (`innodb_fast_shutdown=0`: purge and change buffer merge done, redo log checkpointed), so
//! that clones start without recovery. What `mariadb-backup` left beside the data
//! (`backup-my.cnf`, `xtrabackup_*`) is removed.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use engine::{Error, ImageFacts, InstanceSpec, Result, User};

use crate::datadir::{self, live_server};
use crate::install::Search;
use crate::server::{self, Role, LOG, REDO_DIR, REDO_LOG};

/// Recovery of a large copy may take long.
pub(crate) const RECOVERY_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// A slow shutdown purges and merges everything first.
pub(crate) const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(6 * 3600);
/// The superuser clones' URLs log in as: the one account the `unix_socket` plugin gives the
/// OS user root.
pub(crate) const SUPERUSER: &str = "root";

pub(crate) fn prepare(search: &Search, data_dir: &Path, run_dir: &Path, user: &User) -> Result<ImageFacts> {
    let version = datadir::detect(data_dir)?;
    let installation = search.find(&version)?;
    if let Some(pid) = live_server(data_dir) {
        return Err(Error::InUse(format!(
            "a {} server (pid {pid}) is running on {}; an image needs a copy",
            crate::ENGINE_NAME,
            data_dir.display()
        )));
    }
    remove_leftovers(data_dir)?;
    let spec = prepare_spec(&version, data_dir, run_dir, user);
    let log = run_dir.join(LOG);
    let log_start = fs::symlink_metadata(&log).map_or(0, |m| m.len());
    let result = (|| {
        let server = server::start_as(&installation, &spec, RECOVERY_TIMEOUT, Role::Prepare)?;
        // Without grant tables every connection is let in; FLUSH PRIVILEGES loads them for
        // the statements after it in this session (account changes need them).
        server.sql_in(None, &root_sql())?;
        if !server.stop_within(SHUTDOWN_TIMEOUT)? {
            return Err(Error::Other(format!(
                "preparing {}: the server did not shut down cleanly within {} s",
                data_dir.display(),
                SHUTDOWN_TIMEOUT.as_secs()
            )));
        }
        let said = server::log_since(&log, log_start);
        if !said.contains("Shutdown complete") {
            return Err(Error::Other(format!(
                "preparing {}: the server did not say it shut down cleanly; its log ends with:\n{}",
                data_dir.display(),
                tail(&said)
            )));
        }
        Ok(())
    })();
    if let Err(e) = result {
        let said = server::log_since(&log, log_start);
        return Err(if e.is_disk_full() || said.contains("No space left on device") {
            Error::DiskFull { what: format!("preparing the image {}", data_dir.display()), detail: e.to_string() }
        } else {
            e
        });
    }
    remove_if_there(&data_dir.join("ib_buffer_pool"))?;
    keep_redo_apart(data_dir)?;
    Ok(ImageFacts { version, superuser: SUPERUSER.into() })
}

/// Makes `root@localhost` the agent's way in: it exists, has every privilege, and logs in
/// through `unix_socket` (OS user root only), besides whatever else it may use; as in a new
/// installation of 10.4 and later.
pub(crate) fn root_sql() -> String {
    "FLUSH PRIVILEGES;\n\
     CREATE USER IF NOT EXISTS 'root'@'localhost' IDENTIFIED VIA unix_socket;\n\
     DELIMITER //\n\
     BEGIN NOT ATOMIC\n\
       IF NOT EXISTS (SELECT 1 FROM mysql.global_priv WHERE User = 'root' AND Host = 'localhost'\n\
                      AND Priv LIKE '%unix_socket%') THEN\n\
         ALTER USER 'root'@'localhost' IDENTIFIED VIA unix_socket;\n\
       END IF;\n\
     END //\n\
     DELIMITER ;\n\
     GRANT ALL PRIVILEGES ON *.* TO 'root'@'localhost' WITH GRANT OPTION;\n\
     GRANT PROXY ON ''@'%' TO 'root'@'localhost' WITH GRANT OPTION;\n"
        .into()
}

/// Removes what a backup or a server left that no clone needs: the backup's notes, a buffer
/// pool dump (never loaded by clones), a temporary tablespace, stale pid files.
pub(crate) fn remove_leftovers(data_dir: &Path) -> Result<()> {
    // A copy with a redo log at the top (what a server or a backup of a clone wrote) and a
    // redo directory too: the directory is a stale copy, and would be the one used.
    let redo_dir = data_dir.join(REDO_DIR);
    let stale = if data_dir.join(REDO_LOG).is_file() { fs::symlink_metadata(&redo_dir).ok() } else { None };
    if let Some(meta) = stale {
        tracing::info!(data_dir = %data_dir.display(), "removing a stale {REDO_DIR} beside the redo log");
        if meta.is_dir() {
            sys::tree::remove(&redo_dir)?;
        } else {
            remove_if_there(&redo_dir)?;
        }
    }
    for entry in fs::read_dir(data_dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let leftover = name.starts_with("xtrabackup_")
            || name.starts_with("mariadb_backup_")
            || matches!(name.as_str(), "backup-my.cnf" | "ib_buffer_pool" | "ibtmp1")
            || name.ends_with(".pid");
        if leftover && entry.file_type()?.is_file() {
            remove_if_there(&entry.path())?;
        }
    }
    Ok(())
}

/// The spec of a server that prepares (or masks) the copy at `data_dir`.
pub(crate) fn prepare_spec(version: &str, data_dir: &Path, run_dir: &Path, user: &User) -> InstanceSpec {
    InstanceSpec {
        version: version.to_owned(),
        data_dir: data_dir.to_owned(),
        run_dir: run_dir.to_owned(),
        port: 3306,
        listen: Vec::new(),
        remote_clients: false,
        user: user.clone(),
        superuser: SUPERUSER.into(),
        label: "thinclone-prepare".into(),
        memory: Some("128MB".into()),
        read_only: false,
    }
}

/// Moves the redo log of a prepared image into [`REDO_DIR`], where clones' servers are
/// told to find it (and where the cowfs driver keeps it off FUSE). Durable: the log and
/// both directories are synced.
fn keep_redo_apart(data_dir: &Path) -> Result<()> {
    let top = data_dir.join(REDO_LOG);
    if !fs::symlink_metadata(&top).is_ok_and(|m| m.is_file()) {
        return Ok(());
    }
    let dir = data_dir.join(REDO_DIR);
    std::os::unix::fs::DirBuilderExt::mode(&mut fs::DirBuilder::new(), 0o700).create(&dir)?;
    let owner = fs::metadata(data_dir)?;
    if sys::user::running_as_root() {
        std::os::unix::fs::lchown(&dir, Some(owner.uid()), Some(owner.gid()))?;
    }
    fs::rename(&top, dir.join(REDO_LOG))?;
    sys::crashsafe::fsync_dir(&dir)?;
    sys::crashsafe::fsync_dir(data_dir)?;
    Ok(())
}

pub(crate) fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

pub(crate) fn remove_if_there(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}
