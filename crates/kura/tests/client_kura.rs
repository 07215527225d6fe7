//! The `kura` client commands against a Kura server, run as a user runs them: the real binary
//! (`common::cli::Cli`, an isolated HOME / DOCKER_CONFIG per test) talking to a real
//! `kura serve` on loopback, with the results checked over plain HTTP.
//!
//! Covered: `login`/`logout` (the docker config written, its mode, other keys preserved, wrong
//! passwords, the hint after logging out), `push` of OCI layouts (single image and multi-arch
//! index; a re-push transfers nothing; only missing blobs are sent) and of docker-archive tars,
//! `pull` into OCI layouts and docker-archive tars (blobs verified, platform selection, `--all`,
//! a missing tag), `cp` inside one Kura (blobs mounted, also with bearer tokens across projects)
//! and between two (blobs copied, `--all`), `tag` (same repository and another one, no blob
//! upload), `ls` (repositories; the tags table and its JSON), `inspect` (text, JSON, `--raw`,
//! referrers), `rm` (tag, digest, missing tag), `prune` (server-side retention runs: dry run,
//! `--force`, accessories following their subject, `tag=` with `--keep`, `dangling=true`,
//! artifacts with a non-matching tag, `until=`, one-part repository names, unknown filters),
//! `df` (per project and per repository with the deduplication savings; unsupported in auth
//! mode `open`), `search` (anonymous and logged in), and the error contract (exit codes, JSON
//! errors on stderr, "access denied" versus "authentication failed").

mod common;

use kura_client::units::human_size;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::KuraServer;
use common::auth::{ADMIN, ADMIN_PASSWORD, Cred, Reg, b64_encode, start_local};
use common::cli::{Cli, free_port, oci};
use common::oci_layout::{
    self, Image, ImageIndex, MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_OCI_MANIFEST, OciLayout,
    sha256_digest,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A manifest as the registry serves it over HTTP.
struct Served {
    status: StatusCode,
    digest: Option<String>,
    content_type: Option<String>,
    body: Vec<u8>,
}

async fn get_manifest(reg: &Reg, cred: &Cred, repo: &str, reference: &str) -> Served {
    let resp = reg
        .req(
            Method::GET,
            &format!("/v2/{repo}/manifests/{reference}"),
            cred,
        )
        .header("accept", MANIFEST_ACCEPT)
        .send()
        .await
        .expect("GET manifest");
    let status = resp.status();
    let h = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let digest = h("docker-content-digest");
    let content_type = h("content-type");
    let body = resp.bytes().await.expect("body").to_vec();
    Served {
        status,
        digest,
        content_type,
        body,
    }
}

/// The digest `repo:reference` resolves to (asserting 200 and that the body hashes to it).
async fn served_digest(reg: &Reg, cred: &Cred, repo: &str, reference: &str) -> String {
    let s = get_manifest(reg, cred, repo, reference).await;
    assert_eq!(
        s.status,
        StatusCode::OK,
        "GET /v2/{repo}/manifests/{reference}: {}",
        String::from_utf8_lossy(&s.body)
    );
    let d = s.digest.expect("Docker-Content-Digest");
    assert_eq!(d, sha256_digest(&s.body), "served bytes hash to the digest");
    d
}

async fn manifest_status(reg: &Reg, cred: &Cred, repo: &str, reference: &str) -> StatusCode {
    get_manifest(reg, cred, repo, reference).await.status
}

async fn blob_status(reg: &Reg, cred: &Cred, repo: &str, digest: &str) -> StatusCode {
    reg.send(Method::HEAD, &format!("/v2/{repo}/blobs/{digest}"), cred)
        .await
        .status()
}

/// `kura_registry_events_total{event=...}` from the server's /metrics (0 when absent).
async fn event_count(reg: &Reg, event: &str) -> u64 {
    let text = reg
        .http
        .get(reg.url("/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    let label = format!("event=\"{event}\"");
    text.lines()
        .filter(|l| l.starts_with("kura_registry_events_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next())
        .filter_map(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

fn parse_json(s: &str, what: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{what}: not JSON ({e}):\n{s}"))
}

/// Every blob file of an OCI layout hashes to its name; returns the digests present.
fn verify_layout_blobs(root: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let dir = root.join("blobs").join("sha256");
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let entry = entry.expect("dir entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        let data = std::fs::read(entry.path()).expect("read blob");
        let digest = format!("sha256:{name}");
        assert_eq!(
            sha256_digest(&data),
            digest,
            "blob file {} does not hash to its name",
            entry.path().display()
        );
        out.insert(digest);
    }
    out
}

/// A minimal tar reader (ustar and GNU long names): regular files by name.
fn read_tar(path: &Path) -> BTreeMap<String, Vec<u8>> {
    fn cstr(b: &[u8]) -> String {
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        String::from_utf8_lossy(&b[..end]).into_owned()
    }
    fn octal(b: &[u8]) -> usize {
        let s = cstr(b);
        usize::from_str_radix(s.trim(), 8).unwrap_or_else(|_| panic!("bad tar size field {s:?}"))
    }
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut files = BTreeMap::new();
    let mut off = 0;
    let mut long_name: Option<String> = None;
    while off + 512 <= data.len() {
        let h = &data[off..off + 512];
        if h.iter().all(|&b| b == 0) {
            break;
        }
        let mut name = cstr(&h[..100]);
        if &h[257..263] == b"ustar\0" {
            let prefix = cstr(&h[345..500]);
            if !prefix.is_empty() {
                name = format!("{prefix}/{name}");
            }
        }
        let size = octal(&h[124..136]);
        let typeflag = h[156];
        off += 512;
        assert!(off + size <= data.len(), "truncated tar entry {name}");
        let body = data[off..off + size].to_vec();
        off += size.div_ceil(512) * 512;
        match typeflag {
            b'L' => long_name = Some(cstr(&body)),
            b'0' | 0 => {
                let n = long_name.take().unwrap_or(name);
                files.insert(n.trim_start_matches("./").to_string(), body);
            }
            _ => long_name = None,
        }
    }
    files
}

fn blob_sum(image: &Image) -> u64 {
    image.blobs().iter().map(|b| b.size).sum()
}

/// A layout at `root` holding one small image (layers of `sizes` bytes) tagged `tag`.
fn small_layout(root: &Path, tag: &str, seed: u64, sizes: &[usize]) -> Image {
    let mut layout = OciLayout::create(root);
    let image = layout.add_image(seed, "amd64", "linux", sizes);
    layout.tag(tag, &image.manifest);
    image
}

/// The image of a multi-arch index that `kura` picks by default on this machine.
fn host_image(index: &ImageIndex) -> Option<&Image> {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    index.images.iter().find(|i| i.architecture == arch)
}

fn image_by_arch<'a>(index: &'a ImageIndex, arch: &str) -> &'a Image {
    index
        .images
        .iter()
        .find(|i| i.architecture == arch)
        .expect("image for arch")
}

/// `kura push` of a layout tag, asserting success.
fn push(cli: &Cli, dir: &Path, tag: &str, dest: &str) -> String {
    cli.ok(&["push", &oci(dir, tag), dest])
}

fn logged_in_admin(srv: &KuraServer) -> Cli {
    let cli = Cli::new();
    let out = cli.login(&srv.addr, ADMIN, ADMIN_PASSWORD);
    assert!(
        out.status.success(),
        "login as admin failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    cli
}

/// Pushes an OCI artifact (empty config, one layer) whose `subject` is `subject`, by digest.
async fn push_referrer(
    reg: &Reg,
    cred: &Cred,
    repo: &str,
    subject: &common::oci_layout::Descriptor,
    artifact_type: &str,
) -> String {
    let empty = reg.push_blob(cred, repo, b"{}").await;
    let payload = format!("signature over {}", subject.digest).into_bytes();
    let payload_digest = reg.push_blob(cred, repo, &payload).await;
    let body = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
        "layers": [{"mediaType": "application/vnd.example.signature", "digest": payload_digest,
                    "size": payload.len()}],
        "subject": subject.to_json(),
    }))
    .unwrap();
    let digest = sha256_digest(&body);
    let resp = reg.put_manifest(cred, repo, &digest, &body).await;
    assert_eq!(
        resp.status(),
        StatusCode::CREATED,
        "PUT referrer: {}",
        common::api::describe(resp).await
    );
    digest
}

// ---------------------------------------------------------------------------------------------
// 1. login / logout
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn login_writes_docker_config_and_logout_removes_it() {
    let srv = start_local(&[]);
    let reg = Reg::new(&srv);
    let admin = Cred::admin();
    // A private project with an image, for the pull after logout.
    reg.create_project(&admin, "secret", false).await;
    let pushed = reg.push_image(&admin, "secret/app", "v1").await;

    let cli = Cli::new();
    let config_path = cli.docker_config_file();
    let existing = json!({
        "auths": {"other.example:5000": {"auth": b64_encode(b"bob:hunter2")}},
        "psFormat": "table {{.ID}}\\t{{.Names}}",
        "detachKeys": "ctrl-e,e",
    });
    std::fs::write(&config_path, serde_json::to_vec_pretty(&existing).unwrap()).unwrap();

    let out = cli.login(&srv.addr, ADMIN, ADMIN_PASSWORD);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "login failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Login Succeeded"), "{stdout}");

    let written: Value = serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
    assert_eq!(
        written["auths"][srv.addr.as_str()]["auth"],
        json!(b64_encode(format!("{ADMIN}:{ADMIN_PASSWORD}").as_bytes())),
        "config after login: {written}"
    );
    assert_eq!(
        written["auths"]["other.example:5000"], existing["auths"]["other.example:5000"],
        "other registries' credentials are kept: {written}"
    );
    assert_eq!(written["psFormat"], existing["psFormat"], "{written}");
    assert_eq!(written["detachKeys"], existing["detachKeys"], "{written}");
    let mode = std::fs::metadata(&config_path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "config.json mode is {mode:o}");

    // The stored credentials work: the private image can be pulled.
    let pulled = tempfile::tempdir().unwrap();
    let dest = pulled.path().join("layout");
    cli.ok(&[
        "pull",
        &format!("{}/secret/app:v1", srv.addr),
        &format!("oci:{}", dest.display()),
    ]);
    assert_eq!(oci_layout::read_refs(&dest)[0].1.digest, pushed.digest);

    // A wrong password: exit 3, a clear message, the config untouched.
    let before = std::fs::read(&config_path).unwrap();
    let out = cli.login(&srv.addr, ADMIN, "wrong-password");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "wrong password: {stderr}");
    assert!(
        stderr.contains("authentication failed") && stderr.contains(ADMIN),
        "the message says the login failed and for whom: {stderr}"
    );
    assert!(
        !stderr.contains("wrong-password"),
        "the password is never printed: {stderr}"
    );
    assert_eq!(
        std::fs::read(&config_path).unwrap(),
        before,
        "a failed login leaves config.json unchanged"
    );

    // Logout removes the entry and nothing else.
    let out = cli.ok(&["logout", &srv.addr]);
    assert!(out.contains("Removed login credentials"), "{out}");
    let after: Value = serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
    assert!(
        after["auths"].get(srv.addr.as_str()).is_none(),
        "entry still there after logout: {after}"
    );
    assert_eq!(
        after["auths"]["other.example:5000"],
        existing["auths"]["other.example:5000"]
    );
    assert_eq!(after["psFormat"], existing["psFormat"]);
    let out = cli.ok(&["logout", &srv.addr]);
    assert!(out.contains("Not logged in"), "second logout: {out}");

    // Anonymous now: the private image is refused with a hint to log in.
    let dest2 = pulled.path().join("layout2");
    let stderr = cli.fails(
        &[
            "pull",
            &format!("{}/secret/app:v1", srv.addr),
            &format!("oci:{}", dest2.display()),
        ],
        3,
    );
    assert!(
        stderr.contains("kura login"),
        "after logout the error tells to run `kura login`: {stderr}"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. push
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn push_single_image_and_repush_transfers_nothing() {
    let srv = KuraServer::start();
    let reg = Reg::new(&srv);
    let anon = Cred::Anonymous;
    let cli = Cli::new();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("src");
    let image = oci_layout::single_image_layout(&dir, "v1", 3, 11);
    let dest = format!("{}/proj/app:v1", srv.addr);

    let out = cli.ok(&["--format", "json", "push", &oci(&dir, "v1"), &dest]);
    let report = parse_json(&out, "push report");
    assert_eq!(report["digest"], json!(image.manifest.digest), "{report}");
    assert_eq!(report["blobs"], json!(4), "{report}");
    assert_eq!(report["blobs_copied"], json!(4), "{report}");
    assert_eq!(report["bytes_copied"], json!(blob_sum(&image)), "{report}");

    let s = get_manifest(&reg, &anon, "proj/app", "v1").await;
    assert_eq!(s.status, StatusCode::OK);
    assert_eq!(s.digest.as_deref(), Some(image.manifest.digest.as_str()));
    assert_eq!(
        s.body, image.manifest_bytes,
        "manifest stored byte for byte"
    );
    assert_eq!(s.content_type.as_deref(), Some(MEDIA_TYPE_OCI_MANIFEST));
    for b in image.blobs() {
        assert_eq!(
            blob_status(&reg, &anon, "proj/app", &b.digest).await,
            StatusCode::OK
        );
    }

    // The same push again: nothing moves.
    let pushed_before = event_count(&reg, "blob_pushed").await;
    let out = cli.ok(&["--format", "json", "push", &oci(&dir, "v1"), &dest]);
    let report = parse_json(&out, "second push report");
    assert_eq!(report["digest"], json!(image.manifest.digest), "{report}");
    assert_eq!(report["blobs_copied"], json!(0), "{report}");
    assert_eq!(report["bytes_copied"], json!(0), "{report}");
    assert_eq!(report["blobs_skipped"], json!(4), "{report}");
    assert_eq!(event_count(&reg, "blob_pushed").await, pushed_before);

    // Text output names the destination and the digest.
    let out = push(&cli, &dir, "v1", &dest);
    assert!(
        out.contains(&dest) && out.contains(&image.manifest.digest),
        "text report: {out}"
    );
}

#[tokio::test]
async fn push_multi_arch_index() {
    let srv = KuraServer::start();
    let reg = Reg::new(&srv);
    let anon = Cred::Anonymous;
    let cli = Cli::new();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("src");
    let index = oci_layout::multi_arch_layout(&dir, "v1", 21);

    let out = cli.ok(&[
        "--format",
        "json",
        "push",
        &oci(&dir, "v1"),
        &format!("{}/proj/multi:v1", srv.addr),
    ]);
    let report = parse_json(&out, "push report");
    assert_eq!(report["digest"], json!(index.index.digest), "{report}");
    assert_eq!(report["manifests"], json!(3), "{report}");
    assert_eq!(report["blobs_copied"], json!(6), "{report}");

    let s = get_manifest(&reg, &anon, "proj/multi", "v1").await;
    assert_eq!(s.status, StatusCode::OK);
    assert_eq!(s.digest.as_deref(), Some(index.index.digest.as_str()));
    assert_eq!(s.body, index.index_bytes);
    assert_eq!(s.content_type.as_deref(), Some(MEDIA_TYPE_OCI_INDEX));
    for img in &index.images {
        let d = served_digest(&reg, &anon, "proj/multi", &img.manifest.digest).await;
        assert_eq!(d, img.manifest.digest);
        for b in img.blobs() {
            assert_eq!(
                blob_status(&reg, &anon, "proj/multi", &b.digest).await,
                StatusCode::OK
            );
        }
    }

    // Again: nothing transferred.
    let out = cli.ok(&[
        "--format",
        "json",
        "push",
        &oci(&dir, "v1"),
        &format!("{}/proj/multi:v1", srv.addr),
    ]);
    let report = parse_json(&out, "second push report");
    assert_eq!(report["blobs_copied"], json!(0), "{report}");
    assert_eq!(report["digest"], json!(index.index.digest), "{report}");
}

#[tokio::test]
async fn push_sends_only_the_missing_blobs() {
    let srv = KuraServer::start();
    let reg = Reg::new(&srv);
    let anon = Cred::Anonymous;
    let cli = Cli::new();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("src");
    let image = small_layout(&dir, "v1", 31, &[40_000, 50_000, 60_000]);
    // Half of the four blobs (the first and the last layer) are already in the repository.
    let present = [image.layers[0].clone(), image.layers[2].clone()];
    for b in &present {
        let data = std::fs::read(oci_layout::blob_path(&dir, &b.digest)).unwrap();
        reg.push_blob(&anon, "proj/half", &data).await;
    }
    let pushed_before = event_count(&reg, "blob_pushed").await;

    let out = cli.ok(&[
        "--format",
        "json",
        "push",
        &oci(&dir, "v1"),
        &format!("{}/proj/half:v1", srv.addr),
    ]);
    let report = parse_json(&out, "push report");
    let missing = image.config.size + image.layers[1].size;
    assert_eq!(report["blobs"], json!(4), "{report}");
    assert_eq!(report["blobs_copied"], json!(2), "{report}");
    assert_eq!(report["blobs_skipped"], json!(2), "{report}");
    assert_eq!(report["bytes_copied"], json!(missing), "{report}");
    assert_eq!(
        event_count(&reg, "blob_pushed").await - pushed_before,
        2,
        "the registry received exactly the two missing blobs"
    );
    assert_eq!(
        served_digest(&reg, &anon, "proj/half", "v1").await,
        image.manifest.digest
    );
}

#[tokio::test]
async fn push_docker_archive_round_trip() {
    let srv = KuraServer::start();
    let reg = Reg::new(&srv);
    let anon = Cred::Anonymous;
    let cli = Cli::new();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let image = small_layout(&src, "v1", 35, &[70_000, 1_234]);
    push(&cli, &src, "v1", &format!("{}/proj/app:v1", srv.addr));
    let tar = tmp.path().join("app.tar");
    cli.ok(&[
        "pull",
        &format!("{}/proj/app:v1", srv.addr),
        &format!("docker-archive:{}", tar.display()),
    ]);

    // `docker load`'s input pushed back: the same config and layers.
    let out = cli.ok(&[
        "--format",
        "json",
        "push",
        &format!("docker-archive:{}", tar.display()),
        &format!("{}/proj/fromtar:v1", srv.addr),
    ]);
    let report = parse_json(&out, "push report");
    assert_eq!(report["blobs"], json!(3), "{report}");
    assert_eq!(report["blobs_copied"], json!(3), "{report}");
    let digest = served_digest(&reg, &anon, "proj/fromtar", "v1").await;
    assert_eq!(report["digest"], json!(digest), "{report}");
    let pushed: Value =
        serde_json::from_slice(&get_manifest(&reg, &anon, "proj/fromtar", "v1").await.body)
            .unwrap();
    assert_eq!(
        pushed["config"]["digest"],
        json!(image.config.digest),
        "{pushed}"
    );
    let layers: Vec<&str> = pushed["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap())
        .collect();
    let want: Vec<&str> = image.layers.iter().map(|l| l.digest.as_str()).collect();
    assert_eq!(layers, want, "{pushed}");

    // An image of the archive picked by its RepoTags name; an unknown name is not found.
    cli.ok(&[
        "push",
        &format!("docker-archive:{}:{}/proj/app:v1", tar.display(), srv.addr),
        &format!("{}/proj/fromtar:v2", srv.addr),
    ]);
    assert_eq!(
        served_digest(&reg, &anon, "proj/fromtar", "v2").await,
        digest
    );
    cli.fails(
        &[
            "push",
            &format!("docker-archive:{}:other/name:v9", tar.display()),
            &format!("{}/proj/fromtar:v3", srv.addr),
        ],
        4,
    );
}

// ---------------------------------------------------------------------------------------------
// 3. pull
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn pull_into_oci_layout_and_docker_archive() {
    let srv = KuraServer::start();
    let cli = Cli::new();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let image = small_layout(&src, "v1", 41, &[120_000, 3_000]);
    push(&cli, &src, "v1", &format!("{}/proj/app:v1", srv.addr));

    // oci:DIR without a tag: the layout's tag is the image's.
    let dest = tmp.path().join("pulled");
    let out = cli.ok(&[
        "--format",
        "json",
        "pull",
        &format!("{}/proj/app:v1", srv.addr),
        &format!("oci:{}", dest.display()),
    ]);
    let report = parse_json(&out, "pull report");
    assert_eq!(report["digest"], json!(image.manifest.digest), "{report}");
    let refs = oci_layout::read_refs(&dest);
    assert_eq!(refs.len(), 1, "{refs:?}");
    assert_eq!(refs[0].0, "v1");
    assert_eq!(refs[0].1.digest, image.manifest.digest);
    assert_eq!(refs[0].1.size, image.manifest.size);
    let present = verify_layout_blobs(&dest);
    let mut want: BTreeSet<String> = image.blobs().into_iter().map(|b| b.digest).collect();
    want.insert(image.manifest.digest.clone());
    assert_eq!(present, want, "the layout holds exactly the image");
    assert_eq!(
        std::fs::read(oci_layout::blob_path(&dest, &image.manifest.digest)).unwrap(),
        image.manifest_bytes
    );
    let marker: Value =
        serde_json::from_slice(&std::fs::read(dest.join("oci-layout")).unwrap()).unwrap();
    assert_eq!(marker["imageLayoutVersion"], json!("1.0.0"));

    // An explicit tag in the destination wins.
    let dest_tagged = tmp.path().join("pulled-tagged");
    cli.ok(&[
        "pull",
        &format!("{}/proj/app:v1", srv.addr),
        &oci(&dest_tagged, "mine"),
    ]);
    let refs = oci_layout::read_refs(&dest_tagged);
    assert_eq!(refs[0].0, "mine");

    // docker-archive: docker's manifest.json plus an OCI index, blobs named by digest.
    let tar = tmp.path().join("app.tar");
    cli.ok(&[
        "pull",
        &format!("{}/proj/app:v1", srv.addr),
        &format!("docker-archive:{}", tar.display()),
    ]);
    let files = read_tar(&tar);
    let names: Vec<&String> = files.keys().collect();
    let manifest_json: Value = serde_json::from_slice(
        files
            .get("manifest.json")
            .unwrap_or_else(|| panic!("no manifest.json in {names:?}")),
    )
    .unwrap();
    let entry = &manifest_json[0];
    let blob_name = |d: &str| format!("blobs/sha256/{}", d.trim_start_matches("sha256:"));
    assert_eq!(
        entry["Config"],
        json!(blob_name(&image.config.digest)),
        "{manifest_json}"
    );
    let layers: Vec<String> = image.layers.iter().map(|l| blob_name(&l.digest)).collect();
    assert_eq!(entry["Layers"], json!(layers), "{manifest_json}");
    assert_eq!(
        entry["RepoTags"],
        json!([format!("{}/proj/app:v1", srv.addr)]),
        "{manifest_json}"
    );
    for (name, data) in &files {
        if let Some(hex) = name.strip_prefix("blobs/sha256/") {
            assert_eq!(
                sha256_digest(data),
                format!("sha256:{hex}"),
                "tar entry {name} hashes to its name"
            );
        }
    }
    for b in image.blobs() {
        assert!(
            files.contains_key(&blob_name(&b.digest)),
            "{names:?} lacks {}",
            b.digest
        );
    }
    let index: Value =
        serde_json::from_slice(files.get("index.json").expect("index.json")).unwrap();
    assert_eq!(
        index["manifests"][0]["digest"],
        json!(image.manifest.digest),
        "{index}"
    );
}

#[tokio::test]
async fn pull_multi_arch_platform_default_and_all() {
    let srv = KuraServer::start();
    let cli = Cli::new();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let index = oci_layout::multi_arch_layout(&src, "v1", 51);
    push(&cli, &src, "v1", &format!("{}/proj/multi:v1", srv.addr));
    let image = format!("{}/proj/multi:v1", srv.addr);

    // --platform linux/arm64: the arm64 image only (the index says arm64/v8).
    let arm = tmp.path().join("arm");
    cli.ok(&[
        "pull",
        "--platform",
        "linux/arm64",
        &image,
        &format!("oci:{}", arm.display()),
    ]);
    let arm64 = image_by_arch(&index, "arm64");
    let refs = oci_layout::read_refs(&arm);
    assert_eq!(refs[0].0, "v1");
    assert_eq!(refs[0].1.digest, arm64.manifest.digest, "{refs:?}");
    let mut want: BTreeSet<String> = arm64.blobs().into_iter().map(|b| b.digest).collect();
    want.insert(arm64.manifest.digest.clone());
    assert_eq!(verify_layout_blobs(&arm), want);

    // Default: this machine's platform.
    let def = tmp.path().join("default");
    match host_image(&index) {
        Some(host) => {
            cli.ok(&["pull", &image, &format!("oci:{}", def.display())]);
            let refs = oci_layout::read_refs(&def);
            assert_eq!(refs[0].1.digest, host.manifest.digest, "{refs:?}");
            let mut want: BTreeSet<String> = host.blobs().into_iter().map(|b| b.digest).collect();
            want.insert(host.manifest.digest.clone());
            assert_eq!(verify_layout_blobs(&def), want);
        }
        None => {
            let err = cli.fails(&["pull", &image, &format!("oci:{}", def.display())], 4);
            assert!(err.contains("--platform"), "{err}");
        }
    }

    // --all: the index, both images.
    let all = tmp.path().join("all");
    cli.ok(&["pull", "--all", &image, &format!("oci:{}", all.display())]);
    let refs = oci_layout::read_refs(&all);
    assert_eq!(refs[0].1.digest, index.index.digest, "{refs:?}");
    assert_eq!(refs[0].1.media_type, MEDIA_TYPE_OCI_INDEX);
    let mut want = BTreeSet::from([index.index.digest.clone()]);
    for img in &index.images {
        want.insert(img.manifest.digest.clone());
        want.extend(img.blobs().into_iter().map(|b| b.digest));
    }
    assert_eq!(verify_layout_blobs(&all), want);

    // A platform the index lacks: not found, listing what it has.
    let err = cli.fails(
        &[
            "pull",
            "--platform",
            "linux/s390x",
            &image,
            &format!("oci:{}", tmp.path().join("none").display()),
        ],
        4,
    );
    assert!(err.contains("linux/amd64"), "{err}");
}

#[tokio::test]
async fn pull_of_a_missing_tag_exits_4() {
    let srv = KuraServer::start();
    let cli = Cli::new();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    small_layout(&src, "v1", 61, &[1_000]);
    push(&cli, &src, "v1", &format!("{}/proj/app:v1", srv.addr));
    let dest = tmp.path().join("out");
    let err = cli.fails(
        &[
            "pull",
            &format!("{}/proj/app:nope", srv.addr),
            &format!("oci:{}", dest.display()),
        ],
        4,
    );
    assert!(
        err.contains("nope"),
        "the error names the missing tag: {err}"
    );
    let err = cli.fails(
        &[
            "pull",
            &format!("{}/proj/absent:v1", srv.addr),
            &format!("oci:{}", dest.display()),
        ],
        4,
    );
    assert!(err.contains("absent"), "{err}");
    assert!(
        !dest.join("index.json").exists() || oci_layout::read_refs(&dest).is_empty(),
        "a failed pull tags nothing"
    );
}

// ---------------------------------------------------------------------------------------------
// 4. cp
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn cp_inside_one_kura_mounts_blobs() {
    let srv = KuraServer::start();
    let reg = Reg::new(&srv);
    let anon = Cred::Anonymous;
    let cli = Cli::new();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let image = small_layout(&src, "v1", 71, &[100_000, 20_000]);
    push(&cli, &src, "v1", &format!("{}/proj/src:v1", srv.addr));
    let pushed_before = event_count(&reg, "blob_pushed").await;

    let out = cli.ok(&[
        "--format",
        "json",
        "cp",
        &format!("{}/proj/src:v1", srv.addr),
        &format!("{}/other/dst:v1", srv.addr),
    ]);
    let report = parse_json(&out, "cp report");
    assert_eq!(report["digest"], json!(image.manifest.digest), "{report}");
    assert_eq!(report["blobs_mounted"], json!(3), "{report}");
    assert_eq!(report["blobs_copied"], json!(0), "{report}");
    assert_eq!(report["bytes_copied"], json!(0), "{report}");
    assert_eq!(
        event_count(&reg, "blob_pushed").await,
        pushed_before,
        "no upload"
    );
    assert_eq!(
        served_digest(&reg, &anon, "other/dst", "v1").await,
        image.manifest.digest
    );
    for b in image.blobs() {
        assert_eq!(
            blob_status(&reg, &anon, "other/dst", &b.digest).await,
            StatusCode::OK
        );
    }
}

#[tokio::test]
async fn cp_between_two_kuras_copies_everything() {
    let a = KuraServer::start();
    let b = KuraServer::start();
    let (ra, rb) = (Reg::new(&a), Reg::new(&b));
    let anon = Cred::Anonymous;
    let cli = Cli::new();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let image = small_layout(&src, "v1", 81, &[150_000, 7_000]);
    push(&cli, &src, "v1", &format!("{}/proj/app:v1", a.addr));

    let out = cli.ok(&[
        "--format",
        "json",
        "cp",
        &format!("{}/proj/app:v1", a.addr),
        &format!("{}/mirror/app:v1", b.addr),
    ]);
    let report = parse_json(&out, "cp report");
    assert_eq!(report["blobs_copied"], json!(3), "{report}");
    assert_eq!(report["blobs_mounted"], json!(0), "{report}");
    assert_eq!(report["bytes_copied"], json!(blob_sum(&image)), "{report}");
    let da = served_digest(&ra, &anon, "proj/app", "v1").await;
    let db = served_digest(&rb, &anon, "mirror/app", "v1").await;
    assert_eq!(da, image.manifest.digest);
    assert_eq!(db, da, "the copy has the same digest");
    assert_eq!(
        get_manifest(&rb, &anon, "mirror/app", "v1").await.body,
        image.manifest_bytes
    );
}

#[tokio::test]
async fn cp_all_copies_the_whole_index() {
    let a = KuraServer::start();
    let b = KuraServer::start();
    let rb = Reg::new(&b);
    let anon = Cred::Anonymous;
    let cli = Cli::new();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let index = oci_layout::multi_arch_layout(&src, "v1", 91);
    push(&cli, &src, "v1", &format!("{}/proj/multi:v1", a.addr));

    let out = cli.ok(&[
        "--format",
        "json",
        "cp",
        "--all",
        &format!("{}/proj/multi:v1", a.addr),
        &format!("{}/mirror/multi:v1", b.addr),
    ]);
    let report = parse_json(&out, "cp report");
    assert_eq!(report["digest"], json!(index.index.digest), "{report}");
    assert_eq!(report["manifests"], json!(3), "{report}");
    assert_eq!(report["blobs_copied"], json!(6), "{report}");
    assert_eq!(
        served_digest(&rb, &anon, "mirror/multi", "v1").await,
        index.index.digest
    );
    for img in &index.images {
        assert_eq!(
            served_digest(&rb, &anon, "mirror/multi", &img.manifest.digest).await,
            img.manifest.digest
        );
        for blob in img.blobs() {
            assert_eq!(
                blob_status(&rb, &anon, "mirror/multi", &blob.digest).await,
                StatusCode::OK
            );
        }
    }

    // Without --all only one platform's image is copied.
    let out = cli.ok(&[
        "--format",
        "json",
        "cp",
        "--platform",
        "linux/arm64",
        &format!("{}/proj/multi:v1", a.addr),
        &format!("{}/single/multi:v1", b.addr),
    ]);
    let report = parse_json(&out, "cp report");
    let arm64 = image_by_arch(&index, "arm64");
    assert_eq!(report["digest"], json!(arm64.manifest.digest), "{report}");
    assert_eq!(
        served_digest(&rb, &anon, "single/multi", "v1").await,
        arm64.manifest.digest
    );
}

// ---------------------------------------------------------------------------------------------
// 5. tag
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn tag_in_the_same_and_another_repository() {
    let srv = KuraServer::start();
    let reg = Reg::new(&srv);
    let anon = Cred::Anonymous;
    let cli = Cli::new();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let image = small_layout(&src, "v1", 101, &[90_000, 2_000]);
    push(&cli, &src, "v1", &format!("{}/proj/app:v1", srv.addr));
    let pushed_before = event_count(&reg, "blob_pushed").await;
    let mounted_before = event_count(&reg, "blob_mounted").await;

    // Same repository.
    let out = cli.ok(&["tag", &format!("{}/proj/app:v1", srv.addr), "stable"]);
    assert!(out.contains(&image.manifest.digest), "{out}");
    assert_eq!(
        served_digest(&reg, &anon, "proj/app", "stable").await,
        image.manifest.digest
    );
    assert_eq!(
        served_digest(&reg, &anon, "proj/app", "v1").await,
        image.manifest.digest,
        "the source tag is unchanged"
    );
    assert_eq!(
        event_count(&reg, "blob_pushed").await,
        pushed_before,
        "no blob upload"
    );
    assert_eq!(event_count(&reg, "blob_mounted").await, mounted_before);

    // By digest, JSON output.
    let out = cli.ok(&[
        "--format",
        "json",
        "tag",
        &format!("{}/proj/app@{}", srv.addr, image.manifest.digest),
        "1.0.0",
    ]);
    let v = parse_json(&out, "tag output");
    assert_eq!(v["digest"], json!(image.manifest.digest), "{v}");
    assert_eq!(
        served_digest(&reg, &anon, "proj/app", "1.0.0").await,
        image.manifest.digest
    );

    // Another repository of the same registry: blobs mounted, none uploaded.
    cli.ok(&[
        "tag",
        &format!("{}/proj/app:v1", srv.addr),
        &format!("{}/prod/app:release", srv.addr),
    ]);
    assert_eq!(
        served_digest(&reg, &anon, "prod/app", "release").await,
        image.manifest.digest
    );
    assert_eq!(
        event_count(&reg, "blob_pushed").await,
        pushed_before,
        "no blob upload"
    );
    assert_eq!(event_count(&reg, "blob_mounted").await - mounted_before, 3);

    // Another registry is refused (usage).
    let err = cli.fails(
        &[
            "tag",
            &format!("{}/proj/app:v1", srv.addr),
            "other.example:5000/proj/app:v1",
        ],
        2,
    );
    assert!(err.contains("kura cp"), "{err}");
    // A missing source: not found.
    cli.fails(&["tag", &format!("{}/proj/app:nope", srv.addr), "x"], 4);
}

// ---------------------------------------------------------------------------------------------
// 6. ls
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn ls_lists_repositories_and_tags() {
    let srv = KuraServer::start();
    let cli = Cli::new();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let image = small_layout(&src, "v1", 111, &[33_000, 4_444]);
    let multi_src = tmp.path().join("multi");
    let index = oci_layout::multi_arch_layout(&multi_src, "v1", 112);
    push(&cli, &src, "v1", &format!("{}/proj/app:v1", srv.addr));
    push(&cli, &src, "v1", &format!("{}/proj/app:v2", srv.addr));
    push(
        &cli,
        &multi_src,
        "v1",
        &format!("{}/proj/multi:v1", srv.addr),
    );

    // Repositories.
    let out = cli.ok(&["ls", &srv.addr]);
    let repos: Vec<&str> = out.lines().collect();
    assert_eq!(repos, vec!["proj/app", "proj/multi"], "{out}");
    let v = parse_json(&cli.ok(&["--format", "json", "ls", &srv.addr]), "ls json");
    assert_eq!(v, json!(["proj/app", "proj/multi"]));

    // Tags of a repository: the docker images table.
    let out = cli.ok(&["ls", &format!("{}/proj/app", srv.addr)]);
    let lines: Vec<&str> = out.lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        vec!["REPOSITORY", "TAG", "DIGEST", "SIZE", "CREATED", "PLATFORM"],
        "{out}"
    );
    assert_eq!(lines.len(), 3, "a row per tag: {out}");
    let short = &image.manifest.digest[..19];
    for (row, tag) in lines[1..].iter().zip(["v1", "v2"]) {
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells[0], format!("{}/proj/app", srv.addr), "{row}");
        assert_eq!(cells[1], tag, "{row}");
        assert_eq!(cells[2], short, "{row}");
        assert_eq!(cells[3], human_size(blob_sum(&image)), "{row}");
        assert!(row.contains("ago"), "CREATED column: {row}");
        assert_eq!(*cells.last().unwrap(), "linux/amd64", "{row}");
    }
    // --no-trunc shows the whole digest; -q only the tags.
    let out = cli.ok(&["ls", "--no-trunc", &format!("{}/proj/app", srv.addr)]);
    assert!(out.contains(&image.manifest.digest), "{out}");
    let out = cli.ok(&["-q", "ls", &format!("{}/proj/app", srv.addr)]);
    assert_eq!(out.lines().collect::<Vec<_>>(), vec!["v1", "v2"]);

    // JSON: sizes, platforms, creation times.
    let v = parse_json(
        &cli.ok(&["--format", "json", "ls", &format!("{}/proj/app", srv.addr)]),
        "ls json",
    );
    let rows = v.as_array().expect("array");
    assert_eq!(rows.len(), 2, "{v}");
    for r in rows {
        assert_eq!(r["digest"], json!(image.manifest.digest), "{r}");
        assert_eq!(r["size"], json!(blob_sum(&image)), "{r}");
        assert_eq!(r["platforms"], json!(["linux/amd64"]), "{r}");
        assert_eq!(r["created"], json!("2024-01-01T00:00:00Z"), "{r}");
        assert_eq!(r["media_type"], json!(MEDIA_TYPE_OCI_MANIFEST), "{r}");
    }
    let v = parse_json(
        &cli.ok(&[
            "--format",
            "json",
            "ls",
            &format!("{}/proj/multi", srv.addr),
        ]),
        "ls json (index)",
    );
    let r = &v[0];
    assert_eq!(r["tag"], json!("v1"), "{v}");
    assert_eq!(r["digest"], json!(index.index.digest), "{r}");
    assert_eq!(r["media_type"], json!(MEDIA_TYPE_OCI_INDEX), "{r}");
    let total: u64 = index.images.iter().map(blob_sum).sum();
    assert_eq!(r["size"], json!(total), "size over all platforms: {r}");
    assert_eq!(
        r["platforms"],
        json!(["linux/amd64", "linux/arm64/v8"]),
        "{r}"
    );
    assert_eq!(r["created"], json!("2024-01-01T00:00:00Z"), "{r}");

    // One tag only.
    let v = parse_json(
        &cli.ok(&[
            "--format",
            "json",
            "ls",
            &format!("{}/proj/app:v2", srv.addr),
        ]),
        "ls json (one tag)",
    );
    assert_eq!(v.as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(v[0]["tag"], json!("v2"));

    // A repository that does not exist.
    cli.fails(&["ls", &format!("{}/proj/absent", srv.addr)], 4);
}

// ---------------------------------------------------------------------------------------------
// 7. inspect
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn inspect_text_json_raw_and_referrers() {
    let srv = KuraServer::start();
    let reg = Reg::new(&srv);
    let anon = Cred::Anonymous;
    let cli = Cli::new();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let image = small_layout(&src, "v1", 121, &[10_000, 20_000]);
    let multi_src = tmp.path().join("multi");
    let index = oci_layout::multi_arch_layout(&multi_src, "v1", 122);
    let name = format!("{}/proj/app:v1", srv.addr);
    push(&cli, &src, "v1", &name);
    push(
        &cli,
        &multi_src,
        "v1",
        &format!("{}/proj/multi:v1", srv.addr),
    );

    // Text.
    let out = cli.ok(&["inspect", &name]);
    assert!(
        out.contains(&format!("Digest:       {}", image.manifest.digest)),
        "{out}"
    );
    assert!(out.contains("Platform:     linux/amd64"), "{out}");
    assert!(out.contains(&image.config.digest), "{out}");
    assert!(out.contains("Layers:       2"), "{out}");
    for l in &image.layers {
        assert!(out.contains(&l.digest), "{out}");
    }
    assert!(out.contains("Referrers:    0"), "{out}");

    // JSON.
    let v = parse_json(
        &cli.ok(&["--format", "json", "inspect", &name]),
        "inspect json",
    );
    assert_eq!(v["digest"], json!(image.manifest.digest), "{v}");
    assert_eq!(v["media_type"], json!(MEDIA_TYPE_OCI_MANIFEST), "{v}");
    assert_eq!(v["size"], json!(image.manifest.size), "{v}");
    assert_eq!(v["platform"], json!("linux/amd64"), "{v}");
    assert_eq!(v["created"], json!("2024-01-01T00:00:00Z"), "{v}");
    let layers: Vec<Value> = image.layers.iter().map(|l| l.to_json()).collect();
    assert_eq!(v["layers"], json!(layers), "{v}");
    assert_eq!(v["config"]["architecture"], json!("amd64"), "{v}");
    assert_eq!(
        v["config"]["rootfs"]["diff_ids"],
        json!(image.diff_ids),
        "{v}"
    );
    assert_eq!(
        v["manifest"],
        serde_json::from_slice::<Value>(&image.manifest_bytes).unwrap()
    );
    assert_eq!(v["referrers"], json!([]), "{v}");

    // --raw: the stored bytes exactly.
    let out = cli.run(&["inspect", "--raw", &name]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, image.manifest_bytes, "--raw is byte-identical");
    let out = cli.run(&["inspect", "--raw", &format!("{}/proj/multi:v1", srv.addr)]);
    assert_eq!(out.stdout, index.index_bytes);

    // The index: its platforms.
    let v = parse_json(
        &cli.ok(&[
            "--format",
            "json",
            "inspect",
            &format!("{}/proj/multi:v1", srv.addr),
        ]),
        "inspect json (index)",
    );
    assert_eq!(v["digest"], json!(index.index.digest), "{v}");
    let platforms = v["platforms"].as_array().expect("platforms");
    assert_eq!(platforms.len(), 2, "{v}");
    for (p, img) in platforms.iter().zip(&index.images) {
        assert_eq!(p["digest"], json!(img.manifest.digest), "{v}");
        assert_eq!(p["size"], json!(img.manifest.size), "{v}");
        assert_eq!(
            p["platform"]["architecture"],
            json!(img.architecture),
            "{v}"
        );
        assert_eq!(p["platform"]["os"], json!("linux"), "{v}");
    }
    let out = cli.ok(&["inspect", &format!("{}/proj/multi:v1", srv.addr)]);
    assert!(out.contains("Platforms:    2"), "{out}");
    assert!(out.contains("linux/arm64/v8"), "{out}");

    // A referrer pushed through the API appears.
    let referrer = push_referrer(
        &reg,
        &anon,
        "proj/app",
        &image.manifest,
        "application/vnd.example.signature.v1",
    )
    .await;
    let v = parse_json(
        &cli.ok(&["--format", "json", "inspect", &name]),
        "inspect json",
    );
    let refs = v["referrers"].as_array().expect("referrers");
    assert_eq!(refs.len(), 1, "{v}");
    assert_eq!(refs[0]["digest"], json!(referrer), "{v}");
    assert_eq!(
        refs[0]["artifactType"],
        json!("application/vnd.example.signature.v1"),
        "{v}"
    );
    let out = cli.ok(&["inspect", &name]);
    assert!(out.contains("Referrers:    1"), "{out}");
    assert!(out.contains(&referrer), "{out}");
    assert!(
        out.contains("application/vnd.example.signature.v1"),
        "{out}"
    );

    // Inspect by digest; a missing tag.
    let v = parse_json(
        &cli.ok(&[
            "--format",
            "json",
            "inspect",
            &format!("{}/proj/app@{}", srv.addr, image.manifest.digest),
        ]),
        "inspect by digest",
    );
    assert_eq!(v["digest"], json!(image.manifest.digest));
    cli.fails(&["inspect", &format!("{}/proj/app:nope", srv.addr)], 4);
}

// ---------------------------------------------------------------------------------------------
// 8. rm
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn rm_by_tag_and_by_digest() {
    let srv = KuraServer::start();
    let reg = Reg::new(&srv);
    let anon = Cred::Anonymous;
    let cli = Cli::new();
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    let img_a = small_layout(&a, "v1", 131, &[5_000]);
    let img_b = small_layout(&b, "v2", 132, &[6_000]);
    push(&cli, &a, "v1", &format!("{}/proj/app:v1", srv.addr));
    push(&cli, &a, "v1", &format!("{}/proj/app:keep", srv.addr));
    push(&cli, &b, "v2", &format!("{}/proj/app:v2", srv.addr));
    push(&cli, &b, "v2", &format!("{}/proj/app:v2-alias", srv.addr));

    // By tag: the tag goes, the manifest (and its other tag) stays.
    let out = cli.ok(&["rm", &format!("{}/proj/app:v1", srv.addr)]);
    assert!(out.contains("Deleted"), "{out}");
    assert_eq!(
        manifest_status(&reg, &anon, "proj/app", "v1").await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        served_digest(&reg, &anon, "proj/app", &img_a.manifest.digest).await,
        img_a.manifest.digest,
        "the manifest is still reachable by digest"
    );
    assert_eq!(
        served_digest(&reg, &anon, "proj/app", "keep").await,
        img_a.manifest.digest
    );

    // By digest: the manifest and every tag on it go.
    let out = cli.ok(&[
        "--format",
        "json",
        "rm",
        &format!("{}/proj/app@{}", srv.addr, img_b.manifest.digest),
    ]);
    let v = parse_json(&out, "rm json");
    assert_eq!(v["deleted"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(
        manifest_status(&reg, &anon, "proj/app", &img_b.manifest.digest).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        manifest_status(&reg, &anon, "proj/app", "v2").await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        manifest_status(&reg, &anon, "proj/app", "v2-alias").await,
        StatusCode::NOT_FOUND
    );

    // A missing tag: exit 4.
    let err = cli.fails(&["rm", &format!("{}/proj/app:v1", srv.addr)], 4);
    assert!(err.contains("v1"), "{err}");
    // Neither tag nor digest: usage.
    cli.fails(&["rm", &format!("{}/proj/app", srv.addr)], 2);
}

// ---------------------------------------------------------------------------------------------
// 9. prune
// ---------------------------------------------------------------------------------------------

/// A local-mode server with project `team`, and an admin client logged in.
async fn prune_setup() -> (KuraServer, Reg, Cli) {
    let srv = start_local(&[]);
    let reg = Reg::new(&srv);
    reg.create_project(&Cred::admin(), "team", false).await;
    let cli = logged_in_admin(&srv);
    (srv, reg, cli)
}

/// Writes one image per `(tag, seed)` into a layout at `dir` and pushes each under its tag to
/// `dest_repo` (distinct images, pushed one after another, so push times are ordered).
fn push_images(cli: &Cli, dir: &Path, dest_repo: &str, tags: &[(&str, u64)]) -> Vec<Image> {
    let mut layout = OciLayout::create(dir);
    let mut out = Vec::new();
    for (tag, seed) in tags {
        let image = layout.add_image(*seed, "amd64", "linux", &[2_000 + *seed as usize]);
        layout.tag(tag, &image.manifest);
        push(cli, dir, tag, &format!("{dest_repo}:{tag}"));
        // Push times are milliseconds: keep them apart.
        std::thread::sleep(std::time::Duration::from_millis(5));
        out.push(image);
    }
    out
}

#[tokio::test]
async fn prune_dangling_is_a_dry_run_unless_forced() {
    let (srv, reg, cli) = prune_setup().await;
    let admin = Cred::admin();
    let tmp = tempfile::tempdir().unwrap();
    let repo = format!("{}/team/app", srv.addr);
    // Two pushes to `latest`: the first image is left untagged.
    let imgs = push_images(
        &cli,
        &tmp.path().join("l"),
        &repo,
        &[("latest", 1), ("other", 2)],
    );
    push(
        &cli,
        &tmp.path().join("l"),
        "other",
        &format!("{repo}:latest"),
    );
    let (old, new) = (&imgs[0], &imgs[1]);
    assert_eq!(
        served_digest(&reg, &admin, "team/app", "latest").await,
        new.manifest.digest
    );
    // A signature of the old image: an accessory, it goes with its subject.
    let signature = push_referrer(
        &reg,
        &admin,
        "team/app",
        &old.manifest,
        "application/vnd.example.signature",
    )
    .await;

    // Default: dry run, dangling only.
    let out = cli.ok(&["prune", &repo]);
    assert!(
        out.contains(&old.manifest.digest),
        "lists what would go: {out}"
    );
    assert!(!out.contains(&new.manifest.digest), "{out}");
    assert!(out.contains("would be deleted"), "{out}");
    assert_eq!(
        manifest_status(&reg, &admin, "team/app", &old.manifest.digest).await,
        StatusCode::OK,
        "a dry run deletes nothing"
    );
    let v = parse_json(&cli.ok(&["--format", "json", "prune", &repo]), "prune json");
    assert_eq!(v["dry_run"], json!(true), "{v}");
    assert_eq!(v["count"], json!(1), "{v}");
    assert_eq!(
        v["artifacts"][0]["digest"],
        json!(old.manifest.digest),
        "{v}"
    );
    assert_eq!(v["artifacts"][0]["repository"], json!("team/app"), "{v}");

    // --force deletes it, and only it.
    let v = parse_json(
        &cli.ok(&["--format", "json", "prune", "--force", &repo]),
        "prune --force json",
    );
    assert_eq!(v["dry_run"], json!(false), "{v}");
    assert_eq!(v["count"], json!(1), "{v}");
    assert_eq!(
        manifest_status(&reg, &admin, "team/app", &old.manifest.digest).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        served_digest(&reg, &admin, "team/app", "latest").await,
        new.manifest.digest
    );
    assert_eq!(
        served_digest(&reg, &admin, "team/app", "other").await,
        new.manifest.digest
    );
    assert_eq!(
        manifest_status(&reg, &admin, "team/app", &signature).await,
        StatusCode::NOT_FOUND,
        "the pruned image's signature went with it"
    );
    // Nothing left to prune.
    let out = cli.ok(&["prune", "--force", &repo]);
    assert!(out.contains("Deleted 0 artifacts"), "{out}");
}

#[tokio::test]
async fn prune_tag_filter_keeps_the_most_recent() {
    let (srv, reg, cli) = prune_setup().await;
    let admin = Cred::admin();
    let tmp = tempfile::tempdir().unwrap();
    let repo = format!("{}/team/app", srv.addr);
    let ci = push_images(
        &cli,
        &tmp.path().join("l"),
        &repo,
        &[
            ("ci-1", 11),
            ("ci-2", 12),
            ("ci-3", 13),
            ("ci-4", 14),
            ("release", 15),
        ],
    );
    // The newest artifact carries a matching and a non-matching tag: it is not a candidate.
    let both = push_images(&cli, &tmp.path().join("m"), &repo, &[("ci-5", 16)]);
    cli.ok(&["tag", &format!("{repo}:ci-5"), "stable"]);

    // Dry run first.
    let v = parse_json(
        &cli.ok(&[
            "--format", "json", "prune", &repo, "--filter", "tag=ci-*", "--keep", "2",
        ]),
        "prune dry run",
    );
    let listed: BTreeSet<String> = v["artifacts"]
        .as_array()
        .expect("artifacts")
        .iter()
        .map(|a| a["digest"].as_str().unwrap().to_string())
        .collect();
    let want = BTreeSet::from([ci[0].manifest.digest.clone(), ci[1].manifest.digest.clone()]);
    assert_eq!(listed, want, "ci-1 and ci-2 would go: {v}");
    assert_eq!(
        served_digest(&reg, &admin, "team/app", "ci-1").await,
        ci[0].manifest.digest
    );

    let v = parse_json(
        &cli.ok(&[
            "--format", "json", "prune", &repo, "--filter", "tag=ci-*", "--keep", "2", "--force",
        ]),
        "prune --force",
    );
    assert_eq!(v["count"], json!(2), "{v}");
    for gone in ["ci-1", "ci-2"] {
        assert_eq!(
            manifest_status(&reg, &admin, "team/app", gone).await,
            StatusCode::NOT_FOUND,
            "{gone} pruned"
        );
    }
    for (tag, img) in [("ci-3", &ci[2]), ("ci-4", &ci[3]), ("release", &ci[4])] {
        assert_eq!(
            served_digest(&reg, &admin, "team/app", tag).await,
            img.manifest.digest,
            "{tag} kept"
        );
    }
    for tag in ["ci-5", "stable"] {
        assert_eq!(
            served_digest(&reg, &admin, "team/app", tag).await,
            both[0].manifest.digest,
            "an artifact that also carries a non-matching tag is kept ({tag})"
        );
    }
}

#[tokio::test]
async fn prune_dangling_filter_until_and_unknown_filters() {
    let (srv, reg, cli) = prune_setup().await;
    let admin = Cred::admin();
    let tmp = tempfile::tempdir().unwrap();
    let repo = format!("{}/team/app", srv.addr);
    let imgs = push_images(
        &cli,
        &tmp.path().join("l"),
        &repo,
        &[("v1", 21), ("v2", 22), ("v3", 23)],
    );
    // v1 moves to v2's image: v1's image is untagged now.
    cli.ok(&["tag", &format!("{repo}:v2"), "v1"]);
    // A referrer (untagged, with a subject) of a tagged image is not dangling.
    let referrer = push_referrer(
        &reg,
        &admin,
        "team/app",
        &imgs[2].manifest,
        "application/vnd.example.sbom",
    )
    .await;

    // until=1h: everything was pushed just now, nothing goes.
    let v = parse_json(
        &cli.ok(&[
            "--format", "json", "prune", &repo, "--filter", "until=1h", "--force",
        ]),
        "prune until",
    );
    assert_eq!(v["count"], json!(0), "{v}");
    assert_eq!(v["artifacts"], json!([]), "{v}");
    for tag in ["v1", "v2", "v3"] {
        assert_eq!(
            manifest_status(&reg, &admin, "team/app", tag).await,
            StatusCode::OK
        );
    }
    assert_eq!(
        manifest_status(&reg, &admin, "team/app", &imgs[0].manifest.digest).await,
        StatusCode::OK
    );

    // dangling=true: only the untagged image.
    let v = parse_json(
        &cli.ok(&[
            "--format",
            "json",
            "prune",
            &repo,
            "--filter",
            "dangling=true",
            "--force",
        ]),
        "prune dangling",
    );
    assert_eq!(v["count"], json!(1), "{v}");
    assert_eq!(
        v["artifacts"][0]["digest"],
        json!(imgs[0].manifest.digest),
        "{v}"
    );
    assert_eq!(
        manifest_status(&reg, &admin, "team/app", &imgs[0].manifest.digest).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        served_digest(&reg, &admin, "team/app", "v1").await,
        imgs[1].manifest.digest
    );
    assert_eq!(
        served_digest(&reg, &admin, "team/app", "v3").await,
        imgs[2].manifest.digest
    );
    assert_eq!(
        manifest_status(&reg, &admin, "team/app", &referrer).await,
        StatusCode::OK,
        "the referrer of a tagged image stays"
    );

    // Unknown or malformed filters: usage errors, nothing deleted.
    let err = cli.fails(&["prune", &repo, "--filter", "color=red", "--force"], 2);
    assert!(err.contains("color"), "{err}");
    cli.fails(&["prune", &repo, "--filter", "until=1y", "--force"], 2);
    cli.fails(&["prune", &repo, "--filter", "dangling=maybe"], 2);
    cli.fails(&["prune", &format!("{repo}:v1")], 2);
    assert_eq!(
        manifest_status(&reg, &admin, "team/app", "v2").await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn prune_until_alone_selects_old_untagged_manifests_too() {
    // `until=` with no other filter: "deletes what all its filters select" (README), and
    // docker's `image prune --filter until=` prunes dangling images. Either way an untagged
    // manifest older than the cut-off is selected.
    let (srv, reg, cli) = prune_setup().await;
    let admin = Cred::admin();
    let tmp = tempfile::tempdir().unwrap();
    let repo = format!("{}/team/app", srv.addr);
    let imgs = push_images(
        &cli,
        &tmp.path().join("l"),
        &repo,
        &[("latest", 41), ("next", 42)],
    );
    push(
        &cli,
        &tmp.path().join("l"),
        "next",
        &format!("{repo}:latest"),
    );
    std::thread::sleep(std::time::Duration::from_millis(1_100));
    let v = parse_json(
        &cli.ok(&["--format", "json", "prune", &repo, "--filter", "until=1s"]),
        "prune until=1s",
    );
    let listed: Vec<&str> = v["artifacts"]
        .as_array()
        .expect("artifacts")
        .iter()
        .map(|a| a["digest"].as_str().unwrap())
        .collect();
    assert!(
        listed.contains(&imgs[0].manifest.digest.as_str()),
        "the untagged manifest older than 1s is selected by until=1s: {v}"
    );
    assert_eq!(
        manifest_status(&reg, &admin, "team/app", &imgs[0].manifest.digest).await,
        StatusCode::OK,
        "dry run"
    );
}

#[tokio::test]
async fn prune_a_one_part_repository() {
    // A repository named like its project (`HOST/app`, project `app`).
    let srv = start_local(&[]);
    let reg = Reg::new(&srv);
    let admin = Cred::admin();
    reg.create_project(&admin, "app", false).await;
    let cli = logged_in_admin(&srv);
    let tmp = tempfile::tempdir().unwrap();
    let repo = format!("{}/app", srv.addr);
    let imgs = push_images(
        &cli,
        &tmp.path().join("l"),
        &repo,
        &[("latest", 51), ("next", 52)],
    );
    push(
        &cli,
        &tmp.path().join("l"),
        "next",
        &format!("{repo}:latest"),
    );
    let v = parse_json(
        &cli.ok(&["--format", "json", "prune", "--force", &repo]),
        "prune one-part repository",
    );
    assert_eq!(
        v["count"],
        json!(1),
        "the dangling manifest of {repo} is pruned: {v}"
    );
    assert_eq!(
        manifest_status(&reg, &admin, "app", &imgs[0].manifest.digest).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        served_digest(&reg, &admin, "app", "latest").await,
        imgs[1].manifest.digest
    );
}

// ---------------------------------------------------------------------------------------------
// 10. df
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn df_reports_projects_repositories_and_dedup_savings() {
    let srv = start_local(&[]);
    let reg = Reg::new(&srv);
    reg.create_project(&Cred::admin(), "team", false).await;
    let cli = logged_in_admin(&srv);
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let image = small_layout(&src, "v1", 141, &[250_000, 12_345]);
    // The same layers in two repositories: stored once, seen twice.
    push(&cli, &src, "v1", &format!("{}/team/a:v1", srv.addr));
    push(&cli, &src, "v1", &format!("{}/team/b:v1", srv.addr));
    let stored = blob_sum(&image);

    let v = parse_json(&cli.ok(&["--format", "json", "df", &srv.addr]), "df json");
    let t = &v["totals"];
    assert_eq!(t["stored_bytes"], json!(stored), "{v}");
    assert_eq!(t["logical_bytes"], json!(2 * stored), "{v}");
    assert_eq!(t["blobs"], json!(3), "{v}");
    assert_eq!(t["repositories"], json!(2), "{v}");
    assert_eq!(v["dedup_savings_bytes"], json!(stored), "{v}");
    let projects = v["projects"].as_array().expect("projects");
    assert_eq!(projects.len(), 1, "{v}");
    assert_eq!(projects[0]["project"], json!("team"), "{v}");
    assert_eq!(projects[0]["stored_bytes"], json!(stored), "{v}");
    assert_eq!(projects[0]["logical_bytes"], json!(2 * stored), "{v}");
    assert_eq!(projects[0]["blobs"], json!(3), "{v}");

    let out = cli.ok(&["df", &srv.addr]);
    let header: Vec<&str> = out
        .lines()
        .next()
        .unwrap()
        .split("   ")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    assert_eq!(
        header,
        vec![
            "PROJECT",
            "BLOBS",
            "STORED",
            "LOGICAL",
            "DEDUP SAVED",
            "QUOTA"
        ],
        "{out}"
    );
    let row = out.lines().nth(1).unwrap();
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[0], "team", "{out}");
    assert_eq!(cells[1], "3", "{out}");
    assert_eq!(cells[2], human_size(stored), "{out}");
    assert_eq!(cells[3], human_size(2 * stored), "{out}");
    assert_eq!(cells[4], human_size(stored), "{out}");
    assert!(
        out.contains(&format!("deduplication saves {}", human_size(stored))),
        "{out}"
    );

    // One project: its repositories.
    let v = parse_json(
        &cli.ok(&["--format", "json", "df", &format!("{}/team", srv.addr)]),
        "df project json",
    );
    assert_eq!(v["project"], json!("team"), "{v}");
    assert_eq!(v["usage_bytes"], json!(stored), "{v}");
    assert_eq!(v["logical_bytes"], json!(2 * stored), "{v}");
    assert_eq!(v["blobs"], json!(3), "{v}");
    let repos = v["repositories"].as_array().expect("repositories");
    let names: Vec<&str> = repos
        .iter()
        .map(|r| r["repository"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["team/a", "team/b"], "{v}");
    for r in repos {
        assert_eq!(r["bytes"], json!(stored), "{r}");
        assert_eq!(r["blobs"], json!(3), "{r}");
        assert_eq!(r["tags"], json!(1), "{r}");
        assert_eq!(r["manifests"], json!(1), "{r}");
    }
    let out = cli.ok(&["df", &format!("{}/team", srv.addr)]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        vec!["REPOSITORY", "TAGS", "MANIFESTS", "BLOBS", "SIZE"],
        "{out}"
    );
    assert!(lines[1].starts_with("team/a"), "{out}");
    assert!(lines[2].starts_with("team/b"), "{out}");
    assert!(
        out.contains(&format!("deduplication saves {}", human_size(stored))),
        "{out}"
    );

    // Anonymous users may not see the registry's storage.
    let anon = Cli::new();
    anon.fails(&["df", &srv.addr], 3);
    // A project that does not exist.
    cli.fails(&["df", &format!("{}/nope", srv.addr)], 4);
}

#[tokio::test]
async fn df_and_dangling_prune_on_open_mode_kura_are_unsupported() {
    // Auth mode `open` has no management API: storage reports and server-side prunes are an
    // unsupported operation (exit 7), not a missing image or repository (exit 4).
    let srv = KuraServer::start();
    let cli = Cli::new();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    small_layout(&src, "v1", 171, &[1_000]);
    push(&cli, &src, "v1", &format!("{}/proj/app:v1", srv.addr));
    let err = cli.fails(&["--format", "json", "df", &srv.addr], 7);
    let v = parse_json(err.trim(), "df error");
    assert_eq!(v["error"]["kind"], json!("unsupported"), "{v}");
    cli.fails(&["df", &format!("{}/proj", srv.addr)], 7);
    cli.fails(&["prune", &format!("{}/proj/app", srv.addr)], 7);
}

// ---------------------------------------------------------------------------------------------
// 11. search
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn search_finds_matching_repositories() {
    let srv = KuraServer::start();
    let reg = Reg::new(&srv);
    let anon = Cred::Anonymous;
    for repo in ["team/webapp", "team/api", "other/web-tools"] {
        reg.push_image(&anon, repo, "v1").await;
    }
    let cli = Cli::new();
    let out = cli.ok(&["search", "--registry", &srv.addr, "web"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        vec!["NAME", "REFERENCE"],
        "{out}"
    );
    let rows: BTreeSet<Vec<&str>> = lines[1..]
        .iter()
        .map(|l| l.split_whitespace().collect())
        .collect();
    let want_ref = |n: &str| format!("{}/{n}", srv.addr);
    let (w1, w2) = (want_ref("other/web-tools"), want_ref("team/webapp"));
    let want: BTreeSet<Vec<&str>> = BTreeSet::from([
        vec!["other/web-tools", w1.as_str()],
        vec!["team/webapp", w2.as_str()],
    ]);
    assert_eq!(rows, want, "{out}");

    let v = parse_json(
        &cli.ok(&["--format", "json", "search", "--registry", &srv.addr, "web"]),
        "search json",
    );
    let names: BTreeSet<&str> = v
        .as_array()
        .expect("array")
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        BTreeSet::from(["other/web-tools", "team/webapp"]),
        "{v}"
    );

    let v = parse_json(
        &cli.ok(&[
            "--format",
            "json",
            "search",
            "--registry",
            &srv.addr,
            "nothing-like-it",
        ]),
        "search json (no match)",
    );
    assert_eq!(v, json!([]));
    let v = parse_json(
        &cli.ok(&[
            "--format",
            "json",
            "search",
            "--registry",
            &srv.addr,
            "--limit",
            "1",
            "web",
        ]),
        "search json (limit)",
    );
    assert_eq!(v.as_array().map(Vec::len), Some(1), "{v}");
    // Without a registry: usage.
    cli.fails(&["search", "web"], 2);
}

#[tokio::test]
async fn search_shows_private_repositories_only_when_logged_in() {
    let srv = start_local(&[]);
    let reg = Reg::new(&srv);
    let admin = Cred::admin();
    reg.create_project(&admin, "hidden", false).await;
    reg.create_project(&admin, "open", true).await;
    reg.push_image(&admin, "hidden/webapp", "v1").await;
    reg.push_image(&admin, "open/webapp", "v1").await;

    let anon = Cli::new();
    let v = parse_json(
        &anon.ok(&[
            "--format",
            "json",
            "search",
            "--registry",
            &srv.addr,
            "webapp",
        ]),
        "anonymous search",
    );
    assert_eq!(v, json!(["open/webapp"]));
    let cli = logged_in_admin(&srv);
    let v = parse_json(
        &cli.ok(&[
            "--format",
            "json",
            "search",
            "--registry",
            &srv.addr,
            "webapp",
        ]),
        "admin search",
    );
    assert_eq!(v, json!(["hidden/webapp", "open/webapp"]));
}

// ---------------------------------------------------------------------------------------------
// 12. errors
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn errors_have_distinct_exit_codes_and_json_shape() {
    let cli = Cli::new();
    let tmp = tempfile::tempdir().unwrap();
    let dest = format!("oci:{}", tmp.path().join("out").display());

    // Connection refused: a port nobody listens on.
    let closed = format!("127.0.0.1:{}", free_port());
    let err = cli.fails(&["pull", &format!("{closed}/proj/app:v1"), &dest], 5);
    assert!(err.contains(&closed), "names the registry: {err}");
    cli.fails(&["ls", &closed], 5);
    cli.fails(&["inspect", &format!("{closed}/proj/app:v1")], 5);
    // login without a user name or password (no terminal): usage, before any connection.
    cli.fails(&["login", &closed], 2);
    cli.fails(&["login", &closed, "-u", "someone"], 2);
    let out = cli.login(&closed, "someone", "secret");
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // --format json: the error is a JSON object on stderr.
    let err = cli.fails(
        &[
            "--format",
            "json",
            "pull",
            &format!("{closed}/proj/app:v1"),
            &dest,
        ],
        5,
    );
    let v = parse_json(err.trim(), "JSON error");
    assert_eq!(v["error"]["kind"], json!("connect"), "{v}");
    assert_eq!(v["error"]["exit_code"], json!(5), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{v}"
    );

    // Bad references: usage errors.
    let err = cli.fails(&["pull", "127.0.0.1:5000/Bad/Name:v1", &dest], 2);
    assert!(err.contains("invalid"), "{err}");
    cli.fails(&["inspect", "127.0.0.1:5000/proj/app:bad tag"], 2);
    cli.fails(&["inspect", "127.0.0.1:5000/proj/app@sha256:zz"], 2);
    let err = cli.fails(&["--format", "json", "rm", "127.0.0.1:5000/UPPER:v1"], 2);
    let v = parse_json(err.trim(), "JSON usage error");
    assert_eq!(v["error"]["kind"], json!("usage"), "{v}");
    assert_eq!(v["error"]["exit_code"], json!(2), "{v}");
    // push needs a local source; pull a local destination.
    cli.fails(
        &["push", "127.0.0.1:5000/a/b:v1", "127.0.0.1:5000/a/c:v1"],
        2,
    );
    cli.fails(
        &["pull", "127.0.0.1:5000/a/b:v1", "127.0.0.1:5000/a/c:v1"],
        2,
    );

    // Against a live server: JSON not-found errors.
    let srv = KuraServer::start();
    let err = cli.fails(
        &[
            "--format",
            "json",
            "inspect",
            &format!("{}/proj/none:v1", srv.addr),
        ],
        4,
    );
    let v = parse_json(err.trim(), "JSON not-found error");
    assert_eq!(v["error"]["kind"], json!("not_found"), "{v}");
    assert_eq!(v["error"]["exit_code"], json!(4), "{v}");
}

#[tokio::test]
async fn missing_rights_are_reported_as_access_denied() {
    // alice logs in fine but is only a guest of `team`: she may pull, not push or delete. The
    // error must say access was denied, not that her (valid) credentials are wrong.
    let srv = start_local(&[]);
    let reg = Reg::new(&srv);
    let admin = Cred::admin();
    reg.create_project(&admin, "team", false).await;
    reg.create_user("alice", "alice-pass-123").await;
    reg.set_member(&admin, "team", "alice", "guest").await;
    let pushed = reg.push_image(&admin, "team/app", "v1").await;
    let cli = Cli::new();
    let out = cli.login(&srv.addr, "alice", "alice-pass-123");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tmp = tempfile::tempdir().unwrap();

    let dest = tmp.path().join("pulled");
    cli.ok(&[
        "pull",
        &format!("{}/team/app:v1", srv.addr),
        &format!("oci:{}", dest.display()),
    ]);
    assert_eq!(oci_layout::read_refs(&dest)[0].1.digest, pushed.digest);

    let src = tmp.path().join("src");
    small_layout(&src, "v1", 151, &[1_000]);
    for args in [
        vec![
            "push".to_string(),
            oci(&src, "v1"),
            format!("{}/team/app:alice", srv.addr),
        ],
        vec!["rm".to_string(), format!("{}/team/app:v1", srv.addr)],
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let err = cli.fails(&args, 3);
        assert!(
            !err.contains("check the credentials") && !err.contains("authentication failed"),
            "kura {}: valid credentials without the right are not a failed authentication: {err}",
            args.join(" ")
        );
        assert!(
            err.to_lowercase().contains("denied"),
            "kura {}: {err}",
            args.join(" ")
        );
    }
    assert_eq!(
        served_digest(&reg, &admin, "team/app", "v1").await,
        pushed.digest
    );
}

#[tokio::test]
async fn cp_and_tag_with_tokens_mount_between_projects() {
    // Local auth mode: bearer tokens per scope, mounts across projects.
    let srv = start_local(&[]);
    let reg = Reg::new(&srv);
    let admin = Cred::admin();
    reg.create_project(&admin, "team", false).await;
    reg.create_project(&admin, "prod", false).await;
    let cli = logged_in_admin(&srv);
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let image = small_layout(&src, "v1", 161, &[64_000, 900]);
    push(&cli, &src, "v1", &format!("{}/team/app:v1", srv.addr));
    let v = parse_json(
        &cli.ok(&[
            "--format",
            "json",
            "cp",
            &format!("{}/team/app:v1", srv.addr),
            &format!("{}/prod/app:v1", srv.addr),
        ]),
        "cp report",
    );
    assert_eq!(v["blobs_mounted"], json!(3), "{v}");
    assert_eq!(v["blobs_copied"], json!(0), "{v}");
    cli.ok(&[
        "tag",
        &format!("{}/team/app:v1", srv.addr),
        &format!("{}/prod/app:stable", srv.addr),
    ]);
    for tag in ["v1", "stable"] {
        assert_eq!(
            served_digest(&reg, &admin, "prod/app", tag).await,
            image.manifest.digest
        );
    }
    let out = cli.ok(&["ls", &srv.addr]);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        vec!["prod/app", "team/app"],
        "{out}"
    );
    // Anonymous users see no private repository.
    let anon = Cli::new();
    assert_eq!(anon.ok(&["ls", &srv.addr]), "");
}
