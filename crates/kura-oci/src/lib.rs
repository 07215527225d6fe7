//! The OCI model: everything Kura knows about the *shape* of registry content, with no I/O.
//!
//! Digests (and the resumable hashers that produce them), repository names and references as the
//! distribution spec defines them, manifest media types, manifest parsing/validation, and the
//! spec's error codes. Every other crate speaks in these types.

pub mod digest;
pub mod error;
pub mod glob;
pub mod manifest;
pub mod media_types;
pub mod name;
pub mod reference;

pub use digest::{Algorithm, Digest, DigestError, Hasher};
pub use error::ErrorCode;
pub use glob::glob_match;
pub use manifest::{Descriptor, ManifestError, ManifestKind, ParsedManifest};
pub use name::{NameError, RepositoryName};
pub use reference::{Reference, is_valid_tag, referrers_tag};
