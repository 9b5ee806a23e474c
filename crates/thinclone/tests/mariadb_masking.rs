//! Masking on MariaDB passes the same byte-level residue check as on PostgreSQL (issue 16,
//! acceptance 3), through the CLI of a real daemon over a real MariaDB 10.11 source.
//!
//! The source holds personal data in a column with a unique index that another table's
//! foreign key refers to, a long text, a date, older originals (the rows were updated, so
//! undo records and freed space held them), and persistent column statistics (which keep
//! minimum and maximum values in `mysql.column_stats`). The image made with rules over those
//! columns is masked in SQL (joins still match, constraints hold, the source's accounts,
//! trigger, view and function are there), and a byte search of every file of the image for
//! the original values finds none. A rule naming a missing column, a failing script, and a
//! script that copies masked values elsewhere each fail the image and leave nothing behind.
//!
//! The source listens on 23905; the daemon's clones on 9300–9309.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use api::{Clone, Image, ImageStatus, Operation};
use support::daemon::{Daemon, UrlOf};
use support::mariadb::{query, Source};
use support::residue::{check_fails_closed, search};

const PEOPLE: u32 = 400;

fn email(i: u32) -> String {
    format!("person{i}.{:08x}@corp.example", i.wrapping_mul(2_654_435_761))
}

fn old_email(i: u32) -> String {
    format!("formerly{i}.{:08x}@corp.example", i.wrapping_mul(2_246_822_519))
}

fn real_name(i: u32) -> String {
    format!("Realname{:08x} Surname{i}", i.wrapping_mul(2_246_822_519))
}

#[test]
fn masking_on_mariadb_leaves_no_original_value() {
    support::require_fuse("masking_on_mariadb_leaves_no_original_value");
    support::mariadb::require("masking_on_mariadb_leaves_no_original_value");
    let work = tempfile::Builder::new().prefix("thinclone-mariadb-masking-").tempdir_in("/var/tmp").unwrap();
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let w = work.path();
    let test_started = std::time::Instant::now();

    // The source: first with older values, then updated to the ones it holds now.
    let mut source = Source::create(w, "source", 23905, "source-pw");
    let rows: Vec<String> = (1..=PEOPLE)
        .map(|i| {
            format!(
                "({i}, '{}', '{}', REPEAT(MD5('notes{i}'), 20), DATE('1970-01-01') + INTERVAL {i} DAY, 'City{}')",
                old_email(i),
                real_name(i),
                i % 10
            )
        })
        .collect();
    source.sql(&format!(
        "CREATE DATABASE shop;
         CREATE TABLE shop.customers (id INT PRIMARY KEY, email VARCHAR(100) NOT NULL UNIQUE, name VARCHAR(100),
                                      notes TEXT, born DATE, city VARCHAR(20)) ENGINE=InnoDB;
         CREATE TABLE shop.orders (id INT PRIMARY KEY, customer_email VARCHAR(100) NOT NULL, amount INT,
                                   FOREIGN KEY (customer_email) REFERENCES shop.customers (email) ON UPDATE CASCADE)
                                   ENGINE=InnoDB;
         INSERT INTO shop.customers VALUES {};
         INSERT INTO shop.orders SELECT seq, c.email, seq FROM shop.seq_1_to_{n} o
                                 JOIN shop.customers c ON c.id = 1 + o.seq % {PEOPLE};
         {updates}
         CREATE TRIGGER shop.orders_touch BEFORE UPDATE ON shop.orders FOR EACH ROW SET NEW.amount = NEW.amount;
         CREATE VIEW shop.big_orders AS SELECT id, amount FROM shop.orders WHERE amount > 1000;
         CREATE FUNCTION shop.answer() RETURNS INT DETERMINISTIC RETURN 42;
         CREATE USER 'app'@'%' IDENTIFIED BY 'app-pw';
         GRANT SELECT ON shop.* TO 'app'@'%';
         ANALYZE TABLE shop.customers PERSISTENT FOR ALL;",
        rows.join(", "),
        n = PEOPLE * 3,
        updates = (1..=PEOPLE)
            .map(|i| format!("UPDATE shop.customers SET email = '{}' WHERE id = {i};", email(i)))
            .collect::<Vec<_>>()
            .join("\n")
    ));
    assert_eq!(
        source.sql("SELECT COUNT(*) FROM shop.orders o JOIN shop.customers c ON c.email = o.customer_email"),
        (PEOPLE * 3).to_string()
    );
    let cities = source.sql("SELECT GROUP_CONCAT(city ORDER BY city) FROM shop.customers");
    let placed = source.sql("SELECT GROUP_CONCAT(city ORDER BY id) FROM shop.customers");
    let mut originals: Vec<String> = (1..=PEOPLE)
        .step_by(7)
        .flat_map(|i| {
            let notes = source.sql(&format!("SELECT MD5('notes{i}')"));
            [email(i), real_name(i), notes, old_email(i)]
        })
        .collect();
    // The greatest email, which the column statistics keep.
    originals.push(source.sql("SELECT MAX(email) FROM shop.customers"));
    source.stop();
    // The originals are in the source's files, so the search would find them.
    assert!(search(&source.data, &originals[..3]).is_some(), "the byte search finds nothing even in the source");
    assert!(
        search(&source.data.join("mysql"), &originals[originals.len() - 1..]).is_some(),
        "the column statistics hold no value to find"
    );

    eprintln!("the source was made in {} ms", test_started.elapsed().as_millis());
    let d = Daemon::start(&w.join("data"), (9300, 9309));
    let src = source.data.to_str().unwrap();
    let rules = w.join("rules.toml");
    fs::write(
        &rules,
        r#"
[[rule]]
table = "shop.customers"
column = "email"
strategy = "email"

[[rule]]
table = "shop.orders"
column = "customer_email"
strategy = "email"

[[rule]]
table = "shop.customers"
column = "name"
strategy = "name"

[[rule]]
table = "shop.customers"
column = "notes"
strategy = "redact"

[[rule]]
table = "shop.customers"
column = "born"
strategy = "date_shift"
days = 30

[[rule]]
table = "shop.customers"
column = "city"
strategy = "shuffle"
"#,
    )
    .unwrap();
    let script = w.join("add-table.sql");
    fs::write(&script, "CREATE TABLE shop.made_by_script AS SELECT 42 AS answer;\nSELECT 'script ran';\n").unwrap();

    let started = std::time::Instant::now();
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
    eprintln!("the masked image was made in {} ms", started.elapsed().as_millis());
    assert_eq!(image.status, ImageStatus::Ready, "{image:?}");
    assert_eq!((image.engine.as_str(), image.mask.len()), ("mariadb", 6));
    let report = image.report.clone().expect("a masked image has a report");
    let rows_of = |table: &str, column: &str| {
        report.masked.iter().find(|m| m.table == table && m.column == column).map(|m| m.rows)
    };
    assert_eq!(rows_of("shop.customers", "email"), Some(u64::from(PEOPLE)));
    assert_eq!(rows_of("shop.orders", "customer_email"), Some(u64::from(PEOPLE * 3)));
    assert_eq!(rows_of("shop.customers", "city"), Some(u64::from(PEOPLE)));
    assert!(report.values_checked > 0, "{report:?}");
    assert!(report.scripts[0].output.contains("script ran"), "{report:?}");

    // Not one original value in any file of the image: tablespaces, undo, redo log,
    // doublewrite buffer, Aria's log, statistics.
    let image_dir = d.data_dir.join("images/masked");
    if let Some((file, value)) = search(&image_dir, &originals) {
        panic!("{value:?} is still in {}", file.display());
    }

    // Through SQL: masked, joins match, constraints hold, the script's table, the accounts,
    // the trigger, the view and the function are there.
    let c: Clone = d.ok(&["clone", "create", "m", "--image", "masked"]);
    let q = |sql: &str| query(c.url(), sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    let people = PEOPLE.to_string();
    assert_eq!(q("SELECT COUNT(*) FROM shop.customers WHERE email LIKE '%@corp.example'"), "0");
    assert_eq!(q("SELECT COUNT(*) FROM shop.customers WHERE email LIKE 'user.%@example.com'"), people);
    assert_eq!(q("SELECT COUNT(DISTINCT email) FROM shop.customers"), people, "unique values stay unique");
    assert_eq!(
        q("SELECT COUNT(*) FROM shop.orders o JOIN shop.customers c ON c.email = o.customer_email"),
        (PEOPLE * 3).to_string(),
        "every order still finds its customer"
    );
    assert_eq!(q("SELECT COUNT(*) FROM shop.customers WHERE name LIKE 'Realname%'"), "0");
    assert_eq!(q("SELECT COUNT(*) FROM shop.customers WHERE notes REGEXP '[^x]'"), "0");
    assert_eq!(
        q("SELECT COUNT(*) FROM shop.customers WHERE born BETWEEN DATE('1970-01-01') + INTERVAL id - 30 DAY \
           AND DATE('1970-01-01') + INTERVAL id + 30 DAY"),
        people,
        "dates move within 30 days"
    );
    assert_eq!(q("SELECT GROUP_CONCAT(city ORDER BY city) FROM shop.customers"), cities, "shuffle keeps the values");
    assert_ne!(q("SELECT GROUP_CONCAT(city ORDER BY id) FROM shop.customers"), placed, "shuffle moves them");
    assert_eq!(q("SELECT answer FROM shop.made_by_script"), "42");
    assert_eq!(q("SELECT shop.answer()"), "42");
    assert_eq!(q("SELECT COUNT(*) FROM information_schema.TRIGGERS WHERE TRIGGER_NAME = 'orders_touch'"), "1");
    assert_eq!(q("SELECT COUNT(*) FROM shop.big_orders"), (PEOPLE * 3 - 1000).to_string());
    let dup = query(c.url(), "INSERT INTO shop.customers (id, email) SELECT 100000, email FROM shop.customers LIMIT 1");
    assert!(dup.unwrap_err().contains("Duplicate entry"), "the unique index is there");
    let orphan = query(c.url(), "INSERT INTO shop.orders VALUES (100000, 'nobody@example.com', 1)").unwrap_err();
    assert!(orphan.contains("foreign key constraint fails"), "{orphan}");
    // The source's account logs in with its own password and sees what it was granted.
    let app =
        c.url().replacen(&format!("root:{}@", url::Url::parse(c.url()).unwrap().password().unwrap()), "app:app-pw@", 1);
    assert_eq!(query(&app, "SELECT COUNT(*) FROM shop.customers").unwrap(), people);
    assert!(query(&app, "DELETE FROM shop.orders").is_err(), "app was given SELECT only");
    d.ok::<Operation>(&["clone", "rm", "m"]);

    // Fails closed: a rule naming a missing column, a failing script, and a copy of masked
    // columns that no rule names (the byte search finds the originals).
    check_fails_closed(&d, w, src, &rules, "shop", "no column ssn");
    // No masking dump is left in a run directory.
    let left: Vec<_> = support::residue::files(&d.data_dir)
        .into_iter()
        .filter(|f| f.file_name().is_some_and(|n| n.to_string_lossy().starts_with("thinclone-")))
        .collect();
    assert!(left.is_empty(), "masking dumps left: {left:?}");

    d.ok::<Operation>(&["image", "rm", "masked"]);
}
