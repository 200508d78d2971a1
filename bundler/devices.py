"""The fleet inventory the build machine keeps: enrolled devices, their sites and public keys.

``devices.yaml`` (or ``--inventory FILE``) lists each device enrolled with ``sealift devices add``
from the record ``sealift-updater enroll`` printed on the device. A device's ID is a fingerprint
of its public key, checked on the way in, so a record cannot claim another device's ID. Revoked
devices stay listed (with the time of revocation) and are never recipients again: whatever is
sealed after the revocation, they cannot read. Only public keys are here.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from securesystemslib.signer import SSlibKey

from bundler.sealing import Recipient, public_key_from_text
from updater.durable import replace_file
from updater.errors import InputError
from updater.locks import file_lock
from updater.names import NAME
from updater.sealed import KEMS, device_id
from updater.windows import Maintenance
from updater.yamlfile import Field, load_json, load_yaml

__all__ = ["Device", "Inventory"]

_DEVICE = re.compile(r"dev-[0-9a-f]{32}")
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,62}")
MAX_INVENTORY_BYTES = 128 << 20  # some 400,000 devices with X25519 keys, 60,000 with hybrid ones


@dataclass(frozen=True, kw_only=True)
class Device:
    """One enrolled device."""

    device: str
    site: str
    profile: str
    kem: str
    public_key: str  # base64
    enrolled: str
    signing_key: str | None = None  # base64 Ed25519: what the device's reports are signed with
    revoked: str | None = None
    labels: dict[str, str] = field(default_factory=dict)  # chosen at the office: what rollout waves select by

    def recipient(self) -> Recipient:
        return Recipient(device=self.device, kem=self.kem,
                         public_key=public_key_from_text(self.kem, self.public_key, where=f"device {self.device}"))

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"device": self.device, "site": self.site, "profile": self.profile, "kem": self.kem,
                                "public_key": self.public_key, "enrolled": self.enrolled}
        if self.signing_key is not None:
            data["signing_key"] = self.signing_key
        if self.labels:
            data["labels"] = dict(sorted(self.labels.items()))
        return {**data, "revoked": self.revoked} if self.revoked is not None else data

    def report_key(self) -> SSlibKey | None:
        """The key this device's reports must be signed with (None for a record that names none)."""
        if self.signing_key is None:
            return None
        return SSlibKey.from_crypto(Ed25519PublicKey.from_public_bytes(base64.b64decode(self.signing_key)))


class Inventory:
    """``devices.yaml``: read whole, changed under a lock, replaced atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def devices(self) -> list[Device]:
        return self._read()[0]

    def sites(self) -> dict[str, Maintenance]:
        """The maintenance windows sites declare, by site."""
        return self._read()[1]

    def _read(self) -> tuple[list[Device], dict[str, Maintenance]]:
        if not self.path.exists():
            return [], {}
        top = load_yaml(self.path, what="device inventory", limit=MAX_INVENTORY_BYTES)
        fields = top.mapping(required=("devices",), optional=("sites",)) if top.present else {}
        devices = [_device(entry, revocable=True) for entry in fields["devices"].items()] if "devices" in fields else []
        seen: set[str] = set()
        for d in devices:
            if d.device in seen:
                raise InputError(f"{self.path}: device {d.device} is listed twice")
            seen.add(d.device)
        sites = {site: _maintenance(entry) for site, entry in fields["sites"].entries(key_pattern=NAME, key_what="site name")} \
            if "sites" in fields else {}
        return devices, sites

    def label(self, device: str, *, add: dict[str, str], remove: tuple[str, ...] = ()) -> Device:
        """Set (``add``) and remove labels of ``device``."""
        for key, value in add.items():
            if not _LABEL.fullmatch(key) or not _LABEL.fullmatch(value):
                raise InputError(f"label {key[:64]}={value[:64]}: keys and values are letters, digits and . _ / - (at most 63)")
        with self._locked():
            devices, sites = self._read()
            found = next((d for d in devices if d.device == device), None)
            if found is None:
                raise InputError(f"{self.path}: no device {device}")
            labels = {k: v for k, v in {**found.labels, **add}.items() if k not in remove}
            changed = replace(found, labels=labels)
            self._write([changed if d.device == device else d for d in devices], sites)
        return changed

    def set_window(self, site: str, maintenance: Maintenance | None) -> None:
        """Declare (or, with None, remove) the maintenance windows of ``site``."""
        if not NAME.fullmatch(site):
            raise InputError(f"site {site!r}: expected a site name (lower case letters, digits, . _ -)")
        with self._locked():
            devices, sites = self._read()
            if maintenance is None:
                sites.pop(site, None)
            else:
                sites[site] = maintenance
            self._write(devices, sites)

    def recipients(self, site: str) -> list[Recipient]:
        """The devices of ``site`` that may read what is sealed now (revoked ones never)."""
        return [d.recipient() for d in self.devices() if d.site == site and d.revoked is None]

    def add(self, record_file: Path) -> Device:
        """Add the device an enrollment record describes; the same record again changes nothing."""
        return self.add_all([record_file])[0]

    def add_all(self, record_files: list[Path]) -> list[Device]:
        """Add the devices of several enrollment records in one change of the file (all or none)."""
        records = [_device(load_json(path, what="enrollment record"), revocable=False) for path in record_files]
        with self._locked():
            devices, sites = self._read()
            position = {d.device: i for i, d in enumerate(devices)}
            added = []
            for device in records:
                if device.device not in position:
                    position[device.device] = len(devices)
                    devices.append(device)
                    added.append(device)
                    continue
                kept = _enrolled_again(devices[position[device.device]], device)
                devices[position[device.device]] = kept
                added.append(kept)
            self._write(devices, sites)
        return added

    def revoke(self, device: str, *, now: dt.datetime | None = None) -> Device:
        with self._locked():
            devices, sites = self._read()
            found = next((d for d in devices if d.device == device), None)
            if found is None:
                raise InputError(f"{self.path}: no device {device}")
            if found.revoked is not None:
                return found
            revoked = replace(found, revoked=(now or dt.datetime.now(dt.UTC)).isoformat(timespec="seconds"))
            self._write([revoked if d.device == device else d for d in devices], sites)
        return revoked

    def _write(self, devices: list[Device], sites: dict[str, Maintenance]) -> None:
        text = "# Sealift device inventory: public keys only. Change it with `sealift devices`.\n"
        data: dict[str, Any] = {"devices": [d.to_json() for d in devices]}
        if sites:
            data["sites"] = {site: {"maintenance": m.to_json()} for site, m in sorted(sites.items())}
        text += yaml.safe_dump(data, sort_keys=False, width=10_000)
        try:
            replace_file(self.path, text.encode())
        except OSError as e:
            raise InputError(f"{self.path}: cannot write the inventory ({e.strerror}); it is unchanged") from e

    def _locked(self) -> Any:
        return file_lock(self.path.with_name(f".{self.path.name}.lock"), wait=True)


def _enrolled_again(existing: Device, device: Device) -> Device:
    """What the inventory keeps when ``device`` enrolls again as ``existing``: the same, or with its
    report key named once; InputError when the records disagree."""
    if existing.revoked is not None:
        raise InputError(f"device {device.device} was revoked on {existing.revoked}; a revoked device enrolls "
                         "again only with new keys (`sealift-updater enroll --force`)")
    if (existing.site, existing.profile) != (device.site, device.profile):
        raise InputError(f"device {device.device} is already enrolled at site {existing.site} ({existing.profile})")
    if device.signing_key is None or existing.signing_key == device.signing_key:
        return existing
    if existing.signing_key is not None:
        raise InputError(f"device {device.device} signs its reports with another key in the inventory; a device "
                         "that lost its keys enrolls again (`sealift-updater enroll --force`), and the old one is revoked")
    return replace(existing, signing_key=device.signing_key)  # enrolled before it signed reports: its report key, once


def _maintenance(entry: Field) -> Maintenance:
    m = entry.mapping(required=("maintenance",))["maintenance"]
    fields = m.mapping(required=("timezone", "windows"))
    return Maintenance.from_json({"timezone": fields["timezone"].value, "windows": list(fields["windows"].string_list())},
                                 InputError, f"{m.file}: {m.path}")


def _labels(field: Field) -> dict[str, str]:
    labels = {}
    for key, value in field.entries(key_pattern=_LABEL, key_what="label (letters, digits, . _ / -)"):
        labels[key] = value.string(pattern=_LABEL, what="a label value (letters, digits, . _ / -)")
    return labels


def _device(field: Field, *, revocable: bool) -> Device:
    optional = ("signing_key", "revoked", "labels") if revocable else ("signing_key",)
    f = field.mapping(required=("device", "site", "profile", "kem", "public_key", "enrolled"), optional=optional)
    kem = f["kem"].string(what=f"one of {', '.join(KEMS)}")
    if kem not in KEMS:
        f["kem"].fail(f"one of {', '.join(KEMS)}")
    key_text = f["public_key"].string(what="a base64 public key")
    try:
        key = public_key_from_text(kem, key_text, where=f"{field.file}: {f['public_key'].path}")
    except InputError as e:  # a key that does not decode: a malformed record
        raise f["public_key"].error(str(e).split(": ")[-1]) from e
    claimed = f["device"].string(pattern=_DEVICE, what="a device ID (dev- and 32 hex digits)")
    if claimed != device_id(kem, key):
        raise f["device"].error(f"{claimed} is not the ID of this public key ({device_id(kem, key)}); the record was altered")
    return Device(device=claimed, site=f["site"].string(pattern=NAME, what="a site name (lower case, digits, . _ -)"),
                  profile=f["profile"].string(pattern=NAME, what="a profile name"), kem=kem, public_key=key_text,
                  enrolled=_timestamp(f["enrolled"]), signing_key=_signing_key(f["signing_key"]) if "signing_key" in f else None,
                  revoked=_timestamp(f["revoked"]) if "revoked" in f else None,
                  labels=_labels(f["labels"]) if "labels" in f else {})


def _signing_key(field: Field) -> str:
    text = field.string(what="a base64 Ed25519 public key")
    try:
        Ed25519PublicKey.from_public_bytes(base64.b64decode(text, validate=True))
    except (ValueError, binascii.Error):
        field.fail("a base64 Ed25519 public key (32 bytes)")
    return text


def _timestamp(field: Field) -> str:
    """An ISO 8601 time (YAML may already have read an unquoted one as a date and time)."""
    value = field.value
    if isinstance(value, dt.datetime):
        return value.isoformat(timespec="seconds")
    if isinstance(value, str):
        try:
            return dt.datetime.fromisoformat(value).isoformat(timespec="seconds")
        except ValueError:
            pass
    field.fail("a date and time (ISO 8601)")
