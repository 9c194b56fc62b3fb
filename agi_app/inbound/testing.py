"""A CRM's lookup endpoint for tests: a twisted.web resource answering
``GET ...?phone=NUMBER`` as it is told, per number -- at once, late, never,
or with garbage -- and keeping every request it got.

Serve it in memory (``treq.testing.RequestTraversalAgent(crm)``) or on a
loopback port (``reactor.listenTCP(0, Site(crm), interface="127.0.0.1")``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

__all__ = ["CRMAnswer", "FakeCRM", "SeenRequest"]


@dataclass(frozen=True)
class CRMAnswer:
    """What the fake CRM answers: ``code`` and ``body`` (a dict or list is
    sent as JSON), after ``delay`` seconds (None: never).  ``stall``: send
    the status and the body's first byte at once, the rest never."""

    code: int = 200
    body: Any = b""
    delay: float | None = 0.0
    stall: bool = False

    @classmethod
    def caller(cls, delay: float | None = 0.0, **fields: Any) -> CRMAnswer:
        """200 with the JSON object ``fields`` (``name``, ``operator``, ``url``)."""
        return cls(200, dict(fields), delay)

    def encoded(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode()
        return json.dumps(self.body).encode()


@dataclass(frozen=True)
class SeenRequest:
    """One request the fake CRM got."""

    path: bytes
    phone: str | None
    headers: dict[str, str]
    time: float


class FakeCRM(Resource):
    """The lookup endpoint: ``answers[phone]``, else ``default`` (404).

    :param clock: an ``IReactorTime`` for delayed answers (the reactor of
        the server it runs in)
    """

    isLeaf = True

    def __init__(self, clock: Any):
        super().__init__()
        self.clock = clock
        self.answers: dict[str, CRMAnswer] = {}
        self.default = CRMAnswer(404, b"")
        self.requests: list[SeenRequest] = []
        #: requests still waiting for their answer
        self.pending: list[Any] = []

    def render_GET(self, request: Any) -> Any:
        raw = (request.args or {}).get(b"phone", [None])[0]
        phone = raw.decode("utf-8", "replace") if raw is not None else None
        headers = {k.decode().lower(): v[0].decode()
                   for k, v in request.requestHeaders.getAllRawHeaders()}  # fmt: skip
        self.requests.append(SeenRequest(request.uri, phone, headers, self.clock.seconds()))
        answer = self.answers.get(phone or "", self.default)
        if answer.stall:
            request.setResponseCode(answer.code)
            request.write(answer.encoded()[:1])
            self.pending.append(request)
            return NOT_DONE_YET
        if answer.delay == 0:
            request.setResponseCode(answer.code)
            request.setHeader(b"content-type", b"application/json")
            return answer.encoded()
        self.pending.append(request)
        if answer.delay is not None:
            self.clock.callLater(answer.delay, self._answer, request, answer)
        return NOT_DONE_YET

    def _answer(self, request: Any, answer: CRMAnswer) -> None:
        if request in self.pending:
            self.pending.remove(request)
        if request.finished or getattr(request, "_disconnected", False):
            return
        request.setResponseCode(answer.code)
        request.setHeader(b"content-type", b"application/json")
        request.write(answer.encoded())
        request.finish()
