"""The OCI image-layout writer that makes the example and test images (scripts/oci_image.py)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from scripts.oci_image import (
    DirEntry,
    Entry,
    FileEntry,
    Healthcheck,
    ImageConfig,
    Platform,
    PlatformImage,
    SymlinkEntry,
    busybox_rootfs_entries,
    directory_entries,
    write_image_layout,
)

EPOCH = 1_767_225_600  # 2026-01-01T00:00:00Z
CONFIG = ImageConfig(
    entrypoint=("/app/serve.sh",),
    env=("PATH=/bin", "MODE=test"),
    exposed_ports=("8080/tcp",),
    working_dir="/app",
    healthcheck=Healthcheck(test=("CMD", "wget", "-q", "-O-", "http://127.0.0.1:8080/healthz"), interval_s=5),
)


def images(tmp_path: Path, platforms: tuple[str, ...] = ("linux/amd64", "linux/arm64/v8")) -> list[PlatformImage]:
    """A fake busybox per platform (host files, streamed) and an app layer shared by all."""
    app: tuple[Entry, ...] = (
        FileEntry(path="/app/serve.sh", data=b"#!/bin/sh\nexec httpd -f\n", mode=0o755),
        SymlinkEntry(path="/app/current", target="serve.sh"),
        DirEntry(path="/tmp", mode=0o1777),
    )
    result = []
    for text in platforms:
        platform = Platform.parse(text)
        busybox = tmp_path / f"busybox-{platform.architecture}"
        busybox.write_bytes(f"busybox for {text}\n".encode() * 1000)
        base = tuple(busybox_rootfs_entries(busybox, ["sh", "httpd", "wget"]))
        result.append(PlatformImage(platform=platform, layers=(base, app), config=CONFIG))
    return result


def blob(layout: Path, digest: str) -> bytes:
    return (layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()


def blob_json(layout: Path, digest: str) -> Any:
    return json.loads(blob(layout, digest))


def top_of(layout: Path) -> dict[str, Any]:
    (entry,) = json.loads((layout / "index.json").read_text())["manifests"]
    return dict(entry)


def manifests(layout: Path) -> list[dict[str, Any]]:
    """(platform descriptor, manifest) for each image in a multi-arch layout."""
    return list(blob_json(layout, top_of(layout)["digest"])["manifests"])


def all_files(layout: Path) -> dict[str, bytes]:
    return {str(p.relative_to(layout)): p.read_bytes() for p in sorted(layout.rglob("*")) if p.is_file()}


def test_same_inputs_give_a_byte_identical_layout(tmp_path: Path) -> None:
    first = write_image_layout(tmp_path / "a", "1.0.0", images(tmp_path), epoch=EPOCH)
    second = write_image_layout(tmp_path / "b", "1.0.0", images(tmp_path), epoch=EPOCH)
    assert first == second
    assert all_files(tmp_path / "a") == all_files(tmp_path / "b")


def test_source_date_epoch_sets_created_and_entry_mtimes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(EPOCH))
    from_env = write_image_layout(tmp_path / "env", "1.0.0", images(tmp_path))
    assert from_env == write_image_layout(tmp_path / "arg", "1.0.0", images(tmp_path), epoch=EPOCH)
    assert from_env != write_image_layout(tmp_path / "other", "1.0.0", images(tmp_path), epoch=EPOCH + 1)
    manifest = blob_json(tmp_path / "env", manifests(tmp_path / "env")[0]["digest"])
    assert blob_json(tmp_path / "env", manifest["config"]["digest"])["created"] == "2026-01-01T00:00:00Z"
    with tarfile.open(fileobj=io.BytesIO(blob(tmp_path / "env", manifest["layers"][0]["digest"]))) as tar:
        members = tar.getmembers()
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {(EPOCH, 0, 0, "", "")}


def test_every_blob_is_named_by_its_sha256(tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    write_image_layout(layout, "1.0.0", images(tmp_path), epoch=EPOCH)
    found = list((layout / "blobs" / "sha256").iterdir())
    assert len(found) == 1 + 2 * 2 + 3  # index, manifest + config per platform, 2 busybox layers + 1 shared app layer
    for path in found:
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}


def test_diff_ids_are_the_digests_of_the_uncompressed_layers(tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    write_image_layout(layout, "1.0.0", images(tmp_path), epoch=EPOCH)
    for entry in manifests(layout):
        manifest = blob_json(layout, entry["digest"])
        config = blob_json(layout, manifest["config"]["digest"])
        layers = [gzip.decompress(blob(layout, layer["digest"])) for layer in manifest["layers"]]
        assert config["rootfs"] == {
            "type": "layers",
            "diff_ids": [f"sha256:{hashlib.sha256(layer).hexdigest()}" for layer in layers],
        }
        assert {layer["mediaType"] for layer in manifest["layers"]} == {"application/vnd.oci.image.layer.v1.tar+gzip"}


def test_two_platforms_give_an_index_with_both_and_docker_runtime_config(tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    top = write_image_layout(layout, "1.0.0", images(tmp_path), epoch=EPOCH)
    assert top_of(layout) == {
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "digest": top,
        "size": len(blob(layout, top)),
        "annotations": {"org.opencontainers.image.ref.name": "1.0.0"},
    }
    platforms = [m["platform"] for m in manifests(layout)]
    assert platforms == [{"architecture": "amd64", "os": "linux"}, {"architecture": "arm64", "os": "linux", "variant": "v8"}]
    arm = blob_json(layout, blob_json(layout, manifests(layout)[1]["digest"])["config"]["digest"])
    assert (arm["architecture"], arm["os"], arm["variant"]) == ("arm64", "linux", "v8")
    assert arm["config"]["Entrypoint"] == ["/app/serve.sh"]
    assert arm["config"]["ExposedPorts"] == {"8080/tcp": {}}
    assert arm["config"]["Healthcheck"]["Interval"] == 5_000_000_000


def test_one_platform_gives_index_json_pointing_at_its_manifest(tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    top = write_image_layout(layout, "v1", images(tmp_path, ("linux/amd64",)), epoch=EPOCH)
    assert top_of(layout)["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert blob_json(layout, top)["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"


def test_layer_entries_are_sorted_with_parents_and_fixed_modes(tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    (tmp_path / "tree" / "www" / "cgi-bin").mkdir(parents=True)
    (tmp_path / "tree" / "www" / "cgi-bin" / "infer").write_text("#!/bin/sh\n")
    (tmp_path / "tree" / "notes.txt").write_text("hello\n")
    os.chmod(tmp_path / "tree" / "notes.txt", 0o600)  # the host's mode must not leak into the image
    entries = directory_entries(tmp_path / "tree", "/app", executable=lambda p: p.parent.name == "cgi-bin")
    top = write_image_layout(layout, "1", [PlatformImage(platform=Platform(architecture="amd64"), layers=(tuple(entries),))])
    (layer,) = blob_json(layout, top)["layers"]
    with tarfile.open(fileobj=io.BytesIO(blob(layout, layer["digest"]))) as tar:
        listing = [(m.name, m.type, oct(m.mode)) for m in tar.getmembers()]
    assert listing == [
        ("app", tarfile.DIRTYPE, "0o755"),
        ("app/notes.txt", tarfile.REGTYPE, "0o644"),
        ("app/www", tarfile.DIRTYPE, "0o755"),
        ("app/www/cgi-bin", tarfile.DIRTYPE, "0o755"),
        ("app/www/cgi-bin/infer", tarfile.REGTYPE, "0o755"),
    ]


def test_rewriting_a_layout_leaves_no_stale_blobs(tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    write_image_layout(layout, "1.0.0", images(tmp_path), epoch=EPOCH)
    write_image_layout(layout, "1.0.0", images(tmp_path, ("linux/amd64",)), epoch=EPOCH)
    fresh = tmp_path / "fresh"
    write_image_layout(fresh, "1.0.0", images(tmp_path, ("linux/amd64",)), epoch=EPOCH)
    assert all_files(layout) == all_files(fresh)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        pytest.param((FileEntry(path="../etc/passwd", data=b""),), "'..'", id="dot-dot"),
        pytest.param((DirEntry(path="/"),), "empty", id="root"),
        pytest.param((DirEntry(path="/a"), DirEntry(path="a/")), "given twice", id="duplicate"),
    ],
)
def test_bad_entries_are_refused(tmp_path: Path, entries: tuple[Entry, ...], message: str) -> None:
    image = PlatformImage(platform=Platform(architecture="amd64"), layers=(entries,))
    with pytest.raises(ValueError, match=message):
        write_image_layout(tmp_path / "layout", "1", [image])
    assert not (tmp_path / "layout").exists()
    assert list(tmp_path.iterdir()) == []  # the staging directory is gone too


def test_skopeo_reads_the_layout(tmp_path: Path) -> None:
    skopeo = shutil.which("skopeo")
    if skopeo is None:
        if os.environ.get("CI"):
            pytest.fail("skopeo is not installed, and CI must run this check")
        pytest.skip("skopeo is not installed")
    layout = tmp_path / "layout"
    top = write_image_layout(layout, "1.0.0", images(tmp_path), epoch=EPOCH)
    raw = subprocess.run([skopeo, "inspect", "--raw", f"oci:{layout}:1.0.0"], capture_output=True, check=True)
    assert raw.stdout == blob(layout, top)
    for arch, variant in (("amd64", None), ("arm64", "v8")):
        flags = ["--override-arch", arch, *(["--override-variant", variant] if variant else [])]
        cmd = [skopeo, "inspect", *flags, "--config", f"oci:{layout}:1.0.0"]
        config = json.loads(subprocess.run(cmd, capture_output=True, check=True).stdout)
        assert (config["architecture"], config.get("variant")) == (arch, variant)
