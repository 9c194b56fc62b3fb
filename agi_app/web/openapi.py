"""The OpenAPI 3.1 document of the HTTP API, served at ``GET /openapi.json``.

Every route is declared once, as an :class:`~agi_app.web.params.Operation`
(:mod:`agi_app.web.params`); :func:`paths` writes the document's path items
from those declarations -- the parameters with their schemas (pattern,
bounds, enum), the request body of a POST/PUT, the answers and the error
answers -- so the document says what the parser accepts.

Each endpoint module contributes its part: a function ``openapi_paths()``
returning its ``paths`` entries, and optionally ``openapi_schemas()``
returning component schemas it names.  :func:`build_document` assembles the
parts (refusing a path or schema defined twice) around the shared pieces
defined here: the error body, the history entry, and the API key schemes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from agi_app import __version__
from agi_app.store.base import STATUSES
from agi_app.validation import PBX_NAME
from agi_app.web.api import ApiRequest, Router
from agi_app.web.params import PATH, Answer, Operation, Param, add_route

__all__ = [
    "BODY_TYPES",
    "COMMON_SCHEMAS",
    "ERROR_DESCRIPTIONS",
    "OPENAPI",
    "add_routes",
    "body_schema",
    "build_document",
    "error_responses",
    "parameter",
    "paths",
    "ref",
]

#: The body types every POST/PUT takes (the router parses them all).
BODY_TYPES = ("application/json", "application/x-www-form-urlencoded", "multipart/form-data")
# Methods whose parameters travel in the body; the others' in the query.
_BODY_METHODS = ("POST", "PUT")

#: What each error status means everywhere in the API.
ERROR_DESCRIPTIONS = {
    400: "a parameter is missing or breaks an input rule; `field` names it",
    401: "the API key is missing or wrong",
    403: "a signed link whose signature does not match",
    404: "no such path, or the object asked for does not exist",
    405: "the path exists but not for this method (see the Allow header)",
    409: "the external_key was used before with other parameters",
    410: "a signed link past its expiry",
    413: "the request body is over 64 KiB",
    500: "the request could not be carried out; nothing is said of why",
    503: "the PBX is unreachable",
}

#: Schemas shared by several endpoint modules.
COMMON_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string", "examples": ["invalid_phone"]},
                    "message": {"type": "string"},
                    "field": {"type": "string", "description": "the parameter at fault"},
                },
            }
        },
        "description": "Every error answer; some carry more keys beside `error` "
        "(a 409 carries `call_id`).",
    },
    "Time": {
        "type": "string",
        "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$",
        "description": "UTC time with milliseconds",
        "examples": ["2026-11-25T21:04:37.123Z"],
    },
    "CallStatus": {"type": "string", "enum": list(STATUSES)},
    "HistoryEntry": {
        "type": "object",
        "required": ["id", "call_id", "order_id", "status", "time", "detail", "pbx"],
        "additionalProperties": False,
        "properties": {
            "id": {
                "type": "integer",
                "minimum": 1,
                "description": "grows monotonically across the whole store: the polling cursor",
            },
            "call_id": {"type": "string"},
            "order_id": {"type": ["string", "null"]},
            "status": {"$ref": "#/components/schemas/CallStatus"},
            "time": {"$ref": "#/components/schemas/Time"},
            "detail": {"type": ["string", "null"]},
            "pbx": {"$ref": "#/components/schemas/PBX"},
        },
    },
    "PBX": {
        **PBX_NAME.schema(),
        "description": "the PBX of the call or operator: default ([ami]) or the NAME "
        "of an [ami:NAME] section",
    },
}


def ref(name: str) -> dict[str, str]:
    """A reference to component schema ``name``."""
    return {"$ref": f"#/components/schemas/{name}"}


def _documented(p: Param) -> tuple[dict[str, Any], str]:
    """``p``'s schema and description as the document gives them: an
    optional parameter also takes an empty value (or a JSON null), which
    counts as leaving it out -- what form-posting CRMs often send."""
    schema = dict(p.schema)
    if p.required:
        return schema, p.doc
    rules = schema["anyOf"] if set(schema) == {"anyOf"} else [schema]
    wrapped: dict[str, Any] = {"anyOf": [*rules, {"const": ""}, {"type": "null"}]}
    if isinstance(p.default, (bool, int, str)):
        wrapped["default"] = p.default
    return wrapped, p.doc + "; empty: as if left out"


def parameter(p: Param) -> dict[str, Any]:
    """The OpenAPI Parameter Object of ``p`` (in the query or the path)."""
    schema, doc = _documented(p)
    return {
        "name": p.name,
        "in": "path" if p.location == PATH else "query",
        "required": p.required,
        "description": doc,
        "schema": schema,
    }


def body_schema(params: Iterable[Param]) -> dict[str, Any]:
    """The schema of a body (form or JSON object) carrying ``params``."""
    params = [p for p in params if p.location != PATH]
    properties = {}
    for p in params:
        schema, doc = _documented(p)
        properties[p.name] = {**schema, "description": doc}
    return {
        "type": "object",
        "properties": properties,
        "required": [p.name for p in params if p.required],
    }


def error_responses(
    statuses: Iterable[int], notes: Mapping[int, str] | None = None
) -> dict[str, Any]:
    """Responses entries for error ``statuses``, all with the Error body;
    ``notes`` replace the API-wide description of a status."""
    notes = notes or {}
    return {
        str(s): {
            "description": notes.get(s, ERROR_DESCRIPTIONS[s]),
            "content": {"application/json": {"schema": ref("Error")}},
        }
        for s in statuses
    }


def _answer(answer: Answer, formats: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"description": answer.description}
    if answer.schema is None:
        return out
    content: dict[str, Any] = {t: {"schema": dict(answer.schema)} for t in answer.media_types}
    if formats and "application/json" in content:
        content["application/xml"] = {
            "schema": dict(answer.schema),
            "description": "with a .xml path suffix: root <response>, lists as <item>s",
        }
    out["content"] = content
    return out


def _operation(op: Operation, method: str) -> dict[str, Any]:
    out: dict[str, Any] = {"summary": op.summary}
    if op.description:
        out["description"] = op.description
    out["tags"] = [op.tag]
    if not op.auth:
        out["security"] = []
    in_body = method in _BODY_METHODS
    parameters = [
        parameter(p) for p in op.params if p.location == PATH or not in_body
    ]
    if parameters:
        out["parameters"] = parameters
    fields = [p for p in op.params if p.location != PATH]
    if in_body and fields:
        schema = body_schema(fields)
        out["requestBody"] = {
            # a form with a required field cannot go without a body
            "required": bool(schema["required"]),
            "content": {t: {"schema": schema} for t in BODY_TYPES},
        }
    out["responses"] = {
        **{str(a.status): _answer(a, op.formats) for a in op.answers},
        **error_responses(op.errors, op.notes),
    }
    return out


def paths(operations: Iterable[Operation]) -> dict[str, Any]:
    """The ``paths`` entries of ``operations``: one path item per path,
    one OpenAPI operation per method (HEAD is implied by GET)."""
    out: dict[str, dict[str, Any]] = {}
    for op in operations:
        item = out.setdefault(op.path, {})
        for method in op.methods:
            key = method.lower()
            if key in item:
                raise ValueError(f"OpenAPI {method} {op.path} declared twice")
            item[key] = _operation(op, method.upper())
    return out


def build_document(
    parts: Iterable[Any], *, title: str = "agi_app HTTP API", version: str = __version__
) -> dict[str, Any]:
    """Assemble the OpenAPI document from endpoint modules (anything with
    ``openapi_paths()`` and optionally ``openapi_schemas()``)."""
    items: dict[str, Any] = paths([OPENAPI])
    schemas: dict[str, Any] = dict(COMMON_SCHEMAS)
    for part in parts:
        for path, item in part.openapi_paths().items():
            if path in items:
                raise ValueError(f"OpenAPI path {path} defined twice")
            items[path] = item
        for name, schema in getattr(part, "openapi_schemas", dict)().items():
            if name in schemas and schemas[name] != schema:
                raise ValueError(f"OpenAPI schema {name} defined twice")
            schemas[name] = schema
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": (
                "The CRM HTTP API of agi_app. Paths of CRM endpoints may end in .json or "
                ".xml (no suffix: JSON) and are matched case-insensitively. GET takes a "
                "query string; POST takes the same fields as a form or JSON object body "
                "(at most 64 KiB). Authentication: X-API-Key header or api_key query "
                "parameter, unless the server runs without keys on loopback."
            ),
        },
        "security": [{"ApiKeyHeader": []}, {"ApiKeyQuery": []}],
        "paths": items,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "ApiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "ApiKeyQuery": {"type": "apiKey", "in": "query", "name": "api_key"},
            },
        },
    }


#: ``GET /openapi.json``.
OPENAPI = Operation(
    methods=("GET",),
    path="/openapi.json",
    summary="This document",
    tag="meta",
    answers=(Answer(200, "the OpenAPI 3.1 document", {"type": "object"}),),
    errors=(),
    auth=False,
    formats=False,
)


def add_routes(router: Router, document: Mapping[str, Any]) -> None:
    """Serve ``document`` at ``GET /openapi.json`` (no API key needed)."""

    async def openapi(req: ApiRequest, args: dict[str, Any]) -> Mapping[str, Any]:
        return document

    add_route(router, OPENAPI, openapi)
