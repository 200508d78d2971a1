"""Staging a verified release into a slot: its models, configs and descriptor, read-only.

Compressed payloads are decompressed while they are written, their content digest checked on the
way (the stored blobs were hashed on their way into the device's store); a directory payload is
extracted entry by entry, regular files and directories only, with every name kept inside the
slot. The slot is assembled beside its final place and renamed into it, so a slot is either fully
staged or not there.
"""

from __future__ import annotations

import os
import posixpath
import secrets
import shutil
import stat
import tarfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from updater.bundle import BundleInfo
from updater.content import Hashed, drain, zstd_reader
from updater.descriptor import BundleDescriptor, FileEntry
from updater.durable import fsync_dir
from updater.errors import DeviceFault, Refused
from updater.layout import LayoutReader
from updater.oci import CHUNK, canonical_json, json_object, parse_json
from updater.overlay import OverlayInfo
from updater.runtime import Image, image_tag

__all__ = ["clone_slot", "images_of", "overlay_of", "slot_holds", "stage_overlay", "stage_release", "staged", "staged_overlay",
           "sweep_staging"]

_DIRS = {"model": "models", "config": "configs"}
_OVERLAY = "overlay"
_RELEASE = "release.json"  # the digest of the bundle a slot was staged from: what its descriptor cannot say


def stage_release(reader: LayoutReader, info: BundleInfo, slot_dir: Path, *, replacing: Callable[[], None] = lambda: None) -> Path:
    """Make ``slot_dir`` hold exactly the release ``reader`` holds: a bundle in the device's store,
    verified as ``info`` says; return it. A compressed model's or config's content is hashed as it
    is written, and must be what the descriptor says (an uncompressed one's is its blob's, hashed on
    its way into the store). ``replacing`` is called once everything is staged, just before the slot's old
    content goes."""
    slot_dir.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temp = slot_dir.with_name(f".{slot_dir.name}-staging-{secrets.token_hex(4)}")
    try:
        temp.mkdir(mode=0o700)
        for entry in info.descriptor.files:
            with reader.open_blob(entry.digest) as stored, _content(stored, entry) as content:
                _place(content, entry, temp / _DIRS[entry.role] / entry.name)
        (temp / "descriptor.json").write_bytes(canonical_json(info.descriptor.data))
        (temp / _RELEASE).write_bytes(canonical_json({"digest": info.digest}))
        _make_read_only(temp)
        replacing()
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


@contextmanager
def _content(stored: IO[bytes], entry: FileEntry) -> Iterator[Hashed | _Stored]:
    """The entry's content: decompressed and hashed as it is read, when it is stored compressed; else
    the stored bytes as they are (their digest is the blob's, checked on its way into the store)."""
    what = f"{entry.role} {entry.name}"
    if entry.compressed:
        with zstd_reader(stored, what) as plain:
            yield Hashed(plain, digest=entry.content_digest, size=entry.content_size, what=f"the content of {what}")
    else:
        yield _Stored(stored)


class _Stored:
    """An uncompressed entry's blob, read as it is: hashed once already, on its way into the store."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream

    def read(self, n: int = CHUNK, /) -> bytes:
        return self.stream.read(n)

    def finish(self) -> None:
        pass


def _place(content: Hashed | _Stored, entry: FileEntry, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if entry.kind == "file":
        with open(dest, "xb") as out:
            while chunk := content.read(CHUNK):
                out.write(chunk)
    else:
        _extract(content, dest, entry.name)
    drain(content)
    content.finish()


def _extract(content: Hashed | _Stored, dest: Path, name: str) -> None:
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


def staged(slot_dir: Path) -> BundleDescriptor:
    """The descriptor of the release staged in ``slot_dir``."""
    return BundleDescriptor.read(slot_dir / "descriptor.json")


def images_of(info: BundleInfo | BundleDescriptor) -> list[Image]:
    """The images of a release, and the tags they get on this device."""
    d = info.descriptor if isinstance(info, BundleInfo) else info
    return [Image(name=i.name, manifest=i.manifest, config=i.config, tag=image_tag(d.name, i.name, d.version, d.profile))
            for i in d.images]


def sweep_staging(slots_dir: Path) -> None:
    """Remove what a staging or clone killed midway left beside the slots (``.a-staging-…``, ``.b-clone``).
    The caller holds the application's install lock: no staging of it runs."""
    try:
        leftovers = [p for p in slots_dir.iterdir() if p.name.startswith(".") and p.is_dir() and not p.is_symlink()]
    except FileNotFoundError:
        return
    except OSError as e:
        raise DeviceFault(f"{slots_dir}: cannot look for half-staged slots ({e.strerror})") from e
    for leftover in leftovers:
        try:
            _remove(leftover)
        except OSError as e:
            raise DeviceFault(f"{leftover}: cannot remove a half-staged slot ({e.strerror})") from e


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
        sealed = parse_json((slot_dir / _OVERLAY / "sealed.json").read_bytes(), str(slot_dir / _OVERLAY), DeviceFault)
        return OverlayInfo(name=descriptor["name"], site=descriptor["site"], version=descriptor["version"],
                           fits=descriptor.get("fits", ""), digest=descriptor["digest"],
                           environment=descriptor.get("environment") or {}, secrets=tuple(descriptor.get("secrets") or ()),
                           sealed=sealed)
    except (OSError, ValueError, KeyError) as e:
        raise DeviceFault(f"{slot_dir}: the staged overlay is damaged ({type(e).__name__})") from e


def overlay_of(slot_dir: Path) -> dict[str, Any] | None:
    """The overlay staged in a slot (its descriptor), or None."""
    try:
        data = json_object((slot_dir / _OVERLAY / "overlay.json").read_bytes(), str(slot_dir / _OVERLAY), DeviceFault)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise DeviceFault(f"{slot_dir}: the staged overlay is damaged ({type(e).__name__})") from e
    return data


def slot_holds(slot_dir: Path) -> tuple[str, str, str, str] | None:
    """What a slot holds: (name, version, bundle digest, overlay digest); None when it holds no release
    (DeviceFault when it cannot be read: that is no proof it holds something else). A digest a slot
    staged before it recorded one cannot tell is empty."""
    try:
        descriptor = json_object((slot_dir / "descriptor.json").read_bytes(), str(slot_dir), DeviceFault)
        release = json_object((slot_dir / _RELEASE).read_bytes(), str(slot_dir), DeviceFault) \
            if (slot_dir / _RELEASE).exists() else {}
    except FileNotFoundError:
        return None
    except OSError as e:
        raise DeviceFault(f"{slot_dir}: cannot tell what the slot holds ({e.strerror})") from e
    overlay = overlay_of(slot_dir) or {}
    return (str(descriptor.get("name")), str(descriptor.get("version")), str(release.get("digest", "")),
            str(overlay.get("digest", "")))


def clone_slot(source: Path, dest: Path, *, replacing: Callable[[], None] = lambda: None) -> None:
    """Stage ``dest`` as a copy of ``source`` without its overlay: files are hard-linked (they are read-only).
    ``replacing`` is called just before ``dest``'s old content goes."""
    temp = dest.with_name(f".{dest.name}-clone")
    shutil.rmtree(temp, ignore_errors=True)
    try:
        shutil.copytree(source, temp, copy_function=os.link, ignore=lambda d, names: [_OVERLAY] if Path(d) == source else [])
        replacing()
        if dest.exists():
            shutil.rmtree(dest)
        os.rename(temp, dest)
        fsync_dir(dest.parent)
    except OSError as e:
        shutil.rmtree(temp, ignore_errors=True)
        raise DeviceFault(f"staging into slot {dest.name} failed ({e.strerror}); the running release is untouched") from e
