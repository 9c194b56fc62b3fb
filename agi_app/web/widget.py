"""``POST /api/widgetToken`` (CONTRACT section 8): a widget token for one
extension, for a CRM that would rather ask than sign it itself.

Body ``{"sip": "1000", "ttl": 3600}`` (``ttl`` optional, seconds,
:data:`~agi_app.ws.tokens.MIN_TTL`..:data:`~agi_app.ws.tokens.MAX_TTL`,
default :data:`~agi_app.ws.tokens.DEFAULT_TTL`) → ``{"client_id": "v1.…",
"expires": 1795647600}``.  Like every CRM route it needs an API key; the CRM
calls it from its server and hands the token to the page of the user whose
extension it names.
"""

from __future__ import annotations

from typing import Any

from agi_app import validation as v
from agi_app.errors import Conflict
from agi_app.web.api import ApiRequest, Router
from agi_app.web.params import integer
from agi_app.ws import tokens

__all__ = ["WidgetTokenEndpoints"]


class WidgetTokenEndpoints:
    """Mints widget tokens with ``[websocket] token_secret`` (empty: the
    route answers 409 ``widget_tokens_disabled``).

    :param clock: an ``IReactorTime`` (the token's ``expires`` counts from its ``seconds()``)
    """

    def __init__(self, token_secret: str, *, clock: Any):
        self._secret = token_secret
        self._clock = clock

    def add_routes(self, router: Router) -> None:
        """Register ``POST /api/widgetToken``."""
        router.add(("POST",), "/api/widgetToken", self.widget_token)

    async def widget_token(self, req: ApiRequest) -> dict[str, Any]:
        """A token binding a widget to ``sip`` for ``ttl`` seconds."""
        sip = v.extension(req.params.get("sip"), "sip")
        raw_ttl = req.param("ttl", None)
        ttl = tokens.DEFAULT_TTL
        if raw_ttl is not None:
            ttl = integer(raw_ttl, "ttl", minimum=tokens.MIN_TTL, maximum=tokens.MAX_TTL)
        if not self._secret:
            raise Conflict(
                "widget tokens are disabled: [websocket] token_secret is not set",
                code="widget_tokens_disabled",
            )
        client_id, expires = tokens.issue(self._secret, sip, ttl, self._clock.seconds())
        return {"client_id": client_id, "expires": expires}

    # -- OpenAPI ----------------------------------------------------------------

    @staticmethod
    def openapi_paths() -> dict[str, Any]:
        """The OpenAPI path item of ``/api/widgetToken``."""
        from agi_app.web import openapi as oa

        schema = {
            "type": "object",
            "required": ["sip"],
            "properties": {
                "sip": {"type": "string", "pattern": r"^[A-Za-z0-9_-]{1,32}$",
                        "description": "the extension the widget acts as"},
                "ttl": {"type": "integer", "minimum": tokens.MIN_TTL,
                        "maximum": tokens.MAX_TTL, "default": tokens.DEFAULT_TTL,
                        "description": "seconds the token is valid"},
            },
        }  # fmt: skip
        answer = {
            "type": "object",
            "required": ["client_id", "expires"],
            "properties": {
                "client_id": {"type": "string", "description": "the widget's client_id"},
                "expires": {"type": "integer", "description": "unix time the token expires"},
            },
        }
        errors = oa.error_responses((400, 401))
        errors["409"] = {
            "description": "widget tokens are disabled ([websocket] token_secret is empty)",
            "content": {"application/json": {"schema": oa.ref("Error")}},
        }
        return {
            "/api/widgetToken": {
                "post": {
                    "summary": "A widget token for one extension",
                    "description": (
                        "A client_id for prostiezvonki.js that binds the widget to `sip` "
                        "until `expires`: it follows that extension's calls only and acts "
                        "only as it. See docs/widget.md."
                    ),
                    "tags": ["widget"],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": schema},
                            "application/x-www-form-urlencoded": {"schema": schema},
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "the token",
                            "content": {"application/json": {"schema": answer}},
                        },
                        **errors,
                    },
                }
            }
        }
