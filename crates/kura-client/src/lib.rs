//! A daemonless registry client, the engine behind the `kura` CLI's client commands.
//!
//! It speaks the OCI distribution API to Kura or to any registry (token and Basic auth from the
//! docker config file and credential helpers), and moves images between registries, OCI image
//! layout directories and docker-archive tars: blobs stream through with their digests checked,
//! never held whole in memory.
//!
//! - [`reference`]: docker-style image references (`host/repo:tag@digest`) and local locations
//!   (`oci:DIR:TAG`, `docker-archive:FILE`).
//! - [`credentials`]: the docker config file (`auths`, `credsStore`, `credHelpers`).
//! - [`registry`]: the HTTP client: challenges, tokens, blobs, uploads, manifests, listings.
//! - [`layout`], [`archive`]: the two local image formats.
//! - [`transfer`]: copies between any source and destination, layers in parallel, with progress.

pub mod archive;
pub mod credentials;
pub mod error;
pub mod layout;
pub mod reference;
pub mod registry;
mod tls;
pub mod transfer;
pub mod units;

pub use error::{ClientError, Result};
pub use reference::{ImageRef, Location};
