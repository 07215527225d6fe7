//! OCI Distribution Spec v1.1 — pull: API version check, blobs (GET/HEAD/Range), manifests
//! (GET/HEAD, content negotiation), repository scoping. Black-box against the real binary.

mod common;

use common::api::*;
use reqwest::header::{ACCEPT, RANGE};
use reqwest::{Method, StatusCode};
use serde_json::json;

const REPO: &str = "pull/test";

// ---------------------------------------------------------------------------------------------
// /v2/
// ---------------------------------------------------------------------------------------------

/// spec "Determining Support": GET /v2/ → 200; Docker-Distribution-API-Version: registry/2.0.
#[tokio::test]
async fn api_version_check_returns_200_with_version_header() {
    let c = Ctx::new();
    let resp = c.get("/v2/").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        must_header(&resp, "Docker-Distribution-API-Version"),
        "registry/2.0"
    );
}

#[tokio::test]
async fn api_version_check_head_returns_200() {
    let c = Ctx::new();
    let resp = c.head("/v2/").await;
    assert_eq!(resp.status(), StatusCode::OK);
}

// ---------------------------------------------------------------------------------------------
// Blobs
// ---------------------------------------------------------------------------------------------

/// spec "Pulling blobs": 200, the blob, Docker-Content-Digest matching the body.
#[tokio::test]
async fn get_blob_returns_content_and_headers() {
    let c = Ctx::new();
    let data = random_bytes(4321);
    let digest = c.push_blob(REPO, &data).await;
    let resp = c.get(&format!("/v2/{REPO}/blobs/{digest}")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(must_header(&resp, "Docker-Content-Digest"), digest);
    assert_eq!(must_header(&resp, "Content-Length"), data.len().to_string());
    assert_eq!(must_header(&resp, "Accept-Ranges"), "bytes");
    assert_eq!(
        must_header(&resp, "Content-Type"),
        "application/octet-stream"
    );
    assert_eq!(resp.bytes().await.unwrap().to_vec(), data);
}

/// spec "Checking if content exists": HEAD → 200, Docker-Content-Digest and Content-Length, no body.
#[tokio::test]
async fn head_blob_returns_headers_without_body() {
    let c = Ctx::new();
    let data = random_bytes(999);
    let digest = c.push_blob(REPO, &data).await;
    let resp = c.head(&format!("/v2/{REPO}/blobs/{digest}")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(must_header(&resp, "Docker-Content-Digest"), digest);
    assert_eq!(must_header(&resp, "Content-Length"), "999");
    assert_eq!(must_header(&resp, "Accept-Ranges"), "bytes");
    assert_eq!(
        must_header(&resp, "Content-Type"),
        "application/octet-stream"
    );
    assert!(resp.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn get_unknown_blob_returns_404_blob_unknown() {
    let c = Ctx::new();
    c.push_blob(REPO, &random_bytes(10)).await;
    let resp = c.get(&format!("/v2/{REPO}/blobs/{MISSING_DIGEST}")).await;
    expect_error(resp, StatusCode::NOT_FOUND, "BLOB_UNKNOWN").await;
}

#[tokio::test]
async fn head_unknown_blob_returns_404() {
    let c = Ctx::new();
    c.push_blob(REPO, &random_bytes(10)).await;
    let resp = c.head(&format!("/v2/{REPO}/blobs/{MISSING_DIGEST}")).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn get_blob_in_unknown_repo_returns_404() {
    let c = Ctx::new();
    let resp = c
        .get(&format!("/v2/no/such/repo/blobs/{MISSING_DIGEST}"))
        .await;
    let errors = error_body(resp, StatusCode::NOT_FOUND).await;
    assert!(
        errors
            .iter()
            .any(|e| e.code == "BLOB_UNKNOWN" || e.code == "NAME_UNKNOWN"),
        "{errors:?}"
    );
}

/// Blobs are scoped to repositories: pushed to A, invisible in B until pushed/mounted there.
#[tokio::test]
async fn blob_pushed_to_one_repo_is_not_visible_in_another() {
    let c = Ctx::new();
    let data = random_bytes(100);
    let digest = c.push_blob("scope/a", &data).await;
    c.push_blob("scope/b", &random_bytes(5)).await;
    let resp = c.get(&format!("/v2/scope/b/blobs/{digest}")).await;
    expect_error(resp, StatusCode::NOT_FOUND, "BLOB_UNKNOWN").await;
    assert_eq!(
        c.blob_status("scope/b", &digest).await,
        StatusCode::NOT_FOUND
    );
    // Once pushed there, it is.
    c.push_blob("scope/b", &data).await;
    assert_eq!(c.blob_status("scope/b", &digest).await, StatusCode::OK);
}

/// Range per RFC 9110: `bytes=a-b` → 206 with Content-Range `bytes a-b/total`.
#[tokio::test]
async fn blob_range_request_returns_206_partial_content() {
    let c = Ctx::new();
    let data = random_bytes(1000);
    let digest = c.push_blob(REPO, &data).await;
    let resp = c
        .req(Method::GET, &format!("/v2/{REPO}/blobs/{digest}"))
        .header(RANGE, "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::PARTIAL_CONTENT,
        "{}",
        describe(resp).await
    );
    assert_eq!(must_header(&resp, "Content-Range"), "bytes 100-199/1000");
    assert_eq!(must_header(&resp, "Content-Length"), "100");
    assert_eq!(
        resp.bytes().await.unwrap().to_vec(),
        data[100..200].to_vec()
    );
}

#[tokio::test]
async fn blob_range_single_first_byte() {
    let c = Ctx::new();
    let data = random_bytes(10);
    let digest = c.push_blob(REPO, &data).await;
    let resp = c
        .req(Method::GET, &format!("/v2/{REPO}/blobs/{digest}"))
        .header(RANGE, "bytes=0-0")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(must_header(&resp, "Content-Range"), "bytes 0-0/10");
    assert_eq!(resp.bytes().await.unwrap().to_vec(), data[..1].to_vec());
}

/// RFC 9110 open-ended range `bytes=a-` (used to resume a pull).
#[tokio::test]
async fn blob_open_ended_range_returns_rest_of_blob() {
    let c = Ctx::new();
    let data = random_bytes(500);
    let digest = c.push_blob(REPO, &data).await;
    let resp = c
        .req(Method::GET, &format!("/v2/{REPO}/blobs/{digest}"))
        .header(RANGE, "bytes=123-")
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::PARTIAL_CONTENT,
        "{}",
        describe(resp).await
    );
    assert_eq!(must_header(&resp, "Content-Range"), "bytes 123-499/500");
    assert_eq!(resp.bytes().await.unwrap().to_vec(), data[123..].to_vec());
}

/// RFC 9110: a last-byte-pos past the end is clamped to the last byte.
#[tokio::test]
async fn blob_range_past_end_is_clamped() {
    let c = Ctx::new();
    let data = random_bytes(50);
    let digest = c.push_blob(REPO, &data).await;
    let resp = c
        .req(Method::GET, &format!("/v2/{REPO}/blobs/{digest}"))
        .header(RANGE, "bytes=40-1000")
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::PARTIAL_CONTENT,
        "{}",
        describe(resp).await
    );
    assert_eq!(must_header(&resp, "Content-Range"), "bytes 40-49/50");
    assert_eq!(resp.bytes().await.unwrap().to_vec(), data[40..].to_vec());
}

/// RFC 9110 suffix range `bytes=-n`: the last n bytes.
#[tokio::test]
async fn blob_suffix_range_returns_last_bytes() {
    let c = Ctx::new();
    let data = random_bytes(64);
    let digest = c.push_blob(REPO, &data).await;
    let resp = c
        .req(Method::GET, &format!("/v2/{REPO}/blobs/{digest}"))
        .header(RANGE, "bytes=-10")
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::PARTIAL_CONTENT,
        "{}",
        describe(resp).await
    );
    assert_eq!(must_header(&resp, "Content-Range"), "bytes 54-63/64");
    assert_eq!(resp.bytes().await.unwrap().to_vec(), data[54..].to_vec());
}

/// Unsatisfiable range → 416 with `Content-Range: bytes */total`.
#[tokio::test]
async fn blob_unsatisfiable_range_returns_416() {
    let c = Ctx::new();
    let data = random_bytes(100);
    let digest = c.push_blob(REPO, &data).await;
    for range in ["bytes=100-200", "bytes=500-"] {
        let resp = c
            .req(Method::GET, &format!("/v2/{REPO}/blobs/{digest}"))
            .header(RANGE, range)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE, "{range}");
        assert_eq!(
            must_header(&resp, "Content-Range"),
            "bytes */100",
            "{range}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Manifests
// ---------------------------------------------------------------------------------------------

/// spec "Pulling manifests": 200, Content-Type = pushed type, Docker-Content-Digest, exact bytes.
#[tokio::test]
async fn get_manifest_by_tag_returns_manifest_and_headers() {
    let c = Ctx::new();
    let img = c.push_image(REPO, "v1").await;
    let resp = c
        .req(Method::GET, &format!("/v2/{REPO}/manifests/v1"))
        .header(ACCEPT, OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(must_header(&resp, "Content-Type"), OCI_MANIFEST);
    assert_eq!(must_header(&resp, "Docker-Content-Digest"), img.digest);
    assert_eq!(
        must_header(&resp, "Content-Length"),
        img.manifest.len().to_string()
    );
    assert_eq!(resp.bytes().await.unwrap().to_vec(), img.manifest);
}

#[tokio::test]
async fn get_manifest_by_digest_returns_manifest_and_headers() {
    let c = Ctx::new();
    let img = c.push_image(REPO, "v1").await;
    let resp = c.get(&format!("/v2/{REPO}/manifests/{}", img.digest)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(must_header(&resp, "Content-Type"), OCI_MANIFEST);
    assert_eq!(must_header(&resp, "Docker-Content-Digest"), img.digest);
    assert_eq!(
        must_header(&resp, "Content-Length"),
        img.manifest.len().to_string()
    );
    assert_eq!(resp.bytes().await.unwrap().to_vec(), img.manifest);
}

#[tokio::test]
async fn head_manifest_by_tag_and_digest_returns_headers_without_body() {
    let c = Ctx::new();
    let img = c.push_image(REPO, "v1").await;
    for reference in ["v1", img.digest.as_str()] {
        let resp = c.head(&format!("/v2/{REPO}/manifests/{reference}")).await;
        assert_eq!(resp.status(), StatusCode::OK, "{reference}");
        assert_eq!(must_header(&resp, "Content-Type"), OCI_MANIFEST);
        assert_eq!(must_header(&resp, "Docker-Content-Digest"), img.digest);
        assert_eq!(
            must_header(&resp, "Content-Length"),
            img.manifest.len().to_string()
        );
        assert!(resp.bytes().await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn get_unknown_tag_returns_404_manifest_unknown() {
    let c = Ctx::new();
    c.push_image(REPO, "v1").await;
    let resp = c.get(&format!("/v2/{REPO}/manifests/nope")).await;
    expect_error(resp, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
}

#[tokio::test]
async fn get_unknown_manifest_digest_returns_404_manifest_unknown() {
    let c = Ctx::new();
    c.push_image(REPO, "v1").await;
    let resp = c
        .get(&format!("/v2/{REPO}/manifests/{MISSING_DIGEST}"))
        .await;
    expect_error(resp, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
}

#[tokio::test]
async fn head_unknown_manifest_returns_404() {
    let c = Ctx::new();
    c.push_image(REPO, "v1").await;
    assert_eq!(
        c.head(&format!("/v2/{REPO}/manifests/nope")).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        c.head(&format!("/v2/{REPO}/manifests/{MISSING_DIGEST}"))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
}

/// spec: "An attempt to pull a nonexistent repository MUST return response code 404 Not Found."
#[tokio::test]
async fn get_manifest_in_unknown_repo_returns_404() {
    let c = Ctx::new();
    let resp = c.get("/v2/does/not/exist/manifests/latest").await;
    let errors = error_body(resp, StatusCode::NOT_FOUND).await;
    assert!(
        errors
            .iter()
            .any(|e| e.code == "MANIFEST_UNKNOWN" || e.code == "NAME_UNKNOWN"),
        "{errors:?}"
    );
}

/// Manifests are scoped to repositories too.
#[tokio::test]
async fn manifest_pushed_to_one_repo_is_not_visible_in_another() {
    let c = Ctx::new();
    let img = c.push_image("scope/a", "v1").await;
    c.push_image("scope/b", "other").await;
    let resp = c
        .get(&format!("/v2/scope/b/manifests/{}", img.digest))
        .await;
    expect_error(resp, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    let resp = c.get("/v2/scope/b/manifests/v1").await;
    expect_error(resp, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
}

/// Accept lists the stored type among others → 200.
#[tokio::test]
async fn accept_header_listing_stored_type_returns_200() {
    let c = Ctx::new();
    let img = c.push_image(REPO, "v1").await;
    let resp = c
        .req(Method::GET, &format!("/v2/{REPO}/manifests/v1"))
        .header(
            ACCEPT,
            format!("{DOCKER_MANIFEST}, {OCI_INDEX}, {OCI_MANIFEST}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(must_header(&resp, "Content-Type"), OCI_MANIFEST);
    assert_eq!(resp.bytes().await.unwrap().to_vec(), img.manifest);
}

/// Docker sends one Accept header per type; all of them count.
#[tokio::test]
async fn multiple_accept_headers_are_combined() {
    let c = Ctx::new();
    c.push_image(REPO, "v1").await;
    let resp = c
        .req(Method::GET, &format!("/v2/{REPO}/manifests/v1"))
        .header(ACCEPT, DOCKER_MANIFEST)
        .header(ACCEPT, DOCKER_LIST)
        .header(ACCEPT, OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "{}", describe(resp).await);
}

/// Accept entries may carry parameters such as q-values.
#[tokio::test]
async fn accept_header_with_q_values_is_honoured() {
    let c = Ctx::new();
    c.push_image(REPO, "v1").await;
    let resp = c
        .req(Method::GET, &format!("/v2/{REPO}/manifests/v1"))
        .header(
            ACCEPT,
            format!("{DOCKER_MANIFEST};q=1.0, {OCI_MANIFEST};q=0.5"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "{}", describe(resp).await);
}

#[tokio::test]
async fn accept_wildcard_returns_any_type() {
    let c = Ctx::new();
    c.push_image(REPO, "v1").await;
    let resp = c
        .req(Method::GET, &format!("/v2/{REPO}/manifests/v1"))
        .header(ACCEPT, format!("{DOCKER_MANIFEST}, */*"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(must_header(&resp, "Content-Type"), OCI_MANIFEST);
}

/// Design decision: an Accept that excludes the stored type → 404 MANIFEST_UNKNOWN.
#[tokio::test]
async fn accept_header_excluding_stored_type_returns_404_manifest_unknown() {
    let c = Ctx::new();
    let img = c.push_image(REPO, "v1").await;
    for reference in ["v1", img.digest.as_str()] {
        let resp = c
            .req(Method::GET, &format!("/v2/{REPO}/manifests/{reference}"))
            .header(ACCEPT, format!("{DOCKER_MANIFEST}, {DOCKER_LIST}"))
            .send()
            .await
            .unwrap();
        expect_error(resp, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    }
}

#[tokio::test]
async fn get_index_returns_index_content_type() {
    let c = Ctx::new();
    let img = c.push_image(REPO, "child").await;
    let body = image_index(&[img.descriptor()]);
    let digest = c.put_manifest_ok(REPO, "idx", OCI_INDEX, &body).await;
    let resp = c.get(&format!("/v2/{REPO}/manifests/idx")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(must_header(&resp, "Content-Type"), OCI_INDEX);
    assert_eq!(must_header(&resp, "Docker-Content-Digest"), digest);
    assert_eq!(resp.bytes().await.unwrap().to_vec(), body);
}

/// Tags and digests are interchangeable references to the same manifest.
#[tokio::test]
async fn several_tags_point_at_one_manifest() {
    let c = Ctx::new();
    let img = c.push_image(REPO, "one").await;
    c.put_manifest_ok(REPO, "two", OCI_MANIFEST, &img.manifest)
        .await;
    for reference in ["one", "two"] {
        let resp = c.get(&format!("/v2/{REPO}/manifests/{reference}")).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(must_header(&resp, "Docker-Content-Digest"), img.digest);
    }
}

// ---------------------------------------------------------------------------------------------
// Repository names
// ---------------------------------------------------------------------------------------------

/// Names with several path components, and all separators the spec allows.
#[tokio::test]
async fn nested_names_with_all_separators_work() {
    let c = Ctx::new();
    for repo in ["a", "a/b/c/d", "my.org/sub_name/x__y/a-b/a---b", "0/9"] {
        let img = c.push_image(repo, "t").await;
        let resp = c.get(&format!("/v2/{repo}/manifests/t")).await;
        assert_eq!(resp.status(), StatusCode::OK, "{repo}");
        assert_eq!(
            must_header(&resp, "Docker-Content-Digest"),
            img.digest,
            "{repo}"
        );
        assert_eq!(
            c.blob_status(repo, &img.layer_digest).await,
            StatusCode::OK,
            "{repo}"
        );
    }
}

/// Path components that look like API keywords are valid repository name components.
#[tokio::test]
async fn names_containing_api_keywords_route_correctly() {
    let c = Ctx::new();
    for repo in [
        "org/manifests",
        "org/blobs/uploads",
        "tags/list",
        "x/referrers/manifests/blobs",
    ] {
        let img = c.push_image(repo, "latest").await;
        let resp = c.get(&format!("/v2/{repo}/manifests/latest")).await;
        assert_eq!(resp.status(), StatusCode::OK, "{repo}");
        assert_eq!(
            must_header(&resp, "Docker-Content-Digest"),
            img.digest,
            "{repo}"
        );
        let resp = c
            .get(&format!("/v2/{repo}/blobs/{}", img.config_digest))
            .await;
        assert_eq!(resp.status(), StatusCode::OK, "{repo}");
        assert_eq!(resp.bytes().await.unwrap().to_vec(), img.config);
        let (_, v) = json_ok(c.get(&format!("/v2/{repo}/tags/list")).await).await;
        assert_eq!(v, json!({"name": repo, "tags": ["latest"]}), "{repo}");
    }
}

/// A name of exactly 255 characters is valid.
#[tokio::test]
async fn name_of_255_characters_is_accepted() {
    let c = Ctx::new();
    let repo = format!("{}/{}", "a".repeat(127), "b".repeat(127));
    assert_eq!(repo.len(), 255);
    let img = c.push_image(&repo, "t").await;
    let resp = c.get(&format!("/v2/{repo}/manifests/t")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(must_header(&resp, "Docker-Content-Digest"), img.digest);
}

/// A tag of exactly 128 characters, with all allowed characters, is valid.
#[tokio::test]
async fn tag_of_128_characters_is_accepted() {
    let c = Ctx::new();
    let tag = format!("_Az09.-{}", "x".repeat(121));
    assert_eq!(tag.len(), 128);
    let img = c.push_image(REPO, &tag).await;
    let resp = c.get(&format!("/v2/{REPO}/manifests/{tag}")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(must_header(&resp, "Docker-Content-Digest"), img.digest);
}

/// Pushed content is still there after the server restarts on the same data directory.
#[tokio::test]
async fn content_survives_server_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let c = Ctx {
        srv: common::KuraServer::start_in(&data_dir, &[], &[]),
        http: client(),
    };
    let img = c.push_image(REPO, "keep").await;
    drop(c);
    let c = Ctx {
        srv: common::KuraServer::start_in(&data_dir, &[], &[]),
        http: client(),
    };
    let resp = c.get(&format!("/v2/{REPO}/manifests/keep")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await.unwrap().to_vec(), img.manifest);
    let resp = c
        .get(&format!("/v2/{REPO}/blobs/{}", img.layer_digest))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await.unwrap().to_vec(), img.layer);
    let (_, v) = json_ok(c.get(&format!("/v2/{REPO}/tags/list")).await).await;
    assert_eq!(v, json!({"name": REPO, "tags": ["keep"]}));
}

/// Tags in the referrers tag schema (`<alg>-<ref>`) are ordinary valid tags.
#[tokio::test]
async fn referrers_schema_tag_is_a_valid_tag() {
    let c = Ctx::new();
    let tag = format!("sha256-{}", random_hex(32));
    let img = c.push_image(REPO, &tag).await;
    let resp = c.get(&format!("/v2/{REPO}/manifests/{tag}")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(must_header(&resp, "Docker-Content-Digest"), img.digest);
}
