"""How a command ends: an error becomes one line on stderr (and JSON on stdout with ``--json``)
and the exit code of its fault family (see :mod:`updater.errors` and docs/errors.md)."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click

from updater.errors import DeviceFault, SealiftError

__all__ = ["INTERNAL_ERROR", "INTERRUPTED", "fail", "reports_errors"]

F = TypeVar("F", bound=Callable[..., Any])
INTERRUPTED = 130  # as a shell reports a command stopped by Ctrl-C (128 + SIGINT)
INTERNAL_ERROR = 70  # EX_SOFTWARE: a bug of Sealift's, not a fault of the input, the network or the machine


def reports_errors(func: F) -> F:
    """Run a command; end a SealiftError (or an OSError no step could name) in one line and its exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        as_json = bool(kwargs.get("as_json"))
        try:
            return func(*args, **kwargs)
        except SealiftError as e:
            fail(e, as_json=as_json)
        except OSError as e:  # the machine's own disk or files, at a step that did not wrap it
            fail(DeviceFault(f"{e.filename or 'the device'}: {e.strerror or e}"), as_json=as_json)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise  # click's own usage errors: it prints them and exits 2
        except KeyboardInterrupt:
            click.echo("interrupted; nothing half-done was kept", err=True)
            sys.exit(INTERRUPTED)
        except Exception as e:
            if os.environ.get("SEALIFT_DEBUG"):
                raise
            click.echo(f"internal error: {type(e).__name__}: {e} (a bug in Sealift: run again with SEALIFT_DEBUG=1 "
                       "for the traceback, and report it)", err=True)
            sys.exit(INTERNAL_ERROR)

    return wrapper  # type: ignore[return-value]


def fail(error: SealiftError, *, as_json: bool = False) -> NoReturn:
    """Print ``error`` once (``fault: message``; JSON on stdout too with ``as_json``) and exit with its family's code."""
    if as_json:
        click.echo(json.dumps({"ok": False, "fault": error.fault, "exit_code": error.exit_code, "error": error.diagnostics()}))
    click.echo(f"{error.fault}: {error.diagnostics()}", err=True)
    sys.exit(error.exit_code)
