//! Helpers for the storage-lifecycle tests (`quotas.rs`, `retention.rs`): quotas, garbage
//! collection, retention runs, the blob files a filesystem backend holds, and pushes by every
//! upload method (monolithic, chunked with `Content-Length`, streamed without one).
//!
//! Everything talks to a running server in `--auth-mode local` as the administrator.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};

use super::api::{OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, descriptor, image_manifest, sha256};
use super::auth::{Cred, Reg};
use super::{Backends, KuraServer};

pub fn admin() -> Cred {
    Cred::admin()
}

/// `name` with `/` percent-encoded, for repository paths inside management API paths.
pub fn enc(path: &str) -> String {
    path.replace('/', "%2F")
}

// ---- quotas ---------------------------------------------------------------------------------

/// `GET /api/v1/projects/{p}/quota?verify=true`; asserts the maintained counters equal the
/// ones recomputed from scratch, and returns the body.
pub async fn quota(reg: &Reg, project: &str) -> Value {
    let v = reg
        .api_ok(
            Method::GET,
            &format!("/api/v1/projects/{project}/quota?verify=true"),
            &admin(),
            None,
            200,
        )
        .await;
    assert_eq!(
        v["usage_bytes"], v["recomputed_bytes"],
        "maintained usage of {project} differs from the recomputed one: {v}"
    );
    assert_eq!(
        v["blobs"], v["recomputed_blobs"],
        "maintained blob count of {project} differs from the recomputed one: {v}"
    );
    v
}

/// The project's usage in bytes (checked against the recomputed value).
pub async fn usage(reg: &Reg, project: &str) -> u64 {
    quota(reg, project).await["usage_bytes"]
        .as_u64()
        .expect("usage_bytes")
}

pub async fn set_quota(reg: &Reg, project: &str, limit: Option<u64>) -> Value {
    reg.api_ok(
        Method::PUT,
        &format!("/api/v1/projects/{project}/quota"),
        &admin(),
        Some(json!({ "storage_limit": limit })),
        200,
    )
    .await
}

// ---- garbage collection ---------------------------------------------------------------------

/// A GC run with no grace period and no deleted-manifest retention, waited for. Sleeps a few
/// milliseconds first: the run's cut-offs are strictly before its start.
pub async fn gc(reg: &Reg) -> Value {
    gc_with(reg, json!({})).await
}

/// [`gc`] with extra request fields (`dry_run`, `delete_untagged`, ...).
pub async fn gc_with(reg: &Reg, extra: Value) -> Value {
    tokio::time::sleep(Duration::from_millis(15)).await;
    let mut body = json!({
        "wait": true,
        "grace_seconds": 0,
        "deleted_manifest_retention_seconds": 0,
        "delete_untagged": false,
    });
    for (k, v) in extra.as_object().expect("object").iter() {
        body[k] = v.clone();
    }
    let run = reg
        .api_ok(Method::POST, "/api/v1/system/gc", &admin(), Some(body), 200)
        .await;
    assert_eq!(run["status"], "succeeded", "GC run: {run}");
    run
}

/// Objects in blob storage that metadata knows nothing about, as a dry GC run counts them.
pub async fn orphans(reg: &Reg) -> u64 {
    let run = gc_with(reg, json!({ "dry_run": true })).await;
    run["result"]["orphans_deleted"]
        .as_u64()
        .unwrap_or_else(|| panic!("GC result without orphans_deleted: {run}"))
}

/// Committed blob files of a filesystem backend (`None` on S3).
pub fn blob_files(srv: &KuraServer) -> Option<BTreeSet<PathBuf>> {
    if !Backends::from_env().blobs_on_disk() {
        return None;
    }
    let mut out = BTreeSet::new();
    walk(&srv.data_dir.join("blobs").join("blobs"), &mut out);
    Some(out)
}

fn walk(dir: &Path, out: &mut BTreeSet<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.insert(p);
        }
    }
}

// ---- pushes -----------------------------------------------------------------------------------

/// `HEAD /v2/<repo>/blobs/<digest>` status.
pub async fn blob_status(reg: &Reg, repo: &str, digest: &str) -> StatusCode {
    reg.send(
        Method::HEAD,
        &format!("/v2/{repo}/blobs/{digest}"),
        &admin(),
    )
    .await
    .status()
}

/// `HEAD /v2/<repo>/manifests/<reference>` status (a HEAD records no pull).
pub async fn manifest_status(reg: &Reg, repo: &str, reference: &str) -> StatusCode {
    reg.req(
        Method::HEAD,
        &format!("/v2/{repo}/manifests/{reference}"),
        &admin(),
    )
    .header("Accept", OCI_MANIFEST)
    .header("Accept", super::api::OCI_INDEX)
    .send()
    .await
    .expect("HEAD manifest")
    .status()
}

/// Monolithic push: `POST /v2/<repo>/blobs/uploads/?digest=` with the whole body.
pub async fn push_monolithic(reg: &Reg, repo: &str, data: &[u8]) -> Response {
    reg.req(
        Method::POST,
        &format!("/v2/{repo}/blobs/uploads/?digest={}", sha256(data)),
        &admin(),
    )
    .header(CONTENT_TYPE, "application/octet-stream")
    .body(data.to_vec())
    .send()
    .await
    .expect("monolithic POST")
}

/// POST then `PUT ?digest=` carrying the whole body (Content-Length known).
pub async fn push_post_put(reg: &Reg, repo: &str, data: &[u8]) -> Response {
    let loc = reg.start_upload(&admin(), repo).await;
    reg.req(
        Method::PUT,
        &super::api::with_query(&loc, "digest", &sha256(data)),
        &admin(),
    )
    .header(CONTENT_TYPE, "application/octet-stream")
    .body(data.to_vec())
    .send()
    .await
    .expect("PUT upload")
}

/// One `PATCH` with `Content-Range` and `Content-Length`.
pub async fn patch_chunk(reg: &Reg, loc: &str, start: usize, chunk: &[u8]) -> Response {
    reg.req(Method::PATCH, loc, &admin())
        .header(CONTENT_TYPE, "application/octet-stream")
        .header(
            "Content-Range",
            format!("{start}-{}", start + chunk.len() - 1),
        )
        .body(chunk.to_vec())
        .send()
        .await
        .expect("PATCH")
}

/// One `PATCH` whose body is streamed (`Transfer-Encoding: chunked`, no `Content-Length`).
pub async fn patch_streamed(reg: &Reg, loc: &str, data: &[u8]) -> Response {
    let parts: Vec<Result<Vec<u8>, std::io::Error>> =
        data.chunks(1000).map(|p| Ok(p.to_vec())).collect();
    reg.req(Method::PATCH, loc, &admin())
        .header(CONTENT_TYPE, "application/octet-stream")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            parts,
        )))
        .send()
        .await
        .expect("streamed PATCH")
}

/// The closing `PUT ?digest=` without a body.
pub async fn put_close(reg: &Reg, loc: &str, digest: &str) -> Response {
    reg.req(
        Method::PUT,
        &super::api::with_query(loc, "digest", digest),
        &admin(),
    )
    .send()
    .await
    .expect("closing PUT")
}

/// Chunked push: POST, PATCHes of `chunk` bytes with Content-Length, closing PUT.
pub async fn push_chunked(reg: &Reg, repo: &str, data: &[u8], chunk: usize) -> Response {
    let mut loc = reg.start_upload(&admin(), repo).await;
    let mut start = 0;
    for c in data.chunks(chunk) {
        let resp = patch_chunk(reg, &loc, start, c).await;
        if resp.status() != StatusCode::ACCEPTED {
            return resp;
        }
        loc = resp.headers()["location"].to_str().unwrap().to_string();
        start += c.len();
    }
    put_close(reg, &loc, &sha256(data)).await
}

/// Streamed push: POST, one PATCH without Content-Length, closing PUT (the size is known to
/// the server only at the commit).
pub async fn push_streamed(reg: &Reg, repo: &str, data: &[u8]) -> Response {
    let loc = reg.start_upload(&admin(), repo).await;
    let resp = patch_streamed(reg, &loc, data).await;
    if resp.status() != StatusCode::ACCEPTED {
        return resp;
    }
    let loc = resp.headers()["location"].to_str().unwrap().to_string();
    put_close(reg, &loc, &sha256(data)).await
}

/// Expects a 201 from a blob push.
pub async fn created(resp: Response, what: &str) {
    let status = resp.status();
    assert_eq!(
        status,
        StatusCode::CREATED,
        "{what}: {}",
        super::api::describe(resp).await
    );
}

/// `PUT /v2/<repo>/manifests/<reference>` with `media_type`.
pub async fn put_manifest(
    reg: &Reg,
    repo: &str,
    reference: &str,
    media_type: &str,
    body: &[u8],
) -> Response {
    reg.req(
        Method::PUT,
        &format!("/v2/{repo}/manifests/{reference}"),
        &admin(),
    )
    .header(CONTENT_TYPE, media_type)
    .body(body.to_vec())
    .send()
    .await
    .expect("PUT manifest")
}

/// PUTs a manifest expecting 201; returns its digest.
pub async fn put_manifest_ok(
    reg: &Reg,
    repo: &str,
    reference: &str,
    media_type: &str,
    body: &[u8],
) -> String {
    let resp = put_manifest(reg, repo, reference, media_type, body).await;
    created(resp, &format!("PUT manifest {repo}:{reference}")).await;
    sha256(body)
}

/// An image manifest over `config` and `layers` (blobs must be in the repository).
pub fn manifest_of(config: &[u8], layers: &[&[u8]]) -> Vec<u8> {
    let layers: Vec<Value> = layers.iter().map(|l| descriptor(OCI_LAYER, l)).collect();
    image_manifest(&descriptor(OCI_CONFIG, config), &layers, None)
}

/// `DELETE` on a `/v2` path; returns the status and the response.
pub async fn delete(reg: &Reg, path: &str) -> Response {
    reg.send(Method::DELETE, path, &admin()).await
}

// ---- artifacts and retention ------------------------------------------------------------------

/// Artifacts of `project/path` (management API; not a pull).
pub async fn artifacts(reg: &Reg, project: &str, path: &str) -> Vec<Value> {
    let v = reg
        .api_ok(
            Method::GET,
            &format!(
                "/api/v1/projects/{project}/repositories/{}/artifacts?n=1000",
                enc(path)
            ),
            &admin(),
            None,
            200,
        )
        .await;
    v.as_array()
        .unwrap_or_else(|| panic!("artifacts is not a list: {v}"))
        .clone()
}

/// Digests of the artifacts of `project/path`, sorted.
pub async fn artifact_digests(reg: &Reg, project: &str, path: &str) -> BTreeSet<String> {
    artifacts(reg, project, path)
        .await
        .iter()
        .map(|a| a["digest"].as_str().expect("digest").to_string())
        .collect()
}

pub async fn set_retention(reg: &Reg, project: &str, rules: Value) -> Value {
    reg.api_ok(
        Method::PUT,
        &format!("/api/v1/projects/{project}/retention"),
        &admin(),
        Some(json!({ "rules": rules, "schedule": null })),
        200,
    )
    .await
}

/// Runs the project's retention policy; asserts the run succeeded and returns it.
pub async fn run_retention(reg: &Reg, project: &str, dry_run: bool) -> Value {
    let run = reg
        .api_ok(
            Method::POST,
            &format!("/api/v1/projects/{project}/retention/runs"),
            &admin(),
            Some(json!({ "dry_run": dry_run })),
            200,
        )
        .await;
    assert_eq!(run["status"], "succeeded", "retention run: {run}");
    assert_eq!(run["dry_run"], dry_run, "retention run: {run}");
    run
}

/// The digests a retention run deleted (or would delete), sorted.
pub fn deleted_digests(run: &Value) -> BTreeSet<String> {
    run["result"]["deletions"]
        .as_array()
        .unwrap_or_else(|| panic!("run without deletions: {run}"))
        .iter()
        .map(|d| d["digest"].as_str().expect("digest").to_string())
        .collect()
}
