//! Maps [`RegistryError`] to the spec's JSON error body and status.

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kura_oci::{ErrorCode, RepositoryName};
use kura_registry::RegistryError;
use serde_json::json;

/// A handler error: a registry error plus the repository it concerned (for upload headers).
pub struct ApiError {
    pub error: RegistryError,
    pub repo: Option<RepositoryName>,
    /// `WWW-Authenticate` value for 401 answers.
    pub challenge: Option<HeaderValue>,
}

impl From<RegistryError> for ApiError {
    fn from(error: RegistryError) -> Self {
        ApiError {
            error,
            repo: None,
            challenge: None,
        }
    }
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        RegistryError::new(code, message).into()
    }

    pub fn in_repo(mut self, repo: &RepositoryName) -> ApiError {
        self.repo = Some(repo.clone());
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = error_response(&self.error);
        if let Some(c) = self.challenge {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, c);
        }
        if let (Some(upload), Some(repo)) = (&self.error.upload, &self.repo) {
            let h = resp.headers_mut();
            if let Ok(v) = HeaderValue::from_str(&crate::v2::upload_location(repo, &upload.id)) {
                h.insert(header::LOCATION, v);
            }
            if let Ok(v) = HeaderValue::from_str(&crate::v2::range_header(upload.size)) {
                h.insert(header::RANGE, v);
            }
            if let Ok(v) = HeaderValue::from_str(&upload.id) {
                h.insert("docker-upload-uuid", v);
            }
        }
        resp
    }
}

/// The JSON error body for `e`, with its status.
pub fn error_response(e: &RegistryError) -> Response {
    let mut err = json!({ "code": e.code.as_str(), "message": e.message });
    if let Some(detail) = &e.detail {
        err["detail"] = detail.clone();
    }
    let body = json!({ "errors": [err] }).to_string();
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .expect("valid error response")
}

pub fn panic_response(_err: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("request handler panicked");
    error_response(&RegistryError::new(
        ErrorCode::Unknown,
        "internal server error",
    ))
}
