"""The device's identity: its key pairs and enrollment record, in ``STATE/identity``.

``sealift-updater enroll --site SITE`` creates the key pair for secrets (X25519, or the hybrid
ML-KEM-768 + X25519 KEM for devices that must keep secrets confidential for decades) and an
Ed25519 key pair that signs the device's reports; it keeps the private keys in
``STATE/identity/device.key`` and ``signing.key``, readable by their owner (root) only, and prints
the enrollment record (device ID, site, profile, key type, public keys) for the build machine's
inventory (``sealift devices add``). The private keys never leave their files: not in output,
logs or reports. A device enrolled before reports were signed gets its signing key on first use,
and its record then names it (``sealift devices add`` takes the record again).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

from updater.durable import fsync_dir, replace_file
from updater.errors import Conflict, DeviceFault, InputError
from updater.locks import file_lock
from updater.names import NAME
from updater.oci import parse_json
from updater.sealed import KEMS, DeviceKey, device_id

if TYPE_CHECKING:  # `status` reads the record without loading cryptography
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from securesystemslib.signer import CryptoSigner

__all__ = ["DeviceIdentity"]

_DIR = "identity"
_RECORD = "device.json"
_KEY = "device.key"
_SIGNING = "signing.key"


class DeviceIdentity:
    """``STATE/identity``: ``device.key`` (owner-only) and ``device.json`` (the public record)."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / _DIR

    def enrolled(self) -> bool:
        return (self.dir / _RECORD).is_file() and (self.dir / _KEY).is_file()

    def enroll(self, *, site: str, profile: str, kem: str = "x25519", force: bool = False,
               now: dt.datetime | None = None) -> dict[str, Any]:
        """Create the key pair and the record; refuse to replace existing keys unless ``force``."""
        if not NAME.fullmatch(site):
            raise InputError(f"site {site!r}: expected a site name (lower case letters, digits, . _ -)")
        if kem not in KEMS:
            raise InputError(f"unknown key type {kem!r} (known: {', '.join(KEMS)})")
        with file_lock(self.dir.parent / "identity.lock", wait=True):
            if self.enrolled() and not force:
                raise Conflict(f"{self.dir}: this device is enrolled already (as {self.record()['device']}); "
                                  "--force makes new keys, and the inventory must then take the new record")
            key = DeviceKey.generate(kem)
            public = key.public_bytes()
            signing = _new_signing_key()
            record = {"device": device_id(kem, public), "site": site, "profile": profile, "kem": kem,
                      "public_key": base64.b64encode(public).decode(), "signing_key": _public_text(signing),
                      "enrolled": (now or dt.datetime.now(dt.UTC)).isoformat(timespec="seconds")}
            try:
                self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
                os.chmod(self.dir, 0o700)
                secret = json.dumps({"kem": kem, "key": base64.b64encode(key.secret_bytes()).decode()}).encode()
                replace_file(self.dir / _KEY, secret, mode=0o600)  # the keys first: a record never names a missing key
                replace_file(self.dir / _SIGNING, _private_text(signing), mode=0o600)
                replace_file(self.dir / _RECORD, json.dumps(record, indent=2).encode() + b"\n")
                fsync_dir(self.dir)
            except OSError as e:
                raise DeviceFault(f"{self.dir}: cannot keep the device's keys ({e.strerror})") from e
        return record

    def signer(self) -> CryptoSigner:
        """The key that signs this device's reports (made now, and named in the record, for a device
        enrolled before reports were signed); DeviceFault when the device is not enrolled."""
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from securesystemslib.signer import CryptoSigner

        record = self.record()
        path = self.dir / _SIGNING
        if not isinstance(record.get("signing_key"), str):
            with file_lock(self.dir.parent / "identity.lock", wait=True):
                record = self.record()
                if not isinstance(record.get("signing_key"), str):
                    signing = _new_signing_key()
                    try:
                        replace_file(path, _private_text(signing), mode=0o600)
                        replace_file(self.dir / _RECORD, json.dumps({**record, "signing_key": _public_text(signing)},
                                                                    indent=2).encode() + b"\n")
                    except OSError as e:
                        raise DeviceFault(f"{self.dir}: cannot keep the report signing key ({e.strerror})") from e
                    record = self.record()
        try:
            _owner_only(path)
            private = Ed25519PrivateKey.from_private_bytes(base64.b64decode(path.read_bytes(), validate=True))
        except FileNotFoundError:
            raise DeviceFault(f"{path}: missing; enroll again with --force") from None
        except (OSError, ValueError, binascii.Error) as e:
            raise DeviceFault(f"{path}: damaged ({type(e).__name__})") from e
        if _public_text(private) != record["signing_key"]:
            raise DeviceFault(f"{path}: does not belong to the enrollment record {self.dir / _RECORD}: enroll again with --force")
        return CryptoSigner(private)

    def site(self) -> str | None:
        """The site this device is enrolled at; None when it is not enrolled."""
        site = self.record().get("site") if self.enrolled() else None
        return site if isinstance(site, str) and site else None

    def record(self) -> dict[str, Any]:
        try:
            data = parse_json((self.dir / _RECORD).read_bytes(), str(self.dir / _RECORD), DeviceFault)
        except FileNotFoundError:
            raise DeviceFault("this device is not enrolled: run `sealift-updater enroll --site SITE`") from None
        except (OSError, ValueError) as e:
            raise DeviceFault(f"{self.dir / _RECORD}: damaged ({type(e).__name__})") from e
        if not isinstance(data, dict):
            raise DeviceFault(f"{self.dir / _RECORD}: damaged (not a JSON object)")
        return data

    def key(self) -> DeviceKey:
        """The private key; refused if anyone but the owner could read it."""
        path = self.dir / _KEY
        try:
            _owner_only(path)
            data = parse_json(path.read_bytes(), str(path), DeviceFault)
            key = DeviceKey(str(data["kem"]), base64.b64decode(str(data["key"]), validate=True))
        except FileNotFoundError:
            raise DeviceFault("this device is not enrolled: run `sealift-updater enroll --site SITE`") from None
        except (OSError, ValueError, KeyError, TypeError, binascii.Error) as e:
            raise DeviceFault(f"{path}: damaged ({type(e).__name__})") from e
        if device_id(key.kem, key.public_bytes()) != self.record().get("device"):
            raise DeviceFault(f"{path}: does not belong to the enrollment record {self.dir / _RECORD} (an enrollment was "
                              "cut short): enroll again with --force")
        return key


def _owner_only(path: Path) -> None:
    """Refuse a private key file anyone but its owner could read."""
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise DeviceFault(f"{path}: readable by others than its owner (mode {stat.S_IMODE(mode):o}); "
                          "refusing to use it (chmod 600, and consider enrolling again)")


def _new_signing_key() -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate()


def _private_text(key: Ed25519PrivateKey) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    return base64.b64encode(key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()))


def _public_text(key: Ed25519PrivateKey) -> str:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()
