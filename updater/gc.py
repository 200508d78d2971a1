"""Garbage collection after a commit: what neither the running nor the rollback release needs goes.

The engine knows which tags the updater gave images for an app
(:meth:`updater.runtime.Runtime.images`); a tag that is not one of the current or the previous
release's is removed, and an image goes with its last tag. A release that keeps an image of an
older one (an unchanged image) adds its own tag to it: the older tag goes, so tags do not pile up
one per version. Slot data needs no collection: the inactive slot holds the previous release
until the next install stages over it; bundles (and their lock files) are pruned from the
device's store (:meth:`updater.store.BundleStore.prune`).
"""

from __future__ import annotations

from updater.runtime import Runtime

__all__ = ["collect_images"]


def collect_images(runtime: Runtime, app: str, keep: set[str]) -> list[str]:
    """Remove the tags given to ``app``'s images that are not in ``keep`` (an image goes with its last
    tag); return the tags removed."""
    removed = sorted(set(runtime.images(app)) - keep)
    for tag in removed:
        runtime.remove_image(tag)
    return removed
