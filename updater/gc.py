"""Garbage collection after a commit: what neither the running nor the rollback release needs goes.

Images the updater loaded carry the tag ``sealift/APP-IMAGE:…`` (see :mod:`updater.images`); an
image of the app whose ID is not one the current or the previous release uses is removed, with
its tags. Slot data needs no collection: the inactive slot holds the previous release until the
next install stages over it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from updater.errors import DeviceFault, EngineFault
from updater.slots import DeviceState, Slots

__all__ = ["collect_images"]


def collect_images(client: Any, slots: Slots, state: DeviceState) -> list[str]:
    """Remove the app's images no kept release uses; return the IDs removed."""
    import docker.errors

    kept_releases = [r for r in (state.current, state.previous) if r is not None]
    if not kept_releases:
        return []
    keep = {image for r in kept_releases for image in _image_ids(slots.slot_dir(r.slot))}
    app = kept_releases[0].name
    removed = []
    try:
        for image in client.images.list(name=f"sealift/{app}-*"):
            if image.id not in keep:
                client.images.remove(image.id, force=True)
                removed.append(image.id)
    except docker.errors.DockerException as e:
        raise EngineFault(f"{app}: cleaning up old images failed ({' '.join(str(e).split())[:200]})") from e
    return removed


def _image_ids(slot_dir: Path) -> set[str]:
    try:
        descriptor = json.loads((slot_dir / "descriptor.json").read_text())
    except (OSError, ValueError) as e:
        raise DeviceFault(f"{slot_dir}: cannot read the staged descriptor ({e}); nothing was cleaned up") from e
    return {image["config"] for image in descriptor["images"]}
