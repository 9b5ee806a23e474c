//! The block map of a layer data file: which blocks of the file this layer owns, and below
//! which offset the layers underneath still show through.
//!
//! # On-disk layout (`data/<ino>.map`)
//!
//! ```text
//! 0..8    magic "COWMAP01"
//! 8..16   lower_limit, u64 little-endian
//! 16..64  reserved (zero)
//! 64..    bitmap: bit (b % 8) of byte (b / 8) is set when block b is owned by this layer
//! ```
//!
//! A byte at offset `o` of the file is read from this layer when `o >= lower_limit` or its
//! block's bit is set; otherwise it is read from the layers beneath. Only blocks that start
//! below `lower_limit` ever need a bit, so the bitmap is bounded by the size of the file as it
//! was when this layer first touched it. Shrinking the file lowers `lower_limit`, which is what
//! makes a shrink followed by a grow read zeros rather than old bytes from beneath.
//!
//! Every change is a single `pwrite` of the header word or of one bitmap byte, issued after
//! the data it describes was written, so the map survives a kill of the process at any point.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::BLOCK_SIZE;

const MAGIC: &[u8; 8] = b"COWMAP01";
const HEADER_LEN: u64 = 64;

pub(crate) struct BlockMap {
    file: File,
    lower_limit: u64,
    bits: Vec<u8>,
    /// Changed since the last sync.
    dirty: AtomicBool,
}

impl BlockMap {
    /// Creates a new map with no owned blocks. The caller makes it durable.
    pub(crate) fn create(path: &Path, lower_limit: u64) -> io::Result<BlockMap> {
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path)?;
        let mut header = [0u8; HEADER_LEN as usize];
        header[..8].copy_from_slice(MAGIC);
        header[8..16].copy_from_slice(&lower_limit.to_le_bytes());
        file.write_all_at(&header, 0)?;
        Ok(BlockMap { file, lower_limit, bits: Vec::new(), dirty: AtomicBool::new(true) })
    }

    pub(crate) fn open(path: &Path, writable: bool) -> io::Result<BlockMap> {
        let file = OpenOptions::new().read(true).write(writable).open(path)?;
        let mut header = [0u8; HEADER_LEN as usize];
        file.read_exact_at(&mut header, 0)?;
        if &header[..8] != MAGIC {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not a cowfs block map", path.display()),
            ));
        }
        let lower_limit = u64::from_le_bytes(header[8..16].try_into().unwrap());
        let len = file.metadata()?.len().saturating_sub(HEADER_LEN);
        let mut bits = vec![0u8; len as usize];
        file.read_exact_at(&mut bits, HEADER_LEN)?;
        Ok(BlockMap { file, lower_limit, bits, dirty: AtomicBool::new(false) })
    }

    pub(crate) fn lower_limit(&self) -> u64 {
        self.lower_limit
    }

    /// Lowers the offset below which the layers beneath show through. Never raises it.
    pub(crate) fn lower_the_limit(&mut self, limit: u64) -> io::Result<()> {
        if limit < self.lower_limit {
            self.file.write_all_at(&limit.to_le_bytes(), 8)?;
            self.lower_limit = limit;
            self.dirty.store(true, Ordering::Release);
        }
        Ok(())
    }

    pub(crate) fn is_owned(&self, block: u64) -> bool {
        if block * BLOCK_SIZE >= self.lower_limit {
            return true;
        }
        let byte = (block / 8) as usize;
        self.bits.get(byte).is_some_and(|b| b & (1 << (block % 8)) != 0)
    }

    /// Marks blocks `first..=last` as owned by this layer. The data must already be written.
    pub(crate) fn set_owned(&mut self, first: u64, last: u64) -> io::Result<()> {
        let last = last.min(self.lower_limit.div_ceil(BLOCK_SIZE).saturating_sub(1));
        if first > last {
            return Ok(());
        }
        if (first..=last).all(|block| self.is_owned(block)) {
            // A rewrite of blocks this layer already owns: nothing to record. This is the
            // common case under a database's steady writes, so it must cost no system call.
            return Ok(());
        }
        let (lo, hi) = ((first / 8) as usize, (last / 8) as usize);
        let (old_len, old) =
            (self.bits.len(), self.bits[lo.min(self.bits.len())..(hi + 1).min(self.bits.len())].to_vec());
        if self.bits.len() <= hi {
            self.bits.resize(hi + 1, 0);
        }
        for block in first..=last {
            self.bits[(block / 8) as usize] |= 1 << (block % 8);
        }
        if let Err(e) = self.file.write_all_at(&self.bits[lo..=hi], HEADER_LEN + lo as u64) {
            // Growing the map can run out of space: the blocks stay not owned, here as on disk.
            self.bits[lo..lo + old.len()].copy_from_slice(&old);
            self.bits.truncate(old_len);
            return Err(e);
        }
        self.dirty.store(true, Ordering::Release);
        Ok(())
    }

    pub(crate) fn sync(&self) -> io::Result<()> {
        if self.dirty.swap(false, Ordering::AcqRel) {
            if let Err(e) = self.file.sync_data() {
                self.dirty.store(true, Ordering::Release);
                return Err(e);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_and_limit_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1.map");
        let mut map = BlockMap::create(&path, 100 * BLOCK_SIZE).unwrap();
        map.set_owned(3, 5).unwrap();
        map.set_owned(64, 64).unwrap();
        map.lower_the_limit(80 * BLOCK_SIZE).unwrap();
        map.lower_the_limit(90 * BLOCK_SIZE).unwrap();

        let map = BlockMap::open(&path, false).unwrap();
        assert_eq!(map.lower_limit(), 80 * BLOCK_SIZE);
        let owned: Vec<u64> = (0..100).filter(|&b| map.is_owned(b)).collect();
        let mut expected = vec![3, 4, 5, 64];
        expected.extend(80..100);
        assert_eq!(owned, expected);
    }

    #[test]
    fn bits_at_or_past_the_limit_are_not_stored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1.map");
        let mut map = BlockMap::create(&path, 2 * BLOCK_SIZE).unwrap();
        map.set_owned(1, 1000).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), HEADER_LEN + 1);
    }

    #[test]
    fn owning_owned_blocks_again_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1.map");
        let mut map = BlockMap::create(&path, 100 * BLOCK_SIZE).unwrap();
        map.set_owned(3, 5).unwrap();
        map.sync().unwrap();
        assert!(!map.dirty.load(Ordering::Acquire));
        map.set_owned(4, 5).unwrap();
        assert!(!map.dirty.load(Ordering::Acquire), "a rewrite of owned blocks marked the map changed");
        map.set_owned(5, 6).unwrap();
        assert!(map.dirty.load(Ordering::Acquire));
        let owned: Vec<u64> = (0..10).filter(|&b| BlockMap::open(&path, false).unwrap().is_owned(b)).collect();
        assert_eq!(owned, vec![3, 4, 5, 6]);
    }
}
