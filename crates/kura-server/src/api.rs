//! The management API under `/api/v1` (JSON in, JSON out; errors as
//! `{"errors":[{"code","message"}]}`). Handlers authenticate, call one `kura_auth::Auth`
//! operation (which applies the permission table) and shape the answer.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use kura_auth::{AuthError, AuthMode, Identity, rfc3339};
use kura_metadata::{MemberRecord, ProjectRecord, RobotRecord, UserRecord};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::auth::api_error;

type ApiResult = Result<Response, Response>;

/// Page size cap and default of list endpoints.
const MAX_PAGE: u32 = 1000;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/users", get(list_users).post(create_user))
        .route("/api/v1/users/current", get(current_user))
        .route(
            "/api/v1/users/{username}",
            axum::routing::patch(update_user).delete(delete_user),
        )
        .route("/api/v1/users/{username}/password", put(change_password))
        .route("/api/v1/projects", get(list_projects).post(create_project))
        .route(
            "/api/v1/projects/{name}",
            get(get_project)
                .patch(update_project)
                .delete(delete_project),
        )
        .route("/api/v1/projects/{name}/members", get(list_members))
        .route(
            "/api/v1/projects/{name}/members/{username}",
            put(set_member).delete(remove_member),
        )
        .route("/api/v1/settings", get(get_settings).put(put_settings))
        .route("/v1/search", get(docker_search))
        .route("/api/v1/robots", get(list_robots).post(create_robot))
        .route(
            "/api/v1/robots/{name}",
            get(get_robot).patch(update_robot).delete(delete_robot),
        )
        .route(
            "/api/v1/robots/{name}/refresh",
            axum::routing::post(refresh_robot),
        )
}

// --- robots ------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RobotPermissionIn {
    project: Option<String>,
    repositories: Option<String>,
    actions: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewRobotIn {
    name: String,
    /// Set for a project-level robot.
    project: Option<String>,
    #[serde(default)]
    description: String,
    /// Days until the robot expires; absent or -1: never.
    duration_days: Option<i64>,
    permissions: Vec<RobotPermissionIn>,
}

async fn create_robot(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult {
    let id = who(&state, &headers).await?;
    let r: NewRobotIn = json_body(&body)?;
    let mut permissions = Vec::new();
    for p in r.permissions {
        let project = p.project.or_else(|| r.project.clone()).ok_or_else(|| {
            api_error(
                StatusCode::BAD_REQUEST,
                "INVALID",
                "each permission needs a project",
            )
        })?;
        permissions.push((
            project,
            p.repositories.unwrap_or_else(|| "*".into()),
            p.actions,
        ));
    }
    let (robot, secret) = state
        .auth
        .create_robot(
            &id,
            kura_auth::NewRobot {
                name: r.name,
                project: r.project,
                description: r.description,
                duration_days: r.duration_days,
                permissions,
            },
        )
        .await
        .map_err(error)?;
    let mut body = robot_json(&robot);
    body["secret"] = Value::String(secret);
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

async fn list_robots(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let id = who(&state, &headers).await?;
    let robots = state
        .auth
        .list_robots(&id, q.get("project").map(String::as_str))
        .await
        .map_err(error)?;
    Ok(Json(Value::Array(robots.iter().map(robot_json).collect())).into_response())
}

async fn get_robot(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult {
    let id = who(&state, &headers).await?;
    let r = state.auth.robot(&id, &name).await.map_err(error)?;
    Ok(Json(robot_json(&r)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RobotPatch {
    disabled: Option<bool>,
}

async fn update_robot(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult {
    let id = who(&state, &headers).await?;
    let p: RobotPatch = json_body(&body)?;
    let r = match p.disabled {
        Some(d) => state.auth.set_robot_disabled(&id, &name, d).await,
        None => state.auth.robot(&id, &name).await,
    }
    .map_err(error)?;
    Ok(Json(robot_json(&r)).into_response())
}

async fn refresh_robot(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult {
    let id = who(&state, &headers).await?;
    let secret = state
        .auth
        .refresh_robot_secret(&id, &name)
        .await
        .map_err(error)?;
    Ok(Json(json!({ "name": name, "secret": secret })).into_response())
}

async fn delete_robot(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult {
    let id = who(&state, &headers).await?;
    state.auth.delete_robot(&id, &name).await.map_err(error)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /v1/search?q=TERM&n=25&page=1`: what `docker search` expects. Anonymous callers see
/// public repositories (everything in open mode); credentials widen it as for listings.
async fn docker_search(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let identity = if state.auth.mode() == AuthMode::Open {
        Identity::anonymous()
    } else {
        let value = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        state.auth.authenticate(value).await.map_err(error)?
    };
    let term = q.get("q").cloned().unwrap_or_default();
    let page_size: u32 = q
        .get("n")
        .and_then(|n| n.parse().ok())
        .unwrap_or(25)
        .clamp(1, 100);
    let page: u32 = q
        .get("page")
        .and_then(|p| p.parse().ok())
        .unwrap_or(1)
        .max(1);
    let filter = state.auth.repository_filter(&identity);
    // Pages are counted from the start: walk (page - 1) pages of keys, then take one more
    // entry than a page to know whether another follows.
    let mut last: Option<String> = None;
    for _ in 1..page {
        let skipped = state
            .registry
            .search(&filter, &term, last.as_deref(), page_size)
            .await
            .map_err(|e| api_error(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", &e.to_string()))?;
        match skipped.last() {
            Some(l) if skipped.len() == page_size as usize => last = Some(l.clone()),
            _ => {
                last = None;
                break;
            }
        }
    }
    let mut names = state
        .registry
        .search(&filter, &term, last.as_deref(), page_size + 1)
        .await
        .map_err(|e| api_error(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", &e.to_string()))?;
    let more = names.len() > page_size as usize;
    names.truncate(page_size as usize);
    let results: Vec<Value> = names
        .iter()
        .map(|n| {
            json!({
                "name": n,
                "description": "",
                "star_count": 0,
                "is_official": false,
                "is_automated": false,
            })
        })
        .collect();
    Ok(Json(json!({
        "query": term,
        "num_results": results.len(),
        "page": page,
        "page_size": page_size,
        "num_pages": if more { page + 1 } else { page },
        "results": results,
    }))
    .into_response())
}

fn error(e: AuthError) -> Response {
    match e {
        AuthError::BadCredentials | AuthError::Unauthenticated => {
            let mut r = api_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", &e.to_string());
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"kura\""),
            );
            r
        }
        AuthError::Denied(m) => api_error(StatusCode::FORBIDDEN, "DENIED", &m),
        AuthError::NotFound(m) => api_error(StatusCode::NOT_FOUND, "NOT_FOUND", &m),
        AuthError::Invalid(m) => api_error(StatusCode::BAD_REQUEST, "INVALID", &m),
        AuthError::Conflict(m) => api_error(StatusCode::CONFLICT, "CONFLICT", &m),
        AuthError::Throttled(_) => api_error(
            StatusCode::TOO_MANY_REQUESTS,
            "TOOMANYREQUESTS",
            &e.to_string(),
        ),
        AuthError::Store(e) => {
            tracing::error!(error = %e, "management API store error");
            api_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "UNKNOWN",
                "internal server error",
            )
        }
    }
}

/// Authenticates a management request (Basic or a token from `/token`).
async fn who(state: &AppState, headers: &HeaderMap) -> Result<Identity, Response> {
    if state.auth.mode() == AuthMode::Open {
        return Err(api_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "users and projects need auth.mode = local",
        ));
    }
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    state.auth.authenticate(value).await.map_err(error)
}

fn time(ms: i64) -> String {
    rfc3339((ms.max(0) / 1000) as u64)
}

fn user_json(u: &UserRecord) -> Value {
    json!({
        "username": u.username,
        "email": u.email,
        "admin": u.is_admin,
        "disabled": u.disabled,
        "created_at": time(u.created_at),
    })
}

fn project_json(p: &ProjectRecord) -> Value {
    json!({ "name": p.name, "public": p.public, "created_at": time(p.created_at) })
}

fn member_json(m: &MemberRecord) -> Value {
    json!({ "username": m.username, "role": m.role, "repositories": m.repositories })
}

fn robot_json(r: &RobotRecord) -> Value {
    json!({
        "name": r.name,
        "level": if r.project.is_some() { "project" } else { "system" },
        "project": r.project,
        "description": r.description,
        "disabled": r.disabled,
        "expires_at": r.expires_at.map(time),
        "created_at": time(r.created_at),
        "permissions": r.permissions.iter().map(|p| json!({
            "project": p.project,
            "repositories": p.repositories,
            "actions": p.actions.split(',').collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

/// `n` and `last` of a list request.
fn page(q: &HashMap<String, String>) -> Result<(u32, Option<String>), Response> {
    let n = match q.get("n") {
        None => 100,
        Some(n) => n.parse::<u32>().map_err(|_| {
            api_error(
                StatusCode::BAD_REQUEST,
                "INVALID",
                "n must be a non-negative integer",
            )
        })?,
    }
    .min(MAX_PAGE);
    Ok((n, q.get("last").filter(|s| !s.is_empty()).cloned()))
}

/// A JSON list with a `Link` to the next page when the page is full.
fn list(path: &str, items: Vec<Value>, n: u32, last_key: Option<String>) -> Response {
    let full = n > 0 && items.len() == n as usize;
    let mut r = (StatusCode::OK, Json(Value::Array(items))).into_response();
    if full && let Some(last) = last_key {
        let link = format!("<{path}?n={n}&last={last}>; rel=\"next\"");
        if let Ok(v) = HeaderValue::from_str(&link) {
            r.headers_mut().insert(header::LINK, v);
        }
    }
    r
}

fn json_body<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, Response> {
    serde_json::from_slice(body).map_err(|e| {
        api_error(
            StatusCode::BAD_REQUEST,
            "INVALID",
            &format!("invalid JSON body: {e}"),
        )
    })
}

// --- users -------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    username: String,
    password: String,
    email: Option<String>,
    #[serde(default)]
    admin: bool,
}

async fn create_user(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult {
    let id = who(&state, &headers).await?;
    let u: NewUser = json_body(&body)?;
    let user = state
        .auth
        .create_user(&id, &u.username, &u.password, u.email.as_deref(), u.admin)
        .await
        .map_err(error)?;
    Ok((StatusCode::CREATED, Json(user_json(&user))).into_response())
}

async fn list_users(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let id = who(&state, &headers).await?;
    let (n, last) = page(&q)?;
    let users = state
        .auth
        .list_users(&id, last.as_deref(), n)
        .await
        .map_err(error)?;
    let last_key = users.last().map(|u| u.username.clone());
    Ok(list(
        "/api/v1/users",
        users.iter().map(user_json).collect(),
        n,
        last_key,
    ))
}

async fn current_user(State(state): State<AppState>, headers: HeaderMap) -> ApiResult {
    let id = who(&state, &headers).await?;
    let user = state.auth.current_user(&id).await.map_err(error)?;
    Ok(Json(user_json(&user)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserPatch {
    admin: Option<bool>,
    disabled: Option<bool>,
}

async fn update_user(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(username): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult {
    let id = who(&state, &headers).await?;
    let p: UserPatch = json_body(&body)?;
    let user = state
        .auth
        .update_user(&id, &username, p.admin, p.disabled)
        .await
        .map_err(error)?;
    Ok(Json(user_json(&user)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PasswordChange {
    current_password: Option<String>,
    new_password: String,
}

async fn change_password(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(username): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult {
    let id = who(&state, &headers).await?;
    let p: PasswordChange = json_body(&body)?;
    state
        .auth
        .change_password(
            &id,
            &username,
            p.current_password.as_deref(),
            &p.new_password,
        )
        .await
        .map_err(error)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn delete_user(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(username): Path<String>,
) -> ApiResult {
    let id = who(&state, &headers).await?;
    state
        .auth
        .delete_user(&id, &username)
        .await
        .map_err(error)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// --- projects ----------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewProject {
    name: String,
    #[serde(default)]
    public: bool,
}

async fn create_project(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult {
    let id = who(&state, &headers).await?;
    let p: NewProject = json_body(&body)?;
    let project = state
        .auth
        .create_project(&id, &p.name, p.public)
        .await
        .map_err(error)?;
    Ok((StatusCode::CREATED, Json(project_json(&project))).into_response())
}

async fn list_projects(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let id = who(&state, &headers).await?;
    let (n, last) = page(&q)?;
    let projects = state
        .auth
        .list_projects(&id, last.as_deref(), n)
        .await
        .map_err(error)?;
    let last_key = projects.last().map(|p| p.name.clone());
    Ok(list(
        "/api/v1/projects",
        projects.iter().map(project_json).collect(),
        n,
        last_key,
    ))
}

async fn get_project(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult {
    let id = who(&state, &headers).await?;
    let p = state.auth.project(&id, &name).await.map_err(error)?;
    Ok(Json(project_json(&p)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProjectPatch {
    public: Option<bool>,
}

async fn update_project(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult {
    let id = who(&state, &headers).await?;
    let patch: ProjectPatch = json_body(&body)?;
    let p = match patch.public {
        Some(public) => state.auth.set_project_public(&id, &name, public).await,
        None => state.auth.project(&id, &name).await,
    }
    .map_err(error)?;
    Ok(Json(project_json(&p)).into_response())
}

async fn delete_project(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult {
    let id = who(&state, &headers).await?;
    state.auth.delete_project(&id, &name).await.map_err(error)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_members(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult {
    let id = who(&state, &headers).await?;
    let members = state.auth.members(&id, &name).await.map_err(error)?;
    Ok(Json(Value::Array(members.iter().map(member_json).collect())).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Membership {
    role: String,
    /// Glob over repository paths inside the project the role applies to (default `*`).
    repositories: Option<String>,
}

async fn set_member(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((name, username)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> ApiResult {
    let id = who(&state, &headers).await?;
    let m: Membership = json_body(&body)?;
    state
        .auth
        .set_member(&id, &name, &username, &m.role, m.repositories.as_deref())
        .await
        .map_err(error)?;
    Ok(Json(json!({
        "username": username,
        "role": m.role,
        "repositories": m.repositories.as_deref().unwrap_or("*"),
    }))
    .into_response())
}

async fn remove_member(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((name, username)): Path<(String, String)>,
) -> ApiResult {
    let id = who(&state, &headers).await?;
    state
        .auth
        .remove_member(&id, &name, &username)
        .await
        .map_err(error)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// --- settings ----------------------------------------------------------------------------------

async fn get_settings(State(state): State<AppState>, headers: HeaderMap) -> ApiResult {
    let id = who(&state, &headers).await?;
    let all = state.auth.settings(&id).await.map_err(error)?;
    let obj: serde_json::Map<String, Value> = all
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    Ok(Json(Value::Object(obj)).into_response())
}

async fn put_settings(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult {
    let id = who(&state, &headers).await?;
    let changes: HashMap<String, Value> = json_body(&body)?;
    for (k, v) in &changes {
        let v = match v {
            Value::String(s) => s.clone(),
            Value::Bool(b) => b.to_string(),
            other => other.to_string(),
        };
        state.auth.put_setting(&id, k, &v).await.map_err(error)?;
    }
    get_settings(State(state), headers).await
}
