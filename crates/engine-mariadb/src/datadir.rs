//! Facts about a MariaDB data directory read from its files: whether it is one (a `mysql`
//! directory beside InnoDB's `ibdata1` or Aria's `aria_log_control`), the version that made
//! it (`mysql_upgrade_info`, a backup's `xtrabackup_info`, or the creator named in the redo
//! log's header), and whether a server runs on it (the lock InnoDB and Aria hold on
//! `ibdata1` and `aria_log_control`, or a `mariadbd` whose working directory it is).

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use engine::{Error, Result};

use crate::install::major_minor;
use crate::ENGINE_NAME;

/// The oldest version thinclone runs: accounts in `mysql.global_priv` and the `unix_socket`
/// plugin by default come with 10.4.
const OLDEST_SUPPORTED: (u32, u32) = (10, 4);

/// The version (`MAJOR.MINOR`) of the MariaDB data directory `dir`.
pub(crate) fn detect(dir: &Path) -> Result<String> {
    let not_a_data_dir = |why: String| Error::NotADataDir { engine: ENGINE_NAME, path: dir.to_owned(), why };
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(not_a_data_dir("it is not a directory".into())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(not_a_data_dir("it does not exist".into())),
        Err(e) => return Err(not_a_data_dir(format!("it cannot be read: {e}"))),
    }
    let is_dir = |name: &str| fs::symlink_metadata(dir.join(name)).is_ok_and(|m| m.is_dir());
    let is_file = |name: &str| fs::symlink_metadata(dir.join(name)).is_ok_and(|m| m.is_file());
    if !is_dir("mysql") || !(is_file("ibdata1") || is_file("aria_log_control")) {
        return Err(not_a_data_dir("it has no mysql directory beside ibdata1 or aria_log_control".into()));
    }
    let version =
        upgrade_info(dir).or_else(|| backup_info(dir)).or_else(|| redo_log_creator(dir)).ok_or_else(|| {
            not_a_data_dir(
                "its version cannot be told: it has no mysql_upgrade_info, and its redo log ib_logfile0 names no \
                 MariaDB version"
                    .into(),
            )
        })?;
    let parsed: Option<(u32, u32)> =
        version.split_once('.').and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)));
    match parsed {
        Some(v) if v >= OLDEST_SUPPORTED => Ok(version),
        _ => Err(Error::BadSource(format!(
            "{} was made by {ENGINE_NAME} (or MySQL) {version}; thinclone runs {ENGINE_NAME} {}.{} and later",
            dir.display(),
            OLDEST_SUPPORTED.0,
            OLDEST_SUPPORTED.1
        ))),
    }
}

/// `mysql_upgrade_info`: `10.11.19-MariaDB`, written by the install and upgrade programs.
fn upgrade_info(dir: &Path) -> Option<String> {
    let text = sys::untrusted::read_to_string(&dir.join("mysql_upgrade_info"), 256).ok()?;
    major_minor(text.trim())
}

/// A `mariadb-backup` copy's `xtrabackup_info`: `server_version = 10.11.19-MariaDB-…`.
fn backup_info(dir: &Path) -> Option<String> {
    let text = sys::untrusted::read_to_string(&dir.join("xtrabackup_info"), 64 << 10).ok()?;
    let line = text.lines().find_map(|l| l.trim().strip_prefix("server_version"))?;
    major_minor(line.trim_start_matches([' ', '=']).trim())
}

/// The creator written at offset 16 of the redo log's header since 10.5: `MariaDB 10.11.19`
/// (or `Backup 10.11.19` after `mariadb-backup --prepare`).
fn redo_log_creator(dir: &Path) -> Option<String> {
    let mut file = sys::untrusted::open_read(&crate::server::redo_log(dir)).ok()?;
    let mut header = [0u8; 48];
    file.read_exact(&mut header).ok()?;
    let creator = String::from_utf8_lossy(&header[16..48]).trim_end_matches('\0').to_owned();
    let (who, version) = creator.split_once(' ')?;
    matches!(who, "MariaDB" | "Backup").then(|| major_minor(version)).flatten()
}

/// The pid of a server running on `dir`, or `Some(0)` when one holds its files locked but
/// cannot be named: the process that holds a lock on `ibdata1` or `aria_log_control`, or a
/// `mariadbd` (or `mysqld`) whose working directory is `dir` (a server works in its data
/// directory).
pub(crate) fn live_server(dir: &Path) -> Option<i32> {
    for name in ["ibdata1", "aria_log_control"] {
        if let Some(pid) = lock_holder(&dir.join(name)) {
            return Some(pid);
        }
    }
    let ours = fs::metadata(dir).ok()?;
    let entries = fs::read_dir("/proc").ok()?;
    entries.flatten().filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok()).find(|&pid| {
        let is_server = sys::procfs::cmdline(pid)
            .and_then(|args| args.into_iter().next())
            .and_then(|p| Path::new(&p).file_name().map(|n| n.to_string_lossy().into_owned()))
            .is_some_and(|n| n == "mariadbd" || n == "mysqld");
        is_server
            && sys::procfs::is_alive(pid)
            && fs::metadata(format!("/proc/{pid}/cwd")).is_ok_and(|m| m.dev() == ours.dev() && m.ino() == ours.ino())
    })
}

/// The pid of a process that holds a POSIX lock on `path` (0 when the lock's owner is in
/// another pid namespace).
fn lock_holder(path: &Path) -> Option<i32> {
    let file = fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path).ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    // SAFETY: a zeroed flock is a valid value; F_GETLK only reads and writes it.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_WRLCK as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: fcntl with F_GETLK on an open descriptor and a valid flock.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut lock) };
    (r == 0 && lock.l_type != libc::F_UNLCK as libc::c_short).then_some(lock.l_pid)
}

/// The refusal of a copy of `dir` while the server `pid` runs on it.
pub(crate) fn in_use_error(dir: &Path, pid: i32) -> Error {
    let who = if pid > 0 { format!(" (pid {pid})") } else { String::new() };
    let dir = dir.display();
    Error::InUse(format!(
        "a {ENGINE_NAME} server{who} is running on {dir}; copying it now would give a torn copy: take the image \
         from the running server with --from-url mariadb://USER:PASSWORD@HOST:PORT/, or stop the server first (if \
         {dir} is a crash-consistent snapshot of a running server, say so with --snapshot)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_without_the_files_are_not_data_directories() {
        let dir = tempfile::tempdir().unwrap();
        let err = detect(dir.path()).unwrap_err();
        assert!(matches!(err, Error::NotADataDir { .. }) && err.to_string().contains("mysql directory"), "{err}");
        fs::create_dir(dir.path().join("mysql")).unwrap();
        fs::write(dir.path().join("ibdata1"), b"").unwrap();
        let err = detect(dir.path()).unwrap_err();
        assert!(err.to_string().contains("version cannot be told"), "{err}");
        fs::write(dir.path().join("mysql_upgrade_info"), b"10.11.19-MariaDB").unwrap();
        assert_eq!(detect(dir.path()).unwrap(), "10.11");
        fs::write(dir.path().join("mysql_upgrade_info"), b"10.3.39-MariaDB").unwrap();
        let err = detect(dir.path()).unwrap_err();
        assert!(matches!(err, Error::BadSource(_)) && err.to_string().contains("10.4 and later"), "{err}");
        fs::remove_file(dir.path().join("mysql_upgrade_info")).unwrap();
        let mut header = vec![0u8; 512];
        header[..4].copy_from_slice(b"Phys");
        header[16..31].copy_from_slice(b"Backup 10.11.19");
        fs::write(dir.path().join("ib_logfile0"), &header).unwrap();
        assert_eq!(detect(dir.path()).unwrap(), "10.11");
        assert_eq!(live_server(dir.path()), None);
    }
}
