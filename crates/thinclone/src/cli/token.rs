//! `thinclone token list|create|revoke`: API tokens. The server keeps only a hash of each;
//! `create` prints the secret, this once.

use std::time::Duration;

use api::{CreateToken, Name, Timestamp};

use super::{format, Ctx};

#[derive(clap::Subcommand, Debug)]
pub enum TokenCommand {
    /// List your tokens (everyone's, for an administrator); never their secrets.
    List,
    /// Make a token and print its secret, which is shown this once.
    Create {
        /// Whose token it is [default: yours]; only an administrator makes tokens for others.
        #[arg(long)]
        user: Option<Name>,
        /// What it is for, e.g. `ci` or `alice's laptop`.
        #[arg(long)]
        description: Option<String>,
        /// How long until it expires, e.g. `8h`, `30days`, `1y` [default: never].
        #[arg(long, value_name = "DURATION", value_parser = parse_expiry)]
        expires_in: Option<Duration>,
    },
    /// Revoke a token: it is refused from now on.
    Revoke {
        /// The token's id, as `token list` shows it.
        id: u64,
    },
}

/// A token's lifetime: a humantime duration of at least a second.
fn parse_expiry(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e}; give a duration like 8h, 30days or 1y"))?;
    if d < Duration::from_secs(1) {
        return Err("a token lives at least a second".to_owned());
    }
    Ok(d)
}

pub fn run(cmd: TokenCommand, ctx: &mut Ctx) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::List => {
            let tokens = ctx.client.list_tokens()?;
            ctx.show_list(&tokens, |t| format::tokens_table(t, Timestamp::now()))
        }
        TokenCommand::Create { user, description, expires_in } => {
            let request = CreateToken { user, description, expires_in: expires_in.map(|d| d.as_secs()) };
            let new = ctx.client.create_token(&request)?;
            ctx.show(&new, format::new_token_fields)?;
            // On stderr, so that stdout stays the one document `--json` promises.
            eprintln!(
                "the secret is shown this once and cannot be shown again: keep it now (log in with it: \
                 `thinclone login --token-file FILE`)"
            );
            Ok(())
        }
        TokenCommand::Revoke { id } => {
            let token = ctx.client.revoke_token(id)?;
            ctx.show(&token, |t| format::token_fields(t, Timestamp::now()))
        }
    }
}
