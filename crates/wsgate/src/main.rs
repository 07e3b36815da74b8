//! `wsgate`: run the gateway, manage users and keys.
//!
//! Arguments resolve into a validated configuration before anything runs
//! (see `args.rs`); each subcommand lives in `commands.rs`.

#![forbid(unsafe_code)]

mod args;
mod commands;
mod demo;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    match commands::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
