//! Masking that fails closed, and modification scripts (issue 14, acceptance 1 and 2), through
//! the CLI of a real daemon over a real source cluster.
//!
//! The source holds personal data in a column with a unique index that another table's
//! foreign key refers to, a TOAST-sized column stored uncompressed (so that a leftover would
//! be found by a byte search, not hidden by compression), a date, dead rows holding older
//! originals, and planner statistics. The image made with rules over those columns is masked
//! in SQL (joins still match, constraints hold), and a byte search of every file of the image
//! for the original values finds none. A rule naming a missing column and a failing script
//! each fail the image, leave nothing behind, and no clone can be made of it.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use api::{Clone, Image, ImageStatus, Operation};
use serde_json::Value;
use support::daemon::{psql, Daemon, UrlOf};
use support::pg::Server;
use support::residue::{check_fails_closed, search};

const PEOPLE: u32 = 400;

fn email(i: u32) -> String {
    format!("person{i}.{:08x}@corp.example", i.wrapping_mul(2_654_435_761))
}

fn real_name(i: u32) -> String {
    format!("Realname{:08x} Surname{i}", i.wrapping_mul(2_246_822_519))
}

#[test]
fn masking_fails_closed_and_scripts_run_before_sealing() {
    support::require_fuse("masking_fails_closed_and_scripts_run_before_sealing");
    support::pg::require("masking_fails_closed_and_scripts_run_before_sealing");
    let work = tempfile::Builder::new().prefix("thinclone-masking-").tempdir_in("/var/tmp").unwrap();
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let w = work.path();

    // The source.
    let source = Server::new(&w.join("src"), 24_851, w);
    source.initdb();
    source.start();
    let rows: Vec<String> = (1..=PEOPLE)
        .map(|i| {
            format!("({i}, '{}', '{}', repeat(md5('notes{i}'), 80), date '1970-01-01' + {i})", email(i), real_name(i))
        })
        .collect();
    source.psql(
        "postgres",
        &format!(
            "CREATE TABLE customers (id int PRIMARY KEY, email text NOT NULL UNIQUE, name text, notes text, born date);
             ALTER TABLE customers ALTER COLUMN notes SET STORAGE EXTERNAL;
             CREATE TABLE orders (id int PRIMARY KEY, customer_email text NOT NULL REFERENCES customers (email),
                                  amount int);
             INSERT INTO customers VALUES {};
             INSERT INTO orders SELECT g, c.email, g FROM generate_series(1, {n}) g JOIN customers c ON c.id = 1 + g % {PEOPLE};
             UPDATE customers SET name = name WHERE id <= 50;
             ANALYZE;",
            rows.join(", "),
            n = PEOPLE * 3
        ),
    );
    let originals: Vec<String> = (1..=PEOPLE)
        .step_by(7)
        .flat_map(|i| {
            let notes = source.psql("postgres", &format!("SELECT md5('notes{i}')")).trim().to_owned();
            [email(i), real_name(i), notes]
        })
        .collect();
    source.psql("postgres", "CHECKPOINT");
    source.stop();
    // The originals are in the source's files, so the search would find them.
    assert!(search(&source.data, &originals[..3]).is_some(), "the byte search finds nothing even in the source");

    let d = Daemon::start(&w.join("data"), (8520, 8539));
    let src = source.data.to_str().unwrap();
    let rules = w.join("rules.toml");
    fs::write(
        &rules,
        r#"
[[rule]]
table = "public.customers"
column = "email"
strategy = "email"

[[rule]]
table = "public.orders"
column = "customer_email"
strategy = "email"

[[rule]]
table = "public.customers"
column = "name"
strategy = "name"

[[rule]]
table = "public.customers"
column = "notes"
strategy = "redact"

[[rule]]
table = "public.customers"
column = "born"
strategy = "date_shift"
days = 30
"#,
    )
    .unwrap();
    let script = w.join("add-role.sql");
    fs::write(&script, "CREATE TABLE made_by_script AS SELECT 42 AS answer;\nSELECT 'script ran';\n").unwrap();

    let image: Image = d.ok(&[
        "image",
        "create",
        "masked",
        "--from-dir",
        src,
        "--mask",
        rules.to_str().unwrap(),
        "--script",
        script.to_str().unwrap(),
    ]);
    assert_eq!(image.status, ImageStatus::Ready, "{image:?}");
    assert_eq!(image.mask.len(), 5);
    assert_eq!(image.scripts, ["add-role.sql"]);
    let report = image.report.clone().expect("a masked image has a report");
    let rows_of = |table: &str, column: &str| {
        report.masked.iter().find(|m| m.table == table && m.column == column).map(|m| m.rows)
    };
    assert_eq!(rows_of("public.customers", "email"), Some(u64::from(PEOPLE)));
    assert_eq!(rows_of("public.orders", "customer_email"), Some(u64::from(PEOPLE * 3)));
    assert!(report.values_checked > 0, "{report:?}");
    assert!(report.scripts[0].output.contains("script ran"), "{report:?}");

    // Not one original value in any file of the image: heap, TOAST, indexes, statistics, WAL.
    let image_dir = d.data_dir.join("images/masked");
    if let Some((file, value)) = search(&image_dir, &originals) {
        panic!("{value:?} is still in {}", file.display());
    }

    // Through SQL: masked, joins match, constraints hold, the script's table is there.
    let c: Clone = d.ok(&["clone", "create", "m", "--image", "masked"]);
    let q = |sql: &str| psql(c.url(), sql).unwrap();
    assert_eq!(q("SELECT count(*) FROM customers WHERE email LIKE '%@corp.example'"), "0");
    assert_eq!(q("SELECT count(*) FROM customers WHERE email LIKE '%@example.com'"), PEOPLE.to_string());
    assert_eq!(q("SELECT count(DISTINCT email) FROM customers"), PEOPLE.to_string(), "unique values stay unique");
    assert_eq!(
        q("SELECT count(*) FROM orders o JOIN customers c ON c.email = o.customer_email"),
        (PEOPLE * 3).to_string(),
        "every order still finds its customer"
    );
    assert_eq!(q("SELECT count(*) FROM customers WHERE name LIKE 'Realname%'"), "0");
    assert_eq!(q("SELECT count(*) FROM customers WHERE notes ~ '[^x]'"), "0");
    assert_eq!(
        q("SELECT count(*) FROM customers WHERE born BETWEEN date '1970-01-01' + id - 30 AND date '1970-01-01' + id + 30"),
        PEOPLE.to_string(),
        "dates move within 30 days"
    );
    assert_eq!(q("SELECT answer FROM made_by_script"), "42");
    // The constraints are there and enforced.
    let dup =
        psql(c.url(), "INSERT INTO customers (id, email) SELECT 100000, email FROM customers LIMIT 1").unwrap_err();
    assert!(dup.contains("duplicate key"), "{dup}");
    let orphan = psql(c.url(), "INSERT INTO orders VALUES (100000, 'nobody@example.com', 1)").unwrap_err();
    assert!(orphan.contains("foreign key"), "{orphan}");
    d.ok::<Operation>(&["clone", "rm", "m"]);

    // Fails closed: a rule naming a missing column, a failing script, and a copy of masked
    // columns that no rule names (the byte search finds the originals).
    check_fails_closed(&d, w, src, &rules, "public", "no column");

    // Bad rules are refused before anything is copied.
    let unqualified = w.join("unqualified.toml");
    fs::write(&unqualified, "[[rule]]\ntable = \"customers\"\ncolumn = \"email\"\nstrategy = \"email\"\n").unwrap();
    let err = d
        .cli::<Value>(&["image", "create", "x", "--from-dir", src, "--mask", unqualified.to_str().unwrap()])
        .unwrap_err();
    assert!(err.contains("schema-qualified"), "{err}");
    let typo = w.join("typo.toml");
    fs::write(&typo, "[[rule]]\ntable = \"public.c\"\ncolumn = \"e\"\nstrategy = \"emial\"\n").unwrap();
    let err =
        d.cli::<Value>(&["image", "create", "x", "--from-dir", src, "--mask", typo.to_str().unwrap()]).unwrap_err();
    assert!(err.contains("emial"), "{err}");

    d.ok::<Operation>(&["image", "rm", "masked"]);
}
