"""Which certificates a connection to a registry trusts and presents.

For registry ``HOST[:PORT]``, in this order:

1. ``--ca-file`` (or ``SEALIFT_CA_FILE``): a PEM bundle of the CAs every registry's certificate is
   checked against, instead of the system's;
2. Docker's ``certs.d`` layout, looked up in ``SEALIFT_CERTS_D`` (directories separated by ``:``)
   or by default in ``/etc/sealift/certs.d``, ``/etc/docker/certs.d`` and ``~/.docker/certs.d``:
   ``HOST:PORT/*.crt`` are the CAs for that registry, and a ``NAME.cert`` with its ``NAME.key`` is
   the client certificate presented to it (the first such directory found for the host is used);
3. the system's CAs.

The certificates are public; a client key is only ever read by ``requests`` from where it lies.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from updater.errors import InputError

__all__ = ["Tls", "tls_for", "use_ca_file"]

DEFAULT_CERTS_DIRS = ("/etc/sealift/certs.d", "/etc/docker/certs.d", "~/.docker/certs.d")
_chosen: str | None = None  # --ca-file, for this process
_bundles: Path | None = None  # where several CAs of one host are joined into one bundle for requests


@dataclass(frozen=True)
class Tls:
    """What to check a registry's certificate against (``verify``: True for the system's CAs, or a
    bundle's path), the client certificate and key to present (``cert``), and where they came from."""

    verify: bool | str
    cert: tuple[str, str] | None
    source: str


def use_ca_file(path: str | None) -> None:
    """``--ca-file`` for every registry this process reaches (checked at the first connection)."""
    global _chosen
    _chosen = path


def tls_for(host: str) -> Tls:
    if _chosen is not None:
        _readable(_chosen, "--ca-file")
        return Tls(verify=_chosen, cert=_client_cert(host), source=f"--ca-file {_chosen}")
    if from_env := os.environ.get("SEALIFT_CA_FILE"):
        _readable(from_env, "SEALIFT_CA_FILE")
        return Tls(verify=from_env, cert=_client_cert(host), source=f"SEALIFT_CA_FILE {from_env}")
    directory = _certs_dir(host)
    cas = sorted(directory.glob("*.crt")) if directory else []
    if directory and cas:
        return Tls(verify=str(cas[0]) if len(cas) == 1 else _joined(cas), cert=_client_cert(host), source=str(directory))
    return Tls(verify=True, cert=_client_cert(host), source="the system's CAs")


def _certs_dir(host: str) -> Path | None:
    dirs = os.environ.get("SEALIFT_CERTS_D")
    for root in (dirs.split(":") if dirs else DEFAULT_CERTS_DIRS):
        candidate = Path(root).expanduser() / host
        if root and candidate.is_dir():
            return candidate
    return None


def _client_cert(host: str) -> tuple[str, str] | None:
    directory = _certs_dir(host)
    if directory is None:
        return None
    for cert in sorted(directory.glob("*.cert")):
        key = cert.with_suffix(".key")
        if not key.is_file():
            raise InputError(f"{cert}: a client certificate without its key {key.name} beside it")
        return str(cert), str(key)
    if keys := sorted(directory.glob("*.key")):
        raise InputError(f"{keys[0]}: a client key without its certificate {keys[0].with_suffix('.cert').name} beside it")
    return None


def _readable(path: str, what: str) -> None:
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
        raise InputError(f"{what} {path}: no readable CA bundle (PEM) there")


def _joined(cas: list[Path]) -> str:
    """One bundle of several CA files (requests takes one file), kept for this process."""
    global _bundles
    data = b"".join(ca.read_bytes().rstrip(b"\n") + b"\n" for ca in cas)
    if _bundles is None:
        _bundles = Path(tempfile.mkdtemp(prefix="sealift-cas-"))
        atexit.register(shutil.rmtree, _bundles, True)
    path = _bundles / f"{hashlib.sha256(data).hexdigest()[:16]}.pem"
    if not path.exists():
        path.write_bytes(data)
    return str(path)
