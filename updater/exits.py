"""How a command ends: an error becomes one line on stderr (and JSON with ``--json``) and an exit code."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from updater.errors import SealiftError

__all__ = ["reports_errors"]

F = TypeVar("F", bound=Callable[..., Any])


def reports_errors(func: F) -> F:
    """Print a SealiftError's one-line diagnostics (also as JSON on stdout with --json) and exit 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except SealiftError as e:
            if kwargs.get("as_json"):
                click.echo(json.dumps({"ok": False, "error": e.diagnostics()}))
            click.echo(f"error: {e.diagnostics()}", err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]
