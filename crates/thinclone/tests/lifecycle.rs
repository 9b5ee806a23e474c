//! Clones that clean up after themselves (issue 13, acceptance 4), through the CLI of a real
//! daemon: a clone made with `--ttl 2s` is removed once it expires, after a `clone.expiring`
//! event; a protected one is not, and `rm` refuses it until it is unprotected; the idle
//! policy stops a clone no client uses and leaves one with an open connection running.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use api::{Clone, CloneStatus, Operation};
use serde_json::Value;
use support::daemon::{psql, Daemon, PsqlSession, UrlOf};
use support::eventually;

fn exists(daemon: &Daemon, name: &str) -> bool {
    let clones: Vec<Clone> = daemon.ok(&["clone", "list"]);
    clones.iter().any(|c| c.name.as_str() == name)
}

/// The audit log's entries of `action` on clone `name`, oldest first.
fn events(daemon: &Daemon, action: &str, name: &str) -> Vec<Value> {
    let log: Vec<Value> = daemon.ok(&["activity"]);
    let target = format!("clone {name}");
    let mut found: Vec<Value> =
        log.into_iter().filter(|e| e["action"] == action && e["target"] == target.as_str()).collect();
    found.reverse();
    found
}

#[test]
fn expiry_protection_and_the_idle_policy() {
    support::require_fuse("expiry_protection_and_the_idle_policy");
    support::pg::require("expiry_protection_and_the_idle_policy");
    let work = tempfile::Builder::new().prefix("thinclone-lifecycle-").tempdir_in("/var/tmp").unwrap();
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let daemon = Daemon::start(&work.path().join("data"), (8340, 8359));
    let source = support::daemon::pgbench_source();
    daemon.ok::<api::Image>(&["image", "create", "prod", "--from-dir", source.to_str().unwrap()]);

    // An image's creation, cancelled while it copies: it fails, "cancelled by admin", and
    // leaves nothing in the location.
    let started: Operation =
        daemon.ok(&["image", "create", "halted", "--from-dir", source.to_str().unwrap(), "--no-wait"]);
    assert_eq!(started.state, api::OperationState::Running, "{started:?}");
    let cancelled: Operation = daemon.ok(&["op", "cancel", &started.id.to_string()]);
    let ended = if cancelled.state.is_finished() {
        cancelled
    } else {
        eventually(Duration::from_secs(30), || {
            let op: Operation = daemon.ok(&["op", "show", &started.id.to_string()]);
            op.state.is_finished().then_some(op)
        })
        .expect("the cancelled operation ended")
    };
    assert_eq!(ended.state, api::OperationState::Failed, "{ended:?}");
    assert_eq!(ended.error.as_deref(), Some("cancelled by admin"), "{ended:?}");
    let image: api::Image = daemon.ok(&["image", "show", "halted"]);
    assert_eq!(image.status, api::ImageStatus::Failed, "{image:?}");
    let images = work.path().join("data/images");
    assert!(!images.join("halted").exists() && !images.join("halted.partial").exists(), "the copy was left");
    daemon.ok::<Operation>(&["image", "rm", "halted"]);
    // An operation that has ended is shown as it is.
    let again: Operation = daemon.ok(&["op", "cancel", &started.id.to_string()]);
    assert_eq!(again.error.as_deref(), Some("cancelled by admin"));

    // A template: its script makes a login role named after the clone before `clone create`
    // returns; a failing one leaves no clone.
    let good = work.path().join("login.sql");
    fs::write(
        &good,
        "DO $$ BEGIN EXECUTE format('CREATE ROLE %I LOGIN', 'app_' || current_setting('thinclone.clone')); END $$;\n\
         CREATE TABLE made_for (clone text, owner text, image text);\n\
         INSERT INTO made_for VALUES (current_setting('thinclone.clone'), current_setting('thinclone.owner'), \
         current_setting('thinclone.image'));\n",
    )
    .unwrap();
    let bad = work.path().join("broken.sql");
    fs::write(&bad, "SELECT 1;\nSELECT * FROM no_such_table;\n").unwrap();
    let made: api::Template = daemon.ok(&["template", "create", "app", "--script", good.to_str().unwrap()]);
    assert_eq!(made.scripts.len(), 1);
    daemon.ok::<api::Template>(&["template", "create", "broken", "--script", bad.to_str().unwrap()]);
    let templated: Clone = daemon.ok(&["clone", "create", "templated", "--image", "prod", "--template", "app"]);
    assert_eq!(
        psql(templated.url(), "SELECT count(*) FROM pg_roles WHERE rolname = 'app_templated' AND rolcanlogin").unwrap(),
        "1"
    );
    assert_eq!(
        psql(templated.url(), "SELECT clone || ',' || owner || ',' || image FROM made_for").unwrap(),
        "templated,admin,prod"
    );
    let err = daemon.cli::<Value>(&["clone", "create", "nope", "--image", "prod", "--template", "broken"]).unwrap_err();
    assert!(err.contains("template script broken.sql") && err.contains("no_such_table"), "{err}");
    assert!(!exists(&daemon, "nope"), "a failed template left the clone");
    assert!(!work.path().join("data/clones/nope").exists(), "a failed template left the clone's files");
    let err = daemon.cli::<Value>(&["clone", "create", "nope", "--image", "prod", "--template", "absent"]).unwrap_err();
    assert!(err.contains("no template named absent"), "{err}");
    daemon.ok::<Operation>(&["clone", "rm", "templated"]);
    let removed = daemon.cli_output(&["template", "rm", "broken"]);
    assert!(removed.status.success());
    let left: Vec<api::Template> = daemon.ok(&["template", "list"]);
    assert_eq!(left.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["app"]);

    // Expiry: warned ahead, then removed.
    let short: Clone = daemon.ok(&["clone", "create", "short", "--image", "prod", "--ttl", "2s"]);
    let expires = short.expires_at.expect("a clone made with --ttl has an expiry");
    assert!(expires.0 - short.created_at.0 <= 3, "{short:?}");
    let gone = eventually(Duration::from_secs(30), || (!exists(&daemon, "short")).then_some(()));
    assert!(gone.is_some(), "the expired clone is still there:\n{}", daemon.log_tail(30));
    let warned = events(&daemon, "clone.expiring", "short");
    let expired = events(&daemon, "clone.expired", "short");
    assert_eq!(warned.len(), 1, "one expiring event: {warned:?}");
    assert_eq!(expired.len(), 1, "one expired event: {expired:?}");
    assert!(warned[0]["id"].as_u64() < expired[0]["id"].as_u64(), "the warning came first");

    // Protection: an expired protected clone stays, and `rm` refuses it; unprotected, expiry
    // takes it.
    daemon.ok::<Clone>(&["clone", "create", "kept", "--image", "prod", "--ttl", "2s"]);
    let protected: Clone = daemon.ok(&["clone", "protect", "kept"]);
    assert!(protected.protected && protected.protected_until.is_none(), "{protected:?}");
    std::thread::sleep(Duration::from_secs(4));
    assert!(exists(&daemon, "kept"), "a protected clone was removed");
    let err = daemon.cli::<Value>(&["clone", "rm", "kept"]).unwrap_err();
    assert!(err.contains("is protected") && err.contains("unprotect"), "{err}");
    let kept: Clone = daemon.ok(&["clone", "show", "kept"]);
    assert_eq!(kept.status, CloneStatus::Ready, "a refused rm changes nothing: {kept:?}");
    daemon.ok::<Clone>(&["clone", "unprotect", "kept"]);
    let gone = eventually(Duration::from_secs(30), || (!exists(&daemon, "kept")).then_some(()));
    assert!(gone.is_some(), "the unprotected, expired clone is still there");

    // A protection lease lapses by itself.
    daemon.ok::<Clone>(&["clone", "create", "leased", "--image", "prod"]);
    let leased: Clone = daemon.ok(&["clone", "protect", "leased", "--for", "2s"]);
    assert!(leased.protected_until.is_some(), "{leased:?}");
    let lapsed = eventually(Duration::from_secs(20), || {
        let c: Clone = daemon.ok(&["clone", "show", "leased"]);
        (!c.protected).then_some(())
    });
    assert!(lapsed.is_some(), "the lease did not lapse");
    daemon.ok::<Operation>(&["clone", "rm", "leased"]);

    // Expiry set later, and taken back.
    daemon.ok::<Clone>(&["clone", "create", "later", "--image", "prod"]);
    let set: Clone = daemon.ok(&["clone", "expire", "later", "--ttl", "1h"]);
    assert!(set.expires_at.is_some());
    let never: Clone = daemon.ok(&["clone", "expire", "later", "--never"]);
    assert!(never.expires_at.is_none());
    let err = daemon.cli::<Value>(&["clone", "expire", "later", "--at", "2001-01-01T00:00:00Z"]).unwrap_err();
    assert!(err.contains("not in the future"), "{err}");
    daemon.ok::<Operation>(&["clone", "rm", "later"]);

    // The idle policy: a clone without a client is stopped; one with an open connection is
    // not.
    let idle: Clone = daemon.ok(&["clone", "create", "idle", "--image", "prod"]);
    let busy: Clone = daemon.ok(&["clone", "create", "busy", "--image", "prod"]);
    let mut session = PsqlSession::open(busy.url());
    assert_eq!(session.query("SELECT 1"), "1");
    for name in ["idle", "busy"] {
        let c: Clone = daemon.ok(&["clone", "idle", name, "--stop-after", "4s"]);
        assert_eq!(c.idle.stop_after, Some(4));
    }
    let stopped = eventually(Duration::from_secs(40), || {
        let c: Clone = daemon.ok(&["clone", "show", "idle"]);
        (c.status == CloneStatus::Stopped).then_some(())
    });
    assert!(stopped.is_some(), "the idle clone was not stopped:\n{}", daemon.log_tail(30));
    let still: Clone = daemon.ok(&["clone", "show", "busy"]);
    assert_eq!(still.status, CloneStatus::Ready, "the busy clone was stopped");
    assert!(still.idle_since.is_none(), "a clone with a client is not idle: {still:?}");
    assert_eq!(session.query("SELECT 2"), "2", "the busy clone's session lives on");
    assert_eq!(events(&daemon, "clone.stopped", "idle").len(), 1);
    assert!(events(&daemon, "clone.stopped", "busy").is_empty());
    drop(session);
    // Started again, it works; its data was kept.
    daemon.ok::<Clone>(&["clone", "idle", "idle", "--stop-after", "0"]);
    daemon.ok::<Clone>(&["clone", "start", "idle"]);
    assert_eq!(psql(idle.url(), "SELECT count(*) > 0 FROM pgbench_branches").unwrap(), "t");

    for name in ["idle", "busy"] {
        daemon.ok::<Operation>(&["clone", "rm", name]);
    }
    daemon.ok::<Operation>(&["image", "rm", "prod"]);
}
