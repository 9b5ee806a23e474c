//! PostgreSQL on a cowfs mount: a real pgbench cluster of 500 MB or more is the image, a
//! clone of it is mounted and serves a server under write load, and the FUSE server is killed
//! with SIGKILL mid-load. After a remount and crash recovery, every transaction the client saw
//! committed must be there, pg_amcheck must find no corruption, and the image must be
//! bit-identical to what it was.
//!
//! The size is `COWFS_PG_SCALE` pgbench scale units (default 35, about 525 MB).

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use support::pg::{self, Committer, Server};
use support::Mount;

fn scale() -> u32 {
    std::env::var("COWFS_PG_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(35)
}

/// Digest of every file under `root`, by relative path.
fn checksums(root: &Path) -> BTreeMap<String, u64> {
    support::snapshot(root)
        .into_iter()
        .map(|(path, entry)| {
            (
                path.display().to_string(),
                match entry {
                    support::Entry::File { digest, size, .. } => digest ^ size,
                    _ => 0,
                },
            )
        })
        .collect()
}

#[test]
fn postgres_on_a_clone_survives_kill_9_of_the_server() {
    support::require_fuse("postgres_on_a_clone");
    pg::require("postgres_on_a_clone");
    let work = tempfile::tempdir().unwrap();
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let work = work.path();

    // The source: a real cluster with pgbench data, stopped, copied into the image.
    let source = Server::new(&work.join("source"), 54_401, work);
    source.initdb();
    source.start();
    pg::run(source.pgbench().args(["-i", "-q", "-s", &scale().to_string(), "postgres"]));
    source.psql("postgres", "CREATE TABLE committed (id bigint PRIMARY KEY)");
    source.stop();
    let image = work.join("image");
    let status = std::process::Command::new("cp").arg("-a").arg(&source.data).arg(&image).status().unwrap();
    assert!(status.success());
    let image_bytes = support::layer_du(&image);
    assert!(image_bytes >= 500 << 20, "the image is only {} MB", image_bytes >> 20);
    eprintln!("image: {} MB on disk", image_bytes >> 20);
    let before = checksums(&image);

    // The clone: a mount over the image, with a server on it.
    let mnt = work.join("mnt");
    let mut mount = Mount::start(&image, &work.join("layer"), &mnt, &["--owner", "postgres"]);
    let clone = Server::new(&mnt, 54_402, work);
    clone.start();
    let committer = Committer::start(&clone, "postgres", "committed");
    let mut pgbench = clone
        .pgbench()
        .args(["-c", "4", "-j", "2", "-T", "60", "-n", "postgres"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Let the load run, with a checkpoint in the middle, then kill the FUSE server.
    std::thread::sleep(Duration::from_secs(4));
    clone.psql("postgres", "CHECKPOINT");
    std::thread::sleep(Duration::from_secs(3));
    let acked_before_kill = committer.acked().len();
    assert!(acked_before_kill > 50, "only {acked_before_kill} commits before the kill");
    unsafe { libc::kill(mount.pid() as i32, libc::SIGKILL) };
    std::thread::sleep(Duration::from_millis(500));
    let acked = committer.stop();
    let _ = pgbench.kill();
    let _ = pgbench.wait();
    clone.kill();

    // Remount the same layer, restart: crash recovery replays the WAL.
    mount.kill_and_remount();
    clone.start();
    let ids: Vec<String> = acked.iter().map(|n| n.to_string()).collect();
    let present = clone.psql(
        "postgres",
        &format!(
            "SELECT count(*) FROM committed WHERE id IN ({})",
            if ids.is_empty() { "0".into() } else { ids.join(",") }
        ),
    );
    assert_eq!(present, acked.len().to_string(), "committed rows lost after kill -9 of the FUSE server");
    eprintln!("{} acknowledged commits, all present after recovery", acked.len());

    // No corruption, and the clone still takes writes.
    let amcheck = pg::run(pg::command("pg_amcheck").args(["-h"]).arg(&clone.socket_dir).args([
        "-p",
        &clone.port.to_string(),
        "-U",
        "postgres",
        "--install-missing",
        "--heapallindexed",
        "--all",
    ]));
    let report = String::from_utf8_lossy(&amcheck.stdout);
    assert!(report.trim().is_empty(), "pg_amcheck reported:\n{report}");
    pg::run(clone.pgbench().args(["-t", "200", "-n", "postgres"]));
    clone.stop();
    mount.stop();

    assert!(checksums(&image) == before, "the image changed");
}
