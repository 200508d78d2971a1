"""Run the vision-app image of this machine's architecture without a container engine, and probe it.

Unpacks the image's layers from the OCI layout into a temporary root, puts a model and the config
where the bundle would mount them, starts the image's entrypoint under ``chroot`` (so root is
needed) with the image's environment on a free loopback port, and checks the HTTP answers:
/healthz, the golden inference (for both model variants), bad requests, a missing model, the
image's own health command, and a prompt stop on SIGTERM.

Usage: sudo python3 smoke_test.py [LAYOUT_DIR [TAG]]   (default build/images/vision-app 1.0.0)
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ARCH = {"x86_64": "amd64", "aarch64": "arm64"}[platform.machine()]
TOLERANCE = 0.01
CHROOT = shutil.which("chroot") or "/usr/sbin/chroot"  # found before PATH becomes the image's


def main() -> None:
    layout = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "build" / "images" / "vision-app"
    tag = sys.argv[2] if len(sys.argv) > 2 else "1.0.0"
    with tempfile.TemporaryDirectory(prefix="vision-smoke-") as tmp:
        root = Path(tmp)
        config = unpack(layout, tag, root)
        for model in ("detector-int8.model", "detector-fp16.model"):
            mount(root, model)
            with serving(root, config) as url:
                probe(root, url, model)
    print("smoke test passed")


def blob(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest.removeprefix("sha256:")


def unpack(layout: Path, tag: str, root: Path) -> dict[str, Any]:
    """Extract this architecture's image into ``root``; return its runtime config."""
    top = json.loads((layout / "index.json").read_text())
    descriptor = next(m for m in top["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == tag)
    manifest = json.loads(blob(layout, descriptor["digest"]).read_text())
    if "manifests" in manifest:
        mine = next(m for m in manifest["manifests"] if m["platform"]["architecture"] == ARCH)
        manifest = json.loads(blob(layout, mine["digest"]).read_text())
    for layer in manifest["layers"]:
        with tarfile.open(blob(layout, layer["digest"]), "r:gz") as tar:
            tar.extractall(root, filter="tar")
    config: dict[str, Any] = json.loads(blob(layout, manifest["config"]["digest"]).read_text())["config"]
    print(f"unpacked {ARCH} image {descriptor['digest']} into {root}")
    return config


def mount(root: Path, model: str) -> None:
    """Put what the engine and the bundle mount in place: /dev/null, the model and the app config."""
    if not (root / "dev" / "null").exists():
        os.mknod(root / "dev" / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    shutil.copyfile(HERE / "models" / model, root / "models" / "detector.model")
    shutil.copyfile(HERE / "config" / "app.conf", root / "etc" / "vision" / "app.conf")


@contextmanager
def serving(root: Path, config: dict[str, Any]) -> Iterator[str]:
    """Run the image's entrypoint in ``root`` on a free port; stop it with SIGTERM afterwards."""
    port = free_port()
    env = dict(item.split("=", 1) for item in config["Env"])
    env["VISION_PORT"] = str(port)
    server = subprocess.Popen([CHROOT, str(root), *config["Entrypoint"]], env=env, cwd="/")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_listening(port, server)
        yield url
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=5)  # the entrypoint must stop promptly on TERM
        print(f"server stopped on SIGTERM with exit status {code}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until_listening(port: int, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with status {server.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"nothing listens on port {port} after 10s")


def request(url: str, *, body: bytes | None = None, method: str | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def probe(root: Path, url: str, model: str) -> None:
    expect(request(f"{url}/healthz"), 200, b"ok\n", f"{model}: GET /healthz")
    check_golden(url, model)
    expect(request(f"{url}/infer", body=b"0.1, 0.2"), 400, None, "POST /infer with 2 values")
    expect(request(f"{url}/infer", body=b"a b c"), 400, None, "POST /infer with words")
    expect(request(f"{url}/infer"), 405, None, "GET /infer")
    expect(request(f"{url}/healthz", body=b"x"), 405, None, "POST /healthz")
    expect(request(f"{url}/nothing-here"), 404, None, "GET /nothing-here")
    expect(request(f"{url}/infer", body=b"0 " * 5000), 413, None, "POST /infer with 10000 bytes")
    health = subprocess.run([CHROOT, str(root), "wget", "-q", "-O-", f"{url}/healthz"], capture_output=True, check=False)
    assert health.returncode == 0 and health.stdout == b"ok\n", health
    print(f"ok   image health command: exit {health.returncode}, {health.stdout!r}")
    (root / "models" / "detector.model").unlink()
    expect(request(f"{url}/healthz"), 503, b"unhealthy: model file is missing\n", "GET /healthz, no model")
    expect(request(f"{url}/infer", body=b"0 " * 16), 503, None, "POST /infer, no model")


def check_golden(url: str, model: str) -> None:
    started = time.monotonic()
    status, headers, body = request(f"{url}/infer", body=(HERE / "golden" / "input.txt").read_bytes())
    took = time.monotonic() - started
    got, want = json.loads(body), json.loads((HERE / "golden" / "expected.json").read_text())
    drift = max(abs(a - b) for a, b in zip(got["scores"], want["scores"], strict=True))
    same = {k: v for k, v in got.items() if k != "scores"} == {k: v for k, v in want.items() if k != "scores"}
    assert status == 200 and same and drift <= TOLERANCE, (status, got, want)
    print(f"ok   {model}: golden answer {body.decode().strip()} ({headers.get('X-Model-Dtype')}, {took:.3f}s)")


def expect(result: tuple[int, dict[str, str], bytes], status: int, body: bytes | None, what: str) -> None:
    got_status, _, got_body = result
    assert got_status == status and (body is None or got_body == body), (what, got_status, got_body)
    print(f"ok   {what}: {got_status} {got_body.decode(errors='replace').strip()}")


if __name__ == "__main__":
    if os.geteuid() != 0:
        raise SystemExit("smoke_test.py needs root (it uses chroot)")
    main()
