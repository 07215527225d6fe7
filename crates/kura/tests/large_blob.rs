//! Large blobs go through the server in bounded memory.
//!
//! * 2 GiB pushed as 64 MiB `PATCH` chunks with `Content-Range`, then pulled back streaming.
//! * 256 MiB pushed as one streamed `PATCH` (chunked transfer encoding, no `Content-Range`, no
//!   `Content-Length`), then pulled back streaming.
//!
//! The test never holds a whole blob either: data comes from a seeded PRNG as it is sent, and is
//! hashed on the way up and again on the way down. Each test asserts that the server's peak RSS
//! (VmHWM) stays under 100 MiB and prints the peak and the throughput it measured.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::KuraServer;
use futures_util::StreamExt;
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};

const MIB: u64 = 1 << 20;
const RSS_LIMIT_KIB: u64 = 100 * 1024;

/// Deterministic pseudo-random bytes, fast enough that the generator is not what is measured.
///
/// Each `fill` draws up to 4 MiB fresh from a seeded xoshiro PRNG (`SmallRng`), repeats it over the
/// rest of the buffer, and stamps the first 16 bytes of every 4 KiB page with fresh PRNG output,
/// so no two pages of a stream are equal and any reordering or loss changes the digest.
struct Generator {
    rng: SmallRng,
}

impl Generator {
    const BASE: usize = 4 << 20;
    const PAGE: usize = 4096;

    fn new(seed: u64) -> Generator {
        Generator {
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    fn fill(&mut self, buf: &mut [u8]) {
        let base_len = buf.len().min(Self::BASE);
        let (head, rest) = buf.split_at_mut(base_len);
        self.rng.fill_bytes(head);
        for chunk in rest.chunks_mut(base_len) {
            chunk.copy_from_slice(&head[..chunk.len()]);
        }
        for page in buf.chunks_mut(Self::PAGE).skip(base_len / Self::PAGE) {
            let n = page.len().min(16);
            self.rng.fill_bytes(&mut page[..n]);
        }
    }
}

/// Remembers the bytes of a few ranges of a stream as it goes by, to check ranged GETs later.
struct Samples {
    /// (start, length, bytes seen so far)
    ranges: Vec<(u64, usize, Vec<u8>)>,
}

impl Samples {
    fn new(ranges: &[(u64, usize)]) -> Samples {
        Samples {
            ranges: ranges
                .iter()
                .map(|&(start, len)| (start, len, Vec::with_capacity(len)))
                .collect(),
        }
    }

    /// `data` sits at `offset` in the stream.
    fn observe(&mut self, offset: u64, data: &[u8]) {
        for (start, len, buf) in &mut self.ranges {
            let lo = (*start).max(offset);
            let hi = (*start + *len as u64).min(offset + data.len() as u64);
            if lo < hi {
                buf.extend_from_slice(&data[(lo - offset) as usize..(hi - offset) as usize]);
            }
        }
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn absolute(server: &KuraServer, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        location.to_string()
    } else {
        server.url(location)
    }
}

fn location_opt(server: &KuraServer, resp: &reqwest::Response) -> Option<String> {
    resp.headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(|l| absolute(server, l))
}

fn with_digest(location: &str, digest: &str) -> String {
    let sep = if location.contains('?') { '&' } else { '?' };
    format!("{location}{sep}digest={digest}")
}

fn mib_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / MIB as f64 / elapsed.as_secs_f64()
}

async fn start_upload(server: &KuraServer, http: &reqwest::Client, repo: &str) -> String {
    let url = server.url(&format!("/v2/{repo}/blobs/uploads/"));
    let resp = http
        .post(&url)
        .header("Content-Length", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202, "POST {url}");
    location_opt(server, &resp).unwrap_or_else(|| panic!("POST {url}: no Location header"))
}

async fn finish_upload(http: &reqwest::Client, location: &str, digest: &str, repo: &str) {
    let url = with_digest(location, digest);
    let resp = http
        .put(&url)
        .header("Content-Length", "0")
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    assert_eq!(
        status,
        201,
        "PUT {url}: {}",
        resp.text().await.unwrap_or_default()
    );
    assert_eq!(
        headers
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok()),
        Some(digest)
    );
    let loc = headers
        .get("location")
        .expect("Location on blob PUT")
        .to_str()
        .unwrap();
    assert!(
        loc.ends_with(&format!("/v2/{repo}/blobs/{digest}")),
        "blob Location: {loc}"
    );
}

/// Streams the blob back, hashing it; returns the digest and the time it took.
async fn pull_and_hash(
    server: &KuraServer,
    http: &reqwest::Client,
    repo: &str,
    digest: &str,
    size: u64,
) -> (String, Duration) {
    let url = server.url(&format!("/v2/{repo}/blobs/{digest}"));
    let head = http.head(&url).send().await.unwrap();
    assert_eq!(head.status(), 200, "HEAD {url}");
    assert_eq!(
        head.headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok()),
        Some(size.to_string().as_str()),
        "HEAD {url}"
    );
    let started = Instant::now();
    let resp = http.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200, "GET {url}");
    assert_eq!(
        resp.headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok()),
        Some(size.to_string().as_str()),
        "GET {url}"
    );
    let mut hasher = Sha256::new();
    let mut received = 0u64;
    let mut body = resp.bytes_stream();
    while let Some(piece) = body.next().await {
        let piece =
            piece.unwrap_or_else(|e| panic!("GET {url}: body failed after {received} bytes: {e}"));
        received += piece.len() as u64;
        hasher.update(&piece);
    }
    assert_eq!(received, size, "GET {url}: body length");
    (
        format!("sha256:{}", hex::encode(hasher.finalize())),
        started.elapsed(),
    )
}

async fn check_ranges(
    server: &KuraServer,
    http: &reqwest::Client,
    repo: &str,
    digest: &str,
    size: u64,
    samples: &Samples,
) {
    let url = server.url(&format!("/v2/{repo}/blobs/{digest}"));
    for (start, len, want) in &samples.ranges {
        assert_eq!(want.len(), *len, "sample at {start} was not fully observed");
        let end = start + want.len() as u64 - 1;
        let resp = http
            .get(&url)
            .header("Range", format!("bytes={start}-{end}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 206, "GET {url} Range: bytes={start}-{end}");
        assert_eq!(
            resp.headers()
                .get("content-range")
                .and_then(|v| v.to_str().ok()),
            Some(format!("bytes {start}-{end}/{size}").as_str())
        );
        let got = resp.bytes().await.unwrap();
        assert!(
            got.as_ref() == want.as_slice(),
            "ranged GET bytes={start}-{end} returned other bytes"
        );
    }
}

fn report_rss(server: &KuraServer, what: &str) -> u64 {
    let peak = server.peak_rss_kib();
    let now = server.rss_kib();
    println!(
        "{what}: server peak RSS (VmHWM) {:.1} MiB, current RSS {:.1} MiB",
        peak as f64 / 1024.0,
        now as f64 / 1024.0
    );
    peak
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_upload_of_2gib_blob_in_bounded_memory() {
    const TOTAL: u64 = 2048 * MIB;
    const CHUNK: u64 = 64 * MIB;
    const SAMPLES: [(u64, usize); 4] = [
        (0, 4096),
        (CHUNK - 100, 300),            // across the first chunk boundary
        (1024 * MIB + 12_345, 70_000), // the middle
        (TOTAL - 1000, 1000),          // the last bytes
    ];
    let repo = "big/chunked";
    let server = KuraServer::start();
    report_rss(&server, "after start");
    let http = client();

    // Generate chunks on a separate thread, hashing as they are made; at most two wait in the
    // channel, so the test holds a few chunks at a time, never the blob.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(2);
    let generator = std::thread::spawn(move || {
        let mut generator = Generator::new(0x6b75_7261);
        let mut hasher = Sha256::new();
        let mut samples = Samples::new(&SAMPLES);
        let mut offset = 0;
        while offset < TOTAL {
            let n = CHUNK.min(TOTAL - offset) as usize;
            let mut buf = vec![0u8; n];
            generator.fill(&mut buf);
            hasher.update(&buf);
            samples.observe(offset, &buf);
            offset += n as u64;
            if tx.blocking_send(Bytes::from(buf)).is_err() {
                break;
            }
        }
        (
            format!("sha256:{}", hex::encode(hasher.finalize())),
            samples,
        )
    });

    let started = Instant::now();
    let mut location = start_upload(&server, &http, repo).await;
    let mut offset = 0u64;
    while let Some(chunk) = rx.recv().await {
        let end = offset + chunk.len() as u64 - 1;
        let resp = http
            .patch(&location)
            .header("Content-Type", "application/octet-stream")
            .header("Content-Range", format!("{offset}-{end}"))
            .header("Content-Length", chunk.len().to_string())
            .body(chunk)
            .send()
            .await
            .unwrap_or_else(|e| panic!("PATCH {offset}-{end}: {e}"));
        let status = resp.status();
        let range = resp
            .headers()
            .get("range")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let next = location_opt(&server, &resp);
        assert_eq!(
            status,
            202,
            "PATCH {location} Content-Range: {offset}-{end}: {}",
            resp.text().await.unwrap_or_default()
        );
        assert_eq!(
            range.as_deref(),
            Some(format!("0-{end}").as_str()),
            "Range after PATCH {offset}-{end}"
        );
        location = next.expect("Location after PATCH");
        offset = end + 1;
    }
    let (digest, samples) = generator.join().unwrap();
    assert_eq!(offset, TOTAL);
    finish_upload(&http, &location, &digest, repo).await;
    let up = started.elapsed();
    println!(
        "2 GiB chunked upload (64 MiB PATCHes): {:.1} s, {:.0} MiB/s",
        up.as_secs_f64(),
        mib_per_s(TOTAL, up)
    );
    let peak_up = report_rss(&server, "after chunked upload");

    let (got, down) = pull_and_hash(&server, &http, repo, &digest, TOTAL).await;
    assert_eq!(got, digest, "downloaded blob hashes differently");
    println!(
        "2 GiB streamed download: {:.1} s, {:.0} MiB/s",
        down.as_secs_f64(),
        mib_per_s(TOTAL, down)
    );
    check_ranges(&server, &http, repo, &digest, TOTAL, &samples).await;

    let peak = report_rss(&server, "after download");
    assert!(
        peak_up < RSS_LIMIT_KIB,
        "server peak RSS during upload {peak_up} KiB >= {RSS_LIMIT_KIB} KiB"
    );
    assert!(
        peak < RSS_LIMIT_KIB,
        "server peak RSS {peak} KiB >= {RSS_LIMIT_KIB} KiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_patch_of_256mib_blob_in_bounded_memory() {
    const TOTAL: u64 = 256 * MIB;
    const BATCH: u64 = 16 * MIB; // generated at a time
    const PIECE: usize = 1 << 20; // sent to the body stream at a time
    const SAMPLES: [(u64, usize); 2] = [(100 * MIB - 7, 5000), (TOTAL - 4096, 4096)];
    let repo = "big/streamed";
    let server = KuraServer::start();
    let http = client();

    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let generator = std::thread::spawn(move || {
        let mut generator = Generator::new(0x7374_7265);
        let mut hasher = Sha256::new();
        let mut samples = Samples::new(&SAMPLES);
        let mut offset = 0;
        while offset < TOTAL {
            let mut buf = vec![0u8; BATCH.min(TOTAL - offset) as usize];
            generator.fill(&mut buf);
            hasher.update(&buf);
            samples.observe(offset, &buf);
            offset += buf.len() as u64;
            let batch = Bytes::from(buf);
            for start in (0..batch.len()).step_by(PIECE) {
                let piece = batch.slice(start..(start + PIECE).min(batch.len()));
                if tx.blocking_send(piece).is_err() {
                    return (String::new(), samples);
                }
            }
        }
        (
            format!("sha256:{}", hex::encode(hasher.finalize())),
            samples,
        )
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<Bytes, std::io::Error>(b), rx))
    });

    let started = Instant::now();
    let location = start_upload(&server, &http, repo).await;
    // No Content-Range and no Content-Length: the body goes up with chunked transfer encoding.
    let resp = http
        .patch(&location)
        .header("Content-Type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let range = resp
        .headers()
        .get("range")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let next = location_opt(&server, &resp);
    assert_eq!(
        status,
        202,
        "streamed PATCH {location}: {}",
        resp.text().await.unwrap_or_default()
    );
    assert_eq!(
        range.as_deref(),
        Some(format!("0-{}", TOTAL - 1).as_str()),
        "Range after streamed PATCH"
    );
    let (digest, samples) = generator.join().unwrap();
    finish_upload(&http, &next.expect("Location after PATCH"), &digest, repo).await;
    let up = started.elapsed();
    println!(
        "256 MiB streamed PATCH upload: {:.1} s, {:.0} MiB/s",
        up.as_secs_f64(),
        mib_per_s(TOTAL, up)
    );

    let (got, down) = pull_and_hash(&server, &http, repo, &digest, TOTAL).await;
    assert_eq!(got, digest, "downloaded blob hashes differently");
    println!(
        "256 MiB streamed download: {:.1} s, {:.0} MiB/s",
        down.as_secs_f64(),
        mib_per_s(TOTAL, down)
    );
    check_ranges(&server, &http, repo, &digest, TOTAL, &samples).await;

    let peak = report_rss(&server, "after streamed upload and download");
    assert!(
        peak < RSS_LIMIT_KIB,
        "server peak RSS {peak} KiB >= {RSS_LIMIT_KIB} KiB"
    );
}
