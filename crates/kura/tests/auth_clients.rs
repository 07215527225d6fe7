//! Real clients against `kura serve --auth-mode local`: `skopeo login` + copy to and from a
//! private project (following the Bearer challenge to `/token`), anonymous pulls from a public
//! project, and oras-py with a username and password.
//!
//! The clients are installed by `scripts/test`; a missing client makes a test FAIL, never pass
//! silently. podman is not covered (not installed in the test environment).
//!
//! Environment overrides: `KURA_SKOPEO` (path of skopeo), `KURA_ORAS_PYTHON` (a Python that can
//! `import oras`; default `$HOME/.cache/kura-test-venv/bin/python`).

mod common;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::KuraServer;
use common::api::OCI_MANIFEST;
use common::auth::{ADMIN, ADMIN_PASSWORD, Cred, Reg, header_str, start_local};
use common::oci_layout::{self, Image, sha256_digest};
use reqwest::Method;
use serde_json::Value;

const CLIENT_TIMEOUT: Duration = Duration::from_secs(300);

fn pw(user: &str) -> String {
    format!("{user}-pass-1")
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
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
            "skopeo is not installed (not found on PATH). Run scripts/test, which installs it, \
             or set KURA_SKOPEO."
        )
    })
}

fn oras_python() -> PathBuf {
    let python = match std::env::var_os("KURA_ORAS_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => Path::new(&std::env::var_os("HOME").expect("HOME is set"))
            .join(".cache/kura-test-venv/bin/python"),
    };
    assert!(
        python.is_file(),
        "the oras client (oras-py) is not installed: {} does not exist. Run scripts/test, which \
         creates that venv and pip-installs `oras`, or set KURA_ORAS_PYTHON.",
        python.display()
    );
    let check = std::process::Command::new(&python)
        .args(["-c", "import oras.provider"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    assert!(
        check.status.success(),
        "oras-py is not importable from {}: {}",
        python.display(),
        String::from_utf8_lossy(&check.stderr).trim()
    );
    python
}

/// What a client run produced.
struct Run {
    ok: bool,
    stdout: Vec<u8>,
    stderr: String,
    shown: String,
}

impl Run {
    fn must_succeed(self) -> Run {
        assert!(
            self.ok,
            "`{}` failed\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.shown,
            String::from_utf8_lossy(&self.stdout),
            self.stderr
        );
        self
    }

    /// The run failed, and because access was refused (not for some unrelated reason).
    fn must_fail(self) -> Run {
        assert!(
            !self.ok,
            "`{}` succeeded but should have been refused\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.shown,
            String::from_utf8_lossy(&self.stdout),
            self.stderr
        );
        let err = self.stderr.to_lowercase();
        assert!(
            [
                "unauthorized",
                "denied",
                "invalid username/password",
                "refused a pull,push token",
                "forbidden",
            ]
            .iter()
            .any(|n| err.contains(n)),
            "`{}` failed, but not with an access refusal:\n{}",
            self.shown,
            self.stderr
        );
        self
    }
}

/// Runs a program (bounded), feeding `stdin`, with extra environment variables.
async fn run(program: &Path, args: &[&str], stdin: Option<&str>, envs: &[(&str, &str)]) -> Run {
    use tokio::io::AsyncWriteExt;
    let shown = format!("{} {}", program.display(), args.join(" "));
    eprintln!("$ {shown}");
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args.iter().map(OsString::from))
        .stdin(if stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `{shown}`: {e}"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input.as_bytes()).await.unwrap();
        drop(pipe);
    }
    let out = tokio::time::timeout(CLIENT_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("`{shown}` did not finish within {CLIENT_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("waiting for `{shown}`: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !stderr.is_empty() {
        eprintln!("{}", stderr.trim_end());
    }
    Run {
        ok: out.status.success(),
        stdout: out.stdout,
        stderr,
        shown,
    }
}

/// skopeo with its own auth file (never the user's) and no signature policy.
struct Skopeo {
    bin: PathBuf,
    authfile: String,
}

impl Skopeo {
    fn new(dir: &Path) -> Skopeo {
        Skopeo {
            bin: skopeo(),
            authfile: dir.join("auth.json").to_str().unwrap().to_string(),
        }
    }

    async fn run(&self, args: &[&str], stdin: Option<&str>) -> Run {
        let mut all = vec!["--insecure-policy"];
        all.extend_from_slice(args);
        // REGISTRY_AUTH_FILE keeps every subcommand off the default auth files.
        run(
            &self.bin,
            &all,
            stdin,
            &[("REGISTRY_AUTH_FILE", self.authfile.as_str())],
        )
        .await
    }

    async fn login(&self, addr: &str, user: &str, password: &str) -> Run {
        self.run(
            &[
                "login",
                "--tls-verify=false",
                "--authfile",
                &self.authfile,
                "--username",
                user,
                "--password-stdin",
                addr,
            ],
            Some(&format!("{password}\n")),
        )
        .await
    }
}

fn ref_digest(layout: &Path, tag: &str) -> String {
    oci_layout::read_refs(layout)
        .into_iter()
        .find(|(name, _)| name == tag)
        .unwrap_or_else(|| panic!("tag {tag} not in {}/index.json", layout.display()))
        .1
        .digest
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

/// GET of a manifest with `cred`: (status, Docker-Content-Digest).
async fn manifest_digest(
    reg: &Reg,
    cred: &Cred,
    repo: &str,
    reference: &str,
) -> (u16, Option<String>) {
    let resp = reg
        .req(
            Method::GET,
            &format!("/v2/{repo}/manifests/{reference}"),
            cred,
        )
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    (
        resp.status().as_u16(),
        header_str(resp.headers(), "docker-content-digest"),
    )
}

async fn setup_users(srv: &KuraServer, users: &[&str]) -> Reg {
    let reg = Reg::new(srv);
    for u in users {
        reg.create_user(u, &pw(u)).await;
    }
    reg
}

// ---------------------------------------------------------------------------------------------
// skopeo
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn skopeo_login_then_push_and_pull_a_private_project() {
    skopeo();
    let srv = start_local(&[]);
    let reg = setup_users(&srv, &["alice", "bob"]).await;
    let alice = Cred::basic("alice", &pw("alice"));
    reg.create_project(&alice, "priv", false).await;

    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let image = oci_layout::single_image_layout(&src, "v1", 3, 7);
    let dest = format!("docker://{}/priv/app:v1", srv.addr);
    let alice_dir = tmp.path().join("alice");
    std::fs::create_dir_all(&alice_dir).unwrap();
    let sk = Skopeo::new(&alice_dir);

    // A wrong password is refused at login, and nothing is stored.
    sk.login(&srv.addr, "alice", "wrong-password")
        .await
        .must_fail();
    let stored = std::fs::read_to_string(&sk.authfile).unwrap_or_default();
    assert!(
        !stored.contains(&srv.addr),
        "failed login stored credentials: {stored}"
    );

    sk.login(&srv.addr, "alice", &pw("alice"))
        .await
        .must_succeed();
    let stored: Value =
        serde_json::from_str(&std::fs::read_to_string(&sk.authfile).unwrap()).unwrap();
    assert!(
        stored["auths"][&srv.addr].is_object(),
        "skopeo login stored no credentials for {}: {stored}",
        srv.addr
    );

    // Push with the stored login.
    sk.run(
        &[
            "copy",
            "--preserve-digests",
            "--authfile",
            &sk.authfile,
            "--dest-tls-verify=false",
            &format!("oci:{}:v1", src.display()),
            &dest,
        ],
        None,
    )
    .await
    .must_succeed();
    assert_eq!(
        manifest_digest(&reg, &alice, "priv/app", "v1").await,
        (200, Some(image.manifest.digest.clone())),
        "the pushed manifest, as alice sees it"
    );
    // The project is private: anonymous HTTP gets a challenge.
    assert_eq!(
        manifest_digest(&reg, &Cred::Anonymous, "priv/app", "v1")
            .await
            .0,
        401
    );

    let raw = sk
        .run(
            &[
                "inspect",
                "--raw",
                "--authfile",
                &sk.authfile,
                "--tls-verify=false",
                &dest,
            ],
            None,
        )
        .await
        .must_succeed();
    assert_eq!(sha256_digest(&raw.stdout), image.manifest.digest);
    assert!(
        raw.stdout == image.manifest_bytes,
        "inspect --raw bytes differ"
    );

    // Pull back, byte for byte.
    let dst = tmp.path().join("dst");
    sk.run(
        &[
            "copy",
            "--preserve-digests",
            "--authfile",
            &sk.authfile,
            "--src-tls-verify=false",
            &dest,
            &format!("oci:{}:v1", dst.display()),
        ],
        None,
    )
    .await
    .must_succeed();
    assert_eq!(ref_digest(&dst, "v1"), image.manifest.digest);
    assert_layout_holds_image(&dst, &src, &image);

    // Without credentials the private image cannot be pulled.
    let anon = tmp.path().join("anon");
    sk.run(
        &[
            "copy",
            "--src-no-creds",
            "--src-tls-verify=false",
            &dest,
            &format!("oci:{}:v1", anon.display()),
        ],
        None,
    )
    .await
    .must_fail();

    // bob logs in fine, but is not a member: his pull is refused.
    let bob_dir = tmp.path().join("bob");
    std::fs::create_dir_all(&bob_dir).unwrap();
    let bob = Skopeo::new(&bob_dir);
    bob.login(&srv.addr, "bob", &pw("bob")).await.must_succeed();
    bob.run(
        &[
            "copy",
            "--authfile",
            &bob.authfile,
            "--src-tls-verify=false",
            &dest,
            &format!("oci:{}:v1", tmp.path().join("bob-dst").display()),
        ],
        None,
    )
    .await
    .must_fail();

    // After logout alice's auth file no longer opens the project.
    sk.run(&["logout", "--authfile", &sk.authfile, &srv.addr], None)
        .await
        .must_succeed();
    sk.run(
        &[
            "inspect",
            "--raw",
            "--authfile",
            &sk.authfile,
            "--tls-verify=false",
            &dest,
        ],
        None,
    )
    .await
    .must_fail();
}

#[tokio::test]
async fn skopeo_anonymous_pull_from_public_project_only() {
    skopeo();
    let srv = start_local(&[]);
    let reg = Reg::new(&srv);
    let admin = Cred::admin();
    reg.create_project(&admin, "pub", true).await;
    reg.create_project(&admin, "priv", false).await;

    let tmp = tempfile::tempdir().unwrap();
    let sk = Skopeo::new(tmp.path());
    let src = tmp.path().join("src");
    let image = oci_layout::single_image_layout(&src, "v1", 2, 11);
    let creds = format!("{ADMIN}:{ADMIN_PASSWORD}");
    for project in ["pub", "priv"] {
        sk.run(
            &[
                "copy",
                "--preserve-digests",
                "--dest-creds",
                &creds,
                "--dest-tls-verify=false",
                &format!("oci:{}:v1", src.display()),
                &format!("docker://{}/{project}/app:v1", srv.addr),
            ],
            None,
        )
        .await
        .must_succeed();
    }

    // Anonymous, no login at all: the public image pulls.
    let public = format!("docker://{}/pub/app:v1", srv.addr);
    let dst = tmp.path().join("dst");
    sk.run(
        &[
            "copy",
            "--preserve-digests",
            "--src-no-creds",
            "--src-tls-verify=false",
            &public,
            &format!("oci:{}:v1", dst.display()),
        ],
        None,
    )
    .await
    .must_succeed();
    assert_eq!(ref_digest(&dst, "v1"), image.manifest.digest);
    assert_layout_holds_image(&dst, &src, &image);
    let raw = sk
        .run(
            &[
                "inspect",
                "--raw",
                "--no-creds",
                "--tls-verify=false",
                &public,
            ],
            None,
        )
        .await
        .must_succeed();
    assert_eq!(sha256_digest(&raw.stdout), image.manifest.digest);

    // The private one does not.
    let private = format!("docker://{}/priv/app:v1", srv.addr);
    sk.run(
        &[
            "copy",
            "--src-no-creds",
            "--src-tls-verify=false",
            &private,
            &format!("oci:{}:v1", tmp.path().join("nope").display()),
        ],
        None,
    )
    .await
    .must_fail();
    sk.run(
        &[
            "inspect",
            "--raw",
            "--no-creds",
            "--tls-verify=false",
            &private,
        ],
        None,
    )
    .await
    .must_fail();

    // Nor may anonymous users push into the public project.
    sk.run(
        &[
            "copy",
            "--dest-no-creds",
            "--dest-tls-verify=false",
            &format!("oci:{}:v1", src.display()),
            &format!("docker://{}/pub/other:v1", srv.addr),
        ],
        None,
    )
    .await
    .must_fail();
    let (status, _) = manifest_digest(&reg, &admin, "pub/other", "v1").await;
    assert_eq!(
        status, 404,
        "the refused anonymous push left nothing behind"
    );
}

/// `skopeo list-tags` follows the challenge of `tags/list` (scope `repository:NAME:pull`) to
/// the token endpoint and sends the token: listing tags must work with it for everyone the
/// table lets list (here: anonymously on a public project, and a guest on a private one).
#[tokio::test]
async fn skopeo_list_tags_with_tokens() {
    skopeo();
    let srv = start_local(&[]);
    let reg = setup_users(&srv, &["gus"]).await;
    let admin = Cred::admin();
    reg.create_project(&admin, "pub", true).await;
    reg.create_project(&admin, "priv", false).await;
    reg.set_member(&admin, "priv", "gus", "guest").await;
    for repo in ["pub/app", "priv/app"] {
        reg.push_image(&admin, repo, "v1").await;
        reg.push_image(&admin, repo, "v2").await;
    }
    let tmp = tempfile::tempdir().unwrap();
    let sk = Skopeo::new(tmp.path());

    let out = sk
        .run(
            &[
                "list-tags",
                "--no-creds",
                "--tls-verify=false",
                &format!("docker://{}/pub/app", srv.addr),
            ],
            None,
        )
        .await
        .must_succeed();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["Tags"], serde_json::json!(["v1", "v2"]), "{v}");

    sk.login(&srv.addr, "gus", &pw("gus")).await.must_succeed();
    let out = sk
        .run(
            &[
                "list-tags",
                "--authfile",
                &sk.authfile,
                "--tls-verify=false",
                &format!("docker://{}/priv/app", srv.addr),
            ],
            None,
        )
        .await
        .must_succeed();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["Tags"], serde_json::json!(["v1", "v2"]), "{v}");
}

// ---------------------------------------------------------------------------------------------
// oras-py
// ---------------------------------------------------------------------------------------------

/// Runs tests/clients/oras_client.py; `login` is (username, password, auth backend).
async fn oras(srv: &KuraServer, login: Option<(&str, &str, &str)>, args: &[&str]) -> Run {
    let python = oras_python();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/oras_client.py");
    let mut all: Vec<&str> = vec![script.to_str().unwrap(), "--registry", &srv.addr];
    let mut envs = Vec::new();
    if let Some((user, password, backend)) = login {
        all.extend_from_slice(&["--username", user, "--auth-backend", backend]);
        envs.push(("KURA_ORAS_PASSWORD", password));
    }
    all.extend_from_slice(args);
    run(&python, &all, None, &envs).await
}

fn json_of(run: &Run) -> Value {
    serde_json::from_slice(&run.stdout).unwrap_or_else(|e| {
        panic!(
            "oras_client.py printed no JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&run.stdout),
            run.stderr
        )
    })
}

/// oras-py's two ways of authenticating: `token` (follows the Bearer challenge to `/token`
/// with the credentials) and `basic` (HTTP Basic on every request).
async fn oras_round_trip(backend: &str) {
    oras_python();
    let srv = start_local(&[]);
    let reg = setup_users(&srv, &["alice", "bob"]).await;
    let alice = Cred::basic("alice", &pw("alice"));
    reg.create_project(&alice, "arts", false).await;
    let alice_pw = pw("alice");
    let bob_pw = pw("bob");
    let alice_login = Some(("alice", alice_pw.as_str(), backend));

    let tmp = tempfile::tempdir().unwrap();
    let payload: Vec<u8> = (0..4096u32).map(|i| (i * 31 % 251) as u8).collect();
    let file = tmp.path().join("payload.bin");
    std::fs::write(&file, &payload).unwrap();

    // oras-py's token backend needs to start a push with a pull,push token (see
    // oras_client.py --push-scope-first); the basic backend needs nothing.
    let push_scope_first: &[&str] = if backend == "token" {
        &["--push-scope-first"]
    } else {
        &[]
    };
    let pushed = oras(
        &srv,
        alice_login,
        &[
            &[
                "push-artifact",
                "--ref",
                "arts/demo:v1",
                "--artifact-type",
                "application/vnd.kura.test.artifact.v1",
                "--file",
                file.to_str().unwrap(),
                "--file-media-type",
                "application/vnd.kura.test.payload.v1",
            ],
            push_scope_first,
        ]
        .concat(),
    )
    .await
    .must_succeed();
    let pushed = json_of(&pushed);
    assert_eq!(pushed["status"], 201, "{pushed}");
    let digest = pushed["digest"].as_str().unwrap().to_string();
    assert_eq!(
        manifest_digest(&reg, &alice, "arts/demo", "v1").await,
        (200, Some(digest.clone()))
    );

    for reference in ["arts/demo:v1".to_string(), format!("arts/demo@{digest}")] {
        let out = tmp
            .path()
            .join(format!("pull-{}", sha256_digest(reference.as_bytes())));
        let pulled = oras(
            &srv,
            alice_login,
            &[
                "pull",
                "--ref",
                &reference,
                "--outdir",
                out.to_str().unwrap(),
            ],
        )
        .await
        .must_succeed();
        let pulled = json_of(&pulled);
        let files = pulled["files"].as_array().expect("files");
        assert_eq!(files.len(), 1, "{pulled}");
        let got = std::fs::read(files[0].as_str().unwrap()).unwrap();
        assert!(got == payload, "pulled payload differs ({reference})");
    }

    // Without credentials, or as a non-member, the private artifact stays closed.
    let out = tmp.path().join("anon");
    oras(
        &srv,
        None,
        &[
            "pull",
            "--ref",
            "arts/demo:v1",
            "--outdir",
            out.to_str().unwrap(),
        ],
    )
    .await
    .must_fail();
    let out = tmp.path().join("bob");
    oras(
        &srv,
        Some(("bob", bob_pw.as_str(), backend)),
        &[
            "pull",
            "--ref",
            "arts/demo:v1",
            "--outdir",
            out.to_str().unwrap(),
        ],
    )
    .await
    .must_fail();
    // And a wrong password pushes nothing.
    oras(
        &srv,
        Some(("alice", "wrong-password", backend)),
        &[
            &[
                "push-artifact",
                "--ref",
                "arts/demo:v2",
                "--artifact-type",
                "application/vnd.kura.test.artifact.v1",
                "--file",
                file.to_str().unwrap(),
                "--file-media-type",
                "application/vnd.kura.test.payload.v1",
            ],
            push_scope_first,
        ]
        .concat(),
    )
    .await
    .must_fail();
    assert_eq!(
        manifest_digest(&reg, &alice, "arts/demo", "v2").await.0,
        404
    );
}

#[tokio::test]
async fn oras_py_token_login_pushes_and_pulls_a_private_artifact() {
    oras_round_trip("token").await;
}

#[tokio::test]
async fn oras_py_basic_auth_pushes_and_pulls_a_private_artifact() {
    oras_round_trip("basic").await;
}
