"""The device's trusted TUF metadata, release versions and clock, kept in the state directory.

``STATE/trust`` is a symbolic link to a directory holding python-tuf ngclient's trusted metadata,
``sealift/versions.json`` (the newest release accepted per name and profile) and
``sealift/clock.json`` (the newest time at which the device accepted anything). A verification works on a copy of that
directory, and each change is one atomic swap of the link. As the TUF client workflow says
(5.3 to 5.6), each piece of metadata ngclient verifies is kept, whatever fails after it: a
newer root, timestamp, snapshot or targets from a bundle that is then refused (a bad blob,
another profile) still becomes the device's, so it can never be rolled back to older metadata.
What the device has accepted to install (``versions.json``, ``clock.json``) changes only with an
install that passed every check; a crash or a full disk never leaves a mix.
``STATE/lock`` keeps two verifications from interleaving.
"""

from __future__ import annotations

import contextlib
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

from updater.durable import fsync_dir, replace_file
from updater.errors import Conflict, DeviceFault, InputError, Refused
from updater.lastseen import trusted_expiries
from updater.locks import file_lock
from updater.oci import parse_json
from updater.versions import version_key

__all__ = ["ROOT_MAX_BYTES", "TrustedState"]

ROOT_MAX_BYTES = 512_000  # ngclient's own bound for root metadata
CLOCK_TOLERANCE = dt.timedelta(minutes=5)
_LINK = "trust"
# beside ngclient's files, in a folder of ours: ngclient names files after roles, and a delegated
# role may be called anything
_CLOCK = "sealift/clock.json"
_VERSIONS = "sealift/versions.json"


class TrustedState:
    """What this device trusts: its TUF metadata, the releases it accepted, the newest time it saw."""

    def __init__(self, state_dir: Path, *, now: Callable[[], dt.datetime] | None = None) -> None:
        self.state_dir = state_dir
        self.now = now or (lambda: dt.datetime.now(dt.UTC))
        self.notes: list[str] = []  # warnings of the latest verification that passed all the same

    @property
    def current(self) -> Path:
        return self.state_dir / _LINK

    def provisioned(self) -> bool:
        return (self.current / "root.json").exists()

    def init(self, root_file: Path, *, force: bool = False) -> Root:
        """Provision the device with its first trusted root (self-signed to its threshold). An expired one
        is a starting point all the same (TUF 5.2: the client starts from a trusted root whatever its
        expiry, and updates it): a device provisioned from an old image takes a newer root from its
        first bundle; see :meth:`expired`."""
        data = _read_bounded(root_file)
        root = _parse_root(root_file, data)
        with self._locked():
            if self.provisioned() and not force:
                raise Conflict(f"{self.state_dir}: already provisioned with a trusted root (use --force to replace it)")
            with self._writing("provision the trusted root") as fresh:
                history = fresh / "root_history"
                history.mkdir()
                (history / f"{root.version}.root.json").write_bytes(data)
                os.symlink(f"root_history/{root.version}.root.json", fresh / "root.json")
                self._swap_in(fresh)
        return root

    def expiries(self) -> dict[str, str]:
        """When each top-level role's trusted metadata expires (ISO 8601), as far as the device holds it."""
        return trusted_expiries(self.state_dir)

    def expired(self, root: Root) -> bool:
        """Whether ``root`` has expired by this device's clock (then only a newer root lets it verify)."""
        return root.is_expired(self.now())

    def trusted_time(self) -> dt.datetime | None:
        """The newest time at which this device accepted anything: the true time is not earlier."""
        return self._newest_time()

    def reset_clock(self) -> dt.datetime | None:
        """Forget the newest trusted time (after a clock that ran ahead was corrected); returns it."""
        with self._locked():
            newest = self._newest_time()
            if newest is not None:
                with self._writing("forget the trusted time", copy=True) as scratch:
                    (scratch / _CLOCK).unlink()
                    self._swap_in(scratch)
            return newest

    def sweep(self) -> None:
        """Remove the copies a killed verification left behind, unless a verification holds the lock now
        (it sweeps them itself). Run at every start, so a converged device holds none."""
        if not self.current.is_symlink():
            return  # not provisioned: nothing to sweep
        with contextlib.suppress(BlockingIOError), file_lock(self.state_dir / "lock", wait=False):
            self._sweep()

    @contextmanager
    def candidate(self) -> Iterator[Path]:
        """A copy of the trusted state to verify against, under the state lock; it replaces the
        trusted state only if the caller calls :meth:`commit` inside the block."""
        with self._locked():
            if not self.provisioned():
                raise DeviceFault(f"{self.state_dir}: no trusted root: provision the device with `sealift-updater trust init ROOT.json`")
            self._sweep()
            self.check_clock()
            self.notes = []
            scratch = self._copy_current()
            try:
                yield scratch
            finally:
                if scratch.exists() and scratch.resolve() != self.current.resolve():
                    self._keep_verified_metadata(scratch)  # not committed: the verified metadata stays all the same
                if scratch.exists() and scratch.resolve() != self.current.resolve():
                    shutil.rmtree(scratch, ignore_errors=True)

    def commit(self, candidate: Path, *, release: tuple[str, str, str]) -> None:
        """Record the release and the time in the verified candidate, then make it the trusted state."""
        name, profile, version = release
        versions = self._versions()
        key = f"{name}/{profile}"
        if key not in versions or version_key(version) > version_key(versions[key]):
            versions[key] = version
        newest = max(self.now(), self._newest_time() or self.now())
        try:
            (candidate / "sealift").mkdir(exist_ok=True)
            replace_file(candidate / _VERSIONS, json.dumps(versions, indent=2, sort_keys=True).encode())
            replace_file(candidate / _CLOCK, json.dumps({"newest_trusted_time": newest.isoformat()}).encode())
            self._swap_in(candidate)
        except OSError as e:
            raise DeviceFault(f"{self.state_dir}: cannot record the verified state ({e.strerror}); nothing changed") from e

    def check_version(self, name: str, profile: str, version: str) -> None:
        """Refuse a release older than one this device has already accepted (a rollback)."""
        newest = self._versions().get(f"{name}/{profile}")
        if newest is not None and version_key(version) < version_key(newest):
            what = f"overlay {name} {version} for site {profile.removeprefix('overlays/')}" if profile.startswith("overlays/") \
                else f"bundle {name} {version} for {profile}"
            raise Refused(f"{what} is older than {newest}, which this device already accepted")

    def check_clock(self) -> None:
        newest = self._newest_time()
        now = self.now()
        if newest is not None and now < newest - CLOCK_TOLERANCE:
            raise DeviceFault(
                f"the device clock reads {now:%Y-%m-%d %H:%M}Z, before the newest trusted time {newest:%Y-%m-%d %H:%M}Z; "
                "fix the clock (or, if it ran ahead before, `sealift-updater trust reset-clock`)"
            )

    # -- the state files -------------------------------------------------------------------------

    def _versions(self) -> dict[str, str]:
        path = self.current / _VERSIONS
        try:
            data = parse_json(path.read_bytes(), str(path), DeviceFault)
        except FileNotFoundError:
            return {}
        except ValueError as e:
            raise DeviceFault(f"{path}: damaged ({e})") from e
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise DeviceFault(f"{path}: damaged (not a map of versions)")
        return data

    def _newest_time(self) -> dt.datetime | None:
        path = self.current / _CLOCK
        try:
            data = parse_json(path.read_bytes(), str(path), DeviceFault)
            return dt.datetime.fromisoformat(data["newest_trusted_time"])
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as e:
            raise DeviceFault(f"{path}: damaged ({e}); the trusted time cannot be read") from e

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with file_lock(self.state_dir / "lock", wait=True):  # another updater verifying: wait for it
            yield

    def _keep_verified_metadata(self, scratch: Path) -> None:
        """Make what ngclient verified and wrote in ``scratch`` the device's, with the accepted releases
        and time as they were: best effort (a full disk keeps the metadata the device had, which is safe)."""
        if _metadata_files(scratch) == _metadata_files(self.current.resolve()):
            return
        with contextlib.suppress(OSError):
            shutil.rmtree(scratch / "sealift", ignore_errors=True)
            if (self.current / "sealift").is_dir():
                shutil.copytree(self.current / "sealift", scratch / "sealift")
            self._swap_in(scratch)

    def _copy_current(self) -> Path:
        """A copy of the trusted state to change; a DeviceFault (and no copy left) if it cannot be made."""
        scratch = self._new_dir(create=False)
        try:
            shutil.copytree(self.current.resolve(), scratch, symlinks=True)
        except OSError as e:  # shutil.Error too: a full or read-only disk
            shutil.rmtree(scratch, ignore_errors=True)
            raise DeviceFault(f"{self.state_dir}: cannot copy the trusted metadata ({_why(e)}); nothing changed") from e
        return scratch

    @contextmanager
    def _writing(self, what: str, *, copy: bool = False) -> Iterator[Path]:
        """A new trust directory (a copy of the current one with ``copy``) to fill and swap in. A fault
        while doing so is a DeviceFault, and the directory is removed unless it was swapped in."""
        directory = self._copy_current() if copy else None
        try:
            if directory is None:
                directory = self._new_dir()
            yield directory
        except OSError as e:
            raise DeviceFault(f"{self.state_dir}: cannot {what} ({_why(e)}); nothing changed") from e
        finally:
            if directory is not None and directory.exists() and directory.resolve() != self.current.resolve():
                shutil.rmtree(directory, ignore_errors=True)

    def _sweep(self) -> None:
        """Remove copies left by runs that were killed (the lock is held: none is in use)."""
        keep = self.current.resolve().name
        for entry in self.state_dir.glob(f"{_LINK}-*"):
            if entry.name != keep and entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)

    def _new_dir(self, *, create: bool = True) -> Path:
        path = self.state_dir / f"{_LINK}-{secrets.token_hex(6)}"
        if create:
            path.mkdir(mode=0o700)
        return path

    def _swap_in(self, directory: Path) -> None:
        """Point the trust link at ``directory`` atomically, then drop the old directory."""
        old = self.current.resolve() if self.current.is_symlink() else None
        link = self.state_dir / f".{_LINK}-link-{secrets.token_hex(6)}"
        os.symlink(directory.name, link)
        try:
            os.replace(link, self.current)
        except OSError:
            link.unlink(missing_ok=True)
            raise
        fsync_dir(self.state_dir)
        if old is not None and old != directory.resolve():
            shutil.rmtree(old, ignore_errors=True)


def _metadata_files(directory: Path) -> dict[str, bytes]:
    """The TUF metadata of a trust directory (everything but Sealift's own ``sealift/`` folder)."""
    found = {}
    for path in directory.rglob("*"):
        relative = path.relative_to(directory)
        if relative.parts[0] != "sealift" and (path.is_file() or path.is_symlink()):
            found[str(relative)] = os.readlink(path).encode() if path.is_symlink() else path.read_bytes()
    return found


def _why(error: OSError) -> str:
    if isinstance(error, shutil.Error):  # copytree collects its failures: name the first
        first = error.args[0][0] if error.args and error.args[0] else None
        return str(first[2]) if first else str(error)
    return error.strerror or str(error)


def _read_bounded(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(ROOT_MAX_BYTES + 1)
    except OSError as e:
        raise InputError(f"{path}: cannot read the root metadata ({e.strerror})") from e
    if len(data) > ROOT_MAX_BYTES:
        raise Refused(f"{path}: larger than the {ROOT_MAX_BYTES} bytes root metadata may have")
    return data


def _parse_root(path: Path, data: bytes) -> Root:
    try:
        md = Metadata.from_bytes(data)
    except DeserializationError as e:
        raise Refused(f"{path}: not TUF metadata ({e})") from e
    if not isinstance(md.signed, Root):
        raise Refused(f"{path}: holds {md.signed.type} metadata, expected root")
    try:
        md.signed.verify_delegate(Root.type, md.signed_bytes, md.signatures)
    except TufRepositoryError as e:
        raise Refused(f"{path}: root is not signed by its own threshold of keys ({e})") from e
    return md.signed
