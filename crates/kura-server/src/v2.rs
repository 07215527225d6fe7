//! `/v2` handlers: one function per endpoint, each parse → call the registry → shape response.

use std::collections::HashMap;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use futures_util::TryStreamExt;
use kura_oci::{Digest, ErrorCode, Reference, RepositoryName, media_types as mt};
use kura_registry::RegistryError;

use crate::AppState;
use crate::auth;
use crate::errors::ApiError;
use crate::range::{self, RangeRequest};
use crate::v2_route::{self, V2Route};
use kura_auth::Action;

type ApiResult = Result<Response, ApiError>;

const API_VERSION: HeaderValue = HeaderValue::from_static("registry/2.0");
/// Tag and catalog pages are capped at this many entries when the client sets no `n`.
const MAX_PAGE: u32 = 100_000;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v2/", get(base).head(base))
        .route("/v2", get(base).head(base))
        .route("/v2/_catalog", get(catalog))
        .route("/v2/{*rest}", any(dispatch))
        .layer(axum::middleware::map_response(
            |mut resp: Response| async move {
                resp.headers_mut()
                    .insert("docker-distribution-api-version", API_VERSION);
                resp
            },
        ))
}

async fn base(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let checked = async {
        let identity = auth::identify(&state, &headers).await?;
        auth::require_identity(&state, &headers, &identity)
    };
    match checked.await {
        Ok(()) => ([(header::CONTENT_TYPE, "application/json")], "{}").into_response(),
        Err(e) => e.into_response(),
    }
}

pub fn upload_location(repo: &RepositoryName, id: &str) -> String {
    format!("/v2/{repo}/blobs/uploads/{id}")
}

/// `Range` value for an upload holding `size` bytes (`0-0` when empty, as clients expect).
pub fn range_header(size: u64) -> String {
    format!("0-{}", size.saturating_sub(1))
}

fn hv(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn parse_name(raw: &str) -> Result<RepositoryName, ApiError> {
    RepositoryName::parse(raw).map_err(|e| {
        ApiError::from(
            RegistryError::new(ErrorCode::NameInvalid, e.to_string())
                .with_detail(serde_json::json!({ "name": raw })),
        )
    })
}

fn parse_digest(raw: &str) -> Result<Digest, ApiError> {
    raw.parse::<Digest>()
        .map_err(|e| ApiError::new(ErrorCode::DigestInvalid, e.to_string()))
}

fn parse_reference(raw: &str) -> Result<Reference, ApiError> {
    Reference::parse(raw).map_err(|e| match e {
        kura_oci::reference::ReferenceError::Digest(d) => {
            ApiError::new(ErrorCode::DigestInvalid, d.to_string())
        }
        tag @ kura_oci::reference::ReferenceError::Tag(_) => {
            ApiError::new(ErrorCode::ManifestInvalid, tag.to_string())
        }
    })
}

fn query_map(raw: Option<&str>) -> HashMap<String, String> {
    query_pairs(raw).into_iter().collect()
}

/// Decoded query parameters in order (repeated keys kept, e.g. several `scope`s).
pub fn query_pairs(raw: Option<&str>) -> Vec<(String, String)> {
    raw.map(url_decode_pairs).unwrap_or_default()
}

/// Minimal `application/x-www-form-urlencoded` decoding of a query string.
fn url_decode_pairs(q: &str) -> Vec<(String, String)> {
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz");
                    match u8::from_str_radix(hex, 16) {
                        Ok(b) => {
                            out.push(b);
                            i += 2;
                        }
                        Err(_) => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    q.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(kv), String::new()),
        })
        .collect()
}

/// Page size from `n`: absent → the cap; invalid → 400.
fn page_size(q: &HashMap<String, String>) -> Result<u32, ApiError> {
    match q.get("n") {
        None => Ok(MAX_PAGE),
        Some(n) => n.parse::<u32>().map(|n| n.min(MAX_PAGE)).map_err(|_| {
            ApiError::new(
                ErrorCode::Unsupported,
                format!("invalid page size n={n:?}: expected a non-negative integer"),
            )
            .with_status(400)
        }),
    }
}

impl ApiError {
    fn with_status(mut self, status: u16) -> Self {
        self.error.status = status;
        self
    }
}

async fn catalog(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let identity = auth::identify(&state, &headers).await?;
    if auth::require_identity(&state, &headers, &identity).is_err() {
        return Err(auth::challenge(
            &state,
            &headers,
            Some("registry:catalog:*".into()),
            false,
        ));
    }
    let n = page_size(&q)?;
    let last = q.get("last").map(String::as_str).filter(|s| !s.is_empty());
    let filter = state.auth.repository_filter(&identity);
    let (repos, more) = state.registry.catalog(&filter, last, n).await?;
    let mut resp = json_response(
        StatusCode::OK,
        "application/json",
        &Catalog {
            repositories: &repos,
        },
    );
    if more && let Some(last) = repos.last() {
        resp.headers_mut().insert(
            header::LINK,
            hv(&format!("</v2/_catalog?n={n}&last={last}>; rel=\"next\"")),
        );
    }
    Ok(resp)
}

/// A JSON response with a body serialized straight from `v` (typed structs rather than a
/// `serde_json::Value`: a 10,000-tag listing copied every name into the value first).
fn json_response(status: StatusCode, content_type: &str, v: &impl serde::Serialize) -> Response {
    let body = serde_json::to_vec(v).expect("serializing to memory cannot fail");
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, body.len())
        .body(Body::from(body))
        .expect("valid response")
}

/// The `_catalog` body.
#[derive(serde::Serialize)]
struct Catalog<'a> {
    repositories: &'a [String],
}

/// The `tags/list` body.
#[derive(serde::Serialize)]
struct TagList<'a> {
    name: &'a str,
    tags: &'a [String],
}

async fn dispatch(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let rest = uri.path().strip_prefix("/v2/").unwrap_or("");
    // Requests refused here never reach a handler that reads their body: drain it (bounded)
    // first, or a client still sending may see a reset instead of the answer.
    let Some(route) = v2_route::parse(rest) else {
        drain(&mut body_stream(body)).await;
        return ApiError::new(ErrorCode::NameUnknown, "no such endpoint")
            .with_status(404)
            .into_response();
    };
    let q = query_map(query.as_deref());
    let identity = match authorize_route(&state, &headers, &route, &method).await {
        Ok(identity) => identity,
        Err(e) => {
            drain(&mut body_stream(body)).await;
            return e.into_response();
        }
    };
    let result = match route {
        V2Route::Manifest { name, reference } => match method {
            Method::GET | Method::HEAD => {
                get_manifest(&state, name, reference, &headers, method == Method::HEAD).await
            }
            Method::PUT => put_manifest(&state, name, reference, &headers, body).await,
            Method::DELETE => delete_manifest(&state, name, reference).await,
            _ => Err(method_not_allowed()),
        },
        V2Route::Blob { name, digest } => match method {
            Method::GET | Method::HEAD => {
                get_blob(&state, name, digest, &headers, method == Method::HEAD).await
            }
            Method::DELETE => delete_blob(&state, name, digest).await,
            _ => Err(method_not_allowed()),
        },
        V2Route::UploadStart { name } => match method {
            Method::POST => start_upload(&state, name, &q, &headers, &identity, body).await,
            _ => Err(method_not_allowed()),
        },
        V2Route::Upload { name, id } => match method {
            Method::GET => upload_status(&state, name, id).await,
            Method::PATCH => patch_upload(&state, name, id, &headers, body).await,
            Method::PUT => put_upload(&state, name, id, &q, &headers, body).await,
            Method::DELETE => cancel_upload(&state, name, id).await,
            _ => Err(method_not_allowed()),
        },
        V2Route::Tags { name } => match method {
            Method::GET => list_tags(&state, name, &q).await,
            _ => Err(method_not_allowed()),
        },
        V2Route::Referrers { name, digest } => match method {
            Method::GET => referrers(&state, name, digest, &q).await,
            _ => Err(method_not_allowed()),
        },
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

/// Authenticates the request and checks the actions its route needs: the one place `/v2`
/// requests are authorized. Returns who is asking.
async fn authorize_route(
    state: &AppState,
    headers: &HeaderMap,
    route: &V2Route<'_>,
    method: &Method,
) -> Result<kura_auth::Identity, ApiError> {
    let identity = auth::identify(state, headers).await?;
    let (name, needed): (&str, &[Action]) = match (route, method) {
        (V2Route::Manifest { name, .. } | V2Route::Blob { name, .. }, &Method::DELETE) => {
            (name, &[Action::Delete])
        }
        (V2Route::Manifest { name, .. }, &Method::PUT) => (name, &[Action::Push]),
        (V2Route::Manifest { name, .. } | V2Route::Blob { name, .. }, _) => (name, &[Action::Pull]),
        (V2Route::UploadStart { name } | V2Route::Upload { name, .. }, _) => {
            (name, &[Action::Push])
        }
        (V2Route::Tags { name }, _) => (name, &[Action::List]),
        (V2Route::Referrers { name, .. }, _) => (name, &[Action::Pull]),
    };
    parse_name(name)?;
    auth::authorize(state, headers, &identity, name, needed).await?;
    Ok(identity)
}

fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::Unsupported,
        "method not allowed on this endpoint",
    )
}

/// The request body as a stream for the storage layer; transport errors surface as
/// `UnexpectedEof` so the service can tell a vanished client from a storage failure.
fn body_stream(
    body: Body,
) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send + Unpin {
    body.into_data_stream()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, e))
}

/// Reads and discards what is left of a request body (at most [`MAX_DRAIN`] bytes), so that a
/// client still sending gets to read an early error response instead of a reset connection.
async fn drain(
    stream: &mut (impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Unpin),
) {
    use futures_util::StreamExt;
    let mut seen = 0u64;
    while seen <= MAX_DRAIN {
        match stream.next().await {
            Some(Ok(c)) => seen += c.len() as u64,
            _ => break,
        }
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// Whether the request carries a body (a non-zero length, or chunked transfer encoding).
fn has_body(headers: &HeaderMap) -> bool {
    match content_length(headers) {
        Some(n) => n > 0,
        None => headers.contains_key(header::TRANSFER_ENCODING),
    }
}

// --- manifests -----------------------------------------------------------------------------

/// Past this many bytes an oversized body is no longer drained; the connection is closed.
const MAX_DRAIN: u64 = 64 * 1024 * 1024;

enum Bounded {
    /// The body exceeded the limit; this many bytes were seen.
    TooLarge(u64),
    Transport(axum::Error),
}

/// Reads a body of at most `limit` bytes. A larger one is read on and discarded (up to
/// [`MAX_DRAIN`]) so the client, still sending, gets to read our 413 instead of a reset
/// connection (RFC 9112 §9.6).
async fn read_bounded(body: Body, limit: usize) -> Result<bytes::Bytes, Bounded> {
    use futures_util::StreamExt;
    let mut stream = body.into_data_stream();
    let mut buf = bytes::BytesMut::new();
    let mut seen: u64 = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(Bounded::Transport)?;
        seen += chunk.len() as u64;
        if seen > limit as u64 {
            while seen <= MAX_DRAIN {
                match stream.next().await {
                    Some(Ok(c)) => seen += c.len() as u64,
                    _ => break,
                }
            }
            return Err(Bounded::TooLarge(seen));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Whether `Accept` admits `media_type`. No header, or a wildcard, admits everything.
fn accepts(headers: &HeaderMap, media_type: &str) -> bool {
    let mut listed = false;
    for value in headers.get_all(header::ACCEPT) {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let t = mt::essence(item);
            if t.is_empty() {
                continue;
            }
            listed = true;
            if t == "*/*" || t == "application/*" || t == media_type {
                return true;
            }
        }
    }
    !listed
}

async fn get_manifest(
    state: &AppState,
    name: &str,
    reference: &str,
    headers: &HeaderMap,
    head: bool,
) -> ApiResult {
    let repo = parse_name(name)?;
    let reference = parse_reference(reference)?;
    let m = state
        .registry
        .get_manifest(&repo, &reference, !head)
        .await?;
    if !accepts(headers, &m.media_type) {
        return Err(ApiError::from(
            RegistryError::manifest_unknown(reference_str(&reference)).with_detail(
                serde_json::json!({
                    "reason": format!("the manifest is {} which the Accept header does not list", m.media_type)
                }),
            ),
        ));
    }
    let builder = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, hv(&m.media_type))
        .header(header::CONTENT_LENGTH, m.size)
        .header("docker-content-digest", hv(&m.digest))
        .header(header::ETAG, hv(&format!("\"{}\"", m.digest)));
    let body = match m.payload {
        Some(p) if !head => Body::from(p),
        _ => Body::empty(),
    };
    Ok(builder.body(body).expect("valid response"))
}

fn reference_str(r: &Reference) -> String {
    match r {
        Reference::Tag(t) => t.clone(),
        Reference::Digest(d) => d.to_string(),
    }
}

async fn put_manifest(
    state: &AppState,
    name: &str,
    reference: &str,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult {
    let repo = parse_name(name)?;
    let reference = parse_reference(reference)?;
    let limit = state.registry.config().max_manifest_size;
    let bytes = match read_bounded(body, limit).await {
        Ok(b) => b,
        Err(Bounded::TooLarge(seen)) => {
            return Err(ApiError::from(
                RegistryError::new(
                    ErrorCode::SizeInvalid,
                    format!("manifest is at least {seen} bytes; the limit is {limit}"),
                )
                .with_status(413),
            ));
        }
        Err(Bounded::Transport(e)) => {
            return Err(ApiError::new(
                ErrorCode::ManifestInvalid,
                format!("could not read the manifest body: {e}"),
            ));
        }
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let pushed = state
        .registry
        .put_manifest(&repo, &reference, content_type, bytes)
        .await?;
    let digest = pushed.digest.to_string();
    let mut resp = Response::builder()
        .status(StatusCode::CREATED)
        .header(
            header::LOCATION,
            hv(&format!("/v2/{repo}/manifests/{digest}")),
        )
        .header("docker-content-digest", hv(&digest))
        .header(header::CONTENT_LENGTH, 0);
    if let Some(subject) = pushed.subject {
        resp = resp.header("oci-subject", hv(&subject.to_string()));
    }
    Ok(resp.body(Body::empty()).expect("valid response"))
}

async fn delete_manifest(state: &AppState, name: &str, reference: &str) -> ApiResult {
    let repo = parse_name(name)?;
    let reference = parse_reference(reference)?;
    state.registry.delete_manifest(&repo, &reference).await?;
    Ok(accepted())
}

fn accepted() -> Response {
    Response::builder()
        .status(StatusCode::ACCEPTED)
        .header(header::CONTENT_LENGTH, 0)
        .body(Body::empty())
        .expect("valid response")
}

// --- blobs ---------------------------------------------------------------------------------

async fn get_blob(
    state: &AppState,
    name: &str,
    digest: &str,
    headers: &HeaderMap,
    head: bool,
) -> ApiResult {
    let repo = parse_name(name)?;
    let digest = parse_digest(digest)?;
    let blob = if head {
        state.registry.stat_blob(&repo, &digest).await?
    } else {
        state.registry.open_blob(&repo, &digest).await?
    };
    let size = blob.size;
    let range_header = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let digest_s = digest.to_string();
    let base = |status: StatusCode| {
        Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, mt::OCTET_STREAM)
            .header(header::ACCEPT_RANGES, "bytes")
            .header("docker-content-digest", hv(&digest_s))
            .header(header::ETAG, hv(&format!("\"{digest_s}\"")))
            .header(header::CACHE_CONTROL, "max-age=31536000")
    };
    let (status, range, len) = match range::parse(range_header, size) {
        RangeRequest::Full => (StatusCode::OK, None, size),
        RangeRequest::Partial(r) => (StatusCode::PARTIAL_CONTENT, Some(r), r.len()),
        RangeRequest::Unsatisfiable => {
            let resp = base(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, hv(&format!("bytes */{size}")))
                .header(header::CONTENT_LENGTH, 0)
                .body(Body::empty())
                .expect("valid response");
            return Ok(resp);
        }
    };
    let mut builder = base(status).header(header::CONTENT_LENGTH, len);
    if let Some(r) = range {
        builder = builder.header(
            header::CONTENT_RANGE,
            hv(&format!("bytes {}-{}/{size}", r.start, r.end)),
        );
    }
    if head {
        return Ok(builder.body(Body::empty()).expect("valid response"));
    }
    if let Some(url) = state.registry.blob_redirect(&blob).await? {
        // The object store serves the bytes (and honours Range itself).
        return Ok(Response::builder()
            .status(StatusCode::TEMPORARY_REDIRECT)
            .header(header::LOCATION, hv(&url))
            .header("docker-content-digest", hv(&digest_s))
            .header(header::CONTENT_LENGTH, 0)
            .body(Body::empty())
            .expect("valid response"));
    }
    let stream = state.registry.read_blob(&repo, blob, range).await?;
    Ok(builder
        .body(Body::from_stream(stream))
        .expect("valid response"))
}

async fn delete_blob(state: &AppState, name: &str, digest: &str) -> ApiResult {
    let repo = parse_name(name)?;
    let digest = parse_digest(digest)?;
    state.registry.delete_blob(&repo, &digest).await?;
    Ok(accepted())
}

// --- uploads -------------------------------------------------------------------------------

fn blob_created(repo: &RepositoryName, digest: &Digest) -> Response {
    let d = digest.to_string();
    Response::builder()
        .status(StatusCode::CREATED)
        .header(header::LOCATION, hv(&format!("/v2/{repo}/blobs/{d}")))
        .header("docker-content-digest", hv(&d))
        .header(header::CONTENT_LENGTH, 0)
        .body(Body::empty())
        .expect("valid response")
}

fn upload_response(
    status: StatusCode,
    repo: &RepositoryName,
    upload: &kura_registry::UploadStatus,
) -> Response {
    Response::builder()
        .status(status)
        .header(header::LOCATION, hv(&upload_location(repo, &upload.id)))
        .header(header::RANGE, hv(&range_header(upload.size)))
        .header("docker-upload-uuid", hv(&upload.id))
        .header(header::CONTENT_LENGTH, 0)
        .body(Body::empty())
        .expect("valid response")
}

async fn start_upload(
    state: &AppState,
    name: &str,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
    identity: &kura_auth::Identity,
    body: Body,
) -> ApiResult {
    let repo = parse_name(name)?;
    if let Some(mount) = q.get("mount") {
        let digest = parse_digest(mount)?;
        if let Some(from) = q.get("from") {
            let from = parse_name(from)?;
            // Mounting reads from `from`: without pull access there, upload normally instead.
            let may_read =
                auth::authorize(state, headers, identity, from.as_str(), &[Action::Pull])
                    .await
                    .is_ok();
            if may_read && state.registry.mount_blob(&repo, &digest, &from).await? {
                return Ok(blob_created(&repo, &digest));
            }
        }
    } else if let Some(d) = q.get("digest") {
        let digest = parse_digest(d)?;
        // A POST with ?digest= but no body is treated as a plain session start (some clients
        // send it), unless it really is the empty blob.
        let empty_blob = digest == digest.algorithm().digest_of(b"");
        if has_body(headers) || empty_blob {
            let mut stream = body_stream(body);
            if let Some(len) = content_length(headers)
                && let Err(e) = state
                    .registry
                    .check_quota_for(&repo, len, Some(&digest))
                    .await
            {
                drain(&mut stream).await;
                return Err(ApiError::from(e).in_repo(&repo));
            }
            state
                .registry
                .push_blob(&repo, &digest, &mut stream)
                .await
                .map_err(|e| ApiError::from(e).in_repo(&repo))?;
            return Ok(blob_created(&repo, &digest));
        }
    }
    let upload = state.registry.start_upload(&repo).await?;
    let mut resp = upload_response(StatusCode::ACCEPTED, &repo, &upload);
    let min = state.registry.config().chunk_min_length;
    if min > 0 {
        resp.headers_mut()
            .insert("oci-chunk-min-length", hv(&min.to_string()));
    }
    Ok(resp)
}

async fn upload_status(state: &AppState, name: &str, id: &str) -> ApiResult {
    let repo = parse_name(name)?;
    let upload = state.registry.upload_status(&repo, id).await?;
    Ok(upload_response(StatusCode::NO_CONTENT, &repo, &upload))
}

/// Parses `Content-Range: start-end` (inclusive; a `bytes ` or `bytes=` prefix is tolerated)
/// and checks it against `Content-Length`. Returns the start offset.
fn content_range(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(v) = headers.get(header::CONTENT_RANGE) else {
        return Ok(None);
    };
    let invalid = || {
        ApiError::new(
            ErrorCode::BlobUploadInvalid,
            "invalid Content-Range: expected START-END (inclusive byte offsets)",
        )
        .with_status(416)
    };
    let s = v.to_str().map_err(|_| invalid())?.trim();
    let s = s
        .strip_prefix("bytes=")
        .or_else(|| s.strip_prefix("bytes "))
        .unwrap_or(s);
    let s = s.split('/').next().unwrap_or(s);
    let (a, b) = s.split_once('-').ok_or_else(invalid)?;
    let start: u64 = a.trim().parse().map_err(|_| invalid())?;
    let end: u64 = b.trim().parse().map_err(|_| invalid())?;
    if end < start {
        return Err(invalid());
    }
    if let Some(len) = content_length(headers)
        && len != end - start + 1
    {
        return Err(ApiError::new(
            ErrorCode::BlobUploadInvalid,
            format!(
                "Content-Range {start}-{end} is {} bytes but Content-Length is {len}",
                end - start + 1
            ),
        )
        .with_status(400));
    }
    Ok(Some(start))
}

async fn patch_upload(
    state: &AppState,
    name: &str,
    id: &str,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult {
    let repo = parse_name(name)?;
    let mut stream = body_stream(body);
    let start = match content_range(headers) {
        Ok(start) => start,
        Err(e) => {
            drain(&mut stream).await;
            return Err(e.in_repo(&repo));
        }
    };
    // Refuse data that cannot fit the project's quota before accepting any of it.
    if let Some(len) = content_length(headers)
        && let Err(e) = state
            .registry
            .check_upload_quota(&repo, Some(id), len, None)
            .await
    {
        drain(&mut stream).await;
        return Err(ApiError::from(e).in_repo(&repo));
    }
    let result = state
        .registry
        .append_upload(&repo, id, start, &mut stream)
        .await;
    match result {
        Ok(upload) => Ok(upload_response(StatusCode::ACCEPTED, &repo, &upload)),
        Err(e) => {
            drain(&mut stream).await;
            Err(ApiError::from(e).in_repo(&repo))
        }
    }
}

async fn put_upload(
    state: &AppState,
    name: &str,
    id: &str,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult {
    let repo = parse_name(name)?;
    let digest = match q.get("digest") {
        Some(d) => parse_digest(d)?,
        None => {
            return Err(ApiError::new(
                ErrorCode::DigestInvalid,
                "the closing PUT of an upload needs ?digest=<digest of the whole blob>",
            ));
        }
    };
    if has_body(headers) {
        let mut stream = body_stream(body);
        if let Some(len) = content_length(headers)
            && let Err(e) = state
                .registry
                .check_upload_quota(&repo, Some(id), len, Some(&digest))
                .await
        {
            drain(&mut stream).await;
            return Err(ApiError::from(e).in_repo(&repo));
        }
        let start = match content_range(headers) {
            Ok(start) => start,
            Err(e) => {
                drain(&mut stream).await;
                return Err(e.in_repo(&repo));
            }
        };
        // The last chunk and the commit in one pass: one lock, one lookup, one metadata commit.
        let finished = state
            .registry
            .finish_upload(&repo, id, &digest, start, Some(&mut stream))
            .await;
        if let Err(e) = finished {
            drain(&mut stream).await;
            return Err(ApiError::from(e).in_repo(&repo));
        }
        return Ok(blob_created(&repo, &digest));
    }
    state
        .registry
        .finish_upload(&repo, id, &digest, None, None)
        .await
        .map_err(|e| ApiError::from(e).in_repo(&repo))?;
    Ok(blob_created(&repo, &digest))
}

async fn cancel_upload(state: &AppState, name: &str, id: &str) -> ApiResult {
    let repo = parse_name(name)?;
    state.registry.cancel_upload(&repo, id).await?;
    Ok(Response::builder()
        .status(StatusCode::NO_CONTENT)
        .body(Body::empty())
        .expect("valid response"))
}

// --- listings ------------------------------------------------------------------------------

async fn list_tags(state: &AppState, name: &str, q: &HashMap<String, String>) -> ApiResult {
    let repo = parse_name(name)?;
    let n = page_size(q)?;
    let last = q.get("last").map(String::as_str).filter(|s| !s.is_empty());
    let page = state.registry.list_tags(&repo, last, n).await?;
    let mut resp = json_response(
        StatusCode::OK,
        "application/json",
        &TagList {
            name: repo.as_str(),
            tags: &page.tags,
        },
    );
    if page.more
        && let Some(last) = page.tags.last()
    {
        resp.headers_mut().insert(
            header::LINK,
            hv(&format!(
                "</v2/{repo}/tags/list?n={n}&last={last}>; rel=\"next\""
            )),
        );
    }
    Ok(resp)
}

async fn referrers(
    state: &AppState,
    name: &str,
    digest: &str,
    q: &HashMap<String, String>,
) -> ApiResult {
    let repo = parse_name(name)?;
    let subject = parse_digest(digest)?;
    let artifact_type = q.get("artifactType").filter(|s| !s.is_empty());
    let index = state
        .registry
        .referrers(&repo, &subject, artifact_type.map(String::as_str))
        .await?;
    let mut resp = json_response(StatusCode::OK, mt::OCI_INDEX, &index);
    if artifact_type.is_some() {
        resp.headers_mut().insert(
            "oci-filters-applied",
            HeaderValue::from_static("artifactType"),
        );
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decoding() {
        let q = query_map(Some("mount=sha256%3Aab&from=a%2Fb&x=1+2&flag"));
        assert_eq!(q["mount"], "sha256:ab");
        assert_eq!(q["from"], "a/b");
        assert_eq!(q["x"], "1 2");
        assert_eq!(q["flag"], "");
        assert_eq!(query_map(Some("a=%zz%4"))["a"], "%zz%4");
    }

    #[test]
    fn accept_negotiation() {
        let mut h = HeaderMap::new();
        assert!(accepts(&h, mt::OCI_INDEX));
        h.append(header::ACCEPT, hv(mt::OCI_MANIFEST));
        assert!(!accepts(&h, mt::OCI_INDEX));
        h.append(
            header::ACCEPT,
            hv(&format!("{}; q=0.5, text/plain", mt::OCI_INDEX)),
        );
        assert!(accepts(&h, mt::OCI_INDEX));
        let mut w = HeaderMap::new();
        w.append(header::ACCEPT, hv("*/*"));
        assert!(accepts(&w, mt::DOCKER_MANIFEST));
    }
}
