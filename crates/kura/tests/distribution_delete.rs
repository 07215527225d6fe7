//! OCI Distribution Spec v1.1 — content management: deleting tags, manifests and blobs.
//! (Error paths of deletion live in distribution_errors.rs.)

mod common;

use common::api::*;
use reqwest::StatusCode;

const REPO: &str = "delete/test";

async fn tags(c: &Ctx, repo: &str) -> Vec<String> {
    let (_, v) = json_ok(c.get(&format!("/v2/{repo}/tags/list")).await).await;
    v["tags"]
        .as_array()
        .map(|a| a.iter().map(|t| t.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// spec "Deleting tags": 202; afterwards GET of the tag → 404. Design: only that tag goes.
#[tokio::test]
async fn delete_tag_removes_only_that_tag() {
    let c = Ctx::new();
    let img = c.push_image(REPO, "keep").await;
    c.put_manifest_ok(REPO, "drop", OCI_MANIFEST, &img.manifest)
        .await;

    let resp = c.delete(&format!("/v2/{REPO}/manifests/drop")).await;
    assert_eq!(
        resp.status(),
        StatusCode::ACCEPTED,
        "{}",
        describe(resp).await
    );

    let resp = c.get(&format!("/v2/{REPO}/manifests/drop")).await;
    expect_error(resp, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    assert_eq!(
        c.get(&format!("/v2/{REPO}/manifests/keep")).await.status(),
        StatusCode::OK
    );
    let resp = c.get(&format!("/v2/{REPO}/manifests/{}", img.digest)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await.unwrap().to_vec(), img.manifest);
    assert_eq!(tags(&c, REPO).await, vec!["keep".to_string()]);
}

/// spec "Deleting Manifests": 202; then GET by digest and by any tag pointing to it → 404.
#[tokio::test]
async fn delete_manifest_by_digest_removes_it_and_its_tags() {
    let c = Ctx::new();
    let img = c.push_image(REPO, "a").await;
    c.put_manifest_ok(REPO, "b", OCI_MANIFEST, &img.manifest)
        .await;
    let other = c.push_image(REPO, "c").await;

    let resp = c
        .delete(&format!("/v2/{REPO}/manifests/{}", img.digest))
        .await;
    assert_eq!(
        resp.status(),
        StatusCode::ACCEPTED,
        "{}",
        describe(resp).await
    );

    for reference in [img.digest.as_str(), "a", "b"] {
        let resp = c.get(&format!("/v2/{REPO}/manifests/{reference}")).await;
        expect_error(resp, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
        assert_eq!(
            c.head(&format!("/v2/{REPO}/manifests/{reference}"))
                .await
                .status(),
            StatusCode::NOT_FOUND
        );
    }
    let resp = c.get(&format!("/v2/{REPO}/manifests/c")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(must_header(&resp, "Docker-Content-Digest"), other.digest);
    assert_eq!(tags(&c, REPO).await, vec!["c".to_string()]);
}

/// Deleting a manifest does not delete the blobs it referenced.
#[tokio::test]
async fn delete_manifest_keeps_blobs() {
    let c = Ctx::new();
    let img = c.push_image(REPO, "v1").await;
    c.push_image(REPO, "v2").await;
    let resp = c
        .delete(&format!("/v2/{REPO}/manifests/{}", img.digest))
        .await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert_eq!(
        c.blob_status(REPO, &img.config_digest).await,
        StatusCode::OK
    );
    assert_eq!(c.blob_status(REPO, &img.layer_digest).await, StatusCode::OK);
}

#[tokio::test]
async fn deleted_manifest_can_be_pushed_again() {
    let c = Ctx::new();
    let img = c.push_image(REPO, "v1").await;
    c.push_image(REPO, "other").await;
    assert_eq!(
        c.delete(&format!("/v2/{REPO}/manifests/{}", img.digest))
            .await
            .status(),
        StatusCode::ACCEPTED
    );
    c.put_manifest_ok(REPO, "v1", OCI_MANIFEST, &img.manifest)
        .await;
    let resp = c.get(&format!("/v2/{REPO}/manifests/v1")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await.unwrap().to_vec(), img.manifest);
}

/// Deleting a tag twice: the second time it is unknown.
#[tokio::test]
async fn deleting_a_tag_twice_returns_404_the_second_time() {
    let c = Ctx::new();
    c.push_image(REPO, "once").await;
    c.push_image(REPO, "stay").await;
    assert_eq!(
        c.delete(&format!("/v2/{REPO}/manifests/once"))
            .await
            .status(),
        StatusCode::ACCEPTED
    );
    let resp = c.delete(&format!("/v2/{REPO}/manifests/once")).await;
    expect_error(resp, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
}

/// spec "Deleting Blobs": 202; afterwards 404.
#[tokio::test]
async fn delete_blob_returns_202_then_blob_is_gone() {
    let c = Ctx::new();
    let digest = c.push_blob(REPO, &random_bytes(100)).await;
    c.push_blob(REPO, &random_bytes(5)).await;
    let resp = c.delete(&format!("/v2/{REPO}/blobs/{digest}")).await;
    assert_eq!(
        resp.status(),
        StatusCode::ACCEPTED,
        "{}",
        describe(resp).await
    );
    let resp = c.get(&format!("/v2/{REPO}/blobs/{digest}")).await;
    expect_error(resp, StatusCode::NOT_FOUND, "BLOB_UNKNOWN").await;
    assert_eq!(c.blob_status(REPO, &digest).await, StatusCode::NOT_FOUND);
    let resp = c.delete(&format!("/v2/{REPO}/blobs/{digest}")).await;
    expect_error(resp, StatusCode::NOT_FOUND, "BLOB_UNKNOWN").await;
}

/// Deleting a blob from one repository leaves the same blob in another repository alone.
#[tokio::test]
async fn delete_blob_in_one_repo_keeps_it_in_another() {
    let c = Ctx::new();
    let data = random_bytes(300);
    let digest = c.push_blob("delete/a", &data).await;
    c.push_blob("delete/b", &data).await;
    assert_eq!(
        c.delete(&format!("/v2/delete/a/blobs/{digest}"))
            .await
            .status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(
        c.blob_status("delete/a", &digest).await,
        StatusCode::NOT_FOUND
    );
    let resp = c.get(&format!("/v2/delete/b/blobs/{digest}")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await.unwrap().to_vec(), data);
}

/// Same with a mounted blob: deleting the source keeps the mount.
#[tokio::test]
async fn delete_blob_in_source_keeps_mounted_copy() {
    let c = Ctx::new();
    let data = random_bytes(300);
    let digest = c.push_blob("delete/src", &data).await;
    let url = with_query(
        &with_query("/v2/delete/dst/blobs/uploads/", "mount", &digest),
        "from",
        "delete/src",
    );
    let resp = c
        .req(reqwest::Method::POST, &url)
        .body(Vec::<u8>::new())
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::CREATED,
        "{}",
        describe(resp).await
    );
    assert_eq!(
        c.delete(&format!("/v2/delete/src/blobs/{digest}"))
            .await
            .status(),
        StatusCode::ACCEPTED
    );
    let resp = c.get(&format!("/v2/delete/dst/blobs/{digest}")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await.unwrap().to_vec(), data);
}

/// A deleted blob can be uploaded again.
#[tokio::test]
async fn deleted_blob_can_be_pushed_again() {
    let c = Ctx::new();
    let data = random_bytes(100);
    let digest = c.push_blob(REPO, &data).await;
    assert_eq!(
        c.delete(&format!("/v2/{REPO}/blobs/{digest}"))
            .await
            .status(),
        StatusCode::ACCEPTED
    );
    c.push_blob(REPO, &data).await;
    let resp = c.get(&format!("/v2/{REPO}/blobs/{digest}")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await.unwrap().to_vec(), data);
}
