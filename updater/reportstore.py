"""Device reports in an OCI registry: the way up for devices that reach a site mirror.

A registry holds reports under a prefix, one repository per device (``PREFIX/DEVICE``) and one tag
per report (its number, ``0000000042``): each an OCI artifact (``artifactType``
:data:`updater.reports.PAYLOAD_TYPE`) whose one layer is the signed envelope as the device wrote
it. One repository per device keeps each tag list short (a device's reports, not a fleet's), and
the registry's catalog lists the devices. A report's tag never changes what it names: pushing or
copying one that is there already changes nothing, so a push or a sync cut short is simply run
again, and a tag that names other content is left as it is (a Conflict). The device pushes;
``sealift reports sync`` copies hop by hop towards the office, and ``sealift fleet import`` reads
them, all through these functions.
"""

from __future__ import annotations

import hashlib
import re

from updater.content import Hashed
from updater.errors import Conflict, ContentMismatch, Refused
from updater.oci import MEDIA, Descriptor, canonical_json, json_object
from updater.registry import RegistryClient
from updater.reports import PAYLOAD_TYPE
from updater.transfer import EMPTY_CONFIG
from updater.upload import upload_bytes

__all__ = ["ENVELOPE_MEDIA", "MAX_REPORT_BYTES", "copy_report", "push_report", "read_report", "report_tags"]

ENVELOPE_MEDIA = "application/vnd.dsse.envelope.v1+json"
MAX_REPORT_BYTES = 256 << 10  # a report is bounded on the device far below this
_TAG = re.compile(r"[0-9]{10}")


def report_tags(client: RegistryClient) -> list[str]:
    """The reports a device's repository holds, by number, oldest first."""
    return sorted(t for t in client.tags() if _TAG.fullmatch(t))


def push_report(client: RegistryClient, seq: int, data: bytes) -> bool:
    """Put report ``seq`` (the envelope's bytes) in the device's repository; False when it is there
    already. A tag is never overwritten: one that names other content is a Conflict, left as it is."""
    tag = f"{seq:010d}"
    blob = Descriptor(media_type=ENVELOPE_MEDIA, digest=f"sha256:{hashlib.sha256(data).hexdigest()}", size=len(data))
    manifest = _manifest(blob)
    there = client.manifest_digest(tag)
    if there == f"sha256:{hashlib.sha256(manifest).hexdigest()}":
        return False
    if there is not None:
        raise Conflict(f"{client.what}: report {tag} is there already with other content; left as it is")
    for part, body in ((EMPTY_CONFIG, b"{}"), (blob, data)):
        if not client.has_blob(part.digest):
            upload_bytes(client, part, body)
    client.put_manifest(tag, manifest, MEDIA.MANIFEST)  # last: a tag never names a report whose bytes are missing
    return True


def read_report(client: RegistryClient, tag: str) -> bytes:
    """The envelope report ``tag`` holds, checked against its digest (whether it is genuine is for
    the reader to check, with the device's key)."""
    found = client.get_manifest(tag, accept=MEDIA.MANIFEST)
    if found is None:
        raise Refused(f"{client.what}: report {tag} is listed but not there")
    manifest = json_object(found[0], f"{client.what}: report {tag}", ContentMismatch)
    layers = manifest.get("layers")
    if manifest.get("artifactType") != PAYLOAD_TYPE or not isinstance(layers, list) or len(layers) != 1:
        raise ContentMismatch(f"{client.what}: {tag} is not a Sealift device report")
    blob = Descriptor.from_json(layers[0], where=f"{client.what}: report {tag}")
    if blob.size > MAX_REPORT_BYTES:
        raise ContentMismatch(f"{client.what}: report {tag} is larger than the {MAX_REPORT_BYTES} bytes a report may have")
    with client.open_blob(blob.digest) as stream:
        hashed = Hashed(stream, digest=blob.digest, size=blob.size, what=f"{client.what}: report {tag}")
        data = b"".join(iter(hashed.read, b""))
    hashed.finish()
    return data


def copy_report(src: RegistryClient, dst: RegistryClient, tag: str) -> bool:
    """Copy one report between registries unless the destination has it; whether it was copied (a
    Conflict when the destination holds other content under its number: never overwritten)."""
    there = dst.manifest_digest(tag)
    if there and there == src.manifest_digest(tag):
        return False
    return push_report(dst, int(tag), read_report(src, tag))


def _manifest(blob: Descriptor) -> bytes:
    return canonical_json({
        "schemaVersion": 2,
        "mediaType": MEDIA.MANIFEST,
        "artifactType": PAYLOAD_TYPE,
        "config": {**EMPTY_CONFIG.to_json(), "data": "e30="},
        "layers": [blob.to_json()],
    })
