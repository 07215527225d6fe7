//! Blob GETs redirected to presigned object-storage URLs (S3 backend, opt-in). Needs the S3
//! service that scripts/test starts (see common/mod.rs).

mod common;

use common::{Backends, KuraServer};
use reqwest::StatusCode;
use sha2::{Digest as _, Sha256};

#[tokio::test]
async fn blob_gets_redirect_to_presigned_urls_when_enabled() {
    let dir = tempfile::tempdir().unwrap();
    let backends = Backends {
        postgres: false,
        s3: true,
    };
    let srv = KuraServer::start_in_with_backends(
        &dir.path().join("d"),
        &backends,
        &[
            "--s3-redirect-blob-gets",
            "true",
            "--s3-redirect-ttl-secs",
            "60",
        ],
        &[],
    );
    let c = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 241) as u8).collect();
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&data)));
    let r = c
        .post(srv.url(&format!("/v2/r/blobs/uploads/?digest={digest}")))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);

    let r = c
        .get(srv.url(&format!("/v2/r/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(r.headers()["docker-content-digest"], digest.as_str());
    let location = r.headers()["location"].to_str().unwrap().to_string();
    assert!(location.starts_with("http://127.0.0.1:"), "{location}");
    assert!(location.contains("X-Amz-Signature="), "{location}");
    // The presigned URL itself serves the bytes (and ranges), without Kura.
    let body = c.get(&location).send().await.unwrap();
    assert_eq!(body.status(), StatusCode::OK);
    assert_eq!(body.bytes().await.unwrap().as_ref(), &data[..]);
    let part = c
        .get(&location)
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.bytes().await.unwrap().as_ref(), &data[10..20]);

    // HEAD is still answered by Kura; blobs of other repositories are still invisible.
    let r = c
        .head(srv.url(&format!("/v2/r/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-length"], "100000");
    let r = c
        .get(srv.url(&format!("/v2/other/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}
