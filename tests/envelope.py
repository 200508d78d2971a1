"""The JSON envelope every command prints with ``--json`` (updater/exits.py), read by the tests."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["check_envelope", "error_of", "result_of", "sealift_json"]


def check_envelope(envelope: Any) -> dict[str, Any]:
    """``envelope`` has the documented shape, whatever the outcome; returns it."""
    assert isinstance(envelope, dict) and set(envelope) == {"ok", "command", "result", "error"}, envelope
    assert isinstance(envelope["ok"], bool) and isinstance(envelope["command"], str)
    if envelope["ok"]:
        assert envelope["error"] is None, envelope
    else:
        error = envelope["error"]
        assert isinstance(error, dict) and set(error) == {"kind", "message", "exit_code"}, envelope
        assert isinstance(error["kind"], str) and isinstance(error["message"], str) and isinstance(error["exit_code"], int)
        assert error["exit_code"] != 0 and "\n" not in error["message"]
    return envelope


def result_of(stdout: str) -> Any:
    """The result a successful command printed in its envelope."""
    envelope = check_envelope(json.loads(stdout))
    assert envelope["ok"], envelope
    return envelope["result"]


def error_of(stdout: str) -> tuple[dict[str, Any], Any]:
    """The error a failed command printed in its envelope, and what it got done (its result)."""
    envelope = check_envelope(json.loads(stdout))
    assert not envelope["ok"], envelope
    return envelope["error"], envelope["result"]


def sealift_json(*args: str) -> dict[str, Any]:
    """The result of ``sealift ARGS --json``, which must succeed."""
    from click.testing import CliRunner

    from bundler.cli import cli

    result = CliRunner().invoke(cli, [*args, "--json"])
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = result_of(result.stdout)
    return data
