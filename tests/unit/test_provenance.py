"""Sigstore provenance for models: checked offline at build time, carried in the bundle, and
checked again from the bundle's own copies by every reader (sealift verify, the device)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bundler.build import BuildOptions, build_bundles, select_profiles
from bundler.spec import load_spec
from tests.builders import project, signed
from updater.bundle import check_bundle
from updater.errors import InputError
from updater.oci import MEDIA
from updater.profiles import builtin_profile_dir, load_profiles
from updater.trust import TrustedState
from updater.verify import verify_for_device

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "sigstore"
PROFILES = load_profiles([builtin_profile_dir()])
IDENTITY = "william@yossarian.net"
ISSUER = "https://github.com/login/oauth"


def signed_model_project(root: Path, *, identity: str = IDENTITY, with_bundle: bool = True, trusted_root: bool = True) -> Path:
    spec = project(root)
    shutil.copy(ASSETS / "bundle_v3.txt", root / "models/int8.bin")  # the artifact the fixture signs
    if with_bundle:
        shutil.copy(ASSETS / "bundle_v3.txt.sigstore", root / "models/int8.bin.sigstore")
    shutil.copy(ASSETS / "staging-trusted_root.json", root / "sigstore-root.json")
    text = spec.read_text().replace(
        "    path: models/int8.bin\n",
        f"    path: models/int8.bin\n    provenance: {{identity: {identity}, issuer: '{ISSUER}'}}\n",
    )
    if trusted_root:
        text += "sigstore: {trusted_root: sigstore-root.json}\n"
    spec.write_text(text)
    return spec


def build(spec_path: Path, out: Path) -> Path:
    spec = load_spec(spec_path)
    (b,) = build_bundles(spec, select_profiles(spec, PROFILES, ("x86_64-cpu",)), BuildOptions(out=out, epoch=0))
    return b.path


def test_signed_model_is_verified_recorded_and_rechecked(tmp_path: Path) -> None:
    bundle = build(signed_model_project(tmp_path / "src"), tmp_path / "out")
    report = check_bundle(bundle)
    assert report.ok, report.problems
    detector = next(m for m in report.bundle.descriptor.models if m.name == "detector")
    assert detector.provenance is not None
    assert detector.provenance.identity == IDENTITY and detector.provenance.issuer == ISSUER
    media = {c.media_type for c in report.bundle.components}
    assert MEDIA.MODEL in media  # the Sigstore material travels as payload layers beside it
    device = TrustedState(tmp_path / "state")
    device.init(signed([bundle], tmp_path / "signing"))
    assert verify_for_device(bundle, trust=device, profile=PROFILES["x86_64-cpu"]).name == "demo"


@pytest.mark.parametrize(("kwargs", "change", "error", "message"), [
    ({"identity": "mallory@example.com"}, None, InputError, "expected mallory@example.com from https://github.com/login/oauth, "
                                                             "found william@yossarian.net"),
    ({"with_bundle": False}, None, InputError, "model detector Sigstore bundle: "),
    ({}, "tampered-model", InputError, "Sigstore signature refused"),
    ({"trusted_root": False}, None, InputError, "sigstore: is required when a component declares provenance"),
], ids=["wrong-identity", "missing-signature", "model-changed", "no-trusted-root"])
def test_provenance_failures_stop_the_build(tmp_path: Path, kwargs: dict, change: str | None, error: type[Exception],  # type: ignore[type-arg]
                                            message: str) -> None:
    spec = signed_model_project(tmp_path / "src", **kwargs)
    if change == "tampered-model":
        model = tmp_path / "src/models/int8.bin"
        model.write_bytes(model.read_bytes().replace(b"DO NOT", b"DO NOW"))
    with pytest.raises(error) as caught:
        build(spec, tmp_path / "out")
    assert message in str(caught.value)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_tampered_sigstore_material_in_a_bundle_is_refused(tmp_path: Path) -> None:
    bundle = build(signed_model_project(tmp_path / "src"), tmp_path / "out")
    record = next(c for c in check_bundle(bundle).bundle.descriptor.models if c.name == "detector").provenance
    assert record is not None
    blob = bundle / "blobs/sha256" / record.sigstore_bundle.removeprefix("sha256:")
    data = blob.read_bytes()
    blob.write_bytes(data.replace(b'"mediaType"', b'"mediatype"', 1))
    assert blob.read_bytes() != data
    problems = check_bundle(bundle).problems
    assert problems and "Sigstore bundle of model detector" in problems[0]


def test_every_reader_checks_the_signature_again(tmp_path: Path) -> None:
    """A descriptor re-sealed to claim another signer (digests all consistent) fails the Sigstore re-check."""
    from tests.builders import rewrite_descriptor

    bundle = build(signed_model_project(tmp_path / "src"), tmp_path / "out")

    def claim_mallory(descriptor: dict) -> None:  # type: ignore[type-arg]
        next(m for m in descriptor["models"] if m["name"] == "detector")["provenance"]["identity"] = "mallory@example.com"

    rewrite_descriptor(bundle, claim_mallory)
    problems = check_bundle(bundle).problems
    assert len(problems) == 1
    assert "model detector: Sigstore signature refused: expected mallory@example.com" in problems[0]
    assert "found william@yossarian.net" in problems[0]
