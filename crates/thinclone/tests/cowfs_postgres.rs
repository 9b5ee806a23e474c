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

/// What every test here needs first: FUSE and PostgreSQL, or the test fails saying so; and a
/// work directory the servers' user can enter.
fn setup(test: &str) -> tempfile::TempDir {
    support::require_fuse(test);
    pg::require(test);
    let work = tempfile::tempdir().unwrap();
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).unwrap();
    work
}

#[test]
fn postgres_on_a_clone_survives_kill_9_of_the_server() {
    let work = setup("postgres_on_a_clone");
    let work = work.path();

    // The source: a real cluster with pgbench data, stopped, copied into the image.
    let source = Server::new(&work.join("source"), 24_401, work);
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
    let clone = Server::new(&mnt, 24_402, work);
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

/// A clone of a fresh cluster whose layer is on a 160 MiB tmpfs, mounted with `mount_args`,
/// its server started, with one table `t` to fill.
struct SmallClone {
    image: std::path::PathBuf,
    before: BTreeMap<String, u64>,
    small: std::path::PathBuf,
    mount: Mount,
    clone: Server,
    _unmount: Unmount,
}

/// The statement [`SmallClone::fill`] repeats: 2,000 rows of 1 KB.
const INSERT: &str = "INSERT INTO t (pad) SELECT repeat('x', 1000) FROM generate_series(1, 2000)";

impl SmallClone {
    fn new(work: &Path, ports: (u16, u16), mount_args: &[&str]) -> SmallClone {
        let source = Server::new(&work.join("source"), ports.0, work);
        source.initdb();
        let image = work.join("image");
        let status = std::process::Command::new("cp").arg("-a").arg(&source.data).arg(&image).status().unwrap();
        assert!(status.success());
        // The settings a clone runs with on a small disk: WAL segments written whole as they
        // are made and then recycled, and no crash-restart loop that would hide a PANIC.
        let mut conf = fs::OpenOptions::new().append(true).open(image.join("postgresql.auto.conf")).unwrap();
        std::io::Write::write_all(
            &mut conf,
            b"min_wal_size = '32MB'\nwal_init_zero = on\nwal_recycle = on\nrestart_after_crash = off\n",
        )
        .unwrap();
        let before = checksums(&image);

        let small = work.join("small");
        fs::create_dir(&small).unwrap();
        let mounted =
            std::process::Command::new("mount").args(["-t", "tmpfs", "-o", "size=160m", "tmpfs"]).arg(&small).status();
        assert!(mounted.unwrap().success());
        let unmount = Unmount(small.clone());
        let mnt = work.join("mnt");
        let mut args = vec!["--owner", "postgres"];
        args.extend(mount_args);
        let mount = Mount::start(&image, &small.join("layer"), &mnt, &args);
        let clone = Server::new(&mnt, ports.1, work);
        clone.start();
        clone.psql("postgres", "CREATE TABLE t (id serial PRIMARY KEY, pad text)");
        SmallClone { image, before, small, mount, clone, _unmount: unmount }
    }

    /// Inserts until a statement fails: the rows committed, and the failure's message.
    fn fill(&self) -> (u64, String) {
        let mut committed = 0;
        loop {
            let mut psql = self.clone.psql_command("postgres");
            let out = psql.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", INSERT]).output().unwrap();
            if !out.status.success() {
                return (committed, String::from_utf8_lossy(&out.stderr).into_owned());
            }
            committed += 2000;
            assert!(committed < 400_000, "400 MB inserted into a 160 MiB disk");
        }
    }

    /// Space is freed: the tmpfs grows to 400 MiB.
    fn grow(&self) {
        let grown = std::process::Command::new("mount").args(["-o", "remount,size=400m"]).arg(&self.small).status();
        assert!(grown.unwrap().success());
    }

    fn count(&self) -> String {
        self.clone.psql("postgres", "SELECT count(*) FROM t")
    }

    /// Stops the server and the mount; the image must be as it was.
    fn finish(mut self) {
        self.clone.stop();
        self.mount.stop();
        assert!(checksums(&self.image) == self.before, "the image changed");
    }
}

/// PostgreSQL on a clone whose layer fills up, mounted without the writeback cache
/// (doc/SEMANTICS.md, "Full disks"): cowfs refuses new space at its reserve, at `write(2)`,
/// so the statement that extends a table fails with "No space left on device" and the server
/// stays up, with no PANIC. Once space is freed, the clone takes writes again, and every row
/// committed before is there. The image is unchanged.
#[test]
fn postgres_on_a_full_clone_fails_the_statement_not_the_server() {
    let work = setup("postgres_on_a_full_clone");
    let c = SmallClone::new(work.path(), (24_403, 24_404), &["--no-writeback-cache"]);

    let (committed, error) = c.fill();
    eprintln!("after {committed} rows: {}", error.trim());
    assert!(error.contains("No space left on device"), "{error}");
    assert!(!error.contains("PANIC") && !error.contains("terminated"), "{error}");
    // The server is up and answers; a checkpoint may fail (it cannot copy pages up), the
    // server does not.
    assert_eq!(c.count(), committed.to_string());
    let checkpoint = c.clone.psql_command("postgres").args(["-X", "-q", "-c", "CHECKPOINT"]).output().unwrap();
    eprintln!("checkpoint on the full disk: {}", String::from_utf8_lossy(&checkpoint.stderr).trim());
    assert_eq!(c.clone.psql("postgres", "SELECT 1"), "1", "the server died:\n{}", c.clone.log_tail());
    assert!(!c.clone.log_tail().contains("PANIC"), "{}", c.clone.log_tail());

    // Space is freed: the same clone takes writes again.
    c.grow();
    c.clone.psql("postgres", INSERT);
    c.clone.psql("postgres", "CHECKPOINT");
    assert_eq!(c.count(), (committed + 2000).to_string());
    c.finish();
}

/// The same with the writeback cache (`thinclone serve --cowfs-writeback-cache`): the kernel
/// accepts writes the layer has no room for, so the failure comes at an `fsync`, where the
/// server must stop (a PANIC). Nothing committed is lost: once space is freed the server
/// starts, recovers from its log, has every committed row and takes writes again. The image
/// is unchanged.
#[test]
fn postgres_on_a_full_clone_with_the_writeback_cache_stops_and_loses_no_commit() {
    let work = setup("postgres_on_a_full_clone_with_the_writeback_cache");
    let c = SmallClone::new(work.path(), (24_405, 24_406), &[]);

    let (committed, error) = c.fill();
    eprintln!("after {committed} rows: {}", error.trim());
    let log = c.clone.log_tail();
    assert!(log.contains("PANIC") && log.contains("No space left on device"), "{error}\n{log}");
    assert!(c.clone.psql_command("postgres").args(["-X", "-c", "SELECT 1"]).output().unwrap().status.code() != Some(0));

    c.grow();
    c.clone.start();
    assert_eq!(c.count(), committed.to_string(), "committed rows lost:\n{}", c.clone.log_tail());
    c.clone.psql("postgres", INSERT);
    c.clone.psql("postgres", "CHECKPOINT");
    assert_eq!(c.count(), (committed + 2000).to_string());
    c.finish();
}

/// Unmounts a filesystem when a test ends.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}
