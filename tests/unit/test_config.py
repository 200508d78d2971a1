"""The updater's options from a configuration file and the environment (updater.config), their
precedence, a bad file refused in one line, and shell completion for both commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.envelope import result_of
from updater.cli import cli
from updater.config import load_defaults
from updater.errors import InputError

BIN = Path(sys.executable).parent


def enroll(config: Path | None, *args: str, env: dict[str, str] | None = None) -> dict[str, object]:
    defaults = load_defaults(cli, path=config, environ=env or {})
    result = CliRunner().invoke(cli, [*args, "enroll", "--site", "plant-7", "--profile", "x86_64-cpu"], default_map=defaults)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_the_command_line_beats_the_environment_which_beats_the_file(tmp_path: Path) -> None:
    config = tmp_path / "updater.yaml"
    config.write_text(f"state-dir: {tmp_path / 'from-file'}\nrun:\n  source: [mirror.site:5000/vision-app]\n  interval: 300\n")
    assert load_defaults(cli, path=config, environ={}) == {"state_dir": str(tmp_path / "from-file"),
                                                           "run": {"sources": ["mirror.site:5000/vision-app"], "interval": 300}}
    over = load_defaults(cli, path=config, environ={"SEALIFT_RUN_SOURCES": "a.site:5000/x b.site:5000/y", "SEALIFT_VERSION": "1.2.0",
                                                    "SEALIFT_HELP": "1", "SEALIFT_RUN_PLAIN_HTTP": "true"})
    assert over == {"state_dir": str(tmp_path / "from-file"),  # help and version never come from the environment
                    "run": {"sources": ["a.site:5000/x", "b.site:5000/y"], "interval": 300, "plain_http": "true"}}
    enroll(config)
    assert (tmp_path / "from-file/identity/device.json").is_file()
    enroll(config, env={"SEALIFT_STATE_DIR": str(tmp_path / "from-env")})
    assert (tmp_path / "from-env/identity/device.json").is_file()
    enroll(config, "--state-dir", str(tmp_path / "from-line"), env={"SEALIFT_STATE_DIR": str(tmp_path / "from-env-2")})
    assert (tmp_path / "from-line/identity/device.json").is_file() and not (tmp_path / "from-env-2").exists()


@pytest.mark.parametrize(("text", "message"), [
    ("bogus: 1\n", "'bogus' is not an option or command here"),
    ("run:\n  intervall: 5\n", r"run: 'intervall' is not an option or command here \(did you mean interval\?"),
    ("run: [1, 2]\n", "run: expected a mapping of options"),
    ("run:\n  interval: {a: 1}\n", "run: interval: expected a single value"),
    ("state_dir: [\n", "not valid YAML"),
], ids=["unknown", "typo", "not-a-mapping", "not-a-value", "malformed"])
def test_a_bad_configuration_is_refused_naming_the_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "updater.yaml"
    config.write_text(text)
    with pytest.raises(InputError, match=message) as raised:
        load_defaults(cli, path=config, environ={})
    assert str(config) in str(raised.value) and "\n" not in str(raised.value)


def test_the_command_reads_its_configuration_and_stops_in_one_line_on_a_bad_one(tmp_path: Path) -> None:
    config = tmp_path / "updater.yaml"
    config.write_text("run:\n  intervall: 5\n")
    done = subprocess.run([str(BIN / "sealift-updater"), "status"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "SEALIFT_CONFIG": str(config)})
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "did you mean interval?" in done.stderr
    config.write_text(f"state_dir: {tmp_path / 'state'}\n")
    done = subprocess.run([str(BIN / "sealift-updater"), "enroll", "--site", "plant-7", "--profile", "x86_64-cpu"],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "SEALIFT_CONFIG": str(config)})
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "state/identity/device.json").is_file()
    # a variable that happens to share the prefix (a CI's SEALIFT_VERSION) changes nothing
    done = subprocess.run([str(BIN / "sealift-updater"), "status", "--json"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "SEALIFT_CONFIG": str(config), "SEALIFT_VERSION": "1.2.0", "SEALIFT_HELP": "1"})
    assert done.returncode == 0 and result_of(done.stdout)["enrollment"]["site"] == "plant-7", done.stderr


@pytest.mark.parametrize(("command", "typed", "expected"), [
    ("sealift-updater", "ro", "rollback"),
    ("sealift", "rollout ha", "halt"),
])
def test_completion_scripts_and_what_they_complete(command: str, typed: str, expected: str) -> None:
    variable = f"_{command.replace('-', '_').upper()}_COMPLETE"
    script = subprocess.run([str(BIN / command), "completion", "bash"], capture_output=True, text=True, timeout=60)
    assert script.returncode == 0 and variable in script.stdout and "complete -o nosort -F" in script.stdout
    words = f"{command} {typed}"
    done = subprocess.run([str(BIN / command)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, variable: "bash_complete", "COMP_WORDS": words, "COMP_CWORD": str(len(words.split()) - 1)})
    assert f"plain,{expected}" in done.stdout.splitlines()


def test_the_office_configuration_makes_signed_pushes_the_rule(tmp_path: Path) -> None:
    from bundler.build import BuildOptions, build_bundles, select_profiles
    from bundler.spec import load_spec
    from tests.builders import project
    from updater.profiles import builtin_profile_dir, load_profiles

    spec = load_spec(project(tmp_path / "src"))
    (unsigned,) = build_bundles(spec, select_profiles(spec, load_profiles([builtin_profile_dir()]), ("x86_64-cpu",)),
                                BuildOptions(out=tmp_path / "out", epoch=0))
    config = tmp_path / "sealift.yaml"
    push = [str(BIN / "sealift"), "push", str(unsigned.path), "127.0.0.1:9/demo", "--plain-http"]

    def run(text: str | None) -> subprocess.CompletedProcess[str]:
        if text is not None:
            config.write_text(text)
        env = {**os.environ, **({"SEALIFT_OFFICE_CONFIG": str(config)} if text is not None else {})}
        return subprocess.run(push, capture_output=True, text=True, timeout=60, env=env)

    warned = run(None)  # no configuration: a warning, then the push fails only on the registry that is not there
    assert warned.returncode == 4 and "warning: " in warned.stderr
    refused = run("push:\n  require_signed: true\nexport:\n  require_signed: true\n")
    assert refused.returncode == 3 and "(--require-signed)" in refused.stderr  # before any connection
    typo = run("push:\n  require_signd: true\n")
    assert typo.returncode == 2 and "did you mean require_signed?" in typo.stderr and typo.stderr.count("\n") == 1
