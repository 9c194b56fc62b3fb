"""docs/integration.md's table of time formats: every example is what the
code writes (or accepts) for those fields."""

from __future__ import annotations

import re
from pathlib import Path

from twisted.internet import task

from agi_app.events.service import EventService
from agi_app.events.testing import MemoryEventStore, Receiver
from agi_app.live.tracker import gmt
from agi_app.logs import _iso_ms
from agi_app.times import check_time, iso_time, parse_time
from agi_app.web.stats import time_bound

DOC = Path(__file__).resolve().parents[2] / "docs" / "integration.md"


def _rows() -> dict[str, list[str]]:
    """The table's rows by their first cell, with the examples (last cell)."""
    text = DOC.read_text(encoding="utf-8")
    table = text[text.index("## Time formats"):]
    rows: dict[str, list[str]] = {}
    for line in table.splitlines():
        if not line.startswith("| ") or line.startswith("| where") or line.startswith("|---"):
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        rows.setdefault(cells[0], []).extend(re.findall(r"`([^`]+)`", cells[-1]))
    return rows


def test_the_iso_examples_are_iso_time() -> None:
    rows = _rows()
    for where in (next(k for k in rows if k.startswith("history entries")),
                  "webhook `missed`", "service log, `[log] format = json`"):  # fmt: skip
        (example,) = rows[where]
        assert check_time(example) == example
        seconds = parse_time(example)
        assert seconds is not None and iso_time(seconds) == example
        assert _iso_ms(seconds) == example  # the JSON log's own formatter


def test_the_current_calls_example_is_the_trackers_gmt() -> None:
    (example,) = _rows()["current calls (`/extension/{id}/current_calls/`)"]
    seconds = parse_time(example.replace(" ", "T") + "Z")
    assert seconds is not None and gmt(seconds) == example


def test_the_stats_range_examples_are_accepted() -> None:
    examples = _rows()["operatorStats / callStats parameters"]
    assert len(examples) == 3
    for example in examples:
        assert time_bound(example, "from").moment.tzinfo is not None
    assert time_bound("2026-12-06T08:00", "from").moment == time_bound(
        "2026-12-06T08:00Z", "from").moment  # no zone: UTC  # fmt: skip


def test_event_time_is_in_microseconds() -> None:
    (example,) = _rows()["webhooks"]
    clock = task.Clock()
    service = EventService(MemoryEventStore(), send=Receiver(), clock=clock)
    assert service.event_time_us(int(example) / 1_000_000) == int(example)
    clock.advance(int(example) // 1_000_000)
    assert len(str(service.event_time_us())) == len(example)
