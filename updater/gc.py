"""Garbage collection after a commit: what neither the running nor the rollback release needs goes.

The engine knows which images the updater loaded for an app
(:meth:`updater.runtime.Runtime.images`); one whose ID is not among those the current and the
previous release use is removed, with its tags. Slot data needs no collection: the inactive slot
holds the previous release until the next install stages over it; bundles are pruned from the
device's store (:meth:`updater.store.BundleStore.prune`).
"""

from __future__ import annotations

from updater.runtime import Runtime

__all__ = ["collect_images"]


def collect_images(runtime: Runtime, app: str, keep: set[str]) -> list[str]:
    """Remove the images loaded for ``app`` whose IDs are not in ``keep``; return the IDs removed."""
    removed = sorted(runtime.images(app) - keep)
    for image_id in removed:
        runtime.remove_image(image_id)
    return removed
