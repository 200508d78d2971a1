"""A spec's application made concrete for one hardware profile.

A service's ``x-sealift: {accelerator: ...}`` becomes what the profile says reaches its accelerator
(a runtime, device nodes, device requests, groups), so one Compose file serves every profile and
the bundle's descriptor states exactly what the device will ask of its engine. Requests that the
profile cannot answer are refused here, at build time, naming the file and field.
"""

from __future__ import annotations

from dataclasses import replace

from bundler.spec import Spec
from updater.appdef import App, Service
from updater.container import Container
from updater.errors import InputError
from updater.profiles import Profile

__all__ = ["app_for_profile"]


def app_for_profile(spec: Spec, profile: Profile) -> App:
    """``spec``'s application as it runs on ``profile``."""
    return replace(spec.app, services=tuple(replace(s, container=_container(spec, s, profile)) for s in spec.app.services))


def _container(spec: Spec, service: Service, profile: Profile) -> Container:
    container = service.container
    where = f"{spec.app_services}.{service.name}"
    if container.privileged and not spec.allow_privileged:
        raise InputError(f"{where}.privileged: privileged containers reach every device on the host; "
                         f"set allow_privileged: true in {spec.path.name} to allow them")
    if container.privileged and not profile.allow_privileged:
        raise InputError(f"{where}.privileged: profile {profile.name} does not allow privileged containers "
                         "(its container.allow_privileged)")
    access = profile.access
    if container.device_requests and (access is None or not access.device_requests):
        raise InputError(f"{where}.deploy.resources.reservations.devices: profile {profile.name} has no accelerator "
                         "that answers a GPU device request; `x-sealift: {accelerator: required}` asks for what each "
                         "profile has")
    vendors = {a.vendor for a in profile.accelerators}
    for name in container.cdi_devices:  # nvidia.com/gpu=all: a device of the vendor nvidia
        if name.split("/")[0].split(".")[0] not in vendors:
            raise InputError(f"{where}.devices: {name} is a CDI device, and profile {profile.name} has no accelerator "
                             f"of that vendor ({', '.join(sorted(vendors)) or 'none'})")
    if container.accelerator is None:
        return container
    if access is not None and access.runtime and container.runtime not in (None, access.runtime):
        raise InputError(f"{where}.runtime: {container.runtime} differs from {access.runtime}, which profile {profile.name} "
                         "needs to reach its accelerator")
    if access is None:
        if container.accelerator == "required":
            raise InputError(f"{where}.x-sealift.accelerator: profile {profile.name} has no accelerator a container "
                             "can reach (no container.accelerator); use `preferred` to run without one there")
        return replace(container, accelerator=None)
    return container.with_access(access)
