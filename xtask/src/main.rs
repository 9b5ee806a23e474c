//! thinclone's development tasks, run as `cargo xtask …` (an alias in .cargo/config.toml):
//!
//! - `cargo xtask bench cowfs [options]`: cowfs against the filesystem underneath it;
//! - `cargo xtask bench suite [options]`: clones, disk, query speed, images, many clones;
//! - `cargo xtask bench agents [options]`: one server, many agents in network namespaces, many
//!   clones placed by the server, and `clone list` over all of them.
//!
//! See doc/BENCHMARKING.md.

mod bench;

use std::process::ExitCode;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", about = "thinclone's development tasks")]
enum Task {
    /// Benchmarks against baselines measured in the same run; they write BENCHMARKS.md and
    /// bench/results/*.json (doc/BENCHMARKING.md).
    #[command(subcommand)]
    Bench(bench::Bench),
}

fn main() -> ExitCode {
    let result = match Task::parse() {
        Task::Bench(b) => bench::main(b),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            bench::progress::error(&format!("{e:#}"));
            match bench::exec::interrupted() {
                Some(signal) => ExitCode::from(128 + signal as u8),
                None => ExitCode::FAILURE,
            }
        }
    }
}
