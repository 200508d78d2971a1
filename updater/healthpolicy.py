"""The health checks a bundle carries: what the updater runs before it commits a release.

Parsed from plain data, as the application definition is, and validated against it (each check
names a service; an inference check's input and expected answer are configs of the bundle), so
the same code reads ``sealift.yaml`` at build time and a bundle's descriptor on the device.
``to_data()`` gives the normalised form the descriptor stores, which parses back to an equal value.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any

from updater.appdef import App, parse_command
from updater.names import NAME
from updater.yamlfile import Field, check_known, format_duration

__all__ = ["Check", "CheckType", "HealthPolicy", "parse_health"]

_HTTP_PATH = re.compile(r"/[\x21-\x7e]*")


class CheckType(enum.StrEnum):
    CONTAINER = "container"
    HTTP = "http"
    TCP = "tcp"
    EXEC = "exec"
    INFERENCE = "inference"


@dataclass(frozen=True, kw_only=True)
class Check:
    """One health check the updater runs before it commits a release."""

    name: str
    type: CheckType
    service: str
    port: int | None = None
    path: str | None = None
    expect_status: int | None = None
    command: tuple[str, ...] | None = None
    input: str | None = None
    expected: str | None = None
    tolerance: float | None = None
    max_latency: float | None = None
    deadline: float | None = None
    secret: str | None = None  # sent as a bearer token (a secret the service declares)

    def to_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "type": self.type.value, "service": self.service}
        for key in ("port", "path", "expect_status", "input", "expected", "tolerance", "secret"):
            if (value := getattr(self, key)) is not None:
                data[key] = value
        if self.command is not None:
            data["command"] = list(self.command)
        for key in ("max_latency", "deadline"):
            if (value := getattr(self, key)) is not None:
                data[key] = format_duration(value)
        return data


@dataclass(frozen=True, kw_only=True)
class HealthPolicy:
    """The checks, the time they have to pass, and how long the release must then stay healthy."""

    checks: tuple[Check, ...] = ()
    deadline: float = 120.0
    stabilisation: float = 30.0

    def to_data(self) -> dict[str, Any]:
        return {
            "deadline": format_duration(self.deadline),
            "stabilisation": format_duration(self.stabilisation),
            "checks": [c.to_data() for c in self.checks],
        }


_CHECK_FIELDS = (
    "port", "path", "expect_status", "command", "input", "expected", "tolerance", "max_latency", "deadline", "secret",
)
_NEEDS: dict[CheckType, tuple[str, ...]] = {
    CheckType.CONTAINER: (),
    CheckType.HTTP: ("port",),
    CheckType.TCP: ("port",),
    CheckType.EXEC: ("command",),
    CheckType.INFERENCE: ("port", "path", "input", "expected"),
}
_ALLOWS: dict[CheckType, tuple[str, ...]] = {
    CheckType.CONTAINER: ("deadline",),
    CheckType.HTTP: ("port", "path", "expect_status", "deadline", "secret"),
    CheckType.TCP: ("port", "deadline"),
    CheckType.EXEC: ("command", "deadline"),
    CheckType.INFERENCE: ("port", "path", "input", "expected", "tolerance", "max_latency", "deadline", "secret"),
}


def parse_health(field: Field, *, app: App, configs: tuple[str, ...]) -> HealthPolicy:
    """Validate the health policy against the application's services and the bundle's configs."""
    f = field.mapping(optional=("deadline", "stabilisation", "checks"))
    checks = tuple(_parse_check(item, app, configs) for item in f["checks"].items()) if "checks" in f else ()
    seen: set[str] = set()
    for item, check in zip(f["checks"].items() if "checks" in f else [], checks, strict=True):
        if check.name in seen:
            raise item.child("name").error(f"{check.name!r} is used by another check")
        seen.add(check.name)
    return HealthPolicy(
        checks=checks,
        deadline=f["deadline"].duration() if "deadline" in f else 120.0,
        stabilisation=f["stabilisation"].duration() if "stabilisation" in f else 30.0,
    )


def _parse_check(field: Field, app: App, configs: tuple[str, ...]) -> Check:
    f = field.mapping(required=("name", "type", "service"), optional=_CHECK_FIELDS)
    kinds = tuple(t.value for t in CheckType)
    kind = CheckType(f["type"].string(pattern=re.compile("|".join(kinds)), what=f"one of {', '.join(kinds)}"))
    for key in _CHECK_FIELDS:
        if key in f and key not in _ALLOWS[kind]:
            raise f[key].error(f"does not apply to a {kind.value} check")
    for key in _NEEDS[kind]:
        if key not in f:
            raise field.child(key).error(f"is required for a {kind.value} check")
    service = check_known(f["service"], tuple(s.name for s in app.services), what="service")
    return Check(
        name=f["name"].string(pattern=NAME, what="a check name"),
        type=kind,
        service=service,
        port=f["port"].integer(low=1, high=65535) if "port" in f else None,
        path=f["path"].string(pattern=_HTTP_PATH, what="an HTTP path starting with /") if "path" in f else None,
        expect_status=f["expect_status"].integer(low=100, high=599) if "expect_status" in f else None,
        command=parse_command(f["command"]) if "command" in f else None,
        input=check_known(f["input"], configs, what="config") if "input" in f else None,
        expected=check_known(f["expected"], configs, what="config") if "expected" in f else None,
        tolerance=f["tolerance"].number() if "tolerance" in f else None,
        max_latency=f["max_latency"].duration() if "max_latency" in f else None,
        deadline=f["deadline"].duration() if "deadline" in f else None,
        secret=check_known(f["secret"], tuple(m.source for m in app.service(service).secrets), what=f"secret of service {service}")
        if "secret" in f else None,
    )
