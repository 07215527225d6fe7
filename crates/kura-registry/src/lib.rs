//! Registry services: the rules of the distribution API, independent of HTTP.
//!
//! [`Registry`] owns a [`MetadataStore`] (what exists) and a [`BlobStore`] (the bytes) and
//! implements every operation the `/v2` API offers: uploads with resumable hashing, blob
//! reads, manifest validation and storage, tags, referrers and listings. HTTP handlers parse,
//! call one method here and map the [`RegistryError`] to a response; tests call it directly.
//!
//! Every state change is announced to the registered [`EventSink`]s (audit, webhooks and
//! metrics listen there).

mod blobs;
pub mod context;
mod error;
mod events;
pub mod gc;
mod hashing;
mod locks;
mod manifests;
pub mod policy;
mod pulls;
pub mod retention;
pub mod schedule;
mod uploads;

use std::sync::Arc;
use std::time::Duration;

use kura_metadata::{Metadata, RepositoryFilter};
use kura_oci::RepositoryName;
use kura_storage::BlobStore;

pub use context::{Actor, ActorKind, EventContext};
pub use error::{RegistryError, Result};
pub use events::{DeleteCause, EventSink, RegistryEvent};
pub use manifests::{ManifestContent, ManifestPushed, TagPage};
pub use pulls::PullRecorder;
pub use uploads::UploadStatus;

/// Behaviour knobs of the distribution API.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Largest manifest accepted on PUT, in bytes.
    pub max_manifest_size: usize,
    /// Whether DELETE of manifests, tags and blobs is allowed.
    pub delete_enabled: bool,
    /// Uploads idle for longer than this are removed.
    pub upload_expiry: Duration,
    /// Advertised `OCI-Chunk-Min-Length` (bytes); 0 advertises nothing.
    pub chunk_min_length: u64,
    /// Garbage collection and deleted-manifest retention.
    pub gc: GcConfig,
    /// A push that takes a project's usage across this percentage of its storage limit is
    /// announced (`QuotaWarning`); 0 turns the warning off.
    pub quota_warning_percent: u8,
    /// A blob pushed whole in one request and at most this large keeps its bytes in its
    /// metadata row rather than in blob storage (0: never). See `uploads::finish_small`.
    pub inline_blob_max: u64,
}

/// Default for [`RegistryConfig::inline_blob_max`]: image configs and small layers.
pub const DEFAULT_INLINE_BLOB_MAX: u64 = 16 * 1024;

/// Garbage-collection settings (`[gc]` in the configuration file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcConfig {
    /// Blobs, links and manifests touched more recently than this are never collected: the
    /// window in which a client may push layers and then the manifest that needs them.
    pub grace: Duration,
    /// Deleted manifests stay restorable (and keep what they reference) this long.
    pub deleted_manifest_retention: Duration,
    /// Scheduled runs also delete untagged manifests nothing references.
    pub delete_untagged: bool,
    /// Cron expression (with seconds, UTC) for scheduled runs; `None`: on demand only.
    pub schedule: Option<String>,
    /// Rows per transaction.
    pub batch_size: u32,
    /// A running run whose heartbeat is older than this is taken to have crashed and is
    /// resumed by the next run request or schedule tick.
    pub stale_after: Duration,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            grace: Duration::from_secs(3600),
            deleted_manifest_retention: Duration::from_secs(24 * 3600),
            delete_untagged: false,
            schedule: None,
            batch_size: 500,
            stale_after: Duration::from_secs(120),
        }
    }
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            max_manifest_size: 4 * 1024 * 1024,
            delete_enabled: true,
            upload_expiry: Duration::from_secs(24 * 3600),
            chunk_min_length: 0,
            gc: GcConfig::default(),
            quota_warning_percent: 85,
            inline_blob_max: DEFAULT_INLINE_BLOB_MAX,
        }
    }
}

/// The registry service. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    meta: Arc<dyn Metadata>,
    store: Arc<dyn BlobStore>,
    config: RegistryConfig,
    sinks: Vec<Arc<dyn EventSink>>,
    upload_locks: locks::KeyedLocks,
    limits: policy::LimitCache,
    /// Upload sessions kept in this process only; `None` where replicas share the metadata
    /// or where opening an upload stores something. See `uploads::PendingUploads`.
    pending_uploads: Option<uploads::PendingUploads>,
}

impl Registry {
    pub fn new(
        meta: Arc<dyn Metadata>,
        store: Arc<dyn BlobStore>,
        config: RegistryConfig,
        sinks: Vec<Arc<dyn EventSink>>,
    ) -> Registry {
        let pending_uploads = (meta.single_process() && store.uploads_start_empty())
            .then(uploads::PendingUploads::default);
        Registry {
            inner: Arc::new(Inner {
                meta,
                store,
                config,
                sinks,
                upload_locks: locks::KeyedLocks::default(),
                limits: policy::LimitCache::default(),
                pending_uploads,
            }),
        }
    }

    pub fn config(&self) -> &RegistryConfig {
        &self.inner.config
    }

    pub fn metadata(&self) -> &Arc<dyn Metadata> {
        &self.inner.meta
    }

    pub fn storage(&self) -> &Arc<dyn BlobStore> {
        &self.inner.store
    }

    fn emit(&self, event: RegistryEvent) {
        if self.inner.sinks.is_empty() {
            return;
        }
        let context = EventContext::capture();
        for sink in &self.inner.sinks {
            sink.emit(&event, &context);
        }
    }

    async fn repository_id(&self, name: &RepositoryName) -> Result<Option<i64>> {
        Ok(self.inner.meta.repository_id(name.as_str()).await?)
    }

    fn require_delete_enabled(&self) -> Result<()> {
        if self.inner.config.delete_enabled {
            Ok(())
        } else {
            Err(RegistryError::unsupported(
                "deletes are disabled on this registry",
            ))
        }
    }

    /// Lists repositories visible under `filter` after `last` (bytewise order), at most `n`;
    /// `more` tells whether another page exists.
    pub async fn catalog(
        &self,
        filter: &RepositoryFilter,
        last: Option<&str>,
        n: u32,
    ) -> Result<(Vec<String>, bool)> {
        if n == 0 {
            return Ok((Vec::new(), false));
        }
        let mut names = self
            .inner
            .meta
            .list_repositories(filter, last, n.saturating_add(1))
            .await?;
        let more = names.len() > n as usize;
        names.truncate(n as usize);
        Ok((names, more))
    }

    /// Repositories visible under `filter` whose name contains `term` (one page of `n`).
    pub async fn search(
        &self,
        filter: &RepositoryFilter,
        term: &str,
        last: Option<&str>,
        n: u32,
    ) -> Result<Vec<String>> {
        Ok(self
            .inner
            .meta
            .search_repositories(filter, term, last, n)
            .await?)
    }

    /// Repositories of a project (management listings; callers authorize).
    pub async fn project_repositories(
        &self,
        project: &str,
        term: &str,
        last: Option<&str>,
        n: u32,
    ) -> Result<Vec<String>> {
        Ok(self
            .inner
            .meta
            .project_repositories(project, term, last, n)
            .await?)
    }

    /// Manifests of a repository, newest first, with tags and pull times.
    pub async fn list_artifacts(
        &self,
        repo: &RepositoryName,
        before: Option<(i64, &str)>,
        n: u32,
    ) -> Result<Vec<kura_metadata::ArtifactRecord>> {
        let Some(rid) = self.repository_id(repo).await? else {
            return Err(RegistryError::name_unknown(repo));
        };
        Ok(self.inner.meta.list_artifacts(rid, before, n).await?)
    }

    /// Deletes a repository: its manifests, tags, blob links and unfinished uploads. Blob
    /// bytes stay for garbage collection (other repositories may share them).
    pub async fn delete_repository(&self, repo: &RepositoryName) -> Result<()> {
        self.require_delete_enabled()?;
        let Some(rid) = self.repository_id(repo).await? else {
            return Err(RegistryError::name_unknown(repo));
        };
        let rules = self.immutability_rules_for(repo).await?;
        if !rules.is_empty() {
            let mut last: Option<String> = None;
            loop {
                let page = self
                    .inner
                    .meta
                    .list_tags(rid, last.as_deref(), 1000)
                    .await?;
                if let Some(tag) = page.iter().find(|t| policy::tag_protected(&rules, t)) {
                    return Err(policy::immutable_error(repo, tag));
                }
                match page.last() {
                    Some(t) if page.len() == 1000 => last = Some(t.clone()),
                    _ => break,
                }
            }
        }
        let uploads = self.inner.meta.delete_repository(rid).await?;
        for u in uploads {
            let at = kura_storage::UploadPosition {
                size: u.size,
                backend_state: u.backend_state,
            };
            if let Err(e) = self.inner.store.abort_upload(&u.id, &at).await {
                tracing::warn!(upload = %u.id, error = %e, "could not remove upload data");
            }
        }
        tracing::info!(repository = %repo, "repository deleted");
        Ok(())
    }

    /// Reports whether both backends answer (readiness).
    pub async fn check_backends(&self) -> Vec<(&'static str, &'static str, Result<(), String>)> {
        let meta = self.inner.meta.ping().await.map_err(|e| e.to_string());
        let store = self.inner.store.check().await.map_err(|e| e.to_string());
        vec![
            ("metadata", self.inner.meta.kind(), meta),
            ("storage", self.inner.store.kind(), store),
        ]
    }
}
