//! The management API's OpenAPI document: served by the server, valid according to a standard
//! validator (openapi-spec-validator from PyPI, installed by scripts/test into the test venv),
//! and every documented operation is routed.

mod common;

use common::KuraServer;
use reqwest::{Method, StatusCode};

fn venv_python() -> String {
    std::env::var("KURA_ORAS_PYTHON").unwrap_or_else(|_| {
        format!(
            "{}/.cache/kura-test-venv/bin/python",
            std::env::var("HOME").unwrap_or_default()
        )
    })
}

#[tokio::test]
async fn openapi_document_is_valid_and_matches_the_routes() {
    let srv = KuraServer::start_with(
        &["--auth-mode", "local"],
        &[("KURA_ADMIN_PASSWORD", "admin-pass-123")],
    );
    let c = reqwest::Client::new();
    let r = c.get(srv.url("/api/v1/openapi.json")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let doc: serde_json::Value = r.json().await.unwrap();

    // 1. A standard validator accepts it.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("openapi.json");
    std::fs::write(&path, serde_json::to_vec(&doc).unwrap()).unwrap();
    let out = std::process::Command::new(venv_python())
        .args([
            "-c",
            "import json,sys; from openapi_spec_validator import validate; \
             validate(json.load(open(sys.argv[1]))); print('ok')",
        ])
        .arg(&path)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} (scripts/test installs it): {e}",
                venv_python()
            )
        });
    assert!(
        out.status.success(),
        "openapi-spec-validator rejected the document:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // 2. Every documented operation reaches a handler: with admin credentials, an unmatched
    //    route would answer axum's bare 404/405 without a JSON body.
    let paths = doc["paths"].as_object().expect("paths");
    let mut checked = 0;
    for (template, ops) in paths {
        for method in ops.as_object().unwrap().keys() {
            let url = template
                .replace("{name}", "nosuchproject")
                .replace("{username}", "nosuchuser");
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let resp = c
                .request(m.clone(), srv.url(&url))
                .basic_auth("admin", Some("admin-pass-123"))
                .header("content-type", "application/json")
                .body("{}")
                .send()
                .await
                .unwrap();
            let status = resp.status();
            let body = resp.text().await.unwrap();
            assert_ne!(
                status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{m} {url} is not routed"
            );
            assert!(
                status != StatusCode::NOT_FOUND || body.contains("\"errors\""),
                "{m} {url} answered a bare 404: not routed"
            );
            checked += 1;
        }
    }
    eprintln!(
        "openapi: {} paths, {checked} operations routed",
        paths.len()
    );
    assert!(
        checked >= 23,
        "expected every management operation documented, got {checked}"
    );
    for must in [
        "/api/v1/users",
        "/api/v1/projects/{name}/members/{username}",
        "/api/v1/robots/{name}/refresh",
        "/api/v1/settings",
        "/v1/search",
    ] {
        assert!(paths.contains_key(must), "{must} missing from the document");
    }
}
