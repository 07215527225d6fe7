//! What the HTTP layer contributes to the audit log: the actor of each request (for the
//! registry's events), logins (token requests, and failed password logins anywhere), `/v2`
//! requests refused for lack of permission, and every change made through the management
//! API (one record per call, from [`audit_management`] and its table of actions).

use axum::extract::{MatchedPath, RawPathParams, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use kura_auth::{Identity, Principal};
use kura_registry::EventContext;
use kura_registry::context::{self, Actor, ActorKind};
use serde_json::json;

use crate::AppState;

/// The actor for an identity.
pub fn actor_of(identity: &Identity) -> Actor {
    match &identity.principal {
        Principal::User(u) => Actor {
            name: u.username.clone(),
            kind: ActorKind::User,
        },
        Principal::Robot(r) => Actor {
            name: r.name.clone(),
            kind: ActorKind::Robot,
        },
        Principal::Anonymous => Actor::anonymous(),
    }
}

/// Records who the current request acts as.
pub fn note_identity(identity: &Identity) {
    context::set_actor(actor_of(identity));
}

/// What one record says, besides who and when.
struct What<'a> {
    action: &'a str,
    resource_type: &'a str,
    resource: String,
    project: Option<String>,
    success: bool,
    detail: serde_json::Value,
}

/// Records `what`, attributed to the current request (or to `actor` when given).
fn record(state: &AppState, actor: Option<Actor>, what: What<'_>) {
    let Some(audit) = &state.ops.audit else {
        return;
    };
    let mut ctx = EventContext::capture();
    if let Some(a) = actor {
        ctx.actor = a;
    }
    audit.record(kura_ops::audit::entry(
        &ctx,
        what.action,
        what.resource_type,
        what.resource,
        what.project,
        what.success,
        what.detail,
    ));
}

/// A successful token request (`docker login`, and every token a client fetches).
pub fn login_succeeded(state: &AppState, identity: &Identity, scopes: &[String]) {
    let actor = actor_of(identity);
    context::set_actor(actor.clone());
    record(
        state,
        Some(actor),
        What {
            action: "login",
            resource_type: "token",
            resource: "token".into(),
            project: None,
            success: true,
            detail: json!({ "scopes": scopes }),
        },
    );
}

/// A login that failed: bad password, unknown user, throttled. Only password (Basic)
/// attempts are recorded; an expired bearer token is not a login attempt.
pub fn login_failed(state: &AppState, headers: &HeaderMap, reason: &str) {
    let Some(user) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(kura_auth::basic_username)
    else {
        return;
    };
    let kind = if user.starts_with("robot$") {
        ActorKind::Robot
    } else {
        ActorKind::User
    };
    record(
        state,
        Some(Actor { name: user, kind }),
        What {
            action: "login",
            resource_type: "token",
            resource: "token".into(),
            project: None,
            success: false,
            detail: json!({ "reason": reason }),
        },
    );
}

/// A `/v2` request refused for lack of permission (not the first anonymous attempt that
/// only asks the client to authenticate).
pub fn registry_denied(state: &AppState, action: &str, repository: &str, reason: &str) {
    record(
        state,
        None,
        What {
            action,
            resource_type: "repository",
            resource: repository.to_string(),
            project: Some(kura_metadata::project_of(repository).to_string()),
            success: false,
            detail: json!({ "reason": reason }),
        },
    );
}

/// How a management route is audited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ManagementAction {
    pub action: &'static str,
    pub resource_type: &'static str,
    /// The registry announces the effect itself (artifact deletes, tag restores), and its
    /// events are the audit records; the middleware then records only refusals and errors.
    pub by_events: bool,
}

const fn a(action: &'static str, resource_type: &'static str) -> ManagementAction {
    ManagementAction {
        action,
        resource_type,
        by_events: false,
    }
}

const fn e(action: &'static str, resource_type: &'static str) -> ManagementAction {
    ManagementAction {
        action,
        resource_type,
        by_events: true,
    }
}

/// Every state-changing management route and its audit action. A test checks that each
/// non-GET operation of the OpenAPI document appears here.
pub const MANAGEMENT_ACTIONS: &[(&str, &str, ManagementAction)] = &[
    ("POST", "/api/v1/users", a("user.create", "user")),
    (
        "PATCH",
        "/api/v1/users/{username}",
        a("user.update", "user"),
    ),
    (
        "PUT",
        "/api/v1/users/{username}/password",
        a("user.password", "user"),
    ),
    (
        "DELETE",
        "/api/v1/users/{username}",
        a("user.delete", "user"),
    ),
    ("POST", "/api/v1/projects", a("project.create", "project")),
    (
        "PATCH",
        "/api/v1/projects/{name}",
        a("project.update", "project"),
    ),
    (
        "DELETE",
        "/api/v1/projects/{name}",
        a("project.delete", "project"),
    ),
    (
        "PUT",
        "/api/v1/projects/{name}/members/{username}",
        a("member.set", "member"),
    ),
    (
        "DELETE",
        "/api/v1/projects/{name}/members/{username}",
        a("member.remove", "member"),
    ),
    ("POST", "/api/v1/robots", a("robot.create", "robot")),
    ("PATCH", "/api/v1/robots/{name}", a("robot.update", "robot")),
    (
        "POST",
        "/api/v1/robots/{name}/refresh",
        a("robot.refresh", "robot"),
    ),
    (
        "DELETE",
        "/api/v1/robots/{name}",
        a("robot.delete", "robot"),
    ),
    ("PUT", "/api/v1/settings", a("settings.update", "settings")),
    (
        "DELETE",
        "/api/v1/projects/{name}/repositories/{repository}",
        a("repository.delete", "repository"),
    ),
    (
        "DELETE",
        "/api/v1/projects/{name}/repositories/{repository}/artifacts/{digest}",
        e("delete", "artifact"),
    ),
    (
        "DELETE",
        "/api/v1/projects/{name}/repositories/{repository}/artifacts/{digest}/tags/{tag}",
        e("delete", "tag"),
    ),
    ("POST", "/api/v1/system/gc", a("gc.start", "gc_run")),
    (
        "PUT",
        "/api/v1/projects/{name}/quota",
        a("quota.update", "quota"),
    ),
    (
        "POST",
        "/api/v1/projects/{name}/immutability-rules",
        a("immutability_rule.create", "immutability_rule"),
    ),
    (
        "DELETE",
        "/api/v1/projects/{name}/immutability-rules/{id}",
        a("immutability_rule.delete", "immutability_rule"),
    ),
    (
        "PUT",
        "/api/v1/projects/{name}/retention",
        a("retention_policy.update", "retention_policy"),
    ),
    (
        "DELETE",
        "/api/v1/projects/{name}/retention",
        a("retention_policy.delete", "retention_policy"),
    ),
    (
        "POST",
        "/api/v1/projects/{name}/retention/runs",
        a("retention.start", "retention_run"),
    ),
    (
        "POST",
        "/api/v1/projects/{name}/repositories/{repository}/tags/{tag}/restore",
        e("tag", "artifact"),
    ),
    (
        "POST",
        "/api/v1/projects/{name}/webhooks",
        a("webhook.create", "webhook"),
    ),
    (
        "PUT",
        "/api/v1/projects/{name}/webhooks/{id}",
        a("webhook.update", "webhook"),
    ),
    (
        "DELETE",
        "/api/v1/projects/{name}/webhooks/{id}",
        a("webhook.delete", "webhook"),
    ),
    (
        "POST",
        "/api/v1/audit-logs/purge",
        e("audit.purge", "audit_log"),
    ),
];

pub fn management_action(method: &str, template: &str) -> Option<ManagementAction> {
    MANAGEMENT_ACTIONS
        .iter()
        .find(|(m, t, _)| *m == method && *t == template)
        .map(|(_, _, a)| *a)
}

/// Route layer on the management API: one audit record per state-changing call.
pub async fn audit_management(State(state): State<AppState>, req: Request, next: Next) -> Response {
    use axum::extract::FromRequestParts;
    let method = req.method().clone();
    if matches!(method, Method::GET | Method::HEAD | Method::OPTIONS) || state.ops.audit.is_none() {
        return next.run(req).await;
    }
    let (mut parts, body) = req.into_parts();
    let matched = parts.extensions.get::<MatchedPath>().cloned();
    let params = RawPathParams::from_request_parts(&mut parts, &())
        .await
        .ok();
    let req = Request::from_parts(parts, body);
    let path = req.uri().path().to_string();
    let resp = next.run(req).await;
    let status = resp.status();
    // 401: the caller was never identified; a failed password is already its own record.
    if status == StatusCode::UNAUTHORIZED {
        return resp;
    }
    let Some(m) = matched.and_then(|t| management_action(method.as_str(), t.as_str())) else {
        return resp;
    };
    let success = status.is_success();
    if m.by_events && success {
        return resp;
    }
    let param = |k: &str| {
        params
            .as_ref()
            .and_then(|p| p.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string()))
    };
    let noted = context::current().and_then(|c| c.noted_resource());
    let project = noted.as_ref().and_then(|(_, p)| p.clone()).or_else(|| {
        path.starts_with("/api/v1/projects/")
            .then(|| param("name"))
            .flatten()
    });
    let resource = noted
        .map(|(r, _)| r)
        .unwrap_or_else(|| path.trim_start_matches("/api/v1/").to_string());
    record(
        &state,
        None,
        What {
            action: m.action,
            resource_type: m.resource_type,
            resource,
            project,
            success,
            detail: json!({ "status": status.as_u16(), "method": method.as_str() }),
        },
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A state-changing route without an audit action would change things unrecorded.
    #[test]
    fn every_state_changing_route_has_an_audit_action() {
        let doc = crate::api::management_doc();
        let mut missing = Vec::new();
        let mut seen = 0;
        for (path, item) in &doc.paths.paths {
            let ops = [
                ("POST", item.post.is_some()),
                ("PUT", item.put.is_some()),
                ("PATCH", item.patch.is_some()),
                ("DELETE", item.delete.is_some()),
            ];
            for (method, present) in ops {
                if present {
                    seen += 1;
                    if management_action(method, path).is_none() {
                        missing.push(format!("{method} {path}"));
                    }
                }
            }
        }
        assert!(seen > 20, "the OpenAPI document lists the routes");
        assert!(
            missing.is_empty(),
            "routes without an audit action: {missing:?}"
        );
        // And no stale entries: every table row names a route that exists.
        for (method, path, _) in MANAGEMENT_ACTIONS {
            let item = doc
                .paths
                .paths
                .get(*path)
                .unwrap_or_else(|| panic!("{path} is not a route"));
            let present = match *method {
                "POST" => item.post.is_some(),
                "PUT" => item.put.is_some(),
                "PATCH" => item.patch.is_some(),
                "DELETE" => item.delete.is_some(),
                _ => false,
            };
            assert!(present, "{method} {path} is not a route");
        }
    }
}
