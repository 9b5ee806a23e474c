//! What `/proc` says of a process: whether it lives, whether it is the one we think, and
//! whose it is.

use std::fs;
use std::path::Path;

/// The first line of a pid file, as a pid. Pid files may live where a less trusted user
/// writes (a clone's run and data directories): a symlink or FIFO in their place is not
/// read (see [`crate::untrusted`]).
pub fn read_pid(path: &Path) -> Option<i32> {
    crate::untrusted::read_to_string(path, 4096).ok()?.lines().next()?.trim().parse().ok().filter(|&pid| pid > 0)
}

/// Whether `pid` is a running process (not a zombie).
pub fn is_alive(pid: i32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    // The state is the first field after the command name, which is in parentheses.
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, Some("Z") | Some("X") | None)
}

/// Whether `pid` is a running (not zombie) process with `path` among its arguments. Pid
/// files may be stale (after a reboot the numbers belong to other processes), so a process
/// is only ever signalled when its command line names what it is meant to serve.
pub fn is_live_process_of(pid: i32, path: &Path) -> bool {
    if !is_alive(pid) {
        return false;
    }
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let wanted = path.as_os_str().as_encoded_bytes();
    cmdline.split(|&b| b == 0).any(|arg| arg == wanted)
}

/// The state letter of a process (`R`, `S`, `D`, `T` stopped by a signal, `t` traced, `Z`…),
/// or `None` when it is gone.
pub fn state(pid: i32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().next()?.chars().next()
}

/// `pid` and every live process descended from it, parents before their children.
pub fn descendants(pid: i32) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    let mut parent_of = std::collections::HashMap::new();
    for child in entries.flatten().filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok()) {
        let Ok(stat) = fs::read_to_string(format!("/proc/{child}/stat")) else { continue };
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        let mut fields = rest.split_whitespace();
        let state = fields.next();
        if matches!(state, Some("Z") | Some("X")) {
            continue;
        }
        if let Some(parent) = fields.next().and_then(|p| p.parse::<i32>().ok()) {
            parent_of.insert(child, parent);
        }
    }
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        let mut children: Vec<i32> = parent_of.iter().filter(|(_, &p)| p == parent).map(|(&c, _)| c).collect();
        children.sort_unstable();
        found.extend(children);
        i += 1;
    }
    found
}

/// The live processes whose parent is `pid`.
pub fn children_of(pid: i32) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&child| {
            fs::read_to_string(format!("/proc/{child}/stat")).is_ok_and(|stat| {
                // The fields after the command name (in parentheses): state, then parent.
                stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<i32>().ok())
                    == Some(pid)
            }) && is_alive(child)
        })
        .collect()
}

/// The argument list of a process.
pub fn cmdline(pid: i32) -> Option<Vec<String>> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(raw.split(|&b| b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect())
}

/// Every live process whose command line has an argument under `dir` (for finding what a
/// killed program left running in its data directory).
pub fn processes_under(dir: &Path) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    let prefix = dir.as_os_str().as_encoded_bytes();
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            is_alive(pid)
                && fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| c.split(|&b| b == 0).any(|arg| arg.starts_with(prefix)))
        })
        .collect()
}

/// Every uid some live process runs as (real, effective, saved or filesystem), in one pass
/// over `/proc`: for choosing among many uids, where [`processes_of_uid`] for each would
/// read every process once per uid.
pub fn uids_in_use() -> std::collections::HashSet<u32> {
    let mut uids = std::collections::HashSet::new();
    let Ok(entries) = fs::read_dir("/proc") else { return uids };
    for pid in entries.flatten().filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok()) {
        let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) else { continue };
        let line = status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap_or_default();
        let found: Vec<u32> = line.split_whitespace().filter_map(|u| u.parse().ok()).collect();
        if !found.is_empty() && is_alive(pid) {
            uids.extend(found);
        }
    }
    uids
}

/// Every live process that runs as `uid`: its real, effective, saved or filesystem uid.
pub fn processes_of_uid(uid: u32) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) else { return false };
            let uids = status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap_or_default();
            uids.split_whitespace().any(|u| u.parse() == Ok(uid)) && is_alive(pid)
        })
        .collect()
}

/// The range of ports the kernel gives the local end of outgoing connections
/// (`net.ipv4.ip_local_port_range`).
pub fn ephemeral_ports() -> Option<(u16, u16)> {
    let text = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut ports = text.split_whitespace().map(|p| p.parse::<u16>());
    match (ports.next(), ports.next()) {
        (Some(Ok(first)), Some(Ok(last))) => Some((first, last)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn only_a_live_process_naming_the_path_counts() {
        let dir = tempfile::tempdir().unwrap();
        let ours = dir.path().join("clones/a/data");
        // A shell that keeps the path among its arguments (`; true` stops it exec'ing sleep).
        // Started directly: this is a test of what /proc shows of any process.
        #[allow(clippy::disallowed_methods)]
        let mut child =
            std::process::Command::new("sh").args(["-c", "sleep 30; true", "sh"]).arg(&ours).spawn().unwrap();
        let pid = child.id() as i32;
        std::thread::sleep(Duration::from_millis(50));
        assert!(is_live_process_of(pid, &ours));
        assert!(processes_under(dir.path()).contains(&pid));
        assert!(!is_live_process_of(pid, &dir.path().join("clones/b/data")), "another clone's path matched");
        // Killed but not reaped: a zombie is gone.
        child.kill().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert!(!is_live_process_of(pid, &ours), "a zombie counted as live");
        child.wait().unwrap();
    }

    #[test]
    fn pid_files_are_read_strictly() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pid");
        assert_eq!(read_pid(&f), None);
        fs::write(&f, "123\n/data\n").unwrap();
        assert_eq!(read_pid(&f), Some(123));
        fs::write(&f, "-1\n").unwrap();
        assert_eq!(read_pid(&f), None);
        // A symlink to a pid file is not followed.
        fs::write(&f, "123\n").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&f, &link).unwrap();
        assert_eq!(read_pid(&link), None);
    }

    #[test]
    fn this_process_is_among_its_uids() {
        let me = std::process::id() as i32;
        assert!(processes_of_uid(nix::unistd::geteuid().as_raw()).contains(&me));
        assert!(!processes_of_uid(2_000_099_998).contains(&me));
    }
}

/// How many established TCP connections each local port has, over IPv4 and IPv6, in this
/// network namespace (`/proc/net/tcp` and `tcp6`).
pub fn established_by_local_port() -> std::collections::HashMap<u16, u32> {
    let mut ports = std::collections::HashMap::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let mut fields = line.split_whitespace();
            let (Some(local), Some(_remote), Some(state)) = (fields.nth(1), fields.next(), fields.next()) else {
                continue;
            };
            // 01 is TCP_ESTABLISHED; the local address ends in ":PORT" in hexadecimal.
            if state != "01" {
                continue;
            }
            if let Some(port) = local.rsplit_once(':').and_then(|(_, p)| u16::from_str_radix(p, 16).ok()) {
                *ports.entry(port).or_insert(0) += 1;
            }
        }
    }
    ports
}

#[cfg(test)]
mod established_tests {
    #[test]
    fn a_connection_is_counted_on_its_local_port() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let before = super::established_by_local_port().get(&port).copied().unwrap_or(0);
        let _client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (_server, _) = listener.accept().unwrap();
        assert_eq!(super::established_by_local_port().get(&port).copied().unwrap_or(0), before + 1);
    }
}
