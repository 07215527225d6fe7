//! The registry service's rules, exercised without HTTP over the real embedded backends
//! (SQLite metadata + filesystem blobs in a temporary directory).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use kura_metadata::sql::{SqlOptions, SqlStore};
use kura_oci::{Algorithm, Digest, ErrorCode, Reference, RepositoryName};
use kura_registry::{EventSink, Registry, RegistryConfig, RegistryEvent};
use kura_storage::{BlobStore, Durability, FsBlobStore};

struct Recorder(Mutex<Vec<RegistryEvent>>);

impl EventSink for Recorder {
    fn emit(&self, event: &RegistryEvent, _context: &kura_registry::EventContext) {
        self.0.lock().unwrap().push(event.clone());
    }
}

struct Env {
    _dir: tempfile::TempDir,
    reg: Registry,
    meta: Arc<dyn kura_metadata::Metadata>,
    events: Arc<Recorder>,
    blobs_root: std::path::PathBuf,
}

async fn env_with(config: RegistryConfig) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let blobs_root = dir.path().join("blobs");
    let store: Arc<dyn BlobStore> = Arc::new(
        FsBlobStore::open(&blobs_root, Durability::Relaxed)
            .await
            .unwrap(),
    );
    let url = format!("sqlite://{}", dir.path().join("kura.db").display());
    let meta: Arc<dyn kura_metadata::Metadata> = Arc::new(
        SqlStore::connect(&url, &SqlOptions::default())
            .await
            .unwrap(),
    );
    let events = Arc::new(Recorder(Mutex::new(Vec::new())));
    let reg = Registry::new(meta.clone(), store, config, vec![events.clone()]);
    Env {
        _dir: dir,
        reg,
        meta,
        events,
        blobs_root,
    }
}

async fn env() -> Env {
    env_with(RegistryConfig::default()).await
}

fn name(s: &str) -> RepositoryName {
    RepositoryName::parse(s).unwrap()
}

fn chunks(parts: Vec<Vec<u8>>) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> + Unpin {
    stream::iter(parts.into_iter().map(|p| Ok(Bytes::from(p))))
}

async fn push(reg: &Registry, repo: &RepositoryName, data: &[u8]) -> Digest {
    let d = Algorithm::Sha256.digest_of(data);
    reg.push_blob(repo, &d, &mut chunks(vec![data.to_vec()]))
        .await
        .unwrap();
    d
}

fn blob_files(root: &std::path::Path) -> usize {
    walk(&root.join("blobs"))
}

fn walk(p: &std::path::Path) -> usize {
    std::fs::read_dir(p)
        .map(|rd| {
            rd.map(|e| {
                let e = e.unwrap();
                if e.file_type().unwrap().is_dir() {
                    walk(&e.path())
                } else {
                    1
                }
            })
            .sum()
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn chunked_upload_resumes_and_verifies() {
    let e = env().await;
    let repo = name("team/app");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let digest = Algorithm::Sha256.digest_of(&data);
    let up = e.reg.start_upload(&repo).await.unwrap();
    let s = e
        .reg
        .append_upload(
            &repo,
            &up.id,
            Some(0),
            &mut chunks(vec![data[..100_000].to_vec()]),
        )
        .await
        .unwrap();
    assert_eq!(s.size, 100_000);
    // Out of order: 416 with the current position.
    let err = e
        .reg
        .append_upload(&repo, &up.id, Some(5), &mut chunks(vec![vec![1]]))
        .await
        .unwrap_err();
    assert_eq!((err.code, err.status), (ErrorCode::BlobUploadInvalid, 416));
    assert_eq!(err.upload.unwrap().size, 100_000);
    // A streamed append (no offset) continues where the upload stands.
    e.reg
        .append_upload(
            &repo,
            &up.id,
            None,
            &mut chunks(vec![data[100_000..].to_vec()]),
        )
        .await
        .unwrap();
    assert_eq!(
        e.reg.upload_status(&repo, &up.id).await.unwrap().size,
        300_000
    );
    // The upload is not visible from another repository.
    assert_eq!(
        e.reg
            .upload_status(&name("other"), &up.id)
            .await
            .unwrap_err()
            .code,
        ErrorCode::BlobUploadUnknown
    );
    let size = e
        .reg
        .finish_upload(&repo, &up.id, &digest, None, None)
        .await
        .unwrap();
    assert_eq!(size, 300_000);
    assert_committed(&e, &repo, &up.id, &digest, 300_000).await;
}

/// The blob is readable at `size` and its upload session is gone.
async fn assert_committed(
    e: &Env,
    repo: &RepositoryName,
    upload: &str,
    digest: &Digest,
    size: u64,
) {
    assert_eq!(e.reg.stat_blob(repo, digest).await.unwrap().size, size);
    assert_eq!(
        e.reg.upload_status(repo, upload).await.unwrap_err().code,
        ErrorCode::BlobUploadUnknown
    );
}

#[tokio::test]
async fn sha512_digest_is_verified_by_rehashing() {
    let e = env().await;
    let repo = name("r");
    let data = b"sha512 content".to_vec();
    let digest = Algorithm::Sha512.digest_of(&data);
    e.reg
        .push_blob(&repo, &digest, &mut chunks(vec![data.clone()]))
        .await
        .unwrap();
    assert_eq!(
        e.reg.stat_blob(&repo, &digest).await.unwrap().size,
        data.len() as u64
    );
}

#[tokio::test]
async fn wrong_digest_leaves_nothing_visible() {
    let e = env().await;
    let repo = name("r");
    let claimed = Algorithm::Sha256.digest_of(b"what the client claims");
    let err = e
        .reg
        .push_blob(&repo, &claimed, &mut chunks(vec![b"other bytes".to_vec()]))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::DigestInvalid);
    assert_eq!(
        e.reg.stat_blob(&repo, &claimed).await.unwrap_err().code,
        ErrorCode::BlobUnknown
    );
    assert_eq!(blob_files(&e.blobs_root), 0);
    // No upload data is left behind either (the discard runs in the background).
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(walk(&e.blobs_root.join("uploads")), 0);
}

#[tokio::test]
async fn concurrent_pushes_of_one_blob_store_it_once() {
    let e = env().await;
    let data = vec![7u8; 1 << 20];
    let mut tasks = Vec::new();
    for i in 0..8 {
        let reg = e.reg.clone();
        let data = data.clone();
        tasks.push(tokio::spawn(async move {
            let repo = name(&format!("p/r{}", i % 3));
            push(&reg, &repo, &data).await
        }));
    }
    let mut digests = Vec::new();
    for t in tasks {
        digests.push(t.await.unwrap());
    }
    digests.dedup();
    assert_eq!(digests.len(), 1);
    assert_eq!(
        blob_files(&e.blobs_root),
        1,
        "content-addressed: stored once"
    );
    for i in 0..3 {
        assert_eq!(
            e.reg
                .stat_blob(&name(&format!("p/r{i}")), &digests[0])
                .await
                .unwrap()
                .size,
            1 << 20
        );
    }
}

async fn read_all(
    e: &Env,
    repo: &RepositoryName,
    d: &Digest,
    range: Option<(u64, u64)>,
) -> Vec<u8> {
    use futures_util::StreamExt;
    let blob = e.reg.stat_blob(repo, d).await.unwrap();
    let range = range.map(|(start, end)| kura_storage::ByteRange { start, end });
    let mut s = e.reg.read_blob(repo, blob, range).await.unwrap();
    let mut out = Vec::new();
    while let Some(chunk) = s.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    out
}

/// A blob pushed whole and no larger than `inline_blob_max` lives in its metadata row: no
/// file, and it reads back (whole and by range) from there. One byte more goes to storage,
/// and so does a small blob pushed in chunks.
#[tokio::test]
async fn small_whole_pushes_are_kept_inline() {
    let e = env_with(RegistryConfig {
        inline_blob_max: 64,
        ..RegistryConfig::default()
    })
    .await;
    let repo = name("team/app");
    let at_limit: Vec<u8> = (0..64u8).collect();
    let d = push(&e.reg, &repo, &at_limit).await;
    let empty = push(&e.reg, &repo, b"").await;
    assert_eq!(blob_files(&e.blobs_root), 0);
    assert_eq!(read_all(&e, &repo, &d, None).await, at_limit);
    assert_eq!(
        read_all(&e, &repo, &d, Some((10, 19))).await,
        &at_limit[10..20]
    );
    assert_eq!(read_all(&e, &repo, &empty, None).await, b"");
    // A GET's lookup brings the bytes along; a HEAD's does not (`read_all` reads through
    // that one, which looks the bytes up when asked to stream).
    let opened = e.reg.open_blob(&repo, &d).await.unwrap();
    assert_eq!(opened.content.as_deref(), Some(&at_limit[..]));
    assert!(e.reg.stat_blob(&repo, &d).await.unwrap().content.is_none());
    assert!(e.events.0.lock().unwrap().iter().any(
        |ev| matches!(ev, RegistryEvent::BlobPulled { digest, .. } if *digest == d.to_string())
    ));
    // Visible only where it was pushed or mounted, like any blob.
    assert!(e.reg.stat_blob(&name("elsewhere"), &d).await.is_err());
    assert!(
        e.reg
            .mount_blob(&name("team/other"), &d, &repo)
            .await
            .unwrap()
    );
    assert_eq!(read_all(&e, &name("team/other"), &d, None).await, at_limit);

    let over: Vec<u8> = (0..65u8).collect();
    let d_over = push(&e.reg, &repo, &over).await;
    assert_eq!(blob_files(&e.blobs_root), 1);
    assert_eq!(read_all(&e, &repo, &d_over, None).await, over);

    let chunked = b"in two chunks".to_vec();
    let d_chunked = Algorithm::Sha256.digest_of(&chunked);
    let up = e.reg.start_upload(&repo).await.unwrap();
    e.reg
        .append_upload(
            &repo,
            &up.id,
            Some(0),
            &mut chunks(vec![chunked[..4].to_vec()]),
        )
        .await
        .unwrap();
    e.reg
        .finish_upload(
            &repo,
            &up.id,
            &d_chunked,
            Some(4),
            Some(&mut chunks(vec![chunked[4..].to_vec()])),
        )
        .await
        .unwrap();
    assert_eq!(blob_files(&e.blobs_root), 2);
    assert_eq!(read_all(&e, &repo, &d_chunked, None).await, chunked);
    // The same bytes pushed whole later keep the stored copy the first commit recorded.
    push(&e.reg, &name("team/third"), &chunked).await;
    assert_eq!(
        read_all(&e, &name("team/third"), &d_chunked, None).await,
        chunked
    );
}

#[tokio::test]
async fn mount_links_only_what_the_source_sees() {
    let e = env().await;
    let d = push(&e.reg, &name("src"), b"layer").await;
    assert!(
        e.reg
            .mount_blob(&name("dst"), &d, &name("src"))
            .await
            .unwrap()
    );
    assert!(e.reg.stat_blob(&name("dst"), &d).await.is_ok());
    let unknown = Algorithm::Sha256.digest_of(b"nope");
    assert!(
        !e.reg
            .mount_blob(&name("dst"), &unknown, &name("src"))
            .await
            .unwrap()
    );
    assert!(
        !e.reg
            .mount_blob(&name("dst2"), &d, &name("nosuch"))
            .await
            .unwrap()
    );
}

fn image_manifest(config: &Digest, layer: &Digest, subject: Option<&Digest>) -> Vec<u8> {
    let mut m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.to_string(), "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer.to_string(), "size": 5}],
    });
    if let Some(s) = subject {
        m["subject"] = serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": s.to_string(), "size": 10});
        m["annotations"] = serde_json::json!({"k": "v"});
    }
    serde_json::to_vec(&m).unwrap()
}

#[tokio::test]
async fn manifests_tags_referrers_and_deletes() {
    let e = env().await;
    let repo = name("team/app");
    let cfg = push(&e.reg, &repo, b"{}").await;
    let layer = push(&e.reg, &repo, b"layer").await;
    let body = image_manifest(&cfg, &layer, None);
    let pushed = e
        .reg
        .put_manifest(
            &repo,
            &Reference::Tag("v1".into()),
            None,
            Bytes::from(body.clone()),
        )
        .await
        .unwrap();
    assert_eq!(pushed.digest, Algorithm::Sha256.digest_of(&body));
    let got = e
        .reg
        .get_manifest(&repo, &Reference::Tag("v1".into()), true)
        .await
        .unwrap();
    assert_eq!(got.payload.unwrap().as_ref(), &body[..]);

    // A referrer whose subject does not exist yet is accepted.
    let sig = image_manifest(&cfg, &layer, Some(&pushed.digest));
    let sig_d = Algorithm::Sha256.digest_of(&sig);
    let r = e
        .reg
        .put_manifest(
            &repo,
            &Reference::Digest(sig_d.clone()),
            None,
            Bytes::from(sig),
        )
        .await
        .unwrap();
    assert_eq!(r.subject.as_ref(), Some(&pushed.digest));
    let idx = e.reg.referrers(&repo, &pushed.digest, None).await.unwrap();
    assert_eq!(idx["manifests"][0]["digest"], sig_d.to_string());
    assert_eq!(idx["manifests"][0]["annotations"]["k"], "v");
    assert_eq!(
        idx["manifests"][0]["artifactType"],
        "application/vnd.oci.image.config.v1+json"
    );

    // Missing layer → MANIFEST_BLOB_UNKNOWN and nothing stored.
    let missing = Algorithm::Sha256.digest_of(b"missing");
    let err = e
        .reg
        .put_manifest(
            &repo,
            &Reference::Tag("bad".into()),
            None,
            Bytes::from(image_manifest(&cfg, &missing, None)),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::ManifestBlobUnknown);
    assert!(e.reg.list_tags(&repo, None, 10).await.unwrap().tags == vec!["v1"]);

    // Delete by tag keeps the manifest; delete by digest removes it and its tags.
    e.reg
        .put_manifest(
            &repo,
            &Reference::Tag("v2".into()),
            None,
            Bytes::from(body.clone()),
        )
        .await
        .unwrap();
    e.reg
        .delete_manifest(&repo, &Reference::Tag("v1".into()))
        .await
        .unwrap();
    assert!(
        e.reg
            .get_manifest(&repo, &Reference::Digest(pushed.digest.clone()), false)
            .await
            .is_ok()
    );
    e.reg
        .delete_manifest(&repo, &Reference::Digest(pushed.digest.clone()))
        .await
        .unwrap();
    assert_eq!(
        e.reg
            .get_manifest(&repo, &Reference::Tag("v2".into()), false)
            .await
            .unwrap_err()
            .code,
        ErrorCode::ManifestUnknown
    );
    let events = e.events.0.lock().unwrap();
    assert!(events.iter().any(|ev| matches!(ev, RegistryEvent::ManifestDeleted { tags, .. } if tags == &vec!["v2".to_string()])));
    assert!(
        events
            .iter()
            .any(|ev| matches!(ev, RegistryEvent::TagDeleted { tag, .. } if tag == "v1"))
    );
}

#[tokio::test]
async fn deletes_can_be_disabled() {
    let e = env_with(RegistryConfig {
        delete_enabled: false,
        ..Default::default()
    })
    .await;
    let repo = name("r");
    let d = push(&e.reg, &repo, b"x").await;
    let err = e.reg.delete_blob(&repo, &d).await.unwrap_err();
    assert_eq!((err.code, err.status), (ErrorCode::Unsupported, 405));
}

#[tokio::test]
async fn expired_uploads_are_purged() {
    let e = env_with(RegistryConfig {
        upload_expiry: Duration::from_millis(0),
        ..Default::default()
    })
    .await;
    let repo = name("r");
    let up = e.reg.start_upload(&repo).await.unwrap();
    e.reg
        .append_upload(&repo, &up.id, None, &mut chunks(vec![vec![1, 2, 3]]))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(e.reg.purge_stale_uploads().await.unwrap(), 1);
    assert_eq!(
        e.reg.upload_status(&repo, &up.id).await.unwrap_err().code,
        ErrorCode::BlobUploadUnknown
    );
    assert_eq!(walk(&e.blobs_root.join("uploads")), 0);
}

/// On SQLite with the filesystem backend a new session is kept in memory: it gets a row only
/// when it is about to store bytes, and a small blob pushed whole never needs one.
#[tokio::test]
async fn sessions_get_a_row_only_when_they_store_bytes() {
    let e = env().await;
    let repo = name("pending/r");
    push(&e.reg, &repo, b"creates the repository").await;
    let has_row = |id: String| {
        let meta = e.meta.clone();
        async move { meta.upload(&id).await.unwrap().is_some() }
    };

    // POST + PUT of a small blob: no row at any point, and the session ends with the commit.
    let up = e.reg.start_upload(&repo).await.unwrap();
    assert!(!has_row(up.id.clone()).await);
    assert_eq!(e.reg.upload_status(&repo, &up.id).await.unwrap().size, 0);
    let small = b"small and whole".to_vec();
    let d = Algorithm::Sha256.digest_of(&small);
    e.reg
        .finish_upload(&repo, &up.id, &d, None, Some(&mut chunks(vec![small])))
        .await
        .unwrap();
    assert!(!has_row(up.id.clone()).await);
    let unknown = |r: kura_registry::Result<kura_registry::UploadStatus>| {
        assert_eq!(r.unwrap_err().code, ErrorCode::BlobUploadUnknown)
    };
    unknown(e.reg.upload_status(&repo, &up.id).await);

    // Another repository does not see the session; a wrong start is refused and keeps it.
    let up = e.reg.start_upload(&repo).await.unwrap();
    unknown(e.reg.upload_status(&name("pending/other"), &up.id).await);
    let err = e
        .reg
        .append_upload(&repo, &up.id, Some(5), &mut chunks(vec![vec![1]]))
        .await
        .unwrap_err();
    assert_eq!(err.status, 416);
    assert!(!has_row(up.id.clone()).await);
    // The first PATCH gives it a row before writing.
    e.reg
        .append_upload(&repo, &up.id, Some(0), &mut chunks(vec![vec![7; 10]]))
        .await
        .unwrap();
    assert!(has_row(up.id.clone()).await);
    assert_eq!(e.reg.upload_status(&repo, &up.id).await.unwrap().size, 10);
    let d = Algorithm::Sha256.digest_of(&[7; 10]);
    e.reg
        .finish_upload(&repo, &up.id, &d, None, None)
        .await
        .unwrap();
    assert!(!has_row(up.id.clone()).await);

    // A wrong digest ends a pending session; so does DELETE.
    let up = e.reg.start_upload(&repo).await.unwrap();
    let err = e
        .reg
        .finish_upload(&repo, &up.id, &d, None, Some(&mut chunks(vec![vec![1]])))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::DigestInvalid);
    unknown(e.reg.upload_status(&repo, &up.id).await);
    let up = e.reg.start_upload(&repo).await.unwrap();
    e.reg.cancel_upload(&repo, &up.id).await.unwrap();
    unknown(e.reg.upload_status(&repo, &up.id).await);

    // A blob too large to keep inline gets its row before its bytes are stored.
    let up = e.reg.start_upload(&repo).await.unwrap();
    let big = vec![9u8; 64 * 1024];
    let d = Algorithm::Sha256.digest_of(&big);
    e.reg
        .finish_upload(&repo, &up.id, &d, None, Some(&mut chunks(vec![big])))
        .await
        .unwrap();
    assert!(!has_row(up.id.clone()).await);
    assert_eq!(walk(&e.blobs_root.join("uploads")), 0);

    // Deleting the repository ends its pending sessions.
    let up = e.reg.start_upload(&repo).await.unwrap();
    e.reg.delete_repository(&repo).await.unwrap();
    unknown(e.reg.upload_status(&repo, &up.id).await);

    // A session in a repository that does not exist yet is recorded at once (the POST
    // creates the repository).
    let fresh = name("pending/new");
    let up = e.reg.start_upload(&fresh).await.unwrap();
    assert!(has_row(up.id.clone()).await);
}

#[tokio::test]
async fn expired_pending_sessions_are_purged() {
    let e = env_with(RegistryConfig {
        upload_expiry: Duration::from_millis(0),
        ..Default::default()
    })
    .await;
    let repo = name("r");
    push(&e.reg, &repo, b"creates the repository").await;
    let up = e.reg.start_upload(&repo).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(e.reg.purge_stale_uploads().await.unwrap(), 1);
    assert_eq!(
        e.reg.upload_status(&repo, &up.id).await.unwrap_err().code,
        ErrorCode::BlobUploadUnknown
    );
}

#[tokio::test]
async fn final_chunk_is_checked_against_the_recorded_position() {
    let e = env().await;
    let repo = name("team/app");
    let data: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    let digest = Algorithm::Sha256.digest_of(&data);
    let up = e.reg.start_upload(&repo).await.unwrap();
    e.reg
        .append_upload(
            &repo,
            &up.id,
            Some(0),
            &mut chunks(vec![data[..20_000].to_vec()]),
        )
        .await
        .unwrap();
    // A closing PUT whose chunk starts elsewhere: 416, and the upload is where it was.
    let err = e
        .reg
        .finish_upload(
            &repo,
            &up.id,
            &digest,
            Some(10),
            Some(&mut chunks(vec![data[20_000..].to_vec()])),
        )
        .await
        .unwrap_err();
    assert_eq!((err.code, err.status), (ErrorCode::BlobUploadInvalid, 416));
    assert_eq!(
        e.reg.upload_status(&repo, &up.id).await.unwrap().size,
        20_000
    );
    // The right offset, in several body chunks: committed, readable, session gone.
    let rest: Vec<Vec<u8>> = data[20_000..].chunks(7_000).map(<[u8]>::to_vec).collect();
    let size = e
        .reg
        .finish_upload(
            &repo,
            &up.id,
            &digest,
            Some(20_000),
            Some(&mut chunks(rest)),
        )
        .await
        .unwrap();
    assert_eq!(size, 50_000);
    assert_committed(&e, &repo, &up.id, &digest, 50_000).await;
}

#[tokio::test]
async fn a_failed_closing_put_leaves_the_upload_resumable() {
    let e = env().await;
    let repo = name("team/app");
    let data = b"first part|second part".to_vec();
    let digest = Algorithm::Sha256.digest_of(&data);
    let up = e.reg.start_upload(&repo).await.unwrap();
    e.reg
        .append_upload(&repo, &up.id, None, &mut chunks(vec![data[..11].to_vec()]))
        .await
        .unwrap();
    // The body breaks off after some bytes were written: nothing is recorded past 11.
    let mut broken = stream::iter(vec![
        Ok(Bytes::from_static(b"second")),
        Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "client went away",
        )),
    ]);
    let err = e
        .reg
        .finish_upload(&repo, &up.id, &digest, None, Some(&mut broken))
        .await
        .unwrap_err();
    assert_eq!(err.status, 400);
    assert_eq!(e.reg.upload_status(&repo, &up.id).await.unwrap().size, 11);
    // The retry starts at the recorded position; the stray bytes are cut off.
    e.reg
        .finish_upload(
            &repo,
            &up.id,
            &digest,
            Some(11),
            Some(&mut chunks(vec![data[11..].to_vec()])),
        )
        .await
        .unwrap();
    let mut got = Vec::new();
    let blob = e.reg.stat_blob(&repo, &digest).await.unwrap();
    let mut body = e.reg.read_blob(&repo, blob, None).await.unwrap();
    while let Some(c) = futures_util::StreamExt::next(&mut body).await {
        got.extend_from_slice(&c.unwrap());
    }
    assert_eq!(got, data);
}

#[tokio::test]
async fn manifests_with_more_references_than_one_statement_names() {
    let e = env().await;
    let repo = name("team/big");
    let cfg = push(&e.reg, &repo, b"{}").await;
    // 1,203 layers (more than two statements' worth), one of them listed twice.
    let mut layers = Vec::new();
    for i in 0..1_202u32 {
        layers.push(push(&e.reg, &repo, format!("layer {i}").as_bytes()).await);
    }
    layers.push(layers[7].clone());
    let manifest = |layers: &[Digest]| {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": cfg.to_string(), "size": 2},
            "layers": layers.iter().map(|d| serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": d.to_string(), "size": 7})).collect::<Vec<_>>(),
        }))
        .unwrap()
    };
    let body = manifest(&layers);
    e.reg
        .put_manifest(
            &repo,
            &Reference::Tag("all".into()),
            None,
            Bytes::from(body),
        )
        .await
        .unwrap();
    // Two unknown layers, one in the first chunk of references and one in the last: both
    // reported, nothing stored.
    let unknown_a = Algorithm::Sha256.digest_of(b"never pushed a");
    let unknown_b = Algorithm::Sha256.digest_of(b"never pushed b");
    let mut bad = layers.clone();
    bad[3] = unknown_a.clone();
    bad.push(unknown_b.clone());
    let err = e
        .reg
        .put_manifest(
            &repo,
            &Reference::Tag("bad".into()),
            None,
            Bytes::from(manifest(&bad)),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::ManifestBlobUnknown);
    let detail = err
        .detail
        .expect("detail lists the missing references")
        .to_string();
    assert!(detail.contains(&unknown_a.to_string()), "{detail}");
    assert!(detail.contains(&unknown_b.to_string()), "{detail}");
    assert!(!detail.contains(&layers[0].to_string()), "{detail}");
    assert!(
        e.reg
            .get_manifest(&repo, &Reference::Tag("bad".into()), false)
            .await
            .is_err()
    );
    // Every layer of the stored manifest is still linked.
    for d in &layers {
        e.reg.stat_blob(&repo, d).await.unwrap();
    }
}
