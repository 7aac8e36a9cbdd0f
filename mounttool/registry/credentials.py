"""Where registry credentials live: mounttool's auth file, then docker's ``config.json``.

``mounttool login`` writes ``$MOUNTTOOL_AUTH_FILE`` (default
``$XDG_CONFIG_HOME/mounttool/auth.json``, mode 0600) in docker's format
(``{"auths": {"<registry>": {"auth": base64("user:password")}}}``), so either tool can read it.
Lookups then fall back to ``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json``: its
credential helper for the registry (``credHelpers``/``credsStore``, ``docker-credential-<name>
get``) when it has one, else ``auths``.  Docker Hub is keyed as docker keys it.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from mounttool.errors import MountToolError
from mounttool.registry.auth import IDENTITY_TOKEN_USER, Credentials

log = logging.getLogger(__name__)
DOCKER_HUB_KEY = "https://index.docker.io/v1/"
_HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io", DOCKER_HUB_KEY,
                "https://index.docker.io/v1", "https://registry-1.docker.io"}


def registry_key(registry: str) -> str:
    """The ``auths`` key docker uses for a registry host."""
    return DOCKER_HUB_KEY if registry in _HUB_ALIASES else registry


def _key_matches(key: str, registry: str) -> bool:
    want = registry_key(registry)
    if key == want or registry_key(key) == want:
        return True
    host = key.split("://", 1)[-1].split("/", 1)[0]
    return host == registry and want != DOCKER_HUB_KEY


def mounttool_auth_file(environ: dict[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    if env.get("MOUNTTOOL_AUTH_FILE"):
        return Path(env["MOUNTTOOL_AUTH_FILE"])
    base = env.get("XDG_CONFIG_HOME") or os.path.join(env.get("HOME") or
                                                      os.path.expanduser("~"), ".config")
    return Path(base) / "mounttool" / "auth.json"


def docker_config_file(environ: dict[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    if env.get("DOCKER_CONFIG"):
        return Path(env["DOCKER_CONFIG"]) / "config.json"
    home = env.get("HOME") or os.path.expanduser("~")
    return Path(home) / ".docker" / "config.json"


def _read(path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not valid JSON"
        raise MountToolError(f"cannot read credentials file {path}: {reason}") from None
    if not isinstance(obj, dict):
        raise MountToolError(f"credentials file {path}: expected a JSON object")
    return obj


def _decode(entry: Any, path: Path) -> Credentials | None:
    if not isinstance(entry, dict):
        return None
    if entry.get("auth"):
        try:
            user, sep, secret = base64.b64decode(str(entry["auth"])).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            sep = ""
        if not sep:
            raise MountToolError(f"credentials file {path}: an 'auth' entry is not "
                                 "base64('user:password')")
        return Credentials(user, secret)
    if entry.get("username") and entry.get("password"):
        return Credentials(str(entry["username"]), str(entry["password"]))
    if entry.get("identitytoken"):
        return Credentials(IDENTITY_TOKEN_USER, str(entry["identitytoken"]))
    return None


def lookup(registry: str, authfile: Path | None = None,
           environ: dict[str, str] | None = None) -> Credentials | None:
    """Stored credentials for a registry host, or None (anonymous)."""
    files = [authfile] if authfile else [mounttool_auth_file(environ),
                                         docker_config_file(environ)]
    for path in files:
        config = _read(path)
        helper = _helper_for(config, registry)
        if helper:
            creds = run_helper(helper, registry_key(registry))
            if creds is not None:
                log.debug("using credentials for %s from docker-credential-%s", registry,
                          helper)
                return creds
        auths = config.get("auths") or {}
        if not isinstance(auths, dict):
            continue
        for key, entry in auths.items():
            if _key_matches(str(key), registry):
                creds = _decode(entry, path)
                if creds is not None:
                    log.debug("using credentials for %s from %s", registry, path)
                    return creds
    return None


def _helper_for(config: dict[str, Any], registry: str) -> str | None:
    """docker's ``credHelpers`` entry for the registry, else its ``credsStore``."""
    helpers = config.get("credHelpers")
    if isinstance(helpers, dict):
        for key, name in helpers.items():
            if _key_matches(str(key), registry) and isinstance(name, str) and name:
                return name
    store = config.get("credsStore")
    return store if isinstance(store, str) and store else None


def run_helper(name: str, server: str) -> Credentials | None:
    """``docker-credential-<name> get``: credentials from a docker credential helper."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise MountToolError(f"invalid docker credential helper name {name!r}")
    program = shutil.which(f"docker-credential-{name}")
    if program is None:
        log.debug("docker-credential-%s is not installed", name)
        return None
    try:
        res = subprocess.run([program, "get"], input=server.encode(), capture_output=True,
                             timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise MountToolError(f"docker-credential-{name} failed: {exc}") from None
    if res.returncode != 0:  # "credentials not found" and the like: none stored
        log.debug("docker-credential-%s has no credentials for %s", name, server)
        return None
    try:
        obj = json.loads(res.stdout)
        user, secret = str(obj["Username"]), str(obj["Secret"])
    except (ValueError, KeyError, TypeError):
        raise MountToolError(f"docker-credential-{name} returned unreadable output") from None
    return Credentials(user, secret) if secret else None


def _write(path: Path, obj: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=".auth-", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def save(registry: str, creds: Credentials, authfile: Path | None = None) -> Path:
    """Record credentials (``mounttool login``); returns the file written."""
    path = authfile or mounttool_auth_file()
    obj = _read(path)
    auths = obj.get("auths") if isinstance(obj.get("auths"), dict) else {}
    assert isinstance(auths, dict)
    for key in [k for k in auths if _key_matches(str(k), registry)]:
        del auths[key]
    raw = f"{creds.username}:{creds.password}".encode()
    auths[registry_key(registry)] = {"auth": base64.b64encode(raw).decode()}
    obj["auths"] = auths
    try:
        _write(path, obj)
    except OSError as exc:
        raise MountToolError(f"cannot write credentials file {path}: {exc.strerror}") from None
    return path


def erase(registry: str, authfile: Path | None = None) -> bool:
    """Forget a registry's credentials (``mounttool logout``); False if there were none."""
    path = authfile or mounttool_auth_file()
    obj = _read(path)
    auths = obj.get("auths")
    if not isinstance(auths, dict):
        return False
    keys = [k for k in auths if _key_matches(str(k), registry)]
    if not keys:
        return False
    for key in keys:
        del auths[key]
    try:
        _write(path, obj)
    except OSError as exc:
        raise MountToolError(f"cannot write credentials file {path}: {exc.strerror}") from None
    return True
