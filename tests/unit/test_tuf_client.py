"""The one TUF client: faults split as python-tuf splits them (an outage is a delivery error, never an
attack), and one naming of targets shared with the repository side."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bundler.keys import Keyring
from bundler.policy import Policy
from bundler.repo import Repository
from updater.errors import DeliveryError, Refused, SealiftError
from updater.trust import TrustedState
from updater.tuf_client import TufClient, claimed_target, target_name


class FolderSource:
    """A MetadataSource over a repository's published metadata, where any file may fail or go missing."""

    may_be_older = False

    def __init__(self, folder: Path, *, outage: str | None = None, absent: str | None = None,
                 missing: type[SealiftError] = Refused) -> None:
        self.folder, self.outage, self.absent, self.missing = folder, outage, absent, missing
        self.what = "test source"

    def names(self) -> None:
        return None

    def read(self, name: str) -> bytes | None:
        if name == self.outage:
            raise DeliveryError(f"{self.what}: cannot reach 127.0.0.1:9 (connection refused)")
        path = self.folder / name
        return None if name == self.absent or not path.is_file() else path.read_bytes()


@pytest.fixture
def device(tmp_path: Path) -> tuple[TrustedState, Path]:
    repo = Repository(tmp_path / "repo", Keyring(tmp_path / "keys", passphrase=lambda: "test passphrase"))
    repo.init(Policy())
    trust = TrustedState(tmp_path / "state")
    trust.init(tmp_path / "repo/metadata/1.root.json")
    return trust, tmp_path / "repo/metadata"


def test_an_outage_of_the_source_is_a_delivery_error_not_a_refusal(device: tuple[TrustedState, Path]) -> None:
    trust, published = device
    with trust.candidate() as metadata_dir, pytest.raises(DeliveryError, match="connection refused") as caught:
        TufClient(metadata_dir, FolderSource(published, outage="timestamp.json")).refresh()
    assert not isinstance(caught.value, Refused)


def test_metadata_the_source_lacks_or_that_fails_its_checks_is_refused(device: tuple[TrustedState, Path]) -> None:
    trust, published = device
    with trust.candidate() as metadata_dir, pytest.raises(Refused, match="test source: signed metadata is missing"):
        TufClient(metadata_dir, FolderSource(published, absent="timestamp.json")).refresh()
    # a registry that has not (yet) published a file: not found, a delivery error, never an attack
    with trust.candidate() as metadata_dir, pytest.raises(DeliveryError, match="signed metadata is missing") as caught:
        TufClient(metadata_dir, FolderSource(published, absent="timestamp.json", missing=DeliveryError)).refresh()
    assert not isinstance(caught.value, Refused)
    tampered = json.loads((published / "timestamp.json").read_bytes())
    tampered["signed"]["version"] += 1  # a newer timestamp no key signed
    (published / "timestamp.json").write_text(json.dumps(tampered))
    with trust.candidate() as metadata_dir, pytest.raises(Refused, match="not signed by enough trusted keys"):
        TufClient(metadata_dir, FolderSource(published)).refresh()


def test_a_target_the_repository_does_not_sign_is_doubted_and_refused_by_check(device: tuple[TrustedState, Path]) -> None:
    trust, published = device
    with trust.candidate() as metadata_dir:
        client = TufClient(metadata_dir, FolderSource(published))
        client.refresh()
        assert client.doubts("demo/x86_64-cpu/1.0.0", b"{}") == "demo/x86_64-cpu/1.0.0 is not a target signed by the repository"
        with pytest.raises(Refused, match=re.escape("test source: demo/x86_64-cpu/1.0.0 is not a target signed")):
            client.check("demo/x86_64-cpu/1.0.0", b"{}")


def test_bundles_and_overlays_have_one_naming_of_targets() -> None:
    assert target_name(name="vision", profile="jetson-orin", version="1.2.0") == "vision/jetson-orin/1.2.0"
    assert target_name(name="vision", site="plant-7", version="3.0.0") == "vision/overlays/plant-7/3.0.0"
    with pytest.raises(ValueError):
        target_name(name="vision", version="1.0.0")
    index = b'{"annotations": {"dev.sealift.name": "vision", "dev.sealift.profile": "x86_64-cpu", "dev.sealift.version": "2.0.0"}}'
    assert claimed_target(index, "here") == "vision/x86_64-cpu/2.0.0"
    with pytest.raises(Refused, match="here: no readable bundle index"):
        claimed_target(b"[" * 100_000, "here")
