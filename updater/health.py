"""Health checks: is the release that was just started serving, and does it stay that way?

Each check from the bundle (the container's own HEALTHCHECK, HTTP, TCP, a command in the
container, and the inference check: a golden input whose answer must match, within a tolerance
and a latency budget) must pass before the policy's deadline (or its own); then, for the
stabilisation window, every container must keep running without restarts or turning unhealthy.
"""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from updater.errors import Unhealthy
from updater.healthpolicy import Check, CheckType, HealthPolicy
from updater.oci import parse_json
from updater.runtime import ContainerState, Runtime

__all__ = ["HealthResult", "Timing", "Watched", "wait_healthy"]

_POLL = 0.5
_ANSWER_BYTES = 1 << 20


@dataclass(frozen=True, kw_only=True)
class Timing:
    """How one check went: passed or not, how long after the checks began (s), and how long its last
    run took (s; for the inference check, the answer's latency)."""

    check: str
    type: str
    ok: bool
    after: float
    took: float

    def to_json(self) -> dict[str, Any]:
        return {"check": self.check, "type": self.type, "ok": self.ok, "after": round(self.after, 3), "took": round(self.took, 4)}


@dataclass(frozen=True, kw_only=True)
class HealthResult:
    ok: bool
    check: str = ""
    detail: str = ""
    fault: str = Unhealthy.fault  # what kind of failure, when not ok: the release's health, or what kept it from starting
    timings: tuple[Timing, ...] = ()  # each check that passed, and the one that failed


@dataclass(frozen=True, kw_only=True)
class Watched:
    """The release whose health is checked: its containers on the engine (``app``, ``slot``), its staged
    slot (the inference check's golden files), and the folder of its opened secrets (bearer tokens)."""

    runtime: Runtime
    app: str
    slot: str
    slot_dir: Path
    secrets: Path | None = None

    def containers(self) -> dict[str, ContainerState]:
        return self.runtime.containers(self.app, self.slot)


def wait_healthy(watched: Watched, policy: HealthPolicy, *, now: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> HealthResult:
    """Run the checks until they all pass or their deadline passes, then watch the stabilisation window."""
    start = now()
    pending = list(policy.checks)
    last: dict[str, tuple[str, float]] = {}
    timings: list[Timing] = []
    while pending:
        for check in list(pending):
            began = now()
            passed, detail = _run(check, watched)
            last[check.name] = detail, now() - began
            if passed:
                pending.remove(check)
                timings.append(Timing(check=check.name, type=check.type.value, ok=True, after=now() - start, took=now() - began))
            elif now() - start > (check.deadline or policy.deadline):
                return _failed(check, detail, timings, start=start, took=now() - began, now=now)
        if pending:
            if now() - start > policy.deadline:
                check = pending[0]
                detail, took = last.get(check.name, ("", 0.0))
                return _failed(check, detail, timings, start=start, took=took, now=now)
            sleep(_POLL)
    stable = _stable(watched, policy, now=now, sleep=sleep)
    return HealthResult(ok=stable.ok, check=stable.check, detail=stable.detail, timings=(*timings, Timing(
        check="stabilisation", type="stabilisation", ok=stable.ok, after=now() - start, took=policy.stabilisation)))


def _failed(check: Check, detail: str, timings: list[Timing], *, start: float, took: float, now: Callable[[], float]) -> HealthResult:
    failed = Timing(check=check.name, type=check.type.value, ok=False, after=now() - start, took=took)
    return HealthResult(ok=False, check=check.name, detail=detail, timings=(*timings, failed))


def _stable(watched: Watched, policy: HealthPolicy, *, now: Callable[[], float], sleep: Callable[[float], None]) -> HealthResult:
    restarts = {name: c.restarts for name, c in watched.containers().items()}
    end = now() + policy.stabilisation
    while True:
        for name, container in watched.containers().items():
            if not container.running:
                detail = f"{name} is {container.status} (exit code {container.exit_code})"
                return HealthResult(ok=False, check="stabilisation", detail=detail)
            if container.restarts != restarts.get(name):
                return HealthResult(ok=False, check="stabilisation", detail=f"{name} restarted")
            if container.health == "unhealthy":
                return HealthResult(ok=False, check="stabilisation", detail=f"{name} turned unhealthy")
        if now() >= end:
            return HealthResult(ok=True)
        sleep(_POLL)


def _run(check: Check, watched: Watched) -> tuple[bool, str]:
    container = watched.containers().get(check.service)
    if container is None:
        return False, f"service {check.service} has no container"
    if not container.running:
        return False, f"{check.service} is {container.status}"
    try:
        return _CHECKS[check.type](check, container, watched)
    except OSError as e:
        return False, f"{type(e).__name__}: {e}"


def _container_health(check: Check, container: ContainerState, watched: Watched) -> tuple[bool, str]:
    if container.health is None:
        return True, "running (no HEALTHCHECK)"
    return container.health == "healthy", f"{container.health}: {container.health_output[:200]}"


def _http(check: Check, container: ContainerState, watched: Watched) -> tuple[bool, str]:
    url = _url(container, check.port, check.path or "/")
    try:
        request = urllib.request.Request(url, headers=_auth(check, watched))
        with urllib.request.urlopen(request, timeout=5) as response:
            status = response.status
    except urllib.error.HTTPError as e:
        status = e.code
    expected = check.expect_status or 200
    return status == expected, f"GET {check.path or '/'} answered {status}, expected {expected}"


def _tcp(check: Check, container: ContainerState, watched: Watched) -> tuple[bool, str]:
    with socket.create_connection(_published(container, check.port), timeout=5):
        return True, f"port {check.port} accepts connections"


def _exec(check: Check, container: ContainerState, watched: Watched) -> tuple[bool, str]:
    code, output = watched.runtime.run_in(watched.app, watched.slot, check.service, check.command or ())
    return code == 0, f"exit code {code}: {output.strip()[:200]}"


def _inference(check: Check, container: ContainerState, watched: Watched) -> tuple[bool, str]:
    body = (watched.slot_dir / "configs" / str(check.input)).read_bytes()
    try:
        with open(watched.slot_dir / "configs" / str(check.expected), "rb") as f:
            expected = parse_json(f.read(_ANSWER_BYTES + 1), f"golden output {check.expected}", Unhealthy)
    except Unhealthy as e:
        return False, e.diagnostics()
    url = _url(container, check.port, str(check.path))
    started = time.monotonic()
    try:
        request = urllib.request.Request(url, data=body, method="POST", headers=_auth(check, watched))
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = parse_json(response.read(_ANSWER_BYTES), "the answer", Unhealthy)
    except urllib.error.HTTPError as e:
        return False, f"POST {check.path} answered {e.code}"
    except Unhealthy as e:
        return False, f"POST {check.path} did not answer strict JSON ({e.diagnostics()})"
    latency = time.monotonic() - started
    if check.max_latency is not None and latency > check.max_latency:
        return False, f"answered in {latency:.2f}s, more than the {check.max_latency:g}s allowed"
    mismatch = _differs(answer, expected, check.tolerance or 0.0, "")
    return mismatch is None, mismatch or f"answer matches the golden output in {latency:.2f}s"


def _auth(check: Check, watched: Watched) -> dict[str, str]:
    """The bearer token a check sends: the secret the service gets, read from the updater's tmpfs."""
    if check.secret is None:
        return {}
    if watched.secrets is None:
        raise OSError(f"secret {check.secret} is not open for the check")
    try:
        token = (watched.secrets / check.service / check.secret).read_text().strip()
    except OSError as e:
        raise OSError(f"secret {check.secret} is not open for the check") from e
    return {"Authorization": f"Bearer {token}"}


def _differs(found: Any, expected: Any, tolerance: float, where: str) -> str | None:
    """Where ``found`` departs from ``expected`` (numbers may differ by ``tolerance``), or None."""
    if isinstance(expected, bool) or not isinstance(expected, int | float):
        if isinstance(expected, dict) and isinstance(found, dict):
            return next((d for k, v in expected.items() if (d := _differs(found.get(k), v, tolerance, f"{where}.{k}"))), None)
        if isinstance(expected, list) and isinstance(found, list) and len(found) == len(expected):
            return next((d for i, (f, e) in enumerate(zip(found, expected, strict=True))
                         if (d := _differs(f, e, tolerance, f"{where}[{i}]"))), None)
        return None if found == expected else f"answer{where} is {str(found)[:60]}, expected {str(expected)[:60]}"
    if isinstance(found, bool) or not isinstance(found, int | float) or abs(found - expected) > tolerance:
        return f"answer{where} is {found}, expected {expected} ± {tolerance:g}"
    return None


def _published(container: ContainerState, port: int | None) -> tuple[str, int]:
    """Where the container's ``port`` is reached from the host: where it is published (loopback when it is
    bound to every address), or else the container's own address (a service behind the ingress
    publishes nothing). A service on the host's network is on loopback."""
    if container.host_network:
        return "127.0.0.1", int(port or 0)
    bindings = container.ports.get(f"{port}/tcp") or ()
    if not bindings and container.address:
        return container.address, int(port or 0)
    if not bindings:
        raise OSError(f"port {port} is not published on the host")
    binding = min(bindings, key=lambda b: ":" in b.host)  # IPv4 first: each family may have its own port
    loopback = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}
    return loopback.get(binding.host, binding.host), binding.port


def _url(container: ContainerState, port: int | None, path: str) -> str:
    host, published = _published(container, port)
    return f"http://[{host}]:{published}{path}" if ":" in host else f"http://{host}:{published}{path}"


_CHECKS: dict[CheckType, Callable[[Check, ContainerState, Watched], tuple[bool, str]]] = {
    CheckType.CONTAINER: _container_health,
    CheckType.HTTP: _http,
    CheckType.TCP: _tcp,
    CheckType.EXEC: _exec,
    CheckType.INFERENCE: _inference,
}
