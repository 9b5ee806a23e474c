//! Turning a copied data directory into an image: recovery (of a base backup, or of a copy
//! of a server that was not shut down cleanly) runs to its end here, once, and the server
//! shuts down cleanly, so that clones start without replaying WAL. Preparing also learns
//! the image's bootstrap superuser, which clones' connection URLs log in as.
//!
//! Before any server starts on the copy, what it reaches outside itself (tablespaces, a
//! `pg_wal` elsewhere) is brought in (`self_contained`), so that recovery here and clones
//! later never write to the source's files. A full disk at any step is reported as
//! [`Error::DiskFull`].

use std::fs;
use std::io;
use std::path::Path;
use std::time::Duration;

use engine::{Error, ImageFacts, InstanceSpec, Result, User};
use sys::Program;

use crate::datadir::{self, cluster_state, control_data, live_postmaster};
use crate::install::{Installation, Search};
use crate::self_contained;
use crate::server::{self, Role};
use crate::ENGINE_NAME;

/// Recovery of a large backup may take long.
pub(crate) const RECOVERY_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// The port of the preparing server: it listens on no TCP address, only on a socket in its
/// own run directory, so any number does.
pub(crate) const PREPARE_PORT: u16 = 5432;
/// Marks the line of `postgres --single`'s output that carries the superuser's name.
const SUPERUSER_MARK: &str = "thinclone-superuser:";

pub(crate) fn prepare(
    search: &Search,
    data_dir: &Path,
    run_dir: &Path,
    user: &User,
    transform: Option<(&api::agent::ImageTransform, &str)>,
) -> Result<(ImageFacts, engine::Transformed)> {
    let major = datadir::detect(data_dir)?;
    let installation = search.find(major)?;
    if let Some(pid) = live_postmaster(data_dir) {
        return Err(Error::InUse(format!(
            "a {ENGINE_NAME} server (pid {pid}) is running on {}; an image needs a copy",
            data_dir.display()
        )));
    }
    let log = run_dir.join("postgres.log");
    let log_start = fs::symlink_metadata(&log).map_or(0, |m| m.len());
    prepare_copy(&installation, data_dir, run_dir, user, transform).map_err(|e| {
        // A server that ran out of space says so in its log, whatever error reached us.
        if e.is_disk_full() || log_since(&log, log_start).contains("No space left on device") {
            Error::DiskFull { what: format!("preparing the image {}", data_dir.display()), detail: e.to_string() }
        } else {
            e
        }
    })
}

fn prepare_copy(
    installation: &Installation,
    data_dir: &Path,
    run_dir: &Path,
    user: &User,
    transform: Option<(&api::agent::ImageTransform, &str)>,
) -> Result<(ImageFacts, engine::Transformed)> {
    let major = installation.major;
    // Before anything else changes the copy, and before any server starts on it: whatever
    // it reaches outside itself (tablespaces, a pg_wal elsewhere) comes in, so that neither
    // recovery here nor any clone writes to the source's files.
    let control = control_data(installation, data_dir, user)?;
    let live = if control.shut_down() { None } else { running_source(data_dir) };
    let version_dir = format!("PG_{major}_{}", control.catalog_version);
    self_contained::make_self_contained(data_dir, &version_dir, user, live.as_deref())?;

    // A standby or archive-recovery signal would keep the server from opening normally;
    // replication slots would pin WAL in every clone (and a clone, which runs with none
    // allowed, would not start); a stale lock would stop the start.
    for name in ["standby.signal", "recovery.signal", "recovery.conf", "postmaster.pid", "postmaster.opts"] {
        remove_if_there(&data_dir.join(name))?;
    }
    match fs::read_dir(data_dir.join("pg_replslot")) {
        Ok(slots) => {
            for slot in slots {
                fs::remove_dir_all(slot?.path())?;
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }

    let mut spec = InstanceSpec {
        version: major.to_string(),
        data_dir: data_dir.to_owned(),
        run_dir: run_dir.to_owned(),
        port: PREPARE_PORT,
        listen: Vec::new(),
        remote_clients: false,
        user: user.clone(),
        superuser: String::new(),
        label: "thinclone-prepare".into(),
        memory: Some("128MB".into()),
        read_only: false,
    };
    server::write_run_dir(&spec, server::needs_config_file(data_dir))?;
    spec.superuser = bootstrap_superuser(installation, &spec)?;

    // Connect to every database once: the first connection sets hint bits on the catalogs
    // and writes the relation cache file, which every clone would otherwise write again.
    let server = server::start_as(installation, &spec, RECOVERY_TIMEOUT, Role::Prepare)?;
    let databases = server
        .sql_in("template1", "SELECT encode(convert_to(datname, 'UTF8'), 'hex') FROM pg_database WHERE datallowconn")?;
    for hex in databases.lines().filter(|l| !l.is_empty()) {
        let name = from_hex(hex).ok_or_else(|| Error::Other(format!("psql printed {hex:?} as a database name")))?;
        server.sql_in(&name, "SELECT 1")?;
    }
    // The image's scripts and masking (mask.rs), before anyone can connect to it.
    let transformed = match transform {
        Some((transform, secret)) if !transform.is_empty() => crate::mask::apply(&server, data_dir, transform, secret)?,
        _ => engine::Transformed::default(),
    };
    // The image's WAL then ends at the start of a segment, far from its end: a clone, whose
    // server makes a segment ahead (zero-filled: 16 MiB) once the current one is three
    // quarters full, does not make one as it starts.
    server.sql_in("template1", "SELECT pg_switch_wal()")?;
    server.stop_within(Duration::from_secs(3600))?;

    let state = cluster_state(installation, data_dir, user)?;
    if state != "shut down" {
        return Err(Error::Other(format!(
            "preparing {}: the server did not shut down cleanly after recovery (pg_controldata says {state:?})",
            data_dir.display()
        )));
    }
    for name in ["backup_label.old", "backup_manifest", "tablespace_map.old"] {
        remove_if_there(&data_dir.join(name))?;
    }
    trim_wal(data_dir, &control_data(installation, data_dir, user)?)?;
    Ok((ImageFacts { version: major.to_string(), superuser: spec.superuser }, transformed))
}

/// Why a copy of a server that was not shut down cleanly must not take anything from
/// outside itself now: its `postmaster.pid` names a server that still runs on the original
/// directory (the copy is a snapshot of a live server), so what lies outside keeps changing.
fn running_source(copy: &Path) -> Option<String> {
    let text = fs::read_to_string(copy.join("postmaster.pid")).ok()?;
    let original = Path::new(text.lines().nth(1)?.trim());
    if original.as_os_str().is_empty() {
        return None;
    }
    let pid = live_postmaster(original)?;
    Some(format!("the copy is of a server that still runs (pid {pid}, on {})", original.display()))
}

use crate::server::log_since;

/// Runs recovery to its end in a single-user server and asks it for the bootstrap
/// superuser (the role with oid 10; `initdb -U` names it, so it is not always `postgres`).
/// A single-user server needs no role name to log in with, which no other way of asking
/// offers: it runs as the bootstrap superuser whatever its name. It ends with a clean
/// shutdown.
fn bootstrap_superuser(installation: &Installation, spec: &InstanceSpec) -> Result<String> {
    // A single-user server reads its commands on stdin; the shell gives it this one.
    // The name comes out hex-encoded, so that any name reads back exactly.
    let script = format!(
        "exec \"$0\" \"$@\" <<'EOF'\n\
         COPY (SELECT '{SUPERUSER_MARK}' || encode(convert_to(rolname, 'UTF8'), 'hex') FROM pg_roles WHERE oid = 10) TO STDOUT\n\
         EOF\n"
    );
    let mut program = Program::new("/bin/sh")
        .arg("-c")
        .arg(script)
        .arg(installation.program("postgres"))
        .args(["--single", "-D"])
        .arg(&spec.data_dir);
    for (name, value) in
        server::settings(spec, installation.major, server::needs_config_file(&spec.data_dir), Role::Prepare)
    {
        program = program.arg("-c").arg(format!("{name}={value}"));
    }
    let out = program.arg("template1").user(&spec.user).cwd(&spec.run_dir).timeout(RECOVERY_TIMEOUT).run()?;
    // What it logged (the recovery) goes where the server's log goes.
    let logged = sys::untrusted::open_append(&spec.run_dir.join("postgres.log"), 0o600)
        .and_then(|mut log| io::Write::write_all(&mut log, &out.stderr));
    if let Err(e) = logged {
        tracing::warn!("keeping the single-user server's log in {}: {e}", spec.run_dir.display());
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .split_once(SUPERUSER_MARK)
        .and_then(|(_, rest)| from_hex(rest.split(|c: char| !c.is_ascii_hexdigit()).next()?))
        .filter(|name| !name.is_empty())
        .ok_or_else(|| {
            Error::Other(format!(
                "preparing {}: the single-user server did not name the bootstrap superuser; it said:\n{}\n{}",
                spec.data_dir.display(),
                stdout.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        })
}

pub(crate) fn from_hex(hex: &str) -> Option<String> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> =
        (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect();
    String::from_utf8(bytes?).ok()
}

/// Leaves in `pg_wal` only what a clean start reads: the segment that holds the shutdown
/// checkpoint, up to the WAL block after the record, and zeros past it.
///
/// A clone keeps its WAL on the host's filesystem and starts with a copy of the image's
/// (`Engine::commit_dirs`), made sparse, so what the image's WAL holds beyond that is what
/// every clone would copy: older segments (no clean start replays them), segments already
/// recycled for later use (old WAL under new names, which the server overwrites before it
/// reads), and old WAL left in the tail of the current segment. Nothing after a shutdown
/// checkpoint is valid WAL, so zeros there are what the server would find in a new segment.
fn trim_wal(data_dir: &Path, control: &datadir::ControlData) -> Result<()> {
    let Some((current, offset, segment_size, block_size)) = control.checkpoint_segment() else {
        tracing::warn!(data_dir = %data_dir.display(), "pg_controldata gave no checkpoint location; the image's WAL is left as it is");
        return Ok(());
    };
    let wal = data_dir.join("pg_wal");
    let is_segment = |name: &str| name.len() == 24 && name.bytes().all(|b| b.is_ascii_hexdigit());
    let current_path = wal.join(&current);
    if !current_path.is_file() {
        return Err(Error::Other(format!(
            "preparing {}: the checkpoint's WAL segment {current} is missing",
            data_dir.display()
        )));
    }
    for entry in fs::read_dir(&wal)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if is_segment(name) && name != current {
            fs::remove_file(wal.join(name))?;
            for suffix in [".ready", ".done"] {
                remove_if_there(&wal.join("archive_status").join(format!("{name}{suffix}")))?;
            }
        }
    }
    // A shutdown checkpoint record takes a few hundred bytes; it may cross into the next
    // block, never further.
    let keep = ((offset + 1024) / block_size + 1) * block_size;
    if keep < segment_size {
        zero_range(&current_path, keep, segment_size - keep)?;
    }
    sys::crashsafe::fsync_dir(&wal)?;
    Ok(())
}

/// Makes `len` bytes at `offset` of a file zeros: a hole where the filesystem can punch one,
/// written zeros where it cannot.
fn zero_range(path: &Path, offset: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    let file = fs::OpenOptions::new().write(true).open(path)?;
    // SAFETY: fallocate on a file descriptor we own.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    if rc != 0 {
        let zeros = vec![0u8; 1 << 20];
        let mut at = offset;
        while at < offset + len {
            let n = (offset + len - at).min(zeros.len() as u64) as usize;
            file.write_all_at(&zeros[..n], at)?;
            at += n as u64;
        }
    }
    file.sync_all()
}

fn remove_if_there(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_names_decode() {
        assert_eq!(super::from_hex("616c696365").as_deref(), Some("alice"));
        assert_eq!(super::from_hex("").as_deref(), Some(""));
        assert_eq!(super::from_hex("6"), None);
        assert_eq!(super::from_hex("zz"), None);
        assert_eq!(super::from_hex("c3a9").as_deref(), Some("é"));
    }
}
