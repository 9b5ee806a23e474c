//! Everything a clone can write lives in the clone: a source with a tablespace outside its
//! data directory is imaged from its directory and from its URL, a server on a copy of the
//! image (standing in for a clone) writes to a table in that tablespace, and the source's
//! data directory and tablespace directory are byte-identical before and after, as is the
//! image.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use engine::{Error, SourceUrl};
use support::{assert_unchanged, checksums, setup, Setup, Source};

/// A source with the tablespace `outside` in a directory beside (not inside) its data
/// directory, holding the table `far` of 1000 rows. Returns the source (running), the
/// tablespace's directory and its oid.
fn source_with_tablespace(t: &Setup) -> (Source, PathBuf, String) {
    let mut source = Source::init(t, "source");
    let location = t.dir("source-tablespace");
    source.start();
    source.sql(&format!("CREATE TABLESPACE outside LOCATION '{}'", location.display()));
    source.sql(
        "CREATE TABLE far (id int, note text) WITH (autovacuum_enabled = off) TABLESPACE outside; \
         INSERT INTO far SELECT g, 'source' FROM generate_series(1, 1000) g",
    );
    let oid = source.sql("SELECT oid FROM pg_tablespace WHERE spcname = 'outside'");
    (source, location, oid)
}

/// Checks the image's layout: the tablespace's files inside, its link relative.
fn assert_self_contained(image: &Path, oid: &str) {
    let link = fs::read_link(image.join("pg_tblspc").join(oid)).unwrap();
    assert_eq!(link, Path::new("../thinclone_tablespaces").join(oid), "the image's tablespace link");
    let home = image.join("thinclone_tablespaces").join(oid);
    let versions: Vec<_> = fs::read_dir(&home).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(
        versions.len() == 1 && versions[0].to_string_lossy().starts_with("PG_15_"),
        "{}: {versions:?}",
        home.display()
    );
}

/// Starts a server on a copy of the image (a clone), writes to the tablespace's table, and
/// checks that the rows are there and that the write went into the clone's own files.
fn write_through_a_clone(t: &Setup, image: &Path, superuser: &str, oid: &str, rows: u32) {
    let clone = t.path("clone");
    t.copy(image, &clone);
    let spec = t.spec("clone", &clone, superuser);
    let instance = t.start(&spec);
    assert_eq!(instance.sql("SELECT count(*) FROM far").unwrap(), rows.to_string());
    instance
        .sql(&format!("INSERT INTO far SELECT g, 'clone' FROM generate_series({}, {}) g", rows + 1, rows + 5000))
        .unwrap();
    instance.sql("CHECKPOINT").unwrap();
    assert_eq!(instance.sql("SELECT count(*) FROM far").unwrap(), (rows + 5000).to_string());
    let file = instance.sql("SELECT pg_relation_filepath('far')").unwrap();
    assert!(file.starts_with(&format!("pg_tblspc/{oid}/PG_15_")), "{file}");
    let in_clone = clone.join("thinclone_tablespaces").join(oid).join(file.split_once(&format!("{oid}/")).unwrap().1);
    assert!(
        fs::metadata(&in_clone).unwrap().len() > fs::metadata(image.join(&file)).unwrap().len(),
        "the clone's insert did not grow its own copy of the table ({})",
        in_clone.display()
    );
    let location = instance.sql("SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'outside'");
    assert_eq!(location.unwrap(), format!("../thinclone_tablespaces/{oid}"));
    instance.stop(Duration::from_secs(60)).unwrap();
}

/// (a) From its directory: a server that crashed after writing to the tablespace, so that
/// preparing the copy runs recovery, which replays those writes into the tablespace.
#[test]
fn an_image_from_a_directory_holds_its_tablespace() {
    let t = setup();
    let (mut source, location, oid) = source_with_tablespace(&t);
    source.sql("CHECKPOINT");
    source.sql("INSERT INTO far SELECT g, 'after the checkpoint' FROM generate_series(1001, 2000) g");
    source.kill();
    assert!(!t.engine.is_in_use(&source.data));
    let (data_before, tablespace_before) = (checksums(&source.data), checksums(&location));

    // As the agent copies a directory: `cp -a`, which keeps the link to the source's place.
    let image = t.path("image");
    t.copy(&source.data, &image);
    assert_eq!(fs::read_link(image.join("pg_tblspc").join(&oid)).unwrap(), location);
    let facts = t.engine.prepare(&image, &t.path("run-prepare"), &t.user).unwrap();
    let log = fs::read_to_string(t.path("run-prepare/postgres.log")).unwrap();
    assert!(log.contains("redo starts"), "preparing the crashed copy ran no recovery:\n{log}");
    assert_unchanged("the source's data directory, by preparing its copy", &data_before, &checksums(&source.data));
    assert_unchanged("the source's tablespace, by preparing its copy", &tablespace_before, &checksums(&location));
    assert_self_contained(&image, &oid);

    let image_before = checksums(&image);
    write_through_a_clone(&t, &image, &facts.superuser, &oid, 2000);
    assert_unchanged("the source's data directory, by a clone", &data_before, &checksums(&source.data));
    assert_unchanged("the source's tablespace, by a clone", &tablespace_before, &checksums(&location));
    assert_unchanged("the image, by a clone", &image_before, &checksums(&image));
}

/// (b) From its URL: a running server, a password login over TCP.
#[test]
fn an_image_from_a_url_holds_its_tablespace() {
    let t = setup();
    let (mut source, location, oid) = source_with_tablespace(&t);
    source.sql("ALTER ROLE postgres PASSWORD 'src-pw'");
    // Everything the table's files will ever get from the source (visibility map, hint bits)
    // is on disk before the copy.
    source.sql("VACUUM far");
    source.sql("CHECKPOINT");
    let tablespace_before = checksums(&location);

    let url = SourceUrl::parse(&format!("postgresql://postgres:src-pw@127.0.0.1:{}/postgres", source.port)).unwrap();
    t.engine.probe(&url).unwrap();
    let image = t.dir("image");
    let mut progress = Vec::new();
    t.engine.copy_live(&url, &image, &t.user, &mut |done, total| progress.push((done, total))).unwrap();
    assert!(progress.last().is_some_and(|&(done, total)| done == total && total > 0), "{progress:?}");
    assert_unchanged("the source's tablespace, by its copy", &tablespace_before, &checksums(&location));
    assert_self_contained(&image, &oid);
    let facts = t.engine.prepare(&image, &t.path("run-prepare"), &t.user).unwrap();
    assert_self_contained(&image, &oid);

    source.stop();
    let (data_before, tablespace_before) = (checksums(&source.data), checksums(&location));
    let image_before = checksums(&image);
    write_through_a_clone(&t, &image, &facts.superuser, &oid, 1000);
    assert_unchanged("the source's data directory, by a clone", &data_before, &checksums(&source.data));
    assert_unchanged("the source's tablespace, by a clone", &tablespace_before, &checksums(&location));
    assert_unchanged("the image, by a clone", &image_before, &checksums(&image));
}

/// A copy of a running server's directory (a crash-consistent snapshot) whose tablespace is
/// outside it: the tablespace goes on changing while it would be copied, so the copy would
/// not be of one instant. Refused, saying what to do.
#[test]
fn a_snapshot_of_a_running_server_with_an_outside_tablespace_is_refused() {
    let t = setup();
    let (source, location, oid) = source_with_tablespace(&t);
    let snapshot = t.path("snapshot");
    t.copy(&source.data, &snapshot);
    assert!(t.engine.is_in_use(&source.data) && !t.engine.is_in_use(&snapshot));
    let before = checksums(&location);
    let err = t.engine.prepare(&snapshot, &t.path("run-prepare"), &t.user).unwrap_err();
    assert!(matches!(err, Error::BadSource(_)) && err.is_callers_mistake(), "{err}");
    let text = err.to_string();
    assert!(text.contains(&format!("pg_tblspc/{oid}")) && text.contains(&location.display().to_string()), "{text}");
    assert!(text.contains("still runs") && text.contains("--from-url"), "{text}");
    assert!(!snapshot.join("thinclone_tablespaces").exists(), "a refused copy brought its tablespace in");
    drop(source);
    assert_unchanged("the source's tablespace", &before, &checksums(&location));
}

/// Other links out of the data directory: a `pg_wal` elsewhere (initdb -X) is copied in.
#[test]
fn a_pg_wal_elsewhere_is_copied_in() {
    let t = setup();
    let wal = t.dir("source-wal");
    let data = t.initdb("source", "postgres", &["-A", "trust", "-X", wal.to_str().unwrap()]);
    assert_eq!(fs::read_link(data.join("pg_wal")).unwrap(), wal);
    let (data_before, wal_before) = (checksums(&data), checksums(&wal));
    let image = t.path("image");
    t.copy(&data, &image);
    let facts = t.engine.prepare(&image, &t.path("run-prepare"), &t.user).unwrap();
    assert!(fs::symlink_metadata(image.join("pg_wal")).unwrap().is_dir(), "pg_wal is still a link");
    let instance = t.start(&t.spec("clone", &image, &facts.superuser));
    instance.sql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g").unwrap();
    instance.stop(Duration::from_secs(60)).unwrap();
    assert_unchanged("the source's data directory", &data_before, &checksums(&data));
    assert_unchanged("the source's WAL directory", &wal_before, &checksums(&wal));
}
