"""The OpenAPI 3.1 document of the HTTP API, served at ``GET /openapi.json``.

Each endpoint module contributes its part: a function ``openapi_paths()``
returning its ``paths`` entries, and optionally ``openapi_schemas()``
returning component schemas it names.  :func:`build_document` assembles the
parts (refusing a path or schema defined twice) around the shared pieces
defined here: the error body, the history entry, and the API key schemes.

:func:`api_operation` writes the usual CRM endpoint: GET with a query
string and POST with the same fields as a form or JSON body, answering JSON
(or XML with a ``.xml`` suffix).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from agi_app import __version__
from agi_app.store.base import STATUSES
from agi_app.web.api import ApiRequest, Router

__all__ = [
    "COMMON_SCHEMAS",
    "ERROR_DESCRIPTIONS",
    "add_routes",
    "api_operation",
    "build_document",
    "error_responses",
    "param",
    "ref",
]

#: What each error status means everywhere in the API.
ERROR_DESCRIPTIONS = {
    400: "a parameter is missing or breaks an input rule; `field` names it",
    401: "the API key is missing or wrong",
    404: "no such path, or the object asked for does not exist",
    405: "the path exists but not for this method (see the Allow header)",
    409: "the external_key was used before with other parameters",
    413: "the request body is over 64 KiB",
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
        "required": ["id", "call_id", "order_id", "status", "time", "detail"],
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
        },
    },
}


def ref(name: str) -> dict[str, str]:
    """A reference to component schema ``name``."""
    return {"$ref": f"#/components/schemas/{name}"}


def param(
    name: str, schema: Mapping[str, Any], description: str, *, required: bool = False
) -> dict[str, Any]:
    """A query parameter (also a body field of the POST form)."""
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": dict(schema),
    }


def error_responses(statuses: Iterable[int]) -> dict[str, Any]:
    """Responses entries for error ``statuses``, all with the Error body."""
    return {
        str(s): {
            "description": ERROR_DESCRIPTIONS[s],
            "content": {"application/json": {"schema": ref("Error")}},
        }
        for s in statuses
    }


def _answer(schema: Mapping[str, Any], description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {
            "application/json": {"schema": dict(schema)},
            "application/xml": {
                "schema": dict(schema),
                "description": "with a .xml path suffix: root <response>, lists as <item>s",
            },
        },
    }


def api_operation(
    *,
    summary: str,
    description: str,
    parameters: Sequence[Mapping[str, Any]],
    response: Mapping[str, Any],
    errors: Iterable[int] = (400, 401),
    tag: str,
    methods: Iterable[str] = ("get", "post"),
) -> dict[str, Any]:
    """A path item for a CRM endpoint: GET with ``parameters`` in the query,
    POST with the same fields as a form or JSON object body."""
    errors = tuple(errors)
    item: dict[str, Any] = {}
    body_schema = {
        "type": "object",
        "properties": {p["name"]: p["schema"] for p in parameters},
        "required": [p["name"] for p in parameters if p.get("required")],
    }
    for method in methods:
        op: dict[str, Any] = {
            "summary": summary,
            "description": description,
            "tags": [tag],
            "responses": {"200": _answer(response, "success"), **error_responses(errors)},
        }
        if method == "get":
            op["parameters"] = [dict(p) for p in parameters]
        else:
            op["requestBody"] = {
                # a form with a required field cannot go without a body
                "required": bool(body_schema["required"]),
                "content": {
                    "application/json": {"schema": body_schema},
                    "application/x-www-form-urlencoded": {"schema": body_schema},
                    "multipart/form-data": {"schema": body_schema},
                },
            }
        item[method] = op
    return item


def build_document(
    parts: Iterable[Any], *, title: str = "agi_app HTTP API", version: str = __version__
) -> dict[str, Any]:
    """Assemble the OpenAPI document from endpoint modules (anything with
    ``openapi_paths()`` and optionally ``openapi_schemas()``)."""
    paths: dict[str, Any] = {"/openapi.json": _self_path()}
    schemas: dict[str, Any] = dict(COMMON_SCHEMAS)
    for part in parts:
        for path, item in part.openapi_paths().items():
            if path in paths:
                raise ValueError(f"OpenAPI path {path} defined twice")
            paths[path] = item
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
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "ApiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "ApiKeyQuery": {"type": "apiKey", "in": "query", "name": "api_key"},
            },
        },
    }


def _self_path() -> dict[str, Any]:
    return {
        "get": {
            "summary": "This document",
            "tags": ["meta"],
            "security": [],
            "responses": {
                "200": {
                    "description": "the OpenAPI 3.1 document",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
            },
        }
    }


def add_routes(router: Router, document: Mapping[str, Any]) -> None:
    """Serve ``document`` at ``GET /openapi.json`` (no API key needed)."""

    async def openapi(req: ApiRequest) -> Mapping[str, Any]:
        return document

    router.add(("GET",), "/openapi.json", openapi, auth=False, formats=False)
