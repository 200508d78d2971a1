"""Example releases for the updater's tests, made once per session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.builders import example_releases


@pytest.fixture(scope="session")
def releases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """See :func:`tests.builders.example_releases`."""
    return example_releases(tmp_path_factory.mktemp("releases"), python=sys.executable)
