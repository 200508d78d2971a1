"""Signing keys for the TUF repository, kept outside it.

A key directory (``--keys KEYDIR``) holds ``keys.json``, which maps each key ID to its role and a
securesystemslib signer URI, and the private keys Sealift generated, as PKCS#8 PEM files encrypted
with a passphrase (``SEALIFT_KEY_PASSPHRASE``, or a prompt on a terminal). Any other signer URI
(a KMS, a PKCS#11 HSM, Sigstore keyless) can be recorded instead, and signing works the same way:
Sealift only ever asks securesystemslib for a signer.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    PrivateFormat,
    load_pem_private_key,
    load_pem_public_key,
)
from securesystemslib.signer import (
    KEY_FOR_TYPE_AND_SCHEME,
    SIGNER_FOR_URI_SCHEME,
    CryptoSigner,
    Key,
    SecretsHandler,
    Signer,
    SigstoreKey,
    SSlibKey,
)

from bundler.policy import ALGORITHMS
from updater.durable import replace_file
from updater.errors import InputError

__all__ = ["PASSPHRASE_ENV", "Keyring", "public_key_from_pem"]

PASSPHRASE_ENV = "SEALIFT_KEY_PASSPHRASE"
_INDEX = "keys.json"


class EncryptedFileSigner(Signer):
    """Loads a passphrase-encrypted PKCS#8 key file: URI ``sealift-key:FILE`` (relative to the key directory)."""

    SCHEME = "sealift-key"

    @classmethod
    def from_priv_key_uri(
        cls, priv_key_uri: str, public_key: Key, secrets_handler: SecretsHandler | None = None
    ) -> CryptoSigner:
        path = Path(priv_key_uri.removeprefix(f"{cls.SCHEME}:"))
        if secrets_handler is None:
            raise InputError(f"{path}: a passphrase is needed to unlock this key")
        try:
            private_key = load_pem_private_key(path.read_bytes(), secrets_handler("passphrase").encode())
        except FileNotFoundError as e:
            raise InputError(f"{path}: private key not found") from e
        except (ValueError, TypeError) as e:
            raise InputError(f"{path}: cannot unlock the private key (wrong passphrase?)") from e
        return CryptoSigner(private_key, public_key)  # type: ignore[arg-type]

    # A loader only: signing is done by the CryptoSigner it returns.
    @property
    def public_key(self) -> Key:  # pragma: no cover
        raise NotImplementedError

    def sign(self, payload: bytes) -> Any:  # pragma: no cover
        raise NotImplementedError


SIGNER_FOR_URI_SCHEME[EncryptedFileSigner.SCHEME] = EncryptedFileSigner
# securesystemslib leaves Sigstore keys unregistered while their format may change; Sealift accepts
# them (a keyless CI signer for a role), so root metadata naming one parses on both sides.
KEY_FOR_TYPE_AND_SCHEME.setdefault(("sigstore-oidc", "Fulcio"), SigstoreKey)


@dataclass(frozen=True, kw_only=True)
class _Entry:
    keyid: str
    role: str
    uri: str
    public: dict[str, Any]


class Keyring:
    """The key directory: which keys exist, for which role, and how to reach their private half."""

    def __init__(self, directory: Path, *, passphrase: Callable[[], str] | None = None) -> None:
        self.directory = directory
        self._passphrase = passphrase or _passphrase_from_env_or_prompt
        self._cached: str | None = None
        self._signers: dict[str, Signer] = {}  # unlocking a key costs a key derivation: once per key
        self.unreachable: dict[str, str] = {}  # key ID -> why its signer could not be loaded

    def generate(self, role: str, *, algorithm: str = "ed25519") -> Key:
        """A new key pair for ``role``: the private half encrypted into the key directory."""
        if algorithm not in ALGORITHMS:
            raise InputError(f"unknown key algorithm {algorithm!r} (expected one of {', '.join(ALGORITHMS)})")
        private: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey = (
            ed25519.Ed25519PrivateKey.generate() if algorithm == "ed25519" else ec.generate_private_key(ec.SECP256R1())
        )
        key = SSlibKey.from_crypto(private.public_key())
        pem = private.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, BestAvailableEncryption(self.passphrase().encode()))
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        name = f"{quote(role, safe='')}-{key.keyid[:16]}.pem"  # a role may be called anything, a file may not
        _write_private(self.directory / name, pem)
        self._record(_Entry(keyid=key.keyid, role=role, uri=f"{EncryptedFileSigner.SCHEME}:{name}", public=key.to_dict()))
        return key

    def add_uri(self, role: str, key: Key, uri: str) -> None:
        """Record a key kept elsewhere (KMS, HSM, Sigstore) by its signer URI."""
        self._record(_Entry(keyid=key.keyid, role=role, uri=uri, public=key.to_dict()))

    def signers(self, keyids: list[str]) -> list[Signer]:
        """Signers for those of ``keyids`` this directory holds and can reach now.

        A key that cannot be reached here (a keyless signer outside CI, an HSM not plugged in) is
        skipped, and noted in :attr:`unreachable`: the others may still meet the threshold.
        """
        entries = self._entries()
        for keyid in keyids:
            if keyid in entries and keyid not in self._signers and keyid not in self.unreachable:
                try:
                    self._signers[keyid] = self._signer(entries[keyid])
                except InputError as e:
                    if "passphrase" in str(e):
                        raise
                    self.unreachable[keyid] = str(e)
        return [self._signers[k] for k in keyids if k in self._signers]

    def passphrase(self) -> str:
        if self._cached is None:
            self._cached = self._passphrase()
        return self._cached

    def _signer(self, entry: _Entry) -> Signer:
        uri = entry.uri
        if uri.startswith(f"{EncryptedFileSigner.SCHEME}:"):
            uri = f"{EncryptedFileSigner.SCHEME}:{self.directory / uri.split(':', 1)[1]}"
        try:
            return Signer.from_priv_key_uri(uri, Key.from_dict(entry.keyid, dict(entry.public)), lambda _: self.passphrase())
        except InputError:
            raise
        except Exception as e:  # securesystemslib and KMS clients raise many kinds
            raise InputError(f"key {entry.keyid[:16]} ({entry.role}): cannot load its signer {entry.uri!r} ({e})") from e

    def _entries(self) -> dict[str, _Entry]:
        path = self.directory / _INDEX
        if not path.exists():
            return {}
        try:
            data = json.loads(path.read_text())
            return {k: _Entry(keyid=k, role=v["role"], uri=v["uri"], public=v["public"]) for k, v in data.items()}
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise InputError(f"{path}: not a valid key index ({e})") from e

    def _record(self, entry: _Entry) -> None:
        entries = self._entries()
        entries[entry.keyid] = entry
        data = {k: {"role": e.role, "uri": e.uri, "public": e.public} for k, e in sorted(entries.items())}
        replace_file(self.directory / _INDEX, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def public_key_from_pem(path: Path) -> Key:
    """A public key (Ed25519, ECDSA or RSA) from a PEM file, as TUF metadata names it."""
    try:
        return SSlibKey.from_crypto(load_pem_public_key(path.read_bytes()))
    except FileNotFoundError as e:
        raise InputError(f"{path}: public key not found") from e
    except (ValueError, TypeError) as e:
        raise InputError(f"{path}: not a supported PEM public key ({e})") from e


def _write_private(path: Path, pem: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)


def _passphrase_from_env_or_prompt() -> str:
    value = os.environ.get(PASSPHRASE_ENV)
    if value:
        return value
    if sys.stdin.isatty():
        import getpass

        entered = getpass.getpass("Passphrase for the signing keys: ")
        if entered:
            return entered
    raise InputError(f"no passphrase for the signing keys: set {PASSPHRASE_ENV} or run on a terminal")
