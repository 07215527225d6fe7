//! Operations metadata: the tamper-evident audit log and webhook policies with their delivery
//! log (migration 6), plus the numbers the metrics endpoint reads at scrape time.
//!
//! The audit log is a hash chain: each record's `hash` is SHA-256 over the previous record's
//! hash and the record's canonical form ([`audit_hash`]). Appends take the lock on the single
//! `audit_head` row first (on every backend, by updating it), so replicas writing at once
//! still produce one contiguous sequence. A purge removes the oldest records and moves the
//! chain's anchor (`purged_seq`, `purged_hash`) in the same transaction, so verification can
//! still tell a purge from a deletion.

use async_trait::async_trait;
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use sqlx::Connection as _;

use crate::sql::{Pools, SqlStore};
use crate::{Result, now_ms};

/// The hash that precedes the first record.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// An audit record before it joins the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    /// Milliseconds since the Unix epoch.
    pub at: i64,
    pub actor: String,
    /// user, robot, anonymous or system.
    pub actor_kind: String,
    pub source_ip: Option<String>,
    pub action: String,
    pub resource_type: String,
    pub resource: String,
    pub project: Option<String>,
    /// success or failure.
    pub result: String,
    /// JSON object text.
    pub detail: String,
    pub request_id: Option<String>,
}

/// A record of the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditRecord {
    pub seq: i64,
    #[serde(flatten)]
    pub entry: AuditEntry,
    pub prev_hash: String,
    pub hash: String,
}

/// Audit rows per INSERT statement (14 parameters each: well under SQLite's 32,766 and
/// PostgreSQL's 65,535 parameters per statement).
const AUDIT_ROWS_PER_INSERT: usize = 128;

/// The hash of record `seq` with content `e` following `prev_hash`. The canonical form is a
/// JSON array of the fields in a fixed order (serde_json writes it deterministically).
pub fn audit_hash(prev_hash: &str, seq: i64, e: &AuditEntry) -> String {
    let canonical = serde_json::json!([
        seq,
        e.at,
        e.actor,
        e.actor_kind,
        e.source_ip,
        e.action,
        e.resource_type,
        e.resource,
        e.project,
        e.result,
        e.detail,
        e.request_id,
    ])
    .to_string();
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(b"\n");
    h.update(canonical.as_bytes());
    hex::encode(h.finalize())
}

/// The hash a stored record should carry, recomputed from its content.
pub fn audit_hash_of(r: &AuditRecord) -> String {
    audit_hash(&r.prev_hash, r.seq, &r.entry)
}

/// Filters of an audit query; every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Records at or after (ms).
    pub from: Option<i64>,
    /// Records before (ms).
    pub to: Option<i64>,
    pub actor: Option<String>,
    pub project: Option<String>,
    pub action: Option<String>,
    pub resource_type: Option<String>,
    pub result: Option<String>,
}

/// Where the chain stands: its last record and the anchor left by purges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditHead {
    pub seq: i64,
    pub hash: String,
    pub purged_seq: i64,
    pub purged_hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WebhookPolicy {
    pub id: i64,
    pub project: String,
    pub name: String,
    pub url: String,
    #[serde(skip)]
    pub secret: Option<String>,
    pub events: Vec<String>,
    pub enabled: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

/// What a webhook policy is set to (create and update).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSpec {
    pub name: String,
    pub url: String,
    /// `None` on update keeps the stored secret; `Some("")` removes it.
    pub secret: Option<String>,
    pub events: Vec<String>,
    pub enabled: bool,
}

/// A delivery to queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDelivery {
    pub policy_id: i64,
    pub event_type: String,
    pub event_id: String,
    pub payload: String,
}

/// A delivery claimed for sending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueDelivery {
    pub id: i64,
    pub policy_id: i64,
    pub url: String,
    pub secret: Option<String>,
    pub event_type: String,
    pub event_id: String,
    pub payload: String,
    /// Attempts made before this one.
    pub attempts: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeliveryAttempt {
    pub attempt: u32,
    pub at: i64,
    pub status_code: Option<u16>,
    pub error: Option<String>,
    pub duration_ms: i64,
}

/// What became of a delivery after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    Delivered,
    /// Try again at this time (ms).
    Retry(i64),
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeliveryRecord {
    pub id: i64,
    pub policy_id: i64,
    pub event_type: String,
    pub event_id: String,
    /// pending, delivered or failed.
    pub status: String,
    pub attempts: u32,
    pub next_attempt_at: Option<i64>,
    pub created_at: i64,
    pub finished_at: Option<i64>,
    pub payload: serde_json::Value,
    pub attempt_log: Vec<DeliveryAttempt>,
}

/// Connection-pool numbers for the metrics endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolStats {
    pub pool: &'static str,
    pub size: u32,
    pub idle: u32,
    pub max: u32,
}

#[async_trait]
pub trait OpsStore: Send + Sync + 'static {
    /// Appends entries to the chain in order, in one transaction; returns them as stored.
    async fn append_audit(&self, entries: &[AuditEntry]) -> Result<Vec<AuditRecord>>;
    /// Newest first, `seq < before` when set.
    async fn audit_records(
        &self,
        filter: &AuditFilter,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AuditRecord>>;
    /// Oldest first, `seq > after` (export, verification).
    async fn audit_records_after(
        &self,
        filter: &AuditFilter,
        after: i64,
        limit: u32,
    ) -> Result<Vec<AuditRecord>>;
    async fn audit_head(&self) -> Result<AuditHead>;
    /// Removes records older than `before_ms` and moves the anchor; returns how many.
    async fn purge_audit(&self, before_ms: i64) -> Result<u64>;

    /// Policies of `project`, or every enabled policy when `None`.
    async fn webhook_policies(&self, project: Option<&str>) -> Result<Vec<WebhookPolicy>>;
    async fn webhook_policy(&self, project: &str, id: i64) -> Result<Option<WebhookPolicy>>;
    /// `Ok(None)`: the project does not exist or the name is taken (`name_taken` tells).
    async fn create_webhook(
        &self,
        project: &str,
        spec: &WebhookSpec,
    ) -> Result<Result<i64, WebhookConflict>>;
    async fn update_webhook(
        &self,
        project: &str,
        id: i64,
        spec: &WebhookSpec,
    ) -> Result<Result<bool, WebhookConflict>>;
    async fn delete_webhook(&self, project: &str, id: i64) -> Result<bool>;
    async fn enqueue_deliveries(&self, deliveries: &[NewDelivery]) -> Result<()>;
    /// Claims up to `limit` due deliveries for `lease_ms`.
    async fn claim_deliveries(&self, lease_ms: i64, limit: u32) -> Result<Vec<DueDelivery>>;
    async fn record_attempt(
        &self,
        delivery_id: i64,
        attempt: &DeliveryAttempt,
        state: DeliveryState,
    ) -> Result<()>;
    /// Newest first, `id < before` when set.
    async fn webhook_deliveries(
        &self,
        policy_id: i64,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<DeliveryRecord>>;
    /// Removes finished deliveries older than `before_ms`.
    async fn purge_deliveries(&self, before_ms: i64) -> Result<u64>;

    fn pool_stats(&self) -> Vec<PoolStats>;
    /// Writes committed together (SQLite's shared transactions): (groups committed, writes
    /// they held) since start; `None` where writes are not grouped (PostgreSQL).
    fn commit_groups(&self) -> Option<(u64, u64)>;
    /// Upload sessions open across the cluster.
    async fn uploads_in_progress(&self) -> Result<u64>;
    /// Stored bytes per project (distinct blobs), every project with usage.
    async fn usage_per_project(&self) -> Result<Vec<(String, u64)>>;
}

/// Why a webhook could not be created or renamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookConflict {
    ProjectMissing,
    NameTaken,
}

type AuditRow = (
    i64,
    i64,
    String,
    String,
    Option<String>,
    String,
    String,
    String,
    Option<String>,
    String,
    String,
    Option<String>,
    String,
    String,
);

const AUDIT_COLUMNS: &str = "seq, at, actor, actor_kind, source_ip, action, resource_type, \
     resource, project, result, detail, request_id, prev_hash, hash";

const AUDIT_WHERE: &str = "($1 IS NULL OR at >= $1) AND ($2 IS NULL OR at < $2) \
     AND ($3 IS NULL OR actor = $3) AND ($4 IS NULL OR project = $4) \
     AND ($5 IS NULL OR action = $5) AND ($6 IS NULL OR resource_type = $6) \
     AND ($7 IS NULL OR result = $7)";

fn audit_from_row(r: AuditRow) -> AuditRecord {
    AuditRecord {
        seq: r.0,
        entry: AuditEntry {
            at: r.1,
            actor: r.2,
            actor_kind: r.3,
            source_ip: r.4,
            action: r.5,
            resource_type: r.6,
            resource: r.7,
            project: r.8,
            result: r.9,
            detail: r.10,
            request_id: r.11,
        },
        prev_hash: r.12,
        hash: r.13,
    }
}

type PolicyRow = (
    i64,
    String,
    String,
    String,
    Option<String>,
    String,
    bool,
    i64,
    i64,
);

const POLICY_SELECT: &str = "SELECT w.id, p.name, w.name, w.url, w.secret, w.events, w.enabled, \
     w.created_at, w.updated_at FROM webhook_policies w JOIN projects p ON p.id = w.project_id";

fn policy_from_row(r: PolicyRow) -> WebhookPolicy {
    WebhookPolicy {
        id: r.0,
        project: r.1,
        name: r.2,
        url: r.3,
        secret: r.4.filter(|s| !s.is_empty()),
        events: serde_json::from_str(&r.5).unwrap_or_default(),
        enabled: r.6,
        created_at: r.7,
        updated_at: r.8,
    }
}

macro_rules! bind_filter {
    ($q:expr, $f:expr) => {
        $q.bind($f.from)
            .bind($f.to)
            .bind($f.actor.as_deref())
            .bind($f.project.as_deref())
            .bind($f.action.as_deref())
            .bind($f.resource_type.as_deref())
            .bind($f.result.as_deref())
    };
}

#[async_trait]
impl OpsStore for SqlStore {
    async fn append_audit(&self, entries: &[AuditEntry]) -> Result<Vec<AuditRecord>> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        with_write!(self, |p| {
            let mut tx = p.begin().await?;
            // Taking the head row's lock first serializes writers on every backend.
            sqlx::query("UPDATE audit_head SET id = id WHERE id = 1")
                .execute(&mut *tx)
                .await?;
            let (mut seq, mut prev): (i64, String) =
                sqlx::query_as("SELECT seq, hash FROM audit_head WHERE id = 1")
                    .fetch_one(&mut *tx)
                    .await?;
            let mut out = Vec::with_capacity(entries.len());
            for e in entries {
                seq += 1;
                let hash = audit_hash(&prev, seq, e);
                out.push(AuditRecord {
                    seq,
                    entry: e.clone(),
                    prev_hash: std::mem::replace(&mut prev, hash.clone()),
                    hash,
                });
            }
            // Many rows per statement: a pull-heavy load appends thousands of records a
            // second, and one statement per row cost a quarter of manifest-GET throughput.
            for chunk in out.chunks(AUDIT_ROWS_PER_INSERT) {
                let mut insert = sqlx::QueryBuilder::new(
                    "INSERT INTO audit_log (seq, at, actor, actor_kind, source_ip, action, \
                     resource_type, resource, project, result, detail, request_id, prev_hash, \
                     hash) ",
                );
                insert.push_values(chunk, |mut row, r| {
                    let e = &r.entry;
                    row.push_bind(r.seq)
                        .push_bind(e.at)
                        .push_bind(&e.actor)
                        .push_bind(&e.actor_kind)
                        .push_bind(&e.source_ip)
                        .push_bind(&e.action)
                        .push_bind(&e.resource_type)
                        .push_bind(&e.resource)
                        .push_bind(&e.project)
                        .push_bind(&e.result)
                        .push_bind(&e.detail)
                        .push_bind(&e.request_id)
                        .push_bind(&r.prev_hash)
                        .push_bind(&r.hash);
                });
                // Every row count is another statement text, and a prepared 128-row INSERT
                // holds a few hundred KiB: cached for each count it kept ~10 MiB after a pull
                // burst. Only the full size (the one a load repeats) and single rows are cached.
                let cache = chunk.len() == AUDIT_ROWS_PER_INSERT || chunk.len() == 1;
                insert.build().persistent(cache).execute(&mut *tx).await?;
            }
            sqlx::query("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1")
                .bind(seq)
                .bind(&prev)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(out)
        })
    }

    async fn audit_records(
        &self,
        filter: &AuditFilter,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AuditRecord>> {
        let sql = format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_log WHERE {AUDIT_WHERE} \
             AND ($8 IS NULL OR seq < $8) ORDER BY seq DESC LIMIT $9"
        );
        let rows: Vec<AuditRow> = with_read!(self, |p| {
            bind_filter!(sqlx::query_as(sqlx::AssertSqlSafe(sql.clone())), filter)
                .bind(before)
                .bind(i64::from(limit))
                .fetch_all(&mut *p)
                .await?
        });
        Ok(rows.into_iter().map(audit_from_row).collect())
    }

    async fn audit_records_after(
        &self,
        filter: &AuditFilter,
        after: i64,
        limit: u32,
    ) -> Result<Vec<AuditRecord>> {
        let sql = format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_log WHERE {AUDIT_WHERE} \
             AND seq > $8 ORDER BY seq LIMIT $9"
        );
        let rows: Vec<AuditRow> = with_read!(self, |p| {
            bind_filter!(sqlx::query_as(sqlx::AssertSqlSafe(sql.clone())), filter)
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(&mut *p)
                .await?
        });
        Ok(rows.into_iter().map(audit_from_row).collect())
    }

    async fn audit_head(&self) -> Result<AuditHead> {
        let (seq, hash, purged_seq, purged_hash): (i64, String, i64, String) =
            with_read!(self, |p| {
                sqlx::query_as(
                    "SELECT seq, hash, purged_seq, purged_hash FROM audit_head WHERE id = 1",
                )
                .fetch_one(&mut *p)
                .await?
            });
        Ok(AuditHead {
            seq,
            hash,
            purged_seq,
            purged_hash,
        })
    }

    async fn purge_audit(&self, before_ms: i64) -> Result<u64> {
        with_write!(self, |p| {
            let mut tx = p.begin().await?;
            sqlx::query("UPDATE audit_head SET id = id WHERE id = 1")
                .execute(&mut *tx)
                .await?;
            // Records are appended in time order, so the purged ones are a prefix of the
            // chain: everything up to the last record older than the cut-off.
            let last: Option<(i64, String)> = sqlx::query_as(
                "SELECT seq, hash FROM audit_log WHERE at < $1 ORDER BY seq DESC LIMIT 1",
            )
            .bind(before_ms)
            .fetch_optional(&mut *tx)
            .await?;
            let Some((seq, hash)) = last else {
                tx.rollback().await?;
                return Ok(0);
            };
            let n = sqlx::query("DELETE FROM audit_log WHERE seq <= $1")
                .bind(seq)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            sqlx::query("UPDATE audit_head SET purged_seq = $1, purged_hash = $2 WHERE id = 1")
                .bind(seq)
                .bind(&hash)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(n)
        })
    }

    async fn webhook_policies(&self, project: Option<&str>) -> Result<Vec<WebhookPolicy>> {
        let sql = format!(
            "{POLICY_SELECT} WHERE ($1 IS NULL AND w.enabled) OR p.name = $1 ORDER BY w.id"
        );
        let rows: Vec<PolicyRow> = with_read!(self, |p| {
            sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
                .bind(project)
                .fetch_all(&mut *p)
                .await?
        });
        Ok(rows.into_iter().map(policy_from_row).collect())
    }

    async fn webhook_policy(&self, project: &str, id: i64) -> Result<Option<WebhookPolicy>> {
        let sql = format!("{POLICY_SELECT} WHERE p.name = $1 AND w.id = $2");
        let row: Option<PolicyRow> = with_read!(self, |p| {
            sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
                .bind(project)
                .bind(id)
                .fetch_optional(&mut *p)
                .await?
        });
        Ok(row.map(policy_from_row))
    }

    async fn create_webhook(
        &self,
        project: &str,
        spec: &WebhookSpec,
    ) -> Result<Result<i64, WebhookConflict>> {
        let events = serde_json::to_string(&spec.events).unwrap_or_else(|_| "[]".into());
        with_write!(self, |p| {
            let Some(pid): Option<i64> =
                sqlx::query_scalar("SELECT id FROM projects WHERE name = $1")
                    .bind(project)
                    .fetch_optional(&mut *p)
                    .await?
            else {
                return Ok(Err(WebhookConflict::ProjectMissing));
            };
            let now = now_ms();
            let id: Option<i64> = sqlx::query_scalar(
                "INSERT INTO webhook_policies (project_id, name, url, secret, events, enabled, \
                 created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7) \
                 ON CONFLICT (project_id, name) DO NOTHING RETURNING id",
            )
            .bind(pid)
            .bind(&spec.name)
            .bind(&spec.url)
            .bind(spec.secret.as_deref().filter(|s| !s.is_empty()))
            .bind(&events)
            .bind(spec.enabled)
            .bind(now)
            .fetch_optional(&mut *p)
            .await?;
            Ok(id.ok_or(WebhookConflict::NameTaken))
        })
    }

    async fn update_webhook(
        &self,
        project: &str,
        id: i64,
        spec: &WebhookSpec,
    ) -> Result<Result<bool, WebhookConflict>> {
        let events = serde_json::to_string(&spec.events).unwrap_or_else(|_| "[]".into());
        with_write!(self, |p| {
            let exists: Option<i64> = sqlx::query_scalar(
                "SELECT w.id FROM webhook_policies w JOIN projects p ON p.id = w.project_id \
                 WHERE p.name = $1 AND w.id = $2",
            )
            .bind(project)
            .bind(id)
            .fetch_optional(&mut *p)
            .await?;
            if exists.is_none() {
                return Ok(Ok(false));
            }
            let taken: Option<i64> = sqlx::query_scalar(
                "SELECT w.id FROM webhook_policies w JOIN projects p ON p.id = w.project_id \
                 WHERE p.name = $1 AND w.name = $2 AND w.id <> $3",
            )
            .bind(project)
            .bind(&spec.name)
            .bind(id)
            .fetch_optional(&mut *p)
            .await?;
            if taken.is_some() {
                return Ok(Err(WebhookConflict::NameTaken));
            }
            let n = sqlx::query(
                "UPDATE webhook_policies SET name = $3, url = $4, \
                 secret = CASE WHEN $5 IS NULL THEN secret WHEN $5 = '' THEN NULL ELSE $5 END, \
                 events = $6, enabled = $7, updated_at = $8 \
                 WHERE id = $2 AND project_id = (SELECT id FROM projects WHERE name = $1)",
            )
            .bind(project)
            .bind(id)
            .bind(&spec.name)
            .bind(&spec.url)
            .bind(spec.secret.as_deref())
            .bind(&events)
            .bind(spec.enabled)
            .bind(now_ms())
            .execute(&mut *p)
            .await?
            .rows_affected();
            Ok(Ok(n > 0))
        })
    }

    async fn delete_webhook(&self, project: &str, id: i64) -> Result<bool> {
        with_write!(self, |p| {
            let n = sqlx::query(
                "DELETE FROM webhook_policies WHERE id = $2 \
                 AND project_id = (SELECT id FROM projects WHERE name = $1)",
            )
            .bind(project)
            .bind(id)
            .execute(&mut *p)
            .await?
            .rows_affected();
            Ok(n > 0)
        })
    }

    async fn enqueue_deliveries(&self, deliveries: &[NewDelivery]) -> Result<()> {
        if deliveries.is_empty() {
            return Ok(());
        }
        with_write!(self, |p| {
            let mut tx = p.begin().await?;
            let now = now_ms();
            for d in deliveries {
                // The policy may have been deleted since the event was matched to it.
                sqlx::query(
                    "INSERT INTO webhook_deliveries (policy_id, event_type, event_id, payload, \
                     status, attempts, next_attempt_at, created_at) \
                     SELECT $1, $2, $3, $4, 'pending', 0, $5, $5 \
                     WHERE EXISTS (SELECT 1 FROM webhook_policies WHERE id = $1)",
                )
                .bind(d.policy_id)
                .bind(&d.event_type)
                .bind(&d.event_id)
                .bind(&d.payload)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    async fn claim_deliveries(&self, lease_ms: i64, limit: u32) -> Result<Vec<DueDelivery>> {
        type Row = (
            i64,
            i64,
            String,
            Option<String>,
            String,
            String,
            String,
            i32,
        );
        let rows: Vec<Row> = with_write!(self, |p| {
            let mut tx = p.begin().await?;
            let now = now_ms();
            // The outer condition is repeated: on PostgreSQL a concurrent claimer that waited
            // for the row re-checks it and skips rows another replica just leased.
            let ids: Vec<i64> = sqlx::query_scalar(
                "UPDATE webhook_deliveries SET lease_until = $2 WHERE id IN (\
                   SELECT d.id FROM webhook_deliveries d \
                   JOIN webhook_policies w ON w.id = d.policy_id AND w.enabled \
                   WHERE d.status = 'pending' AND d.next_attempt_at <= $1 \
                   AND (d.lease_until IS NULL OR d.lease_until < $1) \
                   ORDER BY d.next_attempt_at LIMIT $3) \
                 AND status = 'pending' AND (lease_until IS NULL OR lease_until < $1) \
                 RETURNING id",
            )
            .bind(now)
            .bind(now + lease_ms)
            .bind(i64::from(limit))
            .fetch_all(&mut *tx)
            .await?;
            let mut rows = Vec::with_capacity(ids.len());
            for id in ids {
                let row: Option<Row> = sqlx::query_as(
                    "SELECT d.id, d.policy_id, w.url, w.secret, d.event_type, d.event_id, \
                     d.payload, d.attempts FROM webhook_deliveries d \
                     JOIN webhook_policies w ON w.id = d.policy_id WHERE d.id = $1",
                )
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
                rows.extend(row);
            }
            tx.commit().await?;
            rows
        });
        Ok(rows
            .into_iter()
            .map(|r| DueDelivery {
                id: r.0,
                policy_id: r.1,
                url: r.2,
                secret: r.3.filter(|s| !s.is_empty()),
                event_type: r.4,
                event_id: r.5,
                payload: r.6,
                attempts: r.7.max(0) as u32,
            })
            .collect())
    }

    async fn record_attempt(
        &self,
        delivery_id: i64,
        attempt: &DeliveryAttempt,
        state: DeliveryState,
    ) -> Result<()> {
        let (status, next, finished) = match state {
            DeliveryState::Delivered => ("delivered", attempt.at, Some(attempt.at)),
            DeliveryState::Retry(at) => ("pending", at, None),
            DeliveryState::Failed => ("failed", attempt.at, Some(attempt.at)),
        };
        with_write!(self, |p| {
            let mut tx = p.begin().await?;
            sqlx::query(
                "INSERT INTO webhook_attempts (delivery_id, attempt, at, status_code, error, \
                 duration_ms) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
            )
            .bind(delivery_id)
            .bind(attempt.attempt as i32)
            .bind(attempt.at)
            .bind(attempt.status_code.map(i32::from))
            .bind(&attempt.error)
            .bind(attempt.duration_ms)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE webhook_deliveries SET status = $2, attempts = $3, next_attempt_at = $4, \
                 finished_at = $5, lease_until = NULL WHERE id = $1",
            )
            .bind(delivery_id)
            .bind(status)
            .bind(attempt.attempt as i32)
            .bind(next)
            .bind(finished)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    async fn webhook_deliveries(
        &self,
        policy_id: i64,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<DeliveryRecord>> {
        type Row = (
            i64,
            i64,
            String,
            String,
            String,
            i32,
            i64,
            i64,
            Option<i64>,
            String,
        );
        type AttemptRow = (i64, i32, i64, Option<i32>, Option<String>, i64);
        let (rows, attempts): (Vec<Row>, Vec<AttemptRow>) = with_read!(self, |p| {
            let rows: Vec<Row> = sqlx::query_as(
                "SELECT id, policy_id, event_type, event_id, status, attempts, next_attempt_at, \
                 created_at, finished_at, payload FROM webhook_deliveries \
                 WHERE policy_id = $1 AND ($2 IS NULL OR id < $2) ORDER BY id DESC LIMIT $3",
            )
            .bind(policy_id)
            .bind(before)
            .bind(i64::from(limit))
            .fetch_all(&mut *p)
            .await?;
            let (lo, hi) = match (rows.last(), rows.first()) {
                (Some(l), Some(h)) => (l.0, h.0),
                _ => (0, -1),
            };
            let attempts: Vec<AttemptRow> = sqlx::query_as(
                "SELECT a.delivery_id, a.attempt, a.at, a.status_code, a.error, a.duration_ms \
                 FROM webhook_attempts a JOIN webhook_deliveries d ON d.id = a.delivery_id \
                 WHERE d.policy_id = $1 AND a.delivery_id BETWEEN $2 AND $3 \
                 ORDER BY a.delivery_id, a.attempt",
            )
            .bind(policy_id)
            .bind(lo)
            .bind(hi)
            .fetch_all(&mut *p)
            .await?;
            (rows, attempts)
        });
        Ok(rows
            .into_iter()
            .map(|r| DeliveryRecord {
                id: r.0,
                policy_id: r.1,
                event_type: r.2,
                event_id: r.3,
                next_attempt_at: (r.4 == "pending").then_some(r.6),
                status: r.4,
                attempts: r.5.max(0) as u32,
                created_at: r.7,
                finished_at: r.8,
                payload: serde_json::from_str(&r.9).unwrap_or(serde_json::Value::Null),
                attempt_log: attempts
                    .iter()
                    .filter(|a| a.0 == r.0)
                    .map(|a| DeliveryAttempt {
                        attempt: a.1.max(0) as u32,
                        at: a.2,
                        status_code: a.3.and_then(|c| u16::try_from(c).ok()),
                        error: a.4.clone(),
                        duration_ms: a.5,
                    })
                    .collect(),
            })
            .collect())
    }

    async fn purge_deliveries(&self, before_ms: i64) -> Result<u64> {
        with_write!(self, |p| {
            let n = sqlx::query(
                "DELETE FROM webhook_deliveries WHERE status <> 'pending' AND finished_at < $1",
            )
            .bind(before_ms)
            .execute(&mut *p)
            .await?
            .rows_affected();
            Ok(n)
        })
    }

    fn pool_stats(&self) -> Vec<PoolStats> {
        fn stats<DB: sqlx::Database>(name: &'static str, p: &sqlx::Pool<DB>) -> PoolStats {
            PoolStats {
                pool: name,
                size: p.size(),
                idle: p.num_idle() as u32,
                max: p.options().get_max_connections(),
            }
        }
        match &self.pools {
            Pools::Sqlite { read, write, .. } => {
                let sqlite = |name, set: &crate::sqlite_conns::SqliteConns| {
                    let (size, idle, max) = set.stats();
                    PoolStats {
                        pool: name,
                        size,
                        idle,
                        max,
                    }
                };
                vec![sqlite("read", read), sqlite("write", write)]
            }
            Pools::Postgres(pg) => vec![stats("main", pg)],
        }
    }

    fn commit_groups(&self) -> Option<(u64, u64)> {
        match &self.pools {
            Pools::Sqlite { write, .. } => Some(write.shared_commit_stats()),
            Pools::Postgres(_) => None,
        }
    }

    async fn uploads_in_progress(&self) -> Result<u64> {
        let n: i64 = with_read!(self, |p| {
            sqlx::query_scalar("SELECT COUNT(*) FROM uploads")
                .fetch_one(&mut *p)
                .await?
        });
        Ok(n.max(0) as u64)
    }

    async fn usage_per_project(&self) -> Result<Vec<(String, u64)>> {
        let rows: Vec<(String, i64)> = with_read!(self, |p| {
            sqlx::query_as("SELECT project, bytes FROM project_usage ORDER BY project")
                .fetch_all(&mut *p)
                .await?
        });
        Ok(rows
            .into_iter()
            .map(|(p, b)| (p, b.max(0) as u64))
            .collect())
    }
}
