"""Real Docker engines and OCI registries, started by the tests themselves.

Project rule: tests that need Docker or a registry use real ones started by the test
set-up. When ``CI`` is set (any non-empty value), a missing binary or a daemon that does
not start is a test failure carrying the reason and the daemon's log tail; without ``CI``
it is a skip with the reason. ``start_docker_engine`` and ``start_registry`` apply that
rule; ``DockerEngine`` and ``Registry`` themselves raise ``RealPartError``.

Two dockerd on one host (found with dockerd 20.10.24 on Debian 12, next to a stray
daemon using docker0):

* ``--bip`` re-addresses the shared ``docker0`` and cannot be combined with ``--bridge``,
  and dockerd will not create a bridge other than docker0. So each engine claims a /21
  of 172.31.128.0/17 (the upper half: AWS default VPCs use 172.31.0.0/20 to .80.0/20),
  creates bridge ``sl-br-<third octet>`` on its first /24 and passes ``--bridge``. The
  bridge name is the claim: ``ip link add`` fails for the second engine that tries it.
* With ``--iptables=true`` the bridge driver flushes and re-creates the ``DOCKER`` and
  ``DOCKER-ISOLATION-*`` chains at start-up, wiping the other daemon's rules; two such
  daemons fight. So the test engine runs ``--iptables=false --ip-forward=false`` and
  never touches the other daemon's chains or the sysctls.
* Published ports still work: the userland proxy (``docker-proxy``, on by default)
  forwards ``127.0.0.1:PORT`` to the container without any NAT rule.
* Container-to-container traffic needs one rule: ``br_netfilter`` passes bridged frames
  through ``FORWARD``, whose policy the other daemon set to DROP. We insert one ACCEPT
  for traffic inside the engine's /21 and delete it at stop.
* User-defined networks come from ``--default-address-pool`` in the upper /22 of the
  same block (16 networks of /26), so they never collide with another daemon's networks
  and the one rule covers them. Their ``br-<id>`` bridges outlive the daemon, so ``stop``
  deletes every ``br-*`` link addressed inside the block.
* Each dockerd starts its own containerd under ``--exec-root``. ``--config-file`` names an
  empty file so ``/etc/docker/daemon.json`` cannot leak in.
* A port published on a user-defined network binds every address (dockerd's ``--ip``
  applies to the default bridge only), so two engines running the same release collide on
  its port. An engine given a ``NetNamespace`` runs in that network namespace (``nsenter
  --net``, keeping the host's mounts, so tmpfs mounts made for it are shared), with the
  namespace's own docker0: an isolated host with nothing but its loopback, as an air-gapped
  device is. Whatever must reach its published ports runs there too (``NetNamespace.command``).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn, Protocol

import docker
import pytest

__all__ = [
    "ENGINE_BINARIES",
    "DockerEngine",
    "HttpResponse",
    "NetNamespace",
    "RealPartError",
    "Registry",
    "RegistryFactory",
    "busybox_image",
    "fetch",
    "log_tail",
    "processes_mentioning",
    "push_to_registry",
    "require",
    "sha256_digest",
    "start_docker_engine",
    "start_net_namespace",
    "start_registry",
    "unavailable",
]

ENGINE_BINARIES = ("dockerd", "containerd", "runc", "docker-proxy", "ip", "nsenter")
_BLOCKS = ipaddress.IPv4Network("172.31.128.0/17")
_LOG_TAIL_LINES = 40
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_DOCKER_CLIENT_VARS = ("DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "DOCKER_API_VERSION")


class RealPartError(Exception):
    """A real part (daemon, registry, tool) could not be started, used or stopped."""

    def __init__(self, message: str, *, log: Path | None = None) -> None:
        super().__init__(message)
        # read now: the part's temp dir, log included, is removed before anyone reports this
        self.log_tail = None if log is None else f"--- last lines of {log} ---\n{log_tail(log)}"

    def diagnostics(self) -> str:
        """The message, followed by the tail of the part's log when there is one."""
        return str(self) if self.log_tail is None else f"{self}\n{self.log_tail}"


# --- the CI rule -------------------------------------------------------------------------


def unavailable(reason: str) -> NoReturn:
    """End the current test: a failure when ``CI`` is set, a skip otherwise."""
    if os.environ.get("CI"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def require(binary: str) -> str:
    """Return the path of ``binary`` on PATH, or end the test as ``unavailable``."""
    path = shutil.which(binary)
    if path is None:
        unavailable(f"{binary} not found on PATH={os.environ.get('PATH', '')}")
    return path


def start_docker_engine(**options: Any) -> DockerEngine:
    """A started ``DockerEngine``, or the test ended as ``unavailable``."""
    for binary in ENGINE_BINARIES:
        require(binary)
    try:
        return DockerEngine(**options)
    except RealPartError as e:
        reason = e.diagnostics()
    unavailable(reason)  # outside ``except``: the report shows the reason, not a chained traceback


def start_net_namespace() -> NetNamespace:
    """A new ``NetNamespace``, or the test ended as ``unavailable``."""
    for binary in ("ip", "nsenter"):
        require(binary)
    try:
        return NetNamespace()
    except RealPartError as e:
        reason = e.diagnostics()
    unavailable(reason)


def start_registry(**options: Any) -> Registry:
    """A started ``Registry``, or the test ended as ``unavailable``."""
    require("docker-registry")
    try:
        return Registry(**options)
    except RealPartError as e:
        reason = e.diagnostics()
    unavailable(reason)  # outside ``except``: the report shows the reason, not a chained traceback


class RegistryFactory(Protocol):
    """What the ``registry_factory`` fixture hands out: starts one more registry."""

    def __call__(self, *, config: Mapping[str, Any] | None = None) -> Registry: ...


# --- small helpers -----------------------------------------------------------------------


def log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log, without containerd's gRPC chatter."""
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        return f"(cannot read {path}: {e})"
    kept = [line for line in text.splitlines() if "[core]" not in line]
    return "\n".join(kept[-lines:])


def _run(argv: Sequence[str], *, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def _check(argv: Sequence[str]) -> None:
    done = _run(argv)
    if done.returncode != 0:
        raise RealPartError(f"`{' '.join(argv)}` exited {done.returncode}: {done.stderr.strip()}")


def _wait_until(ready: Callable[[], bool], *, timeout: float, what: str, alive: Callable[[], bool], log: Path) -> None:
    """Poll ``ready()`` every 0.1 s until true; raise if ``alive()`` turns false or time runs out."""
    deadline = time.monotonic() + timeout
    while not ready():
        if not alive():
            raise RealPartError(f"{what} exited before it was ready", log=log)
        if time.monotonic() > deadline:
            raise RealPartError(f"{what} not ready after {timeout:.0f} s", log=log)
        time.sleep(0.1)
    if not alive():  # answered, but it died: someone else may hold the port it was given
        raise RealPartError(f"{what} exited right after it answered", log=log)


_START_FAULTS = (docker.errors.DockerException, OSError, subprocess.SubprocessError)


@contextlib.contextmanager
def _stopped_on_failure(stop: Callable[[], None], *, what: str, log: Path) -> Iterator[None]:
    """On failure, clean up with ``stop`` and raise ``RealPartError`` holding the log tail."""
    try:
        yield
    except RealPartError:
        stop()  # removes the log, which the error has already read
        raise
    except _START_FAULTS as e:
        error = RealPartError(f"{what} did not start: {e}", log=log)
        stop()
        raise error from e
    except BaseException:
        stop()
        raise


def _stop_process(process: subprocess.Popen[bytes], *, grace: float) -> None:
    """SIGTERM, wait ``grace`` seconds, then SIGKILL."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@dataclass(frozen=True)
class HttpResponse:
    """An HTTP answer read in full."""

    status: int
    headers: Mapping[str, str]  # names in lower case
    body: bytes


def fetch(url: str, *, headers: Mapping[str, str] | None = None, timeout: float = 10.0) -> HttpResponse:
    """GET ``url`` without any proxy from the environment; HTTP errors are answers too."""
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with _NO_PROXY.open(request, timeout=timeout) as response:
            return HttpResponse(response.status, _lower(response.headers.items()), response.read())
    except urllib.error.HTTPError as e:
        with e:
            return HttpResponse(e.code, _lower(e.headers.items()), e.read())


def _lower(headers: Iterator[tuple[str, str]] | list[tuple[str, str]]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers}


# --- network block for one engine --------------------------------------------------------


@dataclass(frozen=True)
class _NetBlock:
    """A /21 owned by one engine: its bridge on the first /24, user networks in the upper /22."""

    network: ipaddress.IPv4Network

    @property
    def bridge(self) -> str:
        return f"sl-br-{self.network.network_address.packed[2]}"

    @property
    def bridge_address(self) -> str:
        return f"{self.network.network_address + 1}/24"

    @property
    def pool(self) -> str:
        upper = list(self.network.subnets(new_prefix=22))[1]
        return f"base={upper},size=26"

    @property
    def forward_rule(self) -> list[str]:
        net = str(self.network)
        comment = ["-m", "comment", "--comment", f"sealift tests {self.bridge}"]
        return ["FORWARD", "-s", net, "-d", net, *comment, "-j", "ACCEPT"]


def _host_networks() -> list[ipaddress.IPv4Network]:
    """Networks on this host's interfaces and routes (addresses as /32 when bare)."""
    nets: list[ipaddress.IPv4Network] = []
    for line in _run(["ip", "-o", "-4", "addr", "show"]).stdout.splitlines():
        nets.append(ipaddress.IPv4Interface(line.split()[3]).network)
    for line in _run(["ip", "-4", "route", "show", "table", "all"]).stdout.splitlines():
        dest = line.split()[0]
        if dest[0].isdigit():
            nets.append(ipaddress.IPv4Network(dest, strict=False))
    return nets


def _links_in(network: ipaddress.IPv4Network) -> list[str]:
    """Names of links holding an IPv4 address inside ``network``."""
    names = []
    for line in _run(["ip", "-o", "-4", "addr", "show"]).stdout.splitlines():
        fields = line.split()
        if ipaddress.IPv4Interface(fields[3]).ip in network:
            names.append(fields[1])
    return names


def _claim_block() -> _NetBlock:
    """Create the bridge of the highest free block; its name is the claim."""
    used = _host_networks()
    for network in reversed(list(_BLOCKS.subnets(new_prefix=21))):
        block = _NetBlock(network)
        if any(network.overlaps(u) for u in used):
            continue
        if _run(["ip", "link", "add", block.bridge, "type", "bridge"]).returncode != 0:
            continue  # another engine holds it, or a crashed run left it behind
        try:
            _check(["ip", "addr", "add", block.bridge_address, "dev", block.bridge])
            _check(["ip", "link", "set", block.bridge, "up"])
        except RealPartError:
            _run(["ip", "link", "del", block.bridge])
            raise
        return block
    raise RealPartError(f"no free /21 in {_BLOCKS} for a test bridge; leftover sl-br-* links from a crash?")


def _open_forwarding(block: _NetBlock) -> None:
    if shutil.which("iptables") is not None:  # no iptables, no FORWARD policy to get past
        _check(["iptables", "-w", "-I", *block.forward_rule])


def _release_block(block: _NetBlock) -> None:
    """Delete the rule and every bridge addressed in the block (docker's br-* included)."""
    if shutil.which("iptables") is not None:
        _run(["iptables", "-w", "-D", *block.forward_rule])
    for name in _links_in(block.network):
        if name == block.bridge or name.startswith("br-"):
            _run(["ip", "link", "del", name])
    _run(["ip", "link", "del", block.bridge])


# --- leftovers of a daemon that did not shut down cleanly --------------------------------


def processes_mentioning(text: str) -> list[int]:
    """Processes whose command line contains ``text`` (here: an engine's own temp dir)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if text.encode() in cmdline:
            pids.append(int(entry.name))
    return pids


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (its children, theirs, ...), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill_leftovers(workdir: Path) -> None:
    """SIGKILL containerd and shims started by our dockerd, if it died without stopping them."""
    for pid in processes_mentioning(str(workdir)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while processes_mentioning(str(workdir)) and time.monotonic() < deadline:
        time.sleep(0.1)


def _mounts_under(workdir: Path) -> list[str]:
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if point.startswith(f"{workdir}/"):
            points.append(point)
    return sorted(points, key=len, reverse=True)


def _unmount_leftovers(workdir: Path) -> None:
    """Lazily unmount overlay and netns mounts that a clean shutdown would have removed."""
    for point in _mounts_under(workdir):
        _run(["umount", "-l", point])


# --- an isolated host ------------------------------------------------------------------


class NetNamespace:
    """A network namespace with only its loopback up (``ip netns``): a host of its own on this one.
    ``command`` runs a program in it. Use ``delete()`` or a ``with`` block."""

    def __init__(self) -> None:
        self.name = f"sl-ns-{secrets.token_hex(4)}"
        _check(["ip", "netns", "add", self.name])
        try:
            _check(["ip", "-n", self.name, "link", "set", "lo", "up"])
        except RealPartError:
            self.delete()
            raise

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run in this namespace's network (the host's mounts and files stay in view)."""
        return ["nsenter", f"--net=/run/netns/{self.name}", *argv]

    def delete(self) -> None:
        _run(["ip", "netns", "delete", self.name])

    def __enter__(self) -> NetNamespace:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.delete()


# --- the Docker engine -------------------------------------------------------------------


class DockerEngine:
    """A private dockerd: own data-root, exec-root, socket, bridge and address block.

    It has stand-ins for the NVIDIA container toolkit: a runtime registered as ``nvidia`` (runc
    itself), and ``nvidia-container-runtime-hook`` on its PATH, which makes Docker offer its
    ``nvidia`` device driver (GPU device requests); the hook only records each call in
    ``nvidia_hook_log``. ``host`` is the ``unix://`` URL, ``client`` a docker SDK client for it, ``workdir`` the
    temp dir holding everything (``root/`` is the data-root), ``startup_s`` how long the
    daemon took to answer. Use ``stop()`` or a ``with`` block.
    """

    def __init__(self, *, extra_args: Sequence[str] = (), start_timeout: float = 60.0, netns: NetNamespace | None = None) -> None:
        self.netns = netns
        self.workdir = Path(tempfile.mkdtemp(prefix="sl-dk-", dir="/tmp"))
        self.host = f"unix://{self.workdir}/docker.sock"
        self.log = self.workdir / "dockerd.log"
        self._block: _NetBlock | None = None
        self._holds_block = False
        self._process: subprocess.Popen[bytes] | None = None
        self._client: docker.DockerClient | None = None
        began = time.monotonic()
        with _stopped_on_failure(self.stop, what="dockerd", log=self.log):
            self._start(extra_args, start_timeout)
        self.startup_s = time.monotonic() - began

    @property
    def client(self) -> docker.DockerClient:
        """A docker SDK client for this engine, closed by ``stop()``."""
        if self._client is None:
            raise RealPartError(f"dockerd at {self.host} is not running")
        return self._client

    @property
    def data_root(self) -> Path:
        return self.workdir / "root"

    @property
    def nvidia_hook_log(self) -> Path:
        """One line per call of the stand-in NVIDIA hook: its arguments."""
        return self.workdir / "nvidia-hook.log"

    @property
    def bridge(self) -> str:
        """The engine's default bridge (containers on ``network_mode="bridge"``)."""
        assert self._block is not None
        return self._block.bridge

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        """The /21 holding the default bridge and every network this engine creates."""
        assert self._block is not None
        return self._block.network

    def env(self) -> dict[str, str]:
        """This process's environment, pointed at this engine, for subprocesses."""
        kept = {k: v for k, v in os.environ.items() if k not in _DOCKER_CLIENT_VARS}
        return {**kept, "DOCKER_HOST": self.host}

    def _start(self, extra_args: Sequence[str], timeout: float) -> None:
        # (1) own bridge and address block, so we never share docker0 or its chains (a namespace has its own)
        if self.netns is None:
            self._block = _claim_block()
            self._holds_block = True
            _open_forwarding(self._block)
        self._extra_args = tuple(extra_args)
        self._launch(timeout)

    def _launch(self, timeout: float) -> None:
        # (2) the daemon, in its own session so a Ctrl-C reaches pytest's teardown, not it
        extra_args = self._extra_args
        (self.workdir / "daemon.json").write_text("{}\n")
        tools = self.workdir / "bin"
        tools.mkdir(exist_ok=True)
        hook = tools / "nvidia-container-runtime-hook"  # given the container's state on stdin, as an OCI hook is
        hook.write_text(f'#!/bin/sh\ncat >/dev/null\necho "$@" >> {self.nvidia_hook_log}\n')
        hook.chmod(0o755)
        with self.log.open("ab") as log:
            argv = [*self._argv(self._block), *extra_args]
            self._process = subprocess.Popen(
                self.netns.command(argv) if self.netns else argv,
                env={**os.environ, "PATH": f"{tools}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}"},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        # (3) ready when /_ping answers; then a client that negotiates the API version
        _wait_until(self._pings, timeout=timeout, what="dockerd", alive=self._alive, log=self.log)
        self._client = docker.DockerClient(base_url=self.host, version="auto", timeout=120)
        self._client.ping()

    def _argv(self, block: _NetBlock | None) -> list[str]:
        w = self.workdir
        return [
            "dockerd",
            f"--config-file={w}/daemon.json",
            f"--data-root={w}/root",
            f"--exec-root={w}/exec",
            f"--pidfile={w}/docker.pid",
            f"--host={self.host}",
            *([f"--bridge={block.bridge}", f"--default-address-pool={block.pool}"] if block else []),
            "--iptables=false",
            "--ip-forward=false",
            "--userland-proxy=true",
            "--add-runtime=nvidia=runc",
        ]

    def _alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def restart(self, *, timeout: float = 60.0) -> None:
        """Stop the daemon cleanly (as `systemctl restart docker` does) and start it again on the same data."""
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._process is not None:
            _stop_process(self._process, grace=30)
            self._process = None
        _kill_leftovers(self.workdir)
        with _stopped_on_failure(self.stop, what="dockerd", log=self.log):
            self._launch(timeout)

    def crash_and_restart(self, *, timeout: float = 60.0) -> None:
        """SIGKILL the daemon and all it started (containerd, shims, the containers), as a power cut
        would, then start it again on the same data: containers with a restart policy come back."""
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._process is not None:
            below = _descendants(self._process.pid)  # its port proxies name no directory of ours
            self._process.kill()
            self._process.wait(timeout=30)
            self._process = None
            for pid in below:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        _kill_leftovers(self.workdir)
        _unmount_leftovers(self.workdir)
        # their pid files would outlive them (a killed process not yet reaped still answers kill -0)
        for stale in (self.workdir / "docker.pid", self.workdir / "exec" / "containerd" / "containerd.pid"):
            stale.unlink(missing_ok=True)
        with _stopped_on_failure(self.stop, what="dockerd", log=self.log):
            self._launch(timeout)

    def _pings(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(2)
                sock.connect(str(self.workdir / "docker.sock"))
                sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
                return sock.recv(64).split(b" ")[1:2] == [b"200"]
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the daemon and remove all it left: processes, mounts, bridges, rule, temp dir."""
        self._remove_containers()  # (1) else shutdown waits 10 s per container that ignores SIGTERM
        if self._process is not None:
            _stop_process(self._process, grace=30)  # (2) a clean shutdown unmounts and stops containerd
            self._process = None
        _kill_leftovers(self.workdir)  # (3) only after a SIGKILL or crash
        _unmount_leftovers(self.workdir)
        if self._block is not None and self._holds_block:
            _release_block(self._block)  # once: another engine may claim the name right after
            self._holds_block = False
        shutil.rmtree(self.workdir, ignore_errors=True)
        if self.workdir.exists():
            raise RealPartError(f"could not remove {self.workdir}")

    def _remove_containers(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        # docker SDK 7.2 leaks a socket (ResourceWarning) when its connect fails: ask first
        if not (self._alive() and self._pings()):
            client.close()
            return
        try:
            for container in client.containers.list(all=True):
                container.remove(force=True)
            client.networks.prune()
        except (docker.errors.DockerException, OSError):
            pass  # the daemon is already in trouble; the steps after this one clean up
        finally:
            client.close()

    def __enter__(self) -> DockerEngine:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


# --- the registry ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _merged(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` merged in, recursively for nested mappings."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


@dataclass(frozen=True)
class Request:
    """One line of a registry's access log."""

    method: str
    path: str
    status: int
    bytes: int

    @property
    def blob(self) -> str | None:
        """The digest of the blob read (``GET .../blobs/DIGEST``) or uploaded (``PUT ...?digest=DIGEST``), if any."""
        found = _BLOB_IN_PATH.search(self.path)
        return found.group(1) if found and ("/blobs/sha256:" in self.path or "/blobs/uploads/" in self.path) else None


_ACCESS_LINE = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[0-9.]+" (?P<status>\d{3}) (?P<bytes>\d+)')
_BLOB_IN_PATH = re.compile(r"(sha256:[0-9a-f]{64})")


class Registry:
    """A CNCF distribution registry on ``127.0.0.1``, plain HTTP, no auth, storage in a temp dir.

    ``address`` is ``127.0.0.1:PORT``, ``url`` is ``http://`` + address. ``config`` is merged
    into the generated configuration, e.g. ``{"proxy": {"remoteurl": other.url}}`` for a
    pull-through mirror. Use ``stop()`` or a ``with`` block.
    """

    def __init__(self, *, config: Mapping[str, Any] | None = None, start_timeout: float = 30.0) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="sl-reg-", dir="/tmp"))
        self.log = self.workdir / "registry.log"
        self._process: subprocess.Popen[bytes] | None = None
        with _stopped_on_failure(self.stop, what="docker-registry", log=self.log):
            self._start_on_some_port(config or {}, start_timeout)

    @property
    def tls(self) -> bool:
        return "tls" in json.loads((self.workdir / "config.yml").read_text())["http"]

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.address}"

    def _start_on_some_port(self, extra: Mapping[str, Any], timeout: float) -> None:
        for attempt in range(3):  # the free port may be taken between probe and bind
            self.address = f"127.0.0.1:{_free_port()}"
            self._write_config(extra)
            try:
                self._start(timeout)
                break
            except RealPartError:
                if self._alive() or attempt == 2:
                    raise

    def _write_config(self, extra: Mapping[str, Any]) -> None:
        config: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": False}},  # tests count requests (see requests())
            "storage": {
                "filesystem": {"rootdirectory": str(self.workdir / "storage")},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {"addr": self.address, "secret": secrets.token_hex(16)},
        }
        # JSON is YAML, so the registry reads this without a YAML writer here
        (self.workdir / "config.yml").write_text(json.dumps(_merged(config, extra), indent=2))

    def _start(self, timeout: float) -> None:
        argv = ["docker-registry", "serve", str(self.workdir / "config.yml")]
        with self.log.open("wb") as log:
            self._process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        _wait_until(self._answers, timeout=timeout, what="docker-registry", alive=self._alive, log=self.log)

    def _alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _answers(self) -> bool:
        try:
            if self.tls:  # its certificates are the test's to check: here, only that it listens
                host, port = self.address.rsplit(":", 1)
                with socket.create_connection((host, int(port)), timeout=2):
                    return True
            return fetch(f"{self.url}/v2/", timeout=2).status in (200, 401)  # 401: it asks for credentials
        except OSError:
            return False

    def requests(self) -> list[Request]:
        """Every request the registry answered so far, from its access log, oldest first."""
        return [Request(m["method"], m["path"], int(m["status"]), int(m["bytes"]))
                for m in _ACCESS_LINE.finditer(self.log.read_text(errors="replace"))]

    def blob_reads(self, since: int = 0) -> collections.Counter[str]:
        """How often the registry served each blob in full, since its ``since``-th request."""
        return collections.Counter(r.blob for r in self.requests()[since:] if r.method == "GET" and r.status == 200 and r.blob)

    def blob_uploads(self) -> collections.Counter[str]:
        """How often each blob was uploaded to the registry."""
        return collections.Counter(r.blob for r in self.requests()
                                   if r.method == "PUT" and r.status == 201 and "/blobs/uploads/" in r.path)

    def blob_path(self, digest: str) -> Path:
        """Where the registry keeps a blob's bytes (to damage it on purpose)."""
        hexdigest = digest.removeprefix("sha256:")
        return self.workdir / "storage" / "docker" / "registry" / "v2" / "blobs" / "sha256" / hexdigest[:2] / hexdigest / "data"

    def stop(self) -> None:
        """Stop the registry and delete its storage."""
        if self._process is not None:
            _stop_process(self._process, grace=10)
            self._process = None
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


class CuttingProxy:
    """A TCP proxy on ``127.0.0.1`` in front of ``target`` (``HOST:PORT``) that, once armed with
    :meth:`cut_after`, cuts the connection (both sides) after passing that many more bytes of
    answers (or, with ``requests``, of what the client sends), then passes everything again: a link
    that drops in the middle of a transfer. ``sent`` counts the bytes clients sent through it."""

    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        self.target = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.cuts = 0
        self.sent = 0
        self._left: int | None = None
        self._answers = True
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def cut_after(self, n: int, *, requests: bool = False) -> None:
        with self._lock:
            self._left, self._answers = n, not requests

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, answers: bool) -> None:
        try:
            while data := src.recv(65536):
                if not answers:
                    with self._lock:
                        self.sent += len(data)
                if answers == self._answers:
                    with self._lock:
                        if self._left is not None and len(data) >= self._left:
                            data, cut = data[: self._left], True
                            self._left, self.cuts = None, self.cuts + 1
                        else:
                            cut = False
                            if self._left is not None:
                                self._left -= len(data)
                    dst.sendall(data)
                    if cut:
                        for sock in (src, dst):
                            sock.shutdown(socket.SHUT_RDWR)  # also wakes the other direction's thread
                        return
                else:
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.close()

    def close(self) -> None:
        self.listener.close()


# --- images ------------------------------------------------------------------------------

_BUSYBOX_LINKS = ("sh", "echo", "sleep")


def _busybox_rootfs() -> bytes:
    """A tar of ``/bin/busybox`` (from the host's static busybox) and a few applet links."""
    busybox = Path(require("busybox")).resolve().read_bytes()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for entry in _tar_entries(busybox):
            tar.addfile(entry, io.BytesIO(busybox) if entry.isfile() else None)
    return buffer.getvalue()


def _tar_entries(busybox: bytes) -> Iterator[tarfile.TarInfo]:
    directory = tarfile.TarInfo("bin")
    directory.type, directory.mode = tarfile.DIRTYPE, 0o755
    yield directory
    binary = tarfile.TarInfo("bin/busybox")
    binary.size, binary.mode = len(busybox), 0o755
    yield binary
    for name in _BUSYBOX_LINKS:
        link = tarfile.TarInfo(f"bin/{name}")
        link.type, link.linkname, link.mode = tarfile.SYMTYPE, "busybox", 0o777
        yield link


def _split_tag(ref: str) -> tuple[str, str]:
    """``repo:tag`` into its parts; a colon before the last slash belongs to a registry port."""
    repository, colon, tag = ref.rpartition(":")
    if not colon or "/" in tag:
        return ref, "latest"
    return repository, tag


def busybox_image(engine: DockerEngine, tag: str) -> str:
    """Import a tiny busybox image into ``engine`` as ``tag``; its CMD echoes hello. Returns the ID."""
    repository, name = _split_tag(tag)
    engine.client.api.import_image_from_data(
        _busybox_rootfs(), repository=repository, tag=name, changes=['CMD ["/bin/sh", "-c", "echo hello"]']
    )
    return str(engine.client.images.get(f"{repository}:{name}").id)


def push_to_registry(src: str, dest_ref: str, *, src_daemon_host: str | None = None, all_images: bool = False) -> None:
    """``skopeo copy SRC docker://DEST_REF`` over plain HTTP; ``all_images`` copies every platform.

    ``src`` is any skopeo source (``oci:DIR:TAG``, ``docker-daemon:REF`` with
    ``src_daemon_host``, ``docker://REF`` of another test registry).
    """
    argv = [require("skopeo"), "--insecure-policy", "copy", "--dest-tls-verify=false"]
    if src.startswith("docker://"):
        argv.append("--src-tls-verify=false")
    if src_daemon_host is not None:
        argv += ["--src-daemon-host", src_daemon_host]
    if all_images:
        argv.append("--all")
    done = _run([*argv, src, f"docker://{dest_ref}"], timeout=300)
    if done.returncode != 0:
        raise RealPartError(f"skopeo copy {src} -> docker://{dest_ref} exited {done.returncode}: {done.stderr}")


def sha256_digest(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``, as registries name blobs and manifests."""
    return f"sha256:{hashlib.sha256(data).hexdigest()}"
