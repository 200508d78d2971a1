"""The device's trusted TUF metadata and clock, kept in the state directory.

``STATE/trust`` is a symbolic link to the directory python-tuf's ngclient keeps its trusted
metadata in. A verification works on a copy; only when the whole check passes is the link
swapped (an atomic rename), so a refused bundle never changes what the device trusts. Beside it,
``STATE/clock.json`` keeps the newest time the device has trusted: a clock set back before it
(a dead RTC battery, an attacker replaying old metadata) is refused rather than believed.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tuf.api.exceptions import RepositoryError as TufRepositoryError
from tuf.api.metadata import Metadata, Root
from tuf.api.serialization import DeserializationError

from bundler.spec import version_key
from updater.errors import TrustError

__all__ = ["ROOT_MAX_BYTES", "TrustStore"]

ROOT_MAX_BYTES = 512_000  # ngclient's own bound for root metadata
_LINK = "trust"
_CLOCK = "clock.json"
_VERSIONS = "versions.json"


class TrustStore:
    """What this device trusts: its TUF metadata and the newest time it has seen."""

    def __init__(self, state_dir: Path, *, now: Callable[[], dt.datetime] | None = None) -> None:
        self.state_dir = state_dir
        self.now = now or (lambda: dt.datetime.now(dt.UTC))

    @property
    def current(self) -> Path:
        return self.state_dir / _LINK

    def provisioned(self) -> bool:
        return (self.current / "root.json").exists()

    def init(self, root_file: Path, *, force: bool = False) -> Root:
        """Provision the device with its first trusted root (self-signed to its threshold, not expired)."""
        if self.provisioned() and not force:
            raise TrustError(f"{self.state_dir}: already provisioned with a trusted root (use --force to replace it)")
        data = _read_bounded(root_file)
        root = _parse_root(root_file, data)
        if root.is_expired(self.now()):
            raise TrustError(f"{root_file}: root version {root.version} expired on {root.expires:%Y-%m-%d}")
        fresh = self._new_dir()
        history = fresh / "root_history"
        history.mkdir()
        (history / f"{root.version}.root.json").write_bytes(data)
        os.symlink(f"root_history/{root.version}.root.json", fresh / "root.json")
        self._swap_in(fresh)
        return root

    @contextmanager
    def candidate(self) -> Iterator[Path]:
        """A copy of the trusted metadata to verify against; it replaces the trusted one only if
        the caller calls :meth:`commit` inside the block."""
        if not self.provisioned():
            raise TrustError(f"{self.state_dir}: no trusted root: provision the device with `sealift-updater trust init ROOT.json`")
        self.check_clock()
        scratch = self._new_dir(create=False)
        shutil.copytree(self.current.resolve(), scratch, symlinks=True)
        try:
            yield scratch
        finally:
            if scratch.exists() and scratch.resolve() != self.current.resolve():
                shutil.rmtree(scratch)  # not committed: the device trusts what it trusted before

    def commit(self, candidate: Path, *, release: tuple[str, str, str]) -> None:
        """Make the verified candidate the trusted metadata; advance the trusted clock and the
        newest version seen for the release's name and profile."""
        name, profile, version = release
        versions = self._versions()
        key = f"{name}/{profile}"
        if key not in versions or version_key(version) > version_key(versions[key]):
            versions[key] = version
        self._swap_in(candidate)
        newest = max(self.now(), self._newest_time() or self.now())
        _write_atomic(self.state_dir / _CLOCK, json.dumps({"newest_trusted_time": newest.isoformat()}).encode())
        _write_atomic(self.state_dir / _VERSIONS, json.dumps(versions, indent=2, sort_keys=True).encode())

    def check_version(self, name: str, profile: str, version: str) -> None:
        """Refuse a release older than one this device has already accepted (a rollback)."""
        newest = self._versions().get(f"{name}/{profile}")
        if newest is not None and version_key(version) < version_key(newest):
            raise TrustError(f"bundle {name} {version} for {profile} is older than {newest}, which this device already accepted")

    def _versions(self) -> dict[str, str]:
        try:
            data = json.loads((self.state_dir / _VERSIONS).read_text())
        except FileNotFoundError:
            return {}
        except ValueError as e:
            raise TrustError(f"{self.state_dir / _VERSIONS}: damaged ({e})") from e
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise TrustError(f"{self.state_dir / _VERSIONS}: damaged (not a map of versions)")
        return data

    def check_clock(self) -> None:
        newest = self._newest_time()
        now = self.now()
        if newest is not None and now < newest - dt.timedelta(minutes=5):
            raise TrustError(
                f"the device clock reads {now:%Y-%m-%d %H:%M}Z, before the newest trusted time {newest:%Y-%m-%d %H:%M}Z; "
                "fix the clock before verifying"
            )

    def _newest_time(self) -> dt.datetime | None:
        try:
            data = json.loads((self.state_dir / _CLOCK).read_text())
            return dt.datetime.fromisoformat(data["newest_trusted_time"])
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as e:
            raise TrustError(f"{self.state_dir / _CLOCK}: damaged ({e}); the trusted time cannot be read") from e

    def _new_dir(self, *, create: bool = True) -> Path:
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.state_dir / f"{_LINK}-{secrets.token_hex(6)}"
        if create:
            path.mkdir(mode=0o700)
        return path

    def _swap_in(self, directory: Path) -> None:
        """Point the trust link at ``directory`` atomically, then drop the old directory."""
        old = self.current.resolve() if self.current.is_symlink() else None
        link = self.state_dir / f".{_LINK}-link-{secrets.token_hex(6)}"
        os.symlink(directory.name, link)
        os.replace(link, self.current)
        _fsync_dir(self.state_dir)
        if old is not None and old != directory.resolve():
            shutil.rmtree(old, ignore_errors=True)


def _read_bounded(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(ROOT_MAX_BYTES + 1)
    except OSError as e:
        raise TrustError(f"{path}: cannot read the root metadata ({e.strerror})") from e
    if len(data) > ROOT_MAX_BYTES:
        raise TrustError(f"{path}: larger than the {ROOT_MAX_BYTES} bytes root metadata may have")
    return data


def _parse_root(path: Path, data: bytes) -> Root:
    try:
        md = Metadata.from_bytes(data)
    except DeserializationError as e:
        raise TrustError(f"{path}: not TUF metadata ({e})") from e
    if not isinstance(md.signed, Root):
        raise TrustError(f"{path}: holds {md.signed.type} metadata, expected root")
    try:
        md.signed.verify_delegate(Root.type, md.signed_bytes, md.signatures)
    except TufRepositoryError as e:
        raise TrustError(f"{path}: root is not signed by its own threshold of keys ({e})") from e
    return md.signed


def _write_atomic(path: Path, data: bytes) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    with open(temp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, path)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
