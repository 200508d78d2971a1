"""Inputs for tests: small real OCI image layouts and bundle specs, made on the spot."""

from __future__ import annotations

import io
import json
import re
import tarfile
import textwrap
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from scripts.oci_image import FileEntry, ImageConfig, Platform, PlatformImage, write_image_layout
from updater.apps import Apps
from updater.oci import canonical_json
from updater.slots import Slots

AMD64 = "linux/amd64"
FAST_PORT = 28_180  # the host port of the updater tests' example releases, away from the example's 8080
ARM64 = "linux/arm64/v8"


def image_layout(path: Path, *, tag: str = "1.0.0", platforms: tuple[str, ...] = (AMD64, ARM64), marker: str = "app") -> Path:
    """A real (tiny) multi-arch image layout; ``marker`` changes its content and so its digests."""
    images = [
        PlatformImage(
            platform=Platform.parse(p),
            layers=((FileEntry(path="/app/marker", data=f"{marker} {p}\n".encode()),),),
            config=ImageConfig(cmd=("/app/run",), exposed_ports=("8080/tcp",)),
        )
        for p in platforms
    ]
    write_image_layout(path, tag, images, epoch=0)
    return path


# the end of SPEC: the health policy and the secret, which tests of the install workflow replace
HEALTH_AND_SECRETS = """\
health:
  deadline: 60s
  stabilisation: 10s
  checks:
    - {name: healthz, type: http, service: app, port: 8080, path: /healthz}
    - {name: golden, type: inference, service: app, port: 8080, path: /infer, input: golden-in, expected: golden-out, tolerance: 0.01}
secrets:
  api-token: {environment: DEMO_API_TOKEN}
"""

SPEC = """\
name: demo
version: 1.2.0
profiles: [x86_64-cpu, x86_64-nvidia, jetson-orin]
images:
  app:
    source: oci:images/app:1.0.0
models:
  detector:
    path: models/int8.bin
    variants:
      x86_64-nvidia: {path: models/fp16.bin}
      jetson-orin: {path: models/fp16.bin}
configs:
  settings:
    path: config/settings.yaml
  golden-in:
    path: config/golden-in.txt
  golden-out:
    path: config/golden-out.json
app:
  services:
    app:
      image: app
      command: ["/app/run", "--port", "8080"]
      environment: {MODEL: /models/detector, LOG_LEVEL: info}
      ports: ["8080:8080"]
      volumes: ["detector:/models/detector:ro", "settings:/etc/app/settings.yaml"]
      healthcheck:
        test: ["CMD", "wget", "-q", "-O-", "http://127.0.0.1:8080/healthz"]
        interval: 5s
""" + HEALTH_AND_SECRETS
# SPEC checked only by the container's own HEALTHCHECK, which an engine fake answers; no secrets
QUICK_SPEC = SPEC.replace(HEALTH_AND_SECRETS, """\
health:
  deadline: 1s
  stabilisation: 0s
  checks:
    - {name: own, type: container, service: app}
""")


def project(root: Path, *, spec: str = SPEC, model_bytes: bytes | None = None) -> Path:
    """A spec directory with its image, models and configs; returns the spec's path."""
    image_layout(root / "images" / "app")
    (root / "models").mkdir(parents=True, exist_ok=True)
    (root / "models" / "int8.bin").write_bytes(model_bytes if model_bytes is not None else bytes(range(256)) * 64)
    (root / "models" / "fp16.bin").write_bytes(b"fp16 weights " * 4096)
    (root / "config").mkdir(exist_ok=True)
    (root / "config" / "settings.yaml").write_text("threshold: 0.5\nlabels: [cat, dog]\n")
    (root / "config" / "golden-in.txt").write_text("1 2 3 4\n")
    (root / "config" / "golden-out.json").write_text('{"label": "cat"}\n')
    path = root / "sealift.yaml"
    path.write_text(textwrap.dedent(spec))
    return path


def docker_archive_from_bundle(bundle: Path, manifest_digest: str, tag: str) -> bytes:
    """A docker-archive tar of one image of a bundle directory, made of the bundle's own blobs.

    Docker 20.10 cannot load an OCI layout, but it loads a docker-archive whose manifest.json
    points at the OCI config and layer blobs as they are; the image ID is then the config digest.
    """
    blobs = bundle / "blobs" / "sha256"
    manifest = json.loads((blobs / manifest_digest.removeprefix("sha256:")).read_bytes())
    digests = [manifest["config"]["digest"], *(layer["digest"] for layer in manifest["layers"])]
    paths = [f"blobs/sha256/{d.removeprefix('sha256:')}" for d in digests]
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as out:
        index = json.dumps([{"Config": paths[0], "RepoTags": [tag], "Layers": paths[1:]}]).encode()
        entry = tarfile.TarInfo("manifest.json")
        entry.size = len(index)
        out.addfile(entry, io.BytesIO(index))
        for path in dict.fromkeys(paths):
            out.add(bundle / path, arcname=path)
    return archive.getvalue()


def quick_releases(root: Path, versions: tuple[str, ...] = ("1.0.0", "1.1.0")) -> dict[str, Path]:
    """The QUICK_SPEC application ("demo", one service) built for x86_64-cpu at each of ``versions``
    and signed; "root" names the root metadata to provision devices with."""
    from bundler.build import BuildOptions, build_bundles, select_profiles
    from bundler.spec import load_spec
    from updater.profiles import builtin_profile_dir, load_profiles

    profiles = load_profiles([builtin_profile_dir()])
    spec_path = project(root / "src", spec=QUICK_SPEC)
    built = {}
    for version in versions:
        spec_path.write_text(QUICK_SPEC.replace("version: 1.2.0", f"version: {version}"))
        spec = load_spec(spec_path)
        (b,) = build_bundles(spec, select_profiles(spec, profiles, ("x86_64-cpu",)), BuildOptions(out=root / "out", epoch=0))
        built[version] = b.path
    built["root"] = signed(list(built.values()), root / "signing")
    return built


def signed(bundles: list[Path], root: Path, *, passphrase: str = "test passphrase",
           teams: Mapping[str, str] | None = None) -> Path:
    """Sign ``bundles`` with a new repository under ``root``; returns the root metadata to provision devices with.
    ``teams`` maps application names to delegated roles, each made to sign only its application's
    bundles (``APP/*/*``); the others are signed by the top-level targets role."""
    from bundler.keys import Keyring
    from bundler.policy import Policy
    from bundler.repo import Repository
    from updater.artifact import open_artifact
    from updater.plan import offered_apps

    repo = Repository(root / "repo", Keyring(root / "keys", passphrase=lambda: passphrase))
    repo.init(Policy())
    by_role: dict[str | None, list[Path]] = {}
    for bundle in bundles:
        with open_artifact(bundle) as artifact:
            (name,) = offered_apps(artifact, None, None)  # what its own index claims
        by_role.setdefault((teams or {}).get(name), []).append(bundle)
    for app, role in (teams or {}).items():
        repo.delegate(role, paths=[f"{app}/*/*"])
    for role, group in by_role.items():
        repo.add(group, role=role)
    return root / "repo" / "metadata" / "1.root.json"


def reseal(bundle: Path, edit: Callable[[dict[str, dict]], None], *,  # type: ignore[type-arg]
           descriptor_json: Callable[[object], bytes] = canonical_json) -> None:
    """Edit the bundle's JSON (top index, payload manifest, descriptor, first image manifest) and
    re-seal every digest above the edit, as a forger with write access would."""
    import hashlib

    def put(data: bytes) -> tuple[str, int]:
        digest = hashlib.sha256(data).hexdigest()
        (bundle / "blobs/sha256" / digest).write_bytes(data)
        return f"sha256:{digest}", len(data)

    def load(digest: str) -> dict:  # type: ignore[type-arg]
        return json.loads((bundle / "blobs/sha256" / digest.removeprefix("sha256:")).read_bytes())

    layout = json.loads((bundle / "index.json").read_text())
    top = load(layout["manifests"][0]["digest"])
    payload_entry = next(m for m in top["manifests"] if m.get("artifactType") == "application/vnd.sealift.payload.v1")
    image_entry = next(m for m in top["manifests"] if m is not payload_entry)
    payload = load(payload_entry["digest"])
    layer = next(lay for lay in payload["layers"] if lay["mediaType"] == "application/vnd.sealift.descriptor.v1+json")
    parts = {"top": top, "payload": payload, "descriptor": load(layer["digest"]), "image": load(image_entry["digest"])}
    edit(parts)
    image_digest = image_entry["digest"]
    image_entry["digest"], image_entry["size"] = put(json.dumps(parts["image"]).encode())
    for entry in parts["descriptor"]["images"]:
        if isinstance(entry, dict) and entry.get("manifest") == image_digest:
            entry.update(manifest=image_entry["digest"], size=image_entry["size"])
    layer["digest"], layer["size"] = put(descriptor_json(parts["descriptor"]))
    payload_entry["digest"], payload_entry["size"] = put(json.dumps(payload).encode())
    layout["manifests"][0]["digest"], layout["manifests"][0]["size"] = put(json.dumps(top).encode())
    (bundle / "index.json").write_text(json.dumps(layout))
    for stale in set((bundle / "blobs/sha256").iterdir()) - {bundle / "blobs/sha256" / d.removeprefix("sha256:")
                                                             for d in _referenced(bundle)}:
        stale.unlink()


def _referenced(bundle: Path) -> set[str]:
    def load(digest: str) -> dict:  # type: ignore[type-arg]
        return json.loads((bundle / "blobs/sha256" / digest.removeprefix("sha256:")).read_bytes())
    top = json.loads((bundle / "index.json").read_text())["manifests"][0]["digest"]
    found = {top}
    for entry in load(top)["manifests"]:
        manifest = load(entry["digest"])
        found |= {entry["digest"], manifest["config"]["digest"], *(layer["digest"] for layer in manifest["layers"])}
    return found


def rewrite_descriptor(bundle: Path, change: Callable[[dict], None]) -> None:  # type: ignore[type-arg]
    reseal(bundle, lambda parts: change(parts["descriptor"]))


EXAMPLE_DIR = Path(__file__).resolve().parent.parent / "examples" / "vision-app"


def make_example_images(python: str) -> Path:
    """Run the example's make-images.sh (offline, cached); return its multi-arch image layout."""
    import os
    import subprocess

    done = subprocess.run([str(EXAMPLE_DIR / "make-images.sh")], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHON": python}, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"make-images.sh failed: {done.stderr[-2000:]}")
    return EXAMPLE_DIR / "build" / "images" / "vision-app"


def example_releases(root: Path, *, python: str, secrets: bool = False, versions: tuple[str, ...] | None = None,
                     also: str | None = None, routed: bool = False, tls_host: str | None = None,
                     renamed: Mapping[str, str] | None = None) -> dict[str, Path]:
    """Signed x86_64-cpu releases of the example with a 2 s stabilisation window and host port
    FAST_PORT: 1.0.0 and 1.1.0 (healthy), 1.2.0 (the engine cannot start it), 1.3.0 (starts, never
    healthy: its model is missing; 5 s deadline), 1.4.0 (its server exits at once; 5 s deadline).
    Returns them by version, and "root" for the root metadata to provision devices with. With
    ``secrets``, the service declares the secret api-token as the example does (mounted at
    /run/secrets/api-token, sent by the inference check; in 1.1.0 owned by uid and gid 1000 with
    mode 0440); without, neither does. ``versions`` builds only those. ``also`` names a second
    application, the same service on host port FAST_PORT + 1, built as 1.0.0 and 1.1.0 (keyed
    ``ALSO-VERSION``), each application then signed by a delegated role of its own (team-vision,
    team-ALSO); the example's releases then provide ``detector`` (their service's port 8080) on the
    device network, and the second application needs it. With ``routed``, the service publishes no
    host port: the ingress routes every path to its port 8080 (of ``tls_host`` only, over HTTPS too,
    with the certificate and key in the secrets site-cert and site-key, from SITE_CERT and SITE_KEY)."""
    from bundler.build import BuildOptions, build_bundles, select_profiles
    from bundler.spec import load_spec
    from updater.profiles import builtin_profile_dir, load_profiles

    make_example_images(python)
    compose = (EXAMPLE_DIR / "compose.yaml").read_text().replace('"8080:8080"', f'"{FAST_PORT}:8080"')
    if not secrets:  # the example's service needs its api-token from a site overlay; these releases run without
        compose = re.sub(r"\n    secrets: \[api-token\][^\n]*", "", compose)
    routes = "  routes:\n    - {path: /, service: vision, port: 8080}\n" if routed else ""
    if tls_host is not None:
        routes = f"  routes:\n    - {{host: {tls_host}, service: vision, port: 8080, tls: {{certificate: site-cert, key: site-key}}}}\n"
    if routed:
        compose = compose.replace(f'    ports: ["{FAST_PORT}:8080"]\n', "")
    alone = compose
    provides = "  provides:\n    detector: {service: vision, port: 8080}\n" if also is not None else ""
    if routes or provides:  # the example provides its service on the device network; the second application needs it
        compose += f"x-sealift:\n{routes}{provides}"
    (root / "compose.yaml").write_text(compose)
    # a port bound to an address this host does not have (TEST-NET-3): the engine refuses to start it
    (root / "compose-cannot-start.yaml").write_text(compose.replace(f'"{FAST_PORT}:8080"', f'"203.0.113.7:{FAST_PORT}:8080"'))
    (root / "compose-broken.yaml").write_text(compose.replace("/models/detector.model\n", "/models/missing.model\n", 1))
    (root / "compose-exits.yaml").write_text(compose.replace("    environment:\n", "    environment:\n      VISION_PORT: not-a-port\n", 1))
    # 1.1.0 with secrets: the token owned by uid/gid 1000, mode 0440 (a service that drops root could read it)
    (root / "compose-owned.yaml").write_text(compose.replace("secrets: [api-token]", 'secrets: [{source: api-token, uid: "1000", '
                                                                                     'gid: "1000", mode: 0440}]'))
    text = (EXAMPLE_DIR / "sealift.yaml").read_text()
    if not secrets:
        text = re.sub(r"\n      secret: api-token[^\n]*", "", text)
    for relative in ("build/images/vision-app", "models/", "config/", "golden/"):
        text = text.replace(f" {relative}", f" {EXAMPLE_DIR}/{relative}").replace(f":{relative}", f":{EXAMPLE_DIR}/{relative}")
    text = text.replace("stabilisation: 20s", "stabilisation: 2s")
    if tls_host is not None:
        text += "  site-cert:\n    environment: SITE_CERT\n  site-key:\n    environment: SITE_KEY\n"
    variants = {"1.0.0": text, "1.1.0": text.replace("app: compose.yaml", "app: compose-owned.yaml") if secrets else text,
                "1.2.0": text.replace("app: compose.yaml", "app: compose-cannot-start.yaml"),
                "1.3.0": text.replace("app: compose.yaml", "app: compose-broken.yaml").replace("deadline: 60s", "deadline: 5s"),
                "1.4.0": text.replace("app: compose.yaml", "app: compose-exits.yaml").replace("deadline: 60s", "deadline: 5s")}
    profiles = load_profiles([builtin_profile_dir()])
    built: dict[str, Path] = {}
    variants = {v: t for v, t in variants.items() if versions is None or v in versions}
    if also is not None:
        needing = alone.replace(f'"{FAST_PORT}:8080"', f'"{FAST_PORT + 1}:8080"') + f"x-sealift:\n{routes}  needs: [detector]\n"
        (root / f"compose-{also}.yaml").write_text(needing)
        second = text.replace("name: vision-app", f"name: {also}").replace("app: compose.yaml", f"app: compose-{also}.yaml")
        variants |= {f"{also}-{v}": second for v in ("1.0.0", "1.1.0")}
    if renamed:  # signed oldest first, as a repository takes them
        from updater.versions import version_key

        variants = dict(sorted(((renamed.get(v, v), t) for v, t in variants.items()), key=lambda i: version_key(i[0].rpartition("-")[2])))
    for version, variant in variants.items():
        spec_path = root / f"sealift-{version}.yaml"
        spec_path.write_text(variant.replace("version: 1.0.0", f"version: {version.rpartition('-')[2]}"))
        spec = load_spec(spec_path, allowed_dirs=[EXAMPLE_DIR])  # the copy of the spec names the example's files
        (b,) = build_bundles(spec, select_profiles(spec, profiles, ("x86_64-cpu",)), BuildOptions(out=root / "out", epoch=0))
        built[version] = b.path
    teams = {"vision-app": "team-vision", also: f"team-{also}"} if also is not None else None
    built["root"] = signed(list(built.values()), root / "signing", teams=teams)
    return built


def healthz(port: int = FAST_PORT, *, wait: float = 30.0) -> int:
    """The status of the example's ``/healthz`` on ``port``, waiting up to ``wait`` seconds for an answer."""
    import time
    import urllib.error
    import urllib.request

    end = time.monotonic() + wait
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
                return int(response.status)
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > end:
                raise
            time.sleep(0.2)


def answer(path: str, body: bytes | None = None, *, token: str | None = None, host: str = "127.0.0.1",
           port: int = FAST_PORT) -> tuple[int, bytes]:
    """The example's answer to ``path`` (a POST of ``body`` if given) with the bearer ``token``: status and body."""
    import urllib.error
    import urllib.request

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"http://{host}:{port}{path}", data=body, method="POST" if body else "GET", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def manifest_digests(bundle: Path) -> set[str]:
    """The digests of a bundle directory's manifests and indexes (its other blobs are configs and layers)."""
    found = set()
    for path in (bundle / "blobs" / "sha256").iterdir():
        if path.stat().st_size < 1 << 16:
            try:
                media_type = json.loads(path.read_bytes()).get("mediaType", "")
            except (ValueError, UnicodeDecodeError, AttributeError):
                continue
            if "manifest" in media_type or "index" in media_type:
                found.add(f"sha256:{path.name}")
    return found


def unmount_secrets(state_dir: Path) -> None:
    """Unmount the tmpfs a device's updater mounted for opened secrets (STATE/run), if it did."""
    import subprocess

    run = state_dir / "run"
    if any(line.split()[4] == str(run) for line in Path("/proc/self/mountinfo").read_text().splitlines()):
        subprocess.run(["umount", "-l", str(run)], check=False)


def offer_of(path: Path, profile: Any, site: str | None) -> Any:
    """What ``path`` offers a device of ``profile`` at ``site`` (opened once, as the updater does)."""
    from updater.artifact import open_artifact
    from updater.plan import read_offer

    with open_artifact(path) as artifact:
        return read_offer(artifact, profile, site)


def take(store: Any, path: Path, profile: Any, *, overlay: str | None = None) -> Path:
    """Copy into a device's store the bundle ``path`` holds for ``profile`` (on a medium, the newest), or
    the overlay whose index is ``overlay``."""
    from updater.artifact import Kind, open_artifact
    from updater.medium import read_medium
    from updater.plan import newest_for

    with open_artifact(path) as artifact:
        if overlay is not None:
            return Path(store.ingest(artifact, overlay))
        if artifact.kind is Kind.MEDIUM:
            bundles = read_medium(artifact.reader, artifact.tops).bundles
            return Path(store.ingest(artifact, newest_for(bundles, profile, artifact).top.digest))
        return Path(store.ingest(artifact, artifact.top.digest))


def stage(bundle: Path, info: Any, slot_dir: Path) -> Path:
    """Stage the release of the bundle at ``bundle`` (checked as ``info``) into ``slot_dir``."""
    from updater.layout import open_layout
    from updater.stage import stage_release

    with open_layout(bundle) as reader:
        return Path(stage_release(reader, info, slot_dir))


def only_app(state_dir: Path) -> Slots:
    """The slots and state of a device's one application (with none installed yet: an empty state)."""
    apps = Apps(state_dir)
    names = apps.names()
    assert len(names) <= 1, f"the device holds several applications: {names}"
    return apps.slots(names[0]) if names else Slots(apps.root / "none")


def updater_killed_at(state_dir: Path, args: list[str], step: str, *, env: dict[str, str]) -> bool:
    """Run ``sealift-updater --state-dir STATE_DIR ARGS`` and SIGKILL it as it logs the line starting
    with ``step`` (``[5/7]``); whether it was killed (False: it finished first)."""
    import signal
    import subprocess
    import sys

    command = [sys.executable, "-c", "from updater.cli import main; main()", "--state-dir", str(state_dir), *args]
    with subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env) as proc:
        assert proc.stderr is not None
        for line in proc.stderr:
            if line.startswith(step):
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait(timeout=120)
    return proc.returncode == -signal.SIGKILL


def enrolled_device(root: Path, trusted_root: Path, engine: Any, *, name: str = "device", site: str = "plant-7") -> tuple[Any, Path]:
    """An x86_64-cpu device (an Installer on ``engine``) provisioned and enrolled at ``site``, and the
    inventory (``root/devices.yaml``) that lists it."""
    from bundler.devices import Inventory
    from updater.install import Installer
    from updater.profiles import builtin_profile_dir, load_profiles
    from updater.trust import TrustedState

    state = root / name
    TrustedState(state).init(trusted_root)
    installer = Installer(state_dir=state, runtime=engine, profile=load_profiles([builtin_profile_dir()])["x86_64-cpu"])
    record = installer.identity.enroll(site=site, profile="x86_64-cpu")
    (root / f"{name}.json").write_text(json.dumps(record))
    inventory = root / "devices.yaml"
    Inventory(inventory).add(root / f"{name}.json")
    return installer, inventory
