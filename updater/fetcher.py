"""A python-tuf fetcher that reads metadata from a bundle's ``tuf/`` folder, with no network.

ngclient asks for ``sealift-bundle:/NAME`` and bounds every length itself; a file the bundle
does not carry answers like an HTTP 404, which tells ngclient that no newer root exists.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from tuf.api.exceptions import DownloadHTTPError
from tuf.ngclient import FetcherInterface

from updater.layout import LayoutReader

__all__ = ["BUNDLE_URL", "BundleFetcher", "TrustedFetcher"]

BUNDLE_URL = "sealift-bundle:/"
_CHUNK = 64 << 10


class BundleFetcher(FetcherInterface):
    """Serves the metadata files of one open bundle."""

    def __init__(self, reader: LayoutReader) -> None:
        self.reader = reader
        self.names = reader.metadata_names()

    def _fetch(self, url: str) -> Iterator[bytes]:
        name = url.removeprefix(BUNDLE_URL)
        if not url.startswith(BUNDLE_URL) or name not in self.names:
            raise DownloadHTTPError(f"{name} is not in the bundle's tuf/ folder", 404)
        return self._chunks(name)

    def _chunks(self, name: str) -> Iterator[bytes]:
        with self.reader.open_metadata(name) as stream:
            while chunk := stream.read(_CHUNK):
                yield chunk


class TrustedFetcher(FetcherInterface):
    """Serves ngclient the device's own trusted metadata back (and no newer root), so a refresh
    changes nothing and a target is looked up in what the device already trusts. Used when a bundle
    carries older metadata than the device has: the newer, trusted metadata decides."""

    def __init__(self, metadata_dir: Path) -> None:
        self.metadata_dir = metadata_dir

    def _fetch(self, url: str) -> Iterator[bytes]:
        name = url.removeprefix(BUNDLE_URL)
        role = name.split(".", 1)[1] if name.split(".", 1)[0].isdigit() else name
        path = self.metadata_dir / role
        if role == "root.json" or "/" in role or not path.is_file():
            raise DownloadHTTPError(f"{name}: only the device's trusted metadata is served", 404)
        return iter((path.read_bytes(),))
