//! `kura ls`, `inspect`, `search` and `df`: what is in a registry, read through the
//! distribution API (any registry) or Kura's management API (`df`, and `search` where offered).

use std::sync::Arc;

use clap::Args;
use futures_util::StreamExt;
use kura_client::reference::is_referrers_tag;
use kura_client::registry::{FetchedManifest, Registry};
use kura_client::transfer::{Platform, index_entries, parse_manifest};
use kura_client::{ClientError, ImageRef, Result};
use kura_oci::{Descriptor, ManifestKind};
use reqwest::Method;
use serde::{Deserialize, Serialize};

use super::{Ctx, human_age, human_size, print_table};

#[derive(Debug, Args)]
pub struct LsArgs {
    /// A registry (`host[:port]`: lists its repositories) or a repository
    /// (`host[:port]/repository`: lists its tags like `docker images`). Default: the
    /// repositories of --registry / KURA_REGISTRY.
    pub target: Option<String>,
    /// Show full digests.
    #[arg(long)]
    pub no_trunc: bool,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The image: `[host[:port]/]repository[:tag|@digest]`.
    pub image: String,
    /// Print the manifest exactly as the registry stores it.
    #[arg(long)]
    pub raw: bool,
}

#[derive(Debug, Args)]
pub struct SearchArgs {
    /// Text to look for in repository names.
    pub term: String,
    /// At most this many results.
    #[arg(long, default_value_t = 25)]
    pub limit: usize,
}

#[derive(Debug, Args)]
pub struct DfArgs {
    /// The registry (`host[:port]`, whole registry, administrators) or a project
    /// (`host[:port]/project`). Needs a Kura registry.
    pub target: Option<String>,
}

/// `host[:port]` alone (no repository)?
fn is_registry_name(s: &str) -> bool {
    !s.contains('/') && (s.contains('.') || s.contains(':') || s == "localhost")
}

/// One row of `kura ls REPO`.
#[derive(Debug, Serialize)]
pub struct TagRow {
    pub repository: String,
    pub tag: String,
    pub digest: String,
    pub media_type: String,
    /// Config plus layers as stored (compressed), over all platforms for an index.
    pub size: u64,
    pub created: Option<String>,
    pub platforms: Vec<String>,
}

#[derive(Deserialize, Default)]
struct ConfigSummary {
    created: Option<String>,
    os: Option<String>,
    architecture: Option<String>,
    variant: Option<String>,
}

const IMAGE_CONFIGS: [&str; 2] = [
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];

async fn config_of(registry: &Registry, repo: &str, desc: &Descriptor) -> ConfigSummary {
    if !IMAGE_CONFIGS.contains(&desc.media_type.as_str()) {
        return ConfigSummary::default();
    }
    match registry.get_blob_bytes(repo, desc).await {
        Ok(b) => serde_json::from_slice(&b).unwrap_or_default(),
        Err(_) => ConfigSummary::default(),
    }
}

fn platform_of(c: &ConfigSummary) -> Option<String> {
    Some(match (&c.os, &c.architecture, &c.variant) {
        (Some(os), Some(a), Some(v)) => format!("{os}/{a}/{v}"),
        (Some(os), Some(a), None) => format!("{os}/{a}"),
        _ => return None,
    })
}

/// Summarises the manifest a tag points at.
pub(super) async fn summarise(registry: &Registry, repo: &str, tag: &str) -> Result<TagRow> {
    let m = registry.get_manifest(repo, tag).await?;
    let parsed = parse_manifest(&m)?;
    let mut row = TagRow {
        repository: format!("{}/{repo}", registry.name()),
        tag: tag.to_string(),
        digest: m.digest.to_string(),
        media_type: m.media_type.clone(),
        size: 0,
        created: None,
        platforms: Vec::new(),
    };
    match parsed.kind {
        ManifestKind::Image => {
            row.size = parsed.blobs.iter().map(|b| b.size).sum();
            if let Some(config) = parsed.blobs.first() {
                let c = config_of(registry, repo, config).await;
                row.platforms.extend(platform_of(&c));
                row.created = c.created;
            }
        }
        ManifestKind::Index => {
            for entry in index_entries(&m.bytes)? {
                if let Some(p) = &entry.platform {
                    // Attestation manifests carry unknown/unknown: not a platform.
                    if p.os != "unknown" {
                        row.platforms.push(p.to_string());
                    }
                }
                if let Ok(child) = registry
                    .get_manifest(repo, &entry.descriptor.digest.to_string())
                    .await
                    && let Ok(cp) = parse_manifest(&child)
                {
                    row.size += cp.blobs.iter().map(|b| b.size).sum::<u64>();
                    if row.created.is_none()
                        && let Some(config) = cp.blobs.first()
                    {
                        row.created = config_of(registry, repo, config).await.created;
                    }
                }
            }
        }
    }
    Ok(row)
}

pub async fn ls(ctx: Arc<Ctx>, args: LsArgs) -> Result<()> {
    let target = match (&args.target, &ctx.args.registry) {
        (Some(t), _) => t.clone(),
        (None, Some(r)) => r.clone(),
        (None, None) => {
            return Err(ClientError::Usage(
                "name a registry or repository (or set --registry / KURA_REGISTRY)".into(),
            ));
        }
    };
    if is_registry_name(&target) {
        let registry = ctx.registry(&target)?;
        let repos = registry.catalog().await?;
        if ctx.json() {
            ctx.print_json(&repos);
        } else {
            for r in repos {
                println!("{r}");
            }
        }
        return Ok(());
    }
    let image = ctx.image_ref(&target)?;
    let registry = ctx.registry(&image.registry)?;
    let mut tags = registry.tags(&image.repository).await?;
    if let Some(t) = &image.tag {
        tags.retain(|x| x == t);
    }
    // Referrers-fallback tags (sha256-…) are accessories, not images.
    tags.retain(|t| !is_referrers_tag(t));
    if ctx.args.quiet && !ctx.json() {
        for t in &tags {
            println!("{t}");
        }
        return Ok(());
    }
    let repo = image.repository.clone();
    let rows: Vec<Result<TagRow>> = futures_util::stream::iter(tags)
        .map(|t| {
            let registry = registry.clone();
            let repo = repo.clone();
            async move { summarise(&registry, &repo, &t).await }
        })
        .buffered(8)
        .collect()
        .await;
    let mut out = Vec::new();
    for r in rows {
        match r {
            Ok(row) => out.push(row),
            // A tag deleted while listing is simply gone.
            Err(ClientError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    if ctx.json() {
        ctx.print_json(&out);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = out
        .iter()
        .map(|r| {
            vec![
                r.repository.clone(),
                r.tag.clone(),
                if args.no_trunc {
                    r.digest.clone()
                } else {
                    r.digest.chars().take(19).collect()
                },
                human_size(r.size),
                r.created.as_deref().map(human_age).unwrap_or("-".into()),
                if r.platforms.is_empty() {
                    "-".into()
                } else {
                    r.platforms.join(",")
                },
            ]
        })
        .collect();
    print_table(
        &["REPOSITORY", "TAG", "DIGEST", "SIZE", "CREATED", "PLATFORM"],
        &rows,
    );
    Ok(())
}

#[derive(Serialize)]
struct Inspection {
    name: String,
    digest: String,
    media_type: String,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    artifact_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    created: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    platform: Option<String>,
    manifest: serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    config: Option<serde_json::Value>,
    layers: Vec<Descriptor>,
    platforms: Vec<PlatformEntry>,
    referrers: Vec<Descriptor>,
}

#[derive(Serialize)]
struct PlatformEntry {
    platform: Option<Platform>,
    digest: String,
    size: u64,
}

pub async fn inspect(ctx: Arc<Ctx>, args: InspectArgs) -> Result<()> {
    let image: ImageRef = ctx.image_ref(&args.image)?;
    let registry = ctx.registry(&image.registry)?;
    let repo = &image.repository;
    let m: FetchedManifest = registry.get_manifest(repo, &image.reference()).await?;
    if args.raw {
        use std::io::Write;
        std::io::stdout()
            .write_all(&m.bytes)
            .map_err(ClientError::io("writing to stdout"))?;
        return Ok(());
    }
    let parsed = parse_manifest(&m)?;
    let manifest: serde_json::Value = serde_json::from_slice(&m.bytes)
        .map_err(|e| ClientError::Format(format!("manifest: {e}")))?;
    let mut out = Inspection {
        name: image.to_string(),
        digest: m.digest.to_string(),
        media_type: m.media_type.clone(),
        size: m.bytes.len() as u64,
        // For images the "artifact type" is only the config's media type: not worth showing.
        artifact_type: parsed
            .artifact_type
            .clone()
            .filter(|a| !IMAGE_CONFIGS.contains(&a.as_str())),
        created: None,
        platform: None,
        manifest,
        config: None,
        layers: Vec::new(),
        platforms: Vec::new(),
        referrers: registry.referrers(repo, &m.digest).await?,
    };
    match parsed.kind {
        ManifestKind::Image => {
            if let Some(config) = parsed.blobs.first() {
                if IMAGE_CONFIGS.contains(&config.media_type.as_str()) {
                    let bytes = registry.get_blob_bytes(repo, config).await?;
                    let c: ConfigSummary = serde_json::from_slice(&bytes).unwrap_or_default();
                    out.created = c.created.clone();
                    out.platform = platform_of(&c);
                    out.config = serde_json::from_slice(&bytes).ok();
                }
                out.layers = parsed.blobs[1..].to_vec();
            }
        }
        ManifestKind::Index => {
            out.platforms = index_entries(&m.bytes)?
                .into_iter()
                .map(|e| PlatformEntry {
                    platform: e.platform,
                    digest: e.descriptor.digest.to_string(),
                    size: e.descriptor.size,
                })
                .collect();
        }
    }
    if ctx.json() {
        ctx.print_json(&out);
        return Ok(());
    }
    println!("Name:         {}", out.name);
    println!("Digest:       {}", out.digest);
    println!("MediaType:    {}", out.media_type);
    if let Some(a) = &out.artifact_type {
        println!("ArtifactType: {a}");
    }
    if let Some(c) = &out.created {
        println!("Created:      {c} ({})", human_age(c));
    }
    if let Some(p) = &out.platform {
        println!("Platform:     {p}");
    }
    if let Some(config) = parsed
        .blobs
        .first()
        .filter(|_| parsed.kind == ManifestKind::Image)
    {
        println!(
            "Config:       {} ({}, {})",
            config.digest,
            config.media_type,
            human_size(config.size)
        );
    }
    if let Some(cfg) = out.config.as_ref().and_then(|c| c.get("config")) {
        for key in ["Entrypoint", "Cmd", "WorkingDir", "User"] {
            if let Some(v) = cfg.get(key).filter(|v| !v.is_null()) {
                println!("{:<14}{v}", format!("{key}:"));
            }
        }
    }
    if parsed.kind == ManifestKind::Image {
        let total: u64 = out.layers.iter().map(|l| l.size).sum();
        println!("Layers:       {} ({})", out.layers.len(), human_size(total));
        for l in &out.layers {
            println!(
                "  {}  {:>8}  {}",
                l.digest,
                human_size(l.size),
                l.media_type
            );
        }
    } else {
        println!("Platforms:    {}", out.platforms.len());
        for p in &out.platforms {
            println!(
                "  {:<16} {}",
                p.platform
                    .as_ref()
                    .map(|p| p.to_string())
                    .unwrap_or("-".into()),
                p.digest
            );
        }
    }
    println!("Referrers:    {}", out.referrers.len());
    for r in &out.referrers {
        println!(
            "  {}  {}",
            r.digest,
            r.artifact_type.as_deref().unwrap_or(&r.media_type)
        );
    }
    Ok(())
}

pub async fn search(ctx: Arc<Ctx>, args: SearchArgs) -> Result<()> {
    let registry_name =
        ctx.args.registry.clone().ok_or_else(|| {
            ClientError::Usage("search needs --registry (or KURA_REGISTRY)".into())
        })?;
    let registry = ctx.registry(&registry_name)?;
    let term = args.term.to_lowercase();
    let mut url = reqwest::Url::parse("http://registry/v1/search").expect("static URL");
    url.query_pairs_mut()
        .append_pair("q", &args.term)
        .append_pair("n", &args.limit.clamp(1, 100).to_string());
    let query = format!("{}?{}", url.path(), url.query().unwrap_or_default());
    let names: Vec<String> = match registry.api(Method::GET, &query, None).await {
        Ok(v) => v
            .get("results")
            .and_then(|r| r.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|r| r.get("name").and_then(|n| n.as_str()).map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
        // No search API: filter the catalog.
        Err(ClientError::NotFound(_) | ClientError::Registry(_)) => registry
            .catalog()
            .await?
            .into_iter()
            .filter(|n| n.to_lowercase().contains(&term))
            .collect(),
        Err(e) => return Err(e),
    };
    let names: Vec<String> = names.into_iter().take(args.limit).collect();
    if ctx.json() {
        ctx.print_json(&names);
    } else if ctx.args.quiet {
        for n in &names {
            println!("{n}");
        }
    } else {
        let rows: Vec<Vec<String>> = names
            .iter()
            .map(|n| vec![n.clone(), format!("{registry_name}/{n}")])
            .collect();
        print_table(&["NAME", "REFERENCE"], &rows);
    }
    Ok(())
}

pub async fn df(ctx: Arc<Ctx>, args: DfArgs) -> Result<()> {
    let target = args
        .target
        .clone()
        .or_else(|| ctx.args.registry.clone())
        .ok_or_else(|| ClientError::Usage("name a registry or project".into()))?;
    let (host, project) = match target.split_once('/') {
        Some((h, p)) => (h.to_string(), Some(p.trim_end_matches('/').to_string())),
        None => (target.clone(), None),
    };
    let registry = ctx.registry(&host)?;
    if !registry.is_kura().await {
        return Err(ClientError::Unsupported(format!(
            "{host} is not a Kura registry: storage use needs Kura's management API"
        )));
    }
    // Kura in open auth mode serves no management API.
    if let Err(ClientError::NotFound(_)) = registry
        .api(Method::GET, "/api/v1/projects?n=1", None)
        .await
    {
        return Err(ClientError::Unsupported(format!(
            "{host} runs Kura without its management API (auth mode open); storage reports \
             need auth mode local or ldap"
        )));
    }
    let u = |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
    match project {
        Some(p) => {
            let v = registry
                .api(Method::GET, &format!("/api/v1/projects/{p}/storage"), None)
                .await?;
            if ctx.json() {
                ctx.print_json(&v);
                return Ok(());
            }
            let empty = Vec::new();
            let repos = v
                .get("repositories")
                .and_then(|r| r.as_array())
                .unwrap_or(&empty);
            let rows: Vec<Vec<String>> = repos
                .iter()
                .map(|r| {
                    vec![
                        r.get("repository")
                            .and_then(|x| x.as_str())
                            .unwrap_or("")
                            .to_string(),
                        u(r, "tags").to_string(),
                        u(r, "manifests").to_string(),
                        u(r, "blobs").to_string(),
                        human_size(u(r, "bytes")),
                    ]
                })
                .collect();
            print_table(&["REPOSITORY", "TAGS", "MANIFESTS", "BLOBS", "SIZE"], &rows);
            let logical = u(&v, "logical_bytes");
            let stored = u(&v, "usage_bytes");
            println!();
            println!(
                "Project {p}: {} stored in {} blobs; repositories see {}; deduplication saves {}{}",
                human_size(stored),
                u(&v, "blobs"),
                human_size(logical),
                human_size(logical.saturating_sub(stored)),
                match v.get("limit_bytes").and_then(|l| l.as_u64()) {
                    Some(l) => format!(
                        "; quota {} ({:.0}% used)",
                        human_size(l),
                        stored as f64 * 100.0 / l.max(1) as f64
                    ),
                    None => String::new(),
                }
            );
        }
        None => {
            let v = registry
                .api(Method::GET, "/api/v1/system/storage", None)
                .await?;
            if ctx.json() {
                ctx.print_json(&v);
                return Ok(());
            }
            let empty = Vec::new();
            let projects = v
                .get("projects")
                .and_then(|r| r.as_array())
                .unwrap_or(&empty);
            let rows: Vec<Vec<String>> = projects
                .iter()
                .map(|p| {
                    let logical = u(p, "logical_bytes");
                    let stored = u(p, "stored_bytes");
                    vec![
                        p.get("project")
                            .and_then(|x| x.as_str())
                            .unwrap_or("")
                            .to_string(),
                        u(p, "blobs").to_string(),
                        human_size(stored),
                        human_size(logical),
                        human_size(logical.saturating_sub(stored)),
                        p.get("limit")
                            .and_then(|l| l.as_u64())
                            .map(human_size)
                            .unwrap_or("-".into()),
                    ]
                })
                .collect();
            print_table(
                &[
                    "PROJECT",
                    "BLOBS",
                    "STORED",
                    "LOGICAL",
                    "DEDUP SAVED",
                    "QUOTA",
                ],
                &rows,
            );
            let t = v.get("totals").cloned().unwrap_or_default();
            println!();
            println!(
                "Total: {} stored in {} blobs across {} repositories ({} manifests); \
                 repositories see {}; deduplication saves {}",
                human_size(u(&t, "stored_bytes")),
                u(&t, "blobs"),
                u(&t, "repositories"),
                u(&t, "manifests"),
                human_size(u(&t, "logical_bytes")),
                human_size(u(&v, "dedup_savings_bytes")),
            );
        }
    }
    Ok(())
}
