//! Metadata: the single source of truth for what exists in the registry.
//!
//! Repositories, which blobs each repository may see, manifests with the references they hold,
//! tags, and upload sessions. Listing and existence checks are always answered here, never by
//! walking blob storage. [`MetadataStore`] is the seam for registry content and [`AccessStore`]
//! the one for identity (users, projects, members, settings); [`SqlStore`] implements both for
//! SQLite (the embedded default) and PostgreSQL with one set of queries.

#[macro_use]
pub mod sql;
mod checkpoint;
pub mod lifecycle;
pub mod ops;
mod sqlite_conns;
mod wal_sync;

use async_trait::async_trait;

pub use lifecycle::*;
pub use ops::{AuditEntry, AuditFilter, AuditHead, AuditRecord, OpsStore, audit_hash_of};
pub use sql::SqlStore;

#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migration(String),
    #[error("invalid metadata configuration: {0}")]
    Config(String),
    /// The write-ahead log could not be synced: what was committed may not survive a crash.
    #[error("cannot make the metadata commit durable: {0}")]
    Durability(std::io::Error),
    /// The transaction this write shared with others (SQLite group commit) did not commit:
    /// nothing of the write was stored.
    #[error("metadata commit failed: {0}")]
    SharedTransaction(String),
}

pub type Result<T, E = MetadataError> = std::result::Result<T, E>;

/// A committed blob as the metadata store knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRecord {
    pub digest: String,
    pub size: u64,
    /// Where blob storage keeps the bytes; [`INLINE_STORAGE_KEY`] when `content` holds them.
    pub storage_key: String,
    /// The bytes of a blob small enough to be kept in its metadata row.
    pub content: Option<Vec<u8>>,
}

/// The storage key recorded for a blob whose bytes live in its metadata row: no object in
/// blob storage belongs to it, so nothing there is read or deleted for it.
pub const INLINE_STORAGE_KEY: &str = "";

/// Where a blob being committed keeps its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobBytes<'a> {
    /// In blob storage, under this key.
    Stored(&'a str),
    /// In the metadata database, with the blob's row.
    Inline(&'a [u8]),
}

impl<'a> BlobBytes<'a> {
    /// The key to record: the stored object's, or [`INLINE_STORAGE_KEY`].
    pub fn storage_key(&self) -> &'a str {
        match *self {
            BlobBytes::Stored(key) => key,
            BlobBytes::Inline(_) => INLINE_STORAGE_KEY,
        }
    }

    /// The bytes to keep in the database, for an inline blob.
    pub fn content(&self) -> Option<&'a [u8]> {
        match *self {
            BlobBytes::Stored(_) => None,
            BlobBytes::Inline(content) => Some(content),
        }
    }
}

/// An upload session. `hash_state` lets any replica continue hashing where the last chunk ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadRecord {
    pub id: String,
    pub repository_id: i64,
    pub size: u64,
    pub hash_algorithm: String,
    pub hash_state: Vec<u8>,
    pub backend_state: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A manifest to store, with what it references.
#[derive(Debug, Clone)]
pub struct NewManifest {
    pub repository_id: i64,
    pub digest: String,
    pub media_type: String,
    pub payload: Vec<u8>,
    /// Effective artifact type for the referrers API (see `kura_oci::ParsedManifest`).
    pub artifact_type: Option<String>,
    pub subject_digest: Option<String>,
    /// The manifest's `annotations` object, as JSON text.
    pub annotations: Option<String>,
    /// Blobs that must be linked to the repository.
    pub blob_refs: Vec<String>,
    /// Manifests that must exist in the repository.
    pub manifest_refs: Vec<String>,
    /// Tag to point at the manifest, if pushed by tag.
    pub tag: Option<String>,
    /// The tag matches an immutability rule: it may be created, or re-pointed at the digest
    /// it already has, but not moved.
    pub immutable_tag: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutManifestOutcome {
    Stored {
        /// False when the repository already held the manifest (re-push or retag).
        created: bool,
        /// The PUT created the tag or moved it to this manifest.
        tag_changed: bool,
        /// Where the tag pointed before, when the PUT moved it from another manifest.
        previous_tag_target: Option<String>,
    },
    /// Nothing was written: these references are not in the repository.
    MissingReferences(Vec<String>),
    /// Nothing was written: the tag is immutable and points at another manifest.
    TagImmutable,
}

/// How a change moved the usage of a project that has a storage limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageChange {
    pub before: u64,
    pub after: u64,
    pub limit: u64,
}

/// A change refused because it would grow a project past its storage limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaExceeded {
    /// Bytes the project used before the change.
    pub usage: u64,
    /// Bytes the change would have added.
    pub requested: u64,
    pub limit: u64,
}

/// Result of linking an existing blob into a repository (a mount).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkOutcome {
    /// `usage` is set when the project has a storage limit.
    Linked {
        usage: Option<UsageChange>,
    },
    UnknownBlob,
    QuotaExceeded(QuotaExceeded),
}

/// Result of recording a committed blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitOutcome {
    /// Recorded; reads use `storage_key` (an earlier commit's key if the digest was known).
    /// `usage` is set when the project has a storage limit.
    Committed {
        storage_key: String,
        usage: Option<UsageChange>,
    },
    /// Nothing was recorded and the upload session is left as it was.
    QuotaExceeded(QuotaExceeded),
    /// Nothing was recorded: the upload's row had moved past `recorded_size` (a concurrent
    /// request on another replica appended to it), so the committed bytes may not be the ones
    /// that were hashed.
    UploadChanged,
}

/// Result of deleting a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteManifestOutcome {
    Deleted(DeletedManifest),
    NotFound,
    /// Refused: this tag of the manifest is immutable.
    Immutable(String),
}

/// Says whether a tag is protected by an immutability rule.
pub type TagGuard<'a> = dyn Fn(&str) -> bool + Send + Sync + 'a;

/// A stored manifest (payload included only when asked for).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestRecord {
    pub digest: String,
    pub media_type: String,
    pub size: u64,
    pub payload: Option<Vec<u8>>,
}

/// One entry of the referrers list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferrerRecord {
    pub digest: String,
    pub media_type: String,
    pub size: u64,
    pub artifact_type: Option<String>,
    pub annotations: Option<String>,
}

/// A manifest as the management API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactRecord {
    pub digest: String,
    pub media_type: String,
    pub artifact_type: Option<String>,
    pub size: u64,
    pub pushed_at: i64,
    pub last_pulled_at: Option<i64>,
    pub tags: Vec<String>,
}

/// What a manifest delete removed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeletedManifest {
    pub tags: Vec<String>,
}

/// The pluggable metadata backend.
#[async_trait]
pub trait MetadataStore: Send + Sync + 'static {
    /// Backend name for logs and readiness (`sqlite`, `postgres`).
    fn kind(&self) -> &'static str;

    /// Whether one registry process is the only user of this store (SQLite: the embedded
    /// default, whose file one server opens), so that state the process keeps in memory is
    /// seen by every request. `false` for a store that replicas share.
    fn single_process(&self) -> bool {
        false
    }

    /// Cheap round trip for readiness checks.
    async fn ping(&self) -> Result<()>;

    // --- repositories -------------------------------------------------------------------
    /// Returns the id of `name`, creating the repository if needed.
    async fn ensure_repository(&self, name: &str) -> Result<i64>;
    async fn repository_id(&self, name: &str) -> Result<Option<i64>>;
    /// Repositories holding any content and visible under `filter`, after `last`, sorted
    /// bytewise, at most `limit`.
    async fn list_repositories(
        &self,
        filter: &RepositoryFilter,
        last: Option<&str>,
        limit: u32,
    ) -> Result<Vec<String>>;

    /// Repositories with content whose name contains `term`, visible under `filter`, sorted,
    /// after `last`, at most `limit`.
    async fn search_repositories(
        &self,
        filter: &RepositoryFilter,
        term: &str,
        last: Option<&str>,
        limit: u32,
    ) -> Result<Vec<String>>;

    /// Repositories of `project` holding content whose name contains `term`, after `last`.
    async fn project_repositories(
        &self,
        project: &str,
        term: &str,
        last: Option<&str>,
        limit: u32,
    ) -> Result<Vec<String>>;

    // --- blobs ---------------------------------------------------------------------------
    /// The blob if it is linked to the repository (never with inline `content`).
    async fn repository_blob(&self, repository_id: i64, digest: &str)
    -> Result<Option<BlobRecord>>;
    /// The blob if it is linked to the repository named `repository`, in one statement (the
    /// pull path's lookup); with `content`, an inline blob's bytes come with it.
    async fn find_blob(
        &self,
        repository: &str,
        digest: &str,
        content: bool,
    ) -> Result<Option<BlobRecord>>;
    /// Links an already stored blob to a repository (refused past the project's quota).
    async fn link_blob(&self, repository_id: i64, digest: &str) -> Result<LinkOutcome>;
    /// Removes a repository's link to a blob; false when there was none.
    async fn unlink_blob(&self, repository_id: i64, digest: &str) -> Result<bool>;
    /// Records a committed blob, links it to the repository and ends the upload session, in
    /// one transaction, unless that grows the project past its quota. The recorded storage key
    /// is the one `bytes` names (an inline blob's bytes are kept in its row, durable with the
    /// commit itself), or the key of an earlier commit of the same digest (the caller then
    /// drops its copy). `recorded_size` is the upload's size as the caller loaded it: the
    /// commit is refused if the row says otherwise (a compare-and-set, as in `advance_upload`).
    async fn commit_blob(
        &self,
        repository_id: i64,
        digest: &str,
        size: u64,
        bytes: BlobBytes<'_>,
        upload_id: &str,
        recorded_size: u64,
    ) -> Result<CommitOutcome>;

    // --- uploads -------------------------------------------------------------------------
    async fn create_upload(&self, upload: &UploadRecord) -> Result<()>;
    /// Records a new upload session in the repository named `repository`, in one statement,
    /// and returns the repository's id; `None` (nothing recorded) when there is no such
    /// repository. `upload.repository_id` is ignored.
    async fn create_upload_in(
        &self,
        repository: &str,
        upload: &UploadRecord,
    ) -> Result<Option<i64>>;
    async fn upload(&self, id: &str) -> Result<Option<UploadRecord>>;
    /// The upload `id` if it belongs to the repository named `repository` (one statement: every
    /// request of an upload session asks this).
    async fn upload_in(&self, repository: &str, id: &str) -> Result<Option<UploadRecord>>;
    /// Moves an upload forward if it is still at `expected_size` (compare-and-set, so two
    /// writers can never both advance it); false when it was not.
    async fn advance_upload(
        &self,
        id: &str,
        expected_size: u64,
        new_size: u64,
        hash_state: &[u8],
        backend_state: &str,
    ) -> Result<bool>;
    async fn delete_upload(&self, id: &str) -> Result<bool>;
    /// Uploads not touched since `updated_before` (epoch ms), oldest first.
    async fn stale_uploads(&self, updated_before: i64, limit: u32) -> Result<Vec<UploadRecord>>;

    // --- manifests and tags --------------------------------------------------------------
    /// Stores a manifest (idempotent), its references and optional tag, after checking in the
    /// same transaction that every reference is present.
    async fn put_manifest(&self, manifest: &NewManifest) -> Result<PutManifestOutcome>;
    async fn manifest_by_digest(
        &self,
        repository_id: i64,
        digest: &str,
        with_payload: bool,
    ) -> Result<Option<ManifestRecord>>;
    async fn manifest_by_tag(
        &self,
        repository_id: i64,
        tag: &str,
        with_payload: bool,
    ) -> Result<Option<ManifestRecord>>;
    /// A manifest of the repository named `repository`, by tag or digest, in one statement:
    /// the pull path's lookup (each statement is a hand-off to a database thread).
    async fn find_manifest(
        &self,
        repository: &str,
        key: ManifestKey<'_>,
        with_payload: bool,
    ) -> Result<Option<ManifestRecord>>;
    /// Deletes a tag only (recorded in the tag history); false when absent.
    async fn delete_tag(&self, repository_id: i64, tag: &str) -> Result<bool>;
    /// Deletes a manifest and every tag pointing at it, unless one of its tags is protected.
    /// The manifest moves to the deleted-manifest area, from which its tags can be restored
    /// until garbage collection purges it.
    async fn delete_manifest(
        &self,
        repository_id: i64,
        digest: &str,
        protected: &TagGuard<'_>,
    ) -> Result<DeleteManifestOutcome>;
    /// Tags after `last`, sorted bytewise, at most `limit`.
    async fn list_tags(
        &self,
        repository_id: i64,
        last: Option<&str>,
        limit: u32,
    ) -> Result<Vec<String>>;
    /// Manifests of a repository, newest first (keyset on push time and digest), with tags.
    async fn list_artifacts(
        &self,
        repository_id: i64,
        before: Option<(i64, &str)>,
        limit: u32,
    ) -> Result<Vec<ArtifactRecord>>;
    /// Records pulls: (repository name, manifest digest, time in epoch ms).
    async fn record_pulls(&self, pulls: &[(String, String, i64)]) -> Result<()>;
    /// Removes a repository with its manifests, tags, blob links and upload rows (the upload
    /// bytes are the caller's to remove first). Returns the removed uploads.
    async fn delete_repository(&self, repository_id: i64) -> Result<Vec<UploadRecord>>;

    /// Manifests in the repository whose subject is `subject`, optionally filtered.
    async fn referrers(
        &self,
        repository_id: i64,
        subject: &str,
        artifact_type: Option<&str>,
    ) -> Result<Vec<ReferrerRecord>>;
}

/// Everything the registry service needs from metadata: content plus lifecycle.
pub trait Metadata: MetadataStore + LifecycleStore {}
impl<T: MetadataStore + LifecycleStore> Metadata for T {}

/// How a manifest is named in a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestKey<'a> {
    Tag(&'a str),
    Digest(&'a str),
}

/// Which repositories a listing may show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepositoryFilter {
    /// Every repository (open mode, system administrators).
    All,
    /// Repositories of public projects, plus those of projects where `user_id` is a member
    /// allowed to list (every role but limited guest). `None`: anonymous.
    VisibleTo { user_id: Option<i64> },
}

/// A user account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub id: i64,
    pub username: String,
    /// PHC string (argon2id); `None` for accounts that cannot log in with a local password.
    pub password_hash: Option<String>,
    pub email: Option<String>,
    pub is_admin: bool,
    pub disabled: bool,
    pub created_at: i64,
}

/// A project: the namespace that is the first component of repository names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectRecord {
    pub id: i64,
    pub name: String,
    pub public: bool,
    pub created_at: i64,
}

/// A project member, the role name it holds and the repositories (glob) it applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRecord {
    pub user_id: i64,
    pub username: String,
    pub role: String,
    pub repositories: String,
}

/// A robot account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RobotRecord {
    pub id: i64,
    /// Full login name (`robot$NAME` or `robot$PROJECT+NAME`).
    pub name: String,
    /// Project of a project-level robot; `None` for a system-level robot.
    pub project: Option<String>,
    pub description: String,
    pub secret_hash: String,
    pub expires_at: Option<i64>,
    pub disabled: bool,
    pub created_at: i64,
    pub permissions: Vec<RobotPermission>,
}

/// One permission of a robot: actions on the repositories of `project` matching a glob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RobotPermission {
    pub project: String,
    pub repositories: String,
    /// Comma-separated action names.
    pub actions: String,
}

/// The pluggable identity backend: users, projects, memberships and settings.
#[async_trait]
pub trait AccessStore: Send + Sync + 'static {
    async fn user_count(&self) -> Result<i64>;
    /// Creates a user; `None` when the username is taken.
    async fn create_user(
        &self,
        username: &str,
        password_hash: Option<&str>,
        email: Option<&str>,
        is_admin: bool,
    ) -> Result<Option<i64>>;
    async fn user_by_name(&self, username: &str) -> Result<Option<UserRecord>>;
    async fn user_by_id(&self, id: i64) -> Result<Option<UserRecord>>;
    async fn list_users(&self, last: Option<&str>, limit: u32) -> Result<Vec<UserRecord>>;
    /// Updates the given fields; false when the user does not exist.
    async fn update_user(
        &self,
        id: i64,
        password_hash: Option<&str>,
        is_admin: Option<bool>,
        disabled: Option<bool>,
    ) -> Result<bool>;
    async fn delete_user(&self, id: i64) -> Result<bool>;

    /// Creates a project; `None` when the name is taken.
    async fn create_project(&self, name: &str, public: bool) -> Result<Option<i64>>;
    async fn project(&self, name: &str) -> Result<Option<ProjectRecord>>;
    /// Projects visible under `filter` (by name), after `last`, at most `limit`.
    async fn list_projects(
        &self,
        filter: &RepositoryFilter,
        last: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ProjectRecord>>;
    async fn set_project_public(&self, name: &str, public: bool) -> Result<bool>;
    /// Deletes a project that holds no repository content; `Err`-free `false` when absent.
    async fn delete_project(&self, name: &str) -> Result<bool>;
    /// Repositories of a project that hold content (a project with any cannot be deleted).
    async fn project_repository_count(&self, name: &str) -> Result<i64>;

    /// Adds a member or changes its role and repository glob.
    async fn set_member(
        &self,
        project_id: i64,
        user_id: i64,
        role: &str,
        repositories: &str,
    ) -> Result<()>;
    async fn remove_member(&self, project_id: i64, user_id: i64) -> Result<bool>;
    async fn members(&self, project_id: i64) -> Result<Vec<MemberRecord>>;
    /// The member's (role, repository glob), if a member.
    async fn membership(&self, project_id: i64, user_id: i64) -> Result<Option<(String, String)>>;

    /// Creates a robot with its permissions (project ids and globs); `None` if the name is
    /// taken or a permission's project is gone.
    async fn create_robot(
        &self,
        robot: &RobotRecord,
        project_id: Option<i64>,
        permissions: &[(i64, String, String)],
    ) -> Result<Option<i64>>;
    async fn robot_by_name(&self, name: &str) -> Result<Option<RobotRecord>>;
    /// Robots of one project (`Some`) or all robots (`None`).
    async fn list_robots(&self, project_id: Option<i64>) -> Result<Vec<RobotRecord>>;
    async fn update_robot(
        &self,
        id: i64,
        secret_hash: Option<&str>,
        disabled: Option<bool>,
    ) -> Result<bool>;
    async fn delete_robot(&self, id: i64) -> Result<bool>;

    async fn setting(&self, key: &str) -> Result<Option<String>>;
    async fn put_setting(&self, key: &str, value: &str) -> Result<()>;
    /// Stores `value` unless the key exists; returns the stored value either way (replicas
    /// starting together agree on one).
    async fn setting_or_insert(&self, key: &str, value: &str) -> Result<String>;
}

/// The project a repository name belongs to: its first path component.
pub fn project_of(repository: &str) -> &str {
    repository.split('/').next().unwrap_or(repository)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
