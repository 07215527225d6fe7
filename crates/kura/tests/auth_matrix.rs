//! THE authorization matrix: every `/v2` endpoint × every kind of subject × both ways of
//! authenticating (HTTP Basic on the request, and a bearer token from `/token`), checked over
//! HTTP against a `kura serve --auth-mode local`.
//!
//! The expectation of every cell is computed here from the documented rules, not from the
//! server's code:
//! * the role table of README.md "Access control" (mirrored in [`ROLE_TABLE`]; the test
//!   [`mirrored_table_matches_readme`] parses README's markdown table and fails when the two
//!   drift apart);
//! * "Anonymous users may pull from and list public projects" (logged-in non-members get the
//!   same there), and "System administrators may do everything everywhere";
//! * which action each endpoint needs: GET/HEAD of manifests and blobs and the referrers API
//!   need `pull`; PUT of a manifest and every upload endpoint need `push`; DELETE of manifests
//!   and blobs needs `delete`; `tags/list` needs `list`. A cross-repository mount also needs
//!   `pull` on `from`; without it the POST silently becomes a normal upload (202, not 201).
//!
//! Allowed cells must answer the endpoint's normal success status and change the state they
//! are meant to change; denied cells must answer 401 with a Bearer challenge (anonymous, no
//! credentials), 403 `DENIED` (Basic credentials of a user lacking the permission) or 401 with
//! `error="insufficient_scope"` (a token lacking the action) — and change nothing. Every
//! mutating cell gets fresh state prepared by the administrator, so cells are independent.
//! All mismatches are collected and listed together.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use common::api::{OCI_MANIFEST, random_bytes, sha256, with_query};
use common::auth::{ADMIN, Cred, Reg, challenge_param, header_str, parse_challenge, start_local};
use reqwest::Method;
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// The documented rules
// ---------------------------------------------------------------------------------------------

/// The columns of README's permission table, in order.
const ACTIONS: [&str; 7] = [
    "pull",
    "push",
    "delete",
    "list",
    "read_project",
    "manage_members",
    "manage_project",
];

/// README.md "Access control": what each project role may do.
const ROLE_TABLE: [(&str, &[&str]); 5] = [
    (
        "project_admin",
        &[
            "pull",
            "push",
            "delete",
            "list",
            "read_project",
            "manage_members",
            "manage_project",
        ],
    ),
    (
        "maintainer",
        &["pull", "push", "delete", "list", "read_project"],
    ),
    ("developer", &["pull", "push", "list", "read_project"]),
    ("guest", &["pull", "list", "read_project"]),
    ("limited_guest", &["pull", "read_project"]),
];

/// README: "Anonymous users may pull from and list public projects."
const PUBLIC_ACTIONS: [&str; 2] = ["pull", "list"];

fn role_allows(role: &str, action: &str) -> bool {
    ROLE_TABLE
        .iter()
        .find(|(r, _)| *r == role)
        .unwrap_or_else(|| panic!("unknown role {role}"))
        .1
        .contains(&action)
}

/// Who is asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Subject {
    Anonymous,
    /// A member of the private project with this role.
    Member(&'static str),
    /// Logged in, member of nothing.
    NonMember,
    /// The system administrator.
    Admin,
    /// A project-level robot of the private project `priv`.
    Robot(RobotKind),
}

/// The robots of the private project the matrix uses (all created by the system admin).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum RobotKind {
    /// `{repositories: "*", actions: [pull]}`.
    PullOnly,
    /// `{repositories: "*", actions: [pull, push, delete, list]}`.
    AllActions,
    /// `{repositories: "other*", actions: [pull, push, delete, list]}`: does not match `app`.
    OtherGlob,
    /// All actions on `*`, then disabled (`PATCH {"disabled": true}`).
    Disabled,
    /// All actions on `*`, created with `duration_days: 0`, so expired as soon as it exists.
    Expired,
}

const ROBOT_KINDS: [RobotKind; 5] = [
    RobotKind::PullOnly,
    RobotKind::AllActions,
    RobotKind::OtherGlob,
    RobotKind::Disabled,
    RobotKind::Expired,
];

/// The project every matrix robot belongs to.
const ROBOT_PROJECT: &str = "priv";

const ROBOT_ACTIONS: [&str; 4] = ["pull", "push", "delete", "list"];

impl RobotKind {
    fn short(self) -> &'static str {
        match self {
            RobotKind::PullOnly => "pull",
            RobotKind::AllActions => "all",
            RobotKind::OtherGlob => "other",
            RobotKind::Disabled => "disabled",
            RobotKind::Expired => "expired",
        }
    }

    fn glob(self) -> &'static str {
        match self {
            RobotKind::OtherGlob => "other*",
            _ => "*",
        }
    }

    fn actions(self) -> &'static [&'static str] {
        match self {
            RobotKind::PullOnly => &["pull"],
            _ => &ROBOT_ACTIONS,
        }
    }

    /// Whether the robot can log in at all (README: robots "can expire, be disabled").
    fn usable(self) -> bool {
        !matches!(self, RobotKind::Disabled | RobotKind::Expired)
    }

    /// The `POST /api/v1/robots` body creating this robot under `name`.
    fn create_body(self, name: &str) -> Value {
        let mut body = json!({
            "name": name,
            "project": ROBOT_PROJECT,
            "permissions": [{ "repositories": self.glob(), "actions": self.actions() }],
        });
        if self == RobotKind::Expired {
            body["duration_days"] = json!(0);
        }
        body
    }
}

/// A glob over repository paths as README describes them: `*` matches any run of characters
/// (also `/`), `?` one character.
fn glob_matches(glob: &str, path: &str) -> bool {
    fn go(g: &[u8], p: &[u8]) -> bool {
        match g.split_first() {
            None => p.is_empty(),
            Some((b'*', rest)) => (0..=p.len()).any(|i| go(rest, &p[i..])),
            Some((b'?', rest)) => !p.is_empty() && go(rest, &p[1..]),
            Some((c, rest)) => p.first() == Some(c) && go(rest, &p[1..]),
        }
    }
    go(glob.as_bytes(), path.as_bytes())
}

/// `robot$NAME` style login names in a URL path.
fn encode_path(s: &str) -> String {
    s.replace('$', "%24").replace('+', "%2B")
}

impl Subject {
    fn name(self) -> String {
        match self {
            Subject::Anonymous => "anonymous".into(),
            Subject::Member(role) => format!("{role} member"),
            Subject::NonMember => "non-member".into(),
            Subject::Admin => "system admin".into(),
            Subject::Robot(kind) => format!("robot {:?}", kind),
        }
    }

    fn username(self) -> Option<String> {
        match self {
            Subject::Anonymous => None,
            Subject::Member(role) => Some(format!("m-{role}")),
            Subject::NonMember => Some("outsider".into()),
            Subject::Admin => Some(ADMIN.into()),
            Subject::Robot(_) => None,
        }
    }

    fn basic(self) -> Cred {
        match self {
            Subject::Anonymous => Cred::Anonymous,
            Subject::Admin => Cred::admin(),
            Subject::Robot(_) => panic!("robot credentials come from the fixture"),
            _ => {
                let u = self.username().unwrap();
                let p = password_of(&u);
                Cred::basic(&u, &p)
            }
        }
    }
}

fn password_of(user: &str) -> String {
    format!("pw-{user}-0123")
}

/// A project of the fixture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Project {
    name: &'static str,
    public: bool,
    /// Whether the `Member(role)` subjects are members (with that role).
    has_members: bool,
}

impl Project {
    fn repo(self) -> String {
        format!("{}/{}", self.name, REPO_PATH)
    }
}

/// The repository path (inside each project) the `/v2` matrix addresses.
const REPO_PATH: &str = "app";

/// Private; every `Member(role)` subject holds `role` here.
const PRIV: Project = Project {
    name: "priv",
    public: false,
    has_members: true,
};
/// Public; nobody but its creator (the admin) is a member.
const PUB: Project = Project {
    name: "pub",
    public: true,
    has_members: false,
};
/// Public mount source: everyone may pull from it.
const SRC: Project = Project {
    name: "src",
    public: true,
    has_members: false,
};
/// Private mount source without members: only the system admin may pull from it.
const SECRET: Project = Project {
    name: "secret",
    public: false,
    has_members: false,
};

/// May `subject` perform `action` in `project`, by the documented rules?
fn may(subject: Subject, project: Project, action: &str) -> bool {
    match subject {
        Subject::Admin => true,
        // A robot that cannot log in may do nothing at all.
        Subject::Robot(kind) if !kind.usable() => false,
        _ if project.public && PUBLIC_ACTIONS.contains(&action) => true,
        Subject::Member(role) if project.has_members => role_allows(role, action),
        // README: a robot holds pull/push/delete/list in its project, limited to the
        // repositories matching its glob, and may read (not manage) the projects it holds
        // permissions in.
        Subject::Robot(kind) => {
            project.name == ROBOT_PROJECT
                && (action == "read_project"
                    || (glob_matches(kind.glob(), REPO_PATH) && kind.actions().contains(&action)))
        }
        _ => false,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    GetManifest,
    HeadManifest,
    PutManifest,
    DeleteTag,
    DeleteManifestByDigest,
    GetBlob,
    HeadBlob,
    DeleteBlob,
    StartUpload,
    PatchUpload,
    PutUpload,
    GetUpload,
    CancelUpload,
    TagsList,
    Referrers,
    /// `POST ?mount=&from=` a public project every subject may pull from.
    MountFromReadable,
    /// `POST ?mount=&from=` a private project only the system admin may pull from.
    MountFromUnreadable,
}

const ENDPOINTS: [Endpoint; 17] = [
    Endpoint::GetManifest,
    Endpoint::HeadManifest,
    Endpoint::PutManifest,
    Endpoint::DeleteTag,
    Endpoint::DeleteManifestByDigest,
    Endpoint::GetBlob,
    Endpoint::HeadBlob,
    Endpoint::DeleteBlob,
    Endpoint::StartUpload,
    Endpoint::PatchUpload,
    Endpoint::PutUpload,
    Endpoint::GetUpload,
    Endpoint::CancelUpload,
    Endpoint::TagsList,
    Endpoint::Referrers,
    Endpoint::MountFromReadable,
    Endpoint::MountFromUnreadable,
];

impl Endpoint {
    fn label(self) -> &'static str {
        match self {
            Endpoint::GetManifest => "GET manifest by tag",
            Endpoint::HeadManifest => "HEAD manifest by tag",
            Endpoint::PutManifest => "PUT manifest",
            Endpoint::DeleteTag => "DELETE manifest by tag",
            Endpoint::DeleteManifestByDigest => "DELETE manifest by digest",
            Endpoint::GetBlob => "GET blob",
            Endpoint::HeadBlob => "HEAD blob",
            Endpoint::DeleteBlob => "DELETE blob",
            Endpoint::StartUpload => "POST upload",
            Endpoint::PatchUpload => "PATCH upload",
            Endpoint::PutUpload => "PUT upload",
            Endpoint::GetUpload => "GET upload status",
            Endpoint::CancelUpload => "DELETE upload",
            Endpoint::TagsList => "GET tags/list",
            Endpoint::Referrers => "GET referrers",
            Endpoint::MountFromReadable => "POST mount from a readable project",
            Endpoint::MountFromUnreadable => "POST mount from an unreadable project",
        }
    }

    /// The action the endpoint needs in the repository it addresses.
    fn needs(self) -> &'static str {
        match self {
            Endpoint::GetManifest
            | Endpoint::HeadManifest
            | Endpoint::GetBlob
            | Endpoint::HeadBlob
            | Endpoint::Referrers => "pull",
            Endpoint::PutManifest
            | Endpoint::StartUpload
            | Endpoint::PatchUpload
            | Endpoint::PutUpload
            | Endpoint::GetUpload
            | Endpoint::CancelUpload
            | Endpoint::MountFromReadable
            | Endpoint::MountFromUnreadable => "push",
            Endpoint::DeleteTag | Endpoint::DeleteManifestByDigest | Endpoint::DeleteBlob => {
                "delete"
            }
            Endpoint::TagsList => "list",
        }
    }

    /// The project a mount reads from.
    fn mount_source(self) -> Option<Project> {
        match self {
            Endpoint::MountFromReadable => Some(SRC),
            Endpoint::MountFromUnreadable => Some(SECRET),
            _ => None,
        }
    }

    fn is_head(self) -> bool {
        matches!(self, Endpoint::HeadManifest | Endpoint::HeadBlob)
    }
}

/// Docker token scope actions a client asks for to perform `action` (listing tags uses the
/// `pull` scope, pushing asks for `pull,push`, as docker and containers/image do).
fn scope_actions(action: &str) -> &'static str {
    match action {
        "pull" | "list" => "pull",
        "push" => "pull,push",
        "delete" => "delete",
        other => panic!("no scope for {other}"),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Succeeds with this status.
    Allowed(u16),
    Denied,
    /// The credentials themselves are refused (a disabled or expired robot): 401 on `/v2`
    /// with Basic, and 401 from `/token`.
    Rejected,
}

/// The expected outcome of a cell, from the rules above.
fn expected(ep: Endpoint, subject: Subject, target: Project) -> Outcome {
    if let Subject::Robot(kind) = subject
        && !kind.usable()
    {
        return Outcome::Rejected;
    }
    if !may(subject, target, ep.needs()) {
        return Outcome::Denied;
    }
    Outcome::Allowed(match ep {
        Endpoint::GetManifest
        | Endpoint::HeadManifest
        | Endpoint::GetBlob
        | Endpoint::HeadBlob
        | Endpoint::TagsList
        | Endpoint::Referrers => 200,
        Endpoint::PutManifest | Endpoint::PutUpload => 201,
        Endpoint::DeleteTag | Endpoint::DeleteManifestByDigest | Endpoint::DeleteBlob => 202,
        Endpoint::StartUpload | Endpoint::PatchUpload => 202,
        Endpoint::GetUpload | Endpoint::CancelUpload => 204,
        Endpoint::MountFromReadable | Endpoint::MountFromUnreadable => {
            let src = ep.mount_source().unwrap();
            if may(subject, src, "pull") { 201 } else { 202 }
        }
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Basic,
    Token,
}

// ---------------------------------------------------------------------------------------------
// README check
// ---------------------------------------------------------------------------------------------

fn split_row(line: &str) -> Vec<String> {
    let t = line.trim();
    let t = t.strip_prefix('|').unwrap_or(t);
    let t = t.strip_suffix('|').unwrap_or(t);
    t.split('|').map(|c| c.trim().to_string()).collect()
}

/// Parses README.md's "Access control" role table: (column names, role → allowed actions).
fn readme_role_table() -> (Vec<String>, Vec<(String, BTreeSet<String>)>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
    let readme =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let section = readme
        .split("\n## Access control")
        .nth(1)
        .expect("README.md has an `## Access control` section");
    let section = section.split("\n## ").next().unwrap();
    let mut lines = section
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("| role |"));
    let header = split_row(
        lines
            .next()
            .expect("a `| role | ...` table in Access control"),
    );
    let separator = split_row(lines.next().expect("table separator row"));
    assert!(
        separator
            .iter()
            .all(|c| !c.is_empty() && c.chars().all(|ch| ch == '-' || ch == ':')),
        "second row of the role table is not a separator: {separator:?}"
    );
    assert_eq!(header[0], "role");
    let columns: Vec<String> = header[1..].to_vec();
    let mut rows = Vec::new();
    for line in lines.take_while(|l| l.trim_start().starts_with('|')) {
        let cells = split_row(line);
        assert_eq!(
            cells.len(),
            header.len(),
            "row {line:?} has {} cells, the header {}",
            cells.len(),
            header.len()
        );
        let mut allowed = BTreeSet::new();
        for (col, cell) in columns.iter().zip(&cells[1..]) {
            match cell.as_str() {
                "✓" => {
                    allowed.insert(col.clone());
                }
                "" => {}
                other => panic!("cell {other:?} in row {line:?} is neither ✓ nor empty"),
            }
        }
        rows.push((cells[0].clone(), allowed));
    }
    (columns, rows)
}

fn check_table_against_readme() {
    let (columns, rows) = readme_role_table();
    assert_eq!(
        columns, ACTIONS,
        "README's permission table columns differ from the test's"
    );
    let readme: Vec<(String, BTreeSet<String>)> = rows;
    let mine: Vec<(String, BTreeSet<String>)> = ROLE_TABLE
        .iter()
        .map(|(r, acts)| (r.to_string(), acts.iter().map(|a| a.to_string()).collect()))
        .collect();
    assert_eq!(
        readme, mine,
        "README.md's role table and this test's ROLE_TABLE differ"
    );
    // The rules outside the table that the expectations rely on.
    let readme_text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .unwrap();
    for sentence in [
        "Anonymous users may pull from and list public projects",
        "System administrators may do everything everywhere",
    ] {
        assert!(
            readme_text.contains(sentence),
            "README.md no longer says {sentence:?}; update this test's rules"
        );
    }
}

#[test]
fn mirrored_table_matches_readme() {
    check_table_against_readme();
}

#[test]
fn expectation_function_spot_checks() {
    // A few cells written out by hand, so a mistake in `may` cannot hide behind the table.
    use Endpoint::*;
    assert_eq!(
        expected(GetManifest, Subject::Anonymous, PRIV),
        Outcome::Denied
    );
    assert_eq!(
        expected(GetManifest, Subject::Anonymous, PUB),
        Outcome::Allowed(200)
    );
    assert_eq!(
        expected(TagsList, Subject::Anonymous, PUB),
        Outcome::Allowed(200)
    );
    assert_eq!(
        expected(PutManifest, Subject::NonMember, PUB),
        Outcome::Denied
    );
    assert_eq!(
        expected(TagsList, Subject::Member("limited_guest"), PRIV),
        Outcome::Denied
    );
    assert_eq!(
        expected(GetBlob, Subject::Member("limited_guest"), PRIV),
        Outcome::Allowed(200)
    );
    assert_eq!(
        expected(DeleteBlob, Subject::Member("developer"), PRIV),
        Outcome::Denied
    );
    assert_eq!(
        expected(DeleteTag, Subject::Member("maintainer"), PRIV),
        Outcome::Allowed(202)
    );
    assert_eq!(
        expected(MountFromUnreadable, Subject::Member("developer"), PRIV),
        Outcome::Allowed(202)
    );
    assert_eq!(
        expected(MountFromUnreadable, Subject::Admin, PRIV),
        Outcome::Allowed(201)
    );
    assert_eq!(
        expected(DeleteManifestByDigest, Subject::Admin, PRIV),
        Outcome::Allowed(202)
    );
    let robot = Subject::Robot;
    assert_eq!(
        expected(GetManifest, robot(RobotKind::PullOnly), PRIV),
        Outcome::Allowed(200)
    );
    assert_eq!(
        expected(TagsList, robot(RobotKind::PullOnly), PRIV),
        Outcome::Denied
    );
    assert_eq!(
        expected(PutManifest, robot(RobotKind::OtherGlob), PRIV),
        Outcome::Denied
    );
    assert_eq!(
        expected(DeleteBlob, robot(RobotKind::AllActions), PRIV),
        Outcome::Allowed(202)
    );
    assert_eq!(
        expected(PutManifest, robot(RobotKind::AllActions), PUB),
        Outcome::Denied
    );
    assert_eq!(
        expected(GetBlob, robot(RobotKind::AllActions), PUB),
        Outcome::Allowed(200)
    );
    assert_eq!(
        expected(GetManifest, robot(RobotKind::Disabled), PRIV),
        Outcome::Rejected
    );
    assert_eq!(
        expected(MountFromReadable, robot(RobotKind::AllActions), PRIV),
        Outcome::Allowed(201)
    );
    assert!(glob_matches("other*", "other/x") && !glob_matches("other*", "app"));
}

// ---------------------------------------------------------------------------------------------
// Fixture and cells
// ---------------------------------------------------------------------------------------------

struct Fixture {
    reg: Reg,
    /// Per target repository: the base image (tag `base`).
    base: BTreeMap<String, Base>,
    /// The usable robots: login name and secret.
    robots: BTreeMap<RobotKind, (String, String)>,
}

struct Base {
    manifest: Vec<u8>,
    digest: String,
    layer_digest: String,
}

/// What the administrator checks after a cell, and what it must find.
enum StateCheck {
    None,
    /// HEAD of this path (manifest or blob) as admin; present iff `present`.
    Present {
        path: String,
        present: bool,
    },
    /// GET of an upload as admin: it must hold `size` bytes.
    UploadSize {
        path: String,
        size: u64,
    },
}

/// A request ready to send, with the check to make afterwards.
struct Prepared {
    method: Method,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    /// The check to make if the cell was allowed (`mutated`) and if it was not.
    check: Box<dyn Fn(bool) -> StateCheck>,
}

async fn setup() -> (common::KuraServer, Fixture) {
    let srv = start_local(&["--durability", "relaxed"]);
    let reg = Reg::new(&srv);
    let admin = Cred::admin();
    let mut users: Vec<String> = ROLE_TABLE
        .iter()
        .map(|(r, _)| Subject::Member(r).username().unwrap())
        .collect();
    users.push(Subject::NonMember.username().unwrap());
    for u in &users {
        reg.create_user(u, &password_of(u)).await;
    }
    for p in [PRIV, PUB, SRC, SECRET] {
        reg.create_project(&admin, p.name, p.public).await;
    }
    for (role, _) in ROLE_TABLE {
        let u = Subject::Member(role).username().unwrap();
        reg.set_member(&admin, PRIV.name, &u, role).await;
    }
    let mut base = BTreeMap::new();
    for p in [PRIV, PUB] {
        let img = reg.push_image(&admin, &p.repo(), "base").await;
        base.insert(
            p.repo(),
            Base {
                manifest: img.manifest,
                digest: img.digest,
                layer_digest: img.layer_digest,
            },
        );
    }
    let mut fx = Fixture {
        reg,
        base,
        robots: BTreeMap::new(),
    };
    for kind in ROBOT_KINDS.into_iter().filter(|k| k.usable()) {
        let cred = fx.create_robot(kind, kind.short()).await;
        fx.robots.insert(kind, cred);
    }
    (srv, fx)
}

impl Fixture {
    /// Creates a robot of `kind` named `name` in the robot project (as admin, then disabling
    /// it for `Disabled`); returns its login name and secret.
    async fn create_robot(&self, kind: RobotKind, name: &str) -> (String, String) {
        let v = self
            .reg
            .api_ok(
                Method::POST,
                "/api/v1/robots",
                &Cred::admin(),
                Some(kind.create_body(name)),
                201,
            )
            .await;
        let login = v["name"]
            .as_str()
            .unwrap_or_else(|| panic!("robot answer without name: {v}"))
            .to_string();
        assert_eq!(login, format!("robot${ROBOT_PROJECT}+{name}"), "{v}");
        let secret = v["secret"]
            .as_str()
            .unwrap_or_else(|| panic!("robot answer without secret: {v}"))
            .to_string();
        if kind == RobotKind::Disabled {
            self.reg
                .api_ok(
                    Method::PATCH,
                    &format!("/api/v1/robots/{}", encode_path(&login)),
                    &Cred::admin(),
                    Some(json!({ "disabled": true })),
                    200,
                )
                .await;
        }
        (login, secret)
    }

    /// HTTP Basic credentials of `subject`. Robots that cannot log in are created afresh for
    /// each cell `n`: every refused login counts towards the per-name lockout (429).
    async fn basic(&self, subject: Subject, n: usize) -> Cred {
        match subject {
            Subject::Robot(kind) if kind.usable() => {
                let (login, secret) = &self.robots[&kind];
                Cred::basic(login, secret)
            }
            Subject::Robot(kind) => {
                let (login, secret) = self
                    .create_robot(kind, &format!("{}-{n}", kind.short()))
                    .await;
                Cred::basic(&login, &secret)
            }
            other => other.basic(),
        }
    }

    /// Prepares cell number `n` of `ep` against `repo` (fresh state where the cell mutates).
    async fn prepare(&self, ep: Endpoint, repo: &str, n: usize) -> Prepared {
        let admin = Cred::admin();
        let reg = &self.reg;
        let base = &self.base[repo];
        let simple = |method: Method, path: String| Prepared {
            method,
            path,
            headers: vec![],
            body: vec![],
            check: Box::new(|_| StateCheck::None),
        };
        match ep {
            Endpoint::GetManifest | Endpoint::HeadManifest => {
                let method = if ep == Endpoint::GetManifest {
                    Method::GET
                } else {
                    Method::HEAD
                };
                let mut p = simple(method, format!("/v2/{repo}/manifests/base"));
                p.headers.push(("accept", OCI_MANIFEST.into()));
                p
            }
            Endpoint::PutManifest => {
                let path = format!("/v2/{repo}/manifests/put-{n}");
                let probe = path.clone();
                Prepared {
                    method: Method::PUT,
                    path,
                    headers: vec![("content-type", OCI_MANIFEST.into())],
                    body: base.manifest.clone(),
                    check: Box::new(move |mutated| StateCheck::Present {
                        path: probe.clone(),
                        present: mutated,
                    }),
                }
            }
            Endpoint::DeleteTag => {
                let tag = format!("del-{n}");
                let resp = reg.put_manifest(&admin, repo, &tag, &base.manifest).await;
                assert_eq!(resp.status(), 201, "fixture: tag {repo}:{tag}");
                let path = format!("/v2/{repo}/manifests/{tag}");
                let probe = path.clone();
                Prepared {
                    check: Box::new(move |mutated| StateCheck::Present {
                        path: probe.clone(),
                        present: !mutated,
                    }),
                    ..simple(Method::DELETE, path)
                }
            }
            Endpoint::DeleteManifestByDigest => {
                // A manifest of its own (a unique annotation), pushed by digest only.
                let mut m: Value = serde_json::from_slice(&base.manifest).unwrap();
                m["annotations"] = json!({ "org.example.cell": n.to_string() });
                let bytes = serde_json::to_vec(&m).unwrap();
                let digest = sha256(&bytes);
                let resp = reg.put_manifest(&admin, repo, &digest, &bytes).await;
                assert_eq!(resp.status(), 201, "fixture: manifest {repo}@{digest}");
                let path = format!("/v2/{repo}/manifests/{digest}");
                let probe = path.clone();
                Prepared {
                    check: Box::new(move |mutated| StateCheck::Present {
                        path: probe.clone(),
                        present: !mutated,
                    }),
                    ..simple(Method::DELETE, path)
                }
            }
            Endpoint::GetBlob => simple(
                Method::GET,
                format!("/v2/{repo}/blobs/{}", base.layer_digest),
            ),
            Endpoint::HeadBlob => simple(
                Method::HEAD,
                format!("/v2/{repo}/blobs/{}", base.layer_digest),
            ),
            Endpoint::DeleteBlob => {
                let digest = reg.push_blob(&admin, repo, &random_bytes(64)).await;
                let path = format!("/v2/{repo}/blobs/{digest}");
                let probe = path.clone();
                Prepared {
                    check: Box::new(move |mutated| StateCheck::Present {
                        path: probe.clone(),
                        present: !mutated,
                    }),
                    ..simple(Method::DELETE, path)
                }
            }
            Endpoint::StartUpload => simple(Method::POST, format!("/v2/{repo}/blobs/uploads/")),
            Endpoint::PatchUpload => {
                let loc = reg.start_upload(&admin, repo).await;
                let probe = loc.clone();
                Prepared {
                    method: Method::PATCH,
                    path: loc,
                    headers: vec![
                        ("content-type", "application/octet-stream".into()),
                        ("content-range", "0-99".into()),
                    ],
                    body: random_bytes(100),
                    check: Box::new(move |mutated| StateCheck::UploadSize {
                        path: probe.clone(),
                        size: if mutated { 100 } else { 0 },
                    }),
                }
            }
            Endpoint::PutUpload => {
                let loc = reg.start_upload(&admin, repo).await;
                let data = random_bytes(80);
                let digest = sha256(&data);
                let probe = format!("/v2/{repo}/blobs/{digest}");
                Prepared {
                    method: Method::PUT,
                    path: with_query(&loc, "digest", &digest),
                    headers: vec![("content-type", "application/octet-stream".into())],
                    body: data,
                    check: Box::new(move |mutated| StateCheck::Present {
                        path: probe.clone(),
                        present: mutated,
                    }),
                }
            }
            Endpoint::GetUpload => {
                let loc = reg.start_upload(&admin, repo).await;
                simple(Method::GET, loc)
            }
            Endpoint::CancelUpload => {
                let loc = reg.start_upload(&admin, repo).await;
                let probe = loc.clone();
                Prepared {
                    check: Box::new(move |mutated| StateCheck::Present {
                        path: probe.clone(),
                        present: !mutated,
                    }),
                    ..simple(Method::DELETE, loc)
                }
            }
            Endpoint::TagsList => simple(Method::GET, format!("/v2/{repo}/tags/list")),
            Endpoint::Referrers => {
                simple(Method::GET, format!("/v2/{repo}/referrers/{}", base.digest))
            }
            Endpoint::MountFromReadable | Endpoint::MountFromUnreadable => {
                let from = ep.mount_source().unwrap().repo();
                let digest = reg.push_blob(&admin, &from, &random_bytes(48)).await;
                let path = with_query(
                    &with_query(&format!("/v2/{repo}/blobs/uploads/"), "mount", &digest),
                    "from",
                    &from,
                );
                let probe = format!("/v2/{repo}/blobs/{digest}");
                // "mutated" here means: the blob was mounted (201).
                Prepared {
                    check: Box::new(move |mounted| StateCheck::Present {
                        path: probe.clone(),
                        present: mounted,
                    }),
                    ..simple(Method::POST, path)
                }
            }
        }
    }

    /// Runs the admin's check; `Err` describes what was found instead.
    async fn verify(&self, check: StateCheck) -> Result<(), String> {
        let admin = Cred::admin();
        match check {
            StateCheck::None => Ok(()),
            StateCheck::Present { path, present } => {
                // Uploads answer GET (204), manifests and blobs HEAD (200).
                let is_upload = path.contains("/blobs/uploads/");
                let method = if is_upload { Method::GET } else { Method::HEAD };
                let status = self.reg.send(method.clone(), &path, &admin).await.status();
                let found = match status.as_u16() {
                    200 | 204 => true,
                    404 => false,
                    other => return Err(format!("admin {method} {path} answered {other}")),
                };
                if found == present {
                    Ok(())
                } else {
                    Err(format!(
                        "afterwards {path} is {} (expected {})",
                        if found { "present" } else { "absent" },
                        if present { "present" } else { "absent" }
                    ))
                }
            }
            StateCheck::UploadSize { path, size } => {
                let resp = self.reg.send(Method::GET, &path, &admin).await;
                let status = resp.status();
                let range = header_str(resp.headers(), "range");
                let want = format!("0-{}", size.saturating_sub(1));
                if status == 204 && range.as_deref() == Some(want.as_str()) {
                    Ok(())
                } else {
                    Err(format!(
                        "afterwards the upload answers {status} with Range {range:?} (expected 204 with {want})"
                    ))
                }
            }
        }
    }
}

/// Runs one cell; `Err` is the mismatch description.
async fn run_cell(
    fx: &Fixture,
    ep: Endpoint,
    subject: Subject,
    target: Project,
    mode: Mode,
    n: usize,
) -> Result<(), String> {
    let repo = target.repo();
    let want = expected(ep, subject, target);
    let prepared = fx.prepare(ep, &repo, n).await;
    let scope_acts = scope_actions(ep.needs());
    let basic = fx.basic(subject, n).await;
    if want == Outcome::Rejected && mode == Mode::Token {
        // The token endpoint itself must refuse the credentials.
        let resp = fx
            .reg
            .token_response(&basic, &[&format!("repository:{repo}:{scope_acts}")])
            .await;
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        let mut problems = Vec::new();
        if status != 401 {
            problems.push(format!(
                "GET /token should answer 401, got {status}: {}",
                body.chars().take(300).collect::<String>()
            ));
        }
        if let Err(e) = fx.verify((prepared.check)(false)).await {
            problems.push(e);
        }
        return if problems.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "[{mode:?}] {} on {} ({}): {}",
                subject.name(),
                repo,
                ep.label(),
                problems.join("; ")
            ))
        };
    }
    let cred = match mode {
        Mode::Basic => basic.clone(),
        Mode::Token => {
            let target_scope = format!("repository:{repo}:{scope_acts}");
            let mut scopes = vec![target_scope];
            if let Some(src) = ep.mount_source() {
                scopes.push(format!("repository:{}:pull", src.repo()));
            }
            let scopes: Vec<&str> = scopes.iter().map(String::as_str).collect();
            Cred::Bearer(fx.reg.token(&basic, &scopes).await)
        }
    };
    let mut rb = fx
        .reg
        .req(prepared.method.clone(), &prepared.path, &cred)
        .body(prepared.body.clone());
    for (k, v) in &prepared.headers {
        rb = rb.header(*k, v.as_str());
    }
    let resp = rb
        .send()
        .await
        .map_err(|e| format!("{} {}: {e}", prepared.method, prepared.path))?;
    let status = resp.status().as_u16();
    let challenge = header_str(resp.headers(), "www-authenticate");
    let body = resp.text().await.unwrap_or_default();
    let seen = format!(
        "{} {} → {status}, WWW-Authenticate {challenge:?}, body {}",
        prepared.method,
        prepared.path,
        body.chars().take(300).collect::<String>()
    );

    let error_code = || -> Option<String> {
        let v: Value = serde_json::from_str(&body).ok()?;
        v["errors"][0]["code"].as_str().map(str::to_string)
    };
    let mut problems: Vec<String> = Vec::new();
    match want {
        Outcome::Allowed(code) => {
            if status != code {
                problems.push(format!("expected {code} (allowed)"));
            }
        }
        Outcome::Rejected => {
            if status != 401 {
                problems.push("expected 401 (credentials refused)".into());
            } else {
                if !ep.is_head() && error_code().as_deref() != Some("UNAUTHORIZED") {
                    problems.push("expected error code UNAUTHORIZED".into());
                }
                match challenge.as_deref().map(parse_challenge) {
                    Some((scheme, _)) if scheme == "Bearer" => {}
                    _ => problems.push("401 without a Bearer challenge".into()),
                }
            }
        }
        Outcome::Denied => {
            let expected_scope = format!("repository:{repo}:{scope_acts}");
            let (want_status, want_code, insufficient) = match (mode, subject) {
                (Mode::Basic, Subject::Anonymous) => (401, "UNAUTHORIZED", false),
                (Mode::Basic, _) => (403, "DENIED", false),
                (Mode::Token, _) => (401, "UNAUTHORIZED", true),
            };
            if status != want_status {
                problems.push(format!("expected {want_status} {want_code} (denied)"));
            } else {
                if !ep.is_head() && error_code().as_deref() != Some(want_code) {
                    problems.push(format!("expected error code {want_code}"));
                }
                if want_status == 401 {
                    match &challenge {
                        None => problems.push("401 without WWW-Authenticate".into()),
                        Some(c) => {
                            let (scheme, params) = parse_challenge(c);
                            let realm = format!("{}/token", fx.reg.base);
                            if scheme != "Bearer"
                                || challenge_param(&params, "realm") != Some(realm.as_str())
                                || challenge_param(&params, "service") != Some("kura")
                            {
                                problems.push(format!(
                                    "challenge should be Bearer realm=\"{realm}\",service=\"kura\""
                                ));
                            }
                            if challenge_param(&params, "scope") != Some(expected_scope.as_str()) {
                                problems
                                    .push(format!("challenge scope should be {expected_scope}"));
                            }
                            let err = challenge_param(&params, "error");
                            if insufficient && err != Some("insufficient_scope") {
                                problems.push(
                                    "challenge should say error=\"insufficient_scope\"".into(),
                                );
                            }
                            if !insufficient && err.is_some() {
                                problems.push(
                                    "challenge of a credential-less request should carry no error"
                                        .into(),
                                );
                            }
                        }
                    }
                }
            }
        }
    }
    let mutated = match want {
        Outcome::Allowed(201) => true,
        Outcome::Allowed(_) => !matches!(
            ep,
            Endpoint::MountFromReadable | Endpoint::MountFromUnreadable
        ),
        Outcome::Denied | Outcome::Rejected => false,
    };
    if let Err(e) = fx.verify((prepared.check)(mutated)).await {
        problems.push(e);
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "[{mode:?}] {} on {} ({}): {}; got: {seen}",
            subject.name(),
            repo,
            ep.label(),
            problems.join("; ")
        ))
    }
}

#[tokio::test]
async fn authorization_matrix() {
    check_table_against_readme();
    let (_srv, fx) = setup().await;

    let mut subjects_by_target: Vec<(Project, Vec<Subject>)> = Vec::new();
    let mut priv_subjects = vec![Subject::Anonymous];
    priv_subjects.extend(ROLE_TABLE.iter().map(|(r, _)| Subject::Member(r)));
    priv_subjects.push(Subject::NonMember);
    priv_subjects.push(Subject::Admin);
    priv_subjects.extend(ROBOT_KINDS.map(Subject::Robot));
    subjects_by_target.push((PRIV, priv_subjects));
    subjects_by_target.push((
        PUB,
        vec![
            Subject::Anonymous,
            Subject::NonMember,
            // A robot of another project: only what anyone may do in a public project.
            Subject::Robot(RobotKind::AllActions),
        ],
    ));

    let mut checked = 0usize;
    let mut allowed = 0usize;
    let mut robot_cells = 0usize;
    let mut mismatches: Vec<String> = Vec::new();
    for (target, subjects) in &subjects_by_target {
        for subject in subjects {
            for ep in ENDPOINTS {
                for mode in [Mode::Basic, Mode::Token] {
                    checked += 1;
                    if matches!(subject, Subject::Robot(_)) {
                        robot_cells += 1;
                    }
                    if matches!(expected(ep, *subject, *target), Outcome::Allowed(_)) {
                        allowed += 1;
                    }
                    if let Err(m) = run_cell(&fx, ep, *subject, *target, mode, checked).await {
                        mismatches.push(m);
                    }
                }
            }
        }
    }
    eprintln!(
        "authorization matrix: {checked} cells checked ({} endpoints × {} subject/project \
         pairs × 2 ways to authenticate; {allowed} allowed, {} denied or refused), {} mismatches",
        ENDPOINTS.len(),
        subjects_by_target
            .iter()
            .map(|(_, s)| s.len())
            .sum::<usize>(),
        checked - allowed,
        mismatches.len()
    );
    eprintln!("authorization matrix: {robot_cells} of the {checked} cells have a robot subject");
    assert!(
        mismatches.is_empty(),
        "{} of {checked} cells differ from the documented rules:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// The management API: every route of `crates/kura-server/src/api.rs` × every kind of subject
// ---------------------------------------------------------------------------------------------
//
// The rules (README "Access control" and the routes' documentation):
// * users, settings, system robots, listing all robots: system administrators only;
// * `/users/current`, creating a project (`project_creation = everyone`, the default) and
//   changing one's own password: any logged-in *user*; robots are not users;
// * a project (and everything under it) is visible with `read_project`; where it is not,
//   project routes answer 404 — to anonymous callers too — so names do not leak;
// * project PATCH/DELETE need `manage_project`, members PUT/DELETE `manage_members`, members
//   GET `read_project`; project robots are managed by that project's admins (`manage_members`);
// * listing repositories shows those the caller may `list` (200 for whoever sees the project
//   or may list in it); artifacts GET needs `list` on the repository, deleting a repository,
//   an artifact or a tag needs `delete` on it;
// * `/v1/search` and `/api/v1/openapi.json` answer everyone.
// Denials: 401 for anonymous callers, 403 for authenticated ones, 404 where existence is
// hidden. Only HTTP Basic is used here.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ApiRoute {
    ListUsers,
    CreateUser,
    CurrentUser,
    PatchUser,
    ChangeOwnPassword,
    ChangeOtherPassword,
    DeleteUser,
    ListProjects,
    CreateProject,
    GetProject,
    PatchProject,
    DeleteProject,
    ListMembers,
    SetMember,
    RemoveMember,
    CreateProjectRobot,
    CreateSystemRobot,
    ListAllRobots,
    ListProjectRobots,
    GetProjectRobot,
    PatchProjectRobot,
    RefreshProjectRobot,
    DeleteProjectRobot,
    GetSystemRobot,
    PatchSystemRobot,
    RefreshSystemRobot,
    DeleteSystemRobot,
    GetSettings,
    PutSettings,
    Search,
    OpenApi,
    ListRepositories,
    DeleteRepository,
    ListArtifacts,
    DeleteArtifact,
    DeleteArtifactTag,
}

const API_ROUTES: [ApiRoute; 36] = [
    ApiRoute::ListUsers,
    ApiRoute::CreateUser,
    ApiRoute::CurrentUser,
    ApiRoute::PatchUser,
    ApiRoute::ChangeOwnPassword,
    ApiRoute::ChangeOtherPassword,
    ApiRoute::DeleteUser,
    ApiRoute::ListProjects,
    ApiRoute::CreateProject,
    ApiRoute::GetProject,
    ApiRoute::PatchProject,
    ApiRoute::DeleteProject,
    ApiRoute::ListMembers,
    ApiRoute::SetMember,
    ApiRoute::RemoveMember,
    ApiRoute::CreateProjectRobot,
    ApiRoute::CreateSystemRobot,
    ApiRoute::ListAllRobots,
    ApiRoute::ListProjectRobots,
    ApiRoute::GetProjectRobot,
    ApiRoute::PatchProjectRobot,
    ApiRoute::RefreshProjectRobot,
    ApiRoute::DeleteProjectRobot,
    ApiRoute::GetSystemRobot,
    ApiRoute::PatchSystemRobot,
    ApiRoute::RefreshSystemRobot,
    ApiRoute::DeleteSystemRobot,
    ApiRoute::GetSettings,
    ApiRoute::PutSettings,
    ApiRoute::Search,
    ApiRoute::OpenApi,
    ApiRoute::ListRepositories,
    ApiRoute::DeleteRepository,
    ApiRoute::ListArtifacts,
    ApiRoute::DeleteArtifact,
    ApiRoute::DeleteArtifactTag,
];

/// What a route requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ApiNeed {
    Everyone,
    /// A logged-in user (not a robot).
    User,
    SystemAdmin,
    /// This project action (role table column) in the private project.
    InProject(&'static str),
    /// Listing repositories: whoever sees the project or may list in it.
    SeeOrListRepositories,
    /// This repository action on `priv/<repo>`.
    OnRepository(&'static str),
}

impl ApiRoute {
    fn needs(self) -> ApiNeed {
        use ApiRoute::*;
        match self {
            ListUsers | CreateUser | PatchUser | ChangeOtherPassword | DeleteUser => {
                ApiNeed::SystemAdmin
            }
            CurrentUser | ChangeOwnPassword | CreateProject => ApiNeed::User,
            ListProjects | Search | OpenApi => ApiNeed::Everyone,
            GetProject | ListMembers => ApiNeed::InProject("read_project"),
            PatchProject | DeleteProject => ApiNeed::InProject("manage_project"),
            SetMember | RemoveMember => ApiNeed::InProject("manage_members"),
            CreateProjectRobot | ListProjectRobots | GetProjectRobot | PatchProjectRobot
            | RefreshProjectRobot | DeleteProjectRobot => ApiNeed::InProject("manage_members"),
            CreateSystemRobot | ListAllRobots | GetSystemRobot | PatchSystemRobot
            | RefreshSystemRobot | DeleteSystemRobot => ApiNeed::SystemAdmin,
            GetSettings | PutSettings => ApiNeed::SystemAdmin,
            ListRepositories => ApiNeed::SeeOrListRepositories,
            ListArtifacts => ApiNeed::OnRepository("list"),
            DeleteRepository | DeleteArtifact | DeleteArtifactTag => {
                ApiNeed::OnRepository("delete")
            }
        }
    }

    /// The success status.
    fn success(self) -> u16 {
        use ApiRoute::*;
        match self {
            CreateUser | CreateProject | CreateProjectRobot | CreateSystemRobot => 201,
            ChangeOwnPassword | ChangeOtherPassword | DeleteUser | DeleteProject | RemoveMember
            | DeleteProjectRobot | DeleteSystemRobot | DeleteRepository | DeleteArtifact
            | DeleteArtifactTag => 204,
            _ => 200,
        }
    }
}

/// The expected status of `route` called by `subject` (HTTP Basic), from the rules above.
fn api_expected(route: ApiRoute, subject: Subject) -> u16 {
    let anonymous = subject == Subject::Anonymous;
    let denied = if anonymous { 401 } else { 403 };
    // DeleteProject targets a fresh project whose members mirror priv's, but robots hold
    // permissions only in priv, so they cannot see that one.
    let sees_project = may(subject, PRIV, "read_project")
        && !(route == ApiRoute::DeleteProject && matches!(subject, Subject::Robot(_)));
    let ok = match route.needs() {
        ApiNeed::Everyone => true,
        ApiNeed::User => !anonymous && !matches!(subject, Subject::Robot(_)),
        ApiNeed::SystemAdmin => subject == Subject::Admin,
        ApiNeed::InProject(action) => {
            if !sees_project {
                return 404;
            }
            may(subject, PRIV, action)
        }
        ApiNeed::SeeOrListRepositories => {
            if !sees_project && !may(subject, PRIV, "list") {
                return 404;
            }
            true
        }
        ApiNeed::OnRepository(action) => {
            if may(subject, PRIV, action) {
                true
            } else if !sees_project {
                return 404;
            } else {
                false
            }
        }
    };
    if ok { route.success() } else { denied }
}

#[test]
fn api_expectation_spot_checks() {
    use ApiRoute::*;
    assert_eq!(api_expected(ListUsers, Subject::Anonymous), 401);
    assert_eq!(
        api_expected(ListUsers, Subject::Member("project_admin")),
        403
    );
    assert_eq!(api_expected(ListProjects, Subject::Anonymous), 200);
    assert_eq!(api_expected(CreateProject, Subject::NonMember), 201);
    assert_eq!(api_expected(GetProject, Subject::NonMember), 404);
    assert_eq!(api_expected(GetProject, Subject::Anonymous), 404);
    assert_eq!(
        api_expected(GetProject, Subject::Member("limited_guest")),
        200
    );
    assert_eq!(
        api_expected(PatchProject, Subject::Member("maintainer")),
        403
    );
    assert_eq!(
        api_expected(DeleteProject, Subject::Member("project_admin")),
        204
    );
    assert_eq!(api_expected(SetMember, Subject::Member("developer")), 403);
    assert_eq!(
        api_expected(CreateProjectRobot, Subject::Member("project_admin")),
        201
    );
    assert_eq!(
        api_expected(CreateSystemRobot, Subject::Member("project_admin")),
        403
    );
    assert_eq!(
        api_expected(ListArtifacts, Subject::Member("limited_guest")),
        403
    );
    assert_eq!(api_expected(ListArtifacts, Subject::Member("guest")), 200);
    assert_eq!(
        api_expected(DeleteArtifact, Subject::Member("developer")),
        403
    );
    assert_eq!(
        api_expected(DeleteRepository, Subject::Member("maintainer")),
        204
    );
    let robot = Subject::Robot(RobotKind::AllActions);
    assert_eq!(api_expected(ListArtifacts, robot), 200);
    assert_eq!(api_expected(DeleteArtifact, robot), 204);
    assert_eq!(api_expected(GetProject, robot), 200);
    assert_eq!(api_expected(DeleteProject, robot), 404);
    assert_eq!(api_expected(ListUsers, robot), 403);
    assert_eq!(api_expected(CurrentUser, robot), 403);
}

/// A management request ready to send.
struct ApiCall {
    method: Method,
    path: String,
    body: Option<Value>,
}

struct ApiFixture {
    fx: Fixture,
    /// The system robot every cell may address (and its login name).
    system_robot: String,
}

impl ApiFixture {
    async fn user(&self, name: &str) {
        self.fx.reg.create_user(name, &password_of(name)).await;
    }

    /// A project robot (pull on `*`) named `name`; its login name.
    async fn project_robot(&self, name: &str) -> String {
        self.fx.create_robot(RobotKind::PullOnly, name).await.0
    }

    async fn system_robot(&self, name: &str) -> String {
        let v = self
            .fx
            .reg
            .api_ok(
                Method::POST,
                "/api/v1/robots",
                &Cred::admin(),
                Some(json!({
                    "name": name,
                    "permissions": [{ "project": PRIV.name, "actions": ["pull"] }],
                })),
                201,
            )
            .await;
        v["name"].as_str().unwrap().to_string()
    }

    /// Prepares cell `n` of `route` for `subject` (fresh state for mutating cells).
    async fn prepare(&self, route: ApiRoute, subject: Subject, n: usize) -> ApiCall {
        use ApiRoute::*;
        let reg = &self.fx.reg;
        let admin = Cred::admin();
        let call =
            |method: Method, path: String, body: Option<Value>| ApiCall { method, path, body };
        let p = PRIV.name;
        match route {
            ListUsers => call(Method::GET, "/api/v1/users".into(), None),
            CreateUser => call(
                Method::POST,
                "/api/v1/users".into(),
                Some(json!({ "username": format!("new-{n}"), "password": password_of("new") })),
            ),
            CurrentUser => call(Method::GET, "/api/v1/users/current".into(), None),
            PatchUser => {
                let u = format!("pu-{n}");
                self.user(&u).await;
                call(
                    Method::PATCH,
                    format!("/api/v1/users/{u}"),
                    Some(json!({ "disabled": false })),
                )
            }
            ChangeOwnPassword => {
                // The same password again: allowed, and the subject keeps working.
                let u = subject
                    .username()
                    .unwrap_or_else(|| Subject::NonMember.username().unwrap());
                let pw = if subject == Subject::Admin {
                    common::auth::ADMIN_PASSWORD.to_string()
                } else {
                    password_of(&u)
                };
                call(
                    Method::PUT,
                    format!("/api/v1/users/{u}/password"),
                    Some(json!({ "current_password": pw, "new_password": pw })),
                )
            }
            ChangeOtherPassword => {
                let u = format!("cp-{n}");
                self.user(&u).await;
                call(
                    Method::PUT,
                    format!("/api/v1/users/{u}/password"),
                    Some(json!({ "new_password": "another-password-42" })),
                )
            }
            DeleteUser => {
                let u = format!("du-{n}");
                self.user(&u).await;
                call(Method::DELETE, format!("/api/v1/users/{u}"), None)
            }
            ListProjects => call(Method::GET, "/api/v1/projects".into(), None),
            CreateProject => call(
                Method::POST,
                "/api/v1/projects".into(),
                Some(json!({ "name": format!("np-{n}") })),
            ),
            GetProject => call(Method::GET, format!("/api/v1/projects/{p}"), None),
            PatchProject => call(
                Method::PATCH,
                format!("/api/v1/projects/{p}"),
                Some(json!({ "public": false })),
            ),
            DeleteProject => {
                // A fresh empty private project with the same members as `priv`.
                let name = format!("dp-{n}");
                reg.create_project(&admin, &name, false).await;
                for (role, _) in ROLE_TABLE {
                    let u = Subject::Member(role).username().unwrap();
                    reg.set_member(&admin, &name, &u, role).await;
                }
                call(Method::DELETE, format!("/api/v1/projects/{name}"), None)
            }
            ListMembers => call(Method::GET, format!("/api/v1/projects/{p}/members"), None),
            SetMember => {
                let u = format!("sm-{n}");
                self.user(&u).await;
                call(
                    Method::PUT,
                    format!("/api/v1/projects/{p}/members/{u}"),
                    Some(json!({ "role": "guest" })),
                )
            }
            RemoveMember => {
                let u = format!("rm-{n}");
                self.user(&u).await;
                reg.set_member(&admin, p, &u, "guest").await;
                call(
                    Method::DELETE,
                    format!("/api/v1/projects/{p}/members/{u}"),
                    None,
                )
            }
            CreateProjectRobot => call(
                Method::POST,
                "/api/v1/robots".into(),
                Some(RobotKind::PullOnly.create_body(&format!("cr-{n}"))),
            ),
            CreateSystemRobot => call(
                Method::POST,
                "/api/v1/robots".into(),
                Some(json!({
                    "name": format!("cs-{n}"),
                    "permissions": [{ "project": p, "actions": ["pull"] }],
                })),
            ),
            ListAllRobots => call(Method::GET, "/api/v1/robots".into(), None),
            ListProjectRobots => call(Method::GET, format!("/api/v1/robots?project={p}"), None),
            GetProjectRobot => {
                let login = &self.fx.robots[&RobotKind::AllActions].0;
                call(
                    Method::GET,
                    format!("/api/v1/robots/{}", encode_path(login)),
                    None,
                )
            }
            PatchProjectRobot | RefreshProjectRobot | DeleteProjectRobot => {
                let login = self.project_robot(&format!("pr-{n}")).await;
                robot_call(route, &login)
            }
            GetSystemRobot => call(
                Method::GET,
                format!("/api/v1/robots/{}", encode_path(&self.system_robot)),
                None,
            ),
            PatchSystemRobot | RefreshSystemRobot | DeleteSystemRobot => {
                let login = self.system_robot(&format!("sr-{n}")).await;
                robot_call(route, &login)
            }
            GetSettings => call(Method::GET, "/api/v1/settings".into(), None),
            PutSettings => call(
                Method::PUT,
                "/api/v1/settings".into(),
                Some(json!({ "project_creation": "everyone" })),
            ),
            Search => call(Method::GET, "/v1/search?q=app".into(), None),
            OpenApi => call(Method::GET, "/api/v1/openapi.json".into(), None),
            ListRepositories => call(
                Method::GET,
                format!("/api/v1/projects/{p}/repositories"),
                None,
            ),
            DeleteRepository => {
                let path = format!("dr-{n}");
                reg.push_image(&admin, &format!("{p}/{path}"), "v1").await;
                call(
                    Method::DELETE,
                    format!("/api/v1/projects/{p}/repositories/{path}"),
                    None,
                )
            }
            ListArtifacts => call(
                Method::GET,
                format!("/api/v1/projects/{p}/repositories/{REPO_PATH}/artifacts"),
                None,
            ),
            DeleteArtifact => {
                let base = &self.fx.base[&PRIV.repo()];
                let mut m: Value = serde_json::from_slice(&base.manifest).unwrap();
                m["annotations"] = json!({ "org.example.api-cell": n.to_string() });
                let bytes = serde_json::to_vec(&m).unwrap();
                let digest = sha256(&bytes);
                let resp = reg
                    .put_manifest(&admin, &PRIV.repo(), &digest, &bytes)
                    .await;
                assert_eq!(resp.status(), 201, "fixture: artifact {digest}");
                call(
                    Method::DELETE,
                    format!("/api/v1/projects/{p}/repositories/{REPO_PATH}/artifacts/{digest}"),
                    None,
                )
            }
            DeleteArtifactTag => {
                let base = &self.fx.base[&PRIV.repo()];
                let tag = format!("t-{n}");
                let resp = reg
                    .put_manifest(&admin, &PRIV.repo(), &tag, &base.manifest)
                    .await;
                assert_eq!(resp.status(), 201, "fixture: tag {tag}");
                call(
                    Method::DELETE,
                    format!(
                        "/api/v1/projects/{p}/repositories/{REPO_PATH}/artifacts/{}/tags/{tag}",
                        base.digest
                    ),
                    None,
                )
            }
        }
    }
}

fn robot_call(route: ApiRoute, login: &str) -> ApiCall {
    let path = format!("/api/v1/robots/{}", encode_path(login));
    match route {
        ApiRoute::PatchProjectRobot | ApiRoute::PatchSystemRobot => ApiCall {
            method: Method::PATCH,
            path,
            body: Some(json!({ "disabled": false })),
        },
        ApiRoute::RefreshProjectRobot | ApiRoute::RefreshSystemRobot => ApiCall {
            method: Method::POST,
            path: format!("{path}/refresh"),
            body: None,
        },
        _ => ApiCall {
            method: Method::DELETE,
            path,
            body: None,
        },
    }
}

#[tokio::test]
async fn api_authorization_matrix() {
    let (_srv, fx) = setup().await;
    let mut afx = ApiFixture {
        fx,
        system_robot: String::new(),
    };
    afx.system_robot = afx.system_robot("sys").await;

    let mut subjects = vec![Subject::Anonymous];
    subjects.extend(ROLE_TABLE.iter().map(|(r, _)| Subject::Member(r)));
    subjects.push(Subject::NonMember);
    subjects.push(Subject::Admin);
    subjects.push(Subject::Robot(RobotKind::AllActions));

    let mut checked = 0usize;
    let mut mismatches: Vec<String> = Vec::new();
    for route in API_ROUTES {
        for subject in &subjects {
            checked += 1;
            let want = api_expected(route, *subject);
            let call = afx.prepare(route, *subject, checked).await;
            let cred = afx.fx.basic(*subject, checked).await;
            let mut rb = afx.fx.reg.req(call.method.clone(), &call.path, &cred);
            if let Some(b) = &call.body {
                rb = rb
                    .header("content-type", "application/json")
                    .body(b.to_string());
            }
            let resp = rb
                .send()
                .await
                .unwrap_or_else(|e| panic!("{} {}: {e}", call.method, call.path));
            let status = resp.status().as_u16();
            if status != want {
                let body = resp.text().await.unwrap_or_default();
                mismatches.push(format!(
                    "{route:?} as {}: {} {} → {status} (expected {want}); body {}",
                    subject.name(),
                    call.method,
                    call.path,
                    body.chars().take(200).collect::<String>()
                ));
            }
        }
    }
    eprintln!(
        "management API matrix: {checked} cells checked ({} routes × {} subjects), {} mismatches",
        API_ROUTES.len(),
        subjects.len(),
        mismatches.len()
    );
    assert!(
        mismatches.is_empty(),
        "{} of {checked} management API cells differ from the documented rules:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}
