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
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from securesystemslib.signer import Key
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    SuccinctRoles,
    Targets,
    Timestamp,
)
from tuf.api.serialization import DeserializationError
from tuf.api.serialization.json import JSONSerializer

from bundler.keys import Keyring
from bundler.metadata_io import attach_metadata
from bundler.policy import ROLES, Policy, RolePolicy
from bundler.targets import identify, plan_file, target_file
from updater.durable import replace_file
from updater.errors import InputError
from updater.rollout import PLAN_PATHS, ROLE, Plan, plan_target
from updater.versions import version_key

__all__ = ["AddResult", "Repository"]

BINS_ROLE = "bins"
_ROLE_NAME = re.compile(r"[^\x00-\x1f\x7f]{1,60}")  # any TUF role name but control characters; files quote it
_ROOT_FILE = re.compile(r"[1-9][0-9]*\.root\.json")
_QUOTED_MAX = 40  # VERSION.ROLE.json, even hex-encoded as a registry tag (tuf.x.HEX), stays within a tag's 128 characters
_POLICY_FILE = "sealift-repo.json"
_SERIALIZER = JSONSerializer(compact=False)
T = TypeVar("T", Root, Timestamp, Snapshot, Targets)


@dataclass(frozen=True, kw_only=True)
class AddResult:
    bundle: Path
    target: str
    changed: bool


class _Change:
    """One edit of the repository: what was loaded, and which metadata must be re-signed."""

    def __init__(self, repo: Repository) -> None:
        self.root = repo._load("root.json", Root).signed
        self.new_root: Metadata[Root] | None = None  # written with the rest, after every signature is made
        self.policy = repo._policy()
        self.timestamp = repo._load("timestamp.json", Timestamp)
        self.snapshot = repo._load(f"{self.timestamp.signed.snapshot_meta.version}.snapshot.json", Snapshot)
        self.targets = repo._load(f"{self.snapshot.signed.meta['targets.json'].version}.targets.json", Targets)
        self.targets_changed = False
        self.delegated: dict[str, Metadata[Targets]] = {}  # roles loaded for this edit, by name
        self.delegated_changed: set[str] = set()
        self.created: set[str] = set()  # new delegated roles: signed as version 1


class Repository:
    """A TUF repository directory, signed with keys from a :class:`Keyring`."""

    def __init__(self, directory: Path, keys: Keyring, *, now: Callable[[], dt.datetime] | None = None) -> None:
        if keys.directory.resolve().is_relative_to(directory.resolve()):
            raise InputError(f"{keys.directory}: the key directory must not be inside the repository {directory}")
        self.directory = directory
        self.metadata = directory / "metadata"
        self.keys = keys
        self.now = now or (lambda: dt.datetime.now(dt.UTC))

    @classmethod
    def reading(cls, directory: Path) -> Repository:
        """The repository at ``directory``, to read only: it reaches no key, so it signs nothing."""
        return cls(directory, Keyring(Path(os.devnull)))

    # -- creating ------------------------------------------------------------------------------

    def init(self, policy: Policy, *, hashed_bins: int = 0) -> None:
        """Create the four top-level roles with fresh keys, and version 1 of their metadata.

        With ``hashed_bins`` (a number of bits), targets are spread over 2**bits delegated roles
        by the hash of their name, so each bundle carries one small bin instead of a huge list.
        """
        policy.check()
        if (self.metadata / "1.root.json").exists():
            raise InputError(f"{self.directory}: already a repository (metadata/1.root.json exists)")
        if not 0 <= hashed_bins <= 14:
            raise InputError(f"hashed bins: expected 1 to 14 bits (2 to 16384 bins), found {hashed_bins}")
        self.metadata.mkdir(parents=True, exist_ok=True)
        root = Root(expires=self._expiry(policy, "root"), consistent_snapshot=True)
        for role in ROLES:
            for _ in range(policy.roles[role].keys):
                root.add_key(self.keys.generate(role, algorithm=policy.algorithm), role)
            root.roles[role].threshold = policy.roles[role].threshold
        policy_data = {"algorithm": policy.algorithm, "roles": {r: asdict(p) for r, p in policy.roles.items()}}
        replace_file(self.directory / _POLICY_FILE, (json.dumps(policy_data, indent=2, sort_keys=True) + "\n").encode())
        root_md = Metadata(root)
        self._sign(root_md, root, "root")
        targets = Targets(expires=self._expiry(policy, "targets"))
        bins: dict[str, Metadata[Targets]] = {}
        if hashed_bins:
            key = self.keys.generate(BINS_ROLE, algorithm=policy.algorithm)
            succinct = SuccinctRoles(keyids=[key.keyid], threshold=1, bit_length=hashed_bins, name_prefix=BINS_ROLE)
            targets.delegations = Delegations(keys={key.keyid: key}, succinct_roles=succinct)
            bins = {name: Metadata(Targets(expires=self.now())) for name in succinct.get_roles()}
        self._publish_first(Metadata(targets), root_md, policy, bins)

    def delegate(self, name: str, *, paths: Sequence[str], keys: int = 1, threshold: int = 1) -> None:
        """Delegate the targets matching ``paths`` (e.g. ``vision-app/*``) to a new role with its own keys."""
        if name == ROLE:
            raise InputError(f"role {ROLE} signs rollout plans: create it with `sealift rollout init`")
        self._delegate(name, paths=paths, keys=keys, threshold=threshold)

    def init_rollout(self, *, keys: int = 1, threshold: int = 1) -> None:
        """Delegate the rollout plans (``NAME/rollout/VERSION``) to the role ``rollout``, with keys of its own,
        ahead of every other delegation (devices walk delegations in order: no team's role may answer first)."""
        self._delegate(ROLE, paths=PLAN_PATHS, keys=keys, threshold=threshold, first=True)

    def _delegate(self, name: str, *, paths: Sequence[str], keys: int, threshold: int, first: bool = False) -> None:
        if not _ROLE_NAME.fullmatch(name) or name in ROLES or name.startswith(f"{BINS_ROLE}-") \
                or name.rsplit(".", 1)[-1] in ROLES or len(quote(name, safe="")) > _QUOTED_MAX:
            raise InputError(f"{name[:80]!r} cannot name a delegated role (printable characters, at most {_QUOTED_MAX} once "
                             "percent-encoded for its file name, not a top-level role's name nor ending in '.' and one)")
        if not paths or not 1 <= threshold <= keys:
            raise InputError(f"role {name}: needs at least one path and a threshold from 1 to {keys}")
        change = _Change(self)
        delegations = change.targets.signed.delegations
        if delegations is not None and delegations.succinct_roles is not None:
            raise InputError(f"{self.directory} spreads targets over hashed bins; it cannot also have named delegations")
        if delegations is None:
            delegations = change.targets.signed.delegations = Delegations(keys={}, roles={})
        assert delegations.roles is not None
        if name in delegations.roles:
            raise InputError(f"role {name} already exists")
        role = DelegatedRole(name=name, keyids=[], threshold=threshold, terminating=True, paths=list(paths))
        delegations.roles = {name: role, **delegations.roles} if first else {**delegations.roles, name: role}
        for _ in range(keys):
            change.targets.signed.add_key(self.keys.generate(name, algorithm=change.policy.algorithm), name)
        change.targets_changed = True
        change.delegated[name] = Metadata(Targets(expires=self.now()))
        change.created.add(name)
        self._commit(change)

    # -- adding bundles ------------------------------------------------------------------------

    def add(self, bundles: Sequence[Path], *, role: str | None = None, force: bool = False,
            location: str | None = None) -> list[AddResult]:
        """Add bundles as targets (of ``role``, a delegated role, when given), re-sign what names
        them, and write the metadata each bundle needs into its ``tuf/`` folder."""
        change = _Change(self)
        results = []
        names: dict[Path, str] = {}
        for path in bundles:
            name, version, custom = identify(path)
            names[path] = name
            holder = self._holder(change, name, role)
            targets = self._targets_of(change, holder).signed
            target = target_file(path, custom, name, location)
            existing = targets.targets.get(name)
            if existing is not None and existing == target:
                results.append(AddResult(bundle=path, target=name, changed=False))
                continue
            if existing is not None and not force:
                raise InputError(f"{name}: already published with other content; bundles are immutable (use --force to replace)")
            self._check_newest(change, name, version, force=force)
            targets.targets[name] = target
            self._mark_changed(change, holder)
            results.append(AddResult(bundle=path, target=name, changed=True))
        if change.targets_changed or change.delegated_changed:
            self._commit(change)
        for path in bundles:
            attach_metadata(path, self.current_files(names[path]))
        return results

    def sign_plan(self, plan: Plan) -> None:
        """Sign ``plan`` as the target ``NAME/rollout/VERSION`` of the rollout role, with only the keys of the
        rollout, snapshot and timestamp roles (a release manager holds no targets key). Every plan stays
        signed: a plan dropped would leave its release unstaged, and a halt lifted."""
        plan.check(InputError, f"rollout of {plan.app} {plan.version}")
        change = _Change(self)
        self._rollout_targets(change).signed.targets[plan_target(plan.app, plan.version)] = plan_file(plan)
        change.delegated_changed.add(ROLE)
        self._commit(change, renew=False)

    def plans(self) -> list[Plan]:
        """Every rollout plan the repository signs, newest release first per application."""
        change = _Change(self)
        if not self._has_rollout(change):
            return []
        found = [Plan.from_json(t.custom.get("sealift", {}).get("plan"), InputError, f"{self.metadata}: {name}")
                 for name, t in self._targets_of(change, ROLE).signed.targets.items()]
        return sorted(found, key=lambda p: (p.app, version_key(p.version)), reverse=True)

    def signed_versions(self, app: str) -> set[str]:
        """The versions of ``app`` whose bundles (for any profile) the repository signs."""
        found = set()
        for md in self._all_targets(_Change(self)):
            for name in md.signed.targets:
                parts = name.split("/")
                if len(parts) == 3 and parts[0] == app and parts[1] != "rollout":
                    found.add(parts[2])
        return found

    def _has_rollout(self, change: _Change) -> bool:
        delegations = change.targets.signed.delegations
        return delegations is not None and ROLE in (delegations.roles or {})

    def _rollout_targets(self, change: _Change) -> Metadata[Targets]:
        if not self._has_rollout(change):
            raise InputError(f"{self.directory}: no rollout role; create it with `sealift rollout init {self.directory}`")
        return self._targets_of(change, ROLE)

    def add_key(self, role: str, key: Key, uri: str) -> None:
        """Trust ``key`` for a top-level role in a new root version; its private half is reached
        through the securesystemslib signer ``uri`` (KMS, PKCS#11 HSM, a file, ...)."""
        self._new_root(role, add=[(key, uri)], revoke=[])

    def refresh(self) -> None:
        """Re-sign snapshot and timestamp, and any targets metadata past half its validity.

        Run it more often than the timestamp expires (a scheduled CI job), so devices always find
        metadata that is still valid."""
        self._commit(_Change(self))

    def rotate(self, role: str, *, revoke: Sequence[str] | None = None) -> list[str]:
        """Replace ``role``'s keys (or only those in ``revoke``) with new ones, in a new root version.

        The new root is signed by the old root's keys and, for a root rotation, the new ones too,
        so a device walks from one to the next. The role's metadata (and what names it) is then
        re-signed with the new keys. Returns the IDs of the keys removed.
        """
        current = self._load("root.json", Root).signed.roles.get(role)
        removed = list(revoke) if revoke is not None else list(current.keyids if current else [])
        self._new_root(role, add=[], revoke=removed, replace=True)
        return removed

    def _new_root(self, role: str, *, add: list[tuple[Key, str]], revoke: list[str], replace: bool = False) -> None:
        """A new root version that revokes and adds keys of ``role``; then re-sign what it names."""
        if role not in ROLES:
            raise InputError(f"unknown role {role!r} (expected one of {', '.join(ROLES)})")
        change = _Change(self)
        old = self._load("root.json", Root)
        root = Metadata.from_bytes(old.to_bytes()).signed
        assert isinstance(root, Root)
        unknown = [k for k in revoke if k not in root.roles[role].keyids]
        if unknown:
            raise InputError(f"role {role}: key {unknown[0][:16]} is not one of its keys")
        for keyid in revoke:
            root.revoke_key(keyid, role)
            if replace:
                root.add_key(self.keys.generate(role, algorithm=change.policy.algorithm), role)
        for key, uri in add:
            if key.keyid in root.roles[role].keyids:
                raise InputError(f"role {role}: key {key.keyid[:16]} is already trusted")
            self.keys.add_uri(role, key, uri)
            root.add_key(key, role)
        root.version += 1
        root.expires = self._expiry(change.policy, "root")
        new = Metadata(root)
        self._sign_root(new, old.signed, root)
        change.root, change.new_root = root, new
        change.targets_changed = True
        self._commit(change)

    def current_files(self, target: str | None = None) -> dict[str, bytes]:
        """What a device needs: every root version, timestamp, snapshot, targets, and the
        delegated roles that may hold ``target`` (all of them when no target is given)."""
        timestamp = self._load("timestamp.json", Timestamp)
        snapshot_name = f"{timestamp.signed.snapshot_meta.version}.snapshot.json"
        snapshot = self._load(snapshot_name, Snapshot)
        targets = self._load(f"{snapshot.signed.meta['targets.json'].version}.targets.json", Targets).signed
        wanted = {"targets", *_roles_for(targets, target)}
        if targets.delegations is not None and ROLE in (targets.delegations.roles or {}):
            wanted.add(ROLE)  # every release may have a plan: a device looks it up wherever the release came from
        names = [p.name for p in self.metadata.glob("*.root.json") if _ROOT_FILE.fullmatch(p.name)]
        names += ["timestamp.json", snapshot_name]
        names += [_file_name(role.removesuffix(".json"), meta.version) for role, meta in snapshot.signed.meta.items()
                  if role.removesuffix(".json") in wanted]
        return {name: (self.metadata / name).read_bytes() for name in names}

    # -- which role holds a target ---------------------------------------------------------------

    def _holder(self, change: _Change, name: str, role: str | None) -> str:
        delegations = change.targets.signed.delegations
        if delegations is not None and delegations.succinct_roles is not None:
            bin_name = delegations.succinct_roles.get_role_for_target(name)
            if role is not None and role != bin_name:
                raise InputError(f"{name} belongs in hashed bin {bin_name}, not {role}")
            return bin_name
        if role is None or role == "targets":
            return "targets"
        roles = (delegations.roles or {}) if delegations is not None else {}
        delegated = roles.get(role)
        if delegated is None:
            raise InputError(f"no delegated role {role!r} (create it with `sealift repo delegate`)")
        if not delegated.is_delegated_path(name):
            raise InputError(f"role {role} may sign {', '.join(delegated.paths or [])}, not {name}")
        # devices walk delegations in order and stop at the first terminating role that matches
        first = next(r for r in roles.values() if r.is_delegated_path(name))
        if first.name != role:
            raise InputError(f"role {first.name}, delegated before {role}, also matches {name}: devices would never look in {role}")
        return role

    def _targets_of(self, change: _Change, role: str) -> Metadata[Targets]:
        if role == "targets":
            return change.targets
        if role not in change.delegated:
            meta = change.snapshot.signed.meta.get(f"{role}.json")
            if meta is None:
                raise InputError(f"{self.metadata}: the snapshot names no {role} metadata")
            change.delegated[role] = self._load(_file_name(role, meta.version), Targets)
        return change.delegated[role]

    def _mark_changed(self, change: _Change, role: str) -> None:
        if role == "targets":
            change.targets_changed = True
        else:
            change.delegated_changed.add(role)

    def _check_newest(self, change: _Change, name: str, version: str, *, force: bool) -> None:
        prefix = name.removesuffix(version)
        published = [n.removeprefix(prefix) for md in self._all_targets(change) for n in md.signed.targets
                     if n.startswith(prefix) and "/" not in n.removeprefix(prefix)]
        newer = [v for v in published if version_key(v) > version_key(version)]
        if newer and not force:
            newest = max(newer, key=version_key)
            raise InputError(f"{prefix}{version} is older than published {newest} (use --force to add it anyway)")

    def _all_targets(self, change: _Change) -> list[Metadata[Targets]]:
        delegations = change.targets.signed.delegations
        roles: list[str] = []
        if delegations is not None:
            roles = list(delegations.succinct_roles.get_roles()) if delegations.succinct_roles else list(delegations.roles or {})
        return [change.targets, *(self._targets_of(change, r) for r in roles)]

    # -- signing and writing -------------------------------------------------------------------

    def _publish_first(self, targets: Metadata[Targets], root_md: Metadata[Root], policy: Policy,
                       bins: dict[str, Metadata[Targets]]) -> None:
        root = root_md.signed
        snapshot = Metadata(Snapshot(expires=self.now()))
        writes: list[tuple[Metadata[Any], str]] = [(root_md, "1.root.json"), (root_md, "root.json")]
        writes += [self._sign_targets(md, targets.signed, name, policy, snapshot.signed) for name, md in bins.items()]
        writes.append(self._sign_targets(targets, root, "targets", policy, snapshot.signed))
        writes += self._sign_snapshot_and_timestamp(snapshot, Metadata(Timestamp(expires=self.now())), root, policy, first=True)
        for md, name in writes:
            self._write(md, name)

    def _commit(self, change: _Change, *, renew: bool = True) -> None:
        """Re-sign what changed (and, with ``renew``, what would soon expire), then a snapshot naming it
        all, then a timestamp naming the snapshot. Every signature is made before any file is written,
        so a missing key leaves the repository as it was."""
        if renew:
            self._add_expiring(change)
        writes: list[tuple[Metadata[Any], str]] = []
        if change.new_root is not None:
            writes += [(change.new_root, f"{change.root.version}.root.json"), (change.new_root, "root.json")]
        snapshot = change.snapshot
        for name in sorted(change.delegated_changed | change.created):
            md = change.delegated[name]
            if name not in change.created:
                md.signed.version += 1
            writes.append(self._sign_targets(md, change.targets.signed, name, change.policy, snapshot.signed))
        if change.targets_changed:
            change.targets.signed.version += 1
            writes.append(self._sign_targets(change.targets, change.root, "targets", change.policy, snapshot.signed))
        writes += self._sign_snapshot_and_timestamp(snapshot, change.timestamp, change.root, change.policy, first=False)
        for md, name in writes:
            self._write(md, name)

    def _add_expiring(self, change: _Change) -> None:
        """Targets metadata past half its validity is re-signed with the rest: a role nobody
        touched must not expire under the devices that walk it."""
        horizon = self.now() + dt.timedelta(days=change.policy.roles["targets"].expiry_days / 2)
        if change.targets.signed.expires < horizon:
            change.targets_changed = True
        for role in _roles_for(change.targets.signed, None):
            if role not in change.created and self._targets_of(change, role).signed.expires < horizon:
                change.delegated_changed.add(role)

    def _sign_targets(self, md: Metadata[Targets], delegator: Root | Targets, role: str, policy: Policy,
                      snapshot: Snapshot) -> tuple[Metadata[Any], str]:
        md.signed.expires = self._expiry(policy, "targets")
        self._sign(md, delegator, role)
        snapshot.meta[f"{role}.json"] = MetaFile(version=md.signed.version)
        return md, _file_name(role, md.signed.version)

    def _sign_snapshot_and_timestamp(self, snapshot: Metadata[Snapshot], timestamp: Metadata[Timestamp], root: Root,
                                     policy: Policy, *, first: bool) -> list[tuple[Metadata[Any], str]]:
        if not first:
            snapshot.signed.version += 1
            timestamp.signed.version += 1
        snapshot.signed.expires = self._expiry(policy, "snapshot")
        self._sign(snapshot, root, "snapshot")
        timestamp.signed.snapshot_meta = MetaFile(version=snapshot.signed.version)
        timestamp.signed.expires = self._expiry(policy, "timestamp")
        self._sign(timestamp, root, "timestamp")
        return [(snapshot, f"{snapshot.signed.version}.snapshot.json"), (timestamp, "timestamp.json")]

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
                raise InputError(f"root version {current.version}: not enough signatures from the {which} root keys") from e

    def _sign(self, md: Metadata[Any], delegator: Root | Targets, role: str) -> None:
        md.signatures.clear()
        delegated = delegator.get_delegated_role(role)
        for signer in self.keys.signers(delegated.keyids):
            md.sign(signer, append=True)
        try:
            delegator.verify_delegate(role, md.signed_bytes, md.signatures)
        except UnsignedMetadataError as e:
            have = len(md.signatures)
            why = [self.keys.unreachable[k] for k in delegated.keyids if k in self.keys.unreachable]
            raise InputError(
                f"role {role}: {have} of the {delegated.threshold} signatures needed "
                f"(the key directory reaches {have} of its {len(delegated.keyids)} keys{'; ' + why[0] if why else ''})"
            ) from e

    def _expiry(self, policy: Policy, role: str) -> dt.datetime:
        return (self.now() + dt.timedelta(days=policy.roles[role].expiry_days)).replace(microsecond=0)

    def _policy(self) -> Policy:
        path = self.directory / _POLICY_FILE
        try:
            data = json.loads(path.read_text())
            return Policy(algorithm=data["algorithm"], roles={r: RolePolicy(**p) for r, p in data["roles"].items()})
        except FileNotFoundError as e:
            raise InputError(f"{self.directory}: not a Sealift repository ({_POLICY_FILE} is missing)") from e
        except (ValueError, KeyError, TypeError) as e:
            raise InputError(f"{path}: malformed policy ({e})") from e

    def _load(self, name: str, kind: type[T]) -> Metadata[T]:
        path = self.metadata / name
        try:
            md = Metadata.from_bytes(path.read_bytes())
        except FileNotFoundError as e:
            raise InputError(f"{path}: missing; is {self.directory} a repository (sealift repo init)?") from e
        except DeserializationError as e:
            raise InputError(f"{path}: not valid TUF metadata ({e})") from e
        if not isinstance(md.signed, kind):
            raise InputError(f"{path}: holds {md.signed.type} metadata, expected {kind.type}")
        return md

    def _write(self, md: Metadata[Any], name: str) -> None:
        replace_file(self.metadata / name, md.to_bytes(_SERIALIZER))


def _roles_for(targets: Targets, target: str | None) -> list[str]:
    """The delegated roles a device walks to find ``target`` (every one when ``target`` is None)."""
    delegations = targets.delegations
    if delegations is None:
        return []
    if delegations.succinct_roles is not None:
        if target is None:
            return list(delegations.succinct_roles.get_roles())
        return [delegations.succinct_roles.get_role_for_target(target)]
    return [name for name, role in (delegations.roles or {}).items() if target is None or role.is_delegated_path(target)]


def _file_name(role: str, version: int) -> str:
    """A delegated role's metadata file, ``VERSION.ROLE.json`` with ROLE percent-encoded as ngclient
    names it (a role may be called anything, a file may not)."""
    return f"{version}.{quote(role, safe='')}.json"
