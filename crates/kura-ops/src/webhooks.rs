//! Webhooks: per-project policies that POST a JSON document to a URL when artifacts are
//! pushed, pulled or deleted, when a quota is exceeded or nearly so, and when retention ran.
//!
//! Nothing here runs on the request path. The event sink only queues the event (bounded,
//! never blocking); a matcher task turns it into one *delivery* row per matching policy; a
//! dispatcher claims due deliveries (a lease, so replicas never send one twice at the same
//! time), sends them, and records every attempt. Failed attempts are retried with exponential
//! backoff until `max_attempts`. With a secret, each request carries
//! `X-Kura-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>`. The payload schema is in
//! docs/webhooks.md.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{KeyInit, Mac};
use kura_metadata::ops::{DeliveryAttempt, DeliveryState, DueDelivery, NewDelivery, WebhookPolicy};
use kura_metadata::{OpsStore, now_ms};
use kura_registry::{EventContext, EventSink, RegistryEvent};
use serde_json::{Value, json};
use tokio::sync::{Notify, Semaphore, mpsc};

/// Event types a policy may subscribe to. Scanning and replication are reserved: accepted
/// now, sent once those features exist.
pub const EVENT_TYPES: &[&str] = &[
    PUSH_ARTIFACT,
    PULL_ARTIFACT,
    DELETE_ARTIFACT,
    QUOTA_EXCEED,
    QUOTA_WARNING,
    TAG_RETENTION,
    "SCANNING_COMPLETED",
    "SCANNING_FAILED",
    "REPLICATION",
];
pub const PUSH_ARTIFACT: &str = "PUSH_ARTIFACT";
pub const PULL_ARTIFACT: &str = "PULL_ARTIFACT";
pub const DELETE_ARTIFACT: &str = "DELETE_ARTIFACT";
pub const QUOTA_EXCEED: &str = "QUOTA_EXCEED";
pub const QUOTA_WARNING: &str = "QUOTA_WARNING";
pub const TAG_RETENTION: &str = "TAG_RETENTION";

/// `[webhooks]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    /// Attempts per delivery, the first included.
    pub max_attempts: u32,
    /// Delay before the first retry; doubles per attempt up to `backoff_max`.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Deliveries in flight per replica.
    pub concurrency: usize,
    /// Base URL of the registry as clients reach it (`https://registry.example.com`), used
    /// for `resource_url`; `None`: the repository reference alone.
    pub registry_url: Option<String>,
    /// Finished deliveries are kept this long in the delivery log.
    pub log_retention: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            max_attempts: 5,
            backoff_base: Duration::from_secs(2),
            backoff_max: Duration::from_secs(600),
            timeout: Duration::from_secs(10),
            concurrency: 4,
            registry_url: None,
            log_retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

pub struct Webhooks {
    store: Arc<dyn OpsStore>,
    config: WebhookConfig,
    events: mpsc::Sender<(String, Value, String)>,
    wake: Arc<Notify>,
    cache: Mutex<Option<(Instant, Arc<Vec<WebhookPolicy>>)>>,
}

/// How long the matcher trusts its copy of the enabled policies (changes made through this
/// replica's API invalidate it at once).
const POLICY_CACHE: Duration = Duration::from_secs(2);

impl Webhooks {
    /// Starts the matcher and the dispatcher (needs a Tokio runtime).
    pub fn start(store: Arc<dyn OpsStore>, config: WebhookConfig) -> Arc<Webhooks> {
        let (tx, rx) = mpsc::channel(16_384);
        let w = Arc::new(Webhooks {
            store,
            config,
            events: tx,
            wake: Arc::new(Notify::new()),
            cache: Mutex::new(None),
        });
        tokio::spawn(matcher(w.clone(), rx));
        tokio::spawn(dispatcher(w.clone()));
        w
    }

    pub fn store(&self) -> &Arc<dyn OpsStore> {
        &self.store
    }

    pub fn config(&self) -> &WebhookConfig {
        &self.config
    }

    /// Call after creating, changing or deleting a policy.
    pub fn policies_changed(&self) {
        *self.cache.lock().expect("webhook cache") = None;
    }

    async fn enabled_policies(&self) -> kura_metadata::Result<Arc<Vec<WebhookPolicy>>> {
        if let Some((at, p)) = &*self.cache.lock().expect("webhook cache")
            && at.elapsed() < POLICY_CACHE
        {
            return Ok(p.clone());
        }
        let p = Arc::new(self.store.webhook_policies(None).await?);
        *self.cache.lock().expect("webhook cache") = Some((Instant::now(), p.clone()));
        Ok(p)
    }

    fn resource_url(&self, repository: &str, reference: &str) -> String {
        let sep = if reference.contains(':') { "@" } else { ":" };
        match &self.config.registry_url {
            Some(base) => {
                let host = base
                    .trim_end_matches('/')
                    .trim_start_matches("https://")
                    .trim_start_matches("http://");
                format!("{host}/{repository}{sep}{reference}")
            }
            None => format!("{repository}{sep}{reference}"),
        }
    }

    /// The event type and `event_data` of a registry event, if webhooks announce it.
    fn describe(&self, event: &RegistryEvent) -> Option<(&'static str, String, Value)> {
        let repo = |r: &str| {
            let (ns, name) = r.split_once('/').unwrap_or((r, r));
            json!({ "name": name, "namespace": ns, "repo_full_name": r })
        };
        let project = event.project()?.to_string();
        let (kind, data) = match event {
            RegistryEvent::ManifestPushed {
                repository,
                digest,
                media_type,
                tag,
                size,
                ..
            } => (
                PUSH_ARTIFACT,
                json!({
                    "repository": repo(repository),
                    "resources": [{
                        "digest": digest,
                        "tag": tag,
                        "media_type": media_type,
                        "size": size,
                        "resource_url": self.resource_url(repository, tag.as_deref().unwrap_or(digest)),
                    }],
                }),
            ),
            RegistryEvent::ManifestPulled {
                repository,
                digest,
                reference,
            } => (
                PULL_ARTIFACT,
                json!({
                    "repository": repo(repository),
                    "resources": [{
                        "digest": digest,
                        "tag": (!reference.contains(':')).then_some(reference),
                        "resource_url": self.resource_url(repository, reference),
                    }],
                }),
            ),
            RegistryEvent::ManifestDeleted {
                repository,
                digest,
                tags,
                cause,
            } => (
                DELETE_ARTIFACT,
                json!({
                    "repository": repo(repository),
                    "resources": [{
                        "digest": digest,
                        "tags": tags,
                        "resource_url": self.resource_url(repository, digest),
                    }],
                    "cause": cause.as_str(),
                }),
            ),
            RegistryEvent::QuotaExceeded {
                repository,
                usage,
                requested,
                limit,
                ..
            } => (
                QUOTA_EXCEED,
                json!({
                    "repository": repo(repository),
                    "quota": { "usage": usage, "requested": requested, "limit": limit },
                    "details": format!(
                        "adding {requested} bytes to {usage} bytes in use exceeds the limit of {limit} bytes"
                    ),
                }),
            ),
            RegistryEvent::QuotaWarning {
                repository,
                usage,
                limit,
                ..
            } => (
                QUOTA_WARNING,
                json!({
                    "repository": repo(repository),
                    "quota": { "usage": usage, "limit": limit },
                    "details": format!("{usage} of {limit} bytes in use"),
                }),
            ),
            RegistryEvent::RetentionApplied {
                run_id,
                dry_run,
                deleted,
                ..
            } => (
                TAG_RETENTION,
                json!({ "retention": { "run_id": run_id, "dry_run": dry_run, "deleted": deleted } }),
            ),
            _ => return None,
        };
        Some((kind, project, data))
    }
}

impl EventSink for Webhooks {
    fn emit(&self, event: &RegistryEvent, ctx: &EventContext) {
        let Some((kind, project, data)) = self.describe(event) else {
            return;
        };
        let payload = json!({
            "type": kind,
            "occur_at": ctx.at_ms / 1000,
            "occur_at_ms": ctx.at_ms,
            "operator": ctx.actor.name,
            "project": project,
            "event_data": data,
        });
        if self
            .events
            .try_send((kind.to_string(), payload, project))
            .is_err()
        {
            metrics::counter!("kura_webhook_events_dropped_total").increment(1);
            tracing::warn!(event = kind, "webhook queue full: event not announced");
        }
    }
}

async fn matcher(w: Arc<Webhooks>, mut rx: mpsc::Receiver<(String, Value, String)>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < 256 {
            match rx.try_recv() {
                Ok(e) => batch.push(e),
                Err(_) => break,
            }
        }
        let policies = match w.enabled_policies().await {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot read webhook policies; events not announced");
                continue;
            }
        };
        let mut deliveries = Vec::new();
        for (kind, mut payload, project) in batch {
            for p in policies
                .iter()
                .filter(|p| p.enabled && p.project == project && p.events.contains(&kind))
            {
                let event_id = uuid::Uuid::new_v4().to_string();
                payload["id"] = Value::String(event_id.clone());
                payload["policy"] = json!({ "id": p.id, "name": p.name });
                deliveries.push(NewDelivery {
                    policy_id: p.id,
                    event_type: kind.clone(),
                    event_id,
                    payload: payload.to_string(),
                });
            }
        }
        if deliveries.is_empty() {
            continue;
        }
        let mut backoff = Duration::from_millis(100);
        for _ in 0..8 {
            match w.store.enqueue_deliveries(&deliveries).await {
                Ok(()) => {
                    w.wake.notify_one();
                    break;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot queue webhook deliveries; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
            }
        }
    }
}

/// The webhook HTTP client. Built on the first delivery rather than at start: the TLS set-up
/// (reading and parsing the system's CA certificates) is about 2 MiB of memory that a registry
/// without webhooks never needs.
fn webhook_client(config: &WebhookConfig) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(config.timeout)
        .user_agent(concat!("kura-webhook/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .build()
}

async fn dispatcher(w: Arc<Webhooks>) {
    let mut client: Option<reqwest::Client> = None;
    let slots = Arc::new(Semaphore::new(w.config.concurrency.max(1)));
    // Retries come due without anyone waking us: poll at least as often as the shortest delay.
    let poll = w
        .config
        .backoff_base
        .clamp(Duration::from_millis(50), Duration::from_secs(1));
    let lease = (w.config.timeout * 3).as_millis() as i64 + 1000;
    let mut last_purge = Instant::now();
    loop {
        let free = slots.available_permits() as u32;
        let due = if free > 0 {
            match w.store.claim_deliveries(lease, free).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot claim webhook deliveries");
                    Vec::new()
                }
            }
        } else {
            Vec::new()
        };
        let claimed = due.len();
        if claimed > 0 {
            let client = match &client {
                Some(c) => c.clone(),
                None => match webhook_client(&w.config) {
                    Ok(c) => client.insert(c).clone(),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot build the webhook HTTP client; webhooks are off");
                        return;
                    }
                },
            };
            for d in due {
                let permit = slots.clone().acquire_owned().await.expect("semaphore open");
                let (w, client) = (w.clone(), client.clone());
                tokio::spawn(async move {
                    deliver(&w, &client, d).await;
                    drop(permit);
                    w.wake.notify_one();
                });
            }
        }
        if last_purge.elapsed() > Duration::from_secs(3600) {
            last_purge = Instant::now();
            let cutoff = now_ms() - w.config.log_retention.as_millis() as i64;
            if let Err(e) = w.store.purge_deliveries(cutoff).await {
                tracing::warn!(error = %e, "cannot purge the webhook delivery log");
            }
        }
        if claimed == 0 {
            let _ = tokio::time::timeout(poll, w.wake.notified()).await;
        }
    }
}

/// `sha256=<hex>` of the body under `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

async fn deliver(w: &Webhooks, client: &reqwest::Client, d: DueDelivery) {
    let attempt = d.attempts + 1;
    let started = Instant::now();
    let at = now_ms();
    let mut req = client
        .post(&d.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("X-Kura-Event", &d.event_type)
        .header("X-Kura-Event-Id", &d.event_id)
        .header("X-Kura-Delivery", d.id.to_string())
        .header("X-Kura-Attempt", attempt.to_string());
    if let Some(secret) = &d.secret {
        req = req.header(
            "X-Kura-Signature-256",
            signature(secret, d.payload.as_bytes()),
        );
    }
    let result = req.body(d.payload.clone()).send().await;
    let duration = started.elapsed();
    metrics::histogram!("kura_webhook_delivery_duration_seconds").record(duration.as_secs_f64());
    let (status_code, error) = match result {
        Ok(resp) => {
            let s = resp.status();
            let err = (!s.is_success()).then(|| format!("receiver answered {s}"));
            (Some(s.as_u16()), err)
        }
        Err(e) => (None, Some(describe_error(&e))),
    };
    let state = if error.is_none() {
        DeliveryState::Delivered
    } else if attempt >= w.config.max_attempts {
        DeliveryState::Failed
    } else {
        let factor = 2u32.saturating_pow(attempt - 1);
        let delay = w
            .config
            .backoff_base
            .saturating_mul(factor)
            .min(w.config.backoff_max);
        DeliveryState::Retry(now_ms() + delay.as_millis() as i64)
    };
    let outcome = match state {
        DeliveryState::Delivered => "delivered",
        DeliveryState::Retry(_) => "retry",
        DeliveryState::Failed => "failed",
    };
    metrics::counter!("kura_webhook_deliveries_total", "outcome" => outcome).increment(1);
    if let Some(e) = &error {
        tracing::info!(delivery = d.id, attempt, url = %d.url, error = %e, outcome, "webhook delivery failed");
    }
    let record = DeliveryAttempt {
        attempt,
        at,
        status_code,
        error,
        duration_ms: duration.as_millis() as i64,
    };
    if let Err(e) = w.store.record_attempt(d.id, &record, state).await {
        // The lease runs out and another pass sends it again: at-least-once.
        tracing::warn!(delivery = d.id, error = %e, "cannot record a webhook attempt");
    }
}

fn describe_error(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}
