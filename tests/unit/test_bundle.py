"""The bundle reader against tampered, truncated, missing and hostile input."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard

from bundler.build import BuildOptions, build_bundles, select_profiles
from bundler.spec import load_spec
from tests.builders import project, reseal, rewrite_descriptor
from updater.bundle import check_bundle, verify_bundle
from updater.errors import InputError, Refused
from updater.profiles import builtin_profile_dir, load_profiles

PROFILES = load_profiles([builtin_profile_dir()])


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pristine")
    spec = load_spec(project(root / "src"))
    selected = select_profiles(spec, PROFILES, ("x86_64-nvidia",))
    (d,) = build_bundles(spec, selected, BuildOptions(out=root / "dir", epoch=0))
    (t,) = build_bundles(spec, selected, BuildOptions(out=root / "tar", format="tar", epoch=0))
    return {"dir": d.path, "tar": t.path}


@pytest.fixture
def bundle(pristine: dict[str, Path], tmp_path: Path) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(pristine["dir"], copy)
    return copy


def blob_of(bundle: Path, component: str) -> Path:
    digest = next(c.digest for c in check_bundle(bundle).bundle.components if f"{c.kind} {c.name}" == component)
    return bundle / "blobs/sha256" / digest.removeprefix("sha256:")


def image_layer(bundle: Path) -> Path:
    descriptor = check_bundle(bundle).bundle.descriptor
    manifest = json.loads((bundle / "blobs/sha256" / descriptor.images[0].manifest.removeprefix("sha256:")).read_bytes())
    return bundle / "blobs/sha256" / manifest["layers"][0]["digest"].removeprefix("sha256:")


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_pristine_bundle_passes_in_both_formats(pristine: dict[str, Path]) -> None:
    for path in pristine.values():
        report = check_bundle(path)
        assert report.ok and report.bytes_checked > 0


TAMPER: list[tuple[str, Callable[[Path], None], str]] = [
    ("model-bit-flip", lambda b: flip_byte(blob_of(b, "model detector")), "model detector (sha256:"),
    ("model-truncated", lambda b: blob_of(b, "model detector").write_bytes(blob_of(b, "model detector").read_bytes()[:-10]),
     "is truncated"),
    ("model-extended", lambda b: blob_of(b, "model detector").write_bytes(blob_of(b, "model detector").read_bytes() + b"x"),
     "is too long"),
    ("config-missing", lambda b: blob_of(b, "config settings").unlink(), "config settings (sha256:"),
    ("image-layer-flip", lambda b: flip_byte(image_layer(b)), "image app layer 1/1"),
]


@pytest.mark.parametrize(("tamper", "message"), [t[1:] for t in TAMPER], ids=[t[0] for t in TAMPER])
def test_bad_blob_is_reported_by_name(bundle: Path, tamper: Callable[[Path], None], message: str) -> None:
    tamper(bundle)
    report = check_bundle(bundle)
    assert len(report.problems) == 1
    assert message in report.problems[0]
    with pytest.raises(Refused, match=r"detector|settings|app"):
        verify_bundle(bundle)


def test_every_bad_blob_is_reported_not_just_the_first(bundle: Path) -> None:
    flip_byte(blob_of(bundle, "model detector"))
    blob_of(bundle, "config settings").unlink()
    problems = check_bundle(bundle).problems
    assert len(problems) == 2
    assert any("model detector" in p and "is corrupt" in p for p in problems)
    assert any("config settings" in p and "is missing" in p for p in problems)


def test_compressed_layer_with_wrong_content_is_refused(bundle: Path) -> None:
    """Re-compress other bytes into the model blob and fix up nothing: content digest must catch it."""
    blob = blob_of(bundle, "model detector")
    original = zstandard.ZstdDecompressor().decompress(blob.read_bytes())
    forged = zstandard.ZstdCompressor(level=3).compress(original[:-1] + b"!")
    assert len(forged) != blob.stat().st_size or forged != blob.read_bytes()
    blob.write_bytes(forged)
    problems = check_bundle(bundle).problems
    assert problems and "model detector" in problems[0]


STRUCTURE: list[tuple[str, Callable[[Path], None], str]] = [
    ("no-oci-layout", lambda b: (b / "oci-layout").unlink(), "oci-layout is missing"),
    ("index-not-json", lambda b: (b / "index.json").write_text("{nope"), "index.json: not valid JSON"),
    ("index-two-entries", lambda b: (b / "index.json").write_text(
        json.dumps({"manifests": [json.loads((b / "index.json").read_text())["manifests"][0]] * 2})), "exactly one bundle index"),
    ("top-index-tampered", lambda b: flip_byte(b / "blobs/sha256" / json.loads((b / "index.json").read_text())["manifests"][0][
        "digest"].removeprefix("sha256:")), "bundle index (sha256:"),
    ("bad-digest-syntax", lambda b: (b / "index.json").write_text((b / "index.json").read_text().replace("sha256:", "md5:", 1)),
     "sha256 digest"),
]


@pytest.mark.parametrize(("tamper", "message"), [t[1:] for t in STRUCTURE], ids=[t[0] for t in STRUCTURE])
def test_broken_structure_is_refused(bundle: Path, tamper: Callable[[Path], None], message: str) -> None:
    tamper(bundle)
    with pytest.raises(Refused) as caught:
        check_bundle(bundle)
    assert message in caught.value.diagnostics()


def test_symlinked_blob_is_refused(bundle: Path, tmp_path: Path) -> None:
    blob = blob_of(bundle, "config settings")
    outside = tmp_path / "outside"
    outside.write_bytes(blob.read_bytes())
    blob.unlink()
    blob.symlink_to(outside)
    problems = check_bundle(bundle).problems
    assert problems and "config settings" in problems[0]


def rewrite_tar(source: Path, dest: Path, extra: Callable[[tarfile.TarFile], None]) -> Path:
    with tarfile.open(source) as src, tarfile.open(dest, "w") as out:
        for member in src.getmembers():
            out.addfile(member, src.extractfile(member) if member.isreg() else None)
        extra(out)
    return dest


def add_symlink(out: tarfile.TarFile) -> None:
    info = tarfile.TarInfo("blobs/sha256/" + "0" * 64)
    info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    out.addfile(info)


def add_traversal(out: tarfile.TarFile) -> None:
    info = tarfile.TarInfo("../../evil")
    info.size = 4
    out.addfile(info, io.BytesIO(b"evil"))


def add_device(out: tarfile.TarFile) -> None:
    info = tarfile.TarInfo("blobs/sha256/" + "1" * 64)
    info.type = tarfile.CHRTYPE
    out.addfile(info)


@pytest.mark.parametrize(("extra", "message"), [
    (add_symlink, "unexpected link or special entry"),
    (add_traversal, "unexpected entry '../../evil'"),
    (add_device, "unexpected link or special entry"),
], ids=["symlink", "path-traversal", "device-node"])
def test_hostile_tar_entries_are_refused(pristine: dict[str, Path], tmp_path: Path, extra: Callable[[tarfile.TarFile], None],
                                         message: str) -> None:
    hostile = rewrite_tar(pristine["tar"], tmp_path / "hostile.tar", extra)
    with pytest.raises(Refused, match="unexpected"):
        check_bundle(hostile)
    with pytest.raises(Refused) as caught:
        check_bundle(hostile)
    assert message in caught.value.diagnostics()


def test_truncated_tar_is_refused(pristine: dict[str, Path], tmp_path: Path) -> None:
    data = pristine["tar"].read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(Refused):
        verify_bundle(cut)


def test_not_a_bundle(tmp_path: Path) -> None:
    (tmp_path / "file.txt").write_text("hello")
    with pytest.raises(Refused, match="not an uncompressed tar file"):
        check_bundle(tmp_path / "file.txt")
    with pytest.raises(InputError, match="no such bundle"):
        check_bundle(tmp_path / "absent")


FORGED: list[tuple[str, Callable[[dict], None], str]] = [  # type: ignore[type-arg]
    ("model-size-wrong-type", lambda d: d["models"][0].update(size="big"), "malformed model entry"),
    ("model-kind-unknown", lambda d: d["models"][0].update(kind="socket"), "unknown kind 'socket'"),
    ("model-content-digest-lies", lambda d: d["models"][0].update(uncompressedDigest="sha256:" + "0" * 64),
     "disagrees with the descriptor"),
    ("image-entry-not-object", lambda d: d.update(images=["vision"]), "malformed image entry"),
    ("platform-not-object", lambda d: d["profile"].update(platform="linux/amd64"), "no valid profile and platform"),
    ("profile-renamed", lambda d: d["profile"].update(name="jetson-orin"), "dev.sealift.profile disagrees"),
    ("config-dropped", lambda d: d["configs"].pop(0), "'settings' is not a declared model or config"),  # the app still mounts it
    ("model-media-type-foreign", lambda d: d["models"][0].update(mediaType="application/x-executable"),
     "has media type 'application/x-executable', not a Sealift model type"),
    ("model-file-as-directory", lambda d: d["models"][0].update(kind="directory"), "not a Sealift model type for a directory"),
    ("accelerator-unresolved", lambda d: d["app"]["services"]["app"].update({"x-sealift": {"accelerator": "required"}}),
     "descriptor.app.services.app.x-sealift.accelerator is not resolved for a profile"),
    ("device-memory", lambda d: d["app"]["services"]["app"].update(devices=["/dev/mem"]),
     "descriptor.app.services.app.devices[0]: /dev/mem reaches the device's disks, memory or kernel log"),
    ("device-not-plain", lambda d: d["app"]["services"]["app"].update(devices=["/srv/./camera"]),
     "descriptor.app.services.app.devices[0]: expected an absolute device path"),
]


@pytest.mark.parametrize(("change", "message"), [f[1:] for f in FORGED], ids=[f[0] for f in FORGED])
def test_descriptor_that_disagrees_with_the_bundle_is_refused(bundle: Path, change: Callable[[dict], None],  # type: ignore[type-arg]
                                                              message: str) -> None:
    rewrite_descriptor(bundle, change)
    with pytest.raises(Refused) as caught:
        check_bundle(bundle)
    assert message in caught.value.diagnostics()


FOREIGN_TYPES: list[tuple[str, Callable[[dict[str, dict]], None], str]] = [  # type: ignore[type-arg]
    ("image-layer-nondistributable", lambda p: p["image"]["layers"][0].update(
        mediaType="application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"), "not an OCI or Docker image layer"),
    ("image-config-foreign", lambda p: p["image"]["config"].update(mediaType="application/x-config"),
     "not an OCI or Docker image config"),
    ("payload-config-foreign", lambda p: p["payload"]["config"].update(mediaType="application/x-config"),
     "the payload is an OCI manifest with an empty config"),
]


@pytest.mark.parametrize(("change", "message"), [f[1:] for f in FOREIGN_TYPES], ids=[f[0] for f in FOREIGN_TYPES])
def test_media_types_outside_the_documented_set_are_refused(bundle: Path, change: Callable[[dict[str, dict]], None],  # type: ignore[type-arg]
                                                            message: str) -> None:
    reseal(bundle, change)
    with pytest.raises(Refused, match=message):
        check_bundle(bundle)


def test_a_descriptor_that_is_not_canonical_json_is_refused(bundle: Path) -> None:
    reseal(bundle, lambda parts: None, descriptor_json=lambda d: json.dumps(d, sort_keys=True, indent=1).encode())
    with pytest.raises(Refused, match=r"bundle descriptor .* is not canonical JSON"):
        check_bundle(bundle)
    reseal(bundle, lambda parts: None)  # the same content, canonical again
    assert check_bundle(bundle).ok


def test_same_digest_with_two_claims_is_checked_against_both(bundle: Path) -> None:
    """An image layer aliasing a compressed model's digest must not switch off the model's content check."""
    fake = "sha256:" + "ab" * 32

    def forge(parts: dict[str, dict]) -> None:  # type: ignore[type-arg]
        model = next(lay for lay in parts["payload"]["layers"] if lay["annotations"].get("dev.sealift.component") == "model")
        model["annotations"]["dev.sealift.uncompressed.digest"] = fake
        parts["descriptor"]["models"][0]["uncompressedDigest"] = fake
        parts["image"]["layers"].append({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": model["digest"],
                                         "size": model["size"]})
    reseal(bundle, forge)
    problems = check_bundle(bundle).problems
    assert len(problems) == 1 and "model detector" in problems[0] and f"expected {fake}" in problems[0]


def test_unreferenced_blob_is_a_problem(bundle: Path) -> None:
    (bundle / "blobs/sha256" / ("e" * 64)).write_bytes(b"smuggled")
    assert check_bundle(bundle).problems == (f"blobs/sha256/{'e' * 64} is not referenced by the bundle",)


def test_fifo_in_place_of_a_file_is_refused_without_blocking(bundle: Path) -> None:
    (bundle / "index.json").unlink()
    os.mkfifo(bundle / "index.json")
    with pytest.raises(Refused, match=r"index\.json is not a regular file"):
        check_bundle(bundle)


def test_symlinked_blob_directory_is_refused(bundle: Path, pristine: dict[str, Path], tmp_path: Path) -> None:
    shutil.rmtree(bundle / "blobs")
    (bundle / "blobs").symlink_to(pristine["dir"] / "blobs")
    with pytest.raises(Refused, match="blobs is not a plain directory"):
        check_bundle(bundle)


@pytest.mark.parametrize(("text", "message"), [
    ("[" * 100_000, "JSON nested more than 64 deep"),
    ('{"manifests": ' + "[" * 64 + "]" * 64 + "}", "JSON nested more than 64 deep"),
    ('{"manifests": [{"size": ' + "9" * 5000 + "}]}", "not valid JSON"),
    ("\udcff", "not valid JSON"),
    ('{"schemaVersion": 2, "manifests": [], "manifests": [{}]}', "key 'manifests' appears twice in one object"),
    ('{"manifests": [{"size": NaN}]}', "NaN is not a JSON value"),
], ids=["deep-nesting", "just-too-deep", "huge-integer", "bad-utf8", "duplicate-key", "nan"])
def test_hostile_index_json_is_one_line(bundle: Path, text: str, message: str) -> None:
    (bundle / "index.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(Refused, match=message):
        check_bundle(bundle)


def test_data_after_the_end_of_a_tar_bundle_is_refused(pristine: dict[str, Path], tmp_path: Path) -> None:
    padded = tmp_path / "padded.tar"
    padded.write_bytes(pristine["tar"].read_bytes() + b"\0" * 4096)  # zero padding is fine
    assert check_bundle(padded).ok
    junk = tmp_path / "junk.tar"
    junk.write_bytes(pristine["tar"].read_bytes() + b"smuggled bytes")
    with pytest.raises(Refused, match="data follows the end of the tar archive"):
        check_bundle(junk)


def test_tar_metadata_is_bounded(tmp_path: Path) -> None:
    huge_header = tmp_path / "pax.tar"
    info = tarfile.TarInfo("././@PaxHeader")
    info.type, info.size = tarfile.XHDTYPE, 1 << 30
    with open(huge_header, "wb") as f:
        f.write(info.tobuf(format=tarfile.USTAR_FORMAT))
        f.truncate(f.tell() + (1 << 30) + 1024)  # sparse: costs no disk
    with pytest.raises(Refused, match="extension header"):
        check_bundle(huge_header)
    many = tmp_path / "many.tar"
    with tarfile.open(many, "w") as out:
        for i in range(20_001):
            out.addfile(tarfile.TarInfo(f"blobs/sha256/{i:064x}"))
    with pytest.raises(Refused, match="more than 20000 entries"):
        check_bundle(many)


def test_zstd_frame_with_a_huge_window_is_refused(bundle: Path) -> None:
    """A frame asking for a 128 MiB window would cost that much memory per parallel check."""
    blob = blob_of(bundle, "model detector")
    content = zstandard.ZstdDecompressor().decompress(blob.read_bytes())
    params = zstandard.ZstdCompressionParameters.from_level(3, window_log=27)
    blob.write_bytes(zstandard.ZstdCompressor(compression_params=params).compress(content))
    problems = check_bundle(bundle).problems
    assert any("model detector" in p for p in problems)


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d["images"][0].update(config="sha256:" + "cd" * 32), "descriptor entry of image app disagrees"),
    (lambda d: d["images"][0].update(platform={"os": "windows", "architecture": "amd64"}), "descriptor entry of image app disagrees"),
    (lambda d: d["images"].append(dict(d["images"][0])), "lists an image name twice"),
    (lambda d: d["configs"].append(dict(d["configs"][0])), "lists a model or config name twice"),
], ids=["image-id-lies", "platform-lies", "image-twice", "config-twice"])
def test_descriptor_image_claims_must_match_the_index(bundle: Path, change: Callable[[dict], None], message: str) -> None:  # type: ignore[type-arg]
    rewrite_descriptor(bundle, change)
    with pytest.raises(Refused, match=message):
        check_bundle(bundle)


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d["app"]["services"]["app"].update(image="elsewhere"), "descriptor.app.services.app.image: 'elsewhere' is not a declared"),
    (lambda d: d["app"]["services"]["app"].update(volumes=["detector:/m:rw"]), "always mounted read-only"),
    (lambda d: d["health"]["checks"][0].update(type="ping"), "descriptor.health.checks[0].type"),
    (lambda d: d.update(secrets=["api-token"]), "malformed secret entry"),
], ids=["unknown-image", "writable-mount", "bad-check", "bad-secret"])
def test_descriptor_release_is_validated_like_a_spec(bundle: Path, change: Callable[[dict], None], message: str) -> None:  # type: ignore[type-arg]
    rewrite_descriptor(bundle, change)
    with pytest.raises(Refused) as caught:
        check_bundle(bundle)
    assert message in caught.value.diagnostics()


@pytest.mark.parametrize("where", ["member-boundary", "inside-a-header", "inside-data", "before-end-marker"])
def test_tar_cut_anywhere_is_reported_truncated(pristine: dict[str, Path], tmp_path: Path, where: str) -> None:
    data = pristine["tar"].read_bytes()
    with tarfile.open(pristine["tar"]) as archive:
        members = archive.getmembers()
    biggest = max(members, key=lambda m: m.size)
    cut = {
        "member-boundary": biggest.offset,  # just before a header
        "inside-a-header": biggest.offset + 100,
        "inside-data": biggest.offset_data + biggest.size // 2,
        "before-end-marker": members[-1].offset_data + members[-1].size + (-members[-1].size % 512),
    }[where]
    cut_copy = tmp_path / "cut.tar"
    cut_copy.write_bytes(data[:cut])
    with pytest.raises(Refused, match="tar file is truncated"):
        check_bundle(cut_copy)
