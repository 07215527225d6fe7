//! The `kura` binary: `kura serve` runs the registry; client commands come later.

mod audit;
mod config;
mod gc;
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
    /// Run garbage collection once against the configured backends and print the result.
    ///
    /// Online: servers on the same backends keep serving pushes and pulls meanwhile.
    ///
    /// Examples:
    ///   kura gc --dry-run --config /etc/kura/kura.toml
    ///   kura gc --delete-untagged --data-dir /var/lib/kura
    Gc(gc::GcArgs),
    /// Audit log tools (verification of the hash chain).
    Audit(audit::AuditArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Gc(args) => gc::run(args),
        Command::Audit(args) => audit::run(args),
    }
}
