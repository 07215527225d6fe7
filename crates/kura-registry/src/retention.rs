//! Retention policies: per project, rules that say which artifacts to keep.
//!
//! Semantics (Harbor's): a policy covers the repositories matched by at least one rule's
//! repository glob. In a covered repository every *tagged* artifact that no rule retains is
//! deleted; untagged artifacts are judged only by rules with `untagged: true` (otherwise they
//! are left to garbage collection). An artifact is matched by a rule when one of its tags
//! matches the rule's tag glob (or, with `untagged`, when it has none); the rule then keeps
//! some of the matched ones (`keep`). The union of what the rules keep is retained.
//! Artifacts with an immutable tag are always retained. Accessories (referrers, cosign-style
//! `sha256-…` tags) and index children are not judged on their own: they follow the artifact
//! they belong to, and are deleted with it.

use std::collections::HashSet;

use kura_metadata::{RetentionArtifact, RunRecord, now_ms};
use kura_oci::{Digest, ErrorCode, RepositoryName, glob_match};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::policy::{is_accessory_tag, path_in_project, tag_protected};
use crate::{DeleteCause, Registry, RegistryError, RegistryEvent, Result};

pub const KIND: &str = "retention";
const DAY_MS: i64 = 24 * 3600 * 1000;
/// Deleted artifacts listed in a run's result; counts are always complete.
const LISTED: usize = 1000;

/// A project's retention policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RetentionPolicy {
    pub rules: Vec<RetentionRule>,
}

/// One retention rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RetentionRule {
    /// Glob over the repository path inside the project (`*` = all).
    #[serde(default = "star")]
    pub repositories: String,
    /// Glob over tags (`*` = all tagged artifacts).
    #[serde(default = "star")]
    pub tags: String,
    /// Whether untagged artifacts are matched by this rule too.
    #[serde(default)]
    pub untagged: bool,
    pub keep: Keep,
}

fn star() -> String {
    "*".into()
}

/// What a rule keeps of the artifacts it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Keep {
    /// The N most recently pushed.
    LatestPushed(u32),
    /// The N most recently pulled (never-pulled ones come last).
    LatestPulled(u32),
    /// Those pushed within the last N days.
    PushedWithinDays(u32),
    /// Those pulled within the last N days.
    PulledWithinDays(u32),
    /// All of them.
    Always,
}

impl RetentionPolicy {
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.rules.is_empty() {
            return Err("a retention policy needs at least one rule".into());
        }
        if self.rules.len() > 50 {
            return Err("at most 50 rules".into());
        }
        for r in &self.rules {
            for g in [&r.repositories, &r.tags] {
                if g.is_empty() || g.len() > 255 || g.chars().any(char::is_control) {
                    return Err(format!("invalid glob {g:?}"));
                }
            }
        }
        Ok(())
    }
}

/// What a run decided for one artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RetentionDecision {
    pub repository: String,
    pub digest: String,
    pub tags: Vec<String>,
    /// Accessories deleted with it (or that would be).
    #[serde(default)]
    pub accessories: Vec<String>,
    /// Set when the delete was attempted and failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A retention run's result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RetentionResult {
    pub repositories: u64,
    /// Top-level artifacts judged.
    pub evaluated: u64,
    pub retained: u64,
    /// Artifacts deleted (or, for dry runs, that would be), accessories not counted.
    pub deleted: u64,
    pub failed: u64,
    /// The first 1000 decisions to delete.
    pub deletions: Vec<RetentionDecision>,
}

/// An ad-hoc prune (`kura prune`): where a policy says what to keep, a prune says what to
/// delete. It runs through the same machinery (run record, accessories, immutability, events).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PruneSpec {
    /// Glob over the repository path inside the project.
    #[serde(default = "star")]
    pub repositories: String,
    /// Candidates are the tagged artifacts all of whose tags match this glob (an artifact that
    /// also carries a non-matching tag is kept).
    #[serde(default = "star")]
    pub tags: String,
    /// Candidates are the untagged artifacts instead (`dangling=true`).
    #[serde(default)]
    pub untagged: bool,
    /// Only candidates pushed longer ago than this.
    #[serde(default)]
    pub older_than_secs: Option<u64>,
    /// Keep the N most recently pushed candidates.
    #[serde(default)]
    pub keep: Option<u32>,
}

impl PruneSpec {
    pub fn validate(&self) -> std::result::Result<(), String> {
        for g in [&self.repositories, &self.tags] {
            if g.is_empty() || g.len() > 255 || g.chars().any(char::is_control) {
                return Err(format!("invalid glob {g:?}"));
            }
        }
        Ok(())
    }
}

/// What a run applies: the project's stored policy or an ad-hoc prune.
#[derive(Debug, Clone)]
enum Selection {
    Policy(RetentionPolicy),
    Prune(PruneSpec),
}

/// Top-level artifacts: not an index child, not a referrer of something present, not tagged
/// only with accessory tags. The rest follow the artifact they belong to.
fn top_level(artifacts: &[RetentionArtifact]) -> Vec<&RetentionArtifact> {
    let present: HashSet<&str> = artifacts.iter().map(|a| a.digest.as_str()).collect();
    artifacts
        .iter()
        .filter(|a| !a.is_child)
        .filter(|a| a.subject.as_deref().is_none_or(|s| !present.contains(s)))
        .filter(|a| a.tags.is_empty() || !real_tags(a).is_empty())
        .collect()
}

fn real_tags(a: &RetentionArtifact) -> Vec<String> {
    a.tags
        .iter()
        .filter(|t| !is_accessory_tag(t))
        .cloned()
        .collect()
}

/// Judges one repository's artifacts for a prune; returns the digests to delete.
pub fn select_prune(
    spec: &PruneSpec,
    artifacts: &[RetentionArtifact],
    immutable: &dyn Fn(&str) -> bool,
    now: i64,
) -> (Vec<String>, u64) {
    let top = top_level(artifacts);
    let mut candidates: Vec<&RetentionArtifact> = top
        .iter()
        .copied()
        .filter(|a| {
            let tags = real_tags(a);
            if spec.untagged {
                tags.is_empty()
            } else {
                !tags.is_empty()
                    && tags.iter().all(|t| glob_match(&spec.tags, t))
                    && !tags.iter().any(|t| immutable(t))
            }
        })
        .collect();
    candidates.sort_by(|a, b| b.pushed_at.cmp(&a.pushed_at).then(a.digest.cmp(&b.digest)));
    let keep = spec.keep.unwrap_or(0) as usize;
    let cutoff = spec
        .older_than_secs
        .map(|s| now - (s.min(i64::MAX as u64 / 1000) as i64) * 1000);
    let delete = candidates
        .into_iter()
        .skip(keep)
        .filter(|a| cutoff.is_none_or(|c| a.pushed_at < c))
        .map(|a| a.digest.clone())
        .collect();
    (delete, top.len() as u64)
}

/// Judges one repository's artifacts; returns the digests to delete (top-level only).
pub fn select_deletions(
    rules: &[&RetentionRule],
    artifacts: &[RetentionArtifact],
    immutable: &dyn Fn(&str) -> bool,
    now: i64,
) -> (Vec<String>, u64) {
    let top = top_level(artifacts);
    let mut retained: HashSet<&str> = HashSet::new();
    for a in &top {
        if real_tags(a).iter().any(|t| immutable(t)) {
            retained.insert(&a.digest);
        }
    }
    for rule in rules {
        let mut matched: Vec<&&RetentionArtifact> = top
            .iter()
            .filter(|a| {
                let tags = real_tags(a);
                if tags.is_empty() {
                    rule.untagged
                } else {
                    tags.iter().any(|t| glob_match(&rule.tags, t))
                }
            })
            .collect();
        match rule.keep {
            Keep::Always => retained.extend(matched.iter().map(|a| a.digest.as_str())),
            Keep::LatestPushed(n) => {
                matched.sort_by(|a, b| b.pushed_at.cmp(&a.pushed_at).then(a.digest.cmp(&b.digest)));
                retained.extend(matched.iter().take(n as usize).map(|a| a.digest.as_str()));
            }
            Keep::LatestPulled(n) => {
                matched.sort_by(|a, b| {
                    b.last_pulled_at
                        .unwrap_or(i64::MIN)
                        .cmp(&a.last_pulled_at.unwrap_or(i64::MIN))
                        .then(b.pushed_at.cmp(&a.pushed_at))
                });
                retained.extend(matched.iter().take(n as usize).map(|a| a.digest.as_str()));
            }
            Keep::PushedWithinDays(d) => {
                let since = now - i64::from(d) * DAY_MS;
                retained.extend(
                    matched
                        .iter()
                        .filter(|a| a.pushed_at >= since)
                        .map(|a| a.digest.as_str()),
                );
            }
            Keep::PulledWithinDays(d) => {
                let since = now - i64::from(d) * DAY_MS;
                retained.extend(
                    matched
                        .iter()
                        .filter(|a| a.last_pulled_at.is_some_and(|p| p >= since))
                        .map(|a| a.digest.as_str()),
                );
            }
        }
    }
    let untagged_judged = rules.iter().any(|r| r.untagged);
    let delete: Vec<String> = top
        .iter()
        .filter(|a| !retained.contains(a.digest.as_str()))
        .filter(|a| !real_tags(a).is_empty() || untagged_judged)
        .map(|a| a.digest.clone())
        .collect();
    (delete, top.len() as u64)
}

impl Registry {
    /// Applies `project`'s policy (or, with `dry_run`, reports what it would delete) and
    /// records the run.
    pub async fn run_retention(
        &self,
        project: &str,
        dry_run: bool,
        trigger: &str,
    ) -> Result<RunRecord> {
        let record = self
            .inner
            .meta
            .retention_policy(project)
            .await?
            .ok_or_else(|| {
                RegistryError::new(
                    ErrorCode::NameUnknown,
                    format!("project {project:?} has no retention policy"),
                )
                .with_status(404)
            })?;
        let policy: RetentionPolicy =
            serde_json::from_str(&record.policy).map_err(RegistryError::internal)?;
        self.run_selection(project, Selection::Policy(policy), dry_run, trigger)
            .await
    }

    /// Runs an ad-hoc prune of `project` (or, with `dry_run`, reports what it would delete)
    /// and records it as a retention run.
    pub async fn run_prune(
        &self,
        project: &str,
        spec: PruneSpec,
        dry_run: bool,
        trigger: &str,
    ) -> Result<RunRecord> {
        spec.validate()
            .map_err(|e| RegistryError::new(ErrorCode::Unsupported, e).with_status(400))?;
        self.run_selection(project, Selection::Prune(spec), dry_run, trigger)
            .await
    }

    async fn run_selection(
        &self,
        project: &str,
        selection: Selection,
        dry_run: bool,
        trigger: &str,
    ) -> Result<RunRecord> {
        if let Some(run) = self.inner.meta.running_run(KIND, Some(project)).await?
            && now_ms() - run.heartbeat_at < self.inner.config.gc.stale_after.as_millis() as i64
        {
            return Err(RegistryError::new(
                ErrorCode::Denied,
                format!(
                    "retention run {} of project {project:?} is in progress",
                    run.id
                ),
            )
            .with_status(409));
        }
        let params = match &selection {
            Selection::Policy(policy) => {
                serde_json::json!({ "policy": policy, "dry_run": dry_run })
            }
            Selection::Prune(spec) => serde_json::json!({ "prune": spec, "dry_run": dry_run }),
        }
        .to_string();
        let empty =
            serde_json::to_string(&RetentionResult::default()).map_err(RegistryError::internal)?;
        let run_id = self
            .inner
            .meta
            .create_run(
                KIND,
                Some(project),
                trigger,
                dry_run,
                &params,
                "evaluate",
                &empty,
            )
            .await?;
        let mut result = RetentionResult::default();
        let outcome = self
            .apply_retention(run_id, project, &selection, dry_run, &mut result)
            .await;
        let json = serde_json::to_string(&result).map_err(RegistryError::internal)?;
        match &outcome {
            Ok(()) => {
                self.inner
                    .meta
                    .finish_run(run_id, "succeeded", &json, None)
                    .await?
            }
            Err(e) => {
                self.inner
                    .meta
                    .finish_run(run_id, "failed", &json, Some(&e.to_string()))
                    .await?
            }
        }
        outcome?;
        self.emit(RegistryEvent::RetentionApplied {
            run_id,
            project: project.to_string(),
            dry_run,
            deleted: result.deleted,
        });
        self.inner
            .meta
            .run(run_id)
            .await?
            .ok_or_else(|| RegistryError::internal("run record vanished"))
    }

    async fn apply_retention(
        &self,
        run_id: i64,
        project: &str,
        selection: &Selection,
        dry_run: bool,
        result: &mut RetentionResult,
    ) -> Result<()> {
        let now = now_ms();
        for (rid, name) in self.inner.meta.project_repository_names(project).await? {
            let path = path_in_project(&name);
            let rules: Vec<&RetentionRule> = match selection {
                Selection::Policy(policy) => policy
                    .rules
                    .iter()
                    .filter(|r| glob_match(&r.repositories, path))
                    .collect(),
                Selection::Prune(_) => Vec::new(),
            };
            let covered = match selection {
                Selection::Policy(_) => !rules.is_empty(),
                // A one-part name is a repository whose path inside its project is empty.
                Selection::Prune(spec) => {
                    glob_match(&spec.repositories, path)
                        || (path.is_empty() && glob_match(&spec.repositories, &name))
                }
            };
            if !covered {
                continue;
            }
            let Ok(repo) = RepositoryName::parse(&name) else {
                continue;
            };
            let artifacts = self.inner.meta.retention_artifacts(rid).await?;
            if artifacts.is_empty() {
                continue;
            }
            result.repositories += 1;
            let immutable_rules = self.immutability_rules_for(&repo).await?;
            let immutable = |t: &str| tag_protected(&immutable_rules, t);
            let (delete, evaluated) = match selection {
                Selection::Policy(_) => select_deletions(&rules, &artifacts, &immutable, now),
                Selection::Prune(spec) => select_prune(spec, &artifacts, &immutable, now),
            };
            result.evaluated += evaluated;
            result.retained += evaluated - delete.len() as u64;
            for digest in delete {
                let tags = artifacts
                    .iter()
                    .find(|a| a.digest == digest)
                    .map(|a| a.tags.clone())
                    .unwrap_or_default();
                let mut decision = RetentionDecision {
                    repository: name.clone(),
                    digest: digest.clone(),
                    tags,
                    accessories: Vec::new(),
                    error: None,
                };
                if dry_run {
                    decision.accessories = self
                        .plan_artifact_delete(rid, &digest)
                        .await?
                        .into_iter()
                        .filter(|d| *d != digest)
                        .collect();
                    result.deleted += 1;
                } else {
                    let parsed: Digest = digest.parse().map_err(RegistryError::internal)?;
                    match self
                        .delete_artifact(&repo, &parsed, DeleteCause::Retention)
                        .await
                    {
                        Ok(gone) => {
                            decision.accessories =
                                gone.into_iter().filter(|d| *d != digest).collect();
                            result.deleted += 1;
                        }
                        Err(e) => {
                            decision.error = Some(e.message.clone());
                            result.failed += 1;
                        }
                    }
                }
                if result.deletions.len() < LISTED {
                    result.deletions.push(decision);
                }
            }
            let progress = kura_metadata::RunProgress {
                run_id,
                phase: "evaluate".into(),
                cursor: name.clone(),
                result: serde_json::to_string(&*result).unwrap_or_default(),
            };
            self.inner.meta.save_run_progress(&progress).await?;
        }
        Ok(())
    }

    pub async fn retention_runs(&self, project: &str, limit: u32) -> Result<Vec<RunRecord>> {
        Ok(self
            .inner
            .meta
            .list_runs(KIND, Some(project), limit)
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn art(d: &str, pushed: i64, pulled: Option<i64>, tags: &[&str]) -> RetentionArtifact {
        RetentionArtifact {
            digest: d.into(),
            pushed_at: pushed,
            last_pulled_at: pulled,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            subject: None,
            is_child: false,
        }
    }

    fn rule(tags: &str, untagged: bool, keep: Keep) -> RetentionRule {
        RetentionRule {
            repositories: "*".into(),
            tags: tags.into(),
            untagged,
            keep,
        }
    }

    fn prune(
        tags: &str,
        untagged: bool,
        older_than_secs: Option<u64>,
        keep: Option<u32>,
    ) -> PruneSpec {
        PruneSpec {
            repositories: "*".into(),
            tags: tags.into(),
            untagged,
            older_than_secs,
            keep,
        }
    }

    #[test]
    fn prune_deletes_what_matches() {
        let a = vec![
            art("a", 1_000, None, &["ci-1"]),
            art("b", 2_000, None, &["ci-2"]),
            art("c", 3_000, None, &["ci-3", "release"]),
            art("d", 4_000, None, &["ci-4"]),
            art("u", 5_000, None, &[]),
            art("p", 500, None, &["ci-protected"]),
        ];
        let immutable = |t: &str| t == "ci-protected";
        // Every tag must match: c also carries "release"; the immutable tag protects p.
        let (del, n) = select_prune(&prune("ci-*", false, None, None), &a, &immutable, 10_000);
        assert_eq!(n, 6);
        assert_eq!(del, vec!["d", "b", "a"]);
        // Keep the newest 2 candidates (d, b).
        let (del, _) = select_prune(&prune("ci-*", false, None, Some(2)), &a, &immutable, 10_000);
        assert_eq!(del, vec!["a"]);
        // Older than 7 s at t=10 s: pushed before 3 s.
        let (del, _) = select_prune(&prune("ci-*", false, Some(7), None), &a, &immutable, 10_000);
        assert_eq!(del, vec!["b", "a"]);
        let (del, _) = select_prune(&prune("*", true, None, None), &a, &immutable, 10_000);
        assert_eq!(del, vec!["u"]);
    }

    #[test]
    fn latest_pushed_keeps_n_and_deletes_unmatched_tagged() {
        let a = vec![
            art("a", 1, None, &["v1"]),
            art("b", 2, None, &["v2"]),
            art("c", 3, None, &["v3"]),
            art("d", 4, None, &["latest"]),
            art("u", 5, None, &[]),
        ];
        let r = rule("v*", false, Keep::LatestPushed(2));
        let (del, n) = select_deletions(&[&r], &a, &|_| false, 10);
        assert_eq!(n, 5);
        // v1 is beyond the newest two; "latest" matches no rule; untagged is left to GC.
        assert_eq!(del, vec!["a".to_string(), "d".to_string()]);
    }

    #[test]
    fn untagged_and_day_windows() {
        let day = DAY_MS;
        let now = 100 * day;
        let a = vec![
            art("old", now - 10 * day, None, &[]),
            art("new", now - day, None, &[]),
            art("pulled", now - 50 * day, Some(now - day), &["x"]),
            art("stale", now - 50 * day, Some(now - 40 * day), &["y"]),
        ];
        let r1 = rule("*", true, Keep::PushedWithinDays(7));
        let r2 = rule("*", false, Keep::PulledWithinDays(7));
        let (mut del, _) = select_deletions(&[&r1, &r2], &a, &|_| false, now);
        del.sort();
        assert_eq!(del, vec!["old".to_string(), "stale".to_string()]);
    }

    #[test]
    fn immutable_accessories_and_children_are_kept() {
        let mut sig = art("sig", 1, None, &[]);
        sig.subject = Some("a".into());
        let mut child = art("child", 1, None, &[]);
        child.is_child = true;
        let cosign = art("cs", 1, None, &[&format!("sha256-{}.sig", "a".repeat(64))]);
        let a = vec![
            art("a", 1, None, &["v1"]),
            art("b", 2, None, &["keepme"]),
            sig,
            child,
            cosign,
        ];
        let r = rule("nomatch", true, Keep::Always);
        let (del, n) = select_deletions(&[&r], &a, &|t| t == "keepme", 10);
        assert_eq!(n, 2);
        assert_eq!(del, vec!["a".to_string()]);
    }

    #[test]
    fn latest_pulled_orders_never_pulled_last() {
        let a = vec![
            art("never", 9, None, &["a"]),
            art("old", 1, Some(5), &["b"]),
            art("recent", 2, Some(8), &["c"]),
        ];
        let r = rule("*", false, Keep::LatestPulled(2));
        let (del, _) = select_deletions(&[&r], &a, &|_| false, 10);
        assert_eq!(del, vec!["never".to_string()]);
    }
}
