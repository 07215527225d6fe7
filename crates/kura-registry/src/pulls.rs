//! Last-pull times, recorded off the request path: an [`EventSink`] notes manifest pulls in
//! memory (one entry per repository and digest, however many pulls) and a background task
//! writes them in one transaction every few seconds. A crash loses at most one interval.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kura_metadata::{MetadataStore, now_ms};

use crate::{EventContext, EventSink, RegistryEvent};

#[derive(Default)]
pub struct PullRecorder {
    pending: Mutex<HashMap<(String, String), i64>>,
}

impl EventSink for PullRecorder {
    fn emit(&self, event: &RegistryEvent, _context: &EventContext) {
        if let RegistryEvent::ManifestPulled {
            repository, digest, ..
        } = event
        {
            self.pending
                .lock()
                .expect("pull recorder")
                .insert((repository.clone(), digest.clone()), now_ms());
        }
    }
}

impl PullRecorder {
    /// Writes what was noted since the last flush.
    pub async fn flush(&self, meta: &dyn MetadataStore) {
        let batch: Vec<(String, String, i64)> = {
            let mut pending = self.pending.lock().expect("pull recorder");
            pending.drain().map(|((r, d), t)| (r, d, t)).collect()
        };
        if let Err(e) = meta.record_pulls(&batch).await {
            tracing::warn!(error = %e, pulls = batch.len(), "could not record pull times");
        }
    }

    /// Flushes every `every` until the process ends.
    pub fn spawn_flusher(
        self: Arc<Self>,
        meta: Arc<dyn MetadataStore>,
        every: Duration,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                self.flush(meta.as_ref()).await;
            }
        })
    }
}
