//! Management API for operations: the audit log (query, JSON-lines export, chain
//! verification, purge) and per-project webhooks with their delivery log.
//!
//! The whole audit log is for system administrators; project administrators
//! (`manage_project`) read their project's records and manage its webhooks.

use std::collections::HashMap;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kura_auth::{Action, Identity};
use kura_metadata::ops::{WebhookConflict, WebhookSpec};
use kura_metadata::{AuditFilter, AuditRecord};
use kura_ops::webhooks::EVENT_TYPES;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::api::{ApiResult, ErrorBody, page, time, who};
use crate::auth::api_error;
use crate::lifecycle_api::{invalid, project_action, require_admin};

fn unavailable(what: &str) -> Response {
    api_error(
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        &format!("{what} is turned off on this server"),
    )
}

fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "operations API failed");
    api_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "UNKNOWN",
        "internal server error",
    )
}

/// `n` and `last` of a list keyed by a numeric id (`last` = the previous page's last id).
fn id_page(q: &HashMap<String, String>, what: &str) -> Result<(u32, Option<i64>), Response> {
    let (n, last) = page(q)?;
    let last = last
        .map(|v| {
            v.parse::<i64>()
                .map_err(|_| invalid(&format!("last must be {what}")))
        })
        .transpose()?;
    Ok((n, last))
}

/// A time bound: RFC 3339 or milliseconds since the epoch.
fn parse_time(v: &str) -> Result<i64, Response> {
    if let Ok(ms) = v.parse::<i64>() {
        return Ok(ms);
    }
    chrono::DateTime::parse_from_rfc3339(v)
        .map(|t| t.timestamp_millis())
        .map_err(|_| invalid(&format!("{v:?} is neither RFC 3339 nor epoch milliseconds")))
}

fn filter(q: &HashMap<String, String>) -> Result<AuditFilter, Response> {
    let s = |k: &str| q.get(k).filter(|v| !v.is_empty()).cloned();
    Ok(AuditFilter {
        from: s("from").map(|v| parse_time(&v)).transpose()?,
        to: s("to").map(|v| parse_time(&v)).transpose()?,
        actor: s("actor"),
        project: s("project"),
        action: s("action"),
        resource_type: s("resource_type"),
        result: s("result"),
    })
}

/// One audit record.
#[derive(Serialize, ToSchema)]
pub(crate) struct AuditOut {
    seq: i64,
    /// RFC 3339.
    time: String,
    /// Milliseconds since the Unix epoch.
    at: i64,
    actor: String,
    /// user, robot, anonymous or system.
    actor_kind: String,
    source_ip: Option<String>,
    /// push, pull, delete, tag, login, project.create, member.set, ...
    action: String,
    resource_type: String,
    resource: String,
    project: Option<String>,
    /// success or failure.
    result: String,
    #[schema(value_type = Object)]
    detail: serde_json::Value,
    request_id: Option<String>,
    prev_hash: String,
    hash: String,
}

impl From<AuditRecord> for AuditOut {
    fn from(r: AuditRecord) -> Self {
        AuditOut {
            seq: r.seq,
            time: time(r.entry.at),
            at: r.entry.at,
            actor: r.entry.actor,
            actor_kind: r.entry.actor_kind,
            source_ip: r.entry.source_ip,
            action: r.entry.action,
            resource_type: r.entry.resource_type,
            resource: r.entry.resource,
            project: r.entry.project,
            result: r.entry.result,
            detail: serde_json::from_str(&r.entry.detail).unwrap_or(serde_json::Value::Null),
            request_id: r.entry.request_id,
            prev_hash: r.prev_hash,
            hash: r.hash,
        }
    }
}

async fn audit_page(
    state: &AppState,
    path: &str,
    q: &HashMap<String, String>,
    f: AuditFilter,
) -> ApiResult {
    let Some(audit) = &state.ops.audit else {
        return Err(unavailable("the audit log"));
    };
    let (n, before) = id_page(q, "a record's seq")?;
    let rows = audit.query(&f, before, n).await.map_err(internal)?;
    let next = (n > 0 && rows.len() == n as usize)
        .then(|| rows.last().map(|r| r.seq))
        .flatten();
    let out: Vec<AuditOut> = rows.into_iter().map(AuditOut::from).collect();
    let mut resp = Json(out).into_response();
    if let Some(last) = next {
        let mut query: Vec<String> = q
            .iter()
            .filter(|(k, _)| k.as_str() != "last" && k.as_str() != "n")
            .map(|(k, v)| format!("{k}={}", urlencode(v)))
            .collect();
        query.sort();
        query.push(format!("n={n}"));
        query.push(format!("last={last}"));
        if let Ok(v) = HeaderValue::from_str(&format!("<{path}?{}>; rel=\"next\"", query.join("&")))
        {
            resp.headers_mut().insert(header::LINK, v);
        }
    }
    Ok(resp)
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Audit records, newest first. Filters: `from`, `to` (RFC 3339 or epoch ms), `actor`,
/// `project`, `action`, `resource_type`, `result`; page with `n` and `last` (a seq).
#[utoipa::path(get, path = "/api/v1/audit-logs", tag = "audit",
    params(("from" = Option<String>, Query), ("to" = Option<String>, Query), ("actor" = Option<String>, Query),
        ("project" = Option<String>, Query), ("action" = Option<String>, Query),
        ("resource_type" = Option<String>, Query), ("result" = Option<String>, Query),
        ("n" = Option<u32>, Query), ("last" = Option<i64>, Query)),
    security(("basic" = []), ("bearer" = [])),
    responses((status = 200, description = "OK", body = Vec<AuditOut>),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Authentication required", body = ErrorBody),
        (status = 403, description = "Not allowed", body = ErrorBody)))]
pub(crate) async fn list_audit(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let id = who(&state, &headers).await?;
    require_admin(&id)?;
    audit_page(&state, "/api/v1/audit-logs", &q, filter(&q)?).await
}

/// A project's audit records (project administrators), newest first; same filters.
#[utoipa::path(get, path = "/api/v1/projects/{name}/audit-logs", tag = "audit",
    params(("name" = String, Path), ("from" = Option<String>, Query), ("to" = Option<String>, Query),
        ("actor" = Option<String>, Query), ("action" = Option<String>, Query),
        ("resource_type" = Option<String>, Query), ("result" = Option<String>, Query),
        ("n" = Option<u32>, Query), ("last" = Option<i64>, Query)),
    security(("basic" = []), ("bearer" = [])),
    responses((status = 200, description = "OK", body = Vec<AuditOut>),
        (status = 401, description = "Authentication required", body = ErrorBody),
        (status = 403, description = "Not allowed", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody)))]
pub(crate) async fn project_audit(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let id = who(&state, &headers).await?;
    project_action(&state, &id, &name, Action::ManageProject).await?;
    let mut f = filter(&q)?;
    f.project = Some(name.clone());
    audit_page(
        &state,
        &format!("/api/v1/projects/{name}/audit-logs"),
        &q,
        f,
    )
    .await
}

/// The audit log as JSON lines (`application/x-ndjson`), oldest first, streamed; same
/// filters as the list.
#[utoipa::path(get, path = "/api/v1/audit-logs/export", tag = "audit",
    params(("from" = Option<String>, Query), ("to" = Option<String>, Query), ("actor" = Option<String>, Query),
        ("project" = Option<String>, Query), ("action" = Option<String>, Query),
        ("resource_type" = Option<String>, Query), ("result" = Option<String>, Query)),
    security(("basic" = []), ("bearer" = [])),
    responses((status = 200, description = "One JSON record per line", content_type = "application/x-ndjson", body = String),
        (status = 401, description = "Authentication required", body = ErrorBody),
        (status = 403, description = "Not allowed", body = ErrorBody)))]
pub(crate) async fn export_audit(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let id = who(&state, &headers).await?;
    require_admin(&id)?;
    let Some(audit) = state.ops.audit.clone() else {
        return Err(unavailable("the audit log"));
    };
    let f = filter(&q)?;
    audit.flush().await;
    let store = audit.store().clone();
    let stream = futures_util::stream::unfold(Some(0i64), move |after| {
        let (store, f) = (store.clone(), f.clone());
        async move {
            let after = after?;
            match store.audit_records_after(&f, after, 1000).await {
                Ok(rows) if rows.is_empty() => None,
                Ok(rows) => {
                    let last = rows.last().map(|r| r.seq);
                    let mut buf = Vec::with_capacity(rows.len() * 400);
                    for r in rows {
                        let _ = serde_json::to_writer(&mut buf, &AuditOut::from(r));
                        buf.push(b'\n');
                    }
                    Some((Ok::<_, std::io::Error>(bytes::Bytes::from(buf)), last))
                }
                Err(e) => Some((Err(std::io::Error::other(e.to_string())), None)),
            }
        }
    });
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .header(
            header::CONTENT_DISPOSITION,
            "attachment; filename=\"kura-audit.jsonl\"",
        )
        .body(Body::from_stream(stream))
        .expect("valid response"))
}

/// Checks the hash chain and reports the first broken link.
#[utoipa::path(get, path = "/api/v1/audit-logs/verify", tag = "audit",
    security(("basic" = []), ("bearer" = [])),
    responses((status = 200, description = "The report (ok = false names the first broken record)", body = Object),
        (status = 401, description = "Authentication required", body = ErrorBody),
        (status = 403, description = "Not allowed", body = ErrorBody)))]
pub(crate) async fn verify_audit(State(state): State<AppState>, headers: HeaderMap) -> ApiResult {
    let id = who(&state, &headers).await?;
    require_admin(&id)?;
    let Some(audit) = &state.ops.audit else {
        return Err(unavailable("the audit log"));
    };
    audit.flush().await;
    let report = kura_ops::audit::verify(audit.store().as_ref())
        .await
        .map_err(internal)?;
    Ok(Json(report).into_response())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PurgeIn {
    /// Remove records older than this many days.
    older_than_days: u32,
}

/// Removes records older than `older_than_days` (the chain's anchor moves with them, so
/// verification still passes). The purge is itself recorded.
#[utoipa::path(post, path = "/api/v1/audit-logs/purge", tag = "audit", request_body = PurgeIn,
    security(("basic" = []), ("bearer" = [])),
    responses((status = 200, description = "How many records were removed", body = Object),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Authentication required", body = ErrorBody),
        (status = 403, description = "Not allowed", body = ErrorBody)))]
pub(crate) async fn purge_audit(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult {
    let id = who(&state, &headers).await?;
    require_admin(&id)?;
    let p: PurgeIn =
        serde_json::from_slice(&body).map_err(|e| invalid(&format!("invalid JSON body: {e}")))?;
    let Some(audit) = &state.ops.audit else {
        return Err(unavailable("the audit log"));
    };
    let age = std::time::Duration::from_secs(u64::from(p.older_than_days) * 86_400);
    let removed = audit
        .purge_older_than(age, &kura_registry::EventContext::capture())
        .await
        .map_err(internal)?;
    Ok(Json(serde_json::json!({ "removed": removed })).into_response())
}

// --- webhooks ----------------------------------------------------------------------------------

/// A webhook policy as the API shows it (the secret is never returned).
#[derive(Serialize, ToSchema)]
pub(crate) struct WebhookOut {
    id: i64,
    project: String,
    name: String,
    url: String,
    /// PUSH_ARTIFACT, PULL_ARTIFACT, DELETE_ARTIFACT, QUOTA_EXCEED, QUOTA_WARNING,
    /// TAG_RETENTION; SCANNING_COMPLETED, SCANNING_FAILED, REPLICATION are reserved.
    events: Vec<String>,
    enabled: bool,
    /// Deliveries are signed (X-Kura-Signature-256).
    has_secret: bool,
    created_at: String,
    updated_at: String,
}

impl From<kura_metadata::ops::WebhookPolicy> for WebhookOut {
    fn from(p: kura_metadata::ops::WebhookPolicy) -> Self {
        WebhookOut {
            id: p.id,
            project: p.project,
            name: p.name,
            url: p.url,
            events: p.events,
            enabled: p.enabled,
            has_secret: p.secret.is_some(),
            created_at: time(p.created_at),
            updated_at: time(p.updated_at),
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct WebhookIn {
    name: String,
    /// http:// or https:// URL that receives a POST per event.
    url: String,
    /// Signs each delivery with HMAC-SHA256. On update: omit to keep, "" to remove.
    secret: Option<String>,
    events: Vec<String>,
    #[serde(default = "enabled_default")]
    enabled: bool,
}

fn enabled_default() -> bool {
    true
}

fn spec(w: WebhookIn) -> Result<WebhookSpec, Response> {
    if w.name.is_empty() || w.name.len() > 128 {
        return Err(invalid("name must be 1 to 128 characters"));
    }
    let url = checked_url(&w.url)?;
    if w.events.is_empty() {
        return Err(invalid("events must name at least one event type"));
    }
    for e in &w.events {
        if !EVENT_TYPES.contains(&e.as_str()) {
            return Err(invalid(&format!(
                "unknown event type {e:?}; known: {}",
                EVENT_TYPES.join(", ")
            )));
        }
    }
    let mut events = w.events;
    events.sort();
    events.dedup();
    Ok(WebhookSpec {
        name: w.name,
        url,
        secret: w.secret,
        events,
        enabled: w.enabled,
    })
}

fn checked_url(u: &str) -> Result<String, Response> {
    let ok = (u.starts_with("http://") || u.starts_with("https://"))
        && u.len() <= 2048
        && u.split_once("://").is_some_and(|(_, rest)| {
            !rest.is_empty() && !rest.starts_with('/') && !rest.chars().any(char::is_whitespace)
        });
    if ok {
        Ok(u.to_string())
    } else {
        Err(invalid("url must be an absolute http:// or https:// URL"))
    }
}

fn webhooks_of(state: &AppState) -> Result<&std::sync::Arc<kura_ops::Webhooks>, Response> {
    state
        .ops
        .webhooks
        .as_ref()
        .ok_or_else(|| unavailable("webhooks"))
}

async fn manage(
    state: &AppState,
    headers: &HeaderMap,
    project: &str,
) -> Result<Identity, Response> {
    let id = who(state, headers).await?;
    project_action(state, &id, project, Action::ManageProject).await?;
    Ok(id)
}

/// A project's webhook policies.
#[utoipa::path(get, path = "/api/v1/projects/{name}/webhooks", tag = "webhooks",
    params(("name" = String, Path)),
    security(("basic" = []), ("bearer" = [])),
    responses((status = 200, description = "OK", body = Vec<WebhookOut>),
        (status = 401, description = "Authentication required", body = ErrorBody),
        (status = 403, description = "Not allowed", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody)))]
pub(crate) async fn list_webhooks(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult {
    manage(&state, &headers, &name).await?;
    let w = webhooks_of(&state)?;
    let list = w
        .store()
        .webhook_policies(Some(&name))
        .await
        .map_err(internal)?;
    Ok(Json(list.into_iter().map(WebhookOut::from).collect::<Vec<_>>()).into_response())
}

/// Add a webhook policy.
#[utoipa::path(post, path = "/api/v1/projects/{name}/webhooks", tag = "webhooks",
    params(("name" = String, Path)), request_body = WebhookIn,
    security(("basic" = []), ("bearer" = [])),
    responses((status = 201, description = "Created", body = WebhookOut),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Authentication required", body = ErrorBody),
        (status = 403, description = "Not allowed", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
        (status = 409, description = "Conflict with the current state", body = ErrorBody)))]
pub(crate) async fn create_webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult {
    manage(&state, &headers, &name).await?;
    let w = webhooks_of(&state)?;
    let input: WebhookIn =
        serde_json::from_slice(&body).map_err(|e| invalid(&format!("invalid JSON body: {e}")))?;
    let spec = spec(input)?;
    let id = match w
        .store()
        .create_webhook(&name, &spec)
        .await
        .map_err(internal)?
    {
        Ok(id) => id,
        Err(c) => return Err(conflict(c, &name, &spec.name)),
    };
    w.policies_changed();
    kura_registry::context::note_resource(format!("projects/{name}/webhooks/{id}"), Some(&name));
    let p = w
        .store()
        .webhook_policy(&name, id)
        .await
        .map_err(internal)?
        .ok_or_else(|| internal("webhook vanished after creation"))?;
    Ok((StatusCode::CREATED, Json(WebhookOut::from(p))).into_response())
}

fn conflict(c: WebhookConflict, project: &str, name: &str) -> Response {
    match c {
        WebhookConflict::ProjectMissing => api_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            &format!("project {project} does not exist"),
        ),
        WebhookConflict::NameTaken => api_error(
            StatusCode::CONFLICT,
            "CONFLICT",
            &format!("project {project} already has a webhook named {name:?}"),
        ),
    }
}

/// Project `name`'s webhook policy `id`, or 404 (another project's id is not found either).
async fn policy(
    w: &kura_ops::Webhooks,
    name: &str,
    id: i64,
) -> Result<kura_metadata::ops::WebhookPolicy, Response> {
    w.store()
        .webhook_policy(name, id)
        .await
        .map_err(internal)?
        .ok_or_else(|| not_found(id))
}

fn not_found(id: i64) -> Response {
    api_error(
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        &format!("no webhook {id} in this project"),
    )
}

/// One webhook policy.
#[utoipa::path(get, path = "/api/v1/projects/{name}/webhooks/{id}", tag = "webhooks",
    params(("name" = String, Path), ("id" = i64, Path)),
    security(("basic" = []), ("bearer" = [])),
    responses((status = 200, description = "OK", body = WebhookOut),
        (status = 404, description = "Not found", body = ErrorBody)))]
pub(crate) async fn get_webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((name, id)): Path<(String, i64)>,
) -> ApiResult {
    manage(&state, &headers, &name).await?;
    let w = webhooks_of(&state)?;
    Ok(Json(WebhookOut::from(policy(w, &name, id).await?)).into_response())
}

/// Replace a webhook policy (omit `secret` to keep it).
#[utoipa::path(put, path = "/api/v1/projects/{name}/webhooks/{id}", tag = "webhooks",
    params(("name" = String, Path), ("id" = i64, Path)), request_body = WebhookIn,
    security(("basic" = []), ("bearer" = [])),
    responses((status = 200, description = "OK", body = WebhookOut),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
        (status = 409, description = "Conflict with the current state", body = ErrorBody)))]
pub(crate) async fn update_webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((name, id)): Path<(String, i64)>,
    body: axum::body::Bytes,
) -> ApiResult {
    manage(&state, &headers, &name).await?;
    let w = webhooks_of(&state)?;
    let input: WebhookIn =
        serde_json::from_slice(&body).map_err(|e| invalid(&format!("invalid JSON body: {e}")))?;
    let spec = spec(input)?;
    match w
        .store()
        .update_webhook(&name, id, &spec)
        .await
        .map_err(internal)?
    {
        Ok(true) => {}
        Ok(false) => return Err(not_found(id)),
        Err(c) => return Err(conflict(c, &name, &spec.name)),
    }
    w.policies_changed();
    Ok(Json(WebhookOut::from(policy(w, &name, id).await?)).into_response())
}

/// Remove a webhook policy and its delivery log.
#[utoipa::path(delete, path = "/api/v1/projects/{name}/webhooks/{id}", tag = "webhooks",
    params(("name" = String, Path), ("id" = i64, Path)),
    security(("basic" = []), ("bearer" = [])),
    responses((status = 204, description = "Deleted"),
        (status = 404, description = "Not found", body = ErrorBody)))]
pub(crate) async fn delete_webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((name, id)): Path<(String, i64)>,
) -> ApiResult {
    manage(&state, &headers, &name).await?;
    let w = webhooks_of(&state)?;
    if !w
        .store()
        .delete_webhook(&name, id)
        .await
        .map_err(internal)?
    {
        return Err(not_found(id));
    }
    w.policies_changed();
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The delivery log of a policy, newest first: status, payload and every attempt (time,
/// HTTP status or error, duration). Page with `n` and `last` (a delivery id).
#[utoipa::path(get, path = "/api/v1/projects/{name}/webhooks/{id}/deliveries", tag = "webhooks",
    params(("name" = String, Path), ("id" = i64, Path), ("n" = Option<u32>, Query), ("last" = Option<i64>, Query)),
    security(("basic" = []), ("bearer" = [])),
    responses((status = 200, description = "OK", body = Vec<Object>),
        (status = 404, description = "Not found", body = ErrorBody)))]
pub(crate) async fn list_deliveries(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((name, id)): Path<(String, i64)>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    manage(&state, &headers, &name).await?;
    let w = webhooks_of(&state)?;
    policy(w, &name, id).await?;
    let (n, last) = id_page(&q, "a delivery id")?;
    let rows = w
        .store()
        .webhook_deliveries(id, last, n)
        .await
        .map_err(internal)?;
    let next = (n > 0 && rows.len() == n as usize)
        .then(|| rows.last().map(|d| d.id))
        .flatten();
    let mut resp = Json(rows).into_response();
    if let Some(last) = next
        && let Ok(v) = HeaderValue::from_str(&format!(
            "</api/v1/projects/{name}/webhooks/{id}/deliveries?n={n}&last={last}>; rel=\"next\""
        ))
    {
        resp.headers_mut().insert(header::LINK, v);
    }
    Ok(resp)
}
