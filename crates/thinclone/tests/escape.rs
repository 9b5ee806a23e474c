//! Issue 10, acceptance 2: a clone's database superuser cannot reach beyond its clone. A
//! real `thinclone serve` as root makes two cowfs clones, A and B, of one image of the
//! shared pgbench source; in A, as its superuser over its URL, every way PostgreSQL offers
//! to reach the host (`COPY … TO/FROM PROGRAM`, `COPY … TO` a file, `pg_read_binary_file`,
//! `pg_ls_dir`, `lo_import`, `lo_export`) is tried on B's data and layer directories, the
//! image's files, the state database, the administrator's token file and a TLS key; so are
//! writing into the image and into B, connecting to B's socket and port without its
//! password, and signalling B's postmaster, its mount and the server. Every attempt fails,
//! while the same ways work on A's own files (so the attempts are real); B and the image
//! are unchanged and B still answers. A's superuser still creates extensions, no other local
//! user gets into A's socket, and what A's superuser leaves running in the background ends
//! with A's server.

mod support;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use api::Operation;
use support::daemon::{pgbench_source, psql, Daemon, UrlOf};

fn require(test: &str) {
    support::require_fuse(test);
    support::pg::require(test);
    assert!(support::which("runuser"), "{test} needs runuser (util-linux); scripts/install installs it");
}

/// A clone as the test sees it from outside (as root).
struct Seen {
    url: String,
    dir: PathBuf,
    data: PathBuf,
    layer: PathBuf,
    run: PathBuf,
    port: u16,
    uid: u32,
    postmaster: i32,
    mount: i32,
}

fn seen(d: &Daemon, clone: &api::Clone) -> Seen {
    let name = clone.name.as_str();
    let dir = d.data_dir.join("clones").join(name);
    let record: serde_json::Value = serde_json::from_str(&fs::read_to_string(dir.join("clone.json")).unwrap()).unwrap();
    let uid = record["uid"].as_u64().unwrap_or_else(|| panic!("clone {name} has no uid of its own: {record}")) as u32;
    let run = d.data_dir.join("run/clones").join(name);
    let pid = |path: &Path| fs::read_to_string(path).unwrap().lines().next().unwrap().trim().parse::<i32>().unwrap();
    Seen {
        url: clone.url().to_owned(),
        data: dir.join("data"),
        layer: dir.join("layer"),
        port: clone.port,
        uid,
        postmaster: pid(&run.join("postgres.pid")),
        mount: pid(&dir.join("mount.pid")),
        run,
        dir,
    }
}

fn uids_of(pid: i32) -> Vec<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap();
    line.split_whitespace().map(|u| u.parse().unwrap()).collect()
}

/// Live (not zombie) processes that run as `uid`.
fn processes_of(uid: u32) -> Vec<i32> {
    sys::procfs::processes_of_uid(uid)
}

/// An SQL string constant holding `text` (dollar-quoted: shell commands keep their quotes).
fn lit(text: &str) -> String {
    assert!(!text.contains("$q$"));
    format!("$q${text}$q$")
}

/// `stat -c '%U %a'` as root, for messages.
fn describe(path: &Path) -> String {
    fs::symlink_metadata(path)
        .map_or_else(|e| e.to_string(), |m| format!("uid {} mode {:o}", m.uid(), m.mode() & 0o7777))
}

/// What one attempt tried, and how it ended; for a program, also what it said.
struct Attempt {
    what: String,
    result: Result<String, String>,
    said: Option<String>,
}

/// Runs an attempt as A's superuser, one psql each.
fn attempt(url: &str, what: impl Into<String>, sql: &str) -> Attempt {
    let what = what.into();
    let result = psql(url, &format!("CREATE TEMP TABLE out (line text); {sql}"));
    Attempt { what, result, said: None }
}

/// `COPY … TO PROGRAM command` (`from: false`) or `COPY out FROM PROGRAM command` as A's
/// superuser. The program is then run once more to learn what it says on stderr and how it
/// exits: a failed program's stderr goes to the server's log, not into the error answered.
fn program(url: &str, command: &str, from: bool) -> Attempt {
    let sql = if from {
        format!("COPY out FROM PROGRAM {}; SELECT count(*) FROM out", lit(command))
    } else {
        format!("COPY (SELECT 'planted') TO PROGRAM {}", lit(command))
    };
    let what = format!("COPY {} PROGRAM '{command}'", if from { "FROM" } else { "TO" });
    let mut a = attempt(url, what, &sql);
    // Tabs and backslashes would be read as COPY's own.
    let probe = format!(
        "said=$( ({command}) 2>&1 >/dev/null </dev/null ); code=$?; printf '%s exit %s\\n' \"$said\" \"$code\" | tr '\\t\\\\' '  '"
    );
    let again = format!(
        "CREATE TEMP TABLE said (line text); COPY said FROM PROGRAM {}; SELECT string_agg(line, ' ') FROM said",
        lit(&probe)
    );
    a.said = Some(psql(url, &again).unwrap_or_else(|e| format!("(could not run it again: {e})")));
    a
}

/// The ways to read a file as the database's OS user.
fn read_file_attempts(url: &str, path: &Path) -> Vec<Attempt> {
    let p = path.display().to_string();
    vec![
        program(url, &format!("cat {p}"), true),
        program(url, &format!("base64 -w 76 {p}"), true),
        program(url, &format!("cp {p} /dev/null"), false),
        attempt(
            url,
            format!("pg_read_binary_file('{p}')"),
            &format!("SELECT length(pg_read_binary_file({}))", lit(&p)),
        ),
        // A zero-byte read opens the file all the same, and never trips on its encoding.
        attempt(url, format!("pg_read_file('{p}')"), &format!("SELECT pg_read_file({}, 0, 0) IS NOT NULL", lit(&p))),
        attempt(url, format!("lo_import('{p}')"), &format!("SELECT lo_import({})", lit(&p))),
        attempt(url, format!("COPY out FROM '{p}'"), &format!("COPY out FROM {}", lit(&p))),
    ]
}

/// The ways to list a directory as the database's OS user.
fn list_dir_attempts(url: &str, path: &Path) -> Vec<Attempt> {
    let p = path.display().to_string();
    vec![
        program(url, &format!("ls -a {p}"), false),
        program(url, &format!("ls -a {p}"), true),
        attempt(url, format!("pg_ls_dir('{p}')"), &format!("SELECT count(*) FROM pg_ls_dir({})", lit(&p))),
    ]
}

/// The ways to write a file as the database's OS user.
fn write_file_attempts(url: &str, path: &Path) -> Vec<Attempt> {
    let p = path.display().to_string();
    vec![
        attempt(url, format!("COPY … TO '{p}'"), &format!("COPY (SELECT 'planted') TO {}", lit(&p))),
        program(url, &format!("cat > {p}"), false),
        attempt(
            url,
            format!("lo_export(…, '{p}')"),
            &format!(
                "CREATE TEMP TABLE lo AS SELECT lo_from_bytea(0, 'planted') AS o; SELECT lo_export(o, {}) FROM lo",
                lit(&p)
            ),
        ),
    ]
}

/// Checks that every attempt failed because the host refused it: the server's own
/// permission error, or a program that failed and said why (`refusals`).
fn assert_all_fail(attempts: &[Attempt], refusals: &[&str], why: &str) {
    let mut wrong = String::new();
    for a in attempts {
        let outcome = match (&a.result, &a.said) {
            (Ok(out), _) => format!("SUCCEEDED {out:?}"),
            (Err(_), Some(said)) => format!("failed; the program said: {said}"),
            (Err(e), None) => e.lines().next().unwrap_or_default().to_owned(),
        };
        // The record of what was tried and how each attempt ended, in the test's output.
        eprintln!("attempt: {} -> {outcome}", a.what);
        let refused = match (&a.result, &a.said) {
            (Ok(_), _) => false,
            (Err(e), Some(said)) => {
                e.contains("program \"")
                    && e.contains("failed")
                    && !said.ends_with("exit 0")
                    && refusals.iter().any(|r| said.contains(r))
            }
            (Err(e), None) => e.contains("Permission denied"),
        };
        if !refused {
            wrong += &format!("  {} -> {outcome}\n", a.what);
        }
    }
    assert!(wrong.is_empty(), "{why}:\n{wrong}");
}

/// What a program says when the host refuses it a file, a directory or a process.
const DENIED: &[&str] = &["Permission denied", "Operation not permitted"];

fn assert_all_work(attempts: &[Attempt], why: &str) {
    let failed: Vec<String> =
        attempts.iter().filter_map(|a| a.result.as_ref().err().map(|e| format!("  {}: {e}", a.what))).collect();
    assert!(failed.is_empty(), "{why} (so the attempts elsewhere prove nothing):\n{}", failed.join("\n"));
}

/// Digests of files that nothing in a running clone changes.
fn digests(paths: &[PathBuf]) -> Vec<(PathBuf, u64)> {
    paths.iter().map(|p| (p.clone(), support::digest_file(p))).collect()
}

/// Every path under `dir` whose name is `name` (as root).
fn find_named(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = fs::read_dir(&d) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with(name) {
                found.push(path.clone());
            }
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(path);
            }
        }
    }
    found
}

fn wait_ready(d: &Daemon, name: &str, timeout: Duration) -> api::Clone {
    let deadline = Instant::now() + timeout;
    loop {
        let clone: api::Clone = d.ok(&["clone", "show", name]);
        if clone.status == api::CloneStatus::Ready && psql(clone.url(), "SELECT 1").is_ok() {
            return clone;
        }
        assert!(Instant::now() < deadline, "clone {name} is not ready again: {clone:?}\n{}", d.log_tail(30));
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn a_clones_superuser_cannot_reach_beyond_its_clone() {
    require("a_clones_superuser_cannot_reach_beyond_its_clone");
    let work = tempfile::Builder::new().prefix("thinclone-escape-").tempdir_in("/var/tmp").unwrap();
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let mut d = Daemon::start(&work.path().join("data"), (8040, 8049));
    let data_dir = d.data_dir.clone();
    d.ok::<api::Image>(&["image", "create", "img", "--from-dir", pgbench_source().to_str().unwrap()]);
    let image = data_dir.join("images/img");
    let image_before = support::snapshot(&image);
    let clone_a: api::Clone = d.ok(&["clone", "create", "a", "--image", "img", "--driver", "cowfs"]);
    let clone_b: api::Clone = d.ok(&["clone", "create", "b", "--image", "img", "--driver", "cowfs"]);
    let a = seen(&d, &clone_a);
    let b = seen(&d, &clone_b);
    psql(&b.url, "CREATE TABLE marker AS SELECT 'b is intact' AS v").unwrap();

    // The layout the isolation rests on.
    assert_ne!(a.uid, b.uid, "two clones share a uid");
    for s in [&a, &b] {
        assert!(!sys::User::uid_is_known(s.uid), "uid {} belongs to a user of the host", s.uid);
        assert_eq!(uids_of(s.postmaster), vec![s.uid; 4], "the postmaster does not run as the clone's uid");
        assert_eq!(uids_of(s.mount)[0], 0, "the mount runs as root");
        for (path, uid, mode) in [
            (&s.dir, 0, 0o711),
            (&s.layer, 0, 0o700),
            (&s.dir.join("clone.json"), 0, 0o600),
            (&s.data, s.uid, 0o700),
            (&s.run, s.uid, 0o700),
        ] {
            let meta = fs::metadata(path).unwrap();
            assert_eq!((meta.uid(), meta.mode() & 0o7777), (uid, mode), "{}: {}", path.display(), describe(path));
        }
    }
    for (path, mode) in [(data_dir.clone(), 0o711), (data_dir.join("images"), 0o711), (image.clone(), 0o700)] {
        let meta = fs::metadata(&path).unwrap();
        assert_eq!((meta.uid(), meta.mode() & 0o7777), (0, mode), "{}", path.display());
    }
    let token = data_dir.join("admin.token");
    assert!(token.is_file(), "the server wrote no admin.token in {}", data_dir.display());
    // The TLS key: wherever the operator keeps it, root's and private; here beside the state.
    let tls_key = data_dir.join("tls.key");
    fs::write(&tls_key, "-----BEGIN PRIVATE KEY-----\nnot a real key\n-----END PRIVATE KEY-----\n").unwrap();
    fs::set_permissions(&tls_key, fs::Permissions::from_mode(0o600)).unwrap();
    let state = data_dir.join("state.db");
    // The agents' certificate authority and the channel's key (the test server serves an
    // agent channel).
    let ca_key = data_dir.join("pki/ca.key");
    let channel_key = data_dir.join("pki/channel.key");
    for secret in [&state, &token, &b.dir.join("clone.json"), &ca_key, &channel_key] {
        let meta = fs::metadata(secret).unwrap();
        assert_eq!((meta.uid(), meta.mode() & 0o777), (0, 0o600), "{}", secret.display());
    }
    let mut mount_file = fs::read_dir(&b.layer).unwrap().flatten().map(|e| e.path()).filter(|p| p.is_file());
    let b_layer_file = mount_file.next().expect("B's layer holds no file");
    let b_dsm: Vec<PathBuf> = fs::read_dir("/dev/shm")
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| fs::metadata(p).is_ok_and(|m| m.uid() == b.uid))
        .collect();
    assert!(!b_dsm.is_empty(), "B's server has no shared memory segment in /dev/shm");

    // The same ways work on A's own files: the attempts below are real.
    let mut own = read_file_attempts(&a.url, &a.data.join("PG_VERSION"));
    own.extend(list_dir_attempts(&a.url, &a.data));
    own.extend(write_file_attempts(&a.url, &a.data.join("mine")));
    assert_all_work(&own, "A's superuser cannot use A's own files");
    let a_password = a.url.split(':').nth(2).unwrap().split('@').next().unwrap().to_owned();
    let psql_bin = support::pg::bin_dir().unwrap().join("psql");
    let own_tcp = format!(
        "PGPASSWORD={a_password} {} -X -w -h 127.0.0.1 -p {} -U postgres -c 'SELECT 1'",
        psql_bin.display(),
        a.port
    );
    assert_all_work(&[program(&a.url, &own_tcp, false)], "psql does not run from A's programs");

    // Reading: B's data and layer, the image, the server's state, token and key.
    let mut reads = Vec::new();
    for file in [
        b.data.join("PG_VERSION"),
        b.data.join("global/pg_control"),
        b_layer_file.clone(),
        b.dir.join("clone.json"),
        b.dir.join("mount.log"),
        b.run.join("postgres.log"),
        b.run.join("pg_hba.conf"),
        image.join("PG_VERSION"),
        image.join("global/pg_control"),
        state.clone(),
        token.clone(),
        tls_key.clone(),
        ca_key.clone(),
        channel_key.clone(),
        PathBuf::from(format!("/proc/{}/environ", b.postmaster)),
    ]
    .into_iter()
    .chain(b_dsm.iter().cloned())
    {
        reads.extend(read_file_attempts(&a.url, &file));
    }
    for dir in [
        b.data.clone(),
        b.data.join("base"),
        b.layer.clone(),
        b.dir.clone(),
        b.run.clone(),
        image.clone(),
        image.join("base"),
        data_dir.clone(),
        data_dir.join("pki"),
        data_dir.join("clones"),
        data_dir.join("images"),
        data_dir.join("run/clones"),
        PathBuf::from(format!("/proc/{}/cwd", b.postmaster)),
        PathBuf::from(format!("/proc/{}/root", b.mount)),
    ] {
        reads.extend(list_dir_attempts(&a.url, &dir));
    }
    assert_all_fail(&reads, DENIED, "A's superuser read what is not A's");

    // Writing into the image, into B (its data, layer, run directory) and beside the state.
    let mut writes = Vec::new();
    for file in [
        image.join("planted"),
        image.join("PG_VERSION"),
        b.data.join("planted"),
        b.data.join("PG_VERSION"),
        b.layer.join("planted"),
        b.run.join("pg_hba.conf"),
        b.dir.join("planted"),
        data_dir.join("planted"),
        state.clone(),
    ] {
        writes.extend(write_file_attempts(&a.url, &file));
    }
    for command in [
        format!("touch {}/planted", image.display()),
        format!("rm -f {}/PG_VERSION", b.data.display()),
        format!("ln -s /etc/shadow {}/base/planted", image.display()),
        format!("mkdir {}/planted", b.layer.display()),
    ] {
        writes.push(program(&a.url, &command, false));
    }
    assert_all_fail(&writes, DENIED, "A's superuser wrote where it may not");

    // B's server without B's password: its socket, and its port.
    let mut connects = Vec::new();
    for command in [
        format!("{} -X -w -h {} -p {} -U postgres -c 'SELECT 1'", psql_bin.display(), b.run.display(), b.port),
        format!("{} -X -w -h 127.0.0.1 -p {} -U postgres -c 'SELECT 1'", psql_bin.display(), b.port),
        format!(
            "PGPASSWORD={a_password} {} -X -w -h 127.0.0.1 -p {} -U postgres -c 'SELECT 1'",
            psql_bin.display(),
            b.port
        ),
    ] {
        connects.push(program(&a.url, &command, false));
    }
    assert_all_fail(
        &connects,
        &["Permission denied", "no password supplied", "password authentication failed"],
        "A's superuser reached B's server without B's password",
    );

    // Signals: B's postmaster, B's mount, the server itself.
    let mut signals = Vec::new();
    for pid in [b.postmaster as u32, b.mount as u32, d.pid().unwrap()] {
        for signal in ["TERM", "KILL"] {
            let command = format!("kill -s {signal} {pid}");
            signals.push(program(&a.url, &command, false));
        }
    }
    assert_all_fail(&signals, DENIED, "A's superuser signalled a process that is not A's");

    // Nothing of it took: B answers, unchanged; the image is as it was; nothing was planted.
    assert_eq!(psql(&b.url, "SELECT v FROM marker").unwrap(), "b is intact");
    assert_eq!(seen(&d, &d.ok(&["clone", "show", "b"])).postmaster, b.postmaster, "B's server restarted");
    assert!(support::diff(&image_before, &support::snapshot(&image)).is_none(), "the image changed");
    let b_static = [b.data.join("PG_VERSION"), b.run.join("pg_hba.conf"), b.run.join("pg_ident.conf")];
    let b_digests = digests(&b_static);
    assert_eq!(
        fs::read_to_string(b.data.join("PG_VERSION")).unwrap().trim(),
        support::pg::bin_dir().unwrap().parent().unwrap().file_name().unwrap().to_str().unwrap()
    );
    for dir in [&data_dir, &b.dir] {
        let planted = find_named(dir, "planted");
        assert!(planted.is_empty(), "planted files: {planted:?}");
    }

    // Inside its own clone the superuser is a real one.
    psql(&a.url, "CREATE EXTENSION pgcrypto").unwrap();
    assert_eq!(
        psql(&a.url, "SELECT encode(digest('x', 'sha1'), 'hex')").unwrap(),
        "11f6ad8ec52a2984abaafd7c3b516503785c2072"
    );
    assert_eq!(psql(&a.url, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user").unwrap(), "t");

    // No other local user gets into A's socket: not the way to it, and not through it.
    let socket_psql =
        format!("{} -X -w -h {} -p {} -U postgres -c 'SELECT 1'", psql_bin.display(), a.run.display(), a.port);
    let out = Command::new("runuser").args(["-u", "nobody", "--", "sh", "-c", &socket_psql]).output().unwrap();
    assert!(!out.status.success(), "nobody connected to A's socket");
    fs::set_permissions(&a.run, fs::Permissions::from_mode(0o711)).unwrap();
    fs::set_permissions(a.run.join(format!(".s.PGSQL.{}", a.port)), fs::Permissions::from_mode(0o777)).unwrap();
    let out = Command::new("runuser").args(["-u", "nobody", "--", "sh", "-c", &socket_psql]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("authentication failed"), "nobody through A's open socket: {err}");
    fs::set_permissions(&a.run, fs::Permissions::from_mode(0o700)).unwrap();

    // What A's superuser leaves running in the background ends with A's server.
    // (The row is read first: a program that exits before PostgreSQL has written to it
    // fails the COPY with a broken pipe.)
    let background = "cat >/dev/null; nohup sleep 1000 >/dev/null 2>&1 &";
    psql(&a.url, &format!("COPY (SELECT '') TO PROGRAM {}", lit(background))).unwrap();
    assert!(
        processes_of(a.uid).len() > processes_of_server(a.postmaster).len(),
        "the background program is not running"
    );
    d.ok::<api::Clone>(&["clone", "stop", "a"]);
    assert!(processes_of(a.uid).is_empty(), "processes of A's uid outlived its server: {:?}", processes_of(a.uid));

    // A kill of everything A's uid may signal ends A's server only; it is repaired.
    let a_again = seen(&d, &d.ok(&["clone", "start", "a"]));
    let err = psql(&a_again.url, &format!("COPY (SELECT '') TO PROGRAM {}", lit("kill -9 -1"))).unwrap_err();
    assert!(err.contains("terminated") || err.contains("connection") || err.contains("closed"), "{err}");
    assert_eq!(psql(&b.url, "SELECT v FROM marker").unwrap(), "b is intact");
    assert_eq!(seen(&d, &d.ok(&["clone", "show", "b"])).postmaster, b.postmaster, "B's server was hit");
    wait_ready(&d, "a", Duration::from_secs(60));
    assert_eq!(digests(&b_static), b_digests, "B's files changed");
    assert!(support::diff(&image_before, &support::snapshot(&image)).is_none(), "the image changed");

    // A removed clone's uid is not the next clone's, and nothing runs as it any more.
    d.ok::<Operation>(&["clone", "rm", "a"]);
    assert!(processes_of(a.uid).is_empty());
    let clone_c: api::Clone = d.ok(&["clone", "create", "c", "--image", "img", "--driver", "cowfs"]);
    let c = seen(&d, &clone_c);
    assert!(c.uid != a.uid && c.uid != b.uid, "clone c got uid {} again", c.uid);
    for name in ["b", "c"] {
        d.ok::<Operation>(&["clone", "rm", name]);
    }
    d.ok::<Operation>(&["image", "rm", "img"]);
    d.stop();
}

/// The processes of a server: the postmaster and its children.
fn processes_of_server(postmaster: i32) -> Vec<i32> {
    let mut pids = vec![postmaster];
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<i32>().ok());
        if ppid == Some(postmaster) {
            pids.push(pid);
        }
    }
    pids
}

/// A clone made before clones had uids of their own (its record names none) gets one at the
/// next start of the server, with every file it made given to it, and keeps its data; the
/// uids of clones of two data directories are never the same.
#[test]
fn a_clone_without_a_uid_gets_one_and_two_servers_never_share_a_uid() {
    require("a_clone_without_a_uid_gets_one_and_two_servers_never_share_a_uid");
    let work = tempfile::Builder::new().prefix("thinclone-escape-").tempdir_in("/var/tmp").unwrap();
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let source = pgbench_source();
    let mut d = Daemon::start(&work.path().join("data"), (8050, 8059));
    let other = Daemon::start(&work.path().join("other"), (8060, 8069));
    for server in [&d, &other] {
        server.ok::<api::Image>(&["image", "create", "img", "--from-dir", source.to_str().unwrap()]);
    }
    let k: api::Clone = d.ok(&["clone", "create", "k", "--image", "img", "--driver", "cowfs"]);
    let theirs: api::Clone = other.ok(&["clone", "create", "k", "--image", "img", "--driver", "cowfs"]);
    let (k_seen, theirs_seen) = (seen(&d, &k), seen(&other, &theirs));
    assert_ne!(k_seen.uid, theirs_seen.uid, "clones of two data directories share a uid");
    // Files the clone made, owned by its uid in its layer.
    psql(&k_seen.url, "CREATE TABLE made AS SELECT g FROM generate_series(1, 1000) g").unwrap();

    // As an older thinclone left it: no uid in the record.
    d.kill9();
    let record_path = k_seen.dir.join("clone.json");
    let mut record: serde_json::Value = serde_json::from_str(&fs::read_to_string(&record_path).unwrap()).unwrap();
    record.as_object_mut().unwrap().remove("uid");
    fs::write(&record_path, serde_json::to_vec_pretty(&record).unwrap()).unwrap();
    d.restart();
    let k = wait_ready(&d, "k", Duration::from_secs(60));
    let after = seen(&d, &k);
    assert_ne!(after.uid, k_seen.uid, "the clone kept a uid its record did not name");
    assert_ne!(after.uid, theirs_seen.uid, "the clone took the other server's clone's uid");
    assert_eq!(uids_of(after.postmaster)[0], after.uid);
    assert_eq!(psql(&after.url, "SELECT count(*) FROM made").unwrap(), "1000");
    psql(&after.url, "INSERT INTO made SELECT 0; CREATE TABLE more (x int)").unwrap();
    // Only this test's: once given up, the old uid is free for the clones of daemons that
    // other tests run at the same time.
    let old_uid_here = || {
        processes_of(k_seen.uid)
            .into_iter()
            .filter(|pid| fs::read_link(format!("/proc/{pid}/cwd")).map_or(true, |cwd| cwd.starts_with(work.path())))
            .collect::<Vec<_>>()
    };
    assert!(old_uid_here().is_empty(), "processes of the old uid: {:?}", old_uid_here());
    // The other server's clone was never touched.
    assert_eq!(seen(&other, &other.ok(&["clone", "show", "k"])).postmaster, theirs_seen.postmaster);
    let record: serde_json::Value = serde_json::from_str(&fs::read_to_string(&record_path).unwrap()).unwrap();
    assert_eq!(record["chown_pending"], false, "{record}");
    for server in [&d, &other] {
        server.ok::<Operation>(&["clone", "rm", "k"]);
        server.ok::<Operation>(&["image", "rm", "img"]);
    }
}
