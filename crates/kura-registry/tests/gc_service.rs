//! Garbage collection, quotas, immutability and tag history through the registry service,
//! over the real embedded backends (SQLite + filesystem in a temporary directory).

use std::sync::Arc;

use bytes::Bytes;
use futures_util::{StreamExt, stream};
use kura_metadata::sql::{SqlOptions, SqlStore};
use kura_metadata::{AccessStore, LifecycleStore};
use kura_oci::{Algorithm, Digest, ErrorCode, Reference, RepositoryName};
use kura_registry::gc::{GcRequest, GcResult};
use kura_registry::{Registry, RegistryConfig};
use kura_storage::{BlobStore, Durability, FsBlobStore};

struct Env {
    _dir: tempfile::TempDir,
    reg: Registry,
    sql: Arc<SqlStore>,
    store: Arc<dyn BlobStore>,
}

async fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn BlobStore> = Arc::new(
        FsBlobStore::open(dir.path().join("blobs"), Durability::Relaxed)
            .await
            .unwrap(),
    );
    let url = format!("sqlite://{}", dir.path().join("kura.db").display());
    let sql = Arc::new(
        SqlStore::connect(&url, &SqlOptions::default())
            .await
            .unwrap(),
    );
    // These tests follow blobs into blob storage, so none is kept inline (see
    // `inline_blobs_are_collected_with_their_rows`).
    let config = RegistryConfig {
        inline_blob_max: 0,
        ..RegistryConfig::default()
    };
    let reg = Registry::new(sql.clone(), store.clone(), config, vec![]);
    Env {
        _dir: dir,
        reg,
        sql,
        store,
    }
}

fn name(s: &str) -> RepositoryName {
    RepositoryName::parse(s).unwrap()
}

async fn push(reg: &Registry, repo: &RepositoryName, data: &[u8]) -> Digest {
    try_push(reg, repo, data).await.unwrap()
}

async fn try_push(
    reg: &Registry,
    repo: &RepositoryName,
    data: &[u8],
) -> Result<Digest, kura_registry::RegistryError> {
    let d = Algorithm::Sha256.digest_of(data);
    reg.push_blob(
        repo,
        &d,
        &mut stream::iter(vec![Ok::<_, std::io::Error>(Bytes::from(data.to_vec()))]),
    )
    .await?;
    Ok(d)
}

fn manifest(config: &Digest, layers: &[(&Digest, usize)], subject: Option<&Digest>) -> Vec<u8> {
    let mut m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config.to_string(), "size": 2},
        "layers": layers.iter().map(|(d, n)| serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": d.to_string(), "size": n})).collect::<Vec<_>>(),
    });
    if let Some(s) = subject {
        m["subject"] = serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": s.to_string(), "size": 10});
    }
    serde_json::to_vec(&m).unwrap()
}

async fn put(reg: &Registry, repo: &RepositoryName, reference: Reference, body: Vec<u8>) -> Digest {
    reg.put_manifest(
        repo,
        &reference,
        Some("application/vnd.oci.image.manifest.v1+json"),
        Bytes::from(body),
    )
    .await
    .unwrap()
    .digest
}

fn now_gc() -> GcRequest {
    GcRequest {
        grace_seconds: Some(0),
        deleted_manifest_retention_seconds: Some(0),
        ..Default::default()
    }
}

async fn gc(reg: &Registry, req: GcRequest) -> GcResult {
    // Cut-offs are "strictly before the run started": step past the current millisecond.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let run = reg.run_gc(req, "test").await.unwrap();
    assert_eq!(run.status, "succeeded", "{:?}", run.error);
    serde_json::from_str(&run.result).unwrap()
}

/// Small blobs kept in their metadata rows are collected like any other, and their bytes go
/// with the row: nothing is queued for blob storage, which never held them.
#[tokio::test]
async fn inline_blobs_are_collected_with_their_rows() {
    let e = env().await;
    let reg = Registry::new(
        e.sql.clone(),
        e.store.clone(),
        RegistryConfig::default(),
        vec![],
    );
    let repo = name("team/app");
    let config = push(&reg, &repo, b"{}").await;
    let layer = push(&reg, &repo, &[1u8; 1000]).await;
    let dangling = push(&reg, &repo, &[3u8; 3000]).await; // never referenced
    put(
        &reg,
        &repo,
        Reference::Tag("v1".into()),
        manifest(&config, &[(&layer, 1000)], None),
    )
    .await;
    assert!(e.store.list_blobs(None, 100).await.unwrap().is_empty());
    let r = gc(&reg, now_gc()).await;
    assert_eq!((r.blobs_deleted, r.bytes_deleted), (1, 3000));
    assert_eq!(r.storage_errors, 0);
    assert!(reg.stat_blob(&repo, &dangling).await.is_err());
    assert!(e.sql.pending_blob_deletions(10).await.unwrap().is_empty());
    // The collected blob's bytes left the database with its row.
    let db = e._dir.path().join("kura.db");
    let mut c = <sqlx::SqliteConnection as sqlx::Connection>::connect(&format!(
        "sqlite://{}",
        db.display()
    ))
    .await
    .unwrap();
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM blob_contents")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(kept, 2, "config and layer");
    // What the manifest needs still reads back whole.
    let blob = reg.stat_blob(&repo, &layer).await.unwrap();
    let mut s = reg.read_blob(&repo, blob, None).await.unwrap();
    let mut got = Vec::new();
    while let Some(chunk) = s.next().await {
        got.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(got, vec![1u8; 1000]);
}

#[tokio::test]
async fn gc_reclaims_exactly_what_nothing_needs() {
    let e = env().await;
    let repo = name("team/app");
    let config = push(&e.reg, &repo, b"{}").await;
    let shared = push(&e.reg, &repo, &[1u8; 1000]).await;
    let only_old = push(&e.reg, &repo, &[2u8; 2000]).await;
    let dangling = push(&e.reg, &repo, &[3u8; 3000]).await; // never referenced
    let old = put(
        &e.reg,
        &repo,
        Reference::Tag("old".into()),
        manifest(&config, &[(&shared, 1000), (&only_old, 2000)], None),
    )
    .await;
    put(
        &e.reg,
        &repo,
        Reference::Tag("new".into()),
        manifest(&config, &[(&shared, 1000)], None),
    )
    .await;

    // Within the grace period nothing goes.
    let r = gc(&e.reg, GcRequest::default()).await;
    assert_eq!((r.blobs_deleted, r.links_deleted), (0, 0));

    // The dangling layer goes; everything referenced stays.
    let dry = gc(
        &e.reg,
        GcRequest {
            dry_run: true,
            ..now_gc()
        },
    )
    .await;
    assert_eq!((dry.blobs_deleted, dry.bytes_deleted), (1, 3000));
    assert_eq!(dry.blob_sample, vec![dangling.to_string()]);
    let r = gc(&e.reg, now_gc()).await;
    assert_eq!(
        (r.blobs_deleted, r.bytes_deleted, r.links_deleted),
        (1, 3000, 1)
    );
    assert!(e.reg.stat_blob(&repo, &dangling).await.is_err());

    // Deleting "old" keeps its layers while it is restorable, then frees the unshared one.
    e.reg
        .delete_manifest(&repo, &Reference::Digest(old.clone()))
        .await
        .unwrap();
    let kept = gc(
        &e.reg,
        GcRequest {
            deleted_manifest_retention_seconds: Some(3600),
            ..now_gc()
        },
    )
    .await;
    assert_eq!(kept.blobs_deleted, 0);
    // Restore brings it back from the deleted-manifest area.
    e.reg.restore_tag(&repo, "old", &old).await.unwrap();
    e.reg
        .get_manifest(&repo, &Reference::Tag("old".into()), true)
        .await
        .unwrap();
    e.reg
        .delete_manifest(&repo, &Reference::Digest(old.clone()))
        .await
        .unwrap();
    let r = gc(&e.reg, now_gc()).await;
    assert_eq!(r.deleted_manifests_purged, 1);
    assert_eq!((r.blobs_deleted, r.bytes_deleted), (1, 2000));
    let err = e.reg.restore_tag(&repo, "old", &old).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::ManifestUnknown);

    // What is left still pulls.
    e.reg
        .get_manifest(&repo, &Reference::Tag("new".into()), true)
        .await
        .unwrap();
    e.reg.stat_blob(&repo, &shared).await.unwrap();
    let listed = e.store.list_blobs(None, 100).await.unwrap();
    assert_eq!(listed.len(), 2, "config + shared layer remain: {listed:?}");
    let totals = e.sql.storage_totals().await.unwrap();
    assert_eq!((totals.blobs, totals.stored_bytes), (2, 1002));
}

#[tokio::test]
async fn untagged_manifests_and_orphaned_accessories() {
    let e = env().await;
    let repo = name("team/app");
    let config = push(&e.reg, &repo, b"{}").await;
    let layer = push(&e.reg, &repo, &[7u8; 500]).await;
    let base = manifest(&config, &[(&layer, 500)], None);
    let subject = put(&e.reg, &repo, Reference::Tag("v1".into()), base).await;
    let sig_body = manifest(&config, &[], Some(&subject));
    let sig = Algorithm::Sha256.digest_of(&sig_body);
    put(&e.reg, &repo, Reference::Digest(sig.clone()), sig_body).await;
    let untagged_body = manifest(&config, &[(&layer, 500)], None)
        .into_iter()
        .chain(b" ".iter().copied())
        .collect::<Vec<u8>>();
    let untagged = Algorithm::Sha256.digest_of(&untagged_body);
    put(
        &e.reg,
        &repo,
        Reference::Digest(untagged.clone()),
        untagged_body,
    )
    .await;

    // Without delete_untagged: the accessory of a live subject and the untagged image stay.
    let r = gc(&e.reg, now_gc()).await;
    assert_eq!(r.manifests_deleted, 0);
    let r = gc(
        &e.reg,
        GcRequest {
            delete_untagged: Some(true),
            ..now_gc()
        },
    )
    .await;
    assert_eq!(r.manifests_deleted, 1, "{r:?}");
    assert!(
        e.reg
            .get_manifest(&repo, &Reference::Digest(untagged), false)
            .await
            .is_err()
    );
    // The signature stays with its subject...
    e.reg
        .get_manifest(&repo, &Reference::Digest(sig.clone()), false)
        .await
        .unwrap();
    // ...and follows it once the subject is deleted and purged.
    e.reg
        .delete_manifest(&repo, &Reference::Digest(subject))
        .await
        .unwrap();
    // One run purges the subject (and the untagged image deleted earlier) from the deleted
    // area, which frees the layer only they used, then finds the signature orphaned.
    let r = gc(&e.reg, now_gc()).await;
    assert_eq!(
        (r.deleted_manifests_purged, r.manifests_deleted),
        (2, 1),
        "{r:?}"
    );
    assert_eq!((r.blobs_deleted, r.bytes_deleted), (1, 500));
    assert!(
        e.reg
            .get_manifest(&repo, &Reference::Digest(sig), false)
            .await
            .is_err()
    );
    let r = gc(&e.reg, now_gc()).await;
    let r2 = gc(&e.reg, now_gc()).await;
    assert_eq!(r2.blobs_deleted, 0);
    let totals = e.sql.storage_totals().await.unwrap();
    assert_eq!(totals.blobs, 0, "{r:?} {totals:?}");
}

#[tokio::test]
async fn quotas_count_shared_blobs_once_and_refuse_growth() {
    let e = env().await;
    e.sql.create_project("team", false).await.unwrap();
    let a = name("team/a");
    let b = name("team/b");
    let layer = push(&e.reg, &a, &[1u8; 1000]).await;
    push(&e.reg, &b, &[1u8; 1000]).await; // same content: counted once
    let usage = e.sql.project_usage("team").await.unwrap();
    assert_eq!((usage.bytes, usage.blobs), (1000, 1));
    e.sql.set_storage_limit("team", Some(1500)).await.unwrap();
    let big = vec![9u8; 600];
    let d = Algorithm::Sha256.digest_of(&big);
    let err = try_push(&e.reg, &a, &big).await.unwrap_err();
    assert_eq!((err.code, err.status), (ErrorCode::Denied, 403));
    assert!(err.message.contains("quota"), "{}", err.message);
    assert!(e.reg.stat_blob(&a, &d).await.is_err());
    assert_eq!(e.store.list_blobs(None, 100).await.unwrap().len(), 1);
    // Mounting into a third repository of the project adds nothing.
    assert!(e.reg.mount_blob(&name("team/c"), &layer, &a).await.unwrap());
    let usage = e.sql.project_usage("team").await.unwrap();
    assert_eq!(usage.bytes, 1000);
    assert_eq!(
        e.sql.recompute_project_usage("team").await.unwrap(),
        (1000, 1)
    );
    e.reg.delete_repository(&b).await.unwrap();
    e.reg.delete_repository(&name("team/c")).await.unwrap();
    e.reg.delete_blob(&a, &layer).await.unwrap();
    let usage = e.sql.project_usage("team").await.unwrap();
    assert_eq!((usage.bytes, usage.blobs), (0, 0));
}

#[tokio::test]
async fn immutable_tags_refuse_moves_and_deletes_but_accept_signatures() {
    let e = env().await;
    let repo = name("team/app");
    let config = push(&e.reg, &repo, b"{}").await;
    let l1 = push(&e.reg, &repo, &[1u8; 10]).await;
    let l2 = push(&e.reg, &repo, &[2u8; 10]).await;
    e.sql
        .add_immutability_rule("team", "*", "v*")
        .await
        .unwrap();
    let v1 = put(
        &e.reg,
        &repo,
        Reference::Tag("v1".into()),
        manifest(&config, &[(&l1, 10)], None),
    )
    .await;
    // Same digest again: fine.
    put(
        &e.reg,
        &repo,
        Reference::Tag("v1".into()),
        manifest(&config, &[(&l1, 10)], None),
    )
    .await;
    let err = e
        .reg
        .put_manifest(
            &repo,
            &Reference::Tag("v1".into()),
            Some("application/vnd.oci.image.manifest.v1+json"),
            Bytes::from(manifest(&config, &[(&l2, 10)], None)),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Denied);
    assert!(err.message.contains("immutable"));
    let err = e
        .reg
        .delete_manifest(&repo, &Reference::Tag("v1".into()))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Denied);
    let err = e
        .reg
        .delete_manifest(&repo, &Reference::Digest(v1.clone()))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Denied);
    // Signatures attach: a referrer, and cosign's digest-named tag (moved on re-signing).
    let sig = manifest(&config, &[], Some(&v1));
    put(
        &e.reg,
        &repo,
        Reference::Digest(Algorithm::Sha256.digest_of(&sig)),
        sig,
    )
    .await;
    let cosign_tag = format!("{}.sig", v1.to_string().replace(':', "-"));
    put(
        &e.reg,
        &repo,
        Reference::Tag(cosign_tag.clone()),
        manifest(&config, &[(&l1, 10)], None),
    )
    .await;
    put(
        &e.reg,
        &repo,
        Reference::Tag(cosign_tag),
        manifest(&config, &[(&l2, 10)], None),
    )
    .await;
    // Other tags move freely, and history records every move.
    put(
        &e.reg,
        &repo,
        Reference::Tag("latest".into()),
        manifest(&config, &[(&l1, 10)], None),
    )
    .await;
    let second = put(
        &e.reg,
        &repo,
        Reference::Tag("latest".into()),
        manifest(&config, &[(&l2, 10)], None),
    )
    .await;
    let history = e.reg.tag_history(&repo, "latest", 10).await.unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(
        history[0].digest.as_deref(),
        Some(second.to_string().as_str())
    );
    assert_eq!(history[0].previous_digest, history[1].digest);
    e.reg
        .restore_tag(
            &repo,
            "latest",
            &history[1].digest.clone().unwrap().parse().unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        e.reg.tag_history(&repo, "latest", 10).await.unwrap().len(),
        3
    );
}

#[tokio::test]
async fn an_interrupted_run_resumes_and_finishes_queued_deletions() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn BlobStore> = Arc::new(
        FsBlobStore::open(dir.path().join("blobs"), Durability::Relaxed)
            .await
            .unwrap(),
    );
    let url = format!("sqlite://{}", dir.path().join("kura.db").display());
    let sql = Arc::new(
        SqlStore::connect(&url, &SqlOptions::default())
            .await
            .unwrap(),
    );
    let mut config = RegistryConfig {
        inline_blob_max: 0,
        ..RegistryConfig::default()
    };
    config.gc.stale_after = std::time::Duration::ZERO;
    config.gc.batch_size = 2;
    let reg = Registry::new(sql.clone(), store.clone(), config, vec![]);
    let repo = name("team/app");
    let mut unreferenced = Vec::new();
    for i in 0..5u8 {
        unreferenced.push(push(&reg, &repo, &[i; 100]).await);
    }
    let kept = push(&reg, &repo, b"{}").await;
    put(
        &reg,
        &repo,
        Reference::Tag("v1".into()),
        manifest(&kept, &[], None),
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;

    // A process removes the links and the first blob rows, queues their bytes, then dies
    // before deleting the bytes and before finishing the run.
    let start = kura_metadata::now_ms();
    let p = kura_metadata::GcParams {
        run_start: start,
        touched_before: start,
        deleted_before: start,
        delete_untagged: false,
    };
    let params = serde_json::json!({"gc": p, "dry_run": false, "orphans": true}).to_string();
    let run_id = sql
        .create_run("gc", None, "test", false, &params, "links", "{}")
        .await
        .unwrap();
    let links = sql.gc_link_candidates(&p, None, 100).await.unwrap();
    assert_eq!(links.len(), 5);
    let progress = |_: &[kura_metadata::RepoDigest]| kura_metadata::RunProgress {
        run_id,
        phase: "blobs".into(),
        cursor: String::new(),
        result: "{}".into(),
    };
    sql.gc_delete_links(&p, &links, &progress).await.unwrap();
    let blobs = sql.gc_blob_candidates(&p, None, 2, true).await.unwrap();
    let progress = |_: &[kura_metadata::BlobCandidate]| kura_metadata::RunProgress {
        run_id,
        phase: "blobs".into(),
        cursor: blobs.last().unwrap().digest.clone(),
        result: "{}".into(),
    };
    let queued = sql.gc_delete_blobs(&p, &blobs, &progress).await.unwrap();
    assert_eq!(queued.len(), 2);
    assert_eq!(store.list_blobs(None, 100).await.unwrap().len(), 6);

    // A new request finds the run stale and resumes it from its cursor.
    let err = reg.run_gc(GcRequest::default(), "test").await;
    let run = err.unwrap();
    assert_eq!(run.id, run_id, "the interrupted run is taken over");
    assert_eq!(run.status, "succeeded");
    let r: GcResult = serde_json::from_str(&run.result).unwrap();
    assert_eq!(r.blobs_deleted, 3, "the rest of the blob phase: {r:?}");
    // The bytes the dead process had queued were deleted first.
    assert_eq!(r.pending_completed, 2);
    assert_eq!(store.list_blobs(None, 100).await.unwrap().len(), 1);
    assert_eq!(sql.storage_totals().await.unwrap().pending_deletions, 0);
    reg.get_manifest(&repo, &Reference::Tag("v1".into()), true)
        .await
        .unwrap();
}

/// The quota pre-check reuses a project's limit for up to a second. A limit set through this
/// registry applies to the very next check; one set behind its back (another replica) is still
/// enforced by the commit, which reads the limit inside its transaction.
#[tokio::test]
async fn cached_limits_never_let_a_commit_past_the_quota() {
    let e = env().await;
    e.sql.create_project("team", false).await.unwrap();
    let a = name("team/a");
    push(&e.reg, &a, &[1u8; 100]).await; // the pre-check has now cached "no limit"
    e.reg.check_quota(&a, 1_000_000).await.unwrap();

    assert!(e.reg.set_storage_limit("team", Some(150)).await.unwrap());
    let err = e.reg.check_quota(&a, 100).await.unwrap_err();
    assert_eq!((err.code, err.status), (ErrorCode::Denied, 403));

    assert!(e.reg.set_storage_limit("team", None).await.unwrap());
    e.reg.check_quota(&a, 1_000_000).await.unwrap(); // cached again: no limit
    e.sql.set_storage_limit("team", Some(150)).await.unwrap(); // behind the cache's back
    let big = vec![7u8; 100];
    let d = Algorithm::Sha256.digest_of(&big);
    let err = try_push(&e.reg, &a, &big).await.unwrap_err();
    assert_eq!((err.code, err.status), (ErrorCode::Denied, 403));
    assert!(e.reg.stat_blob(&a, &d).await.is_err());
    assert_eq!(e.sql.project_usage("team").await.unwrap().bytes, 100);
    assert!(!e.reg.set_storage_limit("nobody", Some(1)).await.unwrap());
}
