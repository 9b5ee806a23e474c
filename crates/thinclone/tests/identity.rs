//! Issue 10 through the real `thinclone serve` and the real CLI: images only from registered
//! source directories and source URLs with their own credentials (acceptance 3); no token
//! kept where the server keeps its state, a private login file and a private state database
//! (acceptance 4); plain HTTP on loopback only unless asked, the CLI over https with its CA
//! and refusing a certificate it does not trust, the Host header checked (acceptance 5);
//! expired and revoked tokens refused.

mod support;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use api::{CreateImage, ErrorCode, ImageStatus, Name, NewToken};
use support::daemon::{Daemon, ServeProcess};

fn work_dir(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir_in("/var/tmp").unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// `thinclone ARGS` with none of the test's own THINCLONE_* or XDG_* variables, its config
/// file under `home`, and `env` on top.
fn thinclone(home: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = Command::new(support::thinclone_bin());
    cmd.args(args);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("THINCLONE_") || key.starts_with("XDG_") {
            cmd.env_remove(key.as_ref());
        }
    }
    cmd.env("HOME", home).env("THINCLONE_LOG", "warn").envs(env.iter().copied()).stdin(Stdio::null());
    cmd.output().expect("running the thinclone CLI")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The output of a command that must succeed.
fn ok(out: Output) -> String {
    assert!(out.status.success(), "the command failed ({}): {}", out.status, stderr(&out));
    stdout(&out)
}

/// The stderr of a command that must fail.
fn failed(out: Output) -> String {
    assert!(!out.status.success(), "the command succeeded: {}", stdout(&out));
    stderr(&out)
}

fn name(s: &str) -> Name {
    Name::new(s).unwrap()
}

/// Asks the server to make an image of `from_dir` and returns its refusal's status and
/// message.
fn refusal(d: &Daemon, image: &str, from_dir: Option<&str>, from_url: Option<&str>) -> (Option<ErrorCode>, String) {
    let request = CreateImage {
        name: name(image),
        from_dir: from_dir.map(str::to_owned),
        from_url: from_url.map(str::to_owned),
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
        Ok(op) => panic!("making an image of {from_dir:?} {from_url:?} was accepted: {op:?}"),
        Err(e) => (e.code(), e.to_string()),
    }
}

/// Issue 10, acceptance 3 (directories): `--from-dir` of `/etc`, of an unregistered
/// directory holding a data directory, of a symlink out of a registered source and of paths
/// with `..` are refused with 400, and nothing is copied. The same data directory is imaged
/// once its directory is registered, so the refusals were about where it is.
#[test]
fn from_dir_takes_only_directories_inside_a_registered_source() {
    support::pg::require("from_dir_takes_only_directories_inside_a_registered_source");
    let unregistered = work_dir("thinclone-identity-unregistered-");
    let data = unregistered.path().join("pgdata");
    support::pg::Server::new(&data, 24_611, unregistered.path()).initdb();
    let server = work_dir("thinclone-identity-sources-");
    let d = Daemon::start(&server.path().join("server"), (8070, 8079));
    // The harness registers /tmp and /var/tmp: /var/tmp is taken back, so that the data
    // directory above lies in no source.
    ok(d.cli_output(&["source", "rm", "var-tmp"]));
    let sources: Vec<api::Source> = d.ok(&["source", "list"]);
    assert_eq!(sources.iter().map(|s| s.path.as_str()).collect::<Vec<_>>(), ["/tmp"]);

    // Inside /tmp, a registered source: symlinks that lead out of it.
    let links = tempfile::Builder::new().prefix("thinclone-identity-links-").tempdir_in("/tmp").unwrap();
    std::os::unix::fs::symlink(&data, links.path().join("escape")).unwrap();
    std::os::unix::fs::symlink("/etc", links.path().join("etc")).unwrap();
    fs::create_dir(links.path().join("inside")).unwrap();
    let links_dir = links.path().display().to_string();
    let data_dir = data.display().to_string();

    let outside = "is not inside a registered source directory";
    let dots = "has `..` in it";
    let cases = [
        ("/etc".to_owned(), outside),
        (data_dir.clone(), outside),
        (format!("{links_dir}/escape"), outside),
        (format!("{links_dir}/etc"), outside),
        (format!("{links_dir}/../..{data_dir}"), dots),
        ("/tmp/../etc".to_owned(), dots),
        // `..` is refused even where it would stay inside the source.
        (format!("{links_dir}/inside/../inside"), dots),
    ];
    for (i, (dir, why)) in cases.iter().enumerate() {
        let (code, message) = refusal(&d, &format!("refused-{i}"), Some(dir), None);
        assert_eq!(code, Some(ErrorCode::BadRequest), "{dir}: {message}");
        assert!(message.contains(why), "{dir}: {message}");
    }
    // The CLI gives the server the path as it is, `..` and all, and prints its message.
    let err = failed(d.cli_output(&["image", "create", "by-cli", "--from-dir", &format!("{links_dir}/../../etc")]));
    assert!(err.starts_with("error: the source directory ") && err.contains(dots), "{err}");

    // Nothing was copied: no image, nothing under images/ (no `*.partial` either).
    assert_eq!(d.client().list_images().unwrap(), []);
    let images = d.data_dir.join("images");
    let left: Vec<PathBuf> = fs::read_dir(&images).map(|e| e.map(|e| e.unwrap().path()).collect()).unwrap_or_default();
    assert_eq!(left, Vec::<PathBuf>::new(), "left under {}", images.display());

    // Registered, the same directory is imaged.
    let source: api::Source = d.ok(&["source", "add", "unregistered", unregistered.path().to_str().unwrap()]);
    assert_eq!(PathBuf::from(&source.path), fs::canonicalize(unregistered.path()).unwrap());
    let image: api::Image = d.ok(&["image", "create", "allowed", "--from-dir", &data_dir]);
    assert_eq!(image.status, ImageStatus::Ready);
}

/// Issue 10, acceptance 3 (URLs): a source URL that would connect through a local socket
/// (as the daemon's own OS user, with peer authentication), or without credentials of its
/// own, is refused with 400.
#[test]
fn from_url_needs_its_own_credentials_over_tcp() {
    let work = work_dir("thinclone-identity-urls-");
    let d = Daemon::start(&work.path().join("server"), (8080, 8089));
    // Each with the reason it is refused for: an unreachable source is a 400 too, so the
    // message shows that the URL was refused before anything was tried.
    let socket = "never through a local socket";
    let no_host = "not valid (empty host)";
    let urls = [
        ("postgresql://postgres@/postgres?host=/run/postgresql", no_host),
        ("postgresql://postgres@/postgres?host=%2Ftmp", no_host),
        ("postgresql:///postgres?host=/var/run/postgresql&user=postgres", "has no host"),
        ("postgresql://127.0.0.1:5432/postgres", "give the source's user and password"),
        ("postgresql://postgres@127.0.0.1:5432/postgres", "give the source's user and password"),
        // Credentials, and a socket all the same.
        ("postgresql://postgres:secret@127.0.0.1:5432/postgres?host=/run/postgresql", "may not set `host`"),
        ("postgresql://postgres:secret@%2Frun%2Fpostgresql/postgres", socket),
    ];
    for (i, (url, says)) in urls.iter().enumerate() {
        let (code, message) = refusal(&d, &format!("url-{i}"), None, Some(url));
        assert_eq!(code, Some(ErrorCode::BadRequest), "{url}: {message}");
        assert!(message.contains(says), "{url}: {message}");
        assert!(!message.contains("secret"), "{url}: the password was echoed: {message}");
    }
    assert_eq!(d.client().list_images().unwrap(), []);
}

/// Every regular file under `dir` (symlinks not followed) but `except`, with what it holds.
fn files_under(dir: &Path, except: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
    for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("listing {}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let meta = fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            files_under(&path, except, out);
        } else if meta.is_file() && path != except {
            let bytes = fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
            out.push((path, bytes));
        }
    }
}

/// The files under the data directory (and the server's log) that hold any of `secrets`, or
/// the random part of one.
fn holding_secrets(d: &Daemon, secrets: &[String]) -> Vec<String> {
    let mut files = Vec::new();
    files_under(&d.data_dir, &d.data_dir.join("admin.token"), &mut files);
    files.push((d.log.clone(), fs::read(&d.log).unwrap()));
    assert!(files.iter().any(|(p, _)| p.ends_with("state.db")), "no state.db among {} files", files.len());
    let mut found = Vec::new();
    for secret in secrets {
        let random = secret.trim_start_matches("thinclone_");
        assert!(random.len() >= 32, "an unexpected token shape");
        for (path, bytes) in &files {
            if bytes.windows(random.len()).any(|w| w == random.as_bytes()) {
                found.push(format!("{} holds a token", path.display()));
            }
        }
    }
    found
}

fn assert_private(path: &Path) {
    let mode = fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).mode() & 0o777;
    assert_eq!(mode & 0o077, 0, "{} has mode {mode:o}: other users can read it", path.display());
}

/// Issue 10, acceptance 4: no token's text, the first administrator's nor those made
/// through the API or the CLI, used or revoked, is anywhere under the data directory but in
/// the first token's own file; `login` writes its file 0600; the state database is not
/// readable by other users.
#[test]
fn no_token_is_kept_where_the_server_keeps_its_state() {
    let work = work_dir("thinclone-identity-secrets-");
    let mut d = Daemon::start(&work.path().join("server"), (8090, 8099));
    let bootstrap = d.data_dir.join("admin.token");
    assert_eq!(fs::read_to_string(&bootstrap).unwrap().trim(), d.token);
    assert_private(&bootstrap);

    let mut secrets = vec![d.token.clone()];
    let request = api::CreateToken { description: Some("through the API".into()), ..Default::default() };
    let by_api = d.client().create_token(&request).unwrap();
    secrets.push(by_api.secret.clone());
    d.ok::<api::User>(&["user", "create", "bob", "--role", "image_creator", "--team", "default"]);
    let bobs: NewToken = d.ok(&["token", "create", "--user", "bob", "--description", "bob's", "--expires-in", "1h"]);
    secrets.push(bobs.secret.clone());
    for secret in &secrets {
        let me = client::Client::new(d.url()).with_token(Some(secret.clone())).whoami().unwrap();
        assert!(["admin", "bob"].contains(&me.name.as_str()), "{me:?}");
    }
    d.ok::<api::Token>(&["token", "revoke", &by_api.token.id.to_string()]);

    // Bob logs in: his file is his only, and outside the server's directory.
    let home = work.path().join("home-bob");
    fs::create_dir(&home).unwrap();
    let token_file = home.join("token");
    fs::write(&token_file, format!("{}\n", bobs.secret)).unwrap();
    let said = ok(thinclone(&home, &[], &["login", "--url", d.url(), "--token-file", token_file.to_str().unwrap()]));
    let config = home.join(".config/thinclone/config.toml");
    assert_eq!(
        said,
        format!("logged in to {} as bob (image_creator); the token is saved in {}\n", d.url(), config.display())
    );
    assert!(!said.contains(&bobs.secret));
    assert_eq!(fs::metadata(&config).unwrap().mode() & 0o777, 0o600);
    assert_eq!(fs::metadata(config.parent().unwrap()).unwrap().mode() & 0o777, 0o700);
    let me: api::User = serde_json::from_str(&ok(thinclone(&home, &[], &["whoami", "--json"]))).unwrap();
    assert_eq!(me.name.as_str(), "bob");
    // Commands with the saved login work, and say nothing of the token.
    let images = thinclone(&home, &[], &["image", "list"]);
    assert!(!stdout(&images).contains(&bobs.secret) && !stderr(&images).contains(&bobs.secret));
    ok(images);

    // While the server runs (its write-ahead log holds the recent writes), and once it has
    // stopped.
    for state in ["running", "stopped"] {
        assert_eq!(holding_secrets(&d, &secrets), Vec::<String>::new(), "with the server {state}");
        assert_private(&d.data_dir.join("state.db"));
        for extra in ["state.db-wal", "state.db-shm", "state.db-journal"] {
            let path = d.data_dir.join(extra);
            if path.exists() {
                assert_private(&path);
            }
        }
        d.stop();
    }
}

/// A test certificate authority and a server certificate it signed for `names`, written as
/// `ca.pem`, `cert.pem` and `key.pem` (0600) under `dir`.
fn write_pki(dir: &Path, names: &[&str]) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    fs::create_dir_all(dir).unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    ca.distinguished_name.push(DnType::CommonName, format!("thinclone test CA {}", dir.display()));
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let leaf = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    let paths = (dir.join("ca.pem"), dir.join("cert.pem"), dir.join("key.pem"));
    fs::write(&paths.0, ca_cert.pem()).unwrap();
    fs::write(&paths.1, cert.pem()).unwrap();
    fs::write(&paths.2, key.serialize_pem()).unwrap();
    fs::set_permissions(&paths.2, fs::Permissions::from_mode(0o600)).unwrap();
    paths
}

/// Issue 10, acceptance 5 (plain HTTP): a listen address other than loopback without TLS is
/// refused, with what to do; with `--insecure-http` the server starts.
#[test]
fn plain_http_off_loopback_takes_the_explicit_flag() {
    let work = work_dir("thinclone-identity-plain-");
    // The wildcards and one address of a network (refused before anything is bound).
    for listen in ["0.0.0.0:0", "[::]:0", "192.0.2.7:8443"] {
        let mut child = Command::new(support::thinclone_bin())
            .args(["serve", "--data-dir"])
            .arg(work.path().join("refused"))
            .args(["--listen", listen, "--ports", "8100-8109"])
            .env("THINCLONE_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() >= deadline {
                let _ = child.kill();
                panic!("thinclone serve --listen {listen} without TLS did not exit");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output().unwrap();
        let err = failed(out);
        assert!(
            err.contains(&format!("refusing to serve plain HTTP on {listen}, which is not a loopback address"))
                && err.contains("--tls-cert and --tls-key, or --insecure-http"),
            "{listen}: {err}"
        );
    }

    let mut open = ServeProcess::start(
        &work.path().join("open"),
        &["--listen", "0.0.0.0:0", "--insecure-http", "--ports", "8100-8109"],
    );
    assert!(open.url.starts_with("http://0.0.0.0:"), "{}", open.url);
    let client = client::Client::new(&format!("http://127.0.0.1:{}", open.port())).with_token(Some(open.token.clone()));
    assert_eq!(client.whoami().unwrap().name.as_str(), "admin");
    let status = open.stop().unwrap();
    assert!(status.success(), "{status}");
}

/// Issue 10, acceptance 5 (TLS): with a certificate the CLI works over https given its CA
/// (by flag, by environment or saved by `login`), and refuses the server without it, or with
/// another CA, saying how to trust it.
#[test]
fn the_cli_works_over_https_with_the_servers_ca_only() {
    let work = work_dir("thinclone-identity-tls-");
    let (ca, cert, key) = write_pki(&work.path().join("pki"), &["127.0.0.1", "localhost"]);
    let (other_ca, _, _) = write_pki(&work.path().join("other-pki"), &["127.0.0.1"]);
    let s = ServeProcess::start(
        &work.path().join("server"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--ports",
            "8110-8119",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let url = format!("https://127.0.0.1:{}", s.port());
    assert_eq!(s.url, url);
    let home = work.path().join("home");
    fs::create_dir(&home).unwrap();
    let ca = ca.to_str().unwrap();
    let token = [("THINCLONE_TOKEN", s.token.as_str())];

    assert_eq!(ok(thinclone(&home, &token, &["--url", &url, "image", "list", "--ca-file", ca, "--json"])), "[]\n");
    let by_env = [("THINCLONE_TOKEN", s.token.as_str()), ("THINCLONE_CA_FILE", ca), ("THINCLONE_URL", url.as_str())];
    let me: api::User = serde_json::from_str(&ok(thinclone(&home, &by_env, &["whoami", "--json"]))).unwrap();
    assert_eq!(me.name.as_str(), "admin");
    // By its other name.
    let by_name = format!("https://localhost:{}", s.port());
    ok(thinclone(&home, &token, &["--url", &by_name, "image", "list", "--ca-file", ca]));

    // Without its CA: refused, with how to trust it.
    let err = failed(thinclone(&home, &token, &["--url", &url, "image", "list"]));
    assert_eq!(
        err,
        format!(
            "error: the server's certificate at {url} is not trusted: it is not signed by an authority this client \
             knows (a private CA, or self-signed); pass --ca-file (or set THINCLONE_CA_FILE) with the certificate of \
             the authority that signed it\n"
        )
    );
    let err =
        failed(thinclone(&home, &token, &["--url", &url, "image", "list", "--ca-file", other_ca.to_str().unwrap()]));
    assert!(err.starts_with(&format!("error: the server's certificate at {url} is not trusted: ")), "{err}");
    assert!(err.contains(&format!("only the authority in {} is trusted for it", other_ca.display())), "{err}");
    // Plain HTTP at the TLS port does not get through either.
    let plain = format!("http://127.0.0.1:{}", s.port());
    let err = failed(thinclone(&home, &token, &["--url", &plain, "image", "list"]));
    assert!(err.ends_with("; if the server serves https, use an https:// URL\n"), "{err}");

    // `login` saves the URL, the token and the CA: then no flag is needed.
    let token_file = s.data_dir.join("admin.token");
    let said = ok(thinclone(
        &home,
        &[],
        &["login", "--url", &url, "--token-file", token_file.to_str().unwrap(), "--ca-file", ca],
    ));
    assert!(said.starts_with(&format!("logged in to {url} as admin (admin)")), "{said}");
    let saved = fs::read_to_string(home.join(".config/thinclone/config.toml")).unwrap();
    assert!(saved.contains(&format!("ca_file = \"{ca}\"")), "{saved}");
    assert_eq!(ok(thinclone(&home, &[], &["image", "list", "--json"])), "[]\n");
    // Logged out, the server asks for a token, and the CLI says how to log in.
    ok(thinclone(&home, &[], &["logout"]));
    let err = failed(thinclone(&home, &[], &["image", "list"]));
    assert!(err.contains(&format!("no token was given for {url}: log in with `thinclone login --url {url}")), "{err}");
}

/// Sends one raw request and returns the answer's status line and body.
fn raw_request(addr: &str, host: &str, path: &str, token: Option<&str>) -> (String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer.lines().next().unwrap_or_default().to_owned();
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// Issue 10, transport: a request naming another host (a web page's, through DNS rebinding)
/// is refused with 400, token or not; the server's own names are answered.
#[test]
fn a_foreign_host_header_is_refused() {
    let work = work_dir("thinclone-identity-host-");
    let d = Daemon::start(&work.path().join("server"), (8120, 8129));
    let addr = d.url().trim_start_matches("http://").to_owned();
    for path in ["/v1/health", "/v1/images"] {
        let (status, body) = raw_request(&addr, "evil.example", path, Some(&d.token));
        assert!(status.starts_with("HTTP/1.1 400"), "{path}: {status} {body}");
        assert!(body.contains("--server-name"), "{body}");
        let (status, _) = raw_request(&addr, "evil.example:80", path, None);
        assert!(status.starts_with("HTTP/1.1 400"), "{path}: {status}");
    }
    for host in [addr.as_str(), "localhost", "127.0.0.1"] {
        let (status, body) = raw_request(&addr, host, "/v1/images", Some(&d.token));
        assert!(status.starts_with("HTTP/1.1 200"), "{host}: {status} {body}");
    }
}

/// Issue 10: an expired token and a revoked one are refused (401, and the CLI says how to
/// log in, never printing the token); a fresh one works; a role without the right gets the
/// server's 403 message; the audit log has what was done.
#[test]
fn expired_and_revoked_tokens_are_refused() {
    let work = work_dir("thinclone-identity-tokens-");
    let d = Daemon::start(&work.path().join("server"), (8130, 8139));
    let home = work.path().join("home");
    fs::create_dir(&home).unwrap();
    let with = |token: &str, args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--url", d.url()]);
        thinclone(&home, &[("THINCLONE_TOKEN", token)], &all)
    };
    let short: NewToken = d.ok(&["token", "create", "--expires-in", "1s", "--description", "short"]);
    let revoked: NewToken = d.ok(&["token", "create", "--description", "to revoke"]);
    let fresh: NewToken = d.ok(&["token", "create", "--description", "fresh"]);
    assert!(short.token.expires_at.is_some());

    ok(with(&revoked.secret, &["whoami"]));
    let gone: api::Token = d.ok(&["token", "revoke", &revoked.token.id.to_string()]);
    assert!(gone.revoked_at.is_some());
    let refused =
        "error: the token is not valid: it is unknown, revoked or expired\nthe token from THINCLONE_TOKEN was refused";
    let err = failed(with(&revoked.secret, &["whoami"]));
    assert!(err.starts_with(refused), "{err}");
    assert!(err.contains(&format!("log in again with `thinclone login --url {}", d.url())), "{err}");
    assert!(!err.contains(&revoked.secret));

    let expires = short.token.expires_at.unwrap();
    while api::Timestamp::now() <= expires {
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(1100));
    let err = failed(with(&short.secret, &["image", "list"]));
    assert!(err.starts_with(refused), "{err}");
    // The same through the client.
    let status = client::Client::new(d.url()).with_token(Some(short.secret.clone())).whoami().unwrap_err();
    assert_eq!(status.code(), Some(ErrorCode::Unauthorized));

    let me: api::User = serde_json::from_str(&ok(with(&fresh.secret, &["whoami", "--json"]))).unwrap();
    assert_eq!((me.name.as_str(), me.role), ("admin", api::Role::Admin));
    let tokens: Vec<api::Token> = d.ok(&["token", "list"]);
    let state = |id: u64| tokens.iter().find(|t| t.id == id).unwrap().clone();
    assert!(state(revoked.token.id).revoked_at.is_some());
    assert!(state(fresh.token.id).last_used_at.is_some());
    let table = ok(with(&fresh.secret, &["token", "list"]));
    assert!(table.contains("  revoked  ") && table.contains("  expired  "), "{table}");
    assert!(!table.contains(&fresh.secret) && !table.contains(&d.token));

    // A viewer: reads, but is refused what takes another role, with the server's message.
    d.ok::<api::User>(&["user", "create", "vera", "--role", "viewer", "--team", "default"]);
    let vera: NewToken = d.ok(&["token", "create", "--user", "vera"]);
    let me: api::User = serde_json::from_str(&ok(with(&vera.secret, &["whoami", "--json"]))).unwrap();
    assert_eq!((me.name.as_str(), me.role), ("vera", api::Role::Viewer));
    assert_eq!(
        failed(with(&vera.secret, &["user", "list"])),
        "error: vera has the role viewer; to list users takes the role admin or above\n"
    );
    ok(with(&vera.secret, &["image", "list"]));

    // No token at all: how to log in.
    let err = failed(thinclone(&home, &[], &["whoami", "--url", d.url()]));
    assert!(
        err.contains(&format!("no token was given for {0}: log in with `thinclone login --url {0}", d.url())),
        "{err}"
    );

    // The audit log has the revocation, by admin.
    let log: Vec<api::Activity> = d.ok(&["activity", "--user", "admin", "--since", "10min"]);
    let target = format!("token {}", revoked.token.id);
    assert!(
        log.iter()
            .any(|a| a.action == "token.revoke" && a.target.as_deref() == Some(target.as_str()) && a.status == 200),
        "{log:#?}"
    );
}
