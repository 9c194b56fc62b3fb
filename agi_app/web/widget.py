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

from agi_app.errors import Conflict
from agi_app.web import params as p
from agi_app.web.api import ApiRequest, Router
from agi_app.web.openapi import paths
from agi_app.ws import tokens

__all__ = ["OPERATIONS", "WidgetTokenEndpoints"]

WIDGET_TOKEN = p.Operation(
    methods=("POST",),
    path="/api/widgetToken",
    summary="A widget token for one extension",
    description=(
        "A client_id for prostiezvonki.js that binds the widget to `sip` until `expires`: "
        "it follows that extension's calls only and acts only as it. See docs/widget.md."
    ),
    tag="widget",
    params=(
        p.extension("sip", "the extension the widget acts as", required=True),
        p.whole_number("ttl", "seconds the token is valid", tokens.MIN_TTL, tokens.MAX_TTL,
                       default=tokens.DEFAULT_TTL),  # fmt: skip
    ),
    answers=(
        p.Answer(200, "the token", {
            "type": "object",
            "required": ["client_id", "expires"],
            "properties": {
                "client_id": {"type": "string", "description": "the widget's client_id"},
                "expires": {"type": "integer", "description": "unix time the token expires"},
            },
        }),
    ),
    errors=(400, 401, 409),
    notes={409: "widget tokens are disabled ([websocket] token_secret is empty)"},
)  # fmt: skip
#: Every route of this module.
OPERATIONS = (WIDGET_TOKEN,)


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
        p.add_route(router, WIDGET_TOKEN, self.widget_token)

    async def widget_token(self, req: ApiRequest, args: dict[str, Any]) -> dict[str, Any]:
        """A token binding a widget to ``sip`` for ``ttl`` seconds."""
        if not self._secret:
            raise Conflict(
                "widget tokens are disabled: [websocket] token_secret is not set",
                code="widget_tokens_disabled",
            )
        client_id, expires = tokens.issue(self._secret, args["sip"], args["ttl"],
                                          self._clock.seconds())  # fmt: skip
        return {"client_id": client_id, "expires": expires}

    @staticmethod
    def openapi_paths() -> dict[str, Any]:
        """The OpenAPI path item of ``/api/widgetToken``."""
        return paths(OPERATIONS)
