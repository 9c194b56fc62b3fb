"""The HTTP site: the API routes, ``/static/`` files, the request body limit
and an access log that never shows an API key."""

from __future__ import annotations

import re
from collections.abc import Iterable
from io import BytesIO
from pathlib import Path
from urllib.parse import unquote_to_bytes

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IReactorTime
from twisted.web import pages, server, static
from twisted.web.iweb import IAccessLogFormatter, IRequest
from twisted.web.resource import IResource, Resource
from zope.interface import provider

from agi_app.web.api import MAX_BODY, ApiResource, RequestObserver, Router

__all__ = ["STATIC_DIR", "LimitedRequest", "access_log_line", "build_site", "redact_uri"]

#: The files served under ``/static/`` (the browser widget).
STATIC_DIR = Path(__file__).resolve().parent / "static"

# An idle keep-alive connection is closed after this many seconds.
_IDLE_TIMEOUT = 60


class LimitedRequest(server.Request):
    """A request that keeps at most :data:`MAX_BODY` bytes of its body.

    Twisted buffers a whole body before the resource sees it; this stops
    storing past the limit (a declared Content-Length over it stores nothing)
    and sets ``body_too_large`` so the API answers 413.
    """

    body_too_large = False

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > MAX_BODY:
            self.body_too_large = True
        # At most MAX_BODY bytes are ever kept: a buffer in memory does.  (Twisted
        # would create a temporary file on disk for every request that does
        # not declare a length -- every GET -- and for bodies over 100 kB.)
        self.content = BytesIO()

    def handleContentChunk(self, data: bytes) -> None:
        if self.body_too_large:
            return
        if self.content.tell() + len(data) > MAX_BODY:
            self.body_too_large = True
            self.content.seek(0)
            self.content.truncate()
            return
        super().handleContentChunk(data)


class _StaticFiles(static.File):
    """Static files without directory listings."""

    childNotFound = pages.notFound()

    def directoryListing(self) -> IResource:
        return self.childNotFound


class _Root(Resource):
    """``/static/...`` goes to the files, every other path to the API."""

    def __init__(self, api: ApiResource, static_files: IResource | None):
        super().__init__()
        self._api = api
        self._static = static_files

    def getChildWithDefault(self, name: bytes, request: IRequest) -> IResource:
        if name == b"static" and self._static is not None:
            return self._static
        return self._api

    def render(self, request: IRequest) -> object:
        return self._api.render(request)


def redact_uri(uri: bytes) -> bytes:
    """``uri`` with the value of every ``api_key`` query parameter replaced by ``***``."""
    path, sep, query = uri.partition(b"?")
    if not sep:
        return uri
    if b"%" not in query and b"+" not in query and b"api_key" not in query.lower():
        return uri  # no field can be named api_key, even once unquoted
    fields = []
    for item in query.split(b"&"):
        name = item.split(b"=", 1)[0]
        if unquote_to_bytes(name.replace(b"+", b" ")).strip().lower() == b"api_key":
            item = name + b"=***"
        fields.append(item)
    return path + b"?" + b"&".join(fields)


# A byte a log line shows as ``\xNN``: anything outside printable ASCII, and
# the quote that delimits the fields.
_UNPRINTABLE = re.compile(rb'[^\x20\x21\x23-\x7e]')


def _escape_byte(match: re.Match[bytes]) -> bytes:
    return b"\\x%02x" % match[0][0]


def _printable(value: bytes) -> str:
    """``value`` as printable ASCII: other bytes and ``"`` as ``\\xNN``."""
    # Almost every value is printable already: one regex scan in C, then a
    # plain decode, instead of a Python step per character (this runs five
    # times per request).
    if _UNPRINTABLE.search(value) is None:
        return value.decode("ascii")
    return _UNPRINTABLE.sub(_escape_byte, value).decode("ascii")


@provider(IAccessLogFormatter)
def access_log_line(timestamp: str, request: IRequest) -> str:
    """A combined-log-format line with API keys redacted from the URI and referrer."""
    address = request.getClientAddress()
    ip = address.host if isinstance(address, IPv4Address | IPv6Address) else "-"
    referrer = redact_uri(request.getHeader(b"referer") or b"-")
    agent = request.getHeader(b"user-agent") or b"-"
    return '"{}" - - {} "{} {} {}" {} {} "{}" "{}"'.format(
        ip,
        timestamp,
        _printable(request.method),
        _printable(redact_uri(request.uri)),
        _printable(request.clientproto),
        request.code,
        request.sentLength or "-",
        _printable(referrer),
        _printable(agent),
    )


def build_site(
    router: Router,
    *,
    api_keys: Iterable[str],
    static_dir: str | Path | None = STATIC_DIR,
    clock: IReactorTime,
    observe: RequestObserver | None = None,
) -> server.Site:
    """The twisted.web Site of the HTTP API: ``router``'s routes behind the
    API key check, ``static_dir`` under ``/static/`` (None: no static files),
    the 64 KiB body limit, and the redacting access log.  ``observe`` hears
    of every API answer (the metrics' HTTP histogram)."""
    api = ApiResource(router, api_keys=api_keys, observe=observe)
    files = _StaticFiles(str(static_dir)) if static_dir is not None else None
    site = server.Site(
        _Root(api, files),
        requestFactory=LimitedRequest,
        # Bodies are parsed by the API itself (JSON, form or multipart).
        parsePOSTFormSubmission=False,
        logFormatter=access_log_line,
        timeout=_IDLE_TIMEOUT,
        reactor=clock,
    )
    site.displayTracebacks = False
    return site
