//! The distribution API over HTTP, for one registry host: scheme discovery (HTTPS, with the
//! plain-HTTP fallback docker allows for loopback and `--insecure` registries), the
//! `WWW-Authenticate` challenge dance (Bearer tokens cached per scope, or Basic), and one
//! method per API call the CLI needs. Blob bodies are streams, never buffers; everything small
//! (manifests, configs, listings) is size-capped and checked against its digest.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use kura_oci::{Algorithm, Descriptor, Digest};
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::Deserialize;
use tokio::sync::OnceCell;

use crate::credentials::Credential;
use crate::reference::api_host;
use crate::{ClientError, Result};

/// Manifest media types the client accepts, in the order registries should prefer them.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json";
/// Manifests and configs above this are refused (the reference registry caps manifests at 4 MiB).
pub const MAX_SMALL_BODY: u64 = 16 << 20;
const PAGE: u32 = 1000;

/// How to reach registries.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// Accept any certificate and allow plain HTTP (docker's "insecure registry").
    pub insecure: bool,
    /// Extra CA certificates (PEM) to trust.
    pub ca_file: Option<PathBuf>,
    /// Speak plain HTTP without trying HTTPS first.
    pub plain_http: bool,
}

/// Which part of the registry a request needs rights to (the token scope).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scope(String);

impl Scope {
    pub fn pull(repo: &str) -> Scope {
        Scope(format!("repository:{repo}:pull"))
    }
    pub fn push(repo: &str) -> Scope {
        Scope(format!("repository:{repo}:pull,push"))
    }
    pub fn delete(repo: &str) -> Scope {
        Scope(format!("repository:{repo}:delete"))
    }
    /// Push to `repo` and mount from `from`.
    pub fn push_mounting(repo: &str, from: &str) -> Scope {
        Scope(format!(
            "repository:{repo}:pull,push repository:{from}:pull"
        ))
    }
    pub fn catalog() -> Scope {
        Scope("registry:catalog:*".into())
    }
    pub fn none() -> Scope {
        Scope(String::new())
    }

    /// `pull,push on repository a/b` — for messages.
    fn describe(&self) -> String {
        let parts: Vec<String> = self
            .0
            .split(' ')
            .filter_map(split_scope)
            .map(|(resource, actions)| {
                let name = resource.split_once(':').map(|(_, n)| n).unwrap_or(resource);
                format!("{} on {name}", actions.join(","))
            })
            .collect();
        if parts.is_empty() {
            "this request".into()
        } else {
            parts.join(" and ")
        }
    }

    /// Whether a token for `self` also grants everything `other` asks (a push token serves
    /// the pulls of the same repository; a mount token serves the plain push).
    fn covers(&self, other: &Scope) -> bool {
        let granted: Vec<(&str, Vec<&str>)> = self.0.split(' ').filter_map(split_scope).collect();
        other.0.split(' ').filter(|p| !p.is_empty()).all(|part| {
            split_scope(part).is_some_and(|(resource, actions)| {
                granted
                    .iter()
                    .any(|(r, a)| *r == resource && actions.iter().all(|x| a.contains(x)))
            })
        })
    }
}

/// `type:name:action,action` → (`type:name`, actions).
fn split_scope(part: &str) -> Option<(&str, Vec<&str>)> {
    let (resource, actions) = part.rsplit_once(':')?;
    Some((resource, actions.split(',').collect()))
}

/// What a registry said when it refused: the OCI error body's first entry.
#[derive(Debug, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<ErrorEntry>,
    // The management API's shape.
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ErrorEntry {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

#[derive(Debug, Deserialize)]
struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
}

/// A manifest as fetched: the exact bytes, which is what its digest is of.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    pub bytes: Bytes,
    pub media_type: String,
    pub digest: Digest,
}

impl FetchedManifest {
    /// A descriptor pointing at this manifest.
    pub fn descriptor(&self) -> Descriptor {
        Descriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: self.bytes.len() as u64,
            urls: None,
            artifact_type: None,
            annotations: None,
        }
    }
}

/// The answer to a cross-repository mount.
pub enum Mount {
    Mounted,
    /// The registry did not mount but opened an upload session instead (its `Location`).
    NotMounted(Option<String>),
}

type AuthState = Option<Challenge>;

#[derive(Debug, Clone)]
enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

/// A client for one registry host.
pub struct Registry {
    http: reqwest::Client,
    /// The registry as named in references (`docker.io`, `host:port`).
    name: String,
    host: String,
    options: ConnectOptions,
    credential: Option<Credential>,
    base: OnceCell<String>,
    challenge: Mutex<AuthState>,
    tokens: Mutex<HashMap<Scope, String>>,
}

impl Registry {
    /// A client for `registry` (a reference's registry part). Nothing is sent yet.
    pub fn new(
        registry: &str,
        credential: Option<Credential>,
        options: &ConnectOptions,
    ) -> Result<Registry> {
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("kura/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(30))
            .read_timeout(Duration::from_secs(300));
        if options.insecure {
            builder = builder.danger_accept_invalid_certs(true);
        }
        if let Some(ca) = &options.ca_file
            && !options.insecure
        {
            let pem = std::fs::read(ca)
                .map_err(ClientError::io(format!("reading CA file {}", ca.display())))?;
            let config = crate::tls::config_with_ca_file(&pem, &ca.display().to_string())?;
            builder = builder.tls_backend_preconfigured(config);
        }
        let http = builder
            .build()
            .map_err(|e| ClientError::Usage(format!("cannot set up HTTP: {e}")))?;
        Ok(Registry {
            http,
            name: registry.to_string(),
            host: api_host(registry).to_string(),
            options: options.clone(),
            credential,
            base: OnceCell::new(),
            challenge: Mutex::new(None),
            tokens: Mutex::new(HashMap::new()),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `scheme://host`, found on first use: HTTPS, or plain HTTP where docker would allow it.
    pub async fn base(&self) -> Result<&str> {
        self.base
            .get_or_try_init(|| async {
                let loopback = is_loopback(&self.host);
                let schemes: &[&str] = if self.options.plain_http {
                    &["http"]
                } else if self.options.insecure || loopback {
                    &["https", "http"]
                } else {
                    &["https"]
                };
                let mut first_error = None;
                for scheme in schemes {
                    let url = format!("{scheme}://{}/v2/", self.host);
                    match self.http.get(&url).send().await {
                        Ok(resp) => {
                            self.note_challenge(&resp);
                            return Ok(format!("{scheme}://{}", self.host));
                        }
                        Err(e) => {
                            if first_error.is_none() {
                                first_error = Some(self.transport_error(&e));
                            }
                        }
                    }
                }
                Err(first_error.expect("at least one scheme"))
            })
            .await
            .map(String::as_str)
    }

    fn transport_error(&self, e: &reqwest::Error) -> ClientError {
        let text = error_chain(e);
        let lower = text.to_lowercase();
        if lower.contains("certificate")
            || lower.contains("tls")
            || lower.contains("ssl")
            || lower.contains("handshake")
            || lower.contains("invalidcontenttype")
        {
            ClientError::Tls(format!(
                "TLS with {} failed: {text}\n  If the registry uses a private CA, pass --ca-file \
                 PEM; if it is plain HTTP or self-signed and you trust the network, pass \
                 --insecure.",
                self.host
            ))
        } else {
            ClientError::Connect(format!("cannot reach {}: {text}", self.host))
        }
    }

    fn note_challenge(&self, resp: &Response) {
        if resp.status() != StatusCode::UNAUTHORIZED {
            return;
        }
        if let Some(c) = resp
            .headers()
            .get_all(header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(parse_challenge)
        {
            *self.challenge.lock().expect("challenge lock") = Some(c);
        }
    }

    fn basic_header(&self) -> Option<HeaderValue> {
        let c = self.credential.as_ref()?;
        let raw = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", c.username, c.secret));
        HeaderValue::from_str(&format!("Basic {raw}")).ok()
    }

    /// The Authorization header to send proactively for `scope`, if any is known.
    fn auth_header(&self, scope: &Scope) -> Option<HeaderValue> {
        let challenge = self.challenge.lock().expect("challenge lock").clone();
        match challenge {
            Some(Challenge::Basic) => self.basic_header(),
            Some(Challenge::Bearer { .. }) => {
                let tokens = self.tokens.lock().expect("token lock");
                tokens
                    .get(scope)
                    .or_else(|| {
                        tokens
                            .iter()
                            .find(|(granted, _)| !scope.0.is_empty() && granted.covers(scope))
                            .map(|(_, t)| t)
                    })
                    .and_then(|t| HeaderValue::from_str(&format!("Bearer {t}")).ok())
            }
            None => None,
        }
    }

    /// Fetches a token for `scope` from the realm the registry named.
    async fn fetch_token(&self, realm: &str, service: Option<&str>, scope: &Scope) -> Result<()> {
        let mut query: Vec<(&str, &str)> = Vec::new();
        if let Some(s) = service {
            query.push(("service", s));
        }
        for part in scope.0.split(' ').filter(|s| !s.is_empty()) {
            query.push(("scope", part));
        }
        let mut req = self.http.get(realm).query(&query);
        if let Some(h) = self.basic_header() {
            req = req.header(header::AUTHORIZATION, h);
        }
        let resp = req.send().await.map_err(|e| self.transport_error(&e))?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(self.auth_failure(status, resp).await);
        }
        if !status.is_success() {
            return Err(ClientError::Registry(format!(
                "token service at {realm} answered {status}"
            )));
        }
        let body: TokenResponse = read_json(resp, 1 << 20).await?;
        let token = body
            .token
            .or(body.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ClientError::Registry(format!("token service at {realm} sent no token"))
            })?;
        self.tokens
            .lock()
            .expect("token lock")
            .insert(scope.clone(), token);
        Ok(())
    }

    async fn auth_failure(&self, status: StatusCode, resp: Response) -> ClientError {
        let detail = error_message(resp).await;
        let who = match &self.credential {
            Some(c) => format!("as {:?}", c.username),
            None => "anonymously".to_string(),
        };
        if status == StatusCode::FORBIDDEN {
            ClientError::Auth(format!(
                "{}: access denied {who}{}",
                self.name,
                detail.map(|d| format!(": {d}")).unwrap_or_default()
            ))
        } else if self.credential.is_some() {
            ClientError::Auth(format!(
                "{}: authentication failed {who}{}; check the credentials (kura login {})",
                self.name,
                detail.map(|d| format!(": {d}")).unwrap_or_default(),
                self.name
            ))
        } else {
            ClientError::Auth(format!(
                "{}: authentication required{}; run `kura login {}`",
                self.name,
                detail.map(|d| format!(" ({d})")).unwrap_or_default(),
                self.name
            ))
        }
    }

    /// Sends a request built by `build` (called again for the retry after a challenge), with
    /// credentials for `scope`. Returns the response whatever its status, except that a final
    /// 401 becomes an [`ClientError::Auth`].
    pub async fn send(
        &self,
        scope: &Scope,
        build: impl Fn(&reqwest::Client, &str) -> RequestBuilder,
    ) -> Result<Response> {
        let base = self.base().await?.to_string();
        let mut retried = false;
        let mut token_granted = false;
        loop {
            let mut req = build(&self.http, &base);
            if let Some(h) = self.auth_header(scope) {
                req = req.header(header::AUTHORIZATION, h);
            }
            let resp = req.send().await.map_err(|e| self.transport_error(&e))?;
            if resp.status() != StatusCode::UNAUTHORIZED {
                return Ok(resp);
            }
            self.note_challenge(&resp);
            if retried {
                if token_granted && let Some(c) = &self.credential {
                    // The token service took the credentials; the token just lacks the right.
                    let detail = error_message(resp).await;
                    return Err(ClientError::Auth(format!(
                        "{}: access denied for {:?}: {} is not allowed{}; check that the \
                         repository's project exists and that this account may do this there",
                        self.name,
                        c.username,
                        scope.describe(),
                        detail.map(|d| format!(" ({d})")).unwrap_or_default()
                    )));
                }
                return Err(self.auth_failure(StatusCode::UNAUTHORIZED, resp).await);
            }
            retried = true;
            let challenge = self.challenge.lock().expect("challenge lock").clone();
            match challenge {
                Some(Challenge::Bearer { realm, service }) => {
                    self.fetch_token(&realm, service.as_deref(), scope).await?;
                    token_granted = true;
                }
                Some(Challenge::Basic) if self.credential.is_some() => {}
                _ => return Err(self.auth_failure(StatusCode::UNAUTHORIZED, resp).await),
            }
        }
    }

    /// Sends once, with whatever credentials are known (for bodies that cannot be replayed:
    /// make sure a retried request with the same scope went first).
    pub async fn send_once(&self, scope: &Scope, req: RequestBuilder) -> Result<Response> {
        let mut req = req;
        if let Some(h) = self.auth_header(scope) {
            req = req.header(header::AUTHORIZATION, h);
        }
        let resp = req.send().await.map_err(|e| self.transport_error(&e))?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            return Err(self.auth_failure(StatusCode::UNAUTHORIZED, resp).await);
        }
        Ok(resp)
    }

    /// Checks that the registry answers and accepts the credentials (`kura login`).
    pub async fn check_login(&self) -> Result<()> {
        let resp = self
            .send(&Scope::none(), |c, base| c.get(format!("{base}/v2/")))
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(()),
            StatusCode::FORBIDDEN => Err(self.auth_failure(StatusCode::FORBIDDEN, resp).await),
            StatusCode::NOT_FOUND => Err(ClientError::Registry(format!(
                "{} does not serve the registry API at /v2/",
                self.name
            ))),
            s => Err(ClientError::Registry(format!(
                "{}: /v2/ answered {s}",
                self.name
            ))),
        }
    }

    /// Fetches a manifest by tag or digest; checks it against the digest asked for.
    pub async fn get_manifest(&self, repo: &str, reference: &str) -> Result<FetchedManifest> {
        let url_ref = reference.to_string();
        let resp = self
            .send(&Scope::pull(repo), |c, base| {
                c.get(format!("{base}/v2/{repo}/manifests/{url_ref}"))
                    .header(header::ACCEPT, MANIFEST_ACCEPT)
            })
            .await?;
        let resp = self
            .check(resp, &format!("{}/{repo}:{reference}", self.name))
            .await?;
        let media_type = content_type(resp.headers());
        let header_digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.parse::<Digest>().ok());
        let bytes = read_capped(resp, MAX_SMALL_BODY).await?;
        let algorithm = match reference.parse::<Digest>() {
            Ok(d) => d.algorithm(),
            Err(_) => header_digest
                .as_ref()
                .map(|d| d.algorithm())
                .unwrap_or(Algorithm::Sha256),
        };
        let digest = algorithm.digest_of(&bytes);
        if let Ok(asked) = reference.parse::<Digest>()
            && asked != digest
        {
            return Err(ClientError::Integrity(format!(
                "manifest {reference} from {} has digest {digest}",
                self.name
            )));
        }
        let media_type = media_type
            .filter(|m| !m.is_empty() && m != "application/json" && m != "text/plain")
            .or_else(|| media_type_in(&bytes))
            .unwrap_or_else(|| "application/vnd.oci.image.manifest.v1+json".into());
        Ok(FetchedManifest {
            bytes,
            media_type,
            digest,
        })
    }

    /// HEAD of a manifest: its digest, media type and size, or None if absent.
    pub async fn head_manifest(&self, repo: &str, reference: &str) -> Result<Option<Descriptor>> {
        let resp = self
            .send(&Scope::pull(repo), |c, base| {
                c.head(format!("{base}/v2/{repo}/manifests/{reference}"))
                    .header(header::ACCEPT, MANIFEST_ACCEPT)
            })
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let resp = self
            .check(resp, &format!("{}/{repo}:{reference}", self.name))
            .await?;
        let h = resp.headers();
        let digest = match h
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.parse::<Digest>().ok())
        {
            Some(d) => d,
            // Without the header a HEAD tells nothing useful: fetch.
            None => return Ok(Some(self.get_manifest(repo, reference).await?.descriptor())),
        };
        Ok(Some(Descriptor {
            media_type: content_type(h).unwrap_or_default(),
            digest,
            size: content_length(h).unwrap_or(0),
            urls: None,
            artifact_type: None,
            annotations: None,
        }))
    }

    /// Stores a manifest under a tag or its digest; returns the digest the registry reports.
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &Bytes,
    ) -> Result<Digest> {
        let resp = self
            .send(&Scope::push(repo), |c, base| {
                c.put(format!("{base}/v2/{repo}/manifests/{reference}"))
                    .header(header::CONTENT_TYPE, media_type)
                    .body(bytes.clone())
            })
            .await?;
        let resp = self
            .check(resp, &format!("{}/{repo}:{reference}", self.name))
            .await?;
        let ours = Algorithm::Sha256.digest_of(bytes);
        match resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.parse::<Digest>().ok())
        {
            Some(d) if d.algorithm() == ours.algorithm() && d != ours => {
                Err(ClientError::Integrity(format!(
                    "{} stored the manifest as {d}, but its digest is {ours}",
                    self.name
                )))
            }
            _ => Ok(ours),
        }
    }

    /// Deletes a manifest (by digest) or a tag.
    pub async fn delete_manifest(&self, repo: &str, reference: &str) -> Result<()> {
        let resp = self
            .send(&Scope::delete(repo), |c, base| {
                c.delete(format!("{base}/v2/{repo}/manifests/{reference}"))
            })
            .await?;
        let what = format!("{}/{repo}:{reference}", self.name);
        match resp.status() {
            StatusCode::METHOD_NOT_ALLOWED => Err(ClientError::Unsupported(format!(
                "{}: deleting {what} is not allowed by this registry{}",
                self.name,
                if reference.contains(':') {
                    " (deletion may be disabled)"
                } else {
                    " (it may not support deleting tags: delete by digest instead)"
                }
            ))),
            StatusCode::BAD_REQUEST if !reference.contains(':') => {
                let msg = error_message(resp).await.unwrap_or_default();
                Err(ClientError::Unsupported(format!(
                    "{}: the registry refused to delete tag {reference} ({msg}); many registries \
                     delete only by digest",
                    self.name
                )))
            }
            _ => {
                self.check(resp, &what).await?;
                Ok(())
            }
        }
    }

    /// Whether a blob exists in the repository.
    pub async fn blob_exists(&self, repo: &str, digest: &Digest) -> Result<bool> {
        let resp = self
            .send(&Scope::pull(repo), |c, base| {
                c.head(format!("{base}/v2/{repo}/blobs/{digest}"))
            })
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => {
                self.check(resp, &format!("blob {digest}")).await?;
                Ok(false)
            }
        }
    }

    /// Opens a blob for streaming, from byte `offset` on (the registry must support Range for
    /// a non-zero offset). Redirects (presigned storage URLs) are followed.
    pub async fn get_blob(&self, repo: &str, digest: &Digest, offset: u64) -> Result<Response> {
        let resp = self
            .send(&Scope::pull(repo), |c, base| {
                let mut r = c.get(format!("{base}/v2/{repo}/blobs/{digest}"));
                if offset > 0 {
                    r = r.header(header::RANGE, format!("bytes={offset}-"));
                }
                r
            })
            .await?;
        let resp = self
            .check(resp, &format!("blob {digest} in {repo}"))
            .await?;
        if offset > 0 && resp.status() != StatusCode::PARTIAL_CONTENT {
            return Err(ClientError::Unsupported(format!(
                "{} does not serve byte ranges of blobs",
                self.name
            )));
        }
        Ok(resp)
    }

    /// Reads a small blob (a config) whole and checks it.
    pub async fn get_blob_bytes(&self, repo: &str, desc: &Descriptor) -> Result<Bytes> {
        if desc.size > MAX_SMALL_BODY {
            return Err(ClientError::Format(format!(
                "blob {} is {} bytes, too large to read into memory",
                desc.digest, desc.size
            )));
        }
        let resp = self.get_blob(repo, &desc.digest, 0).await?;
        let bytes = read_capped(resp, MAX_SMALL_BODY).await?;
        verify(&bytes, desc)?;
        Ok(bytes)
    }

    /// Asks the registry to mount `digest` from repository `from` into `repo`.
    pub async fn mount_blob(&self, repo: &str, digest: &Digest, from: &str) -> Result<Mount> {
        let resp = self
            .send(&Scope::push_mounting(repo, from), |c, base| {
                c.post(format!("{base}/v2/{repo}/blobs/uploads/"))
                    .query(&[("mount", digest.to_string().as_str()), ("from", from)])
                    .header(header::CONTENT_LENGTH, "0")
            })
            .await?;
        match resp.status() {
            StatusCode::CREATED => Ok(Mount::Mounted),
            StatusCode::ACCEPTED => Ok(Mount::NotMounted(location(resp.headers()))),
            _ => {
                self.check(resp, &format!("mount of {digest}")).await?;
                Ok(Mount::NotMounted(None))
            }
        }
    }

    /// Starts an upload session; returns its absolute URL.
    pub async fn start_upload(&self, repo: &str) -> Result<String> {
        let resp = self
            .send(&Scope::push(repo), |c, base| {
                c.post(format!("{base}/v2/{repo}/blobs/uploads/"))
                    .header(header::CONTENT_LENGTH, "0")
            })
            .await?;
        let resp = self.check(resp, &format!("upload to {repo}")).await?;
        let loc = location(resp.headers()).ok_or_else(|| {
            ClientError::Registry(format!("{}: upload started without a Location", self.name))
        })?;
        self.absolute(&loc).await
    }

    async fn absolute(&self, location: &str) -> Result<String> {
        if location.starts_with("http://") || location.starts_with("https://") {
            Ok(location.to_string())
        } else {
            Ok(format!("{}{location}", self.base().await?))
        }
    }

    /// Uploads a small blob in one request (after [`Registry::start_upload`]).
    pub async fn upload_bytes(&self, repo: &str, desc: &Descriptor, bytes: Bytes) -> Result<()> {
        let url = self.start_upload(repo).await?;
        let digest = desc.digest.to_string();
        let resp = self
            .send(&Scope::push(repo), |c, _| {
                c.put(&url)
                    .query(&[("digest", digest.as_str())])
                    .header(header::CONTENT_TYPE, "application/octet-stream")
                    .body(bytes.clone())
            })
            .await?;
        self.check(resp, &format!("upload of {}", desc.digest))
            .await?;
        Ok(())
    }

    /// Sends bytes `offset..offset+len` of an upload as one PATCH with a streamed body;
    /// returns the session's next URL.
    pub async fn patch_upload<S>(
        &self,
        repo: &str,
        url: &str,
        offset: u64,
        len: u64,
        body: S,
    ) -> Result<String>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send + 'static,
    {
        let mut req = self
            .http
            .patch(url)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(header::CONTENT_LENGTH, len.to_string())
            .body(reqwest::Body::wrap_stream(body));
        if len > 0 {
            req = req.header(
                header::CONTENT_RANGE,
                format!("{offset}-{}", offset + len - 1),
            );
        }
        let resp = self.send_once(&Scope::push(repo), req).await?;
        let resp = self.check(resp, "blob upload").await?;
        match location(resp.headers()) {
            Some(l) => self.absolute(&l).await,
            None => Ok(url.to_string()),
        }
    }

    /// How many bytes an upload session holds (for resuming), from its `Range` header.
    pub async fn upload_offset(&self, repo: &str, url: &str) -> Result<u64> {
        let u = url.to_string();
        let resp = self.send(&Scope::push(repo), |c, _| c.get(&u)).await?;
        let resp = self.check(resp, "upload status").await?;
        Ok(resp
            .headers()
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok())
            .map(offset_from_range)
            .unwrap_or(0))
    }

    /// Completes an upload session with the blob's digest.
    pub async fn finish_upload(&self, repo: &str, url: &str, digest: &Digest) -> Result<()> {
        let u = url.to_string();
        let d = digest.to_string();
        let resp = self
            .send(&Scope::push(repo), |c, _| {
                c.put(&u)
                    .query(&[("digest", d.as_str())])
                    .header(header::CONTENT_LENGTH, "0")
            })
            .await?;
        self.check(resp, &format!("upload of {digest}")).await?;
        Ok(())
    }

    /// Every tag of a repository (following `Link` pages).
    pub async fn tags(&self, repo: &str) -> Result<Vec<String>> {
        #[derive(Deserialize)]
        struct Tags {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let mut out = Vec::new();
        let mut next = Some(format!("/v2/{repo}/tags/list?n={PAGE}"));
        while let Some(path) = next.take() {
            let resp = self
                .send(&Scope::pull(repo), |c, base| c.get(format!("{base}{path}")))
                .await?;
            let resp = self.check(resp, &format!("{}/{repo}", self.name)).await?;
            next = next_link(resp.headers());
            let page: Tags = read_json(resp, 64 << 20).await?;
            out.extend(page.tags.unwrap_or_default());
        }
        Ok(out)
    }

    /// Every repository the registry lists (following `Link` pages).
    pub async fn catalog(&self) -> Result<Vec<String>> {
        #[derive(Deserialize)]
        struct Catalog {
            #[serde(default)]
            repositories: Option<Vec<String>>,
        }
        let mut out = Vec::new();
        let mut next = Some(format!("/v2/_catalog?n={PAGE}"));
        while let Some(path) = next.take() {
            let resp = self
                .send(&Scope::catalog(), |c, base| c.get(format!("{base}{path}")))
                .await?;
            if resp.status() == StatusCode::NOT_FOUND {
                return Err(ClientError::Unsupported(format!(
                    "{} does not offer the catalog API",
                    self.name
                )));
            }
            let resp = self.check(resp, "catalog").await?;
            next = next_link(resp.headers());
            let page: Catalog = read_json(resp, 64 << 20).await?;
            out.extend(page.repositories.unwrap_or_default());
        }
        Ok(out)
    }

    /// The referrers of a manifest: the referrers API, else the `sha256-<hex>` tag schema.
    pub async fn referrers(&self, repo: &str, digest: &Digest) -> Result<Vec<Descriptor>> {
        #[derive(Deserialize)]
        struct Index {
            #[serde(default)]
            manifests: Vec<Descriptor>,
        }
        let resp = self
            .send(&Scope::pull(repo), |c, base| {
                c.get(format!("{base}/v2/{repo}/referrers/{digest}"))
                    .header(header::ACCEPT, "application/vnd.oci.image.index.v1+json")
            })
            .await?;
        if resp.status().is_success()
            && content_type(resp.headers()).as_deref()
                == Some("application/vnd.oci.image.index.v1+json")
        {
            let index: Index = read_json(resp, MAX_SMALL_BODY).await?;
            return Ok(index.manifests);
        }
        let tag = kura_oci::referrers_tag(digest);
        match self.get_manifest(repo, &tag).await {
            Ok(m) => {
                let index: Index = serde_json::from_slice(&m.bytes).map_err(|e| {
                    ClientError::Format(format!("referrers index {tag} is invalid: {e}"))
                })?;
                Ok(index.manifests)
            }
            Err(ClientError::NotFound(_)) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Whether this registry is a Kura (its management API answers).
    pub async fn is_kura(&self) -> bool {
        match self.api(Method::GET, "/api/v1/openapi.json", None).await {
            Ok(v) => v
                .pointer("/info/title")
                .and_then(|t| t.as_str())
                .is_some_and(|t| t.to_lowercase().contains("kura")),
            Err(_) => false,
        }
    }

    /// Calls Kura's management API (Basic auth with the stored credential).
    pub async fn api(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value> {
        let base = self.base().await?.to_string();
        let mut req = self.http.request(method, format!("{base}{path}"));
        if let Some(h) = self.basic_header() {
            req = req.header(header::AUTHORIZATION, h);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| self.transport_error(&e))?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(self.auth_failure(status, resp).await);
        }
        if status == StatusCode::NOT_FOUND {
            let msg = error_message(resp)
                .await
                .unwrap_or_else(|| path.to_string());
            return Err(ClientError::NotFound(format!("{}: {msg}", self.name)));
        }
        if !status.is_success() {
            let msg = error_message(resp).await.unwrap_or_default();
            return Err(ClientError::Registry(format!(
                "{}: {path} answered {status}: {msg}",
                self.name
            )));
        }
        if status == StatusCode::NO_CONTENT {
            return Ok(serde_json::Value::Null);
        }
        read_json(resp, 256 << 20).await
    }

    /// Maps an unsuccessful response to an error; passes a successful one through.
    pub async fn check(&self, resp: Response, what: &str) -> Result<Response> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(self.auth_failure(status, resp).await);
        }
        let detail = error_detail(resp).await;
        let message = detail
            .as_ref()
            .map(|(code, msg)| format!("{code}: {msg}"))
            .unwrap_or_else(|| status.to_string());
        let code = detail.as_ref().map(|(c, _)| c.as_str()).unwrap_or("");
        Err(match (status, code) {
            (StatusCode::NOT_FOUND, _) => {
                ClientError::NotFound(format!("{what}: not found ({message})"))
            }
            (StatusCode::METHOD_NOT_ALLOWED, _) | (_, "UNSUPPORTED") => {
                ClientError::Unsupported(format!("{what}: {message}"))
            }
            _ => ClientError::Registry(format!("{what}: {}: {message}", status.as_u16())),
        })
    }
}

/// The next byte an upload session expects, from `Range: 0-<last>`. Registries (Kura and the
/// reference registry alike) answer `0-0` for an empty session, so `0-0` is read as empty:
/// resuming one byte early is refused with 416, one byte late would corrupt nothing but
/// could never succeed.
fn offset_from_range(range: &str) -> u64 {
    let range = range.trim().trim_start_matches("bytes=");
    match range.split_once('-') {
        Some((_, "0")) => 0,
        Some((_, end)) => end.parse::<u64>().map(|e| e + 1).unwrap_or(0),
        None => 0,
    }
}

fn is_loopback(host: &str) -> bool {
    let h = match host.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    };
    let h = h.trim_start_matches('[').trim_end_matches(']');
    h == "localhost"
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Parses one `WWW-Authenticate` value.
fn parse_challenge(value: &str) -> Option<Challenge> {
    let (scheme, params) = value.trim().split_once(' ').unwrap_or((value.trim(), ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut realm = None;
    let mut service = None;
    // key="value" pairs; values may contain commas inside quotes.
    let mut rest = params.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let key = key.trim().trim_start_matches(',').trim();
        let after = after.trim_start();
        let (value, remaining) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"')?;
            (&q[..end], &q[end + 1..])
        } else {
            match after.find(',') {
                Some(i) => (&after[..i], &after[i..]),
                None => (after, ""),
            }
        };
        match key.to_ascii_lowercase().as_str() {
            "realm" => realm = Some(value.to_string()),
            "service" => service = Some(value.to_string()),
            _ => {}
        }
        rest = remaining.trim_start().trim_start_matches(',').trim_start();
    }
    Some(Challenge::Bearer {
        realm: realm?,
        service,
    })
}

fn content_type(h: &HeaderMap) -> Option<String> {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.split(';').next().unwrap_or("").trim().to_string())
}

fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse().ok())
}

fn location(h: &HeaderMap) -> Option<String> {
    h.get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// The path and query of a `Link: <...>; rel="next"` header.
fn next_link(h: &HeaderMap) -> Option<String> {
    let v = h.get(header::LINK)?.to_str().ok()?;
    let start = v.find('<')? + 1;
    let end = v[start..].find('>')? + start;
    if !v[end..].contains("next") {
        return None;
    }
    let target = &v[start..end];
    // Absolute links are reduced to their path: the client stays on its own base.
    match target.find("://") {
        Some(i) => target[i + 3..]
            .find('/')
            .map(|p| target[i + 3 + p..].to_string()),
        None => Some(target.to_string()),
    }
}

fn media_type_in(bytes: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct M {
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
    }
    let m: M = serde_json::from_slice(bytes).ok()?;
    m.media_type.or_else(|| {
        m.manifests
            .map(|_| "application/vnd.oci.image.index.v1+json".to_string())
    })
}

/// Checks bytes against a descriptor.
pub fn verify(bytes: &[u8], desc: &Descriptor) -> Result<()> {
    if bytes.len() as u64 != desc.size {
        return Err(ClientError::Integrity(format!(
            "{} is {} bytes, expected {}",
            desc.digest,
            bytes.len(),
            desc.size
        )));
    }
    let got = desc.digest.algorithm().digest_of(bytes);
    if got != desc.digest {
        return Err(ClientError::Integrity(format!(
            "content has digest {got}, expected {}",
            desc.digest
        )));
    }
    Ok(())
}

/// Reads a body of at most `cap` bytes.
pub async fn read_capped(resp: Response, cap: u64) -> Result<Bytes> {
    if content_length(resp.headers()).is_some_and(|n| n > cap) {
        return Err(ClientError::Format(format!(
            "response of {} bytes is larger than the {cap} allowed",
            content_length(resp.headers()).unwrap_or(0)
        )));
    }
    let mut out = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ClientError::Connect(error_chain(&e)))?;
        if out.len() as u64 + chunk.len() as u64 > cap {
            return Err(ClientError::Format(format!(
                "response is larger than the {cap} bytes allowed"
            )));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(out))
}

async fn read_json<T: serde::de::DeserializeOwned>(resp: Response, cap: u64) -> Result<T> {
    let bytes = read_capped(resp, cap).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ClientError::Registry(format!("unexpected response: {e}")))
}

async fn error_detail(resp: Response) -> Option<(String, String)> {
    let bytes = read_capped(resp, 1 << 20).await.ok()?;
    let body: ErrorBody = serde_json::from_slice(&bytes).ok()?;
    if let Some(e) = body.errors.into_iter().next() {
        return Some((e.code, e.message));
    }
    Some((body.code.unwrap_or_default(), body.message?))
}

async fn error_message(resp: Response) -> Option<String> {
    error_detail(resp)
        .await
        .map(|(c, m)| if c.is_empty() { m } else { format!("{c}: {m}") })
}

/// The error and its causes on one line (reqwest's top-level message hides the cause).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        match parse_challenge(
            r#"Bearer realm="http://127.0.0.1:5000/token",service="kura",scope="repository:a/b:pull,push""#,
        ) {
            Some(Challenge::Bearer { realm, service }) => {
                assert_eq!(realm, "http://127.0.0.1:5000/token");
                assert_eq!(service.as_deref(), Some("kura"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        ));
        assert!(parse_challenge("Negotiate").is_none());
        let mount = Scope::push_mounting("a/b", "c/d");
        assert!(mount.covers(&Scope::push("a/b")));
        assert!(mount.covers(&Scope::pull("c/d")));
        assert!(!mount.covers(&Scope::push("c/d")));
        assert!(Scope::push("a/b").covers(&Scope::pull("a/b")));
        assert!(!Scope::pull("a/b").covers(&Scope::push("a/b")));
        assert!(parse_challenge(r#"Bearer service="x""#).is_none());
    }

    #[test]
    fn links_and_loopback() {
        let mut h = HeaderMap::new();
        h.insert(
            header::LINK,
            HeaderValue::from_static(r#"</v2/_catalog?last=b&n=2>; rel="next""#),
        );
        assert_eq!(next_link(&h).as_deref(), Some("/v2/_catalog?last=b&n=2"));
        h.insert(
            header::LINK,
            HeaderValue::from_static(r#"<https://r.example/v2/a/tags/list?last=x>; rel="next""#),
        );
        assert_eq!(next_link(&h).as_deref(), Some("/v2/a/tags/list?last=x"));
        assert_eq!(offset_from_range("0-0"), 0);
        assert_eq!(offset_from_range("0-1023"), 1024);
        assert_eq!(offset_from_range("bytes=0-9"), 10);
        assert_eq!(offset_from_range("junk"), 0);
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("localhost"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("registry.example:5000"));
    }
}
