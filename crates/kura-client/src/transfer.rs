//! The copy engine: moves an image (or a whole multi-platform index) from any source to any
//! destination — registry, OCI layout directory or docker-archive tar — the way `kura push`,
//! `pull` and `cp` need it.
//!
//! Order matters for readers of the destination: blobs first, then child manifests, then the
//! root, so nothing ever points at content that is not there yet. Blobs the destination already
//! has are skipped (a HEAD per blob, or one HEAD for a whole manifest), blobs in another
//! repository of the same registry are mounted, and everything else streams through in
//! parallel: a registry upload is one streamed PATCH that resumes from the registry's offset if
//! the connection drops. Content written locally is checked against its digest before it is
//! renamed into place.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::{self, BoxStream};
use futures_util::{StreamExt, TryStreamExt};
use kura_oci::{Algorithm, Descriptor, Digest, ManifestKind, media_types};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::Mutex;
use tokio_util::io::ReaderStream;

use crate::archive::{ArchiveImage, ArchiveWriter, DockerArchive};
use crate::layout::{OciLayout, REF_NAME};
use crate::reference::ImageRef;
use crate::registry::{FetchedManifest, Mount, Registry, verify};
use crate::{ClientError, Result};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const READ_BUFFER: usize = 256 << 10;
/// Attempts per blob upload (the first try and two resumptions).
const UPLOAD_ATTEMPTS: u32 = 3;

/// An OS/architecture pair as index entries carry it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(
        default,
        rename = "os.version",
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
}

impl Platform {
    /// `os/arch[/variant]`.
    pub fn parse(s: &str) -> Result<Platform> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [os, arch] | [os, arch, _] if !os.is_empty() && !arch.is_empty() => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: parts.get(2).map(|v| v.to_string()),
                os_version: None,
            }),
            _ => Err(ClientError::Usage(format!(
                "invalid platform {s:?}: expected os/arch[/variant], e.g. linux/amd64"
            ))),
        }
    }

    /// The platform this program runs on, in OCI's spelling.
    pub fn host() -> Platform {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        Platform {
            os: std::env::consts::OS.to_string(),
            architecture: arch.to_string(),
            variant: None,
            os_version: None,
        }
    }

    fn matches(&self, want: &Platform) -> bool {
        self.os == want.os
            && self.architecture == want.architecture
            && (want.variant.is_none() || self.variant == want.variant)
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// An index entry: a descriptor with its platform.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IndexEntry {
    #[serde(flatten)]
    pub descriptor: Descriptor,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

/// The entries of an index manifest.
pub fn index_entries(bytes: &[u8]) -> Result<Vec<IndexEntry>> {
    #[derive(Deserialize)]
    struct Index {
        #[serde(default)]
        manifests: Vec<IndexEntry>,
    }
    let index: Index = serde_json::from_slice(bytes)
        .map_err(|e| ClientError::Format(format!("invalid index: {e}")))?;
    Ok(index.manifests)
}

/// Parses a manifest the way the registry does.
pub fn parse_manifest(m: &FetchedManifest) -> Result<kura_oci::ParsedManifest> {
    kura_oci::manifest::parse(&m.bytes, Some(&m.media_type))
        .map_err(|e| ClientError::Format(format!("manifest {}: {e}", m.digest)))
}

/// Picks the entry for `platform` from an index.
pub fn select_platform(entries: &[IndexEntry], platform: &Platform) -> Result<IndexEntry> {
    entries
        .iter()
        .find(|e| e.platform.as_ref().is_some_and(|p| p.matches(platform)))
        .cloned()
        .ok_or_else(|| {
            let have: Vec<String> = entries
                .iter()
                .filter_map(|e| e.platform.as_ref().map(|p| p.to_string()))
                .collect();
            ClientError::NotFound(format!(
                "no image for platform {platform} in the index (it has: {}); choose one with \
                 --platform or copy them all with --all",
                if have.is_empty() {
                    "none with a platform".to_string()
                } else {
                    have.join(", ")
                }
            ))
        })
}

/// How a blob ended up in the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobOutcome {
    Copied,
    AlreadyThere,
    Mounted,
}

/// Hears about transfers as they happen (the CLI draws progress bars from this).
pub trait Progress: Send + Sync {
    fn blob_started(&self, _digest: &Digest, _size: u64) {}
    fn blob_advanced(&self, _digest: &Digest, _bytes: u64) {}
    /// Called when an upload resumes: the bar goes back to `offset`.
    fn blob_reset(&self, _digest: &Digest, _offset: u64) {}
    fn blob_done(&self, _digest: &Digest, _outcome: BlobOutcome) {}
    fn manifest_written(&self, _digest: &Digest, _media_type: &str) {}
}

/// A [`Progress`] that ignores everything.
pub struct NoProgress;
impl Progress for NoProgress {}

/// What a copy did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CopyReport {
    /// The digest of the root manifest written.
    pub digest: String,
    pub media_type: String,
    pub manifests: u64,
    pub blobs: u64,
    pub blobs_copied: u64,
    pub blobs_skipped: u64,
    pub blobs_mounted: u64,
    pub bytes_copied: u64,
}

/// Options of a copy.
#[derive(Clone)]
pub struct CopyOptions {
    /// Copy every platform of an index (otherwise only `platform`).
    pub all: bool,
    pub platform: Platform,
    /// Blobs moved at once.
    pub jobs: usize,
    pub progress: Arc<dyn Progress>,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            all: false,
            platform: Platform::host(),
            jobs: 4,
            progress: Arc::new(NoProgress),
        }
    }
}

/// Where an image is read from.
pub enum Source {
    Registry {
        registry: Arc<Registry>,
        image: ImageRef,
    },
    Layout {
        layout: OciLayout,
        tag: Option<String>,
    },
    Archive(ArchiveSource),
}

/// Where an image is written to.
pub enum Destination {
    Registry {
        registry: Arc<Registry>,
        image: ImageRef,
    },
    Layout {
        layout: OciLayout,
        tag: Option<String>,
    },
    Archive {
        writer: Mutex<Option<ArchiveWriter>>,
        /// The `RepoTags` entry to record.
        repo_tag: Option<String>,
        images: Mutex<Vec<ArchiveImage>>,
    },
}

impl Destination {
    /// A docker-archive destination writing `path`.
    pub async fn archive(path: &Path, repo_tag: Option<String>) -> Result<Destination> {
        Ok(Destination::Archive {
            writer: Mutex::new(Some(ArchiveWriter::create(path).await?)),
            repo_tag,
            images: Mutex::new(Vec::new()),
        })
    }
}

/// A docker-archive read as an image source: its one selected image, with a manifest made up
/// for it (OCI image manifest, layers as stored in the tar).
pub struct ArchiveSource {
    archive: DockerArchive,
    manifest: FetchedManifest,
    /// Blob digest → file in the tar.
    files: HashMap<Digest, String>,
}

impl ArchiveSource {
    /// Opens `path` and prepares the image `reference` picks (see [`DockerArchive::select`]).
    pub async fn open(path: &Path, reference: Option<&str>) -> Result<ArchiveSource> {
        let archive = DockerArchive::open(path).await?;
        let image = archive.select(reference)?.clone();
        let config = archive.read_file(&image.config).await?;
        #[derive(Deserialize)]
        struct Rootfs {
            #[serde(default)]
            diff_ids: Vec<Digest>,
        }
        #[derive(Deserialize)]
        struct Config {
            rootfs: Option<Rootfs>,
        }
        let parsed: Config = serde_json::from_slice(&config).map_err(|e| {
            ClientError::Format(format!("config {} in the archive: {e}", image.config))
        })?;
        let diff_ids = parsed.rootfs.map(|r| r.diff_ids).unwrap_or_default();
        let config_digest = Algorithm::Sha256.digest_of(&config);
        if let Some((manifest, files)) = Self::original_manifest(&archive, &config_digest).await {
            return Ok(ArchiveSource {
                archive,
                manifest,
                files,
            });
        }
        let mut files = HashMap::new();
        files.insert(config_digest.clone(), image.config.clone());
        let mut layers = Vec::new();
        for (i, name) in image.layers.iter().enumerate() {
            let size = archive.file_size(name)?;
            let mut head = [0u8; 4];
            let mut f = archive.open_file(name).await?;
            let n = read_prefix(&mut f, &mut head).await?;
            let media_type = match &head[..n] {
                [0x1f, 0x8b, ..] => "application/vnd.oci.image.layer.v1.tar+gzip",
                [0x28, 0xb5, 0x2f, 0xfd] => "application/vnd.oci.image.layer.v1.tar+zstd",
                _ => "application/vnd.oci.image.layer.v1.tar",
            };
            let named = name
                .strip_prefix("blobs/")
                .and_then(|r| r.replacen('/', ":", 1).parse::<Digest>().ok());
            let digest = match (named, diff_ids.get(i)) {
                (Some(d), _) => d,
                // An uncompressed layer's digest is its diff ID.
                (None, Some(d)) if media_type.ends_with(".tar") => d.clone(),
                _ => hash_stream(archive.open_file(name).await?).await?,
            };
            files.insert(digest.clone(), name.clone());
            layers.push(serde_json::json!({
                "mediaType": media_type, "digest": digest.to_string(), "size": size,
            }));
        }
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": OCI_CONFIG,
                "digest": config_digest.to_string(),
                "size": config.len(),
            },
            "layers": layers,
        });
        let bytes = Bytes::from(serde_json::to_vec(&manifest).expect("json"));
        Ok(ArchiveSource {
            manifest: FetchedManifest {
                digest: Algorithm::Sha256.digest_of(&bytes),
                bytes,
                media_type: OCI_MANIFEST.into(),
            },
            archive,
            files,
        })
    }

    /// A Docker 25+ archive (or one `kura pull` wrote) carries the image's real manifest in
    /// its OCI layout: use it, so the pushed image keeps its digest, when it is an image
    /// manifest for this config whose every blob is in the tar.
    async fn original_manifest(
        archive: &DockerArchive,
        config_digest: &Digest,
    ) -> Option<(FetchedManifest, HashMap<Digest, String>)> {
        let index = archive.read_file("index.json").await.ok()?;
        for entry in index_entries(&index).ok()? {
            let desc = entry.descriptor;
            let name = blob_name(&desc.digest);
            let Ok(bytes) = archive.read_file(&name).await else {
                continue;
            };
            if verify(&bytes, &desc).is_err() {
                continue;
            }
            let m = FetchedManifest {
                media_type: effective_media_type(&desc.media_type, &bytes),
                digest: desc.digest.clone(),
                bytes: Bytes::from(bytes),
            };
            let Ok(parsed) = parse_manifest(&m) else {
                continue;
            };
            if parsed.kind != ManifestKind::Image
                || parsed.blobs.first().map(|c| &c.digest) != Some(config_digest)
            {
                continue;
            }
            let mut files = HashMap::new();
            for b in &parsed.blobs {
                let n = blob_name(&b.digest);
                if archive.file_size(&n).ok() != Some(b.size) {
                    return None;
                }
                files.insert(b.digest.clone(), n);
            }
            return Some((m, files));
        }
        None
    }

    /// The manifest pushed for the selected image.
    pub fn manifest(&self) -> &FetchedManifest {
        &self.manifest
    }
}

async fn read_prefix(f: &mut (impl AsyncReadExt + Unpin), buf: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let r = f
            .read(&mut buf[n..])
            .await
            .map_err(ClientError::io("reading the archive"))?;
        if r == 0 {
            break;
        }
        n += r;
    }
    Ok(n)
}

async fn hash_stream(reader: impl tokio::io::AsyncRead + Unpin) -> Result<Digest> {
    let mut hasher = Algorithm::Sha256.hasher();
    let mut stream = ReaderStream::with_capacity(reader, READ_BUFFER);
    while let Some(chunk) = stream.next().await {
        hasher.update(&chunk.map_err(ClientError::io("reading the archive"))?);
    }
    Ok(hasher.finish())
}

type ByteStream = BoxStream<'static, io::Result<Bytes>>;

impl Source {
    /// The root manifest the source names.
    pub async fn root(&self) -> Result<FetchedManifest> {
        match self {
            Source::Registry { registry, image } => {
                registry
                    .get_manifest(&image.repository, &image.reference())
                    .await
            }
            Source::Layout { layout, tag } => {
                let desc = layout.resolve(tag.as_deref()).await?;
                let bytes = Bytes::from(layout.read_blob(&desc).await?);
                Ok(FetchedManifest {
                    media_type: effective_media_type(&desc.media_type, &bytes),
                    digest: desc.digest,
                    bytes,
                })
            }
            Source::Archive(a) => Ok(a.manifest.clone()),
        }
    }

    /// A manifest the root points at.
    pub async fn manifest(&self, desc: &Descriptor) -> Result<FetchedManifest> {
        match self {
            Source::Registry { registry, image } => {
                let m = registry
                    .get_manifest(&image.repository, &desc.digest.to_string())
                    .await?;
                verify(&m.bytes, desc)?;
                Ok(m)
            }
            Source::Layout { layout, .. } => {
                let bytes = Bytes::from(layout.read_blob(desc).await?);
                Ok(FetchedManifest {
                    media_type: effective_media_type(&desc.media_type, &bytes),
                    digest: desc.digest.clone(),
                    bytes,
                })
            }
            Source::Archive(_) => Err(ClientError::NotFound(format!(
                "manifest {} is not in the archive",
                desc.digest
            ))),
        }
    }

    /// A small blob (a config), read whole and checked.
    pub async fn blob_bytes(&self, desc: &Descriptor) -> Result<Bytes> {
        match self {
            Source::Registry { registry, image } => {
                registry.get_blob_bytes(&image.repository, desc).await
            }
            Source::Layout { layout, .. } => Ok(Bytes::from(layout.read_blob(desc).await?)),
            Source::Archive(a) => {
                let name = a.files.get(&desc.digest).ok_or_else(|| {
                    ClientError::NotFound(format!("blob {} is not in the archive", desc.digest))
                })?;
                let bytes = Bytes::from(a.archive.read_file(name).await?);
                verify(&bytes, desc)?;
                Ok(bytes)
            }
        }
    }

    /// A blob as a stream of chunks, from byte `offset`.
    async fn blob_stream(&self, desc: &Descriptor, offset: u64) -> Result<ByteStream> {
        match self {
            Source::Registry { registry, image } => {
                let resp = registry
                    .get_blob(&image.repository, &desc.digest, offset)
                    .await?;
                Ok(resp.bytes_stream().map_err(io::Error::other).boxed())
            }
            Source::Layout { layout, .. } => {
                let mut f = layout.open_blob(desc).await?;
                if offset > 0 {
                    f.seek(io::SeekFrom::Start(offset))
                        .await
                        .map_err(ClientError::io("seeking in a blob"))?;
                }
                Ok(ReaderStream::with_capacity(f, READ_BUFFER).boxed())
            }
            Source::Archive(a) => {
                let name = a.files.get(&desc.digest).ok_or_else(|| {
                    ClientError::NotFound(format!("blob {} is not in the archive", desc.digest))
                })?;
                let mut f = a.archive.open_file(name).await?;
                if offset > 0 {
                    // Take<File> cannot seek; skip by reading (resumes are rare).
                    let mut skip = (&mut f).take(offset);
                    tokio::io::copy(&mut skip, &mut tokio::io::sink())
                        .await
                        .map_err(ClientError::io("reading the archive"))?;
                }
                Ok(ReaderStream::with_capacity(f, READ_BUFFER).boxed())
            }
        }
    }

    fn same_registry_repo(&self, dest_registry: &Registry) -> Option<String> {
        match self {
            Source::Registry { registry, image } if registry.name() == dest_registry.name() => {
                Some(image.repository.clone())
            }
            _ => None,
        }
    }
}

/// A layout's descriptor may say `application/json` or nothing useful; trust the content.
fn effective_media_type(declared: &str, bytes: &[u8]) -> String {
    if declared.contains("manifest") || declared.contains("index") {
        return declared.to_string();
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct M {
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<M>(bytes) {
        Ok(M {
            media_type: Some(m),
            ..
        }) => m,
        Ok(M {
            manifests: Some(_), ..
        }) => "application/vnd.oci.image.index.v1+json".into(),
        _ => OCI_MANIFEST.into(),
    }
}

/// Copies the image `source` names to `dest`. With an index at the root, either every
/// platform (`options.all`) or only `options.platform` is copied.
pub async fn copy_image(
    source: &Source,
    dest: &Destination,
    options: &CopyOptions,
) -> Result<CopyReport> {
    let mut root = source.root().await?;
    if media_types::is_index(&root.media_type) && !options.all {
        let entry = select_platform(&index_entries(&root.bytes)?, &options.platform)?;
        root = source.manifest(&entry.descriptor).await?;
    }
    if media_types::is_index(&root.media_type) && matches!(dest, Destination::Archive { .. }) {
        return Err(ClientError::Usage(
            "a docker-archive holds one platform's image; choose it with --platform instead of \
             --all"
                .into(),
        ));
    }
    let report = Arc::new(std::sync::Mutex::new(CopyReport::default()));
    copy_tree(source, dest, &root, options, &report, true).await?;
    let mut report = report.lock().expect("report lock").clone();
    report.digest = root.digest.to_string();
    report.media_type = root.media_type.clone();
    if let Destination::Archive { writer, images, .. } = dest {
        let w = writer.lock().await.take().ok_or_else(|| {
            ClientError::Usage("an archive destination can be written once".into())
        })?;
        w.finish(&images.lock().await).await?;
    }
    Ok(report)
}

async fn copy_tree(
    source: &Source,
    dest: &Destination,
    manifest: &FetchedManifest,
    options: &CopyOptions,
    report: &Arc<std::sync::Mutex<CopyReport>>,
    is_root: bool,
) -> Result<()> {
    let parsed = parse_manifest(manifest)?;
    if !dest_has_manifest(dest, manifest).await? {
        match parsed.kind {
            ManifestKind::Index => {
                for child in &parsed.children {
                    let m = source.manifest(child).await?;
                    Box::pin(copy_tree(source, dest, &m, options, report, false)).await?;
                }
            }
            ManifestKind::Image => {
                copy_blobs(source, dest, &parsed.blobs, options, report).await?;
            }
        }
    } else {
        let mut r = report.lock().expect("report lock");
        r.blobs += parsed.blobs.len() as u64;
        r.blobs_skipped += parsed.blobs.len() as u64;
        // A child already there needs nothing more; the root may still need its tag.
        if !is_root {
            r.manifests += 1;
            return Ok(());
        }
    }
    write_manifest(dest, manifest, &parsed, is_root).await?;
    report.lock().expect("report lock").manifests += 1;
    options
        .progress
        .manifest_written(&manifest.digest, &manifest.media_type);
    Ok(())
}

/// Whether the destination already holds this manifest (then its blobs are there too).
async fn dest_has_manifest(dest: &Destination, m: &FetchedManifest) -> Result<bool> {
    match dest {
        Destination::Registry { registry, image } => Ok(registry
            .head_manifest(&image.repository, &m.digest.to_string())
            .await?
            .is_some()),
        Destination::Layout { layout, .. } => {
            Ok(layout.has_blob(&m.digest, m.bytes.len() as u64).await)
        }
        Destination::Archive { .. } => Ok(false),
    }
}

async fn copy_blobs(
    source: &Source,
    dest: &Destination,
    blobs: &[Descriptor],
    options: &CopyOptions,
    report: &Arc<std::sync::Mutex<CopyReport>>,
) -> Result<()> {
    let results: Vec<Result<()>> = stream::iter(blobs.iter().cloned())
        .map(|desc| async move {
            let outcome = copy_blob(source, dest, &desc, options).await?;
            let mut r = report.lock().expect("report lock");
            r.blobs += 1;
            match outcome {
                BlobOutcome::Copied => {
                    r.blobs_copied += 1;
                    r.bytes_copied += desc.size;
                }
                BlobOutcome::AlreadyThere => r.blobs_skipped += 1,
                BlobOutcome::Mounted => r.blobs_mounted += 1,
            }
            drop(r);
            options.progress.blob_done(&desc.digest, outcome);
            Ok(())
        })
        .buffer_unordered(options.jobs.max(1))
        .collect()
        .await;
    results.into_iter().collect()
}

async fn copy_blob(
    source: &Source,
    dest: &Destination,
    desc: &Descriptor,
    options: &CopyOptions,
) -> Result<BlobOutcome> {
    let progress = &options.progress;
    match dest {
        Destination::Registry { registry, image } => {
            let repo = &image.repository;
            if registry.blob_exists(repo, &desc.digest).await? {
                return Ok(BlobOutcome::AlreadyThere);
            }
            let mut session = None;
            if let Some(from) = source.same_registry_repo(registry)
                && &from != repo
            {
                match registry.mount_blob(repo, &desc.digest, &from).await? {
                    Mount::Mounted => return Ok(BlobOutcome::Mounted),
                    Mount::NotMounted(loc) => session = loc,
                }
            }
            progress.blob_started(&desc.digest, desc.size);
            upload(source, registry, repo, desc, session, progress).await?;
            Ok(BlobOutcome::Copied)
        }
        Destination::Layout { layout, .. } => {
            if layout.has_blob(&desc.digest, desc.size).await {
                return Ok(BlobOutcome::AlreadyThere);
            }
            progress.blob_started(&desc.digest, desc.size);
            let mut writer = layout.blob_writer(desc).await?;
            let mut stream = source.blob_stream(desc, 0).await?;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| ClientError::Connect(format!("reading: {e}")))?;
                writer.write(&chunk).await?;
                progress.blob_advanced(&desc.digest, chunk.len() as u64);
            }
            writer.finish().await?;
            Ok(BlobOutcome::Copied)
        }
        Destination::Archive { writer, .. } => {
            let name = blob_name(&desc.digest);
            // One tar file: entries are written one after another.
            let mut guard = writer.lock().await;
            let w = guard.as_mut().ok_or_else(|| {
                ClientError::Usage("an archive destination can be written once".into())
            })?;
            if w.has(&name) {
                return Ok(BlobOutcome::AlreadyThere);
            }
            progress.blob_started(&desc.digest, desc.size);
            w.begin_file(&name, desc.size).await?;
            let mut hasher = desc.digest.algorithm().hasher();
            let mut stream = source.blob_stream(desc, 0).await?;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| ClientError::Connect(format!("reading: {e}")))?;
                hasher.update(&chunk);
                w.write(&chunk).await?;
                progress.blob_advanced(&desc.digest, chunk.len() as u64);
            }
            w.end_file().await?;
            let got = hasher.finish();
            if got != desc.digest {
                return Err(ClientError::Integrity(format!(
                    "blob {} arrived with digest {got}",
                    desc.digest
                )));
            }
            Ok(BlobOutcome::Copied)
        }
    }
}

fn blob_name(digest: &Digest) -> String {
    format!("blobs/{}/{}", digest.algorithm().as_str(), digest.hex())
}

/// Streams one blob into a registry upload session, resuming from the registry's offset
/// after a broken connection. The registry checks the digest when the session completes.
async fn upload(
    source: &Source,
    registry: &Registry,
    repo: &str,
    desc: &Descriptor,
    session: Option<String>,
    progress: &Arc<dyn Progress>,
) -> Result<()> {
    let mut url = match session {
        Some(loc) if loc.starts_with("http") => loc,
        _ => registry.start_upload(repo).await?,
    };
    let mut offset = 0u64;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let stream = source.blob_stream(desc, offset).await?;
        let p = progress.clone();
        let digest = desc.digest.clone();
        let counted = stream.inspect(move |r| {
            if let Ok(b) = r {
                p.blob_advanced(&digest, b.len() as u64);
            }
        });
        match registry
            .patch_upload(repo, &url, offset, desc.size - offset, counted)
            .await
        {
            Ok(next) => {
                url = next;
                break;
            }
            // A broken connection, a registry hiccup, or a token that expired during a long
            // upload: ask where the session stands (which renews the token) and go on.
            Err(
                e @ (ClientError::Connect(_) | ClientError::Registry(_) | ClientError::Auth(_)),
            ) if attempt < UPLOAD_ATTEMPTS => {
                tracing::warn!("upload of {} interrupted ({e}); resuming", desc.digest);
                match registry.upload_offset(repo, &url).await {
                    Ok(o) if o <= desc.size => {
                        offset = o;
                        progress.blob_reset(&desc.digest, offset);
                    }
                    _ => return Err(e),
                }
            }
            Err(e) => return Err(e),
        }
    }
    registry.finish_upload(repo, &url, &desc.digest).await
}

async fn write_manifest(
    dest: &Destination,
    m: &FetchedManifest,
    parsed: &kura_oci::ParsedManifest,
    is_root: bool,
) -> Result<()> {
    match dest {
        Destination::Registry { registry, image } => {
            let reference = match (is_root, image.tag_or_default()) {
                (true, Some(tag)) if image.digest.is_none() => tag,
                _ => m.digest.to_string(),
            };
            let got = registry
                .put_manifest(&image.repository, &reference, &m.media_type, &m.bytes)
                .await?;
            if got != m.digest {
                return Err(ClientError::Integrity(format!(
                    "manifest stored as {got}, expected {}",
                    m.digest
                )));
            }
            Ok(())
        }
        Destination::Layout { layout, tag } => {
            let desc = m.descriptor();
            if !layout.has_blob(&desc.digest, desc.size).await {
                layout.write_blob(&desc, &m.bytes).await?;
            }
            if is_root {
                let mut root = desc;
                if let Some(t) = tag {
                    let mut ann = serde_json::Map::new();
                    ann.insert(REF_NAME.into(), serde_json::Value::String(t.clone()));
                    root.annotations = Some(ann);
                }
                layout.set_tag(tag.as_deref(), root).await?;
            }
            Ok(())
        }
        Destination::Archive {
            writer,
            repo_tag,
            images,
        } => {
            let config = parsed.blobs.first().ok_or_else(|| {
                ClientError::Format(format!("manifest {} has no config", m.digest))
            })?;
            let manifest_name = blob_name(&m.digest);
            let mut guard = writer.lock().await;
            let w = guard.as_mut().ok_or_else(|| {
                ClientError::Usage("an archive destination can be written once".into())
            })?;
            if !w.has(&manifest_name) {
                w.add_bytes(&manifest_name, &m.bytes).await?;
            }
            if is_root {
                // The Docker 25+ layout: an OCI layout inside, plus docker's manifest.json.
                let mut entry = serde_json::json!({
                    "mediaType": m.media_type, "digest": m.digest.to_string(),
                    "size": m.bytes.len(),
                });
                if let Some(t) = repo_tag {
                    entry["annotations"] = serde_json::json!({
                        "io.containerd.image.name": t,
                        REF_NAME: t.rsplit_once(':').map(|(_, tag)| tag).unwrap_or(t),
                    });
                }
                let index = serde_json::json!({
                    "schemaVersion": 2,
                    "mediaType": "application/vnd.oci.image.index.v1+json",
                    "manifests": [entry],
                });
                w.add_bytes("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)
                    .await?;
                w.add_bytes("index.json", &serde_json::to_vec(&index).expect("json"))
                    .await?;
                images.lock().await.push(ArchiveImage {
                    config: blob_name(&config.digest),
                    repo_tags: repo_tag.iter().cloned().collect(),
                    layers: parsed.blobs[1..]
                        .iter()
                        .map(|d| blob_name(&d.digest))
                        .collect(),
                });
            }
            Ok(())
        }
    }
}

/// A layout directory or archive path from a [`crate::Location`], opened as a source.
pub async fn open_source(
    location: &crate::Location,
    registry: impl FnOnce(&ImageRef) -> Result<Arc<Registry>>,
) -> Result<Source> {
    Ok(match location {
        crate::Location::Registry(image) => Source::Registry {
            registry: registry(image)?,
            image: image.clone(),
        },
        crate::Location::OciLayout { path, tag } => Source::Layout {
            layout: OciLayout::open(path).await?,
            tag: tag.clone(),
        },
        crate::Location::DockerArchive { path, reference } => {
            Source::Archive(ArchiveSource::open(path, reference.as_deref()).await?)
        }
    })
}

/// Opens a destination; `repo_tag` names the image inside a docker-archive.
pub async fn open_destination(
    location: &crate::Location,
    registry: impl FnOnce(&ImageRef) -> Result<Arc<Registry>>,
    repo_tag: Option<String>,
) -> Result<Destination> {
    Ok(match location {
        crate::Location::Registry(image) => Destination::Registry {
            registry: registry(image)?,
            image: image.clone(),
        },
        crate::Location::OciLayout { path, tag } => Destination::Layout {
            layout: OciLayout::create(path).await?,
            tag: tag.clone(),
        },
        crate::Location::DockerArchive { path, reference } => {
            Destination::archive(path, reference.clone().or(repo_tag)).await?
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms() {
        let p = Platform::parse("linux/arm64/v8").unwrap();
        assert_eq!(p.to_string(), "linux/arm64/v8");
        assert!(Platform::parse("linux").is_err());
        let entries = index_entries(
            br#"{"manifests":[
              {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","size":1,"platform":{"os":"linux","architecture":"amd64"}},
              {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb","size":1,"platform":{"os":"linux","architecture":"arm64","variant":"v8"}}]}"#,
        )
        .unwrap();
        let arm = select_platform(&entries, &Platform::parse("linux/arm64").unwrap()).unwrap();
        assert!(arm.descriptor.digest.hex().starts_with('b'));
        let err = select_platform(&entries, &Platform::parse("windows/amd64").unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("linux/arm64/v8"), "{err}");
    }
}
