//! The registry of database engines: the one file of this crate that names an engine.
//! Everything else takes an [`Engine`] from here, by its id, and knows nothing of which it is.

use std::sync::Arc;

use engine::Engine;

/// The id of the engine used when none is given.
pub const DEFAULT: &str = "postgresql";

/// Every engine this build of thinclone supports.
pub fn all() -> Vec<Arc<dyn Engine>> {
    vec![engine_pg::engine(), engine_mariadb::engine()]
}

/// The engine with this id.
pub fn by_id(id: &str) -> Option<Arc<dyn Engine>> {
    all().into_iter().find(|e| e.id() == id)
}

/// The ids of every engine, for `--engine`'s choices.
pub fn ids() -> Vec<&'static str> {
    all().iter().map(|e| e.id()).collect()
}

/// The OS user an engine's servers run as when thinclone runs as root (database servers
/// refuse to run as root): the user the engine's packages create.
pub fn service_user(engine: &dyn Engine) -> Option<&'static str> {
    match engine.id() {
        "postgresql" => Some("postgres"),
        "mariadb" => Some("mysql"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;

    #[test]
    fn every_engine_is_registered_with_its_service_user() {
        assert_eq!(ids(), ["postgresql", "mariadb"]);
        for engine in all() {
            assert!(service_user(engine.as_ref()).is_some(), "{}", engine.id());
        }
    }

    #[test]
    fn the_default_engine_is_registered() {
        let engine = by_id(DEFAULT).expect("the default engine");
        assert_eq!(engine.id(), DEFAULT);
        assert!(ids().contains(&DEFAULT));
        assert!(service_user(engine.as_ref()).is_some());
        assert!(by_id("no-such-engine").is_none());
    }

    /// Architecture Invariant: only engine crates name a database engine. In this crate the
    /// registry is the one exception.
    #[test]
    fn no_other_file_of_this_crate_names_an_engine() {
        fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(&path, files);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    files.push(path);
                }
            }
        }
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        walk(&src, &mut files);
        let mut found = Vec::new();
        for file in files.iter().filter(|f| !f.ends_with("engines.rs")) {
            let text = std::fs::read_to_string(file).unwrap().to_lowercase();
            for (n, line) in text.lines().enumerate() {
                for word in
                    ["postgres", "psql", "pg_", "pg::", "pgbench", "initdb", "mariadb", "mysql", "innodb", "mariadbd"]
                {
                    if line.contains(word) {
                        found.push(format!("{}:{}: {word}", file.display(), n + 1));
                    }
                }
            }
        }
        assert!(files.len() > 3, "walked {}: {files:?}", src.display());
        assert!(found.is_empty(), "engine names outside engines.rs:\n{}", found.join("\n"));
    }
}
