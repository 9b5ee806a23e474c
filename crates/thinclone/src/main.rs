//! The `thinclone` command: argument parsing and glue over the library crates.

mod mount;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "thinclone", version, about = "Writable copies of large PostgreSQL databases in about a second")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
