//! Image references as docker writes them (`[host[:port]/]path[:tag][@digest]`) and the local
//! locations the CLI moves images to and from (`oci:DIR[:TAG]`, `docker-archive:FILE[:REF]`),
//! spelled the way skopeo spells them.

use std::fmt;
use std::path::PathBuf;

use kura_oci::{Digest, is_valid_tag};

use crate::{ClientError, Result};

/// Docker Hub's name in references, and the host its API really lives on.
pub const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// A reference to an image in a registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// `host[:port]` as written (Docker Hub normalised to `docker.io`).
    pub registry: String,
    /// The repository path, e.g. `library/alpine`.
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl ImageRef {
    /// Parses a reference. A first path component with a `.` or `:` in it, or `localhost`, is
    /// a registry host; otherwise the registry is Docker Hub (or `default_registry` when given),
    /// as docker does.
    pub fn parse(s: &str) -> Result<ImageRef> {
        Self::parse_with_default(s, None)
    }

    /// Like [`ImageRef::parse`], with another registry standing in for Docker Hub.
    pub fn parse_with_default(s: &str, default_registry: Option<&str>) -> Result<ImageRef> {
        let bad = |why: &str| ClientError::Usage(format!("invalid image reference {s:?}: {why}"));
        let s = s.strip_prefix("docker://").unwrap_or(s);
        if s.is_empty() {
            return Err(bad("empty"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (
                r,
                Some(
                    d.parse::<Digest>()
                        .map_err(|e| bad(&format!("bad digest: {e}")))?,
                ),
            ),
            None => (s, None),
        };
        // A tag is after the last ':' that comes after the last '/' (a port is before a '/').
        let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let tag = &rest[last_slash + i + 1..];
                if !is_valid_tag(tag) {
                    return Err(bad(&format!("invalid tag {tag:?}")));
                }
                (&rest[..last_slash + i], Some(tag.to_string()))
            }
            None => (rest, None),
        };
        let (registry, repository) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (normalise_host(first), path.to_string())
            }
            _ => match default_registry {
                Some(r) => (normalise_host(r), name.to_string()),
                None => (DOCKER_HUB.to_string(), name.to_string()),
            },
        };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        kura_oci::RepositoryName::parse(&repository)
            .map_err(|e| bad(&format!("invalid repository name: {e}")))?;
        Ok(ImageRef {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The host the API is reached at (Docker Hub's differs from its name).
    pub fn api_host(&self) -> &str {
        api_host(&self.registry)
    }

    /// What goes after `/manifests/`: the digest if there is one, else the tag, else `latest`.
    pub fn reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_string(),
        }
    }

    /// The tag, `latest` when the reference has neither a tag nor a digest.
    pub fn tag_or_default(&self) -> Option<String> {
        match (&self.tag, &self.digest) {
            (Some(t), _) => Some(t.clone()),
            (None, None) => Some("latest".into()),
            (None, Some(_)) => None,
        }
    }

    /// The same repository with another tag (and no digest).
    pub fn with_tag(&self, tag: &str) -> ImageRef {
        ImageRef {
            tag: Some(tag.to_string()),
            digest: None,
            ..self.clone()
        }
    }

    /// The same repository pinned to a digest (tag kept for display).
    pub fn with_digest(&self, digest: Digest) -> ImageRef {
        ImageRef {
            digest: Some(digest),
            ..self.clone()
        }
    }

    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// Whether a tag is the referrers API's fallback tag (`sha256-<64 hex>`, where clients without
/// the referrers API keep a manifest's signatures and SBOMs): an accessory, not an image.
pub fn is_referrers_tag(tag: &str) -> bool {
    tag.strip_prefix("sha256-")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Lower-cases nothing (hosts are case-insensitive, but docker keeps them as written) and maps
/// Docker Hub's aliases to `docker.io`.
pub fn normalise_host(host: &str) -> String {
    match host {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            DOCKER_HUB.to_string()
        }
        h => h.trim_end_matches('/').to_string(),
    }
}

/// The API host for a registry name.
pub fn api_host(registry: &str) -> &str {
    if registry == DOCKER_HUB {
        DOCKER_HUB_API
    } else {
        registry
    }
}

/// Where an image is read from or written to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Registry(ImageRef),
    /// An OCI image layout directory; the tag is the `org.opencontainers.image.ref.name`.
    OciLayout {
        path: PathBuf,
        tag: Option<String>,
    },
    /// A `docker save` tar; the reference picks one image of several (`name:tag` or `@N`).
    DockerArchive {
        path: PathBuf,
        reference: Option<String>,
    },
}

impl Location {
    /// `oci:DIR[:TAG]`, `docker-archive:FILE[:REF]`, `docker://REF` or a plain reference.
    pub fn parse(s: &str, default_registry: Option<&str>) -> Result<Location> {
        let split = |rest: &str| -> (PathBuf, Option<String>) {
            match rest.split_once(':') {
                Some((p, r)) if !r.is_empty() => (PathBuf::from(p), Some(r.to_string())),
                Some((p, _)) => (PathBuf::from(p), None),
                None => (PathBuf::from(rest), None),
            }
        };
        if let Some(rest) = s.strip_prefix("oci:") {
            let (path, tag) = split(rest);
            if path.as_os_str().is_empty() {
                return Err(ClientError::Usage(format!("{s:?}: oci: needs a directory")));
            }
            if let Some(t) = &tag
                && !is_valid_tag(t)
            {
                return Err(ClientError::Usage(format!("{s:?}: invalid tag {t:?}")));
            }
            return Ok(Location::OciLayout { path, tag });
        }
        if let Some(rest) = s.strip_prefix("docker-archive:") {
            let (path, reference) = split(rest);
            if path.as_os_str().is_empty() {
                return Err(ClientError::Usage(format!(
                    "{s:?}: docker-archive: needs a file"
                )));
            }
            return Ok(Location::DockerArchive { path, reference });
        }
        Ok(Location::Registry(ImageRef::parse_with_default(
            s,
            default_registry,
        )?))
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Registry(r) => write!(f, "{r}"),
            Location::OciLayout { path, tag } => {
                write!(f, "oci:{}", path.display())?;
                if let Some(t) = tag {
                    write!(f, ":{t}")?;
                }
                Ok(())
            }
            Location::DockerArchive { path, reference } => {
                write!(f, "docker-archive:{}", path.display())?;
                if let Some(r) = reference {
                    write!(f, ":{r}")?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_style_references() {
        let r = ImageRef::parse("alpine").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("docker.io", "library/alpine")
        );
        assert_eq!(r.reference(), "latest");
        assert_eq!(r.api_host(), "registry-1.docker.io");

        let r = ImageRef::parse("127.0.0.1:5000/proj/app:v1").unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "proj/app");
        assert_eq!(r.tag.as_deref(), Some("v1"));

        let d = format!("sha256:{}", "a".repeat(64));
        let r = ImageRef::parse(&format!("localhost/app@{d}")).unwrap();
        assert_eq!(r.registry, "localhost");
        assert_eq!(r.reference(), d);
        assert_eq!(r.tag_or_default(), None);

        let r = ImageRef::parse("user/app:1.0").unwrap();
        assert_eq!(r.repository, "user/app");
        let r = ImageRef::parse_with_default("proj/app", Some("reg.example:8443")).unwrap();
        assert_eq!(r.to_string(), "reg.example:8443/proj/app");

        assert!(ImageRef::parse("Bad/Name").is_err());
        assert!(ImageRef::parse("host:5000/app:bad tag").is_err());
        assert!(ImageRef::parse("app@sha256:zz").is_err());
        assert!(ImageRef::parse("").is_err());
    }

    #[test]
    fn locations() {
        assert_eq!(
            Location::parse("oci:/tmp/lay:v1", None).unwrap(),
            Location::OciLayout {
                path: "/tmp/lay".into(),
                tag: Some("v1".into())
            }
        );
        assert_eq!(
            Location::parse("docker-archive:img.tar:app:v2", None).unwrap(),
            Location::DockerArchive {
                path: "img.tar".into(),
                reference: Some("app:v2".into())
            }
        );
        assert!(matches!(
            Location::parse("docker://127.0.0.1:5000/a:b", None).unwrap(),
            Location::Registry(_)
        ));
        assert!(Location::parse("oci::v1", None).is_err());
    }
}
