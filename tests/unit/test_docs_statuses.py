"""The status lists of the docs are agi_app.calls.statuses: docs/api.md's
table (final ones in bold), README's list, the client guide's FINAL set and
the final statuses of the calls metric in docs/operations.md."""

from __future__ import annotations

import re
from pathlib import Path

from agi_app.calls.statuses import FINAL_STATUSES, STATUSES

ROOT = Path(__file__).resolve().parents[2]
_WORD = re.compile(r"`([A-Z][A-Z_]+)`")


def _text(name: str) -> str:
    return (ROOT / name).read_text(encoding="utf-8")


def _between(text: str, start: str, end: str) -> str:
    begin = text.index(start)
    return text[begin:text.index(end, begin + len(start))]


def test_api_md_has_one_row_per_status_and_bold_marks_the_final_ones() -> None:
    table = _between(_text("docs/api.md"), "## Call statuses", "\nA history entry:")
    rows = re.findall(r"^\| (\*\*)?`([A-Z_]+)`(\*\*)? \|", table, re.M)
    words = [word for _, word, _ in rows]
    assert sorted(words) == sorted(STATUSES)  # each once, none missing or extra
    assert {word for bold, word, _ in rows if bold} == FINAL_STATUSES


def test_readme_lists_every_status() -> None:
    bullet = _between(_text("README.md"), "- a **call log**", "\n- ")
    assert _WORD.findall(bullet) == list(STATUSES)


def test_the_client_guide_knows_the_final_statuses() -> None:
    block = _between(_text("docs/client.md"), "FINAL = {", "}")
    assert set(re.findall(r'"([A-Z_]+)"', block)) == FINAL_STATUSES


def test_the_calls_metric_lists_the_final_statuses() -> None:
    row = next(line for line in _text("docs/operations.md").splitlines()
               if line.startswith("| `agi_app_calls_total` |"))  # fmt: skip
    labels = re.search(r"`final_status` \(([A-Z_, ]+)\)", row)
    assert labels is not None
    assert {w.strip() for w in labels.group(1).split(",")} == FINAL_STATUSES
