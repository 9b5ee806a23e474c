//! An image's modification scripts and masking on MariaDB (doc/MASKING.md).
//!
//! Order: a server starts on the copy (as for `prepare`: no network, no grant tables, then
//! `root@localhost` made the agent's way in), the scripts run, each in its database, the first
//! error failing the image. Without masking rules, that is all: `prepare` follows.
//!
//! With masking rules, each rule's table and column are checked, a sample of the original
//! values is kept, and the columns are rewritten with `UPDATE`s, foreign-key checks off, so
//! that a key and the keys that refer to it, masked by the same deterministic rule, still
//! match. Then the copy is **replaced by a new data directory holding the same databases**:
//! InnoDB keeps what a row held in places no statement rewrites (undo records in the system
//! tablespace, freed but not zeroed after purge; the doublewrite buffer; the change buffer;
//! the redo log; the free space of pages), and so may Aria's log, a binary log and the
//! persistent column statistics (`mysql.column_stats` holds minimum and maximum values). No
//! setting clears all of them. So the databases are dumped with `mariadb-dump` (data,
//! routines, triggers), with the rows of the `mysql` tables that hold accounts, privileges,
//! events, functions, plugins, servers and time zones; the copy's files are removed;
//! `mariadb-install-db` makes a new data directory in their place; and the dump is loaded into
//! it. The new directory's files were only ever written with masked values. The dump files,
//! in the run directory, are removed whatever happens. The caller then looks for the sample
//! in every file of the sealed image.
//!
//! Limits: MariaDB cannot turn triggers off for a session, so a masked table's `UPDATE`
//! triggers fire; one that copies the old value elsewhere makes the residue check fail the
//! image (drop it in a modification script first). `shuffle` needs a primary key. A reload
//! takes as long as a dump and a restore of the whole database.

use std::fs;
use std::path::Path;
use std::time::Duration;

use api::agent::ImageTransform;
use api::{MaskRule, MaskStrategy, MaskedColumn, ScriptOutput, TransformReport};
use engine::mask::{cut_output, FIRST_NAMES, LAST_NAMES, MIN_NEEDLE, SAMPLE};
use engine::{Error, ImageFacts, InstanceSpec, Result, Transformed, User};
use sys::Program;

use crate::datadir::{self, live_server};
use crate::install::{Installation, Search};
use crate::prepare::{self, remove_if_there};
use crate::server::{self, from_hex, hex_names, quote_ident, sql_literal, Role, Server};

/// How long a script, a rule, a dump or a load may take.
const LONG: Duration = Duration::from_secs(24 * 3600);
/// The dump of the masked databases, in the run directory while it is needed.
const DUMP: &str = "thinclone-masked.sql";
/// The dump of the `mysql` tables carried over.
const SYSTEM_DUMP: &str = "thinclone-system.sql";
/// The tables of the `mysql` schema whose rows a masked image keeps: accounts and
/// privileges, events, functions, plugins, federated servers and time zones. (Routines come
/// with their databases' dump. Not the statistics tables: they hold column values.)
const SYSTEM_TABLES: [&str; 16] = [
    "global_priv",
    "db",
    "tables_priv",
    "columns_priv",
    "procs_priv",
    "proxies_priv",
    "roles_mapping",
    "event",
    "func",
    "plugin",
    "servers",
    "time_zone",
    "time_zone_name",
    "time_zone_transition",
    "time_zone_transition_type",
    "time_zone_leap_second",
];
/// The first seven: the accounts the new directory was made with are removed before the
/// source's go in.
const ACCOUNT_TABLES: usize = 7;

/// The database and table a rule names: `shop.customers` (a database is what MariaDB has for
/// a schema). A `database` given beside it must be the same.
fn target(rule: &MaskRule) -> Result<(String, String)> {
    let what = format!("masking rule {}.{}", rule.table, rule.column);
    let (db, table) = match rule.table.split_once('.') {
        Some((db, table)) if !db.is_empty() && !table.is_empty() => (db, table),
        _ => {
            return Err(Error::Other(format!(
                "{what}: the table must be qualified by its database, like shop.customers"
            )))
        }
    };
    if let Some(database) = rule.database.as_deref().filter(|d| *d != db) {
        return Err(Error::Other(format!(
            "{what}: the table is in database {db}, but the rule's `database` says {database}; leave `database` out"
        )));
    }
    Ok((db.to_owned(), table.to_owned()))
}

fn qualified(db: &str, table: &str) -> String {
    format!("{}.{}", quote_ident(db), quote_ident(table))
}

/// The keyed hash of the column's text, as 64 hex digits: `sha2(secret || value)`.
fn keyed(secret: &str, col: &str) -> String {
    format!("SHA2(CONCAT({}, CAST({col} AS CHAR)), 256)", sql_literal(secret))
}

/// Byte `i` of the keyed hash, as a number.
fn byte(h: &str, i: usize) -> String {
    format!("CONV(SUBSTRING({h}, {}, 2), 16, 10)", 2 * i + 1)
}

/// The expression that replaces column `col` (quoted) under `rule`, or `None` for shuffle.
fn replacement(rule: &MaskRule, col: &str, secret: &str) -> Result<Option<String>> {
    let h = keyed(secret, col);
    let names = |list: &[&str]| list.iter().map(|n| sql_literal(n)).collect::<Vec<_>>().join(", ");
    Ok(Some(match rule.strategy {
        MaskStrategy::Email => format!("CONCAT('user.', LEFT({h}, 16), '@example.com')"),
        MaskStrategy::Name => format!(
            "CONCAT(ELT(1 + {} % {n}, {}), ' ', ELT(1 + {} % {n}, {}), ' ', UPPER(SUBSTRING({h}, 5, 4)))",
            byte(&h, 0),
            names(&FIRST_NAMES),
            byte(&h, 1),
            names(&LAST_NAMES),
            n = FIRST_NAMES.len()
        ),
        MaskStrategy::Phone => format!("CONCAT('+1-555-', LPAD(CONV(LEFT({h}, 6), 16, 10) % 10000000, 7, '0'))"),
        MaskStrategy::Hash => h,
        MaskStrategy::Redact => format!("REPEAT('x', CHAR_LENGTH({col}))"),
        MaskStrategy::Null => "NULL".to_owned(),
        MaskStrategy::Constant => match &rule.value {
            Some(v) => sql_literal(v),
            None => {
                return Err(Error::Other(format!(
                    "masking rule {}.{}: constant needs `value`",
                    rule.table, rule.column
                )))
            }
        },
        MaskStrategy::DateShift => {
            let days = rule.days.filter(|&d| d > 0).ok_or_else(|| {
                Error::Other(format!(
                    "masking rule {}.{}: date_shift needs `days` (1 or more)",
                    rule.table, rule.column
                ))
            })?;
            let span = 2 * i64::from(days) + 1;
            format!("{col} + INTERVAL (CONV(LEFT({h}, 4), 16, 10) % {span} - {days}) DAY")
        }
        MaskStrategy::Shuffle => return Ok(None),
    }))
}

/// The statements that shuffle column `col` of `table` (both quoted): row i in the order of
/// its key's keyed hash takes the value of row i in key order. `key` is the primary key's
/// columns, quoted.
fn shuffle_sql(table: &str, col: &str, key: &[String], secret: &str) -> String {
    let key_list = key.join(", ");
    let key_text = format!("CONCAT_WS(0x1f, {key_list})");
    let joined = key.iter().map(|k| format!("t.{k} <=> d.{k}")).collect::<Vec<_>>().join(" AND ");
    format!(
        "CREATE TEMPORARY TABLE thinclone_src (n BIGINT PRIMARY KEY) \
           SELECT ROW_NUMBER() OVER (ORDER BY {key_list}) AS n, {col} AS v FROM {table};\n\
         CREATE TEMPORARY TABLE thinclone_dst (n BIGINT PRIMARY KEY) \
           SELECT ROW_NUMBER() OVER (ORDER BY {h}, {key_list}) AS n, {key_list} FROM {table};\n\
         UPDATE {table} t JOIN thinclone_dst d ON {joined} JOIN thinclone_src s ON s.n = d.n SET t.{col} = s.v;\n\
         DROP TEMPORARY TABLE thinclone_src, thinclone_dst;\n",
        h = keyed(secret, &key_text),
    )
}

/// The statements that mask one column (foreign-key checks off for the session).
fn mask_sql(server: &Server, rule: &MaskRule, db: &str, table: &str, secret: &str) -> Result<String> {
    let full = qualified(db, table);
    let col = quote_ident(&rule.column);
    let body = match replacement(rule, &col, secret)? {
        Some(expr) => format!("UPDATE {full} SET {col} = {expr} WHERE {col} IS NOT NULL;\n"),
        None => {
            let key = server.sql_in(
                None,
                &format!(
                    "SELECT HEX(COLUMN_NAME) FROM information_schema.KEY_COLUMN_USAGE \
                     WHERE TABLE_SCHEMA = {} AND TABLE_NAME = {} AND CONSTRAINT_NAME = 'PRIMARY' \
                     ORDER BY ORDINAL_POSITION",
                    sql_literal(db),
                    sql_literal(table)
                ),
            )?;
            let key = hex_names(&key, "a column name")?;
            if key.is_empty() {
                return Err(Error::Other(format!(
                    "masking rule {}.{}: shuffle needs a primary key on {}.{}",
                    rule.table, rule.column, db, table
                )));
            }
            let key: Vec<String> = key.iter().map(|k| quote_ident(k)).collect();
            shuffle_sql(&full, &col, &key, secret)
        }
    };
    Ok(format!("SET SESSION foreign_key_checks = 0;\n{body}"))
}

/// Prepares the copy at `data_dir` with `transform` applied: see the module's comment.
pub(crate) fn prepare_with(
    search: &Search,
    data_dir: &Path,
    run_dir: &Path,
    user: &User,
    transform: &ImageTransform,
    secret: &str,
) -> Result<(ImageFacts, Transformed)> {
    if transform.is_empty() {
        return Ok((prepare::prepare(search, data_dir, run_dir, user)?, Transformed::default()));
    }
    // Rules that cannot run are refused before anything starts.
    let targets: Vec<(String, String)> = transform.mask.iter().map(target).collect::<Result<_>>()?;
    for rule in &transform.mask {
        replacement(rule, "c", secret)?;
    }
    let version = datadir::detect(data_dir)?;
    let installation = search.find(&version)?;
    if !transform.mask.is_empty() {
        installation.require("mariadb-dump", "mariadb-client")?;
        installation.require("mariadb-install-db", "mariadb-server")?;
    }
    if let Some(pid) = live_server(data_dir) {
        return Err(datadir::in_use_error(data_dir, pid));
    }
    prepare::remove_leftovers(data_dir)?;
    let spec = prepare::prepare_spec(&version, data_dir, run_dir, user);
    let result = transform_copy(&installation, &spec, transform, &targets, secret);
    for name in [DUMP, SYSTEM_DUMP] {
        if let Err(e) = remove_if_there(&run_dir.join(name)) {
            tracing::warn!(run_dir = %run_dir.display(), "removing the masking dump {name}: {e}");
        }
    }
    let transformed = result.map_err(|e| disk_full(e, data_dir))?;
    Ok((prepare::prepare(search, data_dir, run_dir, user)?, transformed))
}

/// A failure for want of space, said so.
fn disk_full(e: Error, data_dir: &Path) -> Error {
    let text = e.to_string();
    if e.is_disk_full() || text.contains("No space left on device") || text.contains("Errcode: 28") {
        Error::DiskFull { what: format!("masking the image {}", data_dir.display()), detail: text }
    } else {
        e
    }
}

fn transform_copy(
    installation: &Installation,
    spec: &InstanceSpec,
    transform: &ImageTransform,
    targets: &[(String, String)],
    secret: &str,
) -> Result<Transformed> {
    let mut report = TransformReport::default();
    let server = server::start_as(installation, spec, prepare::RECOVERY_TIMEOUT, Role::Prepare)?;
    // Grant tables loaded and `root@localhost` let in over the socket, so that scripts may
    // change accounts and each client after this one gets in.
    server.sql_in(None, &prepare::root_sql())?;
    for script in &transform.scripts {
        let output = server
            .sql_for(script.database.as_deref(), &script.sql, LONG)
            .map_err(|e| Error::Other(format!("modification script {}: {e}", script.name)))?;
        report.scripts.push(ScriptOutput { name: script.name.clone(), output: cut_output(output) });
    }
    if transform.mask.is_empty() {
        server.stop_within(prepare::SHUTDOWN_TIMEOUT)?;
        return Ok(Transformed { report, originals: Vec::new() });
    }
    let mut originals = Vec::new();
    for (rule, (db, table)) in transform.mask.iter().zip(targets) {
        let what = format!("masking rule {}.{}", rule.table, rule.column);
        let exists = server.sql_in(
            None,
            &format!(
                "SELECT COUNT(*) FROM information_schema.COLUMNS c JOIN information_schema.TABLES t \
                   ON t.TABLE_SCHEMA = c.TABLE_SCHEMA AND t.TABLE_NAME = c.TABLE_NAME \
                 WHERE c.TABLE_SCHEMA = {} AND c.TABLE_NAME = {} AND c.COLUMN_NAME = {} AND t.TABLE_TYPE = 'BASE TABLE'",
                sql_literal(db),
                sql_literal(table),
                sql_literal(&rule.column)
            ),
        )?;
        if exists.trim() != "1" {
            return Err(Error::Other(format!("{what}: no column {} in table {db}.{table}", rule.column)));
        }
        // The sample first, as stored (hex, so any value reads back exactly).
        let col = quote_ident(&rule.column);
        let sample = server.sql_in(
            None,
            &format!(
                "SELECT HEX(v) FROM (SELECT DISTINCT {col} AS v FROM {t} \
                 WHERE {col} IS NOT NULL AND LENGTH({col}) >= {MIN_NEEDLE} LIMIT {SAMPLE}) s",
                t = qualified(db, table)
            ),
        )?;
        originals.extend(sample.lines().filter_map(|hex| from_hex(hex.trim())));
    }
    for (rule, (db, table)) in transform.mask.iter().zip(targets) {
        let what = format!("masking rule {}.{}", rule.table, rule.column);
        let count = if rule.strategy == MaskStrategy::Shuffle {
            format!("SELECT COUNT(*) FROM {}", qualified(db, table))
        } else {
            format!(
                "SELECT COUNT(*) FROM {} WHERE {c} IS NOT NULL",
                qualified(db, table),
                c = quote_ident(&rule.column)
            )
        };
        let rows: u64 = server
            .sql_in(None, &count)?
            .trim()
            .parse()
            .map_err(|_| Error::Other(format!("{what}: the client printed no row count")))?;
        let sql = mask_sql(&server, rule, db, table, secret)?;
        // In its database: the shuffle's temporary tables are made there.
        server.sql_for(Some(db), &sql, LONG).map_err(|e| Error::Other(format!("{what}: {e}")))?;
        report.masked.push(MaskedColumn { table: rule.table.clone(), column: rule.column.clone(), rows });
    }

    // The databases and the `mysql` rows, dumped.
    let databases = server.user_databases()?;
    let dump = spec.run_dir.join(DUMP);
    let system_dump = spec.run_dir.join(SYSTEM_DUMP);
    if !databases.is_empty() {
        let mut args: Vec<String> = ["--routines", "--triggers", "--databases"].map(String::from).to_vec();
        args.extend(databases);
        server.dump(&args, &dump, LONG).map_err(|e| Error::Other(format!("dumping the masked databases: {e}")))?;
    }
    let mut args: Vec<String> =
        ["--no-create-info", "--skip-triggers", "--replace", "mysql"].map(String::from).to_vec();
    args.extend(SYSTEM_TABLES.map(String::from));
    server.dump(&args, &system_dump, LONG).map_err(|e| Error::Other(format!("dumping the accounts: {e}")))?;
    server.stop_within(prepare::SHUTDOWN_TIMEOUT)?;

    // The copy's files go; a new data directory takes their place.
    for entry in fs::read_dir(&spec.data_dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            sys::tree::remove(&entry.path())?;
        } else {
            fs::remove_file(entry.path())?;
        }
    }
    Program::new(installation.program("mariadb-install-db"))
        .args(["--no-defaults", "--skip-test-db", "--auth-root-authentication-method=socket"])
        .arg(format!("--datadir={}", spec.data_dir.display()))
        .arg(format!("--tmpdir={}", spec.run_dir.display()))
        .user(&spec.user)
        .cwd(&spec.run_dir)
        .timeout(LONG)
        .run()
        .map_err(|e| Error::Other(format!("making a new data directory for the masked image: {e}")))?;
    let server = server::start_as(installation, spec, prepare::RECOVERY_TIMEOUT, Role::Prepare)?;
    let mut clear = String::from("USE mysql;\n");
    for table in &SYSTEM_TABLES[..ACCOUNT_TABLES] {
        clear.push_str(&format!("DELETE FROM {};\n", quote_ident(table)));
    }
    server.sql_in(None, &clear)?;
    server
        .sql_file(&system_dump, LONG, Some("mysql"))
        .map_err(|e| Error::Other(format!("loading the accounts: {e}")))?;
    if dump.exists() {
        server.sql_file(&dump, LONG, None).map_err(|e| Error::Other(format!("loading the masked databases: {e}")))?;
    }
    server.stop_within(prepare::SHUTDOWN_TIMEOUT)?;
    Ok(Transformed { report, originals })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(table: &str, strategy: MaskStrategy) -> MaskRule {
        MaskRule {
            table: table.into(),
            column: "email".into(),
            strategy,
            database: None,
            value: Some("x".into()),
            days: Some(3),
        }
    }

    #[test]
    fn rules_name_their_database() {
        assert_eq!(target(&rule("shop.people", MaskStrategy::Email)).unwrap(), ("shop".into(), "people".into()));
        let err = target(&rule("people", MaskStrategy::Email)).unwrap_err();
        assert!(err.to_string().contains("like shop.customers"), "{err}");
        let mut other = rule("shop.people", MaskStrategy::Email);
        other.database = Some("crm".into());
        assert!(target(&other).unwrap_err().to_string().contains("leave `database` out"));
        other.database = Some("shop".into());
        target(&other).unwrap();
        assert_eq!(qualified("a`b", "c"), "`a``b`.`c`");
    }

    #[test]
    fn every_strategy_has_an_expression() {
        let mut no_value = rule("shop.people", MaskStrategy::Constant);
        no_value.value = None;
        assert!(replacement(&no_value, "`c`", "k").unwrap_err().to_string().contains("needs `value`"));
        let mut no_days = rule("shop.people", MaskStrategy::DateShift);
        no_days.days = None;
        assert!(replacement(&no_days, "`c`", "k").unwrap_err().to_string().contains("needs `days`"));
        let email = replacement(&rule("shop.people", MaskStrategy::Email), "`c`", "it's").unwrap().unwrap();
        assert!(email.contains("SHA2(CONCAT('it\\'s', CAST(`c` AS CHAR)), 256)"), "{email}");
        assert!(replacement(&rule("shop.people", MaskStrategy::Shuffle), "`c`", "k").unwrap().is_none());
        let shuffle = shuffle_sql("`s`.`t`", "`c`", &["`id`".into()], "k");
        assert!(shuffle.contains("t.`id` <=> d.`id`") && shuffle.contains("DROP TEMPORARY TABLE"), "{shuffle}");
    }
}
