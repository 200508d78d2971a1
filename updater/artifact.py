"""What an artifact is: a bundle, a site overlay, or a medium holding several of them.

:func:`kind` is the one decision, by the top index's ``artifactType`` (on disk, in a registry, on a
medium), and :func:`open_artifact` opens a path once for everything that follows: its layout
reader, and the entry points its ``index.json`` lists. A medium says so with the
``sealift-medium.json`` beside its layout (a tar medium starts with it, so even one cut short is
recognised as a medium, and checked as one).
"""

from __future__ import annotations

import enum
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from updater.errors import Refused
from updater.layout import MEDIUM_FILE, LayoutReader, open_layout, read_index
from updater.oci import MEDIA, Descriptor

__all__ = ["Artifact", "Kind", "kind", "open_artifact"]


class Kind(enum.StrEnum):
    BUNDLE = "bundle"
    OVERLAY = "overlay"
    MEDIUM = "medium"


_TOP_KINDS = {MEDIA.BUNDLE: Kind.BUNDLE, MEDIA.OVERLAY: Kind.OVERLAY}


def kind(artifact_type: str | None) -> Kind | None:
    """What a top index with ``artifact_type`` is (None: not Sealift's)."""
    return _TOP_KINDS.get(artifact_type or "")


@dataclass(frozen=True)
class Artifact:
    """A path opened once: what it is, its reader, and the entry points of its layout. Nothing in it
    is verified yet."""

    path: Path
    kind: Kind
    reader: LayoutReader
    tops: tuple[Descriptor, ...]

    @property
    def top(self) -> Descriptor:
        """A bundle's or an overlay's one top index."""
        assert self.kind is not Kind.MEDIUM, "a medium has a top index per bundle and overlay"
        return self.tops[0]


@contextmanager
def open_artifact(path: Path) -> Iterator[Artifact]:
    """Open ``path`` (a layout directory or tar); Refused when it is no bundle, overlay or medium."""
    medium = _claims_medium(path)
    with open_layout(path, strict=not medium) as reader:
        tops = read_index(reader)
        yield Artifact(path=path, kind=Kind.MEDIUM if medium else _kind(path, tops), reader=reader, tops=tops)


def _kind(path: Path, tops: tuple[Descriptor, ...]) -> Kind:
    if len(tops) != 1:
        raise Refused(f"{path}: index.json must list exactly one bundle index (a medium has {MEDIUM_FILE} beside it)")
    found = kind(tops[0].artifact_type)
    if found is None or tops[0].media_type != MEDIA.INDEX:
        raise Refused(f"{path}: index.json does not point at a Sealift bundle or overlay ({MEDIA.BUNDLE}, {MEDIA.OVERLAY})")
    return found


def _claims_medium(path: Path) -> bool:
    if path.is_dir():
        return (path / MEDIUM_FILE).is_file()
    try:
        with tarfile.open(path, "r:") as tar:
            first = tar.next()
            return first is not None and first.name == MEDIUM_FILE
    except (tarfile.TarError, OSError):
        return False
