"""Sealift's device side: verify bundles and install them A/B on the Docker engine."""

from __future__ import annotations

from updater.errors import UpdaterError
from updater.verify import verify_for_device

__all__ = ["UpdaterError", "verify_for_device"]
