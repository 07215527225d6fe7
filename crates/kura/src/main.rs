//! The `kura` binary: `kura serve` runs the registry; client commands come later.

mod config;
mod serve;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "kura",
    version,
    about = "Kura (倉): an OCI container image registry"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the registry server.
    ///
    /// With no flags and no config file it serves on 127.0.0.1:5000 and keeps everything
    /// (SQLite metadata, blobs) under ./kura-data.
    ///
    /// Examples:
    ///   kura serve
    ///   kura serve --listen 0.0.0.0:5000 --data-dir /var/lib/kura
    ///   KURA_LOG_FORMAT=json kura serve --config /etc/kura/kura.toml
    Serve(config::ServeArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve::run(args),
    }
}
