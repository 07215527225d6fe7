//! `kura gc`: one garbage-collection run against the configured backends, from the command
//! line. Safe while servers are running on the same backends (GC is online); refuses to
//! start while another run is in progress.

use std::process::ExitCode;

use clap::Args;
use kura_registry::gc::GcRequest;

use crate::config::ServeArgs;

#[derive(Debug, Args)]
pub struct GcArgs {
    /// Report what would be removed; remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Also delete untagged manifests nothing references (default: the configuration's).
    #[arg(long)]
    pub delete_untagged: bool,
    /// Override the grace period, seconds.
    #[arg(long)]
    pub grace_secs: Option<u64>,
    /// Override how long deleted manifests stay restorable, seconds.
    #[arg(long)]
    pub deleted_manifest_retention_secs: Option<u64>,
    /// Do not scan blob storage for orphaned objects.
    #[arg(long)]
    pub skip_orphans: bool,
    /// The server's configuration (same flags and KURA_* variables as `kura serve`).
    #[command(flatten)]
    pub serve: ServeArgs,
}

pub fn run(args: GcArgs) -> ExitCode {
    let (settings, runtime) = match crate::serve::prepare(&args.serve) {
        Ok(v) => v,
        Err(code) => return code,
    };
    let req = GcRequest {
        dry_run: args.dry_run,
        delete_untagged: args.delete_untagged.then_some(true),
        grace_seconds: args.grace_secs,
        deleted_manifest_retention_seconds: args.deleted_manifest_retention_secs,
        skip_orphans: args.skip_orphans,
    };
    let outcome = runtime.block_on(async {
        let (store, sql) = crate::serve::open_backends(&settings).await?;
        let registry = crate::serve::registry(&settings, store, sql, Vec::new());
        registry.run_gc(req, "cli").await.map_err(|e| e.to_string())
    });
    match outcome {
        Ok(run) => {
            let result: serde_json::Value = serde_json::from_str(&run.result).unwrap_or_default();
            let out = serde_json::json!({
                "id": run.id,
                "status": run.status,
                "dry_run": run.dry_run,
                "error": run.error,
                "result": result,
            });
            println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
            if run.status == "succeeded" {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("kura: garbage collection failed: {e}");
            ExitCode::FAILURE
        }
    }
}
