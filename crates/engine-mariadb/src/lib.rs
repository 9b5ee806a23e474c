//! The MariaDB engine: MariaDB's implementation of [`engine::Engine`] and
//! [`engine::Instance`] (doc/ENGINE-MARIADB.md). It finds installed servers, reads data
//! directories, copies live servers with `mariadb-backup`, prepares images, and runs
//! `mariadbd` on clones' directories as their OS user, every program started through
//! [`sys::Program`].
//!
//! It knows nothing about FUSE or about how a data directory is stored: it is given
//! directories and works on them.
//!
//! - `install`: where the server and client programs are, and their version;
//! - `datadir`: a data directory's version, and whether a server runs on it;
//! - `server`: an instance's command line and run directory, start, adoption, SQL, stop;
//! - `prepare`: a copy becomes an image;
//! - `mask`: modification scripts and masking on an image;
//! - `source`: live sources (reachability, `mariadb-backup`);
//! - `client`: connection URLs and one-off queries;
//! - `sample`: the demo's sample database.
//!
//! Not yet (each a clear error): images from dumps, backup repositories, recovery to a
//! target, read-only clones.

mod client;
mod datadir;
mod install;
mod mask;
mod prepare;
mod sample;
mod server;
mod source;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use engine::{Error, ImageFacts, Instance, InstanceSpec, RecoveryTarget, RepoFacts, Result, Sample, SourceUrl, User};

use crate::install::Search;

/// The engine's name for people.
pub(crate) const ENGINE_NAME: &str = "MariaDB";

/// The MariaDB engine, searching the usual installation directories.
pub fn engine() -> Arc<dyn engine::Engine> {
    Arc::new(Mariadb::new())
}

/// The MariaDB engine.
#[derive(Debug, Clone)]
pub struct Mariadb {
    search: Search,
}

impl Mariadb {
    /// Searches the directories of `THINCLONE_MARIADB_DIRS`, then `/usr/sbin` and
    /// `/usr/local/mysql/bin`.
    pub fn new() -> Mariadb {
        Mariadb { search: Search::standard() }
    }
}

impl Default for Mariadb {
    fn default() -> Mariadb {
        Mariadb::new()
    }
}

pub(crate) fn accepts_scheme(scheme: &str) -> bool {
    matches!(scheme, "mariadb" | "mysql")
}

fn check_scheme(source: &SourceUrl) -> Result<()> {
    if accepts_scheme(source.scheme()) {
        Ok(())
    } else {
        Err(Error::BadSource(format!(
            "{} is not a MariaDB connection URL; use mariadb://USER:PASSWORD@HOST:PORT/",
            source.shown()
        )))
    }
}

/// The error of what this engine cannot do yet.
fn not_yet(what: &str) -> Error {
    Error::BadSource(format!("{ENGINE_NAME} does not support {what} yet"))
}

impl engine::Engine for Mariadb {
    fn id(&self) -> &'static str {
        "mariadb"
    }

    fn name(&self) -> &'static str {
        ENGINE_NAME
    }

    fn accepts_url(&self, url: &SourceUrl) -> bool {
        accepts_scheme(url.scheme())
    }

    fn detect(&self, dir: &Path) -> Result<String> {
        datadir::detect(dir)
    }

    fn is_in_use(&self, dir: &Path) -> bool {
        datadir::live_server(dir).is_some()
    }

    fn check_not_in_use(&self, dir: &Path) -> Result<()> {
        match datadir::live_server(dir) {
            Some(pid) => Err(datadir::in_use_error(dir, pid)),
            None => Ok(()),
        }
    }

    fn installed_versions(&self) -> Vec<String> {
        let mut versions: Vec<String> = self.search.all().into_iter().map(|i| i.version).collect();
        versions.sort_by_key(|v| v.split('.').map(|n| n.parse::<u32>().unwrap_or(0)).collect::<Vec<_>>());
        versions
    }

    fn check_installed(&self, version: &str) -> Result<()> {
        if install::major_minor(version).as_deref() != Some(version) {
            return Err(Error::BadSource(format!("{version:?} is not a {ENGINE_NAME} version (one like \"10.11\")")));
        }
        self.search.find(version).map(drop)
    }

    fn probe(&self, source: &SourceUrl) -> Result<()> {
        check_scheme(source)?;
        source::probe(&self.search, source)
    }

    fn copy_live(
        &self,
        source: &SourceUrl,
        target: &Path,
        user: &User,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<()> {
        check_scheme(source)?;
        source::copy_live(&self.search, source, target, user, progress)
    }

    fn prepare(&self, data_dir: &Path, run_dir: &Path, user: &User) -> Result<ImageFacts> {
        prepare::prepare(&self.search, data_dir, run_dir, user)
    }

    fn prepare_with(
        &self,
        data_dir: &Path,
        run_dir: &Path,
        user: &User,
        transform: &api::agent::ImageTransform,
        secret: &str,
    ) -> Result<(ImageFacts, engine::Transformed)> {
        mask::prepare_with(&self.search, data_dir, run_dir, user, transform, secret)
    }

    fn dump_version(&self, path: &Path) -> Result<String> {
        Err(not_yet(&format!("images from a dump ({})", path.display())))
    }

    fn restore_dump(&self, path: &Path, _data_dir: &Path, _run_dir: &Path, _user: &User) -> Result<()> {
        Err(not_yet(&format!("images from a dump ({})", path.display())))
    }

    fn inspect_repo(
        &self,
        repo: &Path,
        _stanza: Option<&str>,
        _target: &RecoveryTarget,
        _user: &User,
    ) -> Result<RepoFacts> {
        Err(not_yet(&format!("images from a backup repository ({})", repo.display())))
    }

    fn check_target(&self, target: &RecoveryTarget) -> Result<()> {
        match target {
            RecoveryTarget::Latest => Ok(()),
            _ => Err(not_yet("recovery to a target")),
        }
    }

    fn start(&self, spec: &InstanceSpec, timeout: Duration) -> Result<Box<dyn Instance>> {
        let installation = self.search.find(&spec.version)?;
        Ok(Box::new(server::start_as(&installation, spec, timeout, server::Role::Clone)?))
    }

    fn adopt(&self, spec: &InstanceSpec) -> Option<Box<dyn Instance>> {
        let installation = match self.search.find(&spec.version) {
            Ok(installation) => installation,
            Err(e) => {
                tracing::warn!(data_dir = %spec.data_dir.display(), "not adopting a server left running: {e}");
                return None;
            }
        };
        Some(Box::new(server::adopt(&installation, spec)?))
    }

    fn stop_stray(&self, spec: &InstanceSpec) -> Result<bool> {
        server::stop_stray(spec)
    }

    fn url(&self, host: &str, port: u16, user: &str, password: &str) -> String {
        client::url(host, port, user, password)
    }

    fn make_sample(&self, data_dir: &Path, run_dir: &Path, user: &User, scale: u32) -> Result<Sample> {
        sample::make_sample(&self.search, data_dir, run_dir, user, scale)
    }

    fn query(&self, url: &str, sql: &str) -> Result<String> {
        client::query(&self.search, url, sql)
    }

    fn commit_dirs(&self) -> &'static [&'static str] {
        // An image's redo log, moved into a directory of its own when it is prepared.
        &[server::REDO_DIR]
    }
}

#[cfg(test)]
mod tests {
    use engine::Engine;

    use super::*;

    #[test]
    fn names_and_urls() {
        let m = Mariadb::new();
        assert_eq!((m.id(), m.name()), ("mariadb", "MariaDB"));
        for (url, ok) in [("mariadb://h/", true), ("mysql://h/", true), ("postgresql://h/db", false)] {
            assert_eq!(m.accepts_url(&SourceUrl::parse(url).unwrap()), ok, "{url}");
        }
        let err = m.probe(&SourceUrl::parse("postgresql://u:secret@h/db").unwrap()).unwrap_err();
        assert!(err.is_callers_mistake() && !err.to_string().contains("secret"), "{err}");
    }

    #[test]
    fn what_it_cannot_do_yet_says_so() {
        let m = Mariadb::new();
        let err = m.dump_version(Path::new("/tmp/x.dump")).unwrap_err();
        assert!(err.to_string().contains("MariaDB does not support images from a dump"), "{err}");
    }

    #[test]
    fn versions_named_by_callers_are_checked() {
        let m = Mariadb::new();
        assert!(m.installed_versions().contains(&"10.11".to_string()), "these tests need MariaDB 10.11");
        m.check_installed("10.11").unwrap();
        for bad in ["ten", "10", ""] {
            assert!(m.check_installed(bad).unwrap_err().is_callers_mistake(), "{bad:?}");
        }
        let err = m.check_installed("99.1").unwrap_err();
        assert!(matches!(err, Error::MissingVersion { .. }) && err.to_string().contains("apt-get install"), "{err}");
    }
}
