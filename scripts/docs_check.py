#!/usr/bin/env python3
"""Run the operator pages' commands as written: every ```sh block of each page, in order, one bash
(``set -Eeuo pipefail``) per page, as root, from the repository's root.

Usage: scripts/docs_check.py [PAGE...]    (default: docs/site-mirror.md docs/device-install.md)

The pages write to /etc, /srv, /opt, /usr/local, /var/lib, /root and /tmp, so they run in a private
mount and PID namespace (``unshare``): each of those directories is an overlay whose writes land in a
tmpfs, /run is a fresh tmpfs (no Docker socket, no systemd), and when the check ends, however it
ends, every process it started (the registries included) dies with the namespace and every write is
gone. The network is this machine's: the pages' registries listen on 127.0.0.1:5442-5444, which must
be free. The checkout itself is not overlaid: ``make-images.sh`` and ``pip wheel`` write there what
they write for any user (``examples/vision-app/build``, ``build``, ``*.egg-info``, all ignored by git).

Three commands cannot do here what they do on a real host; stand-ins of the same name come first on
PATH (shown in the output as ``docs-check:`` lines):

* ``apt-get``: ``update`` is not run (the check changes no packages); ``install`` checks with dpkg
  that each package is installed (scripts/setup.sh installs them) and fails naming one that is not.
* ``systemctl``: no systemd runs as PID 1 here. ``daemon-reload`` does nothing; ``enable`` checks the
  unit with ``systemd-analyze verify``; ``start`` (and ``enable --now``) runs what systemd would: a
  mount unit's mount, a oneshot service's ExecStart in the foreground, any other service's ExecStart
  in the background (as its User=, with its Environment= and drop-ins), which must still run a
  moment later; ``stop`` sends it SIGTERM. A timer is checked, not scheduled (the page starts its
  service). docker.service is not started: this check needs no Docker engine, so
  sealift-updater.service is expected to exit 6 (engine) at once, and the check asserts that it did.
* ``journalctl -u UNIT``: prints what the unit's process wrote.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from base64 import b64encode
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = ("docs/site-mirror.md", "docs/device-install.md")
PORTS = (5442, 5443, 5444)  # the stand-in origin, the mirror's devices' side, its writable side
TOOLS = ("unshare", "mount", "setpriv", "runuser", "bash", "dpkg-query", "systemd-analyze", "docker-registry", "htpasswd",
         "openssl", "curl", "jq")
OVERLAID = ("/etc", "/srv", "/opt", "/usr/local", "/var/lib", "/root", "/tmp")
STATE = Path("/run/docs-check")
UNIT_DIRS = (Path("/etc/systemd/system"), Path("/lib/systemd/system"), Path("/usr/lib/systemd/system"))
NOT_STARTED = {"docker.service": "this check needs no Docker engine (tests/integration/test_device_package.py installs on one)"}
EXPECTED_EXIT = {"sealift-updater.service": 6}  # no engine here: `run` stops at once with the engine's exit code
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TIMEOUT_S = 120


@dataclass(frozen=True)
class Block:
    """One fenced code block of a page: its info string, the line its first command is on, its text."""

    page: str
    info: str
    line: int
    text: str


def fences(page: str) -> list[Block]:
    """Every fenced block of ``page`` (a path relative to the repository)."""
    found: list[Block] = []
    info: str | None = None
    start, lines = 0, list[str]()
    for number, line in enumerate((ROOT / page).read_text().splitlines(), 1):
        if info is None and line.startswith("```"):
            info, start, lines = line[3:].strip(), number + 1, []
        elif info is not None and line.startswith("```"):
            found.append(Block(page, info, start, "\n".join(lines) + "\n"))
            info = None
        elif info is not None:
            lines.append(line)
    return found


def blocks(page: str) -> list[Block]:
    """The runnable blocks: those fenced as ```sh."""
    return [b for b in fences(page) if b.info == "sh"]


def say(text: str) -> None:
    print(f"docs-check: {text}", file=sys.stderr, flush=True)


# --- outside: check what is needed, then run the pages in a namespace of their own -------------


def missing() -> list[str]:
    """Why the check cannot run here (empty when it can)."""
    reasons = [f"{tool} not found on PATH" for tool in TOOLS if shutil.which(tool) is None]
    if os.geteuid() != 0:
        reasons.append("needs root (a private mount namespace, mounts, services run as their User=)")
    return reasons


def busy_ports() -> list[int]:
    busy = []
    for port in PORTS:
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                busy.append(port)
    return busy


def check(pages: list[str]) -> int:
    if reasons := missing():
        say("cannot run: " + "; ".join(reasons))
        return 77
    if busy := busy_ports():
        say(f"127.0.0.1 port(s) {', '.join(map(str, busy))} in use: the pages' registries listen there; stop what holds them")
        return 1
    argv = ["unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child", "--mount-proc",
            sys.executable, str(Path(__file__).resolve()), "inside", *pages]
    try:
        return subprocess.run(argv, cwd=ROOT, timeout=TIMEOUT_S, check=False).returncode
    except subprocess.TimeoutExpired:
        say(f"gave up after {TIMEOUT_S} s")
        return 1


# --- inside the namespace ------------------------------------------------------------------------


def isolate() -> None:
    """/run a fresh tmpfs; each directory the pages write to an overlay whose upper half is in it."""
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=755", "docs-check-run", "/run"], check=True)
    # a checkout inside an overlaid directory (a clone in /tmp) stays itself: the pages build in it, and an
    # overlay cannot rename a directory of its lower half
    inside = any(ROOT.is_relative_to(lower) for lower in OVERLAID)
    if inside:
        (STATE / "checkout").mkdir(parents=True)
        subprocess.run(["mount", "--bind", str(ROOT), str(STATE / "checkout")], check=True)
    for n, lower in enumerate(OVERLAID):
        upper, work = STATE / "overlay" / str(n) / "upper", STATE / "overlay" / str(n) / "work"
        upper.mkdir(parents=True)
        work.mkdir()
        subprocess.run(["mount", "-t", "overlay", "docs-check", "-o", f"lowerdir={lower},upperdir={upper},workdir={work}", lower],
                       check=True)
    if inside:
        subprocess.run(["mount", "--bind", str(STATE / "checkout"), str(ROOT)], check=True)
    shims = STATE / "bin"
    shims.mkdir()
    for name in ("apt-get", "systemctl", "journalctl"):
        shim = shims / name
        shim.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(str(Path(__file__).resolve()))} {name} \"$@\"\n")
        shim.chmod(0o755)
    (STATE / "units").mkdir()


def page_env() -> dict[str, str]:
    """A root login shell's environment on Debian, with the checkout's .venv/bin last (for `sealift`)."""
    return {"PATH": f"{STATE / 'bin'}:{SYSTEM_PATH}:{ROOT / '.venv' / 'bin'}", "HOME": "/root", "USER": "root", "LOGNAME": "root",
            "SHELL": "/bin/bash", "LANG": "C.UTF-8", "TERM": "dumb"}


def script(page_blocks: list[Block]) -> tuple[str, dict[int, tuple[str, int]]]:
    """One bash script of the blocks, and which page line each of its lines is."""
    lines = ["trap 'echo \"docs-check: exit $? at script line $LINENO\" >&2' ERR"]
    where: dict[int, tuple[str, int]] = {}
    for block in page_blocks:
        lines.append(f"echo {shlex.quote(f'docs-check: --- {block.page}:{block.line}')} >&2")
        for offset, line in enumerate(block.text.splitlines()):
            lines.append(line)
            where[len(lines)] = (block.page, block.line + offset)
    return "\n".join(lines) + "\n", where


def run_page(page: str) -> bool:
    text, where = script(blocks(page))
    path = STATE / f"{Path(page).stem}.sh"
    path.write_text(text)
    done = subprocess.run(["bash", "--noprofile", "--norc", "-Eeuo", "pipefail", str(path)], cwd=ROOT, env=page_env(),
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    sys.stderr.write(done.stdout)
    if done.returncode == 0:
        return True
    lines = [int(m) for m in re.findall(r"exit \d+ at script line (\d+)", done.stdout)]
    at = where.get(lines[-1]) if lines else None
    say(f"{page} failed (exit {done.returncode})" + (f" at {at[0]}:{at[1]}" if at else ""))
    return False


def inside(pages: list[str]) -> int:
    began = time.monotonic()
    isolate()
    for page in pages:
        if not run_page(page):
            return 1
    if set(PAGES) <= set(pages) and not after_pages():
        return 1
    say(f"{sum(len(blocks(p)) for p in pages)} blocks of {len(pages)} pages ran in {time.monotonic() - began:.1f} s")
    return 0


def after_pages() -> bool:
    """What the pages say and their commands do not show by themselves."""
    mirror, writable = f"127.0.0.1:{PORTS[1]}", f"127.0.0.1:{PORTS[2]}"
    sync = ("sync", Path("/etc/sealift-mirror/sync.password").read_text().strip())
    device = ("device", Path("/etc/sealift-mirror/device.password").read_text().strip())
    checks = {
        "the device user reads the devices' side": (http("GET", mirror, "/v2/", device), 200),
        "the sync user is a stranger there": (http("GET", mirror, "/v2/", sync), 401),
        "the device user is a stranger on the writable side": (http("GET", writable, "/v2/", device), 401),
        "the devices' side refuses a push": (http("POST", mirror, "/v2/vision-app/blobs/uploads/", device), 405),
        "the devices' side refuses a delete": (http("DELETE", mirror, "/v2/vision-app/manifests/x86_64-cpu-1.1.0", device), 405),
    }
    log = (STATE / "units" / "sealift-updater.service.log").read_text()
    checks["the updater service stopped at the engine, nothing earlier"] = ("Docker engine" in log, True)
    for what, (found, expected) in checks.items():
        say(f"{what}: {'ok' if found == expected else f'FAILED ({found}, expected {expected})'}")
    return all(found == expected for found, expected in checks.values())


def http(method: str, host: str, path: str, user: tuple[str, str]) -> int:
    context = ssl.create_default_context(cafile="/etc/sealift-mirror/site-ca.crt")
    auth = b64encode(f"{user[0]}:{user[1]}".encode()).decode()
    request = urllib.request.Request(f"https://{host}{path}", method=method, headers={"Authorization": f"Basic {auth}"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context))
    try:
        with opener.open(request, timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as e:
        return e.code


# --- stand-ins -----------------------------------------------------------------------------------


def apt_get(args: list[str]) -> int:
    words = [a for a in args if not a.startswith("-")]
    if words[:1] == ["update"]:
        say("apt-get update: not run (the check changes no packages)")
        return 0
    if words[:1] != ["install"]:
        say(f"apt-get {' '.join(args)}: not simulated")
        return 2
    absent = [p for p in words[1:] if subprocess.run(["dpkg-query", "-W", "-f=${Status}", p], capture_output=True,
                                                      text=True, check=False).stdout != "install ok installed"]
    if absent:
        say(f"apt-get install: {', '.join(absent)} not installed on this machine (scripts/setup.sh installs what the docs need)")
        return 1
    say(f"apt-get install: {', '.join(words[1:])} installed (checked with dpkg-query)")
    return 0


def unit_files(name: str) -> tuple[Path, list[Path], str]:
    """The unit's file (a template's, for an instance), its drop-ins, and the instance name."""
    instance = name.split("@", 1)[1].rsplit(".", 1)[0] if "@" in name else ""
    file_name = re.sub(r"@[^.]*\.", "@.", name) if instance else name
    path = next((d / file_name for d in UNIT_DIRS if (d / file_name).is_file()), None)
    if path is None:
        raise SystemExit(f"docs-check: systemctl: unit {name} not found in {', '.join(map(str, UNIT_DIRS))}")
    drop_ins = sorted(p for n in dict.fromkeys((name, file_name)) for p in (UNIT_DIRS[0] / f"{n}.d").glob("*.conf"))
    return path, drop_ins, instance


def settings(name: str) -> dict[str, list[str]]:
    """The unit's settings, drop-ins applied (an empty value resets a list, as systemd does)."""
    path, drop_ins, instance = unit_files(name)
    found: dict[str, list[str]] = {}
    for file in (path, *drop_ins):
        for raw in file.read_text().splitlines():
            line = raw.strip()
            if not line or line[0] in "#;[" or "=" not in line:
                continue
            key, value = (part.strip() for part in line.split("=", 1))
            value = value.replace("%i", instance).replace("%I", instance)
            found[key] = [*found.get(key, []), value] if value else []
    return found


def verify(name: str) -> None:
    path, _, instance = unit_files(name)
    if instance:  # an instance is checked through a link of its name to the template, as systemd loads it
        link = STATE / "verify" / name
        link.parent.mkdir(exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(path)
        path = link
    done = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"docs-check: systemd-analyze verify {name} failed:\n{done.stdout}{done.stderr}")
    say(f"{name}: systemd-analyze verify passed")


def start(name: str) -> None:
    """What `systemctl start` has systemd do, for the kinds of unit the pages use."""
    if name in NOT_STARTED:
        say(f"{name}: not started: {NOT_STARTED[name]}")
        return
    verify(name)
    unit = settings(name)
    if name.endswith(".timer"):
        say(f"{name}: checked, not scheduled (no systemd here)")
    elif name.endswith(".mount"):
        mount(name, unit)
    elif unit.get("Type", ["simple"])[-1] == "oneshot":
        run_oneshot(name, unit)
    elif (pid := running(name)) is not None:
        say(f"{name}: already running (pid {pid})")
    else:
        run_service(name, unit)


def mount(name: str, unit: dict[str, list[str]]) -> None:
    kind, what, where = unit["Type"][-1], unit["What"][-1], unit["Where"][-1]
    Path(where).mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", kind, "-o", unit["Options"][-1], what, where], check=True)
    say(f"{name}: mounted {kind} on {where}")


def run_oneshot(name: str, unit: dict[str, list[str]]) -> None:
    argv, env = command(unit)
    say(f"{name}: running {shlex.join(argv)}")
    if (code := subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, check=False).returncode) != 0:
        raise SystemExit(f"docs-check: {name} exited {code}")


def run_service(name: str, unit: dict[str, list[str]]) -> None:
    argv, env = command(unit)
    with (STATE / "units" / f"{name}.log").open("ab") as log:
        process = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    (STATE / "units" / f"{name}.pid").write_text(str(process.pid))
    settled(name, process, argv)


def command(unit: dict[str, list[str]]) -> tuple[list[str], dict[str, str]]:
    """ExecStart as systemd would run it: as User=/Group=, with systemd's environment and Environment=."""
    argv = shlex.split(unit["ExecStart"][-1])
    env = {"PATH": SYSTEM_PATH, "LANG": "C.UTF-8"}
    for assignment in (a for line in unit.get("Environment", []) for a in shlex.split(line)):
        key, _, value = assignment.partition("=")
        env[key] = value
    if user := unit.get("User", [""])[-1]:
        group = unit.get("Group", [user])[-1]
        argv = ["setpriv", f"--reuid={user}", f"--regid={group}", "--init-groups", "--", *argv]
        env.update(HOME="/", USER=user, LOGNAME=user)
    return argv, env


def settled(name: str, process: subprocess.Popen[bytes], argv: list[str]) -> None:
    """A service must still run a moment after it started, unless this check expects it to stop."""
    expected = EXPECTED_EXIT.get(name)
    try:
        code = process.wait(timeout=15 if expected is not None else 0.5)
    except subprocess.TimeoutExpired:
        code = None
    log = STATE / "units" / f"{name}.log"
    if code is None and expected is None:
        say(f"{name}: started ({shlex.join(argv)})")
    elif code == expected and expected is not None:
        say(f"{name}: {shlex.join(argv)} exited {code}, as expected here (no Docker engine); systemd would restart it")
    else:
        raise SystemExit(f"docs-check: {name} exited {code}:\n{log.read_text()[-2000:]}")


def stop(name: str) -> None:
    """SIGTERM to the unit's process, as systemd's default KillMode does; SIGKILL after 10 s."""
    if (pid := running(name)) is None:
        say(f"{name}: not running here, nothing to stop")
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if alive(pid):
        os.kill(pid, signal.SIGKILL)
    say(f"{name}: stopped")


def running(name: str) -> int | None:
    """The pid of the unit's process when it runs."""
    pid_file = STATE / "units" / f"{name}.pid"
    pid = int(pid_file.read_text()) if pid_file.exists() else None
    return pid if pid is not None and alive(pid) else None


def alive(pid: int) -> bool:
    """Running, and not a zombie waiting for this namespace's init to reap it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def systemctl(args: list[str]) -> int:
    verb, now = (args[0] if args else ""), "--now" in args
    names = [n if "." in n else f"{n}.service" for n in args[1:] if not n.startswith("-")]
    if verb not in ("daemon-reload", "enable", "disable", "start", "stop", "restart"):
        say(f"systemctl {verb}: not simulated")
        return 2
    if verb == "daemon-reload":
        say("systemctl daemon-reload: nothing to reload (no systemd here)")
    for name in names:
        if verb in ("stop", "restart") or (verb == "disable" and now):
            stop(name)
        if verb in ("start", "restart") or (verb == "enable" and now):
            start(name)
        elif verb == "enable":
            verify(name)
        elif verb == "disable" and not now:
            say(f"{name}: disabled")
    return 0


def journalctl(args: list[str]) -> int:
    units = [args[i + 1] for i, a in enumerate(args[:-1]) if a in ("-u", "--unit")]
    for unit in units:
        log = STATE / "units" / f"{unit if '.' in unit else unit + '.service'}.log"
        sys.stdout.write(log.read_text() if log.exists() else f"-- No entries for {unit} --\n")
    return 0


def main(argv: list[str]) -> int:
    stand_ins = {"apt-get": apt_get, "systemctl": systemctl, "journalctl": journalctl}
    if argv[:1] and argv[0] in stand_ins:
        return stand_ins[argv[0]](argv[1:])
    if argv[:1] == ["inside"]:
        return inside(argv[1:])
    return check(argv or list(PAGES))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
