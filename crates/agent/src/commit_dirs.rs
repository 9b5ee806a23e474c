//! Commit directories of a cowfs clone: the directories its engine syncs on every commit
//! (a write-ahead log, [`engine::Engine::commit_dirs`]) kept on the host's filesystem,
//! inside the clone's own directory, instead of in the cowfs layer.
//!
//! Through FUSE every `fdatasync` is a round trip to the mount process, and a commit is
//! little else than a log write and its sync: with the log in the layer a clone's read-write
//! speed was 0.65–0.79 of a full copy's (BENCHMARKS.md). Kept here, a commit waits for the
//! disk and nothing else, while the data files, which a database writes back in the
//! background, stay page-granular in the layer. The log is bounded (the engine removes or
//! reuses old files), so it costs a clone what its own log costs, no more.
//!
//! ```text
//! clones/<name>/
//!   layer/              the cowfs layer: the data directory's changes
//!   data/               the mount; data/<dir> is a symlink `../native/<dir>` in the layer
//!   native/             root's, 0711: only a way through
//!     <dir>/            the clone's uid's, 0700: the log itself, on the host's filesystem
//!     .placing          present while the layer is being changed to point here
//! ```
//!
//! Placing a directory, when a clone is made or reset (its layer then shows the image's
//! directory): copy the image's directory sparsely (a fresh log segment is mostly zeros, so
//! the copy takes a few KiB) to `native/<dir>.new`, sync it and rename it into place; write
//! `.placing`; then in the layer, through cowfs without a mount, rename the image's
//! directory aside, make the symlink, remove what was set aside, sync the layer, and remove
//! `.placing`. A crash at any step leaves a state that [`finish`] completes at the next
//! attach: with `.placing` there the copy is whole, and every layer step can be redone.
//! A crash before `.placing` is written leaves the layer showing the image's directory and
//! the clone runs with its log in the layer, slower but correct; the next reset places it.
//!
//! A clone's checkpoint (a frozen layer) is consistent with its log only if the log is
//! captured after the layer is frozen: data pages never run ahead of the log that describes
//! them, so a log newer than the data is what crash recovery expects.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use cowfs::{Caller, CowFs, Ino, Kind, LayerStack, ROOT_INO};

/// Where a clone's commit directories live, beside its layer.
pub fn native_dir(clone_dir: &Path) -> PathBuf {
    clone_dir.join("native")
}

fn placing_marker(clone_dir: &Path) -> PathBuf {
    native_dir(clone_dir).join(".placing")
}

/// The name an image's directory has in the layer while it is being replaced.
fn aside_name(base: &std::ffi::OsStr) -> std::ffi::OsString {
    let mut name = std::ffi::OsString::from(".thinclone-aside-");
    name.push(base);
    name
}

/// The symlink's target, relative to the directory holding the link inside the mount:
/// `log` → `../native/log`, `a/b` → `../../native/a/b`. Relative, so that a clone's
/// directory can move with the agent's.
fn link_target(name: &Path) -> PathBuf {
    let mut target = PathBuf::new();
    for _ in name.components() {
        target.push("..");
    }
    target.join("native").join(name)
}

/// A commit directory's name: relative, plain components only.
fn checked(name: &str) -> io::Result<&Path> {
    let path = Path::new(name);
    if name.is_empty() || !path.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a commit directory {name:?} is not a plain relative path"),
        ));
    }
    Ok(path)
}

fn cow(e: cowfs::Error) -> io::Error {
    io::Error::other(e)
}

/// Places `names` for a clone whose layer shows the image's directories: just made, or just
/// reset. A directory the image lacks is skipped.
pub fn place(image: &Path, layer: &Path, clone_dir: &Path, names: &[&str]) -> io::Result<()> {
    if names.is_empty() {
        return Ok(());
    }
    let native = native_dir(clone_dir);
    fs::create_dir_all(&native)?;
    fs::set_permissions(&native, fs::Permissions::from_mode(0o711))?;
    for name in names {
        let name = checked(name)?;
        let from = image.join(name);
        if !fs::symlink_metadata(&from).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        let to = native.join(name);
        let fresh = path_with_suffix(&to, ".new");
        let old = path_with_suffix(&to, ".old");
        crate::driver::stop_copies_into(&fresh);
        sys::tree::remove(&fresh)?;
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent)?;
        }
        sys::tree::copy_sparse(&from, &fresh).map_err(io::Error::other)?;
        sys::crashsafe::sync_tree(&fresh)?;
        sys::crashsafe::swap_in_dir(&fresh, &to, &old)?;
    }
    sys::crashsafe::replace_file(&placing_marker(clone_dir), b"")?;
    finish(image, layer, clone_dir, names)
}

/// Completes a placement a crash interrupted; does nothing (and opens nothing) when none
/// was under way. Called before every mount.
pub fn finish(image: &Path, layer: &Path, clone_dir: &Path, names: &[&str]) -> io::Result<()> {
    let marker = placing_marker(clone_dir);
    if names.is_empty() || !marker.exists() {
        return Ok(());
    }
    let stack = LayerStack::open(layer, image).map_err(cow)?;
    let fs = CowFs::new(stack, cowfs::Options { owner: None }).map_err(cow)?;
    for name in names {
        let name = checked(name)?;
        if native_dir(clone_dir).join(name).is_dir() {
            link_in_layer(&fs, name)?;
        }
    }
    fs.sync_all().map_err(cow)?;
    drop(fs);
    sys::crashsafe::remove_file(&marker)
}

/// Copies the clone's commit directories into `into/native/` for a checkpoint, while
/// nothing writes to them.
pub fn capture(clone_dir: &Path, into: &Path, names: &[&str]) -> io::Result<()> {
    for name in names {
        let name = checked(name)?;
        let from = native_dir(clone_dir).join(name);
        if !from.is_dir() {
            continue;
        }
        let to = native_dir(into).join(name);
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent)?;
        }
        sys::tree::copy_sparse(&from, &to).map_err(io::Error::other)?;
    }
    Ok(())
}

/// Puts the commit directories a checkpoint captured (`from/native/`) in place of the
/// clone's, each whole and durably; running it again after a crash finishes it.
pub fn restore(clone_dir: &Path, from: &Path, names: &[&str]) -> io::Result<()> {
    let native = native_dir(clone_dir);
    if !native.is_dir() {
        fs::create_dir_all(&native)?;
        fs::set_permissions(&native, fs::Permissions::from_mode(0o711))?;
    }
    for name in names {
        let name = checked(name)?;
        let saved = native_dir(from).join(name);
        if !saved.is_dir() {
            continue;
        }
        let to = native_dir(clone_dir).join(name);
        let fresh = path_with_suffix(&to, ".new");
        let old = path_with_suffix(&to, ".old");
        // A copy an agent killed meanwhile left running would write on into it.
        crate::driver::stop_copies_into(&fresh);
        sys::tree::remove(&fresh)?;
        sys::tree::copy_sparse(&saved, &fresh).map_err(io::Error::other)?;
        sys::crashsafe::sync_tree(&fresh)?;
        sys::crashsafe::swap_in_dir(&fresh, &to, &old)?;
    }
    Ok(())
}

/// Gives the clone's commit directories to its OS user, as the mount presents its files.
pub fn give_to(clone_dir: &Path, names: &[&str], uid: u32, gid: u32) -> io::Result<()> {
    for name in names {
        let dir = native_dir(clone_dir).join(checked(name)?);
        if dir.is_dir() {
            // Never follows a symlink the clone's user planted there.
            sys::tree::chown(&dir, uid, gid)?;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
        }
    }
    Ok(())
}

/// Bytes the clone's commit directories take on disk.
pub fn disk_usage(clone_dir: &Path) -> io::Result<u64> {
    match sys::tree::disk_usage(&native_dir(clone_dir)) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        other => other,
    }
}

fn path_with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn lookup(fs: &CowFs, parent: Ino, name: &std::ffi::OsStr) -> io::Result<Option<cowfs::Attr>> {
    match fs.lookup(parent, name) {
        Ok(attr) => Ok(Some(attr)),
        Err(cowfs::Error::NotFound) => Ok(None),
        Err(e) => Err(cow(e)),
    }
}

/// In the layer: the image's directory `name` set aside, the symlink in its place, and what
/// was set aside removed. Each step is redone or skipped as the layer shows it done.
fn link_in_layer(fs: &CowFs, name: &Path) -> io::Result<()> {
    let root = Caller { uid: 0, gid: 0 };
    let mut parent = ROOT_INO;
    if let Some(dirs) = name.parent() {
        for part in dirs.iter() {
            match lookup(fs, parent, part)? {
                Some(attr) if attr.kind == Kind::Dir => parent = attr.ino,
                _ => return Ok(()),
            }
        }
    }
    let base = name.file_name().expect("a checked name has a last component");
    let aside = aside_name(base);
    let kind = lookup(fs, parent, base)?.map(|a| a.kind);
    if kind == Some(Kind::Dir) {
        // An aside left by an earlier try would be in the rename's way.
        remove_in_layer(fs, parent, &aside)?;
        fs.rename(parent, base, parent, &aside, 0).map_err(cow)?;
    }
    // Anything but the image's directory or nothing is already a link (or something the
    // clone's user made of it): left as it is.
    if matches!(kind, Some(Kind::Dir) | None) {
        fs.symlink(parent, base, link_target(name).as_os_str(), root).map_err(cow)?;
    }
    remove_in_layer(fs, parent, &aside)
}

/// Removes the entry `name` of `parent` in the layer, a directory with all it holds.
fn remove_in_layer(fs: &CowFs, parent: Ino, name: &std::ffi::OsStr) -> io::Result<()> {
    let Some(attr) = lookup(fs, parent, name)? else { return Ok(()) };
    if attr.kind != Kind::Dir {
        return fs.unlink(parent, name).map_err(cow);
    }
    for entry in fs.readdir(attr.ino).map_err(cow)? {
        if entry.name == "." || entry.name == ".." {
            continue;
        }
        remove_in_layer(fs, attr.ino, &entry.name)?;
    }
    fs.rmdir(parent, name).map_err(cow)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_climb_out_of_the_mount() {
        assert_eq!(link_target(Path::new("wal_dir")), Path::new("../native/wal_dir"));
        assert_eq!(link_target(Path::new("a/b")), Path::new("../../native/a/b"));
        assert!(checked("../x").is_err());
        assert!(checked("/x").is_err());
        assert!(checked("").is_err());
        assert!(checked("a/./b").is_ok());
    }

    /// A placement on a real layer: the image's directory is replaced by a link, the copy is
    /// sparse and whole, the image is untouched, and a crash after the copy (the marker
    /// left) is completed by `finish`.
    #[test]
    fn placing_links_a_sparse_copy_and_survives_an_interruption() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("image");
        fs::create_dir_all(image.join("wal_dir/archive_status")).unwrap();
        let mut segment = vec![0u8; 16 << 20];
        segment[..8192].fill(3);
        fs::write(image.join("wal_dir/000000010000000000000002"), &segment).unwrap();
        fs::write(image.join("VERSION"), "15\n").unwrap();
        let clone = dir.path().join("clone");
        fs::create_dir_all(&clone).unwrap();
        let layer = clone.join("layer");

        // Interrupted: the copy and the marker are there, the layer is untouched.
        {
            let stack = LayerStack::open(&layer, &image).unwrap();
            drop(stack);
        }
        fs::create_dir_all(native_dir(&clone)).unwrap();
        sys::tree::copy_sparse(&image.join("wal_dir"), &native_dir(&clone).join("wal_dir")).unwrap();
        fs::write(placing_marker(&clone), b"").unwrap();
        finish(&image, &layer, &clone, &["wal_dir"]).unwrap();
        assert!(!placing_marker(&clone).exists());

        let stack = LayerStack::open(&layer, &image).unwrap();
        let fs_ = CowFs::new(stack, cowfs::Options { owner: None }).unwrap();
        let attr = fs_.lookup(ROOT_INO, "wal_dir".as_ref()).unwrap();
        assert_eq!(attr.kind, Kind::Symlink);
        assert_eq!(fs_.readlink(attr.ino).unwrap(), "../native/wal_dir");
        let names: Vec<_> = fs_.readdir(ROOT_INO).unwrap().into_iter().map(|e| e.name).collect();
        assert!(!names.iter().any(|n| n.to_string_lossy().starts_with(".thinclone")), "{names:?}");
        drop(fs_);

        // A reset brings the image's directory back; placing again replaces the copy.
        LayerStack::open(&layer, &image).unwrap().reset().unwrap();
        fs::write(native_dir(&clone).join("wal_dir/000000010000000000000003"), b"the clone's own log").unwrap();
        place(&image, &layer, &clone, &["wal_dir", "missing_dir"]).unwrap();
        let copied = native_dir(&clone).join("wal_dir");
        assert!(!copied.join("000000010000000000000003").exists(), "the old log survived a reset");
        assert!(fs::read(copied.join("000000010000000000000002")).unwrap() == segment);
        assert!(copied.join("archive_status").is_dir());
        assert!(disk_usage(&clone).unwrap() < 1 << 20);
        assert!(fs::read(image.join("wal_dir/000000010000000000000002")).unwrap() == segment);
        let stack = LayerStack::open(&layer, &image).unwrap();
        let fs_ = CowFs::new(stack, cowfs::Options { owner: None }).unwrap();
        assert_eq!(fs_.lookup(ROOT_INO, "wal_dir".as_ref()).unwrap().kind, Kind::Symlink);
        assert_eq!(fs_.lookup(ROOT_INO, "VERSION".as_ref()).unwrap().kind, Kind::File);
    }
}
