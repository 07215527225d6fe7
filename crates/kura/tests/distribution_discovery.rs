//! OCI Distribution Spec v1.1 — content discovery: tags list (with pagination), catalog, and the
//! referrers API (with artifactType filtering).

mod common;

use common::api::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

const REPO: &str = "discovery/test";

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected an array, got {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

fn svec(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Tags a single image under every tag given.
async fn tag_all(c: &Ctx, repo: &str, tags: &[&str]) {
    let img = c.push_image(repo, tags[0]).await;
    for t in &tags[1..] {
        c.put_manifest_ok(repo, t, OCI_MANIFEST, &img.manifest)
            .await;
    }
}

// ---------------------------------------------------------------------------------------------
// Tags
// ---------------------------------------------------------------------------------------------

/// spec "Listing Tags": 200, `{"name": <name>, "tags": [...]}` in lexical order.
#[tokio::test]
async fn tags_list_returns_name_and_sorted_tags() {
    let c = Ctx::new();
    tag_all(
        &c,
        REPO,
        &["v10", "v2", "v1", "latest", "a_b", "a.b", "a-b", "1.0"],
    )
    .await;
    let (headers, v) = json_ok(c.get(&format!("/v2/{REPO}/tags/list")).await).await;
    assert_eq!(v["name"], json!(REPO));
    assert_eq!(
        strings(&v["tags"]),
        svec(&["1.0", "a-b", "a.b", "a_b", "latest", "v1", "v10", "v2"])
    );
    assert!(next_link(&headers).is_none(), "no Link expected without n");
}

/// spec (v1.1): "the tags MUST be sorted in lexical (case-insensitive alphanumeric) or
/// 'ASCIIbetical' order (as defined by Go's sort.Strings)". Kura uses ASCIIbetical (bytewise)
/// order, as the reference registry does; `last` pagination follows the same order.
#[tokio::test]
async fn tags_are_listed_in_asciibetical_order() {
    let c = Ctx::new();
    tag_all(&c, REPO, &["Beta", "alpha", "Gamma", "delta", "10", "9"]).await;
    let (_, v) = json_ok(c.get(&format!("/v2/{REPO}/tags/list")).await).await;
    assert_eq!(
        strings(&v["tags"]),
        svec(&["10", "9", "Beta", "Gamma", "alpha", "delta"])
    );
    let (_, v) = json_ok(c.get(&format!("/v2/{REPO}/tags/list?n=2&last=Gamma")).await).await;
    assert_eq!(strings(&v["tags"]), svec(&["alpha", "delta"]));
}

#[tokio::test]
async fn tags_list_of_unknown_repo_returns_404_name_unknown() {
    let c = Ctx::new();
    c.push_image(REPO, "v1").await;
    let resp = c.get("/v2/discovery/unknown/tags/list").await;
    expect_error(resp, StatusCode::NOT_FOUND, "NAME_UNKNOWN").await;
}

/// A repository whose tags were all deleted (manifest kept) still exists, with no tags.
#[tokio::test]
async fn tags_list_of_repo_without_tags_is_empty() {
    let c = Ctx::new();
    let img = c.push_image(REPO, "only").await;
    assert_eq!(
        c.delete(&format!("/v2/{REPO}/manifests/only"))
            .await
            .status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(
        c.head(&format!("/v2/{REPO}/manifests/{}", img.digest))
            .await
            .status(),
        StatusCode::OK
    );
    let (_, v) = json_ok(c.get(&format!("/v2/{REPO}/tags/list")).await).await;
    assert_eq!(v["name"], json!(REPO));
    assert!(
        v["tags"].is_null() || v["tags"].as_array().is_some_and(|a| a.is_empty()),
        "{v}"
    );
}

/// `n` limits the page and a `Link: <...>; rel="next"` leads to the rest.
#[tokio::test]
async fn tags_list_pagination_with_n_and_link() {
    let c = Ctx::new();
    tag_all(&c, REPO, &["e", "d", "c", "b", "a"]).await;
    let resp = c.get(&format!("/v2/{REPO}/tags/list?n=2")).await;
    let (headers, v) = json_ok(resp).await;
    assert_eq!(strings(&v["tags"]), svec(&["a", "b"]));
    let link = next_link(&headers).expect("Link header when more tags remain");
    let link_path = c.path_of(&link);
    assert!(
        link_path.starts_with(&format!("/v2/{REPO}/tags/list?")),
        "{link}"
    );
    let q = query_pairs(&link_path);
    assert!(q.contains(&("n".into(), "2".into())), "{link}");
    assert!(q.contains(&("last".into(), "b".into())), "{link}");

    let (headers, v) = json_ok(c.get(&link_path).await).await;
    assert_eq!(strings(&v["tags"]), svec(&["c", "d"]));
    let link = next_link(&headers).expect("second Link");
    let (headers, v) = json_ok(c.get(&c.path_of(&link)).await).await;
    assert_eq!(strings(&v["tags"]), svec(&["e"]));
    assert!(next_link(&headers).is_none(), "no Link on the last page");
}

/// A page that ends exactly at the last tag has no Link.
#[tokio::test]
async fn tags_list_last_full_page_has_no_link() {
    let c = Ctx::new();
    tag_all(&c, REPO, &["a", "b", "c", "d"]).await;
    let (headers, v) = json_ok(c.get(&format!("/v2/{REPO}/tags/list?n=2&last=b")).await).await;
    assert_eq!(strings(&v["tags"]), svec(&["c", "d"]));
    assert!(next_link(&headers).is_none());
    let (headers, v) = json_ok(c.get(&format!("/v2/{REPO}/tags/list?n=4")).await).await;
    assert_eq!(strings(&v["tags"]), svec(&["a", "b", "c", "d"]));
    assert!(next_link(&headers).is_none());
}

#[tokio::test]
async fn tags_list_n_larger_than_count_returns_all_without_link() {
    let c = Ctx::new();
    tag_all(&c, REPO, &["x", "y", "z"]).await;
    let (headers, v) = json_ok(c.get(&format!("/v2/{REPO}/tags/list?n=100")).await).await;
    assert_eq!(strings(&v["tags"]), svec(&["x", "y", "z"]));
    assert!(next_link(&headers).is_none());
}

/// spec: "When n is zero, this endpoint MUST return an empty list, and MUST NOT include a Link header."
#[tokio::test]
async fn tags_list_with_n_zero_is_empty_without_link() {
    let c = Ctx::new();
    tag_all(&c, REPO, &["x", "y"]).await;
    let (headers, v) = json_ok(c.get(&format!("/v2/{REPO}/tags/list?n=0")).await).await;
    assert_eq!(v["name"], json!(REPO));
    assert!(
        v["tags"].is_null() || v["tags"].as_array().is_some_and(|a| a.is_empty()),
        "{v}"
    );
    assert!(
        headers.get("Link").is_none(),
        "Link must not be sent for n=0"
    );
}

/// spec: `last` alone (n optional) returns the tags after `last`, not including it.
#[tokio::test]
async fn tags_list_with_last_only_returns_following_tags() {
    let c = Ctx::new();
    tag_all(&c, REPO, &["a", "b", "c", "d"]).await;
    let (_, v) = json_ok(c.get(&format!("/v2/{REPO}/tags/list?last=b")).await).await;
    assert_eq!(strings(&v["tags"]), svec(&["c", "d"]));
}

/// `last` need not be an existing tag: results start after its position.
#[tokio::test]
async fn tags_list_with_last_between_tags() {
    let c = Ctx::new();
    tag_all(&c, REPO, &["a", "c", "e"]).await;
    let (_, v) = json_ok(c.get(&format!("/v2/{REPO}/tags/list?n=1&last=b")).await).await;
    assert_eq!(strings(&v["tags"]), svec(&["c"]));
}

#[tokio::test]
async fn deleted_tag_disappears_from_tags_list() {
    let c = Ctx::new();
    tag_all(&c, REPO, &["a", "b", "c"]).await;
    assert_eq!(
        c.delete(&format!("/v2/{REPO}/manifests/b")).await.status(),
        StatusCode::ACCEPTED
    );
    let (_, v) = json_ok(c.get(&format!("/v2/{REPO}/tags/list")).await).await;
    assert_eq!(strings(&v["tags"]), svec(&["a", "c"]));
}

// ---------------------------------------------------------------------------------------------
// Catalog
// ---------------------------------------------------------------------------------------------

const CATALOG_REPOS: &[&str] = &["gamma", "beta/two", "alpha", "beta/one"];

#[tokio::test]
async fn catalog_lists_repositories_sorted() {
    let c = Ctx::new();
    for r in CATALOG_REPOS {
        c.push_image(r, "latest").await;
    }
    let (headers, v) = json_ok(c.get("/v2/_catalog").await).await;
    assert_eq!(
        strings(&v["repositories"]),
        svec(&["alpha", "beta/one", "beta/two", "gamma"])
    );
    assert!(next_link(&headers).is_none());
}

#[tokio::test]
async fn catalog_pagination_with_n_and_link() {
    let c = Ctx::new();
    for r in CATALOG_REPOS {
        c.push_image(r, "latest").await;
    }
    let (headers, v) = json_ok(c.get("/v2/_catalog?n=3").await).await;
    assert_eq!(
        strings(&v["repositories"]),
        svec(&["alpha", "beta/one", "beta/two"])
    );
    let link = next_link(&headers).expect("Link when more repositories remain");
    let link_path = c.path_of(&link);
    assert!(link_path.starts_with("/v2/_catalog?"), "{link}");
    let q = query_pairs(&link_path);
    assert!(q.contains(&("n".into(), "3".into())), "{link}");
    assert!(q.contains(&("last".into(), "beta/two".into())), "{link}");
    let (headers, v) = json_ok(c.get(&link_path).await).await;
    assert_eq!(strings(&v["repositories"]), svec(&["gamma"]));
    assert!(next_link(&headers).is_none());
}

#[tokio::test]
async fn catalog_with_n_zero_is_empty_without_link() {
    let c = Ctx::new();
    c.push_image("alpha", "latest").await;
    let (headers, v) = json_ok(c.get("/v2/_catalog?n=0").await).await;
    assert!(
        v["repositories"].is_null() || v["repositories"].as_array().is_some_and(|a| a.is_empty()),
        "{v}"
    );
    assert!(headers.get("Link").is_none());
}

#[tokio::test]
async fn catalog_with_last_returns_following_repositories() {
    let c = Ctx::new();
    for r in CATALOG_REPOS {
        c.push_image(r, "latest").await;
    }
    let (_, v) = json_ok(c.get("/v2/_catalog?last=beta%2Fone").await).await;
    assert_eq!(strings(&v["repositories"]), svec(&["beta/two", "gamma"]));
}

#[tokio::test]
async fn catalog_of_empty_registry_is_empty() {
    let c = Ctx::new();
    let (_, v) = json_ok(c.get("/v2/_catalog").await).await;
    assert!(
        v["repositories"].is_null() || v["repositories"].as_array().is_some_and(|a| a.is_empty()),
        "{v}"
    );
}

// ---------------------------------------------------------------------------------------------
// Referrers
// ---------------------------------------------------------------------------------------------

async fn referrers(
    c: &Ctx,
    repo: &str,
    digest: &str,
    artifact_type: Option<&str>,
) -> (reqwest::header::HeaderMap, Value) {
    let mut path = format!("/v2/{repo}/referrers/{digest}");
    if let Some(t) = artifact_type {
        path = with_query(&path, "artifactType", t);
    }
    let resp = c.get(&path).await;
    assert_eq!(resp.status(), StatusCode::OK, "GET {path}");
    assert_eq!(must_header(&resp, "Content-Type"), OCI_INDEX);
    let (headers, v) = json_ok(resp).await;
    assert_eq!(v["schemaVersion"], json!(2), "{v}");
    assert_eq!(v["mediaType"], json!(OCI_INDEX), "{v}");
    assert!(
        v["manifests"].is_array(),
        "`manifests` must be an array: {v}"
    );
    (headers, v)
}

fn find<'a>(index: &'a Value, digest: &str) -> &'a Value {
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["digest"] == json!(digest))
        .unwrap_or_else(|| panic!("{digest} not in referrers {index}"))
}

fn digests(index: &Value) -> Vec<String> {
    let mut d: Vec<String> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["digest"].as_str().unwrap().to_string())
        .collect();
    d.sort();
    d
}

/// Pushes an image manifest (non-empty config of type `config_type`, no artifactType) with a subject.
async fn push_config_typed_referrer(
    c: &Ctx,
    repo: &str,
    subject: &Value,
    config_type: &str,
    annotations: Value,
) -> (Vec<u8>, String) {
    let config = random_bytes(20);
    c.push_blob(repo, &config).await;
    let mut m: Value = serde_json::from_slice(&image_manifest(
        &descriptor(config_type, &config),
        &[],
        Some(subject),
    ))
    .unwrap();
    m["annotations"] = annotations;
    let body = serde_json::to_vec(&m).unwrap();
    let digest = c
        .put_manifest_ok(repo, &sha256(&body), OCI_MANIFEST, &body)
        .await;
    (body, digest)
}

/// spec "Listing Referrers": descriptors carry mediaType/size/digest, artifactType (manifest's
/// artifactType, else config mediaType; omitted for an index without one) and annotations.
#[tokio::test]
async fn referrers_list_descriptors_with_artifact_type_and_annotations() {
    let c = Ctx::new();
    let subject_img = c.push_image(REPO, "subject").await;
    let subject = subject_img.descriptor();

    let ann_a = json!({"org.example.kind": "sbom", "org.opencontainers.image.created": "2024-01-01T00:00:00Z"});
    let (body_a, digest_a) = c
        .push_artifact(
            REPO,
            None,
            Some("application/vnd.example.sbom.v1"),
            Some(subject.clone()),
            Some(ann_a.clone()),
        )
        .await;

    let ann_b = json!({"org.example.kind": "sig"});
    let (body_b, digest_b) = push_config_typed_referrer(
        &c,
        REPO,
        &subject,
        "application/vnd.example.sig.config.v1+json",
        ann_b.clone(),
    )
    .await;

    let child = c.push_image(REPO, "child").await;
    let ann_c = json!({"org.example.kind": "index"});
    let index_c = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [child.descriptor()],
        "subject": subject,
        "annotations": ann_c,
    }))
    .unwrap();
    let resp = c
        .put_manifest(REPO, &sha256(&index_c), OCI_INDEX, &index_c)
        .await;
    assert_eq!(
        resp.status(),
        StatusCode::CREATED,
        "{}",
        describe(resp).await
    );
    assert_eq!(must_header(&resp, "OCI-Subject"), subject_img.digest);
    let digest_c = sha256(&index_c);

    let (headers, v) = referrers(&c, REPO, &subject_img.digest, None).await;
    assert!(
        headers.get("OCI-Filters-Applied").is_none(),
        "no filter was requested"
    );
    let mut expected = vec![digest_a.clone(), digest_b.clone(), digest_c.clone()];
    expected.sort();
    assert_eq!(digests(&v), expected);

    let a = find(&v, &digest_a);
    assert_eq!(a["mediaType"], json!(OCI_MANIFEST));
    assert_eq!(a["size"], json!(body_a.len()));
    assert_eq!(a["artifactType"], json!("application/vnd.example.sbom.v1"));
    assert_eq!(a["annotations"], ann_a);

    let b = find(&v, &digest_b);
    assert_eq!(b["mediaType"], json!(OCI_MANIFEST));
    assert_eq!(b["size"], json!(body_b.len()));
    assert_eq!(
        b["artifactType"],
        json!("application/vnd.example.sig.config.v1+json")
    );
    assert_eq!(b["annotations"], ann_b);

    let ci = find(&v, &digest_c);
    assert_eq!(ci["mediaType"], json!(OCI_INDEX));
    assert_eq!(ci["size"], json!(index_c.len()));
    assert!(
        ci.get("artifactType").is_none(),
        "index without artifactType: artifactType MUST be omitted: {ci}"
    );
    assert_eq!(ci["annotations"], ann_c);
}

/// An index that has an artifactType carries it into its descriptor.
#[tokio::test]
async fn referrers_index_with_artifact_type_carries_it() {
    let c = Ctx::new();
    let subject_img = c.push_image(REPO, "subject").await;
    let child = c.push_image(REPO, "child").await;
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "artifactType": "application/vnd.example.bundle",
        "manifests": [child.descriptor()],
        "subject": subject_img.descriptor(),
    }))
    .unwrap();
    let digest = c
        .put_manifest_ok(REPO, &sha256(&index), OCI_INDEX, &index)
        .await;
    let (_, v) = referrers(&c, REPO, &subject_img.digest, None).await;
    assert_eq!(
        find(&v, &digest)["artifactType"],
        json!("application/vnd.example.bundle")
    );
}

/// spec: "If filtering is requested and applied, the response MUST include OCI-Filters-Applied: artifactType".
#[tokio::test]
async fn referrers_filter_by_artifact_type() {
    let c = Ctx::new();
    let subject_img = c.push_image(REPO, "subject").await;
    let subject = subject_img.descriptor();
    let (_, sbom1) = c
        .push_artifact(
            REPO,
            None,
            Some("application/vnd.example.sbom.v1+json"),
            Some(subject.clone()),
            Some(json!({"n": "1"})),
        )
        .await;
    let (_, sbom2) = c
        .push_artifact(
            REPO,
            None,
            Some("application/vnd.example.sbom.v1+json"),
            Some(subject.clone()),
            Some(json!({"n": "2"})),
        )
        .await;
    let (_, _sig) = c
        .push_artifact(
            REPO,
            None,
            Some("application/vnd.example.sig"),
            Some(subject.clone()),
            None,
        )
        .await;
    let (_, cfg) = push_config_typed_referrer(
        &c,
        REPO,
        &subject,
        "application/vnd.example.cfgtype",
        json!({"n": "3"}),
    )
    .await;

    let (headers, v) = referrers(
        &c,
        REPO,
        &subject_img.digest,
        Some("application/vnd.example.sbom.v1+json"),
    )
    .await;
    assert_eq!(
        must_header_map(&headers, "OCI-Filters-Applied"),
        "artifactType"
    );
    let mut expected = vec![sbom1, sbom2];
    expected.sort();
    assert_eq!(digests(&v), expected);

    // The filter also matches the artifactType derived from the config media type.
    let (headers, v) = referrers(
        &c,
        REPO,
        &subject_img.digest,
        Some("application/vnd.example.cfgtype"),
    )
    .await;
    assert_eq!(
        must_header_map(&headers, "OCI-Filters-Applied"),
        "artifactType"
    );
    assert_eq!(digests(&v), vec![cfg]);
}

#[tokio::test]
async fn referrers_filter_without_match_is_empty_with_header() {
    let c = Ctx::new();
    let subject_img = c.push_image(REPO, "subject").await;
    c.push_artifact(
        REPO,
        None,
        Some("application/vnd.example.sig"),
        Some(subject_img.descriptor()),
        None,
    )
    .await;
    let (headers, v) = referrers(
        &c,
        REPO,
        &subject_img.digest,
        Some("application/vnd.example.none"),
    )
    .await;
    assert_eq!(
        must_header_map(&headers, "OCI-Filters-Applied"),
        "artifactType"
    );
    assert!(v["manifests"].as_array().unwrap().is_empty(), "{v}");
}

/// spec: "the registry MUST NOT return a 404 Not Found to a referrers API request";
/// "If a query results in no matching referrers, an empty manifest list MUST be returned."
#[tokio::test]
async fn referrers_of_unknown_digest_is_empty_200() {
    let c = Ctx::new();
    c.push_image(REPO, "v1").await;
    let (_, v) = referrers(&c, REPO, MISSING_DIGEST, None).await;
    assert!(v["manifests"].as_array().unwrap().is_empty(), "{v}");
}

/// Design: never 404, even for a repository that does not exist.
#[tokio::test]
async fn referrers_in_unknown_repo_is_empty_200() {
    let c = Ctx::new();
    let (_, v) = referrers(&c, "discovery/nothing/here", MISSING_DIGEST, None).await;
    assert!(v["manifests"].as_array().unwrap().is_empty(), "{v}");
}

/// Referrers of an existing manifest that has none → empty list.
#[tokio::test]
async fn referrers_of_manifest_without_referrers_is_empty() {
    let c = Ctx::new();
    let img = c.push_image(REPO, "v1").await;
    let (_, v) = referrers(&c, REPO, &img.digest, None).await;
    assert!(v["manifests"].as_array().unwrap().is_empty(), "{v}");
}

/// spec: "If the request is invalid, such as a <digest> with an invalid syntax, a 400 Bad Request MUST be returned."
#[tokio::test]
async fn referrers_with_invalid_digest_returns_400() {
    let c = Ctx::new();
    c.push_image(REPO, "v1").await;
    for bad in ["sha256:totallywrong", "latest", "sha256:ABCDEF"] {
        let resp = c.get(&format!("/v2/{REPO}/referrers/{bad}")).await;
        expect_error(resp, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    }
}

/// A referrer pushed before its subject is listed (spec: push in either order).
#[tokio::test]
async fn referrer_pushed_before_subject_is_listed() {
    let c = Ctx::new();
    let config = random_config();
    let layer = random_bytes(50);
    let subject_manifest = image_manifest(
        &descriptor(OCI_CONFIG, &config),
        &[descriptor(OCI_LAYER, &layer)],
        None,
    );
    let subject_digest = sha256(&subject_manifest);
    let subject = json!({"mediaType": OCI_MANIFEST, "digest": subject_digest, "size": subject_manifest.len()});
    let (_, referrer) = c
        .push_artifact(
            REPO,
            None,
            Some("application/vnd.example.early"),
            Some(subject),
            None,
        )
        .await;

    let (_, v) = referrers(&c, REPO, &subject_digest, None).await;
    assert_eq!(digests(&v), vec![referrer.clone()]);

    c.push_blob(REPO, &config).await;
    c.push_blob(REPO, &layer).await;
    c.put_manifest_ok(REPO, "late", OCI_MANIFEST, &subject_manifest)
        .await;
    let (_, v) = referrers(&c, REPO, &subject_digest, None).await;
    assert_eq!(digests(&v), vec![referrer]);
}

#[tokio::test]
async fn deleted_referrer_is_no_longer_listed() {
    let c = Ctx::new();
    let subject_img = c.push_image(REPO, "subject").await;
    let (_, keep) = c
        .push_artifact(
            REPO,
            None,
            Some("application/vnd.example.a"),
            Some(subject_img.descriptor()),
            None,
        )
        .await;
    let (_, gone) = c
        .push_artifact(
            REPO,
            None,
            Some("application/vnd.example.b"),
            Some(subject_img.descriptor()),
            None,
        )
        .await;
    assert_eq!(
        c.delete(&format!("/v2/{REPO}/manifests/{gone}"))
            .await
            .status(),
        StatusCode::ACCEPTED
    );
    let (_, v) = referrers(&c, REPO, &subject_img.digest, None).await;
    assert_eq!(digests(&v), vec![keep]);
}

/// Referrers are per repository: the same subject digest in another repo has its own list.
#[tokio::test]
async fn referrers_are_scoped_to_the_repository() {
    let c = Ctx::new();
    let subject_img = c.push_image("discovery/a", "subject").await;
    c.push_artifact(
        "discovery/a",
        None,
        Some("application/vnd.example.a"),
        Some(subject_img.descriptor()),
        None,
    )
    .await;
    c.push_image("discovery/b", "x").await;
    let (_, v) = referrers(&c, "discovery/b", &subject_img.digest, None).await;
    assert!(v["manifests"].as_array().unwrap().is_empty(), "{v}");
}

/// A tagged referrer is listed as well, and only once.
#[tokio::test]
async fn tagged_referrer_is_listed_once() {
    let c = Ctx::new();
    let subject_img = c.push_image(REPO, "subject").await;
    let (body, digest) = c
        .push_artifact(
            REPO,
            Some("sig"),
            Some("application/vnd.example.sig"),
            Some(subject_img.descriptor()),
            None,
        )
        .await;
    c.put_manifest_ok(REPO, "sig2", OCI_MANIFEST, &body).await;
    c.put_manifest_ok(REPO, &digest, OCI_MANIFEST, &body).await;
    let (_, v) = referrers(&c, REPO, &subject_img.digest, None).await;
    assert_eq!(digests(&v), vec![digest]);
}

fn must_header_map(headers: &reqwest::header::HeaderMap, name: &str) -> String {
    header(headers, name)
        .unwrap_or_else(|| panic!("missing header {name}: {headers:?}"))
        .to_string()
}
