//! `thinclone demo`: the main job end to end, on a sample database. It uses the server at
//! `--url` (or the configured one) if one answers, with the configured token (on the
//! server's own host, its first token file), or starts one on a temporary data directory and
//! uses the token that server writes. It has the engine make a sample database, registers
//! the sample's directory as a source (unless a registered one holds it already), takes an
//! image of it and makes three clones. Then it changes one clone, shows that the others are
//! untouched, resets the changed one, prints what it all cost, and removes what it made
//! (unless `--keep`).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use api::{CreateClone, CreateImage, CreateSource, Name, Role, Timestamp};
use clap::builder::PossibleValuesParser;
use client::Client;
use engine::Engine;
use signal_hook::consts::{SIGINT, SIGTERM};

use crate::cli::format::human_bytes;
use crate::cli::{config, ClientOpts};
use crate::engines;

/// How long a server the demo started may take to listen.
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the server may take to stop its clones on SIGTERM.
const SERVER_STOP_TIMEOUT: Duration = Duration::from_secs(120);
/// How long to wait for the server to measure a clone's disk use after a change: it
/// measures in the background, every 30 s by default.
const MEASURE_TIMEOUT: Duration = Duration::from_secs(40);

/// The demo's arguments; `--url`, `--token` and `--ca-file` are the global ones: the server
/// to use if one answers there (otherwise the demo starts one).
#[derive(clap::Args)]
pub struct DemoArgs {
    /// The database engine of the sample database.
    #[arg(long, default_value = engines::DEFAULT, value_parser = PossibleValuesParser::new(engines::ids()))]
    engine: String,
    /// The size of the sample database, in the engine's sample units (for the default
    /// engine, each unit adds about 15 MB).
    #[arg(long, default_value_t = 10)]
    scale: u32,
    /// Leave the clones, the image and a server it started running at the end.
    #[arg(long)]
    keep: bool,
}

fn step(text: &str) {
    eprintln!("==> {text}");
}

/// What the demo made, to remove at the end.
#[derive(Default)]
struct Made {
    source: Option<Name>,
    image: Option<Name>,
    clones: Vec<Name>,
}

/// A server the demo started.
struct OwnServer {
    process: sys::Process,
    url: String,
    data_dir: PathBuf,
    log: PathBuf,
}

pub fn run(args: DemoArgs, opts: &ClientOpts) -> anyhow::Result<()> {
    let started = Instant::now();
    let engine = engines::by_id(&args.engine).with_context(|| format!("no engine {:?}", args.engine))?;
    let work = std::env::temp_dir().join(format!("thinclone-demo-{}", std::process::id()));
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    // The database servers' OS user must reach the sample and the run directories.
    std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("opening {} to other users", work.display()))?;

    // Ctrl-C ends the demo after the step under way, and it still cleans up; a second one
    // ends it at once.
    let interrupted = Arc::new(AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(signal, 1, Arc::clone(&interrupted))
            .and_then(|_| signal_hook::flag::register(signal, Arc::clone(&interrupted)))
            .context("setting up Ctrl-C")?;
    }

    // A server: the one at --url if it answers, with the configured token, else our own,
    // with the token it writes at its first start.
    let endpoint = config::resolve(opts)?;
    let existing = endpoint.client()?;
    let (client, own) = match existing.health() {
        Ok(_) => {
            step(&format!("using the thinclone server at {}", endpoint.url));
            (existing, None)
        }
        // A server that answers but whose certificate is refused is no reason to start
        // another: say so.
        Err(
            e @ (client::Error::UntrustedCertificate { .. } | client::Error::Tls { .. } | client::Error::BadCa { .. }),
        ) => return Err(e.into()),
        Err(_) => {
            step("starting a thinclone server on a temporary data directory");
            let own = start_server(&work)?;
            let token_file = own.data_dir.join("admin.token");
            let token = std::fs::read_to_string(&token_file)
                .with_context(|| format!("reading the token of the demo's server from {}", token_file.display()))?;
            let client = Client::new(&own.url).with_token(Some(token));
            (client, Some(own))
        }
    };
    let client =
        client.with_poll_interval(Duration::from_millis(100)).with_wait_timeout(Some(Duration::from_secs(3600)));

    let mut made = Made::default();
    let result = show(&args, engine, &work, &client, &mut made, &interrupted).map_err(|e| {
        if own.is_none() {
            crate::cli::explain(e, &endpoint)
        } else {
            e
        }
    });

    if args.keep {
        report_kept(&made, own.as_ref(), client.base_url());
        result?;
    } else {
        let cleaned = clean_up(&client, &made, own, &work);
        result?;
        cleaned?;
    }
    eprintln!("done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Says what `--keep` left and how to remove it.
fn report_kept(made: &Made, own: Option<&OwnServer>, url: &str) {
    let clones: Vec<String> = made.clones.iter().map(Name::to_string).collect();
    let image = made.image.as_ref().map_or_else(|| "none".to_owned(), Name::to_string);
    println!("kept: image {image}; clones {}", if clones.is_empty() { "none".to_owned() } else { clones.join(", ") });
    println!("remove them with `thinclone clone rm NAME --url {url}` and `thinclone image rm {image} --url {url}`");
    if let Some(source) = &made.source {
        println!("and the source directory with `thinclone source rm {source} --url {url}`");
    }
    if let Some(own) = own {
        println!(
            "the demo's server runs on with pid {} (stop it with `kill {}`); its data directory is {}, its log {}",
            own.process.pid(),
            own.process.pid(),
            own.data_dir.display(),
            own.log.display()
        );
        println!(
            "its administrator's token is in {0}: `export THINCLONE_TOKEN=$(cat {0})` before the commands above",
            own.data_dir.join("admin.token").display()
        );
    }
}

/// The demo proper: sample, image, clones, change, check, reset, summary.
fn show(
    args: &DemoArgs,
    engine: Arc<dyn Engine>,
    work: &Path,
    client: &Client,
    made: &mut Made,
    interrupted: &AtomicBool,
) -> anyhow::Result<()> {
    // Each step begins only if the demo was not interrupted.
    let begin = |text: &str| -> anyhow::Result<()> {
        if interrupted.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        step(text);
        Ok(())
    };
    // Whoever the token is must be allowed to make images.
    let me = client.whoami()?;
    if me.role < Role::ImageCreator {
        bail!(
            "the demo makes an image, which takes the role image_creator or admin, and {} at {} has the role {}; \
             run it with an image creator's or an administrator's token (--token, or `thinclone login`)",
            me.name,
            client.base_url(),
            me.role
        );
    }
    // A sample source database.
    let user = if sys::user::running_as_root() {
        let name = engines::service_user(engine.as_ref())
            .with_context(|| format!("finding the OS user {} servers run as", engine.name()))?;
        sys::User::lookup(name).with_context(|| format!("finding the OS user {} servers run as", engine.name()))?
    } else {
        sys::User::current()
    };
    begin(&format!("making a sample {} database, scale {}", engine.name(), args.scale))?;
    let t = Instant::now();
    let source = work.join("sample");
    let run_dir = work.join("sample-run");
    for dir in [&source, &run_dir] {
        private_dir(dir, &user)?;
    }
    let sample = engine.make_sample(&source, &run_dir, &user, args.scale).context("making the sample database")?;
    let sample_time = t.elapsed();
    eprintln!("    {}", sample.description);

    // Images are made only from registered source directories.
    let suffix = format!("{:x}", std::process::id());
    begin("registering the sample's directory as a source")?;
    made.source = register_source(client, &me, work, &suffix)?;

    // An image of it.
    let image_name = Name::new(&format!("demo-{suffix}")).context("naming the image")?;
    begin(&format!("taking image {image_name}"))?;
    let t = Instant::now();
    let from_dir = source.to_str().context("the temporary directory's path is not UTF-8")?.to_owned();
    made.image = Some(image_name.clone());
    let image = client.create_image_and_wait(&CreateImage {
        name: image_name.clone(),
        from_dir: Some(from_dir),
        from_url: None,
        snapshot: false,
        from_dump: None,
        from_repo: None,
        stanza: None,
        archive: None,
        target_time: None,
        target_lsn: None,
        team: None,
        location: None,
        host: None,
        mask: Vec::new(),
        scripts: Vec::new(),
    })?;
    let image_time = t.elapsed();
    let logical = image.logical_bytes;

    // Three clones.
    let mut clones = Vec::new();
    for letter in ["a", "b", "c"] {
        let name = Name::new(&format!("demo-{suffix}-{letter}")).context("naming a clone")?;
        begin(&format!("making clone {name}"))?;
        let t = Instant::now();
        made.clones.push(name.clone());
        let clone = client.create_clone_and_wait(&CreateClone {
            name,
            image: image_name.clone(),
            driver: None,
            host: None,
            expires_in: None,
            expires_at: None,
            template: None,
        })?;
        clones.push((clone, t.elapsed()));
    }
    let names: Vec<&Name> = clones.iter().map(|(c, _)| &c.name).collect();
    let query = |i: usize, sql: &str| -> anyhow::Result<String> {
        let url = clones[i].0.url.as_deref().context("the server gave no URL for a clone of our own")?;
        let value = engine.query(url, sql).with_context(|| format!("querying clone {}", names[i]))?;
        Ok(value.trim().to_owned())
    };

    // Change one, check the others.
    begin(&format!("changing {}", names[0]))?;
    let before_change = Timestamp::now();
    query(0, &sample.change_sql)?;
    eprintln!("    checking with: {}", sample.check_sql);
    let values: Vec<String> = (0..3).map(|i| query(i, &sample.check_sql)).collect::<anyhow::Result<_>>()?;
    for (name, value) in names.iter().zip(&values) {
        eprintln!("    {name}: {value}");
    }
    if values[0] == sample.unchanged_value || values[1..].iter().any(|v| *v != sample.unchanged_value) {
        bail!("the clones are not isolated: expected {} in all but the first, got {values:?}", sample.unchanged_value);
    }
    begin(&format!("waiting for the server's next measurement of the disk {} uses", names[0]))?;
    let changed = measured_after(client, names[0], before_change, interrupted)?;

    begin(&format!("resetting {}", names[0]))?;
    let t = Instant::now();
    client.reset_clone_and_wait(names[0])?;
    let reset_time = t.elapsed();
    let after = query(0, &sample.check_sql)?;
    if after != sample.unchanged_value {
        bail!("the reset clone still has its change: {after}, not {}", sample.unchanged_value);
    }
    eprintln!("    {}: {after} again", names[0]);

    // The summary.
    println!();
    println!("thinclone demo: {} of {} data, its image and three clones", human_bytes(logical), engine.name());
    println!();
    println!("  sample database made                          {:>8.1} s", sample_time.as_secs_f64());
    println!("  image taken and prepared                      {:>8.1} s", image_time.as_secs_f64());
    for (clone, time) in &clones {
        println!(
            "  clone {:<24} ready in {:>5.2} s, {} on disk for {} of data",
            clone.name,
            time.as_secs_f64(),
            stored_text(clone),
            human_bytes(logical)
        );
    }
    match changed {
        Some(bytes) => println!("  after its change, {} held {} on disk", names[0], human_bytes(bytes)),
        None => println!("  after its change, {} was not measured again in time", names[0]),
    }
    println!("  reset to the image in {:.2} s; the other clones never saw the change", reset_time.as_secs_f64());
    println!();
    for (clone, _) in &clones {
        println!("  {}  {}", clone.name, clone.url.as_deref().unwrap_or("-"));
    }
    println!();
    Ok(())
}

/// Makes sure a registered source directory holds `work`: one that does already, or `work`
/// itself registered as source `demo-SUFFIX` (returned, to remove at the end). Registering
/// takes an administrator; for anyone else, says what to ask one for.
fn register_source(client: &Client, me: &api::User, work: &Path, suffix: &str) -> anyhow::Result<Option<Name>> {
    let resolved = std::fs::canonicalize(work).with_context(|| format!("resolving {}", work.display()))?;
    let registered = client.list_sources()?;
    if let Some(source) = registered.iter().find(|s| resolved.starts_with(&s.path) && resolved != Path::new(&s.path)) {
        eprintln!("    inside source {} ({})", source.name, source.path);
        return Ok(None);
    }
    if me.role < Role::Admin {
        let temp = std::env::temp_dir();
        bail!(
            "the demo makes its sample database in {}, and images are made only from directories an administrator \
             registered as sources, and {} has the role {}: ask an administrator to run `thinclone source add tmp {}` once, \
             or run the demo with an administrator's token",
            work.display(),
            me.name,
            me.role,
            temp.display()
        );
    }
    let name = Name::new(&format!("demo-{suffix}")).context("naming the source")?;
    let path = resolved.to_str().context("the temporary directory's path is not UTF-8")?.to_owned();
    let source = client.create_source(&CreateSource { name: name.clone(), path })?;
    eprintln!("    source {} is {}", source.name, source.path);
    Ok(Some(name))
}

/// A clone's disk use as the server last measured it.
fn stored_text(clone: &api::Clone) -> String {
    match clone.sizes_at {
        Some(_) => human_bytes(clone.stored_bytes),
        None => "(not measured yet)".to_owned(),
    }
}

/// The clone's disk use once the server has measured it after `after` (it measures in the
/// background), or `None` if that takes longer than [`MEASURE_TIMEOUT`].
fn measured_after(
    client: &Client,
    name: &Name,
    after: Timestamp,
    interrupted: &AtomicBool,
) -> anyhow::Result<Option<u64>> {
    let deadline = Instant::now() + MEASURE_TIMEOUT;
    loop {
        if interrupted.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        let clone = client.get_clone(name)?;
        if clone.sizes_at.is_some_and(|at| at > after) {
            return Ok(Some(clone.stored_bytes));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Creates `dir` empty, owned by `user` and private to it, as a database server wants it.
fn private_dir(dir: &Path, user: &sys::User) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::os::unix::fs::chown(dir, Some(user.uid), Some(user.gid))
        .with_context(|| format!("giving {} to {}", dir.display(), user.name))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("making {} private", dir.display()))
}

/// Starts `thinclone serve` on a free port with its data under `work`, and learns its URL
/// from the line it logs once it listens.
fn start_server(work: &Path) -> anyhow::Result<OwnServer> {
    let exe = std::env::current_exe().context("finding this program's path")?;
    let data_dir = work.join("server");
    let log = work.join("server.log");
    let level = std::env::var("THINCLONE_LOG").unwrap_or_else(|_| "info".to_owned());
    let mut process = sys::Program::new(exe)
        .arg("serve")
        .arg("--data-dir")
        .arg(&data_dir)
        .args(["--listen", "127.0.0.1:0", "--ports", "7700-7799"])
        .env("THINCLONE_LOG", level)
        // Ctrl-C is the demo's to handle: the server must outlive it to serve the clean-up.
        .own_process_group()
        .spawn_logged(&log)
        .context("starting thinclone serve")?;
    let started = sys::wait::until(SERVER_START_TIMEOUT, Duration::from_millis(50), || {
        if let Ok(Some(status)) = process.try_wait() {
            return Some(Err(status.to_string()));
        }
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        listening_url(&text).map(Ok)
    });
    match started {
        Some(Ok(url)) => Ok(OwnServer { process, url, data_dir, log }),
        Some(Err(status)) => bail!("the server exited ({status}) before listening; its log:\n{}", tail(&log, 20)),
        None => {
            let stopped = process.stop(libc::SIGTERM, SERVER_STOP_TIMEOUT);
            if let Err(e) = stopped {
                eprintln!("warning: stopping the server that did not listen: {e}");
            }
            bail!("the server did not listen within {} s; its log:\n{}", SERVER_START_TIMEOUT.as_secs(), tail(&log, 20))
        }
    }
}

/// The URL in the server's `thinclone listening on http://…` line.
fn listening_url(log: &str) -> Option<String> {
    const MARK: &str = "thinclone listening on ";
    let line = log.lines().find(|l| l.contains(MARK))?;
    let rest = &line[line.find(MARK)? + MARK.len()..];
    rest.split_whitespace().next().map(str::to_owned)
}

/// The last `n` lines of a log file, for an error message.
fn tail(log: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Removes the clones and the image, stops our own server, and removes the temporary
/// directory once nothing runs in it. Goes on after a failure, and reports the first.
fn clean_up(client: &Client, made: &Made, own: Option<OwnServer>, work: &Path) -> anyhow::Result<()> {
    step("cleaning up");
    let mut first_error: Option<anyhow::Error> = None;
    let mut note = |e: anyhow::Error| {
        eprintln!("warning: {e:#}");
        first_error.get_or_insert(e);
    };
    for name in &made.clones {
        match client.delete_clone_and_wait(name) {
            Ok(_) => {}
            // It was never made.
            Err(e) if e.is_not_found() => {}
            Err(e) => note(anyhow::Error::new(e).context(format!("removing clone {name}"))),
        }
    }
    if let Some(name) = &made.image {
        match client.delete_image_and_wait(name) {
            Ok(_) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => note(anyhow::Error::new(e).context(format!("removing image {name}"))),
        }
    }
    if let Some(name) = &made.source {
        match client.delete_source(name) {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => note(anyhow::Error::new(e).context(format!("removing source {name}"))),
        }
    }
    if let Some(mut own) = own {
        match own.process.stop(libc::SIGTERM, SERVER_STOP_TIMEOUT) {
            Ok((_, false)) => {}
            Ok((_, true)) => note(anyhow::anyhow!(
                "the server did not stop within {} s of SIGTERM and was killed; its log is {}",
                SERVER_STOP_TIMEOUT.as_secs(),
                own.log.display()
            )),
            Err(e) => note(anyhow::Error::new(e).context("stopping the server")),
        }
    }
    match first_error {
        // Something may still run on it: leave the directory for a look.
        Some(e) => {
            eprintln!("left {} in place", work.display());
            Err(e)
        }
        None => std::fs::remove_dir_all(work).with_context(|| format!("removing {}", work.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listening_line_gives_the_url() {
        assert_eq!(
            listening_url("thinclone listening on http://127.0.0.1:39113\n").as_deref(),
            Some("http://127.0.0.1:39113")
        );
        let log = "2026-11-29T13:00:00Z  INFO serve: recovering\n\
                   2026-11-29T13:00:01Z  INFO thinclone listening on http://127.0.0.1:40000 (pid 7)\n";
        assert_eq!(listening_url(log).as_deref(), Some("http://127.0.0.1:40000"));
        assert_eq!(listening_url("starting\n"), None);
    }
}
