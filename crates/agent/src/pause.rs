//! Pausing a clone's server while its files are captured for a checkpoint.
//!
//! Every process of the clone (its server, each process the server started, and, for a
//! clone with a uid of its own, whatever else runs as that uid) gets `SIGSTOP`, and the
//! pause begins once each one is stopped: no system call of theirs is then under way, so the
//! files hold every write that returned and none that did not, as after a power cut. The
//! database's crash recovery makes that state consistent when a revert starts from it.
//! Connections stay open; their clients wait for the length of the pause.
//!
//! `SIGCONT` ends the pause, when the [`Paused`] value is dropped, and at the agent's next
//! start for a pause a crash interrupted ([`resume`]).

use std::collections::HashSet;
use std::io;
use std::time::{Duration, Instant};

/// How long the processes may take to stop (one finishing a long write first).
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The stopped processes of a clone; dropping it lets them go on.
pub struct Paused {
    /// In the order they were stopped: the server first, so that it starts no new process.
    pids: Vec<i32>,
}

fn signal(pid: i32, sig: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions; the pids are the clone's server and
    // its descendants, or processes of the clone's own uid, found just before.
    unsafe { libc::kill(pid, sig) };
}

/// The processes of a clone: its server's tree, and the processes of its own uid.
fn processes(server: i32, own_uid: Option<u32>) -> Vec<i32> {
    let mut pids = sys::procfs::descendants(server);
    if let Some(uid) = own_uid {
        for pid in sys::procfs::processes_of_uid(uid) {
            if !pids.contains(&pid) {
                pids.push(pid);
            }
        }
    }
    pids
}

impl Paused {
    /// Stops the server `server` and every process of the clone, and waits until each one
    /// has stopped. On failure the processes already stopped go on again.
    pub fn pause(server: i32, own_uid: Option<u32>) -> io::Result<Paused> {
        let started = Instant::now();
        let mut paused = Paused { pids: Vec::new() };
        let mut seen = HashSet::new();
        loop {
            // A process forked just before its parent stopped shows up on the next pass.
            let new: Vec<i32> = processes(server, own_uid).into_iter().filter(|p| !seen.contains(p)).collect();
            if new.is_empty() {
                break;
            }
            for pid in new {
                signal(pid, libc::SIGSTOP);
                seen.insert(pid);
                paused.pids.push(pid);
            }
            loop {
                let running: Vec<i32> = paused
                    .pids
                    .iter()
                    .copied()
                    .filter(|&p| !matches!(sys::procfs::state(p), Some('T') | Some('t') | Some('Z') | Some('X') | None))
                    .collect();
                if running.is_empty() {
                    break;
                }
                if started.elapsed() > STOP_TIMEOUT {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "the clone's processes {running:?} did not pause within {} s; try again",
                            STOP_TIMEOUT.as_secs()
                        ),
                    ));
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        tracing::debug!(pids = ?paused.pids, waited_us = started.elapsed().as_micros() as u64, "clone paused");
        Ok(paused)
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        // Children first: the server goes on last, with all of its processes running.
        for &pid in self.pids.iter().rev() {
            signal(pid, libc::SIGCONT);
        }
    }
}

/// Lets a clone's processes go on after an agent that paused them died: harmless for a
/// process that was not stopped.
pub fn resume(server: Option<i32>, own_uid: Option<u32>) {
    let mut pids = match server {
        Some(pid) => processes(pid, own_uid),
        None => own_uid.map(sys::procfs::processes_of_uid).unwrap_or_default(),
    };
    pids.reverse();
    for pid in pids {
        signal(pid, libc::SIGCONT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_of_processes_pauses_and_goes_on() {
        // A shell whose child sleeps: both stop, both go on.
        let dir = tempfile::tempdir().unwrap();
        let mut child =
            sys::Program::new("sh").args(["-c", "sleep 30 & wait"]).spawn_logged(&dir.path().join("log")).unwrap();
        let shell = child.pid() as i32;
        let tree = sys::wait::until(Duration::from_secs(5), Duration::from_millis(5), || {
            let t = sys::procfs::descendants(shell);
            (t.len() == 2).then_some(t)
        })
        .expect("the shell started its child");
        {
            let paused = Paused::pause(shell, None).unwrap();
            assert_eq!(paused.pids.len(), 2);
            for &pid in &tree {
                assert_eq!(sys::procfs::state(pid), Some('T'), "{pid} is stopped");
            }
        }
        for &pid in &tree {
            let state = sys::procfs::state(pid);
            assert!(matches!(state, Some('S') | Some('R')), "{pid} goes on: {state:?}");
        }
        for &pid in tree.iter().rev() {
            signal(pid, libc::SIGKILL);
        }
        sys::wait::until(Duration::from_secs(5), Duration::from_millis(5), || child.try_wait().ok().flatten());
    }
}
