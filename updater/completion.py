"""``completion bash|zsh|fish``: the script that makes a shell complete a Sealift command's
subcommands, options and names, from click's own shell completion."""

from __future__ import annotations

import inspect

import click
from click.shell_completion import get_completion_class

from updater.exits import emit

__all__ = ["add_completion"]

SHELLS = ("bash", "zsh", "fish")


def add_completion(group: click.Group, prog_name: str) -> None:
    """Give ``group`` a ``completion SHELL`` command printing the completion script for ``prog_name``."""
    variable = f"_{prog_name.replace('-', '_').upper()}_COMPLETE"

    @group.command("completion")
    @click.argument("shell", type=click.Choice(SHELLS))
    @click.option("--json", "as_json", is_flag=True, help="Print the script in the JSON envelope.")
    def completion(shell: str, as_json: bool) -> None:
        completer = get_completion_class(shell)
        assert completer is not None  # every shell of SHELLS has one
        script = completer(group, {}, prog_name, variable).source()
        emit({"shell": shell, "script": script}, as_json=as_json, text=script)

    completion.help = inspect.cleandoc(f"""Print the {prog_name} completion script for SHELL.

    \b
    Examples:
      {prog_name} completion bash > /etc/bash_completion.d/{prog_name}
      {prog_name} completion zsh > "${{fpath[1]}}/_{prog_name}"
      {prog_name} completion fish > ~/.config/fish/completions/{prog_name}.fish
    """)
