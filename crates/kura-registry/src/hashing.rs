//! Hashing an upload's bytes as they pass on their way to storage.
//!
//! SHA-256 runs at about the speed of the network and of the disk together, so hashing in the
//! task that receives a large body made one core the bound of the whole push (half of the
//! server's samples during a 1 GiB push, BENCHMARKS.md). Past its first [`INLINE`] bytes, a
//! body is therefore hashed in batches on the blocking pool, one batch in flight while the
//! next is received and written: receiving, hashing and writing each get a core when there
//! are cores to give. Small bodies stay in line, where a hand-off would cost more than the
//! hash. The batches share the chunks' buffers (`Bytes` clones), and a full batch that cannot
//! be handed over yet stops the stream until it can, so at most three batches are held.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::{FutureExt, Stream, StreamExt};
use kura_oci::Hasher;
use kura_storage::ChunkSource;
use tokio::task::JoinHandle;

/// Bytes of a body hashed in line before batches start.
const INLINE: u64 = 1024 * 1024;
/// Bytes per batch handed to the blocking pool.
const BATCH: usize = 1024 * 1024;

/// A stream adapter that feeds every chunk passing through to a hasher; [`Hashing::finish`]
/// gives the hasher back once the stream has ended.
pub(crate) struct Hashing<'a> {
    inner: ChunkSource<'a>,
    /// `None` while a batch job holds it.
    hasher: Option<Hasher>,
    job: Option<JoinHandle<Hasher>>,
    /// A full batch waiting for the job before it.
    ready: Option<Vec<Bytes>>,
    filling: Vec<Bytes>,
    filling_len: usize,
    seen: u64,
}

impl<'a> Hashing<'a> {
    pub(crate) fn new(inner: ChunkSource<'a>, hasher: Hasher) -> Hashing<'a> {
        Hashing {
            inner,
            hasher: Some(hasher),
            job: None,
            ready: None,
            filling: Vec::new(),
            filling_len: 0,
            seen: 0,
        }
    }

    /// The hasher, fed with everything the stream passed on.
    pub(crate) async fn finish(mut self) -> std::io::Result<Hasher> {
        let mut hasher = match self.job.take() {
            Some(job) => job.await.map_err(std::io::Error::other)?,
            None => self.hasher.take().expect("no job holds the hasher"),
        };
        let rest: Vec<Bytes> = self
            .ready
            .take()
            .into_iter()
            .flatten()
            .chain(self.filling)
            .collect();
        if rest.iter().map(Bytes::len).sum::<usize>() <= BATCH / 4 {
            for c in &rest {
                hasher.update(c);
            }
            return Ok(hasher);
        }
        tokio::task::spawn_blocking(move || {
            for c in &rest {
                hasher.update(c);
            }
            hasher
        })
        .await
        .map_err(std::io::Error::other)
    }

    /// Hands the ready batch to a job once the job before it has given the hasher back.
    fn poll_dispatch(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.ready.is_none() {
            return Poll::Ready(Ok(()));
        }
        if let Some(job) = self.job.as_mut() {
            match job.poll_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(h)) => {
                    self.job = None;
                    self.hasher = Some(h);
                }
                Poll::Ready(Err(e)) => {
                    self.job = None;
                    return Poll::Ready(Err(std::io::Error::other(e)));
                }
            }
        }
        let batch = self.ready.take().expect("checked above");
        let mut hasher = self.hasher.take().expect("no job holds the hasher");
        self.job = Some(tokio::task::spawn_blocking(move || {
            for c in &batch {
                hasher.update(c);
            }
            hasher
        }));
        Poll::Ready(Ok(()))
    }
}

impl Stream for Hashing<'_> {
    type Item = std::io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        // No more data while a full batch waits: that is the bound on what is held.
        match this.poll_dispatch(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e))),
            Poll::Pending => return Poll::Pending,
        }
        match this.inner.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                this.seen += chunk.len() as u64;
                let in_line = this.seen <= INLINE && this.job.is_none() && this.filling.is_empty();
                if in_line {
                    this.hasher
                        .as_mut()
                        .expect("no job holds the hasher")
                        .update(&chunk);
                } else {
                    this.filling_len += chunk.len();
                    this.filling.push(chunk.clone());
                    if this.filling_len >= BATCH {
                        this.filling_len = 0;
                        this.ready = Some(std::mem::take(&mut this.filling));
                        // Start it now if the hasher is free; else the next poll waits for it.
                        if let Poll::Ready(Err(e)) = this.poll_dispatch(cx) {
                            return Poll::Ready(Some(Err(e)));
                        }
                    }
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kura_oci::Algorithm;

    /// Whatever the body's size and chunking, the digest is the digest of the bytes, and the
    /// bytes pass through unchanged and in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn digests_match_in_line_and_in_batches() {
        for (total, chunk) in [
            (0usize, 1usize),
            (5, 5),
            (1024 * 1024, 65_536),
            (1024 * 1024 + 1, 65_536),
            (5 * 1024 * 1024 + 17, 131_072),
            (3 * 1024 * 1024 + 5, 4_097),
            (9 * 1024 * 1024, 3_000_000),
        ] {
            let data: Vec<u8> = (0..total).map(|i| (i * 13 + i / 7) as u8).collect();
            let chunks: Vec<std::io::Result<Bytes>> = data
                .chunks(chunk.max(1))
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect();
            let mut source = futures_util::stream::iter(chunks);
            let mut hashing = Hashing::new(&mut source, Algorithm::Sha256.hasher());
            let mut passed = Vec::new();
            while let Some(c) = hashing.next().await {
                passed.extend_from_slice(&c.unwrap());
            }
            let digest = hashing.finish().await.unwrap().finish();
            assert!(passed == data, "{total}/{chunk}: bytes changed");
            assert_eq!(
                digest,
                Algorithm::Sha256.digest_of(&data),
                "{total}/{chunk}"
            );
        }
    }
}
