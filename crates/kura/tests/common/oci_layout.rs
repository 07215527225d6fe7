//! Writes OCI image layout directories (image-spec `image-layout.md`) for tests that drive real
//! clients such as skopeo: an `oci-layout` file, `index.json` and `blobs/sha256/<hex>`.
//!
//! Layers are real gzip-compressed tar archives (a ustar archive holding one file of seeded random
//! bytes, compressed with stored deflate blocks, which is valid gzip), and each image has a valid
//! OCI image config whose `rootfs.diff_ids` are the sha256 digests of the uncompressed tars.
//! Everything is deterministic for a given seed.

use std::path::{Path, PathBuf};

use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

pub const MEDIA_TYPE_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_TYPE_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_TYPE_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_TYPE_OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// A content descriptor (mediaType, digest, size).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

impl Descriptor {
    pub fn to_json(&self) -> Value {
        json!({ "mediaType": self.media_type, "digest": self.digest, "size": self.size })
    }

    fn of(media_type: &str, data: &[u8]) -> Descriptor {
        Descriptor {
            media_type: media_type.to_string(),
            digest: sha256_digest(data),
            size: data.len() as u64,
        }
    }
}

/// An image manifest written into a layout, with everything a test needs to check a round trip.
#[derive(Debug, Clone)]
pub struct Image {
    /// Descriptor of the manifest itself.
    pub manifest: Descriptor,
    /// Exact manifest bytes as stored in the layout.
    pub manifest_bytes: Vec<u8>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    /// `sha256:` digests of the uncompressed layer tars, in layer order.
    pub diff_ids: Vec<String>,
    pub architecture: String,
    pub os: String,
}

impl Image {
    /// Config and layer descriptors (every blob the manifest references).
    pub fn blobs(&self) -> Vec<Descriptor> {
        let mut all = vec![self.config.clone()];
        all.extend(self.layers.iter().cloned());
        all
    }
}

/// An image index written into a layout.
#[derive(Debug, Clone)]
pub struct ImageIndex {
    pub index: Descriptor,
    pub index_bytes: Vec<u8>,
    pub images: Vec<Image>,
}

/// An OCI image layout directory being written.
pub struct OciLayout {
    pub root: PathBuf,
    refs: Vec<(String, Descriptor)>,
}

impl OciLayout {
    /// Creates (or reuses) `root` with an `oci-layout` file and an empty `blobs/sha256`.
    pub fn create(root: &Path) -> OciLayout {
        std::fs::create_dir_all(root.join("blobs").join("sha256")).expect("create layout dirs");
        std::fs::write(
            root.join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .expect("write oci-layout");
        let layout = OciLayout {
            root: root.to_path_buf(),
            refs: Vec::new(),
        };
        layout.write_index();
        layout
    }

    /// Path of a blob in this layout.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        blob_path(&self.root, digest)
    }

    /// Writes `data` as a blob and returns its descriptor.
    pub fn write_blob(&self, media_type: &str, data: &[u8]) -> Descriptor {
        let desc = Descriptor::of(media_type, data);
        std::fs::write(self.blob_path(&desc.digest), data).expect("write blob");
        desc
    }

    /// Writes a single-platform image with one gzip'd tar layer per entry of `layer_sizes`
    /// (bytes of random file content in that layer). Nothing is tagged.
    pub fn add_image(
        &self,
        seed: u64,
        architecture: &str,
        os: &str,
        layer_sizes: &[usize],
    ) -> Image {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut layers = Vec::new();
        let mut diff_ids = Vec::new();
        let mut history = Vec::new();
        for (i, &size) in layer_sizes.iter().enumerate() {
            let mut content = vec![0u8; size];
            rng.fill_bytes(&mut content);
            let name = format!("kura-test/{architecture}/layer-{i}.bin");
            let tar = tar_with_file(&name, &content);
            diff_ids.push(sha256_digest(&tar));
            let gz = gzip_stored(&tar);
            layers.push(self.write_blob(MEDIA_TYPE_OCI_LAYER_GZIP, &gz));
            history.push(json!({
                "created": "2024-01-01T00:00:00Z",
                "created_by": format!("kura test layer {i} ({size} bytes)"),
            }));
        }
        let config_json = json!({
            "created": "2024-01-01T00:00:00Z",
            "architecture": architecture,
            "os": os,
            "config": {
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "Cmd": ["/bin/sh"],
                "Labels": { "org.example.kura.seed": seed.to_string() },
            },
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
            "history": history,
        });
        let config_bytes = serde_json::to_vec(&config_json).unwrap();
        let config = self.write_blob(MEDIA_TYPE_OCI_CONFIG, &config_bytes);
        let manifest_json = json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_OCI_MANIFEST,
            "config": config.to_json(),
            "layers": layers.iter().map(Descriptor::to_json).collect::<Vec<_>>(),
            "annotations": { "org.opencontainers.image.created": "2024-01-01T00:00:00Z" },
        });
        // Pretty-printed on purpose: a registry must store and serve these exact bytes.
        let manifest_bytes = serde_json::to_vec_pretty(&manifest_json).unwrap();
        let manifest = self.write_blob(MEDIA_TYPE_OCI_MANIFEST, &manifest_bytes);
        Image {
            manifest,
            manifest_bytes,
            config,
            layers,
            diff_ids,
            architecture: architecture.to_string(),
            os: os.to_string(),
        }
    }

    /// Writes an image index over `images` (platform taken from each image). Nothing is tagged.
    pub fn add_index(&self, images: &[Image]) -> ImageIndex {
        let manifests: Vec<Value> = images
            .iter()
            .map(|img| {
                let mut platform = json!({ "architecture": img.architecture, "os": img.os });
                if img.architecture == "arm64" {
                    platform["variant"] = json!("v8");
                }
                let mut d = img.manifest.to_json();
                d["platform"] = platform;
                d
            })
            .collect();
        let index_json = json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_OCI_INDEX,
            "manifests": manifests,
        });
        let index_bytes = serde_json::to_vec_pretty(&index_json).unwrap();
        let index = self.write_blob(MEDIA_TYPE_OCI_INDEX, &index_bytes);
        ImageIndex {
            index,
            index_bytes,
            images: images.to_vec(),
        }
    }

    /// Tags `desc` as `tag` (the `org.opencontainers.image.ref.name` annotation) and rewrites
    /// `index.json`.
    pub fn tag(&mut self, tag: &str, desc: &Descriptor) {
        self.refs.retain(|(t, _)| t != tag);
        self.refs.push((tag.to_string(), desc.clone()));
        self.write_index();
    }

    fn write_index(&self) {
        let manifests: Vec<Value> = self
            .refs
            .iter()
            .map(|(tag, desc)| {
                let mut d = desc.to_json();
                d["annotations"] = json!({ ANNOTATION_REF_NAME: tag });
                d
            })
            .collect();
        let index = json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_OCI_INDEX,
            "manifests": manifests,
        });
        std::fs::write(
            self.root.join("index.json"),
            serde_json::to_vec_pretty(&index).unwrap(),
        )
        .expect("write index.json");
    }
}

/// Writes a layout at `root` holding one image with `n_layers` layers of varied sizes
/// (a few KiB up to about 1.5 MiB), tagged `tag`.
pub fn single_image_layout(root: &Path, tag: &str, n_layers: usize, seed: u64) -> Image {
    let sizes: Vec<usize> = (0..n_layers)
        .map(|i| [1_500_000, 4_096, 300_000, 77_777][i % 4] + i)
        .collect();
    let mut layout = OciLayout::create(root);
    let image = layout.add_image(seed, "amd64", "linux", &sizes);
    layout.tag(tag, &image.manifest);
    image
}

/// Writes a layout at `root` holding a multi-arch index (linux/amd64 and linux/arm64, two layers
/// each), tagged `tag`.
pub fn multi_arch_layout(root: &Path, tag: &str, seed: u64) -> ImageIndex {
    let mut layout = OciLayout::create(root);
    let amd64 = layout.add_image(seed, "amd64", "linux", &[200_000, 5_000]);
    let arm64 = layout.add_image(seed.wrapping_add(1), "arm64", "linux", &[180_000, 6_000]);
    let index = layout.add_index(&[amd64, arm64]);
    layout.tag(tag, &index.index);
    index
}

/// Path of a blob under a layout root.
pub fn blob_path(root: &Path, digest: &str) -> PathBuf {
    let (alg, hex) = digest.split_once(':').expect("digest has an algorithm");
    root.join("blobs").join(alg).join(hex)
}

/// Reads a layout's `index.json` and returns `(ref name, descriptor)` for every entry that has
/// an `org.opencontainers.image.ref.name` annotation.
pub fn read_refs(root: &Path) -> Vec<(String, Descriptor)> {
    let raw = std::fs::read(root.join("index.json")).expect("read index.json");
    let index: Value = serde_json::from_slice(&raw).expect("index.json is JSON");
    index["manifests"]
        .as_array()
        .expect("index.json has manifests")
        .iter()
        .filter_map(|m| {
            let name = m["annotations"][ANNOTATION_REF_NAME].as_str()?;
            Some((
                name.to_string(),
                Descriptor {
                    media_type: m["mediaType"].as_str().unwrap_or_default().to_string(),
                    digest: m["digest"].as_str().expect("digest").to_string(),
                    size: m["size"].as_u64().expect("size"),
                },
            ))
        })
        .collect()
}

/// A ustar archive holding a directory `kura-test/` and one regular file `name` with `content`.
pub fn tar_with_file(name: &str, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 4 * 512);
    out.extend_from_slice(&ustar_header("kura-test/", 0, b'5', 0o755));
    out.extend_from_slice(&ustar_header(name, content.len() as u64, b'0', 0o644));
    out.extend_from_slice(content);
    let pad = (512 - content.len() % 512) % 512;
    out.extend(std::iter::repeat_n(0u8, pad));
    // End of archive: two zero blocks.
    out.extend(std::iter::repeat_n(0u8, 1024));
    out
}

fn ustar_header(name: &str, size: u64, typeflag: u8, mode: u32) -> [u8; 512] {
    assert!(
        name.len() <= 100,
        "tar name too long for a plain ustar header"
    );
    let mut h = [0u8; 512];
    fn octal(field: &mut [u8], value: u64) {
        // Zero-padded octal, NUL terminated, filling the field.
        let digits = field.len() - 1;
        let s = format!("{value:0digits$o}");
        assert!(s.len() == digits, "value does not fit tar field");
        field[..digits].copy_from_slice(s.as_bytes());
        field[digits] = 0;
    }
    h[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut h[100..108], u64::from(mode));
    octal(&mut h[108..116], 0); // uid
    octal(&mut h[116..124], 0); // gid
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], 1_704_067_200); // mtime 2024-01-01
    h[156] = typeflag;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[265..269].copy_from_slice(b"root");
    h[297..301].copy_from_slice(b"root");
    // Checksum: sum of all header bytes with the checksum field taken as spaces.
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    h
}

/// gzip (RFC 1952) of `data` using stored (uncompressed) deflate blocks (RFC 1951 §3.2.4).
pub fn gzip_stored(data: &[u8]) -> Vec<u8> {
    const MAX_BLOCK: usize = 65_535;
    let blocks = data.len().div_ceil(MAX_BLOCK).max(1);
    let mut out = Vec::with_capacity(data.len() + blocks * 5 + 18);
    // Header: magic, CM=deflate, no flags, mtime 0, XFL 0, OS unknown.
    out.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255]);
    let mut chunks = data.chunks(MAX_BLOCK).peekable();
    if data.is_empty() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(chunk) = chunks.next() {
        let last = chunks.peek().is_none();
        // BFINAL bit, BTYPE=00, then padding to the byte boundary.
        out.push(u8::from(last));
        let len = chunk.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

/// CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320) as used by gzip.
pub fn crc32(data: &[u8]) -> u32 {
    let mut table = [0u32; 256];
    for (i, entry) in table.iter_mut().enumerate() {
        let mut c = i as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
        *entry = c;
    }
    let mut crc = !0u32;
    for &b in data {
        crc = table[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}
