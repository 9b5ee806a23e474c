//! Issue 11: a control server and agents on many hosts, on one machine with real network
//! separation. The server runs in the root network namespace; each agent in a namespace of
//! its own, reached over a veth pair, with its own data directory; one image location (a
//! bind mount, standing for a share mounted on every host) is seen by both.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use api::{CloneStatus, ImageStatus, Operation, OperationState};
use support::daemon::{psql, UrlOf};
use support::fleet::{require_netns, AgentHost, ControlServer, Netns};

fn work_dir(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
    // Clones' uids and the database's user pass through it.
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn require(test: &str) {
    support::require_fuse(test);
    support::pg::require(test);
    require_netns(test);
}

/// A bind mount standing for a share mounted on every host: unmounting it is a share that
/// vanished.
struct Share {
    pub path: PathBuf,
    backing: PathBuf,
}

impl Share {
    fn new(work: &Path) -> Share {
        let backing = work.join("share-backing");
        let path = work.join("share");
        fs::create_dir_all(&backing).unwrap();
        fs::create_dir_all(&path).unwrap();
        let share = Share { path, backing };
        share.mount();
        share
    }

    fn mount(&self) {
        let status = Command::new("mount").arg("--bind").arg(&self.backing).arg(&self.path).status().unwrap();
        assert!(status.success(), "bind-mounting the share");
    }

    /// Unmounts it at once, as a share whose server went away (open files keep working).
    fn vanish(&self) {
        let status = Command::new("umount").arg("-l").arg(&self.path).status().unwrap();
        assert!(status.success(), "unmounting the share");
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// A small source data directory, registered with the server.
fn source(server: &ControlServer, work: &Path, port: u16) -> support::pg::Server {
    let pg = support::pg::Server::new(&work.join("src/pgdata"), port, work);
    pg.initdb();
    pg.start();
    pg.psql("postgres", "CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 5000) g");
    pg.stop();
    let _: api::Source = server.ok(&["source", "add", "src", work.join("src").to_str().unwrap()]);
    pg
}

/// A fleet: the server, two agents, the shared location. (Fields drop in this order: the
/// work directory goes last, once nothing runs in it and the share is unmounted.)
struct World {
    work: PathBuf,
    server: ControlServer,
    agents: Vec<AgentHost>,
    share: Share,
    _work: tempfile::TempDir,
}

fn world(tag: &str, ports: (u16, u16)) -> World {
    let work = work_dir(&format!("thinclone-agents-{tag}-"));
    let path = work.path().to_owned();
    let a1 = Netns::new(tag, 1);
    let a2 = Netns::new(tag, 2);
    let names = [a1.host_ip.clone(), a2.host_ip.clone()];
    let server = ControlServer::start(&path.join("server"), ports, &[&names[0], &names[1]]);
    let agents = vec![
        AgentHost::join(&server, "a1", a1, &path.join("agent1")),
        AgentHost::join(&server, "a2", a2, &path.join("agent2")),
    ];
    // Online, and reported on: an agent's first report (engines, drivers, disk) follows its
    // connection by up to one poll.
    wait_until(Duration::from_secs(30), || {
        let listed: Vec<api::agent::Agent> = server.ok(&["agent", "list"]);
        listed.len() == 2 && listed.iter().all(|a| !a.engines.is_empty() && a.free_bytes.is_some())
    });
    let share = Share::new(&path);
    World { _work: work, work: path, server, agents, share }
}

/// Issue 11, acceptance 1: an image made through agent 1 into the shared location feeds
/// clones on both agents; each accepts SQL from the server's namespace; writes in one are
/// invisible in the other; the image's files are unchanged.
#[test]
fn one_image_on_a_shared_location_feeds_clones_on_two_agents() {
    require("one_image_on_a_shared_location_feeds_clones_on_two_agents");
    let w = world("one", (8100, 8119));
    let s = &w.server;

    let location: api::agent::Location = s.ok(&["location", "add", "shared", w.share.path.to_str().unwrap()]);
    let mut reach = location.agents.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    reach.sort();
    assert_eq!(reach, ["a1", "a2"], "{location:?}");
    // A directory only one host sees is reached by that one only: each agent's own data
    // directory's parent is the same here, so a private directory is told apart by its
    // marker, not its path.
    let agents: Vec<api::agent::Agent> = s.ok(&["agent", "list"]);
    assert_eq!(agents.len(), 2);
    for a in &agents {
        assert_eq!(a.status, api::agent::AgentStatus::Online, "{a:?}");
        assert!(a.engines.iter().any(|e| e.engine == "postgresql" && !e.versions.is_empty()), "{a:?}");
        assert_eq!(a.locations.iter().map(|l| l.as_str()).collect::<Vec<_>>(), ["shared"]);
    }

    let src = source(s, &w.work, 24_811);
    let image: api::Image = s.ok(&[
        "image",
        "create",
        "prod",
        "--from-dir",
        src.data.to_str().unwrap(),
        "--location",
        "shared",
        "--host",
        "a1",
    ]);
    assert_eq!(image.status, ImageStatus::Ready);
    assert_eq!((image.location.as_str(), image.agent.as_ref().map(|a| a.as_str())), ("shared", Some("a1")));
    let image_dir = w.share.path.join("prod");
    assert!(image_dir.join("PG_VERSION").is_file(), "the image is not in the shared location");
    let before = support::snapshot(&image_dir);

    let c1: api::Clone = s.ok(&["clone", "create", "c1", "--image", "prod", "--host", "a1"]);
    let c2: api::Clone = s.ok(&["clone", "create", "c2", "--image", "prod", "--host", "a2"]);
    assert_eq!((c1.agent.as_str(), c1.host.as_str()), ("a1", w.agents[0].netns.ip.as_str()));
    assert_eq!((c2.agent.as_str(), c2.host.as_str()), ("a2", w.agents[1].netns.ip.as_str()));
    assert_eq!((c1.status, c2.status), (CloneStatus::Ready, CloneStatus::Ready));
    // Ports are the agents' own: both may have the first of the range.
    assert_eq!((c1.port, c2.port), (8100, 8100));

    // SQL from the server's namespace, over the veth pairs.
    for c in [&c1, &c2] {
        assert_eq!(psql(c.url(), "SELECT count(*) FROM t").unwrap(), "5000", "{}", c.name);
    }
    psql(c1.url(), "INSERT INTO t VALUES (-1, 'only in c1'); CREATE TABLE mine (x int)").unwrap();
    psql(c2.url(), "DELETE FROM t WHERE id <= 100").unwrap();
    assert_eq!(psql(c1.url(), "SELECT count(*) FROM t").unwrap(), "5001");
    assert_eq!(psql(c2.url(), "SELECT count(*) FROM t").unwrap(), "4900");
    assert_eq!(psql(c2.url(), "SELECT count(*) FROM t WHERE id = -1").unwrap(), "0");
    assert!(psql(c2.url(), "SELECT * FROM mine").is_err(), "c1's table is visible in c2");

    // Placement without --host spreads clones: a third goes to one of them, a fourth to the
    // other.
    let c3: api::Clone = s.ok(&["clone", "create", "c3", "--image", "prod"]);
    let c4: api::Clone = s.ok(&["clone", "create", "c4", "--image", "prod"]);
    assert_ne!(c3.agent, c4.agent, "two clones placed on one agent while the other had as many");
    assert_eq!(psql(c3.url(), "SELECT count(*) FROM t").unwrap(), "5000");

    // The list shows each clone's agent and address.
    let list: Vec<api::Clone> = s.ok(&["clone", "list"]);
    assert_eq!(list.len(), 4);
    assert!(list.iter().all(|c| c.status == CloneStatus::Ready), "{list:?}");

    for c in ["c1", "c2", "c3", "c4"] {
        let _: Operation = s.ok(&["clone", "rm", c]);
    }
    assert_eq!(support::diff(&before, &support::snapshot(&image_dir)), None, "the image changed");
    let _: Operation = s.ok(&["image", "rm", "prod"]);
    assert!(!image_dir.exists(), "the image's files are left in the shared location");
}

/// Issue 11, acceptance 2: a used or expired enrollment token is refused; a certificate the
/// server's authority did not sign, or a revoked one, is refused; plain HTTP on the agent
/// channel is refused.
#[test]
fn enrollment_and_the_channel_refuse_what_they_must() {
    require("enrollment_and_the_channel_refuse_what_they_must");
    let w = world("enr", (8120, 8129));
    let s = &w.server;
    let api_url = |netns: &Netns| format!("http://{}:{}", netns.host_ip, s.port);

    // A used token: the first join takes it, the second is refused.
    let token: api::agent::Enrollment = s.ok(&["agent", "token", "create"]);
    let join = |name: &str, token: &str, dir: &Path| {
        w.agents[0]
            .netns
            .command(&support::thinclone_bin())
            .args(["agent", "join", "--server", &api_url(&w.agents[0].netns), "--token", token, "--name", name])
            .arg("--data-dir")
            .arg(dir)
            .env("THINCLONE_LOG", "warn")
            .output()
            .unwrap()
    };
    let first = join("extra-1", &token.token, &w.work.join("extra-1"));
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let again = join("extra-2", &token.token, &w.work.join("extra-2"));
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success() && err.contains("unknown, used already or expired"), "{err}");
    assert!(!w.work.join("extra-2/agent/agent.json").exists(), "a refused join kept something");

    // An expired token.
    let short: api::agent::Enrollment = s.ok(&["agent", "token", "create", "--expires-in", "1s"]);
    std::thread::sleep(Duration::from_millis(2100));
    let late = join("extra-3", &short.token, &w.work.join("extra-3"));
    let err = String::from_utf8_lossy(&late.stderr);
    assert!(!late.status.success() && err.contains("unknown, used already or expired"), "{err}");

    // A token of another server: its authority's fingerprint is not this one's.
    let forged = format!("{}_{}", token.token.rsplit_once('_').unwrap().0, "0".repeat(64));
    let err = join("extra-4", &forged, &w.work.join("extra-4"));
    assert!(!err.status.success(), "a token naming another authority was taken");

    // The channel, with a certificate this server's authority did not sign.
    let ca_pem = fs::read_to_string(s.data_dir.join("pki/ca.pem")).unwrap();
    let channel_name = w.agents[0].netns.host_ip.clone();
    let outcome = tls_hello(s.channel_port, &channel_name, &ca_pem, &foreign_identity(), "a1");
    assert!(outcome.is_err(), "a foreign certificate was let in: {outcome:?}");
    // The agent's own certificate is let in (the check above is about the certificate).
    let own = own_identity(&w.agents[0].data_dir);
    // A second connection of a1 replaces its first; a1 reconnects at once, which is fine.
    assert!(tls_hello(s.channel_port, &channel_name, &ca_pem, &own, "a1").is_ok(), "a1's own certificate was refused");
    s.wait_for_agent("a1", "online", Duration::from_secs(20));

    // Plain HTTP on the channel: no HTTP answer, the connection closed.
    let answer = plain_http(s.channel_port);
    assert!(!answer.starts_with("HTTP/"), "the channel answered HTTP: {answer:?}");

    // Revoked: a2 is refused from then on, and shown revoked; its certificate no longer
    // gets a connection that lasts.
    let revoked: api::agent::Agent = s.ok(&["agent", "revoke", "a2"]);
    assert_eq!(revoked.status, api::agent::AgentStatus::Revoked);
    let own2 = own_identity(&w.agents[1].data_dir);
    let outcome = tls_hello(s.channel_port, &channel_name, &ca_pem, &own2, "a2");
    assert!(outcome.is_err(), "a revoked certificate was let in: {outcome:?}");
    std::thread::sleep(Duration::from_secs(3));
    let shown: api::agent::Agent = s.ok(&["agent", "show", "a2"]);
    assert_eq!(shown.status, api::agent::AgentStatus::Revoked);
    assert!(s.proc.log_since_start().contains("refused an agent whose certificate is unknown or revoked"));
    // Clones are not placed on it.
    let src = source(s, &w.work, 24_821);
    let location: api::agent::Location = s.ok(&["location", "add", "shared", w.share.path.to_str().unwrap()]);
    assert_eq!(location.agents.iter().map(|a| a.as_str()).collect::<Vec<_>>(), ["a1"]);
    let _: api::Image = s.ok(&["image", "create", "img", "--from-dir", src.data.to_str().unwrap(), "--host", "a1"]);
    let err = s.cli::<api::Clone>(&["clone", "create", "x", "--image", "img", "--host", "a2"]).unwrap_err();
    assert!(err.contains("revoked"), "{err}");
}

/// A client certificate and key signed by an authority of our own (not the server's).
fn foreign_identity() -> (String, String) {
    use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256};
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::new(vec!["a1.agents.thinclone".to_owned()]).unwrap();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let issuer = rcgen::Issuer::new(ca_params, &ca_key);
    let cert = params.signed_by(&key, &issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// The certificate and key an agent was given at enrollment.
fn own_identity(agent_dir: &Path) -> (String, String) {
    let dir = agent_dir.join("agent");
    (fs::read_to_string(dir.join("cert.pem")).unwrap(), fs::read_to_string(dir.join("key.pem")).unwrap())
}

/// Connects to the channel with `identity`, says hello as `name`, and waits for the server's
/// first frame (a ping comes within seconds to an agent it let in): `Ok` with that frame, or
/// `Err` with why the server would not talk.
fn tls_hello(
    port: u16,
    server_name: &str,
    ca_pem: &str,
    identity: &(String, String),
    name: &str,
) -> Result<String, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use std::io::{BufRead, Write};
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![CertificateDer::from_pem_slice(identity.0.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(identity.1.as_bytes()).unwrap(),
        )
        .unwrap();
    // The channel's certificate names the addresses agents dial; loopback is dialled here.
    let server_name = ServerName::try_from(server_name.to_owned()).unwrap();
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), server_name).map_err(|e| e.to_string())?;
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let hello = format!("{{\"frame\":\"hello\",\"agent\":\"{name}\",\"version\":\"test\"}}\n");
    tls.write_all(hello.as_bytes()).map_err(|e| format!("writing: {e}"))?;
    tls.flush().map_err(|e| format!("writing: {e}"))?;
    let mut line = String::new();
    match std::io::BufReader::new(&mut tls).read_line(&mut line) {
        Ok(0) => Err("closed without a word".into()),
        Ok(_) => Ok(line),
        Err(e) => Err(e.to_string()),
    }
}

/// Sends an HTTP request to the channel's port and returns what comes back.
fn plain_http(port: u16) -> String {
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let _ = tcp.write_all(b"GET /v1/health HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// Issue 11, acceptance 3: kill -9 of an agent makes it unreachable within 10 s, its clones
/// unknown, and requests for them answer 503 and change nothing; once it is back its clones
/// are ready on the same ports with the same passwords. kill -9 of the server during an
/// image creation and during a clone creation ends each operation finished or failed, with
/// nothing half-made on the agent. The shared location unmounted under a running cowfs
/// clone degrades it, and it serves its data again once the location is back.
#[test]
fn agents_servers_and_shares_fail_cleanly() {
    require("agents_servers_and_shares_fail_cleanly");
    let mut w = world("flt", (8130, 8149));
    let src = source(&w.server, &w.work, 24_831);
    let _: api::agent::Location = w.server.ok(&["location", "add", "shared", w.share.path.to_str().unwrap()]);
    let _: api::Image =
        w.server.ok(&["image", "create", "prod", "--from-dir", src.data.to_str().unwrap(), "--host", "a1"]);
    let c1: api::Clone = w.server.ok(&["clone", "create", "c1", "--image", "prod", "--host", "a1"]);
    psql(c1.url(), "CREATE TABLE kept AS SELECT 42 AS answer").unwrap();

    // kill -9 of agent a1.
    w.agents[0].proc.kill9();
    let took = w.server.wait_for_agent("a1", "unreachable", Duration::from_secs(10));
    eprintln!("agent a1 shown unreachable {} ms after kill -9", took.as_millis());
    let shown: api::Clone = w.server.ok(&["clone", "show", "c1"]);
    assert_eq!(shown.status, CloneStatus::Unknown, "{shown:?}");
    // Each request that needs it answers 503, through the API and the CLI alike.
    let client = w.server.client();
    let name = api::Name::new("c1").unwrap();
    let answers = [
        ("stop", client.stop_clone(&name).err()),
        ("reset", client.reset_clone(&name).err()),
        ("start", client.start_clone(&name).err()),
        ("rm", client.delete_clone(&name).err()),
        (
            "create",
            client
                .create_clone(&api::CreateClone {
                    name: api::Name::new("c9").unwrap(),
                    image: api::Name::new("prod").unwrap(),
                    driver: None,
                    host: Some(api::Name::new("a1").unwrap()),
                    expires_in: None,
                    expires_at: None,
                    template: None,
                })
                .err(),
        ),
    ];
    for (action, err) in answers {
        let err = err.unwrap_or_else(|| panic!("{action} was accepted while the agent is unreachable"));
        assert_eq!(err.code(), Some(api::ErrorCode::Unavailable), "{action}: {err}");
        assert_eq!(api::ErrorCode::Unavailable.http_status(), 503);
        assert!(err.to_string().contains("agent a1 is unreachable"), "{action}: {err}");
    }
    let out = w.server.cli_output(&["clone", "stop", "c1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("agent a1 is unreachable"), "{err}");
    let after: api::Clone = w.server.ok(&["clone", "show", "c1"]);
    assert_eq!((after.status, after.operation), (CloneStatus::Unknown, None), "a refused request changed the record");
    let ops: Vec<Operation> = w.server.ok(&["op", "list"]);
    assert!(ops.iter().all(|o| o.target.name.as_str() != "c9"), "a refused create left an operation");
    // Its clone's server ran on meanwhile (the agent died, not the host): it still answers.
    assert_eq!(psql(c1.url(), "SELECT answer FROM kept").unwrap(), "42");

    w.agents[0].restart();
    let took = w.server.wait_for_agent("a1", "online", Duration::from_secs(30));
    eprintln!("agent a1 online again {} ms after its restart", took.as_millis());
    let back = wait_clone(&w.server, "c1", CloneStatus::Ready, Duration::from_secs(30));
    assert_eq!((back.port, back.url.as_deref()), (c1.port, c1.url.as_deref()), "new port or password");
    assert_eq!(psql(back.url(), "SELECT answer FROM kept").unwrap(), "42");

    // kill -9 of the server while an image is made: a copy of a bigger source.
    let big = support::daemon::pgbench_source();
    let big_dir = w.work.join("bigsrc");
    support::copy_tree(&big, &big_dir.join("pgdata"));
    let _: api::Source = w.server.ok(&["source", "add", "big", big_dir.to_str().unwrap()]);
    let op: Operation = w.server.ok(&[
        "image",
        "create",
        "bigimg",
        "--from-dir",
        big_dir.join("pgdata").to_str().unwrap(),
        "--host",
        "a2",
        "--no-wait",
    ]);
    wait_until(Duration::from_secs(60), || w.share.path.join("bigimg.partial").exists());
    w.server.kill9();
    w.server.restart();
    let ended = wait_op(&w.server, op.id, Duration::from_secs(120));
    eprintln!("the image creation interrupted by kill -9 of the server ended {:?}: {:?}", ended.state, ended.error);
    let image: api::Image = w.server.ok(&["image", "show", "bigimg"]);
    match ended.state {
        OperationState::Failed => {
            assert_eq!(image.status, ImageStatus::Failed);
            wait_until(Duration::from_secs(60), || {
                !w.share.path.join("bigimg.partial").exists() && !w.share.path.join("bigimg").exists()
            });
            let started = Instant::now();
            loop {
                let left = support::daemon::processes_under(&w.share.path.join("bigimg"));
                if left.is_empty() {
                    break;
                }
                assert!(started.elapsed() < Duration::from_secs(10), "a copy still runs: {left:?}");
                std::thread::sleep(Duration::from_millis(100));
            }
            let _: Operation = w.server.ok(&["image", "rm", "bigimg"]);
        }
        _ => assert_eq!(image.status, ImageStatus::Ready),
    }

    // kill -9 of the server while a clone is made: a full copy of the big image, which
    // takes a moment.
    let _: api::Image = w.server.ok(&[
        "image",
        "create",
        "big",
        "--from-dir",
        big_dir.join("pgdata").to_str().unwrap(),
        "--host",
        "a2",
    ]);
    let op: Operation =
        w.server.ok(&["clone", "create", "slow", "--image", "big", "--host", "a2", "--driver", "copy", "--no-wait"]);
    wait_until(Duration::from_secs(30), || {
        let now: Operation = w.server.ok(&["op", "show", &op.id.to_string()]);
        assert_eq!(now.state, OperationState::Running, "the copy ended before it was seen: {now:?}");
        w.agents[1].data_dir.join("clones/slow/data").exists()
    });
    let running: Operation = w.server.ok(&["op", "show", &op.id.to_string()]);
    assert_eq!(running.state, OperationState::Running, "the copy ended before the kill: {running:?}");
    w.server.kill9();
    w.server.restart();
    let ended = wait_op(&w.server, op.id, Duration::from_secs(120));
    eprintln!("the clone creation interrupted by kill -9 of the server ended {:?}: {:?}", ended.state, ended.error);
    match ended.state {
        OperationState::Succeeded => {
            let slow: api::Clone = w.server.ok(&["clone", "show", "slow"]);
            assert_eq!(slow.status, CloneStatus::Ready);
            assert!(psql(slow.url(), "SELECT count(*) FROM pgbench_branches").is_ok());
        }
        _ => {
            assert!(w.server.cli::<api::Clone>(&["clone", "show", "slow"]).is_err(), "a failed clone is listed");
            wait_until(Duration::from_secs(30), || !w.agents[1].data_dir.join("clones/slow").exists());
        }
    }

    // The shared location vanishes under a running cowfs clone.
    let c2: api::Clone =
        w.server.ok(&["clone", "create", "c2", "--image", "prod", "--host", "a2", "--driver", "cowfs"]);
    psql(c2.url(), "CREATE TABLE mine AS SELECT 7 AS n").unwrap();
    w.share.vanish();
    let degraded = wait_clone(&w.server, "c2", CloneStatus::Degraded, Duration::from_secs(30));
    let message = degraded.message.unwrap_or_default();
    assert!(message.starts_with("image location unavailable"), "{message}");
    // Nothing is written to the empty mount point meanwhile: it has not the location's
    // marker.
    let err = w
        .server
        .cli::<api::Image>(&["image", "create", "stray", "--from-dir", src.data.to_str().unwrap(), "--host", "a1"])
        .unwrap_err();
    assert!(err.contains("image location shared is unavailable"), "{err}");
    assert_eq!(fs::read_dir(&w.share.path).unwrap().count(), 0, "something was written to the mount point");
    w.share.mount();
    let back = wait_clone(&w.server, "c2", CloneStatus::Ready, Duration::from_secs(60));
    assert_eq!(psql(back.url(), "SELECT n FROM mine").unwrap(), "7");
    assert_eq!(psql(back.url(), "SELECT count(*) FROM t").unwrap(), "5000");
}

fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < timeout, "not done within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_clone(s: &ControlServer, name: &str, status: CloneStatus, timeout: Duration) -> api::Clone {
    let started = Instant::now();
    loop {
        let c: api::Clone = s.ok(&["clone", "show", name]);
        if c.status == status {
            return c;
        }
        assert!(started.elapsed() < timeout, "clone {name} is not {status} after {timeout:?}: {c:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn wait_op(s: &ControlServer, id: api::OperationId, timeout: Duration) -> Operation {
    let started = Instant::now();
    loop {
        let op: Operation = s.ok(&["op", "show", &id.to_string()]);
        if op.state.is_finished() {
            return op;
        }
        assert!(started.elapsed() < timeout, "operation {id} still runs after {timeout:?}: {op:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
