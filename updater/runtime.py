"""Running a release's services on the Docker engine, through the Docker SDK.

Containers are named ``sealift-APP-SLOT-SERVICE`` and labelled with the app, slot, version and
service, so the updater always finds what it started. Models and configs are mounted read-only
from the slot; ports and networks are as the Compose subset declares; restart policy
``unless-stopped`` brings a committed release back after the engine restarts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from updater.appdef import App, Service, start_order
from updater.errors import DeviceFault, EngineFault, Refused
from updater.slots import Release

__all__ = ["LABEL_APP", "LABEL_SLOT", "Runtime", "connect_engine"]

LABEL_APP = "dev.sealift.app"
LABEL_SLOT = "dev.sealift.slot"
LABEL_VERSION = "dev.sealift.version"
LABEL_SERVICE = "dev.sealift.service"
_NS = 1_000_000_000


def connect_engine() -> Any:
    """A client of the Docker engine that ``DOCKER_HOST`` names (the local socket by default);
    EngineFault, naming where it looked, when nothing answers there."""
    import docker
    import docker.errors

    host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    try:
        return docker.from_env()
    except docker.errors.DockerException as e:
        raise EngineFault(f"the Docker engine at {host} does not answer ({_short(_root_cause(e))}); is dockerd running? "
                          "(DOCKER_HOST names another engine)") from e


def _root_cause(error: BaseException) -> BaseException:
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
    return error


class Runtime:
    """The releases' containers on one engine."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def start(self, release: Release, app: App, slot_dir: Path, images: dict[str, str], *,
              environment: dict[str, dict[str, str]] | None = None, secrets: Path | None = None) -> None:
        """Create the release's networks and start its services, dependencies first. ``environment``
        adds values per service (a site overlay's); ``secrets`` is the folder (in a tmpfs) holding a
        folder per service, whose files are mounted read-only at ``/run/secrets/TARGET`` in the
        services that declare them."""
        import docker.errors

        try:
            default = self._network(release, None)
            named = {name: self._network(release, name, internal=internal) for name, internal in app.networks}
            for service in start_order(app):
                self._run(release, service, slot_dir, images, default, named, (environment or {}).get(service.name, {}), secrets)
        except docker.errors.DockerException as e:
            raise EngineFault(f"{release.name} {release.version}: the engine could not start it ({_short(e)})") from e

    def stop(self, app_name: str, slot: str) -> None:
        """Stop and remove every container (and network) of one slot of the app."""
        import docker.errors

        labels = [f"{LABEL_APP}={app_name}", f"{LABEL_SLOT}={slot}"]
        try:
            for container in self.client.containers.list(all=True, filters={"label": labels}):
                container.remove(force=True)
            for network in self.client.networks.list(filters={"label": labels}):
                network.remove()
        except docker.errors.DockerException as e:
            raise EngineFault(f"{app_name} slot {slot}: the engine could not stop it ({_short(e)})") from e

    def containers(self, app_name: str, slot: str) -> dict[str, Any]:
        """Service name -> container, for one slot of the app."""
        labels = [f"{LABEL_APP}={app_name}", f"{LABEL_SLOT}={slot}"]
        return {c.labels.get(LABEL_SERVICE, c.name): c for c in self.client.containers.list(all=True, filters={"label": labels})}

    def _network(self, release: Release, name: str | None, *, internal: bool = False) -> Any:
        full = f"sealift-{release.name}-{release.slot}" + (f"-{name}" if name else "")
        existing = self.client.networks.list(names=[full])
        if existing:
            return existing[0]
        return self.client.networks.create(full, driver="bridge", internal=internal, labels=_labels(release, None))

    def _run(self, release: Release, service: Service, slot_dir: Path, images: dict[str, str], default: Any,
             named: dict[str, Any], site_environment: dict[str, str], secrets: Path | None) -> None:
        import docker.types

        name = f"sealift-{release.name}-{release.slot}-{service.name}"
        networks = [named[n] for n in service.networks] or [default]
        volumes = {str(_mount_source(slot_dir, m.source)): {"bind": m.target, "mode": "ro"} for m in service.volumes}
        mounts = []
        for secret in service.secrets:
            opened = secrets / service.name / secret.source if secrets is not None else None
            if opened is None or not opened.is_file():
                raise Refused(f"{release.name} {release.version}: service {service.name} needs secret {secret.source}, "
                                   "and no overlay on this device provides it")
            # a bind mount proper: if the tmpfs file is gone (a reboot), the engine refuses to start the
            # container instead of making an empty directory on disk; the updater opens the secrets again
            mounts.append(docker.types.Mount(f"/run/secrets/{secret.target}", str(opened), type="bind", read_only=True))
        container = self.client.containers.create(
            images[service.image],
            command=list(service.command) if service.command is not None else None,
            name=name,
            hostname=service.name,
            environment={**dict(service.environment), **site_environment},
            labels=_labels(release, service.name),
            ports={f"{p.container}/{p.protocol}": (p.host_ip or "0.0.0.0", p.host) if p.host else None for p in service.ports},
            volumes=volumes,
            mounts=mounts,
            healthcheck=_healthcheck(service),
            restart_policy={"Name": "unless-stopped"},
            network=networks[0].name,
            detach=True,
        )
        for network in networks[1:]:
            network.connect(container, aliases=[service.name])
        container.start()


def _mount_source(slot_dir: Path, component: str) -> Path:
    for folder in ("models", "configs"):
        if (slot_dir / folder / component).exists():
            return slot_dir / folder / component
    raise DeviceFault(f"{slot_dir}: {component} is not staged in this slot")


def _healthcheck(service: Service) -> dict[str, Any] | None:
    check = service.healthcheck
    if check is None:
        return None
    return {"test": list(check.test), "interval": int(check.interval * _NS), "timeout": int(check.timeout * _NS),
            "retries": check.retries, "start_period": int(check.start_period * _NS)}


def _labels(release: Release, service: str | None) -> dict[str, str]:
    labels = {LABEL_APP: release.name, LABEL_SLOT: release.slot, LABEL_VERSION: release.version}
    if service is not None:
        labels[LABEL_SERVICE] = service
    return labels


def _short(error: BaseException) -> str:
    return " ".join(str(error).split())[:240]
