//! The `thinclone` command: argument parsing and glue over the library crates.

mod cli;
mod demo;
mod engines;
mod mount;
mod serve;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "thinclone", version, about = "Writable copies of large databases in about a second")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show what thinclone does: a sample database, an image of it, three clones, a reset.
    Demo(demo::DemoArgs),
    /// Run the server in the foreground: the catalog, the REST API, and the clones' storage
    /// and database servers on this host.
    Serve(serve::ServeArgs),
    /// Make, list and remove images (immutable copies of a database).
    Image {
        #[command(subcommand)]
        command: cli::image::ImageCommand,
        #[command(flatten)]
        opts: cli::ClientOpts,
    },
    /// Make and manage clones (private, writable databases made from an image).
    Clone {
        #[command(subcommand)]
        command: cli::clone::CloneCommand,
        #[command(flatten)]
        opts: cli::ClientOpts,
    },
    /// Follow the operations the server runs (making images, resetting clones, …).
    Op {
        #[command(subcommand)]
        command: cli::op::OpCommand,
        #[command(flatten)]
        opts: cli::ClientOpts,
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
        Command::Image { command, opts } => cli::run(&opts, |ctx| cli::image::run(command, ctx)),
        Command::Clone { command, opts } => cli::run(&opts, |ctx| cli::clone::run(command, ctx)),
        Command::Op { command, opts } => cli::run(&opts, |ctx| cli::op::run(command, ctx)),
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
