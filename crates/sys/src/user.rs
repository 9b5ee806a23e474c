//! OS users, by name or uid, and synthetic users: a bare uid and gid with no entry in the
//! user database, such as the one each clone's server runs as.

use std::path::PathBuf;

/// An OS user a program can run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Its name; a synthetic user's is its uid in digits.
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    /// Made by [`User::synthetic`]: it has no entry in the user database, so a program run
    /// as it gets its gid as its only group (there is no group membership to look up).
    pub synthetic: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("no OS user named {0}")]
pub struct NoSuchUser(pub String);

impl User {
    /// Looks up a user by name, or by a numeric uid.
    pub fn lookup(name_or_uid: &str) -> Result<User, NoSuchUser> {
        let found = match nix::unistd::User::from_name(name_or_uid) {
            Ok(Some(u)) => Some(u),
            _ => name_or_uid
                .parse::<u32>()
                .ok()
                .and_then(|uid| nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok().flatten()),
        };
        found.map(User::from).ok_or_else(|| NoSuchUser(name_or_uid.to_owned()))
    }

    /// A bare uid and gid that need no entry in `/etc/passwd` or `/etc/group`: a program run
    /// as it has `gid` as its only group, and `HOME` set to `/nonexistent`, so that it shares
    /// no home directory with anyone.
    pub fn synthetic(uid: u32, gid: u32) -> User {
        User { name: uid.to_string(), uid, gid, home: PathBuf::from("/nonexistent"), synthetic: true }
    }

    /// Whether the user database has an entry for `uid`.
    pub fn uid_is_known(uid: u32) -> bool {
        matches!(nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)), Ok(Some(_)))
    }

    /// The user this process runs as.
    pub fn current() -> User {
        let uid = nix::unistd::getuid();
        match nix::unistd::User::from_uid(uid) {
            Ok(Some(u)) => User::from(u),
            _ => User {
                name: uid.to_string(),
                uid: uid.as_raw(),
                gid: nix::unistd::getgid().as_raw(),
                home: PathBuf::from("/"),
                synthetic: false,
            },
        }
    }

    pub fn is_root(&self) -> bool {
        self.uid == 0
    }
}

impl From<nix::unistd::User> for User {
    fn from(u: nix::unistd::User) -> User {
        User { name: u.name, uid: u.uid.as_raw(), gid: u.gid.as_raw(), home: u.dir, synthetic: false }
    }
}

/// Whether this process runs as root.
pub fn running_as_root() -> bool {
    nix::unistd::geteuid().is_root()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_found_by_name_and_uid() {
        let by_name = User::lookup("root").unwrap();
        assert_eq!(by_name.uid, 0);
        assert_eq!(User::lookup("0").unwrap(), by_name);
        assert!(User::lookup("no-such-user-here").unwrap_err().to_string().contains("no OS user named"));
    }

    #[test]
    fn a_synthetic_user_needs_no_entry() {
        let user = User::synthetic(2_000_012_345, 2_000_012_345);
        assert!(user.synthetic && !User::uid_is_known(user.uid));
        assert_eq!((user.name.as_str(), user.home.to_str()), ("2000012345", Some("/nonexistent")));
        assert!(User::uid_is_known(0));
    }
}
