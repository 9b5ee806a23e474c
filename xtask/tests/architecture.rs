//! The Architecture Invariants of ARCHITECTURE.md that a machine can check, checked over the
//! source tree:
//!
//! - only the server crate knows HTTP routes (and only it depends on an HTTP framework);
//! - only engine crates name a database engine (the binary's registry of engines aside);
//! - only the process crate (`sys`) spawns programs;
//! - the server's stored rows are not API types;
//! - no test skips itself and passes when something it needs is missing.

use std::fs;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(dir) = todo.pop() {
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The library and binary sources of a crate (not its tests or benchmarks).
fn sources(krate: &str) -> Vec<PathBuf> {
    rust_files(&root().join("crates").join(krate).join("src"))
}

fn crates() -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(root().join("crates"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Lines of `files` that match `bad`, as `path:line: text`.
fn offending(files: &[PathBuf], bad: impl Fn(&str) -> bool) -> Vec<String> {
    let mut found = Vec::new();
    for file in files {
        let text = fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            if bad(line) {
                let rel = file.strip_prefix(root()).unwrap_or(file);
                found.push(format!("{}:{}: {}", rel.display(), n + 1, line.trim()));
            }
        }
    }
    found
}

/// The `[dependencies]` section of a crate's manifest.
fn dependencies(krate: &str) -> String {
    let manifest = fs::read_to_string(root().join("crates").join(krate).join("Cargo.toml")).unwrap();
    let start = manifest.find("[dependencies]").map_or(manifest.len(), |i| i + "[dependencies]".len());
    let rest = &manifest[start..];
    rest[..rest.find("\n[").unwrap_or(rest.len())].to_owned()
}

/// Architecture Invariant: only the server crate knows HTTP routes. It alone depends on the
/// HTTP framework, and route paths are written nowhere but in `api::paths` and the server.
#[test]
fn only_the_server_knows_http_routes() {
    for krate in crates() {
        if krate == "server" {
            continue;
        }
        let deps = dependencies(&krate);
        for framework in ["axum", "utoipa-axum", "hyper", "tower"] {
            assert!(
                !deps.lines().any(|l| l.trim_start().starts_with(&format!("{framework} "))
                    || l.trim_start().starts_with(&format!("{framework}."))),
                "crate {krate} depends on {framework}: only the server serves HTTP"
            );
        }
        if krate == "api" {
            continue;
        }
        let found = offending(&sources(&krate), |l| l.contains("\"/v1/") && !l.trim_start().starts_with("//"));
        let found: Vec<_> = found.into_iter().filter(|l| !l.contains("/tests.rs:")).collect();
        assert!(found.is_empty(), "route paths outside api::paths and the server:\n{}", found.join("\n"));
    }
}

/// Architecture Invariant: only engine crates name a database engine. The binary's registry
/// of engines (`crates/thinclone/src/engines.rs`) is the one place that wires them in.
#[test]
fn only_engine_crates_name_a_database_engine() {
    const NAMES: [&str; 8] = ["postgres", "psql", "pg_", "pgbench", "mariadb", "mysql", "innodb", "mariadbd"];
    let mut found = Vec::new();
    for krate in crates() {
        if krate.starts_with("engine-") {
            continue;
        }
        let files: Vec<PathBuf> =
            sources(&krate).into_iter().filter(|f| !f.ends_with("thinclone/src/engines.rs")).collect();
        found.extend(offending(&files, |l| {
            let l = l.to_lowercase();
            NAMES.iter().any(|n| l.contains(n))
        }));
    }
    assert!(found.is_empty(), "engine names outside the engine crates:\n{}", found.join("\n"));
}

/// Architecture Invariant: only the process crate spawns programs: everything else starts
/// them through `sys::Program`.
#[test]
fn only_sys_spawns_programs() {
    let mut files = rust_files(&root().join("xtask/src"));
    for krate in crates() {
        if krate != "sys" {
            files.extend(sources(&krate));
        }
    }
    let found = offending(&files, |l| {
        let code = l.split("//").next().unwrap_or("");
        code.contains("Command::new") || code.contains("process::Command") || code.contains("libc::fork")
    });
    assert!(found.is_empty(), "programs started outside sys::Program:\n{}", found.join("\n"));
}

/// Architecture Invariant: the catalog's rows are not API types. The catalog names none of
/// the wire types that answers carry, and its rows cannot be serialized as they are.
#[test]
fn stored_rows_are_not_api_types() {
    let catalog = root().join("crates/server/src/catalog.rs");
    let found = offending(&[catalog], |l| {
        ["api::Image", "api::Clone", "api::Operation", "Serialize", "ToSchema"]
            .iter()
            .any(|t| l.contains(t) && !l.contains("api::ImageStatus") && !l.contains("api::CloneStatus"))
    });
    assert!(found.is_empty(), "the catalog uses wire types for its rows:\n{}", found.join("\n"));
    let api = rust_files(&root().join("crates/api/src"));
    let found = offending(&api, |l| l.contains("rusqlite"));
    assert!(found.is_empty(), "the wire types know the catalog's database:\n{}", found.join("\n"));
}

/// A test that cannot run must fail, not pass: no test prints that it skipped and returns.
#[test]
fn no_test_skips_itself_silently() {
    let mut files = rust_files(&root().join("xtask"));
    for krate in crates() {
        files.extend(rust_files(&root().join("crates").join(&krate)));
    }
    let me = Path::new(file!()).file_name().unwrap().to_owned();
    let files: Vec<PathBuf> = files.into_iter().filter(|f| f.file_name() != Some(me.as_os_str())).collect();
    let found = offending(&files, |l| l.contains("skipped") && (l.contains("eprintln!") || l.contains("println!")));
    assert!(found.is_empty(), "tests that skip themselves:\n{}", found.join("\n"));
}
