//! Facts about a PostgreSQL data directory, read from its files.

use std::fs;
use std::path::Path;

use crate::{Error, Result};

/// The major version a data directory was made by, from its `PG_VERSION` file.
pub fn data_dir_version(dir: &Path) -> Result<u32> {
    let text = fs::read_to_string(dir.join("PG_VERSION")).map_err(|_| Error::NotADataDir(dir.to_owned()))?;
    // "15" for 10 and later; "9.6" for older servers, which count as their first number.
    text.trim().split('.').next().and_then(|v| v.parse().ok()).ok_or_else(|| Error::NotADataDir(dir.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pg_version() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(data_dir_version(dir.path()), Err(Error::NotADataDir(_))));
        fs::write(dir.path().join("PG_VERSION"), "15\n").unwrap();
        assert_eq!(data_dir_version(dir.path()).unwrap(), 15);
    }
}
