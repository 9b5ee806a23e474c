//! The `thinclone` command: argument parsing and glue over the library crates.

mod cli;
mod config_file;
mod demo;
mod engines;
mod mount;
mod serve;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "thinclone", version, about = "Writable copies of large databases in about a second")]
struct Cli {
    #[command(flatten)]
    client: cli::ClientOpts,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show what thinclone does: a sample database, an image of it, three clones, a reset.
    Demo(demo::DemoArgs),
    /// Run the server in the foreground: the catalog, the REST API, and the clones' storage
    /// and database servers on this host (the server and this host's agent in one process).
    Serve(serve::ServeArgs),
    /// Run the control server alone in the foreground: the catalog, the REST API and the
    /// agent channel; agents on the database hosts (`thinclone agent`) do the work.
    Server(serve::ServerArgs),
    /// A database host's agent: run it, join it to a server; list and manage agents.
    Agent {
        #[command(subcommand)]
        command: cli::agent::AgentCommand,
    },
    /// Make images on a schedule (cron, UTC), keeping the newest few; `clone refresh` moves
    /// a clone to the newest.
    Schedule {
        #[command(subcommand)]
        command: cli::schedule::ScheduleCommand,
    },
    /// Manage clone templates: scripts run on a new clone before it is handed out.
    Template {
        #[command(subcommand)]
        command: cli::template::TemplateCommand,
    },
    /// Manage webhooks: endpoints told of events (administrators).
    Webhook {
        #[command(subcommand)]
        command: cli::webhook::WebhookCommand,
    },
    /// Manage image locations: directories (shares) where images are kept, and which agents
    /// reach them.
    Location {
        #[command(subcommand)]
        command: cli::location::LocationCommand,
    },
    /// Make, list and remove images (immutable copies of a database).
    Image {
        #[command(subcommand)]
        command: cli::image::ImageCommand,
    },
    /// Make and manage clones (private, writable databases made from an image).
    Clone {
        #[command(subcommand)]
        command: cli::clone::CloneCommand,
    },
    /// Follow the operations the server runs (making images, resetting clones, …).
    Op {
        #[command(subcommand)]
        command: cli::op::OpCommand,
    },
    /// Check a token with the server and save it, with the server's URL (and --ca-file), in
    /// ~/.config/thinclone/config.toml for the commands that follow.
    Login(cli::login::LoginArgs),
    /// Remove the saved token (it stays valid on the server until revoked).
    Logout,
    /// Show the user the token belongs to.
    Whoami,
    /// Manage users and their roles (administrators).
    User {
        #[command(subcommand)]
        command: cli::user::UserCommand,
    },
    /// Manage teams, which own images and clones.
    Team {
        #[command(subcommand)]
        command: cli::team::TeamCommand,
    },
    /// Make, list and revoke API tokens.
    Token {
        #[command(subcommand)]
        command: cli::token::TokenCommand,
    },
    /// Register the directories images may be made from (administrators).
    Source {
        #[command(subcommand)]
        command: cli::source::SourceCommand,
    },
    /// Show the audit log: who changed what, when, with which outcome.
    Activity(cli::activity::ActivityArgs),
    /// Mount a copy-on-write view of an image directory in the foreground (low level).
    Mount(mount::MountArgs),
}

/// Refuses the client options for a command that is not a client of the server.
fn no_client_opts(opts: &cli::ClientOpts, command: &str) -> anyhow::Result<()> {
    let given = opts.given();
    if given.is_empty() {
        Ok(())
    } else {
        anyhow::bail!(
            "`thinclone {command}` takes no {}: those are for the commands that talk to a server",
            given.join(", ")
        )
    }
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("THINCLONE_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    // `--config FILE` of the daemon commands becomes the options it holds (config_file.rs).
    let args = match config_file::expand(std::env::args_os().collect()) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("error: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let Cli { client: opts, command } = Cli::parse_from(args);
    let result = match command {
        Command::Demo(args) => demo::run(args, &opts),
        Command::Serve(args) => no_client_opts(&opts, "serve").and_then(|()| serve::run(args)),
        Command::Server(args) => no_client_opts(&opts, "server").and_then(|()| serve::run_control(args)),
        Command::Agent { command: cli::agent::AgentCommand::Run(args) } => {
            no_client_opts(&opts, "agent run").and_then(|()| serve::run_agent(args))
        }
        Command::Agent { command: cli::agent::AgentCommand::Join(args) } => cli::agent::join(args, opts.json),
        Command::Agent { command } => cli::run(&opts, |ctx| cli::agent::run(command, ctx)),
        Command::Location { command } => cli::run(&opts, |ctx| cli::location::run(command, ctx)),
        Command::Webhook { command } => cli::run(&opts, |ctx| cli::webhook::run(command, ctx)),
        Command::Template { command } => cli::run(&opts, |ctx| cli::template::run(command, ctx)),
        Command::Schedule { command } => cli::run(&opts, |ctx| cli::schedule::run(command, ctx)),
        Command::Mount(args) => no_client_opts(&opts, "mount").and_then(|()| mount::run(args)),
        Command::Image { command } => cli::run(&opts, |ctx| cli::image::run(command, ctx)),
        Command::Clone { command } => cli::run(&opts, |ctx| cli::clone::run(command, ctx)),
        Command::Op { command } => cli::run(&opts, |ctx| cli::op::run(command, ctx)),
        Command::Login(args) => {
            cli::login::login(&opts, &args, &cli::config::ProcessEnv, &mut std::io::stdout().lock())
        }
        Command::Logout => cli::login::logout(&cli::config::ProcessEnv, &mut std::io::stdout().lock()),
        Command::Whoami => cli::run(&opts, cli::login::whoami),
        Command::User { command } => cli::run(&opts, |ctx| cli::user::run(command, ctx)),
        Command::Team { command } => cli::run(&opts, |ctx| cli::team::run(command, ctx)),
        Command::Token { command } => cli::run(&opts, |ctx| cli::token::run(command, ctx)),
        Command::Source { command } => cli::run(&opts, |ctx| cli::source::run(command, ctx)),
        Command::Activity(args) => cli::run(&opts, |ctx| cli::activity::run(args, ctx)),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
