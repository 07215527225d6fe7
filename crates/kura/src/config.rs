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
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrySection {
    pub max_manifest_size: Option<usize>,
    pub delete_enabled: Option<bool>,
    pub upload_expiry_secs: Option<u64>,
    pub upload_sweep_secs: Option<u64>,
    pub chunk_min_length: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSection {
    pub backend: Option<String>,
    pub path: Option<PathBuf>,
    pub durability: Option<DurabilityMode>,
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
    /// Blob storage backend [default: filesystem].
    #[arg(long, env = "KURA_STORAGE_BACKEND")]
    pub storage_backend: Option<String>,
    /// Root of filesystem blob storage [default: DATA_DIR/blobs].
    #[arg(long, env = "KURA_STORAGE_PATH")]
    pub storage_path: Option<PathBuf>,
    /// Durability of acknowledged pushes [default: strict].
    #[arg(long, env = "KURA_DURABILITY", value_enum)]
    pub durability: Option<DurabilityMode>,
    /// Metadata database URL, sqlite://PATH or postgres://... [default: sqlite://DATA_DIR/kura.db].
    #[arg(long, env = "KURA_METADATA_URL")]
    pub metadata_url: Option<String>,
    /// Maximum pooled database connections [default: 16].
    #[arg(long, env = "KURA_METADATA_MAX_CONNECTIONS")]
    pub metadata_max_connections: Option<u32>,
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
    pub storage_backend: String,
    pub storage_path: PathBuf,
    pub durability: DurabilityMode,
    pub metadata_url: String,
    pub metadata_max_connections: u32,
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
        let storage_backend = args
            .storage_backend
            .clone()
            .or(file.storage.backend)
            .unwrap_or_else(|| "filesystem".into());
        if storage_backend != "filesystem" {
            return Err(format!(
                "unknown storage backend {storage_backend:?} (available: filesystem)"
            ));
        }
        let r = file.registry;
        Ok(Settings {
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
            metadata_url,
            metadata_max_connections: args
                .metadata_max_connections
                .or(file.metadata.max_connections)
                .unwrap_or(16),
            data_dir,
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
