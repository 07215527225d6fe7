//! Garbage collection, black-box: online GC racing concurrent pushes, mounts and deletes
//! (nothing a tag needs is ever lost, everything unreferenced goes), dry runs that predict the
//! real run exactly, run records and their access control, scheduled runs, one run at a time,
//! the `kura gc` command, the sweep of orphaned objects in blob storage (and never of a blob
//! being committed), deleted manifests that stay restorable (and keep their blobs) for the
//! retention period, the touch rule (mounts, re-pushes and references restart the grace
//! period), referrers following their subject, index children following their index, storage
//! deletes that fail and are retried, and the server's GC flags as defaults.
//!
//! The management API exists in `auth.mode = local` only, so every server here is started with
//! [`start_local`] and GC is driven with the administrator's credentials.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use common::api::{
    EMPTY_BLOB, OCI_CONFIG, OCI_EMPTY, OCI_INDEX, OCI_LAYER, OCI_MANIFEST, describe, descriptor,
    image_index, image_manifest, random_bytes, random_config, random_hex, sha256, with_query,
};
use common::auth::{ADMIN_PASSWORD, Cred, Reg, assert_error, read_json, start_local};
use common::{Backends, KuraServer};
use futures_util::StreamExt;
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

// ---- helpers --------------------------------------------------------------------------------

/// An image as pushed.
#[derive(Debug, Clone)]
struct Img {
    repo: String,
    digest: String,
    manifest_size: u64,
    /// Config first, then layers: (digest, size).
    blobs: Vec<(String, u64)>,
}

impl Img {
    fn descriptor(&self) -> Value {
        json!({"mediaType": OCI_MANIFEST, "digest": self.digest, "size": self.manifest_size})
    }

    fn blob_digests(&self) -> impl Iterator<Item = &String> {
        self.blobs.iter().map(|(d, _)| d)
    }
}

fn manifest_for(config: &[u8], layers: &[&[u8]]) -> Vec<u8> {
    let layers: Vec<Value> = layers.iter().map(|l| descriptor(OCI_LAYER, l)).collect();
    image_manifest(&descriptor(OCI_CONFIG, config), &layers, None)
}

fn blob_list(config: &[u8], layers: &[&[u8]]) -> Vec<(String, u64)> {
    std::iter::once(config)
        .chain(layers.iter().copied())
        .map(|b| (sha256(b), b.len() as u64))
        .collect()
}

/// Pushes a fresh config, `layers` and a manifest under `reference` (a tag or the digest) as
/// the administrator; every step must succeed.
async fn push_image(reg: &Reg, repo: &str, reference: Option<&str>, layers: &[&[u8]]) -> Img {
    let admin = Cred::admin();
    let config = random_config();
    reg.push_blob(&admin, repo, &config).await;
    for l in layers {
        reg.push_blob(&admin, repo, l).await;
    }
    let manifest = manifest_for(&config, layers);
    let digest = sha256(&manifest);
    let reference = reference.unwrap_or(&digest).to_string();
    let resp = reg.put_manifest(&admin, repo, &reference, &manifest).await;
    assert_eq!(
        resp.status(),
        StatusCode::CREATED,
        "PUT manifest {repo}:{reference}: {}",
        describe(resp).await
    );
    Img {
        repo: repo.to_string(),
        digest,
        manifest_size: manifest.len() as u64,
        blobs: blob_list(&config, layers),
    }
}

async fn delete_manifest(reg: &Reg, repo: &str, digest: &str) {
    let resp = reg
        .send(
            Method::DELETE,
            &format!("/v2/{repo}/manifests/{digest}"),
            &Cred::admin(),
        )
        .await;
    assert_eq!(
        resp.status(),
        StatusCode::ACCEPTED,
        "DELETE {repo}@{digest}: {}",
        describe(resp).await
    );
}

/// Status of `GET /v2/<repo>/blobs/<digest>`; on 200 the bytes must hash to the digest.
async fn blob_status(reg: &Reg, repo: &str, digest: &str) -> StatusCode {
    let resp = reg
        .send(
            Method::GET,
            &format!("/v2/{repo}/blobs/{digest}"),
            &Cred::admin(),
        )
        .await;
    let status = resp.status();
    if status == StatusCode::OK {
        let bytes = resp.bytes().await.expect("blob body");
        assert_eq!(
            sha256(&bytes),
            digest,
            "GET {repo} blob {digest} served other bytes"
        );
    }
    status
}

/// Status of `HEAD /v2/<repo>/blobs/<digest>`.
async fn head_blob(reg: &Reg, repo: &str, digest: &str) -> StatusCode {
    reg.send(
        Method::HEAD,
        &format!("/v2/{repo}/blobs/{digest}"),
        &Cred::admin(),
    )
    .await
    .status()
}

/// Pulls `repo:reference` like a client: the manifest (must be `want_digest`), then every blob
/// it references, checking each blob's bytes against its digest. Returns the blob digests.
async fn assert_pulls(reg: &Reg, repo: &str, reference: &str, want_digest: &str) -> Vec<String> {
    let resp = reg
        .req(
            Method::GET,
            &format!("/v2/{repo}/manifests/{reference}"),
            &Cred::admin(),
        )
        .header(ACCEPT, OCI_MANIFEST)
        .send()
        .await
        .expect("GET manifest");
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "pull {repo}:{reference}: {}",
        describe(resp).await
    );
    let body = resp.bytes().await.expect("manifest body");
    assert_eq!(
        sha256(&body),
        want_digest,
        "{repo}:{reference} serves another manifest"
    );
    let m: Value = serde_json::from_slice(&body).expect("manifest JSON");
    let mut digests = vec![m["config"]["digest"].as_str().unwrap().to_string()];
    for l in m["layers"].as_array().unwrap() {
        digests.push(l["digest"].as_str().unwrap().to_string());
    }
    for d in &digests {
        let status = blob_status(reg, repo, d).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{repo}:{reference} references blob {d}, which no longer pulls"
        );
    }
    digests
}

/// `POST /api/v1/system/gc` with `wait: true`; the run must have succeeded.
async fn gc(reg: &Reg, mut body: Value) -> Value {
    body["wait"] = json!(true);
    let run = reg
        .api_ok(
            Method::POST,
            "/api/v1/system/gc",
            &Cred::admin(),
            Some(body.clone()),
            200,
        )
        .await;
    assert_eq!(run["status"], "succeeded", "GC {body}: {run}");
    assert_eq!(run["kind"], "gc", "{run}");
    run
}

/// GC with grace 0 and retention 0 (frees everything unreferenced), plus `extra` fields.
async fn gc_now(reg: &Reg, extra: Value) -> Value {
    let mut body = json!({"grace_seconds": 0, "deleted_manifest_retention_seconds": 0});
    for (k, v) in extra.as_object().expect("object").clone() {
        body[k] = v;
    }
    gc(reg, body).await
}

fn counter(run: &Value, key: &str) -> u64 {
    run["result"][key]
        .as_u64()
        .unwrap_or_else(|| panic!("run without a numeric result.{key}: {run}"))
}

/// The counters of a run, without the samples.
fn counters(run: &Value) -> BTreeMap<String, u64> {
    [
        "deleted_manifests_purged",
        "manifests_deleted",
        "links_deleted",
        "blobs_deleted",
        "bytes_deleted",
        "orphans_deleted",
        "orphan_bytes_deleted",
    ]
    .iter()
    .map(|k| (k.to_string(), counter(run, k)))
    .collect()
}

fn sample(run: &Value, key: &str) -> BTreeSet<String> {
    run["result"][key]
        .as_array()
        .unwrap_or_else(|| panic!("run without result.{key}: {run}"))
        .iter()
        .map(|d| d.as_str().unwrap().to_string())
        .collect()
}

async fn totals(reg: &Reg) -> Value {
    reg.api_ok(
        Method::GET,
        "/api/v1/system/storage",
        &Cred::admin(),
        None,
        200,
    )
    .await["totals"]
        .clone()
}

fn total(t: &Value, key: &str) -> u64 {
    t[key]
        .as_u64()
        .unwrap_or_else(|| panic!("storage totals without {key}: {t}"))
}

/// Every file under a directory, recursively (a missing directory is empty).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in rd {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// Committed blob files of a filesystem-backed server (`DATA_DIR/blobs/blobs/...`).
/// Flags for tests that follow blobs into blob storage: no blob is kept inline in the
/// metadata database (which small pushes otherwise are, `storage.inline_max_bytes`).
const NO_INLINE: [&str; 2] = ["--storage-inline-max-bytes", "0"];

fn blob_files(data_dir: &Path) -> Vec<PathBuf> {
    files_under(&data_dir.join("blobs").join("blobs"))
}

/// The project's quota counters must equal a recount from the links.
async fn assert_usage_exact(reg: &Reg, project: &str) -> Value {
    let q = reg
        .api_ok(
            Method::GET,
            &format!("/api/v1/projects/{project}/quota?verify=true"),
            &Cred::admin(),
            None,
            200,
        )
        .await;
    assert_eq!(
        q["usage_bytes"], q["recomputed_bytes"],
        "maintained usage of {project} drifted from the links: {q}"
    );
    assert_eq!(
        q["blobs"], q["recomputed_blobs"],
        "maintained blob count of {project} drifted from the links: {q}"
    );
    q
}

fn is_fs() -> bool {
    Backends::from_env().blobs_on_disk()
}

/// Sleeps long enough for a cut-off "strictly before the run start" to be past every write.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(50)).await;
}

// ---- 1. online GC racing concurrent clients --------------------------------------------------

/// The grace period of the online test: 2 s, or 4 s where one push takes a good part of 2 s
/// (the S3 test service), so that a push's blobs are not collected before its manifest
/// arrives.
fn online_grace_secs() -> u64 {
    if Backends::from_env().s3 { 4 } else { 2 }
}
const CLIENTS: usize = 4;
/// How long the clients push and delete while GC runs in a loop (at least)...
const ACTIVITY: Duration = Duration::from_secs(6);
/// ...and at most, while no GC run has collected anything yet (slow backends: a round takes
/// longer there, so deleted images get older than the grace period later).
const MAX_ACTIVITY: Duration = Duration::from_secs(20);
/// Blobs up to this size are kept inline in the online test; the others are files.
const ONLINE_INLINE_MAX: u64 = 2048;

#[derive(Debug, Default)]
struct ClientStats {
    kept: Vec<(String, Img)>,
    deleted: Vec<Img>,
    /// Manifest PUTs answered MANIFEST_BLOB_UNKNOWN because GC took a blob the client had
    /// skipped (HEAD said present, the link was old and unreferenced), or one the client had
    /// pushed longer than the grace period before (slow backends): it then pushes again.
    retries: u64,
    mounts: u64,
}

/// How a client gets a blob into a repository before the manifest PUT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlobMode {
    /// Always upload.
    Upload,
    /// HEAD first, upload only when missing.
    SkipExisting,
    /// Mount from another repository (an upload when that one does not have it).
    Mount,
}

/// Gets `data` into `repo` according to `mode`.
async fn ensure_blob(reg: &Reg, repo: &str, from: &str, data: &[u8], mode: BlobMode) -> bool {
    let admin = Cred::admin();
    let digest = sha256(data);
    if mode == BlobMode::SkipExisting {
        let head = reg
            .send(Method::HEAD, &format!("/v2/{repo}/blobs/{digest}"), &admin)
            .await;
        if head.status() == StatusCode::OK {
            return false;
        }
        assert_eq!(head.status(), StatusCode::NOT_FOUND, "HEAD {repo} {digest}");
    }
    if mode == BlobMode::Mount {
        let resp = reg
            .req(
                Method::POST,
                &format!("/v2/{repo}/blobs/uploads/?mount={digest}&from={from}"),
                &admin,
            )
            .send()
            .await
            .expect("POST mount");
        match resp.status() {
            StatusCode::CREATED => return true,
            StatusCode::ACCEPTED => {
                // Not mountable (the source lost it): a normal upload session was opened.
                let loc = resp.headers()["location"].to_str().unwrap().to_string();
                let resp = reg
                    .req(Method::PUT, &with_query(&loc, "digest", &digest), &admin)
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .body(data.to_vec())
                    .send()
                    .await
                    .expect("PUT upload");
                assert_eq!(
                    resp.status(),
                    StatusCode::CREATED,
                    "finish upload after a refused mount: {}",
                    describe(resp).await
                );
                return false;
            }
            other => panic!(
                "mount {digest} into {repo}: {other}: {}",
                describe(resp).await
            ),
        }
    }
    reg.push_blob(&admin, repo, data).await;
    false
}

/// Pushes an image (fresh config, `layers`) tagged `tag`, retrying with full uploads when GC
/// removed a blob the client had skipped.
async fn racing_push(
    reg: &Reg,
    repo: &str,
    from: &str,
    tag: &str,
    layers: &[&[u8]],
    mode: BlobMode,
    stats: &mut ClientStats,
) -> Img {
    let config = random_config();
    let manifest = manifest_for(&config, layers);
    let mut mode = mode;
    for _attempt in 0..5 {
        ensure_blob(reg, repo, from, &config, BlobMode::Upload).await;
        for (i, l) in layers.iter().enumerate() {
            // The last layer is the image's own: nobody else has it to mount.
            let m = if mode == BlobMode::Mount && i + 1 == layers.len() {
                BlobMode::Upload
            } else {
                mode
            };
            if ensure_blob(reg, repo, from, l, m).await {
                stats.mounts += 1;
            }
        }
        let resp = reg.put_manifest(&Cred::admin(), repo, tag, &manifest).await;
        match resp.status() {
            StatusCode::CREATED => {
                return Img {
                    repo: repo.to_string(),
                    digest: sha256(&manifest),
                    manifest_size: manifest.len() as u64,
                    blobs: blob_list(&config, layers),
                };
            }
            StatusCode::BAD_REQUEST => {
                let (status, body) = read_json(resp).await;
                assert_error(
                    status,
                    &body,
                    400,
                    "MANIFEST_BLOB_UNKNOWN",
                    &format!("PUT {repo}:{tag}"),
                );
                stats.retries += 1;
                mode = BlobMode::Upload;
            }
            _ => panic!("PUT manifest {repo}:{tag}: {}", describe(resp).await),
        }
    }
    panic!("PUT manifest {repo}:{tag} failed five times with MANIFEST_BLOB_UNKNOWN");
}

/// One client: every round pushes an image it keeps (tagged) and one it deletes a round later.
/// All images share `base`; the doomed ones also share `doomed_base`, which becomes
/// unreferenced and referenced again over and over.
async fn client(
    reg: Reg,
    id: usize,
    base: Arc<Vec<u8>>,
    doomed_base: Arc<Vec<u8>>,
    until: Instant,
    collected: Arc<AtomicBool>,
) -> ClientStats {
    let hard_stop = until - ACTIVITY + MAX_ACTIVITY;
    let own = format!("gc/c{id}");
    let neighbour = format!("gc/c{}", (id + 1) % CLIENTS);
    let shared = "gc/shared".to_string();
    let mut stats = ClientStats::default();
    let mut pending_delete: Option<Img> = None;
    let mut round = 0usize;
    while Instant::now() < until
        || (!collected.load(Ordering::SeqCst) && Instant::now() < hard_stop)
    {
        let mode = match round % 3 {
            0 => BlobMode::Upload,
            1 => BlobMode::SkipExisting,
            _ => BlobMode::Mount,
        };
        let repo = if round.is_multiple_of(2) {
            &own
        } else {
            &shared
        };
        let unique = random_bytes(1024 + id * 64 + round);
        let tag = format!("c{id}-r{round}");
        let img = racing_push(
            &reg,
            repo,
            &neighbour,
            &tag,
            &[&base, &unique],
            mode,
            &mut stats,
        )
        .await;
        stats.kept.push((tag, img));

        let doomed_unique = random_bytes(512 + round);
        let doomed_tag = format!("doomed-c{id}-r{round}");
        let doomed = racing_push(
            &reg,
            repo,
            &neighbour,
            &doomed_tag,
            &[&base, &doomed_base, &doomed_unique],
            mode,
            &mut stats,
        )
        .await;
        if let Some(old) = pending_delete.replace(doomed) {
            delete_manifest(&reg, &old.repo, &old.digest).await;
            stats.deleted.push(old);
        }
        round += 1;
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    if let Some(old) = pending_delete.take() {
        delete_manifest(&reg, &old.repo, &old.digest).await;
        stats.deleted.push(old);
    }
    stats
}

/// Pulls every kept tag (a few at a time), byte-exact; returns the blobs they reference.
async fn pull_all(reg: &Reg, kept: &[(String, Img)]) -> BTreeMap<String, u64> {
    futures_util::stream::iter(kept)
        .for_each_concurrent(8, |(tag, img)| async move {
            let digests = assert_pulls(reg, &img.repo, tag, &img.digest).await;
            assert_eq!(
                digests,
                img.blob_digests().cloned().collect::<Vec<_>>(),
                "{tag}"
            );
        })
        .await;
    kept.iter()
        .flat_map(|(_, img)| img.blobs.iter().cloned())
        .collect()
}

#[derive(Debug, Default)]
struct LoopStats {
    runs: u64,
    conflicts: u64,
    blobs_deleted: u64,
    links_deleted: u64,
    purged: u64,
    orphans_deleted: u64,
    storage_errors: u64,
}

/// Runs GC (server configuration: grace 2 s or 4 s, retention 0) back to back until `stop`.
async fn gc_loop(reg: Reg, stop: Arc<AtomicBool>, collected: Arc<AtomicBool>) -> LoopStats {
    let mut s = LoopStats::default();
    while !stop.load(Ordering::SeqCst) {
        let (status, run) = reg
            .api(
                Method::POST,
                "/api/v1/system/gc",
                &Cred::admin(),
                Some(json!({"wait": true})),
            )
            .await;
        match status {
            StatusCode::OK => {
                assert_eq!(run["status"], "succeeded", "{run}");
                s.runs += 1;
                s.blobs_deleted += counter(&run, "blobs_deleted");
                s.links_deleted += counter(&run, "links_deleted");
                s.purged += counter(&run, "deleted_manifests_purged");
                s.orphans_deleted += counter(&run, "orphans_deleted");
                s.storage_errors += counter(&run, "storage_errors");
                if s.blobs_deleted > 0 && s.purged > 0 {
                    collected.store(true, Ordering::SeqCst);
                }
            }
            StatusCode::CONFLICT => s.conflicts += 1,
            other => panic!("POST /api/v1/system/gc: {other}: {run}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s
}

/// The acceptance test: GC runs over and over (with a realistic grace period, never 0) while
/// clients push images sharing layers and delete others. Every tag still pulls, byte-exact;
/// once past the grace period, GC leaves exactly the blobs the tags reference.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn online_gc_under_concurrent_pushes_and_deletes_loses_nothing_and_frees_the_rest() {
    let started = Instant::now();
    let grace_secs = online_grace_secs();
    let grace = grace_secs.to_string();
    // Blobs up to 2 KiB are kept inline, the rest as files: GC must free both kinds.
    let srv = start_local(&[
        "--gc-grace-secs",
        &grace,
        "--gc-deleted-manifest-retention-secs",
        "0",
        "--storage-inline-max-bytes",
        &ONLINE_INLINE_MAX.to_string(),
    ]);
    let reg = Reg::new(&srv);
    reg.create_project(&Cred::admin(), "gc", false).await;

    let base = Arc::new(random_bytes(4096));
    let doomed_base = Arc::new(random_bytes(2048));
    let stop = Arc::new(AtomicBool::new(false));
    let collected = Arc::new(AtomicBool::new(false));
    let looper = tokio::spawn(gc_loop(reg.clone(), stop.clone(), collected.clone()));
    let until = Instant::now() + ACTIVITY;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| {
            tokio::spawn(client(
                reg.clone(),
                id,
                base.clone(),
                doomed_base.clone(),
                until,
                collected.clone(),
            ))
        })
        .collect();
    let mut all = Vec::new();
    for c in clients {
        all.push(c.await.expect("client task"));
    }
    let quiet_since = Instant::now();
    eprintln!("{:?}: clients done", started.elapsed());
    stop.store(true, Ordering::SeqCst);
    let loop_stats = looper.await.expect("GC loop task");
    let kept: Vec<(String, Img)> = all.iter().flat_map(|s| s.kept.clone()).collect();
    let deleted: Vec<Img> = all.iter().flat_map(|s| s.deleted.clone()).collect();
    let retries: u64 = all.iter().map(|s| s.retries).sum();
    let mounts: u64 = all.iter().map(|s| s.mounts).sum();
    eprintln!(
        "{} images kept, {} deleted, {retries} manifest retries, {mounts} mounts; GC: {loop_stats:?}",
        kept.len(),
        deleted.len()
    );
    assert!(
        loop_stats.runs >= 2,
        "GC should have run repeatedly: {loop_stats:?}"
    );
    assert!(
        loop_stats.blobs_deleted > 0 && loop_stats.purged > 0,
        "GC should have collected deleted images while the clients were busy: {loop_stats:?}"
    );
    assert_eq!(loop_stats.storage_errors, 0, "{loop_stats:?}");
    assert_eq!(
        loop_stats.orphans_deleted, 0,
        "nothing crashed, so blob storage must hold no orphans: {loop_stats:?}"
    );

    // Every tag pulls, byte-exact.
    let expected = pull_all(&reg, &kept).await;
    eprintln!("{:?}: every tag pulled", started.elapsed());

    // Past the grace period, GC frees everything no tag needs.
    let wait = Duration::from_millis(grace_secs * 1000 + 500).saturating_sub(quiet_since.elapsed());
    tokio::time::sleep(wait).await;
    let first = gc(&reg, json!({})).await;
    let second = gc(&reg, json!({})).await;
    eprintln!(
        "{:?}: final GC runs done: {:?}",
        started.elapsed(),
        counters(&first)
    );
    for run in [&first, &second] {
        assert_eq!(counter(run, "storage_errors"), 0, "{run}");
        assert_eq!(counter(run, "orphans_deleted"), 0, "{run}");
    }
    assert_eq!(
        counter(&second, "blobs_deleted"),
        0,
        "the first run after the grace period should have freed everything: {first} then {second}"
    );
    assert_eq!(counter(&second, "links_deleted"), 0, "{second}");

    let t = totals(&reg).await;
    assert_eq!(
        total(&t, "blobs"),
        expected.len() as u64,
        "blobs left after GC must be exactly those the tags reference: {t}"
    );
    assert_eq!(
        total(&t, "stored_bytes"),
        expected.values().sum::<u64>(),
        "{t}"
    );
    assert_eq!(total(&t, "manifests"), kept.len() as u64, "{t}");
    assert_eq!(total(&t, "deleted_manifests"), 0, "{t}");
    assert_eq!(total(&t, "pending_deletions"), 0, "{t}");
    if is_fs() {
        let files = blob_files(&srv.data_dir);
        let stored = expected
            .values()
            .filter(|&&size| size > ONLINE_INLINE_MAX)
            .count();
        assert!(stored > 0 && stored < expected.len(), "{expected:?}");
        assert_eq!(
            files.len(),
            stored,
            "blob files on disk after GC: {files:?}"
        );
        let uploads = files_under(&srv.data_dir.join("blobs").join("uploads"));
        assert!(uploads.is_empty(), "upload files left over: {uploads:?}");
    }
    let q = assert_usage_exact(&reg, "gc").await;
    assert_eq!(q["blobs"], json!(expected.len()), "{q}");

    // Still everything pulls; what only deleted images used is gone.
    pull_all(&reg, &kept).await;
    let gone: BTreeSet<(String, String)> = deleted
        .iter()
        .flat_map(|img| img.blob_digests().map(|d| (img.repo.clone(), d.clone())))
        .filter(|(_, d)| !expected.contains_key(d))
        .collect();
    let reg = &reg;
    futures_util::stream::iter(gone)
        .for_each_concurrent(8, |(repo, d)| async move {
            assert_eq!(
                blob_status(reg, &repo, &d).await,
                StatusCode::NOT_FOUND,
                "{d} (only deleted images used it) still in {repo}"
            );
        })
        .await;
    eprintln!("online GC test took {:?}", started.elapsed());
}

// ---- 2. dry runs ----------------------------------------------------------------------------

/// A dry run reports exactly what the real run then removes, and removes nothing itself.
#[tokio::test]
async fn dry_run_predicts_the_real_run_exactly_and_removes_nothing() {
    let srv = start_local(&NO_INLINE);
    let reg = Reg::new(&srv);
    reg.create_project(&Cred::admin(), "dry", false).await;
    let shared = random_bytes(700);
    let (l1, l2, l3) = (random_bytes(301), random_bytes(302), random_bytes(303));
    let keep = push_image(&reg, "dry/app", Some("v1"), &[&shared, &l1]).await;
    let gone = push_image(&reg, "dry/app", Some("v2"), &[&shared, &l2]).await;
    let untagged = push_image(&reg, "dry/app", None, &[&l3]).await;
    let lone = random_bytes(777);
    let lone_digest = reg.push_blob(&Cred::admin(), "dry/other", &lone).await;
    delete_manifest(&reg, "dry/app", &gone.digest).await;
    // Deleting a manifest does not free its layers by itself.
    for d in gone.blob_digests() {
        assert_eq!(blob_status(&reg, "dry/app", d).await, StatusCode::OK, "{d}");
    }
    settle().await;

    let before = totals(&reg).await;
    let files_before = is_fs().then(|| blob_files(&srv.data_dir));
    assert_eq!(total(&before, "deleted_manifests"), 1, "{before}");

    // With the configured grace period (1 h) and retention (1 day) nothing is due yet.
    let dry = gc(&reg, json!({"dry_run": true, "delete_untagged": true})).await;
    assert_eq!(dry["dry_run"], true, "{dry}");
    assert!(
        counters(&dry).values().all(|v| *v == 0),
        "fresh content is within the grace period: {dry}"
    );

    let dry = gc_now(&reg, json!({"dry_run": true, "delete_untagged": true})).await;
    assert_eq!(dry["dry_run"], true, "{dry}");
    let gone_only: Vec<&(String, u64)> = gone
        .blobs
        .iter()
        .filter(|(d, _)| *d != sha256(&shared))
        .collect();
    let want_blobs: BTreeSet<String> = gone_only
        .iter()
        .map(|(d, _)| d.clone())
        .chain([lone_digest.clone()])
        .collect();
    let want_bytes = gone_only.iter().map(|(_, s)| s).sum::<u64>() + lone.len() as u64;
    let mut want = BTreeMap::new();
    for (k, v) in [
        ("deleted_manifests_purged", 1),
        // The untagged manifest moves to the deleted-manifest area; its blobs stay with it.
        ("manifests_deleted", 1),
        // gone's config and own layer, and the lone blob (the shared layer stays for v1).
        ("links_deleted", 3),
        ("blobs_deleted", 3),
        ("bytes_deleted", want_bytes),
        ("orphans_deleted", 0),
        ("orphan_bytes_deleted", 0),
    ] {
        want.insert(k.to_string(), v);
    }
    assert_eq!(counters(&dry), want, "dry run: {dry}");
    assert_eq!(sample(&dry, "blob_sample"), want_blobs, "dry run: {dry}");
    let manifests = sample(&dry, "manifest_sample");
    assert!(
        manifests.len() == 1
            && manifests
                .iter()
                .all(|m| m.ends_with(&format!("@{}", untagged.digest))),
        "manifest_sample should name the untagged manifest: {dry}"
    );

    // Nothing was removed.
    assert_eq!(totals(&reg).await, before, "a dry run changed the storage");
    if let Some(files) = &files_before {
        assert_eq!(&blob_files(&srv.data_dir), files, "a dry run removed files");
    }
    assert_eq!(
        blob_status(&reg, "dry/other", &lone_digest).await,
        StatusCode::OK
    );
    for d in gone.blob_digests() {
        assert_eq!(blob_status(&reg, "dry/app", d).await, StatusCode::OK, "{d}");
    }
    assert_pulls(&reg, "dry/app", &untagged.digest, &untagged.digest).await;

    // The real run removes exactly that.
    let real = gc_now(&reg, json!({"delete_untagged": true})).await;
    assert_eq!(real["dry_run"], false, "{real}");
    assert_eq!(
        counters(&real),
        counters(&dry),
        "real run differs from its dry run:\nreal {real}\ndry {dry}"
    );
    assert_eq!(
        sample(&real, "blob_sample"),
        sample(&dry, "blob_sample"),
        "{real}"
    );
    assert_eq!(
        sample(&real, "manifest_sample"),
        sample(&dry, "manifest_sample"),
        "{real}"
    );
    assert_eq!(counter(&real, "storage_errors"), 0, "{real}");

    let after = totals(&reg).await;
    assert_eq!(
        total(&after, "blobs"),
        total(&before, "blobs") - 3,
        "{before} → {after}"
    );
    assert_eq!(
        total(&after, "stored_bytes"),
        total(&before, "stored_bytes") - want_bytes,
        "{before} → {after}"
    );
    assert_eq!(total(&after, "manifests"), 1, "{after}");
    assert_eq!(total(&after, "deleted_manifests"), 1, "{after}");
    assert_eq!(total(&after, "pending_deletions"), 0, "{after}");
    if let Some(files) = &files_before {
        assert_eq!(
            blob_files(&srv.data_dir).len(),
            files.len() - 3,
            "files after the real run"
        );
    }
    assert_eq!(
        blob_status(&reg, "dry/other", &lone_digest).await,
        StatusCode::NOT_FOUND
    );
    for (d, _) in &gone_only {
        assert_eq!(
            blob_status(&reg, "dry/app", d).await,
            StatusCode::NOT_FOUND,
            "{d}"
        );
    }
    assert_pulls(&reg, "dry/app", "v1", &keep.digest).await;
    // The untagged manifest is deleted, but its blobs wait with it for the retention period
    // (0 here, but it was deleted during the run, which always keeps it).
    let resp = reg
        .send(
            Method::GET,
            &format!("/v2/dry/app/manifests/{}", untagged.digest),
            &Cred::admin(),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    for d in untagged.blob_digests() {
        assert_eq!(blob_status(&reg, "dry/app", d).await, StatusCode::OK, "{d}");
    }

    // The next pass purges it and frees its blobs; dry and real agree again.
    settle().await;
    let dry = gc_now(&reg, json!({"dry_run": true})).await;
    let real = gc_now(&reg, json!({})).await;
    assert_eq!(counters(&real), counters(&dry), "{real}\n{dry}");
    assert_eq!(counter(&real, "deleted_manifests_purged"), 1, "{real}");
    assert_eq!(counter(&real, "blobs_deleted"), 2, "{real}");
    assert_eq!(
        sample(&real, "blob_sample"),
        untagged.blob_digests().cloned().collect(),
        "{real}"
    );
    let dry = gc_now(&reg, json!({"dry_run": true, "delete_untagged": true})).await;
    assert!(
        counters(&dry).values().all(|v| *v == 0),
        "nothing left to collect: {dry}"
    );
    assert_pulls(&reg, "dry/app", "v1", &keep.digest).await;
    let t = totals(&reg).await;
    assert_eq!(total(&t, "blobs"), 3, "v1's config and two layers: {t}");
}

// ---- 3. run records, access, schedule --------------------------------------------------------

/// Runs are recorded (newest first, trigger, exact counters); only administrators may start or
/// read them; a run started without `wait` answers 202 and can be polled.
#[tokio::test]
async fn runs_are_recorded_and_reserved_for_administrators() {
    let srv = start_local(&[]);
    let reg = Reg::new(&srv);
    let admin = Cred::admin();
    reg.create_project(&admin, "rec", false).await;
    let lone = random_bytes(321);
    let lone_digest = reg.push_blob(&admin, "rec/app", &lone).await;
    settle().await;

    let dry = gc_now(&reg, json!({"dry_run": true})).await;
    let real = gc_now(&reg, json!({})).await;
    assert!(
        real["id"].as_i64().unwrap() > dry["id"].as_i64().unwrap(),
        "{dry} {real}"
    );

    let list = reg
        .api_ok(Method::GET, "/api/v1/system/gc", &admin, None, 200)
        .await;
    let runs = list
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"));
    assert_eq!(runs.len(), 2, "{list}");
    assert_eq!(runs[0]["id"], real["id"], "newest first: {list}");
    assert_eq!(runs[1]["id"], dry["id"], "newest first: {list}");
    for (run, dry_run) in [(&runs[0], false), (&runs[1], true)] {
        assert_eq!(run["kind"], "gc", "{run}");
        assert_eq!(run["trigger"], "manual", "{run}");
        assert_eq!(run["status"], "succeeded", "{run}");
        assert_eq!(run["dry_run"], dry_run, "{run}");
        assert_eq!(run["params"]["dry_run"], dry_run, "{run}");
        assert_eq!(run["params"]["gc"]["delete_untagged"], false, "{run}");
        assert_eq!(
            run["params"]["gc"]["touched_before"], run["params"]["gc"]["run_start"],
            "grace 0: {run}"
        );
        assert!(run["finished_at"].is_string(), "{run}");
        assert!(run["error"].is_null(), "{run}");
        assert_eq!(counter(run, "blobs_deleted"), 1, "{run}");
        assert_eq!(counter(run, "bytes_deleted"), 321, "{run}");
        assert_eq!(counter(run, "links_deleted"), 1, "{run}");
        assert_eq!(counter(run, "manifests_deleted"), 0, "{run}");
        assert_eq!(counter(run, "deleted_manifests_purged"), 0, "{run}");
        assert_eq!(counter(run, "orphans_deleted"), 0, "{run}");
        assert_eq!(counter(run, "storage_errors"), 0, "{run}");
        assert_eq!(
            sample(run, "blob_sample"),
            BTreeSet::from([lone_digest.clone()]),
            "{run}"
        );
    }
    // The answer of a waited run is its record.
    assert_eq!(runs[0], real, "GET list vs POST answer");
    let one = reg
        .api_ok(
            Method::GET,
            &format!("/api/v1/system/gc/{}", real["id"]),
            &admin,
            None,
            200,
        )
        .await;
    assert_eq!(one, real);
    let limited = reg
        .api_ok(Method::GET, "/api/v1/system/gc?n=1", &admin, None, 200)
        .await;
    assert_eq!(limited.as_array().map(Vec::len), Some(1), "{limited}");
    let (status, body) = reg
        .api(Method::GET, "/api/v1/system/gc/999999", &admin, None)
        .await;
    assert_error(status, &body, 404, "NOT_FOUND", "unknown run");

    // Without wait: 202 with the run, then poll.
    let started = reg
        .api_ok(
            Method::POST,
            "/api/v1/system/gc",
            &admin,
            Some(json!({"grace_seconds": 0})),
            202,
        )
        .await;
    assert_eq!(started["trigger"], "manual", "{started}");
    assert!(
        ["running", "succeeded"].contains(&started["status"].as_str().unwrap_or_default()),
        "{started}"
    );
    let path = format!("/api/v1/system/gc/{}", started["id"]);
    let deadline = Instant::now() + Duration::from_secs(15);
    let finished = loop {
        let run = reg.api_ok(Method::GET, &path, &admin, None, 200).await;
        if run["status"] != "running" {
            break run;
        }
        assert!(Instant::now() < deadline, "run still running: {run}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(finished["status"], "succeeded", "{finished}");
    assert_eq!(counter(&finished, "blobs_deleted"), 0, "{finished}");

    // Not for anyone else, not even a project administrator.
    reg.create_user("bob", "bob-pass-123").await;
    reg.set_member(&admin, "rec", "bob", "project_admin").await;
    let bob = Cred::basic("bob", "bob-pass-123");
    let calls: [(Method, String, Option<Value>); 4] = [
        (
            Method::POST,
            "/api/v1/system/gc".into(),
            Some(json!({"wait": true})),
        ),
        (Method::GET, "/api/v1/system/gc".into(), None),
        (Method::GET, path.clone(), None),
        (Method::GET, "/api/v1/system/storage".into(), None),
    ];
    for (method, p, body) in &calls {
        let (status, v) = reg.api(method.clone(), p, &bob, body.clone()).await;
        assert_error(status, &v, 403, "DENIED", &format!("{method} {p} as bob"));
    }
    let list = reg
        .api_ok(Method::GET, "/api/v1/system/gc", &admin, None, 200)
        .await;
    assert_eq!(
        list.as_array().map(Vec::len),
        Some(3),
        "refused requests must not start runs: {list}"
    );
}

/// Without credentials the GC API answers 401 UNAUTHORIZED, like the rest of the management
/// API (`/api/v1/settings`, `/api/v1/projects`), so clients know to authenticate.
#[tokio::test]
async fn gc_api_asks_anonymous_callers_to_authenticate() {
    let srv = start_local(&[]);
    let reg = Reg::new(&srv);
    let calls: [(Method, &str, Option<Value>); 4] = [
        (
            Method::POST,
            "/api/v1/system/gc",
            Some(json!({"wait": true})),
        ),
        (Method::GET, "/api/v1/system/gc", None),
        (Method::GET, "/api/v1/system/gc/1", None),
        (Method::GET, "/api/v1/system/storage", None),
    ];
    for (method, p, body) in calls {
        let (status, v) = reg.api(method.clone(), p, &Cred::Anonymous, body).await;
        assert_error(
            status,
            &v,
            401,
            "UNAUTHORIZED",
            &format!("{method} {p} anonymously"),
        );
    }
    let resp = reg
        .send(Method::GET, "/api/v1/system/gc", &Cred::Anonymous)
        .await;
    let challenge = resp.headers().get("www-authenticate").cloned();
    assert!(
        challenge.is_some_and(|c| c.to_str().unwrap_or_default().starts_with("Basic ")),
        "401 without a Basic challenge: {}",
        describe(resp).await
    );
    let list = reg
        .api_ok(Method::GET, "/api/v1/system/gc", &Cred::admin(), None, 200)
        .await;
    assert_eq!(list, json!([]), "refused requests must not start runs");
}

/// `--gc-schedule` starts runs by itself (trigger "schedule"), with the configured grace period.
#[tokio::test]
async fn scheduled_runs_happen_and_respect_the_grace_period() {
    let srv = start_local(&["--gc-schedule", "*/1 * * * * *"]);
    let reg = Reg::new(&srv);
    let admin = Cred::admin();
    reg.create_project(&admin, "sched", false).await;
    let lone_digest = reg.push_blob(&admin, "sched/app", &random_bytes(100)).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let run = loop {
        let list = reg
            .api_ok(Method::GET, "/api/v1/system/gc", &admin, None, 200)
            .await;
        let done = list.as_array().unwrap().iter().find(|r| {
            r["trigger"] == "schedule" && r["status"] != "running" && r["status"] != "cancelled"
        });
        if let Some(run) = done {
            break run.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no scheduled run within 20 s: {list}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["dry_run"], false, "{run}");
    assert_eq!(
        counter(&run, "blobs_deleted"),
        0,
        "the default grace period (1 h) protects a fresh blob: {run}"
    );
    assert_eq!(
        blob_status(&reg, "sched/app", &lone_digest).await,
        StatusCode::OK
    );
}

/// A schedule that is not a cron expression is refused at start.
#[test]
fn invalid_gc_schedule_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_kura"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--gc-schedule",
            "every full moon",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("gc.schedule"), "{err}");
}

// ---- 4. the command line ---------------------------------------------------------------------

/// `kura gc` with the given flags against the backends of `data_dir`; returns the printed run.
fn kura_gc(data_dir: &Path, flags: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_kura"))
        .arg("gc")
        .arg("--data-dir")
        .arg(data_dir)
        .args(Backends::from_env().args_for(data_dir))
        .args(flags)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run kura gc");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kura gc {flags:?} failed: {:?}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("kura gc printed no JSON run ({e}): {stdout}"))
}

fn start_local_in(data_dir: &Path) -> KuraServer {
    KuraServer::start_in(
        data_dir,
        &["--auth-mode", "local", NO_INLINE[0], NO_INLINE[1]],
        &[("KURA_ADMIN_PASSWORD", ADMIN_PASSWORD)],
    )
}

/// `kura gc` runs GC against a running server's backends and against a stopped one's.
#[tokio::test]
async fn kura_gc_command_collects_with_the_server_running_or_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let srv = start_local_in(&data_dir);
    let reg = Reg::new(&srv);
    let admin = Cred::admin();
    reg.create_project(&admin, "cli", false).await;
    let img = push_image(&reg, "cli/app", Some("v1"), &[&random_bytes(200)]).await;
    let lone = random_bytes(432);
    let lone_digest = reg.push_blob(&admin, "cli/app", &lone).await;
    settle().await;
    let files_before = blob_files(&data_dir).len();

    // Server running. Without overrides the configured grace period (1 h) protects everything.
    let run = kura_gc(&data_dir, &["--dry-run"]);
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["dry_run"], true, "{run}");
    assert_eq!(run["result"]["blobs_deleted"], 0, "{run}");
    let run = kura_gc(
        &data_dir,
        &[
            "--grace-secs",
            "0",
            "--deleted-manifest-retention-secs",
            "0",
        ],
    );
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["dry_run"], false, "{run}");
    assert_eq!(run["result"]["blobs_deleted"], 1, "{run}");
    assert_eq!(run["result"]["bytes_deleted"], 432, "{run}");
    assert_eq!(run["result"]["blob_sample"], json!([lone_digest]), "{run}");
    assert_eq!(
        blob_status(&reg, "cli/app", &lone_digest).await,
        StatusCode::NOT_FOUND
    );
    assert_pulls(&reg, "cli/app", "v1", &img.digest).await;
    if is_fs() {
        assert_eq!(blob_files(&data_dir).len(), files_before - 1);
    }
    // The server lists the command's runs.
    let list = reg
        .api_ok(Method::GET, "/api/v1/system/gc", &admin, None, 200)
        .await;
    let cli_run = list
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == run["id"])
        .unwrap_or_else(|| panic!("run {} not listed: {list}", run["id"]));
    assert_eq!(cli_run["trigger"], "cli", "{cli_run}");

    // Server stopped: the manifest is deleted, the command frees its blobs.
    delete_manifest(&reg, "cli/app", &img.digest).await;
    drop(srv);
    std::thread::sleep(Duration::from_millis(50));
    let run = kura_gc(
        &data_dir,
        &[
            "--grace-secs",
            "0",
            "--deleted-manifest-retention-secs",
            "0",
            "--skip-orphans",
        ],
    );
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["result"]["deleted_manifests_purged"], 1, "{run}");
    assert_eq!(run["result"]["blobs_deleted"], 2, "{run}");
    if is_fs() {
        assert_eq!(blob_files(&data_dir).len(), files_before - 3);
    }
    let srv = start_local_in(&data_dir);
    let reg = Reg::new(&srv);
    for d in img.blob_digests() {
        assert_eq!(
            blob_status(&reg, "cli/app", d).await,
            StatusCode::NOT_FOUND,
            "{d}"
        );
    }
    let t = totals(&reg).await;
    assert_eq!(total(&t, "blobs"), 0, "{t}");
    assert_eq!(total(&t, "manifests"), 0, "{t}");
}

// ---- 5. orphaned objects ---------------------------------------------------------------------

/// Writes a file under blob storage (`DATA_DIR/blobs/blobs/up/<2>/<id>`), optionally aged.
fn plant(data_dir: &Path, id: &str, len: usize, age: Option<Duration>) -> PathBuf {
    let dir = data_dir
        .join("blobs")
        .join("blobs")
        .join("up")
        .join(&id[..2]);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(id);
    std::fs::write(&path, random_bytes(len)).unwrap();
    if let Some(age) = age {
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(SystemTime::now() - age).unwrap();
    }
    path
}

/// Objects in blob storage that metadata knows nothing about (a crash between the storage
/// commit and the metadata commit leaves them) are removed once older than the grace period;
/// young ones and those of uploads still in progress stay.
#[tokio::test]
async fn orphaned_objects_older_than_the_grace_period_are_swept() {
    if !is_fs() {
        eprintln!("skipped: plants files in the filesystem backend");
        return;
    }
    let srv = start_local(&[]);
    let reg = Reg::new(&srv);
    let admin = Cred::admin();
    reg.create_project(&admin, "orph", false).await;
    let img = push_image(&reg, "orph/app", Some("v1"), &[&random_bytes(500)]).await;
    // An upload in progress whose bytes were (as if) committed to storage already. It has
    // written, so it has its row (a session that has not written has neither row nor file).
    let loc = reg.start_upload(&admin, "orph/app").await;
    let resp = reg
        .req(Method::PATCH, &loc, &admin)
        .header(CONTENT_TYPE, "application/octet-stream")
        .body(vec![0u8; 10])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let upload_id = loc
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .to_string();
    let hour = Duration::from_secs(3600);
    let old = plant(
        &srv.data_dir,
        &format!("zz{}", random_hex(8)),
        1234,
        Some(2 * hour),
    );
    let young = plant(&srv.data_dir, &format!("zy{}", random_hex(8)), 99, None);
    let in_progress = plant(&srv.data_dir, &upload_id, 10, Some(2 * hour));
    let grace = json!({"grace_seconds": 600, "deleted_manifest_retention_seconds": 0});

    let mut body = grace.clone();
    body["skip_orphans"] = json!(true);
    let run = gc(&reg, body).await;
    assert_eq!(counter(&run, "orphans_deleted"), 0, "{run}");
    assert!(old.exists());

    let mut body = grace.clone();
    body["dry_run"] = json!(true);
    let run = gc(&reg, body).await;
    assert_eq!(counter(&run, "orphans_deleted"), 1, "dry run: {run}");
    assert_eq!(
        counter(&run, "orphan_bytes_deleted"),
        1234,
        "dry run: {run}"
    );
    assert!(old.exists(), "a dry run deleted an orphan");

    let run = gc(&reg, grace.clone()).await;
    assert_eq!(counter(&run, "orphans_deleted"), 1, "{run}");
    assert_eq!(counter(&run, "orphan_bytes_deleted"), 1234, "{run}");
    assert_eq!(counter(&run, "blobs_deleted"), 0, "{run}");
    assert_eq!(counter(&run, "storage_errors"), 0, "{run}");
    assert!(!old.exists(), "the old orphan is still there");
    assert!(
        young.exists(),
        "an orphan younger than the grace period was deleted"
    );
    assert!(
        in_progress.exists(),
        "the object of an upload still in progress was deleted"
    );
    assert_pulls(&reg, "orph/app", "v1", &img.digest).await;

    // Once old enough, the young one goes too; the upload's object stays while it is live.
    let f = std::fs::File::options().write(true).open(&young).unwrap();
    f.set_modified(SystemTime::now() - 2 * hour).unwrap();
    drop(f);
    let run = gc(&reg, grace).await;
    assert_eq!(counter(&run, "orphans_deleted"), 1, "{run}");
    assert_eq!(counter(&run, "orphan_bytes_deleted"), 99, "{run}");
    assert!(!young.exists());
    assert!(in_progress.exists());
    assert_pulls(&reg, "orph/app", "v1", &img.digest).await;
}

// ---- 6. deleted manifests --------------------------------------------------------------------

/// A deleted manifest keeps its blobs and stays restorable for the retention period; once
/// purged, its blobs go and it can no longer be restored.
#[tokio::test]
async fn deleted_manifests_protect_their_blobs_until_purged() {
    let srv = start_local(&[]);
    let reg = Reg::new(&srv);
    let admin = Cred::admin();
    reg.create_project(&admin, "trash", false).await;
    let img = push_image(&reg, "trash/app", Some("v1"), &[&random_bytes(600)]).await;
    delete_manifest(&reg, "trash/app", &img.digest).await;
    settle().await;

    // Grace 0, but the configured retention (1 day) keeps the deleted manifest and its blobs.
    let run = gc(&reg, json!({"grace_seconds": 0})).await;
    assert!(
        counters(&run).values().all(|v| *v == 0),
        "a deleted manifest within retention protects its blobs: {run}"
    );
    assert_eq!(total(&totals(&reg).await, "deleted_manifests"), 1);
    let restore = "/api/v1/projects/trash/repositories/app/tags/v1/restore";
    let v = reg
        .api_ok(
            Method::POST,
            restore,
            &admin,
            Some(json!({"digest": img.digest})),
            200,
        )
        .await;
    assert_eq!(v["digest"], json!(img.digest), "{v}");
    assert_pulls(&reg, "trash/app", "v1", &img.digest).await;

    // Deleted again and purged (retention 0): blobs freed, no way back.
    delete_manifest(&reg, "trash/app", &img.digest).await;
    settle().await;
    let run = gc_now(&reg, json!({})).await;
    assert_eq!(counter(&run, "deleted_manifests_purged"), 1, "{run}");
    assert_eq!(counter(&run, "blobs_deleted"), 2, "{run}");
    assert_eq!(
        counter(&run, "bytes_deleted"),
        img.blobs.iter().map(|(_, s)| s).sum::<u64>(),
        "{run}"
    );
    let (status, body) = reg
        .api(
            Method::POST,
            restore,
            &admin,
            Some(json!({"digest": img.digest})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "restore after purge: {body}");
    let t = totals(&reg).await;
    assert_eq!(total(&t, "blobs"), 0, "{t}");
    assert_eq!(total(&t, "deleted_manifests"), 0, "{t}");
}

// ---- 7. the touch rule -----------------------------------------------------------------------

/// Mounting a blob, pushing it again or referencing it from a manifest restarts its grace
/// period: GC keeps it (and the link that was touched) until the grace period has passed again.
#[tokio::test]
async fn touching_a_blob_restarts_its_grace_period() {
    let srv = start_local(&[]);
    let reg = Reg::new(&srv);
    let admin = Cred::admin();
    reg.create_project(&admin, "touch", false).await;
    let (x, y, z, w) = (
        random_bytes(300),
        random_bytes(301),
        random_bytes(302),
        random_bytes(303),
    );
    let mut digests = Vec::new();
    for blob in [&x, &y, &z, &w] {
        digests.push(reg.push_blob(&admin, "touch/a", blob).await);
    }
    let [dx, dy, dz, dw] = [0, 1, 2, 3].map(|i| digests[i].clone());
    let grace = 3u64;
    tokio::time::sleep(Duration::from_millis(grace * 1000 + 300)).await;

    // All four are older than the grace period now; three get touched.
    let touching = Instant::now();
    let resp = reg
        .req(
            Method::POST,
            &format!("/v2/touch/b/blobs/uploads/?mount={dx}&from=touch/a"),
            &admin,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED, "mount x");
    reg.push_blob(&admin, "touch/a", &y).await;
    let config = random_config();
    reg.push_blob(&admin, "touch/a", &config).await;
    let manifest = manifest_for(&config, &[&z]);
    let resp = reg
        .put_manifest(&admin, "touch/a", &sha256(&manifest), &manifest)
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    delete_manifest(&reg, "touch/a", &sha256(&manifest)).await;
    settle().await;
    let gc_body = json!({"grace_seconds": grace, "deleted_manifest_retention_seconds": 0});
    let run = gc(&reg, gc_body.clone()).await;
    assert!(
        touching.elapsed() < Duration::from_secs(grace),
        "the touches and the run took longer than the grace period; the test proves nothing"
    );
    assert_eq!(
        sample(&run, "blob_sample"),
        BTreeSet::from([dw.clone()]),
        "only the untouched blob may go: {run}"
    );
    assert_eq!(counter(&run, "blobs_deleted"), 1, "{run}");
    // w's link, and x's old link in touch/a (the mount touched the blob and made a new link).
    assert_eq!(counter(&run, "links_deleted"), 2, "{run}");
    assert_eq!(counter(&run, "deleted_manifests_purged"), 1, "{run}");
    assert_eq!(head_blob(&reg, "touch/a", &dw).await, StatusCode::NOT_FOUND);
    assert_eq!(head_blob(&reg, "touch/a", &dx).await, StatusCode::NOT_FOUND);
    assert_eq!(blob_status(&reg, "touch/b", &dx).await, StatusCode::OK);
    assert_eq!(blob_status(&reg, "touch/a", &dy).await, StatusCode::OK);
    assert_eq!(blob_status(&reg, "touch/a", &dz).await, StatusCode::OK);

    // Once the grace period has passed again, nothing references them: all go.
    tokio::time::sleep(Duration::from_millis(grace * 1000 + 100)).await;
    let run = gc(&reg, gc_body).await;
    assert_eq!(
        sample(&run, "blob_sample"),
        BTreeSet::from([dx, dy, dz, sha256(&config)]),
        "{run}"
    );
    let t = totals(&reg).await;
    assert_eq!(total(&t, "blobs"), 0, "{t}");
}

// ---- 8. referrers and index children ---------------------------------------------------------

async fn put_typed(reg: &Reg, repo: &str, reference: &str, media_type: &str, body: &[u8]) {
    let resp = reg
        .req(
            Method::PUT,
            &format!("/v2/{repo}/manifests/{reference}"),
            &Cred::admin(),
        )
        .header(CONTENT_TYPE, media_type)
        .body(body.to_vec())
        .send()
        .await
        .expect("PUT manifest");
    assert_eq!(
        resp.status(),
        StatusCode::CREATED,
        "PUT {repo}:{reference}: {}",
        describe(resp).await
    );
}

async fn manifest_status(reg: &Reg, repo: &str, reference: &str) -> StatusCode {
    reg.req(
        Method::GET,
        &format!("/v2/{repo}/manifests/{reference}"),
        &Cred::admin(),
    )
    .header(ACCEPT, format!("{OCI_MANIFEST}, {OCI_INDEX}"))
    .send()
    .await
    .expect("GET manifest")
    .status()
}

/// A referrer (signature, SBOM) follows its subject: once the subject is purged, GC deletes it
/// even without `delete_untagged`. Untagged children of a tagged index are never "untagged
/// garbage"; they go only after their index.
#[tokio::test]
async fn referrers_follow_their_subject_and_index_children_follow_their_index() {
    let srv = start_local(&[]);
    let reg = Reg::new(&srv);
    let admin = Cred::admin();
    reg.create_project(&admin, "ref", false).await;
    let repo = "ref/app";
    let subject = push_image(&reg, repo, Some("v1"), &[&random_bytes(400)]).await;
    reg.push_blob(&admin, repo, EMPTY_BLOB).await;
    let payload = random_bytes(64);
    reg.push_blob(&admin, repo, &payload).await;
    let referrer = image_manifest(
        &json!({"mediaType": OCI_EMPTY, "digest": sha256(EMPTY_BLOB), "size": 2}),
        &[descriptor("application/vnd.example.signature", &payload)],
        Some(&subject.descriptor()),
    );
    let referrer_digest = sha256(&referrer);
    put_typed(&reg, repo, &referrer_digest, OCI_MANIFEST, &referrer).await;
    let child = push_image(&reg, repo, None, &[&random_bytes(401)]).await;
    let index = image_index(&[child.descriptor()]);
    put_typed(&reg, repo, "multi", OCI_INDEX, &index).await;
    delete_manifest(&reg, repo, &subject.digest).await;
    settle().await;

    // The deleted subject is within retention: it protects its referrer; the index its child.
    let run = gc(&reg, json!({"grace_seconds": 0, "delete_untagged": true})).await;
    assert!(counters(&run).values().all(|v| *v == 0), "{run}");
    assert_eq!(
        manifest_status(&reg, repo, &referrer_digest).await,
        StatusCode::OK
    );

    // Subject purged: the referrer goes (into the deleted area, keeping its blobs for now).
    let run = gc_now(&reg, json!({})).await;
    assert_eq!(counter(&run, "deleted_manifests_purged"), 1, "{run}");
    assert_eq!(counter(&run, "manifests_deleted"), 1, "{run}");
    assert!(
        sample(&run, "manifest_sample")
            .iter()
            .all(|m| m.ends_with(&format!("@{referrer_digest}"))),
        "{run}"
    );
    assert_eq!(
        sample(&run, "blob_sample"),
        subject.blob_digests().cloned().collect(),
        "{run}"
    );
    assert_eq!(
        manifest_status(&reg, repo, &referrer_digest).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        blob_status(&reg, repo, &sha256(&payload)).await,
        StatusCode::OK
    );

    // Next pass: the referrer is purged with its blobs; the index child stays.
    settle().await;
    let run = gc_now(&reg, json!({"delete_untagged": true})).await;
    assert_eq!(counter(&run, "deleted_manifests_purged"), 1, "{run}");
    assert_eq!(counter(&run, "manifests_deleted"), 0, "{run}");
    assert_eq!(
        sample(&run, "blob_sample"),
        BTreeSet::from([sha256(EMPTY_BLOB), sha256(&payload)]),
        "{run}"
    );
    assert_eq!(manifest_status(&reg, repo, "multi").await, StatusCode::OK);
    assert_pulls(&reg, repo, &child.digest, &child.digest).await;

    // Without its index the child is untagged garbage: deleted, then purged.
    let index_digest = sha256(&index);
    let resp = reg
        .send(
            Method::DELETE,
            &format!("/v2/{repo}/manifests/{index_digest}"),
            &admin,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    settle().await;
    let run = gc_now(&reg, json!({"delete_untagged": true})).await;
    assert_eq!(counter(&run, "deleted_manifests_purged"), 1, "{run}");
    assert_eq!(counter(&run, "manifests_deleted"), 1, "{run}");
    assert_eq!(counter(&run, "blobs_deleted"), 0, "{run}");
    settle().await;
    let run = gc_now(&reg, json!({"delete_untagged": true})).await;
    assert_eq!(
        sample(&run, "blob_sample"),
        child.blob_digests().cloned().collect(),
        "{run}"
    );
    let t = totals(&reg).await;
    assert_eq!(total(&t, "blobs"), 0, "{t}");
    assert_eq!(total(&t, "manifests"), 0, "{t}");
    assert_eq!(total(&t, "deleted_manifests"), 0, "{t}");
}

// ---- 9. one run at a time --------------------------------------------------------------------

/// Requests racing to start GC: each is answered 200 (it ran) or 409 (another was running);
/// no run is left behind as running.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_gc_requests_run_one_at_a_time() {
    let srv = start_local(&[]);
    let reg = Reg::new(&srv);
    let admin = Cred::admin();
    reg.create_project(&admin, "many", false).await;
    for i in 0..5 {
        push_image(
            &reg,
            "many/app",
            Some(&format!("v{i}")),
            &[&random_bytes(100)],
        )
        .await;
        reg.push_blob(&admin, "many/app", &random_bytes(50)).await;
    }
    settle().await;
    let answers: Vec<(StatusCode, Value)> = futures_util::future::join_all((0..6).map(|_| {
        let reg = reg.clone();
        async move {
            reg.api(
                Method::POST,
                "/api/v1/system/gc",
                &Cred::admin(),
                Some(json!({"wait": true, "grace_seconds": 0})),
            )
            .await
        }
    }))
    .await;
    let mut ran = Vec::new();
    for (status, body) in &answers {
        match *status {
            StatusCode::OK => {
                assert_eq!(body["status"], "succeeded", "{body}");
                ran.push(body.clone());
            }
            StatusCode::CONFLICT => assert!(
                body["errors"][0]["message"].is_string(),
                "409 without an error body: {body}"
            ),
            other => panic!("POST /api/v1/system/gc: {other}: {body}"),
        }
    }
    assert!(!ran.is_empty(), "no request ran GC: {answers:?}");
    // Together the runs removed each unreferenced blob exactly once.
    let removed: u64 = ran.iter().map(|r| counter(r, "blobs_deleted")).sum();
    assert_eq!(removed, 5, "{ran:?}");
    let list = reg
        .api_ok(Method::GET, "/api/v1/system/gc", &admin, None, 200)
        .await;
    for run in list.as_array().unwrap() {
        assert!(
            run["status"] == "succeeded" || run["status"] == "cancelled",
            "{run}"
        );
    }
    let succeeded = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["status"] == "succeeded")
        .count();
    assert_eq!(succeeded, ran.len(), "{list}");
    let t = totals(&reg).await;
    assert_eq!(total(&t, "blobs"), 10, "{t}");
}

// ---- 10. storage deletes that fail -----------------------------------------------------------

/// When blob storage refuses a delete, the blob is gone from metadata but its bytes stay queued
/// (`pending_deletions`); the next run deletes them.
#[tokio::test]
async fn failed_storage_deletes_are_retried_by_the_next_run() {
    if !is_fs() {
        eprintln!("skipped: makes a blob file undeletable in the filesystem backend");
        return;
    }
    let srv = start_local(&NO_INLINE);
    let reg = Reg::new(&srv);
    let admin = Cred::admin();
    reg.create_project(&admin, "stuck", false).await;
    let before = blob_files(&srv.data_dir);
    let data = random_bytes(555);
    let digest = reg.push_blob(&admin, "stuck/app", &data).await;
    let file: Vec<PathBuf> = blob_files(&srv.data_dir)
        .into_iter()
        .filter(|f| !before.contains(f))
        .collect();
    assert_eq!(file.len(), 1, "one new blob file: {file:?}");
    let file = &file[0];
    // A non-empty directory where the file was: remove_file fails (even for root).
    std::fs::remove_file(file).unwrap();
    std::fs::create_dir(file).unwrap();
    std::fs::write(file.join("keep"), b"x").unwrap();
    settle().await;

    let run = gc_now(&reg, json!({})).await;
    assert_eq!(counter(&run, "blobs_deleted"), 1, "{run}");
    assert_eq!(counter(&run, "bytes_deleted"), 555, "{run}");
    assert_eq!(counter(&run, "storage_errors"), 1, "{run}");
    assert_eq!(counter(&run, "orphans_deleted"), 0, "{run}");
    let t = totals(&reg).await;
    assert_eq!(total(&t, "pending_deletions"), 1, "{t}");
    assert_eq!(total(&t, "blobs"), 0, "{t}");
    assert_eq!(
        head_blob(&reg, "stuck/app", &digest).await,
        StatusCode::NOT_FOUND
    );

    // Still stuck: the next run tries again and leaves it queued.
    let run = gc_now(&reg, json!({})).await;
    assert_eq!(counter(&run, "pending_completed"), 0, "{run}");
    assert_eq!(counter(&run, "storage_errors"), 1, "{run}");
    assert_eq!(total(&totals(&reg).await, "pending_deletions"), 1);

    // Storage works again: the queued delete completes.
    std::fs::remove_dir_all(file).unwrap();
    std::fs::write(file, &data).unwrap();
    let run = gc_now(&reg, json!({})).await;
    assert_eq!(counter(&run, "pending_completed"), 1, "{run}");
    assert_eq!(counter(&run, "storage_errors"), 0, "{run}");
    assert_eq!(counter(&run, "orphans_deleted"), 0, "{run}");
    assert!(!file.exists(), "the queued blob file is still there");
    let t = totals(&reg).await;
    assert_eq!(total(&t, "pending_deletions"), 0, "{t}");
}

// ---- 11. configuration -----------------------------------------------------------------------

/// `--gc-grace-secs`, `--gc-deleted-manifest-retention-secs` and `--gc-delete-untagged` are the
/// defaults of a manual run that does not override them.
#[tokio::test]
async fn server_flags_are_the_defaults_of_manual_runs() {
    let srv = start_local(&[
        "--gc-grace-secs",
        "1",
        "--gc-deleted-manifest-retention-secs",
        "0",
        "--gc-delete-untagged",
        "true",
    ]);
    let reg = Reg::new(&srv);
    let admin = Cred::admin();
    reg.create_project(&admin, "cfg", false).await;
    let tagged = push_image(&reg, "cfg/app", Some("v1"), &[&random_bytes(100)]).await;
    let untagged = push_image(&reg, "cfg/app", None, &[&random_bytes(101)]).await;
    let deleted = push_image(&reg, "cfg/app", Some("v2"), &[&random_bytes(102)]).await;
    delete_manifest(&reg, "cfg/app", &deleted.digest).await;

    // The flags are the run's parameters.
    let first = gc(&reg, json!({})).await;
    let p = &first["params"]["gc"];
    assert_eq!(p["delete_untagged"], true, "{first}");
    assert_eq!(
        p["run_start"].as_i64().unwrap() - p["touched_before"].as_i64().unwrap(),
        1000,
        "{first}"
    );
    assert_eq!(p["deleted_before"], p["run_start"], "{first}");

    // Past the grace period the untagged manifest goes (delete_untagged from the flag) and
    // the deleted one is purged (retention 0); one more run purges the untagged one too. All
    // their blobs are freed. (How much each run does depends on how long the pushes took, so
    // count the three runs together.)
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = gc(&reg, json!({})).await;
    settle().await;
    let third = gc(&reg, json!({})).await;
    let runs = [&first, &second, &third];
    let sum = |k: &str| runs.iter().map(|r| counter(r, k)).sum::<u64>();
    let union = |k: &str| {
        runs.iter()
            .flat_map(|r| sample(r, k))
            .collect::<BTreeSet<String>>()
    };
    let all = format!("{first}\n{second}\n{third}");
    assert_eq!(sum("deleted_manifests_purged"), 2, "{all}");
    assert_eq!(sum("manifests_deleted"), 1, "{all}");
    let manifests = union("manifest_sample");
    assert!(
        manifests.len() == 1
            && manifests
                .iter()
                .all(|m| m.ends_with(&format!("@{}", untagged.digest))),
        "{all}"
    );
    assert_eq!(
        union("blob_sample"),
        deleted
            .blob_digests()
            .chain(untagged.blob_digests())
            .cloned()
            .collect(),
        "{all}"
    );
    // An explicit override wins over the flag.
    let run = gc(&reg, json!({"delete_untagged": false, "dry_run": true})).await;
    assert_eq!(run["params"]["gc"]["delete_untagged"], false, "{run}");
    assert_pulls(&reg, "cfg/app", "v1", &tagged.digest).await;
}

// ---- 12. the orphan sweep and blobs being committed ------------------------------------------

/// Opens an upload and sends all of `data` in one PATCH; returns the Location to close it at.
async fn patch_upload(reg: &Reg, repo: &str, data: &[u8]) -> String {
    let admin = Cred::admin();
    let loc = reg.start_upload(&admin, repo).await;
    let resp = reg
        .req(Method::PATCH, &loc, &admin)
        .header(CONTENT_TYPE, "application/octet-stream")
        .header("Content-Range", format!("0-{}", data.len() - 1))
        .body(data.to_vec())
        .send()
        .await
        .expect("PATCH");
    assert_eq!(
        resp.status(),
        StatusCode::ACCEPTED,
        "PATCH: {}",
        describe(resp).await
    );
    resp.headers()["location"].to_str().unwrap().to_string()
}

/// The orphan sweep must never take the bytes of a blob whose push is completing. A client
/// sends a layer's bytes (PATCH), pauses for longer than the grace period, then closes the
/// upload (PUT) and tags a manifest using it. The committed object is as old as its bytes, so
/// the sweep looks at it while the push is being recorded; it must see either the upload
/// in progress or the recorded blob, never neither. GC runs back to back (grace 1 s).
/// Afterwards every tagged image must pull, and the sweep must not have found any "orphan"
/// (nothing crashed, so there are none).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orphan_sweep_never_takes_the_bytes_of_a_blob_being_committed() {
    let grace = 1u64;
    let srv = start_local(&[
        "--gc-grace-secs",
        &grace.to_string(),
        "--gc-deleted-manifest-retention-secs",
        "0",
    ]);
    let reg = Reg::new(&srv);
    reg.create_project(&Cred::admin(), "race", false).await;
    let stop = Arc::new(AtomicBool::new(false));
    let looper = {
        let reg = reg.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut swept = Vec::new();
            let mut runs = 0;
            while !stop.load(Ordering::SeqCst) {
                let (status, run) = reg
                    .api(
                        Method::POST,
                        "/api/v1/system/gc",
                        &Cred::admin(),
                        Some(json!({"wait": true})),
                    )
                    .await;
                match status {
                    StatusCode::OK => {
                        runs += 1;
                        if counter(&run, "orphans_deleted") > 0 {
                            swept.push(run["result"].clone());
                        }
                    }
                    StatusCode::CONFLICT => {}
                    other => panic!("GC: {other}: {run}"),
                }
            }
            (runs, swept)
        })
    };
    let until = Instant::now() + Duration::from_secs(6);
    // Many commits make the race likely; the S3 test service is slower, so fewer there.
    let (n_clients, per_batch) = if Backends::from_env().s3 {
        (4, 8)
    } else {
        (8, 16)
    };
    let clients: Vec<_> = (0..n_clients)
        .map(|i| {
            let reg = reg.clone();
            tokio::spawn(async move {
                let admin = Cred::admin();
                let repo = format!("race/c{i}");
                let mut kept = Vec::new();
                let mut batch = 0;
                while Instant::now() < until {
                    let mut open = Vec::new();
                    for _ in 0..per_batch {
                        let layer = random_bytes(1500);
                        let loc = patch_upload(&reg, &repo, &layer).await;
                        open.push((loc, layer));
                    }
                    tokio::time::sleep(Duration::from_millis(grace * 1000 + 150)).await;
                    // Close them all at once: their commits queue up together.
                    let tagged = futures_util::future::join_all(open.into_iter().enumerate().map(
                        |(j, (loc, layer))| {
                            let (reg, admin, repo) = (&reg, &admin, &repo);
                            async move {
                                let digest = sha256(&layer);
                                let resp = reg
                                    .req(Method::PUT, &with_query(&loc, "digest", &digest), admin)
                                    .send()
                                    .await
                                    .expect("PUT");
                                assert_eq!(
                                    resp.status(),
                                    StatusCode::CREATED,
                                    "closing PUT: {}",
                                    describe(resp).await
                                );
                                let config = random_config();
                                reg.push_blob(admin, repo, &config).await;
                                let manifest = manifest_for(&config, &[&layer]);
                                let tag = format!("b{batch}-{j}");
                                let mut retries = 0;
                                loop {
                                    let resp = reg.put_manifest(admin, repo, &tag, &manifest).await;
                                    if resp.status() == StatusCode::CREATED {
                                        break;
                                    }
                                    // Only on a badly overloaded machine (a commit slower than
                                    // the 1 s grace period): push the blobs again.
                                    let (status, body) = read_json(resp).await;
                                    assert_error(
                                        status,
                                        &body,
                                        400,
                                        "MANIFEST_BLOB_UNKNOWN",
                                        &format!("PUT {repo}:{tag}"),
                                    );
                                    retries += 1;
                                    assert!(retries < 5, "PUT {repo}:{tag}: {body}");
                                    reg.push_blob(admin, repo, &config).await;
                                    reg.push_blob(admin, repo, &layer).await;
                                }
                                (repo.clone(), tag, sha256(&manifest))
                            }
                        },
                    ))
                    .await;
                    kept.extend(tagged);
                    batch += 1;
                }
                kept
            })
        })
        .collect();
    let mut kept = Vec::new();
    for c in clients {
        kept.extend(c.await.expect("client"));
    }
    stop.store(true, Ordering::SeqCst);
    let (runs, swept) = looper.await.expect("GC loop");
    eprintln!(
        "{} images pushed, {runs} GC runs, runs that swept orphans: {swept:?}",
        kept.len()
    );
    let broken = std::sync::Mutex::new(Vec::new());
    let (reg, broken_ref) = (&reg, &broken);
    futures_util::stream::iter(&kept)
        .for_each_concurrent(8, |(repo, tag, digest)| async move {
            let resp = reg
                .send(
                    Method::GET,
                    &format!("/v2/{repo}/manifests/{tag}"),
                    &Cred::admin(),
                )
                .await;
            assert_eq!(resp.status(), StatusCode::OK, "{repo}:{tag}");
            let m: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
            let config = m["config"]["digest"].as_str().unwrap().to_string();
            let layer = m["layers"][0]["digest"].as_str().unwrap().to_string();
            for d in [config, layer] {
                let head = head_blob(reg, repo, &d).await;
                let get = blob_status(reg, repo, &d).await;
                if get != StatusCode::OK {
                    broken_ref.lock().unwrap().push(format!(
                        "{repo}:{tag} ({digest}) blob {d}: HEAD {head}, GET {get}"
                    ));
                }
            }
        })
        .await;
    let broken = broken.into_inner().unwrap();
    assert!(
        broken.is_empty(),
        "tagged images lost bytes to the orphan sweep ({} broken blobs, {} images): {broken:#?}",
        broken.len(),
        kept.len()
    );
    assert!(
        swept.is_empty(),
        "the orphan sweep deleted objects although nothing crashed: {swept:?}"
    );
}
