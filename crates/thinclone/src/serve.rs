//! `thinclone serve`: the server and an agent for this host in one process, in the
//! foreground, until SIGTERM or SIGINT.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Where images, clones and state live [default: /var/lib/thinclone as root,
    /// $XDG_DATA_HOME/thinclone otherwise].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The address the REST API listens on.
    #[arg(long, default_value = "127.0.0.1:7420")]
    listen: SocketAddr,
    /// The OS user images are prepared as, and, when not root, clones' servers run as
    /// [default: as root, the user the default engine's packages create; yourself otherwise].
    #[arg(long)]
    os_user: Option<String>,
    /// The uids clones' servers run as, one of its own for each clone (its gid is its uid),
    /// as FIRST-LAST; no user of this host may have one. Only as root: otherwise every clone
    /// runs as yourself, and a clone's database superuser can reach every other clone
    /// [default: 2000000000-2000099999 as root].
    #[arg(long, value_name = "FIRST-LAST", value_parser = parse_uid_range)]
    clone_uids: Option<(u32, u32)>,
    /// Who clones' URLs log in as: `superuser`, the image's superuser (CREATE EXTENSION and
    /// everything else inside the clone), or `owner`, a role `app` that owns every database
    /// but is not a superuser, for teams whose users must not be.
    #[arg(long, value_name = "ROLE", default_value = "superuser", value_parser = ["superuser", "owner"])]
    clone_role: String,
    /// Ports for clones' servers, as FIRST-LAST.
    #[arg(long, default_value = "7500-7999", value_parser = parse_range)]
    ports: (u16, u16),
    /// The addresses clones' servers listen on, comma-separated. An address other than
    /// loopback lets clients on other hosts connect, with the clone's password.
    #[arg(long, default_value = "127.0.0.1", value_delimiter = ',')]
    clone_listen: Vec<IpAddr>,
    /// The host name or address clients reach clones at, put in their connection URLs
    /// [default: the first --clone-listen address, or this host's name when that is a
    /// wildcard such as 0.0.0.0].
    #[arg(long)]
    clone_host: Option<String>,
    /// Each clone server's main memory cache.
    #[arg(long, default_value = "64MB")]
    clone_memory: String,
    /// Stop clones' servers and mounts when the server exits. Without it they run on, and
    /// the next start takes them over without a restart.
    #[arg(long)]
    stop_clones_at_exit: bool,
    /// Do not repair clones whose storage or server died (they stay degraded until
    /// `clone start`).
    #[arg(long)]
    no_repair: bool,
    /// Serve the API over TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve plain HTTP on an address other than loopback. Tokens then cross the network in
    /// clear: use it only on a network you trust, or behind a proxy that adds TLS.
    #[arg(long)]
    insecure_http: bool,
    /// A name clients reach the API by (repeatable): requests whose Host header names none
    /// of the server's names are refused, so that a web page cannot drive the server through
    /// DNS rebinding. localhost, loopback addresses, --listen's address and this host's name
    /// are always names of the server.
    #[arg(long = "server-name", value_name = "NAME")]
    server_names: Vec<String>,
    /// How many days the audit log keeps its entries.
    #[arg(long, default_value_t = 90)]
    activity_days: u32,
}

fn parse_range(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s.split_once('-').ok_or("use FIRST-LAST, e.g. 7500-7999")?;
    let (a, b): (u16, u16) = (a.parse().map_err(|e| format!("{e}"))?, b.parse().map_err(|e| format!("{e}"))?);
    if a > b {
        return Err("the first port is after the last".into());
    }
    Ok((a, b))
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
        Some(_) => nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".into()),
        None => "127.0.0.1".into(),
    }
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let data_dir = args.data_dir.unwrap_or_else(default_data_dir);
    make_files_private(&data_dir)?;
    let isolation = agent::Isolation {
        clone_uids: match args.clone_uids {
            Some(_) if !sys::user::running_as_root() => {
                anyhow::bail!("--clone-uids needs root: only root can run clones' servers as uids of their own")
            }
            Some(range) => Some(range),
            None => sys::user::running_as_root().then_some(agent::Isolation::DEFAULT_UIDS),
        },
        clone_role: match args.clone_role.as_str() {
            "owner" => agent::CloneRole::Owner { user: OWNER_ROLE.into() },
            _ => agent::CloneRole::Superuser,
        },
        ..agent::Isolation::default()
    };
    let os_user = match &args.os_user {
        Some(name) => sys::User::lookup(name).with_context(|| "set the OS user clones run as with --os-user")?,
        None if sys::user::running_as_root() => {
            let engine = crate::engines::by_id(crate::engines::DEFAULT).context("the default engine is missing")?;
            let name = crate::engines::service_user(engine.as_ref()).context("pass --os-user")?;
            sys::User::lookup(name).with_context(|| {
                format!("as root, clones' servers run as the OS user `{name}`; install {} or pass --os-user", engine.name())
            })?
        }
        None => sys::User::current(),
    };
    let remote_clients = args.clone_listen.iter().any(|a| !a.is_loopback());
    let host = args.clone_host.clone().unwrap_or_else(|| default_clone_host(&args.clone_listen));
    let engines = crate::engines::all();
    let agent_config = agent::AgentConfig {
        data_dir: data_dir.clone(),
        os_user,
        listen: args.clone_listen.clone(),
        remote_clients,
        host,
        memory: Some(args.clone_memory.clone()),
        mount_program: std::env::current_exe().context("finding the thinclone binary")?,
        engines: engines.clone(),
        size_interval: Duration::from_secs(30),
        supervise_interval: Duration::from_secs(2),
        repair: !args.no_repair,
    };
    let server_config =
        server::ServerConfig { data_dir: data_dir.clone(), ports: args.ports, activity_days: args.activity_days };
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
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let stop_clones = args.stop_clones_at_exit;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        let (agent, server, token_file) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let agent = agent::LocalAgent::open_with(agent_config, isolation)
                .with_context(|| format!("opening data directory {}", data_dir.display()))?;
            let server = server::Server::open(server_config, agent.clone() as Arc<dyn agent::Agent>, engines)
                .with_context(|| format!("opening the catalog in {}", data_dir.display()))?;
            let token_file = server.bootstrap().context("making the first administrator")?;
            Ok((agent, server, token_file))
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
        // Tests and scripts read this line to learn the address (e.g. with --listen :0).
        eprintln!("thinclone listening on {scheme}://{address}");
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            tracing::info!("shutting down");
        };
        match tls {
            None => server::serve(server.clone(), hosts, listener, shutdown).await?,
            Some((cert, key)) => serve_tls(server.clone(), hosts, listener, shutdown, &cert, &key).await?,
        }
        tokio::task::spawn_blocking(move || {
            server.shutdown();
            agent.shutdown(stop_clones);
        })
        .await?;
        Ok(())
    })
}

/// Serves the API over TLS until `shutdown` completes.
async fn serve_tls(
    server: Arc<server::Server>,
    hosts: server::AllowedHosts,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<()> {
    // One crypto provider for the whole process (ring); installing it twice is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
        .await
        .with_context(|| format!("reading the TLS certificate {} and key {}", cert.display(), key.display()))?;
    let handle = axum_server::Handle::new();
    let stopper = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        stopper.graceful_shutdown(Some(Duration::from_secs(10)));
    });
    axum_server::from_tcp_rustls(listener.into_std()?, config)
        .context("serving the API over TLS")?
        .handle(handle)
        .serve(server::app(server, hosts).into_make_service())
        .await
        .context("serving the API over TLS")
}
