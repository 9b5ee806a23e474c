//! Configuration files for the daemons: `thinclone serve --config FILE`, `thinclone server
//! --config FILE` and `thinclone agent run --config FILE`.
//!
//! A configuration file is TOML whose top-level keys are the command's long options without
//! their dashes (`data-dir = "/srv/thinclone"`, `channel-listen = "0.0.0.0:7421"`). [`expand`]
//! reads it before clap parses the command line, and puts each key back on the command line,
//! right after the subcommand, as the option it names:
//!
//! - `key = "text"` and `key = 90` give `--key=text` and `--key=90`;
//! - `key = true` gives `--key`, and `key = false` nothing;
//! - `key = ["a", "b"]`, for an option that may be given more than once (`clone-listen`,
//!   `server-name`, `channel-name`), gives `--key=a --key=b`.
//!
//! What wins: the command line, then the option's environment variable (`THINCLONE_…`, as
//! each option's help says), then the file, then the option's default. A key that the
//! command line gives, or whose variable is set (even to nothing, as clap reads it), is left
//! out of what the file adds. A key the command does not take is an error that names it and
//! the file, so that a typo is never silently ignored.
//!
//! The options and their variables are read from the commands' own clap definitions
//! (`serve.rs`), so a new option is a configuration key at once.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args as _;

/// The option that names the file; taken off the command line before clap sees it.
const CONFIG: &str = "--config";

/// The client options `main.rs` accepts anywhere (`global = true`) that take a value: they
/// may stand before the subcommand.
const GLOBAL_WITH_VALUE: &[&str] = &["--url", "--token", "--ca-file"];

/// The commands that take `--config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Daemon {
    Serve,
    Server,
    AgentRun,
}

impl Daemon {
    fn name(self) -> &'static str {
        match self {
            Daemon::Serve => "thinclone serve",
            Daemon::Server => "thinclone server",
            Daemon::AgentRun => "thinclone agent run",
        }
    }

    /// The command's options as clap defines them.
    fn options(self) -> Vec<Opt> {
        let command = match self {
            Daemon::Serve => crate::serve::ServeArgs::augment_args(clap::Command::new("serve")),
            Daemon::Server => crate::serve::ServerArgs::augment_args(clap::Command::new("server")),
            Daemon::AgentRun => crate::serve::AgentRunArgs::augment_args(clap::Command::new("run")),
        };
        command
            .get_arguments()
            .filter_map(|arg| {
                let long = arg.get_long()?.to_owned();
                let kind = match arg.get_action() {
                    clap::ArgAction::Append => Kind::List,
                    action if action.takes_values() => Kind::Value,
                    clap::ArgAction::SetTrue => Kind::Switch,
                    // Help, version, counts: nothing a file sets.
                    _ => return None,
                };
                Some(Opt { long, env: arg.get_env().map(OsStr::to_owned), kind })
            })
            .collect()
    }
}

/// What an option takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `--key` or nothing.
    Switch,
    /// `--key=value`, once.
    Value,
    /// `--key=value`, as many times as the list has values.
    List,
}

#[derive(Debug, Clone)]
struct Opt {
    long: String,
    env: Option<OsString>,
    kind: Kind,
}

/// Expands `--config FILE` (or `--config=FILE`) on the command line of `thinclone serve`,
/// `thinclone server` or `thinclone agent run` into the options the file sets, for clap to
/// parse. Any other command line is returned as it is (and clap refuses a `--config` there).
pub fn expand(args: Vec<OsString>) -> anyhow::Result<Vec<OsString>> {
    expand_with(args, &|name| std::env::var_os(name))
}

/// [`expand`], reading environment variables through `env`.
fn expand_with(mut args: Vec<OsString>, env: &dyn Fn(&OsStr) -> Option<OsString>) -> anyhow::Result<Vec<OsString>> {
    let Some((daemon, at)) = find_daemon(&args) else { return Ok(args) };
    let options = daemon.options();
    // The command's own arguments: find --config, and the options given.
    let mut config: Option<(usize, usize, PathBuf)> = None;
    let mut given: Vec<&str> = Vec::new();
    let mut i = at + 1;
    while i < args.len() {
        let Some(arg) = args[i].to_str() else {
            i += 1;
            continue;
        };
        if arg == "--" {
            break;
        }
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (arg, None),
        };
        if name == CONFIG {
            if config.is_some() {
                bail!("`{}` takes one --config file", daemon.name());
            }
            let (path, width) = match inline {
                Some(value) => (OsString::from(value), 1),
                None => match args.get(i + 1) {
                    Some(value) => (value.clone(), 2),
                    None => bail!("--config needs a file: --config /etc/thinclone/FILE.toml"),
                },
            };
            if path.is_empty() {
                bail!("--config needs a file: --config /etc/thinclone/FILE.toml");
            }
            config = Some((i, width, PathBuf::from(path)));
            i += width;
            continue;
        }
        if GLOBAL_WITH_VALUE.contains(&name) {
            i += if inline.is_none() { 2 } else { 1 };
            continue;
        }
        let option = name.strip_prefix("--").and_then(|long| options.iter().find(|o| o.long == long));
        match option {
            Some(o) => {
                given.push(&o.long);
                // `--key value`: the value is not an option, whatever it looks like.
                i += if inline.is_none() && o.kind != Kind::Switch { 2 } else { 1 };
            }
            None => i += 1,
        }
    }
    let Some((index, width, path)) = config else { return Ok(args) };
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading the configuration file {}", path.display()))?;
    let inserted = options_from(&text, &path, daemon, &options, &given, env)?;
    args.drain(index..index + width);
    args.splice(at + 1..at + 1, inserted);
    Ok(args)
}

/// The daemon a command line runs, and the index of its (last) subcommand word.
fn find_daemon(args: &[OsString]) -> Option<(Daemon, usize)> {
    let mut words = Vec::new();
    let mut i = 1;
    while i < args.len() && words.len() < 2 {
        let arg = args[i].to_str()?;
        if GLOBAL_WITH_VALUE.contains(&arg) {
            i += 2;
            continue;
        }
        if !arg.starts_with('-') {
            words.push((arg, i));
            if arg != "agent" {
                break;
            }
        }
        i += 1;
    }
    match words.as_slice() {
        [("serve", at), ..] => Some((Daemon::Serve, *at)),
        [("server", at), ..] => Some((Daemon::Server, *at)),
        [("agent", _), ("run", at)] => Some((Daemon::AgentRun, *at)),
        _ => None,
    }
}

/// The options the file's keys set, but for those given on the command line and those
/// whose environment variable is set.
fn options_from(
    text: &str,
    path: &Path,
    daemon: Daemon,
    options: &[Opt],
    given: &[&str],
    env: &dyn Fn(&OsStr) -> Option<OsString>,
) -> anyhow::Result<Vec<OsString>> {
    let file = path.display();
    let table: toml::Table = toml::from_str(text).with_context(|| format!("reading the configuration file {file}"))?;
    let mut out = Vec::new();
    for (key, value) in &table {
        let Some(option) = options.iter().find(|o| &o.long == key) else {
            let mut known: Vec<&str> = options.iter().map(|o| o.long.as_str()).collect();
            known.sort_unstable();
            let hint = match options.iter().find(|o| o.long == key.replace('_', "-")) {
                Some(o) => format!(" (did you mean `{}`?)", o.long),
                None => String::new(),
            };
            bail!(
                "unknown key `{key}` in the configuration file {file}{hint}: `{}` takes {}",
                daemon.name(),
                known.join(", ")
            );
        };
        if given.contains(&key.as_str()) || option.env.as_deref().is_some_and(|name| env(name).is_some()) {
            continue;
        }
        let flag = format!("--{key}");
        let wrong = |wants: &str| {
            anyhow::anyhow!(
                "`{key}` in the configuration file {file} takes {wants}, not {} {value}",
                article(value.type_str())
            )
        };
        match (option.kind, value) {
            (Kind::Switch, toml::Value::Boolean(true)) => out.push(OsString::from(flag)),
            (Kind::Switch, toml::Value::Boolean(false)) => {}
            (Kind::Switch, _) => return Err(wrong("true or false")),
            (Kind::Value, toml::Value::Array(_)) => return Err(wrong("one value")),
            (Kind::List, toml::Value::Array(items)) => {
                for item in items {
                    let item = scalar(item).ok_or_else(|| wrong("a string or a list of strings"))?;
                    out.push(OsString::from(format!("{flag}={item}")));
                }
            }
            (Kind::Value | Kind::List, value) => {
                let value = scalar(value).ok_or_else(|| wrong("a string or an integer"))?;
                out.push(OsString::from(format!("{flag}={value}")));
            }
        }
    }
    Ok(out)
}

/// A string or an integer, as the command line would carry it.
fn scalar(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(n) => Some(n.to_string()),
        _ => None,
    }
}

fn article(word: &str) -> String {
    match word.chars().next() {
        Some('a' | 'e' | 'i' | 'o' | 'u') => format!("an {word}"),
        _ => format!("a {word}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    fn strings(args: &[OsString]) -> Vec<String> {
        args.iter().map(|a| a.to_string_lossy().into_owned()).collect()
    }

    fn no_env(_: &OsStr) -> Option<OsString> {
        None
    }

    /// A file with `text`, and `args` with `{}` replaced by its path.
    fn with_file(text: &str, args: &[&str]) -> (tempfile::NamedTempFile, Vec<OsString>) {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, text.as_bytes()).unwrap();
        let path = file.path().to_str().unwrap().to_owned();
        let args = args.iter().map(|a| OsString::from(a.replace("{}", &path))).collect();
        (file, args)
    }

    fn expand_text(text: &str, args: &[&str], env: &dyn Fn(&OsStr) -> Option<OsString>) -> anyhow::Result<Vec<String>> {
        let (_file, args) = with_file(text, args);
        expand_with(args, env).map(|a| strings(&a))
    }

    #[test]
    fn keys_become_options_after_the_subcommand() {
        let text = r#"
            data-dir = "/srv/thinclone"
            listen = "0.0.0.0:7420"
            activity-days = 30
            insecure-http = true
            stop-clones-at-exit = false
            server-name = ["db.example", "thinclone.example"]
            clone-listen = "0.0.0.0"
        "#;
        let got =
            expand_text(text, &["thinclone", "serve", "--config", "{}", "--ports", "8000-8100"], &no_env).unwrap();
        assert_eq!(
            got,
            [
                "thinclone",
                "serve",
                "--activity-days=30",
                "--clone-listen=0.0.0.0",
                "--data-dir=/srv/thinclone",
                "--insecure-http",
                "--listen=0.0.0.0:7420",
                "--server-name=db.example",
                "--server-name=thinclone.example",
                "--ports",
                "8000-8100",
            ]
        );
    }

    #[test]
    fn the_command_line_and_the_environment_win() {
        let text = "data-dir = \"/from/file\"\nlisten = \"127.0.0.1:1\"\nports = \"1-2\"\nchannel-name = [\"a\"]\n";
        let env = |name: &OsStr| match name.to_str() {
            // Set, even empty: clap takes the variable, so the file's value must not come first.
            Some("THINCLONE_PORTS") => Some(OsString::new()),
            // `channel-name`'s variable is plural, as serve.rs names it.
            Some("THINCLONE_CHANNEL_NAMES") => Some(OsString::from("b")),
            _ => None,
        };
        let got =
            expand_text(text, &["thinclone", "server", "--data-dir", "/cli", "--config={}", "--listen=[::1]:2"], &env)
                .unwrap();
        assert_eq!(got, ["thinclone", "server", "--data-dir", "/cli", "--listen=[::1]:2"]);
    }

    #[test]
    fn agent_run_takes_a_file_and_clap_parses_the_result() {
        let text = "data-dir = \"/srv/agent\"\nclone-listen = [\"10.0.0.5\", \"127.0.0.1\"]\nclone-host = \"db2.example\"\nno-repair = true\n";
        let got = expand_text(text, &["thinclone", "--json", "agent", "run", "--config", "{}"], &no_env).unwrap();
        assert_eq!(
            got,
            [
                "thinclone",
                "--json",
                "agent",
                "run",
                "--clone-host=db2.example",
                "--clone-listen=10.0.0.5",
                "--clone-listen=127.0.0.1",
                "--data-dir=/srv/agent",
                "--no-repair",
            ]
        );
        // What it makes is what clap takes.
        #[derive(clap::Parser)]
        struct Run {
            #[command(flatten)]
            args: crate::serve::AgentRunArgs,
        }
        let parsed = <Run as clap::Parser>::try_parse_from(&got[3..]).unwrap();
        let rendered = format!("{:?}", parsed.args);
        assert!(
            rendered.contains("db2.example") && rendered.contains("10.0.0.5") && rendered.contains("no_repair: true")
        );
    }

    #[test]
    fn other_commands_and_command_lines_without_config_are_left_alone() {
        for args in [
            vec!["thinclone", "serve", "--listen", "127.0.0.1:7420"],
            vec!["thinclone", "clone", "create", "x", "--config", "y"],
            vec!["thinclone", "agent", "join", "--config", "y"],
            vec!["thinclone", "--url", "serve", "image", "list"],
            vec!["thinclone"],
            // A value that looks like --config is a value.
            vec!["thinclone", "serve", "--clone-host", "--config"],
        ] {
            assert_eq!(strings(&expand_with(os(&args), &no_env).unwrap()), args);
        }
    }

    #[test]
    fn unknown_keys_and_wrong_values_are_errors_that_name_the_file() {
        let (file, args) = with_file("clone-listen = \"0.0.0.0\"\n", &["thinclone", "server", "--config", "{}"]);
        let e = expand_with(args, &no_env).unwrap_err().to_string();
        let path = file.path().display().to_string();
        assert!(e.contains("unknown key `clone-listen`") && e.contains(&path), "{e}");
        assert!(e.contains("`thinclone server` takes") && e.contains("channel-listen"), "{e}");

        let e = expand_text("data_dir = \"/x\"\n", &["thinclone", "serve", "--config", "{}"], &no_env).unwrap_err();
        assert!(e.to_string().contains("did you mean `data-dir`?"), "{e}");

        for (text, says) in [
            ("no-repair = \"yes\"\n", "takes true or false, not a string"),
            ("listen = true\n", "takes a string or an integer, not a boolean"),
            ("listen = [\"a\", \"b\"]\n", "takes one value, not an array"),
            ("clone-listen = [1.5]\n", "takes a string or a list of strings, not an array"),
            ("config = \"/etc/x\"\n", "unknown key `config`"),
            ("[server]\nlisten = \"x\"\n", "unknown key `server`"),
            ("listen = \n", "reading the configuration file"),
        ] {
            let e = expand_text(text, &["thinclone", "serve", "--config", "{}"], &no_env).unwrap_err();
            assert!(format!("{e:#}").contains(says), "{text:?}: {e:#}");
        }

        let e =
            expand_with(os(&["thinclone", "serve", "--config", "/nonexistent/thinclone.toml"]), &no_env).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/thinclone.toml"), "{e}");
        let e = expand_with(os(&["thinclone", "serve", "--config"]), &no_env).unwrap_err();
        assert!(e.to_string().contains("--config needs a file"), "{e}");
        let e = expand_with(os(&["thinclone", "serve", "--config=a", "--config=b"]), &no_env).unwrap_err();
        assert!(e.to_string().contains("one --config"), "{e}");
    }

    #[test]
    fn every_option_has_its_variable_and_a_kind() {
        for daemon in [Daemon::Serve, Daemon::Server, Daemon::AgentRun] {
            let options = daemon.options();
            assert!(options.iter().any(|o| o.long == "data-dir"), "{daemon:?}");
            for o in &options {
                assert!(o.env.is_some(), "{daemon:?} --{} has no THINCLONE_ variable", o.long);
            }
        }
        let serve = Daemon::Serve.options();
        let kind = |long: &str| serve.iter().find(|o| o.long == long).map(|o| o.kind);
        assert_eq!(kind("no-repair"), Some(Kind::Switch));
        assert_eq!(kind("clone-listen"), Some(Kind::List));
        assert_eq!(kind("server-name"), Some(Kind::List));
        assert_eq!(kind("ports"), Some(Kind::Value));
        assert_eq!(kind("channel-listen"), Some(Kind::Value));
    }

    /// The keys of an example file, commented out (`# key = value`) or not, as one TOML
    /// document.
    fn example_keys(text: &str) -> String {
        text.lines()
            .map(|l| l.trim_start_matches('#').trim())
            .filter(|l| l.split_once('=').is_some_and(|(k, _)| !k.trim().is_empty() && !k.trim().contains(' ')))
            .filter(|l| l.parse::<toml::Table>().is_ok())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The example files in packaging/ name every option of their command, and nothing else.
    #[test]
    fn the_example_files_match_the_options() {
        for (daemon, text, args) in [
            (Daemon::Server, include_str!("../../../packaging/server.toml"), &["thinclone", "server"][..]),
            (Daemon::AgentRun, include_str!("../../../packaging/agent.toml"), &["thinclone", "agent", "run"][..]),
            (Daemon::Serve, include_str!("../../../packaging/thinclone.toml"), &["thinclone", "serve"][..]),
        ] {
            let keys = example_keys(text);
            let table: toml::Table = keys.parse().unwrap();
            for o in daemon.options() {
                assert!(table.contains_key(&o.long), "{daemon:?}: the example file does not explain `{}`", o.long);
            }
            let mut args: Vec<&str> = args.to_vec();
            args.extend(["--config", "{}"]);
            expand_text(&keys, &args, &no_env).unwrap_or_else(|e| panic!("{daemon:?}: {e:#}"));
            // And what is not commented out is taken as it is.
            expand_text(text, &args, &no_env).unwrap_or_else(|e| panic!("{daemon:?}: {e:#}"));
        }
    }
}
