"""Writing signed metadata into a bundle's ``tuf/`` folder, beside the content-addressed layout.

The folder is replaced as a whole: in a directory bundle a new folder is renamed into place, in a
tar bundle the archive is rewritten to a temporary file (the layout part copied in the kernel)
and renamed over the old one. The layout's bytes, and so the bundle's digest, never change.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

from updater.errors import Refused
from updater.oci import METADATA_DIR, METADATA_NAME

__all__ = ["attach_metadata", "metadata_version"]


def attach_metadata(bundle: Path, files: dict[str, bytes]) -> None:
    """Make ``files`` the whole content of the bundle's ``tuf/`` folder."""
    for name in files:
        if not METADATA_NAME.fullmatch(name):
            raise Refused(f"{name!r} is not a metadata file name")
    if bundle.is_dir():
        _attach_to_directory(bundle, files)
    else:
        _attach_to_tar(bundle, files)


def _attach_to_directory(bundle: Path, files: dict[str, bytes]) -> None:
    fresh = Path(tempfile.mkdtemp(prefix=f".{METADATA_DIR}-new-", dir=bundle))
    for name, data in sorted(files.items()):
        (fresh / name).write_bytes(data)
        os.chmod(fresh / name, 0o644)
    os.chmod(fresh, 0o755)
    current = bundle / METADATA_DIR
    old = bundle / f".{METADATA_DIR}-old-{fresh.name.rsplit('-', 1)[-1]}"
    if current.is_symlink() or current.exists():
        os.rename(current, old)
    os.rename(fresh, current)
    shutil.rmtree(old, ignore_errors=True)


def _attach_to_tar(bundle: Path, files: dict[str, bytes]) -> None:
    layout_end, mtime = _layout_end(bundle)
    temp = bundle.with_name(f".{bundle.name}.tuf-tmp")
    try:
        with open(bundle, "rb") as src, open(temp, "wb") as out:
            copied = 0
            while copied < layout_end:
                n = os.copy_file_range(src.fileno(), out.fileno(), layout_end - copied, copied, copied)
                if n == 0:
                    raise Refused(f"{bundle}: shrank while its metadata was replaced")
                copied += n
            out.seek(layout_end)
            out.write(_member(METADATA_DIR, b"", mtime, directory=True))
            for name, data in sorted(files.items()):
                out.write(_member(f"{METADATA_DIR}/{name}", data, mtime))
            out.write(b"\0" * (2 * tarfile.BLOCKSIZE))
            if remainder := out.tell() % tarfile.RECORDSIZE:
                out.write(b"\0" * (tarfile.RECORDSIZE - remainder))
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, bundle)
    finally:
        temp.unlink(missing_ok=True)


def _layout_end(bundle: Path) -> tuple[int, int]:
    """Where the layout's members end (the old ``tuf/`` members, if any, must all come after)."""
    end, mtime, seen_metadata = 0, 0, False
    try:
        with tarfile.open(bundle, "r:") as tar:
            for info in tar:
                if info.name.rstrip("/") == METADATA_DIR or info.name.startswith(f"{METADATA_DIR}/"):
                    seen_metadata = True
                    continue
                if seen_metadata:
                    raise Refused(f"{bundle}: layout entries follow its {METADATA_DIR}/ folder")
                end = info.offset_data + info.size + (-info.size % tarfile.BLOCKSIZE)
                mtime = max(mtime, int(info.mtime))
    except tarfile.TarError as e:
        raise Refused(f"{bundle}: tar file is damaged ({e})") from e
    return end, mtime


def _member(name: str, data: bytes, mtime: int, *, directory: bool = False) -> bytes:
    info = tarfile.TarInfo(name)
    info.mtime, info.uid, info.gid, info.uname, info.gname = mtime, 0, 0, "", ""
    info.type, info.mode, info.size = (tarfile.DIRTYPE, 0o755, 0) if directory else (tarfile.REGTYPE, 0o644, len(data))
    return info.tobuf(format=tarfile.GNU_FORMAT) + data + b"\0" * (-len(data) % tarfile.BLOCKSIZE)


def metadata_version(data: bytes) -> int:
    """The ``signed.version`` of a metadata file (-1 if it has none): which of two copies is newer."""
    try:
        version = json.loads(data)["signed"]["version"]
    except (ValueError, KeyError, TypeError):
        return -1
    return version if isinstance(version, int) else -1
