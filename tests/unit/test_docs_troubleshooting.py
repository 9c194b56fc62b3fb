"""docs/operations.md's troubleshooting table says what agi_app really logs
and answers: every quoted message is one of its own texts (or one of the
few named messages of Asterisk and Twisted), and every HTTP status with a
code is the status the error catalogue gives that code."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from agi_app import errordocs

ROOT = Path(__file__).resolve().parents[2]
#: what other programs print, quoted in the table as they print it
FOREIGN = {
    "File agi_app/please-wait does not exist in any format",  # Asterisk's log
    "SSL support unavailable",  # Twisted without pyOpenSSL
    "AGI request failed for host",  # Asterisk's log (res_agi, hagi:// target down)
}
_HOLE = "\x00"


def _table() -> list[str]:
    text = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    section = text[text.index("## Troubleshooting"):]
    section = section[:section.index("\n## ", 4)]
    return [line for line in section.splitlines() if line.startswith("| ")][2:]


def _texts() -> list[str]:
    """Every string of agi_app's code (an f-string's or format's holes as
    one marker), the prompts' words and the dialplan."""
    out = []
    for path in (ROOT / "agi_app").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                out.append(re.sub(r"\{[^{}]*\}", _HOLE, node.value))
            elif isinstance(node, ast.JoinedStr):
                out.append("".join(p.value if isinstance(p, ast.Constant) else _HOLE
                                   for p in node.values))  # fmt: skip
    out += (ROOT / "sounds" / "prompts.tsv").read_text(encoding="utf-8").splitlines()
    out.append((ROOT / "dialplan" / "extensions.conf").read_text(encoding="utf-8"))
    return out


def _said_by_agi_app(quote: str, texts: list[str]) -> bool:
    pieces = [p for p in quote.split("...") if p.strip()]
    for text in texts:
        folded = text.lower()
        at = 0
        for piece in pieces:
            found = folded.find(piece.lower(), at)
            if found < 0:
                break
            at = found + len(piece)
        else:
            return True
    return False


def test_every_quoted_message_is_one_agi_app_writes() -> None:
    texts = _texts()
    quotes = [q for row in _table() for q in re.findall(r'(?<![=\w])"([^"]+)"', row)]
    assert len(quotes) >= 8
    for quote in quotes:
        if quote in FOREIGN:
            continue
        assert _said_by_agi_app(quote, texts), quote


def test_every_status_and_code_in_the_table_is_the_catalogues() -> None:
    pairs = [p for row in _table() for p in re.findall(r"\b([1-5]\d\d) `([a-z_A-Z]+)`", row)]
    assert len(pairs) >= 4
    for status, code in pairs:
        entry = errordocs.entry_of(code)
        assert entry is not None, code
        assert int(status) in entry.statuses, (status, code)


def test_a_made_up_message_would_be_caught() -> None:
    assert not _said_by_agi_app("IVR: the menus are on fire", _texts())
    assert _said_by_agi_app("IVR: no menu file ...; no IVR menus until it exists", _texts())
