//! `kura serve`: wires configuration, backends, the registry service and the HTTP server.

use axum::serve::ListenerExt;
use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use kura_auth::{Auth, AuthConfig, AuthMode};
use kura_metadata::sql::SqlOptions;
use kura_metadata::{AccessStore, Metadata, MetadataStore, OpsStore};
use kura_registry::{PullRecorder, Registry, RegistryConfig};
use kura_storage::{BlobStore, Durability, FsBlobStore, S3BlobStore};
use tracing_subscriber::EnvFilter;

use crate::config::{
    AuthModeSetting, DurabilityMode, LogFormat, ServeArgs, Settings, StorageBackend,
};

pub fn run(args: ServeArgs) -> ExitCode {
    let (settings, runtime) = match prepare(&args) {
        Ok(v) => v,
        Err(code) => return code,
    };
    match runtime.block_on(serve(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("kura: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves the configuration, starts logging and builds the runtime (shared by the
/// server-side commands); on failure the message is printed and the exit code returned.
pub(crate) fn prepare(args: &ServeArgs) -> Result<(Settings, tokio::runtime::Runtime), ExitCode> {
    let settings = Settings::resolve(args).map_err(|e| {
        eprintln!("kura: {e}");
        ExitCode::from(2)
    })?;
    init_logging(settings.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("kura: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        })?;
    Ok((settings, runtime))
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// The configured backends, opened (migrations applied).
pub(crate) async fn open_backends(
    s: &Settings,
) -> Result<(Arc<dyn BlobStore>, Arc<kura_metadata::SqlStore>), String> {
    std::fs::create_dir_all(&s.data_dir)
        .map_err(|e| format!("cannot create data directory {}: {e}", s.data_dir.display()))?;
    let durability = match s.durability {
        DurabilityMode::Strict => Durability::Strict,
        DurabilityMode::Relaxed => Durability::Relaxed,
    };
    let store: Arc<dyn BlobStore> = match &s.storage_backend {
        StorageBackend::Filesystem => Arc::new(
            FsBlobStore::open(&s.storage_path, durability)
                .await
                .map_err(|e| {
                    format!("cannot open blob storage {}: {e}", s.storage_path.display())
                })?,
        ),
        StorageBackend::S3(cfg) => Arc::new(
            S3BlobStore::new(cfg).map_err(|e| format!("cannot configure S3 storage: {e}"))?,
        ),
    };
    let sql = Arc::new(
        kura_metadata::SqlStore::connect(
            &s.metadata_url,
            &SqlOptions {
                max_connections: s.metadata_max_connections,
                durable_commits: durability == Durability::Strict,
            },
        )
        .await
        .map_err(|e| format!("cannot open metadata store: {e}"))?,
    );
    Ok((store, sql))
}

/// The registry service over opened backends.
pub(crate) fn registry(
    s: &Settings,
    store: Arc<dyn BlobStore>,
    meta: Arc<dyn Metadata>,
    sinks: Vec<Arc<dyn kura_registry::EventSink>>,
) -> Registry {
    Registry::new(
        meta,
        store,
        RegistryConfig {
            max_manifest_size: s.max_manifest_size,
            delete_enabled: s.delete_enabled,
            upload_expiry: s.upload_expiry,
            chunk_min_length: s.chunk_min_length,
            gc: s.gc.clone(),
            quota_warning_percent: s.quota_warning_percent,
            inline_blob_max: s.inline_blob_max,
        },
        sinks,
    )
}

async fn serve(s: Settings) -> Result<(), String> {
    let (store, sql) = open_backends(&s).await?;
    let meta: Arc<dyn MetadataStore> = sql.clone();
    let access: Arc<dyn AccessStore> = sql.clone();
    let auth = Arc::new(
        Auth::new(
            access,
            AuthConfig {
                mode: match s.auth_mode {
                    AuthModeSetting::Open => AuthMode::Open,
                    AuthModeSetting::Local => AuthMode::Local,
                    AuthModeSetting::Ldap => AuthMode::Ldap,
                },
                ldap: s.auth_ldap.clone().map(|l| kura_auth::ldap::LdapConfig {
                    url: l.url,
                    starttls: l.starttls,
                    bind_dn: l.bind_dn,
                    bind_password: l.bind_password,
                    user_base: l.user_base,
                    user_filter: l.user_filter,
                    group_base: l.group_base,
                    group_filter: l.group_filter,
                    admin_group: l.admin_group,
                    group_roles: l
                        .group_roles
                        .into_iter()
                        .map(|g| (g.group, g.project, g.role))
                        .collect(),
                    timeout: Duration::from_secs(l.timeout_secs.unwrap_or(5).max(1)),
                }),
                token_ttl: s.auth_token_ttl,
                service: s.auth_service.clone(),
                admin_password: std::env::var("KURA_ADMIN_PASSWORD").ok(),
            },
        )
        .await
        .map_err(|e| format!("cannot set up access control: {e}"))?,
    );
    let pulls = Arc::new(PullRecorder::default());
    let pull_flusher = pulls
        .clone()
        .spawn_flusher(meta.clone(), Duration::from_secs(5));
    let ops_store: Arc<dyn OpsStore> = sql.clone();
    let mut sinks: Vec<Arc<dyn kura_registry::EventSink>> = vec![pulls];
    let mut background = Vec::new();
    let prometheus = if s.metrics_enabled {
        let handle = install_metrics_recorder()?;
        let upkeep = handle.clone();
        background.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                upkeep.run_upkeep();
            }
        }));
        sinks.push(Arc::new(kura_ops::metrics::RegistryMetrics));
        Some(handle)
    } else {
        None
    };
    let audit = s
        .audit
        .clone()
        .map(|cfg| kura_ops::AuditLog::start(ops_store.clone(), cfg));
    if let Some(a) = &audit {
        sinks.push(a.clone());
        if let Some(retention) = a.config().retention {
            let a = a.clone();
            background.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(3600));
                loop {
                    tick.tick().await;
                    let ctx = kura_registry::EventContext::capture();
                    if let Err(e) = a.purge_older_than(retention, &ctx).await {
                        tracing::warn!(error = %e, "audit log purge failed");
                    }
                }
            }));
        }
    }
    let webhooks = s
        .webhooks
        .clone()
        .map(|cfg| kura_ops::Webhooks::start(ops_store.clone(), cfg));
    if let Some(w) = &webhooks {
        sinks.push(w.clone());
    }
    let registry = registry(&s, store, sql, sinks);
    let expiry = kura_server::spawn_upload_expiry(registry.clone(), s.upload_sweep);
    let scheduler = kura_server::spawn_scheduler(registry.clone(), Duration::from_secs(1));
    let separate_metrics = s.metrics_listen.is_some();
    let metrics_registry = registry.clone();
    let app = kura_server::router(kura_server::AppState {
        registry,
        auth,
        realm: s.auth_realm.clone(),
        ops: kura_server::Ops {
            audit: audit.clone(),
            webhooks,
            metrics: prometheus.is_some(),
            prometheus: prometheus
                .clone()
                .filter(|_| !separate_metrics)
                .map(|h| (h, ops_store.clone())),
            trust_forwarded_for: s.trust_forwarded_for,
        },
    });
    if let (Some(addr), Some(handle)) = (&s.metrics_listen, prometheus) {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr} (metrics): {e}"))?;
        let bound = listener
            .local_addr()
            .map_err(|e| format!("cannot read the bound address: {e}"))?;
        tracing::info!(addr = %bound, "metrics are served separately");
        println!("metrics listening on {bound}");
        let router = kura_server::metrics_routes::<()>(handle, ops_store.clone(), metrics_registry);
        background.push(tokio::spawn(async move {
            if let Err(e) = axum::serve(listener.tap_io(kura_server::no_delay), router).await {
                tracing::error!(error = %e, "metrics listener failed");
            }
        }));
    }
    let listener = tokio::net::TcpListener::bind(&s.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", s.listen))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("cannot read the bound address: {e}"))?;
    tracing::info!(%addr, data_dir = %s.data_dir.display(), "kura is serving");
    // One machine-readable line on stdout, for scripts and tests that start on port 0.
    println!("listening on {addr}");
    let _ = std::io::stdout().flush();
    let result = kura_server::serve(listener, app, shutdown_signal()).await;
    expiry.abort();
    scheduler.abort();
    pull_flusher.abort();
    for t in background {
        t.abort();
    }
    if let Some(a) = &audit {
        // Records of the last requests are in the queue: store them before exiting.
        let _ = tokio::time::timeout(Duration::from_secs(10), a.flush()).await;
    }
    result.map_err(|e| format!("server error: {e}"))
}

/// The process-wide Prometheus recorder behind the `metrics` facade.
fn install_metrics_recorder() -> Result<metrics_exporter_prometheus::PrometheusHandle, String> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    const LATENCY: &[f64] = &[
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        60.0,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("kura_http_request_duration_seconds".into()),
            LATENCY,
        )
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full("kura_webhook_delivery_duration_seconds".into()),
                LATENCY,
            )
        })
        .map_err(|e| format!("cannot configure metrics: {e}"))?
        .install_recorder()
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
    kura_ops::metrics::describe();
    Ok(handle)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}
