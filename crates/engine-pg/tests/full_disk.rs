//! Full disks, the engine's side, on small tmpfs mounts: a live copy and a preparation that
//! run out of space fail soon with [`Error::DiskFull`] and leave nothing of what they wrote;
//! a clone whose writes run out of space does not loop through crash recoveries, and works
//! again with every committed row once there is room. Also what a fresh clone costs: a few
//! hundred KiB of changed blocks, no new WAL segment.

mod support;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use engine::{Error, SourceUrl};
use support::{anything_runs_on, assert_unchanged, checksums, setup, SmallDisk, Source};

const MIB: u64 = 1 << 20;

fn megabytes(path: &Path) -> u64 {
    sys::tree::disk_usage(path).unwrap().div_ceil(MIB)
}

#[test]
fn a_live_copy_onto_a_full_disk_fails_soon_and_leaves_nothing() {
    let t = setup();
    let mut source = Source::init(&t, "source");
    source.start();
    source.sql("ALTER ROLE postgres PASSWORD 'src-pw'");
    source.sql("CREATE TABLE big AS SELECT g, repeat('x', 500) AS pad FROM generate_series(1, 60000) g");
    let disk = SmallDisk::mount(t.path("disk"), 32);
    let target = disk.path.join("image");
    fs::create_dir(&target).unwrap();
    std::os::unix::fs::chown(&target, Some(t.user.uid), Some(t.user.gid)).unwrap();

    let url = SourceUrl::parse(&format!("postgresql://postgres:src-pw@127.0.0.1:{}/postgres", source.port)).unwrap();
    let started = Instant::now();
    let err = t.engine.copy_live(&url, &target, &t.user, &mut |_, _| {}).unwrap_err();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(30), "the copy took {took:?} to fail");
    assert!(matches!(err, Error::DiskFull { .. }) && err.is_disk_full(), "{err}");
    let text = err.to_string();
    assert!(text.starts_with("copying the live server postgresql://postgres@127.0.0.1:"), "{text}");
    assert!(text.contains("the disk is full") && !text.contains("src-pw"), "{text}");
    assert_eq!(fs::read_dir(&target).unwrap().count(), 0, "the failed copy left files in its target");
    assert!(!anything_runs_on(&target), "a process of the copy still runs");
    assert!(megabytes(&disk.path) <= 1, "{} MiB left on the disk", megabytes(&disk.path));
}

/// The copy of a tablespace that does not fit: refused as a full disk, the partial copy
/// removed, the link still the source's, the source untouched.
#[test]
fn a_tablespace_that_does_not_fit_fails_the_preparation() {
    let t = setup();
    let mut source = Source::init(&t, "source");
    let location = t.dir("source-tablespace");
    source.start();
    source.sql(&format!("CREATE TABLESPACE outside LOCATION '{}'", location.display()));
    source.sql(
        "CREATE TABLE far TABLESPACE outside AS SELECT g, repeat('x', 500) AS pad FROM generate_series(1, 60000) g",
    );
    let oid = source.sql("SELECT oid FROM pg_tablespace WHERE spcname = 'outside'");
    source.stop();
    let (data_before, tablespace_before) = (checksums(&source.data), checksums(&location));

    // Room for the data directory and 8 MiB more, not for the tablespace's 30 MiB.
    let disk = SmallDisk::mount(t.path("disk"), megabytes(&source.data) + 8);
    let image = disk.path.join("image");
    t.copy(&source.data, &image);
    let used = megabytes(&disk.path);
    let err = t.engine.prepare(&image, &t.path("run-prepare"), &t.user).unwrap_err();
    assert!(matches!(err, Error::DiskFull { .. }), "{err}");
    assert!(err.to_string().contains(&format!("copying the tablespace {oid} from {}", location.display())), "{err}");
    let home = image.join("thinclone_tablespaces").join(&oid);
    assert!(
        fs::read_dir(&home).map_or(true, |mut d| d.next().is_none()),
        "a partial copy was left in {}",
        home.display()
    );
    assert_eq!(fs::read_link(image.join("pg_tblspc").join(&oid)).unwrap(), location);
    assert!(megabytes(&disk.path) <= used + 1, "the failed copy's space was not freed");
    assert_unchanged("the source's data directory", &data_before, &checksums(&source.data));
    assert_unchanged("the source's tablespace", &tablespace_before, &checksums(&location));
}

/// A preparing server that runs out of space (the new WAL segment of its last checkpoint
/// does not fit) fails the preparation as a full disk, and leaves no server running.
#[test]
fn a_preparing_server_that_runs_out_of_space_says_so() {
    let t = setup();
    let data = t.initdb("source", "postgres", &["-A", "trust"]);
    let disk = SmallDisk::mount(t.path("disk"), megabytes(&data) + 20);
    let image = disk.path.join("image");
    t.copy(&data, &image);
    disk.fill_leaving(6 * MIB);
    let started = Instant::now();
    let err = t.engine.prepare(&image, &t.path("run-prepare"), &t.user).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(30), "the preparation took {:?} to fail", started.elapsed());
    assert!(matches!(err, Error::DiskFull { .. }) && err.is_disk_full(), "{err}");
    assert!(
        err.to_string().starts_with(&format!("preparing the image {}: the disk is full", image.display())),
        "{err}"
    );
    assert!(!t.engine.is_in_use(&image) && !anything_runs_on(&image), "the preparing server still runs");
}

/// A clone that writes until its disk is full: the failure surfaces as errors to the
/// writer, or the server stops once (a PANIC with `restart_after_crash=off`); it never
/// restarts itself in a loop. Once space is freed it works again, every committed row
/// present.
#[test]
fn a_clone_on_a_full_disk_does_not_loop_and_works_again_with_room() {
    let t = setup();
    let data = t.initdb("source", "postgres", &["-A", "trust"]);
    let facts = t.engine.prepare(&data, &t.path("run-prepare"), &t.user).unwrap();
    let disk = SmallDisk::mount(t.path("disk"), megabytes(&data) + 64);
    let clone = disk.path.join("clone");
    t.copy(&data, &clone);
    disk.fill_leaving(40 * MIB);

    let spec = t.spec("clone", &clone, &facts.superuser);
    let mut instance = t.start(&spec);
    instance.sql("CREATE TABLE fill (id int, pad text)").unwrap();
    let mut committed = 0u32;
    let mut failure = String::new();
    for batch in 0..200 {
        let sql = format!(
            "INSERT INTO fill SELECT g, repeat(md5(g::text), 32) FROM generate_series({}, {}) g",
            batch * 1000 + 1,
            batch * 1000 + 1000
        );
        match instance.sql(&sql) {
            Ok(_) => committed += 1000,
            Err(e) => {
                failure = e.to_string();
                break;
            }
        }
    }
    assert!(!failure.is_empty(), "the disk never filled up");
    eprintln!("{committed} rows committed, then: {failure}");
    // Whatever happened, it happens once: a server that stopped stays stopped.
    std::thread::sleep(Duration::from_secs(3));
    let log = fs::read_to_string(spec.run_dir.join("postgres.log")).unwrap();
    let starts = log.matches("database system is ready to accept connections").count();
    assert_eq!(starts, 1, "the server restarted itself:\n{log}");
    // Where the last free page ends inside a block, the kernel gives a short write instead
    // of ENOSPC, and PostgreSQL says how much it wrote and to check free space.
    assert!(log.contains("No space left on device") || log.contains("Check free disk space"), "{log}");
    let running = instance.is_running();
    eprintln!("after the full disk the server {}", if running { "runs on" } else { "has stopped" });

    fs::remove_file(disk.path.join("filler")).unwrap();
    let instance = if running {
        instance
    } else {
        drop(instance);
        t.start(&spec)
    };
    let present: u32 = instance.sql("SELECT count(*) FROM fill").unwrap().parse().unwrap();
    assert!(present >= committed, "{present} rows present, {committed} committed");
    instance.sql("INSERT INTO fill SELECT g, 'after' FROM generate_series(1, 1000) g").unwrap();
    instance.stop(Duration::from_secs(60)).unwrap();
}

/// A clone whose WAL cannot grow (no room for its next segment): a PANIC, and with
/// `restart_after_crash=off` the server stops for good instead of recovering and failing
/// again. Once space is freed, a start runs crash recovery and every committed row is there.
#[test]
fn a_clone_whose_wal_cannot_grow_stops_once_and_recovers_with_room() {
    let t = setup();
    let data = t.initdb("source", "postgres", &["-A", "trust"]);
    let facts = t.engine.prepare(&data, &t.path("run-prepare"), &t.user).unwrap();
    let disk = SmallDisk::mount(t.path("disk"), megabytes(&data) + 32);
    let clone = disk.path.join("clone");
    t.copy(&data, &clone);
    disk.fill_leaving(8 * MIB);

    let spec = t.spec("clone", &clone, &facts.superuser);
    let mut instance = t.start(&spec);
    instance.sql("CREATE TABLE kept AS SELECT g FROM generate_series(1, 1000) g").unwrap();
    // WAL and nothing else: messages of 1 MiB, until the segment is full and the next one
    // cannot be made.
    let mut failure = None;
    for _ in 0..40 {
        if let Err(e) = instance.sql("SELECT pg_logical_emit_message(true, 'fill', repeat('w', 1048576))") {
            failure = Some(e.to_string());
            break;
        }
    }
    let failure = failure.expect("the WAL never ran out of room");
    eprintln!("the WAL ran out of room: {failure}");
    let stopped =
        sys::wait::until(Duration::from_secs(30), Duration::from_millis(50), || (!instance.is_running()).then_some(()));
    assert!(stopped.is_some(), "the server runs on after a PANIC");
    std::thread::sleep(Duration::from_secs(2));
    let log = fs::read_to_string(spec.run_dir.join("postgres.log")).unwrap();
    assert!(log.contains("PANIC") && log.contains("No space left on device"), "{log}");
    assert_eq!(log.matches("database system is ready to accept connections").count(), 1, "it restarted itself:\n{log}");
    assert!(!anything_runs_on(&clone), "a process of the clone's server is left");
    drop(instance);

    fs::remove_file(disk.path.join("filler")).unwrap();
    let instance = t.start(&spec);
    assert_eq!(instance.sql("SELECT count(*) FROM kept").unwrap(), "1000");
    instance.stop(Duration::from_secs(60)).unwrap();
}

/// What a fresh clone writes: start, one query, clean stop. Counted as the 8 KiB blocks
/// that differ from the image plus whole new files, which is what a copy-on-write layer
/// keeps at the least. No WAL segment may be made: with `wal_init_zero=on` that would be
/// 16 MiB.
#[test]
fn a_fresh_clone_writes_little_and_makes_no_wal_segment() {
    let t = setup();
    let mut source = Source::init(&t, "source");
    source.start();
    source.sql("CREATE TABLE t AS SELECT g, repeat('x', 100) AS pad FROM generate_series(1, 200000) g");
    // As autovacuum would have, so that the clone's first read sets no hint bits (which
    // would rewrite the whole table, in every clone).
    source.sql("VACUUM t");
    source.stop();
    let image = t.path("image");
    t.copy(&source.data, &image);
    let facts = t.engine.prepare(&image, &t.path("run-prepare"), &t.user).unwrap();

    let mut written = Vec::new();
    for round in 0..3 {
        let clone = t.path(&format!("clone-{round}"));
        t.copy(&image, &clone);
        let spec = t.spec(&format!("clone-{round}"), &clone, &facts.superuser);
        let started = Instant::now();
        let instance = t.start(&spec);
        let ready = started.elapsed();
        assert_eq!(instance.sql("SELECT count(*) FROM t").unwrap(), "200000");
        instance.stop(Duration::from_secs(60)).unwrap();
        let changed = changed_bytes(&image, &clone);
        eprintln!("fresh clone {round}: ready in {} ms, {} KiB changed", ready.as_millis(), changed / 1024);
        written.push(changed);
        let wal = |dir: &Path| -> Vec<_> {
            let mut names: Vec<_> = fs::read_dir(dir.join("pg_wal"))
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .filter(|n| n.len() == 24)
                .collect();
            names.sort();
            names
        };
        assert_eq!(wal(&clone), wal(&image), "a fresh clone made a WAL segment");
    }
    let most = written.iter().max().unwrap();
    assert!(*most < 2 * MIB, "a fresh clone changed {} KiB", most / 1024);
}

/// The bytes of `clone` that a copy-on-write layer over `image` must hold: each 8 KiB block
/// of a file that differs from the image's, and every byte of a file the image lacks.
fn changed_bytes(image: &Path, clone: &Path) -> u64 {
    const BLOCK: usize = 8192;
    let mut total = 0;
    let mut todo = vec![clone.to_owned()];
    while let Some(dir) = todo.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                todo.push(entry.path());
                continue;
            }
            if !kind.is_file() {
                continue;
            }
            let ours = fs::read(entry.path()).unwrap();
            let theirs = fs::read(image.join(entry.path().strip_prefix(clone).unwrap())).unwrap_or_default();
            total += ours
                .chunks(BLOCK)
                .enumerate()
                .filter(|(i, block)| theirs.get(i * BLOCK..(i * BLOCK + block.len()).min(theirs.len())) != Some(*block))
                .map(|(_, block)| block.len() as u64)
                .sum::<u64>();
        }
    }
    total
}
