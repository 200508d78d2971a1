"""Per-site overlays: a site's configuration values and its secrets, sealed to its enrolled devices.

``sealift overlay build SPEC --site SITE`` reads the site's file (``sites/SITE.yaml`` beside the
spec): the overlay's version, the application versions it fits, and environment values per
service. It takes each secret's value from where the spec says (an environment variable or a file,
never the spec), seals them to the site's enrolled, unrevoked devices (:mod:`bundler.sealing`),
and writes a small OCI layout: an index with ``artifactType`` ``application/vnd.sealift.overlay.v1``
naming one payload manifest, whose layers are the overlay descriptor and the sealed secret set.
Only ciphertext is written. It is signed like a bundle (``sealift repo add``), as the target
``NAME/overlays/SITE/VERSION``, and pushed and mirrored like one (tag ``site-SITE-VERSION``).

An overlay is not reproducible on purpose: each build seals with a fresh data key.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import secrets as random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bundler.appdef import ENV_NAME, NAME
from bundler.bundle import ANNOTATION, MEDIA
from bundler.devices import SITE, Inventory
from bundler.errors import BundleError, DeliveryError, OutputError, SecretError, SpecError
from bundler.layout import MAX_JSON_BYTES, MEDIUM_FILE, Descriptor, canonical_json, json_object, open_layout
from bundler.sealing import SECRET_NAME, Identity, seal
from bundler.spec import Spec, version_key
from bundler.transfer import EMPTY_CONFIG, LayoutStore, ReaderStore, checked_json, walk
from bundler.yamlfile import Field, load_yaml

__all__ = ["OVERLAY", "OverlayInfo", "build_overlay", "check_overlay", "fits", "is_overlay", "overlay_target"]

OVERLAY = "application/vnd.sealift.overlay.v1"
OVERLAY_PAYLOAD = "application/vnd.sealift.overlay-payload.v1"
OVERLAY_DESCRIPTOR = "application/vnd.sealift.overlay.descriptor.v1+json"
SEALED_SECRETS = "application/vnd.sealift.sealed-secrets.v1+json"
SITE_ANNOTATION = "dev.sealift.site"
FITS_ANNOTATION = "dev.sealift.fits"
_CONSTRAINT = re.compile(r"(>=|<=|==|>|<)\s*([0-9A-Za-z.+-]+)")
_MAX_VALUE = 4096


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


def overlay_target(name: str, site: str, version: str) -> str:
    return f"{name}/overlays/{site}/{version}"


def fits(constraint: str, version: str) -> bool:
    """Whether an application ``version`` meets ``constraint`` (``>=1.0.0 <2.0.0``; empty: any)."""
    key = version_key(version)
    for op, bound in _constraints(constraint, where="fits"):
        other = version_key(bound)
        if not {">=": key >= other, "<=": key <= other, ">": key > other, "<": key < other, "==": key == other}[op]:
            return False
    return True


def _constraints(text: str, *, where: str) -> list[tuple[str, str]]:
    found = _CONSTRAINT.findall(text)
    if _CONSTRAINT.sub("", text).strip(" ,"):
        raise SpecError(f"{where}: {text!r} is not a version range (like `>=1.0.0 <2.0.0`)")
    for _, bound in found:
        version_key(bound)  # a malformed bound is an error now, not at the device
    return found


# --- building -----------------------------------------------------------------------------------


def build_overlay(spec: Spec, site: str, *, inventory: Path, out: Path, site_file: Path | None = None,
                  now: dt.datetime | None = None) -> tuple[Path, OverlayInfo]:
    """Build the overlay of ``site`` into ``out``; return its path and what it holds."""
    if not SITE.fullmatch(site):
        raise SpecError(f"site {site!r}: expected a site name (lower case letters, digits, . _ -)")
    values = _site_values(site_file or spec.directory / "sites" / f"{site}.yaml", spec)
    identity = Identity(app=spec.name, site=site, version=values["version"])
    recipients = Inventory(inventory).recipients(site)
    if not recipients:
        raise SecretError(f"site {site}: no enrolled device in {inventory} to seal the secrets to "
                          "(`sealift-updater enroll` on each device, then `sealift devices add`)")
    sealed = seal(_secret_values(spec), identity, recipients)
    descriptor = {"name": spec.name, "site": site, "version": values["version"], "fits": values["fits"],
                  "environment": values["environment"], "secrets": sorted(s.name for s in spec.secrets),
                  "recipients": sorted(r.device for r in recipients)}
    final = out / f"{spec.name}-site-{site}-{values['version']}"
    if final.exists():
        raise OutputError(f"{final}: exists; an overlay version is built once (raise `version` in the site file)")
    temp = out / f".sealift-overlay-{random.token_hex(6)}"
    try:
        out.mkdir(parents=True, exist_ok=True)
        top = _write(temp, descriptor, sealed, (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%SZ"))
        info = check_overlay(temp)  # what the device will check, before anything is in place
        if info.digest != top.digest:
            raise BundleError(f"{final}: the overlay changed while it was written")
        os.rename(temp, final)
    except OSError as e:
        raise OutputError(f"{final}: cannot write the overlay ({'the disk is full' if e.errno == 28 else e.strerror})") from e
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return final, info


def _site_values(path: Path, spec: Spec) -> dict[str, Any]:
    top = load_yaml(path, what="site file")
    f = top.mapping(required=("version",), optional=("fits", "environment"))
    version = f["version"].scalar_string()
    try:
        version_key(version)
    except (SpecError, ValueError) as e:
        raise f["version"].error(f"{version!r} is not a semantic version (like 3.0.0); overlay versions only go up") from e
    constraint = f["fits"].string(what="a version range") if "fits" in f else ""
    _constraints(constraint, where=f"{path}: fits")
    services = {s.name for s in spec.app.services}
    environment: dict[str, dict[str, str]] = {}
    if "environment" in f:
        for service, values in f["environment"].entries(key_pattern=NAME, key_what="service"):
            if service not in services:
                raise values.error(f"the spec has no service {service!r} (it has {', '.join(sorted(services))})")
            environment[service] = {name: _value(sub) for name, sub in values.entries(key_pattern=ENV_NAME,
                                                                                          key_what="environment variable")}
    return {"version": version, "fits": constraint, "environment": environment}


def _value(field: Field) -> str:
    value = field.scalar_string()
    if len(value) > _MAX_VALUE:
        raise field.error(f"longer than {_MAX_VALUE} characters (a secret belongs in `secrets`)")
    return value


def _secret_values(spec: Spec) -> dict[str, bytes]:
    """Each declared secret's value, from its environment variable or file; the error names the secret only."""
    values = {}
    for s in spec.secrets:
        if s.environment is not None:
            value = os.environ.get(s.environment)
            if not value:
                raise SecretError(f"secret {s.name}: the environment variable {s.environment} is not set")
            values[s.name] = value.encode()
        else:
            path = spec.directory / str(s.file)
            try:
                with open(path, "rb") as f:
                    data = f.read((1 << 20) + 1)
            except OSError as e:
                raise SecretError(f"secret {s.name}: cannot read {path} ({e.strerror})") from e
            if not data or len(data) > 1 << 20:
                raise SecretError(f"secret {s.name}: {path} is empty or larger than 1 MiB")
            values[s.name] = data
    return values


def _write(root: Path, descriptor: dict[str, Any], sealed: dict[str, Any], created: str) -> Descriptor:
    layout = LayoutStore(root)
    layout.prepare()
    layers = [layout.put_bytes(canonical_json(descriptor), OVERLAY_DESCRIPTOR),
              layout.put_bytes(canonical_json(sealed), SEALED_SECRETS)]
    layout.put_bytes(b"{}", EMPTY_CONFIG.media_type)
    payload = layout.put_bytes(canonical_json({"schemaVersion": 2, "mediaType": MEDIA.MANIFEST, "artifactType": OVERLAY_PAYLOAD,
                                               "config": EMPTY_CONFIG.to_json(), "layers": [d.to_json() for d in layers]}),
                               MEDIA.MANIFEST)
    payload = Descriptor(media_type=MEDIA.MANIFEST, digest=payload.digest, size=payload.size, artifact_type=OVERLAY_PAYLOAD)
    annotations = {ANNOTATION.NAME: descriptor["name"], SITE_ANNOTATION: descriptor["site"],
                   ANNOTATION.VERSION: descriptor["version"], FITS_ANNOTATION: descriptor["fits"],
                   "org.opencontainers.image.created": created}
    index = layout.put_bytes(canonical_json({"schemaVersion": 2, "mediaType": MEDIA.INDEX, "artifactType": OVERLAY,
                                             "manifests": [payload.to_json()], "annotations": annotations}), MEDIA.INDEX)
    top = Descriptor(media_type=MEDIA.INDEX, digest=index.digest, size=index.size, artifact_type=OVERLAY,
                     annotations={**annotations, ANNOTATION.REF_NAME: f"site-{descriptor['site']}-{descriptor['version']}"})
    layout.finish([top])
    return top


# --- reading ------------------------------------------------------------------------------------


def is_overlay(path: Path) -> bool:
    """Whether ``path`` is an overlay's layout (a medium holding overlays is not one)."""
    try:
        with open_layout(path) as reader:
            entry = json.loads(reader.read_small("index.json"))["manifests"][0]
            try:
                reader.read_small(MEDIUM_FILE)
                return False  # a medium
            except BundleError:
                pass
    except (BundleError, ValueError, KeyError, IndexError, TypeError):
        return False
    return isinstance(entry, dict) and entry.get("artifactType") == OVERLAY


def check_overlay(path: Path) -> OverlayInfo:
    """Check an overlay completely (every digest, descriptor and sealed set agreeing with the index)."""
    with open_layout(path) as reader:
        where = str(path)
        index = json_object(reader.read_small("index.json"), f"{where}: index.json")
        manifests = index.get("manifests")
        if not isinstance(manifests, list) or len(manifests) != 1:
            raise BundleError(f"{where}: index.json must list exactly one overlay index")
        top = Descriptor.from_json(manifests[0], where=f"{where}: index.json")
        store = ReaderStore(reader)
        try:
            graph = walk(top, store)
        except DeliveryError as e:
            raise BundleError(str(e)) from e
        top_json = json_object(graph.manifests[-1][1], f"{where}: overlay index")
        payload_json = json_object(graph.manifests[0][1], f"{where}: overlay payload")
        if top_json.get("artifactType") != OVERLAY or payload_json.get("artifactType") != OVERLAY_PAYLOAD:
            raise BundleError(f"{where}: not a Sealift overlay ({OVERLAY})")
        layers = [Descriptor.from_json(d, where=f"{where}: payload") for d in payload_json.get("layers") or []]
        kinds = [d.media_type for d in layers]
        if kinds != [OVERLAY_DESCRIPTOR, SEALED_SECRETS]:
            raise BundleError(f"{where}: an overlay payload holds its descriptor and its sealed secrets, not {kinds}")
        descriptor, sealed = (json_object(_read_blob(reader, d, where), f"{where}: {d.media_type}") for d in layers)
        referenced = {top.digest, *(m.digest for m, _ in graph.manifests), *(d.digest for d in graph.blobs)}
        stray = sorted(reader.blob_names() - referenced)
        if stray:
            raise BundleError(f"{where}: blob {stray[0]} is not referenced by the overlay")
    found = top_json.get("annotations")
    annotations: dict[str, Any] = found if isinstance(found, dict) else {}
    claimed = (annotations.get(ANNOTATION.NAME), annotations.get(SITE_ANNOTATION), annotations.get(ANNOTATION.VERSION))
    if (descriptor.get("name"), descriptor.get("site"), descriptor.get("version")) != claimed:
        raise BundleError(f"{where}: the overlay descriptor and the index disagree on name, site or version")
    if sealed.get("identity") != {"app": claimed[0], "site": claimed[1], "version": claimed[2]}:
        raise BundleError(f"{where}: the sealed secrets belong to another overlay")
    environment = descriptor.get("environment") or {}
    if not isinstance(environment, dict) or not all(
            isinstance(values, dict) and all(isinstance(k, str) and ENV_NAME.fullmatch(k) and isinstance(v, str)
                                             for k, v in values.items()) for values in environment.values()):
        raise BundleError(f"{where}: the overlay's environment is not a map of services to variables")
    names = descriptor.get("secrets") or []
    sealed_secrets = sealed.get("secrets")
    if not isinstance(names, list) or not isinstance(sealed_secrets, dict) or sorted(sealed_secrets) != sorted(names) \
            or not all(isinstance(n, str) and SECRET_NAME.fullmatch(n) for n in names):
        raise BundleError(f"{where}: the overlay's secret names are malformed or disagree with its sealed set")
    return OverlayInfo(name=str(claimed[0]), site=str(claimed[1]), version=str(claimed[2]), fits=str(descriptor.get("fits", "")),
                       digest=top.digest, environment=descriptor.get("environment") or {},
                       secrets=tuple(descriptor.get("secrets") or ()), recipients=tuple(descriptor.get("recipients") or ()),
                       sealed=sealed)


def _read_blob(reader: Any, blob: Descriptor, where: str) -> bytes:
    with reader.open_blob(blob.digest) as stream:
        data: bytes = stream.read(MAX_JSON_BYTES + 1)
    try:
        return checked_json(data, blob, where)
    except DeliveryError as e:
        raise BundleError(str(e)) from e
