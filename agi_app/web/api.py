"""The routing layer every HTTP endpoint uses.

A handler is ``async def handler(req: ApiRequest, **path_params) -> dict |
ApiResponse`` (returning a Deferred or a plain value works too).  The layer
around it does the rest the same way for every endpoint:

- path matching: literal parts case-insensitively, ``{name}`` parts as
  parameters, an optional ``.json``/``.xml`` suffix (no suffix: JSON), a
  trailing slash ignored; unknown path 404, wrong method 405 with ``Allow``;
- authentication (CONTRACT 1.1): ``X-API-Key`` header or ``api_key`` query
  parameter, compared in constant time; open when no keys are configured.
  An open route may show some fields of its answer only to a request with a
  key (:meth:`Router.public_fields`);
- parameters: the query string merged with a form (urlencoded or multipart)
  or JSON object body, parsed within the bounds of :mod:`agi_app.web.body`
  when the handler first reads them -- after authentication, and never for
  a handler that takes none; a body over 64 KiB is 413, a malformed one 400;
- errors: any :class:`agi_app.errors.AppError` a handler raises (and
  :class:`ApiError`, the HTTP layer's own) becomes its status with
  ``{"error": {"code", "message", "field"?}}`` in the requested
  format; anything unexpected is a 500 with no detail (the trace is logged).
"""

from __future__ import annotations

import dataclasses
import hmac
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET

from agi_app.errors import AppError
from agi_app.web.body import MAX_BODY, parse_body, parse_pairs, unquote
from agi_app.web.render import render

__all__ = [
    "MAX_BODY",
    "ApiError",
    "ApiRequest",
    "ApiResource",
    "ApiResponse",
    "Handler",
    "Params",
    "RequestObserver",
    "Route",
    "Router",
]

_FORMATS = ("json", "xml")
_MISSING: Any = object()


class ApiError(AppError):
    """An error answer of the HTTP layer itself (routing, body, auth): HTTP
    ``status`` with ``{"error": {"code", "message", "field"?}, **extra}``.
    Handlers raise the :class:`~agi_app.errors.AppError` of their domain;
    this one keeps the HTTP-flavoured argument order."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        extra: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ):
        super().__init__(
            message, code=code, field=field, status=status, extra=extra, headers=headers
        )


@dataclass
class ApiResponse:
    """A handler's answer when a plain dict (200, rendered as JSON/XML) is not
    enough: another status, extra headers, no body (``body=None``, e.g. 204),
    or ``resource`` (a twisted.web resource, e.g. a static File) that renders
    the answer itself."""

    body: Mapping[str, Any] | None = None
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    resource: IResource | None = None


class Params(Mapping[str, Any]):
    """Request parameters by name.

    ``params[name]`` (and ``get``) gives the single value; a parameter given
    more than once is a 400 ``repeated_parameter`` unless read with
    :meth:`getlist`.  Values from a query string or form are ``str``; values
    from a JSON body keep their JSON type.
    """

    def __init__(self, multi: Mapping[str, list[Any]]):
        self._multi = {k: list(v) for k, v in multi.items()}

    def __getitem__(self, name: str) -> Any:
        values = self._multi[name]
        if len(values) > 1:
            raise ApiError(
                400, "repeated_parameter", f"{name} is given more than once", field=name
            )
        return values[0]

    def __iter__(self) -> Iterator[str]:
        return iter(self._multi)

    def __len__(self) -> int:
        return len(self._multi)

    def getlist(self, name: str) -> list[Any]:
        """Every value of ``name`` (a JSON array counts as its elements)."""
        out: list[Any] = []
        for value in self._multi.get(name, ()):
            out.extend(value if isinstance(value, list) else [value])
        return out


class ApiRequest:
    """What a handler sees of an HTTP request.

    :attr:`params` are read from the query string and the body the first
    time a handler asks for them (a malformed or oversized one raises the
    400 then), so a handler that takes no parameters never parses a body.
    """

    def __init__(
        self,
        request: IRequest,
        *,
        method: str,
        path: str,
        fmt: str,
        params: Params | None = None,
        authenticated: bool = True,
    ):
        #: the twisted.web request underneath
        self.request = request
        #: upper-case HTTP method
        self.method = method
        #: the decoded path, as sent (including any .json/.xml suffix)
        self.path = path
        #: "json" or "xml"
        self.fmt = fmt
        #: a valid API key came with the request, or the server has no keys
        self.authenticated = authenticated
        self._params = params

    @property
    def params(self) -> Params:
        """The request's parameters (parsed on first use)."""
        if self._params is None:
            self._params = _read_params(self.request)
        return self._params

    @property
    def headers(self) -> Headers:
        """The request headers."""
        return self.request.requestHeaders

    def header(self, name: str) -> str | None:
        """The first value of header ``name``, or None."""
        values = self.request.requestHeaders.getRawHeaders(name.encode("ascii"))
        return values[0].decode("latin-1") if values else None

    def param(self, name: str, default: Any = _MISSING) -> Any:
        """The single value of parameter ``name``; ``default`` when absent or
        empty, else a 400 ``missing_<name>``."""
        value = self.params.get(name)
        if value is None or value == "":
            if default is _MISSING:
                raise ApiError(400, f"missing_{name}", f"{name} is required", field=name)
            return default
        return value

    def param_list(self, name: str) -> list[Any]:
        """Every value of parameter ``name`` (repeated, or a JSON array)."""
        return self.params.getlist(name)


Handler = Callable[..., "Awaitable[Any] | Deferred[Any] | Mapping[str, Any] | ApiResponse"]
#: ``observe(method, route, status, seconds)`` after each answer is written:
#: ``route`` is the matched pattern (None: no route matched), ``status`` the
#: answer's code (499: the client went away first), ``seconds`` from the
#: start of rendering to the answer (a resource that streams, such as a
#: recording download, counts until it started)
RequestObserver = Callable[[str, "str | None", int, float], object]


@dataclass(frozen=True)
class Route:
    """One registered path pattern."""

    methods: frozenset[str]
    pattern: str
    handler: Handler
    auth: bool
    formats: bool
    #: per path segment: (is_parameter, casefolded literal or parameter name)
    segments: tuple[tuple[bool, str], ...]
    #: for an open route: the answer's fields a request without a valid key
    #: gets (None: all of them); see :meth:`Router.public_fields`
    public: frozenset[str] | None = None

    def match(self, parts: list[str]) -> dict[str, str] | None:
        """The path parameters if ``parts`` (decoded segments) match."""
        if len(parts) != len(self.segments):
            return None
        found: dict[str, str] = {}
        for part, (is_param, text) in zip(parts, self.segments, strict=True):
            if is_param:
                if not part:
                    return None
                found[text] = part
            elif part.casefold() != text:
                return None
        return found


_PARAM = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)\}$")


def _split(path: str) -> list[str]:
    parts = path.split("/")[1:]
    if parts and parts[-1] == "":
        parts.pop()  # a trailing slash does not make another path
    return parts


class Router:
    """The table of routes: ``add(methods, pattern, handler)``."""

    def __init__(self) -> None:
        self._routes: list[Route] = []

    @property
    def routes(self) -> tuple[Route, ...]:
        """Every route, in matching order."""
        return tuple(self._routes)

    def add(
        self,
        methods: Iterable[str],
        pattern: str,
        handler: Handler,
        *,
        auth: bool = True,
        formats: bool = True,
    ) -> None:
        """Route ``methods`` on ``pattern`` (``/api/calls/{method}``) to
        ``handler``.  ``auth``: needs an API key; ``formats``: the path may
        end in ``.json``/``.xml``.  GET routes also answer HEAD."""
        if not pattern.startswith("/"):
            raise ValueError(f"pattern must start with '/': {pattern!r}")
        segments = []
        for part in _split(pattern):
            m = _PARAM.match(part)
            segments.append((True, m.group(1)) if m else (False, part.casefold()))
        wanted = {m.upper() for m in methods}
        if "GET" in wanted:
            wanted.add("HEAD")
        route = Route(frozenset(wanted), pattern, handler, auth, formats, tuple(segments))
        for other in self._routes:
            if other.segments == route.segments and other.methods & route.methods:
                raise ValueError(f"{pattern} {sorted(other.methods & route.methods)} added twice")
        self._routes.append(route)
        # Literal segments win over parameters ("/api/calls/list" before
        # "/api/calls/{method}"); otherwise first added, first matched.
        self._routes.sort(key=lambda r: tuple(is_param for is_param, _ in r.segments))

    def public_fields(self, pattern: str, fields: Iterable[str]) -> None:
        """Answers of the open route ``pattern`` (every method) keep only
        ``fields`` for a request without a valid API key; with a key, or
        when the server has no keys, they are whole.  Error answers are
        never cut.  ``/health`` uses it: anyone may ask whether the service
        is up, the details are for key holders (CONTRACT 8)."""
        segments = tuple(
            (True, m.group(1)) if (m := _PARAM.match(part)) else (False, part.casefold())
            for part in _split(pattern)
        )
        found = False
        for i, route in enumerate(self._routes):
            if route.segments != segments:
                continue
            if route.auth:
                raise ValueError(f"{pattern} needs a key anyway: nothing to hide")
            self._routes[i] = dataclasses.replace(route, public=frozenset(fields))
            found = True
        if not found:
            raise ValueError(f"no route {pattern}")

    def resolve(self, method: str, path: str) -> tuple[Route, dict[str, str], str]:
        """Find the route for ``method`` and the decoded ``path``: fires
        ``(route, path_params, fmt)`` or raises :class:`ApiError` 404/405."""
        parts = _split(path)
        fmt, stripped = None, parts
        if parts:
            base, dot, suffix = parts[-1].rpartition(".")
            if dot and base and suffix.lower() in _FORMATS:
                fmt, stripped = suffix.lower(), [*parts[:-1], base]
        allowed: set[str] = set()
        for route in self._routes:
            if route.formats and fmt is not None:
                found, route_fmt = route.match(stripped), fmt
            else:
                found, route_fmt = route.match(parts), "json"
            if found is None:
                continue
            if method in route.methods:
                return route, found, route_fmt
            allowed |= route.methods
        if allowed:
            raise ApiError(
                405,
                "method_not_allowed",
                f"{method} is not allowed here",
                headers={"Allow": ", ".join(sorted(allowed))},
            )
        raise ApiError(404, "not_found", "no such path")


def _decode_path(raw: bytes) -> str:
    try:
        return unquote(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "invalid_path", "the path is not valid UTF-8") from None
    except ValueError:
        raise ApiError(400, "invalid_path", "the path is not percent-encoded") from None


def _read_params(request: IRequest) -> Params:
    """The query string's and the body's parameters, the API key left out."""
    query = request.uri.split(b"?", 1)[1] if b"?" in request.uri else b""
    multi: dict[str, list[Any]] = {}
    for name, value in parse_pairs(query, "query"):
        multi.setdefault(name, []).append(value)
    for name, value in parse_body(_body(request), _content_type(request)):
        multi.setdefault(name, []).append(value)
    # The key authenticates the request; it is not a parameter of it.
    multi.pop("api_key", None)
    return Params(multi)


def _body_too_large(request: IRequest) -> bool:
    """Over :data:`MAX_BODY` by its Content-Length, or cut off while it came
    (:class:`~agi_app.web.site.LimitedRequest`); checked without reading it."""
    if getattr(request, "body_too_large", False):
        return True
    length = request.requestHeaders.getRawHeaders(b"content-length")
    return bool(length and length[0].strip().isdigit() and int(length[0]) > MAX_BODY)


def _body(request: IRequest) -> bytes:
    content = request.content
    if content is None:
        return b""
    content.seek(0)
    body = content.read(MAX_BODY + 1)
    if len(body) > MAX_BODY:
        raise ApiError(413, "body_too_large", f"the body is over {MAX_BODY} bytes")
    return body


def _content_type(request: IRequest) -> str:
    # latin-1 decodes any bytes: a strange header is the parser's to refuse.
    return request.requestHeaders.getRawHeaders(b"content-type", [b""])[0].decode("latin-1")


def _keys(keys: Iterable[str]) -> tuple[bytes, ...]:
    return tuple(k.encode("utf-8") for k in keys if k)


class ApiResource(Resource):
    """A twisted.web resource that serves a :class:`Router`'s routes.

    It handles every path it is given (``isLeaf``), reading the whole of
    ``request.path``, so it can sit at the site's root.  ``observe`` (see
    :data:`RequestObserver`) hears of every answer, timed with ``timer``.
    """

    isLeaf = True
    _log = Logger()

    def __init__(
        self,
        router: Router,
        *,
        api_keys: Iterable[str] = (),
        observe: RequestObserver | None = None,
        timer: Callable[[], float] = time.perf_counter,
    ):
        super().__init__()
        self._router = router
        self._api_keys = _keys(api_keys)
        self._observe = observe
        self._timer = timer

    # -- twisted.web entry point ----------------------------------------------

    def render(self, request: IRequest) -> int:
        method = request.method.decode("ascii", "replace").upper()
        state: dict[str, Any] = {"gone": False, "route": None, "method": method,
                                 "started": self._timer() if self._observe else 0.0}  # fmt: skip
        request.notifyFinish().addErrback(lambda _: state.__setitem__("gone", True))
        fmt = "json"
        # the fields a request without a key may see, when not all of them
        public_only: frozenset[str] | None = None
        try:
            # A URI twisted.web was not allowed to parse (LimitedRequest).
            refused = getattr(request, "uri_refused", None)
            if refused is not None:
                raise refused
            path = _decode_path(request.path)
            fmt = _suffix_format(path)
            route, path_params, fmt = self._router.resolve(method, path)
            state["route"] = route.pattern
            authenticated = not self._api_keys or self._has_valid_key(request)
            if route.auth and not authenticated:
                raise ApiError(401, "unauthorized", "a valid API key is required (X-API-Key)")
            if not authenticated:
                public_only = route.public
            # Only now may the body count: a stranger's is never looked at.
            if _body_too_large(request):
                raise ApiError(413, "body_too_large", f"the body is over {MAX_BODY} bytes")
            api_request = ApiRequest(
                request, method=method, path=path, fmt=fmt, authenticated=authenticated
            )
            d = maybeDeferred(route.handler, api_request, **path_params)
        except Exception:
            d = fail()
        if public_only is not None:
            d.addCallback(_public_part, public_only)
        d.addCallback(self._answer, request, state, fmt)
        d.addErrback(self._answer_failure, request, state, fmt)
        d.addErrback(self._give_up, request)
        return NOT_DONE_YET

    def _observed(self, request: IRequest, state: dict[str, Any]) -> None:
        """Tell the observer of the answer just written (or of the client gone)."""
        observe = self._observe
        if observe is not None:
            code = 499 if state["gone"] else request.code
            observe(state["method"], state["route"], code, self._timer() - state["started"])

    # -- steps ------------------------------------------------------------

    def _has_valid_key(self, request: IRequest) -> bool:
        given = request.requestHeaders.getRawHeaders(b"x-api-key")
        if given:
            key = given[0].strip()
        else:
            query = request.uri.split(b"?", 1)[1] if b"?" in request.uri else b""
            keys = [v for k, v in parse_pairs(query, "query") if k == "api_key"]
            key = keys[0].encode("utf-8") if len(keys) == 1 else b""
        # Compare with every key so the time taken says nothing about which matched.
        ok = False
        for candidate in self._api_keys:
            ok |= hmac.compare_digest(candidate, key)
        return ok

    def _answer(self, result: Any, request: IRequest, state: dict, fmt: str) -> None:
        if state["gone"]:
            self._observed(request, state)
            return
        if isinstance(result, ApiResponse):
            response = result
        elif isinstance(result, Mapping):
            response = ApiResponse(body=result)
        else:
            raise TypeError(f"handler returned {type(result).__name__}, not a dict/ApiResponse")
        if response.resource is not None:
            for name, value in response.headers.items():
                request.setHeader(name.encode("latin-1"), value.encode("latin-1"))
            out = response.resource.render(request)
            if out is not NOT_DONE_YET:
                request.write(out)
                request.finish()
            self._observed(request, state)
            return
        self._write(request, fmt, response.status, response.body, response.headers)
        self._observed(request, state)

    def _answer_failure(
        self, failure: Failure, request: IRequest, state: dict, fmt: str
    ) -> None:
        if state["gone"]:
            self._observed(request, state)
            return
        if request.startedWriting:
            # Too late for an error answer: the status line is out already.
            failure.raiseException()
        error = failure.value
        if not isinstance(error, AppError):
            self._log.failure(
                "{method} {path} failed",
                failure,
                method=request.method.decode("latin-1"),
                path=request.path.decode("latin-1"),
            )
            error = ApiError(500, "internal", "internal error")
        self._write(request, fmt, error.status, error.body(), error.headers)
        self._observed(request, state)

    def _give_up(self, failure: Failure, request: IRequest) -> None:
        self._log.failure("answering {path} failed", failure, path=request.path.decode("latin-1"))
        if not request.finished:
            request.loseConnection()

    def _write(
        self,
        request: IRequest,
        fmt: str,
        status: int,
        body: Mapping[str, Any] | None,
        headers: Mapping[str, str],
    ) -> None:
        request.setResponseCode(status)
        for name, value in headers.items():
            request.setHeader(name.encode("latin-1"), value.encode("latin-1"))
        request.setHeader(b"cache-control", b"no-store")
        if body is None:
            request.finish()
            return
        data, content_type = render(fmt, body)
        request.setHeader(b"content-type", content_type.encode("ascii"))
        request.setHeader(b"content-length", str(len(data)).encode("ascii"))
        request.write(data)
        request.finish()


def _public_part(result: Any, fields: frozenset[str]) -> Any:
    """The fields of an answer anyone may see (:meth:`Router.public_fields`)."""
    if isinstance(result, ApiResponse) and result.body is not None:
        body = {k: v for k, v in result.body.items() if k in fields}
        return dataclasses.replace(result, body=body)
    if isinstance(result, Mapping):
        return {k: v for k, v in result.items() if k in fields}
    return result


def _suffix_format(path: str) -> str:
    """The format asked for by the path's suffix, for answers given before
    (or without) a route: errors of unknown paths are in it too."""
    return "xml" if path.lower().endswith(".xml") else "json"
