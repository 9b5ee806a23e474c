//! An image's modification scripts and masking, run on the server that prepares it
//! (doc/MASKING.md).
//!
//! Order: the scripts, each in its database, statement by statement (the first error fails
//! the image); then, database by database, one transaction that checks every rule's table and
//! column, keeps a sample of the original values, and rewrites the columns with foreign-key
//! triggers off (`session_replication_role = replica`), so that a key and the keys that
//! refer to it, masked by the same deterministic rule, still match. Then what could still hold
//! an original value is rewritten: each masked table with `VACUUM FULL` (its heap, TOAST and
//! indexes are written anew; the old files are removed), every materialized view refreshed
//! and rewritten, statistics recomputed and `pg_statistic` rewritten, and the server's own
//! logs in the data directory removed. The WAL is left to `prepare`, which keeps only the
//! segment of its final checkpoint, made after a segment switch, and zeroes it past that
//! record. The caller then looks for the sample in every file of the sealed image.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use api::agent::ImageTransform;
use api::{MaskRule, MaskStrategy, MaskedColumn, ScriptOutput, TransformReport};
use engine::{Error, Result, Transformed};

use crate::server::{sql_literal, Server};

use engine::mask::{cut_output, FIRST_NAMES, LAST_NAMES, MIN_NEEDLE, SAMPLE};

/// A quoted identifier.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `schema.table` as a quoted, qualified name; a name without a schema is refused, so that a
/// rule never depends on the search path.
fn qualified(table: &str) -> Result<String> {
    match table.split_once('.') {
        Some((schema, name)) if !schema.is_empty() && !name.is_empty() => {
            Ok(format!("{}.{}", ident(schema), ident(name)))
        }
        _ => {
            Err(Error::Other(format!("masking rule: table {table:?} must be schema-qualified, like public.customers")))
        }
    }
}

/// The keyed hash of the column's text, as bytes: `sha256(secret || value)`.
fn keyed(secret: &str, col: &str) -> String {
    format!("sha256(convert_to({} || {col}::text, 'UTF8'))", sql_literal(secret))
}

/// The expression that replaces column `col` (quoted) under `rule`, or `None` for shuffle.
fn replacement(rule: &MaskRule, col: &str, secret: &str) -> Result<Option<String>> {
    let h = keyed(secret, col);
    let names =
        |list: &[&str]| format!("(ARRAY[{}])", list.iter().map(|n| sql_literal(n)).collect::<Vec<_>>().join(","));
    Ok(Some(match rule.strategy {
        MaskStrategy::Email => format!("'user.' || substr(encode({h}, 'hex'), 1, 16) || '@example.com'"),
        MaskStrategy::Name => format!(
            "{}[1 + get_byte({h}, 0) % {n}] || ' ' || {}[1 + get_byte({h}, 1) % {n}] || ' ' || upper(substr(encode({h}, 'hex'), 3, 4))",
            names(&FIRST_NAMES),
            names(&LAST_NAMES),
            n = FIRST_NAMES.len()
        ),
        MaskStrategy::Phone => format!(
            "'+1-555-' || lpad(((get_byte({h}, 0) * 65536 + get_byte({h}, 1) * 256 + get_byte({h}, 2)) % 10000000)::text, 7, '0')"
        ),
        MaskStrategy::Hash => format!("encode({h}, 'hex')"),
        MaskStrategy::Redact => format!("repeat('x', length({col}::text))"),
        MaskStrategy::Null => "NULL".to_owned(),
        MaskStrategy::Constant => match &rule.value {
            Some(v) => sql_literal(v),
            None => return Err(Error::Other(format!("masking rule {}.{}: constant needs `value`", rule.table, rule.column))),
        },
        MaskStrategy::DateShift => {
            let days = rule.days.filter(|&d| d > 0).ok_or_else(|| {
                Error::Other(format!("masking rule {}.{}: date_shift needs `days` (1 or more)", rule.table, rule.column))
            })?;
            let span = 2 * i64::from(days) + 1;
            format!("{col} + make_interval(days => ((get_byte({h}, 0) * 256 + get_byte({h}, 1)) % {span})::int - {days})")
        }
        MaskStrategy::Shuffle => return Ok(None),
    }))
}

/// The SQL that masks one column and prints the rows it changed.
fn mask_sql(rule: &MaskRule, secret: &str) -> Result<String> {
    let table = qualified(&rule.table)?;
    let col = ident(&rule.column);
    Ok(match replacement(rule, &col, secret)? {
        Some(expr) => format!(
            "WITH changed AS (UPDATE {table} SET {col} = {expr} WHERE {col} IS NOT NULL RETURNING 1) \
             SELECT count(*) FROM changed;\n"
        ),
        // A permutation: row i (in the order of its keyed hash) takes the value of row i in
        // the table's physical order.
        None => {
            let order = keyed(secret, "ctid");
            format!(
                "WITH src AS (SELECT ctid AS id, {col} AS v, row_number() OVER (ORDER BY ctid) AS n FROM {table}), \
                      dst AS (SELECT ctid AS id, row_number() OVER (ORDER BY {order}) AS n FROM {table}), \
                      changed AS (UPDATE {table} t SET {col} = src.v FROM dst JOIN src ON src.n = dst.n \
                                  WHERE t.ctid = dst.id RETURNING 1) \
                 SELECT count(*) FROM changed;\n"
            )
        }
    })
}

/// Checks that a rule's table and column exist, failing the whole transaction otherwise.
fn check_sql(rule: &MaskRule) -> Result<String> {
    let (schema, name) = rule.table.split_once('.').unwrap_or(("", &rule.table));
    Ok(format!(
        "DO $thinclone$ BEGIN \
           IF NOT EXISTS (SELECT 1 FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
                          JOIN pg_namespace n ON n.oid = c.relnamespace \
                          WHERE n.nspname = {s} AND c.relname = {t} AND a.attname = {c} \
                            AND a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p')) THEN \
             RAISE EXCEPTION 'masking rule: no column %.% in table %', {s}, {c}, {full}; \
           END IF; \
         END $thinclone$;\n",
        s = sql_literal(schema),
        t = sql_literal(name),
        c = sql_literal(&rule.column),
        full = sql_literal(&rule.table),
    ))
}

/// Runs the scripts and the masking on `server` (the server preparing the copy at
/// `data_dir`).
pub(crate) fn apply(server: &Server, data_dir: &Path, transform: &ImageTransform, secret: &str) -> Result<Transformed> {
    let mut report = TransformReport::default();
    for script in &transform.scripts {
        let db = script.database.as_deref().unwrap_or("postgres");
        let output = server
            .script_in(db, &script.sql)
            .map_err(|e| Error::Other(format!("modification script {}: {e}", script.name)))?;
        report.scripts.push(ScriptOutput { name: script.name.clone(), output: cut_output(output) });
    }
    if transform.mask.is_empty() {
        return Ok(Transformed { report, originals: Vec::new() });
    }
    let mut by_database: BTreeMap<&str, Vec<(usize, &MaskRule)>> = BTreeMap::new();
    for (i, rule) in transform.mask.iter().enumerate() {
        by_database.entry(rule.database.as_deref().unwrap_or("postgres")).or_default().push((i, rule));
    }
    let mut rows = vec![0u64; transform.mask.len()];
    let mut originals = Vec::new();
    for (db, rules) in &by_database {
        // The sample first, in its own statement: hex, so any value reads back exactly.
        for (_, rule) in rules {
            let sql = format!(
                "{}SELECT encode(convert_to(v, 'UTF8'), 'hex') FROM (SELECT DISTINCT {c}::text AS v FROM {t} \
                               WHERE {c} IS NOT NULL AND octet_length({c}::text) >= {MIN_NEEDLE}) s LIMIT {SAMPLE};\n",
                check_sql(rule)?,
                c = ident(&rule.column),
                t = qualified(&rule.table)?
            );
            let out = server.script_in(db, &sql).map_err(|e| Error::Other(format!("masking {}: {e}", rule.table)))?;
            for hex in out.lines().filter(|l| !l.is_empty()) {
                if let Some(value) = crate::prepare::from_hex(hex) {
                    originals.push(value.into_bytes());
                }
            }
        }
        let mut sql = String::from("BEGIN;\nSET LOCAL session_replication_role = replica;\n");
        for (_, rule) in rules {
            sql.push_str(&check_sql(rule)?);
            sql.push_str(&mask_sql(rule, secret)?);
        }
        sql.push_str("COMMIT;\n");
        let out = server.script_in(db, &sql).map_err(|e| Error::Other(format!("masking database {db}: {e}")))?;
        let counts: Vec<u64> = out.lines().filter_map(|l| l.trim().parse().ok()).collect();
        if counts.len() != rules.len() {
            return Err(Error::Other(format!(
                "masking database {db}: expected {} row counts, psql printed {out:?}",
                rules.len()
            )));
        }
        for ((i, _), n) in rules.iter().zip(counts) {
            rows[*i] = n;
        }
        // What could still hold an original value is written anew.
        let mut rewrite = String::new();
        let mut tables: Vec<String> = rules.iter().map(|(_, r)| qualified(&r.table)).collect::<Result<_>>()?;
        tables.sort();
        tables.dedup();
        // Writing into a String cannot fail.
        for table in &tables {
            let _ = writeln!(rewrite, "VACUUM (FULL, ANALYZE) {table};");
        }
        rewrite.push_str(
            "DO $thinclone$ DECLARE v record; BEGIN \
               FOR v IN SELECT format('%I.%I', schemaname, matviewname) AS name FROM pg_matviews LOOP \
                 EXECUTE 'REFRESH MATERIALIZED VIEW ' || v.name; \
               END LOOP; \
             END $thinclone$;\n",
        );
        let matviews = server
            .script_in(db, "SELECT format('%I.%I', schemaname, matviewname) FROM pg_matviews;\n")
            .map_err(|e| Error::Other(format!("listing materialized views in {db}: {e}")))?;
        for view in matviews.lines().filter(|l| !l.is_empty()) {
            // As above: into a String.
            let _ = writeln!(rewrite, "VACUUM FULL {view};");
        }
        // The statistics the ANALYZE above replaced are dead rows of these catalogs now.
        rewrite.push_str("VACUUM FULL pg_catalog.pg_statistic;\nVACUUM FULL pg_catalog.pg_statistic_ext_data;\n");
        server
            .script_in(db, &rewrite)
            .map_err(|e| Error::Other(format!("rewriting the masked tables of {db}: {e}")))?;
    }
    for (rule, n) in transform.mask.iter().zip(rows) {
        report.masked.push(MaskedColumn { table: rule.table.clone(), column: rule.column.clone(), rows: n });
    }
    // The server's own logs, which may quote statements and values, do not go into a masked
    // image.
    for dir in ["log", "pg_log"] {
        let path = data_dir.join(dir);
        if path.is_dir() {
            for entry in fs::read_dir(&path)? {
                let entry = entry?;
                if entry.file_type()?.is_file() {
                    fs::remove_file(entry.path())?;
                }
            }
        }
    }
    Ok(Transformed { report, originals })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(strategy: MaskStrategy) -> MaskRule {
        MaskRule {
            table: "public.people".into(),
            column: "email".into(),
            strategy,
            database: None,
            value: Some("x".into()),
            days: Some(3),
        }
    }

    #[test]
    fn tables_must_be_schema_qualified_and_names_are_quoted() {
        assert!(qualified("people").is_err());
        assert_eq!(qualified("public.Pe\"ople").unwrap(), "\"public\".\"Pe\"\"ople\"");
        let mut no_value = rule(MaskStrategy::Constant);
        no_value.value = None;
        assert!(mask_sql(&no_value, "k").unwrap_err().to_string().contains("needs `value`"));
        let mut no_days = rule(MaskStrategy::DateShift);
        no_days.days = None;
        assert!(mask_sql(&no_days, "k").unwrap_err().to_string().contains("needs `days`"));
        for s in [MaskStrategy::Email, MaskStrategy::Shuffle, MaskStrategy::Null] {
            assert!(mask_sql(&rule(s), "k").unwrap().contains("SELECT count(*) FROM changed"));
        }
    }
}
