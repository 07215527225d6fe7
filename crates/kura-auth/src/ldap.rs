//! LDAP / Active Directory login: find the user with a service bind and a search, prove the
//! password with a bind as that user, then read the user's groups. Group → role mappings and
//! the administrators' group are applied by [`crate::Auth`].

use std::time::Duration;

use ldap3::{LdapConnAsync, LdapConnSettings, Scope, SearchEntry, ldap_escape};

/// How to reach and read the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LdapConfig {
    /// `ldap://host:389` or `ldaps://host:636`.
    pub url: String,
    /// Upgrade `ldap://` with StartTLS.
    pub starttls: bool,
    /// Service account used to search (anonymous search when `None`).
    pub bind_dn: Option<String>,
    pub bind_password: Option<String>,
    /// Where users live, e.g. `ou=people,dc=example,dc=org`.
    pub user_base: String,
    /// `{username}` is replaced by the escaped login name, e.g. `(uid={username})` or
    /// `(sAMAccountName={username})`.
    pub user_filter: String,
    /// Where groups live; no group lookups when `None`.
    pub group_base: Option<String>,
    /// `{dn}` is replaced by the escaped user DN, e.g. `(member={dn})`.
    pub group_filter: String,
    /// Members of this group (DN) are system administrators.
    pub admin_group: Option<String>,
    /// (group DN, project, role): members of the group get the role in the project.
    pub group_roles: Vec<(String, String, String)>,
    pub timeout: Duration,
}

/// A user the directory vouched for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryUser {
    pub dn: String,
    pub email: Option<String>,
    /// Group DNs, lowercased.
    pub groups: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("LDAP: {0}")]
pub struct LdapError(String);

fn err(e: impl std::fmt::Display) -> LdapError {
    LdapError(e.to_string())
}

/// `Ok(None)`: unknown user or wrong password. `Err`: the directory could not be asked.
pub async fn authenticate(
    cfg: &LdapConfig,
    username: &str,
    password: &str,
) -> Result<Option<DirectoryUser>, LdapError> {
    // An empty password is an anonymous bind to most servers: never a login.
    if password.is_empty() || username.is_empty() {
        return Ok(None);
    }
    let settings = LdapConnSettings::new()
        .set_conn_timeout(cfg.timeout)
        .set_starttls(cfg.starttls);
    let (conn, mut ldap) = LdapConnAsync::with_settings(settings, &cfg.url)
        .await
        .map_err(err)?;
    ldap3::drive!(conn);
    ldap.with_timeout(cfg.timeout);
    if let (Some(dn), Some(pw)) = (&cfg.bind_dn, &cfg.bind_password) {
        ldap.simple_bind(dn, pw)
            .await
            .map_err(err)?
            .success()
            .map_err(|e| LdapError(format!("service bind failed: {e}")))?;
    }
    let filter = cfg
        .user_filter
        .replace("{username}", &ldap_escape(username));
    ldap.with_timeout(cfg.timeout);
    let (entries, _) = ldap
        .search(&cfg.user_base, Scope::Subtree, &filter, vec!["mail"])
        .await
        .map_err(err)?
        .success()
        .map_err(err)?;
    if entries.len() != 1 {
        let _ = ldap.unbind().await;
        return Ok(None);
    }
    let entry = SearchEntry::construct(entries.into_iter().next().expect("one entry"));
    let email = entry.attrs.get("mail").and_then(|v| v.first().cloned());
    let dn = entry.dn;

    // The password is proven by binding as the user.
    ldap.with_timeout(cfg.timeout);
    let bound = ldap.simple_bind(&dn, password).await.map_err(err)?;
    if bound.rc != 0 {
        let _ = ldap.unbind().await;
        return Ok(None);
    }

    let mut groups = Vec::new();
    if let Some(base) = &cfg.group_base {
        // Read groups with the service account again where there is one.
        if let (Some(sdn), Some(pw)) = (&cfg.bind_dn, &cfg.bind_password) {
            ldap.simple_bind(sdn, pw)
                .await
                .map_err(err)?
                .success()
                .map_err(err)?;
        }
        let filter = cfg.group_filter.replace("{dn}", &ldap_escape(&dn));
        ldap.with_timeout(cfg.timeout);
        let (entries, _) = ldap
            .search(base, Scope::Subtree, &filter, vec!["1.1"])
            .await
            .map_err(err)?
            .success()
            .map_err(err)?;
        groups = entries
            .into_iter()
            .map(|e| SearchEntry::construct(e).dn.to_lowercase())
            .collect();
    }
    let _ = ldap.unbind().await;
    Ok(Some(DirectoryUser { dn, email, groups }))
}
