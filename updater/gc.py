"""Garbage collection after a commit: what neither the running nor the rollback release needs goes.

The engine knows which images the updater loaded for an app
(:meth:`updater.runtime.Runtime.images`); one whose ID is not one the current or the previous
release uses is removed, with its tags. Slot data needs no collection: the inactive slot holds
the previous release until the next install stages over it.
"""

from __future__ import annotations

import json
from pathlib import Path

from updater.errors import DeviceFault
from updater.runtime import Runtime
from updater.slots import DeviceState, Slots

__all__ = ["collect_images"]


def collect_images(runtime: Runtime, slots: Slots, state: DeviceState) -> list[str]:
    """Remove the app's images no kept release uses; return the IDs removed."""
    kept_releases = [r for r in (state.current, state.previous) if r is not None]
    if not kept_releases:
        return []
    keep = {image for r in kept_releases for image in _image_ids(slots.slot_dir(r.slot))}
    removed = sorted(runtime.images(kept_releases[0].name) - keep)
    for image_id in removed:
        runtime.remove_image(image_id)
    return removed


def _image_ids(slot_dir: Path) -> set[str]:
    try:
        descriptor = json.loads((slot_dir / "descriptor.json").read_text())
    except (OSError, ValueError) as e:
        raise DeviceFault(f"{slot_dir}: cannot read the staged descriptor ({e}); nothing was cleaned up") from e
    return {image["config"] for image in descriptor["images"]}
