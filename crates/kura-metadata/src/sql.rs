//! [`MetadataStore`] over SQL: SQLite (embedded default) and PostgreSQL, one set of queries.
//!
//! Queries are written once in SQL both engines accept (`$n` placeholders, `ON CONFLICT`,
//! `RETURNING`) and expanded per backend by the [`with_read!`]/[`with_write!`] macros, which
//! keep native driver types and per-backend connection options. DDL differs slightly, so each
//! backend has its own migration files; both are embedded in the binary and applied at start.
//!
//! SQLite gets a dedicated single write connection: writes are serialized in-process, so a
//! transaction never fails on SQLite's lock upgrade, while reads run in parallel under WAL.
//! Its connections are held by [`crate::sqlite_conns`], not by sqlx's pool (which pings each
//! connection it hands out and takes back: a thread round trip each time on SQLite).

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::Connection as _;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};

use crate::checkpoint::Checkpointer;
use crate::sqlite_conns::{SharedTicket, SqliteConn, SqliteConns};
use crate::wal_sync::WalSync;
use crate::{
    AccessStore, ArtifactRecord, BlobBytes, BlobRecord, CommitOutcome, DeleteManifestOutcome,
    DeletedManifest, LinkOutcome, ManifestKey, ManifestRecord, MemberRecord, MetadataError,
    MetadataStore, NewManifest, ProjectRecord, PutManifestOutcome, QuotaExceeded, ReferrerRecord,
    RepositoryFilter, Result, RobotPermission, RobotRecord, TagGuard, UploadRecord, UsageChange,
    UserRecord, now_ms, project_of,
};

/// Embedded migrations: (version, name, sqlite DDL, postgres DDL). Append only.
const MIGRATIONS: &[(i64, &str, &str, &str)] = &[
    (
        1,
        "core",
        include_str!("migrations/sqlite/0001_core.sql"),
        include_str!("migrations/postgres/0001_core.sql"),
    ),
    (
        2,
        "identity",
        include_str!("migrations/sqlite/0002_identity.sql"),
        include_str!("migrations/postgres/0002_identity.sql"),
    ),
    (
        3,
        "robots",
        include_str!("migrations/sqlite/0003_robots.sql"),
        include_str!("migrations/postgres/0003_robots.sql"),
    ),
    (
        4,
        "pull_times",
        include_str!("migrations/sqlite/0004_pull_times.sql"),
        include_str!("migrations/postgres/0004_pull_times.sql"),
    ),
    (
        5,
        "lifecycle",
        include_str!("migrations/sqlite/0005_lifecycle.sql"),
        include_str!("migrations/postgres/0005_lifecycle.sql"),
    ),
    (
        6,
        "operations",
        include_str!("migrations/sqlite/0006_operations.sql"),
        include_str!("migrations/postgres/0006_operations.sql"),
    ),
    (
        7,
        "inline_blobs",
        include_str!("migrations/sqlite/0007_inline_blobs.sql"),
        include_str!("migrations/postgres/0007_inline_blobs.sql"),
    ),
    (
        8,
        "commit_checks",
        include_str!("migrations/sqlite/0008_commit_checks.sql"),
        include_str!("migrations/postgres/0008_commit_checks.sql"),
    ),
    (
        9,
        "without_rowid",
        include_str!("migrations/sqlite/0009_without_rowid.sql"),
        include_str!("migrations/postgres/0009_without_rowid.sql"),
    ),
];

/// Key of the PostgreSQL advisory lock that serializes migrations across replicas.
const MIGRATION_LOCK_KEY: i64 = 0x6b75_7261_6d69_6772; // "kuramigr"

// One value per store, built once: the size difference between the variants costs nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Pools {
    Sqlite {
        read: SqliteConns,
        /// Shared with the tasks that run shared-transaction members (see [`run_member`]).
        write: Arc<SqliteConns>,
        /// Strict durability: group commit of the write-ahead log (see [`crate::wal_sync`]).
        wal: Option<Arc<WalSync>>,
        /// Checkpoints the log off the write connection (see [`crate::checkpoint`]); none
        /// for an in-memory database.
        _checkpointer: Option<Checkpointer>,
    },
    Postgres(PgPool),
}

/// Runs `$body` with `$p` bound to a connection (`&mut`) for reads: on SQLite one of the
/// read-only connections, on PostgreSQL one from the pool, held for the whole body.
macro_rules! with_read {
    ($self:expr, |$p:ident| $body:expr) => {
        match &$self.pools {
            Pools::Sqlite { read, .. } => {
                let mut conn = read.get().await?;
                let $p: &mut sqlx::SqliteConnection = &mut conn;
                $body
            }
            Pools::Postgres(pg) => {
                let mut conn = pg.acquire().await?;
                let $p: &mut sqlx::PgConnection = &mut conn;
                $body
            }
        }
    };
}

/// Runs `$body` with `$p` bound to a connection (`&mut`) for writes: on SQLite the single
/// write connection, held for the whole body. With strict durability, what the body committed
/// is synced before its value is handed back, so a body must not `return` early once it has
/// committed something (early returns are for rollbacks and errors).
macro_rules! with_write {
    ($self:expr, |$p:ident| $body:expr) => {
        match &$self.pools {
            Pools::Sqlite { write, wal, .. } => {
                let out = {
                    let mut conn = write.get().await?;
                    let $p: &mut sqlx::SqliteConnection = &mut conn;
                    $body
                };
                if let Some(wal) = wal {
                    wal.barrier().await?;
                }
                out
            }
            Pools::Postgres(pg) => {
                let mut conn = pg.acquire().await?;
                let $p: &mut sqlx::PgConnection = &mut conn;
                $body
            }
        }
    };
}

/// [`with_write!`] without waiting for SQLite's log sync: for writes whose loss in a crash
/// loses nothing that was acknowledged. They become durable with the next synced write (the
/// log is synced as a whole), or at SQLite's next checkpoint. PostgreSQL commits as always.
macro_rules! with_write_unsynced {
    ($self:expr, |$p:ident| $body:expr) => {
        match &$self.pools {
            Pools::Sqlite { write, .. } => {
                let mut conn = write.get().await?;
                let $p: &mut sqlx::SqliteConnection = &mut conn;
                $body
            }
            Pools::Postgres(pg) => {
                let mut conn = pg.acquire().await?;
                let $p: &mut sqlx::PgConnection = &mut conn;
                $body
            }
        }
    };
}

/// The storage limit of the project a repository belongs to, inside transaction `$tx`.
macro_rules! storage_limit {
    ($tx:ident, $repository_id:expr) => {{
        let limit: Option<Option<i64>> = sqlx::query_scalar(
            "SELECT p.storage_limit FROM repositories r JOIN projects p ON p.name = r.project \
             WHERE r.id = $1",
        )
        .bind($repository_id)
        .fetch_optional(&mut *$tx)
        .await?;
        limit.flatten()
    }};
}

/// The project's usage in bytes, read only when a limit applies.
macro_rules! usage_bytes {
    ($tx:ident, $repository_id:expr, $limit:expr) => {{
        if $limit.is_some() {
            let used: Option<i64> = sqlx::query_scalar(
                "SELECT u.bytes FROM repositories r JOIN project_usage u ON u.project = r.project \
                 WHERE r.id = $1",
            )
            .bind($repository_id)
            .fetch_optional(&mut *$tx)
            .await?;
            used.unwrap_or(0)
        } else {
            0
        }
    }};
}

/// After a link change: `Some` when it grew the project's usage past its limit. Usage is kept
/// by triggers, and the usage row stays locked until commit, so concurrent pushes into one
/// project are judged one after the other.
macro_rules! quota_check {
    ($tx:ident, $repository_id:expr, $limit:expr, $before:expr) => {{
        match $limit {
            None => Ok(None),
            Some(limit) => {
                let after = usage_bytes!($tx, $repository_id, Some(limit));
                if after > $before && after > limit {
                    Err(QuotaExceeded {
                        usage: $before.max(0) as u64,
                        requested: (after - $before) as u64,
                        limit: limit.max(0) as u64,
                    })
                } else {
                    Ok(Some(UsageChange {
                        before: $before.max(0) as u64,
                        after: after.max(0) as u64,
                        limit: limit.max(0) as u64,
                    }))
                }
            }
        }
    }};
}

/// Appends a tag move to the history.
macro_rules! record_tag_move {
    ($tx:ident, $repository_id:expr, $tag:expr, $digest:expr, $previous:expr, $now:expr) => {{
        sqlx::query(
            "INSERT INTO tag_history (repository_id, tag, digest, previous_digest, changed_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind($repository_id)
        .bind($tag)
        .bind($digest)
        .bind($previous)
        .bind($now)
        .execute(&mut *$tx)
        .await?;
    }};
}

/// Moves a manifest (and what it references) from `manifests` into `deleted_manifests`, if it
/// still matches the extra SQL condition `$cond` (on alias-free `manifests` columns, `$4` =
/// repository id, `$5` = digest are not available: use `$1`/`$2`, and `$3` = now). The DELETE
/// is the arbiter: under concurrency the row is moved only if the delete itself matched.
/// Evaluates to true when the manifest was moved.
macro_rules! trash_manifest {
    ($tx:ident, $repository_id:expr, $digest:expr, $now:expr, $cond:expr) => {{
        let refs: Vec<(String, String)> = sqlx::query_as(
            "SELECT child_digest, child_kind FROM manifest_references \
             WHERE repository_id = $1 AND manifest_digest = $2",
        )
        .bind($repository_id)
        .bind($digest)
        .fetch_all(&mut *$tx)
        .await?;
        type Row = (
            String,
            i64,
            Vec<u8>,
            Option<String>,
            Option<String>,
            Option<String>,
            i64,
        );
        let sql = format!(
            "DELETE FROM manifests WHERE repository_id = $1 AND digest = $2 AND $3 = $3 {} \
             RETURNING media_type, size, payload, artifact_type, subject_digest, annotations, \
             created_at",
            $cond
        );
        let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind($repository_id)
            .bind($digest)
            .bind($now)
            .fetch_optional(&mut *$tx)
            .await?;
        match row {
            None => false,
            Some(r) => {
                sqlx::query(
                    "DELETE FROM deleted_manifests WHERE repository_id = $1 AND digest = $2",
                )
                .bind($repository_id)
                .bind($digest)
                .execute(&mut *$tx)
                .await?;
                sqlx::query(
                    "INSERT INTO deleted_manifests (repository_id, digest, media_type, size, \
                     payload, artifact_type, subject_digest, annotations, created_at, deleted_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                )
                .bind($repository_id)
                .bind($digest)
                .bind(r.0)
                .bind(r.1)
                .bind(r.2)
                .bind(r.3)
                .bind(r.4)
                .bind(r.5)
                .bind(r.6)
                .bind($now)
                .execute(&mut *$tx)
                .await?;
                for (child, kind) in refs {
                    sqlx::query(
                        "INSERT INTO deleted_manifest_references \
                         (repository_id, manifest_digest, child_digest, child_kind) \
                         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                    )
                    .bind($repository_id)
                    .bind($digest)
                    .bind(child)
                    .bind(kind)
                    .execute(&mut *$tx)
                    .await?;
                }
                true
            }
        }
    }};
}

/// Tuning for [`SqlStore::connect`].
#[derive(Debug, Clone)]
pub struct SqlOptions {
    /// Upper bound on pooled connections (reads, for SQLite).
    pub max_connections: u32,
    /// Make every SQLite write durable before it is acknowledged (group commit of the log)
    /// rather than durable at the next checkpoint.
    pub durable_commits: bool,
}

impl Default for SqlOptions {
    fn default() -> Self {
        SqlOptions {
            max_connections: 16,
            durable_commits: true,
        }
    }
}

/// How a new upload session names its repository.
#[derive(Clone, Copy)]
enum UploadRepository<'a> {
    Id(i64),
    Name(&'a str),
}

pub struct SqlStore {
    pub(crate) pools: Pools,
    /// Repositories whose last blob commit found a storage limit on their project (SQLite
    /// only): their commits take the checked batch at once instead of trying the one-trip
    /// batch first. Only a hint: every batch checks the limit itself.
    limited_repositories: std::sync::Mutex<std::collections::HashSet<i64>>,
}

impl SqlStore {
    /// Connects to `url` (`sqlite://path` or `postgres://...`) and applies migrations.
    pub async fn connect(url: &str, options: &SqlOptions) -> Result<SqlStore> {
        Self::connect_through(url, options, i64::MAX).await
    }

    /// [`SqlStore::connect`] applying migrations up to version `last` only (upgrade tests
    /// start from an older schema).
    async fn connect_through(url: &str, options: &SqlOptions, last: i64) -> Result<SqlStore> {
        let pools = if url.starts_with("sqlite:") {
            let base = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // Strict durability syncs the log itself, once for a group of commits.
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true);
            let in_memory = base.get_filename().as_os_str() == ":memory:";
            let wal =
                (options.durable_commits && !in_memory).then(|| WalSync::new(base.get_filename()));
            // The write connection checkpoints rarely: that stalls every writer (see
            // `checkpoint.rs`, whose task does the copying). Its statement journals (the
            // savepoints of a shared transaction's members) stay in memory: past 64 KiB
            // SQLite would spill one to a temporary file (open, writes, unlink per group).
            let autocheckpoint = crate::checkpoint::WRITER_AUTOCHECKPOINT_PAGES.to_string();
            let write = Arc::new(
                SqliteConns::open(
                    base.clone()
                        .pragma("wal_autocheckpoint", autocheckpoint)
                        .pragma("temp_store", "memory"),
                    1,
                )
                .await?,
            );
            let checkpointer = if in_memory {
                None
            } else {
                Some(Checkpointer::start(base.clone()).await?)
            };
            let read = SqliteConns::open(base.read_only(true), options.max_connections).await?;
            Pools::Sqlite {
                read,
                write,
                wal,
                _checkpointer: checkpointer,
            }
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let opts = PgConnectOptions::from_str(url)?;
            let pool = PgPoolOptions::new()
                .max_connections(options.max_connections.max(2))
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(opts)
                .await?;
            Pools::Postgres(pool)
        } else {
            return Err(MetadataError::Config(format!(
                "unsupported metadata URL {url:?}: use sqlite://PATH or postgres://..."
            )));
        };
        let store = SqlStore {
            pools,
            limited_repositories: Default::default(),
        };
        store.migrate(last).await?;
        if let Pools::Sqlite { wal: Some(wal), .. } = &store.pools {
            wal.barrier().await?;
        }
        Ok(store)
    }

    /// Inserts an upload session row; with [`UploadRepository::Name`] in one statement that also
    /// resolves the repository (nothing is inserted, and `None` returned, when there is none).
    async fn insert_upload(
        &self,
        repository: UploadRepository<'_>,
        u: &UploadRecord,
    ) -> Result<Option<i64>> {
        const COLUMNS: &str = "INSERT INTO uploads (id, repository_id, size, hash_algorithm, \
                               hash_state, backend_state, created_at, updated_at)";
        let sql = match repository {
            UploadRepository::Id(_) => {
                format!("{COLUMNS} VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING repository_id")
            }
            UploadRepository::Name(_) => format!(
                "{COLUMNS} SELECT $1, r.id, $3, $4, $5, $6, $7, $8 FROM repositories r \
                 WHERE r.name = $2 RETURNING repository_id"
            ),
        };
        // A new session holds no data yet, and its backend state (an object store's multipart
        // id) is recorded by a synced write of its own: a crash that loses this row only makes
        // the client start its upload again (BLOB_UPLOAD_UNKNOWN), so the POST does not wait
        // for the log sync.
        with_write_unsynced!(self, |p| {
            let q = sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).bind(&u.id);
            let q = match repository {
                UploadRepository::Id(id) => q.bind(id),
                UploadRepository::Name(name) => q.bind(name),
            };
            Ok(q.bind(u.size as i64)
                .bind(&u.hash_algorithm)
                .bind(&u.hash_state)
                .bind(&u.backend_state)
                .bind(u.created_at)
                .bind(u.updated_at)
                .fetch_optional(&mut *p)
                .await?)
        })
    }

    async fn migrate(&self, last: i64) -> Result<()> {
        match &self.pools {
            Pools::Sqlite { write, .. } => {
                let mut conn = write.get().await?;
                sqlx::raw_sql(
                    "CREATE TABLE IF NOT EXISTS schema_migrations \
                     (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
                )
                .execute(&mut *conn)
                .await?;
                // Off for the run, as SQLite's procedure for rebuilding a table requires (the
                // pragma is a no-op inside a transaction); each migration's commit is preceded
                // by a check that it left every foreign key satisfied.
                sqlx::raw_sql("PRAGMA foreign_keys = OFF")
                    .execute(&mut *conn)
                    .await?;
                let result = apply_sqlite_migrations(&mut conn, last).await;
                sqlx::raw_sql("PRAGMA foreign_keys = ON")
                    .execute(&mut *conn)
                    .await?;
                result?;
            }
            Pools::Postgres(pool) => {
                // One connection holds a session advisory lock for the whole run, so replicas
                // starting together apply each migration exactly once.
                let mut conn = pool.acquire().await?;
                sqlx::query("SELECT pg_advisory_lock($1)")
                    .bind(MIGRATION_LOCK_KEY)
                    .execute(&mut *conn)
                    .await?;
                let result: Result<()> = async {
                    sqlx::raw_sql(
                        "CREATE TABLE IF NOT EXISTS schema_migrations \
                         (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
                    )
                    .execute(&mut *conn)
                    .await?;
                    for (version, name, _, ddl) in MIGRATIONS.iter().filter(|m| m.0 <= last) {
                        let done: Option<i64> = sqlx::query_scalar(
                            "SELECT version FROM schema_migrations WHERE version = $1",
                        )
                        .bind(version)
                        .fetch_optional(&mut *conn)
                        .await?;
                        if done.is_some() {
                            continue;
                        }
                        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
                        sqlx::raw_sql(*ddl).execute(&mut *tx).await.map_err(|e| {
                            MetadataError::Migration(format!("{version} {name}: {e}"))
                        })?;
                        sqlx::query("INSERT INTO schema_migrations VALUES ($1, $2, $3)")
                            .bind(version)
                            .bind(name)
                            .bind(now_ms())
                            .execute(&mut *tx)
                            .await?;
                        tx.commit().await?;
                        tracing::info!(version, name, "applied postgres migration");
                    }
                    Ok(())
                }
                .await;
                sqlx::query("SELECT pg_advisory_unlock($1)")
                    .bind(MIGRATION_LOCK_KEY)
                    .execute(&mut *conn)
                    .await?;
                result?;
            }
        }
        Ok(())
    }
}

/// Applies the SQLite migrations up to `last` not yet recorded, each in its own transaction,
/// on a connection with foreign keys off (see [`SqlStore::migrate`]).
async fn apply_sqlite_migrations(conn: &mut sqlx::SqliteConnection, last: i64) -> Result<()> {
    for (version, name, ddl, _) in MIGRATIONS.iter().filter(|m| m.0 <= last) {
        let done: Option<i64> =
            sqlx::query_scalar("SELECT version FROM schema_migrations WHERE version = $1")
                .bind(version)
                .fetch_optional(&mut *conn)
                .await?;
        if done.is_some() {
            continue;
        }
        // Said before, not only after: one that rebuilds tables (9) takes seconds on a large
        // database, during which the registry does not answer yet.
        tracing::info!(version, name, "applying sqlite migration");
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        sqlx::raw_sql(*ddl)
            .execute(&mut *tx)
            .await
            .map_err(|e| MetadataError::Migration(format!("{version} {name}: {e}")))?;
        let broken: Vec<(String, Option<i64>, String)> =
            sqlx::query_as("SELECT \"table\", rowid, parent FROM pragma_foreign_key_check")
                .fetch_all(&mut *tx)
                .await?;
        if let Some((table, rowid, parent)) = broken.first() {
            return Err(MetadataError::Migration(format!(
                "{version} {name}: {} rows break a foreign key, the first in {table} \
                 (rowid {rowid:?}) naming {parent}",
                broken.len()
            )));
        }
        sqlx::query("INSERT INTO schema_migrations VALUES ($1, $2, $3)")
            .bind(version)
            .bind(name)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(version, name, "applied sqlite migration");
    }
    Ok(())
}

/// (apply the visibility filter?, user id or -1) for [`RepositoryFilter`] queries.
fn filter_params(filter: &RepositoryFilter) -> (bool, i64) {
    match filter {
        RepositoryFilter::All => (false, -1),
        RepositoryFilter::VisibleTo { user_id } => (true, user_id.unwrap_or(-1)),
    }
}

type UserRow = (i64, String, Option<String>, Option<String>, bool, bool, i64);
const USER_COLUMNS: &str = "id, username, password_hash, email, is_admin, disabled, created_at";

fn user_from_row(r: UserRow) -> UserRecord {
    UserRecord {
        id: r.0,
        username: r.1,
        password_hash: r.2,
        email: r.3,
        is_admin: r.4,
        disabled: r.5,
        created_at: r.6,
    }
}

fn project_from_row(r: (i64, String, bool, i64)) -> ProjectRecord {
    ProjectRecord {
        id: r.0,
        name: r.1,
        public: r.2,
        created_at: r.3,
    }
}

#[async_trait]
impl AccessStore for SqlStore {
    async fn user_count(&self) -> Result<i64> {
        with_read!(self, |p| {
            Ok(sqlx::query_scalar("SELECT COUNT(*) FROM users")
                .fetch_one(&mut *p)
                .await?)
        })
    }

    async fn create_user(
        &self,
        username: &str,
        password_hash: Option<&str>,
        email: Option<&str>,
        is_admin: bool,
    ) -> Result<Option<i64>> {
        let now = now_ms();
        with_write!(self, |p| {
            Ok(sqlx::query_scalar(
                "INSERT INTO users (username, password_hash, email, is_admin, disabled, \
                 created_at, updated_at) VALUES ($1, $2, $3, $4, FALSE, $5, $5) \
                 ON CONFLICT (username) DO NOTHING RETURNING id",
            )
            .bind(username)
            .bind(password_hash)
            .bind(email)
            .bind(is_admin)
            .bind(now)
            .fetch_optional(&mut *p)
            .await?)
        })
    }

    async fn user_by_name(&self, username: &str) -> Result<Option<UserRecord>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE username = $1");
        let row: Option<UserRow> = with_read!(self, |p| {
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(username)
                .fetch_optional(&mut *p)
                .await?
        });
        Ok(row.map(user_from_row))
    }

    async fn user_by_id(&self, id: i64) -> Result<Option<UserRecord>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
        let row: Option<UserRow> = with_read!(self, |p| {
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(id)
                .fetch_optional(&mut *p)
                .await?
        });
        Ok(row.map(user_from_row))
    }

    async fn list_users(&self, last: Option<&str>, limit: u32) -> Result<Vec<UserRecord>> {
        let sql = format!(
            "SELECT {USER_COLUMNS} FROM users WHERE username > $1 ORDER BY username LIMIT $2"
        );
        let rows: Vec<UserRow> = with_read!(self, |p| {
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(last.unwrap_or(""))
                .bind(i64::from(limit))
                .fetch_all(&mut *p)
                .await?
        });
        Ok(rows.into_iter().map(user_from_row).collect())
    }

    async fn update_user(
        &self,
        id: i64,
        password_hash: Option<&str>,
        is_admin: Option<bool>,
        disabled: Option<bool>,
    ) -> Result<bool> {
        with_write!(self, |p| {
            let res = sqlx::query(
                "UPDATE users SET password_hash = COALESCE($2, password_hash), \
                 is_admin = COALESCE($3, is_admin), disabled = COALESCE($4, disabled), \
                 updated_at = $5 WHERE id = $1",
            )
            .bind(id)
            .bind(password_hash)
            .bind(is_admin)
            .bind(disabled)
            .bind(now_ms())
            .execute(&mut *p)
            .await?;
            Ok(res.rows_affected() > 0)
        })
    }

    async fn delete_user(&self, id: i64) -> Result<bool> {
        with_write!(self, |p| {
            let res = sqlx::query("DELETE FROM users WHERE id = $1")
                .bind(id)
                .execute(&mut *p)
                .await?;
            Ok(res.rows_affected() > 0)
        })
    }

    async fn create_project(&self, name: &str, public: bool) -> Result<Option<i64>> {
        with_write!(self, |p| {
            Ok(sqlx::query_scalar(
                "INSERT INTO projects (name, public, created_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO NOTHING RETURNING id",
            )
            .bind(name)
            .bind(public)
            .bind(now_ms())
            .fetch_optional(&mut *p)
            .await?)
        })
    }

    async fn project(&self, name: &str) -> Result<Option<ProjectRecord>> {
        let row: Option<(i64, String, bool, i64)> = with_read!(self, |p| {
            sqlx::query_as("SELECT id, name, public, created_at FROM projects WHERE name = $1")
                .bind(name)
                .fetch_optional(&mut *p)
                .await?
        });
        Ok(row.map(project_from_row))
    }

    async fn list_projects(
        &self,
        filter: &RepositoryFilter,
        last: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ProjectRecord>> {
        let (filtered, user_id) = filter_params(filter);
        let rows: Vec<(i64, String, bool, i64)> = with_read!(self, |p| {
            sqlx::query_as(
                "SELECT p.id, p.name, p.public, p.created_at FROM projects p \
                 WHERE p.name > $1 AND (NOT $3 OR p.public OR EXISTS (SELECT 1 \
                   FROM project_members pm WHERE pm.project_id = p.id AND pm.user_id = $4)) \
                 ORDER BY p.name LIMIT $2",
            )
            .bind(last.unwrap_or(""))
            .bind(i64::from(limit))
            .bind(filtered)
            .bind(user_id)
            .fetch_all(&mut *p)
            .await?
        });
        Ok(rows.into_iter().map(project_from_row).collect())
    }

    async fn set_project_public(&self, name: &str, public: bool) -> Result<bool> {
        with_write!(self, |p| {
            let res = sqlx::query("UPDATE projects SET public = $2 WHERE name = $1")
                .bind(name)
                .bind(public)
                .execute(&mut *p)
                .await?;
            Ok(res.rows_affected() > 0)
        })
    }

    async fn delete_project(&self, name: &str) -> Result<bool> {
        with_write!(self, |p| {
            let res = sqlx::query("DELETE FROM projects WHERE name = $1")
                .bind(name)
                .execute(&mut *p)
                .await?;
            Ok(res.rows_affected() > 0)
        })
    }

    async fn project_repository_count(&self, name: &str) -> Result<i64> {
        with_read!(self, |p| {
            Ok(sqlx::query_scalar(
                "SELECT COUNT(*) FROM repositories r WHERE r.project = $1 \
                 AND (EXISTS (SELECT 1 FROM manifests m WHERE m.repository_id = r.id) \
                   OR EXISTS (SELECT 1 FROM repository_blobs b WHERE b.repository_id = r.id))",
            )
            .bind(name)
            .fetch_one(&mut *p)
            .await?)
        })
    }

    async fn set_member(
        &self,
        project_id: i64,
        user_id: i64,
        role: &str,
        repositories: &str,
    ) -> Result<()> {
        with_write!(self, |p| {
            sqlx::query(
                "INSERT INTO project_members (project_id, user_id, role, repositories, created_at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (project_id, user_id) \
                 DO UPDATE SET role = excluded.role, repositories = excluded.repositories",
            )
            .bind(project_id)
            .bind(user_id)
            .bind(role)
            .bind(repositories)
            .bind(now_ms())
            .execute(&mut *p)
            .await?;
        });
        Ok(())
    }

    async fn remove_member(&self, project_id: i64, user_id: i64) -> Result<bool> {
        with_write!(self, |p| {
            let res =
                sqlx::query("DELETE FROM project_members WHERE project_id = $1 AND user_id = $2")
                    .bind(project_id)
                    .bind(user_id)
                    .execute(&mut *p)
                    .await?;
            Ok(res.rows_affected() > 0)
        })
    }

    async fn members(&self, project_id: i64) -> Result<Vec<MemberRecord>> {
        let rows: Vec<(i64, String, String, String)> = with_read!(self, |p| {
            sqlx::query_as(
                "SELECT u.id, u.username, pm.role, pm.repositories FROM project_members pm \
                 JOIN users u ON u.id = pm.user_id WHERE pm.project_id = $1 \
                 ORDER BY u.username",
            )
            .bind(project_id)
            .fetch_all(&mut *p)
            .await?
        });
        Ok(rows
            .into_iter()
            .map(|(user_id, username, role, repositories)| MemberRecord {
                user_id,
                username,
                role,
                repositories,
            })
            .collect())
    }

    async fn membership(&self, project_id: i64, user_id: i64) -> Result<Option<(String, String)>> {
        with_read!(self, |p| {
            Ok(sqlx::query_as(
                "SELECT role, repositories FROM project_members \
                 WHERE project_id = $1 AND user_id = $2",
            )
            .bind(project_id)
            .bind(user_id)
            .fetch_optional(&mut *p)
            .await?)
        })
    }

    async fn create_robot(
        &self,
        robot: &RobotRecord,
        project_id: Option<i64>,
        permissions: &[(i64, String, String)],
    ) -> Result<Option<i64>> {
        with_write!(self, |p| {
            let mut tx = p.begin().await?;
            let id: Option<i64> = sqlx::query_scalar(
                "INSERT INTO robots (name, project_id, description, secret_hash, expires_at, \
                 disabled, created_at) VALUES ($1, $2, $3, $4, $5, FALSE, $6) \
                 ON CONFLICT (name) DO NOTHING RETURNING id",
            )
            .bind(&robot.name)
            .bind(project_id)
            .bind(&robot.description)
            .bind(&robot.secret_hash)
            .bind(robot.expires_at)
            .bind(now_ms())
            .fetch_optional(&mut *tx)
            .await?;
            let Some(id) = id else {
                tx.rollback().await?;
                return Ok(None);
            };
            for (project, repositories, actions) in permissions {
                sqlx::query(
                    "INSERT INTO robot_permissions (robot_id, project_id, repositories, actions) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                )
                .bind(id)
                .bind(project)
                .bind(repositories)
                .bind(actions)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(Some(id))
        })
    }

    async fn robot_by_name(&self, name: &str) -> Result<Option<RobotRecord>> {
        let mut robots = self.robots_where(Some(name), None).await?;
        Ok(robots.pop())
    }

    async fn list_robots(&self, project_id: Option<i64>) -> Result<Vec<RobotRecord>> {
        self.robots_where(None, project_id).await
    }

    async fn update_robot(
        &self,
        id: i64,
        secret_hash: Option<&str>,
        disabled: Option<bool>,
    ) -> Result<bool> {
        with_write!(self, |p| {
            let res = sqlx::query(
                "UPDATE robots SET secret_hash = COALESCE($2, secret_hash), \
                 disabled = COALESCE($3, disabled) WHERE id = $1",
            )
            .bind(id)
            .bind(secret_hash)
            .bind(disabled)
            .execute(&mut *p)
            .await?;
            Ok(res.rows_affected() > 0)
        })
    }

    async fn delete_robot(&self, id: i64) -> Result<bool> {
        with_write!(self, |p| {
            let res = sqlx::query("DELETE FROM robots WHERE id = $1")
                .bind(id)
                .execute(&mut *p)
                .await?;
            Ok(res.rows_affected() > 0)
        })
    }

    async fn setting(&self, key: &str) -> Result<Option<String>> {
        with_read!(self, |p| {
            Ok(
                sqlx::query_scalar("SELECT value FROM settings WHERE key = $1")
                    .bind(key)
                    .fetch_optional(&mut *p)
                    .await?,
            )
        })
    }

    async fn put_setting(&self, key: &str, value: &str) -> Result<()> {
        with_write!(self, |p| {
            sqlx::query(
                "INSERT INTO settings (key, value) VALUES ($1, $2) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )
            .bind(key)
            .bind(value)
            .execute(&mut *p)
            .await?;
        });
        Ok(())
    }

    async fn setting_or_insert(&self, key: &str, value: &str) -> Result<String> {
        with_write!(self, |p| {
            sqlx::query("INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                .bind(key)
                .bind(value)
                .execute(&mut *p)
                .await?;
            Ok(
                sqlx::query_scalar("SELECT value FROM settings WHERE key = $1")
                    .bind(key)
                    .fetch_one(&mut *p)
                    .await?,
            )
        })
    }
}

type RobotRow = (
    i64,
    String,
    Option<String>,
    String,
    String,
    Option<i64>,
    bool,
    i64,
);

impl SqlStore {
    /// Robots by name, or of one project, or all; with their permissions.
    async fn robots_where(
        &self,
        name: Option<&str>,
        project_id: Option<i64>,
    ) -> Result<Vec<RobotRecord>> {
        let rows: Vec<RobotRow> = with_read!(self, |p| {
            sqlx::query_as(
                "SELECT r.id, r.name, pr.name, r.description, r.secret_hash, r.expires_at, \
                 r.disabled, r.created_at FROM robots r \
                 LEFT JOIN projects pr ON pr.id = r.project_id \
                 WHERE ($1 IS NULL OR r.name = $1) AND ($2 IS NULL OR r.project_id = $2) \
                 ORDER BY r.name",
            )
            .bind(name)
            .bind(project_id)
            .fetch_all(&mut *p)
            .await?
        });
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let perms: Vec<(String, String, String)> = with_read!(self, |p| {
                sqlx::query_as(
                    "SELECT pr.name, rp.repositories, rp.actions FROM robot_permissions rp \
                     JOIN projects pr ON pr.id = rp.project_id WHERE rp.robot_id = $1 \
                     ORDER BY pr.name, rp.repositories",
                )
                .bind(r.0)
                .fetch_all(&mut *p)
                .await?
            });
            out.push(RobotRecord {
                id: r.0,
                name: r.1,
                project: r.2,
                description: r.3,
                secret_hash: r.4,
                expires_at: r.5,
                disabled: r.6,
                created_at: r.7,
                permissions: perms
                    .into_iter()
                    .map(|(project, repositories, actions)| RobotPermission {
                        project,
                        repositories,
                        actions,
                    })
                    .collect(),
            });
        }
        Ok(out)
    }
}

type UploadRow = (String, i64, i64, String, Vec<u8>, String, i64, i64);

fn upload_from_row(r: UploadRow) -> UploadRecord {
    UploadRecord {
        id: r.0,
        repository_id: r.1,
        size: r.2 as u64,
        hash_algorithm: r.3,
        hash_state: r.4,
        backend_state: r.5,
        created_at: r.6,
        updated_at: r.7,
    }
}

/// The arguments of [`MetadataStore::commit_blob`], for the SQLite batches.
struct BlobCommit<'a> {
    repository_id: i64,
    digest: &'a str,
    size: u64,
    bytes: BlobBytes<'a>,
    upload_id: &'a str,
    recorded_size: u64,
}

/// The rows a blob batch returns: `(what, number, text)`.
type BlobBatchRow = (String, Option<i64>, Option<String>);

impl<'a> BlobCommit<'a> {
    /// A blob batch's query with $1 (the upload) and the parameters of `blob_writes!` bound.
    fn batch(
        &self,
        sql: &'static str,
        now: i64,
    ) -> sqlx::query::QueryAs<'a, sqlx::Sqlite, BlobBatchRow, sqlx::sqlite::SqliteArguments> {
        sqlx::query_as(sql)
            .bind(self.upload_id)
            .bind(self.repository_id)
            .bind(self.digest)
            .bind(self.size as i64)
            .bind(self.bytes.storage_key())
            .bind(now)
            .bind(self.bytes.content())
    }
}

/// [`BlobCommit`] owning its strings and bytes, for a task of its own ([`run_member`]).
struct OwnedBlobCommit {
    repository_id: i64,
    digest: String,
    size: u64,
    storage_key: String,
    content: Option<Vec<u8>>,
    upload_id: String,
    recorded_size: u64,
}

impl OwnedBlobCommit {
    fn of(c: &BlobCommit<'_>) -> OwnedBlobCommit {
        OwnedBlobCommit {
            repository_id: c.repository_id,
            digest: c.digest.to_owned(),
            size: c.size,
            storage_key: c.bytes.storage_key().to_owned(),
            content: c.bytes.content().map(<[u8]>::to_vec),
            upload_id: c.upload_id.to_owned(),
            recorded_size: c.recorded_size,
        }
    }

    fn borrow(&self) -> BlobCommit<'_> {
        BlobCommit {
            repository_id: self.repository_id,
            digest: &self.digest,
            size: self.size,
            bytes: match &self.content {
                Some(content) => BlobBytes::Inline(content),
                None => BlobBytes::Stored(&self.storage_key),
            },
            upload_id: &self.upload_id,
            recorded_size: self.recorded_size,
        }
    }
}

/// A one-trip member's outcome once its group has committed (see `sqlite_conns`): `None`
/// when the member recorded nothing and the caller needs a transaction of its own.
async fn member_outcome<T>(
    write: &SqliteConns,
    member: Option<(T, Option<SharedTicket>)>,
) -> Result<Option<T>> {
    let Some((outcome, ticket)) = member else {
        return Ok(None);
    };
    if let Some(ticket) = ticket {
        ticket.committed(write).await?;
    }
    Ok(Some(outcome))
}

/// Runs a shared-transaction member (see `sqlite_conns`) as a task of its own, so that it
/// runs to the end even when the request that started it is cancelled (a client gone): a
/// member dropped half way through its batch closes the write connection, which rolls back
/// its whole group, failing writers that had nothing to do with the cancelled one.
async fn run_member<T: Send + 'static>(
    member: impl std::future::Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    tokio::spawn(member)
        .await
        .map_err(|e| MetadataError::SharedTransaction(format!("the write task failed: {e}")))?
}

/// The writes of a blob commit on SQLite, shared by [`commit_blob_unlimited`] and
/// [`commit_blob_batched`]: $2 repository, $3 digest, $4 size, $5 storage key, $6 now,
/// $7 inline content. Returns `('key', NULL, recorded storage key)`. An earlier commit of the
/// digest wins (the caller drops its copy), and touching it keeps a concurrent GC from taking
/// it (see migration 5); DO UPDATE (not DO NOTHING) so that RETURNING yields the row in both
/// cases. Inline bytes are kept only when the blob's row is inline (this commit's, or an
/// earlier inline commit's, whose bytes are the same): an earlier stored copy wins.
macro_rules! blob_writes {
    () => {
        "INSERT INTO blobs (digest, size, storage_key, created_at, touched_at) \
        VALUES ($3, $4, $5, $6, $6) ON CONFLICT (digest) \
        DO UPDATE SET touched_at = excluded.touched_at RETURNING 'key', NULL, storage_key; \
        INSERT INTO blob_contents (digest, content) SELECT $3, $7 \
        WHERE $7 IS NOT NULL AND EXISTS (SELECT 1 FROM blobs WHERE digest = $3 AND storage_key = $5) \
        ON CONFLICT (digest) DO NOTHING; \
        INSERT INTO repository_blobs (repository_id, digest, created_at, touched_at) \
        VALUES ($2, $3, $6, $6) ON CONFLICT (repository_id, digest) \
        DO UPDATE SET touched_at = excluded.touched_at;"
    };
}

/// Entries of [`SqlStore::limited_repositories`] kept at most (then it starts over).
const LIMITED_REPOSITORIES_MAX: usize = 4096;

/// A member's batch in a shared transaction (see `sqlite_conns`), in its two forms: the
/// first member's, which begins the transaction, and a later one's. Each runs between
/// `SAVEPOINT member` and `RELEASE member`.
macro_rules! member_batch {
    ($($part:tt)*) => {
        (
            concat!("BEGIN; SAVEPOINT member; ", $($part)*, " RELEASE member;"),
            concat!("SAVEPOINT member; ", $($part)*, " RELEASE member;"),
        )
    };
}

/// The end of a member's batch (see [`member_batch!`]): its rows and the ticket for the
/// shared transaction's COMMIT, or the name of the check that stopped it, once its part is
/// undone. Any other error is returned as it is, and the connection's guard closes the
/// connection, shared transaction and all.
async fn end_member<T>(
    write: &mut SqliteConn<'_>,
    result: Result<T, sqlx::Error>,
) -> Result<Result<(T, SharedTicket), &'static str>> {
    match result {
        Ok(rows) => {
            let ticket = write.shared_member_done().await?;
            Ok(Ok((rows, ticket)))
        }
        Err(e) => match failed_check(&e) {
            Some(check) => {
                write.shared_member_failed().await?;
                Ok(Err(check))
            }
            None => Err(e.into()),
        },
    }
}

/// The check named in an error from a batch that inserted into `commit_checks`.
fn failed_check(e: &sqlx::Error) -> Option<&'static str> {
    let message = e.as_database_error()?.message();
    [
        "storage_limit",
        "upload_changed",
        "missing_reference",
        "tag_immutable",
    ]
    .into_iter()
    .find(|check| message.contains(&format!("commit_checks.{check}")))
}

/// A blob commit on SQLite in one round trip, for a repository whose project has no storage
/// limit (the common case): a member of a shared transaction (see `sqlite_conns`), with each
/// check that would refuse the commit stopping the batch instead (`commit_checks`,
/// migration 8). The ticket says when the commit is committed. `None`: the project has a
/// limit after all, nothing was recorded, and the checked batch ([`commit_blob_batched`]),
/// which reports usage, must do the commit.
async fn commit_blob_unlimited(
    write: &mut SqliteConn<'_>,
    c: &BlobCommit<'_>,
) -> Result<Option<(CommitOutcome, Option<SharedTicket>)>> {
    // The statements of `commit_blob_batched`, with the limit and the session's
    // compare-and-set as checks rather than facts. $8 is the recorded size.
    const SQL: (&str, &str) = member_batch!(
        "INSERT INTO commit_checks (storage_limit) SELECT NULL FROM repositories r \
        JOIN projects p ON p.name = r.project WHERE r.id = $2 AND p.storage_limit IS NOT NULL; \
        DELETE FROM uploads WHERE id = $1 AND size = $8; \
        INSERT INTO commit_checks (upload_changed) SELECT NULL FROM uploads WHERE id = $1; ",
        blob_writes!()
    );
    let sql = if write.shared_open() { SQL.1 } else { SQL.0 };
    let now = now_ms();
    write.begin_in_batch();
    let result = c
        .batch(sql, now)
        .bind(c.recorded_size as i64)
        .fetch_all(&mut **write)
        .await;
    let (rows, ticket) = match end_member(write, result).await? {
        Ok(done) => done,
        Err("upload_changed") => return Ok(Some((CommitOutcome::UploadChanged, None))),
        Err(_) => return Ok(None),
    };
    let recorded = rows
        .into_iter()
        .find_map(|r| r.2)
        .ok_or_else(|| MetadataError::Config("blob commit returned no storage key".into()))?;
    let outcome = CommitOutcome::Committed {
        storage_key: recorded,
        usage: None,
    };
    Ok(Some((outcome, Some(ticket))))
}

/// A blob commit on SQLite in two round trips to its thread (BEGIN with one batch, then
/// COMMIT or ROLLBACK), for the same reason as [`put_manifest_batched`]: the single write
/// connection is held for the whole transaction, and every small push makes one. The batch writes first and returns what
/// the checks need as `(what, number)` rows; a failed check rolls everything back.
async fn commit_blob_batched(
    write: &mut SqliteConn<'_>,
    c: &BlobCommit<'_>,
) -> Result<CommitOutcome> {
    // $1 upload, then the parameters of `blob_writes!`.
    // The DELETE ends the session and is the compare-and-set that keeps a concurrent append
    // on another replica from slipping in between this upload's last write and its commit.
    // Usage is kept by triggers on repository_blobs, so reading it before and after the link
    // tells what the link added.
    const SQL: &str = concat!(
        "BEGIN; \
        DELETE FROM uploads WHERE id = $1 RETURNING 'session', size, NULL; \
        SELECT 'limit', p.storage_limit, NULL FROM repositories r \
        JOIN projects p ON p.name = r.project WHERE r.id = $2; \
        SELECT 'before', u.bytes, NULL FROM repositories r \
        JOIN project_usage u ON u.project = r.project WHERE r.id = $2; \
        ",
        blob_writes!(),
        " SELECT 'after', u.bytes, NULL FROM repositories r \
        JOIN project_usage u ON u.project = r.project WHERE r.id = $2;"
    );
    // Read the clock once the connection is ours: waiting for it must not age the row.
    let now = now_ms();
    write.begin_in_batch();
    let rows = c.batch(SQL, now).fetch_all(&mut **write).await?;
    let number = |what: &str| rows.iter().find(|r| r.0 == what).map(|r| r.1);
    if let Some(session) = number("session")
        && session != Some(c.recorded_size as i64)
    {
        write.end_transaction(false).await?;
        return Ok(CommitOutcome::UploadChanged);
    }
    let recorded = rows
        .iter()
        .find(|r| r.0 == "key")
        .and_then(|r| r.2.clone())
        .ok_or_else(|| MetadataError::Config("blob commit returned no storage key".into()))?;
    let usage = match number("limit").flatten() {
        None => None,
        Some(limit) => {
            let before = number("before").flatten().unwrap_or(0);
            let after = number("after").flatten().unwrap_or(0);
            if after > before && after > limit {
                write.end_transaction(false).await?;
                return Ok(CommitOutcome::QuotaExceeded(QuotaExceeded {
                    usage: before.max(0) as u64,
                    requested: (after - before) as u64,
                    limit: limit.max(0) as u64,
                }));
            }
            Some(UsageChange {
                before: before.max(0) as u64,
                after: after.max(0) as u64,
                limit: limit.max(0) as u64,
            })
        }
    };
    write.end_transaction(true).await?;
    Ok(CommitOutcome::Committed {
        storage_key: recorded,
        usage,
    })
}

/// The distinct values of `v`, sorted.
fn distinct(v: &[String]) -> Vec<&str> {
    let set: std::collections::BTreeSet<&str> = v.iter().map(String::as_str).collect();
    set.into_iter().collect()
}

/// The first statements of a manifest PUT on SQLite, shared by [`put_manifest_checked`] and
/// [`put_manifest_batched`]: the tag's current target and whether the manifest existed (as
/// `(what, digest)` rows), then the touch of every reference (see migration 5). $1
/// repository, $2 digest, $3 now, $4 tag, $11 and $12 the blob and manifest references.
macro_rules! manifest_reads {
    () => {
        "SELECT 'previous', digest FROM tags WHERE repository_id = $1 AND name = $4; \
        SELECT 'existed', digest FROM manifests WHERE repository_id = $1 AND digest = $2; \
        UPDATE repository_blobs SET touched_at = $3 \
        WHERE repository_id = $1 AND digest IN (SELECT value FROM json_each($11)); \
        UPDATE manifests SET touched_at = $3 \
        WHERE repository_id = $1 AND digest IN (SELECT value FROM json_each($12));"
    };
}

/// The writes of a manifest PUT on SQLite, once its checks passed ($5..$10 the manifest's
/// columns). An existing manifest row is only touched, a new one also gets its references
/// and leaves the deleted-manifest grace period (a digest is never in both tables, so for an
/// existing row that DELETE matches nothing, and its references are already there). The
/// tag's history is written first, while the tag still shows where it pointed.
macro_rules! manifest_writes {
    () => {
        "INSERT INTO manifests (repository_id, digest, media_type, size, payload, \
        artifact_type, subject_digest, annotations, created_at, touched_at) \
        VALUES ($1, $2, $5, $6, $7, $8, $9, $10, $3, $3) \
        ON CONFLICT (repository_id, digest) DO UPDATE SET touched_at = excluded.touched_at; \
        DELETE FROM deleted_manifests WHERE repository_id = $1 AND digest = $2; \
        INSERT INTO manifest_references (repository_id, manifest_digest, child_digest, child_kind) \
        SELECT $1, $2, value, 'blob' FROM json_each($11) \
        UNION ALL SELECT $1, $2, value, 'manifest' FROM json_each($12) \
        WHERE true ON CONFLICT DO NOTHING; \
        INSERT INTO tag_history (repository_id, tag, digest, previous_digest, changed_at) \
        SELECT $1, $4, $2, (SELECT digest FROM tags WHERE repository_id = $1 AND name = $4), $3 \
        WHERE $4 IS NOT NULL AND NOT EXISTS \
        (SELECT 1 FROM tags WHERE repository_id = $1 AND name = $4 AND digest = $2); \
        INSERT INTO tags (repository_id, name, digest, updated_at) \
        SELECT $1, $4, $2, $3 WHERE $4 IS NOT NULL \
        ON CONFLICT (repository_id, name) \
        DO UPDATE SET digest = excluded.digest, updated_at = excluded.updated_at \
        WHERE tags.digest <> excluded.digest"
    };
}

/// A manifest batch's query with its parameters $1..$12 bound (see `manifest_reads!`).
fn manifest_batch<'q>(
    sql: &'static str,
    m: &'q NewManifest,
    blobs: &[&str],
    manifests: &[&str],
    now: i64,
) -> sqlx::query::QueryAs<'q, sqlx::Sqlite, (String, String), sqlx::sqlite::SqliteArguments> {
    let json = |v: &[&str]| serde_json::to_string(v).expect("strings serialize");
    sqlx::query_as::<_, (String, String)>(sql)
        .bind(m.repository_id)
        .bind(&m.digest)
        .bind(now)
        .bind(&m.tag)
        .bind(&m.media_type)
        .bind(m.payload.len() as i64)
        .bind(&m.payload)
        .bind(&m.artifact_type)
        .bind(&m.subject_digest)
        .bind(&m.annotations)
        .bind(json(blobs))
        .bind(json(manifests))
}

/// A manifest PUT on SQLite in one round trip: the statements of [`put_manifest_batched`]
/// with its refusals as checks that stop the batch (`commit_checks`, migration 8), as a
/// member of a shared transaction (see `sqlite_conns`); the ticket says when it is
/// committed. `None`: a reference is missing and nothing was recorded; the caller asks
/// [`put_manifest_batched`], which lists what is missing.
async fn put_manifest_checked(
    write: &mut SqliteConn<'_>,
    m: &NewManifest,
    blobs: &[&str],
    manifests: &[&str],
) -> Result<Option<(PutManifestOutcome, Option<SharedTicket>)>> {
    // As in `put_manifest_batched`; $13 is whether the tag is immutable. A missing reference
    // is checked before the tag, as there.
    const SQL: (&str, &str) = member_batch!(
        manifest_reads!(),
        " INSERT INTO commit_checks (missing_reference) \
        SELECT NULL FROM json_each($11) j WHERE NOT EXISTS \
        (SELECT 1 FROM repository_blobs WHERE repository_id = $1 AND digest = j.value) \
        UNION ALL SELECT NULL FROM json_each($12) j WHERE NOT EXISTS \
        (SELECT 1 FROM manifests WHERE repository_id = $1 AND digest = j.value); \
        INSERT INTO commit_checks (tag_immutable) SELECT NULL FROM tags \
        WHERE $13 AND repository_id = $1 AND name = $4 AND digest <> $2; ",
        manifest_writes!(),
        ";"
    );
    let sql = if write.shared_open() { SQL.1 } else { SQL.0 };
    let now = now_ms();
    write.begin_in_batch();
    let result = manifest_batch(sql, m, blobs, manifests, now)
        .bind(m.immutable_tag)
        .fetch_all(&mut **write)
        .await;
    let (rows, ticket) = match end_member(write, result).await? {
        Ok(done) => done,
        Err("tag_immutable") => return Ok(Some((PutManifestOutcome::TagImmutable, None))),
        Err(_) => return Ok(None),
    };
    let previous = rows
        .iter()
        .find(|(w, _)| w == "previous")
        .map(|(_, d)| d.clone());
    let existed = rows.iter().any(|(w, _)| w == "existed");
    let tag_changed = m.tag.is_some() && previous.as_deref() != Some(m.digest.as_str());
    let outcome = PutManifestOutcome::Stored {
        created: !existed,
        tag_changed,
        previous_tag_target: previous.filter(|d| *d != m.digest),
    };
    Ok(Some((outcome, Some(ticket))))
}

/// A manifest PUT on SQLite in two round trips to its thread (BEGIN with one batch, then
/// COMMIT or ROLLBACK) rather than one per statement: the single write connection is held
/// for the whole transaction, so its round trips bound every writer's throughput. The BEGIN
/// is the batch's first statement, which sqlx does not track; [`SqliteConn::begin_in_batch`]
/// makes a request cancelled half way close the connection (rolling back) instead of
/// handing a connection in an open transaction to the next writer.
///
/// The batch writes first and checks after: the same statements as the general path, in a
/// form that does not depend on what an earlier one found (upserts, conditional inserts), and
/// with the facts the checks need returned as `(what, digest)` rows (no row at all for a
/// reference that is present). A failed check rolls the whole transaction back, so nothing of
/// it is ever seen (only committed WAL frames are). The references travel as two JSON arrays,
/// so the statement text is the same for every manifest and stays prepared: one text per
/// reference count kept a prepared statement for each count seen.
async fn put_manifest_batched(
    write: &mut SqliteConn<'_>,
    m: &NewManifest,
    blobs: &[&str],
    manifests: &[&str],
) -> Result<PutManifestOutcome> {
    // $1 repository, $2 digest, $3 now, $4 tag (NULL: none), $5..$10 the manifest's columns,
    // $11 the distinct blob references, $12 the distinct manifest references (JSON arrays).
    const SQL: &str = concat!(
        "BEGIN; ",
        manifest_reads!(),
        " SELECT 'blob', j.value FROM json_each($11) j WHERE NOT EXISTS \
        (SELECT 1 FROM repository_blobs WHERE repository_id = $1 AND digest = j.value); \
        SELECT 'manifest', j.value FROM json_each($12) j WHERE NOT EXISTS \
        (SELECT 1 FROM manifests WHERE repository_id = $1 AND digest = j.value); ",
        manifest_writes!(),
        ";"
    );
    // Read the clock once the connection is ours: waiting for it must not age the row.
    let now = now_ms();
    write.begin_in_batch();
    let rows = manifest_batch(SQL, m, blobs, manifests, now)
        .fetch_all(&mut **write)
        .await?;
    let missing: Vec<String> = rows
        .iter()
        .filter(|(w, _)| w == "blob" || w == "manifest")
        .map(|(_, d)| d.clone())
        .collect();
    if !missing.is_empty() {
        write.end_transaction(false).await?;
        return Ok(PutManifestOutcome::MissingReferences(missing));
    }
    let previous = rows
        .iter()
        .find(|(w, _)| w == "previous")
        .map(|(_, d)| d.clone());
    if m.immutable_tag && previous.as_ref().is_some_and(|d| *d != m.digest) {
        write.end_transaction(false).await?;
        return Ok(PutManifestOutcome::TagImmutable);
    }
    let existed = rows.iter().any(|(w, _)| w == "existed");
    write.end_transaction(true).await?;
    let tag_changed = m.tag.is_some() && previous.as_deref() != Some(m.digest.as_str());
    Ok(PutManifestOutcome::Stored {
        created: !existed,
        tag_changed,
        previous_tag_target: previous.filter(|d| *d != m.digest),
    })
}

/// The names of a page fetched as one `string_agg(name, ',')` row (NULL: an empty page).
///
/// The aggregate carries no `ORDER BY` of its own: the page's subquery is ordered, and an
/// ordered aggregate made SQLite sort the page again through a temporary b-tree (two thirds of
/// a 10,000-tag listing's server time). Neither engine promises to aggregate in the
/// subquery's order, so the order is checked here, and restored if it ever was not kept.
fn split_names(joined: Option<String>) -> Vec<String> {
    let mut names: Vec<String> = joined
        .map(|j| j.split(',').map(str::to_string).collect())
        .unwrap_or_default();
    if !names.is_sorted() {
        names.sort_unstable();
    }
    names
}

const UPLOAD_COLUMNS: &str =
    "id, repository_id, size, hash_algorithm, hash_state, backend_state, created_at, updated_at";

type BlobRow = (String, i64, String, Option<Vec<u8>>);

/// The pull path's blob lookup, by repository name; a HEAD's carries no bytes.
const FIND_BLOB: &str = "SELECT b.digest, b.size, b.storage_key, NULL FROM repositories r \
     JOIN repository_blobs rb ON rb.repository_id = r.id \
     JOIN blobs b ON b.digest = rb.digest \
     WHERE r.name = $1 AND rb.digest = $2";

/// [`FIND_BLOB`] with an inline blob's bytes (one index probe more for a stored one).
const FIND_BLOB_WITH_CONTENT: &str = "SELECT b.digest, b.size, b.storage_key, c.content \
     FROM repositories r \
     JOIN repository_blobs rb ON rb.repository_id = r.id \
     JOIN blobs b ON b.digest = rb.digest \
     LEFT JOIN blob_contents c ON c.digest = b.digest \
     WHERE r.name = $1 AND rb.digest = $2";

fn blob_from_row((digest, size, storage_key, content): BlobRow) -> BlobRecord {
    BlobRecord {
        digest,
        size: size as u64,
        storage_key,
        content,
    }
}

fn manifest_from_row(r: (String, String, i64, Option<Vec<u8>>)) -> ManifestRecord {
    ManifestRecord {
        digest: r.0,
        media_type: r.1,
        size: r.2 as u64,
        payload: r.3,
    }
}

#[async_trait]
impl MetadataStore for SqlStore {
    fn kind(&self) -> &'static str {
        match self.pools {
            Pools::Sqlite { .. } => "sqlite",
            Pools::Postgres(_) => "postgres",
        }
    }

    fn single_process(&self) -> bool {
        matches!(self.pools, Pools::Sqlite { .. })
    }

    async fn ping(&self) -> Result<()> {
        with_read!(self, |p| {
            sqlx::query_scalar::<_, i32>("SELECT 1")
                .fetch_one(&mut *p)
                .await?;
        });
        Ok(())
    }

    async fn ensure_repository(&self, name: &str) -> Result<i64> {
        if let Some(id) = self.repository_id(name).await? {
            return Ok(id);
        }
        with_write!(self, |p| {
            sqlx::query(
                "INSERT INTO repositories (name, project, created_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO NOTHING",
            )
            .bind(name)
            .bind(project_of(name))
            .bind(now_ms())
            .execute(&mut *p)
            .await?;
            Ok(
                sqlx::query_scalar("SELECT id FROM repositories WHERE name = $1")
                    .bind(name)
                    .fetch_one(&mut *p)
                    .await?,
            )
        })
    }

    async fn repository_id(&self, name: &str) -> Result<Option<i64>> {
        with_read!(self, |p| {
            Ok(
                sqlx::query_scalar("SELECT id FROM repositories WHERE name = $1")
                    .bind(name)
                    .fetch_optional(&mut *p)
                    .await?,
            )
        })
    }

    async fn list_repositories(
        &self,
        filter: &RepositoryFilter,
        last: Option<&str>,
        limit: u32,
    ) -> Result<Vec<String>> {
        let (filtered, user_id) = filter_params(filter);
        // One row per page, as in `list_tags` (repository names never contain a comma).
        let joined: Option<String> = with_read!(self, |p| {
            sqlx::query_scalar(
                "SELECT string_agg(name, ',') FROM (\
                 SELECT r.name AS name FROM repositories r WHERE r.name > $1 \
                 AND (EXISTS (SELECT 1 FROM manifests m WHERE m.repository_id = r.id) \
                   OR EXISTS (SELECT 1 FROM repository_blobs b WHERE b.repository_id = r.id)) \
                 AND (NOT $3 OR r.project IN (SELECT name FROM projects WHERE public) \
                   OR r.project IN (SELECT p.name FROM projects p \
                      JOIN project_members pm ON pm.project_id = p.id \
                      WHERE pm.user_id = $4 AND pm.role <> 'limited_guest')) \
                 ORDER BY r.name LIMIT $2) page",
            )
            .bind(last.unwrap_or(""))
            .bind(i64::from(limit))
            .bind(filtered)
            .bind(user_id)
            .fetch_one(&mut *p)
            .await?
        });
        Ok(split_names(joined))
    }

    async fn search_repositories(
        &self,
        filter: &RepositoryFilter,
        term: &str,
        last: Option<&str>,
        limit: u32,
    ) -> Result<Vec<String>> {
        let (filtered, user_id) = filter_params(filter);
        // LIKE with the term's own wildcards escaped.
        let pattern = format!(
            "%{}%",
            term.to_lowercase()
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        );
        with_read!(self, |p| {
            Ok(sqlx::query_scalar(
                "SELECT r.name FROM repositories r WHERE r.name > $1 \
                 AND r.name LIKE $5 ESCAPE '\\' \
                 AND (EXISTS (SELECT 1 FROM manifests m WHERE m.repository_id = r.id) \
                   OR EXISTS (SELECT 1 FROM repository_blobs b WHERE b.repository_id = r.id)) \
                 AND (NOT $3 OR r.project IN (SELECT name FROM projects WHERE public) \
                   OR r.project IN (SELECT p.name FROM projects p \
                      JOIN project_members pm ON pm.project_id = p.id \
                      WHERE pm.user_id = $4 AND pm.role <> 'limited_guest')) \
                 ORDER BY r.name LIMIT $2",
            )
            .bind(last.unwrap_or(""))
            .bind(i64::from(limit))
            .bind(filtered)
            .bind(user_id)
            .bind(pattern)
            .fetch_all(&mut *p)
            .await?)
        })
    }

    async fn project_repositories(
        &self,
        project: &str,
        term: &str,
        last: Option<&str>,
        limit: u32,
    ) -> Result<Vec<String>> {
        let pattern = format!(
            "%{}%",
            term.to_lowercase()
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        );
        with_read!(self, |p| {
            Ok(sqlx::query_scalar(
                "SELECT r.name FROM repositories r WHERE r.project = $1 AND r.name > $2 \
                 AND r.name LIKE $4 ESCAPE '\\' \
                 AND (EXISTS (SELECT 1 FROM manifests m WHERE m.repository_id = r.id) \
                   OR EXISTS (SELECT 1 FROM repository_blobs b WHERE b.repository_id = r.id)) \
                 ORDER BY r.name LIMIT $3",
            )
            .bind(project)
            .bind(last.unwrap_or(""))
            .bind(i64::from(limit))
            .bind(pattern)
            .fetch_all(&mut *p)
            .await?)
        })
    }

    async fn repository_blob(
        &self,
        repository_id: i64,
        digest: &str,
    ) -> Result<Option<BlobRecord>> {
        let row: Option<BlobRow> = with_read!(self, |p| {
            sqlx::query_as(
                "SELECT b.digest, b.size, b.storage_key, NULL FROM repository_blobs rb \
                 JOIN blobs b ON b.digest = rb.digest \
                 WHERE rb.repository_id = $1 AND rb.digest = $2",
            )
            .bind(repository_id)
            .bind(digest)
            .fetch_optional(&mut *p)
            .await?
        });
        Ok(row.map(blob_from_row))
    }

    async fn find_blob(
        &self,
        repository: &str,
        digest: &str,
        content: bool,
    ) -> Result<Option<BlobRecord>> {
        let row: Option<BlobRow> = with_read!(self, |p| {
            sqlx::query_as(if content {
                FIND_BLOB_WITH_CONTENT
            } else {
                FIND_BLOB
            })
            .bind(repository)
            .bind(digest)
            .fetch_optional(&mut *p)
            .await?
        });
        Ok(row.map(blob_from_row))
    }

    async fn link_blob(&self, repository_id: i64, digest: &str) -> Result<LinkOutcome> {
        with_write!(self, |p| {
            let mut tx = p.begin().await?;
            // Read the clock once the connection is ours: waiting for it must not age the row.
            let now = now_ms();
            // Touching the blob row is what makes a concurrent GC skip it (see migration 5).
            let touched = sqlx::query("UPDATE blobs SET touched_at = $2 WHERE digest = $1")
                .bind(digest)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if touched == 0 {
                tx.rollback().await?;
                return Ok(LinkOutcome::UnknownBlob);
            }
            let limit = storage_limit!(tx, repository_id);
            let before = usage_bytes!(tx, repository_id, limit);
            sqlx::query(
                "INSERT INTO repository_blobs (repository_id, digest, created_at, touched_at) \
                 VALUES ($1, $2, $3, $3) ON CONFLICT (repository_id, digest) \
                 DO UPDATE SET touched_at = excluded.touched_at",
            )
            .bind(repository_id)
            .bind(digest)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            let usage = match quota_check!(tx, repository_id, limit, before) {
                Ok(usage) => usage,
                Err(exceeded) => {
                    tx.rollback().await?;
                    return Ok(LinkOutcome::QuotaExceeded(exceeded));
                }
            };
            tx.commit().await?;
            Ok(LinkOutcome::Linked { usage })
        })
    }

    async fn unlink_blob(&self, repository_id: i64, digest: &str) -> Result<bool> {
        with_write!(self, |p| {
            let res = sqlx::query(
                "DELETE FROM repository_blobs WHERE repository_id = $1 AND digest = $2",
            )
            .bind(repository_id)
            .bind(digest)
            .execute(&mut *p)
            .await?;
            Ok(res.rows_affected() > 0)
        })
    }

    async fn commit_blob(
        &self,
        repository_id: i64,
        digest: &str,
        size: u64,
        bytes: BlobBytes<'_>,
        upload_id: &str,
        recorded_size: u64,
    ) -> Result<CommitOutcome> {
        if let Pools::Sqlite { write, wal, .. } = &self.pools {
            let args = BlobCommit {
                repository_id,
                digest,
                size,
                bytes,
                upload_id,
                recorded_size,
            };
            let limited = {
                let set = self
                    .limited_repositories
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                set.contains(&repository_id)
            };
            let quick = if limited {
                None
            } else {
                let write = write.clone();
                let owned = OwnedBlobCommit::of(&args);
                run_member(async move {
                    let mut conn = write.get_to_share().await?;
                    let quick = commit_blob_unlimited(&mut conn, &owned.borrow()).await?;
                    drop(conn);
                    member_outcome(&write, quick).await
                })
                .await?
            };
            let outcome = match quick {
                Some(outcome) => outcome,
                None => {
                    // A transaction of its own, which reports usage.
                    let mut conn = write.get().await?;
                    let outcome = commit_blob_batched(&mut conn, &args).await?;
                    drop(conn);
                    let mut set = self
                        .limited_repositories
                        .lock()
                        .unwrap_or_else(|e| e.into_inner());
                    let has_limit = matches!(
                        outcome,
                        CommitOutcome::QuotaExceeded(_)
                            | CommitOutcome::Committed { usage: Some(_), .. }
                    );
                    if has_limit {
                        if set.len() >= LIMITED_REPOSITORIES_MAX {
                            set.clear();
                        }
                        set.insert(repository_id);
                    } else if !matches!(outcome, CommitOutcome::UploadChanged) {
                        set.remove(&repository_id);
                    }
                    outcome
                }
            };
            if let Some(wal) = wal {
                wal.barrier().await?;
            }
            return Ok(outcome);
        }
        with_write!(self, |p| {
            let mut tx = p.begin().await?;
            // Read the clock once the connection is ours: waiting for it must not age the row.
            let now = now_ms();
            // Ends the session, and is the compare-and-set that keeps a concurrent append on
            // another replica from slipping in between this upload's last write and its commit.
            // It also reads the project's storage limit, saving a statement (each one is a
            // round trip to SQLite's thread).
            let session: Option<(i64, Option<i64>)> = sqlx::query_as(
                "DELETE FROM uploads WHERE id = $1 RETURNING size, \
                 (SELECT p.storage_limit FROM repositories r JOIN projects p \
                 ON p.name = r.project WHERE r.id = $2)",
            )
            .bind(upload_id)
            .bind(repository_id)
            .fetch_optional(&mut *tx)
            .await?;
            let limit = match session {
                Some((size, _)) if size != recorded_size as i64 => {
                    tx.rollback().await?;
                    return Ok(CommitOutcome::UploadChanged);
                }
                Some((_, limit)) => limit,
                None => storage_limit!(tx, repository_id),
            };
            let before = usage_bytes!(tx, repository_id, limit);
            // An earlier commit of the digest wins (the caller drops its copy); touching it
            // keeps a concurrent GC from taking it (see migration 5).
            // DO UPDATE (not DO NOTHING) so that RETURNING yields the row in both cases.
            let recorded: String = sqlx::query_scalar(
                "INSERT INTO blobs (digest, size, storage_key, created_at, touched_at) \
                 VALUES ($1, $2, $3, $4, $4) ON CONFLICT (digest) \
                 DO UPDATE SET touched_at = excluded.touched_at RETURNING storage_key",
            )
            .bind(digest)
            .bind(size as i64)
            .bind(bytes.storage_key())
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            if let Some(content) = bytes.content()
                && recorded == bytes.storage_key()
            {
                // Same rule as the SQLite batch: an earlier stored copy wins.
                sqlx::query(
                    "INSERT INTO blob_contents (digest, content) VALUES ($1, $2) \
                     ON CONFLICT (digest) DO NOTHING",
                )
                .bind(digest)
                .bind(content)
                .execute(&mut *tx)
                .await?;
            }
            sqlx::query(
                "INSERT INTO repository_blobs (repository_id, digest, created_at, touched_at) \
                 VALUES ($1, $2, $3, $3) ON CONFLICT (repository_id, digest) \
                 DO UPDATE SET touched_at = excluded.touched_at",
            )
            .bind(repository_id)
            .bind(digest)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            let usage = match quota_check!(tx, repository_id, limit, before) {
                Ok(usage) => usage,
                Err(exceeded) => {
                    tx.rollback().await?;
                    return Ok(CommitOutcome::QuotaExceeded(exceeded));
                }
            };
            tx.commit().await?;
            Ok(CommitOutcome::Committed {
                storage_key: recorded,
                usage,
            })
        })
    }

    async fn create_upload(&self, u: &UploadRecord) -> Result<()> {
        self.insert_upload(UploadRepository::Id(u.repository_id), u)
            .await
            .map(drop)
    }

    async fn create_upload_in(&self, repository: &str, u: &UploadRecord) -> Result<Option<i64>> {
        self.insert_upload(UploadRepository::Name(repository), u)
            .await
    }

    async fn upload(&self, id: &str) -> Result<Option<UploadRecord>> {
        let sql = format!("SELECT {UPLOAD_COLUMNS} FROM uploads WHERE id = $1");
        let row: Option<UploadRow> = with_read!(self, |p| {
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(id)
                .fetch_optional(&mut *p)
                .await?
        });
        Ok(row.map(upload_from_row))
    }

    async fn upload_in(&self, repository: &str, id: &str) -> Result<Option<UploadRecord>> {
        let row: Option<UploadRow> = with_read!(self, |p| {
            sqlx::query_as(
                "SELECT u.id, u.repository_id, u.size, u.hash_algorithm, u.hash_state, \
                 u.backend_state, u.created_at, u.updated_at FROM uploads u \
                 JOIN repositories r ON r.id = u.repository_id WHERE u.id = $1 AND r.name = $2",
            )
            .bind(id)
            .bind(repository)
            .fetch_optional(&mut *p)
            .await?
        });
        Ok(row.map(upload_from_row))
    }

    async fn advance_upload(
        &self,
        id: &str,
        expected_size: u64,
        new_size: u64,
        hash_state: &[u8],
        backend_state: &str,
    ) -> Result<bool> {
        with_write!(self, |p| {
            let res = sqlx::query(
                "UPDATE uploads SET size = $3, hash_state = $4, backend_state = $5, \
                 updated_at = $6 WHERE id = $1 AND size = $2",
            )
            .bind(id)
            .bind(expected_size as i64)
            .bind(new_size as i64)
            .bind(hash_state)
            .bind(backend_state)
            .bind(now_ms())
            .execute(&mut *p)
            .await?;
            Ok(res.rows_affected() == 1)
        })
    }

    async fn delete_upload(&self, id: &str) -> Result<bool> {
        with_write!(self, |p| {
            let res = sqlx::query("DELETE FROM uploads WHERE id = $1")
                .bind(id)
                .execute(&mut *p)
                .await?;
            Ok(res.rows_affected() > 0)
        })
    }

    async fn stale_uploads(&self, updated_before: i64, limit: u32) -> Result<Vec<UploadRecord>> {
        let sql = format!(
            "SELECT {UPLOAD_COLUMNS} FROM uploads WHERE updated_at < $1 \
             ORDER BY updated_at LIMIT $2"
        );
        let rows: Vec<UploadRow> = with_read!(self, |p| {
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(updated_before)
                .bind(i64::from(limit))
                .fetch_all(&mut *p)
                .await?
        });
        Ok(rows.into_iter().map(upload_from_row).collect())
    }

    async fn put_manifest(&self, m: &NewManifest) -> Result<PutManifestOutcome> {
        let blobs = distinct(&m.blob_refs);
        let manifests = distinct(&m.manifest_refs);
        if let Pools::Sqlite { write, wal, .. } = &self.pools {
            let quick = {
                let write = write.clone();
                let m = m.clone();
                run_member(async move {
                    let blobs = distinct(&m.blob_refs);
                    let manifests = distinct(&m.manifest_refs);
                    let mut conn = write.get_to_share().await?;
                    let quick = put_manifest_checked(&mut conn, &m, &blobs, &manifests).await?;
                    drop(conn);
                    member_outcome(&write, quick).await
                })
                .await?
            };
            let outcome = match quick {
                Some(outcome) => outcome,
                // A reference is missing: the fact-returning batch, a transaction of its
                // own, says which.
                None => {
                    let mut conn = write.get().await?;
                    put_manifest_batched(&mut conn, m, &blobs, &manifests).await?
                }
            };
            if let Some(wal) = wal {
                wal.barrier().await?;
            }
            return Ok(outcome);
        }
        // PostgreSQL: statement by statement (its extended protocol takes one statement per
        // message). References travel as JSON arrays, so each statement's text is the same
        // for every manifest and stays prepared, whatever the number of references.
        let blob_list = serde_json::to_string(&blobs).expect("strings serialize");
        let manifest_list = serde_json::to_string(&manifests).expect("strings serialize");
        with_write!(self, |p| {
            let mut tx = p.begin().await?;
            // Read the clock once the connection is ours: waiting for it must not age the row.
            let now = now_ms();
            // Checking a reference *is* touching it: the update both proves the row exists and
            // makes a concurrent GC skip it (see migration 5). One statement per kind; only
            // when fewer rows matched than there are distinct references does a second
            // statement find out which ones are missing.
            let mut missing = Vec::new();
            for (table, list, n) in [
                ("repository_blobs", &blob_list, blobs.len()),
                ("manifests", &manifest_list, manifests.len()),
            ] {
                if n == 0 {
                    continue;
                }
                let sql = format!(
                    "UPDATE {table} SET touched_at = $2 WHERE repository_id = $1 \
                     AND digest IN (SELECT json_array_elements_text($3::json))"
                );
                let touched = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(m.repository_id)
                    .bind(now)
                    .bind(list)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if touched == n as u64 {
                    continue;
                }
                let sql = format!(
                    "SELECT d FROM json_array_elements_text($2::json) d WHERE NOT EXISTS \
                     (SELECT 1 FROM {table} t WHERE t.repository_id = $1 AND t.digest = d) \
                     ORDER BY d"
                );
                let absent: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                    .bind(m.repository_id)
                    .bind(list)
                    .fetch_all(&mut *tx)
                    .await?;
                missing.extend(absent);
            }
            if !missing.is_empty() {
                tx.rollback().await?;
                return Ok(PutManifestOutcome::MissingReferences(missing));
            }
            let previous: Option<String> = match &m.tag {
                Some(tag) => {
                    sqlx::query_scalar(
                        "SELECT digest FROM tags WHERE repository_id = $1 AND name = $2",
                    )
                    .bind(m.repository_id)
                    .bind(tag)
                    .fetch_optional(&mut *tx)
                    .await?
                }
                None => None,
            };
            if m.immutable_tag && previous.as_ref().is_some_and(|d| *d != m.digest) {
                tx.rollback().await?;
                return Ok(PutManifestOutcome::TagImmutable);
            }
            let existed = sqlx::query(
                "UPDATE manifests SET touched_at = $3 WHERE repository_id = $1 AND digest = $2",
            )
            .bind(m.repository_id)
            .bind(&m.digest)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                > 0;
            if !existed {
                sqlx::query(
                    "INSERT INTO manifests (repository_id, digest, media_type, size, payload, \
                     artifact_type, subject_digest, annotations, created_at, touched_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)",
                )
                .bind(m.repository_id)
                .bind(&m.digest)
                .bind(&m.media_type)
                .bind(m.payload.len() as i64)
                .bind(&m.payload)
                .bind(&m.artifact_type)
                .bind(&m.subject_digest)
                .bind(&m.annotations)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO manifest_references \
                     (repository_id, manifest_digest, child_digest, child_kind) \
                     SELECT $1, $2, d, 'blob' FROM json_array_elements_text($3::json) d \
                     UNION ALL \
                     SELECT $1, $2, d, 'manifest' FROM json_array_elements_text($4::json) d \
                     ON CONFLICT DO NOTHING",
                )
                .bind(m.repository_id)
                .bind(&m.digest)
                .bind(&blob_list)
                .bind(&manifest_list)
                .execute(&mut *tx)
                .await?;
                // Live again: it no longer waits in the deleted-manifest grace period.
                sqlx::query(
                    "DELETE FROM deleted_manifests WHERE repository_id = $1 AND digest = $2",
                )
                .bind(m.repository_id)
                .bind(&m.digest)
                .execute(&mut *tx)
                .await?;
            }
            let tag_changed = m.tag.is_some() && previous.as_deref() != Some(m.digest.as_str());
            if let Some(tag) = &m.tag
                && tag_changed
            {
                sqlx::query(
                    "INSERT INTO tags (repository_id, name, digest, updated_at) \
                         VALUES ($1, $2, $3, $4) ON CONFLICT (repository_id, name) \
                         DO UPDATE SET digest = excluded.digest, updated_at = excluded.updated_at",
                )
                .bind(m.repository_id)
                .bind(tag)
                .bind(&m.digest)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                record_tag_move!(
                    tx,
                    m.repository_id,
                    tag,
                    Some(&m.digest),
                    previous.as_deref(),
                    now
                );
            }
            tx.commit().await?;
            Ok(PutManifestOutcome::Stored {
                created: !existed,
                tag_changed,
                previous_tag_target: previous.filter(|d| *d != m.digest),
            })
        })
    }

    async fn manifest_by_digest(
        &self,
        repository_id: i64,
        digest: &str,
        with_payload: bool,
    ) -> Result<Option<ManifestRecord>> {
        let sql = if with_payload {
            "SELECT digest, media_type, size, payload FROM manifests \
             WHERE repository_id = $1 AND digest = $2"
        } else {
            "SELECT digest, media_type, size, NULL FROM manifests \
             WHERE repository_id = $1 AND digest = $2"
        };
        let row: Option<(String, String, i64, Option<Vec<u8>>)> = with_read!(self, |p| {
            sqlx::query_as(sql)
                .bind(repository_id)
                .bind(digest)
                .fetch_optional(&mut *p)
                .await?
        });
        Ok(row.map(manifest_from_row))
    }

    async fn manifest_by_tag(
        &self,
        repository_id: i64,
        tag: &str,
        with_payload: bool,
    ) -> Result<Option<ManifestRecord>> {
        let sql = if with_payload {
            "SELECT m.digest, m.media_type, m.size, m.payload FROM tags t \
             JOIN manifests m ON m.repository_id = t.repository_id AND m.digest = t.digest \
             WHERE t.repository_id = $1 AND t.name = $2"
        } else {
            "SELECT m.digest, m.media_type, m.size, NULL FROM tags t \
             JOIN manifests m ON m.repository_id = t.repository_id AND m.digest = t.digest \
             WHERE t.repository_id = $1 AND t.name = $2"
        };
        let row: Option<(String, String, i64, Option<Vec<u8>>)> = with_read!(self, |p| {
            sqlx::query_as(sql)
                .bind(repository_id)
                .bind(tag)
                .fetch_optional(&mut *p)
                .await?
        });
        Ok(row.map(manifest_from_row))
    }

    async fn find_manifest(
        &self,
        repository: &str,
        key: ManifestKey<'_>,
        with_payload: bool,
    ) -> Result<Option<ManifestRecord>> {
        let payload = if with_payload { "m.payload" } else { "NULL" };
        let (sql, value) = match key {
            ManifestKey::Tag(t) => (
                format!(
                    "SELECT m.digest, m.media_type, m.size, {payload} FROM repositories r \
                     JOIN tags t ON t.repository_id = r.id \
                     JOIN manifests m ON m.repository_id = t.repository_id AND m.digest = t.digest \
                     WHERE r.name = $1 AND t.name = $2"
                ),
                t,
            ),
            ManifestKey::Digest(d) => (
                format!(
                    "SELECT m.digest, m.media_type, m.size, {payload} FROM repositories r \
                     JOIN manifests m ON m.repository_id = r.id \
                     WHERE r.name = $1 AND m.digest = $2"
                ),
                d,
            ),
        };
        let row: Option<(String, String, i64, Option<Vec<u8>>)> = with_read!(self, |p| {
            sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
                .bind(repository)
                .bind(value)
                .fetch_optional(&mut *p)
                .await?
        });
        Ok(row.map(manifest_from_row))
    }

    async fn delete_tag(&self, repository_id: i64, tag: &str) -> Result<bool> {
        let now = now_ms();
        with_write!(self, |p| {
            let mut tx = p.begin().await?;
            let old: Option<String> = sqlx::query_scalar(
                "DELETE FROM tags WHERE repository_id = $1 AND name = $2 RETURNING digest",
            )
            .bind(repository_id)
            .bind(tag)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(old) = &old {
                record_tag_move!(
                    tx,
                    repository_id,
                    tag,
                    None::<&str>,
                    Some(old.as_str()),
                    now
                );
            }
            tx.commit().await?;
            Ok(old.is_some())
        })
    }

    async fn delete_manifest(
        &self,
        repository_id: i64,
        digest: &str,
        protected: &TagGuard<'_>,
    ) -> Result<DeleteManifestOutcome> {
        let now = now_ms();
        with_write!(self, |p| {
            let mut tx = p.begin().await?;
            let tags: Vec<String> = sqlx::query_scalar(
                "SELECT name FROM tags WHERE repository_id = $1 AND digest = $2 ORDER BY name",
            )
            .bind(repository_id)
            .bind(digest)
            .fetch_all(&mut *tx)
            .await?;
            if let Some(tag) = tags.iter().find(|t| protected(t)) {
                tx.rollback().await?;
                return Ok(DeleteManifestOutcome::Immutable(tag.clone()));
            }
            sqlx::query("DELETE FROM tags WHERE repository_id = $1 AND digest = $2")
                .bind(repository_id)
                .bind(digest)
                .execute(&mut *tx)
                .await?;
            for tag in &tags {
                record_tag_move!(tx, repository_id, tag, None::<&str>, Some(digest), now);
            }
            if !trash_manifest!(tx, repository_id, digest, now, "") {
                tx.rollback().await?;
                return Ok(DeleteManifestOutcome::NotFound);
            }
            tx.commit().await?;
            Ok(DeleteManifestOutcome::Deleted(DeletedManifest { tags }))
        })
    }

    async fn list_tags(
        &self,
        repository_id: i64,
        last: Option<&str>,
        limit: u32,
    ) -> Result<Vec<String>> {
        // One row for the whole page: the SQLite driver hands every result row from its own
        // thread to the caller separately, which made a 10,000-tag list cost a thread switch
        // per tag. Tag names never contain a comma (the distribution spec's tag grammar).
        let joined: Option<String> = with_read!(self, |p| {
            sqlx::query_scalar(
                "SELECT string_agg(name, ',') FROM \
                 (SELECT name FROM tags WHERE repository_id = $1 AND name > $2 \
                 ORDER BY name LIMIT $3) page",
            )
            .bind(repository_id)
            .bind(last.unwrap_or(""))
            .bind(i64::from(limit))
            .fetch_one(&mut *p)
            .await?
        });
        Ok(split_names(joined))
    }

    async fn list_artifacts(
        &self,
        repository_id: i64,
        before: Option<(i64, &str)>,
        limit: u32,
    ) -> Result<Vec<ArtifactRecord>> {
        type Row = (String, String, Option<String>, i64, i64, Option<i64>);
        let (bt, bd) = before.unwrap_or((i64::MAX, ""));
        let rows: Vec<Row> = with_read!(self, |p| {
            sqlx::query_as(
                "SELECT digest, media_type, artifact_type, size, created_at, last_pulled_at \
                 FROM manifests WHERE repository_id = $1 \
                 AND (created_at < $2 OR (created_at = $2 AND digest > $3)) \
                 ORDER BY created_at DESC, digest LIMIT $4",
            )
            .bind(repository_id)
            .bind(bt)
            .bind(bd)
            .bind(i64::from(limit))
            .fetch_all(&mut *p)
            .await?
        });
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let tags: Vec<String> = with_read!(self, |p| {
                sqlx::query_scalar(
                    "SELECT name FROM tags WHERE repository_id = $1 AND digest = $2 ORDER BY name",
                )
                .bind(repository_id)
                .bind(&r.0)
                .fetch_all(&mut *p)
                .await?
            });
            out.push(ArtifactRecord {
                digest: r.0,
                media_type: r.1,
                artifact_type: r.2,
                size: r.3 as u64,
                pushed_at: r.4,
                last_pulled_at: r.5,
                tags,
            });
        }
        Ok(out)
    }

    async fn record_pulls(&self, pulls: &[(String, String, i64)]) -> Result<()> {
        if pulls.is_empty() {
            return Ok(());
        }
        with_write!(self, |p| {
            let mut tx = p.begin().await?;
            for (repo, digest, at) in pulls {
                sqlx::query(
                    "UPDATE manifests SET last_pulled_at = $3 WHERE digest = $2 \
                     AND repository_id = (SELECT id FROM repositories WHERE name = $1) \
                     AND (last_pulled_at IS NULL OR last_pulled_at < $3)",
                )
                .bind(repo)
                .bind(digest)
                .bind(at)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    async fn delete_repository(&self, repository_id: i64) -> Result<Vec<UploadRecord>> {
        let sql = format!("SELECT {UPLOAD_COLUMNS} FROM uploads WHERE repository_id = $1");
        with_write!(self, |p| {
            let mut tx = p.begin().await?;
            let uploads: Vec<UploadRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(repository_id)
                .fetch_all(&mut *tx)
                .await?;
            for stmt in [
                "DELETE FROM tags WHERE repository_id = $1",
                "DELETE FROM tag_history WHERE repository_id = $1",
                "DELETE FROM deleted_manifests WHERE repository_id = $1",
                "DELETE FROM manifest_references WHERE repository_id = $1",
                "DELETE FROM manifests WHERE repository_id = $1",
                "DELETE FROM repository_blobs WHERE repository_id = $1",
                "DELETE FROM uploads WHERE repository_id = $1",
                "DELETE FROM repositories WHERE id = $1",
            ] {
                sqlx::query(stmt)
                    .bind(repository_id)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(uploads.into_iter().map(upload_from_row).collect())
        })
    }

    async fn referrers(
        &self,
        repository_id: i64,
        subject: &str,
        artifact_type: Option<&str>,
    ) -> Result<Vec<ReferrerRecord>> {
        type Row = (String, String, i64, Option<String>, Option<String>);
        let rows: Vec<Row> = with_read!(self, |p| {
            sqlx::query_as(
                "SELECT digest, media_type, size, artifact_type, annotations FROM manifests \
                 WHERE repository_id = $1 AND subject_digest = $2 \
                 AND ($3 IS NULL OR artifact_type = $3) \
                 ORDER BY created_at, digest",
            )
            .bind(repository_id)
            .bind(subject)
            .bind(artifact_type)
            .fetch_all(&mut *p)
            .await?
        });
        Ok(rows
            .into_iter()
            .map(|r| ReferrerRecord {
                digest: r.0,
                media_type: r.1,
                size: r.2 as u64,
                artifact_type: r.3,
                annotations: r.4,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{INLINE_STORAGE_KEY, LifecycleStore};

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
    const M1: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    async fn sqlite() -> (tempfile::TempDir, SqlStore) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("m.db").display());
        let store = SqlStore::connect(&url, &SqlOptions::default())
            .await
            .unwrap();
        (dir, store)
    }

    fn upload(id: &str, repo: i64) -> UploadRecord {
        UploadRecord {
            id: id.into(),
            repository_id: repo,
            size: 0,
            hash_algorithm: "sha256".into(),
            hash_state: vec![1, 2, 3],
            backend_state: String::new(),
            created_at: 1,
            updated_at: 1,
        }
    }

    /// Every row of the tables migration 9 rebuilds, and of `blob_contents` (whose rows a
    /// rebuild with foreign keys on would delete by cascade), as JSON, in key order.
    async fn rebuilt_tables(s: &SqlStore) -> Vec<String> {
        const TABLES: &[(&str, &str)] = &[
            ("blobs", "digest, size, storage_key, created_at, touched_at"),
            (
                "repository_blobs",
                "repository_id, digest, created_at, touched_at",
            ),
            (
                "manifest_references",
                "repository_id, manifest_digest, child_digest, child_kind",
            ),
            ("tags", "repository_id, name, digest, updated_at"),
            ("project_blobs", "project, digest, size, links"),
            ("project_usage", "project, bytes, blobs"),
            ("blob_contents", "digest, hex(content)"),
        ];
        let Pools::Sqlite { write, .. } = &s.pools else {
            unreachable!()
        };
        let mut conn = write.get().await.unwrap();
        let mut out = Vec::new();
        for (table, columns) in TABLES {
            let sql = format!(
                "SELECT json_group_array(json_array({columns})) \
                 FROM (SELECT * FROM {table} ORDER BY {columns})"
            );
            let rows: String = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .fetch_one(&mut *conn)
                .await
                .unwrap();
            out.push(format!("{table}: {rows}"));
        }
        out
    }

    /// Migration 9 rebuilds six tables that other tables and triggers name. On a populated
    /// database it keeps every row (and the inline bytes hanging off `blobs`), the tables
    /// come back without rowids with their indexes, and quotas, cascades and foreign keys
    /// work as before.
    #[tokio::test]
    async fn the_without_rowid_rebuild_keeps_a_populated_database() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("m.db").display());
        let old = SqlStore::connect_through(&url, &SqlOptions::default(), 8)
            .await
            .unwrap();
        old.create_project("team", false).await.unwrap().unwrap();
        let app = old.ensure_repository("team/app").await.unwrap();
        let lib = old.ensure_repository("team/lib").await.unwrap();
        let blobs: Vec<String> = (1..=6).map(digest_of).collect();
        for (i, b) in blobs.iter().enumerate() {
            let bytes = vec![i as u8; 3];
            let stored = format!("k{i}");
            let what = if i % 2 == 0 {
                BlobBytes::Inline(&bytes)
            } else {
                BlobBytes::Stored(&stored)
            };
            old.commit_blob(app, b, 100 + i as u64, what, "none", 0)
                .await
                .unwrap();
        }
        assert!(matches!(
            old.link_blob(lib, &blobs[0]).await.unwrap(),
            LinkOutcome::Linked { usage: None }
        ));
        let m1 = digest_of(101);
        let m2 = digest_of(102);
        for (m, refs, tag) in [(&m1, &blobs[..3], "v1"), (&m2, &blobs[2..], "v2")] {
            let out = old.put_manifest(&manifest(app, m, refs, Some(tag))).await;
            assert!(matches!(out.unwrap(), PutManifestOutcome::Stored { .. }));
        }
        let mut index = manifest(app, &digest_of(103), &[], Some("latest"));
        index.manifest_refs = vec![m1.clone(), m2.clone()];
        let out = old.put_manifest(&index).await.unwrap();
        assert!(matches!(out, PutManifestOutcome::Stored { .. }));
        let before = rebuilt_tables(&old).await;
        let usage_before = old.project_usage("team").await.unwrap();
        assert_eq!((usage_before.bytes, usage_before.blobs), (615, 6));
        drop(old);

        let s = SqlStore::connect(&url, &SqlOptions::default())
            .await
            .unwrap();
        assert_eq!(rebuilt_tables(&s).await, before);
        let Pools::Sqlite { write, .. } = &s.pools else {
            unreachable!()
        };
        {
            let mut conn = write.get().await.unwrap();
            let without_rowid: Vec<String> = sqlx::query_scalar(
                "SELECT name FROM sqlite_schema WHERE type = 'table' \
                 AND sql LIKE '%WITHOUT ROWID' ORDER BY name",
            )
            .fetch_all(&mut *conn)
            .await
            .unwrap();
            assert_eq!(
                without_rowid,
                [
                    "blobs",
                    "manifest_references",
                    "project_blobs",
                    "project_usage",
                    "repository_blobs",
                    "tags"
                ]
            );
            let named: Vec<String> = sqlx::query_scalar(
                "SELECT name FROM sqlite_schema WHERE type IN ('index', 'trigger') \
                 AND name NOT LIKE 'sqlite_%' AND tbl_name IN ('blobs', 'repository_blobs', \
                 'manifest_references', 'tags', 'project_blobs', 'project_usage') ORDER BY name",
            )
            .fetch_all(&mut *conn)
            .await
            .unwrap();
            assert_eq!(
                named,
                [
                    "blobs_storage_key",
                    "manifest_references_child",
                    "project_blobs_added",
                    "project_blobs_removed",
                    "repository_blobs_counted",
                    "repository_blobs_digest",
                    "repository_blobs_uncounted",
                    "tags_digest"
                ]
            );
            let enforced: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
                .fetch_one(&mut *conn)
                .await
                .unwrap();
            assert_eq!(enforced, 1);
            let orphan = sqlx::query(
                "INSERT INTO repository_blobs (repository_id, digest, created_at) \
                 VALUES ($1, 'sha256:none', 0)",
            )
            .bind(app)
            .execute(&mut *conn)
            .await;
            assert!(orphan.is_err(), "a link to an unknown blob must be refused");
        }
        // The bytes and the usage triggers survived with the tables.
        let b = s
            .find_blob("team/lib", &blobs[0], true)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(b.content.as_deref(), Some(&[0u8; 3][..]));
        let d7 = digest_of(7);
        s.commit_blob(lib, &d7, 1000, BlobBytes::Stored("k7"), "none", 0)
            .await
            .unwrap();
        let usage = s.project_usage("team").await.unwrap();
        assert_eq!((usage.bytes, usage.blobs), (1615, 7));
        assert_eq!(s.recompute_project_usage("team").await.unwrap(), (1615, 7));
        // Deleting a repository cascades through the rebuilt tables and the triggers.
        s.delete_repository(app).await.unwrap();
        let usage = s.project_usage("team").await.unwrap();
        assert_eq!((usage.bytes, usage.blobs), (1100, 2));
        assert_eq!(s.recompute_project_usage("team").await.unwrap(), (1100, 2));
        assert!(
            s.manifest_by_tag(app, "latest", false)
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn migrations_are_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("m.db").display());
        SqlStore::connect(&url, &SqlOptions::default())
            .await
            .unwrap();
        let again = SqlStore::connect(&url, &SqlOptions::default())
            .await
            .unwrap();
        again.ping().await.unwrap();
    }

    /// A fresh database on the PostgreSQL server at `KURA_TEST_PG_URL`, or `None` when the
    /// variable is unset and `KURA_TEST_ALLOW_NO_PG=1` says skipping is intended.
    async fn postgres() -> Option<SqlStore> {
        let Ok(base) = std::env::var("KURA_TEST_PG_URL") else {
            assert!(
                std::env::var("KURA_TEST_ALLOW_NO_PG").is_ok(),
                "KURA_TEST_PG_URL is not set: run through scripts/test (which starts \
                 PostgreSQL) or set KURA_TEST_ALLOW_NO_PG=1 to skip"
            );
            return None;
        };
        let base = base.trim_end_matches('/').to_string();
        let admin = PgPool::connect(&format!("{base}/postgres")).await.unwrap();
        let name = format!("kura_unit_{:016x}", rand_u64());
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .unwrap();
        Some(
            SqlStore::connect(&format!("{base}/{name}"), &SqlOptions::default())
                .await
                .unwrap(),
        )
    }

    fn rand_u64() -> u64 {
        use std::hash::{BuildHasher, RandomState};
        RandomState::new().hash_one(std::time::Instant::now())
    }

    #[tokio::test]
    async fn blobs_uploads_manifests_tags() {
        let (_d, s) = sqlite().await;
        blobs_uploads_manifests_tags_on(s).await;
    }

    #[tokio::test]
    async fn blobs_uploads_manifests_tags_postgres() {
        if let Some(s) = postgres().await {
            assert_eq!(s.kind(), "postgres");
            blobs_uploads_manifests_tags_on(s).await;
        }
    }

    #[tokio::test]
    async fn inline_blobs() {
        let (_d, s) = sqlite().await;
        inline_blobs_on(s).await;
    }

    #[tokio::test]
    async fn inline_blobs_postgres() {
        if let Some(s) = postgres().await {
            inline_blobs_on(s).await;
        }
    }

    /// On SQLite a commit in a project without a limit is one batch with its own COMMIT; a
    /// limit (even one set since the last commit) sends it through the checked batch, which
    /// reports usage and refuses growth past the limit; the hint follows the limit.
    #[tokio::test]
    async fn blob_commits_follow_storage_limits_as_they_change() {
        let (_d, s) = sqlite().await;
        s.create_project("team", false).await.unwrap().unwrap();
        let repo = s.ensure_repository("team/app").await.unwrap();
        let hinted = |s: &SqlStore| s.limited_repositories.lock().unwrap().contains(&repo);
        let d = |i: usize| digest_of(1000 + i);
        let commit = |i: usize, size: u64| {
            let s = &s;
            async move {
                s.commit_blob(
                    repo,
                    &d(i),
                    size,
                    BlobBytes::Stored(&format!("k{i}")),
                    "none",
                    0,
                )
                .await
                .unwrap()
            }
        };
        assert!(matches!(
            commit(0, 10).await,
            CommitOutcome::Committed { usage: None, .. }
        ));
        assert!(!hinted(&s));
        assert!(s.set_storage_limit("team", Some(25)).await.unwrap());
        let CommitOutcome::Committed { usage: Some(u), .. } = commit(1, 10).await else {
            panic!("a commit under a limit reports usage");
        };
        assert_eq!((u.before, u.after, u.limit), (10, 20, 25));
        assert!(hinted(&s));
        assert!(matches!(
            commit(2, 10).await,
            CommitOutcome::QuotaExceeded(_)
        ));
        assert!(s.repository_blob(repo, &d(2)).await.unwrap().is_none());
        assert!(s.set_storage_limit("team", None).await.unwrap());
        assert!(matches!(
            commit(2, 10).await,
            CommitOutcome::Committed { usage: None, .. }
        ));
        assert!(!hinted(&s));
        // A session that moved on is refused by either batch, leaving the blob unrecorded.
        s.create_upload(&upload("moved", repo)).await.unwrap();
        assert!(s.advance_upload("moved", 0, 5, &[1], "").await.unwrap());
        assert_eq!(
            s.commit_blob(repo, &d(3), 5, BlobBytes::Stored("k3"), "moved", 0)
                .await
                .unwrap(),
            CommitOutcome::UploadChanged
        );
        assert!(s.repository_blob(repo, &d(3)).await.unwrap().is_none());
        assert_eq!(s.upload("moved").await.unwrap().unwrap().size, 5);
    }

    /// The one-trip batches name the check that stopped them, roll back, and leave the
    /// connection usable.
    #[tokio::test]
    async fn one_trip_batches_name_the_check_that_stopped_them() {
        let (_d, s) = sqlite().await;
        let Pools::Sqlite { write, .. } = &s.pools else {
            unreachable!()
        };
        let repo = s.ensure_repository("one/trip").await.unwrap();
        s.create_upload(&upload("moved", repo)).await.unwrap();
        assert!(s.advance_upload("moved", 0, 5, &[1], "").await.unwrap());
        let mut conn = write.get().await.unwrap();
        let d = digest_of(77);
        let commit = |recorded_size| BlobCommit {
            repository_id: repo,
            digest: &d,
            size: 5,
            bytes: BlobBytes::Stored("k"),
            upload_id: "moved",
            recorded_size,
        };
        let outcome = commit_blob_unlimited(&mut conn, &commit(0)).await.unwrap();
        assert!(matches!(
            outcome,
            Some((CommitOutcome::UploadChanged, None))
        ));
        // Nobody else is queued, so each member commits its shared transaction at once.
        let outcome = commit_blob_unlimited(&mut conn, &commit(5)).await.unwrap();
        let Some((CommitOutcome::Committed { usage: None, .. }, Some(ticket))) = outcome else {
            panic!("a commit that passes its checks is recorded: {outcome:?}");
        };
        assert!(!conn.shared_open());
        let m = |digest: &str, blobs: Vec<String>, immutable: bool| NewManifest {
            repository_id: repo,
            digest: digest.into(),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            payload: b"{}".to_vec(),
            artifact_type: None,
            subject_digest: None,
            annotations: None,
            blob_refs: blobs,
            manifest_refs: vec![],
            tag: Some("v1".into()),
            immutable_tag: immutable,
        };
        fn refs(m: &NewManifest) -> Vec<&str> {
            m.blob_refs.iter().map(String::as_str).collect()
        }
        let missing = m(M1, vec![digest_of(78)], false);
        let outcome = put_manifest_checked(&mut conn, &missing, &refs(&missing), &[])
            .await
            .unwrap();
        assert!(outcome.is_none());
        let first = m(M1, vec![d.clone()], true);
        let outcome = put_manifest_checked(&mut conn, &first, &refs(&first), &[])
            .await
            .unwrap();
        assert!(matches!(
            outcome,
            Some((PutManifestOutcome::Stored { created: true, .. }, Some(_)))
        ));
        let other = m(&digest_of(79), vec![d.clone()], true);
        let outcome = put_manifest_checked(&mut conn, &other, &refs(&other), &[])
            .await
            .unwrap();
        assert!(matches!(
            outcome,
            Some((PutManifestOutcome::TagImmutable, None))
        ));
        drop(conn);
        ticket.committed(write).await.unwrap();
        let tag = s
            .find_manifest("one/trip", ManifestKey::Tag("v1"), false)
            .await;
        assert_eq!(tag.unwrap().unwrap().digest, M1);
    }

    /// Writers racing through shared transactions (SQLite group commit), with refusals and
    /// ordinary writers in between: every write that succeeded is there, every refused one
    /// left nothing, and the usage counters the triggers keep still add up.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_writers_share_transactions_without_losing_or_leaking_work() {
        let (_d, s) = sqlite().await;
        let s = Arc::new(s);
        s.create_project("race", false).await.unwrap().unwrap();
        let repo = s.ensure_repository("race/app").await.unwrap();
        let tasks: Vec<_> = (0..160usize)
            .map(|i| {
                let s = s.clone();
                tokio::spawn(async move {
                    let blob = digest_of(5000 + i);
                    let bytes = vec![i as u8; 7];
                    let what = if i % 2 == 0 {
                        BlobBytes::Inline(&bytes)
                    } else {
                        BlobBytes::Stored("k")
                    };
                    let committed = s
                        .commit_blob(repo, &blob, 7, what, "none", 0)
                        .await
                        .unwrap();
                    assert!(matches!(committed, CommitOutcome::Committed { .. }));
                    // Every fourth references a blob nobody pushed; every fifth is an
                    // ordinary (exclusive) writer in between.
                    let mut refs = vec![blob];
                    if i % 4 == 3 {
                        refs.push(digest_of(90_000 + i));
                    }
                    if i % 5 == 0 {
                        s.ensure_repository(&format!("race/other{i}"))
                            .await
                            .unwrap();
                    }
                    let digest = digest_of(70_000 + i);
                    let tag = format!("t{i}");
                    let out = s
                        .put_manifest(&manifest(repo, &digest, &refs, Some(&tag)))
                        .await
                        .unwrap();
                    (i, digest, out)
                })
            })
            .collect();
        for t in tasks {
            let (i, digest, out) = t.await.unwrap();
            let found = s.manifest_by_digest(repo, &digest, false).await.unwrap();
            if i % 4 == 3 {
                assert!(
                    matches!(out, PutManifestOutcome::MissingReferences(ref m) if m.len() == 1),
                    "{i}: {out:?}"
                );
                assert!(found.is_none(), "{i}: a refused manifest left a row");
            } else {
                assert!(
                    matches!(out, PutManifestOutcome::Stored { created: true, .. }),
                    "{i}: {out:?}"
                );
                assert!(found.is_some(), "{i}: a stored manifest is missing");
                let tagged = s
                    .manifest_by_tag(repo, &format!("t{i}"), false)
                    .await
                    .unwrap();
                assert_eq!(tagged.map(|m| m.digest), Some(digest));
            }
        }
        let usage = s.project_usage("race").await.unwrap();
        assert_eq!((usage.bytes, usage.blobs), (160 * 7, 160));
        assert_eq!(
            s.recompute_project_usage("race").await.unwrap(),
            (160 * 7, 160)
        );
        let Pools::Sqlite { write, .. } = &s.pools else {
            unreachable!()
        };
        assert!(!write.get_to_share().await.unwrap().shared_open());
    }

    /// A blob committed with its bytes keeps them in its row, and the first commit of a
    /// digest decides where its bytes are, whichever way the later ones came.
    async fn inline_blobs_on(s: SqlStore) {
        let repo = s.ensure_repository("in/line").await.unwrap();
        let other = s.ensure_repository("other").await.unwrap();
        let committed = |k: &str| CommitOutcome::Committed {
            storage_key: k.into(),
            usage: None,
        };
        let bytes = vec![0u8, 1, 2, 255];
        assert_eq!(
            s.commit_blob(repo, D1, 4, BlobBytes::Inline(&bytes), "u1", 0)
                .await
                .unwrap(),
            committed(INLINE_STORAGE_KEY)
        );
        let b = s.find_blob("in/line", D1, true).await.unwrap().unwrap();
        assert_eq!(b.storage_key, INLINE_STORAGE_KEY);
        assert_eq!(b.content.as_deref(), Some(&bytes[..]));
        // A later copy stored as a file is not recorded: the row's bytes win.
        assert_eq!(
            s.commit_blob(other, D1, 4, BlobBytes::Stored("k1"), "u2", 0)
                .await
                .unwrap(),
            committed(INLINE_STORAGE_KEY)
        );
        let b = s.find_blob("other", D1, true).await.unwrap().unwrap();
        assert_eq!(b.content.as_deref(), Some(&bytes[..]));
        // A lookup that does not ask for the bytes does not carry them.
        let b = s.find_blob("other", D1, false).await.unwrap().unwrap();
        assert_eq!(
            (b.storage_key.as_str(), b.content),
            (INLINE_STORAGE_KEY, None)
        );
        // And the other way round: a file's key wins over later inline bytes.
        assert_eq!(
            s.commit_blob(repo, D2, 4, BlobBytes::Stored("k2"), "u3", 0)
                .await
                .unwrap(),
            committed("k2")
        );
        assert_eq!(
            s.commit_blob(other, D2, 4, BlobBytes::Inline(&bytes), "u4", 0)
                .await
                .unwrap(),
            committed("k2")
        );
        let b = s.find_blob("other", D2, true).await.unwrap().unwrap();
        assert_eq!((b.storage_key.as_str(), b.content), ("k2", None));
        // An empty blob inline is bytes, not "no bytes".
        assert_eq!(
            s.commit_blob(repo, M1, 0, BlobBytes::Inline(&[]), "u5", 0)
                .await
                .unwrap(),
            committed(INLINE_STORAGE_KEY)
        );
        let b = s.find_blob("in/line", M1, true).await.unwrap().unwrap();
        assert_eq!(b.content.as_deref(), Some(&[][..]));
    }

    fn digest_of(i: usize) -> String {
        format!("sha256:{i:064x}")
    }

    fn manifest(repo: i64, digest: &str, blobs: &[String], tag: Option<&str>) -> NewManifest {
        NewManifest {
            repository_id: repo,
            digest: digest.into(),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            payload: digest.as_bytes().to_vec(),
            artifact_type: None,
            subject_digest: None,
            annotations: None,
            blob_refs: blobs.to_vec(),
            manifest_refs: vec![],
            tag: tag.map(str::to_string),
            immutable_tag: false,
        }
    }

    /// What a manifest PUT decides and records: tag moves and their history, immutable tags
    /// and missing references refused with nothing left behind, re-puts that change nothing.
    /// On SQLite this runs the batched path, on PostgreSQL the statement-by-statement one.
    async fn manifest_put_outcomes_on(s: SqlStore) {
        let repo = s.ensure_repository("p/r").await.unwrap();
        let blobs: Vec<String> = (1..=3).map(digest_of).collect();
        for b in &blobs {
            s.commit_blob(repo, b, 1, BlobBytes::Stored(b), "no-session", 0)
                .await
                .unwrap();
        }
        let (a, b, c) = (digest_of(0xa), digest_of(0xb), digest_of(0xc));
        let stored = |created, tag_changed, previous: Option<&String>| PutManifestOutcome::Stored {
            created,
            tag_changed,
            previous_tag_target: previous.cloned(),
        };
        let put = |m: NewManifest| {
            let s = &s;
            async move { s.put_manifest(&m).await.unwrap() }
        };
        assert_eq!(
            put(manifest(repo, &a, &blobs[..2], Some("t"))).await,
            stored(true, true, None)
        );
        assert_eq!(
            put(manifest(repo, &b, &blobs, Some("t"))).await,
            stored(true, true, Some(&a))
        );
        assert_eq!(
            put(manifest(repo, &b, &blobs, Some("t"))).await,
            stored(false, false, None)
        );
        assert_eq!(
            put(manifest(repo, &a, &blobs[..1], None)).await,
            stored(false, false, None)
        );
        let immutable = NewManifest {
            immutable_tag: true,
            ..manifest(repo, &c, &blobs, Some("t"))
        };
        assert_eq!(put(immutable).await, PutManifestOutcome::TagImmutable);
        // The same tag, at the digest it already has, is fine when immutable.
        let same = NewManifest {
            immutable_tag: true,
            ..manifest(repo, &b, &blobs, Some("t"))
        };
        assert_eq!(put(same).await, stored(false, false, None));
        let unknown = digest_of(0xdead);
        let index = NewManifest {
            manifest_refs: vec![b.clone(), unknown.clone(), a.clone(), unknown.clone()],
            ..manifest(repo, &c, &[blobs[0].clone(), digest_of(0xbeef)], Some("i"))
        };
        assert_eq!(
            put(index.clone()).await,
            PutManifestOutcome::MissingReferences(vec![digest_of(0xbeef), unknown.clone()])
        );
        // Refused puts left nothing: no manifest, no tag, no history.
        assert!(
            s.manifest_by_digest(repo, &c, false)
                .await
                .unwrap()
                .is_none()
        );
        assert!(s.manifest_by_tag(repo, "i", false).await.unwrap().is_none());
        assert!(s.tag_history(repo, "i", 10).await.unwrap().is_empty());
        let history: Vec<_> = s
            .tag_history(repo, "t", 10)
            .await
            .unwrap()
            .into_iter()
            .map(|e| (e.digest, e.previous_digest))
            .collect();
        assert_eq!(
            history,
            vec![(Some(b.clone()), Some(a.clone())), (Some(a.clone()), None)]
        );
        let index = NewManifest {
            manifest_refs: vec![b.clone(), a.clone(), a.clone()],
            blob_refs: vec![blobs[0].clone()],
            ..index
        };
        assert_eq!(put(index).await, stored(true, true, None));
        let got = s.manifest_by_tag(repo, "i", true).await.unwrap().unwrap();
        assert_eq!(got.digest, c);
        assert_eq!(got.payload.as_deref(), Some(c.as_bytes()));
        assert_eq!(
            s.manifest_by_tag(repo, "t", false)
                .await
                .unwrap()
                .unwrap()
                .digest,
            b
        );
    }

    #[tokio::test]
    async fn manifest_put_outcomes() {
        let (_d, s) = sqlite().await;
        manifest_put_outcomes_on(s).await;
    }

    #[tokio::test]
    async fn manifest_put_outcomes_postgres() {
        if let Some(s) = postgres().await {
            manifest_put_outcomes_on(s).await;
        }
    }

    /// Thousands of references: the lists travel as JSON, so any number is one statement (no
    /// bound-parameter limit, no statement text per count), and the missing one is found
    /// among them.
    async fn a_manifest_with_thousands_of_references_on(s: SqlStore) {
        const N: usize = 3_000;
        let repo = s.ensure_repository("p/big").await.unwrap();
        let blobs: Vec<String> = (1..=N).map(digest_of).collect();
        for b in &blobs {
            s.commit_blob(repo, b, 1, BlobBytes::Stored(b), "no-session", 0)
                .await
                .unwrap();
        }
        let top = digest_of(0);
        let mut m = manifest(repo, &top, &blobs, Some("big"));
        m.blob_refs.push(digest_of(N + 1));
        assert_eq!(
            s.put_manifest(&m).await.unwrap(),
            PutManifestOutcome::MissingReferences(vec![digest_of(N + 1)])
        );
        m.blob_refs.pop();
        assert!(matches!(
            s.put_manifest(&m).await.unwrap(),
            PutManifestOutcome::Stored { created: true, .. }
        ));
        assert_eq!(
            s.manifest_by_tag(repo, "big", false)
                .await
                .unwrap()
                .unwrap()
                .digest,
            top
        );
        let count = async {
            Ok::<i64, MetadataError>(with_read!(s, |p| {
                sqlx::query_scalar(
                    "SELECT count(*) FROM manifest_references \
                     WHERE repository_id = $1 AND manifest_digest = $2",
                )
                .bind(repo)
                .bind(&top)
                .fetch_one(&mut *p)
                .await?
            }))
        };
        assert_eq!(count.await.unwrap(), N as i64);
    }

    #[tokio::test]
    async fn a_manifest_with_thousands_of_references() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("m.db").display());
        let options = SqlOptions {
            durable_commits: false,
            ..SqlOptions::default()
        };
        a_manifest_with_thousands_of_references_on(
            SqlStore::connect(&url, &options).await.unwrap(),
        )
        .await;
    }

    #[tokio::test]
    async fn a_manifest_with_thousands_of_references_postgres() {
        if let Some(s) = postgres().await {
            a_manifest_with_thousands_of_references_on(s).await;
        }
    }

    #[tokio::test]
    async fn migrations_are_idempotent_postgres() {
        // Several replicas starting at once: the advisory lock serializes them.
        let Ok(base) = std::env::var("KURA_TEST_PG_URL") else {
            return;
        };
        let Some(first) = postgres().await else {
            return;
        };
        drop(first);
        let base = base.trim_end_matches('/').to_string();
        let admin = PgPool::connect(&format!("{base}/postgres")).await.unwrap();
        let name = format!("kura_unit_mig_{:016x}", rand_u64());
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .unwrap();
        let url = format!("{base}/{name}");
        let starts = (0..4).map(|_| {
            let url = url.clone();
            tokio::spawn(async move { SqlStore::connect(&url, &SqlOptions::default()).await })
        });
        for s in starts {
            s.await.unwrap().unwrap();
        }
    }

    async fn blobs_uploads_manifests_tags_on(s: SqlStore) {
        let repo = s.ensure_repository("a/b").await.unwrap();
        assert_eq!(s.ensure_repository("a/b").await.unwrap(), repo);
        let other = s.ensure_repository("c").await.unwrap();

        s.create_upload(&upload("u1", repo)).await.unwrap();
        assert!(s.advance_upload("u1", 0, 10, &[9], "").await.unwrap());
        assert!(!s.advance_upload("u1", 0, 20, &[9], "").await.unwrap());
        assert_eq!(s.upload("u1").await.unwrap().unwrap().size, 10);
        let committed = |k: &str| CommitOutcome::Committed {
            storage_key: k.into(),
            usage: None,
        };
        // The row says 10 bytes: a commit that loaded it at another size is refused.
        assert_eq!(
            s.commit_blob(repo, D1, 10, BlobBytes::Stored("k1"), "u1", 0)
                .await
                .unwrap(),
            CommitOutcome::UploadChanged
        );
        assert!(s.repository_blob(repo, D1).await.unwrap().is_none());
        assert_eq!(
            s.commit_blob(repo, D1, 10, BlobBytes::Stored("k1"), "u1", 10)
                .await
                .unwrap(),
            committed("k1")
        );
        assert_eq!(
            s.commit_blob(other, D1, 10, BlobBytes::Stored("k2"), "gone", 10)
                .await
                .unwrap(),
            committed("k1")
        );
        assert!(s.unlink_blob(other, D1).await.unwrap());
        assert!(s.upload("u1").await.unwrap().is_none());
        let b = s.repository_blob(repo, D1).await.unwrap().unwrap();
        assert_eq!((b.size, b.storage_key.as_str()), (10, "k1"));
        assert!(s.repository_blob(other, D1).await.unwrap().is_none());
        let linked = LinkOutcome::Linked { usage: None };
        assert_eq!(s.link_blob(other, D1).await.unwrap(), linked);
        assert_eq!(s.link_blob(other, D1).await.unwrap(), linked);
        assert_eq!(
            s.link_blob(other, D2).await.unwrap(),
            LinkOutcome::UnknownBlob
        );

        let m = NewManifest {
            repository_id: repo,
            digest: M1.into(),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            payload: b"{}".to_vec(),
            artifact_type: Some("x/y".into()),
            subject_digest: Some(D2.into()),
            annotations: None,
            blob_refs: vec![D1.into(), D2.into()],
            manifest_refs: vec![],
            tag: Some("v1".into()),
            immutable_tag: false,
        };
        assert_eq!(
            s.put_manifest(&m).await.unwrap(),
            PutManifestOutcome::MissingReferences(vec![D2.into()])
        );
        let m = NewManifest {
            blob_refs: vec![D1.into()],
            ..m
        };
        assert_eq!(
            s.put_manifest(&m).await.unwrap(),
            PutManifestOutcome::Stored {
                created: true,
                tag_changed: true,
                previous_tag_target: None
            }
        );
        assert_eq!(
            s.put_manifest(&m).await.unwrap(),
            PutManifestOutcome::Stored {
                created: false,
                tag_changed: false,
                previous_tag_target: None
            }
        );
        let got = s.manifest_by_tag(repo, "v1", true).await.unwrap().unwrap();
        assert_eq!(got.payload.as_deref(), Some(&b"{}"[..]));
        assert!(
            s.manifest_by_digest(repo, M1, false)
                .await
                .unwrap()
                .unwrap()
                .payload
                .is_none()
        );
        assert_eq!(s.referrers(repo, D2, None).await.unwrap().len(), 1);
        assert_eq!(s.referrers(repo, D2, Some("x/y")).await.unwrap().len(), 1);
        assert_eq!(s.referrers(repo, D2, Some("x/z")).await.unwrap().len(), 0);

        for t in ["b", "A", "a", "_z"] {
            s.put_manifest(&NewManifest {
                tag: Some(t.into()),
                ..m.clone()
            })
            .await
            .unwrap();
        }
        assert_eq!(
            s.list_tags(repo, None, 100).await.unwrap(),
            vec!["A", "_z", "a", "b", "v1"]
        );
        assert_eq!(
            s.list_tags(repo, Some("_z"), 2).await.unwrap(),
            vec!["a", "b"]
        );
        let arts = s.list_artifacts(repo, None, 10).await.unwrap();
        assert_eq!(arts.len(), 1);
        assert_eq!(arts[0].tags, vec!["A", "_z", "a", "b", "v1"]);
        assert_eq!(arts[0].last_pulled_at, None);
        s.record_pulls(&[("a/b".into(), M1.into(), 42)])
            .await
            .unwrap();
        s.record_pulls(&[("a/b".into(), M1.into(), 7)])
            .await
            .unwrap();
        assert_eq!(
            s.list_artifacts(repo, None, 10).await.unwrap()[0].last_pulled_at,
            Some(42)
        );
        assert!(s.delete_tag(repo, "a").await.unwrap());
        assert!(!s.delete_tag(repo, "a").await.unwrap());
        let DeleteManifestOutcome::Deleted(deleted) =
            s.delete_manifest(repo, M1, &|_| false).await.unwrap()
        else {
            panic!("not deleted")
        };
        assert_eq!(deleted.tags.len(), 4);
        assert_eq!(
            s.delete_manifest(repo, M1, &|_| false).await.unwrap(),
            DeleteManifestOutcome::NotFound
        );
        assert!(s.list_tags(repo, None, 100).await.unwrap().is_empty());
        let all = RepositoryFilter::All;
        assert_eq!(
            s.list_repositories(&all, None, 10).await.unwrap(),
            vec!["a/b", "c"]
        );
        assert_eq!(
            s.list_repositories(&all, Some("a/b"), 10).await.unwrap(),
            vec!["c"]
        );
        // Visibility: project "a" private with a member, "c" public.
        let anon = RepositoryFilter::VisibleTo { user_id: None };
        assert!(
            s.list_repositories(&anon, None, 10)
                .await
                .unwrap()
                .is_empty()
        );
        let pa = s.create_project("a", false).await.unwrap().unwrap();
        assert!(s.create_project("a", true).await.unwrap().is_none());
        s.create_project("c", true).await.unwrap().unwrap();
        assert_eq!(
            s.list_repositories(&anon, None, 10).await.unwrap(),
            vec!["c"]
        );
        let u = s
            .create_user("dev", Some("h"), None, false)
            .await
            .unwrap()
            .unwrap();
        assert!(
            s.create_user("dev", None, None, false)
                .await
                .unwrap()
                .is_none()
        );
        s.set_member(pa, u, "guest", "*").await.unwrap();
        let dev = RepositoryFilter::VisibleTo { user_id: Some(u) };
        assert_eq!(
            s.list_repositories(&dev, None, 10).await.unwrap(),
            vec!["a/b", "c"]
        );
        s.set_member(pa, u, "limited_guest", "*").await.unwrap();
        assert_eq!(
            s.membership(pa, u).await.unwrap(),
            Some(("limited_guest".into(), "*".into()))
        );
        assert_eq!(
            s.list_repositories(&dev, None, 10).await.unwrap(),
            vec!["c"]
        );
        assert_eq!(
            s.search_repositories(&all, "/B", None, 10).await.unwrap(),
            vec!["a/b"]
        );
        assert!(
            s.search_repositories(&dev, "a/", None, 10)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(
            s.search_repositories(&all, "%", None, 10)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(s.list_projects(&anon, None, 10).await.unwrap().len(), 1);
        assert_eq!(s.list_projects(&dev, None, 10).await.unwrap().len(), 2);
        assert_eq!(s.members(pa).await.unwrap()[0].username, "dev");
        assert_eq!(s.project_repository_count("a").await.unwrap(), 1);
        assert!(s.remove_member(pa, u).await.unwrap());
        let robot = RobotRecord {
            id: 0,
            name: "robot$a+ci".into(),
            project: None,
            description: "ci".into(),
            secret_hash: "h".into(),
            expires_at: Some(5),
            disabled: false,
            created_at: 0,
            permissions: vec![],
        };
        let rid = s
            .create_robot(&robot, Some(pa), &[(pa, "app*".into(), "pull,push".into())])
            .await
            .unwrap()
            .unwrap();
        assert!(s.create_robot(&robot, None, &[]).await.unwrap().is_none());
        let got = s.robot_by_name("robot$a+ci").await.unwrap().unwrap();
        assert_eq!(got.project.as_deref(), Some("a"));
        assert_eq!(got.permissions[0].repositories, "app*");
        assert_eq!(got.permissions[0].actions, "pull,push");
        assert_eq!(s.list_robots(Some(pa)).await.unwrap().len(), 1);
        assert!(s.update_robot(rid, Some("h2"), Some(true)).await.unwrap());
        assert!(
            s.robot_by_name("robot$a+ci")
                .await
                .unwrap()
                .unwrap()
                .disabled
        );
        assert!(s.delete_robot(rid).await.unwrap());
        assert!(s.list_robots(None).await.unwrap().is_empty());
        assert!(s.update_user(u, None, Some(true), None).await.unwrap());
        assert!(s.user_by_name("dev").await.unwrap().unwrap().is_admin);
        assert_eq!(s.user_count().await.unwrap(), 1);
        assert_eq!(s.setting_or_insert("k", "1").await.unwrap(), "1");
        assert_eq!(s.setting_or_insert("k", "2").await.unwrap(), "1");
        s.put_setting("k", "3").await.unwrap();
        assert_eq!(s.setting("k").await.unwrap().as_deref(), Some("3"));
    }

    #[tokio::test]
    async fn stale_uploads_are_listed_oldest_first() {
        let (_d, s) = sqlite().await;
        let repo = s.ensure_repository("r").await.unwrap();
        s.create_upload(&upload("old", repo)).await.unwrap();
        let fresh = UploadRecord {
            updated_at: now_ms(),
            ..upload("new", repo)
        };
        s.create_upload(&fresh).await.unwrap();
        let stale = s.stale_uploads(now_ms() - 60_000, 10).await.unwrap();
        assert_eq!(stale.len(), 1);
        assert_eq!(stale[0].id, "old");
        assert!(s.delete_upload("old").await.unwrap());
    }
}
