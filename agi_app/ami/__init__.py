"""Asterisk Manager Interface client on Twisted.

* :mod:`agi_app.ami.message` - :class:`AMIMessage`, the parser and the action encoder;
* :mod:`agi_app.ami.protocol` - :class:`AMIProtocol`, one connection;
* :mod:`agi_app.ami.service` - :class:`AMIService`, a session that stays up.
"""

from agi_app.ami.errors import (
    AMIActionError,
    AMIAuthenticationError,
    AMIDisconnected,
    AMIError,
    AMIInjectionError,
    AMIProtocolError,
    AMITimeout,
)
from agi_app.ami.message import AMIEventList, AMIMessage, AMIParser, encode_action
from agi_app.ami.protocol import AMIProtocol
from agi_app.ami.service import REASON_TEXT, AMIService, OriginateReason, OriginateResult

__all__ = [
    "AMIActionError",
    "AMIAuthenticationError",
    "AMIDisconnected",
    "AMIError",
    "AMIEventList",
    "AMIInjectionError",
    "AMIMessage",
    "AMIParser",
    "AMIProtocol",
    "AMIProtocolError",
    "AMIService",
    "AMITimeout",
    "OriginateReason",
    "OriginateResult",
    "REASON_TEXT",
    "encode_action",
]
