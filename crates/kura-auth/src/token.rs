//! Docker registry bearer tokens: JWTs (HS256) carrying the granted `access` list, as the
//! Docker token authentication specification describes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::{AuthError, Identity, Principal, Result, RobotRef, UserRef};

const ISSUER: &str = "kura";

/// One entry of a token's `access` claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: String,
    exp: u64,
    nbf: u64,
    iat: u64,
    jti: String,
    access: Vec<Grant>,
    /// Kura user id (absent for anonymous tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kura_uid: Option<i64>,
    #[serde(default)]
    kura_admin: bool,
    /// Kura robot id, for tokens issued to robot accounts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kura_robot: Option<i64>,
}

/// The token endpoint's answer (both field names, as clients differ).
#[derive(Debug, Clone, Serialize)]
pub struct TokenResponse {
    pub token: String,
    pub access_token: String,
    pub expires_in: u64,
    pub issued_at: String,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn issue(
    key: &[u8],
    service: &str,
    identity: &Identity,
    access: Vec<Grant>,
    ttl: Duration,
) -> TokenResponse {
    let iat = now();
    let (sub, uid, admin, robot) = match &identity.principal {
        Principal::User(u) => (u.username.clone(), Some(u.id), u.admin, None),
        Principal::Robot(r) => (r.name.clone(), None, false, Some(r.id)),
        Principal::Anonymous => (String::new(), None, false, None),
    };
    let claims = Claims {
        iss: ISSUER.into(),
        sub,
        aud: service.into(),
        exp: iat + ttl.as_secs(),
        nbf: iat.saturating_sub(1),
        iat,
        jti: hex::encode(rand::random::<[u8; 16]>()),
        access,
        kura_uid: uid,
        kura_admin: admin,
        kura_robot: robot,
    };
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(key),
    )
    .expect("HS256 signing cannot fail");
    TokenResponse {
        access_token: token.clone(),
        token,
        expires_in: ttl.as_secs(),
        issued_at: rfc3339(iat),
    }
}

pub fn verify(key: &[u8], service: &str, token: &str) -> Result<Identity> {
    let mut v = Validation::new(Algorithm::HS256);
    v.set_issuer(&[ISSUER]);
    v.set_audience(&[service]);
    v.leeway = 5;
    let data = jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_secret(key), &v)
        .map_err(|_| AuthError::BadCredentials)?;
    let c = data.claims;
    let principal = match (c.kura_uid, c.kura_robot) {
        (Some(id), _) => Principal::User(UserRef {
            id,
            username: c.sub,
            admin: c.kura_admin,
        }),
        // A robot's token carries its grants; its permissions are not needed again.
        (None, Some(id)) => Principal::Robot(RobotRef {
            id,
            name: c.sub,
            permissions: Vec::new(),
        }),
        (None, None) => Principal::Anonymous,
    };
    Ok(Identity {
        principal,
        grants: Some(c.access),
    })
}

/// Seconds since the epoch as an RFC 3339 UTC timestamp.
pub fn rfc3339(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm), valid for the whole u64 range we use.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_392_000), "2026-11-23T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn round_trip_and_tampering() {
        let key = b"0123456789abcdef0123456789abcdef";
        let id = Identity {
            principal: Principal::User(UserRef {
                id: 3,
                username: "alice".into(),
                admin: false,
            }),
            grants: None,
        };
        let grant = Grant {
            kind: "repository".into(),
            name: "p/app".into(),
            actions: vec!["pull".into()],
        };
        let t = issue(
            key,
            "kura",
            &id,
            vec![grant.clone()],
            Duration::from_secs(60),
        );
        let back = verify(key, "kura", &t.token).unwrap();
        assert_eq!(back.principal, id.principal);
        assert_eq!(back.grants, Some(vec![grant]));
        assert!(verify(b"another key, another registry!!!", "kura", &t.token).is_err());
        assert!(verify(key, "other-service", &t.token).is_err());
        let mut forged = t.token.clone();
        forged.pop();
        assert!(verify(key, "kura", &forged).is_err());
    }
}
