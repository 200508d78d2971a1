"""The bundle spec, ``sealift.yaml``: what goes into a release, per hardware profile.

Loaded into frozen dataclasses with safe YAML and strict validation: unknown fields, wrong types
and dangling references are errors that name the file and the field. Profile names are checked
against the known profiles at build time (:mod:`bundler.build`), since they live in other files.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from updater.appdef import App, parse_app
from updater.errors import InputError
from updater.healthpolicy import HealthPolicy, parse_health
from updater.names import ENV_NAME, NAME
from updater.versions import VERSION
from updater.yamlfile import Field, load_yaml

__all__ = ["ALL_PROFILES", "Component", "Provenance", "Secret", "SourceRoots", "Spec", "load_spec"]

ALL_PROFILES = "all"


@dataclass(frozen=True)
class SourceRoots:
    """The directories a spec may read files from: its own, and those the build was explicitly allowed.

    A spec from a branch or a pull request must not ship the build machine's files, so every path
    it names (models, configs, the application file, Sigstore material, secret files, local image
    layouts) must land inside one of these after ``..`` and symlinks are resolved.
    """

    spec_dir: Path
    allowed: tuple[Path, ...] = ()

    def resolve(self, text: str | Path, *, what: str) -> Path:
        """``text`` taken from the spec's directory with symlinks resolved; InputError outside every root."""
        joined = self.spec_dir / text
        try:
            resolved = joined.resolve()
            roots = [root.resolve() for root in (self.spec_dir, *self.allowed)]
        except (OSError, RuntimeError) as e:  # a symlink loop
            raise InputError(f"{what}: cannot resolve {joined} ({e})") from e
        if not any(resolved.is_relative_to(root) for root in roots):
            raise InputError(
                f"{what}: {str(text)!r} resolves to {resolved}, outside the spec's directory {roots[0]}"
                " (name other directories a build may read with --allow-dir)"
            )
        return resolved


@dataclass(frozen=True, kw_only=True)
class Provenance:
    """Who must have signed a file with Sigstore: the signer's identity and its OIDC issuer.

    The Sigstore bundle is read from ``bundle`` when given, else from the file's path plus
    ``.sigstore`` (so each variant brings its own).
    """

    identity: str
    issuer: str
    bundle: str | None = None


@dataclass(frozen=True, kw_only=True)
class Component:
    """An image, model or config: a default source and per-profile variants.

    ``source`` is an image reference for images and a path (relative to the spec) for models and
    configs. A component with no default exists only in the profiles that name a variant.
    """

    name: str
    default: str | None
    variants: tuple[tuple[str, str], ...] = ()
    provenance: Provenance | None = None

    def for_profile(self, profile: str) -> str | None:
        """The source this component uses in ``profile``, or None if it is absent there."""
        return dict(self.variants).get(profile, self.default)


@dataclass(frozen=True, kw_only=True)
class Secret:
    """A declared secret: where its value comes from (a file or an environment variable), never the value."""

    name: str
    environment: str | None = None
    file: str | None = None


@dataclass(frozen=True, kw_only=True)
class Spec:
    """A validated ``sealift.yaml``."""

    path: Path
    name: str
    version: str
    profiles: tuple[str, ...] | None  # None: every known profile
    images: tuple[Component, ...]
    models: tuple[Component, ...]
    configs: tuple[Component, ...]
    app: App
    health: HealthPolicy
    secrets: tuple[Secret, ...] = ()
    sigstore_trusted_root: str | None = None  # path of the Sigstore trusted root that provenance is checked against
    allowed_dirs: tuple[Path, ...] = ()  # directories outside the spec's own that its paths may name
    allow_privileged: bool = False  # whether services may be privileged (where their profile allows it too)
    app_services: str = "app.services"  # where the services are declared: FILE: PATH (for error messages)

    @property
    def directory(self) -> Path:
        """Where relative paths in the spec are rooted."""
        return self.path.parent

    @property
    def roots(self) -> SourceRoots:
        """The directories this spec's paths may resolve into."""
        return SourceRoots(self.directory, self.allowed_dirs)

    def source_path(self, text: str, *, what: str) -> Path:
        """The file or directory that the spec's path ``text`` names, confined to :attr:`roots`."""
        return self.roots.resolve(text, what=f"{self.path}: {what}")

    def variant_profiles(self) -> dict[str, str]:
        """Every profile named by a variant, with the field that names it (for error messages)."""
        named: dict[str, str] = {}
        for kind, components in (("images", self.images), ("models", self.models), ("configs", self.configs)):
            for component in components:
                for profile, _ in component.variants:
                    named.setdefault(profile, f"{kind}.{component.name}.variants.{profile}")
        return named


def load_spec(path: Path, *, allowed_dirs: Sequence[Path] = ()) -> Spec:
    """Read and validate the spec at ``path``; its paths may name files in its directory and ``allowed_dirs``."""
    roots = SourceRoots(path.parent, tuple(allowed_dirs))
    root = load_yaml(path, what="bundle spec")
    top = root.mapping(
        required=("name", "version", "profiles", "images", "app"),
        optional=("models", "configs", "health", "secrets", "sigstore", "allow_privileged"),
    )
    images = _components(top["images"], key="source", roots=roots)
    models = _components(top["models"], key="path", roots=roots, signed=True) if "models" in top else ()
    configs = _components(top["configs"], key="path", roots=roots, signed=True) if "configs" in top else ()
    trusted_root = _sigstore(top["sigstore"], roots) if "sigstore" in top else None
    if trusted_root is None and any(c.provenance for c in (*models, *configs)):
        raise top.get("sigstore", Field(path, "sigstore", None)).error(
            "is required when a component declares provenance: `sigstore: {trusted_root: PATH}`"
        )
    _check_unique_mountables(top, models, configs)
    secrets = _secrets(top["secrets"], roots) if "secrets" in top else ()
    app_field = _app_field(top["app"], path, roots)
    app = parse_app(
        app_field,
        images=tuple(c.name for c in images),
        mountable=tuple(c.name for c in (*models, *configs)),
        secrets=tuple(s.name for s in secrets),
    )
    health_field = top.get("health", Field(path, "health", {}))
    return Spec(
        path=path,
        name=top["name"].string(pattern=NAME, what="a name of lower-case letters, digits, '.', '_' or '-'"),
        version=top["version"].string(pattern=VERSION, what="a semantic version such as 1.2.0"),
        profiles=_profiles(top["profiles"]),
        images=images,
        models=models,
        configs=configs,
        app=app,
        health=parse_health(health_field, app=app, configs=tuple(c.name for c in configs)),
        secrets=secrets,
        sigstore_trusted_root=trusted_root,
        allowed_dirs=roots.allowed,
        allow_privileged=top["allow_privileged"].boolean() if "allow_privileged" in top else False,
        app_services=f"{app_field.file}: {app_field.path + '.' if app_field.path else ''}services",
    )


def _profiles(field: Field) -> tuple[str, ...] | None:
    if field.value == ALL_PROFILES:
        return None
    if not isinstance(field.value, list):
        field.fail(f'a list of profile names, or "{ALL_PROFILES}"')
    names = field.string_list(pattern=NAME, what=f'a profile name, or "{ALL_PROFILES}"')
    if not names:
        field.fail(f'at least one profile, or "{ALL_PROFILES}"')
    if len(set(names)) != len(names):
        raise field.error("names a profile twice")
    return names


def _components(field: Field, *, key: str, roots: SourceRoots, signed: bool = False) -> tuple[Component, ...]:
    components = []
    for name, sub in field.entries(key_pattern=NAME, key_what="component name"):
        f = sub.mapping(optional=(key, "variants", *(("provenance",) if signed else ())))
        variants = _variants(f["variants"], key=key, roots=roots) if "variants" in f else ()
        if key not in f and not variants:
            raise sub.error(f"needs `{key}`, or `variants` for some profiles")
        default = _source(f[key], key, roots) if key in f else None
        provenance = _provenance(f["provenance"], roots) if "provenance" in f else None
        components.append(Component(name=name, default=default, variants=variants, provenance=provenance))
    return tuple(components)


def _provenance(field: Field, roots: SourceRoots) -> Provenance:
    f = field.mapping(required=("identity", "issuer"), optional=("bundle",))
    return Provenance(
        identity=f["identity"].string(what="the signer's identity (an e-mail address or a workflow URI)"),
        issuer=f["issuer"].string(pattern=re.compile(r"https://\S+"), what="the OIDC issuer URL (https://...)"),
        bundle=_path(f["bundle"], roots, what="a path to the Sigstore bundle") if "bundle" in f else None,
    )


def _sigstore(field: Field, roots: SourceRoots) -> str:
    return _path(field.mapping(required=("trusted_root",))["trusted_root"], roots,
                 what="a path to a Sigstore trusted root JSON file")


def _variants(field: Field, *, key: str, roots: SourceRoots) -> tuple[tuple[str, str], ...]:
    result = []
    for profile, sub in field.entries(key_pattern=NAME, key_what="profile name"):
        f = sub.mapping(required=(key,))
        result.append((profile, _source(f[key], key, roots)))
    return tuple(sorted(result))


def _source(field: Field, key: str, roots: SourceRoots) -> str:
    if key == "source":
        return field.string(what="an image reference such as oci:DIR:TAG or docker://HOST/REPO:TAG")
    return _path(field, roots, what="a path relative to the spec")


def _path(field: Field, roots: SourceRoots, *, what: str) -> str:
    """A path the spec names, held inside ``roots`` (checked again where the file is opened)."""
    text = field.string(what=what)
    if "\x00" in text:
        field.fail("a path without NUL characters")
    try:
        roots.resolve(text, what="path")
    except InputError as e:
        raise field.error(str(e).removeprefix("path: ")) from e
    return text


def _check_unique_mountables(top: Mapping[str, Field], models: tuple[Component, ...], configs: tuple[Component, ...]) -> None:
    clash = {m.name for m in models} & {c.name for c in configs}
    if clash:
        name = sorted(clash)[0]
        raise top["configs"].child(name).error("is also a model name; volumes refer to both by name")


def _secrets(field: Field, roots: SourceRoots) -> tuple[Secret, ...]:
    secrets = []
    for name, sub in field.entries(key_pattern=NAME, key_what="secret name"):
        if isinstance(sub.value, dict) and "value" in sub.value:
            raise sub.child("value").error("secret values never go in the spec: use `environment` or `file`")
        f = sub.mapping(optional=("environment", "file"))
        if len(f) != 1:
            raise sub.error("needs exactly one of `environment` or `file`")
        env = f["environment"].string(pattern=ENV_NAME, what="an environment variable name") if "environment" in f else None
        file = _path(f["file"], roots, what="a path") if "file" in f else None
        secrets.append(Secret(name=name, environment=env, file=file))
    return tuple(secrets)


def _app_field(field: Field, spec_path: Path, roots: SourceRoots) -> Field:
    """The app definition: inline, or in a Compose file next to the spec."""
    if not isinstance(field.value, str):
        return field
    target = roots.resolve(_path(field, roots, what="a Compose file's path relative to the spec"), what="app")
    try:
        return load_yaml(target, what="application definition")
    except InputError as e:
        raise InputError(f"{e} (referenced from {spec_path}: app)") from e
