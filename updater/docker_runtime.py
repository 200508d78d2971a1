"""The engine protocol (:mod:`updater.runtime`) on the Docker Engine, through the Docker SDK.

Images: Docker 20.10 cannot load an OCI image layout, but it loads a ``docker save`` archive whose
``manifest.json`` names the config and layer files: the bundle's own blobs, byte for byte,
streamed straight from the bundle. The loaded image's ID is then the config digest the bundle
recorded, which is checked; newer engines load the same archive. Containers: ports and networks as
the Compose subset declares; restart policy ``unless-stopped`` brings a committed release back
after the engine restarts. Every docker-py exception becomes an EngineFault naming what was asked.
"""

from __future__ import annotations

import json
import math
import os
import socket
import tarfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from updater.accelerator import Device
from updater.appdef import App, Service, start_order
from updater.container import Container
from updater.devicenet import DEVICE_NETWORK
from updater.errors import DeviceFault, EngineFault, Refused
from updater.layout import LayoutReader
from updater.oci import CHUNK, MAX_JSON_BYTES, json_object
from updater.runtime import (
    IMAGE_REPOSITORY,
    LABEL_APP,
    LABEL_SERVICE,
    LABEL_SLOT,
    LABEL_VERSION,
    ContainerState,
    EngineFeatures,
    Image,
    Published,
    Usage,
)
from updater.slots import Release

__all__ = ["DockerRuntime"]

_NS = 1_000_000_000
_DEFAULT_GRACE = 10  # seconds between the stop signal and SIGKILL, as in Compose
LABEL_DEVICE_NETWORK = "dev.sealift.device-network"


class DockerRuntime:
    """The releases' containers and images on one Docker engine (``client``: a docker-py DockerClient)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    @classmethod
    def connect(cls) -> DockerRuntime:
        """The engine ``DOCKER_HOST`` names (the local socket by default), at the API version it speaks;
        EngineFault, naming where it looked, when nothing answers there."""
        import docker
        import docker.constants
        import requests

        host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        if host.startswith("unix://"):
            _knock(host, host.removeprefix("unix://"))
        try:
            probe = docker.from_env(version=docker.constants.MINIMUM_DOCKER_API_VERSION)  # no request made yet
        except docker.errors.DockerException as e:  # DOCKER_HOST or the TLS settings are malformed
            raise EngineFault(f"the Docker engine at {host} cannot be reached ({_short(e)})") from e
        try:
            version = str(probe.api.version(api_version=False)["ApiVersion"])
        except (docker.errors.DockerException, requests.RequestException, KeyError) as e:
            raise EngineFault(f"the Docker engine at {host} does not answer ({_short(_root_cause(e))}); is dockerd running? "
                              "(DOCKER_HOST names another engine)") from e
        finally:
            probe.close()
        return cls(docker.from_env(version=version))

    # -- images ----------------------------------------------------------------------------------

    def load_images(self, reader: LayoutReader, images: Sequence[Image]) -> None:
        for image in images:
            with self._engine(f"image {image.name} ({image.config[:19]}): the engine refused to load it"):
                if not self._has_image(image.config):
                    self.client.api.load_image(_archive(reader, image.manifest, image.tag), quiet=True)
                    if not self._has_image(image.config):
                        raise EngineFault(f"image {image.name}: loaded, but the engine has no image {image.config[:19]}")
                self.client.api.tag(image.config, *image.tag.rsplit(":", 1))

    def images(self, app: str) -> dict[str, str]:
        prefix = f"{IMAGE_REPOSITORY}{app}-"
        with self._engine(f"{app}: listing its images failed"):
            return {tag: image.id for image in self.client.images.list(name=f"{prefix}*") for tag in image.tags
                    if tag.startswith(prefix)}

    def remove_image(self, tag: str) -> None:
        with self._engine(f"image {tag}: the engine could not remove it"):
            self.client.images.remove(tag, noprune=False)  # by tag: untagged, and removed with its last tag

    def features(self) -> EngineFeatures:
        with self._engine("asking the engine what it offers failed"):
            info = self.client.info()
        return EngineFeatures(runtimes=frozenset(info.get("Runtimes") or {}), cdi=bool(info.get("CDISpecDirs")),
                              cpus=int(info["NCPU"]) if isinstance(info.get("NCPU"), int) else None)

    def _has_image(self, image_id: str) -> bool:
        import docker.errors

        try:
            return bool(self.client.images.get(image_id).id == image_id)
        except docker.errors.ImageNotFound:
            return False

    # -- containers ------------------------------------------------------------------------------

    def start(self, release: Release, app: App, slot_dir: Path, images: Mapping[str, str], *,
              environment: Mapping[str, Mapping[str, str]] | None = None, secrets: Path | None = None) -> None:
        with self._engine(f"{release.name} {release.version}: the engine could not start it"):
            default = self._network(release, None)
            named = {name: self._network(release, name, internal=internal) for name, internal in app.networks}
            device = self._device_network() if app.on_device_network else None
            for service in start_order(app):
                container = self._run(release, service, slot_dir, images, default, named, (environment or {}).get(service.name, {}),
                                      secrets)
                if device is not None and not service.container.host_network:  # before it starts: named from its first breath
                    device.connect(container, aliases=[f"{service.name}.{release.name}",
                                                       *(p.name for p in app.provides if p.service == service.name)])
                container.start()

    def stop(self, app: str, slot: str) -> None:
        with self._engine(f"{app} slot {slot}: the engine could not stop it"):
            # newest first, so services stop before those they depend on; each with its stop_grace_period
            for container in self.client.containers.list(all=True, filters={"label": _labels_of(app, slot)}):
                if container.status in ("running", "restarting"):
                    container.reload()
                    container.stop(timeout=(container.attrs.get("Config") or {}).get("StopTimeout") or _DEFAULT_GRACE)
                container.remove(force=True)
            for network in self.client.networks.list(filters={"label": _labels_of(app, slot)}):
                network.remove()

    def containers(self, app: str, slot: str) -> dict[str, ContainerState]:
        with self._engine(f"{app} slot {slot}: the engine could not say how its containers are"):
            found = self.client.containers.list(all=True, filters={"label": _labels_of(app, slot)})
            for container in found:
                container.reload()  # the full inspection: health, restarts, published ports
            return {c.labels.get(LABEL_SERVICE, c.name): _state(c) for c in found}

    def usage(self, app: str, slot: str) -> dict[str, Usage]:
        with self._engine(f"{app} slot {slot}: the engine could not say what its containers use"):
            found = self.client.containers.list(filters={"label": _labels_of(app, slot)})
            return {c.labels.get(LABEL_SERVICE, c.name): _usage(c.stats(stream=False, one_shot=True)) for c in found}

    def run_in(self, app: str, slot: str, service: str, command: Sequence[str]) -> tuple[int, str]:
        with self._engine(f"{app} slot {slot}: the engine could not run a command in {service}"):
            (container, *_) = [c for c in self.client.containers.list(filters={"label": _labels_of(app, slot)})
                               if c.labels.get(LABEL_SERVICE) == service] or [None]
            if container is None:
                return -1, f"service {service} has no running container"
            result = container.exec_run(list(command))
            return int(result.exit_code), result.output.decode(errors="replace")

    def _network(self, release: Release, name: str | None, *, internal: bool = False) -> Any:
        full = f"sealift-{release.name}-{release.slot}" + (f"-{name}" if name else "")
        return self._named_network(full) or self.client.networks.create(full, driver="bridge", internal=internal,
                                                                         labels=_labels(release, None))

    def _device_network(self) -> Any:
        """The network the device's applications share (updater.devicenet), made once and kept."""
        import docker.errors

        try:
            return self._named_network(DEVICE_NETWORK) or self.client.networks.create(
                DEVICE_NETWORK, driver="bridge", internal=True, check_duplicate=True, labels={LABEL_DEVICE_NETWORK: "1"})
        except docker.errors.APIError:  # another updater made it just now
            return self._named_network(DEVICE_NETWORK) or self.client.networks.get(DEVICE_NETWORK)

    def _named_network(self, name: str) -> Any:
        """The network called exactly ``name`` (the engine's name filter matches parts of names too)."""
        return next((n for n in self.client.networks.list(names=[name]) if n.name == name), None)

    def _run(self, release: Release, service: Service, slot_dir: Path, images: Mapping[str, str], default: Any,
             named: dict[str, Any], site_environment: Mapping[str, str], secrets: Path | None) -> Any:
        """Create ``service``'s container on its networks (not started yet)."""
        import docker.types

        api = self.client.api
        settings = service.container
        networks = [named[n] for n in service.networks] or [default]
        mounts = []
        for secret in service.secrets:
            opened = secrets / service.name / secret.source if secrets is not None else None
            if opened is None or not opened.is_file():
                raise Refused(f"{release.name} {release.version}: service {service.name} needs secret {secret.source}, "
                              "and no overlay on this device provides it")
            # a bind mount proper: if the tmpfs file is gone (a reboot), the engine refuses to start the
            # container instead of making an empty directory on disk; the updater opens the secrets again
            mounts.append(docker.types.Mount(f"/run/secrets/{secret.target}", str(opened), type="bind", read_only=True))
        host_config = api.create_host_config(
            binds={str(_mount_source(slot_dir, m.source)): {"bind": m.target, "mode": "ro"} for m in service.volumes},
            mounts=mounts,
            port_bindings={f"{p.container}/{p.protocol}": (p.host_ip or "0.0.0.0", p.host) if p.host else None
                           for p in service.ports},
            network_mode="host" if settings.host_network else networks[0].name,
            **_host_settings(settings),
        )
        created = api.create_container(
            images[service.image],
            command=list(service.command) if service.command is not None else None,
            name=f"sealift-{release.name}-{release.slot}-{service.name}",
            hostname=None if settings.host_network else service.name,
            environment={**dict(service.environment), **site_environment},
            labels={**dict(settings.labels), **_labels(release, service.name)},
            ports=[(p.container, p.protocol) for p in service.ports],
            healthcheck=_healthcheck(service),
            host_config=host_config,
            networking_config=None if settings.host_network else api.create_networking_config(
                {networks[0].name: api.create_endpoint_config(aliases=[service.name])}),
            user=settings.user,
            entrypoint=list(settings.entrypoint) if settings.entrypoint is not None else None,
            working_dir=settings.working_dir,
            stop_signal=settings.stop_signal,
            stop_timeout=_grace(settings),
            detach=True,
        )
        container = self.client.containers.get(created["Id"])
        for network in networks[1:]:
            network.connect(container, aliases=[service.name])
        return container

    def _engine(self, doing: str) -> _EngineCall:
        return _EngineCall(doing)


def _usage(stats: dict[str, Any]) -> Usage:
    """CPU time and memory from one look at a container's stats (cgroup v1 or v2 both)."""
    cpu = stats.get("cpu_stats", {}).get("cpu_usage", {}).get("total_usage") or 0  # nanoseconds
    memory = stats.get("memory_stats", {})
    detail = memory.get("stats") or {}
    cache = detail.get("inactive_file", detail.get("total_inactive_file", 0))
    return Usage(cpu_seconds=round(cpu / _NS, 3), memory_bytes=max(int(memory.get("usage") or 0) - int(cache or 0), 0))


class _EngineCall:
    """Turns what the engine (or the SDK's transport to it) raises into one EngineFault naming the work."""

    def __init__(self, doing: str) -> None:
        self.doing = doing

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: object) -> None:
        import docker.errors
        import requests

        if isinstance(error, docker.errors.DockerException | requests.RequestException):
            hint = _PORT_HELD if any(words in str(error) for words in _PORT_HELD_WORDS) else ""
            raise EngineFault(f"{self.doing} ({_short(error)}){hint}") from error


# An engine killed while it started a container can keep that container's host port after it comes
# back (Docker 20.10 restores the half-made mapping); only restarting the engine frees it.
_PORT_HELD_WORDS = ("driver failed programming external connectivity", "port is already allocated")
_PORT_HELD = "; a host port is held: if no other program uses it, restart the Docker engine (systemctl restart docker)"


def _knock(host: str, path: str) -> None:
    """Whether anything listens on the engine's socket (docker-py leaks the socket of a failed connect)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(10)
        try:
            probe.connect(path)
        except OSError as e:
            raise EngineFault(f"the Docker engine at {host} does not answer ({e.strerror or e}); is dockerd running? "
                              "(DOCKER_HOST names another engine)") from e


def _state(container: Any) -> ContainerState:
    attrs = container.attrs
    state = attrs.get("State") or {}
    health = state.get("Health")
    log = (health or {}).get("Log") or [{}]
    ports = {port: tuple(Published(b.get("HostIp") or "", int(b["HostPort"])) for b in bindings or ())
             for port, bindings in ((attrs.get("NetworkSettings") or {}).get("Ports") or {}).items()}
    networks = (attrs.get("NetworkSettings") or {}).get("Networks") or {}
    host_network = (attrs.get("HostConfig") or {}).get("NetworkMode") == "host"
    address = "127.0.0.1" if host_network else next((str(n.get("IPAddress") or "") for name, n in networks.items()
                                                     if name != DEVICE_NETWORK), "")
    return ContainerState(service=container.labels.get(LABEL_SERVICE, container.name), status=str(state.get("Status")),
                          exit_code=int(state.get("ExitCode") or 0), health=health.get("Status") if health else None,
                          health_output=str(log[-1].get("Output", "")).strip(), restarts=int(attrs.get("RestartCount", 0)),
                          ports=ports, host_network=host_network, address=address)


def _archive(reader: LayoutReader, manifest_digest: str, tag: str) -> Iterator[bytes]:
    """A ``docker save`` archive of one image, streamed from the bundle's blobs."""
    with reader.open_blob(manifest_digest) as stream:
        manifest = json_object(stream.read(MAX_JSON_BYTES + 1), f"{reader.location}: image manifest {manifest_digest}")
    digests = [manifest["config"]["digest"], *(layer["digest"] for layer in manifest["layers"])]
    names = [f"blobs/sha256/{d.removeprefix('sha256:')}" for d in digests]
    index = json.dumps([{"Config": names[0], "RepoTags": [tag], "Layers": names[1:]}]).encode()
    yield from _member("manifest.json", len(index), iter([index]))
    for digest, name in dict(zip(digests, names, strict=True)).items():
        size = reader.blob_size(digest) or 0
        yield from _member(name, size, _chunks(reader, digest))
    yield b"\0" * (2 * tarfile.BLOCKSIZE)


def _member(name: str, size: int, content: Iterator[bytes]) -> Iterator[bytes]:
    info = tarfile.TarInfo(name)
    info.size = size
    yield info.tobuf(format=tarfile.GNU_FORMAT)
    yield from content
    yield b"\0" * (-size % tarfile.BLOCKSIZE)


def _chunks(reader: LayoutReader, digest: str) -> Iterator[bytes]:
    with reader.open_blob(digest) as stream:
        while chunk := stream.read(CHUNK):
            yield chunk


def _mount_source(slot_dir: Path, component: str) -> Path:
    for folder in ("models", "configs"):
        if (slot_dir / folder / component).exists():
            return slot_dir / folder / component
    raise DeviceFault(f"{slot_dir}: {component} is not staged in this slot")


def _host_settings(settings: Container) -> dict[str, Any]:
    """The engine's HostConfig for a service's container settings (the Compose subset's meaning)."""
    import docker.types

    limits = settings.limits
    requests = [docker.types.DeviceRequest(driver=r.driver or "", count=r.count or 0, device_ids=list(r.device_ids),
                                           capabilities=[list(r.capabilities)]) for r in settings.device_requests]
    if settings.cdi_devices:
        requests.append(docker.types.DeviceRequest(driver="cdi", device_ids=list(settings.cdi_devices)))
    log = settings.logging
    return {
        "devices": [_device(d) for d in settings.devices] or None,
        "device_requests": requests or None,
        "group_add": [*settings.group_add, *(_group_of(path) for path in settings.group_of)] or None,
        "runtime": settings.runtime,
        "nano_cpus": round(limits.cpus * _NS) if limits.cpus is not None else None,
        "mem_limit": limits.memory,
        "mem_reservation": limits.memory_reservation,
        "pids_limit": limits.pids,
        "shm_size": settings.shm_size,
        "ulimits": [docker.types.Ulimit(name=n, soft=soft, hard=hard) for n, soft, hard in settings.ulimits] or None,
        "cap_add": list(settings.cap_add) or None,
        "cap_drop": list(settings.cap_drop) or None,
        "security_opt": list(settings.security_opt) or None,
        "read_only": settings.read_only or None,
        "tmpfs": dict(settings.tmpfs) or None,
        "init": settings.init,
        "extra_hosts": [f"{name}:{address}" for name, address in settings.extra_hosts] or None,  # a name may have two
        "restart_policy": _restart_policy(settings.restart),
        "log_config": docker.types.LogConfig(type=log.driver, config={} if log.driver == "none" else
                                             {"max-size": str(log.max_size), "max-file": str(log.max_file)}),
        "sysctls": dict(settings.sysctls) or None,
        "privileged": settings.privileged,
    }


def _device(device: Device) -> str:
    """``HOST:CONTAINER:PERMISSIONS`` for the first of the device's paths present here."""
    host = next((path for path in device.host if os.path.exists(path)), device.host[0])
    return f"{host}:{device.target or host}:{device.permissions}"


def _group_of(path: str) -> str:
    """The number of the group that owns device node ``path`` on this device."""
    try:
        return str(os.stat(path).st_gid)
    except OSError as e:
        raise DeviceFault(f"{path}: cannot read its group ({e.strerror}); is the accelerator's driver loaded?") from e


def _restart_policy(policy: str) -> dict[str, Any]:
    name, _, retries = policy.partition(":")
    return {"Name": name, "MaximumRetryCount": int(retries)} if retries else {"Name": name}


def _grace(settings: Container) -> int | None:
    return max(1, math.ceil(settings.stop_grace_period)) if settings.stop_grace_period is not None else None


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


def _labels_of(app: str, slot: str) -> list[str]:
    return [f"{LABEL_APP}={app}", f"{LABEL_SLOT}={slot}"]


def _root_cause(error: BaseException) -> BaseException:
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
    return error


def _short(error: BaseException) -> str:
    return " ".join(str(error).split())[:240]
