"""Every command's --help ends with examples, and each example is an invocation that command accepts."""

from __future__ import annotations

import shlex
from collections.abc import Iterator

import click
import pytest
from click.testing import CliRunner

from bundler.cli import cli as sealift
from updater.cli import cli as sealift_updater

CLIS: dict[str, click.Command] = {"sealift": sealift, "sealift-updater": sealift_updater}
_SEPARATORS = {"&&", "||", ";", "|"}
_REDIRECTS = {">", ">>", "<"}


def _tree(command: click.Command, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            yield from _tree(sub, (*path, name))


COMMANDS = [found for prog, root in CLIS.items() for found in _tree(root, (prog,))]


def _examples(help_text: str) -> list[str]:
    """The command lines of the help's Examples: paragraph (a line ending in a backslash joined with the next)."""
    lines = help_text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == "Examples:"), None)
    if start is None:
        return []
    examples, pending = [], ""
    for line in lines[start + 1:]:
        if not line.strip():
            break
        if line.strip().startswith("#"):
            continue
        pending += line.strip()
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip() + " "
            continue
        examples.append(pending)
        pending = ""
    return examples


def _invocations(example: str) -> list[list[str]]:
    """The commands an example's shell line runs (split at &&, ;, |), without redirections and comments."""
    lexer = shlex.shlex(example, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    redirected = False
    for token in lexer:
        if redirected:
            redirected = False
        elif token in _SEPARATORS:
            commands.append([])
        elif token in _REDIRECTS:
            redirected = True
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


def _option(command: click.Command, name: str) -> click.Option | None:
    return next((p for p in command.params if isinstance(p, click.Option) and name in (*p.opts, *p.secondary_opts)), None)


def _levels(tokens: list[str]) -> tuple[list[tuple[str, click.Command, list[str]]], list[str]]:
    """Split ``PROG [OPTIONS] SUB [OPTIONS] … ARGS`` into (name, command, its own arguments) per level, and
    name each --option that is not an option of the command it follows."""
    prog, *rest = tokens
    levels: list[tuple[str, click.Command, list[str]]] = [(prog, CLIS[prog], [])]
    problems = []
    while rest:
        token = rest.pop(0)
        _, command, args = levels[-1]
        if token.startswith("-") and token != "-":
            option_name, has_value, _ = token.partition("=")
            option = _option(command, option_name)
            if option is None and option_name not in ("-h", "--help"):
                problems.append(f"`{' '.join(n for n, _, _ in levels)}` has no option {option_name}")
            args.append(token)
            if option is not None and not (option.is_flag or option.count or has_value):
                args.extend(rest[:option.nargs])
                del rest[:option.nargs]
        elif isinstance(command, click.Group) and token in command.commands:
            levels.append((token, command.commands[token], []))
        else:
            args.append(token)
    return levels, problems


def _check(tokens: list[str]) -> tuple[tuple[str, ...], list[str]]:
    """The command path an invocation reaches, and what click (or _levels) finds wrong with it."""
    levels, problems = _levels(tokens)
    parent: click.Context | None = None
    for i, (name, command, args) in enumerate(levels):
        below = [levels[i + 1][0]] if i + 1 < len(levels) else []  # a group parses up to its subcommand
        try:
            parent = command.make_context(name, [*args, *below], parent=parent)
        except click.ClickException as e:
            problems.append(f"`{' '.join(n for n, _, _ in levels[:i + 1])}`: {e.format_message()}")
            break
    return tuple(name for name, _, _ in levels), problems


def _help(path: tuple[str, ...]) -> str:
    done = CliRunner().invoke(CLIS[path[0]], [*path[1:], "--help"], prog_name=path[0])
    assert done.exit_code == 0, done.output
    return done.output


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[" ".join(path) for path, _ in COMMANDS])
def test_help_shows_examples_that_the_command_accepts(path: tuple[str, ...], command: click.Command) -> None:
    shown = " ".join(path)
    examples = _examples(_help(path))
    assert examples, f"`{shown} --help` has no Examples: paragraph"
    for example in examples:
        invocations = _invocations(example)
        assert invocations and invocations[0][0] == path[0], f"{shown}: example {example!r} does not start with {path[0]}"
        reached = []
        for tokens in (c for c in invocations if c[0] in CLIS):
            where, problems = _check(tokens)
            assert not problems, f"{shown}: example {example!r}: {'; '.join(problems)}"
            reached.append(where)
        is_group = isinstance(command, click.Group)
        assert any(r == path or (is_group and r[:len(path)] == path) for r in reached), \
            f"{shown}: example {example!r} runs {[' '.join(r) for r in reached]}, not {shown}"


@pytest.mark.parametrize(("example", "found"), [
    pytest.param("sealift build sealift.yaml --no-such-option", "`sealift build` has no option --no-such-option", id="unknown-option"),
    pytest.param("sealift-updater status --state-dir /data/sealift", "`sealift-updater status` has no option --state-dir",
                 id="group-option-after-subcommand"),
    pytest.param("sealift push registry.example.com/vision-app", "Missing argument", id="missing-argument"),
    pytest.param("sealift rollout pause repo/ vision-app 1.4.0", "Missing option '--keys'", id="missing-required-option"),
    pytest.param("sealift repo rotate repo/ vision-app --keys keys/", "'vision-app' is not one of", id="bad-choice"),
    pytest.param("sealift rollout show repo/ vision-app 1.4.0", "unexpected extra argument", id="extra-argument"),
    pytest.param("sealift completion bash && sealift export out/x --tos /media/usb", "`sealift export` has no option --tos",
                 id="second-command-wrong"),
])
def test_a_wrong_example_is_found(example: str, found: str) -> None:
    problems = [problem for tokens in _invocations(example) for problem in _check(tokens)[1]]
    assert any(found in problem for problem in problems), problems


def test_examples_are_read_up_to_the_paragraph_end() -> None:
    text = "Usage: x\n\n  Examples:\n    # build\n    sealift build a.yaml \\\n      --out b  # into b\n    sealift profiles\n\nOptions:\n"
    assert _examples(text) == ["sealift build a.yaml --out b  # into b", "sealift profiles"]
    assert _examples("Usage: x\n\n  Example:\n    sealift profiles\n") == []
