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
    },
    TagDeleted {
        repository: String,
        tag: String,
    },
}

pub trait EventSink: Send + Sync + 'static {
    fn emit(&self, event: &RegistryEvent);
}
