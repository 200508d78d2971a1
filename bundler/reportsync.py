"""Device reports through registries: from the site mirror towards the office, hop by hop.

Devices push their reports to ``REGISTRY/PREFIX/DEVICE`` (:mod:`updater.reportstore`).
:func:`sync_reports` copies every device's reports the next registry lacks (``sealift reports
sync``), as ``mirror sync`` copies bundles the other way; :func:`device_repositories` finds the
devices a registry holds reports of, for ``sealift fleet import``. A report is copied whole or not
at all (its bytes first, its tag last), and one the destination holds is left alone, so a sync cut
short is run again and goes on, and running it twice copies nothing; a report the next registry
holds with other content under the same number is left as it is, and named. What a report holds is not
checked here (a registry in the middle cannot be trusted anyway): the import verifies each one.
"""

from __future__ import annotations

import re
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any

from updater.errors import Conflict, InputError
from updater.progress import Progress, QuietProgress
from updater.registry import Reference, RegistryClient, parse_reference
from updater.reportstore import copy_report, report_tags

__all__ = ["Synced", "device_client", "device_repositories", "sync_reports"]

_DEVICE = re.compile(r"dev-[0-9a-f]{32}")


@dataclass
class Synced:
    """What a sync did: reports copied, reports the destination had, and the devices seen."""

    copied: int = 0
    present: int = 0
    devices: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)  # DEVICE:SEQ the destination holds with other content, left alone

    def to_json(self) -> dict[str, Any]:
        return {"copied": self.copied, "present": self.present, "devices": self.devices, "conflicts": self.conflicts}


def device_repositories(where: str, *, plain_http: bool, what: str) -> tuple[Reference, list[str]]:
    """``REGISTRY/PREFIX`` parsed, and the devices whose reports its registry holds under PREFIX."""
    ref = parse_reference(where, what=what)
    if ref.tag or ref.digest:
        raise InputError(f"{what} {where}: name a registry and a prefix (REGISTRY/PREFIX), not a tag")
    lister = RegistryClient(Reference(host=ref.host, repository="_catalog"), plain_http=plain_http, what=f"{what} {ref.host}")
    with closing(lister):
        repositories = lister.catalog()
    prefix = f"{ref.repository}/"
    return ref, sorted(r.removeprefix(prefix) for r in repositories
                       if r.startswith(prefix) and _DEVICE.fullmatch(r.removeprefix(prefix)))


def device_client(ref: Reference, device: str, *, plain_http: bool, what: str) -> RegistryClient:
    return RegistryClient(Reference(host=ref.host, repository=f"{ref.repository}/{device}"), plain_http=plain_http,
                          what=f"{what} {ref.host}/{ref.repository}/{device}")


def sync_reports(origin: str, target: str, *, plain_http_from: bool = False, plain_http_to: bool = False,
                 progress: Progress | None = None) -> Synced:
    """Copy every device's reports ``target`` lacks from ``origin`` (both ``REGISTRY/PREFIX``)."""
    progress = progress or QuietProgress()
    src_ref, devices = device_repositories(origin, plain_http=plain_http_from, what="source registry")
    dst_ref = parse_reference(target, what="destination registry")
    if dst_ref.tag or dst_ref.digest:
        raise InputError(f"destination registry {target}: name a registry and a prefix (REGISTRY/PREFIX), not a tag")
    result = Synced(devices=devices)
    for device in devices:
        src = device_client(src_ref, device, plain_http=plain_http_from, what="source registry")
        dst = device_client(dst_ref, device, plain_http=plain_http_to, what="destination registry")
        with closing(src), closing(dst):
            tags = report_tags(src)
            progress.step(f"{device}: {len(tags)} report(s)")
            have = set(report_tags(dst))
            for tag in tags:
                try:
                    copied = not (tag in have and dst.manifest_digest(tag) == src.manifest_digest(tag)) and copy_report(src, dst, tag)
                except Conflict:
                    result.conflicts.append(f"{device}:{tag}")
                    continue
                if copied:
                    result.copied += 1
                else:
                    result.present += 1
    return result

