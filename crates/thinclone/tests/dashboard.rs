//! The web dashboard in a real browser (issue 15): a real `thinclone serve` over a real
//! source cluster, and Debian's Chromium driven by playwright-core (`browser/dashboard.mjs`,
//! run with `node`; nothing downloads a browser). The script signs in with a token, makes an
//! image from the source and a clone of it, watches the clone become ready without a reload,
//! connects to it with the connection string it reads from the page, takes a checkpoint and
//! reverts to it, stops and starts it, sees it degraded with the reason when its server is
//! killed (the daemon runs with `--no-repair`) and starts it again, protects it, branches
//! it, resets it, is refused the
//! removal of an image that has clones and shows why, removes the clone and signs out; a team
//! mate who may not use the clone is not shown its password, a user of another team sees
//! neither the image nor its clone, and an expired token brings the sign-in page back. Any
//! error in the browser's console fails it. It prints the first render of each page.
//!
//! - `THINCLONE_UPDATE_SCREENSHOTS=1` writes each page at 1280×800 and 390×844 into
//!   `doc/screenshots/` (otherwise nothing is written into the tree).
//! - `THINCLONE_DASHBOARD_CLONES=200` then makes that many clones with the CLI and measures
//!   each page's first render again (BENCHMARKS.md); their servers listen on a loopback
//!   address of their own (127.0.86.1), so that their ports clash with nothing else's.
//!
//! Also checked here, without a browser: the static routes (`/`, `/ui/...`) answer without a
//! credential, with the embedded files only, their content types, a strict
//! Content-Security-Policy and cache validation, and carry no data of the catalog.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::daemon::Daemon;
use support::pg::Server;

/// The browser test's directory: its script, package.json and package-lock.json, and the
/// node_modules that `scripts/install` makes with `npm ci`.
fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Checks that the browser test can run here (Chromium, node, playwright-core installed), and
/// fails the test with what is missing if not.
fn require_browser(test: &str) {
    assert!(
        Path::new("/usr/bin/chromium").is_file(),
        "{test} needs Debian's chromium (/usr/bin/chromium); scripts/install installs it"
    );
    assert!(support::which("node"), "{test} needs node (Debian's nodejs); scripts/install installs it");
    assert!(
        browser_dir().join("node_modules/playwright-core/package.json").is_file(),
        "{test} needs playwright-core in {}: run `npm ci` there (scripts/install does)",
        browser_dir().display()
    );
}

/// A call to the API as `token`: its status and JSON answer.
fn call(d: &Daemon, token: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .new_agent();
    let url = format!("{}{path}", d.url());
    let auth = format!("Bearer {token}");
    let result = match (method, body) {
        ("GET", _) => agent.get(&url).header("authorization", &auth).call(),
        ("POST", Some(b)) => agent.post(&url).header("authorization", &auth).send_json(b),
        _ => panic!("no {method} here"),
    };
    let mut response = result.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// Makes a user of `team` with `role`, and a token of theirs.
fn person(d: &Daemon, name: &str, role: &str, team: &str) -> String {
    let (status, user) =
        call(d, &d.token, "POST", "/v1/users", Some(json!({"name": name, "role": role, "teams": [team]})));
    assert_eq!(status, 201, "{user}");
    let (status, made) = call(d, &d.token, "POST", "/v1/tokens", Some(json!({"user": name})));
    assert_eq!(status, 201, "{made}");
    made["secret"].as_str().unwrap().to_owned()
}

/// Runs the browser script in `mode`; its output, or a panic with it when it fails.
fn run_browser(d: &Daemon, mode: &str, tokens: &[(&str, &str)], source: &Path, shots: Option<&Path>) -> String {
    let mut cmd = Command::new("node");
    cmd.arg(browser_dir().join("dashboard.mjs"))
        .current_dir(browser_dir())
        .env("DASHBOARD_URL", d.url())
        .env("MODE", mode)
        .env("SOURCE_DIR", source)
        .env("DATA_DIR", &d.data_dir)
        .env("PSQL", support::pg::bin_dir().unwrap().join("psql"));
    for (key, token) in tokens {
        cmd.env(key, token);
    }
    if let Some(dir) = shots {
        cmd.env("SCREENSHOTS", dir);
    }
    let started = Instant::now();
    let out = cmd.output().expect("running node");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("--- browser ({mode}, {:.1} s) ---\n{stdout}{stderr}", started.elapsed().as_secs_f64());
    assert!(
        out.status.success() && stdout.contains("dashboard: ok"),
        "the browser test ({mode}) failed ({}):\n{stdout}\n{stderr}\n--- server log ---\n{}",
        out.status,
        d.log_tail(40)
    );
    stdout
}

/// The static routes need no credential, serve the embedded files only, with their headers,
/// and say nothing of the catalog.
fn static_routes_carry_no_data(d: &Daemon, secrets: &[&str]) {
    let agent = ureq::Agent::config_builder().http_status_as_error(false).build().new_agent();
    let get = |path: &str| {
        let mut r = agent.get(&format!("{}{path}", d.url())).call().unwrap();
        let headers = r.headers().clone();
        (r.status().as_u16(), headers, r.body_mut().read_to_string().unwrap_or_default())
    };
    let (status, headers, page) = get("/");
    assert_eq!(status, 200, "{page}");
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"), "{csp}");
    assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{csp}");
    assert!(!page.contains("<script>") && !page.contains(" style="), "inline script or style in the page");
    for (name, content_type, body) in server::dashboard_files() {
        let (status, headers, text) = get(&format!("/ui/{name}"));
        assert_eq!(status, 200, "/ui/{name}: {text}");
        assert_eq!(headers["content-type"], *content_type, "/ui/{name}");
        assert_eq!(text, *body, "/ui/{name} is not the embedded file");
        assert_eq!(headers["cache-control"], "no-cache", "/ui/{name}");
        assert_eq!(headers["x-content-type-options"], "nosniff", "/ui/{name}");
        for secret in secrets {
            assert!(!text.contains(secret), "/ui/{name} carries {secret:?}");
        }
    }
    // Any other path needs a credential, under /ui/ or not.
    for path in ["/ui/nothing.js", "/ui/", "/ui/../v1/clones", "/ui/app.js/x", "/index.html"] {
        let (status, _, text) = get(path);
        assert_eq!(status, 401, "{path} answered without a credential: {text}");
    }
}

#[test]
fn the_dashboard_works_in_a_browser() {
    support::require_fuse("the_dashboard_works_in_a_browser");
    support::pg::require("the_dashboard_works_in_a_browser");
    require_browser("the_dashboard_works_in_a_browser");
    let many: usize = std::env::var("THINCLONE_DASHBOARD_CLONES").ok().and_then(|n| n.parse().ok()).unwrap_or(0);
    let work = tempfile::Builder::new().prefix("thinclone-dashboard-").tempdir_in("/var/tmp").unwrap();
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let w = work.path();

    // A small source with a column to mask.
    let source = Server::new(&w.join("src"), 24_880, w);
    source.initdb();
    source.start();
    source.psql(
        "postgres",
        "CREATE TABLE customers (id int PRIMARY KEY, email text NOT NULL UNIQUE);
         INSERT INTO customers SELECT g, 'person' || g || '@corp.example' FROM generate_series(1, 200) g;
         CHECKPOINT;",
    );
    source.stop();

    let (ports, extra): ((u16, u16), &[&str]) = if many == 0 {
        ((8560, 8579), &["--no-repair"])
    } else {
        ((8560, 8560 + many as u16 + 20), &["--no-repair", "--clone-listen", "127.0.86.1"])
    };
    let d = Daemon::start_with(&w.join("data"), ports, extra);
    for team in ["red", "blue"] {
        assert_eq!(call(&d, &d.token, "POST", "/v1/teams", Some(json!({"name": team}))).0, 201);
    }
    let maker = person(&d, "maker", "image_creator", "red");
    let mate = person(&d, "mate", "clone_user", "red");
    let blue = person(&d, "bluebell", "clone_user", "blue");
    let tokens = [("TOKEN_MAKER", maker.as_str()), ("TOKEN_MATE", mate.as_str()), ("TOKEN_BLUE", blue.as_str())];

    let update = std::env::var_os("THINCLONE_UPDATE_SCREENSHOTS").is_some_and(|v| v == "1");
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../doc/screenshots");
    let out = run_browser(&d, "flow", &tokens, &source.data, update.then_some(shots.as_path()));
    assert!(out.lines().filter(|l| l.starts_with("render ")).count() >= 6, "no render figures: {out}");
    if update {
        for page in ["sign-in", "images", "image-new", "clones", "clone", "clone-new", "agents", "activity"] {
            for size in ["1280x800", "390x844"] {
                let file = shots.join(format!("{page}-{size}.png"));
                assert!(file.is_file(), "no screenshot {}", file.display());
            }
        }
    }

    // What the browser did, as the API saw it: the clone is gone, the image stays.
    let (_, clones) = call(&d, &d.token, "GET", "/v1/clones", None);
    assert!(clones.as_array().unwrap().iter().all(|c| c["name"] != "dev1"), "dev1 was not removed: {clones}");
    let (status, image) = call(&d, &d.token, "GET", "/v1/images/orders", None);
    assert_eq!(status, 200, "the image is gone: {image}");
    let (_, log) = call(&d, &d.token, "GET", "/v1/activity?user=maker&limit=1000", None);
    let actions: Vec<&str> = log.as_array().unwrap().iter().map(|a| a["action"].as_str().unwrap_or("")).collect();
    for action in [
        "image.create",
        "clone.create",
        "clone.checkpoint",
        "clone.revert",
        "clone.stop",
        "clone.start",
        "clone.protect",
        "clone.unprotect",
        "clone.branch",
        "clone.reset",
        "image.delete",
        "clone.delete",
    ] {
        assert!(actions.contains(&action), "the audit log has no {action} by maker: {actions:?}");
    }

    static_routes_carry_no_data(&d, &[&maker, &mate, &blue, &d.token, "dev1", "orders"]);

    if many > 0 {
        // The catalog with many clones: made with the CLI, one after the other.
        let started = Instant::now();
        for k in 0..many {
            let name = format!("c{k:03}");
            let out = d
                .cli_command(&["clone", "create", &name, "--image", "orders"])
                .env("THINCLONE_TOKEN", &maker)
                .output()
                .expect("running the CLI");
            assert!(out.status.success(), "making clone {name}: {}", String::from_utf8_lossy(&out.stderr));
        }
        let took = started.elapsed().as_secs_f64();
        eprintln!("made {many} clones with the CLI in {took:.1} s ({:.2} s each)", took / many as f64);
        let out = run_browser(&d, "render", &tokens, &source.data, None);
        eprintln!(
            "with {many} clones:\n{}",
            out.lines().filter(|l| l.starts_with("render ")).collect::<Vec<_>>().join("\n")
        );
    }
}
