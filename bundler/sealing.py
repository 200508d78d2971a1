"""Sealing a site's secrets to its enrolled devices (the format and its bindings: :mod:`updater.sealed`).

A fresh 256-bit data key encrypts each secret with AES-256-GCM; the data key is sealed once per
recipient with HPKE. Only ciphertext and public values are in the document.
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from updater.errors import InputError
from updater.sealed import FORMAT, KEMS, NONCE, SECRET_NAME, Identity, key_binding, load_public_key, secret_binding, suite

__all__ = ["Recipient", "public_key_from_text", "seal"]

_PUBLIC_SIZES = {"x25519": 32, "mlkem768-x25519": 1184 + 32}
MAX_RECIPIENTS = 10_000
MAX_SECRET_BYTES = 1 << 20


@dataclass(frozen=True)
class Recipient:
    """An enrolled device's public half: its ID, KEM and public key bytes."""

    device: str
    kem: str
    public_key: bytes


def public_key_from_text(kem: str, text: str, *, where: str) -> bytes:
    """Decode a base64 public key and check its length for ``kem``."""
    if kem not in KEMS:
        raise InputError(f"{where}: unknown key type {kem!r} (known: {', '.join(KEMS)})")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise InputError(f"{where}: public key is not base64") from e
    if len(raw) != _PUBLIC_SIZES[kem]:
        raise InputError(f"{where}: a {kem} public key has {_PUBLIC_SIZES[kem]} bytes, this one {len(raw)}")
    load_public_key(kem, raw, where)
    return raw


def seal(secrets: dict[str, bytes], identity: Identity, recipients: list[Recipient]) -> dict[str, Any]:
    """Encrypt ``secrets`` to every recipient; return the sealed document (JSON-ready, ciphertext only)."""
    if not recipients:
        raise InputError(f"{identity.app} for site {identity.site}: no enrolled device to seal the secrets to")
    if len(recipients) > MAX_RECIPIENTS:
        raise InputError(f"{identity.app} for site {identity.site}: more than {MAX_RECIPIENTS} recipients")
    for name, value in secrets.items():
        if not SECRET_NAME.fullmatch(name):
            raise InputError(f"secret {name[:64]!r}: not a valid secret name")
        if len(value) > MAX_SECRET_BYTES:
            raise InputError(f"secret {name}: larger than {MAX_SECRET_BYTES} bytes")
    data_key = AESGCM.generate_key(bit_length=256)
    aes = AESGCM(data_key)
    sealed_secrets = {}
    for name, value in sorted(secrets.items()):
        nonce = os.urandom(NONCE)  # a fresh data key per set, a fresh nonce per secret
        sealed_secrets[name] = {"nonce": _b64(nonce), "ciphertext": _b64(aes.encrypt(nonce, value, secret_binding(identity, name)))}
    wrapped = []
    for r in recipients:
        public = load_public_key(r.kem, r.public_key, f"device {r.device}")
        wrapped.append({"device": r.device, "kem": r.kem,
                        "sealed_key": _b64(suite(r.kem).encrypt(data_key, public, info=key_binding(identity, r.device, secrets)))})
    return {"format": FORMAT, "identity": identity.to_json(), "recipients": wrapped, "secrets": sealed_secrets}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
