"""Example releases for the updater's tests, made once per session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bundler.build import BuildOptions, build_bundles, select_profiles
from bundler.profiles import builtin_profile_dir, load_profiles
from bundler.spec import load_spec
from tests.builders import FAST_PORT, signed

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "vision-app"
PROFILES = load_profiles([builtin_profile_dir()])


@pytest.fixture(scope="session")
def releases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two healthy example releases with a short stabilisation window, signed."""
    done = subprocess.run([str(EXAMPLE / "make-images.sh")], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHON": sys.executable}, check=False)
    if done.returncode != 0:
        pytest.fail(f"make-images.sh failed: {done.stderr[-2000:]}")
    root = tmp_path_factory.mktemp("fast")
    # its own host port, so these tests never meet another user of 8080
    (root / "compose.yaml").write_text((EXAMPLE / "compose.yaml").read_text().replace('"8080:8080"', f'"{FAST_PORT}:8080"'))
    text = (EXAMPLE / "sealift.yaml").read_text()
    for relative in ("build/images/vision-app", "models/", "config/", "golden/"):
        text = text.replace(f" {relative}", f" {EXAMPLE}/{relative}").replace(f":{relative}", f":{EXAMPLE}/{relative}")
    text = text.replace("stabilisation: 20s", "stabilisation: 2s")
    # a port bound to an address this host does not have (TEST-NET-3): the engine refuses to start it
    (root / "compose-cannot-start.yaml").write_text(
        (root / "compose.yaml").read_text().replace(f'"{FAST_PORT}:8080"', f'"203.0.113.7:{FAST_PORT}:8080"')
    )
    built: dict[str, Path] = {}
    for version in ("1.0.0", "1.1.0", "1.2.0"):
        spec_path = root / f"sealift-{version}.yaml"
        variant = text.replace("version: 1.0.0", f"version: {version}")
        if version == "1.2.0":  # its container cannot even start
            variant = variant.replace("app: compose.yaml", "app: compose-cannot-start.yaml")
        spec_path.write_text(variant)
        spec = load_spec(spec_path)
        (b,) = build_bundles(spec, select_profiles(spec, PROFILES, ("x86_64-cpu",)), BuildOptions(out=root / "out", epoch=0))
        built[version] = b.path
    built["root"] = signed([built["1.0.0"], built["1.1.0"], built["1.2.0"]], root / "signing")
    return built


