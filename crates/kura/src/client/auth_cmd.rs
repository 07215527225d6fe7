//! `kura login` and `kura logout`: check credentials against the registry, then keep them
//! where docker keeps them (the config file, or the credential helper it names).

use std::io::{BufRead, IsTerminal, Write};
use std::sync::Arc;

use clap::Args;
use kura_client::credentials::Credential;
use kura_client::reference::normalise_host;
use kura_client::registry::Registry;
use kura_client::{ClientError, Result};

use super::Ctx;

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// The registry (`host[:port]`); default: --registry / KURA_REGISTRY, else docker.io.
    pub server: Option<String>,
    /// User name (or robot account name); asked for on a terminal when missing.
    #[arg(short, long)]
    pub username: Option<String>,
    /// Read the password (or robot secret, or token) from standard input.
    #[arg(long)]
    pub password_stdin: bool,
    /// The password on the command line: visible to other users in the process list and kept
    /// in shell history. Prefer --password-stdin.
    #[arg(short, long, hide = true)]
    pub password: Option<String>,
}

#[derive(Debug, Args)]
pub struct LogoutArgs {
    /// The registry (`host[:port]`); default: --registry / KURA_REGISTRY, else docker.io.
    pub server: Option<String>,
}

fn server_of(ctx: &Ctx, given: Option<&str>) -> String {
    let raw = given
        .or(ctx.args.registry.as_deref())
        .unwrap_or(kura_client::reference::DOCKER_HUB);
    let host = raw
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    normalise_host(host.split('/').next().unwrap_or(host))
}

pub async fn login(ctx: Arc<Ctx>, args: LoginArgs) -> Result<()> {
    let server = server_of(&ctx, args.server.as_deref());
    let stdin = std::io::stdin();
    let username = match args.username {
        Some(u) => u,
        None if stdin.is_terminal() && !args.password_stdin => {
            eprint!("Username: ");
            let _ = std::io::stderr().flush();
            let mut line = String::new();
            stdin
                .lock()
                .read_line(&mut line)
                .map_err(ClientError::io("reading the user name"))?;
            line.trim().to_string()
        }
        None => {
            return Err(ClientError::Usage(
                "a user name is needed: pass --username (-u)".into(),
            ));
        }
    };
    if username.is_empty() {
        return Err(ClientError::Usage("the user name is empty".into()));
    }
    let password = if let Some(p) = args.password {
        eprintln!(
            "WARNING! Using --password on the command line is insecure. Use --password-stdin."
        );
        p
    } else if args.password_stdin {
        let mut all = String::new();
        std::io::Read::read_to_string(&mut stdin.lock(), &mut all)
            .map_err(ClientError::io("reading the password from stdin"))?;
        all.trim_end_matches(['\n', '\r']).to_string()
    } else if stdin.is_terminal() {
        rpassword::prompt_password("Password: ").map_err(ClientError::io("reading the password"))?
    } else {
        return Err(ClientError::Usage(
            "no password: pass --password-stdin and pipe it in".into(),
        ));
    };
    if password.is_empty() {
        return Err(ClientError::Usage("the password is empty".into()));
    }
    let credential = Credential {
        username: username.clone(),
        secret: password,
    };
    let registry = Registry::new(&server, Some(credential.clone()), &ctx.connect_options())?;
    registry.check_login().await?;
    let path = ctx.with_config(|c| {
        c.store(&server, &credential)?;
        Ok(match c.helper_for(&server) {
            Some(h) => format!("credential helper docker-credential-{h}"),
            None => c.path().display().to_string(),
        })
    })?;
    if ctx.json() {
        ctx.print_json(&serde_json::json!({
            "registry": server, "username": username, "stored_in": path,
        }));
    } else {
        ctx.say(format!(
            "Login Succeeded (credentials for {server} stored in {path})"
        ));
    }
    Ok(())
}

pub async fn logout(ctx: Arc<Ctx>, args: LogoutArgs) -> Result<()> {
    let server = server_of(&ctx, args.server.as_deref());
    let removed = ctx.with_config(|c| c.erase(&server))?;
    if ctx.json() {
        ctx.print_json(&serde_json::json!({"registry": server, "removed": removed}));
    } else if removed {
        ctx.say(format!("Removed login credentials for {server}"));
    } else {
        ctx.say(format!("Not logged in to {server}"));
    }
    Ok(())
}
