"""Secrets sealed to enrolled devices: HPKE sealing and opening, device enrollment and the fleet
inventory. Each refusal names the secret or the device, never a value."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from bundler.cli import cli as sealift
from bundler.devices import Inventory
from bundler.sealing import Recipient, seal
from tests.envelope import result_of
from updater.cli import cli as updater_cli
from updater.errors import Conflict, DeviceFault, InputError, Refused
from updater.identity import DeviceIdentity
from updater.sealed import DeviceKey, Identity, device_id, open_sealed

TOKEN = b"tok-3f9a1c77e2-not-for-logs"
IDENTITY = Identity(app="vision-app", site="plant-7", version="3")


def recipient(key: DeviceKey) -> Recipient:
    return Recipient(device=device_id(key.kem, key.public_bytes()), kem=key.kem, public_key=key.public_bytes())


@pytest.fixture(scope="module")
def keys() -> dict[str, DeviceKey]:
    return {"a": DeviceKey.generate("x25519"), "b": DeviceKey.generate("mlkem768-x25519"), "c": DeviceKey.generate("x25519")}


def test_every_recipient_opens_the_set_and_only_ciphertext_is_written(keys: dict[str, DeviceKey]) -> None:
    secrets = {"api-token": TOKEN, "mqtt-password": b"hunter2-but-longer"}
    sealed = seal(secrets, IDENTITY, [recipient(keys["a"]), recipient(keys["b"])])
    text = json.dumps(sealed)
    assert TOKEN.decode() not in text and base64.b64encode(TOKEN).decode() not in text
    for name in ("a", "b"):
        r = recipient(keys[name])
        assert open_sealed(json.loads(text), IDENTITY, r.device, keys[name]) == secrets
    assert seal(secrets, IDENTITY, [recipient(keys["a"])])["secrets"] != sealed["secrets"]  # a fresh data key each time


def test_a_device_left_out_or_with_the_wrong_key_reads_nothing(keys: dict[str, DeviceKey]) -> None:
    sealed = seal({"api-token": TOKEN}, IDENTITY, [recipient(keys["a"])])
    with pytest.raises(Refused, match="not sealed to this device"):
        open_sealed(sealed, IDENTITY, recipient(keys["c"]).device, keys["c"])
    with pytest.raises(Refused, match="this device's key does not open them") as caught:
        open_sealed(sealed, IDENTITY, recipient(keys["a"]).device, keys["c"])  # a's entry, c's key
    assert TOKEN.decode() not in str(caught.value)


@pytest.mark.parametrize(("tamper", "message"), [
    (lambda d: d["secrets"]["api-token"].update(ciphertext=base64.b64encode(
        bytes([base64.b64decode(d["secrets"]["api-token"]["ciphertext"])[0] ^ 1])
        + base64.b64decode(d["secrets"]["api-token"]["ciphertext"])[1:]).decode()),
     "secret api-token: its ciphertext was altered or moved"),
    (lambda d: d["secrets"].update({"api-token": d["secrets"]["db-password"], "db-password": d["secrets"]["api-token"]}),
     "secret (api-token|db-password): its ciphertext was altered or moved"),
    (lambda d: d["identity"].update(site="plant-8"), "are for vision-app 3 at site plant-8, not vision-app 3 at site plant-7"),
])
def test_tampered_or_moved_ciphertext_is_refused_naming_the_secret(keys: dict[str, DeviceKey], tamper, message: str) -> None:  # type: ignore[no-untyped-def]
    sealed = seal({"api-token": TOKEN, "db-password": b"db-secret-value"}, IDENTITY, [recipient(keys["a"])])
    tamper(sealed)
    with pytest.raises(Refused, match=message) as caught:
        open_sealed(sealed, IDENTITY, recipient(keys["a"]).device, keys["a"])
    assert TOKEN.decode() not in str(caught.value) and "db-secret-value" not in str(caught.value)


def test_a_set_cannot_be_replayed_as_another_version_or_site(keys: dict[str, DeviceKey]) -> None:
    sealed = seal({"api-token": TOKEN}, IDENTITY, [recipient(keys["a"])])
    sealed["identity"] = {"app": "vision-app", "site": "plant-7", "version": "4"}  # claims to be a newer set
    newer = Identity(app="vision-app", site="plant-7", version="4")
    with pytest.raises(Refused, match="does not open them"):
        open_sealed(sealed, newer, recipient(keys["a"]).device, keys["a"])


def test_enrollment_keeps_the_private_key_owner_only_and_prints_only_public_parts(tmp_path: Path) -> None:
    result = CliRunner().invoke(updater_cli, ["--state-dir", str(tmp_path / "device"), "enroll", "--site", "plant-7",
                                              "--profile", "x86_64-cpu", "--kem", "mlkem768-x25519"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)  # the record itself, without --json
    identity = DeviceIdentity(tmp_path / "device")
    key_file = tmp_path / "device/identity/device.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600 and stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    secret = base64.b64encode(identity.key().secret_bytes()).decode()
    assert secret not in result.output and record["device"] == device_id(record["kem"], base64.b64decode(record["public_key"]))
    assert record == identity.record() and (record["site"], record["profile"]) == ("plant-7", "x86_64-cpu")
    status = CliRunner().invoke(updater_cli, ["--state-dir", str(tmp_path / "device"), "status", "--json"])
    assert result_of(status.stdout)["enrollment"] == record and secret not in status.output
    again = CliRunner().invoke(updater_cli, ["--state-dir", str(tmp_path / "device"), "enroll", "--site", "plant-7",
                                             "--profile", "x86_64-cpu"])
    assert again.exit_code == Conflict.exit_code and "enrolled already" in again.stderr
    os.chmod(key_file, 0o644)
    with pytest.raises(DeviceFault, match="readable by others than its owner"):
        identity.key()


def test_the_inventory_enrolls_lists_and_revokes_and_revoked_devices_are_no_recipients(tmp_path: Path) -> None:
    records = []
    for i, site in enumerate(("plant-7", "plant-7", "plant-9")):
        record = DeviceIdentity(tmp_path / f"d{i}").enroll(site=site, profile="x86_64-cpu")
        (tmp_path / f"d{i}.json").write_text(json.dumps(record))
        records.append(record)
    inventory = tmp_path / "devices.yaml"
    for i in range(3):
        result = CliRunner().invoke(sealift, ["devices", "add", str(tmp_path / f"d{i}.json"), "--inventory", str(inventory)])
        assert result.exit_code == 0, result.output
    again = CliRunner().invoke(sealift, ["devices", "add", str(tmp_path / "d0.json"), "--inventory", str(inventory)])
    assert again.exit_code == 0 and len(Inventory(inventory).devices()) == 3  # the same record twice changes nothing
    assert [r.device for r in Inventory(inventory).recipients("plant-7")] == [records[0]["device"], records[1]["device"]]
    revoked = CliRunner().invoke(sealift, ["devices", "revoke", records[1]["device"], "--inventory", str(inventory)])
    assert revoked.exit_code == 0 and "revoked" in revoked.output
    assert [r.device for r in Inventory(inventory).recipients("plant-7")] == [records[0]["device"]]
    listed = result_of(CliRunner().invoke(sealift, ["devices", "list", "--site", "plant-7", "--inventory", str(inventory),
                                                     "--json"]).stdout)
    assert [d["device"] for d in listed] == [records[0]["device"], records[1]["device"]] and "revoked" in listed[1]
    back = CliRunner().invoke(sealift, ["devices", "add", str(tmp_path / "d1.json"), "--inventory", str(inventory)])
    assert back.exit_code == InputError.exit_code and "was revoked" in back.stderr
    text = inventory.read_text()
    for i in range(3):
        assert base64.b64encode(DeviceIdentity(tmp_path / f"d{i}").key().secret_bytes()).decode() not in text


def test_an_altered_enrollment_record_is_refused(tmp_path: Path) -> None:
    record = DeviceIdentity(tmp_path / "d").enroll(site="plant-7", profile="x86_64-cpu")
    other = DeviceIdentity(tmp_path / "e").enroll(site="plant-7", profile="x86_64-cpu")
    (tmp_path / "forged.json").write_text(json.dumps({**record, "public_key": other["public_key"]}))
    with pytest.raises(InputError, match="is not the ID of this public key"):
        Inventory(tmp_path / "devices.yaml").add(tmp_path / "forged.json")
    (tmp_path / "short.json").write_text(json.dumps({**record, "public_key": base64.b64encode(b"x" * 7).decode()}))
    with pytest.raises(InputError, match="has 32 bytes, this one 7"):
        Inventory(tmp_path / "devices.yaml").add(tmp_path / "short.json")
    assert not (tmp_path / "devices.yaml").exists()


@pytest.mark.parametrize(("content", "message"), [
    (b"{\"device\": ", "enrollment record: not valid JSON"),
    (b"{\"device\": \"a\", \"device\": \"b\"}", "enrollment record: key 'device' appears twice"),
    (b"\xff\xfe", "enrollment record is not UTF-8 text"),
    (b"[1, 2]", "expected a mapping"),
    (b"[" * 100_000 + b"]" * 100_000, "enrollment record: JSON nested more than 64 deep"),
])
def test_a_malformed_enrollment_record_is_one_input_error_and_adds_nothing(tmp_path: Path, content: bytes,
                                                                            message: str) -> None:
    (tmp_path / "record.json").write_bytes(content)
    with pytest.raises(InputError, match=message):
        Inventory(tmp_path / "devices.yaml").add(tmp_path / "record.json")
    assert not (tmp_path / "devices.yaml").exists()


def _data_key(document: dict, key: DeviceKey) -> bytes:  # type: ignore[type-arg]
    """Unwrap a set's data key the way open_sealed does (to check its properties)."""
    from updater.sealed import key_binding, suite

    r = recipient(key)
    entry = next(e for e in document["recipients"] if e["device"] == r.device)
    info = key_binding(IDENTITY, r.device, document["secrets"])
    return bytes(suite(key.kem).decrypt(base64.b64decode(entry["sealed_key"]), key._key, info=info))


def test_each_set_has_a_fresh_data_key_and_each_secret_a_fresh_nonce(keys: dict[str, DeviceKey]) -> None:
    secrets = {f"s{i}": b"same value" for i in range(8)}
    one, two = (seal(secrets, IDENTITY, [recipient(keys["a"])]) for _ in range(2))
    assert _data_key(one, keys["a"]) != _data_key(two, keys["a"]) and len(_data_key(one, keys["a"])) == 32
    assert len({s["nonce"] for s in one["secrets"].values()}) == len(secrets)


@pytest.mark.parametrize(("change", "opened_as"), [
    (lambda d: d["identity"].update(site="plant-8"), Identity(app="vision-app", site="plant-8", version="3")),
    (lambda d: d["identity"].update(app="other-app"), Identity(app="other-app", site="plant-7", version="3")),
    (lambda d: d["secrets"].pop("db-password"), IDENTITY),
    (lambda d: d["secrets"].update({"extra": d["secrets"]["api-token"]}), IDENTITY),
])
def test_a_relabelled_or_trimmed_set_does_not_open(keys: dict[str, DeviceKey], change, opened_as: Identity) -> None:  # type: ignore[no-untyped-def]
    sealed = seal({"api-token": TOKEN, "db-password": b"db-secret-value"}, IDENTITY, [recipient(keys["a"])])
    change(sealed)
    with pytest.raises(Refused, match="does not open them"):
        open_sealed(sealed, opened_as, recipient(keys["a"]).device, keys["a"])


@pytest.mark.parametrize("damage", [
    lambda d: d["secrets"]["api-token"].update(nonce=None),
    lambda d: d["secrets"]["api-token"].update(nonce=base64.b64encode(b"n" * 200).decode()),
    lambda d: d.update(recipients=5),
    lambda d: d.update(secrets=["api-token"]),
    lambda d: d["recipients"][0].update(sealed_key="not base64!"),
    lambda d: d["secrets"].update({"../../etc/passwd": d["secrets"]["api-token"]}),
])
def test_a_malformed_set_is_one_clear_error(keys: dict[str, DeviceKey], damage) -> None:  # type: ignore[no-untyped-def]
    sealed = seal({"api-token": TOKEN}, IDENTITY, [recipient(keys["a"])])
    damage(sealed)
    with pytest.raises(Refused):
        open_sealed(sealed, IDENTITY, recipient(keys["a"]).device, keys["a"])


def test_a_stale_temporary_key_file_never_lends_its_mode(tmp_path: Path) -> None:
    identity_dir = tmp_path / "device/identity"
    identity_dir.mkdir(parents=True)
    stale = identity_dir / ".device.key.tmp"
    stale.write_text("left by a crash")
    os.chmod(stale, 0o644)
    DeviceIdentity(tmp_path / "device").enroll(site="plant-7", profile="x86_64-cpu")
    assert stat.S_IMODE((identity_dir / "device.key").stat().st_mode) == 0o600


def test_hand_edited_times_in_the_inventory_are_read_or_refused_clearly(tmp_path: Path) -> None:
    record = DeviceIdentity(tmp_path / "d").enroll(site="plant-7", profile="x86_64-cpu")
    inventory = tmp_path / "devices.yaml"
    Inventory(inventory).add(_write(tmp_path / "r.json", record))
    text = inventory.read_text()
    inventory.write_text(text.replace(f"'{record['enrolled']}'", record["enrolled"]))  # unquoted: YAML reads a datetime
    assert Inventory(inventory).devices()[0].enrolled == record["enrolled"]
    inventory.write_text(text + "  revoked: ''\n")
    with pytest.raises(InputError, match="revoked: expected a date and time"):
        Inventory(inventory).devices()


def _write(path: Path, record: dict) -> Path:  # type: ignore[type-arg]
    path.write_text(json.dumps(record))
    return path


# --- per-site overlays ---------------------------------------------------------------------------

SITE_FILE = """\
version: 3.0.0
fits: ">=1.0.0 <2.0.0"
environment:
  app: {SITE_ID: plant-7, MQTT_BROKER: "mqtt.plant7.local:1883"}
"""


@pytest.fixture
def fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A project with a site file, two devices enrolled at plant-7 and one at plant-9, and the token set."""
    from tests.builders import project

    spec = project(tmp_path / "src")
    (tmp_path / "src/sites").mkdir()
    (tmp_path / "src/sites/plant-7.yaml").write_text(SITE_FILE)
    inventory = tmp_path / "devices.yaml"
    for i, site in enumerate(("plant-7", "plant-7", "plant-9")):
        record = DeviceIdentity(tmp_path / f"device{i}").enroll(site=site, profile="x86_64-cpu")
        Inventory(inventory).add(_write(tmp_path / f"record{i}.json", record))
    monkeypatch.setenv("DEMO_API_TOKEN", TOKEN.decode())
    return {"spec": spec, "inventory": inventory, "out": tmp_path / "out"}


def _build(fleet: dict[str, Path], *extra: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(sealift, ["overlay", "build", str(fleet["spec"]), "--site", "plant-7", "--inventory",
                                          str(fleet["inventory"]), "--out", str(fleet["out"]), "--json", *extra])
    return result.exit_code, result.stdout, result.stderr


def test_an_overlay_seals_the_sites_secrets_to_its_devices_only_and_writes_no_value(fleet: dict[str, Path], tmp_path: Path) -> None:
    from updater.overlay import check_overlay

    code, out, err = _build(fleet)
    assert code == 0, err
    built = result_of(out)
    info = check_overlay(Path(built["path"]))
    assert (info.name, info.site, info.version, info.fits) == ("demo", "plant-7", "3.0.0", ">=1.0.0 <2.0.0")
    assert info.environment == {"app": {"SITE_ID": "plant-7", "MQTT_BROKER": "mqtt.plant7.local:1883"}}
    identity = Identity(app="demo", site="plant-7", version="3.0.0")
    for i in (0, 1):
        device = DeviceIdentity(tmp_path / f"device{i}")
        assert open_sealed(info.sealed, identity, device.record()["device"], device.key()) == {"api-token": TOKEN}
    outsider = DeviceIdentity(tmp_path / "device2")  # enrolled, but at another site
    with pytest.raises(Refused, match="not sealed to this device"):
        open_sealed(info.sealed, identity, outsider.record()["device"], outsider.key())
    written = [p for p in tmp_path.rglob("*") if p.is_file()]  # the overlay, the inventory, every device's state
    assert len(written) > 10
    for path in written:
        data = path.read_bytes()
        assert TOKEN not in data and base64.b64encode(TOKEN) not in data, path


def test_an_overlay_is_signed_like_a_bundle_and_verified_as_a_device_would(fleet: dict[str, Path], tmp_path: Path) -> None:
    from tests.builders import signed

    code, out, err = _build(fleet)
    assert code == 0, err
    path = Path(result_of(out)["path"])
    root = signed([path], tmp_path / "signing")
    result = CliRunner().invoke(sealift, ["verify", str(path), "--trusted-root", str(root), "--json"])
    assert result.exit_code == 0, result.output
    assert result_of(result.stdout)[0]["overlay"]["site"] == "plant-7"
    assert (path / "tuf/timestamp.json").exists()


def test_overlay_builds_fail_clearly_and_write_nothing(fleet: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEMO_API_TOKEN")
    code, _, err = _build(fleet)
    assert code == InputError.exit_code and "secret api-token: the environment variable DEMO_API_TOKEN is not set" in err
    monkeypatch.setenv("DEMO_API_TOKEN", TOKEN.decode())
    for device in Inventory(fleet["inventory"]).devices():
        if device.site == "plant-7":
            Inventory(fleet["inventory"]).revoke(device.device)
    code, _, err = _build(fleet)
    assert code == InputError.exit_code and "site plant-7: no enrolled device" in err
    assert not fleet["out"].exists() or not any(fleet["out"].iterdir())


def test_a_revoked_device_cannot_read_the_next_overlay(fleet: dict[str, Path], tmp_path: Path) -> None:
    from updater.overlay import check_overlay

    first = DeviceIdentity(tmp_path / "device0")
    Inventory(fleet["inventory"]).revoke(first.record()["device"])
    (fleet["spec"].parent / "sites/plant-7.yaml").write_text(SITE_FILE.replace("version: 3.0.0", "version: 4.0.0"))
    code, out, err = _build(fleet)
    assert code == 0, err
    info = check_overlay(Path(result_of(out)["path"]))
    with pytest.raises(Refused, match="not sealed to this device"):
        open_sealed(info.sealed, Identity(app="demo", site="plant-7", version="4.0.0"), first.record()["device"], first.key())
    assert first.record()["device"] not in info.recipients


@pytest.mark.parametrize(("site_file", "message"), [
    ("version: 3.0.0\nenvironment:\n  nosuch: {A: b}\n", "the spec has no service 'nosuch'"),
    ("version: 3.0.0\nfits: around 1.0\n", "is not a version range"),
    ("version: 3.0.0\nfits: '>=1.0'\n", "'1.0' in '>=1.0' is not a semantic version"),  # a bound, not a traceback
    ("version: 3\n", "'3' is not a semantic version"),
    ("fits: '>=1.0.0'\n", "version: is required"),
])
def test_a_malformed_site_file_is_named(fleet: dict[str, Path], site_file: str, message: str) -> None:
    (fleet["spec"].parent / "sites/plant-7.yaml").write_text(site_file)
    code, _, err = _build(fleet)
    assert code == InputError.exit_code and message in err


def test_versions_fit_ranges() -> None:
    from updater.versions import fits

    assert fits(">=1.0.0 <2.0.0", "1.4.2") and not fits(">=1.0.0 <2.0.0", "2.0.0") and fits("", "0.1.0")
    assert not fits("==1.2.0", "1.2.1") and fits(">1.0.0", "1.0.1")
    for constraint, version in ((">=1.0", "1.2.0"), ("about 1", "1.2.0"), (">=1.0.0", "1.2")):  # as an artifact states them
        with pytest.raises(Refused, match="fits"):
            fits(constraint, version)


def test_a_validly_sealed_secret_name_that_would_leave_its_folder_is_refused(keys: dict[str, DeviceKey],
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import re

    from bundler import sealing

    monkeypatch.setattr(sealing, "SECRET_NAME", re.compile(r".+"))  # a sealer that skips the check
    sealed = seal({"../../escaped": TOKEN}, IDENTITY, [recipient(keys["a"])])
    monkeypatch.undo()
    with pytest.raises(Refused, match="is not a valid secret name"):
        open_sealed(sealed, IDENTITY, recipient(keys["a"]).device, keys["a"])


def test_secrets_open_into_memory_one_folder_per_service_with_the_owner_and_mode_each_declares(tmp_path: Path) -> None:
    """A real tmpfs (the updater mounts it; needs root): root 0400 by default, uid/gid/mode as declared."""
    from tests.builders import unmount_secrets
    from updater.appdef import SecretMount, Service
    from updater.errors import Refused
    from updater.overlay import OverlayInfo
    from updater.secrets import OpenedSecrets
    from updater.stage import stage_overlay

    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("opening secrets into a tmpfs needs root")
        pytest.skip("needs root to mount the secrets tmpfs")
    state = tmp_path / "state"
    device = DeviceIdentity(state)
    device.enroll(site="plant-7", profile="x86_64-cpu")
    identity = Identity(app="demo", site="plant-7", version="1.0.0")
    sealed = seal({"api-token": TOKEN, "db-password": b"pw-1b2c"}, identity, [recipient(device.key())])
    slot = state / "slots" / "a"
    slot.mkdir(parents=True)
    stage_overlay(OverlayInfo(name="demo", site="plant-7", version="1.0.0", fits="", digest="sha256:" + "1" * 64,
                              secrets=("api-token", "db-password"), sealed=sealed), slot)
    services = (Service(name="web", image="app", secrets=(SecretMount(source="api-token", target="api-token"),)),
                Service(name="worker", image="app", secrets=(
                    SecretMount(source="api-token", target="token", uid=1000, gid=1001, mode=0o440),
                    SecretMount(source="db-password", target="db-password", uid=1000))),
                Service(name="cache", image="app"))
    store = OpenedSecrets(state, device)
    try:
        folder = store.open_into_memory("demo", "a", slot, services)
        assert folder is not None
        found = {str(p.relative_to(folder)): (p.stat().st_uid, p.stat().st_gid, stat.S_IMODE(p.stat().st_mode))
                 for p in folder.rglob("*") if p.is_file()}
        assert found == {"web/api-token": (0, 0, 0o400), "worker/api-token": (1000, 1001, 0o440),
                         "worker/db-password": (1000, 0, 0o400)}
        assert (folder / "worker/api-token").read_bytes() == TOKEN
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and stat.S_IMODE(state.joinpath("run").stat().st_mode) == 0o700
        store.remove("demo", "a")
        assert not folder.exists()
        with pytest.raises(Refused, match="its secrets cannot be opened"):  # another device's set: nothing opened
            other = DeviceIdentity(tmp_path / "other")
            other.enroll(site="plant-7", profile="x86_64-cpu")
            OpenedSecrets(state, other).open_into_memory("demo", "a", slot, services)
        assert not folder.exists()
    finally:
        unmount_secrets(state)
