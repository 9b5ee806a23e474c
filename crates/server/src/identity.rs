//! Users, teams, tokens, registered sources and the audit log: the server's operations on
//! who may do what. Every one takes the [`Caller`] and checks their right first.

use std::path::{Component, Path, PathBuf};

use api::{Name, Role, Timestamp};

use crate::auth::{self, Caller};
use crate::catalog::{CatalogError, SourceRow, TokenRow, UserRow, BOOTSTRAP_USER, DEFAULT_TEAM};
use crate::ops::{Result, Server, ServerError};

/// The file the first administrator's token is written to, in the data directory.
pub const BOOTSTRAP_TOKEN_FILE: &str = "admin.token";

fn token_view(row: TokenRow) -> api::Token {
    api::Token {
        id: row.id,
        user: row.user,
        description: row.description,
        created_at: row.created_at,
        expires_at: row.expires_at,
        revoked_at: row.revoked_at,
        last_used_at: row.last_used_at,
    }
}

fn not_found(kind: &str, name: impl std::fmt::Display) -> ServerError {
    ServerError::NotFound(format!("no {kind} named {name}"))
}

impl Server {
    /// At the first start (no user yet): makes the team `default`, the administrator `admin`
    /// in it, and a token for them, written to `admin.token` in the data directory, readable
    /// by this process's user only. Returns the file's path when it made one.
    pub fn bootstrap(&self) -> Result<Option<PathBuf>> {
        if self.catalog().user_count()? > 0 {
            return Ok(None);
        }
        let admin = Name::new(BOOTSTRAP_USER).expect("a valid name");
        let team = Name::new(DEFAULT_TEAM).expect("a valid name");
        let secret = auth::new_secret()?;
        self.catalog().transaction(|c| {
            if c.team(&team).is_err() {
                c.insert_team(&team)?;
            }
            c.insert_user(&UserRow { name: admin.clone(), role: Role::Admin, created_at: Timestamp::now() })?;
            c.add_member(&team, &admin)?;
            c.insert_token(&admin, &auth::hash(&secret), Some("made at the first start"), None)?;
            Ok(())
        })?;
        let path = self.config().data_dir.join(BOOTSTRAP_TOKEN_FILE);
        write_private(&path, &format!("{secret}\n"))
            .map_err(|e| ServerError::Internal(format!("writing {}: {e}", path.display())))?;
        Ok(Some(path))
    }

    /// The caller a token's secret stands for: unknown, revoked or expired tokens, and
    /// tokens of users that are gone, are refused alike.
    pub fn authenticate(&self, secret: &str) -> Result<Caller> {
        let refused = || ServerError::Unauthorized("the token is not valid: it is unknown, revoked or expired".into());
        let catalog = self.catalog();
        let token = catalog.token_by_hash(&auth::hash(secret))?.ok_or_else(refused)?;
        let now = Timestamp::now();
        if token.revoked_at.is_some() || token.expires_at.is_some_and(|at| at <= now) {
            return Err(refused());
        }
        let user = match catalog.user(&token.user) {
            Ok(user) => user,
            Err(CatalogError::NotFound { .. }) => return Err(refused()),
            Err(e) => return Err(e.into()),
        };
        let teams = catalog.teams_of(&user.name)?;
        if let Err(e) = catalog.touch_token(token.id) {
            tracing::warn!("noting a token's use: {e}");
        }
        Ok(Caller { user: user.name, role: user.role, teams })
    }

    // ------------------------------------------------------------------- users

    fn user_view(&self, row: UserRow) -> Result<api::User> {
        let teams = self.catalog().teams_of(&row.name)?;
        Ok(api::User { name: row.name, role: row.role, teams, created_at: row.created_at })
    }

    pub fn whoami(&self, caller: &Caller) -> Result<api::User> {
        let row = self.catalog().user(&caller.user)?;
        self.user_view(row)
    }

    pub fn users(&self, caller: &Caller) -> Result<Vec<api::User>> {
        caller.require(Role::Admin, "list users")?;
        let rows = self.catalog().users()?;
        rows.into_iter().map(|r| self.user_view(r)).collect()
    }

    pub fn user(&self, caller: &Caller, name: &Name) -> Result<api::User> {
        if *name != caller.user {
            caller.require(Role::Admin, "see other users")?;
        }
        let row = self.catalog().user(name).map_err(|_| not_found("user", name))?;
        self.user_view(row)
    }

    pub fn create_user(&self, caller: &Caller, request: api::CreateUser) -> Result<api::User> {
        caller.require(Role::Admin, "make users")?;
        self.catalog().transaction(|c| {
            c.insert_user(&UserRow { name: request.name.clone(), role: request.role, created_at: Timestamp::now() })?;
            for team in &request.teams {
                c.add_member(team, &request.name)?;
            }
            Ok(())
        })?;
        self.user(caller, &request.name)
    }

    /// Removes a user and their tokens; their clones stay, owned by them in name, for an
    /// administrator to remove. The last administrator cannot be removed.
    pub fn delete_user(&self, caller: &Caller, name: &Name) -> Result<()> {
        caller.require(Role::Admin, "remove users")?;
        let mut catalog = self.catalog();
        let row = catalog.user(name).map_err(|_| not_found("user", name))?;
        if *name == caller.user {
            return Err(ServerError::Conflict(format!("{name} cannot remove themselves; another administrator can")));
        }
        if row.role == Role::Admin && catalog.admin_count()? <= 1 {
            return Err(ServerError::Conflict(format!("{name} is the last administrator; make another one first")));
        }
        catalog.transaction(|c| c.delete_user(name))?;
        Ok(())
    }

    // ------------------------------------------------------------------- teams

    fn team_view(&self, name: Name, created_at: Timestamp) -> Result<api::Team> {
        let members = self.catalog().members_of(&name)?;
        Ok(api::Team { name, members, created_at })
    }

    pub fn teams(&self, caller: &Caller) -> Result<Vec<api::Team>> {
        let rows = self.catalog().teams()?;
        rows.into_iter().filter(|(n, _)| caller.sees(n)).map(|(n, at)| self.team_view(n, at)).collect()
    }

    pub fn team(&self, caller: &Caller, name: &Name) -> Result<api::Team> {
        if !caller.sees(name) {
            return Err(not_found("team", name));
        }
        let created_at = self.catalog().team(name).map_err(|_| not_found("team", name))?;
        self.team_view(name.clone(), created_at)
    }

    pub fn create_team(&self, caller: &Caller, request: api::CreateTeam) -> Result<api::Team> {
        caller.require(Role::Admin, "make teams")?;
        self.catalog().insert_team(&request.name)?;
        self.team(caller, &request.name)
    }

    pub fn delete_team(&self, caller: &Caller, name: &Name) -> Result<()> {
        caller.require(Role::Admin, "remove teams")?;
        let catalog = self.catalog();
        catalog.team(name).map_err(|_| not_found("team", name))?;
        if catalog.team_in_use(name)? {
            return Err(ServerError::Conflict(format!("team {name} still has images or clones; remove them first")));
        }
        catalog.delete_team(name)?;
        Ok(())
    }

    pub fn add_member(&self, caller: &Caller, team: &Name, user: &Name) -> Result<api::Team> {
        caller.require(Role::Admin, "change teams")?;
        match self.catalog().add_member(team, user) {
            Err(CatalogError::NotFound { kind, name }) => return Err(not_found(kind, name)),
            other => other?,
        }
        self.team(caller, team)
    }

    pub fn remove_member(&self, caller: &Caller, team: &Name, user: &Name) -> Result<api::Team> {
        caller.require(Role::Admin, "change teams")?;
        self.catalog().team(team).map_err(|_| not_found("team", team))?;
        self.catalog()
            .remove_member(team, user)
            .map_err(|_| ServerError::NotFound(format!("{user} is not a member of team {team}")))?;
        self.team(caller, team)
    }

    /// The team a new image goes to: the one asked for, which must be the caller's (any,
    /// for an administrator); or the caller's only team.
    pub(crate) fn team_for(&self, caller: &Caller, asked: Option<&Name>) -> Result<Name> {
        match asked {
            Some(team) => {
                if !caller.sees(team) || self.catalog().team(team).is_err() {
                    return Err(not_found("team", team));
                }
                Ok(team.clone())
            }
            None => match caller.teams.as_slice() {
                [only] => Ok(only.clone()),
                [] => Err(ServerError::BadRequest(format!(
                    "{} is in no team; say which team the image is for with --team",
                    caller.user
                ))),
                many => Err(ServerError::BadRequest(format!(
                    "{} is in several teams ({}); say which one the image is for with --team",
                    caller.user,
                    many.iter().map(Name::as_str).collect::<Vec<_>>().join(", ")
                ))),
            },
        }
    }

    // ------------------------------------------------------------------ tokens

    pub fn tokens(&self, caller: &Caller) -> Result<Vec<api::Token>> {
        let user = (!caller.is_admin()).then_some(&caller.user);
        Ok(self.catalog().tokens(user)?.into_iter().map(token_view).collect())
    }

    pub fn create_token(&self, caller: &Caller, request: api::CreateToken) -> Result<api::NewToken> {
        let user = request.user.unwrap_or_else(|| caller.user.clone());
        if user != caller.user {
            caller.require(Role::Admin, "make tokens for other users")?;
        }
        if let Some(description) = &request.description {
            if description.chars().count() > 200 {
                return Err(ServerError::BadRequest("a token's description is at most 200 characters".into()));
            }
        }
        let expires_at = match request.expires_in {
            None => None,
            Some(0) => return Err(ServerError::BadRequest("expires_in must be at least 1 second".into())),
            Some(seconds) => {
                let seconds = i64::try_from(seconds).ok().filter(|s| *s <= 100 * 365 * 86_400).ok_or_else(|| {
                    ServerError::BadRequest("expires_in is more than 100 years; leave it out for no expiry".into())
                })?;
                Some(Timestamp(Timestamp::now().0 + seconds))
            }
        };
        let secret = auth::new_secret()?;
        let catalog = self.catalog();
        catalog.user(&user).map_err(|_| not_found("user", &user))?;
        let id = catalog.insert_token(&user, &auth::hash(&secret), request.description.as_deref(), expires_at)?;
        Ok(api::NewToken { token: token_view(catalog.token(id)?), secret })
    }

    /// Revokes a token at once: the caller's own, or anyone's for an administrator.
    pub fn revoke_token(&self, caller: &Caller, id: u64) -> Result<api::Token> {
        let catalog = self.catalog();
        let token = match catalog.token(id) {
            Ok(t) if t.user == caller.user || caller.is_admin() => t,
            _ => return Err(ServerError::NotFound(format!("no token {id}"))),
        };
        catalog.revoke_token(token.id)?;
        Ok(token_view(catalog.token(id)?))
    }

    // ----------------------------------------------------------------- sources

    pub fn sources(&self, caller: &Caller) -> Result<Vec<api::Source>> {
        caller.require(Role::ImageCreator, "see the source directories")?;
        Ok(self
            .catalog()
            .sources()?
            .into_iter()
            .map(|r| api::Source { name: r.name, path: r.path, created_at: r.created_at })
            .collect())
    }

    pub fn create_source(&self, caller: &Caller, request: api::CreateSource) -> Result<api::Source> {
        caller.require(Role::Admin, "register source directories")?;
        let path = Path::new(&request.path);
        if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
            return Err(ServerError::BadRequest(format!(
                "a source is an absolute path without `..`: {}",
                request.path
            )));
        }
        if path == Path::new("/") {
            return Err(ServerError::BadRequest("the root directory cannot be a source".into()));
        }
        // The path is a directory on agents' hosts, which the server does not look at: each
        // agent resolves it (symlinks and all) when it checks a source against it. Where the
        // server runs an agent of its own, it is resolved now, as that agent sees it.
        let resolved = if self.fleet.embedded().is_none() {
            path.to_owned()
        } else {
            match std::fs::canonicalize(path) {
                Ok(resolved) if resolved.is_dir() => resolved,
                Ok(_) => return Err(ServerError::BadRequest(format!("{} is not a directory", request.path))),
                Err(e) => return Err(ServerError::BadRequest(format!("the source directory {}: {e}", request.path))),
            }
        };
        if resolved == Path::new("/") {
            return Err(ServerError::BadRequest("the root directory cannot be a source".into()));
        }
        let row = SourceRow {
            name: request.name,
            path: resolved.to_string_lossy().into_owned(),
            created_at: Timestamp::now(),
        };
        self.catalog().insert_source(&row)?;
        Ok(api::Source { name: row.name, path: row.path, created_at: row.created_at })
    }

    pub fn delete_source(&self, caller: &Caller, name: &Name) -> Result<()> {
        caller.require(Role::Admin, "remove source directories")?;
        self.catalog().delete_source(name).map_err(|_| not_found("source", name))
    }

    // ---------------------------------------------------------------- activity

    /// The audit log, newest first: administrators see all of it; others what they did
    /// and what was done to their teams' objects.
    pub fn activity(
        &self,
        caller: &Caller,
        user: Option<&Name>,
        target: Option<&str>,
        since: Option<Timestamp>,
        limit: u32,
    ) -> Result<Vec<api::Activity>> {
        let rows = self.catalog().activity(since, 10_000)?;
        Ok(rows
            .into_iter()
            .filter(|r| {
                caller.is_admin()
                    || r.actor.as_ref() == Some(&caller.user)
                    || r.team.as_ref().is_some_and(|t| caller.sees(t))
            })
            .filter(|r| user.is_none_or(|u| r.actor.as_ref() == Some(u)))
            .filter(|r| target.is_none_or(|t| r.target.as_deref().is_some_and(|rt| rt.contains(t))))
            .take(limit as usize)
            .map(|r| api::Activity {
                id: r.id,
                at: r.at,
                actor: r.actor,
                action: r.action,
                target: r.target,
                status: r.status,
                detail: r.detail,
            })
            .collect())
    }
}

/// Writes a file that only this process's user may read.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    sys::crashsafe::rename(&tmp, path)
}
