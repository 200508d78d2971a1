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
import os
import secrets as random
import shutil
from pathlib import Path
from typing import Any

from bundler.devices import Inventory
from bundler.sealing import seal
from bundler.spec import Spec
from updater.errors import DeviceFault, InputError, Refused
from updater.names import ENV_NAME, NAME
from updater.oci import ANNOTATION, MEDIA, Descriptor, canonical_json
from updater.overlay import OverlayInfo, check_overlay
from updater.sealed import Identity
from updater.transfer import EMPTY_CONFIG, DirectoryEndpoint
from updater.versions import check_range, version_key
from updater.yamlfile import Field, load_yaml

__all__ = ["build_overlay"]

_MAX_VALUE = 4096


# --- building -----------------------------------------------------------------------------------


def build_overlay(spec: Spec, site: str, *, inventory: Path, out: Path, site_file: Path | None = None,
                  now: dt.datetime | None = None) -> tuple[Path, OverlayInfo]:
    """Build the overlay of ``site`` into ``out``; return its path and what it holds."""
    if not NAME.fullmatch(site):
        raise InputError(f"site {site!r}: expected a site name (lower case letters, digits, . _ -)")
    values = _site_values(site_file or spec.directory / "sites" / f"{site}.yaml", spec)
    identity = Identity(app=spec.name, site=site, version=values["version"])
    recipients = Inventory(inventory).recipients(site)
    if not recipients:
        raise InputError(f"site {site}: no enrolled device in {inventory} to seal the secrets to "
                          "(`sealift-updater enroll` on each device, then `sealift devices add`)")
    sealed = seal(_secret_values(spec), identity, recipients)
    descriptor = {"name": spec.name, "site": site, "version": values["version"], "fits": values["fits"],
                  "environment": values["environment"], "secrets": sorted(s.name for s in spec.secrets),
                  "recipients": sorted(r.device for r in recipients)}
    final = out / f"{spec.name}-site-{site}-{values['version']}"
    if final.exists():
        raise InputError(f"{final}: exists; an overlay version is built once (raise `version` in the site file)")
    temp = out / f".sealift-overlay-{random.token_hex(6)}"
    try:
        out.mkdir(parents=True, exist_ok=True)
        top = _write(temp, descriptor, sealed, (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%SZ"))
        info = check_overlay(temp)  # what the device will check, before anything is in place
        if info.digest != top.digest:
            raise Refused(f"{final}: the overlay changed while it was written")
        os.rename(temp, final)
    except OSError as e:
        raise DeviceFault(f"{final}: cannot write the overlay ({'the disk is full' if e.errno == 28 else e.strerror})") from e
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return final, info


def _site_values(path: Path, spec: Spec) -> dict[str, Any]:
    top = load_yaml(path, what="site file")
    f = top.mapping(required=("version",), optional=("fits", "environment"))
    version = f["version"].scalar_string()
    try:
        version_key(version)
    except (InputError, ValueError) as e:
        raise f["version"].error(f"{version!r} is not a semantic version (like 3.0.0); overlay versions only go up") from e
    constraint = f["fits"].string(what="a version range") if "fits" in f else ""
    check_range(constraint, where=f"{path}: fits")
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
                raise InputError(f"secret {s.name}: the environment variable {s.environment} is not set")
            values[s.name] = value.encode()
        else:
            path = spec.source_path(str(s.file), what=f"secrets.{s.name}.file")
            try:
                with open(path, "rb") as f:
                    data = f.read((1 << 20) + 1)
            except OSError as e:
                raise InputError(f"secret {s.name}: cannot read {path} ({e.strerror})") from e
            if not data or len(data) > 1 << 20:
                raise InputError(f"secret {s.name}: {path} is empty or larger than 1 MiB")
            values[s.name] = data
    return values


def _write(root: Path, descriptor: dict[str, Any], sealed: dict[str, Any], created: str) -> Descriptor:
    layout = DirectoryEndpoint(root)
    layout.prepare()
    layers = [layout.put_bytes(canonical_json(descriptor), MEDIA.OVERLAY_DESCRIPTOR),
              layout.put_bytes(canonical_json(sealed), MEDIA.SEALED_SECRETS)]
    layout.put_bytes(b"{}", EMPTY_CONFIG.media_type)
    payload = layout.put_bytes(canonical_json({"schemaVersion": 2, "mediaType": MEDIA.MANIFEST, "artifactType": MEDIA.OVERLAY_PAYLOAD,
                                               "config": EMPTY_CONFIG.to_json(), "layers": [d.to_json() for d in layers]}),
                               MEDIA.MANIFEST)
    payload = Descriptor(media_type=MEDIA.MANIFEST, digest=payload.digest, size=payload.size, artifact_type=MEDIA.OVERLAY_PAYLOAD)
    annotations = {ANNOTATION.NAME: descriptor["name"], ANNOTATION.SITE: descriptor["site"],
                   ANNOTATION.VERSION: descriptor["version"], ANNOTATION.FITS: descriptor["fits"],
                   "org.opencontainers.image.created": created}
    index = layout.put_bytes(canonical_json({"schemaVersion": 2, "mediaType": MEDIA.INDEX, "artifactType": MEDIA.OVERLAY,
                                             "manifests": [payload.to_json()], "annotations": annotations}), MEDIA.INDEX)
    top = Descriptor(media_type=MEDIA.INDEX, digest=index.digest, size=index.size, artifact_type=MEDIA.OVERLAY,
                     annotations={**annotations, ANNOTATION.REF_NAME: f"site-{descriptor['site']}-{descriptor['version']}"})
    layout.finish([top])
    return top
