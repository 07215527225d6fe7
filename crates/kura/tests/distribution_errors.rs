//! OCI Distribution Spec v1.1 — error paths: every documented failure with its status and OCI
//! error code (the error body and its codes are checked by `common::api::error_body`).

mod common;

use common::api::*;
use reqwest::{Method, StatusCode};
use serde_json::json;

const REPO: &str = "errors/test";

async fn patch(c: &Ctx, loc: &str, range: Option<&str>, data: &[u8]) -> reqwest::Response {
    let mut req = c
        .req(Method::PATCH, loc)
        .header("Content-Type", "application/octet-stream")
        .body(data.to_vec());
    if let Some(r) = range {
        req = req.header("Content-Range", r);
    }
    req.send().await.expect("PATCH")
}

async fn put_digest(c: &Ctx, loc: &str, digest: &str, data: &[u8]) -> reqwest::Response {
    c.req(Method::PUT, &with_query(loc, "digest", digest))
        .header("Content-Type", "application/octet-stream")
        .body(data.to_vec())
        .send()
        .await
        .expect("PUT")
}

fn unknown_upload_path(repo: &str) -> String {
    format!("/v2/{repo}/blobs/uploads/3f2b7a4e-1c9d-4e8a-9b6f-0a1b2c3d4e5f")
}

// ---------------------------------------------------------------------------------------------
// Upload errors
// ---------------------------------------------------------------------------------------------

/// spec: out-of-order chunk → 416; design: Range 0-<last>, Location, BLOB_UPLOAD_INVALID body.
#[tokio::test]
async fn out_of_order_chunk_returns_416_with_range_and_location() {
    let c = Ctx::new();
    let loc = c.start_upload(REPO).await;
    let resp = patch(&c, &loc, Some("0-9"), &random_bytes(10)).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let loc = location(&resp);
    let resp = patch(&c, &loc, Some("15-24"), &random_bytes(10)).await;
    assert_eq!(must_header(&resp, "Range"), "0-9");
    assert!(
        c.path_of(&location(&resp))
            .starts_with(&format!("/v2/{REPO}/blobs/uploads/"))
    );
    expect_error(
        resp,
        StatusCode::RANGE_NOT_SATISFIABLE,
        "BLOB_UPLOAD_INVALID",
    )
    .await;
}

/// spec: "The first chunk's range MUST begin with 0" — conformance: out-of-order first chunk → 416.
#[tokio::test]
async fn first_chunk_not_starting_at_zero_returns_416() {
    let c = Ctx::new();
    let loc = c.start_upload(REPO).await;
    let resp = patch(&c, &loc, Some("10-19"), &random_bytes(10)).await;
    expect_error(
        resp,
        StatusCode::RANGE_NOT_SATISFIABLE,
        "BLOB_UPLOAD_INVALID",
    )
    .await;
}

/// Re-sending an already received chunk is out of order too.
#[tokio::test]
async fn repeated_chunk_returns_416() {
    let c = Ctx::new();
    let loc = c.start_upload(REPO).await;
    let chunk = random_bytes(10);
    let resp = patch(&c, &loc, Some("0-9"), &chunk).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let loc = location(&resp);
    let resp = patch(&c, &loc, Some("0-9"), &chunk).await;
    assert_eq!(must_header(&resp, "Range"), "0-9");
    expect_error(
        resp,
        StatusCode::RANGE_NOT_SATISFIABLE,
        "BLOB_UPLOAD_INVALID",
    )
    .await;
}

/// Design: Content-Range length differing from the body length → 400 BLOB_UPLOAD_INVALID.
#[tokio::test]
async fn content_range_length_mismatch_returns_400_blob_upload_invalid() {
    let c = Ctx::new();
    let loc = c.start_upload(REPO).await;
    let resp = patch(&c, &loc, Some("0-9"), &random_bytes(5)).await;
    expect_error(resp, StatusCode::BAD_REQUEST, "BLOB_UPLOAD_INVALID").await;
}

/// A Content-Range that does not match `^[0-9]+-[0-9]+$` (or has end < start) is rejected.
/// (A `bytes=` prefix is tolerated by the server, which the spec does not forbid, so it is not
/// listed here.)
#[tokio::test]
async fn malformed_content_range_is_rejected() {
    let c = Ctx::new();
    for range in ["abc", "5-2", "0-", "-9", "0-9-10"] {
        let loc = c.start_upload(REPO).await;
        let resp = patch(&c, &loc, Some(range), &random_bytes(10)).await;
        let status = resp.status();
        assert!(
            status == StatusCode::BAD_REQUEST || status == StatusCode::RANGE_NOT_SATISFIABLE,
            "Content-Range {range:?}: expected 400 or 416, got {status}"
        );
        expect_error(resp, status, "BLOB_UPLOAD_INVALID").await;
    }
}

#[tokio::test]
async fn put_with_wrong_digest_returns_400_and_blob_does_not_exist() {
    let c = Ctx::new();
    let data = random_bytes(100);
    let wrong = sha256(b"something else");
    let loc = c.start_upload(REPO).await;
    let resp = put_digest(&c, &loc, &wrong, &data).await;
    expect_error(resp, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    assert_eq!(c.blob_status(REPO, &wrong).await, StatusCode::NOT_FOUND);
    assert_eq!(
        c.blob_status(REPO, &sha256(&data)).await,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn chunked_upload_with_wrong_digest_returns_400_and_blob_does_not_exist() {
    let c = Ctx::new();
    let data = random_bytes(20);
    let wrong = format!("sha256:{}", random_hex(32));
    let loc = c.start_upload(REPO).await;
    let resp = patch(&c, &loc, Some("0-19"), &data).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let resp = put_digest(&c, &location(&resp), &wrong, b"").await;
    expect_error(resp, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    assert_eq!(c.blob_status(REPO, &wrong).await, StatusCode::NOT_FOUND);
    assert_eq!(
        c.blob_status(REPO, &sha256(&data)).await,
        StatusCode::NOT_FOUND
    );
}

/// spec: "The closing PUT request MUST include the <digest> of the whole blob".
#[tokio::test]
async fn put_without_digest_returns_400_digest_invalid() {
    let c = Ctx::new();
    let loc = c.start_upload(REPO).await;
    let resp = c
        .req(Method::PUT, &loc)
        .header("Content-Type", "application/octet-stream")
        .body(random_bytes(10))
        .send()
        .await
        .unwrap();
    expect_error(resp, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
}

#[tokio::test]
async fn put_with_malformed_digest_returns_400_digest_invalid() {
    let c = Ctx::new();
    for bad in ["sha256:abc", "sha256", "nocolon", "sha256:ZZZ"] {
        let loc = c.start_upload(REPO).await;
        let resp = put_digest(&c, &loc, bad, b"data").await;
        expect_error(resp, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    }
}

/// Design: a well-formed digest of an unsupported algorithm → 400 DIGEST_INVALID, message says so.
#[tokio::test]
async fn put_with_unsupported_algorithm_returns_400_digest_invalid() {
    let c = Ctx::new();
    let loc = c.start_upload(REPO).await;
    let resp = put_digest(&c, &loc, "md5:d41d8cd98f00b204e9800998ecf8427e", b"").await;
    let e = expect_error(resp, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    let m = e.message.to_lowercase();
    assert!(
        m.contains("unsupported") || m.contains("algorithm"),
        "message should name the unsupported algorithm: {e:?}"
    );
}

#[tokio::test]
async fn single_post_with_wrong_digest_returns_400_and_blob_does_not_exist() {
    let c = Ctx::new();
    let data = random_bytes(64);
    let wrong = format!("sha256:{}", random_hex(32));
    let resp = c
        .req(
            Method::POST,
            &with_query(&format!("/v2/{REPO}/blobs/uploads/"), "digest", &wrong),
        )
        .header("Content-Type", "application/octet-stream")
        .body(data.clone())
        .send()
        .await
        .unwrap();
    expect_error(resp, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    assert_eq!(c.blob_status(REPO, &wrong).await, StatusCode::NOT_FOUND);
    assert_eq!(
        c.blob_status(REPO, &sha256(&data)).await,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn single_post_with_malformed_digest_returns_400_digest_invalid() {
    let c = Ctx::new();
    let resp = c
        .req(
            Method::POST,
            &with_query(
                &format!("/v2/{REPO}/blobs/uploads/"),
                "digest",
                "sha256:xyz",
            ),
        )
        .body(b"abc".to_vec())
        .send()
        .await
        .unwrap();
    expect_error(resp, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
}

#[tokio::test]
async fn get_unknown_upload_returns_404_blob_upload_unknown() {
    let c = Ctx::new();
    c.push_blob(REPO, b"x").await;
    let resp = c.get(&unknown_upload_path(REPO)).await;
    expect_error(resp, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
}

#[tokio::test]
async fn patch_unknown_upload_returns_404_blob_upload_unknown() {
    let c = Ctx::new();
    let resp = patch(&c, &unknown_upload_path(REPO), Some("0-3"), b"abcd").await;
    expect_error(resp, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
}

#[tokio::test]
async fn put_unknown_upload_returns_404_blob_upload_unknown() {
    let c = Ctx::new();
    let resp = put_digest(&c, &unknown_upload_path(REPO), &sha256(b"abcd"), b"abcd").await;
    expect_error(resp, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
    assert_eq!(
        c.blob_status(REPO, &sha256(b"abcd")).await,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn delete_unknown_upload_returns_404_blob_upload_unknown() {
    let c = Ctx::new();
    let resp = c.delete(&unknown_upload_path(REPO)).await;
    expect_error(resp, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
}

/// Once closed by a successful PUT, the session no longer exists.
#[tokio::test]
async fn completed_upload_session_is_gone() {
    let c = Ctx::new();
    let data = random_bytes(10);
    let loc = c.start_upload(REPO).await;
    let resp = put_digest(&c, &loc, &sha256(&data), &data).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let resp = c.get(&loc).await;
    expect_error(resp, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
    let resp = patch(&c, &loc, None, b"more").await;
    expect_error(resp, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
}

#[tokio::test]
async fn patch_after_upload_deleted_returns_404_blob_upload_unknown() {
    let c = Ctx::new();
    let loc = c.start_upload(REPO).await;
    assert_eq!(c.delete(&loc).await.status(), StatusCode::NO_CONTENT);
    let resp = patch(&c, &loc, Some("0-3"), b"abcd").await;
    expect_error(resp, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
}

/// An upload session belongs to the repository that opened it.
#[tokio::test]
async fn upload_session_is_not_reachable_through_another_repo() {
    let c = Ctx::new();
    let loc = c.start_upload("errors/owner").await;
    let foreign = c
        .path_of(&loc)
        .replacen("/v2/errors/owner/", "/v2/errors/intruder/", 1);
    assert_ne!(foreign, c.path_of(&loc));
    let resp = c.get(&foreign).await;
    expect_error(resp, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
}

// ---------------------------------------------------------------------------------------------
// Blob errors
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn get_blob_with_malformed_digest_returns_400_digest_invalid() {
    let c = Ctx::new();
    let upper = format!("sha256:{}", "A".repeat(64));
    let short = format!("sha256:{}", "a".repeat(63));
    let long512 = format!("sha512:{}", "a".repeat(127));
    for bad in [
        "sha256:totallywrong",
        "nocolon",
        upper.as_str(),
        short.as_str(),
        long512.as_str(),
    ] {
        let resp = c.get(&format!("/v2/{REPO}/blobs/{bad}")).await;
        expect_error(resp, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    }
}

#[tokio::test]
async fn get_blob_with_unsupported_algorithm_returns_400_digest_invalid() {
    let c = Ctx::new();
    let resp = c
        .get(&format!(
            "/v2/{REPO}/blobs/md5:d41d8cd98f00b204e9800998ecf8427e"
        ))
        .await;
    let e = expect_error(resp, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    let m = e.message.to_lowercase();
    assert!(
        m.contains("unsupported") || m.contains("algorithm"),
        "{e:?}"
    );
}

#[tokio::test]
async fn head_blob_with_malformed_digest_returns_400() {
    let c = Ctx::new();
    let resp = c.head(&format!("/v2/{REPO}/blobs/sha256:nothex")).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
}

// ---------------------------------------------------------------------------------------------
// Name errors
// ---------------------------------------------------------------------------------------------

const INVALID_NAMES: &[&str] = &[
    "Upper/case",
    "a..b",
    "a___b",
    "-leading",
    "trailing-",
    "a/_b",
    "a.-b",
    "a//b",
    "a/b/",
];

#[tokio::test]
async fn post_upload_with_invalid_name_returns_400_name_invalid() {
    let c = Ctx::new();
    for name in INVALID_NAMES {
        let resp = c
            .req(Method::POST, &format!("/v2/{name}/blobs/uploads/"))
            .body(Vec::<u8>::new())
            .send()
            .await
            .unwrap();
        expect_error(resp, StatusCode::BAD_REQUEST, "NAME_INVALID").await;
    }
}

#[tokio::test]
async fn put_manifest_with_invalid_name_returns_400_name_invalid() {
    let c = Ctx::new();
    let config = random_config();
    c.push_blob(REPO, &config).await;
    let body = image_manifest(&descriptor(OCI_CONFIG, &config), &[], None);
    for name in INVALID_NAMES {
        let resp = c.put_manifest(name, "latest", OCI_MANIFEST, &body).await;
        expect_error(resp, StatusCode::BAD_REQUEST, "NAME_INVALID").await;
    }
}

#[tokio::test]
async fn get_with_invalid_name_returns_400_name_invalid() {
    let c = Ctx::new();
    for name in INVALID_NAMES {
        for path in [
            format!("/v2/{name}/manifests/latest"),
            format!("/v2/{name}/blobs/{MISSING_DIGEST}"),
            format!("/v2/{name}/tags/list"),
            format!("/v2/{name}/referrers/{MISSING_DIGEST}"),
        ] {
            let resp = c.get(&path).await;
            expect_error(resp, StatusCode::BAD_REQUEST, "NAME_INVALID").await;
        }
    }
}

/// Design: total name length ≤ 255.
#[tokio::test]
async fn name_longer_than_255_returns_400_name_invalid() {
    let c = Ctx::new();
    let name = format!("{}/{}", "a".repeat(128), "b".repeat(127));
    assert_eq!(name.len(), 256);
    let resp = c
        .req(Method::POST, &format!("/v2/{name}/blobs/uploads/"))
        .body(Vec::<u8>::new())
        .send()
        .await
        .unwrap();
    expect_error(resp, StatusCode::BAD_REQUEST, "NAME_INVALID").await;
    let resp = c.get(&format!("/v2/{name}/tags/list")).await;
    expect_error(resp, StatusCode::BAD_REQUEST, "NAME_INVALID").await;
}

// ---------------------------------------------------------------------------------------------
// Reference (tag / digest) errors on manifests
// ---------------------------------------------------------------------------------------------

fn invalid_tags() -> Vec<String> {
    vec![
        ".hidden".into(),
        "-dash".into(),
        "a".repeat(129),
        "tag+plus".into(),
        "t@g".into(),
    ]
}

/// spec: a tag MUST match `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`; anything else is a bad request.
/// The error code MUST be one of the spec's codes (TAG_INVALID is not among them): MANIFEST_INVALID.
#[tokio::test]
async fn get_manifest_with_invalid_tag_returns_400_manifest_invalid() {
    let c = Ctx::new();
    c.push_image(REPO, "v1").await;
    for tag in invalid_tags() {
        let resp = c.get(&format!("/v2/{REPO}/manifests/{tag}")).await;
        expect_error(resp, StatusCode::BAD_REQUEST, "MANIFEST_INVALID").await;
    }
}

#[tokio::test]
async fn put_manifest_with_invalid_tag_returns_400_manifest_invalid() {
    let c = Ctx::new();
    let config = random_config();
    c.push_blob(REPO, &config).await;
    let body = image_manifest(&descriptor(OCI_CONFIG, &config), &[], None);
    for tag in invalid_tags() {
        let resp = c.put_manifest(REPO, &tag, OCI_MANIFEST, &body).await;
        expect_error(resp, StatusCode::BAD_REQUEST, "MANIFEST_INVALID").await;
    }
    // Nothing was tagged: the repository either has no tags or is unknown.
    let resp = c.get(&format!("/v2/{REPO}/tags/list")).await;
    if resp.status() == StatusCode::OK {
        let v: serde_json::Value = resp.json().await.unwrap();
        assert!(
            v["tags"].as_array().map(|t| t.is_empty()).unwrap_or(true),
            "{v}"
        );
    } else {
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    }
}

#[tokio::test]
async fn delete_manifest_with_invalid_tag_returns_400_manifest_invalid() {
    let c = Ctx::new();
    c.push_image(REPO, "v1").await;
    for tag in invalid_tags() {
        let resp = c.delete(&format!("/v2/{REPO}/manifests/{tag}")).await;
        expect_error(resp, StatusCode::BAD_REQUEST, "MANIFEST_INVALID").await;
    }
}

/// The conformance suite uses `sha256:totallywrong`; design: malformed digest → 400 DIGEST_INVALID.
#[tokio::test]
async fn get_manifest_with_malformed_digest_returns_400_digest_invalid() {
    let c = Ctx::new();
    c.push_image(REPO, "v1").await;
    let resp = c
        .get(&format!("/v2/{REPO}/manifests/sha256:totallywrong"))
        .await;
    expect_error(resp, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
}

#[tokio::test]
async fn put_manifest_with_malformed_digest_returns_400_digest_invalid() {
    let c = Ctx::new();
    let config = random_config();
    c.push_blob(REPO, &config).await;
    let body = image_manifest(&descriptor(OCI_CONFIG, &config), &[], None);
    let resp = c
        .put_manifest(REPO, "sha256:totallywrong", OCI_MANIFEST, &body)
        .await;
    expect_error(resp, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
}

#[tokio::test]
async fn put_manifest_with_unsupported_digest_algorithm_returns_400_digest_invalid() {
    let c = Ctx::new();
    let config = random_config();
    c.push_blob(REPO, &config).await;
    let body = image_manifest(&descriptor(OCI_CONFIG, &config), &[], None);
    let resp = c
        .put_manifest(
            REPO,
            "md5:d41d8cd98f00b204e9800998ecf8427e",
            OCI_MANIFEST,
            &body,
        )
        .await;
    let e = expect_error(resp, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    let m = e.message.to_lowercase();
    assert!(
        m.contains("unsupported") || m.contains("algorithm"),
        "{e:?}"
    );
}

/// PUT by digest whose body hashes differently → 400 DIGEST_INVALID; nothing stored.
#[tokio::test]
async fn put_manifest_by_mismatched_digest_returns_400_digest_invalid() {
    let c = Ctx::new();
    let config = random_config();
    c.push_blob(REPO, &config).await;
    let body = image_manifest(&descriptor(OCI_CONFIG, &config), &[], None);
    let wrong = format!("sha256:{}", random_hex(32));
    let resp = c.put_manifest(REPO, &wrong, OCI_MANIFEST, &body).await;
    expect_error(resp, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    assert_eq!(
        c.head(&format!("/v2/{REPO}/manifests/{wrong}"))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        c.head(&format!("/v2/{REPO}/manifests/{}", sha256(&body)))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
}

// ---------------------------------------------------------------------------------------------
// Manifest validation errors
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn manifest_that_is_not_json_returns_400_manifest_invalid() {
    let c = Ctx::new();
    let resp = c
        .put_manifest(REPO, "bad", OCI_MANIFEST, b"{this is not json")
        .await;
    expect_error(resp, StatusCode::BAD_REQUEST, "MANIFEST_INVALID").await;
    assert_eq!(
        c.head(&format!("/v2/{REPO}/manifests/bad")).await.status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn empty_manifest_body_returns_400_manifest_invalid() {
    let c = Ctx::new();
    let resp = c.put_manifest(REPO, "bad", OCI_MANIFEST, b"").await;
    expect_error(resp, StatusCode::BAD_REQUEST, "MANIFEST_INVALID").await;
}

#[tokio::test]
async fn manifest_without_config_returns_400_manifest_invalid() {
    let c = Ctx::new();
    let body =
        serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": []}))
            .unwrap();
    let resp = c.put_manifest(REPO, "bad", OCI_MANIFEST, &body).await;
    expect_error(resp, StatusCode::BAD_REQUEST, "MANIFEST_INVALID").await;
}

#[tokio::test]
async fn manifest_with_malformed_descriptor_digest_returns_400() {
    let c = Ctx::new();
    let body = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": "sha256:nothex", "size": 2},
        "layers": [],
    }))
    .unwrap();
    let resp = c.put_manifest(REPO, "bad", OCI_MANIFEST, &body).await;
    let errors = error_body(resp, StatusCode::BAD_REQUEST).await;
    assert!(
        errors
            .iter()
            .any(|e| e.code == "MANIFEST_INVALID" || e.code == "DIGEST_INVALID"),
        "{errors:?}"
    );
}

/// Design: Content-Type must match the body's mediaType → else 400 MANIFEST_INVALID.
#[tokio::test]
async fn content_type_not_matching_media_type_returns_400_manifest_invalid() {
    let c = Ctx::new();
    let config = random_config();
    c.push_blob(REPO, &config).await;
    let body = image_manifest(&descriptor(OCI_CONFIG, &config), &[], None);
    for ct in [OCI_INDEX, DOCKER_MANIFEST] {
        let resp = c.put_manifest(REPO, "mismatch", ct, &body).await;
        expect_error(resp, StatusCode::BAD_REQUEST, "MANIFEST_INVALID").await;
    }
}

/// Design: only known manifest media types are accepted.
#[tokio::test]
async fn unknown_manifest_media_type_returns_400_manifest_invalid() {
    let c = Ctx::new();
    let config = random_config();
    c.push_blob(REPO, &config).await;
    let mut m: serde_json::Value =
        serde_json::from_slice(&image_manifest(&descriptor(OCI_CONFIG, &config), &[], None))
            .unwrap();
    m["mediaType"] = json!("application/vnd.example.unknown+json");
    let body = serde_json::to_vec(&m).unwrap();
    let resp = c
        .put_manifest(
            REPO,
            "unknown",
            "application/vnd.example.unknown+json",
            &body,
        )
        .await;
    expect_error(resp, StatusCode::BAD_REQUEST, "MANIFEST_INVALID").await;
}

/// Design: Docker schema1 is refused with 400 MANIFEST_INVALID, message saying schema1 is unsupported.
#[tokio::test]
async fn schema1_manifests_are_refused_with_manifest_invalid() {
    let c = Ctx::new();
    let body = serde_json::to_vec_pretty(&json!({
        "schemaVersion": 1,
        "name": REPO,
        "tag": "old",
        "architecture": "amd64",
        "fsLayers": [{"blobSum": MISSING_DIGEST}],
        "history": [{"v1Compatibility": "{}"}],
    }))
    .unwrap();
    for ct in [DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED] {
        let resp = c.put_manifest(REPO, "old", ct, &body).await;
        let e = expect_error(resp, StatusCode::BAD_REQUEST, "MANIFEST_INVALID").await;
        let m = e.message.to_lowercase();
        assert!(
            m.contains("schema1") || m.contains("schema 1") || m.contains("schema version 1"),
            "{e:?}"
        );
    }
}

/// spec: registries MAY reject manifests referencing unknown blobs → MANIFEST_BLOB_UNKNOWN.
#[tokio::test]
async fn manifest_with_missing_config_blob_returns_400_manifest_blob_unknown() {
    let c = Ctx::new();
    let layer = random_bytes(10);
    c.push_blob(REPO, &layer).await;
    let body = image_manifest(
        &descriptor(OCI_CONFIG, &random_config()),
        &[descriptor(OCI_LAYER, &layer)],
        None,
    );
    let resp = c.put_manifest(REPO, "t", OCI_MANIFEST, &body).await;
    expect_error(resp, StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN").await;
    assert_eq!(
        c.head(&format!("/v2/{REPO}/manifests/t")).await.status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn manifest_with_missing_layer_blob_returns_400_manifest_blob_unknown() {
    let c = Ctx::new();
    let config = random_config();
    c.push_blob(REPO, &config).await;
    let present = random_bytes(10);
    c.push_blob(REPO, &present).await;
    let body = image_manifest(
        &descriptor(OCI_CONFIG, &config),
        &[
            descriptor(OCI_LAYER, &present),
            descriptor(OCI_LAYER, &random_bytes(10)),
        ],
        None,
    );
    let resp = c.put_manifest(REPO, "t", OCI_MANIFEST, &body).await;
    expect_error(resp, StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN").await;
}

/// Referenced blobs must be in *this* repository.
#[tokio::test]
async fn manifest_referencing_blob_of_another_repo_returns_400_manifest_blob_unknown() {
    let c = Ctx::new();
    let config = random_config();
    c.push_blob("errors/elsewhere", &config).await;
    let body = image_manifest(&descriptor(OCI_CONFIG, &config), &[], None);
    let resp = c.put_manifest(REPO, "t", OCI_MANIFEST, &body).await;
    expect_error(resp, StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN").await;
}

#[tokio::test]
async fn docker_manifest_with_missing_layer_returns_400_manifest_blob_unknown() {
    let c = Ctx::new();
    let config = random_config();
    c.push_blob(REPO, &config).await;
    let body = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": descriptor(DOCKER_CONFIG, &config),
        "layers": [descriptor(DOCKER_LAYER, &random_bytes(33))],
    }))
    .unwrap();
    let resp = c.put_manifest(REPO, "t", DOCKER_MANIFEST, &body).await;
    expect_error(resp, StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN").await;
}

#[tokio::test]
async fn index_with_missing_child_returns_400_manifest_blob_unknown() {
    let c = Ctx::new();
    let img = c.push_image(REPO, "present").await;
    let missing = json!({"mediaType": OCI_MANIFEST, "digest": format!("sha256:{}", random_hex(32)), "size": 500});
    let body = image_index(&[img.descriptor(), missing]);
    let resp = c.put_manifest(REPO, "idx", OCI_INDEX, &body).await;
    expect_error(resp, StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN").await;
}

/// Index children must be manifests; a plain blob with that digest does not count.
#[tokio::test]
async fn index_child_that_is_only_a_blob_returns_400_manifest_blob_unknown() {
    let c = Ctx::new();
    let fake = image_manifest(&descriptor(OCI_CONFIG, &random_config()), &[], None);
    let digest = c.push_blob(REPO, &fake).await;
    let body =
        image_index(&[json!({"mediaType": OCI_MANIFEST, "digest": digest, "size": fake.len()})]);
    let resp = c.put_manifest(REPO, "idx", OCI_INDEX, &body).await;
    expect_error(resp, StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN").await;
}

#[tokio::test]
async fn index_child_in_another_repo_returns_400_manifest_blob_unknown() {
    let c = Ctx::new();
    let img = c.push_image("errors/elsewhere", "v1").await;
    c.push_image(REPO, "mine").await;
    let body = image_index(&[img.descriptor()]);
    let resp = c.put_manifest(REPO, "idx", OCI_INDEX, &body).await;
    expect_error(resp, StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN").await;
}

#[tokio::test]
async fn docker_manifest_list_with_missing_child_returns_400_manifest_blob_unknown() {
    let c = Ctx::new();
    let body = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_LIST,
        "manifests": [{"mediaType": DOCKER_MANIFEST, "digest": format!("sha256:{}", random_hex(32)), "size": 7,
                       "platform": {"architecture": "amd64", "os": "linux"}}],
    }))
    .unwrap();
    let resp = c.put_manifest(REPO, "list", DOCKER_LIST, &body).await;
    expect_error(resp, StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN").await;
}

/// The empty config blob `{}` of an artifact must itself have been pushed.
#[tokio::test]
async fn artifact_without_pushed_empty_blob_returns_400_manifest_blob_unknown() {
    let c = Ctx::new();
    let body = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.thing",
        "config": {"mediaType": OCI_EMPTY, "digest": EMPTY_BLOB_DIGEST, "size": 2},
        "layers": [{"mediaType": OCI_EMPTY, "digest": EMPTY_BLOB_DIGEST, "size": 2}],
    }))
    .unwrap();
    let resp = c.put_manifest(REPO, "art", OCI_MANIFEST, &body).await;
    expect_error(resp, StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN").await;
}

/// spec: manifest over the limit SHOULD be 413; design: code SIZE_INVALID.
#[tokio::test]
async fn manifest_over_configured_limit_returns_413_size_invalid() {
    let c = Ctx::with_args(&["--max-manifest-size", "1024"]);
    let config = random_config();
    c.push_blob(REPO, &config).await;
    let body = padded_manifest(&config, 1025);
    let resp = c.put_manifest(REPO, "big", OCI_MANIFEST, &body).await;
    expect_error(resp, StatusCode::PAYLOAD_TOO_LARGE, "SIZE_INVALID").await;
    assert_eq!(
        c.head(&format!("/v2/{REPO}/manifests/big")).await.status(),
        StatusCode::NOT_FOUND
    );
    let body = padded_manifest(&config, 100_000);
    let resp = c.put_manifest(REPO, "big", OCI_MANIFEST, &body).await;
    expect_error(resp, StatusCode::PAYLOAD_TOO_LARGE, "SIZE_INVALID").await;
}

/// Default limit 4 MiB. The request is written on a raw socket that tolerates the server closing
/// early, so this checks the status and code the server sends.
#[tokio::test]
async fn manifest_over_default_4mib_returns_413_size_invalid() {
    let c = Ctx::new();
    let config = random_config();
    c.push_blob(REPO, &config).await;
    let body = padded_manifest(&config, 4 * 1024 * 1024 + 1);
    let addr = c.srv.addr.clone();
    let (status, text) = tokio::task::spawn_blocking(move || {
        raw_put(
            &addr,
            &format!("/v2/{REPO}/manifests/huge"),
            OCI_MANIFEST,
            body,
        )
    })
    .await
    .unwrap();
    assert_eq!(status, 413, "body: {text}");
    let v: serde_json::Value = serde_json::from_str(&text).expect("JSON error body");
    assert_eq!(v["errors"][0]["code"], json!("SIZE_INVALID"), "{text}");
    assert_eq!(
        c.head(&format!("/v2/{REPO}/manifests/huge")).await.status(),
        StatusCode::NOT_FOUND
    );
}

/// An ordinary HTTP client (reqwest/hyper) pushing an oversized manifest must get to see the 413,
/// not a broken connection (RFC 9112 §9.6: close in stages / read the rest of the body).
#[tokio::test]
async fn oversized_manifest_413_reaches_an_http_client() {
    let c = Ctx::new();
    let config = random_config();
    c.push_blob(REPO, &config).await;
    let body = padded_manifest(&config, 8 * 1024 * 1024);
    let resp = c
        .req(Method::PUT, &format!("/v2/{REPO}/manifests/huge"))
        .header("Content-Type", OCI_MANIFEST)
        .body(body)
        .send()
        .await;
    let resp = match resp {
        Ok(r) => r,
        Err(e) => panic!("client saw a transport error instead of the 413: {e:?}"),
    };
    expect_error(resp, StatusCode::PAYLOAD_TOO_LARGE, "SIZE_INVALID").await;
}

/// Writes one HTTP/1.1 PUT on a plain socket (body written from another thread, write errors
/// ignored) and returns the response status and body.
fn raw_put(addr: &str, path: &str, content_type: &str, body: Vec<u8>) -> (u16, String) {
    use std::io::{Read, Write};
    let stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    let head = format!(
        "PUT {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut writer = stream.try_clone().unwrap();
    std::thread::spawn(move || {
        let _ = writer.write_all(head.as_bytes());
        let _ = writer.write_all(&body);
    });
    let mut reader = stream;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if let Some(len) = len
                && buf.len() >= end + 4 + len
            {
                break;
            }
        }
        match reader.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP response: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

// ---------------------------------------------------------------------------------------------
// Deletion errors
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn delete_unknown_blob_returns_404_blob_unknown() {
    let c = Ctx::new();
    c.push_blob(REPO, b"x").await;
    let resp = c
        .delete(&format!("/v2/{REPO}/blobs/{MISSING_DIGEST}"))
        .await;
    expect_error(resp, StatusCode::NOT_FOUND, "BLOB_UNKNOWN").await;
}

#[tokio::test]
async fn delete_unknown_tag_returns_404_manifest_unknown() {
    let c = Ctx::new();
    c.push_image(REPO, "v1").await;
    let resp = c.delete(&format!("/v2/{REPO}/manifests/nope")).await;
    expect_error(resp, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
}

#[tokio::test]
async fn delete_unknown_manifest_digest_returns_404_manifest_unknown() {
    let c = Ctx::new();
    c.push_image(REPO, "v1").await;
    let resp = c
        .delete(&format!("/v2/{REPO}/manifests/{MISSING_DIGEST}"))
        .await;
    expect_error(resp, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
}

/// spec "Deleting Manifests": "If the repository does not exist, the response MUST return 404".
#[tokio::test]
async fn delete_manifest_in_unknown_repo_returns_404() {
    let c = Ctx::new();
    let resp = c
        .delete(&format!("/v2/no/such/repo/manifests/{MISSING_DIGEST}"))
        .await;
    let errors = error_body(resp, StatusCode::NOT_FOUND).await;
    assert!(
        errors
            .iter()
            .any(|e| e.code == "MANIFEST_UNKNOWN" || e.code == "NAME_UNKNOWN"),
        "{errors:?}"
    );
}

#[tokio::test]
async fn delete_blob_with_malformed_digest_returns_400_digest_invalid() {
    let c = Ctx::new();
    let resp = c.delete(&format!("/v2/{REPO}/blobs/sha256:nothex")).await;
    expect_error(resp, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
}

// ---------------------------------------------------------------------------------------------
// Unsupported operations
// ---------------------------------------------------------------------------------------------

/// Design: an unsupported method on an API route → 405 UNSUPPORTED.
#[tokio::test]
async fn unsupported_method_returns_405_unsupported() {
    let c = Ctx::new();
    let img = c.push_image(REPO, "v1").await;
    let resp = c
        .req(Method::POST, &format!("/v2/{REPO}/manifests/v1"))
        .body(b"{}".to_vec())
        .send()
        .await
        .unwrap();
    expect_error(resp, StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED").await;
    let resp = c
        .req(
            Method::PUT,
            &format!("/v2/{REPO}/blobs/{}", img.layer_digest),
        )
        .body(img.layer.clone())
        .send()
        .await
        .unwrap();
    expect_error(resp, StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED").await;
}

/// A non-numeric or negative `n` is a bad request (any spec error code).
#[tokio::test]
async fn invalid_page_size_returns_400() {
    let c = Ctx::new();
    c.push_image(REPO, "v1").await;
    for n in ["abc", "-1"] {
        let resp = c.get(&format!("/v2/{REPO}/tags/list?n={n}")).await;
        error_body(resp, StatusCode::BAD_REQUEST).await;
        let resp = c.get(&format!("/v2/_catalog?n={n}")).await;
        error_body(resp, StatusCode::BAD_REQUEST).await;
    }
}
