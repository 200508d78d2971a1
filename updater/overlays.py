"""A site overlay on the device: verified, staged with its release, its secrets opened only into memory.

An overlay is verified like a bundle (TUF: the signed target ``NAME/overlays/SITE/VERSION``, byte
for byte; every digest), then checked against the device: its site is the device's enrolled
site, it fits the application version it will run with, it is not older than one this device
accepted, and this device's key opens its sealed secrets. Only then does it go into a slot:
``SLOT/overlay/overlay.json`` (the descriptor: environment values, secret names) and
``SLOT/overlay/sealed.json`` (ciphertext only).

When the release starts, :class:`SecretStore` opens the sealed set into a memory-backed
filesystem (a tmpfs the updater mounts at ``STATE/run``, mode 0700), one directory per app and
slot and in it one per service, as files with the owner and mode each service declares (root and
0400 by default), which the runtime mounts read-only at ``/run/secrets/TARGET`` in that service's
container. Secret values never reach the slot, the state file, the logs or
``status``; after a reboot the tmpfs is empty and the values are opened again from the slot.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

from bundler.appdef import SecretMount, Service
from bundler.durable import fsync_dir
from bundler.errors import SecretError
from bundler.layout import canonical_json, open_layout
from bundler.overlay import OverlayInfo, check_overlay, fits, overlay_target
from bundler.sealing import Identity, open_sealed
from updater.errors import TrustError, UpdaterError
from updater.identity import DeviceIdentity
from updater.trust import TrustStore
from updater.verify import signed_name

__all__ = ["SecretStore", "check_overlay_in_slot", "clone_slot", "overlay_of", "stage_overlay", "verify_overlay"]

_DIR = "overlay"


def verify_overlay(path: Path, *, trust: TrustStore, identity: DeviceIdentity, app: str | None, app_version: str | None,
                   commit: bool = True) -> OverlayInfo:
    """Everything a device checks before an overlay may go into a slot (with ``app`` ``app_version``;
    None when nothing runs yet to check it against); the trusted state then advances (unless not
    ``commit``: a check before downloading what goes with it)."""
    record = identity.record()
    with trust.candidate() as metadata_dir, open_layout(path) as reader:
        name = signed_name(path, reader, metadata_dir)
        info = check_overlay(path)
        if overlay_target(info.name, info.site, info.version) != name:
            raise TrustError(f"{path}: the overlay is not the target it claims to be")
        if app is not None and info.name != app:
            raise UpdaterError(f"{path}: an overlay for {info.name}, this device runs {app}")
        if info.site != record.get("site"):
            raise UpdaterError(f"{path}: an overlay for site {info.site}, this device is enrolled at {record.get('site')}")
        if app_version is not None and not fits(info.fits, app_version):
            raise UpdaterError(f"{path}: overlay {info.version} fits {info.name} {info.fits}, not {app_version}")
        trust.check_version(info.name, f"overlays/{info.site}", info.version)
        open_sealed(info.sealed, Identity(app=info.name, site=info.site, version=info.version), str(record.get("device")),
                    identity.key())  # this device can read it: refused now, not after the switch
        if commit:
            trust.commit(metadata_dir, release=(info.name, f"overlays/{info.site}", info.version))
    return info


def stage_overlay(info: OverlayInfo, slot_dir: Path) -> None:
    """Put the overlay's descriptor and sealed set (ciphertext) into a staged, read-only slot."""
    folder = slot_dir / _DIR
    descriptor = {"name": info.name, "site": info.site, "version": info.version, "fits": info.fits,
                  "digest": info.digest, "environment": info.environment, "secrets": list(info.secrets)}
    mode = stat.S_IMODE(slot_dir.stat().st_mode)
    try:
        os.chmod(slot_dir, mode | stat.S_IWUSR)
        folder.mkdir(mode=0o700)
        (folder / "overlay.json").write_bytes(canonical_json(descriptor))
        (folder / "sealed.json").write_bytes(canonical_json(info.sealed))
        for file in folder.iterdir():
            os.chmod(file, 0o400)
        os.chmod(folder, 0o500)
    except OSError as e:
        raise UpdaterError(f"staging overlay {info.version} into slot {slot_dir.name} failed ({e.strerror}); "
                           "the running release is untouched") from e
    finally:
        os.chmod(slot_dir, mode)


def check_overlay_in_slot(slot_dir: Path) -> OverlayInfo:
    """The overlay staged in a slot, to carry to the next release (it was verified when it was staged)."""
    descriptor = overlay_of(slot_dir)
    if descriptor is None:
        raise UpdaterError(f"{slot_dir}: no overlay staged")
    try:
        sealed = json.loads((slot_dir / _DIR / "sealed.json").read_text())
        return OverlayInfo(name=descriptor["name"], site=descriptor["site"], version=descriptor["version"],
                           fits=descriptor.get("fits", ""), digest=descriptor["digest"],
                           environment=descriptor.get("environment") or {}, secrets=tuple(descriptor.get("secrets") or ()),
                           sealed=sealed)
    except (OSError, ValueError, KeyError) as e:
        raise UpdaterError(f"{slot_dir}: the staged overlay is damaged ({type(e).__name__})") from e


def overlay_of(slot_dir: Path) -> dict[str, Any] | None:
    """The overlay staged in a slot (its descriptor), or None."""
    try:
        data: dict[str, Any] = json.loads((slot_dir / _DIR / "overlay.json").read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise UpdaterError(f"{slot_dir}: the staged overlay is damaged ({type(e).__name__})") from e
    return data


def clone_slot(source: Path, dest: Path) -> None:
    """Stage ``dest`` as a copy of ``source`` without its overlay: files are hard-linked (they are read-only)."""
    temp = dest.with_name(f".{dest.name}-clone")
    shutil.rmtree(temp, ignore_errors=True)
    try:
        shutil.copytree(source, temp, copy_function=os.link, ignore=lambda d, names: [_DIR] if Path(d) == source else [])
        if dest.exists():
            shutil.rmtree(dest)
        os.rename(temp, dest)
        fsync_dir(dest.parent)
    except OSError as e:
        shutil.rmtree(temp, ignore_errors=True)
        raise UpdaterError(f"staging into slot {dest.name} failed ({e.strerror}); the running release is untouched") from e


class SecretStore:
    """``STATE/run``: a tmpfs holding the opened secrets of running releases, one folder per app and slot."""

    def __init__(self, state_dir: Path, identity: DeviceIdentity) -> None:
        self.root = state_dir / "run"
        self.identity = identity

    def open_into_memory(self, app: str, slot: str, slot_dir: Path, services: tuple[Service, ...]) -> Path | None:
        """Open the slot's sealed secrets into the tmpfs, a folder per service holding the secrets it
        declares (owner and mode as it declares them); return the release's folder (None when the slot
        has no overlay). Any failure is an UpdaterError, so a release whose secrets cannot be opened
        rolls back like one that cannot start."""
        overlay = overlay_of(slot_dir)
        if overlay is None or not overlay.get("secrets"):
            return None
        try:
            sealed = json.loads((slot_dir / _DIR / "sealed.json").read_text())
            record = self.identity.record()
            values = open_sealed(sealed, Identity(app=overlay["name"], site=overlay["site"], version=overlay["version"]),
                                 str(record.get("device")), self.identity.key())
            self._mount()
            folder = self.root / f"{app}-{slot}"
            self.remove(app, slot)
            folder.mkdir(mode=0o700)
            for service in services:
                _write_secrets(folder / service.name, [(m, values[m.source]) for m in service.secrets if m.source in values])
        except SecretError as e:
            raise UpdaterError(f"{app} slot {slot}: its secrets cannot be opened ({e.diagnostics()})") from e
        except (OSError, ValueError) as e:
            self.remove(app, slot)
            reason = "the secrets tmpfs is full" if isinstance(e, OSError) and e.errno == 28 else type(e).__name__
            raise UpdaterError(f"{app} slot {slot}: its secrets cannot be opened ({reason})") from e
        return folder

    def remove(self, app: str, slot: str) -> None:
        shutil.rmtree(self.root / f"{app}-{slot}", ignore_errors=True)

    def _mount(self) -> None:
        """Make ``STATE/run`` a tmpfs (secrets must never reach a disk); refuse rather than fall back."""
        if self.root.is_symlink():
            raise UpdaterError(f"{self.root}: a symbolic link; the secrets tmpfs must be a directory of the state")
        self.root.mkdir(mode=0o700, exist_ok=True)
        if _is_tmpfs(self.root):
            return
        options = "size=64m,mode=0700,nosuid,nodev,noexec"
        done = None
        for extra in (",noswap", ""):  # noswap (Linux 6.4+) keeps the values out of swap too
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", options + extra, "sealift-secrets", str(self.root)],
                                  capture_output=True, text=True, check=False)
            if done.returncode == 0:
                break
        if done is None or done.returncode != 0 or not _is_tmpfs(self.root):
            raise UpdaterError(f"{self.root}: secrets need a memory-backed filesystem, and mounting a tmpfs there failed "
                               f"({(done.stderr.strip() if done else '') or 'not a tmpfs'}); the updater must run as root")


def _write_secrets(folder: Path, secrets: list[tuple[SecretMount, bytes]]) -> None:
    """One service's opened secrets, each a new file (never through a link) with the owner and mode it declares."""
    folder.mkdir(mode=0o700)
    dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        for mount, value in secrets:  # sources were checked by open_sealed: no separators
            fd = os.open(mount.source, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o400, dir_fd=dir_fd)
            with os.fdopen(fd, "wb") as f:
                f.write(value)
                os.fchown(f.fileno(), mount.uid, mount.gid)
                os.fchmod(f.fileno(), mount.mode)
    finally:
        os.close(dir_fd)


def _is_tmpfs(path: Path) -> bool:
    """Whether ``path`` is the mount point of a tmpfs (from /proc/self/mountinfo)."""
    target = str(path.resolve())
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return False
    for line in lines:
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) > 4 and fields[4].replace("\\040", " ") == target and right.split()[:1] == ["tmpfs"]:
            return True
    return False
