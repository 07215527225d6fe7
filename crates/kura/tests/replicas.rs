//! Several `kura serve` processes (replicas) sharing ONE PostgreSQL database and ONE S3 prefix,
//! black-box over loopback HTTP:
//!
//! * a chunked upload whose PATCHes hop between replicas and whose closing PUT goes to yet
//!   another one (S3 parts and tails written by one replica, continued by the next);
//! * skopeo pushing through one replica and pulling through another;
//! * concurrent pushes of images sharing layers, spread over replicas, and a race of manifest
//!   PUTs for one tag;
//! * a replica killed (SIGKILL) in the middle of a streamed PATCH, the upload resumed and
//!   finished through a survivor, and the same blob pushed again as a duplicate;
//! * single-request pushes (`POST ?digest=` with the body) of blobs spanning several S3 parts.
//!
//! Replicas need shared stores, so these tests always use PostgreSQL + S3, whatever
//! `KURA_TEST_BACKEND` says; the harness panics with a clear message when the services are not
//! configured (scripts/test starts them and sets `KURA_TEST_PG_URL`, `KURA_TEST_S3_*`).

mod common;

use std::ffi::OsStr;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::api::{
    OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, describe, descriptor, header, image_manifest, sha256,
    with_query,
};
use common::oci_layout::{self, OciLayout};
use common::{Backends, KuraServer};
use futures_util::StreamExt;
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use reqwest::{Client, Response, StatusCode};

const MIB: usize = 1 << 20;
/// The S3 backend's multipart part size (kura-storage `s3::PART_SIZE`); sizes below are chosen
/// so that parts and tails straddle requests handled by different replicas.
const S3_PART: usize = 8 * MIB;
/// Upper bound for each test; nextest's own limit is far above it.
const TEST_BUDGET: Duration = Duration::from_secs(300);
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json";

/// Replicas share the metadata database and the bucket prefix: always PostgreSQL + S3.
const SHARED: Backends = Backends {
    postgres: true,
    s3: true,
};

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// `n` replicas over one database and one S3 prefix. Replica 0 is "A", 1 "B", and so on.
struct Cluster {
    tmp: tempfile::TempDir,
    replicas: Vec<KuraServer>,
}

impl Cluster {
    fn start(n: usize) -> Cluster {
        let started = Instant::now();
        let tmp = tempfile::tempdir().expect("tempdir");
        let a_dir = tmp.path().join("replica-0");
        let a = KuraServer::start_in_with_backends(&a_dir, &SHARED, &[], &[]);
        let mut replicas = vec![a];
        for i in 1..n {
            let dir = tmp.path().join(format!("replica-{i}"));
            Backends::share(&a_dir, &dir);
            replicas.push(KuraServer::start_in_with_backends(&dir, &SHARED, &[], &[]));
        }
        eprintln!(
            "started {n} replicas in {:?}: {}",
            started.elapsed(),
            replicas
                .iter()
                .map(|r| r.addr.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        Cluster { tmp, replicas }
    }

    fn dir(&self, i: usize) -> PathBuf {
        self.tmp.path().join(format!("replica-{i}"))
    }

    fn r(&self, i: usize) -> &KuraServer {
        &self.replicas[i % self.replicas.len()]
    }

    /// Starts replica `i` again over its data directory (after [`KuraServer::kill`]).
    fn restart(&mut self, i: usize) {
        let server = KuraServer::start_in_with_backends(&self.dir(i), &SHARED, &[], &[]);
        eprintln!("replica {} restarted on {}", name(i), server.addr);
        self.replicas[i] = server;
    }
}

fn name(i: usize) -> char {
    (b'A' + i as u8) as char
}

fn http() -> Client {
    Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(120))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("reqwest client")
}

/// Runs a test body under [`TEST_BUDGET`].
async fn bounded<F: Future<Output = ()>>(what: &str, f: F) {
    let started = Instant::now();
    tokio::time::timeout(TEST_BUDGET, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {TEST_BUDGET:?}"));
    eprintln!("{what}: total {:?}", started.elapsed());
}

/// Deterministic pseudo-random bytes.
fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    SmallRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

fn hdr(resp: &Response, name: &str) -> Option<String> {
    header(resp.headers(), name).map(str::to_string)
}

/// Upload size implied by a `Range: 0-<last>` header. The server sends `0-0` for an empty
/// upload; no upload in these tests ever holds exactly one byte, so `0-0` means 0.
fn range_size(range: &str) -> u64 {
    let last: u64 = range
        .strip_prefix("0-")
        .unwrap_or_else(|| panic!("Range {range:?} does not start at 0"))
        .parse()
        .unwrap_or_else(|_| panic!("Range {range:?} is not 0-N"));
    if last == 0 { 0 } else { last + 1 }
}

async fn expect_status(resp: Response, status: StatusCode, what: &str) -> Response {
    if resp.status() != status {
        panic!("{what}: expected {status}, got {}", describe(resp).await);
    }
    resp
}

/// POST an upload session on `server`; returns the Location path.
async fn start_upload(c: &Client, server: &KuraServer, repo: &str) -> String {
    let url = server.url(&format!("/v2/{repo}/blobs/uploads/"));
    let resp = c
        .post(&url)
        .header("Content-Length", "0")
        .send()
        .await
        .unwrap();
    let resp = expect_status(resp, StatusCode::ACCEPTED, &format!("POST {url}")).await;
    assert_eq!(hdr(&resp, "range").as_deref(), Some("0-0"), "POST {url}");
    location_path(&resp)
}

/// The Location of an upload response as a path (the server sends paths; an absolute URL is
/// reduced to its path, so it can be sent to any replica).
fn location_path(resp: &Response) -> String {
    let loc = hdr(resp, "location").unwrap_or_else(|| panic!("no Location on {}", resp.url()));
    match loc.strip_prefix("http://") {
        Some(rest) => rest[rest.find('/').unwrap_or(rest.len())..].to_string(),
        None => loc,
    }
}

/// PATCH `chunk` at `start` to the upload at `loc` on `server`; expects 202 and the new Range.
/// Returns the next Location path.
async fn patch_chunk(
    c: &Client,
    server: &KuraServer,
    loc: &str,
    start: usize,
    chunk: &[u8],
) -> String {
    let end = start + chunk.len() - 1;
    let url = server.url(loc);
    let resp = c
        .patch(&url)
        .header("Content-Type", "application/octet-stream")
        .header("Content-Range", format!("{start}-{end}"))
        .body(chunk.to_vec())
        .send()
        .await
        .unwrap();
    let what = format!("PATCH {url} Content-Range {start}-{end}");
    let resp = expect_status(resp, StatusCode::ACCEPTED, &what).await;
    assert_eq!(
        hdr(&resp, "range").as_deref(),
        Some(format!("0-{end}").as_str()),
        "{what}: Range"
    );
    location_path(&resp)
}

/// GET the status of an upload: 204 and its size from `Range`.
async fn upload_size(c: &Client, server: &KuraServer, loc: &str) -> u64 {
    let url = server.url(loc);
    let resp = c.get(&url).send().await.unwrap();
    let resp = expect_status(resp, StatusCode::NO_CONTENT, &format!("GET {url}")).await;
    let range = hdr(&resp, "range").unwrap_or_else(|| panic!("GET {url}: no Range header"));
    range_size(&range)
}

/// Closing `PUT ?digest=` (with an optional final body); expects 201.
async fn finish_upload(c: &Client, server: &KuraServer, loc: &str, digest: &str, repo: &str) {
    let url = server.url(&with_query(loc, "digest", digest));
    let resp = c
        .put(&url)
        .header("Content-Length", "0")
        .send()
        .await
        .unwrap();
    let resp = expect_status(resp, StatusCode::CREATED, &format!("PUT {url}")).await;
    assert_eq!(
        hdr(&resp, "docker-content-digest").as_deref(),
        Some(digest),
        "PUT {url}"
    );
    let blob_loc = hdr(&resp, "location").expect("Location on blob PUT");
    assert!(
        blob_loc.ends_with(&format!("/v2/{repo}/blobs/{digest}")),
        "PUT {url}: blob Location {blob_loc}"
    );
}

/// Pushes a blob in two requests: POST on `post_on`, PUT with the whole body on `put_on`.
async fn push_blob(c: &Client, post_on: &KuraServer, put_on: &KuraServer, repo: &str, blob: &[u8]) {
    let digest = sha256(blob);
    let loc = start_upload(c, post_on, repo).await;
    let url = put_on.url(&with_query(&loc, "digest", &digest));
    let resp = c
        .put(&url)
        .header("Content-Type", "application/octet-stream")
        .body(blob.to_vec())
        .send()
        .await
        .unwrap();
    let resp = expect_status(resp, StatusCode::CREATED, &format!("PUT {url}")).await;
    assert_eq!(
        hdr(&resp, "docker-content-digest").as_deref(),
        Some(digest.as_str())
    );
}

/// Pushes a blob in one request (`POST ?digest=` with the body).
async fn push_blob_monolithic(c: &Client, server: &KuraServer, repo: &str, blob: &[u8]) {
    let digest = sha256(blob);
    let url = server.url(&format!("/v2/{repo}/blobs/uploads/?digest={digest}"));
    let resp = c
        .post(&url)
        .header("Content-Type", "application/octet-stream")
        .body(blob.to_vec())
        .send()
        .await
        .unwrap();
    expect_status(resp, StatusCode::CREATED, &format!("POST {url}")).await;
}

/// HEAD then GET a blob from `server`: sizes, digest header, and the sha256 of the body.
async fn assert_blob(c: &Client, server: &KuraServer, repo: &str, digest: &str, size: usize) {
    let url = server.url(&format!("/v2/{repo}/blobs/{digest}"));
    let resp = c.head(&url).send().await.unwrap();
    let resp = expect_status(resp, StatusCode::OK, &format!("HEAD {url}")).await;
    assert_eq!(
        hdr(&resp, "content-length").as_deref(),
        Some(size.to_string().as_str()),
        "HEAD {url}: Content-Length"
    );
    assert_eq!(
        hdr(&resp, "docker-content-digest").as_deref(),
        Some(digest),
        "HEAD {url}"
    );
    let resp = c.get(&url).send().await.unwrap();
    let resp = expect_status(resp, StatusCode::OK, &format!("GET {url}")).await;
    let body = resp.bytes().await.unwrap();
    assert_eq!(body.len(), size, "GET {url}: body length");
    assert_eq!(sha256(&body), digest, "GET {url}: sha256 of the body");
}

async fn assert_blob_absent(c: &Client, server: &KuraServer, repo: &str, digest: &str) {
    let url = server.url(&format!("/v2/{repo}/blobs/{digest}"));
    let resp = c.head(&url).send().await.unwrap();
    expect_status(resp, StatusCode::NOT_FOUND, &format!("HEAD {url}")).await;
}

/// GET a manifest; returns (Docker-Content-Digest, body) after checking they agree.
async fn get_manifest(
    c: &Client,
    server: &KuraServer,
    repo: &str,
    reference: &str,
) -> (String, Bytes) {
    let url = server.url(&format!("/v2/{repo}/manifests/{reference}"));
    let resp = c
        .get(&url)
        .header("Accept", MANIFEST_ACCEPT)
        .send()
        .await
        .unwrap();
    let resp = expect_status(resp, StatusCode::OK, &format!("GET {url}")).await;
    let digest = hdr(&resp, "docker-content-digest")
        .unwrap_or_else(|| panic!("GET {url}: no Docker-Content-Digest"));
    let body = resp.bytes().await.unwrap();
    assert_eq!(
        sha256(&body),
        digest,
        "GET {url}: body vs Docker-Content-Digest"
    );
    (digest, body)
}

async fn put_manifest(
    c: &Client,
    server: &KuraServer,
    repo: &str,
    reference: &str,
    body: &[u8],
) -> Response {
    c.put(server.url(&format!("/v2/{repo}/manifests/{reference}")))
        .header("Content-Type", OCI_MANIFEST)
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
}

async fn tags(c: &Client, server: &KuraServer, repo: &str) -> Vec<String> {
    let url = server.url(&format!("/v2/{repo}/tags/list"));
    let resp = c.get(&url).send().await.unwrap();
    let resp = expect_status(resp, StatusCode::OK, &format!("GET {url}")).await;
    let v: serde_json::Value = resp.json().await.unwrap();
    v["tags"]
        .as_array()
        .unwrap_or_else(|| panic!("GET {url}: no tags array: {v}"))
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect()
}

fn mib_s(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / MIB as f64 / d.as_secs_f64()
}

// ---------------------------------------------------------------------------------------------
// 1. One chunked upload, PATCHes alternating between replicas
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn chunked_upload_alternates_between_replicas() {
    // A, B, C take the POST and the PATCHes; D (a fourth replica) the closing PUT.
    let cluster = Cluster::start(4);
    bounded("chunked upload across replicas", async {
        let c = http();
        let repo = "replicas/chunked";
        let total = 20 * MIB;
        let chunk = 3 * MIB;
        assert!(!chunk.is_multiple_of(S3_PART) && !S3_PART.is_multiple_of(chunk));
        let blob = data(0x5eed_0001, total);
        let digest = sha256(&blob);

        let started = Instant::now();
        let mut loc = start_upload(&c, cluster.r(0), repo).await;
        eprintln!("POST on A -> {loc}");
        for (i, piece) in blob.chunks(chunk).enumerate() {
            let start = i * chunk;
            let on = (i + 1) % 3; // B, C, A, B, C, A, B
            let t = Instant::now();
            loc = patch_chunk(&c, cluster.r(on), &loc, start, piece).await;
            eprintln!(
                "PATCH {start}-{} on {} in {:?}",
                start + piece.len() - 1,
                name(on),
                t.elapsed()
            );
            // Every other replica sees the new position at once (shared metadata).
            let other = (on + 1) % 3;
            assert_eq!(
                upload_size(&c, cluster.r(other), &loc).await,
                (start + piece.len()) as u64,
                "upload status on {} after a PATCH on {}",
                name(other),
                name(on)
            );
            if i == 2 {
                // A chunk that does not start where the upload stands is refused by any
                // replica with 416 and the recorded Range, and changes nothing.
                let wrong = start + piece.len() + 1;
                let url = cluster.r(other).url(&loc);
                let resp = c
                    .patch(&url)
                    .header("Content-Type", "application/octet-stream")
                    .header("Content-Range", format!("{wrong}-{}", wrong + 9))
                    .body(vec![0u8; 10])
                    .send()
                    .await
                    .unwrap();
                let what = format!("PATCH {url} with Content-Range {wrong}-{}", wrong + 9);
                let resp = expect_status(resp, StatusCode::RANGE_NOT_SATISFIABLE, &what).await;
                assert_eq!(
                    hdr(&resp, "range").as_deref(),
                    Some(format!("0-{}", start + piece.len() - 1).as_str()),
                    "{what}: Range"
                );
            }
        }
        let t = Instant::now();
        finish_upload(&c, cluster.r(3), &loc, &digest, repo).await;
        eprintln!(
            "PUT on D in {:?}; {} MiB pushed in {:?} ({:.1} MiB/s)",
            t.elapsed(),
            total / MIB,
            started.elapsed(),
            mib_s(total, started.elapsed())
        );

        // The session is gone everywhere, and the blob is served identically by every replica.
        for i in 0..4 {
            let url = cluster.r(i).url(&loc);
            let resp = c.get(&url).send().await.unwrap();
            expect_status(resp, StatusCode::NOT_FOUND, &format!("GET {url} after PUT")).await;
        }
        for i in 0..4 {
            let t = Instant::now();
            assert_blob(&c, cluster.r(i), repo, &digest, total).await;
            eprintln!("blob verified on {} in {:?}", name(i), t.elapsed());
        }
        // A ranged read across the first part boundary, served by another replica.
        let url = cluster.r(1).url(&format!("/v2/{repo}/blobs/{digest}"));
        let (lo, hi) = (S3_PART - 100, S3_PART + 99);
        let resp = c
            .get(&url)
            .header("Range", format!("bytes={lo}-{hi}"))
            .send()
            .await
            .unwrap();
        let resp = expect_status(
            resp,
            StatusCode::PARTIAL_CONTENT,
            &format!("ranged GET {url}"),
        )
        .await;
        assert!(resp.bytes().await.unwrap().as_ref() == &blob[lo..=hi]);
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 2. skopeo: push through A, pull through B, inspect through C
// ---------------------------------------------------------------------------------------------

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn skopeo() -> PathBuf {
    if let Some(p) = std::env::var_os("KURA_SKOPEO") {
        return PathBuf::from(p);
    }
    find_on_path("skopeo").unwrap_or_else(|| {
        panic!(
            "skopeo is not installed (not found on PATH): run scripts/test, which installs it, \
             or set KURA_SKOPEO"
        )
    })
}

/// `skopeo --insecure-policy ARGS...`, bounded; panics with its output when it fails.
async fn skopeo_run(args: &[&str]) -> Vec<u8> {
    let bin = skopeo();
    let mut all: Vec<&OsStr> = vec![OsStr::new("--insecure-policy")];
    all.extend(args.iter().map(OsStr::new));
    let shown = format!("skopeo --insecure-policy {}", args.join(" "));
    eprintln!("$ {shown}");
    let started = Instant::now();
    let child = tokio::process::Command::new(&bin)
        .args(&all)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    let out = tokio::time::timeout(Duration::from_secs(180), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("`{shown}` did not finish within 180 s"))
        .unwrap();
    assert!(
        out.status.success(),
        "`{shown}` failed with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("  took {:?}", started.elapsed());
    out.stdout
}

#[tokio::test]
async fn skopeo_push_through_one_replica_pull_through_another() {
    skopeo(); // fail first, and clearly, when the client is missing
    let cluster = Cluster::start(3);
    bounded("skopeo across replicas", async {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        // One layer larger than an S3 part, so its upload is a multipart one.
        let mut layout = OciLayout::create(&src);
        let image = layout.add_image(
            42,
            "amd64",
            "linux",
            &[9 * MIB + 12_345, 300_000, 4_096, 1_500_000],
        );
        layout.tag("v1", &image.manifest);
        let reference = |i: usize| format!("docker://{}/replicas/skopeo:v1", cluster.r(i).addr);

        skopeo_run(&[
            "copy",
            "--preserve-digests",
            "--dest-tls-verify=false",
            &format!("oci:{}:v1", src.display()),
            &reference(0),
        ])
        .await;

        let dst = tmp.path().join("dst");
        skopeo_run(&[
            "copy",
            "--preserve-digests",
            "--src-tls-verify=false",
            &reference(1),
            &format!("oci:{}:v1", dst.display()),
        ])
        .await;
        let refs = oci_layout::read_refs(&dst);
        let pulled = refs
            .iter()
            .find(|(t, _)| t == "v1")
            .unwrap_or_else(|| panic!("v1 not in {}/index.json: {refs:?}", dst.display()));
        assert_eq!(
            pulled.1.digest, image.manifest.digest,
            "manifest digest after the round trip"
        );
        let mut blobs = image.blobs();
        blobs.push(image.manifest.clone());
        for blob in &blobs {
            let want = std::fs::read(oci_layout::blob_path(&src, &blob.digest)).unwrap();
            let got = std::fs::read(oci_layout::blob_path(&dst, &blob.digest))
                .unwrap_or_else(|e| panic!("{} missing from the pulled layout: {e}", blob.digest));
            assert!(
                got == want,
                "blob {} differs after the round trip",
                blob.digest
            );
        }

        let raw = skopeo_run(&["inspect", "--raw", "--tls-verify=false", &reference(2)]).await;
        assert_eq!(
            sha256(&raw),
            image.manifest.digest,
            "skopeo inspect --raw through C"
        );
        assert!(
            raw == image.manifest_bytes,
            "inspect --raw through C returned other bytes"
        );

        // And plain HTTP on C agrees about every blob.
        let c = http();
        for blob in image.blobs() {
            assert_blob(
                &c,
                cluster.r(2),
                "replicas/skopeo",
                &blob.digest,
                blob.size as usize,
            )
            .await;
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 3. Concurrent pushes spread over replicas; a race for one tag
// ---------------------------------------------------------------------------------------------

struct PushedImage {
    repo: String,
    tag: String,
    manifest: Vec<u8>,
    blobs: Vec<Vec<u8>>,
    pushed_via: (usize, usize),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pushes_across_replicas() {
    let cluster = Arc::new(Cluster::start(3));
    bounded("concurrent pushes across replicas", async {
        let c = http();
        const N: usize = 8;
        // Shared by every image: a base layer bigger than an S3 part (multipart upload).
        let base = Arc::new(data(0xba5e, 9 * MIB + 1_000));
        // Shared by the even images.
        let mid = Arc::new(data(0x0111d, 600_000));
        let barrier = Arc::new(tokio::sync::Barrier::new(N));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..N {
            let (cluster, base, mid, barrier, c) = (
                cluster.clone(),
                base.clone(),
                mid.clone(),
                barrier.clone(),
                c.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let repo = format!("replicas/conc-{}", i % 2);
                let tag = format!("v{i}");
                let config = serde_json::to_vec(&serde_json::json!({
                    "architecture": "amd64",
                    "os": "linux",
                    "rootfs": {"type": "layers", "diff_ids": []},
                    "config": {"Labels": {"image": i.to_string()}},
                }))
                .unwrap();
                let unique = data(0x1000 + i as u64, MIB + i * 4_099);
                let mut layers: Vec<Vec<u8>> = vec![base.to_vec()];
                if i % 2 == 0 {
                    layers.push(mid.to_vec());
                }
                layers.push(unique);
                let (blobs_via, manifest_via) = (i % 3, (i + 1) % 3);
                barrier.wait().await;
                let t = Instant::now();
                // Config in one request; layers as POST + PUT on the same replica.
                push_blob_monolithic(&c, cluster.r(blobs_via), &repo, &config).await;
                for layer in &layers {
                    push_blob(&c, cluster.r(blobs_via), cluster.r(blobs_via), &repo, layer).await;
                }
                let manifest = image_manifest(
                    &descriptor(OCI_CONFIG, &config),
                    &layers
                        .iter()
                        .map(|l| descriptor(OCI_LAYER, l))
                        .collect::<Vec<_>>(),
                    None,
                );
                let resp = put_manifest(&c, cluster.r(manifest_via), &repo, &tag, &manifest).await;
                let what = format!("PUT {repo}:{tag} on {}", name(manifest_via));
                let resp = expect_status(resp, StatusCode::CREATED, &what).await;
                assert_eq!(
                    hdr(&resp, "docker-content-digest").as_deref(),
                    Some(sha256(&manifest).as_str()),
                    "{what}"
                );
                eprintln!(
                    "image {i}: blobs via {}, manifest via {}, pushed in {:?}",
                    name(blobs_via),
                    name(manifest_via),
                    t.elapsed()
                );
                let mut blobs = vec![config];
                blobs.extend(layers);
                PushedImage {
                    repo,
                    tag,
                    manifest,
                    blobs,
                    pushed_via: (blobs_via, manifest_via),
                }
            }));
        }
        let mut images = Vec::new();
        for t in tasks {
            images.push(t.await.expect("push task"));
        }
        let pushed_bytes: usize = images
            .iter()
            .map(|im| im.blobs.iter().map(Vec::len).sum::<usize>())
            .sum();
        eprintln!(
            "{N} concurrent pushes ({} MiB of blobs) in {:?}",
            pushed_bytes / MIB,
            started.elapsed()
        );

        // Pull every image back through the replica that took neither its blobs nor its
        // manifest.
        let t = Instant::now();
        for (i, im) in images.iter().enumerate() {
            let via = (0..3)
                .find(|r| *r != im.pushed_via.0 && *r != im.pushed_via.1)
                .unwrap();
            let server = cluster.r(via);
            let (digest, body) = get_manifest(&c, server, &im.repo, &im.tag).await;
            assert_eq!(
                digest,
                sha256(&im.manifest),
                "image {i} by tag on {}",
                name(via)
            );
            assert!(
                body.as_ref() == im.manifest.as_slice(),
                "image {i}: manifest bytes"
            );
            let (by_digest, _) = get_manifest(&c, server, &im.repo, &digest).await;
            assert_eq!(by_digest, digest);
            for blob in &im.blobs {
                assert_blob(&c, server, &im.repo, &sha256(blob), blob.len()).await;
            }
        }
        for repo in ["replicas/conc-0", "replicas/conc-1"] {
            let want: Vec<String> = images
                .iter()
                .filter(|im| im.repo == repo)
                .map(|im| im.tag.clone())
                .collect();
            for r in 0..3 {
                assert_eq!(
                    tags(&c, cluster.r(r), repo).await,
                    want,
                    "tags of {repo} on {}",
                    name(r)
                );
            }
        }
        eprintln!(
            "all {N} images pulled back and verified in {:?}",
            t.elapsed()
        );

        // 8 concurrent PUTs of the same tag, each a different manifest, spread over replicas.
        let repo = "replicas/race";
        let layer = data(0x1a7e, 100_000);
        push_blob(&c, cluster.r(0), cluster.r(1), repo, &layer).await;
        let mut manifests = Vec::new();
        for i in 0..N {
            let config =
                format!(r#"{{"architecture":"amd64","os":"linux","race":{i}}}"#).into_bytes();
            push_blob_monolithic(&c, cluster.r(i), repo, &config).await;
            manifests.push(image_manifest(
                &descriptor(OCI_CONFIG, &config),
                &[descriptor(OCI_LAYER, &layer)],
                None,
            ));
        }
        let digests: Vec<String> = manifests.iter().map(|m| sha256(m)).collect();
        let barrier = Arc::new(tokio::sync::Barrier::new(N));
        let t = Instant::now();
        let mut tasks = Vec::new();
        for (i, m) in manifests.iter().enumerate() {
            let (cluster, barrier, c, m) = (cluster.clone(), barrier.clone(), c.clone(), m.clone());
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                let resp = put_manifest(&c, cluster.r(i), repo, "latest", &m).await;
                let what = format!("racing PUT {repo}:latest #{i} on {}", name(i % 3));
                expect_status(resp, StatusCode::CREATED, &what).await;
            }));
        }
        for t in tasks {
            t.await.expect("tag race task");
        }
        eprintln!("{N} racing tag PUTs done in {:?}", t.elapsed());
        let mut winner = None;
        for round in 0..3 {
            for r in 0..3 {
                let (digest, _) = get_manifest(&c, cluster.r(r), repo, "latest").await;
                assert!(
                    digests.contains(&digest),
                    "latest -> {digest}, not one of the pushed manifests"
                );
                match &winner {
                    None => winner = Some(digest),
                    Some(w) => assert_eq!(
                        &digest,
                        w,
                        "round {round}: replica {} resolves latest differently",
                        name(r)
                    ),
                }
            }
        }
        eprintln!(
            "tag race winner: manifest #{}",
            digests
                .iter()
                .position(|d| Some(d) == winner.as_ref())
                .unwrap()
        );
        for r in 0..3 {
            assert_eq!(tags(&c, cluster.r(r), repo).await, ["latest"]);
            // Losing manifests stay reachable by digest.
            for d in &digests {
                get_manifest(&c, cluster.r(r), repo, d).await;
            }
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 4. A replica killed in the middle of a streamed PATCH
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_killed_mid_upload_is_resumed_elsewhere() {
    let mut cluster = Cluster::start(3);
    bounded("crash mid-upload", async {
        let c = http();
        let repo = "replicas/crash";
        let first = 9 * MIB; // one full S3 part plus a 1 MiB tail
        let total = 25 * MIB + 777;
        let blob = data(0xc4a5, total);
        let digest = sha256(&blob);

        let loc = start_upload(&c, cluster.r(0), repo).await;
        patch_chunk(&c, cluster.r(0), &loc, 0, &blob[..first]).await;
        eprintln!("A recorded the first {} MiB", first / MIB);

        // A streamed PATCH to A whose body is produced slowly.
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
        let body = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<Bytes, std::io::Error>(b), rx))
        });
        let url = cluster.r(0).url(&loc);
        let patch = tokio::spawn({
            let c = c.clone();
            let url = url.clone();
            async move {
                c.patch(&url)
                    .header("Content-Type", "application/octet-stream")
                    .header("Content-Range", format!("{first}-{}", total - 1))
                    .body(reqwest::Body::wrap_stream(body))
                    .send()
                    .await
            }
        });
        // Enough to fill the second S3 part on A (which A uploads but never records), and more.
        let piece = 256 * 1024;
        let streamed_target = 10 * MIB;
        let mut sent = 0;
        let t = Instant::now();
        while sent < streamed_target {
            let p = Bytes::copy_from_slice(&blob[first + sent..first + sent + piece]);
            tx.send(p)
                .await
                .expect("the PATCH body is still being read");
            sent += piece;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Let A take in what was sent, then kill it while the request is still open.
        tokio::time::sleep(Duration::from_secs(1)).await;
        eprintln!(
            "streamed {} MiB to A in {:?}; killing A (pid {}) with SIGKILL",
            sent / MIB,
            t.elapsed(),
            cluster.r(0).pid()
        );
        cluster.replicas[0].kill();
        let outcome = tokio::time::timeout(Duration::from_secs(30), patch)
            .await
            .expect("the streamed PATCH ends once A is dead")
            .expect("PATCH task");
        match outcome {
            Err(e) => eprintln!("streamed PATCH failed as expected: {e}"),
            Ok(resp) => panic!(
                "the streamed PATCH to a killed replica got an answer: {}",
                describe(resp).await
            ),
        }
        drop(tx);

        // Through B: the upload holds only what was recorded, and no blob is visible.
        let recorded = upload_size(&c, cluster.r(1), &loc).await as usize;
        eprintln!(
            "B reports the upload at {recorded} bytes (first chunk {first}, streamed {sent})"
        );
        assert!(
            recorded >= first && recorded <= first + sent,
            "B reports {recorded} bytes; expected at least the recorded {first} and at most the \
             {} bytes ever sent",
            first + sent
        );
        assert_blob_absent(&c, cluster.r(1), repo, &digest).await;
        assert_blob_absent(&c, cluster.r(2), repo, &digest).await;

        // Resume on B from the reported offset, in two chunks, and finish there.
        let t = Instant::now();
        let mid = recorded + (total - recorded) / 2;
        let loc2 = patch_chunk(&c, cluster.r(1), &loc, recorded, &blob[recorded..mid]).await;
        let loc2 = patch_chunk(&c, cluster.r(1), &loc2, mid, &blob[mid..]).await;
        finish_upload(&c, cluster.r(1), &loc2, &digest, repo).await;
        eprintln!("resumed and finished on B in {:?}", t.elapsed());
        for r in [1, 2] {
            assert_blob(&c, cluster.r(r), repo, &digest, total).await;
        }

        // The killed replica comes back and serves the blob too.
        cluster.restart(0);
        assert_blob(&c, cluster.r(0), repo, &digest, total).await;

        // Finishing the finished session again is refused (it no longer exists).
        let url = cluster.r(2).url(&with_query(&loc2, "digest", &digest));
        let resp = c
            .put(&url)
            .header("Content-Length", "0")
            .send()
            .await
            .unwrap();
        expect_status(
            resp,
            StatusCode::NOT_FOUND,
            &format!("second closing PUT {url}"),
        )
        .await;

        // A brand-new upload of the same blob through C finishes as a duplicate (the first
        // copy stays the blob), and every replica still serves the same bytes.
        let t = Instant::now();
        let loc3 = start_upload(&c, cluster.r(2), repo).await;
        let half = total / 2;
        let loc3 = patch_chunk(&c, cluster.r(2), &loc3, 0, &blob[..half]).await;
        let url = cluster.r(2).url(&with_query(&loc3, "digest", &digest));
        let resp = c
            .put(&url)
            .header("Content-Type", "application/octet-stream")
            .header("Content-Range", format!("{half}-{}", total - 1))
            .body(blob[half..].to_vec())
            .send()
            .await
            .unwrap();
        let resp = expect_status(resp, StatusCode::CREATED, &format!("duplicate PUT {url}")).await;
        assert_eq!(
            hdr(&resp, "docker-content-digest").as_deref(),
            Some(digest.as_str())
        );
        eprintln!("duplicate upload through C finished in {:?}", t.elapsed());
        // And the same blob into another repository, in one request (a duplicate there too).
        push_blob_monolithic(&c, cluster.r(1), "replicas/crash-copy", &blob).await;
        for r in 0..3 {
            assert_blob(&c, cluster.r(r), repo, &digest, total).await;
            assert_blob(&c, cluster.r(r), "replicas/crash-copy", &digest, total).await;
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 5. Single-request pushes of blobs that span several S3 parts
// ---------------------------------------------------------------------------------------------

/// `POST /v2/<name>/blobs/uploads/?digest=` with the whole body (a monolithic push) of blobs of
/// one part plus a tail and of exactly two parts, each through another replica, read back
/// through every replica. Every blob is new (no duplicate hides a bad copy).
#[tokio::test]
async fn single_request_push_of_multi_part_blobs() {
    let cluster = Cluster::start(3);
    bounded("single-request pushes of multi-part blobs", async {
        let c = http();
        let repo = "replicas/monolithic";
        let mut failures = Vec::new();
        for (i, size) in [S3_PART + MIB + 5, 2 * S3_PART].into_iter().enumerate() {
            let blob = data(0x3030 + i as u64, size);
            let digest = sha256(&blob);
            let url = cluster
                .r(i)
                .url(&format!("/v2/{repo}/blobs/uploads/?digest={digest}"));
            let resp = c
                .post(&url)
                .header("Content-Type", "application/octet-stream")
                .body(blob.clone())
                .send()
                .await
                .unwrap();
            if resp.status() != StatusCode::CREATED {
                failures.push(format!(
                    "POST {url} ({size} bytes) on {}: expected 201, got {}",
                    name(i),
                    describe(resp).await
                ));
                continue;
            }
            for r in 0..3 {
                let url = cluster.r(r).url(&format!("/v2/{repo}/blobs/{digest}"));
                let resp = c.get(&url).send().await.unwrap();
                let status = resp.status();
                let length = hdr(&resp, "content-length");
                // Read what arrives, even when the connection ends before Content-Length.
                let mut body = Vec::new();
                let mut stream = resp.bytes_stream();
                let mut body_error = None;
                while let Some(piece) = stream.next().await {
                    match piece {
                        Ok(p) => body.extend_from_slice(&p),
                        Err(e) => {
                            body_error = Some(e.to_string());
                            break;
                        }
                    }
                }
                if status != StatusCode::OK || body.len() != size || sha256(&body) != digest {
                    // Does what arrived start with the bytes past the last full S3 part?
                    let tail_start = size - size % S3_PART;
                    let tail = !body.is_empty()
                        && tail_start + body.len() <= size
                        && body.as_slice() == &blob[tail_start..tail_start + body.len()];
                    failures.push(format!(
                        "GET {url} on {} after a single-request push of {size} bytes on {}: \
                         status {status}, Content-Length {length:?}, body {} bytes with sha256 \
                         {}, body error {body_error:?}{}",
                        name(r),
                        name(i),
                        body.len(),
                        sha256(&body),
                        if tail {
                            " (the body is the blob's bytes past its last full S3 part: only the tail \
                             was stored)"
                        } else {
                            ""
                        }
                    ));
                }
            }
        }
        assert!(
            failures.is_empty(),
            "single-request pushes of multi-part blobs are broken:\n{}",
            failures.join("\n")
        );
    })
    .await;
}
