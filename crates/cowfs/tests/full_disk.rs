//! Full disks through `CowFs`'s own methods, with the layer on a small tmpfs (doc/SEMANTICS.md,
//! "Full disks"): writes a caller waits for are refused with `ENOSPC` at the reserve, before
//! the disk is full, while overwrites, removals and writes from the kernel's cache go on; an
//! `ENOSPC` from the filesystem itself leaves nothing half-written behind (the journal, data
//! files, block maps); and once space is freed everything works again and a remount shows
//! exactly what was answered.
//!
//! Mounting a tmpfs needs root: these tests fail, rather than skip, without it.

use std::ffi::{CString, OsStr};
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use cowfs::{Caller, CowFs, LayerStack, Options, SetAttr, ROOT_INO};

const ROOT: Caller = Caller { uid: 0, gid: 0 };
const MIB: u64 = 1 << 20;

/// A tmpfs of a given size, unmounted when dropped.
struct SmallFs {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl SmallFs {
    fn new(size: u64) -> SmallFs {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(unsafe { libc::geteuid() }, 0, "these tests mount a tmpfs and must run as root");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("small");
        fs::create_dir(&path).unwrap();
        let target = CString::new(path.as_os_str().as_bytes()).unwrap();
        let options = CString::new(format!("size={size}")).unwrap();
        // SAFETY: mount(2) with valid C strings.
        let rc =
            unsafe { libc::mount(c"tmpfs".as_ptr(), target.as_ptr(), c"tmpfs".as_ptr(), 0, options.as_ptr().cast()) };
        assert_eq!(rc, 0, "mounting a tmpfs: {}", std::io::Error::last_os_error());
        SmallFs { _dir: dir, path }
    }

    fn available(&self) -> u64 {
        cowfs::layer_space(&self.path).unwrap().available
    }

    /// Fills the filesystem to the last byte with a file outside the layer.
    fn fill(&self) -> PathBuf {
        let path = self.path.join("filler");
        let mut file = fs::File::create(&path).unwrap();
        let chunk = vec![1u8; 4096];
        while file.write(&chunk).is_ok_and(|n| n > 0) {}
        path
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let target = CString::new(self.path.as_os_str().as_bytes()).unwrap();
        // SAFETY: umount2 with a valid C string.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

fn image() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("big"), vec![7u8; MIB as usize]).unwrap();
    fs::write(dir.path().join("small"), b"image").unwrap();
    dir
}

fn open(layers: &Path, image: &Path, reserve: u64) -> CowFs {
    let fs = CowFs::new(LayerStack::open(layers, image).unwrap(), Options::default()).unwrap();
    fs.set_reserve(reserve);
    fs
}

fn ino(fs: &CowFs, name: &str) -> u64 {
    fs.lookup(ROOT_INO, OsStr::new(name)).unwrap().ino
}

fn names(fs: &CowFs) -> Vec<String> {
    fs.readdir(ROOT_INO).unwrap().into_iter().map(|e| e.name.to_string_lossy().into_owned()).collect()
}

fn chunk(i: u64) -> Vec<u8> {
    vec![(i % 251) as u8; MIB as usize]
}

/// The data directory of the writable layer.
fn data_dir(fs: &CowFs) -> PathBuf {
    fs.stack().layer_dirs().last().unwrap().join("data")
}

#[test]
fn writes_are_refused_at_the_reserve_and_everything_works_again_once_space_is_freed() {
    let small = SmallFs::new(16 * MIB);
    let image = image();
    let layers = small.path.join("layers");
    let fs = open(&layers, image.path(), 4 * MIB);

    // Fill a new file until cowfs refuses, in MiB then in blocks: ENOSPC from the reserve,
    // with the reserve still there on the filesystem.
    let new = fs.create(ROOT_INO, OsStr::new("new"), 0o644, libc::O_RDWR, ROOT).unwrap().ino;
    let mut written = 0;
    let err = loop {
        match fs.write(new, written * MIB, &chunk(written)) {
            Ok(_) => written += 1,
            Err(e) => break e,
        }
        assert!(written < 16, "16 MiB written into a 16 MiB filesystem");
    };
    assert_eq!(err.errno(), libc::ENOSPC, "{err}");
    assert!(err.to_string().contains("reserve"), "not refused by cowfs: {err}");
    assert!(written >= 8, "refused after only {written} MiB");
    let mut tail = 0;
    while fs.write(new, written * MIB + tail, &[3u8; 8192]).is_ok() {
        tail += 8192;
        assert!(tail < MIB, "a MiB was refused, but not its blocks");
    }
    assert!(small.available() >= 3 * MIB, "the filesystem itself is full: {} bytes left", small.available());
    fs.fsync(new, false).unwrap();
    let statfs = fs.statfs().unwrap();
    assert!(statfs.bavail * statfs.frsize as u64 <= MIB, "statfs shows {} blocks available", statfs.bavail);

    // What needs no new space goes on: overwriting, renaming, removing, shrinking.
    fs.write(new, 0, &chunk(100)).unwrap();
    fs.rename(ROOT_INO, OsStr::new("new"), ROOT_INO, OsStr::new("renamed"), 0).unwrap();
    fs.unlink(ROOT_INO, OsStr::new("small")).unwrap();
    fs.setattr(new, SetAttr { size: Some(written * MIB + tail - 1), ..SetAttr::default() }).unwrap();
    // What would take space is refused: a copy-up, an allocation.
    let big = ino(&fs, "big");
    assert_eq!(fs.write(big, 512 << 10, b"clone").unwrap_err().errno(), libc::ENOSPC);
    assert_eq!(fs.fallocate(new, written * MIB, MIB, 0).unwrap_err().errno(), libc::ENOSPC);

    // Small bookkeeping still fits, in half of the reserve: a state file written under a
    // temporary name, fsynced and renamed over the old one.
    let state = fs.create(ROOT_INO, OsStr::new("state.tmp"), 0o600, libc::O_RDWR, ROOT).unwrap().ino;
    fs.write(state, 0, b"checkpoint state").unwrap();
    fs.fsync(state, false).unwrap();
    fs.rename(ROOT_INO, OsStr::new("state.tmp"), ROOT_INO, OsStr::new("state"), 0).unwrap();
    fs.release(state).unwrap();
    // Until that half is used up too: then not even a new file, directory or symlink.
    let mut files = 0;
    let err = loop {
        let made = fs.create(ROOT_INO, OsStr::new(&format!("s{files}")), 0o644, libc::O_RDWR, ROOT).and_then(|a| {
            let written = fs.write(a.ino, 0, &[4u8; 8192]);
            fs.release(a.ino)?;
            written
        });
        match made {
            Ok(_) => files += 1,
            Err(e) => break e,
        }
        assert!(files < 1000, "8 MiB of small files past the reserve");
    };
    assert_eq!(err.errno(), libc::ENOSPC, "{err}");
    assert!(files >= 100, "small files refused after {files}");
    assert!(small.available() >= MIB, "the filesystem itself is full: {} bytes left", small.available());
    assert_eq!(fs.create(ROOT_INO, OsStr::new("x"), 0o644, libc::O_RDWR, ROOT).unwrap_err().errno(), libc::ENOSPC);
    assert_eq!(fs.mkdir(ROOT_INO, OsStr::new("d"), 0o755, ROOT).unwrap_err().errno(), libc::ENOSPC);
    assert_eq!(fs.symlink(ROOT_INO, OsStr::new("l"), OsStr::new("t"), ROOT).unwrap_err().errno(), libc::ENOSPC);

    // Writes the kernel had already accepted use the reserve, until the filesystem itself is
    // full; the one that fails leaves the file as it was.
    fs.write_cached(big, 8192, b"cached").unwrap();
    let size = fs.getattr(new).unwrap().size;
    let mut cached = 0;
    let err = loop {
        match fs.write_cached(new, size + cached * MIB, &chunk(cached)) {
            Ok(_) => cached += 1,
            Err(e) => break e,
        }
        assert!(cached < 16, "16 MiB of cached writes into a full filesystem");
    };
    assert_eq!(err.errno(), libc::ENOSPC, "{err}");
    assert!(!err.to_string().contains("reserve"), "a cached write was refused for the reserve: {err}");
    let size = fs.getattr(new).unwrap().size;
    assert_eq!(
        fs::metadata(data_dir(&fs).join(new.to_string())).unwrap().len(),
        size,
        "the failed write grew the data file"
    );
    fs.fsync(new, false).unwrap();
    fs.fsync(big, false).unwrap();

    // Freeing space (the last handle closes): new files and writes work again.
    fs.unlink(ROOT_INO, OsStr::new("renamed")).unwrap();
    fs.release(new).unwrap();
    for file in 0..=files {
        // The last one may not have been made.
        let _ = fs.unlink(ROOT_INO, OsStr::new(&format!("s{file}")));
    }
    let after = fs.create(ROOT_INO, OsStr::new("after"), 0o644, libc::O_RDWR, ROOT).unwrap().ino;
    fs.write(after, 0, &chunk(7)).unwrap();
    fs.write(big, 16384, b"again").unwrap();
    fs.fsync(after, false).unwrap();
    fs.fsync(big, false).unwrap();
    drop(fs.into_stack());

    // A remount shows what was answered, and the image is as it was.
    let fs = open(&layers, image.path(), 4 * MIB);
    assert_eq!(names(&fs), ["after", "big", "state"]);
    assert_eq!(fs.read(ino(&fs, "state"), 0, 100).unwrap(), b"checkpoint state");
    assert_eq!(fs.read(ino(&fs, "after"), 0, MIB as u32).unwrap(), chunk(7));
    let big = fs.read(ino(&fs, "big"), 0, MIB as u32).unwrap();
    assert_eq!(&big[8192..8198], b"cached");
    assert_eq!(&big[16384..16389], b"again");
    assert!(big[..8192].iter().chain(&big[16389..]).all(|&b| b == 7));
    assert_eq!(fs::read(image.path().join("big")).unwrap(), vec![7u8; MIB as usize]);
    assert_eq!(fs::read(image.path().join("small")).unwrap(), b"image");
}

#[test]
fn a_journal_append_cut_short_by_a_full_disk_is_taken_back() {
    let small = SmallFs::new(4 * MIB);
    let image = image();
    let layers = small.path.join("layers");
    // No reserve: the filesystem itself says ENOSPC, in the middle of a journal line.
    let fs = open(&layers, image.path(), 0);
    // The journal's last page is partly used, so that a line can be cut short at its end.
    let mut made = vec!["first".to_owned()];
    fs.mkdir(ROOT_INO, OsStr::new("first"), 0o755, ROOT).unwrap();
    let filler = small.fill();

    let err = loop {
        let name = format!("{:0>200}", made.len());
        match fs.mkdir(ROOT_INO, OsStr::new(&name), 0o755, ROOT) {
            Ok(_) => made.push(name),
            Err(e) => break e,
        }
        assert!(made.len() < 100_000, "the journal never ran out of space");
    };
    assert_eq!(err.errno(), libc::ENOSPC, "{err}");

    // Without taking the cut line back, these two would land after it: the first glued to it,
    // the second on a line of its own, making the cut line corruption in the middle.
    fs::remove_file(filler).unwrap();
    fs.mkdir(ROOT_INO, OsStr::new("after"), 0o755, ROOT).unwrap();
    fs.mkdir(ROOT_INO, OsStr::new("after2"), 0o755, ROOT).unwrap();
    fs.fsyncdir(ROOT_INO).unwrap();
    drop(fs.into_stack());

    let fs = CowFs::new(LayerStack::open(&layers, image.path()).unwrap(), Options::default())
        .expect("the journal no longer replays after a failed append");
    let mut expected: Vec<String> =
        made.into_iter().chain(["after", "after2", "big", "small"].map(String::from)).collect();
    expected.sort();
    assert_eq!(names(&fs), expected);
}

#[test]
fn a_copy_up_or_write_that_hits_a_full_disk_leaves_nothing_behind() {
    let small = SmallFs::new(4 * MIB);
    let image = image();
    let layers = small.path.join("layers");
    let fs = open(&layers, image.path(), 0);
    let owned = fs.create(ROOT_INO, OsStr::new("owned"), 0o644, libc::O_RDWR, ROOT).unwrap().ino;
    fs.write(owned, 0, b"layer").unwrap();
    let big = ino(&fs, "big");
    fs.getattr(big).unwrap();
    let filler = small.fill();
    let before: Vec<_> = fs::read_dir(data_dir(&fs)).unwrap().map(|e| e.unwrap().file_name()).collect();

    // The first write into an image file needs a data file and a block map.
    assert_eq!(fs.write(big, 8192, &[9u8; 8192]).unwrap_err().errno(), libc::ENOSPC);
    // A write past the end of a layer file.
    assert_eq!(fs.write(owned, 5, &[1u8; 64 << 10]).unwrap_err().errno(), libc::ENOSPC);
    // An allocation.
    assert_eq!(fs.fallocate(owned, 0, MIB, 0).unwrap_err().errno(), libc::ENOSPC);
    assert_eq!(fs.getattr(owned).unwrap().size, 5);
    assert_eq!(fs::metadata(data_dir(&fs).join(owned.to_string())).unwrap().len(), 5);
    let after: Vec<_> = fs::read_dir(data_dir(&fs)).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(after, before, "a failed copy-up left files in the layer");
    assert_eq!(fs.read(big, 0, MIB as u32).unwrap(), vec![7u8; MIB as usize]);

    fs::remove_file(filler).unwrap();
    fs.write(big, 8192, &[9u8; 8192]).unwrap();
    fs.write(owned, 5, b"!").unwrap();
    fs.fsync(big, false).unwrap();
    fs.fsync(owned, false).unwrap();
    drop(fs.into_stack());

    let fs = open(&layers, image.path(), 0);
    let big = fs.read(ino(&fs, "big"), 0, MIB as u32).unwrap();
    assert!(big[..8192].iter().chain(&big[16384..]).all(|&b| b == 7));
    assert!(big[8192..16384].iter().all(|&b| b == 9));
    assert_eq!(fs.read(ino(&fs, "owned"), 0, 100).unwrap(), b"layer!");
}
