"""The commands as a user runs them: exit codes, one-line errors, JSON for scripts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.builders import project, signed
from tests.envelope import error_of, result_of
from updater.errors import DeviceFault, EngineFault, InputError, Refused


def run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bundler", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "SOURCE_DATE_EPOCH": "1700000000", **(env or {})}, check=False, timeout=300)


def updater(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    code = "from updater.cli import main; main()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=False, timeout=300,
                          env={**os.environ, **(env or {})})


def test_build_json_then_inspect_and_verify(tmp_path: Path) -> None:
    spec = project(tmp_path / "src")
    built = run("build", str(spec), "--out", str(tmp_path / "out"), "--profile", "x86_64-cpu", "--json")
    assert built.returncode == 0, built.stderr
    (result,) = result_of(built.stdout)
    assert result["profile"] == "x86_64-cpu" and result["unchanged"] is False
    assert result["location"] == result["path"] == str(tmp_path / "out/demo-1.2.0-x86_64-cpu")  # never the assembly folder
    again = result_of(run("build", str(spec), "--out", str(tmp_path / "out"), "--profile", "x86_64-cpu", "--json").stdout)
    assert again[0]["unchanged"] is True and again[0]["location"] == result["path"]
    inspected = run("inspect", result["path"], "--json")
    assert result_of(inspected.stdout)["digest"] == result["digest"]
    table = run("inspect", result["path"])
    assert "detector" in table.stdout and "x86_64-cpu" in table.stdout
    verified = run("verify", result["path"])
    assert verified.returncode == 0 and verified.stdout.startswith("ok ")
    assert "signed metadata: none (sign it with `sealift repo add`)" in verified.stdout  # built, not signed yet


def test_build_reads_outside_the_spec_directory_only_where_allowed(tmp_path: Path) -> None:
    spec = project(tmp_path / "src")
    ci_secrets = tmp_path / "ci-secrets"
    ci_secrets.mkdir()
    (ci_secrets / "weights.bin").write_bytes(b"weights from CI")
    spec.write_text(spec.read_text().replace("path: models/int8.bin", f"path: {ci_secrets / 'weights.bin'}"))
    args = ("build", str(spec), "--out", str(tmp_path / "out"), "--profile", "x86_64-cpu")
    refused = run(*args)
    assert refused.returncode == InputError.exit_code and refused.stderr.count("\n") == 1
    assert "models.detector.path" in refused.stderr and "outside the spec's directory" in refused.stderr
    assert not (tmp_path / "out" / "demo-1.2.0-x86_64-cpu").exists()
    assert run(*args, "--allow-dir", str(ci_secrets)).returncode == 0
    assert run(*args, env={"SEALIFT_ALLOW_DIRS": f"/nonexistent-is-refused-by-click:{ci_secrets}"}).returncode == InputError.exit_code
    assert run(*args, env={"SEALIFT_ALLOW_DIRS": f"{tmp_path / 'src'}:{ci_secrets}"}).returncode == 0


def test_verify_names_the_bad_blob_and_exits_non_zero(tmp_path: Path) -> None:
    spec = project(tmp_path / "src")
    run("build", str(spec), "--out", str(tmp_path / "out"), "--profile", "x86_64-cpu")
    bundle = tmp_path / "out" / "demo-1.2.0-x86_64-cpu"
    info = result_of(run("inspect", str(bundle), "--json").stdout)
    settings = next(c for c in info["components"] if c["name"] == "settings")
    (bundle / "blobs/sha256" / settings["digest"].removeprefix("sha256:")).write_text("threshold: 0.0001\n")
    done = run("verify", str(bundle), "--json")
    assert done.returncode == Refused.exit_code
    error, (result,) = error_of(done.stdout)
    assert error["kind"] == "refused" and error["exit_code"] == Refused.exit_code and "config settings" in error["message"]
    assert result["ok"] is False and result["fault"] == "refused" and "config settings" in result["problems"][0]
    plain = run("verify", str(bundle))
    assert plain.returncode == Refused.exit_code and "FAILED" in plain.stderr and "config settings" in plain.stderr


def test_errors_are_one_line_without_traceback(tmp_path: Path) -> None:
    done = run("build", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "out"))
    assert done.returncode == InputError.exit_code
    assert done.stderr.strip().count("\n") == 0 and "bundle spec not found" in done.stderr
    assert "Traceback" not in done.stderr
    spec = str(project(tmp_path / "src"))
    for epoch in ("yesterday", "\u00b2", "99999999999999", "-1"):
        bad_epoch = run("build", spec, "--out", str(tmp_path / "o"), env={"SOURCE_DATE_EPOCH": epoch})
        assert bad_epoch.returncode == InputError.exit_code
        assert "SOURCE_DATE_EPOCH" in bad_epoch.stderr and "Traceback" not in bad_epoch.stderr


def test_default_epoch_comes_from_the_specs_git_commit(tmp_path: Path) -> None:
    src = tmp_path / "src"
    spec = project(src)
    git_env = {**os.environ, "GIT_AUTHOR_DATE": "@1600000000 +0000", "GIT_COMMITTER_DATE": "@1600000000 +0000",
               "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid", "GIT_COMMITTER_NAME": "t",
               "GIT_COMMITTER_EMAIL": "t@example.invalid"}
    for cmd in (["git", "init", "-q"], ["git", "add", "."], ["git", "commit", "-qm", "spec"]):
        subprocess.run(cmd, cwd=src, env=git_env, check=True)
    env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
    done = subprocess.run([sys.executable, "-m", "bundler", "build", str(spec), "--out", str(tmp_path / "out"),
                           "--profile", "x86_64-cpu", "--json"], capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    assert result_of(done.stdout)[0]["created"] == "2020-09-13T12:26:40Z"


def test_updater_refuses_a_bundle_for_other_hardware(tmp_path: Path) -> None:
    spec = project(tmp_path / "src")
    run("build", str(spec), "--out", str(tmp_path / "out"), "--profile", "x86_64-cpu")
    bundle = tmp_path / "out" / "demo-1.2.0-x86_64-cpu"
    state = str(tmp_path / "state")
    unprovisioned = updater("--state-dir", state, "verify", str(bundle))
    assert unprovisioned.returncode == DeviceFault.exit_code and "no trusted root" in unprovisioned.stderr
    root = signed([bundle], tmp_path / "signing")
    assert updater("--state-dir", state, "trust", "init", str(root)).returncode == 0
    ok = updater("--state-dir", state, "verify", str(bundle), "--profile", "x86_64-cpu")
    assert ok.returncode == 0, ok.stderr
    refused = updater("--state-dir", state, "verify", str(bundle), "--profile", "x86_64-nvidia")
    assert refused.returncode == Refused.exit_code and "is for profile x86_64-cpu, this device is x86_64-nvidia" in refused.stderr


def test_help_explains_every_command() -> None:
    for command in ("build", "inspect", "verify", "profiles"):
        done = run(command, "--help")
        assert done.returncode == 0 and "Usage:" in done.stdout and len(done.stdout.splitlines()) > 5


def test_user_profiles_from_the_environment_serve_both_commands(tmp_path: Path) -> None:
    profiles = tmp_path / "profiles-extra"
    profiles.mkdir()
    (profiles / "acme-box.yaml").write_text("name: acme-box\nplatform: {os: linux, architecture: amd64}\ncompatible: acme/box-v1\n")
    spec = project(tmp_path / "src")
    spec.write_text(spec.read_text().replace("profiles: [x86_64-cpu, x86_64-nvidia, jetson-orin]", "profiles: [acme-box]"))
    env = {"SEALIFT_PROFILE_PATH": str(profiles)}
    built = run("build", str(spec), "--out", str(tmp_path / "out"), "--json", env=env)
    assert built.returncode == 0, built.stderr
    assert result_of(built.stdout)[0]["compatible"] == "acme/box-v1"
    bundle = tmp_path / "out" / "demo-1.2.0-acme-box"
    state = str(tmp_path / "state")
    assert updater("--state-dir", state, "trust", "init", str(signed([bundle], tmp_path / "signing"))).returncode == 0
    checked = updater("--state-dir", state, "verify", str(bundle), "--profile", "acme-box", env=env)
    assert checked.returncode == 0, checked.stderr


def test_sign_rotate_and_verify_from_the_command_line(tmp_path: Path) -> None:
    spec = project(tmp_path / "src")
    out = tmp_path / "out"
    assert run("build", str(spec), "--out", str(out), "--profile", "x86_64-cpu", "--format", "tar").returncode == 0
    bundle = str(out / "demo-1.2.0-x86_64-cpu.tar")
    env = {"SEALIFT_KEY_PASSPHRASE": "cli passphrase"}
    repo, keys = str(tmp_path / "repo"), str(tmp_path / "keys")
    init = run("repo", "init", repo, "--keys", keys, "--role-keys", "root=3", "--threshold", "root=2", "--json", env=env)
    assert init.returncode == 0, init.stderr
    root = result_of(init.stdout)["root"]
    assert run("repo", "add", repo, bundle, "--keys", keys, env=env).returncode == 0
    assert run("verify", bundle, "--trusted-root", root).returncode == 0
    rotated = run("repo", "rotate", repo, "targets", "--keys", keys, "--json", env=env)
    assert rotated.returncode == 0 and len(result_of(rotated.stdout)["revoked"]) == 1
    assert run("repo", "add", repo, bundle, "--keys", keys, env=env).returncode == 0
    assert run("verify", bundle, "--trusted-root", root).returncode == 0
    wrong = run("repo", "rotate", repo, "snapshot", "--keys", keys, env={"SEALIFT_KEY_PASSPHRASE": "wrong"})
    assert wrong.returncode == InputError.exit_code and "wrong passphrase" in wrong.stderr
    bad_option = run("repo", "init", str(tmp_path / "r2"), "--keys", keys, "--threshold", "root=two", env=env)
    assert bad_option.returncode == 2 and "expected ROLE=NUMBER" in bad_option.stderr
    other_root = tmp_path / "other"
    run("repo", "init", str(other_root), "--keys", str(tmp_path / "other-keys"), env=env)
    foreign = run("verify", bundle, "--trusted-root", str(other_root / "metadata/1.root.json"))
    assert foreign.returncode == Refused.exit_code and "not signed by enough trusted keys" in foreign.stderr


def test_commands_that_need_the_engine_say_in_one_line_when_it_does_not_answer(tmp_path: Path) -> None:
    env = {"DOCKER_HOST": f"unix://{tmp_path}/docker.sock"}
    for command in (["recover"], ["rollback"], ["install", str(tmp_path / "bundle")], ["run", "--watch", str(tmp_path), "--once"]):
        done = updater("--state-dir", str(tmp_path / "state"), *command, "--profile", "x86_64-cpu", env=env) \
            if command[0] in ("install", "run") else updater("--state-dir", str(tmp_path / "state"), *command, env=env)
        assert done.returncode == EngineFault.exit_code, (command, done.stderr)
        assert done.stderr.strip() == done.stderr.strip().splitlines()[0] and "Traceback" not in done.stderr
        assert done.stderr.startswith(f"engine: the Docker engine at unix://{tmp_path}/docker.sock does not answer")


def test_status_and_errors_give_json_for_scripts(tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    status = updater("--state-dir", state, "status", "--json")
    shown = result_of(status.stdout)
    assert status.returncode == 0 and shown == {"apps": {}, "enrollment": None, "profile": None, "updater": shown["updater"],
                                                "metadata_expires": {}, "last_poll": {}}
    missing = updater("--state-dir", state, "verify", str(tmp_path / "nothing"), "--json")
    error, result = error_of(missing.stdout)
    assert missing.returncode == error["exit_code"] == InputError.exit_code and result is None
    assert error["kind"] == "input" and "no such bundle" in error["message"] and missing.stderr.startswith("input: ")
    assert json.loads(missing.stdout)["command"] == "sealift-updater verify"
