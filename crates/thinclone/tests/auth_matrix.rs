//! The auth matrix (issue 10, acceptance 1): every route of the OpenAPI document the server
//! serves, asked without a token, with a revoked and an expired one, by each role in and
//! out of the owning team, and by the one who has the right. Without a valid token every
//! route but `/v1/health` answers 401; a role without the right answers 403; an object of
//! another team answers 404 (it is not there, for that caller); the right caller succeeds.
//!
//! The routes come from the document, not from a list here: a route added later that lacks
//! authentication fails the first check, and one that is not in the matrix below fails
//! until its rights are written down.
//!
//! The web dashboard's static files (`GET /` and `GET /ui/<file>`) are served to anyone: they
//! are the files embedded in the binary, the same for everyone, and carry no data (the page
//! reads everything through `/v1` with the user's token). The test says so: each is exactly
//! the embedded file, every other path needs a token, and the document names no route
//! outside `/v1` but `/metrics`.
//!
//! One route besides `/v1/health` takes no user's token: an agent's `POST /v1/agents/join`,
//! whose credential is the enrollment token in its body. Without a valid enrollment token it
//! answers 401 whoever asks; with one, anyone may join (the administrator who made the token
//! gave it away on purpose).

mod support;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use serde_json::{json, Value};
use support::daemon::Daemon;
use support::pg::Server;

/// The people of the matrix: their role and team.
const PEOPLE: [(&str, &str, &str); 6] = [
    ("red-viewer", "viewer", "red"),
    ("red-user", "clone_user", "red"),
    ("red-user2", "clone_user", "red"),
    ("red-creator", "image_creator", "red"),
    ("blue-creator", "image_creator", "blue"),
    ("root-admin", "admin", "blue"),
];

struct World {
    d: Daemon,
    agent: ureq::Agent,
    /// Tokens by person; `admin` is the bootstrap administrator.
    tokens: std::collections::HashMap<String, String>,
    source: String,
    counter: std::cell::Cell<u32>,
}

impl World {
    fn call(&self, who: Option<&str>, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}{}", self.d.url(), path);
        let token = who.map(|w| self.tokens.get(w).cloned().unwrap_or_else(|| w.to_owned()));
        let auth = token.map(|t| format!("Bearer {t}"));
        macro_rules! go {
            ($req:expr) => {{
                let mut req = $req;
                if let Some(a) = &auth {
                    req = req.header("authorization", a);
                }
                req
            }};
        }
        let result = match (method, body) {
            ("GET", _) => go!(self.agent.get(&url)).call(),
            ("DELETE", _) => go!(self.agent.delete(&url)).call(),
            ("POST", Some(b)) => go!(self.agent.post(&url)).send_json(b),
            ("POST", None) => go!(self.agent.post(&url)).send_json(json!({})),
            ("PUT", _) => go!(self.agent.put(&url)).send_empty(),
            _ => panic!("no {method} here"),
        };
        let mut response = result.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// Makes a template as the administrator; returns its name.
    fn template(&self) -> String {
        let name = self.fresh("tpl");
        let body = json!({"name": name, "scripts": [{"name": "a.sql", "sql": "SELECT 1"}]});
        let (status, made) = self.call(Some("admin"), "POST", "/v1/templates", Some(body));
        assert_eq!(status, 201, "{made}");
        name
    }

    /// Makes a schedule of team `team` as the administrator; returns its name.
    fn schedule(&self, team: &str) -> String {
        let name = self.fresh("sched");
        let body = json!({"name": name, "cron": "0 2 * * *", "from_dir": self.source, "team": team});
        let (status, made) = self.call(Some("admin"), "POST", "/v1/schedules", Some(body));
        assert_eq!(status, 201, "{made}");
        name
    }

    /// Registers a webhook as the administrator; returns its id.
    fn webhook(&self) -> u64 {
        let body = json!({"url": "http://127.0.0.1:9/matrix", "events": ["webhook.test"]});
        let (status, made) = self.call(Some("admin"), "POST", "/v1/webhooks", Some(body));
        assert_eq!(status, 201, "{made}");
        made["webhook"]["id"].as_u64().unwrap()
    }

    /// Makes a checkpoint of red-user's clone `red-c` as the administrator; returns its name.
    fn checkpoint(&self) -> String {
        let name = self.fresh("cp");
        let (status, op) =
            self.call(Some("admin"), "POST", "/v1/clones/red-c/checkpoints?wait=60", Some(json!({"name": name})));
        assert!(status == 200 && op["state"] == "succeeded", "making checkpoint {name}: {op}");
        name
    }

    fn fresh(&self, prefix: &str) -> String {
        self.counter.set(self.counter.get() + 1);
        format!("{prefix}-{}", self.counter.get())
    }

    /// Makes an image of team `team` as the administrator and returns its name.
    fn image(&self, team: &str) -> String {
        let name = self.fresh("img");
        let body = json!({"name": name, "from_dir": self.source, "team": team});
        let (status, op) = self.call(Some("admin"), "POST", "/v1/images?wait=60", Some(body));
        assert!(status == 200 && op["state"] == "succeeded", "making image {name}: {status} {op}");
        name
    }

    /// A one-time enrollment token, made by the administrator.
    fn enrollment(&self, expires_in: u64) -> String {
        let (status, made) =
            self.call(Some("admin"), "POST", "/v1/agents/tokens", Some(json!({"expires_in": expires_in})));
        assert_eq!(status, 201, "making an enrollment token: {made}");
        made["token"].as_str().unwrap().to_owned()
    }

    /// What a new agent sends to join: a fresh enrollment token, a fresh name and a fresh key.
    fn join_body(&self) -> Value {
        json!({"token": self.enrollment(600), "name": self.fresh("agent"), "public_key": public_key()})
    }

    /// Enrolls a fresh agent (it never connects) and returns its name.
    fn enroll(&self) -> String {
        let body = self.join_body();
        let (status, joined) = self.call(None, "POST", "/v1/agents/join", Some(body.clone()));
        assert!(status == 200 && joined["certificate"].is_string(), "joining with {body}: {status} {joined}");
        body["name"].as_str().unwrap().to_owned()
    }

    /// A fresh directory for an image location, beside the daemon's data directory (a
    /// location may not be inside it).
    fn location_dir(&self) -> String {
        let dir = self.d.data_dir.parent().unwrap().join(self.fresh("place"));
        fs::create_dir(&dir).unwrap();
        dir.display().to_string()
    }

    /// Adds an image location as the administrator and returns its name.
    fn location(&self) -> String {
        let name = self.fresh("loc");
        let body = json!({"name": name, "path": self.location_dir()});
        let (status, made) = self.call(Some("admin"), "POST", "/v1/locations", Some(body));
        assert_eq!(status, 201, "adding location {name}: {made}");
        name
    }

    /// Makes a clone of `image` as `owner` and returns its name.
    fn clone_of(&self, image: &str, owner: &str) -> String {
        let name = self.fresh("c");
        let (status, op) =
            self.call(Some(owner), "POST", "/v1/clones?wait=60", Some(json!({"name": name, "image": image})));
        assert!(status == 200 && op["state"] == "succeeded", "making clone {name} as {owner}: {status} {op}");
        name
    }
}

/// What a route does to whom: the callers that have the right (the request must succeed),
/// those whose role lacks it (403), and those to whom the object is of another team (404).
/// `path` fills the route's parameters, and may make what the request uses or removes.
struct Rights {
    allowed: &'static [&'static str],
    forbidden: &'static [&'static str],
    hidden: &'static [&'static str],
    path: fn(&World, &str) -> String,
    body: fn(&World, &str) -> Option<Value>,
}

const EVERYONE: &[&str] = &["red-viewer", "red-user", "red-user2", "red-creator", "blue-creator", "root-admin"];
const NOT_ADMINS: &[&str] = &["red-viewer", "red-user", "red-user2", "red-creator", "blue-creator"];
const RED: &[&str] = &["red-viewer", "red-user", "red-user2", "red-creator", "root-admin"];

fn fixed(path: &'static str) -> fn(&World, &str) -> String {
    // Each route's path, as a function; a closure cannot be a `fn` when it captures.
    match path {
        "/v1/health" => |_, _| "/v1/health".into(),
        "/v1/openapi.json" => |_, _| "/v1/openapi.json".into(),
        "/v1/whoami" => |_, _| "/v1/whoami".into(),
        "/v1/images" => |_, _| "/v1/images?wait=60".into(),
        "/v1/clones" => |_, _| "/v1/clones?wait=60".into(),
        "/v1/operations" => |_, _| "/v1/operations".into(),
        "/v1/users" => |_, _| "/v1/users".into(),
        "/v1/teams" => |_, _| "/v1/teams".into(),
        "/v1/tokens" => |_, _| "/v1/tokens".into(),
        "/v1/sources" => |_, _| "/v1/sources".into(),
        "/v1/activity" => |_, _| "/v1/activity".into(),
        "/v1/agents" => |_, _| "/v1/agents".into(),
        "/v1/agents/tokens" => |_, _| "/v1/agents/tokens".into(),
        "/v1/agents/join" => |_, _| "/v1/agents/join".into(),
        "/v1/locations" => |_, _| "/v1/locations".into(),
        "/v1/webhooks" => |_, _| "/v1/webhooks".into(),
        "/v1/templates" => |_, _| "/v1/templates".into(),
        "/v1/schedules" => |_, _| "/v1/schedules".into(),
        "/metrics" => |_, _| "/metrics".into(),
        other => panic!("no fixed path {other}"),
    }
}

fn no_body(_: &World, _: &str) -> Option<Value> {
    None
}

/// A fresh agent's public key, as it joins with it: an uncompressed P-256 point in hex.
fn public_key() -> String {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    key.public_key_raw().iter().map(|b| format!("{b:02x}")).collect()
}

/// A join whose enrollment token no server made (its authority's fingerprint is zeros).
fn bogus_join() -> Value {
    json!({"token": format!("tce_x_{}", "0".repeat(64)), "name": "nothing", "public_key": public_key()})
}

/// The matrix: each route of the document, with its rights.
fn matrix() -> Vec<((&'static str, &'static str), Rights)> {
    vec![
        (
            ("GET", "/v1/openapi.json"),
            Rights { allowed: EVERYONE, forbidden: &[], hidden: &[], path: fixed("/v1/openapi.json"), body: no_body },
        ),
        (
            ("GET", "/v1/whoami"),
            Rights { allowed: EVERYONE, forbidden: &[], hidden: &[], path: fixed("/v1/whoami"), body: no_body },
        ),
        (
            ("GET", "/v1/images"),
            Rights { allowed: EVERYONE, forbidden: &[], hidden: &[], path: fixed("/v1/images"), body: no_body },
        ),
        (
            ("POST", "/v1/images"),
            Rights {
                allowed: &["red-creator", "root-admin"],
                forbidden: &["red-viewer", "red-user", "red-user2"],
                hidden: &["blue-creator"],
                path: fixed("/v1/images"),
                body: |w, _| Some(json!({"name": w.fresh("made"), "from_dir": w.source, "team": "red"})),
            },
        ),
        (
            ("GET", "/v1/images/{name}"),
            Rights {
                allowed: RED,
                forbidden: &[],
                hidden: &["blue-creator"],
                path: |_, _| "/v1/images/red-img".into(),
                body: no_body,
            },
        ),
        (
            ("DELETE", "/v1/images/{name}"),
            Rights {
                allowed: &["red-creator", "root-admin"],
                forbidden: &["red-viewer", "red-user", "red-user2"],
                hidden: &["blue-creator"],
                path: |w, who| {
                    let allowed = who == "red-creator" || who == "root-admin";
                    // Those with the right remove an image of their own; the others are asked
                    // about the image every test shares.
                    let name = if allowed { w.image("red") } else { "red-img".into() };
                    format!("/v1/images/{name}?wait=60")
                },
                body: no_body,
            },
        ),
        (
            ("GET", "/metrics"),
            Rights { allowed: EVERYONE, forbidden: &[], hidden: &[], path: fixed("/metrics"), body: no_body },
        ),
        (
            ("GET", "/v1/clones"),
            Rights { allowed: EVERYONE, forbidden: &[], hidden: &[], path: fixed("/v1/clones"), body: no_body },
        ),
        (
            ("POST", "/v1/clones"),
            Rights {
                allowed: &["red-user", "red-user2", "red-creator", "root-admin"],
                forbidden: &["red-viewer"],
                hidden: &["blue-creator"],
                path: fixed("/v1/clones"),
                body: |w, _| Some(json!({"name": w.fresh("new"), "image": "red-img"})),
            },
        ),
        (
            ("GET", "/v1/clones/{name}"),
            Rights {
                allowed: RED,
                forbidden: &[],
                hidden: &["blue-creator"],
                path: |_, _| "/v1/clones/red-c".into(),
                body: no_body,
            },
        ),
        (
            ("DELETE", "/v1/clones/{name}"),
            Rights {
                allowed: &["red-user", "root-admin"],
                forbidden: &["red-viewer", "red-user2", "red-creator"],
                hidden: &["blue-creator"],
                path: |w, who| {
                    let name = match who {
                        "red-user" | "root-admin" => w.clone_of("red-img", "red-user"),
                        _ => "red-c".into(),
                    };
                    format!("/v1/clones/{name}?wait=60")
                },
                body: no_body,
            },
        ),
        (("POST", "/v1/clones/{name}/start"), clone_action("start")),
        (("POST", "/v1/clones/{name}/stop"), clone_action("stop")),
        (("POST", "/v1/clones/{name}/reset"), clone_action("reset")),
        (
            ("POST", "/v1/clones/{name}/refresh"),
            Rights {
                allowed: &["red-user", "root-admin"],
                forbidden: &["red-viewer", "red-user2", "red-creator"],
                hidden: &["blue-creator"],
                path: |_, _| "/v1/clones/red-c/refresh?wait=60".into(),
                // A new image of the team for each call, to move to.
                body: |w, who| {
                    let allowed = who == "red-user" || who == "root-admin";
                    Some(if allowed { json!({"image": w.image("red")}) } else { json!({"image": "red-img"}) })
                },
            },
        ),
        (
            ("GET", "/v1/clones/{name}/checkpoints"),
            Rights {
                allowed: RED,
                forbidden: &[],
                hidden: &["blue-creator"],
                path: |_, _| "/v1/clones/red-c/checkpoints".into(),
                body: no_body,
            },
        ),
        (
            ("POST", "/v1/clones/{name}/checkpoints"),
            Rights {
                allowed: &["red-user", "root-admin"],
                forbidden: &["red-viewer", "red-user2", "red-creator"],
                hidden: &["blue-creator"],
                path: |_, _| "/v1/clones/red-c/checkpoints?wait=60".into(),
                body: |_, _| Some(json!({"message": "asked by the matrix"})),
            },
        ),
        (
            ("DELETE", "/v1/clones/{name}/checkpoints/{checkpoint}"),
            Rights {
                allowed: &["red-user", "root-admin"],
                forbidden: &["red-viewer", "red-user2", "red-creator"],
                hidden: &["blue-creator"],
                // A checkpoint of its own for each caller, made by the administrator.
                path: |w, _| format!("/v1/clones/red-c/checkpoints/{}?wait=60", w.checkpoint()),
                body: no_body,
            },
        ),
        (
            ("POST", "/v1/clones/{name}/branches"),
            Rights {
                allowed: &["red-user", "root-admin"],
                forbidden: &["red-viewer", "red-user2", "red-creator"],
                hidden: &["blue-creator"],
                // A clone of its own to branch from for each caller allowed, so that red-c
                // gets no branch that would keep it from being reset.
                path: |w, who| {
                    let origin = match who {
                        "red-user" | "root-admin" => w.clone_of("red-img", "red-user"),
                        _ => "red-c".into(),
                    };
                    format!("/v1/clones/{origin}/branches?wait=60")
                },
                body: |w, _| Some(json!({"name": w.fresh("branch")})),
            },
        ),
        (("POST", "/v1/clones/{name}/expiry"), clone_setting("expiry", |_, _| Some(json!({"expires_in": 86_400})))),
        // A lease of a second: red-c is not kept protected for the routes after this one.
        (("POST", "/v1/clones/{name}/protect"), clone_setting("protect", |_, _| Some(json!({"for_seconds": 1})))),
        (("POST", "/v1/clones/{name}/unprotect"), clone_setting("unprotect", |_, _| Some(json!({})))),
        (("POST", "/v1/clones/{name}/idle"), clone_setting("idle", |_, _| Some(json!({})))),
        (
            ("POST", "/v1/clones/{name}/revert"),
            Rights {
                allowed: &["red-user", "root-admin"],
                forbidden: &["red-viewer", "red-user2", "red-creator"],
                hidden: &["blue-creator"],
                path: |_, _| "/v1/clones/red-c/revert?wait=60".into(),
                // A checkpoint made for each call, to go back to.
                body: |w, _| Some(json!({"to": w.checkpoint()})),
            },
        ),
        (
            ("GET", "/v1/operations"),
            Rights { allowed: EVERYONE, forbidden: &[], hidden: &[], path: fixed("/v1/operations"), body: no_body },
        ),
        (
            ("GET", "/v1/operations/{id}"),
            Rights {
                allowed: RED,
                forbidden: &[],
                hidden: &["blue-creator"],
                path: |w, _| {
                    let (_, ops) = w.call(Some("admin"), "GET", "/v1/operations", None);
                    let id =
                        ops.as_array().unwrap().iter().find(|o| o["target"]["name"] == "red-c").unwrap()["id"].clone();
                    format!("/v1/operations/{id}")
                },
                body: no_body,
            },
        ),
        (
            // An ended operation is answered as it is; a viewer may not cancel anything.
            ("POST", "/v1/operations/{id}/cancel"),
            Rights {
                allowed: &["red-user", "red-user2", "red-creator", "root-admin"],
                forbidden: &["red-viewer"],
                hidden: &["blue-creator"],
                path: |w, _| {
                    let (_, ops) = w.call(Some("admin"), "GET", "/v1/operations", None);
                    let id =
                        ops.as_array().unwrap().iter().find(|o| o["target"]["name"] == "red-c").unwrap()["id"].clone();
                    format!("/v1/operations/{id}/cancel")
                },
                body: no_body,
            },
        ),
        (
            ("GET", "/v1/users"),
            Rights {
                allowed: &["root-admin"],
                forbidden: NOT_ADMINS,
                hidden: &[],
                path: fixed("/v1/users"),
                body: no_body,
            },
        ),
        (
            ("POST", "/v1/users"),
            Rights {
                allowed: &["root-admin"],
                forbidden: NOT_ADMINS,
                hidden: &[],
                path: fixed("/v1/users"),
                body: |w, _| Some(json!({"name": w.fresh("person"), "role": "viewer", "teams": ["red"]})),
            },
        ),
        (
            ("GET", "/v1/users/{name}"),
            Rights {
                allowed: &["red-viewer", "root-admin"],
                forbidden: &["red-user", "red-user2", "red-creator", "blue-creator"],
                hidden: &[],
                path: |_, _| "/v1/users/red-viewer".into(),
                body: no_body,
            },
        ),
        (
            ("DELETE", "/v1/users/{name}"),
            Rights {
                allowed: &["root-admin"],
                forbidden: NOT_ADMINS,
                hidden: &[],
                path: |w, who| {
                    let name = w.fresh("leaver");
                    let (status, _) =
                        w.call(Some("admin"), "POST", "/v1/users", Some(json!({"name": name, "role": "viewer"})));
                    assert_eq!(status, 201, "{who}");
                    format!("/v1/users/{name}")
                },
                body: no_body,
            },
        ),
        (
            ("GET", "/v1/teams"),
            Rights { allowed: EVERYONE, forbidden: &[], hidden: &[], path: fixed("/v1/teams"), body: no_body },
        ),
        (
            ("POST", "/v1/teams"),
            Rights {
                allowed: &["root-admin"],
                forbidden: NOT_ADMINS,
                hidden: &[],
                path: fixed("/v1/teams"),
                body: |w, _| Some(json!({"name": w.fresh("team")})),
            },
        ),
        (
            ("GET", "/v1/teams/{name}"),
            Rights {
                allowed: RED,
                forbidden: &[],
                hidden: &["blue-creator"],
                path: |_, _| "/v1/teams/red".into(),
                body: no_body,
            },
        ),
        (
            ("DELETE", "/v1/teams/{name}"),
            Rights {
                allowed: &["root-admin"],
                forbidden: NOT_ADMINS,
                hidden: &[],
                path: |w, _| {
                    let name = w.fresh("gone");
                    assert_eq!(w.call(Some("admin"), "POST", "/v1/teams", Some(json!({"name": name}))).0, 201);
                    format!("/v1/teams/{name}")
                },
                body: no_body,
            },
        ),
        (
            ("PUT", "/v1/teams/{name}/members/{user}"),
            Rights {
                allowed: &["root-admin"],
                forbidden: NOT_ADMINS,
                hidden: &[],
                path: |_, _| "/v1/teams/blue/members/red-viewer".into(),
                body: no_body,
            },
        ),
        (
            ("DELETE", "/v1/teams/{name}/members/{user}"),
            Rights {
                allowed: &["root-admin"],
                forbidden: NOT_ADMINS,
                hidden: &[],
                path: |w, _| {
                    // The member removed is put back, so that the matrix's people stay.
                    w.call(Some("admin"), "PUT", "/v1/teams/blue/members/red-user2", None);
                    "/v1/teams/blue/members/red-user2".into()
                },
                body: no_body,
            },
        ),
        (
            ("GET", "/v1/tokens"),
            Rights { allowed: EVERYONE, forbidden: &[], hidden: &[], path: fixed("/v1/tokens"), body: no_body },
        ),
        (
            ("POST", "/v1/tokens"),
            Rights {
                allowed: EVERYONE,
                forbidden: &[],
                hidden: &[],
                path: fixed("/v1/tokens"),
                body: |_, _| Some(json!({"description": "from the matrix", "expires_in": 3600})),
            },
        ),
        (
            ("DELETE", "/v1/tokens/{id}"),
            Rights {
                allowed: EVERYONE,
                forbidden: &[],
                hidden: &[],
                path: |w, who| {
                    // Each revokes a token of their own (an administrator's is anyone's).
                    let (status, made) = w.call(Some(who), "POST", "/v1/tokens", Some(json!({"expires_in": 600})));
                    assert_eq!(status, 201, "{made}");
                    format!("/v1/tokens/{}", made["token"]["id"])
                },
                body: no_body,
            },
        ),
        (
            ("GET", "/v1/sources"),
            Rights {
                allowed: &["red-creator", "blue-creator", "root-admin"],
                forbidden: &["red-viewer", "red-user", "red-user2"],
                hidden: &[],
                path: fixed("/v1/sources"),
                body: no_body,
            },
        ),
        (
            ("POST", "/v1/sources"),
            Rights {
                allowed: &["root-admin"],
                forbidden: NOT_ADMINS,
                hidden: &[],
                path: fixed("/v1/sources"),
                body: |w, _| Some(json!({"name": w.fresh("src"), "path": "/var/tmp"})),
            },
        ),
        (
            ("DELETE", "/v1/sources/{name}"),
            Rights {
                allowed: &["root-admin"],
                forbidden: NOT_ADMINS,
                hidden: &[],
                path: |w, _| {
                    let name = w.fresh("src");
                    let body = json!({"name": name, "path": "/var/tmp"});
                    assert_eq!(w.call(Some("admin"), "POST", "/v1/sources", Some(body)).0, 201);
                    format!("/v1/sources/{name}")
                },
                body: no_body,
            },
        ),
        (
            ("GET", "/v1/activity"),
            Rights { allowed: EVERYONE, forbidden: &[], hidden: &[], path: fixed("/v1/activity"), body: no_body },
        ),
        // Agents are the server's, of no team: everyone sees them, administrators manage them.
        (
            ("GET", "/v1/agents"),
            Rights { allowed: EVERYONE, forbidden: &[], hidden: &[], path: fixed("/v1/agents"), body: no_body },
        ),
        (
            ("GET", "/v1/agents/{name}"),
            Rights {
                allowed: EVERYONE,
                forbidden: &[],
                hidden: &[],
                path: |_, _| format!("/v1/agents/{}", server::LOCAL),
                body: no_body,
            },
        ),
        (
            ("POST", "/v1/agents/{name}/revoke"),
            Rights {
                allowed: &["root-admin"],
                forbidden: NOT_ADMINS,
                hidden: &[],
                // Each is asked about an agent that joined just before (the embedded one
                // cannot be revoked at all).
                path: |w, _| format!("/v1/agents/{}/revoke", w.enroll()),
                body: no_body,
            },
        ),
        (
            ("POST", "/v1/agents/tokens"),
            Rights {
                allowed: &["root-admin"],
                forbidden: NOT_ADMINS,
                hidden: &[],
                path: fixed("/v1/agents/tokens"),
                body: |_, _| Some(json!({"expires_in": 600})),
            },
        ),
        (
            ("POST", "/v1/agents/join"),
            Rights {
                // The enrollment token is the credential, whoever carries it.
                allowed: EVERYONE,
                forbidden: &[],
                hidden: &[],
                path: fixed("/v1/agents/join"),
                body: |w, _| Some(w.join_body()),
            },
        ),
        (
            ("GET", "/v1/locations"),
            Rights { allowed: EVERYONE, forbidden: &[], hidden: &[], path: fixed("/v1/locations"), body: no_body },
        ),
        (
            ("POST", "/v1/locations"),
            Rights {
                allowed: &["root-admin"],
                forbidden: NOT_ADMINS,
                hidden: &[],
                path: fixed("/v1/locations"),
                body: |w, _| Some(json!({"name": w.fresh("loc"), "path": w.location_dir()})),
            },
        ),
        (
            ("DELETE", "/v1/locations/{name}"),
            Rights {
                allowed: &["root-admin"],
                forbidden: NOT_ADMINS,
                hidden: &[],
                path: |w, _| format!("/v1/locations/{}", w.location()),
                body: no_body,
            },
        ),
        (
            ("GET", "/v1/templates"),
            Rights { allowed: EVERYONE, forbidden: &[], hidden: &[], path: fixed("/v1/templates"), body: no_body },
        ),
        (
            ("POST", "/v1/templates"),
            Rights {
                allowed: &["red-creator", "blue-creator", "root-admin"],
                forbidden: &["red-viewer", "red-user", "red-user2"],
                hidden: &[],
                path: fixed("/v1/templates"),
                body: |w, _| Some(json!({"name": w.fresh("tpl"), "scripts": [{"name": "a.sql", "sql": "SELECT 1"}]})),
            },
        ),
        (
            ("GET", "/v1/templates/{name}"),
            Rights {
                allowed: EVERYONE,
                forbidden: &[],
                hidden: &[],
                path: |w, _| format!("/v1/templates/{}", w.template()),
                body: no_body,
            },
        ),
        (
            ("DELETE", "/v1/templates/{name}"),
            Rights {
                allowed: &["red-creator", "blue-creator", "root-admin"],
                forbidden: &["red-viewer", "red-user", "red-user2"],
                hidden: &[],
                path: |w, _| format!("/v1/templates/{}", w.template()),
                body: no_body,
            },
        ),
        (
            ("GET", "/v1/schedules"),
            Rights { allowed: EVERYONE, forbidden: &[], hidden: &[], path: fixed("/v1/schedules"), body: no_body },
        ),
        (
            ("POST", "/v1/schedules"),
            Rights {
                allowed: &["red-creator", "root-admin"],
                forbidden: &["red-viewer", "red-user", "red-user2"],
                hidden: &["blue-creator"],
                path: fixed("/v1/schedules"),
                body: |w, _| {
                    Some(json!({"name": w.fresh("sched"), "cron": "0 2 * * *", "from_dir": w.source, "team": "red"}))
                },
            },
        ),
        (
            ("GET", "/v1/schedules/{name}"),
            Rights {
                allowed: RED,
                forbidden: &[],
                hidden: &["blue-creator"],
                path: |w, _| format!("/v1/schedules/{}", w.schedule("red")),
                body: no_body,
            },
        ),
        (
            ("DELETE", "/v1/schedules/{name}"),
            Rights {
                allowed: &["red-creator", "root-admin"],
                forbidden: &["red-viewer", "red-user", "red-user2"],
                hidden: &["blue-creator"],
                path: |w, _| format!("/v1/schedules/{}", w.schedule("red")),
                body: no_body,
            },
        ),
        (
            ("POST", "/v1/schedules/{name}/run"),
            Rights {
                allowed: &["red-creator", "root-admin"],
                forbidden: &["red-viewer", "red-user", "red-user2"],
                hidden: &["blue-creator"],
                path: |w, _| format!("/v1/schedules/{}/run?wait=60", w.schedule("red")),
                body: no_body,
            },
        ),
        (
            ("GET", "/v1/webhooks"),
            Rights {
                allowed: &["root-admin"],
                forbidden: NOT_ADMINS,
                hidden: &[],
                path: fixed("/v1/webhooks"),
                body: no_body,
            },
        ),
        (
            ("POST", "/v1/webhooks"),
            Rights {
                allowed: &["root-admin"],
                forbidden: NOT_ADMINS,
                hidden: &[],
                path: fixed("/v1/webhooks"),
                body: |_, _| Some(json!({"url": "http://127.0.0.1:9/matrix", "events": ["webhook.test"]})),
            },
        ),
        (
            ("DELETE", "/v1/webhooks/{id}"),
            Rights {
                allowed: &["root-admin"],
                forbidden: NOT_ADMINS,
                hidden: &[],
                path: |w, _| format!("/v1/webhooks/{}", w.webhook()),
                body: no_body,
            },
        ),
        (
            ("GET", "/v1/webhooks/{id}/deliveries"),
            Rights {
                allowed: &["root-admin"],
                forbidden: NOT_ADMINS,
                hidden: &[],
                path: |w, _| format!("/v1/webhooks/{}/deliveries", w.webhook()),
                body: no_body,
            },
        ),
    ]
}

/// A setting of red-c (expiry, protection, idle policy): its owner and administrators; red's
/// others may not; blue does not see it.
fn clone_setting(what: &'static str, body: fn(&World, &str) -> Option<Value>) -> Rights {
    let path: fn(&World, &str) -> String = match what {
        "expiry" => |_, _| "/v1/clones/red-c/expiry".into(),
        "protect" => |_, _| "/v1/clones/red-c/protect".into(),
        "unprotect" => |_, _| "/v1/clones/red-c/unprotect".into(),
        _ => |_, _| "/v1/clones/red-c/idle".into(),
    };
    Rights {
        allowed: &["red-user", "root-admin"],
        forbidden: &["red-viewer", "red-user2", "red-creator"],
        hidden: &["blue-creator"],
        path,
        body,
    }
}

/// start, stop and reset: the clone's owner and administrators; red's others may not; blue
/// does not see it.
fn clone_action(action: &'static str) -> Rights {
    let path: fn(&World, &str) -> String = match action {
        "start" => |_, _| "/v1/clones/red-c/start?wait=60".into(),
        "stop" => |_, _| "/v1/clones/red-c/stop?wait=60".into(),
        _ => |_, _| "/v1/clones/red-c/reset?wait=60".into(),
    };
    Rights {
        allowed: &["red-user", "root-admin"],
        forbidden: &["red-viewer", "red-user2", "red-creator"],
        hidden: &["blue-creator"],
        path,
        body: no_body,
    }
}

#[test]
fn every_route_checks_its_caller() {
    support::require_fuse("every_route_checks_its_caller");
    support::pg::require("every_route_checks_its_caller");
    let work = tempfile::Builder::new().prefix("thinclone-matrix-").tempdir().unwrap();
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).unwrap();
    // A small source, so that the images the matrix makes are quick.
    let source = Server::new(&work.path().join("src"), 24_761, work.path());
    source.initdb();
    source.start();
    source.psql("postgres", "CREATE TABLE t AS SELECT generate_series(1, 100) AS v");
    source.stop();
    let d = Daemon::start(&work.path().join("data"), (8040, 8069));
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .new_agent();
    let mut world = World {
        tokens: [("admin".to_owned(), d.token.clone())].into(),
        d,
        agent,
        source: source.data.display().to_string(),
        counter: std::cell::Cell::new(0),
    };

    // The people, their tokens, a revoked and an expired one.
    for team in ["red", "blue"] {
        assert_eq!(world.call(Some("admin"), "POST", "/v1/teams", Some(json!({"name": team}))).0, 201);
    }
    for (name, role, team) in PEOPLE {
        let (status, user) =
            world.call(Some("admin"), "POST", "/v1/users", Some(json!({"name": name, "role": role, "teams": [team]})));
        assert_eq!(status, 201, "{user}");
        let (status, made) = world.call(Some("admin"), "POST", "/v1/tokens", Some(json!({"user": name})));
        assert_eq!(status, 201, "{made}");
        world.tokens.insert(name.to_owned(), made["secret"].as_str().unwrap().to_owned());
    }
    let (_, revoked) = world.call(Some("admin"), "POST", "/v1/tokens", Some(json!({"user": "red-creator"})));
    let revoked_id = revoked["token"]["id"].as_u64().unwrap();
    assert_eq!(world.call(Some("admin"), "DELETE", &format!("/v1/tokens/{revoked_id}"), None).0, 200);
    world.tokens.insert("revoked".into(), revoked["secret"].as_str().unwrap().to_owned());
    let (_, expired) =
        world.call(Some("admin"), "POST", "/v1/tokens", Some(json!({"user": "red-creator", "expires_in": 1})));
    world.tokens.insert("expired".into(), expired["secret"].as_str().unwrap().to_owned());
    let expired_enrollment = world.enrollment(1);
    std::thread::sleep(Duration::from_millis(2100));

    // The objects every route is asked about: red's image, and red-user's clone of it.
    let body = json!({"name": "red-img", "from_dir": world.source, "team": "red"});
    let (status, op) = world.call(Some("admin"), "POST", "/v1/images?wait=60", Some(body));
    assert!(status == 200 && op["state"] == "succeeded", "{op}");
    let (status, op) =
        world.call(Some("red-user"), "POST", "/v1/clones?wait=60", Some(json!({"name": "red-c", "image": "red-img"})));
    assert!(status == 200 && op["state"] == "succeeded", "{op}");

    // Every route of the served document, and the matrix's, are the same set.
    let (status, doc) = world.call(Some("admin"), "GET", "/v1/openapi.json", None);
    assert_eq!(status, 200);
    let mut routes = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in ["get", "post", "put", "delete", "patch"] {
            if item.get(method).is_some() {
                routes.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    assert!(routes.len() >= 30, "only {} routes in the document", routes.len());

    // 1. Without a valid token, every route but /v1/health answers 401, before anything
    //    else is looked at (the paths here name nothing that exists). An agent's join takes
    //    no user's token: it answers 401 to an enrollment token no one made, whoever asks.
    for (method, path) in &routes {
        let concrete = path
            .replace("{name}", "nothing")
            .replace("{user}", "nobody")
            .replace("{id}", "1")
            .replace("{checkpoint}", "none");
        let mut body = (method == "POST").then(|| json!({}));
        if path == "/v1/health" {
            assert_eq!(world.call(None, method, &concrete, None).0, 200);
            continue;
        }
        if (method.as_str(), path.as_str()) == ("POST", "/v1/agents/join") {
            body = Some(bogus_join());
        }
        for who in [None, Some("revoked"), Some("expired"), Some("thinclone_0000")] {
            let (status, answer) = world.call(who, method, &concrete, body.clone());
            assert_eq!(status, 401, "{method} {path} with {who:?}: {answer}");
            assert_eq!(answer["code"], "unauthorized", "{method} {path}: {answer}");
        }
    }
    // The join is open indeed: a valid enrollment token, and no user's token, joins; the
    // token is then used up, and one that expired never joins.
    let body = world.join_body();
    let (status, joined) = world.call(None, "POST", "/v1/agents/join", Some(body.clone()));
    assert_eq!(status, 200, "joining with a valid enrollment token and no user's token: {joined}");
    for (token, what) in [(body["token"].clone(), "used"), (json!(expired_enrollment), "expired")] {
        let again = json!({"token": token, "name": world.fresh("agent"), "public_key": public_key()});
        let (status, answer) = world.call(None, "POST", "/v1/agents/join", Some(again));
        assert_eq!(status, 401, "joining with a {what} enrollment token: {answer}");
        assert_eq!(answer["code"], "unauthorized", "joining with a {what} enrollment token: {answer}");
    }

    // 1b. The web dashboard's files (`GET /`, `GET /ui/<file>`) are the only other answers
    //     without a credential. They are not API routes (the document names none outside
    //     /v1 but /metrics, and every one of those needed a token above), and they carry no
    //     data: each is the embedded file, byte for byte, the same with or without a token.
    //     Any other path under /ui/, or beside it, needs a token like the API.
    assert!(
        routes.iter().all(|(_, p)| p.starts_with("/v1/") || p == "/metrics"),
        "the document names a route outside /v1: {routes:?}"
    );
    let files = server::dashboard_files();
    assert!(files.iter().any(|(name, _, _)| *name == "index.html"), "the dashboard has no page");
    let raw = |who: Option<&str>, path: &str| {
        let mut request = world.agent.get(&format!("{}{path}", world.d.url()));
        if let Some(who) = who {
            request = request.header("authorization", format!("Bearer {}", world.tokens[who]));
        }
        let mut response = request.call().unwrap_or_else(|e| panic!("GET {path}: {e}"));
        (response.status().as_u16(), response.body_mut().read_to_string().unwrap_or_default())
    };
    let page = files.iter().find(|(name, _, _)| *name == "index.html").unwrap().2;
    assert_eq!(raw(None, "/"), (200, page.to_owned()), "GET / without a token is not the dashboard's page");
    for (name, _, body) in files {
        let path = format!("/ui/{name}");
        assert_eq!(raw(None, &path), (200, body.to_string()), "{path} without a token is not the embedded file");
        assert_eq!(raw(Some("root-admin"), &path), (200, body.to_string()), "{path} differs with a token");
    }
    for path in
        ["/ui/", "/ui/nothing.js", "/ui/../v1/clones", "/ui/app.js/more", "/index.html", "/v1/", "/v1/ui/app.js"]
    {
        let (status, answer) = world.call(None, "GET", path, None);
        assert_eq!(status, 401, "{path} answered without a token: {answer}");
    }

    // 2. The matrix: every route's rights, caller by caller.
    let matrix = matrix();
    let written: BTreeSet<(String, String)> = matrix.iter().map(|((m, p), _)| (m.to_string(), p.to_string())).collect();
    let mut missing: Vec<_> = routes.difference(&written).filter(|(_, p)| p != "/v1/health").collect();
    missing.sort();
    assert!(missing.is_empty(), "routes whose rights the matrix does not say: {missing:?}");
    let gone: Vec<_> = written.difference(&routes).collect();
    assert!(gone.is_empty(), "the matrix names routes the server does not have: {gone:?}");
    let mut checked = 0;
    for ((method, template), rights) in &matrix {
        for (expect, callers) in [(403u16, rights.forbidden), (404, rights.hidden), (200, rights.allowed)] {
            for who in callers {
                let path = (rights.path)(&world, who);
                let body = (rights.body)(&world, who);
                let (status, answer) = world.call(Some(who), method, &path, body);
                let ok = match expect {
                    200 => (200..300).contains(&status) && answer.get("state").is_none_or(|s| s != "failed"),
                    other => status == other,
                };
                assert!(ok, "{method} {template} as {who}: expected {expect}, got {status}: {answer}");
                checked += 1;
            }
        }
        // Each of the six people is covered by every route.
        let covered: BTreeSet<&str> =
            rights.allowed.iter().chain(rights.forbidden).chain(rights.hidden).copied().collect();
        assert_eq!(covered.len(), EVERYONE.len(), "{method} {template} does not say what each person may do");
    }
    eprintln!("auth matrix: {} routes, {checked} checks by role and team, 401 checked 4 ways on each", routes.len());

    // What a viewer sees of another's clone: no password.
    let (_, clone) = world.call(Some("red-viewer"), "GET", "/v1/clones/red-c", None);
    assert!(clone["url"].is_null(), "a viewer was given the clone's URL: {clone}");
    let (_, clone) = world.call(Some("red-user"), "GET", "/v1/clones/red-c", None);
    assert!(clone["url"].as_str().is_some_and(|u| u.contains('@')), "the owner has no URL: {clone}");
    let (_, list) = world.call(Some("blue-creator"), "GET", "/v1/clones", None);
    assert!(list.as_array().unwrap().iter().all(|c| c["team"] != "red"), "blue sees red's clones: {list}");

    // The embedded agent cannot be revoked, even by an administrator; one that joined can.
    let (status, answer) =
        world.call(Some("root-admin"), "POST", &format!("/v1/agents/{}/revoke", server::LOCAL), None);
    assert_eq!(status, 400, "revoking the embedded agent: {answer}");
    let name = world.enroll();
    let (status, agent) = world.call(Some("root-admin"), "POST", &format!("/v1/agents/{name}/revoke"), None);
    assert!(status == 200 && agent["status"] == "revoked", "revoking {name}: {status} {agent}");
}
