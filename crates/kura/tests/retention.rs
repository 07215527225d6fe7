//! Retention policies, tag immutability and tag history, black-box.
//!
//! Retention (Harbor's semantics): one test per rule kind (`latest_pushed`, `latest_pulled`,
//! `pushed_within_days`, `pulled_within_days`, `always`, untagged rules), dry runs that list
//! exactly what a real run deletes and delete nothing, accessories (OCI referrers, cosign
//! `sha256-….sig` tags) and index children following their subject, and immutable artifacts
//! that retention keeps. Immutability: tags that can be created and re-pushed with the same
//! digest but never moved or deleted, cosign-style tags and referrers still attachable. Tag
//! history: every move recorded, restore (also of a deleted manifest, until GC purges it).

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::api::{
    EMPTY_BLOB, EMPTY_BLOB_DIGEST, OCI_EMPTY, OCI_INDEX, OCI_MANIFEST, descriptor, expect_error,
    image_index, random_bytes, sha256,
};
use common::auth::{Reg, assert_error, start_local};
use common::storage::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn setup(project: &str) -> (common::KuraServer, Reg) {
    let srv = start_local(&[]);
    let reg = Reg::new(&srv);
    reg.create_project(&admin(), project, false).await;
    (srv, reg)
}

/// Pushed-at times are milliseconds: keep pushes apart so "latest" is unambiguous.
async fn pause() {
    tokio::time::sleep(Duration::from_millis(20)).await;
}

/// Pushes blobs into `repo` concurrently (as clients push layers), skipping those the
/// repository already has.
async fn push_blobs(reg: &Reg, repo: &str, blobs: &[&[u8]]) {
    let admin = admin();
    let mut jobs = Vec::new();
    for b in blobs {
        if blob_status(reg, repo, &sha256(b)).await != StatusCode::OK {
            jobs.push(reg.push_blob(&admin, repo, b));
        }
    }
    futures_util::future::join_all(jobs).await;
}

/// Pushes a fresh image (config and one layer) under `reference`; returns (manifest bytes,
/// digest).
async fn push_image(reg: &Reg, repo: &str, reference: Option<&str>) -> (Vec<u8>, String) {
    let config = common::api::random_config();
    let layer = random_bytes(200);
    push_blobs(reg, repo, &[&config, &layer]).await;
    let body = manifest_of(&config, &[&layer]);
    let digest = sha256(&body);
    put_manifest_ok(reg, repo, reference.unwrap_or(&digest), OCI_MANIFEST, &body).await;
    pause().await;
    (body, digest)
}

/// Pushes a fresh image tagged `tag`; returns (manifest bytes, digest).
async fn push_tagged(reg: &Reg, repo: &str, tag: &str) -> (Vec<u8>, String) {
    push_image(reg, repo, Some(tag)).await
}

/// Pushes a fresh image by digest only (untagged); returns (manifest bytes, digest).
async fn push_untagged(reg: &Reg, repo: &str) -> (Vec<u8>, String) {
    push_image(reg, repo, None).await
}

fn desc(body: &[u8]) -> Value {
    json!({"mediaType": OCI_MANIFEST, "digest": sha256(body), "size": body.len()})
}

/// Pushes an OCI referrer (artifact manifest with `subject`) by digest.
async fn push_referrer(reg: &Reg, repo: &str, subject: &[u8], kind: &str) -> (Vec<u8>, String) {
    let payload = random_bytes(64);
    push_blobs(reg, repo, &[EMPTY_BLOB, &payload]).await;
    let body = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": format!("application/vnd.example.{kind}"),
        "config": {"mediaType": OCI_EMPTY, "digest": EMPTY_BLOB_DIGEST, "size": 2},
        "layers": [descriptor("application/vnd.example.payload", &payload)],
        "subject": desc(subject),
    }))
    .unwrap();
    let d = put_manifest_ok(reg, repo, &sha256(&body), OCI_MANIFEST, &body).await;
    (body, d)
}

/// The tag cosign derives from a digest: `sha256-<hex><suffix>`.
fn cosign_tag(digest: &str, suffix: &str) -> String {
    format!("{}{suffix}", digest.replacen(':', "-", 1))
}

/// Pushes a cosign-style signature: an image manifest (no subject) tagged
/// `sha256-<hex of subject>.sig`; returns its digest.
async fn push_cosign_signature(reg: &Reg, repo: &str, subject: &str, suffix: &str) -> String {
    let config = common::api::random_config();
    let sig = random_bytes(120);
    push_blobs(reg, repo, &[&config, &sig]).await;
    let body = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(common::api::OCI_CONFIG, &config),
        "layers": [descriptor("application/vnd.dev.cosign.simplesigning.v1+json", &sig)],
    }))
    .unwrap();
    put_manifest_ok(reg, repo, &cosign_tag(subject, suffix), OCI_MANIFEST, &body).await
}

fn set(items: &[&String]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// (evaluated, retained, deleted, failed) of a retention run.
fn counts(run: &Value) -> (u64, u64, u64, u64) {
    let r = &run["result"];
    let n = |k: &str| {
        r[k].as_u64()
            .unwrap_or_else(|| panic!("run result without {k}: {run}"))
    };
    (n("evaluated"), n("retained"), n("deleted"), n("failed"))
}

/// The deletion entry of `digest` in a run's result.
fn deletion<'a>(run: &'a Value, digest: &str) -> &'a Value {
    run["result"]["deletions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["digest"] == digest)
        .unwrap_or_else(|| panic!("{digest} is not among the deletions: {run}"))
}

fn strings(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// Pulls `repo:reference` (a GET, which records the pull time).
async fn pull(reg: &Reg, repo: &str, reference: &str) {
    let resp = reg
        .send(
            Method::GET,
            &format!("/v2/{repo}/manifests/{reference}"),
            &admin(),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK, "pull {repo}:{reference}");
}

/// Waits (bounded) until the artifacts API shows a pull time for each of `digests` (pull
/// times are flushed every few seconds).
async fn wait_for_pulls(reg: &Reg, project: &str, path: &str, digests: &[&String]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let arts = artifacts(reg, project, path).await;
        let pulled: BTreeSet<String> = arts
            .iter()
            .filter(|a| !a["last_pulled_at"].is_null())
            .map(|a| a["digest"].as_str().unwrap().to_string())
            .collect();
        if digests.iter().all(|d| pulled.contains(*d)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "pull times not recorded within 20 s: {arts:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

// ---- retention: rule kinds --------------------------------------------------------------------

/// `latest_pushed`: the newest N matches stay; tagged artifacts no rule matches go; untagged
/// ones are left alone without an untagged rule; repositories no rule covers are untouched.
/// The policy reads back, and the run is listed.
#[tokio::test]
async fn latest_pushed_keeps_the_newest_matches() {
    let (_srv, reg) = setup("rp").await;
    let (_, latest) = push_tagged(&reg, "rp/app", "latest").await;
    let (_, v1) = push_tagged(&reg, "rp/app", "v1").await;
    let (_, v2) = push_tagged(&reg, "rp/app", "v2").await;
    let (_, v3) = push_tagged(&reg, "rp/app", "v3").await;
    let (_, v4) = push_tagged(&reg, "rp/app", "v4").await;
    let (_, u) = push_untagged(&reg, "rp/app").await;
    let (_, x) = push_tagged(&reg, "rp/other", "x").await;

    let rules = json!([{"repositories": "app", "tags": "v*", "keep": {"latest_pushed": 2}}]);
    set_retention(&reg, "rp", rules.clone()).await;
    let got = reg
        .api_ok(
            Method::GET,
            "/api/v1/projects/rp/retention",
            &admin(),
            None,
            200,
        )
        .await;
    assert_eq!(
        got["rules"][0]["keep"],
        json!({"latest_pushed": 2}),
        "{got}"
    );
    assert_eq!(got["rules"][0]["untagged"], false, "{got}");
    assert_eq!(got["schedule"], Value::Null, "{got}");

    let run = run_retention(&reg, "rp", false).await;
    assert_eq!(deleted_digests(&run), set(&[&v1, &v2, &latest]), "{run}");
    assert_eq!(counts(&run), (6, 3, 3, 0), "{run}");
    assert_eq!(run["result"]["repositories"], 1, "{run}");
    assert_eq!(deletion(&run, &v1)["repository"], "rp/app", "{run}");
    assert_eq!(
        strings(&deletion(&run, &v1)["tags"]),
        set(&[&"v1".to_string()])
    );
    assert_eq!(
        artifact_digests(&reg, "rp", "app").await,
        set(&[&v3, &v4, &u])
    );
    assert_eq!(artifact_digests(&reg, "rp", "other").await, set(&[&x]));
    for t in ["v1", "v2", "latest"] {
        assert_eq!(
            manifest_status(&reg, "rp/app", t).await,
            StatusCode::NOT_FOUND,
            "tag {t}"
        );
    }

    // What retention deletes stays restorable (deleted-manifest retention): the tag's history
    // shows the removal and a restore brings the artifact back.
    let h = reg
        .api_ok(
            Method::GET,
            "/api/v1/projects/rp/repositories/app/tags/v1/history",
            &admin(),
            None,
            200,
        )
        .await;
    assert_eq!(h[0]["digest"], Value::Null, "{h}");
    assert_eq!(h[0]["previous_digest"], v1.as_str(), "{h}");
    reg.api_ok(
        Method::POST,
        "/api/v1/projects/rp/repositories/app/tags/v1/restore",
        &admin(),
        Some(json!({ "digest": v1 })),
        200,
    )
    .await;
    assert_eq!(manifest_status(&reg, "rp/app", "v1").await, StatusCode::OK);
    // The restored v1 is the oldest v* again: the next run deletes it again.
    let again = run_retention(&reg, "rp", false).await;
    assert_eq!(deleted_digests(&again), set(&[&v1]), "{again}");

    let runs = reg
        .api_ok(
            Method::GET,
            "/api/v1/projects/rp/retention/runs",
            &admin(),
            None,
            200,
        )
        .await;
    assert_eq!(runs[0]["id"], again["id"], "{runs}");
    assert_eq!(runs[1]["id"], run["id"], "{runs}");
    assert_eq!(runs[1]["status"], "succeeded", "{runs}");
    // A second run finds nothing more to delete.
    let again = run_retention(&reg, "rp", false).await;
    assert_eq!(counts(&again), (3, 3, 0, 0), "{again}");

    reg.api_ok(
        Method::DELETE,
        "/api/v1/projects/rp/retention",
        &admin(),
        None,
        204,
    )
    .await;
    let (status, body) = reg
        .api(
            Method::POST,
            "/api/v1/projects/rp/retention/runs",
            &admin(),
            Some(json!({"dry_run": false})),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "run without a policy: {body}"
    );
}

/// `latest_pulled`: the N most recently pulled stay; never-pulled ones come last.
#[tokio::test]
async fn latest_pulled_keeps_the_most_recently_pulled() {
    let (_srv, reg) = setup("lp").await;
    let (_, a) = push_tagged(&reg, "lp/app", "a").await;
    let (_, b) = push_tagged(&reg, "lp/app", "b").await;
    let (_, c) = push_tagged(&reg, "lp/app", "c").await;
    let (_, d) = push_tagged(&reg, "lp/app", "d").await;
    for t in ["a", "b", "d"] {
        pull(&reg, "lp/app", t).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    wait_for_pulls(&reg, "lp", "app", &[&a, &b, &d]).await;

    set_retention(
        &reg,
        "lp",
        json!([{"tags": "*", "keep": {"latest_pulled": 2}}]),
    )
    .await;
    let run = run_retention(&reg, "lp", false).await;
    assert_eq!(deleted_digests(&run), set(&[&a, &c]), "{run}");
    assert_eq!(counts(&run), (4, 2, 2, 0), "{run}");
    assert_eq!(artifact_digests(&reg, "lp", "app").await, set(&[&b, &d]));
}

/// `pushed_within_days`: a 1-day window keeps what was just pushed, a 0-day window keeps
/// nothing pushed before the run.
#[tokio::test]
async fn pushed_within_days_keeps_recent_pushes() {
    let (_srv, reg) = setup("pw").await;
    let (_, keep) = push_tagged(&reg, "pw/app", "keep-1").await;
    let (_, drop1) = push_tagged(&reg, "pw/app", "drop-1").await;
    let (_, drop2) = push_tagged(&reg, "pw/app", "drop-2").await;
    set_retention(
        &reg,
        "pw",
        json!([
            {"tags": "keep-*", "keep": {"pushed_within_days": 1}},
            {"tags": "drop-*", "keep": {"pushed_within_days": 0}},
        ]),
    )
    .await;
    let run = run_retention(&reg, "pw", false).await;
    assert_eq!(deleted_digests(&run), set(&[&drop1, &drop2]), "{run}");
    assert_eq!(counts(&run), (3, 1, 2, 0), "{run}");
    assert_eq!(artifact_digests(&reg, "pw", "app").await, set(&[&keep]));
}

/// `pulled_within_days`: pulled within the window stays; never pulled goes; a 0-day window
/// keeps nothing pulled before the run (shown by a dry run).
#[tokio::test]
async fn pulled_within_days_keeps_recent_pulls() {
    let (_srv, reg) = setup("pd").await;
    let (_, a) = push_tagged(&reg, "pd/app", "a").await;
    let (_, b) = push_tagged(&reg, "pd/app", "b").await;
    let (_, c) = push_tagged(&reg, "pd/app", "c").await;
    pull(&reg, "pd/app", "a").await;
    wait_for_pulls(&reg, "pd", "app", &[&a]).await;
    pause().await;

    set_retention(
        &reg,
        "pd",
        json!([{"tags": "*", "keep": {"pulled_within_days": 0}}]),
    )
    .await;
    let dry = run_retention(&reg, "pd", true).await;
    assert_eq!(deleted_digests(&dry), set(&[&a, &b, &c]), "{dry}");

    set_retention(
        &reg,
        "pd",
        json!([{"tags": "*", "keep": {"pulled_within_days": 1}}]),
    )
    .await;
    let run = run_retention(&reg, "pd", false).await;
    assert_eq!(deleted_digests(&run), set(&[&b, &c]), "{run}");
    assert_eq!(counts(&run), (3, 1, 2, 0), "{run}");
    assert_eq!(artifact_digests(&reg, "pd", "app").await, set(&[&a]));
}

/// `always`: every match stays, whatever other rules keep (the union is retained).
#[tokio::test]
async fn always_keeps_every_match() {
    let (_srv, reg) = setup("al").await;
    let (_, r1) = push_tagged(&reg, "al/app", "release-1").await;
    let (_, r2) = push_tagged(&reg, "al/app", "release-2").await;
    let (_, d1) = push_tagged(&reg, "al/app", "dev-1").await;
    let (_, d2) = push_tagged(&reg, "al/app", "dev-2").await;
    set_retention(
        &reg,
        "al",
        json!([
            {"tags": "release-*", "keep": "always"},
            {"tags": "*", "keep": {"latest_pushed": 1}},
        ]),
    )
    .await;
    let run = run_retention(&reg, "al", false).await;
    assert_eq!(deleted_digests(&run), set(&[&d1]), "{run}");
    assert_eq!(counts(&run), (4, 3, 1, 0), "{run}");
    assert_eq!(
        artifact_digests(&reg, "al", "app").await,
        set(&[&r1, &r2, &d2])
    );
}

/// Untagged artifacts are judged only by rules with `untagged: true`.
#[tokio::test]
async fn untagged_artifacts_are_judged_only_by_untagged_rules() {
    let (_srv, reg) = setup("ut").await;
    let (_, t1) = push_tagged(&reg, "ut/app", "t1").await;
    let (_, u1) = push_untagged(&reg, "ut/app").await;
    let (_, u2) = push_untagged(&reg, "ut/app").await;
    let (_, u3) = push_untagged(&reg, "ut/app").await;

    set_retention(&reg, "ut", json!([{"tags": "nothing-*", "keep": "always"}])).await;
    let run = run_retention(&reg, "ut", false).await;
    assert_eq!(
        deleted_digests(&run),
        set(&[&t1]),
        "only the tagged artifact no rule keeps goes: {run}"
    );

    set_retention(
        &reg,
        "ut",
        json!([{"tags": "nothing-*", "untagged": true, "keep": {"latest_pushed": 1}}]),
    )
    .await;
    let run = run_retention(&reg, "ut", false).await;
    assert_eq!(deleted_digests(&run), set(&[&u1, &u2]), "{run}");
    assert_eq!(counts(&run), (3, 1, 2, 0), "{run}");
    assert_eq!(artifact_digests(&reg, "ut", "app").await, set(&[&u3]));
}

/// A policy with a schedule runs by itself (trigger `schedule`); an invalid schedule is
/// refused.
#[tokio::test]
async fn a_scheduled_policy_runs_by_itself() {
    let (_srv, reg) = setup("sc").await;
    push_tagged(&reg, "sc/app", "v1").await;
    let (_, v2) = push_tagged(&reg, "sc/app", "v2").await;
    let rules = json!([{"tags": "v*", "keep": {"latest_pushed": 1}}]);
    let (status, body) = reg
        .api(
            Method::PUT,
            "/api/v1/projects/sc/retention",
            &admin(),
            Some(json!({"rules": rules, "schedule": "not a schedule"})),
        )
        .await;
    assert_error(status, &body, 400, "INVALID", "an invalid schedule");
    reg.api_ok(
        Method::PUT,
        "/api/v1/projects/sc/retention",
        &admin(),
        Some(json!({"rules": rules, "schedule": "* * * * * *"})),
        200,
    )
    .await;
    let got = reg
        .api_ok(
            Method::GET,
            "/api/v1/projects/sc/retention",
            &admin(),
            None,
            200,
        )
        .await;
    assert_eq!(got["schedule"], "* * * * * *", "{got}");

    let deadline = Instant::now() + Duration::from_secs(15);
    let run = loop {
        let runs = reg
            .api_ok(
                Method::GET,
                "/api/v1/projects/sc/retention/runs",
                &admin(),
                None,
                200,
            )
            .await;
        if let Some(r) = runs
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["trigger"] == "schedule" && r["status"] == "succeeded")
        {
            break r.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no scheduled run within 15 s: {runs}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(run["dry_run"], false, "{run}");
    assert_eq!(
        artifact_digests(&reg, "sc", "app").await,
        set(&[&v2]),
        "{run}"
    );
}

// ---- retention: dry runs, accessories, index children, immutability ----------------------------

/// A dry run deletes nothing and lists exactly what the real run that follows deletes: the
/// same artifacts, tags and accessories (an OCI referrer, a referrer of that referrer, a
/// cosign-style signature), and the same counts; the real run deletes exactly those.
#[tokio::test]
async fn dry_run_lists_exactly_what_a_real_run_deletes() {
    let (_srv, reg) = setup("dr").await;
    let repo = "dr/app";
    let (v1_body, v1) = push_tagged(&reg, repo, "v1").await;
    let (v1_ref_body, v1_ref) = push_referrer(&reg, repo, &v1_body, "sbom").await;
    let (_, v1_nested) = push_referrer(&reg, repo, &v1_ref_body, "signature").await;
    let v1_sig = push_cosign_signature(&reg, repo, &v1, ".sig").await;
    let (_, v2) = push_tagged(&reg, repo, "v2").await;
    let (_, other) = push_tagged(&reg, repo, "other").await;
    let (_, v3) = push_tagged(&reg, repo, "v3").await;
    let (_, u) = push_untagged(&reg, repo).await;
    set_retention(
        &reg,
        "dr",
        json!([{"tags": "v*", "keep": {"latest_pushed": 1}}]),
    )
    .await;

    let before = artifact_digests(&reg, "dr", "app").await;
    let dry = run_retention(&reg, "dr", true).await;
    assert_eq!(
        artifact_digests(&reg, "dr", "app").await,
        before,
        "a dry run deleted something: {dry}"
    );
    assert_eq!(deleted_digests(&dry), set(&[&v1, &v2, &other]), "{dry}");
    let runs = reg
        .api_ok(
            Method::GET,
            "/api/v1/projects/dr/retention/runs",
            &admin(),
            None,
            200,
        )
        .await;
    assert_eq!(runs[0]["dry_run"], true, "{runs}");

    let real = run_retention(&reg, "dr", false).await;
    assert_eq!(counts(&real), counts(&dry), "dry {dry}\nreal {real}");
    assert_eq!(
        deleted_digests(&real),
        deleted_digests(&dry),
        "dry {dry}\nreal {real}"
    );
    for d in deleted_digests(&real) {
        let (a, b) = (deletion(&dry, &d), deletion(&real, &d));
        assert_eq!(strings(&a["tags"]), strings(&b["tags"]), "tags of {d}");
        assert!(b["error"].is_null(), "{real}");
        assert_eq!(
            strings(&a["accessories"]),
            strings(&b["accessories"]),
            "accessories of {d}: the dry run listed {}, the real run deleted {}",
            a["accessories"],
            b["accessories"]
        );
    }
    assert_eq!(
        strings(&deletion(&real, &v1)["accessories"]),
        set(&[&v1_ref, &v1_nested, &v1_sig]),
        "{real}"
    );
    // The real run deleted exactly what it listed.
    assert_eq!(
        artifact_digests(&reg, "dr", "app").await,
        set(&[&v3, &u]),
        "{real}"
    );
}

/// Accessories are not judged alone: an OCI referrer (and a referrer of it) and a cosign
/// signature are deleted with a deleted subject and kept with a retained one.
#[tokio::test]
async fn signatures_follow_their_subject() {
    let (_srv, reg) = setup("sg").await;
    let repo = "sg/app";
    let (old_body, old) = push_tagged(&reg, repo, "v1").await;
    let (old_ref_body, old_ref) = push_referrer(&reg, repo, &old_body, "signature").await;
    let (_, old_nested) = push_referrer(&reg, repo, &old_ref_body, "attestation").await;
    let old_sig = push_cosign_signature(&reg, repo, &old, ".sig").await;
    pause().await;
    let (new_body, new) = push_tagged(&reg, repo, "v2").await;
    let (_, new_ref) = push_referrer(&reg, repo, &new_body, "signature").await;
    let new_sig = push_cosign_signature(&reg, repo, &new, ".sig").await;

    set_retention(
        &reg,
        "sg",
        json!([{"tags": "v*", "keep": {"latest_pushed": 1}}]),
    )
    .await;
    let run = run_retention(&reg, "sg", false).await;
    assert_eq!(deleted_digests(&run), set(&[&old]), "{run}");
    assert_eq!(
        counts(&run),
        (2, 1, 1, 0),
        "accessories must not be judged on their own: {run}"
    );
    assert_eq!(
        strings(&deletion(&run, &old)["accessories"]),
        set(&[&old_ref, &old_nested, &old_sig]),
        "{run}"
    );
    assert_eq!(
        artifact_digests(&reg, "sg", "app").await,
        set(&[&new, &new_ref, &new_sig])
    );
    assert_eq!(
        manifest_status(&reg, repo, &cosign_tag(&old, ".sig")).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        manifest_status(&reg, repo, &cosign_tag(&new, ".sig")).await,
        StatusCode::OK
    );
    let referrers: Value = reg
        .send(
            Method::GET,
            &format!("/v2/{repo}/referrers/{new}"),
            &admin(),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        referrers["manifests"][0]["digest"],
        new_ref.as_str(),
        "{referrers}"
    );
}

/// Index children are not judged alone and go with their index.
#[tokio::test]
async fn index_children_follow_their_index() {
    let (_srv, reg) = setup("ix").await;
    let repo = "ix/app";
    let push_index = |tag: &'static str| {
        let reg = reg.clone();
        async move {
            let (c1_body, c1) = push_untagged(&reg, repo).await;
            let (c2_body, c2) = push_untagged(&reg, repo).await;
            let body = image_index(&[desc(&c1_body), desc(&c2_body)]);
            let d = put_manifest_ok(&reg, repo, tag, OCI_INDEX, &body).await;
            pause().await;
            (d, c1, c2)
        }
    };
    let (old, o1, o2) = push_index("v1").await;
    let (new, n1, n2) = push_index("v2").await;
    set_retention(
        &reg,
        "ix",
        json!([{"tags": "v*", "keep": {"latest_pushed": 1}}]),
    )
    .await;
    let run = run_retention(&reg, "ix", false).await;
    assert_eq!(deleted_digests(&run), set(&[&old]), "{run}");
    assert_eq!(
        counts(&run),
        (2, 1, 1, 0),
        "children are not judged alone: {run}"
    );
    let left = artifact_digests(&reg, "ix", "app").await;
    assert!(
        left.contains(&n1) && left.contains(&n2) && left.contains(&new),
        "the retained index lost something: {left:?}"
    );
    assert_eq!(
        left,
        set(&[&new, &n1, &n2]),
        "the children of the deleted index ({o1}, {o2}) must go with it: {run}"
    );
}

/// Artifacts with an immutable tag are always kept by retention (and counted retained), even
/// when no rule matches them.
#[tokio::test]
async fn retention_never_deletes_immutable_artifacts() {
    let (_srv, reg) = setup("ri").await;
    for tags in ["v1", "frozen"] {
        reg.api_ok(
            Method::POST,
            "/api/v1/projects/ri/immutability-rules",
            &admin(),
            Some(json!({ "tags": tags })),
            201,
        )
        .await;
    }
    let (v1_body, v1) = push_tagged(&reg, "ri/app", "v1").await;
    let (_, v1_ref) = push_referrer(&reg, "ri/app", &v1_body, "signature").await;
    let (_, frozen) = push_tagged(&reg, "ri/app", "frozen").await;
    let (_, v2) = push_tagged(&reg, "ri/app", "v2").await;
    let (_, v3) = push_tagged(&reg, "ri/app", "v3").await;
    set_retention(
        &reg,
        "ri",
        json!([{"tags": "v*", "keep": {"latest_pushed": 1}}]),
    )
    .await;

    let dry = run_retention(&reg, "ri", true).await;
    assert_eq!(deleted_digests(&dry), set(&[&v2]), "{dry}");
    let run = run_retention(&reg, "ri", false).await;
    assert_eq!(deleted_digests(&run), set(&[&v2]), "{run}");
    assert_eq!(counts(&run), (4, 3, 1, 0), "{run}");
    assert_eq!(
        artifact_digests(&reg, "ri", "app").await,
        set(&[&v1, &v1_ref, &frozen, &v3])
    );
}

/// What retention deletes keeps counting against the quota while it is restorable, and stops
/// counting once GC purges it: the usage is then exactly the retained images' blobs.
#[tokio::test]
async fn retention_then_gc_frees_the_quota() {
    let (_srv, reg) = setup("fq").await;
    let mut images = Vec::new();
    for t in ["v1", "v2", "v3"] {
        images.push(reg.push_image(&admin(), "fq/app", t).await);
        pause().await;
    }
    // Each image: its config plus a 300-byte layer (Reg::push_image).
    let size = |i: usize| images[i].config.len() as u64 + 300;
    let all = size(0) + size(1) + size(2);
    assert_eq!(usage(&reg, "fq").await, all);
    set_retention(
        &reg,
        "fq",
        json!([{"tags": "v*", "keep": {"latest_pushed": 1}}]),
    )
    .await;
    let run = run_retention(&reg, "fq", false).await;
    assert_eq!(counts(&run), (3, 1, 2, 0), "{run}");
    assert_eq!(
        usage(&reg, "fq").await,
        all,
        "deleted manifests keep their blobs while restorable"
    );
    gc(&reg).await;
    assert_eq!(
        usage(&reg, "fq").await,
        size(2),
        "after GC only v3's blobs count"
    );
    assert_eq!(
        blob_status(&reg, "fq/app", &images[0].layer_digest).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        blob_status(&reg, "fq/app", &images[2].layer_digest).await,
        StatusCode::OK
    );
}

// ---- immutability -----------------------------------------------------------------------------

async fn assert_immutable(resp: reqwest::Response, what: &str) {
    let e = expect_error(resp, StatusCode::FORBIDDEN, "DENIED").await;
    assert!(
        e.message.contains("immutable"),
        "{what}: the refusal does not say the tag is immutable: {e:?}"
    );
}

/// A tag an immutability rule matches can be created and re-pushed with the same digest, but
/// not moved, deleted, or taken away by deleting its manifest, its artifact or its
/// repository, nor restored elsewhere; other tags and repositories the rule does not match
/// are free; removing the rule frees the tag.
#[tokio::test]
async fn immutable_tags_can_be_pushed_again_but_not_moved_or_deleted() {
    let (_srv, reg) = setup("im").await;
    let rule = reg
        .api_ok(
            Method::POST,
            "/api/v1/projects/im/immutability-rules",
            &admin(),
            Some(json!({"repositories": "app*", "tags": "v*"})),
            201,
        )
        .await;
    let id = rule["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("rule id: {rule}"));
    let rules = reg
        .api_ok(
            Method::GET,
            "/api/v1/projects/im/immutability-rules",
            &admin(),
            None,
            200,
        )
        .await;
    assert_eq!(rules[0]["id"], id, "{rules}");
    assert_eq!(rules[0]["repositories"], "app*", "{rules}");
    assert_eq!(rules[0]["tags"], "v*", "{rules}");

    let repo = "im/app";
    let (v1_body, v1) = push_tagged(&reg, repo, "v1").await;
    // The same digest again is fine (clients re-push whole images).
    put_manifest_ok(&reg, repo, "v1", OCI_MANIFEST, &v1_body).await;
    // A second, mutable tag on the same manifest.
    put_manifest_ok(&reg, repo, "latest", OCI_MANIFEST, &v1_body).await;

    let (other_body, other) = push_untagged(&reg, repo).await;
    assert_immutable(
        put_manifest(&reg, repo, "v1", OCI_MANIFEST, &other_body).await,
        "moving v1",
    )
    .await;
    assert_immutable(
        delete(&reg, &format!("/v2/{repo}/manifests/v1")).await,
        "deleting tag v1",
    )
    .await;
    assert_immutable(
        delete(&reg, &format!("/v2/{repo}/manifests/{v1}")).await,
        "deleting v1's manifest",
    )
    .await;
    let (status, body) = reg
        .api(
            Method::DELETE,
            &format!("/api/v1/projects/im/repositories/app/artifacts/{v1}"),
            &admin(),
            None,
        )
        .await;
    assert_error(status, &body, 403, "DENIED", "deleting v1's artifact");
    let (status, body) = reg
        .api(
            Method::DELETE,
            "/api/v1/projects/im/repositories/app",
            &admin(),
            None,
        )
        .await;
    assert_error(status, &body, 403, "DENIED", "deleting the repository");
    let (status, body) = reg
        .api(
            Method::POST,
            "/api/v1/projects/im/repositories/app/tags/v1/restore",
            &admin(),
            Some(json!({ "digest": other })),
        )
        .await;
    assert_error(
        status,
        &body,
        403,
        "DENIED",
        "restoring v1 to another digest",
    );
    let (status, body) = reg
        .api(
            Method::DELETE,
            &format!("/api/v1/projects/im/repositories/app/artifacts/{v1}/tags/v1"),
            &admin(),
            None,
        )
        .await;
    assert_error(
        status,
        &body,
        403,
        "DENIED",
        "deleting tag v1 of the artifact",
    );
    let resp = reg
        .send(Method::HEAD, &format!("/v2/{repo}/manifests/v1"), &admin())
        .await;
    assert_eq!(resp.headers()["docker-content-digest"], v1.as_str());

    // Tags and repositories the rule does not match stay mutable.
    put_manifest_ok(&reg, repo, "latest", OCI_MANIFEST, &other_body).await;
    assert_eq!(
        delete(&reg, &format!("/v2/{repo}/manifests/latest"))
            .await
            .status(),
        StatusCode::ACCEPTED
    );
    push_tagged(&reg, "im/lib", "v1").await;
    let (lib_other, _) = push_untagged(&reg, "im/lib").await;
    put_manifest_ok(&reg, "im/lib", "v1", OCI_MANIFEST, &lib_other).await;
    assert_eq!(
        delete(&reg, "/v2/im/lib/manifests/v1").await.status(),
        StatusCode::ACCEPTED
    );

    // Without the rule the tag moves and goes like any other.
    reg.api_ok(
        Method::DELETE,
        &format!("/api/v1/projects/im/immutability-rules/{id}"),
        &admin(),
        None,
        204,
    )
    .await;
    put_manifest_ok(&reg, repo, "v1", OCI_MANIFEST, &other_body).await;
    assert_eq!(
        delete(&reg, &format!("/v2/{repo}/manifests/v1"))
            .await
            .status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(
        delete(&reg, &format!("/v2/{repo}/manifests/{v1}"))
            .await
            .status(),
        StatusCode::ACCEPTED
    );
}

/// With every tag immutable, signatures still attach: cosign-style `sha256-<hex>.sig` /
/// `.att` / bare `sha256-<hex>` tags can be re-pushed with new content (cosign appends
/// signatures that way) and deleted, and referrers with a subject can be pushed. A tag that
/// merely starts with `sha256-` is not exempt.
#[tokio::test]
async fn signatures_and_referrers_attach_to_immutable_artifacts() {
    let (_srv, reg) = setup("cs").await;
    reg.api_ok(
        Method::POST,
        "/api/v1/projects/cs/immutability-rules",
        &admin(),
        Some(json!({"tags": "*"})),
        201,
    )
    .await;
    let repo = "cs/app";
    let (v1_body, v1) = push_tagged(&reg, repo, "v1").await;
    for suffix in [".sig", ".att", ""] {
        let first = push_cosign_signature(&reg, repo, &v1, suffix).await;
        let second = push_cosign_signature(&reg, repo, &v1, suffix).await;
        assert_ne!(first, second);
        let resp = reg
            .send(
                Method::HEAD,
                &format!("/v2/{repo}/manifests/{}", cosign_tag(&v1, suffix)),
                &admin(),
            )
            .await;
        assert_eq!(
            resp.headers()["docker-content-digest"],
            second.as_str(),
            "re-pushed signature tag {suffix:?}"
        );
    }
    assert_eq!(
        delete(
            &reg,
            &format!("/v2/{repo}/manifests/{}", cosign_tag(&v1, ".att"))
        )
        .await
        .status(),
        StatusCode::ACCEPTED,
        "a signature tag is not immutable"
    );
    let (_, referrer) = push_referrer(&reg, repo, &v1_body, "signature").await;
    let referrers: Value = reg
        .send(Method::GET, &format!("/v2/{repo}/referrers/{v1}"), &admin())
        .await
        .json()
        .await
        .unwrap();
    assert!(
        referrers["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["digest"] == referrer.as_str()),
        "{referrers}"
    );
    // Not a digest-derived tag: immutable like any other.
    let (a_body, _) = push_untagged(&reg, repo).await;
    let (b_body, _) = push_untagged(&reg, repo).await;
    put_manifest_ok(&reg, repo, "sha256-abc.sig", OCI_MANIFEST, &a_body).await;
    assert_immutable(
        put_manifest(&reg, repo, "sha256-abc.sig", OCI_MANIFEST, &b_body).await,
        "moving sha256-abc.sig",
    )
    .await;
    let resp = reg
        .send(Method::HEAD, &format!("/v2/{repo}/manifests/v1"), &admin())
        .await;
    assert_eq!(resp.headers()["docker-content-digest"], v1.as_str());
}

// ---- tag history and restore --------------------------------------------------------------

async fn history(reg: &Reg, tag: &str) -> Vec<(Option<String>, Option<String>)> {
    let v = reg
        .api_ok(
            Method::GET,
            &format!("/api/v1/projects/th/repositories/app/tags/{tag}/history"),
            &admin(),
            None,
            200,
        )
        .await;
    v.as_array()
        .unwrap_or_else(|| panic!("history is not a list: {v}"))
        .iter()
        .map(|e| {
            assert!(e["changed_at"].is_string(), "{v}");
            (
                e["digest"].as_str().map(str::to_string),
                e["previous_digest"].as_str().map(str::to_string),
            )
        })
        .collect()
}

async fn restore(reg: &Reg, tag: &str, digest: &str) -> (StatusCode, Value) {
    reg.api(
        Method::POST,
        &format!("/api/v1/projects/th/repositories/app/tags/{tag}/restore"),
        &admin(),
        Some(json!({ "digest": digest })),
    )
    .await
}

async fn tag_digest(reg: &Reg, tag: &str) -> Option<String> {
    let resp = reg
        .send(
            Method::HEAD,
            &format!("/v2/th/app/manifests/{tag}"),
            &admin(),
        )
        .await;
    (resp.status() == StatusCode::OK).then(|| {
        resp.headers()["docker-content-digest"]
            .to_str()
            .unwrap()
            .to_string()
    })
}

/// Every tag move is recorded (newest first); restore points a tag back, also at a deleted
/// manifest while the deleted-manifest retention keeps it (GC with the default retention
/// leaves it and what it references), and fails with 404 once GC has purged it.
#[tokio::test]
async fn tag_history_records_moves_and_restore_points_the_tag_back() {
    let (_srv, reg) = setup("th").await;
    let repo = "th/app";
    let (d1_body, d1) = push_tagged(&reg, repo, "t").await;
    let (d2_body, d2) = push_untagged(&reg, repo).await;
    put_manifest_ok(&reg, repo, "t", OCI_MANIFEST, &d2_body).await;
    let s = |d: &String| Some(d.clone());
    assert_eq!(
        history(&reg, "t").await,
        vec![(s(&d2), s(&d1)), (s(&d1), None)]
    );
    // Pushing the tag again with the digest it has is no move.
    put_manifest_ok(&reg, repo, "t", OCI_MANIFEST, &d2_body).await;
    assert_eq!(history(&reg, "t").await.len(), 2);

    let (status, body) = restore(&reg, "t", &d1).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["tag"], "t", "{body}");
    assert_eq!(body["digest"], d1.as_str(), "{body}");
    assert_eq!(body["previous_digest"], d2.as_str(), "{body}");
    assert_eq!(tag_digest(&reg, "t").await, s(&d1));
    assert_eq!(history(&reg, "t").await[0], (s(&d1), s(&d2)));

    // Deleting the manifest removes the tag (recorded); restore brings both back.
    assert_eq!(
        delete(&reg, &format!("/v2/{repo}/manifests/{d1}"))
            .await
            .status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(tag_digest(&reg, "t").await, None);
    let h = history(&reg, "t").await;
    assert_eq!(h.len(), 4, "{h:?}");
    assert_eq!(h[0], (None, s(&d1)));
    let (status, body) = restore(&reg, "t", &d1).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["previous_digest"], Value::Null, "{body}");
    let resp = reg
        .send(Method::GET, &format!("/v2/{repo}/manifests/t"), &admin())
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.bytes().await.unwrap().to_vec(),
        d1_body,
        "restored bytes"
    );

    // A digest the repository never had.
    let (status, body) = restore(&reg, "t", &sha256(b"never pushed")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    // GC with the default retention keeps a deleted manifest and what it references.
    assert_eq!(
        delete(&reg, &format!("/v2/{repo}/manifests/{d2}"))
            .await
            .status(),
        StatusCode::ACCEPTED
    );
    gc_with(&reg, json!({ "deleted_manifest_retention_seconds": null })).await;
    let (status, body) = restore(&reg, "t2", &d2).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "restore after GC within retention: {body}"
    );
    assert_eq!(tag_digest(&reg, "t2").await, s(&d2));
    let layer = serde_json::from_slice::<Value>(&d2_body).unwrap()["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(blob_status(&reg, repo, &layer).await, StatusCode::OK);

    // Once GC has purged it, restore answers 404.
    assert_eq!(
        delete(&reg, &format!("/v2/{repo}/manifests/{d1}"))
            .await
            .status(),
        StatusCode::ACCEPTED
    );
    gc(&reg).await;
    let (status, body) = restore(&reg, "t", &d1).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "restore after purge: {body}");
    assert_eq!(tag_digest(&reg, "t").await, None);
}
