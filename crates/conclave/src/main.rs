//! `conclave`: the server binary and its operational subcommands.

mod cli;
mod client_cli;

use std::process::ExitCode;

use clap::Parser as _;

use crate::cli::Cli;

/// mimalloc rather than the system allocator: under load glibc's malloc
/// spent a sixth of the server's CPU (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // A `.env` in the working directory fills in variables that are not set
    // already; real environment variables always win.
    let dotenv = dotenvy::dotenv();
    let cli = Cli::parse();
    match cli::run(cli, dotenv.is_ok()) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
