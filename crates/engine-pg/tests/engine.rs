//! The PostgreSQL engine against real PostgreSQL 15 servers on plain directories: images
//! prepared from crashed servers and live copies, instances started, adopted, stopped and
//! logged into, and one regression test per engine defect fixed.
//!
//! They run as root, with the servers as the OS user `postgres`. A missing prerequisite
//! fails the test with a message; nothing is skipped.

mod support;

use std::fs;
use std::net::{IpAddr, TcpListener};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use engine::{Error, InstanceSpec, Secret, SourceUrl};
use support::{anything_runs_on, free_port, setup, Source, START};
use sys::Program;

#[test]
fn a_prepared_copy_of_a_crashed_server_starts_without_redo() {
    let t = setup();
    let source = t.initdb("source", "postgres", &["-A", "trust"]);
    let instance = t.start(&t.spec("source", &source, "postgres"));
    instance.sql("CREATE TABLE t AS SELECT g FROM generate_series(1, 10000) g").unwrap();
    assert!(t.engine.is_in_use(&source));
    // Crash it: the copy below needs recovery.
    // SAFETY: kill has no memory-safety preconditions; the pid is our child's.
    unsafe { libc::kill(instance.pid() as i32, libc::SIGKILL) };
    drop(instance);
    std::thread::sleep(Duration::from_millis(300));
    assert!(!t.engine.is_in_use(&source), "a dead server's postmaster.pid counted as in use");

    let image = t.path("image");
    sys::tree::copy(&source, &image, sys::tree::CopyData::Copy, None).unwrap();
    let facts = t.engine.prepare(&image, &t.path("run-prepare"), &t.user).unwrap();
    assert_eq!((facts.version.as_str(), facts.superuser.as_str()), ("15", "postgres"));
    assert!(!image.join("postmaster.pid").exists());

    let spec = t.spec("clone", &image, &facts.superuser);
    let clone = t.start(&spec);
    assert_eq!(clone.sql("SELECT count(*) FROM t").unwrap(), "10000");
    // The run directory is the server user's alone.
    for name in ["", "pg_hba.conf", "pg_ident.conf", "postgres.log", "postgres.pid"] {
        let meta = fs::metadata(spec.run_dir.join(name)).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (t.user.uid, t.user.gid), "{name}");
    }
    assert_eq!(fs::metadata(&spec.run_dir).unwrap().permissions().mode() & 0o777, 0o700);
    let log = fs::read_to_string(spec.run_dir.join("postgres.log")).unwrap();
    assert!(log.contains("database system was shut down at"), "{log}");
    assert!(!log.contains("redo starts"), "the clone replayed WAL:\n{log}");
    // Nothing of ours went into the data directory.
    for name in ["postgres.log", "postgres.pid"] {
        assert!(!image.join(name).exists(), "{name} was written into the data directory");
    }
    clone.stop(Duration::from_secs(60)).unwrap();
    assert!(!t.engine.is_in_use(&image));
}

/// Regression: a failed image preparation left its postgres running, and the caller then
/// deleted the directory under it. The preparing server is stopped on every early return.
#[test]
fn regression_a_failed_prepare_leaves_no_server_running() {
    let t = setup();
    let data = t.initdb("data", "postgres", &["-A", "trust"]);
    let instance = t.start(&t.spec("setup", &data, "postgres"));
    // A database that nobody can connect to: preparing fails after its server started.
    instance.sql("CREATE DATABASE broken").unwrap();
    instance.sql("ALTER DATABASE broken SET session_preload_libraries = 'thinclone_no_such_library'").unwrap();
    instance.stop(Duration::from_secs(60)).unwrap();

    let run_dir = t.path("run-prepare");
    let err = t.engine.prepare(&data, &run_dir, &t.user).unwrap_err().to_string();
    assert!(err.contains("thinclone_no_such_library"), "{err}");
    let log = fs::read_to_string(run_dir.join("postgres.log")).unwrap();
    assert!(log.contains("ready to accept connections"), "the failure came before the server started:\n{log}");
    assert!(!t.engine.is_in_use(&data), "the preparing server still runs");
    assert!(!anything_runs_on(&data), "a process still runs on {}", data.display());
}

/// Regression: the connection URL hard-coded the user `postgres`, while an image's
/// bootstrap superuser may have another name.
#[test]
fn regression_the_superuser_is_the_images_own() {
    let t = setup();
    let data = t.initdb("data", "alice", &["-A", "trust"]);
    // Every statement logged: the password must not be among them.
    let mut conf = fs::read_to_string(data.join("postgresql.conf")).unwrap();
    conf.push_str("\nlog_statement = 'all'\n");
    fs::write(data.join("postgresql.conf"), conf).unwrap();

    let facts = t.engine.prepare(&data, &t.path("run-prepare"), &t.user).unwrap();
    assert_eq!(facts.superuser, "alice");
    let mut spec = t.spec("clone", &data, &facts.superuser);
    spec.listen = vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()];
    let instance = t.start(&spec);
    let password = Secret::new("pä55 w'rd\"%@:/");
    instance.set_password(&facts.superuser, &password).unwrap();
    assert_eq!(instance.sql("SELECT current_user").unwrap(), "alice");
    for host in ["127.0.0.1", "::1"] {
        let url = t.engine.url(host, spec.port, &facts.superuser, password.expose());
        assert_eq!(t.engine.query(&url, "SELECT current_user").unwrap(), "alice", "{host}");
    }
    let wrong = t.engine.url("127.0.0.1", spec.port, "alice", "not it");
    let err = t.engine.query(&wrong, "SELECT 1").unwrap_err().to_string();
    assert!(err.contains("password authentication failed") && !err.contains("not it"), "{err}");

    let err = instance.set_password("nobody", &password).unwrap_err().to_string();
    assert!(err.contains("no database user named nobody") && !err.contains("SCRAM"), "{err}");
    let log = fs::read_to_string(spec.run_dir.join("postgres.log")).unwrap();
    assert!(log.contains("statement: DO"), "log_statement did not apply:\n{log}");
    assert!(!log.contains("pä55"), "the password reached the server's log:\n{log}");
    instance.stop(Duration::from_secs(60)).unwrap();
}

/// A non-loopback IPv4 address of this machine, made on an interface of its own when there
/// is none (removed again when dropped).
struct Address {
    ip: IpAddr,
    made: Option<String>,
}

impl Address {
    fn find_or_make() -> Address {
        let out = Program::new("ip").args(["-o", "-4", "addr", "show", "scope", "global"]).run().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let found = text.lines().find_map(|l| l.split_whitespace().nth(3)?.split('/').next()?.parse::<IpAddr>().ok());
        if let Some(ip) = found {
            return Address { ip, made: None };
        }
        let link = format!("tc{}", std::process::id() % 100_000);
        let ip = "198.51.100.7";
        // A dummy interface, or where the kernel has none, one end of a veth pair.
        let peer = format!("{link}p");
        let kinds = [vec!["dummy"], vec!["veth", "peer", "name", peer.as_str()]];
        let made = kinds.iter().find_map(|kind| {
            let mut args = vec!["link", "add", link.as_str(), "type"];
            args.extend(kind.iter().copied());
            Program::new("ip").args(&args).run().err().map_or(Some(()), |e| {
                eprintln!("ip {args:?}: {e}");
                None
            })
        });
        assert!(made.is_some(), "this machine has no non-loopback address, and no interface could be made for one");
        let address = Address { ip: ip.parse().unwrap(), made: Some(link.clone()) };
        for args in [vec!["addr", "add", &format!("{ip}/32"), "dev", &link], vec!["link", "set", &link, "up"]] {
            Program::new("ip").args(&args).run().unwrap_or_else(|e| panic!("ip {args:?}: {e}"));
        }
        address
    }
}

impl Drop for Address {
    fn drop(&mut self) {
        if let Some(link) = &self.made {
            if let Err(e) = Program::new("ip").args(["link", "del", link]).run() {
                eprintln!("removing the test's dummy interface {link}: {e}");
            }
        }
    }
}

/// Regression: listening on an address other than loopback was useless, as pg_hba.conf
/// admitted only 127.0.0.1 and ::1. With remote clients allowed, a password login from
/// another address works; without, it is refused.
#[test]
fn regression_remote_clients_log_in_with_a_password() {
    let t = setup();
    let address = Address::find_or_make();
    let data = t.initdb("data", "postgres", &["-A", "trust"]);
    let password = Secret::new("remote-pw");
    for remote_clients in [true, false] {
        let mut spec = t.spec(&format!("remote-{remote_clients}"), &data, "postgres");
        spec.listen = vec![address.ip];
        spec.remote_clients = remote_clients;
        let instance = t.start(&spec);
        instance.set_password("postgres", &password).unwrap();
        let url = t.engine.url(&address.ip.to_string(), spec.port, "postgres", password.expose());
        let answer = t.engine.query(&url, "SELECT inet_client_addr()");
        if remote_clients {
            assert_eq!(answer.unwrap(), address.ip.to_string());
        } else {
            let err = answer.unwrap_err().to_string();
            assert!(err.contains("no pg_hba.conf entry"), "{err}");
        }
        instance.stop(Duration::from_secs(60)).unwrap();
    }
}

#[test]
fn an_instance_is_stopped_when_dropped_and_a_detached_one_is_adopted() {
    let t = setup();
    let data = t.initdb("data", "postgres", &["-A", "trust"]);
    let spec = t.spec("a", &data, "postgres");

    let instance = t.start(&spec);
    assert!(t.engine.is_in_use(&data));
    drop(instance);
    assert!(!t.engine.is_in_use(&data) && !anything_runs_on(&data), "a dropped instance kept running");

    let mut instance = t.start(&spec);
    assert!(instance.is_running());
    let pid = instance.pid();
    let err = t.engine.start(&spec, START).err().expect("a second server started on one directory");
    assert!(matches!(err, Error::InUse(_)) && err.is_callers_mistake(), "{err}");
    assert!(t.engine.is_in_use(&data), "a refused start stopped the running server");
    instance.detach();
    assert!(sys::procfs::is_live_process_of(pid as i32, &data), "a detached instance stopped");

    let mut adopted = t.engine.adopt(&spec).expect("the detached server was not adopted");
    assert_eq!(adopted.pid(), pid);
    assert!(adopted.is_running());
    assert_eq!(adopted.sql("SELECT 6 * 7").unwrap(), "42");
    adopted.stop(Duration::from_secs(60)).unwrap();
    assert!(!t.engine.is_in_use(&data) && !anything_runs_on(&data));
    assert!(t.engine.adopt(&spec).is_none(), "a stopped server was adopted");

    // An adopted instance that is dropped stops too.
    t.start(&spec).detach();
    drop(t.engine.adopt(&spec).expect("not adopted"));
    assert!(!t.engine.is_in_use(&data) && !anything_runs_on(&data), "a dropped adopted instance kept running");
}

#[test]
fn a_server_that_cannot_start_says_why_and_leaves_nothing() {
    let t = setup();
    let data = t.initdb("data", "postgres", &["-A", "trust"]);
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut spec = t.spec("a", &data, "postgres");
    spec.port = taken.local_addr().unwrap().port();
    let err = t.engine.start(&spec, START).err().expect("started on a taken port").to_string();
    assert!(err.contains("could not bind") || err.contains("could not create any TCP/IP sockets"), "{err}");
    assert!(!anything_runs_on(&data));

    let empty = t.dir("empty");
    let err = t.engine.start(&t.spec("b", &empty, "postgres"), START).err().unwrap();
    assert!(matches!(err, Error::NotADataDir { .. }), "{err}");
    let err = t.engine.start(&InstanceSpec { version: "9.6".into(), ..t.spec("c", &data, "postgres") }, START);
    assert!(err.err().unwrap().to_string().contains("9.6 is not supported"));
}

#[test]
fn a_live_server_is_copied_and_prepared() {
    let t = setup();
    let mut source = Source::init(&t, "source");
    source.start();
    source.sql("ALTER ROLE postgres PASSWORD 'src-pw'; CREATE TABLE t AS SELECT g FROM generate_series(1, 5000) g");
    let url = |password: &str| {
        SourceUrl::parse(&format!("postgresql://postgres:{password}@127.0.0.1:{}/postgres", source.port)).unwrap()
    };

    t.engine.probe(&url("src-pw")).unwrap();
    let closed = SourceUrl::parse(&format!("postgresql://postgres:src-pw@127.0.0.1:{}/postgres", free_port())).unwrap();
    let err = t.engine.probe(&closed).unwrap_err();
    assert!(matches!(err, Error::Unreachable { .. }) && err.is_callers_mistake(), "{err}");
    assert!(!err.to_string().contains("src-pw"), "{err}");

    let target = t.dir("copy");
    let err = t.engine.copy_live(&url("wrong-pw"), &target, &t.user, &mut |_, _| {}).unwrap_err();
    assert!(matches!(err, Error::Unreachable { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("password authentication failed") && !text.contains("wrong-pw"), "{text}");

    let target = t.dir("copy2");
    let mut reports = Vec::new();
    t.engine.copy_live(&url("src-pw"), &target, &t.user, &mut |done, total| reports.push((done, total))).unwrap();
    let &(done, total) = reports.last().expect("no progress was reported");
    assert!(total > 1 << 20 && done == total, "{reports:?}");

    // As from a Debian server, whose configuration lives in /etc.
    fs::remove_file(target.join("postgresql.conf")).unwrap();
    let facts = t.engine.prepare(&target, &t.path("run-prepare"), &t.user).unwrap();
    assert_eq!(facts.superuser, "postgres");
    assert!(!target.join("backup_label").exists() && !target.join("backup_manifest").exists());
    let spec = t.spec("clone", &target, &facts.superuser);
    let clone = t.start(&spec);
    assert_eq!(clone.sql("SELECT count(*) FROM t").unwrap(), "5000");
    assert!(spec.run_dir.join("postgresql.conf").exists() && !target.join("postgresql.conf").exists());
    clone.stop(Duration::from_secs(60)).unwrap();
}

#[test]
fn the_sample_database_shows_a_change() {
    let t = setup();
    let data = t.dir("sample");
    let sample = t.engine.make_sample(&data, &t.path("run-sample"), &t.user, 1).unwrap();
    assert!(sample.description.starts_with("pgbench scale 1 (about "), "{}", sample.description);
    assert!(!t.engine.is_in_use(&data), "the sample's server still runs");
    let instance = t.start(&t.spec("sample", &data, "postgres"));
    assert_eq!(instance.sql(&sample.check_sql).unwrap(), sample.unchanged_value);
    instance.sql(&sample.change_sql).unwrap();
    assert_ne!(instance.sql(&sample.check_sql).unwrap(), sample.unchanged_value);
    instance.stop(Duration::from_secs(60)).unwrap();
}

/// The agent's statements go over a socket in a directory the clone's OS user can change: a
/// socket swapped for a link to another clone's must get neither the password (set over the
/// protocol by the agent itself, wire.rs) nor a statement (through psql).
#[test]
fn a_swapped_socket_gets_nothing() {
    let t = setup();
    let data = t.initdb("data", "postgres", &["-A", "trust"]);
    let (a_data, b_data) = (t.path("a"), t.path("b"));
    t.copy(&data, &a_data);
    t.copy(&data, &b_data);
    let (a, b) = (t.spec("a", &a_data, "postgres"), t.spec("b", &b_data, "postgres"));
    let instance_a = t.start(&a);
    let instance_b = t.start(&b);
    instance_b.set_password("postgres", &Secret::new("b-pw")).unwrap();
    let socket = |spec: &engine::InstanceSpec| spec.run_dir.join(format!(".s.PGSQL.{}", spec.port));
    fs::remove_file(socket(&a)).unwrap();
    std::os::unix::fs::symlink(socket(&b), socket(&a)).unwrap();
    let err = instance_a.set_password("postgres", &Secret::new("a-pw")).unwrap_err().to_string();
    assert!(err.contains("its socket was replaced") && !err.contains("SCRAM"), "{err}");
    let err = instance_a.sql("CREATE DATABASE planted").unwrap_err().to_string();
    assert!(err.contains("its socket was replaced"), "{err}");
    // B kept its own password, and got nothing.
    let b_url = |password: &str| t.engine.url("127.0.0.1", b.port, "postgres", password);
    assert_eq!(
        t.engine.query(&b_url("b-pw"), "SELECT count(*) FROM pg_database WHERE datname = 'planted'").unwrap(),
        "0"
    );
    let err = t.engine.query(&b_url("a-pw"), "SELECT 1").unwrap_err().to_string();
    assert!(err.contains("password authentication failed"), "{err}");
    instance_a.stop(Duration::from_secs(60)).unwrap();
    instance_b.stop(Duration::from_secs(60)).unwrap();
}
