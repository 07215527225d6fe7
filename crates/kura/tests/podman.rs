//! Round trips through podman (Debian package `podman`, 4.3 on Debian 12), run the way users run
//! it: `podman login`, `tag`, `push`, `rmi`, `pull`, `inspect`, `logout`. No container is ever
//! started; only images move. Each test starts its own `kura serve`.
//!
//! podman is installed by `scripts/test`. A missing podman makes the test FAIL with a message
//! saying so; it never passes silently. `KURA_PODMAN` overrides the path of the binary.
//!
//! Every podman instance is private to its test and needs no kernel overlay support: its image
//! store uses the `vfs` driver under a temporary directory, and every other place where rootful
//! podman keeps state is pointed there too (see [`Podman::command`]), so nothing from the host's
//! configuration is used and nothing is left behind. Two things podman 4.3 offers no flag for
//! remain shared with the host: the empty directory `/run/containers/networks`, and c/image's
//! blob-info cache `/var/lib/containers/cache/blob-info-cache-v1.boltdb` (which skopeo uses too;
//! its entries are keyed by registry host:port, and every test server has a fresh port).
//!
//! Images reach podman's store without network: the test writes an OCI image layout
//! (tests/common/oci_layout.rs) and runs `podman pull oci:DIR:TAG`.

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::KuraServer;
use common::auth::{ADMIN_PASSWORD, Cred, Reg};
use common::oci_layout::{self, Image, MEDIA_TYPE_OCI_MANIFEST, sha256_digest};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

const CLIENT_TIMEOUT: Duration = Duration::from_secs(300);
const MEDIA_TYPE_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";

// ---------------------------------------------------------------------------------------------
// Locating and running podman
// ---------------------------------------------------------------------------------------------

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn podman_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("KURA_PODMAN") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "KURA_PODMAN={} does not exist", p.display());
        return p;
    }
    find_on_path("podman").unwrap_or_else(|| {
        panic!(
            "podman is not installed (not found on PATH). These tests need the real client: \
             run scripts/test, which installs it (apt-get install podman), or set KURA_PODMAN."
        )
    })
}

/// What a finished podman command printed.
struct Output {
    stdout: String,
    stderr: String,
}

/// Whether `path` is usable inside an image name: `podman pull oci:DIR:TAG` names the image
/// `localhost/DIR`, so every component of DIR must be a lowercase name component
/// (`[a-z0-9]+` joined by `.`, `_`, `__` or dashes); tempfile's names (`.tmpAbC123`) are not.
fn valid_in_image_name(path: &Path) -> bool {
    let s = path.to_string_lossy();
    let Some(rest) = s.strip_prefix('/') else {
        return false;
    };
    rest.split('/').all(|c| {
        let b = c.as_bytes();
        let alnum = |x: &u8| x.is_ascii_lowercase() || x.is_ascii_digit();
        !b.is_empty()
            && alnum(&b[0])
            && alnum(&b[b.len() - 1])
            && b.iter()
                .all(|x| alnum(x) || matches!(x, b'.' | b'_' | b'-'))
            && !c.contains("..")
            && !c.contains("___")
            && !c.contains("._")
            && !c.contains("_.")
            && !c.contains(".-")
            && !c.contains("-.")
            && !c.contains("_-")
            && !c.contains("-_")
    })
}

/// A podman with its own image store, configuration and credentials, all inside one temporary
/// directory (`kura-podman-<random hex>`) that is removed when the value is dropped.
struct Podman {
    bin: PathBuf,
    dir: PathBuf,
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Podman {
    fn new() -> Podman {
        let bin = podman_bin();
        let parent = [
            std::env::temp_dir(),
            PathBuf::from("/tmp"),
            PathBuf::from("/var/tmp"),
        ]
        .into_iter()
        .filter_map(|p| p.canonicalize().ok())
        .find(|p| valid_in_image_name(p))
        .expect("no temporary directory with a lowercase path (TMPDIR, /tmp, /var/tmp)");
        let dir = parent.join(format!("kura-podman-{:016x}", rand::random::<u64>()));
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let d = dir.as_path();
        for sub in ["home", "bigfiles"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        // Built-in defaults only, instead of /usr/share/containers and /etc/containers.
        std::fs::write(d.join("containers.conf"), "").unwrap();
        // Only fully qualified names are used; no search registries, no mirrors.
        std::fs::write(
            d.join("registries.conf"),
            "unqualified-search-registries = []\n",
        )
        .unwrap();
        std::fs::write(
            d.join("policy.json"),
            r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
        )
        .unwrap();
        // podman refuses to start when REGISTRY_AUTH_FILE names a file that does not exist.
        std::fs::write(d.join("auth.json"), r#"{"auths":{}}"#).unwrap();
        Podman { bin, dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The credentials file that `podman login` writes (`REGISTRY_AUTH_FILE`).
    fn auth_file(&self) -> Value {
        let raw = std::fs::read(self.path("auth.json")).expect("read auth.json");
        serde_json::from_slice(&raw).expect("auth.json is JSON")
    }

    /// `podman GLOBAL-FLAGS ARGS...` with the private environment.
    ///
    /// The global flags: `--root`/`--runroot` (image store and its run-time state) and
    /// `--storage-driver vfs` are what is needed to work here at all without overlay support;
    /// `--tmpdir` (libpod state, default /run/libpod) and `--network-config-dir` (default
    /// /etc/containers/networks, where podman creates a lock file even when nothing runs) keep
    /// everything in the temporary directory; `--cgroup-manager cgroupfs` and
    /// `--events-backend file` are the defaults on a machine without systemd, and are given so
    /// that a systemd host behaves the same (no journald events, no systemd cgroups).
    fn command<I, S>(&self, args: I) -> (tokio::process::Command, String)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let d = self.dir.as_path();
        let mut all: Vec<std::ffi::OsString> = vec![
            "--root".into(),
            d.join("root").into(),
            "--runroot".into(),
            d.join("runroot").into(),
            "--tmpdir".into(),
            d.join("libpod").into(),
            "--network-config-dir".into(),
            d.join("networks").into(),
            "--storage-driver".into(),
            "vfs".into(),
            "--cgroup-manager".into(),
            "cgroupfs".into(),
            "--events-backend".into(),
            "file".into(),
        ];
        let shown_args: Vec<String> = args
            .into_iter()
            .map(|a| {
                all.push(a.as_ref().to_owned());
                a.as_ref().to_string_lossy().into_owned()
            })
            .collect();
        let shown = format!("podman {}", shown_args.join(" "));
        let mut cmd = tokio::process::Command::new(&self.bin);
        cmd.args(&all)
            .env("CONTAINERS_CONF", d.join("containers.conf"))
            .env("CONTAINERS_REGISTRIES_CONF", d.join("registries.conf"))
            .env("REGISTRY_AUTH_FILE", d.join("auth.json"))
            // Credentials are also looked up in $HOME/.docker/config.json and $HOME/.dockercfg.
            .env("HOME", d.join("home"))
            // Where c/image stages big files while copying (default /var/tmp).
            .env("TMPDIR", d.join("bigfiles"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        (cmd, shown)
    }

    /// Runs podman (bounded) with `stdin` as its input; returns whether it succeeded.
    async fn run(&self, args: &[&str], stdin: Option<&str>) -> (bool, Output, String) {
        let (mut cmd, shown) = self.command(args);
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        eprintln!("$ {shown}");
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{shown}`: {e}"));
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().expect("stdin pipe");
            pipe.write_all(input.as_bytes()).await.expect("write stdin");
            drop(pipe);
        }
        let out = tokio::time::timeout(CLIENT_TIMEOUT, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("`{shown}` did not finish within {CLIENT_TIMEOUT:?}"))
            .unwrap_or_else(|e| panic!("waiting for `{shown}`: {e}"));
        eprintln!("  ({:.2?}, {})", started.elapsed(), out.status);
        let output = Output {
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        (out.status.success(), output, shown)
    }

    /// Runs podman; it must succeed.
    async fn ok(&self, args: &[&str]) -> Output {
        self.ok_with_stdin(args, None).await
    }

    async fn ok_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let (success, out, shown) = self.run(args, stdin).await;
        assert!(
            success,
            "`{shown}` failed\n--- stdout ---\n{}\n--- stderr ---\n{}",
            out.stdout, out.stderr
        );
        out
    }

    /// Runs podman; it must fail. Returns its stderr.
    async fn fails(&self, args: &[&str]) -> String {
        self.fails_with_stdin(args, None).await
    }

    async fn fails_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> String {
        let (success, out, shown) = self.run(args, stdin).await;
        assert!(
            !success,
            "`{shown}` succeeded but should have failed\n--- stdout ---\n{}\n--- stderr ---\n{}",
            out.stdout, out.stderr
        );
        eprintln!("  stderr: {}", out.stderr.trim());
        out.stderr
    }

    fn policy(&self) -> String {
        self.path("policy.json").display().to_string()
    }

    /// A fresh directory for an OCI layout, inside the private directory (so that its path is
    /// valid in the image name `podman pull oci:` gives it).
    fn layout_dir(&self, name: &str) -> PathBuf {
        let dir = self.path("layouts").join(name);
        assert!(!dir.exists(), "{} exists already", dir.display());
        dir
    }

    /// `podman pull -q oci:DIR:TAG`: loads an image from an OCI layout; returns the image ID.
    async fn load_layout(&self, layout: &Path, tag: &str) -> String {
        let src = format!("oci:{}:{tag}", layout.display());
        let out = self
            .ok(&["pull", "-q", "--signature-policy", &self.policy(), &src])
            .await;
        out.stdout.trim().to_string()
    }

    /// `podman pull -q --tls-verify=false REF`; returns the image ID.
    async fn pull(&self, reference: &str) -> String {
        let out = self
            .ok(&[
                "pull",
                "-q",
                "--tls-verify=false",
                "--signature-policy",
                &self.policy(),
                reference,
            ])
            .await;
        out.stdout.trim().to_string()
    }

    /// The pull must fail; returns podman's stderr.
    async fn pull_fails(&self, reference: &str) -> String {
        self.fails(&[
            "pull",
            "-q",
            "--tls-verify=false",
            "--signature-policy",
            &self.policy(),
            reference,
        ])
        .await
    }

    /// `podman push --tls-verify=false [EXTRA...] REF`; returns the digest of the manifest it
    /// pushed (from `--digestfile`).
    async fn push(&self, reference: &str, extra: &[&str]) -> String {
        let digest_file = self.path("pushed-digest");
        let _ = std::fs::remove_file(&digest_file);
        let digest_arg = digest_file.display().to_string();
        let policy = self.policy();
        let mut args = vec![
            "push",
            "--tls-verify=false",
            "--signature-policy",
            &policy,
            "--digestfile",
            &digest_arg,
        ];
        args.extend_from_slice(extra);
        args.push(reference);
        self.ok(&args).await;
        let digest = std::fs::read_to_string(&digest_file).expect("podman push wrote --digestfile");
        assert!(
            digest.starts_with("sha256:") && digest.len() == 71,
            "--digestfile holds {digest:?}"
        );
        digest
    }

    /// The push must fail; returns podman's stderr.
    async fn push_fails(&self, reference: &str) -> String {
        self.fails(&[
            "push",
            "--tls-verify=false",
            "--signature-policy",
            &self.policy(),
            reference,
        ])
        .await
    }

    /// `podman image inspect REF` (the single object of its JSON array).
    async fn inspect(&self, reference: &str) -> Value {
        let out = self
            .ok(&["image", "inspect", "--format", "json", reference])
            .await;
        let v: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| {
            panic!("podman image inspect printed no JSON ({e}): {}", out.stdout)
        });
        v.as_array()
            .and_then(|a| a.first())
            .cloned()
            .unwrap_or_else(|| panic!("podman image inspect printed no image: {v}"))
    }

    /// Whether the local store holds `reference` (`podman image exists`).
    async fn has_image(&self, reference: &str) -> bool {
        self.run(&["image", "exists", reference], None).await.0
    }

    /// `podman login --tls-verify=false -u USER --password-stdin ADDR`.
    async fn login(&self, addr: &str, user: &str, password: &str) {
        let out = self
            .ok_with_stdin(
                &[
                    "login",
                    "--tls-verify=false",
                    "-u",
                    user,
                    "--password-stdin",
                    addr,
                ],
                Some(&format!("{password}\n")),
            )
            .await;
        assert!(
            out.stdout.contains("Login Succeeded"),
            "podman login printed: {}{}",
            out.stdout,
            out.stderr
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The registry's view, over plain HTTP
// ---------------------------------------------------------------------------------------------

/// A manifest as the registry serves it.
struct Served {
    bytes: Vec<u8>,
    json: Value,
    content_type: String,
    digest: String,
}

/// GETs a manifest (as `cred`), checks that `Docker-Content-Digest` is the digest of the body and
/// that the body's `mediaType` matches `Content-Type`.
async fn served_manifest(reg: &Reg, cred: &Cred, repo: &str, reference: &str) -> Served {
    let path = format!("/v2/{repo}/manifests/{reference}");
    let resp = reg
        .req(Method::GET, &path, cred)
        .header("Accept", MANIFEST_ACCEPT)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.unwrap().to_vec();
    assert_eq!(
        status,
        200,
        "GET {path} as {}: {}",
        cred.describe(),
        String::from_utf8_lossy(&bytes)
    );
    let h = |name: &str| {
        headers
            .get(name)
            .map(|v| v.to_str().expect("ASCII header").to_string())
            .unwrap_or_else(|| panic!("GET {path}: no {name} header"))
    };
    let digest = h("docker-content-digest");
    let content_type = h("content-type");
    assert_eq!(
        sha256_digest(&bytes),
        digest,
        "GET {path}: Docker-Content-Digest is not the digest of the body"
    );
    let json: Value = serde_json::from_slice(&bytes).expect("manifest is JSON");
    assert_eq!(
        json["mediaType"],
        content_type.as_str(),
        "GET {path}: Content-Type and the manifest's mediaType differ"
    );
    Served {
        bytes,
        json,
        content_type,
        digest,
    }
}

/// Every blob the manifest references is served with the size and digest it claims.
async fn assert_blobs_served(reg: &Reg, cred: &Cred, repo: &str, manifest: &Value) {
    let mut descriptors = vec![manifest["config"].clone()];
    descriptors.extend(
        manifest["layers"]
            .as_array()
            .expect("layers")
            .iter()
            .cloned(),
    );
    for d in descriptors {
        let digest = d["digest"].as_str().expect("digest");
        let path = format!("/v2/{repo}/blobs/{digest}");
        let resp = reg.send(Method::GET, &path, cred).await;
        assert_eq!(resp.status(), 200, "GET {path} as {}", cred.describe());
        let body = resp.bytes().await.unwrap();
        assert_eq!(
            body.len() as u64,
            d["size"].as_u64().unwrap(),
            "size of {path}"
        );
        assert_eq!(sha256_digest(&body), digest, "digest of {path}");
    }
}

async fn tags(reg: &Reg, cred: &Cred, repo: &str) -> Vec<String> {
    let path = format!("/v2/{repo}/tags/list");
    let resp = reg.send(Method::GET, &path, cred).await;
    assert_eq!(resp.status(), 200, "GET {path} as {}", cred.describe());
    let v: Value = resp.json().await.unwrap();
    let mut out: Vec<String> = v["tags"]
        .as_array()
        .map(|a| a.iter().map(|t| t.as_str().unwrap().to_string()).collect())
        .unwrap_or_default();
    out.sort();
    out
}

fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").expect("a sha256 digest")
}

/// `podman image inspect` of an image pulled from `repo_ref` (`ADDR/REPO`) matches what the
/// registry served: ID = config digest, Digest = manifest digest, manifest type, repo digest.
fn assert_inspect_matches(inspect: &Value, repo_ref: &str, served: &Served, image: &Image) {
    assert_eq!(
        inspect["Id"],
        hex_of(&image.config.digest),
        "image ID (podman's ID is the digest of the config, which no push or pull changes)"
    );
    assert_eq!(inspect["Digest"], served.digest.as_str(), "podman's Digest");
    assert_eq!(inspect["ManifestType"], served.content_type.as_str());
    let repo_digest = format!("{repo_ref}@{}", served.digest);
    assert!(
        inspect["RepoDigests"]
            .as_array()
            .is_some_and(|a| a.iter().any(|d| d == repo_digest.as_str())),
        "RepoDigests {} lacks {repo_digest}",
        inspect["RepoDigests"]
    );
    assert_eq!(inspect["Architecture"], "amd64");
    assert_eq!(inspect["Os"], "linux");
}

/// The image podman pushed is `image` (written into an OCI layout by the test), as far as a push
/// from podman's store can keep it: the same config, byte for byte, and as many layers.
///
/// The layer blobs differ from the layout's: podman's store keeps only the uncompressed layer
/// tars, so `podman push` gzips them again, and the manifest (which names the layers) gets a
/// new digest as well. That the new layers still unpack to the config's `rootfs.diff_ids` is
/// checked by podman itself when it pulls the image back into its store.
fn assert_same_image(served: &Served, image: &Image) {
    let m = &served.json;
    assert_eq!(m["schemaVersion"], 2);
    assert_eq!(m["config"]["digest"], image.config.digest.as_str());
    assert_eq!(m["config"]["size"], image.config.size);
    assert_eq!(
        m["layers"].as_array().map(Vec::len),
        Some(image.layers.len()),
        "number of layers"
    );
}

// ---------------------------------------------------------------------------------------------
// Open mode
// ---------------------------------------------------------------------------------------------

/// Open mode (anonymous push and pull): push an image from podman's store, remove it locally,
/// pull it back, compare what podman and the registry say about it, then push more tags of it
/// (one converted to Docker schema 2).
#[tokio::test]
async fn podman_push_pull_round_trip() {
    let started = Instant::now();
    let podman = Podman::new(); // fails first, and clearly, if podman is missing
    let server = KuraServer::start();
    let reg = Reg::new(&server);
    let anon = Cred::Anonymous;
    let layout = podman.layout_dir("app");
    let image = oci_layout::single_image_layout(&layout, "v1", 3, 41);
    let repo_ref = format!("{}/proj/app", server.addr);
    let v1 = format!("{repo_ref}:v1");

    // Into podman's store from the layout: the image ID is the config digest.
    let id = podman.load_layout(&layout, "v1").await;
    assert_eq!(id, hex_of(&image.config.digest), "image ID after loading");
    podman.ok(&["tag", &id, &v1]).await;

    // Push. podman 4.3 keeps the image's own format (OCI) unless --format says otherwise, and
    // reports the digest of the manifest it wrote; the registry serves exactly that manifest
    // under the tag, with that digest.
    let pushed = podman.push(&v1, &[]).await;
    let served = served_manifest(&reg, &anon, "proj/app", "v1").await;
    assert_eq!(
        served.digest, pushed,
        "Docker-Content-Digest vs podman's --digestfile"
    );
    assert_eq!(served.content_type, MEDIA_TYPE_OCI_MANIFEST);
    assert_same_image(&served, &image);
    assert_blobs_served(&reg, &anon, "proj/app", &served.json).await;
    let by_digest = served_manifest(&reg, &anon, "proj/app", &pushed).await;
    assert!(by_digest.bytes == served.bytes, "by digest vs by tag");
    // The config is the one from the layout, byte for byte.
    let config = reg
        .send(
            Method::GET,
            &format!("/v2/proj/app/blobs/{}", image.config.digest),
            &anon,
        )
        .await
        .bytes()
        .await
        .unwrap();
    let want = std::fs::read(oci_layout::blob_path(&layout, &image.config.digest)).unwrap();
    assert!(config.as_ref() == want.as_slice(), "config bytes differ");

    // Remove every local trace of the image, then pull it back from the registry.
    podman.ok(&["rmi", "--force", &id]).await;
    assert!(!podman.has_image(&v1).await, "{v1} still in the store");
    assert!(!podman.has_image(&id).await, "{id} still in the store");
    let pulled = podman.pull(&v1).await;
    assert_eq!(pulled, id, "image ID after the pull");
    let inspect = podman.inspect(&v1).await;
    assert_inspect_matches(&inspect, &repo_ref, &served, &image);

    // A second tag of the pulled image. Every blob is already in the repository (podman checks
    // with HEAD and skips the upload) and nothing needs converting, so podman pushes the
    // manifest it pulled, unchanged: the same digest under a new tag.
    let v2 = format!("{repo_ref}:v2");
    podman.ok(&["tag", &v1, &v2]).await;
    let pushed2 = podman.push(&v2, &[]).await;
    assert_eq!(pushed2, pushed, "v2 is the manifest pulled as v1");
    let served2 = served_manifest(&reg, &anon, "proj/app", "v2").await;
    assert_eq!(served2.digest, pushed2);
    assert!(served2.bytes == served.bytes);

    // A third tag converted to Docker schema 2 on the way out: a new manifest (Docker media
    // types) over the same config and layer blobs, so the image ID stays the same.
    let docker = format!("{repo_ref}:v1-docker");
    podman.ok(&["tag", &v1, &docker]).await;
    let pushed3 = podman.push(&docker, &["--format", "v2s2"]).await;
    let served3 = served_manifest(&reg, &anon, "proj/app", "v1-docker").await;
    assert_eq!(served3.digest, pushed3);
    assert_eq!(served3.content_type, MEDIA_TYPE_DOCKER_MANIFEST);
    assert_ne!(served3.digest, served.digest);
    assert_eq!(
        served3.json["config"]["mediaType"],
        "application/vnd.docker.container.image.v1+json"
    );
    assert_same_image(&served3, &image);
    let layer_digests = |m: &Value| -> Vec<String> {
        m["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(layer_digests(&served3.json), layer_digests(&served.json));
    podman.ok(&["rmi", "--force", &id]).await;
    assert_eq!(podman.pull(&docker).await, id);
    let inspect = podman.inspect(&docker).await;
    assert_inspect_matches(&inspect, &repo_ref, &served3, &image);

    assert_eq!(
        tags(&reg, &anon, "proj/app").await,
        ["v1", "v1-docker", "v2"]
    );
    eprintln!("podman open-mode round trip took {:.2?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------------
// Local auth mode
// ---------------------------------------------------------------------------------------------

/// Local accounts: `podman login` as a developer of a private project, push and pull; after
/// `podman logout` the pull fails for want of authentication; a guest pulls but cannot push;
/// once the project is public, anonymous pulls work (and anonymous pushes still do not).
#[tokio::test]
async fn podman_login_push_pull_private_project() {
    let started = Instant::now();
    let podman = Podman::new();
    let server = KuraServer::start_with(
        &["--auth-mode", "local"],
        &[("KURA_ADMIN_PASSWORD", ADMIN_PASSWORD)],
    );
    let reg = Reg::new(&server);
    let admin = Cred::admin();
    reg.api_ok(
        Method::POST,
        "/api/v1/projects",
        &admin,
        Some(json!({ "name": "team", "public": false })),
        201,
    )
    .await;
    for (user, password, role) in [
        ("dev", "dev-pass-123", "developer"),
        ("viewer", "viewer-pass-123", "guest"),
    ] {
        reg.api_ok(
            Method::POST,
            "/api/v1/users",
            &admin,
            Some(json!({ "username": user, "password": password })),
            201,
        )
        .await;
        reg.api_ok(
            Method::PUT,
            &format!("/api/v1/projects/team/members/{user}"),
            &admin,
            Some(json!({ "role": role })),
            200,
        )
        .await;
    }
    let dev = Cred::basic("dev", "dev-pass-123");

    let layout = podman.layout_dir("app");
    let image = oci_layout::single_image_layout(&layout, "v1", 2, 42);
    let id = podman.load_layout(&layout, "v1").await;
    assert_eq!(id, hex_of(&image.config.digest));
    let repo_ref = format!("{}/team/app", server.addr);
    let v1 = format!("{repo_ref}:v1");
    podman.ok(&["tag", &id, &v1]).await;

    // Without credentials the push is refused.
    let err = podman.push_fails(&v1).await;
    assert_auth_error(&err, "anonymous push to the private project");

    // A wrong password: login fails and stores nothing.
    let err = podman
        .fails_with_stdin(
            &[
                "login",
                "--tls-verify=false",
                "-u",
                "dev",
                "--password-stdin",
                &server.addr,
            ],
            Some("not-the-password\n"),
        )
        .await;
    assert!(
        err.contains("invalid username/password"),
        "podman login with a wrong password: {err}"
    );
    assert_eq!(podman.auth_file()["auths"], json!({}));

    // Login as the developer: the credentials land in the auth file under the registry's address.
    podman.login(&server.addr, "dev", "dev-pass-123").await;
    let auths = podman.auth_file();
    assert!(
        auths["auths"][server.addr.as_str()]["auth"].is_string(),
        "auth.json after login: {auths}"
    );
    let who = podman.ok(&["login", "--get-login", &server.addr]).await;
    assert_eq!(who.stdout.trim(), "dev");

    // Push and pull back as the developer.
    let pushed = podman.push(&v1, &[]).await;
    let served = served_manifest(&reg, &dev, "team/app", "v1").await;
    assert_eq!(
        served.digest, pushed,
        "Docker-Content-Digest vs podman's --digestfile"
    );
    assert_same_image(&served, &image);
    assert_blobs_served(&reg, &dev, "team/app", &served.json).await;
    podman.ok(&["rmi", "--force", &id]).await;
    assert_eq!(podman.pull(&v1).await, id);
    assert_inspect_matches(&podman.inspect(&v1).await, &repo_ref, &served, &image);

    // After logout the private repository cannot be read: the registry answers 401 and podman
    // reports it (c/image prints the registry's UNAUTHORIZED as "unauthorized").
    let out = podman.ok(&["logout", &server.addr]).await;
    assert!(
        out.stdout.contains("Removed login credentials"),
        "{}",
        out.stdout
    );
    assert_eq!(podman.auth_file()["auths"], json!({}));
    podman.ok(&["rmi", "--force", &id]).await;
    let err = podman.pull_fails(&v1).await;
    assert_auth_error(&err, "pull after logout");
    assert!(!podman.has_image(&v1).await);

    // A guest of the project pulls, but cannot push. The guest pushes a different image, so
    // the refusal has to come at the first blob upload, not only at the manifest.
    podman
        .login(&server.addr, "viewer", "viewer-pass-123")
        .await;
    assert_eq!(podman.pull(&v1).await, id);
    let other_layout = podman.layout_dir("other");
    let other = oci_layout::single_image_layout(&other_layout, "v1", 1, 43);
    let other_id = podman.load_layout(&other_layout, "v1").await;
    let guest_ref = format!("{repo_ref}:guest");
    podman.ok(&["tag", &other_id, &guest_ref]).await;
    let err = podman.push_fails(&guest_ref).await;
    assert_auth_error(&err, "push as a guest");
    // Pushing the already-present image under a new tag is refused too (at the manifest PUT).
    let guest_ref2 = format!("{repo_ref}:guest2");
    podman.ok(&["tag", &id, &guest_ref2]).await;
    let err = podman.push_fails(&guest_ref2).await;
    assert_auth_error(
        &err,
        "push of an existing image under a new tag, as a guest",
    );
    assert_eq!(tags(&reg, &dev, "team/app").await, ["v1"]);
    for blob in other.blobs() {
        let path = format!("/v2/team/app/blobs/{}", blob.digest);
        let resp = reg.send(Method::HEAD, &path, &dev).await;
        assert_eq!(
            resp.status(),
            404,
            "HEAD {path}: the guest's push left a blob"
        );
    }
    podman.ok(&["logout", "--all"]).await;

    // Public project: anonymous pulls work; anonymous pushes still do not.
    reg.api_ok(
        Method::PATCH,
        "/api/v1/projects/team",
        &admin,
        Some(json!({ "public": true })),
        200,
    )
    .await;
    podman.ok(&["rmi", "--force", &id]).await;
    assert_eq!(podman.pull(&v1).await, id);
    assert_inspect_matches(&podman.inspect(&v1).await, &repo_ref, &served, &image);
    let err = podman.push_fails(&guest_ref).await;
    assert_auth_error(&err, "anonymous push to the public project");
    assert_eq!(tags(&reg, &Cred::Anonymous, "team/app").await, ["v1"]);
    eprintln!("podman local-auth test took {:.2?}", started.elapsed());
}

/// podman's message for a request the registry refused for want of (sufficient) credentials.
fn assert_auth_error(stderr: &str, what: &str) {
    let lower = stderr.to_lowercase();
    assert!(
        lower.contains("unauthorized")
            || lower.contains("authentication required")
            || lower.contains("denied"),
        "{what}: expected an authentication error from podman, got: {stderr}"
    );
    assert!(
        !lower.contains("manifest unknown") && !lower.contains("name unknown"),
        "{what}: podman reports a missing image, not an authentication error: {stderr}"
    );
}
