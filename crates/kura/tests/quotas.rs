//! Project storage quotas, black-box: what counts (distinct blobs a project's repositories
//! link: shared layers and re-linked blobs once), refusals over the limit for every upload
//! method (before the body is taken when its size is known, at the commit otherwise) leaving
//! nothing behind, re-pushing what a full project already counts, mounts across projects,
//! concurrent pushes at the limit, who may set a quota, and a seeded random sequence of
//! pushes, mounts, deletes and GC runs after which the maintained usage equals both the
//! server's recomputation and the test's own model.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use common::api::{OCI_MANIFEST, expect_error, sha256};
use common::auth::{Cred, Reg, assert_error, start_local};
use common::storage::*;
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};

const KIB: usize = 1024;

async fn setup(projects: &[&str]) -> (common::KuraServer, Reg) {
    let srv = start_local(&[]);
    let reg = Reg::new(&srv);
    for p in projects {
        reg.create_project(&admin(), p, false).await;
    }
    (srv, reg)
}

fn bytes(n: usize) -> Vec<u8> {
    common::api::random_bytes(n)
}

/// Asserts a quota refusal: 403, OCI code DENIED, a message about the quota.
async fn assert_quota_refusal(resp: Response, what: &str) {
    let e = expect_error(resp, StatusCode::FORBIDDEN, "DENIED").await;
    assert!(
        e.message.to_lowercase().contains("quota"),
        "{what}: the refusal does not mention the quota: {e:?}"
    );
    if let Some(d) = &e.detail {
        assert_eq!(d["reason"], "quota exceeded", "{what}: {e:?}");
    }
}

/// After a refused push: the blob is not visible, the usage is `base`, and (filesystem
/// backend) the committed blob files are those listed before.
async fn nothing_left(
    srv: &common::KuraServer,
    reg: &Reg,
    repo: &str,
    base: u64,
    files: &Option<BTreeSet<std::path::PathBuf>>,
    what: &str,
    digest: String,
) {
    assert_eq!(
        blob_status(reg, repo, &digest).await,
        StatusCode::NOT_FOUND,
        "{what}: the refused blob is visible"
    );
    let project = repo.split('/').next().unwrap();
    assert_eq!(
        usage(reg, project).await,
        base,
        "{what}: the refused push changed the usage"
    );
    assert_eq!(
        &blob_files(srv),
        files,
        "{what}: a refused push left a file under the blob directory"
    );
}

/// Pushes `config` and `layers` into `repo` (POST + PUT each) and a manifest tagged `tag`.
async fn push_image_of(
    reg: &Reg,
    repo: &str,
    tag: &str,
    config: &[u8],
    layers: &[&[u8]],
) -> String {
    reg.push_blob(&admin(), repo, config).await;
    for l in layers {
        reg.push_blob(&admin(), repo, l).await;
    }
    put_manifest_ok(reg, repo, tag, OCI_MANIFEST, &manifest_of(config, layers)).await
}

/// A layer pushed into two repositories of one project (by full uploads, not mounts) counts
/// once; the storage reports agree; usage drops when links go (repository delete, unlink).
#[tokio::test]
async fn shared_layers_count_once_per_project() {
    let (_srv, reg) = setup(&["shared", "other"]).await;
    let (c1, c2) = (bytes(300), bytes(310));
    let (l1, l2, l3) = (bytes(5 * KIB), bytes(2 * KIB), bytes(3 * KIB));
    assert_eq!(usage(&reg, "shared").await, 0);

    push_image_of(&reg, "shared/one", "v1", &c1, &[&l1, &l2]).await;
    push_image_of(&reg, "shared/team/two", "v1", &c2, &[&l1, &l3]).await;
    // The same layer in another project counts there, not here.
    push_image_of(&reg, "other/app", "v1", &bytes(100), &[&l1]).await;

    let distinct = [&c1, &c2, &l1, &l2, &l3]
        .iter()
        .map(|b| b.len() as u64)
        .sum::<u64>();
    let q = quota(&reg, "shared").await;
    assert_eq!(q["usage_bytes"], distinct, "{q}");
    assert_eq!(q["blobs"], 5, "{q}");
    assert_eq!(q["storage_limit"], Value::Null, "{q}");
    assert_eq!(
        usage(&reg, "other").await,
        100 + l1.len() as u64,
        "the other project counts its own copy of the shared layer"
    );

    // The project's storage report: usage once, logical bytes per repository.
    let s = reg
        .api_ok(
            Method::GET,
            "/api/v1/projects/shared/storage",
            &admin(),
            None,
            200,
        )
        .await;
    assert_eq!(s["usage_bytes"], distinct, "{s}");
    assert_eq!(s["blobs"], 5, "{s}");
    let one = (c1.len() + l1.len() + l2.len()) as u64;
    let two = (c2.len() + l1.len() + l3.len()) as u64;
    assert_eq!(s["logical_bytes"], one + two, "{s}");
    let repos: BTreeMap<String, u64> = s["repositories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["repository"].as_str().unwrap().to_string(),
                r["bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        repos,
        BTreeMap::from([
            ("shared/one".to_string(), one),
            ("shared/team/two".to_string(), two)
        ]),
        "{s}"
    );
    // The system report lists the project with the same stored bytes.
    let sys = reg
        .api_ok(Method::GET, "/api/v1/system/storage", &admin(), None, 200)
        .await;
    let entry = sys["projects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["project"] == "shared")
        .unwrap_or_else(|| panic!("project missing from the system report: {sys}"))
        .clone();
    assert_eq!(entry["stored_bytes"], distinct, "{sys}");
    assert_eq!(entry["logical_bytes"], one + two, "{sys}");

    // Deleting the first repository leaves the shared layer counted (two still links it).
    reg.api_ok(
        Method::DELETE,
        &format!("/api/v1/projects/shared/repositories/{}", enc("one")),
        &admin(),
        None,
        204,
    )
    .await;
    assert_eq!(usage(&reg, "shared").await, two);
    // Unlinking it from the last repository that links it uncounts it.
    let resp = delete(&reg, &format!("/v2/shared/team/two/blobs/{}", sha256(&l1))).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert_eq!(usage(&reg, "shared").await, two - l1.len() as u64);
    assert_eq!(quota(&reg, "shared").await["blobs"], 2);
    assert_eq!(
        usage(&reg, "other").await,
        100 + l1.len() as u64,
        "deletes in one project leave the other's usage alone"
    );
}

/// Every upload method is refused over the limit with 403 DENIED naming the quota, and a
/// refused push leaves nothing: no blob, no usage, no committed file, no orphaned object.
/// Data of known size is refused before it is taken (a refused PATCH leaves the session where
/// it was); a streamed body is refused at the commit. The limit itself can be reached.
#[tokio::test]
async fn pushes_over_the_quota_are_refused_and_leave_nothing() {
    let (srv, reg) = setup(&["q"]).await;
    let repo = "q/app";
    push_image_of(&reg, repo, "v1", &bytes(200), &[&bytes(4 * KIB)]).await;
    let base = usage(&reg, "q").await;
    let q = set_quota(&reg, "q", Some(base + 1000)).await;
    assert_eq!(q["storage_limit"], base + 1000, "{q}");
    assert_eq!(q["usage_bytes"], base, "{q}");
    let files = blob_files(&srv);

    // Monolithic POST ?digest= with Content-Length.
    let big = bytes(1001);
    assert_quota_refusal(push_monolithic(&reg, repo, &big).await, "monolithic").await;
    nothing_left(&srv, &reg, repo, base, &files, "monolithic", sha256(&big)).await;

    // Monolithic POST ?digest= with a streamed body: refused at the commit.
    let parts: Vec<Result<Vec<u8>, std::io::Error>> =
        big.chunks(300).map(|p| Ok(p.to_vec())).collect();
    let resp = reg
        .req(
            Method::POST,
            &format!("/v2/{repo}/blobs/uploads/?digest={}", sha256(&big)),
            &admin(),
        )
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            parts,
        )))
        .send()
        .await
        .unwrap();
    assert_quota_refusal(resp, "monolithic, streamed").await;
    nothing_left(
        &srv,
        &reg,
        repo,
        base,
        &files,
        "monolithic, streamed",
        sha256(&big),
    )
    .await;

    // POST, then PUT ?digest= carrying the whole body.
    assert_quota_refusal(
        push_post_put(&reg, repo, &big).await,
        "POST + PUT with body",
    )
    .await;
    nothing_left(
        &srv,
        &reg,
        repo,
        base,
        &files,
        "POST + PUT with body",
        sha256(&big),
    )
    .await;

    // Chunked with Content-Length: the first chunk fits, the second would not, and is refused
    // before it is taken: the session still stands where the first chunk left it.
    let loc = reg.start_upload(&admin(), repo).await;
    let resp = patch_chunk(&reg, &loc, 0, &big[..500]).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let loc = resp.headers()["location"].to_str().unwrap().to_string();
    let resp = patch_chunk(&reg, &loc, 500, &big[500..]).await;
    assert_quota_refusal(resp, "second PATCH with Content-Length").await;
    let status = reg.send(Method::GET, &loc, &admin()).await;
    assert_eq!(status.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        status.headers()["range"].to_str().unwrap(),
        "0-499",
        "the refused chunk was (partly) accepted"
    );
    // Closing the session with the rest in the PUT body is refused the same way.
    let resp = reg
        .req(
            Method::PUT,
            &common::api::with_query(&loc, "digest", &sha256(&big)),
            &admin(),
        )
        .header("Content-Range", "500-1000")
        .body(big[500..].to_vec())
        .send()
        .await
        .unwrap();
    assert_quota_refusal(resp, "closing PUT with the last chunk").await;
    nothing_left(
        &srv,
        &reg,
        repo,
        base,
        &files,
        "chunked with Content-Length",
        sha256(&big),
    )
    .await;
    let resp = reg.send(Method::DELETE, &loc, &admin()).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT, "cancel the session");

    // Streamed (no Content-Length): the size is known only at the commit, which is refused.
    let loc = reg.start_upload(&admin(), repo).await;
    let resp = patch_streamed(&reg, &loc, &big).await;
    assert_eq!(
        resp.status(),
        StatusCode::ACCEPTED,
        "{}",
        common::api::describe(resp).await
    );
    let loc = resp.headers()["location"].to_str().unwrap().to_string();
    assert_quota_refusal(put_close(&reg, &loc, &sha256(&big)).await, "streamed").await;
    nothing_left(&srv, &reg, repo, base, &files, "streamed", sha256(&big)).await;
    // The refused session is gone with its data.
    assert_eq!(
        reg.send(Method::GET, &loc, &admin()).await.status(),
        StatusCode::NOT_FOUND,
        "the session refused at the commit still exists"
    );
    assert_eq!(
        orphans(&reg).await,
        0,
        "refused pushes left objects in blob storage"
    );

    // Exactly the limit is allowed; one byte more is not, whatever the method.
    let fit = bytes(1000);
    created(
        push_streamed(&reg, repo, &fit).await,
        "a blob filling the quota",
    )
    .await;
    assert_eq!(usage(&reg, "q").await, base + 1000);
    let one = bytes(1);
    assert_quota_refusal(
        push_monolithic(&reg, repo, &one).await,
        "1 byte, monolithic",
    )
    .await;
    assert_quota_refusal(push_streamed(&reg, repo, &one).await, "1 byte, streamed").await;
    assert_eq!(
        blob_status(&reg, repo, &sha256(&one)).await,
        StatusCode::NOT_FOUND
    );
    // Manifests are not blobs: a full project still takes a manifest over blobs it has.
    let v1 = reg
        .send(Method::GET, &format!("/v2/{repo}/manifests/v1"), &admin())
        .await;
    assert_eq!(v1.status(), StatusCode::OK);
    let body = v1.bytes().await.unwrap().to_vec();
    put_manifest_ok(&reg, repo, "v1-again", OCI_MANIFEST, &body).await;
    assert_eq!(usage(&reg, "q").await, base + 1000);

    // Raising the limit lets the refused push through; removing it lifts the limit.
    set_quota(&reg, "q", Some(base + 2001)).await;
    created(
        push_monolithic(&reg, repo, &big).await,
        "after raising the quota",
    )
    .await;
    assert_eq!(usage(&reg, "q").await, base + 2001);
    set_quota(&reg, "q", None).await;
    created(
        push_chunked(&reg, repo, &bytes(3000), 1000).await,
        "without a limit",
    )
    .await;
    assert_eq!(usage(&reg, "q").await, base + 5001);
    assert_eq!(quota(&reg, "q").await["storage_limit"], Value::Null);
}

/// A refused push of content another project already stores leaves that project's copy
/// intact (the refused upload's own bytes are dropped, not the stored blob).
#[tokio::test]
async fn a_refused_push_leaves_other_projects_copy_intact() {
    let (_srv, reg) = setup(&["has", "full"]).await;
    let blob = bytes(4 * KIB);
    let d = sha256(&blob);
    // Referenced by a manifest, so GC keeps it.
    push_image_of(&reg, "has/app", "v1", &bytes(100), &[&blob]).await;
    set_quota(&reg, "full", Some(1000)).await;
    assert_quota_refusal(push_streamed(&reg, "full/app", &blob).await, "streamed").await;
    assert_quota_refusal(
        push_chunked(&reg, "full/app", &blob, 4 * KIB).await,
        "chunked",
    )
    .await;
    assert_eq!(
        blob_status(&reg, "full/app", &d).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(usage(&reg, "full").await, 0);
    assert_eq!(orphans(&reg).await, 0);
    gc(&reg).await;
    let resp = reg
        .send(Method::GET, &format!("/v2/has/app/blobs/{d}"), &admin())
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.bytes().await.unwrap().to_vec(),
        blob,
        "the stored copy was damaged"
    );
}

/// A blob the project already counts adds nothing, so pushing it again into another of its
/// repositories must succeed even when the project is exactly at its limit: by mount, by a
/// streamed upload (judged at the commit), and by the methods whose request names the digest
/// before the body (monolithic `POST ?digest=`, and `PUT ?digest=` carrying the body — how
/// containerd pushes). Chunked PATCHes with `Content-Length` are left out: when a PATCH
/// arrives the server cannot know which blob it will become, so refusing it by its size is
/// the documented trade-off.
#[tokio::test]
async fn a_blob_the_project_already_counts_can_be_pushed_again_at_a_full_quota() {
    let (_srv, reg) = setup(&["full"]).await;
    let layer = bytes(2 * KIB);
    push_image_of(&reg, "full/one", "v1", &bytes(200), &[&layer]).await;
    let base = usage(&reg, "full").await;
    set_quota(&reg, "full", Some(base)).await;
    let d = sha256(&layer);

    let mut failures = Vec::new();
    for (i, method) in ["mount", "streamed", "monolithic", "POST + PUT"]
        .iter()
        .enumerate()
    {
        let repo = format!("full/copy{i}");
        let resp = match *method {
            "mount" => reg
                .req(
                    Method::POST,
                    &format!("/v2/{repo}/blobs/uploads/?mount={d}&from=full/one"),
                    &admin(),
                )
                .send()
                .await
                .unwrap(),
            "streamed" => push_streamed(&reg, &repo, &layer).await,
            "monolithic" => push_monolithic(&reg, &repo, &layer).await,
            _ => push_post_put(&reg, &repo, &layer).await,
        };
        let status = resp.status();
        if status != StatusCode::CREATED {
            failures.push(format!("{method}: {}", common::api::describe(resp).await));
        } else {
            assert_eq!(blob_status(&reg, &repo, &d).await, StatusCode::OK);
        }
        assert_eq!(
            usage(&reg, "full").await,
            base,
            "{method} changed the usage"
        );
    }
    assert!(
        failures.is_empty(),
        "pushing a blob the project already counts was refused at a full quota \
         (it adds no usage):\n{}",
        failures.join("\n")
    );
}

/// Linking a blob a repository already links (pushed again by any method, or mounted) does
/// not count it twice: one unlink uncounts it.
#[tokio::test]
async fn relinking_a_linked_blob_counts_it_once() {
    let (_srv, reg) = setup(&["re"]).await;
    let repo = "re/app";
    let blob = bytes(1500);
    let d = sha256(&blob);
    created(push_monolithic(&reg, repo, &blob).await, "first push").await;
    created(push_streamed(&reg, repo, &blob).await, "again, streamed").await;
    created(push_chunked(&reg, repo, &blob, 600).await, "again, chunked").await;
    created(push_post_put(&reg, repo, &blob).await, "again, POST + PUT").await;
    created(
        push_monolithic(&reg, "re/other", &blob).await,
        "into a second repository",
    )
    .await;
    let resp = reg
        .req(
            Method::POST,
            &format!("/v2/{repo}/blobs/uploads/?mount={d}&from=re/other"),
            &admin(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::CREATED,
        "mount onto an existing link"
    );
    let q = quota(&reg, "re").await;
    assert_eq!(
        (q["usage_bytes"].as_u64(), q["blobs"].as_u64()),
        (Some(1500), Some(1)),
        "{q}"
    );

    assert_eq!(
        delete(&reg, &format!("/v2/re/other/blobs/{d}"))
            .await
            .status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(usage(&reg, "re").await, 1500, "still linked by {repo}");
    assert_eq!(
        delete(&reg, &format!("/v2/{repo}/blobs/{d}"))
            .await
            .status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(blob_status(&reg, repo, &d).await, StatusCode::NOT_FOUND);
    let q = quota(&reg, "re").await;
    assert_eq!(
        (q["usage_bytes"].as_u64(), q["blobs"].as_u64()),
        (Some(0), Some(0)),
        "{q}"
    );
}

/// Concurrent pushes and mounts into one project are judged one after the other: with room
/// for three of ten equally sized blobs, exactly three get in, and the usage stays exact.
#[tokio::test]
async fn concurrent_pushes_never_exceed_the_quota() {
    let (_srv, reg) = setup(&["conc", "src"]).await;
    let blobs: Vec<Vec<u8>> = (0..10).map(|_| bytes(1000)).collect();
    for b in &blobs[..5] {
        created(push_monolithic(&reg, "src/lib", b).await, "source blob").await;
    }
    set_quota(&reg, "conc", Some(3500)).await;
    let tasks: Vec<_> = blobs
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let reg = reg.clone();
            let b = b.clone();
            tokio::spawn(async move {
                let repo = format!("conc/r{}", i % 2);
                let resp = if i < 5 {
                    reg.req(
                        Method::POST,
                        &format!(
                            "/v2/{repo}/blobs/uploads/?mount={}&from=src/lib",
                            sha256(&b)
                        ),
                        &admin(),
                    )
                    .send()
                    .await
                    .unwrap()
                } else {
                    push_streamed(&reg, &repo, &b).await
                };
                let status = resp.status();
                if status != StatusCode::CREATED {
                    assert_quota_refusal(resp, &format!("operation {i}")).await;
                }
                (status == StatusCode::CREATED, repo, sha256(&b))
            })
        })
        .collect();
    let mut admitted = 0;
    for t in tasks {
        let (ok, repo, d) = t.await.expect("task");
        let want = if ok {
            StatusCode::OK
        } else {
            StatusCode::NOT_FOUND
        };
        assert_eq!(blob_status(&reg, &repo, &d).await, want, "{d} in {repo}");
        admitted += usize::from(ok);
    }
    assert_eq!(
        admitted, 3,
        "room for exactly three blobs of 1000 B under 3500 B"
    );
    let q = quota(&reg, "conc").await;
    assert_eq!(
        (q["usage_bytes"].as_u64(), q["blobs"].as_u64()),
        (Some(3000), Some(3)),
        "{q}"
    );
    assert_eq!(
        orphans(&reg).await,
        0,
        "refused pushes left objects in blob storage"
    );
}

/// A mount from project A into project B counts in B (refused when B's quota is too small,
/// leaving nothing), never in A; mounting into another repository of B adds nothing, even at
/// B's limit.
#[tokio::test]
async fn mounts_across_projects_count_in_the_target_project() {
    let (_srv, reg) = setup(&["pa", "pb"]).await;
    let shared = bytes(3 * KIB);
    let d = sha256(&shared);
    push_image_of(&reg, "pa/src", "v1", &bytes(100), &[&shared]).await;
    push_image_of(&reg, "pb/base", "v1", &bytes(150), &[&bytes(KIB)]).await;
    let (a0, b0) = (usage(&reg, "pa").await, usage(&reg, "pb").await);

    let mount = |to: &'static str, from: &'static str| {
        let reg = reg.clone();
        let d = d.clone();
        async move {
            reg.req(
                Method::POST,
                &format!("/v2/{to}/blobs/uploads/?mount={d}&from={from}"),
                &admin(),
            )
            .send()
            .await
            .unwrap()
        }
    };

    set_quota(&reg, "pb", Some(b0 + shared.len() as u64 - 1)).await;
    assert_quota_refusal(mount("pb/dst", "pa/src").await, "mount over B's quota").await;
    assert_eq!(blob_status(&reg, "pb/dst", &d).await, StatusCode::NOT_FOUND);
    assert_eq!(usage(&reg, "pb").await, b0);
    assert_eq!(usage(&reg, "pa").await, a0);

    set_quota(&reg, "pb", Some(b0 + shared.len() as u64)).await;
    let resp = mount("pb/dst", "pa/src").await;
    assert_eq!(resp.status(), StatusCode::CREATED, "mount within the quota");
    assert_eq!(blob_status(&reg, "pb/dst", &d).await, StatusCode::OK);
    assert_eq!(usage(&reg, "pb").await, b0 + shared.len() as u64);
    assert_eq!(
        usage(&reg, "pa").await,
        a0,
        "a mount out of A changes nothing in A"
    );

    // B is exactly full now; a mount inside B adds nothing and is allowed.
    let resp = mount("pb/dst2", "pb/dst").await;
    assert_eq!(
        resp.status(),
        StatusCode::CREATED,
        "mount within the same project at a full quota: {}",
        common::api::describe(resp).await
    );
    assert_eq!(usage(&reg, "pb").await, b0 + shared.len() as u64);
    // A manifest in B over the mounted layer needs no further room either.
    let cfg = reg
        .send(Method::GET, "/v2/pb/base/manifests/v1", &admin())
        .await
        .json::<Value>()
        .await
        .unwrap()["config"]
        .clone();
    let m = common::api::image_manifest(
        &cfg,
        &[common::api::descriptor(common::api::OCI_LAYER, &shared)],
        None,
    );
    let mount_cfg = reg
        .req(
            Method::POST,
            &format!(
                "/v2/pb/dst2/blobs/uploads/?mount={}&from=pb/base",
                cfg["digest"].as_str().unwrap()
            ),
            &admin(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(mount_cfg.status(), StatusCode::CREATED);
    put_manifest_ok(&reg, "pb/dst2", "v1", OCI_MANIFEST, &m).await;
    assert_eq!(usage(&reg, "pb").await, b0 + shared.len() as u64);

    // Unlinking from one repository of B keeps it counted; from both uncounts it.
    assert_eq!(
        delete(&reg, &format!("/v2/pb/dst/blobs/{d}"))
            .await
            .status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(usage(&reg, "pb").await, b0 + shared.len() as u64);
    reg.api_ok(
        Method::DELETE,
        &format!("/api/v1/projects/pb/repositories/{}", enc("dst2")),
        &admin(),
        None,
        204,
    )
    .await;
    assert_eq!(usage(&reg, "pb").await, b0);
    assert_eq!(usage(&reg, "pa").await, a0);
}

/// Quotas are set by system administrators only; members read them; unknown projects are 404.
#[tokio::test]
async fn quotas_are_set_by_administrators_and_read_by_members() {
    let (_srv, reg) = setup(&["team"]).await;
    reg.create_user("dev", "dev-pass-123").await;
    reg.set_member(&admin(), "team", "dev", "project_admin")
        .await;
    let dev = Cred::basic("dev", "dev-pass-123");
    let (status, body) = reg
        .api(
            Method::PUT,
            "/api/v1/projects/team/quota",
            &dev,
            Some(json!({ "storage_limit": 10 })),
        )
        .await;
    assert_error(status, &body, 403, "DENIED", "a project admin sets a quota");
    set_quota(&reg, "team", Some(12345)).await;
    let v = reg
        .api_ok(Method::GET, "/api/v1/projects/team/quota", &dev, None, 200)
        .await;
    assert_eq!(v["storage_limit"], 12345, "{v}");
    assert_eq!(v["recomputed_bytes"], Value::Null, "no verify asked: {v}");
    let (status, body) = reg
        .api(
            Method::PUT,
            "/api/v1/projects/nope/quota",
            &admin(),
            Some(json!({ "storage_limit": 10 })),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

// ---- the randomized acceptance test ---------------------------------------------------------

/// What the test believes one repository holds.
#[derive(Default, Debug)]
struct RepoModel {
    /// Created on the server (a repository delete is valid).
    exists: bool,
    links: BTreeSet<String>,
    /// Live manifests and the blobs they reference.
    manifests: BTreeMap<String, Vec<String>>,
    tags: BTreeMap<String, String>,
    /// Deleted manifests not yet purged: they keep their blobs' links from GC.
    trash: Vec<Vec<String>>,
}

struct Model {
    project: String,
    repos: Vec<(String, RepoModel)>,
    sizes: HashMap<String, u64>,
}

impl Model {
    /// (bytes, blobs) of the distinct blobs the project's repositories link.
    fn usage(&self) -> (u64, u64) {
        let distinct: BTreeSet<&String> = self.repos.iter().flat_map(|(_, r)| &r.links).collect();
        (
            distinct.iter().map(|d| self.sizes[*d]).sum(),
            distinct.len() as u64,
        )
    }

    fn gc(&mut self) {
        for (_, r) in &mut self.repos {
            r.trash.clear();
            let needed: BTreeSet<&String> = r.manifests.values().flatten().collect();
            r.links.retain(|d| needed.contains(d));
        }
    }
}

fn seeded_bytes(rng: &mut SmallRng, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rng.fill_bytes(&mut v);
    v
}

fn seeded_config(rng: &mut SmallRng) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", hex::encode(seeded_bytes(rng, 32)))]},
    }))
    .unwrap()
}

/// Pushes a blob by upload method `method` (0..4), expecting 201; returns a log line.
async fn push_by(reg: &Reg, method: u32, repo: &str, data: &[u8]) -> String {
    let (name, resp) = match method {
        0 => ("monolithic", push_monolithic(reg, repo, data).await),
        1 => ("POST+PUT", push_post_put(reg, repo, data).await),
        2 => (
            "chunked",
            push_chunked(reg, repo, data, 1 + data.len() / 3).await,
        ),
        _ => ("streamed", push_streamed(reg, repo, data).await),
    };
    created(
        resp,
        &format!("{name} push of {} B into {repo}", data.len()),
    )
    .await;
    format!("  blob {} ({} B) {name}", &sha256(data)[..19], data.len())
}

/// Pushes blobs into `repo` concurrently (as clients push layers), each by a method drawn from
/// `rng`, and records them in the model.
async fn push_blobs(
    reg: &Reg,
    rng: &mut SmallRng,
    m: &mut Model,
    ri: usize,
    blobs: &[&Vec<u8>],
    log: &mut Vec<String>,
) {
    let repo = m.repos[ri].0.clone();
    let mut seen = BTreeSet::new();
    let mut jobs = Vec::new();
    for b in blobs {
        let d = sha256(b);
        if !seen.insert(d.clone()) {
            continue;
        }
        // Like clients, skip what the repository already has (HEAD first).
        if m.repos[ri].1.links.contains(&d) {
            assert_eq!(blob_status(reg, &repo, &d).await, StatusCode::OK, "{d}");
            continue;
        }
        let method = rng.random_range(0..4);
        jobs.push(push_by(reg, method, &repo, b));
        m.sizes.insert(d.clone(), b.len() as u64);
        m.repos[ri].1.links.insert(d);
    }
    log.extend(futures_util::future::join_all(jobs).await);
    m.repos[ri].1.exists = true;
}

/// Checks the server against the model: quota (maintained = recomputed = model) always;
/// with `deep`, every known blob's visibility in every repository and the storage reports.
async fn check(reg: &Reg, m: &Model, step: usize, log: &[String], deep: bool) {
    let (bytes, blobs) = m.usage();
    let q = reg
        .api_ok(
            Method::GET,
            &format!("/api/v1/projects/{}/quota?verify=true", m.project),
            &admin(),
            None,
            200,
        )
        .await;
    let ctx = || {
        let tail: Vec<&String> = log.iter().rev().take(12).collect();
        format!(
            "after step {step}; last operations (newest first):\n{}",
            tail.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        )
    };
    assert_eq!(
        (q["usage_bytes"].as_u64(), q["blobs"].as_u64()),
        (
            q["recomputed_bytes"].as_u64(),
            q["recomputed_blobs"].as_u64()
        ),
        "maintained usage differs from the recomputed one: {q}\n{}",
        ctx()
    );
    assert_eq!(
        (q["usage_bytes"].as_u64(), q["blobs"].as_u64()),
        (Some(bytes), Some(blobs)),
        "usage differs from the model's distinct linked blobs: {q}\n{}",
        ctx()
    );
    if !deep {
        return;
    }
    for (name, r) in &m.repos {
        for d in m.sizes.keys() {
            let want = if r.links.contains(d) {
                StatusCode::OK
            } else {
                StatusCode::NOT_FOUND
            };
            let got = blob_status(reg, name, d).await;
            assert_eq!(got, want, "blob {d} in {name}\n{}", ctx());
        }
    }
    let s = reg
        .api_ok(
            Method::GET,
            &format!("/api/v1/projects/{}/storage", m.project),
            &admin(),
            None,
            200,
        )
        .await;
    assert_eq!(s["usage_bytes"], bytes, "storage report: {s}\n{}", ctx());
    let want: BTreeMap<String, u64> = m
        .repos
        .iter()
        .filter(|(_, r)| !r.links.is_empty() || !r.manifests.is_empty())
        .map(|(n, r)| (n.clone(), r.links.iter().map(|d| m.sizes[d]).sum()))
        .collect();
    let got: BTreeMap<String, u64> = s["repositories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["repository"].as_str().unwrap().to_string(),
                r["bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, want, "per-repository bytes: {s}\n{}", ctx());
}

/// The acceptance test: a seeded random sequence of ~60 operations over three repositories of
/// one project (pushes by every method with layers shared between repositories, mounts, tag
/// and manifest deletes, blob unlinks, repository deletes, GC runs). After every step the
/// maintained usage equals the server's recomputation and the model's; every few steps and
/// after each GC, every blob's visibility and the storage report are checked too.
/// Reproduce a failure with KURA_TEST_SEED=<printed seed>.
#[tokio::test]
async fn random_operations_keep_usage_exact() {
    let seed: u64 = std::env::var("KURA_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("seed {seed} (rerun with KURA_TEST_SEED={seed})");
    eprintln!("random_operations_keep_usage_exact: seed {seed}");
    let mut rng = SmallRng::seed_from_u64(seed);

    let (_srv, reg) = setup(&["rnd"]).await;
    // A generous limit: the quota check runs on every link without refusing anything.
    set_quota(&reg, "rnd", Some(1 << 30)).await;
    let mut m = Model {
        project: "rnd".into(),
        repos: ["rnd/a", "rnd/b", "rnd/team/c"]
            .iter()
            .map(|n| (n.to_string(), RepoModel::default()))
            .collect(),
        sizes: HashMap::new(),
    };
    let pool: Vec<Vec<u8>> = (0..6)
        .map(|_| {
            let n = rng.random_range(200..4000);
            seeded_bytes(&mut rng, n)
        })
        .collect();
    let configs: Vec<Vec<u8>> = (0..4).map(|_| seeded_config(&mut rng)).collect();
    let mut log: Vec<String> = Vec::new();
    let mut gcs = 0;

    for step in 0..60 {
        let ri = rng.random_range(0..m.repos.len());
        let repo = m.repos[ri].0.clone();
        let op = rng.random_range(0..100);
        let mut deep = step % 10 == 9;
        match op {
            // Push an image: a fresh config, one or two layers (often shared), tagged or not.
            0..=29 => {
                let config = if rng.random_bool(0.5) {
                    configs[rng.random_range(0..configs.len())].clone()
                } else {
                    seeded_config(&mut rng)
                };
                let mut layers = Vec::new();
                for _ in 0..rng.random_range(1..=2) {
                    if rng.random_bool(0.7) {
                        layers.push(pool[rng.random_range(0..pool.len())].clone());
                    } else {
                        let n = rng.random_range(100..5000);
                        layers.push(seeded_bytes(&mut rng, n));
                    }
                }
                let reference = if rng.random_bool(0.7) {
                    format!("t{}", rng.random_range(0..4))
                } else {
                    String::new()
                };
                log.push(format!("{step}: push image to {repo}:{reference}"));
                let all: Vec<&Vec<u8>> = std::iter::once(&config).chain(&layers).collect();
                push_blobs(&reg, &mut rng, &mut m, ri, &all, &mut log).await;
                let lrefs: Vec<&[u8]> = layers.iter().map(|l| l.as_slice()).collect();
                let body = manifest_of(&config, &lrefs);
                let digest = sha256(&body);
                let reference = if reference.is_empty() {
                    digest.clone()
                } else {
                    reference
                };
                put_manifest_ok(&reg, &repo, &reference, OCI_MANIFEST, &body).await;
                let blobs = std::iter::once(&config)
                    .chain(&layers)
                    .map(|b| sha256(b))
                    .collect();
                let r = &mut m.repos[ri].1;
                r.manifests.insert(digest.clone(), blobs);
                if reference != digest {
                    r.tags.insert(reference, digest);
                }
            }
            // Push a lone blob no manifest references (GC takes its link).
            30..=37 => {
                let data = if rng.random_bool(0.5) {
                    pool[rng.random_range(0..pool.len())].clone()
                } else {
                    let n = rng.random_range(100..3000);
                    seeded_bytes(&mut rng, n)
                };
                log.push(format!("{step}: push lone blob to {repo}"));
                // Pushed even when linked already: a re-link must not count twice.
                let method = rng.random_range(0..4);
                log.push(push_by(&reg, method, &repo, &data).await);
                m.sizes.insert(sha256(&data), data.len() as u64);
                m.repos[ri].1.links.insert(sha256(&data));
                m.repos[ri].1.exists = true;
            }
            // Mount a blob from another repository of the project.
            38..=49 => {
                let from = rng.random_range(0..m.repos.len());
                if from == ri || m.repos[from].1.links.is_empty() {
                    log.push(format!("{step}: (no mount source)"));
                    continue;
                }
                let links: Vec<String> = m.repos[from].1.links.iter().cloned().collect();
                let d = links[rng.random_range(0..links.len())].clone();
                let from_name = m.repos[from].0.clone();
                log.push(format!(
                    "{step}: mount {} from {from_name} into {repo}",
                    &d[..19]
                ));
                let resp = reg
                    .req(
                        Method::POST,
                        &format!("/v2/{repo}/blobs/uploads/?mount={d}&from={from_name}"),
                        &admin(),
                    )
                    .send()
                    .await
                    .unwrap();
                created(resp, &format!("mount {d} from {from_name} into {repo}")).await;
                m.repos[ri].1.links.insert(d);
                m.repos[ri].1.exists = true;
            }
            // Delete a tag (the manifest stays).
            50..=59 => {
                let tags: Vec<String> = m.repos[ri].1.tags.keys().cloned().collect();
                if tags.is_empty() {
                    log.push(format!("{step}: (no tag in {repo})"));
                    continue;
                }
                let t = tags[rng.random_range(0..tags.len())].clone();
                log.push(format!("{step}: delete tag {repo}:{t}"));
                let resp = delete(&reg, &format!("/v2/{repo}/manifests/{t}")).await;
                assert_eq!(resp.status(), StatusCode::ACCEPTED, "delete tag {repo}:{t}");
                m.repos[ri].1.tags.remove(&t);
            }
            // Delete a manifest (with its tags; restorable until GC purges it).
            60..=69 => {
                let ds: Vec<String> = m.repos[ri].1.manifests.keys().cloned().collect();
                if ds.is_empty() {
                    log.push(format!("{step}: (no manifest in {repo})"));
                    continue;
                }
                let d = ds[rng.random_range(0..ds.len())].clone();
                log.push(format!("{step}: delete manifest {repo}@{}", &d[..19]));
                let resp = delete(&reg, &format!("/v2/{repo}/manifests/{d}")).await;
                assert_eq!(resp.status(), StatusCode::ACCEPTED, "delete manifest {d}");
                let r = &mut m.repos[ri].1;
                let blobs = r.manifests.remove(&d).unwrap();
                r.tags.retain(|_, v| *v != d);
                r.trash.push(blobs);
            }
            // Unlink a blob from the repository.
            70..=81 => {
                let links: Vec<String> = m.repos[ri].1.links.iter().cloned().collect();
                if links.is_empty() {
                    log.push(format!("{step}: (no blob in {repo})"));
                    continue;
                }
                let d = links[rng.random_range(0..links.len())].clone();
                log.push(format!("{step}: unlink {} from {repo}", &d[..19]));
                let resp = delete(&reg, &format!("/v2/{repo}/blobs/{d}")).await;
                assert_eq!(
                    resp.status(),
                    StatusCode::ACCEPTED,
                    "unlink {d} from {repo}"
                );
                m.repos[ri].1.links.remove(&d);
            }
            // Delete the whole repository.
            82..=87 => {
                if !m.repos[ri].1.exists {
                    log.push(format!("{step}: ({repo} does not exist)"));
                    continue;
                }
                log.push(format!("{step}: delete repository {repo}"));
                let path = repo.strip_prefix("rnd/").unwrap();
                reg.api_ok(
                    Method::DELETE,
                    &format!("/api/v1/projects/rnd/repositories/{}", enc(path)),
                    &admin(),
                    None,
                    204,
                )
                .await;
                m.repos[ri].1 = RepoModel::default();
            }
            // Garbage collection.
            _ => {
                log.push(format!("{step}: GC"));
                // The orphan scan lists all of blob storage; it runs once, at the end.
                let run = gc_with(&reg, json!({ "skip_orphans": true })).await;
                m.gc();
                gcs += 1;
                deep = true;
                log.push(format!("  GC result {}", run["result"]));
            }
        }
        check(&reg, &m, step, &log, deep).await;
    }
    // Finish with a GC and a full check.
    log.push("final GC".into());
    gc(&reg).await;
    m.gc();
    check(&reg, &m, 60, &log, true).await;
    let (bytes, blobs) = m.usage();
    println!("seed {seed}: {gcs} GC runs in the sequence; final usage {bytes} B in {blobs} blobs");
    assert_eq!(
        orphans(&reg).await,
        0,
        "objects in storage metadata does not know"
    );
}
