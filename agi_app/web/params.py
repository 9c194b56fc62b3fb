"""The API's parameters and routes, each declared once.

A :class:`Param` is everything about one parameter: its name, the checker
that turns what a client sent into a clean value (or raises
:class:`~agi_app.errors.InvalidInput` naming the field), its JSON Schema, its
description, whether it is required and its default.  An :class:`Operation`
is one route: methods, path, parameters, answers and error statuses.

:func:`add_route` puts an operation on a :class:`~agi_app.web.api.Router`:
the handler is called as ``handler(req, args)`` with ``args`` the checked
values by parameter name (an absent optional parameter is its default), and
never sees a value its declaration refuses.  :mod:`agi_app.web.openapi`
writes the OpenAPI document from the same declarations, so the document and
the parser cannot drift apart.

The constructors below (:func:`phone`, :func:`extension`, :func:`seconds`...)
build a parameter of a kind of value from :mod:`agi_app.validation`: the
checker and the schema's ``pattern`` come from the same
:class:`~agi_app.validation.Rule`.

Missing and empty values follow one rule everywhere: a parameter that is
absent, empty (``?sip=``) or a JSON null is left out; a required one is
then a 400 ``missing_<field>``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agi_app import validation as v
from agi_app.validation import InvalidInput
from agi_app.web.api import ApiRequest, Router

__all__ = [
    "EXTENSION_ID",
    "EXTERNAL_KEY",
    "FLAG_SCHEMA",
    "MAX_PAGE",
    "MAX_PER_PAGE",
    "ORDER_ID",
    "PAGE",
    "PATH",
    "PBX",
    "PER_PAGE",
    "QUERY",
    "TRUNK_NUMBER",
    "Answer",
    "Check",
    "Operation",
    "Param",
    "add_route",
    "any_case_choice",
    "choice",
    "extension",
    "flag",
    "identifier",
    "known_trunk",
    "phone",
    "seconds",
    "text",
    "whole_number",
    "word_list",
]

#: ``checker(value, field)``: the clean value, or :class:`InvalidInput` naming ``field``.
Check = Callable[[Any, str], Any]

#: In the query string, or a field of the body (form or JSON object) of a
#: POST/PUT: the router merges the two.
QUERY = "query"
#: A ``{name}`` segment of the path.
PATH = "path"

#: ``per_page`` is 1..MAX_PER_PAGE (CONTRACT 3.2).
MAX_PER_PAGE = 500
#: A page number beyond any real listing; keeps OFFSET within SQL integers.
MAX_PAGE = 10**9


@dataclass(frozen=True)
class Param:
    """One parameter of a route.

    :param name: as clients send it
    :param check: ``check(value, field)`` -> clean value (see :data:`Check`);
        for a ``many`` parameter it gets the list of values
    :param schema: its JSON Schema (what ``check`` accepts)
    :param doc: a short description for the OpenAPI document
    :param required: absent or empty is a 400 ``missing_<field>``
    :param default: the value of an absent optional parameter
    :param location: :data:`QUERY` (query string or body) or :data:`PATH`
    :param many: may be repeated (or a JSON array); ``check`` gets every value
    :param field: the name errors give, when it is not ``name``
    """

    name: str
    check: Check
    schema: Mapping[str, Any]
    doc: str
    required: bool = False
    default: Any = None
    location: str = QUERY
    many: bool = False
    field: str | None = None

    def __post_init__(self) -> None:
        if self.location not in (QUERY, PATH):
            raise ValueError(f"{self.name}: location must be {QUERY!r} or {PATH!r}")
        if self.location == PATH and not self.required:
            raise ValueError(f"{self.name}: a path parameter is always required")

    @property
    def error_field(self) -> str:
        """The ``field`` of this parameter's errors."""
        return self.field or self.name

    def but(self, **changes: Any) -> Param:
        """This parameter with ``changes`` (``ORDER_ID.but(required=False)``)."""
        return dataclasses.replace(self, **changes)

    def read(self, req: ApiRequest, path: Mapping[str, str]) -> Any:
        """The checked value of this parameter in ``req`` (``path``: the
        path's parameters); its default when absent."""
        if self.location == PATH:
            value = path.get(self.name)
        elif self.many:
            # a JSON null (alone or in an array) is a value left out
            value = [x for x in req.param_list(self.name) if x is not None] or None
        else:
            value = req.params.get(self.name)
        if value is None or value == "":
            if self.required:
                name = self.error_field
                raise InvalidInput(name, f"{name} is required", code=f"missing_{name}")
            return self.default
        return self.check(value, self.error_field)


@dataclass(frozen=True)
class Answer:
    """One answer of a route: a status, what it means, its body's schema
    (None: no body) and the media types it comes in."""

    status: int
    description: str
    schema: Mapping[str, Any] | None = None
    media_types: tuple[str, ...] = ("application/json",)


@dataclass(frozen=True, eq=False)
class Operation:
    """One route: what it takes and what it answers.

    :param methods: HTTP methods (a GET route also answers HEAD)
    :param path: the router pattern, also the OpenAPI path
        (``/extension/{extension_id}/event/``)
    :param params: checked in this order, so the first fault is reported
    :param answers: the successful answers (and any others that are not an
        error body, like /health's 503)
    :param errors: statuses answered with the error body
    :param notes: what an error status means on this route, when the
        API-wide description is not enough
    :param auth: needs an API key
    :param formats: the path may end in ``.json`` or ``.xml``
    """

    methods: tuple[str, ...]
    path: str
    summary: str
    tag: str
    answers: tuple[Answer, ...]
    params: tuple[Param, ...] = ()
    description: str = ""
    errors: tuple[int, ...] = (400, 401)
    notes: Mapping[int, str] = field(default_factory=dict)
    auth: bool = True
    formats: bool = True

    def __post_init__(self) -> None:
        names = [p.name for p in self.params]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.path}: a parameter is declared twice")
        in_path = {s[1:-1] for s in self.path.split("/") if s.startswith("{")}
        declared = {p.name for p in self.params if p.location == PATH}
        if in_path != declared:
            raise ValueError(f"{self.path}: path parameters {sorted(in_path)} are not declared")

    def parse(
        self,
        req: ApiRequest,
        path: Mapping[str, str] | None = None,
        rules: Mapping[str, Check] | None = None,
    ) -> dict[str, Any]:
        """Every parameter's checked value by name.  ``rules`` adds, per
        parameter name, a further check of a given value that depends on
        the running application (a configured trunk, a known menu)."""
        path = path or {}
        args = {}
        for p in self.params:
            value = p.read(req, path)
            rule = rules.get(p.name) if rules else None
            if rule is not None and value is not None:
                value = rule(value, p.error_field)
            args[p.name] = value
        return args


def add_route(
    router: Router,
    op: Operation,
    handler: Callable[[ApiRequest, dict[str, Any]], Any],
    *,
    rules: Mapping[str, Check] | None = None,
) -> None:
    """Route ``op`` to ``handler(req, args)``; ``args`` is ``op.parse(req,
    path, rules)``.  The route's handler carries ``op`` as ``.operation``."""
    rules = dict(rules or {})
    unknown = set(rules) - {p.name for p in op.params}
    if unknown:
        raise ValueError(f"{op.path}: rules for undeclared parameters {sorted(unknown)}")

    def handle(req: ApiRequest, **path: str) -> Any:
        return handler(req, op.parse(req, path, rules))

    handle.operation = op  # type: ignore[attr-defined]
    router.add(op.methods, op.path, handle, auth=op.auth, formats=op.formats)


# -- parameters by kind of value -------------------------------------------------


def _rule_param(rule: v.Rule, checker: Check, name: str, doc: str, **kw: Any) -> Param:
    return Param(name, checker, rule.schema(), doc, **kw)


def phone(name: str, doc: str, **kw: Any) -> Param:
    """A phone number (CONTRACT 3: :data:`agi_app.validation.PHONE`)."""
    return _rule_param(v.PHONE, v.phone, name, doc, **kw)


def extension(name: str, doc: str, **kw: Any) -> Param:
    """An extension, sip or trunk (:data:`agi_app.validation.EXTENSION`)."""
    return _rule_param(v.EXTENSION, v.extension, name, doc, **kw)


def identifier(name: str, doc: str, **kw: Any) -> Param:
    """An order_id, external_key or call id (:data:`agi_app.validation.IDENTIFIER`)."""
    return _rule_param(v.IDENTIFIER, v.identifier, name, doc, **kw)


def seconds(name: str, doc: str, minimum: int, maximum: int, **kw: Any) -> Param:
    """A whole number of seconds, ``minimum..maximum``."""

    def check(value: Any, field: str) -> int:
        return v.seconds(value, field, minimum, maximum)

    schema = {"type": "integer", "minimum": minimum, "maximum": maximum}
    return Param(name, check, schema, doc, **kw)


def whole_number(name: str, doc: str, minimum: int, maximum: int, **kw: Any) -> Param:
    """A whole number, ``minimum..maximum`` (a page, a cursor, a limit)."""

    def check(value: Any, field: str) -> int:
        return v.whole_number(value, field, minimum=minimum, maximum=maximum)

    schema = {"type": "integer", "minimum": minimum, "maximum": maximum}
    return Param(name, check, schema, doc, **kw)


#: What :func:`agi_app.validation.flag` takes.
FLAG_SCHEMA: dict[str, Any] = {
    "anyOf": [{"type": "integer", "enum": [0, 1]}, {"type": "boolean"}, v.FLAG.schema()]
}


def flag(name: str, doc: str, default: bool, **kw: Any) -> Param:
    """A flag: 0/1, true/false, yes/no, on/off in any case, or a JSON bool."""
    return Param(name, v.flag, FLAG_SCHEMA, doc, default=default, **kw)


def text(name: str, doc: str, max_length: int = 64, **kw: Any) -> Param:
    """Free text shown on a phone (:func:`agi_app.validation.display_text`)."""

    def check(value: Any, field: str) -> str:
        return v.display_text(value, field, max_length)

    schema = v.DISPLAY_TEXT.schema(maxLength=max_length)
    return Param(name, check, schema, doc, **kw)


def choice(name: str, doc: str, words: Iterable[str], **kw: Any) -> Param:
    """One of ``words``, exactly."""
    words = tuple(words)

    def check(value: Any, field: str) -> str:
        if not isinstance(value, str) or value not in words:
            raise InvalidInput(field, f"{field} must be one of {', '.join(words)}")
        return value

    return Param(name, check, {"type": "string", "enum": list(words)}, doc, **kw)


def any_case_choice(name: str, doc: str, words: Iterable[str], check: Check, **kw: Any) -> Param:
    """One of ``words`` in any case, blanks around it allowed, as ``check``
    takes it (and answers its errors); a value ``check`` would take only
    through Unicode case folding (``"poſt".upper() == "POST"``) is refused
    as well, so the value is one the document's pattern allows."""
    rule = v.word_choice(words)

    def checked(value: Any, field: str) -> Any:
        clean = check(value, field)
        if not rule.match(value):
            raise InvalidInput(field, f"{field} must be {rule.says}")
        return clean

    return Param(name, checked, rule.schema(), doc, **kw)


def word_list(name: str, doc: str, words: Iterable[str], **kw: Any) -> Param:
    """Comma separated ``words`` in any case (empty items skipped), possibly
    repeated: the set of them, lower case."""
    words = tuple(words)
    rule = v.word_list(words)

    def check(values: list[Any], field: str) -> frozenset[str]:
        out: set[str] = set()
        for value in values:
            if not isinstance(value, str):
                raise InvalidInput(field, f"{field} must be a comma separated list")
            if not rule.match(value):
                raise InvalidInput(field, f"{field} must be {rule.says}")
            out.update(w.strip().lower() for w in value.split(","))
        out.discard("")
        return frozenset(out)

    one = rule.schema()
    schema = {"anyOf": [one, {"type": "array", "items": one}]}
    return Param(name, check, schema, doc, many=True, **kw)


def known_trunk(trunks: Iterable[str]) -> Check:
    """A rule (see :meth:`Operation.parse`): the trunk is one of ``trunks``
    (``[dialing] default_trunk`` and ``trunks``), else 400 ``unknown_trunk``."""
    allowed = tuple(dict.fromkeys(trunks))

    def check(value: str, field: str) -> str:
        if value not in allowed:
            raise InvalidInput(
                field,
                f"{field} {value!r} is not a configured trunk",
                code="unknown_trunk",
            )
        return value

    return check


# -- parameters several routes share ---------------------------------------------

#: An order id of the CRM, optional for the calls of the call model.
ORDER_ID = identifier("order_id", "the CRM's order")
#: The idempotency key of a placed call.
EXTERNAL_KEY = identifier(
    "external_key",
    "idempotency key: repeated with the same parameters it returns the same call and "
    "places nothing",
)
#: The trunk of the call model's calls (with the :func:`known_trunk` rule).
TRUNK_NUMBER = extension(
    "trunkNumber",
    "trunk the outside number is dialled through: [dialing] default_trunk (the default) "
    "or one of [dialing] trunks, else 400 unknown_trunk",
)


def _extension_id(value: str, field: str) -> str:
    # seed 004 writes the extension with a leading "@"
    return v.extension(value[1:] if value.startswith("@") else value, field)


#: ``{extension_id}`` of ``/extension/...`` paths: ``200`` or ``@200``.
EXTENSION_ID = Param(
    "extension_id",
    _extension_id,
    {"type": "string", "pattern": f"^@?{v.EXTENSION.body}$"},
    "the extension (200), or @200 as in seed 004",
    required=True,
    location=PATH,
)
#: The PBX a call is placed on (several PBXs: ``[ami:NAME]``, docs/scaling.md).
PBX = Param(
    "pbx",
    v.pbx_name,
    v.PBX_NAME.schema(),
    "the PBX to place the call on: default ([ami]) or the NAME of an [ami:NAME] section; "
    "absent: the PBX the extension belongs to (where its phone is registered; else the "
    "PBX whose extensions key names it; else where it was last registered; else "
    "default). Not configured: 400 unknown_pbx; that PBX down: 503",
)
#: ``page`` of a paged listing.
PAGE = whole_number("page", "page number, from 1", 1, MAX_PAGE, default=1)
#: ``per_page`` of a paged listing.
PER_PAGE = whole_number("per_page", "items per page", 1, MAX_PER_PAGE, default=20)
