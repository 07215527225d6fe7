//! Helpers for the access-control tests (`auth_*.rs`): servers in `local` mode, credentials,
//! the token endpoint, the management API, pushes as a given user, and enough base64 / JWT
//! decoding to look inside issued tokens.
//!
//! Everything talks to a running server over real HTTP.
#![allow(dead_code)]

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap};
use reqwest::{Client, Method, RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};

use super::KuraServer;
use super::api::{OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, descriptor, random_bytes, random_config};

/// The first administrator every local-mode test server is started with.
pub const ADMIN: &str = "admin";
pub const ADMIN_PASSWORD: &str = "admin-pass-123";
/// The token service name (the default `auth.service`).
pub const SERVICE: &str = "kura";

/// Starts `kura serve --auth-mode local` with `KURA_ADMIN_PASSWORD` set, plus `extra` flags.
pub fn start_local(extra: &[&str]) -> KuraServer {
    let mut args = vec!["--auth-mode", "local"];
    args.extend_from_slice(extra);
    KuraServer::start_with(&args, &[("KURA_ADMIN_PASSWORD", ADMIN_PASSWORD)])
}

// ---- credentials ----------------------------------------------------------------------------

/// How a request authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cred {
    /// No `Authorization` header.
    Anonymous,
    /// HTTP Basic.
    Basic { user: String, password: String },
    /// A bearer token.
    Bearer(String),
    /// A verbatim `Authorization` value (malformed credentials).
    Raw(String),
}

impl Cred {
    pub fn basic(user: &str, password: &str) -> Cred {
        Cred::Basic {
            user: user.to_string(),
            password: password.to_string(),
        }
    }

    pub fn admin() -> Cred {
        Cred::basic(ADMIN, ADMIN_PASSWORD)
    }

    pub fn apply(&self, rb: RequestBuilder) -> RequestBuilder {
        match self {
            Cred::Anonymous => rb,
            Cred::Basic { user, password } => rb.header(
                AUTHORIZATION,
                format!(
                    "Basic {}",
                    b64_encode(format!("{user}:{password}").as_bytes())
                ),
            ),
            Cred::Bearer(t) => rb.header(AUTHORIZATION, format!("Bearer {t}")),
            Cred::Raw(v) => rb.header(AUTHORIZATION, v.as_str()),
        }
    }

    /// A short description for failure messages (never the secret).
    pub fn describe(&self) -> String {
        match self {
            Cred::Anonymous => "anonymous".into(),
            Cred::Basic { user, .. } => format!("Basic {user}"),
            Cred::Bearer(_) => "Bearer token".into(),
            Cred::Raw(v) => format!("Authorization {v:?}"),
        }
    }
}

// ---- the registry over HTTP -----------------------------------------------------------------

/// A client for one server.
#[derive(Clone)]
pub struct Reg {
    /// `http://127.0.0.1:PORT`
    pub base: String,
    /// `127.0.0.1:PORT`
    pub addr: String,
    pub http: Client,
}

impl Reg {
    pub fn new(srv: &KuraServer) -> Reg {
        Reg::at(&srv.addr)
    }

    pub fn at(addr: &str) -> Reg {
        Reg {
            base: format!("http://{addr}"),
            addr: addr.to_string(),
            http: Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(std::time::Duration::from_secs(60))
                .build()
                .expect("reqwest client"),
        }
    }

    pub fn url(&self, path_or_url: &str) -> String {
        if path_or_url.starts_with("http://") || path_or_url.starts_with("https://") {
            path_or_url.to_string()
        } else {
            format!("{}{}", self.base, path_or_url)
        }
    }

    pub fn req(&self, method: Method, path: &str, cred: &Cred) -> RequestBuilder {
        cred.apply(self.http.request(method, self.url(path)))
    }

    pub async fn send(&self, method: Method, path: &str, cred: &Cred) -> Response {
        let m = method.clone();
        self.req(method, path, cred)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{m} {path}: {e}"))
    }

    // ---- tokens ----

    /// `GET /token?service=kura&scope=...` (one `scope` parameter per entry).
    pub async fn token_response(&self, cred: &Cred, scopes: &[&str]) -> Response {
        let mut path = format!("/token?service={SERVICE}");
        for s in scopes {
            path.push_str("&scope=");
            path.push_str(&super::api::encode_query(s));
        }
        self.send(Method::GET, &path, cred).await
    }

    /// A token for `scopes` (the endpoint must answer 200).
    pub async fn token(&self, cred: &Cred, scopes: &[&str]) -> String {
        let (status, body) = read_json(self.token_response(cred, scopes).await).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "GET /token as {} for {scopes:?}: {body}",
            cred.describe()
        );
        body["token"]
            .as_str()
            .unwrap_or_else(|| panic!("token response without `token`: {body}"))
            .to_string()
    }

    /// The actions a fresh token for `scope` grants on `repository` (from its `access` claim).
    pub async fn granted(&self, cred: &Cred, scope: &str) -> Vec<String> {
        let token = self.token(cred, &[scope]).await;
        let claims = jwt_claims(&token);
        let name = scope
            .strip_prefix("repository:")
            .and_then(|r| r.rsplit_once(':'))
            .map(|(n, _)| n)
            .unwrap_or_else(|| panic!("not a repository scope: {scope}"));
        let mut out: Vec<String> = claims["access"]
            .as_array()
            .unwrap_or_else(|| panic!("token without an access list: {claims}"))
            .iter()
            .filter(|g| g["type"] == "repository" && g["name"] == name)
            .flat_map(|g| {
                g["actions"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|a| a.as_str().unwrap_or_default().to_string())
            })
            .collect();
        out.sort();
        out
    }

    // ---- management API ----

    /// A management API call; returns the status and the JSON body (`null` when empty).
    pub async fn api(
        &self,
        method: Method,
        path: &str,
        cred: &Cred,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut rb = self.req(method.clone(), path, cred);
        if let Some(b) = body {
            rb = rb
                .header(CONTENT_TYPE, "application/json")
                .body(b.to_string());
        }
        let resp = rb
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        read_json(resp).await
    }

    /// A management API call that must answer `want`; returns the body.
    pub async fn api_ok(
        &self,
        method: Method,
        path: &str,
        cred: &Cred,
        body: Option<Value>,
        want: u16,
    ) -> Value {
        let (status, v) = self.api(method.clone(), path, cred, body).await;
        assert_eq!(
            status.as_u16(),
            want,
            "{method} {path} as {}: {v}",
            cred.describe()
        );
        v
    }

    pub async fn create_user(&self, name: &str, password: &str) {
        self.api_ok(
            Method::POST,
            "/api/v1/users",
            &Cred::admin(),
            Some(json!({ "username": name, "password": password })),
            201,
        )
        .await;
    }

    pub async fn create_project(&self, cred: &Cred, name: &str, public: bool) {
        self.api_ok(
            Method::POST,
            "/api/v1/projects",
            cred,
            Some(json!({ "name": name, "public": public })),
            201,
        )
        .await;
    }

    pub async fn set_member(&self, cred: &Cred, project: &str, user: &str, role: &str) {
        self.api_ok(
            Method::PUT,
            &format!("/api/v1/projects/{project}/members/{user}"),
            cred,
            Some(json!({ "role": role })),
            200,
        )
        .await;
    }

    pub async fn put_settings(&self, settings: Value) -> Value {
        self.api_ok(
            Method::PUT,
            "/api/v1/settings",
            &Cred::admin(),
            Some(settings),
            200,
        )
        .await
    }

    // ---- pushes as a given user ----

    /// `POST /v2/<repo>/blobs/uploads/` expecting 202; returns the Location.
    pub async fn start_upload(&self, cred: &Cred, repo: &str) -> String {
        let resp = self
            .req(Method::POST, &format!("/v2/{repo}/blobs/uploads/"), cred)
            .send()
            .await
            .expect("POST upload");
        let status = resp.status();
        let loc = resp
            .headers()
            .get("location")
            .map(|v| v.to_str().unwrap().to_string());
        assert_eq!(
            status,
            StatusCode::ACCEPTED,
            "start upload in {repo} as {}: {}",
            cred.describe(),
            super::api::describe(resp).await
        );
        loc.expect("Location on 202")
    }

    /// Pushes a blob (POST then PUT) expecting 201; returns its digest.
    pub async fn push_blob(&self, cred: &Cred, repo: &str, data: &[u8]) -> String {
        let digest = super::api::sha256(data);
        let loc = self.start_upload(cred, repo).await;
        let resp = self
            .req(
                Method::PUT,
                &super::api::with_query(&loc, "digest", &digest),
                cred,
            )
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(data.to_vec())
            .send()
            .await
            .expect("PUT upload");
        assert_eq!(
            resp.status(),
            StatusCode::CREATED,
            "push blob to {repo} as {}: {}",
            cred.describe(),
            super::api::describe(resp).await
        );
        digest
    }

    pub async fn put_manifest(
        &self,
        cred: &Cred,
        repo: &str,
        reference: &str,
        body: &[u8],
    ) -> Response {
        self.req(
            Method::PUT,
            &format!("/v2/{repo}/manifests/{reference}"),
            cred,
        )
        .header(CONTENT_TYPE, OCI_MANIFEST)
        .body(body.to_vec())
        .send()
        .await
        .expect("PUT manifest")
    }

    /// Pushes a config, a layer and an OCI manifest tagged `tag`, all expecting success.
    pub async fn push_image(&self, cred: &Cred, repo: &str, tag: &str) -> Pushed {
        let config = random_config();
        let layer = random_bytes(300);
        let config_digest = self.push_blob(cred, repo, &config).await;
        let layer_digest = self.push_blob(cred, repo, &layer).await;
        let manifest = super::api::image_manifest(
            &descriptor(OCI_CONFIG, &config),
            &[descriptor(OCI_LAYER, &layer)],
            None,
        );
        let resp = self.put_manifest(cred, repo, tag, &manifest).await;
        assert_eq!(
            resp.status(),
            StatusCode::CREATED,
            "PUT manifest {repo}:{tag} as {}: {}",
            cred.describe(),
            super::api::describe(resp).await
        );
        Pushed {
            digest: super::api::sha256(&manifest),
            manifest,
            config,
            config_digest,
            layer_digest,
        }
    }

    /// `GET /v2/_catalog` as `cred`: the repositories listed (the answer must be 200).
    pub async fn catalog(&self, cred: &Cred) -> Vec<String> {
        let (status, v) = read_json(self.send(Method::GET, "/v2/_catalog", cred).await).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "catalog as {}: {v}",
            cred.describe()
        );
        v["repositories"]
            .as_array()
            .unwrap_or_else(|| panic!("catalog without repositories: {v}"))
            .iter()
            .map(|r| r.as_str().unwrap().to_string())
            .collect()
    }
}

/// What [`Reg::push_image`] pushed.
#[derive(Debug, Clone)]
pub struct Pushed {
    pub manifest: Vec<u8>,
    pub digest: String,
    pub config: Vec<u8>,
    pub config_digest: String,
    pub layer_digest: String,
}

// ---- responses ------------------------------------------------------------------------------

/// Status and JSON body of a response (`null` for an empty body; panics on a non-JSON body).
pub async fn read_json(resp: Response) -> (StatusCode, Value) {
    let status = resp.status();
    let url = resp.url().to_string();
    let text = resp.text().await.expect("body");
    if text.is_empty() {
        return (status, Value::Null);
    }
    let v = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{url}: {status} with a non-JSON body ({e}): {text}"));
    (status, v)
}

/// Checks a JSON error body `{"errors":[{"code","message"}]}` with `code` among the errors.
pub fn assert_error(status: StatusCode, body: &Value, want_status: u16, code: &str, what: &str) {
    assert_eq!(status.as_u16(), want_status, "{what}: {body}");
    let errors = body["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: error body without an `errors` array: {body}"));
    assert!(!errors.is_empty(), "{what}: empty `errors`: {body}");
    for e in errors {
        assert!(e["code"].is_string(), "{what}: error without code: {body}");
        assert!(
            e["message"].is_string(),
            "{what}: error without message: {body}"
        );
    }
    assert!(
        errors.iter().any(|e| e["code"] == code),
        "{what}: expected error code {code}: {body}"
    );
}

pub fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .map(|v| v.to_str().expect("ASCII header").to_string())
}

/// Parses a `WWW-Authenticate: Bearer k="v",k="v"` challenge into (scheme, params).
pub fn parse_challenge(value: &str) -> (String, Vec<(String, String)>) {
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    let mut params = Vec::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let (key, after) = rest
            .split_once('=')
            .unwrap_or_else(|| panic!("malformed challenge {value:?}"));
        let after = after.trim_start();
        let (val, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted
                .find('"')
                .unwrap_or_else(|| panic!("unterminated quote in {value:?}"));
            (&quoted[..end], &quoted[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        params.push((key.trim().to_string(), val.to_string()));
        rest = remaining.trim_start().trim_start_matches(',').trim_start();
    }
    (scheme.to_string(), params)
}

pub fn challenge_param<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v.as_str())
}

// ---- base64 and JWTs ------------------------------------------------------------------------

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn b64_encode(data: &[u8]) -> String {
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Unpadded base64url (JWT segments).
pub fn b64url_encode(data: &[u8]) -> String {
    b64_encode(data)
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_")
}

/// Decodes base64url or standard base64, padded or not.
pub fn b64_decode(s: &str) -> Option<Vec<u8>> {
    let mut bits: u32 = 0;
    let mut nbits = 0;
    let mut out = Vec::new();
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        bits = (bits << 6) | u32::from(v);
        nbits += 6;
        if nbits >= 8 {
            nbits -= 8;
            out.push((bits >> nbits) as u8);
            bits &= (1 << nbits) - 1;
        }
    }
    Some(out)
}

/// The three segments of a JWT.
pub fn jwt_segments(token: &str) -> [String; 3] {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "not a JWS compact token: {token}");
    [
        parts[0].to_string(),
        parts[1].to_string(),
        parts[2].to_string(),
    ]
}

fn decode_segment(seg: &str) -> Value {
    let raw = b64_decode(seg).unwrap_or_else(|| panic!("segment is not base64url: {seg}"));
    serde_json::from_slice(&raw).unwrap_or_else(|e| panic!("segment is not JSON ({e}): {seg}"))
}

pub fn jwt_header(token: &str) -> Value {
    decode_segment(&jwt_segments(token)[0])
}

/// The claims of a JWT (not verified: the server does that).
pub fn jwt_claims(token: &str) -> Value {
    decode_segment(&jwt_segments(token)[1])
}
