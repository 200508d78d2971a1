"""Every command of both CLIs answers --json with the one documented envelope (updater/exits.py,
docs/errors.md), whatever happens: a result, a fault of any family, or a command line click refuses.
Each command is run for real with placeholder arguments: most fail (no such file, no engine), some
succeed; either way stdout is one envelope and the exit code is the one it names."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from bundler.cli import cli as sealift
from tests.envelope import check_envelope
from updater.cli import cli as updater_cli
from updater.errors import FAMILIES

KINDS = set(FAMILIES) | {"usage", "interrupted"}  # never "internal": that would be a bug


def commands(group: click.Group, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from commands(command, (*path, name))
        else:
            yield (*path, name), command


ALL = [(sealift, path, command) for path, command in commands(sealift, ())] + \
      [(updater_cli, path, command) for path, command in commands(updater_cli, ())]


def placeholder(param: click.Parameter, tmp: Path) -> list[str]:
    """A value click accepts for ``param``: the first choice, a number, else a path that does not exist."""
    if isinstance(param.type, click.Choice):
        value = str(param.type.choices[0])
    elif isinstance(param.type, click.types.IntParamType | click.types.FloatParamType | click.types.IntRange):
        value = "1"
    elif param.name in ("target", "reference", "origin", "source", "host"):
        value = "127.0.0.1:9/nothing"  # a registry that refuses connections
    else:
        value = str(tmp / f"no-{param.name}")
    values = [value] * (2 if param.nargs == 2 else 1)
    if isinstance(param, click.Option):
        return [param.opts[0], *values]
    return values


@pytest.mark.parametrize(("cli", "path", "command"), ALL, ids=[" ".join(p) for _, p, _ in ALL])
def test_every_command_answers_json_with_the_envelope(cli: click.Group, path: tuple[str, ...], command: click.Command,
                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert any(isinstance(p, click.Option) and "--json" in p.opts for p in command.params), f"{' '.join(path)} has no --json"
    monkeypatch.chdir(tmp_path)
    for name, value in {"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock", "DOCKER_CONFIG": str(tmp_path / "docker"),
                        "SEALIFT_CERTS_D": str(tmp_path / "certs.d"), "SEALIFT_KEY_PASSPHRASE": "placeholder passphrase",
                        "SEALIFT_CONFIG": str(tmp_path / "no-updater.yaml")}.items():
        monkeypatch.setenv(name, value)
    args = [a for p in command.params if p.required for a in placeholder(p, tmp_path)]
    if "once" in {p.name for p in command.params}:
        args.append("--once")  # the service: one pass, never a loop
    group_args = ["--state-dir", str(tmp_path / "state")] if cli is updater_cli else []
    prog = "sealift-updater" if cli is updater_cli else "sealift"
    result = CliRunner().invoke(cli, [*group_args, *path, *args, "--json"], prog_name=prog, input="placeholder password\n")
    envelope = check_envelope(json.loads(result.stdout))  # stdout is the envelope and nothing else
    assert envelope["command"] == " ".join((prog, *path))
    if envelope["ok"]:
        assert result.exit_code == 0, result.output
    else:
        assert envelope["error"]["kind"] in KINDS, envelope
        assert result.exit_code == envelope["error"]["exit_code"], result.output


@pytest.mark.parametrize(("cli", "argv", "prog"), [(sealift, ["push", "--json"], "sealift"),
                                                    (sealift, ["repo", "add", "--json", "--no-such-option"], "sealift"),
                                                    (updater_cli, ["install", "--json"], "sealift-updater")])
def test_a_command_line_click_refuses_is_a_usage_error_in_the_envelope(cli: click.Group, argv: list[str], prog: str) -> None:
    result = CliRunner().invoke(cli, argv, prog_name=prog)
    envelope = check_envelope(json.loads(result.stdout))
    assert envelope["error"]["kind"] == "usage" and result.exit_code == envelope["error"]["exit_code"] == 2
    assert envelope["result"] is None and result.stderr.startswith("usage: ")
