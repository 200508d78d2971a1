"""Shared fixtures: real Docker engines and registries, started only when a test asks.

A missing binary or a part that does not start ends the test as a failure when ``CI``
is set and as a skip otherwise (see ``tests.realparts``).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.realparts import DockerEngine, Registry, RegistryFactory, start_docker_engine, start_registry


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[DockerEngine]:
    """A private dockerd for the whole session (own data-root, socket and bridge)."""
    engine = start_docker_engine()
    yield engine
    engine.stop()


@pytest.fixture(scope="session")
def registry() -> Iterator[Registry]:
    """A plain-HTTP registry on 127.0.0.1 for the whole session."""
    started = start_registry()
    yield started
    started.stop()


@pytest.fixture
def registry_factory() -> Iterator[RegistryFactory]:
    """Starts more registries on demand (``config`` is merged in); stops them after the test."""
    started: list[Registry] = []

    def start(*, config: Mapping[str, Any] | None = None) -> Registry:
        started.append(start_registry(config=config))
        return started[-1]

    yield start
    for each in reversed(started):
        each.stop()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs, to fill up (needs root; a failure in CI, a skip elsewhere)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True, check=False)
    if done.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot mount a small tmpfs to fill: {done.stderr.decode().strip()}")
        pytest.skip("needs root to mount a small tmpfs")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)
