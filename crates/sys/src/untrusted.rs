//! Files in directories that a less trusted OS identity can write: a clone's data and run
//! directories belong to the clone's own uid, and its database superuser reaches them
//! through `COPY … TO PROGRAM`. What this process (root) reads or writes there is opened
//! without following a symlink in the last component and without blocking on a FIFO, and
//! only as a regular file; a file written to also has no second hard link. So a planted
//! symlink, hard link or FIFO never makes root read, write or wait on another file.
//!
//! The directories above such a file must be this process's own, which the less trusted
//! identity cannot replace (`clones/<name>/`, `run/clones/`).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

fn not_plain(path: &Path, what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("{} is {what}, not a plain file; refusing it", path.display()))
}

/// Says "a symbolic link" for the error `O_NOFOLLOW` gives on one.
fn explain(path: &Path, e: io::Error) -> io::Error {
    if e.raw_os_error() == Some(libc::ELOOP) {
        not_plain(path, "a symbolic link")
    } else {
        e
    }
}

fn check_regular(file: &File, path: &Path, single_link: bool) -> io::Result<()> {
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(not_plain(path, "not a regular file"));
    }
    if single_link && meta.nlink() > 1 {
        return Err(not_plain(path, "a file with another hard link"));
    }
    Ok(())
}

/// Opens a regular file for reading.
pub fn open_read(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| explain(path, e))?;
    check_regular(&file, path, false)?;
    Ok(file)
}

/// Reads at most `limit` bytes of a regular file as UTF-8 text.
pub fn read_to_string(path: &Path, limit: u64) -> io::Result<String> {
    let mut text = String::new();
    open_read(path)?.take(limit).read_to_string(&mut text)?;
    Ok(text)
}

/// Opens a regular file with a single link for appending, creating it with `mode` when it
/// is missing.
pub fn open_append(path: &Path, mode: u32) -> io::Result<File> {
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| explain(path, e))?;
    check_regular(&file, path, true)?;
    // Back to blocking writes: whoever inherits the descriptor (a server's stderr) expects them.
    // SAFETY: fcntl on a descriptor we own.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, libc::O_APPEND) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

/// Replaces whatever is at `path` (a file, a symlink, a FIFO; not a directory) with a new
/// regular file holding `contents`, with exactly `mode`, given to `owner` when one is named.
/// The new file is created exclusively: if something appears at `path` in between, this
/// fails rather than write through it.
pub fn replace(path: &Path, contents: &[u8], mode: u32, owner: Option<(u32, u32)>) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| explain(path, e))?;
    file.write_all(contents)?;
    file.set_permissions(fs::Permissions::from_mode(mode))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_and_fifos_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        fs::write(&secret, "the token").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&secret, &link).unwrap();
        let err = read_to_string(&link, 100).unwrap_err();
        assert!(err.to_string().contains("a symbolic link"), "{err}");
        let err = open_append(&link, 0o600).unwrap_err();
        assert!(err.to_string().contains("a symbolic link"), "{err}");
        let hard = dir.path().join("hard");
        fs::hard_link(&secret, &hard).unwrap();
        let err = open_append(&hard, 0o600).unwrap_err();
        assert!(err.to_string().contains("another hard link"), "{err}");
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        // Neither blocks: a FIFO without a writer would hang a plain open for reading.
        assert!(read_to_string(&fifo, 100).is_err());
        assert!(open_append(&fifo, 0o600).is_err());

        // Replacing writes a new file in place of the link; the target is untouched.
        replace(&link, b"hba", 0o640, None).unwrap();
        assert_eq!(fs::read_to_string(&secret).unwrap(), "the token");
        assert_eq!(read_to_string(&link, 100).unwrap(), "hba");
        assert_eq!(fs::metadata(&link).unwrap().permissions().mode() & 0o777, 0o640);
        replace(&fifo, b"x", 0o600, None).unwrap();
        assert_eq!(read_to_string(&fifo, 1).unwrap(), "x");

        let log = dir.path().join("log");
        writeln!(open_append(&log, 0o600).unwrap(), "one").unwrap();
        writeln!(open_append(&log, 0o600).unwrap(), "two").unwrap();
        assert_eq!(read_to_string(&log, 100).unwrap(), "one\ntwo\n");
        assert_eq!(fs::metadata(&log).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
