//! Where the CLI finds its server, its token and the certificate authority to trust: each
//! from its flag (`--url`, `--token`, `--ca-file`), else the environment (`THINCLONE_URL`,
//! `THINCLONE_TOKEN`, `THINCLONE_CA_FILE`), else the config file `thinclone login` writes,
//! else the defaults.
//!
//! The config file is `$XDG_CONFIG_HOME/thinclone/config.toml` (`~/.config/thinclone/…`
//! when `XDG_CONFIG_HOME` is not set), mode 0600 in a 0700 directory:
//!
//! ```toml
//! url = "https://thinclone.example.com:7420"
//! token = "thinclone_…"
//! ca_file = "/etc/thinclone/ca.pem"
//! ```
//!
//! Its token and CA file belong to its URL: they are used only when the URL in use is that
//! one, so that `--url` to another server never sends it this server's token.
//!
//! With no token from anywhere and the URL of this host's default server
//! (`http://127.0.0.1:7420`), the CLI reads the token the server wrote at its first start
//! (`/var/lib/thinclone/admin.token` for a server run as root, or
//! `$XDG_DATA_HOME/thinclone/admin.token`) if this user can read it: on the server's own
//! host its operator needs no login.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use client::Client;

use super::ClientOpts;

/// The URL of the server when none is given: this host's, on the default port.
pub const DEFAULT_URL: &str = "http://127.0.0.1:7420";

/// The variables the CLI reads.
pub const ENV_URL: &str = "THINCLONE_URL";
pub const ENV_TOKEN: &str = "THINCLONE_TOKEN";
pub const ENV_CA_FILE: &str = "THINCLONE_CA_FILE";

/// The environment as the CLI reads it: the process's, or a map in tests.
pub trait Env {
    fn var(&self, key: &str) -> Option<String>;
}

/// The process's environment. An empty variable counts as unset.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, key: &str) -> Option<String> {
        std::env::var(key).ok().filter(|v| !v.is_empty())
    }
}

impl Env for std::collections::BTreeMap<&str, String> {
    fn var(&self, key: &str) -> Option<String> {
        self.get(key).filter(|v| !v.is_empty()).cloned()
    }
}

/// What the config file holds. Its `Debug` leaves the token out.
#[derive(Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

impl fmt::Debug for ConfigFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigFile")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "<hidden>"))
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

impl ConfigFile {
    /// Whether the file's token and CA file are for `url`. A file without a URL is for the
    /// default server.
    fn is_for(&self, url: &str) -> bool {
        same_url(self.url.as_deref().unwrap_or(DEFAULT_URL), url)
    }
}

/// The config file's path: `$XDG_CONFIG_HOME/thinclone/config.toml`, else
/// `$HOME/.config/thinclone/config.toml`.
pub fn config_path(env: &dyn Env) -> anyhow::Result<PathBuf> {
    let base = match (env.var("XDG_CONFIG_HOME"), env.var("HOME")) {
        // The XDG spec: a relative path is to be ignored.
        (Some(xdg), _) if Path::new(&xdg).is_absolute() => PathBuf::from(xdg),
        (_, Some(home)) => Path::new(&home).join(".config"),
        _ => bail!("neither XDG_CONFIG_HOME nor HOME is set, so there is no place for thinclone's config file"),
    };
    Ok(base.join("thinclone").join("config.toml"))
}

/// Reads the config file; `None` when there is none.
pub fn read_config(path: &Path) -> anyhow::Result<Option<ConfigFile>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let config: ConfigFile = toml::from_str(&text)
        .with_context(|| format!("reading {} (written by `thinclone login`; fix or remove it)", path.display()))?;
    Ok(Some(config))
}

/// Writes the config file durably, readable by this user only (0600, in a 0700 directory).
pub fn write_config(path: &Path, config: &ConfigFile) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let dir = path.parent().context("the config file's path has no directory")?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    // It may have been there with a wider mode: it holds a token, so it is made private.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("making {} private", dir.display()))?;
    let mut text = String::from("# thinclone's client settings, written by `thinclone login`.\n");
    text.push_str(&toml::to_string(config).context("encoding the config file")?);
    sys::crashsafe::replace_file_mode(path, text.as_bytes(), 0o600)
        .with_context(|| format!("writing {}", path.display()))
}

/// Where a token came from, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    Flag,
    Env,
    Config(PathBuf),
    BootstrapFile(PathBuf),
}

impl fmt::Display for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSource::Flag => write!(f, "--token"),
            TokenSource::Env => write!(f, "{ENV_TOKEN}"),
            TokenSource::Config(path) => write!(f, "the login saved in {}", path.display()),
            TokenSource::BootstrapFile(path) => write!(f, "the server's first token, in {}", path.display()),
        }
    }
}

/// A token and where it came from. Its `Debug` leaves the secret out.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    pub secret: String,
    pub source: TokenSource,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token").field("secret", &"<hidden>").field("source", &self.source).finish()
    }
}

/// The server a command talks to, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub url: String,
    pub token: Option<Token>,
    pub ca_file: Option<PathBuf>,
    /// The config file, and the URL of the login it holds when that is for another server
    /// (to say so when the server wants a token).
    pub config_path: Option<PathBuf>,
    pub login_elsewhere: Option<String>,
}

impl Endpoint {
    /// The client of this server.
    pub fn client(&self) -> anyhow::Result<Client> {
        let client = Client::new(&self.url).with_token(self.token.as_ref().map(|t| t.secret.clone()));
        match &self.ca_file {
            Some(ca) => Ok(client.with_ca_file(ca)?),
            None => Ok(client),
        }
    }

    /// What to do about a server that refused the request for want of a valid token (401).
    pub fn login_hint(&self) -> String {
        let url = &self.url;
        match &self.token {
            Some(token) => format!(
                "the token from {} was refused; log in again with `thinclone login --url {url} --token-file FILE`, \
                 with a token an administrator made with `thinclone token create`",
                token.source
            ),
            None => {
                let mut hint = format!(
                    "no token was given for {url}: log in with `thinclone login --url {url} --token-file FILE` (an \
                     administrator makes tokens with `thinclone token create --user NAME`), or set {ENV_TOKEN}"
                );
                if let (Some(path), Some(other)) = (&self.config_path, &self.login_elsewhere) {
                    hint.push_str(&format!("; the login saved in {} is for {other}", path.display()));
                }
                hint
            }
        }
    }
}

/// The endpoint of a command run from a shell: flags, the process's environment, the config
/// file, this host's bootstrap token file.
pub fn resolve(opts: &ClientOpts) -> anyhow::Result<Endpoint> {
    let env = ProcessEnv;
    resolve_with(opts, &env, &bootstrap_token_files(&env))
}

/// Like [`resolve`], with the environment and the bootstrap token files to look at given.
pub fn resolve_with(opts: &ClientOpts, env: &dyn Env, bootstrap: &[PathBuf]) -> anyhow::Result<Endpoint> {
    // No place for a config file (no HOME) is no reason to fail a command given everything.
    let config_path = config_path(env).ok();
    let config = match &config_path {
        Some(path) => read_config(path)?,
        None => None,
    };
    let url = opts
        .url
        .clone()
        .or_else(|| env.var(ENV_URL))
        .or_else(|| config.as_ref().and_then(|c| c.url.clone()))
        .unwrap_or_else(|| DEFAULT_URL.to_owned());
    let url = url.trim_end_matches('/').to_owned();
    let saved = config.as_ref().filter(|c| c.is_for(&url));
    let token = match (&opts.token, env.var(ENV_TOKEN)) {
        (Some(secret), _) => Some(Token { secret: secret.clone(), source: TokenSource::Flag }),
        (None, Some(secret)) => Some(Token { secret, source: TokenSource::Env }),
        (None, None) => match (saved.and_then(|c| c.token.clone()), &config_path) {
            (Some(secret), Some(path)) => Some(Token { secret, source: TokenSource::Config(path.clone()) }),
            _ if is_default_server(&url) => bootstrap_token(bootstrap),
            _ => None,
        },
    };
    let ca_file = opts
        .ca_file
        .clone()
        .or_else(|| env.var(ENV_CA_FILE).map(PathBuf::from))
        .or_else(|| saved.and_then(|c| c.ca_file.clone()));
    let login_elsewhere = config.as_ref().filter(|c| !c.is_for(&url) && c.token.is_some()).and_then(|c| c.url.clone());
    Ok(Endpoint { url, token, ca_file, config_path, login_elsewhere })
}

/// The token files a server on this host writes at its first start, in the order to try
/// them: the one of a server run by this user first.
pub fn bootstrap_token_files(env: &dyn Env) -> Vec<PathBuf> {
    let system = PathBuf::from("/var/lib/thinclone/admin.token");
    let data_home = match (env.var("XDG_DATA_HOME"), env.var("HOME")) {
        (Some(xdg), _) if Path::new(&xdg).is_absolute() => Some(PathBuf::from(xdg)),
        (_, Some(home)) => Some(Path::new(&home).join(".local/share")),
        _ => None,
    };
    let own = data_home.map(|d| d.join("thinclone").join("admin.token"));
    match own {
        Some(own) if sys::user::running_as_root() => vec![system, own],
        Some(own) => vec![own, system],
        None => vec![system],
    }
}

/// The first of `files` this user can read, holding a token.
fn bootstrap_token(files: &[PathBuf]) -> Option<Token> {
    files.iter().find_map(|path| {
        // Missing or not readable by this user: not ours to use, and no error.
        let text = std::fs::read_to_string(path).ok()?;
        let secret = text.trim();
        (!secret.is_empty())
            .then(|| Token { secret: secret.to_owned(), source: TokenSource::BootstrapFile(path.clone()) })
    })
}

/// Whether `url` is this host's server on the default port.
pub fn is_default_server(url: &str) -> bool {
    let url = url.trim_end_matches('/').to_ascii_lowercase();
    ["http://127.0.0.1:7420", "http://localhost:7420", "http://[::1]:7420"].contains(&url.as_str())
}

/// Whether two base URLs name the same server (a trailing `/` and the case of the scheme
/// and host aside).
pub fn same_url(a: &str, b: &str) -> bool {
    a.trim_end_matches('/').eq_ignore_ascii_case(b.trim_end_matches('/'))
}
