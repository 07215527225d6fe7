//! The audit log, black-box: every push, pull, delete, tag move, login and management change
//! is one record with the right actor, source, resource, project and result; the query API
//! (filters, pagination, the per-project view), the JSON-lines export, the hash chain
//! (verification over HTTP and with `kura audit verify`, tampering detected, purges keep it
//! verifiable), syslog forwarding over UDP, and turning the log off.
//!
//! Most tests take a mark (the newest seq) before one action and assert that exactly the
//! expected records were appended after it. Audit queries are management API GETs, which are
//! never recorded themselves.

mod common;

use std::collections::BTreeSet;
use std::net::UdpSocket;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::api::{
    OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, descriptor, encode_query, image_manifest, next_link,
    query_pairs, random_bytes, random_config, sha256,
};
use common::auth::{Cred, Reg, start_local};
use common::{Backends, KuraServer};
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap};
use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};

const LOCALHOST: &str = "127.0.0.1";
const PASSWORD: &str = "secret-pass-123";

fn admin() -> Cred {
    Cred::admin()
}

fn user(name: &str) -> Cred {
    Cred::basic(name, PASSWORD)
}

// ---- querying the log -------------------------------------------------------------------------

/// `GET path` on the audit API as the administrator, expecting 200 and a JSON array.
async fn audit_get(reg: &Reg, path: &str) -> (HeaderMap, Vec<Value>) {
    audit_get_as(reg, path, &admin()).await
}

async fn audit_get_as(reg: &Reg, path: &str, cred: &Cred) -> (HeaderMap, Vec<Value>) {
    let resp = reg.send(Method::GET, path, cred).await;
    let status = resp.status();
    let headers = resp.headers().clone();
    let text = resp.text().await.expect("body");
    assert_eq!(
        status,
        StatusCode::OK,
        "GET {path} as {}: {text}",
        cred.describe()
    );
    let v: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {text}"));
    let list = v
        .as_array()
        .unwrap_or_else(|| panic!("GET {path}: not an array: {text}"))
        .clone();
    (headers, list)
}

/// The whole log, newest first (one page of up to 1000).
async fn all_records(reg: &Reg) -> Vec<Value> {
    let (headers, list) = audit_get(reg, "/api/v1/audit-logs?n=1000").await;
    assert!(
        list.len() < 1000 && next_link(&headers).is_none(),
        "test logs are small"
    );
    list
}

/// The newest seq (0 for an empty log).
async fn head_seq(reg: &Reg) -> i64 {
    let (_, list) = audit_get(reg, "/api/v1/audit-logs?n=1").await;
    list.first().map(seq).unwrap_or(0)
}

/// Records appended after `mark`, oldest first.
async fn records_after(reg: &Reg, mark: i64) -> Vec<Value> {
    let mut out: Vec<Value> = all_records(reg)
        .await
        .into_iter()
        .filter(|r| seq(r) > mark)
        .collect();
    out.reverse();
    out
}

fn seq(r: &Value) -> i64 {
    r["seq"]
        .as_i64()
        .unwrap_or_else(|| panic!("record without an integer seq: {r}"))
}

fn seqs(list: &[Value]) -> Vec<i64> {
    list.iter().map(seq).collect()
}

/// One line per record, for failure messages.
fn summary(list: &[Value]) -> String {
    let lines: Vec<String> = list
        .iter()
        .map(|r| {
            format!(
                "  #{} {} {} {} [{}] by {}({}) project={} detail={}",
                r["seq"],
                r["action"],
                r["resource_type"],
                r["resource"],
                r["result"],
                r["actor"],
                r["actor_kind"],
                r["project"],
                r["detail"]
            )
        })
        .collect();
    if lines.is_empty() {
        "  (none)".into()
    } else {
        lines.join("\n")
    }
}

/// Exactly one record after `mark`, with this action and resource.
async fn expect_one(reg: &Reg, mark: i64, what: &str, action: &str, resource: &str) -> Value {
    let new = records_after(reg, mark).await;
    assert_eq!(
        new.len(),
        1,
        "{what}: expected exactly one record ({action} {resource}) after seq {mark}, got:\n{}",
        summary(&new)
    );
    let r = new[0].clone();
    assert_eq!(r["action"], action, "{what}: {r}");
    assert_eq!(r["resource"], resource, "{what}: {r}");
    r
}

/// No record after `mark`.
async fn expect_none(reg: &Reg, mark: i64, what: &str) {
    let new = records_after(reg, mark).await;
    assert!(
        new.is_empty(),
        "{what}: expected no audit record after seq {mark}, got:\n{}",
        summary(&new)
    );
}

/// The fields every record has: actor, kind, source, project, result, a parseable time equal
/// to `at` (to the second), a request id, and a 64-hex hash chained to its predecessor.
fn check_record(r: &Value, actor: &str, kind: &str, project: Option<&str>, result: &str) {
    assert_eq!(r["actor"], actor, "actor: {r}");
    assert_eq!(r["actor_kind"], kind, "actor_kind: {r}");
    assert_eq!(r["source_ip"], LOCALHOST, "source_ip: {r}");
    match project {
        Some(p) => assert_eq!(r["project"], p, "project: {r}"),
        None => assert_eq!(r["project"], Value::Null, "project: {r}"),
    }
    assert_eq!(r["result"], result, "result: {r}");
    assert!(r["detail"].is_object(), "detail must be an object: {r}");
    let at = r["at"].as_i64().unwrap_or_else(|| panic!("at: {r}"));
    let now = now_ms();
    assert!(
        at <= now + 1000 && at > now - 120_000,
        "at {at} is not recent (now {now}): {r}"
    );
    let time = r["time"].as_str().unwrap_or_else(|| panic!("time: {r}"));
    let parsed = parse_rfc3339_ms(time).unwrap_or_else(|| panic!("time is not RFC 3339: {r}"));
    assert_eq!(
        parsed.div_euclid(1000),
        at.div_euclid(1000),
        "time and at differ: {r}"
    );
    let rid = r["request_id"]
        .as_str()
        .unwrap_or_else(|| panic!("request_id: {r}"));
    assert!(!rid.is_empty() && rid != "-", "request_id: {r}");
    for k in ["hash", "prev_hash"] {
        let h = r[k].as_str().unwrap_or_else(|| panic!("{k}: {r}"));
        assert!(
            h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()),
            "{k} is not 64 hex digits: {r}"
        );
    }
    assert_ne!(r["hash"], r["prev_hash"], "{r}");
}

/// Checks that `list` (newest first, contiguous) links each record to the one before.
fn check_chain(list: &[Value]) {
    for w in list.windows(2) {
        assert_eq!(
            seq(&w[0]),
            seq(&w[1]) + 1,
            "seqs are contiguous:\n{}",
            summary(list)
        );
        assert_eq!(
            w[0]["prev_hash"], w[1]["hash"],
            "record {} does not chain to record {}",
            w[0]["seq"], w[1]["seq"]
        );
    }
}

// ---- time -------------------------------------------------------------------------------------

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)` into epoch milliseconds.
fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !(b[10] == b'T' || b[10] == b't') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut i = 19;
    let mut ms = 0;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let frac = s.get(start..i)?;
        if frac.is_empty() {
            return None;
        }
        let padded = format!("{frac:0<3}");
        ms = padded[..3].parse::<i64>().ok()?;
    }
    let offset_min = match s.get(i..)? {
        "Z" | "z" => 0,
        tz if tz.len() == 6 && (tz.starts_with('+') || tz.starts_with('-')) && &tz[3..4] == ":" => {
            let v = tz[1..3].parse::<i64>().ok()? * 60 + tz[4..6].parse::<i64>().ok()?;
            if tz.starts_with('-') { -v } else { v }
        }
        _ => return None,
    };
    let days = days_from_civil(y, mo, d);
    Some(((days * 86_400 + h * 3600 + mi * 60 + sec) - offset_min * 60) * 1000 + ms)
}

/// Formats epoch milliseconds as RFC 3339 at `offset_min` minutes east of UTC.
fn format_rfc3339(ms: i64, offset_min: i64) -> String {
    let local = ms + offset_min * 60_000;
    let days = local.div_euclid(86_400_000);
    let rem = local.rem_euclid(86_400_000);
    let (y, mo, d) = civil_from_days(days);
    let (h, mi, s, frac) = (
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000,
    );
    let tz = if offset_min == 0 {
        "Z".to_string()
    } else {
        let sign = if offset_min < 0 { '-' } else { '+' };
        format!(
            "{sign}{:02}:{:02}",
            offset_min.abs() / 60,
            offset_min.abs() % 60
        )
    };
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{frac:03}{tz}")
}

#[test]
fn rfc3339_helpers_round_trip() {
    let t = 1_700_000_123_456;
    assert_eq!(format_rfc3339(t, 0), "2023-11-14T22:15:23.456Z");
    assert_eq!(parse_rfc3339_ms("2023-11-14T22:15:23.456Z"), Some(t));
    assert_eq!(parse_rfc3339_ms(&format_rfc3339(t, 90)), Some(t));
    assert_eq!(parse_rfc3339_ms(&format_rfc3339(t, -300)), Some(t));
    assert_eq!(parse_rfc3339_ms("2023-11-14T22:15:23Z"), Some(t - 456));
    assert_eq!(parse_rfc3339_ms("2023-11-14 22:15:23Z"), None);
}

// ---- the registry -----------------------------------------------------------------------------

/// Pushes a fresh config and layer to `repo` as `cred`; returns the manifest naming them (not
/// yet pushed).
async fn fresh_manifest(reg: &Reg, cred: &Cred, repo: &str) -> Vec<u8> {
    let config = random_config();
    let layer = random_bytes(200);
    reg.push_blob(cred, repo, &config).await;
    reg.push_blob(cred, repo, &layer).await;
    image_manifest(
        &descriptor(OCI_CONFIG, &config),
        &[descriptor(OCI_LAYER, &layer)],
        None,
    )
}

/// The `x-request-id` the server answered with.
fn request_id(resp: &Response) -> String {
    resp.headers()
        .get("x-request-id")
        .unwrap_or_else(|| panic!("no x-request-id on {} {}", resp.status(), resp.url()))
        .to_str()
        .expect("ASCII")
        .to_string()
}

/// PUTs a manifest expecting 201; returns the response's request id.
async fn put_manifest(reg: &Reg, cred: &Cred, repo: &str, reference: &str, body: &[u8]) -> String {
    let resp = reg.put_manifest(cred, repo, reference, body).await;
    let rid = request_id(&resp);
    let status = resp.status();
    assert_eq!(
        status,
        StatusCode::CREATED,
        "PUT {repo}:{reference} as {}: {}",
        cred.describe(),
        resp.text().await.unwrap_or_default()
    );
    rid
}

/// Pushes a fresh image under `reference`; returns its digest.
async fn push_image(reg: &Reg, cred: &Cred, repo: &str, reference: &str) -> String {
    let m = fresh_manifest(reg, cred, repo).await;
    put_manifest(reg, cred, repo, reference, &m).await;
    sha256(&m)
}

/// A registry request; asserts the status and returns the request id.
async fn v2(reg: &Reg, method: Method, path: &str, cred: &Cred, want: StatusCode) -> String {
    let resp = reg
        .req(method.clone(), path, cred)
        .header(ACCEPT, OCI_MANIFEST)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let rid = request_id(&resp);
    let status = resp.status();
    assert_eq!(
        status,
        want,
        "{method} {path} as {}: {}",
        cred.describe(),
        resp.text().await.unwrap_or_default()
    );
    rid
}

/// A local-mode server with `project` (private) and users with these roles in it.
async fn setup(extra: &[&str], project: &str, members: &[(&str, &str)]) -> (KuraServer, Reg) {
    let srv = start_local(extra);
    let reg = Reg::new(&srv);
    reg.create_project(&admin(), project, false).await;
    for (name, role) in members {
        reg.create_user(name, PASSWORD).await;
        if !role.is_empty() {
            reg.set_member(&admin(), project, name, role).await;
        }
    }
    (srv, reg)
}

// ---- 1. registry actions ----------------------------------------------------------------------

#[tokio::test]
async fn push_pull_tag_and_delete_are_recorded_once_each() {
    let (_srv, reg) = setup(&[], "lib", &[("alice", "maintainer")]).await;
    let alice = user("alice");
    let repo = "lib/app";

    // Blob uploads are not audited (audit.blob_events is off by default).
    let mark = head_seq(&reg).await;
    let m1 = fresh_manifest(&reg, &alice, repo).await;
    let d1 = sha256(&m1);
    expect_none(&reg, mark, "blob uploads").await;

    // A new manifest under a new tag: push.
    let mark = head_seq(&reg).await;
    let rid = put_manifest(&reg, &alice, repo, "v1", &m1).await;
    let r = expect_one(&reg, mark, "first push", "push", "lib/app:v1").await;
    check_record(&r, "alice", "user", Some("lib"), "success");
    assert_eq!(r["resource_type"], "artifact", "{r}");
    assert_eq!(r["request_id"], rid.as_str(), "{r}");
    assert_eq!(seq(&r), mark + 1, "seqs are contiguous: {r}");
    let d = &r["detail"];
    assert_eq!(d["digest"], d1.as_str(), "{r}");
    assert_eq!(d["media_type"], OCI_MANIFEST, "{r}");
    assert_eq!(d["size"], m1.len(), "{r}");
    assert_eq!(d["tag"], "v1", "{r}");
    assert_eq!(d["previous"], Value::Null, "{r}");
    assert_eq!(d["created"], true, "{r}");

    // HEAD is not a pull, blob GETs are not recorded.
    let mark = head_seq(&reg).await;
    v2(
        &reg,
        Method::HEAD,
        "/v2/lib/app/manifests/v1",
        &alice,
        StatusCode::OK,
    )
    .await;
    let config_digest = {
        let m: Value = serde_json::from_slice(&m1).unwrap();
        m["config"]["digest"].as_str().unwrap().to_string()
    };
    v2(
        &reg,
        Method::GET,
        &format!("/v2/lib/app/blobs/{config_digest}"),
        &alice,
        StatusCode::OK,
    )
    .await;
    v2(
        &reg,
        Method::GET,
        "/v2/lib/app/tags/list",
        &alice,
        StatusCode::OK,
    )
    .await;
    expect_none(&reg, mark, "HEAD manifest, GET blob, tag list").await;

    // GET by tag and by digest: pulls. A spoofed X-Forwarded-For is not trusted by default.
    let mark = head_seq(&reg).await;
    let resp = reg
        .req(Method::GET, "/v2/lib/app/manifests/v1", &alice)
        .header(ACCEPT, OCI_MANIFEST)
        .header("X-Forwarded-For", "10.9.8.7")
        .send()
        .await
        .expect("GET manifest");
    assert_eq!(resp.status(), StatusCode::OK);
    let rid = request_id(&resp);
    let r = expect_one(&reg, mark, "pull by tag", "pull", "lib/app:v1").await;
    check_record(&r, "alice", "user", Some("lib"), "success");
    assert_eq!(r["resource_type"], "artifact", "{r}");
    assert_eq!(r["request_id"], rid.as_str(), "{r}");
    assert_eq!(r["detail"]["digest"], d1.as_str(), "{r}");

    let mark = head_seq(&reg).await;
    let path = format!("/v2/lib/app/manifests/{d1}");
    let rid = v2(&reg, Method::GET, &path, &admin(), StatusCode::OK).await;
    let r = expect_one(
        &reg,
        mark,
        "pull by digest",
        "pull",
        &format!("lib/app@{d1}"),
    )
    .await;
    check_record(&r, "admin", "user", Some("lib"), "success");
    assert_eq!(r["request_id"], rid.as_str(), "{r}");

    // The same manifest under a new tag: a tag record, not a push.
    let mark = head_seq(&reg).await;
    let rid = put_manifest(&reg, &alice, repo, "v2", &m1).await;
    let r = expect_one(&reg, mark, "retag", "tag", "lib/app:v2").await;
    check_record(&r, "alice", "user", Some("lib"), "success");
    assert_eq!(r["resource_type"], "artifact", "{r}");
    assert_eq!(r["request_id"], rid.as_str(), "{r}");
    assert_eq!(r["detail"]["digest"], d1.as_str(), "{r}");
    assert_eq!(r["detail"]["tag"], "v2", "{r}");
    assert_eq!(r["detail"]["previous"], Value::Null, "{r}");
    assert_eq!(r["detail"]["created"], false, "{r}");

    // A new manifest moving v2: a push naming the previous target.
    let m2 = fresh_manifest(&reg, &alice, repo).await;
    let d2 = sha256(&m2);
    let mark = head_seq(&reg).await;
    put_manifest(&reg, &alice, repo, "v2", &m2).await;
    let r = expect_one(&reg, mark, "push moving a tag", "push", "lib/app:v2").await;
    assert_eq!(r["detail"]["digest"], d2.as_str(), "{r}");
    assert_eq!(r["detail"]["created"], true, "{r}");
    assert_eq!(r["detail"]["previous"], d1.as_str(), "{r}");

    // Moving v2 back to the manifest the repository already holds: a tag move.
    let mark = head_seq(&reg).await;
    put_manifest(&reg, &alice, repo, "v2", &m1).await;
    let r = expect_one(&reg, mark, "tag move", "tag", "lib/app:v2").await;
    assert_eq!(r["detail"]["digest"], d1.as_str(), "{r}");
    assert_eq!(r["detail"]["previous"], d2.as_str(), "{r}");
    assert_eq!(r["detail"]["created"], false, "{r}");

    // The identical manifest again under the same tag: a push that created nothing.
    let mark = head_seq(&reg).await;
    put_manifest(&reg, &alice, repo, "v1", &m1).await;
    let r = expect_one(&reg, mark, "re-push", "push", "lib/app:v1").await;
    assert_eq!(r["detail"]["digest"], d1.as_str(), "{r}");
    assert_eq!(r["detail"]["created"], false, "{r}");

    // Pushed by digest: the resource names the digest.
    let m3 = fresh_manifest(&reg, &alice, repo).await;
    let d3 = sha256(&m3);
    let mark = head_seq(&reg).await;
    put_manifest(&reg, &alice, repo, &d3, &m3).await;
    let r = expect_one(
        &reg,
        mark,
        "push by digest",
        "push",
        &format!("lib/app@{d3}"),
    )
    .await;
    assert_eq!(r["detail"]["tag"], Value::Null, "{r}");
    assert_eq!(r["detail"]["created"], true, "{r}");

    // Delete by tag: a tag record.
    let mark = head_seq(&reg).await;
    let rid = v2(
        &reg,
        Method::DELETE,
        "/v2/lib/app/manifests/v2",
        &alice,
        StatusCode::ACCEPTED,
    )
    .await;
    let r = expect_one(&reg, mark, "delete by tag", "delete", "lib/app:v2").await;
    check_record(&r, "alice", "user", Some("lib"), "success");
    assert_eq!(r["resource_type"], "tag", "{r}");
    assert_eq!(r["request_id"], rid.as_str(), "{r}");

    // Delete by digest: an artifact record caused by the client.
    let mark = head_seq(&reg).await;
    let path = format!("/v2/lib/app/manifests/{d2}");
    let rid = v2(&reg, Method::DELETE, &path, &alice, StatusCode::ACCEPTED).await;
    let r = expect_one(
        &reg,
        mark,
        "delete by digest",
        "delete",
        &format!("lib/app@{d2}"),
    )
    .await;
    check_record(&r, "alice", "user", Some("lib"), "success");
    assert_eq!(r["resource_type"], "artifact", "{r}");
    assert_eq!(r["request_id"], rid.as_str(), "{r}");
    assert_eq!(r["detail"]["digest"], d2.as_str(), "{r}");
    assert_eq!(r["detail"]["cause"], "client", "{r}");

    // Delete by digest of a manifest with two tags: one record naming both tags.
    let m4 = fresh_manifest(&reg, &alice, repo).await;
    let d4 = sha256(&m4);
    put_manifest(&reg, &alice, repo, "a", &m4).await;
    put_manifest(&reg, &alice, repo, "b", &m4).await;
    let mark = head_seq(&reg).await;
    let path = format!("/v2/lib/app/manifests/{d4}");
    v2(&reg, Method::DELETE, &path, &alice, StatusCode::ACCEPTED).await;
    let r = expect_one(
        &reg,
        mark,
        "delete of a tagged manifest",
        "delete",
        &format!("lib/app@{d4}"),
    )
    .await;
    assert_eq!(r["resource_type"], "artifact", "{r}");
    let mut tags: Vec<String> = r["detail"]["tags"]
        .as_array()
        .unwrap_or_else(|| panic!("detail.tags: {r}"))
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    tags.sort();
    assert_eq!(tags, ["a", "b"], "{r}");

    // Blob delete.
    let blob = random_bytes(100);
    let bd = reg.push_blob(&alice, repo, &blob).await;
    let mark = head_seq(&reg).await;
    let path = format!("/v2/lib/app/blobs/{bd}");
    let rid = v2(&reg, Method::DELETE, &path, &alice, StatusCode::ACCEPTED).await;
    let r = expect_one(
        &reg,
        mark,
        "blob delete",
        "delete",
        &format!("lib/app@{bd}"),
    )
    .await;
    check_record(&r, "alice", "user", Some("lib"), "success");
    assert_eq!(r["resource_type"], "blob", "{r}");
    assert_eq!(r["request_id"], rid.as_str(), "{r}");

    // The whole log is one chain.
    let all = all_records(&reg).await;
    assert_eq!(seq(all.last().unwrap()), 1, "{}", summary(&all));
    check_chain(&all);
}

/// A request id the client sends is the one recorded.
#[tokio::test]
async fn a_client_request_id_is_recorded() {
    let (_srv, reg) = setup(&[], "lib", &[]).await;
    let m = fresh_manifest(&reg, &admin(), "lib/app").await;
    let mark = head_seq(&reg).await;
    let resp = reg
        .req(Method::PUT, "/v2/lib/app/manifests/v1", &admin())
        .header(CONTENT_TYPE, OCI_MANIFEST)
        .header("x-request-id", "trace-me-42")
        .body(m)
        .send()
        .await
        .expect("PUT");
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(request_id(&resp), "trace-me-42");
    let r = expect_one(&reg, mark, "push", "push", "lib/app:v1").await;
    assert_eq!(r["request_id"], "trace-me-42", "{r}");
}

// ---- 2. logins --------------------------------------------------------------------------------

#[tokio::test]
async fn logins_are_recorded_with_the_attempted_user() {
    let (_srv, reg) = setup(&[], "lib", &[("alice", "developer")]).await;
    push_image(&reg, &admin(), "lib/app", "v1").await;

    // A token with valid Basic credentials: login success.
    let scope = "repository:lib/app:pull";
    let mark = head_seq(&reg).await;
    let resp = reg.token_response(&user("alice"), &[scope]).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let rid = request_id(&resp);
    let r = expect_one(&reg, mark, "token", "login", "token").await;
    check_record(&r, "alice", "user", None, "success");
    assert_eq!(r["resource_type"], "token", "{r}");
    assert_eq!(r["request_id"], rid.as_str(), "{r}");
    assert_eq!(r["detail"]["scopes"], json!([scope]), "{r}");

    // Wrong passwords, wherever they are tried: login failures naming the attempted user.
    let bad = Cred::basic("alice", "wrong-password-1");
    let tries: Vec<(&str, Method, String)> = vec![
        (
            "token",
            Method::GET,
            format!("/token?service=kura&scope={}", encode_query(scope)),
        ),
        ("/v2/", Method::GET, "/v2/".to_string()),
        (
            "/v2 manifest",
            Method::GET,
            "/v2/lib/app/manifests/v1".to_string(),
        ),
        (
            "management API",
            Method::GET,
            "/api/v1/projects".to_string(),
        ),
    ];
    for (what, method, path) in tries {
        let mark = head_seq(&reg).await;
        let resp = reg.send(method, &path, &bad).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{what}");
        let rid = request_id(&resp);
        let r = expect_one(&reg, mark, what, "login", "token").await;
        check_record(&r, "alice", "user", None, "failure");
        assert_eq!(r["request_id"], rid.as_str(), "{what}: {r}");
        let reason = r["detail"]["reason"].as_str().unwrap_or_default();
        assert!(
            !reason.is_empty(),
            "{what}: a failure names its reason: {r}"
        );
    }

    // A user who does not exist.
    let mark = head_seq(&reg).await;
    let resp = reg
        .token_response(&Cred::basic("mallory", "whatever-123"), &[])
        .await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let r = expect_one(&reg, mark, "unknown user", "login", "token").await;
    check_record(&r, "mallory", "user", None, "failure");

    // Requests without credentials are not logins.
    let mark = head_seq(&reg).await;
    let anon = Cred::Anonymous;
    let resp = reg.send(Method::GET, "/token?service=kura", &anon).await;
    assert!(
        resp.status().is_success(),
        "anonymous token: {}",
        resp.status()
    );
    for path in ["/v2/", "/v2/lib/app/manifests/v1", "/api/v1/users"] {
        let resp = reg.send(Method::GET, path, &anon).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    expect_none(&reg, mark, "anonymous requests").await;
}

// ---- 3. refusals on /v2 -----------------------------------------------------------------------

#[tokio::test]
async fn refused_registry_requests_are_recorded_as_failures() {
    let (_srv, reg) = setup(
        &[],
        "lib",
        &[("dev", "developer"), ("guest", "guest"), ("outsider", "")],
    )
    .await;
    let d = push_image(&reg, &admin(), "lib/app", "v1").await;

    // A developer may not delete.
    let mark = head_seq(&reg).await;
    let path = format!("/v2/lib/app/manifests/{d}");
    let rid = v2(
        &reg,
        Method::DELETE,
        &path,
        &user("dev"),
        StatusCode::FORBIDDEN,
    )
    .await;
    let r = expect_one(&reg, mark, "developer delete", "delete", "lib/app").await;
    check_record(&r, "dev", "user", Some("lib"), "failure");
    assert_eq!(r["resource_type"], "repository", "{r}");
    assert_eq!(r["request_id"], rid.as_str(), "{r}");
    assert!(r["detail"]["reason"].is_string(), "{r}");

    // A guest may not push.
    let mark = head_seq(&reg).await;
    v2(
        &reg,
        Method::POST,
        "/v2/lib/app/blobs/uploads/",
        &user("guest"),
        StatusCode::FORBIDDEN,
    )
    .await;
    let r = expect_one(&reg, mark, "guest push", "push", "lib/app").await;
    check_record(&r, "guest", "user", Some("lib"), "failure");
    assert_eq!(r["resource_type"], "repository", "{r}");

    // A non-member may not pull from a private project.
    let mark = head_seq(&reg).await;
    v2(
        &reg,
        Method::GET,
        "/v2/lib/app/manifests/v1",
        &user("outsider"),
        StatusCode::FORBIDDEN,
    )
    .await;
    let r = expect_one(&reg, mark, "outsider pull", "pull", "lib/app").await;
    check_record(&r, "outsider", "user", Some("lib"), "failure");
    assert_eq!(r["resource_type"], "repository", "{r}");

    // Nor push to it.
    let mark = head_seq(&reg).await;
    v2(
        &reg,
        Method::POST,
        "/v2/lib/app/blobs/uploads/",
        &user("outsider"),
        StatusCode::FORBIDDEN,
    )
    .await;
    let r = expect_one(&reg, mark, "outsider push", "push", "lib/app").await;
    check_record(&r, "outsider", "user", Some("lib"), "failure");

    // A push over the project's quota is refused (403) and recorded as a failed push.
    let used = call(
        &reg,
        Method::GET,
        "/api/v1/projects/lib/quota",
        &admin(),
        None,
        200,
    )
    .await;
    let used = used["usage_bytes"]
        .as_u64()
        .unwrap_or_else(|| panic!("usage: {used}"));
    call(
        &reg,
        Method::PUT,
        "/api/v1/projects/lib/quota",
        &admin(),
        Some(json!({"storage_limit": used + 100})),
        200,
    )
    .await;
    let big = random_bytes(5000);
    let mark = head_seq(&reg).await;
    let resp = reg
        .req(
            Method::POST,
            &format!("/v2/lib/app/blobs/uploads/?digest={}", sha256(&big)),
            &admin(),
        )
        .header(CONTENT_TYPE, "application/octet-stream")
        .body(big)
        .send()
        .await
        .expect("monolithic push");
    assert_eq!(resp.status(), StatusCode::FORBIDDEN, "over the quota");
    let new = records_after(&reg, mark).await;
    assert_eq!(new.len(), 1, "quota refusal:\n{}", summary(&new));
    assert_eq!(new[0]["action"], "push", "{}", new[0]);
    check_record(&new[0], "admin", "user", Some("lib"), "failure");
}

// ---- 4. the management API --------------------------------------------------------------------

/// A management call expected to answer `want`; returns the body.
async fn call(
    reg: &Reg,
    method: Method,
    path: &str,
    cred: &Cred,
    body: Option<Value>,
    want: u16,
) -> Value {
    reg.api_ok(method, path, cred, body, want).await
}

/// Exactly one record after `mark`: a management action with the usual detail.
#[allow(clippy::too_many_arguments)]
async fn expect_api_record(
    reg: &Reg,
    mark: i64,
    action: &str,
    resource: &str,
    project: Option<&str>,
    actor: &str,
    status: u16,
    method: &str,
) -> Value {
    let what = format!("{method} {resource} ({status})");
    let r = expect_one(reg, mark, &what, action, resource).await;
    let result = if (200..300).contains(&status) {
        "success"
    } else {
        "failure"
    };
    check_record(&r, actor, "user", project, result);
    assert_eq!(r["detail"]["status"], status, "{what}: {r}");
    assert_eq!(r["detail"]["method"], method, "{what}: {r}");
    r
}

#[tokio::test]
async fn management_api_changes_are_recorded_once_each() {
    let srv = start_local(&[]);
    let reg = Reg::new(&srv);
    let a = admin();

    // GETs are not recorded.
    let mark = head_seq(&reg).await;
    for path in [
        "/api/v1/users",
        "/api/v1/projects",
        "/api/v1/settings",
        "/api/v1/robots",
    ] {
        call(&reg, Method::GET, path, &a, None, 200).await;
    }
    expect_none(&reg, mark, "management GETs").await;

    macro_rules! step {
        ($method:ident, $path:expr, $body:expr, $want:expr, $action:expr, $resource:expr, $project:expr) => {{
            let mark = head_seq(&reg).await;
            let v = call(&reg, Method::$method, $path, &a, $body, $want).await;
            expect_api_record(
                &reg,
                mark,
                $action,
                $resource,
                $project,
                "admin",
                $want,
                stringify!($method),
            )
            .await;
            v
        }};
    }

    step!(
        POST,
        "/api/v1/users",
        Some(json!({"username": "dave", "password": PASSWORD})),
        201,
        "user.create",
        "users/dave",
        None
    );
    step!(
        PATCH,
        "/api/v1/users/dave",
        Some(json!({"disabled": false})),
        200,
        "user.update",
        "users/dave",
        None
    );
    step!(
        PUT,
        "/api/v1/users/dave/password",
        Some(json!({"new_password": "another-pass-456"})),
        204,
        "user.password",
        "users/dave/password",
        None
    );
    step!(
        POST,
        "/api/v1/projects",
        Some(json!({"name": "web"})),
        201,
        "project.create",
        "projects/web",
        Some("web")
    );
    step!(
        PATCH,
        "/api/v1/projects/web",
        Some(json!({"public": true})),
        200,
        "project.update",
        "projects/web",
        Some("web")
    );
    step!(
        PUT,
        "/api/v1/projects/web/members/dave",
        Some(json!({"role": "developer"})),
        200,
        "member.set",
        "projects/web/members/dave",
        Some("web")
    );
    step!(
        PUT,
        "/api/v1/settings",
        Some(json!({"auto_create_projects": false})),
        200,
        "settings.update",
        "settings",
        None
    );
    step!(
        PUT,
        "/api/v1/projects/web/quota",
        Some(json!({"storage_limit": 100_000_000})),
        200,
        "quota.update",
        "projects/web/quota",
        Some("web")
    );

    // Immutability rules: the create names the collection or the new rule.
    let mark = head_seq(&reg).await;
    let rule = call(
        &reg,
        Method::POST,
        "/api/v1/projects/web/immutability-rules",
        &a,
        Some(json!({"tags": "rel-*"})),
        201,
    )
    .await;
    let id = rule["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("rule id: {rule}"));
    let new = records_after(&reg, mark).await;
    assert_eq!(new.len(), 1, "immutability rule create:\n{}", summary(&new));
    assert_eq!(new[0]["action"], "immutability_rule.create", "{}", new[0]);
    let res = new[0]["resource"].as_str().unwrap_or_default();
    assert!(
        res == "projects/web/immutability-rules"
            || res == format!("projects/web/immutability-rules/{id}"),
        "{}",
        new[0]
    );
    check_record(&new[0], "admin", "user", Some("web"), "success");
    step!(
        DELETE,
        &format!("/api/v1/projects/web/immutability-rules/{id}"),
        None,
        204,
        "immutability_rule.delete",
        &format!("projects/web/immutability-rules/{id}"),
        Some("web")
    );

    step!(
        PUT,
        "/api/v1/projects/web/retention",
        Some(
            json!({"rules": [{"repositories": "*", "tags": "*", "keep": {"latest_pushed": 5}}], "schedule": null})
        ),
        200,
        "retention_policy.update",
        "projects/web/retention",
        Some("web")
    );

    // A retention run: the start (the API call) and the completion (the run).
    let mark = head_seq(&reg).await;
    let run = call(
        &reg,
        Method::POST,
        "/api/v1/projects/web/retention/runs",
        &a,
        Some(json!({"dry_run": true})),
        200,
    )
    .await;
    let new = records_after(&reg, mark).await;
    let actions: Vec<&str> = new
        .iter()
        .map(|r| r["action"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        actions.iter().filter(|x| **x == "retention.start").count(),
        1,
        "retention run:\n{}",
        summary(&new)
    );
    let finished: Vec<&str> = if run["status"] == "succeeded" {
        vec!["retention.completed"]
    } else {
        vec![]
    };
    let mut expected = vec!["retention.start"];
    expected.extend(finished);
    let mut sorted = actions.clone();
    sorted.sort();
    expected.sort();
    assert_eq!(sorted, expected, "retention run {run}:\n{}", summary(&new));
    let start = new
        .iter()
        .find(|r| r["action"] == "retention.start")
        .unwrap();
    assert_eq!(start["resource"], "projects/web/retention/runs", "{start}");
    check_record(start, "admin", "user", Some("web"), "success");
    if let Some(done) = new.iter().find(|r| r["action"] == "retention.completed") {
        assert_eq!(done["project"], "web", "{done}");
        assert_eq!(done["result"], "success", "{done}");
        assert_eq!(done["detail"]["dry_run"], true, "{done}");
    }

    step!(
        DELETE,
        "/api/v1/projects/web/retention",
        None,
        204,
        "retention_policy.delete",
        "projects/web/retention",
        Some("web")
    );

    // Webhooks (pointing at a closed loopback port; nothing is pushed while they exist).
    let mark = head_seq(&reg).await;
    let hook = call(
        &reg,
        Method::POST,
        "/api/v1/projects/web/webhooks",
        &a,
        Some(json!({"name": "ci", "url": "http://127.0.0.1:9/hook", "events": ["PUSH_ARTIFACT"]})),
        201,
    )
    .await;
    let hid = hook["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("webhook id: {hook}"));
    expect_api_record(
        &reg,
        mark,
        "webhook.create",
        &format!("projects/web/webhooks/{hid}"),
        Some("web"),
        "admin",
        201,
        "POST",
    )
    .await;
    step!(
        PUT,
        &format!("/api/v1/projects/web/webhooks/{hid}"),
        Some(
            json!({"name": "ci", "url": "http://127.0.0.1:9/hook", "events": ["PUSH_ARTIFACT"], "enabled": false})
        ),
        200,
        "webhook.update",
        &format!("projects/web/webhooks/{hid}"),
        Some("web")
    );
    step!(
        DELETE,
        &format!("/api/v1/projects/web/webhooks/{hid}"),
        None,
        204,
        "webhook.delete",
        &format!("projects/web/webhooks/{hid}"),
        Some("web")
    );

    // GC: the start (the API call) and the completion.
    let mark = head_seq(&reg).await;
    let gc = call(
        &reg,
        Method::POST,
        "/api/v1/system/gc",
        &a,
        Some(json!({"wait": true, "dry_run": true, "grace_seconds": 0})),
        200,
    )
    .await;
    assert_eq!(gc["status"], "succeeded", "{gc}");
    let new = records_after(&reg, mark).await;
    assert_eq!(new.len(), 2, "GC run:\n{}", summary(&new));
    let start = new
        .iter()
        .find(|r| r["action"] == "gc.start")
        .unwrap_or_else(|| panic!("no gc.start:\n{}", summary(&new)));
    assert_eq!(start["resource"], "system/gc", "{start}");
    check_record(start, "admin", "user", None, "success");
    let done = new
        .iter()
        .find(|r| r["action"] == "gc.completed")
        .unwrap_or_else(|| panic!("no gc.completed:\n{}", summary(&new)));
    assert_eq!(done["result"], "success", "{done}");
    assert_eq!(done["detail"]["dry_run"], true, "{done}");

    step!(
        DELETE,
        "/api/v1/projects/web/members/dave",
        None,
        204,
        "member.remove",
        "projects/web/members/dave",
        Some("web")
    );
    step!(
        DELETE,
        "/api/v1/users/dave",
        None,
        204,
        "user.delete",
        "users/dave",
        None
    );
    step!(
        DELETE,
        "/api/v1/projects/web",
        None,
        204,
        "project.delete",
        "projects/web",
        Some("web")
    );

    // Refused calls are failures: 403, 409, 404, 400.
    reg.create_user("eve", PASSWORD).await;
    let mark = head_seq(&reg).await;
    call(
        &reg,
        Method::POST,
        "/api/v1/users",
        &user("eve"),
        Some(json!({"username": "eve2", "password": PASSWORD})),
        403,
    )
    .await;
    let new = records_after(&reg, mark).await;
    assert_eq!(new.len(), 1, "refused user create:\n{}", summary(&new));
    let r = &new[0];
    assert_eq!(r["action"], "user.create", "{r}");
    assert!(
        r["resource"] == "users/eve2" || r["resource"] == "users",
        "{r}"
    );
    check_record(r, "eve", "user", None, "failure");
    assert_eq!(r["detail"]["status"], 403, "{r}");

    reg.create_project(&a, "lib", false).await;
    let mark = head_seq(&reg).await;
    call(
        &reg,
        Method::POST,
        "/api/v1/projects",
        &a,
        Some(json!({"name": "lib"})),
        409,
    )
    .await;
    expect_api_record(
        &reg,
        mark,
        "project.create",
        "projects/lib",
        Some("lib"),
        "admin",
        409,
        "POST",
    )
    .await;

    let mark = head_seq(&reg).await;
    call(
        &reg,
        Method::PATCH,
        "/api/v1/users/nobody",
        &a,
        Some(json!({"disabled": true})),
        404,
    )
    .await;
    expect_api_record(
        &reg,
        mark,
        "user.update",
        "users/nobody",
        None,
        "admin",
        404,
        "PATCH",
    )
    .await;

    let mark = head_seq(&reg).await;
    call(
        &reg,
        Method::POST,
        "/api/v1/projects",
        &a,
        Some(json!({"name": "Not A Name"})),
        400,
    )
    .await;
    let new = records_after(&reg, mark).await;
    assert_eq!(new.len(), 1, "invalid project create:\n{}", summary(&new));
    assert_eq!(new[0]["action"], "project.create", "{}", new[0]);
    assert_eq!(new[0]["result"], "failure", "{}", new[0]);
    assert_eq!(new[0]["detail"]["status"], 400, "{}", new[0]);

    // 401: no credentials is no record; a bad password is a login failure, not the action.
    let mark = head_seq(&reg).await;
    call(
        &reg,
        Method::POST,
        "/api/v1/users",
        &Cred::Anonymous,
        Some(json!({"username": "x1", "password": PASSWORD})),
        401,
    )
    .await;
    expect_none(&reg, mark, "anonymous management call").await;
    let mark = head_seq(&reg).await;
    call(
        &reg,
        Method::POST,
        "/api/v1/users",
        &Cred::basic("admin", "not-the-password"),
        Some(json!({"username": "x2", "password": PASSWORD})),
        401,
    )
    .await;
    let r = expect_one(&reg, mark, "bad password on the API", "login", "token").await;
    check_record(&r, "admin", "user", None, "failure");

    check_chain(&all_records(&reg).await);
}

/// Artifact deletes and tag restores through the management API are the registry's records
/// (one each), not an extra API record.
#[tokio::test]
async fn artifact_deletes_and_restores_via_the_api_are_one_record() {
    let (_srv, reg) = setup(&[], "lib", &[("dev", "developer")]).await;
    let a = admin();
    let d1 = push_image(&reg, &a, "lib/app", "v1").await;
    let d2 = push_image(&reg, &a, "lib/app", "v1").await;
    push_image(&reg, &a, "lib/other", "x").await;

    // Restore v1 to its previous target.
    let mark = head_seq(&reg).await;
    call(
        &reg,
        Method::POST,
        "/api/v1/projects/lib/repositories/app/tags/v1/restore",
        &a,
        Some(json!({"digest": d1})),
        200,
    )
    .await;
    let r = expect_one(&reg, mark, "tag restore", "tag", "lib/app:v1").await;
    check_record(&r, "admin", "user", Some("lib"), "success");
    assert_eq!(r["resource_type"], "artifact", "{r}");
    assert_eq!(r["detail"]["digest"], d1.as_str(), "{r}");
    assert_eq!(r["detail"]["previous"], d2.as_str(), "{r}");

    // Remove the tag through the API.
    let mark = head_seq(&reg).await;
    call(
        &reg,
        Method::DELETE,
        &format!("/api/v1/projects/lib/repositories/app/artifacts/{d1}/tags/v1"),
        &a,
        None,
        204,
    )
    .await;
    let r = expect_one(&reg, mark, "tag delete via API", "delete", "lib/app:v1").await;
    check_record(&r, "admin", "user", Some("lib"), "success");
    assert_eq!(r["resource_type"], "tag", "{r}");

    // A refused artifact delete is recorded as a failure.
    let mark = head_seq(&reg).await;
    let path = format!("/api/v1/projects/lib/repositories/app/artifacts/{d2}");
    call(&reg, Method::DELETE, &path, &user("dev"), None, 403).await;
    let new = records_after(&reg, mark).await;
    assert_eq!(new.len(), 1, "refused artifact delete:\n{}", summary(&new));
    assert_eq!(new[0]["action"], "delete", "{}", new[0]);
    check_record(&new[0], "dev", "user", Some("lib"), "failure");
    assert_eq!(new[0]["detail"]["status"], 403, "{}", new[0]);

    // Delete the artifact through the API.
    let mark = head_seq(&reg).await;
    call(&reg, Method::DELETE, &path, &a, None, 204).await;
    let r = expect_one(
        &reg,
        mark,
        "artifact delete via API",
        "delete",
        &format!("lib/app@{d2}"),
    )
    .await;
    check_record(&r, "admin", "user", Some("lib"), "success");
    assert_eq!(r["resource_type"], "artifact", "{r}");
    assert_eq!(r["detail"]["cause"], "client", "{r}");

    // Deleting a repository: one repository.delete (plus the registry's own deletes).
    let mark = head_seq(&reg).await;
    call(
        &reg,
        Method::DELETE,
        "/api/v1/projects/lib/repositories/other",
        &a,
        None,
        204,
    )
    .await;
    let new = records_after(&reg, mark).await;
    let repo_deletes: Vec<&Value> = new
        .iter()
        .filter(|r| r["action"] == "repository.delete")
        .collect();
    assert_eq!(
        repo_deletes.len(),
        1,
        "repository delete:\n{}",
        summary(&new)
    );
    let r = repo_deletes[0];
    assert_eq!(r["resource"], "projects/lib/repositories/other", "{r}");
    check_record(r, "admin", "user", Some("lib"), "success");
    for r in &new {
        assert!(
            r["action"] == "repository.delete"
                || (r["action"] == "delete"
                    && r["resource"]
                        .as_str()
                        .unwrap_or("")
                        .starts_with("lib/other")),
            "unexpected record for a repository delete:\n{}",
            summary(&new)
        );
    }
}

#[tokio::test]
async fn robots_are_recorded_as_robots() {
    let (_srv, reg) = setup(&[], "web", &[]).await;
    let a = admin();
    let mark = head_seq(&reg).await;
    let created = call(
        &reg,
        Method::POST,
        "/api/v1/robots",
        &a,
        Some(
            json!({"name": "ci", "project": "web", "permissions": [{"actions": ["pull", "push"]}]}),
        ),
        201,
    )
    .await;
    let name = created["name"]
        .as_str()
        .unwrap_or_else(|| panic!("robot name: {created}"))
        .to_string();
    let secret = created["secret"]
        .as_str()
        .unwrap_or_else(|| panic!("robot secret: {created}"))
        .to_string();
    let new = records_after(&reg, mark).await;
    assert_eq!(new.len(), 1, "robot create:\n{}", summary(&new));
    assert_eq!(new[0]["action"], "robot.create", "{}", new[0]);
    check_record(&new[0], "admin", "user", Some("web"), "success");
    let create_record = new[0].clone();

    let robot = Cred::basic(&name, &secret);
    let mark = head_seq(&reg).await;
    push_image(&reg, &robot, "web/app", "v1").await;
    let r = expect_one(&reg, mark, "robot push", "push", "web/app:v1").await;
    check_record(&r, &name, "robot", Some("web"), "success");

    let mark = head_seq(&reg).await;
    reg.token(&robot, &["repository:web/app:pull"]).await;
    let r = expect_one(&reg, mark, "robot login", "login", "token").await;
    check_record(&r, &name, "robot", None, "success");

    let mark = head_seq(&reg).await;
    let resp = reg
        .token_response(&Cred::basic(&name, "wrong-secret"), &[])
        .await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let r = expect_one(&reg, mark, "robot bad secret", "login", "token").await;
    check_record(&r, &name, "robot", None, "failure");

    let path = format!("/api/v1/robots/{name}");
    let resource = format!("robots/{name}");
    let mark = head_seq(&reg).await;
    call(
        &reg,
        Method::PATCH,
        &path,
        &a,
        Some(json!({"disabled": false})),
        200,
    )
    .await;
    let r = expect_one(&reg, mark, "robot update", "robot.update", &resource).await;
    check_record(&r, "admin", "user", None, "success");
    let mark = head_seq(&reg).await;
    call(
        &reg,
        Method::POST,
        &format!("{path}/refresh"),
        &a,
        None,
        200,
    )
    .await;
    expect_one(
        &reg,
        mark,
        "robot refresh",
        "robot.refresh",
        &format!("{resource}/refresh"),
    )
    .await;
    let mark = head_seq(&reg).await;
    call(&reg, Method::DELETE, &path, &a, None, 204).await;
    expect_one(&reg, mark, "robot delete", "robot.delete", &resource).await;

    // The create names the robot as the rest of the API does (robots/<login name>, the
    // resource of its update, refresh and delete records): "robots/ci" would not tell a
    // system robot `robot$ci` from this project robot `robot$web+ci` by resource, and would
    // not match the robot's later records.
    assert_eq!(
        create_record["resource"],
        resource.as_str(),
        "robot.create names the created robot: {create_record}"
    );
}

// ---- 5. filters and pagination ----------------------------------------------------------------

/// Which `at` values a time-bounded query must return.
type TimePredicate = Box<dyn Fn(i64) -> bool>;

#[tokio::test]
async fn filters_select_exactly_the_matching_records() {
    let (_srv, reg) = setup(&[], "p1", &[("alice", "developer")]).await;
    reg.create_project(&admin(), "p2", false).await;
    let alice = user("alice");
    push_image(&reg, &alice, "p1/app", "v1").await;
    push_image(&reg, &admin(), "p2/app", "v1").await;
    v2(
        &reg,
        Method::GET,
        "/v2/p1/app/manifests/v1",
        &alice,
        StatusCode::OK,
    )
    .await;
    v2(
        &reg,
        Method::GET,
        "/v2/p2/app/manifests/v1",
        &alice,
        StatusCode::FORBIDDEN,
    )
    .await;
    reg.token_response(&Cred::basic("alice", "bad-password-9"), &[])
        .await;

    // A second phase in a later second, for RFC 3339 bounds (second precision).
    let first_phase_end = seq(&all_records(&reg).await[0]);
    let last_at = all_records(&reg).await[0]["at"].as_i64().unwrap();
    let boundary = (last_at / 1000 + 1) * 1000;
    let wait = boundary + 20 - now_ms();
    if wait > 0 {
        tokio::time::sleep(Duration::from_millis(wait as u64)).await;
    }
    push_image(&reg, &alice, "p1/app", "v2").await;
    v2(
        &reg,
        Method::GET,
        "/v2/p2/app/manifests/v1",
        &admin(),
        StatusCode::OK,
    )
    .await;
    reg.create_project(&admin(), "p3", true).await;

    let all = all_records(&reg).await;
    check_chain(&all);
    assert!(seq(&all[0]) > first_phase_end);

    let cases: &[&[(&str, &str)]] = &[
        &[("actor", "alice")],
        &[("actor", "admin")],
        &[("project", "p1")],
        &[("project", "p2")],
        &[("action", "push")],
        &[("action", "pull")],
        &[("action", "login")],
        &[("result", "failure")],
        &[("result", "success")],
        &[("resource_type", "artifact")],
        &[("resource_type", "repository")],
        &[("actor", "alice"), ("action", "push")],
        &[("project", "p2"), ("result", "failure")],
        &[("actor", "nobody-at-all")],
    ];
    for filters in cases {
        let query: Vec<String> = filters
            .iter()
            .map(|(k, v)| format!("{k}={}", encode_query(v)))
            .collect();
        let (_, got) = audit_get(
            &reg,
            &format!("/api/v1/audit-logs?n=1000&{}", query.join("&")),
        )
        .await;
        let want: Vec<Value> = all
            .iter()
            .filter(|r| filters.iter().all(|(k, v)| r[*k] == *v))
            .cloned()
            .collect();
        assert_eq!(
            seqs(&got),
            seqs(&want),
            "filter {filters:?}:\ngot:\n{}\nwant:\n{}",
            summary(&got),
            summary(&want)
        );
        if filters[0].1 != "nobody-at-all" {
            assert!(
                !want.is_empty(),
                "filter {filters:?} should match something:\n{}",
                summary(&all)
            );
        }
        assert_eq!(got, want, "filtered records are the same records");
    }

    // Time bounds in epoch ms: from inclusive, to exclusive.
    let mid = &all[all.len() / 2];
    let t = mid["at"].as_i64().unwrap();
    let at_of = |r: &Value| r["at"].as_i64().unwrap();
    let bounds: Vec<(String, TimePredicate)> = vec![
        (format!("from={t}"), Box::new(move |a| a >= t)),
        (format!("to={t}"), Box::new(move |a| a < t)),
        (
            format!("from={}&to={}", t, boundary),
            Box::new(move |a| a >= t && a < boundary),
        ),
        (
            format!("from={}", encode_query(&format_rfc3339(boundary, 0))),
            Box::new(move |a| a >= boundary),
        ),
        (
            format!("to={}", encode_query(&format_rfc3339(boundary, 0))),
            Box::new(move |a| a < boundary),
        ),
        (
            format!("from={}", encode_query(&format_rfc3339(boundary, 120))),
            Box::new(move |a| a >= boundary),
        ),
        (
            format!("to={}", encode_query(&format_rfc3339(boundary, -330))),
            Box::new(move |a| a < boundary),
        ),
    ];
    for (q, keep) in &bounds {
        let (_, got) = audit_get(&reg, &format!("/api/v1/audit-logs?n=1000&{q}")).await;
        let want: Vec<Value> = all.iter().filter(|r| keep(at_of(r))).cloned().collect();
        assert_eq!(
            seqs(&got),
            seqs(&want),
            "{q}:\ngot:\n{}\nwant:\n{}",
            summary(&got),
            summary(&want)
        );
    }
    // Both sides of the boundary are populated, so the RFC 3339 cases above were not vacuous.
    assert!(all.iter().any(|r| at_of(r) >= boundary) && all.iter().any(|r| at_of(r) < boundary));
    let (_, none) = audit_get(&reg, &format!("/api/v1/audit-logs?from={t}&to={t}")).await;
    assert!(
        none.is_empty(),
        "from = to selects nothing: {}",
        summary(&none)
    );

    let (status, body) = reg
        .api(
            Method::GET,
            "/api/v1/audit-logs?from=yesterday",
            &admin(),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test]
async fn pages_walk_every_record_once_newest_first() {
    let srv = start_local(&[]);
    let reg = Reg::new(&srv);
    for i in 0..7 {
        reg.create_project(&admin(), &format!("proj{i}"), false)
            .await;
    }
    reg.create_user("u1", PASSWORD).await;
    reg.create_user("u2", PASSWORD).await;
    let all = all_records(&reg).await;
    assert_eq!(all.len(), 9, "{}", summary(&all));
    // No Link when the page is not full.
    let (h, _) = audit_get(&reg, "/api/v1/audit-logs?n=100").await;
    assert!(next_link(&h).is_none());

    for (start, filter, want_len) in [
        ("/api/v1/audit-logs?n=2", None, 9usize),
        ("/api/v1/audit-logs?n=3", None, 9),
        (
            "/api/v1/audit-logs?action=project.create&n=2",
            Some("project.create"),
            7,
        ),
    ] {
        let want: Vec<Value> = all
            .iter()
            .filter(|r| filter.is_none_or(|f| r["action"] == f))
            .cloned()
            .collect();
        assert_eq!(want.len(), want_len);
        let n: usize = query_pairs(start)
            .iter()
            .find(|(k, _)| k == "n")
            .unwrap()
            .1
            .parse()
            .unwrap();
        let mut got: Vec<Value> = Vec::new();
        let mut next = Some(start.to_string());
        let mut pages = 0;
        while let Some(url) = next.take() {
            pages += 1;
            assert!(pages <= 20, "{start}: too many pages");
            let (headers, page) = audit_get(&reg, &url).await;
            assert!(page.len() <= n, "{url}: page of {} > n={n}", page.len());
            next = next_link(&headers);
            if let Some(link) = &next {
                assert_eq!(page.len(), n, "{url}: a Link only after a full page");
                let q = query_pairs(link);
                let last = q.iter().find(|(k, _)| k == "last").map(|(_, v)| v.clone());
                assert_eq!(
                    last,
                    Some(seq(page.last().unwrap()).to_string()),
                    "Link {link}"
                );
                assert!(
                    q.iter().any(|(k, v)| k == "n" && *v == n.to_string()),
                    "Link {link}"
                );
                if let Some(f) = filter {
                    assert!(
                        q.iter().any(|(k, v)| k == "action" && v == f),
                        "Link keeps the filter: {link}"
                    );
                }
                assert!(link.starts_with("/api/v1/audit-logs?"), "Link {link}");
            } else {
                assert!(
                    page.len() < n || page.is_empty() || got.len() + page.len() == want.len(),
                    "{url}"
                );
            }
            got.extend(page);
        }
        let s = seqs(&got);
        assert!(
            s.windows(2).all(|w| w[0] > w[1]),
            "{start}: newest first, no duplicates: {s:?}"
        );
        assert_eq!(s, seqs(&want), "{start}: pages cover everything once");
        assert_eq!(got, want, "{start}");
    }

    // The audit API takes bearer tokens as well as Basic.
    let token = reg.token(&admin(), &[]).await;
    let (_, via_token) =
        audit_get_as(&reg, "/api/v1/audit-logs?n=1000", &Cred::Bearer(token)).await;
    assert_eq!(via_token.len(), all.len() + 1, "{}", summary(&via_token));
    assert_eq!(
        via_token[0]["action"], "login",
        "getting the token was a login"
    );
    assert_eq!(seqs(&via_token[1..]), seqs(&all));

    // `last` alone: strictly older records.
    let pivot = seq(&all[3]);
    let (_, older) = audit_get(&reg, &format!("/api/v1/audit-logs?last={pivot}&n=1000")).await;
    assert_eq!(seqs(&older), seqs(&all[4..]), "last={pivot}");
}

#[tokio::test]
async fn project_audit_logs_are_for_that_projects_admins() {
    let (_srv, reg) = setup(
        &[],
        "p1",
        &[("alice", "project_admin"), ("bob", "developer")],
    )
    .await;
    reg.create_project(&admin(), "p2", false).await;
    push_image(&reg, &user("bob"), "p1/app", "v1").await;
    push_image(&reg, &admin(), "p2/app", "v1").await;
    v2(
        &reg,
        Method::GET,
        "/v2/p1/app/manifests/v1",
        &admin(),
        StatusCode::OK,
    )
    .await;

    let (_, want) = audit_get(&reg, "/api/v1/audit-logs?project=p1&n=1000").await;
    assert!(want.len() >= 3, "{}", summary(&want));
    let (_, as_admin) = audit_get(&reg, "/api/v1/projects/p1/audit-logs?n=1000").await;
    assert_eq!(as_admin, want);
    let (_, as_alice) = audit_get_as(
        &reg,
        "/api/v1/projects/p1/audit-logs?n=1000",
        &user("alice"),
    )
    .await;
    assert_eq!(as_alice, want);
    // The project is forced.
    let (_, forced) = audit_get_as(
        &reg,
        "/api/v1/projects/p1/audit-logs?project=p2&n=1000",
        &user("alice"),
    )
    .await;
    assert_eq!(forced, want, "project=p2 cannot widen p1's log");
    let (_, pushes) = audit_get_as(
        &reg,
        "/api/v1/projects/p1/audit-logs?action=push",
        &user("alice"),
    )
    .await;
    assert_eq!(
        seqs(&pushes),
        seqs(
            &want
                .iter()
                .filter(|r| r["action"] == "push")
                .cloned()
                .collect::<Vec<_>>()
        )
    );

    // Everyone else is refused (a private project the caller is not a member of may also
    // answer 404, not revealing that it exists).
    for (path, cred, statuses) in [
        (
            "/api/v1/projects/p2/audit-logs",
            user("alice"),
            &[403u16, 404][..],
        ),
        ("/api/v1/projects/p1/audit-logs", user("bob"), &[403]),
        ("/api/v1/audit-logs", user("alice"), &[403]),
        ("/api/v1/audit-logs/export", user("alice"), &[403]),
        ("/api/v1/audit-logs/verify", user("alice"), &[403]),
        ("/api/v1/audit-logs", Cred::Anonymous, &[401]),
        (
            "/api/v1/projects/p1/audit-logs",
            Cred::Anonymous,
            &[401, 404],
        ),
    ] {
        let (got, body) = reg.api(Method::GET, path, &cred, None).await;
        assert!(
            statuses.contains(&got.as_u16()),
            "GET {path} as {}: {got} {body}, expected one of {statuses:?}",
            cred.describe()
        );
        assert!(
            body.get("errors").is_some() && !body.is_array(),
            "no records leak: {body}"
        );
    }

    // A refused purge is recorded as a failure.
    let mark = head_seq(&reg).await;
    call(
        &reg,
        Method::POST,
        "/api/v1/audit-logs/purge",
        &user("alice"),
        Some(json!({"older_than_days": 0})),
        403,
    )
    .await;
    let r = expect_purge(&reg, mark, "refused purge").await;
    check_record(&r, "alice", "user", None, "failure");
    assert_eq!(r["detail"]["status"], 403, "{r}");
    assert_eq!(
        all_records(&reg).await.len() as i64,
        seq(&r),
        "nothing was purged"
    );
}

/// Exactly one record after `mark`: an `audit.purge` of the audit log. Its resource is the
/// log ("audit-logs") or the API path ("audit-logs/purge"); today a successful purge says the
/// former and a refused one the latter.
async fn expect_purge(reg: &Reg, mark: i64, what: &str) -> Value {
    let new = records_after(reg, mark).await;
    assert_eq!(new.len(), 1, "{what}:\n{}", summary(&new));
    let r = new[0].clone();
    assert_eq!(r["action"], "audit.purge", "{what}: {r}");
    assert_eq!(r["resource_type"], "audit_log", "{what}: {r}");
    assert!(
        r["resource"] == "audit-logs" || r["resource"] == "audit-logs/purge",
        "{what}: {r}"
    );
    r
}

// ---- 6. export --------------------------------------------------------------------------------

async fn export(reg: &Reg, query: &str) -> Vec<Value> {
    let resp = reg
        .send(
            Method::GET,
            &format!("/api/v1/audit-logs/export{query}"),
            &admin(),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let ct = resp
        .headers()
        .get(CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    assert!(ct.starts_with("application/x-ndjson"), "content type {ct}");
    let text = resp.text().await.expect("body");
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "every line ends with a newline"
    );
    text.lines()
        .map(|l| {
            assert!(!l.trim().is_empty(), "no blank lines: {text:?}");
            let v: Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("line is not JSON ({e}): {l}"));
            assert!(v.is_object(), "{l}");
            v
        })
        .collect()
}

#[tokio::test]
async fn export_is_json_lines_oldest_first() {
    let (_srv, reg) = setup(&[], "lib", &[("alice", "developer")]).await;
    push_image(&reg, &user("alice"), "lib/app", "v1").await;
    push_image(&reg, &user("alice"), "lib/app", "v2").await;
    reg.token_response(&Cred::basic("alice", "nope-nope-nope"), &[])
        .await;

    let mut all = all_records(&reg).await;
    all.reverse();
    let lines = export(&reg, "").await;
    assert_eq!(lines.len(), all.len(), "export has every record");
    let s = seqs(&lines);
    assert!(s.windows(2).all(|w| w[0] < w[1]), "oldest first: {s:?}");
    assert_eq!(lines, all, "exported records equal the listed ones");

    let (_, mut pushes) = audit_get(&reg, "/api/v1/audit-logs?action=push").await;
    pushes.reverse();
    assert_eq!(pushes.len(), 2);
    assert_eq!(export(&reg, "?action=push").await, pushes);
    let (_, mut fails) = audit_get(&reg, "/api/v1/audit-logs?actor=alice&result=failure").await;
    fails.reverse();
    assert_eq!(fails.len(), 1);
    assert_eq!(export(&reg, "?actor=alice&result=failure").await, fails);
}

// ---- 7. the hash chain ------------------------------------------------------------------------

/// `GET /api/v1/audit-logs/verify`.
async fn verify_api(reg: &Reg) -> Value {
    call(
        reg,
        Method::GET,
        "/api/v1/audit-logs/verify",
        &admin(),
        None,
        200,
    )
    .await
}

/// `kura audit verify [--json]` over the server's backends: (exit code, stdout, stderr).
fn verify_cli(srv: &KuraServer, json_out: bool) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kura"));
    cmd.arg("audit").arg("verify");
    if json_out {
        cmd.arg("--json");
    }
    cmd.arg("--data-dir")
        .arg(&srv.data_dir)
        .args(Backends::from_env().args_for(&srv.data_dir))
        .env("RUST_LOG", "warn");
    let out = cmd.output().expect("run kura audit verify");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// Runs SQL against the server's metadata database (psql for PostgreSQL, sqlite3 or python3
/// for SQLite; the server keeps running: SQLite is in WAL mode).
fn tamper(srv: &KuraServer, sql: &str) {
    let backends = Backends::from_env();
    let out = if backends.postgres {
        let args = backends.args_for(&srv.data_dir);
        let i = args
            .iter()
            .position(|a| a == "--metadata-url")
            .expect("--metadata-url");
        Command::new("psql")
            .args([args[i + 1].as_str(), "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .expect("run psql")
    } else {
        let db = srv.data_dir.join("kura.db");
        assert!(db.exists(), "no SQLite database at {}", db.display());
        match Command::new("sqlite3")
            .arg("-cmd")
            .arg(".timeout 10000")
            .arg(&db)
            .arg(sql)
            .output()
        {
            Ok(o) => o,
            Err(_) => Command::new("python3")
                .arg("-c")
                .arg("import sqlite3,sys; c=sqlite3.connect(sys.argv[1], timeout=10); c.execute(sys.argv[2]); c.commit()")
                .arg(&db)
                .arg(sql)
                .output()
                .expect("run python3"),
        }
    };
    assert!(
        out.status.success(),
        "{sql}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A few records of every kind.
async fn some_history(reg: &Reg) {
    reg.create_project(&admin(), "lib", false).await;
    reg.create_user("alice", PASSWORD).await;
    reg.set_member(&admin(), "lib", "alice", "developer").await;
    push_image(reg, &user("alice"), "lib/app", "v1").await;
    v2(
        reg,
        Method::GET,
        "/v2/lib/app/manifests/v1",
        &user("alice"),
        StatusCode::OK,
    )
    .await;
    reg.token_response(&Cred::basic("alice", "wrong-wrong-1"), &[])
        .await;
    push_image(reg, &admin(), "lib/app", "v2").await;
}

#[tokio::test]
async fn verify_detects_a_modified_record() {
    let srv = start_local(&[]);
    let reg = Reg::new(&srv);
    some_history(&reg).await;
    let all = all_records(&reg).await;
    let n = all.len() as i64;
    assert!(n >= 6, "{}", summary(&all));
    check_chain(&all);

    let report = verify_api(&reg).await;
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["records_checked"], n, "{report}");
    assert_eq!(report["first_seq"], 1, "{report}");
    assert_eq!(report["last_seq"], n, "{report}");
    assert_eq!(report["broken"], Value::Null, "{report}");
    let (code, out, err) = verify_cli(&srv, false);
    assert_eq!(code, 0, "intact log: stdout {out} stderr {err}");
    let (code, out, err) = verify_cli(&srv, true);
    assert_eq!(code, 0, "intact log (--json): stdout {out} stderr {err}");
    let cli: Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("--json output ({e}): {out}"));
    assert_eq!(cli["ok"], true, "{cli}");
    assert_eq!(cli["records_checked"], n, "{cli}");

    // Change the actor of a record in the middle, straight in the database.
    let mid = n / 2;
    let victim = all.iter().find(|r| seq(r) == mid).unwrap();
    assert_ne!(victim["actor"], "mallory");
    tamper(
        &srv,
        &format!("UPDATE audit_log SET actor = 'mallory' WHERE seq = {mid}"),
    );
    let (_, now) = audit_get(&reg, &format!("/api/v1/audit-logs?last={}&n=1", mid + 1)).await;
    assert_eq!(
        now[0]["actor"], "mallory",
        "the tampering took effect: {}",
        now[0]
    );

    let report = verify_api(&reg).await;
    assert_eq!(report["ok"], false, "{report}");
    assert_eq!(report["broken"]["seq"], mid, "{report}");
    assert!(
        report["broken"]["reason"]
            .as_str()
            .is_some_and(|r| !r.is_empty()),
        "{report}"
    );
    let (code, out, err) = verify_cli(&srv, false);
    assert_eq!(code, 1, "tampered log: stdout {out} stderr {err}");
    assert!(
        out.contains(&format!("audit log BROKEN at record {mid}:")),
        "stdout names the record: {out}"
    );
    let (code, out, _) = verify_cli(&srv, true);
    assert_eq!(code, 1, "{out}");
    let cli: Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("--json output ({e}): {out}"));
    assert_eq!(cli["ok"], false, "{cli}");
    assert_eq!(cli["broken"]["seq"], mid, "{cli}");

    // The server keeps recording; the first broken record is still reported.
    push_image(&reg, &admin(), "lib/app", "v3").await;
    let report = verify_api(&reg).await;
    assert_eq!(report["ok"], false, "{report}");
    assert_eq!(report["broken"]["seq"], mid, "{report}");
}

#[tokio::test]
async fn verify_detects_a_removed_record() {
    let srv = start_local(&[]);
    let reg = Reg::new(&srv);
    some_history(&reg).await;
    let n = all_records(&reg).await.len() as i64;
    let mid = n / 2;
    tamper(&srv, &format!("DELETE FROM audit_log WHERE seq = {mid}"));
    assert_eq!(all_records(&reg).await.len() as i64, n - 1);

    let report = verify_api(&reg).await;
    assert_eq!(report["ok"], false, "{report}");
    assert_eq!(report["broken"]["seq"], mid, "{report}");
    let reason = report["broken"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("missing"),
        "reason mentions the missing record: {report}"
    );
    let (code, out, err) = verify_cli(&srv, false);
    assert_eq!(code, 1, "stdout {out} stderr {err}");
    assert!(
        out.contains(&format!("audit log BROKEN at record {mid}:")),
        "{out}"
    );
}

#[tokio::test]
async fn verify_detects_a_removed_newest_record() {
    let srv = start_local(&[]);
    let reg = Reg::new(&srv);
    some_history(&reg).await;
    let n = all_records(&reg).await.len() as i64;
    tamper(&srv, &format!("DELETE FROM audit_log WHERE seq = {n}"));
    let report = verify_api(&reg).await;
    assert_eq!(report["ok"], false, "{report}");
    assert_eq!(report["broken"]["seq"], n, "{report}");
    let (code, out, err) = verify_cli(&srv, false);
    assert_eq!(code, 1, "stdout {out} stderr {err}");
}

#[tokio::test]
async fn verify_cannot_check_without_a_database() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // A PostgreSQL URL on a loopback port nobody listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_kura"))
        .args(["audit", "verify", "--data-dir"])
        .arg(tmp.path())
        .args([
            "--metadata-url",
            &format!("postgres://kura@127.0.0.1:{port}/kura"),
        ])
        .env("RUST_LOG", "warn")
        .output()
        .expect("run kura audit verify");
    assert_eq!(
        out.status.code(),
        Some(2),
        "after {:?}: stdout {} stderr {}",
        started.elapsed(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn purge_keeps_the_chain_verifiable() {
    let srv = start_local(&[]);
    let reg = Reg::new(&srv);
    some_history(&reg).await;
    let n = all_records(&reg).await.len() as i64;
    tokio::time::sleep(Duration::from_millis(10)).await;

    // Nothing is 30 days old.
    let mark = head_seq(&reg).await;
    let v = call(
        &reg,
        Method::POST,
        "/api/v1/audit-logs/purge",
        &admin(),
        Some(json!({"older_than_days": 30})),
        200,
    )
    .await;
    assert_eq!(v["removed"], 0, "{v}");
    let r = expect_purge(&reg, mark, "purge of nothing").await;
    check_record(&r, "admin", "user", None, "success");
    tokio::time::sleep(Duration::from_millis(10)).await;

    // Everything before now.
    let v = call(
        &reg,
        Method::POST,
        "/api/v1/audit-logs/purge",
        &admin(),
        Some(json!({"older_than_days": 0})),
        200,
    )
    .await;
    assert_eq!(v["removed"], n + 1, "{v}");
    let all = all_records(&reg).await;
    assert_eq!(
        all.len(),
        1,
        "only the purge's own record remains:\n{}",
        summary(&all)
    );
    let r = &all[0];
    assert_eq!(r["action"], "audit.purge", "{r}");
    assert_eq!(r["resource_type"], "audit_log", "{r}");
    assert_eq!(seq(r), n + 2, "{r}");
    check_record(r, "admin", "user", None, "success");
    assert_eq!(r["detail"]["removed"], n + 1, "{r}");

    let report = verify_api(&reg).await;
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["records_checked"], 1, "{report}");
    assert_eq!(report["first_seq"], n + 2, "{report}");
    assert_eq!(report["last_seq"], n + 2, "{report}");
    let (code, out, err) = verify_cli(&srv, false);
    assert_eq!(code, 0, "after a purge: stdout {out} stderr {err}");

    // The chain goes on from there.
    push_image(&reg, &admin(), "lib/app", "v9").await;
    let report = verify_api(&reg).await;
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["records_checked"], 2, "{report}");
    check_chain(&all_records(&reg).await);

    // An invalid purge is a failure record and removes nothing.
    let mark = head_seq(&reg).await;
    call(
        &reg,
        Method::POST,
        "/api/v1/audit-logs/purge",
        &admin(),
        Some(json!({"older_than_days": -1})),
        400,
    )
    .await;
    let new = records_after(&reg, mark).await;
    assert_eq!(new.len(), 1, "invalid purge:\n{}", summary(&new));
    assert_eq!(new[0]["action"], "audit.purge", "{}", new[0]);
    check_record(&new[0], "admin", "user", None, "failure");
    assert_eq!(new[0]["detail"]["status"], 400, "{}", new[0]);
    assert_eq!(
        all_records(&reg).await.len(),
        3,
        "purge record, push, failed purge: nothing else was removed"
    );

    // Tampering with what is left is still detected.
    let first = n + 2;
    tamper(
        &srv,
        &format!("UPDATE audit_log SET resource = 'elsewhere' WHERE seq = {first}"),
    );
    let report = verify_api(&reg).await;
    assert_eq!(report["ok"], false, "{report}");
    assert_eq!(report["broken"]["seq"], first, "{report}");
}

// ---- GC and retention -------------------------------------------------------------------------

#[tokio::test]
async fn gc_and_retention_deletions_name_their_cause() {
    let (_srv, reg) = setup(&[], "rt", &[]).await;
    let a = admin();
    let d1 = push_image(&reg, &a, "rt/app", "v1").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let d2 = push_image(&reg, &a, "rt/app", "v2").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let d3 = push_image(&reg, &a, "rt/app", "v3").await;
    call(&reg, Method::PUT, "/api/v1/projects/rt/retention", &a,
        Some(json!({"rules": [{"repositories": "app", "tags": "*", "keep": {"latest_pushed": 1}}], "schedule": null})), 200).await;

    let mark = head_seq(&reg).await;
    let run = call(
        &reg,
        Method::POST,
        "/api/v1/projects/rt/retention/runs",
        &a,
        Some(json!({"dry_run": false})),
        200,
    )
    .await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let new = records_after(&reg, mark).await;
    let deletes: BTreeSet<String> = new
        .iter()
        .filter(|r| r["action"] == "delete")
        .map(|r| {
            assert_eq!(r["detail"]["cause"], "retention", "{r}");
            assert_eq!(r["resource_type"], "artifact", "{r}");
            assert_eq!(r["project"], "rt", "{r}");
            r["resource"].as_str().unwrap().to_string()
        })
        .collect();
    let want: BTreeSet<String> = [&d1, &d2].iter().map(|d| format!("rt/app@{d}")).collect();
    assert_eq!(deletes, want, "retention deletes:\n{}", summary(&new));
    let count =
        |list: &[Value], action: &str| list.iter().filter(|r| r["action"] == action).count();
    assert_eq!(
        count(&new, "delete"),
        2,
        "one record per deletion:\n{}",
        summary(&new)
    );
    assert_eq!(count(&new, "retention.start"), 1, "{}", summary(&new));
    assert_eq!(count(&new, "retention.completed"), 1, "{}", summary(&new));
    assert_eq!(new.len(), 4, "{}", summary(&new));
    let done = new
        .iter()
        .find(|r| r["action"] == "retention.completed")
        .unwrap();
    assert_eq!(done["project"], "rt", "{done}");
    assert_eq!(done["detail"]["dry_run"], false, "{done}");

    // GC deleting an untagged manifest.
    let m4 = fresh_manifest(&reg, &a, "rt/app").await;
    let d4 = sha256(&m4);
    put_manifest(&reg, &a, "rt/app", &d4, &m4).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mark = head_seq(&reg).await;
    let gc = call(&reg, Method::POST, "/api/v1/system/gc", &a,
        Some(json!({"wait": true, "grace_seconds": 0, "deleted_manifest_retention_seconds": 0, "delete_untagged": true})), 200).await;
    assert_eq!(gc["status"], "succeeded", "{gc}");
    assert_eq!(
        gc["result"]["manifests_deleted"], 1,
        "GC deleted the untagged manifest: {gc}"
    );
    let status = reg
        .send(Method::HEAD, &format!("/v2/rt/app/manifests/{d4}"), &a)
        .await
        .status();
    assert_eq!(status, StatusCode::NOT_FOUND, "GC deleted {d4}: {gc}");
    let new = records_after(&reg, mark).await;
    assert_eq!(count(&new, "gc.start"), 1, "{}", summary(&new));
    assert_eq!(count(&new, "gc.completed"), 1, "{}", summary(&new));
    let d4_deletes: Vec<&Value> = new
        .iter()
        .filter(|r| r["action"] == "delete" && r["resource"] == format!("rt/app@{d4}"))
        .collect();
    assert_eq!(
        d4_deletes.len(),
        1,
        "GC deletes the untagged manifest once:\n{}",
        summary(&new)
    );
    for r in new.iter().filter(|r| r["action"] == "delete") {
        assert_eq!(
            r["detail"]["cause"], "gc",
            "GC deletions name their cause: {r}"
        );
    }
    assert!(
        !new.iter().any(|r| r["resource"] == format!("rt/app@{d3}")),
        "the kept artifact is not deleted:\n{}",
        summary(&new)
    );
    let done = new.iter().find(|r| r["action"] == "gc.completed").unwrap();
    assert_eq!(done["result"], "success", "{done}");
    assert_eq!(done["detail"]["dry_run"], false, "{done}");
}

// ---- 8. syslog --------------------------------------------------------------------------------

/// One RFC 5424 message `<PRI>1 TIMESTAMP HOST APP PROCID MSGID SD MSG`: (PRI, TIMESTAMP,
/// APP-NAME, MSGID, MSG as JSON).
fn parse_syslog(msg: &str) -> (u32, String, String, String, Value) {
    let rest = msg
        .strip_prefix('<')
        .unwrap_or_else(|| panic!("no PRI: {msg}"));
    let (pri, rest) = rest
        .split_once('>')
        .unwrap_or_else(|| panic!("no PRI: {msg}"));
    let pri: u32 = pri.parse().unwrap_or_else(|_| panic!("PRI: {msg}"));
    let parts: Vec<&str> = rest.splitn(8, ' ').collect();
    assert_eq!(parts.len(), 8, "RFC 5424 header: {msg}");
    assert_eq!(parts[0], "1", "VERSION: {msg}");
    assert!(!parts[2].is_empty(), "HOSTNAME: {msg}");
    assert_eq!(parts[4], "-", "PROCID: {msg}");
    assert_eq!(parts[6], "-", "STRUCTURED-DATA: {msg}");
    let body: Value =
        serde_json::from_str(parts[7]).unwrap_or_else(|e| panic!("MSG is not JSON ({e}): {msg}"));
    (pri, parts[1].into(), parts[3].into(), parts[5].into(), body)
}

#[tokio::test]
async fn records_are_forwarded_to_syslog_over_udp() {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind UDP");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let target = sock.local_addr().unwrap().to_string();
    let srv = start_local(&["--audit-syslog", &target]);
    let reg = Reg::new(&srv);
    reg.create_project(&admin(), "lib", false).await;
    push_image(&reg, &admin(), "lib/app", "v1").await;
    reg.token_response(&Cred::basic("alice", "no-such-user-1"), &[])
        .await;
    let all = all_records(&reg).await;
    assert_eq!(all.len(), 3, "{}", summary(&all));

    let mut got: Vec<(u32, String, String, Value)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 65_536];
    while got.len() < all.len() && Instant::now() < deadline {
        match sock.recv_from(&mut buf) {
            Ok((len, from)) => {
                assert!(from.ip().is_loopback(), "from {from}");
                let msg = std::str::from_utf8(&buf[..len])
                    .expect("UTF-8 datagram")
                    .to_string();
                let (pri, ts, app, msgid, body) = parse_syslog(&msg);
                assert_eq!(app, "kura", "APP-NAME: {msg}");
                assert_eq!(msgid, "audit", "MSGID: {msg}");
                got.push((pri, ts, msg.clone(), body));
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("recv: {e}"),
        }
    }
    assert_eq!(
        got.len(),
        all.len(),
        "one datagram per record: {:?}",
        got.iter().map(|g| &g.2).collect::<Vec<_>>()
    );
    for r in &all {
        let (pri, ts, msg, body) = got
            .iter()
            .find(|g| g.3["seq"] == r["seq"])
            .unwrap_or_else(|| panic!("no datagram for record {}", r["seq"]));
        let want_pri = if r["result"] == "success" { 134 } else { 132 };
        assert_eq!(*pri, want_pri, "{msg}");
        let t = parse_rfc3339_ms(ts).unwrap_or_else(|| panic!("TIMESTAMP: {msg}"));
        assert_eq!(
            t,
            r["at"].as_i64().unwrap(),
            "TIMESTAMP is the record's time: {msg}"
        );
        for k in [
            "action",
            "actor",
            "actor_kind",
            "resource",
            "result",
            "hash",
            "prev_hash",
            "source_ip",
            "request_id",
        ] {
            assert_eq!(body[k], r[k], "{k} in {msg}");
        }
        // The detail is the record's detail (an object, or the same object as JSON text).
        let detail = match &body["detail"] {
            Value::String(s) => {
                serde_json::from_str(s).unwrap_or_else(|e| panic!("detail ({e}): {msg}"))
            }
            other => other.clone(),
        };
        assert_eq!(detail, r["detail"], "detail in {msg}");
    }
    assert!(
        got.iter().any(|g| g.0 == 132),
        "the failed login is a warning"
    );
}

// ---- turning it off ---------------------------------------------------------------------------

#[tokio::test]
async fn audit_can_be_turned_off() {
    let srv = start_local(&["--audit-enabled", "false"]);
    let reg = Reg::new(&srv);
    reg.create_project(&admin(), "lib", false).await;
    push_image(&reg, &admin(), "lib/app", "v1").await;
    for path in [
        "/api/v1/audit-logs",
        "/api/v1/audit-logs/export",
        "/api/v1/audit-logs/verify",
        "/api/v1/projects/lib/audit-logs",
    ] {
        let (status, body) = reg.api(Method::GET, path, &admin(), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "GET {path}: {body}");
    }
    let (status, body) = reg
        .api(
            Method::POST,
            "/api/v1/audit-logs/purge",
            &admin(),
            Some(json!({"older_than_days": 0})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "purge: {body}");
}

// ---- concurrency and restarts -----------------------------------------------------------------

/// Concurrent pushes and pulls from many connections: one record each, one unbroken chain.
#[tokio::test]
async fn concurrent_actions_form_one_chain() {
    let (_srv, reg) = setup(&[], "lib", &[("alice", "developer")]).await;
    const N: usize = 12;
    // Blobs first (not audited), then all manifests and pulls at once.
    let mut manifests = Vec::new();
    for i in 0..N {
        let cred = if i % 2 == 0 { admin() } else { user("alice") };
        manifests.push((cred.clone(), fresh_manifest(&reg, &cred, "lib/app").await));
    }
    let mark = head_seq(&reg).await;
    let jobs = manifests.iter().enumerate().map(|(i, (cred, m))| {
        let reg = reg.clone();
        let cred = cred.clone();
        let m = m.clone();
        async move {
            let tag = format!("t{i}");
            put_manifest(&reg, &cred, "lib/app", &tag, &m).await;
            v2(
                &reg,
                Method::GET,
                &format!("/v2/lib/app/manifests/{tag}"),
                &cred,
                StatusCode::OK,
            )
            .await;
        }
    });
    futures_util::future::join_all(jobs).await;
    let new = records_after(&reg, mark).await;
    assert_eq!(new.len(), 2 * N, "{}", summary(&new));
    for (i, (_, manifest)) in manifests.iter().enumerate() {
        let resource = format!("lib/app:t{i}");
        for action in ["push", "pull"] {
            let n = new
                .iter()
                .filter(|r| r["action"] == action && r["resource"] == resource.as_str())
                .count();
            assert_eq!(n, 1, "{action} {resource}:\n{}", summary(&new));
        }
        let push = new
            .iter()
            .find(|r| r["action"] == "push" && r["resource"] == resource.as_str())
            .unwrap();
        let actor = if i % 2 == 0 { "admin" } else { "alice" };
        check_record(push, actor, "user", Some("lib"), "success");
        assert_eq!(
            push["detail"]["digest"],
            sha256(manifest).as_str(),
            "{push}"
        );
    }
    let all = all_records(&reg).await;
    check_chain(&all);
    let report = verify_api(&reg).await;
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["records_checked"], all.len(), "{report}");
}

/// The chain survives a restart (even a kill after the records were stored) and goes on
/// from where it stood.
#[tokio::test]
async fn the_chain_continues_across_restarts() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let env = [("KURA_ADMIN_PASSWORD", common::auth::ADMIN_PASSWORD)];
    let mut srv = KuraServer::start_in(&dir, &["--auth-mode", "local"], &env);
    let reg = Reg::new(&srv);
    some_history(&reg).await;
    let before = all_records(&reg).await;
    srv.kill();
    drop(srv);

    let srv = KuraServer::start_in(&dir, &["--auth-mode", "local"], &env);
    let reg = Reg::new(&srv);
    assert_eq!(
        all_records(&reg).await,
        before,
        "stored records survive a restart"
    );
    let mark = head_seq(&reg).await;
    push_image(&reg, &admin(), "lib/app", "after-restart").await;
    let r = expect_one(
        &reg,
        mark,
        "push after restart",
        "push",
        "lib/app:after-restart",
    )
    .await;
    assert_eq!(seq(&r), seq(&before[0]) + 1, "{r}");
    assert_eq!(
        r["prev_hash"], before[0]["hash"],
        "chained to the last record before the restart"
    );
    let report = verify_api(&reg).await;
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["records_checked"], before.len() + 1, "{report}");
}

/// Pulls without credentials from a public project are recorded as the anonymous actor.
#[tokio::test]
async fn anonymous_pulls_are_recorded_as_anonymous() {
    let srv = start_local(&[]);
    let reg = Reg::new(&srv);
    reg.create_project(&admin(), "pub", true).await;
    push_image(&reg, &admin(), "pub/app", "v1").await;
    let mark = head_seq(&reg).await;
    let anon = Cred::Anonymous;
    let direct = reg
        .req(Method::GET, "/v2/pub/app/manifests/v1", &anon)
        .header(ACCEPT, OCI_MANIFEST)
        .send()
        .await
        .expect("GET");
    if direct.status() == StatusCode::UNAUTHORIZED {
        // The Docker flow: an anonymous token, then the pull with it.
        let token = reg.token(&anon, &["repository:pub/app:pull"]).await;
        v2(
            &reg,
            Method::GET,
            "/v2/pub/app/manifests/v1",
            &Cred::Bearer(token),
            StatusCode::OK,
        )
        .await;
    } else {
        assert_eq!(direct.status(), StatusCode::OK);
    }
    let r = expect_one(&reg, mark, "anonymous pull", "pull", "pub/app:v1").await;
    assert_eq!(r["actor_kind"], "anonymous", "{r}");
    assert!(r["actor"].as_str().is_some_and(|a| !a.is_empty()), "{r}");
    assert_eq!(r["source_ip"], LOCALHOST, "{r}");
    assert_eq!(r["result"], "success", "{r}");
}

/// More records than one page, one export batch and one verification page (1000 each).
#[tokio::test]
async fn large_logs_page_export_and_verify_completely() {
    let srv = start_local(&[]);
    let reg = Reg::new(&srv);
    reg.create_project(&admin(), "lib", false).await;
    push_image(&reg, &admin(), "lib/app", "v1").await;
    const STREAMS: usize = 10;
    const PULLS_EACH: usize = 105;
    let streams = (0..STREAMS).map(|_| {
        let reg = reg.clone();
        async move {
            for _ in 0..PULLS_EACH {
                v2(
                    &reg,
                    Method::GET,
                    "/v2/lib/app/manifests/v1",
                    &admin(),
                    StatusCode::OK,
                )
                .await;
            }
        }
    });
    futures_util::future::join_all(streams).await;
    let total = 2 + (STREAMS * PULLS_EACH) as i64;
    assert_eq!(head_seq(&reg).await, total);

    // Pages are at most 1000 records, whatever n asks for.
    let (h, first) = audit_get(&reg, "/api/v1/audit-logs?n=5000").await;
    assert_eq!(first.len(), 1000);
    let link = next_link(&h).expect("a Link after a full page");
    let (h, second) = audit_get(&reg, &link).await;
    assert!(next_link(&h).is_none(), "no Link after the last page");
    let mut listed = seqs(&first);
    listed.extend(seqs(&second));
    assert_eq!(listed, (1..=total).rev().collect::<Vec<_>>());
    let (_, pulls) = audit_get(&reg, "/api/v1/audit-logs?action=pull&n=1000").await;
    assert!(pulls.iter().all(|r| r["action"] == "pull"));

    let lines = export(&reg, "").await;
    assert_eq!(seqs(&lines), (1..=total).collect::<Vec<_>>());
    let mut all = first.clone();
    all.extend(second);
    all.reverse();
    assert_eq!(lines, all, "export equals the listed records");
    let pulls = export(&reg, "?action=pull").await;
    assert_eq!(pulls.len(), STREAMS * PULLS_EACH);

    let report = verify_api(&reg).await;
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["records_checked"], total, "{report}");
    assert_eq!(report["last_seq"], total, "{report}");
    let (code, out, err) = verify_cli(&srv, false);
    assert_eq!(code, 0, "stdout {out} stderr {err}");
}
