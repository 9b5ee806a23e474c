//! Reads of the image that the host's page cache cannot answer: the bytes are right, and the
//! kernel is asked to bring the 128 KiB around them into memory (fs.rs, `read_image`), while
//! the rest of the file stays on disk.

use std::ffi::OsStr;
use std::fs;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use cowfs::{CowFs, LayerStack, Options, ROOT_INO};

const PAGE: usize = 8192;
const FILE_PAGES: usize = 512;

/// The bytes of page `i` of the image's file: its number, over and over.
fn page(i: usize) -> Vec<u8> {
    (i as u32).to_le_bytes().iter().copied().cycle().take(PAGE).collect()
}

/// Which 4 KiB pages of `path` the host's page cache holds.
fn resident(path: &Path) -> Vec<bool> {
    let file = fs::File::open(path).unwrap();
    let len = file.metadata().unwrap().len() as usize;
    // SAFETY: a private read-only mapping of a file we hold open, unmapped below; mincore
    // writes one byte per 4 KiB page into a vector of that length.
    unsafe {
        let map = libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, file.as_raw_fd(), 0);
        assert_ne!(map, libc::MAP_FAILED, "mmap: {}", std::io::Error::last_os_error());
        let mut pages = vec![0u8; len.div_ceil(4096)];
        assert_eq!(libc::mincore(map, len, pages.as_mut_ptr()), 0, "mincore: {}", std::io::Error::last_os_error());
        libc::munmap(map, len);
        pages.iter().map(|p| p & 1 == 1).collect()
    }
}

/// Drops the file's clean pages from the host's page cache.
fn evict(path: &Path) {
    let file = fs::File::open(path).unwrap();
    // SAFETY: advice on a descriptor we hold open.
    let advised = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(advised, 0);
}

#[test]
fn an_image_read_from_disk_is_right_and_brings_its_neighbours_into_memory() {
    // On a disk-backed filesystem: tmpfs has no disk to wait for.
    let image = tempfile::tempdir_in("/var/tmp").unwrap();
    let layers = tempfile::tempdir_in("/var/tmp").unwrap();
    let file = image.path().join("relation");
    let bytes: Vec<u8> = (0..FILE_PAGES).flat_map(page).collect();
    fs::write(&file, &bytes).unwrap();
    fs::File::open(&file).unwrap().sync_all().unwrap();
    evict(&file);
    let before = resident(&file);
    assert!(before.iter().all(|r| !r), "the image's file is still in memory after DONTNEED");

    let fs = CowFs::new(LayerStack::open(layers.path(), image.path()).unwrap(), Options::default()).unwrap();
    let ino = fs.lookup(ROOT_INO, OsStr::new("relation")).unwrap().ino;
    // Page 200 lies in the 128 KiB stretch of pages 192–207.
    assert_eq!(fs.read(ino, 200 * PAGE as u64, PAGE as u32).unwrap(), page(200));

    // The stretch comes in the background; the rest of the file stays on disk.
    let stretch = 192 * 2..208 * 2;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut now = resident(&file);
    while !now[stretch.clone()].iter().all(|&r| r) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        now = resident(&file);
    }
    assert!(now[stretch.clone()].iter().all(|&r| r), "the stretch around the read is not in memory: {now:?}");
    let elsewhere = now.iter().enumerate().filter(|&(i, &r)| r && !stretch.contains(&i)).count();
    assert!(elsewhere <= 64, "{elsewhere} pages outside the stretch were read into memory");

    // A neighbour now comes from memory, and is right; so is a read across the stretch's end
    // and one past the end of the file.
    assert_eq!(fs.read(ino, 205 * PAGE as u64, PAGE as u32).unwrap(), page(205));
    let across = fs.read(ino, 207 * PAGE as u64, 2 * PAGE as u32).unwrap();
    assert_eq!(across, [page(207), page(208)].concat());
    let tail = fs.read(ino, (FILE_PAGES as u64 - 1) * PAGE as u64, 4 * PAGE as u32).unwrap();
    assert_eq!(tail, page(FILE_PAGES - 1));
}
