//! Management API for the storage lifecycle: garbage collection runs, the storage report,
//! quotas, immutability rules, retention policies and runs, tag history and restore.
//!
//! Who may do what: GC and the system storage report are for system administrators;
//! quotas are set by system administrators and read by anyone who sees the project;
//! immutability rules and retention policies are managed with `manage_project` (project
//! administrators) and read with `read_project`; tag history needs `list` on the repository
//! and restoring a tag needs `push`.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use kura_auth::{Action, Identity};
use kura_metadata::{
    ImmutabilityRule, ProjectStorage, RepositoryStorage, RunRecord, StorageTotals,
};
use kura_registry::gc::GcRequest;
use kura_registry::retention::RetentionPolicy;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::api::{ApiResult, ErrorBody, error, registry_error, repository_access, time, who};
use crate::auth::api_error;

pub(crate) fn require_admin(id: &Identity) -> Result<(), Response> {
    if id.is_anonymous() {
        // Like the rest of the management API: 401 with a Basic challenge.
        return Err(error(kura_auth::AuthError::Unauthenticated));
    }
    if id.is_admin() {
        Ok(())
    } else {
        Err(api_error(
            StatusCode::FORBIDDEN,
            "DENIED",
            "only system administrators may do this",
        ))
    }
}

pub(crate) async fn project_action(
    state: &AppState,
    id: &Identity,
    project: &str,
    action: Action,
) -> Result<(), Response> {
    state.auth.project(id, project).await.map_err(error)?;
    let allowed = state.auth.allowed(id, project).await.map_err(error)?;
    if allowed.contains(&action) {
        Ok(())
    } else {
        Err(api_error(
            StatusCode::FORBIDDEN,
            "DENIED",
            &format!("{} may not {} in {project}", id.name(), action.as_str()),
        ))
    }
}

pub(crate) fn invalid(msg: &str) -> Response {
    api_error(StatusCode::BAD_REQUEST, "INVALID", msg)
}

/// A GC or retention run.
#[derive(Serialize, ToSchema)]
pub(crate) struct RunOut {
    id: i64,
    /// gc or retention.
    kind: String,
    project: Option<String>,
    /// manual, schedule or cli.
    trigger: String,
    dry_run: bool,
    /// running, succeeded, failed or cancelled.
    status: String,
    /// The phase the run is in (or stopped in).
    phase: String,
    started_at: String,
    finished_at: Option<String>,
    error: Option<String>,
    /// Parameters fixed at the start (cut-offs in epoch ms).
    #[schema(value_type = Object)]
    params: serde_json::Value,
    /// Counters (GC: blobs_deleted, bytes_deleted, manifests_deleted, ...; retention:
    /// evaluated, retained, deleted and the deletions).
    #[schema(value_type = Object)]
    result: serde_json::Value,
}

impl From<RunRecord> for RunOut {
    fn from(r: RunRecord) -> Self {
        RunOut {
            id: r.id,
            kind: r.kind,
            project: r.project,
            trigger: r.trigger,
            dry_run: r.dry_run,
            status: r.status,
            phase: r.phase,
            started_at: time(r.started_at),
            finished_at: r.finished_at.map(time),
            error: r.error,
            params: serde_json::from_str(&r.params).unwrap_or_default(),
            result: serde_json::from_str(&r.result).unwrap_or_default(),
        }
    }
}

/// A GC request.
#[derive(Deserialize, ToSchema, Default)]
pub(crate) struct GcIn {
    /// Report what would be removed, remove nothing.
    #[serde(default)]
    dry_run: bool,
    /// Also delete untagged manifests nothing references (default: the configuration's).
    #[serde(default)]
    delete_untagged: Option<bool>,
    /// Override the grace period (seconds).
    #[serde(default)]
    grace_seconds: Option<u64>,
    /// Override how long deleted manifests stay restorable (seconds).
    #[serde(default)]
    deleted_manifest_retention_seconds: Option<u64>,
    /// Skip the scan of blob storage for orphaned objects.
    #[serde(default)]
    skip_orphans: bool,
    /// Answer when the run has finished (200 with the run) instead of at once (202).
    #[serde(default)]
    wait: bool,
}

/// Start a garbage-collection run (online: pushes and pulls go on). Resumes an interrupted
/// run instead, if there is one. 409 while another run is in progress.
#[utoipa::path(post, path = "/api/v1/system/gc", tag = "lifecycle", request_body = GcIn,
    security(("basic" = []), ("bearer" = [])),
    responses((status = 200, description = "Finished (wait = true)", body = RunOut),
        (status = 202, description = "Started", body = RunOut),
        (status = 403, description = "Not an administrator", body = ErrorBody),
        (status = 409, description = "A run is in progress", body = ErrorBody)))]
pub(crate) async fn start_gc(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Option<Json<GcIn>>,
) -> ApiResult {
    let id = who(&state, &headers).await?;
    require_admin(&id)?;
    let body = body.map(|b| b.0).unwrap_or_default();
    let req = GcRequest {
        dry_run: body.dry_run,
        delete_untagged: body.delete_untagged,
        grace_seconds: body.grace_seconds,
        deleted_manifest_retention_seconds: body.deleted_manifest_retention_seconds,
        skip_orphans: body.skip_orphans,
    };
    if body.wait {
        let run = state
            .registry
            .run_gc(req, "manual")
            .await
            .map_err(registry_error)?;
        return Ok((StatusCode::OK, Json(RunOut::from(run))).into_response());
    }
    let run_id = state
        .registry
        .start_gc(req, "manual")
        .await
        .map_err(registry_error)?;
    let run = state
        .registry
        .gc_run_record(run_id)
        .await
        .map_err(registry_error)?
        .ok_or_else(|| api_error(StatusCode::NOT_FOUND, "NOT_FOUND", "run not found"))?;
    Ok((StatusCode::ACCEPTED, Json(RunOut::from(run))).into_response())
}

/// Garbage-collection runs, newest first.
#[utoipa::path(get, path = "/api/v1/system/gc", tag = "lifecycle",
    params(("n" = Option<u32>, Query)),
    security(("basic" = []), ("bearer" = [])),
    responses((status = 200, description = "OK", body = Vec<RunOut>),
        (status = 403, description = "Not an administrator", body = ErrorBody)))]
pub(crate) async fn list_gc_runs(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let id = who(&state, &headers).await?;
    require_admin(&id)?;
    let n = q
        .get("n")
        .and_then(|n| n.parse().ok())
        .unwrap_or(50u32)
        .min(1000);
    let runs = state.registry.gc_runs(n).await.map_err(registry_error)?;
    Ok(Json(runs.into_iter().map(RunOut::from).collect::<Vec<_>>()).into_response())
}

/// One garbage-collection run.
#[utoipa::path(get, path = "/api/v1/system/gc/{id}", tag = "lifecycle",
    params(("id" = i64, Path)),
    security(("basic" = []), ("bearer" = [])),
    responses((status = 200, description = "OK", body = RunOut),
        (status = 403, description = "Not an administrator", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody)))]
pub(crate) async fn get_gc_run(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(run_id): Path<i64>,
) -> ApiResult {
    let id = who(&state, &headers).await?;
    require_admin(&id)?;
    let run = state
        .registry
        .gc_run_record(run_id)
        .await
        .map_err(registry_error)?
        .ok_or_else(|| api_error(StatusCode::NOT_FOUND, "NOT_FOUND", "run not found"))?;
    Ok(Json(RunOut::from(run)).into_response())
}

/// The registry's storage: what is stored, what repositories see, per project.
#[derive(Serialize, ToSchema)]
pub(crate) struct SystemStorageOut {
    #[schema(value_type = Object)]
    totals: StorageTotals,
    /// Logical minus stored bytes: what deduplication saves.
    dedup_savings_bytes: u64,
    #[schema(value_type = Vec<Object>)]
    projects: Vec<ProjectStorage>,
}

/// Storage report of the whole registry (the registry's `docker system df`).
#[utoipa::path(get, path = "/api/v1/system/storage", tag = "lifecycle",
    security(("basic" = []), ("bearer" = [])),
    responses((status = 200, description = "OK", body = SystemStorageOut),
        (status = 403, description = "Not an administrator", body = ErrorBody)))]
pub(crate) async fn system_storage(State(state): State<AppState>, headers: HeaderMap) -> ApiResult {
    let id = who(&state, &headers).await?;
    require_admin(&id)?;
    let meta = state.registry.metadata();
    let totals = meta.storage_totals().await.map_err(meta_error)?;
    let projects = meta.storage_by_project().await.map_err(meta_error)?;
    Ok(Json(SystemStorageOut {
        dedup_savings_bytes: totals.logical_bytes.saturating_sub(totals.stored_bytes),
        totals,
        projects,
    })
    .into_response())
}

fn meta_error(e: kura_metadata::MetadataError) -> Response {
    registry_error(kura_registry::RegistryError::from(e))
}

/// A project's storage and quota.
#[derive(Serialize, ToSchema)]
pub(crate) struct ProjectStorageOut {
    project: String,
    /// Bytes of the distinct blobs the project's repositories hold (what the quota counts).
    usage_bytes: u64,
    blobs: u64,
    /// Storage limit in bytes; null = unlimited.
    limit_bytes: Option<u64>,
    /// Sum over repositories (a layer shared by two repositories counts twice).
    logical_bytes: u64,
    #[schema(value_type = Vec<Object>)]
    repositories: Vec<RepositoryStorage>,
}

/// Storage of one project, per repository.
#[utoipa::path(get, path = "/api/v1/projects/{name}/storage", tag = "lifecycle",
    params(("name" = String, Path)),
    security(("basic" = []), ("bearer" = [])),
    responses((status = 200, description = "OK", body = ProjectStorageOut),
        (status = 404, description = "Not found", body = ErrorBody)))]
pub(crate) async fn project_storage(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult {
    let id = who(&state, &headers).await?;
    project_action(&state, &id, &name, Action::ReadProject).await?;
    let meta = state.registry.metadata();
    let usage = meta.project_usage(&name).await.map_err(meta_error)?;
    let repositories = meta
        .storage_by_repository(&name)
        .await
        .map_err(meta_error)?;
    Ok(Json(ProjectStorageOut {
        project: name,
        usage_bytes: usage.bytes,
        blobs: usage.blobs,
        limit_bytes: usage.limit,
        logical_bytes: repositories.iter().map(|r| r.bytes).sum(),
        repositories,
    })
    .into_response())
}

/// A project's quota and usage.
#[derive(Serialize, ToSchema)]
pub(crate) struct QuotaOut {
    project: String,
    /// null = unlimited.
    storage_limit: Option<u64>,
    usage_bytes: u64,
    blobs: u64,
    /// With `verify=true`: the usage recomputed from scratch (must equal usage_bytes).
    recomputed_bytes: Option<u64>,
    recomputed_blobs: Option<u64>,
}

/// A project's storage quota and usage. `verify=true` also recomputes the usage from
/// scratch, to prove the maintained counter exact.
#[utoipa::path(get, path = "/api/v1/projects/{name}/quota", tag = "lifecycle",
    params(("name" = String, Path), ("verify" = Option<bool>, Query)),
    security(("basic" = []), ("bearer" = [])),
    responses((status = 200, description = "OK", body = QuotaOut),
        (status = 404, description = "Not found", body = ErrorBody)))]
pub(crate) async fn get_quota(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let id = who(&state, &headers).await?;
    project_action(&state, &id, &name, Action::ReadProject).await?;
    let meta = state.registry.metadata();
    let usage = meta.project_usage(&name).await.map_err(meta_error)?;
    let recomputed = if q.get("verify").is_some_and(|v| v == "true") {
        Some(
            meta.recompute_project_usage(&name)
                .await
                .map_err(meta_error)?,
        )
    } else {
        None
    };
    Ok(Json(QuotaOut {
        project: name,
        storage_limit: usage.limit,
        usage_bytes: usage.bytes,
        blobs: usage.blobs,
        recomputed_bytes: recomputed.map(|r| r.0),
        recomputed_blobs: recomputed.map(|r| r.1),
    })
    .into_response())
}

#[derive(Deserialize, ToSchema)]
pub(crate) struct QuotaIn {
    /// Bytes; null removes the limit.
    storage_limit: Option<u64>,
}

/// Set a project's storage quota (system administrators). Pushes that would exceed it are
/// refused with 403 DENIED; lowering it below the usage only stops growth.
#[utoipa::path(put, path = "/api/v1/projects/{name}/quota", tag = "lifecycle",
    params(("name" = String, Path)), request_body = QuotaIn,
    security(("basic" = []), ("bearer" = [])),
    responses((status = 200, description = "OK", body = QuotaOut),
        (status = 403, description = "Not an administrator", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody)))]
pub(crate) async fn put_quota(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Json(body): Json<QuotaIn>,
) -> ApiResult {
    let id = who(&state, &headers).await?;
    require_admin(&id)?;
    if !state
        .registry
        .set_storage_limit(&name, body.storage_limit)
        .await
        .map_err(registry_error)?
    {
        return Err(api_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            &format!("project {name} not found"),
        ));
    }
    let meta = state.registry.metadata();
    let usage = meta.project_usage(&name).await.map_err(meta_error)?;
    Ok(Json(QuotaOut {
        project: name,
        storage_limit: usage.limit,
        usage_bytes: usage.bytes,
        blobs: usage.blobs,
        recomputed_bytes: None,
        recomputed_blobs: None,
    })
    .into_response())
}

/// An immutability rule.
#[derive(Serialize, Deserialize, ToSchema)]
pub(crate) struct ImmutabilityRuleOut {
    id: i64,
    /// Glob over repository paths inside the project.
    repositories: String,
    /// Glob over tags.
    tags: String,
}

impl From<ImmutabilityRule> for ImmutabilityRuleOut {
    fn from(r: ImmutabilityRule) -> Self {
        ImmutabilityRuleOut {
            id: r.id,
            repositories: r.repositories,
            tags: r.tags,
        }
    }
}

#[derive(Deserialize, ToSchema)]
pub(crate) struct ImmutabilityRuleIn {
    #[serde(default = "star")]
    repositories: String,
    tags: String,
}

fn star() -> String {
    "*".into()
}

fn check_glob(g: &str) -> Result<(), Response> {
    if g.is_empty() || g.len() > 255 || g.chars().any(char::is_control) {
        Err(invalid(&format!("invalid glob {g:?}")))
    } else {
        Ok(())
    }
}

/// Immutability rules of a project. A matching tag cannot be moved or deleted; signatures
/// and other referrers can still be attached.
#[utoipa::path(get, path = "/api/v1/projects/{name}/immutability-rules", tag = "lifecycle",
    params(("name" = String, Path)),
    security(("basic" = []), ("bearer" = [])),
    responses((status = 200, description = "OK", body = Vec<ImmutabilityRuleOut>),
        (status = 404, description = "Not found", body = ErrorBody)))]
pub(crate) async fn list_immutability_rules(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult {
    let id = who(&state, &headers).await?;
    project_action(&state, &id, &name, Action::ReadProject).await?;
    let rules = state
        .registry
        .metadata()
        .immutability_rules(&name)
        .await
        .map_err(meta_error)?;
    Ok(Json(
        rules
            .into_iter()
            .map(ImmutabilityRuleOut::from)
            .collect::<Vec<_>>(),
    )
    .into_response())
}

/// Add an immutability rule.
#[utoipa::path(post, path = "/api/v1/projects/{name}/immutability-rules", tag = "lifecycle",
    params(("name" = String, Path)), request_body = ImmutabilityRuleIn,
    security(("basic" = []), ("bearer" = [])),
    responses((status = 201, description = "Created", body = ImmutabilityRuleOut),
        (status = 400, description = "Invalid", body = ErrorBody),
        (status = 403, description = "Not allowed", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody)))]
pub(crate) async fn add_immutability_rule(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Json(body): Json<ImmutabilityRuleIn>,
) -> ApiResult {
    let id = who(&state, &headers).await?;
    project_action(&state, &id, &name, Action::ManageProject).await?;
    check_glob(&body.repositories)?;
    check_glob(&body.tags)?;
    let rule_id = state
        .registry
        .metadata()
        .add_immutability_rule(&name, &body.repositories, &body.tags)
        .await
        .map_err(meta_error)?;
    Ok((
        StatusCode::CREATED,
        Json(ImmutabilityRuleOut {
            id: rule_id,
            repositories: body.repositories,
            tags: body.tags,
        }),
    )
        .into_response())
}

/// Remove an immutability rule.
#[utoipa::path(delete, path = "/api/v1/projects/{name}/immutability-rules/{id}", tag = "lifecycle",
    params(("name" = String, Path), ("id" = i64, Path)),
    security(("basic" = []), ("bearer" = [])),
    responses((status = 204, description = "Deleted"),
        (status = 403, description = "Not allowed", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody)))]
pub(crate) async fn delete_immutability_rule(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((name, rule_id)): Path<(String, i64)>,
) -> ApiResult {
    let id = who(&state, &headers).await?;
    project_action(&state, &id, &name, Action::ManageProject).await?;
    if !state
        .registry
        .metadata()
        .delete_immutability_rule(&name, rule_id)
        .await
        .map_err(meta_error)?
    {
        return Err(api_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "no such rule",
        ));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A retention policy with its schedule.
#[derive(Serialize, Deserialize, ToSchema)]
pub(crate) struct RetentionPolicyIo {
    rules: Vec<kura_registry::retention::RetentionRule>,
    /// Cron expression (UTC; 5 fields, or 6 with seconds first); null = run on demand only.
    #[serde(default)]
    schedule: Option<String>,
}

/// A project's retention policy.
#[utoipa::path(get, path = "/api/v1/projects/{name}/retention", tag = "lifecycle",
    params(("name" = String, Path)),
    security(("basic" = []), ("bearer" = [])),
    responses((status = 200, description = "OK", body = RetentionPolicyIo),
        (status = 404, description = "No policy", body = ErrorBody)))]
pub(crate) async fn get_retention(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult {
    let id = who(&state, &headers).await?;
    project_action(&state, &id, &name, Action::ReadProject).await?;
    let record = state
        .registry
        .metadata()
        .retention_policy(&name)
        .await
        .map_err(meta_error)?
        .ok_or_else(|| api_error(StatusCode::NOT_FOUND, "NOT_FOUND", "no retention policy"))?;
    let policy: RetentionPolicy = serde_json::from_str(&record.policy)
        .map_err(|e| api_error(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", &e.to_string()))?;
    Ok(Json(RetentionPolicyIo {
        rules: policy.rules,
        schedule: record.schedule,
    })
    .into_response())
}

/// Set a project's retention policy (replaces the previous one).
#[utoipa::path(put, path = "/api/v1/projects/{name}/retention", tag = "lifecycle",
    params(("name" = String, Path)), request_body = RetentionPolicyIo,
    security(("basic" = []), ("bearer" = [])),
    responses((status = 200, description = "OK", body = RetentionPolicyIo),
        (status = 400, description = "Invalid", body = ErrorBody),
        (status = 403, description = "Not allowed", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody)))]
pub(crate) async fn put_retention(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Json(body): Json<RetentionPolicyIo>,
) -> ApiResult {
    let id = who(&state, &headers).await?;
    project_action(&state, &id, &name, Action::ManageProject).await?;
    let policy = RetentionPolicy { rules: body.rules };
    policy.validate().map_err(|e| invalid(&e))?;
    if let Some(s) = &body.schedule {
        kura_registry::schedule::parse_schedule(s).map_err(|e| invalid(&e))?;
    }
    let json = serde_json::to_string(&policy)
        .map_err(|e| api_error(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", &e.to_string()))?;
    state
        .registry
        .metadata()
        .put_retention_policy(&name, &json, body.schedule.as_deref())
        .await
        .map_err(meta_error)?;
    Ok(Json(RetentionPolicyIo {
        rules: policy.rules,
        schedule: body.schedule,
    })
    .into_response())
}

/// Remove a project's retention policy.
#[utoipa::path(delete, path = "/api/v1/projects/{name}/retention", tag = "lifecycle",
    params(("name" = String, Path)),
    security(("basic" = []), ("bearer" = [])),
    responses((status = 204, description = "Deleted"),
        (status = 403, description = "Not allowed", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody)))]
pub(crate) async fn delete_retention(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult {
    let id = who(&state, &headers).await?;
    project_action(&state, &id, &name, Action::ManageProject).await?;
    if !state
        .registry
        .metadata()
        .delete_retention_policy(&name)
        .await
        .map_err(meta_error)?
    {
        return Err(api_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "no retention policy",
        ));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize, ToSchema, Default)]
pub(crate) struct RetentionRunIn {
    /// Report what would be deleted, delete nothing.
    #[serde(default)]
    dry_run: bool,
    /// Run this ad-hoc prune instead of the stored policy (what `kura prune` sends).
    #[serde(default)]
    prune: Option<kura_registry::retention::PruneSpec>,
}

/// Run the retention policy now (or dry-run it), or an ad-hoc prune given in the body. Answers
/// with the finished run, whose result lists every deletion (each is also announced as an event for the audit log).
#[utoipa::path(post, path = "/api/v1/projects/{name}/retention/runs", tag = "lifecycle",
    params(("name" = String, Path)), request_body = RetentionRunIn,
    security(("basic" = []), ("bearer" = [])),
    responses((status = 200, description = "Finished", body = RunOut),
        (status = 403, description = "Not allowed", body = ErrorBody),
        (status = 404, description = "No policy", body = ErrorBody),
        (status = 409, description = "A run is in progress", body = ErrorBody)))]
pub(crate) async fn run_retention(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Option<Json<RetentionRunIn>>,
) -> ApiResult {
    let id = who(&state, &headers).await?;
    project_action(&state, &id, &name, Action::ManageProject).await?;
    let body = body.map(|b| b.0).unwrap_or_default();
    let run = match body.prune {
        Some(spec) => {
            spec.validate().map_err(|e| invalid(&e))?;
            state
                .registry
                .run_prune(&name, spec, body.dry_run, "manual")
                .await
        }
        None => {
            state
                .registry
                .run_retention(&name, body.dry_run, "manual")
                .await
        }
    }
    .map_err(registry_error)?;
    Ok(Json(RunOut::from(run)).into_response())
}

/// Retention runs of a project, newest first.
#[utoipa::path(get, path = "/api/v1/projects/{name}/retention/runs", tag = "lifecycle",
    params(("name" = String, Path), ("n" = Option<u32>, Query)),
    security(("basic" = []), ("bearer" = [])),
    responses((status = 200, description = "OK", body = Vec<RunOut>),
        (status = 404, description = "Not found", body = ErrorBody)))]
pub(crate) async fn list_retention_runs(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let id = who(&state, &headers).await?;
    project_action(&state, &id, &name, Action::ReadProject).await?;
    let n = q
        .get("n")
        .and_then(|n| n.parse().ok())
        .unwrap_or(50u32)
        .min(1000);
    let runs = state
        .registry
        .retention_runs(&name, n)
        .await
        .map_err(registry_error)?;
    Ok(Json(runs.into_iter().map(RunOut::from).collect::<Vec<_>>()).into_response())
}

/// One recorded move of a tag.
#[derive(Serialize, ToSchema)]
pub(crate) struct TagHistoryOut {
    /// The digest the tag was moved to; null when the tag was removed.
    digest: Option<String>,
    previous_digest: Option<String>,
    changed_at: String,
}

/// Every move of a tag, newest first.
#[utoipa::path(get, path = "/api/v1/projects/{name}/repositories/{repository}/tags/{tag}/history", tag = "lifecycle",
    params(("name" = String, Path), ("repository" = String, Path), ("tag" = String, Path), ("n" = Option<u32>, Query)),
    security(("basic" = []), ("bearer" = [])),
    responses((status = 200, description = "OK", body = Vec<TagHistoryOut>),
        (status = 403, description = "Not allowed", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody)))]
pub(crate) async fn tag_history(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((name, repository, tag)): Path<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let id = who(&state, &headers).await?;
    let repo = repository_access(&state, &id, &name, &repository, Action::List).await?;
    let n = q
        .get("n")
        .and_then(|n| n.parse().ok())
        .unwrap_or(100u32)
        .min(1000);
    let entries = state
        .registry
        .tag_history(&repo, &tag, n)
        .await
        .map_err(registry_error)?;
    Ok(Json(
        entries
            .into_iter()
            .map(|e| TagHistoryOut {
                digest: e.digest,
                previous_digest: e.previous_digest,
                changed_at: time(e.changed_at),
            })
            .collect::<Vec<_>>(),
    )
    .into_response())
}

#[derive(Deserialize, ToSchema)]
pub(crate) struct RestoreIn {
    /// The digest to point the tag at (from the tag's history).
    digest: String,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct RestoreOut {
    tag: String,
    digest: String,
    previous_digest: Option<String>,
}

/// Point a tag back at an earlier digest. Works while the manifest exists, including a
/// deleted manifest still within the deleted-manifest retention period (it is restored).
#[utoipa::path(post, path = "/api/v1/projects/{name}/repositories/{repository}/tags/{tag}/restore", tag = "lifecycle",
    params(("name" = String, Path), ("repository" = String, Path), ("tag" = String, Path)),
    request_body = RestoreIn,
    security(("basic" = []), ("bearer" = [])),
    responses((status = 200, description = "Restored", body = RestoreOut),
        (status = 400, description = "Invalid", body = ErrorBody),
        (status = 403, description = "Not allowed or immutable", body = ErrorBody),
        (status = 404, description = "Manifest gone", body = ErrorBody)))]
pub(crate) async fn restore_tag(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((name, repository, tag)): Path<(String, String, String)>,
    Json(body): Json<RestoreIn>,
) -> ApiResult {
    let id = who(&state, &headers).await?;
    let repo = repository_access(&state, &id, &name, &repository, Action::Push).await?;
    if !kura_oci::is_valid_tag(&tag) {
        return Err(invalid("invalid tag"));
    }
    let digest: kura_oci::Digest = body
        .digest
        .parse()
        .map_err(|e: kura_oci::DigestError| invalid(&e.to_string()))?;
    let previous = state
        .registry
        .restore_tag(&repo, &tag, &digest)
        .await
        .map_err(registry_error)?;
    Ok(Json(RestoreOut {
        tag,
        digest: digest.to_string(),
        previous_digest: previous,
    })
    .into_response())
}
