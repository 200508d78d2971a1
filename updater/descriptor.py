"""The bundle descriptor, typed: what a device needs to know to stage and run a release.

The descriptor is one JSON layer of a bundle's payload (docs/bundle-format.md): the release's
identity and hardware profile, its images (by manifest and config digest), its models and configs
(stored and content digests), the application definition (the Compose subset), its health policy
and the names of the secrets it declares. :meth:`BundleDescriptor.parse` is the one reader of it,
on the builder's self-check, in a device's verification and when a staged slot is read again;
what it returns is immutable and typed, and keeps the data as signed, to stage it unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from updater.appdef import App, parse_app
from updater.errors import DeviceFault, InputError, Refused
from updater.healthpolicy import HealthPolicy, parse_health
from updater.oci import MEDIA, parse_json
from updater.yamlfile import Field

__all__ = ["BundleDescriptor", "FileEntry", "ImageEntry", "Provenance"]

_PROVENANCE_KEYS = ("identity", "issuer", "sigstoreBundle", "trustedRoot")
_FILE_ENTRY_TYPES = {
    "name": str, "kind": str, "mediaType": str, "digest": str, "size": int, "uncompressedDigest": str, "uncompressedSize": int,
}
_IMAGE_ENTRY_TYPES = {"name": str, "manifest": str, "mediaType": str, "size": int, "config": str}


@dataclass(frozen=True, kw_only=True)
class Provenance:
    """A model or config signed with Sigstore: by whom, and the digests of the material that shows it."""

    identity: str
    issuer: str
    sigstore_bundle: str  # the digest of the Sigstore bundle layer
    trusted_root: str  # the digest of the Sigstore trusted root layer


@dataclass(frozen=True, kw_only=True)
class FileEntry:
    """A model or config: its stored blob, and its content (what is staged) when the blob is compressed."""

    role: str  # model or config
    name: str
    kind: str  # file or directory (a tar of it)
    media_type: str
    digest: str
    size: int
    content_digest: str
    content_size: int
    provenance: Provenance | None = None

    @property
    def compressed(self) -> bool:
        return self.media_type.endswith(MEDIA.ZSTD_SUFFIX)


@dataclass(frozen=True, kw_only=True)
class ImageEntry:
    """A container image: its manifest, and its config's digest (the image ID an engine gives it)."""

    name: str
    manifest: str
    media_type: str
    size: int
    config: str
    platform: dict[str, str] | None = None


@dataclass(frozen=True, kw_only=True)
class BundleDescriptor:
    """A release as its bundle describes it."""

    name: str
    version: str
    created: str
    profile: str
    compatible: str
    platform: dict[str, str]
    images: tuple[ImageEntry, ...]
    models: tuple[FileEntry, ...]
    configs: tuple[FileEntry, ...]
    secrets: tuple[str, ...]
    app: App
    health: HealthPolicy
    data: dict[str, Any] = field(repr=False, compare=False)  # as signed: what a slot keeps

    @property
    def files(self) -> tuple[FileEntry, ...]:
        return (*self.models, *self.configs)

    @classmethod
    def parse(cls, data: object, where: str) -> BundleDescriptor:
        """Validate ``data`` (the descriptor's JSON); Refused naming ``where`` and the first fault."""
        if not isinstance(data, dict):
            raise Refused(f"{where}: the bundle descriptor is not a JSON object")
        profile = data.get("profile")
        platform = profile.get("platform") if isinstance(profile, dict) else None
        if not isinstance(profile, dict) or not isinstance(platform, dict) or not all(isinstance(v, str) for v in platform.values()):
            raise Refused(f"{where}: descriptor has no valid profile and platform")
        identity = {"name": data.get("name"), "version": data.get("version"), "created": data.get("created"),
                    "profile": profile.get("name"), "compatible": profile.get("compatible")}
        if not all(isinstance(v, str) for v in identity.values()):
            raise Refused(f"{where}: descriptor lacks its name, version, creation time, profile or compatible string")
        images = tuple(_image(e, where) for e in _list(data, "images", where))
        models = tuple(_file(e, "model", where) for e in _list(data, "models", where))
        configs = tuple(_file(e, "config", where) for e in _list(data, "configs", where))
        _unique([i.name for i in images], "an image", where)
        _unique([f"{f.role} {f.name}" for f in (*models, *configs)], "a model or config", where)
        secrets = tuple(_secret(e, where) for e in _list(data, "secrets", where))
        app, health = _definition(data, where, images=images, models=models, configs=configs, secrets=secrets)
        return cls(**{k: str(v) for k, v in identity.items()}, platform=dict(platform), images=images, models=models,
                   configs=configs, secrets=secrets, app=app, health=health, data=data)

    @classmethod
    def read(cls, path: Path) -> BundleDescriptor:
        """The descriptor a staged slot keeps (it was verified when it was staged)."""
        try:
            return cls.parse(parse_json(path.read_bytes(), str(path), DeviceFault), str(path))
        except (OSError, ValueError) as e:
            raise DeviceFault(f"{path}: the staged descriptor cannot be read ({type(e).__name__})") from e


def _list(data: dict[str, Any], key: str, where: str) -> list[Any]:
    value = data.get(key, [])
    if not isinstance(value, list):
        raise Refused(f"{where}: descriptor: {key} is not a list")
    return value


def _unique(names: list[str], what: str, where: str) -> None:
    if len(set(names)) != len(names):
        raise Refused(f"{where}: descriptor lists {what} name twice")


def _image(entry: object, where: str) -> ImageEntry:
    if not isinstance(entry, dict) or not all(isinstance(entry.get(k), t) for k, t in _IMAGE_ENTRY_TYPES.items()):
        raise Refused(f"{where}: descriptor: malformed image entry (expected {', '.join(_IMAGE_ENTRY_TYPES)})")
    platform = entry.get("platform")
    if platform is not None and (not isinstance(platform, dict) or not all(isinstance(v, str) for v in platform.values())):
        raise Refused(f"{where}: descriptor: image {entry['name']} has a malformed platform")
    return ImageEntry(name=entry["name"], manifest=entry["manifest"], media_type=entry["mediaType"], size=entry["size"],
                      config=entry["config"], platform=platform)


def _file(entry: object, role: str, where: str) -> FileEntry:
    if not isinstance(entry, dict) or not all(isinstance(entry.get(k), t) for k, t in _FILE_ENTRY_TYPES.items()):
        raise Refused(f"{where}: descriptor: malformed {role} entry (expected {', '.join(_FILE_ENTRY_TYPES)})")
    if entry["kind"] not in ("file", "directory"):
        raise Refused(f"{where}: descriptor: {role} {entry['name']} has unknown kind {str(entry['kind'])[:40]!r}")
    media_type = entry["mediaType"]
    if media_type not in MEDIA.PAYLOAD_FILES[role] or (entry["kind"] == "directory") != (MEDIA.TAR_SUFFIX in media_type):
        raise Refused(f"{where}: descriptor: {role} {entry['name']} ({entry['kind']}) has media type {media_type[:80]!r}, "
                      f"not a Sealift {role} type for a {entry['kind']}")
    record = entry.get("provenance")
    if record is not None and (not isinstance(record, dict) or sorted(record) != sorted(_PROVENANCE_KEYS)
                               or not all(isinstance(v, str) for v in record.values())):
        raise Refused(f"{where}: descriptor: {role} {entry['name']} has a malformed provenance record")
    provenance = Provenance(identity=record["identity"], issuer=record["issuer"], sigstore_bundle=record["sigstoreBundle"],
                            trusted_root=record["trustedRoot"]) if record is not None else None
    return FileEntry(role=role, name=entry["name"], kind=entry["kind"], media_type=entry["mediaType"], digest=entry["digest"],
                     size=entry["size"], content_digest=entry["uncompressedDigest"], content_size=entry["uncompressedSize"],
                     provenance=provenance)


def _secret(entry: object, where: str) -> str:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise Refused(f"{where}: descriptor: malformed secret entry")
    return str(entry["name"])


def _definition(data: dict[str, Any], where: str, *, images: tuple[ImageEntry, ...], models: tuple[FileEntry, ...],
                configs: tuple[FileEntry, ...], secrets: tuple[str, ...]) -> tuple[App, HealthPolicy]:
    """The app definition and health policy, validated by the code that validates a spec."""
    config_names = tuple(c.name for c in configs)
    try:
        app = parse_app(Field(Path(where), "descriptor.app", data.get("app")), images=tuple(i.name for i in images),
                        mountable=(*(m.name for m in models), *config_names), secrets=secrets, any_device_path=True)
        health = parse_health(Field(Path(where), "descriptor.health", data.get("health")), app=app, configs=config_names)
    except InputError as e:
        raise Refused(str(e)) from e
    for service in app.services:  # the build resolves it for the bundle's profile; unresolved, it would ask for nothing
        if service.container.accelerator is not None:
            raise Refused(f"{where}: descriptor.app.services.{service.name}.x-sealift.accelerator is not resolved for a profile")
    return app, health
