//! Blob storage: content-addressed bytes and in-progress upload data, behind one trait.
//!
//! The store knows nothing about repositories, tags or who may see what: that is the metadata
//! store's job, which is the single source of truth for existence. The blob store only keeps
//! bytes under a storage key chosen at commit (and upload bytes under an upload id) and
//! streams them back; metadata maps each digest to its key.
//!
//! Every backend is checked by the same suite ([`conformance`]).

mod cached_io;
pub mod conformance;
pub mod fs;
pub mod s3;
pub mod serial_queue;
mod upload_file;

use std::io;
use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;
use kura_oci::Digest;

pub use fs::FsBlobStore;
pub use s3::{S3BlobStore, S3Config};
pub use serial_queue::{SerialJob, SerialQueue};

/// A stream of bytes read from or written to storage.
pub type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// Data arriving for an upload; the caller hashes it as it passes.
pub type ChunkSource<'a> = &'a mut (dyn Stream<Item = io::Result<Bytes>> + Send + Unpin);

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("not found in storage: {0}")]
    NotFound(String),
    #[error("upload state conflict: {0}")]
    Conflict(String),
    #[error("storage I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("storage backend error: {0}")]
    Backend(String),
    #[error("not supported by this storage backend: {0}")]
    Unsupported(&'static str),
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Upload ids come from Kura, but they also come back in URLs: before one names a path or an
/// object key, it must be 1-64 characters of `[A-Za-z0-9-]` (what Kura generates: UUIDs).
pub fn check_upload_id(upload_id: &str) -> Result<()> {
    let ok = !upload_id.is_empty()
        && upload_id.len() <= 64
        && upload_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(StorageError::NotFound(format!("upload {upload_id:?}")))
    }
}

/// An inclusive byte range within a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

impl ByteRange {
    pub fn len(&self) -> u64 {
        self.end - self.start + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

/// Where an upload stands inside the backend. `backend_state` is opaque to callers and is
/// persisted by them next to the upload row (e.g. multipart ids for object stores); the
/// filesystem backend needs none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UploadPosition {
    pub size: u64,
    pub backend_state: String,
}

/// A committed blob as blob storage lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    pub key: String,
    pub size: u64,
    /// Last modification, epoch milliseconds.
    pub modified_ms: i64,
}

/// The upload id a storage key was committed from, when the key records one (every key Kura
/// writes does: `blobs/<id>` on object stores, `up/<2>/<id>` on the filesystem).
pub fn upload_id_of_key(key: &str) -> Option<&str> {
    let last = key.rsplit('/').next()?;
    (key.starts_with("blobs/") || key.starts_with("up/"))
        .then_some(last)
        .filter(|id| check_upload_id(id).is_ok())
}

/// How much durability a commit buys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Data and directory entries are fsync'ed before a commit returns.
    #[default]
    Strict,
    /// The page cache decides; a crash may lose recently acknowledged blobs.
    Relaxed,
}

/// One pluggable blob backend. Implementations must make `commit_upload` atomic: readers see
/// either no blob or the whole blob, never a prefix.
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Short backend name for logs and readiness reports.
    fn kind(&self) -> &'static str;

    /// Size of the blob stored under `key`, or `None` when absent.
    async fn blob_size(&self, key: &str) -> Result<Option<u64>>;

    /// Streams the blob stored under `key`, or the inclusive `range` of it.
    async fn read_blob(&self, key: &str, range: Option<ByteRange>) -> Result<ByteStream>;

    /// Removes the blob stored under `key`. Absent blobs are not an error.
    async fn delete_blob(&self, key: &str) -> Result<()>;

    /// Prepares storage for a new upload.
    async fn create_upload(&self, upload_id: &str) -> Result<UploadPosition>;

    /// Whether `create_upload` stores nothing (the upload's first write creates its data), so
    /// that a session which has not written yet leaves no trace in storage.
    fn uploads_start_empty(&self) -> bool {
        false
    }

    /// Appends `data` at `at.size`, returning the new position. Bytes beyond `at.size` left by
    /// an interrupted earlier append are discarded first, so the recorded position is the truth.
    async fn append_upload(
        &self,
        upload_id: &str,
        at: &UploadPosition,
        data: ChunkSource<'_>,
    ) -> Result<UploadPosition>;

    /// Makes the bytes an upload holds up to `at` durable. The caller calls it before it
    /// records `at` as the upload's position, so that a recorded position never points past
    /// bytes a crash can lose: a later commit would otherwise publish a blob whose content no
    /// longer matches the digest computed while receiving it. Backends whose appends are
    /// durable when they return (object stores), or that were told not to sync (relaxed
    /// durability), do nothing.
    async fn sync_upload(&self, _upload_id: &str, _at: &UploadPosition) -> Result<()> {
        Ok(())
    }

    /// Streams back what an upload holds so far (used to rebuild a hash state). Backends
    /// that cannot read unfinished uploads (S3 multipart) answer `Unsupported`; the caller
    /// then commits first and verifies the committed blob, which is still invisible to users
    /// because no metadata points at it.
    async fn read_upload(&self, upload_id: &str, at: &UploadPosition) -> Result<ByteStream>;

    /// Atomically turns a finished upload into a stored blob and returns its storage key,
    /// which the caller records in metadata and uses for reads. The caller has verified
    /// `digest`. Backends that address blobs by digest return the same key for the same
    /// digest; others (object stores, which cannot rename) return a key of their own, and the
    /// caller deletes it again if metadata already holds the digest under another key.
    async fn commit_upload(
        &self,
        upload_id: &str,
        at: &UploadPosition,
        digest: &Digest,
    ) -> Result<String>;

    /// Stores a whole blob the caller holds in memory (a small body, already verified against
    /// `digest`) as the content of the fresh upload `upload_id`, and commits it: the same as
    /// `append_upload` from position zero followed by `commit_upload`, which is what the
    /// default does. Backends that can do it in one step (the filesystem: one blocking call
    /// instead of two) override it.
    async fn put_blob(&self, upload_id: &str, data: Vec<Bytes>, digest: &Digest) -> Result<String> {
        let mut source = futures_util::stream::iter(data.into_iter().map(Ok));
        let at = self
            .append_upload(upload_id, &UploadPosition::default(), &mut source)
            .await?;
        self.commit_upload(upload_id, &at, digest).await
    }

    /// Discards an upload's bytes. Unknown uploads are not an error.
    async fn abort_upload(&self, upload_id: &str, at: &UploadPosition) -> Result<()>;

    /// A time-limited URL from which a client can GET the blob directly, when the backend can
    /// sign one and is configured to (object stores); `None` means: stream it through Kura.
    async fn presigned_get(&self, _key: &str) -> Result<Option<String>> {
        Ok(None)
    }

    /// Committed blobs whose key sorts after `after`, in key order, at most `limit` of them.
    /// Garbage collection compares these with metadata to find bytes nobody records (a
    /// process killed between a storage commit and the metadata commit leaves such objects).
    async fn list_blobs(&self, after: Option<&str>, limit: usize) -> Result<Vec<StoredObject>>;

    /// Checks the backend is reachable and writable (readiness).
    async fn check(&self) -> Result<()>;
}
