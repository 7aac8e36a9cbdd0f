"""The registry subcommands: ``pull``, ``push``, ``login``, ``logout``, ``search``.

``add_registry_commands(subparsers)`` adds them to mounttool's parser; each sets
``func=cmd_<name>`` taking the parsed args and returning an exit status.  Every failure is one
line on stderr and a non-zero status.  The store root is ``args.root`` when the main parser has
one.  ``main()`` runs them stand-alone (``python -m mounttool.cli_registry``).
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from mounttool import oci
from mounttool.errors import MountToolError, UsageError, run_reported
from mounttool.images import ImageStore
from mounttool.refs import DEFAULT_DOMAIN, Reference, parse_reference, parse_tagged
from mounttool.registry import credentials
from mounttool.registry.auth import Credentials
from mounttool.registry.client import RegistryClient
from mounttool.registry.progress import make_progress
from mounttool.registry.pull import Puller, PullOptions
from mounttool.registry.push import Pusher, PushOptions
from mounttool.registry.transport import RegistryOptions, Transport
from mounttool.store import Store, default_root

log = logging.getLogger(__name__)
ENV_INSECURE = "MOUNTTOOL_INSECURE_REGISTRIES"


def _bool(text: str) -> bool:
    low = text.lower()
    if low in ("true", "1", "yes", "on"):
        return True
    if low in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


def _positive(kind: type[int] | type[float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
        return value
    return parse


def _connection_args(p: argparse.ArgumentParser, auth: bool = True) -> None:
    p.add_argument("--tls-verify", type=_bool, default=True, metavar="BOOL",
                   help="verify TLS (false allows plain HTTP and unverified TLS for this "
                        "registry)")
    p.add_argument("--insecure", action="store_true", help="same as --tls-verify=false")
    p.add_argument("--timeout", type=_positive(float), default=30.0, metavar="SECS",
                   help="network timeout in seconds (default 30)")
    p.add_argument("--ca-file", metavar="PEM", help="trust only these CA certificates "
                   "(default: the system's, or $SSL_CERT_FILE)")
    if auth:
        p.add_argument("--authfile", type=Path, help="credentials file (default: mounttool's, "
                       "then docker's config.json)")


def add_registry_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add pull, push, login, logout and search to a subparsers object."""
    p = subparsers.add_parser("pull", help="pull an image from a registry")
    p.add_argument("reference", help="[REGISTRY/]NAME[:TAG|@DIGEST]")
    p.add_argument("--platform", help="os/arch[/variant] to pick from a multi-platform image")
    p.add_argument("-j", "--jobs", type=_positive(int), default=3,
                   help="parallel layer downloads (default 3)")
    p.add_argument("--no-resume", action="store_true",
                   help="discard partial downloads of an earlier pull instead of resuming")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the reference")
    _connection_args(p)
    p.set_defaults(func=cmd_pull)

    p = subparsers.add_parser("push", help="push an image to a registry")
    p.add_argument("image", help="image in the store (name, id or id prefix)")
    p.add_argument("reference", nargs="?", help="destination (default: the image's name)")
    p.add_argument("-j", "--jobs", type=_positive(int), default=3,
                   help="parallel blob uploads (default 3)")
    p.add_argument("--chunk-size", type=int, default=0, metavar="BYTES",
                   help="upload blobs larger than this in chunks (default: one request)")
    p.add_argument("--no-mount", action="store_true", help="never mount blobs from another "
                   "repository of the registry")
    p.add_argument("-q", "--quiet", action="store_true", help="print only REF@DIGEST")
    _connection_args(p)
    p.set_defaults(func=cmd_push)

    p = subparsers.add_parser("login", help="log in to a registry")
    p.add_argument("registry", nargs="?", default=DEFAULT_DOMAIN)
    p.add_argument("-u", "--username")
    p.add_argument("-p", "--password", help="insecure: prefer --password-stdin")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    _connection_args(p)
    p.set_defaults(func=cmd_login)

    p = subparsers.add_parser("logout", help="forget a registry's credentials")
    p.add_argument("registry", nargs="?", default=DEFAULT_DOMAIN)
    p.add_argument("--authfile", type=Path, help="credentials file")
    p.set_defaults(func=cmd_logout)

    p = subparsers.add_parser("search", help="search a registry's catalog")
    p.add_argument("term", help="REGISTRY[/TEXT]: repositories of REGISTRY whose name has TEXT")
    p.add_argument("--limit", type=int, default=25, help="at most this many results")
    _connection_args(p)
    p.set_defaults(func=cmd_search)


def _insecure(args: argparse.Namespace, registry: str) -> bool:
    listed = {h.strip() for h in os.environ.get(ENV_INSECURE, "").split(",") if h.strip()}
    return bool(args.insecure or not args.tls_verify or registry in listed)


def _client(args: argparse.Namespace, registry: str,
            creds: Credentials | None = None) -> RegistryClient:
    if creds is None:
        creds = credentials.lookup(registry, args.authfile)
    opts = RegistryOptions(insecure=_insecure(args, registry), timeout=args.timeout,
                           ca_file=args.ca_file)
    return RegistryClient(Transport(registry, opts, creds))


def _images(args: argparse.Namespace) -> ImageStore:
    root = getattr(args, "root", None)
    return ImageStore(Store(Path(root) if root else default_root()))


def _platform(text: str | None) -> oci.Platform | None:
    if not text:
        return None
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise UsageError(f"invalid platform {text!r}: want os/arch[/variant]")
    return oci.Platform(*parts)


def _run(name: str, body: Callable[[], int]) -> int:
    """The error boundary of one command: one line on stderr, an exit status."""
    return run_reported(f"mounttool {name}", body)


def cmd_pull(args: argparse.Namespace) -> int:
    def body() -> int:
        ref = parse_reference(args.reference).with_default_tag()
        opts = PullOptions(_platform(args.platform), args.jobs, not args.no_resume)
        progress = make_progress(args.quiet)
        if not args.quiet:
            print(f"Pulling {ref.familiar}", flush=True)
        try:
            res = Puller(_images(args), _client(args, ref.domain), progress, opts).pull(ref)
        finally:
            progress.close()
        if args.quiet:
            print(ref.familiar)
            return 0
        print(f"Digest: {res.manifest_digest}")
        status = "Image is up to date" if res.up_to_date else "Downloaded newer image"
        print(f"Status: {status} for {ref.familiar}")
        print(f"Image ID: {res.image_id}")
        return 0
    return _run("pull", body)


def _push_target(args: argparse.Namespace) -> Reference:
    text = args.reference or args.image
    try:
        return parse_tagged(text)
    except MountToolError as exc:
        raise UsageError(f"invalid destination {text!r}: {exc}") from None


def cmd_push(args: argparse.Namespace) -> int:
    def body() -> int:
        target = _push_target(args)
        opts = PushOptions(args.jobs, args.chunk_size, not args.no_mount)
        progress = make_progress(args.quiet)
        if not args.quiet:
            print(f"Pushing {target.familiar}", flush=True)
        try:
            res = Pusher(_images(args), _client(args, target.domain), progress,
                         opts).push(args.image, target, named=args.reference is not None)
        finally:
            progress.close()
        if args.quiet:
            print(f"{target.name}@{res.digest}")
        else:
            print(f"{target.tag}: digest: {res.digest} size: {res.size}")
        return 0
    return _run("push", body)


def _registry_arg(text: str) -> str:
    host = text.split("://", 1)[-1].split("/", 1)[0]
    return DEFAULT_DOMAIN if host in ("index.docker.io", "registry-1.docker.io") else host


def _ask_credentials(args: argparse.Namespace) -> Credentials:
    user = args.username
    if not user:
        if not sys.stdin.isatty():
            raise UsageError("no username: use -u USER")
        user = input("Username: ").strip()
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif args.password is not None:
        print("WARNING! Using --password on the command line is insecure: other users can see "
              "it; use --password-stdin.", file=sys.stderr)
        password = args.password
    elif sys.stdin.isatty():
        password = getpass.getpass("Password: ")
    else:
        raise UsageError("no password: use --password-stdin")
    if not user or not password:
        raise UsageError("username and password must not be empty")
    return Credentials(user, password)


def cmd_login(args: argparse.Namespace) -> int:
    def body() -> int:
        registry = _registry_arg(args.registry)
        creds = _ask_credentials(args)
        _client(args, registry, creds).ping()
        path = credentials.save(registry, creds, args.authfile)
        log.info("credentials for %s saved in %s", registry, path)
        print("Login Succeeded")
        return 0
    return _run("login", body)


def cmd_logout(args: argparse.Namespace) -> int:
    def body() -> int:
        registry = _registry_arg(args.registry)
        if not credentials.erase(registry, args.authfile):
            raise MountToolError(f"not logged in to {registry}")
        print(f"Removing login credentials for {registry}")
        if args.authfile is None and credentials.lookup(registry) is not None:
            print(f"mounttool logout: note: {credentials.docker_config_file()} still has "
                  f"credentials for {registry}", file=sys.stderr)
        return 0
    return _run("logout", body)


def cmd_search(args: argparse.Namespace) -> int:
    def body() -> int:
        registry, _, term = args.term.partition("/")
        if "." not in registry and ":" not in registry and registry != "localhost":
            raise UsageError("search needs a registry: search REGISTRY[/TEXT] (Docker Hub "
                             "has no catalog to search)")
        found = 0
        for name in _client(args, registry).catalog():
            if term in name:
                print(f"{registry}/{name}")
                found += 1
                if found >= args.limit:
                    break
        return 0
    return _run("search", body)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mounttool", description=__doc__)
    parser.add_argument("--root", help="store root (default: $MOUNTTOOL_ROOT or the system one)")
    parser.add_argument("--debug", action="store_true", help="log every request")
    add_registry_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="mounttool: %(message)s")
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


if __name__ == "__main__":
    sys.exit(main())
