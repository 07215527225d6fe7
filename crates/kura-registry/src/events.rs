//! The event seam: every state change and pull is announced here, after it took effect.
//! Sinks must not block (queue and return); audit, webhooks and metrics plug in as sinks.

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

pub trait EventSink: Send + Sync + 'static {
    fn emit(&self, event: &RegistryEvent);
}
