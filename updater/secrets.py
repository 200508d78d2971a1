"""The opened secrets of running releases: only ever in memory.

When a release with a site overlay starts, :class:`OpenedSecrets` opens the slot's sealed set into
a memory-backed filesystem (a tmpfs the updater mounts at ``STATE/run``, mode 0700), one
directory per app and slot and in it one per service, as files with the owner and mode each
service declares (root and 0400 by default), which the runtime mounts read-only at
``/run/secrets/TARGET`` in that service's container; a route's TLS certificate and key go, as one
PEM per host, to ``.ingress/`` beside them, for the ingress. Secret values never reach the slot,
the state file, the logs or ``status``; after a reboot the tmpfs is empty and the values are
opened again from the slot.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from updater.appdef import SecretMount, Service
from updater.errors import DeviceFault, Refused
from updater.identity import DeviceIdentity
from updater.oci import parse_json
from updater.sealed import Identity, open_sealed
from updater.stage import overlay_of

__all__ = ["OpenedSecrets"]



class OpenedSecrets:
    """``STATE/run``: a tmpfs holding the opened secrets of running releases, one folder per app and slot."""

    def __init__(self, state_dir: Path, identity: DeviceIdentity) -> None:
        self.root = state_dir / "run"
        self.identity = identity

    def open_into_memory(self, app: str, slot: str, slot_dir: Path, services: tuple[Service, ...],
                         certificates: tuple[tuple[str, str, str], ...] = ()) -> Path | None:
        """Open the slot's sealed secrets into the tmpfs, a folder per service holding the secrets it
        declares (owner and mode as it declares them), and ``.ingress/HOST.pem`` (certificate, then
        key) for each (host, certificate secret, key secret) of ``certificates``, which the ingress
        serves; return the release's folder (None when the slot has no overlay). A release whose
        secrets cannot be opened rolls back like one that cannot start."""
        overlay = overlay_of(slot_dir)
        if overlay is None or not overlay.get("secrets"):
            return None
        try:
            sealed = parse_json((slot_dir / "overlay" / "sealed.json").read_bytes(), str(slot_dir / "overlay"), DeviceFault)
            record = self.identity.record()
            values = open_sealed(sealed, Identity(app=overlay["name"], site=overlay["site"], version=overlay["version"]),
                                 str(record.get("device")), self.identity.key())
            self._mount()
            folder = self.root / f"{app}-{slot}"
            self.remove(app, slot)
            folder.mkdir(mode=0o700)
            for service in services:
                _write_secrets(folder / service.name, [(m, values[m.source]) for m in service.secrets if m.source in values])
            if certificates:
                _write_certificates(folder / ".ingress", certificates, values)
        except Refused as e:
            raise Refused(f"{app} slot {slot}: its secrets cannot be opened ({e.diagnostics()})") from e
        except (OSError, ValueError) as e:
            self.remove(app, slot)
            reason = "the secrets tmpfs is full" if isinstance(e, OSError) and e.errno == 28 else type(e).__name__
            raise DeviceFault(f"{app} slot {slot}: its secrets cannot be opened ({reason})") from e
        return folder

    def remove(self, app: str, slot: str) -> None:
        shutil.rmtree(self.root / f"{app}-{slot}", ignore_errors=True)

    def folder(self, app: str, slot: str) -> Path | None:
        """Where the secrets of ``app`` in ``slot`` are open (a folder per service), None when they are not."""
        folder = self.root / f"{app}-{slot}"
        return folder if folder.is_dir() else None

    def _mount(self) -> None:
        """Make ``STATE/run`` a tmpfs (secrets must never reach a disk); refuse rather than fall back."""
        if self.root.is_symlink():
            raise DeviceFault(f"{self.root}: a symbolic link; the secrets tmpfs must be a directory of the state")
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
            raise DeviceFault(f"{self.root}: secrets need a memory-backed filesystem, and mounting a tmpfs there failed "
                               f"({(done.stderr.strip() if done else '') or 'not a tmpfs'}); run the updater as root, or "
                               "mount one there first (examples/systemd/var-lib-sealift-run.mount)")


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


def _write_certificates(folder: Path, certificates: tuple[tuple[str, str, str], ...], values: dict[str, bytes]) -> None:
    """``HOST.pem`` for each (host, certificate secret, key secret): what HAProxy loads for that host."""
    for host, certificate, key in certificates:
        missing = [name for name in (certificate, key) if name not in values]
        if missing:
            raise Refused(f"the ingress needs secret {missing[0]} for {host}, and the site's overlay holds none")
    _write_secrets(folder, [])
    for host, certificate, key in certificates:
        # one PEM, CRLF and blank lines dropped: HAProxy's runtime API ends a certificate at a blank line
        lines = (values[certificate] + b"\n" + values[key]).replace(b"\r\n", b"\n").split(b"\n")
        pem = b"\n".join(line for line in lines if line.strip()) + b"\n"
        fd = os.open(folder / f"{host}.pem", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o400)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)


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
