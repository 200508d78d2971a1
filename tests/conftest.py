"""Shared fixtures: real Docker engines and registries, started only when a test asks.

A missing binary or a part that does not start ends the test as a failure when ``CI``
is set and as a skip otherwise (see ``tests.realparts``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
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
