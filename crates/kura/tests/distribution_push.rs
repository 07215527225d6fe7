//! OCI Distribution Spec v1.1 — push: blob uploads (monolithic, chunked, streamed, mount) and
//! manifest uploads, happy paths and their header contracts. Black-box against the real binary.

mod common;

use common::api::*;
use reqwest::{Method, StatusCode};
use serde_json::json;

const REPO: &str = "push/test";

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

async fn get_body(c: &Ctx, path: &str) -> Vec<u8> {
    let resp = c.get(path).await;
    assert_eq!(resp.status(), StatusCode::OK, "GET {path}");
    resp.bytes().await.unwrap().to_vec()
}

// ---------------------------------------------------------------------------------------------
// Upload sessions
// ---------------------------------------------------------------------------------------------

/// spec: POST /v2/<name>/blobs/uploads/ → 202 with Location containing a session id;
/// OCI-Chunk-Min-Length SHOULD be sent when there is a minimum chunk size.
#[tokio::test]
async fn post_upload_returns_202_with_location_uuid_range_and_chunk_min_length() {
    let c = Ctx::new();
    let resp = c
        .req(Method::POST, &format!("/v2/{REPO}/blobs/uploads/"))
        .body(Vec::<u8>::new())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let loc = location(&resp);
    assert!(
        loc.starts_with(&format!("/v2/{REPO}/blobs/uploads/")),
        "relative upload Location expected: {loc}"
    );
    let uuid = must_header(&resp, "Docker-Upload-UUID");
    assert!(!uuid.is_empty());
    assert!(
        loc.contains(&uuid),
        "Location {loc} should contain the upload id {uuid}"
    );
    // spec: "The <location> MUST contain a UUID representing a unique session ID".
    let groups: Vec<usize> = uuid.split('-').map(str::len).collect();
    assert!(
        groups == [8, 4, 4, 4, 12] && uuid.chars().all(|ch| ch == '-' || ch.is_ascii_hexdigit()),
        "upload id is not a UUID: {uuid}"
    );
    assert_eq!(must_header(&resp, "Range"), "0-0");
    let min = must_header(&resp, "OCI-Chunk-Min-Length");
    min.parse::<u64>()
        .unwrap_or_else(|_| panic!("OCI-Chunk-Min-Length is not an integer: {min}"));
}

#[tokio::test]
async fn each_post_upload_gets_a_distinct_session() {
    let c = Ctx::new();
    let a = c.start_upload(REPO).await;
    let b = c.start_upload(REPO).await;
    assert_ne!(a, b);
}

/// end-13: GET on an active upload → 204 with Location and Range.
#[tokio::test]
async fn get_upload_status_returns_204_with_location_and_range() {
    let c = Ctx::new();
    let loc = c.start_upload(REPO).await;
    let resp = patch(&c, &loc, Some("0-9"), &random_bytes(10)).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let loc = location(&resp);

    let resp = c.get(&loc).await;
    assert_eq!(
        resp.status(),
        StatusCode::NO_CONTENT,
        "{}",
        describe(resp).await
    );
    assert_eq!(must_header(&resp, "Range"), "0-9");
    let status_loc = location(&resp);
    assert!(
        c.path_of(&status_loc)
            .starts_with(&format!("/v2/{REPO}/blobs/uploads/"))
    );
}

/// GET on a fresh (empty) upload session → 204.
#[tokio::test]
async fn get_status_of_fresh_upload_returns_204() {
    let c = Ctx::new();
    let loc = c.start_upload(REPO).await;
    let resp = c.get(&loc).await;
    assert_eq!(
        resp.status(),
        StatusCode::NO_CONTENT,
        "{}",
        describe(resp).await
    );
    location(&resp);
    must_header(&resp, "Range");
}

#[tokio::test]
async fn delete_upload_returns_204_and_session_is_gone() {
    let c = Ctx::new();
    let loc = c.start_upload(REPO).await;
    let resp = c.delete(&loc).await;
    assert_eq!(
        resp.status(),
        StatusCode::NO_CONTENT,
        "{}",
        describe(resp).await
    );
    let resp = c.get(&loc).await;
    expect_error(resp, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
}

// ---------------------------------------------------------------------------------------------
// Monolithic uploads
// ---------------------------------------------------------------------------------------------

/// spec "POST then PUT": PUT <location>?digest= → 201 with Location (pullable blob URL).
#[tokio::test]
async fn post_then_put_uploads_blob() {
    let c = Ctx::new();
    let data = random_bytes(1000);
    let digest = sha256(&data);
    let loc = c.start_upload(REPO).await;
    let resp = put_digest(&c, &loc, &digest, &data).await;
    assert_eq!(
        resp.status(),
        StatusCode::CREATED,
        "{}",
        describe(resp).await
    );
    assert_eq!(
        c.path_of(&location(&resp)),
        format!("/v2/{REPO}/blobs/{digest}")
    );
    assert_eq!(must_header(&resp, "Docker-Content-Digest"), digest);
    assert_eq!(
        get_body(&c, &format!("/v2/{REPO}/blobs/{digest}")).await,
        data
    );
}

/// spec "Single POST": POST /v2/<name>/blobs/uploads/?digest= with the body → 201 + Location.
#[tokio::test]
async fn single_post_with_digest_uploads_blob() {
    let c = Ctx::new();
    let data = random_bytes(777);
    let digest = sha256(&data);
    let resp = c
        .req(
            Method::POST,
            &with_query(&format!("/v2/{REPO}/blobs/uploads/"), "digest", &digest),
        )
        .header("Content-Type", "application/octet-stream")
        .body(data.clone())
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
        c.path_of(&location(&resp)),
        format!("/v2/{REPO}/blobs/{digest}")
    );
    assert_eq!(must_header(&resp, "Docker-Content-Digest"), digest);
    assert_eq!(
        get_body(&c, &format!("/v2/{REPO}/blobs/{digest}")).await,
        data
    );
}

#[tokio::test]
async fn zero_length_blob_can_be_pushed_and_pulled() {
    let c = Ctx::new();
    let digest = c.push_blob(REPO, b"").await;
    assert_eq!(
        digest,
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    let resp = c.get(&format!("/v2/{REPO}/blobs/{digest}")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(must_header(&resp, "Content-Length"), "0");
    assert!(resp.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn pushing_the_same_blob_twice_succeeds() {
    let c = Ctx::new();
    let data = random_bytes(100);
    let d1 = c.push_blob(REPO, &data).await;
    let d2 = c.push_blob(REPO, &data).await;
    assert_eq!(d1, d2);
    assert_eq!(get_body(&c, &format!("/v2/{REPO}/blobs/{d1}")).await, data);
}

/// sha512 digests are supported for uploads and pulls.
#[tokio::test]
async fn blob_with_sha512_digest_can_be_pushed_and_pulled() {
    let c = Ctx::new();
    let data = random_bytes(512);
    let digest = sha512(&data);
    let loc = c.start_upload(REPO).await;
    let resp = put_digest(&c, &loc, &digest, &data).await;
    assert_eq!(
        resp.status(),
        StatusCode::CREATED,
        "{}",
        describe(resp).await
    );
    location(&resp);

    let resp = c.get(&format!("/v2/{REPO}/blobs/{digest}")).await;
    assert_eq!(resp.status(), StatusCode::OK, "GET blob by sha512");
    let dcd = header(resp.headers(), "Docker-Content-Digest").map(str::to_string);
    let body = resp.bytes().await.unwrap();
    assert_eq!(&body[..], &data[..]);
    if let Some(dcd) = dcd {
        // spec: "If present, the value of this header MUST be a digest matching that of the response body."
        assert!(
            digest_matches(&dcd, &body),
            "Docker-Content-Digest {dcd} does not match the body"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Chunked uploads
// ---------------------------------------------------------------------------------------------

/// spec "Pushing a blob in chunks": each PATCH → 202 with Location and Range 0-<end>; close with PUT.
#[tokio::test]
async fn chunked_upload_with_content_range_and_final_put() {
    let c = Ctx::new();
    let data = random_bytes(30);
    let digest = sha256(&data);
    let loc = c.start_upload(REPO).await;

    let resp = patch(&c, &loc, Some("0-9"), &data[0..10]).await;
    assert_eq!(
        resp.status(),
        StatusCode::ACCEPTED,
        "{}",
        describe(resp).await
    );
    assert_eq!(must_header(&resp, "Range"), "0-9");
    must_header(&resp, "Docker-Upload-UUID");
    let loc = location(&resp);
    assert!(
        c.path_of(&loc)
            .starts_with(&format!("/v2/{REPO}/blobs/uploads/"))
    );

    let resp = patch(&c, &loc, Some("10-19"), &data[10..20]).await;
    assert_eq!(
        resp.status(),
        StatusCode::ACCEPTED,
        "{}",
        describe(resp).await
    );
    assert_eq!(must_header(&resp, "Range"), "0-19");
    let loc = location(&resp);

    let resp = put_digest(&c, &loc, &digest, &data[20..30]).await;
    assert_eq!(
        resp.status(),
        StatusCode::CREATED,
        "{}",
        describe(resp).await
    );
    assert_eq!(
        c.path_of(&location(&resp)),
        format!("/v2/{REPO}/blobs/{digest}")
    );
    assert_eq!(must_header(&resp, "Docker-Content-Digest"), digest);
    assert_eq!(
        get_body(&c, &format!("/v2/{REPO}/blobs/{digest}")).await,
        data
    );
}

/// The conformance suite sends the final chunk on PUT together with Content-Range.
#[tokio::test]
async fn final_chunk_on_put_with_content_range() {
    let c = Ctx::new();
    let data = random_bytes(20);
    let digest = sha256(&data);
    let loc = c.start_upload(REPO).await;
    let resp = patch(&c, &loc, Some("0-9"), &data[..10]).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let loc = location(&resp);
    let resp = c
        .req(Method::PUT, &with_query(&loc, "digest", &digest))
        .header("Content-Type", "application/octet-stream")
        .header("Content-Range", "10-19")
        .body(data[10..].to_vec())
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
        get_body(&c, &format!("/v2/{REPO}/blobs/{digest}")).await,
        data
    );
}

/// All chunks via PATCH, then a PUT with an empty body closes the session.
#[tokio::test]
async fn chunked_upload_closed_by_empty_put() {
    let c = Ctx::new();
    let data = random_bytes(25);
    let digest = sha256(&data);
    let loc = c.start_upload(REPO).await;
    let resp = patch(&c, &loc, Some("0-11"), &data[..12]).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let resp = patch(&c, &location(&resp), Some("12-24"), &data[12..]).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert_eq!(must_header(&resp, "Range"), "0-24");
    let resp = put_digest(&c, &location(&resp), &digest, b"").await;
    assert_eq!(
        resp.status(),
        StatusCode::CREATED,
        "{}",
        describe(resp).await
    );
    assert_eq!(
        get_body(&c, &format!("/v2/{REPO}/blobs/{digest}")).await,
        data
    );
}

/// A multi-megabyte blob in several chunks (sized by OCI-Chunk-Min-Length when it is reasonable).
#[tokio::test]
async fn large_chunked_upload_round_trips() {
    let c = Ctx::new();
    let resp = c
        .req(Method::POST, &format!("/v2/{REPO}/blobs/uploads/"))
        .body(Vec::<u8>::new())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let min: usize = header(resp.headers(), "OCI-Chunk-Min-Length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let chunk = min.clamp(1 << 20, 4 << 20);
    let data = random_bytes(chunk * 3 + 12345);
    let digest = sha256(&data);
    let mut loc = location(&resp);
    let mut off = 0;
    while off < data.len() {
        let end = (off + chunk).min(data.len());
        let resp = patch(
            &c,
            &loc,
            Some(&format!("{}-{}", off, end - 1)),
            &data[off..end],
        )
        .await;
        assert_eq!(
            resp.status(),
            StatusCode::ACCEPTED,
            "{}",
            describe(resp).await
        );
        assert_eq!(must_header(&resp, "Range"), format!("0-{}", end - 1));
        loc = location(&resp);
        off = end;
    }
    let resp = put_digest(&c, &loc, &digest, b"").await;
    assert_eq!(
        resp.status(),
        StatusCode::CREATED,
        "{}",
        describe(resp).await
    );
    let got = get_body(&c, &format!("/v2/{REPO}/blobs/{digest}")).await;
    assert_eq!(got.len(), data.len());
    assert!(got == data, "large blob content differs");
}

/// Streamed upload: PATCH without Content-Range and without Content-Length (chunked transfer).
#[tokio::test]
async fn streamed_patch_without_content_range() {
    let c = Ctx::new();
    let data = random_bytes(200_000);
    let digest = sha256(&data);
    let loc = c.start_upload(REPO).await;
    let parts: Vec<Result<Vec<u8>, std::io::Error>> =
        data.chunks(7000).map(|p| Ok(p.to_vec())).collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(parts));
    let resp = c
        .req(Method::PATCH, &loc)
        .header("Content-Type", "application/octet-stream")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::ACCEPTED,
        "{}",
        describe(resp).await
    );
    assert_eq!(must_header(&resp, "Range"), format!("0-{}", data.len() - 1));
    let resp = put_digest(&c, &location(&resp), &digest, b"").await;
    assert_eq!(
        resp.status(),
        StatusCode::CREATED,
        "{}",
        describe(resp).await
    );
    assert_eq!(
        get_body(&c, &format!("/v2/{REPO}/blobs/{digest}")).await,
        data
    );
}

/// PATCHes without Content-Range append to the session in order.
#[tokio::test]
async fn patches_without_content_range_append() {
    let c = Ctx::new();
    let data = random_bytes(50);
    let digest = sha256(&data);
    let loc = c.start_upload(REPO).await;
    let resp = patch(&c, &loc, None, &data[..20]).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert_eq!(must_header(&resp, "Range"), "0-19");
    let resp = patch(&c, &location(&resp), None, &data[20..]).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert_eq!(must_header(&resp, "Range"), "0-49");
    let resp = put_digest(&c, &location(&resp), &digest, b"").await;
    assert_eq!(
        resp.status(),
        StatusCode::CREATED,
        "{}",
        describe(resp).await
    );
    assert_eq!(
        get_body(&c, &format!("/v2/{REPO}/blobs/{digest}")).await,
        data
    );
}

/// After a 416 the client asks for the status and resumes from the reported offset.
#[tokio::test]
async fn upload_resumes_after_out_of_order_chunk() {
    let c = Ctx::new();
    let data = random_bytes(30);
    let digest = sha256(&data);
    let loc = c.start_upload(REPO).await;
    let resp = patch(&c, &loc, Some("0-9"), &data[..10]).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let loc = location(&resp);
    let resp = patch(&c, &loc, Some("20-29"), &data[20..]).await;
    assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    let resp = c.get(&loc).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(must_header(&resp, "Range"), "0-9");
    let loc = location(&resp);
    let resp = patch(&c, &loc, Some("10-19"), &data[10..20]).await;
    assert_eq!(
        resp.status(),
        StatusCode::ACCEPTED,
        "{}",
        describe(resp).await
    );
    let resp = patch(&c, &location(&resp), Some("20-29"), &data[20..]).await;
    assert_eq!(
        resp.status(),
        StatusCode::ACCEPTED,
        "{}",
        describe(resp).await
    );
    let resp = put_digest(&c, &location(&resp), &digest, b"").await;
    assert_eq!(
        resp.status(),
        StatusCode::CREATED,
        "{}",
        describe(resp).await
    );
    assert_eq!(
        get_body(&c, &format!("/v2/{REPO}/blobs/{digest}")).await,
        data
    );
}

// ---------------------------------------------------------------------------------------------
// Cross-repository mount
// ---------------------------------------------------------------------------------------------

/// spec "Mounting a blob from another repository": 201 with Location; blob then pullable from the target.
#[tokio::test]
async fn mount_from_repo_holding_blob_returns_201() {
    let c = Ctx::new();
    let data = random_bytes(123);
    let digest = c.push_blob("mount/source", &data).await;
    let url = with_query(
        &with_query("/v2/mount/target/blobs/uploads/", "mount", &digest),
        "from",
        "mount/source",
    );
    let resp = c
        .req(Method::POST, &url)
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
        c.path_of(&location(&resp)),
        format!("/v2/mount/target/blobs/{digest}")
    );
    assert_eq!(must_header(&resp, "Docker-Content-Digest"), digest);
    assert_eq!(
        get_body(&c, &format!("/v2/mount/target/blobs/{digest}")).await,
        data
    );
    // The source keeps it too.
    assert_eq!(c.blob_status("mount/source", &digest).await, StatusCode::OK);
}

/// Mounting a blob the `from` repository lacks → 202 and a normal upload session.
#[tokio::test]
async fn mount_of_blob_missing_from_source_falls_back_to_upload_session() {
    let c = Ctx::new();
    let data = random_bytes(64);
    let digest = sha256(&data);
    c.push_blob("mount/other", &random_bytes(10)).await;
    let url = with_query(
        &with_query("/v2/mount/target/blobs/uploads/", "mount", &digest),
        "from",
        "mount/other",
    );
    let resp = c
        .req(Method::POST, &url)
        .body(Vec::<u8>::new())
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::ACCEPTED,
        "{}",
        describe(resp).await
    );
    let loc = location(&resp);
    assert!(
        c.path_of(&loc)
            .starts_with("/v2/mount/target/blobs/uploads/"),
        "{loc}"
    );
    // The session is usable.
    let resp = put_digest(&c, &loc, &digest, &data).await;
    assert_eq!(
        resp.status(),
        StatusCode::CREATED,
        "{}",
        describe(resp).await
    );
    assert_eq!(
        get_body(&c, &format!("/v2/mount/target/blobs/{digest}")).await,
        data
    );
}

/// A blob in repo A cannot be mounted into B by naming a third repo C that does not hold it.
#[tokio::test]
async fn mount_does_not_take_blob_from_unnamed_repo() {
    let c = Ctx::new();
    let digest = c.push_blob("mount/holder", &random_bytes(40)).await;
    c.push_blob("mount/empty", &random_bytes(10)).await;
    let url = with_query(
        &with_query("/v2/mount/target/blobs/uploads/", "mount", &digest),
        "from",
        "mount/empty",
    );
    let resp = c
        .req(Method::POST, &url)
        .body(Vec::<u8>::new())
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::ACCEPTED,
        "{}",
        describe(resp).await
    );
    assert_eq!(
        c.blob_status("mount/target", &digest).await,
        StatusCode::NOT_FOUND
    );
}

/// Mount without `from` → 202 session (the registry does not search other repositories).
#[tokio::test]
async fn mount_without_from_returns_202_session() {
    let c = Ctx::new();
    let digest = c.push_blob("mount/source", &random_bytes(77)).await;
    let url = with_query("/v2/mount/target/blobs/uploads/", "mount", &digest);
    let resp = c
        .req(Method::POST, &url)
        .body(Vec::<u8>::new())
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::ACCEPTED,
        "{}",
        describe(resp).await
    );
    let loc = location(&resp);
    assert!(
        c.path_of(&loc)
            .starts_with("/v2/mount/target/blobs/uploads/"),
        "{loc}"
    );
    assert_eq!(
        c.blob_status("mount/target", &digest).await,
        StatusCode::NOT_FOUND
    );
}

// ---------------------------------------------------------------------------------------------
// Manifests
// ---------------------------------------------------------------------------------------------

/// spec "Pushing Manifests": 201 + Location (pullable manifest URL); Docker-Content-Digest is the digest.
#[tokio::test]
async fn put_manifest_by_tag_returns_201_location_and_digest() {
    let c = Ctx::new();
    let config = random_config();
    let layer = random_bytes(100);
    c.push_blob(REPO, &config).await;
    c.push_blob(REPO, &layer).await;
    let body = image_manifest(
        &descriptor(OCI_CONFIG, &config),
        &[descriptor(OCI_LAYER, &layer)],
        None,
    );
    let digest = sha256(&body);
    let resp = c.put_manifest(REPO, "v1", OCI_MANIFEST, &body).await;
    assert_eq!(
        resp.status(),
        StatusCode::CREATED,
        "{}",
        describe(resp).await
    );
    assert_eq!(
        c.path_of(&location(&resp)),
        format!("/v2/{REPO}/manifests/{digest}")
    );
    assert_eq!(must_header(&resp, "Docker-Content-Digest"), digest);
    assert!(
        header(resp.headers(), "OCI-Subject").is_none(),
        "OCI-Subject without a subject"
    );
    let resp = c.get(&format!("/v2/{REPO}/manifests/v1")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await.unwrap().to_vec(), body);
}

#[tokio::test]
async fn put_manifest_by_digest_returns_201_location_and_digest() {
    let c = Ctx::new();
    let config = random_config();
    c.push_blob(REPO, &config).await;
    let body = image_manifest(&descriptor(OCI_CONFIG, &config), &[], None);
    let digest = sha256(&body);
    let resp = c.put_manifest(REPO, &digest, OCI_MANIFEST, &body).await;
    assert_eq!(
        resp.status(),
        StatusCode::CREATED,
        "{}",
        describe(resp).await
    );
    assert_eq!(
        c.path_of(&location(&resp)),
        format!("/v2/{REPO}/manifests/{digest}")
    );
    assert_eq!(must_header(&resp, "Docker-Content-Digest"), digest);
    let resp = c.get(&format!("/v2/{REPO}/manifests/{digest}")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await.unwrap().to_vec(), body);
}

/// spec: "The Docker-Content-Digest header ... MUST be equal to the client provided digest."
#[tokio::test]
async fn put_manifest_by_sha512_digest_echoes_that_digest() {
    let c = Ctx::new();
    let config = random_config();
    c.push_blob(REPO, &config).await;
    let body = image_manifest(&descriptor(OCI_CONFIG, &config), &[], None);
    let digest = sha512(&body);
    let resp = c.put_manifest(REPO, &digest, OCI_MANIFEST, &body).await;
    assert_eq!(
        resp.status(),
        StatusCode::CREATED,
        "{}",
        describe(resp).await
    );
    assert_eq!(must_header(&resp, "Docker-Content-Digest"), digest);
    let resp = c.get(&format!("/v2/{REPO}/manifests/{digest}")).await;
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "GET manifest by sha512 digest"
    );
    assert_eq!(resp.bytes().await.unwrap().to_vec(), body);
}

/// spec "Pushing Manifests with Subject": OCI-Subject: <subject digest>; the subject need not exist.
#[tokio::test]
async fn put_manifest_with_missing_subject_returns_oci_subject() {
    let c = Ctx::new();
    let subject_digest = format!("sha256:{}", random_hex(32));
    let subject = json!({"mediaType": OCI_MANIFEST, "digest": subject_digest, "size": 1234});
    c.push_empty_blob(REPO).await;
    let body = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.sig",
        "config": {"mediaType": OCI_EMPTY, "digest": EMPTY_BLOB_DIGEST, "size": 2},
        "layers": [{"mediaType": OCI_EMPTY, "digest": EMPTY_BLOB_DIGEST, "size": 2}],
        "subject": subject,
    }))
    .unwrap();
    let resp = c
        .put_manifest(REPO, &sha256(&body), OCI_MANIFEST, &body)
        .await;
    assert_eq!(
        resp.status(),
        StatusCode::CREATED,
        "{}",
        describe(resp).await
    );
    assert_eq!(must_header(&resp, "OCI-Subject"), subject_digest);
}

#[tokio::test]
async fn put_manifest_with_existing_subject_returns_oci_subject() {
    let c = Ctx::new();
    let img = c.push_image(REPO, "base").await;
    let subject = img.descriptor();
    c.push_empty_blob(REPO).await;
    let body = image_manifest(
        &json!({"mediaType": "application/vnd.example.config", "digest": EMPTY_BLOB_DIGEST, "size": 2}),
        &[],
        Some(&subject),
    );
    let resp = c.put_manifest(REPO, "sig", OCI_MANIFEST, &body).await;
    assert_eq!(
        resp.status(),
        StatusCode::CREATED,
        "{}",
        describe(resp).await
    );
    assert_eq!(must_header(&resp, "OCI-Subject"), img.digest);
}

/// Artifact manifest: artifactType + empty config (the `{}` blob pushed first).
#[tokio::test]
async fn artifact_manifest_with_empty_config_is_accepted() {
    let c = Ctx::new();
    let (body, digest) = c
        .push_artifact(
            REPO,
            Some("sbom"),
            Some("application/vnd.example.sbom.v1"),
            None,
            None,
        )
        .await;
    let resp = c.get(&format!("/v2/{REPO}/manifests/sbom")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(must_header(&resp, "Docker-Content-Digest"), digest);
    assert_eq!(must_header(&resp, "Content-Type"), OCI_MANIFEST);
    assert_eq!(resp.bytes().await.unwrap().to_vec(), body);
}

#[tokio::test]
async fn oci_index_of_manifests_in_repo_is_accepted() {
    let c = Ctx::new();
    let a = c.push_image(REPO, "amd64").await;
    let b = c.push_image(REPO, "arm64").await;
    let mut da = a.descriptor();
    da["platform"] = json!({"architecture": "amd64", "os": "linux"});
    let mut db = b.descriptor();
    db["platform"] = json!({"architecture": "arm64", "os": "linux"});
    let body = image_index(&[da, db]);
    let digest = sha256(&body);
    let resp = c.put_manifest(REPO, "multi", OCI_INDEX, &body).await;
    assert_eq!(
        resp.status(),
        StatusCode::CREATED,
        "{}",
        describe(resp).await
    );
    assert_eq!(must_header(&resp, "Docker-Content-Digest"), digest);
    let resp = c.get(&format!("/v2/{REPO}/manifests/multi")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(must_header(&resp, "Content-Type"), OCI_INDEX);
    assert_eq!(resp.bytes().await.unwrap().to_vec(), body);
}

/// An index may point at another index.
#[tokio::test]
async fn nested_index_is_accepted() {
    let c = Ctx::new();
    let a = c.push_image(REPO, "leaf").await;
    let inner = image_index(&[a.descriptor()]);
    let inner_digest = c.put_manifest_ok(REPO, "inner", OCI_INDEX, &inner).await;
    let outer = image_index(&[
        json!({"mediaType": OCI_INDEX, "digest": inner_digest, "size": inner.len()}),
    ]);
    c.put_manifest_ok(REPO, "outer", OCI_INDEX, &outer).await;
}

#[tokio::test]
async fn docker_schema2_manifest_and_manifest_list_are_accepted() {
    let c = Ctx::new();
    let config = random_config();
    let layer = random_bytes(256);
    c.push_blob(REPO, &config).await;
    c.push_blob(REPO, &layer).await;
    let manifest = serde_json::to_vec_pretty(&json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": descriptor(DOCKER_CONFIG, &config),
        "layers": [descriptor(DOCKER_LAYER, &layer)],
    }))
    .unwrap();
    let mdigest = c
        .put_manifest_ok(REPO, "docker", DOCKER_MANIFEST, &manifest)
        .await;
    let resp = c.get(&format!("/v2/{REPO}/manifests/docker")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(must_header(&resp, "Content-Type"), DOCKER_MANIFEST);
    assert_eq!(resp.bytes().await.unwrap().to_vec(), manifest);

    let list = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_LIST,
        "manifests": [{
            "mediaType": DOCKER_MANIFEST, "digest": mdigest, "size": manifest.len(),
            "platform": {"architecture": "amd64", "os": "linux"},
        }],
    }))
    .unwrap();
    let ldigest = c
        .put_manifest_ok(REPO, "docker-list", DOCKER_LIST, &list)
        .await;
    let resp = c.get(&format!("/v2/{REPO}/manifests/{ldigest}")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(must_header(&resp, "Content-Type"), DOCKER_LIST);
    assert_eq!(resp.bytes().await.unwrap().to_vec(), list);
}

/// spec: "The registry SHOULD ignore parameters on the Content-Type header" and
/// "The registry SHOULD NOT include parameters on the Content-Type header" (on GET).
#[tokio::test]
async fn content_type_parameters_are_ignored_on_put() {
    let c = Ctx::new();
    let config = random_config();
    c.push_blob(REPO, &config).await;
    let body = image_manifest(&descriptor(OCI_CONFIG, &config), &[], None);
    let resp = c
        .put_manifest(
            REPO,
            "params",
            &format!("{OCI_MANIFEST}; charset=utf-8"),
            &body,
        )
        .await;
    assert_eq!(
        resp.status(),
        StatusCode::CREATED,
        "{}",
        describe(resp).await
    );
    let resp = c.get(&format!("/v2/{REPO}/manifests/params")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(must_header(&resp, "Content-Type"), OCI_MANIFEST);
}

/// `mediaType` is optional in the body; the Content-Type header then names the type.
#[tokio::test]
async fn manifest_without_media_type_field_uses_content_type() {
    let c = Ctx::new();
    let config = random_config();
    c.push_blob(REPO, &config).await;
    let body = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "config": descriptor(OCI_CONFIG, &config),
        "layers": [],
    }))
    .unwrap();
    let digest = c.put_manifest_ok(REPO, "nomt", OCI_MANIFEST, &body).await;
    let resp = c.get(&format!("/v2/{REPO}/manifests/{digest}")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(must_header(&resp, "Content-Type"), OCI_MANIFEST);
    assert_eq!(resp.bytes().await.unwrap().to_vec(), body);
}

#[tokio::test]
async fn retagging_moves_the_tag_to_the_new_manifest() {
    let c = Ctx::new();
    let first = c.push_image(REPO, "latest").await;
    let second = c.push_image(REPO, "latest").await;
    assert_ne!(first.digest, second.digest);
    let resp = c.get(&format!("/v2/{REPO}/manifests/latest")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(must_header(&resp, "Docker-Content-Digest"), second.digest);
    // The old manifest is still there by digest.
    let resp = c
        .get(&format!("/v2/{REPO}/manifests/{}", first.digest))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await.unwrap().to_vec(), first.manifest);
}

#[tokio::test]
async fn pushing_the_same_manifest_twice_succeeds() {
    let c = Ctx::new();
    let img = c.push_image(REPO, "twice").await;
    let d = c
        .put_manifest_ok(REPO, "twice", OCI_MANIFEST, &img.manifest)
        .await;
    assert_eq!(d, img.digest);
    let d = c
        .put_manifest_ok(REPO, &img.digest, OCI_MANIFEST, &img.manifest)
        .await;
    assert_eq!(d, img.digest);
}

/// The manifest is stored byte-for-byte, whatever its formatting.
#[tokio::test]
async fn manifest_is_stored_byte_identical() {
    let c = Ctx::new();
    let config = random_config();
    c.push_blob(REPO, &config).await;
    let cd = sha256(&config);
    let body = format!(
        "{{\n   \"schemaVersion\" : 2 ,\n\t\"mediaType\": \"{OCI_MANIFEST}\",\n   \"config\": {{\"size\": {}, \"digest\": \"{cd}\", \"mediaType\": \"{OCI_CONFIG}\"}},\n   \"layers\": [ ],\n   \"annotations\": {{\"z\": \"1\", \"a\": \"\\u00e9\"}}\n}}\n\n",
        config.len()
    )
    .into_bytes();
    let digest = c.put_manifest_ok(REPO, "bytes", OCI_MANIFEST, &body).await;
    for reference in ["bytes", digest.as_str()] {
        let resp = c.get(&format!("/v2/{REPO}/manifests/{reference}")).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(must_header(&resp, "Docker-Content-Digest"), digest);
        assert_eq!(
            resp.bytes().await.unwrap().to_vec(),
            body,
            "GET by {reference}"
        );
    }
}

/// spec: registries SHOULD accept manifests of at least 4 megabytes (default limit 4 MiB).
#[tokio::test]
async fn four_megabyte_manifest_is_accepted_by_default() {
    let c = Ctx::new();
    let config = random_config();
    c.push_blob(REPO, &config).await;
    let body = padded_manifest(&config, 4_000_000);
    assert_eq!(body.len(), 4_000_000);
    c.put_manifest_ok(REPO, "big", OCI_MANIFEST, &body).await;
    let resp = c.get(&format!("/v2/{REPO}/manifests/big")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await.unwrap().len(), body.len());
}

/// `--max-manifest-size 1024`: a manifest of exactly 1024 bytes is not "larger than the limit".
#[tokio::test]
async fn manifest_exactly_at_configured_limit_is_accepted() {
    let c = Ctx::with_args(&["--max-manifest-size", "1024"]);
    let config = random_config();
    c.push_blob(REPO, &config).await;
    let body = padded_manifest(&config, 1024);
    assert_eq!(body.len(), 1024);
    c.put_manifest_ok(REPO, "edge", OCI_MANIFEST, &body).await;
}

/// The blob does not exist until the session is closed with a PUT.
#[tokio::test]
async fn blob_is_not_visible_before_upload_completes() {
    let c = Ctx::new();
    let data = random_bytes(40);
    let digest = sha256(&data);
    let loc = c.start_upload(REPO).await;
    let resp = patch(&c, &loc, Some("0-39"), &data).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert_eq!(c.blob_status(REPO, &digest).await, StatusCode::NOT_FOUND);
    let resp = put_digest(&c, &location(&resp), &digest, b"").await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(c.blob_status(REPO, &digest).await, StatusCode::OK);
}

/// spec "Layer Upload De-duplication": two sessions uploading the same blob both succeed.
#[tokio::test]
async fn concurrent_uploads_of_the_same_blob_both_succeed() {
    let c = Ctx::new();
    let data = random_bytes(100_000);
    let digest = sha256(&data);
    let a = c.start_upload(REPO).await;
    let b = c.start_upload(REPO).await;
    let ra = patch(&c, &a, Some("0-49999"), &data[..50_000]).await;
    let rb = patch(&c, &b, Some("0-49999"), &data[..50_000]).await;
    assert_eq!(ra.status(), StatusCode::ACCEPTED);
    assert_eq!(rb.status(), StatusCode::ACCEPTED);
    let (la, lb) = (location(&ra), location(&rb));
    let (ra, rb) = tokio::join!(
        put_digest(&c, &la, &digest, &data[50_000..]),
        put_digest(&c, &lb, &digest, &data[50_000..])
    );
    assert_eq!(ra.status(), StatusCode::CREATED, "{}", describe(ra).await);
    assert_eq!(rb.status(), StatusCode::CREATED, "{}", describe(rb).await);
    assert_eq!(
        get_body(&c, &format!("/v2/{REPO}/blobs/{digest}")).await,
        data
    );
}
