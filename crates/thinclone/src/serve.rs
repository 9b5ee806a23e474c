//! `thinclone serve`: the server and an agent for this host in one process, in the
//! foreground, until SIGTERM or SIGINT.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

/// How this host's agent runs: `thinclone serve` and `thinclone agent run`.
#[derive(clap::Args, Debug)]
pub struct AgentOpts {
    /// Where images, clones and state live [default: /var/lib/thinclone as root,
    /// $XDG_DATA_HOME/thinclone otherwise].
    #[arg(long, env = "THINCLONE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The OS user images are prepared as, and, when not root, clones' servers run as
    /// [default: as root, the user the default engine's packages create; yourself otherwise].
    #[arg(long, env = "THINCLONE_OS_USER")]
    os_user: Option<String>,
    /// The uids clones' servers run as, one of its own for each clone (its gid is its uid),
    /// as FIRST-LAST; no user of this host may have one. Only as root: otherwise every clone
    /// runs as yourself, and a clone's database superuser can reach every other clone
    /// [default: 2000000000-2000099999 as root].
    #[arg(long, value_name = "FIRST-LAST", value_parser = parse_uid_range, env = "THINCLONE_CLONE_UIDS")]
    clone_uids: Option<(u32, u32)>,
    /// Who clones' URLs log in as: `superuser`, the image's superuser (CREATE EXTENSION and
    /// everything else inside the clone), or `owner`, a role `app` that owns every database
    /// but is not a superuser, for teams whose users must not be.
    #[arg(long, value_name = "ROLE", default_value = "superuser", value_parser = ["superuser", "owner"], env = "THINCLONE_CLONE_ROLE")]
    clone_role: String,
    /// The addresses clones' servers listen on, comma-separated. An address other than
    /// loopback lets clients on other hosts connect, with the clone's password.
    #[arg(long, default_value = "127.0.0.1", value_delimiter = ',', env = "THINCLONE_CLONE_LISTEN")]
    clone_listen: Vec<IpAddr>,
    /// The host name or address clients reach clones at, put in their connection URLs
    /// [default: the first --clone-listen address, or this host's name when that is a
    /// wildcard such as 0.0.0.0].
    #[arg(long, env = "THINCLONE_CLONE_HOST")]
    clone_host: Option<String>,
    /// Each clone server's main memory cache.
    #[arg(long, default_value = "64MB", env = "THINCLONE_CLONE_MEMORY")]
    clone_memory: String,
    /// Stop clones' servers and mounts when thinclone exits. Without it they run on, and
    /// the next start takes them over without a restart.
    #[arg(long, env = "THINCLONE_STOP_CLONES_AT_EXIT")]
    stop_clones_at_exit: bool,
    /// Do not repair clones whose storage or server died (they stay degraded until
    /// `clone start`).
    #[arg(long, env = "THINCLONE_NO_REPAIR")]
    no_repair: bool,
    /// Seconds a stopped cowfs clone keeps its mount, so that a start soon after finds its
    /// files in the kernel's cache (at most 16 clones at once); 0 unmounts at stop.
    #[arg(long, value_name = "SECONDS", default_value_t = 900, env = "THINCLONE_KEEP_STOPPED_MOUNTS")]
    keep_stopped_mounts: u64,
    /// Mount cowfs clones with the kernel's writeback cache: their servers' writes return
    /// from memory, as on a local disk, so they run faster, but when the clones' disk is
    /// full a server crashes at its next fsync (it comes back with every committed
    /// transaction once there is room) instead of failing the statement that needed space.
    /// For hosts whose disk will not fill. Takes effect at each clone's next mount.
    #[arg(long, env = "THINCLONE_COWFS_WRITEBACK_CACHE")]
    cowfs_writeback_cache: bool,
}

/// How the server part runs: `thinclone serve` and `thinclone server`.
#[derive(clap::Args, Debug)]
pub struct ServerOpts {
    /// The address the REST API listens on.
    #[arg(long, default_value = "127.0.0.1:7420", env = "THINCLONE_LISTEN")]
    listen: SocketAddr,
    /// Ports for clones' servers, as FIRST-LAST (on each agent).
    #[arg(long, default_value = "7500-7999", value_parser = parse_range, env = "THINCLONE_PORTS")]
    ports: (u16, u16),
    /// Serve the API over TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, value_name = "PEM", requires = "tls_key", env = "THINCLONE_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert", env = "THINCLONE_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Serve plain HTTP on an address other than loopback. Tokens then cross the network in
    /// clear: use it only on a network you trust, or behind a proxy that adds TLS.
    #[arg(long, env = "THINCLONE_INSECURE_HTTP")]
    insecure_http: bool,
    /// A name clients reach the API by (repeatable): requests whose Host header names none
    /// of the server's names are refused, so that a web page cannot drive the server through
    /// DNS rebinding. localhost, loopback addresses, --listen's address and this host's name
    /// are always names of the server.
    #[arg(long = "server-name", value_name = "NAME", env = "THINCLONE_SERVER_NAMES", value_delimiter = ',')]
    server_names: Vec<String>,
    /// How many days the audit log keeps its entries.
    #[arg(long, default_value_t = 90, env = "THINCLONE_ACTIVITY_DAYS")]
    activity_days: u32,
    /// Stop a clone no client has been connected to for this long (e.g. 2h; 0: never),
    /// unless the clone has its own idle policy (`clone idle`).
    #[arg(long, default_value = "0", value_parser = humantime::parse_duration, env = "THINCLONE_IDLE_STOP_AFTER")]
    idle_stop_after: std::time::Duration,
    /// Remove a clone no client has been connected to for this long (e.g. 7d; 0: never),
    /// unless it is protected or has its own idle policy.
    #[arg(long, default_value = "0", value_parser = humantime::parse_duration, env = "THINCLONE_IDLE_REMOVE_AFTER")]
    idle_remove_after: std::time::Duration,
    /// How long before a clone's expiry its `clone.expiring` event goes out.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration, env = "THINCLONE_EXPIRY_WARNING")]
    expiry_warning: std::time::Duration,
    /// A name agents dial the agent channel by (repeatable), put in the channel's
    /// certificate; the first is the one enrolled agents are given [default: --channel-listen's
    /// address when it is not a wildcard, else this host's name].
    #[arg(long = "channel-name", value_name = "NAME", env = "THINCLONE_CHANNEL_NAMES", value_delimiter = ',')]
    channel_names: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    agent: AgentOpts,
    #[command(flatten)]
    server: ServerOpts,
    /// Also accept agents on other hosts, on this address (mutual TLS): see `thinclone
    /// server`. Without it, this host's agent is the only one.
    #[arg(long, value_name = "ADDR", env = "THINCLONE_CHANNEL_LISTEN")]
    channel_listen: Option<SocketAddr>,
}

#[derive(clap::Args, Debug)]
pub struct ServerArgs {
    /// Where the catalog and the agents' certificate authority live [default:
    /// /var/lib/thinclone as root, $XDG_DATA_HOME/thinclone otherwise].
    #[arg(long, env = "THINCLONE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    server: ServerOpts,
    /// The address of the agent channel, which agents dial (mutual TLS).
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:7421", env = "THINCLONE_CHANNEL_LISTEN")]
    channel_listen: SocketAddr,
}

#[derive(clap::Args, Debug)]
pub struct AgentRunArgs {
    #[command(flatten)]
    agent: AgentOpts,
}

fn parse_range(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s.split_once('-').ok_or("use FIRST-LAST, e.g. 7500-7999")?;
    let (a, b): (u16, u16) = (a.parse().map_err(|e| format!("{e}"))?, b.parse().map_err(|e| format!("{e}"))?);
    if a > b {
        return Err("the first port is after the last".into());
    }
    Ok((a, b))
}

/// Clones' ports inside the kernel's range for outgoing connections can be taken at any
/// moment by one of them (a client of another clone, an HTTP call): the clone's server then
/// fails to start with "Address already in use". Said once, at start.
fn warn_if_ephemeral((first, last): (u16, u16)) {
    if let Some((low, high)) = sys::procfs::ephemeral_ports() {
        if first <= high && low <= last {
            tracing::warn!(
                "clone ports {first}-{last} overlap the kernel's ports for outgoing connections, {low}-{high} \
                 (net.ipv4.ip_local_port_range): a clone may then fail to start with \"Address already in use\". \
                 Choose --ports outside that range, or reserve them with net.ipv4.ip_local_reserved_ports"
            );
        }
    }
}

fn parse_uid_range(s: &str) -> Result<(u32, u32), String> {
    let (a, b) = s.split_once('-').ok_or("use FIRST-LAST, e.g. 2000000000-2000099999")?;
    let (a, b): (u32, u32) = (a.parse().map_err(|e| format!("{e}"))?, b.parse().map_err(|e| format!("{e}"))?);
    if a == 0 || a > b {
        return Err("give FIRST-LAST with 0 < FIRST <= LAST".into());
    }
    Ok((a, b))
}

/// The name of the role clones' URLs log in as with `--clone-role owner`.
const OWNER_ROLE: &str = "app";

/// Files this process makes are private unless made otherwise on purpose (the state
/// database with its passwords, tokens, logs): clones' OS users and other local users read
/// none of them. Those that must be wider (directories clones pass through) set their modes
/// themselves. A state database made before this is made private too.
fn make_files_private(data_dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    for name in ["state.db", "state.db-wal", "state.db-shm"] {
        match std::fs::set_permissions(data_dir.join(name), std::fs::Permissions::from_mode(0o600)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("making {} private", data_dir.join(name).display()));
            }
            _ => {}
        }
    }
    Ok(())
}

pub fn default_data_dir() -> PathBuf {
    if sys::user::running_as_root() {
        return PathBuf::from("/var/lib/thinclone");
    }
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("thinclone")
}

/// The address put in clones' URLs when none is given.
fn default_clone_host(listen: &[IpAddr]) -> String {
    match listen.first() {
        Some(a) if !a.is_unspecified() => match a {
            IpAddr::V6(v6) => format!("[{v6}]"),
            IpAddr::V4(v4) => v4.to_string(),
        },
        Some(_) => {
            nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "localhost".into())
        }
        None => "127.0.0.1".into(),
    }
}

/// The agent of this host, opened on its data directory (recovering what a crash left).
fn open_agent(opts: &AgentOpts) -> anyhow::Result<Arc<agent::LocalAgent>> {
    let data_dir = opts.data_dir.clone().unwrap_or_else(default_data_dir);
    make_files_private(&data_dir)?;
    let isolation = agent::Isolation {
        clone_uids: match opts.clone_uids {
            Some(_) if !sys::user::running_as_root() => {
                anyhow::bail!("--clone-uids needs root: only root can run clones' servers as uids of their own")
            }
            Some(range) => Some(range),
            None => sys::user::running_as_root().then_some(agent::Isolation::DEFAULT_UIDS),
        },
        clone_role: match opts.clone_role.as_str() {
            "owner" => agent::CloneRole::Owner { user: OWNER_ROLE.into() },
            _ => agent::CloneRole::Superuser,
        },
        ..agent::Isolation::default()
    };
    let os_user = match &opts.os_user {
        Some(name) => sys::User::lookup(name).with_context(|| "set the OS user clones run as with --os-user")?,
        None if sys::user::running_as_root() => {
            let engine = crate::engines::by_id(crate::engines::DEFAULT).context("the default engine is missing")?;
            let name = crate::engines::service_user(engine.as_ref()).context("pass --os-user")?;
            sys::User::lookup(name).with_context(|| {
                format!(
                    "as root, clones' servers run as the OS user `{name}`; install {} or pass --os-user",
                    engine.name()
                )
            })?
        }
        None => sys::User::current(),
    };
    let remote_clients = opts.clone_listen.iter().any(|a| !a.is_loopback());
    let host = opts.clone_host.clone().unwrap_or_else(|| default_clone_host(&opts.clone_listen));
    let config = agent::AgentConfig {
        data_dir: data_dir.clone(),
        os_user,
        listen: opts.clone_listen.clone(),
        remote_clients,
        host,
        memory: Some(opts.clone_memory.clone()),
        mount_program: std::env::current_exe().context("finding the thinclone binary")?,
        engines: crate::engines::all(),
        size_interval: Duration::from_secs(30),
        supervise_interval: Duration::from_secs(2),
        repair: !opts.no_repair,
        keep_mounts: Duration::from_secs(opts.keep_stopped_mounts),
        cowfs_writeback_cache: opts.cowfs_writeback_cache,
    };
    agent::LocalAgent::open_with(config, isolation)
        .with_context(|| format!("opening data directory {}", data_dir.display()))
}

/// The names agents dial the channel by: those given, else the listening address, else this
/// host's name.
fn channel_names(given: &[String], listen: SocketAddr) -> Vec<String> {
    if !given.is_empty() {
        return given.to_vec();
    }
    if !listen.ip().is_unspecified() {
        return vec![listen.ip().to_string()];
    }
    let hostname =
        nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "localhost".into());
    vec![hostname]
}

/// The signal that stops thinclone: SIGTERM or SIGINT.
async fn stop_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
}

/// `thinclone serve`: the server and this host's agent in one process.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let data_dir = args.agent.data_dir.clone().unwrap_or_else(default_data_dir);
    let stop_clones = args.agent.stop_clones_at_exit;
    let opts = args.agent;
    let local_location = data_dir.join("images");
    run_server(data_dir, args.server, args.channel_listen, Some(local_location), move || {
        let agent = open_agent(&opts)?;
        let local = api::Name::new(server::LOCAL).expect("a valid name");
        let stop = agent.clone();
        Ok((
            Some((local, agent as Arc<dyn agent::Agent>)),
            Box::new(move || stop.shutdown(stop_clones)) as Box<dyn FnOnce() + Send>,
        ))
    })
}

/// `thinclone server`: the control plane alone; agents on the database hosts do the work.
pub fn run_control(args: ServerArgs) -> anyhow::Result<()> {
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    make_files_private(&data_dir)?;
    std::fs::create_dir_all(&data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    // One server per data directory.
    let lock = sys::lock::DirLock::acquire(&data_dir).map_err(|e| anyhow::anyhow!("thinclone cannot start: {e}"))?;
    let result = run_server(data_dir, args.server, Some(args.channel_listen), None, || {
        Ok((None, Box::new(|| {}) as Box<dyn FnOnce() + Send>))
    });
    drop(lock);
    result
}

type Embedded = (Option<(api::Name, Arc<dyn agent::Agent>)>, Box<dyn FnOnce() + Send>);

/// Runs the REST API (and the agent channel, when `channel_listen` is given) over a server
/// whose embedded agent, if any, `open` makes, until SIGTERM or SIGINT.
fn run_server(
    data_dir: PathBuf,
    args: ServerOpts,
    channel_listen: Option<SocketAddr>,
    local_location: Option<PathBuf>,
    open: impl FnOnce() -> anyhow::Result<Embedded> + Send + 'static,
) -> anyhow::Result<()> {
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
        _ => None,
    };
    if tls.is_none() && !args.listen.ip().is_loopback() && !args.insecure_http {
        anyhow::bail!(
            "refusing to serve plain HTTP on {}, which is not a loopback address: tokens would cross the network \
             in clear. Give --tls-cert and --tls-key, or --insecure-http if the network is trusted",
            args.listen
        );
    }
    let hostname = nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok());
    let mut names: Vec<String> = ["localhost", "127.0.0.1", "[::1]"].iter().map(|s| s.to_string()).collect();
    if !args.listen.ip().is_unspecified() {
        names.push(match args.listen.ip() {
            IpAddr::V6(v6) => format!("[{v6}]"),
            IpAddr::V4(v4) => v4.to_string(),
        });
    }
    names.extend(hostname);
    names.extend(args.server_names.iter().cloned());
    let hosts = server::AllowedHosts(names);
    let dialled = channel_listen.map(|l| channel_names(&args.channel_names, l)).unwrap_or_default();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        let channel = match channel_listen {
            Some(address) => Some(
                tokio::net::TcpListener::bind(address)
                    .await
                    .with_context(|| format!("listening for agents on {address}"))?,
            ),
            None => None,
        };
        // What enrolled agents are told to dial: the first name, on the port bound.
        let channel_address = match (&channel, dialled.first()) {
            (Some(listener), Some(name)) => {
                let port = listener.local_addr()?.port();
                Some(match name.parse::<std::net::Ipv6Addr>() {
                    Ok(_) => format!("[{name}]:{port}"),
                    Err(_) => format!("{name}:{port}"),
                })
            }
            _ => None,
        };
        warn_if_ephemeral(args.ports);
        let server_config = server::ServerConfig {
            data_dir: data_dir.clone(),
            ports: args.ports,
            activity_days: args.activity_days,
            local_location,
            channel_address,
            lifecycle: server::LifecycleConfig {
                idle_stop_after: args.idle_stop_after.as_secs(),
                idle_remove_after: args.idle_remove_after.as_secs(),
                expiry_warning: args.expiry_warning.as_secs(),
            },
        };
        let hub = server::hub::Hub::new();
        let engines = crate::engines::all();
        let opened_hub = hub.clone();
        let (server, stop_agent, token_file) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let (embedded, stop_agent) = open()?;
            let fleet = server::Fleet::new(embedded, opened_hub);
            let server = server::Server::open(server_config, fleet, engines, &dialled)
                .with_context(|| format!("opening the catalog in {}", data_dir.display()))?;
            let token_file = server.bootstrap().context("making the first administrator")?;
            Ok((server, stop_agent, token_file))
        })
        .await??;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let address = listener.local_addr()?;
        if let Some(path) = token_file {
            eprintln!(
                "thinclone: made the administrator `admin`; its token is in {} (readable by this user only). \
                 Sign in with: thinclone login --url {scheme}://{address} --token-file {}",
                path.display(),
                path.display()
            );
        }
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        if let Some(channel) = channel {
            let weak = Arc::downgrade(&server);
            let authenticate: server::hub::Authenticate =
                Arc::new(move |fingerprint: &str| weak.upgrade().and_then(|s| s.authenticate_agent(fingerprint)));
            let tls = server.channel_tls().context("the agent channel's TLS")?;
            // Tests and scripts read this line to learn the channel's address.
            eprintln!("thinclone agent channel on {}", channel.local_addr()?);
            tokio::spawn(hub.clone().serve(channel, tls, authenticate, stop_rx));
        }
        // Tests and scripts read this line to learn the address (e.g. with --listen :0).
        eprintln!("thinclone listening on {scheme}://{address}");
        match tls {
            None => server::serve(server.clone(), hosts, listener, stop_signal()).await?,
            Some((cert, key)) => server::serve_tls(server.clone(), hosts, listener, stop_signal(), &cert, &key)
                .await
                .context("serving the API over TLS")?,
        }
        // The channel's tasks may have ended already; there is nobody else to tell.
        let _ = stop_tx.send(true);
        tokio::task::spawn_blocking(move || {
            server.shutdown();
            stop_agent();
        })
        .await?;
        Ok(())
    })
}

/// `thinclone agent run`: this host's agent, connected to the server it joined, until
/// SIGTERM or SIGINT.
pub fn run_agent(args: AgentRunArgs) -> anyhow::Result<()> {
    let data_dir = args.agent.data_dir.clone().unwrap_or_else(default_data_dir);
    let channel = agent::enroll::load(&data_dir)?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let stop_clones = args.agent.stop_clones_at_exit;
    let local = open_agent(&args.agent)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let name = channel.name.clone();
    let address = channel.address.clone();
    runtime.block_on(async move {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let serving = tokio::spawn(agent::channel::run(local.clone() as Arc<dyn agent::Agent>, channel, stop_rx));
        // Tests and scripts read this line.
        eprintln!("thinclone agent {name} serving the server at {address}");
        stop_signal().await;
        // The channel may have ended already; it logs its own errors, and a panic in it is
        // no reason not to stop the clones below.
        let _ = stop_tx.send(true);
        let _ = serving.await;
        tokio::task::spawn_blocking(move || local.shutdown(stop_clones)).await?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Clones' URLs carry an address clients can reach: the one listened on, or this host's
    /// name when that is a wildcard (never 0.0.0.0 or ::), loopback when nothing is given.
    #[test]
    fn clones_urls_never_carry_a_wildcard_address() {
        let host = |addrs: &[&str]| default_clone_host(&addrs.iter().map(|a| a.parse().unwrap()).collect::<Vec<_>>());
        assert_eq!(host(&[]), "127.0.0.1");
        assert_eq!(host(&["10.1.2.3", "127.0.0.1"]), "10.1.2.3");
        assert_eq!(host(&["::1"]), "[::1]");
        let name = nix::unistd::gethostname().unwrap().into_string().unwrap();
        for wildcard in ["0.0.0.0", "::"] {
            let chosen = host(&[wildcard]);
            assert_eq!(chosen, name, "{wildcard}");
            assert!(chosen != "0.0.0.0" && chosen != "[::]");
        }
    }
}
