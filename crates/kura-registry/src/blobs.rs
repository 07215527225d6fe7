//! Blob reads and deletes, scoped to a repository: a repository sees only blobs linked to it.

use kura_metadata::BlobRecord;
use kura_oci::{Digest, RepositoryName};
use kura_storage::{ByteRange, ByteStream, StorageError};

use crate::{Registry, RegistryError, RegistryEvent, Result};

impl Registry {
    /// A blob visible in `repo` (size and storage key), or BLOB_UNKNOWN.
    pub async fn stat_blob(&self, repo: &RepositoryName, digest: &Digest) -> Result<BlobRecord> {
        self.inner
            .meta
            .find_blob(repo.as_str(), &digest.to_string())
            .await?
            .ok_or_else(|| RegistryError::blob_unknown(digest))
    }

    /// Streams a blob found by [`Registry::stat_blob`] (or an inclusive range of it, already
    /// validated against its size).
    pub async fn read_blob(
        &self,
        repo: &RepositoryName,
        blob: &BlobRecord,
        range: Option<ByteRange>,
    ) -> Result<ByteStream> {
        let digest = &blob.digest;
        match self.inner.store.read_blob(&blob.storage_key, range).await {
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
