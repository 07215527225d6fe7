//! Storage lifecycle metadata: garbage-collection queries, quotas, tag history and restore,
//! immutability rules, retention policies, run records and the storage report.
//!
//! Garbage collection never takes a global lock. Each phase lists candidates page by page
//! (keyset order) and deletes a page in one transaction whose DELETE repeats the candidate
//! condition, so a row that became needed in between is skipped. What makes that sound under
//! concurrency is the *touch rule* (migration 5): every statement that makes something depend
//! on a blob, a repository link or a manifest updates that row's `touched_at` in the same
//! transaction, and GC only deletes rows touched before its cut-off. PostgreSQL re-checks a
//! DELETE's condition on the newest version of a row it had to wait for, so either GC sees the
//! touch and skips the row, or the dependant's UPDATE finds the row gone and reports it
//! unknown. The run's progress (phase, cursor, counters) is written in the same transaction as
//! each page's deletions, so counts stay exact and an interrupted run resumes where it stopped.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sqlx::Connection as _;

use crate::sql::{Pools, SqlStore};
use crate::{Result, now_ms};

/// One recorded tag move. `digest` is `None` when the tag was removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TagHistoryEntry {
    pub id: i64,
    pub tag: String,
    pub digest: Option<String>,
    pub previous_digest: Option<String>,
    pub changed_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreOutcome {
    Restored {
        previous: Option<String>,
    },
    /// The manifest is neither live nor in the deleted-manifest grace period any more.
    ManifestGone,
    /// The manifest is known but what it references is no longer in the repository.
    MissingReferences(Vec<String>),
    /// The tag is immutable and points at another manifest.
    Immutable,
}

/// A project's storage usage (distinct blobs its repositories link) and limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProjectUsage {
    pub project: String,
    pub bytes: u64,
    pub blobs: u64,
    pub limit: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImmutabilityRule {
    pub id: i64,
    pub project: String,
    /// Glob over the repository path inside the project.
    pub repositories: String,
    /// Glob over tag names.
    pub tags: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionPolicyRecord {
    pub project: String,
    /// JSON document (see `kura-registry`'s retention module).
    pub policy: String,
    pub schedule: Option<String>,
    pub updated_at: i64,
}

/// A manifest as retention judges it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionArtifact {
    pub digest: String,
    pub pushed_at: i64,
    pub last_pulled_at: Option<i64>,
    pub tags: Vec<String>,
    pub subject: Option<String>,
    /// Referenced by another manifest of the repository (an index child).
    pub is_child: bool,
}

/// A GC or retention run as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRecord {
    pub id: i64,
    pub kind: String,
    pub project: Option<String>,
    pub trigger: String,
    pub dry_run: bool,
    /// JSON parameters, fixed when the run starts (a resumed run uses the same cut-offs).
    pub params: String,
    /// `running`, `succeeded` or `failed`.
    pub status: String,
    pub phase: String,
    pub cursor: String,
    /// JSON counters / findings.
    pub result: String,
    pub error: Option<String>,
    pub started_at: i64,
    pub heartbeat_at: i64,
    pub finished_at: Option<i64>,
}

/// Progress written together with a batch of deletions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunProgress {
    pub run_id: i64,
    pub phase: String,
    pub cursor: String,
    pub result: String,
}

/// The cut-offs of one GC run, fixed at its start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcParams {
    /// When the run started (epoch ms).
    pub run_start: i64,
    /// Rows touched at or after this are young and never collected (run_start - grace).
    pub touched_before: i64,
    /// Deleted manifests deleted at or before this are purged (run_start - retention); ones
    /// deleted during this run are kept regardless.
    pub deleted_before: i64,
    /// Also delete untagged manifests that nothing references.
    pub delete_untagged: bool,
}

/// (repository id, digest): a manifest, deleted manifest or repository link.
pub type RepoDigest = (i64, String);

/// Computes a run's progress from what a batch actually deleted; called inside the batch's
/// transaction, so the counters committed with the deletions are exact.
pub type ProgressFn<'a, T> = dyn Fn(&[T]) -> RunProgress + Send + Sync + 'a;

/// A blob GC may remove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobCandidate {
    pub digest: String,
    pub size: u64,
    pub storage_key: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProjectStorage {
    pub project: String,
    /// Distinct blobs (what the quota counts).
    pub stored_bytes: u64,
    pub blobs: u64,
    /// Sum over repositories (a blob linked by two repositories counts twice).
    pub logical_bytes: u64,
    pub limit: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RepositoryStorage {
    pub repository: String,
    pub bytes: u64,
    pub blobs: u64,
    pub manifests: u64,
    pub tags: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StorageTotals {
    /// Bytes of distinct blobs in storage.
    pub stored_bytes: u64,
    pub blobs: u64,
    /// Bytes as repositories see them, summed (before deduplication).
    pub logical_bytes: u64,
    pub repositories: u64,
    pub manifests: u64,
    pub deleted_manifests: u64,
    pub pending_deletions: u64,
}

#[async_trait]
pub trait LifecycleStore: Send + Sync + 'static {
    // --- tag history --------------------------------------------------------------------
    /// Newest first.
    async fn tag_history(
        &self,
        repository_id: i64,
        tag: &str,
        limit: u32,
    ) -> Result<Vec<TagHistoryEntry>>;
    /// Points `tag` at `digest`, bringing the manifest back from the deleted-manifest area
    /// when needed.
    async fn restore_tag(
        &self,
        repository_id: i64,
        tag: &str,
        digest: &str,
        immutable: bool,
    ) -> Result<RestoreOutcome>;

    /// Who keeps a manifest: the live manifests referencing it (index parents) and its tags.
    async fn manifest_usage(
        &self,
        repository_id: i64,
        digest: &str,
    ) -> Result<(Vec<String>, Vec<String>)>;

    // --- quotas ---------------------------------------------------------------------------
    /// A project's storage limit (`None`: unlimited or no such project). One indexed read, so
    /// the push path pays nothing more for quotas unless a limit is set.
    async fn storage_limit(&self, project: &str) -> Result<Option<u64>>;
    /// Whether a repository of `project` already links the blob (a push of it adds no usage).
    async fn project_has_blob(&self, project: &str, digest: &str) -> Result<bool>;
    /// Sets or clears a project's storage limit; false when the project does not exist.
    async fn set_storage_limit(&self, project: &str, limit: Option<u64>) -> Result<bool>;
    async fn project_usage(&self, project: &str) -> Result<ProjectUsage>;
    /// The usage computed from scratch from the links (bytes, blobs): what the maintained
    /// counters must always equal.
    async fn recompute_project_usage(&self, project: &str) -> Result<(u64, u64)>;

    // --- immutability ---------------------------------------------------------------------
    async fn immutability_rules(&self, project: &str) -> Result<Vec<ImmutabilityRule>>;
    async fn add_immutability_rule(
        &self,
        project: &str,
        repositories: &str,
        tags: &str,
    ) -> Result<i64>;
    async fn delete_immutability_rule(&self, project: &str, id: i64) -> Result<bool>;

    // --- retention ------------------------------------------------------------------------
    async fn retention_policy(&self, project: &str) -> Result<Option<RetentionPolicyRecord>>;
    async fn put_retention_policy(
        &self,
        project: &str,
        policy: &str,
        schedule: Option<&str>,
    ) -> Result<()>;
    async fn delete_retention_policy(&self, project: &str) -> Result<bool>;
    async fn scheduled_retention_policies(&self) -> Result<Vec<RetentionPolicyRecord>>;
    async fn retention_artifacts(&self, repository_id: i64) -> Result<Vec<RetentionArtifact>>;
    /// Every repository of a project (with or without content), sorted.
    async fn project_repository_names(&self, project: &str) -> Result<Vec<(i64, String)>>;

    // --- runs -----------------------------------------------------------------------------
    #[allow(clippy::too_many_arguments)]
    async fn create_run(
        &self,
        kind: &str,
        project: Option<&str>,
        trigger: &str,
        dry_run: bool,
        params: &str,
        phase: &str,
        result: &str,
    ) -> Result<i64>;
    async fn run(&self, id: i64) -> Result<Option<RunRecord>>;
    /// Newest first.
    async fn list_runs(
        &self,
        kind: &str,
        project: Option<&str>,
        limit: u32,
    ) -> Result<Vec<RunRecord>>;
    /// The run of this kind (and project) still marked running, if any.
    async fn running_run(&self, kind: &str, project: Option<&str>) -> Result<Option<RunRecord>>;
    /// Takes over a run whose heartbeat is still `seen_heartbeat` (compare-and-set), so
    /// two replicas never resume the same interrupted run.
    async fn claim_run(&self, id: i64, seen_heartbeat: i64) -> Result<bool>;
    async fn save_run_progress(&self, progress: &RunProgress) -> Result<()>;
    async fn finish_run(
        &self,
        id: i64,
        status: &str,
        result: &str,
        error: Option<&str>,
    ) -> Result<()>;

    // --- garbage collection ---------------------------------------------------------------
    async fn gc_trash_candidates(
        &self,
        p: &GcParams,
        after: Option<&RepoDigest>,
        limit: u32,
    ) -> Result<Vec<RepoDigest>>;
    async fn gc_purge_trash(
        &self,
        p: &GcParams,
        batch: &[RepoDigest],
        progress: &ProgressFn<'_, RepoDigest>,
    ) -> Result<Vec<RepoDigest>>;
    async fn gc_manifest_candidates(
        &self,
        p: &GcParams,
        after: Option<&RepoDigest>,
        limit: u32,
    ) -> Result<Vec<RepoDigest>>;
    /// The name of a repository by id (for announcing what GC removed).
    async fn repository_name(&self, id: i64) -> Result<Option<String>>;
    async fn gc_delete_manifests(
        &self,
        p: &GcParams,
        batch: &[RepoDigest],
        progress: &ProgressFn<'_, RepoDigest>,
    ) -> Result<Vec<RepoDigest>>;
    async fn gc_link_candidates(
        &self,
        p: &GcParams,
        after: Option<&RepoDigest>,
        limit: u32,
    ) -> Result<Vec<RepoDigest>>;
    async fn gc_delete_links(
        &self,
        p: &GcParams,
        batch: &[RepoDigest],
        progress: &ProgressFn<'_, RepoDigest>,
    ) -> Result<Vec<RepoDigest>>;
    /// Blobs no link needs. `assume_links_swept`: false for dry runs, where links the link
    /// phase would remove are still present and must be looked through.
    async fn gc_blob_candidates(
        &self,
        p: &GcParams,
        after: Option<&str>,
        limit: u32,
        assume_links_swept: bool,
    ) -> Result<Vec<BlobCandidate>>;
    /// Deletes blob rows still unneeded and queues their bytes for deletion; returns them.
    async fn gc_delete_blobs(
        &self,
        p: &GcParams,
        batch: &[BlobCandidate],
        progress: &ProgressFn<'_, BlobCandidate>,
    ) -> Result<Vec<BlobCandidate>>;
    async fn pending_blob_deletions(&self, limit: u32) -> Result<Vec<(String, u64)>>;
    async fn finish_blob_deletions(&self, keys: &[String]) -> Result<()>;
    /// The keys metadata knows nothing about: no blob, no queued deletion, no upload in
    /// progress that the key was committed from. Each key comes with the upload id the
    /// storage backend says it was committed from (`kura_storage::upload_id_of_key`).
    async fn unknown_storage_keys(&self, keys: &[(String, Option<String>)]) -> Result<Vec<String>>;

    // --- storage report -------------------------------------------------------------------
    async fn storage_totals(&self) -> Result<StorageTotals>;
    async fn storage_by_project(&self) -> Result<Vec<ProjectStorage>>;
    async fn storage_by_repository(&self, project: &str) -> Result<Vec<RepositoryStorage>>;

    /// A setting's value (schedule bookkeeping).
    async fn schedule_mark(&self, key: &str) -> Result<Option<String>>;
    /// Sets a setting only if it still holds `expected` (`None`: absent); true when set.
    async fn compare_and_set_setting(
        &self,
        key: &str,
        expected: Option<&str>,
        value: &str,
    ) -> Result<bool>;
}

// --- GC conditions, shared by candidate listings and the deletes that re-check them --------
// Values are integers formatted into the SQL (never user text).

/// A deleted manifest `d` that still protects what it references.
fn trash_protects(p: &GcParams, d: &str) -> String {
    format!(
        "({d}.deleted_at > {} OR {d}.deleted_at >= {})",
        p.deleted_before, p.run_start
    )
}

/// Manifest `m` may be moved to the deleted-manifest area.
fn manifest_collectable(p: &GcParams, m: &str) -> String {
    let untagged = if p.delete_untagged { "1=1" } else { "1=0" };
    format!(
        "{m}.touched_at < {cut} \
         AND NOT EXISTS (SELECT 1 FROM tags t WHERE t.repository_id = {m}.repository_id \
             AND t.digest = {m}.digest) \
         AND NOT EXISTS (SELECT 1 FROM manifest_references r \
             WHERE r.repository_id = {m}.repository_id AND r.child_digest = {m}.digest) \
         AND NOT EXISTS (SELECT 1 FROM deleted_manifest_references dr \
             JOIN deleted_manifests d ON d.repository_id = dr.repository_id \
                 AND d.digest = dr.manifest_digest \
             WHERE dr.repository_id = {m}.repository_id AND dr.child_digest = {m}.digest \
                 AND {protects_d}) \
         AND (({m}.subject_digest IS NULL AND {untagged}) \
             OR ({m}.subject_digest IS NOT NULL \
                 AND NOT EXISTS (SELECT 1 FROM manifests s \
                     WHERE s.repository_id = {m}.repository_id AND s.digest = {m}.subject_digest) \
                 AND NOT EXISTS (SELECT 1 FROM deleted_manifests ds \
                     WHERE ds.repository_id = {m}.repository_id \
                         AND ds.digest = {m}.subject_digest AND {protects_ds})))",
        cut = p.touched_before,
        protects_d = trash_protects(p, "d"),
        protects_ds = trash_protects(p, "ds"),
    )
}

/// Repository link `rb` may be removed: old, and no manifest of its repository (live or
/// protected deleted) references the blob.
fn link_collectable(p: &GcParams, rb: &str) -> String {
    format!(
        "{rb}.touched_at < {cut} \
         AND NOT EXISTS (SELECT 1 FROM manifest_references r \
             WHERE r.repository_id = {rb}.repository_id AND r.child_digest = {rb}.digest) \
         AND NOT EXISTS (SELECT 1 FROM deleted_manifest_references dr \
             JOIN deleted_manifests d ON d.repository_id = dr.repository_id \
                 AND d.digest = dr.manifest_digest \
             WHERE dr.repository_id = {rb}.repository_id AND dr.child_digest = {rb}.digest \
                 AND {protects})",
        cut = p.touched_before,
        protects = trash_protects(p, "d"),
    )
}

/// Blob `b` may be removed: old and linked nowhere (or, for dry runs, linked only by links
/// the link phase would remove).
fn blob_collectable(p: &GcParams, b: &str, assume_links_swept: bool) -> String {
    if assume_links_swept {
        format!(
            "{b}.touched_at < {} AND NOT EXISTS \
             (SELECT 1 FROM repository_blobs rb WHERE rb.digest = {b}.digest)",
            p.touched_before
        )
    } else {
        format!(
            "{b}.touched_at < {} AND NOT EXISTS \
             (SELECT 1 FROM repository_blobs rb WHERE rb.digest = {b}.digest AND NOT ({}))",
            p.touched_before,
            link_collectable(p, "rb")
        )
    }
}

/// Writes a run's progress inside the transaction `$tx`.
macro_rules! save_progress {
    ($tx:ident, $progress:expr) => {{
        sqlx::query(
            "UPDATE lifecycle_runs SET phase = $2, cursor = $3, result = $4, heartbeat_at = $5 \
             WHERE id = $1",
        )
        .bind($progress.run_id)
        .bind(&$progress.phase)
        .bind(&$progress.cursor)
        .bind(&$progress.result)
        .bind(now_ms())
        .execute(&mut *$tx)
        .await?;
    }};
}

type RunRow = (
    i64,
    String,
    Option<String>,
    String,
    bool,
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    i64,
    i64,
    Option<i64>,
);
const RUN_COLUMNS: &str = "id, kind, project, trigger, dry_run, params, status, phase, cursor, \
                           result, error, started_at, heartbeat_at, finished_at";

fn run_from_row(r: RunRow) -> RunRecord {
    RunRecord {
        id: r.0,
        kind: r.1,
        project: r.2,
        trigger: r.3,
        dry_run: r.4,
        params: r.5,
        status: r.6,
        phase: r.7,
        cursor: r.8,
        result: r.9,
        error: r.10,
        started_at: r.11,
        heartbeat_at: r.12,
        finished_at: r.13,
    }
}

impl SqlStore {
    fn is_postgres(&self) -> bool {
        matches!(self.pools, Pools::Postgres(_))
    }

    /// One page of (repository id, digest) rows of `table` (aliased `alias`) matching `cond`,
    /// after the keyset cursor `after`.
    async fn keyset_candidates(
        &self,
        table: &str,
        alias: &str,
        cond: String,
        after: Option<&RepoDigest>,
        limit: u32,
    ) -> Result<Vec<RepoDigest>> {
        let (ar, ad) = cursor_after(after);
        let sql = format!(
            "SELECT {a}.repository_id, {a}.digest FROM {table} {a} \
             WHERE ({a}.repository_id > $1 OR ({a}.repository_id = $1 AND {a}.digest > $2)) \
             AND {cond} ORDER BY {a}.repository_id, {a}.digest LIMIT $3",
            a = alias
        );
        with_read!(self, |pool| {
            Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(ar)
                .bind(ad)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?)
        })
    }

    /// Runs `sql` (a DELETE taking `$1` repository id, `$2` digest and re-checking its
    /// condition) for each row of `batch` in one transaction, with the run's progress.
    async fn delete_each(
        &self,
        sql: String,
        batch: &[RepoDigest],
        progress: &ProgressFn<'_, RepoDigest>,
    ) -> Result<Vec<RepoDigest>> {
        with_write!(self, |pool| {
            let mut tx = pool.begin().await?;
            let mut deleted = Vec::new();
            for (repo, digest) in batch {
                let n = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                    .bind(repo)
                    .bind(digest)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if n > 0 {
                    deleted.push((*repo, digest.clone()));
                }
            }
            let pr = progress(&deleted);
            save_progress!(tx, pr);
            tx.commit().await?;
            Ok(deleted)
        })
    }

    /// A subquery yielding the strings of the JSON array bound as `$1`.
    fn json_list(&self) -> &'static str {
        if self.is_postgres() {
            "SELECT json_array_elements_text($1::json)"
        } else {
            "SELECT value FROM json_each($1)"
        }
    }
}

fn cursor_after(after: Option<&RepoDigest>) -> (i64, String) {
    after
        .map(|(r, d)| (*r, d.clone()))
        .unwrap_or((i64::MIN, String::new()))
}

#[async_trait]
impl LifecycleStore for SqlStore {
    async fn tag_history(
        &self,
        repository_id: i64,
        tag: &str,
        limit: u32,
    ) -> Result<Vec<TagHistoryEntry>> {
        type Row = (i64, String, Option<String>, Option<String>, i64);
        let rows: Vec<Row> = with_read!(self, |p| {
            sqlx::query_as(
                "SELECT id, tag, digest, previous_digest, changed_at FROM tag_history \
                 WHERE repository_id = $1 AND tag = $2 ORDER BY id DESC LIMIT $3",
            )
            .bind(repository_id)
            .bind(tag)
            .bind(i64::from(limit))
            .fetch_all(&mut *p)
            .await?
        });
        Ok(rows
            .into_iter()
            .map(|r| TagHistoryEntry {
                id: r.0,
                tag: r.1,
                digest: r.2,
                previous_digest: r.3,
                changed_at: r.4,
            })
            .collect())
    }

    async fn restore_tag(
        &self,
        repository_id: i64,
        tag: &str,
        digest: &str,
        immutable: bool,
    ) -> Result<RestoreOutcome> {
        let now = now_ms();
        with_write!(self, |p| {
            let mut tx = p.begin().await?;
            let previous: Option<String> = sqlx::query_scalar(
                "SELECT digest FROM tags WHERE repository_id = $1 AND name = $2",
            )
            .bind(repository_id)
            .bind(tag)
            .fetch_optional(&mut *tx)
            .await?;
            if immutable && previous.as_deref().is_some_and(|d| d != digest) {
                tx.rollback().await?;
                return Ok(RestoreOutcome::Immutable);
            }
            let live = sqlx::query(
                "UPDATE manifests SET touched_at = $3 WHERE repository_id = $1 AND digest = $2",
            )
            .bind(repository_id)
            .bind(digest)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                > 0;
            if !live {
                type Row = (
                    String,
                    i64,
                    Vec<u8>,
                    Option<String>,
                    Option<String>,
                    Option<String>,
                    i64,
                );
                let row: Option<Row> = sqlx::query_as(
                    "SELECT media_type, size, payload, artifact_type, subject_digest, \
                     annotations, created_at FROM deleted_manifests \
                     WHERE repository_id = $1 AND digest = $2",
                )
                .bind(repository_id)
                .bind(digest)
                .fetch_optional(&mut *tx)
                .await?;
                let Some(r) = row else {
                    tx.rollback().await?;
                    return Ok(RestoreOutcome::ManifestGone);
                };
                let refs: Vec<(String, String)> = sqlx::query_as(
                    "SELECT child_digest, child_kind FROM deleted_manifest_references \
                     WHERE repository_id = $1 AND manifest_digest = $2",
                )
                .bind(repository_id)
                .bind(digest)
                .fetch_all(&mut *tx)
                .await?;
                let mut missing = Vec::new();
                for (child, kind) in &refs {
                    let sql = if kind == "blob" {
                        "UPDATE repository_blobs SET touched_at = $3 \
                         WHERE repository_id = $1 AND digest = $2"
                    } else {
                        "UPDATE manifests SET touched_at = $3 \
                         WHERE repository_id = $1 AND digest = $2"
                    };
                    let n = sqlx::query(sql)
                        .bind(repository_id)
                        .bind(child)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                    if n == 0 {
                        missing.push(child.clone());
                    }
                }
                if !missing.is_empty() {
                    tx.rollback().await?;
                    return Ok(RestoreOutcome::MissingReferences(missing));
                }
                sqlx::query(
                    "INSERT INTO manifests (repository_id, digest, media_type, size, payload, \
                     artifact_type, subject_digest, annotations, created_at, touched_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                )
                .bind(repository_id)
                .bind(digest)
                .bind(r.0)
                .bind(r.1)
                .bind(r.2)
                .bind(r.3)
                .bind(r.4)
                .bind(r.5)
                .bind(r.6)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                for (child, kind) in &refs {
                    sqlx::query(
                        "INSERT INTO manifest_references \
                         (repository_id, manifest_digest, child_digest, child_kind) \
                         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                    )
                    .bind(repository_id)
                    .bind(digest)
                    .bind(child)
                    .bind(kind)
                    .execute(&mut *tx)
                    .await?;
                }
                sqlx::query(
                    "DELETE FROM deleted_manifests WHERE repository_id = $1 AND digest = $2",
                )
                .bind(repository_id)
                .bind(digest)
                .execute(&mut *tx)
                .await?;
            }
            if previous.as_deref() != Some(digest) {
                sqlx::query(
                    "INSERT INTO tags (repository_id, name, digest, updated_at) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (repository_id, name) \
                     DO UPDATE SET digest = excluded.digest, updated_at = excluded.updated_at",
                )
                .bind(repository_id)
                .bind(tag)
                .bind(digest)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                record_tag_move!(
                    tx,
                    repository_id,
                    tag,
                    Some(digest),
                    previous.as_deref(),
                    now
                );
            }
            tx.commit().await?;
            Ok(RestoreOutcome::Restored { previous })
        })
    }

    async fn manifest_usage(
        &self,
        repository_id: i64,
        digest: &str,
    ) -> Result<(Vec<String>, Vec<String>)> {
        let parents: Vec<String> = with_read!(self, |p| {
            sqlx::query_scalar(
                "SELECT manifest_digest FROM manifest_references \
                 WHERE repository_id = $1 AND child_digest = $2 ORDER BY manifest_digest",
            )
            .bind(repository_id)
            .bind(digest)
            .fetch_all(&mut *p)
            .await?
        });
        let tags: Vec<String> = with_read!(self, |p| {
            sqlx::query_scalar(
                "SELECT name FROM tags WHERE repository_id = $1 AND digest = $2 ORDER BY name",
            )
            .bind(repository_id)
            .bind(digest)
            .fetch_all(&mut *p)
            .await?
        });
        Ok((parents, tags))
    }

    async fn storage_limit(&self, project: &str) -> Result<Option<u64>> {
        let limit: Option<Option<i64>> = with_read!(self, |p| {
            sqlx::query_scalar("SELECT storage_limit FROM projects WHERE name = $1")
                .bind(project)
                .fetch_optional(&mut *p)
                .await?
        });
        Ok(limit.flatten().map(|l| l.max(0) as u64))
    }

    async fn project_has_blob(&self, project: &str, digest: &str) -> Result<bool> {
        let found: Option<i32> = with_read!(self, |p| {
            sqlx::query_scalar("SELECT 1 FROM project_blobs WHERE project = $1 AND digest = $2")
                .bind(project)
                .bind(digest)
                .fetch_optional(&mut *p)
                .await?
        });
        Ok(found.is_some())
    }

    async fn set_storage_limit(&self, project: &str, limit: Option<u64>) -> Result<bool> {
        with_write!(self, |p| {
            let n = sqlx::query("UPDATE projects SET storage_limit = $2 WHERE name = $1")
                .bind(project)
                .bind(limit.map(|l| l.min(i64::MAX as u64) as i64))
                .execute(&mut *p)
                .await?
                .rows_affected();
            Ok(n > 0)
        })
    }

    async fn project_usage(&self, project: &str) -> Result<ProjectUsage> {
        let usage: Option<(i64, i64)> = with_read!(self, |p| {
            sqlx::query_as("SELECT bytes, blobs FROM project_usage WHERE project = $1")
                .bind(project)
                .fetch_optional(&mut *p)
                .await?
        });
        let limit: Option<Option<i64>> = with_read!(self, |p| {
            sqlx::query_scalar("SELECT storage_limit FROM projects WHERE name = $1")
                .bind(project)
                .fetch_optional(&mut *p)
                .await?
        });
        let (bytes, blobs) = usage.unwrap_or((0, 0));
        Ok(ProjectUsage {
            project: project.to_string(),
            bytes: bytes.max(0) as u64,
            blobs: blobs.max(0) as u64,
            limit: limit.flatten().map(|l| l.max(0) as u64),
        })
    }

    async fn recompute_project_usage(&self, project: &str) -> Result<(u64, u64)> {
        let row: (Option<i64>, i64) = with_read!(self, |p| {
            sqlx::query_as(
                "SELECT CAST(SUM(b.size) AS BIGINT), COUNT(*) FROM blobs b WHERE b.digest IN \
                 (SELECT rb.digest FROM repository_blobs rb \
                  JOIN repositories r ON r.id = rb.repository_id WHERE r.project = $1)",
            )
            .bind(project)
            .fetch_one(&mut *p)
            .await?
        });
        Ok((row.0.unwrap_or(0).max(0) as u64, row.1.max(0) as u64))
    }

    async fn immutability_rules(&self, project: &str) -> Result<Vec<ImmutabilityRule>> {
        let rows: Vec<(i64, String, String, String)> = with_read!(self, |p| {
            sqlx::query_as(
                "SELECT id, project, repositories, tags FROM immutability_rules \
                 WHERE project = $1 ORDER BY id",
            )
            .bind(project)
            .fetch_all(&mut *p)
            .await?
        });
        Ok(rows
            .into_iter()
            .map(|r| ImmutabilityRule {
                id: r.0,
                project: r.1,
                repositories: r.2,
                tags: r.3,
            })
            .collect())
    }

    async fn add_immutability_rule(
        &self,
        project: &str,
        repositories: &str,
        tags: &str,
    ) -> Result<i64> {
        with_write!(self, |p| {
            Ok(sqlx::query_scalar(
                "INSERT INTO immutability_rules (project, repositories, tags, created_at) \
                 VALUES ($1, $2, $3, $4) RETURNING id",
            )
            .bind(project)
            .bind(repositories)
            .bind(tags)
            .bind(now_ms())
            .fetch_one(&mut *p)
            .await?)
        })
    }

    async fn delete_immutability_rule(&self, project: &str, id: i64) -> Result<bool> {
        with_write!(self, |p| {
            let n = sqlx::query("DELETE FROM immutability_rules WHERE project = $1 AND id = $2")
                .bind(project)
                .bind(id)
                .execute(&mut *p)
                .await?
                .rows_affected();
            Ok(n > 0)
        })
    }

    async fn retention_policy(&self, project: &str) -> Result<Option<RetentionPolicyRecord>> {
        let row: Option<(String, String, Option<String>, i64)> = with_read!(self, |p| {
            sqlx::query_as(
                "SELECT project, policy, schedule, updated_at FROM retention_policies \
                 WHERE project = $1",
            )
            .bind(project)
            .fetch_optional(&mut *p)
            .await?
        });
        Ok(row.map(|r| RetentionPolicyRecord {
            project: r.0,
            policy: r.1,
            schedule: r.2,
            updated_at: r.3,
        }))
    }

    async fn put_retention_policy(
        &self,
        project: &str,
        policy: &str,
        schedule: Option<&str>,
    ) -> Result<()> {
        with_write!(self, |p| {
            sqlx::query(
                "INSERT INTO retention_policies (project, policy, schedule, updated_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (project) DO UPDATE SET \
                 policy = excluded.policy, schedule = excluded.schedule, \
                 updated_at = excluded.updated_at",
            )
            .bind(project)
            .bind(policy)
            .bind(schedule)
            .bind(now_ms())
            .execute(&mut *p)
            .await?;
        });
        Ok(())
    }

    async fn delete_retention_policy(&self, project: &str) -> Result<bool> {
        with_write!(self, |p| {
            let n = sqlx::query("DELETE FROM retention_policies WHERE project = $1")
                .bind(project)
                .execute(&mut *p)
                .await?
                .rows_affected();
            Ok(n > 0)
        })
    }

    async fn scheduled_retention_policies(&self) -> Result<Vec<RetentionPolicyRecord>> {
        let rows: Vec<(String, String, Option<String>, i64)> = with_read!(self, |p| {
            sqlx::query_as(
                "SELECT project, policy, schedule, updated_at FROM retention_policies \
                 WHERE schedule IS NOT NULL ORDER BY project",
            )
            .fetch_all(&mut *p)
            .await?
        });
        Ok(rows
            .into_iter()
            .map(|r| RetentionPolicyRecord {
                project: r.0,
                policy: r.1,
                schedule: r.2,
                updated_at: r.3,
            })
            .collect())
    }

    async fn retention_artifacts(&self, repository_id: i64) -> Result<Vec<RetentionArtifact>> {
        type Row = (String, i64, Option<i64>, Option<String>, bool);
        let rows: Vec<Row> = with_read!(self, |p| {
            sqlx::query_as(
                "SELECT m.digest, m.created_at, m.last_pulled_at, m.subject_digest, \
                 EXISTS (SELECT 1 FROM manifest_references r WHERE r.repository_id = m.repository_id \
                     AND r.child_digest = m.digest) \
                 FROM manifests m WHERE m.repository_id = $1 ORDER BY m.created_at DESC, m.digest",
            )
            .bind(repository_id)
            .fetch_all(&mut *p)
            .await?
        });
        let tags: Vec<(String, String)> = with_read!(self, |p| {
            sqlx::query_as("SELECT digest, name FROM tags WHERE repository_id = $1 ORDER BY name")
                .bind(repository_id)
                .fetch_all(&mut *p)
                .await?
        });
        let mut by_digest: std::collections::HashMap<String, Vec<String>> = Default::default();
        for (d, t) in tags {
            by_digest.entry(d).or_default().push(t);
        }
        Ok(rows
            .into_iter()
            .map(|r| RetentionArtifact {
                tags: by_digest.remove(&r.0).unwrap_or_default(),
                digest: r.0,
                pushed_at: r.1,
                last_pulled_at: r.2,
                subject: r.3,
                is_child: r.4,
            })
            .collect())
    }

    async fn project_repository_names(&self, project: &str) -> Result<Vec<(i64, String)>> {
        with_read!(self, |p| {
            Ok(
                sqlx::query_as(
                    "SELECT id, name FROM repositories WHERE project = $1 ORDER BY name",
                )
                .bind(project)
                .fetch_all(&mut *p)
                .await?,
            )
        })
    }

    async fn create_run(
        &self,
        kind: &str,
        project: Option<&str>,
        trigger: &str,
        dry_run: bool,
        params: &str,
        phase: &str,
        result: &str,
    ) -> Result<i64> {
        let now = now_ms();
        with_write!(self, |p| {
            Ok(sqlx::query_scalar(
                "INSERT INTO lifecycle_runs (kind, project, trigger, dry_run, params, status, \
                 phase, cursor, result, started_at, heartbeat_at) \
                 VALUES ($1, $2, $3, $4, $5, 'running', $6, '', $7, $8, $8) RETURNING id",
            )
            .bind(kind)
            .bind(project)
            .bind(trigger)
            .bind(dry_run)
            .bind(params)
            .bind(phase)
            .bind(result)
            .bind(now)
            .fetch_one(&mut *p)
            .await?)
        })
    }

    async fn run(&self, id: i64) -> Result<Option<RunRecord>> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM lifecycle_runs WHERE id = $1");
        let row: Option<RunRow> = with_read!(self, |p| {
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(id)
                .fetch_optional(&mut *p)
                .await?
        });
        Ok(row.map(run_from_row))
    }

    async fn list_runs(
        &self,
        kind: &str,
        project: Option<&str>,
        limit: u32,
    ) -> Result<Vec<RunRecord>> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM lifecycle_runs WHERE kind = $1 \
             AND ($2 IS NULL OR project = $2) ORDER BY id DESC LIMIT $3"
        );
        let rows: Vec<RunRow> = with_read!(self, |p| {
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(kind)
                .bind(project)
                .bind(i64::from(limit))
                .fetch_all(&mut *p)
                .await?
        });
        Ok(rows.into_iter().map(run_from_row).collect())
    }

    async fn running_run(&self, kind: &str, project: Option<&str>) -> Result<Option<RunRecord>> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM lifecycle_runs WHERE kind = $1 AND status = 'running' \
             AND ($2 IS NULL OR project = $2) ORDER BY id LIMIT 1"
        );
        // Read on the write side: the caller acts on the answer (start or resume a run).
        let row: Option<RunRow> = with_write!(self, |p| {
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(kind)
                .bind(project)
                .fetch_optional(&mut *p)
                .await?
        });
        Ok(row.map(run_from_row))
    }

    async fn claim_run(&self, id: i64, seen_heartbeat: i64) -> Result<bool> {
        with_write!(self, |p| {
            let n = sqlx::query(
                "UPDATE lifecycle_runs SET heartbeat_at = $3 \
                 WHERE id = $1 AND heartbeat_at = $2 AND status = 'running'",
            )
            .bind(id)
            .bind(seen_heartbeat)
            .bind(now_ms().max(seen_heartbeat + 1))
            .execute(&mut *p)
            .await?
            .rows_affected();
            Ok(n == 1)
        })
    }

    async fn save_run_progress(&self, progress: &RunProgress) -> Result<()> {
        with_write!(self, |p| {
            let mut tx = p.begin().await?;
            save_progress!(tx, progress);
            tx.commit().await?;
        });
        Ok(())
    }

    async fn finish_run(
        &self,
        id: i64,
        status: &str,
        result: &str,
        error: Option<&str>,
    ) -> Result<()> {
        let now = now_ms();
        with_write!(self, |p| {
            sqlx::query(
                "UPDATE lifecycle_runs SET status = $2, result = $3, error = $4, \
                 finished_at = $5, heartbeat_at = $5, phase = 'done' WHERE id = $1",
            )
            .bind(id)
            .bind(status)
            .bind(result)
            .bind(error)
            .bind(now)
            .execute(&mut *p)
            .await?;
        });
        Ok(())
    }

    async fn gc_trash_candidates(
        &self,
        p: &GcParams,
        after: Option<&RepoDigest>,
        limit: u32,
    ) -> Result<Vec<RepoDigest>> {
        self.keyset_candidates(
            "deleted_manifests",
            "d",
            format!("NOT {}", trash_protects(p, "d")),
            after,
            limit,
        )
        .await
    }

    async fn gc_purge_trash(
        &self,
        p: &GcParams,
        batch: &[RepoDigest],
        progress: &ProgressFn<'_, RepoDigest>,
    ) -> Result<Vec<RepoDigest>> {
        let sql = format!(
            "DELETE FROM deleted_manifests WHERE repository_id = $1 AND digest = $2 AND NOT {}",
            trash_protects(p, "deleted_manifests")
        );
        self.delete_each(sql, batch, progress).await
    }

    async fn gc_manifest_candidates(
        &self,
        p: &GcParams,
        after: Option<&RepoDigest>,
        limit: u32,
    ) -> Result<Vec<RepoDigest>> {
        self.keyset_candidates("manifests", "m", manifest_collectable(p, "m"), after, limit)
            .await
    }

    async fn repository_name(&self, id: i64) -> Result<Option<String>> {
        with_read!(self, |p| {
            Ok(
                sqlx::query_scalar("SELECT name FROM repositories WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&mut *p)
                    .await?,
            )
        })
    }

    async fn gc_delete_manifests(
        &self,
        p: &GcParams,
        batch: &[RepoDigest],
        progress: &ProgressFn<'_, RepoDigest>,
    ) -> Result<Vec<RepoDigest>> {
        let cond = format!("AND {}", manifest_collectable(p, "manifests"));
        let now = now_ms();
        with_write!(self, |pool| {
            let mut tx = pool.begin().await?;
            let mut deleted = Vec::new();
            for (repo, digest) in batch {
                if trash_manifest!(tx, *repo, digest, now, cond) {
                    deleted.push((*repo, digest.clone()));
                }
            }
            let pr = progress(&deleted);
            save_progress!(tx, pr);
            tx.commit().await?;
            Ok(deleted)
        })
    }

    async fn gc_link_candidates(
        &self,
        p: &GcParams,
        after: Option<&RepoDigest>,
        limit: u32,
    ) -> Result<Vec<RepoDigest>> {
        self.keyset_candidates(
            "repository_blobs",
            "rb",
            link_collectable(p, "rb"),
            after,
            limit,
        )
        .await
    }

    async fn gc_delete_links(
        &self,
        p: &GcParams,
        batch: &[RepoDigest],
        progress: &ProgressFn<'_, RepoDigest>,
    ) -> Result<Vec<RepoDigest>> {
        let sql = format!(
            "DELETE FROM repository_blobs WHERE repository_id = $1 AND digest = $2 AND {}",
            link_collectable(p, "repository_blobs")
        );
        self.delete_each(sql, batch, progress).await
    }

    async fn gc_blob_candidates(
        &self,
        p: &GcParams,
        after: Option<&str>,
        limit: u32,
        assume_links_swept: bool,
    ) -> Result<Vec<BlobCandidate>> {
        let sql = format!(
            "SELECT b.digest, b.size, b.storage_key FROM blobs b WHERE b.digest > $1 AND {} \
             ORDER BY b.digest LIMIT $2",
            blob_collectable(p, "b", assume_links_swept)
        );
        let rows: Vec<(String, i64, String)> = with_read!(self, |pool| {
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(after.unwrap_or(""))
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?
        });
        Ok(rows
            .into_iter()
            .map(|r| BlobCandidate {
                digest: r.0,
                size: r.1.max(0) as u64,
                storage_key: r.2,
            })
            .collect())
    }

    async fn gc_delete_blobs(
        &self,
        p: &GcParams,
        batch: &[BlobCandidate],
        progress: &ProgressFn<'_, BlobCandidate>,
    ) -> Result<Vec<BlobCandidate>> {
        let sql = format!(
            "DELETE FROM blobs WHERE digest = $1 AND {} RETURNING size, storage_key",
            blob_collectable(p, "blobs", true)
        );
        let now = now_ms();
        with_write!(self, |pool| {
            let mut tx = pool.begin().await?;
            let mut deleted = Vec::new();
            for c in batch {
                let row: Option<(i64, String)> = sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
                    .bind(&c.digest)
                    .fetch_optional(&mut *tx)
                    .await?;
                if let Some((size, key)) = row {
                    // An inline blob's bytes went with its row.
                    if key != crate::INLINE_STORAGE_KEY {
                        sqlx::query(
                            "INSERT INTO pending_blob_deletions (storage_key, size, queued_at) \
                             VALUES ($1, $2, $3) ON CONFLICT (storage_key) DO NOTHING",
                        )
                        .bind(&key)
                        .bind(size)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    }
                    deleted.push(BlobCandidate {
                        digest: c.digest.clone(),
                        size: size.max(0) as u64,
                        storage_key: key,
                    });
                }
            }
            let pr = progress(&deleted);
            save_progress!(tx, pr);
            tx.commit().await?;
            Ok(deleted)
        })
    }

    async fn pending_blob_deletions(&self, limit: u32) -> Result<Vec<(String, u64)>> {
        let rows: Vec<(String, i64)> = with_read!(self, |p| {
            sqlx::query_as(
                "SELECT storage_key, size FROM pending_blob_deletions ORDER BY storage_key LIMIT $1",
            )
            .bind(i64::from(limit))
            .fetch_all(&mut *p)
            .await?
        });
        Ok(rows
            .into_iter()
            .map(|(k, s)| (k, s.max(0) as u64))
            .collect())
    }

    async fn finish_blob_deletions(&self, keys: &[String]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let list = serde_json::to_string(keys).unwrap_or_else(|_| "[]".into());
        let sql = format!(
            "DELETE FROM pending_blob_deletions WHERE storage_key IN ({})",
            self.json_list()
        );
        with_write!(self, |p| {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(&list)
                .execute(&mut *p)
                .await?;
        });
        Ok(())
    }

    async fn unknown_storage_keys(&self, keys: &[(String, Option<String>)]) -> Result<Vec<String>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let plain: Vec<&str> = keys.iter().map(|(k, _)| k.as_str()).collect();
        let list = serde_json::to_string(&plain).unwrap_or_else(|_| "[]".into());
        let ids: Vec<&str> = keys.iter().filter_map(|(_, id)| id.as_deref()).collect();
        let id_list = serde_json::to_string(&ids).unwrap_or_else(|_| "[]".into());
        let known_sql = format!(
            "SELECT storage_key FROM blobs WHERE storage_key IN ({l}) \
             UNION SELECT storage_key FROM pending_blob_deletions WHERE storage_key IN ({l})",
            l = self.json_list()
        );
        let uploads_sql = format!("SELECT id FROM uploads WHERE id IN ({})", self.json_list());
        // Read on the write side: the answer decides a delete, so it must not lag behind.
        // Uploads first: a commit removes the upload row and adds the blob row in one
        // transaction, so a commit landing between the two reads shows in the second.
        let live_uploads: Vec<String> = with_write!(self, |p| {
            sqlx::query_scalar(sqlx::AssertSqlSafe(uploads_sql))
                .bind(&id_list)
                .fetch_all(&mut *p)
                .await?
        });
        let known: Vec<String> = with_write!(self, |p| {
            sqlx::query_scalar(sqlx::AssertSqlSafe(known_sql))
                .bind(&list)
                .fetch_all(&mut *p)
                .await?
        });
        let known: std::collections::HashSet<String> = known.into_iter().collect();
        let live: std::collections::HashSet<String> = live_uploads.into_iter().collect();
        Ok(keys
            .iter()
            .filter(|(k, _)| !known.contains(k))
            .filter(|(_, id)| id.as_ref().is_none_or(|id| !live.contains(id)))
            .map(|(k, _)| k.clone())
            .collect())
    }

    async fn storage_totals(&self) -> Result<StorageTotals> {
        type Row = (Option<i64>, i64, Option<i64>, i64, i64, i64, i64);
        let r: Row = with_read!(self, |p| {
            sqlx::query_as(
                "SELECT (SELECT CAST(SUM(size) AS BIGINT) FROM blobs), (SELECT COUNT(*) FROM blobs), \
                 (SELECT CAST(SUM(b.size) AS BIGINT) FROM repository_blobs rb \
                     JOIN blobs b ON b.digest = rb.digest), \
                 (SELECT COUNT(*) FROM repositories), (SELECT COUNT(*) FROM manifests), \
                 (SELECT COUNT(*) FROM deleted_manifests), \
                 (SELECT COUNT(*) FROM pending_blob_deletions)",
            )
            .fetch_one(&mut *p)
            .await?
        });
        let u = |v: i64| v.max(0) as u64;
        Ok(StorageTotals {
            stored_bytes: u(r.0.unwrap_or(0)),
            blobs: u(r.1),
            logical_bytes: u(r.2.unwrap_or(0)),
            repositories: u(r.3),
            manifests: u(r.4),
            deleted_manifests: u(r.5),
            pending_deletions: u(r.6),
        })
    }

    async fn storage_by_project(&self) -> Result<Vec<ProjectStorage>> {
        type Row = (String, i64, i64, Option<i64>, Option<i64>);
        let rows: Vec<Row> = with_read!(self, |p| {
            sqlx::query_as(
                "SELECT u.project, u.bytes, u.blobs, \
                 (SELECT CAST(SUM(b.size) AS BIGINT) FROM repository_blobs rb \
                     JOIN repositories r ON r.id = rb.repository_id \
                     JOIN blobs b ON b.digest = rb.digest WHERE r.project = u.project), \
                 (SELECT storage_limit FROM projects pr WHERE pr.name = u.project) \
                 FROM project_usage u WHERE u.blobs > 0 ORDER BY u.project",
            )
            .fetch_all(&mut *p)
            .await?
        });
        let u = |v: i64| v.max(0) as u64;
        Ok(rows
            .into_iter()
            .map(|r| ProjectStorage {
                project: r.0,
                stored_bytes: u(r.1),
                blobs: u(r.2),
                logical_bytes: u(r.3.unwrap_or(0)),
                limit: r.4.map(u),
            })
            .collect())
    }

    async fn storage_by_repository(&self, project: &str) -> Result<Vec<RepositoryStorage>> {
        type Row = (String, Option<i64>, i64, i64, i64);
        let rows: Vec<Row> = with_read!(self, |p| {
            sqlx::query_as(
                "SELECT r.name, \
                 (SELECT CAST(SUM(b.size) AS BIGINT) FROM repository_blobs rb \
                     JOIN blobs b ON b.digest = rb.digest WHERE rb.repository_id = r.id), \
                 (SELECT COUNT(*) FROM repository_blobs rb WHERE rb.repository_id = r.id), \
                 (SELECT COUNT(*) FROM manifests m WHERE m.repository_id = r.id), \
                 (SELECT COUNT(*) FROM tags t WHERE t.repository_id = r.id) \
                 FROM repositories r WHERE r.project = $1 ORDER BY r.name",
            )
            .bind(project)
            .fetch_all(&mut *p)
            .await?
        });
        let u = |v: i64| v.max(0) as u64;
        Ok(rows
            .into_iter()
            .filter(|r| r.2 > 0 || r.3 > 0)
            .map(|r| RepositoryStorage {
                repository: r.0,
                bytes: u(r.1.unwrap_or(0)),
                blobs: u(r.2),
                manifests: u(r.3),
                tags: u(r.4),
            })
            .collect())
    }

    async fn schedule_mark(&self, key: &str) -> Result<Option<String>> {
        with_write!(self, |p| {
            Ok(
                sqlx::query_scalar("SELECT value FROM settings WHERE key = $1")
                    .bind(key)
                    .fetch_optional(&mut *p)
                    .await?,
            )
        })
    }

    async fn compare_and_set_setting(
        &self,
        key: &str,
        expected: Option<&str>,
        value: &str,
    ) -> Result<bool> {
        with_write!(self, |p| {
            let n = match expected {
                Some(old) => {
                    sqlx::query("UPDATE settings SET value = $3 WHERE key = $1 AND value = $2")
                        .bind(key)
                        .bind(old)
                        .bind(value)
                        .execute(&mut *p)
                        .await?
                        .rows_affected()
                }
                None => sqlx::query(
                    "INSERT INTO settings (key, value) VALUES ($1, $2) \
                     ON CONFLICT (key) DO NOTHING",
                )
                .bind(key)
                .bind(value)
                .execute(&mut *p)
                .await?
                .rows_affected(),
            };
            Ok(n == 1)
        })
    }
}
