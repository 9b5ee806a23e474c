//! The byte-level residue check of masking: every file under a directory searched for the
//! original values (the agent does the same on its own before an image is sealed; the tests
//! check again, independently).

use std::fs;
use std::path::{Path, PathBuf};

/// Every file under `dir`.
pub fn files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                found.push(entry.path());
            }
        }
    }
    found
}

/// The first (file, value) of `values` found anywhere in the bytes of a file under `dir`.
pub fn search(dir: &Path, values: &[String]) -> Option<(PathBuf, String)> {
    let finder = aho_corasick::AhoCorasick::new(values).unwrap();
    for file in files(dir) {
        let bytes = fs::read(&file).unwrap();
        if let Some(found) = finder.find(&bytes) {
            return Some((file, values[found.pattern().as_usize()].clone()));
        }
    }
    None
}

/// Makes image `name` with `args` after `image create NAME`, which must fail with a message
/// containing `expected`, and checks that it failed closed: the image is `failed`, none of
/// its files is left, no clone can be made of it. Then removes it.
pub fn expect_failed_image(d: &super::daemon::Daemon, name: &str, args: &[&str], expected: &str) {
    let mut all = vec!["image", "create", name];
    all.extend(args);
    let started = std::time::Instant::now();
    let err = d.cli::<serde_json::Value>(&all).unwrap_err();
    eprintln!("{name} failed in {} ms", started.elapsed().as_millis());
    assert!(err.contains(expected), "{name}: {err}");
    let failed: api::Image = d.ok(&["image", "show", name]);
    assert_eq!(failed.status, api::ImageStatus::Failed, "{failed:?}");
    let images = d.data_dir.join("images");
    assert!(!images.join(name).exists() && !images.join(format!("{name}.partial")).exists(), "{name} left files");
    let refused = d.cli::<serde_json::Value>(&["clone", "create", &format!("{name}-c"), "--image", name]).unwrap_err();
    assert!(refused.contains("not ready"), "{refused}");
    d.ok::<api::Operation>(&["image", "rm", name]);
}

/// The three ways an image of the source at `src` (`--from-dir`) must fail closed, whatever
/// its engine: a rule naming a missing column of `{schema}.customers` (with `no_column` in
/// the message), a failing script, and a copy of masked columns into a table no rule names
/// (which the byte search of the image finds, with `rules` the masking rules). Their files
/// are written into `work`.
pub fn check_fails_closed(
    d: &super::daemon::Daemon,
    work: &Path,
    src: &str,
    rules: &Path,
    schema: &str,
    no_column: &str,
) {
    let missing = work.join("missing.toml");
    fs::write(&missing, format!("[[rule]]\ntable = \"{schema}.customers\"\ncolumn = \"ssn\"\nstrategy = \"hash\"\n"))
        .unwrap();
    let failing = work.join("failing.sql");
    fs::write(&failing, "SELECT 1;\nSELECT no_such_function();\n").unwrap();
    let leak = work.join("leak.sql");
    fs::write(&leak, format!("CREATE TABLE {schema}.leaked AS SELECT email, name FROM {schema}.customers;\n")).unwrap();
    for (name, args, expected) in [
        (
            "leaky",
            ["--mask", rules.to_str().unwrap(), "--script", leak.to_str().unwrap()].as_slice(),
            "masking left an original value",
        ),
        ("nocolumn", ["--mask", missing.to_str().unwrap()].as_slice(), no_column),
        ("badscript", ["--script", failing.to_str().unwrap()].as_slice(), "modification script failing.sql"),
    ] {
        let mut all = vec!["--from-dir", src];
        all.extend(args);
        expect_failed_image(d, name, &all, expected);
    }
}
