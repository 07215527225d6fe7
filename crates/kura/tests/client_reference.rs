//! The `kura` client commands against the reference implementation of the distribution API,
//! Debian's `docker-registry` (distribution 2.8): the client must work against any OCI
//! registry, not only Kura.
//!
//! Every check of what landed in the registry is made over plain HTTP (`GET /v2/...`), never
//! through the client under test, and images that a test only reads are seeded over plain HTTP
//! too, so a broken `kura push` fails the push tests and not everything else. Each test starts
//! its own `docker-registry` (deletes enabled) on a free loopback port.
//!
//! Covered: push (single image and multi-arch index, idempotent re-push), pull into OCI layouts
//! and docker-archive tars (platform selection, `--all`), cp between Kura and docker-registry in
//! both directions, ls (catalog and tag table), inspect (text, JSON, `--raw`), rm (by digest; by
//! tag, which distribution 2.8 cannot do), prune through the generic API, search falling back
//! to the catalog, and server-side tag.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::KuraServer;
use common::cli::{Cli, ReferenceRegistry, oci};
use common::oci_layout::{
    Descriptor, Image, ImageIndex, MEDIA_TYPE_OCI_CONFIG, MEDIA_TYPE_OCI_INDEX,
    MEDIA_TYPE_OCI_LAYER_GZIP, MEDIA_TYPE_OCI_MANIFEST, OciLayout, blob_path, gzip_stored,
    multi_arch_layout, read_refs, sha256_digest, single_image_layout, tar_with_file,
};
use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

/// What a client that wants OCI content sends (both kinds, as `kura` and skopeo do).
const ACCEPT_OCI: &str =
    "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json";

// ---------------------------------------------------------------------------------------------
// Plain HTTP, independent of the client under test.
// ---------------------------------------------------------------------------------------------

struct Resp {
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

fn http(method: Method, url: &str, headers: &[(&str, &str)], body: Option<Vec<u8>>) -> Resp {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(std::time::Duration::from_secs(15))
            .build()
            .expect("client");
        let mut req = client.request(method.clone(), url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.expect("body").to_vec();
        Resp {
            status,
            headers,
            body,
        }
    })
}

/// `GET /v2/<repo>/manifests/<reference>` asking for OCI manifests and indexes.
fn get_manifest(addr: &str, repo: &str, reference: &str) -> Resp {
    http(
        Method::GET,
        &format!("http://{addr}/v2/{repo}/manifests/{reference}"),
        &[("Accept", ACCEPT_OCI)],
        None,
    )
}

/// Asserts that `reference` resolves to `digest` (header and body hash) and returns the body.
fn assert_manifest(addr: &str, repo: &str, reference: &str, digest: &str) -> Vec<u8> {
    let r = get_manifest(addr, repo, reference);
    assert_eq!(
        r.status,
        200,
        "GET {addr}/v2/{repo}/manifests/{reference}: {}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(
        sha256_digest(&r.body),
        digest,
        "{repo}:{reference} serves other bytes"
    );
    assert_eq!(
        r.header("docker-content-digest").as_deref(),
        Some(digest),
        "{repo}:{reference}: Docker-Content-Digest"
    );
    r.body
}

fn manifest_status(addr: &str, repo: &str, reference: &str) -> u16 {
    get_manifest(addr, repo, reference).status
}

fn blob_status(addr: &str, repo: &str, digest: &str) -> u16 {
    http(
        Method::HEAD,
        &format!("http://{addr}/v2/{repo}/blobs/{digest}"),
        &[],
        None,
    )
    .status
}

fn http_tags(addr: &str, repo: &str) -> BTreeSet<String> {
    let r = http(
        Method::GET,
        &format!("http://{addr}/v2/{repo}/tags/list"),
        &[],
        None,
    );
    assert_eq!(r.status, 200, "tags of {repo}");
    r.json()["tags"]
        .as_array()
        .map(|a| a.iter().map(|t| t.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// Uploads one blob of a layout monolithically (POST, then PUT with the digest).
fn http_push_blob(addr: &str, repo: &str, root: &Path, desc: &Descriptor) {
    if blob_status(addr, repo, &desc.digest) == 200 {
        return;
    }
    let data = std::fs::read(blob_path(root, &desc.digest)).expect("read layout blob");
    let r = http(
        Method::POST,
        &format!("http://{addr}/v2/{repo}/blobs/uploads/"),
        &[("Content-Length", "0")],
        None,
    );
    assert_eq!(
        r.status,
        202,
        "start upload: {}",
        String::from_utf8_lossy(&r.body)
    );
    let loc = r.header("location").expect("upload Location");
    let loc = if loc.starts_with("http") {
        loc
    } else {
        format!("http://{addr}{loc}")
    };
    let sep = if loc.contains('?') { '&' } else { '?' };
    let r = http(
        Method::PUT,
        &format!("{loc}{sep}digest={}", desc.digest),
        &[("Content-Type", "application/octet-stream")],
        Some(data),
    );
    assert_eq!(
        r.status,
        201,
        "finish upload: {}",
        String::from_utf8_lossy(&r.body)
    );
}

fn http_put_manifest(addr: &str, repo: &str, reference: &str, media_type: &str, bytes: &[u8]) {
    let r = http(
        Method::PUT,
        &format!("http://{addr}/v2/{repo}/manifests/{reference}"),
        &[("Content-Type", media_type)],
        Some(bytes.to_vec()),
    );
    assert_eq!(
        r.status,
        201,
        "PUT manifest {repo}:{reference}: {}",
        String::from_utf8_lossy(&r.body)
    );
}

/// Seeds `repo:reference` with an image of the layout at `root`, over plain HTTP.
fn http_push_image(addr: &str, repo: &str, reference: &str, root: &Path, image: &Image) {
    for b in image.blobs() {
        http_push_blob(addr, repo, root, &b);
    }
    http_put_manifest(
        addr,
        repo,
        reference,
        MEDIA_TYPE_OCI_MANIFEST,
        &image.manifest_bytes,
    );
}

/// Seeds `repo:tag` with an index of the layout at `root` (children by digest first).
fn http_push_index(addr: &str, repo: &str, tag: &str, root: &Path, index: &ImageIndex) {
    for img in &index.images {
        http_push_image(addr, repo, &img.manifest.digest, root, img);
    }
    http_put_manifest(addr, repo, tag, MEDIA_TYPE_OCI_INDEX, &index.index_bytes);
}

// ---------------------------------------------------------------------------------------------
// Local helpers.
// ---------------------------------------------------------------------------------------------

fn parse_json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}):\n{s}"))
}

/// The OCI architecture of this machine.
fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The image of an index for this machine's platform.
fn host_image(index: &ImageIndex) -> &Image {
    index
        .images
        .iter()
        .find(|i| i.architecture == host_arch())
        .unwrap_or_else(|| panic!("test index has no {} image", host_arch()))
}

/// Every file under `blobs/sha256` hashes to its name; returns the set of digests found.
fn assert_blobs_hash_to_names(root: &Path) -> BTreeSet<String> {
    let dir = root.join("blobs").join("sha256");
    let mut found = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let entry = entry.expect("dir entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        let data = std::fs::read(entry.path()).expect("read blob");
        assert_eq!(
            sha256_digest(&data),
            format!("sha256:{name}"),
            "blob {name} in {} does not hash to its name",
            root.display()
        );
        found.insert(format!("sha256:{name}"));
    }
    found
}

/// Unpacks a tar with the system `tar` (not the code under test).
fn untar(file: &Path, into: &Path) {
    std::fs::create_dir_all(into).expect("mkdir");
    let out = std::process::Command::new("tar")
        .arg("-xf")
        .arg(file)
        .arg("-C")
        .arg(into)
        .output()
        .expect("run tar");
    assert!(
        out.status.success(),
        "tar -xf {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The single entry of a layout's `index.json` tagged `tag`.
fn layout_ref(root: &Path, tag: &str) -> Descriptor {
    let refs = read_refs(root);
    let hits: Vec<_> = refs.iter().filter(|(t, _)| t == tag).collect();
    assert_eq!(hits.len(), 1, "layout refs: {refs:?}");
    hits[0].1.clone()
}

/// Writes a small single-layer linux/amd64 image whose config says `created`, untagged.
fn dated_image(layout: &OciLayout, seed: u64, created: &str) -> Image {
    let content = format!("kura dated image {seed} {created}\n").repeat(50);
    let tar = tar_with_file(&format!("kura-test/dated-{seed}.txt"), content.as_bytes());
    let diff_id = sha256_digest(&tar);
    let layer = layout.write_blob(MEDIA_TYPE_OCI_LAYER_GZIP, &gzip_stored(&tar));
    let config_bytes = serde_json::to_vec(&json!({
        "created": created,
        "architecture": "amd64",
        "os": "linux",
        "config": { "Cmd": ["/bin/sh"] },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
    }))
    .unwrap();
    let config = layout.write_blob(MEDIA_TYPE_OCI_CONFIG, &config_bytes);
    let manifest_bytes = serde_json::to_vec_pretty(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_OCI_MANIFEST,
        "config": config.to_json(),
        "layers": [layer.to_json()],
    }))
    .unwrap();
    let manifest = layout.write_blob(MEDIA_TYPE_OCI_MANIFEST, &manifest_bytes);
    Image {
        manifest,
        manifest_bytes,
        config,
        layers: vec![layer],
        diff_ids: vec![diff_id],
        architecture: "amd64".into(),
        os: "linux".into(),
    }
}

fn total_size(image: &Image) -> u64 {
    image.blobs().iter().map(|b| b.size).sum()
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn sub(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}

// ---------------------------------------------------------------------------------------------
// 1. push
// ---------------------------------------------------------------------------------------------

#[test]
fn push_single_image_to_reference_registry() {
    let reg = ReferenceRegistry::start();
    let cli = Cli::new();
    let t = tmp();
    let layout = sub(&t, "layout");
    let image = single_image_layout(&layout, "v1", 3, 11);
    let dest = format!("{}/push/single:v1", reg.addr);

    let out = parse_json(&cli.ok(&["push", &oci(&layout, "v1"), &dest, "--format", "json"]));
    assert_eq!(out["digest"], image.manifest.digest, "{out}");
    assert_eq!(out["media_type"], MEDIA_TYPE_OCI_MANIFEST, "{out}");
    assert_eq!(out["manifests"], 1, "{out}");
    assert_eq!(out["blobs"], 4, "{out}");
    assert_eq!(out["blobs_copied"], 4, "{out}");
    let bytes: u64 = image.blobs().iter().map(|b| b.size).sum();
    assert_eq!(out["bytes_copied"], bytes, "{out}");

    // The registry serves the layout's exact bytes under the tag and by digest.
    let served = assert_manifest(&reg.addr, "push/single", "v1", &image.manifest.digest);
    assert_eq!(served, image.manifest_bytes);
    let r = get_manifest(&reg.addr, "push/single", "v1");
    assert_eq!(
        r.header("content-type").as_deref(),
        Some(MEDIA_TYPE_OCI_MANIFEST)
    );
    assert_manifest(
        &reg.addr,
        "push/single",
        &image.manifest.digest,
        &image.manifest.digest,
    );
    for b in image.blobs() {
        assert_eq!(
            blob_status(&reg.addr, "push/single", &b.digest),
            200,
            "{b:?}"
        );
    }

    // Pushing again moves nothing.
    let again = parse_json(&cli.ok(&["push", &oci(&layout, "v1"), &dest, "--format", "json"]));
    assert_eq!(again["digest"], image.manifest.digest, "{again}");
    assert_eq!(again["blobs_copied"], 0, "{again}");
    assert_eq!(again["bytes_copied"], 0, "{again}");

    // The text report names the destination and digest.
    let text = cli.ok(&["push", &oci(&layout, "v1"), &dest]);
    assert!(text.contains(&image.manifest.digest), "{text}");
    assert!(text.contains(&dest), "{text}");
}

#[test]
fn push_multi_arch_index_to_reference_registry() {
    let reg = ReferenceRegistry::start();
    let cli = Cli::new();
    let t = tmp();
    let layout = sub(&t, "layout");
    let index = multi_arch_layout(&layout, "v1", 21);
    let dest = format!("{}/push/multi:v1", reg.addr);

    let out = parse_json(&cli.ok(&["push", &oci(&layout, "v1"), &dest, "--format", "json"]));
    assert_eq!(out["digest"], index.index.digest, "{out}");
    assert_eq!(out["media_type"], MEDIA_TYPE_OCI_INDEX, "{out}");
    assert_eq!(out["manifests"], 3, "{out}");
    assert_eq!(out["blobs_copied"], 6, "{out}");

    let served = assert_manifest(&reg.addr, "push/multi", "v1", &index.index.digest);
    assert_eq!(served, index.index_bytes);
    assert_eq!(
        get_manifest(&reg.addr, "push/multi", "v1")
            .header("content-type")
            .as_deref(),
        Some(MEDIA_TYPE_OCI_INDEX)
    );
    for img in &index.images {
        let body = assert_manifest(
            &reg.addr,
            "push/multi",
            &img.manifest.digest,
            &img.manifest.digest,
        );
        assert_eq!(body, img.manifest_bytes);
        for b in img.blobs() {
            assert_eq!(blob_status(&reg.addr, "push/multi", &b.digest), 200);
        }
    }

    let again = parse_json(&cli.ok(&["push", &oci(&layout, "v1"), &dest, "--format", "json"]));
    assert_eq!(again["digest"], index.index.digest, "{again}");
    assert_eq!(again["blobs_copied"], 0, "{again}");
    assert_eq!(again["bytes_copied"], 0, "{again}");

    // The same index under another tag: still nothing moves, the new tag resolves.
    let other = format!("{}/push/multi:v2", reg.addr);
    let out = parse_json(&cli.ok(&["push", &oci(&layout, "v1"), &other, "--format", "json"]));
    assert_eq!(out["blobs_copied"], 0, "{out}");
    assert_manifest(&reg.addr, "push/multi", "v2", &index.index.digest);
}

// ---------------------------------------------------------------------------------------------
// 2. pull
// ---------------------------------------------------------------------------------------------

#[test]
fn pull_single_image_into_oci_layout() {
    let reg = ReferenceRegistry::start();
    let cli = Cli::new();
    let t = tmp();
    let src = sub(&t, "src");
    let image = single_image_layout(&src, "v1", 3, 31);
    http_push_image(&reg.addr, "pull/single", "v1", &src, &image);

    let out_dir = sub(&t, "out");
    let out = parse_json(&cli.ok(&[
        "pull",
        &format!("{}/pull/single:v1", reg.addr),
        &format!("oci:{}", path(&out_dir)),
        "--format",
        "json",
    ]));
    assert_eq!(out["digest"], image.manifest.digest, "{out}");

    // The tag defaults to the image's, as skopeo does.
    let root = layout_ref(&out_dir, "v1");
    assert_eq!(root.digest, image.manifest.digest);
    assert_eq!(root.media_type, MEDIA_TYPE_OCI_MANIFEST);
    assert_eq!(root.size, image.manifest_bytes.len() as u64);
    let blobs = assert_blobs_hash_to_names(&out_dir);
    assert!(blobs.contains(&image.manifest.digest));
    for b in image.blobs() {
        assert!(blobs.contains(&b.digest), "{} missing", b.digest);
    }
    assert_eq!(
        std::fs::read(blob_path(&out_dir, &image.manifest.digest)).unwrap(),
        image.manifest_bytes
    );
    assert!(out_dir.join("oci-layout").is_file());

    // Pulled by digest under an explicit tag into the same layout: nothing new to write.
    let again = parse_json(&cli.ok(&[
        "pull",
        &format!("{}/pull/single@{}", reg.addr, image.manifest.digest),
        &oci(&out_dir, "pinned"),
        "--format",
        "json",
    ]));
    assert_eq!(again["blobs_copied"], 0, "{again}");
    assert_eq!(layout_ref(&out_dir, "pinned").digest, image.manifest.digest);
    assert_eq!(layout_ref(&out_dir, "v1").digest, image.manifest.digest);
}

#[test]
fn pull_multi_arch_picks_host_platform_or_keeps_index_with_all() {
    let reg = ReferenceRegistry::start();
    let cli = Cli::new();
    let t = tmp();
    let src = sub(&t, "src");
    let index = multi_arch_layout(&src, "v1", 41);
    http_push_index(&reg.addr, "pull/multi", "v1", &src, &index);
    let reference = format!("{}/pull/multi:v1", reg.addr);

    // Default: this machine's platform (linux/amd64 on the CI machines), as docker pull.
    let host = host_image(&index);
    let default_dir = sub(&t, "default");
    let out = parse_json(&cli.ok(&[
        "pull",
        &reference,
        &format!("oci:{}", path(&default_dir)),
        "--format",
        "json",
    ]));
    assert_eq!(out["digest"], host.manifest.digest, "{out}");
    let root = layout_ref(&default_dir, "v1");
    assert_eq!(root.digest, host.manifest.digest);
    let blobs = assert_blobs_hash_to_names(&default_dir);
    for b in host.blobs() {
        assert!(blobs.contains(&b.digest));
    }
    for other in index
        .images
        .iter()
        .filter(|i| i.architecture != host_arch())
    {
        for b in other.blobs() {
            assert!(!blobs.contains(&b.digest), "other platform's blob pulled");
        }
    }
    assert!(
        !blobs.contains(&index.index.digest),
        "index pulled without --all"
    );

    // --platform picks another one.
    let arm = index
        .images
        .iter()
        .find(|i| i.architecture == "arm64")
        .unwrap();
    let arm_dir = sub(&t, "arm");
    cli.ok(&[
        "pull",
        "--platform",
        "linux/arm64",
        &reference,
        &oci(&arm_dir, "arm"),
    ]);
    assert_eq!(layout_ref(&arm_dir, "arm").digest, arm.manifest.digest);
    assert_blobs_hash_to_names(&arm_dir);

    // --all keeps the index and everything under it.
    let all_dir = sub(&t, "all");
    let out = parse_json(&cli.ok(&[
        "pull",
        "--all",
        &reference,
        &oci(&all_dir, "v1"),
        "--format",
        "json",
    ]));
    assert_eq!(out["digest"], index.index.digest, "{out}");
    assert_eq!(out["manifests"], 3, "{out}");
    let root = layout_ref(&all_dir, "v1");
    assert_eq!(root.digest, index.index.digest);
    assert_eq!(root.media_type, MEDIA_TYPE_OCI_INDEX);
    let blobs = assert_blobs_hash_to_names(&all_dir);
    assert!(blobs.contains(&index.index.digest));
    for img in &index.images {
        assert!(blobs.contains(&img.manifest.digest));
        for b in img.blobs() {
            assert!(blobs.contains(&b.digest));
        }
    }
    assert_eq!(
        std::fs::read(blob_path(&all_dir, &index.index.digest)).unwrap(),
        index.index_bytes
    );

    // A platform the index lacks: not found, with the ones it has.
    let err = cli.fails(
        &[
            "pull",
            "--platform",
            "windows/amd64",
            &reference,
            &oci(&sub(&t, "none"), "x"),
        ],
        4,
    );
    assert!(err.contains("linux/arm64"), "{err}");
}

#[test]
fn pull_into_docker_archive() {
    let reg = ReferenceRegistry::start();
    let cli = Cli::new();
    let t = tmp();
    let src = sub(&t, "src");
    let image = single_image_layout(&src, "v1", 2, 51);
    http_push_image(&reg.addr, "pull/archive", "v1", &src, &image);
    let multi_src = sub(&t, "multi-src");
    let index = multi_arch_layout(&multi_src, "v1", 52);
    http_push_index(&reg.addr, "pull/archive-multi", "v1", &multi_src, &index);

    let tar = sub(&t, "image.tar");
    let reference = format!("{}/pull/archive:v1", reg.addr);
    let out = parse_json(&cli.ok(&[
        "pull",
        &reference,
        &format!("docker-archive:{}", path(&tar)),
        "--format",
        "json",
    ]));
    assert_eq!(out["digest"], image.manifest.digest, "{out}");

    let x = sub(&t, "x");
    untar(&tar, &x);
    let blobs = assert_blobs_hash_to_names(&x);
    // docker load's manifest.json: one image, its config, its layers in order, its name.
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(x.join("manifest.json")).unwrap()).unwrap();
    let entries = manifest.as_array().expect("manifest.json is a list");
    assert_eq!(entries.len(), 1, "{manifest}");
    let e = &entries[0];
    let hex = |d: &str| d.strip_prefix("sha256:").unwrap().to_string();
    assert_eq!(
        e["Config"],
        format!("blobs/sha256/{}", hex(&image.config.digest)),
        "{manifest}"
    );
    let layers: Vec<String> = image
        .layers
        .iter()
        .map(|l| format!("blobs/sha256/{}", hex(&l.digest)))
        .collect();
    assert_eq!(e["Layers"], json!(layers), "{manifest}");
    assert_eq!(e["RepoTags"], json!([reference]), "{manifest}");
    for b in image.blobs() {
        assert!(blobs.contains(&b.digest));
    }
    // The Docker 25+ OCI index inside points at the pulled manifest.
    let idx: Value = serde_json::from_slice(&std::fs::read(x.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        idx["manifests"][0]["digest"], image.manifest.digest,
        "{idx}"
    );
    assert_eq!(
        std::fs::read(blob_path(&x, &image.manifest.digest)).unwrap(),
        image.manifest_bytes
    );

    // From an index: the host's platform; --all cannot go into a one-image archive.
    let tar2 = sub(&t, "multi.tar");
    let multi_ref = format!("{}/pull/archive-multi:v1", reg.addr);
    let out = parse_json(&cli.ok(&[
        "pull",
        &multi_ref,
        &format!("docker-archive:{}", path(&tar2)),
        "--format",
        "json",
    ]));
    let host = host_image(&index);
    assert_eq!(out["digest"], host.manifest.digest, "{out}");
    let x2 = sub(&t, "x2");
    untar(&tar2, &x2);
    assert_blobs_hash_to_names(&x2);
    let m2: Value =
        serde_json::from_slice(&std::fs::read(x2.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(
        m2[0]["Config"],
        format!("blobs/sha256/{}", hex(&host.config.digest))
    );
    cli.fails(
        &[
            "pull",
            "--all",
            &multi_ref,
            &format!("docker-archive:{}", path(&sub(&t, "all.tar"))),
        ],
        2,
    );
    assert!(!sub(&t, "all.tar").exists());
}

// ---------------------------------------------------------------------------------------------
// 3. cp between Kura and the reference registry
// ---------------------------------------------------------------------------------------------

#[test]
fn cp_between_kura_and_reference_registry() {
    let reg = ReferenceRegistry::start();
    let kura = KuraServer::start();
    let cli = Cli::new();
    let t = tmp();
    let multi_src = sub(&t, "multi");
    let index = multi_arch_layout(&multi_src, "v1", 61);
    http_push_index(&kura.addr, "proj/multi", "v1", &multi_src, &index);
    let single_src = sub(&t, "single");
    let image = single_image_layout(&single_src, "v1", 2, 62);
    http_push_image(&reg.addr, "src/single", "v1", &single_src, &image);

    // Kura → docker-registry, the whole index.
    let out = parse_json(&cli.ok(&[
        "cp",
        "--all",
        &format!("{}/proj/multi:v1", kura.addr),
        &format!("{}/mirror/multi:v1", reg.addr),
        "--format",
        "json",
    ]));
    assert_eq!(out["digest"], index.index.digest, "{out}");
    assert_eq!(out["blobs_copied"], 6, "{out}");
    assert_manifest(&reg.addr, "mirror/multi", "v1", &index.index.digest);
    assert_manifest(&kura.addr, "proj/multi", "v1", &index.index.digest);
    for img in &index.images {
        assert_manifest(
            &reg.addr,
            "mirror/multi",
            &img.manifest.digest,
            &img.manifest.digest,
        );
        for b in img.blobs() {
            assert_eq!(blob_status(&reg.addr, "mirror/multi", &b.digest), 200);
        }
    }

    // docker-registry → Kura, a single image.
    let out = parse_json(&cli.ok(&[
        "cp",
        &format!("{}/src/single:v1", reg.addr),
        &format!("{}/proj/single:v1", kura.addr),
        "--format",
        "json",
    ]));
    assert_eq!(out["digest"], image.manifest.digest, "{out}");
    let on_kura = assert_manifest(&kura.addr, "proj/single", "v1", &image.manifest.digest);
    assert_eq!(on_kura, image.manifest_bytes);
    for b in image.blobs() {
        assert_eq!(blob_status(&kura.addr, "proj/single", &b.digest), 200);
    }

    // docker-registry → Kura, the index back (--all): same digest on both sides.
    let out = parse_json(&cli.ok(&[
        "cp",
        "--all",
        &format!("{}/mirror/multi:v1", reg.addr),
        &format!("{}/proj/back:v1", kura.addr),
        "--format",
        "json",
    ]));
    assert_eq!(out["digest"], index.index.digest, "{out}");
    let back = assert_manifest(&kura.addr, "proj/back", "v1", &index.index.digest);
    assert_eq!(back, index.index_bytes);

    // Without --all, cp from an index copies the host's platform only.
    let host = host_image(&index);
    let out = parse_json(&cli.ok(&[
        "cp",
        &format!("{}/proj/multi:v1", kura.addr),
        &format!("{}/mirror/host:v1", reg.addr),
        "--format",
        "json",
    ]));
    assert_eq!(out["digest"], host.manifest.digest, "{out}");
    assert_manifest(&reg.addr, "mirror/host", "v1", &host.manifest.digest);

    // Copying again changes nothing and sends nothing.
    let again = parse_json(&cli.ok(&[
        "cp",
        "--all",
        &format!("{}/proj/multi:v1", kura.addr),
        &format!("{}/mirror/multi:v1", reg.addr),
        "--format",
        "json",
    ]));
    assert_eq!(again["blobs_copied"], 0, "{again}");
}

// ---------------------------------------------------------------------------------------------
// 4. ls
// ---------------------------------------------------------------------------------------------

#[test]
fn ls_catalog_and_tag_table() {
    let reg = ReferenceRegistry::start();
    let cli = Cli::new();
    let t = tmp();
    let single_src = sub(&t, "single");
    let image = single_image_layout(&single_src, "v1", 3, 71);
    http_push_image(&reg.addr, "ls/app", "v1", &single_src, &image);
    http_push_image(&reg.addr, "ls/app", "v2", &single_src, &image);
    let multi_src = sub(&t, "multi");
    let index = multi_arch_layout(&multi_src, "v1", 72);
    http_push_index(&reg.addr, "ls/multi", "v1", &multi_src, &index);
    http_push_image(&reg.addr, "other", "latest", &single_src, &image);

    // Catalog.
    let text = cli.ok(&["ls", &reg.addr]);
    let repos: Vec<&str> = text.lines().collect();
    assert_eq!(repos, vec!["ls/app", "ls/multi", "other"], "{text}");
    let j = parse_json(&cli.ok(&["ls", &reg.addr, "--format", "json"]));
    assert_eq!(j, json!(["ls/app", "ls/multi", "other"]));
    // KURA_REGISTRY / --registry stands in for the argument.
    let text = cli.ok(&["ls", "--registry", &reg.addr]);
    assert_eq!(text.lines().count(), 3, "{text}");

    // Tag table, docker images style.
    let text = cli.ok(&["ls", &format!("{}/ls/app", reg.addr)]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    for col in ["REPOSITORY", "TAG", "DIGEST", "SIZE", "CREATED", "PLATFORM"] {
        assert!(lines[0].contains(col), "{text}");
    }
    let short: String = image.manifest.digest.chars().take(19).collect();
    for (line, tag) in lines[1..].iter().zip(["v1", "v2"]) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cols[0], format!("{}/ls/app", reg.addr), "{text}");
        assert_eq!(cols[1], tag, "{text}");
        assert_eq!(cols[2], short, "{text}");
        assert_eq!(*cols.last().unwrap(), "linux/amd64", "{text}");
        assert!(line.contains(" ago"), "created column: {text}");
    }
    let full = cli.ok(&["ls", "--no-trunc", &format!("{}/ls/app", reg.addr)]);
    assert!(full.contains(&image.manifest.digest), "{full}");
    let quiet = cli.ok(&["ls", "-q", &format!("{}/ls/app", reg.addr)]);
    assert_eq!(quiet.lines().collect::<Vec<_>>(), vec!["v1", "v2"]);

    // JSON rows with sizes and platforms.
    let j = parse_json(&cli.ok(&["ls", &format!("{}/ls/app", reg.addr), "--format", "json"]));
    let rows = j.as_array().expect("rows");
    assert_eq!(rows.len(), 2, "{j}");
    for row in rows {
        assert_eq!(row["digest"], image.manifest.digest, "{row}");
        assert_eq!(row["media_type"], MEDIA_TYPE_OCI_MANIFEST, "{row}");
        assert_eq!(row["size"], total_size(&image), "{row}");
        assert_eq!(row["platforms"], json!(["linux/amd64"]), "{row}");
        assert_eq!(row["created"], "2024-01-01T00:00:00Z", "{row}");
    }
    let j = parse_json(&cli.ok(&["ls", &format!("{}/ls/multi", reg.addr), "--format", "json"]));
    let row = &j[0];
    assert_eq!(j.as_array().unwrap().len(), 1, "{j}");
    assert_eq!(row["tag"], "v1", "{row}");
    assert_eq!(row["digest"], index.index.digest, "{row}");
    assert_eq!(row["media_type"], MEDIA_TYPE_OCI_INDEX, "{row}");
    let sum: u64 = index.images.iter().map(total_size).sum();
    assert_eq!(row["size"], sum, "{row}");
    assert_eq!(
        row["platforms"],
        json!(["linux/amd64", "linux/arm64/v8"]),
        "{row}"
    );

    // One tag only, and a repository that does not exist.
    let j = parse_json(&cli.ok(&["ls", &format!("{}/ls/app:v2", reg.addr), "--format", "json"]));
    assert_eq!(j.as_array().unwrap().len(), 1, "{j}");
    assert_eq!(j[0]["tag"], "v2");
    cli.fails(&["ls", &format!("{}/ls/nope", reg.addr)], 4);
}

// ---------------------------------------------------------------------------------------------
// 5. inspect
// ---------------------------------------------------------------------------------------------

#[test]
fn inspect_text_json_and_raw() {
    let reg = ReferenceRegistry::start();
    let cli = Cli::new();
    let t = tmp();
    let single_src = sub(&t, "single");
    let image = single_image_layout(&single_src, "v1", 3, 81);
    http_push_image(&reg.addr, "insp/app", "v1", &single_src, &image);
    let multi_src = sub(&t, "multi");
    let index = multi_arch_layout(&multi_src, "v1", 82);
    http_push_index(&reg.addr, "insp/multi", "v1", &multi_src, &index);
    let reference = format!("{}/insp/app:v1", reg.addr);

    // Text.
    let text = cli.ok(&["inspect", &reference]);
    assert!(
        text.contains(&format!("Digest:       {}", image.manifest.digest)),
        "{text}"
    );
    assert!(
        text.contains(&format!("MediaType:    {MEDIA_TYPE_OCI_MANIFEST}")),
        "{text}"
    );
    assert!(text.contains("Platform:     linux/amd64"), "{text}");
    assert!(
        text.contains("Created:      2024-01-01T00:00:00Z"),
        "{text}"
    );
    assert!(
        text.contains(&format!("Config:       {}", image.config.digest)),
        "{text}"
    );
    assert!(text.contains("Layers:       3 "), "{text}");
    for l in &image.layers {
        assert!(text.contains(&l.digest), "{text}");
    }
    assert!(text.contains("Referrers:    0"), "{text}");
    assert!(text.contains(r#"Cmd:          ["/bin/sh"]"#), "{text}");

    // JSON.
    let j = parse_json(&cli.ok(&["inspect", &reference, "--format", "json"]));
    assert_eq!(j["digest"], image.manifest.digest, "{j}");
    assert_eq!(j["media_type"], MEDIA_TYPE_OCI_MANIFEST);
    assert_eq!(j["size"], image.manifest_bytes.len() as u64);
    assert_eq!(j["platform"], "linux/amd64");
    assert_eq!(j["created"], "2024-01-01T00:00:00Z");
    assert_eq!(
        j["manifest"],
        serde_json::from_slice::<Value>(&image.manifest_bytes).unwrap()
    );
    assert_eq!(j["config"]["rootfs"]["diff_ids"], json!(image.diff_ids));
    let layer_digests: Vec<&str> = j["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap())
        .collect();
    let want: Vec<&str> = image.layers.iter().map(|l| l.digest.as_str()).collect();
    assert_eq!(layer_digests, want);
    assert_eq!(j["referrers"], json!([]));

    // By digest, the same.
    let by_digest = parse_json(&cli.ok(&[
        "inspect",
        &format!("{}/insp/app@{}", reg.addr, image.manifest.digest),
        "--format",
        "json",
    ]));
    assert_eq!(by_digest["digest"], image.manifest.digest);

    // --raw: byte for byte what the registry serves (and what was pushed).
    let raw = cli.run(&["inspect", "--raw", &reference]);
    assert!(
        raw.status.success(),
        "{}",
        String::from_utf8_lossy(&raw.stderr)
    );
    let served = get_manifest(&reg.addr, "insp/app", "v1").body;
    assert_eq!(raw.stdout, served);
    assert_eq!(raw.stdout, image.manifest_bytes);
    let raw_index = cli.run(&["inspect", "--raw", &format!("{}/insp/multi:v1", reg.addr)]);
    assert!(raw_index.status.success());
    assert_eq!(
        raw_index.stdout,
        get_manifest(&reg.addr, "insp/multi", "v1").body
    );
    assert_eq!(raw_index.stdout, index.index_bytes);

    // An index: its platforms.
    let j = parse_json(&cli.ok(&[
        "inspect",
        &format!("{}/insp/multi:v1", reg.addr),
        "--format",
        "json",
    ]));
    assert_eq!(j["digest"], index.index.digest, "{j}");
    assert_eq!(j["media_type"], MEDIA_TYPE_OCI_INDEX);
    let platforms = j["platforms"].as_array().expect("platforms");
    assert_eq!(platforms.len(), 2, "{j}");
    for (p, img) in platforms.iter().zip(&index.images) {
        assert_eq!(p["digest"], img.manifest.digest, "{j}");
        assert_eq!(p["platform"]["architecture"], img.architecture, "{j}");
        assert_eq!(p["platform"]["os"], "linux", "{j}");
    }
    let text = cli.ok(&["inspect", &format!("{}/insp/multi:v1", reg.addr)]);
    assert!(text.contains("Platforms:    2"), "{text}");
    assert!(text.contains("linux/arm64/v8"), "{text}");

    // Missing tag: not found.
    let err = cli.fails(&["inspect", &format!("{}/insp/app:nope", reg.addr)], 4);
    assert!(err.contains("nope"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// 6. rm
// ---------------------------------------------------------------------------------------------

#[test]
fn rm_by_digest_deletes_the_manifest() {
    let reg = ReferenceRegistry::start();
    let cli = Cli::new();
    let t = tmp();
    let layout = OciLayout::create(&sub(&t, "src"));
    let a = dated_image(&layout, 1, "2024-01-01T00:00:00Z");
    let b = dated_image(&layout, 2, "2024-01-02T00:00:00Z");
    http_push_image(&reg.addr, "rm/app", "a", &layout.root, &a);
    http_push_image(&reg.addr, "rm/app", "b", &layout.root, &b);

    let target = format!("{}/rm/app@{}", reg.addr, a.manifest.digest);
    let out = cli.ok(&["rm", &target]);
    assert!(out.contains("Deleted"), "{out}");
    assert!(out.contains(&a.manifest.digest), "{out}");
    assert_eq!(
        manifest_status(&reg.addr, "rm/app", &a.manifest.digest),
        404
    );
    assert_eq!(manifest_status(&reg.addr, "rm/app", "a"), 404);
    assert_eq!(
        http_tags(&reg.addr, "rm/app"),
        BTreeSet::from(["b".to_string()])
    );
    // The other image is untouched.
    assert_manifest(&reg.addr, "rm/app", "b", &b.manifest.digest);

    // Again: it is gone, so not found.
    cli.fails(&["rm", &target], 4);

    // JSON output.
    let j = parse_json(&cli.ok(&[
        "rm",
        &format!("{}/rm/app@{}", reg.addr, b.manifest.digest),
        "--format",
        "json",
    ]));
    assert_eq!(j["deleted"].as_array().map(Vec::len), Some(1), "{j}");
    assert_eq!(
        manifest_status(&reg.addr, "rm/app", &b.manifest.digest),
        404
    );
}

/// distribution 2.8 cannot delete a tag (only manifests by digest): the command must say so,
/// exit with 7 ("the registry does not support the operation") and delete nothing.
#[test]
fn rm_by_tag_is_unsupported_on_reference_registry() {
    let reg = ReferenceRegistry::start();
    let cli = Cli::new();
    let t = tmp();
    let src = sub(&t, "src");
    let image = single_image_layout(&src, "v1", 1, 91);
    http_push_image(&reg.addr, "rm/tagged", "v1", &src, &image);
    http_push_image(&reg.addr, "rm/tagged", "keep", &src, &image);

    let out = cli.run(&["rm", &format!("{}/rm/tagged:v1", reg.addr)]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        !out.status.success(),
        "rm by tag claimed success against distribution 2.8\nstdout: {stdout}\nstderr: {stderr}"
    );
    assert!(!stdout.contains("Deleted"), "{stdout}");
    // A clear message: it is about deleting a tag, and deleting by digest is the way out.
    let lower = stderr.to_lowercase();
    assert!(lower.contains("tag"), "{stderr}");
    assert!(lower.contains("digest"), "{stderr}");
    assert_eq!(
        out.status.code(),
        Some(7),
        "expected exit 7 (unsupported)\nstderr: {stderr}"
    );

    // Nothing was deleted.
    assert_manifest(&reg.addr, "rm/tagged", "v1", &image.manifest.digest);
    assert_manifest(&reg.addr, "rm/tagged", "keep", &image.manifest.digest);
    assert_eq!(
        http_tags(&reg.addr, "rm/tagged"),
        BTreeSet::from(["keep".to_string(), "v1".to_string()])
    );

    // Scripts get the kind in JSON.
    let out = cli.run(&[
        "rm",
        &format!("{}/rm/tagged:v1", reg.addr),
        "--format",
        "json",
    ]);
    let err = parse_json(String::from_utf8_lossy(&out.stderr).trim());
    assert_eq!(err["error"]["kind"], "unsupported", "{err}");
    assert_eq!(err["error"]["exit_code"], 7, "{err}");
}

// ---------------------------------------------------------------------------------------------
// 7. prune (generic path)
// ---------------------------------------------------------------------------------------------

#[test]
fn prune_by_tag_glob_through_distribution_api() {
    let reg = ReferenceRegistry::start();
    let cli = Cli::new();
    let t = tmp();
    let layout = OciLayout::create(&sub(&t, "src"));
    let repo = "prune/app";
    let ci1 = dated_image(&layout, 1, "2024-01-01T00:00:00Z");
    let ci2 = dated_image(&layout, 2, "2024-02-01T00:00:00Z");
    let ci3 = dated_image(&layout, 3, "2024-03-01T00:00:00Z");
    let stable = dated_image(&layout, 4, "2023-06-01T00:00:00Z");
    let shared = dated_image(&layout, 5, "2023-01-01T00:00:00Z");
    for (tag, img) in [
        ("ci-1", &ci1),
        ("ci-2", &ci2),
        ("ci-3", &ci3),
        ("stable", &stable),
        ("ci-old", &shared),
        ("release", &shared),
    ] {
        http_push_image(&reg.addr, repo, tag, &layout.root, img);
    }
    let all_tags = http_tags(&reg.addr, repo);
    let target = format!("{}/{repo}", reg.addr);

    // Dry run: the two older ci-* images are candidates (the newest is kept; the one that is
    // also `release` is not all ci-*), and nothing is deleted.
    let j = parse_json(&cli.ok(&[
        "prune", &target, "--filter", "tag=ci-*", "--keep", "1", "--format", "json",
    ]));
    assert_eq!(j["dry_run"], true, "{j}");
    assert_eq!(j["count"], 2, "{j}");
    let listed: BTreeSet<String> = j["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["digest"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        listed,
        BTreeSet::from([ci1.manifest.digest.clone(), ci2.manifest.digest.clone()]),
        "{j}"
    );
    let text = cli.ok(&["prune", &target, "--filter", "tag=ci-*", "--keep", "1"]);
    assert!(text.contains(&ci1.manifest.digest), "{text}");
    assert!(text.contains(&ci2.manifest.digest), "{text}");
    assert!(!text.contains(&ci3.manifest.digest), "{text}");
    assert!(text.contains("2 artifacts would be deleted"), "{text}");
    for img in [&ci1, &ci2, &ci3, &stable, &shared] {
        assert_eq!(manifest_status(&reg.addr, repo, &img.manifest.digest), 200);
    }
    assert_eq!(http_tags(&reg.addr, repo), all_tags);

    // A repository glob goes through the catalog.
    let j = parse_json(&cli.ok(&[
        "prune",
        &format!("{}/prune/*", reg.addr),
        "--filter",
        "tag=ci-*",
        "--keep",
        "1",
        "--format",
        "json",
    ]));
    assert_eq!(j["count"], 2, "{j}");
    assert_eq!(j["artifacts"][0]["repository"], repo, "{j}");

    // --force deletes them, by digest.
    let j = parse_json(&cli.ok(&[
        "prune", &target, "--filter", "tag=ci-*", "--keep", "1", "--force", "--format", "json",
    ]));
    assert_eq!(j["dry_run"], false, "{j}");
    assert_eq!(j["count"], 2, "{j}");
    assert_eq!(j["failed"], 0, "{j}");
    assert_eq!(manifest_status(&reg.addr, repo, &ci1.manifest.digest), 404);
    assert_eq!(manifest_status(&reg.addr, repo, &ci2.manifest.digest), 404);
    assert_eq!(manifest_status(&reg.addr, repo, "ci-1"), 404);
    assert_eq!(manifest_status(&reg.addr, repo, "ci-2"), 404);
    assert_manifest(&reg.addr, repo, "ci-3", &ci3.manifest.digest);
    assert_manifest(&reg.addr, repo, "stable", &stable.manifest.digest);
    assert_manifest(&reg.addr, repo, "release", &shared.manifest.digest);
    assert_manifest(&reg.addr, repo, "ci-old", &shared.manifest.digest);

    // Nothing left to prune.
    let text = cli.ok(&[
        "prune", &target, "--filter", "tag=ci-*", "--keep", "1", "--force",
    ]);
    assert!(text.contains("Deleted 0 artifacts"), "{text}");

    // Untagged manifests cannot be listed through the distribution API.
    let err = cli.fails(&["prune", &target, "--filter", "dangling=true"], 7);
    assert!(err.contains("dangling"), "{err}");
    // No filter means dangling, as docker image prune.
    cli.fails(&["prune", &target], 7);
    cli.fails(&["prune", &target, "--force"], 7);
    assert_manifest(&reg.addr, repo, "ci-3", &ci3.manifest.digest);
    assert_manifest(&reg.addr, repo, "stable", &stable.manifest.digest);
}

#[test]
fn prune_until_deletes_only_older_images() {
    let reg = ReferenceRegistry::start();
    let cli = Cli::new();
    let t = tmp();
    let layout = OciLayout::create(&sub(&t, "src"));
    let repo = "prune/dated";
    let old = dated_image(&layout, 1, "2020-01-01T00:00:00Z");
    // Created a minute ago: younger than any sensible cut-off.
    let recent_time = (std::time::SystemTime::now() - std::time::Duration::from_secs(60))
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let recent_created = unix_to_rfc3339(recent_time);
    let recent = dated_image(&layout, 2, &recent_created);
    http_push_image(&reg.addr, repo, "old", &layout.root, &old);
    http_push_image(&reg.addr, repo, "recent", &layout.root, &recent);

    // until= alone selects untagged manifests (docker's default), which this registry cannot
    // list: that is refused. dangling=false asks for tagged images.
    let err = cli.fails(
        &[
            "prune",
            &format!("{}/{repo}", reg.addr),
            "--filter",
            "until=24h",
        ],
        7,
    );
    assert!(err.contains("dangling=false"), "{err}");
    let j = parse_json(&cli.ok(&[
        "prune",
        &format!("{}/{repo}", reg.addr),
        "--filter",
        "dangling=false",
        "--filter",
        "until=24h",
        "--force",
        "--format",
        "json",
    ]));
    assert_eq!(j["count"], 1, "{j}");
    assert_eq!(j["artifacts"][0]["digest"], old.manifest.digest, "{j}");
    assert_eq!(manifest_status(&reg.addr, repo, &old.manifest.digest), 404);
    assert_manifest(&reg.addr, repo, "recent", &recent.manifest.digest);
}

/// `YYYY-MM-DDTHH:MM:SSZ` of a Unix time (civil-from-days, proleptic Gregorian).
fn unix_to_rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

// ---------------------------------------------------------------------------------------------
// 8. search
// ---------------------------------------------------------------------------------------------

#[test]
fn search_falls_back_to_catalog() {
    let reg = ReferenceRegistry::start();
    let cli = Cli::new();
    let t = tmp();
    let src = sub(&t, "src");
    let image = single_image_layout(&src, "v1", 1, 101);
    for repo in ["search/alpha-web", "search/beta-db", "tools/web-proxy"] {
        http_push_image(&reg.addr, repo, "v1", &src, &image);
    }

    let text = cli.ok(&["search", "--registry", &reg.addr, "web"]);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].contains("NAME"), "{text}");
    assert_eq!(lines.len(), 3, "{text}");
    assert!(text.contains("search/alpha-web"), "{text}");
    assert!(
        text.contains(&format!("{}/tools/web-proxy", reg.addr)),
        "{text}"
    );
    assert!(!text.contains("beta-db"), "{text}");

    let j = parse_json(&cli.ok(&["search", "--registry", &reg.addr, "WEB", "--format", "json"]));
    assert_eq!(j, json!(["search/alpha-web", "tools/web-proxy"]), "{j}");
    let j = parse_json(&cli.ok(&[
        "search",
        "--registry",
        &reg.addr,
        "web",
        "--limit",
        "1",
        "--format",
        "json",
    ]));
    assert_eq!(j.as_array().map(Vec::len), Some(1), "{j}");
    let q = cli.ok(&["search", "-q", "--registry", &reg.addr, "db"]);
    assert_eq!(q.lines().collect::<Vec<_>>(), vec!["search/beta-db"]);
    let j = parse_json(&cli.ok(&[
        "search",
        "--registry",
        &reg.addr,
        "nothing-like-this",
        "--format",
        "json",
    ]));
    assert_eq!(j, json!([]));
}

// ---------------------------------------------------------------------------------------------
// 9. tag
// ---------------------------------------------------------------------------------------------

#[test]
fn tag_on_reference_registry() {
    let reg = ReferenceRegistry::start();
    let cli = Cli::new();
    let t = tmp();
    let src = sub(&t, "src");
    let image = single_image_layout(&src, "v1", 2, 111);
    http_push_image(&reg.addr, "tag/app", "v1", &src, &image);
    let multi_src = sub(&t, "multi");
    let index = multi_arch_layout(&multi_src, "v1", 112);
    http_push_index(&reg.addr, "tag/multi", "v1", &multi_src, &index);

    // A bare tag: same repository.
    let out = cli.ok(&["tag", &format!("{}/tag/app:v1", reg.addr), "stable"]);
    assert!(out.contains(&image.manifest.digest), "{out}");
    let body = assert_manifest(&reg.addr, "tag/app", "stable", &image.manifest.digest);
    assert_eq!(body, image.manifest_bytes);
    assert_manifest(&reg.addr, "tag/app", "v1", &image.manifest.digest);

    // From a digest to a full reference in the same repository.
    let j = parse_json(&cli.ok(&[
        "tag",
        &format!("{}/tag/app@{}", reg.addr, image.manifest.digest),
        &format!("{}/tag/app:v1.0.1", reg.addr),
        "--format",
        "json",
    ]));
    assert_eq!(j["digest"], image.manifest.digest, "{j}");
    assert_manifest(&reg.addr, "tag/app", "v1.0.1", &image.manifest.digest);
    assert_eq!(
        http_tags(&reg.addr, "tag/app"),
        BTreeSet::from(["stable".into(), "v1".into(), "v1.0.1".into()])
    );

    // An index keeps its digest and media type.
    cli.ok(&["tag", &format!("{}/tag/multi:v1", reg.addr), "latest"]);
    let r = get_manifest(&reg.addr, "tag/multi", "latest");
    assert_eq!(r.status, 200);
    assert_eq!(sha256_digest(&r.body), index.index.digest);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some(MEDIA_TYPE_OCI_INDEX)
    );

    // Another repository of the same registry: blobs are mounted, the digest is the same.
    cli.ok(&[
        "tag",
        &format!("{}/tag/multi:v1", reg.addr),
        &format!("{}/tag/copy:v1", reg.addr),
    ]);
    assert_manifest(&reg.addr, "tag/copy", "v1", &index.index.digest);
    for img in &index.images {
        for b in img.blobs() {
            assert_eq!(blob_status(&reg.addr, "tag/copy", &b.digest), 200);
        }
    }

    // A missing source: not found, nothing created.
    cli.fails(&["tag", &format!("{}/tag/app:nope", reg.addr), "x"], 4);
    assert_eq!(manifest_status(&reg.addr, "tag/app", "x"), 404);
}
