//! Server lifecycle, black-box: state survives a restart, idle uploads expire, configuration
//! from environment variables and a TOML file takes effect, health endpoints and request ids.

mod common;

use std::time::Duration;

use common::KuraServer;
use reqwest::{Client, StatusCode};
use sha2::{Digest as _, Sha256};

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

async fn push_blob(c: &Client, srv: &KuraServer, repo: &str, data: &[u8]) -> String {
    let d = sha256(data);
    let r = c
        .post(srv.url(&format!("/v2/{repo}/blobs/uploads/?digest={d}")))
        .header("content-type", "application/octet-stream")
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    d
}

fn manifest(config: &str, layer: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": 5}],
    }))
    .unwrap()
}

#[tokio::test]
async fn state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let c = Client::new();
    let body = {
        let srv = KuraServer::start_in(&data_dir, &[], &[]);
        let cfg = push_blob(&c, &srv, "team/app", b"{}").await;
        let layer = push_blob(&c, &srv, "team/app", b"layer").await;
        let body = manifest(&cfg, &layer);
        let r = c
            .put(srv.url("/v2/team/app/manifests/v1"))
            .header("content-type", "application/vnd.oci.image.manifest.v1+json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        body
    }; // server killed here
    let srv = KuraServer::start_in(&data_dir, &[], &[]);
    let r = c
        .get(srv.url("/v2/team/app/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &body[..]);
    let r = c
        .get(srv.url(&format!("/v2/team/app/blobs/{}", sha256(b"layer"))))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"layer");
    let cat: serde_json::Value = c
        .get(srv.url("/v2/_catalog"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cat["repositories"], serde_json::json!(["team/app"]));
}

#[tokio::test]
async fn idle_uploads_expire_with_their_data() {
    let srv = KuraServer::start_with(
        &["--upload-expiry-secs", "1", "--upload-sweep-secs", "1"],
        &[],
    );
    let c = Client::new();
    let r = c
        .post(srv.url("/v2/r/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let r = c
        .patch(srv.url(&loc))
        .header("content-range", "0-3")
        .body(b"abcd".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let on_disk = common::Backends::from_env().blobs_on_disk();
    let uploads = srv.data_dir.join("blobs").join("uploads");
    if on_disk {
        assert_eq!(std::fs::read_dir(&uploads).unwrap().count(), 1);
    }
    let mut gone = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let r = c.get(srv.url(&loc)).send().await.unwrap();
        if r.status() == StatusCode::NOT_FOUND {
            gone = true;
            break;
        }
    }
    assert!(gone, "upload still present after 10 s with a 1 s expiry");
    if on_disk {
        assert_eq!(std::fs::read_dir(&uploads).unwrap().count(), 0);
    }
}

#[tokio::test]
async fn environment_and_file_configuration_apply() {
    // KURA_MAX_MANIFEST_SIZE from the environment.
    let srv = KuraServer::start_with(&[], &[("KURA_MAX_MANIFEST_SIZE", "100")]);
    let c = Client::new();
    let r = c
        .put(srv.url("/v2/r/manifests/v1"))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(vec![b' '; 101])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    drop(srv);

    // delete_enabled = false from a TOML file.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("kura.toml");
    std::fs::write(
        &cfg,
        "[registry]\ndelete_enabled = false\nchunk_min_length = 4096\n",
    )
    .unwrap();
    let srv = KuraServer::start_with(&["--config", cfg.to_str().unwrap()], &[]);
    let d = push_blob(&c, &srv, "r", b"x").await;
    let r = c
        .delete(srv.url(&format!("/v2/r/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    let r = c
        .post(srv.url("/v2/r/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["oci-chunk-min-length"], "4096");
}

#[test]
fn bad_configuration_is_refused_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("kura.toml");
    std::fs::write(&cfg, "[registry]\nmax_manifest_sise = 1\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kura"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_manifest_sise"), "{err}");
}

#[tokio::test]
async fn health_readiness_and_request_ids() {
    let srv = KuraServer::start();
    let c = Client::new();
    let r = c.get(srv.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = c.get(srv.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["ready"], true);
    let b = common::Backends::from_env();
    let (meta, store) = (
        if b.postgres { "postgres" } else { "sqlite" },
        if b.s3 { "s3" } else { "filesystem" },
    );
    assert_eq!(v["checks"]["metadata"]["backend"], meta);
    assert_eq!(v["checks"]["storage"]["backend"], store);
    let a = c.get(srv.url("/v2/")).send().await.unwrap();
    let b = c.get(srv.url("/v2/")).send().await.unwrap();
    let (ia, ib) = (&a.headers()["x-request-id"], &b.headers()["x-request-id"]);
    assert!(!ia.is_empty());
    assert_ne!(ia, ib);
    // A caller-supplied request id is kept.
    let r = c
        .get(srv.url("/v2/"))
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "trace-me-42");
}
