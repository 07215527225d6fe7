//! Blob uploads: sessions, chunk appends with incremental hashing, verification and commit.
//!
//! Invariants:
//! - An upload's row in the metadata store is created before any of its bytes are stored, and
//!   the row's `size` and hash state only move forward together, by compare-and-set, after
//!   the bytes they describe were written. Bytes beyond the recorded size are garbage and are
//!   cut off by the next append.
//! - A blob becomes visible only after its digest was verified and the storage commit (an
//!   atomic rename or equivalent) succeeded; the metadata commit comes last.
//! - Where one process is the metadata store's only user and opening an upload stores nothing
//!   (SQLite with the filesystem backend), a new session lives in [`PendingUploads`] until it
//!   is about to store its first byte, and gets its row then. A blob pushed whole and kept
//!   inline never gets one: POST costs no metadata write.

use bytes::Bytes;
use futures_util::StreamExt;
use kura_metadata::{BlobBytes, CommitOutcome, LinkOutcome, UploadRecord, now_ms};
use kura_oci::{Algorithm, Digest, ErrorCode, Hasher, RepositoryName};
use kura_storage::{ChunkSource, StorageError, UploadPosition};

use crate::hashing::Hashing;
use crate::{Registry, RegistryError, RegistryEvent, Result};

/// Where an upload stands, as reported in `Location`/`Range` headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadStatus {
    pub id: String,
    /// Bytes received so far.
    pub size: u64,
}

/// The largest body [`Registry::finish_upload`] holds in memory to store in one step.
const SMALL_BODY: usize = 1024 * 1024;

/// Reads `data` until it ends or passes SMALL_BODY bytes: the chunks read, and whether that
/// was all of it.
async fn gather_small(data: ChunkSource<'_>) -> Result<(Vec<Bytes>, bool)> {
    let mut chunks = Vec::new();
    let mut len = 0;
    while len <= SMALL_BODY {
        match data.next().await {
            Some(Ok(chunk)) => {
                len += chunk.len();
                chunks.push(chunk);
            }
            Some(Err(e)) => return Err(body_error(e)),
            None => return Ok((chunks, true)),
        }
    }
    Ok((chunks, false))
}

/// An error reading a request body, as the client should see it.
fn body_error(e: std::io::Error) -> RegistryError {
    if is_client_abort(&e) {
        RegistryError::new(
            ErrorCode::BlobUploadInvalid,
            format!("upload body was not received completely: {e}"),
        )
        .with_status(400)
    } else {
        RegistryError::internal(e)
    }
}

fn digest_mismatch(expected: &Digest, actual: &Digest) -> RegistryError {
    RegistryError::new(
        ErrorCode::DigestInvalid,
        "provided digest did not match uploaded content",
    )
    .with_detail(serde_json::json!({
        "expected": expected.to_string(),
        "actual": actual.to_string(),
    }))
}

fn new_upload_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Sessions opened but not yet written to, kept in memory. Each costs a write to the metadata
/// store's single writer otherwise (about a fifth of a small push's time on SQLite), and most
/// end with one PUT that brings the whole blob. Losing them in a crash or restart loses no
/// data: they hold none, and their clients get `BLOB_UPLOAD_UNKNOWN` and start again.
#[derive(Default)]
pub(crate) struct PendingUploads {
    sessions: std::sync::Mutex<std::collections::HashMap<String, PendingUpload>>,
}

#[derive(Clone)]
struct PendingUpload {
    repository: String,
    created_at: i64,
}

/// Beyond this many pending sessions, new ones get their row at once (memory stays bounded
/// when clients open sessions and walk away).
const MAX_PENDING_UPLOADS: usize = 16 * 1024;

impl PendingUploads {
    fn insert(&self, id: &str, repository: &str, created_at: i64) -> bool {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if sessions.len() >= MAX_PENDING_UPLOADS {
            return false;
        }
        sessions.insert(
            id.to_string(),
            PendingUpload {
                repository: repository.to_string(),
                created_at,
            },
        );
        true
    }

    fn get(&self, id: &str) -> Option<PendingUpload> {
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.get(id).cloned()
    }

    fn remove(&self, id: &str) -> bool {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.remove(id).is_some()
    }

    fn len(&self) -> usize {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Drops sessions opened before `cutoff`; returns how many.
    fn expire(&self, cutoff: i64) -> usize {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let before = sessions.len();
        sessions.retain(|_, s| s.created_at >= cutoff);
        before - sessions.len()
    }
}

/// An upload session as loaded for a request.
struct Session {
    record: UploadRecord,
    /// Still only in [`PendingUploads`]: no row, nothing stored.
    pending: bool,
}

fn fresh_record(id: String, repository_id: i64, created_at: i64) -> UploadRecord {
    UploadRecord {
        id,
        repository_id,
        size: 0,
        hash_algorithm: Algorithm::Sha256.as_str().to_string(),
        hash_state: Algorithm::Sha256.hasher().save_state(),
        backend_state: String::new(),
        created_at,
        updated_at: created_at,
    }
}

impl Registry {
    /// Opens an upload session in `repo`.
    pub async fn start_upload(&self, repo: &RepositoryName) -> Result<UploadStatus> {
        let id = new_upload_id();
        let now = now_ms();
        if let Some(pending) = &self.inner.pending_uploads
            && self.repository_id(repo).await?.is_some()
            && pending.insert(&id, repo.as_str(), now)
        {
            return Ok(UploadStatus { id, size: 0 });
        }
        let mut record = fresh_record(id.clone(), 0, now);
        // One statement when the repository exists, which is the common case.
        if self
            .inner
            .meta
            .create_upload_in(repo.as_str(), &record)
            .await?
            .is_none()
        {
            record.repository_id = self.inner.meta.ensure_repository(repo.as_str()).await?;
            self.inner.meta.create_upload(&record).await?;
        }
        let pos = self.inner.store.create_upload(&id).await?;
        if !pos.backend_state.is_empty() {
            self.inner
                .meta
                .advance_upload(&id, 0, 0, &record.hash_state, &pos.backend_state)
                .await?;
        }
        Ok(UploadStatus { id, size: 0 })
    }

    /// Loads an upload, checking it belongs to `repo`.
    async fn load_upload(&self, repo: &RepositoryName, id: &str) -> Result<Session> {
        if let Some(pending) = &self.inner.pending_uploads
            && let Some(p) = pending.get(id)
        {
            if p.repository != repo.as_str() {
                return Err(RegistryError::upload_unknown());
            }
            // Resolved now rather than kept from the POST: a repository deleted since then
            // ends its sessions, as the row's foreign key does for stored ones.
            let repository_id = self
                .repository_id(repo)
                .await?
                .ok_or_else(RegistryError::upload_unknown)?;
            return Ok(Session {
                record: fresh_record(id.to_string(), repository_id, p.created_at),
                pending: true,
            });
        }
        let record = self
            .inner
            .meta
            .upload_in(repo.as_str(), id)
            .await?
            .ok_or_else(RegistryError::upload_unknown)?;
        Ok(Session {
            record,
            pending: false,
        })
    }

    /// Gives a pending session its row, before anything is stored for it.
    async fn persist_pending(&self, session: &mut Session) -> Result<()> {
        if !session.pending {
            return Ok(());
        }
        self.inner.meta.create_upload(&session.record).await?;
        if let Some(pending) = &self.inner.pending_uploads {
            pending.remove(&session.record.id);
        }
        session.pending = false;
        Ok(())
    }

    pub async fn upload_status(&self, repo: &RepositoryName, id: &str) -> Result<UploadStatus> {
        let upload = self.load_upload(repo, id).await?.record;
        Ok(UploadStatus {
            id: upload.id,
            size: upload.size,
        })
    }

    /// Appends a chunk. `start` is the first byte's offset when the client sent
    /// `Content-Range`; it must equal the bytes received so far (else 416).
    pub async fn append_upload(
        &self,
        repo: &RepositoryName,
        id: &str,
        start: Option<u64>,
        data: ChunkSource<'_>,
    ) -> Result<UploadStatus> {
        let _guard = self.inner.upload_locks.lock(id).await;
        let mut session = self.load_upload(repo, id).await?;
        check_chunk_start(&session.record, start)?;
        self.persist_pending(&mut session).await?;
        let upload = session.record;
        let (pos, _) = self.append_locked(&upload, data).await?;
        Ok(UploadStatus {
            id: upload.id,
            size: pos.size,
        })
    }

    /// Writes `data` after the recorded size and records the new position and hash state.
    /// Returns the new position (size *and* backend state) and the running hasher.
    async fn append_locked(
        &self,
        upload: &UploadRecord,
        data: ChunkSource<'_>,
    ) -> Result<(UploadPosition, Option<Hasher>)> {
        let (new_pos, hasher) = self.write_locked(upload, data).await?;
        // Durable bytes before a durable position (a no-op unless the backend needs it).
        self.inner.store.sync_upload(&upload.id, &new_pos).await?;
        let state = hasher.as_ref().map(Hasher::save_state).unwrap_or_default();
        let advanced = self
            .inner
            .meta
            .advance_upload(
                &upload.id,
                upload.size,
                new_pos.size,
                &state,
                &new_pos.backend_state,
            )
            .await?;
        if !advanced {
            return Err(RegistryError::upload_changed());
        }
        Ok((new_pos, hasher))
    }

    /// Writes `data` after the recorded size, hashing it on the way, without recording the new
    /// position: until someone records it, the bytes are garbage that the next append cuts off.
    async fn write_locked(
        &self,
        upload: &UploadRecord,
        data: ChunkSource<'_>,
    ) -> Result<(UploadPosition, Option<Hasher>)> {
        let at = UploadPosition {
            size: upload.size,
            backend_state: upload.backend_state.clone(),
        };
        let (written, hasher) = match self.restore_hasher(upload) {
            Some(h) => {
                let mut hashing = Hashing::new(data, h);
                let written = self
                    .inner
                    .store
                    .append_upload(&upload.id, &at, &mut hashing)
                    .await;
                // Always taken back, also after a failed write: a hashing job in flight must
                // not outlive the request.
                match (written, hashing.finish().await) {
                    (Ok(pos), Ok(h)) => (Ok(pos), Some(h)),
                    (Ok(_), Err(e)) => (Err(StorageError::Io(e)), None),
                    (Err(e), _) => (Err(e), None),
                }
            }
            None => (
                self.inner.store.append_upload(&upload.id, &at, data).await,
                None,
            ),
        };
        match written {
            Ok(pos) => Ok((pos, hasher)),
            Err(StorageError::NotFound(_)) => Err(RegistryError::upload_unknown()),
            Err(StorageError::Io(e)) if is_client_abort(&e) => Err(RegistryError::new(
                ErrorCode::BlobUploadInvalid,
                format!("upload body was not received completely: {e}"),
            )
            .with_status(400)),
            Err(e) => Err(e.into()),
        }
    }

    fn restore_hasher(&self, upload: &UploadRecord) -> Option<Hasher> {
        let alg: Algorithm = upload.hash_algorithm.parse().ok()?;
        match Hasher::restore_state(alg, &upload.hash_state) {
            Ok(h) => Some(h),
            Err(_) => {
                tracing::warn!(upload = %upload.id, "hash state unreadable; will re-hash at commit");
                None
            }
        }
    }

    /// Completes an upload with an optional final chunk (`start` as in [`Self::append_upload`]),
    /// verifies `digest` and commits.
    ///
    /// The final chunk's position is never recorded on its own: the commit deletes the upload's
    /// row anyway, and a failed commit leaves the row at the last recorded position, which is
    /// where a retry has to start. That saves a metadata write on every single-request push.
    pub async fn finish_upload(
        &self,
        repo: &RepositoryName,
        id: &str,
        digest: &Digest,
        start: Option<u64>,
        final_chunk: Option<ChunkSource<'_>>,
    ) -> Result<u64> {
        let _guard = self.inner.upload_locks.lock(id).await;
        let mut session = self.load_upload(repo, id).await?;
        let recorded_size = session.record.size;
        let hasher;
        if let Some(data) = final_chunk {
            check_chunk_start(&session.record, start)?;
            // A session with nothing stored yet (no bytes, no backend state) whose body turns
            // out small is the whole blob: verified in memory and stored in one step.
            let whole = session.record.size == 0 && session.record.backend_state.is_empty();
            let (gathered, complete) = if whole {
                gather_small(data).await?
            } else {
                (Vec::new(), false)
            };
            if complete {
                return self.finish_small(repo, session, digest, gathered).await;
            }
            self.persist_pending(&mut session).await?;
            let mut data = futures_util::stream::iter(gathered.into_iter().map(Ok)).chain(data);
            let (pos, h) = self.write_locked(&session.record, &mut data).await?;
            // Both halves of the position: an object store's multipart id and parts changed too.
            session.record.size = pos.size;
            session.record.backend_state = pos.backend_state;
            hasher = h;
        } else {
            // An empty blob's commit creates its (empty) file.
            self.persist_pending(&mut session).await?;
            hasher = self.restore_hasher(&session.record);
        }
        let upload = session.record;
        let at = UploadPosition {
            size: upload.size,
            backend_state: upload.backend_state.clone(),
        };
        let actual = match hasher {
            Some(h) if h.algorithm() == digest.algorithm() => Some(h.finish()),
            // Another algorithm than the one hashed while receiving, or a lost state:
            // read the data back once. Costs one sequential read of the upload.
            _ => match self
                .rehash_upload(&upload.id, &at, digest.algorithm())
                .await
            {
                Ok(d) => Some(d),
                Err(StorageError::Unsupported(_)) => None,
                Err(e) => return Err(e.into()),
            },
        };
        let mismatch = |actual: &Digest| digest_mismatch(digest, actual);
        if let Some(actual) = &actual
            && actual != digest
        {
            self.discard_upload(&upload.id, &at).await;
            return Err(mismatch(actual));
        }
        let key = self
            .inner
            .store
            .commit_upload(&upload.id, &at, digest)
            .await?;
        if actual.is_none() {
            // The backend cannot read unfinished uploads: verify the committed object, which
            // no metadata points at yet and so is invisible to every client.
            let actual = self.hash_blob(&key, digest.algorithm()).await?;
            if &actual != digest {
                if let Err(e) = self.inner.store.delete_blob(&key).await {
                    tracing::warn!(%key, error = %e, "could not remove a rejected blob");
                }
                self.discard_upload(&upload.id, &at).await;
                return Err(mismatch(&actual));
            }
        }
        self.record_commit(
            repo,
            &upload,
            digest,
            BlobBytes::Stored(&key),
            &at,
            recorded_size,
        )
        .await
    }

    /// `finish_upload` for a body that arrived whole and small: hashed in memory (with the
    /// client's algorithm, so never read back), refused without storing anything when the
    /// digest differs, else stored and committed by one storage call.
    async fn finish_small(
        &self,
        repo: &RepositoryName,
        mut session: Session,
        digest: &Digest,
        data: Vec<Bytes>,
    ) -> Result<u64> {
        let mut hasher = digest.algorithm().hasher();
        for chunk in &data {
            hasher.update(chunk);
        }
        let actual = hasher.finish();
        let at = UploadPosition::default();
        if &actual != digest {
            self.discard_upload(&session.record.id, &at).await;
            return Err(digest_mismatch(digest, &actual));
        }
        let size: u64 = data.iter().map(|c| c.len() as u64).sum();
        if size <= self.inner.config.inline_blob_max {
            // Kept in the metadata row: the commit's own log write makes it durable, with no
            // file (and no inode, file sync or directory sync) per blob. The session stored
            // nothing (`finish_upload` sends only such sessions here), so nothing is left
            // behind in blob storage, and a pending session never needs its row.
            session.record.size = size;
            let content: Vec<u8> = data.concat();
            return self
                .record_commit(
                    repo,
                    &session.record,
                    digest,
                    BlobBytes::Inline(&content),
                    &at,
                    0,
                )
                .await;
        }
        // Recorded as the empty session it is: the commit ends it by compare-and-set on that
        // size.
        self.persist_pending(&mut session).await?;
        let mut upload = session.record;
        upload.size = size;
        let key = self.inner.store.put_blob(&upload.id, data, digest).await?;
        self.record_commit(repo, &upload, digest, BlobBytes::Stored(&key), &at, 0)
            .await
    }

    /// The metadata half of a commit, once `bytes` hold the verified blob: records it (ending
    /// the session by compare-and-set against `recorded_size`), or undoes the storage side
    /// when the commit is refused.
    async fn record_commit(
        &self,
        repo: &RepositoryName,
        upload: &UploadRecord,
        digest: &Digest,
        bytes: BlobBytes<'_>,
        at: &UploadPosition,
        recorded_size: u64,
    ) -> Result<u64> {
        let outcome = self
            .inner
            .meta
            .commit_blob(
                upload.repository_id,
                &digest.to_string(),
                upload.size,
                bytes,
                &upload.id,
                recorded_size,
            )
            .await?;
        let recorded = match outcome {
            CommitOutcome::Committed { storage_key, usage } => {
                self.forget_pending(&upload.id);
                self.note_usage(repo, usage);
                storage_key
            }
            CommitOutcome::QuotaExceeded(exceeded) => {
                // Nothing was recorded: drop the bytes and the session, so a refused push
                // leaves nothing behind (and nothing counted).
                self.drop_copy(bytes, "a blob refused by quota").await;
                self.discard_upload(&upload.id, at).await;
                return Err(self.quota_refused(repo, &exceeded));
            }
            CommitOutcome::UploadChanged => {
                self.drop_copy(bytes, "a blob whose upload changed").await;
                return Err(RegistryError::upload_changed());
            }
        };
        if recorded != bytes.storage_key() {
            // The same content was committed earlier under another key: keep one copy.
            self.drop_copy(bytes, "a duplicate blob copy").await;
        }
        self.emit(RegistryEvent::BlobPushed {
            repository: repo.to_string(),
            digest: digest.to_string(),
            size: upload.size,
        });
        Ok(upload.size)
    }

    /// Removes the stored copy a commit did not record (an inline blob has none).
    async fn drop_copy(&self, bytes: BlobBytes<'_>, what: &str) {
        let BlobBytes::Stored(key) = bytes else {
            return;
        };
        if let Err(e) = self.inner.store.delete_blob(key).await {
            tracing::warn!(%key, error = %e, "could not remove {what}");
        }
    }

    /// Single-request upload (`POST ?digest=`).
    pub async fn push_blob(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
        data: ChunkSource<'_>,
    ) -> Result<u64> {
        let status = self.start_upload(repo).await?;
        let result = self
            .finish_upload(repo, &status.id, digest, None, Some(data))
            .await;
        if result.is_err() {
            // Nobody else knows this upload: remove it now, from its recorded position (an
            // object store needs the multipart id in it), rather than leave it to the expiry.
            // A pending session has neither bytes nor a row: forgetting it is all.
            if !self.forget_pending(&status.id)
                && let Ok(Some(u)) = self.inner.meta.upload(&status.id).await
            {
                let at = UploadPosition {
                    size: u.size,
                    backend_state: u.backend_state,
                };
                self.discard_upload(&status.id, &at).await;
            }
        }
        result
    }

    async fn rehash_upload(
        &self,
        id: &str,
        at: &UploadPosition,
        alg: Algorithm,
    ) -> Result<Digest, StorageError> {
        let stream = self.inner.store.read_upload(id, at).await?;
        hash_stream(stream, alg).await
    }

    async fn hash_blob(&self, key: &str, alg: Algorithm) -> Result<Digest> {
        let stream = self.inner.store.read_blob(key, None).await?;
        Ok(hash_stream(stream, alg).await?)
    }

    /// Open sessions that are only in this process's memory (no row yet).
    pub fn pending_uploads(&self) -> usize {
        self.inner
            .pending_uploads
            .as_ref()
            .map_or(0, PendingUploads::len)
    }

    /// Drops `id` from the pending sessions; whether it was one.
    fn forget_pending(&self, id: &str) -> bool {
        self.inner
            .pending_uploads
            .as_ref()
            .is_some_and(|p| p.remove(id))
    }

    /// Removes an upload's bytes and row; failures are logged (the expiry sweep retries).
    async fn discard_upload(&self, id: &str, at: &UploadPosition) {
        if self.forget_pending(id) {
            return;
        }
        if let Err(e) = self.inner.store.abort_upload(id, at).await {
            tracing::warn!(upload = id, error = %e, "could not remove upload data");
        }
        if let Err(e) = self.inner.meta.delete_upload(id).await {
            tracing::warn!(upload = id, error = %e, "could not remove upload row");
        }
    }

    /// Cancels an upload (`DELETE` on its location).
    pub async fn cancel_upload(&self, repo: &RepositoryName, id: &str) -> Result<()> {
        let _guard = self.inner.upload_locks.lock(id).await;
        let session = self.load_upload(repo, id).await?;
        if session.pending {
            self.forget_pending(id);
            return Ok(());
        }
        let upload = session.record;
        let at = UploadPosition {
            size: upload.size,
            backend_state: upload.backend_state.clone(),
        };
        self.inner.store.abort_upload(id, &at).await?;
        self.inner.meta.delete_upload(id).await?;
        Ok(())
    }

    /// Links a blob that `from` can see into `repo`. Returns false when `from` does not have
    /// it (the caller then opens a normal upload session).
    pub async fn mount_blob(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
        from: &RepositoryName,
    ) -> Result<bool> {
        let Some(from_id) = self.repository_id(from).await? else {
            return Ok(false);
        };
        let digest_s = digest.to_string();
        if self
            .inner
            .meta
            .repository_blob(from_id, &digest_s)
            .await?
            .is_none()
        {
            return Ok(false);
        }
        let repository_id = self.inner.meta.ensure_repository(repo.as_str()).await?;
        let linked = match self.inner.meta.link_blob(repository_id, &digest_s).await? {
            LinkOutcome::Linked { usage } => {
                self.note_usage(repo, usage);
                true
            }
            LinkOutcome::UnknownBlob => false,
            LinkOutcome::QuotaExceeded(q) => return Err(self.quota_refused(repo, &q)),
        };
        if linked {
            self.emit(RegistryEvent::BlobMounted {
                repository: repo.to_string(),
                from: from.to_string(),
                digest: digest_s,
            });
        }
        Ok(linked)
    }

    /// Removes uploads idle for longer than the configured expiry. Returns how many.
    pub async fn purge_stale_uploads(&self) -> Result<usize> {
        let cutoff = now_ms() - self.inner.config.upload_expiry.as_millis() as i64;
        let mut purged = self
            .inner
            .pending_uploads
            .as_ref()
            .map_or(0, |p| p.expire(cutoff));
        loop {
            let batch = self.inner.meta.stale_uploads(cutoff, 100).await?;
            if batch.is_empty() {
                break;
            }
            for upload in &batch {
                let _guard = self.inner.upload_locks.lock(&upload.id).await;
                let at = UploadPosition {
                    size: upload.size,
                    backend_state: upload.backend_state.clone(),
                };
                self.inner.store.abort_upload(&upload.id, &at).await?;
                self.inner.meta.delete_upload(&upload.id).await?;
                purged += 1;
            }
            if batch.len() < 100 {
                break;
            }
        }
        if purged > 0 {
            tracing::info!(purged, "removed expired uploads");
        }
        Ok(purged)
    }
}

/// A chunk sent with `Content-Range` must start where the upload ends (else 416).
fn check_chunk_start(upload: &UploadRecord, start: Option<u64>) -> Result<()> {
    match start {
        Some(start) if start != upload.size => {
            let mut err = RegistryError::new(
                ErrorCode::BlobUploadInvalid,
                format!(
                    "chunk starts at byte {start} but the upload holds {} bytes",
                    upload.size
                ),
            )
            .with_status(416);
            err.upload = Some(UploadStatus {
                id: upload.id.clone(),
                size: upload.size,
            });
            Err(err)
        }
        _ => Ok(()),
    }
}

async fn hash_stream(
    mut stream: kura_storage::ByteStream,
    alg: Algorithm,
) -> Result<Digest, StorageError> {
    let mut h = alg.hasher();
    while let Some(chunk) = stream.next().await {
        h.update(&chunk?);
    }
    Ok(h.finish())
}

/// Errors raised while reading the request body: the client went away or sent too little.
/// (The HTTP layer reports body errors as `UnexpectedEof`.)
fn is_client_abort(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::BrokenPipe
    )
}
