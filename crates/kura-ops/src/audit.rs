//! The audit log: who did what, from where, with what result — every push, pull, delete and
//! tag move (from the registry's event seam), every login, and every change made through the
//! management API (recorded by the HTTP layer through [`AuditLog::record`]).
//!
//! Recording never waits on the database: entries go into a bounded queue and one writer task
//! appends them in batches (one transaction each) to the hash chain kept by
//! [`kura_metadata::OpsStore`]. A full queue drops the entry, counts it
//! (`kura_audit_dropped_total`) and logs an error, because blocking pulls on the audit
//! database would turn an audit outage into a registry outage. [`AuditLog::flush`] waits
//! until everything queued before it is stored (queries and shutdown use it).

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use kura_metadata::{AuditEntry, AuditFilter, AuditRecord, OpsStore, audit_hash_of};
use kura_registry::{EventContext, EventSink, RegistryEvent};
use serde::Serialize;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

/// `[audit]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    /// Record manifest pulls (on by default: "who pulled what" is the point).
    pub pulls: bool,
    /// Also record blob pushes, mounts and pulls (off: one record per artifact is what
    /// people read; blob-level records multiply the log by the layer count).
    pub blob_events: bool,
    /// Records older than this are purged (hourly); `None` keeps everything.
    pub retention: Option<Duration>,
    /// Forward every stored record to this syslog server (UDP, RFC 5424).
    pub syslog: Option<SocketAddr>,
    /// Entries that may wait for the writer.
    pub queue: usize,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            pulls: true,
            blob_events: false,
            retention: None,
            syslog: None,
            queue: 65_536,
        }
    }
}

// Nearly every message is an entry; boxing them would add an allocation per record.
#[allow(clippy::large_enum_variant)]
enum Msg {
    Entry(AuditEntry),
    Flush(oneshot::Sender<()>),
}

pub struct AuditLog {
    tx: mpsc::Sender<Msg>,
    store: Arc<dyn OpsStore>,
    config: AuditConfig,
    dropped: AtomicU64,
}

impl AuditLog {
    /// Starts the writer task (needs a Tokio runtime).
    pub fn start(store: Arc<dyn OpsStore>, config: AuditConfig) -> Arc<AuditLog> {
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let syslog = config.syslog.and_then(|addr| match Syslog::new(addr) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(%addr, error = %e, "cannot open the syslog socket; not forwarding");
                None
            }
        });
        tokio::spawn(writer(store.clone(), rx, syslog));
        Arc::new(AuditLog {
            tx,
            store,
            config,
            dropped: AtomicU64::new(0),
        })
    }

    pub fn config(&self) -> &AuditConfig {
        &self.config
    }

    pub fn store(&self) -> &Arc<dyn OpsStore> {
        &self.store
    }

    /// Queues one entry; never blocks.
    pub fn record(&self, entry: AuditEntry) {
        metrics::counter!("kura_audit_records_total", "action" => entry.action.clone())
            .increment(1);
        if let Err(e) = self.tx.try_send(Msg::Entry(entry)) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("kura_audit_dropped_total").increment(1);
            let entry = match e {
                mpsc::error::TrySendError::Full(Msg::Entry(e))
                | mpsc::error::TrySendError::Closed(Msg::Entry(e)) => Some(e),
                _ => None,
            };
            tracing::error!(?entry, "audit queue full or closed: record dropped");
        }
    }

    /// Entries dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Waits until every entry queued before this call is stored.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// Newest first.
    pub async fn query(
        &self,
        filter: &AuditFilter,
        before: Option<i64>,
        limit: u32,
    ) -> kura_metadata::Result<Vec<AuditRecord>> {
        self.flush().await;
        self.store.audit_records(filter, before, limit).await
    }

    /// Removes records older than `age`; the purge itself is recorded.
    pub async fn purge_older_than(
        &self,
        age: Duration,
        actor: &EventContext,
    ) -> kura_metadata::Result<u64> {
        self.flush().await;
        let cutoff = kura_metadata::now_ms() - age.as_millis().min(i64::MAX as u128) as i64;
        let n = self.store.purge_audit(cutoff).await?;
        self.record(entry(
            actor,
            "audit.purge",
            "audit_log",
            "audit-logs/purge".into(),
            None,
            true,
            json!({ "removed": n, "older_than": cutoff }),
        ));
        Ok(n)
    }
}

/// Builds an entry attributed to `ctx`.
pub fn entry(
    ctx: &EventContext,
    action: &str,
    resource_type: &str,
    resource: String,
    project: Option<String>,
    success: bool,
    detail: serde_json::Value,
) -> AuditEntry {
    AuditEntry {
        at: ctx.at_ms,
        actor: ctx.actor.name.clone(),
        actor_kind: ctx.actor.kind.as_str().to_string(),
        source_ip: ctx.source_ip.map(|ip| ip.to_string()),
        action: action.to_string(),
        resource_type: resource_type.to_string(),
        resource,
        project,
        result: if success { "success" } else { "failure" }.to_string(),
        detail: detail.to_string(),
        request_id: ctx.request_id.clone(),
    }
}

fn project_of(repository: &str) -> Option<String> {
    Some(kura_metadata::project_of(repository).to_string())
}

impl EventSink for AuditLog {
    fn emit(&self, event: &RegistryEvent, ctx: &EventContext) {
        let e = |action: &str, rtype: &str, resource: String, repo: &str, detail| {
            entry(ctx, action, rtype, resource, project_of(repo), true, detail)
        };
        let record = match event {
            RegistryEvent::ManifestPushed {
                repository,
                digest,
                media_type,
                tag,
                size,
                created,
                tag_changed,
                previous,
            } => {
                // A manifest the repository already held, put under a tag: a retag (tag move).
                let action = if !created && *tag_changed {
                    "tag"
                } else {
                    "push"
                };
                let resource = match tag {
                    Some(t) => format!("{repository}:{t}"),
                    None => format!("{repository}@{digest}"),
                };
                e(
                    action,
                    "artifact",
                    resource,
                    repository,
                    json!({ "digest": digest, "media_type": media_type, "size": size,
                            "tag": tag, "previous": previous, "created": created }),
                )
            }
            RegistryEvent::ManifestPulled {
                repository,
                digest,
                reference,
            } if self.config.pulls => {
                let resource = if reference.contains(':') {
                    format!("{repository}@{reference}")
                } else {
                    format!("{repository}:{reference}")
                };
                e(
                    "pull",
                    "artifact",
                    resource,
                    repository,
                    json!({ "digest": digest }),
                )
            }
            RegistryEvent::ManifestDeleted {
                repository,
                digest,
                tags,
                cause,
            } => e(
                "delete",
                "artifact",
                format!("{repository}@{digest}"),
                repository,
                json!({ "digest": digest, "tags": tags, "cause": cause.as_str() }),
            ),
            RegistryEvent::TagDeleted { repository, tag } => e(
                "delete",
                "tag",
                format!("{repository}:{tag}"),
                repository,
                json!({}),
            ),
            RegistryEvent::TagRestored {
                repository,
                tag,
                digest,
                previous,
            } => e(
                "tag",
                "artifact",
                format!("{repository}:{tag}"),
                repository,
                json!({ "digest": digest, "previous": previous, "restored": true }),
            ),
            RegistryEvent::BlobDeleted { repository, digest } => e(
                "delete",
                "blob",
                format!("{repository}@{digest}"),
                repository,
                json!({}),
            ),
            RegistryEvent::BlobPushed {
                repository,
                digest,
                size,
            } if self.config.blob_events => e(
                "push",
                "blob",
                format!("{repository}@{digest}"),
                repository,
                json!({ "size": size }),
            ),
            RegistryEvent::BlobMounted {
                repository,
                from,
                digest,
            } if self.config.blob_events => e(
                "mount",
                "blob",
                format!("{repository}@{digest}"),
                repository,
                json!({ "from": from }),
            ),
            RegistryEvent::BlobPulled { repository, digest } if self.config.blob_events => e(
                "pull",
                "blob",
                format!("{repository}@{digest}"),
                repository,
                json!({}),
            ),
            RegistryEvent::QuotaExceeded {
                project,
                repository,
                usage,
                requested,
                limit,
            } => entry(
                ctx,
                "push",
                "repository",
                repository.clone(),
                Some(project.clone()),
                false,
                json!({ "reason": "quota exceeded", "usage": usage, "requested": requested,
                        "limit": limit }),
            ),
            RegistryEvent::GarbageCollected {
                run_id,
                dry_run,
                blobs,
                bytes,
                manifests,
            } => entry(
                ctx,
                "gc.completed",
                "gc_run",
                format!("gc/{run_id}"),
                None,
                true,
                json!({ "dry_run": dry_run, "blobs": blobs, "bytes": bytes,
                        "manifests": manifests }),
            ),
            RegistryEvent::RetentionApplied {
                run_id,
                project,
                dry_run,
                deleted,
            } => entry(
                ctx,
                "retention.completed",
                "retention_run",
                format!("retention/{run_id}"),
                Some(project.clone()),
                true,
                json!({ "dry_run": dry_run, "deleted": deleted }),
            ),
            _ => return,
        };
        self.record(record);
    }
}

/// How long the writer waits to fill a batch: records reach the database (and syslog) at most
/// this much later, and a crash can lose this much more.
const LINGER: Duration = Duration::from_millis(20);

async fn writer(store: Arc<dyn OpsStore>, mut rx: mpsc::Receiver<Msg>, syslog: Option<Syslog>) {
    const BATCH: usize = 512;
    let mut entries = Vec::with_capacity(BATCH);
    let mut waiters = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(m) = next.take() {
            match m {
                Msg::Entry(e) => entries.push(e),
                Msg::Flush(w) => waiters.push(w),
            }
            if entries.len() < BATCH {
                next = rx.try_recv().ok();
            }
        }
        // Under load, wait a moment for more: one transaction per few records made the
        // writer's database work grow with the pull rate (a quarter of manifest-GET
        // throughput). A flush (API reads, shutdown) writes at once.
        if waiters.is_empty() && entries.len() < BATCH {
            let deadline = tokio::time::Instant::now() + LINGER;
            while entries.len() < BATCH && waiters.is_empty() {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(Msg::Entry(e))) => entries.push(e),
                    Ok(Some(Msg::Flush(w))) => waiters.push(w),
                    Ok(None) | Err(_) => break,
                }
            }
        }
        let mut backoff = Duration::from_millis(100);
        loop {
            match store.append_audit(&entries).await {
                Ok(stored) => {
                    if let Some(s) = &syslog {
                        for r in &stored {
                            s.send(r);
                        }
                    }
                    break;
                }
                Err(e) => {
                    // Keep the batch and try again: records are lost only when the queue
                    // behind it overflows.
                    tracing::error!(error = %e, records = entries.len(), "cannot write audit records; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        entries.clear();
        for w in waiters.drain(..) {
            let _ = w.send(());
        }
    }
}

/// RFC 5424 messages over UDP, one per record, the record as JSON in the message part.
struct Syslog {
    socket: UdpSocket,
    target: SocketAddr,
    hostname: String,
}

impl Syslog {
    fn new(target: SocketAddr) -> std::io::Result<Syslog> {
        let bind: SocketAddr = if target.is_ipv4() {
            "0.0.0.0:0".parse().expect("address")
        } else {
            "[::]:0".parse().expect("address")
        };
        let socket = UdpSocket::bind(bind)?;
        socket.set_nonblocking(true)?;
        let hostname = std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty() && h.is_ascii() && !h.contains(' '))
            .unwrap_or_else(|| "-".into());
        Ok(Syslog {
            socket,
            target,
            hostname,
        })
    }

    fn send(&self, r: &AuditRecord) {
        // facility local0 (16); severity informational (6), warning (4) for failures.
        let severity = if r.entry.result == "success" { 6 } else { 4 };
        let pri = 16 * 8 + severity;
        let ts = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(r.entry.at)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_else(|| "-".into());
        // The record as the API shows it: detail as an object, plus a readable time.
        let mut v = serde_json::to_value(r).unwrap_or_default();
        v["detail"] = serde_json::from_str(&r.entry.detail).unwrap_or(serde_json::Value::Null);
        v["time"] = serde_json::Value::String(ts.clone());
        let body = v.to_string();
        let msg = format!("<{pri}>1 {ts} {} kura - audit - {body}", self.hostname);
        if let Err(e) = self.socket.send_to(msg.as_bytes(), self.target) {
            tracing::warn!(error = %e, "could not forward an audit record to syslog");
        }
    }
}

/// Result of checking the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub ok: bool,
    pub records_checked: u64,
    /// First and last sequence numbers checked.
    pub first_seq: Option<i64>,
    pub last_seq: Option<i64>,
    /// The first broken link, if any.
    pub broken: Option<BrokenLink>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BrokenLink {
    pub seq: i64,
    pub reason: String,
}

/// Walks the chain from the purge anchor to the head as it stood when the walk began and
/// reports the first record that was modified, removed or inserted.
pub async fn verify(store: &dyn OpsStore) -> kura_metadata::Result<VerifyReport> {
    let head = store.audit_head().await?;
    let mut expected_seq = head.purged_seq + 1;
    let mut expected_prev = head.purged_hash.clone();
    let mut report = VerifyReport {
        ok: true,
        records_checked: 0,
        first_seq: None,
        last_seq: None,
        broken: None,
    };
    let mut after = head.purged_seq;
    let all = AuditFilter::default();
    'pages: loop {
        let page = store.audit_records_after(&all, after, 1000).await?;
        if page.is_empty() {
            break;
        }
        for r in &page {
            if r.seq > head.seq {
                break 'pages;
            }
            let broken = if r.seq != expected_seq {
                Some(format!(
                    "record {expected_seq} is missing (the next record is {})",
                    r.seq
                ))
            } else if r.prev_hash != expected_prev {
                Some(format!(
                    "prev_hash does not match the hash of record {}",
                    r.seq - 1
                ))
            } else if audit_hash_of(r) != r.hash {
                Some("the record's content does not match its hash (modified)".to_string())
            } else {
                None
            };
            if let Some(reason) = broken {
                report.ok = false;
                report.broken = Some(BrokenLink {
                    seq: r.seq.min(expected_seq),
                    reason,
                });
                return Ok(report);
            }
            report.records_checked += 1;
            report.first_seq.get_or_insert(r.seq);
            report.last_seq = Some(r.seq);
            expected_seq = r.seq + 1;
            expected_prev = r.hash.clone();
            after = r.seq;
        }
    }
    if expected_seq != head.seq + 1 || expected_prev != head.hash {
        report.ok = false;
        report.broken = Some(BrokenLink {
            seq: expected_seq,
            reason: format!(
                "the chain ends at record {} but its head records {} (records removed from the end)",
                expected_seq - 1,
                head.seq
            ),
        });
    }
    Ok(report)
}
