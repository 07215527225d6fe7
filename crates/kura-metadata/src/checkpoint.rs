//! SQLite checkpoints, mostly off the write path.
//!
//! In WAL mode SQLite copies the log back into the database file (a checkpoint) whenever a
//! commit leaves the log longer than 1,000 pages, and it does so on the committing
//! connection: the single write connection, with every other writer queued behind it while
//! pages are copied and both files are synced. Here a task of its own checkpoints every
//! 100 ms with `PASSIVE`, which runs alongside the writer (it never takes the write lock) and
//! alongside readers (it stops at the oldest frame a reader still needs).
//!
//! The write connection still checkpoints, rarely ([`WRITER_AUTOCHECKPOINT_PAGES`]), because
//! only a writer starts the log over, and only after a checkpoint that left no frame behind:
//! under a steady stream of commits the task's checkpoints never finish with nothing left,
//! so without the writer's the log would grow until writes pause. When the writer's turn
//! comes the task has copied nearly everything, so it syncs and copies only the tail. A
//! regbench A/B with no checkpoints at all put manifest push 16 % higher (BENCHMARKS.md).
//!
//! Durability does not change: with `synchronous=NORMAL` SQLite syncs the log before a
//! checkpoint copies from it and the database after, whichever connection runs it.

use std::time::Duration;

use sqlx::ConnectOptions;
use sqlx::sqlite::SqliteConnectOptions;

use crate::Result;

/// The write connection's `wal_autocheckpoint`: 10,000 pages of 4 KiB bound the log to about
/// 40 MiB.
pub(crate) const WRITER_AUTOCHECKPOINT_PAGES: u32 = 10_000;

/// How often the log is checked while writes arrive, and when it has been idle.
const BUSY_INTERVAL: Duration = Duration::from_millis(100);
const IDLE_INTERVAL: Duration = Duration::from_secs(1);

/// The running checkpoint task; stopped when dropped (with the store).
pub(crate) struct Checkpointer {
    task: tokio::task::JoinHandle<()>,
}

impl Checkpointer {
    /// Opens the task's connection now (so a failure shows at start) and starts the task.
    pub(crate) async fn start(options: SqliteConnectOptions) -> Result<Checkpointer> {
        Self::start_with(options, BUSY_INTERVAL, IDLE_INTERVAL).await
    }

    async fn start_with(
        options: SqliteConnectOptions,
        busy: Duration,
        idle: Duration,
    ) -> Result<Checkpointer> {
        let mut conn = options.connect().await?;
        let task = tokio::spawn(async move {
            let mut last_log = -1_i64;
            let mut interval = busy;
            loop {
                tokio::time::sleep(interval).await;
                // (busy, frames in the log, frames checkpointed)
                let row: std::result::Result<(i64, i64, i64), _> =
                    sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
                        .fetch_one(&mut conn)
                        .await;
                match row {
                    Ok((_, log, done)) => {
                        // Nothing new since the last look and nothing left to copy: idle.
                        interval = if log == last_log && done >= log {
                            idle
                        } else {
                            busy
                        };
                        last_log = log;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "SQLite checkpoint failed; retrying");
                        interval = idle;
                    }
                }
            }
        });
        Ok(Checkpointer { task })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::Connection;
    use std::str::FromStr;

    /// With the writer's own checkpoints off, only the task can move pages into the
    /// database file.
    #[tokio::test]
    async fn the_task_copies_the_log_into_the_database_while_writes_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("c.db");
        let base = SqliteConnectOptions::from_str(&format!("sqlite://{}", db.display()))
            .unwrap()
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
        let mut writer = base
            .clone()
            .pragma("wal_autocheckpoint", "0")
            .connect()
            .await
            .unwrap();
        sqlx::query("CREATE TABLE t (x BLOB)")
            .execute(&mut writer)
            .await
            .unwrap();
        let _cp = Checkpointer::start_with(
            base.clone(),
            Duration::from_millis(5),
            Duration::from_millis(5),
        )
        .await
        .unwrap();
        let payload = vec![7u8; 8192];
        for _ in 0..500 {
            let mut tx = writer.begin().await.unwrap();
            sqlx::query("INSERT INTO t VALUES ($1)")
                .bind(&payload)
                .execute(&mut *tx)
                .await
                .unwrap();
            tx.commit().await.unwrap();
        }
        // 500 rows of 8 KiB are about 4 MiB of pages; bounded wait for the task's next turn.
        let mut size = 0;
        for _ in 0..200 {
            size = std::fs::metadata(&db).unwrap().len();
            if size > 3 << 20 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(size > 3 << 20, "database file holds only {size} bytes");
        writer.close().await.unwrap();
    }
}
