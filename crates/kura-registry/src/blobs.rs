//! Blob reads and deletes, scoped to a repository: a repository sees only blobs linked to it.

use bytes::Bytes;
use kura_metadata::{BlobRecord, INLINE_STORAGE_KEY};
use kura_oci::{Digest, RepositoryName};
use kura_storage::{ByteRange, ByteStream, StorageError};

use crate::{Registry, RegistryError, RegistryEvent, Result};

impl Registry {
    /// A blob visible in `repo` (size and storage key), or BLOB_UNKNOWN.
    pub async fn stat_blob(&self, repo: &RepositoryName, digest: &Digest) -> Result<BlobRecord> {
        self.find_blob(repo, &digest.to_string(), false).await
    }

    /// [`Registry::stat_blob`] for a read: an inline blob comes with its bytes, so that
    /// [`Registry::read_blob`] needs no second lookup.
    pub async fn open_blob(&self, repo: &RepositoryName, digest: &Digest) -> Result<BlobRecord> {
        self.find_blob(repo, &digest.to_string(), true).await
    }

    async fn find_blob(
        &self,
        repo: &RepositoryName,
        digest: &str,
        content: bool,
    ) -> Result<BlobRecord> {
        self.inner
            .meta
            .find_blob(repo.as_str(), digest, content)
            .await?
            .ok_or_else(|| RegistryError::blob_unknown(digest))
    }

    /// Streams a blob found by [`Registry::open_blob`] (or an inclusive range of it, already
    /// validated against its size). An inline blob found by [`Registry::stat_blob`] has no
    /// bytes with it and is looked up again; one found by `open_blob` hands its bytes to the
    /// stream without a copy.
    pub async fn read_blob(
        &self,
        repo: &RepositoryName,
        blob: BlobRecord,
        range: Option<ByteRange>,
    ) -> Result<ByteStream> {
        let blob = if blob.content.is_none() && blob.storage_key == INLINE_STORAGE_KEY {
            self.find_blob(repo, &blob.digest, true).await?
        } else {
            blob
        };
        let digest = &blob.digest;
        let read = match blob.content {
            Some(content) => Ok(inline_stream(content, range)),
            None => self.inner.store.read_blob(&blob.storage_key, range).await,
        };
        match read {
            Ok(s) => {
                self.emit(RegistryEvent::BlobPulled {
                    repository: repo.to_string(),
                    digest: digest.clone(),
                });
                Ok(s)
            }
            Err(StorageError::NotFound(_)) => {
                // Metadata says it exists but the bytes are gone: report it loudly, answer 404.
                tracing::error!(%digest, "blob is recorded in metadata but missing from storage");
                Err(RegistryError::blob_unknown(digest))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Where to redirect a GET of `blob`, when the storage backend serves blobs directly.
    pub async fn blob_redirect(&self, blob: &BlobRecord) -> Result<Option<String>> {
        if blob.content.is_some() {
            return Ok(None);
        }
        Ok(self.inner.store.presigned_get(&blob.storage_key).await?)
    }

    /// Unlinks a blob from `repo`. The bytes stay until garbage collection finds them unused.
    pub async fn delete_blob(&self, repo: &RepositoryName, digest: &Digest) -> Result<()> {
        self.require_delete_enabled()?;
        let Some(rid) = self.repository_id(repo).await? else {
            return Err(RegistryError::blob_unknown(digest));
        };
        if !self
            .inner
            .meta
            .unlink_blob(rid, &digest.to_string())
            .await?
        {
            return Err(RegistryError::blob_unknown(digest));
        }
        self.emit(RegistryEvent::BlobDeleted {
            repository: repo.to_string(),
            digest: digest.to_string(),
        });
        Ok(())
    }
}

/// The bytes of an inline blob (or the validated range of them) as a one-chunk stream.
fn inline_stream(content: Vec<u8>, range: Option<ByteRange>) -> ByteStream {
    let content = Bytes::from(content);
    let bytes = match range {
        Some(r) => usize::try_from(r.start)
            .ok()
            .zip(usize::try_from(r.end).ok())
            .filter(|&(start, end)| start <= end && end < content.len())
            .map(|(start, end)| content.slice(start..=end)),
        None => Some(content),
    };
    // The range was checked against the recorded size; a row whose bytes disagree with it
    // fails the stream rather than the process.
    let chunk = bytes.ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "inline blob is shorter than its recorded size",
        )
    });
    Box::pin(futures_util::stream::once(async move { chunk }))
}
