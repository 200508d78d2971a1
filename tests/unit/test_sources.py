"""Image sources given malformed or hostile archives and layouts: one-line errors, nothing read outside."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from bundler.sources import open_image_source
from bundler.spec import SourceRoots
from updater.errors import InputError
from updater.profiles import Platform

AMD64 = Platform(os="linux", architecture="amd64")
LAYER = b"layer tar bytes" * 100
CONFIG = json.dumps({"architecture": "amd64", "os": "linux",
                     "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(LAYER).hexdigest()}"]}}).encode()


def docker_archive(path: Path, members: dict[str, bytes | str]) -> Path:
    """A tar with regular members (bytes) and symlinks (str targets)."""
    with tarfile.open(path, "w") as out:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            if isinstance(content, str):
                info.type, info.linkname = tarfile.SYMTYPE, content
                out.addfile(info)
            else:
                info.size = len(content)
                out.addfile(info, io.BytesIO(content))
    return path


def good_members() -> dict[str, bytes | str]:
    manifest = [{"Config": "cfg.json", "RepoTags": ["app:1"], "Layers": ["abc/layer.tar"]}]
    return {"manifest.json": json.dumps(manifest).encode(), "cfg.json": CONFIG, "abc/layer.tar": LAYER}


def resolve(tmp_path: Path, members: dict[str, bytes | str], ref: str = "app:1") -> None:
    archive = docker_archive(tmp_path / "image.tar", members)
    with open_image_source(f"docker-archive:{archive}:{ref}", roots=SourceRoots(tmp_path), work=tmp_path) as source:
        image = source.resolve(AMD64)
        for blob in (image.config, *image.layers):
            with source.open_blob(blob) as stream:
                assert hashlib.sha256(stream.read()).hexdigest() == blob.digest.removeprefix("sha256:")


def test_classic_docker_save_archive_resolves_with_the_config_as_image_id(tmp_path: Path) -> None:
    resolve(tmp_path, good_members())


HOSTILE = [
    ("manifest-not-json", {"manifest.json": b"{oops"}, "manifest.json: not valid JSON"),
    ("manifest-not-a-list", {"manifest.json": b'{"Config": "x"}'}, "manifest.json lists no images"),
    ("entry-without-layers", {"manifest.json": b'[{"Config": "cfg.json", "RepoTags": ["app:1"]}]', "cfg.json": CONFIG},
     "lacks Config or Layers"),
    ("config-without-diff-ids", {**good_members(), "cfg.json": b'{"architecture": "amd64", "os": "linux", "rootfs": []}'},
     "no valid rootfs.diff_ids"),
    ("bad-diff-id", {**good_members(), "cfg.json": CONFIG.replace(b"sha256:", b"md5:")}, "no valid rootfs.diff_ids"),
    ("layer-symlink-escapes", {**good_members(), "abc/layer.tar": "../../../etc/passwd"}, "is missing from the archive"),
    ("config-for-arm64", {**good_members(), "cfg.json": CONFIG.replace(b'"amd64"', b'"arm64"')},
     "is built for linux/arm64, the profile needs linux/amd64"),
]


@pytest.mark.parametrize(("members", "message"), [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE])
def test_malformed_or_hostile_archive_is_a_one_line_source_error(tmp_path: Path, members: dict[str, bytes | str],
                                                                  message: str) -> None:
    with pytest.raises(InputError) as caught:
        resolve(tmp_path, members)
    assert message in caught.value.diagnostics() and "\n" not in caught.value.diagnostics()


def test_oci_layout_with_a_non_list_index_is_refused(tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    (layout / "blobs/sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (layout / "index.json").write_text('{"manifests": "nope"}')
    with pytest.raises(InputError, match=r"layout: index\.json lists no manifests"):  # noqa: SIM117
        with open_image_source("oci:layout", roots=SourceRoots(tmp_path), work=tmp_path) as source:
            source.resolve(AMD64)
