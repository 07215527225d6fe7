//! `kura push`, `pull`, `cp` and `tag`: the commands that move images (or only move a tag).

use std::sync::Arc;

use clap::Args;
use kura_client::transfer::{
    self, CopyOptions, CopyReport, NoProgress, Platform, Progress, copy_image,
};
use kura_client::{ClientError, Location, Result};

use super::Ctx;
use super::progress::Bars;

/// Options of the commands that copy images.
#[derive(Debug, Args)]
pub struct CopyFlags {
    /// Copy every platform of a multi-platform image (the whole index).
    #[arg(long)]
    pub all: bool,
    /// The platform to copy from a multi-platform image (os/arch[/variant]); default: this
    /// machine's.
    #[arg(long, value_name = "OS/ARCH")]
    pub platform: Option<String>,
    /// Blobs transferred at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub jobs: u16,
}

#[derive(Debug, Args)]
pub struct PushArgs {
    /// The local image: `oci:DIR[:TAG]` (an OCI image layout) or `docker-archive:FILE[:REF]`
    /// (a `docker save` tar).
    pub source: String,
    /// Where to push it: `[host[:port]/]repository[:tag]`.
    pub destination: String,
    #[command(flatten)]
    pub copy: CopyFlags,
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// The image: `[host[:port]/]repository[:tag|@digest]`.
    pub image: String,
    /// Where to put it: `oci:DIR[:TAG]` or `docker-archive:FILE[:NAME:TAG]`.
    pub destination: String,
    #[command(flatten)]
    pub copy: CopyFlags,
}

#[derive(Debug, Args)]
pub struct CpArgs {
    /// Source: a registry reference, `oci:DIR[:TAG]` or `docker-archive:FILE`.
    pub source: String,
    /// Destination: a registry reference, `oci:DIR[:TAG]` or `docker-archive:FILE`.
    pub destination: String,
    #[command(flatten)]
    pub copy: CopyFlags,
}

#[derive(Debug, Args)]
pub struct TagArgs {
    /// The image to tag: `[host[:port]/]repository[:tag|@digest]`.
    pub source: String,
    /// The new tag: a bare tag (same repository) or a full reference in the same registry.
    pub target: String,
}

fn options(
    ctx: &Ctx,
    flags: &CopyFlags,
    verb: &'static str,
    all_default: bool,
) -> Result<CopyOptions> {
    let progress: Arc<dyn Progress> = if ctx.interactive() {
        Arc::new(Bars::new(verb))
    } else {
        Arc::new(NoProgress)
    };
    let platform = match &flags.platform {
        Some(p) => Platform::parse(p)?,
        None => Platform::host(),
    };
    Ok(CopyOptions {
        all: flags.all || (all_default && flags.platform.is_none()),
        platform,
        jobs: flags.jobs as usize,
        progress,
    })
}

async fn copy(
    ctx: &Ctx,
    source: &Location,
    dest: &Location,
    options: &CopyOptions,
) -> Result<CopyReport> {
    let src = transfer::open_source(source, |r| ctx.registry(&r.registry)).await?;
    // The name a docker-archive records (`docker load` tags the image with it).
    let repo_tag = match source {
        Location::Registry(r) => r.tag_or_default().map(|t| format!("{}:{t}", r.name())),
        _ => None,
    };
    let dst = transfer::open_destination(dest, |r| ctx.registry(&r.registry), repo_tag).await?;
    copy_image(&src, &dst, options).await
}

fn done(ctx: &Ctx, verb: &str, dest: &Location, report: &CopyReport) {
    if ctx.json() {
        let mut v = serde_json::to_value(report).expect("report");
        v["destination"] = serde_json::Value::String(dest.to_string());
        ctx.print_json(&v);
    } else {
        ctx.say(format!(
            "{verb} {dest}@{} ({} manifest{}, {} blobs: {} transferred, {} already there, {} \
             mounted; {} transferred)",
            report.digest,
            report.manifests,
            if report.manifests == 1 { "" } else { "s" },
            report.blobs,
            report.blobs_copied,
            report.blobs_skipped,
            report.blobs_mounted,
            super::human_size(report.bytes_copied),
        ));
    }
}

pub async fn push(ctx: Arc<Ctx>, args: PushArgs) -> Result<()> {
    let source = ctx.location(&args.source)?;
    if matches!(source, Location::Registry(_)) {
        return Err(ClientError::Usage(format!(
            "push reads a local image: give oci:DIR[:TAG] or docker-archive:FILE, not {:?} (use \
             kura cp to copy between registries)",
            args.source
        )));
    }
    let dest = Location::Registry(ctx.image_ref(&args.destination)?);
    // A local image is pushed whole unless a platform is named.
    let options = options(&ctx, &args.copy, "Pushed", true)?;
    let report = copy(&ctx, &source, &dest, &options).await?;
    done(&ctx, "Pushed", &dest, &report);
    Ok(())
}

pub async fn pull(ctx: Arc<Ctx>, args: PullArgs) -> Result<()> {
    let image = ctx.image_ref(&args.image)?;
    let mut dest = ctx.location(&args.destination)?;
    if matches!(dest, Location::Registry(_)) {
        return Err(ClientError::Usage(format!(
            "pull writes a local image: give oci:DIR[:TAG] or docker-archive:FILE, not {:?}",
            args.destination
        )));
    }
    // The layout's tag defaults to the image's, as skopeo does.
    if let Location::OciLayout { tag, .. } = &mut dest
        && tag.is_none()
    {
        *tag = image.tag_or_default();
    }
    let options = options(&ctx, &args.copy, "Downloaded", false)?;
    let report = copy(&ctx, &Location::Registry(image), &dest, &options).await?;
    done(&ctx, "Pulled into", &dest, &report);
    Ok(())
}

pub async fn cp(ctx: Arc<Ctx>, args: CpArgs) -> Result<()> {
    let source = ctx.location(&args.source)?;
    let dest = ctx.location(&args.destination)?;
    let options = options(&ctx, &args.copy, "Copied", false)?;
    let report = copy(&ctx, &source, &dest, &options).await?;
    done(&ctx, "Copied to", &dest, &report);
    Ok(())
}

pub async fn tag(ctx: Arc<Ctx>, args: TagArgs) -> Result<()> {
    let source = ctx.image_ref(&args.source)?;
    let target = if kura_oci::is_valid_tag(&args.target) {
        source.with_tag(&args.target)
    } else {
        let t = ctx.image_ref(&args.target)?;
        if t.registry != source.registry {
            return Err(ClientError::Usage(format!(
                "{} is in another registry; tag works inside one registry (use kura cp)",
                args.target
            )));
        }
        if t.digest.is_some() || t.tag.is_none() {
            return Err(ClientError::Usage(format!(
                "{}: the target needs a tag",
                args.target
            )));
        }
        t
    };
    let registry = ctx.registry(&source.registry)?;
    let report = if target.repository == source.repository {
        // Same repository: the manifest's bytes go back under the new name, nothing else moves.
        let m = registry
            .get_manifest(&source.repository, &source.reference())
            .await?;
        let tag = target.tag.clone().expect("target tag");
        registry
            .put_manifest(&target.repository, &tag, &m.media_type, &m.bytes)
            .await?;
        CopyReport {
            digest: m.digest.to_string(),
            media_type: m.media_type,
            manifests: 1,
            ..CopyReport::default()
        }
    } else {
        // Another repository: every blob is mounted, none is transferred.
        let options = CopyOptions {
            all: true,
            progress: Arc::new(NoProgress),
            ..CopyOptions::default()
        };
        copy(
            &ctx,
            &Location::Registry(source.clone()),
            &Location::Registry(target.clone()),
            &options,
        )
        .await?
    };
    if ctx.json() {
        ctx.print_json(&serde_json::json!({
            "source": source.to_string(), "target": target.to_string(), "digest": report.digest,
        }));
    } else {
        ctx.say(format!("Tagged {target} ({})", report.digest));
    }
    Ok(())
}
