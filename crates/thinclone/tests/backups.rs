//! Images from backups and points in time (issue 14, acceptance 3), through the CLI of a real
//! daemon over a real source cluster, with real pgBackRest:
//!
//! - a `pg_dump -Fc` file restored into a new cluster: its rows are in the clone (and the
//!   directory, tar and plain formats too);
//! - a pgBackRest repository (a stanza, a full backup, WAL archived with `archive-push`)
//!   recovered to a target time;
//! - a `pg_basebackup` and a directory of WAL archived with `cp`, recovered to the same time,
//!   and to an LSN.
//!
//! Rows A are committed after the backups and before the target time, rows B after it: each
//! clone of a point-in-time image has A and not B. Bad inputs (a corrupt dump, a missing
//! stanza, a target past the end of the archive or before the backups) fail with a clear
//! message and leave nothing.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use api::{Clone, Image, ImageStatus, Operation};
use serde_json::Value;
use support::daemon::{psql, Daemon, UrlOf};
use support::pg::{chown_postgres, command, run, Server};

const PORT: u16 = 24_860;

/// `url` with its database changed to `db`.
fn in_db(url: &str, db: &str) -> String {
    let (base, _) = url.rsplit_once('/').expect("a URL with a database");
    format!("{base}/{db}")
}

/// pgBackRest as the postgres user, with the test's configuration file.
fn pgbackrest(config: &Path, args: &[&str]) {
    let mut cmd = std::process::Command::new("runuser");
    cmd.args(["-u", "postgres", "--", "pgbackrest"]).arg(format!("--config={}", config.display())).args(args);
    run(&mut cmd);
}

/// A directory owned by postgres.
fn postgres_dir(path: &Path) {
    fs::create_dir_all(path).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o750)).unwrap();
    chown_postgres(path);
}

/// Checks that image `name` left no files behind in the daemon's data directory.
fn nothing_left(d: &Daemon, name: &str) {
    let images = d.data_dir.join("images");
    assert!(!images.join(name).exists() && !images.join(format!("{name}.partial")).exists(), "{name} left files");
    assert!(!d.data_dir.join("run/images").join(name).exists(), "{name} left its run directory");
}

/// The rows of `app.t` in a clone, by tag, as "A:n B:m …".
fn tags(c: &Clone) -> String {
    psql(
        &in_db(c.url(), "app"),
        "SELECT string_agg(tag || ':' || n, ' ' ORDER BY tag) FROM (SELECT tag, count(*) n FROM t GROUP BY tag) s",
    )
    .unwrap()
}

#[test]
fn images_from_a_dump_a_repository_and_an_archive_to_a_target_time() {
    let test = "images_from_a_dump_a_repository_and_an_archive_to_a_target_time";
    support::require_fuse(test);
    support::pg::require(test);
    assert!(support::which("pgbackrest"), "{test} needs pgBackRest (pgbackrest); scripts/install installs it");
    let work = tempfile::Builder::new().prefix("thinclone-backups-").tempdir_in("/var/tmp").unwrap();
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let w = work.path();

    // The source: its WAL archived both to a directory (cp) and to a pgBackRest repository.
    let source = Server::new(&w.join("src"), PORT, w);
    source.initdb();
    let (repo, archive, base, dumps) = (w.join("repo"), w.join("archive"), w.join("base"), w.join("dumps"));
    for dir in [&repo, &archive, &base, &dumps, &w.join("pgbackrest")] {
        postgres_dir(dir);
    }
    let config = w.join("pgbackrest.conf");
    fs::write(
        &config,
        format!(
            "[global]\nrepo1-path={}\nlog-level-file=off\nlog-level-console=warn\nlock-path={pb}\nlog-path={pb}\n\
             start-fast=y\n\n[main]\npg1-path={}\npg1-port={PORT}\npg1-socket-path={}\n",
            repo.display(),
            source.data.display(),
            source.socket_dir.display(),
            pb = w.join("pgbackrest").display(),
        ),
    )
    .unwrap();
    let mut conf = fs::OpenOptions::new().append(true).open(source.data.join("postgresql.conf")).unwrap();
    std::io::Write::write_all(
        &mut conf,
        format!(
            "\narchive_mode = on\narchive_command = 'cp %p {}/%f && pgbackrest --config={} --stanza=main archive-push %p'\n",
            archive.display(),
            config.display()
        )
        .as_bytes(),
    )
    .unwrap();
    drop(conf);
    source.start();
    source.psql("postgres", "CREATE DATABASE app");
    source.psql("app", "CREATE TABLE t (id serial PRIMARY KEY, tag text NOT NULL); INSERT INTO t (tag) SELECT 'base' FROM generate_series(1, 500)");

    // A time before every backup.
    let early = source.psql("postgres", "SELECT now()::text");
    std::thread::sleep(Duration::from_millis(1100));

    // The backups: a dump, a full pgBackRest backup, a base backup.
    let dump = dumps.join("app.dump");
    run(command("pg_dump")
        .arg("-h")
        .arg(&source.socket_dir)
        .args(["-p", &PORT.to_string(), "-U", "postgres", "-Fc", "-f"])
        .arg(&dump)
        .arg("app"));
    // The other formats: a directory and a tar file.
    for (format, path) in [("-Fd", dumps.join("app.dir")), ("-Ft", dumps.join("app.tar"))] {
        run(command("pg_dump")
            .arg("-h")
            .arg(&source.socket_dir)
            .args(["-p", &PORT.to_string(), "-U", "postgres", format, "-f"])
            .arg(&path)
            .arg("app"));
    }
    let plain = dumps.join("app.sql");
    run(command("pg_dump")
        .arg("-h")
        .arg(&source.socket_dir)
        .args(["-p", &PORT.to_string(), "-U", "postgres", "-Fp", "-f"])
        .arg(&plain)
        .arg("app"));
    pgbackrest(&config, &["--stanza=main", "stanza-create"]);
    pgbackrest(&config, &["--stanza=main", "--type=full", "backup"]);
    run(command("pg_basebackup")
        .arg("-h")
        .arg(&source.socket_dir)
        .args(["-p", &PORT.to_string(), "-U", "postgres", "-c", "fast", "-D"])
        .arg(&base));

    // Rows A, the target time (the server's clock), rows B, all archived.
    source.psql("app", "INSERT INTO t (tag) SELECT 'A' FROM generate_series(1, 100)");
    let after_a = source.psql("postgres", "SELECT pg_current_wal_insert_lsn()::text");
    std::thread::sleep(Duration::from_millis(1100));
    let target = source.psql("postgres", "SELECT now()::text");
    let later = source.psql("postgres", "SELECT (now() + interval '1 day')::text");
    std::thread::sleep(Duration::from_millis(1100));
    source.psql("app", "INSERT INTO t (tag) SELECT 'B' FROM generate_series(1, 50)");
    let segment = source.psql("postgres", "SELECT pg_walfile_name(pg_switch_wal())");
    let archived = support::eventually(Duration::from_secs(60), || {
        let last = source.psql("postgres", "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver");
        (last.as_str() >= segment.as_str()).then_some(())
    });
    assert!(archived.is_some(), "{segment} was not archived within 60 s:\n{}", source.log_tail());
    let major = source.psql("postgres", "SELECT current_setting('server_version_num')::int / 10000");
    source.stop();

    let d = Daemon::start(&w.join("data"), (8540, 8559));

    // (a) A dump: a new cluster of its version, its database made by the dump.
    // A modification script runs on it as on any image.
    let script = w.join("script.sql");
    fs::write(&script, "CREATE TABLE made_by_script AS SELECT 42 AS answer;\n").unwrap();
    let image: Image = d.ok(&[
        "image",
        "create",
        "from-dump",
        "--from-dump",
        dump.to_str().unwrap(),
        "--script",
        script.to_str().unwrap(),
    ]);
    assert_eq!(image.status, ImageStatus::Ready, "{image:?}");
    assert_eq!(image.source, format!("dump:{}", dump.display()));
    assert_eq!(image.engine_version.as_deref(), Some(major.as_str()), "the dump's major version");
    let c: Clone = d.ok(&["clone", "create", "dump-c", "--image", "from-dump"]);
    assert_eq!(tags(&c), "base:500");
    assert_eq!(psql(c.url(), "SELECT answer FROM made_by_script").unwrap(), "42");

    // The directory and tar formats, and a plain dump.
    for (name, path) in [("from-dir-dump", "app.dir"), ("from-tar-dump", "app.tar"), ("from-plain-dump", "app.sql")] {
        let path = dumps.join(path);
        let image: Image = d.ok(&["image", "create", name, "--from-dump", path.to_str().unwrap()]);
        assert_eq!(image.status, ImageStatus::Ready, "{image:?}");
        let c: Clone = d.ok(&["clone", "create", &format!("{name}-c"), "--image", name]);
        // The plain dump has no CREATE DATABASE: it is restored into `postgres`.
        let db = if name == "from-plain-dump" { "postgres" } else { "app" };
        let rows = psql(&in_db(c.url(), db), "SELECT count(*) FROM t").unwrap();
        assert_eq!(rows, "500", "{name}");
        d.ok::<Operation>(&["clone", "rm", &format!("{name}-c")]);
        d.ok::<Operation>(&["image", "rm", name]);
    }

    // (b) pgBackRest, to the target time: A is there, B is not.
    let image: Image =
        d.ok(&["image", "create", "from-repo", "--from-repo", repo.to_str().unwrap(), "--target-time", &target]);
    assert_eq!(image.status, ImageStatus::Ready, "{image:?}");
    assert!(image.source.starts_with(&format!("repo:{}?stanza=main&target_time=", repo.display())), "{}", image.source);
    let c: Clone = d.ok(&["clone", "create", "repo-c", "--image", "from-repo"]);
    assert_eq!(tags(&c), "A:100 base:500");
    // Nothing of the repository is left in the image: no clone reaches it.
    let auto = fs::read_to_string(d.data_dir.join("images/from-repo/postgresql.auto.conf")).unwrap_or_default();
    assert!(!auto.contains("pgbackrest") && !auto.contains("restore_command"), "{auto}");

    // (c) A base backup and the WAL archive, to the same time.
    let image: Image = d.ok(&[
        "image",
        "create",
        "from-archive",
        "--from-dir",
        base.to_str().unwrap(),
        "--archive",
        archive.to_str().unwrap(),
        "--target-time",
        &target,
    ]);
    assert_eq!(image.status, ImageStatus::Ready, "{image:?}");
    assert!(image.source.contains(" + archive "), "{}", image.source);
    let c: Clone = d.ok(&["clone", "create", "archive-c", "--image", "from-archive"]);
    assert_eq!(tags(&c), "A:100 base:500");
    assert!(!d.data_dir.join("images/from-archive/recovery.signal").exists());

    // The same archive to a position of the log just after A.
    let image: Image = d.ok(&[
        "image",
        "create",
        "from-archive-lsn",
        "--from-dir",
        base.to_str().unwrap(),
        "--archive",
        archive.to_str().unwrap(),
        "--target-lsn",
        &after_a,
    ]);
    assert_eq!(image.status, ImageStatus::Ready, "{image:?}");
    let c: Clone = d.ok(&["clone", "create", "archive-lsn-c", "--image", "from-archive-lsn"]);
    assert_eq!(tags(&c), "A:100 base:500");
    d.ok::<Operation>(&["clone", "rm", "archive-lsn-c"]);
    d.ok::<Operation>(&["image", "rm", "from-archive-lsn"]);

    // Bad inputs: each fails with what is wrong, and leaves nothing.
    let corrupt = dumps.join("corrupt.dump");
    let bytes = fs::read(&dump).unwrap();
    fs::write(&corrupt, &bytes[..bytes.len() / 2]).unwrap();
    let err = d.cli::<Value>(&["image", "create", "corrupt", "--from-dump", corrupt.to_str().unwrap()]).unwrap_err();
    assert!(err.contains("dump") && err.contains(corrupt.to_str().unwrap()), "{err}");
    nothing_left(&d, "corrupt");

    // A plain dump whose restore fails: the image fails with psql's message.
    let failing = dumps.join("failing.sql");
    let mut text = fs::read_to_string(&plain).unwrap();
    text.push_str("\nSELECT no_such_function();\n");
    fs::write(&failing, text).unwrap();
    let err = d.cli::<Value>(&["image", "create", "failing", "--from-dump", failing.to_str().unwrap()]).unwrap_err();
    assert!(err.contains("restoring the dump") && err.contains("no_such_function"), "{err}");
    nothing_left(&d, "failing");

    let err = d
        .cli::<Value>(&["image", "create", "nostanza", "--from-repo", repo.to_str().unwrap(), "--stanza", "nosuch"])
        .unwrap_err();
    assert!(err.contains("no stanza nosuch") && err.contains("main"), "{err}");
    nothing_left(&d, "nostanza");

    let err = d
        .cli::<Value>(&[
            "image",
            "create",
            "toolate",
            "--from-dir",
            base.to_str().unwrap(),
            "--archive",
            archive.to_str().unwrap(),
            "--target-time",
            &later,
        ])
        .unwrap_err();
    assert!(err.contains("ends before"), "{err}");
    nothing_left(&d, "toolate");

    // A target before the backups: refused, not silently a later point.
    let err = d
        .cli::<Value>(&["image", "create", "tooearly", "--from-repo", repo.to_str().unwrap(), "--target-time", &early])
        .unwrap_err();
    assert!(err.contains("before the end of every backup of stanza main"), "{err}");
    nothing_left(&d, "tooearly");
    let err = d
        .cli::<Value>(&[
            "image",
            "create",
            "tooearly2",
            "--from-dir",
            base.to_str().unwrap(),
            "--archive",
            archive.to_str().unwrap(),
            "--target-time",
            &early,
        ])
        .unwrap_err();
    assert!(err.contains("before the base backup began"), "{err}");
    nothing_left(&d, "tooearly2");

    // Options that do not go together are refused before anything is made.
    for (args, expected) in [
        (vec!["--from-dump", dump.to_str().unwrap(), "--target-time", &target], "target_time goes with"),
        (vec!["--from-dir", base.to_str().unwrap(), "--target-time", &target], "target_time goes with"),
    ] {
        let mut all = vec!["image", "create", "bad"];
        all.extend(args);
        let err = d.cli::<Value>(&all).unwrap_err();
        assert!(err.contains(expected), "{all:?}: {err}");
    }

    for name in ["corrupt", "failing", "toolate", "tooearly", "tooearly2"] {
        // A failed image's record (a 400 at creation leaves none).
        if let Ok(image) = d.cli::<Image>(&["image", "show", name]) {
            assert_eq!(image.status, ImageStatus::Failed, "{image:?}");
            d.ok::<Operation>(&["image", "rm", name]);
        }
    }
    for (clone, image) in [("dump-c", "from-dump"), ("repo-c", "from-repo"), ("archive-c", "from-archive")] {
        d.ok::<Operation>(&["clone", "rm", clone]);
        d.ok::<Operation>(&["image", "rm", image]);
    }
}
