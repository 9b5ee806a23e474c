//! Native copy-on-write on filesystems that share blocks between files (XFS with reflink=1,
//! btrfs): a probe for `FICLONE`, and the count of a tree's bytes that are its own.
//!
//! Exclusive bytes come from `FIEMAP`: the extents of each regular file, minus those the
//! filesystem flags `FIEMAP_EXTENT_SHARED` (still shared with the image or another clone).
//! Data stored inline in metadata (btrfs, small files) counts as exclusive.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

/// `_IOW(0x94, 9, int)`: make the destination share the source's blocks.
const FICLONE: libc::c_ulong = 0x4004_9409;
/// `_IOWR('f', 11, struct fiemap)`.
const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
const FIEMAP_FLAG_SYNC: u32 = 0x1;
const FIEMAP_EXTENT_LAST: u32 = 0x1;
const FIEMAP_EXTENT_SHARED: u32 = 0x2000;
const EXTENTS_PER_CALL: usize = 128;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct FiemapExtent {
    fe_logical: u64,
    fe_physical: u64,
    fe_length: u64,
    fe_reserved64: [u64; 2],
    fe_flags: u32,
    fe_reserved: [u32; 3],
}

#[repr(C)]
struct Fiemap {
    fm_start: u64,
    fm_length: u64,
    fm_flags: u32,
    fm_mapped_extents: u32,
    fm_extent_count: u32,
    fm_reserved: u32,
    fm_extents: [FiemapExtent; EXTENTS_PER_CALL],
}

/// Whether files in `dir` can share blocks (`FICLONE` works there).
pub fn supported(dir: &Path) -> io::Result<bool> {
    let probe = tempfile_in(dir, ".reflink-probe")?;
    let clone = tempfile_in(dir, ".reflink-probe-clone")?;
    let result = (|| {
        let source = OpenOptions::new().read(true).write(true).open(&probe)?;
        io::Write::write_all(&mut &source, b"probe")?;
        let target = OpenOptions::new().write(true).open(&clone)?;
        // SAFETY: FICLONE with two file descriptors we own.
        Ok::<bool, io::Error>(unsafe { libc::ioctl(target.as_raw_fd(), FICLONE, source.as_raw_fd()) } == 0)
    })();
    let _ = fs::remove_file(&probe);
    let _ = fs::remove_file(&clone);
    result
}

fn tempfile_in(dir: &Path, name: &str) -> io::Result<std::path::PathBuf> {
    let path = dir.join(format!("{name}-{}", std::process::id()));
    File::create(&path)?;
    Ok(path)
}

/// Bytes of the regular files under `path` that are not shared with any other file.
pub fn exclusive_bytes(path: &Path) -> io::Result<u64> {
    let meta = fs::symlink_metadata(path)?;
    if meta.is_dir() {
        let mut total = 0;
        for entry in fs::read_dir(path)? {
            total += exclusive_bytes(&entry?.path())?;
        }
        return Ok(total);
    }
    if !meta.file_type().is_file() || meta.file_type().is_fifo() {
        return Ok(0);
    }
    // The tree is a clone's, whose OS user may swap a file for a symlink or a FIFO between
    // the look above and this open: neither is followed nor waited on.
    let file = match sys::untrusted::open_read(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::InvalidData => return Ok(0),
        Err(e) => return Err(e),
    };
    file_exclusive_bytes(&file)
}

fn file_exclusive_bytes(file: &File) -> io::Result<u64> {
    let mut total = 0;
    let mut start = 0u64;
    loop {
        let mut map = Fiemap {
            fm_start: start,
            fm_length: u64::MAX - start,
            fm_flags: FIEMAP_FLAG_SYNC,
            fm_mapped_extents: 0,
            fm_extent_count: EXTENTS_PER_CALL as u32,
            fm_reserved: 0,
            fm_extents: [FiemapExtent::default(); EXTENTS_PER_CALL],
        };
        // SAFETY: FIEMAP fills the struct we pass, which has room for fm_extent_count extents.
        if unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_FIEMAP, &mut map) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let extents = &map.fm_extents[..map.fm_mapped_extents as usize];
        for extent in extents {
            if extent.fe_flags & FIEMAP_EXTENT_SHARED == 0 {
                total += extent.fe_length;
            }
        }
        match extents.last() {
            Some(last) if last.fe_flags & FIEMAP_EXTENT_LAST == 0 => start = last.fe_logical + last.fe_length,
            _ => return Ok(total),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ext4_or_tmpfs_has_no_reflink_and_counts_everything_as_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        // The test directories here are on ext4 or tmpfs, which cannot share blocks.
        assert!(!supported(dir.path()).unwrap());
        fs::write(dir.path().join("f"), vec![1u8; 64 << 10]).unwrap();
        let bytes = exclusive_bytes(dir.path()).unwrap();
        assert!(bytes >= 64 << 10, "{bytes}");
    }
}
