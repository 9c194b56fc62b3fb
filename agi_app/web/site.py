"""The HTTP site: the API routes, ``/static/`` files, the limits on what a
request may make twisted.web do, and an access log that never shows an API
key."""

from __future__ import annotations

import re
from collections.abc import Iterable
from io import BytesIO
from pathlib import Path
from urllib.parse import unquote_to_bytes

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IReactorTime
from twisted.web import pages, server, static

# twisted.web's own signal for a chunked body to refuse: its channel answers
# 400 and closes the connection at once, mid-body.
from twisted.web.http import _MalformedChunkedDataError
from twisted.web.iweb import IAccessLogFormatter, IRequest
from twisted.web.resource import IResource, Resource
from zope.interface import provider

from agi_app.web.api import ApiError, ApiResource, RequestObserver, Router
from agi_app.web.body import MAX_BODY, MAX_FIELDS

__all__ = [
    "MAX_CHUNKS",
    "MAX_SEGMENTS",
    "MAX_URI",
    "STATIC_DIR",
    "LimitedRequest",
    "access_log_line",
    "build_site",
    "redact_uri",
]

#: The files served under ``/static/`` (the browser widget).
STATIC_DIR = Path(__file__).resolve().parent / "static"

#: Longest URI (path and query) the API looks at: 414 above it.
MAX_URI = 8192
#: Most ``/`` in a path: far more than any route has (404 above it).
MAX_SEGMENTS = 64
#: Most chunks of a ``Transfer-Encoding: chunked`` body: the connection is
#: closed with a 400 at the next one.
MAX_CHUNKS = 256
# An idle keep-alive connection is closed after this many seconds.
_IDLE_TIMEOUT = 60
# What is kept of a refused URI, for the access log.
_REFUSED_URI_KEPT = 200


def _refuse_uri(uri: bytes) -> ApiError | None:
    """The answer to a URI too big to parse, or None.  Counting is one pass
    in C; twisted.web would otherwise unquote every path segment and query
    field of up to 16 KiB in Python before any resource sees the request."""
    if len(uri) > MAX_URI:
        return ApiError(414, "uri_too_long", f"the URI is over {MAX_URI} bytes")
    path, _, query = uri.partition(b"?")
    if query.count(b"&") >= MAX_FIELDS:
        return ApiError(400, "invalid_query", "too many fields in the query")
    if path.count(b"/") > MAX_SEGMENTS:
        return ApiError(404, "not_found", "no such path")
    return None


class LimitedRequest(server.Request):
    """A request that bounds what twisted.web does for it before the API
    sees it.

    - The body: twisted.web buffers a whole body before the resource sees
      it; this keeps at most :data:`MAX_BODY` bytes (a declared
      Content-Length over it stores nothing) and sets ``body_too_large`` so
      the API answers 413.  A chunked body of more than :data:`MAX_CHUNKS`
      chunks is refused mid-body (400, connection closed): decoding a chunk
      costs microseconds, and 64 KiB of one-byte chunks would cost the
      reactor tens of milliseconds per read.
    - The URI: one over :data:`MAX_URI` bytes, :data:`MAX_FIELDS` query
      fields or :data:`MAX_SEGMENTS` path segments is cut to its first
      bytes before twisted.web splits it, and ``uri_refused`` holds the
      API's answer (414, 400 or 404).
    """

    body_too_large = False
    #: the error the API answers with instead of routing, for a refused URI
    uri_refused: ApiError | None = None
    _chunked = False
    _chunks = 0

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > MAX_BODY:
            self.body_too_large = True
        # twisted.web announces a chunked body as one of unknown length.
        self._chunked = length is None
        # At most MAX_BODY bytes are ever kept: a buffer in memory does.  (Twisted
        # would create a temporary file on disk for every request that does
        # not declare a length -- every GET -- and for bodies over 100 kB.)
        self.content = BytesIO()

    def handleContentChunk(self, data: bytes) -> None:
        if self._chunked:
            self._chunks += 1
            if self._chunks > MAX_CHUNKS:
                raise _MalformedChunkedDataError(f"more than {MAX_CHUNKS} chunks")
        if self.body_too_large:
            return
        if self.content.tell() + len(data) > MAX_BODY:
            self.body_too_large = True
            self.content.seek(0)
            self.content.truncate()
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        refused = _refuse_uri(path)
        if refused is not None:
            self.uri_refused = refused
            path = path[:_REFUSED_URI_KEPT]
        super().requestReceived(command, path, version)


# The names of the files under /static/: plain ASCII, no leading dot.
_STATIC_NAME = re.compile(rb"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")


class _StaticFiles(static.File):
    """Static files without directory listings.  A path segment that is not
    a plain file name (NUL, backslash, ``..``, a dot file, non-ASCII, over
    128 bytes) is a 404 before the file system is asked: twisted.web's
    ``File`` answers 500 for a NUL and logs a traceback for invalid UTF-8."""

    childNotFound = pages.notFound()

    def directoryListing(self) -> IResource:
        return self.childNotFound

    def getChild(self, path: bytes, request: IRequest) -> IResource:
        if path and _STATIC_NAME.fullmatch(path) is None:
            return self.childNotFound
        return super().getChild(path, request)


class _Root(Resource):
    """``/static/...`` goes to the files, every other path to the API."""

    def __init__(self, api: ApiResource, static_files: IResource | None):
        super().__init__()
        self._api = api
        self._static = static_files

    def getChildWithDefault(self, name: bytes, request: IRequest) -> IResource:
        if getattr(request, "uri_refused", None) is not None:
            return self._api  # which answers with the refusal
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
    if query.count(b"&") >= MAX_FIELDS:
        return path + b"?***"  # not a real client's; too long to look through
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
