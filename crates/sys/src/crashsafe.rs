//! Durable writes: write a temporary file, fsync it, rename it into place and fsync the
//! directory. Every piece of state that is replaced whole (cowfs's `stack.json`, an agent's
//! clone records and intents) goes through here, so that after a crash at any point the file
//! holds either the old or the new contents in full.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

/// Replaces `path` with `contents` durably.
pub fn replace_file(path: &Path, contents: &[u8]) -> io::Result<()> {
    replace_file_mode(path, contents, 0o666)
}

/// Replaces `path` with `contents` durably; the file is created with `mode` (less the
/// umask), so that a private file (0600) is never readable by others, even for a moment.
pub fn replace_file_mode(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    // A leftover of a crash may have another mode: it goes, so that `mode` applies.
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    {
        let mut f = OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    fsync_parent(path)
}

/// Replaces `path` durably with `value` as pretty JSON.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    bytes.push(b'\n');
    replace_file(path, &bytes)
}

/// Reads a JSON file written by [`write_json`]; `None` when it does not exist.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> io::Result<Option<T>> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Removes a file durably; a file that is not there is not an error.
pub fn remove_file(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => fsync_parent(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Renames durably: both directories' entries are on disk when it returns.
pub fn rename(from: &Path, to: &Path) -> io::Result<()> {
    fs::rename(from, to)?;
    fsync_parent(to)?;
    if from.parent() != to.parent() {
        fsync_parent(from)?;
    }
    Ok(())
}

/// Puts the tree `fresh` (built aside, complete) in place of `to` durably: `to` → `old`,
/// `fresh` → `to`, then `old` is removed. After a crash between the renames, `to` is missing
/// and both `fresh` and `old` are there; whoever finds that finishes or undoes it.
pub fn swap_in_dir(fresh: &Path, to: &Path, old: &Path) -> io::Result<()> {
    if fs::symlink_metadata(to).is_ok() {
        rename(to, old)?;
    }
    rename(fresh, to)?;
    match fs::remove_dir_all(old) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Makes a directory's entries (creations, renames, removals) durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Makes the entry of `path` in its parent directory durable.
pub fn fsync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => fsync_dir(parent),
        _ => fsync_dir(Path::new(".")),
    }
}

/// Makes a tree we made durable: every regular file's data and every directory's entries.
/// Symlinks are not followed.
pub fn sync_tree(path: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    if meta.is_dir() {
        for entry in fs::read_dir(path)? {
            sync_tree(&entry?.path())?;
        }
        fsync_dir(path)
    } else if meta.is_file() {
        File::open(path)?.sync_all()
    } else {
        Ok(())
    }
}

/// Creates a directory and makes its entry durable.
pub fn create_dir(path: &Path) -> io::Result<()> {
    fs::create_dir(path)?;
    fsync_parent(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trips_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        assert_eq!(read_json::<Vec<u32>>(&path).unwrap(), None);
        write_json(&path, &vec![1, 2]).unwrap();
        write_json(&path, &vec![3]).unwrap();
        assert_eq!(read_json::<Vec<u32>>(&path).unwrap(), Some(vec![3]));
        assert!(!dir.path().join("state.json.tmp").exists());
        fs::write(&path, "{").unwrap();
        assert_eq!(read_json::<Vec<u32>>(&path).unwrap_err().kind(), io::ErrorKind::InvalidData);
        remove_file(&path).unwrap();
        remove_file(&path).unwrap();
    }
}
