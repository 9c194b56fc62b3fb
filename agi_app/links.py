"""Signed recording links: ``/records/{record_id}?expires=<unix>&sig=<hex>``
that download a recording without an API key until ``expires``.

``sig`` is the hex HMAC-SHA256, under the link secret, of
``records/<record_id>/<expires>``: it binds the recording and the expiry
time, so changing either makes it invalid.  The secret is ``[http]
link_secret``, or else derived from the first API key (see
:func:`link_secret`).  A link is checked in constant time; a wrong
signature is a 403 ``invalid_signature``, a right one past its time a 410
``link_expired`` (the signature is checked first, so a forged link never
learns whether its time has passed).

The ``record`` webhook event carries such a link (``RecordURL``), and
``recordList``/``orderRecords`` hand them out with ``signed=1``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Sequence

from twisted.internet.interfaces import IReactorTime

from agi_app.errors import AppError

__all__ = ["InvalidSignature", "LinkExpired", "RecordLinks", "link_secret"]

# What a signature looks like: SHA-256 as lower-case hex.
_SIG = re.compile(r"^[0-9a-f]{64}$", re.ASCII)
# The domain of the key derived from an API key: no other HMAC of that key
# (none is made today) can be confused with it.
_DERIVATION = b"agi_app record links v1"


class InvalidSignature(AppError):
    """A signed link whose signature does not match (403)."""

    status = 403
    code = "invalid_signature"


class LinkExpired(AppError):
    """A correctly signed link past its ``expires`` (410)."""

    status = 410
    code = "link_expired"


def link_secret(configured: str, api_keys: Sequence[str]) -> tuple[bytes, str]:
    """The key of signed links and where it comes from (for the log):
    ``[http] link_secret`` when set; else HMAC-SHA256 of a fixed label under
    the first API key (links keep working across restarts, and stop when
    that key is removed); else 32 random bytes (links work until the next
    start: without API keys the API is open anyway)."""
    if configured:
        return configured.encode("utf-8"), "[http] link_secret"
    keys = [k for k in api_keys if k]
    if keys:
        return hmac.new(keys[0].encode("utf-8"), _DERIVATION, hashlib.sha256).digest(), (
            "derived from the first of [http] api_keys"
        )
    return os.urandom(32), "random (no [http] link_secret or api_keys): valid until restart"


class RecordLinks:
    """Makes and checks signed recording links.

    :param secret: the key (:func:`link_secret`)
    :param public_url: the base of the links (``[http] public_url``)
    :param ttl: seconds a link works (``[http] record_link_ttl``)
    :param clock: an ``IReactorTime``: links expire by its ``seconds()``
    """

    def __init__(self, secret: bytes, *, public_url: str, ttl: int, clock: IReactorTime):
        if not secret:
            raise ValueError("the link secret must not be empty")
        if ttl < 1:
            raise ValueError("ttl must be at least 1 second")
        self._secret = secret
        self._public_url = public_url.rstrip("/")
        self.ttl = ttl
        self._clock = clock

    def signature(self, record_id: int, expires: int) -> str:
        """The ``sig`` of a link to ``record_id`` valid until ``expires``."""
        message = f"records/{int(record_id)}/{int(expires)}".encode("ascii")
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def query(self, record_id: int, ttl: int | None = None) -> str:
        """``expires=<unix>&sig=<hex>`` of a link valid for ``ttl`` seconds
        (default :attr:`ttl`) from now."""
        expires = int(self._clock.seconds()) + (self.ttl if ttl is None else ttl)
        return f"expires={expires}&sig={self.signature(record_id, expires)}"

    def url(self, record_id: int, ttl: int | None = None) -> str:
        """The whole signed link of a recording."""
        return f"{self._public_url}/records/{int(record_id)}?{self.query(record_id, ttl)}"

    def check(self, record_id: int, expires: int | None, sig: str | None) -> None:
        """Raise :class:`InvalidSignature` unless ``sig`` signs ``record_id``
        and ``expires``, then :class:`LinkExpired` if ``expires`` has passed."""
        given = sig if isinstance(sig, str) else ""
        if expires is None or not _SIG.match(given):
            raise InvalidSignature("the link's signature is missing or malformed")
        if not hmac.compare_digest(self.signature(record_id, expires), given):
            raise InvalidSignature("the link's signature does not match (changed or forged)")
        if self._clock.seconds() >= expires:
            raise LinkExpired("the link has expired; ask for a new one")
