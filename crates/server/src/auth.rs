//! Who is asking, and what their role lets them do. API tokens are random secrets that the
//! catalog knows only by their SHA-256 hash, so that the state database alone reveals none.

use std::io::Read;

use api::{Name, Role};
use sha2::{Digest, Sha256};

use crate::ops::{Result, ServerError};

/// The user behind a request, with their role and teams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub user: Name,
    pub role: Role,
    pub teams: Vec<Name>,
}

impl Caller {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// Whether objects of `team` are visible to the caller: administrators see every team,
    /// others their own.
    pub fn sees(&self, team: &Name) -> bool {
        self.is_admin() || self.teams.contains(team)
    }

    /// Refuses (403) unless the caller's role is `role` or above; `what` says what they
    /// asked to do, e.g. "make images".
    pub fn require(&self, role: Role, what: &str) -> Result<()> {
        if self.role >= role {
            return Ok(());
        }
        Err(ServerError::Forbidden(format!(
            "{} has the role {}; to {what} takes the role {role} or above",
            self.user, self.role
        )))
    }
}

/// The prefix of every token, so that a leaked one is recognisable (by secret scanners too).
pub const TOKEN_PREFIX: &str = "thinclone_";

/// A new token's secret: the prefix and 32 random bytes in hex.
pub fn new_secret() -> Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| ServerError::Internal(format!("reading /dev/urandom for a token: {e}")))?;
    Ok(format!("{TOKEN_PREFIX}{}", hex(&bytes)))
}

/// What the catalog keeps of a secret. A token has 256 random bits, so a plain hash is
/// enough: nothing can be guessed from it.
pub fn hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(role: Role, teams: &[&str]) -> Caller {
        Caller { user: Name::new("u").unwrap(), role, teams: teams.iter().map(|t| Name::new(t).unwrap()).collect() }
    }

    #[test]
    fn roles_are_ordered_and_admins_see_every_team() {
        let a = Name::new("a").unwrap();
        assert!(caller(Role::Viewer, &["a"]).sees(&a));
        assert!(!caller(Role::ImageCreator, &["b"]).sees(&a));
        assert!(caller(Role::Admin, &[]).sees(&a));
        assert!(caller(Role::ImageCreator, &[]).require(Role::CloneUser, "x").is_ok());
        let err = caller(Role::Viewer, &[]).require(Role::CloneUser, "make clones").unwrap_err();
        assert!(matches!(err, ServerError::Forbidden(_)), "{err}");
        assert_eq!(err.to_string(), "u has the role viewer; to make clones takes the role clone_user or above");
    }

    #[test]
    fn secrets_are_random_and_hashed() {
        let (a, b) = (new_secret().unwrap(), new_secret().unwrap());
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX) && a.len() == TOKEN_PREFIX.len() + 64, "{a}");
        assert_eq!(hash(&a), hash(&a));
        assert_ne!(hash(&a), hash(&b));
        assert!(!hex(&hash(&a)).contains(&a[TOKEN_PREFIX.len()..TOKEN_PREFIX.len() + 16]));
    }
}
