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

``[log] format = json`` writes the same events as JSON lines for log
shippers (:class:`JSONLineFormatter`): one object per event with its time,
level, namespace, text, traceback and the event's own fields.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import IO, Any

import orjson
from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    eventAsText,
    formatEventAsClassicLogText,
    formatTime,
)

__all__ = ["ClassicLineFormatter", "JSONLineFormatter", "service_log_observer"]


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


# Event keys that are Twisted's bookkeeping, not fields worth shipping.
_INTERNAL = frozenset(("format", "message", "isError", "failure", "why", "system", "time"))
_PLAIN = (str, int, float, bool, type(None))


class JSONLineFormatter:
    """One JSON object per event, on one line::

        {"time": "2026-11-25T21:04:37.123Z", "level": "info",
         "namespace": "agi_app.calls", "message": "call c-1 placed",
         "call_id": "c-1"}

    ``message`` is the event's text as the text format shows it (the access
    log line for HTTP requests); ``system`` appears when the event names
    one; a failure adds ``error`` (its type and text) and ``traceback``.
    The event's own fields (``call_id``, ``ami``...) follow when they are
    plain values (text, numbers, true/false, null); others are left out,
    so a line never carries an object's ``repr``.  Newlines inside values
    are escaped by JSON, so one event is always exactly one line.
    """

    def __call__(self, event: dict[str, Any]) -> str | None:
        text = event.get("log_io")
        if event.get("log_format") == "{log_io}" and type(text) is str:
            message = text.rstrip("\n")
            if not message and "log_failure" not in event:
                return None
        else:
            message = eventAsText(event, includeTraceback=False, includeTimestamp=False,
                                  includeSystem=False)  # fmt: skip
        level = event.get("log_level")
        when = event.get("log_time")
        out: dict[str, Any] = {
            "time": _iso_ms(when) if when is not None else None,
            "level": level.name if level is not None else None,
            "namespace": event.get("log_namespace"),
            "message": message,
        }
        system = event.get("log_system")
        if system is not None:
            out["system"] = str(system)
        failure = event.get("log_failure")
        if failure is not None:
            out["error"] = f"{failure.type.__name__}: {failure.getErrorMessage()}"
            out["traceback"] = failure.getTraceback()
        for key, value in event.items():
            if key.startswith("log_") or key in _INTERNAL or key in out:
                continue
            if isinstance(value, _PLAIN) and (not isinstance(value, int) or abs(value) < 2**63):
                out[key] = value
        return orjson.dumps(out).decode() + "\n"


def _iso_ms(when: float) -> str:
    """A UTC time with milliseconds, as the API writes times."""
    stamp = datetime.fromtimestamp(when, UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def service_log_observer(out: IO[str], level: LogLevel, fmt: str = "text") -> ILogObserver:
    """An observer writing events of ``level`` and above to ``out``, one
    line each (``fmt``: ``text``, Twisted's classic lines, or ``json``, see
    :class:`JSONLineFormatter`), flushed per event (nothing waits in a
    buffer if the process dies)."""
    formatter = JSONLineFormatter() if fmt == "json" else ClassicLineFormatter()
    return FilteringLogObserver(
        FileLogObserver(out, formatter),
        [LogLevelFilterPredicate(defaultLogLevel=level)],
    )
