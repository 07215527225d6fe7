//! Manifest parsing and validation. Kura stores manifests byte-for-byte; this module only reads
//! them to learn their media type and what they point at (blobs, child manifests, a subject).

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::digest::Digest;
use crate::media_types as mt;

/// A content descriptor as it appears inside a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<Map<String, Value>>,
}

impl Descriptor {
    /// Foreign / non-distributable layers are fetched from their `urls`, never pushed.
    pub fn is_foreign(&self) -> bool {
        (self.media_type.contains("foreign") || self.media_type.contains("nondistributable"))
            && self.urls.as_ref().is_some_and(|u| !u.is_empty())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestKind {
    /// An image (or artifact) manifest: config + layers.
    Image,
    /// An index / manifest list: points at other manifests.
    Index,
}

/// What Kura needs to know about a manifest.
#[derive(Debug, Clone)]
pub struct ParsedManifest {
    pub media_type: String,
    pub kind: ManifestKind,
    /// Blobs the manifest needs in the repository (config and layers), foreign layers excluded.
    pub blobs: Vec<Descriptor>,
    /// Manifests an index needs in the repository.
    pub children: Vec<Descriptor>,
    pub subject: Option<Descriptor>,
    /// The artifact type the referrers API reports: `artifactType`, else (for image manifests)
    /// the config media type; none for an index without `artifactType`.
    pub artifact_type: Option<String>,
    pub annotations: Option<Map<String, Value>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid JSON: {0}")]
    NotJson(String),
    #[error(
        "Docker schema 1 manifests are not supported; push with a current client (schema 2 or OCI)"
    )]
    Schema1,
    #[error("unsupported manifest media type {0:?}")]
    UnsupportedMediaType(String),
    #[error("Content-Type {header:?} does not match the manifest's mediaType {body:?}")]
    MediaTypeMismatch { header: String, body: String },
    #[error("invalid manifest: {0}")]
    Invalid(String),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<i64>,
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<Value>,
    layers: Option<Value>,
    manifests: Option<Value>,
    subject: Option<Value>,
    annotations: Option<Value>,
    // Present only in schema 1.
    fs_layers: Option<Value>,
}

/// Parses and validates a manifest body. `content_type` is the request's Content-Type, if any.
pub fn parse(body: &[u8], content_type: Option<&str>) -> Result<ParsedManifest, ManifestError> {
    let header = content_type.map(mt::essence).filter(|s| !s.is_empty());
    if matches!(header, Some(mt::DOCKER_SCHEMA1 | mt::DOCKER_SCHEMA1_SIGNED)) {
        return Err(ManifestError::Schema1);
    }
    let raw: RawManifest =
        serde_json::from_slice(body).map_err(|e| ManifestError::NotJson(e.to_string()))?;
    if raw.schema_version == Some(1) || raw.fs_layers.is_some() {
        return Err(ManifestError::Schema1);
    }
    if raw.schema_version != Some(2) {
        return Err(ManifestError::Invalid("schemaVersion must be 2".into()));
    }

    let media_type = match (&raw.media_type, header) {
        (Some(body_mt), Some(h)) if body_mt != h => {
            return Err(ManifestError::MediaTypeMismatch {
                header: h.to_string(),
                body: body_mt.clone(),
            });
        }
        (Some(body_mt), _) => body_mt.clone(),
        (None, Some(h)) => h.to_string(),
        // No type anywhere: infer from the shape, as the OCI image spec permits.
        (None, None) if raw.manifests.is_some() => mt::OCI_INDEX.to_string(),
        (None, None) => mt::OCI_MANIFEST.to_string(),
    };
    if matches!(
        media_type.as_str(),
        mt::DOCKER_SCHEMA1 | mt::DOCKER_SCHEMA1_SIGNED
    ) {
        return Err(ManifestError::Schema1);
    }
    if !mt::SUPPORTED_MANIFESTS.contains(&media_type.as_str()) {
        return Err(ManifestError::UnsupportedMediaType(media_type));
    }

    let subject = raw.subject.map(|v| descriptor(v, "subject")).transpose()?;
    let annotations = match raw.annotations {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => Some(m),
        Some(_) => {
            return Err(ManifestError::Invalid(
                "annotations must be an object".into(),
            ));
        }
    };
    if let Some(t) = &raw.artifact_type
        && !looks_like_media_type(t)
    {
        return Err(ManifestError::Invalid(format!(
            "artifactType {t:?} is not a media type"
        )));
    }

    if mt::is_index(&media_type) {
        if raw.config.is_some() || raw.layers.is_some() {
            return Err(ManifestError::Invalid(
                "an index must not have config or layers".into(),
            ));
        }
        let children = descriptor_list(raw.manifests, "manifests")?;
        Ok(ParsedManifest {
            media_type,
            kind: ManifestKind::Index,
            blobs: Vec::new(),
            children,
            subject,
            artifact_type: raw.artifact_type,
            annotations,
        })
    } else {
        if raw.manifests.is_some() {
            return Err(ManifestError::Invalid(
                "an image manifest must not have manifests".into(),
            ));
        }
        let config = descriptor(
            raw.config
                .ok_or_else(|| ManifestError::Invalid("config is required".into()))?,
            "config",
        )?;
        if raw.layers.is_none() && media_type == mt::DOCKER_MANIFEST {
            return Err(ManifestError::Invalid("layers is required".into()));
        }
        let layers = descriptor_list(raw.layers, "layers")?;
        let artifact_type = raw
            .artifact_type
            .clone()
            .or_else(|| Some(config.media_type.clone()));
        let mut blobs = Vec::with_capacity(layers.len() + 1);
        blobs.push(config);
        blobs.extend(layers.into_iter().filter(|l| !l.is_foreign()));
        Ok(ParsedManifest {
            media_type,
            kind: ManifestKind::Image,
            blobs,
            children: Vec::new(),
            subject,
            artifact_type,
            annotations,
        })
    }
}

fn descriptor(v: Value, field: &str) -> Result<Descriptor, ManifestError> {
    let d: Descriptor = serde_json::from_value(v)
        .map_err(|e| ManifestError::Invalid(format!("{field}: invalid descriptor: {e}")))?;
    if !looks_like_media_type(&d.media_type) {
        return Err(ManifestError::Invalid(format!(
            "{field}: mediaType {:?} is not a media type",
            d.media_type
        )));
    }
    Ok(d)
}

fn descriptor_list(v: Option<Value>, field: &str) -> Result<Vec<Descriptor>, ManifestError> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| descriptor(item, &format!("{field}[{i}]")))
            .collect(),
        Some(_) => Err(ManifestError::Invalid(format!("{field} must be an array"))),
    }
}

/// RFC 6838 shape: `type/subtype`, restricted-name characters only.
fn looks_like_media_type(s: &str) -> bool {
    let ok = |part: &str| {
        !part.is_empty()
            && part.len() <= 127
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    match s.split_once('/') {
        Some((t, sub)) => ok(t) && ok(sub),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";

    fn image(extra: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{D1}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{D1}","size":2}}]{extra}}}"#,
            mt::OCI_MANIFEST
        )
    }

    #[test]
    fn image_manifest() {
        let m = parse(image("").as_bytes(), Some(mt::OCI_MANIFEST)).unwrap();
        assert_eq!(m.kind, ManifestKind::Image);
        assert_eq!(m.blobs.len(), 2);
        assert_eq!(
            m.artifact_type.as_deref(),
            Some("application/vnd.oci.image.config.v1+json")
        );
    }

    #[test]
    fn subject_and_artifact_type() {
        let extra = format!(
            r#","artifactType":"application/vnd.example.sbom","subject":{{"mediaType":"{}","digest":"{D1}","size":9}},"annotations":{{"a":"b"}}"#,
            mt::OCI_MANIFEST
        );
        let m = parse(image(&extra).as_bytes(), None).unwrap();
        assert_eq!(m.subject.unwrap().digest.to_string(), D1);
        assert_eq!(
            m.artifact_type.as_deref(),
            Some("application/vnd.example.sbom")
        );
        assert!(m.annotations.is_some());
    }

    #[test]
    fn refusals() {
        assert_eq!(
            parse(b"{}", Some(mt::DOCKER_SCHEMA1_SIGNED)).unwrap_err(),
            ManifestError::Schema1
        );
        assert_eq!(
            parse(br#"{"schemaVersion":1,"fsLayers":[]}"#, None).unwrap_err(),
            ManifestError::Schema1
        );
        assert!(matches!(
            parse(b"nope", None),
            Err(ManifestError::NotJson(_))
        ));
        assert!(matches!(
            parse(image("").as_bytes(), Some(mt::OCI_INDEX)),
            Err(ManifestError::MediaTypeMismatch { .. })
        ));
        assert!(matches!(
            parse(br#"{"schemaVersion":2,"mediaType":"text/plain"}"#, None),
            Err(ManifestError::UnsupportedMediaType(_))
        ));
        assert!(matches!(
            parse(
                format!(
                    r#"{{"schemaVersion":2,"mediaType":"{}"}}"#,
                    mt::OCI_MANIFEST
                )
                .as_bytes(),
                None
            ),
            Err(ManifestError::Invalid(_))
        ));
        let bad_digest = image("").replace(D1, "sha256:abc");
        assert!(matches!(
            parse(bad_digest.as_bytes(), None),
            Err(ManifestError::Invalid(_))
        ));
    }

    #[test]
    fn index() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[{{"mediaType":"{}","digest":"{D1}","size":5,"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#,
            mt::OCI_INDEX,
            mt::OCI_MANIFEST
        );
        let m = parse(body.as_bytes(), Some(mt::OCI_INDEX)).unwrap();
        assert_eq!(m.kind, ManifestKind::Index);
        assert_eq!(m.children.len(), 1);
        assert_eq!(m.artifact_type, None);
    }
}
