//! Observability, black-box: the Prometheus endpoint (`/metrics`) checked by `promtool` and
//! scraped by a real Prometheus server, HTTP and registry counters that match the traffic the
//! test made exactly, the scrape-time gauges (storage per project, open uploads, database
//! pools, the process), GC counters, the separate metrics listener and the switch that turns
//! metrics off, `/healthz` and `/readyz`, request ids in responses and JSON logs, and two
//! robustness properties of the HTTP metrics: the in-flight gauge returns to zero when clients
//! go away mid-request (also when the server abandons a request that was waiting), and clients
//! cannot create series at will through the `method` label.
//!
//! Needs Prometheus 2.x on PATH (`prometheus` and `promtool`, Debian package `prometheus`;
//! the test setup installs it). The tests fail, not skip, when it is missing.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::api::{
    OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, client, describe, descriptor, encode_query,
    image_manifest, random_bytes, random_config, random_hex, sha256, with_query,
};
use common::auth::{Cred, Reg, read_json, start_local};
use common::{Backends, KuraServer};
use reqwest::{Client, Method, Response, StatusCode};
use serde_json::{Value, json};

const MANIFEST_ROUTE: &str = "/v2/{name}/manifests/{reference}";
const BLOB_ROUTE: &str = "/v2/{name}/blobs/{digest}";
const UPLOAD_START_ROUTE: &str = "/v2/{name}/blobs/uploads/";
const UPLOAD_ROUTE: &str = "/v2/{name}/blobs/uploads/{id}";

// ---- the Prometheus text format ---------------------------------------------------------------

/// One sample line of the exposition.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed `/metrics` body.
struct Metrics {
    text: String,
    samples: Vec<Sample>,
}

fn parse_value(s: &str) -> f64 {
    match s {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        _ => s
            .parse()
            .unwrap_or_else(|e| panic!("sample value {s:?} is not a number: {e}")),
    }
}

/// Parses one sample line: `name{k="v",...} value [timestamp]`.
fn parse_sample(line: &str) -> Sample {
    let chars: Vec<char> = line.chars().collect();
    let mut i = 0;
    while i < chars.len() && chars[i] != '{' && !chars[i].is_whitespace() {
        i += 1;
    }
    let name: String = chars[..i].iter().collect();
    assert!(!name.is_empty(), "sample line without a name: {line:?}");
    let mut labels = BTreeMap::new();
    if i < chars.len() && chars[i] == '{' {
        i += 1;
        loop {
            while i < chars.len() && chars[i] == ' ' {
                i += 1;
            }
            assert!(i < chars.len(), "unterminated label set: {line:?}");
            if chars[i] == '}' {
                i += 1;
                break;
            }
            let start = i;
            while i < chars.len() && chars[i] != '=' {
                i += 1;
            }
            let key: String = chars[start..i]
                .iter()
                .collect::<String>()
                .trim()
                .to_string();
            i += 1;
            assert!(
                i < chars.len() && chars[i] == '"',
                "label {key} without a quoted value: {line:?}"
            );
            i += 1;
            let mut value = String::new();
            loop {
                assert!(i < chars.len(), "unterminated label value: {line:?}");
                match chars[i] {
                    '\\' => {
                        i += 1;
                        match chars.get(i) {
                            Some('n') => value.push('\n'),
                            Some('\\') => value.push('\\'),
                            Some('"') => value.push('"'),
                            other => panic!("bad escape {other:?} in {line:?}"),
                        }
                    }
                    '"' => break,
                    c => value.push(c),
                }
                i += 1;
            }
            i += 1;
            labels.insert(key, value);
            while i < chars.len() && chars[i] == ' ' {
                i += 1;
            }
            if i < chars.len() && chars[i] == ',' {
                i += 1;
            }
        }
    }
    let rest: String = chars[i..].iter().collect();
    let value = rest
        .split_whitespace()
        .next()
        .unwrap_or_else(|| panic!("sample line without a value: {line:?}"));
    Sample {
        name,
        labels,
        value: parse_value(value),
    }
}

impl Metrics {
    fn parse(text: &str) -> Metrics {
        let samples = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(parse_sample)
            .collect();
        Metrics {
            text: text.to_string(),
            samples,
        }
    }

    fn series(&self, name: &str) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.name == name).collect()
    }

    /// The lines of the exposition that mention `name` (for failure messages).
    fn lines_of(&self, name: &str) -> String {
        self.text
            .lines()
            .filter(|l| l.contains(name))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The value of the series of `name` whose label set is exactly `labels`.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let found: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| s.name == name && s.labels == want)
            .collect();
        assert!(
            found.len() <= 1,
            "series {name}{want:?} appears {} times:\n{}",
            found.len(),
            self.lines_of(name)
        );
        found.first().map(|s| s.value)
    }

    /// Like [`Metrics::get`], but the series must exist.
    fn must(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or_else(|| {
            panic!(
                "no series {name}{labels:?} in /metrics; lines of {name}:\n{}",
                self.lines_of(name)
            )
        })
    }

    /// Like [`Metrics::get`], with a missing series read as 0 (a counter never incremented).
    fn or_zero(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }
}

async fn scrape(http: &Client, url: &str) -> Metrics {
    let resp = http
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap_or("").to_string())
        .unwrap_or_default();
    let text = resp.text().await.expect("metrics body");
    assert_eq!(status, StatusCode::OK, "GET {url}: {text}");
    assert!(
        ct.starts_with("text/plain") && ct.contains("version=0.0.4"),
        "GET {url}: Content-Type {ct:?} is not the Prometheus text format"
    );
    Metrics::parse(&text)
}

// ---- external programs --------------------------------------------------------------------------

/// Path of a program that must be installed (the Prometheus tools).
fn require_bin(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "`{name}` is not on PATH: the metrics tests need Prometheus 2.x (`prometheus` and \
         `promtool`, Debian package `prometheus`, installed by the test setup)"
    );
}

/// Runs `cmd` with `input` on stdin; kills it and fails after `timeout`.
fn run_with_timeout(mut cmd: Command, input: &[u8], timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = writer.join();
    Output {
        status,
        stdout: out_t.join().unwrap(),
        stderr: err_t.join().unwrap(),
    }
}

/// `promtool check metrics` must accept the body without a single lint message.
fn promtool_check(body: &str) {
    let mut cmd = Command::new(require_bin("promtool"));
    cmd.args(["check", "metrics"]);
    let out = run_with_timeout(cmd, body.as_bytes(), Duration::from_secs(30));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.trim().is_empty() && stderr.trim().is_empty(),
        "promtool check metrics: {}\nstdout:\n{stdout}\nstderr:\n{stderr}\n--- /metrics ---\n{body}",
        out.status
    );
}

/// A free loopback port (bound, read, released).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

// ---- a kura process whose stdout and stderr the test reads --------------------------------------

/// `kura serve` started by this file (not the shared harness) because some tests need the
/// `metrics listening on ADDR` line of stdout or the log lines of stderr, which the harness
/// does not hand out. Same flags as the harness: loopback, port 0, fresh backends.
struct Spawned {
    child: Child,
    addr: String,
    /// From `metrics listening on ADDR`, when printed.
    metrics_addr: Option<String>,
    stderr: Arc<Mutex<Vec<String>>>,
    _tmp: tempfile::TempDir,
}

impl Spawned {
    fn start(args: &[&str], envs: &[(&str, &str)], want_metrics_line: bool) -> Spawned {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data_dir = tmp.path().join("data");
        std::fs::create_dir_all(&data_dir).expect("data dir");
        let backend_args = Backends::from_env().args_for(&data_dir);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kura"));
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(&data_dir)
            .args(&backend_args)
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("KURA_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .env_remove("KURA_LOG_FORMAT")
            .env_remove("KURA_METRICS_ENABLED")
            .env_remove("KURA_METRICS_LISTEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn kura serve");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<(bool, String)>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let line = line.trim().to_string();
                if let Some(a) = line.strip_prefix("metrics listening on ") {
                    let _ = tx.send((true, a.to_string()));
                } else if let Some(a) = line.strip_prefix("listening on ") {
                    let _ = tx.send((false, a.to_string()));
                }
            }
        });
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let (mut addr, mut metrics_addr) = (None, None);
        while addr.is_none() || (want_metrics_line && metrics_addr.is_none()) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok((true, a)) => metrics_addr = Some(a),
                Ok((false, a)) => addr = Some(a),
                Err(_) => {
                    let exited = child.try_wait().ok().flatten();
                    if exited.is_some() || left.is_zero() {
                        let _ = child.kill();
                        let _ = child.wait();
                        let log = lines.lock().unwrap().join("\n");
                        panic!(
                            "kura serve {args:?} did not report its address(es) (main {addr:?}, \
                             metrics {metrics_addr:?}, exited {exited:?}); stderr:\n{log}"
                        );
                    }
                }
            }
        }
        // The metrics line, when there is one, comes before the main one; pick up a late one.
        if let Ok((true, a)) = rx.recv_timeout(Duration::from_millis(100)) {
            metrics_addr = Some(a);
        }
        Spawned {
            child,
            addr: addr.unwrap(),
            metrics_addr,
            stderr: lines,
            _tmp: tmp,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    fn metrics_url(&self) -> String {
        format!(
            "http://{}/metrics",
            self.metrics_addr.as_ref().expect("a metrics listener")
        )
    }

    fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- traffic with a tally of what the server should have counted --------------------------------

/// What the test did, per route template: requests by (route, method, status), request body
/// bytes sent and response body bytes received.
#[derive(Default)]
struct Tally {
    requests: BTreeMap<(String, String, u16), u64>,
    received: BTreeMap<String, u64>,
    sent: BTreeMap<String, u64>,
}

/// A client for one server that keeps a [`Tally`].
struct Traffic {
    http: Client,
    base: String,
    tally: Tally,
}

/// A finished request: status, headers and the whole body.
struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn location(&self) -> String {
        self.headers
            .get("location")
            .unwrap_or_else(|| panic!("no Location on {}: {:?}", self.status, self.headers))
            .to_str()
            .unwrap()
            .to_string()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Traffic {
    fn new(base: &str) -> Traffic {
        Traffic {
            http: client(),
            base: base.to_string(),
            tally: Tally::default(),
        }
    }

    fn url(&self, path_or_url: &str) -> String {
        if path_or_url.starts_with("http://") || path_or_url.starts_with("https://") {
            path_or_url.to_string()
        } else {
            format!("{}{}", self.base, path_or_url)
        }
    }

    /// Sends a request, reads the whole response and records it under `route`.
    async fn send(
        &mut self,
        route: &str,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Answer {
        let mut rb = self
            .http
            .request(method.clone(), self.url(path))
            .body(body.to_vec());
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        let resp = rb
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.expect("response body").to_vec();
        *self
            .tally
            .requests
            .entry((route.to_string(), method.to_string(), status.as_u16()))
            .or_default() += 1;
        *self.tally.received.entry(route.to_string()).or_default() += body.len() as u64;
        *self.tally.sent.entry(route.to_string()).or_default() += bytes.len() as u64;
        Answer {
            status,
            headers,
            body: bytes,
        }
    }

    async fn expect(
        &mut self,
        want: StatusCode,
        route: &str,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Answer {
        let a = self.send(route, method.clone(), path, headers, body).await;
        assert_eq!(a.status, want, "{method} {path}: {}", a.text());
        a
    }

    async fn start_upload(&mut self, repo: &str) -> String {
        self.expect(
            StatusCode::ACCEPTED,
            UPLOAD_START_ROUTE,
            Method::POST,
            &format!("/v2/{repo}/blobs/uploads/"),
            &[],
            b"",
        )
        .await
        .location()
    }

    /// POST, then PUT with the whole blob.
    async fn push_monolithic(&mut self, repo: &str, data: &[u8]) {
        let loc = self.start_upload(repo).await;
        self.expect(
            StatusCode::CREATED,
            UPLOAD_ROUTE,
            Method::PUT,
            &with_query(&loc, "digest", &sha256(data)),
            &[("content-type", "application/octet-stream")],
            data,
        )
        .await;
    }

    /// One POST with `?digest=` and the body.
    async fn push_single_post(&mut self, repo: &str, data: &[u8]) {
        self.expect(
            StatusCode::CREATED,
            UPLOAD_START_ROUTE,
            Method::POST,
            &with_query(
                &format!("/v2/{repo}/blobs/uploads/"),
                "digest",
                &sha256(data),
            ),
            &[("content-type", "application/octet-stream")],
            data,
        )
        .await;
    }

    /// POST, one PATCH per chunk (with Content-Range), then a PUT without a body.
    async fn push_chunked(&mut self, repo: &str, chunks: &[&[u8]]) {
        let mut loc = self.start_upload(repo).await;
        let mut off = 0usize;
        let mut all = Vec::new();
        for c in chunks {
            let range = format!("{}-{}", off, off + c.len() - 1);
            let a = self
                .expect(
                    StatusCode::ACCEPTED,
                    UPLOAD_ROUTE,
                    Method::PATCH,
                    &loc,
                    &[
                        ("content-type", "application/octet-stream"),
                        ("content-range", &range),
                    ],
                    c,
                )
                .await;
            loc = a.location();
            off += c.len();
            all.extend_from_slice(c);
        }
        self.expect(
            StatusCode::CREATED,
            UPLOAD_ROUTE,
            Method::PUT,
            &with_query(&loc, "digest", &sha256(&all)),
            &[("content-type", "application/octet-stream")],
            b"",
        )
        .await;
    }

    async fn put_manifest(&mut self, repo: &str, reference: &str, body: &[u8]) {
        self.expect(
            StatusCode::CREATED,
            MANIFEST_ROUTE,
            Method::PUT,
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("content-type", OCI_MANIFEST)],
            body,
        )
        .await;
    }
}

/// Every count of `tally` is in `m`, exactly; and for the routes of the tally, the server
/// counted no (method, status) the test did not make.
fn assert_tally(m: &Metrics, tally: &Tally) {
    for ((route, method, status), n) in &tally.requests {
        let got = m.must(
            "kura_http_requests_total",
            &[
                ("route", route),
                ("method", method),
                ("status", &status.to_string()),
            ],
        );
        assert_eq!(
            got,
            *n as f64,
            "kura_http_requests_total{{route={route:?},method={method},status={status}}}: \
             the test made {n} such requests; lines:\n{}",
            m.lines_of("kura_http_requests_total")
        );
    }
    let routes: BTreeSet<&String> = tally.requests.keys().map(|(r, _, _)| r).collect();
    for route in &routes {
        let want: BTreeSet<(String, String)> = tally
            .requests
            .keys()
            .filter(|(r, _, _)| r == *route)
            .map(|(_, m, s)| (m.clone(), s.to_string()))
            .collect();
        let got: BTreeSet<(String, String)> = m
            .series("kura_http_requests_total")
            .iter()
            .filter(|s| s.labels.get("route") == Some(*route))
            .map(|s| (s.labels["method"].clone(), s.labels["status"].clone()))
            .collect();
        assert_eq!(
            got,
            want,
            "route {route}: (method, status) series differ from the requests made; lines:\n{}",
            m.lines_of("kura_http_requests_total")
        );
        // The latency histogram has one observation per request, in well-formed buckets.
        let methods: BTreeSet<&String> = tally
            .requests
            .keys()
            .filter(|(r, _, _)| r == *route)
            .map(|(_, m, _)| m)
            .collect();
        for method in methods {
            let n: u64 = tally
                .requests
                .iter()
                .filter(|((r, mm, _), _)| r == *route && mm == method)
                .map(|(_, n)| *n)
                .sum();
            let lbl = [("route", route.as_str()), ("method", method.as_str())];
            let count = m.must("kura_http_request_duration_seconds_count", &lbl);
            assert_eq!(count, n as f64, "histogram count for {route} {method}");
            let sum = m.must("kura_http_request_duration_seconds_sum", &lbl);
            assert!(sum >= 0.0 && sum < 60.0 * n as f64, "histogram sum {sum}");
            let mut buckets: Vec<(f64, f64)> = m
                .series("kura_http_request_duration_seconds_bucket")
                .iter()
                .filter(|s| {
                    s.labels.get("route") == Some(*route) && s.labels.get("method") == Some(method)
                })
                .map(|s| (parse_value(&s.labels["le"]), s.value))
                .collect();
            buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
            assert!(
                buckets.last().map(|b| b.0) == Some(f64::INFINITY),
                "no +Inf bucket for {route} {method}: {buckets:?}"
            );
            assert_eq!(buckets.last().unwrap().1, count, "+Inf bucket != count");
            assert!(
                buckets.windows(2).all(|w| w[0].1 <= w[1].1),
                "buckets are not cumulative for {route} {method}: {buckets:?}"
            );
        }
    }
    for (route, n) in &tally.received {
        let got = m.must("kura_http_received_bytes_total", &[("route", route)]);
        assert_eq!(
            got, *n as f64,
            "kura_http_received_bytes_total{{route={route:?}}}: the test sent {n} body bytes"
        );
    }
    for (route, n) in &tally.sent {
        let got = m.must("kura_http_sent_bytes_total", &[("route", route)]);
        assert_eq!(
            got, *n as f64,
            "kura_http_sent_bytes_total{{route={route:?}}}: the test received {n} body bytes"
        );
    }
}

fn proc_fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

// ---- 1. promtool and exact counters -------------------------------------------------------------

/// After a push (monolithic, single-POST and chunked blob uploads, two manifest PUTs), pulls,
/// a manifest 404 and an unmatched path: `promtool check metrics` accepts the exposition with
/// no lint message, and every HTTP counter equals what the test did (requests by route
/// template, method and status; latency observations; body bytes both ways), as do the
/// registry counters and gauges.
#[tokio::test]
async fn promtool_accepts_the_exposition_and_counters_match_the_traffic() {
    let spawned_at = unix_now();
    let srv = KuraServer::start();
    let mut t = Traffic::new(&srv.base_url);
    let repo = "mtr/app";

    let config = random_config();
    let layer_mono = random_bytes(3000);
    let layer_post = random_bytes(1234);
    let (chunk1, chunk2) = (random_bytes(2048), random_bytes(1000));
    let layer_chunked: Vec<u8> = [chunk1.clone(), chunk2.clone()].concat();
    t.push_monolithic(repo, &config).await;
    t.push_monolithic(repo, &layer_mono).await;
    t.push_single_post(repo, &layer_post).await;
    t.push_chunked(repo, &[&chunk1, &chunk2]).await;
    let blob_bytes =
        (config.len() + layer_mono.len() + layer_post.len() + layer_chunked.len()) as u64;

    let manifest = image_manifest(
        &descriptor(OCI_CONFIG, &config),
        &[
            descriptor(OCI_LAYER, &layer_mono),
            descriptor(OCI_LAYER, &layer_post),
            descriptor(OCI_LAYER, &layer_chunked),
        ],
        None,
    );
    let mdigest = sha256(&manifest);
    t.put_manifest(repo, "v1", &manifest).await;
    t.put_manifest(repo, "v2", &manifest).await;

    let accept = [("accept", OCI_MANIFEST)];
    let a = t
        .expect(
            StatusCode::OK,
            MANIFEST_ROUTE,
            Method::GET,
            &format!("/v2/{repo}/manifests/v1"),
            &accept,
            b"",
        )
        .await;
    assert_eq!(a.body, manifest);
    t.expect(
        StatusCode::OK,
        MANIFEST_ROUTE,
        Method::GET,
        &format!("/v2/{repo}/manifests/{mdigest}"),
        &accept,
        b"",
    )
    .await;
    t.expect(
        StatusCode::OK,
        MANIFEST_ROUTE,
        Method::HEAD,
        &format!("/v2/{repo}/manifests/v1"),
        &accept,
        b"",
    )
    .await;
    t.expect(
        StatusCode::NOT_FOUND,
        MANIFEST_ROUTE,
        Method::GET,
        &format!("/v2/{repo}/manifests/no-such-tag"),
        &accept,
        b"",
    )
    .await;
    // A blob pull; the status depends on the backend (a redirect to S3 or the bytes).
    let a = t
        .send(
            BLOB_ROUTE,
            Method::GET,
            &format!("/v2/{repo}/blobs/{}", sha256(&layer_mono)),
            &[],
            b"",
        )
        .await;
    assert!(
        a.status == StatusCode::OK || a.status.is_redirection(),
        "blob GET: {}",
        a.status
    );
    t.expect(
        StatusCode::NOT_FOUND,
        "unmatched",
        Method::GET,
        "/no/such/route",
        &[],
        b"",
    )
    .await;
    t.expect(
        StatusCode::OK,
        "/healthz",
        Method::GET,
        "/healthz",
        &[],
        b"",
    )
    .await;

    let m = scrape(&t.http, &srv.url("/metrics")).await;
    promtool_check(&m.text);
    assert_tally(&m, &t.tally);
    // The checks above are only as strong as the tally: spell out the headline numbers.
    assert_eq!(
        m.must(
            "kura_http_requests_total",
            &[
                ("route", MANIFEST_ROUTE),
                ("method", "PUT"),
                ("status", "201")
            ]
        ),
        2.0
    );
    assert_eq!(
        m.must("kura_http_received_bytes_total", &[("route", UPLOAD_ROUTE)]),
        (config.len() + layer_mono.len() + layer_chunked.len()) as f64,
        "PATCH and PUT bodies of the uploads"
    );

    // Registry counters.
    assert_eq!(
        m.must("kura_blob_pushed_bytes_total", &[]),
        blob_bytes as f64,
        "kura_blob_pushed_bytes_total: four distinct blobs of {blob_bytes} bytes were pushed"
    );
    assert_eq!(
        m.must("kura_registry_events_total", &[("event", "blob_pushed")]),
        4.0
    );
    assert_eq!(
        m.must(
            "kura_registry_events_total",
            &[("event", "manifest_pushed")]
        ),
        2.0,
        "two manifest PUTs"
    );
    let pulled = m.must(
        "kura_registry_events_total",
        &[("event", "manifest_pulled")],
    );
    assert!(
        (2.0..=3.0).contains(&pulled),
        "manifest_pulled {pulled}: two GETs and one HEAD were made"
    );

    // Grouped SQLite commits: four blob commits and two manifest PUTs, made one after the
    // other, so each was a group of one. PostgreSQL does not group.
    let backend = std::env::var("KURA_TEST_BACKEND").unwrap_or_else(|_| "sqlite+fs".into());
    if backend.starts_with("sqlite") {
        assert_eq!(m.must("kura_db_grouped_writes_total", &[]), 6.0);
        assert_eq!(m.must("kura_db_commit_groups_total", &[]), 6.0);
    } else {
        assert_eq!(m.get("kura_db_commit_groups_total", &[]), None);
    }

    // Scrape-time gauges.
    assert_eq!(m.must("kura_uploads_in_progress", &[]), 0.0);
    assert_eq!(
        m.must("kura_project_storage_bytes", &[("project", "mtr")]),
        blob_bytes as f64
    );
    let in_flight = m.must("kura_http_requests_in_flight", &[]);
    assert!(
        (0.0..=1.0).contains(&in_flight),
        "only the scrape itself can be in flight: {in_flight}"
    );
    let pools: BTreeSet<String> = m
        .series("kura_db_pool_max_connections")
        .iter()
        .map(|s| s.labels["pool"].clone())
        .collect();
    assert!(!pools.is_empty(), "no kura_db_pool_max_connections series");
    for pool in &pools {
        let max = m.must("kura_db_pool_max_connections", &[("pool", pool)]);
        let idle = m.must(
            "kura_db_pool_connections",
            &[("pool", pool), ("state", "idle")],
        );
        let busy = m.must(
            "kura_db_pool_connections",
            &[("pool", pool), ("state", "in_use")],
        );
        assert!(max >= 1.0, "pool {pool}: max {max}");
        assert!(
            idle >= 0.0 && busy >= 0.0 && idle + busy <= max,
            "pool {pool}: idle {idle} + in use {busy} > max {max}"
        );
    }

    // Process gauges agree with /proc.
    let rss = m.must("process_resident_memory_bytes", &[]);
    let proc_rss = (srv.rss_kib() * 1024) as f64;
    assert!(
        rss > proc_rss / 2.0 && rss < proc_rss * 2.0,
        "process_resident_memory_bytes {rss} vs VmRSS {proc_rss}"
    );
    let fds = m.must("process_open_fds", &[]);
    let proc_fds = proc_fd_count(srv.pid()) as f64;
    assert!(
        fds >= 3.0 && (fds - proc_fds).abs() <= 16.0,
        "process_open_fds {fds} vs /proc/<pid>/fd {proc_fds}"
    );
    let start = m.must("process_start_time_seconds", &[]);
    let now = unix_now();
    assert!(
        start >= spawned_at - 5.0 && start <= now + 5.0,
        "process_start_time_seconds {start}: the process was started at {spawned_at} (now {now})"
    );
}

// ---- 2. a real Prometheus server ------------------------------------------------------------------

/// A Prometheus server started by the test; killed on drop.
struct Prometheus {
    child: Child,
    base: String,
    log: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: &str) -> Prometheus {
        let bin = require_bin("prometheus");
        let tmp = tempfile::tempdir().expect("tempdir");
        let config = tmp.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: kura\n    metrics_path: /metrics\n    \
                 static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("write prometheus.yml");
        let tsdb = tmp.path().join("tsdb");
        let log = tmp.path().join("prometheus.log");
        let logf = std::fs::File::create(&log).expect("log file");
        let port = free_port();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", tsdb.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::from(logf.try_clone().unwrap()))
            .stderr(Stdio::from(logf))
            .spawn()
            .expect("spawn prometheus");
        Prometheus {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
            _tmp: tmp,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn wait_ready(&mut self, http: &Client) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!(
                    "prometheus exited ({st}) before it was ready:\n{}",
                    self.log()
                );
            }
            if let Ok(r) = http.get(format!("{}/-/ready", self.base)).send().await
                && r.status() == StatusCode::OK
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready within 20 s:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `GET /api/v1/query`; returns `data.result`.
    async fn query(&self, http: &Client, q: &str) -> Vec<Value> {
        let url = format!("{}/api/v1/query?query={}", self.base, encode_query(q));
        let resp = http
            .get(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let (status, v) = read_json(resp).await;
        assert_eq!(status, StatusCode::OK, "query {q}: {v}");
        assert_eq!(v["status"], "success", "query {q}: {v}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sample_value(series: &Value) -> f64 {
    series["value"][1]
        .as_str()
        .map(parse_value)
        .unwrap_or_else(|| panic!("series without a value: {series}"))
}

/// A Prometheus 2.x server scrapes Kura every second: the target is up with no scrape error,
/// the request counter for the manifest PUT arrives with its route label and the value the
/// test caused, unlabelled counters and histogram quantiles are queryable.
#[tokio::test]
async fn a_real_prometheus_scrapes_kura() {
    let srv = KuraServer::start();
    let mut t = Traffic::new(&srv.base_url);
    let repo = "prom/app";
    let config = random_config();
    let layer = random_bytes(4321);
    t.push_monolithic(repo, &config).await;
    t.push_monolithic(repo, &layer).await;
    let manifest = image_manifest(
        &descriptor(OCI_CONFIG, &config),
        &[descriptor(OCI_LAYER, &layer)],
        None,
    );
    t.put_manifest(repo, "v1", &manifest).await;
    let pushed = (config.len() + layer.len()) as f64;

    let http = client();
    let mut prom = Prometheus::start(&srv.addr);
    prom.wait_ready(&http).await;

    let deadline = Instant::now() + Duration::from_secs(30);
    let manifest_puts = loop {
        let result = prom.query(&http, "kura_http_requests_total").await;
        let found = result.iter().find(|s| {
            s["metric"]["route"] == MANIFEST_ROUTE
                && s["metric"]["method"] == "PUT"
                && s["metric"]["status"] == "201"
        });
        if let Some(s) = found {
            assert!(
                result.iter().all(|s| s["metric"]["route"].is_string()),
                "series without a route label: {result:?}"
            );
            break sample_value(s);
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus has no manifest PUT series after 30 s: {result:?}\nprometheus log:\n{}",
            prom.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(manifest_puts, 1.0, "one manifest PUT was made");

    let up = prom.query(&http, "up{job=\"kura\"}").await;
    assert_eq!(up.len(), 1, "{up:?}");
    assert_eq!(sample_value(&up[0]), 1.0, "target down: {up:?}");

    let targets: Value = http
        .get(format!("{}/api/v1/targets", prom.base))
        .send()
        .await
        .expect("targets")
        .json()
        .await
        .expect("targets JSON");
    let active = targets["data"]["activeTargets"]
        .as_array()
        .unwrap_or_else(|| panic!("no activeTargets: {targets}"));
    assert_eq!(active.len(), 1, "{targets}");
    assert_eq!(active[0]["health"], "up", "{targets}");
    assert_eq!(active[0]["lastError"], "", "scrape error: {targets}");
    assert_eq!(
        active[0]["scrapeUrl"],
        format!("http://{}/metrics", srv.addr),
        "{targets}"
    );

    let bytes = prom.query(&http, "kura_blob_pushed_bytes_total").await;
    assert_eq!(bytes.len(), 1, "{bytes:?}");
    assert_eq!(sample_value(&bytes[0]), pushed);

    let q = "histogram_quantile(0.5, sum by (le) (kura_http_request_duration_seconds_bucket))";
    let quantile = prom.query(&http, q).await;
    assert_eq!(quantile.len(), 1, "{q}: {quantile:?}");
    let v = sample_value(&quantile[0]);
    assert!(v.is_finite() && v >= 0.0, "{q} = {v}");

    // Scrape samples of the process metrics made it through too.
    let rss = prom.query(&http, "process_resident_memory_bytes").await;
    assert_eq!(rss.len(), 1, "{rss:?}");
    assert!(sample_value(&rss[0]) > 0.0);
}

// ---- 3. where /metrics is served ----------------------------------------------------------------

/// With `--metrics-listen`, the server prints `metrics listening on ADDR`, `/metrics` is
/// served there (counting the main listener's traffic, including its 404 for `/metrics`),
/// and the main listener has no `/metrics`; the metrics listener serves no registry API.
#[tokio::test]
async fn separate_metrics_listener_serves_metrics_and_main_listener_does_not() {
    let srv = Spawned::start(&["--metrics-listen", "127.0.0.1:0"], &[], true);
    let metrics_addr = srv.metrics_addr.clone().unwrap();
    assert_ne!(metrics_addr, srv.addr);
    let http = client();

    let resp = http.get(srv.url("/metrics")).send().await.unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::NOT_FOUND,
        "main listener must not serve /metrics: {}",
        describe(resp).await
    );
    let resp = http.get(srv.url("/healthz")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = http.get(srv.url("/v2/")).send().await.unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "the registry API still works"
    );

    let m = scrape(&http, &srv.metrics_url()).await;
    promtool_check(&m.text);
    assert_eq!(
        m.must(
            "kura_http_requests_total",
            &[("route", "unmatched"), ("method", "GET"), ("status", "404")]
        ),
        1.0,
        "the main listener's 404 for /metrics"
    );
    assert_eq!(
        m.must(
            "kura_http_requests_total",
            &[("route", "/healthz"), ("method", "GET"), ("status", "200")]
        ),
        1.0
    );
    assert_eq!(
        m.must("kura_http_requests_in_flight", &[]),
        0.0,
        "nothing is in flight on the main listener"
    );
    let resp = http
        .get(format!("http://{metrics_addr}/v2/"))
        .send()
        .await
        .unwrap();
    assert_ne!(
        resp.status(),
        StatusCode::OK,
        "the metrics listener must not serve the registry API"
    );
}

/// `--metrics-enabled false` (and `KURA_METRICS_ENABLED=false`) turns `/metrics` into a 404;
/// the rest of the server works; with a metrics listener configured as well, none is opened.
#[tokio::test]
async fn metrics_disabled_gives_404() {
    let http = client();
    for srv in [
        KuraServer::start_with(&["--metrics-enabled", "false"], &[]),
        KuraServer::start_with(&[], &[("KURA_METRICS_ENABLED", "false")]),
    ] {
        let resp = http.get(srv.url("/metrics")).send().await.unwrap();
        assert_eq!(
            resp.status(),
            StatusCode::NOT_FOUND,
            "{}",
            describe(resp).await
        );
        let resp = http.get(srv.url("/healthz")).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let resp = http.get(srv.url("/v2/")).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let srv = Spawned::start(
        &["--metrics-enabled", "false", "--metrics-listen", &listen],
        &[],
        false,
    );
    assert_eq!(
        srv.metrics_addr, None,
        "metrics are off: no metrics listener"
    );
    let resp = http.get(srv.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert!(
        http.get(format!("http://{listen}/metrics"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .is_err(),
        "nothing may listen on {listen} when metrics are off"
    );
}

// ---- 4. storage and upload gauges ---------------------------------------------------------------

/// `kura_project_storage_bytes` follows the distinct blobs of each project (open mode: the
/// project is the repository's first component) and drops when a blob is unlinked;
/// `kura_uploads_in_progress` counts open upload sessions, down again when they are cancelled
/// or completed.
#[tokio::test]
async fn project_storage_and_open_uploads_gauges() {
    let srv = KuraServer::start();
    let mut t = Traffic::new(&srv.base_url);
    let metrics_url = srv.url("/metrics");
    let project = |m: &Metrics, p: &str| m.get("kura_project_storage_bytes", &[("project", p)]);

    let m = scrape(&t.http, &metrics_url).await;
    assert_eq!(m.must("kura_uploads_in_progress", &[]), 0.0);
    assert_eq!(project(&m, "alpha"), None, "nothing pushed yet");

    let config = random_config();
    let layer = random_bytes(5000);
    let extra = random_bytes(700);
    let beta_blob = random_bytes(900);
    t.push_monolithic("alpha/app", &config).await;
    t.push_monolithic("alpha/app", &layer).await;
    let manifest = image_manifest(
        &descriptor(OCI_CONFIG, &config),
        &[descriptor(OCI_LAYER, &layer)],
        None,
    );
    t.put_manifest("alpha/app", "v1", &manifest).await;
    // The same layer in another repository of the project counts once.
    t.push_monolithic("alpha/team/other", &layer).await;
    t.push_monolithic("alpha/team/other", &extra).await;
    t.push_monolithic("beta/x", &beta_blob).await;

    let m = scrape(&t.http, &metrics_url).await;
    assert_eq!(
        project(&m, "alpha"),
        Some((config.len() + layer.len() + extra.len()) as f64),
        "alpha: distinct blobs; lines:\n{}",
        m.lines_of("kura_project_storage_bytes")
    );
    assert_eq!(project(&m, "beta"), Some(beta_blob.len() as f64));
    assert_eq!(m.must("kura_uploads_in_progress", &[]), 0.0);

    // Two open sessions: one empty, one with a chunk.
    let u1 = t.start_upload("gamma/z").await;
    let u2 = t.start_upload("gamma/z").await;
    let data = random_bytes(300);
    let a = t
        .expect(
            StatusCode::ACCEPTED,
            UPLOAD_ROUTE,
            Method::PATCH,
            &u2,
            &[
                ("content-type", "application/octet-stream"),
                ("content-range", "0-99"),
            ],
            &data[..100],
        )
        .await;
    let u2 = a.location();
    let m = scrape(&t.http, &metrics_url).await;
    assert_eq!(m.must("kura_uploads_in_progress", &[]), 2.0);
    assert_eq!(project(&m, "gamma"), None, "nothing committed in gamma yet");

    t.expect(
        StatusCode::NO_CONTENT,
        UPLOAD_ROUTE,
        Method::DELETE,
        &u1,
        &[],
        b"",
    )
    .await;
    let m = scrape(&t.http, &metrics_url).await;
    assert_eq!(m.must("kura_uploads_in_progress", &[]), 1.0, "u1 cancelled");

    t.expect(
        StatusCode::CREATED,
        UPLOAD_ROUTE,
        Method::PUT,
        &with_query(&u2, "digest", &sha256(&data)),
        &[
            ("content-type", "application/octet-stream"),
            ("content-range", "100-299"),
        ],
        &data[100..],
    )
    .await;
    let m = scrape(&t.http, &metrics_url).await;
    assert_eq!(m.must("kura_uploads_in_progress", &[]), 0.0, "u2 completed");
    assert_eq!(project(&m, "gamma"), Some(300.0));

    // Unlinking beta's only blob empties the project.
    t.expect(
        StatusCode::ACCEPTED,
        BLOB_ROUTE,
        Method::DELETE,
        &format!("/v2/beta/x/blobs/{}", sha256(&beta_blob)),
        &[],
        b"",
    )
    .await;
    let m = scrape(&t.http, &metrics_url).await;
    let beta = project(&m, "beta");
    assert!(
        beta.is_none() || beta == Some(0.0),
        "beta holds no blob any more, but kura_project_storage_bytes says {beta:?}"
    );
    assert_eq!(
        project(&m, "alpha"),
        Some((config.len() + layer.len() + extra.len()) as f64),
        "alpha is untouched"
    );
}

// ---- 5. health ----------------------------------------------------------------------------------

/// `/healthz` answers 200 `ok`; `/readyz` answers 200 with `ready: true` and a check per
/// backend, each `ok`. Both are counted under their own route.
#[tokio::test]
async fn healthz_and_readyz() {
    let srv = KuraServer::start();
    let http = client();
    let resp = http.get(srv.url("/healthz")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.text().await.unwrap(), "ok");

    let resp = http.get(srv.url("/readyz")).send().await.unwrap();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let (status, v) = read_json(resp).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert!(ct.starts_with("application/json"), "Content-Type {ct:?}");
    assert_eq!(v["ready"], true, "{v}");
    let checks = v["checks"]
        .as_object()
        .unwrap_or_else(|| panic!("no checks object: {v}"));
    assert!(!checks.is_empty(), "{v}");
    for (name, c) in checks {
        assert_eq!(c["status"], "ok", "check {name}: {v}");
    }

    let m = scrape(&http, &srv.url("/metrics")).await;
    for route in ["/healthz", "/readyz"] {
        assert_eq!(
            m.must(
                "kura_http_requests_total",
                &[("route", route), ("method", "GET"), ("status", "200")]
            ),
            1.0
        );
    }
}

// ---- 6. request ids and logs ----------------------------------------------------------------

/// The JSON log lines whose request span carries `id`.
fn json_lines_with_request_id(lines: &[String], id: &str) -> Vec<Value> {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| {
            v["span"]["request_id"] == id
                || v["spans"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|s| s["request_id"] == id))
        })
        .collect()
}

/// `line` without ANSI escape sequences (`ESC [ ... letter`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Waits (bounded) until a stderr line satisfies `f`.
async fn wait_for_log(srv: &Spawned, what: &str, f: impl Fn(&[String]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f(&srv.stderr_lines()) {
        assert!(
            Instant::now() < deadline,
            "no log line {what} within 10 s; stderr:\n{}",
            srv.stderr_lines().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// With `--log-format json` (or `KURA_LOG_FORMAT=json`) every stderr line is a JSON object,
/// a client's `x-request-id` comes back on the response and is the `request_id` of the
/// request's span in the log; without one the server makes an id, returns it and logs it.
/// The default format is human-readable and carries the id too.
#[tokio::test]
async fn json_logs_carry_the_request_id() {
    let http = client();
    let json_a = Spawned::start(&["--log-format", "json"], &[("RUST_LOG", "debug")], false);
    let json_b = Spawned::start(
        &[],
        &[("RUST_LOG", "debug"), ("KURA_LOG_FORMAT", "json")],
        false,
    );
    for srv in [&json_a, &json_b] {
        let id = format!("metrics-test-{}", random_hex(8));
        let resp = http
            .get(srv.url("/v2/logs/app/manifests/missing"))
            .header("x-request-id", &id)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            resp.headers()
                .get("x-request-id")
                .map(|v| v.to_str().unwrap()),
            Some(id.as_str()),
            "the client's request id comes back"
        );
        wait_for_log(srv, &format!("with request_id {id}"), |lines| {
            !json_lines_with_request_id(lines, &id).is_empty()
        })
        .await;

        // Without a request id, the server makes one and logs it.
        let resp = http.get(srv.url("/healthz")).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let made = resp
            .headers()
            .get("x-request-id")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        assert!(
            made.len() >= 8 && made != "-",
            "generated x-request-id {made:?}"
        );
        wait_for_log(srv, &format!("with generated request_id {made}"), |lines| {
            !json_lines_with_request_id(lines, &made).is_empty()
        })
        .await;

        let lines = srv.stderr_lines();
        assert!(!lines.is_empty());
        for l in &lines {
            let v: Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("stderr line is not JSON ({e}): {l}"));
            assert!(v.is_object() && v["level"].is_string(), "{l}");
        }
    }

    // The default: human-readable lines, with the request id in the span.
    let text = Spawned::start(&[], &[("RUST_LOG", "debug")], false);
    let id = format!("metrics-test-{}", random_hex(8));
    let resp = http
        .get(text.url("/healthz"))
        .header("x-request-id", &id)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    wait_for_log(&text, &format!("mentioning {id}"), |lines| {
        lines.iter().any(|l| l.contains(&id))
    })
    .await;
    // Colour codes, if any, are not part of what is checked here.
    let lines: Vec<String> = text.stderr_lines().iter().map(|l| strip_ansi(l)).collect();
    let with_id: Vec<&String> = lines.iter().filter(|l| l.contains(&id)).collect();
    for l in &with_id {
        assert!(
            serde_json::from_str::<Value>(l).is_err(),
            "the default format is not JSON: {l}"
        );
    }
    assert!(
        with_id
            .iter()
            .any(|l| l.contains(&format!("request_id={id}"))),
        "no line with request_id={id}: {with_id:?}"
    );
}

// ---- 7. GC counters ----------------------------------------------------------------------------

async fn run_gc(reg: &Reg, dry_run: bool) -> Value {
    let body = json!({
        "grace_seconds": 0,
        "deleted_manifest_retention_seconds": 0,
        "dry_run": dry_run,
        "wait": true,
    });
    let run = reg
        .api_ok(
            Method::POST,
            "/api/v1/system/gc",
            &Cred::admin(),
            Some(body),
            200,
        )
        .await;
    assert_eq!(run["status"], "succeeded", "{run}");
    run
}

fn result_u64(run: &Value, key: &str) -> u64 {
    run["result"][key]
        .as_u64()
        .unwrap_or_else(|| panic!("run without result.{key}: {run}"))
}

async fn project_usage(reg: &Reg, project: &str) -> u64 {
    let s = reg
        .api_ok(
            Method::GET,
            &format!("/api/v1/projects/{project}/storage"),
            &Cred::admin(),
            None,
            200,
        )
        .await;
    s["usage_bytes"]
        .as_u64()
        .unwrap_or_else(|| panic!("no usage_bytes: {s}"))
}

/// GC runs are counted by mode; what a real run deletes is added to the deleted-blob, byte
/// and manifest counters (a dry run adds nothing); the last-run timestamp is set; the project
/// gauge drops by what GC freed. `/metrics` needs no credentials in local mode.
#[tokio::test]
async fn gc_runs_are_counted() {
    let srv = start_local(&[]);
    let reg = Reg::new(&srv);
    let admin = Cred::admin();
    reg.create_project(&admin, "gcm", false).await;
    let http = client();
    let metrics_url = srv.url("/metrics");

    // v1 stays; v2 is deleted (its config and layer go with it); a lone blob goes.
    let (c1, l1) = (random_config(), random_bytes(1500));
    let (c2, l2) = (random_config(), random_bytes(2500));
    let lone = random_bytes(777);
    for b in [&c1, &l1, &c2, &l2, &lone] {
        reg.push_blob(&admin, "gcm/app", b).await;
    }
    let m1 = image_manifest(
        &descriptor(OCI_CONFIG, &c1),
        &[descriptor(OCI_LAYER, &l1)],
        None,
    );
    let m2 = image_manifest(
        &descriptor(OCI_CONFIG, &c2),
        &[descriptor(OCI_LAYER, &l2)],
        None,
    );
    for (tag, m) in [("v1", &m1), ("v2", &m2)] {
        let resp = reg.put_manifest(&admin, "gcm/app", tag, m).await;
        assert_eq!(
            resp.status(),
            StatusCode::CREATED,
            "{}",
            describe(resp).await
        );
    }
    let resp: Response = reg
        .send(
            Method::DELETE,
            &format!("/v2/gcm/app/manifests/{}", sha256(&m2)),
            &admin,
        )
        .await;
    assert_eq!(
        resp.status(),
        StatusCode::ACCEPTED,
        "{}",
        describe(resp).await
    );
    tokio::time::sleep(Duration::from_millis(100)).await;

    let all = (c1.len() + l1.len() + c2.len() + l2.len() + lone.len()) as f64;
    let m = scrape(&http, &metrics_url).await;
    assert_eq!(
        m.must("kura_project_storage_bytes", &[("project", "gcm")]),
        all
    );
    assert_eq!(m.or_zero("kura_gc_runs_total", &[("mode", "real")]), 0.0);

    let dry = run_gc(&reg, true).await;
    assert_eq!(result_u64(&dry, "blobs_deleted"), 3, "{dry}");
    let m = scrape(&http, &metrics_url).await;
    assert_eq!(m.must("kura_gc_runs_total", &[("mode", "dry_run")]), 1.0);
    assert_eq!(m.or_zero("kura_gc_runs_total", &[("mode", "real")]), 0.0);
    assert_eq!(
        m.or_zero("kura_gc_deleted_blobs_total", &[]),
        0.0,
        "a dry run deletes nothing"
    );
    assert_eq!(m.or_zero("kura_gc_deleted_bytes_total", &[]), 0.0);
    assert_eq!(
        m.must("kura_project_storage_bytes", &[("project", "gcm")]),
        all
    );

    let before = unix_now();
    let real = run_gc(&reg, false).await;
    let after = unix_now();
    let freed = (c2.len() + l2.len() + lone.len()) as u64;
    assert_eq!(result_u64(&real, "blobs_deleted"), 3, "{real}");
    assert_eq!(result_u64(&real, "bytes_deleted"), freed, "{real}");
    let m = scrape(&http, &metrics_url).await;
    promtool_check(&m.text);
    assert_eq!(m.must("kura_gc_runs_total", &[("mode", "real")]), 1.0);
    assert_eq!(m.must("kura_gc_runs_total", &[("mode", "dry_run")]), 1.0);
    assert_eq!(
        m.must("kura_gc_deleted_blobs_total", &[]),
        (result_u64(&real, "blobs_deleted") + result_u64(&real, "orphans_deleted")) as f64,
        "{real}"
    );
    assert_eq!(
        m.must("kura_gc_deleted_bytes_total", &[]),
        (freed + result_u64(&real, "orphan_bytes_deleted")) as f64,
        "{real}"
    );
    assert_eq!(
        m.must("kura_gc_deleted_manifests_total", &[]),
        result_u64(&real, "manifests_deleted") as f64,
        "{real}"
    );
    let last = m.must("kura_gc_last_run_timestamp_seconds", &[]);
    assert!(
        last >= before - 1.0 && last <= after + 1.0,
        "kura_gc_last_run_timestamp_seconds {last} not within [{before}, {after}]"
    );
    assert_eq!(
        m.must(
            "kura_registry_events_total",
            &[("event", "garbage_collected")]
        ),
        2.0
    );
    let kept = (c1.len() + l1.len()) as f64;
    assert_eq!(
        m.must("kura_project_storage_bytes", &[("project", "gcm")]),
        kept,
        "after GC only v1's blobs are stored"
    );
    assert_eq!(project_usage(&reg, "gcm").await as f64, kept);
}

// ---- 8. robustness of the HTTP metrics ----------------------------------------------------------

/// A client that sends half a request body and hangs up must not leave
/// `kura_http_requests_in_flight` raised.
#[tokio::test]
async fn in_flight_gauge_returns_to_zero_after_a_client_disconnects() {
    use tokio::io::AsyncWriteExt;
    let srv = Spawned::start(&["--metrics-listen", "127.0.0.1:0"], &[], true);
    let mut t = Traffic::new(&format!("http://{}", srv.addr));
    let path = path_of_location(&t.start_upload("inflight/app").await);
    wait_in_flight(&t.http, &srv, 0.0, "idle").await.unwrap();

    // A PATCH announcing 1 MB and sending 100 bytes.
    let mut conn = tokio::net::TcpStream::connect(&srv.addr).await.unwrap();
    conn.write_all(patch_head(&srv.addr, &path, 1_000_000).as_bytes())
        .await
        .unwrap();
    conn.write_all(&random_bytes(100)).await.unwrap();
    wait_in_flight(&t.http, &srv, 1.0, "the hanging PATCH")
        .await
        .unwrap();
    drop(conn);
    wait_in_flight(&t.http, &srv, 0.0, "the only client in flight disconnected")
        .await
        .unwrap();
    let resp = t.http.get(srv.url("/healthz")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "the server still serves");
}

/// Raw HTTP/1.1 request head for a PATCH announcing `len` body bytes.
fn patch_head(addr: &str, path: &str, len: usize) -> String {
    format!(
        "PATCH {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {len}\r\n\r\n"
    )
}

/// The path of an upload Location (relative or absolute).
fn path_of_location(loc: &str) -> String {
    if loc.starts_with("http") {
        loc.splitn(4, '/').nth(3).map(|p| format!("/{p}")).unwrap()
    } else {
        loc.to_string()
    }
}

/// Polls the metrics listener until `kura_http_requests_in_flight` is `want` (bounded).
async fn wait_in_flight(http: &Client, srv: &Spawned, want: f64, what: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = scrape(http, &srv.metrics_url()).await;
        let v = m.must("kura_http_requests_in_flight", &[]);
        if v == want {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{what}: kura_http_requests_in_flight is {v} after 10 s, expected {want}; \
                 requests counted so far:\n{}",
                m.lines_of("kura_http_requests_total")
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A request that waits inside the server (a second PATCH to an upload another, slow PATCH is
/// writing) and whose client then hangs up is abandoned by the server; the in-flight gauge
/// must come back down all the same once nothing is being served any more.
#[tokio::test]
async fn in_flight_gauge_returns_to_zero_when_a_waiting_request_is_abandoned() {
    use tokio::io::AsyncWriteExt;
    let srv = Spawned::start(&["--metrics-listen", "127.0.0.1:0"], &[], true);
    let mut t = Traffic::new(&format!("http://{}", srv.addr));
    let path = path_of_location(&t.start_upload("inflight/app").await);
    wait_in_flight(&t.http, &srv, 0.0, "idle").await.unwrap();

    // A: a slow PATCH (1 MB announced, 100 bytes sent), left hanging.
    let mut a = tokio::net::TcpStream::connect(&srv.addr).await.unwrap();
    a.write_all(patch_head(&srv.addr, &path, 1_000_000).as_bytes())
        .await
        .unwrap();
    a.write_all(&random_bytes(100)).await.unwrap();
    wait_in_flight(&t.http, &srv, 1.0, "slow PATCH A")
        .await
        .unwrap();

    // B: a complete PATCH to the same upload, which waits for A.
    let mut b = tokio::net::TcpStream::connect(&srv.addr).await.unwrap();
    b.write_all(patch_head(&srv.addr, &path, 10).as_bytes())
        .await
        .unwrap();
    b.write_all(&random_bytes(10)).await.unwrap();
    let b_waits = wait_in_flight(&t.http, &srv, 2.0, "PATCH B waiting behind A").await;
    let mut buf = [0u8; 64];
    let b_answered = matches!(b.try_read(&mut buf), Ok(n) if n > 0);
    assert!(
        b_waits.is_ok() || b_answered,
        "B neither waits nor was answered: {b_waits:?}"
    );

    // B's client gives up, then A's.
    drop(b);
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(a);

    // Nothing is stuck: the upload takes a new request at once.
    let resp = t
        .http
        .patch(t.url(&path))
        .header("content-type", "application/octet-stream")
        .body(random_bytes(10))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("a new PATCH to the upload is answered within 10 s");
    let _ = resp.bytes().await;

    wait_in_flight(
        &t.http,
        &srv,
        0.0,
        "every client got its answer or hung up; nothing is being served",
    )
    .await
    .unwrap();
}

/// The `method` label takes its values from a bounded set: clients (anonymous ones included)
/// sending made-up HTTP methods must not create a new series per method, the way route
/// templates, not paths, keep the `route` label bounded.
#[tokio::test]
async fn clients_cannot_create_series_through_the_method_label() {
    let srv = KuraServer::start();
    let http = client();
    let made_up: Vec<String> = (0..40)
        .map(|i| format!("KURAX{i}{}", random_hex(3).to_uppercase()))
        .collect();
    for m in &made_up {
        let method = Method::from_bytes(m.as_bytes()).unwrap();
        let resp = http
            .request(method, srv.url("/healthz"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{m} /healthz: {e}"));
        assert!(
            resp.status().is_client_error(),
            "{m} /healthz: {}",
            resp.status()
        );
    }
    let m = scrape(&http, &srv.url("/metrics")).await;
    let methods: BTreeSet<String> = m
        .series("kura_http_requests_total")
        .iter()
        .chain(m.series("kura_http_request_duration_seconds_count").iter())
        .map(|s| s.labels["method"].clone())
        .collect();
    let leaked: Vec<&String> = made_up.iter().filter(|x| methods.contains(*x)).collect();
    assert!(
        leaked.is_empty() && methods.len() <= 10,
        "{} made-up methods became label values ({} distinct methods in all): {:?}\nlines:\n{}",
        leaked.len(),
        methods.len(),
        leaked.iter().take(5).collect::<Vec<_>>(),
        m.lines_of("kura_http_requests_total")
            .lines()
            .take(8)
            .collect::<Vec<_>>()
            .join("\n")
    );
}
