//! The `thinclone` command: argument parsing and glue over the library crates.

mod client;
mod commands;
mod demo;
mod mount;
mod serve;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "thinclone", version, about = "Writable copies of large PostgreSQL databases in about a second")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show what thinclone does: a sample database, an image of it, three clones, a reset.
    Demo(demo::DemoArgs),
    /// Run the daemon in the foreground: state, the REST API, clones' mounts and servers.
    Serve(serve::ServeArgs),
    /// Make, list and remove images (immutable copies of a database).
    Image {
        #[command(subcommand)]
        command: commands::ImageCommand,
        #[command(flatten)]
        opts: commands::ClientOpts,
    },
    /// Make and manage clones (private, writable databases made from an image).
    Clone {
        #[command(subcommand)]
        command: commands::CloneCommand,
        #[command(flatten)]
        opts: commands::ClientOpts,
    },
    /// Mount a copy-on-write view of an image directory in the foreground (low level).
    Mount(mount::MountArgs),
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("THINCLONE_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Image { command, opts } => commands::image(command, &opts),
        Command::Clone { command, opts } => commands::clone(command, &opts),
        Command::Mount(args) => mount::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
