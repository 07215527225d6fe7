//! A bounded queue of work items that one blocking job works through in order: the shape of
//! each stage of a large upload that runs beside the task receiving it (hashing, in
//! kura-registry's `hashing`, and writing, in [`crate::fs`]).
//!
//! Why a queue and not one hand-off at a time: the receiving task stops polling while it
//! waits for one stage, and a stage that got its next item only when the task polled again
//! idled through every such wait, so receiving, hashing and writing took turns instead of
//! overlapping (a 1 GiB push at 650 MB/s against ~950 for any two stages alone, BENCHMARKS.md
//! session 13). Here the job takes the next item itself as soon as it is done with one, and
//! the producer waits only when `capacity` items already wait.
//!
//! Why one job: the items must be applied in order to one state (a hasher, a file), which the
//! job holds while it runs. A job is started when an item is queued while none runs, and ends
//! when it finds the queue empty. It decides to end under the same lock under which the
//! producer checks whether one runs: otherwise an item queued in between would be left with
//! no job to take it (the first version of the hashing queue hung that way once).

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// The state a [`SerialQueue`]'s job applies items to.
pub trait SerialJob: Send + 'static {
    type Item: Send + 'static;
    type Error: From<io::Error> + Send + 'static;
    /// What the job does, for the error when it panics ("hashing", "writing").
    const WHAT: &'static str;

    /// Applies one item. An error drops the items queued after it and fails every later call
    /// on the queue.
    fn run(&mut self, item: Self::Item) -> Result<(), Self::Error>;
}

/// A queue of at most `capacity` waiting items for a [`SerialJob`] on the blocking pool. Its
/// producer is one task: the queue keeps one waker. Dropping the queue drops the items not
/// yet started; the one in progress finishes on its own.
pub struct SerialQueue<J: SerialJob> {
    shared: Arc<Mutex<Shared<J>>>,
    capacity: usize,
}

/// What the queue and its job share.
struct Shared<J: SerialJob> {
    /// `None` while the job holds it, and for good once a job panicked with it.
    job: Option<J>,
    queue: VecDeque<J::Item>,
    /// A job is running and will take every item queued before it sets this back.
    running: bool,
    /// The first failure; the items queued after it were dropped.
    failed: Option<J::Error>,
    /// Set once `failed` was handed out, so that later calls fail too.
    broken: bool,
    /// The producer, waiting for room in the queue or for the job to end.
    waiter: Option<Waker>,
}

impl<J: SerialJob> Shared<J> {
    fn take_failure(&mut self) -> Option<J::Error> {
        if let Some(e) = self.failed.take() {
            self.broken = true;
            return Some(e);
        }
        self.broken
            .then(|| io::Error::other(format!("an earlier {} step failed", J::WHAT)).into())
    }

    fn wake(&mut self) {
        if let Some(w) = self.waiter.take() {
            w.wake();
        }
    }
}

fn lock<J: SerialJob>(shared: &Mutex<Shared<J>>) -> MutexGuard<'_, Shared<J>> {
    // A panic while the lock is held leaves nothing half-updated that the others rely on:
    // the job records its own death through `Ended`.
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

impl<J: SerialJob> SerialQueue<J> {
    pub fn new(job: J, capacity: usize) -> SerialQueue<J> {
        SerialQueue {
            shared: Arc::new(Mutex::new(Shared {
                job: Some(job),
                queue: VecDeque::new(),
                running: false,
                failed: None,
                broken: false,
                waiter: None,
            })),
            capacity: capacity.max(1),
        }
    }

    /// Queues the item in `slot` (if any) once there is room: `Pending` with the item left in
    /// `slot` while the queue is full; an earlier failure instead of queueing.
    pub fn poll_push(
        &self,
        cx: &mut Context<'_>,
        slot: &mut Option<J::Item>,
    ) -> Poll<Result<(), J::Error>> {
        if slot.is_none() {
            return Poll::Ready(Ok(()));
        }
        let mut s = lock(&self.shared);
        if let Some(e) = s.take_failure() {
            return Poll::Ready(Err(e));
        }
        if s.queue.len() >= self.capacity {
            s.waiter = Some(cx.waker().clone());
            return Poll::Pending;
        }
        s.queue.push_back(slot.take().expect("checked above"));
        if !s.running {
            s.running = true;
            let shared = self.shared.clone();
            tokio::task::spawn_blocking(move || run_queue(shared));
        }
        Poll::Ready(Ok(()))
    }

    /// Queues `item`, waiting for room.
    pub async fn push(&self, item: J::Item) -> Result<(), J::Error> {
        let mut slot = Some(item);
        poll_fn(|cx| self.poll_push(cx, &mut slot)).await
    }

    /// Runs `f` on the job's state in the caller's thread, if no job is running and nothing
    /// waits (nor failed); `None` otherwise.
    pub fn with_idle<R>(&self, f: impl FnOnce(&mut J) -> R) -> Option<R> {
        let mut s = lock(&self.shared);
        if s.running || s.broken || s.failed.is_some() {
            return None;
        }
        s.job.as_mut().map(f)
    }

    /// Waits until every queued item is done: the first failure among them, if any.
    pub async fn settle(&self) -> Result<(), J::Error> {
        poll_fn(|cx| {
            let mut s = lock(&self.shared);
            if s.running {
                s.waiter = Some(cx.waker().clone());
                return Poll::Pending;
            }
            Poll::Ready(s.take_failure().map_or(Ok(()), Err))
        })
        .await
    }

    /// Waits until every queued item is done, and gives the state back.
    pub async fn finish(self) -> Result<J, J::Error> {
        self.settle().await?;
        let job = lock(&self.shared).job.take();
        // Only a panicked job loses the state, and that was reported as a failure above.
        job.ok_or_else(|| io::Error::other(format!("the {} job failed", J::WHAT)).into())
    }

    /// Drops the items not yet started.
    pub fn clear(&self) {
        lock(&self.shared).queue.clear();
    }
}

impl<J: SerialJob> Drop for SerialQueue<J> {
    fn drop(&mut self) {
        self.clear();
    }
}

/// The job: applies queued items in order until the queue is empty.
fn run_queue<J: SerialJob>(shared: Arc<Mutex<Shared<J>>>) {
    let _ended = Ended(&shared);
    loop {
        let (item, mut job) = {
            let mut s = lock(&shared);
            let Some(item) = s.queue.pop_front() else {
                // Under the same lock as the producer's check: an item queued after this must
                // find no job running, and start one.
                s.running = false;
                s.wake();
                return;
            };
            (item, s.job.take().expect("one job at a time"))
        };
        let done = job.run(item);
        let mut s = lock(&shared);
        s.job = Some(job);
        if let Err(e) = done {
            s.failed.get_or_insert(e);
            s.queue.clear();
        }
        s.wake();
    }
}

/// Ends a job that panicked: the producer must not wait for it forever.
struct Ended<'a, J: SerialJob>(&'a Arc<Mutex<Shared<J>>>);

impl<J: SerialJob> Drop for Ended<'_, J> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let mut s = lock(self.0);
        s.running = false;
        s.failed
            .get_or_insert_with(|| io::Error::other(format!("the {} job failed", J::WHAT)).into());
        s.queue.clear();
        s.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Records the items it is given; fails on `fail_at`, panics on `panic_at`, takes a while
    /// on every fifth, and with `hold` waits for a message before each item.
    struct Recorder {
        seen: Vec<u32>,
        fail_at: Option<u32>,
        panic_at: Option<u32>,
        hold: Option<std::sync::mpsc::Receiver<()>>,
    }

    impl SerialJob for Recorder {
        type Item = u32;
        type Error = io::Error;
        const WHAT: &'static str = "recording";

        fn run(&mut self, item: u32) -> io::Result<()> {
            if let Some(hold) = &self.hold {
                hold.recv().ok();
            }
            if item.is_multiple_of(5) {
                std::thread::sleep(Duration::from_micros(200));
            }
            if Some(item) == self.panic_at {
                panic!("told to");
            }
            if Some(item) == self.fail_at {
                return Err(io::Error::other("told to"));
            }
            self.seen.push(item);
            Ok(())
        }
    }

    fn recorder() -> Recorder {
        Recorder {
            seen: Vec::new(),
            fail_at: None,
            panic_at: None,
            hold: None,
        }
    }

    async fn bounded<T>(f: impl Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(60), f)
            .await
            .expect("the queue hung")
    }

    /// Items are applied once each and in order, whether the producer pushes faster than the
    /// job runs or pauses long enough for the job to end and be started again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn items_are_applied_in_order_across_job_restarts() {
        bounded(async {
            for capacity in [1, 2, 4] {
                let queue = SerialQueue::new(recorder(), capacity);
                for i in 0..2_000u32 {
                    queue.push(i).await.unwrap();
                    if i.is_multiple_of(97) {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    if i.is_multiple_of(13) {
                        tokio::task::yield_now().await;
                    }
                }
                let job = queue.finish().await.unwrap();
                assert_eq!(
                    job.seen,
                    (0..2_000).collect::<Vec<_>>(),
                    "capacity {capacity}"
                );
            }
        })
        .await
    }

    /// The producer never has more than `capacity` items waiting.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_producer_waits_while_the_queue_is_full() {
        bounded(async {
            let queue = SerialQueue::new(recorder(), 2);
            for i in 0..200u32 {
                queue.push(i).await.unwrap();
                assert!(lock(&queue.shared).queue.len() <= 2);
            }
            queue.settle().await.unwrap();
            assert!(queue.with_idle(|j| j.seen.len()) == Some(200));
        })
        .await
    }

    /// A failed item drops what was queued after it and fails the calls that follow; its
    /// error is the one reported.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failure_stops_the_queue_and_is_reported_once_then_fails_later_calls() {
        bounded(async {
            let queue = SerialQueue::new(
                Recorder {
                    fail_at: Some(50),
                    ..recorder()
                },
                4,
            );
            let mut refused = None;
            for i in 0..1_000u32 {
                if let Err(e) = queue.push(i).await {
                    refused = Some((i, e));
                    break;
                }
            }
            let (at, e) = refused.expect("a push after the failure is refused");
            assert!(at > 50 && at <= 56, "refused at {at}");
            assert_eq!(e.to_string(), "told to");
            assert!(queue.settle().await.is_err());
            assert!(queue.with_idle(|_| ()).is_none());
            let e = queue.finish().await.err().expect("finish fails too");
            assert!(
                e.to_string().contains("earlier recording step failed"),
                "{e}"
            );
        })
        .await
    }

    /// A panicking job fails the queue instead of leaving its producer waiting forever.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_job_fails_the_queue() {
        bounded(async {
            let queue = SerialQueue::new(
                Recorder {
                    panic_at: Some(10),
                    ..recorder()
                },
                2,
            );
            for i in 0..12u32 {
                if queue.push(i).await.is_err() {
                    break;
                }
            }
            let e = queue.finish().await.err().expect("the panic is reported");
            assert!(e.to_string().contains("recording job failed"), "{e}");
        })
        .await
    }

    /// `clear` drops the items not yet started; the job still ends, and the state comes back
    /// with only what was applied.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cleared_items_are_never_applied() {
        bounded(async {
            let (release, hold) = std::sync::mpsc::channel();
            let queue = SerialQueue::new(
                Recorder {
                    hold: Some(hold),
                    ..recorder()
                },
                8,
            );
            for i in 0..8u32 {
                queue.push(i).await.unwrap();
            }
            queue.clear();
            for _ in 0..8 {
                release.send(()).ok();
            }
            let job = queue.finish().await.unwrap();
            // The job may have taken the first item before the clear, never a later one.
            assert!(job.seen.is_empty() || job.seen == [0], "{:?}", job.seen);
        })
        .await
    }
}
