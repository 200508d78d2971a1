"""Site overlays as the device reads them: check one completely, then check it against this device.

An overlay is a small OCI layout: an index with ``artifactType`` ``application/vnd.sealift.overlay.v1``
naming one payload manifest, whose layers are the overlay descriptor (environment values per
service, secret names) and the sealed secret set (ciphertext only). It is signed as the TUF
target ``NAME/overlays/SITE/VERSION``. Before an overlay may go into a slot, the device checks
it like a bundle (TUF, every digest), then that its site is the device's enrolled site, that it
fits the application version it will run with, that it is not older than one this device
accepted, and that this device's key opens its sealed secrets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from updater.artifact import Artifact, Kind, open_artifact
from updater.content import read_json_blob
from updater.errors import InputError, Refused
from updater.names import ENV_NAME
from updater.oci import ANNOTATION, MEDIA, Descriptor, json_object
from updater.sealed import SECRET_NAME
from updater.transfer import ReaderEndpoint, walk
from updater.versions import check_range

__all__ = ["OverlayInfo", "check_overlay"]


@dataclass(frozen=True, kw_only=True)
class OverlayInfo:
    """A verified overlay: whose, for which site, which version, what it carries."""

    name: str
    site: str
    version: str
    fits: str
    digest: str
    environment: dict[str, dict[str, str]] = field(default_factory=dict)
    secrets: tuple[str, ...] = ()
    recipients: tuple[str, ...] = ()
    sealed: dict[str, Any] = field(default_factory=dict, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "site": self.site, "version": self.version, "fits": self.fits, "digest": self.digest,
                "environment": self.environment, "secrets": list(self.secrets), "recipients": list(self.recipients)}


def check_overlay(source: Path | Artifact) -> OverlayInfo:
    """Check an overlay (a path, or one already open) completely: every digest, descriptor and sealed
    set agreeing with the index."""
    if isinstance(source, Path):
        with open_artifact(source) as artifact:
            return check_overlay(artifact)
    if source.kind is not Kind.OVERLAY:
        raise Refused(f"{source.path}: a Sealift {source.kind}, not an overlay")
    reader, top, where = source.reader, source.top, str(source.path)
    store = ReaderEndpoint(reader)
    graph = walk(top, store)
    top_json = json_object(graph.manifests[-1][1], f"{where}: overlay index")
    payload_json = json_object(graph.manifests[0][1], f"{where}: overlay payload")
    if top_json.get("artifactType") != MEDIA.OVERLAY or payload_json.get("artifactType") != MEDIA.OVERLAY_PAYLOAD:
        raise Refused(f"{where}: not a Sealift overlay ({MEDIA.OVERLAY})")
    layers = [Descriptor.from_json(d, where=f"{where}: payload") for d in payload_json.get("layers") or []]
    kinds = [d.media_type for d in layers]
    if kinds != [MEDIA.OVERLAY_DESCRIPTOR, MEDIA.SEALED_SECRETS]:
        raise Refused(f"{where}: an overlay payload holds its descriptor and its sealed secrets, not {kinds}")
    descriptor, sealed = (read_json_blob(reader, d, d.media_type) for d in layers)
    referenced = {top.digest, *(m.digest for m, _ in graph.manifests), *(d.digest for d in graph.blobs)}
    stray = sorted(reader.blob_names() - referenced)
    if stray:
        raise Refused(f"{where}: blob {stray[0]} is not referenced by the overlay")
    found = top_json.get("annotations")
    annotations: dict[str, Any] = found if isinstance(found, dict) else {}
    claimed = (annotations.get(ANNOTATION.NAME), annotations.get(ANNOTATION.SITE), annotations.get(ANNOTATION.VERSION))
    if (descriptor.get("name"), descriptor.get("site"), descriptor.get("version")) != claimed:
        raise Refused(f"{where}: the overlay descriptor and the index disagree on name, site or version")
    if sealed.get("identity") != {"app": claimed[0], "site": claimed[1], "version": claimed[2]}:
        raise Refused(f"{where}: the sealed secrets belong to another overlay")
    environment = descriptor.get("environment") or {}
    if not isinstance(environment, dict) or not all(
            isinstance(values, dict) and all(isinstance(k, str) and ENV_NAME.fullmatch(k) and isinstance(v, str)
                                             for k, v in values.items()) for values in environment.values()):
        raise Refused(f"{where}: the overlay's environment is not a map of services to variables")
    names = descriptor.get("secrets") or []
    sealed_secrets = sealed.get("secrets")
    if not isinstance(names, list) or not isinstance(sealed_secrets, dict) or sorted(sealed_secrets) != sorted(names) \
            or not all(isinstance(n, str) and SECRET_NAME.fullmatch(n) for n in names):
        raise Refused(f"{where}: the overlay's secret names are malformed or disagree with its sealed set")
    try:
        check_range(str(descriptor.get("fits", "")), where="fits")
    except InputError as e:
        raise Refused(f"{where}: the overlay's {e.diagnostics()}") from None
    return OverlayInfo(name=str(claimed[0]), site=str(claimed[1]), version=str(claimed[2]), fits=str(descriptor.get("fits", "")),
                       digest=top.digest, environment=descriptor.get("environment") or {},
                       secrets=tuple(descriptor.get("secrets") or ()), recipients=tuple(descriptor.get("recipients") or ()),
                       sealed=sealed)
