//! Generates a registry data set for measuring garbage collection (scripts/bench-gc).
//!
//! `cargo run --release --example gc_bench_data -- DATA_DIR BLOBS MANIFESTS`
//!
//! Writes through the real backends (SQLite metadata + filesystem blobs under DATA_DIR, the
//! layout `kura serve --data-dir DATA_DIR` uses): BLOBS small blobs spread over 100
//! repositories of project `bench`, and MANIFESTS image manifests, each with a config and
//! four layers drawn from its repository's blobs. Half the manifests stay tagged; a quarter
//! are untagged and a quarter deleted, and about a third of the blobs are never referenced,
//! so a GC run with grace 0 has real work in every phase.

use std::sync::Arc;

use bytes::Bytes;
use kura_metadata::sql::{SqlOptions, SqlStore};
use kura_metadata::{CommitOutcome, MetadataStore, NewManifest, UploadRecord, now_ms};
use kura_oci::Algorithm;
use kura_storage::{BlobStore, Durability, FsBlobStore};

const REPOS: usize = 100;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(args.get(1).expect("DATA_DIR"));
    let blobs: usize = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(100_000);
    let manifests: usize = args.get(3).map(|s| s.parse().unwrap()).unwrap_or(20_000);
    std::fs::create_dir_all(&dir).unwrap();
    let store: Arc<dyn BlobStore> = Arc::new(
        FsBlobStore::open(dir.join("blobs"), Durability::Relaxed)
            .await
            .unwrap(),
    );
    let url = format!("sqlite://{}", dir.join("kura.db").display());
    let meta = Arc::new(
        SqlStore::connect(
            &url,
            &SqlOptions {
                durable_commits: false,
                ..Default::default()
            },
        )
        .await
        .unwrap(),
    );
    let started = std::time::Instant::now();
    let mut repo_ids = Vec::new();
    for r in 0..REPOS {
        repo_ids.push(
            meta.ensure_repository(&format!("bench/r{r:03}"))
                .await
                .unwrap(),
        );
    }
    // Blobs, round-robin over repositories, eight writers at a time.
    let per_task = blobs.div_ceil(8);
    let mut tasks = Vec::new();
    for t in 0..8 {
        let (store, meta, repo_ids) = (store.clone(), meta.clone(), repo_ids.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in (t * per_task)..((t + 1) * per_task).min(blobs) {
                let data = format!("kura gc bench blob {i:08} {}", "x".repeat(i % 97));
                let digest = Algorithm::Sha256.digest_of(data.as_bytes());
                let id = uuid::Uuid::new_v4().to_string();
                let repo = repo_ids[i % REPOS];
                let pos = store.create_upload(&id).await.unwrap();
                let now = now_ms();
                meta.create_upload(&UploadRecord {
                    id: id.clone(),
                    repository_id: repo,
                    size: 0,
                    hash_algorithm: "sha256".into(),
                    hash_state: Vec::new(),
                    backend_state: String::new(),
                    created_at: now,
                    updated_at: now,
                })
                .await
                .unwrap();
                let mut chunk =
                    futures_util::stream::iter(vec![Ok(Bytes::from(data.clone().into_bytes()))]);
                let pos = store.append_upload(&id, &pos, &mut chunk).await.unwrap();
                let key = store.commit_upload(&id, &pos, &digest).await.unwrap();
                let outcome = meta
                    .commit_blob(
                        repo,
                        &digest.to_string(),
                        pos.size,
                        kura_metadata::BlobBytes::Stored(&key),
                        &id,
                        pos.size,
                    )
                    .await
                    .unwrap();
                assert!(matches!(outcome, CommitOutcome::Committed { .. }));
                out.push((i, digest.to_string(), pos.size));
            }
            out
        }));
    }
    let mut all = Vec::with_capacity(blobs);
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    eprintln!("{} blobs in {:.1?}", all.len(), started.elapsed());
    // Manifests use blobs from the first two thirds of each repository's share only.
    let usable: Vec<Vec<&(usize, String, u64)>> = (0..REPOS)
        .map(|r| {
            let mine: Vec<_> = all.iter().filter(|b| b.0 % REPOS == r).collect();
            let n = mine.len() * 2 / 3;
            mine.into_iter().take(n.max(5)).collect()
        })
        .collect();
    let started = std::time::Instant::now();
    for m in 0..manifests {
        let r = m % REPOS;
        let pool = &usable[r];
        let pick = |k: usize| pool[(m / REPOS * 5 + k * 7 + m) % pool.len()];
        let config = pick(0);
        let layers: Vec<_> = (1..5).map(pick).collect();
        let body = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config.1, "size": config.2},
            "layers": layers.iter().map(|l| serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": l.1, "size": l.2})).collect::<Vec<_>>(),
            "annotations": {"n": m.to_string()},
        });
        let payload = serde_json::to_vec(&body).unwrap();
        let digest = Algorithm::Sha256.digest_of(&payload).to_string();
        let mut blob_refs: Vec<String> = std::iter::once(config)
            .chain(layers.iter().copied())
            .map(|b| b.1.clone())
            .collect();
        blob_refs.sort();
        blob_refs.dedup();
        let kind = m % 4; // 0,1 tagged; 2 untagged; 3 deleted
        meta.put_manifest(&NewManifest {
            repository_id: repo_ids[r],
            digest: digest.clone(),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            payload,
            artifact_type: None,
            subject_digest: None,
            annotations: None,
            blob_refs,
            manifest_refs: Vec::new(),
            tag: (kind < 2).then(|| format!("t{m}")),
            immutable_tag: false,
        })
        .await
        .unwrap();
        if kind == 3 {
            meta.delete_manifest(repo_ids[r], &digest, &|_| false)
                .await
                .unwrap();
        }
    }
    eprintln!("{manifests} manifests in {:.1?}", started.elapsed());
}
