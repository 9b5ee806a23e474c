//! The PostgreSQL engine: PostgreSQL's implementation of [`engine::Engine`] and
//! [`engine::Instance`]. It finds installed versions, reads data directories, copies live
//! servers with `pg_basebackup`, prepares images, and runs servers on clones' directories
//! as their OS user, every program started through [`sys::Program`].
//!
//! It knows nothing about FUSE or about how a data directory is stored: it is given
//! directories and works on them.
//!
//! - `install`: where each major version's programs are;
//! - `datadir`: a data directory's version, its running server, its cluster state;
//! - `server`: an instance's settings and run directory, start, adoption, SQL, stop;
//! - `prepare`: a copy becomes an image;
//! - `restore`: images from backups: a dump, a pgBackRest repository, a base backup and
//!   a WAL archive recovered to a target;
//! - `self_contained`: what a copy reaches outside itself (tablespaces) comes inside;
//! - `source`: live sources (reachability, base backups);
//! - `client`: connection URLs and one-off queries;
//! - `sample`: the demo's pgbench database.

mod client;
mod datadir;
mod install;
mod mask;
mod prepare;
mod restore;
mod sample;
mod self_contained;
mod server;
mod source;
mod wire;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use engine::{Error, ImageFacts, Instance, InstanceSpec, RecoveryTarget, RepoFacts, Result, Sample, SourceUrl, User};

use crate::datadir::Major;
use crate::install::Search;

/// The engine's name for people.
pub(crate) const ENGINE_NAME: &str = "PostgreSQL";

/// The PostgreSQL engine, searching the usual installation directories.
pub fn engine() -> Arc<dyn engine::Engine> {
    Arc::new(Postgres::new())
}

/// The PostgreSQL engine.
#[derive(Debug, Clone)]
pub struct Postgres {
    search: Search,
}

impl Postgres {
    /// Searches the usual installation directories: Debian's `/usr/lib/postgresql/N/bin`,
    /// the PGDG RPM layout `/usr/pgsql-N/bin`, and `pg_config --bindir`.
    pub fn new() -> Postgres {
        Postgres::with_bin_dirs(Vec::new())
    }

    /// Searches `extra` first: installation directories an operator points at, each a
    /// `bin` directory or a prefix that holds one.
    pub fn with_bin_dirs(extra: Vec<PathBuf>) -> Postgres {
        Postgres { search: Search::standard(extra) }
    }

    fn installation(&self, version: &str) -> Result<install::Installation> {
        self.search.find(Major::parse(version).map_err(|bad| bad.into_error())?)
    }
}

impl Default for Postgres {
    fn default() -> Postgres {
        Postgres::new()
    }
}

pub(crate) fn accepts_scheme(scheme: &str) -> bool {
    matches!(scheme, "postgresql" | "postgres")
}

fn check_scheme(source: &SourceUrl) -> Result<()> {
    if accepts_scheme(source.scheme()) {
        Ok(())
    } else {
        Err(Error::BadSource(format!(
            "{} is not a PostgreSQL connection URL; use postgresql://USER:PASSWORD@HOST:PORT/DATABASE",
            source.shown()
        )))
    }
}

impl engine::Engine for Postgres {
    fn id(&self) -> &'static str {
        "postgresql"
    }

    fn name(&self) -> &'static str {
        ENGINE_NAME
    }

    fn accepts_url(&self, url: &SourceUrl) -> bool {
        accepts_scheme(url.scheme())
    }

    fn detect(&self, dir: &Path) -> Result<String> {
        datadir::detect(dir).map(|major| major.to_string())
    }

    fn is_in_use(&self, dir: &Path) -> bool {
        datadir::live_postmaster(dir).is_some()
    }

    fn check_not_in_use(&self, dir: &Path) -> Result<()> {
        match datadir::live_postmaster(dir) {
            Some(pid) => Err(datadir::in_use_error(dir, pid)),
            None => Ok(()),
        }
    }

    fn installed_versions(&self) -> Vec<String> {
        self.search.all().into_iter().map(|i| i.major.to_string()).collect()
    }

    fn check_installed(&self, version: &str) -> Result<()> {
        self.installation(version).map(drop)
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
        Ok(prepare::prepare(&self.search, data_dir, run_dir, user, None)?.0)
    }

    fn prepare_with(
        &self,
        data_dir: &Path,
        run_dir: &Path,
        user: &User,
        transform: &api::agent::ImageTransform,
        secret: &str,
    ) -> Result<(ImageFacts, engine::Transformed)> {
        prepare::prepare(&self.search, data_dir, run_dir, user, Some((transform, secret)))
    }

    fn dump_version(&self, path: &Path) -> Result<String> {
        restore::dump_version(&self.search, path)
    }

    fn restore_dump(&self, path: &Path, data_dir: &Path, run_dir: &Path, user: &User) -> Result<()> {
        restore::restore_dump(&self.search, path, data_dir, run_dir, user)
    }

    fn inspect_repo(
        &self,
        repo: &Path,
        stanza: Option<&str>,
        target: &RecoveryTarget,
        user: &User,
    ) -> Result<RepoFacts> {
        restore::inspect_repo(repo, stanza, target, user)
    }

    fn restore_repo(
        &self,
        repo: &Path,
        stanza: &str,
        target: &RecoveryTarget,
        data_dir: &Path,
        run_dir: &Path,
        user: &User,
    ) -> Result<()> {
        restore::restore_repo(&self.search, repo, stanza, target, data_dir, run_dir, user)
    }

    fn check_target(&self, target: &RecoveryTarget) -> Result<()> {
        restore::check_target(target)
    }

    fn recover_to(
        &self,
        data_dir: &Path,
        archive: &Path,
        target: &RecoveryTarget,
        run_dir: &Path,
        user: &User,
    ) -> Result<()> {
        restore::recover_to(&self.search, data_dir, archive, target, run_dir, user)
    }

    fn start(&self, spec: &InstanceSpec, timeout: Duration) -> Result<Box<dyn Instance>> {
        let installation = self.installation(&spec.version)?;
        let found = datadir::detect(&spec.data_dir)?;
        if found != installation.major {
            return Err(Error::Other(format!(
                "{} holds {ENGINE_NAME} {found}, not {} as its spec says",
                spec.data_dir.display(),
                spec.version
            )));
        }
        Ok(Box::new(server::start(&installation, spec, timeout)?))
    }

    fn adopt(&self, spec: &InstanceSpec) -> Option<Box<dyn Instance>> {
        let installation = match self.installation(&spec.version) {
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
        // The write-ahead log: every commit appends to it and fdatasyncs it. It is bounded by
        // max_wal_size (server.rs), and the image holds one segment at most: prepare ends the
        // image's WAL with a segment switch and a shutdown checkpoint.
        &["pg_wal"]
    }
}

#[cfg(test)]
mod tests {
    use engine::Engine;

    use super::*;

    #[test]
    fn names_and_urls() {
        let pg = Postgres::new();
        assert_eq!((pg.id(), pg.name()), ("postgresql", "PostgreSQL"));
        for (url, ok) in [("postgresql://h/db", true), ("postgres://h/db", true), ("mysql://h/db", false)] {
            assert_eq!(pg.accepts_url(&SourceUrl::parse(url).unwrap()), ok, "{url}");
        }
        let err = pg.probe(&SourceUrl::parse("mysql://u:secret@h/db").unwrap()).unwrap_err();
        assert!(err.is_callers_mistake() && !err.to_string().contains("secret"), "{err}");
    }

    #[test]
    fn versions_named_by_callers_are_checked() {
        let pg = Postgres::new();
        assert!(pg.installed_versions().contains(&"15".to_string()), "these tests need PostgreSQL 15");
        pg.check_installed("15").unwrap();
        for bad in ["9.6", "fifteen", "0", ""] {
            let err = pg.check_installed(bad).unwrap_err();
            assert!(err.is_callers_mistake(), "{bad:?}: {err}");
            assert!(!err.to_string().contains("PostgreSQL 0"), "{bad:?}: {err}");
        }
        let err = pg.check_installed("99").unwrap_err();
        assert!(matches!(err, Error::MissingVersion { .. }), "{err}");
        assert!(err.to_string().contains("apt-get install postgresql-99"), "{err}");
    }
}
