//! Command-line arguments as typed by the user.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Secure real-time traffic over plain WebSocket.
#[derive(Debug, Parser)]
#[command(name = "wsgate", version, about, long_about = None)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the gateway.
    Serve(ServeArgs),
    /// Manage users (stored as SCRAM verifiers: never the password).
    #[command(subcommand)]
    User(UserCommand),
    /// Make a new current server key; older keys stay accepted until removed.
    Keygen(DataDirArgs),
    /// Benchmark a gateway (started here, or --addr) against same-run baselines.
    Bench(Box<wsgate_bench::BenchArgs>),
}

/// Where the data directory is.
#[derive(Debug, Args)]
pub(crate) struct DataDirArgs {
    /// Data directory (keys, server secret, SQLite credentials) [default: the config's, or wsgate-data].
    #[arg(long, value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Config file (TOML); its `data_dir` is used unless --data-dir is given.
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Config file (TOML). Flags override it.
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    pub(crate) listen: Option<SocketAddr>,
    /// Data directory [default: wsgate-data].
    #[arg(long, value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Serve the demo page at / with the demo user (demo / wsgate-demo), held
    /// in memory while this runs and never stored.
    #[arg(long)]
    pub(crate) demo: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum UserCommand {
    /// Add a user; prompts for the password without echo.
    Add {
        /// User name (SASLprep'd before storing).
        name: String,
        #[command(flatten)]
        dir: DataDirArgs,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
        /// PBKDF2 iterations [default: the config's login.iterations, or 600000].
        #[arg(long, value_name = "N")]
        iterations: Option<u32>,
    },
    /// List users.
    List {
        #[command(flatten)]
        dir: DataDirArgs,
    },
    /// Remove a user.
    Remove {
        /// User name.
        name: String,
        #[command(flatten)]
        dir: DataDirArgs,
    },
}
