"""The one pattern for names: applications, services, hardware profiles, sites and secrets (they
become file, container and tag names), and the pattern of an environment variable's name."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

__all__ = ["ENV_NAME", "NAME", "closest", "unknown"]

NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def unknown(kind: str, name: str, known: Iterable[str]) -> str:
    """``unknown KIND 'NAME'``, with the known names closest to it first (a typo names its fix) and the
    others after: ``unknown profile 'jetson-orn' (did you mean jetson-orin? known: …)``."""
    return f"unknown {kind} {name!r} ({closest(name, known)})"


def closest(name: str, known: Iterable[str]) -> str:
    """``did you mean A? known: A, B, …``: the known names closest to ``name``, then all of them."""
    names = sorted(known)
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    return f"{hint}known: {', '.join(names) or 'none'}"
