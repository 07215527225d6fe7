//! LDAP logins against a real directory: Debian's slapd, started by this test on loopback with
//! a throwaway database (scripts/test installs the package).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::KuraServer;
use reqwest::StatusCode;

const SUFFIX: &str = "dc=kura,dc=test";

struct Slapd {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Slapd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_slapd() -> Slapd {
    let slapd = "/usr/sbin/slapd";
    assert!(
        std::path::Path::new(slapd).exists(),
        "slapd is not installed; scripts/test installs the Debian package"
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("db")).unwrap();
    let conf = format!(
        "include /etc/ldap/schema/core.schema\n\
         include /etc/ldap/schema/cosine.schema\n\
         include /etc/ldap/schema/inetorgperson.schema\n\
         modulepath /usr/lib/ldap\n\
         moduleload back_mdb\n\
         pidfile {dir}/slapd.pid\n\
         database mdb\n\
         maxsize 10485760\n\
         suffix \"{SUFFIX}\"\n\
         rootdn \"cn=admin,{SUFFIX}\"\n\
         rootpw service-secret\n\
         directory {dir}/db\n",
        dir = d.display()
    );
    std::fs::write(d.join("slapd.conf"), conf).unwrap();
    let person = |uid: &str, pw: &str| {
        format!(
            "dn: uid={uid},ou=people,{SUFFIX}\nobjectClass: inetOrgPerson\nuid: {uid}\n\
             cn: {uid}\nsn: {uid}\nmail: {uid}@kura.test\nuserPassword: {pw}\n\n"
        )
    };
    let mut ldif = format!(
        "dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\no: kura\ndc: kura\n\n\
         dn: ou=people,{SUFFIX}\nobjectClass: organizationalUnit\nou: people\n\n\
         dn: ou=groups,{SUFFIX}\nobjectClass: organizationalUnit\nou: groups\n\n"
    );
    ldif += &person("alice", "alice-pass");
    ldif += &person("bob", "bob-pass");
    ldif += &person("boss", "boss-pass");
    ldif += &format!(
        "dn: cn=devs,ou=groups,{SUFFIX}\nobjectClass: groupOfNames\ncn: devs\n\
         member: uid=alice,ou=people,{SUFFIX}\n\n\
         dn: cn=registry-admins,ou=groups,{SUFFIX}\nobjectClass: groupOfNames\n\
         cn: registry-admins\nmember: uid=boss,ou=people,{SUFFIX}\n\n"
    );
    std::fs::write(d.join("data.ldif"), ldif).unwrap();
    let out = Command::new("/usr/sbin/slapadd")
        .arg("-f")
        .arg(d.join("slapd.conf"))
        .arg("-l")
        .arg(d.join("data.ldif"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "slapadd: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = free_port();
    let child = Command::new(slapd)
        .arg("-f")
        .arg(d.join("slapd.conf"))
        .arg("-h")
        .arg(format!("ldap://127.0.0.1:{port}/"))
        .arg("-d")
        .arg("0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let up = common::wait_until(Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert!(up, "slapd did not start listening on {port}");
    Slapd {
        child,
        port,
        _dir: dir,
    }
}

fn kura_with_ldap(ldap_port: u16, cfg_dir: &std::path::Path) -> KuraServer {
    let cfg = cfg_dir.join("kura.toml");
    std::fs::write(
        &cfg,
        format!(
            "[auth]\nmode = \"ldap\"\n\n[auth.ldap]\nurl = \"ldap://127.0.0.1:{ldap_port}\"\n\
             bind_dn = \"cn=admin,{SUFFIX}\"\nuser_base = \"ou=people,{SUFFIX}\"\n\
             group_base = \"ou=groups,{SUFFIX}\"\n\
             admin_group = \"cn=registry-admins,ou=groups,{SUFFIX}\"\ntimeout_secs = 2\n\n\
             [[auth.ldap.group_roles]]\ngroup = \"cn=devs,ou=groups,{SUFFIX}\"\n\
             project = \"team\"\nrole = \"developer\"\n"
        ),
    )
    .unwrap();
    KuraServer::start_with(
        &["--config", cfg.to_str().unwrap()],
        &[
            ("KURA_ADMIN_PASSWORD", "local-admin-pass"),
            ("KURA_LDAP_BIND_PASSWORD", "service-secret"),
        ],
    )
}

async fn current(
    c: &reqwest::Client,
    srv: &KuraServer,
    user: &str,
    pw: &str,
) -> (StatusCode, serde_json::Value) {
    let r = c
        .get(srv.url("/api/v1/users/current"))
        .basic_auth(user, Some(pw))
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or_default())
}

async fn push_blob(c: &reqwest::Client, srv: &KuraServer, user: &str, pw: &str) -> StatusCode {
    c.post(srv.url(
        "/v2/team/app/blobs/uploads/?digest=sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
    ))
    .basic_auth(user, Some(pw))
    .body("{}")
    .send()
    .await
    .unwrap()
    .status()
}

#[tokio::test]
async fn directory_logins_groups_and_local_admin_fallback() {
    let slapd = start_slapd();
    let cfg_dir = tempfile::tempdir().unwrap();
    let srv = kura_with_ldap(slapd.port, cfg_dir.path());
    let c = reqwest::Client::new();

    // The local administrator creates the project the directory group maps into.
    let r = c
        .post(srv.url("/api/v1/projects"))
        .basic_auth("admin", Some("local-admin-pass"))
        .body(r#"{"name":"team","public":false}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);

    // alice: in cn=devs → developer of team: may push.
    let (s, me) = current(&c, &srv, "alice", "alice-pass").await;
    assert_eq!(s, StatusCode::OK, "{me}");
    assert_eq!(me["username"], "alice");
    assert_eq!(me["admin"], false);
    assert_eq!(me["email"], "alice@kura.test");
    assert_eq!(
        push_blob(&c, &srv, "alice", "alice-pass").await,
        StatusCode::CREATED
    );
    let members: serde_json::Value = c
        .get(srv.url("/api/v1/projects/team/members"))
        .basic_auth("admin", Some("local-admin-pass"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        members
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["username"] == "alice" && m["role"] == "developer"),
        "{members}"
    );

    // bob: a directory user in no mapped group: logs in, cannot push to a private project.
    let (s, _) = current(&c, &srv, "bob", "bob-pass").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        push_blob(&c, &srv, "bob", "bob-pass").await,
        StatusCode::FORBIDDEN
    );

    // boss: in the administrators' group.
    let (s, me) = current(&c, &srv, "boss", "boss-pass").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(me["admin"], true);

    // Wrong and empty passwords, unknown users.
    assert_eq!(
        current(&c, &srv, "alice", "nope").await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        current(&c, &srv, "alice", "").await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        current(&c, &srv, "mallory", "x").await.0,
        StatusCode::UNAUTHORIZED
    );

    // Token flow for a directory user.
    let t = c
        .get(srv.url("/token?service=kura&scope=repository:team/app:pull,push"))
        .basic_auth("alice", Some("alice-pass"))
        .send()
        .await
        .unwrap();
    assert_eq!(t.status(), StatusCode::OK);

    // The directory goes away: the local administrator keeps working, directory users do
    // not (after their cached verification expires, which a fresh password avoids here).
    drop(slapd);
    let (s, me) = current(&c, &srv, "admin", "local-admin-pass").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(me["admin"], true);
    assert_eq!(
        current(&c, &srv, "bob", "another-try").await.0,
        StatusCode::UNAUTHORIZED
    );
}
