"""The updater benchmark: how long the example's service is away during an update and after a
failed one, on a real Docker engine started for the run (Debian's docker.io).

- **service gap**: while an update from 1.0.0 to 1.1.0 runs, ``/healthz`` is polled every 20 ms;
  the gap is the longest time between two good answers. The floor beside it is the new
  container's own start time (from the engine starting it to its first good answer): images are
  loaded before the switch, so the gap should exceed it by little. Target: at most start + 1 s.
- **rollback**: installing 1.3.0 (starts, never healthy, 5 s deadline): the time from the failed
  deadline (the updater's ``[7/7] roll back`` line) to 1.0.0 answering again. Target: at most 10 s.
- **behind the ingress** (Debian's HAProxy, configured by the updater): the example with no host
  port, routed by the ingress. Requests every 5 ms on one kept-alive connection through the
  ingress during an update (1.0.0 to 1.1.0) and during a rollback on demand: failed requests, the
  longest gap, p50 and p99 latency. Beside them, the same requests in steady state through the
  ingress and straight to the container. Targets: 0 failed requests; p99 added by the proxy at
  most 5 ms.
"""

from __future__ import annotations

import datetime as dt
import functools
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.builders import FAST_PORT, example_releases  # noqa: E402
from tests.realparts import DockerEngine, start_docker_engine  # noqa: E402
from updater.docker_runtime import DockerRuntime  # noqa: E402


class Poller:
    """Polls the service and remembers when it answered well."""

    def __init__(self) -> None:
        self.good: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{FAST_PORT}/healthz", timeout=1) as response:
                    if response.status == 200:
                        self.good.append(time.monotonic())
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.02)

    def __enter__(self) -> Poller:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join()

    def longest_gap(self) -> float:
        return max((b - a for a, b in zip(self.good, self.good[1:], strict=False)), default=0.0)

    def first_after(self, moment: float) -> float:
        return next(t for t in self.good if t > moment)


def measure(repeat: int) -> dict[str, Any]:
    from updater.install import Installer
    from updater.profiles import builtin_profile_dir, load_profiles
    from updater.trust import TrustedState

    cpu = load_profiles([builtin_profile_dir()])["x86_64-cpu"]
    engine = start_docker_engine()
    gaps, starts, rollbacks = [], [], []
    try:
        with tempfile.TemporaryDirectory(prefix="sealift-bench-update-") as work:
            releases = example_releases(Path(work), python=sys.executable)
            for round_ in range(repeat):
                state = Path(work) / f"device-{round_}"
                TrustedState(state).init(releases["root"])
                marks: dict[str, float] = {}
                def mark(line: str, marks: dict[str, float] = marks) -> None:
                    marks.setdefault(line.split("]")[0].strip("["), time.monotonic())

                installer = Installer(state_dir=state, runtime=DockerRuntime(engine.client), profile=cpu, log=mark)
                installer.install(releases["1.0.0"])
                with Poller() as poller:
                    time.sleep(0.5)
                    marks.clear()
                    installer.install(releases["1.1.0"])
                    time.sleep(0.5)
                gaps.append(poller.longest_gap())
                (container,) = engine.client.containers.list(filters={"label": ["dev.sealift.app=vision-app", "dev.sealift.slot=b"]})
                started = dt.datetime.fromisoformat(container.attrs["State"]["StartedAt"][:26] + "+00:00")
                started_mono = time.monotonic() - (dt.datetime.now(dt.UTC) - started).total_seconds()
                starts.append(poller.first_after(started_mono) - started_mono)
                with Poller() as poller:
                    marks.clear()
                    outcome = installer.install(releases["1.3.0"])
                    assert not outcome.committed
                    time.sleep(0.5)
                rollbacks.append(poller.first_after(marks["7/7"]) - marks["7/7"])
                for c in engine.client.containers.list(all=True, filters={"label": "dev.sealift.app=vision-app"}):
                    c.remove(force=True)
        ingress = measure_ingress(engine, repeat)
    finally:
        engine.stop()
    return {"gap_s": statistics.median(gaps), "start_s": statistics.median(starts), "rollback_s": statistics.median(rollbacks),
            "rounds": repeat, "ingress": ingress}


def measure_ingress(engine: DockerEngine, repeat: int) -> dict[str, Any]:
    """Switches behind the ingress under load, and the proxy's cost in steady state (see the module's docstring)."""
    from tests.ingress import HttpLoad, running_haproxy
    from updater.install import Installer
    from updater.profiles import builtin_profile_dir, load_profiles
    from updater.trust import TrustedState

    cpu = load_profiles([builtin_profile_dir()])["x86_64-cpu"]
    rounds: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="sealift-bench-ingress-") as work:
        releases = example_releases(Path(work), python=sys.executable, versions=("1.0.0", "1.1.0"), routed=True)
        for round_ in range(repeat):
            state, port = Path(work) / f"device-{round_}", _free_port()
            TrustedState(state).init(releases["root"])
            with running_haproxy(state, port, log=Path(work) / f"haproxy-{round_}.log"):
                installer = Installer(state_dir=state, runtime=DockerRuntime(engine.client), profile=cpu)
                installer.install(releases["1.0.0"])
                (container,) = engine.client.containers.list(filters={"label": "dev.sealift.app=vision-app"})
                address = next(iter(container.attrs["NetworkSettings"]["Networks"].values()))["IPAddress"]
                figures: dict[str, float] = {}
                for name, host, where in (("proxy", "127.0.0.1", port), ("direct", address, 8080)):
                    with HttpLoad(host, where) as steady:
                        time.sleep(3)
                    figures |= {f"{name}_p50_ms": steady.percentile(50) * 1000, f"{name}_p99_ms": steady.percentile(99) * 1000}
                for name, act in (("update", functools.partial(installer.install, releases["1.1.0"])), ("rollback", installer.rollback)):
                    with HttpLoad("127.0.0.1", port) as load:
                        time.sleep(0.5)
                        assert act().committed
                        time.sleep(0.5)
                    figures |= {f"{name}_failed": load.failed, f"{name}_requests": len(load.done),
                                f"{name}_gap_ms": load.longest_gap() * 1000, f"{name}_p50_ms": load.percentile(50) * 1000,
                                f"{name}_p99_ms": load.percentile(99) * 1000}
                rounds.append(figures)
                for c in engine.client.containers.list(all=True, filters={"label": "dev.sealift.app=vision-app"}):
                    c.remove(force=True)
    worst = {k: max(r[k] for r in rounds) for k in rounds[0] if k.endswith(("_failed", "_requests"))}
    return {**{k: statistics.median(r[k] for r in rounds) for k in rounds[0]}, **worst}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def print_report(figures: dict[str, Any]) -> None:
    print(f"update (median of {figures['rounds']}): service gap {figures['gap_s']:.2f} s against the new container's start "
          f"{figures['start_s']:.2f} s (gap - start = {figures['gap_s'] - figures['start_s']:+.2f} s, target <= +1 s); "
          f"back to the previous release {figures['rollback_s']:.2f} s after the failed deadline (target <= 10 s)")
    i = figures["ingress"]
    for name in ("update", "rollback"):
        print(f"behind the ingress, {name}: {i[f'{name}_failed']:.0f} of {i[f'{name}_requests']:.0f} requests failed "
              f"(target 0); longest gap {i[f'{name}_gap_ms']:.1f} ms; p50 {i[f'{name}_p50_ms']:.2f} ms, p99 {i[f'{name}_p99_ms']:.2f} ms")
    print(f"steady state: through the ingress p50 {i['proxy_p50_ms']:.2f} ms, p99 {i['proxy_p99_ms']:.2f} ms; straight to the "
          f"container p50 {i['direct_p50_ms']:.2f} ms, p99 {i['direct_p99_ms']:.2f} ms; added p99 "
          f"{i['proxy_p99_ms'] - i['direct_p99_ms']:+.2f} ms (target <= 5 ms)")
