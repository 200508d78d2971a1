"""``sealift build``: one reproducible, verified bundle per hardware profile.

Each bundle is assembled in a hidden temporary directory beside its destination, verified with
the reader the device uses, and only then renamed into place, so an interrupted or failed build
never leaves anything that looks like a bundle. Bundles are immutable: an existing bundle with
the same name is kept if it is byte-identical and refused otherwise.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import errno
import os
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from bundler.payload import FileEntry, add_file_component
from bundler.resolve import app_for_profile
from bundler.sources import ResolvedImage, open_image_source
from bundler.spec import Component, Spec
from bundler.writer import LayoutWriter, open_writer
from updater.bundle import BundleInfo, verify_bundle
from updater.durable import fsync_dir
from updater.errors import DeviceFault, InputError, Refused, SealiftError
from updater.names import unknown
from updater.oci import ANNOTATION, MEDIA, Descriptor, canonical_json
from updater.profiles import Profile
from updater.progress import Progress, QuietProgress
from updater.provenance import MAX_SIGSTORE_BYTES, ProvenanceClaim, verify_provenance

__all__ = ["BuildOptions", "BuiltBundle", "build_bundles", "select_profiles", "source_date_epoch"]

_TEMP_PREFIX = ".sealift-tmp-"
_HOST = re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname())[:64]
_MAX_EPOCH = 253402300799  # 9999-12-31T23:59:59Z
_EMPTY_CONFIG = b"{}"


@dataclass(frozen=True, kw_only=True)
class BuildOptions:
    out: Path
    format: Literal["dir", "tar"] = "dir"
    epoch: int = 0
    plain_http: bool = False


@dataclass(frozen=True, kw_only=True)
class BuiltBundle:
    """A bundle that is in place and verified."""

    profile: str
    path: Path
    info: BundleInfo
    unchanged: bool  # an identical bundle was already there


@dataclass(frozen=True, kw_only=True)
class _Image:
    name: str
    resolved: ResolvedImage
    platform: dict[str, str]


def source_date_epoch(spec_dir: Path) -> int:
    """The build's timestamp: ``SOURCE_DATE_EPOCH``, else the spec's last git commit, else 0."""
    value = os.environ.get("SOURCE_DATE_EPOCH")
    if value is not None:
        if not re.fullmatch(r"[0-9]{1,12}", value) or int(value) > _MAX_EPOCH:
            raise InputError(f"SOURCE_DATE_EPOCH: expected whole seconds since 1970 (before year 10000), found {value[:40]!r}")
        return int(value)
    try:
        done = subprocess.run(
            ["git", "log", "-1", "--format=%ct", "--", "."],
            cwd=spec_dir, capture_output=True, text=True, timeout=30, check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return int(done.stdout.strip()) if done.returncode == 0 and done.stdout.strip().isdigit() else 0


def select_profiles(spec: Spec, known: dict[str, Profile], wanted: Sequence[str]) -> list[Profile]:
    """The profiles to build: ``wanted`` (names, or ``all``) within those the spec targets."""
    targets = list(spec.profiles) if spec.profiles is not None else sorted(known)
    for name in targets:
        if name not in known:
            raise InputError(f"{spec.path}: profiles: {unknown('profile', name, known)}")
    for name, field in spec.variant_profiles().items():
        if name not in known:
            raise InputError(f"{spec.path}: {field}: {unknown('profile', name, known)}")
    if not wanted or "all" in wanted:
        return [known[name] for name in targets]
    for name in wanted:
        if name not in known:
            raise InputError(unknown("profile", name, known))
        if name not in targets:
            raise InputError(f"profile {name!r} is not a target of {spec.path} (targets: {', '.join(targets)})")
    return [known[name] for name in targets if name in wanted]


def build_bundles(
    spec: Spec, profiles: Sequence[Profile], options: BuildOptions, *, progress: Progress | None = None
) -> list[BuiltBundle]:
    """Build, verify and place one bundle per profile."""
    progress = progress or QuietProgress()
    try:
        options.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DeviceFault(f"{options.out}: cannot create the output directory ({e.strerror})") from e
    _sweep_stale_temps(options.out)
    for profile in profiles:  # every profile's mistakes before any bundle is written
        _check_complete(spec, profile)
    return [_build_one(spec, profile, options, progress) for profile in profiles]


def _build_one(spec: Spec, profile: Profile, options: BuildOptions, progress: Progress) -> BuiltBundle:
    suffix = ".tar" if options.format == "tar" else ""
    final = options.out / f"{spec.name}-{spec.version}-{profile.name}{suffix}"
    try:
        temp = Path(tempfile.mkdtemp(prefix=f"{_TEMP_PREFIX}{_HOST}-{os.getpid()}-", dir=options.out))
    except OSError as e:
        raise _output_error(e, options.out, profile) from e
    try:
        product = _assemble(spec, profile, options, temp, progress)
        progress.step(f"{profile.name}: verifying")
        try:
            info = verify_bundle(product, progress=progress.advance)
        except Refused as e:
            raise Refused(f"the {profile.name} bundle failed its final check (a source changed or is corrupt): {e}") from e
        unchanged = _publish(product, final, info.digest)
        info = dataclasses.replace(info, location=str(final))  # where it now lies, not where it was assembled
        return BuiltBundle(profile=profile.name, path=final, info=info, unchanged=unchanged)
    except SealiftError:
        raise
    except OSError as e:
        raise _output_error(e, temp, profile) from e
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def _assemble(spec: Spec, profile: Profile, options: BuildOptions, temp: Path, progress: Progress) -> Path:
    """Write the bundle's layout under ``temp``; return the directory or tar file to publish."""
    created = dt.datetime.fromtimestamp(options.epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    work = temp / "work"
    work.mkdir()
    writer = open_writer(temp, tar=options.format == "tar", mtime=options.epoch, progress=progress.advance)
    try:
        return _write_bundle(spec, profile, options, writer, work, created, progress)
    finally:
        writer.close()


def _write_bundle(
    spec: Spec, profile: Profile, options: BuildOptions, writer: LayoutWriter, work: Path, created: str, progress: Progress
) -> Path:
    images = [_add_image(spec, profile, name, source, writer, work, options, progress)
              for name, source in _images_for(spec, profile)]
    files = [
        _with_provenance(spec, c, src, writer, add_file_component(
            writer, work, role=role, name=c.name, path=spec.source_path(src, what=f"{role}s.{c.name}"), epoch=options.epoch,
            progress=progress, label=f"{profile.name}: {role} {c.name}"))
        for role, components in (("model", spec.models), ("config", spec.configs))
        for c in components if (src := c.for_profile(profile.name)) is not None
    ]
    descriptor = _descriptor(spec, profile, images, files, created)
    payload = _add_payload(writer, files, descriptor, created)
    top = _add_index(writer, spec, profile, images, payload, created)
    writer.finish(top)
    return writer.product


def _with_provenance(spec: Spec, component: Component, source: str, writer: LayoutWriter, entry: FileEntry) -> FileEntry:
    """Check the component's Sigstore signature, and keep the material a device re-checks it with."""
    wanted = component.provenance
    if wanted is None:
        return entry
    what = f"{entry.role} {entry.name}"
    if entry.kind != "file":
        raise InputError(f"{spec.path}: {entry.role}s.{entry.name}.provenance: Sigstore signs files; {source} is a directory")
    assert spec.sigstore_trusted_root is not None  # load_spec requires it with provenance
    bundle_path = spec.source_path(wanted.bundle or f"{source}.sigstore", what=f"{entry.role}s.{entry.name}.provenance")
    bundle = _read_sigstore_file(bundle_path, f"{what} Sigstore bundle")
    root = _read_sigstore_file(spec.source_path(spec.sigstore_trusted_root, what="sigstore.trusted_root"), "Sigstore trusted root")
    claim = ProvenanceClaim(what=what, content_digest=entry.content_digest, identity=wanted.identity, issuer=wanted.issuer)
    verify_provenance(claim, sigstore_bundle=bundle, trusted_root=root, error=InputError)
    layers = []
    for data, media_type, kind in ((bundle, MEDIA.SIGSTORE_BUNDLE, "provenance"), (root, MEDIA.SIGSTORE_ROOT, "sigstore-root")):
        digest, size = writer.add_bytes(data)
        layers.append(Descriptor(media_type=media_type, digest=digest, size=size,
                                 annotations={ANNOTATION.TITLE: what if kind == "provenance" else "trusted-root",
                                              "dev.sealift.component": kind}))
    provenance = {"identity": wanted.identity, "issuer": wanted.issuer, "sigstoreBundle": layers[0].digest,
                  "trustedRoot": layers[1].digest}
    return dataclasses.replace(entry, provenance=provenance, extra_layers=tuple(layers))


def _images_for(spec: Spec, profile: Profile) -> list[tuple[str, str]]:
    return [(c.name, src) for c in spec.images if (src := c.for_profile(profile.name)) is not None]


def _check_complete(spec: Spec, profile: Profile) -> None:
    """Every component the app and its checks use must exist in this profile, and what its services ask of
    the hardware must be there."""
    app_for_profile(spec, profile)
    images = {name for name, _ in _images_for(spec, profile)}
    present = {c.name for c in (*spec.models, *spec.configs) if c.for_profile(profile.name) is not None}
    for service in spec.app.services:
        if service.image not in images:
            raise InputError(f"{spec.path}: app.services.{service.name}: image {service.image!r} has no source for profile {profile.name}")
        for mount in service.volumes:
            if mount.source not in present:
                raise InputError(f"{spec.path}: app.services.{service.name}: {mount.source!r} has no file for profile {profile.name}")
    for check in spec.health.checks:
        for ref in (check.input, check.expected):
            if ref is not None and ref not in present:
                raise InputError(f"{spec.path}: health check {check.name}: config {ref!r} has no file for profile {profile.name}")


def _add_image(
    spec: Spec, profile: Profile, name: str, reference: str, writer: LayoutWriter, work: Path,
    options: BuildOptions, progress: Progress,
) -> _Image:
    with open_image_source(reference, roots=spec.roots, work=work, plain_http=options.plain_http) as source:
        image = source.resolve(profile.platform)
        missing = [d for d in (image.config, *image.layers) if not writer.has(d.digest)]
        progress.step(f"{profile.name}: image {name} ({image.descriptor.digest[:19]})", total_bytes=sum(d.size for d in missing))
        for d in missing:
            what = f"image {reference} blob {d.digest}"
            if (location := source.locate_blob(d)) is not None:
                writer.add_file(location[0], offset=location[1], expect=d, what=what)
                continue
            with source.open_blob(d) as stream:
                writer.add_stream(stream, expect=d, what=what)
    digest, _ = writer.add_bytes(image.manifest)
    if digest != image.descriptor.digest:
        raise InputError(f"image {reference}: manifest digest changed while copying")
    platform = {"os": profile.platform.os, "architecture": profile.platform.architecture}
    if profile.platform.variant:
        platform["variant"] = profile.platform.variant
    return _Image(name=name, resolved=image, platform=platform)


def _descriptor(spec: Spec, profile: Profile, images: list[_Image], files: list[FileEntry], created: str) -> dict[str, Any]:
    """The bundle descriptor: what the device needs to know to stage and run the release."""
    platform = {k: v for k, v in vars(profile.platform).items() if v is not None}
    return {
        "schemaVersion": 1,
        "name": spec.name,
        "version": spec.version,
        "created": created,
        "profile": {
            "name": profile.name,
            "compatible": profile.compatible,
            "platform": platform,
            "accelerators": [{k: v for k, v in vars(a).items() if v is not None} for a in profile.accelerators],
            "capabilities": list(profile.capabilities),
        },
        "images": [
            {"name": i.name, "manifest": i.resolved.descriptor.digest, "mediaType": i.resolved.descriptor.media_type,
             "size": i.resolved.descriptor.size, "config": i.resolved.config.digest, "platform": i.platform}
            for i in images
        ],
        "models": [f.to_json() for f in files if f.role == "model"],
        "configs": [f.to_json() for f in files if f.role == "config"],
        "app": app_for_profile(spec, profile).to_data(),
        "health": spec.health.to_data(),
        "secrets": [{"name": s.name} for s in spec.secrets],
    }


def _add_payload(writer: LayoutWriter, files: list[FileEntry], descriptor: dict[str, Any], created: str) -> Descriptor:
    body = canonical_json(descriptor)
    digest, size = writer.add_bytes(body)
    extra = list({d.digest: d for f in files for d in f.extra_layers}.values())  # one trusted root for all
    layers = [f.layer for f in files] + extra + [
        Descriptor(media_type=MEDIA.DESCRIPTOR, digest=digest, size=size, annotations={ANNOTATION.TITLE: "descriptor"})
    ]
    config_digest, config_size = writer.add_bytes(_EMPTY_CONFIG)
    manifest = canonical_json({
        "schemaVersion": 2,
        "mediaType": MEDIA.MANIFEST,
        "artifactType": MEDIA.PAYLOAD,
        "config": {"mediaType": MEDIA.EMPTY, "digest": config_digest, "size": config_size},
        "layers": [layer.to_json() for layer in layers],
        "annotations": {ANNOTATION.CREATED: created},
    })
    digest, size = writer.add_bytes(manifest)
    return Descriptor(media_type=MEDIA.MANIFEST, digest=digest, size=size, artifact_type=MEDIA.PAYLOAD,
                      annotations={ANNOTATION.ROLE: "payload"})


def _add_index(
    writer: LayoutWriter, spec: Spec, profile: Profile, images: list[_Image], payload: Descriptor, created: str
) -> Descriptor:
    entries = [
        Descriptor(media_type=i.resolved.descriptor.media_type, digest=i.resolved.descriptor.digest,
                   size=i.resolved.descriptor.size, platform=i.platform, annotations={ANNOTATION.IMAGE: i.name})
        for i in images
    ]
    annotations = {
        ANNOTATION.NAME: spec.name,
        ANNOTATION.VERSION: spec.version,
        ANNOTATION.PROFILE: profile.name,
        ANNOTATION.COMPATIBLE: profile.compatible,
        ANNOTATION.CREATED: created,
    }
    index = canonical_json({
        "schemaVersion": 2,
        "mediaType": MEDIA.INDEX,
        "artifactType": MEDIA.BUNDLE,
        "manifests": [d.to_json() for d in (*entries, payload)],
        "annotations": annotations,
    })
    digest, size = writer.add_bytes(index)
    ref = {ANNOTATION.REF_NAME: f"{spec.version}-{profile.name}"}
    return Descriptor(media_type=MEDIA.INDEX, digest=digest, size=size, artifact_type=MEDIA.BUNDLE, annotations=ref)


def _publish(product: Path, final: Path, digest: str) -> bool:
    """Move the finished bundle into place without replacing anything.

    Returns True if an identical, intact bundle was already there. A tar file is hard-linked,
    which fails if the name exists however close another build's comes; a directory is renamed,
    which fails onto anything but an empty directory.
    """
    try:
        if product.is_dir() or not _link(product, final):
            if os.path.lexists(final):
                return _same_bundle(final, digest)
            os.rename(product, final)
    except OSError as e:
        if e.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
            raise
        return _same_bundle(final, digest)
    fsync_dir(final.parent)
    return False


def _link(product: Path, final: Path) -> bool:
    """Hard-link; False where the file system has no hard links (FAT on removable media)."""
    try:
        os.link(product, final)
    except OSError as e:
        if e.errno in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            return False
        raise
    return True


def _same_bundle(existing: Path, digest: str) -> bool:
    """True if ``existing`` is an intact bundle with ``digest``; InputError otherwise."""
    try:
        found = verify_bundle(existing).digest
    except Refused as e:
        raise InputError(f"{existing} already exists and is not an intact bundle ({e}); remove it and build again") from e
    if found != digest:
        raise InputError(
            f"{existing} already exists with different content ({found}); bundles are immutable: bump the version or remove it"
        )
    return True


def _sweep_stale_temps(out: Path) -> None:
    """Remove temporary directories left by builds that were killed."""
    for entry in out.glob(f"{_TEMP_PREFIX}{_HOST}-*"):
        # only this host's: another machine or container sharing OUT has its own process IDs
        match = re.match(rf"{re.escape(_TEMP_PREFIX)}{re.escape(_HOST)}-(\d+)-", entry.name)
        if match and not _alive(int(match.group(1))):
            shutil.rmtree(entry, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _output_error(e: OSError, where: Path, profile: Profile) -> SealiftError:
    if e.errno == errno.ENOSPC:
        return DeviceFault(f"{where}: no space left on the device while building the {profile.name} bundle; nothing was kept")
    if e.errno == errno.EDQUOT:
        return DeviceFault(f"{where}: disk quota exceeded while building the {profile.name} bundle; nothing was kept")
    if e.filename and not str(e.filename).startswith(str(where)):
        return InputError(f"{e.filename}: cannot read ({e.strerror})")
    return DeviceFault(f"{e.filename or where}: cannot write the {profile.name} bundle ({e.strerror})")


def _read_sigstore_file(path: Path, what: str) -> bytes:
    """A Sigstore file, at most MAX_SIGSTORE_BYTES."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SIGSTORE_BYTES + 1)
    except FileNotFoundError as e:
        raise InputError(f"{what}: {path} not found") from e
    except OSError as e:
        raise InputError(f"{what}: cannot read {path} ({e.strerror})") from e
    if len(data) > MAX_SIGSTORE_BYTES:
        raise InputError(f"{what}: {path} is larger than {MAX_SIGSTORE_BYTES} bytes")
    return data
