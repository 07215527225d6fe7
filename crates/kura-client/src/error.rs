//! The client's error type. Each kind maps to a distinct exit code in the CLI, so scripts can
//! tell "not logged in" from "no such tag" from "the registry is unreachable".

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Bad command-line input (a malformed reference, an unknown filter, ...).
    #[error("{0}")]
    Usage(String),
    /// 401/403 from the registry, or no usable credentials.
    #[error("{0}")]
    Auth(String),
    /// The tag, manifest, blob or repository does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The server's certificate was not accepted, or the server does not speak TLS.
    #[error("{0}")]
    Tls(String),
    /// The registry could not be reached.
    #[error("{0}")]
    Connect(String),
    /// Content did not match its digest or size.
    #[error("{0}")]
    Integrity(String),
    /// The registry answered something the client cannot use (with the registry's own message).
    #[error("{0}")]
    Registry(String),
    /// The registry does not offer what was asked (deleting tags, the catalog, ...).
    #[error("{0}")]
    Unsupported(String),
    /// A local file or directory problem.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A local image (layout, archive) or config file is malformed.
    #[error("{0}")]
    Format(String),
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

impl ClientError {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClientError {
        let context = context.into();
        move |source| ClientError::Io { context, source }
    }

    /// The exit code the CLI uses for this kind of failure (documented in `kura --help`).
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::Usage(_) => 2,
            ClientError::Auth(_) => 3,
            ClientError::NotFound(_) => 4,
            ClientError::Tls(_) | ClientError::Connect(_) => 5,
            ClientError::Integrity(_) => 6,
            ClientError::Unsupported(_) => 7,
            ClientError::Registry(_) | ClientError::Io { .. } | ClientError::Format(_) => 1,
        }
    }
}
