"""Writing files so that a crash leaves either the old content or the new, never a mix."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["fsync_dir", "replace_file"]


def replace_file(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, rename it over ``path``, and
    fsync the directory so the rename itself survives a power cut."""
    temp = path.with_name(f".{path.name}.tmp")
    temp.unlink(missing_ok=True)  # a crashed writer's leftover: never reuse its mode, or a link in its place
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Make the directory's entries (a rename, a new file) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
