//! What a careful operator must be able to trust (issue 9): a clone that failed to start is
//! kept; a full disk fails what ran out of room, frees what it wrote and harms nothing else;
//! a dead mount is noticed and repaired; one server per data directory; images nobody can
//! write; a running server's directory is not copied torn; a shutdown leaves no job behind.
//! Each check runs the real server, real mounts and real PostgreSQL servers.

mod support;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use api::{CloneStatus, ImageStatus, Operation};
use support::daemon::{pgbench_source, processes_under, psql, Daemon, UrlOf};
use support::pg::Server;

fn require(test: &str) {
    support::require_fuse(test);
    support::pg::require(test);
}

fn work_dir(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir_in("/var/tmp").unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// What the API answers a request for image `name` from the directory `dir`: its status
/// and message (through the typed client, as any program would see it).
fn image_refusal(d: &Daemon, name: &str, dir: &Path) -> (Option<api::ErrorCode>, String) {
    let request = api::CreateImage {
        name: api::Name::new(name).unwrap(),
        from_dir: Some(dir.to_str().unwrap().to_owned()),
        from_url: None,
        snapshot: false,
        from_dump: None,
        from_repo: None,
        stanza: None,
        archive: None,
        target_time: None,
        target_lsn: None,
        team: None,
        location: None,
        host: None,
        mask: Vec::new(),
        scripts: Vec::new(),
    };
    match d.client().create_image(&request) {
        Ok(op) => panic!("making image {name} of {} was accepted: {op:?}", dir.display()),
        Err(e) => (e.code(), e.to_string()),
    }
}

fn sql(url: &str, query: &str) -> String {
    psql(url, query).unwrap_or_else(|e| panic!("psql {url} -c {query:?} failed: {e}"))
}

/// A small stopped pgbench cluster (scale 5, about 80 MB) in `work/NAME`.
fn small_source(work: &Path, name: &str, port: u16) -> Server {
    let source = Server::new(&work.join(name), port, work);
    source.initdb();
    source.start();
    support::pg::run(source.pgbench().args(["-i", "-q", "-s", "5", "postgres"]));
    source.stop();
    source
}

/// Issue 9, acceptance 2: stop the server with the clone stopped, occupy the clone's port,
/// start (the clone fails to start), stop, free the port, start again: the clone is there,
/// with its data, and starts.
#[test]
fn a_clone_that_fails_to_start_is_kept() {
    require("a_clone_that_fails_to_start_is_kept");
    let work = work_dir("thinclone-trust-");
    let mut d = Daemon::start_with(&work.path().join("data"), (7960, 7969), &["--stop-clones-at-exit"]);
    d.ok::<api::Image>(&["image", "create", "img", "--from-dir", pgbench_source().to_str().unwrap()]);
    let clone: api::Clone = d.ok(&["clone", "create", "c", "--image", "img"]);
    sql(clone.url(), "CREATE TABLE precious AS SELECT 'kept' AS v");
    d.stop();

    let squatter = std::net::TcpListener::bind(("127.0.0.1", clone.port)).unwrap();
    d.restart();
    let failed: api::Clone = d.ok(&["clone", "show", "c"]);
    assert_eq!(failed.status, CloneStatus::Failed, "{failed:?}");
    let message = failed.message.clone().unwrap_or_default();
    assert!(message.contains("Address already in use") || message.contains("in use"), "{message}");
    // `start` says why it cannot, and keeps the clone.
    let err = d.cli::<api::Clone>(&["clone", "start", "c"]).unwrap_err();
    assert!(err.contains("in use"), "{err}");
    d.stop();
    assert!(d.data_dir.join("clones/c/clone.json").exists(), "the clone's record is gone");

    drop(squatter);
    d.restart();
    let back = d.wait_for_clone("c", Duration::from_secs(30), |c| c.status == CloneStatus::Ready);
    assert_eq!((back.port, back.url()), (clone.port, clone.url()));
    assert_eq!(sql(clone.url(), "SELECT v FROM precious"), "kept");
    assert!(!d.log_since_start().contains("removing"), "{}", d.log_since_start());
    d.ok::<Operation>(&["clone", "rm", "c"]);
    d.ok::<Operation>(&["image", "rm", "img"]);
}

/// Issue 9, acceptance 4: kill -9 of a clone's mount process is seen within 10 s and
/// repaired, with committed data intact; with repair off, the clone stays degraded until
/// `start` repairs it; `rm` works on a clone whose mount is dead.
#[test]
fn a_dead_mount_is_seen_and_repaired() {
    require("a_dead_mount_is_seen_and_repaired");
    let work = work_dir("thinclone-trust-");
    let mut d = Daemon::start(&work.path().join("data"), (7970, 7979));
    d.ok::<api::Image>(&["image", "create", "img", "--from-dir", pgbench_source().to_str().unwrap()]);
    let clone: api::Clone = d.ok(&["clone", "create", "c", "--image", "img"]);
    sql(clone.url(), "CREATE TABLE precious AS SELECT 'kept' AS v");
    // By default a clone's mount keeps no writeback cache (a full disk is an error).
    assert!(mount_args(mount_pid(&d, "c")).contains(&"--no-writeback-cache".to_owned()));

    // With repair (the default): degraded, then ready again on its own.
    let killed = mount_pid(&d, "c");
    unsafe { libc::kill(killed, libc::SIGKILL) };
    let started = Instant::now();
    let back = ready_on_another_mount(&d, "c", killed, Duration::from_secs(30));
    eprintln!("a killed mount was repaired in {} ms", started.elapsed().as_millis());
    assert!(started.elapsed() < Duration::from_secs(15), "the repair took {:?}", started.elapsed());
    assert!(d.log_since_start().contains("degraded: its storage (the cowfs mount) died"), "{}", d.log_tail(20));
    assert_eq!(sql(back.url(), "SELECT v FROM precious"), "kept");

    // Without repair: degraded within 10 s, with the reason; `start` repairs it.
    d.extra_args.push("--no-repair".into());
    d.restart();
    let killed = mount_pid(&d, "c");
    unsafe { libc::kill(killed, libc::SIGKILL) };
    let started = Instant::now();
    let degraded = d.wait_for_clone("c", Duration::from_secs(10), |c| c.status == CloneStatus::Degraded);
    eprintln!("a killed mount was shown degraded after {} ms: {:?}", started.elapsed().as_millis(), degraded.message);
    assert!(degraded.message.as_deref().unwrap_or("").contains("the cowfs mount) died"), "{degraded:?}");
    let started_again: api::Clone = d.ok(&["clone", "start", "c"]);
    assert_eq!(started_again.status, CloneStatus::Ready, "{started_again:?}");
    assert_eq!(sql(clone.url(), "SELECT v FROM precious"), "kept");

    // rm of a clone whose mount is dead.
    unsafe { libc::kill(mount_pid(&d, "c"), libc::SIGKILL) };
    d.wait_for_clone("c", Duration::from_secs(10), |c| c.status == CloneStatus::Degraded);
    let op: Operation = d.ok(&["clone", "rm", "c"]);
    assert_eq!(op.state, api::OperationState::Succeeded, "{op:?}");
    assert!(!d.data_dir.join("clones/c").exists());
    assert!(support::daemon::mounts_under(&d.data_dir).is_empty(), "{:?}", support::daemon::mounts_under(&d.data_dir));
    d.ok::<Operation>(&["image", "rm", "img"]);
}

/// Where the agent records the pid of clone `name`'s mount process.
fn mount_pid_file(d: &Daemon, name: &str) -> std::path::PathBuf {
    d.data_dir.join(format!("clones/{name}/mount.pid"))
}

/// The pid of clone `name`'s mount process.
fn mount_pid(d: &Daemon, name: &str) -> i32 {
    fs::read_to_string(mount_pid_file(d, name)).unwrap().trim().parse().unwrap()
}

/// Waits until clone `name` is ready on a mount other than the one of pid `killed`.
fn ready_on_another_mount(d: &Daemon, name: &str, killed: i32, timeout: Duration) -> api::Clone {
    d.wait_for_clone(name, timeout, |c| {
        c.status == CloneStatus::Ready
            && fs::read_to_string(mount_pid_file(d, name)).is_ok_and(|p| p.trim() != killed.to_string())
    })
}

/// The command line of process `pid`.
fn mount_args(pid: i32) -> Vec<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    raw.split(|&b| b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect()
}

/// `--cowfs-writeback-cache`: a clone's mount keeps the kernel's writeback cache, so pages its
/// server writes sit in the kernel until written back. A kill -9 of the mount loses those,
/// as a power cut loses what was never fsynced: the repaired clone's server recovers from
/// its log and every committed row is there, its indexes intact. Stopped, started and
/// removed like any other clone.
#[test]
fn a_clone_with_the_writeback_cache_keeps_every_commit_when_its_mount_is_killed() {
    require("a_clone_with_the_writeback_cache_keeps_every_commit_when_its_mount_is_killed");
    let work = work_dir("thinclone-trust-");
    let d = Daemon::start_with(&work.path().join("data"), (8210, 8219), &["--cowfs-writeback-cache"]);
    d.ok::<api::Image>(&["image", "create", "img", "--from-dir", pgbench_source().to_str().unwrap()]);
    let clone: api::Clone = d.ok(&["clone", "create", "c", "--image", "img"]);
    let killed = mount_pid(&d, "c");
    let args = mount_args(killed);
    assert!(!args.contains(&"--no-writeback-cache".to_owned()), "{args:?}");

    // About 150 MB of committed rows in many transactions, more than the server's 64 MB
    // buffer pool: the pages it evicts are written into the kernel's cache, and nothing
    // here asks for a checkpoint that would sync them before the kill.
    sql(clone.url(), "CREATE TABLE t (id int PRIMARY KEY, pad text)");
    for batch in 0..15 {
        sql(
            clone.url(),
            &format!(
                "INSERT INTO t SELECT g, repeat(md5(g::text), 30) FROM generate_series({} + 1, {} + 10000) g",
                batch * 10_000,
                batch * 10_000
            ),
        );
    }
    unsafe { libc::kill(killed, libc::SIGKILL) };
    let back = ready_on_another_mount(&d, "c", killed, Duration::from_secs(60));
    assert_eq!(sql(back.url(), "SELECT count(*), sum(id), count(DISTINCT pad) FROM t"), "150000|11250075000|150000");
    // The index agrees with the table: every row found through it too.
    assert_eq!(
        sql(back.url(), "SET enable_seqscan = off; SELECT count(*) FROM t WHERE id BETWEEN 1 AND 150000"),
        "150000"
    );
    assert!(!mount_args(mount_pid(&d, "c")).contains(&"--no-writeback-cache".to_owned()));

    // A clean stop and start keep everything, and a removal leaves nothing mounted.
    d.ok::<api::Clone>(&["clone", "stop", "c"]);
    d.ok::<api::Clone>(&["clone", "start", "c"]);
    assert_eq!(sql(back.url(), "SELECT count(*) FROM t"), "150000");
    d.ok::<Operation>(&["clone", "rm", "c"]);
    assert!(support::daemon::mounts_under(&d.data_dir).is_empty(), "{:?}", support::daemon::mounts_under(&d.data_dir));
    d.ok::<Operation>(&["image", "rm", "img"]);
}

/// A stopped cowfs clone keeps its mount (its page cache) for a while, so that a start soon
/// after is warm; anything else done to it unmounts it first, a kept mount that dies is
/// replaced at the next start with committed data intact, and nothing is left mounted after
/// a removal, a shutdown or the keeping time.
#[test]
fn a_stopped_clone_keeps_its_mount_for_a_while() {
    require("a_stopped_clone_keeps_its_mount_for_a_while");
    let work = work_dir("thinclone-trust-");
    let mut d = Daemon::start(&work.path().join("data"), (8200, 8209));
    d.ok::<api::Image>(&["image", "create", "img", "--from-dir", pgbench_source().to_str().unwrap()]);
    let clone: api::Clone = d.ok(&["clone", "create", "c", "--image", "img"]);
    sql(clone.url(), "CREATE TABLE precious AS SELECT 'kept' AS v");
    // A zombie is not alive: a mount an earlier agent started is reaped by whoever inherited
    // it, in its own time.
    let alive = sys::procfs::is_alive;
    let data = d.data_dir.join("clones/c/data");
    let mounted = |d: &Daemon| support::daemon::mounts_under(&d.data_dir).contains(&data);

    // Stopped: the server is down, the mount stays; the start runs on the same mount.
    let first = mount_pid(&d, "c");
    let stopped: api::Clone = d.ok(&["clone", "stop", "c"]);
    assert_eq!(stopped.status, CloneStatus::Stopped, "{stopped:?}");
    assert!(psql(clone.url(), "SELECT 1").is_err(), "the stopped clone's server still answers");
    assert!(alive(first) && mounted(&d), "the stopped clone's mount was not kept");
    // A second stop keeps it too.
    d.ok::<api::Clone>(&["clone", "stop", "c"]);
    assert!(alive(first) && mounted(&d), "a second stop dropped the kept mount");
    let started: api::Clone = d.ok(&["clone", "start", "c"]);
    assert_eq!(started.status, CloneStatus::Ready, "{started:?}");
    assert_eq!(mount_pid(&d, "c"), first, "the start did not use the kept mount");
    assert_eq!(sql(clone.url(), "SELECT v FROM precious"), "kept");

    // A kept mount killed: the next start mounts afresh, with the committed data.
    sql(clone.url(), "INSERT INTO precious VALUES ('committed before the stop')");
    d.ok::<api::Clone>(&["clone", "stop", "c"]);
    unsafe { libc::kill(first, libc::SIGKILL) };
    let started: api::Clone = d.ok(&["clone", "start", "c"]);
    assert_eq!(started.status, CloneStatus::Ready, "{started:?}");
    let second = mount_pid(&d, "c");
    assert_ne!(second, first);
    assert_eq!(sql(clone.url(), "SELECT count(*) FROM precious"), "2");

    // A checkpoint of a stopped clone is taken unmounted.
    d.ok::<api::Clone>(&["clone", "stop", "c"]);
    assert!(alive(second));
    d.ok::<api::Checkpoint>(&["clone", "checkpoint", "c", "--name", "cp1"]);
    assert!(!alive(second) && !mounted(&d), "the checkpoint left the kept mount in place");
    d.ok::<api::Clone>(&["clone", "start", "c"]);
    assert_eq!(sql(clone.url(), "SELECT count(*) FROM precious"), "2");

    // A shutdown unmounts kept mounts even when running clones run on.
    d.ok::<api::Clone>(&["clone", "stop", "c"]);
    let kept = mount_pid(&d, "c");
    d.stop();
    assert!(!alive(kept) && !mounted(&d), "a kept mount outlived the server");
    d.restart();
    let restarted: api::Clone = d.ok(&["clone", "show", "c"]);
    assert_eq!(restarted.status, CloneStatus::Stopped, "{restarted:?}");

    // Kept for the time asked only: after it, the mount goes by itself.
    d.extra_args.extend(["--keep-stopped-mounts".to_owned(), "1".to_owned()]);
    d.restart();
    d.ok::<api::Clone>(&["clone", "start", "c"]);
    d.ok::<api::Clone>(&["clone", "stop", "c"]);
    let kept = mount_pid(&d, "c");
    let deadline = Instant::now() + Duration::from_secs(15);
    while alive(kept) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!alive(kept) && !mounted(&d), "the kept mount outlived its time");
    assert!(d.log_since_start().contains("detaching the storage the stopped clone kept"), "{}", d.log_tail(20));

    // With 0, a stop unmounts at once; a removal leaves nothing mounted either way.
    d.extra_args.truncate(d.extra_args.len() - 2);
    d.extra_args.extend(["--keep-stopped-mounts".to_owned(), "0".to_owned()]);
    d.restart();
    d.ok::<api::Clone>(&["clone", "start", "c"]);
    d.ok::<api::Clone>(&["clone", "stop", "c"]);
    assert!(!mounted(&d), "a stop with --keep-stopped-mounts 0 kept the mount");
    d.extra_args.truncate(d.extra_args.len() - 2);
    d.restart();
    d.ok::<api::Clone>(&["clone", "start", "c"]);
    d.ok::<api::Clone>(&["clone", "stop", "c"]);
    assert!(mounted(&d));

    // A clone whose server the agent adopted at its start is unmounted at its stop: that
    // stop may be the server finishing one a kill -9 interrupted, and after a restart no
    // stopped clone is mounted (crash_recovery.rs checks it at every kill).
    d.ok::<api::Clone>(&["clone", "start", "c"]);
    d.kill9();
    d.restart();
    assert!(d.log_since_start().contains("adopted the clone's running server"), "{}", d.log_tail(20));
    let adopted = mount_pid(&d, "c");
    d.ok::<api::Clone>(&["clone", "stop", "c"]);
    assert!(!mounted(&d), "the stop of an adopted clone kept its mount\n{}", d.log_tail(30));
    assert!(!alive(adopted), "the adopted clone's mount process outlived its stop");
    let started: api::Clone = d.ok(&["clone", "start", "c"]);
    assert_eq!(sql(started.url(), "SELECT count(*) FROM precious"), "2");
    d.ok::<api::Clone>(&["clone", "stop", "c"]);
    assert!(mounted(&d), "a stop after a start by this agent no longer keeps the mount");
    d.ok::<Operation>(&["clone", "rm", "c"]);
    assert!(!d.data_dir.join("clones/c").exists());
    assert!(support::daemon::mounts_under(&d.data_dir).is_empty(), "{:?}", support::daemon::mounts_under(&d.data_dir));
    d.ok::<Operation>(&["image", "rm", "img"]);
}

/// Issue 9, acceptance 5: a second server on the same data directory exits with an error
/// that names the first, and touches nothing.
#[test]
fn a_second_server_on_one_data_directory_is_refused() {
    require("a_second_server_on_one_data_directory_is_refused");
    let work = work_dir("thinclone-trust-");
    let d = Daemon::start(&work.path().join("data"), (7980, 7989));
    d.ok::<api::Image>(&["image", "create", "img", "--from-dir", pgbench_source().to_str().unwrap()]);
    let clone: api::Clone = d.ok(&["clone", "create", "c", "--image", "img"]);
    let before = (
        fs::read_to_string(d.data_dir.join("run/clones/c/postgres.pid")).unwrap(),
        fs::read_to_string(d.data_dir.join("clones/c/mount.pid")).unwrap(),
    );
    let second = Command::new(support::thinclone_bin())
        .arg("serve")
        .arg("--data-dir")
        .arg(&d.data_dir)
        .args(["--listen", "127.0.0.1:0", "--ports", "7980-7989"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "a second server started: {stderr}");
    assert!(stderr.contains(&format!("pid {}", d.pid().unwrap())) && stderr.contains("is using"), "{stderr}");
    let after = (
        fs::read_to_string(d.data_dir.join("run/clones/c/postgres.pid")).unwrap(),
        fs::read_to_string(d.data_dir.join("clones/c/mount.pid")).unwrap(),
    );
    assert_eq!(before, after, "the second server touched the first one's clone");
    assert_eq!(sql(clone.url(), "SELECT 1"), "1");
    d.ok::<Operation>(&["clone", "rm", "c"]);
    d.ok::<Operation>(&["image", "rm", "img"]);
}

/// Issue 9, acceptance 6 (the image's part): a sealed image belongs to the server's user,
/// and a clone's OS identity can neither write into it nor plant a symlink in it.
#[test]
fn an_image_is_sealed_against_clones() {
    require("an_image_is_sealed_against_clones");
    let work = work_dir("thinclone-trust-");
    let d = Daemon::start(&work.path().join("data"), (7990, 7999));
    d.ok::<api::Image>(&["image", "create", "img", "--from-dir", pgbench_source().to_str().unwrap()]);
    let clone: api::Clone = d.ok(&["clone", "create", "c", "--image", "img"]);
    let image = d.data_dir.join("images/img");
    let meta = fs::metadata(&image).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (0, 0o700), "the image's directory is not private to root");
    let mut not_root = 0;
    let mut walk = vec![image.clone()];
    while let Some(dir) = walk.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let meta = fs::symlink_metadata(entry.path()).unwrap();
            not_root += (meta.uid() != 0) as u32;
            if meta.is_dir() {
                walk.push(entry.path());
            }
        }
    }
    assert_eq!(not_root, 0, "files of the image are not root's");
    // As the clones' OS user, through a shell: every attempt must fail.
    for attempt in [
        format!("touch {}/x", image.display()),
        format!("ln -s /etc/shadow {}/base/evil", image.display()),
        format!("cat {}/PG_VERSION", image.display()),
    ] {
        let out = Command::new("runuser").args(["-u", "postgres", "--", "sh", "-c", &attempt]).output().unwrap();
        assert!(!out.status.success(), "`{attempt}` as postgres succeeded");
    }
    // And from inside the clone, as its database superuser.
    let err = psql(clone.url(), &format!("COPY (SELECT 1) TO '{}/planted'", image.display())).unwrap_err();
    assert!(err.contains("Permission denied"), "{err}");
    assert!(!image.join("planted").exists());
    d.ok::<Operation>(&["clone", "rm", "c"]);
    d.ok::<Operation>(&["image", "rm", "img"]);
}

/// Issue 9, acceptance 7: `--from-dir` of a running server's directory is refused with a
/// message that says what to do; `--snapshot` takes it as a crash-consistent snapshot.
#[test]
fn a_running_servers_directory_is_refused_unless_a_snapshot() {
    require("a_running_servers_directory_is_refused_unless_a_snapshot");
    let work = work_dir("thinclone-trust-");
    let source = small_source(work.path(), "live", 24_721);
    source.start();
    source.psql("postgres", "CREATE TABLE t AS SELECT 42 AS v");
    let d = Daemon::start(&work.path().join("data"), (8000, 8009));
    let src = source.data.to_str().unwrap();
    let err = d.cli::<api::Image>(&["image", "create", "live", "--from-dir", src]).unwrap_err();
    assert!(err.contains("is running on") && err.contains("--from-url") && err.contains("--snapshot"), "{err}");
    // The API: 409 (the directory is in use), the same words.
    let (code, message) = image_refusal(&d, "live", &source.data);
    assert_eq!(code, Some(api::ErrorCode::Conflict), "{message}");
    assert!(message.contains("is running on") && message.contains("--snapshot"), "{message}");
    assert!(d.ok::<Vec<api::Image>>(&["image", "list"]).is_empty());
    // As a snapshot (here: the live directory itself; recovery runs at image time).
    let image: api::Image = d.ok(&["image", "create", "snap", "--from-dir", src, "--snapshot"]);
    assert_eq!(image.status, ImageStatus::Ready, "{image:?}");
    let clone: api::Clone = d.ok(&["clone", "create", "c", "--image", "snap"]);
    assert_eq!(sql(clone.url(), "SELECT count(*) FROM pgbench_branches"), "5");
    source.stop();
    d.ok::<Operation>(&["clone", "rm", "c"]);
    d.ok::<Operation>(&["image", "rm", "snap"]);
}

/// Issue 9: SIGTERM while an image is being made stops its copy and preparation; nothing
/// the server started outlives it but its clones, and the next start says what happened.
#[test]
fn shutdown_during_an_image_job_leaves_nothing_behind() {
    require("shutdown_during_an_image_job_leaves_nothing_behind");
    let work = work_dir("thinclone-trust-");
    let mut d = Daemon::start(&work.path().join("data"), (8010, 8019));
    // Once while the files are copied, once while the copy's own server prepares it.
    for (name, phase) in [("big", "copying"), ("prepared", "preparing")] {
        let op: Operation =
            d.ok(&["image", "create", name, "--from-dir", pgbench_source().to_str().unwrap(), "--no-wait"]);
        assert_eq!(op.state, api::OperationState::Running, "{op:?}");
        let partial = d.data_dir.join(format!("images/{name}.partial"));
        if phase == "copying" {
            std::thread::sleep(Duration::from_millis(300));
        } else {
            // Until the preparing server runs on the half-made image.
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let now = d.client().get_operation(op.id).unwrap();
                assert_eq!(now.state, api::OperationState::Running, "it ended before it was caught: {now:?}");
                let preparing = processes_under(&partial).iter().any(|(_, cmd)| cmd.contains("postgres"));
                if now.message.as_deref() == Some("preparing") && preparing {
                    break;
                }
                assert!(Instant::now() < deadline, "no server ever prepared the image: {now:?}");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let started = Instant::now();
        let status = d.stop().unwrap();
        assert!(status.success(), "the server exited with {status}");
        eprintln!("SIGTERM while {phase} an image: the server exited in {} ms", started.elapsed().as_millis());
        assert!(started.elapsed() < Duration::from_secs(30));
        let left = processes_under(&d.data_dir);
        assert!(left.is_empty(), "processes left after shutdown while {phase}: {left:?}");
        assert!(!partial.exists(), "the half-made image is left ({phase})");
        d.restart();
        let image: api::Image = d.ok(&["image", "show", name]);
        assert_eq!(image.status, ImageStatus::Failed, "{image:?}");
        d.ok::<Operation>(&["image", "rm", name]);
    }
}

/// Issue 9, acceptance 3: on a small filesystem, an image that does not fit is refused at
/// once, and one that runs out of room while copying fails within 30 s with a clear message
/// and frees its space; a clone that writes until its disk is full is shown `degraded: disk
/// full`, harms neither the other clone nor the image, and works again with all committed
/// data once space is freed.
#[test]
fn full_disks_fail_cleanly_and_harm_nothing() {
    require("full_disks_fail_cleanly_and_harm_nothing");
    let work = work_dir("thinclone-trust-");
    let source = small_source(work.path(), "small", 24_731);
    let small = support::LoopFs::new("ext4", work.path(), 600 << 20);
    let d = Daemon::start(&small.mountpoint.join("data"), (8020, 8029));

    // Too big for the disk: refused before anything is copied.
    let err = d
        .cli::<api::Image>(&["image", "create", "huge", "--from-dir", pgbench_source().to_str().unwrap()])
        .unwrap_err();
    assert!(err.contains("not enough free disk"), "{err}");
    // The API: 507 Insufficient Storage, the same words.
    let (code, message) = image_refusal(&d, "huge", &pgbench_source());
    assert_eq!(code, Some(api::ErrorCode::InsufficientStorage), "{message}");
    assert!(message.contains("not enough free disk") && message.contains("free space"), "{message}");
    assert!(d.ok::<Vec<api::Image>>(&["image", "list"]).is_empty());

    let image: api::Image = d.ok(&["image", "create", "img", "--from-dir", source.data.to_str().unwrap()]);
    let image_dir = d.data_dir.join("images/img");
    let image_before = support::snapshot(&image_dir);

    // Runs out of room while copying: a live copy whose size is not known beforehand.
    let free_before = sys::space::free_bytes(&small.mountpoint).unwrap();
    let big = Server::new(&work.path().join("bigsrc"), 24_741, work.path());
    big.initdb();
    big.start();
    big.require_passwords("pw");
    support::pg::run(big.pgbench().args(["-i", "-q", "-s", "40", "postgres"]));
    let started = Instant::now();
    let err = d
        .cli::<api::Image>(&[
            "image",
            "create",
            "toolarge",
            "--from-url",
            "postgresql://postgres:pw@127.0.0.1:24741/postgres",
        ])
        .unwrap_err();
    eprintln!("a live copy that ran out of room failed after {} ms: {err}", started.elapsed().as_millis());
    assert!(started.elapsed() < Duration::from_secs(30), "it took {:?}", started.elapsed());
    assert!(err.contains("disk is full"), "{err}");
    big.stop();
    assert!(!d.data_dir.join("images/toolarge.partial").exists(), "the half-made image is left");
    let free_after = sys::space::free_bytes(&small.mountpoint).unwrap();
    assert!(free_after + (8 << 20) >= free_before, "space was not freed: {free_before} -> {free_after}");

    // Ballast, to free room with later.
    let ballast = small.mountpoint.join("ballast");
    fs::write(&ballast, vec![1u8; 160 << 20]).unwrap();
    // Two clones; one fills the disk.
    let a: api::Clone = d.ok(&["clone", "create", "a", "--image", "img"]);
    let b: api::Clone = d.ok(&["clone", "create", "b", "--image", "img"]);
    sql(b.url(), "CREATE TABLE mine AS SELECT 'b' AS v");
    sql(b.url(), "CREATE TABLE rows AS SELECT g, md5(g::text) AS h FROM generate_series(1, 10000) g");
    // A checksum of everything B holds of its own and of the image.
    // (A sum of row hashes: no sort, so nothing spills to a full disk.)
    let b_sum = "SELECT count(*) || ' ' || sum(hashtext(x)::numeric) FROM (SELECT t::text AS x FROM rows t \
                 UNION ALL SELECT t::text FROM mine t UNION ALL SELECT t::text FROM pgbench_accounts t) s";
    let b_before = sql(b.url(), b_sum);
    let committed = fill_until_full(a.url());
    let degraded = d.wait_for_clone("a", Duration::from_secs(15), |c| c.status == CloneStatus::Degraded);
    assert!(degraded.message.as_deref().unwrap_or("").contains("disk full"), "{degraded:?}");
    // The other clone and the image are untouched.
    assert_eq!(sql(b.url(), "SELECT v FROM mine"), "b");
    assert_eq!(sql(b.url(), b_sum), b_before, "clone b's data changed");
    assert!(support::diff(&image_before, &support::snapshot(&image_dir)).is_none(), "the image changed");

    // Space comes back: the clone works again, with every committed batch.
    comes_back_with_every_batch(&d, &ballast, committed);
    d.ok::<Operation>(&["clone", "rm", "a"]);
    d.ok::<Operation>(&["clone", "rm", "b"]);
    d.ok::<Operation>(&["image", "rm", image.name.as_str()]);
}

/// Frees room by removing `ballast`; clone `a` must then be ready by itself, with at least the
/// `committed` batches [`fill_until_full`] counted, and take writes.
fn comes_back_with_every_batch(d: &Daemon, ballast: &Path, committed: u64) {
    fs::remove_file(ballast).unwrap();
    let back = d.wait_for_clone("a", Duration::from_secs(60), |c| c.status == CloneStatus::Ready);
    let counted: u64 = sql(back.url(), "SELECT count(DISTINCT n) FROM filler").parse().unwrap();
    assert!(counted >= committed, "only {counted} of {committed} committed batches are there");
    sql(back.url(), "INSERT INTO filler VALUES (-1, 'after')");
}

/// Makes table `filler` in the clone at `url` and inserts batches numbered from 0 until one
/// fails: the number of batches committed.
fn fill_until_full(url: &str) -> u64 {
    sql(url, "CREATE TABLE filler (n int, pad text)");
    let mut committed = 0u64;
    let mut full_error = String::new();
    for n in 0..10_000u64 {
        // About 6 MB a statement, of text that does not compress.
        let batch = format!(
            "INSERT INTO filler SELECT {n}, (SELECT string_agg(md5(random()::text || g || r), '') \
             FROM generate_series(1, 1000) g) FROM generate_series(1, 200) r"
        );
        match psql(url, &batch) {
            Ok(_) => committed = n + 1,
            Err(e) => {
                full_error = e;
                break;
            }
        }
    }
    eprintln!("the clone committed {committed} batches before: {full_error}");
    assert!(committed > 0 && !full_error.is_empty(), "the disk never filled");
    committed
}

/// The same with `--cowfs-writeback-cache`: the kernel accepts writes the clone's layer has
/// no room for, so its server may stop at an fsync (a PANIC) instead of failing a statement.
/// Either way the clone is shown `degraded: disk full`, and once space is freed supervision
/// brings it back with every committed batch.
#[test]
fn a_clone_with_the_writeback_cache_on_a_full_disk_comes_back_with_every_commit() {
    require("a_clone_with_the_writeback_cache_on_a_full_disk_comes_back_with_every_commit");
    let work = work_dir("thinclone-trust-");
    let source = small_source(work.path(), "small", 24_781);
    let small = support::LoopFs::new("ext4", work.path(), 700 << 20);
    let d = Daemon::start_with(&small.mountpoint.join("data"), (8220, 8229), &["--cowfs-writeback-cache"]);
    d.ok::<api::Image>(&["image", "create", "img", "--from-dir", source.data.to_str().unwrap()]);
    let ballast = small.mountpoint.join("ballast");
    fs::write(&ballast, vec![1u8; 350 << 20]).unwrap();
    let a: api::Clone = d.ok(&["clone", "create", "a", "--image", "img"]);

    let committed = fill_until_full(a.url());
    let degraded = d.wait_for_clone("a", Duration::from_secs(30), |c| c.status == CloneStatus::Degraded);
    eprintln!("degraded: {:?}", degraded.message);
    assert!(degraded.message.as_deref().unwrap_or("").contains("disk full"), "{degraded:?}");

    comes_back_with_every_batch(&d, &ballast, committed);
    d.ok::<Operation>(&["clone", "rm", "a"]);
    d.ok::<Operation>(&["image", "rm", "img"]);
}

/// Issue 9, acceptance 1: a source with a tablespace outside its data directory, imaged from
/// its directory and from its URL; clones write to a table in that tablespace; the source's
/// files (data directory and tablespace) and the images are byte-identical before and after.
#[test]
fn tablespaces_live_inside_images_and_clones() {
    require("tablespaces_live_inside_images_and_clones");
    let work = work_dir("thinclone-trust-");
    let source = Server::new(&work.path().join("ts-source"), 24_751, work.path());
    source.initdb();
    source.start();
    let tablespace = work.path().join("outside-tablespace");
    fs::create_dir(&tablespace).unwrap();
    support::pg::chown_postgres(&tablespace);
    source.psql("postgres", &format!("CREATE TABLESPACE outside LOCATION '{}'", tablespace.display()));
    source.psql("postgres", "CREATE TABLE t (v int) TABLESPACE outside; INSERT INTO t SELECT generate_series(1, 1000)");
    source.require_passwords("pw");
    let d = Daemon::start(&work.path().join("data"), (8030, 8039));

    // From its URL, while it runs.
    let before_url = (support::snapshot(&tablespace), support::snapshot(&source.data));
    let from_url: api::Image =
        d.ok(&["image", "create", "via-url", "--from-url", "postgresql://postgres:pw@127.0.0.1:24751/postgres"]);
    assert_eq!(from_url.status, ImageStatus::Ready, "{from_url:?}");
    // From its directory, stopped.
    source.stop();
    let source_before = (support::snapshot(&tablespace), support::snapshot(&source.data));
    assert!(support::diff(&before_url.0, &source_before.0).is_none(), "taking a live copy changed the tablespace");
    let from_dir: api::Image = d.ok(&["image", "create", "via-dir", "--from-dir", source.data.to_str().unwrap()]);
    assert_eq!(from_dir.status, ImageStatus::Ready, "{from_dir:?}");

    for image in ["via-url", "via-dir"] {
        let image_dir = d.data_dir.join("images").join(image);
        let link =
            fs::read_link(image_dir.join("pg_tblspc").read_dir().unwrap().next().unwrap().unwrap().path()).unwrap();
        assert!(link.is_relative(), "the image's tablespace link leads outside it: {}", link.display());
        let image_before = support::snapshot(&image_dir);
        let clone: api::Clone = d.ok(&["clone", "create", &format!("{image}-c"), "--image", image]);
        sql(clone.url(), "INSERT INTO t SELECT generate_series(1001, 50000); CHECKPOINT");
        assert_eq!(sql(clone.url(), "SELECT count(*) FROM t"), "50000");
        let location =
            sql(clone.url(), "SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'outside'");
        assert!(!location.starts_with('/'), "the clone's tablespace is at {location}");
        d.ok::<Operation>(&["clone", "rm", &format!("{image}-c")]);
        assert!(support::diff(&image_before, &support::snapshot(&image_dir)).is_none(), "image {image} changed");
    }
    let source_after = (support::snapshot(&tablespace), support::snapshot(&source.data));
    if let Some(diff) = support::diff(&source_before.0, &source_after.0) {
        panic!("the source's tablespace changed:\n{diff}");
    }
    if let Some(diff) = support::diff(&source_before.1, &source_after.1) {
        panic!("the source's data directory changed:\n{diff}");
    }
    d.ok::<Operation>(&["image", "rm", "via-url"]);
    d.ok::<Operation>(&["image", "rm", "via-dir"]);
}
