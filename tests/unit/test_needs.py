"""What a release asks of the device's hardware and engine, and what the device lacks: checked
before the switch (the install workflow's refusal is in test_install)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from updater.accelerator import Device, DeviceRequest
from updater.appdef import App, Service
from updater.confinement import reaching_the_host
from updater.container import Container, Limits
from updater.needs import lacking_for
from updater.runtime import EngineFeatures

RUNC = EngineFeatures(runtimes=frozenset({"runc"}))
GPU = DeviceRequest(capabilities=("gpu",), driver="nvidia", count=-1)


def test_a_device_node_counts_when_any_of_its_alternatives_is_there(tmp_path: Path) -> None:
    (tmp_path / "dev/bus/usb").mkdir(parents=True)
    coral = Container(devices=(Device(host=("/dev/apex_0", "/dev/bus/usb")),))
    assert lacking_for(coral, engine=RUNC, root=tmp_path) == []
    assert lacking_for(coral, engine=RUNC, root=tmp_path / "elsewhere") == [
        "device /dev/apex_0 or /dev/bus/usb, which is absent"]


def test_required_files_and_the_nodes_whose_group_is_joined_must_be_there_once_each(tmp_path: Path) -> None:
    npu = Container(devices=(Device(host=("/dev/accel/accel0",)),), group_of=("/dev/accel/accel0",), requires=("/dev/x",))
    assert lacking_for(npu, engine=None, root=tmp_path) == ["device /dev/accel/accel0, which is absent", "/dev/x, which is absent"]


def test_gpu_requests_need_the_nvidia_toolkit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # where the hook is not, until it is made
    wants = Container(device_requests=(GPU,))
    assert lacking_for(wants, engine=RUNC, root=tmp_path) == [
        "GPUs from the NVIDIA Container Toolkit, which this device lacks (no nvidia runtime in the engine, "
        "no nvidia-container-runtime-hook on PATH)"]
    assert lacking_for(wants, engine=EngineFeatures(runtimes=frozenset({"runc", "nvidia"})), root=tmp_path) == []
    assert lacking_for(wants, engine=None, root=tmp_path) == []  # the engine not asked: not judged
    hook = tmp_path / "nvidia-container-runtime-hook"
    hook.write_text("#!/bin/sh\n")
    hook.chmod(0o755)
    assert lacking_for(wants, engine=RUNC, root=tmp_path) == []


def test_a_cpu_limit_above_what_the_device_has_is_named(tmp_path: Path) -> None:
    count = os.cpu_count() or 1
    assert lacking_for(Container(limits=Limits(cpus=count + 0.5)), engine=RUNC, root=tmp_path) == [
        f"{count + 0.5:g} CPUs, and the device has {count}"]
    assert lacking_for(Container(limits=Limits(cpus=count)), engine=RUNC, root=tmp_path) == []
    engine = EngineFeatures(runtimes=frozenset({"runc"}), cpus=2)  # what the engine says its containers may use wins
    assert lacking_for(Container(limits=Limits(cpus=3)), engine=engine, root=tmp_path) == ["3 CPUs, and the device has 2"]


def test_a_runtime_or_cdi_the_engine_lacks_is_named(tmp_path: Path) -> None:
    wants = Container(runtime="nvidia", cdi_devices=("nvidia.com/gpu=all",))
    assert lacking_for(wants, engine=RUNC, root=tmp_path) == [
        "the container runtime nvidia, which the engine lacks (it has runc)",
        "CDI device nvidia.com/gpu=all, and the engine resolves no CDI devices"]
    assert lacking_for(wants, engine=EngineFeatures(runtimes=frozenset({"nvidia"}), cdi=True), root=tmp_path) == []


def _node(path: Path, kind: int, major: int, minor: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mknod(path, 0o600 | kind, os.makedev(major, minor))
    return path


def test_nodes_that_reach_the_disks_or_memory_are_found_by_what_they_are(tmp_path: Path) -> None:
    _node(tmp_path / "dev/camera", stat.S_IFCHR, 1, 3)  # harmless, as /dev/null is
    _node(tmp_path / "dev/store/disk", stat.S_IFBLK, 7, 0)  # a loop disk, inside a directory
    _node(tmp_path / "dev/memory", stat.S_IFCHR, 1, 1)  # /dev/mem under another name
    (tmp_path / "dev/innocent").symlink_to(tmp_path / "dev/memory")

    def reaching(*paths: str) -> list[str]:
        app = App(services=(Service(name="app", image="app",
                                    container=Container(devices=tuple(Device(host=(p,)) for p in paths))),))
        return reaching_the_host(app, root=tmp_path)

    assert reaching("/dev/camera") == [] and reaching("/dev/absent") == []
    assert reaching("/dev/store") == [f"service app would reach {tmp_path}/dev/store/disk, a block device"]
    assert reaching("/dev/innocent") == [f"service app would reach {tmp_path}/dev/memory (device 1:1)"]
