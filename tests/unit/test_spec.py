from __future__ import annotations

from pathlib import Path

import pytest

from bundler.spec import load_spec
from tests.builders import SPEC
from updater.errors import InputError
from updater.healthpolicy import CheckType


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sealift.yaml"
    path.write_text(text)
    return path


def test_valid_spec_loads_into_values(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, SPEC))
    assert (spec.name, spec.version) == ("demo", "1.2.0")
    assert spec.profiles == ("x86_64-cpu", "x86_64-nvidia", "jetson-orin")
    detector = spec.models[0]
    assert detector.for_profile("x86_64-cpu") == "models/int8.bin"
    assert detector.for_profile("jetson-orin") == "models/fp16.bin"
    service = spec.app.service("app")
    assert service.ports[0].host == 8080 and service.ports[0].container == 8080
    assert [m.target for m in service.volumes] == ["/models/detector", "/etc/app/settings.yaml"]
    assert dict(service.environment)["LOG_LEVEL"] == "info"
    assert [c.type for c in spec.health.checks] == [CheckType.HTTP, CheckType.INFERENCE]
    assert spec.health.deadline == 60.0
    assert spec.secrets[0].environment == "DEMO_API_TOKEN"


def test_app_and_health_round_trip_through_their_data_form(tmp_path: Path) -> None:
    """The descriptor stores to_data(); parsing it back must give the same values."""
    from updater.appdef import parse_app
    from updater.healthpolicy import parse_health
    from updater.yamlfile import Field

    spec = load_spec(write(tmp_path, SPEC))
    app = parse_app(Field(tmp_path, "app", spec.app.to_data()), images=("app",),
                    mountable=("detector", "settings", "golden-in", "golden-out"), secrets=("api-token",))
    assert app == spec.app
    health = parse_health(Field(tmp_path, "health", spec.health.to_data()), app=app, configs=("settings", "golden-in", "golden-out"))
    assert health == spec.health


LONG_SECRET = '      image: app\n      secrets:\n        - {source: api-token, target: token, uid: "1000", gid: "1000", mode: 0440}\n'


def test_a_secret_may_name_its_file_owner_and_mode_for_a_service_that_is_not_root(tmp_path: Path) -> None:
    from updater.appdef import SecretMount, parse_app
    from updater.yamlfile import Field

    spec = load_spec(write(tmp_path, SPEC.replace("      image: app\n", LONG_SECRET)))
    (mount,) = spec.app.service("app").secrets
    assert mount == SecretMount(source="api-token", target="token", uid=1000, gid=1000, mode=0o440)
    again = parse_app(Field(tmp_path, "app", spec.app.to_data()), images=("app",),
                      mountable=("detector", "settings", "golden-in", "golden-out"), secrets=("api-token",))
    assert again == spec.app  # the descriptor's data form keeps owner and mode
    short = load_spec(write(tmp_path, SPEC.replace("      image: app\n", "      image: app\n      secrets: [api-token]\n")))
    assert short.app.service("app").secrets == (SecretMount(source="api-token", target="api-token"),)  # root, 0400


@pytest.mark.parametrize(("entry", "message"), [
    ("{source: nope}", "'nope' is not a declared secret"),
    ("{source: api-token, mode: 0640}", "a mode of read bits only"),
    ('{source: api-token, mode: "0755"}', "a mode of read bits only"),
    ("{source: api-token, uid: alice}", "a numeric user or group ID"),
    ("{source: api-token, target: /etc/passwd}", "a file name under /run/secrets"),
    ("{source: api-token, target: ../x}", "a file name under /run/secrets"),
    ("{source: api-token, owner: root}", "owner: unknown field"),
])
def test_a_malformed_secret_mount_is_named(tmp_path: Path, entry: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        load_spec(write(tmp_path, SPEC.replace("      image: app\n", f"      image: app\n      secrets:\n        - {entry}\n")))


@pytest.mark.parametrize(("entries", "message"), [
    ("[api-token, {source: api-token, target: api-token}]", "distinct targets"),
    ("[api-token, {source: api-token, target: other, uid: '1000'}]", "distinct sources"),
])
def test_a_secret_mounted_twice_in_a_service_is_refused(tmp_path: Path, entries: str, message: str) -> None:
    text = SPEC.replace("      image: app\n", f"      image: app\n      secrets: {entries}\n")
    with pytest.raises(InputError, match=message):
        load_spec(write(tmp_path, text))


def test_app_may_live_in_a_compose_file(tmp_path: Path) -> None:
    (tmp_path / "compose.yaml").write_text("services:\n  app:\n    image: app\n")
    spec = load_spec(write(tmp_path, "name: x\nversion: 1.0.0\nprofiles: all\nimages: {app: {source: oci:i}}\napp: compose.yaml\n"))
    assert spec.profiles is None and spec.app.services[0].name == "app"


BAD = [
    ("missing-name", SPEC.replace("name: demo\n", ""), "sealift.yaml: name: is required"),
    ("unknown-field", SPEC + "colour: blue\n", "colour: unknown field"),
    ("bad-version", SPEC.replace("version: 1.2.0", "version: one"), "version: expected a semantic version"),
    ("bad-name", SPEC.replace("name: demo", "name: ../etc"), "name: expected a name"),
    ("profiles-wrong-type", SPEC.replace("profiles: [x86_64-cpu, x86_64-nvidia, jetson-orin]", "profiles: 3"),
     'profiles: expected a list of profile names, or "all"'),
    ("duplicate-profile", SPEC.replace("jetson-orin]", "x86_64-cpu]"), "names a profile twice"),
    ("image-without-source", SPEC.replace("    source: oci:images/app:1.0.0\n", "    {}\n"), "images.app: needs `source`"),
    ("service-unknown-image", SPEC.replace("      image: app\n", "      image: nope\n"), "'nope' is not a declared image"),
    ("volume-unknown", SPEC.replace("detector:/models", "weights:/models"), "'weights' is not a declared model or config"),
    ("volume-rw", SPEC.replace("detector:/models/detector:ro", "detector:/models/detector:rw"), "always mounted read-only"),
    ("volume-relative", SPEC.replace("detector:/models/detector:ro", "detector:models"), "expected an absolute container path"),
    ("volume-dotdot", SPEC.replace("detector:/models/detector:ro", "detector:/models/../../etc"), "without '..'"),
    ("bad-port", SPEC.replace('"8080:8080"', '"80800:8080"'), "ports[0]: expected"),
    ("bad-env", SPEC.replace("{MODEL: /models/detector, LOG_LEVEL: info}", '["NOEQUALS"]'), "environment[0]: expected KEY=VALUE"),
    ("bad-duration", SPEC.replace("deadline: 60s", "deadline: soon"), "health.deadline: expected a duration"),
    ("check-unknown-type", SPEC.replace("type: http", "type: ping"), "checks[0].type: expected one of"),
    ("check-missing-port", SPEC.replace("{name: healthz, type: http, service: app, port: 8080, path: /healthz}",
                                        "{name: healthz, type: http, service: app}"), "checks[0].port: is required for a http check"),
    ("check-foreign-field", SPEC.replace("path: /healthz}", "path: /healthz, command: [ls]}"), "command: does not apply to a http check"),
    ("check-unknown-config", SPEC.replace("input: golden-in", "input: nowhere"), "'nowhere' is not a declared config"),
    ("check-unknown-service", SPEC.replace("{name: healthz, type: http, service: app", "{name: healthz, type: http, service: db"),
     "'db' is not a declared service"),
    ("duplicate-check", SPEC.replace("name: golden,", "name: healthz,"), "'healthz' is used by another check"),
    ("secret-value-inline", SPEC.replace("api-token: {environment: DEMO_API_TOKEN}", "api-token: {value: hunter2}"),
     "secret values never go in the spec"),
    ("secret-two-sources", SPEC.replace("{environment: DEMO_API_TOKEN}", "{environment: A, file: b}"), "exactly one of"),
    ("depends-on-cycle", SPEC.replace("      image: app\n", "      image: app\n      depends_on: [app]\n"), "depends_on forms a cycle"),
    ("model-config-clash", SPEC.replace("  settings:\n    path: config/settings.yaml", "  detector:\n    path: config/settings.yaml"),
     "is also a model name"),
    ("not-a-mapping", "- just\n- a list\n", "top level: expected a mapping, found a list"),
    ("python-tag", "name: !!python/object/apply:os.system ['true']\n", "not valid YAML"),
    ("broken-yaml", "name: [unclosed\n", "not valid YAML at line"),
]


@pytest.mark.parametrize(("text", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_spec_is_refused_naming_file_and_field(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(InputError) as caught:
        load_spec(path)
    text_of_error = caught.value.diagnostics()
    assert message in text_of_error
    assert str(path) in text_of_error
    assert "\n" not in text_of_error


def test_alias_bomb_is_refused_before_expansion(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    with pytest.raises(InputError, match="YAML nodes once aliases are expanded"):
        load_spec(write(tmp_path, "\n".join(lines) + "\n"))


@pytest.mark.parametrize(("text", "message"), [
    (SPEC.replace("version: 1.2.0\n", "version: 1.2.0\nversion: 9.9.9\n"), "line 3: key 'version' appears twice in one mapping"),
    (SPEC.replace("      image: app\n", "      image: app\n      image: other\n"), "key 'image' appears twice"),
    ("x: " + "[" * 64 + "]" * 64 + "\n", "YAML nested more than 64 deep"),
], ids=["top-level", "inside-a-service", "just-too-deep"])
def test_a_key_twice_or_deep_nesting_is_refused(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        load_spec(write(tmp_path, text))


def test_merge_keys_may_repeat_what_they_merge(tmp_path: Path) -> None:
    text = SPEC.replace("      image: app\n", "      <<: {image: other}\n      image: app\n")
    assert load_spec(write(tmp_path, text)).app.services[0].image == "app"


def test_oversized_file_is_refused_unread(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="more than the 1048576 bytes allowed"):
        load_spec(write(tmp_path, "# " + "x" * (1 << 20) + "\n"))


def test_missing_and_binary_specs_are_named(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="bundle spec not found"):
        load_spec(tmp_path / "absent.yaml")
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(InputError, match="not UTF-8"):
        load_spec(tmp_path / "bin.yaml")


OUTSIDE_SPEC = "name: x\nversion: 1.0.0\nprofiles: all\nimages: {app: {source: oci:i}}\napp: {services: {app: {image: app}}}\n"


@pytest.mark.parametrize(("field", "text"), [
    ("models.m.path", "models:\n  m: {path: PATH}\n"),
    ("models.m.variants.x86_64-cpu.path", "models:\n  m: {variants: {x86_64-cpu: {path: PATH}}}\n"),
    ("configs.c.path", "configs:\n  c: {path: PATH}\n"),
    ("secrets.s.file", "secrets:\n  s: {file: PATH}\n"),
    ("models.m.provenance.bundle", "models:\n  m: {path: m.bin, provenance: {identity: a@b.c, issuer: 'https://i', bundle: PATH}}\n"
                                   "sigstore: {trusted_root: root.json}\n"),
    ("sigstore.trusted_root", "models:\n  m: {path: m.bin, provenance: {identity: a@b.c, issuer: 'https://i'}}\n"
                              "sigstore: {trusted_root: PATH}\n"),
], ids=["model", "variant", "config", "secret-file", "provenance-bundle", "sigstore-root"])
@pytest.mark.parametrize("escape", ["dotdot", "absolute", "symlink"])
def test_every_path_a_spec_names_stays_inside_its_directory(tmp_path: Path, field: str, text: str, escape: str) -> None:
    spec_dir, elsewhere = tmp_path / "project", tmp_path / "build-machine"
    spec_dir.mkdir(), elsewhere.mkdir()
    (elsewhere / "shadow").write_text("root:$6$secret\n")
    (spec_dir / "link").symlink_to(elsewhere / "shadow")
    path = {"dotdot": "../build-machine/shadow", "absolute": str(elsewhere / "shadow"), "symlink": "link"}[escape]
    spec = write(spec_dir, OUTSIDE_SPEC + text.replace("PATH", f"'{path}'"))
    with pytest.raises(InputError, match=rf"{field}: '{path}' resolves to .*build-machine/shadow, outside the spec's directory"):
        load_spec(spec)
    assert load_spec(spec, allowed_dirs=[elsewhere]).allowed_dirs == (elsewhere,)


def test_app_file_outside_the_spec_directory_is_refused(tmp_path: Path) -> None:
    inner = tmp_path / "inner"
    inner.mkdir()
    (tmp_path / "compose.yaml").write_text("services: {app: {image: app}}\n")
    with pytest.raises(InputError, match=r"app: '../compose.yaml' resolves to .*, outside the spec's directory"):
        load_spec(write(inner, "name: x\nversion: 1.0.0\nprofiles: all\nimages: {app: {source: oci:i}}\napp: ../compose.yaml\n"))
