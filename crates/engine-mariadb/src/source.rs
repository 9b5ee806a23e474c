//! Live sources, reached through their connection URLs (`mariadb://USER:PASSWORD@HOST:PORT/`):
//! whether one answers, and a consistent copy of one with `mariadb-backup --backup` and
//! `--prepare`, while it keeps running. `mariadb-backup` reads the server's files itself, so
//! the source must run on this host: its data directory (`@@datadir`) must be here, and it
//! runs as the OS user that owns that directory (as root; otherwise as this process's user).
//! The copy then belongs to the user the caller names.
//!
//! The password never appears in an argument list, a message or a log line: programs get it
//! in `MYSQL_PWD`.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use engine::{Error, Result, SourceUrl, User};
use sys::Program;

use crate::install::{Installation, Search};

/// How long connecting to a source may take before it counts as unreachable.
const CONNECT_TIMEOUT_SECONDS: u32 = 10;

/// A `mariadb` or `mariadb-backup` that logs in to `source` over TCP with its credentials.
pub(crate) fn connect(program: Program, source: &SourceUrl) -> Program {
    let mut program = program
        .arg("--protocol=TCP")
        .arg(format!("--host={}", source.host().trim_start_matches('[').trim_end_matches(']')))
        .arg(format!("--port={}", source.port().unwrap_or(3306)));
    if let Some(user) = source.user() {
        program = program.arg(format!("--user={user}"));
    }
    match source.password() {
        Some(password) => program.env("MYSQL_PWD", password.expose()),
        None => program,
    }
}

/// Refuses a source URL that is not a server over TCP with the URL's own user and password,
/// or that sets parameters (none is read).
pub(crate) fn check_safe(source: &SourceUrl) -> Result<()> {
    let example = "mariadb://USER:PASSWORD@HOST:PORT/";
    let host = source.host();
    if host.is_empty() || host.starts_with('/') || host.starts_with('%') {
        return Err(Error::BadSource(format!(
            "thinclone connects to a source over TCP only, never through a local socket: give its host, as in {example}"
        )));
    }
    if let Some((key, _)) = source.url().query_pairs().next() {
        return Err(Error::BadSource(format!("the source URL may not set `{key}`; give it as {example}")));
    }
    if source.user().is_none() || source.password().is_none() {
        return Err(Error::BadSource(format!(
            "give the source's user and password in the URL, as in {example}: thinclone logs in with them only"
        )));
    }
    Ok(())
}

/// What a source says of itself: its version and data directory.
struct Facts {
    version: String,
    data_dir: PathBuf,
}

fn ask(installation: &Installation, source: &SourceUrl) -> Result<Facts> {
    let program = Program::new(installation.program("mariadb"))
        .arg("--no-defaults")
        .args(["--batch", "--skip-column-names"])
        .arg(format!("--connect-timeout={CONNECT_TIMEOUT_SECONDS}"))
        .stdin(b"SELECT @@version, HEX(@@datadir);".to_vec())
        .timeout(Duration::from_secs(u64::from(CONNECT_TIMEOUT_SECONDS) + 30));
    let out = match connect(program, source).run() {
        Ok(out) => out,
        Err(sys::Error::Failed { stderr, .. }) => {
            return Err(Error::Unreachable { url: source.shown(), why: stderr.trim().to_owned() })
        }
        Err(sys::Error::TimedOut { seconds, .. }) => {
            return Err(Error::Unreachable { url: source.shown(), why: format!("no answer within {seconds} s") })
        }
        Err(e) => return Err(e.into()),
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let (version, hex) = text
        .trim()
        .split_once('\t')
        .ok_or_else(|| Error::Other(format!("the source {} answered {text:?}", source.shown())))?;
    if !version.contains("MariaDB") {
        return Err(Error::BadSource(format!(
            "the source {} is not a {} server (it says it is {version})",
            source.shown(),
            crate::ENGINE_NAME
        )));
    }
    let version = crate::install::major_minor(version)
        .ok_or_else(|| Error::Other(format!("the source {} says its version is {version:?}", source.shown())))?;
    let data_dir = crate::server::from_hex(hex.trim())
        .and_then(|b| String::from_utf8(b).ok())
        .map(PathBuf::from)
        .ok_or_else(|| Error::Other(format!("the source {} answered {text:?}", source.shown())))?;
    Ok(Facts { version, data_dir })
}

/// Checks that the source accepts the URL's credentials, is a MariaDB server of a version
/// installed here, and runs on this host.
pub(crate) fn probe(search: &Search, source: &SourceUrl) -> Result<()> {
    check_safe(source)?;
    let facts = ask(&search.any()?, source)?;
    search.find(&facts.version)?.require("mariadb-backup", "mariadb-backup")?;
    local_data_dir(source, &facts.data_dir).map(drop)
}

/// The source's data directory, which must be a MariaDB data directory on this host, served
/// by the very server the URL reaches: the process that holds the directory's locks must be
/// the one listening on the URL's address and port. Otherwise a server elsewhere could name
/// the directory of another server of this host, whose files `mariadb-backup` would copy.
fn local_data_dir(source: &SourceUrl, data_dir: &Path) -> Result<fs::Metadata> {
    let not_here = |why: &str| {
        Error::BadSource(format!(
            "the source {} keeps its files in {}, {why}: mariadb-backup copies a server's files, so the source must \
             run on the host of the agent that makes the image, and its URL must reach it at one of this host's \
             addresses (an IP address or localhost)",
            source.shown(),
            data_dir.display(),
        ))
    };
    if crate::datadir::detect(data_dir).is_err() {
        return Err(not_here(&format!("which is not a {} data directory on this host", crate::ENGINE_NAME)));
    }
    let pid = crate::datadir::live_server(data_dir)
        .filter(|&pid| pid > 0)
        .ok_or_else(|| not_here("on which no server of this host runs"))?;
    let port = source.port().unwrap_or(3306);
    let addresses = addresses_of(source.host()).ok_or_else(|| not_here("and its host is not an IP address"))?;
    if !addresses.iter().any(|ip| listens(pid, *ip, port)) {
        return Err(not_here(&format!(
            "but the server on that directory (pid {pid}) does not listen where the URL points"
        )));
    }
    Ok(fs::metadata(data_dir)?)
}

/// The addresses a URL's host names, without asking DNS: an IP address, or `localhost`.
fn addresses_of(host: &str) -> Option<Vec<IpAddr>> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.eq_ignore_ascii_case("localhost") {
        return Some(vec![IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)]);
    }
    host.parse::<IpAddr>().ok().map(|ip| vec![ip])
}

/// Whether the process `pid` holds a TCP socket listening on `port` at `ip` (or at every
/// address).
fn listens(pid: i32, ip: IpAddr, port: u16) -> bool {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(table) else { continue };
        inodes.extend(text.lines().skip(1).filter_map(|line| listening_inode(line, ip, port)));
    }
    if inodes.is_empty() {
        return false;
    }
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    fds.flatten().any(|fd| {
        fs::read_link(fd.path()).is_ok_and(|target| {
            let target = target.to_string_lossy();
            inodes.iter().any(|inode| target == format!("socket:[{inode}]"))
        })
    })
}

/// The inode of a line of `/proc/net/tcp` or `tcp6` that is a socket listening on `port` at
/// `ip` or at every address.
fn listening_inode(line: &str, ip: IpAddr, port: u16) -> Option<u64> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (address, state, inode) = (fields.get(1)?, fields.get(3)?, fields.get(9)?);
    if *state != "0A" {
        return None;
    }
    let (hex, hex_port) = address.split_once(':')?;
    if u16::from_str_radix(hex_port, 16).ok()? != port {
        return None;
    }
    // The address is in the kernel's byte order, 32 bits at a time.
    let mut bytes = Vec::new();
    for word in 0..hex.len() / 8 {
        let value = u32::from_str_radix(hex.get(word * 8..word * 8 + 8)?, 16).ok()?;
        bytes.extend(value.to_ne_bytes());
    }
    let listening: IpAddr = match bytes.len() {
        4 => IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
        16 => {
            let v6 = Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?);
            v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
        }
        _ => return None,
    };
    (listening.is_unspecified() || listening == ip).then(|| inode.parse().ok()).flatten()
}

/// Copies the server at `source` into `target` (an empty directory owned by `user`) with
/// `mariadb-backup --backup`, then makes the copy consistent with `--prepare`.
pub(crate) fn copy_live(
    search: &Search,
    source: &SourceUrl,
    target: &Path,
    user: &User,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    check_safe(source)?;
    let facts = ask(&search.any()?, source)?;
    let installation = search.find(&facts.version)?;
    installation.require("mariadb-backup", "mariadb-backup")?;
    let meta = local_data_dir(source, &facts.data_dir)?;
    // As root, the copy is made by the OS user that owns the source's files (they are private
    // to it), and given back to `user` afterwards; the agent gives the copy to its user anyway.
    let copier = if sys::user::running_as_root() {
        if meta.uid() == 0 {
            return Err(Error::BadSource(format!(
                "the source's data directory {} belongs to root; thinclone copies it as the OS user that owns it, \
                 and never as root",
                facts.data_dir.display()
            )));
        }
        User::synthetic(meta.uid(), meta.gid())
    } else {
        user.clone()
    };
    if sys::user::running_as_root() {
        std::os::unix::fs::chown(target, Some(copier.uid), Some(copier.gid))?;
    }
    let total = sys::tree::size(&facts.data_dir).bytes;
    progress(0, total);
    let mut done = 0u64;
    let backup = Program::new(installation.program("mariadb-backup"))
        .arg("--no-defaults")
        .arg("--backup")
        .arg(format!("--target-dir={}", target.display()))
        .arg(format!("--datadir={}", facts.data_dir.display()))
        .user(&copier)
        .timeout(Duration::from_secs(7 * 24 * 3600));
    let mut said = Vec::new();
    let result = connect(backup, source).run_with_stderr_lines(|line| {
        // `[01] … Copying ./d/t.ibd to /target/d/t.ibd` and, later, `[01] …         ...done`.
        if let Some((_, to)) = line.split_once(" to ") {
            if let Ok(m) = fs::symlink_metadata(to.trim()) {
                done = (done + m.len()).min(total);
                progress(done, total);
            }
        }
        if line.contains("[ERROR]") || line.contains("Error") || line.contains("error") {
            said.push(line.trim().to_owned());
        }
    });
    if let Err(e) = result {
        return Err(match e {
            sys::Error::Failed { stderr, .. } if stderr.contains("No space left on device") => Error::DiskFull {
                what: format!("copying the live server {} into {}", source.shown(), target.display()),
                detail: said.join("\n"),
            },
            sys::Error::Failed { program, status, stderr } => {
                let tail: Vec<&str> = stderr.lines().rev().take(20).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                sys::Error::Failed { program, status, stderr: tail.join("\n") }.into()
            }
            e => e.into(),
        });
    }
    let prepare = Program::new(installation.program("mariadb-backup"))
        .arg("--no-defaults")
        .arg("--prepare")
        .arg(format!("--target-dir={}", target.display()))
        .user(&copier)
        .timeout(Duration::from_secs(7 * 24 * 3600));
    prepare.run().map_err(|e| match e {
        sys::Error::Failed { program, status, stderr } => {
            let tail: Vec<&str> = stderr.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            Error::from(sys::Error::Failed { program, status, stderr: tail.join("\n") })
        }
        e => e.into(),
    })?;
    if sys::user::running_as_root() {
        sys::tree::chown(target, user.uid, user.gid)?;
    }
    progress(total, total);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_sockets_are_read_from_proc() {
        let v4 = "   0: 0100007F:844C 00000000:0000 0A 00000000:00000000 00:00000000 00000000   103        0 4242 1 0 100 0 0 10 0";
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(listening_inode(v4, local, 0x844C), Some(4242));
        assert_eq!(listening_inode(v4, local, 3306), None);
        assert_eq!(listening_inode(v4, "10.0.0.1".parse().unwrap(), 0x844C), None);
        let any = v4.replace("0100007F:844C", "00000000:844C");
        assert_eq!(listening_inode(&any, "10.0.0.1".parse().unwrap(), 0x844C), Some(4242));
        let established = v4.replace(" 0A ", " 01 ");
        assert_eq!(listening_inode(&established, local, 0x844C), None);
        let v6 = "   0: 00000000000000000000000001000000:0CEA 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000   103        0 77 1 0 100 0 0 10 0";
        assert_eq!(listening_inode(v6, "::1".parse().unwrap(), 3306), Some(77));
        assert_eq!(addresses_of("[::1]"), Some(vec!["::1".parse().unwrap()]));
        assert_eq!(addresses_of("LocalHost").map(|a| a.len()), Some(2));
        assert_eq!(addresses_of("db.example"), None);
    }

    #[test]
    fn only_tcp_sources_with_their_own_credentials_are_taken() {
        check_safe(&SourceUrl::parse("mariadb://u:p@db.example:3306/").unwrap()).unwrap();
        for (bad, says) in [
            ("mariadb://u:p@db.example/x?socket=/run/mysqld/mysqld.sock", "may not set `socket`"),
            ("mariadb://u@db.example/", "user and password"),
            ("mariadb://db.example/", "user and password"),
            ("mariadb://u:p@%2Frun%2Fmysqld/", "never through a local socket"),
        ] {
            let err = SourceUrl::parse(bad).map_err(Error::BadSource).and_then(|u| check_safe(&u)).unwrap_err();
            assert!(err.to_string().contains(says), "{bad}: {err}");
            assert!(err.is_callers_mistake());
        }
    }
}
