//! The audit hash chain against real databases (SQLite always; PostgreSQL at
//! `KURA_TEST_PG_URL`): concurrent writers produce one contiguous chain, and verification
//! names the first record that was modified, removed or cut off, while a purge is not an error.

use std::sync::Arc;

use kura_metadata::sql::SqlOptions;
use kura_metadata::{AuditEntry, OpsStore, SqlStore};
use kura_ops::audit::verify;

fn entry(i: usize) -> AuditEntry {
    AuditEntry {
        at: 1_700_000_000_000 + i as i64,
        actor: format!("user{}", i % 3),
        actor_kind: "user".into(),
        source_ip: Some("127.0.0.1".into()),
        action: "push".into(),
        resource_type: "artifact".into(),
        resource: format!("lib/app:v{i}"),
        project: Some("lib".into()),
        result: "success".into(),
        detail: format!("{{\"n\":{i}}}"),
        request_id: Some(format!("req-{i}")),
    }
}

async fn sqlite() -> (tempfile::TempDir, Arc<SqlStore>, String) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("m.db").display());
    let s = SqlStore::connect(&url, &SqlOptions::default())
        .await
        .unwrap();
    (dir, Arc::new(s), url)
}

async fn postgres() -> Option<(Arc<SqlStore>, String)> {
    let Ok(base) = std::env::var("KURA_TEST_PG_URL") else {
        assert!(
            std::env::var("KURA_TEST_ALLOW_NO_PG").is_ok(),
            "KURA_TEST_PG_URL is not set: run through scripts/test or set KURA_TEST_ALLOW_NO_PG=1"
        );
        return None;
    };
    let base = base.trim_end_matches('/').to_string();
    let admin = sqlx::PgPool::connect(&format!("{base}/postgres"))
        .await
        .unwrap();
    let name = format!("kura_audit_{}", uuid::Uuid::new_v4().simple());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .unwrap();
    let url = format!("{base}/{name}");
    let s = SqlStore::connect(&url, &SqlOptions::default())
        .await
        .unwrap();
    Some((Arc::new(s), url))
}

/// Runs one SQL statement on the database behind `url` (the tamperer's access).
async fn tamper(url: &str, sql: &str) {
    if url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(url).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
            .execute(&pool)
            .await
            .unwrap();
    } else {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
            .execute(&pool)
            .await
            .unwrap();
    }
}

async fn concurrent_writers_make_one_chain(store: Arc<SqlStore>) {
    let tasks: Vec<_> = (0..8)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for b in 0..5 {
                    let batch: Vec<_> = (0..7).map(|i| entry(w * 100 + b * 10 + i)).collect();
                    store.append_audit(&batch).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let report = verify(store.as_ref()).await.unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.records_checked, 8 * 5 * 7);
    assert_eq!((report.first_seq, report.last_seq), (Some(1), Some(280)));
}

async fn tampering_is_found(store: Arc<SqlStore>, url: &str) {
    let entries: Vec<_> = (0..20).map(entry).collect();
    store.append_audit(&entries).await.unwrap();
    assert!(verify(store.as_ref()).await.unwrap().ok);

    // A modified field of record 7.
    tamper(url, "UPDATE audit_log SET actor = 'mallory' WHERE seq = 7").await;
    let r = verify(store.as_ref()).await.unwrap();
    assert!(!r.ok);
    let b = r.broken.unwrap();
    assert_eq!(b.seq, 7, "{b:?}");
    assert!(b.reason.contains("modified"), "{b:?}");
    assert_eq!(r.records_checked, 6);
    tamper(url, "UPDATE audit_log SET actor = 'user0' WHERE seq = 7").await;
    assert!(
        verify(store.as_ref()).await.unwrap().ok,
        "restored content verifies again"
    );

    // A removed record in the middle.
    tamper(url, "DELETE FROM audit_log WHERE seq = 12").await;
    let b = verify(store.as_ref()).await.unwrap().broken.unwrap();
    assert_eq!(b.seq, 12, "{b:?}");
    assert!(b.reason.contains("missing"), "{b:?}");
}

async fn cut_tail_and_purge(store: Arc<SqlStore>, url: &str) {
    let entries: Vec<_> = (0..10).map(entry).collect();
    store.append_audit(&entries).await.unwrap();
    // A purge moves the anchor: what remains still verifies.
    let removed = store.purge_audit(1_700_000_000_000 + 4).await.unwrap();
    assert_eq!(removed, 4);
    let r = verify(store.as_ref()).await.unwrap();
    assert!(r.ok, "{r:?}");
    assert_eq!((r.first_seq, r.records_checked), (Some(5), 6));
    // Deleting the oldest remaining records without moving the anchor is not a purge.
    tamper(url, "DELETE FROM audit_log WHERE seq = 5").await;
    let b = verify(store.as_ref()).await.unwrap().broken.unwrap();
    assert_eq!(b.seq, 5, "{b:?}");
    // Nor is cutting off the end.
    let more: Vec<_> = (10..12).map(entry).collect();
    store.append_audit(&more).await.unwrap();
    tamper(url, "DELETE FROM audit_log WHERE seq >= 11").await;
    tamper(url, "UPDATE audit_head SET purged_seq = 5, purged_hash = (SELECT prev_hash FROM audit_log WHERE seq = 6) WHERE id = 1").await;
    let b = verify(store.as_ref()).await.unwrap().broken.unwrap();
    assert_eq!(b.seq, 11, "{b:?}");
    assert!(b.reason.contains("removed from the end"), "{b:?}");
}

#[tokio::test]
async fn concurrent_writers_sqlite() {
    let (_d, s, _) = sqlite().await;
    concurrent_writers_make_one_chain(s).await;
}

#[tokio::test]
async fn concurrent_writers_postgres() {
    if let Some((s, _)) = postgres().await {
        concurrent_writers_make_one_chain(s).await;
    }
}

#[tokio::test]
async fn tampering_is_found_sqlite() {
    let (_d, s, url) = sqlite().await;
    tampering_is_found(s, &url).await;
}

#[tokio::test]
async fn tampering_is_found_postgres() {
    if let Some((s, url)) = postgres().await {
        tampering_is_found(s, &url).await;
    }
}

#[tokio::test]
async fn purge_and_cut_tail_sqlite() {
    let (_d, s, url) = sqlite().await;
    cut_tail_and_purge(s, &url).await;
}

#[tokio::test]
async fn purge_and_cut_tail_postgres() {
    if let Some((s, url)) = postgres().await {
        cut_tail_and_purge(s, &url).await;
    }
}

#[test]
fn webhook_signature_is_hmac_sha256() {
    // RFC 4231, test case 2.
    assert_eq!(
        kura_ops::webhooks::signature("Jefe", b"what do ya want for nothing?"),
        "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
}
