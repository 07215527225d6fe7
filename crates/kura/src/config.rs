//! Server configuration: built-in defaults, overlaid by a TOML file (`--config`), overlaid by
//! `KURA_*` environment variables and command-line flags (clap reads both; flags win).

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde::Deserialize;

/// The TOML file. Every key is optional; see README for defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub log_format: Option<LogFormat>,
    #[serde(default)]
    pub registry: RegistrySection,
    #[serde(default)]
    pub storage: StorageSection,
    #[serde(default)]
    pub metadata: MetadataSection,
    #[serde(default)]
    pub auth: AuthSection,
    #[serde(default)]
    pub gc: GcSection,
    #[serde(default)]
    pub audit: AuditSection,
    #[serde(default)]
    pub webhooks: WebhooksSection,
    #[serde(default)]
    pub metrics: MetricsSection,
    /// Take client addresses from X-Forwarded-For (only behind a proxy that sets it).
    pub trust_forwarded_for: Option<bool>,
}

/// `[audit]`: the audit log.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSection {
    pub enabled: Option<bool>,
    pub pulls: Option<bool>,
    pub blob_events: Option<bool>,
    pub retention_days: Option<u32>,
    pub syslog: Option<String>,
}

/// `[webhooks]`: delivery of project webhooks.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhooksSection {
    pub enabled: Option<bool>,
    pub max_attempts: Option<u32>,
    pub backoff_base_ms: Option<u64>,
    pub backoff_max_secs: Option<u64>,
    pub timeout_secs: Option<u64>,
    pub concurrency: Option<usize>,
    pub registry_url: Option<String>,
    pub log_retention_days: Option<u32>,
}

/// `[metrics]`: the Prometheus endpoint.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    pub enabled: Option<bool>,
    /// Serve /metrics on this address instead of the main listener.
    pub listen: Option<String>,
}

/// `[gc]`: garbage collection.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcSection {
    pub grace_secs: Option<u64>,
    pub deleted_manifest_retention_secs: Option<u64>,
    pub delete_untagged: Option<bool>,
    pub schedule: Option<String>,
    pub batch_size: Option<u32>,
}

/// `[auth]`: access control.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    pub mode: Option<AuthModeSetting>,
    pub token_ttl_secs: Option<u64>,
    pub realm: Option<String>,
    pub service: Option<String>,
    pub ldap: Option<LdapSection>,
}

/// `[auth.ldap]`: the directory for `auth.mode = "ldap"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LdapSection {
    pub url: String,
    #[serde(default)]
    pub starttls: bool,
    pub bind_dn: Option<String>,
    /// Prefer KURA_LDAP_BIND_PASSWORD to writing it in the file.
    pub bind_password: Option<String>,
    pub user_base: String,
    #[serde(default = "default_user_filter")]
    pub user_filter: String,
    pub group_base: Option<String>,
    #[serde(default = "default_group_filter")]
    pub group_filter: String,
    pub admin_group: Option<String>,
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    #[serde(default)]
    pub group_roles: Vec<GroupRole>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupRole {
    /// Group DN.
    pub group: String,
    pub project: String,
    pub role: String,
}

fn default_user_filter() -> String {
    "(uid={username})".into()
}

fn default_group_filter() -> String {
    "(member={dn})".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AuthModeSetting {
    /// No authentication: everyone may do everything.
    Open,
    /// Users, projects, roles and token authentication.
    Local,
    /// As local, with logins checked against an LDAP directory ([auth.ldap]).
    Ldap,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrySection {
    pub max_manifest_size: Option<usize>,
    pub delete_enabled: Option<bool>,
    pub upload_expiry_secs: Option<u64>,
    pub upload_sweep_secs: Option<u64>,
    pub chunk_min_length: Option<u64>,
    pub quota_warning_percent: Option<u8>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSection {
    pub backend: Option<String>,
    pub path: Option<PathBuf>,
    pub durability: Option<DurabilityMode>,
    pub inline_max_bytes: Option<u64>,
    #[serde(default)]
    pub s3: S3Section,
}

/// `[storage.s3]`: used when `storage.backend = "s3"`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Section {
    pub bucket: Option<String>,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub prefix: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub path_style: Option<bool>,
    pub redirect_blob_gets: Option<bool>,
    pub redirect_ttl_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetadataSection {
    pub url: Option<String>,
    pub max_connections: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DurabilityMode {
    /// fsync blob data, directories and metadata commits before acknowledging a push.
    Strict,
    /// Leave flushing to the OS: faster, but a crash may lose recently acknowledged pushes.
    Relaxed,
}

/// Flags of `kura serve`; each also reads a `KURA_*` environment variable.
#[derive(Debug, Default, Args)]
pub struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, env = "KURA_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:5000]. Port 0 picks a free port.
    #[arg(long, env = "KURA_LISTEN")]
    pub listen: Option<String>,
    /// Directory for all state of the embedded default [default: ./kura-data].
    #[arg(long, env = "KURA_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Log format [default: text].
    #[arg(long, env = "KURA_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Largest manifest accepted, in bytes [default: 4194304].
    #[arg(long, env = "KURA_MAX_MANIFEST_SIZE")]
    pub max_manifest_size: Option<usize>,
    /// Allow DELETE of manifests, tags and blobs [default: true].
    #[arg(long, env = "KURA_DELETE_ENABLED")]
    pub delete_enabled: Option<bool>,
    /// Seconds an idle upload session lives before it is removed [default: 86400].
    #[arg(long, env = "KURA_UPLOAD_EXPIRY_SECS")]
    pub upload_expiry_secs: Option<u64>,
    /// Seconds between sweeps for expired uploads [default: 600].
    #[arg(long, env = "KURA_UPLOAD_SWEEP_SECS")]
    pub upload_sweep_secs: Option<u64>,
    /// Minimum chunk size advertised in OCI-Chunk-Min-Length; 0 advertises none
    /// [default: 1048576].
    #[arg(long, env = "KURA_CHUNK_MIN_LENGTH")]
    pub chunk_min_length: Option<u64>,
    /// Blob storage backend: filesystem or s3 [default: filesystem].
    #[arg(long, env = "KURA_STORAGE_BACKEND")]
    pub storage_backend: Option<String>,
    /// Root of filesystem blob storage [default: DATA_DIR/blobs].
    #[arg(long, env = "KURA_STORAGE_PATH")]
    pub storage_path: Option<PathBuf>,
    /// S3 bucket (storage backend s3).
    #[arg(long, env = "KURA_S3_BUCKET")]
    pub s3_bucket: Option<String>,
    /// S3 endpoint URL, for S3-compatible servers [default: AWS].
    #[arg(long, env = "KURA_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// S3 region [default: AWS_REGION, else us-east-1].
    #[arg(long, env = "KURA_S3_REGION")]
    pub s3_region: Option<String>,
    /// Key prefix inside the bucket [default: none].
    #[arg(long, env = "KURA_S3_PREFIX")]
    pub s3_prefix: Option<String>,
    /// S3 access key id [default: AWS_ACCESS_KEY_ID].
    #[arg(long, env = "KURA_S3_ACCESS_KEY_ID")]
    pub s3_access_key_id: Option<String>,
    /// S3 secret access key [default: AWS_SECRET_ACCESS_KEY]. Prefer the environment or the
    /// config file to a flag, which other users can see in the process list.
    #[arg(long, env = "KURA_S3_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub s3_secret_access_key: Option<String>,
    /// Path-style S3 requests (endpoint/bucket/key) [default: true when an endpoint is set].
    #[arg(long, env = "KURA_S3_PATH_STYLE")]
    pub s3_path_style: Option<bool>,
    /// Answer blob GETs with a 307 redirect to a presigned S3 URL [default: false].
    #[arg(long, env = "KURA_S3_REDIRECT_BLOB_GETS")]
    pub s3_redirect_blob_gets: Option<bool>,
    /// Lifetime of presigned blob URLs, seconds [default: 300].
    #[arg(long, env = "KURA_S3_REDIRECT_TTL_SECS")]
    pub s3_redirect_ttl_secs: Option<u64>,
    /// Durability of acknowledged pushes [default: strict].
    #[arg(long, env = "KURA_DURABILITY", value_enum)]
    pub durability: Option<DurabilityMode>,
    /// Blobs pushed whole in one request and at most this many bytes are kept in the
    /// metadata database instead of blob storage; 0 turns this off [default: 16384].
    #[arg(long, env = "KURA_STORAGE_INLINE_MAX_BYTES")]
    pub storage_inline_max_bytes: Option<u64>,
    /// Metadata database URL, sqlite://PATH or postgres://... [default: sqlite://DATA_DIR/kura.db].
    #[arg(long, env = "KURA_METADATA_URL")]
    pub metadata_url: Option<String>,
    /// Access control: open (no authentication), local (users, projects, roles) or ldap
    /// (local, with directory logins; configure [auth.ldap] in the file) [default: open].
    #[arg(long, env = "KURA_AUTH_MODE", value_enum)]
    pub auth_mode: Option<AuthModeSetting>,
    /// Lifetime of issued bearer tokens, seconds [default: 300].
    #[arg(long, env = "KURA_AUTH_TOKEN_TTL_SECS")]
    pub auth_token_ttl_secs: Option<u64>,
    /// Token realm URL announced in challenges [default: http(s)://HOST/token of the request].
    #[arg(long, env = "KURA_AUTH_REALM")]
    pub auth_realm: Option<String>,
    /// Token service name [default: kura].
    #[arg(long, env = "KURA_AUTH_SERVICE")]
    pub auth_service: Option<String>,
    /// Maximum pooled database connections [default: 16].
    #[arg(long, env = "KURA_METADATA_MAX_CONNECTIONS")]
    pub metadata_max_connections: Option<u32>,
    /// Garbage collection never touches what was pushed, mounted or referenced more recently
    /// than this many seconds [default: 3600].
    #[arg(long, env = "KURA_GC_GRACE_SECS")]
    pub gc_grace_secs: Option<u64>,
    /// Deleted manifests stay restorable (tag history) for this many seconds [default: 86400].
    #[arg(long, env = "KURA_GC_DELETED_MANIFEST_RETENTION_SECS")]
    pub gc_deleted_manifest_retention_secs: Option<u64>,
    /// Scheduled GC runs also delete untagged manifests nothing references [default: false].
    #[arg(long, env = "KURA_GC_DELETE_UNTAGGED")]
    pub gc_delete_untagged: Option<bool>,
    /// Cron schedule of GC runs, UTC (5 fields, or 6 with seconds first) [default: none].
    #[arg(long, env = "KURA_GC_SCHEDULE")]
    pub gc_schedule: Option<String>,
    /// Keep an audit log of pushes, pulls, deletes, logins and management changes
    /// [default: true].
    #[arg(long, env = "KURA_AUDIT_ENABLED")]
    pub audit_enabled: Option<bool>,
    /// Audit manifest pulls [default: true].
    #[arg(long, env = "KURA_AUDIT_PULLS")]
    pub audit_pulls: Option<bool>,
    /// Purge audit records older than this many days; 0 keeps them all [default: 0].
    #[arg(long, env = "KURA_AUDIT_RETENTION_DAYS")]
    pub audit_retention_days: Option<u32>,
    /// Forward audit records to this syslog server (HOST:PORT, UDP, RFC 5424) [default: none].
    #[arg(long, env = "KURA_AUDIT_SYSLOG")]
    pub audit_syslog: Option<String>,
    /// Send project webhooks [default: true].
    #[arg(long, env = "KURA_WEBHOOKS_ENABLED")]
    pub webhooks_enabled: Option<bool>,
    /// Attempts per webhook delivery [default: 5].
    #[arg(long, env = "KURA_WEBHOOK_MAX_ATTEMPTS")]
    pub webhook_max_attempts: Option<u32>,
    /// Delay before the first webhook retry, milliseconds; doubles per attempt [default: 2000].
    #[arg(long, env = "KURA_WEBHOOK_BACKOFF_MS")]
    pub webhook_backoff_ms: Option<u64>,
    /// Timeout of one webhook request, seconds [default: 10].
    #[arg(long, env = "KURA_WEBHOOK_TIMEOUT_SECS")]
    pub webhook_timeout_secs: Option<u64>,
    /// Registry URL as clients reach it, for resource_url in webhook payloads [default: none].
    #[arg(long, env = "KURA_REGISTRY_URL")]
    pub registry_url: Option<String>,
    /// Serve Prometheus metrics at /metrics [default: true].
    #[arg(long, env = "KURA_METRICS_ENABLED")]
    pub metrics_enabled: Option<bool>,
    /// Serve /metrics on this separate address instead of the main listener [default: none].
    #[arg(long, env = "KURA_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Take client addresses from X-Forwarded-For; only behind a proxy that sets it
    /// [default: false].
    #[arg(long, env = "KURA_TRUST_FORWARDED_FOR")]
    pub trust_forwarded_for: Option<bool>,
    /// Announce QUOTA_WARNING when a push takes a project past this percentage of its limit;
    /// 0 turns it off [default: 85].
    #[arg(long, env = "KURA_QUOTA_WARNING_PERCENT")]
    pub quota_warning_percent: Option<u8>,
}

/// Which blob store to use, with its settings.
#[derive(Debug, Clone, PartialEq)]
pub enum StorageBackend {
    Filesystem,
    S3(kura_storage::S3Config),
}

/// The effective configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub listen: String,
    pub data_dir: PathBuf,
    pub log_format: LogFormat,
    pub max_manifest_size: usize,
    pub delete_enabled: bool,
    pub upload_expiry: Duration,
    pub upload_sweep: Duration,
    pub chunk_min_length: u64,
    pub storage_backend: StorageBackend,
    pub storage_path: PathBuf,
    pub durability: DurabilityMode,
    pub inline_blob_max: u64,
    pub metadata_url: String,
    pub metadata_max_connections: u32,
    pub auth_mode: AuthModeSetting,
    pub auth_token_ttl: Duration,
    pub auth_realm: Option<String>,
    pub auth_service: String,
    pub auth_ldap: Option<LdapSection>,
    pub gc: kura_registry::GcConfig,
    /// `None`: the audit log is off.
    pub audit: Option<kura_ops::AuditConfig>,
    /// `None`: webhooks are off.
    pub webhooks: Option<kura_ops::WebhookConfig>,
    pub metrics_enabled: bool,
    pub metrics_listen: Option<String>,
    pub trust_forwarded_for: bool,
    pub quota_warning_percent: u8,
}

impl Settings {
    /// Resolves flags/env over the file over defaults.
    pub fn resolve(args: &ServeArgs) -> Result<Settings, String> {
        let file = match &args.config {
            Some(path) => load_file(path)?,
            None => FileConfig::default(),
        };
        let data_dir = args
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("./kura-data"));
        let storage_path = args
            .storage_path
            .clone()
            .or(file.storage.path)
            .unwrap_or_else(|| data_dir.join("blobs"));
        let metadata_url = args
            .metadata_url
            .clone()
            .or(file.metadata.url)
            .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("kura.db").display()));
        let backend_name = args
            .storage_backend
            .clone()
            .or(file.storage.backend)
            .unwrap_or_else(|| "filesystem".into());
        let storage_backend = match backend_name.as_str() {
            "filesystem" => StorageBackend::Filesystem,
            "s3" => {
                let s3 = file.storage.s3;
                let endpoint = args.s3_endpoint.clone().or(s3.endpoint);
                StorageBackend::S3(kura_storage::S3Config {
                    bucket: args.s3_bucket.clone().or(s3.bucket).ok_or(
                        "storage backend s3 needs a bucket (storage.s3.bucket, --s3-bucket \
                         or KURA_S3_BUCKET)",
                    )?,
                    path_style: args
                        .s3_path_style
                        .or(s3.path_style)
                        .unwrap_or(endpoint.is_some()),
                    endpoint,
                    region: args.s3_region.clone().or(s3.region),
                    prefix: args.s3_prefix.clone().or(s3.prefix).unwrap_or_default(),
                    access_key_id: args.s3_access_key_id.clone().or(s3.access_key_id),
                    secret_access_key: args.s3_secret_access_key.clone().or(s3.secret_access_key),
                    redirect_ttl: args
                        .s3_redirect_blob_gets
                        .or(s3.redirect_blob_gets)
                        .unwrap_or(false)
                        .then(|| {
                            Duration::from_secs(
                                args.s3_redirect_ttl_secs
                                    .or(s3.redirect_ttl_secs)
                                    .unwrap_or(300),
                            )
                        }),
                })
            }
            other => {
                return Err(format!(
                    "unknown storage backend {other:?} (available: filesystem, s3)"
                ));
            }
        };
        let r = file.registry;
        let a = file.auth;
        let g = file.gc;
        let defaults = kura_registry::GcConfig::default();
        let gc_schedule = args.gc_schedule.clone().or(g.schedule);
        if let Some(expr) = &gc_schedule {
            kura_registry::schedule::parse_schedule(expr)
                .map_err(|e| format!("gc.schedule: {e}"))?;
        }
        let gc = kura_registry::GcConfig {
            grace: args
                .gc_grace_secs
                .or(g.grace_secs)
                .map(Duration::from_secs)
                .unwrap_or(defaults.grace),
            deleted_manifest_retention: args
                .gc_deleted_manifest_retention_secs
                .or(g.deleted_manifest_retention_secs)
                .map(Duration::from_secs)
                .unwrap_or(defaults.deleted_manifest_retention),
            delete_untagged: args
                .gc_delete_untagged
                .or(g.delete_untagged)
                .unwrap_or(defaults.delete_untagged),
            schedule: gc_schedule,
            batch_size: g.batch_size.unwrap_or(defaults.batch_size).clamp(1, 10_000),
            stale_after: defaults.stale_after,
        };
        let au = file.audit;
        let audit = if args.audit_enabled.or(au.enabled).unwrap_or(true) {
            let syslog = match args.audit_syslog.clone().or(au.syslog) {
                Some(s) => Some(
                    std::net::ToSocketAddrs::to_socket_addrs(&s)
                        .ok()
                        .and_then(|mut a| a.next())
                        .ok_or_else(|| format!("audit.syslog: cannot resolve {s:?} (HOST:PORT)"))?,
                ),
                None => None,
            };
            let days = args.audit_retention_days.or(au.retention_days).unwrap_or(0);
            Some(kura_ops::AuditConfig {
                pulls: args.audit_pulls.or(au.pulls).unwrap_or(true),
                blob_events: au.blob_events.unwrap_or(false),
                retention: (days > 0).then(|| Duration::from_secs(u64::from(days) * 86_400)),
                syslog,
                ..kura_ops::AuditConfig::default()
            })
        } else {
            None
        };
        let w = file.webhooks;
        let webhooks = if args.webhooks_enabled.or(w.enabled).unwrap_or(true) {
            let d = kura_ops::WebhookConfig::default();
            let registry_url = args.registry_url.clone().or(w.registry_url);
            Some(kura_ops::WebhookConfig {
                max_attempts: args
                    .webhook_max_attempts
                    .or(w.max_attempts)
                    .unwrap_or(d.max_attempts)
                    .clamp(1, 100),
                backoff_base: args
                    .webhook_backoff_ms
                    .or(w.backoff_base_ms)
                    .map(Duration::from_millis)
                    .unwrap_or(d.backoff_base),
                backoff_max: w
                    .backoff_max_secs
                    .map(Duration::from_secs)
                    .unwrap_or(d.backoff_max),
                timeout: args
                    .webhook_timeout_secs
                    .or(w.timeout_secs)
                    .map(|s| Duration::from_secs(s.max(1)))
                    .unwrap_or(d.timeout),
                concurrency: w.concurrency.unwrap_or(d.concurrency).clamp(1, 64),
                registry_url,
                log_retention: w
                    .log_retention_days
                    .map(|days| Duration::from_secs(u64::from(days) * 86_400))
                    .unwrap_or(d.log_retention),
            })
        } else {
            None
        };
        let m = file.metrics;
        Ok(Settings {
            audit,
            webhooks,
            metrics_enabled: args.metrics_enabled.or(m.enabled).unwrap_or(true),
            metrics_listen: args.metrics_listen.clone().or(m.listen),
            trust_forwarded_for: args
                .trust_forwarded_for
                .or(file.trust_forwarded_for)
                .unwrap_or(false),
            quota_warning_percent: args
                .quota_warning_percent
                .or(r.quota_warning_percent)
                .unwrap_or(85)
                .min(100),
            listen: args
                .listen
                .clone()
                .or(file.listen)
                .unwrap_or_else(|| "127.0.0.1:5000".into()),
            log_format: args
                .log_format
                .or(file.log_format)
                .unwrap_or(LogFormat::Text),
            max_manifest_size: args
                .max_manifest_size
                .or(r.max_manifest_size)
                .unwrap_or(4 * 1024 * 1024),
            delete_enabled: args.delete_enabled.or(r.delete_enabled).unwrap_or(true),
            upload_expiry: Duration::from_secs(
                args.upload_expiry_secs
                    .or(r.upload_expiry_secs)
                    .unwrap_or(86_400),
            ),
            upload_sweep: Duration::from_secs(
                args.upload_sweep_secs
                    .or(r.upload_sweep_secs)
                    .unwrap_or(600)
                    .max(1),
            ),
            chunk_min_length: args
                .chunk_min_length
                .or(r.chunk_min_length)
                .unwrap_or(1024 * 1024),
            storage_backend,
            storage_path,
            durability: args
                .durability
                .or(file.storage.durability)
                .unwrap_or(DurabilityMode::Strict),
            inline_blob_max: args
                .storage_inline_max_bytes
                .or(file.storage.inline_max_bytes)
                .unwrap_or(kura_registry::DEFAULT_INLINE_BLOB_MAX),
            metadata_url,
            metadata_max_connections: args
                .metadata_max_connections
                .or(file.metadata.max_connections)
                .unwrap_or(16),
            auth_mode: args.auth_mode.or(a.mode).unwrap_or(AuthModeSetting::Open),
            auth_token_ttl: Duration::from_secs(
                args.auth_token_ttl_secs
                    .or(a.token_ttl_secs)
                    .unwrap_or(300)
                    .max(1),
            ),
            auth_realm: args.auth_realm.clone().or(a.realm),
            auth_ldap: a.ldap.map(|mut l| {
                if let Ok(pw) = std::env::var("KURA_LDAP_BIND_PASSWORD") {
                    l.bind_password = Some(pw);
                }
                l
            }),
            auth_service: args
                .auth_service
                .clone()
                .or(a.service)
                .unwrap_or_else(|| "kura".into()),
            data_dir,
            gc,
        })
    }
}

fn load_file(path: &Path) -> Result<FileConfig, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("invalid config file {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let s = Settings::resolve(&ServeArgs::default()).unwrap();
        assert_eq!(s.listen, "127.0.0.1:5000");
        assert_eq!(s.data_dir, PathBuf::from("./kura-data"));
        assert_eq!(s.storage_path, PathBuf::from("./kura-data/blobs"));
        assert_eq!(s.metadata_url, "sqlite://./kura-data/kura.db");
        assert_eq!(s.max_manifest_size, 4 * 1024 * 1024);
        assert_eq!(s.durability, DurabilityMode::Strict);
        assert_eq!(s.inline_blob_max, 16 * 1024);
    }

    #[test]
    fn file_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kura.toml");
        std::fs::write(
            &path,
            "listen = \"0.0.0.0:6000\"\ndata_dir = \"/srv/kura\"\n\
             [registry]\nmax_manifest_size = 1000\n[storage]\ndurability = \"relaxed\"\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path.clone()),
            ..Default::default()
        };
        let s = Settings::resolve(&args).unwrap();
        assert_eq!(s.listen, "0.0.0.0:6000");
        assert_eq!(s.storage_path, PathBuf::from("/srv/kura/blobs"));
        assert_eq!(s.max_manifest_size, 1000);
        assert_eq!(s.durability, DurabilityMode::Relaxed);
        let args = ServeArgs {
            config: Some(path),
            listen: Some("127.0.0.1:7000".into()),
            max_manifest_size: Some(5),
            ..Default::default()
        };
        let s = Settings::resolve(&args).unwrap();
        assert_eq!(s.listen, "127.0.0.1:7000");
        assert_eq!(s.max_manifest_size, 5);
    }

    #[test]
    fn s3_settings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kura.toml");
        std::fs::write(
            &path,
            "[storage]\nbackend = \"s3\"\n[storage.s3]\nbucket = \"b\"\n\
             endpoint = \"http://127.0.0.1:9000\"\nprefix = \"reg\"\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path),
            s3_region: Some("eu-west-1".into()),
            ..Default::default()
        };
        let s = Settings::resolve(&args).unwrap();
        let StorageBackend::S3(s3) = s.storage_backend else {
            panic!("expected s3");
        };
        assert_eq!(s3.bucket, "b");
        assert_eq!(s3.prefix, "reg");
        assert_eq!(s3.region.as_deref(), Some("eu-west-1"));
        assert!(
            s3.path_style,
            "path style by default with a custom endpoint"
        );
        let err = Settings::resolve(&ServeArgs {
            storage_backend: Some("s3".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.contains("bucket"), "{err}");
    }

    #[test]
    fn unknown_keys_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kura.toml");
        std::fs::write(&path, "lisen = \"x\"\n").unwrap();
        let args = ServeArgs {
            config: Some(path),
            ..Default::default()
        };
        assert!(Settings::resolve(&args).unwrap_err().contains("lisen"));
    }
}
