//! docker-archive tars, the format of `docker save` and `docker load`: reading them in place and
//! writing them entry by entry.
//!
//! Both layouts `docker save` has produced are read: the legacy one (`<id>/layer.tar`, duplicate
//! layers stored as links to another entry) and the Docker 25+ one, where `manifest.json` points
//! into `blobs/sha256/` next to an OCI `index.json`. Either way `manifest.json` is the source of
//! truth. Layers are never loaded whole: the tar is indexed once, then each file is read straight
//! from its offset in the archive.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::error::{ClientError, Result};
use crate::layout::{MAX_METADATA_SIZE, create_temp};

const MANIFEST_FILE: &str = "manifest.json";
const BLOCK: u64 = 512;
// Symlink chains longer than this are loops for all practical purposes.
const MAX_LINK_HOPS: usize = 32;

/// One image of an archive, as `manifest.json` lists it. Names are paths inside the tar.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct ArchiveImage {
    pub config: String,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub repo_tags: Vec<String>,
    pub layers: Vec<String>,
}

// `docker save` of an image saved by ID writes `"RepoTags": null`.
fn null_as_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
}

#[derive(Debug, Clone, Copy)]
struct FileEntry {
    offset: u64,
    size: u64,
}

/// A docker-archive tar opened for reading.
#[derive(Debug)]
pub struct DockerArchive {
    path: PathBuf,
    files: HashMap<String, FileEntry>,
    images: Vec<ArchiveImage>,
}

impl DockerArchive {
    /// Indexes the tar and reads its `manifest.json`.
    pub async fn open(path: &Path) -> Result<DockerArchive> {
        let owned = path.to_path_buf();
        let files = tokio::task::spawn_blocking(move || index_tar(&owned))
            .await
            .map_err(|e| ClientError::Format(format!("indexing {}: {e}", path.display())))??;
        let mut archive = DockerArchive {
            path: path.to_path_buf(),
            files,
            images: Vec::new(),
        };
        if !archive.files.contains_key(MANIFEST_FILE) {
            return Err(ClientError::Format(format!(
                "{} is not a docker archive (it has no {MANIFEST_FILE})",
                path.display()
            )));
        }
        let bytes = archive.read_file(MANIFEST_FILE).await?;
        let bad = |why: String| {
            ClientError::Format(format!("{MANIFEST_FILE} in {}: {why}", path.display()))
        };
        let mut images: Vec<ArchiveImage> =
            serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        for image in &mut images {
            for name in std::iter::once(&mut image.config).chain(image.layers.iter_mut()) {
                match normalise(name) {
                    Some(n) if archive.files.contains_key(&n) => *name = n,
                    _ => return Err(bad(format!("names {name:?}, which is not in the archive"))),
                }
            }
        }
        archive.images = images;
        Ok(archive)
    }

    pub fn images(&self) -> &[ArchiveImage] {
        &self.images
    }

    /// Picks an image: the only one, `@N` (0-based), or one whose `RepoTags` hold `name:tag`.
    pub fn select(&self, reference: Option<&str>) -> Result<&ArchiveImage> {
        let Some(reference) = reference else {
            return match self.images.as_slice() {
                [] => Err(ClientError::NotFound(format!(
                    "{} holds no images",
                    self.path.display()
                ))),
                [only] => Ok(only),
                several => Err(ClientError::Usage(format!(
                    "{} holds {} images, pick one with docker-archive:FILE:NAME:TAG or :@N ({})",
                    self.path.display(),
                    several.len(),
                    self.describe_images()
                ))),
            };
        };
        if let Some(n) = reference.strip_prefix('@') {
            let n: usize = n.parse().map_err(|_| {
                ClientError::Usage(format!(
                    "{reference:?}: an image index is @ followed by a number"
                ))
            })?;
            return self.images.get(n).ok_or_else(|| {
                ClientError::NotFound(format!(
                    "{} holds {} images, there is no @{n}",
                    self.path.display(),
                    self.images.len()
                ))
            });
        }
        let wanted = normalise_ref(reference);
        self.images
            .iter()
            .find(|i| i.repo_tags.iter().any(|t| normalise_ref(t) == wanted))
            .ok_or_else(|| {
                ClientError::NotFound(format!(
                    "no image {reference} in {} ({})",
                    self.path.display(),
                    self.describe_images()
                ))
            })
    }

    fn describe_images(&self) -> String {
        if self.images.is_empty() {
            return "it holds no images".into();
        }
        let names: Vec<String> = self
            .images
            .iter()
            .enumerate()
            .map(|(i, image)| match image.repo_tags.as_slice() {
                [] => format!("@{i}"),
                tags => format!("@{i}: {}", tags.join(" ")),
            })
            .collect();
        format!("images: {}", names.join(", "))
    }

    fn entry(&self, name: &str) -> Result<FileEntry> {
        normalise(name)
            .and_then(|n| self.files.get(&n).copied())
            .ok_or_else(|| {
                ClientError::NotFound(format!("no file {name:?} in {}", self.path.display()))
            })
    }

    pub fn file_size(&self, name: &str) -> Result<u64> {
        Ok(self.entry(name)?.size)
    }

    /// Reads a small file (manifest, config) whole.
    pub async fn read_file(&self, name: &str) -> Result<Vec<u8>> {
        let size = self.file_size(name)?;
        if size > MAX_METADATA_SIZE {
            return Err(ClientError::Format(format!(
                "{name} in {} is {size} bytes, too big for a manifest or config",
                self.path.display()
            )));
        }
        let mut buf = Vec::with_capacity(size as usize);
        self.open_file(name)
            .await?
            .read_to_end(&mut buf)
            .await
            .map_err(ClientError::io(format!(
                "reading {name} in {}",
                self.path.display()
            )))?;
        if buf.len() as u64 != size {
            return Err(ClientError::Format(format!(
                "{} is truncated inside {name}",
                self.path.display()
            )));
        }
        Ok(buf)
    }

    /// A reader over one file of the archive, read in place.
    pub async fn open_file(&self, name: &str) -> Result<tokio::io::Take<tokio::fs::File>> {
        let entry = self.entry(name)?;
        let ctx = || format!("reading {}", self.path.display());
        let mut file = tokio::fs::File::open(&self.path)
            .await
            .map_err(ClientError::io(ctx()))?;
        file.seek(std::io::SeekFrom::Start(entry.offset))
            .await
            .map_err(ClientError::io(ctx()))?;
        Ok(file.take(entry.size))
    }
}

/// Maps every file of the tar to where its data lies. Links become copies of their target's
/// entry, so callers never see them.
fn index_tar(path: &Path) -> Result<HashMap<String, FileEntry>> {
    let bad = |e: std::io::Error| {
        ClientError::Format(format!("{} is not a readable tar: {e}", path.display()))
    };
    let file = std::fs::File::open(path)
        .map_err(ClientError::io(format!("opening {}", path.display())))?;
    let len = file
        .metadata()
        .map_err(ClientError::io(format!("reading {}", path.display())))?
        .len();
    let mut tar = tar::Archive::new(file);
    let mut files = HashMap::new();
    // name -> candidate target names, most likely first.
    let mut links: HashMap<String, Vec<String>> = HashMap::new();
    // Seeking over file data rather than reading it: a 10 GiB layer is skipped in one call.
    for entry in tar.entries_with_seek().map_err(bad)? {
        let entry = entry.map_err(bad)?;
        let Some(name) = normalise(&String::from_utf8_lossy(&entry.path_bytes())) else {
            continue;
        };
        let kind = entry.header().entry_type();
        if kind.is_file() || kind.is_contiguous() {
            let (offset, size) = (entry.raw_file_position(), entry.size());
            if offset.checked_add(size).is_none_or(|end| end > len) {
                return Err(ClientError::Format(format!(
                    "{} is truncated inside {name}",
                    path.display()
                )));
            }
            // Later entries win, as when tar extracts.
            links.remove(&name);
            files.insert(name, FileEntry { offset, size });
        } else if kind.is_symlink() || kind.is_hard_link() {
            let Some(target) = entry.link_name_bytes() else {
                continue;
            };
            let target = String::from_utf8_lossy(&target).into_owned();
            let dir = name.rsplit_once('/').map_or("", |(d, _)| d);
            let relative = normalise(&format!("{dir}/{target}"));
            let absolute = normalise(&target);
            // Symlinks are relative to their directory; hard links name another member of the
            // archive, but some writers make them relative too, so both are tried.
            let candidates = if kind.is_hard_link() {
                vec![absolute, relative]
            } else if target.starts_with('/') {
                vec![absolute]
            } else {
                vec![relative]
            };
            files.remove(&name);
            links.insert(name, candidates.into_iter().flatten().collect());
        }
    }
    for (name, candidates) in &links {
        if let Some(entry) = candidates
            .iter()
            .find_map(|c| follow(c, &files, &links, MAX_LINK_HOPS))
        {
            files.insert(name.clone(), entry);
        }
        // A dangling link is left out; manifest.json naming it is reported by open().
    }
    Ok(files)
}

fn follow(
    name: &str,
    files: &HashMap<String, FileEntry>,
    links: &HashMap<String, Vec<String>>,
    hops: usize,
) -> Option<FileEntry> {
    if let Some(entry) = files.get(name) {
        return Some(*entry);
    }
    let hops = hops.checked_sub(1)?;
    links
        .get(name)?
        .iter()
        .find_map(|c| follow(c, files, links, hops))
}

/// Canonical form of a path inside the archive: no `./`, no empty or `.` components, `..`
/// resolved. `None` for paths that leave the archive or name nothing.
fn normalise(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// Docker's spelling of a tagged name with its defaults filled in: `alpine:3` becomes
/// `docker.io/library/alpine:3`, `user/app` becomes `docker.io/user/app:latest`.
fn normalise_ref(reference: &str) -> String {
    let (name, suffix) = match reference.split_once('@') {
        Some((name, digest)) => (name, format!("@{digest}")),
        None => match reference.rsplit_once(':') {
            // A colon before the last slash is a registry port, not a tag.
            Some((name, tag)) if !tag.contains('/') => (name, format!(":{tag}")),
            _ => (reference, ":latest".to_string()),
        },
    };
    let (domain, path) = match name.split_once('/') {
        Some((d, rest)) if d.contains('.') || d.contains(':') || d == "localhost" => (d, rest),
        _ => ("docker.io", name),
    };
    let domain = if domain == "index.docker.io" {
        "docker.io"
    } else {
        domain
    };
    if domain == "docker.io" && !path.contains('/') {
        format!("docker.io/library/{path}{suffix}")
    } else {
        format!("{domain}/{path}{suffix}")
    }
}

struct OpenEntry {
    name: String,
    size: u64,
    written: u64,
}

/// Writes a docker-archive tar into a temporary file, renamed over the destination by `finish`.
pub struct ArchiveWriter {
    dest: PathBuf,
    tmp: PathBuf,
    // Boxed: the writer is kept in enums and mutexes, and a file plus its buffer state is big.
    out: Option<Box<tokio::io::BufWriter<tokio::fs::File>>>,
    names: HashSet<String>,
    current: Option<OpenEntry>,
    // After a failed write the tar's structure is unknown, so nothing more may be added.
    failed: bool,
    done: bool,
}

impl ArchiveWriter {
    pub async fn create(path: &Path) -> Result<ArchiveWriter> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let stem = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| ClientError::Usage(format!("{} is not a file name", path.display())))?;
        let (file, tmp) = create_temp(dir, &stem).await?;
        Ok(ArchiveWriter {
            dest: path.to_path_buf(),
            tmp,
            out: Some(Box::new(tokio::io::BufWriter::with_capacity(
                256 << 10,
                file,
            ))),
            names: HashSet::new(),
            current: None,
            failed: false,
            done: false,
        })
    }

    /// Whether a complete entry of that name was already added.
    pub fn has(&self, name: &str) -> bool {
        normalise(name).is_some_and(|n| self.names.contains(&n))
    }

    pub async fn add_bytes(&mut self, name: &str, data: &[u8]) -> Result<()> {
        self.begin_file(name, data.len() as u64).await?;
        self.write(data).await?;
        self.end_file().await
    }

    /// Starts a regular file of exactly `size` bytes. A name added twice is stored twice; the
    /// later entry wins, as when tar extracts.
    pub async fn begin_file(&mut self, name: &str, size: u64) -> Result<()> {
        self.check_usable()?;
        if let Some(open) = &self.current {
            return Err(ClientError::Usage(format!(
                "archive entry {} is still open",
                open.name
            )));
        }
        let name = normalise(name)
            .ok_or_else(|| ClientError::Usage(format!("{name:?} is not a valid archive path")))?;
        let headers = entry_headers(&name, size);
        self.put(&headers).await?;
        self.current = Some(OpenEntry {
            name,
            size,
            written: 0,
        });
        Ok(())
    }

    pub async fn write(&mut self, chunk: &[u8]) -> Result<()> {
        self.check_usable()?;
        let Some(open) = self.current.as_mut() else {
            return Err(ClientError::Usage("no archive entry is open".into()));
        };
        if open.written + chunk.len() as u64 > open.size {
            self.failed = true;
            return Err(ClientError::Integrity(format!(
                "archive entry {} is longer than its {} bytes",
                open.name, open.size
            )));
        }
        open.written += chunk.len() as u64;
        self.put(chunk).await
    }

    pub async fn end_file(&mut self) -> Result<()> {
        self.check_usable()?;
        let Some(open) = self.current.take() else {
            return Err(ClientError::Usage("no archive entry is open".into()));
        };
        if open.written != open.size {
            self.failed = true;
            return Err(ClientError::Integrity(format!(
                "archive entry {} got {} of its {} bytes",
                open.name, open.written, open.size
            )));
        }
        let pad = (BLOCK - open.size % BLOCK) % BLOCK;
        self.put(&[0u8; BLOCK as usize][..pad as usize]).await?;
        self.names.insert(open.name);
        Ok(())
    }

    /// Adds `manifest.json` for `images`, closes the tar and moves it over the destination.
    pub async fn finish(mut self, images: &[ArchiveImage]) -> Result<()> {
        self.check_usable()?;
        if let Some(open) = &self.current {
            return Err(ClientError::Usage(format!(
                "archive entry {} is still open",
                open.name
            )));
        }
        for image in images {
            for name in std::iter::once(&image.config).chain(&image.layers) {
                if !self.has(name) {
                    return Err(ClientError::Format(format!(
                        "{MANIFEST_FILE} would name {name:?}, which is not in the archive"
                    )));
                }
            }
        }
        let manifest = serde_json::to_vec(images)
            .map_err(|e| ClientError::Format(format!("encoding {MANIFEST_FILE}: {e}")))?;
        self.add_bytes(MANIFEST_FILE, &manifest).await?;
        // Two zero blocks end a tar.
        self.put(&[0u8; 2 * BLOCK as usize]).await?;
        let Some(mut out) = self.out.take() else {
            return Err(ClientError::Usage(
                "the archive was already finished".into(),
            ));
        };
        let ctx = || format!("writing {}", self.tmp.display());
        out.flush().await.map_err(ClientError::io(ctx()))?;
        let file = (*out).into_inner();
        file.sync_all().await.map_err(ClientError::io(ctx()))?;
        drop(file);
        tokio::fs::rename(&self.tmp, &self.dest)
            .await
            .map_err(ClientError::io(format!(
                "replacing {}",
                self.dest.display()
            )))?;
        self.done = true;
        Ok(())
    }

    fn check_usable(&self) -> Result<()> {
        if self.failed {
            return Err(ClientError::Usage(format!(
                "writing {} failed earlier",
                self.dest.display()
            )));
        }
        Ok(())
    }

    async fn put(&mut self, data: &[u8]) -> Result<()> {
        let Some(out) = self.out.as_mut() else {
            return Err(ClientError::Usage(
                "the archive was already finished".into(),
            ));
        };
        if let Err(e) = out.write_all(data).await {
            self.failed = true;
            return Err(ClientError::io(format!("writing {}", self.tmp.display()))(
                e,
            ));
        }
        Ok(())
    }
}

impl Drop for ArchiveWriter {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// The header block(s) of a regular file. GNU headers because their size field switches to
/// base-256 past 8 GiB, where ustar's octal field ends; names past 100 bytes get a GNU long-name
/// entry first. Owner, mode and mtime are fixed so that the same content gives the same tar.
fn entry_headers(name: &str, size: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(3 * BLOCK as usize);
    let name = name.as_bytes();
    let mut header = tar::Header::new_gnu();
    let field_len = header.as_old().name.len();
    if name.len() > field_len {
        let mut long = tar::Header::new_gnu();
        let marker = b"././@LongLink";
        long.as_old_mut().name[..marker.len()].copy_from_slice(marker);
        set_common(
            &mut long,
            name.len() as u64 + 1,
            tar::EntryType::GNULongName,
        );
        out.extend_from_slice(long.as_bytes());
        out.extend_from_slice(name);
        out.push(0);
        let pad = (BLOCK - (name.len() as u64 + 1) % BLOCK) % BLOCK;
        out.resize(out.len() + pad as usize, 0);
        // Readers that do not know the extension still see a recognisable prefix.
        header.as_old_mut().name.copy_from_slice(&name[..field_len]);
    } else {
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
    }
    set_common(&mut header, size, tar::EntryType::Regular);
    out.extend_from_slice(header.as_bytes());
    out
}

fn set_common(header: &mut tar::Header, size: u64, kind: tar::EntryType) {
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_size(size);
    header.set_entry_type(kind);
    header.set_cksum();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::OciLayout;
    use kura_oci::{Algorithm, Descriptor};
    use std::process::Command;

    fn blob_name(data: &[u8]) -> String {
        format!("blobs/sha256/{}", Algorithm::Sha256.digest_of(data).hex())
    }

    fn on_path(tool: &str) -> bool {
        Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    async fn read_all(archive: &DockerArchive, name: &str) -> Vec<u8> {
        let mut buf = Vec::new();
        archive
            .open_file(name)
            .await
            .unwrap()
            .read_to_end(&mut buf)
            .await
            .unwrap();
        buf
    }

    #[test]
    fn reference_normalisation() {
        assert_eq!(normalise_ref("alpine:3"), "docker.io/library/alpine:3");
        assert_eq!(normalise_ref("alpine"), "docker.io/library/alpine:latest");
        assert_eq!(normalise_ref("user/app:1"), "docker.io/user/app:1");
        assert_eq!(
            normalise_ref("index.docker.io/user/app:1"),
            "docker.io/user/app:1"
        );
        assert_eq!(
            normalise_ref("localhost:5000/app"),
            "localhost:5000/app:latest"
        );
        assert_eq!(normalise_ref("ghcr.io/a/b:c"), "ghcr.io/a/b:c");
        assert_eq!(normalise(".//a/./b/../c"), Some("a/c".into()));
        assert_eq!(normalise("../x"), None);
        assert_eq!(normalise("./"), None);
    }

    #[tokio::test]
    async fn write_then_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.tar");
        let config1 = br#"{"os":"linux","n":1}"#.to_vec();
        let config2 = br#"{"os":"linux","n":2}"#.to_vec();
        let layer = pattern(300_001);
        let long_name = format!("some/{}/file.bin", "d".repeat(120));

        let mut w = ArchiveWriter::create(&dest).await.unwrap();
        w.add_bytes(&blob_name(&config1), &config1).await.unwrap();
        w.add_bytes(&blob_name(&config2), &config2).await.unwrap();
        let layer_name = blob_name(&layer);
        assert!(!w.has(&layer_name));
        w.begin_file(&layer_name, layer.len() as u64).await.unwrap();
        assert!(!w.has(&layer_name), "an open entry is not there yet");
        for chunk in layer.chunks(65_536) {
            w.write(chunk).await.unwrap();
        }
        w.end_file().await.unwrap();
        assert!(w.has(&layer_name));
        assert!(w.has(&format!("./{layer_name}")));
        w.add_bytes(&long_name, b"long").await.unwrap();
        w.add_bytes("empty", b"").await.unwrap();
        let images = vec![
            ArchiveImage {
                config: blob_name(&config1),
                repo_tags: vec!["docker.io/library/alpine:3".into()],
                layers: vec![layer_name.clone()],
            },
            ArchiveImage {
                config: blob_name(&config2),
                repo_tags: vec!["user/app:1".into(), "ghcr.io/o/app:2".into()],
                layers: vec![layer_name.clone(), long_name.clone()],
            },
        ];
        assert!(!dest.exists(), "nothing appears before finish");
        w.finish(&images).await.unwrap();
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "the temporary file was renamed");

        let archive = DockerArchive::open(&dest).await.unwrap();
        assert_eq!(archive.images(), images.as_slice());
        assert!(matches!(archive.select(None), Err(ClientError::Usage(_))));
        assert_eq!(archive.select(Some("@1")).unwrap(), &images[1]);
        assert_eq!(archive.select(Some("alpine:3")).unwrap(), &images[0]);
        assert_eq!(
            archive.select(Some("docker.io/user/app:1")).unwrap(),
            &images[1]
        );
        assert_eq!(archive.select(Some("ghcr.io/o/app:2")).unwrap(), &images[1]);
        assert!(matches!(
            archive.select(Some("alpine:4")),
            Err(ClientError::NotFound(_))
        ));
        assert!(matches!(
            archive.select(Some("@2")),
            Err(ClientError::NotFound(_))
        ));
        assert!(matches!(
            archive.select(Some("@x")),
            Err(ClientError::Usage(_))
        ));
        assert_eq!(archive.file_size(&layer_name).unwrap(), layer.len() as u64);
        assert_eq!(read_all(&archive, &layer_name).await, layer);
        assert_eq!(read_all(&archive, &long_name).await, b"long");
        assert_eq!(read_all(&archive, "empty").await, b"");
        assert_eq!(archive.read_file(&images[1].config).await.unwrap(), config2);
        assert!(matches!(
            archive.file_size("nope"),
            Err(ClientError::NotFound(_))
        ));

        if on_path("tar") {
            let out = Command::new("tar").arg("-tvf").arg(&dest).output().unwrap();
            assert!(out.status.success(), "{out:?}");
            let listing = String::from_utf8_lossy(&out.stdout);
            assert!(listing.contains(&layer_name), "{listing}");
            assert!(listing.contains(&long_name), "{listing}");
            assert!(listing.contains("manifest.json"), "{listing}");
            let x = dir.path().join("x");
            std::fs::create_dir(&x).unwrap();
            let out = Command::new("tar")
                .arg("-xf")
                .arg(&dest)
                .arg("-C")
                .arg(&x)
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            assert_eq!(std::fs::read(x.join(&layer_name)).unwrap(), layer);
            assert_eq!(std::fs::read(x.join(&long_name)).unwrap(), b"long");
        }
        if on_path("python3") {
            let script = "import sys, tarfile\n\
                 t = tarfile.open(sys.argv[1])\n\
                 t.extractall(sys.argv[2])\n\
                 print('\\n'.join(t.getnames()))\n";
            let y = dir.path().join("y");
            let out = Command::new("python3")
                .arg("-c")
                .arg(script)
                .arg(&dest)
                .arg(&y)
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            assert!(String::from_utf8_lossy(&out.stdout).contains(&long_name));
            assert_eq!(std::fs::read(y.join(&layer_name)).unwrap(), layer);
        }
    }

    #[tokio::test]
    async fn legacy_archive_with_linked_layers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("legacy.tar");
        let layer = pattern(5000);
        let config = br#"{"architecture":"amd64"}"#;
        let config_name = format!("{}.json", Algorithm::Sha256.digest_of(config).hex());
        let manifest = serde_json::json!([{
            "Config": config_name,
            "RepoTags": null,
            "Layers": ["aaa/layer.tar", "./bbb/layer.tar", "ccc/layer.tar", "ddd/layer.tar"],
        }]);

        let mut b = tar::Builder::new(Vec::new());
        let dir_entry = |b: &mut tar::Builder<Vec<u8>>, name: &str| {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            b.append_data(&mut h, name, std::io::empty()).unwrap();
        };
        let file = |b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]| {
            let mut h = tar::Header::new_ustar();
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            b.append_data(&mut h, name, data).unwrap();
        };
        let link = |b: &mut tar::Builder<Vec<u8>>, kind, name: &str, target: &str| {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(kind);
            h.set_size(0);
            h.set_mode(0o777);
            b.append_link(&mut h, name, target).unwrap();
        };
        dir_entry(&mut b, "./aaa/");
        file(&mut b, "./aaa/layer.tar", &layer);
        dir_entry(&mut b, "./bbb/");
        link(
            &mut b,
            tar::EntryType::Symlink,
            "./bbb/layer.tar",
            "../aaa/layer.tar",
        );
        // A symlink to a symlink, pointing forward in the archive.
        link(
            &mut b,
            tar::EntryType::Symlink,
            "./ccc/layer.tar",
            "../bbb/layer.tar",
        );
        link(
            &mut b,
            tar::EntryType::Link,
            "./ddd/layer.tar",
            "aaa/layer.tar",
        );
        link(
            &mut b,
            tar::EntryType::Symlink,
            "./eee/layer.tar",
            "../nowhere",
        );
        file(&mut b, &format!("./{config_name}"), config);
        file(
            &mut b,
            "./manifest.json",
            &serde_json::to_vec(&manifest).unwrap(),
        );
        file(&mut b, "./repositories", b"{}");
        std::fs::write(&path, b.into_inner().unwrap()).unwrap();

        let archive = DockerArchive::open(&path).await.unwrap();
        let image = archive.select(None).unwrap();
        assert!(image.repo_tags.is_empty());
        assert_eq!(image.config, config_name);
        assert_eq!(
            image.layers,
            [
                "aaa/layer.tar",
                "bbb/layer.tar",
                "ccc/layer.tar",
                "ddd/layer.tar"
            ]
        );
        assert_eq!(archive.read_file(&config_name).await.unwrap(), config);
        for name in &image.layers {
            assert_eq!(archive.file_size(name).unwrap(), layer.len() as u64);
            assert_eq!(read_all(&archive, name).await, layer, "{name}");
        }
        assert!(matches!(
            archive.file_size("eee/layer.tar"),
            Err(ClientError::NotFound(_))
        ));
        assert!(matches!(
            archive.select(Some("alpine")),
            Err(ClientError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn malformed_archives_are_format_errors() {
        let dir = tempfile::tempdir().unwrap();
        let build = |entries: &[(&str, &[u8])]| {
            let mut b = tar::Builder::new(Vec::new());
            for (name, data) in entries {
                let mut h = tar::Header::new_gnu();
                h.set_mode(0o644);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, name, *data).unwrap();
            }
            b.into_inner().unwrap()
        };
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("no-manifest.tar", build(&[("a.json", b"{}")])),
            (
                "bad-json.tar",
                build(&[("manifest.json", b"[{\"Config\":")]),
            ),
            (
                "dangling.tar",
                build(&[
                    (
                        "manifest.json",
                        br#"[{"Config":"c.json","RepoTags":[],"Layers":["l/layer.tar"]}]"#,
                    ),
                    ("c.json", b"{}"),
                ]),
            ),
            ("not-a-tar.tar", b"this is not a tar file at all".repeat(40)),
        ];
        for (name, bytes) in cases {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            let err = DockerArchive::open(&path).await.unwrap_err();
            assert!(matches!(err, ClientError::Format(_)), "{name}: {err:?}");
        }

        // Cut inside a file's data.
        let mut bytes = build(&[("manifest.json", b"[]"), ("big", &[1u8; 4096])]);
        bytes.truncate(2048);
        let path = dir.path().join("truncated.tar");
        std::fs::write(&path, bytes).unwrap();
        let err = DockerArchive::open(&path).await.unwrap_err();
        assert!(matches!(err, ClientError::Format(_)), "{err:?}");
    }

    #[tokio::test]
    async fn short_and_long_entries_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("t.tar");
        let mut w = ArchiveWriter::create(&dest).await.unwrap();
        w.begin_file("blobs/sha256/x", 10).await.unwrap();
        w.write(b"12345").await.unwrap();
        assert!(matches!(w.end_file().await, Err(ClientError::Integrity(_))));
        assert!(w.add_bytes("other", b"x").await.is_err());
        assert!(w.finish(&[]).await.is_err());
        assert!(!dest.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

        let mut w = ArchiveWriter::create(&dest).await.unwrap();
        w.begin_file("f", 3).await.unwrap();
        assert!(matches!(
            w.write(b"1234").await,
            Err(ClientError::Integrity(_))
        ));
        drop(w);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

        let mut w = ArchiveWriter::create(&dest).await.unwrap();
        assert!(matches!(
            w.begin_file("../escape", 1).await,
            Err(ClientError::Usage(_))
        ));
        w.add_bytes("c.json", b"{}").await.unwrap();
        let missing = ArchiveImage {
            config: "c.json".into(),
            repo_tags: vec![],
            layers: vec!["absent".into()],
        };
        assert!(matches!(
            w.finish(&[missing]).await,
            Err(ClientError::Format(_))
        ));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn skopeo_reads_our_layout_and_we_read_its_archive() {
        if !on_path("skopeo") {
            eprintln!("skopeo not on PATH, skipped");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let oci = dir.path().join("oci");
        let layout = OciLayout::create(&oci).await.unwrap();

        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_size(6);
        b.append_data(&mut h, "hello.txt", &b"hello\n"[..]).unwrap();
        let layer = b.into_inner().unwrap();
        let layer_digest = Algorithm::Sha256.digest_of(&layer);
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [layer_digest.to_string()]},
        }))
        .unwrap();
        let descriptor = |media_type: &str, data: &[u8]| Descriptor {
            media_type: media_type.into(),
            digest: Algorithm::Sha256.digest_of(data),
            size: data.len() as u64,
            urls: None,
            artifact_type: None,
            annotations: None,
        };
        let config_desc = descriptor("application/vnd.oci.image.config.v1+json", &config);
        let layer_desc = descriptor("application/vnd.oci.image.layer.v1.tar", &layer);
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config_desc,
            "layers": [layer_desc],
        }))
        .unwrap();
        let manifest_desc = descriptor("application/vnd.oci.image.manifest.v1+json", &manifest);
        layout.write_blob(&config_desc, &config).await.unwrap();
        let mut w = layout.blob_writer(&layer_desc).await.unwrap();
        for chunk in layer.chunks(1000) {
            w.write(chunk).await.unwrap();
        }
        w.finish().await.unwrap();
        layout.write_blob(&manifest_desc, &manifest).await.unwrap();
        layout
            .set_tag(Some("t1"), manifest_desc.clone())
            .await
            .unwrap();

        let src = format!("oci:{}:t1", oci.display());
        let out = Command::new("skopeo")
            .args(["inspect", "--raw", &src])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(out.stdout, manifest);

        let tar_path = dir.path().join("out.tar");
        let dst = format!("docker-archive:{}:app:t1", tar_path.display());
        let out = Command::new("skopeo")
            .args(["--insecure-policy", "copy", "-q", &src, &dst])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");

        let archive = DockerArchive::open(&tar_path).await.unwrap();
        let image = archive.select(Some("app:t1")).unwrap().clone();
        let got_config: serde_json::Value =
            serde_json::from_slice(&archive.read_file(&image.config).await.unwrap()).unwrap();
        assert_eq!(
            got_config["rootfs"]["diff_ids"][0],
            layer_digest.to_string()
        );
        assert_eq!(image.layers.len(), 1);
        assert_eq!(read_all(&archive, &image.layers[0]).await, layer);
    }
}
