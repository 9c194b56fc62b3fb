"""The status words of CONTRACT section 2, the kinds of call, and the
mappings from what Asterisk reports (Originate reasons, ``DIALSTATUS``) to
statuses.

The calls domain owns these words: the store, the web layer and the docs
import them from here.  Which status may follow which, per kind of call, is
:data:`agi_app.calls.lifecycle.REQUIRES`.
"""

from __future__ import annotations

CALL = "CALL"
OPERATOR_CALLTO = "OPERATOR_CALLTO"
OPERATOR_PICKUP = "OPERATOR_PICKUP"
OPERATOR_BUSY = "OPERATOR_BUSY"
OPERATOR_NOANSWER = "OPERATOR_NOANSWER"
OPERATOR_OFFLINE = "OPERATOR_OFFLINE"
CLIENT_CALLTO = "CLIENT_CALLTO"
CLIENT_PICKUP = "CLIENT_PICKUP"
CLIENT_BUSY = "CLIENT_BUSY"
CLIENT_NOANSWER = "CLIENT_NOANSWER"
CLIENT_CANCEL = "CLIENT_CANCEL"
ERROR = "ERROR"
FINISH = "FINISH"
#: one choice of a caller in an IVR menu (never final; may repeat)
IVR_CHOICE = "IVR_CHOICE"
#: call control handed the call over to another party, detail ``from → to``
#: (never final; may repeat)
TRANSFER = "TRANSFER"

#: Every call status word, in the order a call normally goes through them.
STATUSES: tuple[str, ...] = (
    CALL,
    OPERATOR_CALLTO,
    OPERATOR_PICKUP,
    OPERATOR_BUSY,
    OPERATOR_NOANSWER,
    OPERATOR_OFFLINE,
    CLIENT_CALLTO,
    CLIENT_PICKUP,
    CLIENT_BUSY,
    CLIENT_NOANSWER,
    CLIENT_CANCEL,
    ERROR,
    FINISH,
    IVR_CHOICE,
    TRANSFER,
)

#: The statuses a call may reach more than once (every other one is logged once).
REPEATABLE: frozenset[str] = frozenset({IVR_CHOICE, TRANSFER})

#: The statuses that end a call; a call gets exactly one of them.
FINAL_STATUSES: frozenset[str] = frozenset(
    {
        OPERATOR_BUSY,
        OPERATOR_NOANSWER,
        OPERATOR_OFFLINE,
        CLIENT_BUSY,
        CLIENT_NOANSWER,
        CLIENT_CANCEL,
        ERROR,
        FINISH,
    }
)

#: short names used across the calls domain
ALL = STATUSES
FINAL = FINAL_STATUSES

# The kinds of call (``calls.kind``): what created it.
MAKE_CALL = "makeCall"
EXT_TO_PHONE = "extToPhone"
PHONE_TO_PHONE = "phoneToPhone"
CALLBACK = "callback"
ANNOUNCEMENT = "callWithAnnouncement"
IVR_CALL = "callWithInteractiveVoiceResponse"
INCOMING = "incoming"

#: Every kind of call.
CALL_KINDS: frozenset[str] = frozenset(
    {MAKE_CALL, EXT_TO_PHONE, PHONE_TO_PHONE, CALLBACK, ANNOUNCEMENT, IVR_CALL, INCOMING}
)
#: the kinds that ring an operator (or a first number) first, then the client
OPERATOR_FIRST_KINDS: frozenset[str] = frozenset(
    {MAKE_CALL, EXT_TO_PHONE, PHONE_TO_PHONE, CALLBACK}
)

# Originate reasons (Asterisk's ast_control_frame_type of the outcome).
REASON_OTHER = 0
REASON_HANGUP = 1
REASON_RING_TIMEOUT = 3
REASON_ANSWERED = 4
REASON_BUSY = 5
REASON_CONGESTION = 8


def operator_status_for_reason(reason: int) -> tuple[str, str]:
    """Map a failed Originate's reason to ``(status, detail)``.

    Reason 0 is ambiguous (an unregistered endpoint, a bad channel, no route);
    the caller refines it with the endpoint's device state.
    """
    if reason == REASON_BUSY:
        return OPERATOR_BUSY, "busy"
    if reason == REASON_CONGESTION:
        return OPERATOR_BUSY, "rejected"
    if reason == REASON_RING_TIMEOUT:
        return OPERATOR_NOANSWER, "no answer"
    if reason == REASON_HANGUP:
        return OPERATOR_NOANSWER, "hung up before answering"
    return ERROR, f"originate failed (reason {reason})"


def client_status_for_dialstatus(dialstatus: str) -> tuple[str, str]:
    """Map ``${DIALSTATUS}`` after Dial of the client to ``(status, detail)``;
    ANSWER is handled by the caller (CLIENT_PICKUP, then FINISH)."""
    s = (dialstatus or "").upper()
    if s == "BUSY":
        return CLIENT_BUSY, "busy"
    if s == "NOANSWER":
        return CLIENT_NOANSWER, "no answer"
    if s == "CANCEL":
        return CLIENT_CANCEL, "cancelled while the client was ringing"
    if s in ("CHANUNAVAIL", "CONGESTION"):
        return ERROR, f"client unreachable ({s})"
    return ERROR, f"dial ended with status {s or 'unknown'}"


#: DIALSTATUS of a caller's connection to an extension or number (IVR,
#: inbound calls) -> (status, detail); ANSWER is handled by the caller
_CONNECTION_OUTCOMES = {
    "BUSY": (OPERATOR_BUSY, "busy"),
    "NOANSWER": (OPERATOR_NOANSWER, "no answer"),
    "CHANUNAVAIL": (OPERATOR_OFFLINE, "unreachable"),
    "CONGESTION": (ERROR, "congestion"),
    "CANCEL": (CLIENT_CANCEL, "the caller hung up while it rang"),
}


def connection_status_for_dialstatus(dialstatus: str) -> tuple[str, str]:
    """Map ``${DIALSTATUS}`` after a caller was connected to an extension or
    a number (an IVR choice, an inbound call) to ``(status, detail)``."""
    s = (dialstatus or "").upper()
    return _CONNECTION_OUTCOMES.get(s, (ERROR, f"dial status {s}"))
