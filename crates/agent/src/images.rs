//! Making images: a copy of a stopped data directory or of a live server, prepared by its
//! engine so that clones start without recovery, then sealed under `images/<name>`.
//!
//! The copy is made at `images/<name>.partial` and renamed into place only once prepared, so
//! an image directory is always whole; a failure or a crash leaves nothing of it (recovery
//! removes `.partial` directories).
//!
//! A sealed image belongs to the agent's own user (root), with its directory private to it:
//! no clone's OS identity can write to it, or even read it except through the clone's own
//! storage (a cowfs mount, or a copy).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use api::Name;
use sys::tree::CopyData;

use crate::local::LocalAgent;
use crate::{AgentError, ErrorKind, ImageSource, MadeImage, Result, SourceFacts, SourceUrl};

fn bad(message: impl Into<String>) -> AgentError {
    AgentError::new(ErrorKind::BadRequest, message)
}

/// Bytes kept free on the agent's filesystem beyond what a copy needs, so that running
/// clones are not starved by an image being made.
const COPY_RESERVE: u64 = 256 << 20;

/// Refuses a copy of `bytes` when the agent's filesystem has not room for it and the reserve.
pub(crate) fn check_room(agent: &LocalAgent, what: &str, bytes: u64) -> Result<()> {
    let free = sys::space::free_bytes(&agent.config().data_dir)
        .map_err(|e| AgentError::internal(format!("measuring free space: {e}")))?;
    let needed = bytes + bytes / 20 + COPY_RESERVE;
    if free < needed {
        return Err(AgentError::new(
            ErrorKind::DiskFull,
            format!(
                "not enough free disk for {what}: it needs about {} MiB and {} has {} MiB free; free space or \
                 use another data directory",
                needed >> 20,
                agent.config().data_dir.display(),
                free >> 20
            ),
        ));
    }
    Ok(())
}

pub(crate) fn check_source_dir(agent: &LocalAgent, dir: &Path, snapshot: bool) -> Result<SourceFacts> {
    if !dir.is_absolute() {
        return Err(bad(format!("the source directory {} is not an absolute path", dir.display())));
    }
    let canonical =
        fs::canonicalize(dir).map_err(|e| bad(format!("the source directory {}: {e}", dir.display())))?;
    if !canonical.is_dir() {
        return Err(bad(format!("the source {} is not a directory", dir.display())));
    }
    let own = fs::canonicalize(&agent.config().data_dir).unwrap_or_else(|_| agent.config().data_dir.clone());
    if canonical.starts_with(&own) || own.starts_with(&canonical) {
        return Err(bad(format!(
            "the source {} overlaps thinclone's own data directory {}; give a database's data directory",
            canonical.display(),
            own.display()
        )));
    }
    let mut reasons = Vec::new();
    for engine in &agent.config().engines {
        match engine.detect(&canonical) {
            Ok(version) => {
                engine.check_installed(&version).map_err(|e| bad(e.to_string()))?;
                if !snapshot {
                    engine.check_not_in_use(&canonical).map_err(|e| AgentError::new(ErrorKind::Conflict, e.to_string()))?;
                }
                check_room(agent, &format!("a copy of {}", canonical.display()), sys::tree::size(&canonical).bytes)?;
                return Ok(SourceFacts {
                    engine: engine.id().to_owned(),
                    version: Some(version),
                    shown: canonical.display().to_string(),
                });
            }
            Err(e) => reasons.push(e.to_string()),
        }
    }
    Err(bad(reasons.join("; ")))
}

pub(crate) fn check_source_url(agent: &LocalAgent, url: &SourceUrl) -> Result<SourceFacts> {
    let engine = agent.config().engines.iter().find(|e| e.accepts_url(url)).ok_or_else(|| {
        let known: Vec<&str> = agent.config().engines.iter().map(|e| e.id()).collect();
        bad(format!("{}:// is not the URL scheme of a database engine thinclone knows ({})", url.scheme(), known.join(", ")))
    })?;
    engine.probe(url).map_err(|e| AgentError::from_engine("checking the source", e))?;
    Ok(SourceFacts { engine: engine.id().to_owned(), version: None, shown: url.shown() })
}

pub(crate) fn make_image(
    agent: &LocalAgent,
    name: &Name,
    source: &ImageSource,
    progress: &(dyn Fn(u64, u64) + Sync),
    step: &(dyn Fn(&str) + Sync),
) -> Result<MadeImage> {
    let partial = agent.partial_image_dir(name);
    let run_dir = agent.image_run_dir(name);
    let made = make(agent, name, source, progress, step);
    if made.is_err() {
        for dir in [&partial, &run_dir] {
            if let Err(e) = sys::tree::remove(dir) {
                tracing::error!(image = %name, "removing {} after a failure: {e}", dir.display());
            }
        }
    }
    made
}

fn make(
    agent: &LocalAgent,
    name: &Name,
    source: &ImageSource,
    progress: &(dyn Fn(u64, u64) + Sync),
    step: &(dyn Fn(&str) + Sync),
) -> Result<MadeImage> {
    let config = agent.config();
    let user = &config.os_user;
    let partial = agent.partial_image_dir(name);
    let run_dir = agent.image_run_dir(name);
    let io = |what: &'static str| {
        move |e: std::io::Error| {
            if e.raw_os_error() == Some(libc::ENOSPC) {
                AgentError::new(ErrorKind::DiskFull, format!("{what}: the disk is full"))
            } else {
                AgentError::internal(format!("{what}: {e}"))
            }
        }
    };
    sys::tree::remove(&partial).map_err(io("clearing the image's directory"))?;
    let _ = sys::tree::remove(&run_dir);
    let engine = match source {
        ImageSource::Dir { path: dir, snapshot } => {
            let facts = check_source_dir(agent, dir, *snapshot)?;
            let engine = agent.engine(&facts.engine)?;
            let total = sys::tree::size(dir).bytes;
            progress(0, total);
            step("copying");
            copy_with_progress(dir, &partial, total, progress).map_err(|e| {
                if e.is_disk_full() {
                    AgentError::new(
                        ErrorKind::DiskFull,
                        format!("copying {}: the disk is full; free space and try again", dir.display()),
                    )
                } else {
                    bad(format!("copying {}: {e}", dir.display()))
                }
            })?;
            engine
        }
        ImageSource::Url(url) => {
            let facts = check_source_url(agent, url)?;
            let engine = agent.engine(&facts.engine)?;
            fs::create_dir(&partial).map_err(io("making the image's directory"))?;
            std::os::unix::fs::chown(&partial, Some(user.uid), Some(user.gid))
                .map_err(io("giving the image's directory to the database's user"))?;
            step("copying the live server");
            engine.copy_live(url, &partial, user, &mut |done, total| progress(done, total)).map_err(|e| {
                if e.is_disk_full() {
                    AgentError::new(ErrorKind::DiskFull, format!("{e}; free space and try again"))
                } else {
                    AgentError::from_engine("copying the live server", e)
                }
            })?;
            engine
        }
    };
    // The database's programs refuse a data directory that others can read, or that is not
    // their user's.
    fs::set_permissions(&partial, fs::Permissions::from_mode(0o700)).map_err(io("making the copy private"))?;
    sys::tree::chown(&partial, user.uid, user.gid).map_err(io("giving the copy to the database's user"))?;
    fs::create_dir_all(&run_dir).map_err(io("making the preparing server's directory"))?;
    step("preparing");
    let facts = engine.prepare(&partial, &run_dir, user).map_err(|e| {
        if e.is_disk_full() {
            AgentError::new(ErrorKind::DiskFull, format!("{e}; free space and try again"))
        } else {
            AgentError::new(ErrorKind::BadRequest, format!("the copy would not start: {e}"))
        }
    })?;
    let _ = sys::tree::remove(&run_dir);
    // Sealed: the agent's own user owns every file, and the directory is private to it.
    let me = sys::User::current();
    sys::tree::chown(&partial, me.uid, me.gid).map_err(io("sealing the image"))?;
    fs::set_permissions(&partial, fs::Permissions::from_mode(0o700)).map_err(io("sealing the image"))?;
    let final_dir = agent.image_dir(name);
    sys::crashsafe::rename(&partial, &final_dir).map_err(io("sealing the image"))?;
    let size = sys::tree::size(&final_dir);
    Ok(MadeImage {
        engine: engine.id().to_owned(),
        version: facts.version,
        superuser: facts.superuser,
        logical_bytes: size.bytes,
        stored_bytes: sys::tree::disk_usage(&final_dir).unwrap_or(size.bytes),
        file_count: size.files,
    })
}

/// Copies a tree with `cp -a` while reporting the bytes copied so far.
fn copy_with_progress(
    from: &Path,
    to: &Path,
    total: u64,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<(), sys::Error> {
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                progress(sys::tree::size(to).bytes, total);
                std::thread::sleep(Duration::from_millis(300));
            }
        });
        let copied = sys::tree::copy(from, to, CopyData::Copy, None);
        done.store(true, Ordering::Relaxed);
        if copied.is_ok() {
            progress(total, total);
        }
        copied
    })
}
