//! Native copy-on-write on filesystems that share blocks between files (XFS with reflink=1,
//! btrfs): a probe for `FICLONE`, and the count of a tree's bytes that are its own.
//!
//! Exclusive bytes come from `FIEMAP`: the extents of each regular file, minus those the
//! filesystem flags `FIEMAP_EXTENT_SHARED` (still shared with the image or another clone).
//! Data stored inline in metadata (btrfs, small files) counts as exclusive.
//!
//! A clone's directory is prepared before its files are copied in ([`prepare_clone_dir`]),
//! so that everything made in it inherits: on XFS a copy-on-write extent-size hint of one
//! database page (by default XFS unshares 32 blocks, 128 KiB, for every page written, and
//! a clone grows towards a full copy under random writes); on btrfs, no compression (a
//! compressed extent is rewritten whole). Both are per-inode and inherited by files and
//! directories made later, which is what a clone's server makes.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

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

/// `_IOR('X', 31, struct fsxattr)` and `_IOW('X', 32, struct fsxattr)`.
const FS_IOC_FSGETXATTR: libc::c_ulong = 0x801C_581F;
const FS_IOC_FSSETXATTR: libc::c_ulong = 0x401C_5820;
/// `fsx_cowextsize` is set.
const FS_XFLAG_COWEXTSIZE: u32 = 0x0001_0000;
/// `_IOR('f', 1, long)` and `_IOW('f', 2, long)`: the inode flags of chattr(1).
const FS_IOC_GETFLAGS: libc::c_ulong = 0x8008_6601;
const FS_IOC_SETFLAGS: libc::c_ulong = 0x4008_6602;
/// chattr's `m`: do not compress.
const FS_NOCOMP_FL: libc::c_long = 0x0000_0400;

/// The copy-on-write granularity clones' files get where the filesystem takes a hint: one
/// database page of 8 KiB (an engine with larger pages unshares a few at a time).
pub const COW_EXTENT_BYTES: u32 = 8192;

/// `struct fsxattr` of `<linux/fs.h>`.
#[repr(C)]
#[derive(Default)]
struct FsXattr {
    xflags: u32,
    extsize: u32,
    nextents: u32,
    projid: u32,
    cowextsize: u32,
    pad: [u8; 8],
}

/// What a clone's directory holds from now on is unshared a page at a time (XFS) and never
/// compressed (btrfs), as far as the filesystem under it offers either; see the module's
/// documentation. Returns what was set, for the log; a filesystem with neither is no error.
pub fn prepare_clone_dir(dir: &Path) -> io::Result<Vec<&'static str>> {
    let d = File::open(dir)?;
    let unsupported = |e: &io::Error| matches!(e.raw_os_error(), Some(libc::ENOTTY | libc::EOPNOTSUPP | libc::EINVAL));
    let mut set = Vec::new();
    let mut attr = FsXattr::default();
    // SAFETY: the ioctls read and write a `struct fsxattr` we own, on a descriptor we own.
    let got = unsafe { libc::ioctl(d.as_raw_fd(), FS_IOC_FSGETXATTR, &mut attr) } == 0;
    if got {
        attr.xflags |= FS_XFLAG_COWEXTSIZE;
        attr.cowextsize = COW_EXTENT_BYTES;
        // SAFETY: as above.
        if unsafe { libc::ioctl(d.as_raw_fd(), FS_IOC_FSSETXATTR, &attr) } == 0 {
            set.push("copy-on-write extent hint");
        } else {
            let e = io::Error::last_os_error();
            if !unsupported(&e) {
                return Err(e);
            }
        }
    }
    if is_btrfs(&d)? {
        let mut flags: libc::c_long = 0;
        // SAFETY: the ioctls read and write a long we own, on a descriptor we own.
        if unsafe { libc::ioctl(d.as_raw_fd(), FS_IOC_GETFLAGS, &mut flags) } == 0 {
            flags |= FS_NOCOMP_FL;
            // SAFETY: as above.
            if unsafe { libc::ioctl(d.as_raw_fd(), FS_IOC_SETFLAGS, &flags) } == 0 {
                set.push("no compression");
            } else {
                let e = io::Error::last_os_error();
                if !unsupported(&e) {
                    return Err(e);
                }
            }
        }
    }
    Ok(set)
}

/// Whether `file` is on btrfs.
fn is_btrfs(file: &File) -> io::Result<bool> {
    const BTRFS_SUPER_MAGIC: i64 = 0x9123_683E;
    // SAFETY: fstatfs fills a `struct statfs` we own, for a descriptor we own.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stat.f_type as i64 == BTRFS_SUPER_MAGIC)
}

/// Whether files in `dir` can share blocks (`FICLONE` works there).
pub fn supported(dir: &Path) -> io::Result<bool> {
    let probe = tempfile_in(dir, ".reflink-probe")?;
    let clone = tempfile_in(dir, ".reflink-probe-clone")?;
    let result = (|| {
        let source = OpenOptions::new().read(true).write(true).open(&probe)?;
        io::Write::write_all(&mut &source, b"probe")?;
        let target = OpenOptions::new().write(true).open(&clone)?;
        Ok::<bool, io::Error>(sys::reflink::ficlone(&target, &source).is_ok())
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
    // A tree that is not there (a clone's files half-way through a reset) is an error, not
    // a count of nothing.
    fs::symlink_metadata(path)?;
    let mut total = 0;
    // The tree is a clone's, whose OS user may change it meanwhile: see sys::tree::each_file.
    sys::tree::each_file(path, &mut |file| {
        total += file_exclusive_bytes(file)?;
        Ok(())
    })?;
    Ok(total)
}

fn file_exclusive_bytes(file: &File) -> io::Result<u64> {
    let mut total = 0;
    each_extent(file, |extent| {
        if extent.fe_flags & FIEMAP_EXTENT_SHARED == 0 {
            total += extent.fe_length;
        }
    })?;
    Ok(total)
}

/// Calls `f` with each extent of `file`.
fn each_extent(file: &File, mut f: impl FnMut(&FiemapExtent)) -> io::Result<()> {
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
        extents.iter().for_each(&mut f);
        match extents.last() {
            Some(last) if last.fe_flags & FIEMAP_EXTENT_LAST == 0 => start = last.fe_logical + last.fe_length,
            _ => return Ok(()),
        }
    }
}

/// Bytes of the files under `path` held by no file under `others`: what `path` alone keeps
/// on disk, where it shares blocks with files besides those (a checkpoint's second copy of
/// itself) and with `others` (the clone it came from, the image). Physical ranges, as
/// FIEMAP reports them, are compared.
pub fn own_bytes(path: &Path, others: &[&Path]) -> io::Result<u64> {
    let mut taken: Vec<(u64, u64)> = Vec::new();
    for other in others {
        sys::tree::each_file(other, &mut |file| {
            each_extent(file, |e| {
                if e.fe_flags & FIEMAP_EXTENT_SHARED != 0 {
                    taken.push((e.fe_physical, e.fe_physical + e.fe_length));
                }
            })
        })?;
    }
    taken.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(taken.len());
    for (start, end) in taken {
        match merged.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    let mut total = 0;
    sys::tree::each_file(path, &mut |file| {
        each_extent(file, |e| {
            if e.fe_flags & FIEMAP_EXTENT_SHARED == 0 {
                total += e.fe_length;
                return;
            }
            let (start, end) = (e.fe_physical, e.fe_physical + e.fe_length);
            let first = merged.partition_point(|r| r.1 <= start);
            let overlap: u64 =
                merged[first..].iter().take_while(|r| r.0 < end).map(|r| r.1.min(end) - r.0.max(start)).sum();
            total += e.fe_length - overlap;
        })
    })?;
    Ok(total)
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
