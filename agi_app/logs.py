"""The service's log: one line per event on a text stream.

The lines are exactly those of Twisted's ``textFileLogObserver``
(``2026-11-25T21:04:37+0000 [system] text``, continuation lines indented by
a tab, tracebacks included), written for less CPU: every request's access
log line is an event, and formatting it the general way (a time zone looked
up and ``strftime`` run for each event, the ``{log_io}`` format string
parsed again) was about a fifth of an API request's cost.  Here the time
stamp is formatted once per second, and events that carry a ready line
(``{log_io}``, what the HTTP access log and other file-like writers emit)
skip the format string.  Everything else goes through Twisted's own
formatter.
"""

from __future__ import annotations

import math
from typing import IO, Any

from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEventAsClassicLogText,
    formatTime,
)

__all__ = ["ClassicLineFormatter", "service_log_observer"]


class ClassicLineFormatter:
    """``formatEventAsClassicLogText`` with a per-second time stamp cache and
    a shortcut for ``{log_io}`` events; same output for every event."""

    def __init__(self) -> None:
        self._second: int | None = None
        self._stamp = "-"

    def format_time(self, when: float | None) -> str:
        """The event time as ``textFileLogObserver`` shows it (whole seconds)."""
        if when is None:
            return "-"
        # The second datetime.fromtimestamp lands on: it rounds to whole
        # microseconds first (1.9999999 shows as 2).
        frac, whole = math.modf(when)
        micro = round(frac * 1e6)
        if micro >= 1_000_000:
            whole += 1
        elif micro < 0:
            whole -= 1
        second = int(whole)
        if second != self._second:
            self._stamp = formatTime(second)
            self._second = second
        return self._stamp

    def __call__(self, event: dict[str, Any]) -> str | None:
        text = event.get("log_io")
        if (
            event.get("log_format") == "{log_io}"
            and type(text) is str
            and "log_failure" not in event
            and "log_system" not in event
        ):
            if not text:
                return None
            level = event.get("log_level")
            system = f"{event.get('log_namespace', '-')}#{level.name if level else '-'}"
            line = f"{self.format_time(event.get('log_time'))} [{system}] {text}"
            return line.replace("\n", "\n\t") + "\n"
        return formatEventAsClassicLogText(event, formatTime=self.format_time)


def service_log_observer(out: IO[str], level: LogLevel) -> ILogObserver:
    """An observer writing events of ``level`` and above to ``out``, one
    line each, flushed per event (nothing waits in a buffer if the process
    dies)."""
    return FilteringLogObserver(
        FileLogObserver(out, ClassicLineFormatter()),
        [LogLevelFilterPredicate(defaultLogLevel=level)],
    )
