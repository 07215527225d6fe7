//! Identity and access: who is asking ([`Identity`]) and what they may do.
//!
//! In `open` mode (the default, like the reference registry) everything is allowed to everyone
//! and nothing here is consulted beyond [`Auth::mode`]. In `local` mode users live in the
//! metadata database with argon2id password hashes, repositories belong to projects (their
//! first path component), project members hold roles from the [`permissions`] table, and
//! clients authenticate with HTTP Basic or with short-lived Docker bearer tokens that this
//! crate issues and verifies (HS256; the key lives in the shared database, so every replica
//! accepts every replica's tokens).
//!
//! [`Auth::authorize`] is the single decision point for registry requests; the management
//! operations below apply the same table.

pub mod ldap;
mod password;
pub mod permissions;
mod token;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kura_metadata::{
    AccessStore, MemberRecord, MetadataError, ProjectRecord, RepositoryFilter, RobotRecord,
    UserRecord, now_ms, project_of,
};
use sha2::Digest as _;

pub use permissions::{Action, PERMISSIONS, PUBLIC_ACTIONS, Role, role_allows};
pub use token::{Grant, TokenResponse, rfc3339};

/// Whether access control is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// No authentication; everyone may do everything (a trusted network, CI caches, tests).
    Open,
    /// Users, projects, roles and tokens from the metadata database.
    Local,
    /// As `Local`, but users without a local password log in against an LDAP directory,
    /// whose groups map to administrators and project roles.
    Ldap,
}

#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub mode: AuthMode,
    /// Lifetime of issued bearer tokens.
    pub token_ttl: Duration,
    /// The `service` of the token challenge.
    pub service: String,
    /// Password of the first administrator, created when no user exists yet. Without it a
    /// random password is generated and printed once to the log.
    pub admin_password: Option<String>,
    /// The directory, for `AuthMode::Ldap`.
    pub ldap: Option<ldap::LdapConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: AuthMode::Open,
            token_ttl: Duration::from_secs(300),
            service: "kura".into(),
            admin_password: None,
            ldap: None,
        }
    }
}

/// A logged-in user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRef {
    pub id: i64,
    pub username: String,
    pub admin: bool,
}

/// A robot account and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RobotRef {
    pub id: i64,
    pub name: String,
    /// (project, repository glob, actions). Empty when authenticated by token: the token's
    /// grants decide then.
    pub permissions: Vec<(String, String, Vec<Action>)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Anonymous,
    User(UserRef),
    Robot(RobotRef),
}

/// Who is asking, and (for bearer tokens) exactly what their token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub principal: Principal,
    /// `Some` when authenticated by a bearer token: only these grants count.
    pub grants: Option<Vec<Grant>>,
}

impl Identity {
    pub fn anonymous() -> Identity {
        Identity {
            principal: Principal::Anonymous,
            grants: None,
        }
    }

    pub fn user(&self) -> Option<&UserRef> {
        match &self.principal {
            Principal::User(u) => Some(u),
            Principal::Anonymous | Principal::Robot(_) => None,
        }
    }

    pub fn is_anonymous(&self) -> bool {
        self.principal == Principal::Anonymous
    }

    pub fn is_admin(&self) -> bool {
        self.user().is_some_and(|u| u.admin)
    }

    /// A name for logs and audit.
    pub fn name(&self) -> &str {
        match &self.principal {
            Principal::User(u) => &u.username,
            Principal::Robot(r) => &r.name,
            Principal::Anonymous => "anonymous",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("invalid credentials")]
    BadCredentials,
    #[error("authentication required")]
    Unauthenticated,
    #[error("{0}")]
    Denied(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("too many failed logins for this user; retry in {0} s")]
    Throttled(u64),
    #[error("{0}")]
    Store(#[from] MetadataError),
}

pub type Result<T, E = AuthError> = std::result::Result<T, E>;

/// Why a registry request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// No credentials: 401 with a challenge for the scope.
    NeedsAuthentication,
    /// A bearer token without the scope: 401 with `error="insufficient_scope"`.
    InsufficientScope,
    /// Authenticated, but the role does not allow it: 403 DENIED.
    Forbidden(String),
    /// Push into a project that does not exist (and may not be created here): 404.
    ProjectMissing(String),
}

/// System settings that change access rules, with their defaults.
pub mod settings {
    /// `everyone` (default) or `admin_only`: who may create projects.
    pub const PROJECT_CREATION: &str = "project_creation";
    /// `true` or `false` (default): a push into a missing project creates it (private, the
    /// pusher as project admin) when the pusher may create projects.
    pub const AUTO_CREATE_PROJECTS: &str = "auto_create_projects";
    pub const ALL: [(&str, &str); 2] = [
        (PROJECT_CREATION, "everyone"),
        (AUTO_CREATE_PROJECTS, "false"),
    ];
}

const SIGNING_KEY_SETTING: &str = "token_signing_key";
/// Verified Basic credentials are remembered this long, so a client sending them on every
/// request does not pay an argon2 hash each time.
const BASIC_CACHE_TTL: Duration = Duration::from_secs(60);
/// Failed logins for one username tolerated before it is locked out for a while.
const FREE_FAILURES: u32 = 5;
/// Longest lockout; it doubles from 1 s with each failure past [`FREE_FAILURES`].
const MAX_LOCKOUT: Duration = Duration::from_secs(300);

/// Failed-login bookkeeping for one username (existing or not: the same rules apply to any
/// name, so throttling tells nothing about which users exist).
#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    locked_until: Option<Instant>,
    last: Instant,
}

pub struct Auth {
    store: Arc<dyn AccessStore>,
    config: AuthConfig,
    signing_key: Vec<u8>,
    basic_cache: Mutex<HashMap<[u8; 32], (Principal, Instant)>>,
    failures: Mutex<HashMap<String, Failures>>,
}

impl Auth {
    /// Prepares access control; in local mode loads (or creates) the token signing key and the
    /// first administrator.
    pub async fn new(store: Arc<dyn AccessStore>, config: AuthConfig) -> Result<Auth> {
        let mut signing_key = Vec::new();
        if config.mode == AuthMode::Ldap && config.ldap.is_none() {
            return Err(AuthError::Invalid(
                "auth.mode = ldap needs an [auth.ldap] section".into(),
            ));
        }
        if config.mode != AuthMode::Open {
            let fresh = hex::encode(rand::random::<[u8; 32]>());
            let stored = store.setting_or_insert(SIGNING_KEY_SETTING, &fresh).await?;
            signing_key = hex::decode(stored)
                .map_err(|_| AuthError::Invalid("stored token signing key is not hex".into()))?;
            bootstrap_admin(store.as_ref(), config.admin_password.as_deref()).await?;
        }
        Ok(Auth {
            store,
            config,
            signing_key,
            basic_cache: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
        })
    }

    pub fn mode(&self) -> AuthMode {
        self.config.mode
    }

    pub fn service(&self) -> &str {
        &self.config.service
    }

    pub fn store(&self) -> &Arc<dyn AccessStore> {
        &self.store
    }

    /// Reads an `Authorization` header value. No header: anonymous.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Identity> {
        let Some(value) = authorization.map(str::trim).filter(|v| !v.is_empty()) else {
            return Ok(Identity::anonymous());
        };
        let (scheme, rest) = value.split_once(' ').ok_or(AuthError::BadCredentials)?;
        if scheme.eq_ignore_ascii_case("basic") {
            let (user, pass) = decode_basic(rest.trim()).ok_or(AuthError::BadCredentials)?;
            let principal = if user.starts_with(ROBOT_PREFIX) {
                self.verify_robot(&user, &pass).await?
            } else {
                Principal::User(self.verify_password(&user, &pass).await?)
            };
            Ok(Identity {
                principal,
                grants: None,
            })
        } else if scheme.eq_ignore_ascii_case("bearer") {
            token::verify(&self.signing_key, &self.config.service, rest.trim())
        } else {
            Err(AuthError::BadCredentials)
        }
    }

    /// The identity as the database sees it now: a token's user or robot must still exist and
    /// be enabled, and its administrator flag is read afresh. The management API uses this, so
    /// a demoted or disabled administrator's unexpired token manages nothing; registry
    /// requests judge tokens by their grants alone, which expire within the token lifetime.
    pub async fn current_identity(&self, identity: Identity) -> Result<Identity> {
        match &identity.principal {
            Principal::User(u) => {
                let record = self.store.user_by_id(u.id).await?;
                match record {
                    Some(r) if !r.disabled => Ok(Identity {
                        principal: Principal::User(UserRef {
                            id: r.id,
                            username: r.username,
                            admin: r.is_admin,
                        }),
                        grants: identity.grants,
                    }),
                    _ => Err(AuthError::BadCredentials),
                }
            }
            Principal::Robot(r) => {
                let record = self.store.robot_by_name(&r.name).await?;
                match record {
                    Some(rec) if !rec.disabled && rec.expires_at.is_none_or(|t| t > now_ms()) => {
                        Ok(identity)
                    }
                    _ => Err(AuthError::BadCredentials),
                }
            }
            Principal::Anonymous => Ok(identity),
        }
    }

    /// Checks a username and password (constant work whether or not the user exists).
    pub async fn verify_password(&self, username: &str, password: &str) -> Result<UserRef> {
        let cache_key: [u8; 32] =
            sha2::Sha256::digest(format!("{username}\0{password}").as_bytes()).into();
        if let Some((Principal::User(user), at)) =
            self.basic_cache.lock().expect("cache").get(&cache_key)
            && at.elapsed() < BASIC_CACHE_TTL
        {
            return Ok(user.clone());
        }
        if let Some(f) = self.failures.lock().expect("failures").get(username)
            && let Some(until) = f.locked_until
        {
            let now = Instant::now();
            if until > now {
                return Err(AuthError::Throttled((until - now).as_secs().max(1)));
            }
        }
        let record = self.store.user_by_name(username).await?;
        let hash = record.as_ref().and_then(|u| u.password_hash.clone());
        // Accounts with a local password (the first administrator, say) are checked locally,
        // so they keep working while the directory is down; the others ask the directory.
        if hash.is_none()
            && let (AuthMode::Ldap, Some(cfg)) = (self.config.mode, &self.config.ldap)
        {
            let user = self.verify_ldap(cfg, username, password, record).await?;
            self.basic_cache
                .lock()
                .expect("cache")
                .insert(cache_key, (Principal::User(user.clone()), Instant::now()));
            return Ok(user);
        }
        let ok = password::verify(password.to_string(), hash).await;
        match record {
            Some(u) if ok && !u.disabled => {
                let user = UserRef {
                    id: u.id,
                    username: u.username,
                    admin: u.is_admin,
                };
                let mut cache = self.basic_cache.lock().expect("cache");
                if cache.len() > 10_000 {
                    cache.retain(|_, (_, at)| at.elapsed() < BASIC_CACHE_TTL);
                }
                cache.insert(cache_key, (Principal::User(user.clone()), Instant::now()));
                drop(cache);
                self.failures.lock().expect("failures").remove(username);
                Ok(user)
            }
            _ => {
                self.note_failure(username);
                tracing::info!(user = username, "failed login");
                Err(AuthError::BadCredentials)
            }
        }
    }

    /// A directory login: mirror the user locally and apply its groups.
    async fn verify_ldap(
        &self,
        cfg: &ldap::LdapConfig,
        username: &str,
        password: &str,
        record: Option<UserRecord>,
    ) -> Result<UserRef> {
        let found = match ldap::authenticate(cfg, username, password).await {
            Ok(found) => found,
            Err(e) => {
                tracing::error!(error = %e, user = username, "directory unavailable for login");
                None
            }
        };
        let Some(du) = found else {
            self.note_failure(username);
            tracing::info!(user = username, "failed directory login");
            return Err(AuthError::BadCredentials);
        };
        let admin = cfg
            .admin_group
            .as_ref()
            .is_some_and(|g| du.groups.contains(&g.to_lowercase()));
        let user = match record {
            Some(u) if u.disabled => return Err(AuthError::BadCredentials),
            Some(u) => {
                if u.is_admin != admin {
                    self.store
                        .update_user(u.id, None, Some(admin), None)
                        .await?;
                }
                u
            }
            None => {
                self.store
                    .create_user(username, None, du.email.as_deref(), admin)
                    .await?;
                self.store
                    .user_by_name(username)
                    .await?
                    .ok_or(AuthError::BadCredentials)?
            }
        };
        for (group, project, role) in &cfg.group_roles {
            let Some(p) = self.store.project(project).await? else {
                continue;
            };
            let current = self.store.membership(p.id, user.id).await?;
            if du.groups.contains(&group.to_lowercase()) {
                if current.as_ref().map(|(r, _)| r.as_str()) != Some(role.as_str()) {
                    self.store.set_member(p.id, user.id, role, "*").await?;
                }
            } else if current.is_some_and(|(r, _)| r == *role) {
                // Left the group: the role it gave goes too (other memberships stay).
                self.store.remove_member(p.id, user.id).await?;
            }
        }
        self.failures.lock().expect("failures").remove(username);
        Ok(UserRef {
            id: user.id,
            username: user.username,
            admin,
        })
    }

    /// Checks a robot's secret: enabled, not expired, with its permissions resolved.
    async fn verify_robot(&self, name: &str, secret: &str) -> Result<Principal> {
        let cache_key: [u8; 32] =
            sha2::Sha256::digest(format!("{name}\0{secret}").as_bytes()).into();
        if let Some((p @ Principal::Robot(_), at)) =
            self.basic_cache.lock().expect("cache").get(&cache_key)
            && at.elapsed() < BASIC_CACHE_TTL
        {
            return Ok(p.clone());
        }
        if let Some(f) = self.failures.lock().expect("failures").get(name)
            && let Some(until) = f.locked_until
            && until > Instant::now()
        {
            return Err(AuthError::Throttled(
                (until - Instant::now()).as_secs().max(1),
            ));
        }
        let record = self.store.robot_by_name(name).await?;
        let hash = record.as_ref().map(|r| r.secret_hash.clone());
        let ok = password::verify(secret.to_string(), hash).await;
        match record {
            Some(r) if ok && !r.disabled && r.expires_at.is_none_or(|t| t > now_ms()) => {
                let principal = Principal::Robot(RobotRef {
                    id: r.id,
                    name: r.name.clone(),
                    permissions: r
                        .permissions
                        .iter()
                        .map(|p| {
                            let actions = p.actions.split(',').filter_map(robot_action).collect();
                            (p.project.clone(), p.repositories.clone(), actions)
                        })
                        .collect(),
                });
                self.basic_cache
                    .lock()
                    .expect("cache")
                    .insert(cache_key, (principal.clone(), Instant::now()));
                Ok(principal)
            }
            _ => {
                self.note_failure(name);
                tracing::info!(robot = name, "failed robot login");
                Err(AuthError::BadCredentials)
            }
        }
    }

    fn note_failure(&self, username: &str) {
        let now = Instant::now();
        let mut map = self.failures.lock().expect("failures");
        if map.len() > 10_000 {
            map.retain(|_, f| now.duration_since(f.last) < MAX_LOCKOUT);
        }
        let f = map.entry(username.to_string()).or_insert(Failures {
            count: 0,
            locked_until: None,
            last: now,
        });
        // A quiet spell as long as the longest lockout forgives earlier failures.
        if now.duration_since(f.last) > MAX_LOCKOUT {
            f.count = 0;
        }
        f.count += 1;
        f.last = now;
        if f.count > FREE_FAILURES {
            let exp = (f.count - FREE_FAILURES - 1).min(16);
            let lock = Duration::from_secs(1u64 << exp).min(MAX_LOCKOUT);
            f.locked_until = Some(now + lock);
            tracing::warn!(
                user = username,
                failures = f.count,
                lockout_s = lock.as_secs(),
                "login throttled"
            );
        }
    }

    /// Which actions `identity` has in `project`, from the database (ignoring token grants).
    pub async fn allowed(&self, identity: &Identity, project: &str) -> Result<Vec<Action>> {
        if self.config.mode == AuthMode::Open || identity.is_admin() {
            return Ok(Action::ALL.to_vec());
        }
        let Some(p) = self.store.project(project).await? else {
            return Ok(Vec::new());
        };
        let mut actions: Vec<Action> = if p.public {
            PUBLIC_ACTIONS.to_vec()
        } else {
            Vec::new()
        };
        if let Some(user) = identity.user()
            && let Some((role, _)) = self.store.membership(p.id, user.id).await?
            && let Some(role) = Role::parse(&role)
        {
            actions.extend(
                role_actions(role)
                    .iter()
                    .filter(|a| !REPOSITORY_ACTIONS.contains(a)),
            );
        }
        // A robot sees the projects it holds permissions in (it manages nothing).
        if let Principal::Robot(r) = &identity.principal
            && r.permissions.iter().any(|(proj, _, _)| proj == project)
        {
            actions.push(Action::ReadProject);
        }
        actions.sort();
        actions.dedup();
        Ok(actions)
    }

    /// Which actions `identity` has on `repository`: the project-level ones plus those its
    /// membership or robot permissions grant where their repository glob matches.
    pub async fn allowed_on(&self, identity: &Identity, repository: &str) -> Result<Vec<Action>> {
        if self.config.mode == AuthMode::Open || identity.is_admin() {
            return Ok(Action::ALL.to_vec());
        }
        let project = project_of(repository);
        let path = repository
            .strip_prefix(project)
            .map(|r| r.trim_start_matches('/'))
            .unwrap_or("");
        let mut actions = self.allowed(identity, project).await?;
        match &identity.principal {
            Principal::User(user) => {
                if let Some(p) = self.store.project(project).await?
                    && let Some((role, repositories)) = self.store.membership(p.id, user.id).await?
                    && let Some(role) = Role::parse(&role)
                    && glob_match(&repositories, path)
                {
                    actions.extend_from_slice(role_actions(role));
                }
            }
            Principal::Robot(robot) => {
                for (p, repositories, acts) in &robot.permissions {
                    if p == project && glob_match(repositories, path) {
                        actions.extend_from_slice(acts);
                    }
                }
            }
            Principal::Anonymous => {}
        }
        actions.sort();
        actions.dedup();
        Ok(actions)
    }

    /// The decision for a registry request on `repository` needing `needed`.
    pub async fn authorize(
        &self,
        identity: &Identity,
        repository: &str,
        needed: &[Action],
    ) -> Result<Result<(), Denial>> {
        if self.config.mode == AuthMode::Open {
            return Ok(Ok(()));
        }
        if let Some(grants) = &identity.grants {
            let granted = |a: Action| {
                grants.iter().any(|g| {
                    g.kind == "repository"
                        && g.name == repository
                        && g.actions.iter().any(|s| Action::from_scope(s).contains(&a))
                })
            };
            return Ok(if needed.iter().all(|a| granted(*a)) {
                Ok(())
            } else {
                Err(Denial::InsufficientScope)
            });
        }
        let project = project_of(repository);
        if needed.contains(&Action::Push)
            && !self.project_exists_for_push(identity, project).await?
        {
            return Ok(Err(match identity.principal {
                Principal::Anonymous => Denial::NeedsAuthentication,
                _ => Denial::ProjectMissing(project.to_string()),
            }));
        }
        let allowed = self.allowed_on(identity, repository).await?;
        if needed.iter().all(|a| allowed.contains(a)) {
            return Ok(Ok(()));
        }
        Ok(Err(match identity.principal {
            Principal::Anonymous => Denial::NeedsAuthentication,
            _ if self.store.project(project).await?.is_none() => {
                Denial::ProjectMissing(project.to_string())
            }
            _ => Denial::Forbidden(format!(
                "{} may not {} in project {project}",
                identity.name(),
                needed
                    .iter()
                    .map(|a| a.as_str())
                    .collect::<Vec<_>>()
                    .join("+")
            )),
        }))
    }

    /// Whether `project` exists (creating it first when the setting allows): every push,
    /// even an administrator's, goes into an existing project.
    async fn project_exists_for_push(&self, identity: &Identity, project: &str) -> Result<bool> {
        self.maybe_auto_create(identity, project).await?;
        Ok(self.store.project(project).await?.is_some())
    }

    /// Creates a missing project on first push when the setting allows it.
    async fn maybe_auto_create(&self, identity: &Identity, project: &str) -> Result<()> {
        let Some(user) = identity.user() else {
            return Ok(());
        };
        if self.setting(settings::AUTO_CREATE_PROJECTS).await? != "true"
            || self.store.project(project).await?.is_some()
            || !self.may_create_projects(identity).await?
            || kura_oci::RepositoryName::parse(project).is_err()
        {
            return Ok(());
        }
        if let Some(id) = self.store.create_project(project, false).await? {
            self.store
                .set_member(id, user.id, Role::ProjectAdmin.as_str(), "*")
                .await?;
            tracing::info!(project, user = %user.username, "project created by push");
        }
        Ok(())
    }

    /// Issues a bearer token granting the requested scopes as far as `identity` may have
    /// them (`repository:NAME:pull,push,delete`, `registry:catalog:*`).
    pub async fn issue_token(
        &self,
        identity: &Identity,
        scopes: &[String],
    ) -> Result<TokenResponse> {
        let mut grants = Vec::new();
        for scope in scopes
            .iter()
            .flat_map(|s| s.split(' '))
            .filter(|s| !s.is_empty())
        {
            let Some((kind, rest)) = scope.split_once(':') else {
                continue;
            };
            let Some((name, actions)) = rest.rsplit_once(':') else {
                continue;
            };
            match kind {
                "repository" => {
                    let requested: Vec<&str> = actions.split(',').collect();
                    let project = project_of(name);
                    // Auto-creation happens before permissions are read, so a new project's
                    // creator is granted push on it.
                    let wants_push = requested.contains(&"push") || requested.contains(&"*");
                    let push_possible =
                        !wants_push || self.project_exists_for_push(identity, project).await?;
                    let mut allowed = self.allowed_on(identity, name).await?;
                    if !push_possible {
                        allowed.retain(|a| *a != Action::Push);
                    }
                    let mut granted: Vec<String> = Vec::new();
                    for r in requested {
                        let acts = Action::from_scope(r);
                        if !acts.is_empty() && acts.iter().all(|a| allowed.contains(a)) {
                            granted.push(r.to_string());
                        }
                    }
                    // Docker clients ask for `pull` to list tags too; grant listing explicitly
                    // so the token says exactly what its holder may do.
                    if granted.iter().any(|g| g == "pull" || g == "*")
                        && allowed.contains(&Action::List)
                        && !granted.iter().any(|g| g == "list")
                    {
                        granted.push("list".to_string());
                    }
                    grants.push(Grant {
                        kind: "repository".into(),
                        name: name.to_string(),
                        actions: granted,
                    });
                }
                "registry" if name == "catalog" => grants.push(Grant {
                    kind: "registry".into(),
                    name: "catalog".into(),
                    actions: vec!["*".into()],
                }),
                _ => {}
            }
        }
        Ok(token::issue(
            &self.signing_key,
            &self.config.service,
            identity,
            grants,
            self.config.token_ttl,
        ))
    }

    /// Which repositories listings may show to `identity`.
    pub fn repository_filter(&self, identity: &Identity) -> RepositoryFilter {
        // Robots see public repositories in listings; their own access is per repository.
        if self.config.mode == AuthMode::Open || identity.is_admin() {
            RepositoryFilter::All
        } else {
            RepositoryFilter::VisibleTo {
                user_id: identity.user().map(|u| u.id),
            }
        }
    }

    // --- settings --------------------------------------------------------------------------

    pub async fn setting(&self, key: &str) -> Result<String> {
        let default = settings::ALL
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.to_string())
            .ok_or_else(|| AuthError::NotFound(format!("no setting {key:?}")))?;
        Ok(self.store.setting(key).await?.unwrap_or(default))
    }

    pub async fn settings(&self, identity: &Identity) -> Result<Vec<(String, String)>> {
        require_admin(identity)?;
        let mut out = Vec::new();
        for (k, _) in settings::ALL {
            out.push((k.to_string(), self.setting(k).await?));
        }
        Ok(out)
    }

    pub async fn put_setting(&self, identity: &Identity, key: &str, value: &str) -> Result<()> {
        require_admin(identity)?;
        let valid = match key {
            settings::PROJECT_CREATION => matches!(value, "everyone" | "admin_only"),
            settings::AUTO_CREATE_PROJECTS => matches!(value, "true" | "false"),
            _ => return Err(AuthError::NotFound(format!("no setting {key:?}"))),
        };
        if !valid {
            return Err(AuthError::Invalid(format!(
                "invalid value {value:?} for {key}"
            )));
        }
        Ok(self.store.put_setting(key, value).await?)
    }

    async fn may_create_projects(&self, identity: &Identity) -> Result<bool> {
        Ok(match identity.user() {
            None => false,
            Some(u) if u.admin => true,
            Some(_) => self.setting(settings::PROJECT_CREATION).await? == "everyone",
        })
    }

    // --- projects and members --------------------------------------------------------------

    pub async fn create_project(
        &self,
        identity: &Identity,
        name: &str,
        public: bool,
    ) -> Result<ProjectRecord> {
        let user = require_user(identity)?;
        if !self.may_create_projects(identity).await? {
            return Err(AuthError::Denied(
                "only administrators may create projects".into(),
            ));
        }
        if name.contains('/') || kura_oci::RepositoryName::parse(name).is_err() {
            return Err(AuthError::Invalid(format!(
                "invalid project name {name:?}: one path component of lowercase letters, digits and . _ -"
            )));
        }
        let id = self
            .store
            .create_project(name, public)
            .await?
            .ok_or_else(|| AuthError::Conflict(format!("project {name} already exists")))?;
        self.store
            .set_member(id, user.id, Role::ProjectAdmin.as_str(), "*")
            .await?;
        self.store
            .project(name)
            .await?
            .ok_or_else(|| AuthError::NotFound(format!("project {name}")))
    }

    /// A project `identity` may see (else NotFound, so names do not leak).
    pub async fn project(&self, identity: &Identity, name: &str) -> Result<ProjectRecord> {
        let not_found = || AuthError::NotFound(format!("project {name} not found"));
        let p = self.store.project(name).await?.ok_or_else(not_found)?;
        if !self
            .allowed(identity, name)
            .await?
            .contains(&Action::ReadProject)
        {
            return Err(not_found());
        }
        Ok(p)
    }

    pub async fn list_projects(
        &self,
        identity: &Identity,
        last: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ProjectRecord>> {
        Ok(self
            .store
            .list_projects(&self.repository_filter(identity), last, limit)
            .await?)
    }

    async fn require(
        &self,
        identity: &Identity,
        project: &str,
        action: Action,
    ) -> Result<ProjectRecord> {
        let p = self.project(identity, project).await?;
        if !self.allowed(identity, project).await?.contains(&action) {
            return Err(AuthError::Denied(format!(
                "{} may not {} in project {project}",
                identity.name(),
                action.as_str()
            )));
        }
        Ok(p)
    }

    pub async fn set_project_public(
        &self,
        identity: &Identity,
        name: &str,
        public: bool,
    ) -> Result<ProjectRecord> {
        self.require(identity, name, Action::ManageProject).await?;
        self.store.set_project_public(name, public).await?;
        self.project(identity, name).await
    }

    pub async fn delete_project(&self, identity: &Identity, name: &str) -> Result<()> {
        self.require(identity, name, Action::ManageProject).await?;
        let n = self.store.project_repository_count(name).await?;
        if n > 0 {
            return Err(AuthError::Conflict(format!(
                "project {name} still holds {n} repositories; delete them first"
            )));
        }
        self.store.delete_project(name).await?;
        Ok(())
    }

    pub async fn members(&self, identity: &Identity, project: &str) -> Result<Vec<MemberRecord>> {
        let p = self.require(identity, project, Action::ReadProject).await?;
        Ok(self.store.members(p.id).await?)
    }

    /// Adds or changes a member; `repositories` limits the role to matching repositories
    /// of the project (a glob over the path after `project/`; default `*`).
    pub async fn set_member(
        &self,
        identity: &Identity,
        project: &str,
        username: &str,
        role: &str,
        repositories: Option<&str>,
    ) -> Result<()> {
        let p = self
            .require(identity, project, Action::ManageMembers)
            .await?;
        let repositories = repositories.unwrap_or("*");
        validate_glob(repositories)?;
        let role = Role::parse(role).ok_or_else(|| {
            AuthError::Invalid(format!(
                "unknown role {role:?} (one of: {})",
                Role::ALL.map(|r| r.as_str()).join(", ")
            ))
        })?;
        let user = self
            .store
            .user_by_name(username)
            .await?
            .ok_or_else(|| AuthError::NotFound(format!("user {username} not found")))?;
        Ok(self
            .store
            .set_member(p.id, user.id, role.as_str(), repositories)
            .await?)
    }

    pub async fn remove_member(
        &self,
        identity: &Identity,
        project: &str,
        username: &str,
    ) -> Result<()> {
        let p = self
            .require(identity, project, Action::ManageMembers)
            .await?;
        let not_member = || AuthError::NotFound(format!("{username} is not a member of {project}"));
        let user = self
            .store
            .user_by_name(username)
            .await?
            .ok_or_else(not_member)?;
        if !self.store.remove_member(p.id, user.id).await? {
            return Err(not_member());
        }
        Ok(())
    }

    // --- users -----------------------------------------------------------------------------

    pub async fn create_user(
        &self,
        identity: &Identity,
        username: &str,
        password: &str,
        email: Option<&str>,
        admin: bool,
    ) -> Result<UserRecord> {
        require_admin(identity)?;
        validate_username(username)?;
        validate_password(password)?;
        let hash = password::hash(password.to_string()).await?;
        let id = self
            .store
            .create_user(username, Some(&hash), email, admin)
            .await?
            .ok_or_else(|| AuthError::Conflict(format!("user {username} already exists")))?;
        self.store
            .user_by_id(id)
            .await?
            .ok_or_else(|| AuthError::NotFound(format!("user {username}")))
    }

    pub async fn list_users(
        &self,
        identity: &Identity,
        last: Option<&str>,
        limit: u32,
    ) -> Result<Vec<UserRecord>> {
        require_admin(identity)?;
        Ok(self.store.list_users(last, limit).await?)
    }

    pub async fn current_user(&self, identity: &Identity) -> Result<UserRecord> {
        let user = require_user(identity)?;
        self.store
            .user_by_id(user.id)
            .await?
            .ok_or(AuthError::Unauthenticated)
    }

    /// Changes a password: your own (giving the current one) or anyone's as administrator.
    pub async fn change_password(
        &self,
        identity: &Identity,
        username: &str,
        current: Option<&str>,
        new: &str,
    ) -> Result<()> {
        let me = require_user(identity)?;
        let target = self
            .store
            .user_by_name(username)
            .await?
            .ok_or_else(|| AuthError::NotFound(format!("user {username} not found")))?;
        if !me.admin {
            if me.id != target.id {
                return Err(AuthError::Denied(
                    "only administrators change other users' passwords".into(),
                ));
            }
            let current = current
                .ok_or_else(|| AuthError::Invalid("the current password is required".into()))?;
            self.verify_password(username, current).await?;
        }
        validate_password(new)?;
        let hash = password::hash(new.to_string()).await?;
        self.store
            .update_user(target.id, Some(&hash), None, None)
            .await?;
        self.basic_cache
            .lock()
            .expect("cache")
            .retain(|_, (p, _)| !matches!(p, Principal::User(u) if u.id == target.id));
        Ok(())
    }

    pub async fn update_user(
        &self,
        identity: &Identity,
        username: &str,
        admin: Option<bool>,
        disabled: Option<bool>,
    ) -> Result<UserRecord> {
        require_admin(identity)?;
        let target = self
            .store
            .user_by_name(username)
            .await?
            .ok_or_else(|| AuthError::NotFound(format!("user {username} not found")))?;
        self.store
            .update_user(target.id, None, admin, disabled)
            .await?;
        self.basic_cache
            .lock()
            .expect("cache")
            .retain(|_, (p, _)| !matches!(p, Principal::User(u) if u.id == target.id));
        self.store
            .user_by_id(target.id)
            .await?
            .ok_or_else(|| AuthError::NotFound(format!("user {username}")))
    }

    pub async fn delete_user(&self, identity: &Identity, username: &str) -> Result<()> {
        require_admin(identity)?;
        let target = self
            .store
            .user_by_name(username)
            .await?
            .ok_or_else(|| AuthError::NotFound(format!("user {username} not found")))?;
        if identity.user().is_some_and(|u| u.id == target.id) {
            return Err(AuthError::Conflict("you cannot delete yourself".into()));
        }
        self.store.delete_user(target.id).await?;
        self.basic_cache
            .lock()
            .expect("cache")
            .retain(|_, (p, _)| !matches!(p, Principal::User(u) if u.id == target.id));
        Ok(())
    }
}

/// The logged-in user; robots are authenticated but have no user account (403, not 401).
fn require_user(identity: &Identity) -> Result<&UserRef> {
    match &identity.principal {
        Principal::User(u) => Ok(u),
        Principal::Robot(_) => Err(AuthError::Denied(
            "robot accounts cannot do this; use a user account".into(),
        )),
        Principal::Anonymous => Err(AuthError::Unauthenticated),
    }
}

fn require_admin(identity: &Identity) -> Result<()> {
    match &identity.principal {
        Principal::Anonymous => Err(AuthError::Unauthenticated),
        Principal::User(u) if u.admin => Ok(()),
        _ => Err(AuthError::Denied("system administrators only".into())),
    }
}

/// Login names of robot accounts start with this.
pub const ROBOT_PREFIX: &str = "robot$";

/// Actions that apply to repositories (and so are subject to repository globs).
const REPOSITORY_ACTIONS: [Action; 4] = [Action::Pull, Action::Push, Action::Delete, Action::List];

fn role_actions(role: Role) -> &'static [Action] {
    PERMISSIONS
        .iter()
        .find(|(r, _)| *r == role)
        .map(|(_, a)| *a)
        .unwrap_or(&[])
}

/// Robot permissions are repository actions only.
fn robot_action(s: &str) -> Option<Action> {
    match s.trim() {
        "pull" => Some(Action::Pull),
        "push" => Some(Action::Push),
        "delete" => Some(Action::Delete),
        "list" => Some(Action::List),
        _ => None,
    }
}

pub use kura_oci::glob_match;

fn validate_glob(g: &str) -> Result<()> {
    let ok = !g.is_empty()
        && g.len() <= 255
        && g.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/*?".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(AuthError::Invalid(format!(
            "invalid repository glob {g:?}: lowercase letters, digits, . _ - / and the wildcards * ?"
        )))
    }
}

fn validate_username(name: &str) -> Result<()> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(AuthError::Invalid(
            "usernames are 1-64 characters of letters, digits and . _ - @".into(),
        ))
    }
}

fn validate_password(p: &str) -> Result<()> {
    if p.chars().count() < 8 {
        return Err(AuthError::Invalid(
            "passwords need at least 8 characters".into(),
        ));
    }
    Ok(())
}

/// The user name in a Basic `Authorization` header value, unverified (for audit records of
/// failed logins).
pub fn basic_username(value: &str) -> Option<String> {
    let v = value.trim_start();
    let (scheme, rest) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    decode_basic(rest.trim()).map(|(u, _)| u)
}

fn decode_basic(b64: &str) -> Option<(String, String)> {
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    let s = String::from_utf8(raw).ok()?;
    let (u, p) = s.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

/// Creates the first administrator when no user exists.
async fn bootstrap_admin(store: &dyn AccessStore, password: Option<&str>) -> Result<()> {
    if store.user_count().await? > 0 {
        return Ok(());
    }
    let (password, generated) = match password {
        Some(p) => (p.to_string(), false),
        None => {
            use base64::Engine as _;
            let raw: [u8; 18] = rand::random();
            (
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw),
                true,
            )
        }
    };
    validate_password(&password)?;
    let hash = password::hash(password.clone()).await?;
    if store
        .create_user("admin", Some(&hash), None, true)
        .await?
        .is_some()
    {
        if generated {
            // Printed once, on purpose: this is how the operator learns it.
            tracing::warn!(
                "created the first administrator: username admin, password {password} \
                 (set KURA_ADMIN_PASSWORD to choose it; change it after logging in)"
            );
        } else {
            tracing::info!("created the first administrator: username admin");
        }
    }
    Ok(())
}

/// A robot account to create.
#[derive(Debug, Clone)]
pub struct NewRobot {
    /// Short name; the login name becomes `robot$NAME` (system) or `robot$PROJECT+NAME`.
    pub name: String,
    /// `Some`: a project-level robot of this project; `None`: system level.
    pub project: Option<String>,
    pub description: String,
    /// Days until expiry; `None` or a negative number: never.
    pub duration_days: Option<i64>,
    /// (project, repository glob, actions)
    pub permissions: Vec<(String, String, Vec<String>)>,
}

impl Auth {
    /// Who may manage `robot`: administrators, and for project robots the project's admins.
    async fn require_robot_manager(
        &self,
        identity: &Identity,
        project: Option<&str>,
    ) -> Result<()> {
        match project {
            None => require_admin(identity),
            Some(p) => self
                .require(identity, p, Action::ManageMembers)
                .await
                .map(|_| ()),
        }
    }

    /// Creates a robot and returns it with its secret (shown once, stored only as a hash).
    pub async fn create_robot(
        &self,
        identity: &Identity,
        new: NewRobot,
    ) -> Result<(RobotRecord, String)> {
        self.require_robot_manager(identity, new.project.as_deref())
            .await?;
        let short_ok = (1..=64).contains(&new.name.len())
            && new
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
        if !short_ok {
            return Err(AuthError::Invalid(
                "robot names are 1-64 characters of lowercase letters, digits and . _ -".into(),
            ));
        }
        if new.permissions.is_empty() {
            return Err(AuthError::Invalid(
                "a robot needs at least one permission".into(),
            ));
        }
        let mut perms = Vec::new();
        for (project, repositories, actions) in &new.permissions {
            if let Some(own) = &new.project
                && project != own
            {
                return Err(AuthError::Invalid(format!(
                    "a robot of project {own} can only hold permissions in {own}"
                )));
            }
            validate_glob(repositories)?;
            if actions.is_empty() || actions.iter().any(|a| robot_action(a).is_none()) {
                return Err(AuthError::Invalid(
                    "robot actions are pull, push, delete and list".into(),
                ));
            }
            // A project admin cannot hand out more than the project allows them anyway; a
            // system admin can grant anything in any existing project.
            let p = self
                .store
                .project(project)
                .await?
                .ok_or_else(|| AuthError::NotFound(format!("project {project} not found")))?;
            perms.push((p.id, repositories.clone(), actions.join(",")));
        }
        let (full_name, owner) = match &new.project {
            Some(p) => {
                let id = self.store.project(p).await?.map(|p| p.id);
                (format!("{ROBOT_PREFIX}{p}+{}", new.name), id)
            }
            None => (format!("{ROBOT_PREFIX}{}", new.name), None),
        };
        let secret = {
            use base64::Engine as _;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 24]>())
        };
        let record = RobotRecord {
            id: 0,
            name: full_name.clone(),
            project: new.project.clone(),
            description: new.description,
            secret_hash: password::hash(secret.clone()).await?,
            expires_at: new
                .duration_days
                .filter(|d| *d >= 0)
                .map(|d| now_ms() + d * 86_400_000),
            disabled: false,
            created_at: 0,
            permissions: Vec::new(),
        };
        self.store
            .create_robot(&record, owner, &perms)
            .await?
            .ok_or_else(|| AuthError::Conflict(format!("robot {full_name} already exists")))?;
        let stored = self
            .store
            .robot_by_name(&full_name)
            .await?
            .ok_or_else(|| AuthError::NotFound(format!("robot {full_name}")))?;
        Ok((stored, secret))
    }

    /// A robot `identity` may manage.
    pub async fn robot(&self, identity: &Identity, name: &str) -> Result<RobotRecord> {
        let r = self
            .store
            .robot_by_name(name)
            .await?
            .ok_or_else(|| AuthError::NotFound(format!("robot {name} not found")))?;
        self.require_robot_manager(identity, r.project.as_deref())
            .await?;
        Ok(r)
    }

    /// Robots of `project`, or (administrators) all robots.
    pub async fn list_robots(
        &self,
        identity: &Identity,
        project: Option<&str>,
    ) -> Result<Vec<RobotRecord>> {
        self.require_robot_manager(identity, project).await?;
        let id = match project {
            Some(p) => Some(
                self.store
                    .project(p)
                    .await?
                    .ok_or_else(|| AuthError::NotFound(format!("project {p} not found")))?
                    .id,
            ),
            None => None,
        };
        Ok(self.store.list_robots(id).await?)
    }

    pub async fn set_robot_disabled(
        &self,
        identity: &Identity,
        name: &str,
        disabled: bool,
    ) -> Result<RobotRecord> {
        let r = self.robot(identity, name).await?;
        self.store.update_robot(r.id, None, Some(disabled)).await?;
        self.forget_robot(r.id);
        self.robot(identity, name).await
    }

    /// A new secret (the old one stops working at once).
    pub async fn refresh_robot_secret(&self, identity: &Identity, name: &str) -> Result<String> {
        let r = self.robot(identity, name).await?;
        let secret = {
            use base64::Engine as _;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 24]>())
        };
        let hash = password::hash(secret.clone()).await?;
        self.store.update_robot(r.id, Some(&hash), None).await?;
        self.forget_robot(r.id);
        Ok(secret)
    }

    pub async fn delete_robot(&self, identity: &Identity, name: &str) -> Result<()> {
        let r = self.robot(identity, name).await?;
        self.store.delete_robot(r.id).await?;
        self.forget_robot(r.id);
        Ok(())
    }

    fn forget_robot(&self, id: i64) {
        self.basic_cache
            .lock()
            .expect("cache")
            .retain(|_, (p, _)| !matches!(p, Principal::Robot(r) if r.id == id));
    }
}

#[cfg(test)]
mod glob_tests {
    use super::glob_match;

    #[test]
    fn globs() {
        assert!(glob_match("*", ""));
        assert!(glob_match("*", "app/web"));
        assert!(glob_match("app*", "app"));
        assert!(glob_match("app*", "app/web"));
        assert!(!glob_match("app*", "web/app"));
        assert!(glob_match("*/web", "team/x/web"));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "ac"));
        assert!(glob_match("a*b*c", "aXbYbZc"));
        assert!(!glob_match("a*b*c", "aXbYbZ"));
    }
}
