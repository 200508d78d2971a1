"""The sealed secret set, as the device opens it: HPKE (RFC 9180, from ``cryptography``).

A sealed secret set is one JSON document. A fresh 256-bit data key encrypts each secret with
AES-256-GCM; the associated data binds each ciphertext to the set's identity (application, site,
version) and to the secret's name, so a ciphertext cannot be moved to another set or secret. The
data key is sealed once per recipient with HPKE (base mode, HKDF-SHA256, AES-256-GCM), its
``info`` binding the same identity and the recipient's device ID. Only ciphertext and public
values are in the document; the data key and the values exist in memory only.

Device keys are X25519 (DHKEM(X25519, HKDF-SHA256)) or, for devices that must stay
confidential for decades, the hybrid ML-KEM-768 + X25519 KEM. Sealing is the build side's
(:mod:`bundler.sealing`), on the same format and bindings.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from updater.errors import DeviceFault, InputError, Refused
from updater.names import NAME
from updater.oci import canonical_json

__all__ = [
    "FORMAT",
    "KEMS",
    "NONCE",
    "SECRET_NAME",
    "DeviceKey",
    "Identity",
    "device_id",
    "key_binding",
    "load_public_key",
    "open_sealed",
    "secret_binding",
    "suite",
]

FORMAT = "sealift-sealed-secrets-v1"
KEMS = ("x25519", "mlkem768-x25519")
_MLKEM_SEED = 64
NONCE = 12
SECRET_NAME = NAME  # secret names become file names on the device


@dataclass(frozen=True)
class Identity:
    """What a secret set belongs to; every ciphertext is bound to it."""

    app: str
    site: str
    version: str

    def to_json(self) -> dict[str, str]:
        return {"app": self.app, "site": self.site, "version": self.version}


class DeviceKey:
    """A device's private key (kept only on the device)."""

    def __init__(self, kem: str, secret: bytes) -> None:
        if kem not in KEMS:
            raise DeviceFault(f"unknown key type {kem!r} (known: {', '.join(KEMS)})")
        from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
        from cryptography.hazmat.primitives.hpke import MLKEM768X25519PrivateKey

        self.kem = kem
        self._secret = secret
        try:
            if kem == "x25519":
                self._key: Any = x25519.X25519PrivateKey.from_private_bytes(secret)
            else:
                self._key = MLKEM768X25519PrivateKey(mlkem.MLKEM768PrivateKey.from_seed_bytes(secret[:_MLKEM_SEED]),
                                                     x25519.X25519PrivateKey.from_private_bytes(secret[_MLKEM_SEED:]))
        except ValueError as e:
            raise DeviceFault(f"the device's {kem} private key is damaged ({e})") from e

    @classmethod
    def generate(cls, kem: str = "x25519") -> DeviceKey:
        from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

        if kem == "x25519":
            return cls(kem, x25519.X25519PrivateKey.generate().private_bytes_raw())
        if kem == "mlkem768-x25519":
            return cls(kem, mlkem.MLKEM768PrivateKey.generate().private_bytes_raw()
                       + x25519.X25519PrivateKey.generate().private_bytes_raw())
        raise InputError(f"unknown key type {kem!r} (known: {', '.join(KEMS)})")

    def secret_bytes(self) -> bytes:
        """The raw private key, to store with owner-only permissions; never print or log it."""
        return self._secret

    def public_bytes(self) -> bytes:
        from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

        if self.kem == "x25519":
            return bytes(self._key.public_key().public_bytes_raw())
        seed, x = self._secret[:_MLKEM_SEED], self._secret[_MLKEM_SEED:]
        return (mlkem.MLKEM768PrivateKey.from_seed_bytes(seed).public_key().public_bytes_raw()
                + x25519.X25519PrivateKey.from_private_bytes(x).public_key().public_bytes_raw())


def device_id(kem: str, public_key: bytes) -> str:
    """A device's ID: a fingerprint of its public key, so a record cannot claim another device's key."""
    return "dev-" + hashlib.sha256(kem.encode() + b"\0" + public_key).hexdigest()[:32]


def suite(kem: str) -> Any:
    """The HPKE suite of a key type: base mode, HKDF-SHA256, AES-256-GCM."""
    from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite

    return Suite(KEM.X25519 if kem == "x25519" else KEM.MLKEM768_X25519, KDF.HKDF_SHA256, AEAD.AES_256_GCM)


def open_sealed(document: Any, identity: Identity, device: str, key: DeviceKey) -> dict[str, bytes]:
    """Decrypt the secrets sealed to ``device``; Refused (naming a secret, never a value) otherwise."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise Refused(f"sealed secrets: not a {FORMAT} document")
    if document.get("identity") != identity.to_json():
        found = document.get("identity")
        claimed: dict[str, Any] = found if isinstance(found, dict) else {}
        raise Refused(f"sealed secrets are for {claimed.get('app')} {claimed.get('version')} at site {claimed.get('site')}, "
                          f"not {identity.app} {identity.version} at site {identity.site}")
    recipients, secrets = document.get("recipients"), document.get("secrets")
    if not isinstance(recipients, list) or not isinstance(secrets, dict) or not all(isinstance(v, dict) for v in secrets.values()):
        raise Refused(f"sealed secrets for {identity.app} {identity.version}: malformed document")
    entry = next((r for r in recipients if isinstance(r, dict) and r.get("device") == device), None)
    if entry is None:
        raise Refused(f"sealed secrets for {identity.app} {identity.version}: not sealed to this device ({device}); "
                          "is it enrolled in the inventory, and not revoked?")
    if entry.get("kem") != key.kem:
        raise Refused(f"sealed secrets: sealed to a {entry.get('kem')} key, this device has a {key.kem} key")
    try:
        data_key = suite(key.kem).decrypt(_unb64(entry.get("sealed_key"), "the sealed key"), key._key,
                                            info=key_binding(identity, device, secrets))
    except (InvalidTag, ValueError) as e:
        raise Refused(f"sealed secrets for {identity.app} {identity.version}: this device's key does not open them "
                          "(a wrong key, or a tampered document: altered, or with secrets added or removed)") from e
    aes = AESGCM(data_key)
    values: dict[str, bytes] = {}
    for name, sealed in secrets.items():
        if not SECRET_NAME.fullmatch(name):  # names become file names on the device
            raise Refused(f"sealed secrets: {name[:64]!r} is not a valid secret name")
        nonce = _unb64(sealed.get("nonce"), f"secret {name}")
        if len(nonce) != NONCE:
            raise Refused(f"secret {name}: malformed (a nonce of {len(nonce)} bytes)")
        try:
            values[name] = aes.decrypt(nonce, _unb64(sealed.get("ciphertext"), f"secret {name}"), secret_binding(identity, name))
        except (InvalidTag, ValueError) as e:
            raise Refused(f"secret {name}: its ciphertext was altered or moved from another secret or release") from e
    return values


def load_public_key(kem: str, raw: bytes, where: str) -> Any:
    """A recipient's public key of type ``kem`` from its raw bytes; InputError naming ``where`` if it is not one."""
    from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
    from cryptography.hazmat.primitives.hpke import MLKEM768X25519PublicKey

    try:
        if kem == "x25519":
            return x25519.X25519PublicKey.from_public_bytes(raw)
        return MLKEM768X25519PublicKey(mlkem.MLKEM768PublicKey.from_public_bytes(raw[:-32]),
                                       x25519.X25519PublicKey.from_public_bytes(raw[-32:]))
    except (ValueError, KeyError) as e:
        raise InputError(f"{where}: not a valid {kem} public key") from e


def key_binding(identity: Identity, device: str, names: Iterable[str]) -> bytes:
    """What the sealed data key is bound to: the set's identity, the device, and which secrets the set holds
    (so none can be dropped from it unnoticed)."""
    return b"sealift data key\0" + canonical_json({**identity.to_json(), "device": device, "secrets": sorted(names)})


def secret_binding(identity: Identity, name: str) -> bytes:
    """What one secret's ciphertext is bound to (its associated data): the set's identity and the secret's name."""
    return b"sealift secret\0" + canonical_json({**identity.to_json(), "secret": name})


def _unb64(text: object, what: str) -> bytes:
    if not isinstance(text, str):
        raise Refused(f"{what}: malformed (not a base64 string)")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise Refused(f"{what}: not base64") from e
