//! Hashing an upload's bytes as they pass on their way to storage.
//!
//! SHA-256 runs at about the speed of the network and of the disk together, so hashing in the
//! task that receives a large body made one core the bound of the whole push (half of the
//! server's samples during a 1 GiB push, BENCHMARKS.md). Past its first [`INLINE`] bytes, a
//! body is therefore hashed in batches on the blocking pool while the next ones are received
//! and written: receiving, hashing and writing each get a core when there are cores to give.
//! Small bodies stay in line, where a hand-off would cost more than the hash.
//!
//! Full batches go into a [`SerialQueue`] whose job hashes them in order, taking the next
//! batch itself as soon as it is done with one (why that matters is in its module doc). The
//! batches share the chunks' buffers (`Bytes` clones); the stream stops while [`QUEUED`]
//! batches wait, so at most that many plus the one being hashed and the one filling are held.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use kura_oci::Hasher;
use kura_storage::{ChunkSource, SerialJob, SerialQueue};

/// Bytes of a body hashed in line before batches start.
const INLINE: u64 = 1024 * 1024;
/// Bytes per batch handed to the blocking pool.
const BATCH: usize = 1024 * 1024;
/// Full batches that may wait for the hashing job before the stream stops.
const QUEUED: usize = 4;

/// The hashing job's state.
struct Hashes(Hasher);

impl SerialJob for Hashes {
    type Item = Vec<Bytes>;
    type Error = std::io::Error;
    const WHAT: &'static str = "hashing";

    fn run(&mut self, batch: Vec<Bytes>) -> std::io::Result<()> {
        self.feed(&batch);
        Ok(())
    }
}

impl Hashes {
    fn feed(&mut self, chunks: &[Bytes]) {
        for c in chunks {
            self.0.update(c);
        }
    }
}

/// A stream adapter that feeds every chunk passing through to a hasher; [`Hashing::finish`]
/// gives the hasher back once the stream has ended.
pub(crate) struct Hashing<'a> {
    inner: ChunkSource<'a>,
    batches: SerialQueue<Hashes>,
    /// A full batch the queue had no room for.
    ready: Option<Vec<Bytes>>,
    filling: Vec<Bytes>,
    filling_len: usize,
    /// Bytes passed so far; while at most [`INLINE`], every one was hashed in line.
    seen: u64,
}

impl<'a> Hashing<'a> {
    pub(crate) fn new(inner: ChunkSource<'a>, hasher: Hasher) -> Hashing<'a> {
        Hashing {
            inner,
            batches: SerialQueue::new(Hashes(hasher), QUEUED),
            ready: None,
            filling: Vec::new(),
            filling_len: 0,
            seen: 0,
        }
    }

    /// The hasher, fed with everything the stream passed on.
    pub(crate) async fn finish(mut self) -> std::io::Result<Hasher> {
        let rest: Vec<Bytes> = self
            .ready
            .take()
            .into_iter()
            .flatten()
            .chain(std::mem::take(&mut self.filling))
            .collect();
        // A small rest is hashed here when the job is idle: a hand-off would cost more.
        let small = rest.iter().map(Bytes::len).sum::<usize>() <= BATCH / 4;
        let hashed = small && self.batches.with_idle(|h| h.feed(&rest)).is_some();
        if !hashed && !rest.is_empty() {
            self.batches.push(rest).await?;
        }
        Ok(self.batches.finish().await?.0)
    }
}

impl Stream for Hashing<'_> {
    type Item = std::io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        // No more data while a full batch waits for room: that is the bound on what is held.
        match this.batches.poll_push(cx, &mut this.ready) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e))),
            Poll::Pending => return Poll::Pending,
        }
        match this.inner.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                this.seen += chunk.len() as u64;
                if this.seen <= INLINE {
                    this.batches
                        .with_idle(|h| h.0.update(&chunk))
                        .expect("no job before the first batch");
                } else {
                    this.filling_len += chunk.len();
                    this.filling.push(chunk.clone());
                    if this.filling_len >= BATCH {
                        this.filling_len = 0;
                        this.ready = Some(std::mem::take(&mut this.filling));
                        // Queued now if there is room; else the next poll waits for it.
                        if let Poll::Ready(Err(e)) = this.batches.poll_push(cx, &mut this.ready) {
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

    /// A consumer that stops polling for a while (as the store does while it waits for its
    /// writes) and a source that is sometimes slow: batches are hashed whether or not the
    /// stream is polled, none is lost or hashed twice, and `finish` never waits forever.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_are_hashed_while_the_consumer_waits() {
        let all = async {
            for round in 0..10u32 {
                let data: Vec<u8> = (0..(12 * BATCH as u32 + round * 4099))
                    .map(|i| (i * 31 + round) as u8)
                    .collect();
                let chunks: Vec<std::io::Result<Bytes>> = data
                    .chunks(65_536 + round as usize * 977)
                    .map(|c| Ok(Bytes::copy_from_slice(c)))
                    .collect();
                let slow = futures_util::stream::iter(chunks).then(|c| async move {
                    if c.as_ref().is_ok_and(|c| c[0] % 7 == 0) {
                        tokio::task::yield_now().await;
                    }
                    c
                });
                let mut source = Box::pin(slow);
                let mut hashing = Hashing::new(&mut source, Algorithm::Sha256.hasher());
                let mut n = 0u32;
                while let Some(c) = hashing.next().await {
                    c.unwrap();
                    n += 1;
                    if n.is_multiple_of(3 + round % 4) {
                        tokio::time::sleep(std::time::Duration::from_micros(300)).await;
                    }
                }
                let digest = hashing.finish().await.unwrap().finish();
                assert_eq!(digest, Algorithm::Sha256.digest_of(&data), "round {round}");
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(120), all)
            .await
            .expect("hashing hung");
    }
}
