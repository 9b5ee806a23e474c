//! The layer stack through the library, without a kernel mount: checkpoint, revert and reset
//! bring back earlier states of the tree, and the reported sizes are what is on disk.

use std::ffi::OsStr;
use std::fs;
use std::path::Path;

use cowfs::{Caller, CowFs, LayerStack, Options, ROOT_INO};

const ROOT: Caller = Caller { uid: 0, gid: 0 };

fn image() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("big"), vec![7u8; 1 << 20]).unwrap();
    fs::create_dir(dir.path().join("sub")).unwrap();
    fs::write(dir.path().join("sub/small"), b"image").unwrap();
    dir
}

fn open(layers: &Path, image: &Path) -> CowFs {
    CowFs::new(LayerStack::open(layers, image).unwrap(), Options::default()).unwrap()
}

/// Resolves a relative path to an inode.
fn ino(fs: &CowFs, path: &str) -> u64 {
    path.split('/').fold(ROOT_INO, |dir, name| fs.lookup(dir, OsStr::new(name)).unwrap().ino)
}

fn read(fs: &CowFs, path: &str) -> Vec<u8> {
    let ino = ino(fs, path);
    fs.read(ino, 0, 1 << 24).unwrap()
}

fn names(fs: &CowFs, dir: &str) -> Vec<String> {
    let ino = if dir.is_empty() { ROOT_INO } else { ino(fs, dir) };
    fs.readdir(ino).unwrap().into_iter().map(|e| e.name.to_string_lossy().into_owned()).collect()
}

#[test]
fn checkpoint_revert_and_reset_bring_back_earlier_states() {
    let image = image();
    let layers = tempfile::tempdir().unwrap();

    // State A: one change over the image.
    let fs = open(layers.path(), image.path());
    fs.write(ino(&fs, "sub/small"), 0, b"A").unwrap();
    let mut stack = fs.into_stack();
    stack.checkpoint().unwrap();
    drop(stack);

    // State B: more changes in the new top layer.
    let fs = open(layers.path(), image.path());
    assert_eq!(read(&fs, "sub/small"), b"Amage");
    fs.write(ino(&fs, "sub/small"), 1, b"B").unwrap();
    fs.unlink(ROOT_INO, OsStr::new("big")).unwrap();
    fs.create(ROOT_INO, OsStr::new("new"), 0o644, libc::O_WRONLY, ROOT).unwrap();
    assert_eq!(names(&fs, ""), ["new", "sub"]);
    let mut stack = fs.into_stack();

    // Revert: back to A.
    stack.revert().unwrap();
    drop(stack);
    let fs = open(layers.path(), image.path());
    assert_eq!(read(&fs, "sub/small"), b"Amage");
    assert_eq!(names(&fs, ""), ["big", "sub"]);
    let mut stack = fs.into_stack();
    assert_eq!(stack.checkpoints(), 1);

    // Reset: back to the image.
    stack.reset().unwrap();
    drop(stack);
    let fs = open(layers.path(), image.path());
    assert_eq!(read(&fs, "sub/small"), b"image");
    assert_eq!(read(&fs, "big"), vec![7u8; 1 << 20]);
    assert_eq!(fs.stack().checkpoints(), 0);
    assert_eq!(fs::read(image.path().join("sub/small")).unwrap(), b"image");
}

#[test]
fn usage_counts_changed_blocks_and_logical_size_the_whole_tree() {
    let image = image();
    let layers = tempfile::tempdir().unwrap();
    let fs = open(layers.path(), image.path());
    let fresh = fs.stack().usage().unwrap().stored_bytes;
    assert_eq!(fs.logical_size().unwrap(), (1 << 20) + 5);

    // One page into the 1 MiB image file, and a new 100 KiB file.
    fs.write(ino(&fs, "big"), 512 << 10, &[1u8; 8192]).unwrap();
    let new = fs.create(ROOT_INO, OsStr::new("new"), 0o644, libc::O_WRONLY, ROOT).unwrap();
    fs.write(new.ino, 0, &vec![2u8; 100 << 10]).unwrap();
    fs.sync_all().unwrap();

    assert_eq!(fs.logical_size().unwrap(), (1 << 20) + 5 + (100 << 10));
    let used = fs.stack().usage().unwrap().stored_bytes - fresh;
    // 8 KiB + 100 KiB of data, plus a block map and a journal of a few blocks each.
    assert!(used >= 108 << 10, "only {used} bytes stored");
    assert!(used <= (108 + 64) << 10, "{used} bytes stored for 108 KiB of changes");
}

/// A branch: a new stack built on another's frozen layers shows that stack's checkpoint, and
/// the two go on apart; a reset of the branch lets go of the borrowed layers.
#[test]
fn a_stack_built_on_another_stacks_checkpoint_goes_its_own_way() {
    let image = image();
    let origin = tempfile::tempdir().unwrap();
    let branch = tempfile::tempdir().unwrap();

    let fs = open(origin.path(), image.path());
    fs.write(ino(&fs, "sub/small"), 0, b"O").unwrap();
    fs.create(ROOT_INO, OsStr::new("made"), 0o644, libc::O_WRONLY, ROOT).unwrap();
    fs.write(ino(&fs, "made"), 0, b"in the origin").unwrap();
    let mut stack = fs.into_stack();
    let frozen = stack.checkpoint().unwrap();
    drop(stack);
    // The origin goes on after its checkpoint.
    let fs = open(origin.path(), image.path());
    fs.write(ino(&fs, "sub/small"), 1, b"X").unwrap();
    drop(fs);

    let mut stack = LayerStack::open(branch.path(), image.path()).unwrap();
    let lower = cowfs::layers_up_to(origin.path(), frozen).unwrap();
    assert_eq!(lower, [cowfs::layer_path(origin.path(), frozen)]);
    stack.build_on(lower).unwrap();
    assert!(stack.build_on(vec![]).is_err(), "a stack is built on other layers once, when new");
    drop(stack);
    let fs = open(branch.path(), image.path());
    assert_eq!(read(&fs, "sub/small"), b"Omage", "the checkpoint's state, not the origin's later one");
    assert_eq!(read(&fs, "made"), b"in the origin");
    fs.write(ino(&fs, "made"), 0, b"IN").unwrap();
    fs.create(ROOT_INO, OsStr::new("branch-only"), 0o644, libc::O_WRONLY, ROOT).unwrap();
    drop(fs);

    let fs = open(origin.path(), image.path());
    assert_eq!(read(&fs, "made"), b"in the origin", "the branch's writes stay in the branch");
    assert_eq!(read(&fs, "sub/small"), b"OXage");
    assert!(!names(&fs, "").contains(&"branch-only".to_owned()));
    drop(fs);

    let fs = open(branch.path(), image.path());
    assert_eq!(read(&fs, "made"), b"IN the origin");
    let mut stack = fs.into_stack();
    stack.reset().unwrap();
    assert!(stack.lower().is_empty());
    drop(stack);
    let fs = open(branch.path(), image.path());
    assert_eq!(read(&fs, "sub/small"), b"image");
    assert_eq!(names(&fs, ""), ["big", "sub"]);
}
