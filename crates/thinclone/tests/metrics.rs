//! `GET /metrics` (issue 13, metrics): a real daemon with an image and two clones (one
//! running, one stopped) is scraped with the administrator's token; the text is parsed with
//! Prometheus's own Python client (`prometheus_client.parser`, Debian's
//! python3-prometheus-client, which scripts/install installs), and its figures must equal
//! what `GET /v1/images`, `/v1/clones`, `/v1/operations` and `/v1/agents` answer. A viewer of
//! another team sees none of the administrator's objects in it, and a scrape without a valid
//! token is refused.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use api::agent::{Agent, AgentStatus};
use api::{paths, Clone, CloneStatus, Image, Name, Operation, Role};
use serde::de::DeserializeOwned;
use support::daemon::Daemon;

/// Debian's Python, where Debian's python3-prometheus-client is installed.
const PYTHON: &str = "/usr/bin/python3";

/// Parses the exposition from stdin with Prometheus's Python client and prints its families
/// as JSON.
const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
families = [
    {"name": f.name, "type": f.type, "help": f.documentation,
     "samples": [{"name": s.name, "labels": s.labels, "value": s.value} for s in f.samples]}
    for f in text_string_to_metric_families(sys.stdin.read())
]
json.dump(families, sys.stdout)
"#;

#[derive(Debug, serde::Deserialize)]
struct Family {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    help: String,
    samples: Vec<Sample>,
}

#[derive(Debug, serde::Deserialize)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A series: a sample's name and its labels.
type Series = (String, BTreeMap<String, String>);

fn series(name: &str, labels: &[(&str, &str)]) -> Series {
    (name.to_owned(), labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
}

/// Parses an exposition with the Prometheus client; panics with the text if it does not
/// parse.
fn parse(text: &str) -> Vec<Family> {
    let mut child = Command::new(PYTHON)
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {PYTHON}: {e}"));
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused the exposition: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Checks what the parser is lax about (it says so itself): every sample line was read as a
/// sample of a family declared with HELP and TYPE, each family is declared once, and each
/// histogram's buckets are cumulative, end in `+Inf`, and agree with its `_count`.
fn check_structure(text: &str, families: &[Family]) {
    let sample_lines = text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')).count();
    let samples: usize = families.iter().map(|f| f.samples.len()).sum();
    assert_eq!(samples, sample_lines, "every sample line is a sample:\n{text}");
    let mut names: Vec<&str> = families.iter().map(|f| f.name.as_str()).collect();
    names.sort();
    let count = names.len();
    names.dedup();
    assert_eq!(names.len(), count, "a family is declared twice:\n{text}");
    for family in families {
        assert!(family.name.starts_with("thinclone_"), "{family:?}");
        assert!(["gauge", "histogram"].contains(&family.kind.as_str()), "{family:?}");
        assert!(!family.help.is_empty(), "{} has no HELP", family.name);
        assert!(text.contains(&format!("# TYPE {} {}\n", family.name, family.kind)), "{family:?}");
        if family.kind != "histogram" {
            continue;
        }
        let mut by_series: BTreeMap<BTreeMap<String, String>, Vec<(f64, f64)>> = BTreeMap::new();
        for s in family.samples.iter().filter(|s| s.name.ends_with("_bucket")) {
            let mut labels = s.labels.clone();
            let le = labels.remove("le").expect("a bucket has le");
            let bound = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap() };
            by_series.entry(labels).or_default().push((bound, s.value));
        }
        assert!(!by_series.is_empty(), "{} has no buckets", family.name);
        for (labels, buckets) in by_series {
            assert!(buckets.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1), "{labels:?}: {buckets:?}");
            assert_eq!(buckets.last().unwrap().0, f64::INFINITY, "{labels:?}");
            let count = family.samples.iter().find(|s| s.name.ends_with("_count") && s.labels == labels);
            assert_eq!(count.map(|s| s.value), Some(buckets.last().unwrap().1), "{labels:?}");
            assert!(family.samples.iter().any(|s| s.name.ends_with("_sum") && s.labels == labels), "{labels:?}");
        }
    }
}

struct Http {
    agent: ureq::Agent,
    base: String,
}

impl Http {
    /// GET `path` with `token` (none: no `Authorization` header): status, content type, body.
    fn get(&self, path: &str, token: Option<&str>) -> (u16, String, String) {
        let mut request = self.agent.get(&format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.header("authorization", &format!("Bearer {token}"));
        }
        let mut response = request.call().unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = response.status().as_u16();
        let kind = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        (status, kind, response.body_mut().read_to_string().unwrap())
    }

    fn json<T: DeserializeOwned>(&self, path: &str, token: &str) -> T {
        let (status, _, body) = self.get(path, Some(token));
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    /// The scrape, parsed and checked: its samples by series.
    fn metrics(&self, token: &str) -> BTreeMap<Series, f64> {
        let (status, kind, text) = self.get(paths::METRICS, Some(token));
        assert_eq!(status, 200, "{text}");
        assert!(kind.starts_with("text/plain; version=0.0.4"), "content type {kind:?}");
        let families = parse(&text);
        check_structure(&text, &families);
        families.into_iter().flat_map(|f| f.samples).map(|s| ((s.name, s.labels), s.value)).collect()
    }

    /// The figures the metrics must show, from the API as `token` sees it: every per-object
    /// sample, and the counts by state that are not 0.
    fn expected(&self, token: &str) -> BTreeMap<Series, f64> {
        let images: Vec<Image> = self.json(paths::IMAGES, token);
        let clones: Vec<Clone> = self.json(paths::CLONES, token);
        let operations: Vec<Operation> = self.json(paths::OPERATIONS, token);
        let agents: Vec<Agent> = self.json(paths::AGENTS, token);
        assert!(operations.len() < 200, "GET /v1/operations lists the latest 200; the metrics count 1000");
        let mut want = BTreeMap::new();
        let mut count = |s: Series, n: f64| *want.entry(s).or_insert(0.0) += n;
        for i in &images {
            let labels = [("image", i.name.as_str()), ("team", i.team.as_str())];
            count(series("thinclone_images", &[("state", i.status.as_str())]), 1.0);
            count(series("thinclone_image_logical_bytes", &labels), i.logical_bytes as f64);
            count(series("thinclone_image_stored_bytes", &labels), i.stored_bytes as f64);
        }
        for c in &clones {
            let labels = [
                ("clone", c.name.as_str()),
                ("image", c.image.as_str()),
                ("agent", c.agent.as_str()),
                ("team", c.team.as_str()),
            ];
            count(series("thinclone_clones", &[("state", c.status.as_str()), ("driver", c.driver.as_str())]), 1.0);
            count(series("thinclone_clone_logical_bytes", &labels), c.logical_bytes as f64);
            count(series("thinclone_clone_stored_bytes", &labels), c.stored_bytes as f64);
            count(series("thinclone_clone_protected", &labels), if c.protected { 1.0 } else { 0.0 });
            if let Some(at) = c.expires_at {
                count(series("thinclone_clone_expires_at_seconds", &labels), at.unix_seconds() as f64);
            }
        }
        for op in &operations {
            let kind = op.kind.as_str();
            count(series("thinclone_operations", &[("kind", kind), ("state", op.state.as_str())]), 1.0);
            if let Some(end) = op.finished_at {
                let kind = [("kind", kind)];
                count(series("thinclone_operation_duration_seconds_count", &kind), 1.0);
                count(series("thinclone_operation_duration_seconds_sum", &kind), op.created_at.age(end) as f64);
            }
        }
        for a in &agents {
            let labels = [("agent", a.name.as_str())];
            count(series("thinclone_agent_up", &labels), if a.status == AgentStatus::Online { 1.0 } else { 0.0 });
            if let Some(free) = a.free_bytes {
                count(series("thinclone_agent_free_bytes", &labels), free as f64);
            }
            if let Some(free) = a.free_ports {
                count(series("thinclone_agent_free_ports", &labels), free as f64);
            }
        }
        comparable(&want)
    }
}

/// Sums by state, kind or driver, which the API gives only for what exists: compared where
/// they are not 0 (that every state is listed, at 0 too, is checked on its own).
const SUMS: [&str; 5] = [
    "thinclone_images",
    "thinclone_clones",
    "thinclone_operations",
    "thinclone_operation_duration_seconds_count",
    "thinclone_operation_duration_seconds_sum",
];

/// Figures of one object each, compared whatever their value.
const FIGURES: [&str; 9] = [
    "thinclone_image_logical_bytes",
    "thinclone_image_stored_bytes",
    "thinclone_clone_logical_bytes",
    "thinclone_clone_stored_bytes",
    "thinclone_clone_protected",
    "thinclone_clone_expires_at_seconds",
    "thinclone_agent_up",
    "thinclone_agent_free_bytes",
    "thinclone_agent_free_ports",
];

/// The samples of the families `expected` covers, the sums at 0 left out.
fn comparable(samples: &BTreeMap<Series, f64>) -> BTreeMap<Series, f64> {
    samples
        .iter()
        .filter(|((name, _), value)| {
            FIGURES.contains(&name.as_str()) || (SUMS.contains(&name.as_str()) && **value != 0.0)
        })
        .map(|(s, v)| (s.clone(), *v))
        .collect()
}

/// Free disk moves with everything else on the host's filesystem: it is compared within a
/// margin, the rest exactly.
fn moves(series: &Series) -> bool {
    series.0 == "thinclone_agent_free_bytes"
}

/// Scrapes until the API answers the same before and after the scrape (sizes are measured
/// in the background), then checks that the scrape says what the API does. Returns the
/// whole scrape.
fn scrape_matches_the_api(http: &Http, token: &str) -> BTreeMap<Series, f64> {
    let fixed = |m: &BTreeMap<Series, f64>| -> BTreeMap<Series, f64> {
        m.iter().filter(|(s, _)| !moves(s)).map(|(s, v)| (s.clone(), *v)).collect()
    };
    let mut last = String::new();
    for _ in 0..40 {
        let before = http.expected(token);
        let scraped = http.metrics(token);
        let after = http.expected(token);
        if fixed(&before) != fixed(&after) {
            last = format!("the API moved during the scrape: {before:?} -> {after:?}");
            std::thread::sleep(Duration::from_millis(250));
            continue;
        }
        let got = comparable(&scraped);
        if fixed(&got) != fixed(&before) {
            // A figure that moved and came back between the reads; try again.
            last = format!("the scrape differs from the API:\n  api:    {before:?}\n  scrape: {got:?}");
            std::thread::sleep(Duration::from_millis(250));
            continue;
        }
        let moving: Vec<&Series> = before.keys().chain(got.keys()).filter(|s| moves(s)).collect();
        for s in moving {
            let (api, scrape) = (before.get(s).copied().unwrap_or(-1.0), got.get(s).copied().unwrap_or(-1.0));
            assert!(
                api > 0.0 && (scrape - api).abs() <= (1u64 << 30) as f64,
                "{s:?}: the API says {api}, the scrape {scrape}"
            );
        }
        return scraped;
    }
    panic!("{last}");
}

#[test]
fn metrics_parse_and_match_the_api() {
    support::require_fuse("metrics_parse_and_match_the_api");
    support::pg::require("metrics_parse_and_match_the_api");
    let python = Command::new(PYTHON).args(["-c", "import prometheus_client"]).output();
    assert!(
        python.is_ok_and(|o| o.status.success()),
        "metrics_parse_and_match_the_api parses /metrics with Prometheus's Python client: it needs {PYTHON} and \
         Debian's python3-prometheus-client (scripts/install installs them)"
    );
    let work = tempfile::Builder::new().prefix("thinclone-metrics-").tempdir_in("/var/tmp").unwrap();
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let daemon = Daemon::start(&work.path().join("data"), (8360, 8379));
    let http = Http {
        agent: ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .new_agent(),
        base: daemon.url().trim_end_matches('/').to_owned(),
    };
    let admin = daemon.token.clone();

    // An empty server: every state is listed, at 0, and the one agent is up.
    let empty = scrape_matches_the_api(&http, &admin);
    assert_eq!(empty.keys().filter(|(n, _)| n == "thinclone_images").count(), 4, "every image status is listed");
    assert_eq!(empty.keys().filter(|(n, _)| n == "thinclone_clones").count(), 12 * 3, "every status and driver");
    assert_eq!(
        empty.keys().filter(|(n, _)| n == "thinclone_operations").count(),
        api::OperationKind::ALL.len() * api::OperationState::ALL.len(),
        "every kind and state"
    );

    // An image, a running clone, a stopped protected clone with an expiry.
    let source = support::daemon::pgbench_source();
    daemon.ok::<Image>(&["image", "create", "prod", "--from-dir", source.to_str().unwrap()]);
    daemon.ok::<Clone>(&["clone", "create", "alpha", "--image", "prod"]);
    daemon.ok::<Clone>(&["clone", "create", "beta", "--image", "prod", "--ttl", "2h"]);
    daemon.ok::<Clone>(&["clone", "stop", "beta"]);
    daemon.ok::<Clone>(&["clone", "protect", "beta"]);
    let beta: Clone = daemon.ok(&["clone", "show", "beta"]);
    assert_eq!(beta.status, CloneStatus::Stopped);

    let scraped = scrape_matches_the_api(&http, &admin);
    let value = |name: &str, labels: &[(&str, &str)]| scraped.get(&series(name, labels)).copied();
    assert_eq!(value("thinclone_agent_up", &[("agent", "local")]), Some(1.0));
    assert_eq!(value("thinclone_images", &[("state", "ready")]), Some(1.0));
    let by_state = |state: &str| -> f64 {
        scraped.iter().filter(|((n, l), _)| n == "thinclone_clones" && l["state"] == state).map(|(_, v)| v).sum()
    };
    assert_eq!((by_state("ready"), by_state("stopped")), (1.0, 1.0));
    let beta_labels = [("clone", "beta"), ("image", "prod"), ("agent", "local"), ("team", "default")];
    assert_eq!(value("thinclone_clone_protected", &beta_labels), Some(1.0));
    assert!(value("thinclone_clone_expires_at_seconds", &beta_labels).is_some());
    let image: Image = daemon.ok(&["image", "show", "prod"]);
    assert!(image.logical_bytes > 0);
    assert_eq!(
        value("thinclone_image_logical_bytes", &[("image", "prod"), ("team", "default")]),
        Some(image.logical_bytes as f64)
    );
    assert_eq!(value("thinclone_operations", &[("kind", "clone_create"), ("state", "succeeded")]), Some(2.0));
    assert_eq!(value("thinclone_operation_duration_seconds_count", &[("kind", "clone_stop")]), Some(1.0));
    assert_eq!(value("thinclone_build_info", &[("version", env!("CARGO_PKG_VERSION"))]), Some(1.0));

    // A viewer of another team sees none of it, but the agents.
    let client = daemon.client();
    let qa = Name::new("qa").unwrap();
    client.create_team(&api::CreateTeam { name: qa.clone() }).unwrap();
    let eve = Name::new("eve").unwrap();
    client.create_user(&api::CreateUser { name: eve.clone(), role: Role::Viewer, teams: vec![qa] }).unwrap();
    let viewer =
        client.create_token(&api::CreateToken { user: Some(eve), description: None, expires_in: None }).unwrap().secret;
    let seen = scrape_matches_the_api(&http, &viewer);
    let objects: Vec<&Series> = seen
        .iter()
        .filter(|((n, l), v)| {
            l.contains_key("clone")
                || l.contains_key("image")
                || (["thinclone_images", "thinclone_clones", "thinclone_operations"].contains(&n.as_str())
                    && **v != 0.0)
                || (n.starts_with("thinclone_operation_duration_seconds") && **v != 0.0)
        })
        .map(|(s, _)| s)
        .collect();
    assert!(objects.is_empty(), "a viewer of another team sees the administrator's objects: {objects:?}");
    assert_eq!(seen.get(&series("thinclone_agent_up", &[("agent", "local")])), Some(&1.0));

    // No token, or one that is not valid: refused.
    for token in [None, Some("thinclone_not-a-token")] {
        let (status, _, body) = http.get(paths::METRICS, token);
        assert_eq!(status, 401, "{token:?}: {body}");
        assert!(body.contains("\"unauthorized\""), "{body}");
    }
}
