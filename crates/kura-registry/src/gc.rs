//! Online garbage collection.
//!
//! A run goes through phases, each a loop of bounded batches (see `kura_metadata::lifecycle`
//! for why no lock is needed):
//!
//! 1. `pending`: bytes an earlier run removed from metadata but did not get to delete.
//! 2. `trash`: deleted manifests older than the retention period are purged for good.
//! 3. `manifests`: referrers whose subject is gone (accessories follow their subject) and,
//!    with `delete_untagged`, untagged manifests nothing references, move to the
//!    deleted-manifest area (where they stay restorable for the retention period).
//! 4. `links`: repository links to blobs no manifest of that repository references.
//! 5. `blobs`: blobs no repository links; rows are deleted and their storage keys queued in
//!    the same transaction, then the bytes are deleted and the queue entries removed.
//! 6. `orphans`: objects in blob storage that metadata knows nothing about (a process killed
//!    between a storage commit and the metadata commit leaves them).
//!
//! Nothing younger than the grace period is touched in any phase. Each batch commits its
//! deletions together with the run's counters and cursor, so the counts are exact and a run
//! that dies resumes from its last batch (by the next request or schedule tick once its
//! heartbeat is stale). One run at a time, across all replicas.

use std::time::Duration;

use futures_util::StreamExt;
use kura_metadata::{
    BlobCandidate, GcParams, INLINE_STORAGE_KEY, RepoDigest, RunProgress, RunRecord, now_ms,
};
use kura_oci::ErrorCode;
use serde::{Deserialize, Serialize};

use crate::{DeleteCause, Registry, RegistryError, RegistryEvent, Result};

pub const KIND: &str = "gc";
const PHASES: &[&str] = &["pending", "trash", "manifests", "links", "blobs", "orphans"];
/// Digests listed in a run's result (dry runs show what would go).
const SAMPLE: usize = 100;

/// What to run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GcRequest {
    #[serde(default)]
    pub dry_run: bool,
    /// Defaults to the configuration's `delete_untagged`.
    #[serde(default)]
    pub delete_untagged: Option<bool>,
    /// Override of the grace period, in seconds (tests, emergencies).
    #[serde(default)]
    pub grace_seconds: Option<u64>,
    /// Override of the deleted-manifest retention, in seconds.
    #[serde(default)]
    pub deleted_manifest_retention_seconds: Option<u64>,
    /// Also look for orphaned objects in blob storage (default true).
    #[serde(default)]
    pub skip_orphans: bool,
}

/// The parameters a run was started with (stored, so a resumed run keeps its cut-offs).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct RunParams {
    gc: GcParams,
    dry_run: bool,
    orphans: bool,
}

/// Counters of a run. For dry runs they say what *would* be removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcResult {
    pub deleted_manifests_purged: u64,
    pub manifests_deleted: u64,
    pub links_deleted: u64,
    pub blobs_deleted: u64,
    pub bytes_deleted: u64,
    pub orphans_deleted: u64,
    pub orphan_bytes_deleted: u64,
    /// Deletions left over by an earlier run and completed by this one.
    pub pending_completed: u64,
    /// Storage deletes that failed (retried by the next run).
    pub storage_errors: u64,
    /// Up to 100 blob digests removed (or, for dry runs, that would be).
    #[serde(default)]
    pub blob_sample: Vec<String>,
    /// Up to 100 `repository-id@digest` manifests removed (or that would be).
    #[serde(default)]
    pub manifest_sample: Vec<String>,
    /// Wall time spent in each phase, milliseconds (where a run spends its time).
    #[serde(default)]
    pub phase_ms: std::collections::BTreeMap<String, u64>,
}

fn encode_cursor(c: &RepoDigest) -> String {
    format!("{} {}", c.0, c.1)
}

fn decode_cursor(s: &str) -> Option<RepoDigest> {
    let (r, d) = s.split_once(' ')?;
    Some((r.parse().ok()?, d.to_string()))
}

fn conflict(msg: impl Into<String>) -> RegistryError {
    RegistryError::new(ErrorCode::Denied, msg).with_status(409)
}

impl Registry {
    /// Starts a GC run in the background and returns its id; resumes a crashed run first
    /// if there is one (its id is returned then). 409 while another run is alive.
    pub async fn start_gc(&self, req: GcRequest, trigger: &str) -> Result<i64> {
        let run = self.claim_gc_run(&req, trigger).await?;
        let id = run.id;
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(e) = this.drive_gc(run).await {
                tracing::error!(run = id, error = %e, "garbage collection failed");
            }
        });
        Ok(id)
    }

    /// Runs GC to completion in this task and returns the finished run.
    pub async fn run_gc(&self, req: GcRequest, trigger: &str) -> Result<RunRecord> {
        let run = self.claim_gc_run(&req, trigger).await?;
        let id = run.id;
        self.drive_gc(run).await?;
        self.inner
            .meta
            .run(id)
            .await?
            .ok_or_else(|| RegistryError::internal("run record vanished"))
    }

    pub async fn gc_runs(&self, limit: u32) -> Result<Vec<RunRecord>> {
        Ok(self.inner.meta.list_runs(KIND, None, limit).await?)
    }

    pub async fn gc_run_record(&self, id: i64) -> Result<Option<RunRecord>> {
        Ok(self.inner.meta.run(id).await?.filter(|r| r.kind == KIND))
    }

    /// Resumes a run whose process died (heartbeat older than `stale_after`), if any.
    pub async fn resume_stale_gc(&self) -> Result<Option<i64>> {
        let Some(run) = self.inner.meta.running_run(KIND, None).await? else {
            return Ok(None);
        };
        if !self.is_stale(&run) || !self.inner.meta.claim_run(run.id, run.heartbeat_at).await? {
            return Ok(None);
        }
        tracing::info!(run = run.id, phase = %run.phase, "resuming interrupted garbage collection");
        let id = run.id;
        let run = self.inner.meta.run(id).await?.unwrap_or(run);
        self.drive_gc(run).await?;
        Ok(Some(id))
    }

    fn is_stale(&self, run: &RunRecord) -> bool {
        now_ms() - run.heartbeat_at > self.inner.config.gc.stale_after.as_millis() as i64
    }

    /// Returns the run to drive: a stale one taken over, or a new one. Refuses while a live
    /// run exists.
    async fn claim_gc_run(&self, req: &GcRequest, trigger: &str) -> Result<RunRecord> {
        if let Some(run) = self.inner.meta.running_run(KIND, None).await? {
            if self.is_stale(&run) && self.inner.meta.claim_run(run.id, run.heartbeat_at).await? {
                tracing::info!(
                    run = run.id,
                    "taking over an interrupted garbage collection"
                );
                return Ok(self.inner.meta.run(run.id).await?.unwrap_or(run));
            }
            return Err(conflict(format!(
                "garbage collection run {} is in progress (phase {})",
                run.id, run.phase
            )));
        }
        let cfg = &self.inner.config.gc;
        let start = now_ms();
        let grace = req
            .grace_seconds
            .map(Duration::from_secs)
            .unwrap_or(cfg.grace);
        let retention = req
            .deleted_manifest_retention_seconds
            .map(Duration::from_secs)
            .unwrap_or(cfg.deleted_manifest_retention);
        let params = RunParams {
            gc: GcParams {
                run_start: start,
                touched_before: start - grace.as_millis() as i64,
                deleted_before: start - retention.as_millis() as i64,
                delete_untagged: req.delete_untagged.unwrap_or(cfg.delete_untagged),
            },
            dry_run: req.dry_run,
            orphans: !req.skip_orphans,
        };
        let params_json = serde_json::to_string(&params).map_err(RegistryError::internal)?;
        let result =
            serde_json::to_string(&GcResult::default()).map_err(RegistryError::internal)?;
        let id = self
            .inner
            .meta
            .create_run(
                KIND,
                None,
                trigger,
                req.dry_run,
                &params_json,
                PHASES[0],
                &result,
            )
            .await?;
        // Two replicas may have created runs at once: the lowest id wins, the other yields.
        if let Some(first) = self.inner.meta.running_run(KIND, None).await?
            && first.id != id
        {
            self.inner
                .meta
                .finish_run(id, "cancelled", &result, Some("another run started first"))
                .await?;
            return Err(conflict(format!(
                "garbage collection run {} is in progress",
                first.id
            )));
        }
        self.inner
            .meta
            .run(id)
            .await?
            .ok_or_else(|| RegistryError::internal("run record vanished"))
    }

    /// Drives a claimed run from its recorded phase and cursor to the end.
    async fn drive_gc(&self, run: RunRecord) -> Result<()> {
        let params: RunParams =
            serde_json::from_str(&run.params).map_err(RegistryError::internal)?;
        let mut result: GcResult = serde_json::from_str(&run.result).unwrap_or_default();
        let start_phase = PHASES.iter().position(|p| *p == run.phase).unwrap_or(0);
        let mut cursor = run.cursor.clone();
        let outcome: Result<()> = async {
            if start_phase > 0 {
                // Resuming: first finish the deletions the interrupted batch had queued.
                let mut none = String::new();
                self.gc_phase(run.id, PHASES[0], &params, &mut none, &mut result)
                    .await?;
            }
            for phase in &PHASES[start_phase..] {
                let started = std::time::Instant::now();
                self.gc_phase(run.id, phase, &params, &mut cursor, &mut result)
                    .await?;
                *result.phase_ms.entry(phase.to_string()).or_default() +=
                    started.elapsed().as_millis() as u64;
                cursor.clear();
            }
            Ok(())
        }
        .await;
        let result_json = serde_json::to_string(&result).map_err(RegistryError::internal)?;
        match outcome {
            Ok(()) => {
                self.inner
                    .meta
                    .finish_run(run.id, "succeeded", &result_json, None)
                    .await?;
                tracing::info!(
                    run = run.id,
                    dry_run = params.dry_run,
                    blobs = result.blobs_deleted,
                    bytes = result.bytes_deleted,
                    manifests = result.manifests_deleted,
                    orphans = result.orphans_deleted,
                    "garbage collection finished"
                );
                self.emit(RegistryEvent::GarbageCollected {
                    run_id: run.id,
                    dry_run: params.dry_run,
                    blobs: result.blobs_deleted + result.orphans_deleted,
                    bytes: result.bytes_deleted + result.orphan_bytes_deleted,
                    manifests: result.manifests_deleted,
                });
                Ok(())
            }
            Err(e) => {
                let msg = e.to_string();
                let _ = self
                    .inner
                    .meta
                    .finish_run(run.id, "failed", &result_json, Some(&msg))
                    .await;
                Err(e)
            }
        }
    }

    /// Announces manifests GC moved to the deleted area (untagged ones, referrers whose
    /// subject is gone), so audit and webhooks see them like any other deletion.
    async fn announce_gc_deletions(&self, deleted: &[(i64, String)]) {
        let mut names: std::collections::HashMap<i64, Option<String>> = Default::default();
        for (rid, digest) in deleted {
            if !names.contains_key(rid) {
                let name = self
                    .inner
                    .meta
                    .repository_name(*rid)
                    .await
                    .unwrap_or_default();
                names.insert(*rid, name);
            }
            if let Some(Some(repository)) = names.get(rid) {
                self.emit(RegistryEvent::ManifestDeleted {
                    repository: repository.clone(),
                    digest: digest.clone(),
                    tags: Vec::new(),
                    cause: DeleteCause::GarbageCollection,
                });
            }
        }
    }

    async fn gc_phase(
        &self,
        run_id: i64,
        phase: &str,
        params: &RunParams,
        cursor: &mut String,
        result: &mut GcResult,
    ) -> Result<()> {
        let meta = &self.inner.meta;
        let p = &params.gc;
        let batch = self.inner.config.gc.batch_size.max(1);
        let dry = params.dry_run;
        let progress = |phase: &str, cursor: &str, r: &GcResult| RunProgress {
            run_id,
            phase: phase.to_string(),
            cursor: cursor.to_string(),
            result: serde_json::to_string(r).unwrap_or_default(),
        };
        match phase {
            "pending" => {
                if dry {
                    return Ok(());
                }
                loop {
                    let pending = meta.pending_blob_deletions(batch).await?;
                    if pending.is_empty() {
                        break;
                    }
                    let (done, failed) = self.delete_stored(&pending).await;
                    result.pending_completed += done.len() as u64;
                    result.storage_errors += failed;
                    meta.finish_blob_deletions(&done).await?;
                    meta.save_run_progress(&progress(phase, "", result)).await?;
                    if done.is_empty() {
                        break; // storage refuses every delete: leave them for the next run
                    }
                }
            }
            "trash" | "manifests" | "links" => loop {
                let after = decode_cursor(cursor);
                let page = match phase {
                    "trash" => meta.gc_trash_candidates(p, after.as_ref(), batch).await?,
                    "manifests" => {
                        meta.gc_manifest_candidates(p, after.as_ref(), batch)
                            .await?
                    }
                    _ => meta.gc_link_candidates(p, after.as_ref(), batch).await?,
                };
                let Some(last) = page.last() else { break };
                *cursor = encode_cursor(last);
                if dry {
                    let n = page.len() as u64;
                    match phase {
                        "trash" => result.deleted_manifests_purged += n,
                        "manifests" => {
                            result.manifests_deleted += n;
                            sample(&mut result.manifest_sample, &page);
                        }
                        _ => result.links_deleted += n,
                    }
                    meta.save_run_progress(&progress(phase, cursor, result))
                        .await?;
                    continue;
                }
                let apply = |r: &GcResult, deleted: &[RepoDigest]| {
                    let mut r = r.clone();
                    let n = deleted.len() as u64;
                    match phase {
                        "trash" => r.deleted_manifests_purged += n,
                        "manifests" => {
                            r.manifests_deleted += n;
                            sample(&mut r.manifest_sample, deleted);
                        }
                        _ => r.links_deleted += n,
                    }
                    r
                };
                let before = result.clone();
                let cur = cursor.clone();
                let pr = |deleted: &[RepoDigest]| progress(phase, &cur, &apply(&before, deleted));
                let deleted = match phase {
                    "trash" => meta.gc_purge_trash(p, &page, &pr).await?,
                    "manifests" => {
                        let deleted = meta.gc_delete_manifests(p, &page, &pr).await?;
                        self.announce_gc_deletions(&deleted).await;
                        deleted
                    }
                    _ => meta.gc_delete_links(p, &page, &pr).await?,
                };
                *result = apply(&before, &deleted);
            },
            "blobs" => loop {
                let after = (!cursor.is_empty()).then(|| cursor.clone());
                let page = meta
                    .gc_blob_candidates(p, after.as_deref(), batch, !dry)
                    .await?;
                let Some(last) = page.last() else { break };
                *cursor = last.digest.clone();
                if dry {
                    count_blobs(result, &page);
                    meta.save_run_progress(&progress(phase, cursor, result))
                        .await?;
                    continue;
                }
                let before = result.clone();
                let cur = cursor.clone();
                let pr = |deleted: &[BlobCandidate]| {
                    let mut r = before.clone();
                    count_blobs(&mut r, deleted);
                    progress(phase, &cur, &r)
                };
                let deleted = meta.gc_delete_blobs(p, &page, &pr).await?;
                count_blobs(result, &deleted);
                let keys: Vec<(String, u64)> = deleted
                    .iter()
                    .filter(|b| b.storage_key != INLINE_STORAGE_KEY)
                    .map(|b| (b.storage_key.clone(), b.size))
                    .collect();
                let (done, failed) = self.delete_stored(&keys).await;
                result.storage_errors += failed;
                meta.finish_blob_deletions(&done).await?;
            },
            "orphans" => {
                if !params.orphans {
                    return Ok(());
                }
                loop {
                    let after = (!cursor.is_empty()).then(|| cursor.clone());
                    let listed = self
                        .inner
                        .store
                        .list_blobs(after.as_deref(), batch as usize)
                        .await?;
                    let Some(last) = listed.last() else { break };
                    *cursor = last.key.clone();
                    let old: Vec<_> = listed
                        .iter()
                        .filter(|o| o.modified_ms < p.touched_before)
                        .collect();
                    let keys: Vec<(String, Option<String>)> = old
                        .iter()
                        .map(|o| {
                            let id = kura_storage::upload_id_of_key(&o.key).map(str::to_string);
                            (o.key.clone(), id)
                        })
                        .collect();
                    let unknown = meta.unknown_storage_keys(&keys).await?;
                    for o in old.iter().filter(|o| unknown.contains(&o.key)) {
                        if !dry {
                            if let Err(e) = self.inner.store.delete_blob(&o.key).await {
                                tracing::warn!(key = %o.key, error = %e, "could not delete orphan");
                                result.storage_errors += 1;
                                continue;
                            }
                            tracing::info!(key = %o.key, size = o.size, "deleted orphaned blob object");
                        }
                        result.orphans_deleted += 1;
                        result.orphan_bytes_deleted += o.size;
                    }
                    meta.save_run_progress(&progress(phase, cursor, result))
                        .await?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Deletes stored objects, a few at a time; returns the keys done and the failure count.
    async fn delete_stored(&self, keys: &[(String, u64)]) -> (Vec<String>, u64) {
        let store = &self.inner.store;
        let outcomes: Vec<(String, bool)> = futures_util::stream::iter(keys.iter().cloned())
            .map(|(key, _)| async move {
                match store.delete_blob(&key).await {
                    Ok(()) => (key, true),
                    Err(e) => {
                        tracing::warn!(%key, error = %e, "could not delete blob bytes");
                        (key, false)
                    }
                }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        let failed = outcomes.iter().filter(|(_, ok)| !ok).count() as u64;
        (
            outcomes
                .into_iter()
                .filter(|(_, ok)| *ok)
                .map(|(k, _)| k)
                .collect(),
            failed,
        )
    }
}

fn count_blobs(r: &mut GcResult, blobs: &[BlobCandidate]) {
    r.blobs_deleted += blobs.len() as u64;
    r.bytes_deleted += blobs.iter().map(|b| b.size).sum::<u64>();
    for b in blobs {
        if r.blob_sample.len() >= SAMPLE {
            break;
        }
        r.blob_sample.push(b.digest.clone());
    }
}

fn sample(into: &mut Vec<String>, page: &[RepoDigest]) {
    for (repo, digest) in page {
        if into.len() >= SAMPLE {
            break;
        }
        into.push(format!("{repo}@{digest}"));
    }
}
