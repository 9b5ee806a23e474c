//! The Architecture Invariants of ARCHITECTURE.md that a machine can check, checked over the
//! source tree:
//!
//! - only the server crate knows HTTP routes (and only it depends on an HTTP framework);
//! - only engine crates name a database engine (the binary's registry of engines aside);
//! - only the process crate (`sys`) spawns programs;
//! - the server's stored rows are not API types;
//! - no test skips itself and passes when something it needs is missing (no test prints
//!   that it skipped, and no `#[test]` function returns early);
//! - the Rust version the README and scripts/install ask for is Cargo.toml's.

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
        // A dependency's name is what its line starts with, up to a space, `.` or `=`; a
        // framework's whole family counts (axum-server, hyper-util, tower-http…).
        let deps = dependencies(&krate);
        let names = deps.lines().filter_map(|l| {
            let name = l.trim_start().split([' ', '.', '=']).next()?;
            (!name.is_empty() && !name.starts_with('#')).then(|| name.to_owned())
        });
        for name in names {
            let framework = ["axum", "utoipa-axum", "hyper", "tower"].into_iter().find(|f| name.starts_with(f));
            assert!(framework.is_none(), "crate {krate} depends on {name}: only the server serves HTTP");
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
        // (clap's `Command` describes a command line; it starts nothing.)
        let code = code.replace("clap::Command::new", "");
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
    // Nor does a test end early without a word: no `return` in the body of a `#[test]`
    // function (a missing prerequisite is an assertion, as `support::pg::require` makes it).
    let mut early = Vec::new();
    for file in &files {
        let text = fs::read_to_string(file).unwrap();
        let mut depth: Option<i32> = None;
        let mut armed = false;
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if line.trim() == "#[test]" {
                armed = true;
                continue;
            }
            if armed && depth.is_none() && code.contains("fn ") {
                depth = Some(0);
                armed = false;
            }
            if let Some(d) = depth.as_mut() {
                let words: Vec<&str> = code.split(|c: char| !c.is_alphanumeric() && c != '_').collect();
                // A closure's `return` ends the closure only; those are rare enough to name.
                if words.contains(&"return") && !code.contains("|") {
                    let rel = file.strip_prefix(root()).unwrap_or(file);
                    early.push(format!("{}:{}: {}", rel.display(), n + 1, line.trim()));
                }
                *d += code.matches('{').count() as i32 - code.matches('}').count() as i32;
                if *d <= 0 && code.contains('}') {
                    depth = None;
                }
            }
        }
    }
    assert!(early.is_empty(), "tests that may end early and pass:\n{}", early.join("\n"));
}

/// What the README and scripts/install say Rust must be is what Cargo.toml asks for.
#[test]
fn the_rust_version_said_is_the_one_required() {
    let manifest = fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let required = manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("rust-version = "))
        .expect("the workspace names a rust-version")
        .trim_matches('"')
        .to_owned();
    for file in ["README.md", "scripts/install"] {
        let text = fs::read_to_string(root().join(file)).unwrap();
        let said: Vec<&str> = text
            .split("Rust ")
            .skip(1)
            .filter_map(|rest| rest.split_whitespace().next())
            .filter(|v| v.starts_with(|c: char| c.is_ascii_digit()))
            .collect();
        assert!(!said.is_empty(), "{file} does not say which Rust it needs");
        for version in said {
            assert_eq!(version, required, "{file} says Rust {version}; Cargo.toml requires {required}");
        }
    }
}
