//! Instances that run as an OS identity of their own (a synthetic uid with no entry in the
//! user database, as the agent gives each clone): the socket lets in only this process's
//! OS user, as the superuser; a socket swapped for another server's is noticed before any
//! statement reaches it; and the owner role of `--clone-role owner` is no superuser but owns
//! what the clone holds.
//!
//! They run as root. A missing prerequisite fails the test with a message.

mod support;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use engine::{InstanceSpec, Secret, User};
use support::{setup, Setup, BIN};
use sys::Program;

/// A prepared image of a new cluster, copied to `name` and given to `user`.
fn clone_of(t: &Setup, image: &Path, name: &str, user: &User) -> std::path::PathBuf {
    let data = t.path(name);
    sys::tree::copy(image, &data, sys::tree::CopyData::Copy, None).unwrap();
    sys::tree::chown(&data, user.uid, user.gid).unwrap();
    data
}

fn spec_as(t: &Setup, name: &str, data: &Path, user: &User) -> InstanceSpec {
    InstanceSpec { user: user.clone(), ..t.spec(name, data, "postgres") }
}

/// psql over the instance's socket as `user`; its stderr on failure.
fn psql_on_socket_as(spec: &InstanceSpec, user: &User, sql: &str) -> Result<String, String> {
    Program::new(Path::new(BIN).join("psql"))
        .args(["-X", "-A", "-t", "-q", "-h"])
        .arg(&spec.run_dir)
        .args(["-p", &spec.port.to_string(), "-U", "postgres", "-d", "postgres", "-c", sql])
        .user(user)
        .env("PGCONNECT_TIMEOUT", "10")
        .run()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .map_err(|e| e.to_string())
}

fn uid_of_process(pid: u32) -> u32 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap().split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn a_synthetic_user_runs_the_server_and_only_this_process_uses_its_socket() {
    let t = setup();
    let image = t.initdb("image", "postgres", &["-A", "trust"]);
    t.engine.prepare(&image, &t.path("run-prepare"), &t.user).unwrap();
    let a_user = User::synthetic(2_000_099_970, 2_000_099_970);
    let b_user = User::synthetic(2_000_099_971, 2_000_099_971);
    assert!(!User::uid_is_known(a_user.uid) && !User::uid_is_known(b_user.uid));
    let a = spec_as(&t, "a", &clone_of(&t, &image, "a", &a_user), &a_user);
    let b = spec_as(&t, "b", &clone_of(&t, &image, "b", &b_user), &b_user);
    let a_server = t.start(&a);
    let b_server = t.start(&b);
    assert_eq!(uid_of_process(a_server.pid()), a_user.uid, "the server does not run as its own uid");
    assert_eq!(a_server.sql("SELECT current_user").unwrap(), "postgres");
    let run = fs::metadata(&a.run_dir).unwrap();
    assert_eq!((run.uid(), run.mode() & 0o777), (a_user.uid, 0o700));
    let ident = fs::read_to_string(a.run_dir.join("pg_ident.conf")).unwrap();
    assert!(ident.contains("thinclone \"root\" \"postgres\""), "{ident}");

    // Another local user, and the server's own uid, even with the way to the socket open:
    // peer authentication lets neither in.
    fs::set_permissions(&a.run_dir, fs::Permissions::from_mode(0o711)).unwrap();
    let socket = a.run_dir.join(format!(".s.PGSQL.{}", a.port));
    fs::set_permissions(&socket, fs::Permissions::from_mode(0o777)).unwrap();
    let nobody = User::lookup("nobody").expect("the tests need the OS user nobody");
    for (who, user) in [("nobody", &nobody), ("the server's own uid", &a_user)] {
        let err = psql_on_socket_as(&a, user, "SELECT 1").expect_err(who);
        assert!(err.contains("authentication failed") || err.contains("could not look up"), "{who}: {err}");
    }
    fs::set_permissions(&a.run_dir, fs::Permissions::from_mode(0o700)).unwrap();

    // A's socket swapped for a link to B's (as A's superuser could, through COPY … TO
    // PROGRAM): neither a statement nor a password set through A reaches B.
    let b_password = Secret::new("b-password");
    b_server.set_password("postgres", &b_password).unwrap();
    fs::remove_file(&socket).unwrap();
    std::os::unix::fs::symlink(b.run_dir.join(format!(".s.PGSQL.{}", b.port)), &socket).unwrap();
    let err = a_server.sql("CREATE TABLE planted ()").unwrap_err().to_string();
    assert!(err.contains("is not the one of"), "{err}");
    let err = a_server.set_password("postgres", &Secret::new("a-password")).unwrap_err().to_string();
    assert!(err.contains("is not the one of"), "{err}");
    assert_eq!(b_server.sql("SELECT count(*) FROM pg_class WHERE relname = 'planted'").unwrap(), "0");
    let url = t.engine.url("127.0.0.1", b.port, "postgres", b_password.expose());
    assert_eq!(t.engine.query(&url, "SELECT 1").unwrap(), "1", "B's password changed");

    // A log swapped for a link to a file of root's is not written through at the next start.
    let secret = t.path("root-only");
    fs::write(&secret, "secret\n").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    a_server.stop(Duration::from_secs(60)).unwrap();
    let log = a.run_dir.join("postgres.log");
    fs::remove_file(&log).unwrap();
    std::os::unix::fs::symlink(&secret, &log).unwrap();
    for name in ["pg_hba.conf", "pg_ident.conf"] {
        fs::remove_file(a.run_dir.join(name)).unwrap();
        std::os::unix::fs::symlink(&secret, a.run_dir.join(name)).unwrap();
    }
    let a_server = t.start(&a);
    assert_eq!(fs::read_to_string(&secret).unwrap(), "secret\n", "a file of root's was written through a link");
    assert!(!fs::symlink_metadata(&log).unwrap().file_type().is_symlink());
    assert_eq!(a_server.sql("SELECT 1").unwrap(), "1");
    a_server.stop(Duration::from_secs(60)).unwrap();
    b_server.stop(Duration::from_secs(60)).unwrap();
}

#[test]
fn the_owner_role_owns_the_clone_and_is_no_superuser() {
    let t = setup();
    let image = t.initdb("image", "postgres", &["-A", "trust"]);
    let setup_spec = t.spec("setup", &image, "postgres");
    let server = t.start(&setup_spec);
    for sql in [
        "CREATE TABLE t (id serial PRIMARY KEY, v text)",
        "INSERT INTO t (v) SELECT 'x' FROM generate_series(1, 10)",
        "CREATE SCHEMA s",
        "CREATE TABLE s.u AS SELECT 1 AS one",
        "CREATE VIEW s.w AS SELECT * FROM s.u",
        "CREATE FUNCTION s.f() RETURNS int LANGUAGE sql AS 'SELECT 42'",
        "CREATE DOMAIN s.d AS int CHECK (VALUE > 0)",
        "CREATE DATABASE other",
        // A role that could run programs on the server: made an owner, it loses that.
        "CREATE ROLE app2 LOGIN",
        "GRANT pg_execute_server_program TO app2",
    ] {
        server.sql(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    server.stop(Duration::from_secs(60)).unwrap();
    t.engine.prepare(&image, &t.path("run-prepare"), &t.user).unwrap();

    let user = User::synthetic(2_000_099_972, 2_000_099_972);
    let spec = spec_as(&t, "c", &clone_of(&t, &image, "c", &user), &user);
    let clone = t.start(&spec);
    let hidden = Secret::new("nobody-knows-this");
    clone.set_password("postgres", &hidden).unwrap();
    let password = Secret::new("the-clone's-password");
    clone.make_owner("app", &password).unwrap();
    // Again: it only sets the password.
    clone.make_owner("app", &password).unwrap();

    let as_app = |database: &str, sql: &str| {
        let url = t
            .engine
            .url("127.0.0.1", spec.port, "app", password.expose())
            .replace("/postgres", &format!("/{database}"));
        t.engine.query(&url, sql).map_err(|e| e.to_string())
    };
    assert_eq!(as_app("postgres", "SELECT current_user").unwrap(), "app");
    assert_eq!(
        as_app("postgres", "SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = 'app'").unwrap(),
        "f"
    );
    assert_eq!(
        as_app(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname IN ('postgres', 'other') AND datdba::regrole::text = 'app'"
        )
        .unwrap(),
        "2"
    );
    as_app("postgres", "INSERT INTO t (v) VALUES ('y')").unwrap();
    assert_eq!(as_app("postgres", "SELECT count(*) FROM t").unwrap(), "11");
    assert_eq!(as_app("postgres", "SELECT s.f() + (SELECT one FROM s.w)").unwrap(), "43");
    as_app("postgres", "ALTER DOMAIN s.d DROP CONSTRAINT d_check").unwrap();
    as_app("postgres", "CREATE TABLE mine (x int)").unwrap();
    as_app("other", "CREATE TABLE theirs (x int)").unwrap();
    // A trusted extension is the database owner's to create.
    as_app("postgres", "CREATE EXTENSION pgcrypto").unwrap();
    for forbidden in [
        "COPY (SELECT 1) TO PROGRAM 'id'",
        "SELECT pg_read_file('/etc/hostname')",
        "ALTER ROLE app SUPERUSER",
        "CREATE ROLE other_admin",
    ] {
        let err = as_app("postgres", forbidden).expect_err(forbidden);
        assert!(err.contains("permission denied") || err.contains("must be superuser"), "{forbidden}: {err}");
    }
    // The superuser's password is not the clone's.
    let superuser = t.engine.url("127.0.0.1", spec.port, "postgres", password.expose());
    assert!(t.engine.query(&superuser, "SELECT 1").unwrap_err().to_string().contains("password authentication failed"));

    // A role that could run programs is no longer one that can.
    clone.make_owner("app2", &password).unwrap();
    let url = t.engine.url("127.0.0.1", spec.port, "app2", password.expose());
    let err = t.engine.query(&url, "COPY (SELECT 1) TO PROGRAM 'id'").unwrap_err().to_string();
    assert!(err.contains("permission denied") || err.contains("must be superuser"), "{err}");
    // The bootstrap superuser cannot be the owner.
    let err = clone.make_owner("postgres", &password).unwrap_err().to_string();
    assert!(err.contains("bootstrap superuser"), "{err}");
    clone.stop(Duration::from_secs(60)).unwrap();
}
