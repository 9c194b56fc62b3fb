"""Readers for the numeric and list parameters of the API (paging, cursors),
raising :class:`agi_app.validation.InvalidInput` that names the field."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from agi_app.validation import InvalidInput
from agi_app.web.api import ApiRequest

__all__ = ["MAX_PAGE", "MAX_PER_PAGE", "choices", "integer", "optional_integer", "paging"]

#: ``per_page`` is 1..MAX_PER_PAGE (CONTRACT 3.2).
MAX_PER_PAGE = 500
#: A page number beyond any real listing; keeps OFFSET within SQL integers.
MAX_PAGE = 10**9

_DIGITS = re.compile(r"^[0-9]{1,19}$", re.ASCII)


def integer(value: Any, field: str, *, minimum: int, maximum: int) -> int:
    """A whole number (a JSON integer or a string of digits) within
    ``minimum..maximum``."""
    if isinstance(value, bool):
        raise InvalidInput(field, f"{field} must be a whole number")
    if isinstance(value, int):
        n = value
    elif isinstance(value, str) and _DIGITS.match(value.strip()):
        n = int(value.strip())
    else:
        raise InvalidInput(field, f"{field} must be a whole number")
    if not minimum <= n <= maximum:
        raise InvalidInput(field, f"{field} must be between {minimum} and {maximum}")
    return n


def optional_integer(
    req: ApiRequest, name: str, default: int, *, minimum: int, maximum: int
) -> int:
    """Parameter ``name`` as :func:`integer`, or ``default`` when absent or empty."""
    value = req.param(name, None)
    if value is None:
        return default
    return integer(value, name, minimum=minimum, maximum=maximum)


def paging(req: ApiRequest, default_per_page: int = 20) -> tuple[int, int]:
    """``(page, per_page)``: page >= 1 (default 1), per_page 1..500."""
    page = optional_integer(req, "page", 1, minimum=1, maximum=MAX_PAGE)
    per_page = optional_integer(
        req, "per_page", default_per_page, minimum=1, maximum=MAX_PER_PAGE
    )
    return page, per_page


def choices(values: Iterable[Any], field: str, allowed: Iterable[str]) -> frozenset[str]:
    """Comma separated words (possibly in several values), each one of
    ``allowed``; empty words are skipped."""
    allowed = tuple(allowed)
    out = set()
    for value in values:
        if not isinstance(value, str):
            raise InvalidInput(field, f"{field} must be a comma separated list")
        for word in value.split(","):
            word = word.strip().lower()
            if not word:
                continue
            if word not in allowed:
                raise InvalidInput(field, f"{field} must be some of {', '.join(allowed)}")
            out.add(word)
    return frozenset(out)
