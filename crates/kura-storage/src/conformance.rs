//! The behaviour every [`BlobStore`] must have, as one suite that each backend's tests call.
//! Panics (test failures) on any deviation.

use bytes::Bytes;
use futures_util::{StreamExt, stream};
use kura_oci::{Algorithm, Digest};

use crate::{BlobStore, ByteRange, ByteStream, StorageError, UploadPosition};

async fn collect(mut s: ByteStream) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(chunk) = s.next().await {
        out.extend_from_slice(&chunk.expect("read chunk"));
    }
    out
}

fn chunks(parts: &[&[u8]]) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> + Unpin {
    stream::iter(
        parts
            .iter()
            .map(|p| Ok(Bytes::copy_from_slice(p)))
            .collect::<Vec<_>>(),
    )
}

/// Checks what an unfinished upload holds, where the backend can read uploads back.
async fn assert_upload_holds(store: &dyn BlobStore, id: &str, at: &UploadPosition, want: &[u8]) {
    match store.read_upload(id, at).await {
        Ok(s) => assert_eq!(collect(s).await, want),
        Err(StorageError::Unsupported(_)) => {}
        Err(e) => panic!("read_upload: {e}"),
    }
}

/// Runs every check against `store`.
///
/// Backends whose uploads leave temporary objects are also checked by their own tests for
/// leftovers after commit and abort.
pub async fn run_all(store: &dyn BlobStore) {
    upload_commit_read(store).await;
    large_blob_reads(store).await;
    whole_blobs_put_at_once(store).await;
    resume_discards_unrecorded_tail(store).await;
    abort_and_missing(store).await;
    listing_pages_in_key_order(store).await;
    store.check().await.expect("check");
}

/// `list_blobs` returns committed blobs (never uploads in progress) in key order, pages by
/// key, and each listed key names the upload it came from.
async fn listing_pages_in_key_order(store: &dyn BlobStore) {
    let mut keys = Vec::new();
    for i in 0..5 {
        let id = format!("suite-list-{i}");
        let data = format!("listed blob {i}");
        let digest = Algorithm::Sha256.digest_of(data.as_bytes());
        let pos = store.create_upload(&id).await.unwrap();
        let pos = store
            .append_upload(&id, &pos, &mut chunks(&[data.as_bytes()]))
            .await
            .unwrap();
        let key = store.commit_upload(&id, &pos, &digest).await.unwrap();
        assert_eq!(crate::upload_id_of_key(&key), Some(id.as_str()), "{key}");
        keys.push((key, data.len() as u64));
    }
    let pending = store.create_upload("suite-list-pending").await.unwrap();
    keys.sort();
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.list_blobs(after.as_deref(), 2).await.unwrap();
        assert!(page.len() <= 2);
        let Some(last) = page.last() else { break };
        after = Some(last.key.clone());
        for o in page {
            assert!(o.modified_ms > 0);
            seen.push((o.key, o.size));
        }
    }
    let sorted = {
        let mut s = seen.clone();
        s.sort();
        s
    };
    assert_eq!(seen, sorted, "listing is in key order");
    for k in &keys {
        assert!(seen.contains(k), "{k:?} listed");
    }
    assert!(
        !seen.iter().any(|(k, _)| k.contains("suite-list-pending")),
        "uploads in progress are not listed"
    );
    for (key, _) in &keys {
        store.delete_blob(key).await.unwrap();
    }
    store
        .abort_upload("suite-list-pending", &pending)
        .await
        .unwrap();
}

async fn upload_commit_read(store: &dyn BlobStore) {
    let data = b"hello, storehouse";
    let digest = Algorithm::Sha256.digest_of(data);

    let id = "suite-upload-1";
    let pos = store.create_upload(id).await.unwrap();
    assert_eq!(pos.size, 0);
    let pos = store
        .append_upload(id, &pos, &mut chunks(&[b"hello, ", b"store"]))
        .await
        .unwrap();
    assert_eq!(pos.size, 12);
    // What a caller does before recording a position; it changes nothing visible.
    store.sync_upload(id, &pos).await.unwrap();
    let pos = store
        .append_upload(id, &pos, &mut chunks(&[b"house"]))
        .await
        .unwrap();
    assert_eq!(pos.size, data.len() as u64);
    assert_upload_holds(store, id, &pos, data).await;
    let key = store.commit_upload(id, &pos, &digest).await.unwrap();

    assert_eq!(
        store.blob_size(&key).await.unwrap(),
        Some(data.len() as u64)
    );
    assert_eq!(
        collect(store.read_blob(&key, None).await.unwrap()).await,
        data
    );
    let r = ByteRange { start: 7, end: 11 };
    assert_eq!(
        collect(store.read_blob(&key, Some(r)).await.unwrap()).await,
        b"store"
    );
    let r = ByteRange { start: 16, end: 16 };
    assert_eq!(
        collect(store.read_blob(&key, Some(r)).await.unwrap()).await,
        b"e"
    );

    // Committing the same content again is harmless, whatever key it gets.
    let pos = store.create_upload("suite-upload-2").await.unwrap();
    let pos = store
        .append_upload("suite-upload-2", &pos, &mut chunks(&[data]))
        .await
        .unwrap();
    let key2 = store
        .commit_upload("suite-upload-2", &pos, &digest)
        .await
        .unwrap();
    assert_eq!(
        collect(store.read_blob(&key, None).await.unwrap()).await,
        data
    );
    assert_eq!(
        collect(store.read_blob(&key2, None).await.unwrap()).await,
        data
    );
    if key2 != key {
        store.delete_blob(&key2).await.unwrap();
        assert_eq!(
            collect(store.read_blob(&key, None).await.unwrap()).await,
            data
        );
    }

    store.delete_blob(&key).await.unwrap();
    assert_eq!(store.blob_size(&key).await.unwrap(), None);
    store.delete_blob(&key).await.unwrap();
}

/// A blob of several read chunks (backends read in pieces of their own choosing): the whole
/// blob, and ranges that start and end inside, across and exactly at likely piece boundaries.
async fn large_blob_reads(store: &dyn BlobStore) {
    let data: Vec<u8> = (0..700 * 1024u32)
        .map(|i| (i * 7 + i / 251) as u8)
        .collect();
    let digest = Algorithm::Sha256.digest_of(&data);
    let id = "suite-upload-large";
    let pos = store.create_upload(id).await.unwrap();
    let pos = store
        .append_upload(id, &pos, &mut chunks(&[&data[..100_000], &data[100_000..]]))
        .await
        .unwrap();
    let key = store.commit_upload(id, &pos, &digest).await.unwrap();
    assert!(collect(store.read_blob(&key, None).await.unwrap()).await == data);
    let k = 1024u64;
    for (start, end) in [
        (0, 0),
        (0, 64 * k - 1),
        (0, 64 * k),
        (64 * k - 1, 64 * k),
        (1, 256 * k),
        (256 * k - 1, 512 * k + 1),
        (100, 700 * k - 1),
        (700 * k - 1, 700 * k - 1),
    ] {
        let r = ByteRange { start, end };
        let got = collect(store.read_blob(&key, Some(r)).await.unwrap()).await;
        assert!(
            got == data[start as usize..=end as usize],
            "range {start}-{end}: {} bytes",
            got.len()
        );
    }
    store.delete_blob(&key).await.unwrap();
}

/// `put_blob`: a blob held in memory (several chunks, or none) stored and committed at once.
async fn whole_blobs_put_at_once(store: &dyn BlobStore) {
    let data = b"configs are small";
    let digest = Algorithm::Sha256.digest_of(data);
    store.create_upload("suite-put-1").await.unwrap();
    let parts = vec![
        Bytes::from_static(b"configs "),
        Bytes::from_static(b"are small"),
    ];
    let key = store.put_blob("suite-put-1", parts, &digest).await.unwrap();
    assert_eq!(
        collect(store.read_blob(&key, None).await.unwrap()).await,
        data
    );
    assert_eq!(
        store.blob_size(&key).await.unwrap(),
        Some(data.len() as u64)
    );
    store.delete_blob(&key).await.unwrap();

    let empty = Algorithm::Sha256.digest_of(b"");
    store.create_upload("suite-put-2").await.unwrap();
    let key = store
        .put_blob("suite-put-2", Vec::new(), &empty)
        .await
        .unwrap();
    assert_eq!(store.blob_size(&key).await.unwrap(), Some(0));
    assert!(
        collect(store.read_blob(&key, None).await.unwrap())
            .await
            .is_empty()
    );
    store.delete_blob(&key).await.unwrap();
}

async fn resume_discards_unrecorded_tail(store: &dyn BlobStore) {
    let id = "suite-upload-3";
    let p0 = store.create_upload(id).await.unwrap();
    let p1 = store
        .append_upload(id, &p0, &mut chunks(&[b"abc"]))
        .await
        .unwrap();
    // An append whose new position was never recorded (the caller crashed) ...
    let _lost = store
        .append_upload(id, &p1, &mut chunks(&[b"XXXX"]))
        .await
        .unwrap();
    // ... is overwritten by the next append from the recorded position.
    let p2 = store
        .append_upload(id, &p1, &mut chunks(&[b"def"]))
        .await
        .unwrap();
    assert_upload_holds(store, id, &p2, b"abcdef").await;
    let digest: Digest = Algorithm::Sha256.digest_of(b"abcdef");
    let key = store.commit_upload(id, &p2, &digest).await.unwrap();
    assert_eq!(
        collect(store.read_blob(&key, None).await.unwrap()).await,
        b"abcdef"
    );
    store.delete_blob(&key).await.unwrap();
}

async fn abort_and_missing(store: &dyn BlobStore) {
    // Aborting after a storage commit whose metadata commit never happened (a crash)
    // must not leave anything the store cannot name again... but must not touch blobs that
    // other uploads committed either.
    let kept_data = b"committed by another upload";
    let kept_digest = Algorithm::Sha256.digest_of(kept_data);
    let p = store.create_upload("suite-upload-6").await.unwrap();
    let p = store
        .append_upload("suite-upload-6", &p, &mut chunks(&[kept_data]))
        .await
        .unwrap();
    let kept = store
        .commit_upload("suite-upload-6", &p, &kept_digest)
        .await
        .unwrap();
    store
        .abort_upload("suite-upload-7", &UploadPosition::default())
        .await
        .unwrap();
    assert_eq!(
        collect(store.read_blob(&kept, None).await.unwrap()).await,
        kept_data
    );
    store.delete_blob(&kept).await.unwrap();

    let id = "suite-upload-4";
    let p = store.create_upload(id).await.unwrap();
    let p = store
        .append_upload(id, &p, &mut chunks(&[b"zzz"]))
        .await
        .unwrap();
    store.abort_upload(id, &p).await.unwrap();
    store.abort_upload(id, &p).await.unwrap();
    let missing = Algorithm::Sha256.digest_of(b"never stored");
    let pos = store.create_upload("suite-upload-5").await.unwrap();
    let key = store
        .commit_upload("suite-upload-5", &pos, &missing)
        .await
        .unwrap();
    store.delete_blob(&key).await.unwrap();
    assert!(matches!(
        store.read_blob(&key, None).await,
        Err(StorageError::NotFound(_))
    ));
}
