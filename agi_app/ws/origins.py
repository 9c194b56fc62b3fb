"""Which pages may open the widget's WebSocket: the ``Origin`` of the
opening handshake against ``[websocket] allowed_origins``.

A browser always sends the origin of the page that opens a WebSocket, and a
page cannot change it: refusing foreign origins stops another site's page
from using a visitor's browser (and the client_id in the CRM page, or the
visitor's loopback) to follow calls.  A handshake without ``Origin`` does
not come from a browser page; it is let through, and its ``hello`` still
needs a valid ``client_id`` -- off loopback, a token (see docs/security.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from agi_app.config import is_loopback_endpoint, is_loopback_host, web_origin

__all__ = ["OriginPolicy"]


class OriginPolicy:
    """The origins allowed to connect.

    :param allowed: origins (``https://crm.example.com``) or ``*`` (any page)
    :param loopback_pages: also allow pages served from loopback
        (``http://localhost:3000``, ``http://127.0.0.1:8080``...), whatever the port
    """

    def __init__(self, allowed: Iterable[str] = ("*",), *, loopback_pages: bool = False):
        allowed = tuple(allowed)
        self.any = "*" in allowed
        self.allowed = frozenset(web_origin(o) for o in allowed if o != "*")
        self.loopback_pages = loopback_pages

    @classmethod
    def from_config(cls, config: Any) -> OriginPolicy:
        """The policy of ``[websocket] allowed_origins``; when empty, the
        origin of ``[http] public_url``, plus pages served from loopback
        while the WebSocket itself listens on loopback only (then only a
        browser on this machine can connect at all, and local CRMs and the
        demo keep working under any of their names)."""
        ws = config.websocket
        if ws.allowed_origins:
            return cls(ws.allowed_origins)
        return cls((config.http.public_url,), loopback_pages=is_loopback_endpoint(ws.listen))

    def allows(self, origin: str | None) -> bool:
        """Whether a handshake with this ``Origin`` header (None or empty:
        none was sent) may go on."""
        if not origin:
            return True
        if self.any:
            return True
        try:
            normal = web_origin(origin)
        except ValueError:
            # "null" (a file or sandboxed page), or no http(s) origin at all
            return False
        if normal in self.allowed:
            return True
        return self.loopback_pages and is_loopback_host(urlsplit(normal).hostname or "")

    def describe(self) -> str:
        """The policy in words, for the service log."""
        if self.any:
            return "any origin"
        words = sorted(self.allowed)
        if self.loopback_pages:
            words.append("pages served from loopback")
        return ", ".join(words)
