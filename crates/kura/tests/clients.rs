//! Round trips through real registry clients: skopeo (Debian package) and oras-py (PyPI `oras`,
//! driven by tests/clients/oras_client.py). Each test starts its own `kura serve`.
//!
//! The clients are installed by `scripts/test`. A missing client makes the test FAIL with a
//! message saying so; it never passes silently.
//!
//! Environment overrides: `KURA_SKOPEO` (path of skopeo), `KURA_ORAS_PYTHON` (a Python that can
//! `import oras`; default `$HOME/.cache/kura-test-venv/bin/python`).

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::KuraServer;
use common::oci_layout::{
    self, Descriptor, Image, MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_OCI_MANIFEST, sha256_digest,
};
use serde_json::Value;

const CLIENT_TIMEOUT: Duration = Duration::from_secs(300);
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";

// ---------------------------------------------------------------------------------------------
// Locating and running the clients
// ---------------------------------------------------------------------------------------------

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn skopeo() -> PathBuf {
    if let Some(p) = std::env::var_os("KURA_SKOPEO") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "KURA_SKOPEO={} does not exist", p.display());
        return p;
    }
    find_on_path("skopeo").unwrap_or_else(|| {
        panic!(
            "skopeo is not installed (not found on PATH). These tests need the real client: \
             run scripts/test, which installs it (apt-get install skopeo), or set KURA_SKOPEO."
        )
    })
}

fn oras_python() -> PathBuf {
    let python = match std::env::var_os("KURA_ORAS_PYTHON") {
        Some(p) => {
            let p = PathBuf::from(p);
            assert!(
                p.is_file(),
                "KURA_ORAS_PYTHON={} does not exist",
                p.display()
            );
            p
        }
        None => {
            let home = std::env::var_os("HOME").expect("HOME is set");
            let venv_python = Path::new(&home).join(".cache/kura-test-venv/bin/python");
            assert!(
                venv_python.is_file(),
                "the oras client (oras-py) is not installed: {} does not exist. Run scripts/test, \
                 which creates that venv and pip-installs `oras` into it, or set KURA_ORAS_PYTHON.",
                venv_python.display()
            );
            venv_python
        }
    };
    let check = std::process::Command::new(&python)
        .args(["-c", "import oras.provider"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    assert!(
        check.status.success(),
        "the oras client (oras-py) is not importable from {}: {}\nRun scripts/test, which \
         pip-installs `oras` into $HOME/.cache/kura-test-venv.",
        python.display(),
        String::from_utf8_lossy(&check.stderr).trim()
    );
    python
}

fn oras_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/oras_client.py")
}

struct Output {
    stdout: Vec<u8>,
    stderr: String,
}

/// Runs a client to completion (bounded), panicking with its output if it fails.
async fn run<I, S>(program: &Path, args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let shown = format!(
        "{} {}",
        program.display(),
        args.iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    eprintln!("$ {shown}");
    let child = tokio::process::Command::new(program)
        .args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `{shown}`: {e}"));
    let out = tokio::time::timeout(CLIENT_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("`{shown}` did not finish within {CLIENT_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("waiting for `{shown}`: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "`{shown}` failed with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        stderr
    );
    Output {
        stdout: out.stdout,
        stderr,
    }
}

/// `skopeo --insecure-policy ARGS...` (no signature policy is involved in these tests).
async fn skopeo_run(args: &[&str]) -> Output {
    let mut all = vec!["--insecure-policy"];
    all.extend_from_slice(args);
    run(&skopeo(), all).await
}

/// Runs tests/clients/oras_client.py against `server` and parses its JSON answer.
async fn oras(server: &KuraServer, args: &[&str]) -> Value {
    let python = oras_python();
    let script = oras_script();
    let mut all: Vec<&OsStr> = vec![
        script.as_os_str(),
        OsStr::new("--registry"),
        OsStr::new(&server.addr),
    ];
    all.extend(args.iter().map(OsStr::new));
    let out = run(&python, all).await;
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "oras_client.py printed no JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            out.stderr
        )
    })
}

// ---------------------------------------------------------------------------------------------
// HTTP checks against the registry
// ---------------------------------------------------------------------------------------------

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().expect("ASCII header").to_string())
}

/// Percent-encodes a query value (everything but RFC 3986 unreserved characters).
fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// GET and HEAD a manifest: 200, exact bytes, `Docker-Content-Digest`, `Content-Type`.
async fn assert_manifest(
    server: &KuraServer,
    repo: &str,
    reference: &str,
    expected: &[u8],
    media_type: &str,
) {
    let digest = sha256_digest(expected);
    let url = server.url(&format!("/v2/{repo}/manifests/{reference}"));
    let c = http();
    let resp = c
        .get(&url)
        .header("Accept", MANIFEST_ACCEPT)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "GET {url}");
    assert_eq!(
        header(&resp, "docker-content-digest").as_deref(),
        Some(digest.as_str()),
        "GET {url}"
    );
    assert_eq!(
        header(&resp, "content-type").as_deref(),
        Some(media_type),
        "GET {url}"
    );
    let body = resp.bytes().await.unwrap();
    assert!(
        body.as_ref() == expected,
        "GET {url}: manifest bytes differ from what was pushed\n got: {}\nwant: {}",
        String::from_utf8_lossy(&body),
        String::from_utf8_lossy(expected)
    );

    let resp = c
        .head(&url)
        .header("Accept", MANIFEST_ACCEPT)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "HEAD {url}");
    assert_eq!(
        header(&resp, "docker-content-digest").as_deref(),
        Some(digest.as_str()),
        "HEAD {url}"
    );
    assert_eq!(
        header(&resp, "content-length").as_deref(),
        Some(expected.len().to_string().as_str()),
        "HEAD {url}"
    );
}

/// HEAD and GET a blob: 200, size, digest header, exact bytes.
async fn assert_blob(server: &KuraServer, repo: &str, desc: &Descriptor, expected: &[u8]) {
    assert_eq!(desc.size, expected.len() as u64);
    let url = server.url(&format!("/v2/{repo}/blobs/{}", desc.digest));
    let c = http();
    let resp = c.head(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200, "HEAD {url}");
    assert_eq!(
        header(&resp, "content-length").as_deref(),
        Some(desc.size.to_string().as_str()),
        "HEAD {url}"
    );
    assert_eq!(
        header(&resp, "docker-content-digest").as_deref(),
        Some(desc.digest.as_str()),
        "HEAD {url}"
    );
    let resp = c.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200, "GET {url}");
    let body = resp.bytes().await.unwrap();
    assert!(
        body.as_ref() == expected,
        "GET {url}: blob bytes differ ({} vs {} bytes)",
        body.len(),
        expected.len()
    );
}

async fn assert_blob_absent(server: &KuraServer, repo: &str, digest: &str) {
    let url = server.url(&format!("/v2/{repo}/blobs/{digest}"));
    let resp = http().head(&url).send().await.unwrap();
    assert_eq!(resp.status(), 404, "HEAD {url} should be 404");
}

/// Every blob and the manifest of `image` (as written into `src`) are served from `repo`.
async fn assert_image_served(server: &KuraServer, repo: &str, src: &Path, image: &Image) {
    assert_manifest(
        server,
        repo,
        &image.manifest.digest,
        &image.manifest_bytes,
        MEDIA_TYPE_OCI_MANIFEST,
    )
    .await;
    for blob in image.blobs() {
        let bytes = std::fs::read(oci_layout::blob_path(src, &blob.digest)).unwrap();
        assert_blob(server, repo, &blob, &bytes).await;
    }
}

/// A layout that skopeo wrote holds `image` byte for byte.
fn assert_layout_holds_image(dst: &Path, src: &Path, image: &Image) {
    let mut blobs = image.blobs();
    blobs.push(image.manifest.clone());
    for blob in blobs {
        let want = std::fs::read(oci_layout::blob_path(src, &blob.digest)).unwrap();
        let got = std::fs::read(oci_layout::blob_path(dst, &blob.digest))
            .unwrap_or_else(|e| panic!("{} missing from {}: {e}", blob.digest, dst.display()));
        assert!(
            got == want,
            "blob {} differs after the round trip",
            blob.digest
        );
    }
}

fn ref_digest(layout: &Path, tag: &str) -> String {
    let refs = oci_layout::read_refs(layout);
    refs.iter()
        .find(|(name, _)| name == tag)
        .unwrap_or_else(|| panic!("tag {tag} not in {}/index.json: {refs:?}", layout.display()))
        .1
        .digest
        .clone()
}

async fn get_json(url: &str) -> (reqwest::StatusCode, reqwest::header::HeaderMap, Value) {
    let resp = http().get(url).send().await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.bytes().await.unwrap();
    let json = serde_json::from_slice(&body).unwrap_or_else(|e| {
        panic!(
            "GET {url}: {status}, body is not JSON ({e}): {}",
            String::from_utf8_lossy(&body)
        )
    });
    (status, headers, json)
}

// ---------------------------------------------------------------------------------------------
// skopeo
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn skopeo_copy_multi_layer_image_round_trip() {
    let skopeo_bin = skopeo(); // fail first, and clearly, if the client is missing
    eprintln!("using {}", skopeo_bin.display());
    let server = KuraServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let image = oci_layout::single_image_layout(&src, "v1", 4, 1);
    let digest = image.manifest.digest.clone();
    let dest = format!("docker://{}/proj/app:v1", server.addr);

    skopeo_run(&[
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=false",
        &format!("oci:{}:v1", src.display()),
        &dest,
    ])
    .await;

    // The registry serves exactly the manifest that was pushed, under the tag and the digest.
    assert_manifest(
        &server,
        "proj/app",
        "v1",
        &image.manifest_bytes,
        MEDIA_TYPE_OCI_MANIFEST,
    )
    .await;
    assert_image_served(&server, "proj/app", &src, &image).await;

    // skopeo sees the same bytes.
    let raw = skopeo_run(&["inspect", "--raw", "--tls-verify=false", &dest]).await;
    assert_eq!(
        sha256_digest(&raw.stdout),
        digest,
        "skopeo inspect --raw digest"
    );
    assert!(
        raw.stdout == image.manifest_bytes,
        "skopeo inspect --raw returned other bytes"
    );
    let info = skopeo_run(&["inspect", "--tls-verify=false", &dest]).await;
    let info: Value = serde_json::from_slice(&info.stdout).expect("skopeo inspect prints JSON");
    assert_eq!(info["Digest"], digest.as_str());
    assert_eq!(info["Architecture"], "amd64");
    assert_eq!(info["Os"], "linux");
    let layers: Vec<&str> = info["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    let want: Vec<&str> = image.layers.iter().map(|l| l.digest.as_str()).collect();
    assert_eq!(layers, want);

    // A ranged read of a layer.
    let layer = &image.layers[0];
    let bytes = std::fs::read(oci_layout::blob_path(&src, &layer.digest)).unwrap();
    let url = server.url(&format!("/v2/proj/app/blobs/{}", layer.digest));
    let resp = http()
        .get(&url)
        .header("Range", "bytes=100-1099")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 206, "ranged GET {url}");
    assert_eq!(
        header(&resp, "content-range").as_deref(),
        Some(format!("bytes 100-1099/{}", bytes.len()).as_str())
    );
    assert!(resp.bytes().await.unwrap().as_ref() == &bytes[100..1100]);

    let (status, _, tags) = get_json(&server.url("/v2/proj/app/tags/list")).await;
    assert_eq!(status, 200);
    assert_eq!(tags["name"], "proj/app");
    assert_eq!(tags["tags"], serde_json::json!(["v1"]));

    // And back out into a fresh layout, byte for byte.
    let dst = tmp.path().join("dst");
    skopeo_run(&[
        "copy",
        "--preserve-digests",
        "--src-tls-verify=false",
        &dest,
        &format!("oci:{}:v1", dst.display()),
    ])
    .await;
    assert_eq!(ref_digest(&dst, "v1"), digest);
    assert_layout_holds_image(&dst, &src, &image);
}

#[tokio::test]
async fn skopeo_copy_all_multi_arch_index_round_trip() {
    skopeo();
    let server = KuraServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let index = oci_layout::multi_arch_layout(&src, "multi", 2);
    let dest = format!("docker://{}/proj/multi:v1", server.addr);

    skopeo_run(&[
        "copy",
        "--all",
        "--preserve-digests",
        "--dest-tls-verify=false",
        &format!("oci:{}:multi", src.display()),
        &dest,
    ])
    .await;

    assert_manifest(
        &server,
        "proj/multi",
        "v1",
        &index.index_bytes,
        MEDIA_TYPE_OCI_INDEX,
    )
    .await;
    assert_manifest(
        &server,
        "proj/multi",
        &index.index.digest,
        &index.index_bytes,
        MEDIA_TYPE_OCI_INDEX,
    )
    .await;
    for image in &index.images {
        assert_image_served(&server, "proj/multi", &src, image).await;
    }
    let raw = skopeo_run(&["inspect", "--raw", "--tls-verify=false", &dest]).await;
    assert_eq!(
        sha256_digest(&raw.stdout),
        index.index.digest,
        "skopeo inspect --raw of the index"
    );

    // Platform selection through the index works for a client (skopeo reports the index digest
    // as `Digest`, and the arm64 image's architecture and layers).
    let arm = skopeo_run(&[
        "--override-arch",
        "arm64",
        "inspect",
        "--tls-verify=false",
        &dest,
    ])
    .await;
    let arm: Value = serde_json::from_slice(&arm.stdout).unwrap();
    assert_eq!(arm["Architecture"], "arm64");
    let want: Vec<&str> = index.images[1]
        .layers
        .iter()
        .map(|l| l.digest.as_str())
        .collect();
    let got: Vec<&str> = arm["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert_eq!(got, want, "layers of the arm64 image");

    let dst = tmp.path().join("dst");
    skopeo_run(&[
        "copy",
        "--all",
        "--preserve-digests",
        "--src-tls-verify=false",
        &dest,
        &format!("oci:{}:multi", dst.display()),
    ])
    .await;
    assert_eq!(
        ref_digest(&dst, "multi"),
        index.index.digest,
        "index digest after the round trip"
    );
    let got = std::fs::read(oci_layout::blob_path(&dst, &index.index.digest)).unwrap();
    assert!(
        got == index.index_bytes,
        "index bytes differ after the round trip"
    );
    for image in &index.images {
        assert_layout_holds_image(&dst, &src, image);
    }
}

const MEDIA_TYPE_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const MEDIA_TYPE_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// GETs a manifest by reference; checks Docker-Content-Digest against the body; returns
/// (bytes, Content-Type, digest).
async fn get_manifest(
    server: &KuraServer,
    repo: &str,
    reference: &str,
) -> (Vec<u8>, String, String) {
    let url = server.url(&format!("/v2/{repo}/manifests/{reference}"));
    let resp = http()
        .get(&url)
        .header("Accept", MANIFEST_ACCEPT)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "GET {url}");
    let ct = header(&resp, "content-type").unwrap_or_default();
    let digest = header(&resp, "docker-content-digest").expect("Docker-Content-Digest");
    let body = resp.bytes().await.unwrap().to_vec();
    assert_eq!(
        sha256_digest(&body),
        digest,
        "GET {url}: Docker-Content-Digest is not the body's digest"
    );
    (body, ct, digest)
}

#[tokio::test]
async fn skopeo_docker_schema2_image_and_manifest_list() {
    skopeo();
    let server = KuraServer::start();
    let tmp = tempfile::tempdir().unwrap();

    // An OCI image converted by skopeo to Docker schema 2 on the way in.
    let src = tmp.path().join("src");
    let image = oci_layout::single_image_layout(&src, "v1", 2, 4);
    let dest = format!("docker://{}/proj/docker:v1", server.addr);
    skopeo_run(&[
        "copy",
        "--format",
        "v2s2",
        "--dest-tls-verify=false",
        &format!("oci:{}:v1", src.display()),
        &dest,
    ])
    .await;
    let (bytes, ct, digest) = get_manifest(&server, "proj/docker", "v1").await;
    assert_eq!(ct, MEDIA_TYPE_DOCKER_MANIFEST);
    let manifest: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(manifest["mediaType"], MEDIA_TYPE_DOCKER_MANIFEST);
    assert_eq!(manifest["config"]["digest"], image.config.digest.as_str());
    let layers: Vec<&str> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap())
        .collect();
    assert_eq!(
        layers,
        image
            .layers
            .iter()
            .map(|l| l.digest.as_str())
            .collect::<Vec<_>>()
    );
    assert_manifest(
        &server,
        "proj/docker",
        &digest,
        &bytes,
        MEDIA_TYPE_DOCKER_MANIFEST,
    )
    .await;
    let raw = skopeo_run(&["inspect", "--raw", "--tls-verify=false", &dest]).await;
    assert!(
        raw.stdout == bytes,
        "skopeo inspect --raw differs from the served manifest"
    );
    for blob in image.blobs() {
        let data = std::fs::read(oci_layout::blob_path(&src, &blob.digest)).unwrap();
        assert_blob(&server, "proj/docker", &blob, &data).await;
    }

    // Registry to registry keeps the schema 2 digest.
    let copy = format!("docker://{}/proj/docker-copy:v1", server.addr);
    skopeo_run(&[
        "copy",
        "--preserve-digests",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        &dest,
        &copy,
    ])
    .await;
    assert_manifest(
        &server,
        "proj/docker-copy",
        "v1",
        &bytes,
        MEDIA_TYPE_DOCKER_MANIFEST,
    )
    .await;

    // Back to an OCI layout: skopeo converts it back; layers are unchanged.
    let dst = tmp.path().join("dst");
    skopeo_run(&[
        "copy",
        "--src-tls-verify=false",
        &dest,
        &format!("oci:{}:v1", dst.display()),
    ])
    .await;
    let back = ref_digest(&dst, "v1");
    let back: Value =
        serde_json::from_slice(&std::fs::read(oci_layout::blob_path(&dst, &back)).unwrap())
            .unwrap();
    // (skopeo rewrites the config when it converts schema 2 to OCI, so only layers are compared.)
    assert_eq!(back["mediaType"], MEDIA_TYPE_OCI_MANIFEST);
    let back_layers: Vec<&str> = back["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap())
        .collect();
    assert_eq!(
        back_layers,
        image
            .layers
            .iter()
            .map(|l| l.digest.as_str())
            .collect::<Vec<_>>()
    );
    for blob in &image.layers {
        let want = std::fs::read(oci_layout::blob_path(&src, &blob.digest)).unwrap();
        assert!(std::fs::read(oci_layout::blob_path(&dst, &blob.digest)).unwrap() == want);
    }

    // A multi-arch index converted to a Docker manifest list.
    let msrc = tmp.path().join("msrc");
    let index = oci_layout::multi_arch_layout(&msrc, "multi", 5);
    let list_dest = format!("docker://{}/proj/dlist:v1", server.addr);
    skopeo_run(&[
        "copy",
        "--all",
        "--format",
        "v2s2",
        "--dest-tls-verify=false",
        &format!("oci:{}:multi", msrc.display()),
        &list_dest,
    ])
    .await;
    let (list_bytes, ct, list_digest) = get_manifest(&server, "proj/dlist", "v1").await;
    assert_eq!(ct, MEDIA_TYPE_DOCKER_LIST);
    let list: Value = serde_json::from_slice(&list_bytes).unwrap();
    let entries = list["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    for (entry, image) in entries.iter().zip(&index.images) {
        assert_eq!(entry["mediaType"], MEDIA_TYPE_DOCKER_MANIFEST);
        assert_eq!(
            entry["platform"]["architecture"],
            image.architecture.as_str()
        );
        let child = entry["digest"].as_str().unwrap();
        let (child_bytes, child_ct, _) = get_manifest(&server, "proj/dlist", child).await;
        assert_eq!(child_ct, MEDIA_TYPE_DOCKER_MANIFEST);
        assert_eq!(entry["size"], child_bytes.len() as u64);
    }
    let raw = skopeo_run(&["inspect", "--raw", "--tls-verify=false", &list_dest]).await;
    assert_eq!(sha256_digest(&raw.stdout), list_digest);
    // And the list copies between repositories with its digest intact.
    let list_copy = format!("docker://{}/proj/dlist-copy:v1", server.addr);
    skopeo_run(&[
        "copy",
        "--all",
        "--preserve-digests",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        &list_dest,
        &list_copy,
    ])
    .await;
    assert_manifest(
        &server,
        "proj/dlist-copy",
        "v1",
        &list_bytes,
        MEDIA_TYPE_DOCKER_LIST,
    )
    .await;

    // skopeo list-tags reads tags/list.
    let tags = skopeo_run(&[
        "list-tags",
        "--tls-verify=false",
        &format!("docker://{}/proj/docker", server.addr),
    ])
    .await;
    let tags: Value = serde_json::from_slice(&tags.stdout).unwrap();
    assert_eq!(tags["Tags"], serde_json::json!(["v1"]));
}

/// With `--dest-compress-format zstd` skopeo recompresses every layer while it uploads, so it
/// knows neither size nor digest in advance: POST, one PATCH streamed with chunked transfer
/// encoding, then PUT ?digest=.
#[tokio::test]
async fn skopeo_recompressed_zstd_layers_stream_up() {
    skopeo();
    let server = KuraServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let image = oci_layout::single_image_layout(&src, "v1", 3, 6);
    let dest = format!("docker://{}/proj/zstd:v1", server.addr);
    skopeo_run(&[
        "copy",
        "--dest-compress-format",
        "zstd",
        "--dest-tls-verify=false",
        &format!("oci:{}:v1", src.display()),
        &dest,
    ])
    .await;
    let (bytes, ct, digest) = get_manifest(&server, "proj/zstd", "v1").await;
    assert_eq!(ct, MEDIA_TYPE_OCI_MANIFEST);
    let manifest: Value = serde_json::from_slice(&bytes).unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), image.layers.len());

    // Pull the image back: skopeo verifies every blob digest on the way.
    let dst = tmp.path().join("dst");
    skopeo_run(&[
        "copy",
        "--preserve-digests",
        "--src-tls-verify=false",
        &dest,
        &format!("oci:{}:v1", dst.display()),
    ])
    .await;
    assert_eq!(ref_digest(&dst, "v1"), digest);
    for layer in layers {
        assert_eq!(
            layer["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+zstd"
        );
        let desc = Descriptor {
            media_type: layer["mediaType"].as_str().unwrap().to_string(),
            digest: layer["digest"].as_str().unwrap().to_string(),
            size: layer["size"].as_u64().unwrap(),
        };
        let data = std::fs::read(oci_layout::blob_path(&dst, &desc.digest)).unwrap();
        assert_eq!(sha256_digest(&data), desc.digest);
        assert_blob(&server, "proj/zstd", &desc, &data).await;
    }
    let raw = skopeo_run(&["inspect", "--raw", "--tls-verify=false", &dest]).await;
    assert_eq!(sha256_digest(&raw.stdout), digest);
}

#[tokio::test]
async fn skopeo_copy_between_repositories_mounts_blobs_and_delete() {
    skopeo();
    let server = KuraServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let image = oci_layout::single_image_layout(&src, "v1", 3, 3);
    let from = format!("docker://{}/proj/app:v1", server.addr);
    let to = format!("docker://{}/other/app:v1", server.addr);

    skopeo_run(&[
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=false",
        &format!("oci:{}:v1", src.display()),
        &from,
    ])
    .await;
    for blob in image.blobs() {
        assert_blob_absent(&server, "other/app", &blob.digest).await;
    }

    // Registry to registry on the same host: skopeo knows (blob info cache) that the blobs live
    // in proj/app, so it asks for cross-repository mounts (POST ...?mount=<digest>&from=proj/app).
    let copy = skopeo_run(&[
        "--debug",
        "copy",
        "--preserve-digests",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        &from,
        &to,
    ])
    .await;
    let mount_lines: Vec<&str> = copy
        .stderr
        .lines()
        .filter(|l| l.contains("mount"))
        .collect();
    eprintln!(
        "skopeo mount-related debug lines:\n{}",
        mount_lines.join("\n")
    );
    // skopeo 1.9 logs "... mount OK" when the registry answers a mount with 201 Created (and
    // "... started an upload instead" on 202). Every layer must have been mounted.
    let mounted = copy.stderr.matches("mount OK").count();
    assert!(
        mounted >= image.layers.len(),
        "expected skopeo to mount all {} layers from proj/app, it mounted {mounted}",
        image.layers.len()
    );

    assert_manifest(
        &server,
        "other/app",
        "v1",
        &image.manifest_bytes,
        MEDIA_TYPE_OCI_MANIFEST,
    )
    .await;
    assert_image_served(&server, "other/app", &src, &image).await;

    // An explicit mount of a layer that exists in proj/app into a third repository.
    let layer = &image.layers[0];
    let url = server.url(&format!(
        "/v2/third/app/blobs/uploads/?mount={}&from=proj/app",
        layer.digest
    ));
    let resp = http()
        .post(&url)
        .header("Content-Length", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        201,
        "POST {url} (cross-repository mount of an existing blob)"
    );
    assert_eq!(
        header(&resp, "docker-content-digest").as_deref(),
        Some(layer.digest.as_str())
    );
    let bytes = std::fs::read(oci_layout::blob_path(&src, &layer.digest)).unwrap();
    assert_blob(&server, "third/app", layer, &bytes).await;

    let (status, _, catalog) = get_json(&server.url("/v2/_catalog")).await;
    assert_eq!(status, 200);
    let repos: Vec<&str> = catalog["repositories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert!(
        repos.contains(&"proj/app") && repos.contains(&"other/app"),
        "catalog: {repos:?}"
    );

    // skopeo delete resolves the tag and deletes the manifest by digest.
    skopeo_run(&["delete", "--tls-verify=false", &to]).await;
    let c = http();
    for reference in ["v1", image.manifest.digest.as_str()] {
        let url = server.url(&format!("/v2/other/app/manifests/{reference}"));
        let resp = c
            .get(&url)
            .header("Accept", MANIFEST_ACCEPT)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404, "GET {url} after skopeo delete");
    }
    // The source repository is untouched.
    assert_manifest(
        &server,
        "proj/app",
        "v1",
        &image.manifest_bytes,
        MEDIA_TYPE_OCI_MANIFEST,
    )
    .await;
    assert_image_served(&server, "proj/app", &src, &image).await;
    // skopeo still reads it, and deleting again fails.
    skopeo_run(&["inspect", "--raw", "--tls-verify=false", &from]).await;
    let again = tokio::process::Command::new(skopeo())
        .args(["--insecure-policy", "delete", "--tls-verify=false", &to])
        .output()
        .await
        .unwrap();
    assert!(
        !again.status.success(),
        "deleting a deleted image should fail"
    );
}

// ---------------------------------------------------------------------------------------------
// oras (oras-py)
// ---------------------------------------------------------------------------------------------

const ARTIFACT_TYPE: &str = "application/vnd.kura.test.artifact.v1";
const SIGNATURE_TYPE: &str = "application/vnd.kura.test.signature.v1";
const SBOM_CONFIG_TYPE: &str = "application/vnd.kura.test.sbom.config.v1+json";

fn random_file(path: &Path, size: usize, seed: u64) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut data = vec![0u8; size];
    rand::rngs::SmallRng::seed_from_u64(seed).fill_bytes(&mut data);
    std::fs::write(path, &data).unwrap();
    data
}

/// GETs a manifest by digest and returns (bytes, Content-Type).
async fn fetch_manifest(server: &KuraServer, repo: &str, digest: &str) -> (Vec<u8>, String) {
    let (body, ct, served) = get_manifest(server, repo, digest).await;
    assert_eq!(
        served, digest,
        "GET /v2/{repo}/manifests/{digest}: Docker-Content-Digest"
    );
    (body, ct)
}

#[tokio::test]
async fn oras_push_pull_artifact_and_referrers() {
    oras_python();
    let server = KuraServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let repo = "art/demo";

    // 1. An OCI 1.1 artifact with a custom artifactType; the blob goes up in 64 KiB PATCH chunks.
    let file = tmp.path().join("payload.bin");
    let payload = random_file(&file, 300_000, 11);
    let pushed = oras(
        &server,
        &[
            "push-artifact",
            "--ref",
            &format!("{repo}:v1"),
            "--artifact-type",
            ARTIFACT_TYPE,
            "--file",
            file.to_str().unwrap(),
            "--file-media-type",
            "application/vnd.kura.test.payload.v1",
            "--annotation",
            "org.example.kind=payload",
            "--chunked",
            "--chunk-size",
            "65536",
        ],
    )
    .await;
    assert_eq!(pushed["status"], 201, "manifest PUT: {pushed}");
    let art_digest = pushed["digest"]
        .as_str()
        .expect("Docker-Content-Digest on manifest PUT")
        .to_string();
    let (art_bytes, art_ct) = fetch_manifest(&server, repo, &art_digest).await;
    assert_eq!(art_ct, MEDIA_TYPE_OCI_MANIFEST);
    let art: Value = serde_json::from_slice(&art_bytes).unwrap();
    assert_eq!(art["artifactType"], ARTIFACT_TYPE);
    assert_manifest(&server, repo, "v1", &art_bytes, MEDIA_TYPE_OCI_MANIFEST).await;

    // Pull it back with oras, by tag and by digest.
    for reference in [format!("{repo}:v1"), format!("{repo}@{art_digest}")] {
        let out = tmp
            .path()
            .join(format!("pull-{}", sha256_digest(reference.as_bytes())));
        let pulled = oras(
            &server,
            &[
                "pull",
                "--ref",
                &reference,
                "--outdir",
                out.to_str().unwrap(),
            ],
        )
        .await;
        let files = pulled["files"].as_array().unwrap();
        assert_eq!(files.len(), 1, "{pulled}");
        let got = std::fs::read(files[0].as_str().unwrap()).unwrap();
        assert!(got == payload, "pulled payload differs ({reference})");
        assert!(files[0].as_str().unwrap().ends_with("payload.bin"));
    }

    let subject_size = art_bytes.len().to_string();
    let subject_args = [
        "--subject-digest",
        art_digest.as_str(),
        "--subject-size",
        subject_size.as_str(),
        "--subject-media-type",
        MEDIA_TYPE_OCI_MANIFEST,
    ];

    // 2. A referrer with a top-level artifactType (OCI 1.1 style).
    let sig_file = tmp.path().join("signature.sig");
    let sig = random_file(&sig_file, 512, 12);
    let mut args = vec![
        "push-artifact",
        "--ref",
        "art/demo:sig",
        "--artifact-type",
        SIGNATURE_TYPE,
        "--file",
        sig_file.to_str().unwrap(),
        "--file-media-type",
        "application/vnd.kura.test.signature.blob.v1",
        "--annotation",
        "org.example.kind=signature",
    ];
    args.extend_from_slice(&subject_args);
    let pushed = oras(&server, &args).await;
    assert_eq!(pushed["status"], 201, "{pushed}");
    // distribution-spec v1.1: a registry with the referrers API MUST answer a manifest PUT that
    // has a subject with `OCI-Subject: <subject digest>`.
    assert_eq!(
        pushed["oci_subject"],
        art_digest.as_str(),
        "OCI-Subject header on the referrer PUT"
    );
    let sig_digest = pushed["digest"].as_str().unwrap().to_string();
    let (sig_bytes, _) = fetch_manifest(&server, repo, &sig_digest).await;

    // 3. A referrer in the older oras style: no artifactType, the type is the config mediaType.
    let sbom_file = tmp.path().join("sbom.json");
    std::fs::write(
        &sbom_file,
        br#"{"spdxVersion":"SPDX-2.3","name":"kura-test"}"#,
    )
    .unwrap();
    let sbom_config = tmp.path().join("sbom-config.json");
    std::fs::write(&sbom_config, br#"{"generator":"kura-test"}"#).unwrap();
    let mut args = vec![
        "push",
        "--ref",
        "art/demo:sbom",
        "--file",
        sbom_file.to_str().unwrap(),
        "--file-media-type",
        "application/spdx+json",
        "--config",
        sbom_config.to_str().unwrap(),
        "--config-media-type",
        SBOM_CONFIG_TYPE,
        "--annotation",
        "org.example.kind=sbom",
    ];
    args.extend_from_slice(&subject_args);
    let pushed = oras(&server, &args).await;
    assert_eq!(pushed["status"], 201, "{pushed}");
    assert_eq!(
        pushed["oci_subject"],
        art_digest.as_str(),
        "OCI-Subject header on the referrer PUT"
    );
    let sbom_digest = pushed["digest"].as_str().unwrap().to_string();
    let (sbom_bytes, _) = fetch_manifest(&server, repo, &sbom_digest).await;
    let sbom_manifest: Value = serde_json::from_slice(&sbom_bytes).unwrap();
    assert!(sbom_manifest.get("artifactType").is_none());
    assert_eq!(sbom_manifest["config"]["mediaType"], SBOM_CONFIG_TYPE);

    // 4. The referrers API lists both, with artifactType and annotations.
    let url = server.url(&format!("/v2/{repo}/referrers/{art_digest}"));
    let (status, headers, index) = get_json(&url).await;
    assert_eq!(status, 200, "GET {url}: {index}");
    assert_eq!(
        headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some(MEDIA_TYPE_OCI_INDEX),
        "GET {url}"
    );
    assert_eq!(index["schemaVersion"], 2, "{index}");
    assert_eq!(index["mediaType"], MEDIA_TYPE_OCI_INDEX, "{index}");
    let manifests = index["manifests"].as_array().expect("manifests array");
    assert_eq!(manifests.len(), 2, "referrers of the artifact: {index}");
    let find = |d: &str| {
        manifests
            .iter()
            .find(|m| m["digest"] == d)
            .unwrap_or_else(|| panic!("{d} missing from referrers: {index}"))
            .clone()
    };
    let sig_desc = find(&sig_digest);
    assert_eq!(sig_desc["mediaType"], MEDIA_TYPE_OCI_MANIFEST);
    assert_eq!(sig_desc["size"], sig_bytes.len() as u64);
    assert_eq!(sig_desc["artifactType"], SIGNATURE_TYPE);
    assert_eq!(sig_desc["annotations"]["org.example.kind"], "signature");
    let sbom_desc = find(&sbom_digest);
    assert_eq!(sbom_desc["mediaType"], MEDIA_TYPE_OCI_MANIFEST);
    assert_eq!(sbom_desc["size"], sbom_bytes.len() as u64);
    assert_eq!(
        sbom_desc["artifactType"], SBOM_CONFIG_TYPE,
        "with no artifactType in the manifest, the descriptor's artifactType is config.mediaType"
    );
    assert_eq!(sbom_desc["annotations"]["org.example.kind"], "sbom");

    // 5. Filtering by artifactType.
    for (filter, expect) in [
        (SIGNATURE_TYPE, vec![sig_digest.as_str()]),
        (SBOM_CONFIG_TYPE, vec![sbom_digest.as_str()]),
        ("application/vnd.kura.test.nothing", vec![]),
    ] {
        let url = server.url(&format!(
            "/v2/{repo}/referrers/{art_digest}?artifactType={}",
            query_escape(filter)
        ));
        let (status, headers, index) = get_json(&url).await;
        assert_eq!(status, 200, "GET {url}");
        assert_eq!(
            headers
                .get("oci-filters-applied")
                .and_then(|v| v.to_str().ok()),
            Some("artifactType"),
            "GET {url}: OCI-Filters-Applied"
        );
        let got: Vec<&str> = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["digest"].as_str().unwrap())
            .collect();
        assert_eq!(got, expect, "GET {url}: {index}");
    }

    // 6. A manifest nobody refers to has an empty list (200, not 404), and so has an unknown one.
    for digest in [sig_digest.clone(), sha256_digest(b"no such manifest")] {
        let url = server.url(&format!("/v2/{repo}/referrers/{digest}"));
        let (status, _, index) = get_json(&url).await;
        assert_eq!(status, 200, "GET {url}");
        assert_eq!(index["manifests"], serde_json::json!([]), "GET {url}");
    }

    // 7. The referrer itself pulls back through oras.
    let out = tmp.path().join("pull-sig");
    let pulled = oras(
        &server,
        &[
            "pull",
            "--ref",
            &format!("{repo}@{sig_digest}"),
            "--outdir",
            out.to_str().unwrap(),
        ],
    )
    .await;
    let got = std::fs::read(pulled["files"][0].as_str().unwrap()).unwrap();
    assert!(got == sig, "pulled signature differs");

    let tags = oras(&server, &["tags", "--ref", repo]).await;
    let mut tags: Vec<&str> = tags["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    tags.sort_unstable();
    assert_eq!(tags, ["sbom", "sig", "v1"]);
}
