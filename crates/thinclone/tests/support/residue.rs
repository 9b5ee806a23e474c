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
