//! Access control flows of `--auth-mode local`, over HTTP: the `/v2/` challenge, the Docker
//! token endpoint (scopes granted and withheld, anonymous tokens, errors, expired and forged
//! tokens), HTTP Basic on `/v2`, catalog filtering, pushes into missing projects and
//! `auto_create_projects`, `project_creation`, the management API (users, projects, members,
//! settings: CRUD, status codes and error shapes), password changes, disabled users, project
//! deletion while it holds repositories, and the first-administrator bootstrap.
//!
//! The permission matrix of every `/v2` endpoint lives in auth_matrix.rs.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::api::random_bytes;
use common::auth::{
    ADMIN, ADMIN_PASSWORD, Cred, Reg, assert_error, b64_decode, b64_encode, b64url_encode,
    challenge_param, header_str, jwt_claims, jwt_header, jwt_segments, parse_challenge, read_json,
    start_local,
};
use common::{Backends, KuraServer, wait_until};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

fn pw(user: &str) -> String {
    format!("{user}-pass-1")
}

fn user(name: &str) -> Cred {
    Cred::basic(name, &pw(name))
}

async fn make_users(reg: &Reg, names: &[&str]) {
    for n in names {
        reg.create_user(n, &pw(n)).await;
    }
}

/// A member list reduced to `username` and `role` (other fields, such as a membership's
/// repository glob, are not what these tests are about).
fn member_roles(v: &Value) -> Value {
    Value::Array(
        v.as_array()
            .unwrap_or_else(|| panic!("members is not a list: {v}"))
            .iter()
            .map(|m| json!({ "username": m["username"], "role": m["role"] }))
            .collect(),
    )
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Asserts a 401 from `/v2` carrying the Bearer challenge for this server (with `scope` and
/// `error` as given).
fn assert_bearer_challenge(
    reg: &Reg,
    status: StatusCode,
    headers: &reqwest::header::HeaderMap,
    scope: Option<&str>,
    insufficient: bool,
    what: &str,
) {
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}");
    let c = header_str(headers, "www-authenticate")
        .unwrap_or_else(|| panic!("{what}: 401 without WWW-Authenticate"));
    let (scheme, params) = parse_challenge(&c);
    assert_eq!(scheme, "Bearer", "{what}: {c}");
    let realm = format!("{}/token", reg.base);
    assert_eq!(
        challenge_param(&params, "realm"),
        Some(realm.as_str()),
        "{what}: {c}"
    );
    assert_eq!(
        challenge_param(&params, "service"),
        Some("kura"),
        "{what}: {c}"
    );
    assert_eq!(challenge_param(&params, "scope"), scope, "{what}: {c}");
    assert_eq!(
        challenge_param(&params, "error"),
        insufficient.then_some("insufficient_scope"),
        "{what}: {c}"
    );
}

#[test]
fn base64_helpers_round_trip() {
    assert_eq!(b64_encode(b""), "");
    assert_eq!(b64_encode(b"f"), "Zg==");
    assert_eq!(b64_encode(b"fo"), "Zm8=");
    assert_eq!(b64_encode(b"foo"), "Zm9v");
    assert_eq!(
        b64_encode(b"admin:admin-pass-123"),
        "YWRtaW46YWRtaW4tcGFzcy0xMjM="
    );
    for n in 0..40 {
        let data: Vec<u8> = (0..n).map(|i| (i * 37 + 11) as u8).collect();
        assert_eq!(b64_decode(&b64_encode(&data)).unwrap(), data);
        assert_eq!(b64_decode(&b64url_encode(&data)).unwrap(), data);
    }
    // RFC 4231 test case 2, to trust the HMAC used for forging tokens below.
    assert_eq!(
        hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
}

// ---------------------------------------------------------------------------------------------
// /v2/ and Basic
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn v2_base_challenges_and_accepts_basic_and_tokens() {
    let srv = start_local(&[]);
    let reg = Reg::new(&srv);
    make_users(&reg, &["alice"]).await;

    // No credentials: 401 with exactly the documented challenge.
    for method in [Method::GET, Method::HEAD] {
        let resp = reg.send(method.clone(), "/v2/", &Cred::Anonymous).await;
        assert_eq!(resp.status(), 401, "{method} /v2/");
        assert_eq!(
            header_str(resp.headers(), "www-authenticate").as_deref(),
            Some(
                format!(
                    "Bearer realm=\"http://{}/token\",service=\"kura\"",
                    srv.addr
                )
                .as_str()
            ),
            "{method} /v2/"
        );
        assert_eq!(
            header_str(resp.headers(), "docker-distribution-api-version").as_deref(),
            Some("registry/2.0")
        );
        if method == Method::GET {
            let (status, body) = read_json(resp).await;
            assert_error(status, &body, 401, "UNAUTHORIZED", "GET /v2/ anonymous");
        }
    }
    // Behind a TLS proxy the realm follows X-Forwarded-Proto.
    let resp = reg
        .req(Method::GET, "/v2/", &Cred::Anonymous)
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    assert_eq!(
        header_str(resp.headers(), "www-authenticate").as_deref(),
        Some(
            format!(
                "Bearer realm=\"https://{}/token\",service=\"kura\"",
                srv.addr
            )
            .as_str()
        )
    );

    // Basic credentials are accepted directly.
    for cred in [Cred::admin(), user("alice")] {
        let resp = reg.send(Method::GET, "/v2/", &cred).await;
        assert_eq!(resp.status(), 200, "GET /v2/ as {}", cred.describe());
        assert_eq!(resp.text().await.unwrap(), "{}");
    }
    // Bad credentials of every kind: 401 with the challenge.
    for cred in [
        Cred::basic("alice", "wrong-password"),
        Cred::basic("nobody", "whatever-pass"),
        Cred::basic(ADMIN, ""),
        Cred::Raw("Basic !!!not-base64!!!".into()),
        Cred::Raw(format!("Basic {}", b64_encode(b"no-colon-here"))),
        Cred::Raw("Digest username=\"admin\"".into()),
        Cred::Bearer("not.a.token".into()),
        Cred::Bearer("garbage".into()),
    ] {
        let resp = reg.send(Method::GET, "/v2/", &cred).await;
        let status = resp.status();
        let headers = resp.headers().clone();
        assert_bearer_challenge(&reg, status, &headers, None, false, &cred.describe());
    }
    // Any valid token, even an anonymous one without scopes, identifies the client.
    let anon_token = reg.token(&Cred::Anonymous, &[]).await;
    let resp = reg
        .send(Method::GET, "/v2/", &Cred::Bearer(anon_token))
        .await;
    assert_eq!(resp.status(), 200, "GET /v2/ with an anonymous token");
    let alice_token = reg.token(&user("alice"), &[]).await;
    let resp = reg
        .send(Method::GET, "/v2/", &Cred::Bearer(alice_token))
        .await;
    assert_eq!(resp.status(), 200, "GET /v2/ with alice's token");

    // Catalog without credentials: challenged for registry:catalog:*.
    let resp = reg
        .send(Method::GET, "/v2/_catalog", &Cred::Anonymous)
        .await;
    let (status, headers) = (resp.status(), resp.headers().clone());
    assert_bearer_challenge(
        &reg,
        status,
        &headers,
        Some("registry:catalog:*"),
        false,
        "anonymous catalog",
    );
}

#[tokio::test]
async fn basic_auth_on_v2_pushes_and_pulls() {
    let srv = start_local(&[]);
    let reg = Reg::new(&srv);
    make_users(&reg, &["alice", "bob"]).await;
    reg.create_project(&user("alice"), "team", false).await;
    reg.set_member(&user("alice"), "team", "bob", "guest").await;

    let img = reg.push_image(&user("alice"), "team/app", "v1").await;
    // bob (guest) pulls with Basic.
    let resp = reg
        .req(Method::GET, "/v2/team/app/manifests/v1", &user("bob"))
        .header("accept", common::api::OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header_str(resp.headers(), "docker-content-digest").as_deref(),
        Some(img.digest.as_str())
    );
    assert!(resp.bytes().await.unwrap().as_ref() == img.manifest.as_slice());
    let resp = reg
        .send(
            Method::GET,
            &format!("/v2/team/app/blobs/{}", img.config_digest),
            &user("bob"),
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert!(resp.bytes().await.unwrap().as_ref() == img.config.as_slice());
    // bob may not push: 403 DENIED.
    let resp = reg
        .send(Method::POST, "/v2/team/app/blobs/uploads/", &user("bob"))
        .await;
    let (status, body) = read_json(resp).await;
    assert_error(status, &body, 403, "DENIED", "guest push with Basic");
    // Wrong password on a /v2 resource: 401 with a challenge for the resource's scope.
    let resp = reg
        .send(
            Method::GET,
            "/v2/team/app/manifests/v1",
            &Cred::basic("bob", "bad-password"),
        )
        .await;
    let (status, headers) = (resp.status(), resp.headers().clone());
    assert_eq!(status, 401, "wrong password on a manifest GET");
    assert!(
        header_str(&headers, "www-authenticate")
            .unwrap()
            .starts_with("Bearer "),
        "{headers:?}"
    );
    // Anonymous: 401 with a challenge naming the scope.
    let resp = reg
        .send(Method::GET, "/v2/team/app/manifests/v1", &Cred::Anonymous)
        .await;
    let (status, headers) = (resp.status(), resp.headers().clone());
    assert_bearer_challenge(
        &reg,
        status,
        &headers,
        Some("repository:team/app:pull"),
        false,
        "anonymous manifest GET",
    );
}

// ---------------------------------------------------------------------------------------------
// The token endpoint
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn token_endpoint_grants_only_allowed_actions() {
    let srv = start_local(&[]);
    let reg = Reg::new(&srv);
    make_users(&reg, &["pa", "mt", "dev", "gst", "lg", "outsider"]).await;
    let admin = Cred::admin();
    reg.create_project(&admin, "team", false).await;
    reg.create_project(&admin, "open", true).await;
    for (u, role) in [
        ("pa", "project_admin"),
        ("mt", "maintainer"),
        ("dev", "developer"),
        ("gst", "guest"),
        ("lg", "limited_guest"),
    ] {
        reg.set_member(&admin, "team", u, role).await;
    }

    // The response: both field names, the lifetime, the issue time.
    let before = now_secs();
    let resp = reg
        .token_response(&user("dev"), &["repository:team/app:pull,push"])
        .await;
    let (status, body) = read_json(resp).await;
    assert_eq!(status, 200, "{body}");
    let token = body["token"].as_str().expect("token").to_string();
    assert_eq!(
        body["access_token"],
        token.as_str(),
        "access_token == token"
    );
    assert_eq!(body["expires_in"], 300, "default lifetime: {body}");
    let issued_at = body["issued_at"].as_str().expect("issued_at");
    assert!(
        issued_at.len() == 20
            && issued_at.as_bytes()[4] == b'-'
            && issued_at.as_bytes()[10] == b'T'
            && issued_at.ends_with('Z'),
        "issued_at is not RFC 3339 UTC: {issued_at}"
    );
    assert_eq!(jwt_header(&token)["alg"], "HS256");
    let claims = jwt_claims(&token);
    assert_eq!(claims["iss"], "kura", "{claims}");
    assert_eq!(claims["aud"], "kura", "{claims}");
    assert_eq!(claims["sub"], "dev", "{claims}");
    let iat = claims["iat"].as_u64().unwrap();
    assert!(iat >= before && iat <= now_secs() + 1, "{claims}");
    assert_eq!(claims["exp"].as_u64().unwrap(), iat + 300, "{claims}");
    assert_eq!(
        claims["access"],
        json!([{ "type": "repository", "name": "team/app", "actions": ["pull", "push", "list"] }])
    );

    // Grants per subject: exactly the requested actions the subject may perform, plus `list`
    // next to `pull` where the subject may also list tags (limited guests may not).
    let all = "repository:team/app:pull,push,delete";
    let cases: Vec<(Cred, &str, Vec<&str>)> = vec![
        (Cred::admin(), all, vec!["delete", "list", "pull", "push"]),
        (user("pa"), all, vec!["delete", "list", "pull", "push"]),
        (user("mt"), all, vec!["delete", "list", "pull", "push"]),
        (user("dev"), all, vec!["list", "pull", "push"]),
        (user("gst"), all, vec!["list", "pull"]),
        (user("lg"), all, vec!["pull"]),
        (user("outsider"), all, vec![]),
        (Cred::Anonymous, all, vec![]),
        (
            user("dev"),
            "repository:team/app:pull",
            vec!["list", "pull"],
        ),
        (user("dev"), "repository:team/app:delete", vec![]),
        (
            user("dev"),
            "repository:team/app:pull,bogus",
            vec!["list", "pull"],
        ),
        (
            Cred::Anonymous,
            "repository:open/app:pull,push,delete",
            vec!["list", "pull"],
        ),
        (
            user("outsider"),
            "repository:open/app:pull,push",
            vec!["list", "pull"],
        ),
        (
            user("dev"),
            "repository:open/app:pull,push",
            vec!["list", "pull"],
        ),
        (
            Cred::admin(),
            "repository:open/app:pull,push",
            vec!["list", "pull", "push"],
        ),
        // `*` means pull+push+delete: only for those who may do all three.
        (user("mt"), "repository:team/app:*", vec!["*", "list"]),
        (user("dev"), "repository:team/app:*", vec![]),
        (user("dev"), "repository:nothere/app:pull,push", vec![]),
    ];
    for (cred, scope, want) in cases {
        let got = reg.granted(&cred, scope).await;
        assert_eq!(got, want, "{} asking for {scope}", cred.describe());
    }

    // A project that does not exist: never push (not even for an administrator).
    let got = reg
        .granted(&Cred::admin(), "repository:nothere/app:pull,push")
        .await;
    assert!(!got.contains(&"push".to_string()), "{got:?}");

    // Anonymous tokens name nobody.
    let anon = reg
        .token(&Cred::Anonymous, &["repository:open/app:pull"])
        .await;
    let claims = jwt_claims(&anon);
    assert_eq!(claims["sub"], "", "{claims}");
    assert!(claims.get("kura_uid").is_none(), "{claims}");

    // Several scopes, as repeated parameters and space-separated in one parameter.
    for scopes in [
        vec!["repository:team/a:pull", "repository:open/b:pull,push"],
        vec!["repository:team/a:pull repository:open/b:pull,push"],
    ] {
        let t = reg.token(&user("dev"), &scopes).await;
        assert_eq!(
            jwt_claims(&t)["access"],
            json!([
                { "type": "repository", "name": "team/a", "actions": ["pull", "list"] },
                { "type": "repository", "name": "open/b", "actions": ["pull", "list"] },
            ]),
            "{scopes:?}"
        );
    }
    // The catalog scope, and no scope at all.
    let t = reg.token(&user("dev"), &["registry:catalog:*"]).await;
    assert_eq!(
        jwt_claims(&t)["access"],
        json!([{ "type": "registry", "name": "catalog", "actions": ["*"] }])
    );
    let t = reg.token(&user("dev"), &[]).await;
    assert_eq!(jwt_claims(&t)["access"], json!([]));

    // Tokens carry only what they grant, for the repository they name.
    let dev_push = Cred::Bearer(
        reg.token(&user("dev"), &["repository:team/app:pull,push"])
            .await,
    );
    reg.push_blob(&dev_push, "team/app", &random_bytes(10))
        .await;
    let resp = reg
        .send(Method::POST, "/v2/team/other/blobs/uploads/", &dev_push)
        .await;
    let (status, headers) = (resp.status(), resp.headers().clone());
    assert_bearer_challenge(
        &reg,
        status,
        &headers,
        Some("repository:team/other:pull,push"),
        true,
        "a token for team/app used on team/other",
    );
    let dev_pull = Cred::Bearer(reg.token(&user("dev"), &["repository:team/app:pull"]).await);
    let resp = reg
        .send(Method::POST, "/v2/team/app/blobs/uploads/", &dev_pull)
        .await;
    let (status, headers) = (resp.status(), resp.headers().clone());
    assert_bearer_challenge(
        &reg,
        status,
        &headers,
        Some("repository:team/app:pull,push"),
        true,
        "a pull-only token used to push (the developer could push, the token cannot)",
    );
    let gst = Cred::Bearer(
        reg.token(&user("gst"), &["repository:team/app:pull,push"])
            .await,
    );
    let resp = reg
        .send(Method::POST, "/v2/team/app/blobs/uploads/", &gst)
        .await;
    let (status, headers) = (resp.status(), resp.headers().clone());
    assert_bearer_challenge(
        &reg,
        status,
        &headers,
        Some("repository:team/app:pull,push"),
        true,
        "guest's token used to push",
    );

    // Tokens also authenticate the management API.
    let (status, me) = reg
        .api(Method::GET, "/api/v1/users/current", &dev_pull, None)
        .await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["username"], "dev");
}

#[tokio::test]
async fn token_endpoint_errors() {
    let srv = start_local(&[]);
    let reg = Reg::new(&srv);
    make_users(&reg, &["alice"]).await;
    let scope = ["repository:x/y:pull"];

    for (cred, what) in [
        (Cred::basic("alice", "wrong-password"), "wrong password"),
        (Cred::basic("nobody", "some-password"), "unknown user"),
        (Cred::Raw("Basic %%%".into()), "malformed Basic"),
    ] {
        let resp = reg.token_response(&cred, &scope).await;
        assert_eq!(
            header_str(resp.headers(), "www-authenticate").as_deref(),
            Some("Basic realm=\"kura\""),
            "{what}"
        );
        let (status, body) = read_json(resp).await;
        assert_error(status, &body, 401, "UNAUTHORIZED", what);
    }
    // Tokens are not credentials for getting tokens.
    let t = reg.token(&user("alice"), &scope).await;
    let (status, body) = read_json(reg.token_response(&Cred::Bearer(t), &scope).await).await;
    assert_error(status, &body, 401, "UNAUTHORIZED", "Bearer on /token");

    // Another service: 400 INVALID, with or without credentials.
    for cred in [Cred::Anonymous, user("alice")] {
        let resp = reg
            .send(
                Method::GET,
                "/token?service=elsewhere&scope=repository:x/y:pull",
                &cred,
            )
            .await;
        let (status, body) = read_json(resp).await;
        assert_error(status, &body, 400, "INVALID", "wrong service");
    }
    // The right one works.
    let resp = reg
        .send(
            Method::GET,
            "/token?service=kura&scope=repository:x/y:pull",
            &user("alice"),
        )
        .await;
    assert_eq!(resp.status(), 200);

    // In open mode there is no token endpoint.
    let open = KuraServer::start();
    let resp = Reg::new(&open)
        .send(Method::GET, "/token?service=kura", &Cred::Anonymous)
        .await;
    let (status, body) = read_json(resp).await;
    assert_error(status, &body, 404, "NOT_FOUND", "/token in open mode");
}

fn hmac_sha256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(msg);
    let inner = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner);
    outer.finalize().to_vec()
}

/// A JWT with `claims`, signed HS256 with `key`.
fn sign(header: &Value, claims: &Value, key: &[u8]) -> String {
    let input = format!(
        "{}.{}",
        b64url_encode(header.to_string().as_bytes()),
        b64url_encode(claims.to_string().as_bytes())
    );
    let sig = hmac_sha256(key, input.as_bytes());
    format!("{input}.{}", b64url_encode(&sig))
}

#[tokio::test]
async fn expired_and_forged_tokens_are_rejected() {
    let srv = start_local(&["--auth-token-ttl-secs", "1"]);
    let reg = Reg::new(&srv);
    make_users(&reg, &["mallory"]).await;
    reg.create_project(&Cred::admin(), "open", true).await;
    reg.create_project(&Cred::admin(), "vault", false).await;
    reg.push_image(&Cred::admin(), "open/app", "v1").await;
    reg.push_image(&Cred::admin(), "vault/app", "v1").await;

    let scope = "repository:vault/app:pull,push,delete";
    let resp = reg.token_response(&user("mallory"), &[scope]).await;
    let (_, body) = read_json(resp).await;
    assert_eq!(body["expires_in"], 1, "{body}");
    let token = body["token"].as_str().unwrap().to_string();
    let claims = jwt_claims(&token);
    assert_eq!(claims["access"][0]["actions"], json!([]), "{claims}");

    // Forgeries of mallory's token: 401 with a challenge, never access.
    let [h, _, s] = jwt_segments(&token);
    let mut elevated = claims.clone();
    elevated["kura_admin"] = json!(true);
    elevated["access"] = json!([{ "type": "repository", "name": "vault/app", "actions": ["pull", "push", "delete"] }]);
    elevated["exp"] = json!(now_secs() + 3600);
    let tampered = format!("{h}.{}.{s}", b64url_encode(elevated.to_string().as_bytes()));
    let none_alg = format!(
        "{}.{}.",
        b64url_encode(br#"{"alg":"none","typ":"JWT"}"#),
        b64url_encode(elevated.to_string().as_bytes())
    );
    let other_key = sign(
        &json!({ "alg": "HS256", "typ": "JWT" }),
        &elevated,
        b"some key that is not the server's",
    );
    let mut truncated = token.clone();
    truncated.truncate(token.len() - 3);
    for (forged, what) in [
        (tampered, "payload changed, signature kept"),
        (none_alg, "alg none"),
        (other_key, "signed with another key"),
        (truncated, "truncated signature"),
    ] {
        for path in ["/v2/", "/v2/vault/app/manifests/v1"] {
            let resp = reg
                .send(Method::GET, path, &Cred::Bearer(forged.clone()))
                .await;
            assert_eq!(resp.status(), 401, "{what}: GET {path}");
            assert!(
                header_str(resp.headers(), "www-authenticate")
                    .is_some_and(|c| c.starts_with("Bearer ")),
                "{what}: GET {path}"
            );
        }
        let (status, body) = reg
            .api(
                Method::GET,
                "/api/v1/users",
                &Cred::Bearer(forged.clone()),
                None,
            )
            .await;
        assert_error(status, &body, 401, "UNAUTHORIZED", what);
    }

    // An admin token works while fresh, then expires (1 s lifetime, a few seconds of leeway).
    let admin_token = Cred::Bearer(
        reg.token(&Cred::admin(), &["repository:open/app:pull"])
            .await,
    );
    let resp = reg
        .send(Method::GET, "/v2/open/app/manifests/v1", &admin_token)
        .await;
    assert_eq!(resp.status(), 200, "fresh token");
    let deadline = jwt_claims(match &admin_token {
        Cred::Bearer(t) => t,
        _ => unreachable!(),
    })["exp"]
        .as_u64()
        .unwrap();
    let expired = wait_until(Duration::from_secs(30), || {
        std::thread::sleep(Duration::from_millis(200));
        now_secs() > deadline + 6
    });
    assert!(expired);
    for path in ["/v2/", "/v2/open/app/manifests/v1"] {
        let resp = reg.send(Method::GET, path, &admin_token).await;
        let status = resp.status();
        let headers = resp.headers().clone();
        assert_eq!(status, 401, "expired token: GET {path}");
        assert!(
            header_str(&headers, "www-authenticate").is_some_and(|c| c.starts_with("Bearer ")),
            "expired token: {headers:?}"
        );
    }
    let (status, body) = reg
        .api(Method::GET, "/api/v1/users/current", &admin_token, None)
        .await;
    assert_error(
        status,
        &body,
        401,
        "UNAUTHORIZED",
        "expired token on the API",
    );
}

// ---------------------------------------------------------------------------------------------
// Catalog, missing projects, settings
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn catalog_is_filtered_per_user() {
    let srv = start_local(&[]);
    let reg = Reg::new(&srv);
    let admin = Cred::admin();
    make_users(&reg, &["alice", "bob", "carol", "outsider"]).await;
    reg.create_project(&admin, "pub1", true).await;
    for (p, u, role) in [
        ("team-a", "alice", "developer"),
        ("team-b", "bob", "guest"),
        ("team-c", "carol", "limited_guest"),
    ] {
        reg.create_project(&admin, p, false).await;
        reg.set_member(&admin, p, u, role).await;
    }
    for repo in ["pub1/a", "team-a/a", "team-a/b", "team-b/a", "team-c/a"] {
        reg.push_image(&admin, repo, "v1").await;
    }

    let anon_token = Cred::Bearer(reg.token(&Cred::Anonymous, &["registry:catalog:*"]).await);
    let alice_token = Cred::Bearer(reg.token(&user("alice"), &["registry:catalog:*"]).await);
    let cases: Vec<(Cred, Vec<&str>)> = vec![
        (anon_token, vec!["pub1/a"]),
        (user("alice"), vec!["pub1/a", "team-a/a", "team-a/b"]),
        (alice_token, vec!["pub1/a", "team-a/a", "team-a/b"]),
        (user("bob"), vec!["pub1/a", "team-b/a"]),
        // Limited guests pull but do not list.
        (user("carol"), vec!["pub1/a"]),
        (user("outsider"), vec!["pub1/a"]),
        (
            admin.clone(),
            vec!["pub1/a", "team-a/a", "team-a/b", "team-b/a", "team-c/a"],
        ),
    ];
    for (cred, want) in cases {
        let got = reg.catalog(&cred).await;
        assert_eq!(got, want, "catalog as {}", cred.describe());
    }
    // Pagination works on the filtered list.
    let resp = reg
        .send(Method::GET, "/v2/_catalog?n=2", &user("alice"))
        .await;
    let link = header_str(resp.headers(), "link");
    let (_, v) = read_json(resp).await;
    assert_eq!(v["repositories"], json!(["pub1/a", "team-a/a"]));
    let link = link.expect("Link header on a full page");
    assert!(
        link.contains("last=team-a/a") || link.contains("last=team-a%2Fa"),
        "{link}"
    );
    let resp = reg
        .send(
            Method::GET,
            "/v2/_catalog?n=2&last=team-a%2Fa",
            &user("alice"),
        )
        .await;
    let (_, v) = read_json(resp).await;
    assert_eq!(v["repositories"], json!(["team-a/b"]));

    // The project list follows the same visibility (limited guests do see their project).
    for (cred, want) in [
        (user("alice"), vec!["pub1", "team-a"]),
        (user("outsider"), vec!["pub1"]),
        (Cred::Anonymous, vec!["pub1"]),
        (admin.clone(), vec!["pub1", "team-a", "team-b", "team-c"]),
    ] {
        let v = reg
            .api_ok(Method::GET, "/api/v1/projects", &cred, None, 200)
            .await;
        let names: Vec<&str> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, want, "projects as {}", cred.describe());
    }
}

#[tokio::test]
async fn push_into_missing_project_and_auto_create() {
    let srv = start_local(&[]);
    let reg = Reg::new(&srv);
    let admin = Cred::admin();
    make_users(&reg, &["alice", "bob"]).await;

    // By default a push into a missing project is refused, even for an administrator.
    for cred in [admin.clone(), user("alice")] {
        let resp = reg
            .send(Method::POST, "/v2/nope/app/blobs/uploads/", &cred)
            .await;
        let (status, body) = read_json(resp).await;
        assert_error(status, &body, 404, "NAME_UNKNOWN", &cred.describe());
        let resp = reg
            .put_manifest(&cred, "nope/app", "v1", br#"{"schemaVersion":2}"#)
            .await;
        let (status, body) = read_json(resp).await;
        assert_error(status, &body, 404, "NAME_UNKNOWN", &cred.describe());
    }
    let resp = reg
        .send(
            Method::POST,
            "/v2/nope/app/blobs/uploads/",
            &Cred::Anonymous,
        )
        .await;
    assert_eq!(resp.status(), 401, "anonymous push into a missing project");
    // A token for it grants no push; using it is insufficient_scope.
    assert_eq!(
        reg.granted(&user("alice"), "repository:nope/app:pull,push")
            .await,
        Vec::<String>::new()
    );
    let t = Cred::Bearer(
        reg.token(&user("alice"), &["repository:nope/app:pull,push"])
            .await,
    );
    let resp = reg
        .send(Method::POST, "/v2/nope/app/blobs/uploads/", &t)
        .await;
    assert_eq!(resp.status(), 401, "push with a token lacking push");
    // Nothing was created along the way.
    let (status, body) = reg
        .api(Method::GET, "/api/v1/projects/nope", &admin, None)
        .await;
    assert_error(status, &body, 404, "NOT_FOUND", "project nope");

    // auto_create_projects: the pusher's push creates a private project they administer.
    let settings = reg
        .put_settings(json!({ "auto_create_projects": true }))
        .await;
    assert_eq!(settings["auto_create_projects"], "true", "{settings}");
    let img = reg.push_image(&user("alice"), "alicenew/app", "v1").await;
    let p = reg
        .api_ok(
            Method::GET,
            "/api/v1/projects/alicenew",
            &user("alice"),
            None,
            200,
        )
        .await;
    assert_eq!(p["name"], "alicenew");
    assert_eq!(p["public"], false, "auto-created projects are private: {p}");
    let members = reg
        .api_ok(
            Method::GET,
            "/api/v1/projects/alicenew/members",
            &user("alice"),
            None,
            200,
        )
        .await;
    assert_eq!(
        member_roles(&members),
        json!([{ "username": "alice", "role": "project_admin" }])
    );
    // ... and nobody else can read it.
    let resp = reg
        .send(
            Method::GET,
            &format!("/v2/alicenew/app/manifests/{}", img.digest),
            &user("bob"),
        )
        .await;
    let (status, body) = read_json(resp).await;
    assert_error(
        status,
        &body,
        403,
        "DENIED",
        "bob reading alice's new project",
    );

    // Through the token flow: asking for push creates the project, and the token grants push.
    assert_eq!(
        reg.granted(&user("bob"), "repository:bobnew/app:pull,push")
            .await,
        vec!["list", "pull", "push"]
    );
    let t = Cred::Bearer(
        reg.token(&user("bob"), &["repository:bobnew/app:pull,push"])
            .await,
    );
    reg.push_image(&t, "bobnew/app", "v1").await;
    let members = reg
        .api_ok(
            Method::GET,
            "/api/v1/projects/bobnew/members",
            &admin,
            None,
            200,
        )
        .await;
    assert_eq!(
        member_roles(&members),
        json!([{ "username": "bob", "role": "project_admin" }])
    );

    // Anonymous pushes create nothing.
    let resp = reg
        .send(
            Method::POST,
            "/v2/anonnew/app/blobs/uploads/",
            &Cred::Anonymous,
        )
        .await;
    assert_eq!(resp.status(), 401);
    let (status, _) = reg
        .api(Method::GET, "/api/v1/projects/anonnew", &admin, None)
        .await;
    assert_eq!(status, 404, "anonymous push must not create a project");

    // With project_creation = admin_only only administrators' pushes create projects.
    reg.put_settings(json!({ "project_creation": "admin_only" }))
        .await;
    let resp = reg
        .send(
            Method::POST,
            "/v2/alice2/app/blobs/uploads/",
            &user("alice"),
        )
        .await;
    let (status, body) = read_json(resp).await;
    assert_error(
        status,
        &body,
        404,
        "NAME_UNKNOWN",
        "admin_only + auto-create, non-admin",
    );
    reg.push_image(&admin, "admin2/app", "v1").await;
    let members = reg
        .api_ok(
            Method::GET,
            "/api/v1/projects/admin2/members",
            &admin,
            None,
            200,
        )
        .await;
    assert_eq!(
        member_roles(&members),
        json!([{ "username": "admin", "role": "project_admin" }])
    );
}

#[tokio::test]
async fn settings_and_project_creation_admin_only() {
    let srv = start_local(&[]);
    let reg = Reg::new(&srv);
    let admin = Cred::admin();
    make_users(&reg, &["alice"]).await;

    let s = reg
        .api_ok(Method::GET, "/api/v1/settings", &admin, None, 200)
        .await;
    assert_eq!(
        s,
        json!({ "project_creation": "everyone", "auto_create_projects": "false" })
    );
    // Everyone may create projects by default.
    reg.create_project(&user("alice"), "alice-proj", false)
        .await;

    let s = reg
        .put_settings(json!({ "project_creation": "admin_only" }))
        .await;
    assert_eq!(s["project_creation"], "admin_only");
    let (status, body) = reg
        .api(
            Method::POST,
            "/api/v1/projects",
            &user("alice"),
            Some(json!({ "name": "alice-two" })),
        )
        .await;
    assert_error(
        status,
        &body,
        403,
        "DENIED",
        "non-admin creating a project (admin_only)",
    );
    reg.create_project(&admin, "admin-proj", true).await;
    // Anonymous users never create projects.
    let (status, body) = reg
        .api(
            Method::POST,
            "/api/v1/projects",
            &Cred::Anonymous,
            Some(json!({ "name": "anon-proj" })),
        )
        .await;
    assert_error(
        status,
        &body,
        401,
        "UNAUTHORIZED",
        "anonymous project creation",
    );

    // Settings errors.
    for (body, code, want, what) in [
        (
            json!({ "project_creation": "nobody" }),
            400,
            "INVALID",
            "bad value",
        ),
        (
            json!({ "auto_create_projects": "maybe" }),
            400,
            "INVALID",
            "bad boolean",
        ),
        (
            json!({ "no_such_setting": "x" }),
            404,
            "NOT_FOUND",
            "unknown key",
        ),
        (
            json!(["not", "an", "object"]),
            400,
            "INVALID",
            "not an object",
        ),
    ] {
        let (status, v) = reg
            .api(Method::PUT, "/api/v1/settings", &admin, Some(body))
            .await;
        assert_error(status, &v, code, want, what);
    }
    let resp = reg
        .req(Method::PUT, "/api/v1/settings", &admin)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    let (status, v) = read_json(resp).await;
    assert_error(status, &v, 400, "INVALID", "malformed JSON");
    for method in [Method::GET, Method::PUT] {
        let body = (method == Method::PUT).then(|| json!({ "project_creation": "everyone" }));
        let (status, v) = reg
            .api(
                method.clone(),
                "/api/v1/settings",
                &user("alice"),
                body.clone(),
            )
            .await;
        assert_error(status, &v, 403, "DENIED", "settings as a non-admin");
        let (status, v) = reg
            .api(method.clone(), "/api/v1/settings", &Cred::Anonymous, body)
            .await;
        assert_error(status, &v, 401, "UNAUTHORIZED", "settings anonymously");
    }
    // Nothing changed by the refused requests.
    let s = reg
        .api_ok(Method::GET, "/api/v1/settings", &admin, None, 200)
        .await;
    assert_eq!(
        s,
        json!({ "project_creation": "admin_only", "auto_create_projects": "false" })
    );
}

// ---------------------------------------------------------------------------------------------
// Management API
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn users_api_crud_and_errors() {
    let srv = start_local(&[]);
    let reg = Reg::new(&srv);
    let admin = Cred::admin();

    let u = reg
        .api_ok(
            Method::POST,
            "/api/v1/users",
            &admin,
            Some(json!({ "username": "alice", "password": pw("alice"), "email": "alice@example.com" })),
            201,
        )
        .await;
    assert_eq!(u["username"], "alice");
    assert_eq!(u["email"], "alice@example.com");
    assert_eq!(u["admin"], false);
    assert_eq!(u["disabled"], false);
    assert!(u["created_at"].is_string(), "{u}");
    assert!(
        u.get("password").is_none() && u.get("password_hash").is_none(),
        "{u}"
    );
    make_users(&reg, &["bob", "carol"]).await;

    // Errors of POST /api/v1/users.
    let cases: Vec<(Cred, Value, u16, &str, &str)> = vec![
        (
            admin.clone(),
            json!({ "username": "alice", "password": "another-pass" }),
            409,
            "CONFLICT",
            "duplicate",
        ),
        (
            admin.clone(),
            json!({ "username": "dave", "password": "short" }),
            400,
            "INVALID",
            "short password",
        ),
        (
            admin.clone(),
            json!({ "username": "bad name", "password": "long-enough" }),
            400,
            "INVALID",
            "bad username",
        ),
        (
            admin.clone(),
            json!({ "username": "", "password": "long-enough" }),
            400,
            "INVALID",
            "empty username",
        ),
        (
            admin.clone(),
            json!({ "username": "dave", "password": "long-enough", "role": "x" }),
            400,
            "INVALID",
            "unknown field",
        ),
        (
            admin.clone(),
            json!({ "password": "long-enough" }),
            400,
            "INVALID",
            "missing username",
        ),
        (
            user("alice"),
            json!({ "username": "dave", "password": "long-enough" }),
            403,
            "DENIED",
            "non-admin",
        ),
        (
            Cred::Anonymous,
            json!({ "username": "dave", "password": "long-enough" }),
            401,
            "UNAUTHORIZED",
            "anonymous",
        ),
        (
            Cred::basic("alice", "bad-password"),
            json!({ "username": "dave", "password": "long-enough" }),
            401,
            "UNAUTHORIZED",
            "wrong password",
        ),
    ];
    for (cred, body, status, code, what) in cases {
        let resp = reg
            .req(Method::POST, "/api/v1/users", &cred)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(
            header_str(resp.headers(), "content-type").as_deref(),
            Some("application/json"),
            "{what}"
        );
        if status == 401 {
            assert_eq!(
                header_str(resp.headers(), "www-authenticate").as_deref(),
                Some("Basic realm=\"kura\""),
                "{what}"
            );
        }
        let (got, v) = read_json(resp).await;
        assert_error(got, &v, status, code, what);
    }
    // Listing: administrators only, with pagination.
    let list = reg
        .api_ok(Method::GET, "/api/v1/users", &admin, None, 200)
        .await;
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["admin", "alice", "bob", "carol"]);
    let resp = reg.send(Method::GET, "/api/v1/users?n=2", &admin).await;
    let link = header_str(resp.headers(), "link").expect("Link on a full page");
    assert!(link.contains("rel=\"next\""), "{link}");
    let (_, page) = read_json(resp).await;
    assert_eq!(page.as_array().unwrap().len(), 2);
    let (status, v) = reg
        .api(Method::GET, "/api/v1/users", &user("alice"), None)
        .await;
    assert_error(status, &v, 403, "DENIED", "non-admin listing users");

    // Current user.
    let me = reg
        .api_ok(
            Method::GET,
            "/api/v1/users/current",
            &user("alice"),
            None,
            200,
        )
        .await;
    assert_eq!(me["username"], "alice");
    assert_eq!(me["admin"], false);
    let me = reg
        .api_ok(Method::GET, "/api/v1/users/current", &admin, None, 200)
        .await;
    assert_eq!(me["admin"], true);
    let (status, v) = reg
        .api(Method::GET, "/api/v1/users/current", &Cred::Anonymous, None)
        .await;
    assert_error(status, &v, 401, "UNAUTHORIZED", "anonymous current user");

    // Making alice an administrator and back.
    let u = reg
        .api_ok(
            Method::PATCH,
            "/api/v1/users/alice",
            &admin,
            Some(json!({ "admin": true })),
            200,
        )
        .await;
    assert_eq!(u["admin"], true);
    reg.api_ok(Method::GET, "/api/v1/users", &user("alice"), None, 200)
        .await;
    reg.api_ok(
        Method::PATCH,
        "/api/v1/users/alice",
        &admin,
        Some(json!({ "admin": false })),
        200,
    )
    .await;
    let (status, v) = reg
        .api(Method::GET, "/api/v1/users", &user("alice"), None)
        .await;
    assert_error(status, &v, 403, "DENIED", "alice after losing admin");
    for (cred, path, body, status, code, what) in [
        (
            user("alice"),
            "/api/v1/users/bob",
            json!({ "admin": true }),
            403,
            "DENIED",
            "non-admin PATCH",
        ),
        (
            user("alice"),
            "/api/v1/users/alice",
            json!({ "admin": true }),
            403,
            "DENIED",
            "self-promotion",
        ),
        (
            admin.clone(),
            "/api/v1/users/nobody",
            json!({ "admin": true }),
            404,
            "NOT_FOUND",
            "unknown user",
        ),
        (
            admin.clone(),
            "/api/v1/users/bob",
            json!({ "admin": "yes" }),
            400,
            "INVALID",
            "not a boolean",
        ),
        (
            admin.clone(),
            "/api/v1/users/bob",
            json!({ "email": "x" }),
            400,
            "INVALID",
            "unknown field",
        ),
    ] {
        let (got, v) = reg.api(Method::PATCH, path, &cred, Some(body)).await;
        assert_error(got, &v, status, code, what);
    }

    // Deleting users.
    let (status, v) = reg
        .api(Method::DELETE, "/api/v1/users/bob", &user("alice"), None)
        .await;
    assert_error(status, &v, 403, "DENIED", "non-admin deleting");
    let (status, v) = reg
        .api(Method::DELETE, "/api/v1/users/admin", &admin, None)
        .await;
    assert_error(status, &v, 409, "CONFLICT", "deleting yourself");
    // bob is logged in (his credentials are cached) when he is deleted.
    reg.api_ok(
        Method::GET,
        "/api/v1/users/current",
        &user("bob"),
        None,
        200,
    )
    .await;
    let (status, _) = reg
        .api(Method::DELETE, "/api/v1/users/bob", &admin, None)
        .await;
    assert_eq!(status, 204);
    let (status, v) = reg
        .api(Method::GET, "/api/v1/users/current", &user("bob"), None)
        .await;
    assert_error(status, &v, 401, "UNAUTHORIZED", "deleted user");
    assert_eq!(
        reg.send(Method::GET, "/v2/", &user("bob")).await.status(),
        401
    );
    let (status, v) = reg
        .api(Method::DELETE, "/api/v1/users/bob", &admin, None)
        .await;
    assert_error(status, &v, 404, "NOT_FOUND", "deleting a deleted user");
    let list = reg
        .api_ok(Method::GET, "/api/v1/users", &admin, None, 200)
        .await;
    assert_eq!(list.as_array().unwrap().len(), 3, "{list}");
}

#[tokio::test]
async fn projects_and_members_api() {
    let srv = start_local(&[]);
    let reg = Reg::new(&srv);
    let admin = Cred::admin();
    make_users(&reg, &["alice", "bob", "carol", "outsider"]).await;

    let p = reg
        .api_ok(
            Method::POST,
            "/api/v1/projects",
            &user("alice"),
            Some(json!({ "name": "alpha" })),
            201,
        )
        .await;
    assert_eq!(p["name"], "alpha");
    assert_eq!(p["public"], false, "projects are private unless asked: {p}");
    assert!(p["created_at"].is_string(), "{p}");
    // The creator is the project's administrator.
    let m = reg
        .api_ok(
            Method::GET,
            "/api/v1/projects/alpha/members",
            &user("alice"),
            None,
            200,
        )
        .await;
    assert_eq!(
        member_roles(&m),
        json!([{ "username": "alice", "role": "project_admin" }])
    );

    for (body, status, code, what) in [
        (json!({ "name": "alpha" }), 409, "CONFLICT", "duplicate"),
        (json!({ "name": "Alpha" }), 400, "INVALID", "upper case"),
        (json!({ "name": "a/b" }), 400, "INVALID", "two components"),
        (json!({ "name": "" }), 400, "INVALID", "empty"),
        (
            json!({ "name": "ok", "visibility": "x" }),
            400,
            "INVALID",
            "unknown field",
        ),
        (json!({ "public": true }), 400, "INVALID", "no name"),
    ] {
        let (got, v) = reg
            .api(Method::POST, "/api/v1/projects", &admin, Some(body))
            .await;
        assert_error(got, &v, status, code, what);
    }

    // A private project is invisible to non-members (404, so names do not leak).
    for cred in [user("bob"), Cred::Anonymous] {
        for path in ["/api/v1/projects/alpha", "/api/v1/projects/alpha/members"] {
            let (status, v) = reg.api(Method::GET, path, &cred, None).await;
            assert_error(
                status,
                &v,
                404,
                "NOT_FOUND",
                &format!("{path} as {}", cred.describe()),
            );
        }
    }
    let (status, v) = reg
        .api(Method::GET, "/api/v1/projects/nothere", &admin, None)
        .await;
    assert_error(status, &v, 404, "NOT_FOUND", "unknown project");

    // Members.
    let m = reg
        .api_ok(
            Method::PUT,
            "/api/v1/projects/alpha/members/bob",
            &user("alice"),
            Some(json!({ "role": "developer" })),
            200,
        )
        .await;
    assert_eq!(m["username"], "bob", "{m}");
    assert_eq!(m["role"], "developer", "{m}");
    reg.set_member(&user("alice"), "alpha", "carol", "maintainer")
        .await;
    let got = reg
        .api_ok(
            Method::GET,
            "/api/v1/projects/alpha",
            &user("bob"),
            None,
            200,
        )
        .await;
    assert_eq!(got["name"], "alpha");
    let mut members: Vec<(String, String)> = reg
        .api_ok(
            Method::GET,
            "/api/v1/projects/alpha/members",
            &user("bob"),
            None,
            200,
        )
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["username"].as_str().unwrap().to_string(),
                m["role"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    members.sort();
    assert_eq!(
        members,
        [
            ("alice".to_string(), "project_admin".to_string()),
            ("bob".to_string(), "developer".to_string()),
            ("carol".to_string(), "maintainer".to_string()),
        ]
    );
    // Only project admins (and system admins) manage members and the project.
    for (cred, method, path, body, status, code, what) in [
        (
            user("bob"),
            Method::PUT,
            "/api/v1/projects/alpha/members/outsider",
            Some(json!({ "role": "guest" })),
            403,
            "DENIED",
            "developer adding a member",
        ),
        (
            user("carol"),
            Method::PUT,
            "/api/v1/projects/alpha/members/outsider",
            Some(json!({ "role": "guest" })),
            403,
            "DENIED",
            "maintainer adding a member",
        ),
        (
            user("carol"),
            Method::DELETE,
            "/api/v1/projects/alpha/members/bob",
            None,
            403,
            "DENIED",
            "maintainer removing a member",
        ),
        (
            user("carol"),
            Method::PATCH,
            "/api/v1/projects/alpha",
            Some(json!({ "public": true })),
            403,
            "DENIED",
            "maintainer changing visibility",
        ),
        (
            user("carol"),
            Method::DELETE,
            "/api/v1/projects/alpha",
            None,
            403,
            "DENIED",
            "maintainer deleting the project",
        ),
        (
            user("outsider"),
            Method::PUT,
            "/api/v1/projects/alpha/members/outsider",
            Some(json!({ "role": "guest" })),
            404,
            "NOT_FOUND",
            "non-member adding themself",
        ),
        (
            user("alice"),
            Method::PUT,
            "/api/v1/projects/alpha/members/outsider",
            Some(json!({ "role": "owner" })),
            400,
            "INVALID",
            "unknown role",
        ),
        (
            user("alice"),
            Method::PUT,
            "/api/v1/projects/alpha/members/nobody",
            Some(json!({ "role": "guest" })),
            404,
            "NOT_FOUND",
            "unknown user",
        ),
        (
            user("alice"),
            Method::PUT,
            "/api/v1/projects/alpha/members/outsider",
            Some(json!({ "rol": "guest" })),
            400,
            "INVALID",
            "malformed body",
        ),
        (
            user("alice"),
            Method::DELETE,
            "/api/v1/projects/alpha/members/outsider",
            None,
            404,
            "NOT_FOUND",
            "removing a non-member",
        ),
        (
            Cred::Anonymous,
            Method::PUT,
            "/api/v1/projects/alpha/members/outsider",
            Some(json!({ "role": "guest" })),
            404,
            "NOT_FOUND",
            "anonymous adding a member",
        ),
    ] {
        let (got, v) = reg.api(method, path, &cred, body).await;
        assert_error(got, &v, status, code, what);
    }
    // A system administrator manages any project.
    reg.set_member(&admin, "alpha", "outsider", "guest").await;
    let (status, _) = reg
        .api(
            Method::DELETE,
            "/api/v1/projects/alpha/members/outsider",
            &admin,
            None,
        )
        .await;
    assert_eq!(status, 204);
    // A promoted member manages members too.
    reg.set_member(&user("alice"), "alpha", "bob", "project_admin")
        .await;
    reg.set_member(&user("bob"), "alpha", "outsider", "limited_guest")
        .await;
    let (status, _) = reg
        .api(
            Method::DELETE,
            "/api/v1/projects/alpha/members/outsider",
            &user("bob"),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, v) = reg
        .api(
            Method::DELETE,
            "/api/v1/projects/alpha/members/outsider",
            &user("bob"),
            None,
        )
        .await;
    assert_error(status, &v, 404, "NOT_FOUND", "removing twice");

    // Visibility.
    let p = reg
        .api_ok(
            Method::PATCH,
            "/api/v1/projects/alpha",
            &user("alice"),
            Some(json!({ "public": true })),
            200,
        )
        .await;
    assert_eq!(p["public"], true);
    for cred in [user("outsider"), Cred::Anonymous] {
        let p = reg
            .api_ok(Method::GET, "/api/v1/projects/alpha", &cred, None, 200)
            .await;
        assert_eq!(p["public"], true);
    }
    // Public: non-members see it but still cannot change it (403 now, not 404).
    let (status, v) = reg
        .api(
            Method::PATCH,
            "/api/v1/projects/alpha",
            &user("outsider"),
            Some(json!({ "public": false })),
        )
        .await;
    assert_error(
        status,
        &v,
        403,
        "DENIED",
        "non-member changing a public project",
    );
    let p = reg
        .api_ok(
            Method::PATCH,
            "/api/v1/projects/alpha",
            &user("alice"),
            Some(json!({})),
            200,
        )
        .await;
    assert_eq!(p["public"], true, "an empty PATCH changes nothing");
    reg.api_ok(
        Method::PATCH,
        "/api/v1/projects/alpha",
        &user("alice"),
        Some(json!({ "public": false })),
        200,
    )
    .await;
    let (status, _) = reg
        .api(
            Method::GET,
            "/api/v1/projects/alpha",
            &user("outsider"),
            None,
        )
        .await;
    assert_eq!(status, 404, "private again");

    // Removing a member takes their access away.
    let (status, _) = reg
        .api(
            Method::DELETE,
            "/api/v1/projects/alpha/members/carol",
            &user("alice"),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, _) = reg
        .api(Method::GET, "/api/v1/projects/alpha", &user("carol"), None)
        .await;
    assert_eq!(status, 404);

    // Deleting the (empty) project.
    let (status, _) = reg
        .api(
            Method::DELETE,
            "/api/v1/projects/alpha",
            &user("alice"),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, v) = reg
        .api(Method::GET, "/api/v1/projects/alpha", &admin, None)
        .await;
    assert_error(status, &v, 404, "NOT_FOUND", "deleted project");
    let (status, v) = reg
        .api(Method::DELETE, "/api/v1/projects/alpha", &admin, None)
        .await;
    assert_error(status, &v, 404, "NOT_FOUND", "deleting twice");
}

#[tokio::test]
async fn delete_project_refused_while_it_holds_repositories() {
    let srv = start_local(&[]);
    let reg = Reg::new(&srv);
    make_users(&reg, &["alice"]).await;
    reg.create_project(&user("alice"), "beta", false).await;
    reg.push_image(&user("alice"), "beta/app", "v1").await;
    for cred in [user("alice"), Cred::admin()] {
        let (status, v) = reg
            .api(Method::DELETE, "/api/v1/projects/beta", &cred, None)
            .await;
        assert_error(status, &v, 409, "CONFLICT", &cred.describe());
    }
    let p = reg
        .api_ok(
            Method::GET,
            "/api/v1/projects/beta",
            &user("alice"),
            None,
            200,
        )
        .await;
    assert_eq!(p["name"], "beta");
    let resp = reg
        .send(Method::GET, "/v2/beta/app/manifests/v1", &user("alice"))
        .await;
    assert_eq!(resp.status(), 200, "the repository is untouched");
}

// ---------------------------------------------------------------------------------------------
// Passwords and disabled users
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn password_change() {
    let srv = start_local(&[]);
    let reg = Reg::new(&srv);
    make_users(&reg, &["alice", "bob"]).await;
    let old = user("alice");
    let new = Cred::basic("alice", "alice-new-pass");
    // alice is logged in everywhere (the server caches verified Basic credentials).
    reg.api_ok(Method::GET, "/api/v1/users/current", &old, None, 200)
        .await;
    assert_eq!(reg.send(Method::GET, "/v2/", &old).await.status(), 200);

    // Errors first: nothing changes.
    for (cred, path, body, status, code, what) in [
        (
            old.clone(),
            "/api/v1/users/alice/password",
            json!({ "new_password": "alice-new-pass" }),
            400,
            "INVALID",
            "without the current password",
        ),
        (
            old.clone(),
            "/api/v1/users/alice/password",
            json!({ "current_password": pw("alice"), "new_password": "short" }),
            400,
            "INVALID",
            "too short",
        ),
        (
            old.clone(),
            "/api/v1/users/bob/password",
            json!({ "current_password": pw("alice"), "new_password": "bob-new-pass" }),
            403,
            "DENIED",
            "someone else's",
        ),
        (
            Cred::admin(),
            "/api/v1/users/nobody/password",
            json!({ "new_password": "whatever-pass" }),
            404,
            "NOT_FOUND",
            "unknown user",
        ),
        (
            Cred::Anonymous,
            "/api/v1/users/alice/password",
            json!({ "new_password": "whatever-pass" }),
            401,
            "UNAUTHORIZED",
            "anonymous",
        ),
    ] {
        let (got, v) = reg.api(Method::PUT, path, &cred, Some(body)).await;
        assert_error(got, &v, status, code, what);
    }
    let (status, v) = reg
        .api(
            Method::PUT,
            "/api/v1/users/alice/password",
            &old,
            Some(
                json!({ "current_password": "not-the-password", "new_password": "alice-new-pass" }),
            ),
        )
        .await;
    assert!(
        [400, 401, 403].contains(&status.as_u16()) && v["errors"][0]["code"].is_string(),
        "a wrong current password must be refused: {status} {v}"
    );
    reg.api_ok(Method::GET, "/api/v1/users/current", &old, None, 200)
        .await;

    // The change.
    let (status, _) = reg
        .api(
            Method::PUT,
            "/api/v1/users/alice/password",
            &old,
            Some(json!({ "current_password": pw("alice"), "new_password": "alice-new-pass" })),
        )
        .await;
    assert_eq!(status, 204);
    // The old password stops working at once, everywhere.
    let (status, v) = reg
        .api(Method::GET, "/api/v1/users/current", &old, None)
        .await;
    assert_error(status, &v, 401, "UNAUTHORIZED", "old password on the API");
    assert_eq!(
        reg.send(Method::GET, "/v2/", &old).await.status(),
        401,
        "old password on /v2/"
    );
    let (status, v) = read_json(reg.token_response(&old, &[]).await).await;
    assert_error(status, &v, 401, "UNAUTHORIZED", "old password on /token");
    // The new one works.
    reg.api_ok(Method::GET, "/api/v1/users/current", &new, None, 200)
        .await;
    assert_eq!(reg.send(Method::GET, "/v2/", &new).await.status(), 200);
    reg.token(&new, &[]).await;

    // An administrator sets a password without knowing the current one.
    let (status, _) = reg
        .api(
            Method::PUT,
            "/api/v1/users/alice/password",
            &Cred::admin(),
            Some(json!({ "new_password": "alice-third-pass" })),
        )
        .await;
    assert_eq!(status, 204);
    assert_eq!(reg.send(Method::GET, "/v2/", &new).await.status(), 401);
    assert_eq!(
        reg.send(
            Method::GET,
            "/v2/",
            &Cred::basic("alice", "alice-third-pass")
        )
        .await
        .status(),
        200
    );
}

#[tokio::test]
async fn disabled_user_cannot_log_in() {
    let srv = start_local(&[]);
    let reg = Reg::new(&srv);
    make_users(&reg, &["alice"]).await;
    reg.create_project(&Cred::admin(), "team", false).await;
    reg.set_member(&Cred::admin(), "team", "alice", "developer")
        .await;
    let alice = user("alice");
    reg.push_image(&alice, "team/app", "v1").await;

    let u = reg
        .api_ok(
            Method::PATCH,
            "/api/v1/users/alice",
            &Cred::admin(),
            Some(json!({ "disabled": true })),
            200,
        )
        .await;
    assert_eq!(u["disabled"], true);
    let (status, v) = reg
        .api(Method::GET, "/api/v1/users/current", &alice, None)
        .await;
    assert_error(status, &v, 401, "UNAUTHORIZED", "disabled user on the API");
    let (status, v) = read_json(
        reg.token_response(&alice, &["repository:team/app:pull"])
            .await,
    )
    .await;
    assert_error(status, &v, 401, "UNAUTHORIZED", "disabled user on /token");
    // (Five failures in a row: more would trip the failed-login throttle.)
    for path in ["/v2/", "/v2/team/app/manifests/v1"] {
        let resp = reg.send(Method::GET, path, &alice).await;
        assert_eq!(resp.status(), 401, "disabled user: GET {path}");
    }
    let resp = reg
        .send(Method::POST, "/v2/team/app/blobs/uploads/", &alice)
        .await;
    assert_eq!(resp.status(), 401, "disabled user pushing");

    reg.api_ok(
        Method::PATCH,
        "/api/v1/users/alice",
        &Cred::admin(),
        Some(json!({ "disabled": false })),
        200,
    )
    .await;
    assert_eq!(reg.send(Method::GET, "/v2/", &alice).await.status(), 200);
    reg.token(&alice, &["repository:team/app:pull"]).await;
}

/// A bearer token is a snapshot of who the user was when it was issued. Registry tokens may
/// live out their few minutes (the Docker token model), but the management API must not keep
/// honouring a token's administrator flag after the account was demoted and disabled: that
/// would let a removed administrator create a new administrator account (a lasting backdoor)
/// for as long as an old token lives.
#[tokio::test]
async fn demoted_and_disabled_admin_token_cannot_manage() {
    let srv = start_local(&[]);
    let reg = Reg::new(&srv);
    let admin = Cred::admin();
    reg.api_ok(
        Method::POST,
        "/api/v1/users",
        &admin,
        Some(json!({ "username": "boss", "password": pw("boss"), "admin": true })),
        201,
    )
    .await;
    let token = Cred::Bearer(reg.token(&user("boss"), &[]).await);
    reg.api_ok(Method::GET, "/api/v1/users", &token, None, 200)
        .await;

    let u = reg
        .api_ok(
            Method::PATCH,
            "/api/v1/users/boss",
            &admin,
            Some(json!({ "admin": false, "disabled": true })),
            200,
        )
        .await;
    assert_eq!((&u["admin"], &u["disabled"]), (&json!(false), &json!(true)));
    // Basic is refused at once...
    let (status, v) = reg
        .api(Method::GET, "/api/v1/users/current", &user("boss"), None)
        .await;
    assert_error(status, &v, 401, "UNAUTHORIZED", "disabled user, Basic");

    // ... and so must be the old token's administrator powers.
    let (status, v) = reg
        .api(
            Method::POST,
            "/api/v1/users",
            &token,
            Some(json!({ "username": "backdoor", "password": "backdoor-pass", "admin": true })),
        )
        .await;
    let list = reg
        .api_ok(Method::GET, "/api/v1/users", &admin, None, 200)
        .await;
    let created = list
        .as_array()
        .unwrap()
        .iter()
        .any(|u| u["username"] == "backdoor");
    assert!(
        (status == 401 || status == 403) && !created,
        "a token issued to `boss` while an administrator still created an administrator \
         after boss was demoted and disabled: POST /api/v1/users answered {status} {v}"
    );
    let (status, v) = reg
        .api(Method::GET, "/api/v1/users/current", &token, None)
        .await;
    assert!(
        status == 401 || status == 403,
        "a disabled user's token still authenticates the management API: {status} {v}"
    );
}

// ---------------------------------------------------------------------------------------------
// First administrator
// ---------------------------------------------------------------------------------------------

/// A `kura serve` spawned here with stderr captured; killed when dropped.
struct Captured {
    child: Child,
    addr: String,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Drop for Captured {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_captured(data_dir: &std::path::Path, envs: &[(&str, &str)]) -> Result<Captured, String> {
    std::fs::create_dir_all(data_dir).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kura"));
    cmd.arg("serve")
        .args([
            "--listen",
            "127.0.0.1:0",
            "--auth-mode",
            "local",
            "--log-format",
            "json",
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .args(Backends::from_env().args_for(data_dir))
        .env_remove("KURA_ADMIN_PASSWORD")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn kura serve");
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let err_pipe = child.stderr.take().unwrap();
    let sink = stderr.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(err_pipe).lines() {
            let Ok(line) = line else { break };
            // Let the log through to the test's output, as the harness does.
            eprintln!("[kura] {line}");
            sink.lock().unwrap().push(line);
        }
    });
    let out_pipe = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out_pipe).lines() {
            let Ok(line) = line else { break };
            if let Some(a) = line.trim().strip_prefix("listening on ") {
                let _ = tx.send(a.to_string());
            }
        }
    });
    let mut captured = Captured {
        child,
        addr: String::new(),
        stderr,
    };
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(addr) => {
            captured.addr = addr;
            Ok(captured)
        }
        Err(_) => {
            let status = captured.child.try_wait().ok().flatten();
            // Give the stderr reader a moment to collect the last lines.
            std::thread::sleep(Duration::from_millis(300));
            Err(format!(
                "kura serve did not start (exit {status:?}); log:\n{}",
                captured.stderr.lock().unwrap().join("\n")
            ))
        }
    }
}

/// The message of a JSON log line (`fields.message`, or `message`).
fn log_message(line: &str) -> Option<String> {
    let v: Value = serde_json::from_str(line).ok()?;
    v["fields"]["message"]
        .as_str()
        .or(v["message"].as_str())
        .map(str::to_string)
}

#[tokio::test]
async fn first_admin_bootstrap_prints_a_random_password() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let srv = spawn_captured(&data_dir, &[]).unwrap_or_else(|e| panic!("{e}"));

    let find = |lines: &Vec<String>| -> Option<String> {
        lines.iter().find_map(|l| {
            let msg = log_message(l)?;
            if !msg.contains("first administrator") {
                return None;
            }
            let rest = msg.split("password ").nth(1)?;
            Some(
                rest.chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                    .collect(),
            )
        })
    };
    assert!(
        wait_until(Duration::from_secs(10), || find(
            &srv.stderr.lock().unwrap()
        )
        .is_some()),
        "no log line with the generated administrator password; log:\n{}",
        srv.stderr.lock().unwrap().join("\n")
    );
    let password = find(&srv.stderr.lock().unwrap()).unwrap();
    assert!(
        password.len() >= 16,
        "the generated password {password:?} is too short to be random"
    );
    let line = srv
        .stderr
        .lock()
        .unwrap()
        .iter()
        .find(|l| l.contains(&password))
        .cloned()
        .unwrap();
    assert!(line.contains("\"WARN\""), "printed at warn level: {line}");

    let reg = Reg::at(&srv.addr);
    let admin = Cred::basic(ADMIN, &password);
    let me = reg
        .api_ok(Method::GET, "/api/v1/users/current", &admin, None, 200)
        .await;
    assert_eq!(me["username"], "admin");
    assert_eq!(me["admin"], true);
    assert_eq!(reg.send(Method::GET, "/v2/", &admin).await.status(), 200);
    reg.token(&admin, &["repository:x/y:pull"]).await;
    let (status, v) = reg
        .api(
            Method::GET,
            "/api/v1/users/current",
            &Cred::basic(ADMIN, ADMIN_PASSWORD),
            None,
        )
        .await;
    assert_error(
        status,
        &v,
        401,
        "UNAUTHORIZED",
        "a password other than the printed one",
    );
    let users = reg
        .api_ok(Method::GET, "/api/v1/users", &admin, None, 200)
        .await;
    assert_eq!(users.as_array().unwrap().len(), 1, "{users}");
    drop(srv);

    // A restart over the same data neither prints nor changes the password, and ignores
    // KURA_ADMIN_PASSWORD (there already is a user).
    let srv = spawn_captured(&data_dir, &[("KURA_ADMIN_PASSWORD", "another-password")])
        .unwrap_or_else(|e| panic!("{e}"));
    let reg = Reg::at(&srv.addr);
    reg.api_ok(
        Method::GET,
        "/api/v1/users/current",
        &Cred::basic(ADMIN, &password),
        None,
        200,
    )
    .await;
    let (status, _) = reg
        .api(
            Method::GET,
            "/api/v1/users/current",
            &Cred::basic(ADMIN, "another-password"),
            None,
        )
        .await;
    assert_eq!(
        status, 401,
        "KURA_ADMIN_PASSWORD only applies to the first start"
    );
    std::thread::sleep(Duration::from_millis(300));
    let log = srv.stderr.lock().unwrap().join("\n");
    assert!(
        !log.contains(&password) && !log.contains("first administrator"),
        "the password must be printed only once; second start logged:\n{log}"
    );
    drop(srv);

    // A KURA_ADMIN_PASSWORD too short for the password rules is refused at start.
    let fresh = tmp.path().join("fresh");
    match spawn_captured(&fresh, &[("KURA_ADMIN_PASSWORD", "short")]) {
        Ok(_) => panic!("kura serve started with KURA_ADMIN_PASSWORD=short"),
        Err(e) => assert!(e.contains("8 characters"), "{e}"),
    }
}
