//! Images from backups: a logical dump (`pg_dump`'s custom, directory, tar or plain output)
//! restored into a new cluster of its major version; a pgBackRest repository restored and
//! recovered to its end or a target time; a base backup recovered over a directory of
//! archived WAL to a target time or LSN.
//!
//! Each leaves a stopped data directory that `prepare` then turns into an image, as it does
//! a copy. Recovery runs on a temporary server whose settings are on its command line
//! (`restore_command`, `recovery_target_*`, `recovery_target_action=promote`,
//! `hot_standby=off`, so that it accepts connections only once promoted); `recovery.signal`
//! is the one file written for it, and the server removes it as it promotes. What pgBackRest
//! writes into `postgresql.auto.conf` is taken out again, so that no clone reaches the
//! repository or the archive.

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use engine::{Error, InstanceSpec, RecoveryTarget, RepoFacts, Result, User};
use sys::Program;

use crate::datadir::{self, Major};
use crate::install::{Installation, Search};
use crate::prepare::{PREPARE_PORT, RECOVERY_TIMEOUT};
use crate::server::{self, Role};
use crate::ENGINE_NAME;

/// The bootstrap superuser of a cluster made for a dump.
const SUPERUSER: &str = "postgres";
/// The pgBackRest program, looked up in the clean `PATH`.
const PGBACKREST: &str = "pgbackrest";
/// How long a clean stop after a restore or a recovery may take.
const STOP_TIMEOUT: Duration = Duration::from_secs(3600);

/// How a dump is read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DumpFormat {
    /// Custom, directory or tar: `pg_restore` reads it.
    Archive,
    /// SQL text: `psql` runs it.
    Plain,
}

/// What a dump says of itself.
#[derive(Debug, Clone)]
struct DumpFacts {
    format: DumpFormat,
    major: Major,
    /// The database it was dumped from, when the dump names it (archives do).
    database: Option<String>,
}

fn bad(message: String) -> Error {
    Error::BadSource(message)
}

/// The format of the dump at `path`, from its first bytes (or, for a directory, its
/// `toc.dat`).
fn dump_format(path: &Path) -> Result<DumpFormat> {
    let meta = fs::metadata(path).map_err(|e| bad(format!("the dump {}: {e}", path.display())))?;
    if meta.is_dir() {
        return if path.join("toc.dat").is_file() {
            Ok(DumpFormat::Archive)
        } else {
            Err(bad(format!("{} is a directory without toc.dat: not a directory-format dump", path.display())))
        };
    }
    let mut head = Vec::new();
    fs::File::open(path)
        .and_then(|f| f.take(4096).read_to_end(&mut head))
        .map_err(|e| bad(format!("reading the dump {}: {e}", path.display())))?;
    if head.starts_with(b"PGDMP") || head.get(257..262) == Some(b"ustar") {
        return Ok(DumpFormat::Archive);
    }
    if String::from_utf8_lossy(&head).contains(&format!("-- {ENGINE_NAME} database dump")) {
        return Ok(DumpFormat::Plain);
    }
    Err(bad(format!(
        "{} is not a {ENGINE_NAME} dump: give pg_dump's output in the custom, directory, tar or plain format",
        path.display()
    )))
}

/// The major version of a version string such as `15.18 (Debian 15.18-0+deb12u1)`.
fn major_of(version: &str) -> Option<Major> {
    let digits: String = version.trim().chars().take_while(char::is_ascii_digit).collect();
    Major::parse(&digits).ok()
}

/// Reads what the dump says of itself: `pg_restore --list` for an archive, the header
/// comments of a plain dump.
fn dump_facts(search: &Search, path: &Path) -> Result<DumpFacts> {
    let format = dump_format(path)?;
    let text = match format {
        DumpFormat::Archive => {
            let pg_restore = search.newest()?.program("pg_restore");
            let out =
                Program::new(pg_restore).arg("--list").arg(path).timeout(Duration::from_secs(600)).run().map_err(
                    |e| bad(format!("{} is not a dump this host's pg_restore can read: {e}", path.display())),
                )?;
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
        DumpFormat::Plain => {
            let mut head = Vec::new();
            fs::File::open(path)
                .and_then(|f| f.take(64 << 10).read_to_end(&mut head))
                .map_err(|e| bad(format!("reading the dump {}: {e}", path.display())))?;
            String::from_utf8_lossy(&head).into_owned()
        }
    };
    // `;     Dumped from database version: 15.18` in a listing, `-- Dumped from database
    // version 15.18` in a plain dump.
    let field = |name: &str| {
        text.lines().find_map(|l| {
            let rest = l.trim_start_matches([';', '-', ' ']).strip_prefix(name)?;
            Some(rest.trim_start_matches(':').trim().to_owned())
        })
    };
    let version = field("Dumped from database version").ok_or_else(|| {
        bad(format!("the dump {} does not say which {ENGINE_NAME} version it was dumped from", path.display()))
    })?;
    let major = major_of(&version).ok_or_else(|| {
        bad(format!(
            "the dump {} is of {ENGINE_NAME} {version}; thinclone runs {ENGINE_NAME} {} and later",
            path.display(),
            datadir::OLDEST_SUPPORTED
        ))
    })?;
    Ok(DumpFacts { format, major, database: field("dbname").filter(|d| !d.is_empty()) })
}

/// The dump's major version, once an installed version can restore it.
pub(crate) fn dump_version(search: &Search, path: &Path) -> Result<String> {
    let major = dump_facts(search, path)?.major;
    installation_for(search, major)?;
    Ok(major.to_string())
}

/// The installation to restore a dump of `major` into: its own, or the newest installed
/// version above it (a dump restores into a newer server); otherwise the error of its own,
/// which says what to install.
fn installation_for(search: &Search, major: Major) -> Result<Installation> {
    match search.find(major) {
        Ok(installation) => Ok(installation),
        Err(e) => search.all().into_iter().rev().find(|i| i.major > major).ok_or(e),
    }
}

/// The spec of a temporary server on `data_dir`: no TCP, a socket in `run_dir`.
fn temporary_spec(major: Major, data_dir: &Path, run_dir: &Path, user: &User, superuser: &str) -> InstanceSpec {
    InstanceSpec {
        version: major.to_string(),
        data_dir: data_dir.to_owned(),
        run_dir: run_dir.to_owned(),
        port: PREPARE_PORT,
        listen: Vec::new(),
        remote_clients: false,
        user: user.clone(),
        superuser: superuser.to_owned(),
        label: "thinclone-restore".into(),
        memory: Some("128MB".into()),
        read_only: false,
    }
}

pub(crate) fn restore_dump(search: &Search, path: &Path, data_dir: &Path, run_dir: &Path, user: &User) -> Result<()> {
    let facts = dump_facts(search, path)?;
    let installation = installation_for(search, facts.major)?;
    fs::create_dir_all(run_dir)?;
    Program::new(installation.program("initdb"))
        .arg("-D")
        .arg(data_dir)
        .args(["-U", SUPERUSER, "-E", "UTF8", "--no-locale", "--auth=trust"])
        .user(user)
        .cwd(run_dir)
        .timeout(Duration::from_secs(600))
        .run()
        .map_err(|e| Error::Other(format!("making a new {ENGINE_NAME} {} cluster: {e}", installation.major)))?;
    let spec = temporary_spec(installation.major, data_dir, run_dir, user, SUPERUSER);
    let server = server::start_as(&installation, &spec, RECOVERY_TIMEOUT, Role::Prepare)?;
    let restored = match facts.format {
        DumpFormat::Archive => {
            // A database the new cluster already has is restored into; any other is made
            // with the dump's own CREATE DATABASE (its encoding and locale).
            let existing = facts.database.as_deref().filter(|d| ["postgres", "template1"].contains(d));
            let mut program = Program::new(installation.program("pg_restore")).args([
                "--exit-on-error",
                "--no-owner",
                "--no-privileges",
            ]);
            program = match existing {
                Some(db) => program.arg("-d").arg(server.conninfo(db)),
                None => program.arg("--create").arg("-d").arg(server.conninfo("postgres")),
            };
            program.arg(path).timeout(RECOVERY_TIMEOUT).run()
        }
        DumpFormat::Plain => Program::new(installation.program("psql"))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(server.conninfo("postgres"))
            .arg("-f")
            .arg(path)
            .timeout(RECOVERY_TIMEOUT)
            .run(),
    };
    restored.map_err(|e| {
        if e.is_disk_full() {
            Error::DiskFull { what: format!("restoring the dump {}", path.display()), detail: e.to_string() }
        } else {
            bad(format!("restoring the dump {}: {}", path.display(), program_error(&e)))
        }
    })?;
    server.stop_within(STOP_TIMEOUT)?;
    Ok(())
}

/// What a failed program said (the end of it: the error comes last), without the program's
/// path.
fn program_error(e: &sys::Error) -> String {
    match e {
        sys::Error::Failed { stderr, .. } => {
            let lines: Vec<&str> = stderr.trim().lines().collect();
            lines[lines.len().saturating_sub(20)..].join("\n")
        }
        other => other.to_string(),
    }
}

// ------------------------------------------------------------------------ pgBackRest

/// pgBackRest with everything on its command line: the repository, no configuration file
/// (not the host's `/etc/pgbackrest.conf` either), logs to stderr only (errors).
fn pgbackrest(repo: &Path, user: &User) -> Program {
    Program::new(PGBACKREST)
        .arg("--config=/dev/null")
        .arg(format!("--repo1-path={}", repo.display()))
        .args(["--log-level-console=off", "--log-level-stderr=error", "--log-level-file=off"])
        .user(user)
}

/// A directory for pgBackRest's locks in `run_dir`, its user's.
fn lock_dir(run_dir: &Path, user: &User) -> Result<std::path::PathBuf> {
    let lock = run_dir.join("pgbackrest-lock");
    fs::create_dir_all(&lock)?;
    if sys::user::running_as_root() {
        for path in [run_dir, &lock] {
            std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid))?;
        }
    }
    Ok(lock)
}

pub(crate) fn inspect_repo(
    repo: &Path,
    stanza: Option<&str>,
    target: &RecoveryTarget,
    user: &User,
) -> Result<RepoFacts> {
    check_target(target)?;
    let out = pgbackrest(repo, user)
        .args(["--output=json", "info"])
        .timeout(Duration::from_secs(120))
        .run()
        .map_err(|e| bad(format!("reading the backup repository {}: {}", repo.display(), program_error(&e))))?;
    let info: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| bad(format!("pgBackRest's account of {}: {e}", repo.display())))?;
    let stanzas = info.as_array().cloned().unwrap_or_default();
    let names: Vec<&str> = stanzas.iter().filter_map(|s| s["name"].as_str()).collect();
    let chosen = match stanza {
        Some(wanted) => stanzas.iter().find(|s| s["name"].as_str() == Some(wanted)).ok_or_else(|| {
            bad(format!(
                "the backup repository {} has no stanza {wanted} (it has {})",
                repo.display(),
                if names.is_empty() { "none".to_owned() } else { names.join(", ") }
            ))
        })?,
        None => match stanzas.as_slice() {
            [only] => only,
            [] => {
                return Err(bad(format!(
                    "{} holds no stanza: is it a pgBackRest repository (its repo1-path)?",
                    repo.display()
                )))
            }
            _ => {
                return Err(bad(format!(
                    "the backup repository {} has several stanzas ({}); say which with --stanza",
                    repo.display(),
                    names.join(", ")
                )))
            }
        },
    };
    let name = chosen["name"].as_str().unwrap_or_default().to_owned();
    if chosen["status"]["code"].as_i64() != Some(0) {
        return Err(bad(format!(
            "stanza {name} of the backup repository {}: {}",
            repo.display(),
            chosen["status"]["message"].as_str().unwrap_or("unreadable")
        )));
    }
    let version = chosen["db"]
        .as_array()
        .and_then(|dbs| dbs.last())
        .and_then(|db| db["version"].as_str())
        .and_then(major_of)
        .ok_or_else(|| bad(format!("stanza {name} of {} names no {ENGINE_NAME} version", repo.display())))?;
    // A target time before every backup's end: pgBackRest would take the latest backup, and
    // the image would silently be of a later point.
    if let RecoveryTarget::Time(t) = target {
        let stops: Vec<i64> = chosen["backup"]
            .as_array()
            .map(|backups| backups.iter().filter_map(|b| b["timestamp"]["stop"].as_i64()).collect())
            .unwrap_or_default();
        if stops.is_empty() {
            return Err(bad(format!("stanza {name} of the backup repository {} has no backup", repo.display())));
        }
        let earliest = stops.iter().copied().min().unwrap_or_default();
        if let Some(at) = epoch_of(&engine_time(t)) {
            if at < earliest as f64 {
                return Err(bad(format!(
                    "time {t} is before the end of every backup of stanza {name} (the earliest ended {} s later): a \
                     backup recovers only to a point after it was taken",
                    (earliest as f64 - at).ceil()
                )));
            }
        }
    }
    Ok(RepoFacts { version: version.to_string(), stanza: name })
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn restore_repo(
    search: &Search,
    repo: &Path,
    stanza: &str,
    target: &RecoveryTarget,
    data_dir: &Path,
    run_dir: &Path,
    user: &User,
) -> Result<()> {
    let facts = inspect_repo(repo, Some(stanza), target, user)?;
    let major = Major::parse(&facts.version).map_err(|b| b.into_error())?;
    let installation = search.find(major)?;
    let lock = lock_dir(run_dir, user)?;
    let mut restore = pgbackrest(repo, user)
        .arg(format!("--lock-path={}", lock.display()))
        // Tablespaces go to the run directory, never back to where the backup's server had
        // them (a live server's files); recovery brings them inside the copy first.
        .arg(format!("--tablespace-map-all={}", run_dir.join("tablespaces").display()))
        .arg(format!("--stanza={stanza}"))
        // An argument of its own, so that a cancelled image job finds the program by the
        // image's directory (sys::procfs::processes_under) and stops it.
        .arg("--pg1-path")
        .arg(data_dir);
    restore = match target {
        RecoveryTarget::Latest => restore.arg("--type=default"),
        RecoveryTarget::Time(t) => {
            restore.args(["--type=time", "--target-action=promote"]).arg(format!("--target={}", engine_time(t)))
        }
        RecoveryTarget::Position(p) => {
            restore.args(["--type=lsn", "--target-action=promote"]).arg(format!("--target={p}"))
        }
    };
    restore.arg("restore").timeout(RECOVERY_TIMEOUT).run().map_err(|e| {
        if e.is_disk_full() {
            Error::DiskFull { what: format!("restoring from {}", repo.display()), detail: e.to_string() }
        } else {
            bad(format!("restoring stanza {stanza} from {}: {}", repo.display(), program_error(&e)))
        }
    })?;
    // The log comes from the repository while recovery runs, and from nowhere afterwards.
    let archive_get = format!(
        "{PGBACKREST} --config=/dev/null --repo1-path={} --lock-path={} --log-level-console=off \
         --log-level-stderr=error --log-level-file=off --stanza={stanza} --pg1-path={} archive-get %f \"%p\"",
        shell_word(repo)?,
        shell_word(&lock)?,
        shell_word(data_dir)?,
    );
    let recovered = recover(&installation, data_dir, run_dir, user, archive_get, target);
    remove_recovery_settings(data_dir)?;
    recovered
}

/// Takes out of `postgresql.auto.conf` what a restore wrote there for recovery.
fn remove_recovery_settings(data_dir: &Path) -> Result<()> {
    let auto = data_dir.join("postgresql.auto.conf");
    let Ok(text) = fs::read_to_string(&auto) else { return Ok(()) };
    let kept: Vec<&str> = text
        .lines()
        .filter(|line| {
            let key = line.split('=').next().unwrap_or("").trim();
            !(line.contains("generated by pgBackRest")
                || key == "restore_command"
                || key.starts_with("recovery_target")
                || key == "recovery_end_command"
                || key == "archive_cleanup_command")
        })
        .collect();
    let mut new = kept.join("\n");
    new.push('\n');
    if new != text {
        let meta = fs::metadata(&auto)?;
        fs::write(&auto, new)?;
        fs::set_permissions(&auto, fs::Permissions::from_mode(meta.permissions().mode() & 0o777))?;
    }
    for name in ["recovery.signal", "standby.signal"] {
        match fs::remove_file(data_dir.join(name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
    }
    Ok(())
}

// ------------------------------------------------------------------- recovery to a target

/// A path as one single-quoted word of a shell command that the server runs, refused where
/// the server's `%` escapes or a quote would change it.
fn shell_word(path: &Path) -> Result<String> {
    let text = path.display().to_string();
    if text.contains(['\'', '%', '\n']) {
        return Err(bad(format!("{text}: a path with a quote, `%` or a newline cannot go into a restore_command")));
    }
    Ok(format!("'{text}'"))
}

/// A time as the server and pgBackRest read it: RFC 3339's `T` and `Z` become a space and
/// `+00`.
fn engine_time(time: &str) -> String {
    let mut t = time.trim().to_owned();
    if t.len() > 10 && t.as_bytes()[10] == b'T' {
        t.replace_range(10..11, " ");
    }
    if let Some(stripped) = t.strip_suffix(['Z', 'z']) {
        t = format!("{stripped}+00");
    }
    t
}

/// Seconds since 1970 of a time as [`engine_time`] writes it, when it names its zone as
/// `Z`, `UTC`, `GMT` or an offset (`+00`, `+05:30`, `-0800`); `None` otherwise.
fn epoch_of(time: &str) -> Option<f64> {
    let time = time.trim();
    let number =
        |s: &str| -> Option<i64> { (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok())? };
    let (date, rest) = (time.get(..10)?, time.get(11..)?);
    let mut parts = date.split('-');
    let (y, m, d) = (number(parts.next()?)?, number(parts.next()?)?, number(parts.next()?)?);
    // The clock, then the zone.
    let zone_at =
        rest.find(|c: char| c == '+' || c == '-' || c.is_ascii_alphabetic() || c == ' ').unwrap_or(rest.len());
    let (clock, zone) = rest.split_at(zone_at);
    let mut clock = clock.split(':');
    let hours = number(clock.next()?)?;
    let minutes = number(clock.next()?)?;
    let seconds: f64 = match clock.next() {
        Some(s) => s.parse().ok().filter(|s: &f64| s.is_finite())?,
        None => 0.0,
    };
    let offset = match zone.trim() {
        "Z" | "z" | "UTC" | "GMT" => 0,
        z if z.starts_with(['+', '-']) => {
            let sign = if z.starts_with('-') { -1 } else { 1 };
            let digits: String = z[1..].chars().filter(|c| *c != ':').collect();
            let (h, m) = match digits.len() {
                2 => (number(&digits)?, 0),
                4 => (number(&digits[..2])?, number(&digits[2..])?),
                _ => return None,
            };
            sign * (h * 3600 + m * 60)
        }
        _ => return None,
    };
    // Days from 1970-01-01 to the date (the civil calendar's algorithm by Howard Hinnant).
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + hours * 3600 + minutes * 60 - offset) as f64 + seconds)
}

/// When the base backup in `data_dir` started, from its `backup_label` (`START TIME:
/// 2026-11-30 01:55:10 UTC`), in seconds since 1970; `None` when it has none or names a zone
/// [`epoch_of`] does not read.
fn backup_start(data_dir: &Path) -> Option<(f64, String)> {
    let label = fs::read_to_string(data_dir.join("backup_label")).ok()?;
    let start = label.lines().find_map(|l| l.strip_prefix("START TIME:"))?.trim().to_owned();
    Some((epoch_of(&start)?, start))
}

pub(crate) fn check_target(target: &RecoveryTarget) -> Result<()> {
    match target {
        RecoveryTarget::Latest => Ok(()),
        RecoveryTarget::Time(t) => {
            let t = engine_time(t);
            let date_ok = t.len() >= 16
                && t.bytes()
                    .take(10)
                    .enumerate()
                    .all(|(i, b)| if i == 4 || i == 7 { b == b'-' } else { b.is_ascii_digit() })
                && t.as_bytes()[10] == b' ';
            let rest_ok = t.bytes().skip(10).all(|b| b.is_ascii_alphanumeric() || b" :.+-/_".contains(&b));
            if date_ok && rest_ok {
                Ok(())
            } else {
                Err(bad(format!("{t:?} is not a time: give one like 2026-11-30T02:00:00Z or 2026-11-30 02:00:00+00")))
            }
        }
        RecoveryTarget::Position(p) => {
            let hex = |s: &str| (1..=8).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit());
            match p.split_once('/') {
                Some((hi, lo)) if hex(hi) && hex(lo) => Ok(()),
                _ => Err(bad(format!("{p:?} is not a WAL position (LSN): give one like 0/3000060"))),
            }
        }
    }
}

pub(crate) fn recover_to(
    search: &Search,
    data_dir: &Path,
    archive: &Path,
    target: &RecoveryTarget,
    run_dir: &Path,
    user: &User,
) -> Result<()> {
    let major = datadir::detect(data_dir)?;
    let installation = search.find(major)?;
    if !archive.is_dir() {
        return Err(bad(format!("the WAL archive {} is not a directory", archive.display())));
    }
    // A target time before the backup began: its files already hold what was committed
    // after the target, and recovery could not take it out.
    if let (RecoveryTarget::Time(t), Some((start, shown))) = (target, backup_start(data_dir)) {
        if epoch_of(&engine_time(t)).is_some_and(|at| at < start) {
            return Err(bad(format!(
                "time {t} is before the base backup began ({shown}): a backup recovers only to a point after it \
                 was taken (give a later target, or an older backup)"
            )));
        }
    }
    let restore_command = format!("cp {}/%f \"%p\"", shell_word(archive)?);
    recover(&installation, data_dir, run_dir, user, restore_command, target)?;
    remove_recovery_settings(data_dir)
}

/// Runs archive recovery on `data_dir` to `target`, fetching WAL with `restore_command`,
/// until the server promotes; then stops it cleanly.
fn recover(
    installation: &Installation,
    data_dir: &Path,
    run_dir: &Path,
    user: &User,
    restore_command: String,
    target: &RecoveryTarget,
) -> Result<()> {
    check_target(target)?;
    // Whatever the backup reaches outside itself (tablespaces) comes in before a server
    // starts on it: recovery must not write to the source's files.
    let control = datadir::control_data(installation, data_dir, user)?;
    let version_dir = format!("PG_{}_{}", installation.major, control.catalog_version);
    crate::self_contained::make_self_contained(data_dir, &version_dir, user, None)?;
    for name in ["standby.signal", "postmaster.pid", "postmaster.opts"] {
        match fs::remove_file(data_dir.join(name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
    }
    let signal = data_dir.join("recovery.signal");
    fs::write(&signal, b"")?;
    fs::set_permissions(&signal, fs::Permissions::from_mode(0o600))?;
    std::os::unix::fs::chown(&signal, Some(user.uid), Some(user.gid))?;

    let mut extra: Vec<(&'static str, String)> = vec![
        ("restore_command", restore_command),
        ("recovery_target_action", "promote".into()),
        // Connections only once promoted: the server is ready exactly when recovery is over.
        ("hot_standby", "off".into()),
        ("recovery_target_timeline", "latest".into()),
    ];
    match target {
        RecoveryTarget::Latest => {}
        RecoveryTarget::Time(t) => extra.push(("recovery_target_time", engine_time(t))),
        RecoveryTarget::Position(p) => extra.push(("recovery_target_lsn", p.clone())),
    }
    let spec = temporary_spec(installation.major, data_dir, run_dir, user, "");
    let log_start = fs::symlink_metadata(run_dir.join("postgres.log")).map_or(0, |m| m.len());
    let mut server = server::start_with(installation, &spec, RECOVERY_TIMEOUT, Role::Prepare, &extra)
        .map_err(|e| recovery_failed(e, target))?;
    // With hot_standby off the server says it is up ("standby") while it recovers.
    server.wait_promoted(RECOVERY_TIMEOUT, log_start).map_err(|e| recovery_failed(e, target))?;
    server.stop_within(STOP_TIMEOUT)?;
    if signal.exists() {
        let log = server::log_since(&run_dir.join("postgres.log"), 0);
        let tail: Vec<&str> = log.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect();
        return Err(Error::Other(format!(
            "recovering {} to {target}: the server did not promote; its log ends with:\n{}",
            data_dir.display(),
            tail.join("\n")
        )));
    }
    Ok(())
}

/// Why recovery failed, said as what to do about it.
fn recovery_failed(e: Error, target: &RecoveryTarget) -> Error {
    let text = e.to_string();
    let fatal = text.lines().find_map(|l| {
        let at = l.find("FATAL:").or_else(|| l.find("PANIC:"))?;
        Some(l[at + "FATAL:".len()..].trim().to_owned())
    });
    let Some(fatal) = fatal else { return e };
    if fatal.contains("recovery ended before configured recovery target was reached") {
        bad(format!(
            "the archived WAL ends before {target}: recovery cannot reach it (give an earlier target, or archive more \
             WAL); the server said: {fatal}"
        ))
    } else if fatal.contains("before consistent recovery point") {
        bad(format!(
            "{target} is before the end of the backup: a backup recovers only to a point after it was taken (give a \
             later target, or an older backup); the server said: {fatal}"
        ))
    } else {
        bad(format!("recovery to {target} failed: {fatal}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dump goes into its own major, or the newest installed above it; none is an error
    /// that says what to install.
    #[test]
    fn a_dump_is_restored_into_its_major_or_a_newer_one() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        for major in [13, 16] {
            let bin = dir.path().join(format!("pg{major}/bin"));
            fs::create_dir_all(&bin).unwrap();
            let postgres = bin.join("postgres");
            fs::write(&postgres, format!("#!/bin/sh\necho 'postgres (PostgreSQL) {major}.1'\n")).unwrap();
            fs::set_permissions(&postgres, fs::Permissions::from_mode(0o755)).unwrap();
            fs::write(bin.join("pg_ctl"), "").unwrap();
        }
        let search = Search {
            extra: vec![dir.path().join("pg13"), dir.path().join("pg16")],
            debian_root: dir.path().join("debian"),
            rpm_root: dir.path().join("rpm"),
            pg_config: false,
        };
        assert_eq!(installation_for(&search, Major(13)).unwrap().major, Major(13));
        assert_eq!(installation_for(&search, Major(14)).unwrap().major, Major(16));
        let err = installation_for(&search, Major(17)).unwrap_err().to_string();
        assert!(err.contains("PostgreSQL 17 is not installed") && err.contains("postgresql-17"), "{err}");
    }

    #[test]
    fn times_and_positions() {
        assert_eq!(engine_time("2026-11-30T02:00:00Z"), "2026-11-30 02:00:00+00");
        assert_eq!(engine_time("2026-11-30 02:00:00.123+01"), "2026-11-30 02:00:00.123+01");
        for good in ["2026-11-30T02:00:00Z", "2026-11-30 02:00:00.123456+00", "2026-11-30 02:00:00+05:30"] {
            check_target(&RecoveryTarget::Time(good.into())).unwrap();
        }
        for bad in ["yesterday", "2026-11-30", "2026-11-30; DROP", "30/11/2026 02:00"] {
            assert!(check_target(&RecoveryTarget::Time(bad.into())).is_err(), "{bad}");
        }
        check_target(&RecoveryTarget::Position("0/3000060".into())).unwrap();
        assert!(check_target(&RecoveryTarget::Position("3000060".into())).is_err());
        assert_eq!(major_of("15.18 (Debian 15.18-0+deb12u1)"), Some(Major(15)));
        assert_eq!(major_of("9.6.24"), None);
        assert_eq!(epoch_of("1970-01-01 00:00:00+00"), Some(0.0));
        assert_eq!(epoch_of("1970-01-02 01:00:00 UTC"), Some(90_000.0));
        assert_eq!(epoch_of(&engine_time("2026-11-30T02:00:00.5Z")), Some(1_796_004_000.5));
        assert_eq!(epoch_of("2026-11-30 03:30:00+01:30"), Some(1_796_004_000.0));
        assert_eq!(epoch_of("2026-11-30 02:00:00"), None, "no zone");
        assert_eq!(epoch_of("2026-11-30 02:00:00 CET"), None);
    }
}
