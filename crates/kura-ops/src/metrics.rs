//! Registry-level metrics: counters fed by the event seam, and gauges read at scrape time
//! (storage per project, open uploads, database pools, the process itself). The HTTP
//! metrics (requests, latency, bytes) are recorded by the HTTP layer; everything goes through
//! the `metrics` facade into the one Prometheus recorder the binary installs.

use kura_metadata::OpsStore;
use kura_registry::{EventContext, EventSink, RegistryEvent};

/// Counts registry events.
#[derive(Default)]
pub struct RegistryMetrics;

impl EventSink for RegistryMetrics {
    fn emit(&self, event: &RegistryEvent, _ctx: &EventContext) {
        metrics::counter!("kura_registry_events_total", "event" => event.kind()).increment(1);
        match event {
            RegistryEvent::BlobPushed { size, .. } => {
                metrics::counter!("kura_blob_pushed_bytes_total").increment(*size);
            }
            RegistryEvent::GarbageCollected {
                dry_run,
                blobs,
                bytes,
                manifests,
                ..
            } => {
                let mode = if *dry_run { "dry_run" } else { "real" };
                metrics::counter!("kura_gc_runs_total", "mode" => mode).increment(1);
                if !dry_run {
                    metrics::counter!("kura_gc_deleted_blobs_total").increment(*blobs);
                    metrics::counter!("kura_gc_deleted_bytes_total").increment(*bytes);
                    metrics::counter!("kura_gc_deleted_manifests_total").increment(*manifests);
                    metrics::gauge!("kura_gc_last_run_timestamp_seconds")
                        .set(kura_metadata::now_ms() as f64 / 1000.0);
                }
            }
            RegistryEvent::RetentionApplied {
                dry_run, deleted, ..
            } => {
                let mode = if *dry_run { "dry_run" } else { "real" };
                metrics::counter!("kura_retention_runs_total", "mode" => mode).increment(1);
                if !dry_run {
                    metrics::counter!("kura_retention_deleted_artifacts_total").increment(*deleted);
                }
            }
            RegistryEvent::QuotaExceeded { project, .. } => {
                metrics::counter!("kura_quota_exceeded_total", "project" => project.clone())
                    .increment(1);
            }
            _ => {}
        }
    }
}

/// Describes the metrics (HELP lines) once the recorder is installed.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "kura_http_requests_total",
        "HTTP requests by route template, method and status"
    );
    describe_histogram!(
        "kura_http_request_duration_seconds",
        Unit::Seconds,
        "HTTP request latency until the response head, by route template and method"
    );
    describe_counter!(
        "kura_http_received_bytes_total",
        Unit::Bytes,
        "Request body bytes received, by route template"
    );
    describe_counter!(
        "kura_http_sent_bytes_total",
        Unit::Bytes,
        "Response body bytes sent, by route template"
    );
    describe_gauge!("kura_http_requests_in_flight", "Requests being served");
    describe_counter!(
        "kura_registry_events_total",
        "Registry events (pushes, pulls, deletes, ...) by kind"
    );
    describe_counter!(
        "kura_blob_pushed_bytes_total",
        Unit::Bytes,
        "Bytes of blobs committed"
    );
    describe_gauge!(
        "kura_uploads_in_progress",
        "Open upload sessions (whole cluster)"
    );
    describe_gauge!(
        "kura_project_storage_bytes",
        Unit::Bytes,
        "Stored bytes per project (distinct blobs)"
    );
    describe_gauge!(
        "kura_db_pool_connections",
        "Database pool connections by pool and state"
    );
    describe_gauge!(
        "kura_db_pool_max_connections",
        "Database pool size limit by pool"
    );
    describe_counter!("kura_gc_runs_total", "Garbage-collection runs finished");
    describe_counter!(
        "kura_gc_deleted_blobs_total",
        "Blobs removed by garbage collection"
    );
    describe_counter!(
        "kura_gc_deleted_bytes_total",
        Unit::Bytes,
        "Bytes removed by garbage collection"
    );
    describe_counter!(
        "kura_gc_deleted_manifests_total",
        "Manifests removed by garbage collection"
    );
    describe_gauge!(
        "kura_gc_last_run_timestamp_seconds",
        Unit::Seconds,
        "When the last real GC run finished (Unix time)"
    );
    describe_counter!("kura_retention_runs_total", "Retention runs finished");
    describe_counter!(
        "kura_retention_deleted_artifacts_total",
        "Artifacts deleted by retention"
    );
    describe_counter!(
        "kura_quota_exceeded_total",
        "Pushes refused by a project quota"
    );
    describe_counter!(
        "kura_audit_records_total",
        "Audit records queued, by action"
    );
    describe_counter!(
        "kura_audit_dropped_total",
        "Audit records dropped because the queue was full"
    );
    describe_counter!(
        "kura_webhook_deliveries_total",
        "Webhook delivery attempts by outcome"
    );
    describe_histogram!(
        "kura_webhook_delivery_duration_seconds",
        Unit::Seconds,
        "Webhook request duration"
    );
    describe_counter!(
        "kura_webhook_events_dropped_total",
        "Events not announced because the webhook queue was full"
    );
    describe_counter!(
        "kura_db_commit_groups_total",
        "SQLite transactions that committed a group of writes together (manifest PUTs, blob commits)"
    );
    describe_counter!(
        "kura_db_grouped_writes_total",
        "Writes committed in those groups: divided by kura_db_commit_groups_total, the mean group size"
    );
    describe_gauge!(
        "process_resident_memory_bytes",
        Unit::Bytes,
        "Resident memory size"
    );
    describe_gauge!(
        "process_virtual_memory_bytes",
        Unit::Bytes,
        "Virtual memory size"
    );
    describe_gauge!("process_open_fds", "Open file descriptors");
    describe_gauge!(
        "process_start_time_seconds",
        Unit::Seconds,
        "Start time of the process since the Unix epoch"
    );
}

/// Sets the scrape-time gauges. Database reads are cheap (a count and one row per project).
/// `pending_uploads`: sessions this process holds that have no row yet.
pub async fn refresh(store: &dyn OpsStore, pending_uploads: u64) {
    for p in store.pool_stats() {
        let busy = p.size.saturating_sub(p.idle);
        metrics::gauge!("kura_db_pool_connections", "pool" => p.pool, "state" => "idle")
            .set(f64::from(p.idle));
        metrics::gauge!("kura_db_pool_connections", "pool" => p.pool, "state" => "in_use")
            .set(f64::from(busy));
        metrics::gauge!("kura_db_pool_max_connections", "pool" => p.pool).set(f64::from(p.max));
    }
    if let Some((groups, writes)) = store.commit_groups() {
        metrics::counter!("kura_db_commit_groups_total").absolute(groups);
        metrics::counter!("kura_db_grouped_writes_total").absolute(writes);
    }
    match store.uploads_in_progress().await {
        Ok(n) => metrics::gauge!("kura_uploads_in_progress").set((n + pending_uploads) as f64),
        Err(e) => tracing::warn!(error = %e, "metrics: cannot count uploads"),
    }
    match store.usage_per_project().await {
        Ok(rows) => {
            for (project, bytes) in rows {
                metrics::gauge!("kura_project_storage_bytes", "project" => project)
                    .set(bytes as f64);
            }
        }
        Err(e) => tracing::warn!(error = %e, "metrics: cannot read project usage"),
    }
    process();
}

/// Process metrics from /proc (Linux); absent elsewhere.
fn process() {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return;
    };
    // Fields after the parenthesised command name (which may contain spaces).
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state): starttime = field 22, vsize = 23, rss = 24 (pages).
    let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    let ticks = 100.0; // USER_HZ on Linux
    if let Some(v) = field(23) {
        metrics::gauge!("process_virtual_memory_bytes").set(v as f64);
    }
    if let Some(pages) = field(24) {
        metrics::gauge!("process_resident_memory_bytes").set((pages * 4096) as f64);
    }
    if let Some(start) = field(22)
        && let Some(boot) = boot_time()
    {
        metrics::gauge!("process_start_time_seconds").set(boot + start as f64 / ticks);
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        metrics::gauge!("process_open_fds").set(dir.count() as f64);
    }
}

fn boot_time() -> Option<f64> {
    std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse::<f64>().ok())
}
