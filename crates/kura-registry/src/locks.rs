//! Per-key async locks (one per upload id), so two requests on one upload never interleave
//! their writes within a process. Across replicas the compare-and-set on the upload row in
//! the metadata store is what decides.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

#[derive(Default)]
pub struct KeyedLocks {
    map: Mutex<HashMap<String, Arc<AsyncMutex<()>>>>,
}

impl KeyedLocks {
    pub async fn lock(&self, key: &str) -> OwnedMutexGuard<()> {
        let lock = {
            let mut map = self.map.lock().expect("lock map poisoned");
            if map.len() > 1024 {
                // Drop entries nobody holds; keeps the map proportional to live uploads.
                map.retain(|_, l| Arc::strong_count(l) > 1);
            }
            map.entry(key.to_string()).or_default().clone()
        };
        lock.lock_owned().await
    }
}
