"""Hardware detection on realistic system roots (tests/assets/sysfs), with the evidence it names."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.envelope import error_of, result_of
from updater.detect import Hardware, accelerator_check, detect_profile
from updater.errors import InputError
from updater.profiles import builtin_profile_dir, load_profiles
from updater.runtime import EngineFeatures

ROOTS = Path(__file__).resolve().parent.parent / "assets" / "sysfs"
PROFILES = load_profiles([builtin_profile_dir()])


@pytest.mark.parametrize(("root", "machine", "profile", "proof"), [
    ("x86-rtx4090", "x86_64", "x86_64-nvidia", "pci 10de:2684 at 0000:01:00.0"),
    ("x86-plain", "x86_64", "x86_64-cpu", "uname -m = x86_64"),
    ("x86-meteor-lake-npu", "x86_64", "x86_64-intel-npu", "pci 8086:7d1d at 0000:00:0b.0"),
    ("jetson-orin-nx", "aarch64", "jetson-orin", "device-tree compatible nvidia,tegra234"),
    ("rpi5-hailo8", "aarch64", "rpi5-hailo8", "pci 1e60:2864 at 0001:01:00.0"),
    ("arm64-coral-usb", "aarch64", "arm64-coral", "usb 1a6e:089a at 3-1"),
    ("rpi5-hailo8-and-coral", "aarch64", "rpi5-hailo8", "device-tree compatible brcm,bcm2712"),
])
def test_each_board_gets_its_profile_with_evidence(root: str, machine: str, profile: str, proof: str) -> None:
    found = detect_profile(PROFILES.values(), Hardware(ROOTS / root, machine=machine))
    assert found.profile.name == profile
    assert proof in [p for _, p in found.evidence]


def test_a_board_no_profile_describes_is_a_clear_error() -> None:
    with pytest.raises(InputError, match=r"no hardware profile matches this device \(uname -m aarch64, 1 PCI and 0 USB"):
        detect_profile(PROFILES.values(), Hardware(ROOTS / "rpi5-bare", machine="aarch64"))


def test_equal_matches_are_refused(tmp_path: Path) -> None:
    clone = {**PROFILES}
    (tmp_path / "gpu-box.yaml").write_text(
        "name: gpu-box\nplatform: {os: linux, architecture: amd64}\ncompatible: acme/gpu-box\n"
        "detect: {all: [{pci: '10de:2684'}]}\npriority: 50\n"
    )
    clone.update(load_profiles([tmp_path]))
    with pytest.raises(InputError, match=r"several profiles match this device equally \(gpu-box, x86_64-nvidia\)"):
        detect_profile(clone.values(), Hardware(ROOTS / "x86-rtx4090", machine="x86_64"))


def test_hostile_sysfs_contents_are_ignored(tmp_path: Path) -> None:
    device = tmp_path / "sys/bus/pci/devices/0000:01:00.0"
    device.mkdir(parents=True)
    (device / "vendor").write_bytes(b"\xff" * 10_000)  # not an ID
    (device / "device").write_text("0x2684\n")
    with pytest.raises(InputError, match="no hardware profile matches"):
        detect_profile([PROFILES["x86_64-nvidia"]], Hardware(tmp_path, machine="x86_64"))


def test_detect_command() -> None:
    code = "from updater.cli import main; main()"
    done = subprocess.run([sys.executable, "-c", code, "detect", "--sysroot", str(ROOTS / "jetson-orin-nx"), "--machine", "aarch64",
                           "--json"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    result = result_of(done.stdout)
    assert result["profile"] == "jetson-orin" and result["compatible"] == "sealift/jetson-orin"
    assert {"rule": "cpu_arch aarch64", "proof": "uname -m = aarch64"} in result["evidence"]
    none = subprocess.run([sys.executable, "-c", code, "detect", "--sysroot", str(ROOTS / "rpi5-bare"), "--machine", "aarch64"],
                          capture_output=True, text=True, check=False)
    assert none.returncode == InputError.exit_code and "no hardware profile matches" in none.stderr and "Traceback" not in none.stderr


@pytest.mark.parametrize(("root", "machine", "missing"), [
    ("x86-rtx4090", "x86_64", []),
    ("x86-meteor-lake-npu", "x86_64", []),
    ("jetson-orin-nx", "aarch64", []),
    ("rpi5-hailo8", "aarch64", []),
    ("arm64-coral-usb", "aarch64", []),
    ("rpi5-hailo8-and-coral", "aarch64", ["device /dev/hailo0, which is absent"]),
], ids=lambda v: v if isinstance(v, str) else None)
def test_the_accelerator_is_usable_where_its_nodes_are(root: str, machine: str, missing: list[str]) -> None:
    found = detect_profile(PROFILES.values(), Hardware(ROOTS / root, machine=machine))
    check = accelerator_check(found.profile, root=ROOTS / root, engine=None)
    assert check.declared and list(check.missing) == missing and not check.engine_checked


def test_the_accelerator_check_asks_the_engine_for_the_runtime() -> None:
    jetson = PROFILES["jetson-orin"]
    without = accelerator_check(jetson, root=ROOTS / "jetson-orin-nx", engine=EngineFeatures(runtimes=frozenset({"runc"})))
    assert without.missing == ("the container runtime nvidia, which the engine lacks (it has runc)",)
    with_it = accelerator_check(jetson, root=ROOTS / "jetson-orin-nx", engine=EngineFeatures(runtimes=frozenset({"runc", "nvidia"})))
    assert not with_it.missing and with_it.engine_checked and str(with_it) == "usable"
    assert str(accelerator_check(PROFILES["x86_64-cpu"], root=ROOTS / "x86-plain", engine=None)) == "none declared by the profile"


def test_detect_exits_5_naming_what_the_accelerator_lacks() -> None:
    done = subprocess.run([sys.executable, "-c", "from updater.cli import main; main()", "detect", "--sysroot",
                           str(ROOTS / "rpi5-hailo8-and-coral"), "--machine", "aarch64", "--json"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 5, done.stderr
    error, report = error_of(done.stdout)
    assert error["kind"] == "device" and "device /dev/hailo0, which is absent" in error["message"]
    assert report["profile"] == "rpi5-hailo8"
    assert report["accelerator"] == {"declared": True, "usable": False, "missing": ["device /dev/hailo0, which is absent"],
                                     "engine_checked": False}
