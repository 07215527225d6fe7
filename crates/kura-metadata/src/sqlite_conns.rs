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
//!
//! Shared transactions (group commit of whole transactions): a writer that takes the
//! connection with [`SqliteConns::get_to_share`] runs its work between `SAVEPOINT member` and
//! `RELEASE member` inside a transaction that it begins or that an earlier writer left open.
//! It leaves the transaction open when another writer is already queued for the connection,
//! and commits it when none is (or when [`MAX_MEMBERS`] have joined); every member waits for
//! that COMMIT before it acknowledges anything. The pages all members change (a table's
//! last leaf, the usage row, the B-tree interiors) are then written to the log once per
//! group instead of once per writer: on SQLite's single writer those frames are most of a
//! small commit's cost. Any other holder ([`SqliteConns::get`]) first commits an open shared
//! transaction, so no other code sees, extends or depends on one. A member whose own checks
//! fail rolls back to its savepoint, leaving the others' work in place; an error that
//! closes the connection fails every member (none of them has acknowledged anything).

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::ConnectOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::{MetadataError, Result};

/// How long a connection may sit unused before it is closed (sqlx's pool default).
const IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// Members a shared transaction takes at most before it is committed (bounds how long the
/// first one waits).
pub(crate) const MAX_MEMBERS: u32 = 64;

/// How long a member waits for its group's COMMIT before it commits the group itself: the
/// writer that was queued when the group was left open may have been cancelled since. Under
/// a steady stream of writers this also bounds how long a group stays open.
const MEMBER_PATIENCE: Duration = Duration::from_millis(5);

/// What a shared transaction's members learn: `None` until it ended, then whether it
/// committed.
type SharedOutcome = Option<std::result::Result<(), Arc<str>>>;

/// The transaction left open on a set's (single) connection for the next writer to join.
struct Shared {
    members: u32,
    outcome: tokio::sync::watch::Sender<SharedOutcome>,
}

impl Shared {
    fn end(&self, outcome: std::result::Result<(), Arc<str>>) {
        self.outcome.send_replace(Some(outcome));
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Every path that ends the transaction says how; anything else lost it.
        if self.outcome.borrow().is_none() {
            self.end(Err("the shared transaction was abandoned".into()));
        }
    }
}

/// A member's claim on its shared transaction's outcome.
#[derive(Debug)]
pub(crate) struct SharedTicket {
    outcome: tokio::sync::watch::Receiver<SharedOutcome>,
}

impl SharedTicket {
    /// Returns once the member's transaction is committed (an error if it was rolled back).
    pub(crate) async fn committed(mut self, set: &SqliteConns) -> Result<()> {
        loop {
            if let Some(outcome) = self.outcome.borrow_and_update().clone() {
                return outcome.map_err(|e| MetadataError::SharedTransaction(e.to_string()));
            }
            match tokio::time::timeout(MEMBER_PATIENCE, self.outcome.changed()).await {
                Ok(Ok(())) => {}
                // The sender is gone: `Shared`'s drop has stored the outcome first, which the
                // next turn reads.
                Ok(Err(_)) if self.outcome.borrow().is_some() => {}
                Ok(Err(_)) => return Err(MetadataError::SharedTransaction("lost".into())),
                // Taking the connection the ordinary way commits whatever is shared.
                Err(_) => drop(set.get().await?),
            }
        }
    }
}

pub(crate) struct SqliteConns {
    options: SqliteConnectOptions,
    /// Unused connections and since when, most recently returned last.
    idle: Mutex<Vec<(SqliteConnection, Instant)>>,
    idle_timeout: Duration,
    permits: Semaphore,
    max: u32,
    open: AtomicU32,
    /// Tasks queued for a connection: a shared transaction is left open only for one.
    waiting: AtomicU32,
    /// The shared transaction open on the connection, if any (sets of one connection only).
    shared: Mutex<Option<Shared>>,
    /// Shared transactions committed, and the members they held (for metrics).
    shared_commits: AtomicU64,
    shared_members: AtomicU64,
}

/// Counts a task in [`SqliteConns::waiting`] while it queues, cancelled or not.
struct Queued<'a>(&'a AtomicU32);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
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
            waiting: AtomicU32::new(0),
            shared: Mutex::new(None),
            shared_commits: AtomicU64::new(0),
            shared_members: AtomicU64::new(0),
        })
    }

    /// Waits for a connection (first come, first served), opening one if none is idle. A
    /// shared transaction left open on it is committed first.
    pub(crate) async fn get(&self) -> Result<SqliteConn<'_>> {
        let mut conn = self.get_to_share().await?;
        if conn.shared_open() {
            conn.commit_shared().await?;
        }
        Ok(conn)
    }

    /// [`SqliteConns::get`] for a writer that joins a shared transaction: one open on the
    /// connection stays open (see [`SqliteConn::shared_open`]).
    pub(crate) async fn get_to_share(&self) -> Result<SqliteConn<'_>> {
        self.waiting.fetch_add(1, Ordering::AcqRel);
        let queued = Queued(&self.waiting);
        let permit = self
            .permits
            .acquire()
            .await
            .expect("the semaphore is never closed");
        drop(queued);
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

    /// (shared transactions committed, members they held) since the set was opened.
    pub(crate) fn shared_commit_stats(&self) -> (u64, u64) {
        (
            self.shared_commits.load(Ordering::Relaxed),
            self.shared_members.load(Ordering::Relaxed),
        )
    }
}

impl SqliteConn<'_> {
    /// Marks a transaction opened by a `BEGIN` at the head of a multi-statement query, which
    /// saves the round trip of a separate BEGIN. Call it before the query is sent; end the
    /// transaction with [`SqliteConn::end_transaction`].
    pub(crate) fn begin_in_batch(&mut self) {
        self.raw_transaction = true;
    }

    /// Ends the transaction marked by [`SqliteConn::begin_in_batch`] with `COMMIT` or
    /// `ROLLBACK`.
    pub(crate) async fn end_transaction(&mut self, commit: bool) -> Result<()> {
        let sql = if commit { "COMMIT" } else { "ROLLBACK" };
        sqlx::query(sql).execute(&mut **self).await?;
        self.raw_transaction = false;
        Ok(())
    }

    /// Whether a shared transaction is open on this connection: a member's batch then starts
    /// with `SAVEPOINT member`, otherwise with `BEGIN; SAVEPOINT member`.
    pub(crate) fn shared_open(&self) -> bool {
        self.set.shared.lock().expect("not poisoned").is_some()
    }

    /// After a member's batch ran to its `RELEASE member` (begun with
    /// [`SqliteConn::begin_in_batch`]): counts it in the shared transaction, which it opened
    /// if none was open, and commits the transaction unless another writer is queued to join.
    pub(crate) async fn shared_member_done(&mut self) -> Result<SharedTicket> {
        let ticket = {
            let mut shared = self.set.shared.lock().expect("not poisoned");
            let shared = shared.get_or_insert_with(|| Shared {
                members: 0,
                outcome: tokio::sync::watch::channel(None).0,
            });
            shared.members += 1;
            SharedTicket {
                outcome: shared.outcome.subscribe(),
            }
        };
        // The transaction is open on purpose now: dropping the guard keeps the connection.
        self.raw_transaction = false;
        self.settle_shared().await?;
        Ok(ticket)
    }

    /// After a member's batch stopped on one of its checks: undoes what it did (all of the
    /// transaction if the member began it, else back to its savepoint) and settles the
    /// others' transaction as [`SqliteConn::shared_member_done`] would.
    pub(crate) async fn shared_member_failed(&mut self) -> Result<()> {
        if self.shared_open() {
            sqlx::raw_sql("ROLLBACK TO member; RELEASE member")
                .execute(&mut **self)
                .await?;
            self.raw_transaction = false;
            self.settle_shared().await
        } else {
            self.end_transaction(false).await
        }
    }

    /// Commits the shared transaction when no writer is queued to join it, or it is full.
    async fn settle_shared(&mut self) -> Result<()> {
        let commit = {
            let shared = self.set.shared.lock().expect("not poisoned");
            shared.as_ref().is_some_and(|s| {
                s.members >= MAX_MEMBERS || self.set.waiting.load(Ordering::Acquire) == 0
            })
        };
        if commit {
            self.commit_shared().await?;
        }
        Ok(())
    }

    /// Commits the shared transaction and tells its members. The transaction stays
    /// registered until the COMMIT has answered: a guard dropped before that closes the
    /// connection and fails the members rather than leave them waiting.
    async fn commit_shared(&mut self) -> Result<()> {
        self.raw_transaction = true;
        let result = sqlx::query("COMMIT").execute(&mut **self).await;
        let shared = self.set.shared.lock().expect("not poisoned").take();
        match result {
            Ok(_) => {
                self.raw_transaction = false;
                if let Some(shared) = shared {
                    self.set.shared_commits.fetch_add(1, Ordering::Relaxed);
                    self.set
                        .shared_members
                        .fetch_add(u64::from(shared.members), Ordering::Relaxed);
                    shared.end(Ok(()));
                }
                Ok(())
            }
            Err(e) => {
                if let Some(shared) = shared {
                    shared.end(Err(format!("commit failed: {e}").into()));
                }
                // `raw_transaction` stays set: the guard closes the connection, rolling
                // back whatever the failed COMMIT left open.
                Err(e.into())
            }
        }
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
            // SQLite's lock (busy timeout) until this one is gone. A shared transaction open
            // on it goes too, and its members learn so.
            let shared = self.set.shared.lock().expect("not poisoned").take();
            if let Some(shared) = shared {
                shared.end(Err(
                    "the connection was closed in the middle of a batch".into()
                ));
            }
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

    /// Runs a member's batch inserting `x` (in the form for an open shared transaction or
    /// not) and registers it, as the one-trip batches in `sql.rs` do.
    async fn member(c: &mut SqliteConn<'_>, x: i64) -> SharedTicket {
        let sql = if c.shared_open() {
            "SAVEPOINT member; INSERT INTO t VALUES ($1); RELEASE member;"
        } else {
            "BEGIN; SAVEPOINT member; INSERT INTO t VALUES ($1); RELEASE member;"
        };
        c.begin_in_batch();
        sqlx::query(sql).bind(x).execute(&mut **c).await.unwrap();
        c.shared_member_done().await.unwrap()
    }

    /// A group left open by member 1 (a writer is counted as queued: the caller takes that
    /// back), and member 2's batch run up to its insert: its checks would stop it here.
    async fn group_with_a_second_member_half_way(
        set: &SqliteConns,
    ) -> (SqliteConn<'_>, SharedTicket) {
        let mut c = set.get_to_share().await.unwrap();
        set.waiting.fetch_add(1, Ordering::AcqRel);
        let first = member(&mut c, 1).await;
        c.begin_in_batch();
        sqlx::query("SAVEPOINT member; INSERT INTO t VALUES (2);")
            .execute(&mut *c)
            .await
            .unwrap();
        (c, first)
    }

    /// Rows committed, as a separate connection sees them.
    async fn committed_rows(dir: &tempfile::TempDir) -> Vec<i64> {
        let url = format!("sqlite://{}/t.db", dir.path().display());
        let mut c = SqliteConnectOptions::from_str(&url)
            .unwrap()
            .connect()
            .await
            .unwrap();
        sqlx::query_scalar("SELECT x FROM t ORDER BY x")
            .fetch_all(&mut c)
            .await
            .unwrap()
    }

    /// A member with nobody queued behind it commits at once.
    #[tokio::test]
    async fn a_lone_member_commits_its_shared_transaction_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let set = set_with_table(&dir, 1, IDLE_TIMEOUT).await;
        let mut c = set.get_to_share().await.unwrap();
        let ticket = member(&mut c, 1).await;
        assert!(!c.shared_open());
        drop(c);
        ticket.committed(&set).await.unwrap();
        assert_eq!(committed_rows(&dir).await, vec![1]);
    }

    /// With a writer queued, a member leaves the transaction open; the queued one joins it and,
    /// last in line, commits both. Until then nothing of either is visible.
    #[tokio::test]
    async fn a_queued_writer_joins_and_commits_the_group() {
        let dir = tempfile::tempdir().unwrap();
        let set = std::sync::Arc::new(set_with_table(&dir, 1, IDLE_TIMEOUT).await);
        let mut c = set.get_to_share().await.unwrap();
        let second = {
            let set = set.clone();
            tokio::spawn(async move {
                let mut c = set.get_to_share().await.unwrap();
                assert!(
                    c.shared_open(),
                    "the first member left its transaction open"
                );
                let ticket = member(&mut c, 2).await;
                drop(c);
                ticket.committed(&set).await
            })
        };
        while set.waiting.load(Ordering::Acquire) == 0 {
            tokio::task::yield_now().await;
        }
        let first = member(&mut c, 1).await;
        assert!(c.shared_open());
        drop(c);
        assert!(committed_rows(&dir).await.is_empty() || second.is_finished());
        second.await.unwrap().unwrap();
        first.committed(&set).await.unwrap();
        assert_eq!(committed_rows(&dir).await, vec![1, 2]);
        assert_eq!(
            set.shared_commit_stats(),
            (1, 2),
            "one commit for both members"
        );
    }

    /// A member whose checks fail takes back its own part only; an ordinary holder commits
    /// what the others left open before it gets the connection.
    #[tokio::test]
    async fn a_failed_member_undoes_its_part_and_get_commits_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let set = set_with_table(&dir, 1, IDLE_TIMEOUT).await;
        let (mut c, first) = group_with_a_second_member_half_way(&set).await;
        c.shared_member_failed().await.unwrap();
        assert!(
            c.shared_open(),
            "the first member's transaction is still open"
        );
        drop(c);
        set.waiting.fetch_sub(1, Ordering::AcqRel);
        assert!(committed_rows(&dir).await.is_empty());
        let c = set.get().await.unwrap();
        assert!(!c.shared_open());
        drop(c);
        first.committed(&set).await.unwrap();
        assert_eq!(committed_rows(&dir).await, vec![1]);
    }

    /// A group left open for a writer that then gave up is committed by its members, who
    /// stop waiting after [`MEMBER_PATIENCE`].
    #[tokio::test]
    async fn members_commit_a_group_left_for_a_writer_that_gave_up() {
        let dir = tempfile::tempdir().unwrap();
        let set = std::sync::Arc::new(set_with_table(&dir, 1, IDLE_TIMEOUT).await);
        let mut c = set.get_to_share().await.unwrap();
        let gave_up = {
            let set = set.clone();
            tokio::spawn(async move { drop(set.get_to_share().await) })
        };
        while set.waiting.load(Ordering::Acquire) == 0 {
            tokio::task::yield_now().await;
        }
        let ticket = member(&mut c, 1).await;
        assert!(c.shared_open());
        gave_up.abort();
        assert!(gave_up.await.unwrap_err().is_cancelled());
        assert_eq!(set.waiting.load(Ordering::Acquire), 0);
        drop(c);
        ticket.committed(&set).await.unwrap();
        assert_eq!(committed_rows(&dir).await, vec![1]);
    }

    /// A member cancelled in the middle of its batch closes the connection, which rolls back
    /// the whole group; the members that joined before learn that nothing was stored.
    #[tokio::test]
    async fn a_member_cancelled_mid_batch_fails_the_group() {
        let dir = tempfile::tempdir().unwrap();
        let set = set_with_table(&dir, 1, IDLE_TIMEOUT).await;
        let (c, first) = group_with_a_second_member_half_way(&set).await;
        drop(c);
        set.waiting.fetch_sub(1, Ordering::AcqRel);
        let err = first.committed(&set).await.unwrap_err();
        assert!(matches!(err, MetadataError::SharedTransaction(_)), "{err}");
        assert!(committed_rows(&dir).await.is_empty());
        assert!(rows(&set).await.is_empty());
    }
}
