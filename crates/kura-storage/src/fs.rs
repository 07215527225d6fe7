//! Filesystem backend. Layout under the root:
//!
//! ```text
//! blobs/up/<first two chars of id>/<upload id>  committed, immutable blobs
//!                                               (the storage key is the part after blobs/)
//! uploads/<upload id>                           bytes of an upload in progress (made by
//!                                               its first write)
//! ```
//!
//! A committed blob keeps the id of the upload that produced it, never its digest: two
//! commits of the same content get different keys, so garbage collection deleting an old,
//! unreferenced copy can never remove the file a concurrent upload of the same digest has just
//! committed (with digest-derived keys the rename of the new copy and the delete of the old
//! one name the same path). Metadata maps digest to key; a duplicate copy is deleted by the
//! caller. Keys of the older digest-derived layout (`<alg>/<2 hex>/<hex>`) are still read.
//!
//! A commit is a `rename` from `uploads/` into `blobs/` on the same filesystem, so a blob is
//! either wholly visible or absent. With strict durability the data file and both directories
//! are fsync'ed before the commit returns.

use std::io::{self, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use kura_oci::Digest;
use tokio::fs;

use crate::cached_io;
use crate::upload_file::{self, UploadFile, WriteBuffer};
use crate::{
    BlobStore, ByteRange, ByteStream, ChunkSource, Durability, Result, SerialJob, SerialQueue,
    StorageError, StoredObject, UploadPosition,
};

/// Read buffer for streaming blobs out: large enough to keep syscalls per GiB low.
const READ_CHUNK: usize = 256 * 1024;
/// The first read of a whole blob, done in the same blocking call that opens the file: the
/// size is not known before the open, and this much takes a config or small layer in one
/// hand-off without reserving a full READ_CHUNK for every small blob.
const FIRST_READ: usize = 64 * 1024;
/// Write buffer for upload data.
const WRITE_BUFFER: usize = 1024 * 1024;
/// With strict durability, start the kernel's writeback of an upload every this many bytes, so
/// the fsync at commit finds little left to write instead of the whole blob.
const WRITEBACK_EVERY: usize = 16 * 1024 * 1024;

pub struct FsBlobStore {
    root: PathBuf,
    durability: Durability,
    /// Read what the page cache holds on the runtime thread ([`cached_io`]); off only in
    /// tests, which run the backend suite both ways so the blocking path stays covered.
    cached_reads: bool,
    /// Write large upload bodies with direct I/O ([`upload_file`]), until the file system
    /// refuses it. Relaxed durability too: it skips the syncs, but the copy into the page
    /// cache is what bounds a large push on this VM once memory holds a few GiB of cached
    /// files (BENCHMARKS.md, session 9).
    direct_writes: Arc<AtomicBool>,
}

impl FsBlobStore {
    /// Opens (creating if needed) a store rooted at `root`.
    pub async fn open(root: impl Into<PathBuf>, durability: Durability) -> Result<FsBlobStore> {
        let root = root.into();
        fs::create_dir_all(root.join("blobs")).await?;
        fs::create_dir_all(root.join("uploads")).await?;
        Ok(FsBlobStore {
            root,
            durability,
            cached_reads: true,
            direct_writes: Arc::new(AtomicBool::new(true)),
        })
    }

    /// An upload's data file, the key its blob gets and that key's path.
    fn commit_paths(&self, upload_id: &str) -> Result<(PathBuf, String, PathBuf)> {
        let src = self.upload_path(upload_id)?;
        let key = Self::key_for(upload_id);
        let dst = self.blob_path(&key)?;
        Ok((src, key, dst))
    }

    /// The storage key of an upload's blob: `up/<first two chars>/<upload id>`.
    fn key_for(upload_id: &str) -> String {
        format!("up/{}/{upload_id}", &upload_id[..2.min(upload_id.len())])
    }

    fn blob_path(&self, key: &str) -> Result<PathBuf> {
        // Keys come from our metadata, but never let one name a path outside blobs/.
        let ok = key.split('/').count() == 3
            && key.split('/').all(|c| {
                !c.is_empty()
                    && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !c.starts_with('-')
            });
        if !ok {
            return Err(StorageError::NotFound(format!("blob key {key:?}")));
        }
        Ok(self.root.join("blobs").join(key))
    }

    fn upload_path(&self, upload_id: &str) -> Result<PathBuf> {
        crate::check_upload_id(upload_id)?;
        Ok(self.root.join("uploads").join(upload_id))
    }
}

/// Names in a directory, sorted bytewise; a missing directory is empty.
async fn sorted_entries(dir: &Path) -> Result<Vec<String>> {
    let mut rd = match fs::read_dir(dir).await {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut names = Vec::new();
    while let Some(entry) = rd.next_entry().await? {
        if let Ok(name) = entry.file_name().into_string() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// The writing half of [`FsBlobStore::append_upload`]: full buffers go into a
/// [`SerialQueue`] whose job writes them in order, opening the file with its first write and
/// handing buffers back for reuse. The receiver waits only when [`WRITES_QUEUED`] buffers are
/// already waiting: with one write in flight at a time and the receiver waiting for it,
/// receiving, hashing and writing took turns (BENCHMARKS.md, session 13). Dropping the writer
/// (a cancelled append) drops the writes not yet started.
struct UploadWriter {
    writes: SerialQueue<FileWrites>,
    /// Buffers the writing job is done with.
    spares: Arc<Mutex<Vec<WriteBuffer>>>,
    /// The recorded position the append started from (where the file is cut when opened).
    start: u64,
    /// Where the next buffer goes.
    offset: u64,
    early_writeback: bool,
    since_writeback: usize,
}

/// Full buffers that may wait for the writing job before the receiver stops.
const WRITES_QUEUED: usize = 2;
/// Written buffers kept for reuse, as many as may wait in the queue: the receiver then finds
/// a spare in the steady state, and more would only hold memory.
const SPARES: usize = 2;

/// The writing job's state: the upload file, opened by the first write.
struct FileWrites {
    path: PathBuf,
    upload_id: String,
    start: u64,
    direct: Arc<AtomicBool>,
    file: Option<UploadFile>,
    spares: Arc<Mutex<Vec<WriteBuffer>>>,
}

struct QueuedWrite {
    buf: WriteBuffer,
    offset: u64,
    last: bool,
    writeback: bool,
}

impl SerialJob for FileWrites {
    type Item = QueuedWrite;
    type Error = StorageError;
    const WHAT: &'static str = "writing";

    fn run(&mut self, job: QueuedWrite) -> Result<()> {
        let file = match &mut self.file {
            Some(f) => f,
            // A body that is all in its first buffer goes through the page cache.
            None => self.file.insert(UploadFile::open_at(
                &self.path,
                self.start,
                &self.upload_id,
                &self.direct,
                !job.last,
            )?),
        };
        file.write_at(job.offset, job.buf.data(), &self.direct)?;
        if job.writeback
            && let Some(page_cached) = file.page_cache_file()
        {
            start_writeback(page_cached);
        }
        if job.buf.capacity() == WRITE_BUFFER {
            let mut spares = lock_spares(&self.spares);
            if spares.len() < SPARES {
                spares.push(job.buf);
            }
        }
        Ok(())
    }
}

fn lock_spares(spares: &Mutex<Vec<WriteBuffer>>) -> MutexGuard<'_, Vec<WriteBuffer>> {
    spares.lock().unwrap_or_else(|e| e.into_inner())
}

impl UploadWriter {
    fn new(
        path: PathBuf,
        upload_id: &str,
        start: u64,
        direct: Arc<AtomicBool>,
        early_writeback: bool,
    ) -> UploadWriter {
        let spares = Arc::new(Mutex::new(Vec::new()));
        let file = FileWrites {
            path,
            upload_id: upload_id.to_string(),
            start,
            direct,
            file: None,
            spares: spares.clone(),
        };
        UploadWriter {
            writes: SerialQueue::new(file, WRITES_QUEUED),
            spares,
            start,
            offset: start,
            early_writeback,
            since_writeback: 0,
        }
    }

    /// A buffer for bytes from file offset `offset` on: a spare one; else a full-sized one,
    /// or for the append's first buffer one sized for the `first` chunk (at most
    /// WRITE_BUFFER), so that a small body allocates little.
    fn buffer(&mut self, offset: u64, first: usize) -> WriteBuffer {
        if let Some(mut b) = lock_spares(&self.spares).pop() {
            b.reset(offset);
            return b;
        }
        if self.offset > self.start {
            return WriteBuffer::new(WRITE_BUFFER, offset);
        }
        let want = first.next_multiple_of(upload_file::ALIGN);
        WriteBuffer::new(want.clamp(upload_file::ALIGN, WRITE_BUFFER), offset)
    }

    /// Queues `buf` for the next offset, once there is room; `last`: no more follow in this
    /// append.
    async fn write(&mut self, buf: WriteBuffer, last: bool) -> Result<()> {
        self.since_writeback += buf.len();
        let writeback = self.early_writeback && self.since_writeback >= WRITEBACK_EVERY;
        if writeback {
            self.since_writeback = 0;
        }
        let offset = self.offset;
        self.offset += buf.len() as u64;
        self.writes
            .push(QueuedWrite {
                buf,
                offset,
                last,
                writeback,
            })
            .await
    }

    /// Drops the queued writes (nobody records this append's position) and waits for the one
    /// in flight: once the caller releases the upload, a retry must not race a stale write
    /// into the same file.
    async fn abandon(self) {
        self.writes.clear();
        self.writes.settle().await.ok();
    }

    /// Waits for the last write. An append that wrote nothing still opens (and, for a
    /// session's first append, creates) the file, as a non-empty one would.
    async fn finish(self) -> Result<()> {
        let done = self.writes.finish().await?;
        if done.file.is_none() {
            tokio::task::spawn_blocking(move || {
                UploadFile::open_at(&done.path, done.start, &done.upload_id, &done.direct, false)
                    .map(drop)
            })
            .await
            .map_err(join_error)??;
        }
        Ok(())
    }
}

/// The second half of a commit: makes `file` (the upload's data at `src`) durable, renames it
/// to `dst` (making the shard directory if needed) and makes the rename durable.
fn publish(
    file: std::fs::File,
    src: &Path,
    dst: &Path,
    uploads_dir: &Path,
    strict: bool,
) -> Result<()> {
    if strict {
        file.sync_all()?;
    }
    drop(file);
    let dir = dst.parent().expect("blob path has a parent");
    let created = ensure_dir(dir)?;
    std::fs::rename(src, dst)?;
    if strict {
        sync_entries(dir, created)?;
        std::fs::File::open(uploads_dir)?.sync_all()?;
    }
    Ok(())
}

/// Makes the entries of `dir` durable, and `dir` itself when [`ensure_dir`] just `created` it
/// (a directory made just now is durable only once its parents' entries are).
fn sync_entries(dir: &Path, created: Vec<PathBuf>) -> io::Result<()> {
    for made in created {
        std::fs::File::open(made.parent().expect("below the root"))?.sync_all()?;
    }
    std::fs::File::open(dir)?.sync_all()
}

/// Creates `dir` and any missing parents; returns the directories it made, outermost first.
fn ensure_dir(dir: &Path) -> io::Result<Vec<PathBuf>> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(vec![dir.to_path_buf()]),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(Vec::new()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let mut made = ensure_dir(dir.parent().ok_or(e)?)?;
            match std::fs::create_dir(dir) {
                Ok(()) => made.push(dir.to_path_buf()),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
            Ok(made)
        }
        Err(e) => Err(e),
    }
}

/// Asks the kernel to start writing the file's dirty pages now, without waiting for them.
#[cfg(target_os = "linux")]
fn start_writeback(file: &std::fs::File) {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is open for the duration of the call; the flags only start I/O.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &std::fs::File) {}

fn join_error(e: tokio::task::JoinError) -> StorageError {
    StorageError::Io(io::Error::other(e))
}

/// Streams `remaining` bytes of `file` from its current position, in chunks of up to
/// READ_CHUNK bytes read straight into the buffer that is handed on (tokio's `fs::File` would
/// read into its own buffer and copy: one more copy per byte and one more buffer per stream,
/// which 32 concurrent pulls pay 32 times). `first` holds bytes already read from that
/// position (the caller's open did the first read), which count towards `remaining`.
///
/// A chunk the page cache holds is read on the runtime thread ([`cached_io::read_cached`]):
/// no hand-off at all. A chunk that needs the disk is read on the blocking pool, and then the
/// next chunk's read starts there as soon as one is handed on, so the disk read overlaps the
/// socket write even when the HTTP layer queues only one chunk per connection (see
/// kura-server's `HTTP1_MAX_BUF`): a stream holds at most the chunk being sent and the one
/// read ahead.
fn blocking_chunks(
    file: std::fs::File,
    first: Vec<u8>,
    remaining: u64,
    cached_reads: bool,
) -> ByteStream {
    type Read = tokio::task::JoinHandle<io::Result<(std::fs::File, Vec<u8>)>>;
    struct State {
        file: Option<std::fs::File>,
        first: Vec<u8>,
        read_ahead: Option<Read>,
        remaining: u64,
    }
    // Buffers are allocated on the runtime thread, never in a blocking closure: glibc gives
    // every blocking-pool thread its own arena, and 32 pulls spread over 32 threads kept a few
    // buffers' worth of freed memory in each (peak RSS 83 instead of 65 MiB).
    fn buffer(remaining: u64) -> Vec<u8> {
        Vec::with_capacity(remaining.min(READ_CHUNK as u64) as usize)
    }
    fn read_on_pool(file: std::fs::File, mut buf: Vec<u8>) -> Read {
        tokio::task::spawn_blocking(move || -> io::Result<_> {
            let want = buf.capacity() as u64;
            read_at_most(&file, want, &mut buf)?;
            Ok((file, buf))
        })
    }
    let state = State {
        file: Some(file),
        first,
        read_ahead: None,
        remaining,
    };
    Box::pin(futures_util::stream::try_unfold(
        state,
        move |mut st| async move {
            if st.remaining == 0 {
                return Ok(None);
            }
            // Set when the page cache missed: the next chunk is then likely cold too, and its
            // read starts on the pool at once. After that read-ahead the cache is tried again
            // (the kernel's own readahead may have caught up).
            let mut missed = false;
            let buf = if !st.first.is_empty() {
                std::mem::take(&mut st.first)
            } else if let Some(job) = st.read_ahead.take() {
                let (file, buf) = job.await.map_err(io::Error::other)??;
                st.file = Some(file);
                buf
            } else {
                let file = st
                    .file
                    .take()
                    .expect("the file is here when no read is in flight");
                let mut buf = buffer(st.remaining);
                let cached = if cached_reads {
                    cached_io::read_cached(&file, buf.capacity(), &mut buf)?
                } else {
                    None
                };
                match cached {
                    Some(n) if n > 0 => {
                        st.file = Some(file);
                        buf
                    }
                    _ => {
                        let (file, buf) =
                            read_on_pool(file, buf).await.map_err(io::Error::other)??;
                        st.file = Some(file);
                        missed = true;
                        buf
                    }
                }
            };
            if buf.is_empty() {
                // The file is shorter than its recorded size: end the body short, which the
                // client sees as a truncated transfer rather than a silently wrong blob.
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "blob file ended before its recorded size",
                ));
            }
            st.remaining -= buf.len() as u64;
            if missed && st.remaining > 0 {
                let file = st.file.take().expect("just put back");
                st.read_ahead = Some(read_on_pool(file, buffer(st.remaining)));
            }
            Ok(Some((bytes::Bytes::from(buf), st)))
        },
    ))
}

/// Reads up to `want` bytes (never more than `buf`'s spare capacity was sized for) at the file
/// position into `buf`; fewer only at the end of the file.
fn read_at_most(file: &std::fs::File, want: u64, buf: &mut Vec<u8>) -> io::Result<()> {
    use std::io::Read;
    file.take(want).read_to_end(buf)?;
    Ok(())
}

fn not_found(e: io::Error, what: impl FnOnce() -> String) -> StorageError {
    if e.kind() == io::ErrorKind::NotFound {
        StorageError::NotFound(what())
    } else {
        StorageError::Io(e)
    }
}

#[async_trait]
impl BlobStore for FsBlobStore {
    fn kind(&self) -> &'static str {
        "filesystem"
    }

    async fn blob_size(&self, key: &str) -> Result<Option<u64>> {
        match fs::metadata(self.blob_path(key)?).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn read_blob(&self, key: &str, range: Option<ByteRange>) -> Result<ByteStream> {
        let path = self.blob_path(key)?;
        let key = key.to_string();
        let (start, len) = match range {
            Some(r) => (r.start, Some(r.len())),
            None => (0, None),
        };
        let mut first = Vec::with_capacity(match len {
            Some(len) => len.min(READ_CHUNK as u64) as usize,
            None => FIRST_READ,
        });
        // Open, size, seek and the first read on the runtime thread when the kernel's caches
        // hold all of it (no hand-off for a hot config or range), else in one blocking call.
        let open_at = move |mut file: std::fs::File| -> io::Result<(std::fs::File, u64)> {
            use std::io::Seek;
            let size = file.metadata()?.len();
            if start > 0 {
                file.seek(SeekFrom::Start(start))?;
            }
            Ok((file, len.unwrap_or(size.saturating_sub(start))))
        };
        let opened = if self.cached_reads {
            cached_io::open_cached(&path)
        } else {
            Ok(None)
        };
        let cached = match opened {
            Ok(Some(file)) => Some(open_at(file)?),
            Ok(None) => None,
            Err(e) => return Err(not_found(e, || key)),
        };
        let (file, first, remaining) = match cached {
            Some((file, remaining)) => {
                let want = remaining.min(first.capacity() as u64) as usize;
                // A miss leaves `first` empty; the stream then reads it on the pool.
                cached_io::read_cached(&file, want, &mut first)?;
                (file, first, remaining)
            }
            None => tokio::task::spawn_blocking(move || -> Result<_> {
                let file = std::fs::File::open(&path).map_err(|e| not_found(e, || key))?;
                let (file, remaining) = open_at(file)?;
                read_at_most(&file, remaining.min(first.capacity() as u64), &mut first)?;
                Ok((file, first, remaining))
            })
            .await
            .map_err(join_error)??,
        };
        Ok(blocking_chunks(file, first, remaining, self.cached_reads))
    }

    async fn delete_blob(&self, key: &str) -> Result<()> {
        match fs::remove_file(self.blob_path(key)?).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn create_upload(&self, upload_id: &str) -> Result<UploadPosition> {
        // The file is created by the first write (or by the commit of an empty blob), so that
        // opening a session costs no trip to the blocking pool.
        self.upload_path(upload_id)?;
        Ok(UploadPosition::default())
    }

    fn uploads_start_empty(&self) -> bool {
        true
    }

    async fn append_upload(
        &self,
        upload_id: &str,
        at: &UploadPosition,
        data: ChunkSource<'_>,
    ) -> Result<UploadPosition> {
        // The body is gathered into buffers of WRITE_BUFFER bytes (the first one sized to the
        // first chunk, so a small body allocates little), and full buffers are queued for the
        // writing job while the next ones fill (so receiving and hashing overlap with
        // writing). The file is opened by the job's first write: a small body costs one
        // hand-off to the blocking pool in all, not one per file operation.
        let mut writer = UploadWriter::new(
            self.upload_path(upload_id)?,
            upload_id,
            at.size,
            self.direct_writes.clone(),
            self.durability == Durability::Strict,
        );
        let mut pending: Option<WriteBuffer> = None;
        let mut size = at.size;
        while let Some(chunk) = data.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(e) => {
                    writer.abandon().await;
                    return Err(e.into());
                }
            };
            let mut rest: &[u8] = &chunk;
            while !rest.is_empty() {
                let buf = pending.get_or_insert_with(|| writer.buffer(size, rest.len()));
                let take = buf.room().min(rest.len());
                buf.push(&rest[..take]);
                rest = &rest[take..];
                size += take as u64;
                if buf.room() == 0 {
                    let full = pending.take().expect("filled above");
                    writer.write(full, false).await?;
                }
            }
        }
        if let Some(last) = pending.take() {
            writer.write(last, true).await?;
        }
        writer.finish().await?;
        Ok(UploadPosition {
            size,
            backend_state: String::new(),
        })
    }

    async fn sync_upload(&self, upload_id: &str, at: &UploadPosition) -> Result<()> {
        if self.durability != Durability::Strict || at.size == 0 {
            return Ok(());
        }
        let path = self.upload_path(upload_id)?;
        let id = upload_id.to_string();
        tokio::task::spawn_blocking(move || -> Result<()> {
            let file = std::fs::File::open(&path).map_err(|e| upload_file::not_found(e, &id))?;
            // The writes started their writeback as they went (`start_writeback`), so this
            // mostly waits for the last few MiB.
            file.sync_data()?;
            Ok(())
        })
        .await
        .map_err(join_error)?
    }

    async fn read_upload(&self, upload_id: &str, at: &UploadPosition) -> Result<ByteStream> {
        let path = self.upload_path(upload_id)?;
        if at.size == 0 {
            // Nothing written yet, and perhaps no file (it is made by the first write).
            return Ok(futures_util::stream::empty().boxed());
        }
        let id = upload_id.to_string();
        let file = tokio::task::spawn_blocking(move || {
            std::fs::File::open(&path).map_err(|e| upload_file::not_found(e, &id))
        })
        .await
        .map_err(join_error)??;
        Ok(blocking_chunks(
            file,
            Vec::new(),
            at.size,
            self.cached_reads,
        ))
    }

    async fn commit_upload(
        &self,
        upload_id: &str,
        at: &UploadPosition,
        _digest: &Digest,
    ) -> Result<String> {
        let (src, key, dst) = self.commit_paths(upload_id)?;
        let uploads_dir = self.root.join("uploads");
        let strict = self.durability == Durability::Strict;
        let size = at.size;
        let id = upload_id.to_string();
        // One blocking call for the whole commit: a small blob's push is dominated by hand-offs
        // between threads, not by the file system.
        tokio::task::spawn_blocking(move || -> Result<()> {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create(size == 0)
                .truncate(false)
                .open(&src)
                .map_err(|e| upload_file::not_found(e, &id))?;
            upload_file::cut_to_recorded(&file, size, &id)?;
            publish(file, &src, &dst, &uploads_dir, strict)
        })
        .await
        .map_err(join_error)??;
        Ok(key)
    }

    async fn put_blob(
        &self,
        upload_id: &str,
        data: Vec<Bytes>,
        _digest: &Digest,
    ) -> Result<String> {
        let (_, key, dst) = self.commit_paths(upload_id)?;
        let strict = self.durability == Durability::Strict;
        // Written in place under the blob's own key, in one blocking call (a small push's
        // time goes to hand-offs): the key is this upload's alone and no metadata names it
        // until the caller records the commit, so no reader can see the file half written,
        // and GC leaves it alone while the session exists (`upload_id_of_key`). Against
        // writing to `uploads/` and renaming, this saves the rename and the second
        // directory sync.
        tokio::task::spawn_blocking(move || -> Result<()> {
            use std::io::Write;
            let dir = dst.parent().expect("blob path has a parent");
            let created = ensure_dir(dir)?;
            // Created afresh: whatever an earlier, interrupted attempt left is replaced.
            let mut file = std::fs::File::create(&dst)?;
            for chunk in &data {
                file.write_all(chunk)?;
            }
            if strict {
                file.sync_data()?;
                sync_entries(dir, created)?;
            }
            Ok(())
        })
        .await
        .map_err(join_error)??;
        Ok(key)
    }

    async fn abort_upload(&self, upload_id: &str, _at: &UploadPosition) -> Result<()> {
        let path = self.upload_path(upload_id)?;
        match fs::remove_file(path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn list_blobs(&self, after: Option<&str>, limit: usize) -> Result<Vec<StoredObject>> {
        // Keys have exactly three components; walk the tree in sorted order, skipping whole
        // directories that sort before `after`, so a page costs what it returns.
        let after: Vec<&str> = after.map(|a| a.split('/').collect()).unwrap_or_default();
        let mut out = Vec::new();
        let root = self.root.join("blobs");
        for a in sorted_entries(&root).await? {
            if after.first().is_some_and(|x| a.as_str() < *x) {
                continue;
            }
            for b in sorted_entries(&root.join(&a)).await? {
                if after.first() == Some(&a.as_str())
                    && after.get(1).is_some_and(|x| b.as_str() < *x)
                {
                    continue;
                }
                for c in sorted_entries(&root.join(&a).join(&b)).await? {
                    let key = format!("{a}/{b}/{c}");
                    if !after.is_empty() && key.as_str() <= after.join("/").as_str() {
                        continue;
                    }
                    if self.blob_path(&key).is_err() {
                        continue;
                    }
                    let meta = match fs::metadata(root.join(&a).join(&b).join(&c)).await {
                        Ok(m) => m,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(e.into()),
                    };
                    let modified_ms = meta
                        .modified()
                        .ok()
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map(|d| d.as_millis() as i64)
                        .unwrap_or(0);
                    out.push(StoredObject {
                        key,
                        size: meta.len(),
                        modified_ms,
                    });
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
            }
        }
        Ok(out)
    }

    async fn check(&self) -> Result<()> {
        let probe = self.root.join("uploads").join(".readyz");
        fs::write(&probe, b"ok").await?;
        fs::remove_file(&probe).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn filesystem_passes_the_backend_suite() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::open(dir.path(), Durability::Strict)
            .await
            .unwrap();
        crate::conformance::run_all(&store).await;
    }

    /// A blob whose middle is not in the page cache: the stream moves from cached reads to
    /// the blocking pool (with its read-ahead) and back, and the bytes come out in order.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_partly_cached_blob_reads_back_whole() {
        use std::os::fd::AsRawFd;
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::open(dir.path(), Durability::Strict)
            .await
            .unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let digest = kura_oci::Algorithm::Sha256.digest_of(&data);
        let p0 = store.create_upload("partly").await.unwrap();
        let mut body = futures_util::stream::iter(vec![Ok(bytes::Bytes::from(data.clone()))]);
        let pos = store.append_upload("partly", &p0, &mut body).await.unwrap();
        // Strict durability synced it, so its pages are clean and can be dropped: all of
        // them (a large folio only partly inside a range would stay), then a middle part is
        // read back in.
        let key = store.commit_upload("partly", &pos, &digest).await.unwrap();
        let file = std::fs::File::open(store.blob_path(&key).unwrap()).unwrap();
        // SAFETY: a plain advisory call on an open descriptor.
        let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(rc, 0);
        let mut middle = vec![0u8; 400_000];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut middle, 1_200_000).unwrap();
        let mut got = Vec::new();
        let mut chunks = 0;
        let mut s = store.read_blob(&key, None).await.unwrap();
        while let Some(c) = s.next().await {
            got.extend_from_slice(&c.unwrap());
            chunks += 1;
        }
        assert!(got == data, "{} bytes in {chunks} chunks", got.len());
    }

    /// The same suite with every read on the blocking pool (what a cold page cache gets).
    #[tokio::test]
    async fn filesystem_passes_the_backend_suite_without_cached_reads() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = FsBlobStore::open(dir.path(), Durability::Relaxed)
            .await
            .unwrap();
        store.cached_reads = false;
        crate::conformance::run_all(&store).await;
    }

    /// `uploads_start_empty` is a promise the registry builds on (a session that has not
    /// written may have no metadata row): opening an upload must leave no file.
    #[tokio::test]
    async fn opening_an_upload_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::open(dir.path(), Durability::Strict)
            .await
            .unwrap();
        assert!(store.uploads_start_empty());
        store.create_upload("fresh").await.unwrap();
        assert!(!dir.path().join("uploads").join("fresh").exists());
    }

    /// A recorded position past the bytes the file holds (they were lost in a crash before
    /// they reached the disk) must not be committed as a zero-padded blob.
    #[tokio::test]
    async fn a_commit_refuses_an_upload_that_lost_recorded_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::open(dir.path(), Durability::Strict)
            .await
            .unwrap();
        let data = vec![7u8; 100];
        let digest = kura_oci::Algorithm::Sha256.digest_of(&data);
        let p0 = store.create_upload("lost").await.unwrap();
        let mut body = futures_util::stream::iter(vec![Ok(bytes::Bytes::from(data))]);
        let pos = store.append_upload("lost", &p0, &mut body).await.unwrap();
        store.sync_upload("lost", &pos).await.unwrap();
        let file = dir.path().join("uploads").join("lost");
        std::fs::OpenOptions::new()
            .write(true)
            .open(&file)
            .unwrap()
            .set_len(60)
            .unwrap();
        match store.commit_upload("lost", &pos, &digest).await {
            Err(StorageError::Conflict(m)) => assert!(m.contains("60"), "{m}"),
            other => panic!("expected a conflict, got {other:?}"),
        }
        assert_eq!(std::fs::metadata(&file).unwrap().len(), 60);
        assert!(store.list_blobs(None, 10).await.unwrap().is_empty());
    }

    /// Appends of many write buffers, from offsets on and off the block size, in chunks of
    /// odd sizes and with a receiver that pauses now and then: the writing job takes queued
    /// buffers on its own, and every byte lands at its offset, in both durability modes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn multi_buffer_appends_keep_every_byte_in_place() {
        for durability in [Durability::Strict, Durability::Relaxed] {
            let dir = tempfile::tempdir().unwrap();
            let store = FsBlobStore::open(dir.path(), durability).await.unwrap();
            let data: Vec<u8> = (0..7 * WRITE_BUFFER as u32 + 12_345)
                .map(|i| (i % 253) as u8 ^ (i >> 16) as u8)
                .collect();
            let mut pos = store.create_upload("many").await.unwrap();
            // The first append ends off the block size, so the next starts off it too.
            for part in [&data[..1_000_003], &data[1_000_003..]] {
                let chunks: Vec<io::Result<Bytes>> = part
                    .chunks(100_003)
                    .map(|c| Ok(Bytes::copy_from_slice(c)))
                    .collect();
                let slow = futures_util::stream::iter(chunks).then(|c| async move {
                    if c.as_ref().is_ok_and(|c| c[0] % 5 == 0) {
                        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                    }
                    c
                });
                let mut body = Box::pin(slow);
                pos = store.append_upload("many", &pos, &mut body).await.unwrap();
                store.sync_upload("many", &pos).await.unwrap();
            }
            assert_eq!(pos.size, data.len() as u64);
            let on_disk = std::fs::read(dir.path().join("uploads").join("many")).unwrap();
            assert!(
                on_disk == data,
                "{durability:?}: {} bytes differ",
                on_disk.len()
            );
        }
    }

    /// A body that fails half way leaves no write running once the append has returned: the
    /// next append (a retry) cuts the file to the recorded size and nothing lands after it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_body_leaves_no_write_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::open(dir.path(), Durability::Relaxed)
            .await
            .unwrap();
        let p0 = store.create_upload("broken").await.unwrap();
        let mut chunks: Vec<io::Result<Bytes>> = (0..40)
            .map(|i| Ok(Bytes::from(vec![i as u8; 256 * 1024])))
            .collect();
        chunks.push(Err(io::Error::new(io::ErrorKind::ConnectionReset, "gone")));
        let mut body = futures_util::stream::iter(chunks);
        assert!(store.append_upload("broken", &p0, &mut body).await.is_err());
        let file = dir.path().join("uploads").join("broken");
        let after_error = std::fs::metadata(&file).unwrap().len();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(std::fs::metadata(&file).unwrap().len(), after_error);
        let mut retry = futures_util::stream::iter(vec![Ok(Bytes::from_static(b"again"))]);
        let pos = store
            .append_upload("broken", &p0, &mut retry)
            .await
            .unwrap();
        assert_eq!(pos.size, 5);
        assert_eq!(std::fs::read(&file).unwrap(), b"again");
    }

    #[tokio::test]
    async fn upload_ids_cannot_escape_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::open(dir.path(), Durability::Relaxed)
            .await
            .unwrap();
        for bad in ["../x", "a/b", "", "..", "x\0"] {
            assert!(store.create_upload(bad).await.is_err(), "{bad:?}");
        }
    }
}
