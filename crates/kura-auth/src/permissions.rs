//! The permission table: which project role may do what. This is the one place roles are
//! defined; the server, the management API and the documentation all read it.

use std::fmt;

/// Project roles, with Harbor's meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    ProjectAdmin,
    Maintainer,
    Developer,
    Guest,
    /// Pulls only; cannot list repositories or tags.
    LimitedGuest,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::ProjectAdmin,
        Role::Maintainer,
        Role::Developer,
        Role::Guest,
        Role::LimitedGuest,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::ProjectAdmin => "project_admin",
            Role::Maintainer => "maintainer",
            Role::Developer => "developer",
            Role::Guest => "guest",
            Role::LimitedGuest => "limited_guest",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something a principal may do within a project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// Read manifests, blobs and referrers.
    Pull,
    /// Upload blobs, push manifests and tags.
    Push,
    /// Delete tags, manifests and blobs.
    Delete,
    /// List repositories and tags.
    List,
    /// See the project, its settings and members.
    ReadProject,
    /// Add, change and remove members.
    ManageMembers,
    /// Change the project's settings (visibility, ...) or delete it.
    ManageProject,
}

impl Action {
    pub const ALL: [Action; 7] = [
        Action::Pull,
        Action::Push,
        Action::Delete,
        Action::List,
        Action::ReadProject,
        Action::ManageMembers,
        Action::ManageProject,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
            Action::List => "list",
            Action::ReadProject => "read_project",
            Action::ManageMembers => "manage_members",
            Action::ManageProject => "manage_project",
        }
    }

    /// Docker token scope actions (`repository:NAME:pull,push,delete`).
    pub fn from_scope(s: &str) -> Vec<Action> {
        match s {
            "pull" => vec![Action::Pull],
            "push" => vec![Action::Push],
            "delete" => vec![Action::Delete],
            // Not a Docker scope action: tokens carry it next to `pull` when the holder may
            // also list tags (limited guests may pull without listing).
            "list" => vec![Action::List],
            "*" => vec![Action::Pull, Action::Push, Action::Delete],
            _ => Vec::new(),
        }
    }
}

/// THE table. Anonymous users get `Pull` and `List` on public projects; system
/// administrators get everything everywhere; see [`crate::Auth::allowed`].
pub const PERMISSIONS: &[(Role, &[Action])] = &[
    (
        Role::ProjectAdmin,
        &[
            Action::Pull,
            Action::Push,
            Action::Delete,
            Action::List,
            Action::ReadProject,
            Action::ManageMembers,
            Action::ManageProject,
        ],
    ),
    (
        Role::Maintainer,
        &[
            Action::Pull,
            Action::Push,
            Action::Delete,
            Action::List,
            Action::ReadProject,
        ],
    ),
    (
        Role::Developer,
        &[
            Action::Pull,
            Action::Push,
            Action::List,
            Action::ReadProject,
        ],
    ),
    (
        Role::Guest,
        &[Action::Pull, Action::List, Action::ReadProject],
    ),
    (Role::LimitedGuest, &[Action::Pull, Action::ReadProject]),
];

/// What anyone, logged in or not, may do in a public project.
pub const PUBLIC_ACTIONS: &[Action] = &[Action::Pull, Action::List, Action::ReadProject];

pub fn role_allows(role: Role, action: Action) -> bool {
    PERMISSIONS
        .iter()
        .any(|(r, actions)| *r == role && actions.contains(&action))
}

/// The table as Markdown, for README (a test keeps the two in step).
pub fn markdown_table() -> String {
    let mut out = String::from("| role |");
    for a in Action::ALL {
        out.push_str(&format!(" {} |", a.as_str()));
    }
    out.push_str("\n|---|");
    for _ in Action::ALL {
        out.push_str("---|");
    }
    for role in Role::ALL {
        out.push_str(&format!("\n| {} |", role.as_str()));
        for a in Action::ALL {
            out.push_str(if role_allows(role, a) { " ✓ |" } else { " |" });
        }
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_role_has_a_row_and_roles_are_ordered_by_power() {
        for role in Role::ALL {
            assert!(PERMISSIONS.iter().any(|(r, _)| *r == role), "{role}");
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        // Each role can do at least what every less powerful role can.
        for w in Role::ALL.windows(2) {
            for a in Action::ALL {
                if role_allows(w[1], a) {
                    assert!(role_allows(w[0], a), "{} lacks {:?}", w[0], a);
                }
            }
        }
        assert!(!role_allows(Role::LimitedGuest, Action::List));
        assert!(!role_allows(Role::Developer, Action::Delete));
        assert!(!role_allows(Role::Maintainer, Action::ManageMembers));
    }

    #[test]
    fn readme_shows_the_table() {
        let readme = include_str!("../../../README.md");
        assert!(
            readme.contains(&markdown_table()),
            "README.md must contain the permission table exactly as generated:\n{}",
            markdown_table()
        );
    }
}
