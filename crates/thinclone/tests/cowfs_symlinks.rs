//! Symlinks in the image through a real mount served by root (doc/SEMANTICS.md, "Symlinks in
//! the image"): an unprivileged user of the mount never reads a root-only file of the host,
//! neither through a symlink that was in the image (the kernel follows it with that user's
//! own rights) nor through one planted in the image later in place of a file or directory
//! the mount already knows (cowfs never follows it with root's).

mod support;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::Command;

use support::Mount;

const SECRET: &str = "ROOT ONLY: the host's secret\n";
const MARK: &str = "ROOT";
const USER: &str = "nobody";

/// Runs `argv` as the unprivileged user: (success, stdout, stderr).
fn as_user(argv: &[&str]) -> (bool, String, String) {
    let out = Command::new("runuser").args(["-u", USER, "--"]).args(argv).output().expect("running runuser");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn plant(at: &Path, target: impl AsRef<Path>) {
    if fs::symlink_metadata(at).unwrap().is_dir() {
        fs::remove_dir_all(at).unwrap();
    } else {
        fs::remove_file(at).unwrap();
    }
    symlink(target, at).unwrap();
}

#[test]
fn an_unprivileged_user_never_reads_root_only_files_through_image_symlinks() {
    support::require_fuse("image symlinks");
    assert!(support::which("runuser"), "runuser (util-linux) is needed");
    let work = tempfile::tempdir().unwrap();
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).unwrap();

    // Root-only files and a root-only directory beside the image.
    let outside = work.path().join("outside");
    fs::create_dir_all(outside.join("dir")).unwrap();
    fs::set_permissions(&outside, fs::Permissions::from_mode(0o755)).unwrap();
    for file in ["secret", "dir/secret"] {
        fs::write(outside.join(file), SECRET).unwrap();
        fs::set_permissions(outside.join(file), fs::Permissions::from_mode(0o600)).unwrap();
    }
    fs::set_permissions(outside.join("dir"), fs::Permissions::from_mode(0o700)).unwrap();

    let image = work.path().join("image");
    fs::create_dir_all(image.join("sub")).unwrap();
    fs::create_dir_all(image.join("d")).unwrap();
    fs::write(image.join("f"), "image f\n").unwrap();
    fs::write(image.join("g"), "image g, long enough to show all of a leaked secret\n").unwrap();
    fs::write(image.join("d/secret"), "image d/secret\n").unwrap();
    symlink(outside.join("secret"), image.join("evil")).unwrap();
    symlink("../outside/secret", image.join("evil_rel")).unwrap();
    symlink(outside.join("dir"), image.join("linkdir")).unwrap();
    symlink("../../outside/dir", image.join("sub/up")).unwrap();

    // As a clone is served: by root, presenting the image as the clone user's.
    let mount = Mount::start(&image, &work.path().join("layer"), &work.path().join("mnt"), &["--owner", USER]);
    let mnt = |rel: &str| mount.mountpoint.join(rel).to_string_lossy().into_owned();

    let (ok, out, err) = as_user(&["cat", &mnt("f")]);
    assert!(ok, "{err}");
    assert_eq!(out, "image f\n");

    // A symlink of the image is a symlink on the mount, with its own target.
    let (ok, out, _) = as_user(&["readlink", &mnt("evil")]);
    assert!(ok);
    assert_eq!(out.trim_end(), outside.join("secret").to_string_lossy());
    let (_, out, _) = as_user(&["readlink", &mnt("sub/up")]);
    assert_eq!(out.trim_end(), "../../outside/dir");

    // The kernel follows them in the reader's own view and with the reader's own rights:
    // absolute or with `..`, to a file or through a directory, the host says no.
    for link in ["evil", "evil_rel", "linkdir/secret", "sub/up/secret"] {
        let (ok, out, err) = as_user(&["cat", &mnt(link)]);
        assert!(!ok && !out.contains(MARK), "{USER} read {link}: {out}");
        assert!(err.contains("Permission denied"), "{link}: {err}");
    }
    // Root reads the host's file through the same link, because root can read it anyway.
    assert_eq!(fs::read_to_string(mnt("evil")).unwrap(), SECRET);

    // Now the mount knows `g` as a file and `d`'s listing, and the image changes under it:
    // symlinks out of the image take their places. cowfs (root) must not follow them.
    let (ok, _, err) = as_user(&["stat", &mnt("g")]);
    assert!(ok, "{err}");
    let (ok, out, err) = as_user(&["ls", &mnt("d")]);
    assert!(ok && out.contains("secret"), "{out}{err}");
    plant(&image.join("g"), outside.join("secret"));
    plant(&image.join("d"), "../outside/dir");

    for path in ["g", "d/secret"] {
        let (ok, out, err) = as_user(&["cat", &mnt(path)]);
        assert!(!out.contains(MARK), "{USER} read a root-only file through planted {path}: {out}");
        assert!(!ok, "reading {path} succeeded: {out}");
        eprintln!("{USER} reading planted {path}: {}", err.trim_end());
    }
    let (ok, out, err) = as_user(&["cat", &mnt("f")]);
    assert!(ok && out == "image f\n", "the rest of the mount stopped working: {out}{err}");
    assert_eq!(fs::read_to_string(outside.join("secret")).unwrap(), SECRET);
}
