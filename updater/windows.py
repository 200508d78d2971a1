"""Maintenance windows: when a site lets its devices switch releases, in the site's local time.

A site declares its windows in the fleet inventory (``sealift devices window``); a rollout plan
carries them, signed, to every device of the site, which decides offline whether a window is open.
A window is ``DAYS HH:MM-HH:MM``: ``DAYS`` is ``daily``, a day (``Sat``), a range (``Mon-Fri``) or
a list (``Sat,Sun``); a window whose end comes before its start runs past midnight into the next
day (``Fri 22:00-04:00`` is Friday night). Times are wall-clock times in the site's IANA time zone,
so a window follows daylight saving time; on the night the clocks jump forward, a window inside
the skipped hour does not open.
"""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from dataclasses import dataclass
from typing import Any

from updater.errors import SealiftError

__all__ = ["Maintenance", "Span"]

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_SPAN = re.compile(r"(?P<days>[A-Za-z,\-]+)\s+(?P<start>\d\d:\d\d)-(?P<end>\d\d:\d\d)")
MAX_WINDOWS = 32
_ZONE_NAME = re.compile(r"[A-Za-z0-9_+-]{1,30}(?:/[A-Za-z0-9_+-]{1,30}){0,2}")  # an IANA name's shape: no dots, no leading /


@dataclass(frozen=True)
class Span:
    """One window: the days it starts on (0 = Monday), and its start and end in minutes after midnight."""

    days: frozenset[int]
    start: int
    end: int  # at most 24:00; before ``start``: it ends the next day

    @classmethod
    def parse(cls, text: str, error: type[SealiftError], where: str) -> Span:
        m = _SPAN.fullmatch(text.strip()) if isinstance(text, str) else None
        if m is None:
            raise error(f"{where}: {text!r} is not a window (expected DAYS HH:MM-HH:MM, e.g. 'Sat 02:00-06:00', "
                        "'Mon-Fri 22:00-04:00', 'daily 01:00-03:00')")
        start, end = _minutes(m["start"], error, where), _minutes(m["end"], error, where)
        if start == end or start == 24 * 60:
            raise error(f"{where}: window {text!r} is empty (its start and end are the same time)")
        return cls(days=_days(m["days"], error, where), start=start, end=end)

    def __str__(self) -> str:
        days = "daily" if len(self.days) == 7 else ",".join(_DAYS[d].capitalize() for d in sorted(self.days))
        return f"{days} {self.start // 60:02d}:{self.start % 60:02d}-{self.end // 60:02d}:{self.end % 60:02d}"

    def covers(self, local: dt.datetime) -> bool:
        """Whether the local wall-clock time ``local`` is inside this window."""
        minute = local.hour * 60 + local.minute
        if self.start < self.end:
            return local.weekday() in self.days and self.start <= minute < self.end
        return (local.weekday() in self.days and minute >= self.start) \
            or ((local.weekday() - 1) % 7 in self.days and minute < self.end)


@dataclass(frozen=True)
class Maintenance:
    """A site's maintenance windows in its time zone (an IANA name, e.g. ``Europe/Berlin``)."""

    timezone: str
    spans: tuple[Span, ...]

    @classmethod
    def from_json(cls, data: Any, error: type[SealiftError], where: str, *, zone_known: bool = True) -> Maintenance:
        """Read ``{"timezone": …, "windows": [DAYS HH:MM-HH:MM, …]}``; ``error`` names what is wrong. With
        ``zone_known``, the time zone must be one this machine knows; without, only a name that could be one."""
        if not isinstance(data, dict) or set(data) != {"timezone", "windows"}:
            raise error(f"{where}: expected a timezone and a list of windows")
        timezone, windows = data["timezone"], data["windows"]
        if zone_known:
            zone(timezone, error, where)
        elif not isinstance(timezone, str) or not _ZONE_NAME.fullmatch(timezone):
            raise error(f"{where}: {str(timezone)[:64]!r} is not a time zone name")
        if not isinstance(windows, list) or not 1 <= len(windows) <= MAX_WINDOWS:
            raise error(f"{where}: expected 1 to {MAX_WINDOWS} windows")
        return cls(timezone=timezone, spans=tuple(Span.parse(w, error, where) for w in windows))

    def to_json(self) -> dict[str, Any]:
        return {"timezone": self.timezone, "windows": [str(s) for s in self.spans]}

    def __str__(self) -> str:
        return f"{', '.join(str(s) for s in self.spans)} ({self.timezone})"

    def is_open(self, now: dt.datetime) -> bool:
        """Whether a window is open at ``now`` (an aware time)."""
        local = now.astimezone(zoneinfo.ZoneInfo(self.timezone))
        return any(s.covers(local) for s in self.spans)

    def opens(self, now: dt.datetime) -> dt.datetime | None:
        """When the next window opens after ``now`` (UTC; ``now`` when one is open); None if none does within a week."""
        if self.is_open(now):
            return now
        tz = zoneinfo.ZoneInfo(self.timezone)
        today = now.astimezone(tz).date()
        starts = []
        for ahead in range(9):
            day = today + dt.timedelta(days=ahead)
            for span in self.spans:
                if day.weekday() in span.days:
                    local = dt.datetime.combine(day, dt.time(span.start // 60, span.start % 60), tzinfo=tz)
                    if dt.datetime.fromtimestamp(local.timestamp(), tz).replace(tzinfo=None) == local.replace(tzinfo=None):
                        starts.append(local.astimezone(dt.UTC))  # a start inside a skipped hour does not exist
        return min((s for s in starts if s > now), default=None)


def zone(name: Any, error: type[SealiftError], where: str) -> zoneinfo.ZoneInfo:
    """The IANA time zone ``name``; ``error`` when it is not one this machine knows."""
    if not isinstance(name, str) or not name or len(name) > 64:
        raise error(f"{where}: expected an IANA time zone name (e.g. Europe/Berlin)")
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as e:
        raise error(f"{where}: unknown time zone {name!r} (expected an IANA name such as Europe/Berlin)") from e


def _minutes(text: str, error: type[SealiftError], where: str) -> int:
    hours, minutes = int(text[:2]), int(text[3:])
    if minutes > 59 or hours > 24 or (hours == 24 and minutes):
        raise error(f"{where}: {text} is not a time of day (00:00 to 24:00)")
    return hours * 60 + minutes


def _days(text: str, error: type[SealiftError], where: str) -> frozenset[int]:
    if text.lower() == "daily":
        return frozenset(range(7))
    days: set[int] = set()
    for part in text.lower().split(","):
        first, _, last = part.partition("-")
        if first not in _DAYS or (last and last not in _DAYS):
            raise error(f"{where}: {part!r} is not a day or a range of days (Mon to Sun, or daily)")
        a, b = _DAYS.index(first), _DAYS.index(last or first)
        days.update((a + i) % 7 for i in range((b - a) % 7 + 1))
    return frozenset(days)
