//! Project policies applied on the data path: storage quotas, tag immutability, tag history
//! and restore, and deletes in which accessories (referrers) follow their subject.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kura_metadata::{
    DeleteManifestOutcome, ImmutabilityRule, ProjectUsage, QuotaExceeded, RestoreOutcome,
    TagHistoryEntry, UsageChange, project_of,
};
use kura_oci::{ErrorCode, RepositoryName, glob_match};
use serde_json::json;

use crate::{DeleteCause, Registry, RegistryError, RegistryEvent, Result};

/// The repository path inside its project, which rules' repository globs match.
pub fn path_in_project(repository: &str) -> &str {
    let project = project_of(repository);
    repository
        .strip_prefix(project)
        .map(|r| r.trim_start_matches('/'))
        .unwrap_or("")
}

/// Tags clients derive from a digest for signatures, attestations and SBOMs
/// (`sha256-<hex>` with an optional `.sig`/`.att`/... suffix, and the referrers fallback tag).
/// They belong to their subject and are never immutable: an immutable release must still
/// accept new signatures (Harbor#17332).
pub fn is_accessory_tag(tag: &str) -> bool {
    let Some(rest) = tag
        .strip_prefix("sha256-")
        .or_else(|| tag.strip_prefix("sha512-"))
    else {
        return false;
    };
    let hex_len = rest
        .bytes()
        .take_while(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
        .count();
    (hex_len == 64 || hex_len == 128)
        && (rest.len() == hex_len || rest.as_bytes().get(hex_len) == Some(&b'.'))
}

/// Whether an immutability rule protects `tag` (rules already filtered by repository).
pub fn tag_protected(rules: &[ImmutabilityRule], tag: &str) -> bool {
    !is_accessory_tag(tag) && rules.iter().any(|r| glob_match(&r.tags, tag))
}

pub fn immutable_error(repo: &RepositoryName, tag: &str) -> RegistryError {
    RegistryError::new(
        ErrorCode::Denied,
        format!(
            "tag {tag:?} of repository {repo} is immutable: it cannot be overwritten or deleted \
             (an immutability rule of project {:?} matches it)",
            project_of(repo.as_str())
        ),
    )
    .with_detail(json!({ "reason": "tag immutable", "repository": repo.as_str(), "tag": tag }))
}

pub fn quota_error(project: &str, q: &QuotaExceeded) -> RegistryError {
    RegistryError::new(
        ErrorCode::Denied,
        format!(
            "storage quota of project {project:?} exceeded: {} bytes in use + {} bytes requested \
             > limit of {} bytes",
            q.usage, q.requested, q.limit
        ),
    )
    .with_detail(json!({
        "reason": "quota exceeded",
        "project": project,
        "usage": q.usage,
        "requested": q.requested,
        "limit": q.limit,
    }))
}

/// How long a project's storage limit, as read for the advisory pre-check, is reused. The
/// commit's check reads the limit inside its transaction, so a stale entry can only let data
/// be received that the commit then refuses; a change through this replica clears it at once.
const LIMIT_TTL: Duration = Duration::from_secs(1);
/// Entries kept at most; past this the cache starts over rather than grow without bound.
const LIMIT_CACHE_ENTRIES: usize = 4096;

/// Storage limits per project, read at most once a second for the pre-checks on every upload
/// request (each read is a round trip to the database).
#[derive(Default)]
pub(crate) struct LimitCache {
    entries: Mutex<HashMap<String, (Option<u64>, Instant)>>,
}

impl LimitCache {
    fn get(&self, project: &str) -> Option<Option<u64>> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(project)
            .filter(|(_, at)| at.elapsed() < LIMIT_TTL)
            .map(|(limit, _)| *limit)
    }

    fn put(&self, project: &str, limit: Option<u64>, read_at: Instant) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= LIMIT_CACHE_ENTRIES {
            entries.clear();
        }
        entries.insert(project.to_string(), (limit, read_at));
    }

    fn forget(&self, project: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.remove(project);
    }
}

impl Registry {
    /// The project's storage limit for the advisory pre-checks (see [`LimitCache`]).
    async fn cached_storage_limit(&self, project: &str) -> Result<Option<u64>> {
        if let Some(limit) = self.inner.limits.get(project) {
            return Ok(limit);
        }
        // Stamped before the read, so the entry never outlives the value it was read as.
        let read_at = Instant::now();
        let limit = self.inner.meta.storage_limit(project).await?;
        self.inner.limits.put(project, limit, read_at);
        Ok(limit)
    }

    /// Sets (or with `None` removes) a project's storage limit; false when there is no such
    /// project.
    pub async fn set_storage_limit(&self, project: &str, limit: Option<u64>) -> Result<bool> {
        let found = self.inner.meta.set_storage_limit(project, limit).await?;
        self.inner.limits.forget(project);
        Ok(found)
    }

    /// Immutability rules of `repo`'s project whose repository glob matches it.
    pub async fn immutability_rules_for(
        &self,
        repo: &RepositoryName,
    ) -> Result<Vec<ImmutabilityRule>> {
        let path = path_in_project(repo.as_str());
        let rules = self
            .inner
            .meta
            .immutability_rules(project_of(repo.as_str()))
            .await?;
        Ok(rules
            .into_iter()
            .filter(|r| glob_match(&r.repositories, path))
            .collect())
    }

    /// Refuses, before any byte is read, data of known size that cannot fit the project's
    /// quota. The commit re-checks exactly (the blob may turn out to be shared).
    pub async fn check_quota(&self, repo: &RepositoryName, incoming: u64) -> Result<()> {
        self.check_quota_for(repo, incoming, None).await
    }

    /// [`Registry::check_quota`] when the digest is known: a blob the project already holds
    /// adds nothing and is never refused.
    pub async fn check_quota_for(
        &self,
        repo: &RepositoryName,
        incoming: u64,
        digest: Option<&kura_oci::Digest>,
    ) -> Result<()> {
        self.check_upload_quota(repo, None, incoming, digest).await
    }

    /// [`Registry::check_quota_for`] for data arriving into an upload session: what the
    /// session already holds counts too. Projects without a limit cost one indexed read.
    pub async fn check_upload_quota(
        &self,
        repo: &RepositoryName,
        upload_id: Option<&str>,
        incoming: u64,
        digest: Option<&kura_oci::Digest>,
    ) -> Result<()> {
        let project = project_of(repo.as_str());
        let Some(limit) = self.cached_storage_limit(project).await? else {
            return Ok(());
        };
        if let Some(d) = digest
            && self
                .inner
                .meta
                .project_has_blob(project, &d.to_string())
                .await?
        {
            return Ok(());
        }
        let held = match upload_id {
            Some(id) => self
                .inner
                .meta
                .upload(id)
                .await?
                .map(|u| u.size)
                .unwrap_or(0),
            None => 0,
        };
        let requested = held.saturating_add(incoming);
        let usage = self.inner.meta.project_usage(project).await?.bytes;
        if usage.saturating_add(requested) > limit {
            return Err(self.quota_refused(
                repo,
                &QuotaExceeded {
                    usage,
                    requested,
                    limit,
                },
            ));
        }
        Ok(())
    }

    /// The error for a push refused by quota, announced as [`RegistryEvent::QuotaExceeded`].
    pub(crate) fn quota_refused(&self, repo: &RepositoryName, q: &QuotaExceeded) -> RegistryError {
        let project = project_of(repo.as_str());
        self.emit(RegistryEvent::QuotaExceeded {
            project: project.to_string(),
            repository: repo.to_string(),
            usage: q.usage,
            requested: q.requested,
            limit: q.limit,
        });
        quota_error(project, q)
    }

    /// Announces [`RegistryEvent::QuotaWarning`] when a change took the project's usage
    /// across `quota_warning_percent` of its limit (once per crossing, not on every push
    /// above it).
    pub(crate) fn note_usage(&self, repo: &RepositoryName, usage: Option<UsageChange>) {
        let Some(u) = usage else { return };
        let pct = u128::from(self.inner.config.quota_warning_percent);
        if pct == 0 || u.limit == 0 {
            return;
        }
        let threshold = |bytes: u64| u128::from(bytes) * 100 >= u128::from(u.limit) * pct;
        if threshold(u.after) && !threshold(u.before) {
            self.emit(RegistryEvent::QuotaWarning {
                project: project_of(repo.as_str()).to_string(),
                repository: repo.to_string(),
                usage: u.after,
                limit: u.limit,
            });
        }
    }

    pub async fn project_usage(&self, project: &str) -> Result<ProjectUsage> {
        Ok(self.inner.meta.project_usage(project).await?)
    }

    /// Tag moves of `tag`, newest first.
    pub async fn tag_history(
        &self,
        repo: &RepositoryName,
        tag: &str,
        limit: u32,
    ) -> Result<Vec<TagHistoryEntry>> {
        let Some(rid) = self.repository_id(repo).await? else {
            return Err(RegistryError::name_unknown(repo));
        };
        Ok(self.inner.meta.tag_history(rid, tag, limit).await?)
    }

    /// Points `tag` back at `digest`, restoring the manifest if it was deleted and is still
    /// within the deleted-manifest retention period.
    pub async fn restore_tag(
        &self,
        repo: &RepositoryName,
        tag: &str,
        digest: &kura_oci::Digest,
    ) -> Result<Option<String>> {
        let Some(rid) = self.repository_id(repo).await? else {
            return Err(RegistryError::name_unknown(repo));
        };
        let immutable = tag_protected(&self.immutability_rules_for(repo).await?, tag);
        match self
            .inner
            .meta
            .restore_tag(rid, tag, &digest.to_string(), immutable)
            .await?
        {
            RestoreOutcome::Restored { previous } => {
                self.emit(RegistryEvent::TagRestored {
                    repository: repo.to_string(),
                    tag: tag.to_string(),
                    digest: digest.to_string(),
                    previous: previous.clone(),
                });
                Ok(previous)
            }
            RestoreOutcome::ManifestGone => Err(RegistryError::manifest_unknown(digest)
                .with_detail(json!({
                    "reason": "the manifest no longer exists (deleted longer ago than the \
                               retention period of deleted manifests)"
                }))),
            RestoreOutcome::MissingReferences(missing) => Err(RegistryError::new(
                ErrorCode::ManifestBlobUnknown,
                "the manifest references content no longer in the repository",
            )
            .with_detail(json!({ "missing": missing }))),
            RestoreOutcome::Immutable => Err(immutable_error(repo, tag)),
        }
    }

    /// Deletes one manifest (refused when one of its tags is immutable) and announces it.
    pub(crate) async fn delete_manifest_by_digest(
        &self,
        repo: &RepositoryName,
        rid: i64,
        digest: &str,
        cause: DeleteCause,
    ) -> Result<Vec<String>> {
        let rules = self.immutability_rules_for(repo).await?;
        let guard = |t: &str| tag_protected(&rules, t);
        match self.inner.meta.delete_manifest(rid, digest, &guard).await? {
            DeleteManifestOutcome::Deleted(d) => {
                self.emit(RegistryEvent::ManifestDeleted {
                    repository: repo.to_string(),
                    digest: digest.to_string(),
                    tags: d.tags.clone(),
                    cause,
                });
                Ok(d.tags)
            }
            DeleteManifestOutcome::NotFound => Err(RegistryError::manifest_unknown(digest)),
            DeleteManifestOutcome::Immutable(tag) => Err(immutable_error(repo, &tag)),
        }
    }

    /// What deleting `root` removes, in deletion order: its accessories (manifests whose
    /// subject it is, recursively, and cosign-style `sha256-<hex>.*` tags naming it) before
    /// it, then the index children nothing else keeps (no tag, no parent outside the plan),
    /// each with its own accessories first. Dry runs show this list; real deletes execute it.
    pub async fn plan_artifact_delete(&self, rid: i64, root: &str) -> Result<Vec<String>> {
        let mut plan: Vec<String> = Vec::new();
        let mut seen: std::collections::HashSet<String> = Default::default();
        // Work list of (digest, is_child, expanded). A node is expanded once: its accessories
        // are queued before it and its children after it.
        let mut stack: Vec<(String, bool, bool)> = vec![(root.to_string(), false, false)];
        while let Some((digest, is_child, expanded)) = stack.pop() {
            if plan.len() >= 10_000 {
                break;
            }
            if expanded {
                plan.push(digest.clone());
                // Children come after their parent, so their keep-check sees the plan.
                for child in self.children_of(rid, &digest).await?.into_iter().rev() {
                    if !seen.contains(&child) {
                        stack.push((child, true, false));
                    }
                }
                continue;
            }
            if seen.contains(&digest) {
                continue;
            }
            if is_child {
                let (parents, tags) = self.inner.meta.manifest_usage(rid, &digest).await?;
                let tagged = tags.iter().any(|t| !is_accessory_tag(t));
                let kept_elsewhere = parents.iter().any(|p| !seen.contains(p));
                if tagged || kept_elsewhere {
                    continue;
                }
            }
            seen.insert(digest.clone());
            stack.push((digest.clone(), is_child, true));
            for a in self.accessories_of(rid, &digest).await?.into_iter().rev() {
                if !seen.contains(&a) {
                    stack.push((a, false, false));
                }
            }
        }
        Ok(plan)
    }

    /// Manifests that are accessories of `subject`: referrers and digest-named tags.
    async fn accessories_of(&self, rid: i64, subject: &str) -> Result<Vec<String>> {
        let mut out: Vec<String> = Vec::new();
        for r in self.inner.meta.referrers(rid, subject, None).await? {
            out.push(r.digest);
        }
        let hex_tag = subject.replacen(':', "-", 1);
        let mut tags = vec![hex_tag.clone()];
        tags.extend(
            self.inner
                .meta
                .list_tags(rid, Some(&hex_tag), 1000)
                .await?
                .into_iter()
                .take_while(|t| t.starts_with(&hex_tag))
                .filter(|t| is_accessory_tag(t)),
        );
        for tag in tags {
            if let Some(m) = self.inner.meta.manifest_by_tag(rid, &tag, false).await?
                && m.digest != subject
            {
                out.push(m.digest);
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// The manifests an index references (empty for anything else or an unknown digest).
    async fn children_of(&self, rid: i64, digest: &str) -> Result<Vec<String>> {
        let Some(m) = self
            .inner
            .meta
            .manifest_by_digest(rid, digest, true)
            .await?
        else {
            return Ok(Vec::new());
        };
        let payload = m.payload.unwrap_or_default();
        Ok(kura_oci::manifest::parse(&payload, Some(&m.media_type))
            .map(|p| {
                p.children
                    .into_iter()
                    .map(|c| c.digest.to_string())
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Deletes an artifact together with what belongs to it (see
    /// [`Registry::plan_artifact_delete`]): accessories first, so a failure never leaves an
    /// accessory without its subject. Returns the digests deleted.
    pub async fn delete_artifact(
        &self,
        repo: &RepositoryName,
        digest: &kura_oci::Digest,
        cause: DeleteCause,
    ) -> Result<Vec<String>> {
        self.require_delete_enabled()?;
        let Some(rid) = self.repository_id(repo).await? else {
            return Err(RegistryError::manifest_unknown(digest));
        };
        let root = digest.to_string();
        if self
            .inner
            .meta
            .manifest_by_digest(rid, &root, false)
            .await?
            .is_none()
        {
            return Err(RegistryError::manifest_unknown(&root));
        }
        let rules = self.immutability_rules_for(repo).await?;
        let (_, root_tags) = self.inner.meta.manifest_usage(rid, &root).await?;
        if let Some(tag) = root_tags.iter().find(|t| tag_protected(&rules, t)) {
            return Err(immutable_error(repo, tag));
        }
        let plan = self.plan_artifact_delete(rid, &root).await?;
        let mut deleted = Vec::new();
        for d in &plan {
            let c = if *d == root {
                cause
            } else {
                DeleteCause::FollowedSubject
            };
            match self.delete_manifest_by_digest(repo, rid, d, c).await {
                Ok(_) => deleted.push(d.clone()),
                Err(e) if e.code == ErrorCode::ManifestUnknown => {}
                // An index child protected by an immutable tag stays (it is kept, not lost).
                Err(e) if *d != root && e.code == ErrorCode::Denied => {}
                Err(e) => return Err(e),
            }
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accessory_tags() {
        let hex = "a".repeat(64);
        assert!(is_accessory_tag(&format!("sha256-{hex}")));
        assert!(is_accessory_tag(&format!("sha256-{hex}.sig")));
        assert!(is_accessory_tag(&format!("sha256-{hex}.att")));
        assert!(!is_accessory_tag(&format!("sha256-{}", "a".repeat(63))));
        assert!(!is_accessory_tag("v1.0"));
        assert!(!is_accessory_tag(&format!("sha256-{hex}x")));
    }

    #[test]
    fn paths_and_protection() {
        assert_eq!(path_in_project("team/app/web"), "app/web");
        assert_eq!(path_in_project("alpine"), "");
        let rules = vec![ImmutabilityRule {
            id: 1,
            project: "team".into(),
            repositories: "*".into(),
            tags: "v*".into(),
        }];
        assert!(tag_protected(&rules, "v1.0"));
        assert!(!tag_protected(&rules, "latest"));
        assert!(!tag_protected(
            &rules,
            &format!("sha256-{}.sig", "b".repeat(64))
        ));
    }
}
