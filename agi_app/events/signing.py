"""The ``X-Signature`` of every event delivery (CONTRACT 6)::

    X-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + payload)>

``payload`` is the form body of a POST delivery, or the whole query string
(after ``?``, as sent) of a GET one.  A receiver checks it with
:func:`agi_app.client.verify_signature`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

__all__ = ["SIGNATURE_HEADER", "new_secret", "sign"]

SIGNATURE_HEADER = "X-Signature"


def new_secret() -> str:
    """A fresh subscription secret: 32 random bytes as hex."""
    return secrets.token_hex(32)


def sign(secret: str, payload: bytes, timestamp: int) -> str:
    """The ``X-Signature`` header value of ``payload`` sent at ``timestamp``."""
    stamp = str(int(timestamp)).encode("ascii")
    mac = hmac.new(secret.encode("utf-8"), stamp + b"." + payload, hashlib.sha256)
    return f"t={int(timestamp)},v1={mac.hexdigest()}"
