//! Turning a copied data directory into an image: recovery (of a base backup, or of a copy
//! of a server that was not shut down cleanly) runs to its end here, once, and the server
//! shuts down cleanly, so that clones start without replaying WAL. Preparing also learns
//! the image's bootstrap superuser, which clones' connection URLs log in as.

use std::fs;
use std::io;
use std::path::Path;
use std::time::Duration;

use engine::{Error, ImageFacts, InstanceSpec, Result, User};
use sys::Program;

use crate::datadir::{self, cluster_state, live_postmaster};
use crate::install::{Installation, Search};
use crate::server;
use crate::ENGINE_NAME;

/// Recovery of a large backup may take long.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// The port of the preparing server: it listens on no TCP address, only on a socket in its
/// own run directory, so any number does.
const PREPARE_PORT: u16 = 5432;
/// Marks the line of `postgres --single`'s output that carries the superuser's name.
const SUPERUSER_MARK: &str = "thinclone-superuser:";

pub(crate) fn prepare(search: &Search, data_dir: &Path, run_dir: &Path, user: &User) -> Result<ImageFacts> {
    let major = datadir::detect(data_dir)?;
    let installation = search.find(major)?;
    if let Some(pid) = live_postmaster(data_dir) {
        return Err(Error::InUse(format!(
            "a {ENGINE_NAME} server (pid {pid}) is running on {}; an image needs a copy",
            data_dir.display()
        )));
    }
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
    };
    server::write_run_dir(&spec, server::needs_config_file(data_dir))?;
    spec.superuser = bootstrap_superuser(&installation, &spec)?;

    // Connect to every database once: the first connection sets hint bits on the catalogs
    // and writes the relation cache file, which every clone would otherwise write again.
    let server = server::start(&installation, &spec, RECOVERY_TIMEOUT)?;
    let databases = server
        .sql_in("template1", "SELECT encode(convert_to(datname, 'UTF8'), 'hex') FROM pg_database WHERE datallowconn")?;
    for hex in databases.lines().filter(|l| !l.is_empty()) {
        let name = from_hex(hex).ok_or_else(|| Error::Other(format!("psql printed {hex:?} as a database name")))?;
        server.sql_in(&name, "SELECT 1")?;
    }
    server.stop_within(Duration::from_secs(3600))?;

    let state = cluster_state(&installation, data_dir, user)?;
    if state != "shut down" {
        return Err(Error::Other(format!(
            "preparing {}: the server did not shut down cleanly after recovery (pg_controldata says {state:?})",
            data_dir.display()
        )));
    }
    for name in ["backup_label.old", "backup_manifest"] {
        remove_if_there(&data_dir.join(name))?;
    }
    Ok(ImageFacts { version: major.to_string(), superuser: spec.superuser })
}

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
    for (name, value) in server::settings(spec, installation.major, server::needs_config_file(&spec.data_dir)) {
        program = program.arg("-c").arg(format!("{name}={value}"));
    }
    let out = program.arg("template1").user(&spec.user).cwd(&spec.run_dir).timeout(RECOVERY_TIMEOUT).run()?;
    // What it logged (the recovery) goes where the server's log goes.
    let logged = fs::OpenOptions::new()
        .append(true)
        .open(spec.run_dir.join("postgres.log"))
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

fn from_hex(hex: &str) -> Option<String> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> =
        (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect();
    String::from_utf8(bytes?).ok()
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
