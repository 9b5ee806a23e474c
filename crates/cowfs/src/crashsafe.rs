//! Durable file replacement: write a temporary file, fsync it, rename it into place and fsync
//! the directory. Every piece of cowfs state that is replaced whole goes through here.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

/// Replaces `path` with `contents` so that, after a crash at any point, the file holds either
/// the old or the new contents in full.
pub fn replace_file(path: &Path, contents: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    fsync_parent(path)
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

/// Creates a directory and makes its entry durable.
pub fn create_dir(path: &Path) -> io::Result<()> {
    fs::create_dir(path)?;
    fsync_parent(path)
}
