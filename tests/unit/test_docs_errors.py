"""docs/errors.md is the catalogue the code generates, and the catalogue
(agi_app.errors.CATALOGUE) names exactly the codes the code sends."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest

from agi_app import errordocs
from agi_app.errors import CATALOGUE, HTTP, WIDGET, ErrorCode

DOC = Path(__file__).resolve().parents[2] / "docs" / "errors.md"


@pytest.fixture(scope="module")
def uses() -> list[errordocs.Use]:
    """The source's error answers, read once (importing and parsing the package)."""
    return errordocs.scan()


def test_every_code_sent_is_catalogued_and_every_catalogued_code_is_sent(uses) -> None:
    assert errordocs.check(uses) == []


def test_docs_errors_md_is_the_generated_catalogue(uses) -> None:
    assert DOC.read_text(encoding="utf-8") == errordocs.render(uses), (
        "docs/errors.md is out of date: python -m agi_app.errordocs > docs/errors.md"
    )


def test_the_codes_the_reviewers_missed_are_in_the_document() -> None:
    text = DOC.read_text(encoding="utf-8")
    for code in ("unknown_subscription", "too_many_subscriptions", "unknown_ivrName", "not_live",
                 "invalid_<field>", "forbidden_target"):
        assert f"| `{code}` |" in text


def _scan_text(source: str) -> list[errordocs.Use]:
    """The uses in ``source``, read as if it were a module of web/ (the HTTP side)."""
    scanner = errordocs._Scanner(errordocs._error_classes(), "web/probe.py")
    scanner.visit(ast.parse(source))
    return scanner.uses


def test_a_new_code_in_the_source_fails_the_check(uses) -> None:
    new = _scan_text('raise Conflict("x", code="brand_new_code")\n')
    assert new == [errordocs.Use("brand_new_code", 409, "web/probe.py", 1)]
    problems = errordocs.check(uses + new)
    assert any("'brand_new_code' is not in agi_app.errors.CATALOGUE" in p for p in problems)


def test_a_code_sent_with_another_status_fails_the_check(uses) -> None:
    problems = errordocs.check(uses + _scan_text('raise ApiError(418, "not_found", "teapot")\n'))
    assert any("'not_found' sent with 418" in p for p in problems)


def test_a_catalogued_code_nobody_sends_fails_the_check(uses) -> None:
    ghost = ErrorCode("ghost_code", (409,), (HTTP,), "never sent", "nothing")
    problems = errordocs.check(uses, (*CATALOGUE, ghost))
    assert problems == ["'ghost_code' is catalogued but no code sends it"]


def test_a_widget_code_catalogued_for_http_only_fails_the_check(uses) -> None:
    narrowed = tuple(
        dataclasses.replace(e, channels=(HTTP,)) if e.code == "unknown_call" else e
        for e in CATALOGUE
    )
    problems = errordocs.check(uses, narrowed)
    assert any("'unknown_call' is sent on the widget" in p for p in problems)
    assert WIDGET not in next(e for e in narrowed if e.code == "unknown_call").channels


def test_families_and_defaults_are_read_from_the_source() -> None:
    found = _scan_text(
        "def check(value, field='ivrName'):\n"
        "    raise InvalidInput(field, 'no such menu', code=f'unknown_{field}')\n"
        "def rule(value, field):\n"
        "    raise InvalidInput(field, 'bad')\n"
        "def ttl(value):\n"
        "    raise v.InvalidInput('ttl', 'bad')\n"
        "def guard(field):\n"
        "    raise ForbiddenTarget(field, 'no')\n"
    )
    assert [(u.code, u.status) for u in found] == [
        ("unknown_ivrName", 400), ("invalid_<field>", 400), ("invalid_ttl", 400),
        ("forbidden_target", 400),
    ]
    assert errordocs.entry_of("invalid_ttl").code == "invalid_<field>"
    assert errordocs.entry_of("invalid_body").code == "invalid_body"
    assert errordocs.entry_of("unknown_whatever") is None  # no family swallows it


def test_the_widget_docs_name_only_codes_the_widget_is_sent() -> None:
    text = (DOC.parent / "widget.md").read_text(encoding="utf-8")
    table = text[text.index("| request | codes it may get |"):text.index("What each code means")]
    codes = set(re.findall(r"`([a-z_]+)`", table)) - {"hello", "user_phone", "set_phone", "call",
                                                      "transfer", "send_dst", "phone", "type"}
    assert len(codes) > 20
    for code in codes:
        entry = errordocs.entry_of(code)
        assert entry is not None, code
        assert WIDGET in entry.channels, code
