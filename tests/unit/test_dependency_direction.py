"""The device side stands alone: ``updater`` imports nothing from ``bundler``, so a device installs
only what it needs, and the builder verifies with the device's own readers."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import updater
from tests.envelope import result_of

UPDATER = Path(updater.__file__).parent


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_no_updater_module_names_bundler() -> None:
    offenders = {path.name: sorted(m for m in _imported_modules(path) if m.split(".")[0] == "bundler")
                 for path in sorted(UPDATER.glob("*.py"))}
    assert {name: found for name, found in offenders.items() if found} == {}


@pytest.mark.parametrize(("module", "absent"), [
    ("updater.cli", ("bundler", "sigstore", "rich", "tuf", "docker", "oras", "requests", "cryptography", "zstandard", "yaml")),
    ("bundler.cli", ("sigstore", "rich", "tuf", "securesystemslib", "docker", "oras", "requests", "cryptography", "zstandard")),
], ids=["sealift-updater", "sealift"])
def test_a_command_line_loads_the_libraries_of_a_command_only_when_it_runs(module: str, absent: tuple[str, ...]) -> None:
    """Starting a command costs what it uses (sealift-updater status, sealift --help): the heavy
    libraries are imported by the commands that need them (figures: scripts/bench.py --startup)."""
    code = f"import sys, {module}; print(sorted({{m.split('.')[0] for m in sys.modules}} & set({absent!r})))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_the_builder_checks_bundles_with_the_device_reader() -> None:
    """``sealift build`` and ``sealift verify`` check bundles with the device's reader: the build side has none of its own."""
    import bundler.build
    import bundler.check
    import updater.bundle

    assert bundler.build.verify_bundle is updater.bundle.verify_bundle
    assert bundler.check.check_bundle is updater.bundle.check_bundle
    readers = {"check_bundle", "verify_bundle", "open_layout", "read_index", "check_overlay", "check_medium"}
    BUNDLER = Path(bundler.build.__file__).parent
    defined = {node.name for path in BUNDLER.glob("*.py") for node in ast.parse(path.read_text()).body
               if isinstance(node, ast.FunctionDef)}
    assert defined & readers == set()


def test_status_on_a_device_with_nothing_installed_loads_no_heavy_library(tmp_path: Path) -> None:
    """`sealift-updater status` reads its files (state, enrollment, last polls, expiry) as plain JSON."""
    code = ("import sys; from updater.cli import main; sys.argv = ['sealift-updater', '--state-dir', sys.argv[1], 'status', '--json']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'tuf', 'docker', 'oras', 'cryptography', 'securesystemslib', "
            "'prometheus_client'}), file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "state")], capture_output=True, text=True, check=True)
    assert result_of(done.stdout)["apps"] == {} and done.stderr.strip() == "[]"
