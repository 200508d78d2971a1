"""The device side stands alone: ``updater`` imports nothing from ``bundler``, so a device installs
only what it needs, and the builder verifies with the device's own readers."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import updater

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


def test_importing_the_device_cli_loads_no_build_module() -> None:
    code = "import sys, updater.cli; print(sorted(m for m in sys.modules if m.split('.')[0] in ('bundler', 'sigstore', 'rich')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_the_builder_checks_bundles_with_the_device_reader() -> None:
    """``sealift verify`` and the device share one reader: the build side has none of its own."""
    import bundler.build
    import bundler.cli
    from updater.bundle import check_bundle

    assert bundler.cli.check_bundle is check_bundle
    assert bundler.build.verify_bundle.__module__ == "updater.bundle"
