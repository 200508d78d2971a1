"""Sigstore provenance: a model or config must carry a Sigstore bundle from a given identity.

A training pipeline signs what it produces (``sigstore sign`` in CI: a short-lived certificate for
its OIDC identity, logged in Rekor). The build checks that signature offline, against a Sigstore
trusted root file, with sigstore-python; the bundle then carries the Sigstore bundle and the
trusted root, so a device can check the same signature again without any network.
"""

from __future__ import annotations

import importlib.util
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from updater.descriptor import FileEntry
from updater.errors import InputError, Refused, SealiftError
from updater.layout import LayoutReader

__all__ = ["MAX_SIGSTORE_BYTES", "ProvenanceClaim", "check_provenance", "verify_provenance"]

MAX_SIGSTORE_BYTES = 1 << 20  # a Sigstore bundle or trusted root is a few KiB


@dataclass(frozen=True, kw_only=True)
class ProvenanceClaim:
    """What must hold: the file with ``content_digest`` was signed by ``identity`` from ``issuer``."""

    what: str  # "model detector", for messages
    content_digest: str  # sha256:<hex> of the file as signed
    identity: str
    issuer: str


def verify_provenance(claim: ProvenanceClaim, *, sigstore_bundle: bytes, trusted_root: bytes,
                      error: type[SealiftError] = Refused) -> None:
    """Verify offline; ``error`` naming the identity expected and the one found, if any."""
    if importlib.util.find_spec("sigstore") is None:
        raise InputError(f"{claim.what}: checking its Sigstore provenance needs sigstore-python, which comes with the "
                         "build side: pip install 'sealift[build]'")
    # sigstore-python is large: imported only when a bundle uses provenance
    from sigstore.errors import Error as SigstoreError
    from sigstore.hashes import Hashed
    from sigstore.models import Bundle, TrustedRoot
    from sigstore.verify import Verifier
    from sigstore.verify.policy import Identity
    from sigstore_models.common.v1 import HashAlgorithm

    try:
        with tempfile.NamedTemporaryFile(suffix=".json") as root_file:  # sigstore reads trusted roots from files
            root_file.write(trusted_root)
            root_file.flush()
            root = TrustedRoot.from_file(root_file.name)
        bundle = Bundle.from_json(sigstore_bundle)
    except (SigstoreError, ValueError, UnicodeDecodeError) as e:
        raise error(f"{claim.what}: unreadable Sigstore material ({_short(e)})") from e
    digest = bytes.fromhex(claim.content_digest.removeprefix("sha256:"))
    policy = Identity(identity=claim.identity, issuer=claim.issuer)
    try:
        Verifier(trusted_root=root).verify_artifact(Hashed(algorithm=HashAlgorithm.SHA2_256, digest=digest), bundle, policy)
    except SigstoreError as e:
        found = _identity_of(bundle)
        raise error(
            f"{claim.what}: Sigstore signature refused: expected {claim.identity} from {claim.issuer}, found {found} ({_short(e)})"
        ) from e


def check_provenance(reader: LayoutReader, files: Sequence[FileEntry]) -> list[str]:
    """Verify again every provenance record of a bundle's models and configs, from the Sigstore
    bundle and trusted root the bundle carries; the problems found.

    Where sigstore-python is not installed (a device installs the base package only), nothing is
    checked here: the records, the Sigstore material and the content digests they vouch for are all
    covered by the bundle's TUF signature, and the build checked them before the bundle was signed.
    """
    signed = [f for f in files if f.provenance is not None]
    if not signed or importlib.util.find_spec("sigstore") is None:
        return []
    problems = []
    for entry in signed:
        record = entry.provenance
        assert record is not None
        material = []
        for digest in (record.sigstore_bundle, record.trusted_root):
            with reader.open_blob(digest) as stream:
                material.append(stream.read(MAX_SIGSTORE_BYTES + 1))
        claim = ProvenanceClaim(what=f"{entry.role} {entry.name}", content_digest=entry.content_digest,
                                identity=record.identity, issuer=record.issuer)
        try:
            verify_provenance(claim, sigstore_bundle=material[0], trusted_root=material[1])
        except Refused as e:
            problems.append(str(e))
    return problems


def _identity_of(bundle: Any) -> str:
    """The identity in the bundle's signing certificate (its subject alternative names)."""
    from cryptography import x509

    try:
        names = bundle.signing_certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        values = [str(v) for kind in (x509.RFC822Name, x509.UniformResourceIdentifier) for v in names.get_values_for_type(kind)]
        return ", ".join(values) or "no identity"
    except (x509.ExtensionNotFound, AttributeError, ValueError):
        return "an unreadable certificate"


def _short(error: Exception) -> str:
    return " ".join(str(error).split())[:200]
