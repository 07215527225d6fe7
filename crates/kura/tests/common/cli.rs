//! Running the `kura` client commands as a user would, and the reference registry (Debian's
//! `docker-registry`, distribution 2.8) they are also checked against.
//!
//! Every [`Cli`] has its own docker config directory, HOME and XDG_RUNTIME_DIR, so no test
//! reads or writes the real user's credentials and tests never see each other's logins.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// A client "user": its own home, docker config and runtime directory.
pub struct Cli {
    pub home: tempfile::TempDir,
}

impl Default for Cli {
    fn default() -> Self {
        Self::new()
    }
}

impl Cli {
    pub fn new() -> Cli {
        let home = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(home.path().join(".docker")).expect("docker dir");
        std::fs::create_dir_all(home.path().join("run")).expect("runtime dir");
        Cli { home }
    }

    /// `$DOCKER_CONFIG` of this user.
    pub fn docker_config_dir(&self) -> PathBuf {
        self.home.path().join(".docker")
    }

    pub fn docker_config_file(&self) -> PathBuf {
        self.docker_config_dir().join("config.json")
    }

    /// `$XDG_RUNTIME_DIR` of this user (podman and skopeo keep `containers/auth.json` there).
    pub fn runtime_dir(&self) -> PathBuf {
        self.home.path().join("run")
    }

    /// Sets this user's environment on any command (kura, skopeo, podman).
    pub fn env(&self, cmd: &mut Command) {
        cmd.env("HOME", self.home.path())
            .env("DOCKER_CONFIG", self.docker_config_dir())
            .env("XDG_RUNTIME_DIR", self.runtime_dir())
            .env_remove("REGISTRY_AUTH_FILE")
            .env_remove("KURA_REGISTRY")
            .env_remove("KURA_INSECURE")
            .env_remove("KURA_CA_FILE")
            .env_remove("KURA_AUTHFILE")
            .env_remove("RUST_LOG");
    }

    /// `kura ARGS...` with this user's environment.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kura"));
        cmd.args(args).stdin(Stdio::null());
        self.env(&mut cmd);
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run kura")
    }

    /// Runs `kura ARGS...`, asserts success, returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "kura {} failed ({:?}):\nstdout: {}\nstderr: {}",
            args.join(" "),
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 stdout")
    }

    /// Runs `kura ARGS...`, asserts it failed with `code`, returns stderr.
    pub fn fails(&self, args: &[&str], code: i32) -> String {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "kura {}: expected exit {code}\nstdout: {}\nstderr: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stderr).expect("utf-8 stderr")
    }

    /// `kura login HOST -u USER --password-stdin` with the password piped in.
    pub fn login(&self, host: &str, user: &str, password: &str) -> Output {
        use std::io::Write;
        let mut child = self
            .cmd(&["login", host, "-u", user, "--password-stdin"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kura login");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(format!("{password}\n").as_bytes())
            .expect("write password");
        child.wait_with_output().expect("kura login")
    }
}

/// A free loopback port (bound, then released for the server to take).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A running `docker-registry` (the reference implementation) on loopback, deletes enabled.
pub struct ReferenceRegistry {
    child: Child,
    /// `127.0.0.1:PORT`
    pub addr: String,
    pub dir: tempfile::TempDir,
}

impl ReferenceRegistry {
    pub fn start() -> ReferenceRegistry {
        let dir = tempfile::tempdir().expect("tempdir");
        for _ in 0..5 {
            let port = free_port();
            let addr = format!("127.0.0.1:{port}");
            let config = dir.path().join("config.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n\
                     storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                     http:\n  addr: {addr}\n",
                    dir.path().join("data").display()
                ),
            )
            .expect("write config");
            let mut child = Command::new(reference_registry_binary())
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn docker-registry");
            if wait_for_v2(&addr, &mut child) {
                return ReferenceRegistry { child, addr, dir };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("docker-registry did not start");
    }
}

impl Drop for ReferenceRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn reference_registry_binary() -> &'static str {
    "/usr/bin/docker-registry"
}

/// Polls `GET /v2/` (bounded) until it answers; false if the process died or time ran out.
fn wait_for_v2(addr: &str, child: &mut Child) -> bool {
    for _ in 0..100 {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if let Ok(mut s) = std::net::TcpStream::connect(addr) {
            use std::io::{Read, Write};
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let req = format!("GET /v2/ HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
            if s.write_all(req.as_bytes()).is_ok() {
                let mut buf = [0u8; 12];
                if s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.1 200") {
                    return true;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// Runs a command, asserts success, returns stdout.
pub fn run_ok(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({:?}):\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `oci:` location string of a layout directory.
pub fn oci(dir: &Path, tag: &str) -> String {
    format!("oci:{}:{tag}", dir.display())
}
