"""Site overlays on removable media, and what a device takes from what it is offered: the newest
bundle for its profile and the newest overlay for its site, a rotation when the bundle is the
running one, the running overlay carried when the offered one is not newer; and a watched
directory that does not try again what was refused."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner

from bundler.build import BuildOptions, build_bundles, select_profiles
from bundler.cli import cli as sealift
from bundler.devices import Inventory
from bundler.export import export
from bundler.overlay import build_overlay
from bundler.spec import load_spec
from tests.builders import offer_of, only_app, project, signed, take
from tests.envelope import result_of
from tests.fakes import NoEngine
from updater.apps import Apps
from updater.daemon import Daemon
from updater.errors import Conflict, ContentMismatch, DeliveryError, DeviceFault, InputError, Refused, SealiftError
from updater.identity import DeviceIdentity
from updater.medium import check_medium
from updater.overlay import check_overlay
from updater.plan import Candidate, Offer, Plan, plan
from updater.profiles import builtin_profile_dir, load_profiles
from updater.slots import DeviceState, Release
from updater.store import BundleStore
from updater.trust import TrustedState

PROFILES = load_profiles([builtin_profile_dir()])
CPU, ORIN = PROFILES["x86_64-cpu"], PROFILES["jetson-orin"]


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """demo 1.2.0 for x86_64-cpu, and overlays for plant-7 (1.0.0 and 1.1.0; 2.0.0 fits only demo 2 and later) and
    plant-9 (1.0.0), all signed."""
    root = tmp_path_factory.mktemp("shipped")
    spec_path = project(root / "src")
    spec = load_spec(spec_path)
    (bundle,) = build_bundles(spec, select_profiles(spec, PROFILES, ("x86_64-cpu",)), BuildOptions(out=root / "out", epoch=0))
    (root / "src/sites").mkdir()
    built = {"bundle": bundle.path}
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DEMO_API_TOKEN", "tok-on-a-stick-5e1d")
        for site, version in (("plant-7", "1.0.0"), ("plant-7", "1.1.0"), ("plant-7", "2.0.0"), ("plant-9", "1.0.0")):
            if not (root / site).exists():
                record = DeviceIdentity(root / site).enroll(site=site, profile="x86_64-cpu")
                (root / f"{site}.json").write_text(json.dumps(record))
                Inventory(root / "devices.yaml").add(root / f"{site}.json")
            (root / f"src/sites/{site}.yaml").write_text(f"version: {version}\n" + ("fits: '>=2.0.0'\n" if version == "2.0.0" else ""))
            built[f"{site}-{version}"], _ = build_overlay(spec, site, inventory=root / "devices.yaml", out=root / f"o-{version}")
    built["root"] = signed(list(built.values()), root / "signing")
    return built


def test_a_medium_carries_a_bundle_and_site_overlays_and_a_device_takes_its_own(shipped: dict[str, Path], tmp_path: Path) -> None:
    medium = tmp_path / "stick"
    report = export([shipped["bundle"], shipped["plant-7-1.1.0"], shipped["plant-9-1.0.0"]], medium)
    assert [(o.site, o.version) for o in report.overlays] == [("plant-7", "1.1.0"), ("plant-9", "1.0.0")]
    assert check_medium(medium).problems == []
    note = (medium / "README.txt").read_text()
    assert "demo overlay 1.1.0 for site plant-7" in note
    result = CliRunner().invoke(sealift, ["verify", str(medium), "--trusted-root", str(shipped["root"]), "--json"])
    assert result.exit_code == 0, result.output
    expires = result_of(result.stdout)[0]["metadata_expires"]
    role, soonest = min(expires.items(), key=lambda item: item[1])
    assert set(expires) == {"root", "targets", "snapshot", "timestamp"}
    assert f"Its signed metadata expires on {soonest} ({role}): a device refuses it after that." in note
    inspected = CliRunner().invoke(sealift, ["inspect", str(shipped["bundle"]), "--json"])
    assert result_of(inspected.stdout)["metadata_expires"] == expires
    assert [o["site"] for o in result_of(result.stdout)[0]["overlays"]] == ["plant-7", "plant-9"]

    seven, nine = (check_overlay(shipped[k]) for k in ("plant-7-1.1.0", "plant-9-1.0.0"))
    bundle = offer_of(shipped["bundle"], CPU, None).bundle
    assert bundle is not None and (bundle.name, bundle.version) == ("demo", "1.2.0")
    as_offered = Candidate(digest=seven.digest, name="demo", version="1.1.0", fits=seven.fits)
    assert offer_of(medium, CPU, "plant-7") == Offer(bundle=bundle, overlays=(as_offered,))
    assert [o.digest for o in offer_of(medium, CPU, "plant-9").overlays] == [nine.digest]
    assert offer_of(medium, CPU, "plant-3") == Offer(bundle=bundle)  # no overlay for its site: the bundle alone
    assert offer_of(medium, ORIN, "plant-7") == Offer(overlays=(as_offered,))  # its site's overlay only
    with pytest.raises(Refused, match="holds no bundle for profile jetson-orin"):
        offer_of(medium, ORIN, "plant-3")
    assert offer_of(shipped["plant-7-1.1.0"], CPU, "plant-7") == Offer(overlays=(as_offered,))  # an overlay on its own
    with pytest.raises(Refused, match="an overlay for site plant-7; this device is at site plant-9"):
        offer_of(shipped["plant-7-1.1.0"], CPU, "plant-9")

    store = BundleStore(tmp_path / "device")
    taken = take(store, medium, CPU, overlay=seven.digest)
    assert check_overlay(taken).digest == seven.digest and (taken / "tuf" / "timestamp.json").is_file()
    with pytest.raises(DeliveryError, match="holds no bundle or overlay sha256:0000"):
        take(store, medium, CPU, overlay="sha256:" + "0" * 64)


def test_an_overlay_only_medium_rotates_and_names_what_it_holds_to_other_sites(shipped: dict[str, Path], tmp_path: Path) -> None:
    export([shipped["plant-7-1.1.0"]], tmp_path / "rotation.tar")
    assert offer_of(tmp_path / "rotation.tar", CPU, "plant-7").bundle is None
    with pytest.raises(Refused, match="holds only overlays, for sites plant-7; this device is at site plant-9"):
        offer_of(tmp_path / "rotation.tar", CPU, "plant-9")
    with pytest.raises(InputError, match="a second overlay of demo for site plant-7"):
        export([shipped["plant-7-1.0.0"], shipped["plant-7-1.1.0"]], tmp_path / "two")


def test_a_damaged_overlay_on_a_medium_fails_its_check(shipped: dict[str, Path], tmp_path: Path) -> None:
    medium = tmp_path / "stick"
    export([shipped["plant-7-1.1.0"]], medium)
    info = check_overlay(shipped["plant-7-1.1.0"])
    layer = next(p for p in (medium / "blobs/sha256").iterdir() if b'"recipients"' in p.read_bytes())  # descriptor or sealed set
    layer.unlink()
    (problem,) = [p for p in check_medium(medium).problems if "overlay" in p]
    assert problem.startswith(f"demo overlay {info.version} (site plant-7): blob sha256:{layer.name} is missing")


def test_a_medium_listing_that_names_a_bundle_otherwise_than_its_signed_index_fails_its_check(shipped: dict[str, Path],
                                                                                               tmp_path: Path) -> None:
    """The listing lies outside every signed digest: what it says is checked against the indexes it names."""
    medium = tmp_path / "stick"
    export([shipped["plant-7-1.1.0"]], medium)
    listing = json.loads((medium / "sealift-medium.json").read_text())
    listing["overlays"][0]["site"] = "plant-9"
    (medium / "sealift-medium.json").write_text(json.dumps(listing))
    sums = (medium / "SHA256SUMS").read_text().splitlines()
    fixed = [f"{hashlib.sha256((medium / 'sealift-medium.json').read_bytes()).hexdigest()}  sealift-medium.json"
             if line.endswith("  sealift-medium.json") else line for line in sums]
    (medium / "SHA256SUMS").write_text("\n".join(fixed) + "\n")  # as a forger would
    (problem,) = check_medium(medium).problems
    assert problem.endswith("sealift-medium.json says dev.sealift.site is 'plant-9', its index says 'plant-7'")


RUNNING = Release(name="demo", version="1.2.0", profile="x86_64-cpu", digest="sha256:a1", slot="a", overlay="1.1.0",
                  overlay_digest="sha256:o11")
RUNNING_OVERLAY = {"name": "demo", "version": "1.1.0", "fits": ">=1.0.0 <2.0.0"}


def bundle(digest: str, version: str) -> Candidate:
    return Candidate(digest=digest, name="demo", version=version)


def overlay(digest: str, version: str, fits: str = "") -> Candidate:
    return Candidate(digest=digest, name="demo", version=version, fits=fits)


@pytest.mark.parametrize(("offered", "choice", "key"), [
    # the running release and overlay again: nothing new
    (Offer(bundle=bundle("sha256:a1", "1.2.0"), overlays=(overlay("sha256:o11", "1.1.0"),)), Plan(None, None), "sha256:a1+sha256:o11"),
    # the running release with a newer overlay: a rotation
    (Offer(bundle=bundle("sha256:a1", "1.2.0"), overlays=(overlay("sha256:o12", "1.2.0"),)), Plan(None, "sha256:o12"),
     "sha256:a1+sha256:o12"),
    # a newer release with an older overlay: the running overlay is carried
    (Offer(bundle=bundle("sha256:a2", "1.3.0"), overlays=(overlay("sha256:o10", "1.0.0"),)), Plan("sha256:a2", None),
     "sha256:a2+sha256:o11"),
    # the newest overlay that fits the new release, not the newest one
    (Offer(bundle=bundle("sha256:a2", "1.3.0"), overlays=(overlay("sha256:o13", "1.3.0", "<1.3.0"), overlay("sha256:o12", "1.2.0"))),
     Plan("sha256:a2", "sha256:o12"), "sha256:a2+sha256:o12"),
    # an older release on a stick with a newer overlay: the overlay alone, for what runs
    (Offer(bundle=bundle("sha256:a0", "1.0.0"), overlays=(overlay("sha256:o12", "1.2.0"),)), Plan(None, "sha256:o12"),
     "sha256:a1+sha256:o12"),
    (Offer(overlays=(overlay("sha256:o12", "1.2.0"),)), Plan(None, "sha256:o12"), "sha256:a1+sha256:o12"),
    (Offer(overlays=(overlay("sha256:o12", "1.2.0", ">=2.0.0"),)), Plan(None, None), "sha256:a1+sha256:o11"),  # fits not 1.2.0
    (Offer(bundle=bundle("sha256:a2", "1.3.0")), Plan("sha256:a2", None), "sha256:a2+sha256:o11"),
    # another build of the running version is news; another build of the running overlay's version is not
    (Offer(bundle=bundle("sha256:a1b", "1.2.0")), Plan("sha256:a1b", None), "sha256:a1b+sha256:o11"),
    (Offer(overlays=(overlay("sha256:o11b", "1.1.0"),)), Plan(None, None), "sha256:a1+sha256:o11"),
])
def test_a_device_takes_what_is_news_to_it(offered: Offer, choice: Plan, key: str) -> None:
    state = DeviceState(current=RUNNING)
    assert plan(state, offered, RUNNING_OVERLAY) == choice and choice.key(state) == key


def test_a_release_neither_the_running_overlay_nor_an_offered_one_fits_is_refused_before_anything_is_copied() -> None:
    state = DeviceState(current=RUNNING)
    offered = Offer(bundle=bundle("sha256:a3", "2.0.0"), overlays=(overlay("sha256:o12", "1.2.0", "<2.0.0"),))
    with pytest.raises(Refused, match=r"demo 2\.0\.0 does not fit the running site overlay 1\.1\.0 \(>=1\.0\.0 <2\.0\.0\)"):
        plan(state, offered, RUNNING_OVERLAY)
    fitting = Offer(bundle=offered.bundle, overlays=(*offered.overlays, overlay("sha256:o20", "2.0.0", ">=2.0.0")))
    assert plan(state, fitting, RUNNING_OVERLAY) == Plan("sha256:a3", "sha256:o20")
    other_app = Offer(bundle=Candidate(digest="sha256:x1", name="other", version="0.1.0"), overlays=fitting.overlays)
    with pytest.raises(Refused, match=r"other 0\.1\.0 does not fit the running site overlay"):  # demo's overlays are not its
        plan(state, other_app, RUNNING_OVERLAY)


def test_with_nothing_running_an_overlay_alone_has_nothing_to_apply_to() -> None:
    nothing = DeviceState()
    assert plan(nothing, Offer(bundle=bundle("sha256:a2", "1.3.0"), overlays=(overlay("sha256:o1", "1.0.0"),))).key(nothing) == \
        "sha256:a2+sha256:o1"
    with pytest.raises(Conflict, match="needs a running release"):
        plan(nothing, Offer(overlays=(overlay("sha256:o1", "1.0.0"),)))


class _Installer:
    """The part of updater.install.Installer a daemon's scan uses: it refuses every install with ``error``."""

    def __init__(self, state_dir: Path, error: Exception) -> None:
        self.apps = Apps(state_dir)
        self.identity = DeviceIdentity(state_dir)  # not enrolled: no reports to write
        self.trust = TrustedState(state_dir)  # not provisioned: a medium's metadata waits for an install
        self.profile = CPU
        self.declared: frozenset[str] = frozenset()
        self.error = error
        self.tried = 0

    def site(self) -> str | None:
        return "plant-7"

    def app(self, name: str) -> Any:
        return SimpleNamespace(slots=self.apps.slots(name), running_overlay=lambda state: None)

    def install(self, bundle: Path, *, app: str | None = None) -> Any:
        self.tried += 1
        raise self.error


@pytest.mark.parametrize(("error", "tries"), [
    (Refused("signed metadata refused"), 1),  # the same bytes would be refused again: not checked on every pass
    (Refused("not sealed to this device"), 1),
    (Refused("a delta on 1.1.0, which this device does not have"), 1),
    (DeviceFault("the device clock reads 2020-01-01"), 3),  # fixed by fixing the clock: tried again
    (DeviceFault("cannot record the verified state (No space left on device)"), 3),  # fixed by freeing space
    (Conflict("another sealift-updater is installing; nothing was changed"), 3),
    (DeliveryError("the medium was unplugged while it was read"), 3),  # an outage is no refusal: tried again
])
def test_a_watched_directory_does_not_try_again_what_will_not_verify(shipped: dict[str, Path], tmp_path: Path,
                                                                      error: SealiftError, tries: int) -> None:
    watch = tmp_path / "watch"
    export([shipped["bundle"], shipped["plant-7-1.1.0"]], watch / "stick")
    installer = _Installer(tmp_path / "device", error)
    lines: list[str] = []
    daemon = Daemon(installer, watch, interval=1, log=lines.append)  # type: ignore[arg-type]
    for _ in range(3):
        daemon.scan()
    assert installer.tried == tries
    assert sum(f'fault="{error.fault}"' in line for line in lines) == tries
    assert all(('event="refused"' in line) == (error.fault == "refused") for line in lines if "fault=" in line)


def test_a_medium_refused_while_it_was_being_copied_is_tried_again_once_the_copy_ends(shipped: dict[str, Path],
                                                                                     tmp_path: Path) -> None:
    watch = tmp_path / "watch"
    export([shipped["bundle"]], watch / "stick")
    blob = max((watch / "stick/blobs/sha256").iterdir(), key=lambda p: p.stat().st_size)
    whole = blob.read_bytes()
    blob.write_bytes(whole[: len(whole) // 2])  # the copy is not done yet
    installer = _Installer(tmp_path / "device", ContentMismatch("a blob does not match its digest"))
    daemon = Daemon(installer, watch, interval=1, log=lambda _: None)  # type: ignore[arg-type]
    daemon.scan()
    daemon.scan()
    assert installer.tried == 1  # the same half-copied files: not tried again
    blob.write_bytes(whole)  # the copy ends
    daemon.scan()
    assert installer.tried == 2


@pytest.mark.parametrize("damage", [
    lambda m: m.update(bundles=[{**m["bundles"][0], "version": "latest"}]),
    lambda m: m.update(overlays=[{**m["overlays"][0], "fits": "around 1.0"}]),
])
def test_a_medium_with_a_malformed_version_or_range_is_skipped_and_the_service_goes_on(
        shipped: dict[str, Path], tmp_path: Path, damage) -> None:  # type: ignore[no-untyped-def]
    watch = tmp_path / "watch"
    export([shipped["bundle"], shipped["plant-7-1.1.0"]], watch / "stick")
    manifest = json.loads((watch / "stick/sealift-medium.json").read_text())
    damage(manifest)
    (watch / "stick/sealift-medium.json").write_text(json.dumps(manifest))
    with pytest.raises(Refused, match=r"sealift-medium\.json: malformed"):
        offer_of(watch / "stick", CPU, "plant-7")
    installer = _Installer(tmp_path / "device", Refused("never reached"))
    assert Daemon(installer, watch, interval=1, log=lambda _: None).scan() == 0  # type: ignore[arg-type]


def test_the_device_verifies_a_medium_or_an_overlay_as_an_install_would_take_it(shipped: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    from updater.cli import cli as updater_cli
    from updater.trust import TrustedState

    state = tmp_path / "device"
    shutil.copytree(shipped["bundle"].parents[1] / "plant-7" / "identity", state / "identity")  # the device enrolled at plant-7
    TrustedState(state).init(shipped["root"])
    export([shipped["bundle"], shipped["plant-7-1.1.0"], shipped["plant-9-1.0.0"]], tmp_path / "stick")
    export([shipped["plant-9-1.0.0"]], tmp_path / "other-site")

    def verify(path: Path) -> tuple[int, str]:
        result = CliRunner().invoke(updater_cli, ["--state-dir", str(state), "verify", str(path), "--profile", "x86_64-cpu",
                                                  "--json"])
        return result.exit_code, result.stdout if result.exit_code == 0 else result.stderr

    code, out = verify(shipped["plant-7-1.0.0"])
    assert code == 0 and result_of(out)["overlay"]["version"] == "1.0.0"
    code, out = verify(tmp_path / "stick")
    assert code == 0, out
    found = result_of(out)
    assert (found["name"], found["version"], found["overlay"]["site"], found["overlay"]["version"]) == ("demo", "1.2.0", "plant-7", "1.1.0")
    assert "tok-on-a-stick" not in out  # the key opens the secrets; their values are not shown
    code, err = verify(shipped["plant-7-1.0.0"])  # what verifies is accepted, as by an install: no going back
    assert code == Refused.exit_code and "overlay demo 1.0.0 for site plant-7 is older than 1.1.0" in err
    code, err = verify(shipped["plant-9-1.0.0"])
    assert code == Refused.exit_code and "an overlay for site plant-9, this device is enrolled at plant-7" in err
    code, err = verify(tmp_path / "other-site")
    assert code == Refused.exit_code and "holds only overlays, for sites plant-9; this device is at site plant-7" in err


def test_an_overlay_that_does_not_fit_is_refused_before_the_release_counts_as_accepted(shipped: dict[str, Path],
                                                                                      tmp_path: Path) -> None:
    import shutil

    from updater.install import Installer
    from updater.trust import TrustedState

    state = tmp_path / "device"
    shutil.copytree(shipped["bundle"].parents[1] / "plant-7" / "identity", state / "identity")
    TrustedState(state).init(shipped["root"])
    installer = Installer(state_dir=state, runtime=NoEngine(), profile=CPU)  # refused before the engine is needed
    with pytest.raises(Refused, match=r"overlay 2\.0\.0 fits demo >=2\.0\.0, not 1\.2\.0"):
        installer.install(shipped["bundle"], overlay=shipped["plant-7-2.0.0"])
    installer.trust.check_version("demo", "x86_64-cpu", "1.0.0")  # 1.2.0 was not accepted: an older one is still no rollback
    assert only_app(installer.state_dir).load().current is None
