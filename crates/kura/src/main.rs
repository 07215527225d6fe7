//! The `kura` binary: `kura serve` runs the registry, `gc` and `audit` maintain it, and the
//! client commands (`login`, `push`, `pull`, `cp`, `tag`, `ls`, `inspect`, `rm`, `prune`,
//! `df`, `search`) work against Kura or any OCI registry without a daemon.

mod audit;
mod client;
mod config;
mod gc;
mod serve;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "kura",
    version,
    about = "Kura (倉): an OCI container image registry, and a daemonless client for any registry",
    after_help = "Client commands exit with 0 on success, 1 on other errors, 2 for usage errors, \
3 when authentication or authorization fails, 4 when the image, tag or repository does not \
exist, 5 when the registry cannot be reached (or TLS fails), 6 when content does not match its \
digest, 7 when the registry does not support the operation."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    client: client::ClientArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the registry server.
    ///
    /// With no flags and no config file it serves on 127.0.0.1:5000 and keeps everything
    /// (SQLite metadata, blobs) under ./kura-data.
    ///
    /// Examples:
    ///   kura serve
    ///   kura serve --listen 0.0.0.0:5000 --data-dir /var/lib/kura
    ///   KURA_LOG_FORMAT=json kura serve --config /etc/kura/kura.toml
    Serve(config::ServeArgs),
    /// Run garbage collection once against the configured backends and print the result.
    ///
    /// Online: servers on the same backends keep serving pushes and pulls meanwhile.
    ///
    /// Examples:
    ///   kura gc --dry-run --config /etc/kura/kura.toml
    ///   kura gc --delete-untagged --data-dir /var/lib/kura
    Gc(gc::GcArgs),
    /// Audit log tools (verification of the hash chain).
    Audit(audit::AuditArgs),
    /// Log in to a registry: check the credentials, then store them in the docker config
    /// (or the credential helper it names), where docker, podman and skopeo find them too.
    ///
    /// Examples:
    ///   echo "$PASSWORD" | kura login registry.example.com -u alice --password-stdin
    ///   kura login 127.0.0.1:5000 -u 'robot$ci+builder' --password-stdin < secret.txt
    #[command(verbatim_doc_comment)]
    Login(client::LoginArgs),
    /// Remove stored credentials for a registry.
    ///
    /// Examples:
    ///   kura logout registry.example.com
    #[command(verbatim_doc_comment)]
    Logout(client::LogoutArgs),
    /// Push a local image (OCI layout or docker-archive tar) to a registry. Only blobs the
    /// registry lacks are sent; a multi-platform index is pushed whole.
    ///
    /// Examples:
    ///   kura push oci:./layout:v1 registry.example.com/team/app:v1
    ///   docker save app:v1 -o app.tar && kura push docker-archive:app.tar registry.example.com/team/app:v1
    #[command(verbatim_doc_comment)]
    Push(client::PushArgs),
    /// Pull an image from a registry into an OCI layout directory or a docker-archive tar.
    ///
    /// Examples:
    ///   kura pull registry.example.com/team/app:v1 oci:./layout
    ///   kura pull --all registry.example.com/team/app:v1 oci:./layout:v1
    ///   kura pull registry.example.com/team/app:v1 docker-archive:app.tar   # docker load -i app.tar
    #[command(verbatim_doc_comment)]
    Pull(client::PullArgs),
    /// Copy an image between registries (or to/from local layouts and archives): blobs stream
    /// through, and are mounted instead when both sides are the same registry.
    ///
    /// Examples:
    ///   kura cp --all docker.io/library/alpine:3.20 registry.example.com/mirror/alpine:3.20
    ///   kura cp registry.example.com/team/app:v1 registry.example.com/prod/app:v1
    #[command(verbatim_doc_comment)]
    Cp(client::CpArgs),
    /// Give an image another tag on the server (no layers move).
    ///
    /// Examples:
    ///   kura tag registry.example.com/team/app:v1 stable
    ///   kura tag registry.example.com/team/app@sha256:… registry.example.com/team/app:v1.0.1
    #[command(verbatim_doc_comment)]
    Tag(client::TagArgs),
    /// List a registry's repositories, or a repository's tags with digest, size, creation
    /// time and platforms (the `docker images` table).
    ///
    /// Examples:
    ///   kura ls registry.example.com
    ///   kura ls registry.example.com/team/app
    ///   kura ls registry.example.com/team/app --format json
    #[command(verbatim_doc_comment)]
    Ls(client::LsArgs),
    /// Show an image: manifest, config, platforms, layers and referrers (signatures, SBOMs).
    ///
    /// Examples:
    ///   kura inspect registry.example.com/team/app:v1
    ///   kura inspect --raw registry.example.com/team/app:v1 | jq .
    ///   kura inspect --format json registry.example.com/team/app@sha256:…
    #[command(verbatim_doc_comment)]
    Inspect(client::InspectArgs),
    /// Delete tags or manifests.
    ///
    /// Examples:
    ///   kura rm registry.example.com/team/app:old
    ///   kura rm registry.example.com/team/app@sha256:…
    #[command(verbatim_doc_comment)]
    Rm(client::RmArgs),
    /// Delete images by filters. Reports only, unless --force.
    ///
    /// Examples:
    ///   kura prune registry.example.com/team/app                       # untagged manifests
    ///   kura prune registry.example.com/team/app --filter tag='ci-*' --keep 5 --force
    ///   kura prune 'registry.example.com/team/*' --filter until=168h --force   # untagged, > 1 week
    ///   kura prune registry.example.com/team/app --filter dangling=false --filter until=720h
    #[command(verbatim_doc_comment)]
    Prune(client::PruneArgs),
    /// Storage use per project or repository, with deduplication savings (Kura registries).
    ///
    /// Examples:
    ///   kura df registry.example.com            # every project (administrators)
    ///   kura df registry.example.com/team       # one project's repositories
    #[command(verbatim_doc_comment)]
    Df(client::DfArgs),
    /// Find repositories whose name contains a term.
    ///
    /// Examples:
    ///   kura search --registry registry.example.com nginx
    #[command(verbatim_doc_comment)]
    Search(client::SearchArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Gc(args) => gc::run(args),
        Command::Audit(args) => audit::run(args),
        Command::Login(a) => client::run(cli.client, |c| client::login(c, a)),
        Command::Logout(a) => client::run(cli.client, |c| client::logout(c, a)),
        Command::Push(a) => client::run(cli.client, |c| client::push(c, a)),
        Command::Pull(a) => client::run(cli.client, |c| client::pull(c, a)),
        Command::Cp(a) => client::run(cli.client, |c| client::cp(c, a)),
        Command::Tag(a) => client::run(cli.client, |c| client::tag(c, a)),
        Command::Ls(a) => client::run(cli.client, |c| client::ls(c, a)),
        Command::Inspect(a) => client::run(cli.client, |c| client::inspect(c, a)),
        Command::Rm(a) => client::run(cli.client, |c| client::rm(c, a)),
        Command::Prune(a) => client::run(cli.client, |c| client::prune(c, a)),
        Command::Df(a) => client::run(cli.client, |c| client::df(c, a)),
        Command::Search(a) => client::run(cli.client, |c| client::search(c, a)),
    }
}
