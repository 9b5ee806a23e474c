//! Many hosts on one machine, for the agents' tests: each agent in a network namespace of
//! its own (`ip netns`), joined to the root namespace by a veth pair, so that the server and
//! its agents talk over real, separate network stacks; a `thinclone server` in the root
//! namespace; `thinclone agent join` and `thinclone agent run` inside a namespace (with
//! `nsenter --net`, so that mounts stay visible to the test). Everything is removed when it
//! is dropped.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use super::daemon::clear_leftovers;

/// How long a process may take to print the line that says it is ready.
const START_TIMEOUT: Duration = Duration::from_secs(120);

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

fn ip_cmd(args: &[&str]) {
    run(Command::new("ip").args(args));
}

/// Checks that network namespaces can be made here (root, `ip`, `nsenter`), and fails the
/// test with what is missing if not.
pub fn require_netns(test: &str) {
    let root = unsafe { libc::geteuid() } == 0;
    assert!(
        root && super::which("ip") && super::which("nsenter"),
        "{test} needs root, `ip` (iproute2) and `nsenter` (util-linux) for network namespaces; run the tests with \
         scripts/test, which installs them"
    );
}

/// A network namespace joined to the root namespace by a veth pair: the root side has
/// `10.N.S.1/24`, the namespace `10.N.S.2/24` (N from the test process, S one subnet per
/// namespace), with its default route through the root side.
pub struct Netns {
    pub name: String,
    /// The root namespace's address on the pair: how the namespace reaches the host.
    pub host_ip: String,
    /// The namespace's own address.
    pub ip: String,
}

impl Netns {
    /// Makes namespace `k` of the test tagged `tag`.
    pub fn new(tag: &str, k: u8) -> Netns {
        // Unique per process, so that tests running at once do not collide.
        let id = std::process::id() % 200 + 20;
        let name = format!("tc-{tag}-{id}-{k}");
        let host_if = format!("tch{id}{tag}{k}");
        let ns_if = format!("tcn{id}{tag}{k}");
        // A subnet of its own, also among the namespaces of tests running at once here.
        static NEXT: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(1);
        let subnet = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let host_ip = format!("10.{id}.{subnet}.1");
        let ip = format!("10.{id}.{subnet}.2");
        // What an earlier, killed run may have left.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let _ = Command::new("ip").args(["link", "del", &host_if]).output();
        ip_cmd(&["netns", "add", &name]);
        ip_cmd(&["link", "add", &host_if, "type", "veth", "peer", "name", &ns_if]);
        ip_cmd(&["link", "set", &ns_if, "netns", &name]);
        ip_cmd(&["addr", "add", &format!("{host_ip}/24"), "dev", &host_if]);
        ip_cmd(&["link", "set", &host_if, "up"]);
        for args in [
            vec!["addr", "add", &format!("{ip}/24"), "dev", &ns_if],
            vec!["link", "set", &ns_if, "up"],
            vec!["link", "set", "lo", "up"],
            vec!["route", "add", "default", "via", &host_ip],
        ] {
            let mut full = vec!["netns", "exec", &name, "ip"];
            full.extend(args.iter().map(|s| -> &str { s }));
            ip_cmd(&full);
        }
        Netns { name, host_ip, ip }
    }

    /// A command run inside the namespace (its network only: mounts stay shared).
    pub fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.name)).arg("--").arg(program);
        cmd
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Removing the namespace removes its end of the pair, and so the pair.
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// A thinclone process whose stderr goes to a log file, started again as needed.
pub struct Proc {
    pub log: PathBuf,
    make: Box<dyn Fn() -> Command>,
    child: Option<Child>,
    starts: u32,
}

impl Proc {
    fn start(log: PathBuf, make: Box<dyn Fn() -> Command>, ready: &str) -> Proc {
        let mut p = Proc { log, make, child: None, starts: 0 };
        p.spawn(ready);
        p
    }

    /// Starts the process and waits for a line starting with `ready` in what it logs from
    /// now on; returns the rest of that line.
    pub fn spawn(&mut self, ready: &str) -> String {
        assert!(self.child.is_none(), "already running");
        self.starts += 1;
        let marker = format!("===== start {} =====", self.starts);
        let mut file = fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        std::io::Write::write_all(&mut file, format!("{marker}\n").as_bytes()).unwrap();
        let child = (self.make)()
            .env("THINCLONE_LOG", std::env::var("THINCLONE_TEST_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .spawn()
            .expect("starting thinclone");
        self.child = Some(child);
        self.wait_for(ready, START_TIMEOUT)
    }

    /// Waits for a line starting with `prefix` logged since the last start.
    pub fn wait_for(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.log_since_start();
            if let Some(rest) = text.lines().find_map(|l| l.strip_prefix(prefix)) {
                return rest.trim().to_owned();
            }
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait().unwrap() {
                    panic!("thinclone exited ({status}) before `{prefix}`:\n{text}");
                }
            }
            assert!(Instant::now() < deadline, "no `{prefix}` within {timeout:?}:\n{text}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_since_start(&self) -> String {
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        let marker = format!("===== start {} =====", self.starts);
        log.rsplit_once(&marker).map_or(log.clone(), |(_, after)| after.to_owned())
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("not running").id()
    }

    /// SIGKILL, as a crash would: what it started (clones' servers, mounts) stays.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("not running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM, and a wait (SIGKILL after 60 s).
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if child.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- {} ---\n{}", self.log.display(), self.log_tail(80));
        }
        self.stop();
    }
}

/// A `thinclone server` in the root namespace: the REST API on every address (plain HTTP:
/// the test's network is its own), the agent channel named by `channel_name`.
pub struct ControlServer {
    pub data_dir: PathBuf,
    pub proc: Proc,
    /// The API's URL from the root namespace.
    pub url: String,
    /// The API's port, for agents' URLs.
    pub port: u16,
    pub channel_port: u16,
    pub token: String,
    args: Vec<String>,
}

impl ControlServer {
    pub fn start(data_dir: &Path, ports: (u16, u16), names: &[&str]) -> ControlServer {
        fs::create_dir_all(data_dir).unwrap();
        let mut args: Vec<String> = vec![
            "server".into(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--listen".into(),
            "0.0.0.0:0".into(),
            "--insecure-http".into(),
            "--channel-listen".into(),
            "0.0.0.0:0".into(),
            "--ports".into(),
            format!("{}-{}", ports.0, ports.1),
        ];
        for name in names {
            args.extend(["--channel-name".into(), name.to_string(), "--server-name".into(), name.to_string()]);
        }
        let bin = super::thinclone_bin();
        let log = data_dir.with_extension("log");
        let kept = args.clone();
        let make = Box::new(move || {
            let mut cmd = Command::new(&bin);
            cmd.args(&kept);
            cmd
        });
        let mut proc = Proc::start(log, make, "thinclone listening on ");
        let (url, channel_port) = Self::addresses(&mut proc);
        let port = url.rsplit(':').next().unwrap().parse().unwrap();
        let token = fs::read_to_string(data_dir.join("admin.token")).unwrap().trim().to_owned();
        ControlServer { data_dir: data_dir.to_owned(), proc, url, port, channel_port, token, args }
    }

    fn addresses(proc: &mut Proc) -> (String, u16) {
        let listening = proc.wait_for("thinclone listening on ", Duration::from_secs(5));
        let channel = proc.wait_for("thinclone agent channel on ", Duration::from_secs(5));
        let port = listening.rsplit(':').next().unwrap().to_owned();
        let channel_port = channel.rsplit(':').next().unwrap().parse().unwrap();
        (format!("http://127.0.0.1:{port}"), channel_port)
    }

    /// Kills the server with SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        self.proc.kill9();
    }

    /// Starts the server again on the same data directory and the same ports (agents kept
    /// the channel's address).
    pub fn restart(&mut self) {
        let bin = super::thinclone_bin();
        let (port, channel_port) = (self.port, self.channel_port);
        let args: Vec<String> = self
            .args
            .iter()
            .map(|a| match a.as_str() {
                "0.0.0.0:0" => String::new(),
                _ => a.clone(),
            })
            .collect();
        let mut fixed = Vec::new();
        let mut listen_seen = false;
        for a in args {
            if a.is_empty() {
                fixed.push(format!("0.0.0.0:{}", if listen_seen { channel_port } else { port }));
                listen_seen = true;
            } else {
                fixed.push(a);
            }
        }
        self.proc.make = Box::new(move || {
            let mut cmd = Command::new(&bin);
            cmd.args(&fixed);
            cmd
        });
        self.proc.spawn("thinclone listening on ");
        Self::addresses(&mut self.proc);
    }

    /// `thinclone ARGS --url URL --json` as the administrator.
    pub fn cli_output(&self, args: &[&str]) -> Output {
        Command::new(super::thinclone_bin())
            .args(args)
            .args(["--url", &self.url, "--json"])
            .env_remove("THINCLONE_URL")
            .env("THINCLONE_LOG", "warn")
            .env("THINCLONE_TOKEN", &self.token)
            .stdin(Stdio::null())
            .output()
            .expect("running the thinclone CLI")
    }

    /// Its stdout decoded as `T` on success, its stderr on failure.
    pub fn cli<T: DeserializeOwned>(&self, args: &[&str]) -> Result<T, String> {
        let out = self.cli_output(args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        if !out.status.success() {
            return Err(if stderr.is_empty() { format!("exited with {}", out.status) } else { stderr });
        }
        serde_json::from_str(&stdout).map_err(|e| {
            format!("`thinclone {}` printed no JSON of the expected shape ({e}): {stdout}", args.join(" "))
        })
    }

    pub fn ok<T: DeserializeOwned>(&self, args: &[&str]) -> T {
        self.cli(args).unwrap_or_else(|e| {
            panic!("`thinclone {}` failed: {e}\n--- server log ---\n{}", args.join(" "), self.proc.log_tail(40))
        })
    }

    pub fn client(&self) -> client::Client {
        client::Client::new(&self.url).with_token(Some(self.token.clone()))
    }

    /// Waits until `agent` has the status `status` (`online`, `unreachable`, `revoked`),
    /// and returns how long that took.
    pub fn wait_for_agent(&self, agent: &str, status: &str, timeout: Duration) -> Duration {
        let started = Instant::now();
        loop {
            let shown: serde_json::Value = self.ok(&["agent", "show", agent]);
            if shown["status"] == status {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < timeout,
                "agent {agent} is not {status} after {timeout:?}: {shown}\n{}",
                self.proc.log_tail(30)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.proc.stop();
    }
}

/// An agent in a namespace of its own, joined to a server.
pub struct AgentHost {
    pub name: String,
    pub netns: Netns,
    pub data_dir: PathBuf,
    pub proc: Proc,
}

impl AgentHost {
    /// Makes the namespace, joins the server at `server_url` (as the namespace reaches it)
    /// with a fresh enrollment token, and starts the agent; waits until the server shows it
    /// online.
    pub fn join(server: &ControlServer, name: &str, netns: Netns, data_dir: &Path) -> AgentHost {
        fs::create_dir_all(data_dir).unwrap();
        let token: api::agent::Enrollment = server.ok(&["agent", "token", "create"]);
        let url = format!("http://{}:{}", netns.host_ip, server.port);
        let out = netns
            .command(&super::thinclone_bin())
            .args(["agent", "join", "--server", &url, "--token", &token.token, "--name", name, "--data-dir"])
            .arg(data_dir)
            .env("THINCLONE_LOG", "warn")
            .output()
            .unwrap();
        assert!(out.status.success(), "joining as {name}: {}", String::from_utf8_lossy(&out.stderr));
        let bin = super::thinclone_bin();
        let (ns, ip, dir) = (netns.name.clone(), netns.ip.clone(), data_dir.to_owned());
        let make = Box::new(move || {
            let mut cmd = Command::new("nsenter");
            cmd.arg(format!("--net=/run/netns/{ns}"))
                .arg("--")
                .arg(&bin)
                .args(["agent", "run", "--data-dir"])
                .arg(&dir)
                .args(["--clone-listen", &ip]);
            cmd
        });
        let proc = Proc::start(data_dir.with_extension("log"), make, "thinclone agent ");
        let host = AgentHost { name: name.to_owned(), netns, data_dir: data_dir.to_owned(), proc };
        server.wait_for_agent(name, "online", Duration::from_secs(30));
        host
    }

    /// Starts the agent again (after a kill).
    pub fn restart(&mut self) {
        self.proc.spawn("thinclone agent ");
    }
}

impl Drop for AgentHost {
    fn drop(&mut self) {
        self.proc.stop();
        clear_leftovers(&self.data_dir);
    }
}
