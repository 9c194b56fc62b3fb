"""CHANGELOG.md names every configuration key and every schema step the
code has, so a new key or migration cannot land without its entry."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from agi_app.config import _SECTIONS
from agi_app.store.pg_schema import MIGRATIONS as PG_MIGRATIONS
from agi_app.store.schema import MIGRATIONS

CHANGELOG = Path(__file__).resolve().parents[2] / "CHANGELOG.md"


def test_every_configuration_key_is_in_the_changelog() -> None:
    text = CHANGELOG.read_text(encoding="utf-8")
    missing = [
        f"[{section}] {f.name}"
        for section, cls in _SECTIONS.items()
        for f in fields(cls)
        if f"[{section}]" not in text or not re.search(rf"`(\[{section}\] )?{f.name}`", text)
    ]
    assert missing == []


def test_every_schema_step_is_in_the_changelog() -> None:
    text = CHANGELOG.read_text(encoding="utf-8")
    named: set[int] = set()
    for first, last, other in re.findall(r"steps? (\d+)(?:-(\d+))?(?: \([^)]*\))?(?: and (\d+))?",
                                         text):  # fmt: skip
        named.update(range(int(first), int(last or first) + 1))
        if other:
            named.add(int(other))
    assert len(MIGRATIONS) == len(PG_MIGRATIONS)
    assert named == set(range(1, len(MIGRATIONS) + 1))
