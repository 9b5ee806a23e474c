//! `thinclone demo`: the main job end to end, on a sample database. It uses a running daemon,
//! or starts one in a temporary data directory. It makes a pgbench database, takes an image
//! of it and makes three clones. Then it changes one clone, shows that the others are
//! untouched, resets the changed one, and prints what it all cost.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::client::{Client, CloneAction, ImageSource};
use crate::commands::human_bytes;

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Use the daemon at this URL if one answers there; otherwise start one for the demo.
    #[arg(long, env = "THINCLONE_URL", default_value = "http://127.0.0.1:7420")]
    url: String,
    /// Size of the sample database, in pgbench scale units (1 unit is about 15 MB).
    #[arg(long, default_value_t = 10)]
    scale: u32,
    /// Leave the clones, the image and a daemon it started running at the end.
    #[arg(long)]
    keep: bool,
}

/// A daemon the demo started, stopped when dropped unless kept.
struct OwnDaemon {
    child: Child,
    keep: bool,
}

impl Drop for OwnDaemon {
    fn drop(&mut self) {
        if !self.keep {
            // SAFETY: signalling our own child; SIGTERM stops its clones cleanly.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let _ = self.child.wait();
        }
    }
}

fn step(text: &str) {
    eprintln!("==> {text}");
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let work = std::env::temp_dir().join(format!("thinclone-demo-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    // The database's user must reach the sample source and the run directories.
    std::fs::set_permissions(&work, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;

    // A daemon: the one at --url if it answers, else our own.
    let existing = Client::new(&args.url);
    let (client, own) = if existing.images().is_ok() {
        step(&format!("using the daemon at {}", args.url));
        (existing, None)
    } else {
        step("starting a daemon in a temporary data directory");
        let (url, child) = start_daemon(&work)?;
        (Client::new(&url), Some(OwnDaemon { child, keep: args.keep }))
    };

    // A sample source database.
    let installation = pg::Installation::newest().context("finding PostgreSQL")?;
    // SAFETY: geteuid has no preconditions.
    let user = if unsafe { libc::geteuid() } == 0 { pg::RunAs::user("postgres")? } else { pg::RunAs::current() };
    step(&format!("making a sample database: PostgreSQL {}, pgbench scale {}", installation.major, args.scale));
    let t = Instant::now();
    let source = work.join("source");
    make_sample(&installation, &user, &source, &work.join("run-source"), args.scale)?;
    let sample_time = t.elapsed();

    // An image of it.
    let suffix = format!("{:x}", std::process::id());
    let image_name = format!("demo-{suffix}");
    step(&format!("taking image {image_name}"));
    let t = Instant::now();
    client.create_image(&image_name, &ImageSource::Dir(source.display().to_string()))?;
    let image = loop {
        let image = client.image(&image_name)?;
        match image.status.as_str() {
            "ready" => break image,
            "failed" => bail!("the image failed: {}", image.message.unwrap_or_default()),
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    let image_time = t.elapsed();
    let logical = image.logical_bytes.unwrap_or(0);

    // Three clones.
    let mut clones = Vec::new();
    for letter in ["a", "b", "c"] {
        let name = format!("demo-{suffix}-{letter}");
        step(&format!("making clone {name}"));
        let t = Instant::now();
        let clone = client.create_clone(&name, &image_name, None)?;
        clones.push((clone, t.elapsed()));
    }
    let url = |i: usize| clones[i].0.url.clone().unwrap_or_default();

    // Change one, check the others.
    let sum = "SELECT sum(abalance) FROM pgbench_accounts";
    step(&format!("changing {}: 1000 accounts' balances go up by 100", clones[0].0.name));
    psql(&installation, &url(0), "UPDATE pgbench_accounts SET abalance = abalance + 100 WHERE aid <= 1000")?;
    let sums: Vec<String> = (0..3).map(|i| psql(&installation, &url(i), sum)).collect::<anyhow::Result<_>>()?;
    for (i, s) in sums.iter().enumerate() {
        eprintln!("    {}: sum(abalance) = {s}", clones[i].0.name);
    }
    if sums[1] != "0" || sums[2] != "0" || sums[0] == "0" {
        bail!("the clones are not isolated: sums {sums:?}");
    }
    let changed_layer = client.clone_named(&clones[0].0.name)?.layer_bytes.unwrap_or(0);

    step(&format!("resetting {}", clones[0].0.name));
    let t = Instant::now();
    client.clone_action(&clones[0].0.name, CloneAction::Reset)?;
    let reset_time = t.elapsed();
    let after = psql(&installation, &url(0), sum)?;
    if after != "0" {
        bail!("the reset clone still has its changes: sum {after}");
    }
    eprintln!("    {}: sum(abalance) = {after} again", clones[0].0.name);

    // The summary.
    println!();
    println!("thinclone demo: a {} database, its image and three clones", human_bytes(logical));
    println!();
    println!("  sample database made (initdb + pgbench -i)   {:>8.1} s", sample_time.as_secs_f64());
    println!("  image taken and prepared                      {:>8.1} s", image_time.as_secs_f64());
    for (clone, time) in &clones {
        let fresh = clone.layer_bytes.unwrap_or(0);
        println!(
            "  clone {:<24} ready in {:>5.2} s, {} on disk for {} of data",
            clone.name,
            time.as_secs_f64(),
            human_bytes(fresh),
            human_bytes(logical)
        );
    }
    println!("  after updating 1000 rows, {} held {} on disk", clones[0].0.name, human_bytes(changed_layer));
    println!("  reset to the image in {:.2} s; the other clones never saw the change", reset_time.as_secs_f64());
    println!();
    for (clone, _) in &clones {
        println!("  psql '{}'", clone.url.clone().unwrap_or_default());
    }
    println!();

    if args.keep {
        println!("kept: the image, the clones and the daemon. Remove them with `thinclone clone rm` and `thinclone image rm`.");
        if let Some(own) = &own {
            println!("the daemon's pid is {}; its data directory is {}", own.child.id(), work.join("daemon").display());
        }
    } else {
        step("cleaning up");
        for (clone, _) in &clones {
            client.remove_clone(&clone.name)?;
        }
        client.remove_image(&image_name)?;
        drop(own);
        let _ = std::fs::remove_dir_all(&work);
    }
    eprintln!("done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Starts `thinclone serve` on a free port with its data in `work/daemon`.
fn start_daemon(work: &Path) -> anyhow::Result<(String, Child)> {
    let mut child = Command::new(std::env::current_exe()?)
        .arg("serve")
        .arg("--data-dir")
        .arg(work.join("daemon"))
        .args(["--listen", "127.0.0.1:0", "--ports", "7700-7799"])
        .env("THINCLONE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting thinclone serve")?;
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let url = loop {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(url) = line.strip_prefix("thinclone listening on ") {
                    break url.trim().to_string();
                }
                eprintln!("    daemon: {line}");
            }
            _ => {
                let status = child.wait()?;
                bail!("the daemon exited before listening ({status})");
            }
        }
    };
    // Keep draining the daemon's log so that it never blocks on a full pipe.
    let log: PathBuf = work.join("daemon.log");
    std::thread::spawn(move || {
        use std::io::Write;
        let mut file = std::fs::File::create(log).ok();
        for line in lines.map_while(Result::ok) {
            if let Some(f) = file.as_mut() {
                let _ = writeln!(f, "{line}");
            }
        }
    });
    Ok((url, child))
}

/// initdb + pgbench -i, then a clean stop: a stopped data directory to take an image of.
fn make_sample(
    installation: &pg::Installation,
    user: &pg::RunAs,
    data: &Path,
    run_dir: &Path,
    scale: u32,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(data)?;
    std::os::unix::fs::chown(data, Some(user.uid), Some(user.gid))?;
    std::fs::set_permissions(data, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    pg::Program::new(installation.program("initdb"))
        .arg("-D")
        .arg(data)
        .args(["-A", "trust", "-U", "postgres", "--no-sync"])
        .user(user)
        .run()?;
    let config = pg::ServerConfig {
        port: pg::free_port()?,
        listen_addresses: String::new(),
        run_dir: run_dir.to_owned(),
        shared_buffers: "128MB".into(),
        extra: vec![],
    };
    let server = pg::Server::start(installation, data, &config, user, Duration::from_secs(60))?;
    pg::Program::new(installation.program("pgbench"))
        .args(["-i", "-q", "-s", &scale.to_string(), "-h"])
        .arg(run_dir)
        .args(["-p", &config.port.to_string(), "-U", "postgres", "postgres"])
        .user(user)
        .timeout(Duration::from_secs(3600))
        .run()?;
    server.stop(Duration::from_secs(120))?;
    Ok(())
}

/// Runs one SQL statement through a connection URL; returns its unaligned output.
fn psql(installation: &pg::Installation, url: &str, sql: &str) -> anyhow::Result<String> {
    let out =
        pg::Program::new(installation.program("psql")).args(["-X", "-A", "-t", "-q", "-d", url, "-c", sql]).run()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}
