"""The updater's configuration: a file, the environment, the command line.

``/etc/sealift/updater.yaml`` (or the file ``SEALIFT_CONFIG`` names) sets the options of
``sealift-updater`` and of each of its commands, by the options' names with ``_`` for ``-``::

    state_dir: /var/lib/sealift
    run:
      source: [10.20.0.5:5000/vision-app]
      plain_http: true
      interval: 300

Each option can also come from the environment, ``SEALIFT_`` and the command's and the option's
names (``SEALIFT_STATE_DIR``, ``SEALIFT_RUN_INTERVAL``; several values of a repeatable option
separated by spaces). What the command line says wins, then the environment, then the file, then
the built-in default. A file that names an unknown command or option is refused, naming it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

from updater.errors import InputError
from updater.names import closest

__all__ = ["DEFAULT_CONFIG", "ENV_PREFIX", "load_defaults"]

DEFAULT_CONFIG = Path("/etc/sealift/updater.yaml")
ENV_PREFIX = "SEALIFT"


def load_defaults(command: click.Command, *, path: Path | None = None, environ: Mapping[str, str] | None = None,
                  default: Path = DEFAULT_CONFIG, variable: str = "SEALIFT_CONFIG", environment: bool = True,
                  what: str = "updater configuration") -> dict[str, Any] | None:
    """The defaults the environment (``environ``, default: this process's; only with ``environment``)
    and then the configuration file set for ``command`` and its subcommands (click's ``default_map``);
    None when neither sets any. ``path``: the file, else the one the ``variable`` names, else
    ``default`` when it exists."""
    environ = os.environ if environ is None else environ
    named = path or (Path(environ[variable]) if environ.get(variable) else None)
    found: dict[str, Any] = {}
    if named is not None or default.is_file():
        from updater.yamlfile import load_yaml

        top = load_yaml(named or default, what=what)
        found = _defaults(command, top.value, where=f"{top.file}") if top.present else {}
    if environment:
        _merge(found, _environment(command, ENV_PREFIX, environ))
    return found or None


def _environment(command: click.Command, prefix: str, environ: Mapping[str, str]) -> dict[str, Any]:
    """What ``PREFIX_OPTION`` variables set for ``command``'s options, and ``PREFIX_COMMAND_…`` for its
    subcommands'; a repeatable option's values are separated by spaces. Help and version never come
    from the environment."""
    found: dict[str, Any] = {}
    for option in command.params:
        if isinstance(option, click.Option) and option.name not in (None, "help", "version"):
            value = environ.get(f"{prefix}_{str(option.name).upper()}")
            if value is not None:
                found[str(option.name)] = value.split() if option.multiple else value
    for name, sub in (command.commands if isinstance(command, click.Group) else {}).items():
        if values := _environment(sub, f"{prefix}_{name.upper().replace('-', '_')}", environ):
            found[name] = values
    return found


def _merge(into: dict[str, Any], over: dict[str, Any]) -> None:
    """``over`` laid over ``into``, command by command."""
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def _defaults(command: click.Command, value: object, *, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InputError(f"{where}: expected a mapping of options (and of commands, each a mapping of its options)")
    options = {name: p for p in command.params if isinstance(p, click.Option) and p.name not in (None, "help", "version")
               for name in {p.name, *(o.lstrip("-").replace("-", "_") for o in p.opts if o.startswith("--"))}}
    commands = command.commands if isinstance(command, click.Group) else {}
    found: dict[str, Any] = {}
    for key, item in value.items():
        name = key.replace("-", "_") if isinstance(key, str) else ""  # state-dir or state_dir
        if name in options:
            found[str(options[name].name)] = _value(options[name], item, where=f"{where}: {key}")
        elif name.replace("_", "-") in commands:
            found[name.replace("_", "-")] = _defaults(commands[name.replace("_", "-")], item, where=f"{where}: {key}")
        else:
            names = [*options, *(c.replace("-", "_") for c in commands)]
            raise InputError(f"{where}: {str(key)[:60]!r} is not an option or command here ({closest(str(key), names)})")
    return found


def _value(option: click.Option, value: object, *, where: str) -> object:
    """A value as the option takes it: a list for a repeatable one, a scalar otherwise."""
    if option.multiple:
        items = value if isinstance(value, list) else [value]
        if not all(isinstance(i, str | int | float | bool) for i in items):
            raise InputError(f"{where}: expected a list of values")
        return items
    if not isinstance(value, str | int | float | bool):
        raise InputError(f"{where}: expected a single value")
    return value
