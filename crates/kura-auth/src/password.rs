//! Password hashing: argon2id with the crate's default parameters, on the blocking pool (a hash
//! costs tens of milliseconds of CPU).

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};

use crate::{AuthError, Result};

/// A PHC string for `password`.
pub async fn hash(password: String) -> Result<String> {
    tokio::task::spawn_blocking(move || {
        let salt: [u8; 16] = rand::random();
        Argon2::default()
            .hash_password_with_salt(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| AuthError::Invalid(e.to_string()))
    })
    .await
    .map_err(|e| AuthError::Invalid(e.to_string()))?
}

/// Whether `password` matches `hash`. Without a hash a dummy one is checked, so a missing user
/// costs the same time as a wrong password (no user enumeration by timing).
pub async fn verify(password: String, hash: Option<String>) -> bool {
    tokio::task::spawn_blocking(move || {
        let dummy;
        let phc = match &hash {
            Some(h) => h.as_str(),
            None => {
                dummy = DUMMY.get_or_init(|| {
                    Argon2::default()
                        .hash_password_with_salt(b"no such user", &[7u8; 16])
                        .expect("hash")
                        .to_string()
                });
                dummy.as_str()
            }
        };
        Argon2::default()
            .verify_password(password.as_bytes(), phc)
            .is_ok()
            && hash.is_some()
    })
    .await
    .unwrap_or(false)
}

static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn hash_and_verify() {
        let h = super::hash("correct horse".into()).await.unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(super::verify("correct horse".into(), Some(h.clone())).await);
        assert!(!super::verify("wrong".into(), Some(h)).await);
        assert!(!super::verify("x".into(), None).await);
    }
}
