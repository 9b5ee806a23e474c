//! `thinclone mount` as other tooling uses it: what a small write costs in the layer, who
//! the files belong to, and mounting without root.

mod support;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};

use support::{digest_file, layer_du, pg, Mount};

#[test]
fn an_8k_write_into_a_256m_image_file_stores_at_most_64k() {
    support::require_fuse("an_8k_write_into_a_256m_image_file");
    let work = tempfile::tempdir().unwrap();
    let image = work.path().join("image");
    fs::create_dir(&image).unwrap();
    let big = image.join("big");
    {
        let mut f = fs::File::create(&big).unwrap();
        let chunk: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
        for _ in 0..256 {
            f.write_all(&chunk).unwrap();
        }
    }
    let image_digest = digest_file(&big);
    let layer = work.path().join("layer");
    let mut mount = Mount::start(&image, &layer, &work.path().join("mnt"), &[]);
    let before = layer_du(&layer);

    let file = OpenOptions::new().read(true).write(true).open(mount.mountpoint.join("big")).unwrap();
    let offset = 100 << 20;
    file.write_all_at(&[7u8; 8192], offset).unwrap();
    file.sync_all().unwrap();
    drop(file);
    mount.stop();
    let grown = layer_du(&layer) - before;
    eprintln!("an 8 KiB write into a 256 MiB file grew the layer by {grown} bytes");
    assert!(grown <= 64 << 10, "the layer grew by {grown} bytes");

    mount.restart();
    let file = fs::File::open(mount.mountpoint.join("big")).unwrap();
    assert_eq!(file.metadata().unwrap().len(), 256 << 20);
    let mut buf = vec![0u8; 3 * 8192];
    file.read_exact_at(&mut buf, offset - 8192).unwrap();
    let expected_before: Vec<u8> = (offset - 8192..offset).map(|i| (i % (1 << 20) % 251) as u8).collect();
    assert_eq!(&buf[..8192], &expected_before[..]);
    assert_eq!(&buf[8192..16384], &[7u8; 8192][..]);
    drop(file);
    mount.stop();
    assert_eq!(digest_file(&big), image_digest, "the image changed");
}

#[test]
fn owner_option_presents_the_image_as_that_users() {
    support::require_fuse("owner_option");
    pg::require("owner_option");
    let work = tempfile::tempdir().unwrap();
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let image = work.path().join("image");
    fs::create_dir(&image).unwrap();
    fs::set_permissions(&image, fs::Permissions::from_mode(0o700)).unwrap();
    fs::write(image.join("f"), "image\n").unwrap();
    fs::set_permissions(image.join("f"), fs::Permissions::from_mode(0o600)).unwrap();
    let mount = Mount::start(&image, &work.path().join("layer"), &work.path().join("mnt"), &["--owner", "postgres"]);

    let (uid, gid) = pg::postgres_ids();
    for path in [mount.mountpoint.clone(), mount.mountpoint.join("f")] {
        let meta = fs::metadata(&path).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (uid, gid), "{}", path.display());
    }
    // The database's user can use the mount (allow_other), and files it makes are its own.
    let script = "cat f && echo clone >> f && echo new > g";
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--", "sh", "-c", script])
        .current_dir(&mount.mountpoint)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "image\n");
    assert_eq!(fs::read_to_string(mount.mountpoint.join("f")).unwrap(), "image\nclone\n");
    assert_eq!(fs::metadata(mount.mountpoint.join("g")).unwrap().uid(), uid);
    assert_eq!(fs::read_to_string(image.join("f")).unwrap(), "image\n");
}

#[test]
fn an_unprivileged_user_mounts_through_fusermount3() {
    support::require_fuse("unprivileged_mount");
    pg::require("unprivileged_mount");
    assert!(support::which("fusermount3"), "fusermount3 is needed (Debian package fuse3)");
    // udev makes /dev/fuse usable by everyone on a normal system; containers may not.
    let mode = fs::metadata("/dev/fuse").unwrap().permissions().mode();
    if mode & 0o666 != 0o666 {
        eprintln!("making /dev/fuse mode 0666, as udev does on a normal system");
        fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(0o666)).unwrap();
    }
    let work = tempfile::tempdir().unwrap();
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let base = work.path().join("user");
    for dir in ["", "image", "mnt"] {
        fs::create_dir_all(base.join(dir)).unwrap();
        pg::chown_postgres(&base.join(dir));
    }
    fs::write(base.join("image/f"), "image\n").unwrap();
    pg::chown_postgres(&base.join("image/f"));
    // setpriv execs the mount itself (runuser would stay as its parent).
    let child = Command::new("setpriv")
        .args(["--reuid=postgres", "--regid=postgres", "--init-groups", "--"])
        .arg(support::thinclone_bin())
        .args(["mount", "--image"])
        .arg(base.join("image"))
        .arg("--layer")
        .arg(base.join("layer"))
        .arg(base.join("mnt"))
        .process_group(0)
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let mnt = base.join("mnt");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !support::fuse_answers(&mnt) {
        assert!(child.0.try_wait().unwrap().is_none(), "the unprivileged mount exited early");
        assert!(std::time::Instant::now() < deadline, "the unprivileged mount did not come up");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Without allow_other, only the user who mounted may enter the mount (root may not).
    let script = format!("cd {} && cat f && echo more >> f && cat f", mnt.display());
    let out = Command::new("runuser").args(["-u", "postgres", "--", "sh", "-c", &script]).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "image\nimage\nmore\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    assert!(child.0.wait().unwrap().success());
    assert!(!support::is_mounted(&mnt));
    assert_eq!(fs::read_to_string(base.join("image/f")).unwrap(), "image\n");
}

/// Kills a process group when a test ends early.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
            let _ = self.0.wait();
        }
    }
}
