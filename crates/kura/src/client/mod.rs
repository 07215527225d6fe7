//! The daemonless client commands (`kura login/push/pull/cp/tag/ls/inspect/rm/prune/df/search`):
//! argument parsing, connection set-up from the docker config, output as text tables or JSON,
//! and exit codes. The work itself is `kura-client`'s.
//!
//! Exit codes: 0 success, 1 other error, 2 usage, 3 authentication or authorization,
//! 4 not found, 5 connection or TLS, 6 content did not match its digest, 7 unsupported by
//! the registry.

mod auth_cmd;
mod copy_cmd;
mod delete_cmd;
mod list_cmd;
mod progress;

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use clap::{Args, ValueEnum};
use kura_client::credentials::DockerConfig;
use kura_client::registry::{ConnectOptions, Registry};
use kura_client::{ClientError, ImageRef, Location, Result};

pub use auth_cmd::{LoginArgs, LogoutArgs, login, logout};
pub use copy_cmd::{CpArgs, PullArgs, PushArgs, TagArgs, cp, pull, push, tag};
pub use delete_cmd::{PruneArgs, RmArgs, prune, rm};
pub use list_cmd::{DfArgs, InspectArgs, LsArgs, SearchArgs, df, inspect, ls, search};

/// Output format of client commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Format {
    #[default]
    Text,
    Json,
}

/// Options every client command takes.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Accept self-signed or invalid TLS certificates and allow plain HTTP. Only for registries
    /// you reach over a network you trust; prefer --ca-file for a private CA.
    #[arg(long, global = true, env = "KURA_INSECURE")]
    pub insecure: bool,
    /// Also trust the certificates in this PEM file: a private CA, or the registry's own
    /// self-signed certificate.
    #[arg(long, global = true, value_name = "PEM", env = "KURA_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Speak plain HTTP to the registry without trying HTTPS first (loopback registries are
    /// tried over HTTPS, then HTTP, without it).
    #[arg(long, global = true)]
    pub plain_http: bool,
    /// The docker config file holding credentials (default: $DOCKER_CONFIG/config.json or
    /// ~/.docker/config.json; podman's auth.json is also read when it has nothing).
    #[arg(long, global = true, value_name = "FILE", env = "KURA_AUTHFILE")]
    pub authfile: Option<PathBuf>,
    /// The registry that references without a host name go to (docker's default is
    /// docker.io).
    #[arg(long, global = true, value_name = "HOST[:PORT]", env = "KURA_REGISTRY")]
    pub registry: Option<String>,
    /// Output: human-readable text, or JSON for scripts.
    #[arg(long, global = true, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Print only errors (and for listings only the names).
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

/// What client commands share: options, credentials, one connection per registry.
pub struct Ctx {
    pub args: ClientArgs,
    config: Mutex<Option<DockerConfig>>,
    registries: Mutex<HashMap<String, Arc<Registry>>>,
}

impl Ctx {
    pub fn new(args: ClientArgs) -> Ctx {
        Ctx {
            args,
            config: Mutex::new(None),
            registries: Mutex::new(HashMap::new()),
        }
    }

    pub fn json(&self) -> bool {
        self.args.format == Format::Json
    }

    /// Whether progress bars may be drawn (a terminal, not quiet, not JSON).
    pub fn interactive(&self) -> bool {
        !self.args.quiet && !self.json() && std::io::stderr().is_terminal()
    }

    pub fn connect_options(&self) -> ConnectOptions {
        ConnectOptions {
            insecure: self.args.insecure,
            ca_file: self.args.ca_file.clone(),
            plain_http: self.args.plain_http,
        }
    }

    /// Loads the docker config (once).
    pub fn with_config<T>(&self, f: impl FnOnce(&mut DockerConfig) -> Result<T>) -> Result<T> {
        let mut guard = self.config.lock().expect("config lock");
        if guard.is_none() {
            *guard = Some(match &self.args.authfile {
                Some(p) => DockerConfig::load(p)?,
                None => DockerConfig::load_default()?,
            });
        }
        f(guard.as_mut().expect("loaded"))
    }

    /// The client for `registry`, with the stored credentials.
    pub fn registry(&self, registry: &str) -> Result<Arc<Registry>> {
        if let Some(r) = self.registries.lock().expect("lock").get(registry) {
            return Ok(r.clone());
        }
        let credential = self.with_config(|c| c.get(registry))?;
        let r = Arc::new(Registry::new(
            registry,
            credential,
            &self.connect_options(),
        )?);
        self.registries
            .lock()
            .expect("lock")
            .insert(registry.to_string(), r.clone());
        Ok(r)
    }

    pub fn image_ref(&self, s: &str) -> Result<ImageRef> {
        ImageRef::parse_with_default(s, self.args.registry.as_deref())
    }

    pub fn location(&self, s: &str) -> Result<Location> {
        Location::parse(s, self.args.registry.as_deref())
    }

    /// Prints a line of normal output unless quiet.
    pub fn say(&self, line: impl AsRef<str>) {
        if !self.args.quiet {
            println!("{}", line.as_ref());
        }
    }

    /// Prints a value as pretty JSON.
    pub fn print_json(&self, v: &impl serde::Serialize) {
        println!(
            "{}",
            serde_json::to_string_pretty(v).expect("serialisable output")
        );
    }
}

/// Runs a client command on a fresh runtime and turns its error into an exit code.
pub fn run<F, Fut>(args: ClientArgs, command: F) -> ExitCode
where
    F: FnOnce(Arc<Ctx>) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    init_logging();
    let ctx = Arc::new(Ctx::new(args));
    let json = ctx.json();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kura: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(command(ctx)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(&e, json),
    }
}

fn report(e: &ClientError, json: bool) -> ExitCode {
    let code = e.exit_code();
    if json {
        let kind = match e {
            ClientError::Usage(_) => "usage",
            ClientError::Auth(_) => "auth",
            ClientError::NotFound(_) => "not_found",
            ClientError::Tls(_) => "tls",
            ClientError::Connect(_) => "connect",
            ClientError::Integrity(_) => "integrity",
            ClientError::Registry(_) => "registry",
            ClientError::Unsupported(_) => "unsupported",
            ClientError::Io { .. } => "io",
            ClientError::Format(_) => "format",
        };
        eprintln!(
            "{}",
            serde_json::json!({"error": {"kind": kind, "message": e.to_string(), "exit_code": code}})
        );
    } else {
        eprintln!("kura: error: {e}");
    }
    ExitCode::from(code as u8)
}

/// Client commands log only their own warnings (RUST_LOG overrides; dependencies' log lines
/// would repeat the error the command reports anyway) and never in colour when piped.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off,kura=warn,kura_client=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .without_time()
        .try_init();
}

pub use kura_client::units::human_size;

/// "3 days ago", from an RFC 3339 time.
pub fn human_age(created: &str) -> String {
    let Ok(t) = chrono::DateTime::parse_from_rfc3339(created) else {
        return "-".into();
    };
    let secs = (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds();
    let (n, unit) = match secs {
        s if s < 0 => return "in the future".into(),
        s if s < 60 => (s, "second"),
        s if s < 3600 => (s / 60, "minute"),
        s if s < 86_400 => (s / 3600, "hour"),
        s if s < 86_400 * 30 => (s / 86_400, "day"),
        s if s < 86_400 * 365 => (s / (86_400 * 30), "month"),
        s => (s / (86_400 * 365), "year"),
    };
    format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
}

/// Prints rows as left-aligned columns separated by three spaces (docker's table style).
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}   ", w = widths[i]));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// Parses durations like `24h`, `90m`, `7d`, `1w`, `3600s` (or plain seconds).
pub fn parse_duration(s: &str) -> Result<std::time::Duration> {
    let bad = || {
        ClientError::Usage(format!(
            "invalid duration {s:?}: use a number with s, m, h, d or w (e.g. 24h)"
        ))
    };
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        "w" => n * 7 * 86_400,
        _ => return Err(bad()),
    };
    Ok(std::time::Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_ages_durations() {
        assert_eq!(parse_duration("24h").unwrap().as_secs(), 86_400);
        assert_eq!(parse_duration("90").unwrap().as_secs(), 90);
        assert!(parse_duration("1y").is_err());
        assert_eq!(human_age("not a time"), "-");
    }
}
