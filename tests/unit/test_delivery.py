"""Delivery without a registry: references, retries, media (full, delta, damaged, on a full disk),
the device's bundle store, resumed blob copies and the daemon's backoff."""

from __future__ import annotations

import errno
import json
import os
import re
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import pytest
from click.testing import CliRunner

from bundler.build import BuildOptions, build_bundles, select_profiles
from bundler.cli import cli as sealift
from bundler.export import export
from bundler.spec import load_spec
from tests.builders import manifest_digests, offer_of, project, take
from tests.envelope import error_of
from updater.daemon import Daemon
from updater.errors import Conflict, ContentMismatch, DeliveryError, DeviceFault, EngineFault, InputError, Refused
from updater.layout import open_layout
from updater.medium import check_medium
from updater.oci import Descriptor
from updater.profiles import builtin_profile_dir, load_profiles
from updater.registry import Reference, Retry, parse_reference
from updater.store import BundleStore
from updater.transfer import DirectoryEndpoint, ReaderEndpoint

PROFILES = load_profiles([builtin_profile_dir()])


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """demo 1.2.0 and 1.3.0 for x86_64-cpu and jetson-orin; 1.3.0 changes the CPU model (1 MiB each)."""
    root = tmp_path_factory.mktemp("versions")
    spec_path = project(root / "src", model_bytes=os.urandom(1 << 20))
    built: dict[str, Path] = {}
    for version in ("1.2.0", "1.3.0"):
        if version == "1.3.0":
            (root / "src/models/int8.bin").write_bytes(os.urandom(1 << 20))
            spec_path.write_text(spec_path.read_text().replace("version: 1.2.0", "version: 1.3.0"))
        spec = load_spec(spec_path)
        selected = select_profiles(spec, PROFILES, ("x86_64-cpu", "jetson-orin"))
        for b in build_bundles(spec, selected, BuildOptions(out=root / "out", epoch=0)):
            built[f"{b.info.version}-{b.info.profile}"] = b.path
    return built


def blobs(bundle: Path) -> set[str]:
    return {p.name for p in (bundle / "blobs" / "sha256").iterdir() if not p.name.startswith(".")}


@pytest.mark.parametrize(("text", "expected"), [
    ("registry.example.com/vision-app", Reference("registry.example.com", "vision-app")),
    ("127.0.0.1:5000/team/app:x86_64-cpu-1.0.0", Reference("127.0.0.1:5000", "team/app", tag="x86_64-cpu-1.0.0")),
    ("docker://localhost/app@sha256:" + "a" * 64, Reference("localhost", "app", digest="sha256:" + "a" * 64)),
])
def test_references_parse(text: str, expected: Reference) -> None:
    assert parse_reference(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("vision-app", "expected HOST"),
    ("library/app", "expected HOST"),
    ("host.example/App", "not a valid repository name"),
    ("host.example/app:bad/tag", "'bad/tag' is not a valid tag"),
    ("host.example/app@sha256:12", "not a sha256 digest"),
    ("host.example/app:-x", "not a valid tag"),
])
def test_malformed_references_are_named(text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_reference(text)


def test_retries_wait_longer_each_time_with_jitter() -> None:
    waits = [list(Retry(delays=(1.0, 4.0), jitter=0.5).waits()) for _ in range(50)]
    assert all(w[2] is None and 0.5 <= w[0] <= 1.5 and 2.0 <= w[1] <= 6.0 for w in waits)  # type: ignore[operator]
    assert len({w[0] for w in waits}) > 1  # devices do not retry in step


def test_a_full_medium_and_a_delta_check_out(versions: dict[str, Path], tmp_path: Path) -> None:
    full = export([versions["1.3.0-x86_64-cpu"], versions["1.3.0-jetson-orin"]], tmp_path / "full")
    delta = export([versions["1.3.0-x86_64-cpu"]], tmp_path / "delta", bases=(str(versions["1.2.0-x86_64-cpu"]),))
    assert [b.profile for b in full.bundles] == ["x86_64-cpu", "jetson-orin"] and full.bundles[0].base is None
    (entry,) = delta.bundles
    manifests = {d.removeprefix("sha256:") for d in manifest_digests(versions["1.3.0-x86_64-cpu"])}
    shared = blobs(versions["1.3.0-x86_64-cpu"]) & blobs(versions["1.2.0-x86_64-cpu"]) - manifests
    assert entry.base is not None and entry.base["version"] == "1.2.0" and entry.blobs_from_base == len(shared)
    assert not blobs(tmp_path / "delta") & shared
    for medium in (tmp_path / "full", tmp_path / "delta"):
        assert check_medium(medium).problems == []
    assert "needs demo 1.2.0 already installed" in (tmp_path / "delta/README.txt").read_text()
    sums = (tmp_path / "full/SHA256SUMS").read_text()
    assert "index.json" in sums and "tuf/" not in sums  # unsigned bundles carry no metadata


@pytest.mark.parametrize(("damage", "problem"), [
    (lambda m: (m / "SHA256SUMS").unlink(), "SHA256SUMS is missing"),
    (lambda m: next(p for p in (m / "blobs/sha256").iterdir() if p.stat().st_size > 4096).unlink(), "is missing (copied halfway?)"),
    (lambda m: _truncate(max((m / "blobs/sha256").iterdir(), key=lambda p: p.stat().st_size)), "does not match SHA256SUMS"),
    (lambda m: (m / "README.txt").write_text("edited"), "README.txt does not match SHA256SUMS"),
])
def test_a_damaged_or_half_copied_medium_fails_its_check(versions: dict[str, Path], tmp_path: Path, damage, problem: str) -> None:  # type: ignore[no-untyped-def]
    medium = tmp_path / "stick"
    export([versions["1.2.0-x86_64-cpu"]], medium)
    damage(medium)
    result = CliRunner().invoke(sealift, ["verify", str(medium), "--json"])
    assert result.exit_code == Refused.exit_code
    error, (report,) = error_of(result.stdout)
    assert error["kind"] == "refused" and report["ok"] is False and any(problem in p for p in report["problems"])


def _truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


def test_a_tar_medium_cut_short_is_named_truncated(versions: dict[str, Path], tmp_path: Path) -> None:
    medium = tmp_path / "stick.tar"
    export([versions["1.2.0-x86_64-cpu"]], medium)
    with tarfile.open(medium) as tar:
        assert tar.getnames()[0] == "sealift-medium.json" and tar.getnames()[-1] == "SHA256SUMS"
    _truncate(medium)
    result = CliRunner().invoke(sealift, ["verify", str(medium)])
    assert result.exit_code == Refused.exit_code and "truncated" in result.stderr


def test_export_refuses_an_existing_medium_and_an_unmatched_base(versions: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "used").mkdir()
    (tmp_path / "used/notes").write_text("x")
    with pytest.raises(InputError, match="already exists"):
        export([versions["1.2.0-x86_64-cpu"]], tmp_path / "used")
    with pytest.raises(InputError, match="no exported bundle has its name and profile"):
        export([versions["1.3.0-x86_64-cpu"]], tmp_path / "new", bases=(str(versions["1.2.0-jetson-orin"]),))


def test_a_full_disk_during_export_is_one_line_and_the_medium_fails_its_check(versions: dict[str, Path], small_disk: Path) -> None:
    with pytest.raises(DeviceFault) as caught:  # 2 MiB of bundles on a 2 MiB disk
        export([versions["1.2.0-x86_64-cpu"], versions["1.3.0-x86_64-cpu"]], small_disk / "stick")
    assert "the disk is full" in caught.value.diagnostics() and "\n" not in caught.value.diagnostics()
    assert not (small_disk / "stick/SHA256SUMS").exists()
    assert CliRunner().invoke(sealift, ["verify", str(small_disk / "stick")]).exit_code == Refused.exit_code  # never complete


def test_the_store_shares_blobs_between_releases_and_keeps_only_what_it_is_told(versions: dict[str, Path], tmp_path: Path) -> None:
    store = BundleStore(tmp_path / "device")
    old = take(store, versions["1.2.0-x86_64-cpu"], PROFILES["x86_64-cpu"])
    new = take(store, versions["1.3.0-x86_64-cpu"], PROFILES["x86_64-cpu"])
    shared = blobs(old) & blobs(new)
    assert shared and all((old / "blobs/sha256" / n).stat().st_ino == (new / "blobs/sha256" / n).stat().st_ino for n in shared)
    assert take(store, versions["1.3.0-x86_64-cpu"], PROFILES["x86_64-cpu"]) == new  # already there: nothing copied
    offered = offer_of(versions["1.3.0-x86_64-cpu"], None, None).bundle
    assert offered is not None and new.name == offered.digest.removeprefix("sha256:")
    digest = offered.digest
    assert store.prune({digest}) == [old.name] and not old.exists() and new.exists()


def test_the_store_takes_this_devices_bundle_from_a_medium_and_refuses_a_delta_without_base(
        versions: dict[str, Path], tmp_path: Path) -> None:
    export([versions["1.3.0-x86_64-cpu"], versions["1.3.0-jetson-orin"]], tmp_path / "full")
    export([versions["1.3.0-x86_64-cpu"]], tmp_path / "delta", bases=(str(versions["1.2.0-x86_64-cpu"]),))
    store = BundleStore(tmp_path / "device")
    with pytest.raises(Refused, match=r"is a delta on demo 1\.2\.0 .* which this device does not have"):
        take(store, tmp_path / "delta", PROFILES["x86_64-cpu"])
    assert not store.root.exists()  # refused before anything was copied
    with pytest.raises(Refused, match=r"no bundle for profile arm64-coral \(it holds jetson-orin, x86_64-cpu\)"):
        take(store, tmp_path / "full", PROFILES["arm64-coral"])
    jetson = take(store, tmp_path / "full", PROFILES["jetson-orin"])
    assert blobs(jetson) == blobs(versions["1.3.0-jetson-orin"])
    take(store, versions["1.2.0-x86_64-cpu"], PROFILES["x86_64-cpu"])
    cpu = take(store, tmp_path / "delta", PROFILES["x86_64-cpu"])
    assert blobs(cpu) == blobs(versions["1.3.0-x86_64-cpu"])


def _copying_the_largest_blob(bundle: Path, out: Path) -> tuple[Path, Descriptor, DirectoryEndpoint]:
    """The bundle's largest blob (the model), its descriptor, and an empty layout to copy it into."""
    model = max((bundle / "blobs/sha256").iterdir(), key=lambda p: p.stat().st_size)
    dest = DirectoryEndpoint(out)
    dest.prepare()
    return model, Descriptor(media_type="application/octet-stream", digest=f"sha256:{model.name}",
                             size=model.stat().st_size), dest


def test_a_blob_copy_cut_off_resumes_and_a_wrong_one_is_not_kept(versions: dict[str, Path], tmp_path: Path) -> None:
    bundle = versions["1.2.0-x86_64-cpu"]
    model, blob, dest = _copying_the_largest_blob(bundle, tmp_path / "out")
    partial = dest.blobs / f".partial-{model.name}"
    partial.write_bytes(model.read_bytes()[: blob.size // 3])
    advanced: list[int] = []
    with open_layout(bundle) as reader:
        dest.put_blob(blob, ReaderEndpoint(reader), advanced.append)
    assert (dest.blobs / model.name).read_bytes() == model.read_bytes() and not partial.exists()
    assert advanced[0] == blob.size // 3 and sum(advanced) == blob.size  # the part already there was not read again
    partial.write_bytes(b"not the model at all")
    (dest.blobs / model.name).unlink()
    with open_layout(bundle) as reader, pytest.raises(ContentMismatch, match="does not match its digest"):
        dest.put_blob(blob, ReaderEndpoint(reader), lambda _: None)
    assert not partial.exists() and not (dest.blobs / model.name).exists()


class _FailingMedium(ReaderEndpoint):
    """A medium that fails to read (pulled out, a bad sector) half-way through every blob."""

    @contextmanager
    def open_blob(self, digest: str, *, offset: int = 0) -> Iterator[IO[bytes]]:
        with super().open_blob(digest, offset=offset) as stream:
            yield _HalfReadable(stream)  # type: ignore[misc]


class _HalfReadable:
    def __init__(self, stream: IO[bytes]) -> None:
        self.stream, self.given = stream, 0

    def read(self, n: int = -1) -> bytes:
        if self.given > 64 << 10:
            raise OSError(errno.EIO, "Input/output error")
        data = self.stream.read(min(n, 32 << 10))
        self.given += len(data)
        return data


def test_a_medium_that_fails_to_read_is_a_delivery_fault_and_what_arrived_is_kept(versions: dict[str, Path], tmp_path: Path) -> None:
    bundle = versions["1.2.0-x86_64-cpu"]
    model, blob, dest = _copying_the_largest_blob(bundle, tmp_path / "out")
    with open_layout(bundle) as reader, pytest.raises(DeliveryError, match=r"reading blob .* failed .*Input/output error"):
        dest.put_blob(blob, _FailingMedium(reader), lambda _: None)
    assert (dest.blobs / f".partial-{model.name}").stat().st_size > 0  # resumed from there next time


def test_failed_polls_stretch_the_wait_up_to_a_limit() -> None:
    daemon = Daemon(None, None, interval=10, log=lambda _: None)  # type: ignore[arg-type]
    assert 8 <= daemon.next_wait() <= 12
    daemon.failures = 2
    assert 32 <= daemon.next_wait() <= 48
    daemon.failures = 50
    assert 10 * Daemon.MAX_BACKOFF * 0.8 <= daemon.next_wait() <= 10 * Daemon.MAX_BACKOFF * 1.2


def _regenerate_sums(medium: Path) -> None:
    """What someone who altered a medium would do to make its SHA256SUMS agree."""
    import hashlib

    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(medium)}\n"
             for p in sorted(medium.rglob("*")) if p.is_file() and p.name != "SHA256SUMS"]
    (medium / "SHA256SUMS").write_text("".join(lines))


def test_a_medium_whose_checksums_were_rewritten_still_fails_on_an_altered_or_stray_blob(
        versions: dict[str, Path], tmp_path: Path) -> None:
    medium = tmp_path / "stick"
    export([versions["1.2.0-x86_64-cpu"]], medium)
    victim = max((medium / "blobs/sha256").iterdir(), key=lambda p: p.stat().st_size)
    with open(victim, "r+b") as f:
        f.write(b"X")
    _regenerate_sums(medium)
    assert any("does not match its digest" in p for p in check_medium(medium).problems)
    medium2 = tmp_path / "stick2"
    export([versions["1.2.0-x86_64-cpu"]], medium2)
    (medium2 / "blobs/sha256" / ("0" * 64)).write_bytes(b"stray")
    assert any("is not listed in SHA256SUMS" in p for p in check_medium(medium2).problems)


def test_checksums_cannot_name_files_outside_the_medium(versions: dict[str, Path], tmp_path: Path) -> None:
    medium = tmp_path / "stick"
    export([versions["1.2.0-x86_64-cpu"]], medium)
    (tmp_path / "secret").write_text("not for the medium")
    with open(medium / "SHA256SUMS", "a") as f:
        f.write(f"{'0' * 64}  ../secret\n")
    assert check_medium(medium).problems == [f"SHA256SUMS: malformed line {'0' * 64 + '  ../secret'!r}"]


def test_prune_leaves_a_bundle_whose_lock_is_held(versions: dict[str, Path], tmp_path: Path) -> None:
    from updater.locks import file_lock

    store = BundleStore(tmp_path / "device")
    taken = take(store, versions["1.2.0-x86_64-cpu"], PROFILES["x86_64-cpu"])
    with file_lock(store.lock_path(f"sha256:{taken.name}"), wait=True):  # a poll holds it, to install it next
        assert store.prune(set()) == [] and taken.exists()
    assert store.prune(set()) == [taken.name] and not taken.exists()


def test_prune_leaves_a_download_in_progress_and_removes_an_abandoned_one(versions: dict[str, Path], tmp_path: Path) -> None:
    from updater.locks import file_lock

    store = BundleStore(tmp_path / "device")
    kept = take(store, versions["1.2.0-x86_64-cpu"], PROFILES["x86_64-cpu"])
    busy, old = store.root / (".incoming-" + "a" * 64), store.root / (".incoming-" + "b" * 64)
    for incoming in (busy, old):
        (incoming / "blobs/sha256").mkdir(parents=True)
        (incoming / "blobs/sha256/.partial-x").write_bytes(b"half")
    os.utime(old / "blobs/sha256/.partial-x", (0, 0))
    os.utime(busy / "blobs/sha256/.partial-x", (0, 0))
    with file_lock(store.lock_path("sha256:" + "a" * 64), wait=False):
        removed = store.prune({f"sha256:{kept.name}"})
    assert removed == [old.name] and busy.exists() and kept.exists()


def test_a_long_download_feeds_the_systemd_watchdog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket
    from types import SimpleNamespace

    import updater.daemon

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(tmp_path / "notify"))
    listener.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    monkeypatch.setattr(updater.daemon, "WATCHDOG_EVERY_S", 0.0)
    poller = SimpleNamespace(source="mirror/app", advance=None)
    Daemon(None, None, pollers=[poller], interval=10, log=lambda _: None)  # type: ignore[arg-type]
    poller.advance(256 << 10)  # a piece of a blob arrived
    assert listener.recv(64) == b"WATCHDOG=1"
    listener.close()


def test_a_cut_download_whose_blob_arrives_another_way_leaves_no_partial_in_the_bundle(
        versions: dict[str, Path], tmp_path: Path) -> None:
    store = BundleStore(tmp_path / "device")
    top = Descriptor.from_json(json.loads((versions["1.3.0-x86_64-cpu"] / "index.json").read_text())["manifests"][0], where="t")
    shared = sorted(blobs(versions["1.2.0-x86_64-cpu"]) & blobs(versions["1.3.0-x86_64-cpu"]))[0]
    with store.incoming(top) as incoming:  # a download of 1.3.0 cut off inside a blob 1.2.0 also has
        (incoming.layout.blobs / f".partial-{shared}").write_bytes(b"half")
    take(store, versions["1.2.0-x86_64-cpu"], PROFILES["x86_64-cpu"])
    with open_layout(versions["1.3.0-x86_64-cpu"]) as reader, store.incoming(top) as incoming:
        incoming.fill(ReaderEndpoint(reader))
        incoming.metadata = {}
        done = incoming.complete()
    assert not [p for p in (done / "blobs/sha256").iterdir() if p.name.startswith(".")]
    from updater.bundle import verify_bundle

    assert verify_bundle(done).digest == top.digest


def test_a_download_that_cannot_start_lets_go_of_its_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk when a download starts must not leave its lock held: the next poll, in the same
    service, would wait on it for ever."""
    from updater.locks import file_lock

    def full(self: DirectoryEndpoint) -> None:
        raise DeviceFault(f"{self.what}: cannot write (the disk is full)")

    monkeypatch.setattr(DirectoryEndpoint, "prepare", full)
    store = BundleStore(tmp_path / "device")
    top = Descriptor(media_type="application/vnd.oci.image.index.v1+json", digest="sha256:" + "ab" * 32, size=2)
    with pytest.raises(DeviceFault, match="the disk is full") as caught, store.incoming(top):
        pass
    assert caught.value.__traceback__ is not None  # the error, and the frames it keeps, are still alive here
    with file_lock(store.lock_path(top.digest), wait=False):  # BlockingIOError if it were still held
        pass


def test_metadata_of_any_role_name_has_a_registry_tag_and_back() -> None:
    from updater.registry_metadata import _metadata_name, metadata_tag

    assert metadata_tag("3.targets.json") == "tuf.3.targets.json"  # what registries already hold stays as it is
    odd = "2.Vision%20Team%2F%C3%9Cnits%20~%20100%25.json"  # '%' and '~' are not tag characters
    tag = metadata_tag(odd)
    assert tag.startswith("tuf.x.") and re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}", tag)
    assert _metadata_name(tag) == odd and _metadata_name("tuf.x.zz") is None and _metadata_name("1.0.0-x86_64-cpu") is None
    with pytest.raises(InputError, match="too long to publish as a registry tag"):
        metadata_tag("2." + "%25" * 40 + ".json")


@pytest.mark.parametrize(("error", "kept"), [
    (DeliveryError("the registry went away"), True),
    (Conflict("another sealift-updater is installing"), True),
    (EngineFault("the Docker engine does not answer"), True),
    (Refused("blob does not match its digest"), False),
    (DeviceFault("the disk is full"), False),
], ids=["outage", "busy", "engine", "refused", "device"])
def test_a_download_is_kept_to_resume_unless_its_content_is_refused_or_the_device_failed(
        tmp_path: Path, error: Exception, kept: bool) -> None:
    store = BundleStore(tmp_path / "device")
    top = Descriptor(media_type="application/vnd.oci.image.index.v1+json", digest="sha256:" + "cd" * 32, size=2)
    with pytest.raises(type(error)), store.incoming(top, resumable=True) as incoming:
        (incoming.layout.blobs / ("ab" * 32)).write_bytes(b"a blob that arrived")
        raise error
    assert incoming.layout.root.exists() == kept
    with pytest.raises(type(error)), store.incoming(top) as incoming:  # from a medium: nothing to resume
        raise error
    assert not incoming.layout.root.exists()


def test_what_a_repository_holds_is_named_by_profile_and_site_not_by_tag() -> None:
    from updater.poll import _holdings

    tags = ["x86_64-cpu-1.0.0", "x86_64-cpu-1.1.0", "jetson-orin-1.0.0-rc.1", "site-plant-7-1.0.0_build.5", "tuf.timestamp.json"]
    assert _holdings(tags) == "jetson-orin, site-plant-7, x86_64-cpu"
    assert _holdings(["latest", "tuf.1.root.json"]) == "latest" and _holdings([]) == "no release at all"
    assert _holdings([f"p{i:02d}-1.0.0" for i in range(15)]).endswith("p11 and 3 more")
