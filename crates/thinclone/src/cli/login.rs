//! `thinclone login`, `thinclone logout` and `thinclone whoami`: saving a server's URL and
//! token in the config file, removing the token, and asking the server who the token is.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use client::Client;

use super::config::{self, ConfigFile, Env};
use super::{format, ClientOpts, Ctx};

/// `thinclone login`: its own arguments; `--url`, `--token`, `--ca-file` and `--json` are
/// the global ones.
#[derive(clap::Args, Debug)]
pub struct LoginArgs {
    /// Read the token from this file (for example the server's `admin.token`), rather than
    /// from --token or a prompt.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

/// Checks a token with the server and saves the URL, the token and the CA file in the
/// config file. The token comes from `--token`, else `--token-file`, else a prompt on a
/// terminal; the URL and CA file as for every command.
pub fn login(opts: &ClientOpts, args: &LoginArgs, env: &dyn Env, out: &mut dyn Write) -> anyhow::Result<()> {
    let path = config::config_path(env)?;
    let saved = config::read_config(&path)?.unwrap_or_default();
    let url = opts
        .url
        .clone()
        .or_else(|| env.var(config::ENV_URL))
        .or_else(|| saved.url.clone())
        .unwrap_or_else(|| config::DEFAULT_URL.to_owned());
    let url = url.trim_end_matches('/').to_owned();
    let ca_file = match opts.ca_file.clone().or_else(|| env.var(config::ENV_CA_FILE).map(PathBuf::from)) {
        Some(ca) => Some(std::path::absolute(&ca).with_context(|| format!("resolving {}", ca.display()))?),
        // Logging in again to the same server keeps its CA.
        None if config::same_url(saved.url.as_deref().unwrap_or(config::DEFAULT_URL), &url) => saved.ca_file.clone(),
        None => None,
    };
    let token = match (&opts.token, &args.token_file) {
        (Some(_), Some(_)) => bail!("give the token with --token or with --token-file, not both"),
        (Some(token), None) => token.trim().to_owned(),
        (None, Some(file)) => read_token_file(file)?,
        (None, None) if std::io::stdin().is_terminal() => prompt_token(&url)?,
        (None, None) => bail!(
            "give the token with --token-file FILE (or --token TOKEN); an administrator makes one with \
             `thinclone token create --user NAME`"
        ),
    };
    if token.is_empty() {
        bail!("the token is empty");
    }
    let mut client = Client::new(&url).with_token(Some(token.clone()));
    if let Some(ca) = &ca_file {
        client = client.with_ca_file(ca)?;
    }
    let user = match client.whoami() {
        Ok(user) => user,
        Err(e @ client::Error::Api { status: 401, .. }) => {
            bail!("the server at {url} refused the token: {e}; check it, or ask an administrator for a new one")
        }
        Err(e) => return Err(e.into()),
    };
    let config = ConfigFile { url: Some(url.clone()), token: Some(token), ca_file };
    config::write_config(&path, &config)?;
    if opts.json {
        let mut text = serde_json::to_string_pretty(&user).context("encoding JSON")?;
        text.push('\n');
        out.write_all(text.as_bytes())?;
    } else {
        writeln!(out, "logged in to {url} as {} ({}); the token is saved in {}", user.name, user.role, path.display())?;
    }
    Ok(())
}

/// Removes the token from the config file (the URL and CA file stay). The token itself stays
/// valid on the server until it expires or is revoked.
pub fn logout(env: &dyn Env, out: &mut dyn Write) -> anyhow::Result<()> {
    let path = config::config_path(env)?;
    let Some(mut saved) = config::read_config(&path)? else {
        writeln!(out, "not logged in: there is no {}", path.display())?;
        return Ok(());
    };
    if saved.token.take().is_none() {
        writeln!(out, "not logged in: {} holds no token", path.display())?;
        return Ok(());
    }
    config::write_config(&path, &saved)?;
    let url = saved.url.as_deref().unwrap_or(config::DEFAULT_URL);
    writeln!(
        out,
        "logged out of {url}: removed the token from {}; it stays valid on the server until it expires or is revoked \
         (`thinclone token list`, `thinclone token revoke ID`)",
        path.display()
    )?;
    Ok(())
}

/// `thinclone whoami`: the user the token belongs to.
pub fn whoami(ctx: &mut Ctx) -> anyhow::Result<()> {
    let user = ctx.client.whoami()?;
    ctx.show(&user, format::user_fields)
}

/// A token from a file: its first line, trimmed.
fn read_token_file(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading the token from {}", path.display()))?;
    let token = text.lines().next().unwrap_or_default().trim().to_owned();
    if token.is_empty() {
        bail!("{} holds no token", path.display());
    }
    Ok(token)
}

/// Asks for the token on the terminal, without echoing it.
fn prompt_token(url: &str) -> anyhow::Result<String> {
    eprint!("token for {url}: ");
    std::io::stderr().flush().ok();
    let echo = EchoOff::new();
    let mut line = String::new();
    let read = std::io::stdin().lock().read_line(&mut line);
    drop(echo);
    eprintln!();
    read.context("reading the token")?;
    Ok(line.trim().to_owned())
}

/// Turns the terminal's echo off on standard input until dropped.
struct EchoOff(Option<libc::termios>);

impl EchoOff {
    fn new() -> EchoOff {
        // SAFETY: termios is plain data that tcgetattr fills in; fd 0 is ours to configure.
        unsafe {
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut saved) != 0 {
                return EchoOff(None);
            }
            let mut quiet = saved;
            quiet.c_lflag &= !libc::ECHO;
            if libc::tcsetattr(0, libc::TCSANOW, &quiet) != 0 {
                return EchoOff(None);
            }
            EchoOff(Some(saved))
        }
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            // SAFETY: restores the settings tcgetattr gave for the same descriptor.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, saved) };
        }
    }
}
