//! `thinclone mount`: serve a cowfs layer directory over an image in the foreground.
//!
//! Other tooling drives this command, so its interface stays as it is:
//! `thinclone mount --image DIR --layer DIR MOUNTPOINT [--owner USER]`.

use std::path::PathBuf;

use anyhow::Context;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

#[derive(clap::Args)]
pub struct MountArgs {
    /// The image: a directory that is never modified.
    #[arg(long)]
    image: PathBuf,
    /// The layer directory holding this mount's changes; created when missing.
    #[arg(long)]
    layer: PathBuf,
    /// Where to mount.
    mountpoint: PathBuf,
    /// Present the image's files as owned by this user (name or uid) and their primary group.
    #[arg(long)]
    owner: Option<String>,
    /// Worker threads serving requests.
    #[arg(long, default_value_t = cowfs::MountConfig::default().threads)]
    threads: usize,
    /// Do not let the kernel cache writes (slower; for debugging).
    #[arg(long)]
    no_writeback_cache: bool,
}

pub fn run(args: MountArgs) -> anyhow::Result<()> {
    // Signals are taken by a thread of ours; block them before any other thread starts.
    let mut signals = Signals::new([SIGTERM, SIGINT]).context("installing signal handlers")?;
    let owner = args.owner.as_deref().map(lookup_user).transpose()?;

    if cowfs::unmount_stale(&args.mountpoint).context("cleaning up a mount left by a crashed server")? {
        tracing::warn!(mountpoint = %args.mountpoint.display(), "detached a mount whose server had died");
    }
    let stack = cowfs::LayerStack::open(&args.layer, &args.image)
        .with_context(|| format!("opening layer directory {}", args.layer.display()))?;
    let fs = cowfs::CowFs::new(stack, cowfs::Options { owner }).context("replaying the layers")?;
    let config = cowfs::MountConfig {
        threads: args.threads,
        writeback_cache: !args.no_writeback_cache,
        fsname: format!("thinclone:{}", args.layer.display()),
        ..cowfs::MountConfig::default()
    };
    let mut mounted = cowfs::mount(fs, &args.mountpoint, &config)
        .with_context(|| format!("mounting at {}", args.mountpoint.display()))?;
    let mut unmounter = mounted.unmounter();
    let handle = signals.handle();
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            tracing::info!(signal, "unmounting");
            if let Err(e) = unmounter.unmount() {
                tracing::error!("could not unmount: {e}");
            }
        }
    });
    tracing::info!(mountpoint = %args.mountpoint.display(), image = %args.image.display(), layer = %args.layer.display(), "mounted");
    mounted.run().context("serving the mount")?;
    handle.close();
    tracing::info!("unmounted");
    Ok(())
}

/// Resolves a user name or numeric uid to its uid and primary gid.
fn lookup_user(user: &str) -> anyhow::Result<(u32, u32)> {
    let user = sys::User::lookup(user)?;
    Ok((user.uid, user.gid))
}
