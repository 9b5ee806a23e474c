//! A checkpoint of a mounted tree in use, through the mount's control socket: a file stays
//! open and written across it, and reverting to it afterwards brings back its state.
//!
//! These tests mount FUSE in process and must run as root with /dev/fuse: they fail, rather
//! than skip, without it.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::Path;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cowfs::{CowFs, LayerStack, MountConfig, Options};

const B: usize = cowfs::BLOCK_SIZE as usize;

fn require_fuse() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(root && Path::new("/dev/fuse").exists(), "these tests mount FUSE in process: they need root and /dev/fuse");
}

/// Mounts the layer directory over the image at `mountpoint`, served by a thread; the closure
/// unmounts it and waits for the server to finish.
fn serve(layers: &Path, image: &Path, mountpoint: &Path) -> impl FnOnce() {
    fs::create_dir_all(mountpoint).unwrap();
    let fs = CowFs::new(LayerStack::open(layers, image).unwrap(), Options::default()).unwrap();
    let config = MountConfig { threads: 2, ..MountConfig::default() };
    let mut mounted = cowfs::mount(fs, mountpoint, &config).unwrap();
    let mut unmounter = mounted.unmounter();
    let server: JoinHandle<io::Result<()>> = std::thread::spawn(move || mounted.run());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cowfs::is_live_mount(mountpoint) {
        assert!(Instant::now() < deadline, "the mount at {} did not come up", mountpoint.display());
        std::thread::sleep(Duration::from_millis(10));
    }
    move || {
        unmounter.unmount().unwrap();
        server.join().unwrap().unwrap();
    }
}

/// Drops the kernel's cached pages of a file, so that the next read asks the mount.
fn uncache(file: &fs::File) {
    file.sync_all().unwrap();
    // SAFETY: posix_fadvise on a descriptor we own.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0, "posix_fadvise: {}", io::Error::from_raw_os_error(rc));
}

fn read_all(file: &fs::File) -> Vec<u8> {
    let len = file.metadata().unwrap().len() as usize;
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, 0).unwrap();
    buf
}

#[test]
fn a_checkpoint_of_a_mount_in_use_is_what_revert_to_brings_back() {
    require_fuse();
    let work = tempfile::tempdir().unwrap();
    let image = work.path().join("image");
    fs::create_dir(&image).unwrap();
    let image_bytes: Vec<u8> = (0..4 * B).map(|i| (i % 251) as u8).collect();
    fs::write(image.join("base"), &image_bytes).unwrap();
    let layers = work.path().join("layer");
    let mountpoint = work.path().join("mnt");

    let unmount = serve(&layers, &image, &mountpoint);
    let control = layers.join("control");
    assert_eq!(fs::metadata(&control).unwrap().permissions().mode() & 0o777, 0o600);
    // One descriptor, open across the checkpoint, as a database keeps its files.
    let file =
        OpenOptions::new().read(true).write(true).create(true).truncate(true).open(mountpoint.join("data")).unwrap();
    file.write_all_at(&[b'1'; 3 * B], 0).unwrap();
    let base = OpenOptions::new().read(true).write(true).open(mountpoint.join("base")).unwrap();
    base.write_all_at(b"before", (B + 10) as u64).unwrap();
    let mut base_at_checkpoint = image_bytes.clone();
    base_at_checkpoint[B + 10..B + 16].copy_from_slice(b"before");
    // What the application synced is in the checkpoint.
    file.sync_all().unwrap();
    base.sync_all().unwrap();

    let id = cowfs::checkpoint_mounted(&layers, Duration::from_secs(60)).unwrap();

    file.write_all_at(&[b'2'; 100], (B + 10) as u64).unwrap();
    file.write_all_at(b"tail", (3 * B) as u64).unwrap();
    base.write_all_at(b"after", (B + 12) as u64).unwrap();
    fs::write(mountpoint.join("new"), b"new").unwrap();
    let mut expected = vec![b'1'; 3 * B];
    expected[B + 10..B + 110].fill(b'2');
    expected.extend_from_slice(b"tail");
    let mut base_expected = base_at_checkpoint.clone();
    base_expected[B + 12..B + 17].copy_from_slice(b"after");
    uncache(&file);
    uncache(&base);
    assert_eq!(read_all(&file), expected);
    assert_eq!(read_all(&base), base_expected);
    drop(file);
    drop(base);
    unmount();
    assert!(!control.exists(), "the control socket outlived the mount");
    let err = cowfs::checkpoint_mounted(&layers, Duration::from_secs(5)).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");

    // Mounted again as it is: the latest state.
    let unmount = serve(&layers, &image, &mountpoint);
    assert_eq!(fs::read(mountpoint.join("data")).unwrap(), expected);
    assert_eq!(fs::read(mountpoint.join("base")).unwrap(), base_expected);
    unmount();

    // Reverted to the checkpoint: its state.
    let mut stack = LayerStack::open(&layers, &image).unwrap();
    assert_eq!(stack.frozen_ids(), [id]);
    stack.revert_to(id).unwrap();
    drop(stack);
    let unmount = serve(&layers, &image, &mountpoint);
    assert_eq!(fs::read(mountpoint.join("data")).unwrap(), vec![b'1'; 3 * B]);
    assert_eq!(fs::read(mountpoint.join("base")).unwrap(), base_at_checkpoint);
    assert!(!mountpoint.join("new").exists());
    unmount();
    assert_eq!(fs::read(image.join("base")).unwrap(), image_bytes, "the image changed");
}

#[test]
fn checkpoints_under_concurrent_writers_lose_nothing() {
    require_fuse();
    let work = tempfile::tempdir().unwrap();
    let image = work.path().join("image");
    fs::create_dir(&image).unwrap();
    fs::write(image.join("base"), vec![0u8; 16 * B]).unwrap();
    let layers = work.path().join("layer");
    let mountpoint = work.path().join("mnt");
    let unmount = serve(&layers, &image, &mountpoint);

    // Two writers, each on its own half of the blocks, each block holding its last round.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let path = mountpoint.join("base");
            let stop = stop.clone();
            std::thread::spawn(move || {
                let file = OpenOptions::new().read(true).write(true).open(path).unwrap();
                let mut round = 0u8;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) || round < 3 {
                    round = round.wrapping_add(1);
                    for block in (w..16).step_by(2) {
                        file.write_all_at(&[round; B], (block * B) as u64).unwrap();
                    }
                    file.sync_data().unwrap();
                }
                round
            })
        })
        .collect();
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(cowfs::checkpoint_mounted(&layers, Duration::from_secs(60)).unwrap());
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rounds: Vec<u8> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    let expected: Vec<u8> = (0..16 * B).map(|i| rounds[(i / B) % 2]).collect();
    let file = fs::File::open(mountpoint.join("base")).unwrap();
    uncache(&file);
    assert_eq!(read_all(&file), expected);
    drop(file);
    unmount();

    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert_eq!(LayerStack::open(&layers, &image).unwrap().frozen_ids(), ids);
    let unmount = serve(&layers, &image, &mountpoint);
    assert_eq!(fs::read(mountpoint.join("base")).unwrap(), expected);
    unmount();
}
