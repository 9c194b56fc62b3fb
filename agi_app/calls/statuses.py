"""The status words of CONTRACT section 2 and the mappings from what Asterisk
reports (Originate reasons, ``DIALSTATUS``) to them."""

from __future__ import annotations

from agi_app.store.base import FINAL_STATUSES, STATUSES

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

#: every status word, in the order a successful call goes through them
ALL = STATUSES
#: a call ends in exactly one of these
FINAL = FINAL_STATUSES

#: a status may only be logged after its predecessor (PICKUP never before CALLTO)
REQUIRES = {
    OPERATOR_PICKUP: OPERATOR_CALLTO,
    CLIENT_CALLTO: OPERATOR_PICKUP,
    CLIENT_PICKUP: CLIENT_CALLTO,
    FINISH: CLIENT_PICKUP,
}

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
