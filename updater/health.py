"""Health checks: is the release that was just started serving, and does it stay that way?

Each check from the bundle (the container's own HEALTHCHECK, HTTP, TCP, a command in the
container, and the inference check: a golden input whose answer must match, within a tolerance
and a latency budget) must pass before the policy's deadline (or its own); then, for the
stabilisation window, every container must keep running without restarts or turning unhealthy.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from updater.appdef import Check, CheckType, HealthPolicy
from updater.errors import Unhealthy
from updater.runtime import LABEL_APP, LABEL_SLOT

__all__ = ["HealthResult", "wait_healthy"]

_POLL = 0.5
_ANSWER_BYTES = 1 << 20


@dataclass(frozen=True, kw_only=True)
class HealthResult:
    ok: bool
    check: str = ""
    detail: str = ""
    fault: str = Unhealthy.fault  # what kind of failure, when not ok: the release's health, or what kept it from starting


def wait_healthy(containers: Callable[[], dict[str, Any]], policy: HealthPolicy, slot_dir: Path, *,
                 now: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> HealthResult:
    """Run the checks until they all pass or their deadline passes, then watch the stabilisation window."""
    start = now()
    pending = list(policy.checks)
    last: dict[str, str] = {}
    while pending:
        for check in list(pending):
            passed, detail = _run(check, containers(), slot_dir)
            last[check.name] = detail
            if passed:
                pending.remove(check)
            elif now() - start > (check.deadline or policy.deadline):
                return HealthResult(ok=False, check=check.name, detail=detail)
        if pending:
            if now() - start > policy.deadline:
                check = pending[0]
                return HealthResult(ok=False, check=check.name, detail=last.get(check.name, ""))
            sleep(_POLL)
    return _stable(containers, policy, now=now, sleep=sleep)


def _stable(containers: Callable[[], dict[str, Any]], policy: HealthPolicy, *, now: Callable[[], float],
            sleep: Callable[[float], None]) -> HealthResult:
    restarts = {name: _restarts(c) for name, c in containers().items()}
    end = now() + policy.stabilisation
    while True:
        for name, container in containers().items():
            container.reload()
            state = container.attrs["State"]
            if state.get("Status") != "running":
                detail = f"{name} is {state.get('Status')} (exit code {state.get('ExitCode')})"
                return HealthResult(ok=False, check="stabilisation", detail=detail)
            if _restarts(container) != restarts.get(name):
                return HealthResult(ok=False, check="stabilisation", detail=f"{name} restarted")
            if (state.get("Health") or {}).get("Status") == "unhealthy":
                return HealthResult(ok=False, check="stabilisation", detail=f"{name} turned unhealthy")
        if now() >= end:
            return HealthResult(ok=True)
        sleep(_POLL)


def _restarts(container: Any) -> int:
    return int(container.attrs.get("RestartCount", 0))


def _run(check: Check, containers: dict[str, Any], slot_dir: Path) -> tuple[bool, str]:
    container = containers.get(check.service)
    if container is None:
        return False, f"service {check.service} has no container"
    container.reload()
    if container.attrs["State"].get("Status") != "running":
        return False, f"{check.service} is {container.attrs['State'].get('Status')}"
    try:
        return _CHECKS[check.type](check, container, slot_dir)
    except OSError as e:
        return False, f"{type(e).__name__}: {e}"


def _container_health(check: Check, container: Any, slot_dir: Path) -> tuple[bool, str]:
    health = container.attrs["State"].get("Health")
    if health is None:
        return True, "running (no HEALTHCHECK)"
    log = health.get("Log") or [{}]
    return health.get("Status") == "healthy", f"{health.get('Status')}: {str(log[-1].get('Output', '')).strip()[:200]}"


def _http(check: Check, container: Any, slot_dir: Path) -> tuple[bool, str]:
    url = _url(container, check.port, check.path or "/")
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=_auth(check, container, slot_dir)), timeout=5) as response:
            status = response.status
    except urllib.error.HTTPError as e:
        status = e.code
    expected = check.expect_status or 200
    return status == expected, f"GET {check.path or '/'} answered {status}, expected {expected}"


def _tcp(check: Check, container: Any, slot_dir: Path) -> tuple[bool, str]:
    with socket.create_connection(_published(container, check.port), timeout=5):
        return True, f"port {check.port} accepts connections"


def _exec(check: Check, container: Any, slot_dir: Path) -> tuple[bool, str]:
    result = container.exec_run(list(check.command or ()))
    output = result.output.decode(errors="replace").strip()[:200]
    return result.exit_code == 0, f"exit code {result.exit_code}: {output}"


def _inference(check: Check, container: Any, slot_dir: Path) -> tuple[bool, str]:
    body = (slot_dir / "configs" / str(check.input)).read_bytes()
    expected = json.loads((slot_dir / "configs" / str(check.expected)).read_text())
    url = _url(container, check.port, str(check.path))
    started = time.monotonic()
    try:
        request = urllib.request.Request(url, data=body, method="POST", headers=_auth(check, container, slot_dir))
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = json.loads(response.read(_ANSWER_BYTES))
    except urllib.error.HTTPError as e:
        return False, f"POST {check.path} answered {e.code}"
    except ValueError:
        return False, f"POST {check.path} did not answer JSON"
    latency = time.monotonic() - started
    if check.max_latency is not None and latency > check.max_latency:
        return False, f"answered in {latency:.2f}s, more than the {check.max_latency:g}s allowed"
    mismatch = _differs(answer, expected, check.tolerance or 0.0, "")
    return mismatch is None, mismatch or f"answer matches the golden output in {latency:.2f}s"


def _auth(check: Check, container: Any, slot_dir: Path) -> dict[str, str]:
    """The bearer token a check sends: the secret the service gets, read from the updater's tmpfs."""
    if check.secret is None:
        return {}
    labels = container.labels
    opened = slot_dir.parent.parent / "run" / f"{labels.get(LABEL_APP)}-{labels.get(LABEL_SLOT)}" / check.service / check.secret
    try:
        token = opened.read_text().strip()
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


def _published(container: Any, port: int | None) -> tuple[str, int]:
    """Where the container's ``port`` is published on the host: the address it is bound to (loopback
    when it is bound to every address), and the port."""
    bindings = (container.attrs["NetworkSettings"].get("Ports") or {}).get(f"{port}/tcp") or []
    if not bindings:
        raise OSError(f"port {port} is not published on the host")
    binding = min(bindings, key=lambda b: ":" in (b.get("HostIp") or ""))  # IPv4 first: each family may have its own port
    host = binding.get("HostIp") or ""
    loopback = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}
    return loopback.get(host, host), int(binding["HostPort"])


def _url(container: Any, port: int | None, path: str) -> str:
    host, published = _published(container, port)
    return f"http://[{host}]:{published}{path}" if ":" in host else f"http://{host}:{published}{path}"


_CHECKS: dict[CheckType, Callable[[Check, Any, Path], tuple[bool, str]]] = {
    CheckType.CONTAINER: _container_health,
    CheckType.HTTP: _http,
    CheckType.TCP: _tcp,
    CheckType.EXEC: _exec,
    CheckType.INFERENCE: _inference,
}
