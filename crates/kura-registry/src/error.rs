//! Errors in the distribution spec's shape: a code, a message, optional detail, an HTTP status.

use kura_oci::ErrorCode;
use serde_json::Value;

use crate::uploads::UploadStatus;

#[derive(Debug)]
pub struct RegistryError {
    pub code: ErrorCode,
    pub status: u16,
    pub message: String,
    pub detail: Option<Value>,
    /// For upload errors the client can recover from (416): where the upload stands.
    pub upload: Option<UploadStatus>,
}

pub type Result<T, E = RegistryError> = std::result::Result<T, E>;

impl RegistryError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> RegistryError {
        RegistryError {
            code,
            status: code.default_status(),
            message: message.into(),
            detail: None,
            upload: None,
        }
    }

    pub fn with_status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    pub fn with_detail(mut self, detail: Value) -> Self {
        self.detail = Some(detail);
        self
    }

    pub fn internal(message: impl std::fmt::Display) -> RegistryError {
        tracing::error!(error = %message, "internal error");
        RegistryError::new(ErrorCode::Unknown, "internal server error")
    }

    pub fn unsupported(message: impl Into<String>) -> RegistryError {
        RegistryError::new(ErrorCode::Unsupported, message)
    }

    pub fn blob_unknown(digest: impl std::fmt::Display) -> RegistryError {
        RegistryError::new(ErrorCode::BlobUnknown, "blob unknown to registry")
            .with_detail(serde_json::json!({ "digest": digest.to_string() }))
    }

    pub fn upload_unknown() -> RegistryError {
        RegistryError::new(
            ErrorCode::BlobUploadUnknown,
            "blob upload unknown to registry",
        )
    }

    /// 416: another request moved the upload on between this one's lookup and its write.
    pub fn upload_changed() -> RegistryError {
        RegistryError::new(
            ErrorCode::BlobUploadInvalid,
            "the upload was changed by a concurrent request; query its status and resume",
        )
        .with_status(416)
    }

    pub fn manifest_unknown(reference: impl std::fmt::Display) -> RegistryError {
        RegistryError::new(ErrorCode::ManifestUnknown, "manifest unknown to registry")
            .with_detail(serde_json::json!({ "reference": reference.to_string() }))
    }

    pub fn name_unknown(name: impl std::fmt::Display) -> RegistryError {
        RegistryError::new(
            ErrorCode::NameUnknown,
            "repository name not known to registry",
        )
        .with_detail(serde_json::json!({ "name": name.to_string() }))
    }
}

impl std::fmt::Display for RegistryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.code.as_str(),
            self.status,
            self.message
        )
    }
}

impl std::error::Error for RegistryError {}

impl From<kura_metadata::MetadataError> for RegistryError {
    fn from(e: kura_metadata::MetadataError) -> Self {
        RegistryError::internal(e)
    }
}

impl From<kura_storage::StorageError> for RegistryError {
    fn from(e: kura_storage::StorageError) -> Self {
        match e {
            // The stored bytes of an upload do not match its recorded position (lost in a
            // crash, or a backend that dropped a part): retrying this session cannot succeed.
            kura_storage::StorageError::Conflict(m) => RegistryError::new(
                ErrorCode::BlobUploadInvalid,
                format!("the upload's stored data is incomplete; start a new upload ({m})"),
            ),
            e => RegistryError::internal(e),
        }
    }
}
