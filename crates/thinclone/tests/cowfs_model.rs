//! Reference-model tests of cowfs: random sequences of file operations run against a real
//! `thinclone mount` and against a plain copy of the image on the host filesystem (the
//! reference), comparing every result, errno and, at the end, the whole tree. Some sequences
//! kill the server with SIGKILL at random points and remount: everything a returned call did
//! must survive, except writes still in the kernel's cache on a handle that was not fsynced.
//!
//! Every failure proptest has minimised is kept below as a `regression_*` test.

mod support;

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use support::{copy_tree, diff, snapshot, Mount};

/// Paths the operations pick from: few enough that operations collide, some present in the
/// image and some not, nested so that directory renames move subtrees.
const PATHS: &[&str] = &["f0", "f1", "big", "d0", "d1", "d0/f0", "d0/f1", "d0/d2", "d0/d2/f0", "d1/f2", "s0"];
const HANDLES: usize = 3;

#[derive(Debug, Clone)]
enum Op {
    Write {
        path: usize,
        offset: u64,
        len: usize,
        seed: u8,
    },
    Append {
        path: usize,
        len: usize,
        seed: u8,
    },
    Read {
        path: usize,
        offset: u64,
        len: usize,
    },
    Truncate {
        path: usize,
        size: u64,
    },
    Create {
        path: usize,
        exclusive: bool,
        truncate: bool,
    },
    Unlink {
        path: usize,
    },
    Mkdir {
        path: usize,
    },
    Rmdir {
        path: usize,
    },
    Rename {
        from: usize,
        to: usize,
    },
    Symlink {
        target: usize,
        path: usize,
    },
    Readlink {
        path: usize,
    },
    Chmod {
        path: usize,
        mode: u32,
    },
    Stat {
        path: usize,
    },
    ReadDir {
        path: usize,
    },
    Fsync {
        path: usize,
    },
    FsyncDir {
        path: usize,
    },
    Fallocate {
        path: usize,
        offset: u64,
        len: u64,
    },
    Open {
        slot: usize,
        path: usize,
    },
    HandleWrite {
        slot: usize,
        offset: u64,
        len: usize,
        seed: u8,
    },
    HandleRead {
        slot: usize,
        offset: u64,
        len: usize,
    },
    HandleTruncate {
        slot: usize,
        size: u64,
    },
    HandleFsync {
        slot: usize,
    },
    Close {
        slot: usize,
    },
    /// SIGKILL the server and remount.
    Kill,
}

fn offset() -> impl Strategy<Value = u64> {
    prop_oneof![0..20_000u64, (0..10u64).prop_map(|b| b * 8192), 60_000..140_000u64]
}

fn len() -> impl Strategy<Value = usize> {
    prop_oneof![1..100usize, 1..20_000usize, Just(8192)]
}

fn op(with_kill: bool) -> impl Strategy<Value = Op> {
    let p = || 0..PATHS.len();
    let slot = || 0..HANDLES;
    let ops = prop_oneof![
        8 => (p(), offset(), len(), any::<u8>()).prop_map(|(path, offset, len, seed)| Op::Write { path, offset, len, seed }),
        2 => (p(), len(), any::<u8>()).prop_map(|(path, len, seed)| Op::Append { path, len, seed }),
        6 => (p(), offset(), len()).prop_map(|(path, offset, len)| Op::Read { path, offset, len }),
        4 => (p(), offset()).prop_map(|(path, size)| Op::Truncate { path, size }),
        4 => (p(), any::<bool>(), any::<bool>()).prop_map(|(path, exclusive, truncate)| Op::Create { path, exclusive, truncate }),
        3 => p().prop_map(|path| Op::Unlink { path }),
        3 => p().prop_map(|path| Op::Mkdir { path }),
        2 => p().prop_map(|path| Op::Rmdir { path }),
        4 => (p(), p()).prop_map(|(from, to)| Op::Rename { from, to }),
        1 => (p(), p()).prop_map(|(target, path)| Op::Symlink { target, path }),
        1 => p().prop_map(|path| Op::Readlink { path }),
        1 => (p(), prop_oneof![Just(0o600u32), Just(0o644), Just(0o755), Just(0o700), Just(0o4711)]).prop_map(|(path, mode)| Op::Chmod { path, mode }),
        2 => p().prop_map(|path| Op::Stat { path }),
        2 => p().prop_map(|path| Op::ReadDir { path }),
        2 => p().prop_map(|path| Op::Fsync { path }),
        1 => p().prop_map(|path| Op::FsyncDir { path }),
        1 => (p(), offset(), 1..30_000u64).prop_map(|(path, offset, len)| Op::Fallocate { path, offset, len }),
        3 => (slot(), p()).prop_map(|(slot, path)| Op::Open { slot, path }),
        4 => (slot(), offset(), len(), any::<u8>()).prop_map(|(slot, offset, len, seed)| Op::HandleWrite { slot, offset, len, seed }),
        3 => (slot(), offset(), len()).prop_map(|(slot, offset, len)| Op::HandleRead { slot, offset, len }),
        1 => (slot(), offset()).prop_map(|(slot, size)| Op::HandleTruncate { slot, size }),
        2 => slot().prop_map(|slot| Op::HandleFsync { slot }),
        2 => slot().prop_map(|slot| Op::Close { slot }),
    ];
    let kill_weight = if with_kill { 1 } else { 0 };
    prop_oneof![60 => ops, kill_weight => Just(Op::Kill)]
}

fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| seed.wrapping_add((i * 7 % 251) as u8)).collect()
}

/// An open file on both sides, with where it now lives (renames move it, unlink clears it).
struct Handle {
    model: File,
    mount: File,
    path: Option<String>,
    unsynced: bool,
}

struct Harness {
    pristine: PathBuf,
    model: PathBuf,
    mount: Mount,
    handles: Vec<Option<Handle>>,
    ops_done: usize,
    // Last: fields drop in order, and the directory must outlive the mount.
    _dir: tempfile::TempDir,
}

/// The result of an operation as compared between the two sides.
type Outcome = Result<String, i32>;

fn errno(e: io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

impl Harness {
    fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("image");
        fs::create_dir_all(image.join("d0/d2")).unwrap();
        fs::create_dir_all(image.join("d1")).unwrap();
        fs::write(image.join("f0"), bytes(30_000, 1)).unwrap();
        fs::write(image.join("d0/f1"), bytes(12_345, 2)).unwrap();
        fs::write(image.join("d0/d2/f0"), bytes(100, 3)).unwrap();
        fs::write(image.join("big"), bytes(200_000, 4)).unwrap();
        std::os::unix::fs::symlink("d0/f1", image.join("s0")).unwrap();
        let pristine = dir.path().join("pristine");
        copy_tree(&image, &pristine);
        let model = dir.path().join("model");
        copy_tree(&image, &model);
        let mount = Mount::start(&image, &dir.path().join("layer"), &dir.path().join("mnt"), &[]);
        Harness { _dir: dir, pristine, model, mount, handles: (0..HANDLES).map(|_| None).collect(), ops_done: 0 }
    }

    fn sides(&self, path: usize) -> (PathBuf, PathBuf) {
        (self.model.join(PATHS[path]), self.mount.mountpoint.join(PATHS[path]))
    }

    /// Runs `f` on both sides and checks they agree.
    fn both(&self, op: &Op, path: usize, f: impl Fn(&Path) -> io::Result<String>) -> Result<(), TestCaseError> {
        let (model, mount) = self.sides(path);
        let expected: Outcome = f(&model).map_err(errno);
        let actual: Outcome = f(&mount).map_err(errno);
        prop_assert_eq!(&actual, &expected, "after {} ops, {:?}", self.ops_done, op);
        Ok(())
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match *op {
            Op::Write { path, offset, len, seed } => self.both(op, path, |p| {
                let f = OpenOptions::new().write(true).open(p)?;
                f.write_all_at(&bytes(len, seed), offset)?;
                Ok(String::new())
            })?,
            Op::Append { path, len, seed } => self.both(op, path, |p| {
                use std::io::Write;
                let mut f = OpenOptions::new().append(true).open(p)?;
                f.write_all(&bytes(len, seed))?;
                Ok(String::new())
            })?,
            Op::Read { path, offset, len } => self.both(op, path, |p| {
                let f = File::open(p)?;
                let mut buf = vec![0u8; len];
                let n = f.read_at(&mut buf, offset)?;
                Ok(format!("{n} bytes, digest {:x}", digest(&buf[..n])))
            })?,
            Op::Truncate { path, size } => self.both(op, path, |p| {
                OpenOptions::new().write(true).open(p)?.set_len(size)?;
                Ok(String::new())
            })?,
            Op::Create { path, exclusive, truncate } => self.both(op, path, |p| {
                let mut o = OpenOptions::new();
                o.write(true).mode(0o640);
                if exclusive {
                    o.create_new(true);
                } else {
                    o.create(true);
                }
                o.truncate(truncate);
                o.open(p)?;
                Ok(String::new())
            })?,
            Op::Unlink { path } => {
                self.both(op, path, |p| fs::remove_file(p).map(|_| String::new()))?;
                self.forget_path(PATHS[path]);
            }
            Op::Mkdir { path } => self.both(op, path, |p| fs::create_dir(p).map(|_| String::new()))?,
            Op::Rmdir { path } => self.both(op, path, |p| fs::remove_dir(p).map(|_| String::new()))?,
            Op::Rename { from, to } => {
                let (mf, nf) = self.sides(from);
                let (mt, nt) = self.sides(to);
                let expected: Outcome = fs::rename(&mf, &mt).map(|_| String::new()).map_err(errno);
                let actual: Outcome = fs::rename(&nf, &nt).map(|_| String::new()).map_err(errno);
                prop_assert_eq!(&actual, &expected, "after {} ops, {:?}", self.ops_done, op);
                if expected.is_ok() && from != to {
                    self.forget_path(PATHS[to]);
                    self.move_handles(PATHS[from], PATHS[to]);
                }
            }
            Op::Symlink { target, path } => self.both(op, path, |p| {
                std::os::unix::fs::symlink(PATHS[target], p)?;
                Ok(String::new())
            })?,
            Op::Readlink { path } => self.both(op, path, |p| Ok(fs::read_link(p)?.display().to_string()))?,
            Op::Chmod { path, mode } => self.both(op, path, |p| {
                fs::set_permissions(p, fs::Permissions::from_mode(mode))?;
                Ok(String::new())
            })?,
            Op::Stat { path } => self.both(op, path, |p| {
                let m = fs::symlink_metadata(p)?;
                use std::os::unix::fs::MetadataExt;
                let size = if m.is_dir() { 0 } else { m.len() };
                Ok(format!("{:?} size {size} mode {:o}", m.file_type(), m.mode() & 0o7777))
            })?,
            Op::ReadDir { path } => self.both(op, path, |p| {
                let mut names: Vec<_> =
                    fs::read_dir(p)?.map(|e| e.map(|e| e.file_name())).collect::<io::Result<_>>()?;
                names.sort();
                Ok(format!("{names:?}"))
            })?,
            Op::Fsync { path } => {
                self.both(op, path, |p| {
                    File::open(p)?.sync_all()?;
                    Ok(String::new())
                })?;
            }
            Op::FsyncDir { path } => self.both(op, path, |p| {
                File::open(p)?.sync_all()?;
                Ok(String::new())
            })?,
            Op::Fallocate { path, offset, len } => self.both(op, path, |p| {
                let f = OpenOptions::new().write(true).open(p)?;
                let rc = unsafe { libc::fallocate(std::os::fd::AsRawFd::as_raw_fd(&f), 0, offset as i64, len as i64) };
                if rc != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(String::new())
            })?,
            Op::Open { slot, path } => {
                let (m, n) = self.sides(path);
                let open = |p: &Path| OpenOptions::new().read(true).write(true).open(p);
                match (open(&m), open(&n)) {
                    (Ok(model), Ok(mount)) => {
                        // Track the file by its real path (the open may have followed `s0`).
                        let real = fs::canonicalize(&m).unwrap();
                        let real = real.strip_prefix(fs::canonicalize(&self.model).unwrap()).unwrap();
                        let path = Some(real.to_str().unwrap().to_string());
                        self.handles[slot] = Some(Handle { model, mount, path, unsynced: false });
                    }
                    (Err(e), Err(a)) => prop_assert_eq!(errno(a), errno(e), "{:?}", op),
                    (e, a) => prop_assert!(false, "{:?}: model {:?}, mount {:?}", op, e.map(|_| ()), a.map(|_| ())),
                }
            }
            Op::HandleWrite { slot, offset, len, seed } => {
                if let Some(h) = &mut self.handles[slot] {
                    let data = bytes(len, seed);
                    let expected = h.model.write_all_at(&data, offset).map_err(errno);
                    let actual = h.mount.write_all_at(&data, offset).map_err(errno);
                    h.unsynced = true;
                    prop_assert_eq!(actual, expected, "{:?}", op);
                }
            }
            Op::HandleRead { slot, offset, len } => {
                if let Some(h) = &self.handles[slot] {
                    let read = |f: &File| {
                        let mut buf = vec![0u8; len];
                        f.read_at(&mut buf, offset).map(|n| buf[..n].to_vec()).map_err(errno)
                    };
                    let (expected, actual) = (read(&h.model), read(&h.mount));
                    prop_assert!(actual == expected, "{:?}: contents differ", op);
                }
            }
            Op::HandleTruncate { slot, size } => {
                if let Some(h) = &mut self.handles[slot] {
                    let expected = h.model.set_len(size).map_err(errno);
                    let actual = h.mount.set_len(size).map_err(errno);
                    prop_assert_eq!(actual, expected, "{:?}", op);
                }
            }
            Op::HandleFsync { slot } => {
                if let Some(h) = &mut self.handles[slot] {
                    h.model.sync_all().unwrap();
                    prop_assert_eq!(h.mount.sync_all().map_err(errno), Ok(()), "{:?}", op);
                    h.unsynced = false;
                }
            }
            Op::Close { slot } => {
                self.handles[slot] = None;
            }
            Op::Kill => self.kill()?,
        }
        self.ops_done += 1;
        Ok(())
    }

    /// A path was unlinked or replaced: handles on it now refer to an unlinked file.
    fn forget_path(&mut self, path: &str) {
        for h in self.handles.iter_mut().flatten() {
            if h.path.as_deref() == Some(path) {
                h.path = None;
            }
        }
    }

    fn move_handles(&mut self, from: &str, to: &str) {
        for h in self.handles.iter_mut().flatten() {
            if let Some(p) = &h.path {
                if p == from {
                    h.path = Some(to.to_string());
                } else if let Some(rest) = p.strip_prefix(&format!("{from}/")) {
                    h.path = Some(format!("{to}/{rest}"));
                }
            }
        }
    }

    /// SIGKILLs the server and remounts. Writes on handles that were not fsynced may be lost
    /// (they may still have been in the kernel's writeback cache): those files are taken as
    /// the mount has them. Everything else must be exactly as before.
    fn kill(&mut self) -> Result<(), TestCaseError> {
        let uncertain: Vec<String> =
            self.handles.iter().flatten().filter(|h| h.unsynced).filter_map(|h| h.path.clone()).collect();
        for h in &mut self.handles {
            *h = None;
        }
        self.mount.kill_and_remount();
        for path in &uncertain {
            let (model, mount) = (self.model.join(path), self.mount.mountpoint.join(path));
            match (fs::read(&model), fs::read(&mount)) {
                (Ok(_), Ok(contents)) => fs::write(&model, contents).unwrap(),
                (Ok(_), Err(e)) => return Err(TestCaseError::fail(format!("{path} lost after kill: {e}"))),
                (Err(e), _) => panic!("harness error: handle path {path} is not in the model: {e}"),
            }
        }
        self.compare_trees("after kill -9 and remount")
    }

    fn compare_trees(&self, when: &str) -> Result<(), TestCaseError> {
        let expected = snapshot(&self.model);
        let actual = snapshot(&self.mount.mountpoint);
        if let Some(d) = diff(&expected, &actual) {
            return Err(TestCaseError::fail(format!("{when}, after {} ops:\n{d}", self.ops_done)));
        }
        Ok(())
    }

    /// The end of a run: the trees agree, still agree after a clean remount, and the image is
    /// untouched.
    fn finish(mut self) -> Result<(), TestCaseError> {
        for h in &mut self.handles {
            *h = None;
        }
        self.compare_trees("at the end")?;
        self.mount.restart();
        self.compare_trees("after a clean remount")?;
        self.mount.stop();
        let image = snapshot(&self.mount.image);
        if let Some(d) = diff(&snapshot(&self.pristine), &image) {
            return Err(TestCaseError::fail(format!("the image changed:\n{d}")));
        }
        Ok(())
    }
}

fn digest(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x100000001b3))
}

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let mut harness = Harness::new();
    for op in ops {
        harness.apply(op)?;
    }
    harness.finish()
}

fn cases(default: u32) -> u32 {
    std::env::var("COWFS_MODEL_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(24), max_shrink_iters: 400, ..ProptestConfig::default() })]

    #[test]
    fn mount_matches_a_plain_copy(ops in proptest::collection::vec(op(false), 150..300)) {
        support::require_fuse("mount_matches_a_plain_copy");
        run(&ops)?;
    }

    #[test]
    fn mount_survives_kill_9(ops in proptest::collection::vec(op(true), 150..300)) {
        support::require_fuse("mount_survives_kill_9");
        run(&ops)?;
    }
}

/// Runs a fixed sequence, for regression tests.
fn regression(ops: &[Op]) {
    support::require_fuse("regression");
    if let Err(e) = run(ops) {
        panic!("{e}");
    }
}

#[test]
fn regression_shrink_then_grow_reads_zeros() {
    regression(&[
        Op::Truncate { path: 2, size: 10_000 },
        Op::Truncate { path: 2, size: 120_000 },
        Op::Read { path: 2, offset: 9_000, len: 20_000 },
    ]);
}

#[test]
fn regression_rename_image_dir_then_write_inside() {
    regression(&[
        Op::Rename { from: 3, to: 4 },
        Op::Write { path: 4, offset: 0, len: 10, seed: 1 },
        Op::Write { path: 0, offset: 0, len: 10, seed: 1 },
        Op::ReadDir { path: 4 },
        Op::Kill,
    ]);
}

#[test]
fn regression_unlinked_open_file_keeps_working() {
    regression(&[
        Op::Open { slot: 0, path: 0 },
        Op::Unlink { path: 0 },
        Op::HandleWrite { slot: 0, offset: 100, len: 9000, seed: 3 },
        Op::HandleRead { slot: 0, offset: 0, len: 20_000 },
        Op::Create { path: 0, exclusive: true, truncate: false },
        Op::Close { slot: 0 },
        Op::Kill,
    ]);
}

/// A `drop` record for an inode number that was never adopted did not raise the inode
/// high-water mark: after a remount the number went to another file, and replaying the old
/// `drop` deleted that file's data.
#[test]
fn regression_inode_numbers_are_not_reused_after_a_drop() {
    regression(&[
        Op::Rename { from: 6, to: 9 },
        Op::Unlink { path: 8 },
        Op::Kill,
        Op::Write { path: 0, offset: 0, len: 1, seed: 2 },
        Op::Kill,
        Op::Write { path: 0, offset: 0, len: 1, seed: 0 },
        Op::Kill,
    ]);
}

/// An image file whose attributes were journaled lost its size after a remount: the image's
/// size was only read along with the attributes.
#[test]
fn regression_journaled_attributes_keep_the_image_size() {
    regression(&[Op::Chmod { path: 2, mode: 0o600 }, Op::Rename { from: 2, to: 6 }, Op::Kill, Op::Stat { path: 6 }]);
}
