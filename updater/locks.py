"""Locks between updater processes: advisory file locks the kernel drops when the holder dies."""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from updater.errors import DeviceFault

__all__ = ["file_lock", "remove_lock"]


@contextmanager
def file_lock(path: Path, *, wait: bool, shared: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing), or with ``shared`` one that others may
    share but an exclusive holder excludes. Without ``wait``, BlockingIOError at once if another
    process holds it. The kernel drops the lock when the holder dies. A lock file that cannot be
    made (a read-only or full state directory) is a DeviceFault."""
    fd = _locked_fd(path, wait=wait, shared=shared)
    try:
        yield
    finally:
        os.close(fd)


def remove_lock(path: Path) -> bool:
    """Remove the lock file ``path`` if nobody holds it; False if someone does. Safe against a process
    that opened it just before: :func:`file_lock` re-checks, once locked, that the file it
    locked is still the one at ``path``."""
    try:
        fd = _locked_fd(path, wait=False, create=False)
    except (BlockingIOError, FileNotFoundError):
        return False
    try:
        path.unlink(missing_ok=True)
    finally:
        os.close(fd)
    return True


def _locked_fd(path: Path, *, wait: bool, create: bool = True, shared: bool = False) -> int:
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    while True:
        fd = _open(path, create=create)
        try:
            fcntl.flock(fd, mode if wait else mode | fcntl.LOCK_NB)
            if _same_file(path, fd):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # removed (and perhaps made again) while we waited: lock the file that is there now


def _open(path: Path, *, create: bool) -> int:
    try:
        if create:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        return os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o600)
    except FileNotFoundError:
        if create:
            raise DeviceFault(f"{path}: cannot make the lock file (its directory vanished)") from None
        raise
    except OSError as e:
        raise DeviceFault(f"{path}: cannot make the lock file ({e.strerror or errno.errorcode.get(e.errno or 0, e)})") from e


def _same_file(path: Path, fd: int) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False
