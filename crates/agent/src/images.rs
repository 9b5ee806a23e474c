//! Making images: a copy of a stopped data directory or of a live server, prepared by its
//! engine so that clones start without recovery, then sealed under `images/<name>`.
//!
//! Images are kept in a location (api::agent::ImagePlace): a directory of this host, or a
//! share that other agents see too. The copy is made at `<location>/<name>.partial` and
//! renamed into place only once prepared, so an image directory is always whole; a failure or
//! a crash leaves nothing of it. While a copy runs, `run/images/<name>.job` names its
//! `.partial` directory, so that recovery after a crash removes it even in a location the
//! agent would not otherwise look at.
//!
//! A sealed image belongs to the agent's own user (root), with its directory private to it:
//! no clone's OS identity can write to it, or even read it except through the clone's own
//! storage (a cowfs mount, or a copy).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use api::Name;
use sys::tree::CopyData;

use crate::local::LocalAgent;
use crate::{
    AgentError, AgentErrorExt, ErrorKind, ImagePlace, ImageSource, ImageTransform, MadeImage, RecoveryTarget, Result,
    SourceFacts, SourceUrl,
};

fn bad(message: impl Into<String>) -> AgentError {
    AgentError::new(ErrorKind::BadRequest, message)
}

/// Bytes kept free on the agent's filesystem beyond what a copy needs, so that running
/// clones are not starved by an image being made.
const COPY_RESERVE: u64 = 256 << 20;

/// Refuses a copy of `bytes` when the agent's filesystem has not room for it and the reserve.
pub(crate) fn check_room(agent: &LocalAgent, what: &str, bytes: u64) -> Result<()> {
    check_room_at(&agent.config().data_dir, what, bytes)
}

/// Refuses a copy of `bytes` into `dir` when its filesystem has not room for it and the
/// reserve.
pub(crate) fn check_room_at(dir: &Path, what: &str, bytes: u64) -> Result<()> {
    let free = sys::space::free_bytes(dir).map_err(|e| AgentError::internal(format!("measuring free space: {e}")))?;
    let needed = bytes + bytes / 20 + COPY_RESERVE;
    if free < needed {
        return Err(AgentError::new(
            ErrorKind::DiskFull,
            format!(
                "not enough free disk for {what}: it needs about {} MiB and {} has {} MiB free; free space or \
                 use another data directory",
                needed >> 20,
                dir.display(),
                free >> 20
            ),
        ));
    }
    Ok(())
}

/// `dir` resolved, if it lies inside one of `roots` (the registered source directories): an
/// absolute path without `..`, every symlink resolved before it is compared.
fn inside_roots(dir: &str, roots: &[String]) -> Result<PathBuf> {
    let path = Path::new(dir);
    if !path.is_absolute() {
        return Err(bad(format!("the source directory {dir} is not an absolute path")));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(bad(format!("the source directory {dir} has `..` in it; give the plain path")));
    }
    if roots.is_empty() {
        return Err(bad(
            "no source directories are registered: an administrator registers one with `thinclone source add NAME \
             PATH`, and images are made from data directories inside it",
        ));
    }
    let resolved = fs::canonicalize(path).map_err(|e| bad(format!("the source directory {dir}: {e}")))?;
    let inside = roots.iter().any(|root| {
        let root = fs::canonicalize(root).unwrap_or_else(|_| PathBuf::from(root));
        resolved.starts_with(&root) && resolved != root
    });
    if !inside {
        return Err(bad(format!(
            "{dir} is not inside a registered source directory ({}); an administrator registers sources with \
             `thinclone source add`",
            roots.join(", ")
        )));
    }
    Ok(resolved)
}

pub(crate) fn check_source_dir(
    agent: &LocalAgent,
    dir: &str,
    snapshot: bool,
    roots: &[String],
    place: &ImagePlace,
) -> Result<SourceFacts> {
    check_place(place)?;
    let canonical = inside_roots(dir, roots)?;
    if !canonical.is_dir() {
        return Err(bad(format!("the source {dir} is not a directory")));
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
                    engine
                        .check_not_in_use(&canonical)
                        .map_err(|e| AgentError::new(ErrorKind::Conflict, e.to_string()))?;
                }
                check_room_at(
                    Path::new(&place.path),
                    &format!("a copy of {}", canonical.display()),
                    sys::tree::size(&canonical).bytes,
                )?;
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

pub(crate) fn check_source_url(agent: &LocalAgent, url: &str) -> Result<SourceFacts> {
    let url = SourceUrl::parse(url).map_err(bad)?;
    let url = &url;
    let engine = agent.config().engines.iter().find(|e| e.accepts_url(url)).ok_or_else(|| {
        let known: Vec<&str> = agent.config().engines.iter().map(|e| e.id()).collect();
        bad(format!(
            "{}:// is not the URL scheme of a database engine thinclone knows ({})",
            url.scheme(),
            known.join(", ")
        ))
    })?;
    engine.probe(url).map_err(|e| AgentError::from_engine("checking the source", e))?;
    Ok(SourceFacts { engine: engine.id().to_owned(), version: None, shown: url.shown() })
}

/// A path of a source (a dump, a repository, an archive) resolved inside `roots`, and not
/// thinclone's own data directory.
fn source_path(agent: &LocalAgent, path: &str, roots: &[String]) -> Result<PathBuf> {
    let canonical = inside_roots(path, roots)?;
    let own = fs::canonicalize(&agent.config().data_dir).unwrap_or_else(|_| agent.config().data_dir.clone());
    if canonical.starts_with(&own) || own.starts_with(&canonical) {
        return Err(bad(format!(
            "the source {} overlaps thinclone's own data directory {}",
            canonical.display(),
            own.display()
        )));
    }
    Ok(canonical)
}

/// How a recovery target is shown in an image's source.
fn target_shown(target: &RecoveryTarget) -> String {
    match target {
        RecoveryTarget::Latest => String::new(),
        RecoveryTarget::Time(t) => format!(" to time {t}"),
        RecoveryTarget::Position(p) => format!(" to position {p}"),
    }
}

/// Checks a source as [`make`] takes it (`Agent::check_source`).
pub(crate) fn check_source(agent: &LocalAgent, source: &ImageSource, place: &ImagePlace) -> Result<SourceFacts> {
    let engines = &agent.config().engines;
    match source {
        ImageSource::Dir { path, snapshot, roots } => check_source_dir(agent, path, *snapshot, roots, place),
        ImageSource::Url { url } => check_source_url(agent, url),
        ImageSource::Dump { path, roots } => {
            check_place(place)?;
            let dump = source_path(agent, path, roots)?;
            let mut reasons = Vec::new();
            for engine in engines {
                match engine.dump_version(&dump) {
                    Ok(version) => {
                        // A restored database takes some more room than its dump.
                        check_room_at(
                            Path::new(&place.path),
                            &format!("a restore of {}", dump.display()),
                            sys::tree::size(&dump).bytes.saturating_mul(2),
                        )?;
                        return Ok(SourceFacts {
                            engine: engine.id().to_owned(),
                            version: Some(version),
                            shown: format!("dump:{}", dump.display()),
                        });
                    }
                    Err(e) => reasons.push(e.to_string()),
                }
            }
            Err(bad(reasons.join("; ")))
        }
        ImageSource::Repo { path, stanza, target, roots } => {
            check_place(place)?;
            let repo = source_path(agent, path, roots)?;
            if !repo.is_dir() {
                return Err(bad(format!("the backup repository {} is not a directory", repo.display())));
            }
            let mut reasons = Vec::new();
            for engine in engines {
                match engine.inspect_repo(&repo, stanza.as_deref(), target, &agent.config().os_user) {
                    Ok(facts) => {
                        engine.check_installed(&facts.version).map_err(|e| bad(e.to_string()))?;
                        engine.check_target(target).map_err(|e| bad(e.to_string()))?;
                        let mut shown = format!("repo:{}?stanza={}", repo.display(), facts.stanza);
                        if let RecoveryTarget::Time(t) = target {
                            shown.push_str(&format!("&target_time={t}"));
                        } else if let RecoveryTarget::Position(p) = target {
                            shown.push_str(&format!("&target_position={p}"));
                        }
                        return Ok(SourceFacts { engine: engine.id().to_owned(), version: Some(facts.version), shown });
                    }
                    Err(e) => reasons.push(e.to_string()),
                }
            }
            Err(bad(reasons.join("; ")))
        }
        ImageSource::Archive { path, archive, target, roots } => {
            let mut facts = check_source_dir(agent, path, false, roots, place)?;
            let archive = source_path(agent, archive, roots)?;
            if !archive.is_dir() {
                return Err(bad(format!("the archive {} is not a directory", archive.display())));
            }
            let engine = agent.engine(&facts.engine)?;
            engine.check_target(target).map_err(|e| bad(e.to_string()))?;
            facts.shown = format!("{} + archive {}{}", facts.shown, archive.display(), target_shown(target));
            Ok(facts)
        }
    }
}

/// Where image `name` of `place` lives, once sealed.
pub(crate) fn image_dir(place: &ImagePlace, name: &Name) -> PathBuf {
    Path::new(&place.path).join(name.as_str())
}

/// Where image `name` of `place` is made.
pub(crate) fn partial_dir(place: &ImagePlace, name: &Name) -> PathBuf {
    Path::new(&place.path).join(format!("{name}.partial"))
}

/// Checks that a location's directory is there: an absolute path to a directory holding the
/// location's marker (a share that is not mounted shows its empty mount point, which has
/// none: nothing is written to the host's own disk by mistake).
pub(crate) fn check_place(place: &ImagePlace) -> Result<()> {
    let path = Path::new(&place.path);
    if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
        return Err(bad(format!("location {}: {} is not an absolute path without `..`", place.location, place.path)));
    }
    if !path.is_dir() {
        return Err(AgentError::new(
            ErrorKind::Unavailable,
            format!(
                "image location {} is unavailable: {} is not a directory on this host (is the share mounted?)",
                place.location, place.path
            ),
        ));
    }
    if let Some(marker) = &place.marker {
        let found = sys::untrusted::read_to_string(&path.join(crate::MARKER_FILE), 4096).ok();
        if found.as_deref().map(str::trim) != Some(marker.as_str()) {
            return Err(AgentError::new(
                ErrorKind::Unavailable,
                format!(
                    "image location {} is unavailable: {} has not its marker {} (is the share mounted?)",
                    place.location,
                    place.path,
                    crate::MARKER_FILE
                ),
            ));
        }
    }
    Ok(())
}

pub(crate) fn make_image(
    agent: &LocalAgent,
    name: &Name,
    place: &ImagePlace,
    source: &ImageSource,
    transform: &ImageTransform,
    progress: &(dyn Fn(u64, u64) + Sync),
    step: &(dyn Fn(&str) + Sync),
) -> Result<MadeImage> {
    check_place(place)?;
    let partial = partial_dir(place, name);
    let run_dir = agent.image_run_dir(name);
    let job = agent.image_job_file(name);
    // Named before anything is copied: recovery after a crash removes it.
    sys::crashsafe::replace_file_mode(&job, partial.to_string_lossy().as_bytes(), 0o600)
        .map_err(|e| AgentError::internal(format!("recording the image job: {e}")))?;
    agent.job_started(&partial);
    let made = make(agent, name, place, source, transform, progress, step);
    agent.job_ended(&partial);
    if made.is_err() {
        for dir in [&partial, &run_dir] {
            if let Err(e) = sys::tree::remove(dir) {
                tracing::error!(image = %name, "removing {} after a failure: {e}", dir.display());
            }
        }
    }
    if let Err(e) = fs::remove_file(&job) {
        tracing::warn!(image = %name, "removing {}: {e}", job.display());
    }
    made
}

fn make(
    agent: &LocalAgent,
    name: &Name,
    place: &ImagePlace,
    source: &ImageSource,
    transform: &ImageTransform,
    progress: &(dyn Fn(u64, u64) + Sync),
    step: &(dyn Fn(&str) + Sync),
) -> Result<MadeImage> {
    let config = agent.config();
    let user = &config.os_user;
    let partial = partial_dir(place, name);
    let final_dir = image_dir(place, name);
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
    if final_dir.exists() {
        return Err(AgentError::new(
            ErrorKind::Conflict,
            format!(
                "{} already exists in location {}; remove it or choose another name",
                final_dir.display(),
                place.location
            ),
        ));
    }
    sys::tree::remove(&partial).map_err(io("clearing the image's directory"))?;
    let _ = sys::tree::remove(&run_dir);
    let own_dir = || -> Result<()> {
        fs::create_dir(&partial).map_err(io("making the image's directory"))?;
        std::os::unix::fs::chown(&partial, Some(user.uid), Some(user.gid))
            .map_err(io("giving the image's directory to the database's user"))
    };
    let engine_failed = |what: &str| {
        let what = what.to_owned();
        move |e: engine::Error| {
            if e.is_disk_full() {
                AgentError::new(ErrorKind::DiskFull, format!("{e}; free space and try again"))
            } else {
                AgentError::from_engine(&what, e)
            }
        }
    };
    // A base backup and its log archive: recovered to its target once copied.
    let mut recovery = None;
    let engine = match source {
        ImageSource::Dump { path, roots } => {
            let facts = check_source(agent, source, place)?;
            let engine = agent.engine(&facts.engine)?;
            let dump = source_path(agent, path, roots)?;
            own_dir()?;
            fs::create_dir_all(&run_dir).map_err(io("making the restoring server's directory"))?;
            step("restoring the dump");
            engine.restore_dump(&dump, &partial, &run_dir, user).map_err(engine_failed("restoring the dump"))?;
            engine
        }
        ImageSource::Repo { path, stanza, target, roots } => {
            let facts = check_source(agent, source, place)?;
            let engine = agent.engine(&facts.engine)?;
            let repo = source_path(agent, path, roots)?;
            let stanza = engine
                .inspect_repo(&repo, stanza.as_deref(), target, user)
                .map_err(engine_failed("reading the backup repository"))?
                .stanza;
            own_dir()?;
            fs::create_dir_all(&run_dir).map_err(io("making the restoring server's directory"))?;
            step("restoring from the backup repository");
            engine
                .restore_repo(&repo, &stanza, target, &partial, &run_dir, user)
                .map_err(engine_failed("restoring from the backup repository"))?;
            engine
        }
        ImageSource::Dir { .. } | ImageSource::Archive { .. } => {
            let facts = check_source(agent, source, place)?;
            if let ImageSource::Archive { archive, target, roots, .. } = source {
                recovery = Some((source_path(agent, archive, roots)?, target.clone()));
            }
            let dir = match source {
                ImageSource::Archive { path, roots, .. } => source_path(agent, path, roots)?,
                _ => PathBuf::from(&facts.shown),
            };
            let dir = dir.as_path();
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
        ImageSource::Url { url } => {
            let facts = check_source_url(agent, url)?;
            let url = SourceUrl::parse(url).map_err(bad)?;
            let engine = agent.engine(&facts.engine)?;
            fs::create_dir(&partial).map_err(io("making the image's directory"))?;
            std::os::unix::fs::chown(&partial, Some(user.uid), Some(user.gid))
                .map_err(io("giving the image's directory to the database's user"))?;
            step("copying the live server");
            engine.copy_live(&url, &partial, user, &mut |done, total| progress(done, total)).map_err(|e| {
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
    if let Some((archive, target)) = &recovery {
        step(&format!("recovering{}", target_shown(target)));
        engine.recover_to(&partial, archive, target, &run_dir, user).map_err(engine_failed("recovering the backup"))?;
    }
    step(if transform.is_empty() { "preparing" } else { "preparing: scripts and masking" });
    // The key of the deterministic masking strategies: this image's own, kept nowhere.
    let secret = random_hex(32).map_err(io("making the masking key"))?;
    let (facts, transformed) = engine.prepare_with(&partial, &run_dir, user, transform, &secret).map_err(|e| {
        if e.is_disk_full() {
            AgentError::new(ErrorKind::DiskFull, format!("{e}; free space and try again"))
        } else if transform.is_empty() {
            AgentError::new(ErrorKind::BadRequest, format!("the copy would not start: {e}"))
        } else {
            // A script or a masking rule failed: the image is not made.
            AgentError::new(ErrorKind::BadRequest, format!("{e}; the image is not made"))
        }
    })?;
    let _ = sys::tree::remove(&run_dir);
    // Fail closed: no original value of a masked column may be left in any file.
    let mut report = (!transform.is_empty()).then_some(transformed.report);
    if !transform.mask.is_empty() {
        step("verifying the masking");
        let found = sys::tree::find_any(&partial, &transformed.originals).map_err(io("reading the masked copy"))?;
        if let Some((file, _)) = found {
            let file = file.strip_prefix(&partial).unwrap_or(&file).display().to_string();
            return Err(AgentError::new(
                ErrorKind::BadRequest,
                format!(
                    "masking left an original value in the image's file {file}; the image is not made \
                     (is the value copied into a column no rule names?)"
                ),
            ));
        }
        if let Some(report) = report.as_mut() {
            report.values_checked = transformed.originals.len() as u64;
        }
    }
    // Told to stop after its last program ended (a shutdown between two steps): it fails
    // as it would have a moment earlier, rather than become an image after the shutdown.
    if agent.job_cancelled(&partial) {
        return Err(AgentError::new(
            ErrorKind::Unavailable,
            format!("image {name} was not finished: thinclone was stopping, or the image removed; make it again"),
        ));
    }
    // Sealed: the agent's own user owns every file, and the directory is private to it.
    let me = sys::User::current();
    sys::tree::chown(&partial, me.uid, me.gid).map_err(io("sealing the image"))?;
    fs::set_permissions(&partial, fs::Permissions::from_mode(0o700)).map_err(io("sealing the image"))?;
    sys::crashsafe::rename(&partial, &final_dir).map_err(io("sealing the image"))?;
    let size = sys::tree::size(&final_dir);
    Ok(MadeImage {
        engine: engine.id().to_owned(),
        version: facts.version,
        superuser: facts.superuser,
        logical_bytes: size.bytes,
        stored_bytes: sys::tree::disk_usage(&final_dir).unwrap_or(size.bytes),
        file_count: size.files,
        report,
    })
}

/// `bytes` random bytes from the kernel, in hexadecimal.
fn random_hex(bytes: usize) -> std::io::Result<String> {
    let mut buf = vec![0u8; bytes];
    std::io::Read::read_exact(&mut fs::File::open("/dev/urandom")?, &mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
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
