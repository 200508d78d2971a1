"""Semantic versions and version ranges: which release is newer, and which an overlay fits."""

from __future__ import annotations

import re

from updater.errors import InputError, Refused

__all__ = ["VERSION", "check_range", "fits", "version_key"]

VERSION = re.compile(
    r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?"
)
_CONSTRAINT = re.compile(r"(>=|<=|==|>|<)\s*([0-9A-Za-z.+-]+)")


def version_key(version: str) -> tuple[tuple[int, int, int], int, tuple[tuple[int, int | str], ...]]:
    """Semantic-version precedence: ``1.0.0-rc.1 < 1.0.0 < 1.0.1``; build metadata is ignored.

    Raises ValueError for a string that is not a semantic version.
    """
    match = VERSION.fullmatch(version)
    if match is None:
        raise ValueError(f"{version!r} is not a semantic version")
    core, _, rest = version.partition("+")[0].partition("-")
    major, minor, patch = (int(p) for p in core.split("."))
    prerelease = tuple((0, int(p)) if p.isdigit() else (1, p) for p in rest.split(".")) if rest else ()
    # a release ranks above every pre-release of the same core version
    return (major, minor, patch), 0 if rest else 1, prerelease


def fits(constraint: str, version: str) -> bool:
    """Whether an application ``version`` meets ``constraint`` (``>=1.0.0 <2.0.0``; empty: any), as an
    artifact states them: a malformed range or version is Refused (a bad artifact)."""
    try:
        key = version_key(version)
        bounds = check_range(constraint, where="fits")
    except (ValueError, InputError) as e:
        raise Refused(f"fits {constraint[:80]!r} for version {version[:40]!r}: {e}") from None
    for op, bound in bounds:
        other = version_key(bound)
        if not {">=": key >= other, "<=": key <= other, ">": key > other, "<": key < other, "==": key == other}[op]:
            return False
    return True


def check_range(text: str, *, where: str) -> list[tuple[str, str]]:
    """The (operator, version) pairs of a range like ``>=1.0.0 <2.0.0``; InputError naming ``where`` if malformed."""
    found = _CONSTRAINT.findall(text)
    if _CONSTRAINT.sub("", text).strip(" ,"):
        raise InputError(f"{where}: {text!r} is not a version range (like `>=1.0.0 <2.0.0`)")
    for _, bound in found:
        try:
            version_key(bound)  # a malformed bound is an error now, not at the device
        except ValueError:
            raise InputError(f"{where}: {bound!r} in {text!r} is not a semantic version (like `>=1.0.0 <2.0.0`)") from None
    return found
