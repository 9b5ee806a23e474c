//! Finding the server binaries of a PostgreSQL major version on this host.

use std::path::{Path, PathBuf};

use crate::{Error, Program, Result};

/// The server binaries of one PostgreSQL major version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installation {
    pub major: u32,
    pub bin_dir: PathBuf,
}

impl Installation {
    /// Finds the binaries of `major`: Debian's `/usr/lib/postgresql/N/bin`, the PGDG RPM
    /// layout `/usr/pgsql-N/bin`, then `pg_config --bindir` if it reports that version.
    pub fn find(major: u32) -> Result<Installation> {
        let mut searched: Vec<PathBuf> =
            vec![format!("/usr/lib/postgresql/{major}/bin").into(), format!("/usr/pgsql-{major}/bin").into()];
        for dir in &searched {
            if is_server_bin_dir(dir) {
                return Ok(Installation { major, bin_dir: dir.clone() });
            }
        }
        if let Ok(out) = Program::new("pg_config").args(["--bindir"]).run() {
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if is_server_bin_dir(&dir) && server_major(&dir) == Some(major) {
                return Ok(Installation { major, bin_dir: dir });
            }
            searched.push(dir);
        }
        Err(Error::MissingVersion { major, searched })
    }

    /// The newest version installed, whose client programs (`pg_basebackup`, `pg_isready`)
    /// work with servers of older versions too.
    pub fn newest() -> Result<Installation> {
        let mut majors: Vec<u32> = ["/usr/lib/postgresql", "/usr"]
            .iter()
            .filter_map(|dir| std::fs::read_dir(dir).ok())
            .flatten()
            .filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                name.strip_prefix("pgsql-").unwrap_or(&name).parse().ok()
            })
            .collect();
        majors.sort_unstable();
        for major in majors.into_iter().rev() {
            if let Ok(found) = Installation::find(major) {
                return Ok(found);
            }
        }
        Err(Error::MissingVersion { major: 0, searched: vec!["/usr/lib/postgresql".into(), "/usr/pgsql-*".into()] })
    }

    /// The path of one of this version's programs (`postgres`, `pg_ctl`, `psql`, …).
    pub fn program(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }
}

fn is_server_bin_dir(dir: &Path) -> bool {
    dir.join("postgres").is_file() && dir.join("pg_ctl").is_file()
}

/// The major version `postgres --version` reports, e.g. 15 for "postgres (PostgreSQL) 15.18".
fn server_major(dir: &Path) -> Option<u32> {
    let out = Program::new(dir.join("postgres")).arg("--version").run().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace().last()?.split('.').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_version_names_where_it_looked() {
        let err = Installation::find(3).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("PostgreSQL 3 is not installed") && text.contains("/usr/lib/postgresql/3/bin"), "{text}");
    }
}
