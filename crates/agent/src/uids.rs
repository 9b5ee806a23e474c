//! Clones' uids, unique on the host: every agent on the host (one per data directory)
//! claims the uid it gives a clone in one registry directory, so that no two clones, of one
//! data directory or of two, ever share a uid, and ending the processes of one clone's uid
//! never touches another clone.
//!
//! ```text
//! REGISTRY/            0700 root (/run/thinclone/clone-uids by default)
//!   lock               flock'ed while a uid is chosen and its clone's record written
//!   next               the next uid to try: agents of one host take turns along the range
//!   <uid>              a claim: the data directory and the clone's name, one a line
//! ```
//!
//! A claim is stale once the clone it names has no record with that uid (removed, or its
//! data directory gone); a stale claim is taken over. The registry may vanish (a reboot
//! clears `/run`): each agent claims its clones' uids again as it starts, and a clone whose
//! uid another clone has claimed meanwhile gets a new one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use api::Name;

use crate::record::CloneRecord;

/// Where agents claim uids unless told otherwise.
pub const DEFAULT_REGISTRY: &str = "/run/thinclone/clone-uids";

/// The registry, as one agent uses it.
pub(crate) struct Registry {
    dir: PathBuf,
    /// This agent's data directory, canonical.
    data_dir: PathBuf,
}

/// The registry's lock, held while it lives.
pub(crate) struct Held(File);

impl Drop for Held {
    fn drop(&mut self) {
        // SAFETY: flock on a descriptor we own; closing it would release the lock too.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// Whose a claimed uid is.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Claim {
    /// Nobody's, or a clone's that no longer has it.
    Free,
    /// This clone's.
    Ours,
    /// Another live clone's.
    Theirs(String),
}

impl Registry {
    pub(crate) fn open(dir: &Path, data_dir: &Path) -> io::Result<Registry> {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        Ok(Registry { dir: dir.to_owned(), data_dir: fs::canonicalize(data_dir)? })
    }

    /// Takes the registry's lock (every agent's on the host), waiting for it.
    pub(crate) fn lock(&self) -> io::Result<Held> {
        let file = OpenOptions::new().create(true).append(true).mode(0o600).open(self.dir.join("lock"))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Held(file))
    }

    /// The file that holds the next uid to give, for every agent of the host: agents on one
    /// host take turns along the range rather than each stepping over the others' uids.
    pub(crate) fn next_file(&self) -> PathBuf {
        self.dir.join("next")
    }

    fn path(&self, uid: u32) -> PathBuf {
        self.dir.join(uid.to_string())
    }

    /// Whose `uid` is, for the clone `name` of this agent. Call with the lock held.
    pub(crate) fn claim_of(&self, _held: &Held, uid: u32, name: &Name) -> io::Result<Claim> {
        let text = match fs::read_to_string(self.path(uid)) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Claim::Free),
            Err(e) => return Err(e),
        };
        let mut lines = text.lines();
        let (Some(data_dir), Some(clone)) = (lines.next(), lines.next()) else { return Ok(Claim::Free) };
        if Path::new(data_dir) == self.data_dir && clone == name.as_str() {
            return Ok(Claim::Ours);
        }
        let holder = Path::new(data_dir).join("clones").join(clone);
        match CloneRecord::load(&holder) {
            Ok(Some(record)) if record.uid == Some(uid) => Ok(Claim::Theirs(format!("clone {clone} of {data_dir}"))),
            // An unreadable record may still be a clone's: its uid stays taken.
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Ok(Claim::Theirs(format!("clone {clone} of {data_dir}, whose record cannot be read ({e})")))
            }
            _ => Ok(Claim::Free),
        }
    }

    /// Claims `uid` for the clone `name` of this agent (over a stale claim). Call with the
    /// lock held, after [`Registry::claim_of`] said it is free or ours.
    pub(crate) fn claim(&self, _held: &Held, uid: u32, name: &Name) -> io::Result<()> {
        let text = format!("{}\n{}\n", self.data_dir.display(), name);
        sys::crashsafe::replace_file_mode(&self.path(uid), text.as_bytes(), 0o600)
    }

    /// Gives up this agent's claim of `uid` for `name` (another's is left alone).
    pub(crate) fn release(&self, uid: u32, name: &Name) -> io::Result<()> {
        let held = self.lock()?;
        if self.claim_of(&held, uid, name)? == Claim::Ours {
            sys::crashsafe::remove_file(&self.path(uid))?;
        }
        Ok(())
    }
}

/// Writes one line durably, for the agent's next-uid file.
pub(crate) fn write_next(path: &Path, uid: u32) -> io::Result<()> {
    let mut text = Vec::new();
    writeln!(text, "{uid}")?;
    sys::crashsafe::replace_file_mode(path, &text, 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::Driver;

    fn record(name: &str, uid: u32) -> CloneRecord {
        CloneRecord {
            name: Name::new(name).unwrap(),
            image: Name::new("img").unwrap(),
            engine: "e".into(),
            version: "1".into(),
            superuser: "root".into(),
            driver: Driver::Cowfs,
            port: 7000,
            password: "pw".into(),
            desired: crate::Desired::Running,
            ever_ready: true,
            intent: None,
            failure: None,
            uid: Some(uid),
            owner: None,
            chown_pending: false,
            image_dir: None,
            checkpoints: Vec::new(),
            reverting_to: None,
            refreshing_to: None,
            origin: None,
            read_only: false,
        }
    }

    /// Two data directories share one registry: a uid claimed by a live clone of one is
    /// taken for the other; once that clone is gone, or has another uid, it is free.
    #[test]
    fn claims_are_host_wide_and_stale_ones_are_free() {
        let work = tempfile::tempdir().unwrap();
        let registry_dir = work.path().join("registry");
        let (one, two) = (work.path().join("one"), work.path().join("two"));
        for dir in [&one, &two] {
            fs::create_dir_all(dir.join("clones/a")).unwrap();
        }
        let r1 = Registry::open(&registry_dir, &one).unwrap();
        let r2 = Registry::open(&registry_dir, &two).unwrap();
        let a = Name::new("a").unwrap();
        let held = r1.lock().unwrap();
        assert_eq!(r1.claim_of(&held, 7, &a).unwrap(), Claim::Free);
        r1.claim(&held, 7, &a).unwrap();
        record("a", 7).save(&one.join("clones/a")).unwrap();
        assert_eq!(r1.claim_of(&held, 7, &a).unwrap(), Claim::Ours);
        drop(held);
        let held = r2.lock().unwrap();
        assert!(matches!(r2.claim_of(&held, 7, &a).unwrap(), Claim::Theirs(_)));
        // The holder's record now names another uid: the claim is stale.
        record("a", 8).save(&one.join("clones/a")).unwrap();
        assert_eq!(r2.claim_of(&held, 7, &a).unwrap(), Claim::Free);
        r2.claim(&held, 7, &a).unwrap();
        drop(held);
        // One agent's release never drops another's claim.
        r1.release(7, &a).unwrap();
        assert!(registry_dir.join("7").exists());
        r2.release(7, &a).unwrap();
        assert!(!registry_dir.join("7").exists());
        let mode = fs::metadata(&registry_dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }
}
