"""A device installs only what it needs: the base package, without the build side's extras, runs the
whole device flow on the real engine (trust init, verify, install, update, rollback, status)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.builders import FAST_PORT
from tests.envelope import result_of
from tests.realparts import DockerEngine, fetch

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ("pyproject.toml", "README.md", "bundler", "updater", "profiles")


@pytest.fixture(scope="session")
def device_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv holding Sealift as a device installs it: `pip install sealift`, no extras."""
    root = tmp_path_factory.mktemp("device")
    source = root / "source"  # a copy, so the build leaves nothing in the working tree
    source.mkdir()
    for name in SHIPPED:
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(ROOT / name, source / name, **({"ignore": shutil.ignore_patterns("__pycache__")} if (ROOT / name).is_dir() else {}))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    done = subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(source)],
                          capture_output=True, text=True, timeout=900, check=False)
    if done.returncode != 0:
        pytest.fail(f"pip install of the base package failed: {done.stderr[-2000:]}")
    return venv


def test_the_base_package_lacks_the_build_extras_and_the_device_loads_no_build_code(device_venv: Path) -> None:
    code = ("import importlib.util, sys; import updater.cli; "
            "print(json.dumps({'extras': [m for m in ('sigstore', 'rich') if importlib.util.find_spec(m)], "
            "'loaded': sorted({m.split('.')[0] for m in sys.modules} & {'bundler', 'sigstore', 'rich'})}))")
    done = subprocess.run([str(device_venv / "bin/python"), "-c", f"import json; {code}"], capture_output=True, text=True,
                          check=True, timeout=60, cwd=device_venv)
    assert json.loads(done.stdout) == {"extras": [], "loaded": []}


@pytest.mark.docker
def test_the_base_package_runs_the_device_flow_on_the_real_engine(device_venv: Path, releases: dict[str, Path],
                                                                 docker_engine: DockerEngine, tmp_path: Path) -> None:
    state = tmp_path / "state"

    def updater(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(device_venv / "bin/sealift-updater"), "--state-dir", str(state), *args], capture_output=True,
                              text=True, timeout=300, check=False, cwd=tmp_path, env={**os.environ, **docker_engine.env()})

    assert updater("trust", "init", str(releases["root"])).returncode == 0
    checked = updater("verify", str(releases["1.0.0"]), "--profile", "x86_64-cpu", "--json")
    assert checked.returncode == 0 and result_of(checked.stdout)["version"] == "1.0.0", checked.stderr
    try:
        for version in ("1.0.0", "1.1.0"):
            installed = updater("install", str(releases[version]), "--profile", "x86_64-cpu", "--json")
            assert installed.returncode == 0, installed.stderr
            assert result_of(installed.stdout)["release"]["version"] == version
            assert fetch(f"http://127.0.0.1:{FAST_PORT}/healthz").status == 200
        back = updater("rollback", "--json")
        assert back.returncode == 0 and result_of(back.stdout)["release"]["version"] == "1.0.0", back.stderr
        status = result_of(updater("status", "--json").stdout)["apps"]["vision-app"]
        assert status["current"]["version"] == "1.0.0" and status["phase"] == "committed"
    finally:
        for container in docker_engine.client.containers.list(all=True, filters={"label": "dev.sealift.app=vision-app"}):
            container.remove(force=True)
