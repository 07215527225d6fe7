//! Group commit for SQLite: many committed transactions made durable by one `fdatasync`.
//!
//! With `synchronous=FULL`, SQLite syncs its write-ahead log inside every COMMIT, on the one
//! write connection, so each writer waits for the disk while holding the lock every other
//! writer needs. Strict durability instead runs the connection with `synchronous=NORMAL`
//! (COMMIT writes the log pages to the OS and returns) and calls [`WalSync::barrier`] after
//! each write, before anything is acknowledged. The barrier syncs the log file from outside
//! SQLite; a sync that *starts* after a caller's commit returned covers that commit, so the
//! callers queued behind one sync share the next one, and the write connection is free while
//! the disk works.
//!
//! Why an outside sync is as good as SQLite's own: `fdatasync` acts on the file (the inode),
//! not on the descriptor, and FULL does exactly this sync at the same point. Frames SQLite
//! moves out of the log (checkpoint) are synced by SQLite itself in NORMAL mode, before the
//! log is restarted or deleted; so when the log is gone, or has been restarted since, nothing
//! acknowledged is left only in unsynced log pages. A log file SQLite has just created also
//! needs its directory entry on disk: the first sync of each new log inode syncs the
//! directory too.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{MetadataError, Result};

pub(crate) struct WalSync {
    wal: PathBuf,
    /// Tickets handed out: one per barrier, taken after the caller's commit returned.
    requested: AtomicU64,
    /// Every ticket up to this one is durable.
    synced: AtomicU64,
    /// Held by the one caller whose sync is running; the others queue on it (FIFO).
    /// Holds the inode of the log whose directory entry is known to be synced.
    leader: tokio::sync::Mutex<Option<u64>>,
}

impl WalSync {
    /// For the database file `db`: its log is `db` + `-wal`, as SQLite names it.
    pub(crate) fn new(db: &std::path::Path) -> Arc<WalSync> {
        let mut wal = db.as_os_str().to_owned();
        wal.push("-wal");
        Arc::new(WalSync {
            wal: PathBuf::from(wal),
            requested: AtomicU64::new(0),
            synced: AtomicU64::new(0),
            leader: tokio::sync::Mutex::new(None),
        })
    }

    /// Returns once every transaction committed before the call is on disk.
    pub(crate) async fn barrier(&self) -> Result<()> {
        let ticket = self.requested.fetch_add(1, Ordering::AcqRel) + 1;
        let mut synced_dir = self.leader.lock().await;
        if self.synced.load(Ordering::Acquire) >= ticket {
            // A sync that began after our commit finished while we queued.
            return Ok(());
        }
        // Every ticket taken so far belongs to a commit that has already returned.
        let covers = self.requested.load(Ordering::Acquire);
        let wal = self.wal.clone();
        let known = *synced_dir;
        let inode = tokio::task::spawn_blocking(move || sync_log(&wal, known))
            .await
            .map_err(|e| MetadataError::Durability(io::Error::other(e)))?
            .map_err(MetadataError::Durability)?;
        if inode.is_some() {
            *synced_dir = inode;
        }
        self.synced.fetch_max(covers, Ordering::AcqRel);
        Ok(())
    }
}

/// Syncs the log at `wal`, and its directory when the log is a file not synced before (inode
/// other than `known`). Returns the log's inode; `None` when there is no log (SQLite removed
/// it after a checkpoint it synced).
fn sync_log(wal: &std::path::Path, known: Option<u64>) -> io::Result<Option<u64>> {
    use std::os::unix::fs::MetadataExt;
    let file = match std::fs::File::open(wal) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    file.sync_data()?;
    let inode = file.metadata()?.ino();
    if known != Some(inode)
        && let Some(dir) = wal.parent()
    {
        let dir = if dir.as_os_str().is_empty() {
            std::path::Path::new(".")
        } else {
            dir
        };
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(Some(inode))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_log_needs_no_sync_and_a_present_one_is_synced() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("m.db");
        let sync = WalSync::new(&db);
        sync.barrier().await.unwrap();
        assert_eq!(*sync.leader.lock().await, None);
        std::fs::write(dir.path().join("m.db-wal"), b"frames").unwrap();
        sync.barrier().await.unwrap();
        let ino = {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(dir.path().join("m.db-wal"))
                .unwrap()
                .ino()
        };
        assert_eq!(*sync.leader.lock().await, Some(ino));
        assert_eq!(sync.synced.load(Ordering::Acquire), 2);
    }

    #[tokio::test]
    async fn concurrent_barriers_all_return_covered() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("m.db");
        std::fs::write(dir.path().join("m.db-wal"), b"frames").unwrap();
        let sync = WalSync::new(&db);
        let tasks: Vec<_> = (0..32)
            .map(|_| {
                let s = sync.clone();
                tokio::spawn(async move { s.barrier().await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(sync.synced.load(Ordering::Acquire), 32);
    }
}
