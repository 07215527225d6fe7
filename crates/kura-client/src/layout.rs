//! OCI image layout directories (image-spec `image-layout.md`): the `oci-layout` marker,
//! `index.json` and its tags, and content-addressed blobs under `blobs/<alg>/<hex>`.
//!
//! Tags are the `org.opencontainers.image.ref.name` annotation on `index.json` entries, the way
//! skopeo (`oci:DIR:TAG`) and umoci store them. Blobs are written through a temporary file and
//! renamed into place once their digest checked out, so a blob path never holds partial or wrong
//! content, and `index.json` is replaced atomically the same way.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use kura_oci::{Descriptor, Digest, Hasher};
use serde_json::{Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::{ClientError, Result};

/// The annotation that carries a tag on an `index.json` entry.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Manifests, configs and index files are read whole; anything bigger than this is not one.
pub(crate) const MAX_METADATA_SIZE: u64 = 16 << 20;

const LAYOUT_FILE: &str = "oci-layout";
const INDEX_FILE: &str = "index.json";
const LAYOUT_VERSION: &str = "1.0.0";
const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";

/// An OCI image layout directory.
#[derive(Debug)]
pub struct OciLayout {
    root: PathBuf,
    // Serialises read-modify-write cycles of index.json within this process: layers are copied
    // in parallel and two tags may be set at once.
    index_lock: tokio::sync::Mutex<()>,
}

impl OciLayout {
    /// Opens an existing layout, checking its marker file and its index.
    pub async fn open(root: &Path) -> Result<OciLayout> {
        let marker = root.join(LAYOUT_FILE);
        let bytes = match read_limited(&marker, MAX_METADATA_SIZE).await {
            Ok(b) => b,
            Err(ClientError::NotFound(_)) => {
                return Err(ClientError::Format(format!(
                    "{} is not an OCI image layout (no {LAYOUT_FILE} file)",
                    root.display()
                )));
            }
            Err(e) => return Err(e),
        };
        check_marker(&marker, &bytes)?;
        let layout = OciLayout {
            root: root.to_path_buf(),
            index_lock: tokio::sync::Mutex::new(()),
        };
        layout.read_index().await?;
        Ok(layout)
    }

    /// Makes `root` a layout (creating directories as needed) or opens it if it already is one.
    pub async fn create(root: &Path) -> Result<OciLayout> {
        tokio::fs::create_dir_all(root.join("blobs"))
            .await
            .map_err(ClientError::io(format!("creating {}", root.display())))?;
        let marker = root.join(LAYOUT_FILE);
        if !exists(&marker).await? {
            let body = serde_json::json!({ "imageLayoutVersion": LAYOUT_VERSION });
            write_atomically(&marker, &to_json(&body)).await?;
        }
        let index = root.join(INDEX_FILE);
        if !exists(&index).await? {
            let body = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": INDEX_MEDIA_TYPE,
                "manifests": [],
            });
            write_atomically(&index, &to_json(&body)).await?;
        }
        OciLayout::open(root).await
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The entries of `index.json`.
    pub async fn index(&self) -> Result<Vec<Descriptor>> {
        let (_, manifests) = self.read_index().await?;
        Ok(manifests)
    }

    /// The entry tagged `tag`, or with no tag the layout's only entry.
    pub async fn resolve(&self, tag: Option<&str>) -> Result<Descriptor> {
        let manifests = self.index().await?;
        match tag {
            Some(tag) => manifests
                .iter()
                .find(|d| ref_name(d) == Some(tag))
                .cloned()
                .ok_or_else(|| {
                    let tags: Vec<&str> = manifests.iter().filter_map(ref_name).collect();
                    let present = if tags.is_empty() {
                        "it has no tags".to_string()
                    } else {
                        format!("tags present: {}", tags.join(", "))
                    };
                    ClientError::NotFound(format!(
                        "tag {tag:?} not found in OCI layout {} ({present})",
                        self.root.display()
                    ))
                }),
            None => match manifests.as_slice() {
                [] => Err(ClientError::NotFound(format!(
                    "OCI layout {} has no images",
                    self.root.display()
                ))),
                [only] => Ok(only.clone()),
                several => {
                    let names: Vec<String> = several
                        .iter()
                        .map(|d| match ref_name(d) {
                            Some(t) => t.to_string(),
                            None => format!("untagged {}", d.digest),
                        })
                        .collect();
                    Err(ClientError::Usage(format!(
                        "OCI layout {} holds {} images, name one with oci:DIR:TAG ({})",
                        self.root.display(),
                        several.len(),
                        names.join(", ")
                    )))
                }
            },
        }
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(digest.algorithm().as_str())
            .join(digest.hex())
    }

    /// Whether the blob is present with the expected size. The content is not re-hashed: blobs
    /// only get their name after their digest was checked.
    pub async fn has_blob(&self, digest: &Digest, size: u64) -> bool {
        match tokio::fs::metadata(self.blob_path(digest)).await {
            Ok(m) => m.is_file() && m.len() == size,
            Err(_) => false,
        }
    }

    /// Reads a small blob (manifest, config), verifying its size and digest.
    pub async fn read_blob(&self, desc: &Descriptor) -> Result<Vec<u8>> {
        if desc.size > MAX_METADATA_SIZE {
            return Err(ClientError::Format(format!(
                "blob {} is {} bytes, too big for a manifest or config",
                desc.digest, desc.size
            )));
        }
        let path = self.blob_path(&desc.digest);
        let bytes = read_limited(&path, desc.size).await.map_err(|e| match e {
            ClientError::NotFound(_) => ClientError::NotFound(format!(
                "blob {} is missing from OCI layout {}",
                desc.digest,
                self.root.display()
            )),
            ClientError::Format(_) => ClientError::Integrity(format!(
                "blob {} in OCI layout {} is longer than {} bytes",
                desc.digest,
                self.root.display(),
                desc.size
            )),
            e => e,
        })?;
        if bytes.len() as u64 != desc.size {
            return Err(ClientError::Integrity(format!(
                "blob {} in OCI layout {} is {} bytes, expected {}",
                desc.digest,
                self.root.display(),
                bytes.len(),
                desc.size
            )));
        }
        let got = desc.digest.algorithm().digest_of(&bytes);
        if got != desc.digest {
            return Err(ClientError::Integrity(format!(
                "blob {} in OCI layout {} has digest {got}",
                desc.digest,
                self.root.display()
            )));
        }
        Ok(bytes)
    }

    /// Opens a blob for streaming. Only the length is checked here; the reader hashes the stream.
    pub async fn open_blob(&self, desc: &Descriptor) -> Result<tokio::fs::File> {
        let path = self.blob_path(&desc.digest);
        let file = tokio::fs::File::open(&path).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ClientError::NotFound(format!(
                    "blob {} is missing from OCI layout {}",
                    desc.digest,
                    self.root.display()
                ))
            } else {
                ClientError::io(format!("opening {}", path.display()))(e)
            }
        })?;
        let len = file
            .metadata()
            .await
            .map_err(ClientError::io(format!("reading {}", path.display())))?
            .len();
        if len != desc.size {
            return Err(ClientError::Integrity(format!(
                "blob {} in OCI layout {} is {len} bytes, expected {}",
                desc.digest,
                self.root.display(),
                desc.size
            )));
        }
        Ok(file)
    }

    /// Stores a blob held in memory, after checking it against `desc`.
    pub async fn write_blob(&self, desc: &Descriptor, bytes: &[u8]) -> Result<()> {
        // Checked before anything touches the disk; finish() checks again, which is cheap.
        if bytes.len() as u64 != desc.size {
            return Err(ClientError::Integrity(format!(
                "blob {} is {} bytes, expected {}",
                desc.digest,
                bytes.len(),
                desc.size
            )));
        }
        let mut writer = self.blob_writer(desc).await?;
        writer.write(bytes).await?;
        writer.finish().await
    }

    /// Starts writing the blob `desc` describes; it appears under its name on `finish`.
    pub async fn blob_writer(&self, desc: &Descriptor) -> Result<BlobWriter> {
        let dest = self.blob_path(&desc.digest);
        let dir = dest
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.root.clone());
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(ClientError::io(format!("creating {}", dir.display())))?;
        let (file, tmp) = create_temp(&dir, desc.digest.hex()).await?;
        Ok(BlobWriter {
            file: Some(file),
            tmp,
            dest,
            hasher: Some(desc.digest.algorithm().hasher()),
            digest: desc.digest.clone(),
            size: desc.size,
            written: 0,
            done: false,
        })
    }

    /// Records `desc` in `index.json`, under `tag` or untagged.
    pub async fn set_tag(&self, tag: Option<&str>, mut desc: Descriptor) -> Result<()> {
        let _guard = self.index_lock.lock().await;
        let (mut doc, mut manifests) = self.read_index().await?;
        let mut annotations = desc.annotations.take().unwrap_or_default();
        match tag {
            Some(tag) => {
                // An untagged entry for the same manifest would make the layout look like it
                // holds two images, so the tagged entry replaces it.
                manifests.retain(|d| {
                    let t = ref_name(d);
                    t != Some(tag) && !(t.is_none() && d.digest == desc.digest)
                });
                annotations.insert(REF_NAME.to_string(), Value::String(tag.to_string()));
                desc.annotations = Some(annotations);
                manifests.push(desc);
            }
            None => {
                if manifests.iter().any(|d| d.digest == desc.digest) {
                    return Ok(());
                }
                // A stray ref name would tag the entry behind the back of the tag rules above.
                annotations.remove(REF_NAME);
                desc.annotations = (!annotations.is_empty()).then_some(annotations);
                manifests.push(desc);
            }
        }
        let manifests = serde_json::to_value(&manifests)
            .map_err(|e| ClientError::Format(format!("encoding index.json: {e}")))?;
        doc.insert("manifests".to_string(), manifests);
        write_atomically(&self.root.join(INDEX_FILE), &to_json(&Value::Object(doc))).await
    }

    /// The whole index document (other fields are kept on rewrite) and its entries.
    async fn read_index(&self) -> Result<(Map<String, Value>, Vec<Descriptor>)> {
        let path = self.root.join(INDEX_FILE);
        let bytes = read_limited(&path, MAX_METADATA_SIZE)
            .await
            .map_err(|e| match e {
                ClientError::NotFound(_) => ClientError::Format(format!(
                    "OCI layout {} has no {INDEX_FILE}",
                    self.root.display()
                )),
                e => e,
            })?;
        let bad = |why: String| ClientError::Format(format!("{}: {why}", path.display()));
        let mut doc = match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(doc)) => doc,
            Ok(_) => return Err(bad("not a JSON object".into())),
            Err(e) => return Err(bad(e.to_string())),
        };
        if doc.get("schemaVersion").and_then(Value::as_u64) != Some(2) {
            return Err(bad("schemaVersion is not 2".into()));
        }
        let manifests = match doc.remove("manifests") {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => serde_json::from_value(v).map_err(|e| bad(format!("manifests: {e}")))?,
        };
        Ok((doc, manifests))
    }
}

/// A blob being written into a layout: hashed as it goes, renamed into place by `finish`.
pub struct BlobWriter {
    file: Option<tokio::fs::File>,
    tmp: PathBuf,
    dest: PathBuf,
    hasher: Option<Hasher>,
    digest: Digest,
    size: u64,
    written: u64,
    done: bool,
}

impl BlobWriter {
    pub async fn write(&mut self, chunk: &[u8]) -> Result<()> {
        if self.written + chunk.len() as u64 > self.size {
            return Err(ClientError::Integrity(format!(
                "blob {} is longer than its {} bytes",
                self.digest, self.size
            )));
        }
        let (Some(file), Some(hasher)) = (self.file.as_mut(), self.hasher.as_mut()) else {
            return Err(ClientError::Usage(format!(
                "blob {} was already finished",
                self.digest
            )));
        };
        hasher.update(chunk);
        file.write_all(chunk)
            .await
            .map_err(ClientError::io(format!("writing {}", self.tmp.display())))?;
        self.written += chunk.len() as u64;
        Ok(())
    }

    /// Checks size and digest, makes the data durable, then gives the blob its name. On error the
    /// temporary file is removed (by `Drop`).
    pub async fn finish(mut self) -> Result<()> {
        let (Some(mut file), Some(hasher)) = (self.file.take(), self.hasher.take()) else {
            return Err(ClientError::Usage(format!(
                "blob {} was already finished",
                self.digest
            )));
        };
        if self.written != self.size {
            return Err(ClientError::Integrity(format!(
                "blob {} is {} bytes, expected {}",
                self.digest, self.written, self.size
            )));
        }
        let got = hasher.finish();
        if got != self.digest {
            return Err(ClientError::Integrity(format!(
                "blob {} arrived with digest {got}",
                self.digest
            )));
        }
        let ctx = || format!("writing {}", self.tmp.display());
        file.flush().await.map_err(ClientError::io(ctx()))?;
        file.sync_all().await.map_err(ClientError::io(ctx()))?;
        drop(file);
        // A parallel writer of the same blob may have renamed first: replacing its identical file
        // is harmless.
        tokio::fs::rename(&self.tmp, &self.dest)
            .await
            .map_err(ClientError::io(format!(
                "moving {} into place",
                self.dest.display()
            )))?;
        self.done = true;
        Ok(())
    }
}

impl std::fmt::Debug for BlobWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobWriter")
            .field("dest", &self.dest)
            .field("size", &self.size)
            .field("written", &self.written)
            .finish_non_exhaustive()
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

fn ref_name(desc: &Descriptor) -> Option<&str> {
    desc.annotations.as_ref()?.get(REF_NAME)?.as_str()
}

fn check_marker(path: &Path, bytes: &[u8]) -> Result<()> {
    let bad = |why: String| ClientError::Format(format!("{}: {why}", path.display()));
    let doc: Value = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    match doc.get("imageLayoutVersion").and_then(Value::as_str) {
        Some(LAYOUT_VERSION) => Ok(()),
        Some(v) => Err(bad(format!(
            "unsupported imageLayoutVersion {v:?} (only {LAYOUT_VERSION} is known)"
        ))),
        None => Err(bad("no imageLayoutVersion".into())),
    }
}

fn to_json(v: &Value) -> Vec<u8> {
    // A Value always serialises.
    serde_json::to_vec(v).unwrap_or_default()
}

async fn exists(path: &Path) -> Result<bool> {
    tokio::fs::try_exists(path)
        .await
        .map_err(ClientError::io(format!("checking {}", path.display())))
}

/// Reads a whole file of at most `max` bytes: `NotFound` if it does not exist, `Format` if it is
/// longer.
pub(crate) async fn read_limited(path: &Path, max: u64) -> Result<Vec<u8>> {
    let file = tokio::fs::File::open(path).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ClientError::NotFound(format!("{} does not exist", path.display()))
        } else {
            ClientError::io(format!("opening {}", path.display()))(e)
        }
    })?;
    let mut buf = Vec::new();
    // Reading through take() rather than trusting the length: the file may still be growing.
    file.take(max.saturating_add(1))
        .read_to_end(&mut buf)
        .await
        .map_err(ClientError::io(format!("reading {}", path.display())))?;
    if buf.len() as u64 > max {
        return Err(ClientError::Format(format!(
            "{} is larger than {max} bytes",
            path.display()
        )));
    }
    Ok(buf)
}

/// Creates a new, uniquely named file in `dir`, for writing before an atomic rename. The name
/// starts with a dot so that it can never be mistaken for a blob.
pub(crate) async fn create_temp(dir: &Path, stem: &str) -> Result<(tokio::fs::File, PathBuf)> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let pid = std::process::id();
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = dir.join(format!(".{stem}.tmp-{pid}-{n}-{nanos}"));
        match tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await
        {
            Ok(file) => return Ok((file, path)),
            // Left behind by a crashed process that had the same pid: pick another name.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(ClientError::io(format!("creating {}", path.display()))(e)),
        }
    }
}

/// Replaces `path` with `data` so that readers see the old or the new content, never a mix.
async fn write_atomically(path: &Path, data: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let stem = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (mut file, tmp) = create_temp(dir, &stem).await?;
    let result = async {
        let ctx = || format!("writing {}", tmp.display());
        file.write_all(data).await.map_err(ClientError::io(ctx()))?;
        file.flush().await.map_err(ClientError::io(ctx()))?;
        file.sync_all().await.map_err(ClientError::io(ctx()))?;
        drop(file);
        tokio::fs::rename(&tmp, path)
            .await
            .map_err(ClientError::io(format!("replacing {}", path.display())))
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use kura_oci::Algorithm;

    fn desc(media_type: &str, data: &[u8]) -> Descriptor {
        Descriptor {
            media_type: media_type.to_string(),
            digest: Algorithm::Sha256.digest_of(data),
            size: data.len() as u64,
            urls: None,
            artifact_type: None,
            annotations: None,
        }
    }

    const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

    fn temp_files(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                } else if e.file_name().to_string_lossy().contains(".tmp-") {
                    out.push(e.path().display().to_string());
                }
            }
        }
        out
    }

    #[tokio::test]
    async fn create_write_resolve_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("a/b/layout");
        let layout = OciLayout::create(&root).await.unwrap();
        assert_eq!(layout.root(), root);
        assert!(layout.index().await.unwrap().is_empty());
        let marker = std::fs::read_to_string(root.join("oci-layout")).unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&marker).unwrap(),
            serde_json::json!({"imageLayoutVersion": "1.0.0"})
        );
        assert!(matches!(
            layout.resolve(None).await,
            Err(ClientError::NotFound(_))
        ));

        let m1 = br#"{"schemaVersion":2,"n":1}"#;
        let d1 = desc(MANIFEST, m1);
        assert!(!layout.has_blob(&d1.digest, d1.size).await);
        layout.write_blob(&d1, m1).await.unwrap();
        assert!(layout.has_blob(&d1.digest, d1.size).await);
        assert!(!layout.has_blob(&d1.digest, d1.size + 1).await);
        assert_eq!(
            layout.blob_path(&d1.digest),
            root.join("blobs/sha256").join(d1.digest.hex())
        );
        assert_eq!(layout.read_blob(&d1).await.unwrap(), m1);

        let mut with_ann = d1.clone();
        let mut ann = Map::new();
        ann.insert("keep.me".into(), Value::String("yes".into()));
        with_ann.annotations = Some(ann);
        layout.set_tag(Some("v1"), with_ann).await.unwrap();
        let got = layout.resolve(Some("v1")).await.unwrap();
        assert_eq!(got.digest, d1.digest);
        let ann = got.annotations.unwrap();
        assert_eq!(ann["keep.me"], "yes");
        assert_eq!(ann[REF_NAME], "v1");
        assert_eq!(layout.resolve(None).await.unwrap().digest, d1.digest);

        // Retagging moves the tag to the new manifest.
        let m2 = br#"{"schemaVersion":2,"n":2}"#;
        let d2 = desc(MANIFEST, m2);
        layout.write_blob(&d2, m2).await.unwrap();
        layout.set_tag(Some("v1"), d2.clone()).await.unwrap();
        let index = layout.index().await.unwrap();
        assert_eq!(index.len(), 1);
        assert_eq!(index[0].digest, d2.digest);

        // Untagged additions are deduplicated by digest.
        layout.set_tag(None, d2.clone()).await.unwrap();
        assert_eq!(layout.index().await.unwrap().len(), 1);
        layout.set_tag(None, d1.clone()).await.unwrap();
        assert_eq!(layout.index().await.unwrap().len(), 2);

        let err = layout.resolve(Some("nope")).await.unwrap_err();
        assert!(
            matches!(err, ClientError::NotFound(ref m) if m.contains("v1")),
            "{err}"
        );
        assert!(temp_files(&root).is_empty());

        let mut f = layout.open_blob(&d2).await.unwrap();
        let mut back = Vec::new();
        f.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, m2);
    }

    #[tokio::test]
    async fn ambiguous_resolve_is_a_usage_error() {
        let dir = tempfile::tempdir().unwrap();
        let layout = OciLayout::create(dir.path()).await.unwrap();
        layout
            .set_tag(Some("one"), desc(MANIFEST, b"1"))
            .await
            .unwrap();
        layout
            .set_tag(Some("two"), desc(MANIFEST, b"2"))
            .await
            .unwrap();
        let err = layout.resolve(None).await.unwrap_err();
        match err {
            ClientError::Usage(m) => assert!(m.contains("one") && m.contains("two"), "{m}"),
            e => panic!("unexpected {e:?}"),
        }
        assert_eq!(
            layout.resolve(Some("two")).await.unwrap().digest,
            Algorithm::Sha256.digest_of(b"2")
        );
    }

    #[tokio::test]
    async fn digest_and_size_mismatches_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let layout = OciLayout::create(dir.path()).await.unwrap();
        let good = desc(MANIFEST, b"hello");
        let err = layout.write_blob(&good, b"hellO").await.unwrap_err();
        assert!(matches!(err, ClientError::Integrity(_)), "{err}");
        let err = layout.write_blob(&good, b"hello!").await.unwrap_err();
        assert!(matches!(err, ClientError::Integrity(_)), "{err}");
        assert!(!layout.has_blob(&good.digest, good.size).await);

        // A streamed write that overruns or falls short never reaches the blob path.
        let mut w = layout.blob_writer(&good).await.unwrap();
        w.write(b"hel").await.unwrap();
        assert!(matches!(
            w.write(b"lo!!").await,
            Err(ClientError::Integrity(_))
        ));
        assert!(matches!(w.finish().await, Err(ClientError::Integrity(_))));
        let w = layout.blob_writer(&good).await.unwrap();
        drop(w);
        assert!(temp_files(dir.path()).is_empty());
        assert!(!layout.blob_path(&good.digest).exists());

        // A corrupted blob on disk is caught on read.
        std::fs::write(layout.blob_path(&good.digest), b"jello").unwrap();
        assert!(matches!(
            layout.read_blob(&good).await,
            Err(ClientError::Integrity(_))
        ));
        std::fs::write(layout.blob_path(&good.digest), b"hello, world").unwrap();
        assert!(matches!(
            layout.read_blob(&good).await,
            Err(ClientError::Integrity(_))
        ));
        assert!(matches!(
            layout.open_blob(&good).await,
            Err(ClientError::Integrity(_))
        ));
        let missing = desc(MANIFEST, b"absent");
        assert!(matches!(
            layout.read_blob(&missing).await,
            Err(ClientError::NotFound(_))
        ));
        let mut huge = good.clone();
        huge.size = MAX_METADATA_SIZE + 1;
        assert!(matches!(
            layout.read_blob(&huge).await,
            Err(ClientError::Format(_))
        ));
    }

    #[tokio::test]
    async fn parallel_writers_of_one_blob() {
        let dir = tempfile::tempdir().unwrap();
        let layout = OciLayout::create(dir.path()).await.unwrap();
        let data = vec![7u8; 100_000];
        let d = desc("application/octet-stream", &data);
        let mut a = layout.blob_writer(&d).await.unwrap();
        let mut b = layout.blob_writer(&d).await.unwrap();
        for chunk in data.chunks(4096) {
            a.write(chunk).await.unwrap();
            b.write(chunk).await.unwrap();
        }
        a.finish().await.unwrap();
        b.finish().await.unwrap();
        assert!(layout.has_blob(&d.digest, d.size).await);
        assert!(temp_files(dir.path()).is_empty());
    }

    #[tokio::test]
    async fn reopen_keeps_entries_and_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let d = desc(MANIFEST, b"{}");
        {
            let layout = OciLayout::create(dir.path()).await.unwrap();
            layout.write_blob(&d, b"{}").await.unwrap();
            layout.set_tag(Some("keep"), d.clone()).await.unwrap();
        }
        // Extra top-level fields of index.json survive a rewrite.
        let index_path = dir.path().join("index.json");
        let mut doc: Value = serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
        doc["annotations"] = serde_json::json!({"x": "y"});
        std::fs::write(&index_path, serde_json::to_vec(&doc).unwrap()).unwrap();

        let layout = OciLayout::create(dir.path()).await.unwrap();
        assert_eq!(layout.resolve(Some("keep")).await.unwrap().digest, d.digest);
        assert!(layout.has_blob(&d.digest, d.size).await);
        layout
            .set_tag(Some("other"), desc(MANIFEST, b"[]"))
            .await
            .unwrap();
        let layout = OciLayout::open(dir.path()).await.unwrap();
        assert_eq!(layout.index().await.unwrap().len(), 2);
        let doc: Value = serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
        assert_eq!(doc["annotations"]["x"], "y");
        assert_eq!(doc["mediaType"], INDEX_MEDIA_TYPE);
    }

    #[tokio::test]
    async fn open_refuses_non_layouts() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            OciLayout::open(dir.path()).await,
            Err(ClientError::Format(_))
        ));
        std::fs::write(
            dir.path().join("oci-layout"),
            br#"{"imageLayoutVersion":"2.0.0"}"#,
        )
        .unwrap();
        assert!(matches!(
            OciLayout::open(dir.path()).await,
            Err(ClientError::Format(_))
        ));
        std::fs::write(
            dir.path().join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();
        // No index.json.
        assert!(matches!(
            OciLayout::open(dir.path()).await,
            Err(ClientError::Format(_))
        ));
        std::fs::write(dir.path().join("index.json"), b"{\"schemaVersion\":2,").unwrap();
        assert!(matches!(
            OciLayout::open(dir.path()).await,
            Err(ClientError::Format(_))
        ));
        std::fs::write(
            dir.path().join("index.json"),
            br#"{"schemaVersion":2,"manifests":[{"digest":"nope"}]}"#,
        )
        .unwrap();
        assert!(matches!(
            OciLayout::open(dir.path()).await,
            Err(ClientError::Format(_))
        ));
    }
}
