//! Interoperability of the `kura` client commands with the tools people already use on the
//! same machine: images built by umoci and skopeo, `docker save`-format archives, credentials
//! written by `podman login` / `skopeo login` (and read back by them after `kura login`), a
//! docker credential helper, progress bars on a real terminal, and TLS to a registry behind a
//! self-signed certificate.
//!
//! Every test starts its own `kura serve` (or its own tiny HTTPS server) and its own client
//! "user" ([`Cli`]: private HOME, DOCKER_CONFIG and XDG_RUNTIME_DIR), and every external command
//! runs with that user's environment and a time limit.
//!
//! Tools: skopeo, podman, umoci (Debian packages, installed by `scripts/test`), python3,
//! openssl, gzip, GNU tar and `script` (util-linux). A missing tool makes the test FAIL with a
//! message saying so; it never passes silently.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::KuraServer;
use common::auth::{self, ADMIN, ADMIN_PASSWORD, Cred, Reg};
use common::cli::{Cli, oci};
use common::oci_layout::{self, sha256_digest};
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

/// No single external command may take longer than this.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Running tools
// ---------------------------------------------------------------------------------------------

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The absolute path of a required tool.
fn tool(name: &str) -> PathBuf {
    find_on_path(name).unwrap_or_else(|| {
        panic!(
            "{name} is not installed (not found on PATH). These tests drive the real tool: run \
             scripts/test, which installs it (for Debian packages: apt-get install -y {name})."
        )
    })
}

/// Runs `cmd` to completion (killed after [`STEP_TIMEOUT`]), with `input` on stdin (or
/// /dev/null), capturing stdout and stderr.
fn run_timed(cmd: &mut Command, input: Option<&[u8]>, what: &str) -> Output {
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    eprintln!("$ {what}");
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    if let Some(data) = input {
        // From another thread: the child may fill its stdout before it has read all its input.
        let mut stdin = child.stdin.take().expect("stdin pipe");
        let data = data.to_vec();
        std::thread::spawn(move || {
            let _ = stdin.write_all(&data);
        });
    }
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(STEP_TIMEOUT) {
        Ok(out) => out.unwrap_or_else(|e| panic!("{what}: waiting: {e}")),
        Err(_) => {
            // Our own child, by its pid.
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("{what} did not finish within {STEP_TIMEOUT:?}");
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts that a command succeeded; returns its stdout.
fn must(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({:?}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Runs a command that must succeed; returns its stdout.
fn ok(cmd: &mut Command, what: &str) -> String {
    let out = run_timed(cmd, None, what);
    must(&out, what)
}

/// `kura ARGS...` as `cli`; it must succeed. Returns stdout.
fn kura_ok(cli: &Cli, args: &[&str]) -> String {
    ok(&mut cli.cmd(args), &format!("kura {}", args.join(" ")))
}

/// `kura ARGS...` as `cli`; it must exit with `code`. Returns stderr.
fn kura_fails(cli: &Cli, args: &[&str], code: i32) -> String {
    let what = format!("kura {}", args.join(" "));
    let out = run_timed(&mut cli.cmd(args), None, &what);
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}: expected exit {code}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stderr)
}

/// `skopeo --insecure-policy ARGS...` with `cli`'s environment (credentials included).
fn skopeo(cli: &Cli, args: &[&str]) -> Command {
    let mut cmd = Command::new(tool("skopeo"));
    cmd.arg("--insecure-policy").args(args);
    cli.env(&mut cmd);
    cmd
}

fn skopeo_ok(cli: &Cli, args: &[&str]) -> String {
    ok(
        &mut skopeo(cli, args),
        &format!("skopeo {}", args.join(" ")),
    )
}

fn umoci_ok(args: &[&str]) {
    let mut cmd = Command::new(tool("umoci"));
    cmd.args(args);
    ok(&mut cmd, &format!("umoci {}", args.join(" ")));
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// A current-thread runtime for the management-API helpers (the tests themselves are plain
/// blocking code driving processes).
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

// ---------------------------------------------------------------------------------------------
// Reading OCI layouts
// ---------------------------------------------------------------------------------------------

fn read_json(path: &Path) -> Value {
    let raw = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_slice(&raw).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// The manifest digest a layout's tag points at.
fn layout_ref(root: &Path, tag: &str) -> String {
    oci_layout::read_refs(root)
        .into_iter()
        .find(|(t, _)| t == tag)
        .unwrap_or_else(|| {
            panic!(
                "no tag {tag:?} in {}: {}",
                root.display(),
                text(&std::fs::read(root.join("index.json")).unwrap_or_default())
            )
        })
        .1
        .digest
}

fn blob(root: &Path, digest: &str) -> Vec<u8> {
    let p = oci_layout::blob_path(root, digest);
    let data = std::fs::read(&p).unwrap_or_else(|e| panic!("read blob {}: {e}", p.display()));
    assert_eq!(
        sha256_digest(&data),
        digest,
        "blob {} does not hash to its name",
        p.display()
    );
    data
}

fn blob_json(root: &Path, digest: &str) -> Value {
    serde_json::from_slice(&blob(root, digest)).expect("blob is JSON")
}

/// (manifest digest, manifest bytes, config digest, layer digests) of `root:tag`.
struct LayoutImage {
    digest: String,
    manifest: Vec<u8>,
    config: String,
    layers: Vec<String>,
}

fn layout_image(root: &Path, tag: &str) -> LayoutImage {
    let digest = layout_ref(root, tag);
    let manifest = blob(root, &digest);
    let m: Value = serde_json::from_slice(&manifest).expect("manifest JSON");
    let config = m["config"]["digest"]
        .as_str()
        .unwrap_or_else(|| panic!("manifest without config: {m}"))
        .to_string();
    let layers = m["layers"]
        .as_array()
        .unwrap_or_else(|| panic!("manifest without layers: {m}"))
        .iter()
        .map(|l| l["digest"].as_str().expect("layer digest").to_string())
        .collect();
    LayoutImage {
        digest,
        manifest,
        config,
        layers,
    }
}

fn diff_ids(config: &Value) -> Vec<String> {
    config["rootfs"]["diff_ids"]
        .as_array()
        .unwrap_or_else(|| panic!("config without rootfs.diff_ids: {config}"))
        .iter()
        .map(|d| d.as_str().expect("diff_id").to_string())
        .collect()
}

/// The sha256 of a layer's uncompressed content (gzip is undone with `gzip -dc`).
fn uncompressed_digest(root: &Path, digest: &str) -> String {
    let data = blob(root, digest);
    if data.starts_with(&[0x1f, 0x8b]) {
        let mut cmd = Command::new(tool("gzip"));
        cmd.arg("-dc");
        let out = run_timed(&mut cmd, Some(&data), "gzip -dc (a layer)");
        must(&out, "gzip -dc");
        sha256_digest(&out.stdout)
    } else {
        assert!(
            !data.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]),
            "zstd layer {digest}: not expected here"
        );
        sha256_digest(&data)
    }
}

/// Asserts every layer of `root:tag` decompresses to the matching `diff_id` of its config, and
/// that those diff_ids are `want`.
fn assert_diff_ids(root: &Path, tag: &str, want: &[String], what: &str) {
    let img = layout_image(root, tag);
    let config = blob_json(root, &img.config);
    assert_eq!(diff_ids(&config), want, "{what}: config diff_ids");
    assert_eq!(img.layers.len(), want.len(), "{what}: layer count");
    for (layer, diff_id) in img.layers.iter().zip(want) {
        assert_eq!(
            &uncompressed_digest(root, layer),
            diff_id,
            "{what}: layer {layer} uncompressed"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// A private project on a local-auth server
// ---------------------------------------------------------------------------------------------

/// A `--auth-mode local` server with a private project `private` holding `private/app:t`
/// (pushed by skopeo as the administrator, so no kura credential code is involved).
struct Private {
    srv: KuraServer,
    /// The manifest digest of `private/app:t`.
    digest: String,
    _src: tempfile::TempDir,
}

fn private_registry() -> Private {
    let srv = auth::start_local(&[]);
    let reg = Reg::new(&srv);
    block_on(reg.create_project(&Cred::admin(), "private", false));
    let src = tempfile::tempdir().unwrap();
    let image = oci_layout::single_image_layout(src.path(), "v1", 2, 41);
    let admin = Cli::new();
    skopeo_ok(
        &admin,
        &[
            "copy",
            "--dest-tls-verify=false",
            "--dest-creds",
            &format!("{ADMIN}:{ADMIN_PASSWORD}"),
            &oci(src.path(), "v1"),
            &format!("docker://{}/private/app:t", srv.addr),
        ],
    );
    Private {
        srv,
        digest: image.manifest.digest,
        _src: src,
    }
}

/// `kura ls HOST/private/app --format json` must list tag `t` with `digest`.
fn assert_lists_private_tag(cli: &Cli, addr: &str, digest: &str, what: &str) {
    let out = kura_ok(
        cli,
        &["ls", &format!("{addr}/private/app"), "--format", "json"],
    );
    let rows: Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("{what}: kura ls printed no JSON ({e}): {out}"));
    let rows = rows.as_array().expect("an array of tags");
    assert!(
        rows.iter()
            .any(|r| r["tag"] == "t" && r["digest"] == digest),
        "{what}: tag t@{digest} not listed: {out}"
    );
}

// ---------------------------------------------------------------------------------------------
// podman with a private store
// ---------------------------------------------------------------------------------------------

/// `podman ...` with `cli`'s credentials environment and an image store, configuration and
/// run-time state of its own under `dir` (vfs driver: no overlay support needed). Unlike
/// tests/podman.rs, REGISTRY_AUTH_FILE is not set: podman must find `cli`'s files itself.
fn podman(cli: &Cli, dir: &Path, args: &[&str]) -> Command {
    for sub in ["bigfiles", "networks"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    std::fs::write(dir.join("containers.conf"), "").unwrap();
    std::fs::write(
        dir.join("registries.conf"),
        "unqualified-search-registries = []\n",
    )
    .unwrap();
    let mut cmd = Command::new(tool("podman"));
    cmd.arg("--root")
        .arg(dir.join("root"))
        .arg("--runroot")
        .arg(dir.join("runroot"))
        .arg("--tmpdir")
        .arg(dir.join("libpod"))
        .arg("--network-config-dir")
        .arg(dir.join("networks"))
        .args([
            "--storage-driver",
            "vfs",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
        ])
        .args(args);
    cli.env(&mut cmd);
    cmd.env("CONTAINERS_CONF", dir.join("containers.conf"))
        .env("CONTAINERS_REGISTRIES_CONF", dir.join("registries.conf"))
        .env("TMPDIR", dir.join("bigfiles"));
    cmd
}

// ---------------------------------------------------------------------------------------------
// 1. umoci
// ---------------------------------------------------------------------------------------------

/// An image built with umoci (init, new, unpack, add files, repack twice, config) is pushed by
/// `kura push oci:DIR:TAG`; skopeo then reads exactly umoci's manifest and blobs back from the
/// registry, and umoci can unpack what skopeo pulled.
#[test]
fn umoci_image_pushed_by_kura_reads_back_identically() {
    let srv = KuraServer::start();
    let cli = Cli::new();
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    let bundle = work.path().join("bundle");
    let (l, b) = (path_str(&layout), path_str(&bundle));
    let image = format!("{l}:t1");

    umoci_ok(&["init", "--layout", &l]);
    umoci_ok(&["new", "--image", &image]);
    umoci_ok(&["unpack", "--rootless", "--image", &image, &b]);
    let rootfs = bundle.join("rootfs");
    std::fs::create_dir_all(rootfs.join("etc")).unwrap();
    std::fs::create_dir_all(rootfs.join("opt/app")).unwrap();
    std::fs::write(rootfs.join("etc/kura-hello.txt"), "hello from umoci\n").unwrap();
    let mut data = vec![0u8; 300_000];
    SmallRng::seed_from_u64(7).fill_bytes(&mut data);
    std::fs::write(rootfs.join("opt/app/data.bin"), &data).unwrap();
    // --refresh-bundle: the next repack diffs against this one, making a second layer.
    umoci_ok(&["repack", "--refresh-bundle", "--image", &image, &b]);
    // A second layer on top of the first.
    std::fs::write(rootfs.join("opt/app/run.sh"), "#!/bin/sh\necho run\n").unwrap();
    std::fs::remove_file(rootfs.join("etc/kura-hello.txt")).unwrap();
    umoci_ok(&["repack", "--image", &image, &b]);
    umoci_ok(&[
        "config",
        "--image",
        &image,
        "--config.cmd",
        "/opt/app/run.sh",
        "--author",
        "kura-test",
    ]);

    let made = layout_image(&layout, "t1");
    assert_eq!(made.layers.len(), 2, "umoci made two layers");

    let dest = format!("{}/proj/app:t1", srv.addr);
    let out = kura_ok(&cli, &["push", &oci(&layout, "t1"), &dest]);
    assert!(out.contains(&made.digest), "push reports the digest: {out}");

    // The registry serves umoci's manifest byte for byte.
    let raw = run_timed(
        &mut skopeo(
            &cli,
            &[
                "inspect",
                "--raw",
                "--tls-verify=false",
                &format!("docker://{dest}"),
            ],
        ),
        None,
        "skopeo inspect --raw",
    );
    let raw_stdout = must(&raw, "skopeo inspect --raw");
    assert_eq!(
        sha256_digest(&raw.stdout),
        made.digest,
        "served manifest differs from umoci's: {raw_stdout}"
    );
    assert_eq!(raw.stdout, made.manifest);

    // skopeo pulls it into a layout: same manifest, same config, same layers, same bytes.
    let back = work.path().join("back");
    skopeo_ok(
        &cli,
        &[
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{dest}"),
            &oci(&back, "t1"),
        ],
    );
    let pulled = layout_image(&back, "t1");
    assert_eq!(pulled.digest, made.digest, "manifest digest");
    assert_eq!(pulled.config, made.config, "config digest");
    assert_eq!(pulled.layers, made.layers, "layer digests");
    for d in std::iter::once(&made.config).chain(&made.layers) {
        assert_eq!(blob(&back, d), blob(&layout, d), "blob {d}");
    }

    // And umoci unpacks the pulled image to the files it was built from.
    let bundle2 = work.path().join("bundle2");
    umoci_ok(&[
        "unpack",
        "--rootless",
        "--image",
        &format!("{}:t1", back.display()),
        &path_str(&bundle2),
    ]);
    let rootfs2 = bundle2.join("rootfs");
    assert_eq!(
        std::fs::read(rootfs2.join("opt/app/data.bin")).unwrap(),
        data
    );
    assert!(rootfs2.join("opt/app/run.sh").is_file());
    assert!(
        !rootfs2.join("etc/kura-hello.txt").exists(),
        "the whiteout of the second layer applies"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. a layout written by skopeo
// ---------------------------------------------------------------------------------------------

/// `skopeo copy oci:A:t oci:B:t` writes a layout, `kura push oci:B:t` sends it, and
/// `skopeo inspect` of the registry image reports the same digest and layers.
#[test]
fn skopeo_written_layout_pushed_by_kura() {
    let srv = KuraServer::start();
    let cli = Cli::new();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    let dir = work.path().join("skopeo-layout");
    oci_layout::single_image_layout(&src, "v1", 3, 11);
    skopeo_ok(&cli, &["copy", &oci(&src, "v1"), &oci(&dir, "v2")]);
    let made = layout_image(&dir, "v2");

    let dest = format!("{}/proj/skopeo-made:v2", srv.addr);
    let out = kura_ok(&cli, &["push", &oci(&dir, "v2"), &dest]);
    assert!(out.contains(&made.digest), "push reports the digest: {out}");

    let out = skopeo_ok(
        &cli,
        &["inspect", "--tls-verify=false", &format!("docker://{dest}")],
    );
    let v: Value = serde_json::from_str(&out).expect("skopeo inspect JSON");
    assert_eq!(v["Digest"], made.digest.as_str(), "{out}");
    let layers: Vec<&str> = v["Layers"]
        .as_array()
        .expect("Layers")
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert_eq!(layers, made.layers, "{out}");
}

// ---------------------------------------------------------------------------------------------
// 3. docker-archive
// ---------------------------------------------------------------------------------------------

/// A `docker save`-format tar written by skopeo is pushed with `kura push docker-archive:`; the
/// image pulled back keeps the source's uncompressed layer digests. `kura pull` into a
/// docker-archive writes a tar that skopeo reads.
#[test]
fn docker_archive_push_and_pull_interoperate_with_skopeo() {
    let srv = KuraServer::start();
    let cli = Cli::new();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    let image = oci_layout::single_image_layout(&src, "t", 3, 21);
    let tar = work.path().join("app.tar");
    skopeo_ok(
        &cli,
        &[
            "copy",
            &oci(&src, "t"),
            &format!("docker-archive:{}:app:t", tar.display()),
        ],
    );

    let dest = format!("{}/proj/app:t", srv.addr);
    kura_ok(
        &cli,
        &["push", &format!("docker-archive:{}", tar.display()), &dest],
    );

    let back = work.path().join("back");
    skopeo_ok(
        &cli,
        &[
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{dest}"),
            &oci(&back, "t"),
        ],
    );
    assert_diff_ids(&back, "t", &image.diff_ids, "pushed from docker-archive");

    // kura pull into a docker-archive, read by skopeo.
    let out_tar = work.path().join("out.tar");
    let archive = format!("docker-archive:{}", out_tar.display());
    kura_ok(&cli, &["pull", &dest, &archive]);
    let out = skopeo_ok(&cli, &["inspect", &archive]);
    let v: Value = serde_json::from_str(&out).expect("skopeo inspect JSON");
    assert_eq!(
        v["Layers"].as_array().map(Vec::len),
        Some(3),
        "skopeo sees three layers: {out}"
    );
    let x = work.path().join("x");
    skopeo_ok(&cli, &["copy", &archive, &oci(&x, "t")]);
    assert_diff_ids(&x, "t", &image.diff_ids, "kura pull docker-archive");
}

// ---------------------------------------------------------------------------------------------
// 4. credentials shared with skopeo and podman
// ---------------------------------------------------------------------------------------------

/// After `kura login` (docker config.json), skopeo and podman use the same credentials.
#[test]
fn kura_login_is_used_by_skopeo_and_podman() {
    let p = private_registry();
    let addr = p.srv.addr.clone();
    let image = format!("{addr}/private/app:t");
    let cli = Cli::new();

    // Control: without credentials the private image is refused.
    let anon = run_timed(
        &mut skopeo(
            &cli,
            &[
                "inspect",
                "--tls-verify=false",
                &format!("docker://{image}"),
            ],
        ),
        None,
        "skopeo inspect (anonymous)",
    );
    assert!(
        !anon.status.success(),
        "anonymous skopeo inspect of a private image succeeded: {}",
        text(&anon.stdout)
    );

    let out = cli.login(&addr, ADMIN, ADMIN_PASSWORD);
    let stdout = must(&out, "kura login");
    assert!(stdout.contains("Login Succeeded"), "{stdout}");
    let config = read_json(&cli.docker_config_file());
    assert_eq!(
        config["auths"][&addr]["auth"],
        auth::b64_encode(format!("{ADMIN}:{ADMIN_PASSWORD}").as_bytes()).as_str(),
        "config.json: {config}"
    );

    // skopeo finds the login in ~/.docker/config.json.
    let out = skopeo_ok(
        &cli,
        &[
            "inspect",
            "--tls-verify=false",
            &format!("docker://{image}"),
        ],
    );
    let v: Value = serde_json::from_str(&out).expect("skopeo inspect JSON");
    assert_eq!(v["Digest"], p.digest.as_str(), "{out}");

    // podman too: it names the user, and pulls the private image.
    let pdir = cli.home.path().join("podman");
    let got = ok(
        &mut podman(&cli, &pdir, &["login", "--get-login", &addr]),
        "podman login --get-login",
    );
    assert_eq!(got.trim(), ADMIN, "podman login --get-login");
    let policy = pdir.join("policy.json");
    std::fs::write(
        &policy,
        r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
    )
    .unwrap();
    let id = ok(
        &mut podman(
            &cli,
            &pdir,
            &[
                "pull",
                "-q",
                "--tls-verify=false",
                "--signature-policy",
                &path_str(&policy),
                &image,
            ],
        ),
        "podman pull",
    );
    assert!(!id.trim().is_empty(), "podman pull printed no image id");
}

/// Credentials stored by `podman login` ($XDG_RUNTIME_DIR/containers/auth.json) and by
/// `skopeo login --authfile ~/.docker/config.json` are used by `kura`.
#[test]
fn podman_and_skopeo_logins_are_used_by_kura() {
    let p = private_registry();
    let addr = p.srv.addr.clone();
    let password = format!("{ADMIN_PASSWORD}\n");

    // Control: no credentials, no listing (exit 3: authentication).
    let nobody = Cli::new();
    kura_fails(&nobody, &["ls", &format!("{addr}/private/app")], 3);

    // podman login writes the containers auth.json in the runtime directory. (podman 4 writes
    // $DOCKER_CONFIG/config.json instead when DOCKER_CONFIG is set, so this podman user, like
    // most, has it unset; kura still runs with it set, and must fall back to auth.json.)
    let viapodman = Cli::new();
    let pdir = viapodman.home.path().join("podman");
    let mut login = podman(
        &viapodman,
        &pdir,
        &[
            "login",
            "--tls-verify=false",
            "-u",
            ADMIN,
            "--password-stdin",
            &addr,
        ],
    );
    login.env_remove("DOCKER_CONFIG");
    let out = run_timed(&mut login, Some(password.as_bytes()), "podman login");
    must(&out, "podman login");
    let auth_json = viapodman.runtime_dir().join("containers/auth.json");
    assert!(
        auth_json.is_file(),
        "podman login did not write {}",
        auth_json.display()
    );
    assert!(
        read_json(&auth_json)["auths"].get(&addr).is_some(),
        "auth.json: {}",
        read_json(&auth_json)
    );
    assert!(
        !viapodman.docker_config_file().exists(),
        "podman login wrote config.json"
    );
    assert_lists_private_tag(&viapodman, &addr, &p.digest, "after podman login");

    // skopeo login into the docker config file.
    let viaskopeo = Cli::new();
    let config = viaskopeo.docker_config_file();
    let out = run_timed(
        &mut skopeo(
            &viaskopeo,
            &[
                "login",
                "--tls-verify=false",
                "--authfile",
                &path_str(&config),
                "-u",
                ADMIN,
                "--password-stdin",
                &addr,
            ],
        ),
        Some(password.as_bytes()),
        "skopeo login",
    );
    must(&out, "skopeo login");
    assert!(
        read_json(&config)["auths"].get(&addr).is_some(),
        "config.json: {}",
        read_json(&config)
    );
    assert_lists_private_tag(&viaskopeo, &addr, &p.digest, "after skopeo login");
}

// ---------------------------------------------------------------------------------------------
// 5. a docker credential helper
// ---------------------------------------------------------------------------------------------

/// A docker-credential-helpers protocol implementation keeping credentials in a JSON file and
/// logging each call (`ACTION SERVER`).
const HELPER: &str = r#"#!PYTHON
import json, os, sys
STORE = "STORE_PATH"
LOG = "LOG_PATH"

def load():
    try:
        with open(STORE) as f:
            return json.load(f)
    except FileNotFoundError:
        return {}

def save(d):
    tmp = STORE + ".tmp"
    with open(tmp, "w") as f:
        json.dump(d, f)
    os.replace(tmp, STORE)

action = sys.argv[1] if len(sys.argv) > 1 else ""
data = sys.stdin.read()
server = data.strip()
if action == "store":
    entry = json.loads(data)
    server = entry["ServerURL"]
with open(LOG, "a") as f:
    f.write(action + " " + server + "\n")
d = load()
if action == "store":
    d[server] = {"Username": entry["Username"], "Secret": entry["Secret"]}
    save(d)
elif action == "get":
    if server not in d:
        print("credentials not found in native keychain")
        sys.exit(1)
    print(json.dumps({"ServerURL": server, "Username": d[server]["Username"],
                      "Secret": d[server]["Secret"]}))
elif action == "erase":
    if server not in d:
        print("credentials not found in native keychain")
        sys.exit(1)
    del d[server]
    save(d)
elif action == "list":
    print(json.dumps({k: v["Username"] for k, v in d.items()}))
else:
    print("unknown action " + action)
    sys.exit(1)
"#;

/// `docker-credential-kuratest` installed for `cli` in a directory of its own.
struct Helper {
    /// PATH with the helper's directory first.
    path: String,
    /// The helper's JSON store.
    store: PathBuf,
    /// One line per call: `ACTION SERVER`.
    log: PathBuf,
}

impl Helper {
    fn install(cli: &Cli) -> Helper {
        let bin = cli.home.path().join("helper-bin");
        std::fs::create_dir_all(&bin).unwrap();
        let store = cli.home.path().join("keychain.json");
        let log = cli.home.path().join("helper.log");
        let python = {
            let mut cmd = Command::new(tool("python3"));
            cmd.args(["-c", "import sys; print(sys.executable)"]);
            ok(&mut cmd, "python3 -c sys.executable").trim().to_string()
        };
        let script = HELPER
            .replace("PYTHON", &python)
            .replace("STORE_PATH", &path_str(&store))
            .replace("LOG_PATH", &path_str(&log));
        let helper = bin.join("docker-credential-kuratest");
        std::fs::write(&helper, script).unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        Helper { path, store, log }
    }

    /// `kura ARGS...` as `cli`, finding the helper on PATH.
    fn kura(&self, cli: &Cli, args: &[&str]) -> Command {
        let mut cmd = cli.cmd(args);
        cmd.env("PATH", &self.path);
        cmd
    }

    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn store(&self) -> Value {
        if self.store.exists() {
            read_json(&self.store)
        } else {
            Value::Object(Default::default())
        }
    }

    /// `kura login ADDR` through the helper; checks where the secret went.
    fn login(&self, cli: &Cli, addr: &str) {
        let what = "kura login (credential helper)";
        let out = run_timed(
            &mut self.kura(cli, &["login", addr, "-u", ADMIN, "--password-stdin"]),
            Some(format!("{ADMIN_PASSWORD}\n").as_bytes()),
            what,
        );
        let stdout = must(&out, what);
        assert!(
            stdout.contains("docker-credential-kuratest"),
            "login names the helper: {stdout}"
        );
        let config_text = std::fs::read_to_string(cli.docker_config_file()).unwrap();
        let config: Value = serde_json::from_str(&config_text).unwrap();
        let entry = &config["auths"][addr];
        assert!(
            entry.is_object() && entry.get("auth").is_none() && entry.get("password").is_none(),
            "config.json must hold only docker's marker for {addr}: {config_text}"
        );
        assert!(
            !config_text.contains(ADMIN_PASSWORD)
                && !config_text.contains(&auth::b64_encode(
                    format!("{ADMIN}:{ADMIN_PASSWORD}").as_bytes()
                )),
            "the secret leaked into config.json: {config_text}"
        );
        let kept = self.store();
        assert_eq!(kept[addr]["Username"], ADMIN, "helper store: {kept}");
        assert_eq!(kept[addr]["Secret"], ADMIN_PASSWORD, "helper store: {kept}");
        assert!(
            self.calls().contains(&format!("store {addr}")),
            "no `store {addr}` call: {:?}",
            self.calls()
        );
    }

    /// `kura logout ADDR` erases the helper's entry and docker's marker.
    fn logout(&self, cli: &Cli, addr: &str) {
        let out = ok(
            &mut self.kura(cli, &["logout", addr]),
            "kura logout (helper)",
        );
        assert!(out.contains("Removed login credentials"), "{out}");
        assert!(
            self.calls().contains(&format!("erase {addr}")),
            "no `erase {addr}` call: {:?}",
            self.calls()
        );
        let kept = self.store();
        assert!(kept.get(addr).is_none(), "still in the helper: {kept}");
        assert!(
            read_json(&cli.docker_config_file())["auths"]
                .get(addr)
                .is_none(),
            "config.json still names {addr}"
        );
    }

    /// `kura ls ADDR/private/app` must exit with `code`.
    fn ls_exit(&self, cli: &Cli, addr: &str, code: i32) -> String {
        let what = format!("kura ls {addr}/private/app (helper)");
        let out = run_timed(
            &mut self.kura(
                cli,
                &["ls", &format!("{addr}/private/app"), "--format", "json"],
            ),
            None,
            &what,
        );
        assert_eq!(
            out.status.code(),
            Some(code),
            "{what}: expected exit {code}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }
}

/// `kura login` with `"credsStore": "kuratest"` stores through `docker-credential-kuratest`
/// (config.json keeps only docker's empty marker), `kura ls` reads it back through the helper,
/// and `kura logout` erases it there.
#[test]
fn credential_helper_store_get_erase() {
    let p = private_registry();
    let addr = p.srv.addr.clone();
    let cli = Cli::new();
    let helper = Helper::install(&cli);
    std::fs::write(cli.docker_config_file(), r#"{"credsStore": "kuratest"}"#).unwrap();

    helper.login(&cli, &addr);
    assert_eq!(
        read_json(&cli.docker_config_file())["credsStore"],
        "kuratest",
        "credsStore kept"
    );

    let out = helper.ls_exit(&cli, &addr, 0);
    assert!(out.contains(&p.digest), "kura ls lists the image: {out}");
    assert!(
        helper.calls().contains(&format!("get {addr}")),
        "no `get {addr}` call: {:?}",
        helper.calls()
    );

    helper.logout(&cli, &addr);
    helper.ls_exit(&cli, &addr, 3);
}

/// The same helper named for one registry in `credHelpers` (the form containers/image reads;
/// it ignores `credsStore`): what `kura login` stores there, skopeo reads.
#[test]
fn per_registry_credential_helper_is_shared_with_skopeo() {
    let p = private_registry();
    let addr = p.srv.addr.clone();
    let cli = Cli::new();
    let helper = Helper::install(&cli);
    std::fs::write(
        cli.docker_config_file(),
        serde_json::json!({"credHelpers": {&addr: "kuratest"}}).to_string(),
    )
    .unwrap();

    helper.login(&cli, &addr);
    let out = helper.ls_exit(&cli, &addr, 0);
    assert!(out.contains(&p.digest), "kura ls lists the image: {out}");

    let calls_before = helper.calls().len();
    let mut cmd = skopeo(
        &cli,
        &[
            "inspect",
            "--tls-verify=false",
            &format!("docker://{addr}/private/app:t"),
        ],
    );
    cmd.env("PATH", &helper.path);
    let out = ok(&mut cmd, "skopeo inspect (credHelpers)");
    let v: Value = serde_json::from_str(&out).expect("skopeo inspect JSON");
    assert_eq!(v["Digest"], p.digest.as_str(), "{out}");
    assert!(
        helper.calls()[calls_before..].contains(&format!("get {addr}")),
        "skopeo did not ask the helper: {:?}",
        helper.calls()
    );

    helper.logout(&cli, &addr);
    helper.ls_exit(&cli, &addr, 3);
}

// ---------------------------------------------------------------------------------------------
// 6. progress bars on a terminal only
// ---------------------------------------------------------------------------------------------

const BIG_LAYER_MIB: usize = 96;

/// A loopback TCP proxy to `target` (`host:port`) that passes at most `bytes_per_sec` in each
/// direction of each connection; returns its own `127.0.0.1:port`. Its threads end with the
/// test process, or with their connection.
fn paced_proxy(target: &str, bytes_per_sec: u64) -> String {
    use std::net::{Shutdown, TcpListener, TcpStream};
    fn pipe(mut from: TcpStream, mut to: TcpStream, bytes_per_sec: u64) {
        let started = std::time::Instant::now();
        let mut passed = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
            passed += n as u64;
            let due = Duration::from_secs_f64(passed as f64 / bytes_per_sec as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        to.shutdown(Shutdown::Write).ok();
    }
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
    let addr = listener.local_addr().expect("proxy address").to_string();
    let target = target.to_string();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { break };
            let Ok(server) = TcpStream::connect(&target) else {
                break;
            };
            let (c2, s2) = (
                client.try_clone().expect("clone"),
                server.try_clone().expect("clone"),
            );
            std::thread::spawn(move || pipe(client, server, bytes_per_sec));
            std::thread::spawn(move || pipe(s2, c2, bytes_per_sec));
        }
    });
    addr
}

/// A layout tagged `v1` with one uncompressed tar layer holding `BIG_LAYER_MIB` MiB of random
/// bytes, written in chunks (tar by GNU tar, hashing streamed).
fn big_layout(work: &Path) -> PathBuf {
    let stage = work.join("stage");
    std::fs::create_dir_all(&stage).unwrap();
    {
        let f = std::fs::File::create(stage.join("big.bin")).unwrap();
        let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
        let mut rng = SmallRng::seed_from_u64(99);
        let mut chunk = vec![0u8; 1 << 20];
        for _ in 0..BIG_LAYER_MIB {
            rng.fill_bytes(&mut chunk);
            w.write_all(&chunk).unwrap();
        }
        w.flush().unwrap();
    }
    let tar = work.join("layer.tar");
    let mut cmd = Command::new(tool("tar"));
    cmd.arg("--format=ustar")
        .arg("-cf")
        .arg(&tar)
        .arg("-C")
        .arg(&stage)
        .arg("big.bin");
    ok(&mut cmd, "tar -cf layer.tar big.bin");
    std::fs::remove_file(stage.join("big.bin")).unwrap();
    let mut hasher = Sha256::new();
    let mut f = std::fs::File::open(&tar).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    let layer_digest = format!("sha256:{}", hex::encode(hasher.finalize()));

    let root = work.join("big-layout");
    let mut layout = oci_layout::OciLayout::create(&root);
    std::fs::rename(&tar, layout.blob_path(&layer_digest)).unwrap();
    let config = serde_json::json!({
        "created": "2024-01-01T00:00:00Z",
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    });
    let config = layout.write_blob(
        oci_layout::MEDIA_TYPE_OCI_CONFIG,
        &serde_json::to_vec(&config).unwrap(),
    );
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": oci_layout::MEDIA_TYPE_OCI_MANIFEST,
        "config": config.to_json(),
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer_digest,
            "size": size,
        }],
    });
    let manifest = layout.write_blob(
        oci_layout::MEDIA_TYPE_OCI_MANIFEST,
        &serde_json::to_vec(&manifest).unwrap(),
    );
    layout.tag("v1", &manifest);
    root
}

/// Removes ANSI escape sequences (CSI `ESC [ ... final`, and two-byte `ESC x`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        // A two-byte sequence is dropped whole; a CSI runs to its final byte.
        if let Some('[') = chars.next() {
            for c in chars.by_ref() {
                if ('\u{40}'..='\u{7e}').contains(&c) {
                    break;
                }
            }
        }
    }
    out
}

/// Single-quotes `s` for sh.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// `kura push` draws progress bars on a terminal (run under `script`, a real pty), and
/// prints none when its output is piped.
#[test]
fn push_progress_bars_only_on_a_terminal() {
    let srv = KuraServer::start();
    let cli = Cli::new();
    let work = tempfile::tempdir().unwrap();
    let layout = big_layout(work.path());

    // Piped: no bars, no carriage returns, just the summary.
    let args = [
        "push",
        &oci(&layout, "v1"),
        &format!("{}/proj/plain:v1", srv.addr),
    ]
    .map(|s| s.to_string());
    let args_ref: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run_timed(&mut cli.cmd(&args_ref), None, "kura push (piped)");
    let stdout = must(&out, "kura push (piped)");
    let stderr = text(&out.stderr);
    assert!(
        stdout.contains("2 transferred"),
        "both blobs went up (so a bar would have had something to show): {stdout}"
    );
    for bad in ["[=", "\r", "Pushing", "MiB/", "\u{1b}["] {
        assert!(
            !stderr.contains(bad) && !stdout.contains(bad),
            "piped push printed {bad:?}:\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
        );
    }

    // On a terminal (another repository, so the blobs move again), through a proxy that
    // paces the bytes: unpaced, the layer crossed loopback between two redraws (10 a second)
    // and the bar was only ever drawn empty and then done.
    let paced = paced_proxy(&srv.addr, 64 << 20);
    let command = format!(
        "stty cols 120 rows 40 2>/dev/null; exec {} push {} {}",
        sh_quote(env!("CARGO_BIN_EXE_kura")),
        sh_quote(&oci(&layout, "v1")),
        sh_quote(&format!("{paced}/proj/tty:v1")),
    );
    let mut cmd = Command::new(tool("script"));
    cmd.args(["-qfec", &command, "/dev/null"]);
    cli.env(&mut cmd);
    cmd.env("TERM", "xterm-256color")
        .env_remove("NO_COLOR")
        .env_remove("CI");
    let out = run_timed(&mut cmd, None, "script -qfec 'kura push' (terminal)");
    let raw = text(&out.stdout);
    let screen = strip_ansi(&raw);
    eprintln!("--- the terminal showed (escape sequences removed) ---\n{screen}\n---");
    assert!(
        out.status.success(),
        "kura push on a terminal failed ({:?}):\n{screen}\n--- stderr ---\n{}",
        out.status.code(),
        text(&out.stderr)
    );
    assert!(
        screen.contains("Pushing"),
        "no `Pushing` bar on the terminal:\n{screen}"
    );
    assert!(
        screen.contains("[=") || screen.contains("MiB/"),
        "no progress bar drawn on the terminal:\n{screen}"
    );
    assert!(
        screen.contains("Pushed"),
        "no closing status on the terminal:\n{screen}"
    );
}

// ---------------------------------------------------------------------------------------------
// 7. TLS
// ---------------------------------------------------------------------------------------------

/// A minimal registry over HTTPS: `/v2/` and `/v2/_catalog` only. Prints its port.
const HTTPS_SERVER: &str = r#"
import http.server, json, ssl, sys

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == "/v2/":
            status, body = 200, b"{}"
        elif path == "/v2/_catalog":
            status, body = 200, json.dumps({"repositories": ["x/y"]}).encode()
        else:
            status, body = 404, b'{"errors":[{"code":"NOT_FOUND","message":"not here"}]}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Docker-Distribution-API-Version", "registry/2.0")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # failed handshakes (plain HTTP, untrusted certificate) are expected

ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
srv = Server(("127.0.0.1", 0), Handler)
# The handshake happens in the handler thread, so a stalled client cannot block accept().
srv.socket = ctx.wrap_socket(srv.socket, server_side=True, do_handshake_on_connect=False)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"#;

/// The HTTPS server process (ours), killed when dropped.
struct HttpsServer {
    child: Child,
    addr: String,
}

impl Drop for HttpsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_https(dir: &Path) -> (HttpsServer, PathBuf) {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let mut cmd = Command::new(tool("openssl"));
    cmd.args([
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=127.0.0.1",
        "-addext",
        "subjectAltName=IP:127.0.0.1",
        "-keyout",
    ])
    .arg(&key)
    .arg("-out")
    .arg(&cert);
    ok(&mut cmd, "openssl req -x509");
    let script = dir.join("https_registry.py");
    std::fs::write(&script, HTTPS_SERVER).unwrap();
    let mut child = Command::new(tool("python3"))
        .arg(&script)
        .arg(&cert)
        .arg(&key)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start python3 https server");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line);
        let _ = tx.send(line);
    });
    let mut server = HttpsServer {
        child,
        addr: String::new(),
    };
    let line = rx
        .recv_timeout(Duration::from_secs(15))
        .expect("the HTTPS server did not print its port within 15 s");
    let port: u16 = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("the HTTPS server printed {line:?}, not a port"));
    server.addr = format!("127.0.0.1:{port}");
    (server, cert)
}

/// A registry with a self-signed certificate: refused with exit 5 and a hint naming
/// `--insecure` and `--ca-file`; listed with `--ca-file cert.pem`, and with `--insecure`.
#[test]
fn self_signed_tls_needs_ca_file_or_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let (server, cert) = start_https(dir.path());
    let cli = Cli::new();

    let stderr = kura_fails(&cli, &["ls", &server.addr], 5);
    assert!(
        stderr.contains("--insecure") && stderr.contains("--ca-file"),
        "the TLS failure should say how to fix it: {stderr}"
    );

    let out = kura_ok(&cli, &["ls", "--insecure", &server.addr]);
    assert!(
        out.lines().any(|l| l.trim() == "x/y"),
        "kura ls --insecure: {out}"
    );

    // The certificate `openssl req -x509` makes is its own CA (basicConstraints CA:TRUE), as
    // most self-signed registry certificates are; docker (certs.d/ca.crt), skopeo
    // (--cert-dir) and curl (--cacert) all trust it as given.
    let out = kura_ok(&cli, &["ls", "--ca-file", &path_str(&cert), &server.addr]);
    assert!(
        out.lines().any(|l| l.trim() == "x/y"),
        "kura ls --ca-file: {out}"
    );
}
