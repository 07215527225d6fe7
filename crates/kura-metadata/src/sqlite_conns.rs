//! SQLite connections held by Kura itself rather than by sqlx's pool.
//!
//! sqlx's `Pool` pings a connection each time it hands it out (unless told not to) and, with
//! no way to turn it off, each time it takes it back: on SQLite each ping is a round trip to
//! the connection's own thread (two thread switches), run by a task spawned on release, so the
//! single write connection sat idle between two writers for that whole detour. A connection
//! to an embedded database cannot drop off a network, so there is nothing for a ping to find;
//! this set hands connections out and takes them back with a mutex and a FIFO semaphore.
//!
//! Connections open on demand, up to `max`. The most recently returned is handed out first,
//! so after a burst the extra ones sit unused at the bottom of the stack; one unused for
//! [`IDLE_TIMEOUT`] is closed when another comes back (an idle one costs its thread and its
//! page cache, up to 2 MiB), as sqlx's pool would, keeping at least one open.
//!
//! A future dropped half way through a statement leaves nothing behind: sqlx queues the
//! connection's commands in order, and a dropped transaction queues its own rollback before
//! the next holder's first command.

use std::ops::{Deref, DerefMut};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use sqlx::ConnectOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::Result;

/// How long a connection may sit unused before it is closed (sqlx's pool default).
const IDLE_TIMEOUT: Duration = Duration::from_secs(600);

pub(crate) struct SqliteConns {
    options: SqliteConnectOptions,
    /// Unused connections and since when, most recently returned last.
    idle: Mutex<Vec<(SqliteConnection, Instant)>>,
    idle_timeout: Duration,
    permits: Semaphore,
    max: u32,
    open: AtomicU32,
}

/// One connection, returned to its set when dropped.
pub(crate) struct SqliteConn<'a> {
    set: &'a SqliteConns,
    conn: Option<SqliteConnection>,
    /// A transaction begun by SQL text (see [`SqliteConn::begin_in_batch`]) is open: sqlx
    /// does not know of it, so if this guard is dropped before it ends (a cancelled
    /// request), the connection is closed, which rolls it back, instead of being reused.
    raw_transaction: bool,
    // Released after `drop` has put the connection back (fields drop after `Drop::drop`).
    _permit: SemaphorePermit<'a>,
}

impl SqliteConns {
    /// A set of at most `max` connections opened with `options`; the first is opened now, so
    /// that a bad path or a locked database fails at start rather than at the first request.
    pub(crate) async fn open(options: SqliteConnectOptions, max: u32) -> Result<SqliteConns> {
        Self::open_with(options, max, IDLE_TIMEOUT).await
    }

    async fn open_with(
        options: SqliteConnectOptions,
        max: u32,
        idle_timeout: Duration,
    ) -> Result<SqliteConns> {
        let max = max.max(1);
        let first = options.connect().await?;
        Ok(SqliteConns {
            options,
            idle: Mutex::new(vec![(first, Instant::now())]),
            idle_timeout,
            permits: Semaphore::new(max as usize),
            max,
            open: AtomicU32::new(1),
        })
    }

    /// Waits for a connection (first come, first served), opening one if none is idle.
    pub(crate) async fn get(&self) -> Result<SqliteConn<'_>> {
        let permit = self
            .permits
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let idle = self.idle.lock().expect("not poisoned").pop();
        let conn = match idle {
            Some((c, _)) => c,
            None => {
                let c = self.options.connect().await?;
                self.open.fetch_add(1, Ordering::Relaxed);
                c
            }
        };
        Ok(SqliteConn {
            set: self,
            conn: Some(conn),
            raw_transaction: false,
            _permit: permit,
        })
    }

    /// (open, idle, max) for the metrics endpoint.
    pub(crate) fn stats(&self) -> (u32, u32, u32) {
        let idle = self.idle.lock().expect("not poisoned").len() as u32;
        (self.open.load(Ordering::Relaxed), idle, self.max)
    }
}

impl SqliteConn<'_> {
    /// Marks a transaction opened by a `BEGIN` at the head of a multi-statement query, which
    /// saves the round trip of a separate BEGIN. Call it before the query is sent; end the
    /// transaction with [`SqliteConn::end_transaction`].
    pub(crate) fn begin_in_batch(&mut self) {
        self.raw_transaction = true;
    }

    /// Notes that the batch marked by [`SqliteConn::begin_in_batch`] ended its transaction
    /// itself (its last statement was `COMMIT`, and it ran to the end).
    pub(crate) fn transaction_ended(&mut self) {
        self.raw_transaction = false;
    }

    /// Ends the transaction marked by [`SqliteConn::begin_in_batch`] with `COMMIT` or
    /// `ROLLBACK`.
    pub(crate) async fn end_transaction(&mut self, commit: bool) -> Result<()> {
        let sql = if commit { "COMMIT" } else { "ROLLBACK" };
        sqlx::query(sql).execute(&mut **self).await?;
        self.raw_transaction = false;
        Ok(())
    }
}

impl Deref for SqliteConn<'_> {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        self.conn.as_ref().expect("present until drop")
    }
}

impl DerefMut for SqliteConn<'_> {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        self.conn.as_mut().expect("present until drop")
    }
}

impl Drop for SqliteConn<'_> {
    fn drop(&mut self) {
        let Some(c) = self.conn.take() else { return };
        if self.raw_transaction {
            // Dropping the connection closes it once its thread has run what it was sent
            // (SQLite rolls back what is open); the next holder opens a new one, waiting on
            // SQLite's lock (busy timeout) until this one is gone.
            self.set.open.fetch_sub(1, Ordering::Relaxed);
            drop(c);
            return;
        }
        let expired = {
            let mut idle = self.set.idle.lock().expect("not poisoned");
            idle.push((c, Instant::now()));
            let stale = idle
                .iter()
                .take(idle.len() - 1)
                .take_while(|(_, since)| since.elapsed() > self.set.idle_timeout)
                .count();
            idle.drain(..stale).collect::<Vec<_>>()
        };
        // Closed outside the lock: dropping a connection hands its thread the close.
        self.set
            .open
            .fetch_sub(expired.len() as u32, Ordering::Relaxed);
        drop(expired);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    /// A set of at most `max` connections to a new database holding an empty table `t`.
    async fn set_with_table(
        dir: &tempfile::TempDir,
        max: u32,
        idle_timeout: Duration,
    ) -> SqliteConns {
        let url = format!("sqlite://{}/t.db", dir.path().display());
        let opts = SqliteConnectOptions::from_str(&url)
            .unwrap()
            .create_if_missing(true)
            .busy_timeout(Duration::from_secs(10));
        let set = SqliteConns::open_with(opts, max, idle_timeout)
            .await
            .unwrap();
        let mut c = set.get().await.unwrap();
        sqlx::query("CREATE TABLE t (x INTEGER)")
            .execute(&mut *c)
            .await
            .unwrap();
        drop(c);
        set
    }

    async fn rows(set: &SqliteConns) -> Vec<i64> {
        let mut c = set.get().await.unwrap();
        sqlx::query_scalar("SELECT x FROM t ORDER BY x")
            .fetch_all(&mut *c)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn connections_are_reused_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let set = set_with_table(&dir, 2, IDLE_TIMEOUT).await;
        {
            let _a = set.get().await.unwrap();
            let _b = set.get().await.unwrap();
            assert_eq!(set.stats(), (2, 0, 2));
            // A third waits until one comes back.
            let third = tokio::time::timeout(Duration::from_millis(50), set.get());
            assert!(third.await.is_err());
        }
        assert_eq!(set.stats(), (2, 2, 2));
        assert!(rows(&set).await.is_empty());
        assert_eq!(set.stats(), (2, 2, 2));
    }

    #[tokio::test]
    async fn connections_unused_past_the_timeout_are_closed_but_one_stays() {
        let dir = tempfile::tempdir().unwrap();
        let set = set_with_table(&dir, 3, Duration::from_millis(20)).await;
        {
            let _a = set.get().await.unwrap();
            let _b = set.get().await.unwrap();
            let _c = set.get().await.unwrap();
        }
        assert_eq!(set.stats(), (3, 3, 3));
        tokio::time::sleep(Duration::from_millis(40)).await;
        // Taking one and giving it back closes the two that sat unused.
        drop(set.get().await.unwrap());
        assert_eq!(set.stats(), (1, 1, 3));
        assert!(rows(&set).await.is_empty());
    }

    #[tokio::test]
    async fn a_batch_transaction_dropped_unfinished_is_rolled_back_and_its_connection_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let set = set_with_table(&dir, 1, IDLE_TIMEOUT).await;
        {
            let mut c = set.get().await.unwrap();
            c.begin_in_batch();
            sqlx::raw_sql("BEGIN; INSERT INTO t VALUES (1);")
                .execute(&mut *c)
                .await
                .unwrap();
            // Dropped before COMMIT, as a cancelled request would.
        }
        assert_eq!(set.stats(), (0, 0, 1));
        {
            let mut c = set.get().await.unwrap();
            c.begin_in_batch();
            sqlx::raw_sql("BEGIN; INSERT INTO t VALUES (2);")
                .execute(&mut *c)
                .await
                .unwrap();
            c.end_transaction(true).await.unwrap();
        }
        assert_eq!(set.stats(), (1, 1, 1));
        assert_eq!(rows(&set).await, vec![2]);
    }

    #[tokio::test]
    async fn a_transaction_dropped_unfinished_is_rolled_back_before_the_next_holder() {
        let dir = tempfile::tempdir().unwrap();
        let set = set_with_table(&dir, 1, IDLE_TIMEOUT).await;
        {
            use sqlx::Connection;
            let mut c = set.get().await.unwrap();
            let mut tx = c.begin().await.unwrap();
            sqlx::query("INSERT INTO t VALUES (1)")
                .execute(&mut *tx)
                .await
                .unwrap();
            // Dropped without commit.
        }
        assert!(rows(&set).await.is_empty());
    }
}
