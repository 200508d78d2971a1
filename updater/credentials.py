"""Registry credentials where Docker keeps them, so ``docker``, ``skopeo``, oras-py and Sealift share them.

``login`` first checks the user name and password against the registry (basic or token
authentication, over the TLS settings of :mod:`updater.registry_tls`), then stores them: with the
credential helper the Docker configuration names for the host (``credHelpers``) or for every host
(``credsStore``), through ``docker-credential-NAME store``; else base64-encoded in the
configuration's ``auths`` (``$DOCKER_CONFIG/config.json``, by default ``~/.docker/config.json``, and
on a device ``/etc/sealift/docker/config.json``),
written atomically and readable by its owner only. A password never appears in an error, a log or
the process's arguments.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from updater.durable import replace_file
from updater.errors import DeviceFault, InputError
from updater.registry import DEVICE_DOCKER_CONFIG, Reference, RegistryClient

__all__ = ["docker_config", "login", "logout"]




def docker_config(*, device: bool = False) -> Path:
    """Where credentials are kept: ``$DOCKER_CONFIG/config.json``, else on a device
    ``/etc/sealift/docker/config.json`` (which the updater's registry client reads too), else
    ``~/.docker/config.json``."""
    root = os.environ.get("DOCKER_CONFIG")
    if root:
        return Path(root) / "config.json"
    return DEVICE_DOCKER_CONFIG if device else Path.home() / ".docker" / "config.json"


def login(host: str, user: str, password: str, *, plain_http: bool = False, device: bool = False) -> str:
    """Check the credentials against ``host`` and store them (``device``: where the updater keeps them);
    returns where they went."""
    if not user or not password:
        raise InputError(f"login to {host}: a user name and a password are both needed")
    client = RegistryClient(Reference(host=host, repository="sealift"), plain_http=plain_http, what=f"registry {host}",
                            credentials=(user, password))
    try:
        client.ping()
    finally:
        client.close()
    path = docker_config(device=device)
    config = _read(path)
    helper = _helper(config, host)
    if helper is not None:
        _run_helper(helper, "store", json.dumps({"ServerURL": host, "Username": user, "Secret": password}), secret=password)
        return f"credential helper docker-credential-{helper}"
    config.setdefault("auths", {})[host] = {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}
    _write(path, config)
    return str(path)


def logout(host: str, *, device: bool = False) -> bool:
    """Forget the credentials stored for ``host``; False when there were none."""
    path = docker_config(device=device)
    config = _read(path)
    helper = _helper(config, host)
    forgotten = False
    if helper is not None:
        _run_helper(helper, "erase", host)
        forgotten = True
    auths = config.get("auths")
    if isinstance(auths, dict) and host in auths:
        del auths[host]
        _write(path, config)
        forgotten = True
    return forgotten


def _read(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable Docker configuration ({e})") from e
    if not isinstance(config, dict) or not isinstance(config.get("auths", {}), dict):
        raise InputError(f"{path}: not a Docker configuration (a JSON object, with an object under auths)")
    return config


def _write(path: Path, config: dict[str, Any]) -> None:
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        replace_file(path, (json.dumps(config, indent=2) + "\n").encode(), mode=0o600)
    except OSError as e:
        raise DeviceFault(f"{path}: cannot write the Docker configuration ({e.strerror})") from e


def _helper(config: dict[str, Any], host: str) -> str | None:
    helpers = config.get("credHelpers")
    named = helpers.get(host) if isinstance(helpers, dict) else None
    store = named or config.get("credsStore")
    return store if isinstance(store, str) and store else None


def _run_helper(helper: str, action: str, payload: str, *, secret: str = "") -> None:
    binary = f"docker-credential-{helper}"
    try:
        done = subprocess.run([binary, action], input=payload.encode(), capture_output=True, timeout=60, check=False)
    except FileNotFoundError:
        raise InputError(f"the Docker configuration names credential helper {binary}, which is not installed") from None
    except subprocess.TimeoutExpired:
        raise InputError(f"credential helper {binary} did not answer {action} within 60 s") from None
    if done.returncode != 0:  # its output may echo what it was given: only its first line, never the secret
        first = [line for line in (done.stdout or done.stderr).decode(errors="replace").strip().splitlines()[:1]
                 if not secret or secret not in line]
        raise InputError(f"credential helper {binary} failed to {action}" + (f": {first[0][:200]}" if first else ""))
