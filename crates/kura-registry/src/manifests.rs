//! Manifests, tags and referrers.

use bytes::Bytes;
use kura_metadata::{ManifestKey, NewManifest, PutManifestOutcome};
use kura_oci::manifest::{self, ManifestError};
use kura_oci::media_types as mt;
use kura_oci::{Algorithm, Digest, ErrorCode, Reference, RepositoryName};
use serde_json::{Value, json};

use crate::{DeleteCause, Registry, RegistryError, RegistryEvent, Result, policy};

/// Outcome of a manifest PUT.
#[derive(Debug, Clone)]
pub struct ManifestPushed {
    pub digest: Digest,
    /// The subject digest when the manifest has one (sent back as `OCI-Subject`).
    pub subject: Option<Digest>,
}

/// A manifest as served on GET/HEAD.
#[derive(Debug, Clone)]
pub struct ManifestContent {
    pub digest: String,
    pub media_type: String,
    pub size: u64,
    /// Absent for HEAD.
    pub payload: Option<Bytes>,
}

/// One page of a tag listing.
#[derive(Debug, Clone)]
pub struct TagPage {
    pub tags: Vec<String>,
    /// Another page follows.
    pub more: bool,
}

impl Registry {
    pub async fn put_manifest(
        &self,
        repo: &RepositoryName,
        reference: &Reference,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<ManifestPushed> {
        let limit = self.inner.config.max_manifest_size;
        if body.len() > limit {
            return Err(RegistryError::new(
                ErrorCode::SizeInvalid,
                format!("manifest is {} bytes; the limit is {limit}", body.len()),
            )
            .with_status(413));
        }
        let parsed = manifest::parse(&body, content_type).map_err(|e| {
            let msg = e.to_string();
            match e {
                ManifestError::Schema1 => RegistryError::new(ErrorCode::ManifestInvalid, msg)
                    .with_detail(json!({ "reason": "schema1 unsupported" })),
                _ => RegistryError::new(ErrorCode::ManifestInvalid, msg),
            }
        })?;
        let (digest, tag) = match reference {
            Reference::Digest(expected) => {
                let actual = expected.algorithm().digest_of(&body);
                if &actual != expected {
                    return Err(RegistryError::new(
                        ErrorCode::DigestInvalid,
                        "manifest digest does not match the digest in the URL",
                    )
                    .with_detail(json!({
                        "expected": expected.to_string(),
                        "actual": actual.to_string(),
                    })));
                }
                (actual, None)
            }
            Reference::Tag(tag) => (Algorithm::Sha256.digest_of(&body), Some(tag.clone())),
        };

        let repository_id = self.inner.meta.ensure_repository(repo.as_str()).await?;
        let size = body.len() as u64;
        let new = NewManifest {
            repository_id,
            digest: digest.to_string(),
            media_type: parsed.media_type.clone(),
            payload: body.to_vec(),
            artifact_type: parsed.artifact_type.clone(),
            subject_digest: parsed.subject.as_ref().map(|s| s.digest.to_string()),
            annotations: parsed
                .annotations
                .as_ref()
                .map(|a| Value::Object(a.clone()).to_string()),
            blob_refs: dedup(parsed.blobs.iter().map(|d| d.digest.to_string())),
            manifest_refs: dedup(parsed.children.iter().map(|d| d.digest.to_string())),
            tag: tag.clone(),
            immutable_tag: match &tag {
                Some(t) => policy::tag_protected(&self.immutability_rules_for(repo).await?, t),
                None => false,
            },
        };
        let (created, tag_changed, previous) = match self.inner.meta.put_manifest(&new).await? {
            PutManifestOutcome::Stored {
                created,
                tag_changed,
                previous_tag_target,
            } => (created, tag_changed, previous_tag_target),
            PutManifestOutcome::TagImmutable => {
                return Err(policy::immutable_error(repo, tag.as_deref().unwrap_or("")));
            }
            PutManifestOutcome::MissingReferences(missing) => {
                return Err(RegistryError::new(
                    ErrorCode::ManifestBlobUnknown,
                    format!(
                        "manifest references {} blob(s) or manifest(s) unknown to this repository",
                        missing.len()
                    ),
                )
                .with_detail(json!({ "missing": missing })));
            }
        };
        self.emit(RegistryEvent::ManifestPushed {
            repository: repo.to_string(),
            digest: digest.to_string(),
            media_type: parsed.media_type,
            tag,
            size,
            created,
            tag_changed,
            previous,
        });
        Ok(ManifestPushed {
            digest,
            subject: parsed.subject.map(|s| s.digest),
        })
    }

    /// Looks a manifest up by tag or digest. `with_payload` is false for HEAD.
    pub async fn get_manifest(
        &self,
        repo: &RepositoryName,
        reference: &Reference,
        with_payload: bool,
    ) -> Result<ManifestContent> {
        let reference_s = match reference {
            Reference::Tag(t) => t.clone(),
            Reference::Digest(d) => d.to_string(),
        };
        let key = match reference {
            Reference::Tag(t) => ManifestKey::Tag(t),
            Reference::Digest(_) => ManifestKey::Digest(&reference_s),
        };
        let found = self
            .inner
            .meta
            .find_manifest(repo.as_str(), key, with_payload)
            .await?;
        let m = found.ok_or_else(|| RegistryError::manifest_unknown(&reference_s))?;
        if with_payload {
            self.emit(RegistryEvent::ManifestPulled {
                repository: repo.to_string(),
                digest: m.digest.clone(),
                reference: reference_s,
            });
        }
        Ok(ManifestContent {
            digest: m.digest,
            media_type: m.media_type,
            size: m.size,
            payload: m.payload.map(Bytes::from),
        })
    }

    /// Deletes a tag (by tag) or a manifest with all its tags (by digest).
    pub async fn delete_manifest(
        &self,
        repo: &RepositoryName,
        reference: &Reference,
    ) -> Result<()> {
        self.require_delete_enabled()?;
        let reference_s = match reference {
            Reference::Tag(t) => t.clone(),
            Reference::Digest(d) => d.to_string(),
        };
        let Some(rid) = self.repository_id(repo).await? else {
            return Err(RegistryError::manifest_unknown(&reference_s));
        };
        match reference {
            Reference::Tag(tag) => {
                if policy::tag_protected(&self.immutability_rules_for(repo).await?, tag)
                    && self
                        .inner
                        .meta
                        .manifest_by_tag(rid, tag, false)
                        .await?
                        .is_some()
                {
                    return Err(policy::immutable_error(repo, tag));
                }
                if !self.inner.meta.delete_tag(rid, tag).await? {
                    return Err(RegistryError::manifest_unknown(&reference_s));
                }
                self.emit(RegistryEvent::TagDeleted {
                    repository: repo.to_string(),
                    tag: tag.clone(),
                });
            }
            Reference::Digest(d) => {
                self.delete_manifest_by_digest(repo, rid, &d.to_string(), DeleteCause::Client)
                    .await?;
            }
        }
        Ok(())
    }

    /// Tags of `repo` after `last`, at most `n`. NAME_UNKNOWN for an unknown repository.
    pub async fn list_tags(
        &self,
        repo: &RepositoryName,
        last: Option<&str>,
        n: u32,
    ) -> Result<TagPage> {
        let Some(rid) = self.repository_id(repo).await? else {
            return Err(RegistryError::name_unknown(repo));
        };
        if n == 0 {
            return Ok(TagPage {
                tags: Vec::new(),
                more: false,
            });
        }
        let mut tags = self
            .inner
            .meta
            .list_tags(rid, last, n.saturating_add(1))
            .await?;
        let more = tags.len() > n as usize;
        tags.truncate(n as usize);
        Ok(TagPage { tags, more })
    }

    /// The referrers of `subject` in `repo` as an OCI image index (never "not found").
    pub async fn referrers(
        &self,
        repo: &RepositoryName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Value> {
        let records = match self.repository_id(repo).await? {
            Some(rid) => {
                self.inner
                    .meta
                    .referrers(rid, &subject.to_string(), artifact_type)
                    .await?
            }
            None => Vec::new(),
        };
        let manifests: Vec<Value> = records
            .into_iter()
            .map(|r| {
                let mut d = json!({
                    "mediaType": r.media_type,
                    "digest": r.digest,
                    "size": r.size,
                });
                if let Some(t) = r.artifact_type {
                    d["artifactType"] = Value::String(t);
                }
                if let Some(a) = r.annotations.and_then(|a| serde_json::from_str(&a).ok()) {
                    d["annotations"] = a;
                }
                d
            })
            .collect();
        Ok(json!({
            "schemaVersion": 2,
            "mediaType": mt::OCI_INDEX,
            "manifests": manifests,
        }))
    }
}

fn dedup(items: impl Iterator<Item = String>) -> Vec<String> {
    let mut v: Vec<String> = items.collect();
    v.sort();
    v.dedup();
    v
}
