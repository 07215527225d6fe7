//! S3-compatible object storage backend (through the `object_store` crate, so GCS and Azure
//! can follow with the same code shape).
//!
//! Layout under the configured prefix:
//!
//! ```text
//! blobs/<upload id>             a committed blob (its storage key); the completed multipart
//!                               upload of that id, or a copy of its single tail object
//! uploads/<upload id>/tail-<n>  bytes past the last full part, when the upload holds n bytes
//! ```
//!
//! An upload is a multipart upload to `blobs/<id>`, created with the upload, in parts of
//! exactly [`PART_SIZE`] bytes, plus a *tail* object with the remainder (sent as the last part
//! at commit). The
//! multipart id and part ETags live in the upload's `backend_state`, which the caller stores in
//! the shared database, so any replica can continue an upload. Part `k` always holds bytes
//! `[k·PART_SIZE, (k+1)·PART_SIZE)`, so replaying an interrupted append rewrites the same parts;
//! tail objects are named by the upload size they complete, so a crashed append never
//! overwrites the tail the recorded position refers to. Superseded tails (each under one part
//! in size) are deleted when the upload is committed or aborted. Incomplete multipart uploads are
//! invisible to readers; `CompleteMultipartUpload` makes a blob appear atomically.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures_util::{StreamExt, TryStreamExt};
use kura_oci::Digest;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::signer::Signer;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use crate::{
    BlobStore, ByteRange, ByteStream, ChunkSource, Result, StorageError, StoredObject,
    UploadPosition,
};

/// Size of every multipart part but the last. S3 needs ≥ 5 MiB; some S3-compatible stores
/// need equal sizes. 8 MiB × 10,000 parts allows blobs up to 78 GiB.
pub const PART_SIZE: usize = 8 * 1024 * 1024;

/// Connection settings. Unset credentials and region fall back to the standard AWS
/// environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct S3Config {
    pub bucket: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub prefix: String,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), needed by most self-hosted S3 servers.
    pub path_style: bool,
    /// Answer blob GETs with a redirect to a presigned URL valid this long, so clients fetch
    /// from object storage directly; `None` streams blobs through Kura.
    pub redirect_ttl: Option<std::time::Duration>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct UploadState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    multipart: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    parts: Vec<String>,
}

impl UploadState {
    fn parse(s: &str) -> Result<UploadState> {
        if s.is_empty() {
            return Ok(UploadState::default());
        }
        serde_json::from_str(s)
            .map_err(|e| StorageError::Backend(format!("unreadable upload state: {e}")))
    }

    fn encode(&self) -> String {
        serde_json::to_string(self).expect("upload state serializes")
    }

    fn full_parts_len(&self) -> u64 {
        self.parts.len() as u64 * PART_SIZE as u64
    }
}

pub struct S3BlobStore {
    s3: Arc<AmazonS3>,
    prefix: String,
    bucket: String,
    redirect_ttl: Option<std::time::Duration>,
}

fn backend(e: object_store::Error) -> StorageError {
    match e {
        object_store::Error::NotFound { path, .. } => StorageError::NotFound(path),
        other => StorageError::Backend(other.to_string()),
    }
}

impl S3BlobStore {
    pub fn new(cfg: &S3Config) -> Result<S3BlobStore> {
        let mut b = AmazonS3Builder::from_env().with_bucket_name(&cfg.bucket);
        if let Some(endpoint) = &cfg.endpoint {
            b = b
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        if let Some(region) = &cfg.region {
            b = b.with_region(region);
        }
        if let Some(k) = &cfg.access_key_id {
            b = b.with_access_key_id(k);
        }
        if let Some(k) = &cfg.secret_access_key {
            b = b.with_secret_access_key(k);
        }
        b = b.with_virtual_hosted_style_request(!cfg.path_style);
        let s3 = b.build().map_err(backend)?;
        let prefix = cfg.prefix.trim_matches('/').to_string();
        Ok(S3BlobStore {
            s3: Arc::new(s3),
            prefix,
            bucket: cfg.bucket.clone(),
            redirect_ttl: cfg.redirect_ttl,
        })
    }

    fn path(&self, key: &str) -> Path {
        if self.prefix.is_empty() {
            Path::from(key)
        } else {
            Path::from(format!("{}/{key}", self.prefix))
        }
    }

    fn blob_key(upload_id: &str) -> String {
        format!("blobs/{upload_id}")
    }

    fn tail_path(&self, upload_id: &str, size: u64) -> Path {
        self.path(&format!("uploads/{upload_id}/tail-{size}"))
    }

    fn check_id(upload_id: &str) -> Result<()> {
        crate::check_upload_id(upload_id)
    }

    fn check_key(key: &str) -> Result<()> {
        match key.strip_prefix("blobs/") {
            Some(id) => Self::check_id(id),
            None => Err(StorageError::NotFound(format!("blob key {key:?}"))),
        }
    }

    async fn read_tail(
        &self,
        upload_id: &str,
        at: &UploadPosition,
        st: &UploadState,
    ) -> Result<Bytes> {
        let tail_len = at.size - st.full_parts_len();
        if tail_len == 0 {
            return Ok(Bytes::new());
        }
        let bytes = self
            .s3
            .get(&self.tail_path(upload_id, at.size))
            .await
            .map_err(backend)?
            .bytes()
            .await
            .map_err(backend)?;
        if bytes.len() as u64 != tail_len {
            return Err(StorageError::Conflict(format!(
                "upload {upload_id}: tail holds {} bytes, expected {tail_len}",
                bytes.len()
            )));
        }
        Ok(bytes)
    }

    async fn put_part(&self, upload_id: &str, st: &mut UploadState, data: Bytes) -> Result<()> {
        let dest = self.path(&Self::blob_key(upload_id));
        let mpu = match &st.multipart {
            Some(id) => id.clone(),
            None => {
                let id = self.s3.create_multipart(&dest).await.map_err(backend)?;
                st.multipart = Some(id.clone());
                id
            }
        };
        let part = self
            .s3
            .put_part(&dest, &mpu, st.parts.len(), PutPayload::from(data))
            .await
            .map_err(backend)?;
        st.parts.push(part.content_id);
        Ok(())
    }

    /// Deletes every tail object of an upload, including superseded ones and ones left by
    /// appends that crashed before their position was recorded.
    async fn delete_tails(&self, upload_id: &str) -> Result<()> {
        let prefix = self.path(&format!("uploads/{upload_id}"));
        let tails: Vec<Path> = self
            .s3
            .list(Some(&prefix))
            .map_ok(|m| m.location)
            .try_collect()
            .await
            .map_err(backend)?;
        for path in tails {
            self.delete_quietly(&path).await;
        }
        Ok(())
    }

    async fn delete_quietly(&self, path: &Path) {
        match self.s3.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => tracing::warn!(%path, error = %e, "could not delete object"),
        }
    }
}

#[async_trait]
impl BlobStore for S3BlobStore {
    fn kind(&self) -> &'static str {
        "s3"
    }

    async fn blob_size(&self, key: &str) -> Result<Option<u64>> {
        Self::check_key(key)?;
        match self.s3.head(&self.path(key)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(backend(e)),
        }
    }

    async fn read_blob(&self, key: &str, range: Option<ByteRange>) -> Result<ByteStream> {
        Self::check_key(key)?;
        let opts = GetOptions {
            range: range.map(|r| GetRange::Bounded(r.start..r.end + 1)),
            ..Default::default()
        };
        let got = self
            .s3
            .get_opts(&self.path(key), opts)
            .await
            .map_err(backend)?;
        Ok(Box::pin(
            got.into_stream()
                .map_err(|e| std::io::Error::other(e.to_string())),
        ))
    }

    async fn delete_blob(&self, key: &str) -> Result<()> {
        Self::check_key(key)?;
        match self.s3.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(backend(e)),
        }
    }

    async fn create_upload(&self, upload_id: &str) -> Result<UploadPosition> {
        Self::check_id(upload_id)?;
        // The multipart upload exists from the start, so its id is recorded with the upload
        // before any byte arrives: an append that dies can never leave parts nobody can abort.
        let dest = self.path(&Self::blob_key(upload_id));
        let id = self.s3.create_multipart(&dest).await.map_err(backend)?;
        Ok(UploadPosition {
            size: 0,
            backend_state: UploadState {
                multipart: Some(id),
                parts: Vec::new(),
            }
            .encode(),
        })
    }

    async fn append_upload(
        &self,
        upload_id: &str,
        at: &UploadPosition,
        data: ChunkSource<'_>,
    ) -> Result<UploadPosition> {
        Self::check_id(upload_id)?;
        let mut st = UploadState::parse(&at.backend_state)?;
        if st.full_parts_len() > at.size {
            return Err(StorageError::Conflict(format!(
                "upload {upload_id}: state has more parts than its size"
            )));
        }
        let mut buf = BytesMut::with_capacity(PART_SIZE);
        buf.extend_from_slice(&self.read_tail(upload_id, at, &st).await?);
        let mut size = at.size;
        while let Some(chunk) = data.next().await {
            let mut chunk = chunk?;
            size += chunk.len() as u64;
            while !chunk.is_empty() {
                let take = (PART_SIZE - buf.len()).min(chunk.len());
                buf.extend_from_slice(&chunk.split_to(take));
                if buf.len() == PART_SIZE {
                    let part = buf.split().freeze();
                    self.put_part(upload_id, &mut st, part).await?;
                    buf.reserve(PART_SIZE);
                }
            }
        }
        if size == at.size {
            return Ok(at.clone());
        }
        if !buf.is_empty() {
            self.s3
                .put(
                    &self.tail_path(upload_id, size),
                    PutPayload::from(buf.freeze()),
                )
                .await
                .map_err(backend)?;
        }
        // The tail of the position we started from stays: until the caller records the new
        // position, a replay from the old one needs it. Superseded tails go at commit/abort.
        Ok(UploadPosition {
            size,
            backend_state: st.encode(),
        })
    }

    async fn read_upload(&self, _upload_id: &str, _at: &UploadPosition) -> Result<ByteStream> {
        Err(StorageError::Unsupported(
            "S3 cannot read the parts of an unfinished multipart upload",
        ))
    }

    async fn commit_upload(
        &self,
        upload_id: &str,
        at: &UploadPosition,
        _digest: &Digest,
    ) -> Result<String> {
        Self::check_id(upload_id)?;
        let mut st = UploadState::parse(&at.backend_state)?;
        let key = Self::blob_key(upload_id);
        let dest = self.path(&key);
        let tail_len = at.size - st.full_parts_len();
        match st.multipart.clone() {
            None => {
                if tail_len == 0 {
                    self.s3
                        .put(&dest, PutPayload::default())
                        .await
                        .map_err(backend)?;
                } else {
                    self.s3
                        .copy(&self.tail_path(upload_id, at.size), &dest)
                        .await
                        .map_err(backend)?;
                }
            }
            // Nothing was written: an empty object, and the unused multipart upload goes.
            Some(mpu) if at.size == 0 => {
                self.s3
                    .put(&dest, PutPayload::default())
                    .await
                    .map_err(backend)?;
                if let Err(e) = self.s3.abort_multipart(&dest, &mpu).await {
                    tracing::warn!(upload = upload_id, error = %e, "could not abort an unused multipart upload");
                }
            }
            // The tail (the whole blob, for one under a part) is the last part: S3 allows the
            // last part, even the only one, to be smaller than the minimum.
            Some(mpu) => {
                if tail_len > 0 {
                    let tail = self.read_tail(upload_id, at, &st).await?;
                    self.put_part(upload_id, &mut st, tail).await?;
                }
                let parts = st
                    .parts
                    .iter()
                    .map(|etag| PartId {
                        content_id: etag.clone(),
                    })
                    .collect();
                self.s3
                    .complete_multipart(&dest, &mpu, parts)
                    .await
                    .map_err(backend)?;
            }
        }
        // The object must hold exactly the bytes the caller hashed; anything else is a bug or a
        // store that lost a part, and must not become a blob.
        let stored = self.s3.head(&dest).await.map_err(backend)?.size;
        if stored != at.size {
            self.delete_quietly(&dest).await;
            return Err(StorageError::Conflict(format!(
                "upload {upload_id}: committed object holds {stored} bytes, expected {}",
                at.size
            )));
        }
        // Superseded tails too, not only the last one.
        self.delete_tails(upload_id).await?;
        Ok(key)
    }

    async fn abort_upload(&self, upload_id: &str, at: &UploadPosition) -> Result<()> {
        Self::check_id(upload_id)?;
        let st = UploadState::parse(&at.backend_state).unwrap_or_default();
        if let Some(mpu) = &st.multipart {
            let dest = self.path(&Self::blob_key(upload_id));
            match self.s3.abort_multipart(&dest, mpu).await {
                // An upload that is already gone: AWS says NoSuchUpload (404); some
                // S3-compatible servers (s3s-fs) say AccessDenied (403) for an unknown id.
                Ok(())
                | Err(object_store::Error::NotFound { .. })
                | Err(object_store::Error::PermissionDenied { .. }) => {}
                Err(e) => return Err(backend(e)),
            }
        }
        self.delete_tails(upload_id).await?;
        // A replica that died between CompleteMultipartUpload and the metadata commit left a
        // completed object behind. The upload row still exists (the metadata commit removes
        // it), so no metadata points at this key: it is safe to delete.
        self.delete_quietly(&self.path(&Self::blob_key(upload_id)))
            .await;
        Ok(())
    }

    async fn presigned_get(&self, key: &str) -> Result<Option<String>> {
        let Some(ttl) = self.redirect_ttl else {
            return Ok(None);
        };
        Self::check_key(key)?;
        let url = self
            .s3
            .signed_url(object_store::signer::Method::GET, &self.path(key), ttl)
            .await
            .map_err(backend)?;
        Ok(Some(url.to_string()))
    }

    async fn list_blobs(&self, after: Option<&str>, limit: usize) -> Result<Vec<StoredObject>> {
        let prefix = self.path("blobs");
        let offset = self.path(after.unwrap_or("blobs/"));
        let strip = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let mut listing = self.s3.list_with_offset(Some(&prefix), &offset);
        let mut out = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(backend)?;
            let full = meta.location.to_string();
            let key = full.strip_prefix(&strip).unwrap_or(&full).to_string();
            if Self::check_key(&key).is_err() {
                continue;
            }
            out.push(StoredObject {
                key,
                size: meta.size,
                modified_ms: meta.last_modified.timestamp_millis(),
            });
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    async fn check(&self) -> Result<()> {
        let probe = self.path(&format!(".readyz/{}", uuid::Uuid::new_v4()));
        self.s3
            .put(&probe, PutPayload::from_static(b"ok"))
            .await
            .map_err(|e| StorageError::Backend(format!("bucket {}: {e}", self.bucket)))?;
        self.s3.delete(&probe).await.map_err(backend)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the backend suite against a real S3-compatible server when one is configured
    /// (`KURA_TEST_S3_ENDPOINT`, `KURA_TEST_S3_BUCKET`, `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`); scripts/test starts one and sets them. Without them the test
    /// fails unless `KURA_TEST_ALLOW_NO_S3=1` says skipping is intended (a plain `cargo test`).
    #[tokio::test]
    async fn s3_passes_the_backend_suite() {
        let Ok(endpoint) = std::env::var("KURA_TEST_S3_ENDPOINT") else {
            assert!(
                std::env::var("KURA_TEST_ALLOW_NO_S3").is_ok(),
                "KURA_TEST_S3_ENDPOINT is not set: run through scripts/test, which starts an \
                 S3 server, or set KURA_TEST_ALLOW_NO_S3=1 to skip"
            );
            return;
        };
        // Explicit credentials: without them the AWS provider chain would try the instance
        // metadata service, which is not on loopback.
        let key = |k: &str| {
            std::env::var(k)
                .unwrap_or_else(|_| panic!("{k} must be set with KURA_TEST_S3_ENDPOINT"))
        };
        let cfg = S3Config {
            bucket: std::env::var("KURA_TEST_S3_BUCKET").unwrap_or_else(|_| "kura-test".into()),
            endpoint: Some(endpoint),
            region: Some("us-east-1".into()),
            prefix: format!("suite-{}", uuid::Uuid::new_v4()),
            path_style: true,
            access_key_id: Some(key("AWS_ACCESS_KEY_ID")),
            secret_access_key: Some(key("AWS_SECRET_ACCESS_KEY")),
            redirect_ttl: None,
        };
        let store = S3BlobStore::new(&cfg).unwrap();
        crate::conformance::run_all(&store).await;
        multipart_boundaries(&store).await;
    }

    /// Appends that straddle part boundaries, across several calls, as replicas would.
    async fn multipart_boundaries(store: &S3BlobStore) {
        use kura_oci::Algorithm;
        let data: Vec<u8> = (0..(2 * PART_SIZE + 12_345))
            .map(|i| (i % 251) as u8)
            .collect();
        let id = "boundaries-1";
        let mut pos = store.create_upload(id).await.unwrap();
        for piece in [
            &data[..1000],
            &data[1000..PART_SIZE + 10],
            &data[PART_SIZE + 10..2 * PART_SIZE],
            &data[2 * PART_SIZE..],
        ] {
            let mut s = futures_util::stream::iter(vec![Ok(Bytes::copy_from_slice(piece))]);
            pos = store.append_upload(id, &pos, &mut s).await.unwrap();
        }
        assert_eq!(pos.size, data.len() as u64);
        let digest = Algorithm::Sha256.digest_of(&data);
        let key = store.commit_upload(id, &pos, &digest).await.unwrap();
        let leftovers: Vec<_> = store
            .s3
            .list(Some(&store.path(&format!("uploads/{id}"))))
            .try_collect()
            .await
            .unwrap();
        assert!(
            leftovers.is_empty(),
            "tails left after commit: {leftovers:?}"
        );
        let mut got = Vec::new();
        let mut s = store.read_blob(&key, None).await.unwrap();
        while let Some(c) = s.next().await {
            got.extend_from_slice(&c.unwrap());
        }
        assert_eq!(Algorithm::Sha256.digest_of(&got), digest);
        let r = ByteRange {
            start: PART_SIZE as u64 - 2,
            end: PART_SIZE as u64 + 1,
        };
        let mut s = store.read_blob(&key, Some(r)).await.unwrap();
        let mut got = Vec::new();
        while let Some(c) = s.next().await {
            got.extend_from_slice(&c.unwrap());
        }
        assert_eq!(got, &data[PART_SIZE - 2..PART_SIZE + 2]);
        store.delete_blob(&key).await.unwrap();
    }
}
