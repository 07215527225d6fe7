//! Operations: the audit log ([`audit`]), webhooks ([`webhooks`]) and registry metrics
//! ([`metrics`]). Each listens on the registry's event seam as an
//! [`kura_registry::EventSink`] and does its I/O off the request path; the HTTP layer adds
//! what only it sees (logins, management calls, request metrics).

pub mod audit;
pub mod metrics;
pub mod webhooks;

pub use audit::{AuditConfig, AuditLog, VerifyReport};
pub use webhooks::{WebhookConfig, Webhooks};
