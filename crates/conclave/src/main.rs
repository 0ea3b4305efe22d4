//! `conclave`: the server binary and its operational subcommands.

mod cli;
mod client_cli;

use std::process::ExitCode;

use clap::Parser as _;

use crate::cli::Cli;

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
