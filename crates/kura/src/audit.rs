//! `kura audit verify`: checks the audit log's hash chain straight in the metadata database
//! (no server needed) and names the first record that was modified, removed or inserted.

use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::config::ServeArgs;

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub command: AuditCommand,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verify the hash chain. Exit code 0: intact; 1: broken (the report names the first
    /// broken record); 2: could not check.
    ///
    /// Examples:
    ///   kura audit verify --data-dir /var/lib/kura
    ///   kura audit verify --config /etc/kura/kura.toml --json
    Verify(VerifyArgs),
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// The server's configuration (same flags and KURA_* variables as `kura serve`).
    #[command(flatten)]
    pub serve: ServeArgs,
}

pub fn run(args: AuditArgs) -> ExitCode {
    let AuditCommand::Verify(v) = args.command;
    let (settings, runtime) = match crate::serve::prepare(&v.serve) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let outcome = runtime.block_on(async {
        let (_, sql) = crate::serve::open_backends(&settings).await?;
        kura_ops::audit::verify(sql.as_ref())
            .await
            .map_err(|e| e.to_string())
    });
    match outcome {
        Ok(report) => {
            if v.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).unwrap_or_default()
                );
            } else if let Some(b) = &report.broken {
                println!(
                    "audit log BROKEN at record {}: {} ({} records verified before it)",
                    b.seq, b.reason, report.records_checked
                );
            } else {
                match (report.first_seq, report.last_seq) {
                    (Some(f), Some(l)) => println!(
                        "audit log intact: {} records ({f}..{l}) verified",
                        report.records_checked
                    ),
                    _ => println!("audit log intact: no records"),
                }
            }
            if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("kura: cannot verify the audit log: {e}");
            ExitCode::from(2)
        }
    }
}
