//! Small helpers for the OCI Distribution API black-box tests (`distribution_*.rs`).
//!
//! Everything here talks to a running [`KuraServer`] over real HTTP with an async reqwest client.
#![allow(dead_code)]

use super::KuraServer;
use reqwest::header::HeaderMap;
use reqwest::{Client, Method, Response, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256, Sha512};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// The empty JSON blob `{}` used as config of artifact manifests.
pub const EMPTY_BLOB: &[u8] = b"{}";
pub const EMPTY_BLOB_DIGEST: &str =
    "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";

/// Error codes allowed by the OCI Distribution Spec v1.1 ("The `code` field MUST be one of the following").
pub const SPEC_ERROR_CODES: &[&str] = &[
    "BLOB_UNKNOWN",
    "BLOB_UPLOAD_INVALID",
    "BLOB_UPLOAD_UNKNOWN",
    "DIGEST_INVALID",
    "MANIFEST_BLOB_UNKNOWN",
    "MANIFEST_INVALID",
    "MANIFEST_UNKNOWN",
    "NAME_INVALID",
    "NAME_UNKNOWN",
    "SIZE_INVALID",
    "UNAUTHORIZED",
    "DENIED",
    "UNSUPPORTED",
    "TOOMANYREQUESTS",
];

/// A digest that no test ever pushes.
pub const MISSING_DIGEST: &str =
    "sha256:0000000000000000000000000000000000000000000000000000000000000000";

pub fn client() -> Client {
    Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("reqwest client")
}

/// Test context: a fresh server plus a client.
pub struct Ctx {
    pub srv: KuraServer,
    pub http: Client,
}

impl Ctx {
    pub fn new() -> Ctx {
        Ctx {
            srv: KuraServer::start(),
            http: client(),
        }
    }

    pub fn with_args(args: &[&str]) -> Ctx {
        Ctx {
            srv: KuraServer::start_with(args, &[]),
            http: client(),
        }
    }

    /// Absolute URL for a path (`/v2/...`) or an absolute URL (returned unchanged).
    pub fn url(&self, path_or_url: &str) -> String {
        if path_or_url.starts_with("http://") || path_or_url.starts_with("https://") {
            path_or_url.to_string()
        } else {
            self.srv.url(path_or_url)
        }
    }

    pub fn req(&self, method: Method, path_or_url: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.url(path_or_url))
    }

    pub async fn get(&self, path: &str) -> Response {
        self.req(Method::GET, path).send().await.expect("GET")
    }

    pub async fn head(&self, path: &str) -> Response {
        self.req(Method::HEAD, path).send().await.expect("HEAD")
    }

    pub async fn delete(&self, path: &str) -> Response {
        self.req(Method::DELETE, path).send().await.expect("DELETE")
    }

    /// Strips the server's base URL from an absolute Location so that it can be compared with a path.
    pub fn path_of(&self, location: &str) -> String {
        location
            .strip_prefix(&self.srv.base_url)
            .unwrap_or(location)
            .to_string()
    }

    // ---- blobs ----

    /// `POST /v2/<repo>/blobs/uploads/` expecting 202; returns the Location (as sent by the server).
    pub async fn start_upload(&self, repo: &str) -> String {
        let resp = self
            .req(Method::POST, &format!("/v2/{repo}/blobs/uploads/"))
            .body(Vec::<u8>::new())
            .send()
            .await
            .expect("POST upload");
        assert_eq!(
            resp.status(),
            StatusCode::ACCEPTED,
            "start upload in {repo}: {}",
            describe(resp).await
        );
        location(&resp)
    }

    /// Pushes a blob with POST then PUT; returns its sha256 digest.
    pub async fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        let digest = sha256(data);
        let loc = self.start_upload(repo).await;
        let resp = self
            .req(Method::PUT, &with_query(&loc, "digest", &digest))
            .header("Content-Type", "application/octet-stream")
            .body(data.to_vec())
            .send()
            .await
            .expect("PUT upload");
        assert_eq!(
            resp.status(),
            StatusCode::CREATED,
            "push blob to {repo}: {}",
            describe(resp).await
        );
        digest
    }

    pub async fn blob_status(&self, repo: &str, digest: &str) -> StatusCode {
        self.head(&format!("/v2/{repo}/blobs/{digest}"))
            .await
            .status()
    }

    // ---- manifests ----

    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Response {
        self.req(Method::PUT, &format!("/v2/{repo}/manifests/{reference}"))
            .header("Content-Type", media_type)
            .body(body.to_vec())
            .send()
            .await
            .expect("PUT manifest")
    }

    /// PUTs a manifest expecting 201; returns its sha256 digest.
    pub async fn put_manifest_ok(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> String {
        let resp = self.put_manifest(repo, reference, media_type, body).await;
        assert_eq!(
            resp.status(),
            StatusCode::CREATED,
            "PUT manifest {repo}:{reference}: {}",
            describe(resp).await
        );
        sha256(body)
    }

    /// Pushes a config and one layer, then an OCI image manifest under `reference`.
    pub async fn push_image(&self, repo: &str, reference: &str) -> Image {
        let config = random_config();
        let layer = random_bytes(300);
        let config_digest = self.push_blob(repo, &config).await;
        let layer_digest = self.push_blob(repo, &layer).await;
        let manifest = image_manifest(
            &descriptor(OCI_CONFIG, &config),
            &[descriptor(OCI_LAYER, &layer)],
            None,
        );
        let digest = self
            .put_manifest_ok(repo, reference, OCI_MANIFEST, &manifest)
            .await;
        Image {
            manifest,
            digest,
            config,
            config_digest,
            layer,
            layer_digest,
        }
    }

    /// Pushes the empty blob `{}` to `repo`.
    pub async fn push_empty_blob(&self, repo: &str) {
        let d = self.push_blob(repo, EMPTY_BLOB).await;
        assert_eq!(d, EMPTY_BLOB_DIGEST);
    }

    /// Pushes an artifact manifest (empty config, one layer) referring to `subject`; returns (bytes, digest).
    pub async fn push_artifact(
        &self,
        repo: &str,
        reference: Option<&str>,
        artifact_type: Option<&str>,
        subject: Option<Value>,
        annotations: Option<Value>,
    ) -> (Vec<u8>, String) {
        self.push_empty_blob(repo).await;
        let layer = random_bytes(64);
        self.push_blob(repo, &layer).await;
        let mut m = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_EMPTY, "digest": EMPTY_BLOB_DIGEST, "size": 2},
            "layers": [descriptor("application/vnd.example.payload", &layer)],
        });
        if let Some(t) = artifact_type {
            m["artifactType"] = json!(t);
        }
        if let Some(s) = subject {
            m["subject"] = s;
        }
        if let Some(a) = annotations {
            m["annotations"] = a;
        }
        let body = serde_json::to_vec(&m).unwrap();
        let digest = sha256(&body);
        let reference = reference
            .map(str::to_string)
            .unwrap_or_else(|| digest.clone());
        self.put_manifest_ok(repo, &reference, OCI_MANIFEST, &body)
            .await;
        (body, digest)
    }
}

/// What [`Ctx::push_image`] pushed.
pub struct Image {
    pub manifest: Vec<u8>,
    pub digest: String,
    pub config: Vec<u8>,
    pub config_digest: String,
    pub layer: Vec<u8>,
    pub layer_digest: String,
}

impl Image {
    /// A descriptor of this image's manifest.
    pub fn descriptor(&self) -> Value {
        json!({"mediaType": OCI_MANIFEST, "digest": self.digest, "size": self.manifest.len()})
    }
}

// ---- digests & data ----

pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

pub fn sha512(data: &[u8]) -> String {
    format!("sha512:{}", hex::encode(Sha512::digest(data)))
}

/// Checks that `digest` (sha256 or sha512) is the digest of `data`.
pub fn digest_matches(digest: &str, data: &[u8]) -> bool {
    match digest.split_once(':') {
        Some(("sha256", _)) => sha256(data) == digest,
        Some(("sha512", _)) => sha512(data) == digest,
        _ => false,
    }
}

pub fn random_bytes(n: usize) -> Vec<u8> {
    use rand::RngCore;
    let mut v = vec![0u8; n];
    rand::rng().fill_bytes(&mut v);
    v
}

pub fn random_hex(n_bytes: usize) -> String {
    hex::encode(random_bytes(n_bytes))
}

/// A small, unique OCI image config.
pub fn random_config() -> Vec<u8> {
    serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", random_hex(32))]},
    }))
    .unwrap()
}

pub fn descriptor(media_type: &str, data: &[u8]) -> Value {
    json!({"mediaType": media_type, "digest": sha256(data), "size": data.len()})
}

pub fn image_manifest(config: &Value, layers: &[Value], subject: Option<&Value>) -> Vec<u8> {
    let mut m = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config,
        "layers": layers,
    });
    if let Some(s) = subject {
        m["subject"] = s.clone();
    }
    serde_json::to_vec(&m).unwrap()
}

pub fn image_index(manifests: &[Value]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": manifests,
    }))
    .unwrap()
}

/// An OCI manifest of exactly `len` bytes (padded with an annotation).
pub fn padded_manifest(config: &[u8], len: usize) -> Vec<u8> {
    let make = |pad: usize| {
        let mut m: Value =
            serde_json::from_slice(&image_manifest(&descriptor(OCI_CONFIG, config), &[], None))
                .unwrap();
        m["annotations"] = json!({"pad": "x".repeat(pad)});
        serde_json::to_vec(&m).unwrap()
    };
    let base = make(0).len();
    assert!(base <= len, "manifest skeleton is already {base} bytes");
    let body = make(len - base);
    assert_eq!(body.len(), len);
    body
}

// ---- URLs ----

/// Appends `key=value` to a URL or path that may already carry a query string.
pub fn with_query(url: &str, key: &str, value: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{key}={}", encode_query(value))
}

/// Percent-encodes a query value (everything but unreserved characters and `:`).
pub fn encode_query(v: &str) -> String {
    let mut out = String::new();
    for b in v.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b':' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

// ---- responses ----

pub fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .map(|v| v.to_str().expect("header is ASCII"))
}

/// The value of a header that must be present.
pub fn must_header(resp: &Response, name: &str) -> String {
    header(resp.headers(), name)
        .unwrap_or_else(|| {
            panic!(
                "missing header {name} on {} {}: {:?}",
                resp.status(),
                resp.url(),
                resp.headers()
            )
        })
        .to_string()
}

pub fn location(resp: &Response) -> String {
    must_header(resp, "Location")
}

/// Status, headers and body of a response, for assertion messages.
pub async fn describe(resp: Response) -> String {
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.text().await.unwrap_or_default();
    let body: String = body.chars().take(2000).collect();
    format!("status {status}, headers {headers:?}, body {body}")
}

/// One entry of an OCI error body.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: String,
    pub message: String,
    pub detail: Option<Value>,
}

/// Asserts the status and parses the OCI error body; checks every code is a spec code.
pub async fn error_body(resp: Response, status: StatusCode) -> Vec<ApiError> {
    let got = resp.status();
    let url = resp.url().to_string();
    let headers = resp.headers().clone();
    let text = resp.text().await.expect("error body");
    assert_eq!(
        got, status,
        "{url}: expected {status}, got {got}; headers {headers:?}; body {text}"
    );
    let v: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{url}: error body is not JSON ({e}): {text:?}"));
    let errors = v["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("{url}: error body has no `errors` array: {text}"));
    assert!(!errors.is_empty(), "{url}: empty `errors` array: {text}");
    errors
        .iter()
        .map(|e| {
            let code = e["code"]
                .as_str()
                .unwrap_or_else(|| panic!("{url}: error without string code: {text}"));
            assert!(
                SPEC_ERROR_CODES.contains(&code),
                "{url}: error code {code} is not one of the spec's error codes: {text}"
            );
            if let Some(m) = e.get("message") {
                assert!(m.is_string(), "{url}: message must be a string: {text}");
            }
            ApiError {
                code: code.to_string(),
                message: e["message"].as_str().unwrap_or_default().to_string(),
                detail: e.get("detail").cloned(),
            }
        })
        .collect()
}

/// Asserts the status and that the error body contains `code`; returns that error.
pub async fn expect_error(resp: Response, status: StatusCode, code: &str) -> ApiError {
    let url = resp.url().to_string();
    let errors = error_body(resp, status).await;
    errors
        .iter()
        .find(|e| e.code == code)
        .cloned()
        .unwrap_or_else(|| panic!("{url}: expected error code {code}, got {errors:?}"))
}

/// Asserts a 200 JSON response and returns it.
pub async fn json_ok(resp: Response) -> (HeaderMap, Value) {
    let status = resp.status();
    let headers = resp.headers().clone();
    let text = resp.text().await.expect("body");
    assert_eq!(status, StatusCode::OK, "headers {headers:?}, body {text}");
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (headers, v)
}

/// Parses `Link: <URL>; rel="next"`, returning the URL.
pub fn next_link(headers: &HeaderMap) -> Option<String> {
    let link = header(headers, "Link")?;
    let (target, params) = link
        .split_once(';')
        .unwrap_or_else(|| panic!("malformed Link: {link}"));
    let target = target.trim();
    assert!(
        target.starts_with('<') && target.ends_with('>'),
        "malformed Link target: {link}"
    );
    assert!(
        params.split(';').any(|p| {
            let p = p.trim().replace(' ', "");
            p == "rel=\"next\"" || p == "rel=next"
        }),
        "Link without rel=\"next\": {link}"
    );
    Some(target[1..target.len() - 1].to_string())
}

/// Splits a query string into decoded (key, value) pairs.
pub fn query_pairs(url: &str) -> Vec<(String, String)> {
    let Some((_, q)) = url.split_once('?') else {
        return vec![];
    };
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let h = u8::from_str_radix(&s[i + 1..i + 3], 16).expect("percent escape");
            out.push(h);
            i += 3;
        } else if b[i] == b'+' {
            out.push(b' ');
            i += 1;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).expect("utf-8 query")
}
