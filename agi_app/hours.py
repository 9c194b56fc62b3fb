"""Working hours: the days of the week and the times of day when something
may happen (``[inbound] hours`` and ``days``: when missed callers are called
back).

A leaf module: the configuration checks the text with it at load, the
services ask it whether a moment is inside.

- hours: ``HH:MM-HH:MM`` ranges, start included, end excluded
  (``09:00-13:00``, ``14:00-18:00``; ``00:00-24:00`` is the whole day; a
  range may not cross midnight -- write two);
- days: ``mon`` .. ``sun`` and ranges of them (``mon-fri``, ``sat-sun``);
- timezone: an IANA name (``Europe/Kyiv``); empty is the machine's local time.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["DAYS", "WorkingHours"]

#: the day names, Monday first (``datetime.weekday()`` order)
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

_RANGE = re.compile(r"^([0-9]{2}):([0-9]{2})-([0-9]{2}):([0-9]{2})$", re.ASCII)
_TZ_NAME = re.compile(r"^[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+){0,2}$", re.ASCII)


def _minute(hours: str, minutes: str, text: str, end: bool) -> int:
    h, m = int(hours), int(minutes)
    if m > 59 or h > 24 or (h == 24 and (m or not end)):
        raise ValueError(f"{text!r}: not a time of day (00:00 to 24:00)")
    return h * 60 + m


@dataclass(frozen=True)
class WorkingHours:
    """When something may happen: ``ranges`` are ``(start, end)`` minutes of
    the day (end excluded), ``weekdays`` the days (0 Monday .. 6 Sunday),
    ``zone`` the time zone (None: local time)."""

    ranges: tuple[tuple[int, int], ...]
    weekdays: frozenset[int]
    zone: tzinfo | None = None

    @classmethod
    def parse(cls, hours: Iterable[str], days: Iterable[str], timezone: str = "") -> WorkingHours:
        """The working hours written as in the configuration (see the module);
        ValueError saying what is wrong."""
        ranges = []
        for text in hours:
            m = _RANGE.match(text.strip())
            if m is None:
                raise ValueError(f"{text!r}: write a range as HH:MM-HH:MM")
            start = _minute(m.group(1), m.group(2), text, end=False)
            end = _minute(m.group(3), m.group(4), text, end=True)
            if end <= start:
                raise ValueError(f"{text!r}: the end must come after the start (the same day)")
            ranges.append((start, end))
        if not ranges:
            raise ValueError("no hours given")
        weekdays: set[int] = set()
        for text in days:
            first, sep, last = text.strip().lower().partition("-")
            if first not in DAYS or (sep and last not in DAYS):
                raise ValueError(f"{text!r}: days are {', '.join(DAYS)} or a range like mon-fri")
            a, b = DAYS.index(first), DAYS.index(last) if sep else DAYS.index(first)
            if b < a:
                raise ValueError(f"{text!r}: a range of days runs from Monday to Sunday")
            weekdays.update(range(a, b + 1))
        if not weekdays:
            raise ValueError("no days given")
        zone = None
        if timezone:
            if not _TZ_NAME.match(timezone):
                raise ValueError(f"{timezone!r} is not a time zone name like Europe/Kyiv")
            try:
                zone = ZoneInfo(timezone)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {timezone!r}") from None
        return cls(tuple(sorted(ranges)), frozenset(weekdays), zone)

    def _local(self, seconds: float) -> datetime:
        # Naive local time without a zone: weekday and time of day are all
        # that is read.
        if self.zone is None:
            return datetime.fromtimestamp(seconds)
        return datetime.fromtimestamp(seconds, self.zone)

    def contains(self, seconds: float) -> bool:
        """Whether the POSIX time ``seconds`` is inside the working hours."""
        moment = self._local(seconds)
        if moment.weekday() not in self.weekdays:
            return False
        minute = moment.hour * 60 + moment.minute
        return any(start <= minute < end for start, end in self.ranges)

    def describe(self) -> str:
        """The hours as the configuration writes them (for the log)."""
        days = ",".join(DAYS[d] for d in sorted(self.weekdays))
        hours = ",".join(f"{a // 60:02d}:{a % 60:02d}-{b // 60:02d}:{b % 60:02d}"
                         for a, b in self.ranges)  # fmt: skip
        zone = str(self.zone) if self.zone is not None else "local time"
        return f"{days} {hours} ({zone})"
