//! Project webhooks, black-box: a real HTTP receiver on loopback (started by each test)
//! records what Kura POSTs, and can fail its first requests (with a status or by closing the
//! connection) or hang. Covered: the PUSH_ARTIFACT payload and headers and an HMAC-SHA256
//! signature the test verifies itself (and secret rotation/removal); retries with exponential
//! backoff until delivered; giving up after the maximum number of attempts; connection errors
//! and timeouts recorded without a status code; PULL_ARTIFACT, DELETE_ARTIFACT (client,
//! retention, GC) and TAG_RETENTION; QUOTA_EXCEED and QUOTA_WARNING (once per crossing);
//! pushes never slowed by a hanging receiver; delivery only to enabled, subscribed policies of
//! the event's project; the management API's validation and permissions; the delivery log's
//! pagination; the feature switched off.

mod common;

use std::collections::{BTreeSet, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::api::{OCI_MANIFEST, random_bytes, sha256};
use common::auth::{Cred, Reg, assert_error, start_local};
use common::storage::*;
use hmac::{Hmac, KeyInit, Mac};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::Sha256;

// ---- the receiver -----------------------------------------------------------------------------

/// How the receiver answers one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// An HTTP response with this status.
    Status(u16),
    /// Read the request, then close the connection without answering.
    Close,
    /// Read the request, sleep this long, then answer 200 (if the client still listens).
    Hang(Duration),
}

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    method: String,
    /// Path and query as sent.
    target: String,
    /// Header names lowercased, in order.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    at: Instant,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    fn must_header(&self, name: &str) -> &str {
        self.header(name)
            .unwrap_or_else(|| panic!("webhook request without {name}: {:?}", self.headers))
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "webhook body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

struct ReceiverState {
    requests: Vec<Received>,
    /// Answers for the next requests, in order; then `default`.
    script: VecDeque<Answer>,
    default: Answer,
}

/// A minimal HTTP/1.1 server on 127.0.0.1 (one thread per connection, `Connection: close`).
struct Receiver {
    addr: SocketAddr,
    state: Arc<Mutex<ReceiverState>>,
    stop: Arc<AtomicBool>,
}

impl Receiver {
    /// Answers every request with `default`.
    fn start(default: Answer) -> Receiver {
        Self::scripted(&[], default)
    }

    /// Answers the first requests with `script` (in order), then with `default`.
    fn scripted(script: &[Answer], default: Answer) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind receiver");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(ReceiverState {
            requests: Vec::new(),
            script: script.iter().copied().collect(),
            default,
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if sp.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = conn else { continue };
                let st = st.clone();
                std::thread::spawn(move || serve_connection(stream, &st));
            }
        });
        Receiver { addr, state, stop }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn requests(&self) -> Vec<Received> {
        self.state.lock().unwrap().requests.clone()
    }

    fn count(&self) -> usize {
        self.state.lock().unwrap().requests.len()
    }

    /// Waits (bounded) until at least `n` requests arrived; returns all of them.
    async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let start = Instant::now();
        loop {
            let got = self.requests();
            if got.len() >= n {
                return got;
            }
            assert!(
                start.elapsed() < timeout,
                "receiver got {} request(s) within {timeout:?}, expected {n}: {:?}",
                got.len(),
                got.iter()
                    .map(|r| String::from_utf8_lossy(&r.body).to_string())
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits `quiet` and asserts the receiver still has exactly `n` requests.
    async fn assert_stays_at(&self, n: usize, quiet: Duration, what: &str) {
        tokio::time::sleep(quiet).await;
        let got = self.requests();
        assert_eq!(
            got.len(),
            n,
            "{what}: unexpected webhook requests: {:?}",
            got.iter()
                .map(|r| String::from_utf8_lossy(&r.body).to_string())
                .collect::<Vec<_>>()
        );
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

fn serve_connection(stream: TcpStream, state: &Mutex<ReceiverState>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) | Err(_) => return,
        Ok(_) => {}
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    let mut content_length = 0usize;
    loop {
        let mut h = String::new();
        match reader.read_line(&mut h) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let h = h.trim_end_matches(['\r', '\n']);
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_string());
            if k == "content-length" {
                content_length = v.parse().unwrap_or(0);
            }
            headers.push((k, v));
        }
    }
    let mut body = vec![0u8; content_length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let answer = {
        let mut s = state.lock().unwrap();
        s.requests.push(Received {
            method,
            target,
            headers,
            body,
            at: Instant::now(),
        });
        let default = s.default;
        s.script.pop_front().unwrap_or(default)
    };
    let mut stream = stream;
    let status = match answer {
        Answer::Close => {
            let _ = stream.shutdown(Shutdown::Both);
            return;
        }
        Answer::Hang(d) => {
            std::thread::sleep(d);
            200
        }
        Answer::Status(s) => s,
    };
    let reason = match status {
        200 => "OK",
        202 => "Accepted",
        204 => "No Content",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Whatever",
    };
    let body = if status == 204 { "" } else { "ok" };
    let resp = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(resp.as_bytes());
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Both);
}

// ---- Kura helpers -----------------------------------------------------------------------------

/// A local-mode server with short webhook backoff (100 ms unless `extra` sets it) and the
/// given projects (private, created by the administrator).
async fn setup(extra: &[&str], projects: &[&str]) -> (common::KuraServer, Reg) {
    let mut args: Vec<&str> = Vec::new();
    if !extra.contains(&"--webhook-backoff-ms") {
        args.extend(["--webhook-backoff-ms", "100"]);
    }
    args.extend_from_slice(extra);
    let srv = start_local(&args);
    let reg = Reg::new(&srv);
    for p in projects {
        reg.create_project(&admin(), p, false).await;
    }
    (srv, reg)
}

fn hook(name: &str, url: &str, events: &[&str]) -> Value {
    json!({ "name": name, "url": url, "events": events })
}

/// Creates a webhook policy (expects 201); returns the answer.
async fn add_hook(reg: &Reg, project: &str, body: Value) -> Value {
    reg.api_ok(
        Method::POST,
        &format!("/api/v1/projects/{project}/webhooks"),
        &admin(),
        Some(body),
        201,
    )
    .await
}

fn id_of(policy: &Value) -> i64 {
    policy["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("policy without a numeric id: {policy}"))
}

/// `PUT /api/v1/projects/{p}/webhooks/{id}` expecting 200.
async fn put_hook(reg: &Reg, project: &str, id: i64, body: Value) -> Value {
    reg.api_ok(
        Method::PUT,
        &format!("/api/v1/projects/{project}/webhooks/{id}"),
        &admin(),
        Some(body),
        200,
    )
    .await
}

/// The delivery log of a policy (newest first, up to 1000).
async fn deliveries(reg: &Reg, project: &str, id: i64) -> Vec<Value> {
    let v = reg
        .api_ok(
            Method::GET,
            &format!("/api/v1/projects/{project}/webhooks/{id}/deliveries?n=1000"),
            &admin(),
            None,
            200,
        )
        .await;
    v.as_array()
        .unwrap_or_else(|| panic!("delivery log is not a list: {v}"))
        .clone()
}

/// Waits (bounded) until the policy has at least `n` deliveries and none is pending.
async fn settled(reg: &Reg, project: &str, id: i64, n: usize, timeout: Duration) -> Vec<Value> {
    let start = Instant::now();
    loop {
        let d = deliveries(reg, project, id).await;
        if d.len() >= n && d.iter().all(|x| x["status"] != "pending") {
            return d;
        }
        assert!(
            start.elapsed() < timeout,
            "policy {id}: {n} settled deliveries not there within {timeout:?}: {}",
            Value::Array(d)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `sha256=<hex HMAC-SHA256(secret, body)>`, computed here.
fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Verifies an `X-Kura-Signature-256` value against `secret` and `body` (constant time).
fn verifies(secret: &str, body: &[u8], header: &str) -> bool {
    let Some(hex_part) = header.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(raw) = hex::decode(hex_part) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    mac.verify_slice(&raw).is_ok()
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Status codes of a delivery's attempts, in order.
fn codes(d: &Value) -> Vec<Option<u64>> {
    d["attempt_log"]
        .as_array()
        .unwrap_or_else(|| panic!("delivery without attempt_log: {d}"))
        .iter()
        .map(|a| a["status_code"].as_u64())
        .collect()
}

fn attempt_times(d: &Value) -> Vec<i64> {
    d["attempt_log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            a["at"]
                .as_i64()
                .unwrap_or_else(|| panic!("attempt without at: {d}"))
        })
        .collect()
}

/// Pushes a config and a layer, then times the manifest PUT alone; returns (digest, PUT time).
async fn push_timed(reg: &Reg, repo: &str, tag: &str) -> (String, Duration) {
    let config = common::api::random_config();
    let layer = random_bytes(300);
    reg.push_blob(&admin(), repo, &config).await;
    reg.push_blob(&admin(), repo, &layer).await;
    let manifest = manifest_of(&config, &[&layer]);
    let start = Instant::now();
    let resp = reg.put_manifest(&admin(), repo, tag, &manifest).await;
    let took = start.elapsed();
    assert_eq!(
        resp.status(),
        StatusCode::CREATED,
        "PUT manifest {repo}:{tag}"
    );
    (sha256(&manifest), took)
}

/// Pushes a fresh image by digest only (untagged); returns its digest.
async fn push_untagged(reg: &Reg, repo: &str) -> String {
    let config = common::api::random_config();
    let layer = random_bytes(200);
    reg.push_blob(&admin(), repo, &config).await;
    reg.push_blob(&admin(), repo, &layer).await;
    let body = manifest_of(&config, &[&layer]);
    let digest = sha256(&body);
    put_manifest_ok(reg, repo, &digest, OCI_MANIFEST, &body).await
}

const WAIT: Duration = Duration::from_secs(15);

// ---- PUSH_ARTIFACT: payload, headers, signature ---------------------------------------------

/// A push is announced with the documented payload and headers, signed with HMAC-SHA256 over
/// the raw body (verified here; a wrong secret or an altered body does not verify); the
/// delivery log records it with the exact payload sent. The secret is never returned; PUT
/// without `secret` keeps it, a new secret re-signs, `""` removes signing.
#[tokio::test]
async fn push_is_delivered_with_payload_headers_and_signature() {
    let (_srv, reg) = setup(&[], &["lib"]).await;
    let recv = Receiver::start(Answer::Status(200));
    let secret = "s3cr3t-Key!";
    let url = recv.url("/hooks/kura?source=test");
    let mut body = hook("ci", &url, &["PUSH_ARTIFACT"]);
    body["secret"] = json!(secret);
    let policy = add_hook(&reg, "lib", body).await;
    let id = id_of(&policy);
    assert_eq!(policy["project"], "lib", "{policy}");
    assert_eq!(policy["name"], "ci", "{policy}");
    assert_eq!(policy["url"], url, "{policy}");
    assert_eq!(policy["events"], json!(["PUSH_ARTIFACT"]), "{policy}");
    assert_eq!(policy["enabled"], true, "{policy}");
    assert_eq!(policy["has_secret"], true, "{policy}");
    assert!(policy["created_at"].is_string(), "{policy}");
    assert!(policy["updated_at"].is_string(), "{policy}");
    assert!(policy.get("secret").is_none(), "secret returned: {policy}");
    assert!(
        !policy.to_string().contains(secret),
        "secret leaked: {policy}"
    );
    let listed = reg
        .api_ok(
            Method::GET,
            "/api/v1/projects/lib/webhooks",
            &admin(),
            None,
            200,
        )
        .await;
    assert!(
        !listed.to_string().contains(secret),
        "secret leaked: {listed}"
    );
    assert_eq!(listed.as_array().map(|a| a.len()), Some(1), "{listed}");

    let before = now_secs();
    let pushed = reg.push_image(&admin(), "lib/app", "v1").await;
    let got = recv.wait_for(1, WAIT).await;
    let r = &got[0];

    // Request line and headers.
    assert_eq!(r.method, "POST");
    assert_eq!(
        r.target, "/hooks/kura?source=test",
        "the URL's path and query are kept"
    );
    assert!(
        r.must_header("content-type")
            .starts_with("application/json"),
        "{:?}",
        r.headers
    );
    assert_eq!(r.must_header("x-kura-event"), "PUSH_ARTIFACT");
    assert_eq!(r.must_header("x-kura-attempt"), "1");
    let p = r.json();
    assert_eq!(
        r.must_header("x-kura-event-id"),
        p["id"].as_str().unwrap_or("?"),
        "{p}"
    );

    // The signature, verified independently.
    let sig = r.must_header("x-kura-signature-256");
    assert_eq!(
        sig,
        sign(secret, &r.body),
        "signature is not HMAC-SHA256(secret, body)"
    );
    assert!(
        sig.strip_prefix("sha256=")
            .is_some_and(|h| h.len() == 64 && h.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f'))),
        "signature is not sha256=<64 lowercase hex>: {sig}"
    );
    assert!(verifies(secret, &r.body, sig));
    assert!(
        !verifies("wrong-secret", &r.body, sig),
        "a wrong secret verifies"
    );
    let mut altered = r.body.clone();
    let last = altered.len() - 2;
    altered[last] ^= 0x01;
    assert!(!verifies(secret, &altered, sig), "an altered body verifies");

    // The payload.
    assert!(
        is_uuid(p["id"].as_str().unwrap_or("")),
        "event id is not a UUID: {p}"
    );
    assert_eq!(p["type"], "PUSH_ARTIFACT", "{p}");
    let occur = p["occur_at"]
        .as_i64()
        .unwrap_or_else(|| panic!("occur_at: {p}"));
    assert!(
        occur >= before - 5 && occur <= now_secs() + 5,
        "occur_at {occur} is not the push time (~{before}): {p}"
    );
    assert_eq!(
        p["occur_at_ms"].as_i64().map(|ms| ms / 1000),
        Some(occur),
        "{p}"
    );
    assert_eq!(p["operator"], "admin", "{p}");
    assert_eq!(p["project"], "lib", "{p}");
    assert_eq!(p["policy"], json!({"id": id, "name": "ci"}), "{p}");
    assert_eq!(
        p["event_data"]["repository"],
        json!({"name": "app", "namespace": "lib", "repo_full_name": "lib/app"}),
        "{p}"
    );
    let res = p["event_data"]["resources"]
        .as_array()
        .unwrap_or_else(|| panic!("no resources: {p}"));
    assert_eq!(res.len(), 1, "{p}");
    assert_eq!(res[0]["digest"], pushed.digest, "{p}");
    assert_eq!(res[0]["tag"], "v1", "{p}");
    assert_eq!(res[0]["media_type"], OCI_MANIFEST, "{p}");
    assert_eq!(res[0]["size"], pushed.manifest.len(), "{p}");
    assert_eq!(res[0]["resource_url"], "lib/app:v1", "{p}");

    // The delivery log.
    let log = settled(&reg, "lib", id, 1, WAIT).await;
    assert_eq!(log.len(), 1, "{log:?}");
    let d = &log[0];
    assert_eq!(r.must_header("x-kura-delivery"), d["id"].to_string(), "{d}");
    assert_eq!(d["policy_id"], id, "{d}");
    assert_eq!(d["event_type"], "PUSH_ARTIFACT", "{d}");
    assert_eq!(d["event_id"], p["id"], "{d}");
    assert_eq!(d["status"], "delivered", "{d}");
    assert_eq!(d["attempts"], 1, "{d}");
    assert_eq!(
        d["payload"], p,
        "the log's payload differs from what was sent"
    );
    assert!(d["next_attempt_at"].is_null(), "{d}");
    let (created, finished) = (d["created_at"].as_i64(), d["finished_at"].as_i64());
    assert!(
        created.is_some() && finished.is_some() && finished >= created,
        "created_at/finished_at: {d}"
    );
    let a = &d["attempt_log"][0];
    assert_eq!(d["attempt_log"].as_array().map(|l| l.len()), Some(1), "{d}");
    assert_eq!(a["attempt"], 1, "{d}");
    assert_eq!(a["status_code"], 200, "{d}");
    assert!(a["error"].is_null(), "{d}");
    assert!(a["duration_ms"].as_i64().is_some_and(|ms| ms >= 0), "{d}");
    assert!(a["at"].as_i64() >= created, "{d}");

    // Blob pushes are not announced: exactly one request.
    recv.assert_stays_at(1, Duration::from_millis(400), "one push")
        .await;

    // PUT without `secret` keeps it.
    let kept = put_hook(&reg, "lib", id, hook("ci", &url, &["PUSH_ARTIFACT"])).await;
    assert_eq!(kept["has_secret"], true, "{kept}");
    reg.push_image(&admin(), "lib/app", "v2").await;
    let r = recv.wait_for(2, WAIT).await[1].clone();
    assert!(
        verifies(secret, &r.body, r.must_header("x-kura-signature-256")),
        "after a PUT without secret the old secret must still sign"
    );

    // A new secret signs from now on; the old one no longer verifies.
    let mut rotated = hook("ci", &url, &["PUSH_ARTIFACT"]);
    rotated["secret"] = json!("another-secret");
    let v = put_hook(&reg, "lib", id, rotated).await;
    assert_eq!(v["has_secret"], true, "{v}");
    assert!(!v.to_string().contains("another-secret"), "{v}");
    reg.push_image(&admin(), "lib/app", "v3").await;
    let r = recv.wait_for(3, WAIT).await[2].clone();
    let sig = r.must_header("x-kura-signature-256");
    assert!(
        verifies("another-secret", &r.body, sig),
        "new secret does not verify"
    );
    assert!(
        !verifies(secret, &r.body, sig),
        "the old secret still verifies"
    );

    // "" removes the secret: no signature header.
    let mut removed = hook("ci", &url, &["PUSH_ARTIFACT"]);
    removed["secret"] = json!("");
    let v = put_hook(&reg, "lib", id, removed).await;
    assert_eq!(v["has_secret"], false, "{v}");
    reg.push_image(&admin(), "lib/app", "v4").await;
    let r = recv.wait_for(4, WAIT).await[3].clone();
    assert!(
        r.header("x-kura-signature-256").is_none(),
        "unsigned policy sent a signature: {:?}",
        r.headers
    );
    assert_eq!(r.json()["event_data"]["resources"][0]["tag"], "v4");

    // A push by digest into a nested repository: no tag, the digest in resource_url, the
    // repository's name is the path below the project.
    let digest = push_untagged(&reg, "lib/team/app").await;
    let r = recv.wait_for(5, WAIT).await[4].clone();
    let p = r.json();
    assert_eq!(
        p["event_data"]["repository"],
        json!({"name": "team/app", "namespace": "lib", "repo_full_name": "lib/team/app"}),
        "{p}"
    );
    let res = &p["event_data"]["resources"][0];
    assert_eq!(res["digest"], digest, "{p}");
    assert!(res["tag"].is_null(), "a push by digest has no tag: {p}");
    assert_eq!(res["resource_url"], format!("lib/team/app@{digest}"), "{p}");
    recv.assert_stays_at(5, Duration::from_millis(300), "five pushes")
        .await;
}

// ---- retries ---------------------------------------------------------------------------------

/// The receiver fails the first two attempts with 500: the delivery is retried with the
/// same delivery id, event id and body, with exponential backoff (100 ms, then 200 ms), and
/// ends delivered with three logged attempts (500, 500, 200).
#[tokio::test]
async fn failed_attempts_are_retried_with_backoff_until_delivered() {
    let (_srv, reg) = setup(&[], &["lib"]).await;
    let recv = Receiver::scripted(
        &[Answer::Status(500), Answer::Status(500)],
        Answer::Status(200),
    );
    let mut body = hook("retry", &recv.url("/hook"), &["PUSH_ARTIFACT"]);
    body["secret"] = json!("k");
    let id = id_of(&add_hook(&reg, "lib", body).await);
    reg.push_image(&admin(), "lib/app", "v1").await;

    let got = recv.wait_for(3, WAIT).await;
    let log = settled(&reg, "lib", id, 1, WAIT).await;
    assert_eq!(log.len(), 1, "{log:?}");
    let d = &log[0];
    assert_eq!(d["status"], "delivered", "{d}");
    assert_eq!(d["attempts"], 3, "{d}");
    assert_eq!(codes(d), vec![Some(500), Some(500), Some(200)], "{d}");
    let attempts: Vec<u64> = d["attempt_log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["attempt"].as_u64().unwrap())
        .collect();
    assert_eq!(attempts, vec![1, 2, 3], "{d}");
    for (i, a) in d["attempt_log"].as_array().unwrap().iter().enumerate() {
        if i < 2 {
            assert!(
                a["error"].as_str().is_some_and(|e| !e.is_empty()),
                "failed attempt without an error: {d}"
            );
        } else {
            assert!(
                a["error"].is_null(),
                "successful attempt with an error: {d}"
            );
        }
    }
    let at = attempt_times(d);
    assert!(
        at[1] - at[0] >= 100 && at[2] - at[1] >= 200,
        "attempts not spaced by the exponential backoff (100 ms, 200 ms): {at:?}"
    );
    assert!(d["next_attempt_at"].is_null(), "{d}");
    assert!(d["finished_at"].as_i64() >= Some(at[2]), "{d}");

    // What the receiver saw: the same delivery three times, attempt numbered.
    assert_eq!(got.len(), 3);
    let nums: Vec<&str> = got
        .iter()
        .map(|r| r.must_header("x-kura-attempt"))
        .collect();
    assert_eq!(nums, vec!["1", "2", "3"]);
    for r in &got {
        assert_eq!(r.must_header("x-kura-delivery"), d["id"].to_string());
        assert_eq!(
            r.must_header("x-kura-event-id"),
            d["event_id"].as_str().unwrap()
        );
        assert_eq!(r.body, got[0].body, "a retry sent a different body");
        assert!(verifies(
            "k",
            &r.body,
            r.must_header("x-kura-signature-256")
        ));
    }
    assert!(
        got[1].at - got[0].at >= Duration::from_millis(100),
        "first retry too early"
    );
    assert!(
        got[2].at - got[1].at >= Duration::from_millis(200),
        "second retry too early"
    );
    // Delivered: no further attempts.
    recv.assert_stays_at(3, Duration::from_millis(700), "after delivery")
        .await;
}

/// A receiver that always answers 503 gets exactly `--webhook-max-attempts` attempts; the
/// delivery ends `failed` with every attempt logged.
#[tokio::test]
async fn deliveries_give_up_after_max_attempts() {
    let (_srv, reg) = setup(&["--webhook-max-attempts", "3"], &["lib"]).await;
    let recv = Receiver::start(Answer::Status(503));
    let id = id_of(
        &add_hook(
            &reg,
            "lib",
            hook("down", &recv.url("/"), &["PUSH_ARTIFACT"]),
        )
        .await,
    );
    reg.push_image(&admin(), "lib/app", "v1").await;

    let log = settled(&reg, "lib", id, 1, WAIT).await;
    let d = &log[0];
    assert_eq!(d["status"], "failed", "{d}");
    assert_eq!(d["attempts"], 3, "{d}");
    assert_eq!(codes(d), vec![Some(503); 3], "{d}");
    assert!(d["finished_at"].is_i64(), "{d}");
    assert!(
        d["next_attempt_at"].is_null(),
        "a failed delivery has no next attempt: {d}"
    );
    let at = attempt_times(d);
    assert!(
        at.windows(2).all(|w| w[1] > w[0]),
        "attempt times not increasing: {at:?}"
    );
    assert_eq!(recv.count(), 3);
    // Given up: the next backoff (400 ms) passes without a fourth attempt.
    recv.assert_stays_at(3, Duration::from_millis(1000), "after giving up")
        .await;
    assert_eq!(deliveries(&reg, "lib", id).await[0]["attempts"], 3);
}

/// While a delivery waits for its retry, the log shows it `pending` with the time of the next
/// attempt (the last attempt's time plus the backoff).
#[tokio::test]
async fn pending_delivery_shows_its_next_attempt_time() {
    let (_srv, reg) = setup(
        &[
            "--webhook-backoff-ms",
            "2000",
            "--webhook-max-attempts",
            "2",
        ],
        &["lib"],
    )
    .await;
    let recv = Receiver::start(Answer::Status(500));
    let id = id_of(
        &add_hook(
            &reg,
            "lib",
            hook("slow", &recv.url("/"), &["PUSH_ARTIFACT"]),
        )
        .await,
    );
    reg.push_image(&admin(), "lib/app", "v1").await;

    // After the first attempt (and before the retry, 2 s later).
    let start = Instant::now();
    let d = loop {
        let log = deliveries(&reg, "lib", id).await;
        if let Some(d) = log.first()
            && d["attempts"] == 1
        {
            break d.clone();
        }
        assert!(start.elapsed() < WAIT, "no first attempt: {log:?}");
        tokio::time::sleep(Duration::from_millis(30)).await;
    };
    assert_eq!(d["status"], "pending", "{d}");
    assert!(d["finished_at"].is_null(), "{d}");
    let first = attempt_times(&d)[0];
    let next = d["next_attempt_at"]
        .as_i64()
        .unwrap_or_else(|| panic!("pending delivery without next_attempt_at: {d}"));
    assert!(
        next >= first + 2000 && next <= first + 12_000,
        "next_attempt_at {next} is not the first attempt ({first}) plus the 2 s backoff \
         (created_at {}): {d}",
        d["created_at"]
    );

    let log = settled(&reg, "lib", id, 1, WAIT).await;
    let d = &log[0];
    assert_eq!(d["status"], "failed", "{d}");
    let at = attempt_times(d);
    assert!(at[1] - at[0] >= 2000, "retried before the backoff: {at:?}");
}

/// Starts a server with 300 ms backoff and 10 attempts, a policy whose receiver always
/// answers 500, and waits for the first attempt of one push; returns the policy id.
async fn failing_delivery_under_way(recv: &Receiver) -> (common::KuraServer, Reg, i64) {
    let (srv, reg) = setup(
        &[
            "--webhook-backoff-ms",
            "300",
            "--webhook-max-attempts",
            "10",
        ],
        &["lib"],
    )
    .await;
    let id = id_of(&add_hook(&reg, "lib", hook("h", &recv.url("/"), &["PUSH_ARTIFACT"])).await);
    reg.push_image(&admin(), "lib/app", "v1").await;
    recv.wait_for(1, WAIT).await;
    (srv, reg, id)
}

/// Disabling a policy stops the retries of its pending deliveries: a disabled policy gets
/// nothing.
#[tokio::test]
async fn disabling_a_policy_stops_its_retries() {
    let recv = Receiver::start(Answer::Status(500));
    let (_srv, reg, id) = failing_delivery_under_way(&recv).await;
    let mut body = hook("h", &recv.url("/"), &["PUSH_ARTIFACT"]);
    body["enabled"] = json!(false);
    put_hook(&reg, "lib", id, body).await;
    let n = recv.count();
    // Retries would be due after 300 ms, 600 ms and 1200 ms; at most an attempt already
    // under way when the policy changed may still arrive.
    tokio::time::sleep(Duration::from_millis(1800)).await;
    let log = deliveries(&reg, "lib", id).await;
    assert!(
        recv.count() <= n + 1,
        "a disabled policy's delivery is still retried: {} requests, {n} when disabled; log {}",
        recv.count(),
        Value::Array(log)
    );
}

/// Deleting a policy stops the retries of its pending deliveries (its log goes with it).
#[tokio::test]
async fn deleting_a_policy_stops_its_retries() {
    let recv = Receiver::start(Answer::Status(500));
    let (_srv, reg, id) = failing_delivery_under_way(&recv).await;
    reg.api_ok(
        Method::DELETE,
        &format!("/api/v1/projects/lib/webhooks/{id}"),
        &admin(),
        None,
        204,
    )
    .await;
    let n = recv.count();
    tokio::time::sleep(Duration::from_millis(1800)).await;
    assert!(
        recv.count() <= n + 1,
        "a deleted policy's delivery is still retried: {} requests, {n} at deletion",
        recv.count()
    );
    let (s, _) = reg
        .api(
            Method::GET,
            &format!("/api/v1/projects/lib/webhooks/{id}/deliveries"),
            &admin(),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

// ---- connection errors and timeouts ---------------------------------------------------------

/// Connection refused and a connection closed without an answer are failed attempts with no
/// status code and an error message; the closing receiver gets the delivery on the retry.
#[tokio::test]
async fn connection_errors_are_recorded_without_status_code() {
    let (_srv, reg) = setup(&["--webhook-max-attempts", "2"], &["lib"]).await;
    // A port nobody listens on: port 1 is outside the ephemeral range, so no receiver of a
    // concurrently running test can get it (a freed ephemeral port could be handed out again).
    let dead: SocketAddr = "127.0.0.1:1".parse().unwrap();
    assert!(
        TcpStream::connect_timeout(&dead, Duration::from_secs(1)).is_err(),
        "precondition: something listens on {dead}"
    );
    let refused = id_of(
        &add_hook(
            &reg,
            "lib",
            hook(
                "refused",
                &format!("http://{dead}/hook"),
                &["PUSH_ARTIFACT"],
            ),
        )
        .await,
    );
    let recv = Receiver::scripted(&[Answer::Close], Answer::Status(200));
    let closing = id_of(
        &add_hook(
            &reg,
            "lib",
            hook("closing", &recv.url("/"), &["PUSH_ARTIFACT"]),
        )
        .await,
    );
    reg.push_image(&admin(), "lib/app", "v1").await;

    let log = settled(&reg, "lib", refused, 1, WAIT).await;
    let d = &log[0];
    assert_eq!(d["status"], "failed", "{d}");
    assert_eq!(d["attempts"], 2, "{d}");
    assert_eq!(
        codes(d),
        vec![None, None],
        "connection refused has no status code: {d}"
    );
    for a in d["attempt_log"].as_array().unwrap() {
        assert!(a["status_code"].is_null(), "{d}");
        assert!(
            a["error"].as_str().is_some_and(|e| !e.is_empty()),
            "connection error without a message: {d}"
        );
    }

    let log = settled(&reg, "lib", closing, 1, WAIT).await;
    let d = &log[0];
    assert_eq!(d["status"], "delivered", "{d}");
    assert_eq!(codes(d), vec![None, Some(200)], "{d}");
    assert!(
        d["attempt_log"][0]["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{d}"
    );
    assert_eq!(recv.count(), 2, "one closed attempt and one answered");
}

/// A receiver that hangs (5 s) never slows pushes: every manifest PUT stays far below the
/// hang, also while deliveries are stuck in it (more than the dispatcher's concurrency).
/// The attempts time out after `--webhook-timeout-secs` and are logged without a status.
#[tokio::test]
async fn pushes_are_not_blocked_by_a_hanging_receiver() {
    let (_srv, reg) = setup(
        &["--webhook-timeout-secs", "1", "--webhook-max-attempts", "2"],
        &["lib"],
    )
    .await;
    let hang = Duration::from_secs(5);
    let recv = Receiver::start(Answer::Hang(hang));
    let id = id_of(
        &add_hook(
            &reg,
            "lib",
            hook("hang", &recv.url("/"), &["PUSH_ARTIFACT"]),
        )
        .await,
    );

    let (_, first) = push_timed(&reg, "lib/app", "t0").await;
    // The first delivery is now hanging in the receiver.
    recv.wait_for(1, WAIT).await;
    let mut times = vec![first];
    for i in 1..6 {
        let (_, t) = push_timed(&reg, "lib/app", &format!("t{i}")).await;
        times.push(t);
    }
    let worst = times.iter().max().unwrap();
    assert!(
        *worst < Duration::from_millis(1000),
        "a manifest PUT took {worst:?} while the webhook receiver hangs for {hang:?}: {times:?}"
    );

    let log = settled(&reg, "lib", id, 6, Duration::from_secs(30)).await;
    assert_eq!(log.len(), 6, "{log:?}");
    for d in &log {
        assert_eq!(d["status"], "failed", "{d}");
        assert_eq!(
            codes(d),
            vec![None, None],
            "timeouts have no status code: {d}"
        );
        for a in d["attempt_log"].as_array().unwrap() {
            let e = a["error"].as_str().unwrap_or("").to_lowercase();
            assert!(e.contains("time"), "error does not say it timed out: {d}");
            let ms = a["duration_ms"].as_i64().unwrap_or(-1);
            assert!(
                (900..4500).contains(&ms),
                "a timed-out attempt lasted {ms} ms with a 1 s timeout: {d}"
            );
        }
    }
}

// ---- PULL_ARTIFACT, DELETE_ARTIFACT, TAG_RETENTION ------------------------------------------

/// Manifest GETs (by tag and by digest) are announced with the puller as operator; HEADs,
/// blob GETs and pushes are not (the policy only subscribes to pulls). `--registry-url`
/// prefixes resource_url.
#[tokio::test]
async fn pulls_are_announced() {
    let (_srv, reg) = setup(
        &["--registry-url", "https://registry.example.com/"],
        &["lib"],
    )
    .await;
    reg.create_user("reader", "reader-pass-123").await;
    reg.set_member(&admin(), "lib", "reader", "guest").await;
    let recv = Receiver::start(Answer::Status(200));
    let id = id_of(
        &add_hook(
            &reg,
            "lib",
            hook("pulls", &recv.url("/"), &["PULL_ARTIFACT"]),
        )
        .await,
    );
    let pushed = reg.push_image(&admin(), "lib/app", "v1").await;

    let get = |reference: String, cred: Cred| {
        let reg = reg.clone();
        async move {
            let resp = reg
                .req(
                    Method::GET,
                    &format!("/v2/lib/app/manifests/{reference}"),
                    &cred,
                )
                .header("Accept", OCI_MANIFEST)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::OK, "GET manifest {reference}");
        }
    };
    get("v1".into(), admin()).await;
    recv.wait_for(1, WAIT).await;
    get(
        pushed.digest.clone(),
        Cred::basic("reader", "reader-pass-123"),
    )
    .await;
    recv.wait_for(2, WAIT).await;
    // Not pulls of a manifest: HEAD, blob GET.
    assert_eq!(manifest_status(&reg, "lib/app", "v1").await, StatusCode::OK);
    let resp = reg
        .send(
            Method::GET,
            &format!("/v2/lib/app/blobs/{}", pushed.layer_digest),
            &admin(),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    recv.assert_stays_at(2, Duration::from_millis(500), "HEAD / blob GET / push")
        .await;

    let got = recv.requests();
    let by_tag = got[0].json();
    assert_eq!(got[0].must_header("x-kura-event"), "PULL_ARTIFACT");
    assert_eq!(by_tag["type"], "PULL_ARTIFACT", "{by_tag}");
    assert_eq!(by_tag["operator"], "admin", "{by_tag}");
    assert_eq!(by_tag["project"], "lib", "{by_tag}");
    assert_eq!(
        by_tag["event_data"]["repository"]["repo_full_name"], "lib/app",
        "{by_tag}"
    );
    let r = &by_tag["event_data"]["resources"][0];
    assert_eq!(r["digest"], pushed.digest, "{by_tag}");
    assert_eq!(r["tag"], "v1", "{by_tag}");
    assert_eq!(
        r["resource_url"], "registry.example.com/lib/app:v1",
        "{by_tag}"
    );

    let by_digest = got[1].json();
    assert_eq!(by_digest["operator"], "reader", "{by_digest}");
    let r = &by_digest["event_data"]["resources"][0];
    assert_eq!(r["digest"], pushed.digest, "{by_digest}");
    assert!(
        r["tag"].is_null(),
        "a pull by digest has no tag: {by_digest}"
    );
    assert_eq!(
        r["resource_url"],
        format!("registry.example.com/lib/app@{}", pushed.digest),
        "{by_digest}"
    );
    let log = settled(&reg, "lib", id, 2, WAIT).await;
    assert!(
        log.iter().all(|d| d["event_type"] == "PULL_ARTIFACT"),
        "{log:?}"
    );
}

/// A client DELETE by digest and a retention run both announce DELETE_ARTIFACT (with the
/// cause and the tags the manifest had); the retention run announces TAG_RETENTION (dry runs
/// too, but they delete nothing, so no DELETE_ARTIFACT).
#[tokio::test]
async fn deletes_and_retention_runs_are_announced() {
    let (_srv, reg) = setup(&[], &["lib"]).await;
    let recv = Receiver::start(Answer::Status(200));
    add_hook(
        &reg,
        "lib",
        hook("del", &recv.url("/"), &["DELETE_ARTIFACT", "TAG_RETENTION"]),
    )
    .await;

    // A client delete.
    let x = reg.push_image(&admin(), "lib/app", "x1").await;
    let resp = delete(&reg, &format!("/v2/lib/app/manifests/{}", x.digest)).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let got = recv.wait_for(1, WAIT).await;
    let p = got[0].json();
    assert_eq!(got[0].must_header("x-kura-event"), "DELETE_ARTIFACT");
    assert_eq!(p["type"], "DELETE_ARTIFACT", "{p}");
    assert_eq!(p["operator"], "admin", "{p}");
    assert_eq!(p["event_data"]["cause"], "client", "{p}");
    assert_eq!(
        p["event_data"]["repository"]["repo_full_name"], "lib/app",
        "{p}"
    );
    let r = &p["event_data"]["resources"][0];
    assert_eq!(r["digest"], x.digest, "{p}");
    assert_eq!(r["tags"], json!(["x1"]), "{p}");
    assert_eq!(r["resource_url"], format!("lib/app@{}", x.digest), "{p}");

    // Retention: keep the newest v* tag.
    let v1 = reg.push_image(&admin(), "lib/app", "v1").await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let v2 = reg.push_image(&admin(), "lib/app", "v2").await;
    set_retention(
        &reg,
        "lib",
        json!([{"repositories": "app", "tags": "v*", "keep": {"latest_pushed": 1}}]),
    )
    .await;
    let dry = run_retention(&reg, "lib", true).await;
    let got = recv.wait_for(2, WAIT).await;
    let p = got[1].json();
    assert_eq!(
        p["type"], "TAG_RETENTION",
        "a dry run announces only TAG_RETENTION: {p}"
    );
    assert_eq!(p["project"], "lib", "{p}");
    assert_eq!(p["event_data"]["retention"]["run_id"], dry["id"], "{p}");
    assert_eq!(p["event_data"]["retention"]["dry_run"], true, "{p}");
    recv.assert_stays_at(2, Duration::from_millis(300), "dry run")
        .await;

    let run = run_retention(&reg, "lib", false).await;
    assert_eq!(
        deleted_digests(&run),
        BTreeSet::from([v1.digest.clone()]),
        "{run}"
    );
    let got = recv.wait_for(4, WAIT).await;
    let mut del = None;
    let mut ret = None;
    for r in &got[2..] {
        let p = r.json();
        match p["type"].as_str() {
            Some("DELETE_ARTIFACT") => del = Some(p),
            Some("TAG_RETENTION") => ret = Some(p),
            _ => panic!("unexpected event: {p}"),
        }
    }
    let del = del.expect("retention deletion announced");
    assert_eq!(del["event_data"]["cause"], "retention", "{del}");
    assert_eq!(
        del["event_data"]["resources"][0]["digest"], v1.digest,
        "{del}"
    );
    assert_eq!(
        del["event_data"]["resources"][0]["tags"],
        json!(["v1"]),
        "{del}"
    );
    let ret = ret.expect("retention run announced");
    assert_eq!(ret["event_data"]["retention"]["run_id"], run["id"], "{ret}");
    assert_eq!(ret["event_data"]["retention"]["dry_run"], false, "{ret}");
    assert_eq!(ret["event_data"]["retention"]["deleted"], 1, "{ret}");
    recv.assert_stays_at(4, Duration::from_millis(300), "v2 kept")
        .await;
    assert_eq!(
        manifest_status(&reg, "lib/app", &v2.digest).await,
        StatusCode::OK
    );
}

/// Garbage collection deleting an untagged manifest announces DELETE_ARTIFACT with cause "gc".
#[tokio::test]
async fn gc_deleting_untagged_manifests_is_announced() {
    let (_srv, reg) = setup(&[], &["lib"]).await;
    let recv = Receiver::start(Answer::Status(200));
    add_hook(
        &reg,
        "lib",
        hook("gc", &recv.url("/"), &["DELETE_ARTIFACT"]),
    )
    .await;
    let untagged = push_untagged(&reg, "lib/app").await;
    let run = gc_with(&reg, json!({"delete_untagged": true})).await;
    assert_eq!(
        run["result"]["manifests_deleted"], 1,
        "GC did not delete the manifest: {run}"
    );
    assert_eq!(
        manifest_status(&reg, "lib/app", &untagged).await,
        StatusCode::NOT_FOUND,
        "{run}"
    );
    let got = recv.wait_for(1, Duration::from_secs(5)).await;
    let p = got[0].json();
    assert_eq!(p["type"], "DELETE_ARTIFACT", "{p}");
    assert_eq!(p["event_data"]["cause"], "gc", "{p}");
    assert_eq!(p["event_data"]["resources"][0]["digest"], untagged, "{p}");
}

// ---- quotas -----------------------------------------------------------------------------------

/// QUOTA_WARNING when a push takes usage across `--quota-warning-percent` of the limit, once
/// per crossing (again after usage fell below and rose again); QUOTA_EXCEED when a push is
/// refused, with usage, requested and limit.
#[tokio::test]
async fn quota_warning_and_exceed_are_announced() {
    let (_srv, reg) = setup(&["--quota-warning-percent", "60"], &["q"]).await;
    set_quota(&reg, "q", Some(10_000)).await;
    let recv = Receiver::start(Answer::Status(200));
    let id = id_of(
        &add_hook(
            &reg,
            "q",
            hook("quota", &recv.url("/"), &["QUOTA_EXCEED", "QUOTA_WARNING"]),
        )
        .await,
    );
    let repo = "q/app";

    let big = random_bytes(5000);
    reg.push_blob(&admin(), repo, &big).await; // 50 %
    recv.assert_stays_at(0, Duration::from_millis(300), "below the threshold")
        .await;
    reg.push_blob(&admin(), repo, &random_bytes(1500)).await; // 65 %: crosses 60 %
    let got = recv.wait_for(1, WAIT).await;
    reg.push_blob(&admin(), repo, &random_bytes(500)).await; // 70 %: already above
    recv.assert_stays_at(1, Duration::from_millis(300), "still above the threshold")
        .await;
    let w = got[0].json();
    assert_eq!(got[0].must_header("x-kura-event"), "QUOTA_WARNING");
    assert_eq!(w["type"], "QUOTA_WARNING", "{w}");
    assert_eq!(w["project"], "q", "{w}");
    assert_eq!(w["operator"], "admin", "{w}");
    assert_eq!(w["event_data"]["repository"]["repo_full_name"], repo, "{w}");
    assert_eq!(w["event_data"]["quota"]["usage"], 6500, "{w}");
    assert_eq!(w["event_data"]["quota"]["limit"], 10_000, "{w}");
    assert_eq!(usage(&reg, "q").await, 7000);

    // Refused: 7000 + 4000 > 10000.
    let resp = push_post_put(&reg, repo, &random_bytes(4000)).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN, "push over the quota");
    let got = recv.wait_for(2, WAIT).await;
    let e = got[1].json();
    assert_eq!(e["type"], "QUOTA_EXCEED", "{e}");
    assert_eq!(e["project"], "q", "{e}");
    assert_eq!(e["event_data"]["repository"]["repo_full_name"], repo, "{e}");
    assert_eq!(
        e["event_data"]["quota"],
        json!({"usage": 7000, "requested": 4000, "limit": 10_000}),
        "{e}"
    );
    assert_eq!(usage(&reg, "q").await, 7000);

    // Down to 2000, then across the threshold again: a second warning.
    let resp = delete(&reg, &format!("/v2/{repo}/blobs/{}", sha256(&big))).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert_eq!(usage(&reg, "q").await, 2000);
    reg.push_blob(&admin(), repo, &random_bytes(5000)).await; // 70 %
    let got = recv.wait_for(3, WAIT).await;
    let w2 = got[2].json();
    assert_eq!(w2["type"], "QUOTA_WARNING", "{w2}");
    assert_eq!(w2["event_data"]["quota"]["usage"], 7000, "{w2}");
    recv.assert_stays_at(3, Duration::from_millis(300), "one event per change")
        .await;
    let log = settled(&reg, "q", id, 3, WAIT).await;
    let types: Vec<&str> = log
        .iter()
        .map(|d| d["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        vec!["QUOTA_WARNING", "QUOTA_EXCEED", "QUOTA_WARNING"],
        "newest first"
    );
}

// ---- filtering ------------------------------------------------------------------------------

/// An event reaches every enabled policy of its project subscribed to its type (each with its
/// own policy in the payload), and nothing else: not policies subscribed to other types, not
/// disabled ones, not those of other projects (also not of a project whose name extends this
/// one's). Enabling and disabling through PUT takes effect for the next event; a deleted
/// policy is gone.
#[tokio::test]
async fn events_reach_only_enabled_subscribed_policies_of_their_project() {
    let (_srv, reg) = setup(&[], &["lib", "other", "libx"]).await;
    let (ra, ra2, rb, rc, rd, rx) = (
        Receiver::start(Answer::Status(200)),
        Receiver::start(Answer::Status(204)),
        Receiver::start(Answer::Status(200)),
        Receiver::start(Answer::Status(200)),
        Receiver::start(Answer::Status(200)),
        Receiver::start(Answer::Status(200)),
    );
    let a = id_of(&add_hook(&reg, "lib", hook("a", &ra.url("/"), &["PUSH_ARTIFACT"])).await);
    let a2 = id_of(
        &add_hook(
            &reg,
            "lib",
            hook("a2", &ra2.url("/"), &["PUSH_ARTIFACT", "PULL_ARTIFACT"]),
        )
        .await,
    );
    let b = id_of(&add_hook(&reg, "lib", hook("b", &rb.url("/"), &["PULL_ARTIFACT"])).await);
    let mut cbody = hook("c", &rc.url("/"), &["PUSH_ARTIFACT"]);
    cbody["enabled"] = json!(false);
    let c_policy = add_hook(&reg, "lib", cbody).await;
    assert_eq!(c_policy["enabled"], false, "{c_policy}");
    let c = id_of(&c_policy);
    let d = id_of(&add_hook(&reg, "other", hook("d", &rd.url("/"), &["PUSH_ARTIFACT"])).await);
    let x = id_of(&add_hook(&reg, "libx", hook("x", &rx.url("/"), &["PUSH_ARTIFACT"])).await);

    reg.push_image(&admin(), "lib/app", "v1").await;
    let got_a = ra.wait_for(1, WAIT).await;
    let got_a2 = ra2.wait_for(1, WAIT).await;
    assert_eq!(got_a[0].json()["policy"], json!({"id": a, "name": "a"}));
    assert_eq!(got_a2[0].json()["policy"], json!({"id": a2, "name": "a2"}));
    assert_eq!(
        got_a[0].json()["event_data"],
        got_a2[0].json()["event_data"]
    );
    // A 204 counts as delivered.
    let log = settled(&reg, "lib", a2, 1, WAIT).await;
    assert_eq!(log[0]["status"], "delivered", "{log:?}");
    assert_eq!(codes(&log[0]), vec![Some(204)]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (r, what) in [
        (&rb, "other event type"),
        (&rc, "disabled"),
        (&rd, "other project"),
        (&rx, "libx"),
    ] {
        assert_eq!(r.count(), 0, "{what}: got a delivery");
    }
    for (proj, id) in [("lib", b), ("lib", c), ("other", d), ("libx", x)] {
        assert!(
            deliveries(&reg, proj, id).await.is_empty(),
            "policy {id} of {proj} has deliveries"
        );
    }
    // The other projects' pushes reach their own policies only.
    reg.push_image(&admin(), "libx/app", "v1").await;
    let got_x = rx.wait_for(1, WAIT).await;
    assert_eq!(got_x[0].json()["project"], "libx");
    ra.assert_stays_at(1, Duration::from_millis(300), "libx push")
        .await;

    // Enable c, disable a.
    let v = put_hook(&reg, "lib", c, hook("c", &rc.url("/"), &["PUSH_ARTIFACT"])).await;
    assert_eq!(v["enabled"], true, "{v}");
    let mut off = hook("a", &ra.url("/"), &["PUSH_ARTIFACT"]);
    off["enabled"] = json!(false);
    let v = put_hook(&reg, "lib", a, off).await;
    assert_eq!(v["enabled"], false, "{v}");
    let got = reg
        .api_ok(
            Method::GET,
            &format!("/api/v1/projects/lib/webhooks/{a}"),
            &admin(),
            None,
            200,
        )
        .await;
    assert_eq!(got["enabled"], false, "{got}");
    reg.push_image(&admin(), "lib/app", "v2").await;
    let got_c = rc.wait_for(1, WAIT).await;
    assert_eq!(got_c[0].json()["event_data"]["resources"][0]["tag"], "v2");
    ra2.wait_for(2, WAIT).await;
    ra.assert_stays_at(1, Duration::from_millis(500), "disabled policy")
        .await;

    // Deleted: gone from the API and from deliveries.
    let (s, _) = reg
        .api(
            Method::DELETE,
            &format!("/api/v1/projects/lib/webhooks/{a2}"),
            &admin(),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    reg.push_image(&admin(), "lib/app", "v3").await;
    rc.wait_for(2, WAIT).await;
    ra2.assert_stays_at(2, Duration::from_millis(500), "deleted policy")
        .await;
    rd.assert_stays_at(0, Duration::from_millis(0), "other project")
        .await;
}

// ---- management API ---------------------------------------------------------------------------

/// Validation (URL, events, name, unknown fields), sorting and deduplication of events,
/// reserved event types, name conflicts, unknown projects and ids, cross-project isolation,
/// and who may manage webhooks (system and project administrators only).
#[tokio::test]
async fn webhook_api_validates_and_checks_permissions() {
    let (_srv, reg) = setup(&[], &["lib", "other"]).await;
    let path = "/api/v1/projects/lib/webhooks";
    let url = "http://127.0.0.1:9/hook";

    // Created: events sorted and deduplicated; reserved types accepted; enabled by default.
    let p = add_hook(
        &reg,
        "lib",
        hook(
            "main",
            url,
            &[
                "PUSH_ARTIFACT",
                "DELETE_ARTIFACT",
                "PUSH_ARTIFACT",
                "SCANNING_COMPLETED",
            ],
        ),
    )
    .await;
    assert_eq!(
        p["events"],
        json!(["DELETE_ARTIFACT", "PUSH_ARTIFACT", "SCANNING_COMPLETED"]),
        "{p}"
    );
    assert_eq!(p["enabled"], true, "{p}");
    assert_eq!(p["has_secret"], false, "{p}");
    let id = id_of(&p);
    for reserved in [
        "SCANNING_FAILED",
        "REPLICATION",
        "QUOTA_WARNING",
        "TAG_RETENTION",
    ] {
        add_hook(
            &reg,
            "lib",
            hook(&format!("r-{reserved}"), url, &[reserved]),
        )
        .await;
    }
    let (s, b) = reg
        .api(
            Method::POST,
            path,
            &admin(),
            Some(json!({"name": "https", "url": "https://hooks.example.com/x", "events": ["PULL_ARTIFACT"], "secret": "x"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "https URL: {b}");
    assert_eq!(b["has_secret"], true, "{b}");

    // 400s.
    let bad: Vec<(&str, Value)> = vec![
        (
            "ftp URL",
            hook("bad", "ftp://example.com/x", &["PUSH_ARTIFACT"]),
        ),
        (
            "no scheme",
            hook("bad", "example.com/x", &["PUSH_ARTIFACT"]),
        ),
        ("no host", hook("bad", "http://", &["PUSH_ARTIFACT"])),
        ("not a URL", hook("bad", "not a url", &["PUSH_ARTIFACT"])),
        ("empty events", hook("bad", url, &[])),
        (
            "unknown event",
            hook("bad", url, &["PUSH_ARTIFACT", "NOPE"]),
        ),
        ("lowercase event", hook("bad", url, &["push_artifact"])),
        ("empty name", hook("", url, &["PUSH_ARTIFACT"])),
        (
            "unknown field",
            json!({"name": "bad", "url": url, "events": ["PUSH_ARTIFACT"], "color": "red"}),
        ),
        (
            "missing url",
            json!({"name": "bad", "events": ["PUSH_ARTIFACT"]}),
        ),
    ];
    for (what, body) in bad {
        let (s, b) = reg.api(Method::POST, path, &admin(), Some(body)).await;
        assert_error(s, &b, 400, "INVALID", what);
    }
    let resp = reg
        .req(Method::POST, path, &admin())
        .header("Content-Type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "malformed JSON");

    // 409: duplicate name (create and rename).
    let (s, b) = reg
        .api(
            Method::POST,
            path,
            &admin(),
            Some(hook("main", url, &["PULL_ARTIFACT"])),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    let second = id_of(&add_hook(&reg, "lib", hook("second", url, &["PULL_ARTIFACT"])).await);
    let (s, b) = reg
        .api(
            Method::PUT,
            &format!("{path}/{second}"),
            &admin(),
            Some(hook("main", url, &["PULL_ARTIFACT"])),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "rename onto an existing name: {b}");
    // The same name in another project is fine.
    add_hook(&reg, "other", hook("main", url, &["PULL_ARTIFACT"])).await;

    // 404: unknown project, unknown id, another project's id.
    let (s, b) = reg
        .api(
            Method::POST,
            "/api/v1/projects/nope/webhooks",
            &admin(),
            Some(hook("x", url, &["PUSH_ARTIFACT"])),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "unknown project: {b}");
    for (m, p) in [
        (Method::GET, format!("{path}/999999")),
        (Method::DELETE, format!("{path}/999999")),
        (Method::GET, format!("{path}/999999/deliveries")),
        (Method::GET, format!("/api/v1/projects/other/webhooks/{id}")),
        (
            Method::DELETE,
            format!("/api/v1/projects/other/webhooks/{id}"),
        ),
        (
            Method::GET,
            format!("/api/v1/projects/other/webhooks/{id}/deliveries"),
        ),
    ] {
        let (s, b) = reg.api(m.clone(), &p, &admin(), None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{m} {p}: {b}");
    }
    let (s, b) = reg
        .api(
            Method::PUT,
            &format!("/api/v1/projects/other/webhooks/{id}"),
            &admin(),
            Some(hook("hijack", url, &["PUSH_ARTIFACT"])),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "PUT through another project: {b}");
    let still = reg
        .api_ok(Method::GET, &format!("{path}/{id}"), &admin(), None, 200)
        .await;
    assert_eq!(still["project"], "lib", "{still}");
    assert_eq!(
        still["events"], p["events"],
        "unchanged by the refused PUT: {still}"
    );

    // PUT replaces everything but an omitted secret; validation applies.
    let v = put_hook(
        &reg,
        "lib",
        id,
        hook(
            "renamed",
            "https://h.example.com/",
            &["TAG_RETENTION", "PULL_ARTIFACT"],
        ),
    )
    .await;
    assert_eq!(v["id"], id, "{v}");
    assert_eq!(v["name"], "renamed", "{v}");
    assert_eq!(v["url"], "https://h.example.com/", "{v}");
    assert_eq!(
        v["events"],
        json!(["PULL_ARTIFACT", "TAG_RETENTION"]),
        "{v}"
    );
    assert_eq!(v["created_at"], p["created_at"], "{v}");
    let (s, b) = reg
        .api(
            Method::PUT,
            &format!("{path}/{id}"),
            &admin(),
            Some(hook("renamed", url, &[])),
        )
        .await;
    assert_error(s, &b, 400, "INVALID", "PUT with empty events");
    let (s, b) = reg
        .api(
            Method::PUT,
            &format!("{path}/999999"),
            &admin(),
            Some(hook("zz", url, &["PUSH_ARTIFACT"])),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "PUT unknown id: {b}");

    // Who may manage webhooks.
    for (user, role) in [
        ("padmin", "project_admin"),
        ("maint", "maintainer"),
        ("dev", "developer"),
        ("guest", "guest"),
    ] {
        reg.create_user(user, "pass-word-123").await;
        reg.set_member(&admin(), "lib", user, role).await;
    }
    reg.create_user("stranger", "pass-word-123").await;
    let padmin = Cred::basic("padmin", "pass-word-123");
    let made = reg
        .api_ok(
            Method::POST,
            path,
            &padmin,
            Some(hook("by-padmin", url, &["PUSH_ARTIFACT"])),
            201,
        )
        .await;
    let list = reg.api_ok(Method::GET, path, &padmin, None, 200).await;
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|w| w["id"] == made["id"]),
        "{list}"
    );
    reg.api_ok(
        Method::GET,
        &format!("{path}/{id}/deliveries"),
        &padmin,
        None,
        200,
    )
    .await;
    reg.api_ok(
        Method::DELETE,
        &format!("{path}/{}", id_of(&made)),
        &padmin,
        None,
        204,
    )
    .await;
    // The project admin of lib is nobody in other.
    let (s, b) = reg
        .api(
            Method::GET,
            "/api/v1/projects/other/webhooks",
            &padmin,
            None,
        )
        .await;
    assert!(
        s == StatusCode::FORBIDDEN || s == StatusCode::NOT_FOUND,
        "{s} {b}"
    );

    for user in ["maint", "dev", "guest"] {
        let cred = Cred::basic(user, "pass-word-123");
        let (s, b) = reg.api(Method::GET, path, &cred, None).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{user} lists webhooks: {b}");
        let (s, b) = reg
            .api(
                Method::POST,
                path,
                &cred,
                Some(hook(&format!("by-{user}"), url, &["PUSH_ARTIFACT"])),
            )
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{user} creates a webhook: {b}");
        for (m, p, body) in [
            (Method::GET, format!("{path}/{id}"), None),
            (
                Method::PUT,
                format!("{path}/{id}"),
                Some(hook("hijack", url, &["PUSH_ARTIFACT"])),
            ),
            (Method::DELETE, format!("{path}/{id}"), None),
            (Method::GET, format!("{path}/{id}/deliveries"), None),
        ] {
            let (s, b) = reg.api(m.clone(), &p, &cred, body).await;
            assert_eq!(s, StatusCode::FORBIDDEN, "{user}: {m} {p}: {b}");
        }
    }
    let stranger = Cred::basic("stranger", "pass-word-123");
    let (s, b) = reg.api(Method::GET, path, &stranger, None).await;
    assert!(
        s == StatusCode::FORBIDDEN || s == StatusCode::NOT_FOUND,
        "non-member of a private project: {s} {b}"
    );
    let (s, b) = reg
        .api(
            Method::POST,
            path,
            &stranger,
            Some(hook("x", url, &["PUSH_ARTIFACT"])),
        )
        .await;
    assert!(
        s == StatusCode::FORBIDDEN || s == StatusCode::NOT_FOUND,
        "{s} {b}"
    );
    // Anonymous callers: like the other project-scoped management endpoints (quota,
    // retention, members), a private project is not revealed (404) — 401 would do too; a
    // public project's webhooks are refused.
    for (m, body) in [
        (Method::GET, None),
        (Method::POST, Some(hook("anon", url, &["PUSH_ARTIFACT"]))),
    ] {
        let (s, b) = reg.api(m.clone(), path, &Cred::Anonymous, body).await;
        assert!(
            s == StatusCode::UNAUTHORIZED || s == StatusCode::NOT_FOUND,
            "anonymous {m} on a private project: {s} {b}"
        );
    }
    reg.create_project(&admin(), "pub", true).await;
    let (s, b) = reg
        .api(
            Method::GET,
            "/api/v1/projects/pub/webhooks",
            &Cred::Anonymous,
            None,
        )
        .await;
    assert!(
        s == StatusCode::UNAUTHORIZED || s == StatusCode::FORBIDDEN,
        "anonymous on a public project: {s} {b}"
    );
    let (s, b) = reg
        .api(Method::GET, path, &Cred::basic("admin", "wrong"), None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "wrong password: {b}");
    // Nothing the refused callers tried took effect.
    let after = reg
        .api_ok(Method::GET, &format!("{path}/{id}"), &admin(), None, 200)
        .await;
    assert_eq!(after["name"], "renamed", "{after}");

    // DELETE, then it is gone.
    reg.api_ok(Method::DELETE, &format!("{path}/{id}"), &admin(), None, 204)
        .await;
    let (s, _) = reg
        .api(Method::GET, &format!("{path}/{id}"), &admin(), None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = reg
        .api(Method::DELETE, &format!("{path}/{id}"), &admin(), None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let list = reg.api_ok(Method::GET, path, &admin(), None, 200).await;
    assert!(
        list.as_array().unwrap().iter().all(|w| w["id"] != id),
        "{list}"
    );
}

/// A PUT naming a webhook id the project does not have is 404, whatever name the body
/// carries: the id is checked before the name (here the name is taken in that project,
/// and the id belongs to another project or to nobody). Nothing changes either way.
#[tokio::test]
async fn put_of_an_unknown_webhook_is_404_even_when_its_name_is_taken() {
    let (_srv, reg) = setup(&[], &["lib", "other"]).await;
    let url = "http://127.0.0.1:9/hook";
    let in_lib = id_of(&add_hook(&reg, "lib", hook("main", url, &["PUSH_ARTIFACT"])).await);
    add_hook(&reg, "other", hook("main", url, &["PULL_ARTIFACT"])).await;
    for p in [
        format!("/api/v1/projects/other/webhooks/{in_lib}"),
        "/api/v1/projects/other/webhooks/999999".to_string(),
    ] {
        let (s, b) = reg
            .api(
                Method::PUT,
                &p,
                &admin(),
                Some(hook("main", url, &["TAG_RETENTION"])),
            )
            .await;
        assert_eq!(
            s,
            StatusCode::NOT_FOUND,
            "PUT {p} (no such webhook there): {b}"
        );
    }
    let lib = reg
        .api_ok(
            Method::GET,
            &format!("/api/v1/projects/lib/webhooks/{in_lib}"),
            &admin(),
            None,
            200,
        )
        .await;
    assert_eq!(lib["events"], json!(["PUSH_ARTIFACT"]), "{lib}");
    let other = reg
        .api_ok(
            Method::GET,
            "/api/v1/projects/other/webhooks",
            &admin(),
            None,
            200,
        )
        .await;
    assert_eq!(other[0]["events"], json!(["PULL_ARTIFACT"]), "{other}");
}

/// `--webhooks-enabled false`: the webhook API answers 404 and pushes work.
#[tokio::test]
async fn webhooks_can_be_turned_off() {
    let (_srv, reg) = setup(&["--webhooks-enabled", "false"], &["lib"]).await;
    let recv = Receiver::start(Answer::Status(200));
    let path = "/api/v1/projects/lib/webhooks";
    let (s, b) = reg
        .api(
            Method::POST,
            path,
            &admin(),
            Some(hook("x", &recv.url("/"), &["PUSH_ARTIFACT"])),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "create with webhooks off: {b}");
    let (s, b) = reg.api(Method::GET, path, &admin(), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "list with webhooks off: {b}");
    reg.push_image(&admin(), "lib/app", "v1").await;
    recv.assert_stays_at(0, Duration::from_millis(300), "webhooks off")
        .await;
}

// ---- delivery log -------------------------------------------------------------------------------

/// The delivery log lists newest first and pages with `n` and `last` (a Link header names the
/// next page while a page is full); bad parameters are refused.
#[tokio::test]
async fn delivery_log_is_paginated_newest_first() {
    let (_srv, reg) = setup(&[], &["lib"]).await;
    let recv = Receiver::start(Answer::Status(200));
    let id = id_of(&add_hook(&reg, "lib", hook("log", &recv.url("/"), &["PUSH_ARTIFACT"])).await);
    for i in 0..5 {
        reg.push_image(&admin(), "lib/app", &format!("t{i}")).await;
        // One event at a time, so delivery ids follow push order.
        recv.wait_for(i + 1, WAIT).await;
    }
    let all = settled(&reg, "lib", id, 5, WAIT).await;
    assert_eq!(all.len(), 5);
    let tags: Vec<String> = all
        .iter()
        .map(|d| {
            d["payload"]["event_data"]["resources"][0]["tag"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(tags, vec!["t4", "t3", "t2", "t1", "t0"], "newest first");
    let ids: Vec<i64> = all.iter().map(|d| d["id"].as_i64().unwrap()).collect();
    assert!(
        ids.windows(2).all(|w| w[0] > w[1]),
        "ids not descending: {ids:?}"
    );

    // Follow the Link headers with n=2.
    let mut next = Some(format!("/api/v1/projects/lib/webhooks/{id}/deliveries?n=2"));
    let mut pages: Vec<Vec<i64>> = Vec::new();
    while let Some(p) = next.take() {
        assert!(pages.len() < 10, "pagination does not end");
        let resp = reg.send(Method::GET, &p, &admin()).await;
        assert_eq!(resp.status(), StatusCode::OK, "{p}");
        next = resp.headers().get("link").map(|l| {
            let l = l.to_str().unwrap();
            assert!(l.contains("rel=\"next\""), "{l}");
            l.split_once('<')
                .and_then(|(_, r)| r.split_once('>'))
                .map(|(u, _)| u.to_string())
                .unwrap_or_else(|| panic!("malformed Link: {l}"))
        });
        let v: Value = resp.json().await.unwrap();
        pages.push(
            v.as_array()
                .unwrap()
                .iter()
                .map(|d| d["id"].as_i64().unwrap())
                .collect(),
        );
    }
    assert_eq!(
        pages,
        vec![ids[0..2].to_vec(), ids[2..4].to_vec(), ids[4..5].to_vec()],
        "pages of 2 (the last page is short and has no Link)"
    );

    // `last` alone, n larger than what is left.
    let v = reg
        .api_ok(
            Method::GET,
            &format!(
                "/api/v1/projects/lib/webhooks/{id}/deliveries?last={}&n=10",
                ids[1]
            ),
            &admin(),
            None,
            200,
        )
        .await;
    let got: Vec<i64> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_i64().unwrap())
        .collect();
    assert_eq!(got, ids[2..].to_vec());
    let v = reg
        .api_ok(
            Method::GET,
            &format!(
                "/api/v1/projects/lib/webhooks/{id}/deliveries?last={}",
                ids[4]
            ),
            &admin(),
            None,
            200,
        )
        .await;
    assert_eq!(v, json!([]), "nothing older than the oldest");
    let v = reg
        .api_ok(
            Method::GET,
            &format!("/api/v1/projects/lib/webhooks/{id}/deliveries?n=0"),
            &admin(),
            None,
            200,
        )
        .await;
    assert_eq!(v, json!([]), "n=0");
    for q in ["n=abc", "n=-1", "last=abc"] {
        let (s, b) = reg
            .api(
                Method::GET,
                &format!("/api/v1/projects/lib/webhooks/{id}/deliveries?{q}"),
                &admin(),
                None,
            )
            .await;
        assert_error(s, &b, 400, "INVALID", q);
    }
}
