//! `Auth` rules exercised directly over a real SQLite store (no HTTP).

use std::sync::Arc;
use std::time::Duration;

use kura_auth::{Action, Auth, AuthConfig, AuthError, AuthMode, Denial, Identity};
use kura_metadata::AccessStore;
use kura_metadata::sql::{SqlOptions, SqlStore};

async fn local_auth() -> (tempfile::TempDir, Auth) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("k.db").display());
    let store: Arc<dyn AccessStore> = Arc::new(
        SqlStore::connect(&url, &SqlOptions::default())
            .await
            .unwrap(),
    );
    let auth = Auth::new(
        store,
        AuthConfig {
            mode: AuthMode::Local,
            admin_password: Some("admin-pass-123".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    (dir, auth)
}

#[tokio::test]
async fn repeated_failures_lock_a_username_out_for_a_while() {
    let (_d, auth) = local_auth().await;
    for _ in 0..5 {
        assert!(matches!(
            auth.verify_password("admin", "wrong").await,
            Err(AuthError::BadCredentials)
        ));
    }
    // The sixth failure locks the name for 1 s; even the right password waits.
    assert!(auth.verify_password("admin", "wrong").await.is_err());
    assert!(matches!(
        auth.verify_password("admin", "admin-pass-123").await,
        Err(AuthError::Throttled(_))
    ));
    // Unknown names are throttled the same way (no user enumeration).
    for _ in 0..6 {
        let _ = auth.verify_password("nobody", "x").await;
    }
    assert!(matches!(
        auth.verify_password("nobody", "x").await,
        Err(AuthError::Throttled(_))
    ));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(
        auth.verify_password("admin", "admin-pass-123")
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn pushes_need_an_existing_project_even_for_admins() {
    let (_d, auth) = local_auth().await;
    let admin = auth
        .verify_password("admin", "admin-pass-123")
        .await
        .unwrap();
    let admin = Identity {
        principal: kura_auth::Principal::User(admin),
        grants: None,
    };
    assert_eq!(
        auth.authorize(&admin, "nope/app", &[Action::Push])
            .await
            .unwrap(),
        Err(Denial::ProjectMissing("nope".into()))
    );
    assert_eq!(
        auth.authorize(&Identity::anonymous(), "nope/app", &[Action::Pull])
            .await
            .unwrap(),
        Err(Denial::NeedsAuthentication)
    );
    auth.create_project(&admin, "nope", false).await.unwrap();
    assert_eq!(
        auth.authorize(&admin, "nope/app", &[Action::Push])
            .await
            .unwrap(),
        Ok(())
    );
    // A token asking for push on a missing project gets pull (and list) at most.
    let t = auth
        .issue_token(&admin, &["repository:ghost/x:pull,push".to_string()])
        .await
        .unwrap();
    let id = auth
        .authenticate(Some(&format!("Bearer {}", t.token)))
        .await
        .unwrap();
    let grants = id.grants.unwrap();
    assert_eq!(
        grants[0].actions,
        vec!["pull".to_string(), "list".to_string()]
    );
}
