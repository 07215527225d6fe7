//! The event seam: every state change and pull is announced here, after it took effect.
//! Every event comes with its [`EventContext`] (actor, source, request, time).
//! Sinks must not block (queue and return); audit, webhooks and metrics plug in as sinks.

use crate::context::EventContext;

/// Something that happened in the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryEvent {
    BlobPushed {
        repository: String,
        digest: String,
        size: u64,
    },
    BlobMounted {
        repository: String,
        from: String,
        digest: String,
    },
    BlobPulled {
        repository: String,
        digest: String,
    },
    BlobDeleted {
        repository: String,
        digest: String,
    },
    ManifestPushed {
        repository: String,
        digest: String,
        media_type: String,
        tag: Option<String>,
        size: u64,
        /// False when the repository already held this manifest (a re-push or a retag).
        created: bool,
        /// The PUT created `tag` or moved it to this manifest.
        tag_changed: bool,
        /// Where `tag` pointed before, if it pointed elsewhere.
        previous: Option<String>,
    },
    ManifestPulled {
        repository: String,
        digest: String,
        reference: String,
    },
    ManifestDeleted {
        repository: String,
        digest: String,
        tags: Vec<String>,
        cause: DeleteCause,
    },
    /// A tag was pointed back at an earlier manifest from its history.
    TagRestored {
        repository: String,
        tag: String,
        digest: String,
        previous: Option<String>,
    },
    /// A garbage-collection run finished (dry runs included).
    GarbageCollected {
        run_id: i64,
        dry_run: bool,
        blobs: u64,
        bytes: u64,
        manifests: u64,
    },
    /// A retention run finished.
    RetentionApplied {
        run_id: i64,
        project: String,
        dry_run: bool,
        deleted: u64,
    },
    TagDeleted {
        repository: String,
        tag: String,
    },
    /// A push was refused because it would grow the project past its storage limit.
    QuotaExceeded {
        project: String,
        repository: String,
        usage: u64,
        requested: u64,
        limit: u64,
    },
    /// A push took the project's usage across the warning threshold of its limit.
    QuotaWarning {
        project: String,
        repository: String,
        usage: u64,
        limit: u64,
    },
}

impl RegistryEvent {
    /// Short machine name of the event kind (metrics labels, logs).
    pub fn kind(&self) -> &'static str {
        match self {
            RegistryEvent::BlobPushed { .. } => "blob_pushed",
            RegistryEvent::BlobMounted { .. } => "blob_mounted",
            RegistryEvent::BlobPulled { .. } => "blob_pulled",
            RegistryEvent::BlobDeleted { .. } => "blob_deleted",
            RegistryEvent::ManifestPushed { .. } => "manifest_pushed",
            RegistryEvent::ManifestPulled { .. } => "manifest_pulled",
            RegistryEvent::ManifestDeleted { .. } => "manifest_deleted",
            RegistryEvent::TagRestored { .. } => "tag_restored",
            RegistryEvent::GarbageCollected { .. } => "garbage_collected",
            RegistryEvent::RetentionApplied { .. } => "retention_applied",
            RegistryEvent::TagDeleted { .. } => "tag_deleted",
            RegistryEvent::QuotaExceeded { .. } => "quota_exceeded",
            RegistryEvent::QuotaWarning { .. } => "quota_warning",
        }
    }

    /// The repository the event is about, if any.
    pub fn repository(&self) -> Option<&str> {
        match self {
            RegistryEvent::BlobPushed { repository, .. }
            | RegistryEvent::BlobMounted { repository, .. }
            | RegistryEvent::BlobPulled { repository, .. }
            | RegistryEvent::BlobDeleted { repository, .. }
            | RegistryEvent::ManifestPushed { repository, .. }
            | RegistryEvent::ManifestPulled { repository, .. }
            | RegistryEvent::ManifestDeleted { repository, .. }
            | RegistryEvent::TagRestored { repository, .. }
            | RegistryEvent::TagDeleted { repository, .. }
            | RegistryEvent::QuotaExceeded { repository, .. }
            | RegistryEvent::QuotaWarning { repository, .. } => Some(repository),
            RegistryEvent::GarbageCollected { .. } | RegistryEvent::RetentionApplied { .. } => None,
        }
    }

    /// The project (first path component of the repository) the event is about, if any.
    pub fn project(&self) -> Option<&str> {
        match self {
            RegistryEvent::RetentionApplied { project, .. }
            | RegistryEvent::QuotaExceeded { project, .. }
            | RegistryEvent::QuotaWarning { project, .. } => Some(project),
            _ => self
                .repository()
                .map(|r| r.split_once('/').map_or(r, |(p, _)| p)),
        }
    }
}

/// Who removed a manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteCause {
    /// A client's DELETE (distribution or management API).
    Client,
    /// A retention policy.
    Retention,
    /// Garbage collection (untagged manifests, accessories whose subject is gone).
    GarbageCollection,
    /// It was an accessory (referrer) of a manifest deleted for one of the other causes.
    FollowedSubject,
}

impl DeleteCause {
    pub fn as_str(self) -> &'static str {
        match self {
            DeleteCause::Client => "client",
            DeleteCause::Retention => "retention",
            DeleteCause::GarbageCollection => "gc",
            DeleteCause::FollowedSubject => "followed_subject",
        }
    }
}

/// A listener on the event seam. `emit` runs on the thread that made the change, so it must
/// not block: queue the event and return.
pub trait EventSink: Send + Sync + 'static {
    fn emit(&self, event: &RegistryEvent, context: &EventContext);
}
