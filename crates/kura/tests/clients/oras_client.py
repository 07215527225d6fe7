#!/usr/bin/env python3
"""Drives the oras-py client (PyPI package `oras`) against a plain-HTTP registry for Kura's
integration tests (crates/kura/tests/clients.rs). Every command prints one JSON object on stdout.

  oras_client.py --registry HOST:PORT push --ref REPO:TAG --file PATH --file-media-type T
      [--config PATH --config-media-type T] [--subject-digest D --subject-size N
      --subject-media-type T] [--annotation K=V ...] [--chunked --chunk-size N]
      Classic oras push through Registry.push(): the artifact type is carried by the config
      descriptor's mediaType (no top-level artifactType).

  oras_client.py --registry HOST:PORT push-artifact --ref REPO:TAG --artifact-type T
      --file PATH --file-media-type T [--subject-* ...] [--annotation K=V ...] [--chunked ...]
      OCI 1.1 artifact: top-level `artifactType`, the empty config
      (application/vnd.oci.empty.v1+json, `{}`), blobs and manifest uploaded with oras-py.

  oras_client.py --registry HOST:PORT pull --ref REPO:TAG|REPO@DIGEST --outdir DIR
  oras_client.py --registry HOST:PORT manifest --ref REPO:TAG|REPO@DIGEST
  oras_client.py --registry HOST:PORT tags --ref REPO

Credentials (optional, before the command): --username U with the password in the environment
variable KURA_ORAS_PASSWORD (kept off the command line); --auth-backend token (default: oras-py
follows the registry's Bearer challenge to its token endpoint, sending the credentials there)
or basic (HTTP Basic on every registry request).

oras-py 0.2.x's token backend keeps the first token it gets (for a push: the `pull` token of the
initial blob HEAD) and re-sends it when the registry answers 401 `insufficient_scope`; it only
fetches a new one after a 403. --push-scope-first makes it start a push with a
`repository:NAME:pull,push` token (fetched through oras-py's own token request, from the
registry's challenge), as the Go oras CLI, docker and skopeo do.
"""

import argparse
import json
import os
import sys
import tempfile

try:
    import oras.defaults
    import oras.oci
    import oras.provider
except ImportError as e:  # pragma: no cover - reported to the Rust test
    sys.stderr.write(
        "oras-py is not importable (%s); run scripts/test, which installs it into a venv\n" % e
    )
    sys.exit(3)

# oras-py retries failed requests (including every 500) up to five times with growing sleeps
# (minutes in total). A test wants the registry's first answer, so use the undecorated method.
if hasattr(oras.provider.Registry.do_request, "__wrapped__"):
    oras.provider.Registry.do_request = oras.provider.Registry.do_request.__wrapped__

EMPTY_CONFIG_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"


def fail(msg, response=None):
    detail = ""
    if response is not None:
        detail = " [HTTP %s %s %s: %s]" % (
            response.request.method if response.request is not None else "?",
            response.url,
            response.status_code,
            response.text[:2000],
        )
    sys.stderr.write("oras_client.py: %s%s\n" % (msg, detail))
    sys.exit(1)


def check(response, what):
    if response.status_code not in (200, 201, 202):
        fail("%s failed" % what, response)
    return response


def client(args):
    reg = oras.provider.Registry(
        hostname=args.registry,
        insecure=True,
        tls_verify=False,
        auth_backend=args.auth_backend,
    )
    # Talk to the test registry directly, whatever proxy variables the environment has.
    reg.session.trust_env = False
    if args.username:
        password = os.environ.get("KURA_ORAS_PASSWORD")
        if password is None:
            fail("--username needs the password in KURA_ORAS_PASSWORD")
        reg.auth.set_basic_auth(args.username, password)
    if getattr(args, "push_scope_first", False) and args.auth_backend == "token":
        prime_push_token(reg, args)
    return reg


def prime_push_token(reg, args):
    """Gets a pull,push token for the target repository before pushing (see the docstring)."""
    import oras.auth.utils as auth_utils

    ping = reg.session.get("http://%s/v2/" % args.registry)
    challenge = ping.headers.get("Www-Authenticate")
    if ping.status_code != 401 or not challenge:
        fail("expected a 401 challenge from /v2/", ping)
    h = auth_utils.parse_auth_header(challenge)
    repo = args.ref.split("@")[0].rsplit(":", 1)[0] if ":" in args.ref.split("/")[-1] else args.ref
    h.scope = "repository:%s:pull,push" % repo
    token = reg.auth.request_token(h)
    if not token:
        fail("the token endpoint refused a pull,push token for %s" % repo)
    reg.auth.token = token


def target(args):
    return "%s/%s" % (args.registry, args.ref)


def subject_of(args):
    if not args.subject_digest:
        return None
    return oras.oci.Subject(
        mediaType=args.subject_media_type or oras.defaults.default_manifest_media_type,
        digest=args.subject_digest,
        size=int(args.subject_size),
    )


def annotations_of(args):
    out = {}
    for kv in args.annotation or []:
        k, _, v = kv.partition("=")
        out[k] = v
    return out


def push_result(response):
    h = response.headers
    return {
        "status": response.status_code,
        "digest": h.get("Docker-Content-Digest"),
        "location": h.get("Location"),
        "oci_subject": h.get("OCI-Subject"),
    }


def cmd_push(args):
    reg = client(args)
    subject = subject_of(args)
    manifest_config = None
    if args.config:
        manifest_config = "%s:%s" % (args.config, args.config_media_type)
    response = reg.push(
        target=target(args),
        files=["%s:%s" % (args.file, args.file_media_type)],
        manifest_config=manifest_config,
        manifest_annotations=annotations_of(args) or None,
        subject=subject,
        disable_path_validation=True,
        do_chunked=args.chunked,
        chunk_size=args.chunk_size,
        quiet=True,
    )
    check(response, "manifest PUT")
    return push_result(response)


def cmd_push_artifact(args):
    reg = client(args)
    container = reg.get_container(target(args))
    layer = oras.oci.NewLayer(args.file, media_type=args.file_media_type)
    layer["annotations"] = {oras.defaults.annotation_title: os.path.basename(args.file)}
    check(
        reg.upload_blob(
            args.file, container, layer, do_chunked=args.chunked, chunk_size=args.chunk_size
        ),
        "layer upload",
    )
    with tempfile.TemporaryDirectory() as tmp:
        empty = os.path.join(tmp, "empty.json")
        with open(empty, "w") as f:
            f.write("{}")
        config = oras.oci.NewLayer(empty, media_type=EMPTY_CONFIG_MEDIA_TYPE)
        check(reg.upload_blob(empty, container, config), "empty config upload")
    manifest = oras.oci.NewManifest()
    manifest["artifactType"] = args.artifact_type
    manifest["config"] = config
    manifest["layers"] = [layer]
    annotations = annotations_of(args)
    if annotations:
        manifest["annotations"] = annotations
    else:
        del manifest["annotations"]
    subject = subject_of(args)
    if subject is not None:
        manifest["subject"] = {
            "mediaType": subject.mediaType,
            "digest": subject.digest,
            "size": subject.size,
        }
    response = check(reg.upload_manifest(manifest, container), "manifest PUT")
    return push_result(response)


def cmd_pull(args):
    reg = client(args)
    files = reg.pull(target=target(args), outdir=args.outdir)
    return {"files": files}


def cmd_manifest(args):
    reg = client(args)
    return {"manifest": reg.get_manifest(target(args))}


def cmd_tags(args):
    reg = client(args)
    return {"tags": reg.get_tags(target(args))}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--registry", required=True, help="HOST:PORT of a plain-HTTP registry")
    p.add_argument("--username", help="log in as this user (password in KURA_ORAS_PASSWORD)")
    p.add_argument("--auth-backend", choices=["token", "basic"], default="token")
    sub = p.add_subparsers(dest="cmd", required=True)

    def push_args(sp):
        sp.add_argument("--ref", required=True)
        sp.add_argument("--file", required=True)
        sp.add_argument("--file-media-type", required=True)
        sp.add_argument("--subject-digest")
        sp.add_argument("--subject-size")
        sp.add_argument("--subject-media-type")
        sp.add_argument("--annotation", action="append")
        sp.add_argument("--chunked", action="store_true")
        sp.add_argument("--chunk-size", type=int, default=oras.defaults.default_chunksize)
        sp.add_argument("--push-scope-first", action="store_true")

    sp = sub.add_parser("push")
    push_args(sp)
    sp.add_argument("--config")
    sp.add_argument("--config-media-type", default=oras.defaults.unknown_config_media_type)
    sp.set_defaults(func=cmd_push)

    sp = sub.add_parser("push-artifact")
    push_args(sp)
    sp.add_argument("--artifact-type", required=True)
    sp.set_defaults(func=cmd_push_artifact)

    sp = sub.add_parser("pull")
    sp.add_argument("--ref", required=True)
    sp.add_argument("--outdir", required=True)
    sp.set_defaults(func=cmd_pull)

    sp = sub.add_parser("manifest")
    sp.add_argument("--ref", required=True)
    sp.set_defaults(func=cmd_manifest)

    sp = sub.add_parser("tags")
    sp.add_argument("--ref", required=True)
    sp.set_defaults(func=cmd_tags)

    args = p.parse_args()
    try:
        result = args.func(args)
    except SystemExit:
        raise
    except Exception as e:  # report any client-side failure with its type
        fail("%s: %s" % (type(e).__name__, e))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
