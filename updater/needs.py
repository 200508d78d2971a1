"""What a release asks of the device's hardware and engine, and what of it the device lacks.

A bundle's descriptor states each service's device nodes (or alternatives), the files its driver
must have made (``x-sealift.requires``), the device nodes whose group it joins, its container
runtime, its GPU requests and CDI devices, and its CPU limit, all resolved from the profile at
build time. The installer checks
them before the switch, so a release that cannot reach its accelerator here is refused while the
running one goes on; ``sealift-updater detect`` checks the same for the detected profile.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from updater.appdef import App
from updater.container import Container
from updater.runtime import EngineFeatures

__all__ = ["lacking", "lacking_for"]

_NVIDIA_HOOK = "nvidia-container-runtime-hook"


def lacking(app: App, *, engine: EngineFeatures | None, root: Path = Path("/")) -> list[str]:
    """What ``app``'s services need that this device lacks, one phrase each (empty: nothing)."""
    return [f"service {service.name} needs {need}" for service in app.services
            for need in lacking_for(service.container, engine=engine, root=root)]


def lacking_for(container: Container, *, engine: EngineFeatures | None, root: Path = Path("/")) -> list[str]:
    """What ``container`` needs that the device (its files under ``root``, and ``engine`` when known) lacks."""
    absent = [device for device in container.devices if not any(_present(root, path) for path in device.host)]
    named = {path for device in absent for path in device.host}
    missing = [f"device {device}, which is absent" for device in absent]
    missing += [f"{path}, which is absent" for path in dict.fromkeys((*container.requires, *container.group_of))
                if path not in named and not _present(root, path)]
    if engine is not None and container.runtime is not None and container.runtime not in engine.runtimes:
        missing.append(f"the container runtime {container.runtime}, which the engine lacks "
                       f"(it has {', '.join(sorted(engine.runtimes)) or 'none'})")
    if engine is not None and container.cdi_devices and not engine.cdi:
        missing.append(f"CDI device {container.cdi_devices[0]}, and the engine resolves no CDI devices")
    if engine is not None and container.device_requests and not _has_toolkit(engine):
        missing.append("GPUs from the NVIDIA Container Toolkit, which this device lacks (no nvidia runtime in the engine, "
                       f"no {_NVIDIA_HOOK} on PATH)")
    cpus, has = container.limits.cpus, (engine.cpus if engine is not None else None) or os.cpu_count() or 1
    if cpus is not None and cpus > has:
        missing.append(f"{cpus:g} CPUs, and the device has {has}")
    return missing


def _has_toolkit(engine: EngineFeatures) -> bool:
    """Whether the engine can answer GPU device requests: Docker offers its nvidia driver where the
    toolkit's hook is installed, and the toolkit registers its runtime (nvidia-ctk runtime configure)."""
    return "nvidia" in engine.runtimes or shutil.which(_NVIDIA_HOOK) is not None


def _present(root: Path, path: str) -> bool:
    return (root / path.lstrip("/")).exists()
