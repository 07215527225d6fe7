//! `kura rm` and `kura prune`. A prune is a dry run unless `--force`; against Kura it is one
//! server-side retention run (accessories, immutability and the audit trail included), against
//! other registries the generic API: tags, manifests and configs read, manifests deleted by
//! digest.

use std::collections::BTreeMap;
use std::sync::Arc;

use clap::Args;
use futures_util::StreamExt;
use kura_client::reference::is_referrers_tag;
use kura_client::{ClientError, Result};
use kura_oci::glob_match;
use reqwest::Method;
use serde::Serialize;

use super::{Ctx, list_cmd, parse_duration, print_table};

#[derive(Debug, Args)]
pub struct RmArgs {
    /// Images to delete: `repository:tag` deletes the tag, `repository@digest` the manifest
    /// (with every tag pointing at it).
    #[arg(required = true)]
    pub images: Vec<String>,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// The repository to prune (`host[:port]/repository`); the last part may be a glob
    /// (`host/project/*`).
    pub repository: String,
    /// Filters, all of which must hold. `tag=GLOB`: tagged artifacts all of whose tags match;
    /// `dangling=false`: tagged artifacts (any tag); `dangling=true`: untagged manifests;
    /// `until=DURATION`: older than (e.g. 24h, 7d). Without `tag=` or `dangling=false` only
    /// untagged manifests are candidates, as with `docker image prune`.
    #[arg(long = "filter", value_name = "KEY=VALUE")]
    pub filters: Vec<String>,
    /// Keep the N most recent of the matching artifacts.
    #[arg(long, value_name = "N")]
    pub keep: Option<u32>,
    /// Delete for real (without it, only report what would be deleted).
    #[arg(long)]
    pub force: bool,
}

pub async fn rm(ctx: Arc<Ctx>, args: RmArgs) -> Result<()> {
    let mut deleted = Vec::new();
    for s in &args.images {
        let image = ctx.image_ref(s)?;
        if image.tag.is_none() && image.digest.is_none() {
            return Err(ClientError::Usage(format!(
                "{s}: name a tag or a digest to delete"
            )));
        }
        let registry = ctx.registry(&image.registry)?;
        registry
            .delete_manifest(&image.repository, &image.reference())
            .await?;
        if !ctx.json() {
            ctx.say(format!("Deleted {image}"));
        }
        deleted.push(image.to_string());
    }
    if ctx.json() {
        ctx.print_json(&serde_json::json!({ "deleted": deleted }));
    }
    Ok(())
}

#[derive(Debug, Default)]
struct Filters {
    until: Option<std::time::Duration>,
    /// Untagged manifests are the candidates (else tagged ones).
    dangling: bool,
    tag: Option<String>,
}

fn parse_filters(list: &[String]) -> Result<Filters> {
    let mut f = Filters::default();
    let mut dangling = None;
    for item in list {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| ClientError::Usage(format!("filter {item:?}: expected KEY=VALUE")))?;
        match k {
            "until" => f.until = Some(parse_duration(v)?),
            "dangling" => {
                dangling = Some(match v {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => {
                        return Err(ClientError::Usage(format!(
                            "filter {item:?}: dangling is true or false"
                        )));
                    }
                })
            }
            "tag" => f.tag = Some(v.to_string()),
            _ => {
                return Err(ClientError::Usage(format!(
                    "unknown filter {k:?}: use until=, dangling= or tag="
                )));
            }
        }
    }
    // As docker image prune: untagged manifests unless tagged ones are asked for.
    f.dangling = match (dangling, &f.tag) {
        (Some(true), Some(_)) => {
            return Err(ClientError::Usage(
                "dangling=true selects untagged manifests; it cannot be combined with tag=".into(),
            ));
        }
        (Some(d), _) => d,
        (None, Some(_)) => false,
        (None, None) => true,
    };
    Ok(f)
}

/// One artifact a prune deletes (or would).
#[derive(Debug, Serialize)]
struct Pruned {
    repository: String,
    digest: String,
    tags: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

pub async fn prune(ctx: Arc<Ctx>, args: PruneArgs) -> Result<()> {
    let filters = parse_filters(&args.filters)?;
    // A glob is not a valid repository name: parse with a stand-in, then put it back.
    let target = ctx.image_ref(&args.repository.replace('*', "x-glob-x"))?;
    if target.tag.is_some() || target.digest.is_some() {
        return Err(ClientError::Usage(format!(
            "{}: prune takes a repository, not a tag (use --filter tag=GLOB)",
            args.repository
        )));
    }
    let repo_glob = target.repository.replace("x-glob-x", "*");
    let registry = ctx.registry(&target.registry)?;
    let dry_run = !args.force;
    let pruned = if kura_manages(&registry, &repo_glob).await {
        prune_on_kura(&registry, &repo_glob, &filters, args.keep, dry_run).await?
    } else {
        if filters.dangling {
            return Err(ClientError::Unsupported(format!(
                "{}: untagged manifests cannot be listed through the distribution API (only \
                 through Kura's management API, auth mode local or ldap), and they are what \
                 prune removes unless told otherwise; prune tagged images with --filter \
                 tag=GLOB or --filter dangling=false",
                target.registry
            )));
        }
        prune_generic(&registry, &repo_glob, &filters, args.keep, dry_run).await?
    };
    let failed = pruned.iter().filter(|p| p.error.is_some()).count();
    if ctx.json() {
        ctx.print_json(&serde_json::json!({
            "dry_run": dry_run, "count": pruned.len() - failed, "failed": failed,
            "artifacts": pruned,
        }));
    } else {
        if !pruned.is_empty() && !ctx.args.quiet {
            let rows: Vec<Vec<String>> = pruned
                .iter()
                .map(|p| {
                    vec![
                        p.repository.clone(),
                        p.digest.clone(),
                        if p.tags.is_empty() {
                            "<none>".into()
                        } else {
                            p.tags.join(",")
                        },
                        p.error.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            print_table(&["REPOSITORY", "DIGEST", "TAGS", "ERROR"], &rows);
        }
        if dry_run {
            ctx.say(format!(
                "{} artifact{} would be deleted (dry run: pass --force to delete)",
                pruned.len(),
                if pruned.len() == 1 { "" } else { "s" }
            ));
        } else {
            ctx.say(format!(
                "Deleted {} artifact{}{}",
                pruned.len() - failed,
                if pruned.len() - failed == 1 { "" } else { "s" },
                if failed > 0 {
                    format!(", {failed} failed")
                } else {
                    String::new()
                }
            ));
        }
    }
    if failed > 0 {
        return Err(ClientError::Registry(format!(
            "{failed} deletion{} failed",
            if failed == 1 { "" } else { "s" }
        )));
    }
    Ok(())
}

/// Kura with its management API on (`auth.mode = local`): the project answers there.
async fn kura_manages(registry: &kura_client::registry::Registry, repo_glob: &str) -> bool {
    let project = repo_glob.split('/').next().unwrap_or(repo_glob);
    registry.is_kura().await
        && registry
            .api(Method::GET, &format!("/api/v1/projects/{project}"), None)
            .await
            .is_ok()
}

async fn prune_on_kura(
    registry: &kura_client::registry::Registry,
    repo_glob: &str,
    f: &Filters,
    keep: Option<u32>,
    dry_run: bool,
) -> Result<Vec<Pruned>> {
    let (project, path) = match repo_glob.split_once('/') {
        Some((p, rest)) => (p, rest),
        // A one-part name is a repository in the project of the same name.
        None => (repo_glob, repo_glob),
    };
    if project.contains('*') {
        return Err(ClientError::Usage(
            "the project part of the repository cannot be a glob".into(),
        ));
    }
    let body = serde_json::json!({
        "dry_run": dry_run,
        "prune": {
            "repositories": path,
            "tags": f.tag.clone().unwrap_or_else(|| "*".into()),
            "untagged": f.dangling,
            "older_than_secs": f.until.map(|d| d.as_secs()),
            "keep": keep,
        },
    });
    let run = registry
        .api(
            Method::POST,
            &format!("/api/v1/projects/{project}/retention/runs"),
            Some(&body),
        )
        .await?;
    let empty = Vec::new();
    let deletions = run
        .pointer("/result/deletions")
        .and_then(|d| d.as_array())
        .unwrap_or(&empty);
    Ok(deletions
        .iter()
        .map(|d| Pruned {
            repository: d
                .get("repository")
                .and_then(|r| r.as_str())
                .unwrap_or("")
                .to_string(),
            digest: d
                .get("digest")
                .and_then(|r| r.as_str())
                .unwrap_or("")
                .to_string(),
            tags: d
                .get("tags")
                .and_then(|t| t.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|t| t.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
            error: d.get("error").and_then(|e| e.as_str()).map(str::to_string),
        })
        .collect())
}

async fn prune_generic(
    registry: &Arc<kura_client::registry::Registry>,
    repo_glob: &str,
    f: &Filters,
    keep: Option<u32>,
    dry_run: bool,
) -> Result<Vec<Pruned>> {
    let repos = if repo_glob.contains('*') {
        registry
            .catalog()
            .await?
            .into_iter()
            .filter(|r| glob_match(repo_glob, r))
            .collect()
    } else {
        vec![repo_glob.to_string()]
    };
    let tag_glob = f.tag.clone().unwrap_or_else(|| "*".into());
    let cutoff = f.until.map(|d| chrono::Utc::now() - d);
    let mut out = Vec::new();
    for repo in repos {
        let tags: Vec<String> = registry
            .tags(&repo)
            .await?
            .into_iter()
            .filter(|t| !is_referrers_tag(t))
            .collect();
        let rows: Vec<Result<list_cmd::TagRow>> = futures_util::stream::iter(tags)
            .map(|t| {
                let registry = registry.clone();
                let repo = repo.clone();
                async move { list_cmd::summarise(&registry, &repo, &t).await }
            })
            .buffered(8)
            .collect()
            .await;
        // Group tags by the manifest they point at.
        let mut by_digest: BTreeMap<String, (Vec<String>, Option<String>)> = BTreeMap::new();
        for r in rows {
            let row = match r {
                Ok(row) => row,
                Err(ClientError::NotFound(_)) => continue,
                Err(e) => return Err(e),
            };
            let e = by_digest.entry(row.digest).or_default();
            e.0.push(row.tag);
            e.1 = e.1.take().or(row.created);
        }
        let mut candidates: Vec<(String, Vec<String>, Option<String>)> = by_digest
            .into_iter()
            .filter(|(_, (tags, _))| tags.iter().all(|t| glob_match(&tag_glob, t)))
            .map(|(d, (tags, created))| (d, tags, created))
            .collect();
        // Newest first; the registry keeps no push time, so the image's created time stands in.
        candidates.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)));
        for (digest, tags, created) in candidates.into_iter().skip(keep.unwrap_or(0) as usize) {
            if let Some(cut) = cutoff {
                let old = created
                    .as_deref()
                    .and_then(|c| chrono::DateTime::parse_from_rfc3339(c).ok())
                    .is_some_and(|c| c < cut);
                if !old {
                    continue;
                }
            }
            let mut p = Pruned {
                repository: repo.clone(),
                digest: digest.clone(),
                tags,
                error: None,
            };
            if !dry_run && let Err(e) = registry.delete_manifest(&repo, &digest).await {
                if matches!(e, ClientError::Unsupported(_) | ClientError::Auth(_)) {
                    return Err(e);
                }
                p.error = Some(e.to_string());
            }
            out.push(p);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters() {
        let f = parse_filters(&[]).unwrap();
        assert!(f.dangling);
        assert!(parse_filters(&["until=1h".into()]).unwrap().dangling);
        assert!(
            !parse_filters(&["dangling=false".into(), "until=1h".into()])
                .unwrap()
                .dangling
        );
        let f = parse_filters(&["until=24h".into(), "tag=ci-*".into()]).unwrap();
        assert_eq!(f.until.unwrap().as_secs(), 86_400);
        assert_eq!(f.tag.as_deref(), Some("ci-*"));
        assert!(!f.dangling);
        assert!(parse_filters(&["color=red".into()]).is_err());
        assert!(parse_filters(&["dangling=true".into(), "tag=x".into()]).is_err());
        assert!(parse_filters(&["until".into()]).is_err());
    }
}
