"""Staging a verified release into a slot: its models, configs and descriptor, read-only.

Compressed payloads are decompressed while they are written, their content digest checked on
the way; a directory payload is extracted entry by entry, regular files and directories only,
with every name kept inside the slot. The slot is assembled beside its final place and renamed
into it, so a slot is either fully staged or not there.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import secrets
import shutil
import stat
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import zstandard

from updater.bundle import MAX_ZSTD_WINDOW, BundleInfo
from updater.durable import fsync_dir
from updater.errors import DeviceFault, Refused
from updater.layout import open_layout
from updater.oci import CHUNK, MEDIA, canonical_json
from updater.overlay import OverlayInfo

__all__ = ["clone_slot", "overlay_of", "stage_overlay", "stage_release", "staged_overlay"]

_DIRS = {"model": "models", "config": "configs"}
_OVERLAY = "overlay"


def stage_release(bundle: Path, info: BundleInfo, slot_dir: Path) -> Path:
    """Make ``slot_dir`` hold exactly this release; return it. The bundle must be verified already."""
    slot_dir.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temp = slot_dir.with_name(f".{slot_dir.name}-staging-{secrets.token_hex(4)}")
    try:
        temp.mkdir(mode=0o700)
        with open_layout(bundle) as reader:
            for role, key in (("model", "models"), ("config", "configs")):
                for entry in info.descriptor[key]:
                    with reader.open_blob(entry["digest"]) as stored, _content(stored, entry) as content:
                        _place(content, entry, temp / _DIRS[role] / entry["name"])
        (temp / "descriptor.json").write_bytes(canonical_json(info.descriptor))
        _make_read_only(temp)
        _remove(slot_dir)
        os.rename(temp, slot_dir)
        fsync_dir(slot_dir.parent)
    except OSError as e:
        _remove(temp)
        reason = "the disk is full" if e.errno == 28 else e.strerror
        raise DeviceFault(f"staging {info.name} {info.version} into slot {slot_dir.name} failed ({reason}); "
                           "the running release is untouched") from e
    except BaseException:
        _remove(temp)
        raise
    return slot_dir


class _Checked:
    """Reads a payload's content while hashing it, refusing more than the declared size."""

    def __init__(self, source: Any, entry: dict[str, Any]) -> None:
        self.source, self.entry = source, entry
        self.sha = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data: bytes = self.source.read(n if n >= 0 else CHUNK)
        self.size += len(data)
        if self.size > self.entry["uncompressedSize"]:
            raise Refused(f"{self.entry['name']}: more content than the {self.entry['uncompressedSize']} bytes declared")
        self.sha.update(data)
        return data

    def finish(self) -> None:
        while self.read(CHUNK):
            pass
        digest = f"sha256:{self.sha.hexdigest()}"
        if (digest, self.size) != (self.entry["uncompressedDigest"], self.entry["uncompressedSize"]):
            raise Refused(f"{self.entry['name']}: content is {self.size} bytes with {digest}, not what the descriptor says")


@contextmanager
def _content(stored: IO[bytes], entry: dict[str, Any]) -> Iterator[_Checked]:
    if entry["mediaType"].endswith(MEDIA.ZSTD_SUFFIX):
        decompressor = zstandard.ZstdDecompressor(max_window_size=MAX_ZSTD_WINDOW)
        with decompressor.stream_reader(stored, read_size=CHUNK) as plain:
            yield _Checked(plain, entry)
    else:
        yield _Checked(stored, entry)


def _place(content: _Checked, entry: dict[str, Any], dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if entry["kind"] == "file":
        with open(dest, "xb") as out:
            while chunk := content.read(CHUNK):
                out.write(chunk)
    else:
        _extract(content, dest, entry["name"])
    content.finish()


def _extract(content: _Checked, dest: Path, name: str) -> None:
    """Regular files and directories only, each strictly inside ``dest``."""
    dest.mkdir()
    try:
        with tarfile.open(fileobj=content, mode="r|") as tar:  # type: ignore[call-overload]
            for member in tar:
                target = dest / _safe_name(member.name, name)
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                elif member.isreg():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    source = tar.extractfile(member)
                    assert source is not None
                    with source, open(target, "xb") as out:
                        shutil.copyfileobj(source, out, CHUNK)
                else:
                    raise Refused(f"{name}: {member.name[:200]!r} is a link or special file; only files and directories are staged")
    except tarfile.TarError as e:
        raise Refused(f"{name}: not a valid directory archive ({e})") from e


def _safe_name(raw: str, what: str) -> str:
    name = posixpath.normpath(raw.removeprefix("./"))
    if name.startswith("/") or name == ".." or name.startswith("../") or "\0" in name or name in ("", "."):
        raise Refused(f"{what}: entry {raw[:200]!r} would leave its directory")
    return name


def _make_read_only(root: Path) -> None:
    for directory, dirs, files in os.walk(root, topdown=False):
        for name in files:
            os.chmod(Path(directory, name), 0o444)
        for name in dirs:
            os.chmod(Path(directory, name), 0o555)
    os.chmod(root, 0o555)


def _remove(path: Path) -> None:
    """Remove a (possibly read-only) staged tree."""
    if not path.exists() and not path.is_symlink():
        return
    for directory, dirs, _ in os.walk(path):
        os.chmod(directory, stat.S_IRWXU)
        for name in dirs:
            full = Path(directory, name)
            if not full.is_symlink():
                os.chmod(full, stat.S_IRWXU)
    shutil.rmtree(path)


# --- a site overlay, staged with its release ---------------------------------------------------


def stage_overlay(info: OverlayInfo, slot_dir: Path) -> None:
    """Put the overlay's descriptor and sealed set (ciphertext) into a staged, read-only slot."""
    folder = slot_dir / _OVERLAY
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
        raise DeviceFault(f"staging overlay {info.version} into slot {slot_dir.name} failed ({e.strerror}); "
                           "the running release is untouched") from e
    finally:
        os.chmod(slot_dir, mode)


def staged_overlay(slot_dir: Path) -> OverlayInfo:
    """The overlay staged in a slot, to carry to the next release (it was verified when it was staged)."""
    descriptor = overlay_of(slot_dir)
    if descriptor is None:
        raise DeviceFault(f"{slot_dir}: no overlay staged")
    try:
        sealed = json.loads((slot_dir / _OVERLAY / "sealed.json").read_text())
        return OverlayInfo(name=descriptor["name"], site=descriptor["site"], version=descriptor["version"],
                           fits=descriptor.get("fits", ""), digest=descriptor["digest"],
                           environment=descriptor.get("environment") or {}, secrets=tuple(descriptor.get("secrets") or ()),
                           sealed=sealed)
    except (OSError, ValueError, KeyError) as e:
        raise DeviceFault(f"{slot_dir}: the staged overlay is damaged ({type(e).__name__})") from e


def overlay_of(slot_dir: Path) -> dict[str, Any] | None:
    """The overlay staged in a slot (its descriptor), or None."""
    try:
        data: dict[str, Any] = json.loads((slot_dir / _OVERLAY / "overlay.json").read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise DeviceFault(f"{slot_dir}: the staged overlay is damaged ({type(e).__name__})") from e
    return data


def clone_slot(source: Path, dest: Path) -> None:
    """Stage ``dest`` as a copy of ``source`` without its overlay: files are hard-linked (they are read-only)."""
    temp = dest.with_name(f".{dest.name}-clone")
    shutil.rmtree(temp, ignore_errors=True)
    try:
        shutil.copytree(source, temp, copy_function=os.link, ignore=lambda d, names: [_OVERLAY] if Path(d) == source else [])
        if dest.exists():
            shutil.rmtree(dest)
        os.rename(temp, dest)
        fsync_dir(dest.parent)
    except OSError as e:
        shutil.rmtree(temp, ignore_errors=True)
        raise DeviceFault(f"staging into slot {dest.name} failed ({e.strerror}); the running release is untouched") from e
