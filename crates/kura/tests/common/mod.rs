//! Test harness shared by the integration tests: starts the real `kura` binary on a loopback port
//! with a fresh data directory, and stops it when dropped. Tests talk to it over real HTTP only.
//!
//! The backends come from `KURA_TEST_BACKEND`: `sqlite+fs` (default), `postgres+fs`,
//! `sqlite+s3` or `postgres+s3`, so the same tests run against every combination. PostgreSQL
//! needs `KURA_TEST_PG_URL` (a server URL; each server gets a fresh database), S3 needs
//! `KURA_TEST_S3_ENDPOINT`, `KURA_TEST_S3_BUCKET` and AWS credentials in the environment (each
//! server gets a fresh prefix). scripts/test starts both services and sets these.
#![allow(dead_code)]

pub mod oci_layout;

pub mod api;

pub mod auth;

pub mod storage;

pub mod cli;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `kura serve` process.
pub struct KuraServer {
    child: Child,
    /// `127.0.0.1:PORT`
    pub addr: String,
    /// `http://127.0.0.1:PORT`
    pub base_url: String,
    pub data_dir: PathBuf,
    backends: Backends,
    _tmp: Option<tempfile::TempDir>,
}

impl KuraServer {
    /// Starts a server with a fresh temporary data directory.
    pub fn start() -> KuraServer {
        Self::start_with(&[], &[])
    }

    /// Starts a server with extra command-line arguments and environment variables.
    pub fn start_with(args: &[&str], envs: &[(&str, &str)]) -> KuraServer {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data_dir = tmp.path().join("data");
        let mut server = Self::start_in(&data_dir, args, envs);
        server._tmp = Some(tmp);
        server
    }

    /// Starts a server over an existing (or new) data directory that the caller owns.
    pub fn start_in(data_dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> KuraServer {
        Self::start_in_with_backends(data_dir, &Backends::from_env(), args, envs)
    }

    /// Starts a server with explicit backends (several servers may share one metadata
    /// database and one bucket: replicas).
    pub fn start_in_with_backends(
        data_dir: &Path,
        backends: &Backends,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> KuraServer {
        std::fs::create_dir_all(data_dir).expect("create data dir");
        let backend_args = backends.args_for(data_dir);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kura"));
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data_dir)
            .args(&backend_args)
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("KURA_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn kura serve");
        let stdout = child.stdout.take().expect("stdout");
        // The server prints exactly one line `listening on ADDR` to stdout once it accepts connections.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if let Some(addr) = line.trim().strip_prefix("listening on ") {
                            let _ = tx.send(addr.to_string());
                        }
                    }
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!("kura serve did not report a listening address within 60 s");
            }
        };
        KuraServer {
            child,
            base_url: format!("http://{addr}"),
            addr,
            data_dir: data_dir.to_path_buf(),
            backends: *backends,
            _tmp: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }

    /// Peak resident set size of the server process so far, in KiB (VmHWM from /proc).
    pub fn peak_rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmHWM:")
    }

    /// Current resident set size of the server process, in KiB (VmRSS from /proc).
    pub fn rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmRSS:")
    }

    /// Kills the process with SIGKILL and waits for it (for crash tests).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for KuraServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A server that owns its data directory owns its database and S3 prefix too: give the
        // space back now rather than at the end of the run (a pass creates hundreds).
        if self._tmp.is_some() {
            self.backends.remove_backing_data(&self.data_dir);
        }
    }
}

/// Which metadata and blob backends test servers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backends {
    pub postgres: bool,
    pub s3: bool,
}

impl Backends {
    /// From `KURA_TEST_BACKEND` (default `sqlite+fs`).
    pub fn from_env() -> Backends {
        let spec = std::env::var("KURA_TEST_BACKEND").unwrap_or_else(|_| "sqlite+fs".into());
        match spec.as_str() {
            "sqlite+fs" => Backends {
                postgres: false,
                s3: false,
            },
            "postgres+fs" => Backends {
                postgres: true,
                s3: false,
            },
            "sqlite+s3" => Backends {
                postgres: false,
                s3: true,
            },
            "postgres+s3" => Backends {
                postgres: true,
                s3: true,
            },
            other => panic!(
                "KURA_TEST_BACKEND={other:?}: expected sqlite+fs, postgres+fs, sqlite+s3 or postgres+s3"
            ),
        }
    }

    /// True when blobs live in the data directory (tests may then inspect files).
    pub fn blobs_on_disk(&self) -> bool {
        !self.s3
    }

    /// Command-line flags selecting the backends. Names of the database and the S3 prefix are
    /// kept in `DATA_DIR/.test-backends`, so a restart over the same data dir (or a replica
    /// given the same dir's names via [`Backends::share`]) reuses them.
    pub fn args_for(&self, data_dir: &Path) -> Vec<String> {
        let names_file = data_dir.join(".test-backends");
        let (db, prefix) = match std::fs::read_to_string(&names_file) {
            Ok(s) => {
                let mut it = s.lines().map(str::to_string);
                (it.next().unwrap_or_default(), it.next().unwrap_or_default())
            }
            Err(_) => {
                let id: u64 = rand::random();
                let names = (format!("kura_test_{id:016x}"), format!("t{id:016x}"));
                std::fs::write(&names_file, format!("{}\n{}\n", names.0, names.1))
                    .expect("write backend names");
                names
            }
        };
        let mut args = Vec::new();
        if self.postgres {
            let base = required_env("KURA_TEST_PG_URL");
            create_database(&base, &db);
            args.push("--metadata-url".to_string());
            args.push(format!("{}/{db}", base.trim_end_matches('/')));
        }
        if self.s3 {
            args.extend(
                [
                    "--storage-backend",
                    "s3",
                    "--s3-endpoint",
                    &required_env("KURA_TEST_S3_ENDPOINT"),
                    "--s3-bucket",
                    &required_env("KURA_TEST_S3_BUCKET"),
                    "--s3-region",
                    "us-east-1",
                    "--s3-prefix",
                    &prefix,
                    // Explicit credentials, so the server never falls back to the (non-loopback)
                    // instance metadata service.
                    "--s3-access-key-id",
                    &required_env("AWS_ACCESS_KEY_ID"),
                    "--s3-secret-access-key",
                    &required_env("AWS_SECRET_ACCESS_KEY"),
                ]
                .map(str::to_string),
            );
        }
        args
    }

    /// Drops the database and removes the S3 prefix named in `data_dir` (best effort; the
    /// S3 objects are removed where s3s-fs keeps them, `KURA_TEST_S3_DIR`).
    pub fn remove_backing_data(&self, data_dir: &Path) {
        let Ok(names) = std::fs::read_to_string(data_dir.join(".test-backends")) else {
            return;
        };
        let mut it = names.lines();
        let (db, prefix) = (it.next().unwrap_or(""), it.next().unwrap_or(""));
        if self.postgres
            && !db.is_empty()
            && let Ok(base) = std::env::var("KURA_TEST_PG_URL")
        {
            let admin = format!("{}/postgres", base.trim_end_matches('/'));
            let _ = Command::new("psql")
                .args([
                    &admin,
                    "-qc",
                    &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
                ])
                .output();
        }
        if self.s3
            && !prefix.is_empty()
            && let Ok(dir) = std::env::var("KURA_TEST_S3_DIR")
        {
            let _ = std::fs::remove_dir_all(Path::new(&dir).join(prefix));
        }
    }

    /// Makes `other_dir` use the same database and S3 prefix as `data_dir` (replicas).
    pub fn share(data_dir: &Path, other_dir: &Path) {
        std::fs::create_dir_all(other_dir).expect("create data dir");
        std::fs::copy(
            data_dir.join(".test-backends"),
            other_dir.join(".test-backends"),
        )
        .expect("share backend names");
    }
}

fn required_env(key: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| {
        panic!("{key} is not set: KURA_TEST_BACKEND needs it (scripts/test sets it up)")
    })
}

/// Creates database `name` on the server at `base` if it does not exist (psql is the client).
fn create_database(base: &str, name: &str) {
    let admin = format!("{}/postgres", base.trim_end_matches('/'));
    let exists = Command::new("psql")
        .args([
            &admin,
            "-tAc",
            &format!("SELECT 1 FROM pg_database WHERE datname = '{name}'"),
        ])
        .output()
        .expect("run psql");
    assert!(
        exists.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&exists.stderr)
    );
    if String::from_utf8_lossy(&exists.stdout).trim() != "1" {
        let out = Command::new("psql")
            .args([&admin, "-c", &format!("CREATE DATABASE {name}")])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "CREATE DATABASE failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn proc_status_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("field in /proc status")
}

/// Waits (bounded) until `f` returns true.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}
