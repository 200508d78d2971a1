"""What the repository signs: the target an artifact is signed as (``NAME/PROFILE/VERSION`` for a
bundle, ``NAME/overlays/SITE/VERSION`` for a site overlay) with the length and hashes of its top
index and Sealift's custom fields, and the target a rollout plan is signed as."""

from __future__ import annotations

import hashlib
from pathlib import Path

from tuf.api.metadata import TargetFile

from updater.artifact import Kind, open_artifact
from updater.bundle import verify_bundle
from updater.errors import InputError
from updater.layout import open_layout
from updater.overlay import check_overlay
from updater.profiles import RESERVED_NAMES
from updater.rollout import Plan, plan_target
from updater.tuf_client import target_name

__all__ = ["identify", "plan_file", "target_file"]


def identify(path: Path) -> tuple[str, str, dict[str, str]]:
    """The target name, version and custom fields of a bundle (``NAME/PROFILE/VERSION``) or an
    overlay (``NAME/overlays/SITE/VERSION``), checked completely first."""
    with open_artifact(path) as artifact:
        if artifact.kind is Kind.OVERLAY:
            o = check_overlay(artifact)
            return (target_name(name=o.name, site=o.site, version=o.version), o.version,
                    {"name": o.name, "version": o.version, "site": o.site, "kind": "overlay", "fits": o.fits, "digest": o.digest})
        info = verify_bundle(artifact)
    if info.profile in RESERVED_NAMES:  # it would be signed where a plan or an overlay is looked up
        raise InputError(f"{path}: a bundle for profile {info.profile!r}, a name reserved for what is not a profile")
    return (target_name(name=info.name, profile=info.profile, version=info.version), info.version,
            {"name": info.name, "version": info.version, "profile": info.profile, "compatible": info.compatible,
             "digest": info.digest})


def target_file(path: Path, custom: dict[str, str], name: str, location: str | None) -> TargetFile:
    """The target ``name`` of the artifact at ``path``: its top index's length and hashes, and ``custom``."""
    with open_layout(path) as reader:
        index = reader.open_blob(custom["digest"])
        with index:
            data = index.read()
    custom = dict(custom)
    if location:
        custom["location"] = location
    return TargetFile(length=len(data), hashes={"sha256": hashlib.sha256(data).hexdigest()}, path=name,
                      unrecognized_fields={"custom": {"sealift": custom}})


def plan_file(plan: Plan) -> TargetFile:
    """The target ``NAME/rollout/VERSION`` of a rollout plan: the plan in its custom field, and the
    length and hashes of the plan's canonical JSON (what a device holds it against)."""
    data = plan.canonical()
    return TargetFile(length=len(data), hashes={"sha256": hashlib.sha256(data).hexdigest()}, path=plan_target(plan.app, plan.version),
                      unrecognized_fields={"custom": {"sealift": {"kind": "rollout", "plan": plan.to_json()}}})
