"""The whole loop, on one machine: updates go down to two devices, their reports come back up.

Everything runs privately and is removed at the end: a Docker engine per device, and registries
on loopback (an origin, a site mirror, the site's reports registry with credentials, a DMZ hop,
the office's reports registry). The commands are the ones an operator types:

1. build and sign the example's releases 1.0.0 and 1.3.0 (1.3.0 starts but never gets healthy);
2. ``sealift push`` 1.0.0 to the origin and ``sealift mirror sync`` it to the site mirror;
3. device A (online) installs it from the site mirror (``sealift-updater run --once --source``);
   device B (air-gapped) from a medium written by ``sealift export``, in its watched directory;
4. 1.3.0 reaches device A the same way, fails its health checks and is rolled back by itself;
5. device A pushes its signed reports to the site's reports registry; ``sealift reports sync``
   carries them through the DMZ to the office; device B leaves its reports on the medium;
6. ``sealift fleet import`` takes both in, ``sealift fleet status`` shows the fleet, and
   ``sealift fleet report --html`` writes the page (opened in headless Chromium for a screenshot
   when it is installed).

Usage: ``scripts/fleet-loop.sh [--out DIR] [--json]`` (the page, the screenshot and the fleet
database stay in DIR, ``out/fleet-loop`` by default). Needs root (a Docker engine).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import bcrypt  # noqa: E402

from tests.builders import example_releases  # noqa: E402
from tests.realparts import DockerEngine, NetNamespace, Registry  # noqa: E402

BIN = Path(sys.executable).parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "fleet-loop", help="Where the page, screenshot and database go.")
    parser.add_argument("--json", action="store_true", help="Print a summary as JSON at the end.")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for old in ("fleet.db", "fleet.html", "fleet.png"):
        (args.out / old).unlink(missing_ok=True)
    work = Path(tempfile.mkdtemp(prefix="sealift-loop-"))
    parts: list[Any] = []
    try:
        summary = _loop(work, args.out, parts, quiet=args.json)
    finally:
        for part in reversed(parts):
            if isinstance(part, NetNamespace):
                part.delete()
            else:
                part.stop()
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(summary, indent=2))
    return 0


def _loop(work: Path, out: Path, parts: list[Any], *, quiet: bool) -> dict[str, Any]:
    def say(text: str) -> None:
        if not quiet:
            print(f"\n== {text}", file=sys.stderr, flush=True)

    say("start two device engines (B's on a network of its own: it is air-gapped) and five registries (on loopback)")
    air_gap = _started(parts, NetNamespace())
    engines = {"a": _started(parts, DockerEngine()), "b": _started(parts, DockerEngine(netns=air_gap))}
    hosts = {"a": None, "b": air_gap}
    htpasswd = work / "htpasswd"
    htpasswd.write_bytes(b"devices:" + bcrypt.hashpw(b"reports only", bcrypt.gensalt(rounds=6)) + b"\n")
    origin, mirror, dmz, office = (_started(parts, Registry()) for _ in range(4))
    reports = _started(parts, Registry(config={"auth": {"htpasswd": {"realm": "sealift-reports", "path": str(htpasswd)}}}))
    docker_config = work / "docker"
    docker_config.mkdir()
    token = base64.b64encode(b"devices:reports only").decode()
    (docker_config / "config.json").write_text(json.dumps({"auths": {reports.address: {"auth": token}}}))

    say("build and sign the example's releases 1.0.0 and 1.3.0")
    (work / "releases").mkdir()
    releases = example_releases(work / "releases", python=sys.executable, versions=("1.0.0", "1.3.0"))
    say("push 1.0.0 to the origin, and mirror it to the site")
    sealift("push", str(releases["1.0.0"]), f"{origin.address}/vision-app", "--plain-http")
    sealift("mirror", "sync", "--from", f"{origin.address}/vision-app", "--to", mirror.address, "--plain-http")
    say("write a medium for the air-gapped device")
    watched = work / "b-media"
    watched.mkdir()
    sealift("export", str(releases["1.0.0"]), "--to", str(watched / "stick"))

    inventory, db, records = work / "devices.yaml", out / "fleet.db", {}
    for name, engine in engines.items():
        say(f"device {name}: provision its trust, enroll it (site plant-7), add it to the inventory")
        state = work / f"device-{name}"
        device(engine, hosts[name], state, "trust", "init", str(releases["root"]))
        records[name] = json.loads(device(engine, hosts[name], state, "enroll", "--site", "plant-7", "--profile", "x86_64-cpu"))
        (work / f"{name}.json").write_text(json.dumps(records[name]))
        sealift("devices", "add", str(work / f"{name}.json"), "--inventory", str(inventory))

    online = ("--source", f"vision-app={mirror.address}/vision-app", "--report-to", f"{reports.address}/reports", "--plain-http")
    say("device A installs 1.0.0 from the site mirror; device B from its medium")
    device(engines["a"], None, work / "device-a", "run", "--once", *online, env={"DOCKER_CONFIG": str(docker_config)})
    device(engines["b"], air_gap, work / "device-b", "run", "--once", "--watch", str(watched))
    say("1.3.0 reaches device A, fails its health checks, and is rolled back")
    sealift("push", str(releases["1.3.0"]), f"{origin.address}/vision-app", "--plain-http")
    sealift("mirror", "sync", "--from", f"{origin.address}/vision-app", "--to", mirror.address, "--plain-http")
    device(engines["a"], None, work / "device-a", "run", "--once", *online, env={"DOCKER_CONFIG": str(docker_config)})
    status_a = json.loads(device(engines["a"], None, work / "device-a", "status", "--json"))["result"]["apps"]["vision-app"]

    say("the reports travel back: registry, DMZ, office; and the medium")
    hops = [sealift_json("reports", "sync", "--from", f"{reports.address}/reports", "--to", f"{dmz.address}/reports",
                         "--plain-http", env={"DOCKER_CONFIG": str(docker_config)}),
            sealift_json("reports", "sync", "--from", f"{dmz.address}/reports", "--to", f"{office.address}/reports", "--plain-http")]
    imported = [sealift_json("fleet", "import", f"{office.address}/reports", "--plain-http", "--db", str(db), "--inventory",
                             str(inventory)),
                sealift_json("fleet", "import", str(watched / "stick"), "--db", str(db), "--inventory", str(inventory))]
    status = sealift_json("fleet", "status", "--db", str(db), "--inventory", str(inventory))
    if not quiet:
        print(sealift("fleet", "status", "--db", str(db), "--inventory", str(inventory)), file=sys.stderr)
    page = out / "fleet.html"
    sealift("fleet", "report", "--html", str(page), "--db", str(db), "--inventory", str(inventory))
    shot = _screenshot(page, out / "fleet.png")
    say(f"the fleet page: {page}" + (f" (screenshot {shot})" if shot else ""))
    return {"device_a": {"running": status_a["current"]["version"], "phase": status_a["phase"], "reason": status_a["reason"]},
            "hops": hops, "imported": imported, "fleet": status, "page": str(page), "screenshot": str(shot) if shot else None}


def _started(parts: list[Any], part: Any) -> Any:
    parts.append(part)
    return part


def sealift(*args: str, env: dict[str, str] | None = None) -> str:
    return _run([str(BIN / "sealift"), *args], env=env)


def sealift_json(*args: str, env: dict[str, str] | None = None) -> Any:
    return json.loads(_run([str(BIN / "sealift"), *args, "--json"], env=env, codes=(0, 3)))["result"]


def device(engine: DockerEngine, host: NetNamespace | None, state: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """``sealift-updater`` on a device: its engine, and its network (``host``; None: this machine's)."""
    argv = [str(BIN / "sealift-updater"), "--state-dir", str(state), *args]
    return _run(host.command(argv) if host else argv, env={"DOCKER_HOST": engine.host, **(env or {})})


def _run(argv: list[str], *, env: dict[str, str] | None = None, codes: tuple[int, ...] = (0,)) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=600)
    if done.returncode not in codes:
        raise SystemExit(f"{' '.join(argv[:3])}… exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    return done.stdout


def _screenshot(page: Path, shot: Path) -> Path | None:
    browser = shutil.which("chromium")
    if browser is None:
        return None
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([browser, "--headless=new", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                        f"--screenshot={shot}", "--window-size=1200,2400", page.as_uri()], capture_output=True, timeout=120, check=True)
    return shot


if __name__ == "__main__":
    sys.exit(main())
