"""Signing with `sealift repo` and verifying offline on a device: each attack refused with its own
error, and the device's trusted state left exactly as it was."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from tuf.api.metadata import Metadata, Targets

from bundler.build import BuildOptions, build_bundles, select_profiles
from bundler.keys import Keyring
from bundler.policy import Policy, RolePolicy
from bundler.repo import Repository
from bundler.spec import load_spec
from tests.builders import project
from updater.errors import DeviceFault, InputError, Refused
from updater.profiles import builtin_profile_dir, load_profiles
from updater.trust import TrustedState
from updater.verify import verify_for_device

PROFILES = load_profiles([builtin_profile_dir()])
CPU = PROFILES["x86_64-cpu"]


@pytest.fixture(scope="module")
def unsigned(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Unsigned bundles of versions 1.1.0, 1.2.0 and 1.3.0 for x86_64-cpu, plus 1.2.0 for NVIDIA."""
    root = tmp_path_factory.mktemp("unsigned")
    spec_path = project(root / "src")
    built: dict[str, Path] = {}
    for version in ("1.1.0", "1.2.0", "1.3.0"):
        spec_path.write_text(spec_path.read_text().replace("version: 1.2.0", f"version: {version}").replace(
            "version: 1.1.0", f"version: {version}").replace("version: 1.3.0", f"version: {version}"))
        spec = load_spec(spec_path)
        profiles = select_profiles(spec, PROFILES, ("x86_64-cpu", "x86_64-nvidia") if version == "1.2.0" else ("x86_64-cpu",))
        for b in build_bundles(spec, profiles, BuildOptions(out=root / "out", epoch=1_700_000_000)):
            built[f"{version}-{b.profile}"] = b.path
    return built


class Setup:
    """A repository, its bundles (fresh copies), and a device provisioned with its first root."""

    def __init__(self, tmp: Path, unsigned: dict[str, Path], *, policy: Policy | None = None,
                 now: Callable[[], dt.datetime] | None = None, hashed_bins: int = 0) -> None:
        self.tmp = tmp
        self.keys = Keyring(tmp / "keys", passphrase=lambda: "test passphrase")
        self.repo = Repository(tmp / "repo", self.keys, now=now)
        self.repo.init(policy or Policy(), hashed_bins=hashed_bins)
        self.bundles = {}
        for name, path in unsigned.items():
            self.bundles[name] = tmp / "bundles" / path.name
            shutil.copytree(path, self.bundles[name])
        self.device = TrustedState(tmp / "state")
        self.device.init(tmp / "repo/metadata/1.root.json")

    def sign(self, *names: str) -> None:
        self.repo.add([self.bundles[n] for n in names])

    def verify(self, name: str, profile: str = "x86_64-cpu") -> str:
        return verify_for_device(self.bundles[name], trust=self.device, profile=PROFILES[profile]).version

    def state(self) -> dict[str, bytes]:
        """Every file of the device's state, links followed: what 'unchanged' is checked against."""
        found = {}
        for directory, _, files in os.walk(self.device.state_dir):
            for name in files:
                path = Path(directory, name)
                key = str(path.relative_to(self.device.state_dir))
                found[key] = os.readlink(path).encode() if path.is_symlink() else path.read_bytes()
        found["trust (link)"] = os.readlink(self.device.state_dir / "trust").encode()
        return found

    def accepted(self) -> dict[str, bytes]:
        """What the device has accepted to install, and what else its state holds but TUF metadata (which
        is kept once verified, whatever is refused after it)."""
        named = {re.sub(r"^trust-[0-9a-f]+/", "trust/", k): v for k, v in self.state().items()}
        return {k: v for k, v in named.items() if k.startswith("trust/sealift/") or not k.startswith("trust")}

    def refused(self, name: str, error: type[Exception], match: str, profile: str = "x86_64-cpu", *,
                metadata_kept: bool = False) -> None:
        before, metadata = self.accepted(), self.state()
        with pytest.raises(error, match=match) as caught:
            self.verify(name, profile)
        assert "\n" not in str(caught.value)
        assert self.accepted() == before, "a refused bundle changed what the device accepted"
        if not metadata_kept:
            assert self.state() == metadata, "metadata that failed verification changed the device's trusted state"

    def tuf(self, name: str) -> Path:
        return self.bundles[name] / "tuf"


@pytest.fixture
def setup(tmp_path: Path, unsigned: dict[str, Path]) -> Setup:
    return Setup(tmp_path, unsigned)


def test_signed_bundle_verifies_offline_and_the_device_remembers(setup: Setup) -> None:
    setup.sign("1.2.0-x86_64-cpu")
    before = setup.state()
    assert setup.verify("1.2.0-x86_64-cpu") == "1.2.0"
    after = setup.state()
    assert after != before  # the device now trusts timestamp, snapshot and targets too
    assert any(name.endswith("timestamp.json") for name in after)
    assert json.loads((setup.device.state_dir / "trust/sealift/versions.json").read_text()) == {"demo/x86_64-cpu": "1.2.0"}


def test_unsigned_bundle_and_unprovisioned_device(setup: Setup, tmp_path: Path) -> None:
    setup.refused("1.2.0-x86_64-cpu", Refused, "carries no signed metadata")
    setup.sign("1.2.0-x86_64-cpu")
    with pytest.raises(DeviceFault, match="no trusted root"):
        verify_for_device(setup.bundles["1.2.0-x86_64-cpu"], trust=TrustedState(tmp_path / "blank"), profile=CPU)


def test_tampered_blob(setup: Setup) -> None:
    setup.sign("1.2.0-x86_64-cpu")
    blob = next(p for p in (setup.bundles["1.2.0-x86_64-cpu"] / "blobs/sha256").iterdir() if p.stat().st_size > 1000)
    data = bytearray(blob.read_bytes())
    data[100] ^= 1
    blob.write_bytes(bytes(data))
    setup.refused("1.2.0-x86_64-cpu", Refused, "is corrupt", metadata_kept=True)


def test_tampered_index(setup: Setup) -> None:
    """A forged top index (another payload) under a fresh digest: not the index the repository signed."""
    setup.sign("1.2.0-x86_64-cpu")
    bundle = setup.bundles["1.2.0-x86_64-cpu"]
    layout = json.loads((bundle / "index.json").read_text())
    top_path = bundle / "blobs/sha256" / layout["manifests"][0]["digest"].removeprefix("sha256:")
    forged = top_path.read_bytes().replace(b'"dev.sealift.version":"1.2.0"', b'"dev.sealift.version":"1.2.0" ')
    import hashlib
    digest = hashlib.sha256(forged).hexdigest()
    (bundle / "blobs/sha256" / digest).write_bytes(forged)
    layout["manifests"][0].update(digest=f"sha256:{digest}", size=len(forged))
    (bundle / "index.json").write_text(json.dumps(layout))
    setup.refused("1.2.0-x86_64-cpu", Refused, "is not the one signed as demo/x86_64-cpu/1.2.0", metadata_kept=True)


def test_metadata_signed_by_an_unknown_key(setup: Setup, tmp_path: Path) -> None:
    setup.sign("1.2.0-x86_64-cpu")
    rogue = Keyring(tmp_path / "rogue", passphrase=lambda: "x")
    key = rogue.generate("targets")
    path = next(setup.tuf("1.2.0-x86_64-cpu").glob("*.targets.json"))
    md = Metadata.from_bytes(path.read_bytes())
    md.signatures.clear()
    md.sign(rogue.signers([key.keyid])[0])
    path.write_bytes(md.to_bytes())
    setup.refused("1.2.0-x86_64-cpu", Refused, "not signed by enough trusted keys", metadata_kept=True)


def test_threshold_not_met(tmp_path: Path, unsigned: dict[str, Path]) -> None:
    roles = {**Policy().roles, "targets": RolePolicy(keys=2, threshold=2, expiry_days=30)}
    setup = Setup(tmp_path, unsigned, policy=Policy(roles=roles))
    setup.sign("1.2.0-x86_64-cpu")
    path = next(setup.tuf("1.2.0-x86_64-cpu").glob("*.targets.json"))
    md = Metadata.from_bytes(path.read_bytes())
    assert len(md.signatures) == 2
    md.signatures.popitem()
    path.write_bytes(md.to_bytes())
    setup.refused("1.2.0-x86_64-cpu", Refused, "not signed by enough trusted keys", metadata_kept=True)


def test_older_bundle_version_is_a_rollback(setup: Setup) -> None:
    setup.sign("1.1.0-x86_64-cpu", "1.2.0-x86_64-cpu")
    assert setup.verify("1.2.0-x86_64-cpu") == "1.2.0"
    setup.refused("1.1.0-x86_64-cpu", Refused, "1.1.0 for x86_64-cpu is older than 1.2.0, which this device already accepted")


def test_repository_refuses_to_publish_an_older_version(setup: Setup) -> None:
    setup.sign("1.3.0-x86_64-cpu")
    with pytest.raises(InputError, match=r"older than published 1\.3\.0"):
        setup.sign("1.1.0-x86_64-cpu")
    setup.repo.add([setup.bundles["1.1.0-x86_64-cpu"]], force=True)
    assert setup.repo.add([setup.bundles["1.1.0-x86_64-cpu"]])[0].changed is False  # re-adding changes nothing


def test_older_metadata_is_judged_by_the_newer_metadata_the_device_trusts(setup: Setup, tmp_path: Path) -> None:
    """A bundle may carry older metadata than the device has (signed before something else the device
    installed since): the device's own newer, verified metadata then decides, and a replay gains nothing."""
    setup.sign("1.2.0-x86_64-cpu")
    stale = tmp_path / "stale-tuf"
    shutil.copytree(setup.tuf("1.2.0-x86_64-cpu"), stale)  # timestamp and snapshot version 2
    setup.sign("1.2.0-x86_64-nvidia", "1.3.0-x86_64-cpu")  # the repository moves on: version 3
    assert setup.verify("1.2.0-x86_64-nvidia", profile="x86_64-nvidia") == "1.2.0"  # the device trusts version 3
    shutil.rmtree(setup.tuf("1.2.0-x86_64-cpu"))
    shutil.copytree(stale, setup.tuf("1.2.0-x86_64-cpu"))
    assert setup.verify("1.2.0-x86_64-cpu") == "1.2.0"  # signed in what the device trusts: accepted
    (note,) = setup.device.notes  # and said: the bundle travelled with metadata the device has moved past
    assert "carries timestamp version 2, older than the device's 3; checked against the device's newer metadata" in note
    assert setup.verify("1.3.0-x86_64-cpu") == "1.3.0"
    assert setup.device.notes == []
    setup.refused("1.2.0-x86_64-cpu", Refused, "older than 1.3.0, which this device already accepted")  # no going back


def test_a_bundle_whose_own_old_metadata_lacks_it_is_accepted_through_the_devices_newer_metadata(setup: Setup,
                                                                                                   tmp_path: Path) -> None:
    setup.sign("1.2.0-x86_64-cpu")
    stale = tmp_path / "stale-tuf"
    shutil.copytree(setup.tuf("1.2.0-x86_64-cpu"), stale)  # version 2: does not list 1.3.0
    setup.sign("1.3.0-x86_64-cpu", "1.2.0-x86_64-nvidia")  # version 3 lists both
    assert setup.verify("1.2.0-x86_64-nvidia", profile="x86_64-nvidia") == "1.2.0"
    shutil.rmtree(setup.tuf("1.3.0-x86_64-cpu"))
    shutil.copytree(stale, setup.tuf("1.3.0-x86_64-cpu"))
    assert setup.verify("1.3.0-x86_64-cpu") == "1.3.0"  # only the device's own metadata can vouch for it


def test_a_bundle_signed_nowhere_the_device_trusts_is_refused_whatever_metadata_it_carries(setup: Setup, tmp_path: Path) -> None:
    setup.sign("1.2.0-x86_64-cpu")
    stale = tmp_path / "stale-tuf"
    shutil.copytree(setup.tuf("1.2.0-x86_64-cpu"), stale)
    setup.sign("1.2.0-x86_64-nvidia")
    assert setup.verify("1.2.0-x86_64-nvidia", profile="x86_64-nvidia") == "1.2.0"
    shutil.copytree(stale, setup.tuf("1.1.0-x86_64-cpu"))  # never signed; carries old metadata of another bundle
    setup.refused("1.1.0-x86_64-cpu", Refused, "is not a target signed by the repository")


def test_expired_metadata_is_a_freeze(tmp_path: Path, unsigned: dict[str, Path]) -> None:
    """Metadata signed two days ago with a one-day timestamp: an attacker replaying a frozen view."""
    two_days_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
    roles = {**Policy().roles, "timestamp": RolePolicy(expiry_days=1)}
    setup = Setup(tmp_path, unsigned, policy=Policy(roles=roles), now=lambda: two_days_ago)
    setup.sign("1.2.0-x86_64-cpu")
    setup.refused("1.2.0-x86_64-cpu", Refused,
                  r"expired metadata \(at the office: `sealift repo refresh`, `sealift repo add` the release again for the fresh")


def test_snapshot_and_targets_from_different_moments(setup: Setup, tmp_path: Path) -> None:
    setup.sign("1.2.0-x86_64-cpu")
    old_targets = next(setup.tuf("1.2.0-x86_64-cpu").glob("*.targets.json")).read_bytes()
    setup.sign("1.3.0-x86_64-cpu")
    setup.sign("1.2.0-x86_64-cpu")  # refresh its metadata to the latest moment
    current = next(setup.tuf("1.2.0-x86_64-cpu").glob("*.targets.json"))
    current.write_bytes(old_targets)  # the snapshot names this version, the content is older
    setup.refused("1.2.0-x86_64-cpu", Refused, r"mix-and-match\) \(Expected targets v3, got v2", metadata_kept=True)


def test_oversized_metadata_is_endless_data(setup: Setup) -> None:
    setup.sign("1.2.0-x86_64-cpu")
    timestamp = setup.tuf("1.2.0-x86_64-cpu") / "timestamp.json"
    timestamp.write_bytes(timestamp.read_bytes().rstrip(b"}") + b" " * 20_000 + b"}")
    setup.refused("1.2.0-x86_64-cpu", Refused, "a metadata file larger than allowed")


def test_rotated_out_key_no_longer_signs(setup: Setup) -> None:
    setup.sign("1.2.0-x86_64-cpu")
    assert setup.verify("1.2.0-x86_64-cpu") == "1.2.0"
    old_targets_key = list(json.loads((setup.tmp / "keys/keys.json").read_text()))
    removed = setup.repo.rotate("targets")
    assert set(removed) <= set(old_targets_key)
    setup.sign("1.3.0-x86_64-cpu")
    # the holder of the old targets key signs its own targets metadata into the new bundle
    path = next(setup.tuf("1.3.0-x86_64-cpu").glob("*.targets.json"))
    md = Metadata.from_bytes(path.read_bytes())
    md.signatures.clear()
    old = Keyring(setup.tmp / "keys", passphrase=lambda: "test passphrase")
    md.sign(old.signers(removed)[0])
    path.write_bytes(md.to_bytes())
    setup.refused("1.3.0-x86_64-cpu", Refused, "not signed by enough trusted keys", metadata_kept=True)


def test_rotation_is_followed_by_the_device(setup: Setup) -> None:
    setup.sign("1.2.0-x86_64-cpu")
    setup.repo.rotate("root")
    setup.repo.rotate("timestamp")
    setup.sign("1.3.0-x86_64-cpu")
    assert setup.verify("1.3.0-x86_64-cpu") == "1.3.0"
    trusted = Metadata.from_bytes((setup.device.state_dir / "trust/root.json").read_bytes())
    assert trusted.signed.version == 3


def test_root_chain_with_a_gap(setup: Setup) -> None:
    setup.repo.rotate("timestamp")
    setup.repo.rotate("timestamp")
    setup.sign("1.2.0-x86_64-cpu")
    (setup.tuf("1.2.0-x86_64-cpu") / "2.root.json").unlink()
    setup.refused("1.2.0-x86_64-cpu", Refused,
                  "root chain has a gap: the device trusts root version 1, the bundle carries up to 3 but not 2")


def test_bundle_for_another_profile(setup: Setup) -> None:
    setup.sign("1.2.0-x86_64-nvidia")
    setup.refused("1.2.0-x86_64-nvidia", Refused, "is for profile x86_64-nvidia, this device is x86_64-cpu", metadata_kept=True)


def test_bundle_copied_halfway(setup: Setup, tmp_path: Path, unsigned: dict[str, Path]) -> None:
    spec = load_spec(next(iter(unsigned.values())).parent.parent / "src/sealift.yaml")
    (tar,) = build_bundles(spec, select_profiles(spec, PROFILES, ("x86_64-cpu",)),
                           BuildOptions(out=tmp_path / "tar", format="tar", epoch=1_700_000_000))
    setup.repo.add([tar.path])
    data = tar.path.read_bytes()
    setup.bundles["half"] = tmp_path / "half.tar"
    setup.bundles["half"].write_bytes(data[: len(data) // 2])
    setup.refused("half", Refused, "tar file is truncated")


def test_clock_set_back_is_refused(setup: Setup) -> None:
    setup.sign("1.2.0-x86_64-cpu")
    assert setup.verify("1.2.0-x86_64-cpu") == "1.2.0"
    setup.device.now = lambda: dt.datetime(2001, 1, 1, tzinfo=dt.UTC)
    setup.refused("1.2.0-x86_64-cpu", DeviceFault, "before the newest trusted time")


def test_signing_needs_the_keys(setup: Setup, tmp_path: Path) -> None:
    wrong = Repository(setup.tmp / "repo", Keyring(tmp_path / "empty-keys", passphrase=lambda: "x"))
    with pytest.raises(InputError, match="role targets: 0 of the 1 signatures needed"):
        wrong.add([setup.bundles["1.2.0-x86_64-cpu"]])
    locked = Repository(setup.tmp / "repo", Keyring(setup.tmp / "keys", passphrase=lambda: "not it"))
    with pytest.raises(InputError, match="wrong passphrase"):
        locked.add([setup.bundles["1.2.0-x86_64-cpu"]])
    targets = Metadata.from_bytes(next((setup.tmp / "repo/metadata").glob("1.targets.json")).read_bytes())
    assert isinstance(targets.signed, Targets) and targets.signed.targets == {}


def test_delegated_role_signs_its_own_bundles(setup: Setup) -> None:
    setup.repo.delegate("team-vision", paths=["demo/*/*"])
    setup.repo.add([setup.bundles["1.2.0-x86_64-cpu"]], role="team-vision")
    assert "2.team-vision.json" in {p.name for p in setup.tuf("1.2.0-x86_64-cpu").iterdir()}  # created, then given a target
    top = next(setup.tuf("1.2.0-x86_64-cpu").glob("*.targets.json"))
    assert Metadata.from_bytes(top.read_bytes()).signed.targets == {}  # the top role names no bundle itself
    assert setup.verify("1.2.0-x86_64-cpu") == "1.2.0"


def test_a_role_may_be_called_anything_that_tuf_allows_and_is_followed_under_a_safe_file_name(setup: Setup) -> None:
    name = "Vision Team/Ünits ~ 100%"  # separators, spaces, non-ASCII, '%' and '~': TUF allows them all
    setup.repo.delegate(name, paths=["demo/*/*"])
    setup.repo.add([setup.bundles["1.2.0-x86_64-cpu"]], role=name)
    files = {p.name for p in setup.tuf("1.2.0-x86_64-cpu").iterdir()}
    assert "2.Vision%20Team%2F%C3%9Cnits%20~%20100%25.json" in files  # one file, in the folder, as ngclient names it
    assert not [p for p in (setup.tmp / "keys").rglob("*") if p.is_dir()]  # the key file too: no folder made of the name
    assert setup.verify("1.2.0-x86_64-cpu") == "1.2.0"
    assert (setup.device.state_dir / "trust" / "Vision%20Team%2F%C3%9Cnits%20~%20100%25.json").is_file()


@pytest.mark.parametrize("name", ["é" * 20, "team.root", "x.targets", "root", "bins-3", "tab\there"],
                         ids=["too-long-once-encoded", "ends-as-root", "ends-as-targets", "top-level", "bins", "control"])
def test_role_names_that_could_not_be_shipped_or_would_read_as_another_role_are_refused(setup: Setup, name: str) -> None:
    with pytest.raises(InputError, match="cannot name a delegated role"):
        setup.repo.delegate(name, paths=["demo/*/*"])


def test_a_file_of_a_role_named_like_a_root_never_counts_as_a_root_version(setup: Setup) -> None:
    setup.sign("1.2.0-x86_64-cpu")
    (setup.tuf("1.2.0-x86_64-cpu") / "7.x.root.json").write_text("{}")  # a delegated role's file, not root version 7
    assert setup.verify("1.2.0-x86_64-cpu") == "1.2.0"


def test_a_bundle_signed_by_a_role_that_may_not_sign_its_application_is_refused_by_the_device(
        setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    """A team whose role may sign only other-app's bundles signs demo's anyway (the build side's check
    bypassed, as a rogue or careless signer would): the device follows only delegations whose paths
    match a bundle's application, so it finds no signature for demo."""
    setup.repo.delegate("team-other", paths=["other-app/*/*"])
    monkeypatch.setattr(Repository, "_holder", lambda self, change, name, role: "team-other")
    setup.repo.add([setup.bundles["1.2.0-x86_64-cpu"]], role="team-other")
    monkeypatch.undo()
    setup.refused("1.2.0-x86_64-cpu", Refused, r"demo/x86_64-cpu/1\.2\.0 is not a target signed by the repository",
                  metadata_kept=True)  # the metadata itself is sound: only the bundle is refused


def test_delegated_role_is_limited_to_its_paths(setup: Setup) -> None:
    setup.repo.delegate("site-berlin", paths=["other-app/*/*"])
    with pytest.raises(InputError, match=re.escape("role site-berlin may sign other-app/*/*, not demo/x86_64-cpu/1.2.0")):
        setup.repo.add([setup.bundles["1.2.0-x86_64-cpu"]], role="site-berlin")
    with pytest.raises(InputError, match="no delegated role 'nobody'"):
        setup.repo.add([setup.bundles["1.2.0-x86_64-cpu"]], role="nobody")


def test_delegated_metadata_signed_by_the_delegator_is_refused(setup: Setup) -> None:
    """The targets key may delegate, not sign in the delegate's name."""
    setup.repo.delegate("team-vision", paths=["demo/*/*"])
    setup.repo.add([setup.bundles["1.2.0-x86_64-cpu"]], role="team-vision")
    path = setup.tuf("1.2.0-x86_64-cpu") / "2.team-vision.json"
    md = Metadata.from_bytes(path.read_bytes())
    md.signatures.clear()
    root = Metadata.from_bytes((setup.tmp / "repo/metadata/root.json").read_bytes()).signed
    md.sign(setup.keys.signers(root.roles["targets"].keyids)[0])
    path.write_bytes(md.to_bytes())
    setup.refused("1.2.0-x86_64-cpu", Refused, "not signed by enough trusted keys", metadata_kept=True)


def test_hashed_bins_spread_targets_and_each_bundle_carries_one_bin(tmp_path: Path, unsigned: dict[str, Path]) -> None:
    setup = Setup(tmp_path, unsigned, hashed_bins=4)
    assert len(list((tmp_path / "repo/metadata").glob("1.bins-*.json"))) == 16
    setup.sign("1.2.0-x86_64-cpu", "1.2.0-x86_64-nvidia")
    for name in ("1.2.0-x86_64-cpu", "1.2.0-x86_64-nvidia"):
        carried = [p.name for p in setup.tuf(name).iterdir() if ".bins-" in p.name]
        assert len(carried) == 1, carried
    assert setup.verify("1.2.0-x86_64-cpu") == "1.2.0"
    assert setup.verify("1.2.0-x86_64-nvidia", profile="x86_64-nvidia") == "1.2.0"
    with pytest.raises(InputError, match=r"older than published 1\.2\.0"):
        setup.sign("1.1.0-x86_64-cpu")  # the newest-version check looks across every bin
    with pytest.raises(InputError, match="cannot also have named delegations"):
        setup.repo.delegate("team", paths=["*"])


def test_a_key_behind_any_signer_uri_signs(setup: Setup, tmp_path: Path) -> None:
    """A key Sealift never held (here securesystemslib's plain file signer, standing for a KMS or
    an HSM URI) is trusted for timestamp and signs it once Sealift's own key is gone."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

    from bundler.keys import public_key_from_pem

    private = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "external.pem").write_bytes(private.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    (tmp_path / "external.pub").write_bytes(private.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    key = public_key_from_pem(tmp_path / "external.pub")
    setup.repo.add_key("timestamp", key, f"file2:{tmp_path / 'external.pem'}")
    index = json.loads((setup.tmp / "keys/keys.json").read_text())
    own = [k for k, v in index.items() if v["role"] == "timestamp" and k != key.keyid]
    for keyid in own:
        del index[keyid]  # Sealift's own timestamp key is no longer reachable
    (setup.tmp / "keys/keys.json").write_text(json.dumps(index))
    fresh = Repository(setup.tmp / "repo", Keyring(setup.tmp / "keys", passphrase=lambda: "test passphrase"))
    fresh.add([setup.bundles["1.2.0-x86_64-cpu"]])
    timestamp = Metadata.from_bytes((setup.tuf("1.2.0-x86_64-cpu") / "timestamp.json").read_bytes())
    assert list(timestamp.signatures) == [key.keyid]
    assert setup.verify("1.2.0-x86_64-cpu") == "1.2.0"


def test_sigstore_keyless_signer_is_recorded_for_ci(setup: Setup) -> None:
    """Outside CI the keyless signer cannot sign; the role's other keys still meet its threshold."""
    from securesystemslib.signer import SigstoreSigner

    identity = "https://github.com/acme/ci/.github/workflows/release.yml@refs/heads/main"
    uri, key = SigstoreSigner.import_(identity, "https://token.actions.githubusercontent.com", ambient=True)
    setup.repo.add_key("targets", key, uri)
    root = Metadata.from_bytes((setup.tmp / "repo/metadata/root.json").read_bytes()).signed
    assert root.version == 2 and key.keyid in root.roles["targets"].keyids
    assert json.loads((setup.tmp / "keys/keys.json").read_text())[key.keyid]["uri"] == "sigstore:"
    setup.sign("1.2.0-x86_64-cpu")
    assert setup.verify("1.2.0-x86_64-cpu") == "1.2.0"


# -- the device's state under faults ----------------------------------------------------------


def test_a_failure_while_committing_changes_nothing(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    import updater.trust as trust_module

    setup.sign("1.2.0-x86_64-cpu")
    real_replace = os.replace

    def full_disk(src: object, dst: object) -> None:
        if str(dst).endswith("/trust"):
            raise OSError(28, "No space left on device")
        real_replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(trust_module.os, "replace", full_disk)
    setup.refused("1.2.0-x86_64-cpu", DeviceFault, "cannot record the verified state .No space left on device.; nothing changed")
    monkeypatch.undo()
    assert setup.verify("1.2.0-x86_64-cpu") == "1.2.0"


def test_verifications_are_serialised_and_leftovers_swept(setup: Setup) -> None:
    import fcntl
    import threading

    setup.sign("1.2.0-x86_64-cpu")
    stale = setup.device.state_dir / "trust-0123456789ab"
    stale.mkdir()  # as a killed run leaves it
    entered, release = threading.Event(), threading.Event()

    def hold() -> None:
        with setup.device.candidate():
            entered.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    assert entered.wait(10)
    fd = os.open(setup.device.state_dir / "lock", os.O_RDWR)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        release.set()
        holder.join()
        os.close(fd)
    assert not stale.exists()
    assert setup.verify("1.2.0-x86_64-cpu") == "1.2.0"


def test_a_start_sweeps_what_a_killed_verification_left_unless_one_runs(setup: Setup) -> None:
    import threading

    stale = setup.device.state_dir / "trust-0123456789ab"
    stale.mkdir()  # as a verification killed before it could clean up leaves it
    current = setup.device.current.resolve()
    entered, release = threading.Event(), threading.Event()

    def hold() -> None:
        with setup.device.candidate() as scratch:
            stale.mkdir()  # the candidate swept it; a copy appears again while the lock is held
            entered.set()
            release.wait(10)
            assert scratch.exists()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert entered.wait(10)
        setup.device.sweep()  # a verification runs: its copy and the rest wait for it
        assert stale.exists() and len(list(setup.device.state_dir.glob("trust-*"))) == 3
    finally:
        release.set()
        holder.join()
    setup.device.sweep()
    assert not stale.exists()
    assert [p.name for p in setup.device.state_dir.glob("trust-*")] == [current.name]
    assert setup.device.provisioned()


def test_hostile_root_version_names(setup: Setup) -> None:
    setup.sign("1.2.0-x86_64-cpu")
    (setup.tuf("1.2.0-x86_64-cpu") / "9999999999.root.json").write_text("{}")
    setup.refused("1.2.0-x86_64-cpu", Refused, "carries up to 9999999999 but not 2")
    (setup.tuf("1.2.0-x86_64-cpu") / "9999999999.root.json").unlink()
    (setup.tuf("1.2.0-x86_64-cpu") / "01.root.json").write_text("{}")  # not a metadata name: never read
    assert setup.verify("1.2.0-x86_64-cpu") == "1.2.0"


def test_bundle_changed_between_the_tuf_check_and_the_blob_check(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    import updater.verify as verify_module

    setup.sign("1.2.0-x86_64-cpu", "1.3.0-x86_64-cpu")
    real = verify_module.verify_bundle

    def swapped(artifact: object, **options: bool) -> object:
        return real(setup.bundles["1.3.0-x86_64-cpu"], **options)  # another (valid) bundle now lies at the path

    monkeypatch.setattr(verify_module, "verify_bundle", swapped)
    setup.refused("1.2.0-x86_64-cpu", Refused, "changed while it was verified", metadata_kept=True)


def test_bundle_for_another_compatible_string(setup: Setup, tmp_path: Path) -> None:
    from updater.profiles import load_profiles

    setup.sign("1.2.0-x86_64-cpu")
    (tmp_path / "p").mkdir()
    (tmp_path / "p/x86_64-cpu.yaml").write_text("name: x86_64-cpu\nplatform: {os: linux, architecture: amd64}\ncompatible: acme/cpu-rev2\n")
    rev2 = load_profiles([tmp_path / "p"])["x86_64-cpu"]
    before = setup.accepted()
    with pytest.raises(Refused, match="is compatible with 'sealift/x86_64-cpu', this device needs 'acme/cpu-rev2'"):
        verify_for_device(setup.bundles["1.2.0-x86_64-cpu"], trust=setup.device, profile=rev2)
    assert setup.accepted() == before


def _trusted_version(setup: Setup, role: str) -> int:
    return int(json.loads((setup.device.state_dir / "trust" / f"{role}.json").read_bytes())["signed"]["version"])


def test_metadata_verified_on_the_way_to_a_refusal_is_kept_but_nothing_is_accepted(setup: Setup) -> None:
    """TUF 5.4 to 5.6: each top-level role is kept once verified; the release still counts for nothing."""
    setup.sign("1.2.0-x86_64-cpu")
    assert setup.verify("1.2.0-x86_64-cpu") == "1.2.0"
    setup.sign("1.3.0-x86_64-cpu")  # timestamp, snapshot and targets version 3
    blob = next(p for p in (setup.bundles["1.3.0-x86_64-cpu"] / "blobs/sha256").iterdir() if p.stat().st_size > 1000)
    blob.write_bytes(b"x" + blob.read_bytes()[1:])
    assert _trusted_version(setup, "timestamp") == 2
    setup.refused("1.3.0-x86_64-cpu", Refused, "is corrupt", metadata_kept=True)
    assert (_trusted_version(setup, "timestamp"), _trusted_version(setup, "targets")) == (3, 3)
    assert json.loads((setup.device.state_dir / "trust/sealift/versions.json").read_text()) == {"demo/x86_64-cpu": "1.2.0"}
    assert sorted(p.name for p in setup.device.state_dir.iterdir() if p.name.startswith("trust-")) == [
        os.readlink(setup.device.state_dir / "trust")]  # one trust directory, no copies left


def test_a_newer_root_is_kept_even_when_the_rest_of_the_update_fails(tmp_path: Path, unsigned: dict[str, Path]) -> None:
    """TUF 5.3: a root, once verified, is the trusted root, whatever fails after it (here: metadata
    that expired while the bundle travelled)."""
    two_days_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
    roles = {**Policy().roles, "timestamp": RolePolicy(expiry_days=1)}
    setup = Setup(tmp_path, unsigned, policy=Policy(roles=roles), now=lambda: two_days_ago)
    setup.repo.rotate("root")  # root version 2, signed by the old keys and the new
    setup.sign("1.2.0-x86_64-cpu")  # with a timestamp that expired yesterday
    setup.refused("1.2.0-x86_64-cpu", Refused, "expired metadata", metadata_kept=True)
    assert os.readlink(setup.device.state_dir / "trust" / "root.json").endswith("2.root.json")


def test_a_keyless_signature_never_sends_the_device_online(setup: Setup) -> None:
    """A junk signature by a trusted keyless key must count for nothing, offline, without a traceback."""
    from securesystemslib.signer import Signature, SigstoreSigner

    uri, key = SigstoreSigner.import_("ci@example.com", "https://token.actions.githubusercontent.com", ambient=True)
    setup.repo.add_key("targets", key, uri)
    setup.sign("1.2.0-x86_64-cpu")
    path = next(setup.tuf("1.2.0-x86_64-cpu").glob("*.targets.json"))
    md = Metadata.from_bytes(path.read_bytes())
    md.signatures[key.keyid] = Signature(key.keyid, "00" * 64)
    path.write_bytes(md.to_bytes())
    assert setup.verify("1.2.0-x86_64-cpu") == "1.2.0"


# -- the repository under faults and over time ------------------------------------------------


def test_a_signing_failure_leaves_the_repository_as_it_was(setup: Setup) -> None:
    before = {p.name: p.read_bytes() for p in (setup.tmp / "repo/metadata").iterdir()}
    index = json.loads((setup.tmp / "keys/keys.json").read_text())
    for keyid in [k for k, v in index.items() if v["role"] == "snapshot"]:
        del index[keyid]  # the snapshot key is not reachable today
    (setup.tmp / "keys/keys.json").write_text(json.dumps(index))
    crippled = Repository(setup.tmp / "repo", Keyring(setup.tmp / "keys", passphrase=lambda: "test passphrase"))
    with pytest.raises(InputError, match="role snapshot: 0 of the 1 signatures needed"):
        crippled.add([setup.bundles["1.3.0-x86_64-cpu"]])
    with pytest.raises(InputError, match="role snapshot"):
        crippled.rotate("targets")
    assert {p.name: p.read_bytes() for p in (setup.tmp / "repo/metadata").iterdir()} == before


def test_untouched_roles_are_re_signed_before_they_expire(tmp_path: Path, unsigned: dict[str, Path]) -> None:
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=100)
    clock = {"now": long_ago}
    setup = Setup(tmp_path, unsigned, hashed_bins=2, now=lambda: clock["now"])
    setup.sign("1.1.0-x86_64-cpu")  # 100 days ago: every targets file (90 days) has expired since
    clock["now"] = dt.datetime.now(dt.UTC)
    setup.sign("1.2.0-x86_64-nvidia")
    setup.sign("1.3.0-x86_64-cpu")
    assert setup.verify("1.3.0-x86_64-cpu") == "1.3.0"


def test_repo_refresh_renews_timestamp_and_snapshot(setup: Setup) -> None:
    timestamp = setup.tmp / "repo/metadata/timestamp.json"
    before = Metadata.from_bytes(timestamp.read_bytes()).signed
    setup.repo.refresh()
    after = Metadata.from_bytes(timestamp.read_bytes()).signed
    assert after.version == before.version + 1 and after.snapshot_meta.version == before.snapshot_meta.version + 1


def test_a_delegation_that_devices_would_never_reach_is_refused(setup: Setup) -> None:
    setup.repo.delegate("team-a", paths=["demo/*/*"])
    setup.repo.delegate("site-b", paths=["demo/x86_64-cpu/*"])
    with pytest.raises(InputError, match=re.escape("role team-a, delegated before site-b, also matches demo/x86_64-cpu/1.2.0")):
        setup.repo.add([setup.bundles["1.2.0-x86_64-cpu"]], role="site-b")


def test_keys_inside_the_repository_and_absurd_expiry_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="must not be inside the repository"):
        Repository(tmp_path / "repo", Keyring(tmp_path / "repo/metadata/keys"))
    repo = Repository(tmp_path / "repo", Keyring(tmp_path / "keys", passphrase=lambda: "x"))
    for days in (float("nan"), 1e7, 0.0):
        with pytest.raises(InputError, match="expiry must be over 0"):
            repo.init(Policy(roles={**Policy().roles, "timestamp": RolePolicy(expiry_days=days)}))


def test_a_device_provisioned_with_an_expired_root_starts_from_it_and_takes_the_newer_one(
        tmp_path: Path, unsigned: dict[str, Path]) -> None:
    """TUF 5.2: the trusted root is the starting point whatever its expiry (a device imaged long ago)."""
    clock = [dt.datetime.now(dt.UTC) - dt.timedelta(days=400)]
    setup = Setup(tmp_path, unsigned, now=lambda: clock[0])  # root version 1, expired 35 days ago
    assert setup.device.expired(TrustedState(tmp_path / "other").init(tmp_path / "repo/metadata/1.root.json"))
    setup.sign("1.1.0-x86_64-cpu")  # signed 400 days ago: expired too
    setup.refused("1.1.0-x86_64-cpu", Refused, "expired metadata")
    clock[0] = dt.datetime.now(dt.UTC)
    setup.repo.rotate("root")  # root version 2, valid
    setup.sign("1.2.0-x86_64-cpu")
    assert setup.verify("1.2.0-x86_64-cpu") == "1.2.0"
    assert os.readlink(setup.device.state_dir / "trust" / "root.json").endswith("2.root.json")


def test_a_device_lists_a_profiles_releases_from_what_the_roles_sign_never_from_a_role_that_may_not(
        tmp_path: Path, unsigned: dict[str, Path]) -> None:
    from tests.unit.test_tuf_client import FolderSource
    from updater.tuf_client import TufClient

    setup = Setup(tmp_path, unsigned)
    setup.repo.delegate("vision-team", paths=["demo/*/*"])  # releases signed by a team's role, not the top-level one
    setup.repo.add([setup.bundles[n] for n in ("1.1.0-x86_64-cpu", "1.2.0-x86_64-cpu", "1.2.0-x86_64-nvidia")], role="vision-team")
    with setup.device.candidate() as metadata_dir:
        client = TufClient(metadata_dir, FolderSource(tmp_path / "repo/metadata"))
        client.refresh()
        listed = client.signed_under("demo/x86_64-cpu/")
        assert sorted(listed) == ["demo/x86_64-cpu/1.1.0", "demo/x86_64-cpu/1.2.0"]  # not NVIDIA's, loaded by the walk
        assert listed["demo/x86_64-cpu/1.2.0"] == client.target("demo/x86_64-cpu/1.2.0")
        # a role file planted beside the verified ones proposes a release no role signs: never listed
        planted = Metadata(Targets(expires=dt.datetime(2100, 1, 1, tzinfo=dt.UTC)))
        planted.signed.targets["demo/x86_64-cpu/9.9.9"] = listed["demo/x86_64-cpu/1.2.0"]
        (metadata_dir / "planted.json").write_bytes(planted.to_bytes())
        assert sorted(client.signed_under("demo/x86_64-cpu/")) == ["demo/x86_64-cpu/1.1.0", "demo/x86_64-cpu/1.2.0"]
        assert client.signed_under("demo/x86_64-cpu/", lambda name: name.endswith("1.1.0")).keys() == {"demo/x86_64-cpu/1.1.0"}
