//! OS users, by name or uid.

use std::path::PathBuf;

/// An OS user a program can run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
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
            },
        }
    }

    pub fn is_root(&self) -> bool {
        self.uid == 0
    }
}

impl From<nix::unistd::User> for User {
    fn from(u: nix::unistd::User) -> User {
        User { name: u.name, uid: u.uid.as_raw(), gid: u.gid.as_raw(), home: u.dir }
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
}
