//! `thinclone mount`: serve a cowfs layer directory over an image in the foreground.
//!
//! Other tooling drives this command, so its interface stays as it is:
//! `thinclone mount --image DIR --layer DIR MOUNTPOINT [--owner USER]`; options are only
//! added (`--owner UID:GID`, `--nosuid`, `--nodev`).
//!
//! While mounted, it takes requests for checkpoints of the live tree on the control socket
//! `LAYER_DIR/control` (`cowfs::checkpoint_mounted`; cowfs's `mount` serves it).

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
    /// Present the image's files as owned by this user and their primary group: a name, a
    /// uid, or UID:GID (numbers that need no entry in the user database; a uid without one
    /// and without a GID gets the gid equal to it).
    #[arg(long, value_name = "USER|UID[:GID]")]
    owner: Option<String>,
    /// Mount with nosuid: set-user-id and set-group-id bits of the files take no effect.
    #[arg(long)]
    nosuid: bool,
    /// Mount with nodev: device files on the mount cannot be opened as devices.
    #[arg(long)]
    nodev: bool,
    /// Worker threads serving requests.
    #[arg(long, default_value_t = cowfs::MountConfig::default().threads)]
    threads: usize,
    /// Do not let the kernel cache writes: each write reaches the layer before write(2)
    /// returns, so a full disk is ENOSPC at the write, not at a later fsync (slower; what
    /// the agent mounts clones with unless it runs with --cowfs-writeback-cache).
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
        nosuid: args.nosuid,
        nodev: args.nodev,
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

/// Resolves `--owner` to a uid and gid: `UID:GID` as numbers; a user name, or a uid with an
/// entry in the user database, to its uid and primary gid; a uid without one to itself twice.
fn lookup_user(owner: &str) -> anyhow::Result<(u32, u32)> {
    let number = |s: &str| s.parse::<u32>().with_context(|| format!("--owner {owner}: {s:?} is not a number"));
    if let Some((uid, gid)) = owner.split_once(':') {
        return Ok((number(uid)?, number(gid)?));
    }
    match sys::User::lookup(owner) {
        Ok(user) => Ok((user.uid, user.gid)),
        Err(e) => match owner.parse::<u32>() {
            Ok(uid) => Ok((uid, uid)),
            Err(_) => Err(e.into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::lookup_user;

    #[test]
    fn owners_by_name_uid_and_uid_gid() {
        assert_eq!(lookup_user("root").unwrap(), (0, 0));
        assert_eq!(lookup_user("0").unwrap(), (0, 0));
        assert_eq!(lookup_user("2000000007").unwrap(), (2_000_000_007, 2_000_000_007));
        assert_eq!(lookup_user("2000000007:42").unwrap(), (2_000_000_007, 42));
        assert!(lookup_user("no-such-user-here").is_err());
        assert!(lookup_user("1:x").is_err());
    }
}
