"""How a command ends: an error becomes one line on stderr and the exit code of its fault family
(see :mod:`updater.errors` and docs/errors.md); with ``--json``, every command prints one envelope on
stdout, the same for both commands and every outcome (docs/errors.md, "JSON output")::

    {"ok": true|false, "command": "sealift push", "result": … | null,
     "error": null | {"kind": FAULT, "message": …, "exit_code": N}}

``kind`` is the fault family (``usage`` for click's own usage errors, ``internal`` for a bug,
``interrupted`` for Ctrl-C), ``exit_code`` the process's exit code."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click

from updater.errors import DeviceFault, SealiftError

__all__ = ["INTERNAL_ERROR", "INTERRUPTED", "JsonGroup", "emit", "envelope", "fail", "reports_errors"]

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
            _ended("interrupted", "interrupted; nothing half-done was kept", INTERRUPTED, as_json=as_json)
        except Exception as e:
            if os.environ.get("SEALIFT_DEBUG"):
                raise
            _ended("internal", f"internal error: {type(e).__name__}: {e} (a bug in Sealift: run again with SEALIFT_DEBUG=1 "
                   "for the traceback, and report it)", INTERNAL_ERROR, as_json=as_json)

    return wrapper  # type: ignore[return-value]


def fail(error: SealiftError, *, as_json: bool = False, result: Any = None) -> NoReturn:
    """Print ``error`` once (``fault: message``; the envelope on stdout too with ``as_json``, with what
    the command did get done as its ``result``) and exit with its family's code."""
    if as_json:
        click.echo(json.dumps(envelope(result, error={"kind": error.fault, "message": error.diagnostics(),
                                                      "exit_code": error.exit_code})))
    click.echo(f"{error.fault}: {error.diagnostics()}", err=True)
    sys.exit(error.exit_code)


def emit(result: Any, *, as_json: bool, text: str | None = None) -> None:
    """A command's result: the envelope with ``as_json``, else ``text`` (when there is any)."""
    if as_json:
        click.echo(json.dumps(envelope(result), indent=2))
    elif text is not None:
        click.echo(text)


def envelope(result: Any, *, error: dict[str, Any] | None = None) -> dict[str, Any]:
    ctx = click.get_current_context(silent=True)
    return {"ok": error is None, "command": ctx.command_path if ctx else "", "result": result, "error": error}


def _ended(kind: str, message: str, code: int, *, as_json: bool) -> NoReturn:
    if as_json:
        click.echo(json.dumps(envelope(None, error={"kind": kind, "message": message, "exit_code": code})))
    click.echo(message, err=True)
    sys.exit(code)


class JsonGroup(click.Group):
    """A command group whose commands answer ``--json`` with the envelope even when click itself
    refuses the command line (a missing argument, an unknown option: kind ``usage``, exit 2)."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        if not standalone_mode or "--json" not in argv:
            return super().main(argv, prog_name, complete_var, standalone_mode, **extra)
        try:
            return super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as e:
            ctx = getattr(e, "ctx", None)  # a usage error knows the command it is about
            message = e.format_message()
            click.echo(json.dumps({**envelope(None, error={"kind": "usage", "message": message, "exit_code": e.exit_code}),
                                   "command": ctx.command_path if ctx else prog_name or self.name or ""}))
            click.echo(f"usage: {message} (see --help)", err=True)
            sys.exit(e.exit_code)
        except click.exceptions.Abort:
            _ended("interrupted", "interrupted; nothing half-done was kept", INTERRUPTED, as_json=True)
