//! Test harness shared by the integration tests: starts the real `kura` binary on a loopback port
//! with a fresh data directory, and stops it when dropped. Tests talk to it over real HTTP only.
#![allow(dead_code)]

pub mod oci_layout;

pub mod api;

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
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kura"));
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data_dir)
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
