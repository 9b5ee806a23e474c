//! Free space of a filesystem.

use std::io;
use std::path::Path;

/// Bytes an unprivileged writer can still use on the filesystem that holds `path`.
pub fn free_bytes(path: &Path) -> io::Result<u64> {
    let st = nix::sys::statvfs::statvfs(path).map_err(io::Error::from)?;
    Ok(st.blocks_available() as u64 * st.fragment_size() as u64)
}

/// The total size in bytes of the filesystem that holds `path`.
pub fn total_bytes(path: &Path) -> io::Result<u64> {
    let st = nix::sys::statvfs::statvfs(path).map_err(io::Error::from)?;
    Ok(st.blocks() as u64 * st.fragment_size() as u64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_temp_dir_has_some_room() {
        let dir = tempfile::tempdir().unwrap();
        let free = super::free_bytes(dir.path()).unwrap();
        assert!(free > 0 && free <= super::total_bytes(dir.path()).unwrap());
    }
}
