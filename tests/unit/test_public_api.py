"""The packages' public surface is explicit: every name in __all__ exists, and nothing private leaks."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import bundler
import updater

MODULES = [
    f"{package.__name__}.{m.name}"
    for package in (bundler, updater)
    for m in pkgutil.iter_modules(package.__path__)
    if not m.name.startswith("_")
]


@pytest.mark.parametrize("package", [bundler, updater], ids=["bundler", "updater"])
def test_package_exports_exist_and_are_public(package: object) -> None:
    names = package.__all__  # type: ignore[attr-defined]
    assert names == sorted(names)
    for name in names:
        assert not name.startswith("_") and hasattr(package, name)


@pytest.mark.parametrize("module", MODULES)
def test_every_module_declares_what_it_exports(module: str) -> None:
    loaded = importlib.import_module(module)
    assert isinstance(getattr(loaded, "__all__", None), list), f"{module} has no __all__"
    for name in loaded.__all__:
        assert hasattr(loaded, name), f"{module}.__all__ names {name}, which does not exist"
