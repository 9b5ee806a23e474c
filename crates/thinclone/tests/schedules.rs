//! Scheduled images, retention and clone refresh (issue 14, acceptance 5), through the CLI of
//! a real daemon over a real source server reached by URL with a password.
//!
//! A schedule run four times (by `schedule run`, as the clock would) keeps its newest
//! `--keep` ready images, never removes one a clone uses, and removes it once the clone has
//! moved on; `clone refresh` moves a clone to the newest image keeping its port and
//! password, and the new data is there. The source's password is never shown.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use api::{Clone, Image, ImageStatus, Schedule};
use support::daemon::{psql, Daemon, UrlOf};
use support::pg::Server;

const PASSWORD: &str = "sched-Secret-42";

/// The names of the images of `schedule`, newest first, once they are all ready or gone.
fn images_of(d: &Daemon, schedule: &str) -> Vec<String> {
    let s: Schedule = d.ok(&["schedule", "show", schedule]);
    s.images.iter().map(|n| n.to_string()).collect()
}

/// Waits until the images of `schedule` are `want` (retention runs each second).
fn wait_for_images(d: &Daemon, schedule: &str, want: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let have = images_of(d, schedule);
        if have == want {
            return;
        }
        assert!(Instant::now() < deadline, "schedule {schedule} has images {have:?}, expected {want:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn run(d: &Daemon, schedule: &str) -> Image {
    let image: Image = d.ok(&["schedule", "run", schedule]);
    assert_eq!(image.status, ImageStatus::Ready, "{image:?}");
    assert_eq!(image.schedule.as_ref().map(|s| s.as_str()), Some(schedule), "{image:?}");
    assert!(image.name.as_str().starts_with(&format!("{schedule}-")), "{image:?}");
    image
}

#[test]
fn a_schedule_keeps_its_newest_images_and_refresh_moves_a_clone_to_the_newest() {
    support::require_fuse("a_schedule_keeps_its_newest_images_and_refresh_moves_a_clone_to_the_newest");
    support::pg::require("a_schedule_keeps_its_newest_images_and_refresh_moves_a_clone_to_the_newest");
    let work = tempfile::Builder::new().prefix("thinclone-schedules-").tempdir_in("/var/tmp").unwrap();
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let w = work.path();

    let source = Server::new(&w.join("src"), 24_870, w);
    source.initdb();
    source.start();
    source.require_passwords(PASSWORD);
    source.psql("postgres", "CREATE TABLE generation (n int); INSERT INTO generation VALUES (1);");
    let url = format!("postgresql://postgres:{PASSWORD}@127.0.0.1:24870/postgres");

    let d = Daemon::start(&w.join("data"), (8580, 8599));

    // Bad input: a clear error, and nothing made.
    let bad = d.cli::<Schedule>(&["schedule", "create", "bad", "--cron", "0 2 * *", "--from-url", &url]).unwrap_err();
    assert!(bad.contains("five") && bad.contains("0 2 * * *"), "{bad}");
    let long = "s".repeat(48);
    let bad = d.cli::<Schedule>(&["schedule", "create", &long, "--cron", "0 2 * * *", "--from-url", &url]).unwrap_err();
    assert!(bad.contains("at most 47"), "{bad}");
    let none: Vec<Schedule> = d.ok(&["schedule", "list"]);
    assert!(none.is_empty(), "{none:?}");

    let made: Schedule =
        d.ok(&["schedule", "create", "nightly", "--cron", "0 2 * * *", "--keep", "2", "--from-url", &url]);
    assert_eq!((made.cron.as_str(), made.keep), ("0 2 * * *", 2));
    assert_eq!(made.source, "postgresql://postgres@127.0.0.1:24870/postgres");
    // The next run is the next 02:00 UTC.
    let now = api::Timestamp::now().0;
    assert!(made.next_run_at.0 > now && made.next_run_at.0 <= now + 86_400, "{made:?}");
    assert_eq!(made.next_run_at.0 % 86_400, 2 * 3600, "{made:?}");

    // Run 1; a clone of it, made with a template whose scripts a refresh runs again.
    let first = run(&d, "nightly");
    let login = w.join("login.sql");
    fs::write(
        &login,
        "CREATE ROLE app_login LOGIN PASSWORD 'app';\n\
         CREATE TABLE made_for AS SELECT current_setting('thinclone.image') AS image;\n",
    )
    .unwrap();
    d.ok::<api::Template>(&["template", "create", "app", "--script", login.to_str().unwrap()]);
    let c: Clone = d.ok(&["clone", "create", "app", "--image", first.name.as_str(), "--template", "app"]);
    assert_eq!(c.template.as_ref().map(|t| t.as_str()), Some("app"));
    let before = c.url().to_owned();
    assert_eq!(psql(&before, "SELECT max(n) FROM generation").unwrap(), "1");
    assert_eq!(psql(&before, "SELECT image FROM made_for").unwrap(), first.name.as_str());
    psql(&before, "INSERT INTO generation VALUES (100)").unwrap();

    // A clone whose image no schedule made cannot be refreshed without an image named, and
    // one on the newest image already is told so.
    let refused = d.cli::<Clone>(&["clone", "refresh", "app"]).unwrap_err();
    assert!(refused.contains("already") && refused.contains(first.name.as_str()), "{refused}");

    // Run 2, with new data at the source; refresh moves the clone, same port and password.
    source.psql("postgres", "INSERT INTO generation VALUES (2);");
    let second = run(&d, "nightly");
    assert_ne!(second.name, first.name);
    let refreshed: Clone = d.ok(&["clone", "refresh", "app"]);
    assert_eq!(refreshed.image, second.name, "{refreshed:?}");
    assert_eq!(refreshed.port, c.port);
    assert_eq!(refreshed.url(), before, "the same URL: host, port, user and password");
    assert_eq!(
        psql(&before, "SELECT max(n) FROM generation").unwrap(),
        "2",
        "the new image's data, its own writes gone"
    );
    // Its template ran again, on the new image.
    assert_eq!(psql(&before, "SELECT image FROM made_for").unwrap(), second.name.as_str());
    assert_eq!(psql(&before, "SELECT count(*) FROM pg_roles WHERE rolname = 'app_login'").unwrap(), "1");

    // Run 3: three ready images, keep 2; the first has no clone now and goes.
    source.psql("postgres", "INSERT INTO generation VALUES (3);");
    let third = run(&d, "nightly");
    wait_for_images(&d, "nightly", &[third.name.as_str(), second.name.as_str()]);

    // Run 4: the second is beyond keep but the clone uses it, so it stays.
    let fourth = run(&d, "nightly");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(images_of(&d, "nightly"), [fourth.name.as_str(), third.name.as_str(), second.name.as_str()]);
    let refused = d.cli::<Image>(&["image", "rm", second.name.as_str()]).unwrap_err();
    assert!(refused.contains("has clones"), "{refused}");

    // Once the clone moves to the newest, the second goes too: --keep images are left.
    let refreshed: Clone = d.ok(&["clone", "refresh", "app"]);
    assert_eq!(refreshed.image, fourth.name);
    assert_eq!(psql(&before, "SELECT max(n) FROM generation").unwrap(), "3");
    wait_for_images(&d, "nightly", &[fourth.name.as_str(), third.name.as_str()]);

    // Refreshing onto a named image works too (back to the third), same port and password.
    let back: Clone = d.ok(&["clone", "refresh", "app", "--image", third.name.as_str()]);
    assert_eq!((back.image.as_str(), back.port), (third.name.as_str(), c.port));
    assert_eq!(psql(&before, "SELECT max(n) FROM generation").unwrap(), "3");

    // The schedule says what it did; the password appears in no answer and no log.
    let shown: Schedule = d.ok(&["schedule", "show", "nightly"]);
    assert_eq!(shown.last_image.as_ref(), Some(&fourth.name));
    assert_eq!(shown.last_error, None);
    let mut everything = String::new();
    for args in [
        &["schedule", "list"][..],
        &["schedule", "show", "nightly"],
        &["image", "list"],
        &["activity"],
        &["op", "list"],
    ] {
        everything.push_str(&serde_json::to_string(&d.ok_value(args)).unwrap());
    }
    everything.push_str(&d.log_since_start());
    assert!(!everything.contains(PASSWORD), "the source's password was shown");

    // Removing the schedule leaves its images, as ordinary images.
    let out = d.cli_output(&["schedule", "rm", "nightly"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let images: Vec<Image> = d.ok(&["image", "list"]);
    assert_eq!(images.len(), 2, "{images:?}");
    let gone = d.cli::<Schedule>(&["schedule", "show", "nightly"]).unwrap_err();
    assert!(gone.contains("no schedule named nightly"), "{gone}");
}
