from __future__ import annotations

from pathlib import Path

import pytest

from tests.envelope import result_of
from updater.errors import InputError
from updater.profiles import Platform, builtin_profile_dir, load_profiles

SHIPPED = {"x86_64-cpu", "x86_64-nvidia", "jetson-orin", "rpi5-hailo8", "arm64-coral", "x86_64-intel-npu"}


def test_shipped_profiles_load_with_their_platforms() -> None:
    profiles = load_profiles([builtin_profile_dir()])
    assert set(profiles) >= SHIPPED
    assert str(profiles["jetson-orin"].platform) == "linux/arm64/v8"
    assert str(profiles["x86_64-nvidia"].platform) == "linux/amd64"
    assert {r.value for r in profiles["rpi5-hailo8"].detect_any} >= {"1e60:2864"}
    assert len({p.compatible for p in profiles.values()}) == len(profiles)


def test_arm64_without_variant_means_v8() -> None:
    assert Platform(os="linux", architecture="arm64").matches(Platform(os="linux", architecture="arm64", variant="v8"))
    assert not Platform(os="linux", architecture="arm64").matches(Platform(os="linux", architecture="amd64"))


def test_user_directory_adds_and_replaces_profiles(tmp_path: Path) -> None:
    (tmp_path / "x86_64-cpu.yaml").write_text(
        "name: x86_64-cpu\nplatform: {os: linux, architecture: amd64}\ncompatible: acme/cpu-v2\n"
    )
    (tmp_path / "acme-box.yaml").write_text(
        "name: acme-box\nplatform: {os: linux, architecture: arm64}\ncompatible: acme/box\n"
        "detect:\n  all:\n    - usb: '1d6b:0002'\n"
    )
    profiles = load_profiles([builtin_profile_dir(), tmp_path])
    assert profiles["x86_64-cpu"].compatible == "acme/cpu-v2"
    assert profiles["acme-box"].detect_all[0].kind == "usb"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: other\nplatform: {os: linux, architecture: amd64}\ncompatible: c\n", "differs from the file name"),
        ("name: p\nplatform: {os: windows, architecture: amd64}\ncompatible: c\n", 'platform.os: expected "linux"'),
        ("name: p\nplatform: {os: linux, architecture: mips}\ncompatible: c\n", "platform.architecture: expected one of"),
        ("name: p\nplatform: {os: linux, architecture: amd64}\n", "compatible: is required"),
        ("name: p\nplatform: {os: linux, architecture: amd64}\ncompatible: c\ndetect: {all: [{pci: nvidia}]}\n",
         "detect.all[0].pci: expected VENDOR:DEVICE"),
        ("name: p\nplatform: {os: linux, architecture: amd64}\ncompatible: c\ndetect: {any: [{file: dev/x}]}\n",
         "detect.any[0].file: expected an absolute path"),
        ("name: p\nplatform: {os: linux, architecture: amd64}\ncompatible: c\ndetect: {any: [{file: /a, pci: '10de:*'}]}\n",
         "detect.any[0]: expected one rule"),
        ("name: p\nplatform: {os: linux, architecture: amd64}\ncompatible: c\ncontainer: {accelerator: {}}\n",
         "container.accelerator: expected at least one of runtime, devices, device_requests, group_add"),
        ("name: p\nplatform: {os: linux, architecture: amd64}\ncompatible: c\ncontainer: {accelerator: {devices: [dev/x]}}\n",
         "container.accelerator.devices[0]: expected an absolute device path"),
        ("name: p\nplatform: {os: linux, architecture: amd64}\ncompatible: c\n"
         "container: {accelerator: {device_requests: [{capabilities: [fpga]}]}}\n",
         "container.accelerator.device_requests[0].capabilities[0]: expected a device capability"),
        ("name: p\nplatform: {os: linux, architecture: amd64}\ncompatible: c\ncontainer: {allow_privileged: yes please}\n",
         "container.allow_privileged: expected true or false"),
    ],
    ids=["name-mismatch", "bad-os", "bad-arch", "no-compatible", "bad-pci", "relative-file", "two-rules", "empty-access",
         "relative-device", "unknown-capability", "privileged-word"],
)
def test_bad_profile_is_refused_naming_the_field(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "p.yaml").write_text(text)
    with pytest.raises(InputError, match=r"p\.yaml: ") as caught:
        load_profiles([tmp_path])
    assert message in str(caught.value)


def test_missing_profile_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="profile directory not found"):
        load_profiles([tmp_path / "nope"])


def test_a_field_name_with_a_line_break_is_named_on_one_line(tmp_path: Path) -> None:
    """Found by the fuzzer (tests/unit/test_fuzz.py): an unknown key was echoed as it was."""
    (tmp_path / "odd.yaml").write_text('name: odd\nplatform: {os: linux, architecture: amd64}\n"\\n": 1\n')
    with pytest.raises(InputError) as caught:
        load_profiles([tmp_path])
    assert "['\\n']: unknown field" in caught.value.diagnostics() and "\n" not in caught.value.diagnostics()


def test_sealift_profiles_json_says_how_a_container_reaches_each_accelerator() -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "from bundler.cli import main; main()", "profiles", "--json"],
                          capture_output=True, text=True, timeout=60, check=True)
    listed = {p["name"]: p["accelerator"] for p in result_of(done.stdout)}
    assert listed["jetson-orin"] == {"runtime": "nvidia"} and listed["x86_64-cpu"] is None
    assert listed["rpi5-hailo8"] == {"devices": ["/dev/hailo0"], "group_add": [{"group_of": "/dev/hailo0"}]}
