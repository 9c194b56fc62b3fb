"""The time format of the contract: history entries, recordings and
operator states carry a UTC time to the millisecond,
``2026-11-25T21:04:37.123Z`` (CONTRACT section 2).

Its own module, beside no domain: the calls, the store and the web layer
all speak it.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime

__all__ = ["check_time", "iso_time", "parse_time"]

_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$", re.ASCII)


def iso_time(seconds: float) -> str:
    """Format a POSIX time as ``2026-11-25T21:04:37.123Z`` (milliseconds, UTC).

    Milliseconds are truncated, never rounded, so a time never moves forward
    into the next second.
    """
    total_ms = math.floor(seconds * 1000)
    whole, ms = divmod(total_ms, 1000)
    # Every status, recording and operator state of a busy PBX is written
    # with a time of the last few seconds: the text of the whole second is
    # kept (strftime was most of this function's cost).
    head = _SECONDS_MADE.get(whole)
    if head is None:
        if len(_SECONDS_MADE) >= _SECONDS_KEPT:
            _SECONDS_MADE.clear()
        head = _SECONDS_MADE[whole] = datetime.fromtimestamp(whole, UTC).strftime(
            "%Y-%m-%dT%H:%M:%S."
        )
    return f"{head}{ms:03d}Z"


_SECONDS_MADE: dict[int, str] = {}
_SECONDS_KEPT = 512


def check_time(value: str) -> str:
    """Return ``value`` if it is a time in this format, else raise ValueError."""
    if not isinstance(value, str) or not _TIME.match(value):
        raise ValueError(f"not a UTC millisecond time like 2026-11-25T21:04:37.123Z: {value!r}")
    return value


def parse_time(text: str) -> float | None:
    """The POSIX time of an ISO 8601 text (``Z`` or an offset), or None."""
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except (ValueError, AttributeError):
        return None
