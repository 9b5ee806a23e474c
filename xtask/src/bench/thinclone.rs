//! thinclone as the benchmarks run it: the release binary (built here, or given), cowfs
//! mounts (`thinclone mount`) and daemons (`thinclone serve`) as child processes that are
//! stopped when their guard is dropped, and the typed client of a daemon.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::exec::{self, tail, Cmd, Exec};
use super::host;
use super::progress::{log, warn};

/// The thinclone binary: `given` (`--bin`, `THINCLONE_BIN`), or the release build of the
/// repository, built now with `cargo build --release -p thinclone`.
pub fn binary(exec: &Exec, repo: &Path, given: Option<&Path>, build_log: &Path) -> Result<PathBuf> {
    if let Some(bin) = given {
        let bin = fs::canonicalize(bin).with_context(|| format!("--bin {}", bin.display()))?;
        log(&format!("using the thinclone binary {}", bin.display()));
        return Ok(bin);
    }
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if Path::new(&dir).is_absolute() => PathBuf::from(dir),
        Some(dir) => repo.join(dir),
        None => repo.join("target"),
    };
    log("cargo build --release -p thinclone");
    let mut cmd = Cmd::new(cargo())
        .args(["build", "--release", "--quiet", "-p", "thinclone", "--manifest-path"])
        .arg(repo.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target)
        .timeout(Duration::from_secs(3600));
    // The toolchain and its settings come from our environment (sys::Program starts clean).
    for key in ["HOME", "PATH", "CARGO_HOME", "RUSTUP_HOME", "RUSTUP_TOOLCHAIN", "RUSTFLAGS", "CARGO_BUILD_JOBS"] {
        if let Some(v) = std::env::var_os(key) {
            cmd = cmd.env(key, v);
        }
    }
    exec.run_to(&cmd, build_log).context("building thinclone")?;
    let bin = target.join("release/thinclone");
    if !bin.is_file() {
        bail!("the built binary is not at {}", bin.display());
    }
    Ok(bin)
}

/// cargo: the one running us (`CARGO`), else the first on `PATH`, else `~/.cargo/bin/cargo`.
fn cargo() -> PathBuf {
    if let Some(c) = std::env::var_os("CARGO") {
        return c.into();
    }
    let on_path =
        std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join("cargo")).find(|c| c.is_file()));
    on_path.unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cargo/bin/cargo")
    })
}

/// The environment every thinclone child gets: its log level (ours, or `warn`).
fn with_log_level(cmd: Cmd) -> Cmd {
    let level = std::env::var("THINCLONE_LOG").unwrap_or_else(|_| "warn".to_owned());
    cmd.env("THINCLONE_LOG", level)
}

/// A cowfs mount: `thinclone mount --image IMAGE --layer LAYER MOUNTPOINT [--owner USER]`,
/// unmounted when dropped.
pub struct Mount {
    process: sys::Process,
    pub mount_point: PathBuf,
    stopped: bool,
}

impl Mount {
    /// Starts the mount and waits until it is up.
    pub fn start(
        exec: &Exec,
        bin: &Path,
        image: &Path,
        layer: &Path,
        mount_point: &Path,
        log: &Path,
        owner: Option<&str>,
    ) -> Result<Mount> {
        fs::create_dir_all(mount_point)?;
        if host::is_mount_point(mount_point) {
            bail!("{} is already a mount point", mount_point.display());
        }
        let mut cmd = with_log_level(Cmd::new(bin))
            .args(["mount", "--image"])
            .arg(image)
            .arg("--layer")
            .arg(layer)
            .arg(mount_point);
        if let Some(owner) = owner {
            cmd = cmd.args(["--owner", owner]);
        }
        let process = exec.spawn(&cmd, log)?;
        let mut mount = Mount { process, mount_point: mount_point.to_owned(), stopped: false };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !host::is_mount_point(mount_point) {
            exec::check_interrupted()?;
            if mount.process.try_wait()?.is_some() {
                mount.stopped = true;
                bail!(
                    "thinclone mount exited before mounting {} (log {}):\n{}",
                    mount_point.display(),
                    log.display(),
                    tail(log, 20)
                );
            }
            if Instant::now() >= deadline {
                bail!("timed out waiting for the cowfs mount at {} (log {})", mount_point.display(), log.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(mount)
    }

    pub fn stop(mut self) {
        self.unmount();
    }

    /// SIGTERM to the mount process (it unmounts cleanly); after 15 s a lazy unmount and
    /// SIGKILL of that process only.
    fn unmount(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let clean = self.process.wait_timeout(Duration::ZERO).ok().flatten().is_some() || {
            self.process.signal(libc::SIGTERM);
            matches!(self.process.wait_timeout(Duration::from_secs(15)), Ok(Some(_)))
        };
        if host::is_mount_point(&self.mount_point) {
            warn(&format!("mount at {} still present after SIGTERM; lazy unmount", self.mount_point.display()));
            lazy_unmount(&self.mount_point);
        }
        if !clean {
            warn(&format!("thinclone mount pid {} still running; killing it", self.process.pid()));
            let _ = self.process.stop(libc::SIGKILL, Duration::from_secs(10)); // reported above
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.unmount();
    }
}

/// A lazy unmount of a FUSE or other mount (fusermount3, fusermount, then umount -l).
pub fn lazy_unmount(mount_point: &Path) {
    for (prog, args) in [("fusermount3", &["-u", "-z"][..]), ("fusermount", &["-u", "-z"][..]), ("umount", &["-l"][..])]
    {
        let Some(path) = host::find_program(prog) else { continue };
        if Cmd::new(path).args(args).arg(mount_point).program().run().is_ok() {
            return;
        }
    }
    warn(&format!("could not unmount {}", mount_point.display()));
}

/// A daemon: `thinclone serve --data-dir DIR --listen 127.0.0.1:0 --ports FIRST-LAST
/// [extra]`, stopped when dropped, with whatever it left running.
pub struct Daemon {
    process: sys::Process,
    pub data_dir: PathBuf,
    /// Its base URL, from its `thinclone listening on http://…` line.
    pub url: String,
    /// The administrator's token, from the `admin.token` file its first start writes.
    pub token: String,
    exec: Arc<Exec>,
    stopped: bool,
}

impl Daemon {
    pub fn start(
        exec: &Arc<Exec>,
        bin: &Path,
        data_dir: &Path,
        ports: (u16, u16),
        log: &Path,
        extra: &[&str],
    ) -> Result<Daemon> {
        fs::create_dir_all(data_dir)?;
        let offset = fs::metadata(log).map_or(0, |m| m.len()) as usize;
        let cmd = with_log_level(Cmd::new(bin))
            .args(["serve", "--data-dir"])
            .arg(data_dir)
            .args(["--listen", "127.0.0.1:0", "--ports", &format!("{}-{}", ports.0, ports.1)])
            // Clones otherwise run on after the daemon, for the next one to adopt.
            .arg("--stop-clones-at-exit")
            .args(extra);
        let process = exec.spawn(&cmd, log)?;
        let mut daemon = Daemon {
            process,
            data_dir: data_dir.to_owned(),
            url: String::new(),
            token: String::new(),
            exec: exec.clone(),
            stopped: false,
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            exec::check_interrupted()?;
            let text = fs::read(log)
                .map(|b| String::from_utf8_lossy(&b[offset.min(b.len())..]).into_owned())
                .unwrap_or_default();
            if let Some(url) = listening_url(&text) {
                daemon.url = url;
                daemon.token = fs::read_to_string(data_dir.join("admin.token"))
                    .with_context(|| format!("reading the administrator's token in {}", data_dir.display()))?
                    .trim()
                    .to_owned();
                // The benchmarks make images of data directories under /tmp, /var/tmp and
                // their work directory: sources an administrator registers.
                for (i, dir) in ["/tmp", "/var/tmp"].iter().enumerate() {
                    let request = api::CreateSource { name: name(&format!("bench-{i}"))?, path: dir.to_string() };
                    match daemon.client().create_source(&request) {
                        Ok(_) => {}
                        Err(e) if e.code() == Some(api::ErrorCode::Conflict) => {}
                        Err(e) => bail!("registering {dir} as a source: {e}"),
                    }
                }
                return Ok(daemon);
            }
            if daemon.process.try_wait()?.is_some() {
                daemon.stopped = true;
                bail!("thinclone serve exited before listening (log {}):\n{}", log.display(), tail(log, 20));
            }
            if Instant::now() >= deadline {
                bail!("timed out waiting for thinclone serve on {} (log {})", data_dir.display(), log.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> i32 {
        self.process.pid() as i32
    }

    /// SIGTERM (it stops its clones' servers and mounts), SIGKILL after 5 minutes, then
    /// [`stop_leftovers`].
    fn shut_down(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        match self.process.stop(libc::SIGTERM, Duration::from_secs(300)) {
            Ok((_, true)) => {
                warn(&format!("thinclone serve pid {} did not stop on SIGTERM; killed", self.process.pid()))
            }
            Ok(_) => {}
            Err(e) => warn(&format!("stopping thinclone serve: {e}")),
        }
        stop_leftovers(&self.data_dir);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// The URL of a `thinclone listening on http://…` line.
fn listening_url(log: &str) -> Option<String> {
    log.lines().find_map(|l| {
        let rest = &l[l.find("thinclone listening on ")? + "thinclone listening on ".len()..];
        let url = rest.split_whitespace().next()?;
        url.starts_with("http://").then(|| url.to_owned())
    })
}

/// Stops what a daemon of `data_dir` may have left running: every live process whose
/// command line names a path inside it (postgres gets a fast shutdown, others SIGTERM,
/// SIGKILL after 30 s), then lazily unmounts what is still mounted under it.
pub fn stop_leftovers(data_dir: &Path) {
    let mut prefix = data_dir.as_os_str().to_owned();
    prefix.push("/");
    for pid in sys::procfs::processes_under(Path::new(&prefix)) {
        let postgres =
            sys::procfs::cmdline(pid).and_then(|c| c.first().cloned()).is_some_and(|p| p.ends_with("postgres"));
        warn(&format!("stopping pid {pid} left by the daemon of {}", data_dir.display()));
        let signal = if postgres { libc::SIGINT } else { libc::SIGTERM };
        // SAFETY: kill of a live process whose command line names our data directory.
        unsafe { libc::kill(pid, signal) };
        let gone = sys::wait::until(Duration::from_secs(30), Duration::from_millis(100), || {
            (!sys::procfs::is_alive(pid)).then_some(())
        });
        if gone.is_none() {
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    for mount in host::mounts_under(data_dir) {
        warn(&format!("lazy unmount of {}", mount.display()));
        lazy_unmount(&mount);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_listening_line_gives_the_url() {
        let log = "2026-11-29T12:00:00Z WARN something\nthinclone listening on http://127.0.0.1:41234\n";
        assert_eq!(super::listening_url(log).as_deref(), Some("http://127.0.0.1:41234"));
        assert_eq!(super::listening_url("nothing yet"), None);
    }
}

/// What the benchmarks read of a clone the daemon made.
#[derive(Debug, Clone)]
pub struct CloneInfo {
    /// Its connection URL (database `postgres`), with its password.
    pub url: String,
    /// The daemon's `stored_bytes`, when it has measured it.
    pub stored_bytes: Option<u64>,
}

/// Where a new image comes from.
#[derive(Debug, Clone, Copy)]
pub enum ImageSource<'a> {
    Dir(&'a Path),
    Url(&'a str),
}

/// How often the daemon's operations are polled: as often as the `SELECT 1` loop tries,
/// so that a timed step carries at most this much slack (the client's default is 200 ms).
const POLL: Duration = Duration::from_millis(10);
/// How long to wait for the daemon to measure a clone's disk use again (it does so when a
/// clone's figure is a few seconds old, and for every clone in the background).
const SIZE_WAIT: Duration = Duration::from_secs(120);

fn name(text: &str) -> Result<api::Name> {
    api::Name::new(text).map_err(anyhow::Error::from)
}

/// The daemon's API as the benchmarks use it, through the typed client; every call that
/// changes something waits for its operation to end.
impl Daemon {
    /// The typed client of this daemon, which polls operations every [`POLL`].
    pub fn client(&self) -> client::Client {
        client::Client::new(&self.url).with_poll_interval(POLL).with_token(Some(self.token.clone()))
    }

    /// Makes an image and waits until it is ready.
    pub fn create_image(&self, name_: &str, source: ImageSource) -> Result<()> {
        let request = api::CreateImage {
            team: None,
            location: None,
            host: None,
            name: name(name_)?,
            from_dir: match source {
                ImageSource::Dir(d) => Some(d.display().to_string()),
                ImageSource::Url(_) => None,
            },
            from_url: match source {
                ImageSource::Url(u) => Some(u.to_owned()),
                ImageSource::Dir(_) => None,
            },
            // The sources are stopped cleanly: nothing to recover.
            snapshot: false,
            from_dump: None,
            from_repo: None,
            stanza: None,
            archive: None,
            target_time: None,
            target_lsn: None,
            mask: Vec::new(),
            scripts: Vec::new(),
        };
        self.exec.note(&format!(
            "POST {}{} {}   # and wait for its operation",
            self.url,
            api::paths::IMAGES,
            serde_json::to_string(&request)?
        ));
        let image = self.client().create_image_and_wait(&request).with_context(|| format!("making image {name_}"))?;
        if image.status != api::ImageStatus::Ready {
            bail!("image {name_} is {} after its operation ended: {}", image.status, image.message.unwrap_or_default());
        }
        Ok(())
    }

    pub fn remove_image(&self, name_: &str) -> Result<()> {
        self.exec.note(&format!("DELETE {}{}/{name_}   # and wait", self.url, api::paths::IMAGES));
        self.client().delete_image_and_wait(&name(name_)?).with_context(|| format!("removing image {name_}"))?;
        Ok(())
    }

    /// Makes a clone and waits until it accepts connections.
    pub fn create_clone(&self, name_: &str, image: &str, driver: api::Driver) -> Result<CloneInfo> {
        let request = api::CreateClone {
            name: name(name_)?,
            image: name(image)?,
            driver: Some(driver),
            host: None,
            expires_in: None,
            expires_at: None,
            template: None,
        };
        self.exec.note(&format!(
            "POST {}{} {}   # and wait",
            self.url,
            api::paths::CLONES,
            serde_json::to_string(&request)?
        ));
        let clone = self.client().create_clone_and_wait(&request).with_context(|| format!("making clone {name_}"))?;
        let url = clone.url.context("the daemon gave no URL for a clone of its administrator")?;
        Ok(CloneInfo { url, stored_bytes: clone.sizes_at.map(|_| clone.stored_bytes) })
    }

    pub fn remove_clone(&self, name_: &str) -> Result<()> {
        self.exec.note(&format!("DELETE {}{}/{name_}   # and wait", self.url, api::paths::CLONES));
        self.client().delete_clone_and_wait(&name(name_)?).with_context(|| format!("removing clone {name_}"))?;
        Ok(())
    }

    pub fn start_clone(&self, name_: &str) -> Result<()> {
        self.exec.note(&format!("POST {}{}/{name_}/start   # and wait", self.url, api::paths::CLONES));
        self.client().start_clone_and_wait(&name(name_)?).with_context(|| format!("starting clone {name_}"))?;
        Ok(())
    }

    pub fn stop_clone(&self, name_: &str) -> Result<()> {
        self.exec.note(&format!("POST {}{}/{name_}/stop   # and wait", self.url, api::paths::CLONES));
        self.client().stop_clone_and_wait(&name(name_)?).with_context(|| format!("stopping clone {name_}"))?;
        Ok(())
    }

    /// The clone's `stored_bytes` from a measurement the daemon made after `since`; asks
    /// until it gets one.
    pub fn stored_bytes_after(&self, name_: &str, since: api::Timestamp) -> Result<u64> {
        let client = self.client();
        let name = name(name_)?;
        let deadline = Instant::now() + SIZE_WAIT;
        loop {
            let clone = client.get_clone(&name).with_context(|| format!("reading clone {name_}"))?;
            if clone.sizes_at.is_some_and(|at| at > since) {
                return Ok(clone.stored_bytes);
            }
            if Instant::now() >= deadline {
                bail!("the daemon did not measure clone {name_}'s disk use within {} s", SIZE_WAIT.as_secs());
            }
            exec::sleep(Duration::from_millis(500))?;
        }
    }

    /// The files of image `name`.
    pub fn image_dir(&self, name: &str) -> PathBuf {
        self.data_dir.join("images").join(name)
    }

    /// The directory of clone `name`, which holds all of its storage.
    pub fn clone_dir(&self, name: &str) -> PathBuf {
        self.data_dir.join("clones").join(name)
    }

    /// A cowfs clone's writable layer.
    pub fn layer_dir(&self, name: &str) -> PathBuf {
        self.clone_dir(name).join("layer")
    }

    /// What a cowfs clone stores: its layer and its commit directories kept beside it
    /// (`native/`: the log, on the host's filesystem).
    pub fn cowfs_storage(&self, name: &str) -> [PathBuf; 2] {
        [self.layer_dir(name), self.clone_dir(name).join("native")]
    }

    /// A copy clone's data directory.
    pub fn clone_data_dir(&self, name: &str) -> PathBuf {
        self.clone_dir(name).join("data")
    }
}
