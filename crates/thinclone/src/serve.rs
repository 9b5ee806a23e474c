//! `thinclone serve`: the daemon in the foreground. It plays both the control role (state and
//! the REST API) and the local agent (mounts and servers), until SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Where images, clones and state live [default: /var/lib/thinclone as root,
    /// $XDG_DATA_HOME/thinclone otherwise].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The address the REST API listens on.
    #[arg(long, default_value = "127.0.0.1:7420")]
    listen: SocketAddr,
    /// The OS user clones' servers run as [default: postgres as root, yourself otherwise].
    #[arg(long)]
    os_user: Option<String>,
    /// Ports for clones' servers, as FIRST-LAST.
    #[arg(long, default_value = "7500-7999", value_parser = parse_range)]
    ports: (u16, u16),
    /// The address clones' servers listen on.
    #[arg(long, default_value = "127.0.0.1")]
    clone_listen: String,
    /// shared_buffers of each clone's server.
    #[arg(long, default_value = "64MB")]
    shared_buffers: String,
}

fn parse_range(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s.split_once('-').ok_or("use FIRST-LAST, e.g. 7500-7999")?;
    let (a, b): (u16, u16) = (a.parse().map_err(|e| format!("{e}"))?, b.parse().map_err(|e| format!("{e}"))?);
    if a > b {
        return Err("the first port is after the last".into());
    }
    Ok((a, b))
}

pub fn default_data_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/thinclone");
    }
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("thinclone")
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let data_dir = args.data_dir.unwrap_or_else(default_data_dir);
    let os_user = args.os_user.unwrap_or_else(|| {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            "postgres".into()
        } else {
            pg::RunAs::current().name
        }
    });
    let config = daemon::Config {
        data_dir: data_dir.clone(),
        ports: args.ports,
        listen_address: args.clone_listen,
        os_user,
        shared_buffers: args.shared_buffers,
        program: std::env::current_exe().context("finding the thinclone binary")?,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        let daemon = tokio::task::spawn_blocking(move || daemon::Daemon::open(config))
            .await?
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("opening data directory {}", data_dir.display()))?;
        // Tests and scripts read this line to learn the address (e.g. with --listen :0).
        eprintln!("thinclone listening on http://{}", listener.local_addr()?);
        tracing::info!(data_dir = %data_dir.display(), "serving");
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            tracing::info!("shutting down");
        };
        daemon::serve(daemon.clone(), listener, shutdown).await?;
        tokio::task::spawn_blocking(move || daemon.shutdown()).await?;
        Ok(())
    })
}
