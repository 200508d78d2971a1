"""``sealift repo``: the TUF repository that signs bundles.

Public metadata lives in ``DIR/metadata/`` in python-tuf's layout (``N.root.json`` for every root
version, ``N.targets.json`` and ``N.snapshot.json`` with consistent snapshots, ``timestamp.json``);
the repository's policy (thresholds and expiry periods) in ``DIR/sealift-repo.json``; private keys
only in the key directory (:mod:`bundler.keys`). A bundle becomes a target named
``NAME/PROFILE/VERSION`` whose length and hashes are those of the bundle's top OCI index, which
chains to every blob by digest. Each added bundle then carries the repository's metadata in its
``tuf/`` folder, so a bundle alone is enough for a device that holds a trusted root.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, TargetFile, Targets, Timestamp
from tuf.api.serialization import DeserializationError
from tuf.api.serialization.json import JSONSerializer

from bundler.bundle import BundleInfo, verify_bundle
from bundler.errors import RepositoryError, SigningError
from bundler.keys import KeyStore
from bundler.layout import open_layout
from bundler.metadata_io import attach_metadata
from bundler.spec import version_key

__all__ = ["ROLES", "AddResult", "Policy", "Repository", "RolePolicy"]

ROLES = ("root", "targets", "snapshot", "timestamp")
_POLICY_FILE = "sealift-repo.json"
_SERIALIZER = JSONSerializer(compact=False)
T = TypeVar("T", Root, Timestamp, Snapshot, Targets)


@dataclass(frozen=True, kw_only=True)
class RolePolicy:
    """How many keys a role has, how many must sign, and how long its metadata stays valid."""

    keys: int = 1
    threshold: int = 1
    expiry_days: float = 365.0


def _default_roles() -> dict[str, RolePolicy]:
    # Root rarely changes and its keys stay offline; timestamp is re-signed often. A site that is
    # offline for weeks needs bundles whose snapshot and timestamp outlive its absence: see
    # docs/security.md for the offline policy.
    return {
        "root": RolePolicy(expiry_days=365),
        "targets": RolePolicy(expiry_days=90),
        "snapshot": RolePolicy(expiry_days=30),
        "timestamp": RolePolicy(expiry_days=30),
    }


@dataclass(frozen=True, kw_only=True)
class Policy:
    roles: dict[str, RolePolicy] = field(default_factory=_default_roles)
    algorithm: str = "ed25519"

    def check(self) -> None:
        for role in ROLES:
            p = self.roles[role]
            if not 1 <= p.threshold <= p.keys:
                raise RepositoryError(f"role {role}: threshold {p.threshold} needs 1 to {p.keys} keys")
            if p.expiry_days <= 0:
                raise RepositoryError(f"role {role}: expiry must be positive, found {p.expiry_days} days")


@dataclass(frozen=True, kw_only=True)
class AddResult:
    bundle: Path
    target: str
    changed: bool


class Repository:
    """A TUF repository directory, signed with keys from a :class:`KeyStore`."""

    def __init__(self, directory: Path, keys: KeyStore, *, now: Callable[[], dt.datetime] | None = None) -> None:
        self.directory = directory
        self.metadata = directory / "metadata"
        self.keys = keys
        self.now = now or (lambda: dt.datetime.now(dt.UTC))

    # -- creating ------------------------------------------------------------------------------

    def init(self, policy: Policy) -> None:
        """Create the four top-level roles with fresh keys, and version 1 of their metadata."""
        policy.check()
        if (self.metadata / "1.root.json").exists():
            raise RepositoryError(f"{self.directory}: already a repository (metadata/1.root.json exists)")
        self.metadata.mkdir(parents=True, exist_ok=True)
        root = Root(expires=self._expiry(policy, "root"), consistent_snapshot=True)
        for role in ROLES:
            for _ in range(policy.roles[role].keys):
                root.add_key(self.keys.generate(role, algorithm=policy.algorithm), role)
            root.roles[role].threshold = policy.roles[role].threshold
        _write_json(self.directory / _POLICY_FILE, {"algorithm": policy.algorithm,
                                                     "roles": {r: asdict(p) for r, p in policy.roles.items()}})
        root_md = Metadata(root)
        self._sign(root_md, root, "root")
        self._write(root_md, "1.root.json")
        self._write(root_md, "root.json")
        targets = Metadata(Targets(expires=self._expiry(policy, "targets")))
        self._publish(targets, root, policy)

    # -- adding bundles ------------------------------------------------------------------------

    def add(self, bundles: Sequence[Path], *, force: bool = False, location: str | None = None) -> list[AddResult]:
        """Add bundles as targets, re-sign snapshot and timestamp, and write the metadata into each bundle."""
        root = self._load("root.json", Root).signed
        policy = self._policy()
        targets_md = self._load_versioned("targets", Targets)
        results = []
        for path in bundles:
            info = verify_bundle(path)
            name = f"{info.name}/{info.profile}/{info.version}"
            target = _target_file(path, info, name, location)
            existing = targets_md.signed.targets.get(name)
            if existing is not None and existing == target:
                results.append(AddResult(bundle=path, target=name, changed=False))
                continue
            if existing is not None and not force:
                raise RepositoryError(f"{name}: already published with other content; bundles are immutable (use --force to replace)")
            self._check_newest(targets_md.signed, info, force=force)
            targets_md.signed.targets[name] = target
            results.append(AddResult(bundle=path, target=name, changed=True))
        if any(r.changed for r in results):
            self._publish(targets_md, root, policy, bump=True)
        files = self.current_files()
        for path in bundles:
            attach_metadata(path, files)
        return results

    def rotate(self, role: str, *, revoke: Sequence[str] | None = None) -> list[str]:
        """Replace ``role``'s keys (or only those in ``revoke``) with new ones, in a new root version.

        The new root is signed by the old root's keys and, for a root rotation, the new ones too,
        so a device walks from one to the next. The role's metadata (and what names it) is then
        re-signed with the new keys. Returns the IDs of the keys removed.
        """
        if role not in ROLES:
            raise RepositoryError(f"unknown role {role!r} (expected one of {', '.join(ROLES)})")
        policy = self._policy()
        old_md = self._load("root.json", Root)
        root = Metadata.from_bytes(old_md.to_bytes()).signed
        assert isinstance(root, Root)
        removed = list(revoke) if revoke is not None else list(root.roles[role].keyids)
        unknown = [k for k in removed if k not in root.roles[role].keyids]
        if unknown:
            raise RepositoryError(f"role {role}: key {unknown[0][:16]} is not one of its keys")
        for keyid in removed:
            root.revoke_key(keyid, role)
            root.add_key(self.keys.generate(role, algorithm=policy.algorithm), role)
        root.version += 1
        root.expires = self._expiry(policy, "root")
        new_md = Metadata(root)
        self._sign_root(new_md, old_md.signed, root)
        self._write(new_md, f"{root.version}.root.json")
        self._write(new_md, "root.json")
        self._publish(self._load_versioned("targets", Targets), root, policy, bump=True)
        return removed

    def _sign_root(self, md: Metadata[Root], previous: Root, current: Root) -> None:
        """A new root needs a threshold of the previous root's keys and of its own."""
        md.signatures.clear()
        keyids = list(dict.fromkeys([*previous.roles["root"].keyids, *current.roles["root"].keyids]))
        for signer in self.keys.signers(keyids):
            md.sign(signer, append=True)
        for trusted, which in ((previous, "previous"), (current, "new")):
            try:
                trusted.verify_delegate("root", md.signed_bytes, md.signatures)
            except UnsignedMetadataError as e:
                raise SigningError(f"root version {current.version}: not enough signatures from the {which} root keys") from e

    def current_files(self) -> dict[str, bytes]:
        """What a device needs: every root version, the timestamp, and the snapshot and targets it names."""
        timestamp = self._load("timestamp.json", Timestamp)
        snapshot_name = f"{timestamp.signed.snapshot_meta.version}.snapshot.json"
        snapshot = self._load(snapshot_name, Snapshot)
        names = [p.name for p in self.metadata.glob("*.root.json")]
        names += ["timestamp.json", snapshot_name]
        names += [f"{meta.version}.{role}" for role, meta in snapshot.signed.meta.items()]
        return {name: (self.metadata / name).read_bytes() for name in names}

    def _check_newest(self, targets: Targets, info: BundleInfo, *, force: bool) -> None:
        prefix = f"{info.name}/{info.profile}/"
        published = [n.removeprefix(prefix) for n in targets.targets if n.startswith(prefix)]
        newer = [v for v in published if version_key(v) > version_key(info.version)]
        if newer and not force:
            newest = max(newer, key=version_key)
            raise RepositoryError(
                f"bundle {info.name} {info.version} for {info.profile} is older than published {newest} (use --force to add it anyway)"
            )

    # -- signing and writing -------------------------------------------------------------------

    def _publish(self, targets_md: Metadata[Targets], root: Root, policy: Policy, *, bump: bool = False) -> None:
        """Sign targets, then a snapshot naming it, then a timestamp naming that snapshot."""
        if bump:
            targets_md.signed.version += 1
        targets_md.signed.expires = self._expiry(policy, "targets")
        self._sign(targets_md, root, "targets")
        self._write(targets_md, f"{targets_md.signed.version}.targets.json")
        snapshot_md = self._load_versioned("snapshot", Snapshot) if bump else Metadata(Snapshot(expires=self.now()))
        if bump:
            snapshot_md.signed.version += 1
        snapshot_md.signed.meta["targets.json"] = MetaFile(version=targets_md.signed.version)
        snapshot_md.signed.expires = self._expiry(policy, "snapshot")
        self._sign(snapshot_md, root, "snapshot")
        self._write(snapshot_md, f"{snapshot_md.signed.version}.snapshot.json")
        timestamp_md = self._load("timestamp.json", Timestamp) if bump else Metadata(Timestamp(expires=self.now()))
        if bump:
            timestamp_md.signed.version += 1
        timestamp_md.signed.snapshot_meta = MetaFile(version=snapshot_md.signed.version)
        timestamp_md.signed.expires = self._expiry(policy, "timestamp")
        self._sign(timestamp_md, root, "timestamp")
        self._write(timestamp_md, "timestamp.json")

    def _sign(self, md: Metadata[Any], root: Root, role: str) -> None:
        md.signatures.clear()
        keyids = root.roles[role].keyids
        for signer in self.keys.signers(keyids):
            md.sign(signer, append=True)
        try:
            root.verify_delegate(role, md.signed_bytes, md.signatures)
        except UnsignedMetadataError as e:
            have = len(md.signatures)
            raise SigningError(
                f"role {role}: {have} of the {root.roles[role].threshold} signatures needed "
                f"(the key directory holds {have} of its {len(keyids)} keys)"
            ) from e

    def _expiry(self, policy: Policy, role: str) -> dt.datetime:
        return (self.now() + dt.timedelta(days=policy.roles[role].expiry_days)).replace(microsecond=0)

    def _policy(self) -> Policy:
        path = self.directory / _POLICY_FILE
        try:
            data = json.loads(path.read_text())
            return Policy(algorithm=data["algorithm"], roles={r: RolePolicy(**p) for r, p in data["roles"].items()})
        except FileNotFoundError as e:
            raise RepositoryError(f"{self.directory}: not a Sealift repository ({_POLICY_FILE} is missing)") from e
        except (ValueError, KeyError, TypeError) as e:
            raise RepositoryError(f"{path}: malformed policy ({e})") from e

    def _load(self, name: str, kind: type[T]) -> Metadata[T]:
        path = self.metadata / name
        try:
            md = Metadata.from_bytes(path.read_bytes())
        except FileNotFoundError as e:
            raise RepositoryError(f"{path}: missing; is {self.directory} a repository (sealift repo init)?") from e
        except DeserializationError as e:
            raise RepositoryError(f"{path}: not valid TUF metadata ({e})") from e
        if not isinstance(md.signed, kind):
            raise RepositoryError(f"{path}: holds {md.signed.type} metadata, expected {kind.type}")
        return md

    def _load_versioned(self, role: str, kind: type[T]) -> Metadata[T]:
        versions = sorted(int(p.name.split(".")[0]) for p in self.metadata.glob(f"*.{role}.json"))
        if not versions:
            raise RepositoryError(f"{self.metadata}: no {role} metadata; is this a repository (sealift repo init)?")
        return self._load(f"{versions[-1]}.{role}.json", kind)

    def _write(self, md: Metadata[Any], name: str) -> None:
        data = md.to_bytes(_SERIALIZER)
        temp = self.metadata / f".{name}.tmp"
        temp.write_bytes(data)
        os.replace(temp, self.metadata / name)


def _target_file(path: Path, info: BundleInfo, name: str, location: str | None) -> TargetFile:
    with open_layout(path) as reader:
        index = reader.open_blob(info.digest)
        with index:
            data = index.read()
    custom = {
        "name": info.name,
        "version": info.version,
        "profile": info.profile,
        "compatible": info.compatible,
        "digest": info.digest,
    }
    if location:
        custom["location"] = location
    return TargetFile(length=len(data), hashes={"sha256": hashlib.sha256(data).hexdigest()}, path=name,
                      unrecognized_fields={"custom": {"sealift": custom}})


def _write_json(path: Path, data: dict[str, Any]) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(temp, path)
