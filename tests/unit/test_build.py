from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from bundler.build import BuildOptions, build_bundles, select_profiles
from bundler.spec import load_spec
from tests.builders import AMD64, image_layout, project
from updater.bundle import check_bundle
from updater.errors import DeviceFault, InputError
from updater.oci import MEDIA
from updater.profiles import builtin_profile_dir, load_profiles

PROFILES = load_profiles([builtin_profile_dir()])


def build(spec_path: Path, out: Path, *, profiles: tuple[str, ...] = (), fmt: str = "dir", epoch: int = 1_700_000_000) -> list:
    spec = load_spec(spec_path)
    options = BuildOptions(out=out, format="tar" if fmt == "tar" else "dir", epoch=epoch)
    return build_bundles(spec, select_profiles(spec, PROFILES, profiles), options)


def test_one_verified_bundle_per_target_profile(tmp_path: Path) -> None:
    built = build(project(tmp_path / "src"), tmp_path / "out")
    assert [b.path.name for b in built] == ["demo-1.2.0-x86_64-cpu", "demo-1.2.0-x86_64-nvidia", "demo-1.2.0-jetson-orin"]
    for b in built:
        report = check_bundle(b.path)
        assert report.ok, report.problems
        assert (report.bundle.name, report.bundle.version, report.bundle.profile) == ("demo", "1.2.0", b.profile)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(b.path.name for b in built)


def test_index_carries_artifact_type_annotations_and_image_by_original_digest(tmp_path: Path) -> None:
    src = tmp_path / "src"
    spec = project(src)
    (b,) = build(spec, tmp_path / "out", profiles=("jetson-orin",))
    layout_index = json.loads((b.path / "index.json").read_text())
    top_digest = layout_index["manifests"][0]["digest"]
    top = json.loads((b.path / "blobs" / "sha256" / top_digest.removeprefix("sha256:")).read_bytes())
    assert top["artifactType"] == MEDIA.BUNDLE
    assert top["annotations"]["dev.sealift.profile"] == "jetson-orin"
    assert top["annotations"]["dev.sealift.compatible"] == "sealift/jetson-orin"
    assert top["annotations"]["org.opencontainers.image.created"] == "2023-11-14T22:13:20Z"
    # the arm64 manifest of the multi-arch source, byte-identical and by the same digest
    source_index = json.loads((src / "images/app/index.json").read_text())["manifests"][0]["digest"]
    source_manifests = json.loads((src / "images/app/blobs/sha256" / source_index.removeprefix("sha256:")).read_bytes())
    arm = next(m for m in source_manifests["manifests"] if m["platform"]["architecture"] == "arm64")
    image_entry = next(m for m in top["manifests"] if m.get("annotations", {}).get("dev.sealift.image") == "app")
    assert image_entry["digest"] == arm["digest"]
    blob = arm["digest"].removeprefix("sha256:")
    assert (b.path / "blobs/sha256" / blob).read_bytes() == (src / "images/app/blobs/sha256" / blob).read_bytes()


def test_same_inputs_give_byte_identical_bundles_and_tar_matches_dir(tmp_path: Path) -> None:
    spec = project(tmp_path / "src")
    first = build(spec, tmp_path / "a")
    second = build(spec, tmp_path / "b")
    tars = build(spec, tmp_path / "t", fmt="tar")
    tars_again = build(spec, tmp_path / "t2", fmt="tar")
    assert [b.info.digest for b in first] == [b.info.digest for b in second] == [b.info.digest for b in tars]
    for x, y in zip(tars, tars_again, strict=True):
        assert x.path.read_bytes() == y.path.read_bytes()
    other_time = build(spec, tmp_path / "c", epoch=1)
    assert other_time[0].info.digest != first[0].info.digest


def test_variants_pick_per_profile_models(tmp_path: Path) -> None:
    built = {b.profile: b for b in build(project(tmp_path / "src"), tmp_path / "out")}
    def model_digest(profile: str) -> str:
        return next(m.content_digest for m in built[profile].info.descriptor.models if m.name == "detector")
    assert model_digest("x86_64-nvidia") == model_digest("jetson-orin") != model_digest("x86_64-cpu")


def test_compressible_payload_is_stored_zstd_with_content_digest(tmp_path: Path) -> None:
    import hashlib

    (b,) = build(project(tmp_path / "src"), tmp_path / "out", profiles=("x86_64-nvidia",))
    detector = next(m for m in b.info.descriptor.models if m.name == "detector")
    raw = (tmp_path / "src/models/fp16.bin").read_bytes()
    assert detector.media_type == MEDIA.MODEL + "+zstd"
    assert detector.size < len(raw)
    assert detector.content_digest == f"sha256:{hashlib.sha256(raw).hexdigest()}"
    assert detector.content_size == len(raw)


def test_incompressible_payload_is_stored_as_is(tmp_path: Path) -> None:
    (b,) = build(project(tmp_path / "src", model_bytes=os.urandom(300_000)), tmp_path / "out", profiles=("x86_64-cpu",))
    detector = next(m for m in b.info.descriptor.models if m.name == "detector")
    assert detector.media_type == MEDIA.MODEL
    assert detector.digest == detector.content_digest and detector.size == 300_000


def test_identical_blobs_are_stored_once(tmp_path: Path) -> None:
    src = tmp_path / "src"
    spec = project(src)
    (src / "config/golden-out.json").write_text("1 2 3 4\n")  # same bytes as golden-in
    (b,) = build(spec, tmp_path / "out", profiles=("x86_64-cpu",))
    configs = {c.name: c.digest for c in b.info.descriptor.configs}
    assert configs["golden-in"] == configs["golden-out"]
    references = referenced_digests(b.path)
    stored = {f"sha256:{p.name}" for p in (b.path / "blobs/sha256").iterdir()}
    assert stored == set(references)  # nothing stored twice, nothing unreferenced
    assert len(references) > len(stored)  # while the same bytes are referenced more than once


def referenced_digests(layout: Path) -> list[str]:
    """Every digest the layout references, with repeats, walking index -> manifests -> blobs."""
    def load(digest: str) -> dict:  # type: ignore[type-arg]
        return json.loads((layout / "blobs/sha256" / digest.removeprefix("sha256:")).read_bytes())

    top = json.loads((layout / "index.json").read_text())["manifests"][0]["digest"]
    found = [top]
    for entry in load(top)["manifests"]:
        manifest = load(entry["digest"])
        found += [entry["digest"], manifest["config"]["digest"], *(layer["digest"] for layer in manifest["layers"])]
    return found


def test_directory_model_becomes_a_deterministic_tar_layer(tmp_path: Path) -> None:
    src = tmp_path / "src"
    spec = project(src)
    model_dir = src / "models/tree"
    (model_dir / "sub").mkdir(parents=True)
    (model_dir / "a.bin").write_bytes(b"a" * 1000)
    (model_dir / "sub/b.bin").write_bytes(b"b" * 1000)
    spec.write_text(spec.read_text().replace("path: models/int8.bin", "path: models/tree"))
    first = build(spec, tmp_path / "o1", profiles=("x86_64-cpu",))[0]
    os.utime(model_dir / "a.bin", (1, 1))  # mtimes must not matter
    second = build(spec, tmp_path / "o2", profiles=("x86_64-cpu",))[0]
    detector = next(m for m in first.info.descriptor.models if m.name == "detector")
    assert detector.kind == "directory" and detector.media_type.startswith(MEDIA.MODEL + ".tar")
    assert first.info.digest == second.info.digest


def test_symlink_in_model_directory_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "src"
    spec = project(src)
    (src / "models/tree").mkdir()
    (src / "models/tree/escape").symlink_to("/etc/passwd")
    spec.write_text(spec.read_text().replace("path: models/int8.bin", "path: models/tree"))
    with pytest.raises(InputError, match="symbolic links are not allowed"):
        build(spec, tmp_path / "out", profiles=("x86_64-cpu",))
    assert not list((tmp_path / "out").iterdir())


def test_existing_bundle_is_kept_when_identical_and_refused_when_different(tmp_path: Path) -> None:
    spec = project(tmp_path / "src")
    (first,) = build(spec, tmp_path / "out", profiles=("x86_64-cpu",))
    (again,) = build(spec, tmp_path / "out", profiles=("x86_64-cpu",))
    assert again.unchanged and again.info.digest == first.info.digest
    (tmp_path / "src/config/settings.yaml").write_text("threshold: 0.9\n")
    with pytest.raises(InputError, match="already exists with different content"):
        build(spec, tmp_path / "out", profiles=("x86_64-cpu",))
    assert check_bundle(first.path).bundle.digest == first.info.digest
    assert [p.name for p in (tmp_path / "out").iterdir()] == [first.path.name]


BAD_BUILDS = [
    ("unknown-profile-in-spec", lambda t: t.replace("jetson-orin]", "quantum-box]"), "unknown profile 'quantum-box'"),
    ("unknown-variant-profile", lambda t: t.replace("jetson-orin: {path", "jetson-nano: {path"), "unknown profile 'jetson-nano'"),
    ("missing-model", lambda t: t.replace("models/int8.bin", "models/absent.bin"), "absent.bin not found"),
    ("missing-image-layout", lambda t: t.replace("oci:images/app:1.0.0", "oci:images/none:1.0.0"), "images/none not found"),
    ("missing-tag", lambda t: t.replace("oci:images/app:1.0.0", "oci:images/app:9.9.9"), "reference 9.9.9 not found"),
    ("bad-transport", lambda t: t.replace("oci:images/app:1.0.0", "ftp:images/app"), "unknown transport 'ftp'"),
    ("image-layout-outside", lambda t: t.replace("oci:images/app:1.0.0", "oci:../elsewhere:1.0.0"), "outside the spec's directory"),
    ("image-archive-absolute", lambda t: t.replace("oci:images/app:1.0.0", "oci-archive:/etc/hostname"), "outside the spec's directory"),
]


@pytest.mark.parametrize(("edit", "message"), [b[1:] for b in BAD_BUILDS], ids=[b[0] for b in BAD_BUILDS])
def test_bad_build_input_is_one_line_and_leaves_nothing(tmp_path: Path, edit, message: str) -> None:  # type: ignore[no-untyped-def]
    spec = project(tmp_path / "src")
    spec.write_text(edit(spec.read_text()))
    out = tmp_path / "out"
    with pytest.raises(InputError) as caught:
        build(spec, out)
    assert message in caught.value.diagnostics() and "\n" not in caught.value.diagnostics()
    assert not out.exists() or not list(out.iterdir())


def test_a_path_that_leaves_the_spec_directory_after_loading_is_refused_where_it_is_read(tmp_path: Path) -> None:
    spec_path = project(tmp_path / "src")
    (tmp_path / "elsewhere").mkdir()
    image_layout(tmp_path / "elsewhere" / "app")
    (tmp_path / "elsewhere" / "shadow").write_text("root:$6$secret\n")
    spec = load_spec(spec_path)
    model = spec_path.parent / "models" / "int8.bin"
    model.unlink()
    model.symlink_to(tmp_path / "elsewhere" / "shadow")
    options = BuildOptions(out=tmp_path / "out", format="dir", epoch=0)
    with pytest.raises(InputError, match=r"models.detector: 'models/int8.bin' resolves to .*elsewhere/shadow, outside"):
        build_bundles(spec, select_profiles(spec, PROFILES, ("x86_64-cpu",)), options)
    assert not list((tmp_path / "out").iterdir())
    allowed = load_spec(spec_path, allowed_dirs=[tmp_path / "elsewhere"])
    (built,) = build_bundles(allowed, select_profiles(allowed, PROFILES, ("x86_64-cpu",)), options)
    assert any(f.name == "detector" and f.content_size == len("root:$6$secret\n") for f in built.info.descriptor.files)


def test_profile_without_a_matching_platform_is_a_clear_error(tmp_path: Path) -> None:
    src = tmp_path / "src"
    spec = project(src)
    image_layout(src / "images/app", platforms=(AMD64,))  # amd64 only
    with pytest.raises(InputError, match=r"is built for linux/amd64, the profile needs linux/arm64/v8"):
        build(spec, tmp_path / "out", profiles=("jetson-orin",))
    image_layout(src / "images/app", platforms=(AMD64, "linux/arm/v7"))
    with pytest.raises(InputError, match=r"no manifest for platform linux/arm64/v8 \(the index has: linux/amd64, linux/arm/v7\)"):
        build(spec, tmp_path / "out", profiles=("jetson-orin",))
    assert not list((tmp_path / "out").iterdir())


def test_profile_not_targeted_by_the_spec_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="'rpi5-hailo8' is not a target"):
        build(project(tmp_path / "src"), tmp_path / "out", profiles=("rpi5-hailo8",))


def test_component_missing_for_a_profile_that_needs_it(tmp_path: Path) -> None:
    spec = project(tmp_path / "src")
    spec.write_text(spec.read_text().replace("    path: models/int8.bin\n", ""))  # detector only for nvidia + jetson
    with pytest.raises(InputError, match="'detector' has no file for profile x86_64-cpu"):
        build(spec, tmp_path / "out", profiles=("x86_64-cpu",))
    assert build(spec, tmp_path / "out", profiles=("jetson-orin",))[0].path.exists()


def test_full_disk_mid_build_is_one_line_and_leaves_nothing(tmp_path: Path, small_disk: Path) -> None:
    spec = project(tmp_path / "src", model_bytes=os.urandom(3 << 20))  # bigger than the disk
    with pytest.raises(DeviceFault) as caught:
        build(spec, small_disk, profiles=("x86_64-cpu",))
    assert "no space left" in caught.value.diagnostics()
    assert list(small_disk.iterdir()) == []


def test_killed_build_leaves_no_bundle_and_the_next_build_sweeps_its_temp(tmp_path: Path) -> None:
    import signal
    import sys
    import time

    spec = project(tmp_path / "src")
    with open(tmp_path / "src/models/int8.bin", "wb") as f:
        f.truncate(3 << 30)  # sparse: long enough to kill the build while it copies
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "bundler", "build", str(spec), "--out", str(out), "--profile", "x86_64-cpu"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not list(out.glob(".sealift-tmp-*/layout/blobs")) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    leftovers = list(out.iterdir())
    assert leftovers and all(p.name.startswith(".sealift-tmp-") for p in leftovers)
    assert not list(out.glob("demo-*"))
    with open(tmp_path / "src/models/int8.bin", "wb") as f:
        f.truncate(1 << 20)
    (b,) = build(spec, out, profiles=("x86_64-cpu",))
    assert [p.name for p in out.iterdir()] == [b.path.name]


ESCAPES = [
    ("name", lambda t: t.replace("name: demo", "name: ../../escaped"), "name: expected a name"),
    ("version", lambda t: t.replace("version: 1.2.0", "version: 1.2.0/../../escaped"), "version: expected a semantic version"),
    ("variant-key", lambda t: t.replace("jetson-orin: {path", "../escaped: {path"), "'../escaped' is not a valid profile name"),
    ("profile-list", lambda t: t.replace("jetson-orin]", "../../escaped]"), "profiles[2]: expected"),
]


@pytest.mark.parametrize(("edit", "message"), [e[1:] for e in ESCAPES], ids=[e[0] for e in ESCAPES])
def test_names_that_would_escape_the_output_directory_are_refused(tmp_path: Path, edit, message: str) -> None:  # type: ignore[no-untyped-def]
    spec = project(tmp_path / "src")
    spec.write_text(edit(spec.read_text()))
    out = tmp_path / "deep" / "out"
    with pytest.raises(InputError) as caught:
        build(spec, out)
    assert message in caught.value.diagnostics()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_profile_file_with_an_escaping_name_is_refused(tmp_path: Path) -> None:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "evil.yaml").write_text("name: ../evil\nplatform: {os: linux, architecture: amd64}\ncompatible: x\n")
    with pytest.raises(InputError, match=r"name: expected a profile name"):
        load_profiles([profiles])


def test_unknown_profile_on_the_command_line_suggests_the_close_one_and_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"unknown profile 'x86-cpu' \(did you mean x86_64-cpu\? known: arm64-coral, "):
        build(project(tmp_path / "src"), tmp_path / "out", profiles=("x86-cpu",))
    with pytest.raises(InputError, match=r"unknown profile 'quantum-box' \(known: arm64-coral, "):  # nothing close: no guess
        build(project(tmp_path / "src2"), tmp_path / "out", profiles=("quantum-box",))


def test_damaged_existing_bundle_is_not_reported_unchanged(tmp_path: Path) -> None:
    spec = project(tmp_path / "src")
    (first,) = build(spec, tmp_path / "out", profiles=("x86_64-cpu",))
    model = next(c for c in first.info.components if c.name == "detector")
    blob = first.path / "blobs/sha256" / model.digest.removeprefix("sha256:")
    blob.write_bytes(blob.read_bytes()[:10])  # as a power cut before the data reached the disk would
    with pytest.raises(InputError, match="already exists and is not an intact bundle"):
        build(spec, tmp_path / "out", profiles=("x86_64-cpu",))


@pytest.mark.parametrize("fmt", ["dir", "tar"])
def test_a_bundle_appearing_under_the_final_name_is_never_replaced(tmp_path: Path, fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another build publishing the same name between our check and our move: ours must not win silently."""
    import bundler.build as build_module

    spec = project(tmp_path / "src")
    out = tmp_path / "out"
    rival = tmp_path / "rival"
    build(spec, rival, profiles=("x86_64-cpu",), fmt=fmt, epoch=1)  # same name, other content
    (rival_bundle,) = rival.iterdir()
    real_same_bundle = build_module._same_bundle
    calls: list[Path] = []

    def spy(existing: Path, digest: str) -> bool:
        calls.append(existing)
        return real_same_bundle(existing, digest)

    def land_rival() -> None:
        if rival_bundle.exists():
            os.rename(rival_bundle, out / rival_bundle.name)

    real_lexists, real_link = os.path.lexists, build_module._link

    def racing_lexists(path: object) -> bool:  # the directory case: the rival lands just after our check
        seen = real_lexists(path)  # type: ignore[arg-type]
        if str(path).endswith(rival_bundle.name):
            land_rival()
        return seen

    def racing_link(product: Path, final: Path) -> bool:  # the tar case: the rival lands just before our link
        land_rival()
        return real_link(product, final)

    monkeypatch.setattr(build_module, "_same_bundle", spy)
    monkeypatch.setattr(build_module.os.path, "lexists", racing_lexists)
    monkeypatch.setattr(build_module, "_link", racing_link)
    with pytest.raises(InputError, match="already exists with different content"):
        build(spec, out, profiles=("x86_64-cpu",), fmt=fmt)
    assert calls and check_bundle(out / rival_bundle.name).bundle.created == "1970-01-01T00:00:01Z"


def test_deeply_nested_yaml_is_one_line(tmp_path: Path) -> None:
    spec = tmp_path / "sealift.yaml"
    spec.write_text("name: " + "[" * 20_000 + "\n")
    with pytest.raises(InputError, match="YAML nested too deeply"):
        load_spec(spec)


def test_source_that_shrinks_during_the_copy_is_a_source_error(tmp_path: Path) -> None:
    from bundler.writer import open_writer

    source = tmp_path / "model.bin"
    with open(source, "wb") as f:
        f.truncate(200 << 20)
    temp = tmp_path / "temp"
    temp.mkdir()

    def shrink(_: int) -> None:
        os.truncate(source, 1 << 20)

    writer = open_writer(temp, tar=False, mtime=0, progress=shrink)
    with pytest.raises(InputError, match="changed while it was read"):
        writer.add_file(source, what="model detector")
    assert [p.name for p in (temp / "layout/blobs/sha256").iterdir()] == []
