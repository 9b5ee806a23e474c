//! Webhooks (issue 13, acceptance 5 and the expiring event of 4): receivers started by the
//! test, over real TCP, get each event once per delivery, signed with HMAC-SHA256 of the
//! body under the webhook's secret; a receiver that fails gets the same delivery again, with
//! backoff, until it accepts it; a clone's `clone.expiring` arrives before its removal.

mod support;

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api::{Checkpoint, Clone, CreatedWebhook, Delivery, DeliveryState, Operation, Webhook};
use serde_json::Value;
use support::daemon::Daemon;
use support::eventually;

const SECRET: &str = "a test secret of some length";

/// One request a receiver got.
#[derive(Debug, Clone)]
struct Received {
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// An HTTP endpoint on loopback that records what it is sent and answers each request with
/// the next status of `answers` (200 once they run out).
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    fn start(answers: Vec<u16>) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://127.0.0.1:{}/hook", listener.local_addr().unwrap().port());
        let got = Arc::new(Mutex::new(Vec::new()));
        let seen = got.clone();
        std::thread::spawn(move || {
            let mut answers = answers.into_iter();
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut headers = HashMap::new();
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                assert!(line.starts_with("POST /hook "), "{line}");
                loop {
                    line.clear();
                    reader.read_line(&mut line).unwrap();
                    let trimmed = line.trim_end();
                    if trimmed.is_empty() {
                        break;
                    }
                    let (k, v) = trimmed.split_once(':').unwrap();
                    headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
                }
                let length: usize = headers.get("content-length").map_or(0, |l| l.parse().unwrap());
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                seen.lock().unwrap().push(Received { headers, body });
                let status = answers.next().unwrap_or(200);
                let reply = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                // The sender may have given up (its timeout); the test judges by what it got.
                let _ = stream.write_all(reply.as_bytes());
            }
        });
        Receiver { url, got }
    }

    fn got(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }
}

fn hmac_hex(secret: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    ring::hmac::sign(&key, body).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn deliveries_are_signed_retried_and_come_once() {
    support::require_fuse("deliveries_are_signed_retried_and_come_once");
    support::pg::require("deliveries_are_signed_retried_and_come_once");
    let work = tempfile::Builder::new().prefix("thinclone-webhooks-").tempdir_in("/var/tmp").unwrap();
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let daemon = Daemon::start(&work.path().join("data"), (8380, 8399));

    let good = Receiver::start(vec![]);
    let flaky = Receiver::start(vec![500, 503]);
    let made: CreatedWebhook = daemon.ok(&["webhook", "add", &good.url, "--secret", SECRET]);
    assert_eq!(made.secret, SECRET);
    let flaky_hook: CreatedWebhook =
        daemon.ok(&["webhook", "add", &flaky.url, "--event", "clone.created", "--description", "fails twice"]);
    assert!(flaky_hook.secret.len() >= 32, "the server makes a secret");
    let listed: Vec<Webhook> = daemon.ok(&["webhook", "list"]);
    assert_eq!(listed.len(), 2);
    assert!(!serde_json::to_string(&listed).unwrap().contains(SECRET), "a listing shows no secret");
    for (args, expected) in [
        (&["webhook", "add", "ftp://x/"][..], "not an http:// or https:// URL"),
        (&["webhook", "add", "http://127.0.0.1:1/", "--event", "clone.nope"][..], "unknown event kind"),
        (&["webhook", "add", "http://127.0.0.1:1/", "--secret", "short"][..], "16 to"),
    ] {
        let err = daemon.cli::<Value>(args).unwrap_err();
        assert!(err.contains(expected), "{args:?}: {err}");
    }

    // The events of an image and a short-lived clone's life.
    let source = support::daemon::pgbench_source();
    daemon.ok::<api::Image>(&["image", "create", "prod", "--from-dir", source.to_str().unwrap()]);
    daemon.ok::<Clone>(&["clone", "create", "brief", "--image", "prod", "--ttl", "4s"]);
    daemon.ok::<Checkpoint>(&["clone", "checkpoint", "brief"]);
    let kinds = ["image.ready", "clone.created", "checkpoint.made", "clone.expiring", "clone.expired", "clone.removed"];
    let all = eventually(Duration::from_secs(40), || {
        let got = good.got();
        let seen: Vec<String> = got.iter().map(|r| r.headers["x-thinclone-event"].clone()).collect();
        kinds.iter().all(|k| seen.iter().any(|s| s == k)).then_some(got)
    })
    .unwrap_or_else(|| panic!("the good receiver did not get every event: {:?}", good.got()));

    // Each delivery once, signed, its headers matching its body.
    let mut ids = std::collections::HashSet::new();
    for r in &all {
        assert!(ids.insert(r.headers["x-thinclone-delivery"].clone()), "a delivery came twice: {r:?}");
        let signature = &r.headers["x-thinclone-signature"];
        assert_eq!(signature, &format!("sha256={}", hmac_hex(SECRET, &r.body)), "bad signature: {r:?}");
        assert_ne!(signature, &format!("sha256={}", hmac_hex("another secret entirely", &r.body)));
        assert_eq!(r.json()["event"], r.headers["x-thinclone-event"].as_str());
        assert_eq!(r.headers["content-type"], "application/json");
    }
    for kind in kinds {
        let n = all.iter().filter(|r| r.headers["x-thinclone-event"] == kind).count();
        assert_eq!(n, 1, "{kind} came {n} times");
    }
    let at = |kind: &str| all.iter().position(|r| r.headers["x-thinclone-event"] == kind).unwrap();
    assert!(at("clone.expiring") < at("clone.removed"), "the warning came before the removal");
    let created = &all[at("clone.created")].json();
    assert_eq!(created["clone"], "brief");
    assert!(!serde_json::to_string(&all.iter().map(Received::json).collect::<Vec<_>>())
        .unwrap()
        .contains("postgresql://"));

    // The flaky receiver: the same delivery three times (500, 503, then 200), and only the
    // kind it asked for.
    let retried = eventually(Duration::from_secs(30), || {
        let got = flaky.got();
        (got.len() >= 3).then_some(got)
    })
    .unwrap_or_else(|| panic!("the flaky receiver got {:?}", flaky.got()));
    assert_eq!(retried.len(), 3, "{retried:?}");
    assert!(retried.iter().all(|r| r.headers["x-thinclone-event"] == "clone.created"));
    let id = &retried[0].headers["x-thinclone-delivery"];
    assert!(retried.iter().all(|r| &r.headers["x-thinclone-delivery"] == id), "one delivery, tried again");
    let history: Vec<Delivery> = daemon.ok(&["webhook", "deliveries", &flaky_hook.webhook.id.to_string()]);
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(
        (history[0].state, history[0].attempts, history[0].response_status),
        (DeliveryState::Delivered, 3, Some(200))
    );
    let good_history: Vec<Delivery> = daemon.ok(&["webhook", "deliveries", &made.webhook.id.to_string()]);
    assert!(good_history.iter().all(|d| d.state == DeliveryState::Delivered && d.attempts == 1), "{good_history:?}");

    let removed = daemon.cli_output(&["webhook", "rm", &flaky_hook.webhook.id.to_string()]);
    assert!(removed.status.success(), "{}", String::from_utf8_lossy(&removed.stderr));
    let listed: Vec<Webhook> = daemon.ok(&["webhook", "list"]);
    assert_eq!(listed.len(), 1);
    daemon.ok::<Operation>(&["image", "rm", "prod"]);
}
