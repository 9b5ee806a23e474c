//! `thinclone agent …`: the agent of a database host (`run`, `join`), and what the server
//! knows of its agents (`list`, `show`, `token create`, `revoke`).

use std::path::PathBuf;

use api::agent::{Agent, CreateEnrollment, Enrollment};
use api::{Name, Timestamp};

use super::{format, Ctx};

#[derive(clap::Subcommand, Debug)]
pub enum AgentCommand {
    /// Run this host's agent in the foreground: its clones, and the requests of the server it
    /// joined (see `agent join`), until SIGTERM or SIGINT.
    Run(crate::serve::AgentRunArgs),
    /// Join a server with an enrollment token (once per host): makes this agent's key pair and
    /// has the server sign its certificate. `agent run` then connects.
    Join(JoinArgs),
    /// List the agents, with their status, clones, free disk and ports.
    List,
    /// Show one agent: its status, address, engines, drivers and the locations it reaches.
    Show {
        /// The agent's name.
        name: Name,
    },
    /// Make enrollment tokens (administrators).
    Token {
        #[command(subcommand)]
        command: AgentTokenCommand,
    },
    /// Revoke an agent: the server refuses its certificate from now on (administrators).
    Revoke {
        /// The agent's name.
        name: Name,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum AgentTokenCommand {
    /// Make a one-time enrollment token for `thinclone agent join` on a new host.
    Create {
        /// How long it is good for, e.g. `30m`, `1h`, `2d`.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        expires_in: std::time::Duration,
    },
}

#[derive(clap::Args, Debug)]
pub struct JoinArgs {
    /// The server's base URL, as for every other command (e.g. https://thinclone.example.com:7420).
    #[arg(long, value_name = "URL")]
    pub server: String,
    /// The enrollment token from `thinclone agent token create`.
    #[arg(long, value_name = "TOKEN", env = "THINCLONE_ENROLLMENT_TOKEN", hide_env_values = true)]
    pub token: String,
    /// This agent's name among the server's agents [default: this host's name].
    #[arg(long)]
    pub name: Option<Name>,
    /// The agent's data directory, where it keeps its key and certificate [default:
    /// /var/lib/thinclone as root, $XDG_DATA_HOME/thinclone otherwise].
    #[arg(long, env = "THINCLONE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Trust only the certificate authority in this PEM file for an https:// server.
    #[arg(long, value_name = "PEM")]
    pub server_ca_file: Option<PathBuf>,
}

/// `thinclone agent join`.
pub fn join(args: JoinArgs, json: bool) -> anyhow::Result<()> {
    let data_dir = args.data_dir.unwrap_or_else(crate::serve::default_data_dir);
    let name = match args.name {
        Some(n) => n,
        None => {
            let host = nix::unistd::gethostname()?.into_string().unwrap_or_default();
            let host = host.split('.').next().unwrap_or_default().to_ascii_lowercase();
            Name::new(&host)
                .map_err(|e| anyhow::anyhow!("this host's name {host:?} is not an agent name ({e}); give --name"))?
        }
    };
    let mut client = client::Client::new(args.server.trim_end_matches('/'));
    if let Some(ca) = &args.server_ca_file {
        client = client.with_ca_file(ca)?;
    }
    std::fs::create_dir_all(&data_dir)?;
    let joined = agent::enroll::join(&client, &args.token, &name, &data_dir)?;
    if json {
        println!("{}", serde_json::json!({ "name": joined.name, "channel": joined.address, "data_dir": data_dir }));
    } else {
        println!(
            "joined as agent {} (channel {}); start it with `thinclone agent run --data-dir {}`",
            joined.name,
            joined.address,
            data_dir.display()
        );
    }
    Ok(())
}

pub fn run(cmd: AgentCommand, ctx: &mut Ctx) -> anyhow::Result<()> {
    match cmd {
        AgentCommand::Run(_) | AgentCommand::Join(_) => unreachable!("run and join are not client commands"),
        AgentCommand::List => {
            let agents = ctx.client.list_agents()?;
            ctx.show_list(&agents, |a| format::agents_table(a, Timestamp::now()))
        }
        AgentCommand::Show { name } => {
            let agent = ctx.client.get_agent(&name)?;
            ctx.show(&agent, |a| format::agent_fields(a, Timestamp::now()))
        }
        AgentCommand::Token { command: AgentTokenCommand::Create { expires_in } } => {
            let token =
                ctx.client.create_enrollment(&CreateEnrollment { expires_in: Some(expires_in.as_secs().max(1)) })?;
            ctx.show(&token, enrollment_fields)
        }
        AgentCommand::Revoke { name } => {
            let agent: Agent = ctx.client.revoke_agent(&name)?;
            ctx.show(&agent, |a| format::agent_fields(a, Timestamp::now()))
        }
    }
}

fn enrollment_fields(e: &Enrollment) -> format::Fields {
    vec![("token", e.token.clone()), ("expires_at", e.expires_at.to_string())]
}
