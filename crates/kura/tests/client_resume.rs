//! `kura push` resuming a blob upload after the network breaks mid-PATCH, over real sockets.
//!
//! The client streams each blob as one PATCH; when the connection drops it asks the registry
//! how many bytes the upload session holds (`GET` on the session → `Range: 0-N`) and sends the
//! rest in a new PATCH (a bounded number of attempts), then closes the session with
//! `PUT ?digest=`. Whether the registry keeps the bytes of the broken PATCH (resume from N) or
//! throws them away (resume from 0), the blob must end up complete and correct.
//!
//! Each test starts a real `kura serve` (open auth mode) and, in front of it, a small TCP proxy
//! on 127.0.0.1 (a thread per connection, a bounded number of connections) that forwards bytes
//! both ways and, once a connection has carried more than [`CUT_AFTER`] bytes from the client to
//! the server, shuts both of its sockets down: a network cut in the middle of the big layer's
//! PATCH. The push goes through the proxy with the real `kura` binary, as a user runs it (the
//! address is loopback, so the client falls back to plain HTTP after trying HTTPS); everything
//! is then checked directly against the server.
//!
//! - `push_resumes_after_a_connection_is_cut_mid_upload`: only the first connection passing the
//!   threshold is cut; the push must succeed, the manifest and the blob stored on the server
//!   must be the layout's byte for byte, and the client must say (at `RUST_LOG=warn`) that the
//!   upload was interrupted and resumed.
//! - `push_gives_up_when_every_attempt_is_cut`: every connection passing the threshold is cut;
//!   the push must fail with exit code 5 (connection error) after its bounded attempts, in
//!   bounded time, and the tag must not exist on the server.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::KuraServer;
use common::auth::{Cred, Reg};
use common::cli::{Cli, oci};
use common::oci_layout::{Image, MEDIA_TYPE_OCI_MANIFEST, OciLayout, sha256_digest};
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// Client→server bytes after which the proxy cuts a connection.
const CUT_AFTER: u64 = 2 << 20;
/// File content of the one big layer (the gzip'd tar is a little larger).
const LAYER_CONTENT: usize = 16 << 20;
/// Most connections the proxy accepts over its life (a push needs a handful).
const MAX_CONNECTIONS: usize = 64;
/// Upper bound for one `kura push` (each test must stay under 30 s).
const PUSH_TIMEOUT: Duration = Duration::from_secs(25);

// ---------------------------------------------------------------------------------------------
// The cutting proxy
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CutMode {
    /// Cut only the first connection that passes the threshold; later ones pass untouched.
    FirstOnly,
    /// Cut every connection that passes the threshold.
    Every,
}

struct Shared {
    upstream: String,
    threshold: u64,
    mode: CutMode,
    /// Set once a connection was cut (for [`CutMode::FirstOnly`]).
    cut_done: AtomicBool,
    /// Connections cut so far.
    cuts: AtomicUsize,
    /// Connections accepted so far.
    connections: AtomicUsize,
    /// Client→server bytes forwarded, over all connections.
    forwarded: AtomicU64,
    stop: AtomicBool,
}

impl Shared {
    /// Whether a connection that just passed the threshold is to be cut (and counts the cut).
    fn take_cut(&self) -> bool {
        let cut = match self.mode {
            CutMode::Every => true,
            CutMode::FirstOnly => !self.cut_done.swap(true, Ordering::SeqCst),
        };
        if cut {
            self.cuts.fetch_add(1, Ordering::SeqCst);
        }
        cut
    }
}

/// A TCP proxy on 127.0.0.1 in front of `upstream` that cuts connections (see module docs).
struct CutProxy {
    /// `127.0.0.1:PORT`
    addr: String,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl CutProxy {
    fn start(upstream: &str, threshold: u64, mode: CutMode) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr").to_string();
        let shared = Arc::new(Shared {
            upstream: upstream.to_string(),
            threshold,
            mode,
            cut_done: AtomicBool::new(false),
            cuts: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            forwarded: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        let accept = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = conn else { continue };
                if s.connections.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                    // Bounded: refuse (close) anything beyond the limit.
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&s.upstream) else {
                    drop(client);
                    continue;
                };
                let s = s.clone();
                std::thread::spawn(move || relay(client, server, &s));
            }
        });
        CutProxy {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    fn cuts(&self) -> usize {
        self.shared.cuts.load(Ordering::SeqCst)
    }

    fn describe(&self) -> String {
        format!(
            "proxy: {} connections, {} cut, {} bytes client→server",
            self.shared.connections.load(Ordering::SeqCst),
            self.cuts(),
            self.shared.forwarded.load(Ordering::SeqCst)
        )
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(&self.addr);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

/// Forwards one connection both ways until either side closes, or cuts it.
fn relay(client: TcpStream, server: TcpStream, shared: &Shared) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (Ok(client_w), Ok(server_r)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    // server → client, untouched.
    let back = std::thread::spawn(move || {
        let (mut from, mut to) = (server_r, client_w);
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
    // client → server, counted; cut once past the threshold.
    let (mut from, mut to) = (client, server);
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0u64;
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => {
                let _ = to.shutdown(Shutdown::Write);
                break;
            }
            Ok(n) => {
                total += n as u64;
                if total > shared.threshold && shared.take_cut() {
                    // The network goes away: neither side gets another byte.
                    let _ = from.shutdown(Shutdown::Both);
                    let _ = to.shutdown(Shutdown::Both);
                    break;
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
                shared.forwarded.fetch_add(n as u64, Ordering::SeqCst);
            }
        }
    }
    let _ = back.join();
    // Every handle of both sockets is closed here (unread data makes the kernel reset them).
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A layout at `root` holding one image with a single big layer (16 MiB of seeded random file
/// content), tagged `tag`.
fn big_layout(root: &Path, tag: &str, seed: u64) -> Image {
    let mut layout = OciLayout::create(root);
    let image = layout.add_image(seed, "amd64", "linux", &[LAYER_CONTENT]);
    layout.tag(tag, &image.manifest);
    image
}

/// Runs `kura ARGS...` as `cli`, killing it if it takes longer than `timeout`.
fn run_bounded(cli: &Cli, args: &[&str], timeout: Duration) -> (Output, Duration) {
    let started = Instant::now();
    let mut child = cli
        .cmd(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kura");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for kura") {
            break status;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = err_reader.join().unwrap_or_default();
            panic!(
                "kura {} did not finish within {timeout:?}\nstderr: {}",
                args.join(" "),
                text(&stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let elapsed = started.elapsed();
    let output = Output {
        status,
        stdout: out_reader.join().expect("stdout reader"),
        stderr: err_reader.join().expect("stderr reader"),
    };
    (output, elapsed)
}

/// `GET` of a manifest straight from the server: (status, Docker-Content-Digest, body).
async fn server_manifest(
    reg: &Reg,
    repo: &str,
    reference: &str,
) -> (StatusCode, Option<String>, Vec<u8>) {
    let resp = reg
        .req(
            Method::GET,
            &format!("/v2/{repo}/manifests/{reference}"),
            &Cred::Anonymous,
        )
        .header(
            "accept",
            "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json",
        )
        .send()
        .await
        .expect("GET manifest");
    let status = resp.status();
    let digest = resp
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = resp.bytes().await.expect("manifest body").to_vec();
    (status, digest, body)
}

/// `GET` of a blob straight from the server: (status, body).
async fn server_blob(reg: &Reg, repo: &str, digest: &str) -> (StatusCode, Vec<u8>) {
    let resp = reg
        .send(
            Method::GET,
            &format!("/v2/{repo}/blobs/{digest}"),
            &Cred::Anonymous,
        )
        .await;
    let status = resp.status();
    let body = resp.bytes().await.expect("blob body").to_vec();
    (status, body)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn push_resumes_after_a_connection_is_cut_mid_upload() {
    let srv = KuraServer::start();
    let reg = Reg::new(&srv);
    let proxy = CutProxy::start(&srv.addr, CUT_AFTER, CutMode::FirstOnly);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("src");
    let image = big_layout(&dir, "t", 41);
    let layer = image.layers[0].clone();
    assert!(
        layer.size > 4 * CUT_AFTER,
        "the layer must be well past the cut point"
    );

    let cli = Cli::new();
    let dest = format!("{}/proj/app:t", proxy.addr);
    let (out, elapsed) = run_bounded(
        &cli,
        &["push", &oci(&dir, "t"), &dest, "--format", "json"],
        PUSH_TIMEOUT,
    );
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert!(
        out.status.success(),
        "push through the cutting proxy failed ({:?}, after {elapsed:?}; {})\nstdout: {stdout}\nstderr: {stderr}",
        out.status.code(),
        proxy.describe()
    );

    // The network really broke once, in the middle of an upload.
    assert_eq!(
        proxy.cuts(),
        1,
        "exactly one connection cut ({})",
        proxy.describe()
    );

    // The report names the layout's manifest.
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("push report is not JSON ({e}): {stdout}"));
    assert_eq!(
        report["digest"].as_str(),
        Some(image.manifest.digest.as_str()),
        "{report}"
    );

    // The manifest, fetched directly from the server, is the layout's byte for byte.
    let (status, digest, body) = server_manifest(&reg, "proj/app", "t").await;
    assert_eq!(status, StatusCode::OK, "GET manifest: {}", text(&body));
    assert_eq!(digest.as_deref(), Some(image.manifest.digest.as_str()));
    assert_eq!(sha256_digest(&body), image.manifest.digest);
    assert_eq!(body, image.manifest_bytes);
    let manifest: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(manifest["mediaType"], MEDIA_TYPE_OCI_MANIFEST);

    // The big blob, fetched directly from the server, hashes to its digest and is complete.
    let (status, blob) = server_blob(&reg, "proj/app", &layer.digest).await;
    assert_eq!(status, StatusCode::OK, "GET layer blob");
    assert_eq!(blob.len() as u64, layer.size, "layer size on the server");
    assert_eq!(
        sha256_digest(&blob),
        layer.digest,
        "layer content on the server"
    );
    // And so does the config.
    let (status, config) = server_blob(&reg, "proj/app", &image.config.digest).await;
    assert_eq!(status, StatusCode::OK, "GET config blob");
    assert_eq!(sha256_digest(&config), image.config.digest);

    // The client said what happened (RUST_LOG=warn).
    let lower = stderr.to_lowercase();
    assert!(
        lower.contains("interrupted") && lower.contains("resum"),
        "stderr should say the upload was interrupted and resumed:\n{stderr}"
    );
    assert!(
        stderr.contains(&layer.digest),
        "stderr should name the interrupted blob {}:\n{stderr}",
        layer.digest
    );
}

#[tokio::test]
async fn push_gives_up_when_every_attempt_is_cut() {
    let srv = KuraServer::start();
    let reg = Reg::new(&srv);
    let proxy = CutProxy::start(&srv.addr, CUT_AFTER, CutMode::Every);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("src");
    let image = big_layout(&dir, "t", 43);
    let layer = image.layers[0].clone();

    let cli = Cli::new();
    let dest = format!("{}/proj/app:t", proxy.addr);
    let (out, elapsed) = run_bounded(
        &cli,
        &["push", &oci(&dir, "t"), &dest, "--format", "json"],
        PUSH_TIMEOUT,
    );
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(5),
        "push whose every upload attempt is cut must fail as a connection error \
         (after {elapsed:?}; {})\nstdout: {stdout}\nstderr: {stderr}",
        proxy.describe()
    );
    assert!(
        elapsed < PUSH_TIMEOUT,
        "the push gave up within {PUSH_TIMEOUT:?} (took {elapsed:?})"
    );

    // It tried again (at least one resumption), but a bounded number of times.
    let cuts = proxy.cuts();
    assert!(
        (2..=3).contains(&cuts),
        "expected the first attempt and its resumptions to be cut (2..=3 cuts), got {} \
         \nstderr: {stderr}",
        proxy.describe()
    );
    assert!(
        stderr.to_lowercase().contains("interrupted"),
        "stderr should report the interrupted upload:\n{stderr}"
    );

    // Nothing was published: no tag, no layer.
    let (status, _, body) = server_manifest(&reg, "proj/app", "t").await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "the tag must not exist after a failed push: {}",
        text(&body)
    );
    let (status, _) = server_blob(&reg, "proj/app", &layer.digest).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "the layer must not exist after a failed push"
    );
}
