//! The management API under `/api/v1` (JSON in, JSON out; errors as
//! `{"errors":[{"code","message"}]}`) and `GET /v1/search` for `docker search`.
//!
//! Handlers authenticate, call one `kura_auth::Auth` operation (which applies the permission
//! table) and shape the answer. Every route is listed once, in `management_routes!`, with its
//! `#[utoipa::path]` description: the served router takes each route's path and methods from
//! that description, and the OpenAPI document at `/api/v1/openapi.json` is built from the same
//! list on its first request, so it covers exactly the routes that exist.

use std::collections::{BTreeMap, HashMap};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use kura_auth::{AuthError, AuthMode, Identity, rfc3339};
use kura_metadata::{MemberRecord, ProjectRecord, RobotRecord, UserRecord};
use serde::{Deserialize, Serialize};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::auth::api_error;
use crate::lifecycle_api as lc;
use crate::ops_api;

pub(crate) type ApiResult = Result<Response, Response>;

/// Page size cap of list endpoints.
const MAX_PAGE: u32 = 1000;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Kura management API",
        description = "Users, projects, members, robot accounts and settings of a Kura registry. \
                       Authenticate with HTTP Basic (user or robot credentials) or with a bearer \
                       token from GET /token.",
        version = "1"
    ),
    modifiers(&Security),
    tags(
        (name = "users"), (name = "projects"), (name = "members"), (name = "robots"),
                (name = "settings"), (name = "search"), (name = "repositories"), (name = "artifacts"),
                (name = "lifecycle"), (name = "audit"), (name = "webhooks")
    )
)]
struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "basic",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Basic)),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// Every management route, listed once. `$register` receives them as groups of handlers that
/// share a path (the shape of utoipa-axum's `routes!`): [`routes`] turns them into the served
/// router and [`management_doc`] into the OpenAPI document, so the two cannot disagree.
macro_rules! management_routes {
    ($register:ident) => {
        $register!(
            [list_users, create_user],
            [current_user],
            [update_user, delete_user],
            [change_password],
            [list_projects, create_project],
            [get_project, update_project, delete_project],
            [list_members],
            [set_member, remove_member],
            [list_robots, create_robot],
            [get_robot, update_robot, delete_robot],
            [refresh_robot],
            [get_settings, put_settings],
            [docker_search],
            [list_repositories],
            [delete_repository],
            [list_artifacts],
            [delete_artifact],
            [delete_artifact_tag],
            [lc::start_gc, lc::list_gc_runs],
            [lc::get_gc_run],
            [lc::system_storage],
            [lc::project_storage],
            [lc::get_quota, lc::put_quota],
            [lc::list_immutability_rules, lc::add_immutability_rule],
            [lc::delete_immutability_rule],
            [lc::get_retention, lc::put_retention, lc::delete_retention],
            [lc::run_retention, lc::list_retention_runs],
            [lc::tag_history],
            [lc::restore_tag],
            [ops_api::list_audit],
            [ops_api::project_audit],
            [ops_api::export_audit],
            [ops_api::verify_audit],
            [ops_api::purge_audit],
            [ops_api::list_webhooks, ops_api::create_webhook],
            [
                ops_api::get_webhook,
                ops_api::update_webhook,
                ops_api::delete_webhook
            ],
            [ops_api::list_deliveries],
        )
    };
}

/// Routes each group under its first handler's documented path and methods, without building
/// the handlers' OpenAPI operations and schemas. Building them at start-up took about 2 MiB of
/// heap and 2 MiB of resident code for a document few clients ever ask for.
macro_rules! plain_router {
    ($([$first:path $(, $rest:path)*]),* $(,)?) => {{
        use utoipa_axum::PathItemExt;
        let router = Router::new();
        $(
            // `paste!` re-reads each handler path as plain tokens, which the `@path` arms of
            // utoipa-axum's `routes!` need; those arms name the `__path_<handler>` type that
            // `#[utoipa::path]` generates next to each handler.
            let router = utoipa_axum::paste! {{
                let path = utoipa_axum::routes!(@path [path()] of $first);
                let mut methods = axum::routing::MethodRouter::new();
                for m in utoipa_axum::routes!(@path [methods()] of $first) {
                    methods = methods.on(m.to_method_filter(), $first);
                }
                $(
                    assert_eq!(
                        utoipa_axum::routes!(@path [path()] of $rest),
                        path,
                        "handlers grouped in management_routes! must share a path"
                    );
                    for m in utoipa_axum::routes!(@path [methods()] of $rest) {
                        methods = methods.on(m.to_method_filter(), $rest);
                    }
                )*
                router.route(&path, methods)
            }};
        )*
        router
    }};
}

macro_rules! documented_router {
    ($([$($handler:path),+]),* $(,)?) => {
        OpenApiRouter::with_openapi(ApiDoc::openapi())
            $(.routes(routes!($($handler),+)))*
    };
}

/// The management routes. Their OpenAPI document is built on its first request and kept as
/// JSON.
pub fn routes() -> Router<AppState> {
    static DOC: std::sync::OnceLock<bytes::Bytes> = std::sync::OnceLock::new();
    let router: Router<AppState> = management_routes!(plain_router);
    router.route(
        "/api/v1/openapi.json",
        axum::routing::get(|| async {
            let json = DOC.get_or_init(|| {
                serde_json::to_vec(&management_doc())
                    .expect("an OpenAPI document serializes")
                    .into()
            });
            (
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                json.clone(),
            )
        }),
    )
}

/// The OpenAPI document of the management routes.
pub(crate) fn management_doc() -> utoipa::openapi::OpenApi {
    let documented: OpenApiRouter<AppState> = management_routes!(documented_router);
    documented.split_for_parts().1
}

// --- wire types --------------------------------------------------------------------------------

/// An error answer.
#[derive(Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    errors: Vec<ErrorItem>,
}

#[derive(Serialize, ToSchema)]
struct ErrorItem {
    /// INVALID, UNAUTHORIZED, DENIED, NOT_FOUND, CONFLICT, TOOMANYREQUESTS or UNKNOWN.
    code: String,
    message: String,
}

#[derive(Serialize, ToSchema)]
struct UserOut {
    username: String,
    email: Option<String>,
    admin: bool,
    disabled: bool,
    /// RFC 3339.
    created_at: String,
}

#[derive(Serialize, ToSchema)]
struct ProjectOut {
    name: String,
    public: bool,
    created_at: String,
}

#[derive(Serialize, ToSchema)]
struct MemberOut {
    username: String,
    /// project_admin, maintainer, developer, guest or limited_guest.
    role: String,
    /// Glob over repository paths inside the project that the role applies to.
    repositories: String,
}

#[derive(Serialize, ToSchema)]
struct RobotPermissionOut {
    project: String,
    repositories: String,
    actions: Vec<String>,
}

#[derive(Serialize, ToSchema)]
struct RobotOut {
    /// Login name: robot$NAME (system) or robot$PROJECT+NAME (project).
    name: String,
    /// system or project.
    level: String,
    project: Option<String>,
    description: String,
    disabled: bool,
    expires_at: Option<String>,
    created_at: String,
    permissions: Vec<RobotPermissionOut>,
}

/// A robot with its secret, returned once at creation.
#[derive(Serialize, ToSchema)]
struct RobotCreated {
    #[serde(flatten)]
    robot: RobotOut,
    secret: String,
}

#[derive(Serialize, ToSchema)]
struct SecretOut {
    name: String,
    secret: String,
}

#[derive(Serialize, ToSchema)]
struct SearchOut {
    query: String,
    num_results: usize,
    page: u32,
    page_size: u32,
    num_pages: u32,
    results: Vec<SearchResult>,
}

#[derive(Serialize, ToSchema)]
struct SearchResult {
    name: String,
    description: String,
    star_count: u32,
    is_official: bool,
    is_automated: bool,
}

pub(crate) fn time(ms: i64) -> String {
    rfc3339((ms.max(0) / 1000) as u64)
}

impl From<&UserRecord> for UserOut {
    fn from(u: &UserRecord) -> Self {
        UserOut {
            username: u.username.clone(),
            email: u.email.clone(),
            admin: u.is_admin,
            disabled: u.disabled,
            created_at: time(u.created_at),
        }
    }
}

impl From<&ProjectRecord> for ProjectOut {
    fn from(p: &ProjectRecord) -> Self {
        ProjectOut {
            name: p.name.clone(),
            public: p.public,
            created_at: time(p.created_at),
        }
    }
}

impl From<&MemberRecord> for MemberOut {
    fn from(m: &MemberRecord) -> Self {
        MemberOut {
            username: m.username.clone(),
            role: m.role.clone(),
            repositories: m.repositories.clone(),
        }
    }
}

impl From<&RobotRecord> for RobotOut {
    fn from(r: &RobotRecord) -> Self {
        RobotOut {
            name: r.name.clone(),
            level: if r.project.is_some() {
                "project"
            } else {
                "system"
            }
            .into(),
            project: r.project.clone(),
            description: r.description.clone(),
            disabled: r.disabled,
            expires_at: r.expires_at.map(time),
            created_at: time(r.created_at),
            permissions: r
                .permissions
                .iter()
                .map(|p| RobotPermissionOut {
                    project: p.project.clone(),
                    repositories: p.repositories.clone(),
                    actions: p.actions.split(',').map(str::to_string).collect(),
                })
                .collect(),
        }
    }
}

// --- plumbing ----------------------------------------------------------------------------------

pub(crate) fn error(e: AuthError) -> Response {
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
pub(crate) async fn who(state: &AppState, headers: &HeaderMap) -> Result<Identity, Response> {
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
    let identity = match state.auth.authenticate(value).await {
        Ok(id) => id,
        Err(e) => {
            if matches!(e, AuthError::BadCredentials | AuthError::Throttled(_)) {
                crate::audit::login_failed(state, headers, &e.to_string());
            }
            return Err(error(e));
        }
    };
    let identity = state.auth.current_identity(identity).await.map_err(error)?;
    crate::audit::note_identity(&identity);
    Ok(identity)
}

/// `n` and `last` of a list request.
pub(crate) fn page(q: &HashMap<String, String>) -> Result<(u32, Option<String>), Response> {
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
fn list<T: Serialize>(path: &str, items: Vec<T>, n: u32, last_key: Option<String>) -> Response {
    let full = n > 0 && items.len() == n as usize;
    let mut r = (StatusCode::OK, Json(items)).into_response();
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

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewUser {
    username: String,
    /// At least 8 characters.
    password: String,
    email: Option<String>,
    #[serde(default)]
    admin: bool,
}

/// Create a user (system administrators).
#[utoipa::path(post, path = "/api/v1/users", tag = "users", request_body = NewUser,
    security(("basic" = []), ("bearer" = [])),
    responses((status = 201, description = "Created", body = UserOut), (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Authentication required", body = ErrorBody), (status = 403, description = "Not allowed", body = ErrorBody), (status = 409, description = "Conflict with the current state", body = ErrorBody)))]
async fn create_user(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult {
    let id = who(&state, &headers).await?;
    let u: NewUser = json_body(&body)?;
    kura_registry::context::note_resource(format!("users/{}", u.username), None);
    let user = state
        .auth
        .create_user(&id, &u.username, &u.password, u.email.as_deref(), u.admin)
        .await
        .map_err(error)?;
    Ok((StatusCode::CREATED, Json(UserOut::from(&user))).into_response())
}

/// List users (system administrators), by username; `Link` to the next page.
#[utoipa::path(get, path = "/api/v1/users", tag = "users",
    params(("n" = Option<u32>, Query, description = "page size (default 100, at most 1000)"),
        ("last" = Option<String>, Query, description = "last username of the previous page")),
    security(("basic" = []), ("bearer" = [])),
    responses((status = 200, description = "OK", body = Vec<UserOut>), (status = 401, description = "Authentication required", body = ErrorBody), (status = 403, description = "Not allowed", body = ErrorBody)))]
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
        users.iter().map(UserOut::from).collect(),
        n,
        last_key,
    ))
}

/// The authenticated user.
#[utoipa::path(get, path = "/api/v1/users/current", tag = "users",
    security(("basic" = []), ("bearer" = [])),
    responses((status = 200, description = "OK", body = UserOut), (status = 401, description = "Authentication required", body = ErrorBody)))]
async fn current_user(State(state): State<AppState>, headers: HeaderMap) -> ApiResult {
    let id = who(&state, &headers).await?;
    let user = state.auth.current_user(&id).await.map_err(error)?;
    Ok(Json(UserOut::from(&user)).into_response())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct UserPatch {
    admin: Option<bool>,
    disabled: Option<bool>,
}

/// Change a user's administrator or disabled flag (system administrators).
#[utoipa::path(patch, path = "/api/v1/users/{username}", tag = "users", request_body = UserPatch,
    params(("username" = String, Path)),
    security(("basic" = []), ("bearer" = [])),
    responses((status = 200, description = "OK", body = UserOut), (status = 401, description = "Authentication required", body = ErrorBody),
        (status = 403, description = "Not allowed", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)))]
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
    Ok(Json(UserOut::from(&user)).into_response())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct PasswordChange {
    /// Required when changing your own password.
    current_password: Option<String>,
    new_password: String,
}

/// Change a password: your own (with the current one) or anyone's as administrator.
#[utoipa::path(put, path = "/api/v1/users/{username}/password", tag = "users", request_body = PasswordChange,
    params(("username" = String, Path)),
    security(("basic" = []), ("bearer" = [])),
    responses((status = 204, description = "Done, no content"), (status = 400, description = "Invalid request", body = ErrorBody), (status = 401, description = "Authentication required", body = ErrorBody),
        (status = 403, description = "Not allowed", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)))]
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

/// Delete a user (system administrators; not yourself).
#[utoipa::path(delete, path = "/api/v1/users/{username}", tag = "users",
    params(("username" = String, Path)),
    security(("basic" = []), ("bearer" = [])),
    responses((status = 204, description = "Done, no content"), (status = 401, description = "Authentication required", body = ErrorBody), (status = 403, description = "Not allowed", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody), (status = 409, description = "Conflict with the current state", body = ErrorBody)))]
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

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewProject {
    /// One path component: lowercase letters, digits and . _ -
    name: String,
    #[serde(default)]
    public: bool,
}

/// Create a project; the creator becomes its project admin.
#[utoipa::path(post, path = "/api/v1/projects", tag = "projects", request_body = NewProject,
    security(("basic" = []), ("bearer" = [])),
    responses((status = 201, description = "Created", body = ProjectOut), (status = 400, description = "Invalid request", body = ErrorBody), (status = 401, description = "Authentication required", body = ErrorBody),
        (status = 403, description = "Not allowed", body = ErrorBody), (status = 409, description = "Conflict with the current state", body = ErrorBody)))]
async fn create_project(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult {
    let id = who(&state, &headers).await?;
    let p: NewProject = json_body(&body)?;
    kura_registry::context::note_resource(format!("projects/{}", p.name), Some(&p.name));
    let project = state
        .auth
        .create_project(&id, &p.name, p.public)
        .await
        .map_err(error)?;
    Ok((StatusCode::CREATED, Json(ProjectOut::from(&project))).into_response())
}

/// List the projects you can see (public ones, yours; all for administrators).
#[utoipa::path(get, path = "/api/v1/projects", tag = "projects",
    params(("n" = Option<u32>, Query), ("last" = Option<String>, Query)),
    security(("basic" = []), ("bearer" = [])),
    responses((status = 200, description = "OK", body = Vec<ProjectOut>), (status = 401, description = "Authentication required", body = ErrorBody)))]
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
        projects.iter().map(ProjectOut::from).collect(),
        n,
        last_key,
    ))
}

/// A project you can see.
#[utoipa::path(get, path = "/api/v1/projects/{name}", tag = "projects",
    params(("name" = String, Path)),
    security(("basic" = []), ("bearer" = [])),
    responses((status = 200, description = "OK", body = ProjectOut), (status = 401, description = "Authentication required", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)))]
async fn get_project(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult {
    let id = who(&state, &headers).await?;
    let p = state.auth.project(&id, &name).await.map_err(error)?;
    Ok(Json(ProjectOut::from(&p)).into_response())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ProjectPatch {
    public: Option<bool>,
}

/// Change a project's visibility (project admins).
#[utoipa::path(patch, path = "/api/v1/projects/{name}", tag = "projects", request_body = ProjectPatch,
    params(("name" = String, Path)),
    security(("basic" = []), ("bearer" = [])),
    responses((status = 200, description = "OK", body = ProjectOut), (status = 401, description = "Authentication required", body = ErrorBody),
        (status = 403, description = "Not allowed", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)))]
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
    Ok(Json(ProjectOut::from(&p)).into_response())
}

/// Delete an empty project (project admins).
#[utoipa::path(delete, path = "/api/v1/projects/{name}", tag = "projects",
    params(("name" = String, Path)),
    security(("basic" = []), ("bearer" = [])),
    responses((status = 204, description = "Done, no content"), (status = 401, description = "Authentication required", body = ErrorBody), (status = 403, description = "Not allowed", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody), (status = 409, description = "Conflict with the current state", body = ErrorBody)))]
async fn delete_project(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult {
    let id = who(&state, &headers).await?;
    state.auth.delete_project(&id, &name).await.map_err(error)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A project's members.
#[utoipa::path(get, path = "/api/v1/projects/{name}/members", tag = "members",
    params(("name" = String, Path)),
    security(("basic" = []), ("bearer" = [])),
    responses((status = 200, description = "OK", body = Vec<MemberOut>), (status = 401, description = "Authentication required", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)))]
async fn list_members(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult {
    let id = who(&state, &headers).await?;
    let members = state.auth.members(&id, &name).await.map_err(error)?;
    Ok(Json(members.iter().map(MemberOut::from).collect::<Vec<_>>()).into_response())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct Membership {
    /// project_admin, maintainer, developer, guest or limited_guest.
    role: String,
    /// Glob over repository paths inside the project the role applies to (default `*`).
    repositories: Option<String>,
}

/// Add a member or change its role (project admins).
#[utoipa::path(put, path = "/api/v1/projects/{name}/members/{username}", tag = "members", request_body = Membership,
    params(("name" = String, Path), ("username" = String, Path)),
    security(("basic" = []), ("bearer" = [])),
    responses((status = 200, description = "OK", body = MemberOut), (status = 400, description = "Invalid request", body = ErrorBody), (status = 401, description = "Authentication required", body = ErrorBody),
        (status = 403, description = "Not allowed", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)))]
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
    Ok(Json(MemberOut {
        username,
        role: m.role,
        repositories: m.repositories.unwrap_or_else(|| "*".into()),
    })
    .into_response())
}

/// Remove a member (project admins).
#[utoipa::path(delete, path = "/api/v1/projects/{name}/members/{username}", tag = "members",
    params(("name" = String, Path), ("username" = String, Path)),
    security(("basic" = []), ("bearer" = [])),
    responses((status = 204, description = "Done, no content"), (status = 401, description = "Authentication required", body = ErrorBody), (status = 403, description = "Not allowed", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)))]
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

// --- robots ------------------------------------------------------------------------------------

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RobotPermissionIn {
    /// Defaults to the robot's project for project-level robots.
    project: Option<String>,
    /// Glob over repository paths inside the project (default `*`).
    repositories: Option<String>,
    /// pull, push, delete, list.
    actions: Vec<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewRobotIn {
    name: String,
    /// Set for a project-level robot (created by that project's admins).
    project: Option<String>,
    #[serde(default)]
    description: String,
    /// Days until the robot expires; absent or -1: never.
    duration_days: Option<i64>,
    permissions: Vec<RobotPermissionIn>,
}

/// Create a robot account; its secret is in this answer only.
#[utoipa::path(post, path = "/api/v1/robots", tag = "robots", request_body = NewRobotIn,
    security(("basic" = []), ("bearer" = [])),
    responses((status = 201, description = "Created", body = RobotCreated), (status = 400, description = "Invalid request", body = ErrorBody), (status = 401, description = "Authentication required", body = ErrorBody),
        (status = 403, description = "Not allowed", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody), (status = 409, description = "Conflict with the current state", body = ErrorBody)))]
async fn create_robot(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult {
    let id = who(&state, &headers).await?;
    let r: NewRobotIn = json_body(&body)?;
    kura_registry::context::note_resource(format!("robots/{}", r.name), r.project.as_deref());
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
    // The stored name (robot$project+name) is what later records of this robot carry.
    kura_registry::context::note_resource(
        format!("robots/{}", robot.name),
        robot.project.as_deref(),
    );
    let out = RobotCreated {
        robot: RobotOut::from(&robot),
        secret,
    };
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

/// Robots of a project (its admins), or all robots (administrators).
#[utoipa::path(get, path = "/api/v1/robots", tag = "robots",
    params(("project" = Option<String>, Query, description = "only this project's robots")),
    security(("basic" = []), ("bearer" = [])),
    responses((status = 200, description = "OK", body = Vec<RobotOut>), (status = 401, description = "Authentication required", body = ErrorBody),
        (status = 403, description = "Not allowed", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)))]
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
    Ok(Json(robots.iter().map(RobotOut::from).collect::<Vec<_>>()).into_response())
}

/// A robot you manage.
#[utoipa::path(get, path = "/api/v1/robots/{name}", tag = "robots",
    params(("name" = String, Path, description = "login name, e.g. robot$team+ci")),
    security(("basic" = []), ("bearer" = [])),
    responses((status = 200, description = "OK", body = RobotOut), (status = 401, description = "Authentication required", body = ErrorBody),
        (status = 403, description = "Not allowed", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)))]
async fn get_robot(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult {
    let id = who(&state, &headers).await?;
    let r = state.auth.robot(&id, &name).await.map_err(error)?;
    Ok(Json(RobotOut::from(&r)).into_response())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RobotPatch {
    disabled: Option<bool>,
}

/// Disable or enable a robot.
#[utoipa::path(patch, path = "/api/v1/robots/{name}", tag = "robots", request_body = RobotPatch,
    params(("name" = String, Path)),
    security(("basic" = []), ("bearer" = [])),
    responses((status = 200, description = "OK", body = RobotOut), (status = 401, description = "Authentication required", body = ErrorBody),
        (status = 403, description = "Not allowed", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)))]
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
    Ok(Json(RobotOut::from(&r)).into_response())
}

/// Give a robot a new secret (shown once; the old one stops working).
#[utoipa::path(post, path = "/api/v1/robots/{name}/refresh", tag = "robots",
    params(("name" = String, Path)),
    security(("basic" = []), ("bearer" = [])),
    responses((status = 200, description = "OK", body = SecretOut), (status = 401, description = "Authentication required", body = ErrorBody),
        (status = 403, description = "Not allowed", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)))]
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
    Ok(Json(SecretOut { name, secret }).into_response())
}

/// Delete a robot.
#[utoipa::path(delete, path = "/api/v1/robots/{name}", tag = "robots",
    params(("name" = String, Path)),
    security(("basic" = []), ("bearer" = [])),
    responses((status = 204, description = "Done, no content"), (status = 401, description = "Authentication required", body = ErrorBody), (status = 403, description = "Not allowed", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)))]
async fn delete_robot(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult {
    let id = who(&state, &headers).await?;
    state.auth.delete_robot(&id, &name).await.map_err(error)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// --- settings ----------------------------------------------------------------------------------

/// System settings (administrators): project_creation (everyone | admin_only),
/// auto_create_projects (true | false).
#[utoipa::path(get, path = "/api/v1/settings", tag = "settings",
    security(("basic" = []), ("bearer" = [])),
    responses((status = 200, description = "OK", body = BTreeMap<String, String>), (status = 401, description = "Authentication required", body = ErrorBody), (status = 403, description = "Not allowed", body = ErrorBody)))]
async fn get_settings(State(state): State<AppState>, headers: HeaderMap) -> ApiResult {
    let id = who(&state, &headers).await?;
    let all: BTreeMap<String, String> = state
        .auth
        .settings(&id)
        .await
        .map_err(error)?
        .into_iter()
        .collect();
    Ok(Json(all).into_response())
}

/// Change settings (administrators); answers all settings.
#[utoipa::path(put, path = "/api/v1/settings", tag = "settings", request_body = BTreeMap<String, String>,
    security(("basic" = []), ("bearer" = [])),
    responses((status = 200, description = "OK", body = BTreeMap<String, String>), (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Authentication required", body = ErrorBody), (status = 403, description = "Not allowed", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)))]
async fn put_settings(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult {
    let id = who(&state, &headers).await?;
    let changes: HashMap<String, serde_json::Value> = json_body(&body)?;
    for (k, v) in &changes {
        let v = match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        state.auth.put_setting(&id, k, &v).await.map_err(error)?;
    }
    get_settings(State(state), headers).await
}

// --- docker search -----------------------------------------------------------------------------

/// `docker search`: repositories whose name contains `q`, among those the caller may see
/// (anonymous: public ones; everything in open mode).
#[utoipa::path(get, path = "/v1/search", tag = "search",
    params(("q" = String, Query), ("n" = Option<u32>, Query, description = "page size, 1-100 (default 25)"),
        ("page" = Option<u32>, Query, description = "1-based page")),
    responses((status = 200, description = "OK", body = SearchOut), (status = 401, description = "Authentication required", body = ErrorBody)))]
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
    let internal = |e: kura_registry::RegistryError| {
        api_error(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", &e.to_string())
    };
    // Pages count from the start: walk (page - 1) pages of keys, then take one more entry
    // than a page to know whether another follows.
    let mut last: Option<String> = None;
    for _ in 1..page {
        let skipped = state
            .registry
            .search(&filter, &term, last.as_deref(), page_size)
            .await
            .map_err(internal)?;
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
        .map_err(internal)?;
    let more = names.len() > page_size as usize;
    names.truncate(page_size as usize);
    let results: Vec<SearchResult> = names
        .into_iter()
        .map(|name| SearchResult {
            name,
            description: String::new(),
            star_count: 0,
            is_official: false,
            is_automated: false,
        })
        .collect();
    Ok(Json(SearchOut {
        query: term,
        num_results: results.len(),
        page,
        page_size,
        num_pages: if more { page + 1 } else { page },
        results,
    })
    .into_response())
}

// --- repositories and artifacts ----------------------------------------------------------------

#[derive(Serialize, ToSchema)]
struct RepositoryOut {
    /// Full repository name (`project/path`).
    name: String,
}

#[derive(Serialize, ToSchema)]
struct ArtifactOut {
    digest: String,
    media_type: String,
    artifact_type: Option<String>,
    size: u64,
    tags: Vec<String>,
    pushed_at: String,
    last_pulled_at: Option<String>,
}

pub(crate) fn registry_error(e: kura_registry::RegistryError) -> Response {
    let (status, code) = match e.status {
        404 => (StatusCode::NOT_FOUND, "NOT_FOUND"),
        403 => (StatusCode::FORBIDDEN, "DENIED"),
        409 => (StatusCode::CONFLICT, "CONFLICT"),
        405 => (StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED"),
        400 => (StatusCode::BAD_REQUEST, "INVALID"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN"),
    };
    api_error(status, code, &e.message)
}

/// `project/repository` from the path parts, checked, and the caller's right to `action` on
/// it (404 when the caller cannot even see the project, so names do not leak).
pub(crate) async fn repository_access(
    state: &AppState,
    identity: &Identity,
    project: &str,
    repository: &str,
    action: kura_auth::Action,
) -> Result<kura_oci::RepositoryName, Response> {
    state.auth.project(identity, project).await.map_err(error)?;
    let full = format!("{project}/{repository}");
    let name = kura_oci::RepositoryName::parse(&full)
        .map_err(|e| api_error(StatusCode::BAD_REQUEST, "INVALID", &e.to_string()))?;
    let allowed = state
        .auth
        .allowed_on(identity, &full)
        .await
        .map_err(error)?;
    if !allowed.contains(&action) {
        return Err(api_error(
            StatusCode::FORBIDDEN,
            "DENIED",
            &format!("{} may not {} {full}", identity.name(), action.as_str()),
        ));
    }
    Ok(name)
}

/// Repositories of a project that you may list (names containing `q`).
#[utoipa::path(get, path = "/api/v1/projects/{name}/repositories", tag = "repositories",
    params(("name" = String, Path), ("q" = Option<String>, Query), ("n" = Option<u32>, Query),
        ("last" = Option<String>, Query)),
    security(("basic" = []), ("bearer" = [])),
    responses((status = 200, description = "OK", body = Vec<RepositoryOut>),
        (status = 401, description = "Authentication required", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody)))]
async fn list_repositories(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let id = who(&state, &headers).await?;
    state.auth.project(&id, &name).await.map_err(error)?;
    let (n, last) = page(&q)?;
    let term = q.get("q").cloned().unwrap_or_default();
    let names = state
        .registry
        .project_repositories(&name, &term, last.as_deref(), n)
        .await
        .map_err(registry_error)?;
    let last_key = names.last().cloned();
    let mut visible = Vec::new();
    for repo in names {
        let allowed = state.auth.allowed_on(&id, &repo).await.map_err(error)?;
        if allowed.contains(&kura_auth::Action::List) {
            visible.push(RepositoryOut { name: repo });
        }
    }
    Ok(list(
        &format!("/api/v1/projects/{name}/repositories"),
        visible,
        n,
        last_key,
    ))
}

/// Delete a repository with all its artifacts and tags (needs delete on it).
#[utoipa::path(delete, path = "/api/v1/projects/{name}/repositories/{repository}", tag = "repositories",
    params(("name" = String, Path), ("repository" = String, Path, description = "path inside the project, URL-encoded (app%2Fweb)")),
    security(("basic" = []), ("bearer" = [])),
    responses((status = 204, description = "Deleted"),
        (status = 401, description = "Authentication required", body = ErrorBody),
        (status = 403, description = "Not allowed", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody)))]
async fn delete_repository(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((name, repository)): Path<(String, String)>,
) -> ApiResult {
    let id = who(&state, &headers).await?;
    let repo =
        repository_access(&state, &id, &name, &repository, kura_auth::Action::Delete).await?;
    state
        .registry
        .delete_repository(&repo)
        .await
        .map_err(registry_error)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Artifacts (manifests) of a repository, newest first, with tags, push and last pull time.
/// Page with `last` = the previous page's last `<pushed_at ms>.<digest>` (see the Link header).
#[utoipa::path(get, path = "/api/v1/projects/{name}/repositories/{repository}/artifacts", tag = "artifacts",
    params(("name" = String, Path), ("repository" = String, Path), ("n" = Option<u32>, Query),
        ("last" = Option<String>, Query)),
    security(("basic" = []), ("bearer" = [])),
    responses((status = 200, description = "OK", body = Vec<ArtifactOut>),
        (status = 401, description = "Authentication required", body = ErrorBody),
        (status = 403, description = "Not allowed", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody)))]
async fn list_artifacts(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((name, repository)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let id = who(&state, &headers).await?;
    let repo = repository_access(&state, &id, &name, &repository, kura_auth::Action::List).await?;
    let (n, last) = page(&q)?;
    let before = match &last {
        None => None,
        Some(l) => {
            let (t, d) = l
                .split_once('.')
                .and_then(|(t, d)| t.parse::<i64>().ok().map(|t| (t, d)))
                .ok_or_else(|| {
                    api_error(
                        StatusCode::BAD_REQUEST,
                        "INVALID",
                        "last must be <ms>.<digest>",
                    )
                })?;
            Some((t, d.to_string()))
        }
    };
    let arts = state
        .registry
        .list_artifacts(&repo, before.as_ref().map(|(t, d)| (*t, d.as_str())), n)
        .await
        .map_err(registry_error)?;
    let last_key = arts.last().map(|a| format!("{}.{}", a.pushed_at, a.digest));
    let out: Vec<ArtifactOut> = arts
        .into_iter()
        .map(|a| ArtifactOut {
            digest: a.digest,
            media_type: a.media_type,
            artifact_type: a.artifact_type,
            size: a.size,
            tags: a.tags,
            pushed_at: time(a.pushed_at),
            last_pulled_at: a.last_pulled_at.map(time),
        })
        .collect();
    Ok(list(
        &format!(
            "/api/v1/projects/{name}/repositories/{}/artifacts",
            repository.replace('/', "%2F")
        ),
        out,
        n,
        last_key,
    ))
}

/// Delete an artifact (a manifest by digest) with all its tags and its accessories
/// (signatures, SBOMs and other referrers, and cosign-style `sha256-…` tags).
#[utoipa::path(delete, path = "/api/v1/projects/{name}/repositories/{repository}/artifacts/{digest}", tag = "artifacts",
    params(("name" = String, Path), ("repository" = String, Path), ("digest" = String, Path)),
    security(("basic" = []), ("bearer" = [])),
    responses((status = 204, description = "Deleted"),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Authentication required", body = ErrorBody),
        (status = 403, description = "Not allowed", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody)))]
async fn delete_artifact(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((name, repository, digest)): Path<(String, String, String)>,
) -> ApiResult {
    let id = who(&state, &headers).await?;
    let repo =
        repository_access(&state, &id, &name, &repository, kura_auth::Action::Delete).await?;
    let digest: kura_oci::Digest = digest.parse().map_err(|e: kura_oci::DigestError| {
        api_error(StatusCode::BAD_REQUEST, "INVALID", &e.to_string())
    })?;
    state
        .registry
        .delete_artifact(&repo, &digest, kura_registry::DeleteCause::Client)
        .await
        .map_err(registry_error)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Remove one tag from an artifact (the artifact stays).
#[utoipa::path(delete, path = "/api/v1/projects/{name}/repositories/{repository}/artifacts/{digest}/tags/{tag}", tag = "artifacts",
    params(("name" = String, Path), ("repository" = String, Path), ("digest" = String, Path), ("tag" = String, Path)),
    security(("basic" = []), ("bearer" = [])),
    responses((status = 204, description = "Deleted"),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Authentication required", body = ErrorBody),
        (status = 403, description = "Not allowed", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody)))]
async fn delete_artifact_tag(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((name, repository, digest, tag)): Path<(String, String, String, String)>,
) -> ApiResult {
    let id = who(&state, &headers).await?;
    let repo =
        repository_access(&state, &id, &name, &repository, kura_auth::Action::Delete).await?;
    if !kura_oci::is_valid_tag(&tag) {
        return Err(api_error(StatusCode::BAD_REQUEST, "INVALID", "invalid tag"));
    }
    let reference = kura_oci::Reference::Tag(tag.clone());
    let current = state
        .registry
        .get_manifest(&repo, &reference, false)
        .await
        .map_err(registry_error)?;
    if current.digest != digest {
        return Err(api_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            &format!("tag {tag} does not point at {digest}"),
        ));
    }
    state
        .registry
        .delete_manifest(&repo, &reference)
        .await
        .map_err(registry_error)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
