"""Asking the CRM who is calling: ``GET [crm] lookup_url`` with the caller's
number, answered with ``{"name", "operator", "url"}``.

The call waits for this, so the lookup never takes longer than
``[crm] lookup_timeout`` seconds, connecting and reading the answer
included, and never fails: whatever goes wrong -- a slow or dead CRM, an
error status, an answer that is no JSON object, a field that breaks its rule
-- the call goes on as if nobody were known (:class:`Lookup` says what
happened, for the call's record and the log).

* The number is a checked phone number, URL-quoted into ``{phone}``.
* The request goes through the SSRF guard (:mod:`agi_app.netguard`), like
  webhooks: the CRM's host may resolve to public addresses, ``[events]
  allowed_networks`` and ``[crm] allowed_networks``, never to agi_app's own
  ports or the AMI's.  Redirects are not followed; at most
  :data:`MAX_ANSWER` bytes of answer are read.
* Every field of the answer is checked on its own, and one that breaks its
  rule is dropped (the others are used): ``name`` is display text
  (:func:`agi_app.validation.display_text`, it goes into the caller ID),
  ``operator`` an extension, ``url`` an ``http``/``https`` URL of at most
  2048 characters (it is shown to operators as a link).
* 200 with an object is an answer (``found`` when a field is left,
  ``unknown`` when none); 404 and 204 mean the CRM does not know the number
  (``unknown``).  Anything else is ``failed``.
* Answers (``found`` and ``unknown``) are kept ``[crm] lookup_cache_seconds``
  for the next call of the same number, at most ``lookup_cache_size``
  numbers (the least recently used go first); failures are not kept.
"""

from __future__ import annotations

import dataclasses
import json
import platform
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from treq.client import HTTPClient
from twisted.internet import defer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss

from agi_app import __version__, validation
from agi_app.errors import InvalidInput
from agi_app.netguard import GuardedEndpointFactory, TargetGuard

__all__ = [
    "FAILED",
    "FOUND",
    "MAX_ANSWER",
    "MAX_URL",
    "OFF",
    "TIMEOUT",
    "UNKNOWN",
    "CRMLookup",
    "Caller",
    "Lookup",
    "crm_link",
    "lookup_guard",
    "read_answer",
]

log = Logger(namespace="agi_app.inbound")

#: how a lookup ended (:attr:`Lookup.outcome`)
FOUND = "found"
UNKNOWN = "unknown"
TIMEOUT = "timeout"
FAILED = "failed"
#: no lookup was made (no lookup URL, or no caller number to ask about)
OFF = "off"

#: bytes of answer read at most; a bigger one is a failure
MAX_ANSWER = 16 * 1024
#: characters of a CRM link at most
MAX_URL = 2048
#: characters of a caller's name at most (it goes into the caller ID)
MAX_NAME = 64

_USER_AGENT = f"agi_app/{__version__} (Python {platform.python_version()})"


@dataclass(frozen=True)
class Caller:
    """What the CRM said of a caller, each field checked (None: not said,
    or dropped)."""

    name: str | None = None
    operator: str | None = None
    url: str | None = None

    def __bool__(self) -> bool:
        return any((self.name, self.operator, self.url))


NOBODY = Caller()


@dataclass(frozen=True)
class Lookup:
    """How one lookup ended: ``outcome`` (:data:`FOUND`, :data:`UNKNOWN`,
    :data:`TIMEOUT`, :data:`FAILED`, :data:`OFF`), the caller as far as
    known, ``why`` in words (a failure, dropped fields), whether it came
    from the cache and how long it took."""

    outcome: str
    caller: Caller = NOBODY
    why: str = ""
    cached: bool = False
    seconds: float = 0.0


def crm_link(value: object, field: str = "url") -> str:
    """A link to the caller in the CRM: an ``http``/``https`` URL with a
    host, printable without blanks, at most :data:`MAX_URL` characters."""
    if not isinstance(value, str) or not value:
        raise InvalidInput(field, f"{field} must be a URL")
    if len(value) > MAX_URL:
        raise InvalidInput(field, f"{field} must be at most {MAX_URL} characters")
    if any(c.isspace() or not c.isprintable() for c in value):
        raise InvalidInput(field, f"{field} must not contain blanks or control characters")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - ValueError when it is no port number
    except ValueError:
        raise InvalidInput(field, f"{field} is not a valid URL") from None
    # Operators click it: javascript:, data: and the like must never pass.
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise InvalidInput(field, f"{field} must be an http:// or https:// URL with a host")
    return value


def _name(value: object, field: str = "name") -> str:
    if isinstance(value, str):
        value = value.strip()
    return validation.display_text(value, field, MAX_NAME)


_FIELDS = (
    ("name", _name),
    ("operator", validation.extension),
    ("url", crm_link),
)


def read_answer(data: object) -> tuple[Caller, list[str]]:
    """The :class:`Caller` of a parsed answer and what was dropped from it
    (``"name: ..."``).  Raises ValueError when it is no JSON object.  A field
    that is missing, null or empty is not said; one that breaks its rule is
    dropped."""
    if not isinstance(data, Mapping):
        raise ValueError("the answer is not a JSON object")
    values: dict[str, str] = {}
    dropped = []
    for key, check in _FIELDS:
        value = data.get(key)
        if value is None or value == "":
            continue
        try:
            values[key] = check(value, key)
        except InvalidInput as e:
            dropped.append(f"{key}: {e.message}")
    return Caller(**values), dropped


def lookup_guard(config: Any) -> TargetGuard:
    """The guard of the lookup's connections: the webhooks' guard
    (:meth:`TargetGuard.from_config`) with ``[crm] allowed_networks`` let
    through too.  The lookup URL is the admin's, not a CRM's word, so a CRM
    on the LAN may be allowed without opening the LAN to webhooks."""
    events, crm = config.events, config.crm
    widened = dataclasses.replace(
        events, allowed_networks=(*events.allowed_networks, *crm.allowed_networks)
    )
    return TargetGuard.from_config(dataclasses.replace(config, events=widened))


class AnswerTooLarge(Exception):
    """The CRM's answer is bigger than :data:`MAX_ANSWER`."""


class _Body(Protocol):
    """Reads a response body of at most ``limit`` bytes; cancelling (the
    lookup's deadline) or a bigger body closes the connection."""

    def __init__(self, limit: int):
        self.limit = limit
        self.size = 0
        self.chunks: list[bytes] = []
        self.done: defer.Deferred[bytes] = defer.Deferred(self._cancel)

    def _cancel(self, _d: defer.Deferred) -> None:
        if self.transport is not None:
            self.transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.transport.stopProducing()
            self.done.errback(AnswerTooLarge(f"the answer is over {self.limit} bytes"))
            return
        self.chunks.append(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self.done.called:
            return
        if reason is None or reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.chunks))
        else:
            self.done.errback(reason)


class CRMLookup:
    """Looks callers up in the CRM (see the module docstring).

    :param settings: the ``[crm]`` section (:class:`~agi_app.config.CRMConfig`)
    :param agent: the ``IAgent`` requests go through (:meth:`from_config`
        builds the guarded one)
    :param clock: an ``IReactorTime`` for the deadline and the cache
    """

    def __init__(self, settings: Any, *, agent: Any, clock: Any, pool: Any = None):
        self.settings = settings
        self.clock = clock
        self._agent = agent
        self._pool = pool
        header = settings.header
        self._headers = {"User-Agent": _USER_AGENT, "Accept": "application/json"}
        if header is not None:
            self._headers[header[0]] = header[1]
        self._cache: OrderedDict[str, tuple[float, Lookup]] = OrderedDict()

    @classmethod
    def from_config(cls, config: Any, reactor: Any, *, resolver: Any = None) -> CRMLookup:
        """The lookup of a :class:`~agi_app.config.Config`: requests through
        :func:`lookup_guard`, over a small pool of keep-alive connections
        (a lookup per call; a new TLS handshake each time would eat into the
        caller's wait)."""
        settings = config.crm
        guard = lookup_guard(config)
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = 4
        pool.cachedConnectionTimeout = 30
        endpoints = GuardedEndpointFactory(
            reactor, guard, resolver=resolver, connect_timeout=settings.lookup_timeout
        )
        agent = Agent.usingEndpointFactory(reactor, endpoints, pool=pool)
        lookup = cls(settings, agent=agent, clock=reactor, pool=pool)
        if settings.lookup_url:
            try:
                guard.check_url(lookup.url_for("0"), "[crm] lookup_url")
            except InvalidInput as e:
                log.error("CRM lookups will all fail: {why}; add the network to [crm] "
                          "allowed_networks", why=e.message)  # fmt: skip
        return lookup

    @property
    def enabled(self) -> bool:
        """Whether a lookup URL is configured."""
        return bool(self.settings.lookup_url)

    def url_for(self, phone: str) -> str:
        """The lookup URL of a (checked) phone number."""
        return self.settings.lookup_url.replace("{phone}", quote(phone, safe=""))

    # -- looking up ---------------------------------------------------------------

    def lookup(self, phone: str | None) -> defer.Deferred[Lookup]:
        """Ask the CRM about ``phone``; fires within ``lookup_timeout``
        seconds with a :class:`Lookup`, never with a failure."""
        if not self.enabled:
            return defer.succeed(Lookup(OFF, why="no [crm] lookup_url"))
        try:
            phone = validation.phone(phone, "phone")
        except InvalidInput:
            return defer.succeed(Lookup(OFF, why="the caller's number is no phone number"))
        kept = self._cached(phone)
        if kept is not None:
            return defer.succeed(kept)
        started = self.clock.seconds()
        timeout = self.settings.lookup_timeout
        d = defer.ensureDeferred(self._ask(phone))
        # Cancelling the coroutine cancels what it awaits: the connection
        # attempt, the request or the body being read.  What that raises
        # (the Agent's ResponseNeverReceived...) is a timeout all the same.
        d.addTimeout(timeout, self.clock, onTimeoutCancel=lambda _result, _timeout: Lookup(
            TIMEOUT, why=f"no answer within {timeout:g} s"))  # fmt: skip

        def ended(result: Lookup | Failure) -> Lookup:
            seconds = self.clock.seconds() - started
            if isinstance(result, Failure):
                result = Lookup(FAILED, why=_why(result))
            result = dataclasses.replace(result, seconds=seconds)
            self._log(phone, result)
            if result.outcome in (FOUND, UNKNOWN):
                self._keep(phone, result)
            return result

        return d.addBoth(ended)

    async def _ask(self, phone: str) -> Lookup:
        client = HTTPClient(self._agent)  # a fresh cookie jar: nothing kept between calls
        response = await client.request(
            "GET", self.url_for(phone), headers=self._headers, allow_redirects=False,
            unbuffered=True,
        )  # fmt: skip
        body = _Body(MAX_ANSWER)
        response.deliverBody(body)
        data = await body.done
        if response.code in (204, 404):
            return Lookup(UNKNOWN, why=f"HTTP {response.code}")
        if response.code != 200:
            return Lookup(FAILED, why=f"HTTP {response.code}")
        try:
            parsed = json.loads(data)
        except (ValueError, RecursionError):
            return Lookup(FAILED, why="the answer is not JSON")
        try:
            caller, dropped = read_answer(parsed)
        except ValueError as e:
            return Lookup(FAILED, why=str(e))
        why = "; ".join(f"dropped {d}" for d in dropped)
        return Lookup(FOUND if caller else UNKNOWN, caller, why)

    def _log(self, phone: str, result: Lookup) -> None:
        if result.outcome in (TIMEOUT, FAILED):
            log.warn("CRM lookup of {phone}: {outcome} ({why}); the call goes on without it",
                     phone=phone, outcome=result.outcome, why=result.why)  # fmt: skip
        elif result.why:
            log.warn("CRM lookup of {phone}: {outcome}, {why}", phone=phone,
                     outcome=result.outcome, why=result.why)  # fmt: skip
        else:
            log.debug("CRM lookup of {phone}: {outcome} in {ms:.0f} ms", phone=phone,
                      outcome=result.outcome, ms=result.seconds * 1000)  # fmt: skip

    # -- the cache -------------------------------------------------------------------

    def _cached(self, phone: str) -> Lookup | None:
        kept = self._cache.get(phone)
        if kept is None:
            return None
        expires, result = kept
        if self.clock.seconds() >= expires:
            del self._cache[phone]
            return None
        self._cache.move_to_end(phone)
        return dataclasses.replace(result, cached=True, seconds=0.0)

    def _keep(self, phone: str, result: Lookup) -> None:
        ttl = self.settings.lookup_cache_seconds
        if ttl <= 0:
            return
        self._cache[phone] = (self.clock.seconds() + ttl, result)
        self._cache.move_to_end(phone)
        while len(self._cache) > self.settings.lookup_cache_size:
            self._cache.popitem(last=False)

    @property
    def cached(self) -> int:
        """How many numbers' answers are kept now."""
        return len(self._cache)

    def close(self) -> defer.Deferred[None]:
        """Close the idle keep-alive connections."""
        if self._pool is None:
            return defer.succeed(None)
        return self._pool.closeCachedConnections()


def _why(failure: Failure) -> str:
    error = failure.value
    message = getattr(error, "message", None) or str(error) or type(error).__name__
    return message.splitlines()[0][:200] if message else type(error).__name__

