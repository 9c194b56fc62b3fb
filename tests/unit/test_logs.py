"""The service's log lines are exactly Twisted's classic text lines."""

from __future__ import annotations

import io

from hypothesis import given
from hypothesis import strategies as st
from twisted.logger import (
    Logger,
    LoggingFile,
    LogLevel,
    LogPublisher,
    formatEventAsClassicLogText,
)
from twisted.python.failure import Failure

from agi_app.logs import ClassicLineFormatter, service_log_observer

T0 = 1795640677.123  # 2026-11-25T21:04:37.123Z


def _events(publish) -> list[dict]:
    seen: list[dict] = []
    publisher = LogPublisher(seen.append)
    publish(publisher)
    return seen


def _as_twisted_writes_it(event: dict) -> str | None:
    return formatEventAsClassicLogText(event)


def test_the_same_lines_as_twisted_for_every_kind_of_event():
    def publish(publisher):
        log = Logger(namespace="agi_app.test", observer=publisher)
        log.info("call {call_id} placed", call_id="c-1")
        log.warn("two\nlines")
        log.info("")
        try:
            raise ZeroDivisionError("division by zero")
        except ZeroDivisionError:
            log.failure("it failed", Failure())
        log.info("custom system", log_system="pbx-1")
        access = LoggingFile(Logger(namespace="twisted.python.log", observer=publisher))
        access.write('"127.0.0.1" - - [25/Nov/2026:21:04:37 +0000] "GET / HTTP/1.1" 200 5\n')
        access.write("a line\nand another\n\n")
        errors = LoggingFile(
            Logger(namespace="x", observer=publisher), level=LogLevel.error
        )
        errors.write("to stderr\n")

    events = _events(publish)
    assert len(events) == 10
    formatter = ClassicLineFormatter()
    for event in events:
        for when in (T0, T0 + 0.5, T0 + 1, None):
            event = {**event, "log_time": when} if when else {
                k: v for k, v in event.items() if k != "log_time"
            }
            assert formatter(event) == _as_twisted_writes_it(event), event


@given(st.floats(min_value=-1e9, max_value=4e9, allow_nan=False), st.text(max_size=40))
def test_any_time_and_text(when, text):
    formatter = ClassicLineFormatter()
    event = {
        "log_format": "{log_io}",
        "log_io": text,
        "log_level": LogLevel.info,
        "log_namespace": "twisted.python.log",
        "log_time": when,
    }
    assert formatter(event) == _as_twisted_writes_it(event)
    event["log_time"] = when + 1.5
    assert formatter(event) == _as_twisted_writes_it(event)


def test_the_observer_filters_by_level_and_flushes_each_line():
    class Out(io.StringIO):
        flushes = 0

        def flush(self):
            Out.flushes += 1
            super().flush()

    out = Out()
    log = Logger(namespace="agi_app", observer=service_log_observer(out, LogLevel.warn))
    log.info("not shown")
    log.warn("shown {n}", n=1)
    log.error("shown too")
    lines = out.getvalue().splitlines()
    assert [line.split("] ", 1)[1] for line in lines] == ["shown 1", "shown too"]
    assert "[agi_app#warn]" in lines[0] and Out.flushes == 2
