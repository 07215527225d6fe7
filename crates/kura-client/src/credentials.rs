//! The docker CLI config file (`config.json`) and the credentials in it: where the file lives,
//! the `auths` map, and the `credsStore` / `credHelpers` credential helpers, read and written
//! the way docker, skopeo and podman do, so a `kura login` is seen by `docker pull` and a
//! `docker login` by `kura`. Reading also falls back to the containers `auth.json` files that
//! podman and skopeo write; those are never written here.
//!
//! The parsed file is kept as a [`serde_json::Value`] and only the entries this module owns are
//! touched, so settings it does not know (`HttpHeaders`, `proxies`, `currentContext`, fields
//! inside `auths` entries, ...) survive a `kura login`.

use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::{ClientError, Result};
use crate::reference::{DOCKER_HUB, normalise_host};

/// The key docker uses for Docker Hub in `auths` and with credential helpers; other tools
/// only find a Hub login under this spelling.
const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";
/// The username credential helpers use to say the secret is an identity (refresh) token.
const TOKEN_USERNAME: &str = "<token>";
const HELPER_PREFIX: &str = "docker-credential-";
/// What helpers built on docker-credential-helpers print when they have no entry.
const HELPER_NOT_FOUND: &str = "credentials not found";
/// Fields of an `auths` entry that hold a credential; everything else in an entry is kept.
const CREDENTIAL_FIELDS: [&str; 5] = [
    "auth",
    "identitytoken",
    "username",
    "password",
    "registrytoken",
];

/// A username and secret for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub username: String,
    /// The password, or an identity token when the username is `<token>`.
    pub secret: String,
}

impl Credential {
    /// Whether the secret is an identity (OAuth refresh) token rather than a password, which
    /// changes how it is exchanged for a registry token.
    pub fn is_identity_token(&self) -> bool {
        self.username == TOKEN_USERNAME
    }
}

// By hand so that logging a credential (or anything holding one) never leaks the secret.
impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("username", &self.username)
            .field("secret", &format_args!("<redacted>"))
            .finish()
    }
}

/// A docker config file, loaded (or empty when it does not exist yet).
#[derive(Clone)]
pub struct DockerConfig {
    path: PathBuf,
    /// Always a JSON object.
    doc: Value,
    /// Searched for `docker-credential-*` before `PATH`.
    helper_dir: Option<PathBuf>,
    /// The containers `auth.json` files consulted, in order, when this file has nothing.
    fallbacks: Vec<PathBuf>,
}

// By hand because the document holds the base64 passwords.
impl fmt::Debug for DockerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DockerConfig")
            .field("path", &self.path)
            .field("registries", &self.registries())
            .field("helper_dir", &self.helper_dir)
            .field("fallbacks", &self.fallbacks)
            .finish_non_exhaustive()
    }
}

impl DockerConfig {
    /// `$DOCKER_CONFIG/config.json`, else `$HOME/.docker/config.json`, as docker resolves it.
    pub fn default_path() -> Result<PathBuf> {
        default_path_from(env_var("DOCKER_CONFIG"), env_var("HOME"))
    }

    /// Loads the file at `path`; a missing (or empty) file is an empty config, which is created
    /// on the first store. Reads fall back to the containers `auth.json` files named by
    /// `REGISTRY_AUTH_FILE`, `XDG_RUNTIME_DIR` and `HOME` (see
    /// [`with_fallback_auth_files`](Self::with_fallback_auth_files) to choose others).
    pub fn load(path: &Path) -> Result<DockerConfig> {
        let doc = read_document(path)?.unwrap_or_else(|| Value::Object(Map::new()));
        Ok(DockerConfig {
            path: path.to_path_buf(),
            doc,
            helper_dir: None,
            fallbacks: fallback_paths_from(
                env_var("REGISTRY_AUTH_FILE"),
                env_var("XDG_RUNTIME_DIR"),
                env_var("HOME"),
            ),
        })
    }

    /// Loads the file at [`default_path`](Self::default_path).
    pub fn load_default() -> Result<DockerConfig> {
        Self::load(&Self::default_path()?)
    }

    /// Looks for `docker-credential-<name>` in `dir` before `PATH`, and puts `dir` first on the
    /// helper's own `PATH`. For tests and bundled helpers: changing the process-wide `PATH`
    /// would race with other threads.
    pub fn with_helper_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.helper_dir = Some(dir.into());
        self
    }

    /// Replaces the containers `auth.json` files read when this config has nothing for a
    /// registry (an empty list turns the fallback off).
    pub fn with_fallback_auth_files(mut self, files: Vec<PathBuf>) -> Self {
        self.fallbacks = files;
        self
    }

    /// The config file's path (it may not exist yet).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The credential helper for `registry`: its `credHelpers` entry, else `credsStore`.
    pub fn helper_for(&self, registry: &str) -> Option<String> {
        let host = key_host(registry, true)?;
        let named = self
            .doc
            .get("credHelpers")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .filter(|(key, _)| key_host(key, true).as_deref() == Some(host.as_str()))
            .find_map(|(_, name)| name.as_str().filter(|name| !name.is_empty()));
        named
            .or_else(|| {
                self.doc
                    .get("credsStore")
                    .and_then(Value::as_str)
                    .filter(|name| !name.is_empty())
            })
            .map(str::to_string)
    }

    /// The credential for `registry` (`host[:port]`, or `docker.io`): from its helper, else
    /// `auths`, else the containers `auth.json` files. A helper that fails for any reason but
    /// "not found" is an [`ClientError::Auth`] error rather than a silent anonymous pull.
    pub fn get(&self, registry: &str) -> Result<Option<Credential>> {
        let host = registry_host(registry)?;
        if let Some(helper) = self.helper_for(&host)
            && let Some(cred) = self.helper_get(&helper, &server_key(&host))?
        {
            return Ok(Some(cred));
        }
        if let Some(cred) = lookup_auths(&self.doc, &host, true, &self.path)? {
            return Ok(Some(cred));
        }
        for file in &self.fallbacks {
            if *file == self.path {
                continue;
            }
            if let Some(doc) = read_document(file)?
                && let Some(cred) = lookup_auths(&doc, &host, false, file)?
            {
                return Ok(Some(cred));
            }
        }
        Ok(None)
    }

    /// Saves `cred` for `registry`: in its helper when one is configured (leaving docker's
    /// empty `auths` marker entry), else as an `auths` entry; then writes the file.
    pub fn store(&mut self, registry: &str, cred: &Credential) -> Result<()> {
        let host = registry_host(registry)?;
        let key = server_key(&host);
        let helper = self.helper_for(&host);
        if let Some(helper) = &helper {
            self.helper_store(helper, &key, cred)?;
        }
        // Other spellings of the same host would shadow or contradict the new entry; the
        // entry's own non-credential fields (e.g. `email`) are carried over.
        let mut entry = self
            .remove_entries(&host)
            .into_iter()
            .find_map(|(_, value)| match value {
                Value::Object(map) => Some(map),
                _ => None,
            })
            .unwrap_or_default();
        for field in CREDENTIAL_FIELDS {
            entry.remove(field);
        }
        if helper.is_none() {
            if cred.is_identity_token() {
                // containers/image ignores an entry without a decodable `auth`, so docker's
                // shape (`auth` naming the user, `identitytoken` holding the token) is kept.
                entry.insert(
                    "auth".into(),
                    STANDARD.encode(format!("{TOKEN_USERNAME}:")).into(),
                );
                entry.insert("identitytoken".into(), cred.secret.clone().into());
            } else {
                let pair = format!("{}:{}", cred.username, cred.secret);
                entry.insert("auth".into(), STANDARD.encode(pair).into());
            }
        }
        self.auths_mut().insert(key, Value::Object(entry));
        self.save()
    }

    /// Removes the credential for `registry` from its helper (if any) and every `auths` entry
    /// for its host; true if anything was removed.
    pub fn erase(&mut self, registry: &str) -> Result<bool> {
        let host = registry_host(registry)?;
        let mut removed = false;
        if let Some(helper) = self.helper_for(&host) {
            removed |= self.helper_erase(&helper, &server_key(&host))?;
        }
        if !self.remove_entries(&host).is_empty() {
            removed = true;
            self.save()?;
        }
        Ok(removed)
    }

    /// The hosts with an `auths` entry (including helper markers), normalised and sorted.
    pub fn registries(&self) -> Vec<String> {
        let mut hosts: Vec<String> = self
            .doc
            .get("auths")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .filter_map(|(key, _)| key_host(key, true))
            .collect();
        hosts.sort();
        hosts.dedup();
        hosts
    }

    fn auths_mut(&mut self) -> &mut Map<String, Value> {
        let doc = self
            .doc
            .as_object_mut()
            .expect("the config document is always an object");
        let auths = doc
            .entry("auths")
            .or_insert_with(|| Value::Object(Map::new()));
        if !auths.is_object() {
            *auths = Value::Object(Map::new());
        }
        auths.as_object_mut().expect("just made an object")
    }

    /// Removes every `auths` entry for `host`, the preferred spelling first.
    fn remove_entries(&mut self, host: &str) -> Vec<(String, Value)> {
        let Some(auths) = self.doc.get_mut("auths").and_then(Value::as_object_mut) else {
            return Vec::new();
        };
        let keys = matching_keys(auths, host, true);
        keys.into_iter()
            .filter_map(|key| auths.remove(&key).map(|value| (key, value)))
            .collect()
    }

    /// Writes the document atomically with mode 0600, creating the directory (0700) if needed.
    fn save(&self) -> Result<()> {
        // Like docker, write through a symlinked config (dotfile managers) to its target
        // rather than replacing the link with a file.
        let target = match fs::read_link(&self.path) {
            Ok(link) if link.is_relative() => self
                .path
                .parent()
                .map(|dir| dir.join(&link))
                .unwrap_or(link),
            Ok(link) => link,
            Err(_) => self.path.clone(),
        };
        let dir = match target.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        create_private_dir(&dir)?;

        let mut bytes = Vec::new();
        // Tab indentation, as docker writes the file, keeps diffs against docker's output small.
        let formatter = serde_json::ser::PrettyFormatter::with_indent(b"\t");
        let mut serializer = serde_json::Serializer::with_formatter(&mut bytes, formatter);
        self.doc
            .serialize(&mut serializer)
            .map_err(|e| ClientError::Format(format!("encoding {}: {e}", target.display())))?;
        bytes.push(b'\n');
        write_atomic(&target, &dir, &bytes)
    }

    fn helper_get(&self, helper: &str, server: &str) -> Result<Option<Credential>> {
        let stdout = match self.run_helper(helper, "get", server.as_bytes())? {
            HelperAnswer::Done(stdout) => stdout,
            HelperAnswer::NotFound => return Ok(None),
        };
        let answer: Value = match serde_json::from_slice(&stdout) {
            Ok(answer) => answer,
            Err(_) if String::from_utf8_lossy(&stdout).contains(HELPER_NOT_FOUND) => {
                return Ok(None);
            }
            // The output is not quoted: it may hold the secret.
            Err(e) => {
                return Err(ClientError::Auth(format!(
                    "credential helper {HELPER_PREFIX}{helper} answered get for {server} with invalid JSON: {e}"
                )));
            }
        };
        let text = |name: &str| {
            answer
                .get(name)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let (username, secret) = (text("Username"), text("Secret"));
        // Some helpers answer an empty credential instead of "not found".
        if secret.is_empty() {
            return Ok(None);
        }
        Ok(Some(Credential { username, secret }))
    }

    fn helper_store(&self, helper: &str, server: &str, cred: &Credential) -> Result<()> {
        let input = serde_json::json!({
            "ServerURL": server,
            "Username": cred.username,
            "Secret": cred.secret,
        });
        let input = serde_json::to_vec(&input).expect("a JSON value always encodes");
        match self.run_helper(helper, "store", &input)? {
            HelperAnswer::Done(_) => Ok(()),
            HelperAnswer::NotFound => Err(ClientError::Auth(format!(
                "credential helper {HELPER_PREFIX}{helper} failed to store the credential for {server}"
            ))),
        }
    }

    fn helper_erase(&self, helper: &str, server: &str) -> Result<bool> {
        match self.run_helper(helper, "erase", server.as_bytes())? {
            HelperAnswer::Done(_) => Ok(true),
            HelperAnswer::NotFound => Ok(false),
        }
    }

    /// Runs `docker-credential-<helper> <action>` with `input` on stdin.
    fn run_helper(&self, helper: &str, action: &str, input: &[u8]) -> Result<HelperAnswer> {
        let program_name = format!("{HELPER_PREFIX}{helper}");
        if helper.contains(['/', '\\']) {
            return Err(ClientError::Auth(format!(
                "invalid credential helper name {helper:?} in {}",
                self.path.display()
            )));
        }
        let Some(program) = self.find_helper(&program_name) else {
            return Err(ClientError::Auth(format!(
                "credential helper {program_name} (configured in {}) was not found on PATH",
                self.path.display()
            )));
        };
        let mut command = Command::new(&program);
        command
            .arg(action)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(path) = self.helper_search_path() {
            command.env("PATH", path);
        }
        let failed = |e: io::Error| {
            ClientError::Auth(format!("running credential helper {program_name}: {e}"))
        };
        let mut child = spawn(&mut command).map_err(failed)?;
        if let Some(mut stdin) = child.stdin.take() {
            // A helper may exit without reading its input; its exit status then says why.
            if let Err(e) = stdin.write_all(input)
                && e.kind() != io::ErrorKind::BrokenPipe
            {
                let _ = child.kill();
                let _ = child.wait();
                return Err(failed(e));
            }
        }
        let output = child.wait_with_output().map_err(failed)?;
        if output.status.success() {
            return Ok(HelperAnswer::Done(output.stdout));
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stdout.contains(HELPER_NOT_FOUND) || stderr.contains(HELPER_NOT_FOUND) {
            return Ok(HelperAnswer::NotFound);
        }
        // docker-credential-helpers report errors on stdout, others on stderr.
        let message = match stderr.trim() {
            "" => stdout.trim(),
            stderr => stderr,
        };
        Err(ClientError::Auth(format!(
            "credential helper {program_name} {action} failed ({}): {message}",
            output.status
        )))
    }

    fn find_helper(&self, program_name: &str) -> Option<PathBuf> {
        let path_dirs = std::env::var_os("PATH")
            .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
            .unwrap_or_default();
        self.helper_dir
            .iter()
            .cloned()
            .chain(path_dirs)
            .flat_map(|dir| {
                let plain = dir.join(program_name);
                let exe = cfg!(windows).then(|| dir.join(format!("{program_name}.exe")));
                std::iter::once(plain).chain(exe)
            })
            .find(|candidate| is_executable(candidate))
    }

    fn helper_search_path(&self) -> Option<OsString> {
        let dir = self.helper_dir.clone()?;
        let rest = std::env::var_os("PATH")
            .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
            .unwrap_or_default();
        std::env::join_paths(std::iter::once(dir).chain(rest)).ok()
    }
}

enum HelperAnswer {
    /// Exit status 0, with the helper's stdout.
    Done(Vec<u8>),
    /// The helper has no credential for the server.
    NotFound,
}

fn spawn(command: &mut Command) -> io::Result<std::process::Child> {
    // Executing a script just written can fail with ETXTBSY while another thread's fork still
    // holds the write descriptor; it clears within moments.
    let mut attempts = 0;
    loop {
        match command.spawn() {
            Err(e) if e.kind() == io::ErrorKind::ExecutableFileBusy && attempts < 20 => {
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            result => return result,
        }
    }
}

fn is_executable(path: &Path) -> bool {
    let Ok(meta) = fs::metadata(path) else {
        return false;
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        meta.is_file() && meta.permissions().mode() & 0o111 != 0
    }
    #[cfg(not(unix))]
    {
        meta.is_file()
    }
}

/// A set, non-empty environment variable (docker treats empty as unset).
fn env_var(name: &str) -> Option<OsString> {
    std::env::var_os(name).filter(|value| !value.is_empty())
}

fn default_path_from(docker_config: Option<OsString>, home: Option<OsString>) -> Result<PathBuf> {
    if let Some(dir) = docker_config.filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(dir).join("config.json"));
    }
    if let Some(home) = home.filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(home).join(".docker").join("config.json"));
    }
    Err(ClientError::Usage(
        "cannot locate the docker config file: neither DOCKER_CONFIG nor HOME is set".into(),
    ))
}

/// The containers `auth.json` files, in the order they are consulted.
fn fallback_paths_from(
    registry_auth_file: Option<OsString>,
    xdg_runtime_dir: Option<OsString>,
    home: Option<OsString>,
) -> Vec<PathBuf> {
    let nonempty = |v: &OsString| !v.is_empty();
    let mut paths = Vec::new();
    if let Some(file) = registry_auth_file.filter(nonempty) {
        paths.push(PathBuf::from(file));
    }
    if let Some(dir) = xdg_runtime_dir.filter(nonempty) {
        paths.push(PathBuf::from(dir).join("containers").join("auth.json"));
    }
    if let Some(home) = home.filter(nonempty) {
        paths.push(
            PathBuf::from(home)
                .join(".config")
                .join("containers")
                .join("auth.json"),
        );
    }
    paths
}

/// Reads a JSON object from `path`; `None` when the file is missing or empty (docker accepts
/// an empty file).
fn read_document(path: &Path) -> Result<Option<Value>> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ClientError::io(format!("reading {}", path.display()))(e)),
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let doc: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ClientError::Format(format!("{}: invalid JSON: {e}", path.display())))?;
    if !doc.is_object() {
        return Err(ClientError::Format(format!(
            "{}: not a JSON object",
            path.display()
        )));
    }
    Ok(Some(doc))
}

/// The registry host an `auths` / `credHelpers` key (or a registry argument) names.
///
/// Docker reads every key as a host, dropping any scheme and path (`strip_path`). The
/// containers `auth.json` format also has namespaced keys (`host/namespace/repo`) that only
/// apply to some repositories; without `strip_path` those give `None`, while URL keys
/// (`https://host/v1/`) are still read as their host, as containers/image does.
fn key_host(key: &str, strip_path: bool) -> Option<String> {
    let key = key.trim();
    let (rest, had_scheme) = match strip_prefix_ignore_case(key, "https://")
        .or_else(|| strip_prefix_ignore_case(key, "http://"))
    {
        Some(rest) => (rest, true),
        None => (key, false),
    };
    let host = if had_scheme || strip_path {
        rest.split('/').next().unwrap_or_default()
    } else {
        let rest = rest.trim_end_matches('/');
        if rest.contains('/') {
            return None;
        }
        rest
    };
    if host.is_empty() {
        return None;
    }
    Some(normalise_host(&host.to_ascii_lowercase()))
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

fn registry_host(registry: &str) -> Result<String> {
    key_host(registry, true)
        .ok_or_else(|| ClientError::Usage(format!("invalid registry name {registry:?}")))
}

/// The key docker uses for `host` in `auths` and with helpers.
fn server_key(host: &str) -> String {
    if host == DOCKER_HUB {
        DOCKER_HUB_KEY.to_string()
    } else {
        host.to_string()
    }
}

/// The keys of `auths` that name `host`: the spelling docker writes first, then the bare
/// host, then any others in map order.
fn matching_keys(auths: &Map<String, Value>, host: &str, strip_path: bool) -> Vec<String> {
    let preferred = [server_key(host), host.to_string()];
    let mut keys: Vec<String> = auths
        .keys()
        .filter(|key| key_host(key, strip_path).as_deref() == Some(host))
        .cloned()
        .collect();
    keys.sort_by_key(|key| {
        preferred
            .iter()
            .position(|p| p == key)
            .unwrap_or(preferred.len())
    });
    keys
}

fn lookup_auths(
    doc: &Value,
    host: &str,
    strip_path: bool,
    file: &Path,
) -> Result<Option<Credential>> {
    let Some(auths) = doc.get("auths").and_then(Value::as_object) else {
        return Ok(None);
    };
    for key in matching_keys(auths, host, strip_path) {
        if let Some(cred) = parse_entry(&auths[&key], &key, file)? {
            return Ok(Some(cred));
        }
    }
    Ok(None)
}

/// The credential in one `auths` entry; `None` for a helper marker (`{}`) or an entry without
/// a usable credential.
fn parse_entry(entry: &Value, key: &str, file: &Path) -> Result<Option<Credential>> {
    let Some(entry) = entry.as_object() else {
        return Ok(None);
    };
    let text = |name: &str| entry.get(name).and_then(Value::as_str).unwrap_or_default();

    let token = text("identitytoken");
    if !token.is_empty() {
        return Ok(Some(Credential {
            username: TOKEN_USERNAME.into(),
            secret: token.into(),
        }));
    }

    let auth = text("auth").trim();
    if !auth.is_empty() {
        let bad = |what: &str| {
            // The value is not quoted: it is the password.
            ClientError::Format(format!(
                "{}: the \"auth\" field of the entry for {key} is not {what}",
                file.display()
            ))
        };
        let decoded = STANDARD
            .decode(auth)
            .or_else(|_| STANDARD_NO_PAD.decode(auth))
            .map_err(|_| bad("valid base64"))?;
        let decoded = String::from_utf8(decoded).map_err(|_| bad("UTF-8"))?;
        // Without a colon docker and containers/image skip the entry rather than fail.
        if let Some((username, password)) = decoded.split_once(':') {
            let password = password.trim_matches('\0');
            if !username.is_empty() || !password.is_empty() {
                return Ok(Some(Credential {
                    username: username.into(),
                    secret: password.into(),
                }));
            }
        }
    }

    let (username, password) = (text("username"), text("password"));
    if !username.is_empty() && !password.is_empty() {
        return Ok(Some(Credential {
            username: username.into(),
            secret: password.into(),
        }));
    }
    Ok(None)
}

fn create_private_dir(dir: &Path) -> Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(dir)
        .map_err(ClientError::io(format!("creating {}", dir.display())))
}

/// Replaces `target` with `bytes` via a temporary file in `dir`, so a crash never leaves a
/// truncated config and readers see the old or the new file, never half of one.
fn write_atomic(target: &Path, dir: &Path, bytes: &[u8]) -> Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = target
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "config.json".into());
    let context = || format!("writing {}", target.display());

    let (tmp, mut file) = loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}.tmp-{}-{n}", std::process::id()));
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        match options.open(&tmp) {
            Ok(file) => break (tmp, file),
            // A leftover from a crashed process with the same pid.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 1_000_000 => continue,
            Err(e) => return Err(ClientError::io(context())(e)),
        }
    };
    let written = (|| {
        // The umask could have stripped bits the mode asked for; the result must be 0600.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(fs::Permissions::from_mode(0o600))?;
        }
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, target)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(ClientError::io(context())(e));
    }
    // Makes the rename itself durable; not every platform can open a directory.
    if let Ok(dir) = fs::File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cred(username: &str, secret: &str) -> Credential {
        Credential {
            username: username.into(),
            secret: secret.into(),
        }
    }

    /// A config at `dir/config.json` that never reads the real containers auth files.
    fn load(path: &Path) -> DockerConfig {
        DockerConfig::load(path)
            .unwrap()
            .with_fallback_auth_files(Vec::new())
    }

    fn write_json(path: &Path, value: &Value) {
        fs::write(path, serde_json::to_vec_pretty(value).unwrap()).unwrap();
    }

    fn read_json(path: &Path) -> Value {
        serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
    }

    fn b64(text: &str) -> String {
        STANDARD.encode(text)
    }

    /// Writes `docker-credential-<name>` into `dir`: a real helper speaking the
    /// docker-credential-helpers protocol, keeping one JSON file per server in `store`.
    #[cfg(unix)]
    fn write_helper(dir: &Path, name: &str, store: &Path) {
        use std::os::unix::fs::PermissionsExt;
        fs::create_dir_all(store).unwrap();
        let script = format!(
            r#"#!/bin/sh
store='{store}'
file_for() {{ printf '%s/%s.json' "$store" "$(printf '%s' "$1" | tr -c 'A-Za-z0-9.-' '_')"; }}
case "$1" in
get)
    server=$(cat)
    file=$(file_for "$server")
    if [ -f "$file" ]; then cat "$file"; else echo "credentials not found in native keychain"; exit 1; fi
    ;;
store)
    payload=$(cat)
    server=$(printf '%s' "$payload" | sed -n 's/.*"ServerURL":"\([^"]*\)".*/\1/p')
    if [ -z "$server" ]; then echo "no ServerURL in input" >&2; exit 1; fi
    printf '%s' "$payload" > "$(file_for "$server")"
    ;;
erase)
    server=$(cat)
    file=$(file_for "$server")
    if [ -f "$file" ]; then rm "$file"; else echo "credentials not found in native keychain"; exit 1; fi
    ;;
*)
    echo "unknown action $1" >&2; exit 1
    ;;
esac
"#,
            store = store.display()
        );
        let path = dir.join(format!("{HELPER_PREFIX}{name}"));
        fs::write(&path, script).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// The file the test helper keeps for `server`.
    fn helper_entry(store: &Path, server: &str) -> PathBuf {
        let name: String = server
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        store.join(format!("{name}.json"))
    }

    #[test]
    fn round_trip_store_get_erase() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let mut config = load(&path);
        assert_eq!(config.get("127.0.0.1:5000").unwrap(), None);

        config
            .store("127.0.0.1:5000", &cred("alice", "pa:ss"))
            .unwrap();
        let doc = read_json(&path);
        assert_eq!(
            doc["auths"]["127.0.0.1:5000"],
            json!({"auth": b64("alice:pa:ss")})
        );

        let reloaded = load(&path);
        assert_eq!(
            reloaded.get("127.0.0.1:5000").unwrap(),
            Some(cred("alice", "pa:ss"))
        );
        assert_eq!(reloaded.registries(), vec!["127.0.0.1:5000".to_string()]);

        let mut reloaded = reloaded;
        assert!(reloaded.erase("127.0.0.1:5000").unwrap());
        assert_eq!(load(&path).get("127.0.0.1:5000").unwrap(), None);
        assert!(!reloaded.erase("127.0.0.1:5000").unwrap());
        assert_eq!(read_json(&path)["auths"], json!({}));
    }

    #[test]
    fn reads_config_written_by_docker() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let text = format!(
            "{{\n\t\"auths\": {{\n\t\t\"https://index.docker.io/v1/\": {{\n\t\t\t\"auth\": \"{hub}\"\n\t\t}},\n\t\t\"http://reg.local:5000\": {{\n\t\t\t\"auth\": \"{local}\"\n\t\t}},\n\t\t\"https://ghcr.io/v2/\": {{\n\t\t\t\"auth\": \"{ghcr}\"\n\t\t}}\n\t}}\n}}",
            hub = b64("hubuser:hubpass"),
            local = b64("bob:secret"),
            ghcr = b64("carol:ghp_x"),
        );
        fs::write(&path, text).unwrap();
        let config = load(&path);

        let hub = Some(cred("hubuser", "hubpass"));
        assert_eq!(config.get("docker.io").unwrap(), hub);
        assert_eq!(config.get("index.docker.io").unwrap(), hub);
        assert_eq!(config.get("registry-1.docker.io").unwrap(), hub);
        assert_eq!(
            config.get("reg.local:5000").unwrap(),
            Some(cred("bob", "secret"))
        );
        assert_eq!(config.get("ghcr.io").unwrap(), Some(cred("carol", "ghp_x")));
        assert_eq!(config.get("reg.local").unwrap(), None);
        assert_eq!(
            config.registries(),
            vec!["docker.io", "ghcr.io", "reg.local:5000"]
        );
    }

    #[test]
    fn store_for_docker_hub_uses_dockers_key_and_replaces_other_spellings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        write_json(
            &path,
            &json!({"auths": {
                "docker.io": {"auth": b64("old:old")},
                "index.docker.io": {"auth": b64("older:older")},
                "quay.io": {"auth": b64("q:q")},
            }}),
        );
        let mut config = load(&path);
        config.store("docker.io", &cred("new", "pw")).unwrap();
        assert_eq!(
            read_json(&path)["auths"],
            json!({
                "https://index.docker.io/v1/": {"auth": b64("new:pw")},
                "quay.io": {"auth": b64("q:q")},
            })
        );
        assert_eq!(
            load(&path).get("docker.io").unwrap(),
            Some(cred("new", "pw"))
        );
    }

    #[test]
    fn store_preserves_unknown_keys_and_other_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let original = json!({
            "auths": {
                "http://reg.local:5000": {"auth": b64("a:b"), "email": "a@example.com", "x-extra": [1, 2]},
                "quay.io": {"auth": b64("q:q"), "note": {"deep": true}},
            },
            "HttpHeaders": {"User-Agent": "Docker-Client/24.0"},
            "proxies": {"default": {"httpProxy": "http://proxy:3128", "noProxy": "*.local"}},
            "currentContext": "desktop-linux",
            "plugins": {"-x-cli-hints": {"enabled": "true"}},
            "detachKeys": "ctrl-e,e",
        });
        write_json(&path, &original);
        let mut config = load(&path);
        config.store("reg.local:5000", &cred("new", "pw")).unwrap();

        let mut expected = original.clone();
        let auths = expected["auths"].as_object_mut().unwrap();
        auths.remove("http://reg.local:5000");
        auths.insert(
            "reg.local:5000".into(),
            json!({"auth": b64("new:pw"), "email": "a@example.com", "x-extra": [1, 2]}),
        );
        assert_eq!(read_json(&path), expected);

        config.erase("reg.local:5000").unwrap();
        expected["auths"]
            .as_object_mut()
            .unwrap()
            .remove("reg.local:5000");
        assert_eq!(read_json(&path), expected);
    }

    #[cfg(unix)]
    #[test]
    fn creates_private_directory_and_file_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir
            .path()
            .join("nested")
            .join(".docker")
            .join("config.json");
        let mut config = load(&path);
        config.store("reg.local", &cred("u", "p")).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);

        // An existing looser file is tightened by the rewrite.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        config.store("reg.local", &cred("u", "p2")).unwrap();
        assert_eq!(mode(&path), 0o600);
        // No temporary files left behind.
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("config.json")]);
    }

    #[cfg(unix)]
    #[test]
    fn writes_through_a_symlinked_config() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("dotfiles-config.json");
        write_json(&real, &json!({"currentContext": "x"}));
        let link = dir.path().join("config.json");
        std::os::unix::fs::symlink("dotfiles-config.json", &link).unwrap();
        load(&link).store("reg.local", &cred("u", "p")).unwrap();
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(read_json(&real)["auths"]["reg.local"]["auth"], b64("u:p"));
        assert_eq!(read_json(&real)["currentContext"], "x");
    }

    #[test]
    fn identity_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let token = cred("<token>", "refresh-token-value");
        assert!(token.is_identity_token());
        assert!(!cred("alice", "pw").is_identity_token());

        let mut config = load(&path);
        config.store("reg.example.com", &token).unwrap();
        assert_eq!(
            read_json(&path)["auths"]["reg.example.com"],
            json!({"auth": b64("<token>:"), "identitytoken": "refresh-token-value"})
        );
        let got = load(&path).get("reg.example.com").unwrap().unwrap();
        assert_eq!(got, token);
        assert!(got.is_identity_token());

        // docker's own shape after an OAuth login: the user in `auth`, the token beside it.
        write_json(
            &path,
            &json!({"auths": {"reg.example.com": {"auth": b64("alice:"), "identitytoken": "tok"}}}),
        );
        assert_eq!(
            load(&path).get("reg.example.com").unwrap(),
            Some(cred("<token>", "tok"))
        );

        // Storing a password afterwards drops the stale token.
        let mut config = load(&path);
        config
            .store("reg.example.com", &cred("alice", "pw"))
            .unwrap();
        assert_eq!(
            read_json(&path)["auths"]["reg.example.com"],
            json!({"auth": b64("alice:pw")})
        );
    }

    #[test]
    fn entries_with_separate_username_and_password() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        write_json(
            &path,
            &json!({"auths": {
                "reg.a": {"username": "ua", "password": "pa"},
                "reg.b": {},
                "reg.c": {"auth": b64("nocolon")},
                "reg.d": {"auth": "%%%not base64"},
            }}),
        );
        let config = load(&path);
        assert_eq!(config.get("reg.a").unwrap(), Some(cred("ua", "pa")));
        assert_eq!(config.get("reg.b").unwrap(), None);
        assert_eq!(config.get("reg.c").unwrap(), None);
        let err = config.get("reg.d").unwrap_err();
        assert!(matches!(err, ClientError::Format(_)), "{err:?}");
        assert!(err.to_string().contains("config.json"), "{err}");
        assert!(!err.to_string().contains("%%%"), "{err}");
    }

    #[test]
    fn debug_hides_the_secret() {
        let shown = format!("{:?}", cred("alice", "hunter2"));
        assert!(shown.contains("alice"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let mut config = load(&path);
        config
            .store("reg.local", &cred("alice", "hunter2"))
            .unwrap();
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains(&b64("alice:hunter2")), "{shown}");
    }

    #[test]
    fn missing_empty_and_invalid_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let config = load(&path);
        assert_eq!(config.path(), path);
        assert!(config.registries().is_empty());
        assert!(!path.exists(), "loading must not create the file");

        fs::write(&path, "  \n").unwrap();
        assert!(load(&path).registries().is_empty());

        fs::write(&path, "{\"auths\": {").unwrap();
        let err = DockerConfig::load(&path).unwrap_err();
        assert!(matches!(err, ClientError::Format(_)), "{err:?}");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );

        fs::write(&path, "[]").unwrap();
        assert!(matches!(
            DockerConfig::load(&path),
            Err(ClientError::Format(_))
        ));
    }

    #[test]
    fn default_path_from_env() {
        assert_eq!(
            default_path_from(Some("/cfg".into()), Some("/home/u".into())).unwrap(),
            PathBuf::from("/cfg/config.json")
        );
        assert_eq!(
            default_path_from(Some("".into()), Some("/home/u".into())).unwrap(),
            PathBuf::from("/home/u/.docker/config.json")
        );
        assert_eq!(
            default_path_from(None, Some("/home/u".into())).unwrap(),
            PathBuf::from("/home/u/.docker/config.json")
        );
        assert!(matches!(
            default_path_from(None, None),
            Err(ClientError::Usage(_))
        ));
    }

    #[test]
    fn fallback_paths_from_env() {
        assert_eq!(
            fallback_paths_from(
                Some("/auth.json".into()),
                Some("/run/user/1000".into()),
                Some("/home/u".into())
            ),
            vec![
                PathBuf::from("/auth.json"),
                PathBuf::from("/run/user/1000/containers/auth.json"),
                PathBuf::from("/home/u/.config/containers/auth.json"),
            ]
        );
        assert_eq!(
            fallback_paths_from(None, Some("".into()), Some("/home/u".into())),
            vec![PathBuf::from("/home/u/.config/containers/auth.json")]
        );
        assert!(fallback_paths_from(None, None, None).is_empty());
    }

    #[test]
    fn key_hosts() {
        assert_eq!(key_host("127.0.0.1:5000", true).unwrap(), "127.0.0.1:5000");
        assert_eq!(
            key_host("https://index.docker.io/v1/", true).unwrap(),
            "docker.io"
        );
        assert_eq!(
            key_host("HTTP://Reg.Local:5000", true).unwrap(),
            "reg.local:5000"
        );
        assert_eq!(key_host("reg.local/team/app", true).unwrap(), "reg.local");
        assert_eq!(key_host("reg.local/team/app", false), None);
        assert_eq!(
            key_host("https://reg.local/v2/", false).unwrap(),
            "reg.local"
        );
        assert_eq!(key_host("docker.io", false).unwrap(), "docker.io");
        assert_eq!(key_host("", true), None);
        assert_eq!(key_host("https://", true), None);
    }

    #[test]
    fn helper_for_prefers_cred_helpers_over_creds_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        write_json(
            &path,
            &json!({"credsStore": "desktop", "credHelpers": {"gcr.io": "gcloud", "https://index.docker.io/v1/": "hub", "reg.empty": ""}}),
        );
        let config = load(&path);
        assert_eq!(config.helper_for("gcr.io").as_deref(), Some("gcloud"));
        assert_eq!(config.helper_for("docker.io").as_deref(), Some("hub"));
        assert_eq!(config.helper_for("quay.io").as_deref(), Some("desktop"));
        assert_eq!(config.helper_for("reg.empty").as_deref(), Some("desktop"));

        write_json(
            &path,
            &json!({"credsStore": "", "credHelpers": {"gcr.io": "gcloud"}}),
        );
        let config = load(&path);
        assert_eq!(config.helper_for("quay.io"), None);
        assert_eq!(config.helper_for("gcr.io").as_deref(), Some("gcloud"));
    }

    #[cfg(unix)]
    #[test]
    fn cred_helpers_store_get_erase_with_a_real_helper() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        let store = dir.path().join("keychain");
        fs::create_dir_all(&bin).unwrap();
        write_helper(&bin, "testhelper", &store);
        let path = dir.path().join("config.json");
        write_json(
            &path,
            &json!({
                "auths": {"http://reg.local:5000": {"auth": b64("plain:text")}},
                "credHelpers": {"reg.local:5000": "testhelper"},
            }),
        );

        let mut config = load(&path).with_helper_dir(&bin);
        config
            .store("reg.local:5000", &cred("alice", "s3cret"))
            .unwrap();
        // The secret lives only in the helper; docker's empty marker stays in `auths`.
        let doc = read_json(&path);
        assert_eq!(doc["auths"], json!({"reg.local:5000": {}}));
        assert!(
            !fs::read_to_string(&path)
                .unwrap()
                .contains(&b64("alice:s3cret"))
        );
        let kept = read_json(&helper_entry(&store, "reg.local:5000"));
        assert_eq!(
            kept,
            json!({"ServerURL": "reg.local:5000", "Username": "alice", "Secret": "s3cret"})
        );

        let reloaded = load(&path).with_helper_dir(&bin);
        assert_eq!(
            reloaded.get("reg.local:5000").unwrap(),
            Some(cred("alice", "s3cret"))
        );
        assert_eq!(reloaded.registries(), vec!["reg.local:5000"]);
        // Hosts without a helper still use `auths`.
        assert_eq!(reloaded.get("other.local").unwrap(), None);

        let mut reloaded = reloaded;
        assert!(reloaded.erase("reg.local:5000").unwrap());
        assert!(!helper_entry(&store, "reg.local:5000").exists());
        assert_eq!(read_json(&path)["auths"], json!({}));
        assert_eq!(reloaded.get("reg.local:5000").unwrap(), None);
        assert!(!reloaded.erase("reg.local:5000").unwrap());
    }

    #[cfg(unix)]
    #[test]
    fn creds_store_applies_to_every_registry_and_uses_the_hub_url() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("keychain");
        write_helper(dir.path(), "testhelper", &store);
        let path = dir.path().join("config.json");
        write_json(&path, &json!({"credsStore": "testhelper"}));

        let mut config = load(&path).with_helper_dir(dir.path());
        config.store("docker.io", &cred("hub", "pw")).unwrap();
        config.store("quay.io", &cred("<token>", "tok")).unwrap();
        assert_eq!(
            read_json(&path),
            json!({
                "credsStore": "testhelper",
                "auths": {"https://index.docker.io/v1/": {}, "quay.io": {}},
            })
        );
        assert_eq!(
            read_json(&helper_entry(&store, DOCKER_HUB_KEY))["ServerURL"],
            DOCKER_HUB_KEY
        );
        let reloaded = load(&path).with_helper_dir(dir.path());
        assert_eq!(reloaded.get("docker.io").unwrap(), Some(cred("hub", "pw")));
        let token = reloaded.get("quay.io").unwrap().unwrap();
        assert!(token.is_identity_token());
        assert_eq!(token.secret, "tok");
    }

    #[cfg(unix)]
    #[test]
    fn helper_not_found_falls_through_to_auths() {
        let dir = tempfile::tempdir().unwrap();
        write_helper(dir.path(), "testhelper", &dir.path().join("keychain"));
        let path = dir.path().join("config.json");
        write_json(
            &path,
            &json!({
                "credsStore": "testhelper",
                "auths": {"reg.local": {"auth": b64("plain:pw")}, "reg.marker": {}},
            }),
        );
        let config = load(&path).with_helper_dir(dir.path());
        assert_eq!(config.get("reg.local").unwrap(), Some(cred("plain", "pw")));
        assert_eq!(config.get("reg.marker").unwrap(), None);
    }

    #[cfg(unix)]
    #[test]
    fn failing_helper_is_an_auth_error() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let helper = dir.path().join("docker-credential-broken");
        fs::write(
            &helper,
            "#!/bin/sh\ncat >/dev/null\necho 'keychain is locked' >&2\nexit 1\n",
        )
        .unwrap();
        fs::set_permissions(&helper, fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.path().join("config.json");
        write_json(
            &path,
            &json!({
                "credHelpers": {"reg.local": "broken"},
                "auths": {"reg.local": {"auth": b64("plain:pw")}},
            }),
        );
        let mut config = load(&path).with_helper_dir(dir.path());
        let err = config.get("reg.local").unwrap_err();
        assert!(matches!(err, ClientError::Auth(_)), "{err:?}");
        assert!(err.to_string().contains("keychain is locked"), "{err}");

        let before = fs::read(&path).unwrap();
        let err = config.store("reg.local", &cred("u", "p")).unwrap_err();
        assert!(matches!(err, ClientError::Auth(_)), "{err:?}");
        assert_eq!(
            fs::read(&path).unwrap(),
            before,
            "a failed store must not write"
        );
        assert!(matches!(
            config.erase("reg.local"),
            Err(ClientError::Auth(_))
        ));
    }

    #[test]
    fn missing_helper_program_is_an_auth_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        write_json(
            &path,
            &json!({"credsStore": "kura-test-no-such-helper-7f3a"}),
        );
        let config = load(&path).with_helper_dir(dir.path());
        let err = config.get("reg.local").unwrap_err();
        assert!(matches!(err, ClientError::Auth(_)), "{err:?}");
        assert!(
            err.to_string()
                .contains("docker-credential-kura-test-no-such-helper-7f3a"),
            "{err}"
        );
    }

    #[test]
    fn containers_auth_fallback_ignores_namespaced_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let first = dir.path().join("registry-auth-file.json");
        let second = dir.path().join("runtime-auth.json");
        write_json(
            &path,
            &json!({"auths": {"docker-wins.io": {"auth": b64("docker:d")}}}),
        );
        write_json(
            &first,
            &json!({"auths": {
                "reg.example.com/team/app": {"auth": b64("scoped:s")},
                "docker-wins.io": {"auth": b64("podman:p")},
            }}),
        );
        write_json(
            &second,
            &json!({"auths": {
                "reg.example.com": {"auth": b64("podman:pw")},
                "https://legacy.example.com/v1/": {"auth": b64("legacy:l")},
                "docker.io": {"auth": b64("hub:h")},
            }}),
        );
        let config = DockerConfig::load(&path)
            .unwrap()
            .with_fallback_auth_files(vec![
                dir.path().join("missing.json"),
                first.clone(),
                second.clone(),
            ]);
        // The namespaced key in the first file is skipped, the second file's host key used.
        assert_eq!(
            config.get("reg.example.com").unwrap(),
            Some(cred("podman", "pw"))
        );
        assert_eq!(
            config.get("legacy.example.com").unwrap(),
            Some(cred("legacy", "l"))
        );
        assert_eq!(config.get("docker.io").unwrap(), Some(cred("hub", "h")));
        assert_eq!(
            config.get("docker-wins.io").unwrap(),
            Some(cred("docker", "d"))
        );
        assert_eq!(config.get("unknown.example.com").unwrap(), None);
        // Only the docker config is listed and written.
        assert_eq!(config.registries(), vec!["docker-wins.io"]);

        // With only the namespaced key there is nothing for the host.
        let only_scoped = DockerConfig::load(&path)
            .unwrap()
            .with_fallback_auth_files(vec![first]);
        assert_eq!(only_scoped.get("reg.example.com").unwrap(), None);
    }
}
