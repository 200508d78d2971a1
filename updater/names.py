"""The one pattern for names: applications, services, hardware profiles, sites and secrets (they
become file, container and tag names), and the pattern of an environment variable's name."""

from __future__ import annotations

import re

__all__ = ["ENV_NAME", "NAME"]

NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
