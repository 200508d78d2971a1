"""Staging a release into a slot: content checked, read-only, all or nothing."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest

from bundler.build import BuildOptions, build_bundles, select_profiles
from bundler.spec import load_spec
from tests.builders import project, stage
from updater.bundle import BundleInfo, check_bundle
from updater.errors import DeviceFault, Refused
from updater.profiles import builtin_profile_dir, load_profiles
from updater.stage import sweep_staging

PROFILES = load_profiles([builtin_profile_dir()])


def built(root: Path, *, directory_model: bool = False) -> tuple[Path, BundleInfo]:
    spec_path = project(root / "src")
    if directory_model:
        tree = root / "src/models/tree"
        (tree / "sub").mkdir(parents=True)
        (tree / "weights.bin").write_bytes(b"w" * 50_000)
        (tree / "sub/labels.txt").write_text("cat\ndog\n")
        spec_path.write_text(spec_path.read_text().replace("path: models/int8.bin", "path: models/tree"))
    spec = load_spec(spec_path)
    # x86_64-cpu uses the default model (the directory when asked); x86_64-nvidia a zstd-compressed file
    profile = "x86_64-cpu" if directory_model else "x86_64-nvidia"
    (b,) = build_bundles(spec, select_profiles(spec, PROFILES, (profile,)), BuildOptions(out=root / "out", epoch=0))
    return b.path, check_bundle(b.path).bundle


def test_compressed_file_payload_is_staged_as_its_content(tmp_path: Path) -> None:
    bundle, info = built(tmp_path)
    assert next(m for m in info.descriptor.models if m.name == "detector").compressed
    slot = stage(bundle, info, tmp_path / "state/slots/a")
    assert (slot / "models/detector").read_bytes() == (tmp_path / "src/models/fp16.bin").read_bytes()


def test_payload_is_staged_read_only_with_its_content(tmp_path: Path) -> None:
    bundle, info = built(tmp_path, directory_model=True)
    slot = stage(bundle, info, tmp_path / "state/slots/a")
    assert (slot / "models/detector/weights.bin").read_bytes() == b"w" * 50_000
    assert (slot / "models/detector/sub/labels.txt").read_text() == "cat\ndog\n"
    assert (slot / "configs/settings").read_bytes() == (tmp_path / "src/config/settings.yaml").read_bytes()
    assert (slot / "descriptor.json").exists()
    assert (slot / "configs/settings").stat().st_mode & 0o777 == 0o444
    assert (slot / "models/detector").stat().st_mode & 0o777 == 0o555
    assert slot.stat().st_mode & 0o777 == 0o555


def test_restaging_replaces_the_slot_whole(tmp_path: Path) -> None:
    bundle, info = built(tmp_path)
    slot = stage(bundle, info, tmp_path / "state/slots/b")
    before = (slot / "models/detector").read_bytes()
    slot = stage(bundle, info, tmp_path / "state/slots/b")
    assert (slot / "models/detector").read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "state/slots").iterdir()) == ["b"]


def test_what_a_killed_staging_left_is_swept_and_the_slots_are_kept(tmp_path: Path) -> None:
    bundle, info = built(tmp_path, directory_model=True)
    slots = tmp_path / "state/slots"
    slot = stage(bundle, info, slots / "a")
    half = stage(bundle, info, slots / "b")
    os.chmod(slots, 0o700)
    half.rename(slots / ".b-staging-0badf00d")  # read-only all through, as a staging killed before its rename leaves it
    (slots / ".a-clone").mkdir()
    sweep_staging(slots)
    assert sorted(p.name for p in slots.iterdir()) == ["a"]
    assert (slot / "models/detector/weights.bin").read_bytes() == b"w" * 50_000
    sweep_staging(tmp_path / "nothing-here")  # an application never staged: nothing to sweep


def hostile_tar(*entries: tarfile.TarInfo) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for entry in entries:
            tar.addfile(entry, io.BytesIO(b"x" * entry.size) if entry.isreg() else None)
    return out.getvalue()


def traversal() -> tarfile.TarInfo:
    info = tarfile.TarInfo("../../escaped")
    info.size = 1
    return info


def symlink() -> tarfile.TarInfo:
    info = tarfile.TarInfo("link")
    info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    return info


@pytest.mark.parametrize(("entry", "message"), [(traversal, "would leave its directory"), (symlink, "is a link or special file")],
                         ids=["path-traversal", "symlink"])
def test_hostile_directory_archive_is_refused_and_nothing_is_staged(tmp_path: Path, entry, message: str) -> None:  # type: ignore[no-untyped-def]
    bundle, info = built(tmp_path, directory_model=True)
    slot_dir = tmp_path / "state/slots/a"
    stage(bundle, info, slot_dir)  # a release already staged there stays untouched
    data = hostile_tar(entry())
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    (bundle / "blobs/sha256" / digest.removeprefix("sha256:")).write_bytes(data)
    model = next(m for m in info.descriptor.models if m.name == "detector")
    hostile = replace(model, digest=digest, size=len(data), media_type="application/vnd.sealift.model.v1.tar",
                      content_digest=digest, content_size=len(data))
    forged = replace(info, descriptor=replace(info.descriptor, models=(hostile,)))
    with pytest.raises(Refused, match=message):
        stage(bundle, forged, slot_dir)
    assert (slot_dir / "models/detector/weights.bin").exists()
    assert not (tmp_path / "state/escaped").exists() and not (tmp_path / "escaped").exists()
    assert sorted(p.name for p in slot_dir.parent.iterdir()) == ["a"]


def test_a_full_disk_while_staging_leaves_nothing(tmp_path: Path) -> None:
    bundle, info = built(tmp_path)
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)], check=False).returncode != 0:
        if os.environ.get("CI"):
            pytest.fail("cannot mount a small tmpfs to fill")
        pytest.skip("needs root to mount a small tmpfs")
    try:
        with pytest.raises(DeviceFault, match=r"into slot a failed \(the disk is full\); the running release is untouched"):
            stage(bundle, info, small / "slots/a")
        assert list((small / "slots").iterdir()) == []
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)
