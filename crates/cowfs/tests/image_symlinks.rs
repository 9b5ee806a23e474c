//! cowfs never follows a symlink in the image (doc/SEMANTICS.md, "Symlinks in the image"),
//! checked through `CowFs`'s own methods, without a mount: symlinks that point out of the
//! image, absolutely or with `..`, at a file or at a directory, whether they were in the
//! image from the start or planted later in place of a file or directory the tree already
//! knows. No operation ever returns a byte of a target, nor lists a target directory.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use cowfs::{Caller, CowFs, Kind, LayerStack, Options, SetAttr, ROOT_INO};

const ROOT: Caller = Caller { uid: 0, gid: 0 };
const SECRET: &[u8] = b"ROOT ONLY: the host's secret\n";
/// Enough of [`SECRET`] to recognise any part of it that leaks.
const MARK: &[u8] = b"ROOT ONLY";

struct World {
    _work: tempfile::TempDir,
    image: PathBuf,
    layers: PathBuf,
    outside: PathBuf,
}

/// A root-only file and directory outside the image, and an image with symlinks to them.
fn world() -> World {
    let work = tempfile::tempdir().unwrap();
    let outside = work.path().join("outside");
    fs::create_dir_all(outside.join("dir/inner")).unwrap();
    for file in ["secret", "dir/secret", "dir/inner/secret"] {
        fs::write(outside.join(file), SECRET).unwrap();
        fs::set_permissions(outside.join(file), fs::Permissions::from_mode(0o600)).unwrap();
    }
    fs::set_permissions(outside.join("dir"), fs::Permissions::from_mode(0o700)).unwrap();

    let image = work.path().join("image");
    fs::create_dir_all(image.join("sub/inner")).unwrap();
    fs::create_dir_all(image.join("d/inner")).unwrap();
    fs::write(image.join("f"), "image f\n").unwrap();
    fs::write(image.join("g"), vec![b'g'; 20000]).unwrap();
    fs::write(image.join("d/secret"), "image d/secret\n").unwrap();
    fs::write(image.join("d/inner/secret"), "image d/inner/secret\n").unwrap();
    fs::write(image.join("sub/inner/secret"), "image sub/inner/secret\n").unwrap();
    symlink(outside.join("secret"), image.join("evil")).unwrap();
    symlink("../outside/secret", image.join("evil_rel")).unwrap();
    symlink(outside.join("dir"), image.join("linkdir")).unwrap();
    symlink("../../outside/dir", image.join("sub/up")).unwrap();
    World { layers: work.path().join("layers"), _work: work, image, outside }
}

fn open(w: &World) -> cowfs::Result<CowFs> {
    CowFs::new(LayerStack::open(&w.layers, &w.image)?, Options::default())
}

fn ino(fs: &CowFs, path: &str) -> cowfs::Result<u64> {
    let mut ino = ROOT_INO;
    for name in path.split('/') {
        ino = fs.lookup(ino, OsStr::new(name))?.ino;
    }
    Ok(ino)
}

/// Reads a whole file through cowfs, opening and releasing a handle as the kernel would.
fn read(fs: &CowFs, path: &str) -> cowfs::Result<Vec<u8>> {
    let ino = ino(fs, path)?;
    fs.open(ino, libc::O_RDONLY)?;
    let bytes = fs.read(ino, 0, 1 << 20);
    fs.release(ino)?;
    bytes
}

fn assert_no_secret(what: &str, result: &cowfs::Result<Vec<u8>>) {
    if let Ok(bytes) = result {
        assert!(!bytes.windows(MARK.len()).any(|w| w == MARK), "{what} returned the target's bytes");
    }
}

/// Replaces an image entry with a symlink, as a writer of the image could.
fn plant(at: &Path, target: impl AsRef<Path>) {
    if fs::symlink_metadata(at).unwrap().is_dir() {
        fs::remove_dir_all(at).unwrap();
    } else {
        fs::remove_file(at).unwrap();
    }
    symlink(target, at).unwrap();
}

#[test]
fn symlinks_in_the_image_stay_symlinks_and_are_never_read_through() {
    let w = world();
    let fs = open(&w).unwrap();

    let kinds: Vec<(String, Kind)> =
        fs.readdir(ROOT_INO).unwrap().into_iter().map(|e| (e.name.to_string_lossy().into_owned(), e.kind)).collect();
    for link in ["evil", "evil_rel", "linkdir"] {
        assert!(kinds.contains(&(link.to_owned(), Kind::Symlink)), "{link} is not listed as a symlink: {kinds:?}");
    }

    // readlink gives the target's text, as a plain copy of the image would.
    for (link, target) in [
        ("evil", w.outside.join("secret")),
        ("evil_rel", "../outside/secret".into()),
        ("linkdir", w.outside.join("dir")),
        ("sub/up", "../../outside/dir".into()),
    ] {
        let attr = fs.getattr(ino(&fs, link).unwrap()).unwrap();
        assert_eq!(attr.kind, Kind::Symlink, "{link}");
        assert_eq!(attr.size, target.as_os_str().len() as u64, "{link}: the size is the target's length");
        assert_eq!(fs.readlink(attr.ino).unwrap(), target.as_os_str(), "{link}");
    }

    // Reading, writing or truncating a symlink is not reading its target.
    for link in ["evil", "evil_rel"] {
        let link_ino = ino(&fs, link).unwrap();
        let read = fs.read(link_ino, 0, 1 << 20);
        assert_no_secret(link, &read);
        assert!(read.is_err(), "reading symlink {link} gave {read:?}");
        assert!(fs.write(link_ino, 0, b"x").is_err());
        assert!(fs.setattr(link_ino, SetAttr { size: Some(0), ..SetAttr::default() }).is_err());
        assert!(fs.fallocate(link_ino, 0, 8192, 0).is_err());
    }

    // Names under a symlinked directory are not looked up, absolute or with `..`.
    for dir in ["linkdir", "sub/up"] {
        let dir_ino = ino(&fs, dir).unwrap();
        assert_eq!(fs.lookup(dir_ino, OsStr::new("secret")).unwrap_err().errno(), libc::ENOTDIR, "{dir}/secret");
        assert_eq!(fs.readdir(dir_ino).unwrap_err().errno(), libc::ENOTDIR, "listing {dir}");
        assert!(fs.create(dir_ino, OsStr::new("new"), 0o644, libc::O_WRONLY, ROOT).is_err());
    }
    assert_eq!(read(&fs, "f").unwrap(), b"image f\n");
    assert_eq!(fs::read(w.outside.join("secret")).unwrap(), SECRET, "the target changed");
}

#[test]
fn a_symlink_planted_over_a_known_file_is_not_followed() {
    let w = world();
    let fs = open(&w).unwrap();
    // The tree knows `f` and `g` as files with their attributes; their handles are closed.
    assert_eq!(read(&fs, "f").unwrap(), b"image f\n");
    let g = ino(&fs, "g").unwrap();
    fs.getattr(g).unwrap();

    plant(&w.image.join("f"), w.outside.join("secret"));
    plant(&w.image.join("g"), "../outside/secret");

    // Opening the image file again now meets a symlink: refused, never read through.
    let result = read(&fs, "f");
    assert_no_secret("f", &result);
    assert!(result.is_err(), "f read as {result:?}");
    // A write copies the rest of the block up from the image: it must not copy the target.
    fs.open(g, libc::O_RDWR).unwrap();
    let result = fs.write(g, 100, b"clone");
    assert!(result.is_err(), "a write over the planted symlink was accepted: {result:?}");
    assert_no_secret("g", &fs.read(g, 0, 1 << 20));
    fs.release(g).unwrap();
}

#[test]
fn a_symlink_planted_over_a_known_directory_is_not_followed() {
    let w = world();
    let fs = open(&w).unwrap();
    // `d` is known as a directory, not yet listed; under `sub`, `inner/secret` is known as a
    // file whose attributes were read, before `sub/inner` is swapped for a symlink.
    let d = ino(&fs, "d").unwrap();
    let inner_secret = ino(&fs, "sub/inner/secret").unwrap();

    plant(&w.image.join("d"), w.outside.join("dir"));
    plant(&w.image.join("sub/inner"), "../../outside/dir/inner");

    let listing = fs.readdir(d);
    assert!(listing.is_err(), "the planted directory was listed: {listing:?}");
    assert!(fs.lookup(d, OsStr::new("secret")).is_err());
    fs.open(inner_secret, libc::O_RDONLY).unwrap();
    let result = fs.read(inner_secret, 0, 1 << 20);
    assert_no_secret("sub/inner/secret", &result);
    assert!(result.is_err(), "read through a planted directory symlink: {result:?}");
    fs.release(inner_secret).unwrap();
}

#[test]
fn a_journal_naming_a_path_through_a_planted_symlink_is_refused() {
    let w = world();
    let fs = open(&w).unwrap();
    // Changing one block of `d/inner/secret` adopts it: the journal names the image path.
    let file = ino(&fs, "d/inner/secret").unwrap();
    fs.open(file, libc::O_RDWR).unwrap();
    fs.setattr(file, SetAttr { size: Some(30000), ..SetAttr::default() }).unwrap();
    fs.write(file, 16384, b"clone").unwrap();
    fs.release(file).unwrap();
    drop(fs.into_stack());

    // Now `d` leads out of the image. Replaying the journal must not follow it to stat (let
    // alone read) the file at the same path outside: the entry it names is gone from the
    // image, and the mount says so.
    plant(&w.image.join("d"), w.outside.join("dir"));
    let err = open(&w).err().expect("a journal naming a path through a symlink was replayed");
    assert!(err.to_string().contains("the image lacks"), "{err}");
}
